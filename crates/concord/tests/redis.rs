//! The Redis front door end to end: real processes, a Redis client on each member's Redis
//! port, N=3 W=2 R=2 over the AP buckets.

mod common;

use std::time::Duration;

use common::{Cluster, RedisConn, RedisReply, BIN, WAIT};

async fn conn(cluster: &Cluster, i: usize) -> RedisConn {
    RedisConn::connect(cluster.nodes[i].redis_port)
        .await
        .expect("redis port answers")
}

fn ok() -> RedisReply {
    RedisReply::Simple("OK".into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_member_serves_any_key_and_writes_survive_a_killed_replica() {
    let mut cluster = Cluster::builder(BIN, 3)
        .flag("--gossip-interval", 100)
        .start()
        .await;
    let (mut a, mut b) = (conn(&cluster, 0).await, conn(&cluster, 1).await);
    assert_eq!(
        a.cmd(&["PING"]).await,
        Ok(RedisReply::Simple("PONG".into()))
    );
    assert_eq!(a.cmd(&["SET", "greeting", "hello"]).await, Ok(ok()));
    assert_eq!(
        b.cmd(&["GET", "greeting"]).await,
        Ok(RedisReply::bulk("hello"))
    );
    assert_eq!(b.cmd(&["GET", "missing"]).await, Ok(RedisReply::Null));
    // Counters add up across coordinators; text refuses INCR with Redis's error.
    for i in 0..10 {
        let c = if i % 2 == 0 { &mut a } else { &mut b };
        assert_eq!(
            c.cmd(&["INCR", "hits"]).await,
            Ok(RedisReply::Integer(i + 1))
        );
    }
    assert_eq!(
        a.cmd(&["INCR", "greeting"]).await,
        Ok(RedisReply::Error(
            "ERR value is not an integer or out of range".into()
        ))
    );
    // Buckets: SELECT 1 does not see bucket 0.
    assert_eq!(b.cmd(&["SELECT", "1"]).await, Ok(ok()));
    assert_eq!(b.cmd(&["GET", "greeting"]).await, Ok(RedisReply::Null));
    assert_eq!(b.cmd(&["SELECT", "0"]).await, Ok(ok()));
    // Expiry.
    assert_eq!(a.cmd(&["SET", "tmp", "x", "PX", "100000"]).await, Ok(ok()));
    match b.cmd(&["PTTL", "tmp"]).await {
        Ok(RedisReply::Integer(ms)) => assert!((1..=100_000).contains(&ms), "{ms}"),
        other => panic!("PTTL answered {other:?}"),
    }
    assert_eq!(
        b.cmd(&["TTL", "greeting"]).await,
        Ok(RedisReply::Integer(-1))
    );
    assert_eq!(
        b.cmd(&["TTL", "missing"]).await,
        Ok(RedisReply::Integer(-2))
    );
    assert_eq!(
        a.cmd(&["DEL", "tmp", "missing"]).await,
        Ok(RedisReply::Integer(1))
    );
    assert_eq!(
        b.cmd(&["EXISTS", "tmp", "greeting"]).await,
        Ok(RedisReply::Integer(1))
    );

    // One replica killed: W=2 writes still succeed, through either survivor, for many
    // keys (whose coordinating replicas were spread over all three members).
    cluster.kill9(2);
    tokio::time::sleep(Duration::from_millis(200)).await;
    for i in 0..30 {
        let key = format!("k{i}");
        let c = if i % 2 == 0 { &mut a } else { &mut b };
        assert_eq!(c.cmd(&["SET", &key, &key]).await, Ok(ok()), "SET {key}");
    }
    for i in 0..30 {
        let key = format!("k{i}");
        assert_eq!(a.cmd(&["GET", &key]).await, Ok(RedisReply::bulk(&key)));
    }
    // It comes back: the survivors hand over the hints they kept for it.
    cluster.restart(2).await;
    for i in 0..2 {
        let port = cluster.nodes[i].client_port;
        common::eventually(
            "the hints for the restarted member to be handed over",
            WAIT,
            || async move {
                let metrics = common::http_get(port, "/metrics").await.ok()?.text();
                let replayed = metric(&metrics, "concord_ap_hints_replayed_total")?;
                let pending = metrics
                    .lines()
                    .any(|l| l.starts_with("concord_ap_hints_pending{"));
                (!pending && replayed > 0.0).then_some(())
            },
        )
        .await;
    }
    // The proof that it holds every write of its absence: the other two stop, and it
    // answers alone, reading one replica (its own) per key.
    cluster.kill9(0);
    cluster.kill9(1);
    let mut c = conn(&cluster, 2).await;
    assert_eq!(
        c.cmd(&["CONCORD.QUORUM", "R", "1", "W", "1"]).await,
        Ok(RedisReply::Array(vec![
            RedisReply::bulk("n"),
            RedisReply::Integer(3),
            RedisReply::bulk("r"),
            RedisReply::Integer(1),
            RedisReply::bulk("w"),
            RedisReply::Integer(1),
        ]))
    );
    for i in 0..30 {
        let key = format!("k{i}");
        let got = c.cmd(&["GET", &key]).await;
        assert_eq!(got, Ok(RedisReply::bulk(&key)), "{key}");
    }
    let refused = c.cmd(&["CONCORD.QUORUM", "R", "4"]).await;
    assert!(
        matches!(&refused, Ok(RedisReply::Error(e)) if e.contains("from 1 to the replica count (3)")),
        "R beyond N: {refused:?}"
    );
}

/// The value of an unlabelled metric in a Prometheus text page.
fn metric(page: &str, name: &str) -> Option<f64> {
    page.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_and_command_errors_are_redis_s() {
    let cluster = Cluster::start(BIN, 1).await;
    let mut c = conn(&cluster, 0).await;
    assert_eq!(
        c.cmd(&["NOSUCH", "a"]).await,
        Ok(RedisReply::Error(
            "ERR unknown command 'NOSUCH', with args beginning with: 'a' ".into()
        ))
    );
    assert_eq!(
        c.cmd(&["GET"]).await,
        Ok(RedisReply::Error(
            "ERR wrong number of arguments for 'get' command".into()
        ))
    );
    assert_eq!(
        c.cmd(&["SET", "k", "v", "EX", "0"]).await,
        Ok(RedisReply::Error(
            "ERR invalid expire time in 'set' command".into()
        ))
    );
    // Inline commands and RESP3.
    assert_eq!(c.raw(b"SET inline \"a b\"\r\n").await, Ok(ok()));
    assert_eq!(c.cmd(&["GET", "inline"]).await, Ok(RedisReply::bulk("a b")));
    match c.cmd(&["HELLO", "3"]).await {
        Ok(RedisReply::Array(kv)) => assert!(kv.contains(&RedisReply::bulk("proto"))),
        other => panic!("HELLO 3 answered {other:?}"),
    }
    assert_eq!(c.cmd(&["GET", "missing"]).await, Ok(RedisReply::Null));
    // A protocol error is answered, then the connection is closed; the server lives on.
    assert_eq!(
        c.raw(b"*1\r\n$-5\r\n").await,
        Ok(RedisReply::Error(
            "ERR Protocol error: invalid bulk length".into()
        ))
    );
    assert!(c.cmd(&["PING"]).await.is_err());
    let mut again = conn(&cluster, 0).await;
    assert_eq!(
        again.cmd(&["GET", "inline"]).await,
        Ok(RedisReply::bulk("a b"))
    );

    // Commands, their errors and the quorum requests under them are in /metrics; a
    // command Concord does not have counts as `unknown`, whatever its name.
    assert!(matches!(
        again.cmd(&["SADD", "inline", "x"]).await,
        Ok(RedisReply::Error(e)) if e.starts_with("WRONGTYPE")
    ));
    assert!(matches!(
        again.cmd(&["ANOTHERBOGUS"]).await,
        Ok(RedisReply::Error(_))
    ));
    // The coordinating replica refuses to increment a string that is not a number.
    assert_eq!(
        again.cmd(&["INCR", "inline"]).await,
        Ok(RedisReply::Error(
            "ERR value is not an integer or out of range".into()
        ))
    );
    let page = common::http_get(cluster.nodes[0].client_port, "/metrics")
        .await
        .expect("/metrics")
        .text();
    let page = common::metrics::parse_metrics(&page).expect("Prometheus text");
    let value = |family: &str, labels: &[(&str, &str)]| {
        page.iter()
            .find(|s| s.family == family && s.has(labels))
            .map_or(0.0, |s| s.value)
    };
    let commands = "concord_redis_command_duration_seconds";
    assert_eq!(value(commands, &[("command", "get")]), 4.0);
    assert_eq!(value(commands, &[("command", "set")]), 2.0);
    assert_eq!(value(commands, &[("command", "unknown")]), 2.0);
    assert!(!page.iter().any(|s| s
        .labels
        .values()
        .any(|v| v.contains("bogus") || v == "nosuch")));
    let errors = "concord_redis_command_errors_total";
    assert_eq!(
        value(errors, &[("command", "unknown"), ("error", "ERR")]),
        2.0
    );
    assert_eq!(value(errors, &[("command", "set"), ("error", "ERR")]), 1.0);
    assert_eq!(
        value(errors, &[("command", "sadd"), ("error", "WRONGTYPE")]),
        1.0
    );
    let requests = "concord_ap_request_duration_seconds";
    // Writes: the SET and the INCR; reads: three GETs and the SADD's.
    assert_eq!(value(requests, &[("op", "write")]), 2.0);
    assert_eq!(value(requests, &[("op", "read")]), 4.0);
    assert_eq!(
        value(
            "concord_ap_requests_failed_total",
            &[("op", "write"), ("reason", "refused")]
        ),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anti_entropy_refills_a_replica_that_lost_its_data() {
    let mut cluster = Cluster::builder(BIN, 3)
        .flag("--gossip-interval", 100)
        .flag("--ap-anti-entropy-interval", 200)
        .start()
        .await;
    let mut a = conn(&cluster, 0).await;
    for i in 0..40 {
        let key = format!("k{i}");
        assert_eq!(a.cmd(&["SET", &key, &key]).await, Ok(ok()), "SET {key}");
    }
    assert_eq!(a.cmd(&["DEL", "k0"]).await, Ok(RedisReply::Integer(1)));
    // Member 3 loses its AP data (its CP data stays: it rejoins as the same member).
    cluster.kill9(2);
    std::fs::remove_file(cluster.nodes[2].data_dir.join("ap.redb")).expect("ap.redb exists");
    cluster.restart(2).await;
    let port = cluster.nodes[2].client_port;
    common::eventually("anti-entropy to refill member 3", WAIT, || async move {
        let metrics = common::http_get(port, "/metrics").await.ok()?.text();
        let repaired = metric(&metrics, "concord_ap_anti_entropy_keys_repaired_total")?;
        (repaired >= 40.0).then_some(())
    })
    .await;
    // /v1/ap (what `concord member ring` shows): the ring's shares and the repair count.
    let status = common::http_get(port, "/v1/ap")
        .await
        .expect("/v1/ap answers")
        .text();
    let status: serde_json::Value = serde_json::from_str(&status).expect("JSON");
    let ring = status["ring"].as_array().expect("a ring");
    assert_eq!(ring.len(), 3, "{status}");
    let total: f64 = ring.iter().map(|m| m["share"].as_f64().unwrap()).sum();
    assert!((total - 1.0).abs() < 1e-9, "shares sum to {total}");
    assert!(
        status["anti_entropy_keys_repaired"].as_u64().unwrap() >= 40,
        "{status}"
    );
    // It alone answers every key, and the deleted one stays deleted.
    cluster.kill9(0);
    cluster.kill9(1);
    let mut c = conn(&cluster, 2).await;
    c.cmd(&["CONCORD.QUORUM", "R", "1"])
        .await
        .expect("quorum set");
    assert_eq!(c.cmd(&["GET", "k0"]).await, Ok(RedisReply::Null));
    for i in 1..40 {
        let key = format!("k{i}");
        let got = c.cmd(&["GET", &key]).await;
        assert_eq!(got, Ok(RedisReply::bulk(&key)), "{key}");
    }
}

/// Runs `concord <args>` against member `i`; its standard output (the command must
/// succeed).
fn cli(cluster: &Cluster, i: usize, args: &[&str]) -> String {
    let out = std::process::Command::new(BIN)
        .args(args)
        .arg(format!("--endpoints={}", cluster.url(i)))
        .output()
        .expect("concord runs");
    assert!(
        out.status.success(),
        "concord {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

async fn http_json(
    port: u16,
    method: &str,
    path: &str,
    body: Option<serde_json::Value>,
) -> (u16, serde_json::Value) {
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let r = common::http_request(
        port,
        method,
        path,
        Some("application/json"),
        body.as_bytes(),
    )
    .await
    .expect("HTTP answers");
    let json = serde_json::from_str(&r.text()).unwrap_or(serde_json::Value::Null);
    (r.status, json)
}

/// How many members hold a key of `bucket` (their `keys_held_here` summed).
async fn copies(cluster: &Cluster, bucket: u8) -> u64 {
    copies_on(cluster, &cluster.running(), bucket).await
}

/// How many of `members` hold a key of `bucket`.
async fn copies_on(cluster: &Cluster, members: &[usize], bucket: u8) -> u64 {
    let mut n = 0;
    for &i in members {
        let path = format!("/v1/buckets/{bucket}");
        let port = cluster.nodes[i].client_port;
        n += http_json(port, "GET", &path, None).await.1["keys_held_here"]
            .as_u64()
            .expect("keys_held_here");
    }
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bucket_properties_are_replicated_and_keys_are_served_over_http_and_the_cli() {
    let mut cluster = Cluster::builder(BIN, 3)
        .flag("--gossip-interval", 100)
        .start()
        .await;
    let mut a = conn(&cluster, 0).await;
    // Set through RESP on member 1; in force on member 2 (through the Raft group).
    let set = a
        .cmd(&[
            "CONCORD.BUCKET",
            "SET",
            "2",
            "N_VAL",
            "1",
            "R",
            "1",
            "w",
            "quorum",
        ])
        .await
        .expect("answer");
    assert_eq!(
        set,
        RedisReply::Array(vec![
            RedisReply::bulk("bucket"),
            RedisReply::Integer(2),
            RedisReply::bulk("n_val"),
            RedisReply::Integer(1),
            RedisReply::bulk("r"),
            RedisReply::Integer(1),
            RedisReply::bulk("w"),
            RedisReply::bulk("quorum (1)"),
            RedisReply::bulk("durability"),
            RedisReply::bulk("fsync"),
            RedisReply::bulk("siblings"),
            RedisReply::bulk("no"),
        ])
    );
    let port1 = cluster.nodes[1].client_port;
    // Members put bucket properties in force as they apply them: wait for all three.
    for node in &cluster.nodes {
        let port = node.client_port;
        common::eventually(
            "every member to use bucket 2's n_val",
            WAIT,
            || async move {
                let (_, b) = http_json(port, "GET", "/v1/buckets/2", None).await;
                (b["n_val"] == 1).then_some(())
            },
        )
        .await;
    }
    // Keys over HTTP: one copy in bucket 2 (n_val 1), three in bucket 0.
    for (bucket, want) in [(2u8, 1u64), (0, 3)] {
        let path = format!("/v1/buckets/{bucket}/keys/some%2Fkey");
        let (status, body) =
            http_json(port1, "PUT", &path, Some(serde_json::json!({"value": "v"}))).await;
        assert_eq!(
            (status, &body["stored"]),
            (200, &serde_json::json!(true)),
            "{body}"
        );
        let cl = &cluster;
        common::eventually("every replica to hold the key", WAIT, || async move {
            (copies(cl, bucket).await == want).then_some(())
        })
        .await;
    }
    assert_eq!(a.cmd(&["SELECT", "2"]).await, Ok(ok()));
    assert_eq!(a.cmd(&["GET", "some/key"]).await, Ok(RedisReply::bulk("v")));
    let port0 = cluster.nodes[0].client_port;
    let path = "/v1/buckets/2/keys/some%2Fkey";
    let (status, body) = http_json(port0, "GET", path, None).await;
    assert_eq!((status, body["value"].as_str()), (200, Some("v")), "{body}");
    let (status, body) = http_json(port0, "DELETE", path, None).await;
    assert_eq!((status, &body["deleted"]), (200, &serde_json::json!(true)));
    assert_eq!(http_json(port0, "GET", path, None).await.0, 404);
    assert_eq!(
        http_json(port0, "DELETE", path, None).await.1["deleted"],
        false
    );
    // Bad requests: clear errors, nothing changed.
    for (method, path, body, status) in [
        ("PUT", "/v1/buckets/2", serde_json::json!({"r": 2}), 400),
        ("PUT", "/v1/buckets/2", serde_json::json!({"n_val": 0}), 400),
        (
            "PUT",
            "/v1/buckets/2",
            serde_json::json!({"colour": "red"}),
            400,
        ),
        (
            "PUT",
            "/v1/buckets/16",
            serde_json::json!({"n_val": 3}),
            404,
        ),
        (
            "PUT",
            "/v1/buckets/0/keys/k",
            serde_json::json!({"val": "x"}),
            400,
        ),
        (
            "GET",
            "/v1/buckets/0/keys/k?r=4",
            serde_json::Value::Null,
            400,
        ),
    ] {
        let (got, answer) = http_json(port0, method, path, Some(body.clone())).await;
        assert_eq!(got, status, "{method} {path} {body}: {answer}");
        assert!(answer["error"].is_string(), "{answer}");
    }
    let refused = a.cmd(&["CONCORD.BUCKET", "SET", "2", "R", "2"]).await;
    assert!(
        matches!(&refused, Ok(RedisReply::Error(e)) if e.contains("r must be from 1 to n_val (1)")),
        "{refused:?}"
    );
    // The CLI: properties, and keys in an async bucket.
    let out = cli(
        &cluster,
        2,
        &["bucket", "set", "3", "--durability", "async", "-w", "table"],
    );
    assert!(out.contains("| 3 ") && out.contains("async"), "{out}");
    let list = cli(&cluster, 2, &["bucket", "list"]);
    assert!(
        list.lines().any(|l| l == "2, 1, 1, quorum (1), fsync, no"),
        "{list}"
    );
    assert_eq!(
        cli(&cluster, 2, &["ap", "put", "--bucket", "3", "k", "v3"]),
        "OK\n"
    );
    assert_eq!(
        cli(&cluster, 0, &["ap", "get", "--bucket", "3", "k"]),
        "k\nv3\n"
    );
    assert_eq!(
        cli(&cluster, 1, &["ap", "del", "--bucket", "3", "k"]),
        "1\n"
    );
    // Compare-and-set, any data command, and a session kept in a file.
    let cas = ["ap", "put", "--bucket", "3", "c", "v", "--if-absent"];
    assert_eq!(cli(&cluster, 0, &cas), "1\n");
    assert_eq!(cli(&cluster, 1, &cas), "0\n");
    let digest = format!("{:016x}", xxhash_rust::xxh3::xxh3_64(b"v"));
    let swap = [
        "ap",
        "put",
        "--bucket",
        "3",
        "c",
        "w",
        "--if-match",
        &digest,
    ];
    assert_eq!(cli(&cluster, 2, &swap), "1\n");
    assert_eq!(cli(&cluster, 0, &swap), "0\n");
    let sadd = ["ap", "cmd", "--bucket", "3", "s", "SADD", "a", "b", "a"];
    assert_eq!(cli(&cluster, 1, &sadd), "2\n");
    let members = cli(
        &cluster,
        2,
        &["ap", "cmd", "--bucket", "3", "s", "SMEMBERS"],
    );
    let mut members: Vec<&str> = members.lines().collect();
    members.sort();
    assert_eq!(members, ["a", "b"]);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("session");
    let file_arg = file.to_str().unwrap();
    let put = ["ap", "--session-file", file_arg, "put", "sk", "1"];
    assert_eq!(cli(&cluster, 0, &put), "OK\n");
    let token = std::fs::read_to_string(&file).unwrap();
    assert!(token.trim().len() > 10, "{token:?}");
    let get = ["ap", "--session-file", file_arg, "get", "sk", "--r", "1"];
    assert_eq!(cli(&cluster, 2, &get), "sk\n1\n");
    std::fs::write(&file, "not a token").unwrap();
    let refused = std::process::Command::new(BIN)
        .args(get)
        .arg(format!("--endpoints={}", cluster.url(1)))
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("invalid concord-session header"),
        "{refused:?}"
    );
    // Properties are cluster state: a restarted member has them once it has applied its
    // log again.
    cluster.kill9(1);
    cluster.restart(1).await;
    common::eventually(
        "the restarted member to use the properties",
        WAIT,
        || async move {
            let (_, three) = http_json(port1, "GET", "/v1/buckets/3", None).await;
            let (_, two) = http_json(port1, "GET", "/v1/buckets/2", None).await;
            (three["durability"] == "async" && two["n_val"] == 1).then_some(())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleted_keys_leave_no_tombstone_once_the_grace_period_has_passed() {
    let cluster = Cluster::builder(BIN, 3)
        .flag("--gossip-interval", 100)
        .flag("--ap-tombstone-grace", 500)
        .start()
        .await;
    let mut a = conn(&cluster, 0).await;
    for i in 0..10 {
        let key = format!("k{i}");
        assert_eq!(a.cmd(&["SET", &key, "v"]).await, Ok(ok()));
    }
    assert_eq!(a.cmd(&["SET", "kept", "v"]).await, Ok(ok()));
    let keys: Vec<String> = (0..10).map(|i| format!("k{i}")).collect();
    let mut del = vec!["DEL"];
    del.extend(keys.iter().map(String::as_str));
    assert_eq!(a.cmd(&del).await, Ok(RedisReply::Integer(10)));
    let cl = &cluster;
    common::eventually("every tombstone to be collected", WAIT, || async move {
        (copies(cl, 0).await == 3).then_some(())
    })
    .await;
    let mut collected = 0.0;
    for node in &cluster.nodes {
        let page = common::http_get(node.client_port, "/metrics")
            .await
            .unwrap()
            .text();
        collected += metric(&page, "concord_ap_tombstones_removed_total").unwrap();
    }
    assert_eq!(
        collected, 30.0,
        "ten keys' tombstones, from three replicas each"
    );
    assert_eq!(a.cmd(&["GET", "k3"]).await, Ok(RedisReply::Null));
    assert_eq!(a.cmd(&["GET", "kept"]).await, Ok(RedisReply::bulk("v")));
    assert_eq!(a.cmd(&["DBSIZE"]).await, Ok(RedisReply::Integer(1)));
}

/// Every key `k0..k{n}` answers `v{i}` through member `i`'s Redis port.
async fn all_readable(cluster: &Cluster, i: usize, n: usize) {
    let mut c = conn(cluster, i).await;
    for k in 0..n {
        let (key, want) = (format!("k{k}"), format!("v{k}"));
        assert_eq!(
            c.cmd(&["GET", &key]).await,
            Ok(RedisReply::bulk(&want)),
            "{key} through member {i}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_joining_and_leaving_move_only_their_share_and_no_key_is_missed() {
    let mut cluster = Cluster::builder(BIN, 3)
        .flag("--gossip-interval", 100)
        .flag("--ap-anti-entropy-interval", 300)
        .start()
        .await;
    let mut a = conn(&cluster, 0).await;
    const KEYS: usize = 300;
    for k in 0..KEYS {
        let (key, value) = (format!("k{k}"), format!("v{k}"));
        assert_eq!(a.cmd(&["SET", &key, &value]).await, Ok(ok()));
    }
    // A fourth member joins (etcd's member add, then the process).
    let n3 = cluster.reserve_node("n3");
    let mut c = cluster.client(0).await;
    let added = c
        .member_add([cluster.nodes[n3].peer_url()], None)
        .await
        .expect("member add");
    let initial_cluster = common::initial_cluster_after_add(&added, "n3");
    cluster.start_added_member(n3, &initial_cluster).await;
    // Readable through every member at R=2 while the ring changes and keys move,
    // including through the newcomer, which owns a share of them from the start.
    for i in [3, 0, 1] {
        all_readable(&cluster, i, KEYS).await;
    }
    // The move ends: every member has pushed, each key is on exactly three members, and
    // the members that lost a key no longer hold it.
    handoff_ended(&cluster, &[0, 1, 2, 3], 3 * KEYS as u64).await;
    let (_, ap) = http_json(cluster.nodes[3].client_port, "GET", "/v1/ap", None).await;
    assert_eq!(ap["ring"].as_array().map(Vec::len), Some(4), "{ap}");
    let (_, held) = http_json(cluster.nodes[3].client_port, "GET", "/v1/buckets/0", None).await;
    let held = held["keys_held_here"].as_u64().unwrap();
    assert!(
        (100..=350).contains(&held),
        "the newcomer holds {held} of {KEYS}"
    );
    for i in 0..4 {
        all_readable(&cluster, i, KEYS).await;
    }
    // A founding member leaves (member remove, then it stops): the three left own every
    // key again and the keys it alone held among them are pushed to them.
    let gone = cluster.member_id(0).await;
    let mut c = cluster.client(1).await;
    c.member_remove(gone).await.expect("member remove");
    cluster.kill9(0);
    for i in [1, 2, 3] {
        all_readable(&cluster, i, KEYS).await;
    }
    handoff_ended(&cluster, &[1, 2, 3], 3 * KEYS as u64).await;
    for i in [1, 2, 3] {
        all_readable(&cluster, i, KEYS).await;
    }
}

/// Waits until none of `members` is in a ring transition and they hold `copies` keys of
/// bucket 0 between them.
async fn handoff_ended(cluster: &Cluster, members: &[usize], copies: u64) {
    common::eventually("the handoff to end", WAIT, || async move {
        for &i in members {
            let port = cluster.nodes[i].client_port;
            let (_, ap) = http_json(port, "GET", "/v1/ap", None).await;
            if ap["in_transition"] != false {
                return None;
            }
        }
        (copies_on(cluster, members, 0).await == copies).then_some(())
    })
    .await;
}

/// The 3+2 shape: three Raft members and two AP-only members, which hold AP data and
/// serve Redis clients without the CP keyspace, read the ring and bucket properties from
/// the Raft members, and leave through etcd's member remove.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ap_only_members_hold_ap_data_without_the_cp_keyspace() {
    let mut cluster = Cluster::builder(BIN, 3)
        .flag("--gossip-interval", 100)
        .flag("--ap-anti-entropy-interval", 300)
        .start()
        .await;
    const KEYS: usize = 200;
    let mut a = conn(&cluster, 0).await;
    for k in 0..KEYS / 2 {
        let (key, value) = (format!("k{k}"), format!("v{k}"));
        assert_eq!(a.cmd(&["SET", &key, &value]).await, Ok(ok()));
    }
    let (n3, n4) = (cluster.reserve_node("n3"), cluster.reserve_node("n4"));
    cluster.start_ap_only_member(n3, &[0, 1, 2]).await;
    cluster.start_ap_only_member(n4, &[0, 1, 2]).await;
    // Writes through an AP-only member, reads through every member.
    let mut d = conn(&cluster, n3).await;
    for k in KEYS / 2..KEYS {
        let (key, value) = (format!("k{k}"), format!("v{k}"));
        assert_eq!(d.cmd(&["SET", &key, &value]).await, Ok(ok()));
    }
    // Through the Raft members while the keys move (they ask the earlier owners too), and
    // through the AP-only members once the move is over (a member that starts in the ring
    // asks the ring without itself meanwhile: `ap/tests.rs` proves that deterministically,
    // docs/ap.md, Handoff).
    for i in 0..3 {
        all_readable(&cluster, i, KEYS).await;
    }
    handoff_ended(&cluster, &[0, 1, 2, n3, n4], 3 * KEYS as u64).await;
    for i in [n3, n4] {
        all_readable(&cluster, i, KEYS).await;
    }
    // Five members in the ring and in gossip, three in Raft.
    common::eventually("five members in every ring", WAIT, || async {
        for i in 0..5 {
            let (_, ap) = http_json(cluster.nodes[i].client_port, "GET", "/v1/ap", None).await;
            if ap["ring"].as_array().map(Vec::len) != Some(5) {
                return None;
            }
        }
        Some(())
    })
    .await;
    let mut c = cluster.client(1).await;
    let list = c.member_list().await.expect("member list");
    assert_eq!(list.members().len(), 3, "{list:?}");
    // An AP-only member's dashboard shows the whole cluster, each member with its metrics.
    let n3_port = cluster.nodes[n3].client_port;
    let page = common::http_get(n3_port, "/ui").await.expect("/ui");
    assert_eq!(page.status, 200);
    assert!(page.text().contains("<title>"), "{}", page.text());
    common::eventually(
        "every member on the AP-only member's dashboard",
        WAIT,
        || async {
            let (_, d) = http_json(n3_port, "GET", "/v1/dashboard", None).await;
            let members = d["members"].as_array()?;
            let mut kinds: Vec<&str> = members.iter().filter_map(|m| m["kind"].as_str()).collect();
            kinds.sort();
            let all_up = members.iter().all(|m| {
                m["up"] == true
                    && m["metrics"]
                        .as_str()
                        .is_some_and(|t| t.contains("process_cpu_seconds_total"))
            });
            (kinds == ["ap-only", "ap-only", "voter", "voter", "voter"] && all_up).then_some(())
        },
    )
    .await;
    // The views name the AP-only members and their role, on either kind of member.
    for i in [0, n4] {
        common::eventually("the roles in the gossip view", WAIT, || async {
            let (_, view) =
                http_json(cluster.nodes[i].client_port, "GET", "/v1/members", None).await;
            let mut ap_only: Vec<String> = view["members"]
                .as_array()?
                .iter()
                .chain([&view["me"]])
                .filter(|m| m["role"] == "ap-only")
                .filter_map(|m| m["name"].as_str().map(str::to_string))
                .collect();
            ap_only.sort();
            (ap_only == ["n3", "n4"]).then_some(())
        })
        .await;
    }
    // Each key on three members (the handoff ended above), the AP-only ones holding
    // their share; no CP keyspace on their disks.
    for i in [n3, n4] {
        let held = copies_on(&cluster, &[i], 0).await;
        assert!(held > 0, "AP-only member {i} holds no key");
        let dir = &cluster.nodes[i].data_dir;
        assert!(dir.join("ap.redb").exists());
        assert!(!dir.join("wal").exists() && !dir.join("state.redb").exists());
    }
    // etcd's API is not served there, with a clear error.
    let mut e = cluster.client(n3).await;
    let err = e
        .put("x", "y", None)
        .await
        .expect_err("an AP-only member has no CP keyspace");
    assert!(err.to_string().contains("AP-only"), "{err}");
    // Bucket properties set through an AP-only member are in force everywhere.
    let mut f = conn(&cluster, n4).await;
    let set = f.cmd(&["CONCORD.BUCKET", "SET", "1", "N_VAL", "2"]).await;
    assert!(matches!(set, Ok(RedisReply::Array(_))), "{set:?}");
    common::eventually("bucket 1 at n_val 2 on member 0", WAIT, || async {
        let (_, b) = http_json(cluster.nodes[0].client_port, "GET", "/v1/buckets/1", None).await;
        (b["n_val"] == 2).then_some(())
    })
    .await;
    // An AP-only member leaves through etcd's member remove: it stops by itself, and
    // its keys are handed over to the four left.
    let (_, ap) = http_json(cluster.nodes[n4].client_port, "GET", "/v1/ap", None).await;
    let id = u64::from_str_radix(ap["me"].as_str().unwrap(), 16).unwrap();
    c.member_remove(id)
        .await
        .expect("member remove of an AP-only member");
    common::eventually(
        "the removed member to stop",
        Duration::from_secs(40),
        || {
            let exited = cluster.has_exited(n4);
            async move { exited.then_some(()) }
        },
    )
    .await;
    handoff_ended(&cluster, &[0, 1, 2, 3], 3 * KEYS as u64).await;
    for i in 0..4 {
        all_readable(&cluster, i, KEYS).await;
    }
}

/// An AP-only member the Raft members refuse (here: another cluster's token) stops by
/// itself and says why, rather than waiting forever unregistered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ap_only_member_the_raft_members_refuse_stops_with_the_reason() {
    let mut cluster = Cluster::builder(BIN, 3).start().await;
    let n3 = cluster.reserve_node("n3");
    cluster.spawn_ap_only_member(n3, &[0, 1, 2], "not-this-cluster");
    common::eventually(
        "the refused member to stop",
        Duration::from_secs(40),
        || {
            let exited = cluster.has_exited(n3);
            async move { exited.then_some(()) }
        },
    )
    .await;
    let log = std::fs::read_to_string(&cluster.nodes[n3].log_path).unwrap();
    assert!(log.contains("cluster id mismatch"), "{log}");
}

fn int(n: i64) -> RedisReply {
    RedisReply::Integer(n)
}

fn err(text: &str) -> RedisReply {
    RedisReply::Error(text.into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conditional_writes_transactions_and_sessions_over_resp() {
    let cluster = Cluster::builder(BIN, 3)
        .flag("--gossip-interval", 100)
        .start()
        .await;
    let (mut a, mut b) = (conn(&cluster, 0).await, conn(&cluster, 1).await);
    // Redis 8.4's conditions and DIGEST, DELEX; MSETNX of one key.
    assert_eq!(a.cmd(&["SET", "k", "v1"]).await, Ok(ok()));
    let Ok(RedisReply::Bulk(d)) = b.cmd(&["DIGEST", "k"]).await else {
        panic!("DIGEST answers a bulk string");
    };
    let d = String::from_utf8(d).unwrap();
    assert_eq!(d.len(), 16, "{d}");
    let upper = d.to_uppercase();
    assert_eq!(
        b.cmd(&["SET", "k", "v2", "IFDNE", &d]).await,
        Ok(RedisReply::Null)
    );
    assert_eq!(b.cmd(&["SET", "k", "v2", "IFDEQ", &upper]).await, Ok(ok()));
    assert_eq!(
        a.cmd(&["SET", "k", "v3", "IFEQ", "v1"]).await,
        Ok(RedisReply::Null)
    );
    assert_eq!(
        a.cmd(&["SET", "k", "v3", "IFDEQ", "short"]).await,
        Ok(err("ERR digest must be exactly 16 hexadecimal characters"))
    );
    assert_eq!(a.cmd(&["DELEX", "k", "IFNE", "v2"]).await, Ok(int(0)));
    assert_eq!(a.cmd(&["DELEX", "k", "IFEQ", "v2"]).await, Ok(int(1)));
    assert_eq!(b.cmd(&["GET", "k"]).await, Ok(RedisReply::Null));
    assert_eq!(a.cmd(&["DELEX", "k", "IFEQ", "v2"]).await, Ok(int(0)));
    assert_eq!(a.cmd(&["SADD", "s", "m"]).await, Ok(int(1)));
    assert_eq!(
        a.cmd(&["DELEX", "s", "IFEQ", "m"]).await,
        Ok(err(
            "WRONGTYPE Operation against a key holding the wrong kind of value"
        ))
    );
    assert_eq!(a.cmd(&["DELEX", "s"]).await, Ok(int(1)));
    assert_eq!(a.cmd(&["MSETNX", "n", "1"]).await, Ok(int(1)));
    assert_eq!(b.cmd(&["MSETNX", "n", "2"]).await, Ok(int(0)));
    assert!(matches!(
        a.cmd(&["MSETNX", "x", "1", "y", "2"]).await,
        Ok(RedisReply::Error(e)) if e.contains("more than one key")
    ));
    // A transaction on one key runs atomically; a write of the watched key between
    // WATCH and EXEC, from any member, aborts it.
    assert_eq!(a.cmd(&["MULTI"]).await, Ok(ok()));
    for step in [&["INCR", "c"][..], &["INCRBY", "c", "4"], &["GET", "c"]] {
        assert_eq!(a.cmd(step).await, Ok(RedisReply::Simple("QUEUED".into())));
    }
    assert_eq!(
        a.cmd(&["EXEC"]).await,
        Ok(RedisReply::Array(vec![
            int(1),
            int(5),
            RedisReply::bulk("5")
        ]))
    );
    assert_eq!(a.cmd(&["WATCH", "c"]).await, Ok(ok()));
    assert_eq!(b.cmd(&["INCR", "c"]).await, Ok(int(6)));
    assert_eq!(a.cmd(&["MULTI"]).await, Ok(ok()));
    assert_eq!(
        a.cmd(&["SET", "c", "0"]).await,
        Ok(RedisReply::Simple("QUEUED".into()))
    );
    assert_eq!(a.cmd(&["EXEC"]).await, Ok(RedisReply::Null));
    assert_eq!(b.cmd(&["GET", "c"]).await, Ok(RedisReply::bulk("6")));
    // Unchanged since WATCH: it runs.
    assert_eq!(a.cmd(&["WATCH", "c"]).await, Ok(ok()));
    assert_eq!(a.cmd(&["MULTI"]).await, Ok(ok()));
    assert_eq!(
        a.cmd(&["DECR", "c"]).await,
        Ok(RedisReply::Simple("QUEUED".into()))
    );
    assert_eq!(a.cmd(&["EXEC"]).await, Ok(RedisReply::Array(vec![int(5)])));
    // A second key is refused when queued, and EXEC then aborts.
    assert_eq!(a.cmd(&["MULTI"]).await, Ok(ok()));
    assert_eq!(
        a.cmd(&["GET", "c"]).await,
        Ok(RedisReply::Simple("QUEUED".into()))
    );
    assert!(matches!(
        a.cmd(&["GET", "other"]).await,
        Ok(RedisReply::Error(e)) if e.contains("one key")
    ));
    assert_eq!(
        a.cmd(&["EXEC"]).await,
        Ok(err(
            "EXECABORT Transaction discarded because of previous errors."
        ))
    );
    assert_eq!(a.cmd(&["EXEC"]).await, Ok(err("ERR EXEC without MULTI")));
    // A session token carried from member 1 to member 2: what the session wrote is read
    // there (at R=1, W=1, where only the token makes it so).
    for c in [&mut a, &mut b] {
        let q = c.cmd(&["CONCORD.QUORUM", "R", "1", "W", "1"]).await;
        assert!(matches!(q, Ok(RedisReply::Array(_))), "{q:?}");
    }
    let Ok(RedisReply::Bulk(empty)) = a.cmd(&["CONCORD.SESSION"]).await else {
        panic!("CONCORD.SESSION answers a token");
    };
    for i in 0..20 {
        let v = i.to_string();
        assert_eq!(a.cmd(&["SET", "sess", &v]).await, Ok(ok()));
        let Ok(RedisReply::Bulk(token)) = a.cmd(&["CONCORD.SESSION", "GET"]).await else {
            panic!("a token");
        };
        assert_ne!(token, empty);
        let token = String::from_utf8(token).unwrap();
        assert_eq!(b.cmd(&["CONCORD.SESSION", "JOIN", &token]).await, Ok(ok()));
        assert_eq!(b.cmd(&["GET", "sess"]).await, Ok(RedisReply::bulk(&v)));
    }
    assert!(matches!(
        b.cmd(&["CONCORD.SESSION", "JOIN", "%%%"]).await,
        Ok(RedisReply::Error(e)) if e.starts_with("ERR invalid session token")
    ));
    assert_eq!(b.cmd(&["CONCORD.SESSION", "END"]).await, Ok(ok()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bucket_that_keeps_siblings_over_resp_and_http() {
    let cluster = Cluster::builder(BIN, 3)
        .flag("--gossip-interval", 100)
        .start()
        .await;
    let (mut a, mut b) = (conn(&cluster, 0).await, conn(&cluster, 1).await);
    let set = a
        .cmd(&["CONCORD.BUCKET", "SET", "3", "SIBLINGS", "yes"])
        .await;
    assert!(matches!(set, Ok(RedisReply::Array(_))), "{set:?}");
    let port = cluster.nodes[1].client_port;
    common::eventually(
        "member 2 to keep siblings in bucket 3",
        WAIT,
        || async move {
            let (_, p) = http_json(port, "GET", "/v1/buckets/3", None).await;
            (p["siblings"] == true).then_some(())
        },
    )
    .await;
    for c in [&mut a, &mut b] {
        assert_eq!(c.cmd(&["SELECT", "3"]).await, Ok(ok()));
    }
    // Plain commands are refused; blind writes through two members are both kept.
    assert!(matches!(
        a.cmd(&["SET", "k", "v"]).await,
        Ok(RedisReply::Error(e)) if e.contains("keeps siblings")
    ));
    assert_eq!(a.cmd(&["CONCORD.SPUT", "k", "", "x"]).await, Ok(ok()));
    assert_eq!(b.cmd(&["CONCORD.SPUT", "k", "", "y"]).await, Ok(ok()));
    let Ok(RedisReply::Array(got)) = b.cmd(&["CONCORD.SGET", "k"]).await else {
        panic!("SGET answers an array");
    };
    let [RedisReply::Bulk(context), RedisReply::Array(values)] = &got[..] else {
        panic!("SGET answered {got:?}");
    };
    assert_eq!(values.len(), 2, "{values:?}");
    let context = String::from_utf8(context.clone()).unwrap();
    // Over HTTP: 300 with both, the context in a header.
    let r = common::http_request(port, "GET", "/v1/buckets/3/keys/k", None, b"")
        .await
        .unwrap();
    assert_eq!(r.status, 300, "{}", r.text());
    let header = r
        .headers
        .iter()
        .find(|(n, _)| n == "concord-context")
        .map(|(_, v)| v.clone());
    assert_eq!(header.as_deref(), Some(context.as_str()));
    // A write with the context replaces both: one value, 200 over HTTP.
    assert_eq!(a.cmd(&["CONCORD.SPUT", "k", &context, "z"]).await, Ok(ok()));
    assert_eq!(
        b.cmd(&["CONCORD.SGET", "k"]).await.map(|r| match r {
            RedisReply::Array(mut v) => v.pop(),
            _ => None,
        }),
        Ok(Some(RedisReply::Array(vec![RedisReply::bulk("z")])))
    );
    let (status, body) = http_json(port, "GET", "/v1/buckets/3/keys/k", None).await;
    assert_eq!((status, &body["value"]), (200, &serde_json::json!("z")));
    assert_eq!(
        a.cmd(&["TYPE", "k"]).await,
        Ok(RedisReply::Simple("siblings".into()))
    );
    assert!(matches!(
        a.cmd(&["CONCORD.SPUT", "k", "%%", "v"]).await,
        Ok(RedisReply::Error(e)) if e.starts_with("ERR invalid causal context")
    ));
    assert!(matches!(a.cmd(&["SELECT", "0"]).await.and(Ok(())), Ok(())));
    assert!(matches!(
        a.cmd(&["CONCORD.SGET", "k"]).await,
        Ok(RedisReply::Error(e)) if e.contains("does not keep siblings")
    ));
}
