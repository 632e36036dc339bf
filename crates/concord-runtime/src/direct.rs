//! Raft batches written straight onto a TCP connection: the fast path of
//! [`crate::grpc::GrpcTransport`] between `http://` peers. The pieces ([`dial`],
//! [`accept_greeting`], [`frame`], [`read_frames`], [`DirectLink`], [`classify`]) also carry
//! the AP replica calls (greeting [`CALLS_MAGIC`], concord-server's `ap::batch`).
//!
//! The gRPC `Send` stream costs every batch several hand-offs between tasks before it
//! reaches the socket (the transport's queue, the peer task, hyper's body pipe, the HTTP/2
//! connection task) and as many on the receiving side. A put from a single client waits
//! for two such crossings (the append to a follower, its acknowledgement), and a ReadIndex
//! read for two more. On a *direct link* the sender's thread — the Raft driver — encodes
//! the batch and writes it to the socket itself; on the receiving side one task reads the
//! socket and hands each batch to its group's inbox — on the driver's own thread when the
//! server says so ([`crate::RaftPeerService::with_link_runtime`]), so the driver is not
//! woken by another thread either.
//!
//! # Protocol
//!
//! The link is a TCP connection to the peer's usual peer URL. The dialler writes
//! [`MAGIC`]; a member that speaks direct links (it tells the connection apart from
//! HTTP/2 by those first bytes, [`crate::grpc::serve`]) writes [`MAGIC`] back, and from then
//! on the dialler sends frames — a `u32` little-endian length, then one protobuf
//! `RaftBatch`, the message of the gRPC stream, checked by the receiver exactly as on that
//! stream (cluster id, peer protocol version) — and the listener sends nothing more. A
//! member that answers something else or closes the connection (an older build, whose
//! HTTP/2 server refuses the greeting) is asked again after [`RETRY_UNSUPPORTED`];
//! meanwhile the gRPC stream carries everything. One that says nothing for 2 s (paused,
//! overloaded) is dialled again after the usual backoff.
//!
//! # Guarantees
//!
//! 1. [`DirectLink::send`] never blocks: a frame the socket does not take at once waits,
//!    whole, behind the frames queued before it, written by the link's task when the
//!    socket is writable; once more than [`MAX_PENDING_BYTES`] wait, frames are refused
//!    (the caller reports the peer unreachable, as with a full gRPC queue).
//! 2. Frames on one connection arrive whole and in order. A batch sent on a direct link
//!    and the next one on the gRPC stream (the link broke in between, or a snapshot goes
//!    out) may arrive out of order; Raft tolerates reordered and lost messages, and a
//!    snapshot's followers wait for it on the gRPC stream (`GrpcTransport`).
//! 3. A link whose data stays unacknowledged for [`USER_TIMEOUT`] is closed by the kernel
//!    (`TCP_USER_TIMEOUT`) and dialled again, so a healed partition does not wait for
//!    TCP's retransmission backoff.
//! 4. A malformed frame (over its limit — [`MAX_FRAME_BYTES`] for Raft — or undecodable)
//!    closes the connection; nothing is routed from it, nothing panics.
//!
//! TLS peers (`https://`) use the gRPC stream only.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::BytesMut;
use concord_raft::NodeId;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::TcpStream;
use tokio::sync::Notify;

/// The first bytes of a direct link, written by both ends. An HTTP/2 connection starts
/// with `PRI * HTTP/2.0`, a TLS one with the byte 0x16: neither can be taken for it.
pub const MAGIC: &[u8; 8] = b"CNCRD\x00D1";
/// Bytes waiting for the socket, per link, before frames are refused.
pub const MAX_PENDING_BYTES: usize = 64 << 20;
/// Largest frame a Raft link's receiver accepts (snapshots do not travel on direct links).
pub const MAX_FRAME_BYTES: usize = 256 << 20;
/// How long written data may stay unacknowledged before the kernel closes the link.
pub const USER_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a member that did not answer [`MAGIC`] is left to the gRPC stream.
pub const RETRY_UNSUPPORTED: Duration = Duration::from_secs(60);
/// How long an accepted connection may take to show its first bytes.
pub const CLASSIFY_TIMEOUT: Duration = Duration::from_secs(10);

/// The first bytes of a connection that carries the AP replica calls of
/// `concord.peer.v1.Replica/Calls` as frames (concord-server's `ap::batch`).
pub const CALLS_MAGIC: &[u8; 8] = b"CNCRD\x00C1";

/// One frame: the length, then the encoded message.
pub fn frame(msg: &impl prost::Message) -> Vec<u8> {
    let len = msg.encoded_len();
    let mut out = Vec::with_capacity(4 + len);
    out.extend_from_slice(&(len as u32).to_le_bytes());
    // Writing into a Vec cannot fail.
    let _ = msg.encode(&mut out);
    out
}

/// The `host:port` of an `http://` peer URL: a direct link is dialled there. None for
/// `https://` (direct links carry no TLS) and for URLs without an explicit port.
pub fn addr_of(url: &str) -> Option<String> {
    let rest = url.strip_prefix("http://")?;
    let authority = rest.split('/').next()?;
    let (_, port) = authority.rsplit_once(':')?;
    port.parse::<u16>().ok()?;
    Some(authority.to_string())
}

/// The sending side of one direct link to a peer, shared by the transport (which writes
/// frames from the caller's thread) and the link's task (which connects, flushes what the
/// socket did not take at once, and notices the connection's end).
#[derive(Default)]
pub struct DirectLink {
    state: Mutex<Option<Conn>>,
    up: AtomicBool,
    /// Wakes the link's task: bytes are pending, or the connection broke.
    wake: Notify,
}

struct Conn {
    tx: OwnedWriteHalf,
    pending: Vec<u8>,
    broken: bool,
}

impl DirectLink {
    fn lock(&self) -> MutexGuard<'_, Option<Conn>> {
        // Plain data; a panic elsewhere leaves it consistent.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether a connection is up (frames sent now go on it).
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    /// Writes `frame` to the socket now if nothing waits before it, or queues it behind
    /// what does. False if there is no connection, it broke, or too much waits already.
    pub fn send(&self, frame: &[u8]) -> bool {
        let mut guard = self.lock();
        let Some(conn) = guard.as_mut().filter(|c| !c.broken) else {
            return false;
        };
        if !conn.pending.is_empty() {
            // One frame may take the queue past the bound (a single large message must
            // still go); none is queued behind it until the queue drains below it.
            if conn.pending.len() > MAX_PENDING_BYTES {
                return false;
            }
            conn.pending.extend_from_slice(frame);
            return true;
        }
        let mut written = 0;
        while written < frame.len() {
            match conn.tx.try_write(&frame[written..]) {
                Ok(n) => written += n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    conn.pending.extend_from_slice(&frame[written..]);
                    drop(guard);
                    self.wake.notify_one();
                    return true;
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => {
                    self.mark_broken(conn);
                    drop(guard);
                    self.wake.notify_one();
                    return false;
                }
            }
        }
        true
    }

    /// Makes `tx` the link's connection (frames sent from now on go on it).
    pub fn install(&self, tx: OwnedWriteHalf) {
        *self.lock() = Some(Conn {
            tx,
            pending: Vec::new(),
            broken: false,
        });
        self.up.store(true, Ordering::Release);
    }

    /// Drops the connection: frames are refused until another is installed. True if
    /// there was one.
    pub fn close(&self) -> bool {
        self.up.store(false, Ordering::Release);
        self.lock().take().is_some()
    }

    fn mark_broken(&self, conn: &mut Conn) {
        conn.broken = true;
        self.up.store(false, Ordering::Release);
    }

    /// Waits until frames are pending, then writes them until nothing is (true) or the
    /// connection broke (false). The task that owns the connection calls it in a loop.
    pub async fn flush_when_pending(&self) -> bool {
        self.wake.notified().await;
        self.flush().await
    }

    /// Writes what is pending until nothing is (true) or the connection broke (false).
    async fn flush(&self) -> bool {
        loop {
            {
                let mut guard = self.lock();
                let Some(conn) = guard.as_mut().filter(|c| !c.broken) else {
                    return false;
                };
                if conn.pending.is_empty() {
                    return true;
                }
                match conn.tx.try_write(&conn.pending) {
                    Ok(n) => {
                        conn.pending.drain(..n);
                        continue;
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(_) => {
                        self.mark_broken(conn);
                        return false;
                    }
                }
            }
            // Waited for without holding the lock across the await: it is taken per poll.
            let writable = std::future::poll_fn(|cx| match self.lock().as_ref() {
                Some(conn) if !conn.broken => {
                    conn.tx.as_ref().poll_write_ready(cx).map(|r| r.is_ok())
                }
                _ => std::task::Poll::Ready(false),
            })
            .await;
            if !writable {
                return false;
            }
        }
    }
}

/// Why a link's connection ended.
enum End {
    /// The transport dropped the link: the task ends.
    Dropped,
    /// The peer answered something other than [`MAGIC`]: it does not speak direct links.
    Unsupported,
    /// The connection failed or ended; dial again after the backoff.
    Failed(String),
}

/// The task of one direct link to `addr` (`host:port`): dials, greets, installs the
/// connection into `link`, flushes and watches it until it ends, and dials again with
/// exponential backoff (50 ms to 2 s). Ends when `stop`'s sender is dropped. `up` hears
/// of every installed connection (`true`) and of its end (`false`).
pub async fn run(
    link: Arc<DirectLink>,
    from: NodeId,
    to: NodeId,
    addr: String,
    mut stop: tokio::sync::oneshot::Receiver<()>,
    up: impl Fn(bool),
) {
    const MIN_BACKOFF: Duration = Duration::from_millis(50);
    const MAX_BACKOFF: Duration = Duration::from_secs(2);
    let mut backoff = MIN_BACKOFF;
    loop {
        let (end, was_up) = tokio::select! {
            r = connect_and_serve(&link, &addr, || up(true)) => r,
            _ = &mut stop => (End::Dropped, false),
        };
        if link.close() {
            up(false);
        }
        let pause = match end {
            End::Dropped => return,
            End::Unsupported => {
                tracing::info!(%from, %to, "peer does not speak direct links; using the gRPC stream");
                RETRY_UNSUPPORTED
            }
            End::Failed(e) => {
                tracing::debug!(%from, %to, error = %e, "direct link ended");
                if was_up {
                    backoff = MIN_BACKOFF;
                }
                let b = backoff;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                b
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = &mut stop => return,
        }
    }
}

/// TCP keepalive on every peer connection a member accepts: one whose dialler vanished
/// without a word (a partition, a host gone) is closed after about a minute instead of
/// holding its task and socket for good.
pub fn keep_alive(tcp: &TcpStream) {
    let ka = socket2::TcpKeepalive::new()
        .with_time(Duration::from_secs(30))
        .with_interval(Duration::from_secs(10))
        .with_retries(3);
    let _ = socket2::SockRef::from(tcp).set_tcp_keepalive(&ka);
}

/// Why [`dial`] gave no connection.
#[derive(Debug)]
pub enum DialError {
    /// The peer answered something other than the greeting: it does not speak this kind
    /// of direct link (an older build).
    Unsupported,
    /// Connecting or greeting failed.
    Failed(String),
}

/// Connects to `addr` (`host:port`) and greets with `magic`; the peer's answer must be
/// `magic` too. The socket is set up as every direct link's: no Nagle delay, and the
/// kernel's [`USER_TIMEOUT`].
pub async fn dial(addr: &str, magic: &[u8; 8]) -> Result<TcpStream, DialError> {
    let mut tcp = match tokio::time::timeout(Duration::from_secs(1), TcpStream::connect(addr)).await
    {
        Ok(Ok(t)) => t,
        Ok(Err(e)) => return Err(DialError::Failed(e.to_string())),
        Err(_) => return Err(DialError::Failed("connect timed out".into())),
    };
    let _ = tcp.set_nodelay(true);
    let _ = socket2::SockRef::from(&tcp).set_tcp_user_timeout(Some(USER_TIMEOUT));
    let greeted = async {
        tcp.write_all(magic).await?;
        let mut answer = [0u8; 8];
        tcp.read_exact(&mut answer).await?;
        Ok::<_, std::io::Error>(answer)
    };
    match tokio::time::timeout(Duration::from_secs(2), greeted).await {
        Ok(Ok(answer)) if &answer == magic => Ok(tcp),
        Ok(Ok(_)) => Err(DialError::Unsupported),
        // An HTTP/2 server closes a connection whose preface is wrong, after its own
        // SETTINGS or a GOAWAY: fewer bytes than the greeting and then the end.
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => Err(DialError::Unsupported),
        Ok(Err(e)) => Err(DialError::Failed(e.to_string())),
        // A member that speaks HTTP/2 only answers at once; one that says nothing is
        // paused or overloaded, and is dialled again after the backoff.
        Err(_) => Err(DialError::Failed("greeting timed out".into())),
    }
}

/// Answers the greeting of an accepted connection that opened with `magic` (not yet
/// read).
pub async fn accept_greeting(tcp: &mut TcpStream, magic: &[u8; 8]) -> Result<(), String> {
    let mut got = [0u8; 8];
    tcp.read_exact(&mut got).await.map_err(|e| e.to_string())?;
    if &got != magic {
        return Err("wrong greeting".into());
    }
    tcp.write_all(magic).await.map_err(|e| e.to_string())
}

async fn connect_and_serve(link: &DirectLink, addr: &str, installed: impl FnOnce()) -> (End, bool) {
    let tcp = match dial(addr, MAGIC).await {
        Ok(tcp) => tcp,
        Err(DialError::Unsupported) => return (End::Unsupported, false),
        Err(DialError::Failed(e)) => return (End::Failed(e), false),
    };
    let (mut rx, tx) = tcp.into_split();
    link.install(tx);
    installed();
    let mut scratch = [0u8; 64];
    loop {
        tokio::select! {
            flushed = link.flush_when_pending() => {
                if !flushed {
                    return (End::Failed("write failed".into()), true);
                }
            }
            // The listener sends nothing after its greeting: a read that returns is the
            // connection's end.
            r = rx.read(&mut scratch) => {
                let why = match r {
                    Ok(0) => "peer closed the link".to_string(),
                    Ok(_) => "peer sent data on a direct link".to_string(),
                    Err(e) => e.to_string(),
                };
                return (End::Failed(why), true);
            }
        }
    }
}

/// Reads frames from `rx` and hands each one's bytes to `on_frame` until the connection
/// ends (Ok), a frame is over `max_frame` bytes (Err), `on_frame` returns false (Ok), or
/// `stop` is set (Ok). Memory grows with what the peer sends, not with what a length
/// announces.
pub async fn read_frames(
    mut rx: impl tokio::io::AsyncRead + Unpin,
    max_frame: usize,
    mut stop: tokio::sync::watch::Receiver<bool>,
    mut on_frame: impl FnMut(bytes::Bytes) -> bool,
) -> Result<(), String> {
    let mut buf = BytesMut::with_capacity(64 << 10);
    loop {
        while buf.len() >= 4 {
            let len = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
            if len > max_frame {
                return Err(format!(
                    "frame of {len} bytes is over the limit of {max_frame}"
                ));
            }
            if buf.len() < 4 + len {
                break;
            }
            let _ = buf.split_to(4);
            if !on_frame(buf.split_to(len).freeze()) {
                return Ok(());
            }
        }
        if buf.capacity() - buf.len() < (16 << 10) {
            buf.reserve(64 << 10);
        }
        tokio::select! {
            r = rx.read_buf(&mut buf) => match r {
                Ok(0) => return Ok(()),
                Ok(_) => {}
                Err(e) => return Err(e.to_string()),
            },
            _ = stop.wait_for(|s| *s) => return Ok(()),
        }
    }
}

/// Serves one accepted Raft direct link (its greeting not yet read): hands each frame's
/// batch to `on_batch` until the connection ends, a frame is malformed, `on_batch`
/// refuses one (false), or `stop` is set.
pub async fn serve_conn(
    mut tcp: TcpStream,
    stop: tokio::sync::watch::Receiver<bool>,
    mut on_batch: impl FnMut(concord_proto::peer::RaftBatch) -> bool,
) -> Result<(), String> {
    use prost::Message as _;
    accept_greeting(&mut tcp, MAGIC).await?;
    let mut malformed = None;
    read_frames(
        tcp,
        MAX_FRAME_BYTES,
        stop,
        |body| match concord_proto::peer::RaftBatch::decode(body) {
            Ok(batch) => on_batch(batch),
            Err(e) => {
                malformed = Some(format!("undecodable frame: {e}"));
                false
            }
        },
    )
    .await?;
    malformed.map_or(Ok(()), Err)
}

/// Which of `magics` `tcp`'s first bytes are (without consuming them); None for
/// anything else, including a connection that shows fewer bytes within
/// [`CLASSIFY_TIMEOUT`].
pub async fn classify(tcp: &TcpStream, magics: &[&[u8; 8]]) -> Option<usize> {
    let check = async {
        let mut buf = [0u8; 8];
        loop {
            let n = tcp.peek(&mut buf).await.ok()?;
            let mut candidates = magics
                .iter()
                .enumerate()
                .filter(|(_, m)| m[..n] == buf[..n]);
            let first = candidates.next();
            if n == 0 || first.is_none() {
                return None;
            }
            if n == buf.len() {
                return first.map(|(i, _)| i);
            }
            // A prefix so far: wait for more.
            tcp.readable().await.ok()?;
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    };
    tokio::time::timeout(CLASSIFY_TIMEOUT, check)
        .await
        .ok()
        .flatten()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use concord_raft::{Message, MessageType};
    use tokio::sync::oneshot;

    use super::*;
    use crate::grpc::{serve, GrpcTransport, RaftPeerService};
    use crate::transport::{PeerTransport, Router, DEFAULT_GROUP};

    const CLUSTER: u64 = 0xd1;

    fn heartbeat(term: u64) -> Message {
        Message {
            msg_type: MessageType::Heartbeat,
            from: NodeId(1),
            to: NodeId(2),
            term,
            ..Message::default()
        }
    }

    /// A member serving peers on loopback, as `concord server` does; its group 0 inbox.
    async fn member() -> (String, crate::transport::Inbox, oneshot::Sender<()>) {
        member_with(|s| s).await
    }

    /// [`member`], its peer service set up by `setup`.
    async fn member_with(
        setup: impl FnOnce(RaftPeerService) -> RaftPeerService,
    ) -> (String, crate::transport::Inbox, oneshot::Sender<()>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let router = Router::new();
        let inbox = router.register(DEFAULT_GROUP);
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(serve(
            listener,
            setup(RaftPeerService::new(CLUSTER, router)),
            None,
            None,
            async move {
                let _ = stopped.await;
            },
        ));
        (url, inbox, stop)
    }

    async fn until(what: &str, mut f: impl FnMut() -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !f() {
            assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn batches_go_on_the_direct_link_in_order() {
        let (url, mut inbox, _stop) = member().await;
        let t = GrpcTransport::new(NodeId(1), CLUSTER, BTreeMap::from([(NodeId(2), url)]));
        until("the direct link", || t.direct_link_up(NodeId(2))).await;
        for term in 1..=100 {
            t.send_group(NodeId(2), DEFAULT_GROUP, vec![heartbeat(term)])
                .expect("sent");
        }
        for term in 1..=100 {
            let got = tokio::time::timeout(Duration::from_secs(10), inbox.recv())
                .await
                .expect("delivered")
                .expect("inbox open");
            assert_eq!(got, vec![heartbeat(term)]);
        }
        assert_eq!(t.direct_batches(), 100);
    }

    /// Records the name of the thread that read each batch.
    #[derive(Debug, Default)]
    struct ReaderThreads(std::sync::Mutex<Vec<Option<String>>>);

    impl crate::telemetry::Telemetry for ReaderThreads {
        fn peer_received(&self, _peer: NodeId, _bytes: usize) {
            let name = std::thread::current().name().map(str::to_string);
            self.0.lock().unwrap().push(name);
        }
    }

    /// Sends 20 batches to a member whose links are read on `link_runtime` (if any);
    /// returns the names of the threads that read them.
    async fn reader_threads(link_runtime: Option<tokio::runtime::Handle>) -> Vec<Option<String>> {
        let readers = Arc::new(ReaderThreads::default());
        let telemetry = readers.clone();
        let (url, mut inbox, _stop) =
            member_with(move |s| s.with_telemetry(telemetry).with_link_runtime(link_runtime)).await;
        let t = GrpcTransport::new(NodeId(1), CLUSTER, BTreeMap::from([(NodeId(2), url)]));
        until("the direct link", || t.direct_link_up(NodeId(2))).await;
        for term in 1..=20 {
            t.send_group(NodeId(2), DEFAULT_GROUP, vec![heartbeat(term)])
                .expect("sent");
            let got = tokio::time::timeout(Duration::from_secs(10), inbox.recv()).await;
            assert_eq!(got.ok().flatten(), Some(vec![heartbeat(term)]));
        }
        let names = readers.0.lock().unwrap().clone();
        names
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn links_are_read_on_the_link_runtime_when_one_is_given() {
        // A driver's thread: a current-thread runtime of its own, running until told.
        let (rt_tx, rt_rx) = std::sync::mpsc::channel();
        let (stop, stopped) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("link-reader".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("runtime");
                rt_tx.send(rt.handle().clone()).expect("handle sent");
                rt.block_on(async move {
                    let _ = stopped.await;
                });
            })
            .expect("thread");
        let rt = rt_rx.recv().expect("handle");
        let on_it = reader_threads(Some(rt)).await;
        let _ = stop.send(());
        thread.join().expect("joined");
        // Every batch of the direct link there; the gRPC stream's probe, if one came, on
        // a worker of the accepting runtime.
        let there = |names: &[Option<String>]| {
            names
                .iter()
                .filter(|n| n.as_deref() == Some("link-reader"))
                .count()
        };
        assert_eq!(there(&on_it), 20, "{on_it:?}");
        // The control: without one, the accepting runtime's workers read them.
        let elsewhere = reader_threads(None).await;
        assert!(elsewhere.len() >= 20);
        assert_eq!(there(&elsewhere), 0, "{elsewhere:?}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_snapshot_refused_before_the_stream_is_up_does_not_hold_the_link_back() {
        let (url, mut inbox, _stop) = member().await;
        let t = GrpcTransport::new(NodeId(1), CLUSTER, BTreeMap::from([(NodeId(2), url)]));
        // At once, before the gRPC stream can be up: refused, and forgotten.
        let mut snap = heartbeat(1);
        snap.msg_type = MessageType::Snapshot;
        snap.snapshot = Some(concord_raft::Snapshot::default());
        let _ = t.send_group(NodeId(2), DEFAULT_GROUP, vec![snap]);
        until("the direct link", || t.direct_link_up(NodeId(2))).await;
        t.send_group(NodeId(2), DEFAULT_GROUP, vec![heartbeat(2)])
            .expect("sent");
        let got = tokio::time::timeout(Duration::from_secs(10), inbox.recv()).await;
        assert_eq!(got.ok().flatten(), Some(vec![heartbeat(2)]));
        assert_eq!(t.direct_batches(), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn frames_larger_than_the_socket_takes_at_once_arrive_whole() {
        let (url, mut inbox, _stop) = member().await;
        let t = GrpcTransport::new(NodeId(1), CLUSTER, BTreeMap::from([(NodeId(2), url)]));
        until("the direct link", || t.direct_link_up(NodeId(2))).await;
        // 64 batches of 1 MiB: more than a loopback socket buffers, so most of them wait
        // in the link's queue for the socket.
        let mut big = heartbeat(7);
        big.msg_type = MessageType::Append;
        big.entries = vec![concord_raft::Entry {
            data: vec![0xab; 1 << 20],
            ..concord_raft::Entry::default()
        }];
        for _ in 0..64 {
            t.send_group(NodeId(2), DEFAULT_GROUP, vec![big.clone()])
                .expect("queued");
        }
        for _ in 0..64 {
            let got = tokio::time::timeout(Duration::from_secs(30), inbox.recv())
                .await
                .expect("delivered")
                .expect("inbox open");
            assert_eq!(got, vec![big.clone()]);
        }
        assert_eq!(t.direct_batches(), 64);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_link_from_another_cluster_delivers_nothing() {
        let (url, mut inbox, _stop) = member().await;
        let t = GrpcTransport::new(NodeId(1), CLUSTER + 1, BTreeMap::from([(NodeId(2), url)]));
        until("the direct link", || t.direct_link_up(NodeId(2))).await;
        let _ = t.send_group(NodeId(2), DEFAULT_GROUP, vec![heartbeat(1)]);
        until("the refused link to close", || !t.direct_link_up(NodeId(2))).await;
        let got = tokio::time::timeout(Duration::from_millis(300), inbox.recv()).await;
        assert!(
            got.is_err(),
            "a batch of another cluster was delivered: {got:?}"
        );
    }

    async fn greeted(url: &str) -> TcpStream {
        let addr = url.trim_start_matches("http://");
        let mut tcp = TcpStream::connect(addr).await.expect("connect");
        tcp.write_all(MAGIC).await.expect("greet");
        let mut answer = [0u8; MAGIC.len()];
        tcp.read_exact(&mut answer).await.expect("answer");
        assert_eq!(&answer, MAGIC);
        tcp
    }

    async fn closed_by_peer(tcp: &mut TcpStream) -> bool {
        let mut buf = [0u8; 16];
        matches!(
            tokio::time::timeout(Duration::from_secs(10), tcp.read(&mut buf)).await,
            Ok(Ok(0)) | Ok(Err(_))
        )
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn malformed_frames_close_the_link_and_deliver_nothing() {
        let (url, mut inbox, _stop) = member().await;
        // A length over the limit: refused before anything is read or allocated.
        let mut tcp = greeted(&url).await;
        let len = (MAX_FRAME_BYTES as u32 + 1).to_le_bytes();
        tcp.write_all(&len).await.expect("write");
        assert!(closed_by_peer(&mut tcp).await);
        // A frame that is not a batch.
        let mut tcp = greeted(&url).await;
        let mut garbage = 6u32.to_le_bytes().to_vec();
        garbage.extend_from_slice(&[0xff; 6]);
        tcp.write_all(&garbage).await.expect("write");
        assert!(closed_by_peer(&mut tcp).await);
        // Half a frame, then the end.
        let mut tcp = greeted(&url).await;
        tcp.write_all(&100u32.to_le_bytes()).await.expect("write");
        tcp.write_all(&[1, 2, 3]).await.expect("write");
        drop(tcp);
        let got = tokio::time::timeout(Duration::from_millis(300), inbox.recv()).await;
        assert!(got.is_err(), "something was delivered: {got:?}");
        // The member still serves a well-formed link.
        let mut tcp = greeted(&url).await;
        let batch = crate::grpc::tests_batch(CLUSTER, NodeId(1), NodeId(2), &[heartbeat(3)]);
        tcp.write_all(&frame(&batch)).await.expect("write");
        let got = tokio::time::timeout(Duration::from_secs(10), inbox.recv())
            .await
            .expect("delivered");
        assert_eq!(got, Some(vec![heartbeat(3)]));
    }

    /// Records what the transport reports of its direct links.
    #[derive(Debug, Default)]
    struct LinkStates(Mutex<Vec<(NodeId, bool)>>);

    impl crate::telemetry::Telemetry for LinkStates {
        fn peer_direct_link(&self, peer: NodeId, up: bool) {
            self.0.lock().unwrap().push((peer, up));
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_link_is_reported_up_and_then_down_when_it_ends() {
        let (url, _inbox, stop) = member().await;
        let states = Arc::new(LinkStates::default());
        let t = GrpcTransport::with_telemetry(
            NodeId(1),
            CLUSTER,
            BTreeMap::from([(NodeId(2), url)]),
            concord_tls::Dialer::default(),
            states.clone(),
        );
        until("the direct link", || t.direct_link_up(NodeId(2))).await;
        until("reported up", || !states.0.lock().unwrap().is_empty()).await;
        // The member stops: its end of the link closes.
        drop(stop);
        until("reported down", || states.0.lock().unwrap().len() >= 2).await;
        let seen = states.0.lock().unwrap().clone();
        assert_eq!(seen[..2], [(NodeId(2), true), (NodeId(2), false)]);
        assert!(!t.direct_link_up(NodeId(2)));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_member_without_direct_links_is_sent_to_on_the_grpc_stream() {
        // An older build: the Raft service alone, every connection HTTP/2.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let router = Router::new();
        let mut inbox = router.register(DEFAULT_GROUP);
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(RaftPeerService::new(CLUSTER, router).into_server())
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        let t = GrpcTransport::new(NodeId(1), CLUSTER, BTreeMap::from([(NodeId(2), url)]));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let got = loop {
            assert!(tokio::time::Instant::now() < deadline, "never delivered");
            if t.send_group(NodeId(2), DEFAULT_GROUP, vec![heartbeat(1)])
                .is_ok()
            {
                if let Ok(got) =
                    tokio::time::timeout(Duration::from_millis(200), inbox.recv()).await
                {
                    break got;
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert_eq!(got, Some(vec![heartbeat(1)]));
        assert!(!t.direct_link_up(NodeId(2)));
        assert_eq!(t.direct_batches(), 0);
    }
}
