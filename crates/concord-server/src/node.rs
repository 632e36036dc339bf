//! The Raft node runtime: one tokio task owns a [`RawNode`] over the WAL and the MVCC
//! store and drives it; clients talk to it through a cheap, cloneable [`NodeHandle`].
//!
//! ```text
//!  NodeHandle ──requests──►┐
//!  peers ──Inbox─────────► │ driver task: tick / step / propose_batch / read_index
//!  timer ────────────────► │   └─ while has_ready: on_ready (persistence order below)
//!                          └──► Transport::send (to peers)
//! ```
//!
//! Each loop iteration drains every pending request: all proposals go into one
//! `propose_batch` and all linearizable reads share one `read_index` context, which is
//! where throughput comes from.
//!
//! # Guarantees
//!
//! 1. **Persistence order** (concord-raft's crate docs, DESIGN.md): a Ready's `messages`
//!    are sent before its WAL append (the leader replicates in parallel with its own
//!    fsync); a received snapshot is installed in the store before the WAL batch that
//!    records it; the WAL batch is fsynced (`Wal::append`) before `persisted_messages`
//!    (votes, acknowledgements) leave; committed entries are applied, in order, only after
//!    that. A client hears success only once its entry is committed (on a quorum's disks)
//!    and applied here.
//! 2. **Every committed index reaches the store** (empty entries and configuration changes
//!    as no-ops), so the store's applied index equals Raft's and replay after a restart is
//!    idempotent (the store skips what it has).
//! 3. **Restart**: Raft starts with `applied` = the WAL's snapshot index (docs/storage.md
//!    § Restart), so configuration changes after it are re-applied to the core.
//! 4. **Compaction**: `Wal::compact` stops at the store's last durable commit (periodic, or a
//!    forced sync once those lag two snapshot counts behind), so the WAL never drops an
//!    entry the store could lose; `snapshot_catch_up_entries` entries are kept behind so a
//!    slightly slow follower needs no snapshot.
//! 5. **Linearizable reads**: a read is served only after a ReadIndex confirmed by a quorum
//!    and once this node applied up to that index.
//! 6. **No request waits forever**: every call is bounded by the request timeout.
//!
//! # Limits (documented, for later)
//!
//! * Disk I/O (WAL fsync, redb commits) runs inline in the driver, which has its own
//!   thread and single-threaded runtime (started by [`start`]): an fsync stalls Raft's
//!   progress for its duration, but never a server worker.
//! * A snapshot travels as one message whose data is the whole store image (the chunks of
//!   `SnapshotStream`, concatenated); chunking it on the wire is the network transport's
//!   job, not done yet.
//! * A member removed from the configuration keeps running until its owner stops it.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

use concord_raft::{
    ConfChange, ConfState, Config, EntryKind, HardState, Message, MessageType, NodeId, RawNode,
    Ready, SnapshotMetadata, SnapshotStatus, StateRole,
};
use concord_storage::disk::RealDisk;
use concord_storage::mvcc::types::{Command, RangeRequest, RangeResponse, Response};
use concord_storage::mvcc::{MvccConfig, MvccStore};
use concord_storage::snapshot::{SnapshotInstaller, SnapshotStream};
use concord_storage::wal::{Batch, SnapshotSource, Wal, WalConfig, WalStorage};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::MissedTickBehavior;

use crate::codec::{self, Envelope, RequestKey};
use crate::error::NodeError;
use crate::transport::{Inbox, Transport};

/// Settings of one node.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// This node's id (non-zero).
    pub id: NodeId,
    /// The voters of a new cluster, used only when the data dir is empty. Empty means the
    /// node joins an existing cluster (etcd's `--initial-cluster-state existing`): it starts
    /// with an empty log and learns everything, membership included, from the leader's
    /// snapshot once a member added it with [`NodeHandle::change_membership`].
    pub initial_voters: Vec<NodeId>,
    /// Where the WAL (`wal/`) and the store (`state.redb`) live.
    pub data_dir: PathBuf,
    /// Length of one Raft tick (etcd's `--heartbeat-interval`, 100 ms).
    pub tick: Duration,
    /// Ticks between heartbeats.
    pub heartbeat_ticks: u32,
    /// Ticks of the election timeout (etcd's `--election-timeout` / `--heartbeat-interval`).
    pub election_ticks: u32,
    /// Applied entries after which a snapshot is taken and the WAL compacted (etcd's
    /// `--snapshot-count`).
    pub snapshot_count: u64,
    /// Entries kept in the log behind a snapshot, for slow followers.
    pub snapshot_catch_up_entries: u64,
    /// How long a client call waits before [`NodeError::Timeout`].
    pub request_timeout: Duration,
    /// Largest encoded request accepted (etcd's `--max-request-bytes`, 1.5 MiB).
    pub max_request_bytes: usize,
    /// Most requests drained into one batch.
    pub max_batch: usize,
    /// WAL settings.
    pub wal: WalConfig,
    /// Store settings.
    pub mvcc: MvccConfig,
}

impl NodeConfig {
    /// etcd's defaults for node `id` of a cluster of `initial_voters`, in `data_dir`.
    pub fn new(id: NodeId, initial_voters: Vec<NodeId>, data_dir: impl Into<PathBuf>) -> Self {
        Self {
            id,
            initial_voters,
            data_dir: data_dir.into(),
            tick: Duration::from_millis(100),
            heartbeat_ticks: 1,
            election_ticks: 10,
            snapshot_count: 10_000,
            snapshot_catch_up_entries: 5_000,
            request_timeout: Duration::from_secs(7),
            max_request_bytes: 1_572_864,
            max_batch: 4096,
            wal: WalConfig::default(),
            mvcc: MvccConfig {
                background_flush: true,
                ..MvccConfig::default()
            },
        }
    }
}

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// The WAL could not be opened or bootstrapped.
    #[error(transparent)]
    Wal(#[from] concord_storage::errors::WalOpenError),
    /// The bootstrap batch could not be written.
    #[error(transparent)]
    WalWrite(#[from] concord_storage::errors::WalWriteError),
    /// The store could not be opened.
    #[error(transparent)]
    Store(#[from] concord_storage::errors::StoreError),
    /// The Raft core refused the configuration or the recovered state.
    #[error(transparent)]
    Raft(#[from] concord_raft::Error),
    /// The driver's thread could not be started.
    #[error("cannot start the raft thread: {0}")]
    Thread(std::io::Error),
    /// The configuration is unusable.
    #[error("invalid node config: {0}")]
    Config(&'static str),
}

/// A snapshot of the node's state for observers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeStatus {
    /// This node.
    pub id: NodeId,
    /// The known leader.
    pub leader: Option<NodeId>,
    /// This node's role.
    pub role: StateRole,
    /// Current term.
    pub term: u64,
    /// Commit index.
    pub commit: u64,
    /// Applied index.
    pub applied: u64,
    /// Index of the WAL's latest snapshot (local compaction or installed).
    pub snapshot_index: u64,
    /// Snapshots received from a leader and installed since start.
    pub snapshots_installed: u64,
    /// The store's revision after the last apply.
    pub revision: i64,
    /// The membership as of the last applied configuration change.
    pub conf_state: ConfState,
    /// Whether the driver task has stopped.
    pub stopped: bool,
    /// Why the node stopped by itself (a storage failure), if it did.
    pub fatal: Option<String>,
}

type Store = MvccStore<RealDisk>;
type SharedStore = Arc<RwLock<Option<Store>>>;
type Reply<T> = oneshot::Sender<Result<T, NodeError>>;

enum Request {
    Propose {
        key: RequestKey,
        data: Vec<u8>,
        tx: Reply<Response>,
    },
    Read {
        tx: Reply<()>,
    },
    Campaign {
        tx: Reply<()>,
    },
    Transfer {
        to: NodeId,
        tx: Reply<()>,
    },
    Progress {
        tx: Reply<BTreeMap<NodeId, u64>>,
    },
    ConfChange {
        key: RequestKey,
        cc: ConfChange,
        tx: Reply<ConfState>,
    },
    Shutdown {
        tx: Reply<()>,
    },
    PeerDown {
        id: NodeId,
    },
}

fn encode_key(k: &RequestKey) -> Vec<u8> {
    let mut v = Vec::with_capacity(24);
    v.extend_from_slice(&k.incarnation.to_le_bytes());
    v.extend_from_slice(&k.seq.to_le_bytes());
    v.extend_from_slice(&k.origin.to_le_bytes());
    v
}

fn decode_key(b: &[u8]) -> Option<RequestKey> {
    if b.len() != 24 {
        return None;
    }
    let word = |i: usize| {
        let mut a = [0u8; 8];
        a.copy_from_slice(&b[i * 8..i * 8 + 8]);
        u64::from_le_bytes(a)
    };
    Some(RequestKey {
        incarnation: word(0),
        seq: word(1),
        origin: word(2),
    })
}

fn read_store(s: &SharedStore) -> RwLockReadGuard<'_, Option<Store>> {
    // The store's own state is consistent at any panic point (redb transactions).
    s.read().unwrap_or_else(|e| e.into_inner())
}

fn write_store(s: &SharedStore) -> RwLockWriteGuard<'_, Option<Store>> {
    s.write().unwrap_or_else(|e| e.into_inner())
}

// Builds snapshot data for the leader: the current store image (its applied index is at
// or past the WAL snapshot's index, which is fine: the follower's store skips the
// entries it already has when they are replayed).
struct StoreSource {
    store: SharedStore,
}

impl SnapshotSource for StoreSource {
    fn snapshot_data(&self, _meta: &SnapshotMetadata) -> Option<Result<Vec<u8>, String>> {
        let stream = {
            let guard = read_store(&self.store);
            let store = guard.as_ref()?;
            match SnapshotStream::new(store, 1 << 20) {
                Ok(s) => s,
                Err(e) => return Some(Err(e.to_string())),
            }
        };
        let mut data = Vec::new();
        for chunk in stream {
            match chunk {
                Ok(c) => data.extend_from_slice(&c),
                Err(e) => return Some(Err(e.to_string())),
            }
        }
        Some(Ok(data))
    }
}

/// A cheap, cloneable handle on a running node.
#[derive(Clone)]
pub struct NodeHandle {
    id: NodeId,
    requests: mpsc::Sender<Request>,
    store: SharedStore,
    status: watch::Receiver<NodeStatus>,
    /// Set once, when the driver stops: why (see [`NodeHandle::stopped`]).
    stop_reason: watch::Receiver<Option<String>>,
    incarnation: u64,
    seq: Arc<AtomicU64>,
    /// Set by the driver after each apply when the store refuses writes (NOSPACE alarm or
    /// over quota), so proposals check the store only then.
    writes_blocked: Arc<std::sync::atomic::AtomicBool>,
    request_timeout: Duration,
    max_request_bytes: usize,
    task: Arc<tokio::sync::Mutex<Option<oneshot::Receiver<()>>>>,
}

impl std::fmt::Debug for NodeHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeHandle")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// Starts node `config.id`: opens (or bootstraps) its data dir, then spawns the driver
/// task on the current tokio runtime.
pub fn start(
    config: NodeConfig,
    transport: Arc<dyn Transport>,
    inbox: Inbox,
) -> Result<NodeHandle, StartError> {
    if config.id == 0 {
        return Err(StartError::Config("node id must not be 0"));
    }
    if config.tick.is_zero() {
        return Err(StartError::Config("tick must be positive"));
    }
    let wal = Wal::open(RealDisk, config.data_dir.join("wal"), config.wal.clone())?;
    let wal = WalStorage::new(wal);
    let mut store = MvccStore::open(
        RealDisk,
        config.data_dir.join("state.redb"),
        config.mvcc.clone(),
    )?;
    let fresh = {
        let w = wal.read();
        w.snapshot_metadata().index == 0 && w.last_index() == 0
    };
    if fresh && !config.initial_voters.is_empty() {
        if !config.initial_voters.contains(&config.id) {
            return Err(StartError::Config("initial voters must include the node"));
        }
        // The same bootstrap on every member: a snapshot at index 1 holding the initial
        // membership, and index 1 applied to the store as a no-op, so both agree from the
        // first entry on.
        let mut voters = config.initial_voters.clone();
        voters.sort_unstable();
        voters.dedup();
        let meta = SnapshotMetadata {
            index: 1,
            term: 1,
            conf_state: ConfState {
                voters,
                ..ConfState::default()
            },
        };
        store.apply(1, &Command::Noop)?;
        store.sync()?;
        wal.append(Batch {
            snapshot: Some(&meta),
            entries: &[],
            hard_state: Some(HardState {
                term: 1,
                vote: 0,
                commit: 1,
            }),
            lazy: false,
        })?;
    }
    let (snap_meta, _) = {
        let w = wal.read();
        (w.snapshot_metadata().clone(), w.hard_state())
    };
    let mut rc = Config::new(config.id);
    rc.election_tick = config.election_ticks;
    rc.heartbeat_tick = config.heartbeat_ticks;
    rc.applied = snap_meta.index;
    // Each process gets its own election timer sequence.
    let incarnation = incarnation_seed() ^ config.id.rotate_left(32);
    rc.seed = incarnation;
    let writes_blocked = Arc::new(std::sync::atomic::AtomicBool::new(!store.admits_writes()?));
    let shared: SharedStore = Arc::new(RwLock::new(Some(store)));
    wal.set_snapshot_source(Arc::new(StoreSource {
        store: shared.clone(),
    }));
    let raw = RawNode::new(&rc, wal.clone())?;
    let mut conf_history = BTreeMap::new();
    conf_history.insert(snap_meta.index, snap_meta.conf_state.clone());
    let status = NodeStatus {
        id: config.id,
        applied: snap_meta.index,
        snapshot_index: snap_meta.index,
        ..NodeStatus::default()
    };
    let (status_tx, status_rx) = watch::channel(status);
    let (stop_tx, stop_rx) = watch::channel(None);
    let (req_tx, req_rx) = mpsc::channel(65_536);
    let driver = Driver {
        id: config.id,
        raw,
        wal,
        store: shared.clone(),
        transport,
        status: status_tx,
        stop_reason: stop_tx,
        waiters: HashMap::new(),
        conf_waiters: HashMap::new(),
        next_read_ctx: 0,
        pending_reads: Vec::new(),
        confirmed_reads: Vec::new(),
        conf_history,
        applied: snap_meta.index,
        snapshot_index: snap_meta.index,
        snapshots_installed: 0,
        leader: None,
        config: config.clone(),
        fatal: None,
        failover: None,
        writes_blocked: writes_blocked.clone(),
    };
    // The driver gets its own thread and single-threaded runtime: its fsyncs and store
    // commits block only that thread (no `block_in_place` hand-offs of the server's
    // workers), and the request path never waits behind it for a worker.
    let (done_tx, task) = oneshot::channel();
    let id = config.id;
    std::thread::Builder::new()
        .name(format!("concord-raft-{id:x}"))
        .spawn(move || {
            match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt.block_on(driver.run(req_rx, inbox)),
                Err(e) => tracing::error!(node = id, error = %e, "cannot start the raft runtime"),
            }
            let _ = done_tx.send(());
        })
        .map_err(StartError::Thread)?;
    Ok(NodeHandle {
        id: config.id,
        requests: req_tx,
        store: shared,
        status: status_rx,
        stop_reason: stop_rx,
        incarnation,
        seq: Arc::new(AtomicU64::new(0)),
        writes_blocked,
        request_timeout: config.request_timeout,
        max_request_bytes: config.max_request_bytes,
        task: Arc::new(tokio::sync::Mutex::new(Some(task))),
    })
}

fn incarnation_seed() -> u64 {
    // Only needs to differ between runs of a node (request keys of a previous run must
    // not match this run's waiters); the wall clock does that.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let mut x = nanos ^ 0x9e37_79b9_7f4a_7c15;
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x
}

impl NodeHandle {
    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.id
    }

    async fn call<T>(&self, make: impl FnOnce(Reply<T>) -> Request) -> Result<T, NodeError> {
        let (tx, rx) = oneshot::channel();
        let fut = async {
            self.requests
                .send(make(tx))
                .await
                .map_err(|_| NodeError::Stopped)?;
            rx.await.map_err(|_| NodeError::Stopped)?
        };
        tokio::time::timeout(self.request_timeout, fut)
            .await
            .map_err(|_| NodeError::Timeout)?
    }

    /// Replicates `cmd` through Raft and returns its result once committed and applied
    /// on this node. A follower forwards the proposal to the leader (Raft's own
    /// forwarding). On [`NodeError::Timeout`] the command may still be applied later.
    ///
    /// Writes are first checked against the store's quota, as etcd does: over
    /// `MvccConfig::quota_bytes` (or with the NOSPACE alarm raised) they fail with
    /// `etcdserver: mvcc: database space exceeded`, and the alarm is raised through Raft
    /// so every member refuses writes until it is disarmed.
    pub async fn propose(&self, cmd: Command) -> Result<Response, NodeError> {
        if !self.writes_blocked.load(Ordering::Relaxed) {
            return self.propose_unchecked(cmd).await;
        }
        let (admitted, raised) = self.with_store(|s| Ok((s.admit(&cmd)?, s.nospace())))?;
        if let Err(e) = admitted {
            if !raised {
                // Raised before the refusal is returned, so a client that sees the error
                // also sees the alarm.
                if let Err(e) = self.propose_unchecked(Command::AlarmNoSpace).await {
                    tracing::warn!(error = %e, "raising the NOSPACE alarm failed");
                }
            }
            return Err(e.into());
        }
        self.propose_unchecked(cmd).await
    }

    async fn propose_unchecked(&self, cmd: Command) -> Result<Response, NodeError> {
        let key = self.next_key();
        let data = Envelope { key, command: cmd }.encode();
        if data.len() > self.max_request_bytes {
            return Err(NodeError::RequestTooLarge);
        }
        self.call(|tx| Request::Propose { key, data, tx }).await
    }

    fn next_key(&self) -> RequestKey {
        RequestKey {
            incarnation: self.incarnation,
            seq: self.seq.fetch_add(1, Ordering::Relaxed),
            origin: self.id,
        }
    }

    /// Proposes a membership change (add or promote a voter, add a learner, remove a
    /// member) and returns the membership once the change is applied on this node. The
    /// change's `context` is replaced by the runtime (it carries the request key). Raft
    /// allows one pending change at a time; a second one is dropped
    /// ([`NodeError::ProposalDropped`] or a timeout).
    pub async fn change_membership(&self, mut cc: ConfChange) -> Result<ConfState, NodeError> {
        let key = self.next_key();
        cc.context = encode_key(&key);
        self.call(|tx| Request::ConfChange { key, cc, tx }).await
    }

    /// Waits until this node has applied everything committed before the call (ReadIndex,
    /// batched with the other reads of the same moment).
    pub async fn read_barrier(&self) -> Result<(), NodeError> {
        self.call(|tx| Request::Read { tx }).await
    }

    /// A linearizable range: a read barrier, then a local read.
    pub async fn linearizable_range(&self, r: &RangeRequest) -> Result<RangeResponse, NodeError> {
        self.read_barrier().await?;
        self.serializable_range(r)
    }

    /// A serializable range: the local store as applied so far (may be stale).
    pub fn serializable_range(&self, r: &RangeRequest) -> Result<RangeResponse, NodeError> {
        let guard = read_store(&self.store);
        let store = guard.as_ref().ok_or(NodeError::Stopped)?;
        match store.range(r) {
            Ok(res) => Ok(res?),
            Err(e) => Err(NodeError::Storage(e.to_string())),
        }
    }

    /// etcd's `HashKV` of the local store at its current revision: `(hash, revision)`.
    pub fn hash_kv(&self) -> Result<(u32, i64), NodeError> {
        let guard = read_store(&self.store);
        let store = guard.as_ref().ok_or(NodeError::Stopped)?;
        match store.hash_kv(0) {
            Ok(res) => {
                let (h, rev, _) = res?;
                Ok((h, rev))
            }
            Err(e) => Err(NodeError::Storage(e.to_string())),
        }
    }

    /// Runs `f` on the local store (as applied so far), under a read lock: keep it short.
    pub fn with_store<R>(
        &self,
        f: impl FnOnce(&MvccStore<RealDisk>) -> Result<R, concord_storage::errors::StoreError>,
    ) -> Result<R, NodeError> {
        let guard = read_store(&self.store);
        let store = guard.as_ref().ok_or(NodeError::Stopped)?;
        f(store).map_err(|e| NodeError::Storage(e.to_string()))
    }

    /// Runs `f` on the local store under the write lock (applies wait): for background
    /// maintenance such as [`MvccStore::compact_step`] and [`MvccStore::defragment`].
    pub fn with_store_mut<R>(
        &self,
        f: impl FnOnce(&mut MvccStore<RealDisk>) -> Result<R, concord_storage::errors::StoreError>,
    ) -> Result<R, NodeError> {
        let mut guard = write_store(&self.store);
        let store = guard.as_mut().ok_or(NodeError::Stopped)?;
        f(store).map_err(|e| NodeError::Storage(e.to_string()))
    }

    /// The latest status published by the driver.
    pub fn status(&self) -> NodeStatus {
        self.status.borrow().clone()
    }

    /// `(term, revision)` of the latest status, without cloning it (for response headers).
    pub fn term_and_revision(&self) -> (u64, i64) {
        let st = self.status.borrow();
        (st.term, st.revision)
    }

    /// Resolves when the node stops, with the reason (a fatal error, or "stopped"). Unlike
    /// a [`NodeHandle::watch_status`] receiver, which wakes on every commit, it wakes once.
    pub async fn stopped(&self) -> String {
        let mut rx = self.stop_reason.clone();
        loop {
            if let Some(why) = rx.borrow_and_update().clone() {
                return why;
            }
            if rx.changed().await.is_err() {
                return NodeError::Stopped.to_string();
            }
        }
    }

    /// A receiver that sees every status change (for waiting on conditions).
    pub fn watch_status(&self) -> watch::Receiver<NodeStatus> {
        self.status.clone()
    }

    /// Waits until the leader this node knows satisfies `done`: `Ok(true)` once it does,
    /// `Ok(false)` after `timeout`, `Err(Stopped)` if the node stops meanwhile.
    pub async fn wait_for_leader(
        &self,
        timeout: Duration,
        done: impl Fn(Option<NodeId>) -> bool,
    ) -> Result<bool, NodeError> {
        let mut status = self.status.clone();
        let wait = async {
            loop {
                if done(status.borrow_and_update().leader) {
                    return Ok(());
                }
                if status.changed().await.is_err() {
                    return Err(NodeError::Stopped);
                }
            }
        };
        match tokio::time::timeout(timeout, wait).await {
            Ok(r) => r.map(|()| true),
            Err(_) => Ok(false),
        }
    }

    /// Starts an election now (fast failover).
    pub async fn campaign(&self) -> Result<(), NodeError> {
        self.call(|tx| Request::Campaign { tx }).await
    }

    /// Tells the node that the transport saw peer `id`'s connection reset and not come
    /// back (DESIGN.md, *Fast failover*): if `id` is the leader, the node campaigns
    /// without waiting out the election timeout — at once if it ranks first among the
    /// remaining voters, else [`FAILOVER_STAGGER`] per rank later, and only if no new
    /// leader or term has shown up meanwhile, so simultaneous campaigns do not split votes. Pre-vote and check-quorum keep
    /// this harmless when the leader is in fact alive. Never blocks; dropped if the node's
    /// queue is full.
    pub fn report_peer_down(&self, id: NodeId) {
        let _ = self.requests.try_send(Request::PeerDown { id });
    }

    /// Asks this node, if leader, to hand leadership to `to`; returns once the request is
    /// handed to Raft (watch [`NodeHandle::status`] for the outcome).
    pub async fn transfer_leader(&self, to: NodeId) -> Result<(), NodeError> {
        self.call(|tx| Request::Transfer { to, tx }).await
    }

    /// The leader's view of how far each member's log matches its own (leader only).
    pub async fn progress(&self) -> Result<BTreeMap<NodeId, u64>, NodeError> {
        self.call(|tx| Request::Progress { tx }).await
    }

    /// Whether member `id`'s log is within 10% of the leader's commit index (etcd's rule
    /// for promoting a learner). Leader only.
    pub async fn is_caught_up(&self, id: NodeId) -> Result<bool, NodeError> {
        let matched = self.progress().await?.get(&id).copied().unwrap_or(0);
        let commit = self.status().commit;
        Ok(matched * 10 >= commit * 9)
    }

    /// Stops the driver task, makes the store durable and closes it. Idempotent.
    pub async fn shutdown(&self) -> Result<(), NodeError> {
        let (tx, rx) = oneshot::channel();
        let sent = self.requests.send(Request::Shutdown { tx }).await.is_ok();
        let mut result = Ok(());
        if sent {
            result = rx.await.unwrap_or(Ok(()));
        }
        if let Some(task) = self.task.lock().await.take() {
            let _ = task.await;
        }
        result
    }
}

struct Driver {
    id: NodeId,
    raw: RawNode<WalStorage<RealDisk>>,
    wal: WalStorage<RealDisk>,
    store: SharedStore,
    transport: Arc<dyn Transport>,
    status: watch::Sender<NodeStatus>,
    stop_reason: watch::Sender<Option<String>>,
    waiters: HashMap<RequestKey, Reply<Response>>,
    conf_waiters: HashMap<RequestKey, Reply<ConfState>>,
    next_read_ctx: u64,
    // Reads waiting for their ReadState, by context.
    pending_reads: Vec<(u64, Vec<Reply<()>>)>,
    // Reads confirmed at an index, waiting for the apply to reach it.
    confirmed_reads: Vec<(u64, Vec<Reply<()>>)>,
    // Membership as of each index where it changed (for snapshot metadata).
    conf_history: BTreeMap<u64, ConfState>,
    applied: u64,
    snapshot_index: u64,
    snapshots_installed: u64,
    leader: Option<NodeId>,
    config: NodeConfig,
    // Set when storage failed: the node stops.
    fatal: Option<NodeError>,
    // Fast failover: campaign at this moment if the lost leader is still our leader.
    failover: Option<(NodeId, tokio::time::Instant)>,
    writes_blocked: Arc<std::sync::atomic::AtomicBool>,
}

/// Gap between the fast-failover campaigns of successive followers (see
/// [`NodeHandle::report_peer_down`]).
pub const FAILOVER_STAGGER: Duration = Duration::from_millis(30);

impl Driver {
    async fn run(mut self, mut requests: mpsc::Receiver<Request>, mut inbox: Inbox) {
        let mut ticker = tokio::time::interval(self.config.tick);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut ticks: u64 = 0;
        let mut shutdown: Option<Reply<()>> = None;
        let mut inbox_open = true;
        loop {
            let mut reqs = Vec::new();
            let failover_at = self.failover.map(|(_, at)| at);
            tokio::select! {
                _ = tokio::time::sleep_until(failover_at.unwrap_or_else(tokio::time::Instant::now)), if failover_at.is_some() => {
                    if let Some((lost, _)) = self.failover.take() {
                        let ss = self.raw.soft_state();
                        if ss.leader_id == Some(lost) && ss.role != StateRole::Leader {
                            tracing::info!(node = self.id, leader = lost, "leader connection lost; campaigning");
                            if let Err(e) = self.raw.campaign() {
                                tracing::debug!(node = self.id, error = %e, "fast-failover campaign refused");
                            }
                        }
                    }
                }
                _ = ticker.tick() => {
                    self.raw.tick();
                    ticks += 1;
                    if ticks.is_multiple_of(16) {
                        self.sweep_abandoned();
                    }
                }
                m = inbox.recv(), if inbox_open => match m {
                    Some(batch) => self.step_all(batch),
                    None => inbox_open = false,
                },
                r = requests.recv() => match r {
                    Some(r) => reqs.push(r),
                    // Every handle is gone: nobody can ask for anything any more.
                    None => break,
                },
            }
            // Drain whatever else is queued, so one Ready covers it all.
            for _ in 0..self.config.max_batch {
                match inbox.try_recv() {
                    Ok(batch) => self.step_all(batch),
                    Err(_) => break,
                }
            }
            while reqs.len() < self.config.max_batch {
                match requests.try_recv() {
                    Ok(r) => reqs.push(r),
                    Err(_) => break,
                }
            }
            self.handle_requests(reqs, &mut shutdown);
            while self.fatal.is_none() && self.raw.has_ready() {
                self.on_ready();
            }
            self.maybe_snapshot();
            self.publish(false);
            if shutdown.is_some() || self.fatal.is_some() {
                break;
            }
        }
        let err = self.fatal.clone().unwrap_or(NodeError::Stopped);
        self.fail_all(&err);
        let result = {
            let mut guard = write_store(&self.store);
            let r = match guard.as_mut() {
                Some(s) => s
                    .sync()
                    .map(|_| ())
                    .map_err(|e| NodeError::Storage(e.to_string())),
                None => Ok(()),
            };
            // Closing the store here lets the data dir be reopened by a new node.
            *guard = None;
            r
        };
        self.publish(true);
        let _ = self.stop_reason.send(Some(err.to_string()));
        if let Some(tx) = shutdown {
            let _ = tx.send(result);
        }
    }

    fn step_all(&mut self, batch: Vec<Message>) {
        for m in batch {
            if let Err(e) = self.raw.step(m) {
                tracing::debug!(node = self.id, error = %e, "message not stepped");
            }
        }
    }

    fn handle_requests(&mut self, reqs: Vec<Request>, shutdown: &mut Option<Reply<()>>) {
        let mut batch = Vec::new();
        let mut batch_waiters = Vec::new();
        let mut reads = Vec::new();
        for r in reqs {
            match r {
                Request::Propose { key, data, tx } => {
                    batch.push(data);
                    batch_waiters.push((key, tx));
                }
                Request::Read { tx } => reads.push(tx),
                Request::Campaign { tx } => {
                    let r = self
                        .raw
                        .campaign()
                        .map_err(|e| NodeError::Raft(e.to_string()));
                    let _ = tx.send(r);
                }
                Request::Progress { tx } => {
                    let r = match self.raw.status().progress {
                        Some(p) => Ok(p.iter().map(|(id, pr)| (*id, pr.matched)).collect()),
                        None => Err(NodeError::NotLeader {
                            leader: self.raw.soft_state().leader_id,
                        }),
                    };
                    let _ = tx.send(r);
                }
                Request::Transfer { to, tx } => {
                    let r = if self.raw.soft_state().role == StateRole::Leader {
                        self.raw.transfer_leader(to);
                        Ok(())
                    } else {
                        Err(NodeError::NotLeader {
                            leader: self.raw.soft_state().leader_id,
                        })
                    };
                    let _ = tx.send(r);
                }
                Request::ConfChange { key, cc, tx } => match self.raw.propose_conf_change(&cc) {
                    Ok(()) => {
                        self.conf_waiters.insert(key, tx);
                    }
                    Err(e) => {
                        let _ = tx.send(Err(self.drop_error(&e)));
                    }
                },
                Request::Shutdown { tx } => *shutdown = Some(tx),
                Request::PeerDown { id } => {
                    let ss = self.raw.soft_state();
                    if ss.leader_id == Some(id) && ss.role != StateRole::Leader {
                        // Every follower sees the reset at about the same moment; if all
                        // campaigned at once their votes would split until the election
                        // timeout. So they campaign in turn, by rank among the remaining
                        // voters, and a later one stands down once it hears of a new term.
                        let rank = self
                            .raw
                            .conf_state()
                            .voters
                            .iter()
                            .filter(|&&v| v != id)
                            .position(|&v| v == self.id)
                            .unwrap_or(0) as u32;
                        let at = tokio::time::Instant::now() + FAILOVER_STAGGER * rank;
                        self.failover = Some((id, at));
                    }
                }
            }
        }
        if !batch.is_empty() {
            match self.raw.propose_batch(batch) {
                Ok(()) => self.waiters.extend(batch_waiters),
                Err(e) => {
                    let err = self.drop_error(&e);
                    for (_, tx) in batch_waiters {
                        let _ = tx.send(Err(err.clone()));
                    }
                }
            }
        }
        if !reads.is_empty() {
            self.next_read_ctx += 1;
            let ctx = self.next_read_ctx;
            // Unique among every node's reads, since the leader keys pending reads by it.
            let mut bytes = self.id.to_le_bytes().to_vec();
            bytes.extend_from_slice(&ctx.to_le_bytes());
            match self.raw.read_index(bytes) {
                Ok(()) => self.pending_reads.push((ctx, reads)),
                Err(e) => {
                    let err = self.drop_error(&e);
                    for tx in reads {
                        let _ = tx.send(Err(err.clone()));
                    }
                }
            }
        }
    }

    fn drop_error(&self, e: &concord_raft::Error) -> NodeError {
        match e {
            concord_raft::Error::ProposalDropped => {
                if self.raw.soft_state().leader_id.is_none() {
                    NodeError::NoLeader
                } else {
                    NodeError::ProposalDropped
                }
            }
            other => NodeError::Raft(other.to_string()),
        }
    }

    fn send(&mut self, msgs: Vec<Message>) {
        // One batch per peer, in the order Raft produced them.
        let mut per_peer: BTreeMap<NodeId, Vec<Message>> = BTreeMap::new();
        for m in msgs {
            per_peer.entry(m.to).or_default().push(m);
        }
        for (to, msgs) in per_peer {
            let has_snapshot = msgs.iter().any(|m| m.msg_type == MessageType::Snapshot);
            match self.transport.send(to, msgs) {
                Ok(()) => {
                    if has_snapshot {
                        self.raw.report_snapshot(to, SnapshotStatus::Finish);
                    }
                }
                Err(_) => {
                    self.raw.report_unreachable(to);
                    if has_snapshot {
                        self.raw.report_snapshot(to, SnapshotStatus::Failure);
                    }
                }
            }
        }
    }

    fn storage_failure(&mut self, what: &str, e: impl std::fmt::Display) {
        tracing::error!(node = self.id, error = %e, "{what} failed; stopping the node");
        self.fatal = Some(NodeError::Storage(format!("{what}: {e}")));
    }

    fn on_ready(&mut self) {
        let mut rd: Ready = match self.raw.ready() {
            Ok(rd) => rd,
            Err(e) => return self.storage_failure("raft ready", e),
        };
        if let Some(ss) = rd.soft_state {
            if ss.leader_id != self.leader {
                self.leader = ss.leader_id;
                // Reads confirmed by no one yet may never be: let their clients retry.
                for (_, txs) in self.pending_reads.drain(..) {
                    for tx in txs {
                        let _ = tx.send(Err(NodeError::LeaderChanged));
                    }
                }
            }
        }
        // 1. The leader's messages go out while it writes its own copy.
        let msgs = std::mem::take(&mut rd.messages);
        self.send(msgs);
        // 2. A received snapshot: into the store first, then the WAL batch recording it.
        if let Some(snap) = &rd.snapshot {
            if let Err(e) = self.install_snapshot(&snap.data) {
                return self.storage_failure("snapshot install", e);
            }
            self.conf_history.clear();
            self.conf_history
                .insert(snap.metadata.index, snap.metadata.conf_state.clone());
            self.snapshot_index = snap.metadata.index;
            self.applied = self.applied.max(snap.metadata.index);
            self.snapshots_installed += 1;
        }
        let batch = Batch {
            snapshot: rd.snapshot.as_ref().map(|s| &s.metadata),
            entries: &rd.entries,
            hard_state: rd.hard_state,
            lazy: !rd.must_sync,
        };
        if let Err(e) = self.wal.append(batch) {
            return self.storage_failure("wal append", e);
        }
        // 3. Votes and acknowledgements only once durable.
        let msgs = std::mem::take(&mut rd.persisted_messages);
        self.send(msgs);
        // 4. Apply, in order.
        if !rd.committed_entries.is_empty() {
            if let Err(e) = self.apply(&rd) {
                return self.storage_failure("apply", e);
            }
        }
        for rs in std::mem::take(&mut rd.read_states) {
            let Ok(ctx) = <[u8; 16]>::try_from(rs.request_ctx.as_slice()) else {
                continue;
            };
            let mut c = [0u8; 8];
            c.copy_from_slice(&ctx[8..]);
            let ctx = u64::from_le_bytes(c);
            if let Some(pos) = self.pending_reads.iter().position(|(c, _)| *c == ctx) {
                let (_, txs) = self.pending_reads.remove(pos);
                self.confirmed_reads.push((rs.index, txs));
            }
        }
        self.release_reads();
        self.raw.advance(rd);
    }

    fn install_snapshot(&mut self, data: &[u8]) -> Result<(), String> {
        let mut guard = write_store(&self.store);
        let store = guard.as_mut().ok_or("store closed")?;
        let mut installer =
            SnapshotInstaller::new(RealDisk, store.path()).map_err(|e| e.to_string())?;
        for chunk in codec::split_chunks(data).map_err(|e| e.to_string())? {
            installer.push(chunk).map_err(|e| e.to_string())?;
        }
        if installer.applied_index().unwrap_or(0) <= store.applied_index() {
            // Our store already has all of it (it can be ahead of its WAL after a crash).
            return Ok(());
        }
        store.install_snapshot(installer).map_err(|e| e.to_string())
    }

    fn apply(&mut self, rd: &Ready) -> Result<(), String> {
        let mut cmds: Vec<(u64, Command, Option<RequestKey>)> =
            Vec::with_capacity(rd.committed_entries.len());
        for e in &rd.committed_entries {
            match e.kind {
                EntryKind::ConfChange => {
                    match ConfChange::decode(&e.data) {
                        Ok(cc) => {
                            let result = self.raw.apply_conf_change(&cc);
                            if let Ok(cs) = &result {
                                self.conf_history.insert(e.index, cs.clone());
                            }
                            let waiter = decode_key(&cc.context)
                                .filter(|k| k.origin == self.id)
                                .and_then(|k| self.conf_waiters.remove(&k));
                            match (result, waiter) {
                                (Ok(cs), Some(tx)) => {
                                    let _ = tx.send(Ok(cs));
                                }
                                (Err(err), waiter) => {
                                    tracing::warn!(node = self.id, index = e.index, error = %err, "conf change refused");
                                    if let Some(tx) = waiter {
                                        let _ = tx.send(Err(NodeError::Raft(err.to_string())));
                                    }
                                }
                                (Ok(_), None) => {}
                            }
                        }
                        Err(err) => {
                            tracing::warn!(node = self.id, index = e.index, error = %err, "undecodable conf change")
                        }
                    }
                    cmds.push((e.index, Command::Noop, None));
                }
                EntryKind::Normal if e.data.is_empty() => {
                    cmds.push((e.index, Command::Noop, None));
                }
                EntryKind::Normal => match Envelope::decode(&e.data) {
                    Ok(env) => cmds.push((e.index, env.command, Some(env.key))),
                    Err(err) => {
                        // Every replica sees the same bytes and decides alike.
                        tracing::warn!(node = self.id, index = e.index, error = %err, "undecodable entry applied as no-op");
                        cmds.push((e.index, Command::Noop, None));
                    }
                },
            }
        }
        let results = {
            let mut guard = write_store(&self.store);
            let store = guard.as_mut().ok_or("store closed")?;
            let refs: Vec<(u64, &Command)> = cmds.iter().map(|(i, c, _)| (*i, c)).collect();
            let results = store.apply_batch(&refs).map_err(|e| e.to_string())?;
            let admits = store.admits_writes().map_err(|e| e.to_string())?;
            self.writes_blocked.store(!admits, Ordering::Relaxed);
            results
        };
        for ((_, _, key), result) in cmds.iter().zip(results) {
            let Some(key) = key else { continue };
            if key.origin != self.id {
                continue;
            }
            if let Some(tx) = self.waiters.remove(key) {
                let r = match result {
                    Some(Ok(resp)) => Ok(resp),
                    Some(Err(e)) => Err(NodeError::from(e)),
                    // Applied before this process started: cannot be ours.
                    None => Err(NodeError::Raft("entry was applied before".into())),
                };
                let _ = tx.send(r);
            }
        }
        if let Some((last, _, _)) = cmds.last() {
            self.applied = self.applied.max(*last);
        }
        Ok(())
    }

    fn release_reads(&mut self) {
        let applied = self.applied;
        let mut i = 0;
        while i < self.confirmed_reads.len() {
            if self.confirmed_reads[i].0 <= applied {
                let (_, txs) = self.confirmed_reads.swap_remove(i);
                for tx in txs {
                    let _ = tx.send(Ok(()));
                }
            } else {
                i += 1;
            }
        }
    }

    fn maybe_snapshot(&mut self) {
        if self.fatal.is_some()
            || self.applied < self.snapshot_index + self.config.snapshot_count
            || self.config.snapshot_count == 0
        {
            return;
        }
        let catch_up = self.config.snapshot_catch_up_entries;
        let target_at = |durable: u64| durable.min(self.applied).saturating_sub(catch_up);
        // The store's periodic durable commits usually cover enough: forcing one here
        // would stall this thread while everything applied since the last one is flushed
        // (the largest latency spikes under load). Only when they lag far behind (an idle
        // or slowly committing node) is a sync forced, which bounds the WAL.
        let mut target = {
            let guard = read_store(&self.store);
            let Some(store) = guard.as_ref() else { return };
            target_at(store.durable_applied_index())
        };
        if target <= self.snapshot_index {
            if self.applied < self.snapshot_index + 2 * self.config.snapshot_count {
                return;
            }
            let synced = {
                let mut guard = write_store(&self.store);
                let Some(store) = guard.as_mut() else { return };
                store.sync()
            };
            target = match synced {
                Ok(i) => target_at(i),
                Err(e) => return self.storage_failure("store sync", e),
            };
            if target <= self.snapshot_index {
                return;
            }
        }
        let Some(term) = self.raw.term_at(target) else {
            return;
        };
        let conf_state = self
            .conf_history
            .range(..=target)
            .next_back()
            .map(|(_, cs)| cs.clone())
            .unwrap_or_else(|| self.raw.conf_state());
        let meta = SnapshotMetadata {
            index: target,
            term,
            conf_state: conf_state.clone(),
        };
        if let Err(e) = self.wal.compact(meta) {
            return self.storage_failure("wal compact", e);
        }
        // Only the latest membership at or before the snapshot is still needed.
        self.conf_history = self.conf_history.split_off(&target);
        self.conf_history.insert(target, conf_state);
        self.snapshot_index = target;
        tracing::debug!(
            node = self.id,
            index = target,
            "snapshot taken, wal compacted"
        );
    }

    fn sweep_abandoned(&mut self) {
        self.waiters.retain(|_, tx| !tx.is_closed());
        self.conf_waiters.retain(|_, tx| !tx.is_closed());
        for list in [&mut self.pending_reads, &mut self.confirmed_reads] {
            for (_, txs) in list.iter_mut() {
                txs.retain(|tx| !tx.is_closed());
            }
            list.retain(|(_, txs)| !txs.is_empty());
        }
    }

    fn fail_all(&mut self, err: &NodeError) {
        for (_, tx) in self.waiters.drain() {
            let _ = tx.send(Err(err.clone()));
        }
        for (_, tx) in self.conf_waiters.drain() {
            let _ = tx.send(Err(err.clone()));
        }
        for (_, txs) in self
            .pending_reads
            .drain(..)
            .chain(self.confirmed_reads.drain(..))
        {
            for tx in txs {
                let _ = tx.send(Err(err.clone()));
            }
        }
    }

    fn publish(&self, stopped: bool) {
        let st = self.raw.status();
        let new = NodeStatus {
            id: self.id,
            leader: st.soft_state.leader_id,
            role: st.soft_state.role,
            term: st.hard_state.term,
            commit: st.hard_state.commit,
            applied: self.applied,
            snapshot_index: self.snapshot_index,
            snapshots_installed: self.snapshots_installed,
            revision: read_store(&self.store)
                .as_ref()
                .map_or(0, |store| store.revision()),
            conf_state: self
                .conf_history
                .last_key_value()
                .map(|(_, cs)| cs.clone())
                .unwrap_or_default(),
            stopped,
            fatal: self.fatal.as_ref().map(|e| e.to_string()),
        };
        self.status.send_if_modified(|cur| {
            if *cur != new {
                *cur = new;
                true
            } else {
                false
            }
        });
    }
}

#[cfg(test)]
mod tests;
