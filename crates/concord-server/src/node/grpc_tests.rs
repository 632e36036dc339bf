//! A 3-node cluster on loopback gRPC (with its direct links): elects, commits through
//! every node, converges, including a node that starts late (its peers reconnect with
//! backoff) and catches up.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use concord_raft::{NodeId, StateRole};
use concord_storage::mvcc::types::{Command, PutRequest};
use tokio::sync::oneshot;

use super::{start, NodeConfig, NodeHandle};
use concord_runtime::grpc::{serve, GrpcTransport, RaftPeerService};
use concord_runtime::transport::{GroupTransport, Router, DEFAULT_GROUP};

const N1: NodeId = NodeId(1);
const N2: NodeId = NodeId(2);
const N3: NodeId = NodeId(3);

const CLUSTER: u64 = 0xc0c0;

async fn wait_for<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn put(node: &NodeHandle, key: String) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let cmd = Command::Put(PutRequest {
            key: key.clone().into_bytes(),
            value: b"v".to_vec(),
            ..PutRequest::default()
        });
        if node.propose(cmd).await.is_ok() {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "put {key} never acknowledged"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A loopback listener per node, and the URLs they answer on.
async fn listeners(
    ids: &[NodeId],
) -> (
    BTreeMap<NodeId, tokio::net::TcpListener>,
    BTreeMap<NodeId, String>,
) {
    let mut listeners = BTreeMap::new();
    let mut urls = BTreeMap::new();
    for &id in ids {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        urls.insert(
            id,
            format!("http://{}", l.local_addr().expect("local addr")),
        );
        listeners.insert(id, l);
    }
    (listeners, urls)
}

fn temp_dirs(n: usize) -> Vec<tempfile::TempDir> {
    (0..n)
        .map(|_| tempfile::tempdir().expect("temp dir"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_nodes_over_loopback_grpc_commit_and_converge() {
    let ids: Vec<NodeId> = vec![N1, N2, N3];
    let (mut listeners, urls) = listeners(&ids).await;
    let dirs = temp_dirs(ids.len());
    let mut nodes = BTreeMap::new();
    let mut stops = Vec::new();
    let mut transports = Vec::new();
    let mut launch = |id: NodeId,
                      listener: tokio::net::TcpListener,
                      nodes: &mut BTreeMap<NodeId, NodeHandle>| {
        let router = Router::new();
        let in_rx = router.register(DEFAULT_GROUP);
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        tokio::spawn(serve(
            listener,
            RaftPeerService::new(CLUSTER, router),
            None,
            None,
            async move {
                let _ = stop_rx.await;
            },
        ));
        stops.push(stop_tx);
        let grpc = Arc::new(GrpcTransport::new(id, CLUSTER, urls.clone()));
        transports.push(grpc.clone());
        let transport = GroupTransport::new(grpc, DEFAULT_GROUP);
        let mut cfg = NodeConfig::new(id, ids.clone(), dirs[(id.get() - 1) as usize].path());
        cfg.raft.tick = Duration::from_millis(20);
        cfg.raft.request_timeout = Duration::from_secs(5);
        let node = start(cfg, Arc::new(transport), in_rx).expect("node starts");
        nodes.insert(id, node);
    };
    // Node 3 comes up late: the others keep retrying its connection with backoff.
    let late = listeners.remove(&N3).expect("listener");
    for id in [N1, N2] {
        let listener = listeners.remove(&id).expect("listener");
        launch(id, listener, &mut nodes);
    }
    let leader = wait_for("a leader", || {
        let st: Vec<_> = nodes.values().map(|n| n.status()).collect();
        let l = st.iter().find(|s| s.role == StateRole::Leader)?.id;
        st.iter().all(|s| s.leader == Some(l)).then_some(l)
    })
    .await;
    assert!([N1, N2].contains(&leader));
    for (id, node) in &nodes {
        for i in 0..10 {
            put(node, format!("k{id}-{i}")).await;
        }
    }
    launch(N3, late, &mut nodes);
    for i in 0..10 {
        put(&nodes[&N3], format!("k3-{i}")).await;
    }
    wait_for("stores to converge", || {
        let hashes: Vec<_> = nodes.values().map(|n| n.hash_kv().ok()).collect();
        let first = hashes[0]?;
        (first.1 >= 30 && hashes.iter().all(|h| *h == Some(first))).then_some(())
    })
    .await;
    // Most batches took the direct links (the gRPC streams carry those sent before).
    let direct: u64 = transports.iter().map(|t| t.direct_batches()).sum();
    assert!(direct > 0, "no batch went on a direct link");
    for node in nodes.values() {
        node.shutdown().await.expect("shutdown");
    }
    for s in stops {
        let _ = s.send(());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn followers_replace_a_killed_leader_without_waiting_for_the_election_timeout() {
    let ids: Vec<NodeId> = vec![N1, N2, N3];
    let (mut listeners, urls) = listeners(&ids).await;
    let dirs = temp_dirs(ids.len());
    let mut nodes = BTreeMap::new();
    let mut stops = BTreeMap::new();
    for &id in &ids {
        let router = Router::new();
        let in_rx = router.register(DEFAULT_GROUP);
        let service = RaftPeerService::new(CLUSTER, router.clone());
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        tokio::spawn(serve(
            listeners.remove(&id).expect("listener"),
            service.clone(),
            None,
            None,
            async move {
                let _ = stop_rx.await;
            },
        ));
        stops.insert(id, stop_tx);
        let mut cfg = NodeConfig::new(id, ids.clone(), dirs[(id.get() - 1) as usize].path());
        cfg.raft.tick = Duration::from_millis(20);
        // An election timeout of 100-200 s: far past the test's deadlines, so only the
        // fast-failover path can elect a new leader in time.
        cfg.raft.election_ticks = 5000;
        cfg.raft.request_timeout = Duration::from_secs(5);
        let transport = GroupTransport::new(
            Arc::new(GrpcTransport::new(id, CLUSTER, urls.clone())),
            DEFAULT_GROUP,
        );
        let node = start(cfg, Arc::new(transport), in_rx).expect("node starts");
        let hook_node = node.clone();
        router.set_peer_down_hook(
            DEFAULT_GROUP,
            Arc::new(move |peer| hook_node.report_peer_down(peer)),
        );
        nodes.insert(id, node);
    }
    // Elect node 1 explicitly (retrying until the peer streams are up).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !nodes.values().all(|n| n.status().leader == Some(N1)) {
        assert!(tokio::time::Instant::now() < deadline, "node 1 never led");
        let _ = nodes[&N1].campaign().await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    put(&nodes[&N2], "before".to_string()).await;
    let old_term = nodes[&N2].status().term;
    let old = nodes.remove(&N1).expect("node 1");
    old.shutdown().await.expect("shutdown");
    if let Some(s) = stops.remove(&N1) {
        let _ = s.send(());
    }
    let new = wait_for("a new leader", || {
        eprintln!(
            "{:?}",
            nodes.values().map(|n| n.status()).collect::<Vec<_>>()
        );
        nodes.values().find_map(|n| {
            let s = n.status();
            (s.role == StateRole::Leader && s.term > old_term).then_some(s.id)
        })
    })
    .await;
    assert!(new == N2 || new == N3);
    put(&nodes[&N2], "after".to_string()).await;
    for node in nodes.values() {
        node.shutdown().await.expect("shutdown");
    }
    for (_, s) in stops {
        let _ = s.send(());
    }
}

/// A follower that comes up after the leader compacted its log is caught up by a snapshot
/// larger than many chunks, over gRPC, while every link loses batches at random; it ends
/// with the same keyspace.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn far_behind_follower_gets_a_chunked_snapshot_under_message_loss() {
    use concord_runtime::faults::FaultyTransport;

    let ids: Vec<NodeId> = vec![N1, N2, N3];
    let (mut listeners, urls) = listeners(&ids).await;
    let dirs = temp_dirs(ids.len());
    let mut nodes = BTreeMap::new();
    let mut faults = Vec::new();
    let mut stops = Vec::new();
    let mut launch = |id: NodeId, nodes: &mut BTreeMap<NodeId, NodeHandle>| {
        let router = Router::new();
        let in_rx = router.register(DEFAULT_GROUP);
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        tokio::spawn(serve(
            listeners.remove(&id).expect("listener"),
            RaftPeerService::new(CLUSTER, router),
            None,
            None,
            async move {
                let _ = stop_rx.await;
            },
        ));
        stops.push(stop_tx);
        let grpc = Arc::new(GrpcTransport::new(id, CLUSTER, urls.clone()));
        grpc.set_snapshot_chunk_bytes(16 << 10);
        let faulty = Arc::new(FaultyTransport::new(grpc, id.get()));
        faults.push(faulty.clone());
        let mut cfg = NodeConfig::new(id, ids.clone(), dirs[(id.get() - 1) as usize].path());
        cfg.raft.tick = Duration::from_millis(20);
        cfg.raft.request_timeout = Duration::from_secs(5);
        cfg.raft.snapshot_count = 20;
        cfg.raft.snapshot_catch_up_entries = 5;
        let transport = GroupTransport::new(faulty, DEFAULT_GROUP);
        let node = start(cfg, Arc::new(transport), in_rx).expect("node starts");
        nodes.insert(id, node);
    };
    launch(N1, &mut nodes);
    launch(N2, &mut nodes);
    let leader = wait_for("a leader", || {
        let st: Vec<_> = nodes.values().map(|n| n.status()).collect();
        let l = st.iter().find(|s| s.role == StateRole::Leader)?.id;
        st.iter().all(|s| s.leader == Some(l)).then_some(l)
    })
    .await;
    // Enough data that the store image is many 16 KiB chunks, and enough entries that the
    // leader's WAL no longer holds the start of the log.
    let value = vec![b'x'; 2048];
    for i in 0..200 {
        let cmd = Command::Put(PutRequest {
            key: format!("key-{i:04}").into_bytes(),
            value: value.clone(),
            ..PutRequest::default()
        });
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while nodes[&leader].propose(cmd.clone()).await.is_err() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "put {i} never acknowledged"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    wait_for("the leader to compact its log", || {
        (nodes[&leader].status().snapshot_index > 50).then_some(())
    })
    .await;
    launch(N3, &mut nodes);
    for f in &faults {
        f.set_drop_per_mille(100);
    }
    wait_for("node 3 to install a snapshot and converge", || {
        if nodes[&N3].status().snapshots_installed == 0 {
            return None;
        }
        let hashes: Vec<_> = nodes.values().map(|n| n.hash_kv().ok()).collect();
        let first = hashes[0]?;
        (first.1 >= 200 && hashes.iter().all(|h| *h == Some(first))).then_some(())
    })
    .await;
    for f in &faults {
        f.heal();
    }
    for node in nodes.values() {
        node.shutdown().await.expect("shutdown");
    }
    for s in stops {
        let _ = s.send(());
    }
}
