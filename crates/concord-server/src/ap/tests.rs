//! Three members' AP sides over real gRPC on loopback: writes through one member are read
//! through another, a stopped replica does not stop W=2 writes, increments from different
//! coordinators add up, and a read repairs a replica that missed a write.

use std::collections::{BTreeMap, BTreeSet};

use concord_core::crdt::{Expiry, SetExpiry};

use super::*;

const CLUSTER: u64 = 0xc0c0;
/// Bucket 0 at the configured quorums.
const B0: Access = Access {
    bucket: 0,
    r: None,
    w: None,
    session: None,
};

struct Members {
    nodes: Vec<ApNode>,
    servers: Vec<tokio::task::JoinHandle<()>>,
    urls: BTreeMap<NodeId, String>,
    _dirs: Vec<tempfile::TempDir>,
}

/// Serves `node`'s replica service on `listener` as a member's peer URL does: its direct
/// links of replica calls and its gRPC services on one port.
fn serve(node: &ApNode, listener: tokio::net::TcpListener) -> tokio::task::JoinHandle<()> {
    use concord_runtime::grpc::{serve, RaftPeerService};
    let peer = RaftPeerService::new(CLUSTER, concord_runtime::transport::Router::new())
        .with_direct_service(
            concord_runtime::direct::CALLS_MAGIC,
            node.direct_calls_service(),
        );
    let routes = tonic::service::Routes::new(node.service());
    tokio::spawn(async move {
        let _ = serve(listener, peer, Some(routes), None, std::future::pending()).await;
    })
}

/// Serves `svc` on `listener`, with TCP_NODELAY as the member's peer listener sets it
/// (without it, an answer on a stream waits for the delayed acknowledgement of the
/// response headers sent just before: 40 ms).
fn serve_replica<S: Replica>(
    svc: ReplicaServer<S>,
    listener: tokio::net::TcpListener,
) -> tokio::task::JoinHandle<()> {
    use tokio_stream::StreamExt as _;
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener).map(|conn| {
        conn.inspect(|tcp| {
            let _ = tcp.set_nodelay(true);
        })
    });
    tokio::spawn(async move {
        let _ = tonic::transport::Server::builder()
            .add_service(svc)
            .serve_with_incoming(incoming)
            .await;
    })
}

async fn start(n: u64) -> Members {
    start_with(
        n,
        ApConfig {
            timeout: Duration::from_millis(1500),
            ..ApConfig::default()
        },
    )
    .await
}

async fn start_with(n: u64, config: ApConfig) -> Members {
    start_members(n, config, true).await
}

/// `n` members; their replica calls take direct links when `direct_links`.
async fn start_members(n: u64, config: ApConfig, direct_links: bool) -> Members {
    let mut listeners = Vec::new();
    let mut urls = BTreeMap::new();
    for i in 1..=n {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        urls.insert(NodeId(i), format!("http://{}", l.local_addr().unwrap()));
        listeners.push(l);
    }
    let mut m = Members {
        nodes: Vec::new(),
        servers: Vec::new(),
        urls: urls.clone(),
        _dirs: Vec::new(),
    };
    for (i, listener) in (1..=n).zip(listeners) {
        let dir = tempfile::tempdir().unwrap();
        let node = ApNode::open(NodeId(i), CLUSTER, dir.path(), config).unwrap();
        node.set_direct_links(direct_links);
        node.set_members(&urls);
        node.set_healthy(urls.keys().copied().collect());
        m.servers.push(serve(&node, listener));
        m.nodes.push(node);
        m._dirs.push(dir);
    }
    // Each started in a ring with the others: its start transition ends once every other
    // member announces that ring (gossip carries it in a cluster).
    end_transition(&m.nodes.iter().collect::<Vec<_>>()).await;
    m
}

fn set(v: &str) -> Op {
    Op::Set {
        value: v.as_bytes().to_vec(),
        expiry: SetExpiry::Clear,
    }
}

fn value(state: Option<RedisValue>, now_ms: u64) -> Option<Vec<u8>> {
    state.and_then(|s| s.get(now_ms))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_through_one_member_are_read_through_another() {
    let m = start(3).await;
    let (a, b) = (&m.nodes[0], &m.nodes[1]);
    a.write(B0, b"k", set("v1")).await.unwrap();
    let now = a.now_ms();
    assert_eq!(
        value(b.read(B0, b"k").await.unwrap(), now),
        Some(b"v1".to_vec())
    );
    // Every replica holds it (N = 3 with three members), some at once, all eventually.
    for node in &m.nodes {
        let got = concord_testkit::eventually(
            "the write on every replica",
            Duration::from_secs(5),
            || async { value(node.read_local(0, b"k").unwrap(), now).filter(|v| v == b"v1") },
        )
        .await;
        assert_eq!(got, b"v1");
    }
    // Buckets are apart; a delete wins over the older write.
    assert_eq!(
        b.read(Access { bucket: 1, ..B0 }, b"k").await.unwrap(),
        None
    );
    b.write(B0, b"k", Op::Del).await.unwrap();
    assert_eq!(value(a.read(B0, b"k").await.unwrap(), a.now_ms()), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn increments_through_different_members_add_up_and_text_refuses_them() {
    let m = start(3).await;
    let mut expected = 0;
    for (i, node) in m.nodes.iter().cycle().take(9).enumerate() {
        let delta = i as i64 + 1;
        expected += delta;
        node.write(B0, b"n", Op::Incr(delta)).await.unwrap();
    }
    let got = value(
        m.nodes[2].read(B0, b"n").await.unwrap(),
        m.nodes[2].now_ms(),
    );
    assert_eq!(got, Some(expected.to_string().into_bytes()));
    m.nodes[0].write(B0, b"t", set("text")).await.unwrap();
    assert_eq!(
        m.nodes[1].write(B0, b"t", Op::Incr(1)).await,
        Err(ApError::Refused(
            "ERR value is not an integer or out of range".into()
        ))
    );
    // An expiry in the past hides the key.
    m.nodes[0]
        .write(B0, b"t", Op::Expire(Expiry::At(1)))
        .await
        .unwrap();
    assert_eq!(
        value(
            m.nodes[1].read(B0, b"t").await.unwrap(),
            m.nodes[1].now_ms()
        ),
        None
    );
}

/// An `INCRBY` (and `HINCRBY`) answers the value its write quorum holds, not only what
/// its coordinating replica held: a client that increments through one member and then
/// through another sees its first increment counted in the second answer even when the
/// second coordinator had not received it yet.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_increment_answers_the_value_its_write_quorum_holds() {
    let m = start(3).await;
    let (a, b, c) = (&m.nodes[0], &m.nodes[1], &m.nodes[2]);
    // An increment made durable at members 2 and 3 (a W=2 quorum), not at member 1.
    let (state, n) = b.apply_local(0, b"n", Op::Incr(5), None).await.unwrap();
    assert_eq!(n, Some(5));
    c.merge_local(0, b"n", state, None).await.unwrap();
    let (state, n) = b
        .apply_local(0, b"h", Op::HashIncr(b"f".to_vec(), 5), None)
        .await
        .unwrap();
    assert_eq!(n, Some(5));
    c.merge_local(0, b"h", state, None).await.unwrap();
    // Member 1 coordinates (it is a replica of every key) from its own state: nothing.
    assert_eq!(a.read_local(0, b"n").unwrap(), None);
    assert_eq!(a.write(B0, b"n", Op::Incr(1)).await, Ok(Some(6)));
    assert_eq!(
        a.write(B0, b"h", Op::HashIncr(b"f".to_vec(), 1)).await,
        Ok(Some(6))
    );
    // A SET in the key's epoch is what a later increment counts from.
    a.write(B0, b"n", set("10")).await.unwrap();
    assert_eq!(b.write(B0, b"n", Op::Incr(-1)).await, Ok(Some(9)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_replica_does_not_stop_quorum_writes_and_a_read_repairs_it() {
    let mut m = start(3).await;
    // Member 3 stops (its server goes away); the others are told it is suspected.
    m.servers.pop().unwrap().abort();
    let healthy: std::collections::BTreeSet<NodeId> = [NodeId(1), NodeId(2)].into();
    m.nodes[0].set_healthy(healthy.clone());
    m.nodes[1].set_healthy(healthy);
    m.nodes[0]
        .write(B0, b"k", set("while-3-was-down"))
        .await
        .unwrap();
    let now = m.nodes[0].now_ms();
    assert_eq!(m.nodes[2].read_local(0, b"k").unwrap(), None);
    // Member 3's store is still there: a read through it sees the write (from the others)
    // and repairs it.
    let third = m.nodes[2].clone();
    assert_eq!(
        value(third.read(B0, b"k").await.unwrap(), now),
        Some(b"while-3-was-down".to_vec())
    );
    concord_testkit::eventually(
        "read repair of member 3",
        Duration::from_secs(5),
        || async { value(third.read_local(0, b"k").unwrap(), now) },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_coordinator_keeps_hints_for_a_stopped_owner_and_hands_them_over_when_it_is_back() {
    let mut m = start(3).await;
    m.servers.pop().unwrap().abort();
    let two: std::collections::BTreeSet<NodeId> = [NodeId(1), NodeId(2)].into();
    m.nodes[0].set_healthy(two.clone());
    m.nodes[1].set_healthy(two);
    for i in 0..5 {
        let key = format!("k{i}");
        m.nodes[0]
            .write(B0, key.as_bytes(), set(&key))
            .await
            .unwrap();
    }
    // With three members there is no fallback: the coordinator holds the hints, once the
    // write to member 3 has failed (which may be after the client's answer).
    let first = m.nodes[0].clone();
    concord_testkit::eventually("five hints for member 3", Duration::from_secs(5), || {
        let pending = first.metrics().hints_pending;
        async move { (pending == [(NodeId(3), 5)]).then_some(()) }
    })
    .await;
    // Still away: nothing is handed over.
    assert_eq!(m.nodes[0].replay_hints(100).await, 0);
    // Member 3 is back, on its address, and seen alive.
    let addr = m.urls[&NodeId(3)].trim_start_matches("http://").to_string();
    let listener = tokio::net::TcpListener::bind(&addr).await.unwrap();
    m.servers.push(serve(&m.nodes[2], listener));
    m.nodes[0].set_healthy(m.urls.keys().copied().collect());
    assert_eq!(m.nodes[0].replay_hints(100).await, 5);
    let now = m.nodes[2].now_ms();
    for i in 0..5 {
        let key = format!("k{i}");
        assert_eq!(
            value(m.nodes[2].read_local(0, key.as_bytes()).unwrap(), now),
            Some(key.into_bytes()),
        );
    }
    let metrics = m.nodes[0].metrics();
    assert!(metrics.hints_pending.is_empty(), "{metrics:?}");
    assert_eq!(metrics.hints_replayed, 5);
    assert_eq!(m.nodes[0].replay_hints(100).await, 0, "nothing twice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anti_entropy_repairs_what_a_replica_missed_and_keeps_deletes_deleted() {
    let m = start(3).await;
    let (first, third) = (&m.nodes[0], &m.nodes[2]);
    // Recent stamps: a tombstone past the grace period would not be repaired.
    let base = concord_core::clock::Timestamp::new(first.now_ms(), 0).pack();
    let state = |v: &str, t: u64| {
        let mut s = RedisValue::new();
        s.set(
            v.as_bytes().to_vec(),
            (base + t, NodeId(1)),
            NodeId(1),
            SetExpiry::Clear,
        );
        s
    };
    // Member 3 missed 50 writes and a delete of a key it still holds.
    for i in 0..50 {
        let key = format!("k{i}");
        first
            .merge_local(0, key.as_bytes(), state(&key, 1), None)
            .await
            .unwrap();
    }
    third
        .merge_local(0, b"gone", state("old", 1), None)
        .await
        .unwrap();
    let mut deleted = state("old", 1);
    deleted.delete((base + 2, NodeId(1)));
    first.merge_local(0, b"gone", deleted, None).await.unwrap();
    assert_eq!(third.anti_entropy_with(NodeId(1)).await.unwrap(), 51);
    let now = third.now_ms();
    for i in 0..50 {
        let key = format!("k{i}");
        assert_eq!(
            value(third.read_local(0, key.as_bytes()).unwrap(), now),
            Some(key.into_bytes())
        );
    }
    assert_eq!(
        value(third.read_local(0, b"gone").unwrap(), now),
        None,
        "the delete stays"
    );
    // In step now: nothing more to repair, in either direction.
    assert_eq!(third.anti_entropy_with(NodeId(1)).await.unwrap(), 0);
    assert_eq!(first.anti_entropy_with(NodeId(3)).await.unwrap(), 0);
    let metrics = third.metrics();
    assert_eq!(
        (metrics.anti_entropy_rounds, metrics.anti_entropy_repaired),
        (2, 51)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_replica_gossip_still_trusts_does_not_fail_writes_through_the_others() {
    // Members 1 and 2 are real; member 3 accepts connections and never answers (a
    // paused process), while the health view still says it is alive.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_url = format!("http://{}", silent.local_addr().unwrap());
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((conn, _)) = silent.accept().await {
            held.push(conn);
        }
    });
    let mut m = start(2).await;
    m.urls.insert(NodeId(3), silent_url);
    for node in &m.nodes {
        node.set_members(&m.urls);
        node.set_healthy(m.urls.keys().copied().collect());
    }
    // Every key has all three as owners; writes through member 1 apply there and are
    // acknowledged by member 2, whichever member comes first in the key's list (a member
    // that first sent each write to that one waited on member 3 until the deadline).
    for i in 0..30 {
        let key = format!("k{i}");
        m.nodes[0]
            .write(B0, key.as_bytes(), set(&key))
            .await
            .unwrap_or_else(|e| panic!("{key}: {e}"));
    }
    for i in 0..30 {
        let key = format!("k{i}");
        let state = m.nodes[1].read(B0, key.as_bytes()).await.unwrap();
        assert_eq!(value(state, m.nodes[1].now_ms()), Some(key.into_bytes()));
    }
    // An INCR is never sent to a second replica after a silent first one (it might count
    // twice), so only applying it here keeps it from failing.
    for i in 0..30 {
        let key = format!("c{i}");
        m.nodes[0]
            .write(B0, key.as_bytes(), Op::Incr(1))
            .await
            .unwrap_or_else(|e| panic!("{key}: {e}"));
    }
    hold.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_more_members_than_replicas_anti_entropy_compares_only_the_shared_ranges() {
    let m = start(5).await;
    for i in 0..300 {
        let key = format!("k{i}");
        m.nodes[i % 5]
            .write(B0, key.as_bytes(), set(&key))
            .await
            .unwrap();
    }
    let round = || async {
        let mut repaired = 0;
        for a in &m.nodes {
            for b in 1..=5 {
                if NodeId(b) != a.me() {
                    repaired += a.anti_entropy_with(NodeId(b)).await.unwrap();
                }
            }
        }
        repaired
    };
    let fetched = || {
        m.nodes
            .iter()
            .map(|n| n.metrics().anti_entropy_fetched)
            .sum::<u64>()
    };
    // Once the last replicas of the writes have landed (the rounds repair any straggler),
    // the members are in sync: a full round of exchanges between every pair repairs
    // nothing and fetches no key, though every member's tree differs from every other's
    // (each holds 3/5 of the keys).
    for _ in 0..5 {
        if round().await == 0 {
            break;
        }
    }
    let before = fetched();
    assert_eq!(round().await, 0);
    assert_eq!(fetched(), before, "an exchange in sync fetched keys");
    // Keys that member 5 shares with member 1 and missed are repaired from it, and only
    // such keys are fetched.
    let (first, fifth) = (&m.nodes[0], &m.nodes[4]);
    let base = concord_core::clock::Timestamp::new(first.now_ms(), 0).pack();
    let mut missed = Vec::new();
    for i in 0..2000 {
        let key = format!("x{i}");
        let owners = first.placement(0, key.as_bytes()).0;
        if owners.contains(&NodeId(1)) && owners.contains(&NodeId(5)) {
            let mut state = RedisValue::new();
            state.set(
                b"v".to_vec(),
                (base, NodeId(1)),
                NodeId(1),
                SetExpiry::Clear,
            );
            first
                .merge_local(0, key.as_bytes(), state, None)
                .await
                .unwrap();
            missed.push(key);
        }
        if missed.len() == 40 {
            break;
        }
    }
    assert_eq!(missed.len(), 40);
    let before = fifth.metrics().anti_entropy_fetched;
    assert_eq!(fifth.anti_entropy_with(NodeId(1)).await.unwrap(), 40);
    let now = fifth.now_ms();
    for key in &missed {
        assert_eq!(
            value(fifth.read_local(0, key.as_bytes()).unwrap(), now),
            Some(b"v".to_vec())
        );
    }
    let fetched_now = fifth.metrics().anti_entropy_fetched - before;
    // The leaves fetched hold the 40 keys and the shared keys written before, not the
    // 3/5 of all keys member 1 holds.
    assert!(fetched_now < 40 + 150, "fetched {fetched_now} keys");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tombstones_are_collected_only_when_every_owner_holds_them_past_the_grace() {
    let grace = Duration::from_millis(300);
    let m = start_with(
        3,
        ApConfig {
            timeout: Duration::from_millis(1500),
            tombstone_grace: grace,
            ..ApConfig::default()
        },
    )
    .await;
    let keys: Vec<String> = (0..20).map(|i| format!("k{i}")).collect();
    for k in &keys {
        m.nodes[0].write(B0, k.as_bytes(), set(k)).await.unwrap();
        m.nodes[1].write(B0, k.as_bytes(), Op::Del).await.unwrap();
    }
    let tombstones_everywhere = || async {
        m.nodes.iter().all(|n| {
            keys.iter().all(|k| {
                n.read_local(0, k.as_bytes())
                    .unwrap()
                    .is_some_and(|s| s.is_tombstone())
            })
        })
    };
    concord_testkit::eventually(
        "every replica to hold the tombstones",
        Duration::from_secs(5),
        || async { tombstones_everywhere().await.then_some(()) },
    )
    .await;
    let collect_all = || async {
        let mut n = 0;
        for node in &m.nodes {
            n += node.collect_tombstones().await.unwrap();
        }
        n
    };
    assert_eq!(collect_all().await, 0, "younger than the grace period");
    tokio::time::sleep(grace + Duration::from_millis(100)).await;
    // An owner the others suspect: nothing is collected.
    let two: std::collections::BTreeSet<NodeId> = [NodeId(1), NodeId(2)].into();
    m.nodes[0].set_healthy(two.clone());
    m.nodes[1].set_healthy(two);
    assert_eq!(
        m.nodes[0].collect_tombstones().await.unwrap()
            + m.nodes[1].collect_tombstones().await.unwrap(),
        0
    );
    assert!(tombstones_everywhere().await);
    for node in &m.nodes {
        node.set_healthy(m.urls.keys().copied().collect());
    }
    // One owner holds a newer write of k0 than the tombstone: k0 is kept.
    let mut newer = m.nodes[2].read_local(0, b"k0").unwrap().unwrap();
    let stamp = (newer.epoch().0 + 1, NodeId(3));
    newer.set(b"back".to_vec(), stamp, NodeId(3), SetExpiry::Clear);
    m.nodes[2].merge_local(0, b"k0", newer, None).await.unwrap();
    assert_eq!(collect_all().await, 19);
    let now = m.nodes[0].now_ms();
    for node in &m.nodes {
        for k in &keys[1..] {
            assert_eq!(node.read_local(0, k.as_bytes()).unwrap(), None, "{k}");
        }
        assert!(node.read_local(0, b"k0").unwrap().is_some());
    }
    assert_eq!(
        value(
            m.nodes[0]
                .read(Access { r: Some(3), ..B0 }, b"k0")
                .await
                .unwrap(),
            now
        ),
        Some(b"back".to_vec()),
        "the newer write wins and stays"
    );
    assert_eq!(
        m.nodes
            .iter()
            .map(|n| n.metrics().tombstones_removed)
            .sum::<u64>(),
        19 * 3,
        "19 keys' tombstones, from three replicas each"
    );
    // Nothing comes back: anti-entropy between the replicas finds nothing to repair.
    for (i, node) in m.nodes.iter().enumerate() {
        let peer = NodeId((i as u64 + 1) % 3 + 1);
        assert_eq!(node.anti_entropy_with(peer).await.unwrap(), 0);
    }
    // An owner that missed a delete (it holds the value, the others the tombstone) keeps
    // the tombstone on all: collecting it would let anti-entropy bring the value back.
    let long_ago = concord_core::clock::Timestamp::new(m.nodes[0].now_ms() - 10_000, 0).pack();
    let mut value_only = RedisValue::new();
    value_only.set(
        b"old".to_vec(),
        (long_ago, NodeId(1)),
        NodeId(1),
        SetExpiry::Clear,
    );
    let mut tombstone = value_only.clone();
    tombstone.delete((long_ago + 1, NodeId(1)));
    for (i, node) in m.nodes.iter().enumerate() {
        let state = if i == 2 { &value_only } else { &tombstone };
        // Written straight to the stores: merges no longer create old tombstones.
        node.inner.store.merge(0, b"missed", state).unwrap();
    }
    let first_owner = m
        .nodes
        .iter()
        .find(|n| n.placement(0, b"missed").0[0] == n.me())
        .unwrap();
    assert_eq!(first_owner.collect_tombstones().await.unwrap(), 0);
    assert!(m.nodes[0].read_local(0, b"missed").unwrap().is_some());
    m.nodes[2].anti_entropy_with(NodeId(1)).await.unwrap();
    assert_eq!(
        first_owner.collect_tombstones().await.unwrap(),
        1,
        "once it has it"
    );
    for node in &m.nodes {
        assert_eq!(node.read_local(0, b"missed").unwrap(), None);
    }
    // A tombstone left on one owner (as when its Reap failed) is not spread back to the
    // owners that collected it, and that owner's own pass removes it.
    m.nodes[0]
        .merge_local(0, b"missed", tombstone.clone(), None)
        .await
        .unwrap();
    assert_eq!(m.nodes[0].read_local(0, b"missed").unwrap(), None);
    m.nodes[1]
        .inner
        .store
        .merge(0, b"missed", &tombstone)
        .unwrap();
    assert_eq!(m.nodes[0].anti_entropy_with(NodeId(2)).await.unwrap(), 0);
    assert_eq!(m.nodes[0].read_local(0, b"missed").unwrap(), None);
    assert_eq!(m.nodes[1].collect_tombstones().await.unwrap(), 1);
    assert_eq!(m.nodes[1].read_local(0, b"missed").unwrap(), None);
    // A hint older than the grace period is dropped, not handed over.
    let mut old = RedisValue::new();
    old.set(
        b"zombie".to_vec(),
        (1, NodeId(1)),
        NodeId(1),
        SetExpiry::Clear,
    );
    m.nodes[0]
        .merge_local(0, b"k5", old, Some(NodeId(3)))
        .await
        .unwrap();
    assert_eq!(m.nodes[0].replay_hints(10).await, 0);
    let metrics = m.nodes[0].metrics();
    assert!(metrics.hints_pending.is_empty(), "{metrics:?}");
    assert_eq!(metrics.hints_dropped, 1);
    assert_eq!(m.nodes[2].read_local(0, b"k5").unwrap(), None);
}

/// The state of a `SET` of `v` coordinated by member 1 at `now_ms`.
fn written_v(now_ms: u64) -> RedisValue {
    let mut state = RedisValue::new();
    let stamp = concord_core::clock::Timestamp::new(now_ms, 0).pack();
    state.set(
        b"v".to_vec(),
        (stamp, NodeId(1)),
        NodeId(1),
        SetExpiry::Clear,
    );
    state
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_member_leaves_reads_ask_the_earlier_owners_until_the_keys_are_handed_over() {
    let mut m = start(4).await;
    // Forty keys, each on exactly two of its three owners (a W=2 write whose third copy
    // had not landed yet).
    let keys: Vec<String> = (0..40).map(|i| format!("key-{i}")).collect();
    let state = written_v(m.nodes[0].now_ms());
    let mut on_the_leaver = 0;
    for k in &keys {
        let (owners, _) = m.nodes[0].placement(0, k.as_bytes());
        for o in &owners[..2] {
            let node = &m.nodes[(o.get() - 1) as usize];
            node.merge_local(0, k.as_bytes(), state.clone(), None)
                .await
                .unwrap();
        }
        on_the_leaver += usize::from(owners[..2].contains(&NodeId(4)));
    }
    assert!(on_the_leaver > 0, "some keys have a copy on member 4");
    // Member 4 leaves: the ring has three members now, a transition for the others.
    m.servers.pop().unwrap().abort();
    let mut three = m.urls.clone();
    three.remove(&NodeId(4));
    for node in &m.nodes[..3] {
        node.set_members(&three);
        node.set_healthy(three.keys().copied().collect());
        assert!(node.in_transition());
    }
    // Before anything is handed over, every key reads through any member at R=2: the
    // earlier owners are asked too.
    let now = m.nodes[0].now_ms();
    for (i, k) in keys.iter().enumerate() {
        let reader = &m.nodes[i % 3];
        assert_eq!(
            value(reader.read(B0, k.as_bytes()).await.unwrap(), now),
            Some(b"v".to_vec()),
            "{k}"
        );
    }
    // Each pushes, announces it, and the transition ends; then every key is on all three.
    for node in &m.nodes[..3] {
        node.handoff_step().await;
    }
    let announced: BTreeMap<NodeId, u64> = m.nodes[..3]
        .iter()
        .map(|n| (n.me(), n.handoff_meta()))
        .collect();
    assert!(announced
        .values()
        .all(|fp| *fp != 0 && *fp == announced[&NodeId(1)]));
    for node in &m.nodes[..3] {
        node.set_announced(announced.clone());
        node.handoff_step().await;
        assert!(!node.in_transition());
    }
    // No key lost a copy: each is on at least the two members that held it among the
    // three, or the one that did and the one it was pushed to.
    for k in &keys {
        let copies = m.nodes[..3]
            .iter()
            .filter(|n| n.read_local(0, k.as_bytes()).unwrap().is_some())
            .count();
        assert!(copies >= 2, "{k} is on {copies} members");
    }
    // The third copy of the keys written to two owners only comes from anti-entropy.
    for a in &m.nodes[..3] {
        for b in [1, 2, 3] {
            if NodeId(b) != a.me() {
                a.anti_entropy_with(NodeId(b)).await.unwrap();
            }
        }
    }
    for node in &m.nodes[..3] {
        for k in &keys {
            assert!(node.read_local(0, k.as_bytes()).unwrap().is_some(), "{k}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_that_starts_in_the_ring_reads_the_earlier_owners_until_all_have_pushed() {
    let mut m = start(3).await;
    // Forty keys, each on the second and third of its three owners among members 1 to 3
    // (a W=2 write the first had not received yet): a newcomer that takes a key's place in
    // the list pushes the third out, and the first owner, left without a copy, is the one
    // it asks next.
    let keys: Vec<String> = (0..40).map(|i| format!("key-{i}")).collect();
    let state = written_v(m.nodes[0].now_ms());
    for k in &keys {
        let (owners, _) = m.nodes[0].placement(0, k.as_bytes());
        for o in &owners[1..] {
            m.nodes[(o.get() - 1) as usize]
                .merge_local(0, k.as_bytes(), state.clone(), None)
                .await
                .unwrap();
        }
    }
    // Member 4 starts with a ring that already holds it (an AP-only member registering);
    // the others see the change but have not pushed anything yet.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    m.urls.insert(
        NodeId(4),
        format!("http://{}", listener.local_addr().unwrap()),
    );
    let dir = tempfile::tempdir().unwrap();
    let config = ApConfig {
        timeout: Duration::from_millis(1500),
        ..ApConfig::default()
    };
    let new = ApNode::open(NodeId(4), CLUSTER, dir.path(), config).unwrap();
    m._dirs.push(dir);
    new.set_members(&m.urls);
    new.set_healthy(m.urls.keys().copied().collect());
    m.servers.push(serve(&new, listener));
    for node in &m.nodes {
        node.set_members(&m.urls);
        node.set_healthy(m.urls.keys().copied().collect());
    }
    assert!(new.in_transition());
    // Every key reads through it at R=2, the ones it now owns (its own copy empty) too.
    let now = new.now_ms();
    let mut owned = 0;
    for k in &keys {
        owned += usize::from(new.placement(0, k.as_bytes()).0.contains(&NodeId(4)));
        assert_eq!(
            value(new.read(B0, k.as_bytes()).await.unwrap(), now),
            Some(b"v".to_vec()),
            "{k}"
        );
    }
    assert!(owned > 0, "member 4 owns some keys");
    // At start gossip has seen nobody alive yet: that is no reason to end the transition
    // while the others have not announced the ring.
    new.set_healthy(BTreeSet::new());
    let fp = new.handoff_meta();
    assert_ne!(fp, 0, "a starting member has nothing to push");
    let two: BTreeMap<NodeId, u64> = [(NodeId(1), fp), (NodeId(2), fp)].into();
    new.set_announced(two);
    new.handoff_step().await;
    assert!(new.in_transition(), "member 3 has not announced the ring");
    // The others push and announce it: the transition ends everywhere.
    for node in &m.nodes {
        node.handoff_step().await;
    }
    let mut all: Vec<&ApNode> = m.nodes.iter().collect();
    all.push(&new);
    end_transition(&all).await;
}

/// The first key `prefix-i` whose owners among `node`'s ring satisfy `pick`.
fn key_where(node: &ApNode, prefix: &str, pick: impl Fn(&[NodeId]) -> bool) -> String {
    (0..)
        .map(|i| format!("{prefix}-{i}"))
        .find(|k| pick(&node.placement(0, k.as_bytes()).0))
        .unwrap()
}

/// Puts `members` in force on `nodes` and runs the handoff until the transition is over
/// (push passes, announcements, cleanup passes).
async fn change_ring(nodes: &[&ApNode], members: &BTreeMap<NodeId, String>) {
    start_ring(nodes, members).await;
    end_transition(nodes).await;
}

/// Puts `members` in force on `nodes`, each of which pushes its keys for the change.
async fn start_ring(nodes: &[&ApNode], members: &BTreeMap<NodeId, String>) {
    for node in nodes {
        node.set_members(members);
        node.set_healthy(members.keys().copied().collect());
        node.handoff_step().await;
    }
}

/// Every node of `nodes` announces the ring it pushed for, and the transition ends.
async fn end_transition(nodes: &[&ApNode]) {
    let announced: BTreeMap<NodeId, u64> =
        nodes.iter().map(|n| (n.me(), n.handoff_meta())).collect();
    for node in nodes {
        node.set_announced(announced.clone());
        node.handoff_step().await;
        assert!(!node.in_transition());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_lost_a_key_to_cleanup_counts_under_a_new_actor_when_it_comes_back() {
    let m = start(4).await;
    let mut three = m.urls.clone();
    three.remove(&NodeId(4));
    // A key member 4 owns among four members: one of the other three (`x`) owns it among
    // three only.
    let key = key_where(&m.nodes[0], "back", |owners| owners.contains(&NodeId(4)));
    let k = key.as_bytes();
    let x = (1..=3)
        .map(NodeId)
        .find(|id| !m.nodes[0].placement(0, k).0.contains(id))
        .unwrap();
    let node = |id: NodeId| &m.nodes[(id.get() - 1) as usize];
    let first: Vec<&ApNode> = m.nodes[..3].iter().collect();
    change_ring(&first, &three).await;
    // Five increments applied by `x` and merged into the other two owners.
    let mut state = None;
    for _ in 0..5 {
        state = Some(
            node(x)
                .apply_local(0, k, Op::Incr(1), None)
                .await
                .unwrap()
                .0,
        );
    }
    let state = state.unwrap();
    for other in three.keys().filter(|id| **id != x) {
        node(*other)
            .merge_local(0, k, state.clone(), None)
            .await
            .unwrap();
    }
    // Member 4 joins: `x` pushes the key to it, and its cleanup removes its copy.
    let all: Vec<&ApNode> = m.nodes.iter().collect();
    change_ring(&all, &m.urls).await;
    assert_eq!(node(x).read_local(0, k).unwrap(), None, "cleaned up");
    // Member 4 leaves again: `x` owns the key once more and applies an increment before
    // anyone has pushed the key back to it.
    for n in &first {
        n.set_members(&three);
    }
    let (again, answer) = node(x).apply_local(0, k, Op::Incr(1), None).await.unwrap();
    assert_eq!(answer, Some(1), "applied on its empty state");
    let other = *three.keys().find(|id| **id != x).unwrap();
    node(other).merge_local(0, k, again, None).await.unwrap();
    let now = node(other).now_ms();
    assert_eq!(
        value(node(other).read_local(0, k).unwrap(), now),
        Some(b"6".to_vec()),
        "the sixth increment counts"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_that_lands_on_an_earlier_owner_after_its_push_still_reaches_the_new_owners() {
    let mut m = start(5).await;
    // A key member 5 owns; member 5 leaves.
    let key = key_where(&m.nodes[0], "late", |owners| owners.contains(&NodeId(5)));
    let k = key.as_bytes();
    let old_owners = m.nodes[0].placement(0, k).0;
    let mut four = m.urls.clone();
    four.remove(&NodeId(5));
    // The others see the change and push (nothing of this key yet) before the write
    // below lands.
    let others: Vec<&ApNode> = m.nodes[..4].iter().collect();
    start_ring(&others, &four).await;
    let new_owners = m.nodes[0].placement(0, k).0;
    let kept = *old_owners
        .iter()
        .find(|o| new_owners.contains(o))
        .expect("an owner under both rings");
    // The leaver has not seen the change (a removed member may never learn of it): it
    // coordinates a write under the old ring, acknowledged by itself and `kept` (W = 2),
    // and is then stopped with its copy.
    let leaver = &m.nodes[4];
    let mut state = RedisValue::new();
    let stamp = concord_core::clock::Timestamp::new(leaver.now_ms(), 0).pack();
    state
        .incr(1, NodeId(5), (stamp, NodeId(5)), leaver.now_ms())
        .unwrap();
    leaver.merge_local(0, k, state.clone(), None).await.unwrap();
    leaver
        .merge_at(kept, 0, k.to_vec(), state, None)
        .await
        .unwrap();
    m.servers.pop().unwrap().abort();
    // The transition ends; a read at R = 2 of the new owners must find the write, so two
    // of them hold it.
    end_transition(&others).await;
    let holders: Vec<NodeId> = new_owners
        .iter()
        .copied()
        .filter(|o| {
            m.nodes[(o.get() - 1) as usize]
                .read_local(0, k)
                .unwrap()
                .is_some()
        })
        .collect();
    assert!(
        holders.len() >= 2,
        "the write is on {holders:?} of the new owners {new_owners:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_that_lost_its_data_counts_under_a_new_identity() {
    let mut m = start(3).await;
    // Member 1 coordinates INCRs of a key it is the first owner of.
    let key = key_where(&m.nodes[0], "n", |owners| owners[0] == NodeId(1));
    for _ in 0..5 {
        m.nodes[0]
            .write(B0, key.as_bytes(), Op::Incr(1))
            .await
            .unwrap();
    }
    // It loses its data: same member id and address, a new, empty store.
    m.servers.remove(0).abort();
    let dir = tempfile::tempdir().unwrap();
    let config = ApConfig {
        timeout: Duration::from_millis(1500),
        ..ApConfig::default()
    };
    let reborn = ApNode::open(NodeId(1), CLUSTER, dir.path(), config).unwrap();
    reborn.set_members(&m.urls);
    reborn.set_healthy(m.urls.keys().copied().collect());
    let addr = m.urls[&NodeId(1)].trim_start_matches("http://").to_string();
    let listener = tokio::net::TcpListener::bind(&addr).await.unwrap();
    m.servers.push(serve(&reborn, listener));
    // Its next increment is applied on its empty state and merged into the others': it
    // must add to the five, not hide behind them (the answer is the quorum's value).
    assert_eq!(
        reborn.write(B0, key.as_bytes(), Op::Incr(1)).await,
        Ok(Some(6))
    );
    let all = Access { r: Some(3), ..B0 };
    let now = reborn.now_ms();
    assert_eq!(
        value(m.nodes[1].read(all, key.as_bytes()).await.unwrap(), now),
        Some(b"6".to_vec())
    );
    m._dirs.push(dir);
}

fn members_of(state: Option<RedisValue>, now_ms: u64) -> Vec<Vec<u8>> {
    state.map_or_else(Vec::new, |s| {
        s.members(now_ms)
            .unwrap()
            .into_iter()
            .map(<[u8]>::to_vec)
            .collect()
    })
}

fn list(items: &[&str]) -> Vec<Vec<u8>> {
    items.iter().map(|s| s.as_bytes().to_vec()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_adds_through_different_members_union_and_a_concurrent_add_beats_a_remove() {
    let m = start(3).await;
    let (a, b, c) = (&m.nodes[0], &m.nodes[1], &m.nodes[2]);
    assert_eq!(
        a.write(B0, b"s", Op::SetAdd(list(&["x", "y", "x"]))).await,
        Ok(Some(2))
    );
    let seen = b.read(B0, b"s").await.unwrap();
    assert_eq!(
        b.write_after(B0, b"s", Op::SetAdd(list(&["y", "z"])), seen)
            .await,
        Ok(Some(1)),
        "y was there already"
    );
    assert_eq!(
        members_of(c.read(B0, b"s").await.unwrap(), c.now_ms()),
        list(&["x", "y", "z"])
    );
    // A string operation on the set is refused, and nothing changes.
    assert_eq!(
        c.write(B0, b"s", Op::Incr(1)).await,
        Err(ApError::Refused(
            "WRONGTYPE Operation against a key holding the wrong kind of value".into()
        ))
    );

    // Concurrently, each on its own replica and nowhere else: member 1 removes x and y,
    // member 2 adds x again.
    let (removed, _) = a
        .apply_local(0, b"s", Op::SetRemove(list(&["x", "y"])), None)
        .await
        .unwrap();
    assert_eq!(members_of(Some(removed), a.now_ms()), list(&["z"]));
    assert_eq!(
        b.apply_local(0, b"s", Op::SetAdd(list(&["x"])), None)
            .await
            .map(|(_, n)| n),
        Ok(Some(0)),
        "member 2 still sees x"
    );
    // Joined: x stays (its add was concurrent with the remove), y stays removed even
    // though members 2 and 3 held it.
    let all = Access { r: Some(3), ..B0 };
    assert_eq!(
        members_of(c.read(all, b"s").await.unwrap(), c.now_ms()),
        list(&["x", "z"])
    );
    // The read repaired every replica: each holds the same members now.
    for node in &m.nodes {
        let got = concord_testkit::eventually(
            "every replica repaired",
            Duration::from_secs(5),
            || async {
                let held = members_of(node.read_local(0, b"s").unwrap(), node.now_ms());
                (held == list(&["x", "z"])).then_some(held)
            },
        )
        .await;
        assert_eq!(got, list(&["x", "z"]));
    }
    // A *STORE result replaces the set; an empty one deletes it.
    a.write(B0, b"s", Op::SetStore(list(&["q"]))).await.unwrap();
    assert_eq!(
        members_of(b.read(B0, b"s").await.unwrap(), b.now_ms()),
        list(&["q"])
    );
    a.write(B0, b"s", Op::SetStore(Vec::new())).await.unwrap();
    let gone = b.read(B0, b"s").await.unwrap();
    assert!(gone.is_some_and(|s| !s.exists(b.now_ms())));
}

fn pairs(items: &[(&str, &str)]) -> Vec<(Vec<u8>, Vec<u8>)> {
    items
        .iter()
        .map(|(f, v)| (f.as_bytes().to_vec(), v.as_bytes().to_vec()))
        .collect()
}

fn fields_of(state: Option<RedisValue>, now_ms: u64) -> Vec<(Vec<u8>, Vec<u8>)> {
    state.map_or_else(Vec::new, |s| {
        s.hfields(now_ms).unwrap().into_iter().collect()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hash_fields_merge_per_field_and_increments_through_different_members_add_up() {
    let m = start(3).await;
    let (a, b, c) = (&m.nodes[0], &m.nodes[1], &m.nodes[2]);
    assert_eq!(
        a.write(B0, b"h", Op::HashSet(pairs(&[("f", "1"), ("g", "2")])))
            .await,
        Ok(Some(2))
    );
    for (i, node) in m.nodes.iter().cycle().take(6).enumerate() {
        node.write(B0, b"h", Op::HashIncr(b"n".to_vec(), i as i64 + 1))
            .await
            .unwrap();
    }
    assert_eq!(
        fields_of(c.read(B0, b"h").await.unwrap(), c.now_ms()),
        pairs(&[("f", "1"), ("g", "2"), ("n", "21")])
    );
    assert_eq!(
        b.write(B0, b"h", Op::HashIncr(b"f".to_vec(), 1)).await,
        Ok(Some(2))
    );

    // Concurrently, each on its own replica and nowhere else: member 1 deletes f and g,
    // member 2 increments f.
    a.apply_local(0, b"h", Op::HashDel(list(&["f", "g"])), None)
        .await
        .unwrap();
    assert_eq!(
        b.apply_local(0, b"h", Op::HashIncr(b"f".to_vec(), 10), None)
            .await
            .map(|(_, n)| n),
        Ok(Some(12)),
        "member 2 still sees f = 2"
    );
    let all = Access { r: Some(3), ..B0 };
    assert_eq!(
        fields_of(c.read(all, b"h").await.unwrap(), c.now_ms()),
        pairs(&[("f", "12"), ("n", "21")]),
        "the concurrent update of f survives its delete (with what it was built on); g \
         stays deleted"
    );
}

/// A `SET NX` through [`ApNode::cas`]: writes `value` when the key is absent; the answer
/// says whether it did.
async fn set_if_absent(node: &ApNode, key: &[u8], value: &str) -> Result<bool, ApError> {
    let now = node.now_ms();
    node.cas(B0, key, |current, stamp, actor| {
        if current.is_some_and(|c| c.exists(now)) {
            return cas::Decision {
                write: None,
                answer: false,
            };
        }
        let mut next = current.cloned().unwrap_or_default();
        next.set(value.as_bytes().to_vec(), stamp, actor, SetExpiry::Clear);
        cas::Decision {
            write: Some(next),
            answer: true,
        }
    })
    .await
    .map(|(answer, _)| answer)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_concurrent_set_if_absent_through_every_member_exactly_one_wins() {
    let m = start(3).await;
    let mut won = 0;
    for round in 0..5 {
        let key = format!("lock-{round}");
        let mut tries = tokio::task::JoinSet::new();
        for (i, node) in m.nodes.iter().cycle().take(9).enumerate() {
            let (node, key) = (node.clone(), key.clone());
            tries.spawn(async move {
                let me = format!("owner-{i}");
                (set_if_absent(&node, key.as_bytes(), &me).await, me)
            });
        }
        let mut winners = Vec::new();
        while let Some(done) = tries.join_next().await {
            let (won, me) = done.unwrap();
            // Contention may time a request out (indefinite), never make two win.
            if won == Ok(true) {
                winners.push(me);
            }
        }
        assert!(winners.len() <= 1, "round {round}: {winners:?} all won");
        won += winners.len();
        // A linearizable read through any member sees the winner, if there is one.
        let read = m.nodes[round % 3]
            .cas(B0, key.as_bytes(), |current, _, _| cas::Decision {
                write: None,
                answer: current.and_then(|c| c.get(0)),
            })
            .await
            .unwrap()
            .0;
        if let Some(w) = winners.first() {
            assert_eq!(read, Some(w.as_bytes().to_vec()), "round {round}");
        }
        // Plain reads see the committed write too.
        assert_eq!(
            value(m.nodes[2].read(B0, key.as_bytes()).await.unwrap(), 0),
            read
        );
    }
    assert!(won > 0, "contention timed every round out");
    // A plain write acknowledged at W (W + a majority > N) is seen by a later
    // compare-and-set, which then writes above it.
    m.nodes[1].write(B0, b"mixed", set("plain")).await.unwrap();
    assert_eq!(set_if_absent(&m.nodes[2], b"mixed", "cas").await, Ok(false));
    m.nodes[1].write(B0, b"mixed", Op::Del).await.unwrap();
    assert_eq!(set_if_absent(&m.nodes[0], b"mixed", "cas").await, Ok(true));
    assert_eq!(
        value(
            m.nodes[1].read(B0, b"mixed").await.unwrap(),
            m.nodes[1].now_ms()
        ),
        Some(b"cas".to_vec())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compare_and_set_needs_a_majority_of_the_owners() {
    let m = start(3).await;
    // Member 1 sees member 3 at an address nobody listens on: two of three owners.
    let mut urls = m.urls.clone();
    urls.insert(NodeId(3), "http://127.0.0.1:1".into());
    m.nodes[0].set_members(&urls);
    assert_eq!(set_if_absent(&m.nodes[0], b"k", "a").await, Ok(true));
    assert_eq!(set_if_absent(&m.nodes[0], b"k", "b").await, Ok(false));
    // And member 2 too: one of three, no majority.
    urls.insert(NodeId(2), "http://127.0.0.1:1".into());
    m.nodes[0].set_members(&urls);
    let alone = set_if_absent(&m.nodes[0], b"k2", "c").await;
    assert!(
        matches!(&alone, Err(ApError::Unavailable(why)) if why.contains("majority")),
        "{alone:?}"
    );
}

/// Bucket 0 read and written at one replica, in `session`.
fn one(session: &SessionGuard) -> Access {
    Access {
        r: Some(1),
        w: Some(1),
        session: Some(session.id()),
        ..B0
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_token_carries_what_was_seen_to_another_coordinator() {
    let m = start(3).await;
    let (a, b, c) = (&m.nodes[0], &m.nodes[1], &m.nodes[2]);
    // A write that reached member 1 only (the others missed it).
    a.apply_local(0, b"k", set("10"), None).await.unwrap();
    let now = a.now_ms();
    let at_a = a.open_session();
    let seen = a.read(one(&at_a), b"k").await.unwrap();
    assert_eq!(value(seen, now), Some(b"10".to_vec()));
    let token = SessionToken::decode(at_a.token().encode().as_bytes()).unwrap();
    // Member 2 alone is stale: without the token, an R=1 read there misses the write.
    let plain = Access { r: Some(1), ..B0 };
    assert_eq!(value(b.read(plain, b"k").await.unwrap(), now), None);
    // With it, member 2 reads more replicas until it has what the session saw.
    let at_b = b.open_session();
    at_b.join(&token);
    let read = b.read(one(&at_b), b"k").await.unwrap();
    assert_eq!(value(read, now), Some(b"10".to_vec()));
    // A write of the session is applied on top of what it saw: member 3 had nothing, yet
    // the increment counts from 10 (without the session it would start from nothing and
    // then lose to the older SET's epoch).
    let at_c = c.open_session();
    at_c.join(&at_b.token());
    assert_eq!(c.write(one(&at_c), b"k", Op::Incr(1)).await, Ok(Some(11)));
    let after = c.read(one(&at_c), b"k").await.unwrap();
    assert_eq!(value(after, now), Some(b"11".to_vec()));
    // An ended session forgets: its id no longer names a floor.
    let ended = at_c.id();
    drop(at_c);
    assert!(c
        .session_floor(
            Access {
                session: Some(ended),
                ..B0
            },
            b"k"
        )
        .is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_read_that_cannot_reach_what_it_saw_fails_rather_than_go_back() {
    let m = start(3).await;
    let (a, b) = (&m.nodes[0], &m.nodes[1]);
    a.apply_local(0, b"k", set("new"), None).await.unwrap();
    let at_a = a.open_session();
    a.read(one(&at_a), b"k").await.unwrap();
    // Member 2 cannot reach member 1, the only replica holding what the session saw.
    let mut urls = m.urls.clone();
    urls.insert(NodeId(1), "http://127.0.0.1:1".into());
    b.set_members(&urls);
    let at_b = b.open_session();
    at_b.join(&at_a.token());
    let got = b.read(one(&at_b), b"k").await;
    assert!(
        matches!(&got, Err(ApError::Unavailable(why)) if why.contains("session")),
        "{got:?}"
    );
    // Another key, which the session has not seen, is served as usual.
    assert_eq!(b.read(one(&at_b), b"other").await, Ok(None));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bucket_in_siblings_mode_keeps_concurrent_writes_until_one_replaces_them() {
    let m = start(3).await;
    let props = BucketProps {
        siblings: true,
        ..BucketProps::default()
    };
    for node in &m.nodes {
        node.set_buckets(&BTreeMap::from([(2, props)]));
    }
    let b2 = Access { bucket: 2, ..B0 };
    let (a, b, c) = (&m.nodes[0], &m.nodes[1], &m.nodes[2]);
    // Writes without a context through two members: both kept.
    a.sibling_put(b2, b"k", Default::default(), Some(b"x".to_vec()))
        .await
        .unwrap();
    b.sibling_put(b2, b"k", Default::default(), Some(b"y".to_vec()))
        .await
        .unwrap();
    let read = c.sibling_get(b2, b"k").await.unwrap();
    let mut values = read.values.clone();
    values.sort();
    assert_eq!(values, [b"x".to_vec(), b"y".to_vec()]);
    // A write with that read's context replaces both, wherever it is coordinated.
    b.sibling_put(b2, b"k", read.context.clone(), Some(b"z".to_vec()))
        .await
        .unwrap();
    assert_eq!(
        a.sibling_get(b2, b"k").await.unwrap().values,
        [b"z".to_vec()]
    );
    // A write with the stale context (it saw x and y, not z) is kept beside z.
    c.sibling_put(b2, b"k", read.context, Some(b"w".to_vec()))
        .await
        .unwrap();
    let mut values = a.sibling_get(b2, b"k").await.unwrap().values;
    values.sort();
    assert_eq!(values, [b"w".to_vec(), b"z".to_vec()]);
    // A delete with the latest context leaves nothing.
    let latest = b.sibling_get(b2, b"k").await.unwrap().context;
    a.sibling_put(b2, b"k", latest, None).await.unwrap();
    assert!(c.sibling_get(b2, b"k").await.unwrap().values.is_empty());
    // Bucket 0 keeps no siblings.
    let plain = a.sibling_get(B0, b"k").await;
    assert!(matches!(plain, Err(ApError::Invalid(_))), "{plain:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_apply_that_arrives_after_its_coordinator_stopped_waiting_is_not_applied() {
    let m = start(1).await;
    let a = &m.nodes[0];
    a.apply_local(0, b"k", set("first"), None).await.unwrap();
    let now = a.now_ms();
    // A late copy of an older SET: past its deadline, it must not supersede "first".
    let late = a.start_apply_local(0, b"k", set("stale"), None, None, Some(now - 1));
    let refused = late.await.unwrap();
    assert!(
        matches!(&refused, Err(ApError::Unavailable(why)) if why.contains("stopped waiting")),
        "{refused:?}"
    );
    assert_eq!(
        value(a.read_local(0, b"k").unwrap(), now),
        Some(b"first".to_vec())
    );
    // Within its deadline, it is applied.
    let timely = a.start_apply_local(0, b"k", set("second"), None, None, Some(now + 60_000));
    timely.await.unwrap().unwrap();
    assert_eq!(
        value(a.read_local(0, b"k").unwrap(), now),
        Some(b"second".to_vec())
    );
}

/// A replica service of an older build: the batch calls, but no `Calls` stream (the
/// generated default answers UNIMPLEMENTED), and scans paged by key only.
struct WithoutStream(ReplicaService);

#[tonic::async_trait]
impl Replica for WithoutStream {
    async fn apply_batch(
        &self,
        request: Request<ReplicaApplyBatch>,
    ) -> Result<Response<ReplicaStates>, Status> {
        self.0.apply_batch(request).await
    }

    async fn merge_batch(
        &self,
        request: Request<ReplicaMergeBatch>,
    ) -> Result<Response<ReplicaMergeBatchAck>, Status> {
        self.0.merge_batch(request).await
    }

    async fn read_batch(
        &self,
        request: Request<ReplicaReadBatch>,
    ) -> Result<Response<ReplicaStates>, Status> {
        self.0.read_batch(request).await
    }

    /// Pages by key only, as builds before paging by scan position did.
    async fn scan(&self, request: Request<ReplicaScan>) -> Result<Response<ReplicaKeys>, Status> {
        let mut r = request.into_inner();
        r.by_position = false;
        r.from_position = 0;
        self.0.scan(Request::new(r)).await
    }
}

/// The last member of `m` served again, at a new address, as an older build serves it
/// ([`WithoutStream`]): the member list with that address, and the server.
async fn last_as_older_build(
    m: &mut Members,
) -> (BTreeMap<NodeId, String>, tokio::task::JoinHandle<()>) {
    m.servers.pop().unwrap().abort();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut urls = m.urls.clone();
    urls.insert(
        NodeId(m.nodes.len() as u64),
        format!("http://{}", listener.local_addr().unwrap()),
    );
    let old = ReplicaServer::new(WithoutStream(ReplicaService {
        node: m.nodes.last().unwrap().clone(),
    }));
    (urls, serve_replica(old, listener))
}

/// Every page of a scan of bucket 0 through `node`, `count` at a time: the live keys seen,
/// the number of pages and the most keys (live or not) one page held.
async fn scan_all(node: &ApNode, count: usize) -> (BTreeSet<Vec<u8>>, usize, usize) {
    let now = node.now_ms();
    let (mut seen, mut pages, mut largest, mut cursor) = (BTreeSet::new(), 0, 0, 0);
    loop {
        let (next, states) = node.scan_page(0, cursor, count).await.unwrap();
        assert!(
            next == 0 || next > cursor,
            "the cursor went from {cursor} to {next}"
        );
        pages += 1;
        largest = largest.max(states.len());
        seen.extend(
            states
                .into_iter()
                .filter(|(_, s)| s.exists(now))
                .map(|(k, _)| k),
        );
        if next == 0 {
            return (seen, pages, largest);
        }
        cursor = next;
    }
}

/// A scan's pages cover every live key of the bucket (deleted ones hidden by their
/// tombstones) with a cursor that only moves forward; each member sends about COUNT keys
/// per page, from the page's position; and with a member of an older build, which pages
/// only by key, the coordinator reads the whole bucket and the pages still cover it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scan_pages_cover_the_bucket_from_about_count_keys_per_member() {
    let mut m = start(3).await;
    let a = m.nodes[0].clone();
    let mut live = BTreeSet::new();
    for i in 0..200 {
        let key = format!("key{i}").into_bytes();
        a.write(B0, &key, set("v")).await.unwrap();
        live.insert(key);
    }
    for i in (0..200).step_by(10) {
        let key = format!("key{i}").into_bytes();
        a.write(B0, &key, Op::Del).await.unwrap();
        live.remove(&key);
    }
    let (seen, pages, largest) = scan_all(&a, 10).await;
    assert_eq!(seen, live);
    assert!(
        largest <= 30 && pages >= 7,
        "{pages} pages, the largest of {largest}"
    );

    // A member asked for a page by position sends its keys from that position on, at
    // most the limit (no two of these keys share a position).
    let service = ReplicaService {
        node: m.nodes[1].clone(),
    };
    let from = concord_storage::ap::scan_position(b"key7");
    let page = service
        .scan(Request::new(ReplicaScan {
            cluster_id: CLUSTER,
            bucket: 0,
            limit: 10,
            from_position: from,
            by_position: true,
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert!(page.by_position && !page.done && page.keys.len() == 10);
    assert_eq!(&page.keys[0].key[..], b"key7");
    assert!(page
        .keys
        .iter()
        .all(|k| concord_storage::ap::scan_position(&k.key) >= from));

    // Member 3 as an older build.
    let (urls, _server) = last_as_older_build(&mut m).await;
    a.set_members(&urls);
    let (seen, _, _) = scan_all(&a, 10).await;
    assert_eq!(seen, live);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_calls_take_direct_links_unless_they_are_off() {
    let m = start(3).await;
    let a = &m.nodes[0];
    for i in 0..5 {
        a.write(B0, b"k", set(&format!("v{i}"))).await.unwrap();
        a.write(B0, b"n", Op::Incr(1)).await.unwrap();
    }
    assert_eq!(
        value(a.read(B0, b"k").await.unwrap(), a.now_ms()),
        Some(b"v4".to_vec())
    );
    let accepted: u64 = m.nodes[1..].iter().map(|n| n.direct_links_accepted()).sum();
    assert!(accepted > 0, "no replica call took a direct link");
    // Off: the same calls on the `Calls` stream.
    let config = ApConfig {
        timeout: Duration::from_millis(1500),
        ..ApConfig::default()
    };
    let m = start_members(3, config, false).await;
    let b = &m.nodes[0];
    for i in 0..5 {
        b.write(B0, b"k", set(&format!("w{i}"))).await.unwrap();
    }
    assert_eq!(
        value(b.read(B0, b"k").await.unwrap(), b.now_ms()),
        Some(b"w4".to_vec())
    );
    let accepted: u64 = m.nodes.iter().map(|n| n.direct_links_accepted()).sum();
    assert_eq!(accepted, 0, "a direct link was opened while they were off");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_that_does_not_serve_the_stream_is_called_unary() {
    // Two members, N=2 W=2 R=2: every write and read needs member 2's answer.
    let mut m = start(2).await;
    let (urls, _server) = last_as_older_build(&mut m).await;
    let a = &m.nodes[0];
    a.set_members(&urls);
    for i in 0..3 {
        a.write(B0, b"k", set(&format!("v{i}"))).await.unwrap();
        assert_eq!(
            value(a.read(B0, b"k").await.unwrap(), a.now_ms()),
            Some(format!("v{i}").into_bytes())
        );
        a.write(B0, b"n", Op::Incr(1)).await.unwrap();
    }
    assert_eq!(
        value(m.nodes[1].read_local(0, b"k").unwrap(), a.now_ms()),
        Some(b"v2".to_vec())
    );
}

/// A proxied connection's task, and what silences it.
type ProxiedConn = (tokio::task::JoinHandle<()>, Arc<tokio::sync::Notify>);

/// A TCP proxy in front of a member, whose connections a test can cut (closed at once) or
/// silence (kept open, nothing forwarded: a connection that died without a word).
struct Proxy {
    url: String,
    conns: Arc<std::sync::Mutex<Vec<ProxiedConn>>>,
    _accept: tokio::task::JoinHandle<()>,
}

impl Proxy {
    async fn to(upstream_url: &str) -> Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let upstream = upstream_url.trim_start_matches("http://").to_string();
        let conns: Arc<std::sync::Mutex<Vec<_>>> = Arc::default();
        let held = conns.clone();
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let upstream = upstream.clone();
                let _ = inbound.set_nodelay(true);
                let silence = Arc::new(tokio::sync::Notify::new());
                let silenced = silence.clone();
                let conn = tokio::spawn(async move {
                    let Ok(mut out) = tokio::net::TcpStream::connect(upstream).await else {
                        return;
                    };
                    let _ = out.set_nodelay(true);
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut out) => {}
                        _ = silenced.notified() => {
                            // Both sockets stay open until the task is aborted.
                            std::future::pending::<()>().await;
                        }
                    }
                });
                held.lock().unwrap().push((conn, silence));
            }
        });
        Proxy {
            url,
            conns,
            _accept: accept,
        }
    }

    fn cut(&self) {
        for (conn, _) in self.conns.lock().unwrap().drain(..) {
            conn.abort();
        }
    }

    fn silence(&self) {
        for (_, silence) in self.conns.lock().unwrap().iter() {
            silence.notify_one();
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.cut();
    }
}

/// Two members (N=2 W=2: every write needs member 2), member 1 reaching member 2
/// through a proxy, and one write made through it.
async fn two_members_behind_a_proxy() -> (Members, Proxy) {
    let m = start(2).await;
    let proxy = Proxy::to(&m.urls[&NodeId(2)]).await;
    let mut urls = m.urls.clone();
    urls.insert(NodeId(2), proxy.url.clone());
    m.nodes[0].set_members(&urls);
    m.nodes[0].write(B0, b"k", set("before")).await.unwrap();
    (m, proxy)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_stream_to_a_replica_is_opened_again() {
    // Member 1 reaches member 2 through a proxy whose connections the test cuts.
    let (m, proxy) = two_members_behind_a_proxy().await;
    let a = &m.nodes[0];
    for round in 0..3 {
        proxy.cut();
        // The calls in flight when a stream breaks fail; the next ones open a new stream.
        let v = format!("after-{round}");
        concord_testkit::eventually("a write after the cut", Duration::from_secs(10), || {
            let v = v.clone();
            async move { a.write(B0, b"k", set(&v)).await.ok() }
        })
        .await;
        for i in 0..5 {
            a.write(B0, b"k", set(&format!("{v}-{i}"))).await.unwrap();
        }
        assert_eq!(
            value(a.read(B0, b"k").await.unwrap(), a.now_ms()),
            Some(format!("{v}-4").into_bytes())
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_goes_silent_is_replaced() {
    // Member 1 reaches member 2 through a proxy that stops forwarding on the connection
    // in use, without closing it: the calls on it time out, HTTP/2 pings find it dead,
    // and a new connection and stream carry the writes again.
    let (m, proxy) = two_members_behind_a_proxy().await;
    let a = &m.nodes[0];
    proxy.silence();
    let failed = a.write(B0, b"k", set("during")).await;
    assert!(failed.is_err(), "{failed:?}");
    let started = std::time::Instant::now();
    concord_testkit::eventually(
        "a write on a new connection",
        Duration::from_secs(30),
        || async { a.write(B0, b"k", set("after")).await.ok() },
    )
    .await;
    eprintln!("writes went through again after {:?}", started.elapsed());
    assert_eq!(
        value(a.read(B0, b"k").await.unwrap(), a.now_ms()),
        Some(b"after".to_vec())
    );
}
