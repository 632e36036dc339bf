//! The in-memory key index: for every key, the revisions of its stored versions.
//!
//! Versions live in the `revs` table, ordered by revision, so a write appends to the
//! table's right-most leaf instead of rewriting a random page (docs/storage.md § 2.2). Finding
//! a key's version at a revision is this index's job, as `treeIndex` is etcd's: it is
//! rebuilt at open by one scan of `revs` and updated by every apply and compaction step.
//!
//! # Guarantees
//!
//! 1. **Mirrors the table.** After every committed apply or compaction step, the index
//!    holds exactly the (key, revision, tombstone) of the rows of `revs`; a failed step
//!    rebuilds it from the table (see `MvccStore::apply_batch`).
//! 2. A key's revisions are strictly increasing (writes only append newer revisions;
//!    compaction only removes), so the version live at `r` is found by binary search.
//! 3. For a key whose latest version is live, the index also holds that version's
//!    `create_revision`, `version` and lease ([`Latest`]), so a put, which builds on the
//!    latest version, reads no row unless it must return or keep the previous value.
//!
//! # Layout
//!
//! A key's history is found by hashing (one probe, where an ordered map walks a dozen
//! nodes and compares the key with a key behind a pointer at each: at 100,000 keys that
//! walk was the largest single cost of applying a put). Key order, which ranges, scans and
//! hashes need, lives in a separate ordered set of the same shared key allocations, touched
//! only when a key appears or goes.

use std::collections::{BTreeSet, HashMap};
use std::ops::Bound;
use std::sync::Arc;

use super::keys::Revision;
use super::types::KeyValue;

/// One stored version of a key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Entry {
    pub(crate) rev: Revision,
    pub(crate) tombstone: bool,
}

/// What a put needs of the version it replaces (see guarantee 3).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Latest {
    pub(crate) create_revision: i64,
    pub(crate) version: i64,
    pub(crate) lease: i64,
}

impl Latest {
    pub(crate) fn of(kv: &KeyValue) -> Self {
        Self {
            create_revision: kv.create_revision,
            version: kv.version,
            lease: kv.lease,
        }
    }
}

/// One key's versions, oldest first, and the metadata of the latest if it is live.
#[derive(Clone, Debug, PartialEq, Eq)]
struct History {
    entries: Vec<Entry>,
    latest: Latest,
}

/// Key → its versions' revisions, oldest first. See the module docs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct KeyIndex {
    /// Every key with a stored version, and its history.
    histories: HashMap<Arc<[u8]>, History>,
    /// The keys of `histories`, in order.
    order: BTreeSet<Arc<[u8]>>,
}

/// The entry live at `at` in one key's history: the newest with `main <= at`, if it is
/// not a tombstone.
fn live_at(history: &[Entry], at: i64) -> Option<Revision> {
    let n = history.partition_point(|e| e.rev.main <= at);
    let e = history[..n].last()?;
    (!e.tombstone).then_some(e.rev)
}

/// Bounds of a user-key interval.
pub(crate) type KeyRange<'a> = (Bound<&'a [u8]>, Bound<&'a [u8]>);

/// The user-key interval `[key, range_end)` as etcd reads it: an empty `range_end` is the
/// single key, `[0]` is everything from `key` on. `None` if the interval is empty.
pub(crate) fn key_bounds<'a>(key: &'a [u8], range_end: &'a [u8]) -> Option<KeyRange<'a>> {
    if range_end.is_empty() {
        return Some((Bound::Included(key), Bound::Included(key)));
    }
    if range_end == [0] {
        return Some((Bound::Included(key), Bound::Unbounded));
    }
    if range_end <= key {
        return None;
    }
    Some((Bound::Included(key), Bound::Excluded(range_end)))
}

impl KeyIndex {
    /// Number of keys with at least one stored version.
    pub(crate) fn len(&self) -> usize {
        self.histories.len()
    }

    /// Records a new version of `key` (`None`: a tombstone); `rev` must be newer than the
    /// key's latest.
    pub(crate) fn push(&mut self, key: &[u8], rev: Revision, live: Option<Latest>) {
        let e = Entry {
            rev,
            tombstone: live.is_none(),
        };
        let latest = live.unwrap_or_default();
        match self.histories.get_mut(key) {
            Some(h) => {
                debug_assert!(h.entries.last().is_none_or(|l| l.rev < rev));
                h.entries.push(e);
                h.latest = latest;
            }
            None => {
                let h = History {
                    entries: vec![e],
                    latest,
                };
                let key: Arc<[u8]> = key.into();
                self.order.insert(key.clone());
                self.histories.insert(key, h);
            }
        }
    }

    /// Records a version found while rebuilding from the table, which is scanned in
    /// revision order, so this is a push; `false` if the table's order was violated.
    pub(crate) fn push_checked(&mut self, key: &[u8], rev: Revision, live: Option<Latest>) -> bool {
        if let Some(h) = self.histories.get(key) {
            if h.entries.last().is_some_and(|l| l.rev >= rev) {
                return false;
            }
        }
        self.push(key, rev, live);
        true
    }

    /// The revision of `key`'s version live at `at`, if any.
    pub(crate) fn get(&self, key: &[u8], at: i64) -> Option<Revision> {
        live_at(&self.histories.get(key)?.entries, at)
    }

    /// The metadata of `key`'s latest version, if it is live.
    pub(crate) fn latest(&self, key: &[u8]) -> Option<Latest> {
        let h = self.histories.get(key)?;
        (!h.entries.last()?.tombstone).then_some(h.latest)
    }

    /// Calls `f(key, revision)` for every key live at `at` in `[key, range_end)`, in key
    /// order, until it returns `Ok(false)`.
    pub(crate) fn scan<'s, E>(
        &'s self,
        key: &[u8],
        range_end: &[u8],
        at: i64,
        mut f: impl FnMut(&'s [u8], Revision) -> Result<bool, E>,
    ) -> Result<(), E> {
        if range_end.is_empty() {
            // One key: no walk of the order.
            if let Some((k, h)) = self.histories.get_key_value(key) {
                if let Some(rev) = live_at(&h.entries, at) {
                    f(k, rev)?;
                }
            }
            return Ok(());
        }
        let Some(bounds) = key_bounds(key, range_end) else {
            return Ok(());
        };
        for (k, h) in self.ordered(self.order.range::<[u8], _>(bounds)) {
            if let Some(rev) = live_at(&h.entries, at) {
                if !f(k, rev)? {
                    break;
                }
            }
        }
        Ok(())
    }

    /// Keys in order with their histories (for hashes).
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&[u8], &[Entry])> {
        self.ordered(self.order.iter())
            .map(|(k, h)| (k, h.entries.as_slice()))
    }

    /// The histories of `keys` (keys of `order`, so each has one).
    fn ordered<'s>(
        &'s self,
        keys: impl Iterator<Item = &'s Arc<[u8]>>,
    ) -> impl Iterator<Item = (&'s [u8], &'s History)> {
        keys.filter_map(|k| Some((&k[..], self.histories.get(&k[..])?)))
    }

    /// Compaction: removes the versions of `key` older than `rev`, and the one at `rev`
    /// too if `and_rev`; returns the revisions removed. A key left without versions goes.
    /// The latest version is removed only with all others (it is never older than
    /// another), so [`KeyIndex::latest`] stays right.
    pub(crate) fn compact(&mut self, key: &[u8], rev: Revision, and_rev: bool) -> Vec<Revision> {
        let Some(h) = self.histories.get_mut(key) else {
            return Vec::new();
        };
        let n = h
            .entries
            .partition_point(|e| e.rev < rev || (and_rev && e.rev == rev));
        let old = h.entries.drain(..n).map(|e| e.rev).collect();
        if h.entries.is_empty() {
            self.histories.remove(key);
            self.order.remove(key);
        }
        old
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(main: i64, sub: i64) -> Revision {
        Revision { main, sub }
    }

    fn live(version: i64) -> Option<Latest> {
        Some(Latest {
            create_revision: 2,
            version,
            lease: 0,
        })
    }

    #[test]
    fn versions_live_at_a_revision() {
        let mut ix = KeyIndex::default();
        ix.push(b"a", r(2, 0), live(1));
        ix.push(b"a", r(4, 1), None);
        assert_eq!(ix.latest(b"a"), None);
        ix.push(b"a", r(6, 0), live(1));
        ix.push(b"b", r(3, 0), live(1));
        assert_eq!(ix.get(b"a", 1), None);
        assert_eq!(ix.get(b"a", 2), Some(r(2, 0)));
        assert_eq!(ix.get(b"a", 3), Some(r(2, 0)));
        assert_eq!(ix.get(b"a", 4), None);
        assert_eq!(ix.get(b"a", 5), None);
        assert_eq!(ix.get(b"a", 9), Some(r(6, 0)));
        assert_eq!(ix.latest(b"a"), live(1));
        let mut seen = Vec::new();
        ix.scan(b"a", &[0], 5, |k, rev| {
            seen.push((k.to_vec(), rev));
            Ok::<_, ()>(true)
        })
        .unwrap();
        assert_eq!(seen, vec![(b"b".to_vec(), r(3, 0))]);
        // One key (an empty range end) is found without the ordered walk.
        let one = |key: &[u8], at| {
            let mut seen = Vec::new();
            ix.scan(key, b"", at, |k, rev| {
                seen.push((k.to_vec(), rev));
                Ok::<_, ()>(true)
            })
            .unwrap();
            seen
        };
        assert_eq!(one(b"a", 3), vec![(b"a".to_vec(), r(2, 0))]);
        assert_eq!(one(b"a", 5), vec![]);
        assert_eq!(one(b"c", 9), vec![]);
        let keys: Vec<_> = ix.iter().map(|(k, h)| (k.to_vec(), h.len())).collect();
        assert_eq!(keys, vec![(b"a".to_vec(), 3), (b"b".to_vec(), 1)]);
        assert!(!ix.push_checked(b"b", r(3, 0), None));
        assert_eq!(ix.compact(b"a", r(4, 1), true), vec![r(2, 0), r(4, 1)]);
        assert_eq!(ix.latest(b"a"), live(1));
        assert_eq!(ix.compact(b"b", r(3, 0), true), vec![r(3, 0)]);
        assert_eq!(ix.len(), 1);
        assert_eq!(key_bounds(b"b", b"a"), None);
    }
}
