use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;

use super::*;

fn tree_of(buckets: usize, pairs: &BTreeMap<Vec<u8>, Vec<u8>>) -> MerkleTree {
    let mut tree = MerkleTree::new(buckets).unwrap();
    for (key, digest) in pairs {
        tree.insert(key, digest);
    }
    tree
}

/// Runs the level-by-level exchange a peer would, with `remote` answering `nodes_at`.
fn remote_diff(local: &MerkleTree, remote: &MerkleTree) -> Result<Vec<usize>, MerkleError> {
    let mut wanted = vec![0usize];
    for depth in 0..=local.depth() {
        let answer = remote.nodes_at(depth, &wanted)?;
        let differing = local.differing(remote.buckets(), depth, &answer)?;
        if depth == local.depth() {
            return Ok(differing);
        }
        wanted = MerkleTree::children(&differing);
    }
    unreachable!("the loop returns at the leaf level")
}

#[test]
fn bucket_counts_are_validated() {
    for bad in [0, 3, 1000, (1 << MAX_DEPTH) + 1, 1 << (MAX_DEPTH + 1)] {
        assert_eq!(
            MerkleTree::new(bad),
            Err(MerkleError::InvalidBucketCount {
                buckets: bad,
                max: 1 << MAX_DEPTH
            })
        );
    }
    let tree = MerkleTree::new(1024).unwrap();
    assert_eq!((tree.buckets(), tree.depth()), (1024, 10));
    assert_eq!(tree.level(0).unwrap().len(), 1);
    assert_eq!(tree.level(10).unwrap().len(), 1024);
    assert_eq!(tree.level(11), None);
    assert_eq!(tree.validate(), Ok(()));
}

#[test]
fn single_bucket_tree_works() {
    let mut a = MerkleTree::new(1).unwrap();
    let b = a.clone();
    a.insert(b"k", b"v1");
    assert_eq!(a.bucket_of(b"anything"), 0);
    assert_eq!(a.level(0), Some(&[a.root()][..]));
    assert_eq!(a.diff(&b), Ok(vec![0]));
    assert_eq!(remote_diff(&a, &b), Ok(vec![0]));
}

#[test]
fn buckets_follow_ring_token_order() {
    let tree = MerkleTree::new(1024).unwrap();
    for i in 0..1000u32 {
        let key = i.to_le_bytes();
        assert_eq!(
            tree.bucket_of(&key),
            (crate::ring::hash_key(&key) >> 54) as usize
        );
    }
}

#[test]
fn contents_not_order_determine_the_tree() {
    let keys: Vec<Vec<u8>> = (0..500u32).map(|i| i.to_be_bytes().to_vec()).collect();
    let mut forward = MerkleTree::new(64).unwrap();
    for key in &keys {
        forward.insert(key, b"d");
    }
    let mut backward = MerkleTree::new(64).unwrap();
    for key in keys.iter().rev() {
        backward.insert(key, b"d");
    }
    assert_eq!(forward, backward);
    assert_eq!(forward.validate(), Ok(()));
    for key in &keys {
        forward.remove(key, b"d");
    }
    assert_eq!(
        forward,
        MerkleTree::new(64).unwrap(),
        "removing all restores empty"
    );
}

#[test]
fn duplicates_count_and_update_replaces() {
    let mut once = MerkleTree::new(16).unwrap();
    once.insert(b"k", b"v");
    let mut twice = once.clone();
    twice.insert(b"k", b"v");
    assert_ne!(
        once.root(),
        twice.root(),
        "a duplicate pair must not cancel out"
    );
    twice.remove(b"k", b"v");
    assert_eq!(once, twice);

    let mut updated = once.clone();
    updated.update(b"k", b"v", b"w");
    let mut fresh = MerkleTree::new(16).unwrap();
    fresh.insert(b"k", b"w");
    assert_eq!(updated, fresh);
    // The key/digest split is unambiguous.
    assert_ne!(pair_hash(b"ab", b"c"), pair_hash(b"a", b"bc"));
}

#[test]
fn diff_names_the_changed_bucket_and_descends_one_path() {
    let pairs: BTreeMap<Vec<u8>, Vec<u8>> = (0..2000u32)
        .map(|i| (i.to_le_bytes().to_vec(), vec![1]))
        .collect();
    let a = tree_of(1024, &pairs);
    let mut b = a.clone();
    assert_eq!(a.diff(&b), Ok(vec![]));
    b.update(&7u32.to_le_bytes(), &[1], &[2]);
    let bucket = a.bucket_of(&7u32.to_le_bytes());
    assert_eq!(a.diff(&b), Ok(vec![bucket]));
    assert_eq!(b.diff(&a), Ok(vec![bucket]));
    assert_eq!(remote_diff(&a, &b), Ok(vec![bucket]));
    // The root, then at each level the differing node and its equal sibling.
    let mut visited = 0;
    a.diff_counting(&b, &mut visited).unwrap();
    assert_eq!(visited, 1 + 2 * 10);
    assert_eq!(a.bucket_hash(bucket), Some(a.level(10).unwrap()[bucket]));
    assert_ne!(a.bucket_hash(bucket), b.bucket_hash(bucket));
    assert_eq!(a.bucket_hash(1024), None);
}

#[test]
fn shape_and_index_errors_are_typed() {
    let a = MerkleTree::new(16).unwrap();
    let b = MerkleTree::new(32).unwrap();
    let mismatch = MerkleError::BucketCountMismatch {
        local: 16,
        remote: 32,
    };
    assert_eq!(a.diff(&b), Err(mismatch.clone()));
    assert_eq!(a.differing(32, 0, &[(0, 0)]), Err(mismatch));
    assert_eq!(
        a.nodes_at(5, &[0]),
        Err(MerkleError::DepthOutOfRange { depth: 5, max: 4 })
    );
    assert_eq!(
        a.nodes_at(2, &[1, 4]),
        Err(MerkleError::IndexOutOfRange { depth: 2, index: 4 })
    );
    assert_eq!(
        a.differing(16, 1, &[(2, 0)]),
        Err(MerkleError::IndexOutOfRange { depth: 1, index: 2 })
    );
}

#[test]
fn validate_detects_a_stale_internal_node() {
    let mut tree = MerkleTree::new(8).unwrap();
    tree.insert(b"k", b"v");
    tree.nodes[3] ^= 1;
    assert_eq!(
        tree.validate(),
        Err(MerkleError::Corrupt { depth: 1, index: 1 })
    );
}

/// The multiset of pairs in each bucket, for the model.
fn buckets_of(
    tree: &MerkleTree,
    pairs: &BTreeMap<Vec<u8>, Vec<u8>>,
) -> Vec<BTreeSet<(Vec<u8>, Vec<u8>)>> {
    let mut buckets = vec![BTreeSet::new(); tree.buckets()];
    for (key, digest) in pairs {
        buckets[tree.bucket_of(key)].insert((key.clone(), digest.clone()));
    }
    buckets
}

fn small_key() -> impl Strategy<Value = Vec<u8>> {
    // 85 possible keys: modifications often hit existing keys and undo each other.
    proptest::collection::vec(0u8..4, 0..4)
}

fn digest() -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(0u8..3, 1..3)
}

proptest! {
    #[test]
    fn prop_diff_is_exactly_the_buckets_whose_contents_differ(
        depth in 0u32..7,
        initial in proptest::collection::btree_map(small_key(), digest(), 0..60),
        // None removes the key, Some sets its digest.
        changes in proptest::collection::vec((small_key(), proptest::option::of(digest())), 0..20),
    ) {
        let buckets = 1usize << depth;
        let a = tree_of(buckets, &initial);
        let mut b = a.clone();
        let mut model = initial.clone();
        for (key, change) in changes {
            match (model.get(&key).cloned(), &change) {
                (Some(old), Some(new)) => b.update(&key, &old, new),
                (None, Some(new)) => b.insert(&key, new),
                (Some(old), None) => b.remove(&key, &old),
                (None, None) => {}
            }
            match change {
                Some(new) => model.insert(key, new),
                None => model.remove(&key),
            };
        }
        prop_assert_eq!(b.validate(), Ok(()));
        prop_assert_eq!(&b, &tree_of(buckets, &model), "incremental == rebuilt");

        let (before, after) = (buckets_of(&a, &initial), buckets_of(&b, &model));
        let expected: Vec<usize> = (0..buckets).filter(|&i| before[i] != after[i]).collect();
        prop_assert_eq!(a.diff(&b), Ok(expected.clone()));
        prop_assert_eq!(b.diff(&a), Ok(expected.clone()));
        prop_assert_eq!(remote_diff(&a, &b), Ok(expected.clone()));
        prop_assert_eq!(a.root() == b.root(), expected.is_empty());
    }
}
