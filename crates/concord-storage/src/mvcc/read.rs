//! Reads of the key history at a revision, shared by read-only and write transactions:
//! the key index finds the revision, the `revs` table holds the version.
//!
//! # Guarantees
//!
//! 1. A read at revision `r` sees, for each key, its latest version with main revision
//!    `<= r`, and nothing if that version is a tombstone: etcd's view of the store at `r`.
//! 2. Physical compaction up to `c` never changes what a read at `r >= c` sees (it only
//!    removes versions superseded at or before `c`), so reads need no coordination with it.
//! 3. A row the index names but the table lacks or cannot decode is
//!    [`StoreError::Corrupt`], never a silently missing key.
//! 4. Rows written by batches whose transaction is still open (see
//!    `MvccStore::apply_batch`) are read from the store's overlay of them, [`Rows::fresh`]:
//!    a read transaction sees only what was committed, the key index everything applied.

use redb::ReadableTable;

use super::index::KeyIndex;
use super::keys::{decode_live, Revision};
use super::types::KeyValue;
use crate::errors::StoreError;

/// The table type all MVCC tables share.
pub(crate) trait Tbl: ReadableTable<&'static [u8], &'static [u8]> {}
impl<T: ReadableTable<&'static [u8], &'static [u8]>> Tbl for T {}

/// The `revs` rows written since the last commit, in revision order: every one newer
/// than every committed row.
pub(crate) type Fresh = Vec<(Revision, Vec<u8>)>;

/// Where reads find `revs` rows: a table, and the rows not yet committed to it.
pub(crate) struct Rows<'a, T> {
    pub(crate) table: &'a T,
    /// Rows newer than the table's (empty inside a write transaction, which sees its own
    /// writes). A row may be in both after a commit that `fresh` was not told of; it is
    /// the same row.
    pub(crate) fresh: &'a [(Revision, Vec<u8>)],
}

impl<'a, T: Tbl> Rows<'a, T> {
    /// The table alone.
    pub(crate) fn of(table: &'a T) -> Self {
        Self { table, fresh: &[] }
    }

    /// The first revision read from `fresh` rather than the table, if any.
    pub(crate) fn fresh_from(&self) -> Option<Revision> {
        self.fresh.first().map(|(r, _)| *r)
    }

    /// `Some(row)` for a revision in the fresh span (`Some(None)`: it has no row there),
    /// `None` for one the table holds.
    fn fresh_row(&self, rev: Revision) -> Option<Option<&'a [u8]>> {
        if self.fresh_from()? > rev {
            return None;
        }
        let fresh = self.fresh;
        Some(
            fresh
                .binary_search_by_key(&rev, |(r, _)| *r)
                .ok()
                .map(|i| fresh[i].1.as_slice()),
        )
    }
}

fn missing(rev: Revision) -> StoreError {
    StoreError::Corrupt(format!("revs has no row for revision {rev:?}"))
}

/// The live version of `key` stored at `rev` (where the index says it is).
pub(crate) fn live_at<T: Tbl>(
    t: &Rows<'_, T>,
    key: &[u8],
    rev: Revision,
) -> Result<KeyValue, StoreError> {
    let kv = match t.fresh_row(rev) {
        Some(row) => decode_live(rev, key, row.ok_or_else(|| missing(rev))?),
        None => {
            let row = t
                .table
                .get(rev.to_bytes().as_slice())?
                .ok_or_else(|| missing(rev))?;
            decode_live(rev, key, row.value())
        }
    };
    kv.ok_or_else(|| not_live(rev))
}

fn not_live(rev: Revision) -> StoreError {
    StoreError::Corrupt(format!(
        "revs row {rev:?} is not a live version of the key the index names"
    ))
}

/// Every key live at `rev` in `[key, range_end)`, in key order.
pub(crate) fn range_at<T: Tbl>(
    ix: &KeyIndex,
    t: &Rows<'_, T>,
    key: &[u8],
    range_end: &[u8],
    rev: i64,
) -> Result<Vec<KeyValue>, StoreError> {
    let mut wanted = Vec::new();
    ix.scan(key, range_end, rev, |k, r| {
        wanted.push((k, r));
        Ok::<_, StoreError>(true)
    })?;
    read_many(t, &wanted)
}

/// A wanted row at most this many rows ahead of the last one read is reached by stepping
/// forward, a farther one by a new lookup.
const STEP_AHEAD: usize = 8;

/// The live versions of the given keys at the given revisions (as the index names them),
/// in the order given. They are read in revision order: rows written close together (keys
/// written together, as after a load) come from one forward scan of `revs`, scattered ones
/// from a lookup each, so a range costs at most one lookup per key and far fewer when its
/// keys were written together.
pub(crate) fn read_many<T: Tbl>(
    t: &Rows<'_, T>,
    wanted: &[(&[u8], Revision)],
) -> Result<Vec<KeyValue>, StoreError> {
    let mut order: Vec<usize> = (0..wanted.len()).collect();
    order.sort_unstable_by_key(|&i| wanted[i].1);
    let mut got: Vec<Option<KeyValue>> = vec![None; wanted.len()];
    let mut cursor: Option<redb::Range<'_, &'static [u8], &'static [u8]>> = None;
    for i in order {
        let (key, rev) = wanted[i];
        if let Some(row) = t.fresh_row(rev) {
            let row = row.ok_or_else(|| missing(rev))?;
            got[i] = Some(decode_live(rev, key, row).ok_or_else(|| not_live(rev))?);
            continue;
        }
        let mut found = None;
        if let Some(rows) = cursor.as_mut() {
            for _ in 0..STEP_AHEAD {
                let Some(item) = rows.next() else {
                    break;
                };
                let (k, v) = item?;
                match Revision::from_bytes(k.value()) {
                    Some(r) if r < rev => continue,
                    Some(r) if r == rev => {
                        found = Some(decode_live(rev, key, v.value()));
                        break;
                    }
                    // Past it: the row the index names is not there.
                    _ => return Err(missing(rev)),
                }
            }
        }
        let row = match found {
            Some(row) => row,
            None => {
                let from = rev.to_bytes();
                let mut rows = t.table.range::<&[u8]>(from.as_slice()..)?;
                let (k, v) = rows.next().ok_or_else(|| missing(rev))??;
                if k.value() != from.as_slice() {
                    return Err(missing(rev));
                }
                let row = decode_live(rev, key, v.value());
                cursor = Some(rows);
                row
            }
        };
        got[i] = Some(row.ok_or_else(|| not_live(rev))?);
    }
    Ok(got.into_iter().flatten().collect())
}

/// The version of `key` live at `rev`, if any.
pub(crate) fn get_at<T: Tbl>(
    ix: &KeyIndex,
    t: &Rows<'_, T>,
    key: &[u8],
    rev: i64,
) -> Result<Option<KeyValue>, StoreError> {
    ix.get(key, rev).map(|r| live_at(t, key, r)).transpose()
}
