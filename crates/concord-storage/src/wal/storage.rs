//! [`WalStorage`]: a shareable handle on a [`Wal`] that implements concord-raft's
//! [`Storage`] trait.
//!
//! # Guarantees
//!
//! 1. Clones share one WAL, so the runtime appends through one handle while the Raft core
//!    reads through another, as with `MemStorage`.
//! 2. Every read error (I/O, a record damaged since it was written) reaches the core as
//!    [`StorageError::Other`] naming the file and offset, never as a panic.

use std::fmt;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use concord_raft::{
    Entry, HardState, RaftState, Snapshot, SnapshotMetadata, Storage, StorageError,
};

use super::{Batch, Wal};
use crate::disk::Disk;
use crate::errors::WalWriteError;

/// Produces the state-machine image for [`Storage::snapshot`] (the WAL only knows the
/// snapshot's position and membership, not its data).
pub trait SnapshotSource: Send + Sync {
    /// The data of the snapshot described by `meta`, or why it cannot be produced;
    /// returning `None` makes the leader retry later.
    fn snapshot_data(&self, meta: &SnapshotMetadata) -> Option<Result<Vec<u8>, SourceError>>;
}

/// Why a [`SnapshotSource`] could not produce a snapshot: the state machine's own error.
pub type SourceError = Box<dyn std::error::Error + Send + Sync>;

/// A cloneable handle on a [`Wal`] implementing [`Storage`].
#[derive(Clone)]
pub struct WalStorage<D: Disk> {
    wal: Arc<RwLock<Wal<D>>>,
    source: Arc<RwLock<Option<Arc<dyn SnapshotSource>>>>,
}

impl<D: Disk> fmt::Debug for WalStorage<D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WalStorage").finish_non_exhaustive()
    }
}

impl<D: Disk> WalStorage<D> {
    /// Wraps an opened WAL.
    pub fn new(wal: Wal<D>) -> Self {
        Self {
            wal: Arc::new(RwLock::new(wal)),
            source: Arc::new(RwLock::new(None)),
        }
    }

    /// Read access to the WAL.
    pub fn read(&self) -> RwLockReadGuard<'_, Wal<D>> {
        // A panic while holding the lock leaves consistent data behind (writes update
        // memory only after the disk), so keep using it.
        self.wal.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Wal<D>> {
        self.wal.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Persists one Ready (see [`Wal::append`]).
    pub fn append(&self, batch: Batch<'_>) -> Result<(), WalWriteError> {
        self.write().append(batch)
    }

    /// Drops the log up to a durable snapshot (see [`Wal::compact`]).
    pub fn compact(&self, meta: SnapshotMetadata) -> Result<(), WalWriteError> {
        self.write().compact(meta)
    }

    /// The persisted hard state.
    pub fn hard_state(&self) -> HardState {
        self.read().hard_state()
    }

    /// Sets where [`Storage::snapshot`] gets the state-machine image from.
    pub fn set_snapshot_source(&self, source: Arc<dyn SnapshotSource>) {
        *self.source.write().unwrap_or_else(|e| e.into_inner()) = Some(source);
    }
}

impl<D: Disk> Storage for WalStorage<D> {
    fn initial_state(&self) -> Result<RaftState, StorageError> {
        let wal = self.read();
        Ok(RaftState {
            hard_state: wal.hard_state(),
            conf_state: wal.snapshot_metadata().conf_state.clone(),
        })
    }

    fn entries(&self, lo: u64, hi: u64, max_size_bytes: u64) -> Result<Vec<Entry>, StorageError> {
        let wal = self.read();
        if lo < wal.first_index() {
            return Err(StorageError::Compacted);
        }
        if hi > wal.last_index() + 1 {
            return Err(StorageError::Unavailable);
        }
        wal.entries(lo, hi, max_size_bytes)
            .map_err(|e| StorageError::Other(e.to_string()))
    }

    fn term(&self, index: u64) -> Result<u64, StorageError> {
        let wal = self.read();
        if index < wal.first_index() - 1 {
            return Err(StorageError::Compacted);
        }
        wal.term(index).ok_or(StorageError::Unavailable)
    }

    fn first_index(&self) -> Result<u64, StorageError> {
        Ok(self.read().first_index())
    }

    fn last_index(&self) -> Result<u64, StorageError> {
        Ok(self.read().last_index())
    }

    fn snapshot(&self, _request_index: u64) -> Result<Snapshot, StorageError> {
        let metadata = self.read().snapshot_metadata().clone();
        let source = self
            .source
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let Some(source) = source else {
            return Err(StorageError::SnapshotTemporarilyUnavailable);
        };
        match source.snapshot_data(&metadata) {
            None => Err(StorageError::SnapshotTemporarilyUnavailable),
            // Raft's storage errors are plain data; the source's error travels as its text.
            Some(Err(e)) => Err(StorageError::Other(e.to_string())),
            Some(Ok(data)) => Ok(Snapshot { metadata, data }),
        }
    }
}
