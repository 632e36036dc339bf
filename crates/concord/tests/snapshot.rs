//! A follower that missed more entries than the leader keeps in its log (small
//! `--snapshot-count`) catches up through a snapshot, and ends with the same data.

mod common;

use std::time::Instant;

use common::{Cluster, BIN, WAIT};
use etcd_client::GetOptions;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopped_follower_catches_up_through_a_snapshot() {
    let mut cluster = Cluster::builder(BIN, 3)
        .flag("--snapshot-count", 100)
        .start()
        .await;
    let leader = cluster.leader().await;
    let follower = (leader + 1) % 3;
    let mut c = cluster.client(leader).await;
    c.put("snap/before", "x", None).await.unwrap();
    cluster.kill9(follower);

    // 1,200 writes (12 x the snapshot count) from 4 concurrent writers.
    const N: usize = 1200;
    let mut tasks = Vec::new();
    for w in 0..4 {
        let mut c = c.clone();
        tasks.push(tokio::spawn(async move {
            for i in (w..N).step_by(4) {
                c.put(format!("snap/{i:05}"), format!("v{i}"), None)
                    .await
                    .unwrap_or_else(|e| panic!("put {i}: {e}"));
            }
        }));
    }
    for t in tasks {
        t.await.expect("writer");
    }
    let last = c
        .put("snap/last", "the-end", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();

    cluster.restart(follower).await;
    let started = Instant::now();
    let fc = cluster.client(follower).await;
    common::eventually("follower to catch up", WAIT, || {
        let mut fc = fc.clone();
        async move {
            let g = fc
                .get("snap/last", Some(GetOptions::new().with_serializable()))
                .await
                .ok()?;
            (g.kvs().first()?.value() == b"the-end").then_some(())
        }
    })
    .await;
    eprintln!("follower caught up {:?} after restart", started.elapsed());

    let mut fc = fc;
    let g = fc
        .get(
            "snap/",
            Some(GetOptions::new().with_prefix().with_serializable()),
        )
        .await
        .unwrap();
    assert_eq!(g.count() as usize, N + 2, "every key on the follower");
    let kv = &g.kvs()[0];
    assert_eq!(kv.key(), b"snap/00000");
    assert_eq!(kv.value(), b"v0");

    // It went through a snapshot: the leader had compacted its log past what the follower
    // had, so the follower installed a snapshot (counted in its metrics).
    let metrics = common::http_get(cluster.nodes[follower].client_port, "/metrics")
        .await
        .expect("/metrics");
    let installed = metrics
        .text()
        .lines()
        .find_map(|l| l.strip_prefix("concord_raft_snapshots_installed_total "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .expect("concord_raft_snapshots_installed_total in /metrics");
    assert!(installed >= 1.0, "the follower installed no snapshot");
    // And a member (the leader that sent it) counted it as sent to that follower.
    let mut sent = 0.0;
    for node in &cluster.nodes {
        let page = common::http_get(node.client_port, "/metrics")
            .await
            .expect("/metrics");
        sent += page
            .text()
            .lines()
            .filter(|l| l.starts_with("concord_raft_snapshots_sent_total{To="))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>();
    }
    assert!(sent >= 1.0, "no member counted a snapshot sent");

    // Same history on every member: etcd's HashKV at one revision matches.
    let mut hashes = Vec::new();
    for i in 0..3 {
        let mut ci = cluster.client(i).await;
        let h = ci.hash_kv(last).await.expect("hash_kv");
        hashes.push(h.hash());
    }
    assert!(
        hashes.windows(2).all(|w| w[0] == w[1]),
        "HashKV({last}) differs between members: {hashes:?}"
    );
}
