use super::*;
use proptest::prelude::*;

type Entries = Vec<(Vec<u8>, Vec<u8>)>;

fn sorted(mut e: Entries) -> Entries {
    e.sort();
    e.dedup_by(|a, b| a.0 == b.0);
    e
}

fn roundtrip(buckets: &[(Vec<u8>, Entries)]) -> Database {
    let refs: Vec<(&[u8], &super::Entries)> = buckets
        .iter()
        .map(|(n, e)| (n.as_slice(), e.as_slice()))
        .collect();
    let file = write(&refs);
    assert_eq!(file.len() % PAGE_SIZE, 0);
    let db = read(&file).expect("reads what it wrote");
    assert_eq!(db.high_water as usize * PAGE_SIZE, file.len());
    assert!(db.root.entries.is_empty());
    let got: Vec<(Vec<u8>, Entries)> = db
        .root
        .buckets
        .iter()
        .map(|(n, b)| {
            assert!(b.buckets.is_empty());
            (n.clone(), b.entries.clone())
        })
        .collect();
    assert_eq!(got, buckets);
    db
}

#[test]
fn empty_database_and_empty_buckets() {
    roundtrip(&[]);
    roundtrip(&[(b"a".to_vec(), vec![]), (b"b".to_vec(), vec![])]);
}

#[test]
fn many_keys_make_branch_levels_and_large_values_overflow_pages() {
    let keys: Entries = (0..40_000u32)
        .map(|i| (i.to_be_bytes().to_vec(), vec![b'v'; (i % 97) as usize]))
        .collect();
    let large: Entries = (0..5u8)
        .map(|i| (vec![i], vec![i; 3 * PAGE_SIZE + 17 * usize::from(i)]))
        .collect();
    roundtrip(&[(b"key".to_vec(), keys.clone()), (b"large".to_vec(), large)]);
    // The root bucket's leaf is the last page; its first element is "key", whose value
    // (the bucket header) names the bucket's root: a branch page, over ~660 leaves.
    let file = write(&[(b"key", &keys)]);
    let last = file.len() - PAGE_SIZE;
    let header = last + PAGE_HEADER + ELEMENT + 3;
    let root = u64::from_le_bytes(file[header..header + 8].try_into().unwrap()) as usize;
    assert_eq!(u16_at(&file, root * PAGE_SIZE + 8), Some(F_BRANCH));
    assert!(file.len() / PAGE_SIZE > 600);
}

#[test]
fn a_damaged_or_foreign_file_is_an_error() {
    assert_eq!(read(b""), Err(BoltError::Invalid));
    assert_eq!(read(&[0u8; 3 * PAGE_SIZE]), Err(BoltError::Invalid));
    let keys: Entries = (0..2000u32)
        .map(|i| (i.to_be_bytes().to_vec(), b"value".to_vec()))
        .collect();
    let file = write(&[(b"key", &keys)]);
    // Truncated: the high water mark is past the end.
    assert!(matches!(
        read(&file[..file.len() - PAGE_SIZE]),
        Err(BoltError::Page { .. })
    ));
    // A damaged meta falls back to the other one, as bbolt does.
    let mut one = file.clone();
    one[PAGE_HEADER + 20] ^= 1;
    assert_eq!(read(&one).unwrap().txid, 1);
    one[PAGE_SIZE + PAGE_HEADER + 20] ^= 1;
    assert_eq!(read(&one), Err(BoltError::Invalid));
    // A page pointing to itself (a cycle) is refused, not followed.
    let db = read(&file).unwrap();
    assert_eq!(db.root.bucket(b"key").unwrap().entries.len(), 2000);
    let mut cyc = file.clone();
    let last = file.len() / PAGE_SIZE - 1;
    // The root bucket's page is the last one; make its bucket header point at itself.
    let at = last * PAGE_SIZE + PAGE_HEADER + ELEMENT + 3; // after the key "key"
    cyc[at..at + 8].copy_from_slice(&(last as u64).to_le_bytes());
    assert!(matches!(read(&cyc), Err(BoltError::Page { .. })));
    // A bucket value shorter than a bucket header.
    let mut short = file.clone();
    let vsize = last * PAGE_SIZE + PAGE_HEADER + 12;
    short[vsize..vsize + 4].copy_from_slice(&9u32.to_le_bytes());
    assert!(matches!(read(&short), Err(BoltError::Page { .. })));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn what_is_written_reads_back(
        buckets in proptest::collection::btree_map(
            proptest::collection::vec(any::<u8>(), 1..12),
            proptest::collection::vec(
                (proptest::collection::vec(any::<u8>(), 1..40),
                 proptest::collection::vec(any::<u8>(), 0..3000)),
                0..200),
            0..5)
    ) {
        let buckets: Vec<(Vec<u8>, Entries)> =
            buckets.into_iter().map(|(n, e)| (n, sorted(e))).collect();
        roundtrip(&buckets);
    }

    #[test]
    fn no_damage_panics_the_reader(
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..40),
        cut in any::<prop::sample::Index>(),
    ) {
        let entries: Entries = (0..600u32)
            .map(|i| (i.to_be_bytes().to_vec(), vec![7u8; (i % 50) as usize * 40]))
            .collect();
        let small: Entries = vec![(b"x".to_vec(), b"y".to_vec())];
        let mut file = write(&[(b"key", &entries), (b"meta", &small)]);
        for (at, byte) in flips {
            let i = at.index(file.len());
            file[i] ^= byte | 1;
        }
        let _ = read(&file);
        let _ = read(&file[..cut.index(file.len())]);
    }
}
