//! Durable storage of Concord: the Raft write-ahead log, the MVCC state machine with etcd
//! v3 semantics on redb, and snapshots of it.
//!
//! # Layout
//!
//! * [`disk`]: the file-system seam ([`disk::Disk`]) with the real implementation and a
//!   simulated one that loses power, used by every crash test.
//! * [`wal`]: the segmented Raft log, implementing concord-raft's `Storage`.
//! * [`mvcc`]: the state machine: revisions, key history, leases, compaction, quota.
//! * [`snapshot`]: point-in-time images of the state machine in checksummed chunks.
//! * [`defrag`]: defragmentation that pauses the store only to switch files.
//! * [`bbolt`] and [`etcd_snapshot`]: etcd's snapshot files (bbolt databases), read and
//!   written, to migrate from etcd and back.
//! * [`ap`]: the AP bucket store: each key's CRDT state and the hints held for others,
//!   in a file of its own.
//! * [`errors`]: one error enum per operation.
//!
//! The on-disk formats, the fsync order and the invariants are in `docs/storage.md`.
//!
//! # Flow
//!
//! ```text
//!  Ready ──► Wal::append(snapshot?, entries, hard state)   one write + one fdatasync
//!    │                                                      (then send messages)
//!    └─► committed entries ──► MvccStore::apply_batch      effects + applied index in
//!                                                           one redb transaction
//!  periodically: MvccStore::sync ──► Wal::compact(snapshot metadata)  drops segments
//!  follower behind: SnapshotStream ──chunks──► SnapshotInstaller ──► install_snapshot
//! ```
//!
//! ```
//! use concord_raft::{Entry, HardState, NodeId, Storage};
//! use concord_storage::disk::SimDisk;
//! use concord_storage::mvcc::types::{Command, PutRequest, RangeRequest};
//! use concord_storage::mvcc::{MvccConfig, MvccStore};
//! use concord_storage::wal::{Batch, Wal, WalConfig, WalStorage};
//!
//! let disk = SimDisk::new();
//! let wal = WalStorage::new(Wal::open(disk.clone(), "/node/wal", WalConfig::default())?);
//! let entry = Entry { term: 1, index: 1, data: b"put k v".to_vec(), ..Entry::default() };
//! let hs = HardState { term: 1, vote: Some(NodeId(1)), commit: 1 };
//! wal.append(Batch { snapshot: None, entries: &[entry], hard_state: Some(hs), lazy: false })?;
//! assert_eq!(wal.last_index().unwrap(), 1);
//!
//! let mut store = MvccStore::open(disk, "/node/state.redb", MvccConfig::default())?;
//! let put = Command::Put(PutRequest { key: b"k".to_vec(), value: b"v".to_vec(), ..PutRequest::default() });
//! store.apply(1, &put)?;
//! assert_eq!(store.apply(1, &put)?, None); // already applied: replay is idempotent
//! let got = store.range(&RangeRequest { key: b"k".to_vec(), ..RangeRequest::default() })?;
//! assert_eq!(got.unwrap().kvs[0].mod_revision, 2); // a new store is at revision 1, as etcd
//! # Ok::<(), concord_storage::Error>(())
//! ```
//!
//! # Guarantees
//!
//! 1. What a write call acknowledged survives `kill -9` and power loss.
//! 2. Damaged files give errors naming file and offset; they are never read as shorter
//!    valid data (except the torn, unacknowledged tail of the WAL).

pub mod ap;
pub mod bbolt;
pub mod defrag;
pub mod disk;
pub mod errors;
pub mod etcd_snapshot;
pub mod mvcc;
pub mod snapshot;
pub mod wal;

pub use errors::Error;

#[cfg(test)]
mod crash_tests;
