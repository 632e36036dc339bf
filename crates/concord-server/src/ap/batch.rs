//! Requests to one replica, batched. A coordinator's applies, merges and reads for a
//! member go through one queue per kind per member; whatever has queued up while earlier
//! batches were on the wire leaves as one call (at most [`MAX_BATCH`] requests,
//! [`IN_FLIGHT`] calls per queue at once). A lone request still leaves at once: nothing
//! waits for company. The replica queues a whole batch of writes for its group commit
//! before it waits, so one call and usually one fsync carry many clients' writes. Each
//! request keeps its own answer.
//!
//! The calls of the three queues to a member share one long-lived `Calls` stream
//! ([`Link`]): a call is one message with an id, its answer one message back, as soon as
//! it is ready. A unary gRPC call costs an HTTP/2 stream, request and response headers,
//! an end-of-stream frame each way, and a task on the receiving member; on the stream a
//! call costs its message. The stream is opened at the first call, and again at the first
//! call after it broke or after a caller gave up waiting on it (a connection that died
//! silently; HTTP/2 pings every 5 s find those too); the calls in flight when it breaks
//! fail (they are not re-sent: an apply may have been applied). A member that does not
//! serve `Calls` (an older build) is called with the unary `ApplyBatch`, `MergeBatch` and
//! `ReadBatch`, and the stream is tried again after [`RETRY_STREAM`].

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use concord_proto::peer::replica_answer::Answer;
use concord_proto::peer::replica_call::Call;
use concord_proto::peer::replica_client::ReplicaClient;
use concord_proto::peer::{
    ReplicaAnswer, ReplicaApply, ReplicaApplyBatch, ReplicaCall, ReplicaMerge, ReplicaMergeBatch,
    ReplicaMergeBatchAck, ReplicaRead, ReplicaReadBatch, ReplicaState, ReplicaStates,
};
use concord_raft::NodeId;
use concord_runtime::direct::{self, DirectLink};
use concord_storage::ap::{state_from_bytes, state_to_bytes};
use futures_util::stream::{FuturesUnordered, StreamExt};
use futures_util::FutureExt as _;
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio_stream::wrappers::{ReceiverStream, UnboundedReceiverStream};
use tonic::transport::Channel;
use tonic::{Code, Status, Streaming};

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
/// Most calls in flight per queue. Two keep a queue moving while one call waits on the
/// replica (an fsync, a large state); more only split the same requests over more calls,
/// each a system call and a wake-up on both members: with 4, `redis-benchmark -c 50`
/// through one member did 9,500–11,000 SETs and 25,000–30,000 GETs per second, with 2
/// 12,400–13,200 and 34,000–41,000 (with 1 the same as 2).
pub const IN_FLIGHT: usize = 2;
/// How long a member that refused the `Calls` stream is called unary before the stream
/// is tried again.
pub const RETRY_STREAM: Duration = Duration::from_secs(60);

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
    /// Answered by the encoded state the merge left when it asked for it, else empty.
    merges: Queue<ReplicaMerge, Bytes>,
    reads: Queue<ReplicaRead, ReplicaState>,
}

/// One call's answers, in request order, or why the whole call failed.
type Answers<A> = Result<Vec<Result<A, ApError>>, String>;

/// Starts the batchers of member `to`.
pub fn start(
    to: NodeId,
    client: ReplicaClient<Channel>,
    direct: Option<String>,
    cluster_id: u64,
    timeout: Duration,
) -> Queues {
    let link = Arc::new(Link::new(client, direct));
    let failed = move |e: String| ApError::Unavailable(format!("replica {to}: {e}"));
    let (applies, queue) = mpsc::unbounded_channel();
    let l = link.clone();
    tokio::spawn(run(to, timeout, queue, move |applies| {
        let l = l.clone();
        async move {
            let call = Call::Applies(ReplicaApplyBatch {
                cluster_id,
                applies,
            });
            states(l.call(call).await?)
        }
    }));
    let (merges, queue) = mpsc::unbounded_channel();
    let l = link.clone();
    tokio::spawn(run(to, timeout, queue, move |merges| {
        let l = l.clone();
        async move {
            match l
                .call(Call::Merges(ReplicaMergeBatch { cluster_id, merges }))
                .await?
            {
                Answer::Merged(ack) => {
                    let mut states = ack.states.into_iter();
                    Ok(ack
                        .errors
                        .into_iter()
                        .map(|e| {
                            if e.is_empty() {
                                Ok(states.next().unwrap_or_default())
                            } else {
                                Err(failed(e))
                            }
                        })
                        .collect())
                }
                other => Err(unexpected(&other)),
            }
        }
    }));
    let (reads, queue) = mpsc::unbounded_channel();
    tokio::spawn(run(to, timeout, queue, move |reads| {
        let l = link.clone();
        async move {
            states(
                l.call(Call::Reads(ReplicaReadBatch { cluster_id, reads }))
                    .await?,
            )
        }
    }));
    Queues {
        applies,
        merges,
        reads,
    }
}

/// The answers of an apply or read call.
fn states(answer: Answer) -> Answers<ReplicaState> {
    match answer {
        Answer::States(s) => Ok(s.states.into_iter().map(Ok).collect()),
        other => Err(unexpected(&other)),
    }
}

fn unexpected(answer: &Answer) -> String {
    match answer {
        Answer::Failure(why) => why.clone(),
        _ => "an answer of the wrong kind".into(),
    }
}

/// The calls to one member: over a direct link, else its `Calls` stream, or unary while
/// it refuses the stream.
struct Link {
    client: ReplicaClient<Channel>,
    /// `host:port` of an `http://` member, when direct links are on.
    direct: Option<String>,
    /// Since when the member refused direct links.
    direct_refused: Mutex<Option<Instant>>,
    ids: AtomicU64,
    /// The open stream; `None` before the first call, and while calls go unary.
    stream: tokio::sync::Mutex<Option<Arc<CallStream>>>,
    /// Since when the member refused the stream.
    refused: Mutex<Option<Instant>>,
}

/// An open `Calls` stream or direct link: where calls go, and who waits for which
/// answer.
struct CallStream {
    calls: Calls,
    waiting: Arc<Waiting>,
    /// Set when a caller gave up waiting for its answer: the next call opens a new
    /// stream (this one ends once its last caller is done), so a stream stuck on a
    /// connection that died silently is not used again.
    abandoned: AtomicBool,
}

/// Where a stream's calls go.
enum Calls {
    /// The `Calls` gRPC stream's request side.
    Grpc(mpsc::UnboundedSender<ReplicaCall>),
    /// A direct link ([`concord_runtime::direct`]): each call is written as a frame
    /// from the caller's task. The link's task ends when `_closed` is dropped with the
    /// stream.
    Direct {
        link: Arc<DirectLink>,
        _closed: oneshot::Sender<()>,
    },
}

impl CallStream {
    fn usable(&self) -> bool {
        !self.abandoned.load(Ordering::Relaxed) && lock(&self.waiting).is_some()
    }

    /// Sends `call`; false if the stream or link has ended.
    fn send(&self, call: ReplicaCall) -> bool {
        match &self.calls {
            Calls::Grpc(tx) => tx.send(call).is_ok(),
            Calls::Direct { link, .. } => link.send(&direct::frame(&call)),
        }
    }
}

/// The callers waiting on a stream, by call id; `None` once the stream has ended.
type Waiting = Mutex<Option<HashMap<u64, oneshot::Sender<Answer>>>>;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

const STREAM_ENDED: &str = "the stream to the replica ended";

impl Link {
    fn new(client: ReplicaClient<Channel>, direct: Option<String>) -> Self {
        Self {
            client,
            direct,
            direct_refused: Mutex::new(None),
            ids: AtomicU64::new(0),
            stream: tokio::sync::Mutex::new(None),
            refused: Mutex::new(None),
        }
    }

    /// Makes `call` and waits for its answer, or why the whole call failed.
    async fn call(&self, call: Call) -> Result<Answer, String> {
        let Some(stream) = self.stream().await? else {
            return self.unary(call).await;
        };
        let id = self.ids.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        match lock(&stream.waiting).as_mut() {
            Some(waiting) => waiting.insert(id, tx),
            None => return Err(STREAM_ENDED.into()),
        };
        // A caller that stops waiting (its timeout) takes its entry out.
        let _forget = Forget {
            stream: &stream,
            id,
        };
        if !stream.send(ReplicaCall {
            id,
            call: Some(call),
        }) {
            return Err(STREAM_ENDED.into());
        }
        rx.await.map_err(|_| STREAM_ENDED.to_string())
    }

    /// The open stream, opened now when there is none or it ended; `None` while the
    /// member refuses the stream.
    async fn stream(&self) -> Result<Option<Arc<CallStream>>, String> {
        if lock(&self.refused).is_some_and(|since| since.elapsed() < RETRY_STREAM) {
            return Ok(None);
        }
        let mut open = self.stream.lock().await;
        if let Some(s) = open.as_ref().filter(|s| s.usable()) {
            return Ok(Some(s.clone()));
        }
        if let Some(stream) = self.open_direct().await? {
            *open = Some(stream.clone());
            return Ok(Some(stream));
        }
        let (calls, queued) = mpsc::unbounded_channel();
        let mut client = self.client.clone();
        let answers = match client.calls(UnboundedReceiverStream::new(queued)).await {
            Ok(answers) => answers.into_inner(),
            Err(s) if s.code() == Code::Unimplemented => {
                *lock(&self.refused) = Some(Instant::now());
                *open = None;
                return Ok(None);
            }
            Err(s) => return Err(s.message().to_string()),
        };
        let waiting = Arc::new(Mutex::new(Some(HashMap::new())));
        tokio::spawn(read_answers(waiting.clone(), answers));
        let stream = Arc::new(CallStream {
            calls: Calls::Grpc(calls),
            waiting,
            abandoned: Default::default(),
        });
        *open = Some(stream.clone());
        Ok(Some(stream))
    }

    /// A new direct link to the member, or None when it has none (TLS, direct links
    /// off, or it refused them less than [`RETRY_STREAM`] ago).
    async fn open_direct(&self) -> Result<Option<Arc<CallStream>>, String> {
        let Some(addr) = &self.direct else {
            return Ok(None);
        };
        if lock(&self.direct_refused).is_some_and(|since| since.elapsed() < RETRY_STREAM) {
            return Ok(None);
        }
        let tcp = match direct::dial(addr, direct::CALLS_MAGIC).await {
            Ok(tcp) => tcp,
            Err(direct::DialError::Unsupported) => {
                *lock(&self.direct_refused) = Some(Instant::now());
                return Ok(None);
            }
            Err(direct::DialError::Failed(e)) => return Err(e),
        };
        let (rx, tx) = tcp.into_split();
        let link = Arc::new(DirectLink::default());
        link.install(tx);
        let waiting = Arc::new(Mutex::new(Some(HashMap::new())));
        let (closed, ended) = oneshot::channel();
        tokio::spawn(direct_answers(link.clone(), waiting.clone(), rx, ended));
        Ok(Some(Arc::new(CallStream {
            calls: Calls::Direct {
                link,
                _closed: closed,
            },
            waiting,
            abandoned: Default::default(),
        })))
    }

    /// `call` as the unary call of its kind.
    async fn unary(&self, call: Call) -> Result<Answer, String> {
        let mut c = self.client.clone();
        let why = |s: Status| s.message().to_string();
        Ok(match call {
            Call::Applies(b) => Answer::States(c.apply_batch(b).await.map_err(why)?.into_inner()),
            Call::Merges(b) => Answer::Merged(c.merge_batch(b).await.map_err(why)?.into_inner()),
            Call::Reads(b) => Answer::States(c.read_batch(b).await.map_err(why)?.into_inner()),
        })
    }
}

/// Takes a call's entry out of its stream's waiting list when its caller stops waiting
/// (and marks the stream abandoned when the answer had not come).
struct Forget<'a> {
    stream: &'a CallStream,
    id: u64,
}

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        let gave_up = lock(&self.stream.waiting)
            .as_mut()
            .and_then(|waiting| waiting.remove(&self.id))
            .is_some();
        if gave_up {
            self.stream.abandoned.store(true, Ordering::Relaxed);
        }
    }
}

/// Hands each answer of a stream to its caller; when the stream ends, fails the calls
/// still waiting and marks it ended (the next call opens another).
async fn read_answers(waiting: Arc<Waiting>, mut answers: Streaming<ReplicaAnswer>) {
    while let Ok(Some(a)) = answers.message().await {
        deliver(&waiting, a);
    }
    // Dropping the senders fails their callers with STREAM_ENDED.
    lock(&waiting).take();
}

fn deliver(waiting: &Waiting, a: ReplicaAnswer) {
    let caller = lock(waiting).as_mut().and_then(|w| w.remove(&a.id));
    if let (Some(caller), Some(answer)) = (caller, a.answer) {
        let _ = caller.send(answer);
    }
}

/// The task of a direct link's calling side: hands each answer to its caller and writes
/// what the socket did not take at once, until the connection ends or its stream is
/// dropped (`ended`); then fails the calls still waiting, as [`read_answers`] does.
async fn direct_answers(
    link: Arc<DirectLink>,
    waiting: Arc<Waiting>,
    rx: tokio::net::tcp::OwnedReadHalf,
    mut ended: oneshot::Receiver<()>,
) {
    use prost::Message as _;
    let (_never, stop) = tokio::sync::watch::channel(false);
    let reading = direct::read_frames(rx, MAX_MESSAGE, stop, |body| {
        match ReplicaAnswer::decode(body) {
            Ok(a) => {
                deliver(&waiting, a);
                true
            }
            Err(_) => false,
        }
    });
    tokio::pin!(reading);
    loop {
        tokio::select! {
            _ = &mut reading => break,
            flushed = link.flush_when_pending() => if !flushed { break },
            _ = &mut ended => break,
        }
    }
    link.close();
    lock(&waiting).take();
}

/// Serves one accepted direct link of replica calls (its greeting not yet read), as
/// [`serve_calls`] serves a `Calls` stream: each call is started as it arrives and its
/// answer written when done, in whatever order calls finish.
pub(super) async fn serve_direct_calls(
    node: ApNode,
    mut tcp: tokio::net::TcpStream,
    stop: tokio::sync::watch::Receiver<bool>,
) {
    use prost::Message as _;
    if let Err(e) = direct::accept_greeting(&mut tcp, direct::CALLS_MAGIC).await {
        tracing::debug!(error = %e, "replica calls link not greeted");
        return;
    }
    node.inner
        .direct_links_accepted
        .fetch_add(1, Ordering::Relaxed);
    let (rx, tx) = tcp.into_split();
    let link = Arc::new(DirectLink::default());
    link.install(tx);
    // Calls answered later (applies and merges wait for the group commit) are polled
    // here, so that the answers one commit releases leave in one write.
    let (later_tx, mut later) = mpsc::unbounded_channel();
    let reading = direct::read_frames(rx, MAX_MESSAGE, stop, |body| {
        let Ok(call) = ReplicaCall::decode(body) else {
            return false;
        };
        match node.start_call(call) {
            Started::Now(answer) => {
                link.send(&direct::frame(&answer));
            }
            Started::Later(answer) => {
                let _ = later_tx.send(answer);
            }
        }
        true
    });
    tokio::pin!(reading);
    let mut running = FuturesUnordered::new();
    loop {
        tokio::select! {
            r = &mut reading => {
                if let Err(e) = r {
                    tracing::debug!(error = %e, "replica calls link closed");
                }
                break;
            }
            Some(answer) = later.recv() => running.push(answer),
            Some(answer) = running.next(), if !running.is_empty() => {
                let mut frames = direct::frame(&answer);
                while let Some(Some(answer)) = running.next().now_or_never() {
                    frames.extend_from_slice(&direct::frame(&answer));
                }
                link.send(&frames);
            }
            flushed = link.flush_when_pending() => if !flushed { break },
        }
    }
    link.close();
}

/// The direct-link service of replica calls, for the peer URL's accept loop.
pub(crate) fn direct_calls_service(node: ApNode) -> concord_runtime::grpc::DirectService {
    Arc::new(move |tcp, stop| Box::pin(serve_direct_calls(node.clone(), tcp, stop)))
}

/// A started call of a `Calls` stream: answered at once (reads, refusals) or later.
enum Started {
    Now(ReplicaAnswer),
    Later(Pin<Box<dyn Future<Output = ReplicaAnswer> + Send>>),
}

/// Serves one `Calls` stream: each call is started as it arrives (applies and merges
/// queued for the group commit at once, reads answered at once) and answered when done,
/// in whatever order calls finish. When the caller ends its side, the calls started are
/// still answered; when the answers can no longer be sent, serving stops.
pub(super) fn serve_calls(
    node: ApNode,
    mut calls: Streaming<ReplicaCall>,
) -> ReceiverStream<Result<ReplicaAnswer, Status>> {
    let (tx, rx) = mpsc::channel(4 * IN_FLIGHT);
    tokio::spawn(async move {
        let mut running = FuturesUnordered::new();
        let mut open = true;
        while open || !running.is_empty() {
            let answer = tokio::select! {
                call = calls.message(), if open => match call {
                    Ok(Some(call)) => match node.start_call(call) {
                        Started::Now(answer) => answer,
                        Started::Later(answer) => {
                            running.push(answer);
                            continue;
                        }
                    },
                    Ok(None) | Err(_) => {
                        open = false;
                        continue;
                    }
                },
                Some(answer) = running.next(), if !running.is_empty() => answer,
            };
            if tx.send(Ok(answer)).await.is_err() {
                return;
            }
        }
    });
    ReceiverStream::new(rx)
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
    /// Refuses a request from another cluster.
    pub(super) fn check_cluster(&self, cluster_id: u64) -> Result<(), String> {
        if cluster_id == self.inner.cluster_id {
            Ok(())
        } else {
            Err(format!(
                "replica request from cluster {cluster_id:x}, this member belongs to cluster {:x}",
                self.inner.cluster_id
            ))
        }
    }

    /// Starts one call of a `Calls` stream.
    fn start_call(&self, c: ReplicaCall) -> Started {
        let id = c.id;
        let answer = move |answer| ReplicaAnswer {
            id,
            answer: Some(answer),
        };
        let Some(call) = c.call else {
            return Started::Now(answer(Answer::Failure("an empty call".into())));
        };
        let cluster = match &call {
            Call::Applies(b) => b.cluster_id,
            Call::Merges(b) => b.cluster_id,
            Call::Reads(b) => b.cluster_id,
        };
        if let Err(why) = self.check_cluster(cluster) {
            return Started::Now(answer(Answer::Failure(why)));
        }
        match call {
            Call::Applies(b) => {
                let states = self.start_apply_batch(b.applies);
                Started::Later(Box::pin(
                    async move { answer(Answer::States(states.await)) },
                ))
            }
            Call::Merges(b) => {
                let merged = self.start_merge_batch(b.merges);
                Started::Later(Box::pin(
                    async move { answer(Answer::Merged(merged.await)) },
                ))
            }
            Call::Reads(b) => Started::Now(answer(Answer::States(self.read_batch(&b.reads)))),
        }
    }

    /// Starts a received batch of applies: every one is queued for the group commit
    /// before any is awaited; the future answers them all, in order.
    pub(super) fn start_apply_batch(
        &self,
        applies: Vec<ReplicaApply>,
    ) -> impl Future<Output = ReplicaStates> + use<> {
        let started: Vec<_> = applies.into_iter().map(|a| self.start_apply(a)).collect();
        async move {
            let mut states = Vec::with_capacity(started.len());
            for answer in started {
                states.push(answer.await);
            }
            ReplicaStates { states }
        }
    }

    /// Starts a received batch of merges: every one is queued for the group commit
    /// before any is awaited, so one commit usually carries the whole batch.
    pub(super) fn start_merge_batch(
        &self,
        merges: Vec<ReplicaMerge>,
    ) -> impl Future<Output = ReplicaMergeBatchAck> + use<> {
        let answer_states = merges.iter().any(|m| m.want_state);
        let started: Vec<_> = merges.into_iter().map(|m| self.start_merge(m)).collect();
        async move {
            let mut errors = Vec::with_capacity(started.len());
            let mut states = Vec::new();
            for outcome in started {
                let (error, state) = match outcome.await {
                    Ok(state) => (String::new(), state.map_or_else(Bytes::new, Bytes::from)),
                    Err(e) => (e.to_string(), Bytes::new()),
                };
                errors.push(error);
                if answer_states {
                    states.push(state);
                }
            }
            ReplicaMergeBatchAck { errors, states }
        }
    }

    /// Answers a received batch of reads, in order.
    pub(super) fn read_batch(&self, reads: &[ReplicaRead]) -> ReplicaStates {
        ReplicaStates {
            states: reads.iter().map(|r| self.read_answer(r)).collect(),
        }
    }

    /// An apply at member `to`, batched.
    pub(super) async fn queue_apply(
        &self,
        to: NodeId,
        request: ReplicaApply,
    ) -> Result<ReplicaState, ApError> {
        call(to, self.queues(to).map(|q| q.applies), request).await
    }

    /// A merge at member `to`, batched; the encoded state it left when the request asked
    /// for it (`want_state`), else empty.
    pub(super) async fn queue_merge(
        &self,
        to: NodeId,
        request: ReplicaMerge,
    ) -> Result<Bytes, ApError> {
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
            let rx = self.start_apply_local(bucket, &a.key, op, base, None, not_after);
            (bucket, rx)
        });
        let node = self.clone();
        let answer = async move {
            match started {
                Err(e) => failure(e),
                Ok((bucket, rx)) => match rx.await.map_err(|_| stopped()).and_then(|r| r) {
                    Ok((state, integer)) => {
                        node.forward_moving(bucket, &a.key, &state).await;
                        ReplicaState {
                            state: concord_storage::ap::state_to_bytes(&state).into(),
                            integer: integer.unwrap_or_default(),
                            ..ReplicaState::default()
                        }
                    }
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
            .and_then(|b| {
                let encoded = self.inner.store.get_encoded(b, &read.key);
                encoded.map_err(|e| ApError::from(e).to_string())
            });
        match found {
            Ok(state) => ReplicaState {
                state: state.unwrap_or_default().into(),
                ..ReplicaState::default()
            },
            Err(failure) => ReplicaState {
                failure,
                ..ReplicaState::default()
            },
        }
    }

    /// Starts one merge of a received batch: queued for the group commit now, awaited
    /// later. With `want_state`, its answer is the encoded state the merge left.
    pub(super) fn start_merge(
        &self,
        m: ReplicaMerge,
    ) -> impl Future<Output = Result<Option<Vec<u8>>, ApError>> + use<> {
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
                    let merged = rx.await.map_err(|_| stopped())??;
                    node.forward_moving(bucket, &m.key, &state).await;
                    Ok(m.want_state.then(|| state_to_bytes(&merged)))
                }
                None => node
                    .merge_local(bucket, &m.key, state, hint_for)
                    .await
                    .map(|()| None),
            }
        };
        // The span lasts until the merge is durable.
        tracing::Instrument::instrument(merged, span)
    }
}
