//! The MVCC state machine: etcd v3's key-value semantics on redb.
//!
//! Tables (all `&[u8] -> &[u8]`, see `docs/storage.md`):
//!
//! * `revs`: `main ++ sub` → the user key and its version there (live value or tombstone),
//!   in revision order, so writes append to the right-most leaf and watches and compaction
//!   walk it in order. `create_revision` and `version` are stored in each version.
//! * The key index (`index.rs`, in memory, rebuilt at open): key → the revisions of its
//!   versions. A read at a revision is an index lookup and one point read of `revs`.
//! * `leases`: id → TTL and last checkpointed remaining TTL; `lease_keys`: id ++ key.
//! * `meta`: the applied Raft index, the current and compacted revisions, the compaction
//!   cursor and the NOSPACE alarm.
//!
//! # Guarantees
//!
//! 1. **Idempotent apply.** The applied Raft index is written in the same redb transaction
//!    as the effects of the commands up to it; [`MvccStore::apply`] skips an index at or
//!    below it, so replaying the WAL after a crash changes nothing twice.
//! 2. **etcd semantics** (see `exec.rs` and `read.rs`): one main revision per write command,
//!    sub-revisions within, historical reads until compacted, etcd's error strings.
//! 3. **Deterministic.** The result of a command depends only on the state and the command
//!    (the quota is enforced through the replicated NOSPACE alarm, not a local size check).
//! 4. **Bounded work per call.** [`MvccStore::compact_step`] reclaims at most
//!    [`MvccConfig::compaction_batch`] revisions per call; reads are correct at any point.
//! 5. **Durability is the WAL's.** Applies commit without `fsync` unless
//!    [`MvccConfig::sync_applies`] (and for one commit in
//!    [`MvccConfig::durable_every_commits`], which lets redb reuse freed pages); after a
//!    crash the store is at its last durable commit and the WAL replays the rest. So the
//!    WAL may drop entries only up to [`MvccStore::durable_applied_index`] (the applied
//!    index of the last durable commit, periodic or by [`MvccStore::sync`]).
//! 6. **Damage is an error, not data.** Every row's value ends with a CRC32C of the row's
//!    key and value, checked on every read (redb does not checksum pages on reads).
//! 7. **Deferred commits are invisible to readers.** Up to
//!    [`MvccConfig::batches_per_commit`] applied batches share one write transaction,
//!    left open between them. Every read sees everything applied all the same: the key
//!    index and the meta are in memory, the `revs` rows written since the last commit are
//!    kept beside the transaction ([`read::Rows`]), and a batch that writes `leases`,
//!    `lease_keys` or `cluster` (which have no such overlay) commits at once. A reader that
//!    needs the file itself (an image, a hash, a snapshot) commits the open transaction
//!    first (`settle`). What a failed commit held is in the WAL still: a failed commit of
//!    an apply, a compaction step or a sync takes the store back to the file's state (the
//!    meta, the alarms and the index reloaded, so they never name a row the table lacks);
//!    a failed `settle` makes the store refuse further applies, so the member restarts
//!    and replays.

pub mod codec;
mod exec;
mod flush;
pub(crate) mod image;
mod index;
pub(crate) mod keys;
pub(crate) mod read;
#[cfg(test)]
mod tests;
pub mod types;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};

use redb::{
    Database, Durability, ReadableDatabase, ReadableTable, TableDefinition, TableHandle,
    WriteTransaction,
};

use crate::disk::{Disk, DiskFile, RedbBackend};
use crate::errors::{RequestError, StoreError};
use exec::Exec;
use index::KeyIndex;
pub use keys::Revision as MvccRevision;
use keys::{
    decode_key_rev, decode_row, decode_version, encode_row, lease_key, row_key, seal, unseal,
    Revision, Version,
};
use types::*;

pub(crate) type Def = TableDefinition<'static, &'static [u8], &'static [u8]>;
pub(crate) const REVS: Def = TableDefinition::new("revs");
pub(crate) const LEASES: Def = TableDefinition::new("leases");
pub(crate) const LEASE_KEYS: Def = TableDefinition::new("lease_keys");
pub(crate) const META: Def = TableDefinition::new("meta");
pub(crate) const CLUSTER: Def = TableDefinition::new("cluster");
/// Every table, in the order snapshots stream them.
pub(crate) const TABLES: [Def; 5] = [META, LEASES, LEASE_KEYS, REVS, CLUSTER];
/// Layout 1 (before the key index): versions ordered by key, and a change log.
const LEGACY_KEY_REVS: Def = TableDefinition::new("key_revs");
const LEGACY_REV_KEYS: Def = TableDefinition::new("rev_keys");

const M_APPLIED: &[u8] = b"applied_index";
const M_REVISION: &[u8] = b"revision";
const M_COMPACTED: &[u8] = b"compacted_revision";
const M_COMPACT_CURSOR: &[u8] = b"compact_cursor";
const M_NOSPACE: &[u8] = b"alarm_nospace";
const M_ALARMS: &[u8] = b"alarm_members";

/// One entry of the cluster metadata table: key, value.
pub type MetaEntry = (Vec<u8>, Vec<u8>);

/// State-machine settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MvccConfig {
    /// Backend size above which [`MvccStore::admit`] refuses writes (etcd's
    /// `--quota-backend-bytes`, default 2 GiB).
    pub quota_bytes: u64,
    /// Most revisions one [`MvccStore::compact_step`] reclaims.
    pub compaction_batch: usize,
    /// `fsync` every apply (off: the WAL is the durable record, see the module docs).
    pub sync_applies: bool,
    /// Without `sync_applies`, every this many commits one is made durable anyway: redb
    /// can reuse the pages freed by non-durable commits only after a durable one, so
    /// without it the file grows with every commit.
    pub durable_every_commits: u32,
    /// redb page cache size.
    pub cache_bytes: usize,
    /// Flush the file in a background thread ahead of each periodic durable commit, so
    /// that commit stays short (see `flush.rs`). Off by default: deterministic tests count
    /// every sync.
    pub background_flush: bool,
    /// Applied batches (one per Raft `Ready`) that share one redb commit (guarantee 7);
    /// 1 commits every batch. Each commit rewrites the pages it touched (the right-most
    /// leaves of `revs`, the branches above them, redb's own records), so fewer commits
    /// write fewer pages per applied entry.
    pub batches_per_commit: u32,
}

impl Default for MvccConfig {
    fn default() -> Self {
        Self {
            quota_bytes: 2 << 30,
            compaction_batch: 1000,
            sync_applies: false,
            durable_every_commits: 4,
            cache_bytes: 64 << 20,
            background_flush: false,
            batches_per_commit: 32,
        }
    }
}

/// One stored version: key, revision, and the value (`None` for a tombstone).
pub type StoredVersion = (Vec<u8>, Revision, Option<KeyValue>);

/// Outcome of applying one command: `None` if its index was applied before.
pub type ApplyResult = Option<Result<Response, RequestError>>;

/// Most bytes of `revs` rows an open transaction holds before it commits, whatever
/// [`MvccConfig::batches_per_commit`] says (a follower catching up applies large batches).
const MAX_OPEN_BYTES: usize = 8 << 20;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Meta {
    applied: u64,
    revision: i64,
    compacted: i64,
    cursor: Revision,
    nospace: bool,
}

/// A write transaction left open between applied batches (guarantee 7). Dropped with the
/// store, it commits (not durably), as the commit per batch did before it; dropped on
/// purpose (a failure, a replaced database) it is aborted with [`OpenTxn::abort`].
#[derive(Default)]
struct OpenTxn(Option<WriteTransaction>);

impl OpenTxn {
    fn abort(&mut self) {
        if let Some(txn) = self.0.take() {
            // Aborting only releases the transaction's pages: nothing to recover from.
            let _ = txn.abort();
        }
    }
}

impl Drop for OpenTxn {
    fn drop(&mut self) {
        if let Some(mut txn) = self.0.take() {
            // Best effort: what it held is in the WAL, which replays it otherwise.
            if txn.set_durability(Durability::None).is_ok() {
                let _ = txn.commit();
            }
        }
    }
}

/// The state machine. See the module docs.
pub struct MvccStore<D: Disk> {
    disk: D,
    path: PathBuf,
    config: MvccConfig,
    /// The write transaction holding the batches applied since the last commit, if any
    /// (guarantee 7). Declared before `db`, so dropped (committed) before it.
    open: Mutex<OpenTxn>,
    /// Batches applied into `open`.
    open_batches: u32,
    /// The `revs` rows written since the last commit made through `&mut self`; after a
    /// reader's `settle` they may be committed too (see [`read::Rows`]).
    fresh: read::Fresh,
    fresh_bytes: usize,
    /// Set when a reader's `settle` failed to commit: what the open transaction held is
    /// lost from the file, so the store refuses further applies (guarantee 7).
    settle_failed: AtomicBool,
    db: Database,
    size_probe: D::File,
    /// The file size as of the last commit, for the per-request quota check.
    size_cache: std::sync::atomic::AtomicU64,
    // Invariant: equal to what the meta table holds as of the last commit.
    meta: Meta,
    // Invariant: the members whose alarm the meta table holds, sorted; non-empty exactly
    // when `meta.nospace`.
    alarms: Vec<u64>,
    // Invariant: mirrors the `revs` table as of the last commit (see `index.rs`).
    index: KeyIndex,
    // Non-durable commits since the last durable one.
    lazy_commits: u32,
    /// Applied index as of the last durable commit (0 until one in this process).
    durable_applied: u64,
    /// Background write-back, if configured.
    flusher: Option<flush::Flusher>,
    /// Commands applied while an online defragment copies the store (see `defrag.rs`).
    recording: Option<Recording>,
}

/// Most commands an online defragment keeps for its copy to catch up with; past it the
/// defragment is abandoned (writes outpace the copy).
pub(crate) const MAX_RECORDED: usize = 1 << 20;

/// The database a finished defragment replaced, still open. Dropping it closes it, which
/// can take a while (redb writes back on close; a background flusher is joined): drop it
/// where nothing waits for the store.
pub struct Replaced {
    _db: Database,
    _flusher: Option<flush::Flusher>,
}

impl std::fmt::Debug for Replaced {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Replaced")
    }
}

/// What the store applied since an online defragment took its image.
#[derive(Debug, Default)]
pub(crate) struct Recording {
    /// Applied commands with their Raft index, in order, not yet handed over.
    pub cmds: Vec<(u64, Command)>,
    /// Why the copy can no longer catch up, if it cannot.
    pub broken: Option<String>,
}

impl<D: Disk> std::fmt::Debug for MvccStore<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MvccStore")
            .field("path", &self.path)
            .field("meta", &self.meta)
            .finish_non_exhaustive()
    }
}

/// A sealed meta value (0 if absent).
pub(crate) fn get_u64<T: ReadableTable<&'static [u8], &'static [u8]>>(
    t: &T,
    key: &[u8],
) -> Result<u64, StoreError> {
    match t.get(key)? {
        None => Ok(0),
        Some(v) => {
            let b: [u8; 8] = unseal(key, v.value())
                .and_then(|b| b.try_into().ok())
                .ok_or_else(|| {
                    StoreError::Corrupt(format!("meta value {}", String::from_utf8_lossy(key)))
                })?;
            Ok(u64::from_le_bytes(b))
        }
    }
}

fn read_meta<T: ReadableTable<&'static [u8], &'static [u8]>>(t: &T) -> Result<Meta, StoreError> {
    let cursor = match t.get(M_COMPACT_CURSOR)? {
        None => Revision::default(),
        Some(v) => unseal(M_COMPACT_CURSOR, v.value())
            .and_then(Revision::from_bytes)
            .ok_or_else(|| StoreError::Corrupt("compaction cursor".into()))?,
    };
    Ok(Meta {
        applied: get_u64(t, M_APPLIED)?,
        // A new store is at revision 1, as etcd's is, so the first write gets revision 2
        // (clients and etcdctl output depend on it).
        revision: (get_u64(t, M_REVISION)? as i64).max(1),
        compacted: get_u64(t, M_COMPACTED)? as i64,
        cursor,
        nospace: get_u64(t, M_NOSPACE)? != 0,
    })
}

/// The members whose alarm is raised. A file from before alarms named a member holds only
/// the flag: its alarm is member 0's.
fn read_alarms<T: ReadableTable<&'static [u8], &'static [u8]>>(
    t: &T,
    nospace: bool,
) -> Result<Vec<u64>, StoreError> {
    let Some(v) = t.get(M_ALARMS)? else {
        return Ok(if nospace { vec![0] } else { Vec::new() });
    };
    let bytes = unseal(M_ALARMS, v.value())
        .filter(|b| b.len().is_multiple_of(8))
        .ok_or_else(|| StoreError::Corrupt("meta value alarm_members".into()))?;
    Ok(bytes
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().unwrap_or_default()))
        .collect())
}

fn write_alarms(t: &mut exec::T<'_>, alarms: &[u64]) -> Result<(), StoreError> {
    let v: Vec<u8> = alarms.iter().flat_map(|m| m.to_le_bytes()).collect();
    t.insert(M_ALARMS, seal(M_ALARMS, &v).as_slice())?;
    Ok(())
}

fn write_meta(t: &mut exec::T<'_>, m: &Meta) -> Result<(), StoreError> {
    let mut put = |k: &[u8], v: &[u8]| t.insert(k, seal(k, v).as_slice()).map(drop);
    put(M_APPLIED, &m.applied.to_le_bytes())?;
    put(M_REVISION, &(m.revision as u64).to_le_bytes())?;
    put(M_COMPACTED, &(m.compacted as u64).to_le_bytes())?;
    put(M_COMPACT_CURSOR, &m.cursor.to_bytes())?;
    put(M_NOSPACE, &u64::from(m.nospace).to_le_bytes())?;
    Ok(())
}

impl<D: Disk> MvccStore<D> {
    /// Opens (or creates) the store in the file at `path`. A damaged file is an error,
    /// never a panic: redb 3.1 panics on some corrupt pages, so the open runs inside
    /// `catch_unwind` and such a panic becomes [`StoreError::Corrupt`].
    pub fn open(disk: D, path: impl Into<PathBuf>, config: MvccConfig) -> Result<Self, StoreError> {
        let path = path.into();
        let shown = path.display().to_string();
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            Self::open_inner(disk, path, config)
        }))
        .unwrap_or_else(|panic| {
            let why = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            Err(StoreError::Corrupt(format!(
                "{shown} cannot be read (the database library failed: {why})"
            )))
        })
    }

    fn open_inner(disk: D, path: PathBuf, config: MvccConfig) -> Result<Self, StoreError> {
        let io = |source| StoreError::Io {
            path: path.clone(),
            source,
        };
        if let Some(dir) = path.parent() {
            disk.create_dir_all(dir).map_err(io)?;
        }
        let existed = disk.exists(&path).map_err(io)?;
        let file = disk.open(&path, true).map_err(io)?;
        let size_probe = disk.open(&path, false).map_err(io)?;
        // redb's `check_integrity` would verify page checksums at open, but in redb 3.1 it
        // panics on a damaged file instead of returning an error; versions carry their own
        // checksum instead (see `keys::encode_version`).
        let db = redb::Builder::new()
            .set_cache_size(config.cache_bytes)
            .create_with_backend(RedbBackend(file))
            .map_err(|e| StoreError::Open {
                path: path.clone(),
                source: e.into(),
            })?;
        let mut txn = db.begin_write()?;
        for def in TABLES {
            txn.open_table(def)?;
        }
        if migrate_layout_1(&txn)? {
            txn.set_durability(Durability::Immediate)?;
        }
        let meta = read_meta(&txn.open_table(META)?)?;
        let alarms = read_alarms(&txn.open_table(META)?, meta.nospace)?;
        txn.commit()?;
        let index = load_index(&db)?;
        if !existed {
            // The file's directory entry must be durable before anything in it counts.
            if let Some(dir) = path.parent() {
                disk.sync_dir(dir).map_err(io)?;
            }
        }
        let flusher = Self::start_flusher(&disk, &path, &config)?;
        Ok(Self {
            disk,
            path,
            config,
            db,
            size_cache: std::sync::atomic::AtomicU64::new(0),
            size_probe,
            meta,
            alarms,
            index,
            lazy_commits: 0,
            durable_applied: 0,
            flusher,
            recording: None,
            open: Mutex::default(),
            open_batches: 0,
            fresh: Vec::new(),
            fresh_bytes: 0,
            settle_failed: AtomicBool::new(false),
        })
    }

    /// Number of keys with stored versions (live or deleted but not yet compacted).
    pub fn indexed_keys(&self) -> usize {
        self.index.len()
    }

    // After a failed write transaction: it is aborted, with the deferred batches it held,
    // so the store goes back to its last commit (the WAL still holds the rest); the meta
    // and the index, which already showed the failed changes, are reloaded from the file.
    fn recover<R>(&mut self, failure: StoreError) -> Result<R, StoreError> {
        self.drop_open();
        match load_state(&self.db) {
            Ok(state) => {
                self.set_state(state);
                Err(failure)
            }
            Err(e) => Err(StoreError::Corrupt(format!(
                "{failure}; rebuilding the key index afterwards failed too: {e}"
            ))),
        }
    }

    /// The file holding the store.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The database, with everything applied committed to it (see [`MvccStore::settle`]).
    pub(crate) fn db(&self) -> Result<&Database, StoreError> {
        self.settle()?;
        Ok(&self.db)
    }

    /// Commits the open transaction, if any (not durably), so that the file holds
    /// everything applied: for readers of the file as a whole rather than through the key
    /// index (guarantee 7). Needs only `&self`: readers hold the store shared.
    pub(crate) fn settle(&self) -> Result<(), StoreError> {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(mut txn) = open.0.take() {
            let committed = txn
                .set_durability(Durability::None)
                .map_err(StoreError::from)
                .and_then(|()| txn.commit().map_err(StoreError::from));
            if committed.is_err() {
                self.settle_failed.store(true, Ordering::Relaxed);
            }
            committed?;
        }
        Ok(())
    }

    /// Aborts the open transaction, if any, and forgets its rows.
    fn drop_open(&mut self) {
        self.open
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .abort();
        self.fresh.clear();
        self.fresh_bytes = 0;
        self.open_batches = 0;
    }

    /// A write transaction: the open one, or a new one once everything is committed.
    fn begin_write(&mut self) -> Result<WriteTransaction, StoreError> {
        if self.settle_failed.load(Ordering::Relaxed) {
            return Err(StoreError::Corrupt(
                "an earlier commit of applied batches failed; restart the member to replay \
                 its WAL"
                    .into(),
            ));
        }
        let open = self.open.get_mut().unwrap_or_else(PoisonError::into_inner);
        match open.0.take() {
            Some(txn) => Ok(txn),
            None => {
                // Everything is committed (a reader's settle may have done it).
                self.drop_open();
                Ok(self.db.begin_write()?)
            }
        }
    }

    /// Commits `txn`, durably if `durable` or if the periodic durable commit is due (see
    /// [`MvccConfig::durable_every_commits`]).
    fn commit(&mut self, mut txn: WriteTransaction, durable: bool) -> Result<(), StoreError> {
        let durable = durable
            || self.config.sync_applies
            || self.lazy_commits + 1 >= self.config.durable_every_commits;
        let committed = (|| {
            if durable {
                txn.set_durability(Durability::Immediate)?;
                txn.set_quick_repair(true);
            } else {
                txn.set_durability(Durability::None)?;
            }
            txn.commit().map_err(StoreError::from)
        })();
        if let Err(e) = committed {
            // The rows of the deferred batches are gone with the transaction: the store
            // goes back to the file's state, which the index must mirror again.
            return self.recover(e);
        }
        self.drop_open();
        // Refreshed lazily by the next quota check.
        self.size_cache
            .store(0, std::sync::atomic::Ordering::Relaxed);
        let every = self.config.durable_every_commits;
        if durable {
            self.lazy_commits = 0;
            self.durable_applied = self.meta.applied;
        } else {
            self.lazy_commits += 1;
            if self.lazy_commits == (every - every / 4).max(1) {
                if let Some(f) = &self.flusher {
                    f.poke();
                }
            }
        }
        Ok(())
    }

    pub(crate) fn disk(&self) -> &D {
        &self.disk
    }

    /// Last Raft index applied.
    pub fn applied_index(&self) -> u64 {
        self.meta.applied
    }

    /// Current store revision.
    pub fn revision(&self) -> i64 {
        self.meta.revision
    }

    /// Revision below which reads fail.
    pub fn compacted_revision(&self) -> i64 {
        self.meta.compacted
    }

    /// Whether the NOSPACE alarm is raised (by any member).
    pub fn nospace(&self) -> bool {
        self.meta.nospace
    }

    /// The member ids whose NOSPACE alarm is raised, in order.
    pub fn alarm_members(&self) -> &[u64] {
        &self.alarms
    }

    /// Size of the backend file in bytes.
    pub fn size_bytes(&self) -> Result<u64, StoreError> {
        self.size_probe.byte_len().map_err(|source| StoreError::Io {
            path: self.path.clone(),
            source,
        })
    }

    /// The file size as of the last commit, as etcd's quota check sees its backend's size:
    /// one `stat` per commit (at most every [`MvccConfig::batches_per_commit`] applied
    /// batches) instead of one per request, or per batch on every member's Raft thread.
    fn cached_size_bytes(&self) -> Result<u64, StoreError> {
        use std::sync::atomic::Ordering;
        match self.size_cache.load(Ordering::Relaxed) {
            0 => {
                let size = self.size_bytes()?;
                self.size_cache.store(size, Ordering::Relaxed);
                Ok(size)
            }
            size => Ok(size),
        }
    }

    /// Bytes of the backend in use (etcd's `dbSizeInUse`): allocated pages, without the
    /// free ones. Walks redb's allocator, so call it for status, not per request.
    pub fn size_in_use_bytes(&self) -> Result<u64, StoreError> {
        // A second write transaction would wait for the open one forever.
        let txn = self.db()?.begin_write()?;
        let stats = txn.stats()?;
        let used = stats.allocated_pages() * stats.page_size() as u64;
        txn.abort()?;
        Ok(used)
    }

    /// Whether writes are admitted at all: no NOSPACE alarm and the file within its quota
    /// (as of the last commit). Cheap; for callers that skip [`MvccStore::admit`] while it
    /// holds.
    pub fn admits_writes(&self) -> Result<bool, StoreError> {
        Ok(!self.meta.nospace && self.cached_size_bytes()? <= self.config.quota_bytes)
    }

    /// The check etcd makes before proposing: writes (puts, txns with puts, lease grants)
    /// are refused while the alarm is raised or the backend is over its quota; the caller
    /// proposes [`Command::AlarmNoSpace`] in the latter case.
    pub fn admit(&self, cmd: &Command) -> Result<Result<(), RequestError>, StoreError> {
        let writes = match cmd {
            Command::Authorized { cmd, .. } => return self.admit(cmd),
            Command::Put(_) | Command::LeaseGrant { .. } => true,
            Command::Txn(t) => {
                fn has_put(t: &TxnRequest) -> bool {
                    t.success.iter().chain(&t.failure).any(|op| match op {
                        RequestOp::Put(_) => true,
                        RequestOp::Txn(i) => has_put(i),
                        _ => false,
                    })
                }
                has_put(t)
            }
            _ => false,
        };
        if writes && (self.meta.nospace || self.cached_size_bytes()? > self.config.quota_bytes) {
            return Ok(Err(RequestError::NoSpace));
        }
        Ok(Ok(()))
    }

    /// Applies the command at Raft index `index` (skipped if already applied).
    pub fn apply(&mut self, index: u64, cmd: &Command) -> Result<ApplyResult, StoreError> {
        let mut out = self.apply_batch(&[(index, cmd)])?;
        Ok(out.pop().flatten())
    }

    /// Applies consecutive commands (one Raft `Ready`) in the open write transaction, which
    /// commits every [`MvccConfig::batches_per_commit`] batches (guarantee 7).
    pub fn apply_batch(
        &mut self,
        cmds: &[(u64, &Command)],
    ) -> Result<Vec<ApplyResult>, StoreError> {
        match self.try_apply_batch(cmds) {
            Ok(out) => Ok(out),
            Err(e) => self.recover(e),
        }
    }

    fn try_apply_batch(
        &mut self,
        cmds: &[(u64, &Command)],
    ) -> Result<Vec<ApplyResult>, StoreError> {
        let txn = self.begin_write()?;
        let mut meta = self.meta;
        let alarms;
        let (written, side_tables);
        let mut out = Vec::with_capacity(cmds.len());
        {
            let mut ex = Exec::new(
                txn.open_table(REVS)?,
                &mut self.index,
                txn.open_table(LEASES)?,
                txn.open_table(LEASE_KEYS)?,
                txn.open_table(CLUSTER)?,
                meta.revision,
                meta.compacted,
                self.alarms.clone(),
            );
            for (index, cmd) in cmds {
                if *index <= meta.applied {
                    out.push(None);
                    continue;
                }
                if *index != meta.applied + 1 {
                    return Err(StoreError::ApplyGap {
                        applied: meta.applied,
                        index: *index,
                    });
                }
                out.push(Some(ex.run(cmd)?));
                meta.applied = *index;
            }
            meta.revision = ex.current;
            meta.compacted = ex.compacted;
            meta.nospace = !ex.alarms.is_empty();
            alarms = ex.alarms;
            written = ex.written;
            side_tables = ex.side_tables;
        }
        write_meta(&mut txn.open_table(META)?, &meta)?;
        if alarms != self.alarms {
            write_alarms(&mut txn.open_table(META)?, &alarms)?;
        }
        self.meta = meta;
        self.alarms = alarms;
        // Keep the transaction open for the next batch (guarantee 7), or commit it.
        let bytes: usize = written.iter().map(|(_, row)| row.len()).sum();
        let defer = !side_tables
            && !self.config.sync_applies
            && self.open_batches + 1 < self.config.batches_per_commit
            && self.fresh_bytes + bytes < MAX_OPEN_BYTES;
        if defer {
            self.fresh.extend(written);
            self.fresh_bytes += bytes;
            self.open_batches += 1;
            self.open
                .get_mut()
                .unwrap_or_else(PoisonError::into_inner)
                .0 = Some(txn);
        } else {
            self.commit(txn, false)?;
        }
        if let Some(r) = &mut self.recording {
            r.record(cmds, &out);
        }
        Ok(out)
    }

    /// Makes everything applied so far durable; returns the durable applied index.
    pub fn sync(&mut self) -> Result<u64, StoreError> {
        let txn = self.begin_write()?;
        self.commit(txn, true)?;
        Ok(self.meta.applied)
    }

    fn start_flusher(
        disk: &D,
        path: &Path,
        config: &MvccConfig,
    ) -> Result<Option<flush::Flusher>, StoreError> {
        if !config.background_flush {
            return Ok(None);
        }
        let io = |source| StoreError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = disk.open(path, false).map_err(io)?;
        flush::Flusher::start(file).map(Some).map_err(io)
    }

    /// The applied index as of the last durable commit of this process (0 before the
    /// first): the WAL may drop entries up to it without a [`MvccStore::sync`].
    pub fn durable_applied_index(&self) -> u64 {
        self.durable_applied
    }

    /// etcd's `KV.Range` on the local state (a serializable read).
    pub fn range(
        &self,
        r: &RangeRequest,
    ) -> Result<Result<RangeResponse, RequestError>, StoreError> {
        if r.key.is_empty() {
            return Ok(Err(RequestError::EmptyKey));
        }
        let meta = self.meta;
        if r.revision > meta.revision {
            return Ok(Err(RequestError::FutureRevision));
        }
        if r.revision > 0 && r.revision < meta.compacted {
            return Ok(Err(RequestError::Compacted));
        }
        let txn = self.db.begin_read()?;
        let t = txn.open_table(REVS)?;
        let rows = read::Rows {
            table: &t,
            fresh: &self.fresh,
        };
        Ok(Ok(exec::range_request(
            &self.index,
            &rows,
            r,
            meta.revision,
        )?))
    }

    /// The lease `id` with its attached keys.
    pub fn lease(&self, id: i64) -> Result<Option<Lease>, StoreError> {
        let txn = self.db.begin_read()?;
        let leases = txn.open_table(LEASES)?;
        let Some(v) = leases.get(lease_key(id).as_slice())? else {
            return Ok(None);
        };
        let v = unseal(&lease_key(id), v.value())
            .filter(|v| v.len() == 16)
            .ok_or_else(|| StoreError::Corrupt(format!("lease {id} record")))?;
        let mut a = [0u8; 8];
        a.copy_from_slice(&v[..8]);
        let mut b = [0u8; 8];
        b.copy_from_slice(&v[8..]);
        let keys = exec::lease_keys_of(&txn.open_table(LEASE_KEYS)?, id)?;
        Ok(Some(Lease {
            id,
            ttl: i64::from_le_bytes(a),
            remaining_ttl: i64::from_le_bytes(b),
            keys,
        }))
    }

    /// One entry of the cluster metadata table.
    pub fn cluster_meta_get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(CLUSTER)?;
        Ok(table.get(key)?.map(|v| v.value().to_vec()))
    }

    /// Every entry of the cluster metadata table (see [`Command::ClusterMeta`]), in key
    /// order.
    pub fn cluster_meta(&self) -> Result<Vec<MetaEntry>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(CLUSTER)?;
        let mut out = Vec::new();
        for item in table.iter()? {
            let (k, v) = item?;
            out.push((k.value().to_vec(), v.value().to_vec()));
        }
        Ok(out)
    }

    /// Ids of all leases, ascending.
    pub fn lease_ids(&self) -> Result<Vec<i64>, StoreError> {
        let txn = self.db.begin_read()?;
        let leases = txn.open_table(LEASES)?;
        let mut out = Vec::new();
        for item in leases.iter()? {
            let (k, _) = item?;
            let b: [u8; 8] = k
                .value()
                .try_into()
                .map_err(|_| StoreError::Corrupt("lease key".into()))?;
            out.push(u64::from_be_bytes(b) as i64);
        }
        Ok(out)
    }

    /// Reclaims the space of up to [`MvccConfig::compaction_batch`] revisions below the
    /// compacted revision; returns whether compaction has caught up.
    pub fn compact_step(&mut self) -> Result<bool, StoreError> {
        // Changes at the compacted revision itself stay: a watch may start there.
        let target = Revision {
            main: self.meta.compacted - 1,
            sub: i64::MAX,
        };
        if self.meta.cursor >= target || self.meta.compacted == 0 {
            return Ok(true);
        }
        // The applied batches commit on their own first, so that a failed step loses
        // only its own work.
        if self
            .open
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .0
            .is_some()
        {
            let txn = self.begin_write()?;
            self.commit(txn, false)?;
        }
        match self.try_compact_step(target) {
            Ok(done) => Ok(done),
            Err(e) => self.recover(e),
        }
    }

    fn try_compact_step(&mut self, target: Revision) -> Result<bool, StoreError> {
        let txn = self.begin_write()?;
        let mut meta = self.meta;
        let limit = self.config.compaction_batch.max(1);
        let done;
        {
            let mut revs = txn.open_table(REVS)?;
            let rows = |revs: &exec::T<'_>, from: Revision, to: Revision, limit: usize| {
                let mut out = Vec::new();
                let (lo, hi) = (from.to_bytes(), to.to_bytes());
                for item in revs.range::<&[u8]>(lo.as_slice()..=hi.as_slice())? {
                    let (k, v) = item?;
                    let rev = revs_key(k.value())?;
                    let (key, live) = row_key(k.value(), v.value()).ok_or_else(|| bad_row(rev))?;
                    out.push((rev, key, live.is_none()));
                    if out.len() >= limit {
                        break;
                    }
                }
                Ok::<_, StoreError>(out)
            };
            let from = Revision {
                main: meta.cursor.main,
                sub: meta.cursor.sub.saturating_add(1),
            };
            let mut batch = rows(&revs, from, target, limit)?;
            done = batch.len() < limit;
            if let Some((rev, _, _)) = batch.last() {
                meta.cursor = *rev;
            }
            if done {
                meta.cursor = target;
                // The changes at the compacted revision itself stay (a watch may start
                // there), but the versions they supersede go: without this, a key
                // deleted exactly at the compacted revision would keep its last value's
                // space until a later compaction.
                let at = |sub| Revision {
                    main: meta.compacted,
                    sub,
                };
                batch.extend(
                    rows(&revs, at(0), at(i64::MAX), usize::MAX)?
                        .into_iter()
                        .map(|(rev, key, _)| (rev, key, false)),
                );
            }
            for (rev, key, drop_itself) in &batch {
                // Every older version of the key is superseded at `rev <= compacted`; a
                // tombstone below the compacted revision is needed by no read either.
                for old in self.index.compact(key, *rev, *drop_itself) {
                    revs.remove(old.to_bytes().as_slice())?;
                }
            }
        }
        write_meta(&mut txn.open_table(META)?, &meta)?;
        self.meta = meta;
        self.commit(txn, false)?;
        Ok(done)
    }

    /// The changes from revision `from` on (at most `max_events`), in revision order, as
    /// a watch reports them; `with_prev` adds each key's previous version.
    pub fn events(
        &self,
        from: i64,
        max_events: usize,
        with_prev: bool,
    ) -> Result<Result<Vec<Event>, RequestError>, StoreError> {
        if from < self.meta.compacted {
            return Ok(Err(RequestError::Compacted));
        }
        let txn = self.db.begin_read()?;
        let revs = txn.open_table(REVS)?;
        let rows = read::Rows {
            table: &revs,
            fresh: &self.fresh,
        };
        let start = Revision {
            main: from.max(1),
            sub: 0,
        };
        let event = |rev: Revision, row: &[u8]| -> Result<Event, StoreError> {
            let (key, version) = decode_row(rev, row).ok_or_else(|| bad_row(rev))?;
            let prev_kv = if with_prev {
                read::get_at(&self.index, &rows, &key, rev.main - 1)?
            } else {
                None
            };
            Ok(match version {
                Version::Live(kv) => Event {
                    kind: EventKind::Put,
                    kv,
                    prev_kv,
                },
                Version::Tombstone => Event {
                    kind: EventKind::Delete,
                    kv: KeyValue {
                        key,
                        mod_revision: rev.main,
                        ..KeyValue::default()
                    },
                    prev_kv,
                },
            })
        };
        let mut out = Vec::new();
        // Committed rows first, then those of the open transaction (all newer).
        let fresh_from = rows.fresh_from();
        for item in revs.range::<&[u8]>(start.to_bytes().as_slice()..)? {
            if out.len() >= max_events {
                break;
            }
            let (k, v) = item?;
            let rev = revs_key(k.value())?;
            if fresh_from.is_some_and(|f| rev >= f) {
                break;
            }
            out.push(event(rev, v.value())?);
        }
        let first = self.fresh.partition_point(|(r, _)| *r < start);
        for (rev, row) in &self.fresh[first..] {
            if out.len() >= max_events {
                break;
            }
            out.push(event(*rev, row)?);
        }
        Ok(Ok(out))
    }

    /// Every stored version (key, revision, value or `None` for a tombstone) in key then
    /// revision order: the physical content of `revs`, for tests and hashes.
    pub fn dump(&self) -> Result<Vec<StoredVersion>, StoreError> {
        let mut out = self.image()?.versions;
        out.sort_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
        Ok(out)
    }

    /// etcd's `HashKV`: a CRC32C over the key history visible from the compacted revision
    /// up to `revision` (0: current) — for each key, its last version below the compacted
    /// revision if live and not superseded at the compacted revision itself, and every
    /// version from the compacted revision to `revision`.
    /// Replicas with the same history agree whatever their physical compaction progress.
    /// Returns the hash, the revision hashed and the compacted revision.
    pub fn hash_kv(
        &self,
        revision: i64,
    ) -> Result<Result<(u32, i64, i64), RequestError>, StoreError> {
        let meta = self.meta;
        let txn = self.db()?.begin_read()?;
        let at = if revision > 0 {
            revision
        } else {
            meta.revision
        };
        if at > meta.revision {
            return Ok(Err(RequestError::FutureRevision));
        }
        if at < meta.compacted {
            return Ok(Err(RequestError::Compacted));
        }
        let t = txn.open_table(REVS)?;
        let mut crc = 0u32;
        let mut add = |rev: Revision| -> Result<(), StoreError> {
            let k = rev.to_bytes();
            let row = t
                .get(k.as_slice())?
                .ok_or_else(|| StoreError::Corrupt(format!("revs has no row {rev:?}")))?;
            let v = row.value();
            for part in [&k[..], v] {
                crc = crc32c::crc32c_append(crc, &(part.len() as u32).to_le_bytes());
                crc = crc32c::crc32c_append(crc, part);
            }
            Ok(())
        };
        for (_, history) in self.index.iter() {
            let first_kept = history.partition_point(|e| e.rev.main < meta.compacted);
            // The last version below the compacted revision, unless a change at the
            // compacted revision itself supersedes it (physical compaction removes it).
            if let Some(below) = first_kept.checked_sub(1).map(|i| history[i]) {
                let superseded = history
                    .get(first_kept)
                    .is_some_and(|e| e.rev.main == meta.compacted);
                if !below.tombstone && !superseded {
                    add(below.rev)?;
                }
            }
            for e in history[first_kept..]
                .iter()
                .take_while(|e| e.rev.main <= at)
            {
                add(e.rev)?;
            }
        }
        Ok(Ok((crc, at, meta.compacted)))
    }

    /// CRC32C over every table's keys and values (etcd's `HashKV` in spirit): equal on
    /// replicas with equal physical state.
    pub fn hash(&self) -> Result<u32, StoreError> {
        let txn = self.db()?.begin_read()?;
        let mut crc = 0u32;
        for def in TABLES {
            let t = txn.open_table(def)?;
            for item in t.iter()? {
                let (k, v) = item?;
                crc = crc32c::crc32c_append(crc, &(k.value().len() as u32).to_le_bytes());
                crc = crc32c::crc32c_append(crc, k.value());
                crc = crc32c::crc32c_append(crc, &(v.value().len() as u32).to_le_bytes());
                crc = crc32c::crc32c_append(crc, v.value());
            }
        }
        Ok(crc)
    }

    /// Records `index` as the applied index, durably.
    pub(crate) fn set_applied_index(&mut self, index: u64) -> Result<(), StoreError> {
        let txn = self.begin_write()?;
        let mut meta = self.meta;
        meta.applied = index;
        write_meta(&mut txn.open_table(META)?, &meta)?;
        self.meta = meta;
        self.commit(txn, true)?;
        Ok(())
    }

    /// Swaps in a database (an installed snapshot) and reloads the cached state.
    pub(crate) fn replace_db(&mut self, db: Database) -> Result<(), StoreError> {
        let state = load_state(&db)?;
        // What the old database had not committed is replaced with the rest.
        self.drop_open();
        self.db = db;
        self.set_state(state);
        if let Some(r) = &mut self.recording {
            r.broken = Some("a snapshot replaced the store during the copy".into());
        }
        self.reopen_file_handles()
    }

    /// Takes over `other`, a store on a file just renamed over this one's (a finished
    /// defragment): its database, meta and key index, without rebuilding anything.
    /// Returns the old database, still open.
    pub(crate) fn adopt(&mut self, mut other: MvccStore<D>) -> Result<Replaced, StoreError> {
        // The copy holds everything applied (the caller checked its applied index); what
        // this store had not committed yet goes with its old database.
        other.sync()?;
        self.drop_open();
        let MvccStore {
            db,
            meta,
            alarms,
            index,
            ..
        } = other;
        let old = Replaced {
            _db: std::mem::replace(&mut self.db, db),
            _flusher: self.flusher.take(),
        };
        self.meta = meta;
        self.alarms = alarms;
        self.index = index;
        self.lazy_commits = 0;
        self.durable_applied = meta.applied;
        self.reopen_file_handles()?;
        Ok(old)
    }

    fn reopen_file_handles(&mut self) -> Result<(), StoreError> {
        self.size_cache
            .store(0, std::sync::atomic::Ordering::Relaxed);
        self.size_probe = self
            .disk
            .open(&self.path, false)
            .map_err(|source| StoreError::Io {
                path: self.path.clone(),
                source,
            })?;
        // The old handle names the replaced file.
        self.flusher = None;
        self.flusher = Self::start_flusher(&self.disk, &self.path, &self.config)?;
        Ok(())
    }

    /// The recording of applied commands, for an online defragment.
    pub(crate) fn recording(&mut self) -> &mut Option<Recording> {
        &mut self.recording
    }

    /// The store's settings.
    pub(crate) fn config(&self) -> &MvccConfig {
        &self.config
    }

    /// Reloads the cached meta and the key index after the file was written directly.
    pub(crate) fn reload(&mut self) -> Result<(), StoreError> {
        self.settle()?;
        let state = load_state(&self.db)?;
        self.set_state(state);
        Ok(())
    }

    fn set_state(&mut self, (meta, alarms, index): (Meta, Vec<u64>, KeyIndex)) {
        self.meta = meta;
        self.alarms = alarms;
        self.index = index;
    }
}

impl Recording {
    /// Keeps the commands of `cmds` that were applied (`out[i]` is `Some`).
    fn record(&mut self, cmds: &[(u64, &Command)], out: &[ApplyResult]) {
        if self.broken.is_some() {
            return;
        }
        for ((index, cmd), result) in cmds.iter().zip(out) {
            if result.is_some() {
                self.cmds.push((*index, (*cmd).clone()));
            }
        }
        if self.cmds.len() > MAX_RECORDED {
            self.cmds = Vec::new();
            self.broken = Some(format!(
                "more than {MAX_RECORDED} commands were applied while the copy was made"
            ));
        }
    }
}

/// The meta, the alarms and the key index as a database holds them.
fn load_state(db: &Database) -> Result<(Meta, Vec<u64>, KeyIndex), StoreError> {
    let txn = db.begin_read()?;
    let meta = read_meta(&txn.open_table(META)?)?;
    let alarms = read_alarms(&txn.open_table(META)?, meta.nospace)?;
    drop(txn);
    Ok((meta, alarms, load_index(db)?))
}

/// Rebuilds the key index by one scan of `revs`, verifying every row's checksum.
fn load_index(db: &Database) -> Result<KeyIndex, StoreError> {
    let txn = db.begin_read()?;
    let t = txn.open_table(REVS)?;
    let mut index = KeyIndex::default();
    for item in t.iter()? {
        let (k, v) = item?;
        let rev = revs_key(k.value())?;
        let (key, live) = row_key(k.value(), v.value()).ok_or_else(|| bad_row(rev))?;
        if !index.push_checked(&key, rev, live) {
            return Err(StoreError::Corrupt(format!(
                "revs rows out of order at {rev:?}"
            )));
        }
    }
    Ok(index)
}

/// Converts a store written in layout 1 (versions in the key-ordered `key_revs`, a change
/// log in `rev_keys`) to `revs`, inside the caller's transaction; `false` if there was
/// nothing to convert.
fn migrate_layout_1(txn: &WriteTransaction) -> Result<bool, StoreError> {
    let legacy = txn
        .list_tables()?
        .any(|t| t.name() == LEGACY_KEY_REVS.name());
    if !legacy {
        return Ok(false);
    }
    {
        let old = txn.open_table(LEGACY_KEY_REVS)?;
        let mut revs = txn.open_table(REVS)?;
        for item in old.iter()? {
            let (k, v) = item?;
            let corrupt = || StoreError::Corrupt("undecodable key_revs row (layout 1)".into());
            let (key, rev) = decode_key_rev(k.value()).ok_or_else(corrupt)?;
            let version =
                decode_version(k.value(), key.clone(), rev, v.value()).ok_or_else(corrupt)?;
            revs.insert(
                rev.to_bytes().as_slice(),
                encode_row(rev, &key, &version).as_slice(),
            )?;
        }
    }
    txn.delete_table(LEGACY_KEY_REVS)?;
    txn.delete_table(LEGACY_REV_KEYS)?;
    Ok(true)
}

/// The revision a `revs` row is keyed by.
fn revs_key(k: &[u8]) -> Result<Revision, StoreError> {
    Revision::from_bytes(k).ok_or_else(|| StoreError::Corrupt("revs key".into()))
}

fn bad_row(rev: Revision) -> StoreError {
    StoreError::Corrupt(format!("revs row {rev:?}"))
}
