//! Failover end to end: kill -9 the leader under concurrent writes, measure how long until a
//! new leader serves, check that no acknowledged write is lost, and that the old leader
//! catches up after a restart. Also SIGTERM shutdown and a whole-cluster crash.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Cluster, BIN, WAIT};
use etcd_client::GetOptions;

/// One acknowledged write: key -> (value, revision, acknowledged at).
type Acked = Arc<Mutex<BTreeMap<String, (String, i64, Instant)>>>;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_kill_under_writes_loses_no_acknowledged_write() {
    let mut cluster = Cluster::start(BIN, 3).await;
    let old_leader = cluster.leader().await;
    let acked: Acked = Arc::new(Mutex::new(BTreeMap::new()));
    let stop = Arc::new(AtomicBool::new(false));

    const WRITERS: usize = 4;
    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        let mut rc = cluster.retry_client().await;
        let acked = acked.clone();
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let key = format!("fo/w{w}/{i:05}");
                let value = format!("value-{w}-{i}");
                match rc.put(&key, &value).await {
                    Ok(r) => {
                        let rev = r.header().map(|h| h.revision()).unwrap_or(0);
                        acked
                            .lock()
                            .unwrap()
                            .insert(key, (value, rev, Instant::now()));
                    }
                    Err(e) => panic!("writer {w}: {e}"),
                }
                i += 1;
            }
        }));
    }

    common::eventually("writes flowing before the kill", WAIT, || async {
        (acked.lock().unwrap().len() >= 100).then_some(())
    })
    .await;
    cluster.kill9(old_leader);
    let killed = Instant::now();
    let acked_at_kill = acked.lock().unwrap().len();

    // A new leader is elected among the survivors.
    let new_leader = cluster.leader().await;
    let elected_after = killed.elapsed();
    assert_ne!(new_leader, old_leader);
    // First write acknowledged after the kill.
    let first_write_after = common::eventually("a write acknowledged after the kill", WAIT, || {
        let acked = acked.clone();
        async move {
            acked
                .lock()
                .unwrap()
                .values()
                .filter(|(_, _, at)| *at > killed)
                .map(|(_, _, at)| *at - killed)
                .min()
        }
    })
    .await;
    eprintln!(
        "leader kill -9: new leader seen after {elected_after:?}, first write acknowledged \
         {first_write_after:?} after the kill (includes the client's {:?} attempt timeout; \
         {acked_at_kill} writes acked before it)",
        common::ATTEMPT_TIMEOUT
    );
    // How fast is a figure (printed above; benchmarked by the chaos harness), not an
    // assertion: `eventually` already failed the test if no write was ever served again.

    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.expect("writer task");
    }
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() > acked_at_kill,
        "writes continued after the kill"
    );

    // Every acknowledged write is readable (linearizable read on the new leader).
    let mut c = cluster.client(new_leader).await;
    let g = c
        .get("fo/", Some(GetOptions::new().with_prefix()))
        .await
        .expect("read back");
    let stored: BTreeMap<String, String> = g
        .kvs()
        .iter()
        .map(|kv| {
            (
                String::from_utf8_lossy(kv.key()).into_owned(),
                String::from_utf8_lossy(kv.value()).into_owned(),
            )
        })
        .collect();
    for (k, (v, _, _)) in &acked {
        assert_eq!(stored.get(k), Some(v), "acknowledged write {k} lost");
    }

    // The old leader comes back and catches up: its serializable read of the newest
    // acknowledged key returns the value.
    let (last_key, (last_val, _, _)) = acked
        .iter()
        .max_by_key(|(_, (_, rev, _))| *rev)
        .map(|(k, v)| (k.clone(), v.clone()))
        .expect("acked writes");
    cluster.restart(old_leader).await;
    let mut oc = cluster.client(old_leader).await;
    let caught_up = Instant::now();
    common::eventually("restarted old leader to catch up", WAIT, || {
        let mut oc = oc.clone();
        let (k, v) = (last_key.clone(), last_val.clone());
        async move {
            let g = oc
                .get(k, Some(GetOptions::new().with_serializable()))
                .await
                .ok()?;
            (g.kvs().first()?.value() == v.as_bytes()).then_some(())
        }
    })
    .await;
    eprintln!(
        "old leader caught up {:?} after restart",
        caught_up.elapsed()
    );
    let g = oc
        .get(
            "fo/",
            Some(GetOptions::new().with_prefix().with_serializable()),
        )
        .await
        .expect("serializable read on the old leader");
    assert_eq!(g.count() as usize, stored.len(), "old leader has every key");
}

/// Writes sent through a follower while the leader is killed: the follower forwarded
/// them to a leader that died before replicating them. The follower sends such proposals
/// again as soon as the next leader commits an entry (runtime `resend.rs`), so they are
/// answered well within the client's deadline instead of timing out, and none applies
/// twice: every key is written once, so a second application would show as version 2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_forwarded_to_a_killed_leader_are_sent_again_and_apply_once() {
    const ROUNDS: usize = 5;
    const WRITERS: usize = 3;
    // Far below the server's 7 s request timeout: a lost proposal left to that timeout
    // fails the first write of a round.
    const CLIENT_TIMEOUT: Duration = Duration::from_secs(3);
    let mut cluster = Cluster::start(BIN, 3).await;
    let acked: Arc<Mutex<Vec<String>>> = Arc::default();
    let mut first_writes = Vec::new();
    for round in 0..ROUNDS {
        let leader = cluster.leader().await;
        let follower = (leader + 1) % 3;
        let url = cluster.url(follower);
        // Writers keep the follower forwarding while the leader dies.
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = Vec::new();
        for w in 0..WRITERS {
            let mut c = common::connect(&url, Some(CLIENT_TIMEOUT)).await.unwrap();
            let (acked, stop) = (acked.clone(), stop.clone());
            tasks.push(tokio::spawn(async move {
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) {
                    let key = format!("fwd/{round}/w{w}/{i:05}");
                    if c.put(key.as_str(), "v", None).await.is_ok() {
                        acked.lock().unwrap().push(key);
                    }
                    i += 1;
                }
            }));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        let mut c = common::connect(&url, Some(CLIENT_TIMEOUT)).await.unwrap();
        cluster.kill9(leader);
        let killed = Instant::now();
        let key = format!("fwd/{round}/first");
        loop {
            match c.put(key.as_str(), "first", None).await {
                Ok(_) => break,
                // A definite refusal (the follower knew of no leader at that moment)
                // may be retried; a timeout fails the test.
                Err(e) if common::err_text(&e).contains("etcdserver: no leader") => {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Err(e) => panic!(
                    "round {round}: the first write through the follower failed after {:?}: {}",
                    killed.elapsed(),
                    common::err_text(&e)
                ),
            }
        }
        first_writes.push(killed.elapsed());
        acked.lock().unwrap().push(key);
        tokio::time::sleep(Duration::from_millis(200)).await;
        stop.store(true, Ordering::Relaxed);
        for t in tasks {
            t.await.expect("writer task");
        }
        cluster.restart(leader).await;
    }
    let mut sorted = first_writes.clone();
    sorted.sort();
    eprintln!(
        "leader kill -9, first write through a follower answered after: median {:?}, all {:?}",
        sorted[ROUNDS / 2],
        first_writes
    );

    let mut c = cluster.client(cluster.leader().await).await;
    let g = c
        .get("fwd/", Some(GetOptions::new().with_prefix()))
        .await
        .expect("read back");
    let stored: BTreeMap<String, i64> = g
        .kvs()
        .iter()
        .map(|kv| (String::from_utf8_lossy(kv.key()).into_owned(), kv.version()))
        .collect();
    for (k, version) in &stored {
        assert_eq!(*version, 1, "{k} was applied more than once");
    }
    for k in acked.lock().unwrap().iter() {
        assert!(stored.contains_key(k), "acknowledged write {k} lost");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_a_node_cleanly_and_it_restarts_with_its_data() {
    let mut cluster = Cluster::start(BIN, 3).await;
    let leader = cluster.leader().await;
    let follower = (leader + 1) % 3;
    let mut c = cluster.client(leader).await;
    for i in 0..20 {
        c.put(format!("st/{i}"), i.to_string(), None).await.unwrap();
    }
    let status = cluster.terminate(follower).expect("SIGTERM");
    assert!(status.success(), "SIGTERM exit status: {status}");
    // The majority keeps serving.
    c.put("st/while-down", "x", None)
        .await
        .expect("write with one node down");
    cluster.restart(follower).await;
    let mut fc = cluster.client(follower).await;
    common::eventually("restarted follower to catch up", WAIT, || {
        let mut fc = fc.clone();
        async move {
            let g = fc
                .get("st/while-down", Some(GetOptions::new().with_serializable()))
                .await
                .ok()?;
            (!g.kvs().is_empty()).then_some(())
        }
    })
    .await;
    let g = fc
        .get(
            "st/",
            Some(GetOptions::new().with_prefix().with_serializable()),
        )
        .await
        .unwrap();
    assert_eq!(g.count(), 21);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whole_cluster_kill9_keeps_acknowledged_writes() {
    let mut cluster = Cluster::start(BIN, 3).await;
    let mut rc = cluster.retry_client().await;
    let mut acked = BTreeMap::new();
    for i in 0..100 {
        let k = format!("crash/{i:03}");
        let r = rc.put(&k, &format!("v{i}")).await.expect("put");
        acked.insert(k, r.header().unwrap().revision());
    }
    for i in 0..3 {
        cluster.kill9(i);
    }
    for i in 0..3 {
        cluster.spawn(i);
    }
    for i in 0..3 {
        cluster.wait_ready(i).await;
    }
    cluster.leader().await;
    let mut rc = cluster.retry_client().await;
    let g = rc
        .get("crash/", Some(GetOptions::new().with_prefix()))
        .await
        .expect("read after restart");
    assert_eq!(
        g.count(),
        100,
        "every acknowledged write survives kill -9 of all nodes"
    );
    for kv in g.kvs() {
        let k = String::from_utf8_lossy(kv.key()).into_owned();
        assert_eq!(
            acked.get(&k),
            Some(&kv.mod_revision()),
            "{k} changed revision"
        );
    }
    // Revisions continue after the restart; they never go back.
    let last = *acked.values().max().unwrap();
    let r = rc.put("crash/after", "x").await.expect("put after restart");
    assert!(r.header().unwrap().revision() > last);
}
