//! The Raft group driver: one task owns a [`RawNode`] over a WAL and a [`StateMachine`]
//! and drives it; callers talk to it through a cheap, cloneable [`RaftHandle`]. It knows
//! nothing of what the state machine stores: the etcd keyspace is one implementation,
//! cluster metadata or a range of keys can be others, several groups to a process.
//!
//! ```text
//!  RaftHandle ──requests──►┐
//!  peers ──Inbox─────────► │ driver: tick / step / propose_batch / read_index
//!  timer ────────────────► │   └─ while has_ready: on_ready (persistence order below)
//!                          └──► Transport::send (to peers)
//! ```
//!
//! Each loop iteration drains every pending request: all proposals go into one
//! `propose_batch` and all linearizable reads share one `read_index` context, which is
//! where throughput comes from.
//!
//! # Layout
//!
//! * `handle.rs`: [`RaftHandle`], the callers' side (proposals, reads, membership).
//! * `bootstrap.rs`: [`start`]: opening or bootstrapping the WAL, spawning the driver.
//! * `driver.rs`: the loop and the Ready handling, in the persistence order.
//! * `apply.rs`: committed entries into the state machine, results to their waiters.
//! * `reads.rs`: batched ReadIndex reads.
//! * `snapshot.rs`: snapshots out (for followers), in (from the leader), and the WAL
//!   compaction policy.
//! * `failover.rs`: the early campaign when the leader's connection resets.
//! * `resend.rs`: proposals proven lost with a leader, sent again at once.
//!
//! # Guarantees
//!
//! 1. **Persistence order** (docs/design.md): a Ready's `messages` are sent before its WAL
//!    append (the leader replicates in parallel with its own fsync); a received snapshot
//!    is installed in the state machine before the WAL batch that records it; the WAL
//!    batch is fsynced before `persisted_messages` (votes, acknowledgements) leave;
//!    committed entries are applied, in order, only after that. A client hears success
//!    only once its entry is committed (on a quorum's disks) and applied here.
//! 2. **Every committed index reaches the state machine** (empty entries and
//!    configuration changes as payload-less entries), so its applied index equals Raft's
//!    and replay after a restart is idempotent.
//! 3. **Restart**: Raft starts with `applied` = the WAL's snapshot index, so configuration
//!    changes after it are re-applied to the core.
//! 4. **Compaction**: the WAL is compacted only up to the state machine's durable applied
//!    index (forcing a sync once that lags two snapshot counts behind), so the WAL never
//!    drops an entry the state machine could lose; `snapshot_catch_up_entries` entries
//!    are kept behind so a slightly slow follower needs no snapshot.
//! 5. **Linearizable reads**: a read is served only after a ReadIndex confirmed by a
//!    quorum and once this node applied up to that index.
//! 6. **No request waits forever**: every call is bounded by the request timeout.
//!
//! # Limits
//!
//! * Disk I/O (WAL fsync, state machine commits) runs inline in the driver, which by
//!   default has its own thread and single-threaded runtime: an fsync stalls this group's
//!   progress for its duration, but never a server worker.
//! * A snapshot is built and installed whole in memory (Raft's snapshot message holds the
//!   state image); the gRPC transport chunks it only on the wire.
//! * A member removed from the configuration keeps running until its owner stops it.

mod apply;
mod bootstrap;
mod driver;
mod failover;
mod handle;
mod reads;
mod resend;
mod snapshot;

use std::path::PathBuf;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

use concord_raft::{ConfState, NodeId, StateRole};
use concord_storage::wal::WalConfig;

pub use bootstrap::start;
pub use failover::FAILOVER_STAGGER;
pub use handle::RaftHandle;

/// Settings of one Raft group's replica on this node.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// This node's id (non-zero).
    pub id: NodeId,
    /// The voters of a new group, used only when the WAL is empty. Empty means the node
    /// joins an existing group: it starts with an empty log and learns everything,
    /// membership included, from the leader's snapshot once a member added it with
    /// [`RaftHandle::change_membership`].
    pub initial_voters: Vec<NodeId>,
    /// The group's WAL directory (one per group).
    pub wal_dir: PathBuf,
    /// Length of one Raft tick.
    pub tick: Duration,
    /// Ticks between heartbeats.
    pub heartbeat_ticks: u32,
    /// Ticks of the election timeout.
    pub election_ticks: u32,
    /// Leader lease reads: the leader answers a linearizable read from its commit index
    /// without a heartbeat round while a quorum acknowledged its heartbeats within the
    /// election timeout less a margin (`concord_raft::ReadOnlyOption::LeaseBased`).
    /// Assumes the members' monotonic clocks run at rates within that margin of each
    /// other; the driver then counts ticks from the monotonic clock, so a paused or
    /// starved driver does not keep a lease longer than real time allows. Off by default
    /// (ReadIndex, which assumes nothing about clocks).
    pub lease_reads: bool,
    /// Applied entries after which a snapshot is taken and the WAL compacted.
    pub snapshot_count: u64,
    /// Entries kept in the log behind a snapshot, for slow followers.
    pub snapshot_catch_up_entries: u64,
    /// How long a call waits before [`crate::NodeError::Timeout`].
    pub request_timeout: Duration,
    /// Largest encoded proposal accepted.
    pub max_request_bytes: usize,
    /// Most requests drained into one batch.
    pub max_batch: usize,
    /// WAL settings.
    pub wal: WalConfig,
    /// Whether the driver gets its own OS thread and single-threaded runtime (the
    /// default), or runs as a task of the caller's runtime (simulation, many small
    /// groups).
    pub own_thread: bool,
    /// The request-key incarnation; `None` draws one from the wall clock. A simulation
    /// passes its own, so that nothing depends on real time.
    pub incarnation: Option<u64>,
    /// Deliberately broken rules, for negative controls of the checkers. Off by default;
    /// never set them in a real deployment.
    pub testing_bugs: TestingBugs,
    /// Where the replica reports what it does and how long it takes (nothing by default).
    pub telemetry: std::sync::Arc<dyn crate::telemetry::Telemetry>,
}

/// Rules the driver can be told to break, so that tests can show their checkers catch
/// the breakage (a negative control). All off by default.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct TestingBugs {
    /// Answer linearizable reads from the local state at once, without ReadIndex: a
    /// partitioned leader or a lagging follower then serves stale data.
    pub read_without_read_index: bool,
    /// Send pending proposals again as soon as the term moves, without waiting for the
    /// proof that they are lost (an applied entry of a later term): one the old leader
    /// did replicate then applies twice.
    pub resend_unproven: bool,
    /// With lease reads, a lease four times too long: a deposed leader keeps serving
    /// reads after another was elected.
    pub overlong_lease: bool,
}

impl TestingBugs {
    /// Every rule kept (the default).
    pub fn none() -> Self {
        Self::default()
    }

    /// Reads skip ReadIndex (see [`TestingBugs::read_without_read_index`]).
    pub fn reads_without_read_index() -> Self {
        Self {
            read_without_read_index: true,
            ..Self::default()
        }
    }

    /// Lease reads with a lease four times too long (see [`TestingBugs::overlong_lease`]).
    pub fn overlong_lease() -> Self {
        Self {
            overlong_lease: true,
            ..Self::default()
        }
    }

    /// Proposals re-sent without proof (see [`TestingBugs::resend_unproven`]).
    pub fn resend_unproven() -> Self {
        Self {
            resend_unproven: true,
            ..Self::default()
        }
    }
}

impl NodeConfig {
    /// etcd's defaults for node `id` of a group of `initial_voters`, its WAL in `wal_dir`.
    pub fn new(id: NodeId, initial_voters: Vec<NodeId>, wal_dir: impl Into<PathBuf>) -> Self {
        Self {
            id,
            initial_voters,
            wal_dir: wal_dir.into(),
            tick: Duration::from_millis(100),
            heartbeat_ticks: 1,
            election_ticks: 10,
            lease_reads: false,
            snapshot_count: 10_000,
            snapshot_catch_up_entries: 5_000,
            request_timeout: Duration::from_secs(7),
            max_request_bytes: 1_572_864,
            max_batch: 4096,
            wal: WalConfig::default(),
            own_thread: true,
            incarnation: None,
            testing_bugs: TestingBugs::default(),
            telemetry: std::sync::Arc::new(crate::telemetry::NoTelemetry),
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
    /// The state machine failed while bootstrapping.
    #[error("state machine: {0}")]
    StateMachine(Box<dyn std::error::Error + Send + Sync>),
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

/// A snapshot of a group replica's state for observers; `M` is the state machine's
/// summary.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeStatus<M> {
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
    /// Proposals of this node waiting to be committed and applied (as of the last
    /// publication of the status).
    pub pending_proposals: usize,
    /// The state machine's summary after the last apply.
    pub state: M,
    /// The membership as of the last applied configuration change.
    pub conf_state: ConfState,
    /// Whether the driver has stopped.
    pub stopped: bool,
    /// Why the node stopped by itself (a storage failure), if it did.
    pub fatal: Option<String>,
}

/// The state machine, shared by the driver (writes) and readers; `None` once closed.
type Shared<S> = Arc<RwLock<Option<S>>>;

fn read_state<S>(s: &Shared<S>) -> RwLockReadGuard<'_, Option<S>> {
    // A state machine's own state is consistent at any panic point (its transactions).
    s.read().unwrap_or_else(|e| e.into_inner())
}

fn write_state<S>(s: &Shared<S>) -> RwLockWriteGuard<'_, Option<S>> {
    s.write().unwrap_or_else(|e| e.into_inner())
}
