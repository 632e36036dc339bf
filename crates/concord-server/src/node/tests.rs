//! Clusters of real nodes (real disks in temp dirs) over the in-process network.
//!
//! Nothing here asserts on timing: every wait polls a condition with a generous deadline,
//! and client writes retry until acknowledged, as a client would.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use concord_raft::{ConfChange, ConfChangeSingle, ConfChangeType, ConfState, NodeId, StateRole};
use concord_storage::mvcc::types::{Command, PutRequest, RangeRequest, Response};
use tempfile::TempDir;

use super::{start, NodeConfig, NodeHandle};
use crate::error::KvError;
use concord_runtime::transport::LocalNetwork;
use concord_runtime::NodeError;

const N1: NodeId = NodeId(1);
const DEADLINE: Duration = Duration::from_secs(30);

struct Cluster {
    net: LocalNetwork,
    ids: Vec<NodeId>,
    dirs: BTreeMap<NodeId, TempDir>,
    nodes: BTreeMap<NodeId, NodeHandle>,
    tweak: fn(&mut NodeConfig),
}

fn no_tweak(_: &mut NodeConfig) {}

impl Cluster {
    fn new(n: u64, tweak: fn(&mut NodeConfig)) -> Self {
        let ids: Vec<NodeId> = (1..=n).map(NodeId).collect();
        let mut c = Self {
            net: LocalNetwork::new(),
            ids: ids.clone(),
            dirs: BTreeMap::new(),
            nodes: BTreeMap::new(),
            tweak,
        };
        for id in ids {
            c.dirs
                .insert(id, tempfile::tempdir().expect("temp dir for a test node"));
            c.start(id);
        }
        c
    }

    fn config(&self, id: NodeId) -> NodeConfig {
        let mut cfg = NodeConfig::new(id, self.ids.clone(), self.dirs[&id].path());
        cfg.raft.tick = Duration::from_millis(20);
        cfg.raft.election_ticks = 10;
        cfg.raft.heartbeat_ticks = 1;
        cfg.raft.request_timeout = Duration::from_secs(5);
        (self.tweak)(&mut cfg);
        cfg
    }

    fn start(&mut self, id: impl Into<NodeId>) {
        let id = id.into();
        let (transport, inbox) = self.net.register(id);
        let node = start(self.config(id), Arc::new(transport), inbox).expect("node starts");
        self.nodes.insert(id, node);
    }

    /// Starts a new, empty node that joins the running cluster once added.
    fn join(&mut self, id: impl Into<NodeId>) {
        let id = id.into();
        self.dirs
            .insert(id, tempfile::tempdir().expect("temp dir for a test node"));
        let (transport, inbox) = self.net.register(id);
        let mut cfg = self.config(id);
        cfg.raft.initial_voters = Vec::new();
        let node = start(cfg, Arc::new(transport), inbox).expect("joining node starts");
        self.nodes.insert(id, node);
    }

    async fn stop(&mut self, id: impl Into<NodeId>) {
        let id = id.into();
        if let Some(n) = self.nodes.remove(&id) {
            n.shutdown().await.expect("clean shutdown");
        }
    }

    fn node(&self, id: impl Into<NodeId>) -> &NodeHandle {
        let id = id.into();
        &self.nodes[&id]
    }

    /// Waits until some running node is leader and every other running node follows it.
    async fn leader(&self) -> NodeId {
        wait_for("a leader all nodes agree on", || async {
            let statuses: Vec<_> = self.nodes.values().map(|n| n.status()).collect();
            let leader = statuses.iter().find(|s| s.role == StateRole::Leader)?.id;
            statuses
                .iter()
                .all(|s| s.leader == Some(leader))
                .then_some(leader)
        })
        .await
    }

    async fn shutdown(mut self) {
        let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
        for id in ids {
            self.stop(id).await;
        }
    }

    /// Waits until every running node has the same store hash at a revision >= `min_rev`.
    async fn converged(&self, min_rev: i64) -> (u32, i64) {
        wait_for("stores to converge", || async {
            let mut seen = None;
            for n in self.nodes.values() {
                let h = n.hash_kv().ok()?;
                if h.1 < min_rev || seen.is_some_and(|s| s != h) {
                    return None;
                }
                seen = Some(h);
            }
            seen
        })
        .await
    }
}

async fn wait_for<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn put_cmd(key: &str, value: &str) -> Command {
    Command::Put(PutRequest {
        key: key.as_bytes().to_vec(),
        value: value.as_bytes().to_vec(),
        ..PutRequest::default()
    })
}

/// Puts until acknowledged (a client retrying through elections); returns the revision.
async fn put(node: &NodeHandle, key: &str, value: &str) -> i64 {
    wait_for("a put to be acknowledged", || async {
        match node.propose(put_cmd(key, value)).await {
            Ok(Response::Put(p)) => Some(p.revision),
            Ok(other) => panic!("unexpected response {other:?}"),
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(20)).await;
                None
            }
        }
    })
    .await
}

fn get_local(node: &NodeHandle, key: &str) -> Option<Vec<u8>> {
    let r = node
        .serializable_range(&RangeRequest {
            key: key.as_bytes().to_vec(),
            ..RangeRequest::default()
        })
        .expect("local read");
    r.kvs.into_iter().next().map(|kv| kv.value)
}

async fn get_linearizable(node: &NodeHandle, key: &str) -> Option<Vec<u8>> {
    let req = RangeRequest {
        key: key.as_bytes().to_vec(),
        ..RangeRequest::default()
    };
    wait_for("a linearizable read", || async {
        match node.linearizable_range(&req).await {
            Ok(r) => Some(r.kvs.into_iter().next().map(|kv| kv.value)),
            Err(_) => None,
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn single_node_serves_and_refuses_bad_requests() {
    let c = Cluster::new(1, no_tweak);
    c.leader().await;
    let n = c.node(1);
    let rev = put(n, "a", "1").await;
    let kv = n
        .serializable_range(&RangeRequest {
            key: b"a".to_vec(),
            ..RangeRequest::default()
        })
        .expect("local read")
        .kvs;
    assert_eq!(kv.len(), 1);
    assert_eq!(
        (kv[0].value.as_slice(), kv[0].mod_revision),
        (&b"1"[..], rev)
    );
    let big = "x".repeat(2 << 20);
    assert_eq!(
        n.propose(put_cmd("big", &big)).await,
        Err(KvError::Node(NodeError::RequestTooLarge))
    );
    // State-machine errors come back with etcd's strings.
    let err = n
        .propose(Command::LeaseRevoke { id: 12345 })
        .await
        .expect_err("unknown lease");
    assert_eq!(err.to_string(), "etcdserver: requested lease not found");
    let n = n.clone();
    let stopped = tokio::spawn({
        let n = n.clone();
        async move { n.stopped().await }
    });
    // Commits do not resolve it.
    put(&n, "b", "1").await;
    tokio::task::yield_now().await;
    assert!(!stopped.is_finished());
    c.shutdown().await;
    assert_eq!(
        n.propose(put_cmd("a", "2")).await,
        Err(KvError::Node(NodeError::Stopped))
    );
    assert!(n.status().stopped);
    assert_eq!(stopped.await.unwrap(), NodeError::Stopped.to_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_nodes_elect_commit_through_every_node_and_converge() {
    let c = Cluster::new(3, no_tweak);
    c.leader().await;
    let mut tasks = Vec::new();
    for id in 1..=3u64 {
        let node = c.node(id).clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..30 {
                put(&node, &format!("k{id}-{i}"), &format!("v{i}")).await;
            }
        }));
    }
    for t in tasks {
        t.await.expect("writer task");
    }
    let (_, rev) = c.converged(90).await;
    assert!(rev >= 90);
    for id in 1..=3u64 {
        for w in 1..=3u64 {
            assert_eq!(
                get_local(c.node(id), &format!("k{w}-29")),
                Some(b"v29".to_vec())
            );
        }
    }
    // Every node agrees on one leader and the same applied index eventually.
    let leader = c.leader().await;
    assert!((1..=3).contains(&leader.get()));
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn linearizable_read_after_a_write_sees_it_on_every_node() {
    let c = Cluster::new(3, no_tweak);
    c.leader().await;
    for round in 0..5 {
        for id in 1..=3u64 {
            let value = format!("v{round}-{id}");
            put(c.node(id), "shared", &value).await;
            let reader = c.node(id % 3 + 1);
            assert_eq!(
                get_linearizable(reader, "shared").await,
                Some(value.into_bytes())
            );
        }
    }
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn partitioned_leader_is_replaced_and_no_acknowledged_write_is_lost() {
    let c = Cluster::new(3, no_tweak);
    let old = c.leader().await;
    let old_term = c.node(old).status().term;
    let mut acked = Vec::new();
    for i in 0..20 {
        let k = format!("before-{i}");
        put(c.node(old), &k, "x").await;
        acked.push(k);
    }
    c.net.isolate(old);
    // Writes to the isolated leader cannot commit; whatever it acknowledges must survive.
    let stranded = {
        let node = c.node(old).clone();
        tokio::spawn(async move {
            let mut ok = Vec::new();
            for i in 0..5 {
                let k = format!("stranded-{i}");
                if node.propose(put_cmd(&k, "x")).await.is_ok() {
                    ok.push(k);
                }
            }
            ok
        })
    };
    let others: Vec<NodeId> = (1..=3).map(NodeId).filter(|&i| i != old).collect();
    let new = wait_for("a new leader among the majority", || async {
        others.iter().copied().find(|&i| {
            let s = c.node(i).status();
            s.role == StateRole::Leader && s.term > old_term
        })
    })
    .await;
    for i in 0..20 {
        let k = format!("after-{i}");
        put(c.node(new), &k, "y").await;
        acked.push(k);
    }
    c.net.heal();
    acked.extend(stranded.await.expect("stranded writer"));
    c.converged(40).await;
    for id in 1..=3u64 {
        for k in &acked {
            assert!(get_local(c.node(id), k).is_some(), "node {id} lost {k}");
        }
    }
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn restarted_node_recovers_from_its_data_dir_and_catches_up() {
    let mut c = Cluster::new(3, no_tweak);
    c.leader().await;
    for i in 0..10 {
        put(c.node(1), &format!("a{i}"), "1").await;
    }
    c.converged(10).await;
    c.stop(3).await;
    let leader = c.leader().await;
    for i in 0..10 {
        put(c.node(leader), &format!("b{i}"), "2").await;
    }
    c.start(3);
    // Recovered from disk: the first batch is there before any catch-up can happen.
    assert_eq!(get_local(c.node(3), "a9"), Some(b"1".to_vec()));
    c.converged(20).await;
    assert_eq!(get_local(c.node(3), "b9"), Some(b"2".to_vec()));
    // And it takes part again: a write through it commits.
    put(c.node(3), "c", "3").await;
    c.converged(21).await;
    c.shutdown().await;
}

fn small_snapshots(cfg: &mut NodeConfig) {
    cfg.raft.snapshot_count = 20;
    cfg.raft.snapshot_catch_up_entries = 5;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn far_behind_follower_is_caught_up_by_snapshot() {
    let mut c = Cluster::new(3, small_snapshots);
    let leader = c.leader().await;
    let lagging = (1..=3).map(NodeId).find(|&i| i != leader).unwrap_or(N1);
    c.net.isolate(lagging);
    let behind = c.node(lagging).status().applied;
    let writer = (1..=3).map(NodeId).find(|&i| i != lagging).unwrap_or(N1);
    for i in 0..100 {
        put(c.node(writer), &format!("s{i}"), "v").await;
    }
    // The majority compacted its logs past everything the lagging node has.
    let _ = wait_for("the majority to compact past the lagging node", || async {
        (1..=3)
            .map(NodeId)
            .filter(|&i| i != lagging)
            .all(|i| c.node(i).status().snapshot_index > behind)
            .then_some(())
    })
    .await;
    c.net.heal();
    c.converged(100).await;
    // (The status is published after the store changed, so wait for it too.)
    wait_for("the lagging node to report a snapshot install", || async {
        (c.node(lagging).status().snapshots_installed >= 1).then_some(())
    })
    .await;
    assert_eq!(get_local(c.node(lagging), "s99"), Some(b"v".to_vec()));
    // The node that installed a snapshot restarts from it.
    c.stop(lagging).await;
    c.start(lagging);
    assert_eq!(get_local(c.node(lagging), "s0"), Some(b"v".to_vec()));
    put(c.node(writer), "after", "restart").await;
    c.converged(101).await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leadership_moves_on_transfer_and_campaign() {
    let c = Cluster::new(3, no_tweak);
    let leader = c.leader().await;
    let target = (1..=3).map(NodeId).find(|&i| i != leader).unwrap_or(N1);
    assert!(matches!(
        c.node(target).transfer_leader(leader).await,
        Err(KvError::Node(NodeError::NotLeader { .. }))
    ));
    c.node(leader)
        .transfer_leader(target)
        .await
        .expect("leader accepts a transfer");
    wait_for("the transfer target to lead", || async {
        (c.node(target).status().role == StateRole::Leader).then_some(())
    })
    .await;
    put(c.node(leader), "after-transfer", "1").await;
    let third = (1..=3)
        .map(NodeId)
        .find(|&i| i != leader && i != target)
        .unwrap_or(N1);
    c.node(third).campaign().await.expect("campaign accepted");
    // Pre-vote may refuse a campaign against a live leader; either way the cluster serves.
    put(c.node(third), "after-campaign", "1").await;
    c.converged(2).await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn without_a_quorum_requests_fail_with_etcd_errors() {
    // Node 1 of a two-voter cluster whose other member never starts: no leader, ever.
    let dir = tempfile::tempdir().expect("temp dir");
    let net = LocalNetwork::new();
    let (transport, inbox) = net.register(N1);
    let mut cfg = NodeConfig::new(N1, vec![N1, NodeId(2)], dir.path());
    cfg.raft.tick = Duration::from_millis(20);
    cfg.raft.request_timeout = Duration::from_secs(1);
    let n = start(cfg, Arc::new(transport), inbox).expect("node starts");
    let err = n.propose(put_cmd("a", "1")).await.expect_err("no quorum");
    assert_eq!(err, KvError::Node(NodeError::NoLeader));
    assert_eq!(err.to_string(), "etcdserver: no leader");
    let err = n
        .linearizable_range(&RangeRequest {
            key: b"a".to_vec(),
            ..RangeRequest::default()
        })
        .await
        .expect_err("no quorum");
    assert!(
        matches!(err, KvError::Node(NodeError::NoLeader | NodeError::Timeout)),
        "unexpected {err:?}"
    );
    // Serializable reads are local and still work.
    assert_eq!(get_local(&n, "a"), None);
    assert_eq!(n.status().leader, None);
    n.shutdown().await.expect("shutdown");
    n.shutdown().await.expect("shutdown is idempotent");
}

async fn change(node: &NodeHandle, kind: ConfChangeType, node_id: u64) -> ConfState {
    let node_id = NodeId(node_id);
    wait_for("a membership change to apply", || async {
        let cc = ConfChange::new(vec![ConfChangeSingle { kind, node_id }]);
        match node.change_membership(cc).await {
            Ok(cs) => Some(cs),
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(20)).await;
                None
            }
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn learner_joins_is_promoted_and_an_old_member_is_removed() {
    let mut c = Cluster::new(3, no_tweak);
    let leader = c.leader().await;
    for i in 0..10 {
        put(c.node(leader), &format!("m{i}"), "v").await;
    }
    c.join(4);
    let cs = change(c.node(2), ConfChangeType::AddLearner, 4).await;
    assert!(cs.learners.contains(&NodeId(4)), "{cs:?}");
    // The learner receives everything (by snapshot: its log is empty).
    c.converged(10).await;
    assert_eq!(get_local(c.node(4), "m9"), Some(b"v".to_vec()));
    let cs = change(c.node(3), ConfChangeType::AddNode, 4).await;
    assert!(
        cs.voters.contains(&NodeId(4)) && !cs.learners.contains(&NodeId(4)),
        "{cs:?}"
    );
    // Remove node 1 (possibly the leader) through another member.
    let cs = change(c.node(2), ConfChangeType::RemoveNode, 1).await;
    assert_eq!(cs.voters, [2, 3, 4].map(NodeId).to_vec());
    c.stop(1).await;
    c.leader().await;
    put(c.node(4), "after-removal", "v").await;
    c.converged(11).await;
    assert_eq!(get_local(c.node(2), "after-removal"), Some(b"v".to_vec()));
    c.shutdown().await;
}

/// Two independent Raft groups (two keyspaces) on the same three nodes, over one
/// connection per pair of nodes: cutting group 1's links leaves it without a quorum, and
/// group 2 keeps committing through the same connections; after the heal group 1 commits
/// again and both converge.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_groups_on_three_nodes_are_independent() {
    use concord_runtime::transport::GroupTransport;

    const GROUPS: [u64; 2] = [1, 2];
    let net = LocalNetwork::new();
    let ids: Vec<NodeId> = [1, 2, 3].map(NodeId).to_vec();
    let dir = tempfile::tempdir().expect("temp dir");
    // (group, node) -> replica
    let mut replicas: BTreeMap<(u64, NodeId), NodeHandle> = BTreeMap::new();
    for &id in &ids {
        let (connection, router) = net.attach(id);
        let connection = Arc::new(connection);
        for group in GROUPS {
            let mut cfg =
                NodeConfig::new(id, ids.clone(), dir.path().join(format!("g{group}-n{id}")));
            cfg.raft.tick = Duration::from_millis(20);
            cfg.raft.request_timeout = Duration::from_secs(2);
            let transport = GroupTransport::new(connection.clone(), group);
            let node =
                start(cfg, Arc::new(transport), router.register(group)).expect("replica starts");
            replicas.insert((group, id), node);
        }
    }
    async fn leader_of(replicas: &BTreeMap<(u64, NodeId), NodeHandle>, group: u64) -> NodeId {
        wait_for("a leader of the group", || async {
            let st: Vec<_> = replicas
                .iter()
                .filter(|((g, _), _)| *g == group)
                .map(|(_, n)| n.status())
                .collect();
            let leader = st.iter().find(|s| s.role == StateRole::Leader)?.id;
            st.iter()
                .all(|s| s.leader == Some(leader))
                .then_some(leader)
        })
        .await
    }
    for group in GROUPS {
        let leader = leader_of(&replicas, group).await;
        put(
            &replicas[&(group, leader)],
            "k",
            &format!("g{group}-before"),
        )
        .await;
    }
    // Group 1 loses every link: no replica of it can reach a quorum.
    for &a in &ids {
        for &b in &ids {
            if a != b {
                net.cut_group(a, b, 1);
            }
        }
    }
    // Group 2 keeps committing, many times, while group 1 is cut off.
    let g2 = leader_of(&replicas, 2).await;
    for i in 0..20 {
        put(&replicas[&(2, g2)], "k", &format!("g2-during-{i}")).await;
    }
    // Group 1 cannot: a write through any of its replicas fails.
    for &id in &ids {
        let r = replicas[&(1, id)].propose(put_cmd("k", "g1-during")).await;
        assert!(
            r.is_err(),
            "group 1 committed without a quorum via {id}: {r:?}"
        );
    }
    net.heal();
    let g1 = leader_of(&replicas, 1).await;
    put(&replicas[&(1, g1)], "k", "g1-after").await;
    for &id in &ids {
        assert_eq!(
            get_linearizable(&replicas[&(1, id)], "k").await.as_deref(),
            Some(&b"g1-after"[..])
        );
        assert_eq!(
            get_linearizable(&replicas[&(2, id)], "k").await.as_deref(),
            Some(&b"g2-during-19"[..])
        );
    }
    for node in replicas.values() {
        node.shutdown().await.expect("clean shutdown");
    }
}

/// The read levels at a follower cut off from the others, after a write it cannot see:
/// `eventual` serves the stale value (the negative control: a follower read without a
/// check); `session` with the write's revision never does (it waits, then times out);
/// `bounded` serves locally while its last confirmed read is within the bound, and once
/// the write is older than the bound it refuses rather than serve a value staler than
/// that; after the heal every level sees the write.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn read_levels_at_an_isolated_follower() {
    use concord_proto::consistency::ReadConsistency::{Bounded, Eventual, Session, Strong};
    let c = Cluster::new(3, |cfg| cfg.raft.request_timeout = Duration::from_secs(2));
    let leader = c.leader().await;
    let f = (1..=3).map(NodeId).find(|&i| i != leader).unwrap_or(N1);
    let req = RangeRequest {
        key: b"k".to_vec(),
        ..RangeRequest::default()
    };
    let read = |level| {
        let (node, req) = (c.node(f).clone(), req.clone());
        async move {
            node.range_at(level, &req)
                .await
                .map(|r| r.kvs.into_iter().next().map(|kv| kv.value))
        }
    };
    put(c.node(leader), "k", "old").await;
    assert_eq!(
        get_linearizable(c.node(f), "k").await,
        Some(b"old".to_vec())
    );
    // The strong read just made confirms freshness: a generous bound serves locally,
    // even cut off.
    c.net.isolate(f);
    let new_rev = put(c.node(leader), "k", "new").await;
    let written = tokio::time::Instant::now();
    assert_eq!(
        read(Bounded(Duration::from_secs(60))).await,
        Ok(Some(b"old".to_vec()))
    );
    assert_eq!(read(Eventual).await, Ok(Some(b"old".to_vec())));
    // The session that wrote `new` never reads `old` here.
    let err = read(Session(new_rev))
        .await
        .expect_err("cannot reach the revision");
    assert_eq!(err, KvError::Node(NodeError::Timeout));
    // Once `new` is older than the bound, a bounded read must not answer `old`.
    let bound = Duration::from_millis(300);
    tokio::time::sleep_until(written + bound).await;
    let got = read(Bounded(bound)).await;
    assert!(got.is_err(), "a read staler than its bound: {got:?}");
    // Eventual still answers the stale value: what the bound protects against.
    assert_eq!(read(Eventual).await, Ok(Some(b"old".to_vec())));
    assert!(read(Strong).await.is_err());

    c.net.heal();
    for level in [Session(new_rev), Bounded(bound), Strong] {
        let got = wait_for("the healed follower to answer", || async {
            read(level).await.ok()
        })
        .await;
        assert_eq!(got, Some(b"new".to_vec()), "{level}");
    }
    c.shutdown().await;
}

/// A write's answer comes after the node's status shows it: a client that sees its put
/// answered and then opens a watch "from now" must not be shown that put again (the
/// watch's start revision comes from the status).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_answered_write_is_in_the_status_before_its_answer() {
    let c = Cluster::new(3, no_tweak);
    let leader = c.leader().await;
    for id in [
        leader,
        c.ids.iter().copied().find(|&i| i != leader).unwrap(),
    ] {
        let n = c.node(id);
        for i in 0..200 {
            let rev = put(n, &format!("k{i}"), "v").await;
            let shown = n.watch_status().borrow().state.revision;
            assert!(
                shown >= rev,
                "answered revision {rev}, status shows {shown}"
            );
        }
    }
    c.shutdown().await;
}

/// The node whose driver stalls at its next WAL write, and for how long (ms): the leader
/// of [`a_stalled_leader_does_not_serve_reads_on_an_expired_lease`].
static STALL: std::sync::Mutex<Option<(NodeId, u64)>> = std::sync::Mutex::new(None);

/// Blocks its node's driver thread inside the WAL-written hook once, when [`STALL`] names
/// the node: a driver paused as a `SIGSTOP` or a long fsync would pause it.
#[derive(Debug)]
struct StallingTelemetry(NodeId);

impl concord_runtime::Telemetry for StallingTelemetry {
    fn wal_written(&self, _entries: usize, _synced: bool, _took: Duration) {
        let stall = {
            let mut s = STALL.lock().unwrap_or_else(|e| e.into_inner());
            match *s {
                Some((id, ms)) if id == self.0 => s.take().map(|_| ms),
                _ => None,
            }
        };
        if let Some(ms) = stall {
            std::thread::sleep(Duration::from_millis(ms));
        }
    }
}

const STALL_MS: u64 = 3000;

fn lease_reads_that_stall(cfg: &mut NodeConfig) {
    cfg.raft.lease_reads = true;
    cfg.raft.request_timeout = Duration::from_secs(6);
    cfg.raft.telemetry = Arc::new(StallingTelemetry(cfg.raft.id));
}

/// With lease reads, a leader whose driver stalls (here for 3 s, blocked in its WAL write
/// while cut off) resumes with its lease expired: the ticks it missed are counted
/// from the monotonic clock before it handles a read, so it does not answer the read from
/// its own stale state although another leader has meanwhile been elected and committed a
/// newer value. (Counting timer firings instead, it would see one late tick and a lease
/// still valid, and answer the old value.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stalled_leader_does_not_serve_reads_on_an_expired_lease() {
    let c = Cluster::new(3, lease_reads_that_stall);
    let leader = c.leader().await;
    put(c.node(leader), "k", "old").await;
    // A lease needs heartbeats acknowledged after the leader's first ticks.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        get_linearizable(c.node(leader), "k").await,
        Some(b"old".to_vec())
    );
    // Cut the leader off, then make its driver stall at the WAL write of a new proposal.
    c.net.isolate(leader);
    *STALL.lock().unwrap() = Some((leader, STALL_MS));
    let stalled_at = std::time::Instant::now();
    let stalled = c.node(leader).clone();
    let proposal = tokio::spawn(async move { stalled.propose(put_cmd("x", "1")).await });
    wait_for("the leader's driver to stall", || async {
        STALL.lock().unwrap().is_none().then_some(())
    })
    .await;
    // Meanwhile the others elect a leader and commit a newer value.
    let other = (1..=3).map(NodeId).find(|&i| i != leader).unwrap_or(N1);
    put(c.node(other), "k", "new").await;
    // A read queued at the stalled leader is handled right after it resumes.
    let req = RangeRequest {
        key: b"k".to_vec(),
        ..RangeRequest::default()
    };
    let queued_at = stalled_at.elapsed();
    let read = c.node(leader).linearizable_range(&req).await;
    assert!(
        queued_at < Duration::from_millis(STALL_MS),
        "the read was not queued during the stall ({queued_at:?}): the test proves nothing"
    );
    let value = read
        .as_ref()
        .ok()
        .and_then(|r| r.kvs.first())
        .map(|kv| kv.value.clone());
    assert_ne!(
        value,
        Some(b"old".to_vec()),
        "a stale read on an expired lease: {read:?}"
    );
    let _ = proposal.await;
    c.net.heal();
    assert_eq!(
        get_linearizable(c.node(leader), "k").await,
        Some(b"new".to_vec())
    );
    c.shutdown().await;
}

/// The auth entry with auth `enabled` at `revision` (the gate reads only these fields).
fn auth_entry(enabled: bool, revision: u64) -> Command {
    let state = crate::auth::AuthState {
        enabled,
        revision,
        ..crate::auth::AuthState::default()
    };
    Command::ClusterMeta {
        key: crate::auth::META_KEY.to_vec(),
        value: Some(serde_json::to_vec(&state).expect("auth state as JSON")),
    }
}

fn authorized(auth_revision: Option<u64>, key: &str) -> Command {
    Command::Authorized {
        auth_revision,
        cmd: Box::new(put_cmd(key, "v")),
    }
}

/// Auth guarantee 4 at the state machine: an authorized write applies only while auth is
/// off or at the revision it was checked at; the check sees an auth change earlier in the
/// same batch, and the state read back when the store reopens. Refused writes change
/// nothing.
#[test]
fn authorized_writes_are_checked_again_at_apply() {
    use concord_storage::disk::RealDisk;
    use concord_storage::errors::RequestError::{AuthOldRevision, UserEmpty};
    use concord_storage::mvcc::MvccConfig;

    use super::KvState;
    use concord_runtime::StateMachine as _;

    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("state.redb");
    let open = || KvState::open(RealDisk, &path, MvccConfig::default()).expect("store opens");
    let mut index = 0;
    let mut apply = |sm: &mut KvState<RealDisk>, cmds: Vec<Command>| {
        let bytes: Vec<Vec<u8>> = cmds.iter().map(Command::encode).collect();
        let entries: Vec<(u64, Option<&[u8]>)> = bytes
            .iter()
            .map(|b| {
                index += 1;
                (index, Some(&b[..]))
            })
            .collect();
        sm.apply_batch(&entries)
            .expect("apply")
            .into_iter()
            .map(|o| o.expect("applied now").map(|_| ()))
            .collect::<Vec<_>>()
    };
    let has = |sm: &KvState<RealDisk>, key: &str| {
        !sm.store()
            .range(&RangeRequest {
                key: key.as_bytes().to_vec(),
                ..RangeRequest::default()
            })
            .expect("range")
            .expect("a valid range")
            .kvs
            .is_empty()
    };

    let mut sm = open();
    // Auth never enabled: any authorized write applies.
    assert_eq!(
        apply(
            &mut sm,
            vec![authorized(None, "a"), authorized(Some(0), "b")]
        ),
        vec![Ok(()), Ok(())]
    );
    // Enabled at revision 3, in the same batch as the writes that follow it.
    let got = apply(
        &mut sm,
        vec![
            auth_entry(true, 3),
            authorized(Some(2), "stale"),
            authorized(None, "anonymous"),
            authorized(Some(3), "current"),
        ],
    );
    assert_eq!(
        got,
        vec![Ok(()), Err(AuthOldRevision), Err(UserEmpty), Ok(())]
    );
    assert!(!has(&sm, "stale") && !has(&sm, "anonymous") && has(&sm, "current"));
    // The gate is read from the file when the store opens again.
    drop(sm);
    let mut sm = open();
    assert_eq!(
        apply(
            &mut sm,
            vec![authorized(Some(2), "stale2"), authorized(Some(3), "ok")]
        ),
        vec![Err(AuthOldRevision), Ok(())]
    );
    assert!(!has(&sm, "stale2"));
    // Disabled again: writes without a user apply.
    assert_eq!(
        apply(&mut sm, vec![auth_entry(false, 4), authorized(None, "off")]),
        vec![Ok(()), Ok(())]
    );
    // A damaged auth entry refuses every authorized write (closed, not open).
    let damaged = Command::ClusterMeta {
        key: crate::auth::META_KEY.to_vec(),
        value: Some(b"not json".to_vec()),
    };
    assert_eq!(
        apply(&mut sm, vec![damaged, authorized(Some(u64::MAX - 1), "x")]),
        vec![Ok(()), Err(AuthOldRevision)]
    );
    assert!(!has(&sm, "x"));
}

/// Auth guarantee 4 across members: a follower that has not applied a change of the auth
/// state (its links from the leader cut) checks a write against its older view and
/// forwards it; the write commits without it and is refused at apply on every member, so
/// the key is written nowhere. The same write checked at the current revision applies.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_write_checked_on_a_lagging_member_is_refused_at_apply() {
    // A long election timeout: the cut follower must not campaign during the test.
    let c = Cluster::new(3, |cfg| cfg.raft.election_ticks = 100);
    let leader = c.leader().await;
    let f = (1..=3).map(NodeId).find(|&i| i != leader).unwrap_or(N1);
    c.node(leader)
        .propose(auth_entry(true, 1))
        .await
        .expect("auth enabled");
    put(c.node(leader), "sync", "1").await;
    wait_for("the follower to apply the auth change", || async {
        get_local(c.node(f), "sync").map(|_| ())
    })
    .await;

    c.net.cut(leader, f);
    c.node(leader)
        .propose(auth_entry(true, 2))
        .await
        .expect("a permission revoked");
    let before = c.node(leader).applied_index();
    // The follower checked the write at revision 1, the newest it has applied.
    let write = {
        let node = c.node(f).clone();
        tokio::spawn(async move { node.propose(authorized(Some(1), "revoked")).await })
    };
    wait_for("the leader to apply the forwarded write", || async {
        (c.node(leader).applied_index() > before).then_some(())
    })
    .await;
    c.net.heal();
    let got = write.await.expect("the proposing task");
    assert_eq!(
        got,
        Err(KvError::Request(
            concord_storage::errors::RequestError::AuthOldRevision
        ))
    );
    for id in [leader, f] {
        assert_eq!(get_linearizable(c.node(id), "revoked").await, None);
    }
    // Checked at the current revision, through the same follower: applied.
    c.node(f)
        .propose(authorized(Some(2), "allowed"))
        .await
        .expect("a write checked at the current revision");
    assert_eq!(
        get_linearizable(c.node(leader), "allowed").await,
        Some(b"v".to_vec())
    );
    c.shutdown().await;
}
