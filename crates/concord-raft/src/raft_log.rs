//! The node's view of the log: persisted entries in [`Storage`] followed by unstable ones.
//!
//! # Guarantees
//!
//! 1. `applied <= committed <= last_index()`: nothing is applied before it is committed,
//!    and nothing is committed that the log does not hold.
//! 2. `committed` never decreases, and entries at or below it are never truncated
//!    (asserted in [`RaftLog::append`]).
//! 3. `persisted` is the last index known durable *in this log*: truncating unstable
//!    entries below it lowers it, so a leader never counts itself for an entry it has
//!    not written (Raft §5.3, "acknowledged means durable").
//! 4. Log matching (Raft §5.3): [`RaftLog::maybe_append`] appends only after the entry
//!    at `(index, log_term)` matches, and only replaces entries from the first conflict.

use crate::errors::StorageError;
use crate::log_unstable::Unstable;
use crate::storage::{limit_size, Storage};
use crate::types::{Entry, Snapshot};

pub(crate) struct RaftLog<S: Storage> {
    pub(crate) store: S,
    pub(crate) unstable: Unstable,
    /// Invariant: applied <= committed <= last_index().
    pub(crate) committed: u64,
    pub(crate) applied: u64,
    /// Invariant: persisted <= last_index().
    pub(crate) persisted: u64,
}

impl<S: Storage> RaftLog<S> {
    pub(crate) fn new(store: S) -> Result<Self, StorageError> {
        let first = store.first_index()?;
        let last = store.last_index()?;
        Ok(Self {
            store,
            unstable: Unstable::new(last + 1),
            committed: first.saturating_sub(1),
            applied: first.saturating_sub(1),
            persisted: last,
        })
    }

    pub(crate) fn first_index(&self) -> u64 {
        match self.unstable.maybe_first_index() {
            Some(i) => i,
            // Storage errors here mean the runtime broke the storage contract; treating the
            // log as starting after index 0 keeps the node from panicking on it.
            None => self.store.first_index().unwrap_or(1),
        }
    }

    pub(crate) fn last_index(&self) -> u64 {
        match self.unstable.maybe_last_index() {
            Some(i) => i,
            None => self.store.last_index().unwrap_or(0),
        }
    }

    pub(crate) fn term(&self, index: u64) -> Result<u64, StorageError> {
        let dummy = self.first_index().saturating_sub(1);
        if index < dummy {
            return Err(StorageError::Compacted);
        }
        if index > self.last_index() {
            return Err(StorageError::Unavailable);
        }
        if let Some(t) = self.unstable.maybe_term(index) {
            return Ok(t);
        }
        self.store.term(index)
    }

    pub(crate) fn last_term(&self) -> u64 {
        self.term(self.last_index()).unwrap_or(0)
    }

    pub(crate) fn match_term(&self, index: u64, term: u64) -> bool {
        self.term(index).is_ok_and(|t| t == term)
    }

    /// Appends `ents` sent after `(index, log_term)` if that entry matches; returns the
    /// index of the last new entry.
    pub(crate) fn maybe_append(
        &mut self,
        index: u64,
        log_term: u64,
        committed: u64,
        ents: &[Entry],
    ) -> Option<u64> {
        if !self.match_term(index, log_term) {
            return None;
        }
        let last_new = index + ents.len() as u64;
        let conflict = self.find_conflict(ents);
        if conflict != 0 {
            assert!(
                conflict > self.committed,
                "entry {conflict} conflicts with committed entry (committed {})",
                self.committed
            );
            let start = (conflict - index - 1) as usize;
            self.append(&ents[start..]);
        }
        self.commit_to(committed.min(last_new));
        Some(last_new)
    }

    pub(crate) fn append(&mut self, ents: &[Entry]) -> u64 {
        let Some(first) = ents.first() else {
            return self.last_index();
        };
        assert!(
            first.index > self.committed,
            "append at {} would overwrite committed {}",
            first.index,
            self.committed
        );
        self.unstable.truncate_and_append(ents);
        if first.index <= self.persisted {
            self.persisted = first.index - 1;
        }
        self.last_index()
    }

    /// Index of the first entry of `ents` whose term differs from ours (or that we do not
    /// have); 0 if every entry is already in the log.
    fn find_conflict(&self, ents: &[Entry]) -> u64 {
        ents.iter()
            .find(|e| !self.match_term(e.index, e.term))
            .map_or(0, |e| e.index)
    }

    /// The largest `(i, term(i))` with `i <= index` and `term(i) <= term`: the follower's
    /// hint of where its log may match a leader whose entry at `index` has `term`, so the
    /// leader skips a whole term per round trip instead of one entry.
    pub(crate) fn find_conflict_by_term(&self, index: u64, term: u64) -> (u64, u64) {
        let mut i = index.min(self.last_index());
        loop {
            match self.term(i) {
                Ok(t) if t <= term => return (i, t),
                Ok(_) if i > 0 => i -= 1,
                Ok(_) => return (0, 0),
                Err(_) => return (i, 0),
            }
        }
    }

    /// Raft §5.4.1: a candidate's log is at least as up to date as ours.
    pub(crate) fn is_up_to_date(&self, last_index: u64, term: u64) -> bool {
        let our_term = self.last_term();
        term > our_term || (term == our_term && last_index >= self.last_index())
    }

    /// Commits up to `max_index` if that entry is from `term` (Raft §5.4.2: only entries of
    /// the current term are committed by counting replicas).
    pub(crate) fn maybe_commit(&mut self, max_index: u64, term: u64) -> bool {
        if max_index > self.committed && self.match_term(max_index, term) {
            self.commit_to(max_index);
            return true;
        }
        false
    }

    pub(crate) fn commit_to(&mut self, to_commit: u64) {
        if self.committed < to_commit {
            assert!(
                to_commit <= self.last_index(),
                "commit {to_commit} out of range (last index {})",
                self.last_index()
            );
            self.committed = to_commit;
        }
    }

    pub(crate) fn applied_to(&mut self, index: u64) {
        if index <= self.applied {
            return;
        }
        assert!(
            index <= self.committed,
            "applied {index} beyond committed {}",
            self.committed
        );
        self.applied = index;
    }

    pub(crate) fn stable_to(&mut self, index: u64, term: u64) {
        if self.unstable.stable_to(index, term) {
            self.persisted = self.persisted.max(index);
        }
    }

    pub(crate) fn stable_snap_to(&mut self, index: u64) {
        if self.unstable.stable_snap_to(index) {
            self.persisted = self.persisted.max(index);
        }
    }

    pub(crate) fn unstable_entries(&self) -> &[Entry] {
        &self.unstable.entries
    }

    /// Entries from `index` to the end, within `max_size_bytes`.
    pub(crate) fn entries(
        &self,
        index: u64,
        max_size_bytes: u64,
    ) -> Result<Vec<Entry>, StorageError> {
        let last = self.last_index();
        if index > last {
            return Ok(Vec::new());
        }
        self.slice(index, last + 1, max_size_bytes)
    }

    /// Entries in `[lo, hi)`, within `max_size_bytes` (at least one).
    pub(crate) fn slice(
        &self,
        lo: u64,
        hi: u64,
        max_size_bytes: u64,
    ) -> Result<Vec<Entry>, StorageError> {
        if lo >= hi {
            return Ok(Vec::new());
        }
        if lo < self.first_index() {
            return Err(StorageError::Compacted);
        }
        if hi > self.last_index() + 1 {
            return Err(StorageError::Unavailable);
        }
        let mut out = Vec::new();
        let off = self.unstable.offset;
        if lo < off {
            out = self.store.entries(lo, hi.min(off), max_size_bytes)?;
            // A short read means the size limit was hit; stop there.
            if (out.len() as u64) < hi.min(off) - lo {
                return Ok(out);
            }
        }
        if hi > off {
            out.extend_from_slice(self.unstable.slice(lo.max(off), hi));
        }
        limit_size(&mut out, max_size_bytes);
        Ok(out)
    }

    pub(crate) fn has_next_committed_entries(&self) -> bool {
        let off = (self.applied + 1).max(self.first_index());
        self.committed + 1 > off
    }

    pub(crate) fn next_committed_entries(
        &self,
        max_size_bytes: u64,
    ) -> Result<Vec<Entry>, StorageError> {
        let off = (self.applied + 1).max(self.first_index());
        if self.committed + 1 > off {
            self.slice(off, self.committed + 1, max_size_bytes)
        } else {
            Ok(Vec::new())
        }
    }

    pub(crate) fn snapshot(&self, request_index: u64) -> Result<Snapshot, StorageError> {
        match &self.unstable.snapshot {
            Some(s) => Ok(s.clone()),
            None => self.store.snapshot(request_index),
        }
    }

    pub(crate) fn restore(&mut self, snapshot: Snapshot) {
        let index = snapshot.metadata.index;
        assert!(index > self.committed, "restoring an older snapshot");
        self.committed = index;
        self.persisted = self.persisted.min(index);
        self.unstable.restore(snapshot);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::MemStorage;

    fn ent(index: u64, term: u64) -> Entry {
        Entry {
            index,
            term,
            ..Entry::default()
        }
    }

    fn log_with(terms: &[u64]) -> RaftLog<MemStorage> {
        let s = MemStorage::new();
        let ents: Vec<Entry> = terms
            .iter()
            .enumerate()
            .map(|(i, &t)| ent(i as u64 + 1, t))
            .collect();
        s.append(&ents).unwrap();
        RaftLog::new(s).unwrap()
    }

    #[test]
    fn maybe_append_truncates_only_after_conflict() {
        let mut l = log_with(&[1, 1, 2]);
        assert_eq!(l.maybe_append(3, 3, 0, &[ent(4, 3)]), None);
        assert_eq!(l.maybe_append(1, 1, 2, &[ent(2, 1), ent(3, 3)]), Some(3));
        assert_eq!(l.term(3).unwrap(), 3);
        assert_eq!(l.committed, 2);
        assert_eq!(l.persisted, 2);
        l.stable_to(3, 3);
        assert_eq!(l.persisted, 3);
    }

    #[test]
    fn conflict_hint_skips_terms() {
        let l = log_with(&[1, 1, 2, 2, 2, 4, 4]);
        assert_eq!(l.find_conflict_by_term(7, 3), (5, 2));
        assert_eq!(l.find_conflict_by_term(10, 4), (7, 4));
        assert_eq!(l.find_conflict_by_term(3, 0), (0, 0));
    }

    #[test]
    fn commit_requires_current_term() {
        let mut l = log_with(&[1, 2]);
        assert!(!l.maybe_commit(1, 2));
        assert!(l.maybe_commit(2, 2));
        assert_eq!(l.committed, 2);
    }

    #[test]
    fn slice_spans_storage_and_unstable() {
        let mut l = log_with(&[1, 1]);
        l.append(&[ent(3, 2), ent(4, 2)]);
        let s = l.slice(1, 5, u64::MAX).unwrap();
        assert_eq!(
            s.iter().map(|e| e.index).collect::<Vec<_>>(),
            vec![1, 2, 3, 4]
        );
        assert_eq!(l.slice(1, 5, 0).unwrap().len(), 1);
        assert!(l.is_up_to_date(4, 2));
        assert!(!l.is_up_to_date(3, 2));
        assert!(l.is_up_to_date(1, 3));
    }
}
