//! The network transport: Raft messages over concord-proto's `concord.peer.v1.Raft/Send`
//! stream, one long-lived stream per ordered pair of members, shared by every Raft group
//! of the two nodes (each batch names its group and the peer protocol version).
//!
//! Sending: [`GrpcTransport`] keeps, per peer, a bounded queue and a task that connects
//! (with exponential backoff between attempts, 50 ms to 2 s), opens a `Send` stream and
//! pushes one `RaftBatch` per queued batch of messages (at most [`MAX_IN_FLIGHT`] queued
//! for the stream). Receiving: [`RaftPeerService`] steps every batch of a stream into the
//! node's inbox. Batches are not acknowledged one by one (Raft's responses are the
//! acknowledgements); the response stream carries a refusal and the answers to round-trip
//! probes (an empty batch marked `probe`, every [`PROBE_INTERVAL`], measured for
//! `/metrics`), and its end tells the sender the peer went away. Batches also carry the
//! trace contexts of the traced entries they hold ([`crate::traces`]).
//!
//! # Guarantees
//!
//! 1. Bounded memory: a peer's queue holds at most [`PEER_QUEUE_BATCHES`] batches; while
//!    the peer is not connected, or its queue is full, [`Transport::send`] reports it
//!    unreachable at once (Raft probes again later) instead of buffering.
//! 2. Within one stream, batches arrive in order and are stepped in order; across a
//!    reconnect, messages may be lost (never duplicated by the transport), which Raft
//!    tolerates.
//! 3. A stream from another cluster (`cluster_id` mismatch), or of a peer protocol version
//!    this build does not speak, is refused with a status that says so.
//! 4. Batches reach the inbox of the group they name ([`Router`]); a batch for a group
//!    this node does not host is dropped.
//!
//! # Snapshots
//!
//! A Raft snapshot message does not ride the `Send` stream: it goes on the `Snapshot` RPC
//! of the same connection as chunks of [`SNAPSHOT_CHUNK_BYTES`] (each with its CRC-32C),
//! at most [`SNAPSHOT_CHUNKS_IN_FLIGHT`] queued ahead of HTTP/2's flow control, so a large
//! snapshot is never one message and a slow receiver slows the sender down. The receiver
//! checks order, checksums and length, then hands the reassembled message to its group
//! and acknowledges. A transfer that breaks is discarded whole and sent again from the
//! start when Raft next needs it (restart, not resume). The messages queued behind a
//! snapshot for the same peer wait until it is acknowledged, so a group sees them after it.
//!
//! # Limits (for later)
//!
//! * The snapshot is whole in memory on both sides (Raft's snapshot message holds it);
//!   only the wire is chunked.
//!
//! `https://` peers are dialled with the transport's [`concord_tls::Dialer`] (mutual TLS
//! with the peer certificates); the listening side's TLS is the server's.
//!
//! # Direct links
//!
//! Between `http://` peers, batches go on a *direct link* when it is up: the sender's
//! thread writes the batch as a frame straight to a TCP connection of its own, to the same
//! peer URL, and one task at the receiver reads it ([`crate::direct`]); the gRPC stream
//! stays open beside it and carries snapshots, what follows a snapshot until it is
//! through, probes, and every batch while the link is down. [`serve`] tells the two kinds
//! of connection apart by their first bytes.
//!
//! # Fast failover
//!
//! When a peer's inbound stream breaks (a killed process's connections are reset by its
//! kernel) and no new stream from it arrives within [`FAILOVER_GRACE`], the service calls
//! its [`Router`], which tells every group (see [`crate::transport::PeerDownHook`]); a follower that loses its leader this way
//! campaigns at once rather than after the election timeout.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use concord_proto::peer::raft_client::RaftClient;
use concord_proto::peer::raft_server::{Raft, RaftServer};
use concord_proto::peer::{
    EntryTrace, RaftAck, RaftBatch, SnapshotAck, SnapshotChunk, SnapshotMeta,
};
use concord_raft::{Message, MessageType, NodeId};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::codec;
use crate::direct::DirectLink;
use crate::telemetry::{NoTelemetry, Telemetry};
use crate::transport::{GroupId, PeerTransport, Router, TransportError, PEER_PROTOCOL_VERSION};

/// Batches queued per peer before it is reported unreachable.
pub const PEER_QUEUE_BATCHES: usize = 1024;
/// Batches queued for one peer stream.
pub const MAX_IN_FLIGHT: usize = 64;
/// Largest gRPC message either side accepts on the Send stream (snapshots travel apart, in
/// chunks).
pub const MAX_MESSAGE_BYTES: usize = 512 << 20;
/// Default size of one snapshot chunk.
pub const SNAPSHOT_CHUNK_BYTES: usize = 1 << 20;
/// Snapshot chunks queued ahead of the network: with HTTP/2 flow control, this bounds a
/// transfer's memory beyond the snapshot itself (back-pressure).
pub const SNAPSHOT_CHUNKS_IN_FLIGHT: usize = 4;
/// Largest snapshot a receiver accepts.
pub const MAX_SNAPSHOT_BYTES: u64 = 64 << 30;
/// How often a peer stream's round trip is probed (etcd's prober: every 5 s).
pub const PROBE_INTERVAL: Duration = Duration::from_secs(5);

struct Peer {
    queue: mpsc::Sender<(GroupId, Vec<Message>)>,
    connected: Arc<AtomicBool>,
    /// The direct link to an `http://` peer (its task ends when the sender is dropped).
    direct: Option<(Arc<DirectLink>, tokio::sync::oneshot::Sender<()>)>,
    /// Snapshots for this peer queued or in transfer on the gRPC stream: while there are
    /// any, what follows goes there too, so the peer sees it after the snapshot.
    snapshots: Arc<AtomicUsize>,
}

/// The response stream type of streaming gRPC methods (as generated servers expect).
pub type BoxStream<T> =
    std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<T, Status>> + Send + 'static>>;

/// Sends Raft messages to peers over gRPC.
pub struct GrpcTransport {
    from: NodeId,
    cluster_id: u64,
    snapshot_chunk_bytes: Arc<AtomicUsize>,
    peers: std::sync::RwLock<BTreeMap<NodeId, (String, Peer)>>,
    dialer: concord_tls::Dialer,
    telemetry: Arc<dyn Telemetry>,
    direct_links: AtomicBool,
    /// Batches sent on direct links (their sequence numbers).
    direct_seq: AtomicU64,
}

impl std::fmt::Debug for GrpcTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let peers: Vec<NodeId> = match self.peers.read() {
            Ok(p) => p.keys().copied().collect(),
            Err(_) => Vec::new(),
        };
        f.debug_struct("GrpcTransport")
            .field("peers", &peers)
            .finish()
    }
}

impl GrpcTransport {
    /// A transport from node `from` of cluster `cluster_id` to `peers` (id → peer URL such
    /// as `http://127.0.0.1:2380`); spawns one connection task per peer on the current
    /// runtime. The tasks end when the transport is dropped or the peer removed.
    pub fn new(from: NodeId, cluster_id: u64, peers: BTreeMap<NodeId, String>) -> Self {
        Self::with_dialer(from, cluster_id, peers, concord_tls::Dialer::default())
    }

    /// [`GrpcTransport::new`], dialling `https://` peers with `dialer`'s TLS settings
    /// (the peer CA and this member's peer certificate).
    pub fn with_dialer(
        from: NodeId,
        cluster_id: u64,
        peers: BTreeMap<NodeId, String>,
        dialer: concord_tls::Dialer,
    ) -> Self {
        Self::with_telemetry(from, cluster_id, peers, dialer, Arc::new(NoTelemetry))
    }

    /// [`GrpcTransport::with_dialer`] reporting the bytes sent to each peer and the
    /// round trip of its stream (probed every [`PROBE_INTERVAL`]) to `telemetry`.
    pub fn with_telemetry(
        from: NodeId,
        cluster_id: u64,
        peers: BTreeMap<NodeId, String>,
        dialer: concord_tls::Dialer,
        telemetry: Arc<dyn Telemetry>,
    ) -> Self {
        let t = Self {
            from,
            cluster_id,
            dialer,
            snapshot_chunk_bytes: Arc::new(AtomicUsize::new(SNAPSHOT_CHUNK_BYTES)),
            peers: std::sync::RwLock::new(BTreeMap::new()),
            telemetry,
            direct_links: AtomicBool::new(true),
            direct_seq: AtomicU64::new(0),
        };
        for (to, url) in peers {
            t.set_peer(to, url);
        }
        t
    }

    /// Adds peer `to` at `url`, or moves it there (a new connection) if its URL changed.
    /// Must be called on a tokio runtime.
    pub fn set_peer(&self, to: NodeId, url: String) {
        if to == self.from {
            return;
        }
        let mut peers = self.peers.write().unwrap_or_else(|e| e.into_inner());
        if peers.get(&to).is_some_and(|(u, _)| *u == url) {
            return;
        }
        let (queue, rx) = mpsc::channel(PEER_QUEUE_BATCHES);
        let connected = Arc::new(AtomicBool::new(false));
        let snapshots = Arc::new(AtomicUsize::new(0));
        let direct = match (
            self.direct_links.load(Ordering::Relaxed),
            crate::direct::addr_of(&url),
        ) {
            (true, Some(addr)) => {
                let link = Arc::new(DirectLink::default());
                let (stop, stopped) = tokio::sync::oneshot::channel();
                let telemetry = self.telemetry.clone();
                tokio::spawn(crate::direct::run(
                    link.clone(),
                    self.from,
                    to,
                    addr,
                    stopped,
                    move |up| telemetry.peer_direct_link(to, up),
                ));
                Some((link, stop))
            }
            _ => None,
        };
        tokio::spawn(peer_loop(
            PeerLink {
                from: self.from,
                to,
                cluster_id: self.cluster_id,
                url: url.clone(),
                snapshot_chunk_bytes: self.snapshot_chunk_bytes.clone(),
                dialer: self.dialer.clone(),
                telemetry: self.telemetry.clone(),
            },
            rx,
            connected.clone(),
            snapshots.clone(),
        ));
        let peer = Peer {
            queue,
            connected,
            direct,
            snapshots,
        };
        peers.insert(to, (url, peer));
    }

    /// Whether batches to `http://` peers go on direct links ([`crate::direct`]) when
    /// the peer speaks them (the default), or on the gRPC stream only. Applies to peers
    /// added after the call.
    pub fn set_direct_links(&self, on: bool) {
        self.direct_links.store(on, Ordering::Relaxed);
    }

    /// How many batches went on direct links so far.
    pub fn direct_batches(&self) -> u64 {
        self.direct_seq.load(Ordering::Relaxed)
    }

    /// Whether the direct link to `to` is up now.
    pub fn direct_link_up(&self, to: NodeId) -> bool {
        let peers = self.peers.read().unwrap_or_else(|e| e.into_inner());
        peers
            .get(&to)
            .and_then(|(_, p)| p.direct.as_ref())
            .is_some_and(|(link, _)| link.is_up())
    }

    /// Sets the size of the chunks snapshots are sent in (at least 1 KiB).
    pub fn set_snapshot_chunk_bytes(&self, bytes: usize) {
        self.snapshot_chunk_bytes
            .store(bytes.max(1024), Ordering::Relaxed);
    }

    /// Forgets peer `to` and closes its connection.
    pub fn remove_peer(&self, to: NodeId) {
        let mut peers = self.peers.write().unwrap_or_else(|e| e.into_inner());
        peers.remove(&to);
    }

    /// The peers and their URLs.
    pub fn peers(&self) -> BTreeMap<NodeId, String> {
        let peers = self.peers.read().unwrap_or_else(|e| e.into_inner());
        peers
            .iter()
            .map(|(id, (url, _))| (*id, url.clone()))
            .collect()
    }
}

impl PeerTransport for GrpcTransport {
    fn send_group(
        &self,
        to: NodeId,
        group: GroupId,
        msgs: Vec<Message>,
    ) -> Result<(), TransportError> {
        let peers = self.peers.read().unwrap_or_else(|e| e.into_inner());
        let (_, peer) = peers.get(&to).ok_or(TransportError::Unreachable(to))?;
        let snapshot = msgs.iter().any(|m| m.msg_type == MessageType::Snapshot);
        if let Some((link, _)) = peer.direct.as_ref().filter(|_| !snapshot) {
            if link.is_up() && peer.snapshots.load(Ordering::Acquire) == 0 {
                let seq = self.direct_seq.load(Ordering::Relaxed) + 1;
                let batch = raft_batch(self.cluster_id, self.from, to, seq, group, &msgs);
                let frame = crate::direct::frame(&batch);
                if link.send(&frame) {
                    self.direct_seq.fetch_add(1, Ordering::Relaxed);
                    self.telemetry.peer_sent(to, frame.len(), 0);
                    return Ok(());
                }
                // Broken or full: the gRPC stream takes the batch, if it is up.
            }
        }
        if !peer.connected.load(Ordering::Acquire) {
            return Err(TransportError::Unreachable(to));
        }
        if snapshot {
            peer.snapshots.fetch_add(1, Ordering::AcqRel);
        }
        peer.queue.try_send((group, msgs)).map_err(|_| {
            if snapshot {
                peer.snapshots.fetch_sub(1, Ordering::AcqRel);
            }
            TransportError::Unreachable(to)
        })
    }
}

struct PeerLink {
    from: NodeId,
    to: NodeId,
    cluster_id: u64,
    url: String,
    snapshot_chunk_bytes: Arc<AtomicUsize>,
    dialer: concord_tls::Dialer,
    telemetry: Arc<dyn Telemetry>,
}

impl PeerLink {
    fn batch(&self, seq: u64, group: GroupId, msgs: &[Message]) -> RaftBatch {
        raft_batch(self.cluster_id, self.from, self.to, seq, group, msgs)
    }

    /// Queues `batch` on the stream, counting its bytes and the `queued` batches behind
    /// it; false if the stream is closed.
    async fn push(&self, tx: &mpsc::Sender<RaftBatch>, batch: RaftBatch, queued: usize) -> bool {
        use prost::Message as _;
        self.telemetry
            .peer_sent(self.to, batch.encoded_len(), queued);
        tx.send(batch).await.is_ok()
    }
}

async fn peer_loop(
    link: PeerLink,
    mut rx: mpsc::Receiver<(GroupId, Vec<Message>)>,
    connected: Arc<AtomicBool>,
    snapshots: Arc<AtomicUsize>,
) {
    const MIN_BACKOFF: Duration = Duration::from_millis(50);
    const MAX_BACKOFF: Duration = Duration::from_secs(2);
    let mut backoff = MIN_BACKOFF;
    let endpoint = match tonic::transport::Endpoint::from_shared(link.url.clone()) {
        Ok(e) => e.connect_timeout(Duration::from_secs(1)).tcp_nodelay(true),
        Err(e) => {
            tracing::error!(peer = %link.to, url = %link.url, error = %e, "invalid peer url");
            return;
        }
    };
    loop {
        if rx.is_closed() {
            return;
        }
        let end = stream_to_peer(
            &link,
            &endpoint,
            &mut rx,
            &connected,
            &snapshots,
            &mut backoff,
        );
        match end.await {
            StreamEnd::TransportDropped => return,
            StreamEnd::Failed(e) => {
                tracing::debug!(from = %link.from, to = %link.to, error = %e, "peer stream ended");
            }
        }
        connected.store(false, Ordering::Release);
        // Whatever was queued for a dead stream is stale by the time we reconnect.
        while let Ok((_, msgs)) = rx.try_recv() {
            if msgs.iter().any(|m| m.msg_type == MessageType::Snapshot) {
                snapshots.fetch_sub(1, Ordering::AcqRel);
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

enum StreamEnd {
    TransportDropped,
    Failed(String),
}

fn raft_batch(
    cluster_id: u64,
    from: NodeId,
    to: NodeId,
    seq: u64,
    group: GroupId,
    msgs: &[Message],
) -> RaftBatch {
    RaftBatch {
        cluster_id,
        from: from.get(),
        to: to.get(),
        seq,
        version: PEER_PROTOCOL_VERSION,
        group_id: group,
        probe: false,
        messages: msgs
            .iter()
            .map(|m| Bytes::from(codec::encode_message(m)))
            .collect(),
        traces: entry_traces(msgs),
    }
}

/// A batch as a transport sends it (for tests that write frames by hand).
#[cfg(test)]
pub(crate) fn tests_batch(
    cluster_id: u64,
    from: NodeId,
    to: NodeId,
    msgs: &[Message],
) -> RaftBatch {
    raft_batch(
        cluster_id,
        from,
        to,
        1,
        crate::transport::DEFAULT_GROUP,
        msgs,
    )
}

/// The trace contexts of the traced entries `msgs` carry (none, at the cost of one
/// atomic load, while nothing is traced).
fn entry_traces(msgs: &[Message]) -> Vec<EntryTrace> {
    if crate::traces::is_empty() {
        return Vec::new();
    }
    let entries = msgs.iter().flat_map(|m| &m.entries).map(|e| &e.data[..]);
    crate::traces::of_entries(entries)
        .into_iter()
        .map(|(key, traceparent)| EntryTrace {
            origin: key.origin.get(),
            incarnation: key.incarnation,
            seq: key.seq,
            traceparent: traceparent.to_string(),
        })
        .collect()
}

/// Longest `traceparent` accepted from a peer (W3C's is 55 characters).
const MAX_TRACEPARENT: usize = 128;

/// Sends snapshot message `msg` as a stream of checksummed chunks and waits for the
/// receiver's acknowledgement (the snapshot arrived whole, verified, and was handed to its
/// group). At most [`SNAPSHOT_CHUNKS_IN_FLIGHT`] chunks wait ahead of the network.
async fn send_snapshot(
    client: &mut RaftClient<tonic::transport::Channel>,
    link: &PeerLink,
    group: GroupId,
    mut msg: Message,
) -> Result<SnapshotAck, String> {
    let snap = msg
        .snapshot
        .as_mut()
        .ok_or("snapshot message without a snapshot")?;
    let data = Bytes::from(std::mem::take(&mut snap.data));
    let (index, term) = (snap.metadata.index, snap.metadata.term);
    let meta = SnapshotMeta {
        cluster_id: link.cluster_id,
        from: link.from.get(),
        to: link.to.get(),
        index,
        term,
        size: data.len() as u64,
        message: Bytes::from(codec::encode_message(&msg)),
        version: PEER_PROTOCOL_VERSION,
        group_id: group,
    };
    let chunk_bytes = link.snapshot_chunk_bytes.load(Ordering::Relaxed).max(1);
    let (tx, rx) = mpsc::channel(SNAPSHOT_CHUNKS_IN_FLIGHT);
    tokio::spawn(async move {
        let mut meta = Some(meta);
        let mut offset = 0usize;
        loop {
            let end = (offset + chunk_bytes).min(data.len());
            let piece = data.slice(offset..end);
            let chunk = SnapshotChunk {
                meta: meta.take(),
                offset: offset as u64,
                crc32c: crc32c::crc32c(&piece),
                data: piece,
                last: end == data.len(),
            };
            if tx.send(chunk).await.is_err() || end == data.len() {
                return;
            }
            offset = end;
        }
    });
    client
        .snapshot(ReceiverStream::new(rx))
        .await
        .map(|r| r.into_inner())
        .map_err(|e| e.to_string())
}

async fn stream_to_peer(
    link: &PeerLink,
    endpoint: &tonic::transport::Endpoint,
    rx: &mut mpsc::Receiver<(GroupId, Vec<Message>)>,
    connected: &AtomicBool,
    snapshots: &AtomicUsize,
    backoff: &mut Duration,
) -> StreamEnd {
    let channel = match link.dialer.connect(endpoint.clone()).await {
        Ok(c) => c,
        Err(e) => return StreamEnd::Failed(e.to_string()),
    };
    let mut client = RaftClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let (tx, brx) = mpsc::channel::<RaftBatch>(MAX_IN_FLIGHT);
    let mut acks = match client.send(ReceiverStream::new(brx)).await {
        Ok(r) => r.into_inner(),
        Err(e) => return StreamEnd::Failed(e.to_string()),
    };
    connected.store(true, Ordering::Release);
    link.telemetry.peer_connected(link.to);
    *backoff = Duration::from_millis(50);
    let mut seq = 0u64;
    let mut probe = tokio::time::interval(PROBE_INTERVAL);
    probe.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The probe awaiting its answer: its seq and when it was queued.
    let mut probing: Option<(u64, std::time::Instant)> = None;
    loop {
        tokio::select! {
            _ = probe.tick() => {
                seq += 1;
                let mut batch = link.batch(seq, 0, &[]);
                batch.probe = true;
                probing = Some((seq, std::time::Instant::now()));
                if !link.push(&tx, batch, rx.len()).await {
                    return StreamEnd::Failed("request stream closed".into());
                }
            }
            msgs = rx.recv() => {
                let Some((group, msgs)) = msgs else { return StreamEnd::TransportDropped };
                // The common case, no snapshot: the batch goes as it is.
                if !msgs.iter().any(|m| m.msg_type == MessageType::Snapshot) {
                    seq += 1;
                    if !link.push(&tx, link.batch(seq, group, &msgs), rx.len()).await {
                        return StreamEnd::Failed("request stream closed".into());
                    }
                    continue;
                }
                // Snapshots travel apart, in chunks, on the Snapshot RPC of the same
                // connection; the messages around one keep their order. Once this batch
                // is out (or the stream failed), what follows may take the direct link
                // again: a batch still queued behind it may then be overtaken, which
                // Raft tolerates.
                let _done = SnapshotBatchDone(snapshots);
                let mut plain = Vec::with_capacity(msgs.len());
                for m in msgs {
                    if m.msg_type != MessageType::Snapshot {
                        plain.push(m);
                        continue;
                    }
                    if !plain.is_empty() {
                        seq += 1;
                        let batch = link.batch(seq, group, &std::mem::take(&mut plain));
                        if !link.push(&tx, batch, rx.len()).await {
                            return StreamEnd::Failed("request stream closed".into());
                        }
                    }
                    match send_snapshot(&mut client, link, group, m).await {
                        Ok(_) => link.telemetry.snapshot_sent(link.to),
                        // Raft sends it again when the follower still needs it.
                        Err(e) => {
                            tracing::warn!(to = %link.to, error = %e, "snapshot transfer failed")
                        }
                    }
                }
                if plain.is_empty() {
                    continue;
                }
                seq += 1;
                if !link.push(&tx, link.batch(seq, group, &plain), rx.len()).await {
                    return StreamEnd::Failed("request stream closed".into());
                }
            }
            ack = acks.message() => match ack {
                Ok(Some(ack)) => {
                    if let Some((s, sent)) = probing {
                        if s == ack.seq {
                            link.telemetry.peer_round_trip(link.to, sent.elapsed());
                            probing = None;
                        }
                    }
                }
                Ok(None) => return StreamEnd::Failed("peer closed the stream".into()),
                Err(e) => return StreamEnd::Failed(e.to_string()),
            },
        }
    }
}

/// Counts a peer's snapshot batch as done when dropped.
struct SnapshotBatchDone<'a>(&'a AtomicUsize);

impl Drop for SnapshotBatchDone<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// How long a peer's stream may be gone before the peer is reported down.
pub const FAILOVER_GRACE: Duration = Duration::from_millis(10);

/// The receiving side: the `concord.peer.v1.Raft` service of one node.
#[derive(Clone)]
pub struct RaftPeerService {
    cluster_id: u64,
    router: Router,
    telemetry: Arc<dyn Telemetry>,
    // Streams opened per peer, so a stream's end can tell whether a newer one exists.
    generations: Arc<std::sync::Mutex<BTreeMap<NodeId, u64>>>,
    /// Other kinds of direct link served on the peer URL, by greeting.
    direct_services: Vec<(&'static [u8; 8], DirectService)>,
    /// Where inbound Raft direct links are read (see [`RaftPeerService::with_link_runtime`]).
    link_runtime: Option<tokio::runtime::Handle>,
}

/// Serves one accepted direct link of some other protocol (its greeting not yet read)
/// until it ends or the watch is set (the server stops).
pub type DirectService = Arc<
    dyn Fn(
            tokio::net::TcpStream,
            tokio::sync::watch::Receiver<bool>,
        ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>
        + Send
        + Sync,
>;

impl std::fmt::Debug for RaftPeerService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RaftPeerService")
            .field("cluster_id", &self.cluster_id)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Plain data; a panic elsewhere leaves it consistent.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl RaftPeerService {
    /// A service handing what it receives to the groups registered with `router`, and
    /// reporting a peer whose stream broke to their peer-down hooks.
    pub fn new(cluster_id: u64, router: Router) -> Self {
        Self {
            cluster_id,
            router,
            telemetry: Arc::new(NoTelemetry),
            generations: Arc::new(std::sync::Mutex::new(BTreeMap::new())),
            direct_services: Vec::new(),
            link_runtime: None,
        }
    }

    /// Reads inbound Raft direct links on `runtime` — the Raft driver's own thread
    /// ([`crate::RaftHandle::driver_runtime`]) — instead of the runtime that accepted them.
    /// A batch then reaches the driver's inbox on the driver's thread: no wake-up of a
    /// server worker, no hand-off from it to the driver, for every append, acknowledgement
    /// and heartbeat. The driver's thread blocks in its fsyncs and applies, so the links
    /// wait in the kernel's socket buffers meanwhile, where they would otherwise wait in
    /// the inbox; a stall long enough to fill a link's receive window for
    /// [`crate::direct::USER_TIMEOUT`] makes the sender's kernel close the link, which is
    /// dialled again (a driver stalled that long has missed its election timeout anyway).
    /// Batches for other groups still reach them through their inboxes. The runtime must
    /// have IO and timers enabled (the driver's has); once it has shut down, links
    /// accepted later are dropped, and their senders dial again. None: links are read on
    /// the runtime that accepted them.
    pub fn with_link_runtime(mut self, runtime: Option<tokio::runtime::Handle>) -> Self {
        self.link_runtime = runtime;
        self
    }

    /// Serves connections to the peer URL that open with `greeting` with `service` (the
    /// AP replica calls' direct links, [`crate::direct::CALLS_MAGIC`]).
    pub fn with_direct_service(
        mut self,
        greeting: &'static [u8; 8],
        service: DirectService,
    ) -> Self {
        self.direct_services.push((greeting, service));
        self
    }

    /// Reports the bytes received from each peer to `telemetry`.
    pub fn with_telemetry(mut self, telemetry: Arc<dyn Telemetry>) -> Self {
        self.telemetry = telemetry;
        self
    }

    /// The tonic service, with message size limits raised for snapshots.
    pub fn into_server(self) -> RaftServer<Self> {
        RaftServer::new(self)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }
}

/// Which peer an inbound stream (gRPC or direct link) is from, and the generation of
/// that peer's streams it opened: set by its first batch.
#[derive(Default)]
struct StreamOf(Option<(NodeId, u64)>);

impl RaftPeerService {
    /// Checks one inbound batch and hands its messages to their group. `Ok(Some(seq))`:
    /// a probe, to be answered with `seq`; `Err`: the stream is refused and must end.
    fn receive(&self, stream_of: &mut StreamOf, batch: RaftBatch) -> Result<Option<u64>, Status> {
        if stream_of.0.is_none() {
            let mut g = lock(&self.generations);
            let from = NodeId(batch.from);
            let gen = g.entry(from).or_insert(0);
            *gen += 1;
            stream_of.0 = Some((from, *gen));
        }
        if batch.cluster_id != self.cluster_id {
            return Err(Status::permission_denied("cluster id mismatch"));
        }
        // 0: a member from before versions were sent, which spoke version 1.
        if batch.version != PEER_PROTOCOL_VERSION && batch.version != 0 {
            return Err(Status::failed_precondition(format!(
                "peer protocol version {} is not supported (this member speaks {PEER_PROTOCOL_VERSION})",
                batch.version
            )));
        }
        {
            use prost::Message as _;
            self.telemetry
                .peer_received(NodeId(batch.from), batch.encoded_len());
        }
        for t in &batch.traces {
            if t.traceparent.len() <= MAX_TRACEPARENT {
                let key = crate::envelope::RequestKey {
                    origin: NodeId(t.origin),
                    incarnation: t.incarnation,
                    seq: t.seq,
                };
                crate::traces::insert(key, t.traceparent.as_str().into());
            }
        }
        if batch.probe {
            return Ok(Some(batch.seq));
        }
        let mut msgs = Vec::with_capacity(batch.messages.len());
        for m in &batch.messages {
            match codec::decode_message(m) {
                Ok(m) => msgs.push(m),
                Err(e) => {
                    tracing::warn!(from = batch.from, error = %e, "undecodable raft message dropped")
                }
            }
        }
        // A full inbox drops the batch (Raft retransmits); one for a group not hosted
        // here, or stopped, is dropped too. Other groups go on.
        if let Err(e) = self.router.route(batch.group_id, msgs) {
            tracing::debug!(from = batch.from, error = %e, "inbound batch dropped");
        }
        Ok(None)
    }

    /// An inbound stream broke or ended: unless the peer opened another within
    /// [`FAILOVER_GRACE`], it is reported down.
    async fn stream_ended(&self, stream_of: StreamOf) {
        let Some((id, gen)) = stream_of.0 else { return };
        tokio::time::sleep(FAILOVER_GRACE).await;
        if lock(&self.generations).get(&id).copied() != Some(gen) {
            return;
        }
        self.router.peer_down(id);
    }

    /// Serves one direct link ([`crate::direct`]) until it ends or `stop` is set.
    async fn serve_direct(
        &self,
        tcp: tokio::net::TcpStream,
        stop: tokio::sync::watch::Receiver<bool>,
    ) {
        let mut stream_of = StreamOf::default();
        let served = crate::direct::serve_conn(tcp, stop, |batch| {
            match self.receive(&mut stream_of, batch) {
                // Probes are a gRPC stream's; a direct link's liveness is TCP's.
                Ok(_) => true,
                Err(status) => {
                    tracing::warn!(error = %status.message(), "direct link refused");
                    false
                }
            }
        })
        .await;
        if let Err(e) = served {
            tracing::warn!(error = %e, "direct link closed");
        }
        self.stream_ended(stream_of).await;
    }
}

#[tonic::async_trait]
impl Raft for RaftPeerService {
    async fn send(
        &self,
        request: Request<Streaming<RaftBatch>>,
    ) -> Result<Response<BoxStream<RaftAck>>, Status> {
        let mut stream = request.into_inner();
        let (ack_tx, ack_rx) = mpsc::channel(MAX_IN_FLIGHT);
        let service = self.clone();
        tokio::spawn(async move {
            let mut stream_of = StreamOf::default();
            while let Ok(Some(batch)) = stream.message().await {
                match service.receive(&mut stream_of, batch) {
                    Ok(None) => {}
                    // Answered at once; a full answer queue loses the sample, not data.
                    Ok(Some(seq)) => {
                        let _ = ack_tx.try_send(Ok(RaftAck { seq }));
                    }
                    Err(status) => {
                        let _ = ack_tx.send(Err(status)).await;
                        return;
                    }
                }
                // No per-batch acknowledgement: Raft's own responses are the
                // acknowledgements, and an extra frame per batch costs both sides a
                // wake-up. The response stream stays open (and carries a refusal) so the
                // sender notices when this end goes away.
            }
            service.stream_ended(stream_of).await;
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(ack_rx))))
    }

    async fn snapshot(
        &self,
        request: Request<Streaming<SnapshotChunk>>,
    ) -> Result<Response<SnapshotAck>, Status> {
        let mut stream = request.into_inner();
        let first = stream
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("empty snapshot stream"))?;
        let meta = first
            .meta
            .clone()
            .ok_or_else(|| Status::invalid_argument("the first snapshot chunk has no meta"))?;
        if meta.cluster_id != self.cluster_id {
            return Err(Status::permission_denied("cluster id mismatch"));
        }
        if meta.version != PEER_PROTOCOL_VERSION {
            return Err(Status::failed_precondition(format!(
                "peer protocol version {} is not supported (this member speaks {PEER_PROTOCOL_VERSION})",
                meta.version
            )));
        }
        if meta.size > MAX_SNAPSHOT_BYTES {
            return Err(Status::resource_exhausted(format!(
                "snapshot of {} bytes is over the limit of {MAX_SNAPSHOT_BYTES}",
                meta.size
            )));
        }
        // A broken or damaged stream is dropped whole (restart, not resume).
        let mut data = Vec::with_capacity(meta.size.min(64 << 20) as usize);
        let mut chunk = first;
        loop {
            if chunk.offset != data.len() as u64 {
                return Err(Status::invalid_argument(format!(
                    "snapshot chunk at offset {}, expected {}",
                    chunk.offset,
                    data.len()
                )));
            }
            if crc32c::crc32c(&chunk.data) != chunk.crc32c {
                return Err(Status::data_loss(format!(
                    "snapshot chunk at offset {} fails its checksum",
                    chunk.offset
                )));
            }
            if data.len() as u64 + chunk.data.len() as u64 > meta.size {
                return Err(Status::invalid_argument("snapshot longer than announced"));
            }
            data.extend_from_slice(&chunk.data);
            if chunk.last {
                break;
            }
            chunk = stream
                .message()
                .await?
                .ok_or_else(|| Status::aborted("snapshot stream ended before its last chunk"))?;
        }
        if data.len() as u64 != meta.size {
            return Err(Status::invalid_argument(format!(
                "snapshot of {} bytes announced, {} received",
                meta.size,
                data.len()
            )));
        }
        let mut msg = codec::decode_message(&meta.message)
            .map_err(|e| Status::invalid_argument(format!("snapshot message: {e}")))?;
        let Some(snap) = msg.snapshot.as_mut() else {
            return Err(Status::invalid_argument(
                "snapshot message without a snapshot",
            ));
        };
        snap.data = data;
        let bytes_received = meta.size;
        self.router
            .route(meta.group_id, vec![msg])
            .map_err(|e| Status::unavailable(e.to_string()))?;
        Ok(Response::new(SnapshotAck {
            index: meta.index,
            bytes_received,
        }))
    }
}

/// Serves `service` (Raft) and, when given, the `extra` services (gossip, replicas) on
/// `listener` until `shutdown` completes. Without TLS, a connection that opens with
/// [`crate::direct::MAGIC`] is a direct link, served beside the gRPC services, as is one
/// that opens with the greeting of one of `service`'s other direct services; every other
/// one is handed to the gRPC services.
pub async fn serve(
    listener: tokio::net::TcpListener,
    service: RaftPeerService,
    extra: Option<tonic::service::Routes>,
    tls: Option<concord_tls::Acceptor>,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    let direct = service.clone();
    let routes = match extra {
        Some(routes) => routes.add_service(service.into_server()),
        None => tonic::service::Routes::new(service.into_server()),
    };
    let server = tonic::transport::Server::builder().add_routes(routes);
    if let Some(acceptor) = tls {
        // A peer whose certificate the peer CA did not sign fails the handshake: it
        // reaches none of these services.
        return server
            .serve_with_incoming_shutdown(concord_tls::incoming(listener, acceptor), shutdown)
            .await;
    }
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let (grpc_tx, grpc_conns) = mpsc::channel(64);
    tokio::spawn(accept(listener, direct, grpc_tx, stop));
    // Direct links and the accept loop end with the server: at shutdown, or when this
    // future is dropped (the sender with it).
    let shutdown = async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    };
    server
        .serve_with_incoming_shutdown(ReceiverStream::new(grpc_conns), shutdown)
        .await
}

/// Accepts peer connections until `stop`: each one that opens with
/// [`crate::direct::MAGIC`] is served as a direct link, the others go to `grpc`.
async fn accept(
    listener: tokio::net::TcpListener,
    service: RaftPeerService,
    grpc: mpsc::Sender<std::io::Result<tokio::net::TcpStream>>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stop.wait_for(|s| *s) => return,
            _ = grpc.closed() => return,
        };
        let tcp = match accepted {
            Ok((tcp, _)) => tcp,
            Err(e) => {
                // Out of descriptors, or a connection reset before it was accepted.
                tracing::warn!(error = %e, "peer connection not accepted");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        // Small Raft messages and acks must not wait for Nagle's algorithm (40 ms with
        // delayed ACKs).
        let _ = tcp.set_nodelay(true);
        crate::direct::keep_alive(&tcp);
        let (service, grpc, stop) = (service.clone(), grpc.clone(), stop.clone());
        tokio::spawn(async move {
            let greetings: Vec<&[u8; 8]> = std::iter::once(crate::direct::MAGIC)
                .chain(service.direct_services.iter().map(|(g, _)| *g))
                .collect();
            match crate::direct::classify(&tcp, &greetings).await {
                Some(0) => match service.link_runtime.clone() {
                    Some(rt) => {
                        // A socket belongs to the reactor that registered it: leave the
                        // accepting runtime's, join the driver's.
                        let tcp = match tcp.into_std() {
                            Ok(tcp) => tcp,
                            Err(e) => {
                                tracing::warn!(error = %e, "direct link not moved");
                                return;
                            }
                        };
                        rt.spawn(async move {
                            match tokio::net::TcpStream::from_std(tcp) {
                                Ok(tcp) => service.serve_direct(tcp, stop).await,
                                Err(e) => tracing::warn!(error = %e, "direct link not moved"),
                            }
                        });
                    }
                    None => service.serve_direct(tcp, stop).await,
                },
                Some(i) => {
                    let serve = service.direct_services[i - 1].1.clone();
                    serve(tcp, stop).await
                }
                None => {
                    let _ = grpc.send(Ok(tcp)).await;
                }
            }
        });
    }
}
