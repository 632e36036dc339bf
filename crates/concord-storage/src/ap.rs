//! The AP bucket store: each key's CRDT state ([`RedisString`]) and the hints this node
//! holds for replicas that were unreachable, in one redb file (`ap.redb` in the data
//! directory) apart from the CP keyspace's.
//!
//! Every change is a read-merge-write of one key in one transaction made durable (fsync)
//! before it returns, so a replica acknowledges only what survives a crash. A stored state
//! only ever moves up its lattice: writes and repairs are merges.
//!
//! # Guarantees
//!
//! 1. **Durable before acknowledged.** [`ApStore::update`], [`ApStore::merge`] and
//!    [`ApStore::store_hint`] return after an fsync'd commit.
//! 2. **Only joins.** A merge never loses what the stored state had: the result is the
//!    join of both.
//! 3. **Damage is an error.** Every stored value carries a CRC32C over its key and bytes
//!    and a format version; a value that fails either is reported as
//!    [`ApStoreError::Corrupt`] naming the key, never decoded into a wrong state.
//! 4. **A hint is removed only if unchanged.** [`ApStore::remove_hint`] takes the state
//!    that was handed over and removes the hint only if it still equals it, so a hint
//!    merged again meanwhile is handed over again.

use std::path::{Path, PathBuf};

use concord_core::crdt::{Crdt, RedisString};
use concord_core::NodeId;
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};

use crate::mvcc::keys::{seal, unseal};

type Def = TableDefinition<'static, &'static [u8], &'static [u8]>;
/// bucket (1 byte) + key → sealed state.
const KEYS: Def = TableDefinition::new("ap_keys");
/// owner (8 bytes, big-endian) + bucket + key → sealed state.
const HINTS: Def = TableDefinition::new("ap_hints");

/// The format version written before each encoded state.
const FORMAT: u8 = 1;

/// Why the AP store failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ApStoreError {
    /// redb failed.
    #[error("ap store database error: {0}")]
    Db(#[from] redb::Error),
    /// The file could not be opened (damaged, or not a database).
    #[error("ap store file {path} cannot be opened: {reason}")]
    Open {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A stored value failed its checksum or does not decode.
    #[error("ap store value of key {key:?} is damaged: {reason}")]
    Corrupt {
        /// The key, lossily as text.
        key: String,
        /// What is wrong.
        reason: String,
    },
}

macro_rules! redb_into_ap_error {
    ($($t:ty),*) => {$(
        impl From<$t> for ApStoreError {
            fn from(e: $t) -> Self {
                ApStoreError::Db(e.into())
            }
        }
    )*};
}
redb_into_ap_error!(
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    redb::SetDurabilityError
);

/// A hint: a state held for `owner`.
#[derive(Debug, Clone, PartialEq)]
pub struct Hint {
    /// The bucket.
    pub bucket: u8,
    /// The key.
    pub key: Vec<u8>,
    /// The state to hand over.
    pub state: RedisString,
}

/// The store.
#[derive(Debug)]
pub struct ApStore {
    db: Database,
}

fn row(bucket: u8, key: &[u8]) -> Vec<u8> {
    let mut r = Vec::with_capacity(key.len() + 1);
    r.push(bucket);
    r.extend_from_slice(key);
    r
}

fn hint_row(owner: NodeId, bucket: u8, key: &[u8]) -> Vec<u8> {
    let mut r = owner.get().to_be_bytes().to_vec();
    r.extend(row(bucket, key));
    r
}

/// A state as bytes: a format version, then the state (what the replica protocol carries;
/// the store adds a checksum).
pub fn state_to_bytes(state: &RedisString) -> Vec<u8> {
    let mut b = vec![FORMAT];
    // Serializing an in-memory state into a Vec cannot fail.
    b.extend(postcard::to_allocvec(state).unwrap_or_default());
    b
}

/// The state in `bytes` written by [`state_to_bytes`], or what is wrong with them.
pub fn state_from_bytes(bytes: &[u8]) -> Result<RedisString, String> {
    match bytes.split_first() {
        Some((&FORMAT, body)) => {
            postcard::from_bytes(body).map_err(|e| format!("undecodable state: {e}"))
        }
        Some((v, _)) => Err(format!("unknown format version {v}")),
        None => Err("empty value".into()),
    }
}

fn encode(row: &[u8], state: &RedisString) -> Vec<u8> {
    seal(row, &state_to_bytes(state))
}

fn decode(row: &[u8], stored: &[u8]) -> Result<RedisString, ApStoreError> {
    let corrupt = |reason: String| ApStoreError::Corrupt {
        key: String::from_utf8_lossy(row).into_owned(),
        reason,
    };
    let bytes = unseal(row, stored).ok_or_else(|| corrupt("checksum mismatch".into()))?;
    state_from_bytes(bytes).map_err(corrupt)
}

impl ApStore {
    /// Opens or creates the store at `path`.
    pub fn open(path: &Path) -> Result<Self, ApStoreError> {
        let open_err = |reason: String| ApStoreError::Open {
            path: path.to_path_buf(),
            reason,
        };
        // redb may panic on a damaged file instead of returning an error.
        let opened = std::panic::catch_unwind(|| Database::create(path))
            .map_err(|_| open_err("the database library failed reading it".into()))?;
        let db = opened.map_err(|e| open_err(e.to_string()))?;
        let txn = db.begin_write()?;
        txn.open_table(KEYS)?;
        txn.open_table(HINTS)?;
        txn.commit()?;
        Ok(ApStore { db })
    }

    /// The state of `key` in `bucket`, if any.
    pub fn get(&self, bucket: u8, key: &[u8]) -> Result<Option<RedisString>, ApStoreError> {
        let txn = self.db.begin_read()?;
        let t = txn.open_table(KEYS)?;
        let r = row(bucket, key);
        let stored = t.get(r.as_slice())?;
        stored.map(|v| decode(&r, v.value())).transpose()
    }

    /// Applies `f` to the state of `key` (a new one if absent) and stores the result
    /// durably, unless `f` refuses (then nothing is written). Returns `f`'s answer and the
    /// state stored.
    pub fn update<T, E>(
        &self,
        bucket: u8,
        key: &[u8],
        f: impl FnOnce(&mut RedisString) -> Result<T, E>,
    ) -> Result<Result<(T, RedisString), E>, ApStoreError> {
        let r = row(bucket, key);
        let mut txn = self.db.begin_write()?;
        txn.set_durability(Durability::Immediate)?;
        let out = {
            let mut t = txn.open_table(KEYS)?;
            let mut state = match t.get(r.as_slice())? {
                Some(v) => decode(&r, v.value())?,
                None => RedisString::new(),
            };
            match f(&mut state) {
                Ok(answer) => {
                    t.insert(r.as_slice(), encode(&r, &state).as_slice())?;
                    Ok((answer, state))
                }
                Err(e) => Err(e),
            }
        };
        if out.is_ok() {
            txn.commit()?;
        } else {
            txn.abort()?;
        }
        Ok(out)
    }

    /// Merges `state` into the stored state of `key` durably; returns the result.
    pub fn merge(
        &self,
        bucket: u8,
        key: &[u8],
        state: &RedisString,
    ) -> Result<RedisString, ApStoreError> {
        let merged = self.update(bucket, key, |s| {
            s.merge(state);
            Ok::<(), std::convert::Infallible>(())
        })?;
        Ok(merged.map_or_else(|e| match e {}, |(_, s)| s))
    }

    /// Keeps `state` of `key` for `owner` (merged into a hint already held).
    pub fn store_hint(
        &self,
        owner: NodeId,
        bucket: u8,
        key: &[u8],
        state: &RedisString,
    ) -> Result<(), ApStoreError> {
        let r = hint_row(owner, bucket, key);
        let mut txn = self.db.begin_write()?;
        txn.set_durability(Durability::Immediate)?;
        {
            let mut t = txn.open_table(HINTS)?;
            let mut held = match t.get(r.as_slice())? {
                Some(v) => decode(&r, v.value())?,
                None => RedisString::new(),
            };
            held.merge(state);
            t.insert(r.as_slice(), encode(&r, &held).as_slice())?;
        }
        txn.commit()?;
        Ok(())
    }

    /// Up to `limit` hints held for `owner`, in key order.
    pub fn hints(&self, owner: NodeId, limit: usize) -> Result<Vec<Hint>, ApStoreError> {
        let txn = self.db.begin_read()?;
        let t = txn.open_table(HINTS)?;
        let prefix = owner.get().to_be_bytes();
        let mut out = Vec::new();
        for entry in t.range(prefix.as_slice()..)? {
            let (k, v) = entry?;
            let k = k.value();
            if !k.starts_with(&prefix) || out.len() >= limit {
                break;
            }
            let Some((&bucket, key)) = k[prefix.len()..].split_first() else {
                continue;
            };
            out.push(Hint {
                bucket,
                key: key.to_vec(),
                state: decode(k, v.value())?,
            });
        }
        Ok(out)
    }

    /// The owners hints are held for, with how many each.
    pub fn hint_owners(&self) -> Result<Vec<(NodeId, u64)>, ApStoreError> {
        let txn = self.db.begin_read()?;
        let t = txn.open_table(HINTS)?;
        let mut out: Vec<(NodeId, u64)> = Vec::new();
        for entry in t.iter()? {
            let (k, _) = entry?;
            let Some(id) = k.value().get(..8).and_then(|b| <[u8; 8]>::try_from(b).ok()) else {
                continue;
            };
            let owner = NodeId(u64::from_be_bytes(id));
            match out.last_mut() {
                Some((o, n)) if *o == owner => *n += 1,
                _ => out.push((owner, 1)),
            }
        }
        Ok(out)
    }

    /// Removes the hint of `key` for `owner` if it still equals `handed_over`; returns
    /// whether it did.
    pub fn remove_hint(
        &self,
        owner: NodeId,
        bucket: u8,
        key: &[u8],
        handed_over: &RedisString,
    ) -> Result<bool, ApStoreError> {
        let r = hint_row(owner, bucket, key);
        let mut txn = self.db.begin_write()?;
        txn.set_durability(Durability::Immediate)?;
        let removed = {
            let mut t = txn.open_table(HINTS)?;
            let same = match t.get(r.as_slice())? {
                Some(v) => decode(&r, v.value())? == *handed_over,
                None => false,
            };
            if same {
                t.remove(r.as_slice())?;
            }
            same
        };
        txn.commit()?;
        Ok(removed)
    }

    /// How many keys `bucket` holds (tombstones included).
    pub fn key_count(&self, bucket: u8) -> Result<u64, ApStoreError> {
        let txn = self.db.begin_read()?;
        let t = txn.open_table(KEYS)?;
        let mut n = 0;
        for entry in t.range([bucket].as_slice()..)? {
            let (k, _) = entry?;
            if k.value().first() != Some(&bucket) {
                break;
            }
            n += 1;
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use concord_core::crdt::{SetExpiry, StringError};

    const A: NodeId = NodeId(1);
    const B: NodeId = NodeId(2);

    fn set(v: &str, t: u64, n: NodeId) -> RedisString {
        let mut s = RedisString::new();
        s.set(v.as_bytes().to_vec(), (t, n), n, SetExpiry::Clear);
        s
    }

    #[test]
    fn states_merge_durably_and_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ap.redb");
        {
            let store = ApStore::open(&path).unwrap();
            assert_eq!(store.get(0, b"k").unwrap(), None);
            store.merge(0, b"k", &set("a", 1, A)).unwrap();
            let m = store.merge(0, b"k", &set("old", 0, B)).unwrap();
            assert_eq!(m.get(0), Some(b"a".to_vec()), "an older write loses");
            let (n, _) = store
                .update(1, b"c", |s| s.incr(5, A, (1, A), 0))
                .unwrap()
                .unwrap();
            assert_eq!(n, 5);
            let refused = store.update(0, b"k", |s| s.incr(1, A, (2, A), 0)).unwrap();
            assert_eq!(refused, Err(StringError::NotInteger));
        }
        let store = ApStore::open(&path).unwrap();
        assert_eq!(
            store.get(0, b"k").unwrap().unwrap().get(0),
            Some(b"a".to_vec())
        );
        assert_eq!(
            store.get(1, b"c").unwrap().unwrap().get(0),
            Some(b"5".to_vec())
        );
        assert_eq!(store.get(1, b"k").unwrap(), None, "buckets are apart");
        assert_eq!(
            (store.key_count(0).unwrap(), store.key_count(1).unwrap()),
            (1, 1)
        );
    }

    #[test]
    fn hints_are_kept_per_owner_and_removed_only_if_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        let store = ApStore::open(&dir.path().join("ap.redb")).unwrap();
        store.store_hint(B, 0, b"x", &set("1", 1, A)).unwrap();
        store.store_hint(B, 0, b"y", &set("2", 1, A)).unwrap();
        store
            .store_hint(NodeId(3), 0, b"x", &set("3", 1, A))
            .unwrap();
        assert_eq!(store.hint_owners().unwrap(), vec![(B, 2), (NodeId(3), 1)]);
        let hints = store.hints(B, 10).unwrap();
        assert_eq!(hints.len(), 2);
        assert_eq!(store.hints(B, 1).unwrap().len(), 1);
        // The hint changes after it was read: it must stay.
        store.store_hint(B, 0, b"x", &set("newer", 2, A)).unwrap();
        assert!(!store.remove_hint(B, 0, b"x", &hints[0].state).unwrap());
        let now = store.hints(B, 10).unwrap();
        assert!(store.remove_hint(B, 0, b"x", &now[0].state).unwrap());
        assert_eq!(store.hints(B, 10).unwrap().len(), 1);
    }

    #[test]
    fn damaged_values_are_errors_naming_the_key() {
        let r = row(0, b"key");
        let good = encode(&r, &set("v", 1, A));
        assert!(decode(&r, &good).is_ok());
        let mut bad = good.clone();
        bad[1] ^= 0x40;
        let err = decode(&r, &bad).unwrap_err().to_string();
        assert!(err.contains("checksum") && err.contains("key"), "{err}");
        let wrong_version = seal(&r, &[9, 1, 2]);
        assert!(decode(&r, &wrong_version)
            .unwrap_err()
            .to_string()
            .contains("format version 9"));
        let garbage = seal(&r, &[FORMAT, 0xff, 0xff, 0xff]);
        assert!(decode(&r, &garbage).is_err());
        assert!(decode(&r, &seal(&r, &[])).is_err());
    }
}
