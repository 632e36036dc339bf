//! Entries and snapshot received but not yet persisted.
//!
//! # Guarantees
//!
//! 1. `entries[i].index == offset + i`: the unstable entries are contiguous and start
//!    right after the last persisted entry (or after the unstable snapshot).
//! 2. Marking entries stable checks their term, so entries replaced by a newer leader
//!    while a write was in flight are never considered persisted.

use crate::types::{Entry, Snapshot};

#[derive(Debug, Default)]
pub(crate) struct Unstable {
    /// A snapshot received from the leader and not yet persisted.
    pub(crate) snapshot: Option<Snapshot>,
    /// Invariant: `entries[i].index == offset + i`.
    pub(crate) entries: Vec<Entry>,
    pub(crate) offset: u64,
}

impl Unstable {
    pub(crate) fn new(offset: u64) -> Self {
        Self {
            snapshot: None,
            entries: Vec::new(),
            offset,
        }
    }

    pub(crate) fn maybe_first_index(&self) -> Option<u64> {
        self.snapshot.as_ref().map(|s| s.metadata.index + 1)
    }

    pub(crate) fn maybe_last_index(&self) -> Option<u64> {
        if !self.entries.is_empty() {
            Some(self.offset + self.entries.len() as u64 - 1)
        } else {
            self.snapshot.as_ref().map(|s| s.metadata.index)
        }
    }

    pub(crate) fn maybe_term(&self, index: u64) -> Option<u64> {
        if index < self.offset {
            return self
                .snapshot
                .as_ref()
                .filter(|s| s.metadata.index == index)
                .map(|s| s.metadata.term);
        }
        let last = self.maybe_last_index()?;
        if index > last {
            return None;
        }
        Some(self.entries[(index - self.offset) as usize].term)
    }

    /// Marks entries up to `index` persisted if the entry there still has `term`.
    pub(crate) fn stable_to(&mut self, index: u64, term: u64) -> bool {
        if index < self.offset || self.maybe_term(index) != Some(term) {
            return false;
        }
        let n = (index + 1 - self.offset) as usize;
        self.entries.drain(..n);
        self.offset = index + 1;
        true
    }

    pub(crate) fn stable_snap_to(&mut self, index: u64) -> bool {
        if self
            .snapshot
            .as_ref()
            .is_some_and(|s| s.metadata.index == index)
        {
            self.snapshot = None;
            return true;
        }
        false
    }

    pub(crate) fn restore(&mut self, snapshot: Snapshot) {
        self.entries.clear();
        self.offset = snapshot.metadata.index + 1;
        self.snapshot = Some(snapshot);
    }

    pub(crate) fn truncate_and_append(&mut self, ents: &[Entry]) {
        let Some(first) = ents.first() else {
            return;
        };
        let after = first.index;
        if after == self.offset + self.entries.len() as u64 {
            self.entries.extend_from_slice(ents);
        } else if after <= self.offset {
            // The new entries replace everything unstable (and some persisted entries,
            // which the runtime overwrites when it writes these).
            self.offset = after;
            self.entries.clear();
            self.entries.extend_from_slice(ents);
        } else {
            self.entries.truncate((after - self.offset) as usize);
            self.entries.extend_from_slice(ents);
        }
        debug_assert!(self
            .entries
            .iter()
            .enumerate()
            .all(|(i, e)| e.index == self.offset + i as u64));
    }

    /// Entries in `[lo, hi)`, which must lie within the unstable range.
    pub(crate) fn slice(&self, lo: u64, hi: u64) -> &[Entry] {
        assert!(lo >= self.offset, "unstable slice below offset");
        assert!(
            hi <= self.offset + self.entries.len() as u64,
            "unstable slice past end"
        );
        &self.entries[(lo - self.offset) as usize..(hi - self.offset) as usize]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ent(index: u64, term: u64) -> Entry {
        Entry {
            index,
            term,
            ..Entry::default()
        }
    }

    #[test]
    fn stable_to_checks_term() {
        let mut u = Unstable::new(5);
        u.truncate_and_append(&[ent(5, 1), ent(6, 1)]);
        assert!(!u.stable_to(6, 2));
        assert!(u.stable_to(5, 1));
        assert_eq!(u.offset, 6);
        u.truncate_and_append(&[ent(6, 2), ent(7, 2)]);
        assert_eq!(u.maybe_term(6), Some(2));
        u.truncate_and_append(&[ent(4, 3)]);
        assert_eq!(u.offset, 4);
        assert_eq!(u.maybe_last_index(), Some(4));
    }
}
