//! [`RaftHandle`]: the callers' side of a running group replica.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use concord_raft::{ConfChange, ConfState, NodeId};
use tokio::sync::{mpsc, oneshot, watch};

use super::{read_state, write_state, NodeStatus, Shared};
use crate::envelope::{self, RequestKey};
use crate::error::NodeError;
use crate::state_machine::StateMachine;

pub(super) type Reply<T> = oneshot::Sender<Result<T, NodeError>>;

/// What a handle asks of the driver.
pub(super) enum Request<O> {
    Propose {
        key: RequestKey,
        data: Vec<u8>,
        tx: Reply<O>,
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

/// A cheap, cloneable handle on a running group replica.
pub struct RaftHandle<S: StateMachine> {
    pub(super) id: NodeId,
    pub(super) requests: mpsc::Sender<Request<S::Output>>,
    pub(super) state: Shared<S>,
    pub(super) status: watch::Receiver<NodeStatus<S::Summary>>,
    /// Set once, when the driver stops: why (see [`RaftHandle::stopped`]).
    pub(super) stop_reason: watch::Receiver<Option<String>>,
    /// The driver's own runtime, when it has a thread of its own.
    pub(super) runtime: Option<tokio::runtime::Handle>,
    pub(super) incarnation: u64,
    pub(super) seq: Arc<AtomicU64>,
    pub(super) request_timeout: Duration,
    pub(super) max_request_bytes: usize,
    pub(super) task: Arc<tokio::sync::Mutex<Option<oneshot::Receiver<()>>>>,
    /// The driver task, when it runs on the caller's runtime (see [`RaftHandle::kill`]).
    pub(super) abort: Option<tokio::task::AbortHandle>,
}

impl<S: StateMachine> Clone for RaftHandle<S> {
    fn clone(&self) -> Self {
        Self {
            id: self.id,
            requests: self.requests.clone(),
            state: self.state.clone(),
            status: self.status.clone(),
            stop_reason: self.stop_reason.clone(),
            runtime: self.runtime.clone(),
            incarnation: self.incarnation,
            seq: self.seq.clone(),
            request_timeout: self.request_timeout,
            max_request_bytes: self.max_request_bytes,
            task: self.task.clone(),
            abort: self.abort.clone(),
        }
    }
}

impl<S: StateMachine> std::fmt::Debug for RaftHandle<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RaftHandle")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl<S: StateMachine> RaftHandle<S> {
    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// The configured request timeout.
    pub fn request_timeout(&self) -> Duration {
        self.request_timeout
    }

    async fn call<T>(
        &self,
        make: impl FnOnce(Reply<T>) -> Request<S::Output>,
    ) -> Result<T, NodeError> {
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

    /// Replicates `payload` through Raft and returns the state machine's output once the
    /// entry is committed and applied on this node. A follower forwards the proposal to
    /// the leader (Raft's own forwarding). On [`NodeError::Timeout`] the entry may still
    /// be applied later.
    pub async fn propose(&self, payload: &[u8]) -> Result<S::Output, NodeError> {
        self.propose_with(payload.len(), |buf| buf.extend_from_slice(payload))
            .await
    }

    /// [`RaftHandle::propose`] with the payload written by `write` straight into the entry
    /// (after the envelope header): one buffer, no copy. `size_hint` is the payload's
    /// expected size.
    pub async fn propose_with(
        &self,
        size_hint: usize,
        write: impl FnOnce(&mut Vec<u8>),
    ) -> Result<S::Output, NodeError> {
        self.propose_traced_with(size_hint, write, None).await
    }

    /// [`RaftHandle::propose_with`] for a traced request: `traceparent` (W3C) is the
    /// context of the caller's span, and every member's steps for the entry (WAL append,
    /// replication, apply) are reported as its children ([`crate::traces`]).
    pub async fn propose_traced_with(
        &self,
        size_hint: usize,
        write: impl FnOnce(&mut Vec<u8>),
        traceparent: Option<&str>,
    ) -> Result<S::Output, NodeError> {
        let key = self.next_key();
        if let Some(t) = traceparent {
            crate::traces::insert(key, t.into());
        }
        let mut data = Vec::with_capacity(envelope::HEADER_BYTES + size_hint);
        envelope::write_header(&key, &mut data);
        write(&mut data);
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
        cc.context = key.to_bytes().to_vec();
        self.call(|tx| Request::ConfChange { key, cc, tx }).await
    }

    /// Waits until this node has applied everything committed before the call (ReadIndex,
    /// batched with the other reads of the same moment).
    pub async fn read_barrier(&self) -> Result<(), NodeError> {
        self.call(|tx| Request::Read { tx }).await
    }

    /// The runtime of the driver's own thread (None when it runs on the caller's
    /// runtime): a task spawned there that hands the driver its inbound messages wakes it
    /// without a hand-off between threads ([`crate::RaftPeerService::with_link_runtime`]).
    pub fn driver_runtime(&self) -> Option<&tokio::runtime::Handle> {
        self.runtime.as_ref()
    }

    /// Runs `f` on the state machine as applied so far, under a read lock: keep it short.
    pub fn with_state<R>(&self, f: impl FnOnce(&S) -> R) -> Result<R, NodeError> {
        let guard = read_state(&self.state);
        let state = guard.as_ref().ok_or(NodeError::Stopped)?;
        Ok(f(state))
    }

    /// Runs `f` on the state machine under the write lock (applies wait): for background
    /// maintenance.
    pub fn with_state_mut<R>(&self, f: impl FnOnce(&mut S) -> R) -> Result<R, NodeError> {
        let mut guard = write_state(&self.state);
        let state = guard.as_mut().ok_or(NodeError::Stopped)?;
        Ok(f(state))
    }

    /// The latest status published by the driver.
    pub fn status(&self) -> NodeStatus<S::Summary> {
        self.status.borrow().clone()
    }

    /// Runs `f` on the latest status without cloning it.
    pub fn with_status<R>(&self, f: impl FnOnce(&NodeStatus<S::Summary>) -> R) -> R {
        f(&self.status.borrow())
    }

    /// Resolves when the node stops, with the reason (a fatal error, or "stopped"). Unlike
    /// a [`RaftHandle::watch_status`] receiver, which wakes on every commit, it wakes once.
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
    pub fn watch_status(&self) -> watch::Receiver<NodeStatus<S::Summary>> {
        self.status.clone()
    }

    /// Waits until the leader this node knows satisfies `done`: `Ok(true)` once it does,
    /// `Ok(false)` after `timeout`, `Err(Stopped)` if the node stops meanwhile.
    pub async fn wait_for_leader(
        &self,
        timeout: Duration,
        done: impl Fn(Option<NodeId>) -> bool,
    ) -> Result<bool, NodeError> {
        self.wait_for_status(timeout, |s| done(s.leader)).await
    }

    /// Waits until the published status satisfies `done`: `Ok(true)` once it does,
    /// `Ok(false)` after `timeout`, `Err(Stopped)` if the node stops meanwhile.
    pub async fn wait_for_status(
        &self,
        timeout: Duration,
        done: impl Fn(&NodeStatus<S::Summary>) -> bool,
    ) -> Result<bool, NodeError> {
        let mut status = self.status.clone();
        let wait = async {
            loop {
                if done(&status.borrow_and_update()) {
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

    /// Starts an election now.
    pub async fn campaign(&self) -> Result<(), NodeError> {
        self.call(|tx| Request::Campaign { tx }).await
    }

    /// Tells the node that the transport saw peer `id`'s connection reset and not come
    /// back (fast failover, docs/design.md): if `id` is the leader, the node campaigns
    /// without waiting out the election timeout — at once if it ranks first among the
    /// remaining voters, else [`super::FAILOVER_STAGGER`] per rank later, and only if no
    /// new leader or term has shown up meanwhile, so simultaneous campaigns do not split
    /// votes. Pre-vote and check-quorum keep this harmless when the leader is in fact
    /// alive. Never blocks; dropped if the node's queue is full.
    pub fn report_peer_down(&self, id: NodeId) {
        let _ = self.requests.try_send(Request::PeerDown { id });
    }

    /// Asks this node, if leader, to hand leadership to `to`; returns once the request is
    /// handed to Raft (watch [`RaftHandle::status`] for the outcome).
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
        let commit = self.status.borrow().commit;
        Ok(matched * 10 >= commit * 9)
    }

    /// Stops the driver at once, as a process crash would: no sync, no answers (callers
    /// see [`NodeError::Stopped`] or their timeout), and the state machine is dropped
    /// as it is. For simulations, which cut the disk's power first; only a driver on the
    /// caller's runtime (`own_thread: false`) can be killed, otherwise nothing happens
    /// and `false` is returned.
    pub fn kill(&self) -> bool {
        let Some(abort) = &self.abort else {
            return false;
        };
        abort.abort();
        *write_state(&self.state) = None;
        true
    }

    /// Stops the driver, makes the state machine durable and closes it. Idempotent.
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
