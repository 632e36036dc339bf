//! The log storage seam: the [`Storage`] trait the core reads durable state through, and
//! [`MemStorage`], an in-memory implementation for tests and simulation.
//!
//! # Guarantees
//!
//! 1. The core only *reads* storage. The runtime writes what a [`crate::Ready`] hands it
//!    (snapshot, entries, hard state) and only then calls [`crate::RawNode::advance`], so
//!    storage always holds a prefix-consistent, durable log.
//! 2. [`MemStorage`] keeps `first_index() == snapshot index + 1` after compaction, and
//!    never compacts past its snapshot, so any entry a follower may still need is either
//!    in the log or in the snapshot.
//! 3. Every out-of-range request is an error value, never a panic.

use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use crate::errors::StorageError;
use crate::types::{ConfState, Entry, HardState, Snapshot, SnapshotMetadata};

/// The durable state a node restarts from.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct RaftState {
    /// Last persisted hard state.
    pub hard_state: HardState,
    /// Membership as of the node's applied index at restart (see [`crate::Config::applied`]).
    pub conf_state: ConfState,
}

/// Read access to the persisted log.
///
/// Indexes: entries `first_index()..=last_index()` are available; `term(first_index() - 1)`
/// must still answer (it is the snapshot's term), so the leader can send the entry after it.
pub trait Storage {
    /// Hard state and membership to start from.
    fn initial_state(&self) -> Result<RaftState, StorageError>;
    /// Entries in `[lo, hi)`, stopping once their total size passes `max_size_bytes`
    /// (but always at least one entry when the range is non-empty).
    fn entries(&self, lo: u64, hi: u64, max_size_bytes: u64) -> Result<Vec<Entry>, StorageError>;
    /// Term of the entry at `index`, for `first_index() - 1 <= index <= last_index()`.
    fn term(&self, index: u64) -> Result<u64, StorageError>;
    /// Index of the first available entry.
    fn first_index(&self) -> Result<u64, StorageError>;
    /// Index of the last entry (`first_index() - 1` when the log is empty).
    fn last_index(&self) -> Result<u64, StorageError>;
    /// The most recent snapshot. `request_index` is the index the follower needs; a
    /// storage that builds snapshots lazily may return
    /// [`StorageError::SnapshotTemporarilyUnavailable`] and the leader retries later.
    fn snapshot(&self, request_index: u64) -> Result<Snapshot, StorageError>;
}

/// Total size of `entries` kept within `max_size_bytes` (at least one entry).
pub(crate) fn limit_size(entries: &mut Vec<Entry>, max_size_bytes: u64) {
    if entries.len() <= 1 {
        return;
    }
    let mut size = 0u64;
    let mut keep = 0;
    for e in entries.iter() {
        size = size.saturating_add(e.size_bytes());
        if keep > 0 && size > max_size_bytes {
            break;
        }
        keep += 1;
    }
    entries.truncate(keep);
}

#[derive(Debug, Default)]
struct MemStorageCore {
    hard_state: HardState,
    snapshot: Snapshot,
    // Invariant: offset_index <= snapshot.metadata.index, and entries[i].index ==
    // offset_index + 1 + i.
    offset_index: u64,
    offset_term: u64,
    entries: Vec<Entry>,
}

impl MemStorageCore {
    fn last_index(&self) -> u64 {
        self.offset_index + self.entries.len() as u64
    }

    fn term(&self, index: u64) -> Result<u64, StorageError> {
        if index < self.offset_index {
            return Err(StorageError::Compacted);
        }
        if index == self.offset_index {
            return Ok(self.offset_term);
        }
        if index > self.last_index() {
            return Err(StorageError::Unavailable);
        }
        Ok(self.entries[(index - self.offset_index - 1) as usize].term)
    }
}

/// An in-memory [`Storage`]. Clones share the same data, so a test can keep a handle
/// while the [`crate::RawNode`] owns another.
#[derive(Clone, Debug, Default)]
pub struct MemStorage {
    core: Arc<RwLock<MemStorageCore>>,
}

impl MemStorage {
    /// An empty storage (a node joining an existing cluster starts like this).
    pub fn new() -> Self {
        Self::default()
    }

    /// A storage for a founding member: a snapshot at index 1, term 1 with membership
    /// `conf_state` and empty data, so that nodes added later learn the founding
    /// membership from that snapshot.
    pub fn bootstrap(conf_state: ConfState) -> Self {
        let s = Self::new();
        {
            let mut core = s.wl();
            core.snapshot = Snapshot {
                metadata: SnapshotMetadata {
                    index: 1,
                    term: 1,
                    conf_state,
                },
                data: Vec::new(),
            };
            core.offset_index = 1;
            core.offset_term = 1;
            core.hard_state = HardState {
                term: 1,
                vote: None,
                commit: 1,
            };
        }
        s
    }

    fn rl(&self) -> RwLockReadGuard<'_, MemStorageCore> {
        // A panic while holding the lock leaves plain data behind; keep using it.
        self.core.read().unwrap_or_else(|e| e.into_inner())
    }

    fn wl(&self) -> RwLockWriteGuard<'_, MemStorageCore> {
        self.core.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Stores the hard state.
    pub fn set_hard_state(&self, hs: HardState) {
        self.wl().hard_state = hs;
    }

    /// The stored hard state.
    pub fn hard_state(&self) -> HardState {
        self.rl().hard_state
    }

    /// Appends entries, replacing any stored entries from `entries[0].index` on.
    pub fn append(&self, entries: &[Entry]) -> Result<(), StorageError> {
        let Some(first) = entries.first() else {
            return Ok(());
        };
        let mut core = self.wl();
        if first.index > core.last_index() + 1 {
            return Err(StorageError::Other(format!(
                "append leaves a gap: last index {}, appending from {}",
                core.last_index(),
                first.index
            )));
        }
        // Entries at or before the offset are already covered by the snapshot.
        let skip = (core.offset_index + 1).saturating_sub(first.index) as usize;
        if skip >= entries.len() {
            return Ok(());
        }
        let entries = &entries[skip..];
        let keep = (entries[0].index - core.offset_index - 1) as usize;
        core.entries.truncate(keep);
        core.entries.extend_from_slice(entries);
        Ok(())
    }

    /// Replaces the whole log with `snapshot`.
    pub fn apply_snapshot(&self, snapshot: Snapshot) -> Result<(), StorageError> {
        let mut core = self.wl();
        let index = snapshot.metadata.index;
        if index <= core.snapshot.metadata.index {
            return Err(StorageError::SnapshotOutOfDate);
        }
        core.offset_index = index;
        core.offset_term = snapshot.metadata.term;
        core.entries.clear();
        core.hard_state.term = core.hard_state.term.max(snapshot.metadata.term);
        core.hard_state.commit = core.hard_state.commit.max(index);
        core.snapshot = snapshot;
        Ok(())
    }

    /// Makes a snapshot at `index` (which the application has applied) with the given
    /// membership and state-machine image, and returns it.
    pub fn create_snapshot(
        &self,
        index: u64,
        conf_state: ConfState,
        data: Vec<u8>,
    ) -> Result<Snapshot, StorageError> {
        let mut core = self.wl();
        if index <= core.snapshot.metadata.index {
            return Err(StorageError::SnapshotOutOfDate);
        }
        if index > core.hard_state.commit {
            return Err(StorageError::Other(format!(
                "snapshot index {index} is past the commit index {}",
                core.hard_state.commit
            )));
        }
        let term = core.term(index)?;
        core.snapshot = Snapshot {
            metadata: SnapshotMetadata {
                index,
                term,
                conf_state,
            },
            data,
        };
        Ok(core.snapshot.clone())
    }

    /// Discards entries up to and including `compact_index`, which must not pass the
    /// snapshot (a follower needing a discarded entry then receives the snapshot).
    pub fn compact(&self, compact_index: u64) -> Result<(), StorageError> {
        let mut core = self.wl();
        if compact_index <= core.offset_index {
            return Ok(());
        }
        if compact_index > core.snapshot.metadata.index {
            return Err(StorageError::Other(format!(
                "compact index {compact_index} is past the snapshot index {}",
                core.snapshot.metadata.index
            )));
        }
        let term = core.term(compact_index)?;
        let n = (compact_index - core.offset_index) as usize;
        core.entries.drain(..n);
        core.offset_index = compact_index;
        core.offset_term = term;
        Ok(())
    }
}

impl Storage for MemStorage {
    fn initial_state(&self) -> Result<RaftState, StorageError> {
        let core = self.rl();
        Ok(RaftState {
            hard_state: core.hard_state,
            conf_state: core.snapshot.metadata.conf_state.clone(),
        })
    }

    fn entries(&self, lo: u64, hi: u64, max_size_bytes: u64) -> Result<Vec<Entry>, StorageError> {
        let core = self.rl();
        if lo <= core.offset_index {
            return Err(StorageError::Compacted);
        }
        if hi > core.last_index() + 1 {
            return Err(StorageError::Unavailable);
        }
        if lo >= hi {
            return Ok(Vec::new());
        }
        let start = (lo - core.offset_index - 1) as usize;
        let end = (hi - core.offset_index - 1) as usize;
        // Copy only what the size limit lets through.
        let mut size = 0u64;
        let mut out = Vec::new();
        for e in &core.entries[start..end] {
            size = size.saturating_add(e.size_bytes());
            if !out.is_empty() && size > max_size_bytes {
                break;
            }
            out.push(e.clone());
        }
        Ok(out)
    }

    fn term(&self, index: u64) -> Result<u64, StorageError> {
        self.rl().term(index)
    }

    fn first_index(&self) -> Result<u64, StorageError> {
        Ok(self.rl().offset_index + 1)
    }

    fn last_index(&self) -> Result<u64, StorageError> {
        Ok(self.rl().last_index())
    }

    fn snapshot(&self, _request_index: u64) -> Result<Snapshot, StorageError> {
        Ok(self.rl().snapshot.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::NodeId;

    fn ent(index: u64, term: u64) -> Entry {
        Entry {
            index,
            term,
            ..Entry::default()
        }
    }

    #[test]
    fn append_truncates_conflicts_and_reports_ranges() {
        let s = MemStorage::new();
        s.append(&[ent(1, 1), ent(2, 1), ent(3, 2)]).unwrap();
        s.append(&[ent(3, 3), ent(4, 3)]).unwrap();
        assert_eq!(s.last_index().unwrap(), 4);
        assert_eq!(s.term(3).unwrap(), 3);
        assert_eq!(s.term(5), Err(StorageError::Unavailable));
        assert!(s.append(&[ent(7, 3)]).is_err());
        assert_eq!(s.entries(1, 5, u64::MAX).unwrap().len(), 4);
        assert_eq!(s.entries(1, 5, 0).unwrap().len(), 1);
    }

    #[test]
    fn compact_never_passes_the_snapshot() {
        let s = MemStorage::new();
        s.append(&[ent(1, 1), ent(2, 1), ent(3, 2)]).unwrap();
        s.set_hard_state(HardState {
            term: 2,
            vote: None,
            commit: 3,
        });
        assert!(s.compact(2).is_err());
        s.create_snapshot(2, ConfState::default(), vec![7]).unwrap();
        s.compact(2).unwrap();
        assert_eq!(s.first_index().unwrap(), 3);
        assert_eq!(s.term(2).unwrap(), 1);
        assert_eq!(s.term(1), Err(StorageError::Compacted));
        assert_eq!(s.entries(2, 4, u64::MAX), Err(StorageError::Compacted));
        assert_eq!(s.snapshot(0).unwrap().data, vec![7]);
    }

    #[test]
    fn apply_snapshot_replaces_log() {
        let s = MemStorage::bootstrap(ConfState {
            voters: vec![NodeId(1)],
            ..ConfState::default()
        });
        assert_eq!(s.first_index().unwrap(), 2);
        let mut snap = Snapshot::default();
        snap.metadata.index = 10;
        snap.metadata.term = 4;
        s.apply_snapshot(snap.clone()).unwrap();
        assert_eq!(s.last_index().unwrap(), 10);
        assert_eq!(s.hard_state().commit, 10);
        assert_eq!(s.apply_snapshot(snap), Err(StorageError::SnapshotOutOfDate));
    }
}
