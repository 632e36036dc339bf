//! The AP bucket store: each key's CRDT state ([`RedisValue`]) and the hints this node
//! holds for replicas that were unreachable, in one redb file (`ap.redb` in the data
//! directory) apart from the CP keyspace's.
//!
//! Every change is a read-modify-write of one key, run by one writer thread that takes
//! whatever changes queued up while its previous batch ran, computes them against what
//! readers see (the overlay over the committed B-tree), appends the rows they changed to
//! a log (`ap.log` beside the file, [`log`]) as one record with one `fdatasync` (group
//! commit), lays them on an in-memory overlay that readers consult before the B-tree, and
//! only then answers each change, so a replica acknowledges only what survives a crash.
//! The B-tree is written by checkpoints on a thread of their own: every
//! [`CHECKPOINT_EVERY`], [`CHECKPOINT_ROWS`] changed rows or [`CHECKPOINT_BYTES`] of
//! them, the writer freezes the overlay's changes and hands them, with the log that holds
//! them, to the checkpoint thread, and goes on with a second log (`ap.log.1`); the
//! checkpoint commits them in one durable transaction, in row order, then starts that log
//! over. A B-tree commit copies and checksums every page its changes touched, so
//! committing once for many batches, and off the write path, is what makes a write cheap
//! and keeps the commit's pause away from the writes. At open, both logs' records are
//! replayed into the B-tree before anything else, the older epoch's first. A bucket whose
//! durability is `async` ([`ApStore::set_async`]) skips the `fdatasync`: a batch of only
//! such changes is logged without one, and the writer makes it durable within
//! [`FLUSH_EVERY`]. A stored state only ever moves up its lattice: writes and repairs are
//! merges.
//!
//! # Guarantees
//!
//! 1. **Durable before acknowledged.** [`ApStore::update`], [`ApStore::merge`] and
//!    [`ApStore::store_hint`] return after the log record of the batch that carried them
//!    is fsync'd; when that append fails, every change in the batch answers the error
//!    (and the transaction is rebuilt from what was answered before). For an `async`
//!    bucket: after an append that the next sync, at most [`FLUSH_EVERY`] later, makes
//!    durable (a crash in between loses that window, as Redis's `appendfsync everysec`
//!    does). `answered_changes_survive_sigkill_at_any_point` kills a writing process five
//!    times at different moments and checks every answered change after each reopen.
//! 2. **Only joins.** A merge never loses what the stored state had: the result is the
//!    join of both.
//! 3. **Damage is an error.** Every stored value carries a CRC32C over its key and bytes
//!    and a format version; a value that fails either is reported as
//!    [`ApStoreError::Corrupt`] naming the key, never decoded into a wrong state.
//! 4. **A hint is removed only if unchanged.** [`ApStore::remove_hint`] takes the state
//!    that was handed over and removes the hint only if it still equals it, so a hint
//!    merged again meanwhile is handed over again.
//! 5. **Readers see every answered change.** A change is on the overlay before it is
//!    answered and leaves it only in the step that holds the B-tree committed with it as
//!    the committed layer (`Layers`); a reader takes its overlay rows and the committed
//!    tables it reads under one read lock, so it sees each change in exactly one of them
//!    (`reads_see_answered_changes_before_and_after_the_checkpoint`).
//! 6. **Replay keeps the order of the changes.** A log starts over only after the commit
//!    that holds its records, and under an epoch above the other log's, and no
//!    checkpoint starts before the previous one has committed and started its log over;
//!    so at open the log with the lower epoch holds only older changes, and replaying it
//!    first, then the other, gives the last answered state
//!    (`the_two_logs_replay_older_epoch_first`, and the SIGKILL loop of guarantee 1).
//! 7. **The read cache holds only newest values.** Point reads of key states look first in
//!    a bounded cache ([`READ_CACHE_BYTES`]) of rows' newest values; the writer updates it
//!    in the step that lays a batch on the overlay, and a read of the B-tree fills it only
//!    if the row is on no overlay layer and the committed layer is the one it read
//!    (`a_read_of_the_b_tree_fills_the_cache_only_while_it_is_the_newest_value`,
//!    `the_read_cache_never_answers_a_value_a_checkpoint_replaced`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use concord_core::crdt::{CollectionsLayout, Crdt, RedisValue, StringLayout};
use concord_core::merkle::MerkleTree;
use concord_core::paxos::Acceptor;
use concord_core::ring::hash_key;
use concord_core::NodeId;
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use xxhash_rust::xxh3::xxh3_64;

use crate::mvcc::keys::{seal, unseal};

mod log;
use log::{ApLog, Changes, Which};

type Def = TableDefinition<'static, &'static [u8], &'static [u8]>;
/// bucket (1 byte) + the key's ring hash (8 bytes, big-endian) + key → sealed state: a
/// bucket's keys in hash order, so that a Merkle leaf (a hash range) is one range scan.
const KEYS: Def = TableDefinition::new("ap_keys_v2");
/// The first layout (bucket + key → sealed state), moved into [`KEYS`] at open.
const KEYS_V1: Def = TableDefinition::new("ap_keys");
/// Leaves of each bucket's Merkle tree (a power of two).
pub const TREE_LEAVES: usize = 1024;
/// Buckets the store keeps trees for (Redis databases).
pub const TREE_BUCKETS: usize = 16;
/// owner (8 bytes, big-endian) + bucket + key → sealed state.
const HINTS: Def = TableDefinition::new("ap_hints");
/// bucket + key → sealed Paxos acceptor state of the key (compare-and-set).
const PAXOS: Def = TableDefinition::new("ap_paxos");
/// The store's own facts: `replica_id` → u64 and `actor` → u64 (big-endian).
const META: Def = TableDefinition::new("ap_meta");
/// The [`META`] row of the current actor ([`ApStore::actor`]).
const ACTOR: &[u8] = b"actor";
/// The tables whose changes the log records, in the order of [`Which`].
const LOGGED: [Def; 4] = [KEYS, HINTS, PAXOS, META];

/// The format version written before each encoded state: 1 for a key that never held set
/// members (the layout from before sets), 2 for one that never held siblings (the layout
/// from before siblings), 3 for the whole state. A key keeps its bytes across versions.
const FORMAT: u8 = 1;
const FORMAT_SETS: u8 = 2;
const FORMAT_SIBLINGS: u8 = 3;

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
    /// The group commit that carried this write failed: nothing of it is stored.
    #[error("{0}")]
    Commit(String),
    /// The hint store holds its limit of hints for this owner already.
    #[error("the hint store holds {limit} hints for member {owner} already")]
    HintsFull {
        /// The owner.
        owner: NodeId,
        /// The limit.
        limit: u64,
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
    pub state: RedisValue,
}

/// The store.
pub struct ApStore {
    /// The changes acknowledged but not yet in a committed B-tree, over the committed
    /// B-tree ([`Overlay`]).
    overlay: Arc<Overlay>,
    /// Declared after `overlay`, so dropped after it: the database closes (and trims its
    /// file) once no read of its committed tables is left. The threads hold it too.
    #[cfg_attr(not(test), allow(dead_code))]
    db: Arc<Database>,
    /// One Merkle tree per bucket over (key, digest of its state), kept in step with the
    /// table after each commit (built at open).
    trees: Arc<Mutex<Vec<MerkleTree>>>,
    /// Hints held per owner (kept in step with the table after each commit).
    hint_counts: Mutex<BTreeMap<NodeId, u64>>,
    /// Most hints held for one owner.
    hint_limit: u64,
    /// This store's identity, drawn at random when the file is created: its first actor
    /// (so that a member whose data was lost, a new file, never reuses the counter entries
    /// of its earlier life) and what its log is tied to.
    replica_id: u64,
    /// The identity the member's operations act under in CRDT states ([`ApStore::actor`]):
    /// the `replica_id` until a state this replica acted on is removed, a new one drawn
    /// at each such removal (kept in [`META`], changed in the removal's batch).
    actor: Arc<AtomicU64>,
    /// Buckets whose changes are acknowledged before their fsync (`async` durability).
    lazy: [AtomicBool; TREE_BUCKETS],
    /// Hands write jobs (and whether each must be fsync'd before it is answered) to the
    /// group-commit thread; `None` once dropping.
    jobs: Option<mpsc::Sender<(Job, bool)>>,
    /// Set when dropping: a checkpoint that fails then gives up (the logs keep its
    /// changes for the next open) instead of trying again.
    stopping: Arc<AtomicBool>,
    writer: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for ApStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApStore").finish_non_exhaustive()
    }
}

impl Drop for ApStore {
    fn drop(&mut self) {
        // The writer finishes the jobs queued, then sees the channel closed.
        self.stopping.store(true, Ordering::Relaxed);
        self.jobs = None;
        if let Some(w) = self.writer.take() {
            let _ = w.join();
        }
    }
}

/// The tables a write job works on, inside the open transaction.
struct Tables<'t> {
    keys: Rows<'t>,
    hints: Rows<'t>,
    paxos: Rows<'t>,
    meta: Rows<'t>,
}

/// Changed rows with their new values (`None`: removed), in order.
type RowChanges = Vec<(Vec<u8>, Option<Vec<u8>>)>;
/// A row and its value.
type RowValue = (Vec<u8>, Vec<u8>);

/// A table as a batch's jobs see it (the batch's own changes over the overlay over the
/// committed B-tree), noting every change made to it (for the log and the overlay).
struct Rows<'t> {
    which: Which,
    overlay: &'t Overlay,
    /// Rows changed by the batch running, with their new values (`None`: removed).
    changed: OverlayRows,
}

impl<'t> Rows<'t> {
    fn new(which: Which, overlay: &'t Overlay) -> Self {
        Self {
            which,
            overlay,
            changed: OverlayRows::new(),
        }
    }

    fn get(&self, row: &[u8]) -> Result<Option<Vec<u8>>, ApStoreError> {
        match self.changed.get(row) {
            Some(value) => Ok(value.clone()),
            None => self
                .overlay
                .lookup(self.which, row, |v| v.map(<[u8]>::to_vec)),
        }
    }

    fn insert(&mut self, row: &[u8], value: Vec<u8>) {
        self.changed.insert(row.to_vec(), Some(value));
    }

    fn remove(&mut self, row: &[u8]) {
        self.changed.insert(row.to_vec(), None);
    }
}

impl Tables<'_> {
    fn new(overlay: &Overlay) -> Tables<'_> {
        Tables {
            keys: Rows::new(Which::Keys, overlay),
            hints: Rows::new(Which::Hints, overlay),
            paxos: Rows::new(Which::Paxos, overlay),
            meta: Rows::new(Which::Meta, overlay),
        }
    }

    /// Takes the changes the batch made, per table.
    fn take_changes(&mut self) -> [(Which, OverlayRows); 4] {
        [
            (Which::Keys, std::mem::take(&mut self.keys.changed)),
            (Which::Hints, std::mem::take(&mut self.hints.changed)),
            (Which::Paxos, std::mem::take(&mut self.paxos.changed)),
            (Which::Meta, std::mem::take(&mut self.meta.changed)),
        ]
    }
}

/// Rows changed since a B-tree commit, by table: `None` for a removed row.
type OverlayRows = BTreeMap<Vec<u8>, Option<Vec<u8>>>;

/// The logged tables as one committed B-tree holds them: the layer under the overlay.
struct Committed([redb::ReadOnlyTable<&'static [u8], &'static [u8]>; 4]);

impl Committed {
    /// The tables as `db` has them committed now.
    fn open(db: &Database) -> Result<Committed, ApStoreError> {
        let txn = db.begin_read()?;
        Ok(Committed([
            txn.open_table(KEYS)?,
            txn.open_table(HINTS)?,
            txn.open_table(PAXOS)?,
            txn.open_table(META)?,
        ]))
    }

    fn table(&self, which: Which) -> &redb::ReadOnlyTable<&'static [u8], &'static [u8]> {
        &self.0[which as usize]
    }
}

/// What readers and the write jobs see, newest first: the changes answered since the
/// running (or last) checkpoint began, the changes that checkpoint is committing, and the
/// B-tree as the last checkpoint committed it. A checkpoint moves `active` to `frozen`
/// (under the lock), commits `frozen` on its own thread, then in one step holds the new
/// B-tree as `committed` and empties `frozen`. A reader takes its rows from the overlay
/// and the `committed` it reads under, under one read lock, so every answered change is
/// in exactly the layers it reads.
struct Layers {
    active: [OverlayRows; 4],
    frozen: Arc<[OverlayRows; 4]>,
    committed: Arc<Committed>,
    /// From a freeze until the write loop has the checkpoint's log back and no other
    /// checkpoint is due: no checkpoint can start meanwhile, so `active` may pass the
    /// bounds.
    checkpointing: bool,
}

struct Overlay {
    layers: std::sync::RwLock<Layers>,
    /// The newest value of keys-table rows (`None`: absent), some of them: a point read
    /// that finds its row here needs neither the overlay nor the B-tree.
    cache: Mutex<ReadCache>,
}

/// The newest value of some rows of the keys table, at most [`READ_CACHE_BYTES`] of them.
/// Every change to the table updates it in the step that lays the change on the overlay
/// (under the layers' write lock, so a reader never sees the two disagree), and a read
/// from the B-tree fills it only if, under the layers' read lock, the row is on no overlay
/// layer and the committed layer is still the one it read: so an entry is always the row's
/// newest value, and a checkpoint, which only moves rows between layers, leaves it alone.
/// Dropping an entry (to stay under the bound) only sends its next read to the layers.
#[derive(Default)]
struct ReadCache {
    rows: std::collections::HashMap<Vec<u8>, Option<Arc<[u8]>>>,
    bytes: usize,
}

/// Most bytes (rows, values and the map's share) the read cache holds.
pub const READ_CACHE_BYTES: usize = if cfg!(test) { 64 << 10 } else { 64 << 20 };

/// Bytes a cached row costs: its row, its value and the map's own share.
fn cached_bytes(row: &[u8], value: Option<&[u8]>) -> usize {
    row.len() + value.map_or(0, <[u8]>::len) + 64
}

impl ReadCache {
    fn get(&self, row: &[u8]) -> Option<Option<Arc<[u8]>>> {
        self.rows.get(row).cloned()
    }

    /// `row` now has `value` (a change laid on the overlay).
    fn put(&mut self, row: &[u8], value: Option<&[u8]>) {
        if let Some(old) = self.rows.remove(row) {
            self.bytes -= cached_bytes(row, old.as_deref());
        }
        self.fill(row, value);
    }

    /// Keeps `value` of a row not held (read from the B-tree, or a change).
    fn fill(&mut self, row: &[u8], value: Option<&[u8]>) {
        let cost = cached_bytes(row, value);
        if cost > READ_CACHE_BYTES / 16 || self.rows.contains_key(row) {
            return;
        }
        self.rows.insert(row.to_vec(), value.map(Arc::from));
        self.bytes += cost;
        self.trim();
    }

    /// Past the bound, an eighth of the rows go (the map's order is as good as random),
    /// as often as it takes.
    fn trim(&mut self) {
        while self.bytes > READ_CACHE_BYTES {
            let mut drop = self.rows.len() / 8 + 1;
            let mut freed = 0;
            self.rows.retain(|row, value| {
                if drop == 0 {
                    return true;
                }
                drop -= 1;
                freed += cached_bytes(row, value.as_deref());
                false
            });
            self.bytes -= freed;
        }
    }
}

impl Overlay {
    fn new(db: &Database) -> Result<Overlay, ApStoreError> {
        Ok(Overlay {
            layers: std::sync::RwLock::new(Layers {
                active: Default::default(),
                frozen: Default::default(),
                committed: Arc::new(Committed::open(db)?),
                checkpointing: false,
            }),
            cache: Mutex::default(),
        })
    }

    fn cache(&self) -> MutexGuard<'_, ReadCache> {
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Layers> {
        self.layers.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Layers> {
        self.layers.write().unwrap_or_else(|e| e.into_inner())
    }

    /// `f` of the row's value (`None`: absent) in the newest layer that has it.
    fn lookup<T>(
        &self,
        which: Which,
        row: &[u8],
        f: impl FnOnce(Option<&[u8]>) -> T,
    ) -> Result<T, ApStoreError> {
        let cached = which == Which::Keys;
        if cached {
            if let Some(hit) = self.cache().get(row) {
                return Ok(f(hit.as_deref()));
            }
        }
        let committed = {
            let layers = self.read();
            for rows in [&layers.active, &*layers.frozen] {
                if let Some(value) = rows[which as usize].get(row) {
                    return Ok(f(value.as_deref()));
                }
            }
            layers.committed.clone()
        };
        let stored = committed.table(which).get(row)?;
        let value = stored.as_ref().map(|v| v.value());
        if cached {
            self.fill(row, &committed, value);
        }
        Ok(f(value))
    }

    /// Keeps `value` of the keys-table `row`, read from `committed`, in the read cache if
    /// it is still the row's newest value: the row on no overlay layer, and `committed`
    /// still the committed layer.
    fn fill(&self, row: &[u8], committed: &Arc<Committed>, value: Option<&[u8]>) {
        let layers = self.read();
        let on_overlay = [&layers.active, &*layers.frozen]
            .iter()
            .any(|rows| rows[Which::Keys as usize].contains_key(row));
        if !on_overlay && Arc::ptr_eq(&layers.committed, committed) {
            self.cache().fill(row, value);
        }
    }

    /// The overlay's rows of `which` in `range` (the newer layer's where both have one),
    /// in row order up to and including the `present`-th row that holds a value, and the
    /// committed tables they lie over, taken together.
    ///
    /// A caller that takes at most `present` rows of the overlaid view needs no more of
    /// the overlay: those rows all lie at or before that row, and every overlay row up to
    /// it is here, removals included. Only those rows are copied, so a page of a scan costs
    /// its page, not the whole overlay after it.
    fn range(
        &self,
        which: Which,
        range: (std::ops::Bound<&[u8]>, std::ops::Bound<&[u8]>),
        present: usize,
    ) -> (Arc<Committed>, RowChanges) {
        let layers = self.read();
        let mut newer = layers.active[which as usize]
            .range::<[u8], _>(range)
            .peekable();
        let mut older = layers.frozen[which as usize]
            .range::<[u8], _>(range)
            .peekable();
        let mut rows = RowChanges::new();
        let mut values = 0;
        while values < present {
            let next = match (newer.peek(), older.peek()) {
                (Some((n, _)), Some((o, _))) if n == o => {
                    older.next();
                    newer.next()
                }
                (Some((n, _)), Some((o, _))) if o < n => older.next(),
                (Some(_), _) => newer.next(),
                (None, _) => older.next(),
            };
            let Some((row, value)) = next else {
                break;
            };
            values += usize::from(value.is_some());
            rows.push((row.clone(), value.clone()));
        }
        (layers.committed.clone(), rows)
    }
}

/// A table's rows in `range` as the B-tree `t` holds them with `over` (the overlay's rows
/// in the same range) laid on top, in row order.
fn overlaid<'a>(
    t: &'a redb::ReadOnlyTable<&'static [u8], &'static [u8]>,
    range: impl std::ops::RangeBounds<&'a [u8]> + 'a,
    over: RowChanges,
) -> Result<impl Iterator<Item = Result<RowValue, ApStoreError>> + 'a, ApStoreError> {
    let mut base = t
        .range::<&[u8]>(range)?
        .map(|e| {
            e.map(|(k, v)| (k.value().to_vec(), v.value().to_vec()))
                .map_err(ApStoreError::from)
        })
        .peekable();
    let mut over = over.into_iter().peekable();
    Ok(std::iter::from_fn(move || loop {
        let take_over = match (base.peek(), over.peek()) {
            (None, None) => return None,
            (Some(Err(_)), _) => return base.next(),
            (Some(Ok((b, _))), Some((o, _))) => o <= b,
            (None, Some(_)) => true,
            (Some(Ok(_)), None) => false,
        };
        if !take_over {
            return base.next();
        }
        let (row, value) = over.next()?;
        if matches!(base.peek(), Some(Ok((b, _))) if *b == row) {
            base.next();
        }
        if let Some(value) = value {
            return Some(Ok((row, value)));
        }
    }))
}

/// What a job does once its batch has committed (or failed to).
type Done = Box<dyn FnOnce(Result<(), String>) + Send>;
/// A write: run inside a batch's transaction (`None` when the batch failed before it
/// could run), it answers its caller through the `Done` after the commit.
type Job = Box<dyn FnOnce(Option<&mut Tables<'_>>) -> Done + Send>;

/// Most jobs committed together.
const MAX_BATCH: usize = 1024;

/// Longest time a change of an `async` bucket stays acknowledged but not yet fsync'd.
pub const FLUSH_EVERY: Duration = Duration::from_secs(1);

/// Longest time the overlay's changes gather before a checkpoint commits them. The
/// writes do not wait for a checkpoint, and the overlay's memory and the replay at open
/// are bounded by [`CHECKPOINT_ROWS`] and [`CHECKPOINT_BYTES`] whatever the interval, so
/// under load the row bound decides; a longer interval lets more changes to one B-tree
/// page share one write of it (5 s instead of 1 s halved the bytes written per SET).
pub const CHECKPOINT_EVERY: Duration = Duration::from_secs(5);
/// Most rows changed in the overlay before a checkpoint.
pub const CHECKPOINT_ROWS: usize = 65_536;
/// Most bytes of row changes (rows and values) in the overlay before a checkpoint: the
/// overlay keeps them in memory, so a burst of large states must not wait for
/// [`CHECKPOINT_EVERY`]. (1 MiB in this crate's unit tests, which check the bound.)
pub const CHECKPOINT_BYTES: usize = if cfg!(test) { 1 << 20 } else { 64 << 20 };

/// The group-commit loop. Takes every job queued while the previous batch was running,
/// runs them in order against the overlay ([`Tables`]), appends the rows they changed to
/// the log as one record (with one `fdatasync` when any job needs it, or when the last
/// sync is [`FLUSH_EVERY`] old), lays them on the overlay, then answers them all. Nothing
/// waits for company: a lone job is logged and answered at once. The B-tree is not
/// touched here.
///
/// A checkpoint is due [`CHECKPOINT_EVERY`] after the first change since the last one,
/// after [`CHECKPOINT_ROWS`] changed rows or [`CHECKPOINT_BYTES`] of them, and at once
/// when the log fails. It freezes the overlay's changes and hands them, with the log that
/// recorded them, to the checkpoint thread ([`checkpoints`]), and the loop goes on with
/// the other log: batches are not held up by the B-tree commit (which copies and
/// checksums every page the changes touched). When the previous checkpoint still runs,
/// the changes keep gathering; past twice the bounds, or with a failed log, the loop
/// waits for it.
fn write_loop(
    db: &Database,
    logs: [ApLog; 2],
    overlay: &Overlay,
    jobs: &mpsc::Receiver<(Job, bool)>,
    stopping: &AtomicBool,
) {
    let (to_checkpoint, checkpoint_jobs) = mpsc::channel::<Checkpoint>();
    let (return_log, returned_logs) = mpsc::channel::<Returned>();
    std::thread::scope(|scope| {
        let checkpointer = std::thread::Builder::new()
            .name("ap-store-checkpoint".into())
            .spawn_scoped(scope, move || {
                checkpoints(db, overlay, &checkpoint_jobs, &return_log, stopping)
            });
        let [mut log, spare] = logs;
        let mut spare = Some(spare);
        let mut last_sync = Instant::now();
        let mut unsynced = false;
        // The overlay's active changes since the last freeze: rows, bytes, since when.
        let (mut rows, mut bytes, mut first) = (0usize, 0usize, Instant::now());
        // Freezes the active changes and checkpoints them with `old`, the log that holds
        // them (started over under an epoch above `above`, the epoch of the log now in
        // use); the log back when the checkpoint ran here (without the thread, every
        // checkpoint runs here, one at a time).
        let checkpoint = |old: ApLog, above: u64| -> Option<Returned> {
            let frozen = {
                let mut layers = overlay.write();
                let frozen = Arc::new(std::mem::take(&mut layers.active));
                layers.frozen = frozen.clone();
                layers.checkpointing = true;
                frozen
            };
            let job = Checkpoint {
                log: old,
                frozen,
                above,
            };
            let job = match &checkpointer {
                Ok(_) => match to_checkpoint.send(job) {
                    Ok(()) => return None,
                    Err(e) => e.0,
                },
                Err(_) => job,
            };
            // No checkpoint thread: it runs here, and its log is back at once.
            Some(run_checkpoint(db, overlay, job, stopping))
        };
        // A checkpoint gave up (only when closing): no later one may run, or the log it
        // left would replay older rows over newer committed ones at the next open.
        let gave_up = std::cell::Cell::new(false);
        let take_back = |returned: Returned| match returned {
            Ok(log) => Some(log),
            Err(log) => {
                gave_up.set(true);
                drop(log);
                None
            }
        };
        let mut checkpointing = false;
        loop {
            if spare.is_none() {
                spare = returned_logs.try_recv().ok().and_then(take_back);
            }
            let due = log.failed()
                || (rows > 0
                    && (first.elapsed() >= CHECKPOINT_EVERY
                        || rows >= CHECKPOINT_ROWS
                        || bytes >= CHECKPOINT_BYTES));
            if due
                && spare.is_none()
                && (log.failed() || rows >= 2 * CHECKPOINT_ROWS || bytes >= 2 * CHECKPOINT_BYTES)
            {
                if !gave_up.get() {
                    if let Ok(returned) = returned_logs.recv() {
                        spare = take_back(returned);
                    }
                }
                if spare.is_none() {
                    // The checkpoint gave up: the store is closing.
                    break;
                }
            }
            if due {
                if let Some(next) = spare.take() {
                    if unsynced {
                        // An async change must not be lost while a later one is kept.
                        let _ = log.sync();
                        unsynced = false;
                        last_sync = Instant::now();
                    }
                    let old = std::mem::replace(&mut log, next);
                    spare = checkpoint(old, log.epoch()).and_then(take_back);
                    (rows, bytes) = (0, 0);
                    checkpointing = true;
                }
            } else if checkpointing && spare.is_some() {
                checkpointing = false;
                overlay.write().checkpointing = false;
            }
            // Wait for a job, or until a checkpoint or a sync is due (a checkpoint that
            // waits for the other log looks again every 2 ms).
            let until_checkpoint = (rows > 0).then(|| {
                if spare.is_some() {
                    CHECKPOINT_EVERY.saturating_sub(first.elapsed())
                } else {
                    Duration::from_millis(2)
                }
            });
            let until_flush = unsynced.then(|| FLUSH_EVERY.saturating_sub(last_sync.elapsed()));
            let got = match until_checkpoint.into_iter().chain(until_flush).min() {
                Some(wait) => jobs.recv_timeout(wait),
                None => jobs
                    .recv()
                    .map_err(|_| mpsc::RecvTimeoutError::Disconnected),
            };
            let first_job = match got {
                Ok(j) => j,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if unsynced && last_sync.elapsed() >= FLUSH_EVERY {
                        unsynced = log.sync().is_err();
                        last_sync = Instant::now();
                    }
                    continue;
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            };
            let mut sync = first_job.1;
            let mut batch = vec![first_job.0];
            while batch.len() < MAX_BATCH {
                match jobs.try_recv() {
                    Ok((j, s)) => {
                        sync |= s;
                        batch.push(j);
                    }
                    Err(_) => break,
                }
            }
            sync |= last_sync.elapsed() >= FLUSH_EVERY;
            let mut tables = Tables::new(overlay);
            let dones: Vec<Done> = batch.drain(..).map(|job| job(Some(&mut tables))).collect();
            let changes = tables.take_changes();
            let mut record = Changes::default();
            for (which, changed) in &changes {
                for (row, value) in changed {
                    match value {
                        Some(v) => record.put(*which, row, v),
                        None => record.remove(*which, row),
                    }
                }
            }
            let logged = log
                .append(&record, sync)
                .map_err(|e| format!("ap store commit failed: the log: {e}"));
            if logged.is_ok() {
                if sync {
                    last_sync = Instant::now();
                }
                unsynced = !sync;
                let mut layers = overlay.write();
                let mut cache = overlay.cache();
                for (row, value) in &changes[Which::Keys as usize].1 {
                    cache.put(row, value.as_deref());
                }
                drop(cache);
                for (which, changed) in changes {
                    if rows == 0 && !changed.is_empty() {
                        first = Instant::now();
                    }
                    rows += changed.len();
                    bytes += changed
                        .iter()
                        .map(|(row, value)| change_bytes(row, value.as_ref()))
                        .sum::<usize>();
                    layers.active[which as usize].extend(changed);
                }
            }
            for done in dones {
                done(logged.clone());
            }
        }
        // Closing: what is left goes into one last checkpoint, after the running one.
        stopping.store(true, Ordering::Relaxed);
        // (A checkpoint runs unless its log is back or it gave up.)
        let spare = match spare {
            None if !gave_up.get() => returned_logs.recv().ok().and_then(take_back),
            spare => spare,
        };
        if let Some(next) = spare.filter(|_| rows > 0 && !gave_up.get()) {
            let _ = log.sync();
            let old = std::mem::replace(&mut log, next);
            checkpoint(old, log.epoch());
        }
        drop(to_checkpoint);
    });
}

/// A checkpoint to run: the frozen changes and the log that recorded them.
struct Checkpoint {
    log: ApLog,
    frozen: Arc<[OverlayRows; 4]>,
    /// The epoch of the log in use meanwhile: `log` starts over above it, so that at open
    /// the log with the lower epoch holds the older records.
    above: u64,
}

/// Pause between attempts of a checkpoint that failed.
const CHECKPOINT_RETRY: Duration = Duration::from_millis(200);

/// The checkpoint thread: runs each checkpoint it is handed and hands its log back,
/// started over, for the write loop to use next.
fn checkpoints(
    db: &Database,
    overlay: &Overlay,
    jobs: &mpsc::Receiver<Checkpoint>,
    back: &mpsc::Sender<Returned>,
    stopping: &AtomicBool,
) {
    for job in jobs {
        let returned = run_checkpoint(db, overlay, job, stopping);
        if back.send(returned).is_err() {
            break;
        }
    }
}

/// A log back from a checkpoint: `Err` when the checkpoint gave up (the store closing).
type Returned = Result<ApLog, ApLog>;

/// Commits the frozen changes (durably) and, in one step under the overlay's lock, holds
/// the B-tree that commit made as the committed layer and empties the frozen one; then
/// starts the log over (invariant 3 of [`log`]: only after that commit). A failed step is
/// tried again until it succeeds (the frozen changes stay visible meanwhile, and the log
/// is not handed back, so no later checkpoint can commit over rows this log still
/// holds); once the store is closing, a failure gives up and leaves the log as it is, to
/// be replayed at the next open.
fn run_checkpoint(
    db: &Database,
    overlay: &Overlay,
    job: Checkpoint,
    stopping: &AtomicBool,
) -> Returned {
    let Checkpoint {
        mut log,
        frozen,
        above,
    } = job;
    loop {
        match commit_rows(db, &frozen).and_then(|()| Committed::open(db)) {
            Ok(committed) => {
                let mut layers = overlay.write();
                layers.committed = Arc::new(committed);
                layers.frozen = Arc::default();
                break;
            }
            Err(_) if stopping.load(Ordering::Relaxed) => return Err(log),
            Err(_) => std::thread::sleep(CHECKPOINT_RETRY),
        }
    }
    loop {
        match log.restart(above) {
            Ok(()) => return Ok(log),
            Err(_) if stopping.load(Ordering::Relaxed) => return Err(log),
            Err(_) => std::thread::sleep(CHECKPOINT_RETRY),
        }
    }
}

/// One durable B-tree commit of `rows`, written in row order.
fn commit_rows(db: &Database, rows: &[OverlayRows; 4]) -> Result<(), ApStoreError> {
    let mut txn = db.begin_write()?;
    txn.set_durability(Durability::Immediate)?;
    for (def, changed) in LOGGED.into_iter().zip(rows.iter()) {
        if changed.is_empty() {
            continue;
        }
        let mut t = txn.open_table(def)?;
        for (row, value) in changed {
            match value {
                Some(v) => t.insert(row.as_slice(), v.as_slice())?,
                None => t.remove(row.as_slice())?,
            };
        }
    }
    txn.commit()?;
    Ok(())
}

/// Bytes of one row change: the row and its new value.
fn change_bytes(row: &[u8], value: Option<&Vec<u8>>) -> usize {
    row.len() + value.map_or(0, Vec::len)
}

/// Rows in the overlay (both layers).
#[cfg(test)]
fn overlay_len(overlay: &Overlay) -> usize {
    let layers = overlay.read();
    [&layers.active, &*layers.frozen]
        .iter()
        .flat_map(|l| l.iter())
        .map(BTreeMap::len)
        .sum()
}

/// Bytes of the rows in the overlay's active layer (the changes not yet handed to a
/// checkpoint) and their values, and whether a checkpoint was running.
#[cfg(test)]
fn active_bytes(overlay: &Overlay) -> (usize, bool) {
    let layers = overlay.read();
    let bytes = layers
        .active
        .iter()
        .flat_map(|rows| rows.iter())
        .map(|(row, value)| change_bytes(row, value.as_ref()))
        .sum();
    (bytes, layers.checkpointing)
}

/// The store's two change logs, beside its file.
fn log_paths(path: &Path) -> [PathBuf; 2] {
    [path.with_extension("log"), path.with_extension("log.1")]
}

/// Lays the logs' changes (found at open, in order) on the B-tree in one durable commit.
fn replay(
    db: &Database,
    changes: impl IntoIterator<Item = log::Change>,
) -> Result<(), ApStoreError> {
    let mut rows: [OverlayRows; 4] = Default::default();
    for c in changes {
        rows[c.table as usize].insert(c.row, c.value);
    }
    if rows.iter().all(BTreeMap::is_empty) {
        return Ok(());
    }
    commit_rows(db, &rows)
}

/// A new identity: the OS-seeded keys of std's `RandomState`, the time, the process and
/// `salt` (the store's path), hashed (unique, not secret; never 0).
fn fresh_id(salt: &[u8]) -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write(salt);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    h.write_u128(nanos);
    h.write_u32(std::process::id());
    h.finish().max(1)
}

/// Bytes before the key in a row of [`KEYS`].
const ROW_HEAD: usize = 9;

fn row(bucket: u8, key: &[u8]) -> Vec<u8> {
    let mut r = Vec::with_capacity(key.len() + ROW_HEAD);
    r.push(bucket);
    r.extend_from_slice(&hash_key(key).to_be_bytes());
    r.extend_from_slice(key);
    r
}

/// The first row at or after hash position `hash` in `bucket`.
fn row_at(bucket: u8, hash: u64) -> Vec<u8> {
    let mut r = vec![bucket];
    r.extend_from_slice(&hash.to_be_bytes());
    r
}

/// Keys of a bucket with their states, in the store's order.
pub type KeyStates = Vec<(Vec<u8>, RedisValue)>;

/// A key's place in a bucket's scan order: 1 + the top 63 bits of its ring hash, so that
/// 0 can stand for "from the first" (Redis's `SCAN` cursor). It depends on the key alone,
/// not on any member or ring, and the store keeps each bucket's keys in this order.
pub fn scan_position(key: &[u8]) -> u64 {
    (hash_key(key) >> 1) + 1
}

fn hint_row(owner: NodeId, bucket: u8, key: &[u8]) -> Vec<u8> {
    let mut r = owner.get().to_be_bytes().to_vec();
    r.push(bucket);
    r.extend_from_slice(key);
    r
}

/// What the Merkle trees record of a stored state.
fn digest(state_bytes: &[u8]) -> [u8; 8] {
    xxh3_64(state_bytes).to_le_bytes()
}

/// A state as bytes: a format version, then the state (what the replica protocol carries;
/// the store adds a checksum). A key that never held set members keeps format 1, the
/// layout from before sets, so its bytes (and the Merkle trees' digests of them) are the
/// same whichever build wrote them.
pub fn state_to_bytes(state: &RedisValue) -> Vec<u8> {
    // Serializing an in-memory state into a Vec cannot fail.
    match state.string_layout() {
        Some(layout) => {
            let mut b = vec![FORMAT];
            b.extend(postcard::to_allocvec(&layout).unwrap_or_default());
            b
        }
        None => match state.collections_layout() {
            Some(layout) => {
                let mut b = vec![FORMAT_SETS];
                b.extend(postcard::to_allocvec(&layout).unwrap_or_default());
                b
            }
            None => {
                let mut b = vec![FORMAT_SIBLINGS];
                b.extend(postcard::to_allocvec(state).unwrap_or_default());
                b
            }
        },
    }
}

/// The state in `bytes` written by [`state_to_bytes`], or what is wrong with them.
pub fn state_from_bytes(bytes: &[u8]) -> Result<RedisValue, String> {
    let undecodable = |e: postcard::Error| format!("undecodable state: {e}");
    match bytes.split_first() {
        Some((&FORMAT, body)) => postcard::from_bytes::<StringLayout>(body)
            .map(RedisValue::from)
            .map_err(undecodable),
        Some((&FORMAT_SETS, body)) => postcard::from_bytes::<CollectionsLayout>(body)
            .map(RedisValue::from)
            .map_err(undecodable),
        Some((&FORMAT_SIBLINGS, body)) => postcard::from_bytes(body).map_err(undecodable),
        Some((v, _)) => Err(format!("unknown format version {v}")),
        None => Err("empty value".into()),
    }
}

fn encode(row: &[u8], state: &RedisValue) -> Vec<u8> {
    seal(row, &state_to_bytes(state))
}

fn decode(row: &[u8], stored: &[u8]) -> Result<RedisValue, ApStoreError> {
    state_from_bytes(unsealed(row, stored)?).map_err(|reason| corrupt(row, reason))
}

/// The encoded state in the stored value of `row`, checked against its checksum.
fn unsealed<'a>(row: &[u8], stored: &'a [u8]) -> Result<&'a [u8], ApStoreError> {
    unseal(row, stored).ok_or_else(|| corrupt(row, "checksum mismatch".into()))
}

/// The error for the damaged value of `row`.
fn corrupt(row: &[u8], reason: String) -> ApStoreError {
    ApStoreError::Corrupt {
        key: String::from_utf8_lossy(row).into_owned(),
        reason,
    }
}

/// Moves the rows of the first layout into [`KEYS`] (re-sealed under their new row), in
/// one transaction.
fn migrate_v1(db: &Database) -> Result<(), ApStoreError> {
    let mut txn = db.begin_write()?;
    txn.set_durability(Durability::Immediate)?;
    match txn.open_table(KEYS_V1) {
        Ok(old) => {
            let mut new = txn.open_table(KEYS)?;
            for entry in old.iter()? {
                let (k, v) = entry?;
                let (k, v) = (k.value(), v.value());
                let state = decode(k, v)?;
                let Some((&bucket, key)) = k.split_first() else {
                    continue;
                };
                let r = row(bucket, key);
                new.insert(r.as_slice(), encode(&r, &state).as_slice())?;
            }
        }
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(()),
        Err(e) => return Err(e.into()),
    }
    txn.delete_table(KEYS_V1)?;
    txn.commit()?;
    Ok(())
}

/// Every bucket's Merkle tree, from a scan of the table.
fn build_trees(db: &Database) -> Result<Vec<MerkleTree>, ApStoreError> {
    let mut trees = vec![new_tree(); TREE_BUCKETS];
    let txn = db.begin_read()?;
    let t = txn.open_table(KEYS)?;
    for entry in t.iter()? {
        let (k, v) = entry?;
        let k = k.value();
        let state = decode(k, v.value())?;
        if let Some(tree) = trees.get_mut(usize::from(k[0])) {
            tree.insert(&k[ROW_HEAD..], &digest(&state_to_bytes(&state)));
        }
    }
    Ok(trees)
}

/// Stores `state` at `row` and answers its digest, encoding it once for both.
fn put_state(keys: &mut Rows<'_>, row: &[u8], state: &RedisValue) -> [u8; 8] {
    let bytes = state_to_bytes(state);
    keys.insert(row, seal(row, &bytes));
    digest(&bytes)
}

/// The state stored at `row` (a new one when absent) and its digest (`None` when absent).
fn held(keys: &Rows<'_>, row: &[u8]) -> Result<(RedisValue, Option<[u8; 8]>), ApStoreError> {
    Ok(match keys.get(row)? {
        Some(v) => {
            let s = decode(row, &v)?;
            let d = digest(&state_to_bytes(&s));
            (s, Some(d))
        }
        None => (RedisValue::new(), None),
    })
}

fn lock_trees(trees: &Mutex<Vec<MerkleTree>>) -> MutexGuard<'_, Vec<MerkleTree>> {
    // Plain hashes, consistent at any panic point.
    trees.lock().unwrap_or_else(|e| e.into_inner())
}

/// Mirrors a committed change of `key` in its bucket's tree. Called after the commit, so
/// the tree holds only what is durable; sums commute, so two changes of one key may reach
/// the tree in either order.
fn record(
    trees: &Mutex<Vec<MerkleTree>>,
    bucket: u8,
    key: &[u8],
    before: Option<[u8; 8]>,
    after: [u8; 8],
) {
    if let Some(tree) = lock_trees(trees).get_mut(usize::from(bucket)) {
        match before {
            Some(b) => tree.update(key, &b, &after),
            None => tree.insert(key, &after),
        }
    }
}

fn new_tree() -> MerkleTree {
    // TREE_LEAVES is a valid power of two.
    MerkleTree::new(TREE_LEAVES).unwrap_or_else(|_| unreachable!("TREE_LEAVES is a power of two"))
}

/// Hints per owner in the table, counted at open.
fn count_hints(db: &Database) -> Result<BTreeMap<NodeId, u64>, ApStoreError> {
    let txn = db.begin_read()?;
    let t = txn.open_table(HINTS)?;
    let mut out = BTreeMap::new();
    for entry in t.iter()? {
        let (k, _) = entry?;
        if let Some(id) = k.value().get(..8).and_then(|b| <[u8; 8]>::try_from(b).ok()) {
            *out.entry(NodeId(u64::from_be_bytes(id))).or_default() += 1;
        }
    }
    Ok(out)
}

impl ApStore {
    /// Opens or creates the store at `path`, holding at most `hint_limit` hints per owner.
    pub fn open(path: &Path, hint_limit: u64) -> Result<Self, ApStoreError> {
        let open_err = |reason: String| ApStoreError::Open {
            path: path.to_path_buf(),
            reason,
        };
        // redb may panic on a damaged file instead of returning an error.
        let opened = std::panic::catch_unwind(|| Database::create(path))
            .map_err(|_| open_err("the database library failed reading it".into()))?;
        let db = Arc::new(opened.map_err(|e| open_err(e.to_string()))?);
        let mut txn = db.begin_write()?;
        txn.set_durability(Durability::Immediate)?;
        txn.open_table(KEYS)?;
        txn.open_table(HINTS)?;
        txn.open_table(PAXOS)?;
        let replica_id = {
            let mut meta = txn.open_table(META)?;
            let held = meta
                .get(b"replica_id".as_slice())?
                .and_then(|v| <[u8; 8]>::try_from(v.value()).ok())
                .map(u64::from_be_bytes);
            match held {
                Some(id) => id,
                None => {
                    let id = fresh_id(path.as_os_str().as_encoded_bytes());
                    meta.insert(b"replica_id".as_slice(), id.to_be_bytes().as_slice())?;
                    id
                }
            }
        };
        txn.commit()?;
        migrate_v1(&db)?;
        // The changes answered but not yet checkpointed when the store last stopped: two
        // logs (the one in use and the one a running checkpoint was committing), the
        // older epoch's records first.
        let mut opened = Vec::with_capacity(2);
        for file in log_paths(path) {
            let (log, recovered) =
                ApLog::open(&file, replica_id).map_err(|e| open_err(format!("its log: {e}")))?;
            if let Some(damage) = &recovered.damage {
                // Not a torn last record (which replay drops silently): answered changes
                // may be in the part that cannot be read. An operator decides.
                return Err(open_err(format!(
                    "its log {} is damaged ({damage}); moving the log aside opens the store \
                     without the changes recorded after its last checkpoint",
                    file.display()
                )));
            }
            opened.push((log, recovered.changes));
        }
        opened.sort_by_key(|(log, _)| log.epoch());
        let (mut logs, changes): (Vec<ApLog>, Vec<_>) = opened.into_iter().unzip();
        replay(&db, changes.into_iter().flatten())?;
        // Started over only once everything both held is committed.
        let mut above = 0;
        for log in &mut logs {
            log.restart(above)
                .map_err(|e| open_err(format!("its log: {e}")))?;
            above = log.epoch();
        }
        let logs: [ApLog; 2] = logs
            .try_into()
            .map_err(|_| open_err("its logs could not be opened".into()))?;
        let actor = db
            .begin_read()?
            .open_table(META)?
            .get(ACTOR)?
            .and_then(|v| <[u8; 8]>::try_from(v.value()).ok())
            .map_or(replica_id, u64::from_be_bytes);
        let trees = Arc::new(Mutex::new(build_trees(&db)?));
        let hint_counts = Mutex::new(count_hints(&db)?);
        let (tx, rx) = mpsc::channel();
        let stopping = Arc::new(AtomicBool::new(false));
        let writer_stopping = stopping.clone();
        let writer_db = db.clone();
        let overlay = Arc::new(Overlay::new(&db)?);
        let writer_overlay = overlay.clone();
        let writer = std::thread::Builder::new()
            .name("ap-store-commit".into())
            .spawn(move || write_loop(&writer_db, logs, &writer_overlay, &rx, &writer_stopping))
            .map_err(|e| open_err(format!("cannot start its commit thread: {e}")))?;
        Ok(ApStore {
            overlay,
            db,
            trees,
            hint_counts,
            hint_limit,
            replica_id,
            actor: Arc::new(AtomicU64::new(actor)),
            lazy: Default::default(),
            jobs: Some(tx),
            stopping,
            writer: Some(writer),
        })
    }

    /// This store's identity (fixed for the life of the file, never 0).
    pub fn replica_id(&self) -> u64 {
        self.replica_id
    }

    /// The identity this replica acts under in CRDT states (counter entries, dots): the
    /// [`ApStore::replica_id`] at first, a new one after the store removed a state it had
    /// acted on (handoff's cleanup, tombstone collection). A replica that acted again on
    /// such a key under the same identity would start from its empty state and reuse
    /// counter entries and dots that other replicas still hold, so its new increments
    /// would hide behind its old ones. Read it in the write job that acts (the commit
    /// thread makes the change), so no removal slips in between.
    pub fn actor(&self) -> u64 {
        self.actor.load(Ordering::Acquire)
    }

    /// Sets whether changes of `bucket` are acknowledged before their fsync (`async`
    /// durability; see [`FLUSH_EVERY`]) or after it (the default).
    pub fn set_async(&self, bucket: u8, lazy: bool) {
        if let Some(b) = self.lazy.get(usize::from(bucket)) {
            b.store(lazy, Ordering::Relaxed);
        }
    }

    /// Whether changes of `bucket` must be fsync'd before they are answered.
    fn sync(&self, bucket: u8) -> bool {
        self.lazy
            .get(usize::from(bucket))
            .is_none_or(|b| !b.load(Ordering::Relaxed))
    }

    /// Queues `f` for the next group commit; `done` gets its answer once that commit is
    /// durable (or the commit's error; with `sync` false, once it is committed), on the
    /// commit thread: it must not block.
    fn submit<T: Send + 'static>(
        &self,
        sync: bool,
        f: impl FnOnce(&mut Tables<'_>) -> Result<T, ApStoreError> + Send + 'static,
        done: impl FnOnce(Result<T, ApStoreError>) + Send + 'static,
    ) {
        let job: Job = Box::new(move |tables| {
            let out = match tables {
                Some(t) => f(t),
                None => Err(ApStoreError::Commit(
                    "the batch failed before this write".into(),
                )),
            };
            Box::new(move |committed: Result<(), String>| {
                done(committed.map_err(ApStoreError::Commit).and(out))
            })
        });
        let refused = match &self.jobs {
            Some(jobs) => jobs.send((job, sync)).err().map(|e| e.0 .0),
            None => Some(job),
        };
        if let Some(job) = refused {
            job(None)(Err("the store is closing".into()));
        }
    }

    /// Runs `f` in the next group commit and returns its answer once that commit is
    /// durable (or the commit's error).
    fn write<T: Send + 'static>(
        &self,
        sync: bool,
        f: impl FnOnce(&mut Tables<'_>) -> Result<T, ApStoreError> + Send + 'static,
    ) -> Result<T, ApStoreError> {
        let (tx, rx) = mpsc::sync_channel(1);
        self.submit(sync, f, move |out| {
            let _ = tx.send(out);
        });
        rx.recv()
            .map_err(|_| ApStoreError::Commit("the store is closing".into()))?
    }

    /// The state of `key` in `bucket`, if any.
    pub fn get(&self, bucket: u8, key: &[u8]) -> Result<Option<RedisValue>, ApStoreError> {
        let r = row(bucket, key);
        self.overlay
            .lookup(Which::Keys, &r, |v| v.map(|v| decode(&r, v)).transpose())?
    }

    /// The state of `key` in `bucket` as [`state_to_bytes`] encoded it, checked against
    /// its checksum but not decoded: what a replica answers a read with, without a
    /// decode and an encode ([`state_from_bytes`] of it gives [`ApStore::get`]'s state).
    pub fn get_encoded(&self, bucket: u8, key: &[u8]) -> Result<Option<Vec<u8>>, ApStoreError> {
        let r = row(bucket, key);
        self.overlay.lookup(Which::Keys, &r, |v| {
            v.map(|v| unsealed(&r, v).map(<[u8]>::to_vec)).transpose()
        })?
    }

    /// Applies `f` to the state of `key` (a new one if absent) and stores the result
    /// durably, unless `f` refuses (then nothing is written). Returns `f`'s answer and the
    /// state stored.
    pub fn update<T: Send + 'static, E: Send + 'static>(
        &self,
        bucket: u8,
        key: &[u8],
        f: impl FnOnce(&mut RedisValue) -> Result<T, E> + Send + 'static,
    ) -> Result<Result<(T, RedisValue), E>, ApStoreError> {
        let (tx, rx) = mpsc::sync_channel(1);
        self.update_then(bucket, key, f, move |out| {
            let _ = tx.send(out);
        });
        rx.recv()
            .map_err(|_| ApStoreError::Commit("the store is closing".into()))?
    }

    /// [`ApStore::update`] without waiting: `done` gets what `update` would return, on
    /// the commit thread (it must not block), so an async caller needs no thread of its
    /// own per change.
    pub fn update_then<T: Send + 'static, E: Send + 'static>(
        &self,
        bucket: u8,
        key: &[u8],
        f: impl FnOnce(&mut RedisValue) -> Result<T, E> + Send + 'static,
        done: impl FnOnce(Result<Result<(T, RedisValue), E>, ApStoreError>) + Send + 'static,
    ) {
        let r = row(bucket, key);
        let key = key.to_vec();
        let trees = self.trees.clone();
        let change = move |t: &mut Tables<'_>| {
            let (mut state, before) = held(&t.keys, &r)?;
            Ok(match f(&mut state) {
                Ok(answer) => {
                    let after = put_state(&mut t.keys, &r, &state);
                    Ok((answer, state, before, after))
                }
                Err(e) => Err(e),
            })
        };
        self.submit(self.sync(bucket), change, move |out| {
            done(out.map(|changed| {
                changed.map(|(answer, state, before, after)| {
                    record(&trees, bucket, &key, before, after);
                    (answer, state)
                })
            }))
        });
    }

    /// One Paxos step on `key` (compare-and-set, `concord_core::paxos`): `f` gets the key's
    /// acceptor state and its data (a new state when absent) and may change both; what
    /// changed is stored and fsync'd (whatever the bucket's durability: a promise must
    /// survive a crash) before `done` gets `f`'s answer and the data.
    pub fn paxos_then<T: Send + 'static>(
        &self,
        bucket: u8,
        key: &[u8],
        f: impl FnOnce(&mut Acceptor<RedisValue>, &mut RedisValue) -> T + Send + 'static,
        done: impl FnOnce(Result<(T, RedisValue), ApStoreError>) + Send + 'static,
    ) {
        let r = row(bucket, key);
        let key = key.to_vec();
        let trees = self.trees.clone();
        let step = move |t: &mut Tables<'_>| {
            let mut acceptor: Acceptor<RedisValue> = match t.paxos.get(r.as_slice())? {
                Some(v) => {
                    let bytes = unseal(&r, &v)
                        .ok_or_else(|| corrupt(&r, "paxos state checksum mismatch".into()))?;
                    postcard::from_bytes(bytes)
                        .map_err(|e| corrupt(&r, format!("undecodable paxos state: {e}")))?
                }
                None => Acceptor::new(),
            };
            let (mut state, before) = held(&t.keys, &r)?;
            let (acceptor_was, state_was) = (acceptor.clone(), state.clone());
            let answer = f(&mut acceptor, &mut state);
            if acceptor != acceptor_was {
                let bytes = postcard::to_allocvec(&acceptor).unwrap_or_default();
                t.paxos.insert(r.as_slice(), seal(&r, &bytes));
            }
            let mut changed = None;
            if state != state_was {
                changed = Some((before, put_state(&mut t.keys, &r, &state)));
            }
            Ok((answer, state, changed))
        };
        self.submit(true, step, move |out| {
            done(out.map(|(answer, state, changed)| {
                if let Some((before, after)) = changed {
                    record(&trees, bucket, &key, before, after);
                }
                (answer, state)
            }))
        });
    }

    fn trees(&self) -> MutexGuard<'_, Vec<MerkleTree>> {
        lock_trees(&self.trees)
    }

    /// Merges each state into its key of `bucket`, all in one commit, writing only the keys
    /// the merge changes, and creating no key for a state `creates` refuses (see
    /// [`ApStore::merge_then`]); how many it changed.
    pub fn merge_many(
        &self,
        bucket: u8,
        entries: Vec<(Vec<u8>, RedisValue)>,
        creates: impl Fn(&RedisValue) -> bool + Send + 'static,
    ) -> Result<usize, ApStoreError> {
        let changes = self.write(self.sync(bucket), move |t| {
            let mut changes = Vec::new();
            for (key, state) in entries {
                let r = row(bucket, &key);
                let (mut now, before) = held(&t.keys, &r)?;
                if before.is_none() && !creates(&state) {
                    continue;
                }
                let old = now.clone();
                now.merge(&state);
                if now == old {
                    continue;
                }
                let after = put_state(&mut t.keys, &r, &now);
                changes.push((key, before, after));
            }
            Ok(changes)
        })?;
        for (key, before, after) in &changes {
            record(&self.trees, bucket, key, *before, *after);
        }
        Ok(changes.len())
    }

    /// The root of `bucket`'s Merkle tree (`None`: no such bucket).
    pub fn tree_root(&self, bucket: u8) -> Option<u128> {
        self.trees().get(usize::from(bucket)).map(MerkleTree::root)
    }

    /// The leaf hashes of `bucket`'s Merkle tree, leaf `i` covering ring hashes
    /// `[i, i + 1) · 2^64 / TREE_LEAVES`.
    pub fn tree_leaves(&self, bucket: u8) -> Option<Vec<u128>> {
        let trees = self.trees();
        let tree = trees.get(usize::from(bucket))?;
        tree.level(tree.depth()).map(<[u128]>::to_vec)
    }

    /// The keys of `bucket` in Merkle leaf `leaf`, with their states.
    pub fn leaf(
        &self,
        bucket: u8,
        leaf: usize,
    ) -> Result<Vec<(Vec<u8>, RedisValue)>, ApStoreError> {
        if usize::from(bucket) >= TREE_BUCKETS || leaf >= TREE_LEAVES {
            return Ok(Vec::new());
        }
        let shift = 64 - TREE_LEAVES.trailing_zeros();
        let start = row_at(bucket, (leaf as u64) << shift);
        let end = (leaf as u64 + 1)
            .checked_shl(shift)
            .filter(|_| leaf + 1 < TREE_LEAVES)
            .map_or_else(|| vec![bucket + 1], |h| row_at(bucket, h));
        use std::ops::Bound::{Excluded, Included};
        let range = (Included(start.as_slice()), Excluded(end.as_slice()));
        let (committed, over) = self.overlay.range(Which::Keys, range, usize::MAX);
        let t = committed.table(Which::Keys);
        let mut out = Vec::new();
        for entry in overlaid(t, range, over)? {
            let (k, v) = entry?;
            out.push((k[ROW_HEAD..].to_vec(), decode(&k, &v)?));
        }
        Ok(out)
    }

    /// Merges `state` into the stored state of `key` durably when that changes it (an
    /// unchanged key costs a read, no write); whether it did.
    pub fn merge_if_newer(
        &self,
        bucket: u8,
        key: &[u8],
        state: &RedisValue,
    ) -> Result<bool, ApStoreError> {
        let unchanged = |held: &RedisValue| held.merged(state) == *held;
        if self.get(bucket, key)?.as_ref().is_some_and(unchanged) {
            return Ok(false);
        }
        let state = state.clone();
        let out = self.update(bucket, key, move |s| {
            let before = s.clone();
            s.merge(&state);
            if *s == before {
                Err(())
            } else {
                Ok(())
            }
        })?;
        Ok(out.is_ok())
    }

    /// [`ApStore::merge`] without waiting: `done` gets its answer on the commit thread.
    /// With `create` false, a key this store does not hold is left absent (nothing is
    /// written; the answer is the empty state): how a collectable tombstone is kept from
    /// coming back to a replica that has already collected it.
    pub fn merge_then(
        &self,
        bucket: u8,
        key: &[u8],
        state: RedisValue,
        create: bool,
        done: impl FnOnce(Result<RedisValue, ApStoreError>) + Send + 'static,
    ) {
        let merge = move |s: &mut RedisValue| {
            if !create && *s == RedisValue::new() {
                return Err(());
            }
            s.merge(&state);
            Ok(())
        };
        self.update_then(bucket, key, merge, move |out| {
            done(out.map(|merged| merged.map_or_else(|()| RedisValue::new(), |(_, s)| s)))
        });
    }

    /// Merges `state` into the stored state of `key` durably; returns the result.
    pub fn merge(
        &self,
        bucket: u8,
        key: &[u8],
        state: &RedisValue,
    ) -> Result<RedisValue, ApStoreError> {
        let state = state.clone();
        let merged = self.update(bucket, key, move |s| {
            s.merge(&state);
            Ok::<(), std::convert::Infallible>(())
        })?;
        Ok(merged.map_or_else(|e| match e {}, |(_, s)| s))
    }

    /// Removes `key` from `bucket` if its stored state still equals `expected` (tombstone
    /// collection, handoff's cleanup); whether it did. When the current actor acted on
    /// that state, a new actor is drawn in the same batch ([`ApStore::actor`]).
    pub fn remove_if_same(
        &self,
        bucket: u8,
        key: &[u8],
        expected: &RedisValue,
    ) -> Result<bool, ApStoreError> {
        let r = row(bucket, key);
        let expected = expected.clone();
        let actor = self.actor.clone();
        let removed = self.write(self.sync(bucket), move |t| {
            let same = match t.keys.get(r.as_slice())? {
                Some(v) => decode(&r, &v)? == expected,
                None => false,
            };
            if same {
                t.keys.remove(r.as_slice());
                let current = actor.load(Ordering::Acquire);
                if expected.acted(NodeId(current)) {
                    let next = fresh_id(&current.to_be_bytes());
                    t.meta.insert(ACTOR, next.to_be_bytes().to_vec());
                    actor.store(next, Ordering::Release);
                }
            }
            Ok(same.then(|| digest(&state_to_bytes(&expected))))
        })?;
        if let Some(d) = removed {
            if let Some(tree) = self.trees().get_mut(usize::from(bucket)) {
                tree.remove(key, &d);
            }
        }
        Ok(removed.is_some())
    }

    /// Keeps `state` of `key` for `owner` (merged into a hint already held); refused with
    /// [`ApStoreError::HintsFull`] when a new hint would pass the limit for `owner`.
    pub fn store_hint(
        &self,
        owner: NodeId,
        bucket: u8,
        key: &[u8],
        state: &RedisValue,
    ) -> Result<(), ApStoreError> {
        let r = hint_row(owner, bucket, key);
        let state = state.clone();
        let limit = self.hint_limit;
        let full = self.counts().get(&owner).copied().unwrap_or(0) >= limit;
        let added = self.write(self.sync(bucket), move |t| {
            let held = match t.hints.get(r.as_slice())? {
                Some(v) => Some(decode(&r, &v)?),
                None if full => return Err(ApStoreError::HintsFull { owner, limit }),
                None => None,
            };
            let added = held.is_none();
            let mut held = held.unwrap_or_default();
            held.merge(&state);
            t.hints.insert(r.as_slice(), encode(&r, &held));
            Ok(added)
        })?;
        if added {
            *self.counts().entry(owner).or_default() += 1;
        }
        Ok(())
    }

    fn counts(&self) -> MutexGuard<'_, BTreeMap<NodeId, u64>> {
        // Plain counts, consistent at any panic point.
        self.hint_counts.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Up to `limit` hints held for `owner`, in key order.
    pub fn hints(&self, owner: NodeId, limit: usize) -> Result<Vec<Hint>, ApStoreError> {
        use std::ops::Bound::{Excluded, Included, Unbounded};
        let prefix = owner.get().to_be_bytes();
        let next = owner.get().checked_add(1).map(u64::to_be_bytes);
        let end = next.as_ref().map_or(Unbounded, |n| Excluded(n.as_slice()));
        let range = (Included(prefix.as_slice()), end);
        let (committed, over) = self.overlay.range(Which::Hints, range, limit);
        let t = committed.table(Which::Hints);
        let mut out = Vec::new();
        for entry in overlaid(t, range, over)? {
            let (k, v) = entry?;
            let (k, v) = (k.as_slice(), v.as_slice());
            if !k.starts_with(&prefix) || out.len() >= limit {
                break;
            }
            let Some((&bucket, key)) = k[prefix.len()..].split_first() else {
                continue;
            };
            out.push(Hint {
                bucket,
                key: key.to_vec(),
                state: decode(k, v)?,
            });
        }
        Ok(out)
    }

    /// The owners hints are held for, with how many each.
    pub fn hint_owners(&self) -> Vec<(NodeId, u64)> {
        self.counts().iter().map(|(o, n)| (*o, *n)).collect()
    }

    /// Removes the hint of `key` for `owner` if it still equals `handed_over`; returns
    /// whether it did.
    pub fn remove_hint(
        &self,
        owner: NodeId,
        bucket: u8,
        key: &[u8],
        handed_over: &RedisValue,
    ) -> Result<bool, ApStoreError> {
        let r = hint_row(owner, bucket, key);
        let handed_over = handed_over.clone();
        let removed = self.write(self.sync(bucket), move |t| {
            let same = match t.hints.get(r.as_slice())? {
                Some(v) => decode(&r, &v)? == handed_over,
                None => false,
            };
            if same {
                t.hints.remove(r.as_slice());
            }
            Ok(same)
        })?;
        if removed {
            let mut counts = self.counts();
            if let Some(n) = counts.get_mut(&owner) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    counts.remove(&owner);
                }
            }
        }
        Ok(removed)
    }

    /// Up to `limit` keys of `bucket` after the key `after` (from the first when `None`),
    /// in the store's order (by ring hash, then key), with their states (tombstones and
    /// expired keys included).
    pub fn scan(
        &self,
        bucket: u8,
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<KeyStates, ApStoreError> {
        use std::ops::Bound::{Excluded, Included};
        let (first, from) = ([bucket], after.map(|a| row(bucket, a)));
        let begin = from.as_deref().map_or(Included(&first[..]), Excluded);
        self.scan_rows(bucket, begin, limit)
    }

    /// Up to `limit` keys of `bucket` at [`scan_position`] `from` or later (0: from the
    /// first), in the store's order, and any further keys at the last one's position, so
    /// that the page ends at a whole position; and whether no key follows the page.
    pub fn scan_positions(
        &self,
        bucket: u8,
        from: u64,
        limit: usize,
    ) -> Result<(KeyStates, bool), ApStoreError> {
        use std::ops::Bound::{Excluded, Included};
        let start = row_at(bucket, from.saturating_sub(1) << 1);
        let mut page = self.scan_rows(bucket, Included(&start), limit)?;
        if page.len() < limit {
            return Ok((page, true));
        }
        // Keys sharing a position (the top 63 bits of their hash) are rare, not impossible.
        while let Some((last, _)) = page.last() {
            let at = scan_position(last);
            let next = self.scan_rows(bucket, Excluded(&row(bucket, last)), 1)?;
            match next.into_iter().next() {
                Some(entry) if scan_position(&entry.0) == at => page.push(entry),
                Some(_) => return Ok((page, false)),
                None => return Ok((page, true)),
            }
        }
        Ok((page, true))
    }

    /// Up to `limit` keys of `bucket` from the row bound `begin` on, with their states.
    fn scan_rows(
        &self,
        bucket: u8,
        begin: std::ops::Bound<&[u8]>,
        limit: usize,
    ) -> Result<KeyStates, ApStoreError> {
        use std::ops::Bound::{Excluded, Unbounded};
        let next = [bucket.wrapping_add(1)];
        let end = if bucket == u8::MAX {
            Unbounded
        } else {
            Excluded(next.as_slice())
        };
        let range = (begin, end);
        let (committed, over) = self.overlay.range(Which::Keys, range, limit);
        let t = committed.table(Which::Keys);
        let mut out = KeyStates::new();
        for entry in overlaid(t, range, over)?.take(limit) {
            let (k, v) = entry?;
            out.push((k[ROW_HEAD..].to_vec(), decode(&k, &v)?));
        }
        Ok(out)
    }

    /// How many keys `bucket` holds (tombstones included).
    pub fn key_count(&self, bucket: u8) -> Result<u64, ApStoreError> {
        use std::ops::Bound::{Excluded, Included, Unbounded};
        let start = [bucket];
        let next = [bucket.wrapping_add(1)];
        let end = if bucket == u8::MAX {
            Unbounded
        } else {
            Excluded(next.as_slice())
        };
        let range = (Included(start.as_slice()), end);
        let (committed, over) = self.overlay.range(Which::Keys, range, usize::MAX);
        let t = committed.table(Which::Keys);
        let mut n = t.range::<&[u8]>(range)?.count() as u64;
        // The overlay's rows that the B-tree lacks, less the ones it removes.
        for (row, value) in over {
            match (t.get(row.as_slice())?.is_some(), value.is_some()) {
                (false, true) => n += 1,
                (true, false) => n = n.saturating_sub(1),
                _ => {}
            }
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use concord_core::crdt::{SetExpiry, ValueError};

    const A: NodeId = NodeId(1);
    const B: NodeId = NodeId(2);

    fn set(v: &str, t: u64, n: NodeId) -> RedisValue {
        let mut s = RedisValue::new();
        s.set(v.as_bytes().to_vec(), (t, n), n, SetExpiry::Clear);
        s
    }

    /// Starts this test binary running only the test `name` (a child that does nothing
    /// unless its environment is set), with `env`, its output piped.
    fn spawn_child(name: &str, env: &[(&str, &std::ffi::OsStr)]) -> std::process::Child {
        let test = format!(
            "{}::{name}",
            module_path!().split_once("::").map_or("", |(_, m)| m)
        );
        std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                test.as_str(),
                "--nocapture",
                "--test-threads",
                "1",
            ])
            .envs(env.iter().copied())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap()
    }

    const ASYNC_CHILD_DIR: &str = "CONCORD_AP_ASYNC_CHILD_DIR";

    /// The child of [`async_buckets_are_made_durable_within_the_flush_interval`]: does
    /// nothing unless started by it.
    #[test]
    fn async_bucket_child() {
        let Ok(dir) = std::env::var(ASYNC_CHILD_DIR) else {
            return;
        };
        let store = ApStore::open(&Path::new(&dir).join("ap.redb"), 100).expect("open");
        store.set_async(3, true);
        store.merge(3, b"lazy", &set("v", 1, A)).expect("merge");
        assert!(
            store.get(3, b"lazy").expect("get").is_some(),
            "visible at once"
        );
        println!("ACK");
        std::thread::sleep(FLUSH_EVERY * 2);
        println!("FLUSHED");
        // Bounded even if the parent never kills it.
        std::thread::sleep(Duration::from_secs(30));
    }

    /// An `async` bucket's change is acknowledged before its fsync and made durable by the
    /// writer within FLUSH_EVERY: a SIGKILL after that keeps it. A fsync'd bucket's change
    /// survives a SIGKILL right after its acknowledgement.
    #[test]
    fn async_buckets_are_made_durable_within_the_flush_interval() {
        use std::io::{BufRead, BufReader};
        let tmp = tempfile::tempdir().unwrap();
        let mut child = spawn_child(
            "async_bucket_child",
            &[(ASYNC_CHILD_DIR, tmp.path().as_os_str())],
        );
        let lines: Vec<String> = BufReader::new(child.stdout.take().unwrap())
            .lines()
            .map_while(Result::ok)
            .take_while(|l| l != "FLUSHED")
            .collect();
        child.kill().unwrap();
        let _ = child.wait();
        assert!(
            lines.iter().any(|l| l.ends_with("ACK")),
            "child output: {lines:?}"
        );
        let store = ApStore::open(&tmp.path().join("ap.redb"), 100).unwrap();
        assert_eq!(
            store.get(3, b"lazy").unwrap().and_then(|s| s.get(0)),
            Some(b"v".to_vec())
        );
        // And a store dropped (the process ending normally) flushes what it holds.
        store.set_async(4, true);
        store.merge(4, b"k", &set("w", 1, A)).unwrap();
        drop(store);
        let store = ApStore::open(&tmp.path().join("ap.redb"), 100).unwrap();
        assert!(store.get(4, b"k").unwrap().is_some());
    }

    /// A burst of large states is checkpointed by size, not held until the next
    /// [`CHECKPOINT_EVERY`]: after each answered change the overlay's active layer holds
    /// at most the bound plus the batch that crossed it and this one, unless the previous
    /// checkpoint was still running (then twice the bound).
    #[test]
    fn large_states_are_checkpointed_by_size() {
        let dir = tempfile::tempdir().unwrap();
        let store = ApStore::open(&dir.path().join("ap.redb"), 100).unwrap();
        // No fsync per change: the changes go through well within CHECKPOINT_EVERY.
        store.set_async(2, true);
        let size = CHECKPOINT_BYTES / 4;
        let (mut most, mut most_alone) = (0, 0);
        for i in 0..24u64 {
            let mut s = RedisValue::new();
            s.set(vec![b'x'; size], (i + 1, A), A, SetExpiry::Clear);
            store.merge(2, format!("big-{i}").as_bytes(), &s).unwrap();
            let (bytes, checkpointing) = active_bytes(&store.overlay);
            most = most.max(bytes);
            if !checkpointing {
                most_alone = most_alone.max(bytes);
            }
        }
        assert!(
            most_alone <= CHECKPOINT_BYTES + 2 * (size + 64),
            "the overlay held {most_alone} bytes with no checkpoint running (bound {CHECKPOINT_BYTES})"
        );
        assert!(
            most <= 2 * CHECKPOINT_BYTES + 2 * (size + 64),
            "the overlay held {most} bytes (bound {CHECKPOINT_BYTES})"
        );
        for i in 0..24u64 {
            let got = store
                .get(2, format!("big-{i}").as_bytes())
                .unwrap()
                .unwrap();
            assert_eq!(got.get(0).map(|v| v.len()), Some(size));
        }
    }

    /// Every read (get, scan pages, key count, Merkle leaves, hints) against a model,
    /// while the changes are in the overlay only, after the checkpoint, and with both.
    #[test]
    fn reads_see_answered_changes_before_and_after_the_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let store = ApStore::open(&dir.path().join("ap.redb"), 1000).unwrap();
        let mut model: BTreeMap<Vec<u8>, RedisValue> = BTreeMap::new();
        let mut hints: BTreeMap<Vec<u8>, RedisValue> = BTreeMap::new();
        let check = |model: &BTreeMap<Vec<u8>, RedisValue>,
                     hints: &BTreeMap<Vec<u8>, RedisValue>| {
            for (k, v) in model {
                assert_eq!(store.get(1, k).unwrap().as_ref(), Some(v));
            }
            assert_eq!(store.get(1, b"never").unwrap(), None);
            assert_eq!(store.key_count(1).unwrap(), model.len() as u64);
            assert_eq!(store.key_count(2).unwrap(), 1);
            let mut scanned = BTreeMap::new();
            let mut after: Option<Vec<u8>> = None;
            loop {
                let page = store.scan(1, after.as_deref(), 37).unwrap();
                for (k, v) in &page {
                    assert!(
                        scanned.insert(k.clone(), v.clone()).is_none(),
                        "scanned twice"
                    );
                }
                if page.len() < 37 {
                    break;
                }
                after = page.last().map(|(k, _)| k.clone());
            }
            assert_eq!(&scanned, model);
            let mut leaves = BTreeMap::new();
            for leaf in 0..TREE_LEAVES {
                leaves.extend(store.leaf(1, leaf).unwrap());
            }
            assert_eq!(&leaves, model);
            let held: BTreeMap<Vec<u8>, RedisValue> = store
                .hints(B, 1000)
                .unwrap()
                .into_iter()
                .map(|h| (h.key, h.state))
                .collect();
            assert_eq!(&held, hints);
            assert!(store.hints(NodeId(3), 10).unwrap().is_empty());
        };
        store.merge(2, b"other bucket", &set("x", 1, A)).unwrap();
        let round = |n: u64,
                     model: &mut BTreeMap<Vec<u8>, RedisValue>,
                     hints: &mut BTreeMap<Vec<u8>, RedisValue>| {
            let entries: Vec<(Vec<u8>, RedisValue)> = (0..300)
                .map(|i| {
                    (
                        format!("k{n}-{i}").into_bytes(),
                        set(&format!("v{i}"), n, A),
                    )
                })
                .collect();
            store.merge_many(1, entries.clone(), |_| true).unwrap();
            model.extend(entries);
            // Removals of keys from this round and (after the first) the last one.
            let gone: Vec<Vec<u8>> = model.keys().step_by(7).cloned().collect();
            for k in gone {
                let v = model.remove(&k).unwrap();
                assert!(store.remove_if_same(1, &k, &v).unwrap());
            }
            for i in 0..20 {
                let k = format!("h{n}-{i}").into_bytes();
                let v = set("h", n, B);
                store.store_hint(B, 1, &k, &v).unwrap();
                hints.insert([&[1u8][..], &k].concat(), v);
            }
            let handed: Vec<(Vec<u8>, RedisValue)> = hints
                .iter()
                .step_by(4)
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            for (k, v) in handed {
                assert!(store.remove_hint(B, 1, &k[1..], &v).unwrap());
                hints.remove(&k);
            }
        };
        round(1, &mut model, &mut hints);
        let hints_by_key = |h: &BTreeMap<Vec<u8>, RedisValue>| -> BTreeMap<Vec<u8>, RedisValue> {
            h.iter()
                .map(|(k, v)| (k[1..].to_vec(), v.clone()))
                .collect()
        };
        assert!(
            overlay_len(&store.overlay) > 0,
            "changes still in the overlay"
        );
        check(&model, &hints_by_key(&hints));
        let deadline = Instant::now() + CHECKPOINT_EVERY * 3;
        while overlay_len(&store.overlay) > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        assert_eq!(overlay_len(&store.overlay), 0, "checkpointed");
        check(&model, &hints_by_key(&hints));
        round(2, &mut model, &mut hints);
        check(&model, &hints_by_key(&hints));
    }

    #[test]
    fn the_read_cache_never_answers_a_value_a_checkpoint_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let store = ApStore::open(&dir.path().join("ap.redb"), 1000).unwrap();
        let targets: Vec<Vec<u8>> = (0..40).map(|i| format!("t{i}").into_bytes()).collect();
        let cached = |k: &[u8]| store.overlay.cache().rows.contains_key(&row(1, k));
        let mut model: BTreeMap<Vec<u8>, RedisValue> = BTreeMap::new();
        for round in 1..=4u64 {
            // Enough bytes to start a checkpoint, in rows of two sizes.
            let (rows, size) = if round % 2 == 1 {
                (1_200, 1_000)
            } else {
                (4_200, 300)
            };
            let filler: Vec<(Vec<u8>, RedisValue)> = (0..rows)
                .map(|i| {
                    let v = "f".repeat(size);
                    (format!("f{round}-{i}").into_bytes(), set(&v, round, A))
                })
                .collect();
            // The targets change every round; every third is removed.
            let mut entries: Vec<(Vec<u8>, RedisValue)> = targets
                .iter()
                .map(|k| (k.clone(), set(&format!("v{round}"), round, A)))
                .collect();
            entries.extend(filler);
            for (k, v) in &entries {
                model.entry(k.clone()).or_default().merge(v);
            }
            store.merge_many(1, entries, |_| true).unwrap();
            for k in targets.iter().step_by(3) {
                let v = model.remove(k).unwrap();
                assert!(store.remove_if_same(1, k, &v).unwrap());
            }
            let deadline = Instant::now() + CHECKPOINT_EVERY * 3;
            while overlay_len(&store.overlay) > 0 && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            assert_eq!(overlay_len(&store.overlay), 0, "round {round} checkpointed");
            // Twice: once the cache has dropped what it could not hold, and again.
            for pass in 0..2 {
                for k in &targets {
                    assert_eq!(
                        store.get(1, k).unwrap().as_ref(),
                        model.get(k),
                        "round {round}, pass {pass}, {}",
                        String::from_utf8_lossy(k)
                    );
                }
            }
            // Fills past the bound drop rows at random, these among them: some are held.
            assert!(
                targets.iter().any(|k| cached(k)),
                "round {round}: none cached"
            );
        }
    }

    #[test]
    fn the_read_cache_keeps_its_bound() {
        let mut cache = ReadCache::default();
        cache.fill(b"a", Some(b"1"));
        cache.fill(b"a", Some(b"stale"));
        assert_eq!(
            cache.get(b"a"),
            Some(Some(Arc::from(&b"1"[..]))),
            "a fill keeps what is held"
        );
        cache.put(b"a", None);
        assert_eq!(
            cache.get(b"a"),
            Some(None),
            "a change replaces it; absence is kept too"
        );
        let huge = vec![0u8; READ_CACHE_BYTES / 8];
        cache.put(b"a", Some(&huge));
        assert_eq!(
            cache.get(b"a"),
            None,
            "a value too large for it is not kept"
        );
        assert_eq!(cache.bytes, 0);
        for i in 0..10_000u32 {
            let value = vec![7u8; (i % 300) as usize];
            if i % 2 == 0 {
                cache.fill(&i.to_be_bytes(), Some(&value));
            } else {
                cache.put(&(i / 2).to_be_bytes(), Some(&value));
            }
            assert!(cache.bytes <= READ_CACHE_BYTES, "{} bytes", cache.bytes);
        }
        let counted: usize = cache
            .rows
            .iter()
            .map(|(row, value)| cached_bytes(row, value.as_deref()))
            .sum();
        assert_eq!(cache.bytes, counted);
        assert!(cache.rows.len() > 100, "{} rows kept", cache.rows.len());
    }

    #[test]
    fn a_read_of_the_b_tree_fills_the_cache_only_while_it_is_the_newest_value() {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::create(dir.path().join("t.redb")).unwrap();
        let row = b"r".to_vec();
        let keys = |value: &[u8]| {
            let mut rows: [OverlayRows; 4] = Default::default();
            rows[Which::Keys as usize].insert(row.clone(), Some(value.to_vec()));
            for which in [Which::Hints, Which::Paxos, Which::Meta] {
                rows[which as usize].insert(b"-".to_vec(), None);
            }
            rows
        };
        commit_rows(&db, &keys(b"old")).unwrap();
        let overlay = Overlay::new(&db).unwrap();
        let cached = || overlay.cache().get(&row);
        // A reader has read "old"; meanwhile a write laid "new" on the overlay (and the
        // cache dropped it): the reader's fill is refused.
        let read_under = overlay.read().committed.clone();
        overlay.write().active[Which::Keys as usize] = keys(b"new")[0].clone();
        overlay.fill(&row, &read_under, Some(b"old"));
        assert_eq!(cached(), None, "the row is on the overlay");
        // The write checkpointed: a new committed layer holds it, the overlay is empty.
        commit_rows(&db, &keys(b"new")).unwrap();
        {
            let mut layers = overlay.write();
            layers.active = Default::default();
            layers.committed = Arc::new(Committed::open(&db).unwrap());
        }
        overlay.fill(&row, &read_under, Some(b"old"));
        assert_eq!(cached(), None, "read from a layer since replaced");
        // A read of the layer in place fills it.
        let current = overlay.read().committed.clone();
        overlay.fill(&row, &current, Some(b"new"));
        assert_eq!(cached(), Some(Some(Arc::from(&b"new"[..]))));
        assert_eq!(
            overlay
                .lookup(Which::Keys, &row, |v| v.map(<[u8]>::to_vec))
                .unwrap(),
            Some(b"new".to_vec())
        );
    }

    /// Readers never see a key go back to an older value while a writer moves it forward
    /// through the overlay, checkpoints (every ~1,000 writes here) and a read cache too
    /// small for the keys (fills from the B-tree racing the writes).
    #[test]
    fn reads_never_go_back_while_writes_checkpoint_and_the_cache_turns_over() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(ApStore::open(&dir.path().join("ap.redb"), 1000).unwrap());
        const KEYS: u64 = 300;
        let done = Arc::new(AtomicBool::new(false));
        let writer = {
            let (store, done) = (store.clone(), done.clone());
            std::thread::spawn(move || {
                let pad = "p".repeat(1_000);
                for t in 1..=6_000u64 {
                    let key = format!("k{}", t % KEYS).into_bytes();
                    store
                        .merge(1, &key, &set(&format!("{t:08}{pad}"), t, A))
                        .unwrap();
                }
                done.store(true, Ordering::Relaxed);
            })
        };
        let readers: Vec<_> = (0..2u64)
            .map(|r| {
                let (store, done) = (store.clone(), done.clone());
                std::thread::spawn(move || {
                    let mut seen = vec![0u64; KEYS as usize];
                    let mut i = r;
                    while !done.load(Ordering::Relaxed) {
                        i = (i * 7 + 13) % KEYS;
                        let key = format!("k{i}").into_bytes();
                        let Some(state) = store.get(1, &key).unwrap() else {
                            continue;
                        };
                        let bytes = state.get(0).expect("a string");
                        let t: u64 = std::str::from_utf8(&bytes[..8]).unwrap().parse().unwrap();
                        assert!(
                            t >= seen[i as usize],
                            "k{i} went from {} to {t}",
                            seen[i as usize]
                        );
                        seen[i as usize] = t;
                    }
                })
            })
            .collect();
        writer.join().unwrap();
        for r in readers {
            r.join().unwrap();
        }
    }

    const CRASH_CHILD_DIR: &str = "CONCORD_AP_CRASH_CHILD_DIR";

    /// The child of [`answered_changes_survive_sigkill_at_any_point`]: from where the
    /// directory's store is, writes keys `c{cycle}-{i}` from four threads (and removes
    /// every fifth one once written), printing each answered change; runs until killed
    /// (at most 20 s).
    #[test]
    fn crash_child() {
        let Ok(dir) = std::env::var(CRASH_CHILD_DIR) else {
            return;
        };
        let cycle: u64 = std::env::var("CRASH_CYCLE").unwrap().parse().unwrap();
        let store = Arc::new(ApStore::open(&Path::new(&dir).join("ap.redb"), 100).expect("open"));
        let started = Instant::now();
        let threads: Vec<_> = (0..4u64)
            .map(|t| {
                let store = store.clone();
                std::thread::spawn(move || {
                    let mut i = t;
                    while started.elapsed() < Duration::from_secs(20) {
                        let k = format!("c{cycle}-{i}");
                        let v = if i % 5 == 0 {
                            // A state this store acted on: removing it draws a new actor.
                            let mut v = RedisValue::new();
                            let actor = NodeId(store.actor());
                            v.incr(1, actor, (cycle, actor), 0).expect("incr");
                            v
                        } else {
                            set(&k, cycle, A)
                        };
                        store.merge(1, k.as_bytes(), &v).expect("merge");
                        println!("SET {k}");
                        if i % 5 == 0 {
                            assert!(store.remove_if_same(1, k.as_bytes(), &v).expect("remove"));
                            println!("DEL {k} {}", store.actor());
                        }
                        i += 4;
                    }
                })
            })
            .collect();
        for t in threads {
            let _ = t.join();
        }
    }

    /// A fsync'd change answered by the store survives a SIGKILL wherever it lands (in
    /// the log only, in the middle of a checkpoint, after it): five kills at different
    /// moments, each followed by a reopen that must hold every change answered before,
    /// and the actor drawn by the last removals answered (never an earlier one).
    #[test]
    fn answered_changes_survive_sigkill_at_any_point() {
        use std::io::{BufRead, BufReader};
        let tmp = tempfile::tempdir().unwrap();
        let mut present = BTreeMap::new();
        let mut actors: Vec<u64> = Vec::new();
        for (cycle, after_lines) in [(1u64, 50usize), (2, 400), (3, 1500), (4, 7), (5, 3000)] {
            let cycle_text = cycle.to_string();
            let mut child = spawn_child(
                "crash_child",
                &[
                    (CRASH_CHILD_DIR, tmp.path().as_os_str()),
                    ("CRASH_CYCLE", cycle_text.as_ref()),
                ],
            );
            let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
            let mut seen = 0;
            for line in lines.by_ref().map_while(Result::ok) {
                // A key the child removes once written (every fifth) may be either
                // until its removal is answered.
                if let Some(k) = line.strip_prefix("SET ") {
                    let removed_next = k
                        .rsplit('-')
                        .next()
                        .is_some_and(|i| i.parse::<u64>().is_ok_and(|i| i % 5 == 0));
                    present.insert(k.to_string(), (!removed_next).then_some(true));
                    seen += 1;
                } else if let Some(rest) = line.strip_prefix("DEL ") {
                    let (k, actor) = rest.split_once(' ').unwrap();
                    present.insert(k.to_string(), Some(false));
                    actors.push(actor.parse().unwrap());
                    seen += 1;
                }
                if seen >= after_lines {
                    break;
                }
            }
            child.kill().unwrap();
            let _ = child.wait();
            assert!(
                seen >= after_lines,
                "cycle {cycle}: the child answered {seen} changes"
            );
            let store = ApStore::open(&tmp.path().join("ap.redb"), 100).unwrap();
            for (k, there) in &present {
                let got = store.get(1, k.as_bytes()).unwrap();
                let value = got.and_then(|s| s.get(0));
                match there {
                    Some(true) => {
                        assert_eq!(
                            value,
                            Some(k.clone().into_bytes()),
                            "cycle {cycle}: {k} lost"
                        )
                    }
                    Some(false) => assert_eq!(value, None, "cycle {cycle}: {k} came back"),
                    None => {}
                }
            }
            // Four writers print in any order, so any of the last four actors answered
            // (or a newer one, of a removal not yet answered) is right.
            let stale = &actors[..actors.len().saturating_sub(4)];
            assert!(
                !stale.contains(&store.actor()) && store.actor() != store.replica_id(),
                "cycle {cycle}: the actor went back to an earlier one"
            );
            // The trees built at open match the rows.
            let rebuilt = build_trees(&store.db).unwrap();
            assert_eq!(store.tree_root(1), Some(rebuilt[1].root()));
        }
    }

    /// A crash while a checkpoint runs leaves two logs with records: the one it was
    /// committing and the one in use since, which may hold newer states of the same rows.
    /// Replay takes the lower epoch's records first, whichever file holds them.
    #[test]
    fn the_two_logs_replay_older_epoch_first() {
        for newer_in_second_file in [true, false] {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("ap.redb");
            let id = ApStore::open(&path, 100).unwrap().replica_id();
            let r = row(0, b"k");
            let [first, second] = log_paths(&path);
            let (older, newer) = if newer_in_second_file {
                (first, second)
            } else {
                (second, first)
            };
            for (file, epoch, value) in [(&older, 40, "old"), (&newer, 41, "new")] {
                let (mut log, _) = ApLog::open(file, id).unwrap();
                log.restart(epoch - 1).unwrap();
                assert_eq!(log.epoch(), epoch);
                let mut c = Changes::default();
                c.put(Which::Keys, &r, &encode(&r, &set(value, epoch, A)));
                log.append(&c, true).unwrap();
            }
            let store = ApStore::open(&path, 100).unwrap();
            assert_eq!(
                store.get(0, b"k").unwrap().and_then(|s| s.get(0)),
                Some(b"new".to_vec()),
                "newer record in the second file: {newer_in_second_file}"
            );
        }
    }

    #[test]
    fn states_merge_durably_and_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ap.redb");
        let first_id;
        {
            let store = ApStore::open(&path, 100).unwrap();
            first_id = store.replica_id();
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
            assert_eq!(refused, Err(ValueError::NotInteger));
        }
        let store = ApStore::open(&path, 100).unwrap();
        assert_eq!(
            store.get(0, b"k").unwrap().unwrap().get(0),
            Some(b"a".to_vec())
        );
        // The store's identity lasts as long as its file; a new file gets another.
        let id = store.replica_id();
        assert_eq!(id, first_id);
        assert_ne!(id, 0);
        let other = ApStore::open(&dir.path().join("other.redb"), 100).unwrap();
        assert_ne!(other.replica_id(), id);
        drop(other);
        assert_eq!(
            store.get(1, b"c").unwrap().unwrap().get(0),
            Some(b"5".to_vec())
        );
        assert_eq!(store.get(1, b"k").unwrap(), None, "buckets are apart");
        let keys = |after: Option<&[u8]>, limit| -> Vec<Vec<u8>> {
            let page = store.scan(0, after, limit).unwrap();
            page.into_iter().map(|(k, _)| k).collect()
        };
        store.merge(0, b"", &set("empty key", 1, A)).unwrap();
        store.merge(0, b"z", &set("z", 1, A)).unwrap();
        let all = keys(None, 10);
        let mut sorted = all.clone();
        sorted.sort();
        assert_eq!(sorted, [b"".to_vec(), b"k".to_vec(), b"z".to_vec()]);
        assert_eq!(keys(None, 1), all[..1], "from the first");
        assert_eq!(keys(Some(&all[0]), 10), all[1..], "after, not from");
        assert_eq!(keys(Some(&all[2]), 10), Vec::<Vec<u8>>::new());
        assert_eq!(
            (store.key_count(0).unwrap(), store.key_count(1).unwrap()),
            (3, 1)
        );
    }

    #[test]
    fn hints_are_kept_per_owner_and_removed_only_if_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        let store = ApStore::open(&dir.path().join("ap.redb"), 3).unwrap();
        store.store_hint(B, 0, b"x", &set("1", 1, A)).unwrap();
        store.store_hint(B, 0, b"y", &set("2", 1, A)).unwrap();
        store
            .store_hint(NodeId(3), 0, b"x", &set("3", 1, A))
            .unwrap();
        assert_eq!(store.hint_owners(), vec![(B, 2), (NodeId(3), 1)]);
        let hints = store.hints(B, 10).unwrap();
        assert_eq!(hints.len(), 2);
        assert_eq!(store.hints(B, 1).unwrap().len(), 1);
        // The hint changes after it was read: it must stay.
        store.store_hint(B, 0, b"x", &set("newer", 2, A)).unwrap();
        assert!(!store.remove_hint(B, 0, b"x", &hints[0].state).unwrap());
        let now = store.hints(B, 10).unwrap();
        assert!(store.remove_hint(B, 0, b"x", &now[0].state).unwrap());
        assert_eq!(store.hints(B, 10).unwrap().len(), 1);
        assert_eq!(store.hint_owners(), vec![(B, 1), (NodeId(3), 1)]);
        // The limit (3 per owner) refuses a new key, never a merge into a held one.
        store.store_hint(B, 0, b"p", &set("p", 1, A)).unwrap();
        store.store_hint(B, 0, b"q", &set("q", 1, A)).unwrap();
        let full = store.store_hint(B, 0, b"r", &set("r", 1, A)).unwrap_err();
        assert!(
            matches!(full, ApStoreError::HintsFull { limit: 3, .. }),
            "{full}"
        );
        store.store_hint(B, 0, b"q", &set("q2", 2, A)).unwrap();
        assert_eq!(store.hint_owners(), vec![(B, 3), (NodeId(3), 1)]);
        drop(store);
        let store = ApStore::open(&dir.path().join("ap.redb"), 3).unwrap();
        assert_eq!(
            store.hint_owners(),
            vec![(B, 3), (NodeId(3), 1)],
            "counted at open"
        );
    }

    #[test]
    fn concurrent_changes_commit_together_and_none_is_lost() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ap.redb");
        {
            let store = Arc::new(ApStore::open(&path, 100).unwrap());
            let threads: Vec<_> = (0..8u64)
                .map(|i| {
                    let store = store.clone();
                    std::thread::spawn(move || {
                        for j in 0..100u64 {
                            let stamp = (i * 1000 + j + 1, A);
                            store
                                .update(0, b"count", move |s| s.incr(1, A, stamp, 0))
                                .unwrap()
                                .unwrap();
                            let key = format!("k{i}-{j}");
                            store.merge(2, key.as_bytes(), &set("v", 1, A)).unwrap();
                        }
                    })
                })
                .collect();
            for t in threads {
                t.join().unwrap();
            }
        }
        let store = ApStore::open(&path, 100).unwrap();
        let count = store.get(0, b"count").unwrap().unwrap();
        assert_eq!(count.get(0), Some(b"800".to_vec()));
        assert_eq!(store.key_count(2).unwrap(), 800);
    }

    #[test]
    fn merkle_trees_follow_every_commit_and_match_a_rebuild() {
        let dir = tempfile::tempdir().unwrap();
        let (p1, p2) = (dir.path().join("one.redb"), dir.path().join("two.redb"));
        let (one, two) = (
            ApStore::open(&p1, 10).unwrap(),
            ApStore::open(&p2, 10).unwrap(),
        );
        assert_eq!(one.tree_root(0), two.tree_root(0), "empty trees agree");
        // The same states reached in different orders, through different operations.
        for i in 0..200u64 {
            let key = format!("key-{i}");
            one.merge(0, key.as_bytes(), &set("old", 1, A)).unwrap();
            one.merge(0, key.as_bytes(), &set("new", 2, B)).unwrap();
        }
        for i in (0..200u64).rev() {
            let key = format!("key-{i}");
            assert!(two
                .merge_if_newer(0, key.as_bytes(), &set("new", 2, B))
                .unwrap());
            let older = two.merge_if_newer(0, key.as_bytes(), &set("old", 1, A));
            assert!(!older.unwrap(), "an older state changes nothing");
        }
        assert_eq!(one.tree_root(0), two.tree_root(0));
        assert_eq!(one.tree_leaves(0), two.tree_leaves(0));
        // One differing key shows in exactly its leaf, and that leaf holds it.
        two.merge(0, b"key-7", &set("newest", 3, A)).unwrap();
        let (l1, l2) = (one.tree_leaves(0).unwrap(), two.tree_leaves(0).unwrap());
        let differing: Vec<usize> = (0..TREE_LEAVES).filter(|i| l1[*i] != l2[*i]).collect();
        assert_eq!(differing.len(), 1);
        let leaf = two.leaf(0, differing[0]).unwrap();
        assert!(leaf
            .iter()
            .any(|(k, s)| k == b"key-7" && s.get(0) == Some(b"newest".to_vec())));
        assert!(leaf.len() < 200, "a leaf is a slice of the bucket");
        let all: usize = (0..TREE_LEAVES)
            .map(|i| two.leaf(0, i).unwrap().len())
            .sum();
        assert_eq!(all, 200, "the leaves partition the bucket");
        assert_ne!(
            two.tree_root(0),
            two.tree_root(1),
            "buckets have their own trees"
        );
        // A rebuild from the file gives the tree kept in memory.
        let (root, leaves) = (two.tree_root(0), two.tree_leaves(0));
        drop(two);
        let two = ApStore::open(&p2, 10).unwrap();
        assert_eq!((two.tree_root(0), two.tree_leaves(0)), (root, leaves));
        // A batch merge writes only what it changes, and the trees follow it.
        let theirs = one.leaf(0, differing[0]).unwrap();
        assert_eq!(
            one.merge_many(0, two.leaf(0, differing[0]).unwrap(), |_| true)
                .unwrap(),
            1
        );
        assert_eq!(
            two.merge_many(0, theirs, |_| true).unwrap(),
            0,
            "nothing newer"
        );
        assert_eq!(one.tree_root(0), two.tree_root(0));
        // Tombstone collection removes a key only while its state is the one expected, and
        // the trees follow (equal to a rebuild, and to a store that never had the key).
        let mut dead = set("gone", 5, A);
        dead.delete((6, A));
        one.merge(0, b"key-3", &dead).unwrap();
        assert!(!one.remove_if_same(0, b"key-3", &set("new", 2, B)).unwrap());
        assert!(
            one.get(0, b"key-3").unwrap().is_some(),
            "changed since: kept"
        );
        assert!(one.remove_if_same(0, b"key-3", &dead).unwrap());
        assert_eq!(one.get(0, b"key-3").unwrap(), None);
        assert!(
            !one.remove_if_same(0, b"key-3", &dead).unwrap(),
            "gone already"
        );
        let (root, leaves) = (one.tree_root(0), one.tree_leaves(0));
        drop(one);
        let one = ApStore::open(&p1, 10).unwrap();
        assert_eq!((one.tree_root(0), one.tree_leaves(0)), (root, leaves));
        assert!(two.remove_if_same(0, b"key-3", &set("new", 2, B)).unwrap());
        assert_eq!(one.tree_root(0), two.tree_root(0));
        // A state refused creation does not come back to a store that lacks the key, but
        // still merges into one that holds it.
        let refuse = |s: &RedisValue| !s.is_tombstone();
        assert_eq!(
            one.merge_many(0, vec![(b"key-3".to_vec(), dead.clone())], refuse)
                .unwrap(),
            0
        );
        assert_eq!(one.get(0, b"key-3").unwrap(), None);
        let (tx, rx) = mpsc::channel();
        one.merge_then(0, b"key-3", dead.clone(), false, move |out| {
            tx.send(out).unwrap()
        });
        assert_eq!(rx.recv().unwrap().unwrap(), RedisValue::new());
        assert_eq!(one.get(0, b"key-3").unwrap(), None);
        assert_eq!(
            one.merge_many(0, vec![(b"key-4".to_vec(), dead.clone())], refuse)
                .unwrap(),
            1
        );
        assert!(one.get(0, b"key-4").unwrap().unwrap().is_tombstone());
    }

    #[test]
    fn the_first_layout_is_moved_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ap.redb");
        {
            let db = Database::create(&path).unwrap();
            let txn = db.begin_write().unwrap();
            {
                let mut t = txn.open_table(KEYS_V1).unwrap();
                for key in [&b"a"[..], b"b"] {
                    let mut r = vec![3u8];
                    r.extend_from_slice(key);
                    t.insert(r.as_slice(), encode(&r, &set("v", 1, A)).as_slice())
                        .unwrap();
                }
            }
            txn.commit().unwrap();
        }
        let store = ApStore::open(&path, 10).unwrap();
        let a = store.get(3, b"a").unwrap().unwrap();
        assert_eq!(a.get(0), Some(b"v".to_vec()));
        assert_eq!(store.key_count(3).unwrap(), 2);
        drop(store);
        let store = ApStore::open(&path, 10).unwrap();
        assert_eq!(store.key_count(3).unwrap(), 2, "moved once");
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

    #[test]
    fn a_replica_answers_reads_with_the_stored_encoding_checked_not_decoded() {
        let dir = tempfile::tempdir().unwrap();
        let store = ApStore::open(&dir.path().join("ap.redb"), 1000).unwrap();
        for (key, (state, _)) in ["s", "m", "x"].into_iter().zip(one_state_per_format()) {
            store.merge(1, key.as_bytes(), &state).unwrap();
            let held = store.get(1, key.as_bytes()).unwrap().unwrap();
            let encoded = store.get_encoded(1, key.as_bytes()).unwrap().unwrap();
            assert_eq!(encoded, state_to_bytes(&held), "{key}");
            assert_eq!(state_from_bytes(&encoded), Ok(held), "{key}");
        }
        assert_eq!(store.get_encoded(1, b"absent").unwrap(), None);
        // A damaged value is an error naming the key, as for a decoding read.
        let r = row(1, b"bad");
        let mut damaged = encode(&r, &set("v", 1, A));
        damaged[1] ^= 0x40;
        store.overlay.write().active[Which::Keys as usize].insert(r, Some(damaged));
        let err = store.get_encoded(1, b"bad").unwrap_err().to_string();
        assert!(err.contains("checksum") && err.contains("bad"), "{err}");
    }

    /// Paging through the overlaid view a page at a time (as `scan` and `hints` do) gives
    /// the whole view, whatever the B-tree, the frozen and the active layers hold, removals
    /// included; and a page copies no more overlay rows with values than it takes. (Each
    /// page once copied every overlay row after its start: a pass over a store with a
    /// full overlay cost the overlay once per page.)
    #[test]
    fn a_page_of_the_overlaid_view_copies_only_its_share_of_the_overlay() {
        use proptest::prelude::*;
        use std::ops::Bound::{Excluded, Unbounded};
        let layer =
            || proptest::collection::btree_map(0u8..24, proptest::option::of(any::<u8>()), 0..16);
        let rows = |m: &BTreeMap<u8, Option<u8>>| -> OverlayRows {
            m.iter()
                .map(|(k, v)| (vec![*k], v.map(|v| vec![v])))
                .collect()
        };
        let dir = tempfile::tempdir().unwrap();
        let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig::with_cases(200));
        let case = AtomicU64::new(0);
        let layers = (layer(), layer(), layer(), 1usize..6);
        runner
            .run(&layers, |(base, frozen, active, page)| {
                let n = case.fetch_add(1, Ordering::Relaxed);
                let db = Database::create(dir.path().join(format!("{n}.redb"))).unwrap();
                let txn = db.begin_write().unwrap();
                for def in LOGGED {
                    txn.open_table(def).unwrap();
                }
                txn.commit().unwrap();
                let mut tables: [OverlayRows; 4] = Default::default();
                tables[Which::Keys as usize] = rows(&base);
                commit_rows(&db, &tables).unwrap();
                let overlay = Overlay::new(&db).unwrap();
                {
                    let mut layers = overlay.write();
                    layers.active[Which::Keys as usize] = rows(&active);
                    let mut older: [OverlayRows; 4] = Default::default();
                    older[Which::Keys as usize] = rows(&frozen);
                    layers.frozen = Arc::new(older);
                }
                let mut expected = BTreeMap::new();
                for layer in [&base, &frozen, &active] {
                    for (k, v) in layer {
                        match v {
                            Some(v) => expected.insert(vec![*k], vec![*v]),
                            None => expected.remove(&vec![*k]),
                        };
                    }
                }
                let mut seen = Vec::new();
                let mut after: Option<Vec<u8>> = None;
                loop {
                    let range = (after.as_deref().map_or(Unbounded, Excluded), Unbounded);
                    let (committed, over) = overlay.range(Which::Keys, range, page);
                    let copied = over.iter().filter(|(_, v)| v.is_some()).count();
                    prop_assert!(copied <= page, "{copied} rows copied for a page of {page}");
                    let got = overlaid(committed.table(Which::Keys), range, over)
                        .unwrap()
                        .take(page)
                        .collect::<Result<Vec<_>, _>>()
                        .unwrap();
                    let done = got.len() < page;
                    after = got.last().map(|(k, _)| k.clone());
                    seen.extend(got);
                    if done {
                        break;
                    }
                }
                prop_assert_eq!(seen, expected.into_iter().collect::<Vec<_>>());
                Ok(())
            })
            .unwrap();
    }

    /// Pages by scan position cover every key of the bucket once, in position order, from
    /// any position on, whatever the page size; a page starting at a key's own position
    /// holds it.
    #[test]
    fn pages_by_scan_position_cover_every_key_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = ApStore::open(&dir.path().join("ap.redb"), 100).unwrap();
        let keys: Vec<Vec<u8>> = (0..120).map(|i| format!("k{i}").into_bytes()).collect();
        for k in &keys {
            store.merge(2, k, &set("v", 1, A)).unwrap();
        }
        store.merge(3, b"elsewhere", &set("v", 1, A)).unwrap();
        let mut expected: Vec<(u64, Vec<u8>)> =
            keys.iter().map(|k| (scan_position(k), k.clone())).collect();
        expected.sort();
        for limit in [1, 7, 120, 1000] {
            let (mut seen, mut from) = (Vec::new(), 0);
            loop {
                let (page, done) = store.scan_positions(2, from, limit).unwrap();
                assert!(page.len() >= limit || done, "a short page ends the scan");
                assert!(page.iter().all(|(k, _)| scan_position(k) >= from));
                seen.extend(page.iter().map(|(k, _)| (scan_position(k), k.clone())));
                match page.last() {
                    Some((last, _)) if !done => from = scan_position(last) + 1,
                    _ => break,
                }
            }
            assert_eq!(seen, expected, "pages of {limit}");
        }
        let (at, key) = &expected[60];
        let (page, done) = store.scan_positions(2, *at, 1).unwrap();
        assert_eq!((&page[0].0, done), (key, false));
        let (page, done) = store.scan_positions(2, u64::MAX, 5).unwrap();
        assert!(page.is_empty() && done);
    }

    /// A string, a set and a key with siblings, each with the format it is stored in.
    fn one_state_per_format() -> [(RedisValue, u8); 3] {
        let mut members = set("v", 1, A);
        members.delete((2, A));
        members.sadd(&[b"m".to_vec()], A, (3, A), 0).unwrap();
        let mut siblings = RedisValue::new();
        siblings.sibling_put(&Default::default(), Some(b"x".to_vec()), A);
        siblings.sibling_put(&Default::default(), Some(b"y".to_vec()), B);
        [
            (set("v", 1, A), FORMAT),
            (members, FORMAT_SETS),
            (siblings, FORMAT_SIBLINGS),
        ]
    }

    #[test]
    fn each_state_takes_the_oldest_format_that_holds_it() {
        for (state, format) in one_state_per_format() {
            let bytes = state_to_bytes(&state);
            assert_eq!(bytes[0], format);
            assert_eq!(state_from_bytes(&bytes), Ok(state));
        }
    }
}
