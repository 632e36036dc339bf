//! The change feed a watcher reads: every event at or after a start revision, exactly once,
//! in revision order, straight from the store's change log, waking when the applied
//! revision moves. The etcd `Watch` service shapes it into responses; the whole-node
//! simulation checks it directly.

use concord_storage::disk::Disk;
use concord_storage::errors::RequestError;
use concord_storage::mvcc::types::Event;
use tokio::sync::watch;

use super::{NodeHandle, NodeStatus};
use crate::error::KvError;

/// Events read from the store per step.
const EVENTS_PER_STEP: usize = 1000;

/// Why a feed ended.
#[derive(Debug, thiserror::Error)]
pub enum FeedError {
    /// The next revision was compacted away (the store keeps history from `compacted` on).
    #[error("required revision has been compacted (compacted at {compacted})")]
    Compacted {
        /// The store's compaction revision.
        compacted: i64,
    },
    /// The node stopped.
    #[error("the node stopped")]
    Stopped,
    /// The store refused the read.
    #[error(transparent)]
    Request(RequestError),
    /// The node failed.
    #[error(transparent)]
    Node(KvError),
}

/// A watcher's position in one node's change log.
#[derive(Debug)]
pub struct EventFeed<D: Disk> {
    node: NodeHandle<D>,
    status: watch::Receiver<NodeStatus>,
    next: i64,
    prev_kv: bool,
}

impl<D: Disk> EventFeed<D> {
    /// A feed of `node`'s changes from `start_revision` (if positive) or from the revision
    /// after the current one; also returns the current revision. With `prev_kv`, each
    /// event carries the key's previous version.
    pub fn new(node: &NodeHandle<D>, start_revision: i64, prev_kv: bool) -> (Self, i64) {
        let mut status = node.watch_status();
        let current = status.borrow_and_update().state.revision;
        let next = if start_revision > 0 {
            start_revision
        } else {
            current + 1
        };
        let feed = EventFeed {
            node: node.clone(),
            status,
            next,
            prev_kv,
        };
        (feed, current)
    }

    /// The first revision not delivered yet.
    pub fn next_revision(&self) -> i64 {
        self.next
    }

    /// Moves the feed to `next` (a revision a caller has dealt with otherwise).
    pub fn skip_to(&mut self, next: i64) {
        self.next = next;
    }

    /// Whether events carry the key's previous version from now on.
    pub fn set_prev_kv(&mut self, prev_kv: bool) {
        self.prev_kv = prev_kv;
    }

    /// The events of whole revisions from [`Self::next_revision`] up to the applied
    /// revision, waiting until there is at least one; with the applied revision at the time
    /// of the read. Cancel-safe: a call dropped while waiting delivers nothing and loses
    /// nothing.
    pub async fn next_batch(&mut self) -> Result<(Vec<Event>, i64), FeedError> {
        loop {
            if let Some(batch) = self.try_batch()? {
                return Ok(batch);
            }
            if self.status.changed().await.is_err() {
                return Err(FeedError::Stopped);
            }
        }
    }

    /// [`Self::next_batch`] without waiting: `None` when nothing past
    /// [`Self::next_revision`] is applied yet.
    pub fn try_batch(&mut self) -> Result<Option<(Vec<Event>, i64)>, FeedError> {
        let applied = self.status.borrow_and_update().state.revision;
        if self.next > applied {
            return Ok(None);
        }
        let batch = self.read_whole_revisions()?;
        // Nothing stored past `next` yet means the status ran ahead of the store.
        Ok(batch.last().map(|e| e.kv.mod_revision).map(|last| {
            self.next = last + 1;
            (batch, applied.max(last))
        }))
    }

    /// The events of whole revisions from `next` on: a revision is never split across two
    /// reads, so `next = last + 1` never skips half a transaction.
    fn read_whole_revisions(&self) -> Result<Vec<Event>, FeedError> {
        let mut limit = EVENTS_PER_STEP;
        loop {
            let read = self
                .node
                .with_store(|s| s.events(self.next, limit, self.prev_kv))
                .map_err(|e| match e {
                    KvError::Request(r) => FeedError::Request(r),
                    other => FeedError::Node(other),
                })?;
            let mut batch = match read {
                Ok(b) => b,
                Err(RequestError::Compacted) => {
                    let compacted = self
                        .node
                        .with_store(|s| Ok(s.compacted_revision()))
                        .unwrap_or(0);
                    return Err(FeedError::Compacted { compacted });
                }
                Err(e) => return Err(FeedError::Request(e)),
            };
            if batch.len() < limit {
                return Ok(batch);
            }
            let last = batch.last().map_or(0, |e| e.kv.mod_revision);
            let whole = batch
                .iter()
                .take_while(|e| e.kv.mod_revision < last)
                .count();
            if whole > 0 {
                batch.truncate(whole);
                return Ok(batch);
            }
            // One revision holds more than `limit` events: read it whole.
            limit = limit.saturating_mul(2);
        }
    }
}
