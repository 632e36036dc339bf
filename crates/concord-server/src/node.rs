//! The etcd keyspace as a Raft group: [`KvState`], the MVCC store as a
//! [`concord_runtime::StateMachine`], and [`NodeHandle`], the keyspace's calls on top of
//! the runtime's generic [`RaftHandle`].
//!
//! The driver (persistence order, batching, ReadIndex, snapshots, fast failover) is
//! concord-runtime's `raft_node`; this module only says what a command is and how the
//! store answers it.
//!
//! # Guarantees
//!
//! 1. Every committed index reaches the store: a payload-less entry or a command that does
//!    not decode is applied as a no-op, alike on every replica (the proposer of an
//!    undecodable command gets [`RequestError::UndecodableCommand`]).
//! 2. Writes over the quota are refused before they are proposed, and the NOSPACE alarm is
//!    raised through Raft first (see [`NodeHandle::propose`]).
//! 3. An [`Command::Authorized`] write is applied only if the auth state as of the entry
//!    before it admits it ([`AuthGate`], guarantee 4 of [`crate::auth`]); a refused one is
//!    applied as a no-op and its proposer gets the error. A batch is applied in segments
//!    ending after each change of the auth entry, so the gate is never a batch behind.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use concord_proto::consistency::ReadConsistency;

use concord_raft::{ConfChange, ConfState, NodeId};
use concord_runtime::transport::{Inbox, Transport};
use concord_runtime::{raft_node, NodeError, RaftHandle, StateMachine};
use concord_storage::disk::{Disk, RealDisk};
use concord_storage::errors::{Error as StorageError, RequestError, StoreError};
use concord_storage::mvcc::types::{Command, RangeRequest, RangeResponse, Response};
use concord_storage::mvcc::{MvccConfig, MvccStore};
use concord_storage::snapshot::{split_saved, SnapshotInstaller, SnapshotStream};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::auth::{self, AuthGate};
use crate::error::KvError;

/// How long a proposal that Raft dropped (never appended) is sent again before the
/// client gets the error: a leadership transfer or an election usually ends within it.
const DROPPED_PROPOSAL_RETRY: Duration = Duration::from_secs(2);

pub use concord_runtime::raft_node::{StartError, FAILOVER_STAGGER};

/// Size of the chunks of a store image in snapshot data.
const SNAPSHOT_CHUNK_BYTES: usize = 1 << 20;

/// What the keyspace publishes after each apply.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KvSummary {
    /// The store's revision.
    pub revision: i64,
}

/// The status of a keyspace replica.
pub type NodeStatus = concord_runtime::NodeStatus<KvSummary>;

/// The gate of the auth state as `store` has applied it.
fn auth_gate<D: Disk>(store: &MvccStore<D>) -> Result<AuthGate, StoreError> {
    Ok(AuthGate::of(
        store.cluster_meta_get(auth::META_KEY)?.as_deref(),
    ))
}

/// The MVCC store as the Raft group's state machine.
#[derive(Debug)]
pub struct KvState<D: Disk> {
    store: MvccStore<D>,
    disk: D,
    /// Set after each apply when the store refuses writes (NOSPACE alarm or over quota),
    /// so proposals check the store only then.
    writes_blocked: Arc<AtomicBool>,
    /// The auth state as applied, for the second check of authorized writes.
    auth: AuthGate,
}

impl<D: Disk> KvState<D> {
    /// Opens the store at `path` on `disk`.
    pub fn open(disk: D, path: impl Into<PathBuf>, config: MvccConfig) -> Result<Self, StoreError> {
        let store = MvccStore::open(disk.clone(), path, config)?;
        let writes_blocked = Arc::new(AtomicBool::new(!store.admits_writes()?));
        let auth = auth_gate(&store)?;
        Ok(Self {
            store,
            disk,
            writes_blocked,
            auth,
        })
    }

    /// Applies `cmds` (one segment of a batch, in order) and appends their outputs to
    /// `out`, with `refused` (positions within the segment) answered by their error.
    fn apply_segment(
        &mut self,
        cmds: &mut Vec<(u64, Command)>,
        refused: &mut Vec<(usize, RequestError)>,
        out: &mut Vec<Option<<Self as StateMachine>::Output>>,
    ) -> Result<(), StorageError> {
        if cmds.is_empty() {
            return Ok(());
        }
        let refs: Vec<(u64, &Command)> = cmds.iter().map(|(i, c)| (*i, c)).collect();
        let mut seg = self.store.apply_batch(&refs)?;
        for (i, e) in refused.drain(..) {
            // `None`: applied before this process (a replay); nobody waits for it.
            if let Some(Some(r)) = seg.get_mut(i) {
                *r = Err(e);
            }
        }
        out.append(&mut seg);
        cmds.clear();
        Ok(())
    }

    /// The store.
    pub fn store(&self) -> &MvccStore<D> {
        &self.store
    }

    /// The store, for maintenance (compaction steps, defragment).
    pub fn store_mut(&mut self) -> &mut MvccStore<D> {
        &mut self.store
    }
}

impl<D: Disk> StateMachine for KvState<D> {
    type Output = Result<Response, RequestError>;
    type Summary = KvSummary;
    type Error = StorageError;

    fn apply_batch(
        &mut self,
        entries: &[(u64, Option<&[u8]>)],
    ) -> Result<Vec<Option<Self::Output>>, Self::Error> {
        // The batch is applied in segments that end after each change of the auth entry,
        // so that an authorized write is checked against the auth state as of the entry
        // before it (changes of the auth state are rare: one segment almost always).
        let mut out = Vec::with_capacity(entries.len());
        let mut cmds = Vec::with_capacity(entries.len());
        let mut refused = Vec::new();
        for (index, payload) in entries {
            let cmd = match payload.map(Command::decode) {
                None => Command::Noop,
                Some(Ok(Command::Authorized { auth_revision, cmd })) => {
                    match self.auth.admits(auth_revision) {
                        Ok(()) => *cmd,
                        Err(e) => {
                            refused.push((cmds.len(), e));
                            Command::Noop
                        }
                    }
                }
                Some(Ok(cmd)) => cmd,
                Some(Err(e)) => {
                    // Every replica sees the same bytes and decides alike.
                    tracing::warn!(index, error = %e, "undecodable command applied as no-op");
                    refused.push((cmds.len(), RequestError::UndecodableCommand));
                    Command::Noop
                }
            };
            let changes_auth = AuthGate::changed_by(&cmd);
            cmds.push((*index, cmd));
            if changes_auth {
                self.apply_segment(&mut cmds, &mut refused, &mut out)?;
                self.auth = auth_gate(&self.store)?;
            }
        }
        self.apply_segment(&mut cmds, &mut refused, &mut out)?;
        self.writes_blocked
            .store(!self.store.admits_writes()?, Ordering::Relaxed);
        Ok(out)
    }

    fn applied_index(&self) -> u64 {
        self.store.applied_index()
    }

    fn durable_applied_index(&self) -> u64 {
        self.store.durable_applied_index()
    }

    fn sync(&mut self) -> Result<u64, Self::Error> {
        Ok(self.store.sync()?)
    }

    fn snapshot_data(&self) -> Result<Vec<u8>, Self::Error> {
        let mut data = Vec::new();
        for chunk in SnapshotStream::new(&self.store, SNAPSHOT_CHUNK_BYTES)? {
            data.extend_from_slice(&chunk?);
        }
        Ok(data)
    }

    fn install_snapshot(&mut self, data: &[u8]) -> Result<(), Self::Error> {
        let mut installer = SnapshotInstaller::new(self.disk.clone(), self.store.path())?;
        for chunk in split_saved(data)? {
            installer.push(chunk)?;
        }
        if installer.applied_index().unwrap_or(0) <= self.store.applied_index() {
            // The store already has all of it (it can be ahead of its WAL after a crash).
            return Ok(());
        }
        self.store.install_snapshot(installer)?;
        self.writes_blocked
            .store(!self.store.admits_writes()?, Ordering::Relaxed);
        self.auth = auth_gate(&self.store)?;
        Ok(())
    }

    fn summary(&self) -> KvSummary {
        KvSummary {
            revision: self.store.revision(),
        }
    }
}

/// Settings of one keyspace replica.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// The Raft group's settings (its WAL in `<data dir>/wal`).
    pub raft: raft_node::NodeConfig,
    /// Where the store lives (`<data dir>/state.redb`).
    pub store_path: PathBuf,
    /// Store settings.
    pub mvcc: MvccConfig,
}

impl NodeConfig {
    /// etcd's defaults for node `id` of a cluster of `initial_voters`, in `data_dir`.
    pub fn new(id: NodeId, initial_voters: Vec<NodeId>, data_dir: impl AsRef<Path>) -> Self {
        let data_dir = data_dir.as_ref();
        Self {
            raft: raft_node::NodeConfig::new(id, initial_voters, data_dir.join("wal")),
            store_path: data_dir.join("state.redb"),
            mvcc: MvccConfig {
                background_flush: true,
                ..MvccConfig::default()
            },
        }
    }
}

/// Why a keyspace replica could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NodeStartError {
    /// The store could not be opened.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The Raft group could not start.
    #[error(transparent)]
    Raft(#[from] StartError),
}

/// Starts keyspace replica `config.raft.id` on the real disk: opens the store, then the
/// Raft group around it.
pub fn start(
    config: NodeConfig,
    transport: Arc<dyn Transport>,
    inbox: Inbox,
) -> Result<NodeHandle, NodeStartError> {
    start_on(config, RealDisk, transport, inbox)
}

/// [`start`] on any disk (the simulated one in tests).
pub fn start_on<D: Disk>(
    config: NodeConfig,
    disk: D,
    transport: Arc<dyn Transport>,
    inbox: Inbox,
) -> Result<NodeHandle<D>, NodeStartError> {
    let state = KvState::open(disk.clone(), &config.store_path, config.mvcc.clone())?;
    let writes_blocked = state.writes_blocked.clone();
    let raft = raft_node::start(config.raft, disk, state, transport, inbox)?;
    Ok(NodeHandle {
        raft,
        writes_blocked,
        fresh_since: Arc::default(),
        hub: WatchHub::default(),
        defrag: Arc::default(),
    })
}

/// A cheap, cloneable handle on a running keyspace replica.
#[derive(Debug)]
pub struct NodeHandle<D: Disk = RealDisk> {
    raft: RaftHandle<KvState<D>>,
    writes_blocked: Arc<AtomicBool>,
    /// When the latest completed read barrier started: the store holds every write
    /// acknowledged before that moment (for `bounded` reads).
    fresh_since: Arc<Mutex<Option<Instant>>>,
    /// The watch fan-out over this replica's change log.
    hub: WatchHub,
    /// Figures of this member's defragments.
    defrag: Arc<DefragStats>,
}

impl<D: Disk> Clone for NodeHandle<D> {
    fn clone(&self) -> Self {
        Self {
            raft: self.raft.clone(),
            writes_blocked: self.writes_blocked.clone(),
            fresh_since: self.fresh_since.clone(),
            hub: self.hub.clone(),
            defrag: self.defrag.clone(),
        }
    }
}

impl<D: Disk> NodeHandle<D> {
    /// The Raft group under the keyspace.
    pub fn raft(&self) -> &RaftHandle<KvState<D>> {
        &self.raft
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.raft.id()
    }

    /// Replicates `cmd` through Raft and returns its result once committed and applied
    /// on this node. On a timeout the command may still be applied later.
    ///
    /// Writes are first checked against the store's quota, as etcd does: over
    /// `MvccConfig::quota_bytes` (or with the NOSPACE alarm raised) they fail with
    /// `etcdserver: mvcc: database space exceeded`, and the alarm is raised through Raft
    /// so every member refuses writes until it is disarmed.
    pub async fn propose(&self, cmd: Command) -> Result<Response, KvError> {
        use tracing::Instrument as _;
        self.propose_admitted(cmd)
            .instrument(crate::telemetry::step("raft.propose"))
            .await
    }

    /// [`NodeHandle::propose`] after the NOSPACE check.
    async fn propose_admitted(&self, cmd: Command) -> Result<Response, KvError> {
        if !self.writes_blocked.load(Ordering::Relaxed) {
            return self.propose_unchecked(&cmd).await;
        }
        let (admitted, raised) = self.with_store(|s| Ok((s.admit(&cmd)?, s.nospace())))?;
        if let Err(e) = admitted {
            if !raised {
                // Raised before the refusal is returned, so a client that sees the error
                // also sees the alarm.
                let raise = Command::AlarmActivate {
                    member: self.id().get(),
                };
                if let Err(e) = self.propose_unchecked(&raise).await {
                    tracing::warn!(error = %e, "raising the NOSPACE alarm failed");
                }
            }
            return Err(e.into());
        }
        self.propose_unchecked(&cmd).await
    }

    async fn propose_unchecked(&self, cmd: &Command) -> Result<Response, KvError> {
        fn hint(cmd: &Command) -> usize {
            match cmd {
                Command::Put(p) => p.key.len() + p.value.len() + 32,
                Command::Authorized { cmd, .. } => hint(cmd) + 10,
                _ => 128,
            }
        }
        let hint = hint(cmd);
        // A dropped proposal (no leader known, or the leader handing over leadership) was
        // never appended to the log: a definite failure, so sending it again cannot apply
        // it twice. The client sees the write succeed once a leader takes it (etcd
        // answers "no leader" at once).
        let deadline = Instant::now() + DROPPED_PROPOSAL_RETRY;
        let mut pause = Duration::from_millis(10);
        // Inside a traced request: every member's steps for the entry join its trace.
        let traceparent = crate::telemetry::current_traceparent();
        let traceparent = (!traceparent.is_empty()).then_some(traceparent.as_str());
        loop {
            match self
                .raft
                .propose_traced_with(hint, |buf| cmd.encode_into(buf), traceparent)
                .await
            {
                Err(NodeError::ProposalDropped | NodeError::NoLeader)
                    if Instant::now() + pause < deadline =>
                {
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_millis(200));
                }
                answer => return Ok(answer??),
            }
        }
    }

    /// Proposes a membership change; see [`RaftHandle::change_membership`].
    pub async fn change_membership(&self, cc: ConfChange) -> Result<ConfState, KvError> {
        Ok(self.raft.change_membership(cc).await?)
    }

    /// Waits until this node has applied everything committed before the call.
    pub async fn read_barrier(&self) -> Result<(), KvError> {
        let started = Instant::now();
        self.raft.read_barrier().await?;
        // The store now holds everything committed before `started`, and applied indexes
        // only grow: remember the latest such moment for bounded reads.
        let mut fresh = self.fresh_since.lock().unwrap_or_else(|e| e.into_inner());
        if fresh.is_none_or(|t| t < started) {
            *fresh = Some(started);
        }
        Ok(())
    }

    /// The watch fan-out shared by this replica's watchers ([`WatchFeed`]).
    pub fn watch_hub(&self) -> &WatchHub {
        &self.hub
    }

    /// A range at `consistency` (see [`ReadConsistency`] and docs/consistency.md).
    pub async fn range_at(
        &self,
        consistency: ReadConsistency,
        r: &RangeRequest,
    ) -> Result<RangeResponse, KvError> {
        self.wait_for(consistency).await?;
        self.serializable_range(r)
    }

    /// Returns once this node's applied state may serve a read at `consistency`: what a
    /// read at that level waits for before it reads locally (a permission check waits for
    /// it too, so it sees every auth change the read would).
    pub async fn wait_for(&self, consistency: ReadConsistency) -> Result<(), KvError> {
        match consistency {
            ReadConsistency::Strong => self.read_barrier().await,
            ReadConsistency::Bounded(bound) => self.bounded_barrier(bound).await,
            ReadConsistency::Session(revision) => self.wait_for_revision(revision).await,
            ReadConsistency::Eventual => Ok(()),
        }
    }

    /// Returns once the store holds every write acknowledged more than `bound` ago: at once
    /// when a read barrier that started within `bound` completed here, else after a new
    /// one. The bound is the leader's (a quorum-confirmed ReadIndex) measured on this
    /// node's monotonic clock, never a comparison of two nodes' clocks.
    pub async fn bounded_barrier(&self, bound: Duration) -> Result<(), KvError> {
        let fresh = *self.fresh_since.lock().unwrap_or_else(|e| e.into_inner());
        match fresh {
            Some(t) if t.elapsed() <= bound => Ok(()),
            _ => self.read_barrier().await,
        }
    }

    /// Waits until this node's store reached `revision`, up to the request timeout.
    pub async fn wait_for_revision(&self, revision: i64) -> Result<(), KvError> {
        let timeout = self.raft.request_timeout();
        match self
            .raft
            .wait_for_status(timeout, |s| s.state.revision >= revision)
            .await?
        {
            true => Ok(()),
            false => Err(NodeError::Timeout.into()),
        }
    }

    /// A linearizable range: a read barrier, then a local read.
    pub async fn linearizable_range(&self, r: &RangeRequest) -> Result<RangeResponse, KvError> {
        self.range_at(ReadConsistency::Strong, r).await
    }

    /// A serializable range: the local store as applied so far (may be stale).
    pub fn serializable_range(&self, r: &RangeRequest) -> Result<RangeResponse, KvError> {
        Ok(self.with_store(|s| s.range(r))??)
    }

    /// etcd's `HashKV` of the local store at its current revision: `(hash, revision)`.
    pub fn hash_kv(&self) -> Result<(u32, i64), KvError> {
        let (h, rev, _) = self.with_store(|s| s.hash_kv(0))??;
        Ok((h, rev))
    }

    /// Runs `f` on the local store (as applied so far), under a read lock: keep it short.
    pub fn with_store<R>(
        &self,
        f: impl FnOnce(&MvccStore<D>) -> Result<R, StoreError>,
    ) -> Result<R, KvError> {
        Ok(self.raft.with_state(|s| f(&s.store))??)
    }

    /// Runs `f` on the local store under the write lock (applies wait): for background
    /// maintenance such as [`MvccStore::compact_step`] and [`MvccStore::defragment`].
    pub fn with_store_mut<R>(
        &self,
        f: impl FnOnce(&mut MvccStore<D>) -> Result<R, StoreError>,
    ) -> Result<R, KvError> {
        Ok(self.raft.with_state_mut(|s| f(&mut s.store))??)
    }

    /// The applied index of the latest status (cheap: no clone).
    pub fn applied_index(&self) -> u64 {
        self.raft.with_status(|st| st.applied)
    }

    /// The latest status published by the driver.
    pub fn status(&self) -> NodeStatus {
        self.raft.status()
    }

    /// `(term, revision)` of the latest status, without cloning it (for response headers).
    pub fn term_and_revision(&self) -> (u64, i64) {
        self.raft.with_status(|st| (st.term, st.state.revision))
    }

    /// Resolves when the node stops, with the reason; wakes once.
    pub async fn stopped(&self) -> String {
        self.raft.stopped().await
    }

    /// A receiver that sees every status change (for waiting on conditions).
    pub fn watch_status(&self) -> watch::Receiver<NodeStatus> {
        self.raft.watch_status()
    }

    /// See [`RaftHandle::wait_for_leader`].
    pub async fn wait_for_leader(
        &self,
        timeout: Duration,
        done: impl Fn(Option<NodeId>) -> bool,
    ) -> Result<bool, KvError> {
        Ok(self.raft.wait_for_leader(timeout, done).await?)
    }

    /// Starts an election now.
    pub async fn campaign(&self) -> Result<(), KvError> {
        Ok(self.raft.campaign().await?)
    }

    /// See [`RaftHandle::report_peer_down`] (fast failover).
    pub fn report_peer_down(&self, id: NodeId) {
        self.raft.report_peer_down(id)
    }

    /// Asks this node, if leader, to hand leadership to `to`.
    pub async fn transfer_leader(&self, to: NodeId) -> Result<(), KvError> {
        Ok(self.raft.transfer_leader(to).await?)
    }

    /// The leader's view of how far each member's log matches its own (leader only).
    pub async fn progress(&self) -> Result<std::collections::BTreeMap<NodeId, u64>, KvError> {
        Ok(self.raft.progress().await?)
    }

    /// Whether member `id`'s log is within 10% of the leader's commit index.
    pub async fn is_caught_up(&self, id: NodeId) -> Result<bool, KvError> {
        Ok(self.raft.is_caught_up(id).await?)
    }

    /// Stops the driver, makes the store durable and closes it. Idempotent.
    pub async fn shutdown(&self) -> Result<(), KvError> {
        Ok(self.raft.shutdown().await?)
    }
}

mod defrag;
mod feed;
mod hub;
pub mod leases;
pub use defrag::{DefragReport, DefragStats};
pub use feed::{EventFeed, FeedError};
pub use hub::{HubStats, KeyRange, WatchFeed, WatchHub};
pub use leases::Leases;

#[cfg(test)]
mod tests;

#[cfg(test)]
mod grpc_tests;
