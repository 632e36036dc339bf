use std::path::{Path, PathBuf};

use concord_raft::{
    ConfState, Entry, EntryKind, HardState, NodeId, SnapshotMetadata, Storage, StorageError,
};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use super::{Batch, Wal, WalConfig, WalStorage};
use crate::disk::{Disk, SimDisk, Tear};
use crate::errors::{WalOpenError, WalWriteError};

fn ent(index: u64, term: u64, data: &[u8]) -> Entry {
    Entry {
        term,
        index,
        kind: EntryKind::Normal,
        data: data.to_vec(),
    }
}

fn small_config() -> WalConfig {
    WalConfig {
        segment_bytes: 600,
        max_record_bytes: 4096,
        cache_bytes: 64,
        preallocate_bytes: 200,
    }
}

fn dir() -> PathBuf {
    PathBuf::from("/wal")
}

/// The log as a model: the state after a number of batches.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Model {
    first: u64,
    snapshot_term: u64,
    entries: Vec<Entry>,
    hs: HardState,
}

impl Model {
    fn new() -> Self {
        Self {
            first: 1,
            snapshot_term: 0,
            entries: Vec::new(),
            hs: HardState::default(),
        }
    }
    fn last(&self) -> u64 {
        self.first - 1 + self.entries.len() as u64
    }
    fn append(&mut self, es: &[Entry], hs: Option<HardState>) {
        if let Some(f) = es.first() {
            self.entries.truncate((f.index - self.first) as usize);
            self.entries.extend_from_slice(es);
        }
        if let Some(hs) = hs {
            self.hs = hs;
        }
    }
    fn compact(&mut self, index: u64) {
        let n = (index + 1 - self.first) as usize;
        self.snapshot_term = self.entries[n - 1].term;
        self.entries.drain(..n);
        self.first = index + 1;
    }
}

fn state_of<D: Disk>(wal: &Wal<D>) -> Model {
    Model {
        first: wal.first_index(),
        snapshot_term: wal.term(wal.first_index() - 1).unwrap(),
        entries: wal
            .entries(wal.first_index(), wal.last_index() + 1, u64::MAX)
            .unwrap(),
        hs: wal.hard_state(),
    }
}

/// Random batches: mostly appends at the end, sometimes a conflicting suffix, sometimes a
/// compaction. Returns the model after every acknowledged step.
fn run_random(wal: &mut Wal<SimDisk>, rng: &mut SmallRng, steps: usize) -> Vec<Model> {
    let mut model = Model::new();
    let mut history = vec![model.clone()];
    let mut term = 1;
    for _ in 0..steps {
        let roll = rng.gen_range(0..10);
        if roll == 0 && model.hs.commit >= model.first {
            let index = rng.gen_range(model.first..=model.hs.commit);
            let meta = SnapshotMetadata {
                index,
                term: model.entries[(index - model.first) as usize].term,
                conf_state: ConfState::default(),
            };
            wal.compact(meta).unwrap();
            model.compact(index);
        } else {
            let mut from = model.last() + 1;
            if roll == 1 && model.last() > model.hs.commit {
                term += 1;
                from = rng.gen_range(model.hs.commit + 1..=model.last());
            }
            let n = rng.gen_range(0..4u64);
            let es: Vec<Entry> = (from..from + n)
                .map(|i| {
                    let len = rng.gen_range(0..40);
                    let data: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
                    ent(i, term, &data)
                })
                .collect();
            let last = if n > 0 { from + n - 1 } else { model.last() };
            let hs = HardState {
                term,
                vote: Some(NodeId(1)),
                commit: rng.gen_range(model.hs.commit..=last.max(model.hs.commit)),
            };
            wal.append(Batch {
                snapshot: None,
                entries: &es,
                hard_state: Some(hs),
                lazy: false,
            })
            .unwrap();
            model.append(&es, Some(hs));
        }
        assert_eq!(state_of(wal), model);
        history.push(model.clone());
    }
    history
}

#[test]
fn append_read_reopen_roundtrip() {
    let disk = SimDisk::new();
    let mut wal = Wal::open(disk.clone(), dir(), small_config()).unwrap();
    let history = run_random(&mut wal, &mut SmallRng::seed_from_u64(7), 200);
    assert!(wal.segment_count() > 1);
    drop(wal);
    let wal = Wal::open(disk, dir(), small_config()).unwrap();
    assert_eq!(state_of(&wal), *history.last().unwrap());
    assert_eq!(wal.recovery_report().torn_bytes, 0);
}

#[test]
fn conflicting_suffix_is_replaced_across_reopen() {
    let disk = SimDisk::new();
    let mut wal = Wal::open(disk.clone(), dir(), WalConfig::default()).unwrap();
    let es: Vec<Entry> = (1..=5).map(|i| ent(i, 1, b"a")).collect();
    wal.append(Batch {
        entries: &es,
        ..Batch::default()
    })
    .unwrap();
    wal.append(Batch {
        entries: &[ent(3, 2, b"b"), ent(4, 2, b"c")],
        ..Batch::default()
    })
    .unwrap();
    assert!(matches!(
        wal.append(Batch {
            entries: &[ent(9, 2, b"x")],
            ..Batch::default()
        }),
        Err(WalWriteError::Gap { last: 4, first: 9 })
    ));
    drop(wal);
    let wal = Wal::open(disk, dir(), WalConfig::default()).unwrap();
    assert_eq!(wal.last_index(), 4);
    assert_eq!(wal.entry(3).unwrap(), Some(ent(3, 2, b"b")));
    assert_eq!(wal.entry(2).unwrap(), Some(ent(2, 1, b"a")));
}

fn segment_paths(disk: &SimDisk) -> Vec<PathBuf> {
    disk.list_dir(&dir())
        .unwrap()
        .into_iter()
        .map(|n| dir().join(n))
        .collect()
}

// Frame start offsets of a segment's records (after the header).
fn frame_starts(bytes: &[u8]) -> Vec<usize> {
    let mut out = Vec::new();
    let mut pos = super::format::SEGMENT_HEADER_BYTES;
    while pos < bytes.len() {
        let Ok((_, next)) = super::format::read_frame(bytes, pos, u32::MAX) else {
            assert!(
                bytes[pos..].iter().all(|&b| b == 0),
                "only zeros follow the data"
            );
            break;
        };
        out.push(pos);
        pos = next;
    }
    out
}

#[test]
fn recovery_from_every_cut_of_the_last_segment_is_a_prefix() {
    let disk = SimDisk::new();
    let mut wal = Wal::open(disk.clone(), dir(), small_config()).unwrap();
    let history = run_random(&mut wal, &mut SmallRng::seed_from_u64(11), 60);
    drop(wal);
    let paths = segment_paths(&disk);
    assert!(
        paths.len() >= 3,
        "want several segments, got {}",
        paths.len()
    );
    let last = paths.last().unwrap();
    let len = disk.read_all(last).unwrap().len() as u64;
    let mut min_step = 0;
    for cut in 0..=len {
        let d = disk.fork();
        d.truncate(last, cut).unwrap();
        let wal =
            Wal::open(d, dir(), small_config()).unwrap_or_else(|e| panic!("cut at {cut}: {e}"));
        let got = state_of(&wal);
        // The recovered log is the state after some acknowledged step, never older than
        // a shorter cut gave, and never anything else.
        let step = (min_step..history.len())
            .find(|&i| history[i] == got)
            .unwrap_or_else(|| panic!("cut at {cut}: recovered a log that never existed"));
        min_step = step;
    }
    assert_eq!(min_step, history.len() - 1);
}

fn expect_corrupt(disk: SimDisk, path: &Path, offset: u64) {
    match Wal::open(disk, dir(), small_config()) {
        Err(WalOpenError::Corrupt {
            path: p, offset: o, ..
        }) => {
            assert_eq!((p.as_path(), o), (path, offset));
        }
        Err(e) => panic!(
            "expected corruption at {}:{offset}, got {e}",
            path.display()
        ),
        Ok(_) => panic!("expected corruption at {}:{offset}, opened", path.display()),
    }
}

#[test]
fn flipped_byte_in_an_earlier_record_names_file_and_offset() {
    let disk = SimDisk::new();
    let mut wal = Wal::open(disk.clone(), dir(), small_config()).unwrap();
    run_random(&mut wal, &mut SmallRng::seed_from_u64(5), 40);
    drop(wal);
    let paths = segment_paths(&disk);
    assert!(paths.len() >= 2);
    let error_message = {
        let d = disk.fork();
        d.flip_bit(&paths[0], 40, 3).unwrap();
        Wal::open(d, dir(), small_config()).unwrap_err().to_string()
    };
    assert!(error_message.contains(&paths[0].display().to_string()));
    assert!(error_message.contains("offset"));
    for (k, path) in paths.iter().enumerate() {
        let bytes = disk.read_all(path).unwrap();
        let starts = frame_starts(&bytes);
        let is_last = k + 1 == paths.len();
        // In the last segment, only records followed by a committed batch are "earlier".
        let limit = if is_last {
            let last_commit_batch_start = starts
                .iter()
                .rev()
                .skip(1)
                .find(|&&s| super::format::commit_frame_batch_start(&bytes, s).is_some())
                .map_or(0, |&s| s + 8 + super::format::COMMIT_PAYLOAD_BYTES);
            last_commit_batch_start
        } else {
            bytes.len()
        };
        for at in (0..limit).step_by(if is_last { 1 } else { 3 }) {
            let d = disk.fork();
            d.flip_bit(path, at as u64, (at % 8) as u8).unwrap();
            let frame = starts.iter().rev().find(|&&s| s <= at).copied();
            let expected = if at < super::format::SEGMENT_HEADER_BYTES {
                0
            } else {
                frame.unwrap_or(0) as u64
            };
            expect_corrupt(d, path, expected);
        }
    }
}

#[test]
fn power_cuts_keep_everything_synced_and_invent_nothing() {
    for seed in 0..200u64 {
        let mut rng = SmallRng::seed_from_u64(seed);
        let disk = SimDisk::new();
        let mut wal = Wal::open(disk.clone(), dir(), small_config()).unwrap();
        let steps = rng.gen_range(0..30);
        let mut acked = run_random(&mut wal, &mut rng, steps).pop().unwrap();
        for _round in 0..4 {
            // A batch in flight whose sync fails: the crash happens during it.
            disk.fail_syncs_after(Some(rng.gen_range(0..3)));
            let from = acked.last() + 1;
            let es: Vec<Entry> = (from..from + rng.gen_range(1..5))
                .map(|i| ent(i, acked.hs.term.max(1), &[i as u8; 30]))
                .collect();
            let hs = HardState {
                term: acked.hs.term.max(1),
                vote: Some(NodeId(2)),
                commit: acked.hs.commit,
            };
            let mut inflight = acked.clone();
            inflight.append(&es, Some(hs));
            let r = wal.append(Batch {
                snapshot: None,
                entries: &es,
                hard_state: Some(hs),
                lazy: false,
            });
            if r.is_ok() {
                acked = inflight.clone();
            }
            let tear = [
                Tear::None,
                Tear::Prefix,
                Tear::PrefixThenZeros,
                Tear::Sectors,
            ][rng.gen_range(0..4)];
            disk.power_cut(tear, &mut rng);
            wal = Wal::open(disk.clone(), dir(), small_config())
                .unwrap_or_else(|e| panic!("seed {seed}: {e}"));
            let got = state_of(&wal);
            assert!(
                got == acked || got == inflight,
                "seed {seed}: recovered {got:?}, acked {acked:?}"
            );
            acked = got;
            // And the log keeps working after recovery.
            let more = run_random_from(&mut wal, &mut rng, acked.clone(), 5);
            acked = more;
        }
    }
}

fn run_random_from(
    wal: &mut Wal<SimDisk>,
    rng: &mut SmallRng,
    mut model: Model,
    n: usize,
) -> Model {
    for _ in 0..n {
        let from = model.last() + 1;
        let es: Vec<Entry> = (from..from + rng.gen_range(0..3))
            .map(|i| ent(i, model.hs.term.max(1), &[7; 20]))
            .collect();
        wal.append(Batch {
            entries: &es,
            ..Batch::default()
        })
        .unwrap();
        model.append(&es, None);
        assert_eq!(state_of(wal), model);
    }
    model
}

#[test]
fn compaction_removes_covered_segments_and_survives_reopen() {
    let disk = SimDisk::new();
    let mut wal = Wal::open(disk.clone(), dir(), small_config()).unwrap();
    for i in 1..=60u64 {
        wal.append(Batch {
            entries: &[ent(i, 1, &[i as u8; 50])],
            hard_state: Some(HardState {
                term: 1,
                vote: Some(NodeId(1)),
                commit: i,
            }),
            ..Batch::default()
        })
        .unwrap();
    }
    let before = wal.segment_count();
    assert!(before > 4);
    let meta = SnapshotMetadata {
        index: 50,
        term: 1,
        conf_state: ConfState {
            voters: vec![NodeId(1), NodeId(2), NodeId(3)],
            ..ConfState::default()
        },
    };
    wal.compact(meta.clone()).unwrap();
    assert!(wal.segment_count() < before);
    let storage = WalStorage::new(wal);
    assert_eq!(storage.first_index(), Ok(51));
    assert_eq!(storage.term(50), Ok(1));
    assert_eq!(storage.term(49), Err(StorageError::Compacted));
    assert_eq!(
        storage.entries(50, 52, u64::MAX),
        Err(StorageError::Compacted)
    );
    assert_eq!(
        storage.entries(51, 62, u64::MAX),
        Err(StorageError::Unavailable)
    );
    assert_eq!(storage.entries(51, 61, u64::MAX).unwrap().len(), 10);
    assert_eq!(storage.entries(51, 61, 100).unwrap().len(), 1);
    assert_eq!(
        storage.snapshot(0),
        Err(StorageError::SnapshotTemporarilyUnavailable)
    );
    drop(storage);
    let wal = Wal::open(disk, dir(), small_config()).unwrap();
    assert_eq!(wal.snapshot_metadata(), &meta);
    assert_eq!(wal.first_index(), 51);
    assert_eq!(wal.last_index(), 60);
    let storage = WalStorage::new(wal);
    let state = storage.initial_state().unwrap();
    assert_eq!(
        state.conf_state.voters,
        vec![NodeId(1), NodeId(2), NodeId(3)]
    );
    assert_eq!(state.hard_state.commit, 60);
}

#[test]
fn installed_snapshot_replaces_the_log() {
    let disk = SimDisk::new();
    let mut wal = Wal::open(disk.clone(), dir(), small_config()).unwrap();
    let es: Vec<Entry> = (1..=30).map(|i| ent(i, 1, &[1; 40])).collect();
    wal.append(Batch {
        entries: &es,
        ..Batch::default()
    })
    .unwrap();
    let meta = SnapshotMetadata {
        index: 100,
        term: 3,
        conf_state: ConfState::default(),
    };
    wal.append(Batch {
        snapshot: Some(&meta),
        entries: &[ent(101, 3, b"z")],
        hard_state: Some(HardState {
            term: 3,
            vote: None,
            commit: 100,
        }),
        lazy: false,
    })
    .unwrap();
    assert_eq!((wal.first_index(), wal.last_index()), (101, 101));
    assert!(matches!(
        wal.append(Batch {
            snapshot: Some(&meta),
            ..Batch::default()
        }),
        Err(WalWriteError::BadSnapshot { .. })
    ));
    drop(wal);
    let wal = Wal::open(disk, dir(), small_config()).unwrap();
    assert_eq!((wal.first_index(), wal.last_index()), (101, 101));
    assert_eq!(wal.term(100), Some(3));
    assert_eq!(wal.entry(101).unwrap(), Some(ent(101, 3, b"z")));
}

#[test]
fn failed_sync_poisons_the_wal() {
    let disk = SimDisk::new();
    let mut wal = Wal::open(disk.clone(), dir(), WalConfig::default()).unwrap();
    disk.fail_syncs_after(Some(0));
    assert!(matches!(
        wal.append(Batch {
            entries: &[ent(1, 1, b"a")],
            ..Batch::default()
        }),
        Err(WalWriteError::Io { .. })
    ));
    disk.fail_syncs_after(None);
    assert!(matches!(
        wal.append(Batch {
            entries: &[ent(1, 1, b"a")],
            ..Batch::default()
        }),
        Err(WalWriteError::Poisoned)
    ));
}

// The WAL-backed storage answers exactly like concord-raft's reference `MemStorage` on
// random appends, conflicts, compactions and installed snapshots.
#[test]
fn wal_storage_conforms_to_mem_storage() {
    use concord_raft::{MemStorage, Snapshot};
    for seed in 0..30u64 {
        let mut rng = SmallRng::seed_from_u64(seed);
        let mem = MemStorage::new();
        let wal = WalStorage::new(Wal::open(SimDisk::new(), dir(), small_config()).unwrap());
        let mut term = 1;
        let mut hs = HardState::default();
        for _ in 0..120 {
            let last = mem.last_index().unwrap();
            let first = mem.first_index().unwrap();
            match rng.gen_range(0..12) {
                0 if hs.commit >= first => {
                    let index = rng.gen_range(first..=hs.commit);
                    let snap = mem
                        .create_snapshot(index, ConfState::default(), vec![])
                        .unwrap();
                    mem.compact(index).unwrap();
                    wal.compact(snap.metadata).unwrap();
                }
                1 => {
                    term += 1;
                    let meta = SnapshotMetadata {
                        index: last + rng.gen_range(1..5),
                        term,
                        conf_state: ConfState::default(),
                    };
                    mem.apply_snapshot(Snapshot {
                        metadata: meta.clone(),
                        data: vec![],
                    })
                    .unwrap();
                    hs = mem.hard_state();
                    wal.append(Batch {
                        snapshot: Some(&meta),
                        entries: &[],
                        hard_state: Some(hs),
                        lazy: false,
                    })
                    .unwrap();
                }
                r => {
                    let mut from = last + 1;
                    if r == 2 && last > hs.commit {
                        term += 1;
                        from = rng.gen_range(hs.commit + 1..=last);
                    }
                    let es: Vec<Entry> = (from..from + rng.gen_range(1..4))
                        .map(|i| ent(i, term, &vec![i as u8; rng.gen_range(0..30)]))
                        .collect();
                    hs.term = term;
                    hs.commit = rng.gen_range(hs.commit..=es.last().unwrap().index);
                    mem.append(&es).unwrap();
                    mem.set_hard_state(hs);
                    wal.append(Batch {
                        snapshot: None,
                        entries: &es,
                        hard_state: Some(hs),
                        lazy: false,
                    })
                    .unwrap();
                }
            }
            assert_eq!(wal.first_index(), mem.first_index(), "seed {seed}");
            assert_eq!(wal.last_index(), mem.last_index(), "seed {seed}");
            assert_eq!(wal.initial_state(), mem.initial_state(), "seed {seed}");
            let (lo_all, hi_all) = (
                mem.first_index().unwrap().saturating_sub(2),
                mem.last_index().unwrap() + 3,
            );
            for i in lo_all..hi_all {
                assert_eq!(wal.term(i), mem.term(i), "seed {seed} term {i}");
            }
            for _ in 0..5 {
                let lo = rng.gen_range(lo_all..hi_all);
                let hi = rng.gen_range(lo_all..hi_all);
                let max = rng.gen_range(0..200);
                assert_eq!(
                    wal.entries(lo, hi, max),
                    mem.entries(lo, hi, max),
                    "seed {seed} entries({lo}, {hi}, {max})"
                );
            }
        }
    }
}

fn append_n(wal: &mut Wal<SimDisk>, from: u64, n: u64) {
    let es: Vec<Entry> = (from..from + n)
        .map(|i| ent(i, 1, &[i as u8; 30]))
        .collect();
    wal.append(Batch {
        entries: &es,
        ..Batch::default()
    })
    .unwrap();
}

// A torn final batch whose sectors reached the disk out of order (its commit frame
// persisted, an earlier frame did not) is still a torn write: recovery drops that batch.
#[test]
fn torn_final_batch_with_its_commit_persisted_is_dropped() {
    let disk = SimDisk::new();
    let mut wal = Wal::open(disk.clone(), dir(), no_prealloc()).unwrap();
    append_n(&mut wal, 1, 3);
    let before = disk.read_all(&segment_paths(&disk)[0]).unwrap().len();
    append_n(&mut wal, 4, 3);
    drop(wal);
    let path = segment_paths(&disk)[0].clone();
    // Zero the first frame of the final batch, as an unwritten sector reads.
    for at in before..before + 20 {
        let byte = disk.read_all(&path).unwrap()[at];
        for bit in 0..8 {
            if byte & (1 << bit) != 0 {
                disk.flip_bit(&path, at as u64, bit).unwrap();
            }
        }
    }
    let wal = Wal::open(disk, dir(), no_prealloc()).unwrap();
    assert_eq!(wal.last_index(), 3);
    assert!(wal.recovery_report().torn_bytes > 0);
}

// But damage in the second-to-last batch's commit frame, followed by the intact final
// batch, is corruption: the final batch was only written after that one was acknowledged.
#[test]
fn damaged_commit_followed_by_a_batch_is_corruption() {
    let disk = SimDisk::new();
    let mut wal = Wal::open(disk.clone(), dir(), no_prealloc()).unwrap();
    append_n(&mut wal, 1, 3);
    append_n(&mut wal, 4, 3);
    let end_of_second = disk.read_all(&segment_paths(&disk)[0]).unwrap().len();
    append_n(&mut wal, 7, 3);
    drop(wal);
    let path = segment_paths(&disk)[0].clone();
    let commit_at = end_of_second - 8 - super::format::COMMIT_PAYLOAD_BYTES;
    disk.flip_bit(&path, (commit_at + 12) as u64, 2).unwrap();
    expect_corrupt(disk, &path, commit_at as u64);
}

#[test]
fn lazy_commit_only_batches_are_written_with_the_next_one() {
    let disk = SimDisk::new();
    let mut wal = Wal::open(disk.clone(), dir(), WalConfig::default()).unwrap();
    let hs = |commit| HardState {
        term: 1,
        vote: Some(NodeId(1)),
        commit,
    };
    wal.append(Batch {
        entries: &[ent(1, 1, b"a"), ent(2, 1, b"b")],
        hard_state: Some(hs(0)),
        ..Batch::default()
    })
    .unwrap();
    let syncs = disk.sync_count();
    wal.append(Batch {
        hard_state: Some(hs(2)),
        lazy: true,
        ..Batch::default()
    })
    .unwrap();
    assert_eq!(
        disk.sync_count(),
        syncs,
        "a lazy commit-only batch does not sync"
    );
    assert_eq!(wal.hard_state(), hs(2));
    // A vote change is never lazy.
    let voted = HardState {
        vote: Some(NodeId(2)),
        ..hs(2)
    };
    wal.append(Batch {
        hard_state: Some(voted),
        lazy: true,
        ..Batch::default()
    })
    .unwrap();
    assert!(disk.sync_count() > syncs);
    drop(wal);
    disk.power_cut(Tear::None, &mut SmallRng::seed_from_u64(0));
    let wal = Wal::open(disk, dir(), WalConfig::default()).unwrap();
    assert_eq!(wal.hard_state(), voted);
}

fn no_prealloc() -> WalConfig {
    WalConfig {
        preallocate_bytes: 0,
        ..WalConfig::default()
    }
}

// Only the last segment may end in preallocated zeros; an earlier segment whose tail
// reads as zeros lost data.
#[test]
fn preallocated_zeros_end_only_the_last_segment() {
    let disk = SimDisk::new();
    let mut wal = Wal::open(disk.clone(), dir(), small_config()).unwrap();
    for i in 1..=30 {
        append_n(&mut wal, i, 1);
    }
    drop(wal);
    let paths = segment_paths(&disk);
    assert!(paths.len() > 2);
    let last = disk.read_all(paths.last().unwrap()).unwrap();
    assert!(
        last.ends_with(&[0; 100]),
        "the last segment is preallocated"
    );
    let first = disk.read_all(&paths[0]).unwrap();
    let mut data_end = super::format::SEGMENT_HEADER_BYTES;
    while let Ok((_, next)) = super::format::read_frame(&first, data_end, u32::MAX) {
        data_end = next;
    }
    assert_eq!(
        data_end,
        first.len(),
        "earlier segments are cut back to their data"
    );
    let wal = Wal::open(disk.clone(), dir(), small_config()).unwrap();
    assert_eq!(wal.last_index(), 30);
    drop(wal);
    // Zero the final batch of the first segment: its loss is detected.
    let starts = frame_starts(&first);
    let final_commit = *starts.last().unwrap();
    let final_batch = starts[starts.len() - 2];
    for (at, byte) in first.iter().enumerate().skip(final_batch) {
        for bit in 0..8 {
            if byte & (1 << bit) != 0 {
                disk.flip_bit(&paths[0], at as u64, bit).unwrap();
            }
        }
    }
    assert!(final_commit > final_batch);
    expect_corrupt(disk, &paths[0], final_batch as u64);
}
