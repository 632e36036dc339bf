//! Telemetry hooks: the points of a Raft group replica's life that cost time or change
//! state, reported to whatever the embedding server measures them with (the server's
//! `/metrics` today). Every hook has a no-op default, so an implementation overrides only
//! what it records.
//!
//! # Contract
//!
//! Hooks run on the driver's thread, inside its loop: they must be cheap (an atomic
//! add, a histogram record) and must never block or call back into the node. They observe
//! and never decide: the driver does the same thing whatever a hook does.

use std::fmt::Debug;
use std::time::Duration;

use concord_raft::NodeId;

/// Receives a replica's measurements. See the module's contract.
pub trait Telemetry: Send + Sync + Debug {
    /// The known leader changed to `leader` (`None`: none known) in `term`.
    fn leader_changed(&self, _leader: Option<NodeId>, _term: u64) {}

    /// A WAL batch of `entries` entries was written in `took`; `synced` when it was
    /// made durable (fsync) before returning.
    fn wal_written(&self, _entries: usize, _synced: bool, _took: Duration) {}

    /// `entries` committed entries were applied to the state machine in `took`.
    fn applied(&self, _entries: usize, _took: Duration) {}

    /// A batch of proposals was handed to Raft: `accepted` entered the log, `refused`
    /// were dropped (no leader, a transfer in progress, too large).
    fn proposals(&self, _accepted: usize, _refused: usize) {}

    /// `proposals` proposals that a lost leader never committed were sent again.
    fn proposals_resent(&self, _proposals: usize) {}

    /// A snapshot of `bytes` bytes from the leader was installed in `took`.
    fn snapshot_installed(&self, _bytes: usize, _took: Duration) {}

    /// Messages for `peer` could not be handed to the transport (it is unreachable).
    fn peer_unreachable(&self, _peer: NodeId) {}

    /// A ReadIndex round (one batch of linearizable reads) was confirmed by a quorum
    /// `took` after it started (the wait for the apply to catch up is not included).
    fn read_index(&self, _took: Duration) {}

    /// The peer transport wrote a batch of `bytes` bytes (encoded) to `peer`, with
    /// `queued` batches still waiting for that peer. Called on the transport's tasks, under
    /// the same contract.
    fn peer_sent(&self, _peer: NodeId, _bytes: usize, _queued: usize) {}

    /// The peer transport opened a stream to `peer` (at start and at each reconnect).
    fn peer_connected(&self, _peer: NodeId) {}

    /// The direct link to `peer` came up (`true`) or went down (`false`); called on the
    /// link's task.
    fn peer_direct_link(&self, _peer: NodeId, _up: bool) {}

    /// A snapshot reached `peer` whole and was acknowledged.
    fn snapshot_sent(&self, _peer: NodeId) {}

    /// The peer transport read a batch of `bytes` bytes (encoded) from `peer`.
    fn peer_received(&self, _peer: NodeId, _bytes: usize) {}

    /// A probe of the connection to `peer` came back after `rtt`.
    fn peer_round_trip(&self, _peer: NodeId, _rtt: Duration) {}

    /// A step of a traced proposal begins: `name` (`raft.wal_append`, `raft.replicate`,
    /// `raft.apply`), a child of the span whose W3C context is `traceparent`
    /// ([`crate::traces`]). The step ends when the returned guard is dropped.
    fn trace_step(&self, _name: &'static str, _traceparent: &str) -> Option<TraceStep> {
        None
    }
}

/// A step being traced: ended when dropped (see [`Telemetry::trace_step`]).
pub type TraceStep = Box<dyn std::any::Any + Send>;

/// Records nothing (the default).
#[derive(Debug, Default, Clone, Copy)]
pub struct NoTelemetry;

impl Telemetry for NoTelemetry {}
