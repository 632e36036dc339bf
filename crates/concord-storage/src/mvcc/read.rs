//! Reads of the key history at a revision, shared by read-only and write transactions.
//!
//! # Guarantees
//!
//! 1. A read at revision `r` sees, for each key, its latest version with main revision
//!    `<= r`, and nothing if that version is a tombstone: etcd's view of the store at `r`.
//! 2. Physical compaction up to `c` never changes what a read at `r >= c` sees (it only
//!    removes versions superseded at or before `c`), so reads need no coordination with it.

use std::ops::Bound;

use redb::ReadableTable;

use super::keys::{decode_key_rev, decode_version, encode_key, Revision, Version};
use super::types::KeyValue;
use crate::errors::StoreError;

/// The table type all MVCC tables share.
pub(crate) trait Tbl: ReadableTable<&'static [u8], &'static [u8]> {}
impl<T: ReadableTable<&'static [u8], &'static [u8]>> Tbl for T {}

fn corrupt(what: &str) -> StoreError {
    StoreError::Corrupt(format!("undecodable {what} in key_revs"))
}

/// The user-key interval `[key, range_end)` as etcd reads it.
pub(crate) fn key_bounds(key: &[u8], range_end: &[u8]) -> Option<(Vec<u8>, Bound<Vec<u8>>)> {
    let start = encode_key(key);
    if range_end.is_empty() {
        let mut end = start.clone();
        end.extend_from_slice(&[0xFF; 17]);
        return Some((start, Bound::Excluded(end)));
    }
    if range_end == [0] {
        return Some((start, Bound::Unbounded));
    }
    if range_end <= key {
        return None;
    }
    Some((start, Bound::Excluded(encode_key(range_end))))
}

/// Calls `f` with every key live at revision `rev` in `[key, range_end)`, in key order,
/// until it returns `false`.
pub(crate) fn scan_at<T: Tbl>(
    t: &T,
    key: &[u8],
    range_end: &[u8],
    rev: i64,
    mut f: impl FnMut(KeyValue) -> bool,
) -> Result<(), StoreError> {
    let Some((start, end)) = key_bounds(key, range_end) else {
        return Ok(());
    };
    let range = (
        Bound::Included(start.as_slice()),
        end.as_ref().map(Vec::as_slice),
    );
    // The best version so far of the current key: its key_revs key and value.
    let mut best: Option<(Vec<u8>, Vec<u8>)> = None;
    let mut group: Vec<u8> = Vec::new();
    let flush = |best: &mut Option<(Vec<u8>, Vec<u8>)>,
                 f: &mut dyn FnMut(KeyValue) -> bool|
     -> Result<bool, StoreError> {
        if let Some((k, v)) = best.take() {
            let (user_key, r) = decode_key_rev(&k).ok_or_else(|| corrupt("key"))?;
            match decode_version(&k, user_key, r, &v).ok_or_else(|| corrupt("version"))? {
                Version::Live(kv) => return Ok(f(kv)),
                Version::Tombstone => {}
            }
        }
        Ok(true)
    };
    for item in t.range::<&[u8]>(range)? {
        let (k, v) = item?;
        let k = k.value();
        if k.len() < 18 {
            return Err(corrupt("key"));
        }
        let (enc, r) = k.split_at(k.len() - 16);
        if enc != group.as_slice() {
            if !flush(&mut best, &mut f)? {
                return Ok(());
            }
            group.clear();
            group.extend_from_slice(enc);
        }
        let r = Revision::from_bytes(r).ok_or_else(|| corrupt("revision"))?;
        if r.main <= rev {
            best = Some((k.to_vec(), v.value().to_vec()));
        }
    }
    flush(&mut best, &mut f)?;
    Ok(())
}

/// Every key live at `rev` in `[key, range_end)`.
pub(crate) fn range_at<T: Tbl>(
    t: &T,
    key: &[u8],
    range_end: &[u8],
    rev: i64,
) -> Result<Vec<KeyValue>, StoreError> {
    let mut out = Vec::new();
    scan_at(t, key, range_end, rev, |kv| {
        out.push(kv);
        true
    })?;
    Ok(out)
}

/// The version of `key` live at `rev`, if any.
pub(crate) fn get_at<T: Tbl>(t: &T, key: &[u8], rev: i64) -> Result<Option<KeyValue>, StoreError> {
    let start = encode_key(key);
    let mut end = start.clone();
    end.extend_from_slice(
        &Revision {
            main: rev,
            sub: i64::MAX,
        }
        .to_bytes(),
    );
    let last = t
        .range::<&[u8]>(start.as_slice()..=end.as_slice())?
        .next_back();
    let Some(item) = last else {
        return Ok(None);
    };
    let (k, v) = item?;
    let (user_key, r) = decode_key_rev(k.value()).ok_or_else(|| corrupt("key"))?;
    match decode_version(k.value(), user_key, r, v.value()).ok_or_else(|| corrupt("version"))? {
        Version::Live(kv) => Ok(Some(kv)),
        Version::Tombstone => Ok(None),
    }
}
