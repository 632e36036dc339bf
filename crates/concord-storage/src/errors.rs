//! Typed errors, one enum per operation, each convertible into the crate-wide [`Error`].
//!
//! # Guarantees
//!
//! 1. Damaged data on disk is always an error value naming the file and, for the WAL and
//!    snapshots, the byte offset; it is never a panic and never silently shortened data
//!    (except the torn tail of the last WAL segment, which was never acknowledged).
//! 2. The errors etcd clients see carry etcd's exact strings (see [`RequestError`]).

use std::io;
use std::path::PathBuf;

/// Why [`crate::wal::Wal::open`] failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WalOpenError {
    /// An operating-system error on `path`.
    #[error("wal i/o error on {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// Damaged data: the node must not start.
    #[error("wal corrupt: {path} at offset {offset}: {reason}")]
    Corrupt {
        /// The damaged file.
        path: PathBuf,
        /// Byte offset of the first bad record.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
}

/// Why a WAL write (append, snapshot record, segment removal) failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WalWriteError {
    /// An operating-system error on `path`; the WAL refuses further writes.
    #[error("wal i/o error on {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// An earlier write failed, so what is on disk is unknown; reopen the WAL.
    #[error("wal is poisoned by an earlier write failure")]
    Poisoned,
    /// The entries would leave a hole in the log.
    #[error("append leaves a gap: last index {last}, appending from {first}")]
    Gap {
        /// Last index in the log.
        last: u64,
        /// First index appended.
        first: u64,
    },
    /// The entries are not consecutive.
    #[error("entries are not consecutive at index {0}")]
    NotConsecutive(u64),
    /// One record is larger than the configured maximum.
    #[error("wal record of {bytes} bytes exceeds the maximum of {max} bytes")]
    TooLarge {
        /// Record size.
        bytes: u64,
        /// Configured maximum.
        max: u64,
    },
    /// The hard state's commit index would pass the last entry.
    #[error("commit index {commit} past the last entry {last}")]
    CommitPastLog {
        /// The commit index.
        commit: u64,
        /// The last index after the batch.
        last: u64,
    },
    /// A compaction index outside the log, or a snapshot older than the current one.
    #[error("invalid snapshot index {index}: {reason}")]
    BadSnapshot {
        /// The offered index.
        index: u64,
        /// Why it is refused.
        reason: &'static str,
    },
}

/// Why reading entries back from a WAL segment failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WalReadError {
    /// An operating-system error on `path`.
    #[error("wal i/o error on {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// The record changed on disk since it was written.
    #[error("wal corrupt: {path} at offset {offset}: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// Offset of the record.
        offset: u64,
        /// What is wrong.
        reason: &'static str,
    },
}

/// Errors a client request gets, with etcd's strings where etcd has the error. These are
/// results of applying a command (deterministic on every replica), not failures of the store.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RequestError {
    /// The revision asked for was compacted.
    #[error("mvcc: required revision has been compacted")]
    Compacted,
    /// The revision asked for is past the current one.
    #[error("mvcc: required revision is a future revision")]
    FutureRevision,
    /// The lease does not exist.
    #[error("etcdserver: requested lease not found")]
    LeaseNotFound,
    /// A lease with this id exists already.
    #[error("etcdserver: lease already exists")]
    LeaseExists,
    /// The backend is over its quota (NOSPACE alarm raised): writes are refused.
    #[error("etcdserver: mvcc: database space exceeded")]
    NoSpace,
    /// `ignore_value` or `ignore_lease` on a key that does not exist.
    #[error("etcdserver: key not found")]
    KeyNotFound,
    /// A value was given together with `ignore_value`.
    #[error("etcdserver: value is provided")]
    ValueProvided,
    /// A lease was given together with `ignore_lease`.
    #[error("etcdserver: lease is provided")]
    LeaseProvided,
    /// A transaction writes the same key twice in one branch.
    #[error("etcdserver: duplicate key given in txn request")]
    DuplicateKey,
    /// An empty key.
    #[error("etcdserver: key is not provided")]
    EmptyKey,
    /// Lease id 0 given to grant.
    #[error("etcdserver: lease id must not be 0")]
    ZeroLeaseId,
    /// The log entry holds a command this member cannot decode (written by a newer
    /// version); every replica applies it as a no-op and its proposer gets this error.
    #[error("etcdserver: the log entry holds a command this member cannot decode")]
    UndecodableCommand,
    /// A [`crate::mvcc::Command::ClusterMetaCas`] found its entry changed by another.
    #[error("concord: cluster metadata changed concurrently")]
    MetaChanged,
    /// An [`crate::mvcc::Command::Authorized`] write checked against an auth state that
    /// changed before it was applied (etcd's `ErrAuthOldRevision`; clients retry it).
    #[error("etcdserver: revision of auth store is old")]
    AuthOldRevision,
    /// An [`crate::mvcc::Command::Authorized`] write that named no user, applied after
    /// authentication was enabled (etcd's `ErrUserEmpty`).
    #[error("etcdserver: user name is empty")]
    UserEmpty,
}

/// Why the state machine failed (the node must stop; nothing was half-applied).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// redb failed.
    #[error("state machine database error: {0}")]
    Db(#[from] redb::Error),
    /// The database file could not be opened (damaged, or not a database).
    #[error("state machine file {path} cannot be opened: {source}")]
    Open {
        /// The file.
        path: PathBuf,
        /// redb's reason.
        source: redb::Error,
    },
    /// An operating-system error on `path`.
    #[error("state machine i/o error on {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// A stored record does not decode.
    #[error("state machine corrupt: {0}")]
    Corrupt(String),
    /// Commands must be applied in index order without gaps.
    #[error("apply of index {index} after applied index {applied} leaves a gap")]
    ApplyGap {
        /// The last applied index.
        applied: u64,
        /// The index offered.
        index: u64,
    },
}

macro_rules! redb_into_store_error {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self {
                StoreError::Db(e.into())
            }
        }
    )*};
}
redb_into_store_error!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    redb::SetDurabilityError
);

/// Why a snapshot chunk was refused or an install failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SnapshotError {
    /// A chunk is damaged, out of order or the stream is incomplete.
    #[error("snapshot corrupt at chunk {chunk}: {reason}")]
    Corrupt {
        /// Sequence number of the bad chunk.
        chunk: u64,
        /// What is wrong.
        reason: String,
    },
    /// The state machine failed while building or installing.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// An online defragment cannot go on (see `defrag.rs`); the store is unchanged.
    #[error("defragment abandoned: {0}")]
    Defrag(String),
}

/// Why an etcd snapshot (a bbolt file) could not be read, written or imported.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EtcdSnapshotError {
    /// The file is not a readable bbolt database.
    #[error("not an etcd snapshot: {0}")]
    Bolt(#[from] crate::bbolt::BoltError),
    /// A bucket holds something etcd 3.4 does not write.
    #[error("etcd snapshot: {0}")]
    Malformed(String),
    /// The SHA-256 that `etcdctl snapshot save` appends does not match the content.
    #[error("etcd snapshot: sha256 mismatch (the file is damaged or truncated)")]
    Digest,
    /// Import needs a store that never held a key or a lease.
    #[error("the store is not empty: import an etcd snapshot into a new data directory")]
    NotEmpty,
    /// The state machine failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The crate-wide error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Opening the WAL failed.
    #[error(transparent)]
    WalOpen(#[from] WalOpenError),
    /// Writing the WAL failed.
    #[error(transparent)]
    WalWrite(#[from] WalWriteError),
    /// Reading the WAL failed.
    #[error(transparent)]
    WalRead(#[from] WalReadError),
    /// The state machine failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A snapshot failed.
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
}
