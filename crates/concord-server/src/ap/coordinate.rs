//! Serving a client's AP request on any member: concord-core's sans-I/O
//! [`WriteRequest`] and [`ReadRequest`] driven over the replica service.
//!
//! ```text
//! write(op): coordinating replica = this member when it is a healthy preferred node,
//!            else the first healthy preferred node
//!            Apply(op) there ─▶ state ─▶ WriteRequest: Merge(state) to the other targets
//!            (hinted for suspected owners), W acks (the Apply counts as one once
//!            durable; a local SET/DEL/EXPIRE's state leaves before its commit) ─▶ reply
//! read:      ReadRequest (lean): Read from R of the first N healthy nodes, this member
//!            first; another for each that fails, all after SPECULATE_AFTER ─▶ R answers
//!            ─▶ reply with their join; replicas asked that answered with less are
//!            repaired (Merge)
//! ```
//!
//! A request that cannot finish fails at its deadline ([`ApConfig::timeout`]); a write
//! that fails may or may not have been stored (the error says so).

use std::collections::VecDeque;
use std::future::Future;
use std::sync::atomic::Ordering;
use std::time::Duration;

use concord_core::coordinator::{
    CoordinatorError, ReadAction, ReadRequest, WriteAction, WriteRequest,
};
use concord_core::crdt::{Crdt, RedisValue};
use concord_proto::peer::{ReplicaApply, ReplicaMerge, ReplicaRead};
use concord_raft::NodeId;
use concord_storage::ap::{state_from_bytes, state_to_bytes};
use futures_util::future::BoxFuture;
use futures_util::stream::{FuturesUnordered, StreamExt as _};
use tokio::time::Instant;
use tracing::Instrument as _;

use super::{op_to_wire, Access, ApError, ApNode, Op};

/// How long a read waits for its first R replicas before it asks the others too.
pub const SPECULATE_AFTER: Duration = Duration::from_millis(50);

/// The result of a write: for `INCRBY`, the new value.
pub type Written = Option<i64>;

/// `wanted`, within what `replicas` replicas can give.
fn quorum(wanted: u32, replicas: usize) -> u32 {
    wanted.clamp(1, replicas.max(1) as u32)
}

impl ApNode {
    /// Applies `op` to `key` over the key's replicas.
    pub async fn write(&self, at: Access, key: &[u8], op: Op) -> Result<Written, ApError> {
        self.write_after(at, key, op, None).await
    }

    /// Applies `op` to `key` over the key's replicas after the coordinating replica has
    /// joined `base` (a state the caller read), so that the write supersedes it: the
    /// write half of a read-modify-write. In a session, `base` is first brought up to what
    /// the session has seen of the key ([`session`](super::session)).
    pub async fn write_after(
        &self,
        access: Access,
        key: &[u8],
        op: Op,
        base: Option<RedisValue>,
    ) -> Result<Written, ApError> {
        let started = Instant::now();
        let written = self
            .write_after_untraced(access, key, op, base)
            .instrument(crate::telemetry::step("ap.write"))
            .await;
        self.measured("write", started, &written);
        written
    }

    /// Reports a coordinated request's latency and outcome to the metrics.
    fn measured<T>(&self, op: &'static str, started: Instant, result: &Result<T, ApError>) {
        if let Some(m) = self.telemetry() {
            let failure = result.as_ref().err().map(|e| match e {
                ApError::Refused(_) => "refused",
                ApError::Unavailable(_) => "unavailable",
                ApError::Store(_) => "store",
                ApError::Invalid(_) => "invalid",
            });
            m.request(op, started.elapsed(), failure);
        }
    }

    async fn write_after_untraced(
        &self,
        access: Access,
        key: &[u8],
        op: Op,
        base: Option<RedisValue>,
    ) -> Result<Written, ApError> {
        let base = match self.session_floor(access, key) {
            Some(floor) if !base.as_ref().is_some_and(|b| b.covers(&floor)) => {
                self.read_covering(access, key, &floor, base).await?
            }
            _ => base,
        };
        let (answer, state) = self.write_quorum(access, key, op, base).await?;
        self.session_saw(access, key, state.as_ref());
        Ok(answer)
    }

    /// [`ApNode::write_after`] without the session: the answer and, in a session, the state
    /// the coordinating replica stored.
    async fn write_quorum(
        &self,
        access: Access,
        key: &[u8],
        op: Op,
        base: Option<RedisValue>,
    ) -> Result<(Written, Option<RedisValue>), ApError> {
        self.ring_ready()?;
        let timeout = self.config().timeout;
        let bucket = access.bucket;
        let w = access.w.unwrap_or_else(|| self.bucket(bucket).w());
        let started = Instant::now();
        let (preferred, fallbacks) = self.placement(bucket, key);
        let mut candidates: Vec<NodeId> = preferred
            .iter()
            .chain(&fallbacks)
            .copied()
            .filter(|n| self.is_healthy(*n))
            .collect();
        if candidates.is_empty() {
            return Err(ApError::Unavailable(
                "no replica of the key is reachable".into(),
            ));
        }
        // A member that is a replica of the key applies the write itself: no network hop
        // before the first copy.
        if let Some(i) = candidates.iter().position(|n| *n == self.me()) {
            if preferred.contains(&self.me()) {
                candidates[..=i].rotate_right(1);
            }
        }
        // Everything but INCR may be applied twice without harm (a second SET is a newer
        // write of the same value, a second SADD adds what is there), so a failed or
        // silent coordinating replica is replaced by the next one, each but the last given
        // half of what time is left; an INCR is not retried (it might count twice).
        let idempotent = op.retriable();
        let retries = if idempotent { candidates.len() } else { 1 };
        let mut applied = None;
        let mut local_commit = None;
        let mut last_error = None;
        for (attempt, &at) in candidates.iter().take(retries).enumerate() {
            let left = timeout.saturating_sub(started.elapsed());
            let last = attempt + 1 == retries;
            let budget = if last { left } else { left / 2 };
            // Past this, the replica must not apply it (guarantee 5 of `ap`).
            let not_after = self.now_ms() + budget.as_millis() as u64;
            let outcome = if at == self.me() && op.sends_before_commit() {
                // Here, the replicas are sent the new state as soon as it is computed,
                // while this replica's commit runs: the two durable steps overlap. This
                // replica counts towards W once its commit is durable. (Not for an INCR or
                // a SADD: see `Op::sends_before_commit`.)
                let (applied_tx, applied_rx) = tokio::sync::oneshot::channel();
                let commit = self.start_apply_local(
                    bucket,
                    key,
                    op.clone(),
                    base.clone(),
                    Some(applied_tx),
                    Some(not_after),
                );
                match tokio::time::timeout(budget, applied_rx).await {
                    Ok(Ok(state)) => {
                        local_commit = Some(commit);
                        Ok(Ok((state, None)))
                    }
                    // The job did not run (its batch failed first): the commit says why.
                    Ok(Err(_)) => Ok(match commit.await {
                        Ok(Err(e)) => Err(e),
                        _ => Err(ApError::Unavailable("this replica's store failed".into())),
                    }),
                    Err(elapsed) => Err(elapsed),
                }
            } else {
                let apply = self.apply_at(
                    at,
                    bucket,
                    key.to_vec(),
                    op.clone(),
                    base.clone(),
                    not_after,
                );
                tokio::time::timeout(budget, apply).await
            };
            match outcome {
                Ok(Ok(done)) => {
                    applied = Some((at, done));
                    break;
                }
                Ok(Err(e @ ApError::Refused(_))) => return Err(e),
                Ok(Err(e)) => last_error = Some(e),
                Err(_) => {
                    last_error = Some(ApError::Unavailable(format!(
                        "write timed out at replica {at}; it may or may not have been applied"
                    )));
                    if !idempotent {
                        break;
                    }
                }
            }
        }
        let Some((coordinating, (state, answer))) = applied else {
            return Err(last_error
                .unwrap_or_else(|| ApError::Unavailable("no replica of the key answered".into())));
        };
        let w = quorum(w, preferred.len());
        let elapsed = started.elapsed();
        let (mut req, actions) = WriteRequest::start(
            w,
            &preferred,
            &fallbacks,
            |n| self.is_healthy(n),
            elapsed,
            timeout.saturating_sub(elapsed),
        );
        let mut pending = actions;
        // The targets' acknowledgements, the coordinating replica's own commit among them.
        let acks: FuturesUnordered<BoxFuture<'static, Ack>> = FuturesUnordered::new();
        match local_commit {
            Some(commit) => acks.push(Box::pin(async move {
                let durable = matches!(commit.await, Ok(Ok(_)));
                (coordinating, if durable { Ok(None) } else { Err(()) })
            })),
            // The coordinating replica stored the state already.
            None => pending.extend(req.on_ack(coordinating)),
        }
        // Only a session needs it back (a whole set may be large).
        let stored = access.session.is_some().then(|| state.clone());
        let joined = op.answers_from_quorum().then(|| state.clone());
        let write = Write {
            node: self.clone(),
            bucket,
            key: key.to_vec(),
            state,
            coordinating,
            started,
            req,
            joined,
            acks,
        };
        // It settles (every target answered, or the deadline) after the client has its
        // answer, so that owners it did not reach get a hint. (A caller that stops waiting
        // before the answer, which the Redis front door never does, may leave merges
        // unsent: the write was not acknowledged, and anti-entropy carries it from this
        // replica.)
        let reply = drive(write, pending).await;
        match reply {
            Some(Ok(joined)) => {
                let now_ms = self.now_ms();
                let answer = joined.and_then(|j| op.answer_of(&j, now_ms)).or(answer);
                Ok((answer, stored))
            }
            Some(Err(e)) => Err(ApError::Unavailable(format!(
                "{e}; the write may or may not have been stored"
            ))),
            None => Err(ApError::Unavailable(
                "write abandoned; it may or may not have been stored".into(),
            )),
        }
    }

    /// Keeps `state` of `key` here for `owner`, which the write did not reach; counted in
    /// the metrics when the hint store is full (anti-entropy is then what repairs
    /// `owner`).
    async fn keep_hint(&self, owner: NodeId, bucket: u8, key: &[u8], state: &RedisValue) {
        if owner == self.me() {
            return;
        }
        let (node, key, state) = (self.clone(), key.to_vec(), state.clone());
        if let Err(e) = node.merge_local(bucket, &key, state, Some(owner)).await {
            tracing::warn!(owner = %owner, error = %e, "a hint could not be kept");
        }
    }

    /// Reads `key` from R of its replicas; the join of their states. In a session, the
    /// state returned holds what the session has seen of the key, read from more replicas
    /// if need be ([`session`](super::session)).
    pub async fn read(&self, at: Access, key: &[u8]) -> Result<Option<RedisValue>, ApError> {
        let started = Instant::now();
        let state = self
            .read_quorum(at, key)
            .instrument(crate::telemetry::step("ap.read"))
            .await;
        self.measured("read", started, &state);
        let state = state?;
        let state = match self.session_floor(at, key) {
            Some(floor) if !state.as_ref().is_some_and(|s| s.covers(&floor)) => {
                self.read_covering(at, key, &floor, state).await?
            }
            _ => state,
        };
        self.session_saw(at, key, state.as_ref());
        Ok(state)
    }

    /// [`ApNode::read`] without the session.
    async fn read_quorum(&self, at: Access, key: &[u8]) -> Result<Option<RedisValue>, ApError> {
        self.ring_ready()?;
        let timeout = self.config().timeout;
        let bucket = at.bucket;
        let r = at.r.unwrap_or_else(|| self.bucket(bucket).r());
        let started = Instant::now();
        let (mut preferred, mut fallbacks) = self.placement(bucket, key);
        let mut r = quorum(r, preferred.len());
        // During a ring change, the owners under the earlier rings are asked too, and one
        // more answer is awaited per such owner (see `handoff`).
        for earlier in self.earlier_owners(bucket, key) {
            if !preferred.contains(&earlier) {
                preferred.push(earlier);
                fallbacks.retain(|f| *f != earlier);
                r += 1;
            }
        }
        // This member answers first when it is a replica: one message less.
        if let Some(i) = preferred.iter().position(|n| *n == self.me()) {
            preferred[..=i].rotate_right(1);
        }
        // R replicas are asked, another one for each that fails, and the rest after
        // SPECULATE_AFTER without an answer (a slow or paused replica).
        let (req, actions) = ReadRequest::<RedisValue>::start_lean(
            r,
            &preferred,
            &fallbacks,
            |n| self.is_healthy(n),
            Duration::ZERO,
            timeout,
            SPECULATE_AFTER,
        );
        let read = Read {
            node: self.clone(),
            bucket,
            key: key.to_vec(),
            started,
            req,
            asked: FuturesUnordered::new(),
        };
        // This member's own answer and a remote one need no task of their own.
        let reply = drive(read, actions).await;
        match reply {
            Some(Ok(state)) => Ok(state),
            Some(Err(e)) => Err(ApError::Unavailable(e.to_string())),
            None => Err(ApError::Unavailable("read abandoned".into())),
        }
    }

    async fn apply_at(
        &self,
        at: NodeId,
        bucket: u8,
        key: Vec<u8>,
        op: Op,
        base: Option<RedisValue>,
        not_after: u64,
    ) -> Result<(RedisValue, Option<i64>), ApError> {
        if at == self.me() {
            let answer = self.start_apply_local(bucket, &key, op, base, None, Some(not_after));
            return answer.await.map_err(|_| super::stopped())?;
        }
        let request = ReplicaApply {
            cluster_id: self.inner.cluster_id,
            bucket: u32::from(bucket),
            key: key.into(),
            op: Some(op_to_wire(&op)),
            base: base.map(|b| state_to_bytes(&b)).unwrap_or_default().into(),
            not_after_ms: not_after,
            traceparent: crate::telemetry::current_traceparent(),
        };
        let indefinite = |why: &str| {
            ApError::Unavailable(format!(
                "replica {at} failed ({why}); the write may or may not have been applied"
            ))
        };
        let state = match self.queue_apply(at, request).await {
            Ok(state) => state,
            Err(e) => return Err(indefinite(&e.to_string())),
        };
        if !state.failure.is_empty() {
            return Err(indefinite(&state.failure));
        }
        if !state.error.is_empty() {
            return Err(ApError::Refused(state.error));
        }
        let decoded = state_from_bytes(&state.state)
            .map_err(|e| ApError::Unavailable(format!("replica {at} answered {e}")))?;
        let integer = op.answers_integer().then_some(state.integer);
        Ok((decoded, integer))
    }

    pub(super) async fn merge_at(
        &self,
        at: NodeId,
        bucket: u8,
        key: Vec<u8>,
        state: RedisValue,
        hint_for: Option<NodeId>,
    ) -> Result<(), ApError> {
        self.merge_answering(at, bucket, key, state, hint_for, false)
            .await
            .map(drop)
    }

    /// [`ApNode::merge_at`]; with `want_state`, the state the merge left at `at` (`None`
    /// for a hint, which leaves the key's state alone).
    async fn merge_answering(
        &self,
        at: NodeId,
        bucket: u8,
        key: Vec<u8>,
        state: RedisValue,
        hint_for: Option<NodeId>,
        want_state: bool,
    ) -> Result<Option<RedisValue>, ApError> {
        let hinted = hint_for.is_some_and(|owner| owner != at);
        if at == self.me() {
            self.merge_local(bucket, &key, state, hint_for).await?;
            return if want_state && !hinted {
                self.read_local(bucket, &key)
            } else {
                Ok(None)
            };
        }
        let request = ReplicaMerge {
            cluster_id: self.inner.cluster_id,
            bucket: u32::from(bucket),
            key: key.into(),
            state: state_to_bytes(&state).into(),
            hint_for: hint_for.map_or(0, NodeId::get),
            traceparent: crate::telemetry::current_traceparent(),
            want_state: want_state && !hinted,
        };
        // Batched with the other merges for that replica (the batch has the timeout).
        let left = self.queue_merge(at, request).await?;
        if left.is_empty() {
            return Ok(None);
        }
        // The merge is durable either way: a state that does not decode only leaves the
        // answer without it.
        match state_from_bytes(&left) {
            Ok(state) => Ok(Some(state)),
            Err(e) => {
                tracing::warn!(replica = %at, error = %e, "a merge answered an undecodable state");
                Ok(None)
            }
        }
    }

    pub(super) async fn read_at(
        &self,
        at: NodeId,
        bucket: u8,
        key: Vec<u8>,
    ) -> Result<Option<RedisValue>, ApError> {
        if at == self.me() {
            return self.read_local(bucket, &key);
        }
        let request = ReplicaRead {
            cluster_id: self.inner.cluster_id,
            bucket: u32::from(bucket),
            key: key.into(),
        };
        let answer = self.queue_read(at, request).await?;
        if !answer.failure.is_empty() {
            return Err(ApError::Unavailable(format!(
                "replica {at}: {}",
                answer.failure
            )));
        }
        let state = answer.state;
        if state.is_empty() {
            return Ok(None);
        }
        state_from_bytes(&state)
            .map(Some)
            .map_err(|e| ApError::Unavailable(format!("replica {at} answered {e}")))
    }
}

/// A request driven by its sans-I/O core: its actions carried out, then the next answer
/// or tick awaited, until it is done.
trait Drive: Send + 'static {
    type Action: Send;
    type Reply;
    fn done(&self) -> bool;
    /// Carries out `actions`; the reply for the client when one of them is it.
    fn act(
        &mut self,
        actions: Vec<Self::Action>,
    ) -> impl Future<Output = Option<Self::Reply>> + Send;
    /// Waits for the next answer or tick; what it leads to.
    fn next(&mut self) -> impl Future<Output = Vec<Self::Action>> + Send;
}

/// Drives `request` from its `first` actions in the caller's task until the client's
/// reply (no task or channel on that path), then in a task of its own while it is not done.
async fn drive<D: Drive>(mut request: D, first: Vec<D::Action>) -> Option<D::Reply> {
    let mut reply = request.act(first).await;
    while reply.is_none() && !request.done() {
        let actions = request.next().await;
        reply = request.act(actions).await;
    }
    if !request.done() {
        tokio::spawn(
            async move {
                while !request.done() {
                    let actions = request.next().await;
                    request.act(actions).await;
                }
            }
            .in_current_span(),
        );
    }
    reply
}

/// A replica's answer to a read.
type ReadAnswer = (NodeId, Result<Option<RedisValue>, ApError>);

/// One read of one key in progress: the sans-I/O [`ReadRequest`] and the replicas it asked.
struct Read {
    node: ApNode,
    bucket: u8,
    key: Vec<u8>,
    started: Instant,
    req: ReadRequest<RedisValue>,
    asked: FuturesUnordered<BoxFuture<'static, ReadAnswer>>,
}

impl Drive for Read {
    type Action = ReadAction<RedisValue>;
    type Reply = Result<Option<RedisValue>, CoordinatorError>;

    fn done(&self) -> bool {
        self.req.is_done()
    }

    /// This member's own read is answered at once, and what it leads to carried out too.
    async fn act(&mut self, actions: Vec<Self::Action>) -> Option<Self::Reply> {
        let mut reply = None;
        let mut pending = VecDeque::from(actions);
        while let Some(action) = pending.pop_front() {
            match action {
                // A lookup in pages the store caches: answered at once.
                ReadAction::Read { from } if from == self.node.me() => {
                    let more = match self.node.read_local(self.bucket, &self.key) {
                        Ok(state) => self.req.on_answer(from, state),
                        Err(_) => self.req.on_failure(from),
                    };
                    pending.extend(more);
                }
                ReadAction::Read { from } => {
                    let (node, key, bucket) = (self.node.clone(), self.key.clone(), self.bucket);
                    self.asked.push(Box::pin(async move {
                        (from, node.read_at(from, bucket, key).await)
                    }));
                }
                ReadAction::Repair { to, value } => {
                    self.node
                        .inner
                        .counters
                        .read_repairs
                        .fetch_add(1, Ordering::Relaxed);
                    let (node, key, bucket) = (self.node.clone(), self.key.clone(), self.bucket);
                    tokio::spawn(
                        async move {
                            let _ = node.merge_at(to, bucket, key, value, None).await;
                        }
                        .in_current_span(),
                    );
                }
                ReadAction::Reply(result) => {
                    reply.get_or_insert(result);
                }
            }
        }
        reply
    }

    async fn next(&mut self) -> Vec<Self::Action> {
        let tick = tokio::time::sleep_until(self.started + self.req.next_tick());
        tokio::select! {
            Some((from, answer)) = self.asked.next() => match answer {
                Ok(state) => self.req.on_answer(from, state),
                Err(_) => self.req.on_failure(from),
            },
            _ = tick => self.req.on_tick(self.started.elapsed()),
        }
    }
}

/// One write of one key after its coordinating replica applied it: the sans-I/O
/// [`WriteRequest`] and the acknowledgements it awaits.
struct Write {
    node: ApNode,
    bucket: u8,
    key: Vec<u8>,
    /// The state the coordinating replica stored, sent to the others.
    state: RedisValue,
    coordinating: NodeId,
    started: Instant,
    req: WriteRequest,
    /// For an answer taken from the write quorum ([`Op::answers_from_quorum`]): the
    /// coordinating replica's state joined with the state each target that acknowledged
    /// answered, until the reply.
    joined: Option<RedisValue>,
    acks: FuturesUnordered<BoxFuture<'static, Ack>>,
}

/// A target's acknowledgement of a write: the state it answered when asked, or a failure.
type Ack = (NodeId, Result<Option<RedisValue>, ()>);

impl Drive for Write {
    type Action = WriteAction;
    /// With the quorum's joined state when one was kept.
    type Reply = Result<Option<RedisValue>, CoordinatorError>;

    fn done(&self) -> bool {
        self.req.is_settled()
    }

    async fn act(&mut self, actions: Vec<Self::Action>) -> Option<Self::Reply> {
        let mut reply = None;
        for action in actions {
            match action {
                // The coordinating replica stored the state as the key's already.
                WriteAction::Write { to, hint_for: None } if to == self.coordinating => {}
                WriteAction::Write { to, hint_for } => {
                    let (node, key, bucket) = (self.node.clone(), self.key.clone(), self.bucket);
                    let state = self.state.clone();
                    let want_state = self.joined.is_some();
                    self.acks.push(Box::pin(async move {
                        let merged = node
                            .merge_answering(to, bucket, key, state, hint_for, want_state)
                            .await;
                        (to, merged.map_err(drop))
                    }));
                }
                WriteAction::Reply(result) => {
                    let joined = self.joined.take();
                    reply.get_or_insert(result.map(|_| joined));
                }
                WriteAction::KeepHint { owner } => {
                    self.node
                        .keep_hint(owner, self.bucket, &self.key, &self.state)
                        .await
                }
            }
        }
        reply
    }

    async fn next(&mut self) -> Vec<Self::Action> {
        let deadline = tokio::time::sleep_until(self.started + self.req.deadline());
        tokio::select! {
            Some((from, merged)) = self.acks.next() => match merged {
                Ok(state) => {
                    if let (Some(joined), Some(state)) = (&mut self.joined, state) {
                        joined.merge(&state);
                    }
                    self.req.on_ack(from)
                }
                Err(()) => self.req.on_failure(from),
            },
            _ = deadline => self.req.on_tick(self.started.elapsed()),
        }
    }
}
