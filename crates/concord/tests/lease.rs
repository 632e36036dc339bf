//! End-to-end tests of the Lease service: grant, attach, time-to-live, list, revoke,
//! keep-alive, expiry timing, and expiry across a leader kill -9 (leader-only expiry through
//! Raft with remaining-TTL checkpoints).

mod common;

use std::time::{Duration, Instant};

use common::{expect_err, Cluster, RetryClient, BIN, ELECTION_MS};
use etcd_client::{LeaseGrantOptions, LeaseTimeToLiveOptions, PutOptions};

/// Slack allowed before the TTL (clock and scheduling noise; a lease must never expire early).
const EARLY_SLACK: Duration = Duration::from_millis(250);
/// `--lease-checkpoint-interval` given to the nodes (ms).
const CHECKPOINT_MS: u64 = 500;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grant_attach_time_to_live_list_revoke() {
    let cluster = Cluster::start(BIN, 1).await;
    let mut c = cluster.client(0).await;

    let g = c.lease_grant(30, None).await.expect("grant");
    assert_ne!(g.id(), 0);
    assert_eq!(g.ttl(), 30);
    let id = g.id();
    c.put("l/a", "1", Some(PutOptions::new().with_lease(id)))
        .await
        .unwrap();
    c.put("l/b", "2", Some(PutOptions::new().with_lease(id)))
        .await
        .unwrap();
    assert_eq!(c.get("l/a", None).await.unwrap().kvs()[0].lease(), id);

    let t = c
        .lease_time_to_live(id, Some(LeaseTimeToLiveOptions::new().with_keys()))
        .await
        .expect("time_to_live");
    assert_eq!(t.id(), id);
    assert_eq!(t.granted_ttl(), 30);
    assert!(t.ttl() > 0 && t.ttl() <= 30, "remaining ttl {}", t.ttl());
    let mut keys: Vec<String> = t
        .keys()
        .iter()
        .map(|k| String::from_utf8_lossy(k).into_owned())
        .collect();
    keys.sort();
    assert_eq!(keys, ["l/a", "l/b"]);
    let t = c.lease_time_to_live(id, None).await.unwrap();
    assert!(t.keys().is_empty(), "keys only when asked");

    // Explicit id; a second grant of the same id is refused.
    let g2 = c
        .lease_grant(30, Some(LeaseGrantOptions::new().with_id(12345)))
        .await
        .expect("grant with id");
    assert_eq!(g2.id(), 12345);
    expect_err(
        c.lease_grant(30, Some(LeaseGrantOptions::new().with_id(12345)))
            .await,
        "etcdserver: lease already exists",
    );

    let listed: Vec<i64> = c
        .leases()
        .await
        .expect("leases")
        .leases()
        .iter()
        .map(|l| l.id())
        .collect();
    assert!(
        listed.contains(&id) && listed.contains(&12345),
        "{listed:?}"
    );

    // Revoke deletes the attached keys at once.
    c.lease_revoke(id).await.expect("revoke");
    assert!(c.get("l/a", None).await.unwrap().kvs().is_empty());
    assert!(c.get("l/b", None).await.unwrap().kvs().is_empty());
    let listed: Vec<i64> = c
        .leases()
        .await
        .unwrap()
        .leases()
        .iter()
        .map(|l| l.id())
        .collect();
    assert!(!listed.contains(&id));
    // etcd answers time-to-live of an unknown lease with TTL -1 (not an error).
    let t = c
        .lease_time_to_live(id, None)
        .await
        .expect("ttl of revoked");
    assert_eq!(t.ttl(), -1);

    expect_err(
        c.lease_revoke(id).await,
        "etcdserver: requested lease not found",
    );
    expect_err(
        c.put("l/c", "3", Some(PutOptions::new().with_lease(424242)))
            .await,
        "etcdserver: requested lease not found",
    );
    assert!(c.get("l/c", None).await.unwrap().kvs().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_keeps_keys_beyond_ttl() {
    let cluster = Cluster::start(BIN, 1).await;
    let mut c = cluster.client(0).await;
    let id = c.lease_grant(2, None).await.unwrap().id();
    c.put("ka", "v", Some(PutOptions::new().with_lease(id)))
        .await
        .unwrap();

    let mut sc = cluster.stream_client(0).await;
    let (mut keeper, mut stream) = sc.lease_keep_alive(id).await.expect("keep_alive");
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(5) {
        keeper.keep_alive().await.expect("send keep-alive");
        let resp = tokio::time::timeout(Duration::from_secs(5), stream.message())
            .await
            .expect("keep-alive response within 5 s")
            .expect("keep-alive stream")
            .expect("keep-alive stream open");
        assert_eq!(resp.id(), id);
        assert_eq!(resp.ttl(), 2, "keep-alive renews to the granted TTL");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(
        c.get("ka", None).await.unwrap().kvs().len(),
        1,
        "key kept alive for 5 s on a 2 s lease"
    );
    drop(keeper);
    drop(stream);
    // Without keep-alives it expires: within TTL + slack.
    common::eventually(
        "key to expire after keep-alives stop",
        Duration::from_secs(6),
        || {
            let mut c = c.clone();
            async move { c.get("ka", None).await.ok()?.kvs().is_empty().then_some(()) }
        },
    )
    .await;

    // Keep-alive of an unknown lease: etcd answers TTL 0, which etcd-client reports as
    // "lease not found".
    expect_err(sc.lease_keep_alive(777_777).await, "lease not found");
}

/// Polls `key` through `rc` until it is gone; asserts it was present until
/// `granted + ttl - EARLY_SLACK` and gone no later than `deadline`. Returns when it vanished.
async fn observe_expiry(
    rc: &mut RetryClient,
    key: &str,
    granted: Instant,
    ttl: Duration,
    deadline: Instant,
) -> Duration {
    loop {
        let r = rc.get(key, None).await;
        let observed = Instant::now();
        match r {
            Ok(g) if g.kvs().is_empty() => {
                let at = observed - granted;
                assert!(
                    at + EARLY_SLACK >= ttl,
                    "{key} expired after {at:?}, before its TTL {ttl:?}"
                );
                return at;
            }
            Ok(_) => assert!(
                observed <= deadline,
                "{key} still present {:?} after grant (TTL {ttl:?})",
                observed - granted
            ),
            Err(e) => assert!(observed <= deadline, "reads failing past the deadline: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_expires_after_ttl_not_before() {
    let cluster = Cluster::builder(BIN, 1)
        .flag("--lease-checkpoint-interval", CHECKPOINT_MS)
        .start()
        .await;
    let mut c = cluster.client(0).await;
    let granted = Instant::now();
    let id = c.lease_grant(2, None).await.unwrap().id();
    c.put("exp", "v", Some(PutOptions::new().with_lease(id)))
        .await
        .unwrap();
    let ttl = Duration::from_secs(2);
    let mut rc = cluster.retry_client().await;
    let at = observe_expiry(
        &mut rc,
        "exp",
        granted,
        ttl,
        granted + ttl + Duration::from_secs(2),
    )
    .await;
    eprintln!("2 s lease expired after {at:?}");
    let t = c.lease_time_to_live(id, None).await.unwrap();
    assert_eq!(t.ttl(), -1, "expired lease is gone");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_expiry_survives_leader_kill() {
    let mut cluster = Cluster::builder(BIN, 3)
        .flag("--lease-checkpoint-interval", CHECKPOINT_MS)
        .start()
        .await;
    let leader = cluster.leader().await;
    let mut c = cluster.client(leader).await;
    let ttl_s = 3;
    let granted = Instant::now();
    let id = c.lease_grant(ttl_s, None).await.expect("grant").id();
    for k in ["lk/a", "lk/b", "lk/c"] {
        c.put(k, "v", Some(PutOptions::new().with_lease(id)))
            .await
            .unwrap();
    }
    // Let at least one checkpoint happen, then kill the leader.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    cluster.kill9(leader);
    let killed = Instant::now();
    let mut rc = cluster.retry_client().await;
    let ttl = Duration::from_secs(ttl_s as u64);
    // Bound: TTL + election timeout + checkpoint interval + failover and scheduling slack.
    let bound = ttl
        + Duration::from_millis(ELECTION_MS)
        + Duration::from_millis(CHECKPOINT_MS)
        + Duration::from_secs(3);
    let at = observe_expiry(&mut rc, "lk/a", granted, ttl, granted + bound).await;
    eprintln!(
        "{ttl_s} s lease expired {at:?} after grant ({:?} after the leader kill; bound {bound:?})",
        killed.elapsed()
    );
    for k in ["lk/b", "lk/c"] {
        let g = rc.get(k, None).await.expect("get");
        assert!(g.kvs().is_empty(), "{k} must go with its lease");
    }
    let new_leader = cluster.leader().await;
    let mut c2 = cluster.client(new_leader).await;
    assert_eq!(c2.lease_time_to_live(id, None).await.unwrap().ttl(), -1);
    expect_err(
        c2.lease_revoke(id).await,
        "etcdserver: requested lease not found",
    );
}

/// etcd's lock and election services grant a caller without a lease a session lease of its
/// own (60 s, not kept alive) and use it; so do Concord's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_without_a_lease_gets_a_session_lease() {
    let cluster = Cluster::start(BIN, 1).await;
    let mut c = cluster.client(0).await;
    let held = c
        .lock("sessionless", None)
        .await
        .expect("lock without a lease");
    let key = String::from_utf8(held.key().to_vec()).expect("utf-8 key");
    let lease_hex = key
        .strip_prefix("sessionless/")
        .unwrap_or_else(|| panic!("lock key {key:?} is not <name>/<lease>"));
    let lease = i64::from_str_radix(lease_hex, 16).expect("lease id in hex");
    let ttl = c
        .lease_time_to_live(lease, Some(LeaseTimeToLiveOptions::new().with_keys()))
        .await
        .expect("the session lease exists");
    assert_eq!(ttl.granted_ttl(), 60);
    assert_eq!(ttl.keys(), [held.key().to_vec()]);
    // Released like any lock; a second caller then gets it.
    c.unlock(held.key()).await.expect("unlock");
    let again = c.lock("sessionless", None).await.expect("lock again");
    assert_ne!(again.key(), held.key());

    // A campaign without a lease too.
    let won = c
        .campaign("chair", "me", 0)
        .await
        .expect("campaign without a lease");
    let leader = won.leader().expect("leader key");
    assert_ne!(leader.lease(), 0, "the campaign got a session lease");
    let ttl = c
        .lease_time_to_live(leader.lease(), None)
        .await
        .expect("the campaign's session lease exists");
    assert_eq!(ttl.granted_ttl(), 60);
}
