//! Distributed tracing end to end: a 3-member cluster exports its spans over OTLP/HTTP to
//! a receiver in this test; one Redis `SET` gives a trace with spans from the coordinating
//! member and from the replicas it wrote to (applies and merges); an etcd `Put` gives a
//! request span with its Raft proposal inside, and every member's WAL append and apply of
//! the entry (and the leader's replication) as children of the proposal; no key or value
//! appears in any span or log line.

mod common;

use std::time::Duration;

use common::otlp::{receiver, Span};
use common::redis::RedisConn;
use common::{Cluster, BIN, WAIT};

/// Three members exporting every request's spans to a receiver in this test.
async fn traced_cluster() -> (
    Cluster,
    std::sync::Arc<std::sync::Mutex<common::otlp::Received>>,
) {
    let (port, received) = receiver().await;
    let cluster = Cluster::builder(BIN, 3)
        .flag("--otlp-endpoint", format!("http://127.0.0.1:{port}"))
        .flag("--otlp-sampling-ratio", 1)
        .start()
        .await;
    (cluster, received)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_spans_the_coordinator_and_its_replicas_and_holds_no_user_data() {
    let (cluster, received) = traced_cluster().await;
    let secret_key = "secret-key-5f1d";
    let secret_value = "secret-value-93ab";
    // AP: a SET at member 0 is applied on its replicas (n_val 3, W = 2).
    let mut redis = RedisConn::connect(cluster.nodes[0].redis_port)
        .await
        .unwrap();
    let mut ready = false;
    for _ in 0..100 {
        if matches!(redis.cmd(&["SET", secret_key, secret_value]).await,
            Ok(common::redis::RedisReply::Simple(ref s)) if s == "OK")
        {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ready, "the SET never succeeded");
    // CP: an etcd put.
    let mut client = cluster.client(0).await;
    client
        .put(secret_key, secret_value, None)
        .await
        .expect("put");

    // The batch exporter sends within its schedule delay (5 s by default).
    let complete = |spans: &[Span]| {
        let Some(set) = spans.iter().find(|s| s.name == "SET") else {
            return false;
        };
        let trace: Vec<&Span> = spans.iter().filter(|s| s.trace == set.trace).collect();
        let members: std::collections::BTreeSet<&str> =
            trace.iter().map(|s| s.member.as_str()).collect();
        // The put's entry: appended and applied on every member, replicated by the leader.
        let raft_steps = |name: &str| {
            spans
                .iter()
                .filter(|s| s.name == name)
                .map(|s| s.member.as_str())
                .collect::<std::collections::BTreeSet<_>>()
                .len()
        };
        members.len() >= 2
            && trace.iter().any(|s| s.name.starts_with("ap.replica_"))
            && spans.iter().any(|s| s.name == "etcdserverpb.KV/Put")
            && raft_steps("raft.wal_append") == 3
            && raft_steps("raft.apply") == 3
            && raft_steps("raft.replicate") == 1
    };
    let deadline = std::time::Instant::now() + WAIT;
    let spans = loop {
        let spans = received.lock().unwrap().spans.clone();
        if complete(&spans) {
            break spans;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no complete trace within {WAIT:?}; received: {:?}",
            spans
                .iter()
                .map(|s| (&s.member[..], &s.name[..], s.trace[0], s.parent.first()))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let set = spans.iter().find(|s| s.name == "SET").unwrap();
    let trace: Vec<&Span> = spans.iter().filter(|s| s.trace == set.trace).collect();
    // The replica's apply is a child of the coordinator's write, which is inside the SET.
    let write = trace
        .iter()
        .find(|s| s.name == "ap.write")
        .expect("ap.write in the trace");
    assert_eq!(write.parent, set.id, "{trace:#?}");
    let on_replicas: Vec<&&Span> = trace
        .iter()
        .filter(|s| s.name.starts_with("ap.replica_"))
        .collect();
    assert!(!on_replicas.is_empty(), "{trace:#?}");
    for s in on_replicas {
        assert_eq!(s.parent, write.id, "{trace:#?}");
        assert_ne!(s.member, set.member, "{trace:#?}");
    }
    // The etcd put: its Raft proposal is inside the request span.
    let put = spans
        .iter()
        .find(|s| s.name == "etcdserverpb.KV/Put")
        .unwrap();
    let propose = spans
        .iter()
        .find(|s| s.name == "raft.propose" && s.trace == put.trace && s.parent == put.id)
        .unwrap_or_else(|| panic!("{spans:#?}"));
    // Every member's steps for the entry are children of the proposal, in its trace: one
    // trace shows the leader and its followers.
    for step in ["raft.wal_append", "raft.apply", "raft.replicate"] {
        for s in spans.iter().filter(|s| s.name == step) {
            assert_eq!(
                (&s.trace, &s.parent),
                (&propose.trace, &propose.id),
                "{step} on {}",
                s.member
            );
        }
    }

    // No key or value in any exported byte, nor in any log line.
    let r = received.lock().unwrap();
    for body in &r.bodies {
        for secret in [secret_key, secret_value] {
            assert!(
                !body.windows(secret.len()).any(|w| w == secret.as_bytes()),
                "{secret} exported in a span"
            );
        }
    }
    for node in &cluster.nodes {
        let log = std::fs::read_to_string(&node.log_path).unwrap();
        assert!(
            !log.contains(secret_key) && !log.contains(secret_value),
            "{log}"
        );
    }
}

/// The spans received once the exporters have sent (every 5 s).
async fn exported(received: &std::sync::Mutex<common::otlp::Received>) -> Vec<Span> {
    tokio::time::sleep(Duration::from_secs(7)).await;
    received.lock().unwrap().spans.clone()
}

fn median(mut v: Vec<u64>) -> u64 {
    v.sort_unstable();
    v.get(v.len() / 2).copied().unwrap_or(0)
}

fn duration_us(s: &Span) -> u64 {
    s.end_ns.saturating_sub(s.start_ns) / 1000
}

/// Where one client's put spends its time, from the spans every member exports: run by
/// hand (`cargo test --release -p concord --test tracing where_a_put -- --ignored
/// --nocapture`) for docs/benchmarks.md. Prints medians in microseconds of 200 sequential
/// puts sent to the leader, then 200 sent to a follower.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement, printed; run by hand"]
async fn where_a_put_spends_its_time() {
    let (cluster, received) = traced_cluster().await;
    let leader = cluster.leader().await;
    let follower = (leader + 1) % 3;
    for (label, node) in [("leader", leader), ("follower", follower)] {
        let mut client = cluster.client(node).await;
        // Warm up connections, then measure.
        for i in 0..20 {
            client
                .put(format!("warm{i}"), "v", None)
                .await
                .expect("put");
        }
        tokio::time::sleep(Duration::from_secs(6)).await;
        received.lock().unwrap().spans.clear();
        let mut client_us = Vec::new();
        for i in 0..200 {
            let started = std::time::Instant::now();
            client.put(format!("k{i}"), "v", None).await.expect("put");
            client_us.push(started.elapsed().as_micros() as u64);
        }
        let spans = exported(&received).await;
        let puts: Vec<&Span> = spans
            .iter()
            .filter(|s| s.name == "etcdserverpb.KV/Put")
            .collect();
        let leader_member = spans
            .iter()
            .find(|s| s.name == "raft.replicate")
            .map(|s| s.member.clone())
            .unwrap_or_default();
        let mut rows: Vec<(String, Vec<u64>)> = Vec::new();
        let mut add = |name: String, v: u64| match rows.iter_mut().find(|(n, _)| *n == name) {
            Some((_, vs)) => vs.push(v),
            None => rows.push((name, vec![v])),
        };
        for put in &puts {
            let trace: Vec<&Span> = spans.iter().filter(|s| s.trace == put.trace).collect();
            add("gRPC Put at the member called".into(), duration_us(put));
            for s in &trace {
                if s.name.starts_with("raft.") {
                    let role = if s.member == leader_member {
                        "leader"
                    } else {
                        "follower"
                    };
                    add(format!("{} ({role})", s.name), duration_us(s));
                }
            }
        }
        println!(
            "\nputs sent to the {label}: {} traced of 200, client-side p50 {} us",
            puts.len(),
            median(client_us)
        );
        for (name, values) in rows {
            println!(
                "  {name:<36} p50 {:>6} us  ({} spans)",
                median(values.clone()),
                values.len()
            );
        }
    }
}

/// Where one Redis client's `SET` spends its time, from the spans every member exports:
/// run by hand (`cargo test --release -p concord --test tracing where_a_set -- --ignored
/// --nocapture`) for docs/ap.md. Prints medians in microseconds of 200 sequential SETs
/// sent to member 0 (a replica of every key with three members: it coordinates and
/// applies, the other two merge).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement, printed; run by hand"]
async fn where_a_set_spends_its_time() {
    let (cluster, received) = traced_cluster().await;
    let mut redis = RedisConn::connect(cluster.nodes[0].redis_port)
        .await
        .unwrap();
    let ok = |r: &Result<common::redis::RedisReply, _>| matches!(r, Ok(common::redis::RedisReply::Simple(s)) if s == "OK");
    for i in 0..100 {
        if ok(&redis.cmd(&["SET", &format!("warm{i}"), "v"]).await) {
            continue;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(6)).await;
    received.lock().unwrap().spans.clear();
    let mut client_us = Vec::new();
    for i in 0..200 {
        let started = std::time::Instant::now();
        let reply = redis.cmd(&["SET", &format!("k{i}"), "v"]).await;
        assert!(ok(&reply), "{reply:?}");
        client_us.push(started.elapsed().as_micros() as u64);
    }
    let spans = exported(&received).await;
    let (mut set_us, mut write_us, mut merge_us, mut first_merge_us, mut outside_us) =
        (vec![], vec![], vec![], vec![], vec![]);
    for set in spans.iter().filter(|s| s.name == "SET") {
        let trace: Vec<&Span> = spans.iter().filter(|s| s.trace == set.trace).collect();
        let Some(write) = trace.iter().find(|s| s.name == "ap.write") else {
            continue;
        };
        set_us.push(duration_us(set));
        write_us.push(duration_us(write));
        let merges: Vec<&&Span> = trace
            .iter()
            .filter(|s| s.name == "ap.replica_merge")
            .collect();
        merge_us.extend(merges.iter().map(|s| duration_us(s)));
        // The first replica durable is the one W = 2 waits for (with this member's own
        // commit); the time around it is the round trip and the hand-offs. (`ap.write`
        // lasts until the write settles: the third replica's answer too.)
        if let Some(first) = merges.iter().min_by_key(|s| s.end_ns) {
            first_merge_us.push(duration_us(first));
            outside_us.push(
                (first.start_ns.saturating_sub(set.start_ns)
                    + set.end_ns.saturating_sub(first.end_ns))
                    / 1000,
            );
        }
    }
    println!(
        "\n200 SETs at member 0: {} traced, client-side p50 {} us",
        set_us.len(),
        median(client_us)
    );
    for (name, values) in [
        ("SET span at the member called", set_us),
        ("ap.write (until every replica answered)", write_us),
        ("ap.replica_merge (each replica)", merge_us),
        ("first replica's merge (to durable)", first_merge_us),
        ("SET span outside that merge", outside_us),
    ] {
        println!(
            "  {name:<40} p50 {:>6} us  ({} spans)",
            median(values.clone()),
            values.len()
        );
    }
}
