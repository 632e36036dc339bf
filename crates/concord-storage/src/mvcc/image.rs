//! A whole store as plain data, to convert it to and from other formats (etcd's bbolt
//! snapshots, see `etcd_snapshot.rs`).
//!
//! # Guarantees
//!
//! 1. [`MvccStore::image`] is one read transaction: a consistent state.
//! 2. [`MvccStore::load_image`] writes everything in one durable transaction into an
//!    empty store, or nothing; afterwards the store is exactly as if it had been built by
//!    the image's history (same rows, same key index, same revisions).

use std::collections::BTreeMap;

use redb::{ReadableDatabase, ReadableTable};

use super::keys::{encode_row, lease_key, lease_key_entry, seal, unseal, Revision, Version};
use super::types::KeyValue;
use super::{
    decode_row, revs_key, write_meta, MvccStore, StoredVersion, LEASES, LEASE_KEYS, META, REVS,
};
use crate::disk::Disk;
use crate::errors::StoreError;

/// A lease as stored: id, granted TTL and the last checkpointed remaining TTL (0: none).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct ImageLease {
    pub id: i64,
    pub ttl: i64,
    pub remaining_ttl: i64,
}

/// Everything a store holds about the keyspace.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Image {
    /// Every stored version in revision order (`None`: a tombstone).
    pub versions: Vec<StoredVersion>,
    /// Leases in id order.
    pub leases: Vec<ImageLease>,
    /// Current revision.
    pub revision: i64,
    /// Revision below which reads fail (0: never compacted).
    pub compacted: i64,
    /// Raft index the state reflects.
    pub applied: u64,
}

impl<D: Disk> MvccStore<D> {
    /// The whole keyspace, as of now.
    pub(crate) fn image(&self) -> Result<Image, StoreError> {
        let txn = self.db()?.begin_read()?;
        let mut versions = Vec::new();
        for item in txn.open_table(REVS)?.iter()? {
            let (k, v) = item?;
            let rev = revs_key(k.value())?;
            let (key, version) = decode_row(rev, v.value()).ok_or_else(|| super::bad_row(rev))?;
            versions.push((
                key,
                rev,
                match version {
                    Version::Live(kv) => Some(kv),
                    Version::Tombstone => None,
                },
            ));
        }
        let mut leases = Vec::new();
        for item in txn.open_table(LEASES)?.iter()? {
            let (k, v) = item?;
            let bad = || StoreError::Corrupt("lease record".into());
            let id = u64::from_be_bytes(k.value().try_into().map_err(|_| bad())?) as i64;
            let v = unseal(k.value(), v.value())
                .filter(|v| v.len() == 16)
                .ok_or_else(bad)?;
            leases.push(ImageLease {
                id,
                ttl: i64::from_le_bytes(v[..8].try_into().map_err(|_| bad())?),
                remaining_ttl: i64::from_le_bytes(v[8..].try_into().map_err(|_| bad())?),
            });
        }
        let meta = super::read_meta(&txn.open_table(META)?)?;
        Ok(Image {
            versions,
            leases,
            revision: meta.revision,
            compacted: meta.compacted,
            applied: meta.applied,
        })
    }

    /// Whether the store has never held a key or a lease.
    pub(crate) fn is_empty(&self) -> Result<bool, StoreError> {
        let txn = self.db.begin_read()?;
        Ok(self.index.len() == 0
            && self.meta.revision <= 1
            && txn.open_table(LEASES)?.first()?.is_none())
    }

    /// Writes `image` into this store, which must be empty (checked by the caller with
    /// [`MvccStore::is_empty`]). Keys attached to a lease the image does not hold keep
    /// their lease id but are not attached to anything (etcd does the same).
    pub(crate) fn load_image(&mut self, image: &Image) -> Result<(), StoreError> {
        let txn = self.begin_write()?;
        let mut meta = self.meta;
        {
            let mut revs = txn.open_table(REVS)?;
            // The lease of each key's latest version, if live.
            let mut latest: BTreeMap<&[u8], i64> = BTreeMap::new();
            for (key, rev, kv) in &image.versions {
                let version = match kv {
                    Some(kv) => Version::Live(KeyValue {
                        mod_revision: rev.main,
                        ..kv.clone()
                    }),
                    None => Version::Tombstone,
                };
                revs.insert(
                    rev.to_bytes().as_slice(),
                    encode_row(*rev, key, &version).as_slice(),
                )?;
                latest.insert(key, kv.as_ref().map_or(0, |kv| kv.lease));
            }
            let mut leases = txn.open_table(LEASES)?;
            for l in &image.leases {
                let k = lease_key(l.id);
                let mut v = l.ttl.to_le_bytes().to_vec();
                v.extend_from_slice(&l.remaining_ttl.to_le_bytes());
                leases.insert(k.as_slice(), seal(&k, &v).as_slice())?;
            }
            let mut lease_keys = txn.open_table(LEASE_KEYS)?;
            for (key, lease) in latest {
                if lease != 0 && image.leases.binary_search_by_key(&lease, |l| l.id).is_ok() {
                    let k = lease_key_entry(lease, key);
                    lease_keys.insert(k.as_slice(), seal(&k, &[]).as_slice())?;
                }
            }
            let last = image.versions.last().map_or(1, |(_, r, _)| r.main);
            meta.revision = last.max(image.compacted).max(1);
            meta.compacted = image.compacted;
            meta.cursor = Revision::default();
            meta.applied = image.applied;
            write_meta(&mut txn.open_table(META)?, &meta)?;
        }
        self.commit(txn, true)?;
        self.reload()
    }
}
