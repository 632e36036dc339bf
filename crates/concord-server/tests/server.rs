//! In-process servers on loopback driven by gRPC clients generated from concord-proto:
//! a quick check of the client API without spawning processes (the `concord` crate's
//! end-to-end tests drive real processes with the independent `etcd-client` crate).

use std::time::Duration;

use concord_proto::etcdserverpb as pb;
use concord_proto::etcdserverpb::kv_client::KvClient;
use concord_proto::etcdserverpb::lease_client::LeaseClient;
use concord_proto::etcdserverpb::maintenance_client::MaintenanceClient;
use concord_proto::etcdserverpb::watch_client::WatchClient;
use concord_server::server::{Server, ServerConfig};
use concord_testkit::{eventually, free_port};
use tonic::transport::Channel;

struct Cluster {
    servers: Vec<Option<Server>>,
    configs: Vec<ServerConfig>,
    _dir: tempfile::TempDir,
}

impl Cluster {
    async fn start(n: usize) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let ports: Vec<(u16, u16)> = (0..n).map(|_| (free_port(), free_port())).collect();
        let initial: Vec<(String, Vec<String>)> = ports
            .iter()
            .enumerate()
            .map(|(i, (_, p))| (format!("n{i}"), vec![format!("http://127.0.0.1:{p}")]))
            .collect();
        let mut configs = Vec::new();
        for (i, (c, p)) in ports.iter().enumerate() {
            let mut cfg = ServerConfig::new(format!("n{i}"));
            cfg.data_dir = dir.path().join(format!("n{i}"));
            cfg.listen_client_urls = vec![format!("http://127.0.0.1:{c}")];
            cfg.listen_peer_urls = vec![format!("http://127.0.0.1:{p}")];
            cfg.initial_cluster = initial.clone();
            cfg.heartbeat_interval = Duration::from_millis(50);
            cfg.election_timeout = Duration::from_millis(500);
            configs.push(cfg);
        }
        let mut servers = Vec::new();
        for cfg in &configs {
            servers.push(Some(Server::start(cfg.clone()).await.unwrap()));
        }
        let c = Cluster {
            servers,
            configs,
            _dir: dir,
        };
        c.wait_leader().await;
        c
    }

    async fn wait_leader(&self) {
        eventually(
            "every server to know a leader",
            Duration::from_secs(10),
            || async {
                self.servers
                    .iter()
                    .flatten()
                    .all(|s| s.node().is_some_and(|n| n.status().leader.is_some()))
                    .then_some(())
            },
        )
        .await
    }

    async fn channel(&self, i: usize) -> Channel {
        let url = self.configs[i].listen_client_urls[0].clone();
        Channel::from_shared(url).unwrap().connect().await.unwrap()
    }

    async fn stop(mut self) {
        for s in self.servers.iter_mut() {
            if let Some(s) = s.take() {
                s.shutdown().await.unwrap();
            }
        }
    }
}

fn put(k: &str, v: &str) -> pb::PutRequest {
    pb::PutRequest {
        key: k.into(),
        value: v.into(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kv_watch_and_status_over_grpc() {
    let c = Cluster::start(3).await;
    let mut kv = KvClient::new(c.channel(0).await);
    let r1 = kv.put(put("a", "1")).await.unwrap().into_inner();
    let h = r1.header.unwrap();
    assert!(h.cluster_id != 0 && h.member_id != 0 && h.raft_term > 0);
    let rev1 = h.revision;
    let r2 = kv
        .put(pb::PutRequest {
            prev_kv: true,
            ..put("a", "2")
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r2.header.unwrap().revision, rev1 + 1);
    assert_eq!(r2.prev_kv.unwrap().value, b"1");

    // A follower serves a linearizable read of the write just made.
    let mut kv1 = KvClient::new(c.channel(1).await);
    let got = kv1
        .range(pb::RangeRequest {
            key: b"a".to_vec(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.kvs[0].value, b"2");
    assert_eq!(got.kvs[0].version, 2);

    // Watch from the first revision sees both puts, in order.
    let mut w = WatchClient::new(c.channel(2).await);
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(pb::WatchRequest {
        request_union: Some(pb::watch_request::RequestUnion::CreateRequest(
            pb::WatchCreateRequest {
                key: b"a".to_vec(),
                start_revision: rev1,
                ..Default::default()
            },
        )),
    })
    .await
    .unwrap();
    let mut stream = w
        .watch(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let created = stream.message().await.unwrap().unwrap();
    assert!(created.created);
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let m = tokio::time::timeout(Duration::from_secs(5), stream.message())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        seen.extend(m.events.into_iter().map(|e| e.kv.unwrap().mod_revision));
    }
    assert_eq!(seen, vec![rev1, rev1 + 1]);

    // Oversize and empty keys are refused with etcd's strings; the node keeps serving.
    let big = "x".repeat(2 << 20);
    let e = kv.put(put("big", &big)).await.unwrap_err();
    assert!(e.message().contains("request is too large"), "{e:?}");
    let e = kv.put(put("", "v")).await.unwrap_err();
    assert!(e.message().contains("key is not provided"), "{e:?}");
    kv.put(put("after", "ok")).await.unwrap();

    // Compaction: older revisions are refused afterwards.
    kv.compact(pb::CompactionRequest {
        revision: rev1 + 1,
        physical: false,
    })
    .await
    .unwrap();
    let e = kv
        .range(pb::RangeRequest {
            key: b"a".to_vec(),
            revision: rev1,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(e.message().contains("required revision has been compacted"));

    let mut m = MaintenanceClient::new(c.channel(1).await);
    let st = m.status(pb::StatusRequest {}).await.unwrap().into_inner();
    assert!(st.leader != 0);
    assert!(st.raft_index >= st.raft_applied_index.min(st.raft_index));
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_expiry_revokes_keys() {
    let c = Cluster::start(1).await;
    let mut lease = LeaseClient::new(c.channel(0).await);
    let g = lease
        .lease_grant(pb::LeaseGrantRequest { ttl: 1, id: 0 })
        .await
        .unwrap()
        .into_inner();
    assert!(g.id > 0);
    assert!(g.ttl >= 1);
    let mut kv = KvClient::new(c.channel(0).await);
    kv.put(pb::PutRequest {
        lease: g.id,
        ..put("leased", "v")
    })
    .await
    .unwrap();
    let get = || pb::RangeRequest {
        key: b"leased".to_vec(),
        ..Default::default()
    };
    assert_eq!(kv.range(get()).await.unwrap().into_inner().count, 1);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(g.ttl as u64 + 5);
    loop {
        if kv.range(get()).await.unwrap().into_inner().count == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "lease never expired"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ttl = lease
        .lease_time_to_live(pb::LeaseTimeToLiveRequest {
            id: g.id,
            keys: true,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ttl.ttl, -1);
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locks_exclude_and_hand_out_increasing_fencing_tokens() {
    use concord_proto::v3electionpb as el;
    use concord_proto::v3electionpb::election_client::ElectionClient;
    use concord_proto::v3lockpb as lk;
    use concord_proto::v3lockpb::lock_client::LockClient;
    let c = Cluster::start(1).await;
    let lease = LeaseClient::new(c.channel(0).await);
    let grant = || {
        let mut lease = lease.clone();
        async move {
            lease
                .lease_grant(pb::LeaseGrantRequest { ttl: 30, id: 0 })
                .await
                .unwrap()
                .into_inner()
                .id
        }
    };
    let (la, lb) = (grant().await, grant().await);
    let mut lock = LockClient::new(c.channel(0).await);
    let a = lock
        .lock(lk::LockRequest {
            name: b"job".to_vec(),
            lease: la,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(a.key, format!("job/{la:x}").into_bytes());
    let token_a = a.header.unwrap().revision;
    // B waits while A holds the lock.
    let mut lock_b = lock.clone();
    let waiting = tokio::spawn(async move {
        lock_b
            .lock(lk::LockRequest {
                name: b"job".to_vec(),
                lease: lb,
            })
            .await
            .map(|r| r.into_inner())
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!waiting.is_finished(), "B got the lock while A held it");
    lock.unlock(lk::UnlockRequest { key: a.key }).await.unwrap();
    let b = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(
        b.header.unwrap().revision > token_a,
        "fencing token must grow"
    );

    // Election: the first campaigner leads; proclaim updates the value; resign hands over.
    let mut e = ElectionClient::new(c.channel(0).await);
    let lc = grant().await;
    let led = e
        .campaign(el::CampaignRequest {
            name: b"svc".to_vec(),
            lease: lc,
            value: b"v1".to_vec(),
        })
        .await
        .unwrap()
        .into_inner()
        .leader
        .unwrap();
    e.proclaim(el::ProclaimRequest {
        leader: Some(led.clone()),
        value: b"v2".to_vec(),
    })
    .await
    .unwrap();
    let now = e
        .leader(el::LeaderRequest {
            name: b"svc".to_vec(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(now.kv.unwrap().value, b"v2");
    e.resign(el::ResignRequest {
        leader: Some(led.clone()),
    })
    .await
    .unwrap();
    let err = e
        .proclaim(el::ProclaimRequest {
            leader: Some(led),
            value: b"v3".to_vec(),
        })
        .await
        .unwrap_err();
    assert!(err.message().contains("not leader"));
    c.stop().await;
}

/// Sends one HTTP/1.1 request and returns the status code and body.
async fn http(port: u16, method: &str, path: &str, body: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    let status = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out.split("\r\n\r\n").nth(1).unwrap_or_default().to_string();
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_gateway_and_http_routes() {
    let c = Cluster::start(1).await;
    let port: u16 = c.configs[0].listen_client_urls[0]
        .rsplit(':')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    // key "foo" = Zm9v, value "bar" = YmFy
    let (code, body) = http(
        port,
        "POST",
        "/v3/kv/put",
        r#"{"key":"Zm9v","value":"YmFy"}"#,
    )
    .await;
    assert_eq!(code, 200, "{body}");
    let (code, body) = http(port, "POST", "/v3/kv/range", r#"{"key":"Zm9v"}"#).await;
    assert_eq!(code, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["kvs"][0]["value"], "YmFy");
    assert_eq!(v["count"], "1");
    let (code, body) = http(port, "POST", "/v3/kv/put", r#"{"key": nope"#).await;
    assert_eq!(code, 400, "{body}");
    let (code, body) = http(port, "POST", "/v3/kv/put", r#"{"key":"","value":"YmFy"}"#).await;
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("key is not provided"));
    let (code, _) = http(port, "GET", "/no/such/path", "").await;
    assert_eq!(code, 404);
    let (code, body) = http(port, "GET", "/health", "").await;
    assert_eq!(code, 200);
    assert!(body.contains(r#""health":"true""#));
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_save_then_restore_into_a_new_cluster() {
    use concord_server::server::restore;
    let c = Cluster::start(1).await;
    let mut kv = KvClient::new(c.channel(0).await);
    for i in 0..50 {
        kv.put(put(&format!("k{i:02}"), &format!("v{i}")))
            .await
            .unwrap();
    }
    let mut m = MaintenanceClient::new(c.channel(0).await);
    let mut fetch = async |format: Option<&'static str>| {
        let mut req = tonic::Request::new(pb::SnapshotRequest {});
        if let Some(f) = format {
            req.metadata_mut().insert(
                concord_proto::SNAPSHOT_FORMAT_KEY,
                tonic::metadata::MetadataValue::from_static(f),
            );
        }
        let mut stream = m.snapshot(req).await.unwrap().into_inner();
        let mut blob = Vec::new();
        while let Some(r) = stream.message().await.unwrap() {
            blob.extend_from_slice(&r.blob);
        }
        blob
    };
    let blob = fetch(None).await;
    let native = fetch(Some("concord")).await;
    c.stop().await;
    let dir = tempfile::tempdir().unwrap();
    // etcd's stream shape, which etcdctl checks: padded to 512 bytes plus a SHA-256.
    for (name, blob) in [("snap.db", &blob), ("native.snap", &native)] {
        assert_eq!(blob.len() % 512, 32);
        std::fs::write(dir.path().join(name), blob).unwrap();
    }
    let file = dir.path().join("snap.db");
    // By default an etcd snapshot (what etcdctl reads), on request Concord's own image;
    // both restore.
    let info = restore::snapshot_status(&file).unwrap();
    assert!(matches!(info, restore::SnapshotInfo::Etcd(_)), "{info:?}");
    assert!(info.revision() >= 51);
    let native_file = dir.path().join("native.snap");
    let native_info = restore::snapshot_status(&native_file).unwrap();
    assert!(matches!(native_info, restore::SnapshotInfo::Concord { .. }));
    assert_eq!(native_info.revision(), info.revision());
    let restored = restore::restore_snapshot(&native_file, &dir.path().join("n")).unwrap();
    assert_eq!(restored.revision, info.revision());

    // Damaged copies are refused, and nothing is created.
    for (name, blob) in [("snap.db", &blob), ("native.snap", &native)] {
        let mut bad = blob.clone();
        let mid = bad.len() / 2;
        bad[mid] ^= 0x40;
        let bad_file = dir.path().join(format!("bad-{name}"));
        std::fs::write(&bad_file, &bad).unwrap();
        let to = dir.path().join(format!("bad-data-{name}"));
        assert!(restore::restore_snapshot(&bad_file, &to).is_err());
        assert!(!to.exists());
    }

    let data = dir.path().join("restored");
    restore::restore_snapshot(&file, &data).unwrap();
    assert!(
        restore::restore_snapshot(&file, &data).is_err(),
        "non-empty dir refused"
    );
    let (cp, pp) = (free_port(), free_port());
    let mut cfg = ServerConfig::new("r1");
    cfg.data_dir = data;
    cfg.listen_client_urls = vec![format!("http://127.0.0.1:{cp}")];
    cfg.listen_peer_urls = vec![format!("http://127.0.0.1:{pp}")];
    cfg.heartbeat_interval = Duration::from_millis(50);
    cfg.election_timeout = Duration::from_millis(500);
    let s = Server::start(cfg).await.unwrap();
    eventually(
        "the restored member to lead",
        Duration::from_secs(10),
        || async { s.node().and_then(|n| n.status().leader).map(|_| ()) },
    )
    .await;
    let ch = Channel::from_shared(format!("http://127.0.0.1:{cp}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut kv = KvClient::new(ch);
    let got = kv
        .range(pb::RangeRequest {
            key: b"k".to_vec(),
            range_end: b"l".to_vec(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.count, 50);
    assert_eq!(got.kvs[49].value, b"v49");
    // Revisions continue from the snapshot's.
    let r = kv.put(put("new", "x")).await.unwrap().into_inner();
    assert!(r.header.unwrap().revision > info.revision());
    s.shutdown().await.unwrap();
}
