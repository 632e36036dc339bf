//! Typed errors of the crate.
//!
//! # Guarantees
//!
//! 1. Operating errors (a dropped proposal, a storage that cannot serve an index, a bad
//!    configuration) are returned as values; only programmer errors panic.
//! 2. Every operation's error converts into the crate-wide [`Error`].

use crate::types::{ConfChangeDecodeError, NodeId};

/// Errors a [`crate::Storage`] returns.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StorageError {
    /// The requested index precedes the first available one (it is in a snapshot).
    #[error("log compacted: requested index is before the first available index")]
    Compacted,
    /// The requested index is past the last available one.
    #[error("log unavailable: requested index is after the last available index")]
    Unavailable,
    /// The snapshot is being generated; the leader retries later.
    #[error("snapshot temporarily unavailable")]
    SnapshotTemporarilyUnavailable,
    /// A snapshot older than the storage's current one was offered.
    #[error("snapshot out of date")]
    SnapshotOutOfDate,
    /// Anything else (I/O, corruption), described by the storage.
    #[error("storage error: {0}")]
    Other(String),
}

/// Why a [`crate::Config`] is invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// Node id 0 is reserved.
    #[error("node id must not be 0")]
    ZeroId,
    /// The heartbeat interval must be at least one tick.
    #[error("heartbeat tick must be greater than 0")]
    ZeroHeartbeatTick,
    /// Elections must take longer than heartbeats.
    #[error("election tick must be greater than heartbeat tick")]
    ElectionTickTooSmall,
    /// The in-flight window must hold at least one message.
    #[error("max inflight messages must be greater than 0")]
    ZeroMaxInflight,
    /// The leader must be able to hold at least one read.
    #[error("max pending reads must be greater than 0")]
    ZeroMaxPendingReads,
    /// Lease reads are only safe when the leader steps down without a quorum.
    #[error("lease-based reads require check quorum")]
    LeaseWithoutCheckQuorum,
}

/// Why a membership change cannot be applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfChangeError {
    /// Entering a joint configuration while already joint.
    #[error("config is already joint")]
    AlreadyJoint,
    /// Leaving a joint configuration that is not joint.
    #[error("config is not joint")]
    NotJoint,
    /// A simple change may alter at most one voter.
    #[error("more than one voter changed without entering joint config")]
    TooManyVoterChanges,
    /// The resulting configuration would have no voter.
    #[error("removed all voters")]
    NoVoters,
    /// Node id 0 is reserved.
    #[error("node id 0 in conf change")]
    ZeroId,
    /// A learner cannot also be a voter.
    #[error("node {0} is both voter and learner")]
    VoterAndLearner(NodeId),
    /// The entry's bytes are not a conf change.
    #[error(transparent)]
    Decode(#[from] ConfChangeDecodeError),
}

/// The crate-wide error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A storage call failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A membership change is invalid.
    #[error(transparent)]
    ConfChange(#[from] ConfChangeError),
    /// The proposal was not appended (no leader, transfer in progress, too many
    /// uncommitted bytes, or this node was removed); the client may retry elsewhere.
    #[error("raft proposal dropped")]
    ProposalDropped,
    /// A message addressed to another node, or from node 0.
    #[error("message not for this node")]
    NotForThisNode,
    /// A local message type was given to `step`.
    #[error("cannot step a local message")]
    LocalMessage,
    /// A step involving an unknown peer.
    #[error("peer {0} not found")]
    PeerNotFound(NodeId),
    /// `campaign` refused because lease reads are on and the leader's lease may hold.
    #[error("leader lease may still be valid")]
    LeaseActive,
}
