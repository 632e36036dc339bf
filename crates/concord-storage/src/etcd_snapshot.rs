//! etcd v3 snapshots (bbolt files holding etcd 3.4's buckets) to and from a Concord store:
//! the way from etcd to Concord, and back.
//!
//! The buckets of etcd 3.4's schema, and what becomes of each:
//!
//! | bucket | key → value | here |
//! |---|---|---|
//! | `key` | revision: `main` u64 BE, `_`, `sub` u64 BE, plus `t` for a tombstone → `mvccpb.KeyValue` (a tombstone's holds only the key) | every version, with its revisions |
//! | `meta` | `consistent_index` (u64 BE), `scheduledCompactRev`, `finishedCompactRev` (revisions as above) | the compacted revision; the index is written as the applied index |
//! | `lease` | id (i64 BE) → `leasepb.Lease` {ID, TTL, RemainingTTL} | every lease; keys are attached to it by their latest version |
//! | `cluster` | `clusterVersion` | written as `3.4.0` |
//! | `members`, `members_removed` | member records | not imported: a restored cluster's members come from the command line, as with `etcdctl snapshot restore` (which drops them too) |
//! | `auth`, `authUsers`, `authRoles` | auth state | not imported (reported): Concord has no authentication yet |
//! | `alarm` | raised alarms | not imported: alarms are per cluster |
//!
//! # Guarantees
//!
//! 1. **Exact history.** An imported store holds every version the file holds, at the
//!    same revisions, with the same create revision, version and lease, the same current
//!    and compacted revision; an exported file holds every version of the store.
//! 2. **Verified.** A file ending with `etcdctl snapshot save`'s SHA-256 is checked
//!    against it; malformed buckets are errors naming what is wrong, never a panic, and
//!    an import writes all or nothing.
//! 3. [`status`] gives what `etcdctl snapshot status` gives for the same file (hash,
//!    revision, total keys, total size).

use prost::Message as _;
use sha2::Digest as _;

use crate::bbolt::{self, Bucket};
use crate::disk::Disk;
use crate::errors::{EtcdSnapshotError, StoreError};
use crate::mvcc::image::{Image, ImageLease};
use crate::mvcc::types::KeyValue;
use crate::mvcc::{MvccRevision as Revision, MvccStore};

/// etcd's `mvccpb.KeyValue`.
#[derive(Clone, PartialEq, prost::Message)]
struct EtcdKeyValue {
    #[prost(bytes = "vec", tag = "1")]
    key: Vec<u8>,
    #[prost(int64, tag = "2")]
    create_revision: i64,
    #[prost(int64, tag = "3")]
    mod_revision: i64,
    #[prost(int64, tag = "4")]
    version: i64,
    #[prost(bytes = "vec", tag = "5")]
    value: Vec<u8>,
    #[prost(int64, tag = "6")]
    lease: i64,
}

/// etcd's `leasepb.Lease`.
#[derive(Clone, PartialEq, prost::Message)]
struct EtcdLease {
    #[prost(int64, tag = "1")]
    id: i64,
    #[prost(int64, tag = "2")]
    ttl: i64,
    #[prost(int64, tag = "3")]
    remaining_ttl: i64,
}

const KEY: &[u8] = b"key";
const META: &[u8] = b"meta";
const LEASE: &[u8] = b"lease";
const CLUSTER: &[u8] = b"cluster";
const CONSISTENT_INDEX: &[u8] = b"consistent_index";
const SCHEDULED_COMPACT: &[u8] = b"scheduledCompactRev";
const FINISHED_COMPACT: &[u8] = b"finishedCompactRev";
/// The cluster version written into exported files.
pub const CLUSTER_VERSION: &str = "3.4.0";

/// What `etcdctl snapshot status` reports about a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EtcdStatus {
    /// CRC32C over every bucket's name and every key and value in it, in file order.
    pub hash: u32,
    /// The main revision of the last entry of the `key` bucket (0 if empty).
    pub revision: i64,
    /// Entries in all buckets.
    pub total_keys: u64,
    /// Bytes of the database's pages (bbolt's `tx.Size()`).
    pub total_size: u64,
}

/// What an import brought over.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImportReport {
    /// The file, as [`status`] describes it.
    pub status: EtcdStatus,
    /// The store's revision afterwards.
    pub revision: i64,
    /// The compacted revision.
    pub compacted: i64,
    /// Versions (live and tombstones) imported.
    pub versions: usize,
    /// Leases imported.
    pub leases: usize,
    /// What the file held that was not imported, one line each.
    pub not_imported: Vec<String>,
}

/// Whether `data` is a bbolt file (an etcd snapshot) rather than a Concord one.
pub fn is_etcd_snapshot(data: &[u8]) -> bool {
    bbolt::is_bolt(data)
}

/// The database part of a saved snapshot: without the SHA-256 that `etcdctl snapshot
/// save` (and Concord's Maintenance.Snapshot) append, after checking it. A file whose
/// length does not leave room for one (a plain `member/snap/db`) is returned whole.
pub fn strip_digest(data: &[u8]) -> Result<&[u8], EtcdSnapshotError> {
    if data.len() < 32 || data.len() % 512 != 32 {
        return Ok(data);
    }
    let (body, digest) = data.split_at(data.len() - 32);
    if sha2::Sha256::digest(body).as_slice() != digest {
        return Err(EtcdSnapshotError::Digest);
    }
    Ok(body)
}

fn read(data: &[u8]) -> Result<bbolt::Database, EtcdSnapshotError> {
    let db = bbolt::read(strip_digest(data)?)?;
    if !db.root.entries.is_empty() {
        return Err(EtcdSnapshotError::Malformed(
            "the root bucket holds keys that are not buckets".into(),
        ));
    }
    Ok(db)
}

/// `etcdctl snapshot status` for a file (checking its SHA-256 when it has one).
pub fn status(data: &[u8]) -> Result<EtcdStatus, EtcdSnapshotError> {
    Ok(status_of(&read(data)?))
}

fn status_of(db: &bbolt::Database) -> EtcdStatus {
    let mut hash = 0u32;
    let mut total_keys = 0u64;
    let mut revision = 0;
    for (name, bucket) in &db.root.buckets {
        hash = crc32c::crc32c_append(hash, name);
        // bbolt's ForEach visits entries and nested buckets (with no value) in key order.
        let mut items: Vec<(&[u8], &[u8])> = bucket
            .entries
            .iter()
            .map(|(k, v)| (k.as_slice(), v.as_slice()))
            .chain(bucket.buckets.iter().map(|(k, _)| (k.as_slice(), &[][..])))
            .collect();
        items.sort_unstable_by_key(|(k, _)| *k);
        for (k, v) in items {
            hash = crc32c::crc32c_append(crc32c::crc32c_append(hash, k), v);
            total_keys += 1;
            if name.as_slice() == KEY {
                revision = k
                    .get(..8)
                    .and_then(|b| b.try_into().ok())
                    .map_or(0, |b| u64::from_be_bytes(b) as i64);
            }
        }
    }
    EtcdStatus {
        hash,
        revision,
        total_keys,
        total_size: db.high_water * db.page_size as u64,
    }
}

fn rev_bytes(rev: Revision, tombstone: bool) -> Vec<u8> {
    let mut b = Vec::with_capacity(18);
    b.extend_from_slice(&(rev.main as u64).to_be_bytes());
    b.push(b'_');
    b.extend_from_slice(&(rev.sub as u64).to_be_bytes());
    if tombstone {
        b.push(b't');
    }
    b
}

/// A `key` bucket key: the revision and whether it is a tombstone.
fn parse_rev(b: &[u8]) -> Option<(Revision, bool)> {
    let tombstone = match b.len() {
        17 => false,
        18 if b[17] == b't' => true,
        _ => return None,
    };
    if b[8] != b'_' {
        return None;
    }
    let main = u64::from_be_bytes(b[..8].try_into().ok()?) as i64;
    let sub = u64::from_be_bytes(b[9..17].try_into().ok()?) as i64;
    (main > 0 && sub >= 0).then_some((Revision { main, sub }, tombstone))
}

fn malformed(what: String) -> EtcdSnapshotError {
    EtcdSnapshotError::Malformed(what)
}

/// The keyspace of an etcd snapshot, and notes on what is left out.
fn image_of(db: &bbolt::Database) -> Result<(Image, Vec<String>), EtcdSnapshotError> {
    let empty = Bucket::default();
    let keys = db.root.bucket(KEY).unwrap_or(&empty);
    let mut versions = Vec::with_capacity(keys.entries.len());
    for (k, v) in &keys.entries {
        let (rev, tombstone) =
            parse_rev(k).ok_or_else(|| malformed(format!("bad revision key {k:02x?}")))?;
        let kv = EtcdKeyValue::decode(v.as_slice())
            .map_err(|e| malformed(format!("revision {}: bad KeyValue: {e}", rev.main)))?;
        if kv.key.is_empty() {
            return Err(malformed(format!("revision {}: empty key", rev.main)));
        }
        if !tombstone && kv.mod_revision != rev.main {
            return Err(malformed(format!(
                "revision {} holds a KeyValue of revision {}",
                rev.main, kv.mod_revision
            )));
        }
        let live = (!tombstone).then(|| KeyValue {
            key: kv.key.clone(),
            create_revision: kv.create_revision,
            mod_revision: kv.mod_revision,
            version: kv.version,
            value: kv.value,
            lease: kv.lease,
        });
        versions.push((kv.key, rev, live));
    }
    let mut leases = Vec::new();
    for (k, v) in &db.root.bucket(LEASE).unwrap_or(&empty).entries {
        let l = EtcdLease::decode(v.as_slice())
            .map_err(|e| malformed(format!("bad lease record: {e}")))?;
        let id = <[u8; 8]>::try_from(k.as_slice())
            .map(|b| u64::from_be_bytes(b) as i64)
            .map_err(|_| malformed(format!("bad lease key {k:02x?}")))?;
        if id != l.id || id == 0 {
            return Err(malformed(format!("lease key {id} holds lease {}", l.id)));
        }
        leases.push(ImageLease {
            id,
            ttl: l.ttl,
            remaining_ttl: l.remaining_ttl,
        });
    }
    leases.sort_by_key(|l| l.id);
    let meta = db.root.bucket(META).unwrap_or(&empty);
    let compact_rev = |name: &[u8]| -> Result<i64, EtcdSnapshotError> {
        match meta.get(name) {
            None => Ok(0),
            Some(b) => parse_rev(b)
                .filter(|(_, t)| !t)
                .map(|(r, _)| r.main)
                .ok_or_else(|| malformed(format!("bad {}", String::from_utf8_lossy(name)))),
        }
    };
    // A compaction scheduled but not finished is finished by Concord's own compaction.
    let compacted = compact_rev(SCHEDULED_COMPACT)?.max(compact_rev(FINISHED_COMPACT)?);
    let mut notes = Vec::new();
    for (name, what) in [
        (
            &b"members"[..],
            "member records (the new cluster's members come from the command line)",
        ),
        (b"authUsers", "users (Concord has no authentication yet)"),
        (b"authRoles", "roles (Concord has no authentication yet)"),
        (b"alarm", "alarms"),
    ] {
        let n = db.root.bucket(name).map_or(0, |b| b.entries.len());
        if n > 0 {
            notes.push(format!("{n} {what}"));
        }
    }
    if db
        .root
        .bucket(b"auth")
        .and_then(|b| b.get(b"authEnabled"))
        .is_some_and(|v| v == [1])
    {
        notes.push("auth was enabled: the restored keyspace is open to every client".into());
    }
    let image = Image {
        versions,
        leases,
        revision: 0,
        compacted,
        applied: 0,
    };
    Ok((image, notes))
}

impl<D: Disk> MvccStore<D> {
    /// The store as an etcd 3.4 snapshot file (a bbolt database, without the trailing
    /// SHA-256 that a snapshot stream adds): `etcdctl snapshot status` and `etcdctl
    /// snapshot restore` accept it, and etcd serves every version at its revision. Built
    /// in memory: about twice the size of the live data.
    pub fn export_etcd(&self) -> Result<Vec<u8>, StoreError> {
        let image = self.image()?;
        let mut keys = Vec::with_capacity(image.versions.len());
        for (key, rev, kv) in &image.versions {
            let v = match kv {
                Some(kv) => EtcdKeyValue {
                    key: key.clone(),
                    create_revision: kv.create_revision,
                    mod_revision: rev.main,
                    version: kv.version,
                    value: kv.value.clone(),
                    lease: kv.lease,
                },
                None => EtcdKeyValue {
                    key: key.clone(),
                    ..EtcdKeyValue::default()
                },
            };
            keys.push((rev_bytes(*rev, kv.is_none()), v.encode_to_vec()));
        }
        let leases: Vec<(Vec<u8>, Vec<u8>)> = image
            .leases
            .iter()
            .map(|l| {
                let v = EtcdLease {
                    id: l.id,
                    ttl: l.ttl,
                    remaining_ttl: l.remaining_ttl,
                };
                ((l.id as u64).to_be_bytes().to_vec(), v.encode_to_vec())
            })
            .collect();
        let mut meta = vec![(
            CONSISTENT_INDEX.to_vec(),
            image.applied.to_be_bytes().to_vec(),
        )];
        if image.compacted > 0 {
            let r = rev_bytes(
                Revision {
                    main: image.compacted,
                    sub: 0,
                },
                false,
            );
            meta.push((FINISHED_COMPACT.to_vec(), r.clone()));
            meta.push((SCHEDULED_COMPACT.to_vec(), r));
        }
        meta.sort();
        let cluster = vec![(
            b"clusterVersion".to_vec(),
            CLUSTER_VERSION.as_bytes().to_vec(),
        )];
        Ok(bbolt::write(&[
            (CLUSTER, &cluster),
            (KEY, &keys),
            (LEASE, &leases),
            (META, &meta),
        ]))
    }

    /// Fills this store, which must never have held a key or a lease, with the keyspace
    /// of an etcd snapshot file: every version at its revision, the leases, the current
    /// and compacted revisions. One durable transaction: all or nothing.
    pub fn import_etcd(&mut self, data: &[u8]) -> Result<ImportReport, EtcdSnapshotError> {
        if !self.is_empty()? {
            return Err(EtcdSnapshotError::NotEmpty);
        }
        let db = read(data)?;
        let (mut image, not_imported) = image_of(&db)?;
        image.applied = self.applied_index();
        self.load_image(&image)?;
        Ok(ImportReport {
            status: status_of(&db),
            revision: self.revision(),
            compacted: self.compacted_revision(),
            versions: image.versions.len(),
            leases: image.leases.len(),
            not_imported,
        })
    }
}

#[cfg(test)]
mod tests;
