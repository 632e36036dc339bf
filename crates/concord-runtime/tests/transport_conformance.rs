//! One conformance suite for every peer transport: the in-process [`LocalNetwork`] and the
//! gRPC transport on loopback (on its stream alone, and with its direct links) run the
//! same checks, so tests on the first say something about the others.
//!
//! What every transport must do: deliver each link's batches in order and intact (large
//! ones too), keep groups apart on one connection, refuse a batch for an unknown peer as
//! unreachable, drop (never misdeliver) a batch for a group the peer does not host, and
//! deliver a snapshot (chunked on the wire by the gRPC transport) whole and in order.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use concord_raft::{Entry, Message, MessageType, NodeId, Snapshot, SnapshotMetadata};
use concord_runtime::grpc::{serve, GrpcTransport, RaftPeerService};
use concord_runtime::transport::{Inbox, LocalNetwork, PeerTransport, Router, TransportError};

/// The receiving node of every pair.
const N2: NodeId = NodeId(2);

const CLUSTER: u64 = 0xc0de;
const WAIT: Duration = Duration::from_secs(20);

/// Two nodes, 1 and 2, joined by the transport under test.
struct Pair {
    t1: Arc<dyn PeerTransport>,
    r2: Router,
    // Keeps servers alive for the test's duration.
    _keep: Vec<tokio::sync::oneshot::Sender<()>>,
}

async fn local_pair() -> Pair {
    let net = LocalNetwork::new();
    let (t1, _r1) = net.attach(NodeId(1));
    let (_t2, r2) = net.attach(N2);
    Pair {
        t1: Arc::new(t1),
        r2,
        _keep: Vec::new(),
    }
}

/// Two members on loopback; batches on the direct link (once it is up: the suite starts
/// then) or on the gRPC stream only.
async fn grpc_pair(direct: bool) -> Pair {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let r2 = Router::new();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(serve(
        listener,
        RaftPeerService::new(CLUSTER, r2.clone()),
        None,
        None,
        async move {
            let _ = stopped.await;
        },
    ));
    let t1 = GrpcTransport::new(NodeId(1), CLUSTER, BTreeMap::new());
    t1.set_direct_links(direct);
    t1.set_peer(N2, url);
    // Small chunks, so the snapshot below takes many.
    t1.set_snapshot_chunk_bytes(64 << 10);
    // Batches sent while the direct link comes up may overtake those on the stream.
    let deadline = tokio::time::Instant::now() + WAIT;
    while direct && !t1.direct_link_up(N2) {
        assert!(tokio::time::Instant::now() < deadline, "no direct link");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Pair {
        t1: Arc::new(t1),
        r2,
        _keep: vec![stop],
    }
}

fn msg(term: u64, payload: usize) -> Message {
    Message {
        msg_type: MessageType::Append,
        from: NodeId(1),
        to: NodeId(2),
        term,
        entries: vec![Entry {
            term,
            index: term,
            data: (0..payload).map(|i| (i % 251) as u8).collect(),
            ..Entry::default()
        }],
        ..Message::default()
    }
}

/// Sends until the transport accepts (a network transport reports unreachable until its
/// connection is up).
async fn send(t: &dyn PeerTransport, to: NodeId, group: u64, msgs: Vec<Message>) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match t.send_group(to, group, msgs.clone()) {
            Ok(()) => return,
            Err(e) => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "never accepted: {e}"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

async fn recv(inbox: &mut Inbox) -> Vec<Message> {
    tokio::time::timeout(WAIT, inbox.recv())
        .await
        .expect("a batch within the deadline")
        .expect("inbox open")
}

async fn suite(pair: Pair) {
    let mut a = pair.r2.register(1);
    let mut b = pair.r2.register(2);
    // The first batch may take a connection to get through: wait until one arrives.
    send(&*pair.t1, N2, 1, vec![msg(1, 8)]).await;
    assert_eq!(recv(&mut a).await, vec![msg(1, 8)]);

    // Per link and group: in order, intact, nothing duplicated.
    for term in 2..50 {
        send(&*pair.t1, N2, 1, vec![msg(term, 16), msg(term + 1000, 0)]).await;
    }
    for term in 2..50 {
        assert_eq!(recv(&mut a).await, vec![msg(term, 16), msg(term + 1000, 0)]);
    }

    // Groups share the connection and are routed apart.
    send(&*pair.t1, N2, 2, vec![msg(7, 4)]).await;
    send(&*pair.t1, N2, 1, vec![msg(8, 4)]).await;
    assert_eq!(recv(&mut b).await, vec![msg(7, 4)]);
    assert_eq!(recv(&mut a).await, vec![msg(8, 4)]);

    // A batch for a group the peer does not host is dropped, not misdelivered.
    send(&*pair.t1, N2, 99, vec![msg(9, 4)]).await;
    send(&*pair.t1, N2, 1, vec![msg(10, 4)]).await;
    assert_eq!(recv(&mut a).await, vec![msg(10, 4)]);
    assert!(b.try_recv().is_err());

    // A large batch (a snapshot-sized message) arrives intact.
    let big = vec![msg(11, 4 << 20)];
    send(&*pair.t1, N2, 1, big.clone()).await;
    assert_eq!(recv(&mut a).await, big);

    // A snapshot message (several chunks on the gRPC transport) arrives whole, in order
    // with the messages around it.
    let snap = Message {
        msg_type: MessageType::Snapshot,
        from: NodeId(1),
        to: NodeId(2),
        term: 3,
        snapshot: Some(Snapshot {
            metadata: SnapshotMetadata {
                index: 40,
                term: 3,
                ..SnapshotMetadata::default()
            },
            data: (0..(3 << 20) + 17).map(|i| (i % 253) as u8).collect(),
        }),
        ..Message::default()
    };
    send(&*pair.t1, N2, 1, vec![msg(13, 1), snap.clone(), msg(14, 1)]).await;
    let mut got = Vec::new();
    while got.len() < 3 {
        got.extend(recv(&mut a).await);
    }
    assert_eq!(got, vec![msg(13, 1), snap, msg(14, 1)]);

    // An unknown peer is unreachable at once.
    assert_eq!(
        pair.t1.send_group(NodeId(3), 1, vec![msg(12, 0)]),
        Err(TransportError::Unreachable(NodeId(3)))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_network_conforms() {
    suite(local_pair().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_transport_conforms() {
    suite(grpc_pair(false).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_transport_with_direct_links_conforms() {
    suite(grpc_pair(true).await).await;
}
