//! [`NodeError`]: what a call on a Raft group can fail with. The messages are the
//! runtime's own; an API layer maps each variant to its protocol's codes and strings.

use std::sync::Arc;

use concord_raft::NodeId;

/// Why a request to a Raft group failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NodeError {
    /// No answer within the request timeout; the request may still take effect.
    #[error("request timed out")]
    Timeout,
    /// The leader changed while the request waited; it may be retried.
    #[error("leader changed")]
    LeaderChanged,
    /// No leader is known, so the request cannot be served now.
    #[error("no leader")]
    NoLeader,
    /// The node is stopped (or stopping).
    #[error("node stopped")]
    Stopped,
    /// The request exceeds the configured maximum size.
    #[error("request is too large")]
    RequestTooLarge,
    /// Raft dropped the proposal (leadership transfer in progress, too many uncommitted
    /// bytes); the client may retry.
    #[error("raft proposal dropped")]
    ProposalDropped,
    /// The request is not possible in the node's current role.
    #[error("not leader (leader is {leader:?})")]
    NotLeader {
        /// The leader, if known.
        leader: Option<NodeId>,
    },
    /// The entry was applied before this process started, so its result is unknown here.
    #[error("entry was applied before this process started")]
    AppliedBefore,
    /// The Raft core refused the operation.
    #[error("raft: {0}")]
    Raft(#[from] concord_raft::Error),
    /// The node's storage failed; the node stops.
    #[error(transparent)]
    Storage(#[from] StorageFailure),
}

/// A storage failure that stopped a node: what failed, and the typed error behind it.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{what} failed: {source}")]
pub struct StorageFailure {
    /// The step that failed (`wal append`, `apply`, ...).
    pub what: &'static str,
    /// The error.
    #[source]
    pub source: Arc<dyn std::error::Error + Send + Sync>,
}

impl StorageFailure {
    /// A failure of step `what`.
    pub fn new(what: &'static str, e: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self {
            what,
            source: Arc::new(e),
        }
    }
}

impl PartialEq for StorageFailure {
    fn eq(&self, other: &Self) -> bool {
        self.what == other.what && self.source.to_string() == other.source.to_string()
    }
}

impl Eq for StorageFailure {}
