//! Gossip membership end to end: real processes gossiping over their peer ports, seen
//! through `/v1/members`, `/metrics` and `concord member gossip`.

mod common;

use std::process::Command;

use common::{Cluster, BIN, WAIT};
use serde_json::Value;

/// Member `i`'s gossip view.
async fn view(cluster: &Cluster, i: usize) -> Option<Value> {
    let r = common::http_get(cluster.nodes[i].client_port, "/v1/members")
        .await
        .ok()?;
    if r.status != 200 {
        return None;
    }
    serde_json::from_slice(&r.body).ok()
}

/// What member `observer` believes about member `id`: (state, generation).
async fn belief(cluster: &Cluster, observer: usize, id: &str) -> Option<(String, u64)> {
    let v = view(cluster, observer).await?;
    let m = v["members"].as_array()?.iter().find(|m| m["id"] == id)?;
    Some((m["state"].as_str()?.to_string(), m["generation"].as_u64()?))
}

/// Waits until every member of `observers` holds `id` in `state`; returns the
/// generations they saw.
async fn all_believe(cluster: &Cluster, observers: &[usize], id: &str, state: &str) -> Vec<u64> {
    let what = format!("members {observers:?} to see {id} {state}");
    common::eventually(&what, WAIT, || async {
        let mut generations = Vec::new();
        for &o in observers {
            match belief(cluster, o, id).await {
                Some((s, g)) if s == state => generations.push(g),
                _ => return None,
            }
        }
        Some(generations)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_gossip_a_crash_a_restart_and_a_leave() {
    let mut cluster = Cluster::builder(BIN, 3)
        .flag("--gossip-interval", 100)
        .start()
        .await;
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(format!("{:x}", cluster.member_id(i).await));
    }
    for (i, id) in ids.iter().enumerate() {
        let others: Vec<usize> = (0..3).filter(|&o| o != i).collect();
        all_believe(&cluster, &others, id, "alive").await;
    }
    let v = view(&cluster, 0).await.expect("view of n0");
    assert_eq!(v["me"]["id"], ids[0].as_str());
    assert_eq!(v["phi_threshold"], 8.0);
    assert!(v["members"]
        .as_array()
        .unwrap()
        .iter()
        .all(|m| m["phi"].as_f64().is_some_and(|phi| phi >= 0.0)));

    // A crash: the others declare n2 dead.
    let first = all_believe(&cluster, &[0, 1], &ids[2], "alive").await;
    cluster.kill9(2);
    all_believe(&cluster, &[0, 1], &ids[2], "dead").await;
    // Its restart is a new generation, alive everywhere.
    cluster.restart(2).await;
    let second = all_believe(&cluster, &[0, 1], &ids[2], "alive").await;
    assert!(
        second.iter().zip(&first).all(|(new, old)| new > old),
        "generations {first:?} then {second:?}"
    );

    // A graceful stop: the others mark n1 as left, not dead.
    cluster.terminate(1).expect("n1 stops");
    all_believe(&cluster, &[0, 2], &ids[1], "left").await;

    let metrics = common::http_get(cluster.nodes[0].client_port, "/metrics")
        .await
        .expect("metrics")
        .text();
    for line in [
        format!(
            "concord_gossip_member_state{{member=\"{}\",state=\"left\"}} 1",
            ids[1]
        ),
        format!(
            "concord_gossip_member_state{{member=\"{}\",state=\"alive\"}} 1",
            ids[2]
        ),
    ] {
        assert!(metrics.contains(&line), "no `{line}` in:\n{metrics}");
    }
    assert!(metrics.contains(&format!(
        "concord_gossip_member_phi{{member=\"{}\"}}",
        ids[2]
    )));

    let out = Command::new(BIN)
        .args([
            "member",
            "gossip",
            "--endpoints",
            &cluster.url(0),
            "-w",
            "table",
        ])
        .output()
        .expect("run concord member gossip");
    assert!(out.status.success(), "{out:?}");
    let table = String::from_utf8_lossy(&out.stdout);
    let row = |id: &str| {
        table
            .lines()
            .find(|l| l.contains(id))
            .unwrap_or_else(|| panic!("no row for {id} in:\n{table}"))
            .to_string()
    };
    assert!(row(&ids[0]).contains("self") && row(&ids[0]).contains("n0"));
    assert!(row(&ids[1]).contains("left") && row(&ids[1]).contains("n1"));
    assert!(row(&ids[2]).contains("alive") && row(&ids[2]).contains("n2"));
}
