//! Bad input on the client port gets an error, never a crash: garbage bytes, a broken HTTP/2
//! connection, undecodable gRPC messages, an unknown method, oversized messages, bad HTTP/1.1
//! bodies. Plus etcd's HTTP endpoints on the same port: /health, /version, /metrics, /ready.

mod common;

use std::time::Duration;

use common::metrics::MetricSample;
use common::{http_get, http_request, raw_exchange, Cluster, BIN};
use tonic::codegen::http::uri::PathAndQuery;

/// Asserts that node 0 still answers a put and a get.
async fn still_serves(cluster: &Cluster, what: &str) {
    let mut c = cluster.client(0).await;
    c.put("alive", what, None)
        .await
        .unwrap_or_else(|e| panic!("put after {what}: {e}"));
    let g = c.get("alive", None).await.expect("get");
    assert_eq!(g.kvs()[0].value(), what.as_bytes());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_bytes_and_broken_http2_do_not_hurt() {
    let cluster = Cluster::start(BIN, 1).await;
    let port = cluster.nodes[0].client_port;

    // Not HTTP at all.
    let _ = raw_exchange(port, b"\x00\x01\x02garbage\xff\xfe\r\n\r\n").await;
    still_serves(&cluster, "garbage").await;

    // HTTP/2 preface, then a frame header announcing 16 MiB of an unknown frame type.
    let mut h2 = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    h2.extend_from_slice(&[0xff, 0xff, 0xff, 0x42, 0x00, 0x00, 0x00, 0x00, 0x01]);
    h2.extend_from_slice(&[0xab; 64]);
    let _ = raw_exchange(port, &h2).await;
    still_serves(&cluster, "h2 garbage").await;

    // HTTP/2 preface with a SETTINGS frame of invalid length (must be a multiple of 6).
    let mut h2 = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    h2.extend_from_slice(&[0x00, 0x00, 0x05, 0x04, 0x00, 0x00, 0x00, 0x00, 0x00]);
    h2.extend_from_slice(&[1, 2, 3, 4, 5]);
    let _ = raw_exchange(port, &h2).await;
    still_serves(&cluster, "bad settings").await;

    // A connection opened and closed without a byte, many times.
    for _ in 0..50 {
        let _ = tokio::net::TcpStream::connect(("127.0.0.1", port)).await;
    }
    still_serves(&cluster, "empty connections").await;
}

/// A message whose field 1 is a fixed64, where every etcd request has bytes/int64 fields:
/// the server cannot decode it as a PutRequest.
#[derive(Clone, PartialEq, prost::Message)]
struct NotAPutRequest {
    #[prost(fixed64, tag = "1")]
    a: u64,
    #[prost(fixed32, tag = "2")]
    b: u32,
}

/// Empty message (for the unknown-method call).
#[derive(Clone, PartialEq, prost::Message)]
struct Empty {}

async fn raw_unary(
    port: u16,
    path: &'static str,
    msg: NotAPutRequest,
) -> Result<Empty, tonic::Status> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
        .expect("endpoint")
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(5))
        .connect()
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready()
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let codec: tonic_prost::ProstCodec<NotAPutRequest, Empty> = tonic_prost::ProstCodec::default();
    grpc.unary(
        tonic::Request::new(msg),
        PathAndQuery::from_static(path),
        codec,
    )
    .await
    .map(tonic::Response::into_inner)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecodable_grpc_and_unknown_methods_get_status_errors() {
    let cluster = Cluster::start(BIN, 1).await;
    let port = cluster.nodes[0].client_port;

    let r = raw_unary(
        port,
        "/etcdserverpb.KV/Put",
        NotAPutRequest { a: u64::MAX, b: 7 },
    )
    .await;
    let status = r.expect_err("an undecodable PutRequest must fail");
    eprintln!("undecodable put: {status:?}");
    assert!(
        matches!(
            status.code(),
            tonic::Code::InvalidArgument | tonic::Code::Internal
        ),
        "undecodable message: {status:?}"
    );
    still_serves(&cluster, "undecodable put").await;

    let status = raw_unary(
        port,
        "/etcdserverpb.KV/NoSuchMethod",
        NotAPutRequest::default(),
    )
    .await
    .expect_err("unknown method");
    assert_eq!(status.code(), tonic::Code::Unimplemented, "{status:?}");
    // Paths naming no service, or a service and no method.
    for path in [
        "/no.such.Service/Call",
        "/",
        "//x",
        "/etcdserverpb.KV",
        "/etcdserverpb.KV/",
    ] {
        let status = raw_unary(port, path, NotAPutRequest::default())
            .await
            .expect_err("unknown service");
        assert_eq!(
            status.code(),
            tonic::Code::Unimplemented,
            "{path}: {status:?}"
        );
    }
    still_serves(&cluster, "unknown methods").await;
    // Made-up paths add no series to /metrics (etcd's interceptors never see them).
    let r = http_get(port, "/metrics").await.expect("/metrics");
    let made_up: Vec<_> = scrape(&r.text())
        .into_iter()
        .filter(|s| s.family.starts_with("grpc_server_"))
        .filter(|s| {
            s.has(&[("grpc_service", "no.such.Service")])
                || s.has(&[("grpc_method", "NoSuchMethod")])
                || s.has(&[("grpc_method", "")])
        })
        .collect();
    assert!(made_up.is_empty(), "series of made-up paths: {made_up:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_grpc_message_is_refused_and_node_survives() {
    let cluster = Cluster::start(BIN, 1).await;
    let mut c = cluster.client(0).await;
    // Default --max-request-bytes is 1.5 MiB; 8 MiB is far above it and above gRPC limits.
    let huge = vec![b'h'; 8 * 1024 * 1024];
    let e = c
        .put("huge", huge, None)
        .await
        .expect_err("an 8 MiB put must be refused");
    eprintln!("8 MiB put: {}", common::err_text(&e));
    assert!(c.get("huge", None).await.unwrap().kvs().is_empty());
    still_serves(&cluster, "huge message").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_http1_requests_get_4xx() {
    let cluster = Cluster::start(BIN, 1).await;
    let port = cluster.nodes[0].client_port;

    // A body that claims more bytes than it sends, then the connection closes.
    let _ = raw_exchange(
        port,
        b"POST /v3/kv/range HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{\"key\":",
    )
    .await;
    // A nonsense request line.
    let r = raw_exchange(port, b"FLY /health HTTP/9.9\r\n\r\n").await;
    if let Ok(bytes) = r {
        if let Ok(resp) = common::parse_http_response(&bytes) {
            assert!(
                resp.status >= 400,
                "nonsense request answered {}",
                resp.status
            );
        }
    }
    // Unknown path.
    let r = http_get(port, "/no/such/path").await.expect("HTTP answer");
    assert_eq!(r.status, 404);
    still_serves(&cluster, "bad http").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_gateway_rejects_malformed_body_with_400() {
    let cluster = Cluster::start(BIN, 1).await;
    let port = cluster.nodes[0].client_port;
    // etcd's grpc-gateway (/v3/...) answers a malformed JSON body with 400 and a JSON error.
    let r = http_request(
        port,
        "POST",
        "/v3/kv/put",
        Some("application/json"),
        b"{\"key\": not json",
    )
    .await
    .expect("HTTP answer");
    assert!(
        (400..500).contains(&r.status),
        "malformed JSON body: status {} headers {:?} body {}",
        r.status,
        r.headers,
        r.text()
    );
    still_serves(&cluster, "bad json").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_health_version_metrics_ready() {
    let cluster = Cluster::start(BIN, 1).await;
    let port = cluster.nodes[0].client_port;

    let r = http_get(port, "/health").await.expect("/health");
    assert_eq!(r.status, 200, "/health: {}", r.text());
    let v: serde_json::Value = serde_json::from_slice(&r.body)
        .unwrap_or_else(|e| panic!("/health is not JSON ({e}): {}", r.text()));
    assert_eq!(v["health"], "true", "etcd's /health JSON: {v}");

    let r = http_get(port, "/version").await.expect("/version");
    assert_eq!(r.status, 200);
    let v: serde_json::Value = serde_json::from_slice(&r.body)
        .unwrap_or_else(|e| panic!("/version is not JSON ({e}): {}", r.text()));
    assert!(v["etcdserver"].is_string(), "etcdserver field: {v}");
    assert!(v["etcdcluster"].is_string(), "etcdcluster field: {v}");

    // One write, so the driver's telemetry has something to count.
    let mut client = cluster.client(0).await;
    client.put("metrics-key", "v", None).await.expect("put");
    let r = http_get(port, "/metrics").await.expect("/metrics");
    assert_eq!(r.status, 200);
    let ct = r.header("content-type").unwrap_or_default().to_string();
    assert!(
        ct.starts_with("text/plain"),
        "Prometheus text content type, got {ct:?}"
    );
    let first = scrape(&r.text());
    // etcd's names, with etcd's types, so its dashboards and alerts work unchanged.
    for (name, kind) in [
        ("etcd_server_has_leader", "gauge"),
        ("etcd_server_is_leader", "gauge"),
        ("etcd_server_leader_changes_seen_total", "counter"),
        ("etcd_server_proposals_committed_total", "gauge"),
        ("etcd_server_proposals_applied_total", "gauge"),
        ("etcd_server_proposals_pending", "gauge"),
        ("etcd_server_proposals_failed_total", "counter"),
        ("etcd_disk_wal_fsync_duration_seconds", "histogram"),
        ("etcd_disk_backend_commit_duration_seconds", "histogram"),
        ("etcd_mvcc_db_total_size_in_bytes", "gauge"),
        ("etcd_mvcc_db_total_size_in_use_in_bytes", "gauge"),
        ("etcd_debugging_mvcc_keys_total", "gauge"),
        ("etcd_network_client_grpc_received_bytes_total", "counter"),
        ("etcd_network_client_grpc_sent_bytes_total", "counter"),
        ("grpc_server_started_total", "counter"),
        ("grpc_server_handled_total", "counter"),
        ("grpc_server_handling_seconds", "histogram"),
        ("process_cpu_seconds_total", "counter"),
        ("process_resident_memory_bytes", "gauge"),
        ("process_open_fds", "gauge"),
        ("concord_raft_proposals_accepted_total", "counter"),
        ("concord_wal_fsyncs_total", "counter"),
    ] {
        let found = first.iter().find(|s| s.family == name);
        assert_eq!(
            found.map(|s| s.kind.as_str()),
            Some(kind),
            "{name} in /metrics"
        );
    }
    let value = |scrape: &[MetricSample], name: &str, labels: &[(&str, &str)]| {
        scrape
            .iter()
            .find(|s| s.family == name && s.has(labels))
            .map(|s| s.value)
            .unwrap_or_else(|| panic!("{name} {labels:?} missing from /metrics"))
    };
    // The Raft driver's telemetry hooks and the gRPC layer reach /metrics: the put is a
    // handled etcdserverpb.KV/Put with code OK.
    for name in [
        "etcd_server_leader_changes_seen_total",
        "etcd_server_has_leader",
        "etcd_server_is_leader",
        "etcd_debugging_mvcc_keys_total",
        "concord_raft_proposals_accepted_total",
        "concord_raft_applied_entries_total",
        "etcd_disk_wal_fsync_duration_seconds",
        "concord_wal_writes_total",
        "concord_wal_fsyncs_total",
        "etcd_network_client_grpc_received_bytes_total",
        "etcd_network_client_grpc_sent_bytes_total",
    ] {
        assert!(value(&first, name, &[]) >= 1.0, "{name}");
    }
    let put = [
        ("grpc_service", "etcdserverpb.KV"),
        ("grpc_method", "Put"),
        ("grpc_type", "unary"),
    ];
    let ok = [put[0], put[1], put[2], ("grpc_code", "OK")];
    assert_eq!(value(&first, "grpc_server_started_total", &put), 1.0);
    assert_eq!(value(&first, "grpc_server_handled_total", &ok), 1.0);
    assert_eq!(value(&first, "grpc_server_handling_seconds", &put), 1.0);
    // A refused request is counted with its code.
    let refused = client.put(Vec::<u8>::new(), "v", None).await;
    assert!(refused.is_err(), "an empty key is refused: {refused:?}");
    // Counters never go back between scrapes.
    let r = http_get(port, "/metrics").await.expect("/metrics");
    let second = scrape(&r.text());
    for s in first.iter().filter(|s| s.kind == "counter") {
        let now = second
            .iter()
            .find(|t| t.family == s.family && t.labels == s.labels)
            .map(|t| t.value);
        assert!(
            now.is_some_and(|now| now >= s.value),
            "{} {:?} went from {} to {now:?}",
            s.family,
            s.labels,
            s.value
        );
    }
    let invalid = [put[0], put[1], put[2], ("grpc_code", "InvalidArgument")];
    assert_eq!(value(&second, "grpc_server_handled_total", &invalid), 1.0);
    assert_eq!(value(&second, "grpc_server_started_total", &put), 2.0);

    for path in ["/ready", "/readyz", "/livez"] {
        let r = http_get(port, path).await.expect(path);
        assert_eq!(r.status, 200, "{path}: {}", r.text());
    }

    // The log filter changes at run time; a bad one is refused and the old one kept.
    let level = |body: &'static str| async move {
        let r = http_request(
            port,
            "PUT",
            "/v1/log-level",
            Some("text/plain"),
            body.as_bytes(),
        )
        .await
        .expect("PUT /v1/log-level");
        (r.status, r.text())
    };
    let (status, text) = level("debug").await;
    assert_eq!(status, 200, "{text}");
    assert!(text.starts_with("debug,h2=warn"), "{text}");
    let (status, text) = level("=[").await;
    assert_eq!(status, 400, "{text}");
    let r = http_get(port, "/v1/log-level")
        .await
        .expect("GET /v1/log-level");
    assert!(r.text().starts_with("debug,h2=warn"), "{}", r.text());
    // Every log line names the member (text format: its first word).
    let log = std::fs::read_to_string(&cluster.nodes[0].log_path).expect("the log");
    let name = &cluster.nodes[0].name;
    // (The harness writes its own lines there too.)
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with("=== harness"))
        .collect();
    assert!(!lines.is_empty());
    assert!(
        lines.iter().all(|l| l.starts_with(&format!("{name} "))),
        "{log}"
    );
    assert!(
        log.contains("log filter changed through /v1/log-level"),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_server_on_the_same_data_dir_is_refused() {
    let cluster = Cluster::start(BIN, 1).await;
    let node = &cluster.nodes[0];
    let ports = common::free_ports(2);
    let client = format!("http://127.0.0.1:{}", ports[0]);
    let peer = format!("http://127.0.0.1:{}", ports[1]);
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_concord"))
        .args(["server", "--name", "intruder", "--data-dir"])
        .arg(&node.data_dir)
        .args(["--listen-client-urls", &client, "--listen-peer-urls", &peer])
        .args(["--initial-advertise-peer-urls", &peer])
        .args(["--initial-cluster", &format!("intruder={peer}")])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run concord");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the second server did not exit by itself");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().expect("stderr"), &mut stderr)
        .expect("read stderr");
    let out_ok = status.success();
    assert!(!out_ok, "second server started: {stderr}");
    assert!(
        stderr.contains("is in use by another concord server"),
        "{stderr}"
    );
    assert!(
        stderr.contains(&node.data_dir.display().to_string()),
        "{stderr}"
    );
    assert!(stderr.contains("pid "), "{stderr}");
    // The first server was not disturbed.
    still_serves(&cluster, "after an intruder").await;
    assert!(node.is_running());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_traffic_round_trips_and_read_index_rounds_are_measured() {
    let cluster = Cluster::start(BIN, 3).await;
    let mut client = cluster.client(0).await;
    let ids: Vec<String> = client
        .member_list()
        .await
        .expect("member list")
        .members()
        .iter()
        .map(|m| format!("{:x}", m.id()))
        .collect();
    assert_eq!(ids.len(), 3);
    for i in 0..10 {
        client.put(format!("k{i}"), "v", None).await.expect("put");
        client.get(format!("k{i}"), None).await.expect("get");
    }
    // Every member sees traffic both ways with each other member and has probed the
    // round trip of its streams (the first probe goes when a stream opens).
    for node in 0..3 {
        let port = cluster.nodes[node].client_port;
        let ids = ids.clone();
        common::eventually("peer metrics", common::WAIT, || {
            let ids = ids.clone();
            async move {
                let text = http_get(port, "/metrics").await.ok()?.text();
                let page = scrape(&text);
                let value = |name: &str, label: &str, id: &str| {
                    page.iter()
                        .find(|s| s.family == name && s.has(&[(label, id)]))
                        .map_or(0.0, |s| s.value)
                };
                // The two other members (a member has no series for itself).
                let measured = ids
                    .iter()
                    .filter(|id| {
                        value("etcd_network_peer_sent_bytes_total", "To", id) > 0.0
                            && value("etcd_network_peer_received_bytes_total", "From", id) > 0.0
                            && value("etcd_network_peer_round_trip_time_seconds", "To", id) >= 1.0
                            && value("concord_peer_stream_connects_total", "To", id) >= 1.0
                            && value("concord_peer_direct_link_up", "To", id) == 1.0
                            && page.iter().any(|s| {
                                s.family == "concord_peer_queued_batches" && s.has(&[("To", id)])
                            })
                    })
                    .count();
                (measured == 2).then_some(())
            }
        })
        .await;
    }
    // The gets at member 0 were linearizable: each ran (or shared) a ReadIndex round.
    let page = scrape(
        &http_get(cluster.nodes[0].client_port, "/metrics")
            .await
            .expect("/metrics")
            .text(),
    );
    let rounds = page
        .iter()
        .find(|s| s.family == "concord_raft_read_index_duration_seconds")
        .map(|s| (s.kind.clone(), s.value));
    assert!(
        rounds
            .as_ref()
            .is_some_and(|(kind, n)| kind == "histogram" && *n >= 1.0),
        "{rounds:?}"
    );
}

/// `/metrics` parsed by a Prometheus text-format parser (a malformed line fails it).
fn scrape(text: &str) -> Vec<MetricSample> {
    common::metrics::parse_metrics(text).unwrap_or_else(|e| panic!("{e}:\n{text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_without_a_quorum_is_live_but_not_ready_and_says_why() {
    let mut cluster = Cluster::start(BIN, 3).await;
    let leader = cluster.leader().await;
    let kept = (leader + 1) % 3;
    cluster.kill9(leader);
    cluster.kill9((leader + 2) % 3);
    let port = cluster.nodes[kept].client_port;
    common::eventually(
        "the lone member to lose its leader",
        common::WAIT,
        || async move {
            let r = http_get(port, "/ready").await.ok()?;
            (r.status == 503 && r.text() == "not ready: no leader\n").then_some(())
        },
    )
    .await;
    let live = http_get(port, "/livez").await.expect("/livez");
    assert_eq!((live.status, live.text().as_str()), (200, "ok\n"));
    let health = http_get(port, "/health").await.expect("/health");
    assert_eq!(health.status, 503);
    assert!(
        health.text().contains("RAFT NO LEADER"),
        "{}",
        health.text()
    );
}
