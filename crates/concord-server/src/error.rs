//! [`NodeError`]: what a client call on a node can fail with.
//!
//! # Guarantees
//!
//! 1. Messages are etcd's own strings where etcd has one (`etcdserver: request timed out`,
//!    `etcdserver: no leader`, …), so clients that match on them keep working.
//! 2. Request errors of the state machine ([`RequestError`]) pass through unchanged, with
//!    their etcd strings.

use concord_raft::NodeId;
use concord_storage::errors::RequestError;

/// Why a request to a node failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NodeError {
    /// No answer within the request timeout; the request may still take effect.
    #[error("etcdserver: request timed out")]
    Timeout,
    /// The leader changed while the request waited.
    #[error("etcdserver: leader changed")]
    LeaderChanged,
    /// The node knows no leader, so the request cannot be served now.
    #[error("etcdserver: no leader")]
    NoLeader,
    /// The node is stopped (or stopping).
    #[error("etcdserver: server stopped")]
    Stopped,
    /// The request exceeds the configured maximum size.
    #[error("etcdserver: request is too large")]
    RequestTooLarge,
    /// Raft dropped the proposal (leadership transfer in progress, too many uncommitted
    /// bytes); the client may retry.
    #[error("raft proposal dropped")]
    ProposalDropped,
    /// The request is not possible in the node's current role.
    #[error("etcdserver: not leader (leader is {leader:?})")]
    NotLeader {
        /// The leader, if known.
        leader: Option<NodeId>,
    },
    /// The state machine refused the request (etcd's request errors).
    #[error(transparent)]
    Request(#[from] RequestError),
    /// The node's storage failed; the node stops.
    #[error("storage failure: {0}")]
    Storage(String),
    /// The Raft core refused the operation.
    #[error("raft error: {0}")]
    Raft(String),
}
