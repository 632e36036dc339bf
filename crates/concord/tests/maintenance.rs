//! End-to-end tests of the Maintenance service: status, HashKV agreement across members,
//! move-leader, the snapshot stream, defragment, and the NOSPACE alarm at the backend quota.

mod common;

use std::time::Duration;

use common::{expect_err, Cluster, BIN, WAIT};
use etcd_client::{AlarmAction, AlarmOptions, AlarmType, GetOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_and_hash_kv_agree_across_members() {
    let cluster = Cluster::start(BIN, 3).await;
    let leader = cluster.leader().await;
    let mut c = cluster.client(leader).await;
    let mut last = 0;
    for i in 0..50 {
        last = c
            .put(format!("mt/{i}"), format!("v{i}"), None)
            .await
            .unwrap()
            .header()
            .unwrap()
            .revision();
    }
    let leader_id = cluster.member_id(leader).await;

    // Wait until every member has applied `last` (serializable read at that revision).
    for i in 0..3 {
        let ci = cluster.client(i).await;
        common::eventually("member to apply the last write", WAIT, || {
            let mut ci = ci.clone();
            async move {
                let g = ci
                    .get("mt/49", Some(GetOptions::new().with_serializable()))
                    .await
                    .ok()?;
                (!g.kvs().is_empty()).then_some(())
            }
        })
        .await;
    }

    let mut hashes = Vec::new();
    for i in 0..3 {
        let mut ci = cluster.client(i).await;
        let s = ci.status().await.expect("status");
        let h = s.header().expect("status header");
        assert_eq!(s.leader(), leader_id, "every member names the same leader");
        assert_eq!(h.member_id(), cluster.member_id(i).await);
        assert!(!s.version().is_empty(), "status.version");
        assert!(s.db_size() > 0, "status.dbSize");
        assert!(s.raft_term() > 0);
        assert!(s.raft_index() > 0);
        assert!(s.raft_applied_index() > 0);
        assert!(!s.is_learner());
        assert!(h.revision() >= last);
        let hk = ci.hash_kv(last).await.expect("hash_kv");
        assert_eq!(hk.header().unwrap().member_id(), h.member_id());
        hashes.push(hk.hash());
    }
    assert!(
        hashes.windows(2).all(|w| w[0] == w[1]),
        "HashKV({last}) differs between members: {hashes:?}"
    );
    // The hash covers the data: a further write changes the hash at the new revision.
    let next = c
        .put("mt/extra", "x", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    let h2 = c.hash_kv(next).await.unwrap().hash();
    assert_ne!(h2, hashes[0], "HashKV must change with the data");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn move_leader_transfers_leadership() {
    let cluster = Cluster::start(BIN, 3).await;
    let leader = cluster.leader().await;
    let target = (leader + 1) % 3;
    let target_id = cluster.member_id(target).await;

    // etcd: MoveLeader must be sent to the leader.
    let mut follower_client = cluster.client(target).await;
    expect_err(
        follower_client.move_leader(target_id).await,
        "etcdserver: not leader",
    );

    let mut c = cluster.client(leader).await;
    c.move_leader(target_id).await.expect("move leader");
    common::eventually("leadership to move to the target", WAIT, || async {
        (cluster.leader_once().await == Some(target)).then_some(())
    })
    .await;
    let mut t = cluster.client(target).await;
    t.put("after-move", "v", None)
        .await
        .expect("write after move");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_stream_and_defragment() {
    let cluster = Cluster::start(BIN, 1).await;
    let mut c = cluster.client(0).await;
    for i in 0..100 {
        c.put(format!("sn/{i:03}"), vec![b'v'; 1024], None)
            .await
            .unwrap();
    }
    let mut sc = cluster.stream_client(0).await;
    let mut stream = sc.snapshot().await.expect("snapshot");
    let mut total = 0usize;
    let mut messages = 0;
    let mut last_remaining = None;
    loop {
        let m = tokio::time::timeout(Duration::from_secs(10), stream.message())
            .await
            .expect("snapshot message within 10 s")
            .expect("snapshot stream");
        let Some(m) = m else { break };
        messages += 1;
        total += m.blob().len();
        last_remaining = Some(m.remaining_bytes());
    }
    assert!(messages > 0, "at least one snapshot message");
    assert!(
        total > 100 * 1024,
        "snapshot of 100 KiB of values is {total} bytes"
    );
    assert_eq!(
        last_remaining,
        Some(0),
        "the last message has remaining_bytes 0"
    );

    let d = c.defragment().await.expect("defragment");
    // etcd 3.4 answers Defragment without a response header; clients see the same.
    assert!(d.header().is_none(), "defragment header: {:?}", d.header());
    let g = c
        .get(
            "sn/",
            Some(GetOptions::new().with_prefix().with_count_only()),
        )
        .await
        .unwrap();
    assert_eq!(g.count(), 100, "defragment keeps the data");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quota_raises_nospace_alarm_and_disarm_recovers() {
    const QUOTA: usize = 4 * 1024 * 1024;
    let cluster = Cluster::builder(BIN, 1)
        .flag("--quota-backend-bytes", QUOTA)
        .start()
        .await;
    let mut c = cluster.client(0).await;
    let alarms = c
        .alarm(AlarmAction::Get, AlarmType::None, None)
        .await
        .expect("alarm list");
    assert!(alarms.alarms().is_empty(), "no alarm at start");

    // Write 100 KiB values until the quota refuses one (bounded: 5 x the quota).
    let value = vec![b'q'; 100 * 1024];
    let mut refused = None;
    for i in 0..(5 * QUOTA / value.len()) {
        match c.put(format!("q/{i:04}"), value.clone(), None).await {
            Ok(_) => {}
            Err(e) => {
                refused = Some(common::err_text(&e));
                break;
            }
        }
    }
    let Some(refused) = refused else {
        let s = c.status().await.expect("status");
        panic!(
            "{} bytes written with --quota-backend-bytes {QUOTA} and none refused \
             (status dbSize {}, dbSizeQuota {})",
            5 * QUOTA,
            s.db_size(),
            s.db_size_quota()
        );
    };
    assert!(
        refused.contains("etcdserver: mvcc: database space exceeded"),
        "quota error: {refused}"
    );
    let alarms = c
        .alarm(AlarmAction::Get, AlarmType::None, None)
        .await
        .expect("alarm list");
    assert!(
        alarms
            .alarms()
            .iter()
            .any(|a| a.alarm() == AlarmType::Nospace),
        "NOSPACE alarm raised"
    );
    // Maintenance mode: reads and deletes still work, puts do not.
    c.get("q/0000", None).await.expect("reads allowed");
    expect_err(
        c.put("q/more", "x", None).await,
        "etcdserver: mvcc: database space exceeded",
    );
    let d = c
        .delete("q/", Some(etcd_client::DeleteOptions::new().with_prefix()))
        .await
        .expect("deletes allowed under NOSPACE");
    assert!(d.deleted() > 0);

    // etcd's documented recovery: compact, defragment, disarm.
    let rev = d.header().unwrap().revision();
    c.compact(
        rev,
        Some(etcd_client::CompactionOptions::new().with_physical()),
    )
    .await
    .expect("compact");
    c.defragment().await.expect("defragment");
    // Disarm each raised alarm by the member id it names, as etcdctl does (etcd clears
    // only the alarm of the member a DEACTIVATE names).
    let raised = c
        .alarm(AlarmAction::Get, AlarmType::None, None)
        .await
        .expect("alarm list");
    for a in raised.alarms() {
        let mut only = AlarmOptions::new();
        only.with_member(a.member_id());
        let cleared = c
            .alarm(AlarmAction::Deactivate, AlarmType::Nospace, Some(only))
            .await
            .expect("disarm");
        assert_eq!(cleared.alarms().len(), 1, "the alarm it cleared");
        assert_eq!(cleared.alarms()[0].member_id(), a.member_id());
    }
    let alarms = c
        .alarm(AlarmAction::Get, AlarmType::None, None)
        .await
        .unwrap();
    assert!(alarms.alarms().is_empty(), "alarm cleared");
    c.put("q/after", "x", None)
        .await
        .expect("writes accepted after recovery");
}

/// etcd answers an ACTIVATE with the alarm it raised, under the member id the request
/// named (python-etcd3 sends 0 and expects 0 back), lists it, and clears only the alarm of
/// the member a DEACTIVATE names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alarms_are_named_by_the_member_id_given() {
    let cluster = Cluster::start(BIN, 1).await;
    let mut c = cluster.client(0).await;
    let mut member0 = AlarmOptions::new();
    member0.with_member(0);
    let raised = c
        .alarm(
            AlarmAction::Activate,
            AlarmType::Nospace,
            Some(member0.clone()),
        )
        .await
        .expect("activate");
    let got: Vec<(u64, AlarmType)> = raised
        .alarms()
        .iter()
        .map(|a| (a.member_id(), a.alarm()))
        .collect();
    assert_eq!(got, [(0, AlarmType::Nospace)]);
    let listed = c
        .alarm(AlarmAction::Get, AlarmType::None, None)
        .await
        .expect("alarm list");
    assert_eq!(listed.alarms().len(), 1);
    assert_eq!(listed.alarms()[0].member_id(), 0);
    expect_err(
        c.put("a/k", "v", None).await,
        "etcdserver: mvcc: database space exceeded",
    );
    // Deactivating another member's alarm changes nothing.
    let mut other = AlarmOptions::new();
    other.with_member(42);
    let none = c
        .alarm(AlarmAction::Deactivate, AlarmType::Nospace, Some(other))
        .await
        .expect("deactivate another member");
    assert!(none.alarms().is_empty());
    let cleared = c
        .alarm(AlarmAction::Deactivate, AlarmType::Nospace, Some(member0))
        .await
        .expect("deactivate member 0");
    assert_eq!(cleared.alarms().len(), 1);
    c.put("a/k", "v", None)
        .await
        .expect("writes accepted once disarmed");
}

/// The value of metric `name` (no labels) on member `i`'s `/metrics`.
async fn metric(cluster: &Cluster, i: usize, name: &str) -> f64 {
    let r = common::http_get(cluster.nodes[i].client_port, "/metrics")
        .await
        .expect("/metrics");
    let text = r.text();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse::<f64>().ok())
        .unwrap_or_else(|| panic!("{name} missing from /metrics"))
}

/// Defragment is online: under puts and linearizable gets through the member being
/// defragmented, no request fails, requests complete while it copies, the file shrinks,
/// every acknowledged write is there afterwards, and the pause is reported in /metrics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn defragment_under_load_fails_no_request_and_reports_its_pause() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;

    let cluster = Cluster::start(BIN, 3).await;
    let mut c = cluster.client(0).await;
    // About 8 MB of values, three quarters then deleted and compacted away.
    for i in 0..2000 {
        c.put(format!("df/old/{i:04}"), vec![b'o'; 4096], None)
            .await
            .unwrap();
    }
    let del = c
        .delete(
            "df/old/0",
            Some(etcd_client::DeleteOptions::new().with_range("df/old/15")),
        )
        .await
        .unwrap();
    assert_eq!(del.deleted(), 1500);
    let rev = del.header().unwrap().revision();
    c.compact(
        rev,
        Some(etcd_client::CompactionOptions::new().with_physical()),
    )
    .await
    .unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for w in 0..4 {
        let mut c = cluster.client(0).await;
        let (stop, done) = (stop.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            let mut i = 0u32;
            while !stop.load(Ordering::Relaxed) {
                let key = format!("df/new/{w}/{i:06}");
                if w % 2 == 0 {
                    c.put(key.as_str(), "x", None)
                        .await
                        .unwrap_or_else(|e| panic!("put during defragment: {e}"));
                    acked.push(key);
                } else {
                    let g = c
                        .get("df/old/1999", None)
                        .await
                        .unwrap_or_else(|e| panic!("get during defragment: {e}"));
                    assert_eq!(g.kvs().len(), 1);
                }
                done.fetch_add(1, Ordering::Relaxed);
                i += 1;
            }
            acked
        }));
    }
    common::eventually("load running", WAIT, || async {
        (done.load(Ordering::Relaxed) > 50).then_some(())
    })
    .await;

    for i in 0..cluster.len() {
        let before = metric(&cluster, i, "etcd_mvcc_db_total_size_in_bytes").await;
        let mut m = cluster.client(i).await;
        let ops_before = done.load(Ordering::Relaxed);
        let started = std::time::Instant::now();
        let d = m.defragment().await.expect("defragment under load");
        assert!(d.header().is_none());
        let took = started.elapsed();
        let ops = done.load(Ordering::Relaxed) - ops_before;
        let after = metric(&cluster, i, "etcd_mvcc_db_total_size_in_bytes").await;
        let pause = metric(&cluster, i, "concord_defragment_last_pause_seconds").await;
        assert_eq!(metric(&cluster, i, "concord_defragment_total").await, 1.0);
        assert!(after < before, "member {i}: file {before} -> {after} bytes");
        eprintln!(
            "member {i}: defragment took {:.1} ms, paused requests {:.2} ms, {ops} requests \
             completed meanwhile, file {:.1} -> {:.1} MB",
            took.as_secs_f64() * 1e3,
            pause * 1e3,
            before / 1e6,
            after / 1e6
        );
    }
    stop.store(true, Ordering::Relaxed);
    let mut acked = Vec::new();
    for t in tasks {
        acked.extend(t.await.expect("load task"));
    }
    for key in acked {
        let g = c.get(key.as_str(), None).await.unwrap();
        assert_eq!(
            g.kvs().len(),
            1,
            "{key} acknowledged before the defragment ended"
        );
    }
    let g = c
        .get(
            "df/old/",
            Some(GetOptions::new().with_prefix().with_count_only()),
        )
        .await
        .unwrap();
    assert_eq!(g.count(), 500);
}
