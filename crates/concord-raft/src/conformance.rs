//! A conformance suite every [`Storage`] implementation must pass (the WAL-backed one of
//! concord-storage included), so the core can rely on the trait's contract.
//!
//! # Guarantees
//!
//! 1. [`check_storage`] exercises every method at and around the boundaries of the
//!    stored range and returns a description of the first violation instead of
//!    panicking, so callers can wrap it in their own test.

use crate::errors::StorageError;
use crate::storage::Storage;
use crate::types::{ConfState, Entry, HardState, NodeId, Snapshot, SnapshotMetadata};

/// Builds a storage holding `snapshot` (as its latest snapshot, with nothing before it),
/// then `entries` (contiguous, starting right after the snapshot), and `hard_state`.
pub trait StorageBuilder<S: Storage> {
    /// Builds the storage.
    fn build(&self, snapshot: &Snapshot, entries: &[Entry], hard_state: HardState) -> S;
}

impl<S: Storage, F: Fn(&Snapshot, &[Entry], HardState) -> S> StorageBuilder<S> for F {
    fn build(&self, snapshot: &Snapshot, entries: &[Entry], hard_state: HardState) -> S {
        self(snapshot, entries, hard_state)
    }
}

fn check(cond: bool, what: &str) -> Result<(), String> {
    if cond {
        Ok(())
    } else {
        Err(format!("storage contract violated: {what}"))
    }
}

/// Runs the suite against storages made by `builder`.
pub fn check_storage<S: Storage>(builder: &impl StorageBuilder<S>) -> Result<(), String> {
    let cs = ConfState {
        voters: vec![NodeId(1), NodeId(2), NodeId(3)],
        learners: vec![NodeId(4)],
        ..ConfState::default()
    };
    let snapshot = Snapshot {
        metadata: SnapshotMetadata {
            index: 10,
            term: 3,
            conf_state: cs.clone(),
        },
        data: b"image".to_vec(),
    };
    let entries: Vec<Entry> = (11..=15)
        .map(|i| Entry {
            index: i,
            term: if i < 13 { 3 } else { 4 },
            data: vec![i as u8; 100],
            ..Entry::default()
        })
        .collect();
    let hs = HardState {
        term: 4,
        vote: Some(NodeId(2)),
        commit: 13,
    };
    let s = builder.build(&snapshot, &entries, hs);
    let rs = s.initial_state().map_err(|e| e.to_string())?;
    check(rs.hard_state == hs, "initial_state returns the hard state")?;
    check(
        s.first_index() == Ok(11),
        "first_index is snapshot index + 1",
    )?;
    check(s.last_index() == Ok(15), "last_index is the last entry")?;
    check(
        s.term(10) == Ok(3),
        "term(first_index - 1) is the snapshot term",
    )?;
    check(s.term(13) == Ok(4), "term of a stored entry")?;
    check(
        s.term(9) == Err(StorageError::Compacted),
        "term before the snapshot is Compacted",
    )?;
    check(
        s.term(16) == Err(StorageError::Unavailable),
        "term after the end is Unavailable",
    )?;
    check(
        s.entries(10, 12, u64::MAX) == Err(StorageError::Compacted),
        "entries from the snapshot index are Compacted",
    )?;
    check(
        s.entries(11, 17, u64::MAX) == Err(StorageError::Unavailable),
        "entries past last_index + 1 are Unavailable",
    )?;
    check(
        s.entries(11, 16, u64::MAX) == Ok(entries.clone()),
        "entries returns the range",
    )?;
    check(
        s.entries(12, 12, u64::MAX) == Ok(Vec::new()),
        "an empty range is empty",
    )?;
    check(
        s.entries(11, 16, 0).map(|v| v.len()) == Ok(1),
        "a size limit still returns one entry",
    )?;
    let two = entries[0].size_bytes() + entries[1].size_bytes();
    check(
        s.entries(11, 16, two).map(|v| v.len()) == Ok(2),
        "the size limit is inclusive",
    )?;
    let snap = s.snapshot(11).map_err(|e| e.to_string())?;
    check(
        snap.metadata.index == 10 && snap.metadata.term == 3,
        "snapshot metadata",
    )?;
    check(snap.metadata.conf_state == cs, "snapshot membership")?;
    check(snap.data == snapshot.data, "snapshot data")?;

    let empty = builder.build(&Snapshot::default(), &[], HardState::default());
    check(
        empty.first_index() == Ok(1),
        "an empty storage starts at index 1",
    )?;
    check(
        empty.last_index() == Ok(0),
        "an empty storage ends at index 0",
    )?;
    check(empty.term(0) == Ok(0), "term(0) of an empty storage is 0")?;
    check(
        empty.entries(1, 1, u64::MAX) == Ok(Vec::new()),
        "an empty storage returns no entries",
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::MemStorage;

    #[test]
    fn mem_storage_conforms() {
        let build = |snap: &Snapshot, ents: &[Entry], hs: HardState| {
            let s = MemStorage::new();
            if !snap.is_empty() {
                s.apply_snapshot(snap.clone()).unwrap();
            }
            s.append(ents).unwrap();
            s.set_hard_state(hs);
            s
        };
        check_storage(&build).unwrap();
    }
}
