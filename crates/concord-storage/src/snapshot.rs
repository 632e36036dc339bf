//! Point-in-time images of the state machine, streamed in checksummed chunks, and their
//! installation.
//!
//! A [`SnapshotStream`] reads every table from one redb read transaction, so the image is
//! consistent even while applies continue. Chunk layout (little-endian, see
//! `docs/storage.md`): a 24-byte header — magic `CSNP`, version `u16`, flags `u16` (bit 0:
//! last chunk), sequence `u64`, payload length `u32`, CRC32C `u32` of the header's first 20
//! bytes and the payload — then records `[table u8][key len u32][key][value len u32][value]`.
//! The last chunk ends with a trailer: record count `u64`, CRC32C of every record byte of
//! the stream `u32`, applied index `u64`, revision `i64`.
//!
//! # Guarantees
//!
//! 1. **Consistent.** A stream is one read transaction: the image is the state after
//!    exactly [`SnapshotStream::applied_index`].
//! 2. **Verified before use.** [`SnapshotInstaller`] checks every chunk's checksum and
//!    sequence, then the trailer's count and whole-stream checksum, and only then renames
//!    the new file over the store's and syncs the directory. A damaged, reordered or
//!    truncated stream is an error and leaves the store untouched.
//! 3. **Bounded memory.** A chunk holds about [`SnapshotStream::new`]'s `chunk_bytes`
//!    (plus one record); neither side holds more than one chunk.

use std::ops::Bound;
use std::path::{Path, PathBuf};

use redb::{Database, Durability, ReadTransaction, ReadableDatabase, ReadableTable};

use crate::disk::{Disk, RedbBackend};
use crate::errors::{SnapshotError, StoreError};
use crate::mvcc::{MvccStore, META, TABLES};

const MAGIC: &[u8; 4] = b"CSNP";
// 2: the revision-ordered layout (`revs` instead of `key_revs` and `rev_keys`).
const VERSION: u16 = 2;
const HEADER_BYTES: usize = 24;
const TRAILER_BYTES: usize = 8 + 4 + 8 + 8;
const FLAG_LAST: u16 = 1;

/// Largest chunk payload an installer accepts.
pub const MAX_CHUNK_BYTES: usize = 64 << 20;

/// A consistent image of a store as an iterator of checksummed chunks.
pub struct SnapshotStream {
    txn: ReadTransaction,
    chunk_bytes: usize,
    table: usize,
    // Last key emitted from `table`.
    cursor: Option<Vec<u8>>,
    seq: u64,
    records: u64,
    crc: u32,
    applied: u64,
    revision: i64,
    done: bool,
}

impl std::fmt::Debug for SnapshotStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnapshotStream")
            .field("seq", &self.seq)
            .field("applied", &self.applied)
            .finish_non_exhaustive()
    }
}

fn u64_meta(txn: &ReadTransaction, key: &[u8]) -> Result<u64, StoreError> {
    crate::mvcc::get_u64(&txn.open_table(META)?, key)
}

impl SnapshotStream {
    /// Starts an image of `store` as of now, in chunks of about `chunk_bytes`.
    pub fn new<D: Disk>(store: &MvccStore<D>, chunk_bytes: usize) -> Result<Self, StoreError> {
        assert!(chunk_bytes > 0 && chunk_bytes <= MAX_CHUNK_BYTES);
        let txn = store.db()?.begin_read()?;
        let applied = u64_meta(&txn, b"applied_index")?;
        let revision = u64_meta(&txn, b"revision")? as i64;
        Ok(Self {
            txn,
            chunk_bytes,
            table: 0,
            cursor: None,
            seq: 0,
            records: 0,
            crc: 0,
            applied,
            revision,
            done: false,
        })
    }

    /// The Raft index the image reflects.
    pub fn applied_index(&self) -> u64 {
        self.applied
    }

    /// The store revision the image reflects.
    pub fn revision(&self) -> i64 {
        self.revision
    }

    fn next_chunk(&mut self) -> Result<Vec<u8>, StoreError> {
        let mut payload = Vec::with_capacity(self.chunk_bytes + 64);
        while self.table < TABLES.len() && payload.len() < self.chunk_bytes {
            let t = self.txn.open_table(TABLES[self.table])?;
            let lower = match &self.cursor {
                Some(c) => Bound::Excluded(c.as_slice()),
                None => Bound::Unbounded,
            };
            let mut exhausted = true;
            for item in t.range::<&[u8]>((lower, Bound::Unbounded))? {
                let (k, v) = item?;
                let start = payload.len();
                payload.push(self.table as u8);
                payload.extend_from_slice(&(k.value().len() as u32).to_le_bytes());
                payload.extend_from_slice(k.value());
                payload.extend_from_slice(&(v.value().len() as u32).to_le_bytes());
                payload.extend_from_slice(v.value());
                self.crc = crc32c::crc32c_append(self.crc, &payload[start..]);
                self.records += 1;
                self.cursor = Some(k.value().to_vec());
                if payload.len() >= self.chunk_bytes {
                    exhausted = false;
                    break;
                }
            }
            if exhausted {
                self.table += 1;
                self.cursor = None;
            }
        }
        let last = self.table >= TABLES.len();
        if last {
            payload.extend_from_slice(&self.records.to_le_bytes());
            payload.extend_from_slice(&self.crc.to_le_bytes());
            payload.extend_from_slice(&self.applied.to_le_bytes());
            payload.extend_from_slice(&(self.revision as u64).to_le_bytes());
            self.done = true;
        }
        let mut chunk = Vec::with_capacity(HEADER_BYTES + payload.len());
        chunk.extend_from_slice(MAGIC);
        chunk.extend_from_slice(&VERSION.to_le_bytes());
        chunk.extend_from_slice(&(if last { FLAG_LAST } else { 0 }).to_le_bytes());
        chunk.extend_from_slice(&self.seq.to_le_bytes());
        chunk.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        let crc = crc32c::crc32c_append(crc32c::crc32c(&chunk[..20]), &payload);
        chunk.extend_from_slice(&crc.to_le_bytes());
        chunk.extend_from_slice(&payload);
        self.seq += 1;
        Ok(chunk)
    }
}

impl Iterator for SnapshotStream {
    type Item = Result<Vec<u8>, StoreError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let r = self.next_chunk();
        if r.is_err() {
            self.done = true;
        }
        Some(r)
    }
}

/// Receives chunks into a temporary file next to the store, verifying each.
pub struct SnapshotInstaller<D: Disk> {
    disk: D,
    tmp_path: PathBuf,
    db: Database,
    next_seq: u64,
    records: u64,
    crc: u32,
    // Applied index and revision from the trailer, once the last chunk arrived.
    finished: Option<(u64, i64)>,
}

impl<D: Disk> std::fmt::Debug for SnapshotInstaller<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnapshotInstaller")
            .field("tmp_path", &self.tmp_path)
            .field("next_seq", &self.next_seq)
            .finish_non_exhaustive()
    }
}

fn tmp_path_for(path: &Path) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(".snapshot-tmp");
    PathBuf::from(p)
}

fn corrupt(chunk: u64, reason: impl Into<String>) -> SnapshotError {
    SnapshotError::Corrupt {
        chunk,
        reason: reason.into(),
    }
}

fn le_u32(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

fn le_u64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

impl<D: Disk> SnapshotInstaller<D> {
    /// Starts receiving a snapshot for the store at `store_path` (on `disk`); any leftover
    /// temporary file of an earlier attempt is discarded.
    pub fn new(disk: D, store_path: &Path) -> Result<Self, SnapshotError> {
        Self::at(disk, tmp_path_for(store_path))
    }

    /// Starts receiving a snapshot into the file `tmp_path` (replaced if it exists).
    pub(crate) fn at(disk: D, tmp_path: PathBuf) -> Result<Self, SnapshotError> {
        let io = |source| {
            SnapshotError::Store(StoreError::Io {
                path: tmp_path.clone(),
                source,
            })
        };
        if disk.exists(&tmp_path).map_err(io)? {
            disk.remove_file(&tmp_path).map_err(io)?;
        }
        let file = disk.open(&tmp_path, true).map_err(io)?;
        let db = redb::Builder::new()
            .create_with_backend(RedbBackend(file))
            .map_err(StoreError::from)?;
        Ok(Self {
            disk,
            tmp_path,
            db,
            next_seq: 0,
            records: 0,
            crc: 0,
            finished: None,
        })
    }

    /// Verifies and stores one chunk; chunks must come in order.
    pub fn push(&mut self, chunk: &[u8]) -> Result<(), SnapshotError> {
        let seq = self.next_seq;
        if self.finished.is_some() {
            return Err(corrupt(seq, "chunk after the last one"));
        }
        if chunk.len() < HEADER_BYTES {
            return Err(corrupt(seq, "chunk shorter than its header"));
        }
        if &chunk[..4] != MAGIC {
            return Err(corrupt(seq, "bad magic"));
        }
        let len = le_u32(chunk, 16) as usize;
        if len > MAX_CHUNK_BYTES + TRAILER_BYTES || chunk.len() != HEADER_BYTES + len {
            return Err(corrupt(seq, "chunk length disagrees with its header"));
        }
        let payload = &chunk[HEADER_BYTES..];
        if crc32c::crc32c_append(crc32c::crc32c(&chunk[..20]), payload) != le_u32(chunk, 20) {
            return Err(corrupt(seq, "chunk checksum mismatch"));
        }
        if u16::from_le_bytes([chunk[4], chunk[5]]) != VERSION {
            return Err(corrupt(seq, "unknown snapshot version"));
        }
        if le_u64(chunk, 8) != seq {
            return Err(corrupt(seq, format!("got chunk {}", le_u64(chunk, 8))));
        }
        let last = u16::from_le_bytes([chunk[6], chunk[7]]) & FLAG_LAST != 0;
        let records_end = if last {
            payload
                .len()
                .checked_sub(TRAILER_BYTES)
                .ok_or_else(|| corrupt(seq, "last chunk shorter than its trailer"))?
        } else {
            payload.len()
        };
        let records = &payload[..records_end];
        self.crc = crc32c::crc32c_append(self.crc, records);
        let mut txn = self.db.begin_write().map_err(StoreError::from)?;
        txn.set_durability(Durability::None)
            .map_err(StoreError::from)?;
        {
            let mut tables = Vec::with_capacity(TABLES.len());
            for def in TABLES {
                tables.push(txn.open_table(def).map_err(StoreError::from)?);
            }
            let mut pos = 0;
            while pos < records.len() {
                let bad = || corrupt(seq, format!("bad record at payload offset {pos}"));
                let table = usize::from(records[pos]);
                if table >= TABLES.len() || records.len() < pos + 5 {
                    return Err(bad());
                }
                let klen = le_u32(records, pos + 1) as usize;
                let kend = pos + 5 + klen;
                if records.len() < kend + 4 {
                    return Err(bad());
                }
                let vlen = le_u32(records, kend) as usize;
                let vend = kend + 4 + vlen;
                if records.len() < vend {
                    return Err(bad());
                }
                tables[table]
                    .insert(&records[pos + 5..kend], &records[kend + 4..vend])
                    .map_err(StoreError::from)?;
                self.records += 1;
                pos = vend;
            }
        }
        txn.commit().map_err(StoreError::from)?;
        if last {
            let t = &payload[records_end..];
            if le_u64(t, 0) != self.records {
                return Err(corrupt(seq, "record count disagrees with the trailer"));
            }
            if le_u32(t, 8) != self.crc {
                return Err(corrupt(seq, "stream checksum disagrees with the trailer"));
            }
            self.finished = Some((le_u64(t, 12), le_u64(t, 20) as i64));
        }
        self.next_seq += 1;
        Ok(())
    }

    /// Makes a complete image durable and closes its file (which stays at `tmp_path`).
    pub(crate) fn finish(self) -> Result<(), SnapshotError> {
        self.make_durable()
    }

    /// Checks that the image is complete and commits it durably.
    fn make_durable(&self) -> Result<(), SnapshotError> {
        if self.finished.is_none() {
            return Err(corrupt(self.next_seq, "snapshot stream incomplete"));
        }
        let mut txn = self.db.begin_write().map_err(StoreError::from)?;
        txn.set_durability(Durability::Immediate)
            .map_err(StoreError::from)?;
        txn.commit().map_err(StoreError::from)?;
        Ok(())
    }

    /// Applied index of the received image, once complete.
    pub fn applied_index(&self) -> Option<u64> {
        self.finished.map(|f| f.0)
    }
}

/// Splits a saved snapshot (the chunks of a [`SnapshotStream`] written one after the
/// other, as `concord snapshot save` and `etcdctl snapshot save` store them) into its
/// chunks, by their headers' lengths. The chunks are verified by [`SnapshotInstaller`].
///
/// A file may end with etcd's trailer (see [`etcd_trailer`]): zero padding to a multiple of
/// 512 bytes, then the SHA-256 of everything before it. When the digest matches it is
/// checked and removed; a file without it is read as plain chunks.
pub fn split_saved(data: &[u8]) -> Result<Vec<&[u8]>, SnapshotError> {
    let mut data = data;
    let mut padded = false;
    if data.len() >= 32 && data.len() % 512 == 32 {
        use sha2::Digest as _;
        let (body, digest) = data.split_at(data.len() - 32);
        if sha2::Sha256::digest(body).as_slice() == digest {
            data = body;
            padded = true;
        }
    }
    let mut out = Vec::new();
    while !data.is_empty() {
        if padded && data.len() < 512 && data.iter().all(|b| *b == 0) {
            break;
        }
        let seq = out.len() as u64;
        if data.len() < HEADER_BYTES || &data[..4] != MAGIC {
            return Err(corrupt(seq, "not a Concord snapshot chunk"));
        }
        let len = HEADER_BYTES + le_u32(data, 16) as usize;
        if len > data.len() {
            return Err(corrupt(seq, "snapshot file truncated"));
        }
        out.push(&data[..len]);
        data = &data[len..];
    }
    Ok(out)
}

/// etcd's snapshot trailer for a stream of `len` bytes whose content hashes to `hasher`:
/// zero padding to a multiple of 512 bytes, then the SHA-256 of the content and the
/// padding. `etcdctl snapshot save` (3.4) checks that a saved stream ends this way
/// (`len % 512 == 32`) and that the digest matches.
pub fn etcd_trailer(len: u64, mut hasher: sha2::Sha256) -> Vec<u8> {
    use sha2::Digest as _;
    let pad = ((512 - len % 512) % 512) as usize;
    let mut out = vec![0u8; pad];
    hasher.update(&out);
    out.extend_from_slice(hasher.finalize().as_slice());
    out
}

impl<D: Disk> MvccStore<D> {
    /// Prepares a store restored from a snapshot to found a new cluster: its applied
    /// index becomes 1 (the new cluster's log starts over; the keyspace, revisions and
    /// leases are kept) and the old cluster's member records are dropped.
    pub fn rebase_for_new_cluster(&mut self) -> Result<(), StoreError> {
        let txn = self.db()?.begin_write()?;
        {
            let mut cluster = txn.open_table(crate::mvcc::CLUSTER)?;
            let keys: Vec<Vec<u8>> = cluster
                .iter()?
                .map(|r| r.map(|(k, _)| k.value().to_vec()))
                .collect::<Result<_, _>>()?;
            for k in keys {
                cluster.remove(k.as_slice())?;
            }
        }
        txn.commit()?;
        self.set_applied_index(1)
    }

    /// Replaces the store with a completely received snapshot: the image is made durable,
    /// renamed over the store's file, and the directory synced, so a crash leaves either
    /// the old store or the new one.
    pub fn install_snapshot(
        &mut self,
        installer: SnapshotInstaller<D>,
    ) -> Result<(), SnapshotError> {
        installer.make_durable()?;
        let path = self.path().to_path_buf();
        let io = |source| {
            SnapshotError::Store(StoreError::Io {
                path: path.clone(),
                source,
            })
        };
        installer
            .disk
            .rename(&installer.tmp_path, &path)
            .map_err(io)?;
        if let Some(dir) = path.parent() {
            self.disk().sync_dir(dir).map_err(io)?;
        }
        // The installer's database already has the renamed file open.
        self.replace_db(installer.db)?;
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests;
