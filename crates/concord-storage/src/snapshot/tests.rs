use std::path::Path;

use concord_raft::{Entry, EntryKind, HardState, NodeId, SnapshotMetadata};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use super::{SnapshotInstaller, SnapshotStream};
use crate::disk::{SimDisk, Tear};
use crate::errors::SnapshotError;
use crate::mvcc::types::*;
use crate::mvcc::{MvccConfig, MvccStore};
use crate::wal::{Batch, Wal, WalConfig};

fn open(disk: &SimDisk) -> MvccStore<SimDisk> {
    MvccStore::open(
        disk.clone(),
        Path::new("/n/state.redb"),
        MvccConfig::default(),
    )
    .unwrap()
}

pub(crate) fn random_command(rng: &mut SmallRng) -> Command {
    let key = vec![b'k', rng.gen_range(0..30u8)];
    match rng.gen_range(0..10) {
        0 => Command::DeleteRange(DeleteRangeRequest {
            key,
            range_end: vec![b'k', rng.gen_range(0..30u8)],
            prev_kv: false,
        }),
        1 => Command::LeaseGrant {
            id: rng.gen_range(1..5),
            ttl: 60,
        },
        2 => Command::LeaseRevoke {
            id: rng.gen_range(1..5),
        },
        3 => Command::Compact {
            revision: rng.gen_range(0..40),
        },
        _ => Command::Put(PutRequest {
            key,
            value: vec![rng.gen(); rng.gen_range(0..300)],
            lease: if rng.gen_bool(0.2) {
                rng.gen_range(1..5)
            } else {
                0
            },
            ..PutRequest::default()
        }),
    }
}

type Image = (u32, Vec<crate::mvcc::StoredVersion>, Vec<i64>, u64, i64);

fn image(s: &MvccStore<SimDisk>) -> Image {
    (
        s.hash().unwrap(),
        s.dump().unwrap(),
        s.lease_ids().unwrap(),
        s.applied_index(),
        s.revision(),
    )
}

#[test]
fn snapshot_round_trip_gives_identical_keys_and_revisions() {
    let mut rng = SmallRng::seed_from_u64(42);
    let disk = SimDisk::new();
    let mut a = open(&disk);
    for i in 1..=300 {
        a.apply(i, &random_command(&mut rng)).unwrap();
        if i % 50 == 0 {
            a.compact_step().unwrap();
        }
    }
    let expected = image(&a);
    let stream = SnapshotStream::new(&a, 700).unwrap();
    assert_eq!(stream.applied_index(), 300);
    // Writes after the stream started are not in it.
    for i in 301..=320 {
        a.apply(i, &random_command(&mut rng)).unwrap();
    }
    let chunks: Vec<Vec<u8>> = stream.map(Result::unwrap).collect();
    assert!(chunks.len() > 5, "{} chunks", chunks.len());

    let disk_b = SimDisk::new();
    let mut b = open(&disk_b);
    b.apply(
        1,
        &Command::Put(PutRequest {
            key: b"stale".to_vec(),
            ..PutRequest::default()
        }),
    )
    .unwrap();
    let mut inst = SnapshotInstaller::new(disk_b.clone(), b.path()).unwrap();
    for c in &chunks {
        inst.push(c).unwrap();
    }
    assert_eq!(inst.applied_index(), Some(300));
    b.install_snapshot(inst).unwrap();
    assert_eq!(image(&b), expected);
    // The install is durable: a power cut right after keeps the new image.
    drop(b);
    disk_b.power_cut(Tear::Prefix, &mut rng);
    assert_eq!(image(&open(&disk_b)), expected);
}

#[test]
fn damaged_reordered_or_truncated_streams_are_refused() {
    let mut rng = SmallRng::seed_from_u64(9);
    let disk = SimDisk::new();
    let mut a = open(&disk);
    for i in 1..=100 {
        a.apply(i, &random_command(&mut rng)).unwrap();
    }
    let chunks: Vec<Vec<u8>> = SnapshotStream::new(&a, 500)
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert!(chunks.len() > 3);
    let disk_b = SimDisk::new();
    let mut b = open(&disk_b);
    b.apply(
        1,
        &Command::Put(PutRequest {
            key: b"mine".to_vec(),
            ..PutRequest::default()
        }),
    )
    .unwrap();
    let before = image(&b);

    for at in [0usize, 5, 17, 30, 100] {
        let mut inst = SnapshotInstaller::new(disk_b.clone(), b.path()).unwrap();
        let mut bad = chunks[1].clone();
        let at = at % bad.len();
        bad[at] ^= 0x10;
        inst.push(&chunks[0]).unwrap();
        assert!(matches!(
            inst.push(&bad),
            Err(SnapshotError::Corrupt { chunk: 1, .. })
        ));
    }
    let mut inst = SnapshotInstaller::new(disk_b.clone(), b.path()).unwrap();
    assert!(inst.push(&chunks[1]).is_err());
    let mut inst = SnapshotInstaller::new(disk_b.clone(), b.path()).unwrap();
    for c in &chunks[..chunks.len() - 1] {
        inst.push(c).unwrap();
    }
    assert!(matches!(
        b.install_snapshot(inst),
        Err(SnapshotError::Corrupt { .. })
    ));
    assert_eq!(image(&b), before);
}

// A put command as entry data, for the restart test.
fn entry(index: u64, rng: &mut SmallRng) -> (Entry, Command) {
    let cmd = random_command(rng);
    let data = format!("{index}").into_bytes();
    (
        Entry {
            term: 1,
            index,
            kind: EntryKind::Normal,
            data,
        },
        cmd,
    )
}

#[test]
fn restart_from_snapshot_plus_wal_tail_equals_never_stopped() {
    let mut rng = SmallRng::seed_from_u64(5);
    let log: Vec<(Entry, Command)> = (1..=200).map(|i| entry(i, &mut rng)).collect();
    let command_of = |e: &Entry| -> Command {
        let i: usize = String::from_utf8_lossy(&e.data).parse().unwrap();
        log[i - 1].1.clone()
    };

    // Node A never stops.
    let disk_a = SimDisk::new();
    let mut a = open(&disk_a);
    for (e, c) in &log {
        a.apply(e.index, c).unwrap();
    }
    // Node B receives a snapshot of A at index 120, then the tail through its WAL, with
    // a power cut in the middle.
    let disk_src = SimDisk::new();
    let mut src = open(&disk_src);
    for (e, c) in &log[..120] {
        src.apply(e.index, c).unwrap();
    }
    let disk_b = SimDisk::new();
    let mut wal = Wal::open(disk_b.clone(), "/n/wal", WalConfig::default()).unwrap();
    let mut b = open(&disk_b);
    let mut inst = SnapshotInstaller::new(disk_b.clone(), b.path()).unwrap();
    for c in SnapshotStream::new(&src, 1000).unwrap() {
        inst.push(&c.unwrap()).unwrap();
    }
    b.install_snapshot(inst).unwrap();
    let meta = SnapshotMetadata {
        index: 120,
        term: 1,
        ..SnapshotMetadata::default()
    };
    let tail: Vec<Entry> = log[120..].iter().map(|(e, _)| e.clone()).collect();
    wal.append(Batch {
        snapshot: Some(&meta),
        entries: &tail,
        hard_state: Some(HardState {
            term: 1,
            vote: Some(NodeId(1)),
            commit: 200,
        }),
        lazy: false,
    })
    .unwrap();
    for e in &tail[..40] {
        b.apply(e.index, &command_of(e)).unwrap();
    }
    drop(b);
    drop(wal);
    disk_b.power_cut(Tear::PrefixThenZeros, &mut rng);

    let wal = Wal::open(disk_b.clone(), "/n/wal", WalConfig::default()).unwrap();
    let mut b = open(&disk_b);
    assert!(b.applied_index() >= 120);
    let from = b.applied_index() + 1;
    for e in wal.entries(from, wal.last_index() + 1, u64::MAX).unwrap() {
        b.apply(e.index, &command_of(&e)).unwrap();
    }
    assert_eq!(image(&b), image(&a));
}

// The same round trip on the real file system, where the old database file is still open
// while the new one is renamed over it.
#[test]
fn snapshot_install_on_the_real_file_system() {
    use crate::disk::RealDisk;
    let tmp = tempfile::tempdir().unwrap();
    let mut rng = SmallRng::seed_from_u64(77);
    let mut a = MvccStore::open(
        RealDisk,
        tmp.path().join("a/state.redb"),
        MvccConfig::default(),
    )
    .unwrap();
    for i in 1..=200 {
        a.apply(i, &random_command(&mut rng)).unwrap();
    }
    let mut b = MvccStore::open(
        RealDisk,
        tmp.path().join("b/state.redb"),
        MvccConfig::default(),
    )
    .unwrap();
    b.apply(1, &random_command(&mut rng)).unwrap();
    let mut inst = SnapshotInstaller::new(RealDisk, b.path()).unwrap();
    for c in SnapshotStream::new(&a, 4096).unwrap() {
        inst.push(&c.unwrap()).unwrap();
    }
    b.install_snapshot(inst).unwrap();
    assert_eq!(b.hash().unwrap(), a.hash().unwrap());
    assert_eq!(b.dump().unwrap(), a.dump().unwrap());
    b.apply(201, &random_command(&mut rng)).unwrap();
    let path = b.path().to_path_buf();
    drop(b);
    let b = MvccStore::open(RealDisk, path, MvccConfig::default()).unwrap();
    assert_eq!(b.applied_index(), 201);
    assert!(!tmp.path().join("b/state.redb.snapshot-tmp").exists());
}

#[test]
fn defragment_shrinks_the_file_and_keeps_the_data() {
    let disk = SimDisk::new();
    let mut s = open(&disk);
    let mut index = 0;
    for i in 0..3000u32 {
        index += 1;
        s.apply(
            index,
            &Command::Put(PutRequest {
                key: format!("k{i:05}").into_bytes(),
                value: vec![7; 200],
                ..PutRequest::default()
            }),
        )
        .unwrap();
    }
    index += 1;
    s.apply(
        index,
        &Command::DeleteRange(DeleteRangeRequest {
            key: b"k00100".to_vec(),
            range_end: vec![0],
            prev_kv: false,
        }),
    )
    .unwrap();
    index += 1;
    let rev = s.revision();
    s.apply(index, &Command::Compact { revision: rev }).unwrap();
    while !s.compact_step().unwrap() {}
    let before = image(&s);
    let size = s.size_bytes().unwrap();
    s.defragment().unwrap();
    assert_eq!(image(&s), before);
    assert!(
        s.size_bytes().unwrap() < size / 2,
        "{} -> {}",
        size,
        s.size_bytes().unwrap()
    );
    drop(s);
    assert_eq!(image(&open(&disk)), before);
}
