//! Requests to one replica, batched. A coordinator's applies, merges and reads for a
//! member go through one queue per kind per member; whatever has queued up while earlier
//! batches were on the wire leaves as one call (`ApplyBatch`, `MergeBatch`, `ReadBatch`;
//! at most [`MAX_BATCH`] requests, [`IN_FLIGHT`] calls per queue at once). A lone request
//! still leaves at once: nothing waits for company. The replica queues a whole batch of
//! writes for its group commit before it waits, so one call and usually one fsync carry
//! many clients' writes. Each request keeps its own answer.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use concord_proto::peer::replica_client::ReplicaClient;
use concord_proto::peer::{
    ReplicaApply, ReplicaApplyBatch, ReplicaMerge, ReplicaMergeBatch, ReplicaRead,
    ReplicaReadBatch, ReplicaState,
};
use concord_raft::NodeId;
use concord_storage::ap::state_from_bytes;
use tokio::sync::{mpsc, oneshot, Semaphore};
use tonic::transport::Channel;

use super::{bucket_of, op_from_wire, stopped, ApError, ApNode};

/// Most requests in one call.
pub const MAX_BATCH: usize = 512;
/// Most encoded bytes of requests in one call (a batch may exceed it by its last
/// request; a single request larger than it leaves alone). Large states (big sets and
/// hashes travel whole) would otherwise make batches of tens of megabytes.
pub const MAX_BATCH_BYTES: usize = 4 << 20;
/// Largest message the replica service and its clients accept: a single state may be
/// large; members are trusted peers.
pub const MAX_MESSAGE: usize = 1 << 30;
/// Most calls in flight per queue.
pub const IN_FLIGHT: usize = 4;

/// A request waiting for its batch.
#[derive(Debug)]
pub struct Pending<Q, A> {
    request: Q,
    done: oneshot::Sender<Result<A, ApError>>,
}

type Queue<Q, A> = mpsc::UnboundedSender<Pending<Q, A>>;

/// The queues to one member; its batchers end when this is dropped.
#[derive(Debug, Clone)]
pub struct Queues {
    applies: Queue<ReplicaApply, ReplicaState>,
    merges: Queue<ReplicaMerge, ()>,
    reads: Queue<ReplicaRead, ReplicaState>,
}

/// One call's answers, in request order, or why the whole call failed.
type Answers<A> = Result<Vec<Result<A, ApError>>, String>;

/// Starts the batchers of member `to`.
pub fn start(
    to: NodeId,
    client: ReplicaClient<Channel>,
    cluster_id: u64,
    timeout: Duration,
) -> Queues {
    let failed = move |e: String| ApError::Unavailable(format!("replica {to}: {e}"));
    let (applies, queue) = mpsc::unbounded_channel();
    let c = client.clone();
    tokio::spawn(run(to, timeout, queue, move |applies| {
        let mut c = c.clone();
        async move {
            let call = c.apply_batch(ReplicaApplyBatch {
                cluster_id,
                applies,
            });
            let states = call.await.map_err(|s| s.message().to_string())?;
            Ok(states.into_inner().states.into_iter().map(Ok).collect())
        }
    }));
    let (merges, queue) = mpsc::unbounded_channel();
    let c = client.clone();
    tokio::spawn(run(to, timeout, queue, move |merges| {
        let mut c = c.clone();
        async move {
            let call = c.merge_batch(ReplicaMergeBatch { cluster_id, merges });
            let ack = call.await.map_err(|s| s.message().to_string())?;
            let answers = ack.into_inner().errors.into_iter();
            Ok(answers
                .map(|e| if e.is_empty() { Ok(()) } else { Err(failed(e)) })
                .collect())
        }
    }));
    let (reads, queue) = mpsc::unbounded_channel();
    tokio::spawn(run(to, timeout, queue, move |reads| {
        let mut c = client.clone();
        async move {
            let call = c.read_batch(ReplicaReadBatch { cluster_id, reads });
            let states = call.await.map_err(|s| s.message().to_string())?;
            Ok(states.into_inner().states.into_iter().map(Ok).collect())
        }
    }));
    Queues {
        applies,
        merges,
        reads,
    }
}

/// Sends the requests of `queue` in batches through `send` until the queue closes.
async fn run<Q, A, F, Fut>(
    to: NodeId,
    timeout: Duration,
    mut queue: mpsc::UnboundedReceiver<Pending<Q, A>>,
    send: F,
) where
    Q: prost::Message + Send + 'static,
    A: Send + 'static,
    F: Fn(Vec<Q>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Answers<A>> + Send + 'static,
{
    let slots = Arc::new(Semaphore::new(IN_FLIGHT));
    // A request that did not fit the last batch: it starts the next.
    let mut carried: Option<Pending<Q, A>> = None;
    loop {
        // A batch forms while every slot is busy.
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        // A request whose caller has stopped waiting is not sent: a coordinator that gave
        // up on an apply may have had it applied elsewhere since.
        let first = match carried.take() {
            Some(p) => p,
            None => loop {
                match queue.recv().await {
                    Some(p) if p.done.is_closed() => continue,
                    Some(p) => break p,
                    None => return,
                }
            },
        };
        let mut bytes = first.request.encoded_len();
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH && bytes < MAX_BATCH_BYTES {
            match queue.try_recv() {
                Ok(p) if p.done.is_closed() => {}
                Ok(p) => {
                    let len = p.request.encoded_len();
                    if bytes + len > MAX_BATCH_BYTES {
                        carried = Some(p);
                        break;
                    }
                    bytes += len;
                    batch.push(p);
                }
                Err(_) => break,
            }
        }
        let (requests, dones): (Vec<Q>, Vec<_>) =
            batch.into_iter().map(|p| (p.request, p.done)).unzip();
        let call = send(requests);
        tokio::spawn(async move {
            let failed = |why: &str| ApError::Unavailable(format!("replica {to}: {why}"));
            match tokio::time::timeout(timeout, call).await {
                Ok(Ok(answers)) => {
                    let mut answers = answers.into_iter();
                    for done in dones {
                        let answer = answers
                            .next()
                            .unwrap_or_else(|| Err(failed("no answer for this request")));
                        let _ = done.send(answer);
                    }
                }
                Ok(Err(why)) => {
                    for done in dones {
                        let _ = done.send(Err(failed(&why)));
                    }
                }
                Err(_) => {
                    for done in dones {
                        let _ = done.send(Err(failed("timed out")));
                    }
                }
            }
            drop(slot);
        });
    }
}

/// Queues `request` and waits for its answer.
async fn call<Q, A>(to: NodeId, queue: Option<Queue<Q, A>>, request: Q) -> Result<A, ApError> {
    let (done, answer) = oneshot::channel();
    let queued = queue.is_some_and(|q| q.send(Pending { request, done }).is_ok());
    if !queued {
        return Err(ApError::Unavailable(format!("replica {to} is unreachable")));
    }
    answer
        .await
        .unwrap_or_else(|_| Err(ApError::Unavailable(format!("replica {to} went away"))))
}

impl ApNode {
    /// An apply at member `to`, batched.
    pub(super) async fn queue_apply(
        &self,
        to: NodeId,
        request: ReplicaApply,
    ) -> Result<ReplicaState, ApError> {
        call(to, self.queues(to).map(|q| q.applies), request).await
    }

    /// A merge at member `to`, batched.
    pub(super) async fn queue_merge(
        &self,
        to: NodeId,
        request: ReplicaMerge,
    ) -> Result<(), ApError> {
        call(to, self.queues(to).map(|q| q.merges), request).await
    }

    /// A read at member `to`, batched.
    pub(super) async fn queue_read(
        &self,
        to: NodeId,
        request: ReplicaRead,
    ) -> Result<ReplicaState, ApError> {
        call(to, self.queues(to).map(|q| q.reads), request).await
    }

    /// Starts one apply of a received batch: queued for the group commit now, awaited
    /// later. Its answer as the replica protocol carries it.
    pub(super) fn start_apply(
        &self,
        a: ReplicaApply,
    ) -> impl Future<Output = ReplicaState> + use<> {
        let failure = |failure: String| ReplicaState {
            failure,
            ..ReplicaState::default()
        };
        let checked = (|| {
            let bucket = bucket_of(a.bucket).map_err(|s| s.message().to_string())?;
            let op =
                op_from_wire(a.op.ok_or("no operation")?).map_err(|s| s.message().to_string())?;
            let base = match a.base.is_empty() {
                true => None,
                false => Some(state_from_bytes(&a.base)?),
            };
            Ok::<_, String>((bucket, op, base))
        })();
        let not_after = (a.not_after_ms != 0).then_some(a.not_after_ms);
        let span = crate::telemetry::remote_span("ap.replica_apply", &a.traceparent);
        let started = checked.map(|(bucket, op, base)| {
            self.start_apply_local(bucket, &a.key, op, base, None, not_after)
        });
        let answer = async move {
            match started {
                Err(e) => failure(e),
                Ok(rx) => match rx.await.map_err(|_| stopped()).and_then(|r| r) {
                    Ok((state, integer)) => ReplicaState {
                        state: concord_storage::ap::state_to_bytes(&state).into(),
                        integer: integer.unwrap_or_default(),
                        ..ReplicaState::default()
                    },
                    Err(ApError::Refused(error)) => ReplicaState {
                        error,
                        ..ReplicaState::default()
                    },
                    Err(e) => failure(e.to_string()),
                },
            }
        };
        // The span lasts until the apply is durable.
        tracing::Instrument::instrument(answer, span)
    }

    /// One read of a received batch (or the unary `Read`), answered as the replica
    /// protocol carries it: a lookup in pages the store caches, no thread hand-off.
    pub(super) fn read_answer(&self, read: &ReplicaRead) -> ReplicaState {
        let found = bucket_of(read.bucket)
            .map_err(|s| s.message().to_string())
            .and_then(|b| self.read_local(b, &read.key).map_err(|e| e.to_string()));
        match found {
            Ok(state) => ReplicaState {
                state: state
                    .map(|s| concord_storage::ap::state_to_bytes(&s))
                    .unwrap_or_default()
                    .into(),
                ..ReplicaState::default()
            },
            Err(failure) => ReplicaState {
                failure,
                ..ReplicaState::default()
            },
        }
    }

    /// Starts one merge of a received batch: queued for the group commit now, awaited
    /// later.
    pub(super) fn start_merge(
        &self,
        m: ReplicaMerge,
    ) -> impl Future<Output = Result<(), ApError>> + use<> {
        let node = self.clone();
        let checked = bucket_of(m.bucket)
            .map_err(|s| ApError::Refused(s.message().to_string()))
            .and_then(|b| {
                let state = state_from_bytes(&m.state).map_err(ApError::Refused)?;
                Ok((b, state))
            });
        let hint_for = (m.hint_for != 0).then_some(NodeId(m.hint_for));
        let span = crate::telemetry::remote_span("ap.replica_merge", &m.traceparent);
        // A plain merge is queued at once; a hint goes through its own store call.
        let queued = match (&checked, hint_for) {
            (Ok((bucket, state)), None) => {
                let (tx, rx) = oneshot::channel();
                let create = !self.collectable(state, self.now_ms());
                self.inner
                    .store
                    .merge_then(*bucket, &m.key, state.clone(), create, move |out| {
                        let _ = tx.send(out);
                    });
                Some(rx)
            }
            _ => None,
        };
        let merged = async move {
            let (bucket, state) = checked?;
            match queued {
                Some(rx) => {
                    rx.await.map_err(|_| stopped())??;
                    Ok(())
                }
                None => node.merge_local(bucket, &m.key, state, hint_for).await,
            }
        };
        // The span lasts until the merge is durable.
        tracing::Instrument::instrument(merged, span)
    }
}
