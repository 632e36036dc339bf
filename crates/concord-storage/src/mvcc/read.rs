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

use redb::ReadableTable;

use super::index::KeyIndex;
use super::keys::{decode_row, Revision, Version};
use super::types::KeyValue;
use crate::errors::StoreError;

/// The table type all MVCC tables share.
pub(crate) trait Tbl: ReadableTable<&'static [u8], &'static [u8]> {}
impl<T: ReadableTable<&'static [u8], &'static [u8]>> Tbl for T {}

/// The live version of `key` stored at `rev` (where the index says it is).
pub(crate) fn live_at<T: Tbl>(t: &T, key: &[u8], rev: Revision) -> Result<KeyValue, StoreError> {
    let row = t
        .get(rev.to_bytes().as_slice())?
        .ok_or_else(|| StoreError::Corrupt(format!("revs has no row for revision {rev:?}")))?;
    match decode_row(rev, row.value()) {
        Some((_, Version::Live(kv))) if kv.key == key => Ok(kv),
        _ => Err(StoreError::Corrupt(format!(
            "revs row {rev:?} is not a live version of the key the index names"
        ))),
    }
}

/// Every key live at `rev` in `[key, range_end)`, in key order.
pub(crate) fn range_at<T: Tbl>(
    ix: &KeyIndex,
    t: &T,
    key: &[u8],
    range_end: &[u8],
    rev: i64,
) -> Result<Vec<KeyValue>, StoreError> {
    let mut out = Vec::new();
    ix.scan(key, range_end, rev, |k, r| {
        out.push(live_at(t, k, r)?);
        Ok::<_, StoreError>(true)
    })?;
    Ok(out)
}

/// The version of `key` live at `rev`, if any.
pub(crate) fn get_at<T: Tbl>(
    ix: &KeyIndex,
    t: &T,
    key: &[u8],
    rev: i64,
) -> Result<Option<KeyValue>, StoreError> {
    ix.get(key, rev).map(|r| live_at(t, key, r)).transpose()
}
