//! [`KvError`]: what a call on the keyspace can fail with, and the catalogue of etcd's
//! strings for the runtime's errors.
//!
//! # Guarantees
//!
//! 1. Messages are etcd's own strings where etcd has one (`etcdserver: request timed out`,
//!    `etcdserver: no leader`, …), so clients that match on them keep working; they are
//!    written here once ([`etcd_text`]), not at each call site.
//! 2. Request errors of the state machine ([`RequestError`]) pass through unchanged.

use std::sync::Arc;

use concord_runtime::NodeError;
use concord_storage::errors::{RequestError, StoreError};

/// Why a request to the keyspace failed.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum KvError {
    /// The Raft group could not serve it (timeout, no leader, stopped, ...).
    #[error("{}", etcd_text(.0))]
    Node(NodeError),
    /// The state machine refused the request (etcd's request errors).
    #[error(transparent)]
    Request(#[from] RequestError),
    /// Reading the local store failed.
    #[error("storage failure: {0}")]
    Store(Arc<StoreError>),
}

impl From<NodeError> for KvError {
    fn from(e: NodeError) -> Self {
        KvError::Node(e)
    }
}

impl From<StoreError> for KvError {
    fn from(e: StoreError) -> Self {
        KvError::Store(Arc::new(e))
    }
}

impl PartialEq for KvError {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (KvError::Node(a), KvError::Node(b)) => a == b,
            (KvError::Request(a), KvError::Request(b)) => a == b,
            (KvError::Store(a), KvError::Store(b)) => a.to_string() == b.to_string(),
            _ => false,
        }
    }
}

/// etcd's text for a runtime error (`rpctypes` in etcd's source), or the runtime's own
/// where etcd has none.
pub fn etcd_text(e: &NodeError) -> String {
    match e {
        NodeError::Timeout => "etcdserver: request timed out".into(),
        NodeError::LeaderChanged => "etcdserver: leader changed".into(),
        NodeError::NoLeader => "etcdserver: no leader".into(),
        NodeError::Stopped => "etcdserver: server stopped".into(),
        NodeError::RequestTooLarge => "etcdserver: request is too large".into(),
        NodeError::NotLeader { leader } => {
            format!("etcdserver: not leader (leader is {leader:?})")
        }
        NodeError::Storage(f) => format!("storage failure: {f}"),
        other => other.to_string(),
    }
}
