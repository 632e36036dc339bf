//! End to end: etcd's authentication and RBAC on a 3-member cluster, driven by the
//! independent `etcd-client` crate as an etcd user would: users and roles, permission
//! checks on KV, Txn and Watch, changes taking effect at once, token expiry and refresh,
//! bad input, and no secret in any log line or exported span.

mod common;

use std::time::Duration;

use common::otlp::receiver;
use common::{
    connect, err_text, parse_http_response, raw_exchange, Cluster, HttpResponse, BIN, WAIT,
};
use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, EventType, Permission, ProclaimOptions,
    ResignOptions, Txn, TxnOp, WatchOptions,
};

const ROOT_PW: &str = "root-secret-pw";
const ALICE_PW: &str = "alice-secret-pw";

async fn as_user(url: &str, user: &str, password: &str) -> Result<Client, etcd_client::Error> {
    Client::connect(
        [url],
        Some(
            ConnectOptions::new()
                .with_connect_timeout(Duration::from_secs(2))
                .with_timeout(Duration::from_secs(10))
                .with_user(user, password),
        ),
    )
    .await
}

/// root (with the root role), a role `reader` reading the prefix `/a/`, and `alice`
/// holding it; `/a/x` and `/b/x` exist; then auth is enabled.
async fn set_up(cluster: &Cluster) {
    let mut c = connect(&cluster.url(0), Some(Duration::from_secs(10)))
        .await
        .unwrap();
    c.user_add("root", ROOT_PW, None).await.unwrap();
    c.user_grant_role("root", "root").await.unwrap();
    c.role_add("reader").await.unwrap();
    c.role_grant_permission("reader", Permission::read("/a/").with_prefix())
        .await
        .unwrap();
    c.user_add("alice", ALICE_PW, None).await.unwrap();
    c.user_grant_role("alice", "reader").await.unwrap();
    c.put("/a/x", "1", None).await.unwrap();
    c.put("/b/x", "1", None).await.unwrap();
    c.auth_enable().await.unwrap();
}

/// `POST path` with a JSON body to the JSON gateway, with `token` as the `Authorization`
/// header when given.
async fn gateway(port: u16, path: &str, token: Option<&str>, body: &str) -> HttpResponse {
    let auth = token.map_or(String::new(), |t| format!("Authorization: {t}\r\n"));
    let raw = format!(
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n{auth}\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let answer = raw_exchange(port, raw.as_bytes()).await.unwrap();
    parse_http_response(&answer).unwrap()
}

fn denied<T: std::fmt::Debug>(r: Result<T, etcd_client::Error>) {
    let e = r.expect_err("should be refused");
    assert!(err_text(&e).contains("permission denied"), "{e:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_get_exactly_their_roles_permissions_and_changes_apply_at_once() {
    // Every request is traced, so the check below sees the spans of authentications and
    // of requests carrying a token.
    let (otlp_port, received) = receiver().await;
    let cluster = Cluster::builder(BIN, 3)
        .flag("--log-level", "debug")
        .flag("--otlp-endpoint", format!("http://127.0.0.1:{otlp_port}"))
        .flag("--otlp-sampling-ratio", 1)
        .start()
        .await;
    set_up(&cluster).await;

    // Without a token nothing is allowed.
    let mut anonymous = connect(&cluster.url(1), None).await.unwrap();
    let e = anonymous.get("/a/x", None).await.unwrap_err();
    assert!(err_text(&e).contains("user name is empty"), "{e:?}");

    // alice, on another member than the one that made the changes.
    let mut alice = as_user(&cluster.url(1), "alice", ALICE_PW).await.unwrap();
    let got = alice.get("/a/x", None).await.unwrap();
    assert_eq!(got.kvs()[0].value(), b"1");
    denied(alice.put("/a/x", "2", None).await);
    denied(alice.get("/b/x", None).await);
    denied(
        alice
            .get("/", Some(etcd_client::GetOptions::new().with_prefix()))
            .await,
    );
    denied(alice.delete("/a/x", None).await);
    // A Txn is checked in full: a compare or an operation outside /a/ refuses it all.
    let touches_b = Txn::new()
        .when([Compare::value("/a/x", CompareOp::Equal, "1")])
        .and_then([TxnOp::get("/b/x", None)]);
    denied(alice.txn(touches_b).await);
    let compares_b = Txn::new()
        .when([Compare::value("/b/x", CompareOp::Equal, "1")])
        .and_then([TxnOp::get("/a/x", None)]);
    denied(alice.txn(compares_b).await);
    let writes_in_else = Txn::new()
        .when([Compare::value("/a/x", CompareOp::Equal, "1")])
        .and_then([TxnOp::get("/a/x", None)])
        .or_else([TxnOp::put("/a/x", "3", None)]);
    denied(alice.txn(writes_in_else).await);
    let only_a = Txn::new()
        .when([Compare::value("/a/x", CompareOp::Equal, "1")])
        .and_then([TxnOp::get("/a/x", None)]);
    assert!(alice.txn(only_a).await.unwrap().succeeded());
    // Watching /b/ is cancelled at creation; /a/ works.
    let mut stream = alice
        .watch("/b/", Some(WatchOptions::new().with_prefix()))
        .await
        .unwrap();
    let first = stream.message().await.unwrap().unwrap();
    assert!(first.canceled(), "{first:?}");
    assert!(first.cancel_reason().contains("permission denied"));
    let mut stream = alice
        .watch("/a/", Some(WatchOptions::new().with_prefix()))
        .await
        .unwrap();
    let mut root = as_user(&cluster.url(1), "root", ROOT_PW).await.unwrap();
    root.put("/a/y", "new", None).await.unwrap();
    let event = loop {
        let m = tokio::time::timeout(Duration::from_secs(10), stream.message())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        if let Some(e) = m.events().first() {
            break e.clone();
        }
    };
    assert_eq!(event.event_type(), EventType::Put);
    // The lock and election services check the caller, and their writes pass the second
    // check at apply (they carry the auth revision of the first).
    denied(alice.lock("/a/job", None).await);
    let held = root.lock("/a/job", None).await.unwrap();
    root.unlock(held.key()).await.unwrap();
    let lease = root.lease_grant(30, None).await.unwrap().id();
    let won = root.campaign("/a/el", "v1", lease).await.unwrap();
    let leader = won.leader().expect("a leader key").clone();
    root.proclaim(
        "v2",
        Some(ProclaimOptions::new().with_leader(leader.clone())),
    )
    .await
    .unwrap();
    let now = root.leader("/a/el").await.unwrap();
    assert_eq!(now.kv().map(|kv| kv.value()), Some(&b"v2"[..]));
    root.resign(Some(ResignOptions::new().with_leader(leader)))
        .await
        .unwrap();
    // The JSON gateway takes the token from `Authorization`, as etcd's.
    let port = cluster.nodes[2].client_port;
    let login = format!(r#"{{"name": "alice", "password": "{ALICE_PW}"}}"#);
    let r = gateway(port, "/v3/auth/authenticate", None, &login).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    let web_token = v["token"].as_str().expect("a token").to_string();
    let a_x = r#"{"key": "L2EveA=="}"#; // "/a/x"
    let r = gateway(port, "/v3/kv/range", Some(&web_token), a_x).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.text().contains(r#""count":"1""#), "{}", r.text());
    let r = gateway(port, "/v3/kv/range", None, a_x).await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("user name is empty"), "{}", r.text());
    let r = gateway(port, "/v3/kv/range", Some("garbage"), a_x).await;
    assert_eq!(r.status, 401, "{}", r.text());
    let put = r#"{"key": "L2EveA==", "value": "Mg=="}"#;
    let r = gateway(port, "/v3/kv/put", Some(&web_token), put).await;
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(r.text().contains("permission denied"), "{}", r.text());
    let wrong = r#"{"name": "alice", "password": "wrong"}"#;
    let r = gateway(port, "/v3/auth/authenticate", None, wrong).await;
    assert!(r.text().contains("authentication failed"), "{}", r.text());
    // Management needs root.
    denied(alice.user_list().await);
    denied(alice.role_add("mine").await);

    // Revoking the role stops alice at once on the member that made the change.
    root.user_revoke_role("alice", "reader").await.unwrap();
    denied(alice.get("/a/x", None).await);
    root.user_grant_role("alice", "reader").await.unwrap();
    alice.get("/a/x", None).await.unwrap();
    // Deleting the user voids its token.
    root.user_delete("alice").await.unwrap();
    let e = alice.get("/a/x", None).await.unwrap_err();
    assert!(err_text(&e).contains("invalid auth token"), "{e:?}");
    // Wrong and unknown passwords.
    let e = as_user(&cluster.url(2), "root", "wrong")
        .await
        .err()
        .unwrap();
    assert!(err_text(&e).contains("authentication failed"), "{e:?}");
    let e = as_user(&cluster.url(2), "alice", ALICE_PW)
        .await
        .err()
        .unwrap();
    assert!(err_text(&e).contains("authentication failed"), "{e:?}");
    // Oversize names are refused with a clear error.
    let e = root
        .user_add("x".repeat(10_000), "pw", None)
        .await
        .unwrap_err();
    assert!(err_text(&e).contains("longer than"), "{e:?}");

    // Auth off again: everything is open.
    root.auth_disable().await.unwrap();
    anonymous.put("/b/x", "2", None).await.unwrap();

    // No password and no token in any log line (debug level included) or exported span.
    let token = {
        let mut c = connect(&cluster.url(0), None).await.unwrap();
        c.auth_enable().await.unwrap();
        let mut r = as_user(&cluster.url(0), "root", ROOT_PW).await.unwrap();
        let t = r
            .auth_client()
            .authenticate("root".into(), ROOT_PW.into())
            .await
            .unwrap()
            .token()
            .to_string();
        r.get("/a/x", None).await.unwrap();
        r.auth_disable().await.unwrap();
        t
    };
    for node in &cluster.nodes {
        let log = std::fs::read_to_string(&node.log_path).unwrap();
        for secret in [ROOT_PW, ALICE_PW, token.as_str(), web_token.as_str()] {
            assert!(!log.contains(secret), "{} logs a secret", node.name);
        }
    }
    // The exporter sends in batches (every 5 s): wait for the spans of the last
    // authentication and of the token-carrying read that followed it.
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let names: Vec<String> = received
            .lock()
            .unwrap()
            .spans
            .iter()
            .map(|s| s.name.clone())
            .collect();
        let count = |n: &str| names.iter().filter(|s| s.as_str() == n).count();
        if count("etcdserverpb.Auth/Authenticate") >= 4
            && count("etcdserverpb.Auth/AuthDisable") >= 2
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "spans missing: {names:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let r = received.lock().unwrap();
    for body in &r.bodies {
        for secret in [ROOT_PW, ALICE_PW, token.as_str(), web_token.as_str()] {
            assert!(
                !body.windows(secret.len()).any(|w| w == secret.as_bytes()),
                "a span holds a secret"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_tokens_are_refused_and_a_refreshing_client_carries_on() {
    let cluster = Cluster::builder(BIN, 3)
        .flag("--auth-token-ttl", 1)
        .start()
        .await;
    set_up(&cluster).await;
    let mut plain = as_user(&cluster.url(0), "root", ROOT_PW).await.unwrap();
    plain.get("/a/x", None).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let e = plain.get("/a/x", None).await.unwrap_err();
    assert!(err_text(&e).contains("invalid auth token"), "{e:?}");

    let mut refreshing = Client::connect(
        [cluster.url(1)],
        Some(
            ConnectOptions::new()
                .with_user("root", ROOT_PW)
                .with_auto_token_refresh(true),
        ),
    )
    .await
    .unwrap();
    refreshing.get("/a/x", None).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    refreshing.get("/a/x", None).await.unwrap();
    refreshing.auth_disable().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_tokens_are_refused_with_etcds_error() {
    use concord_proto::etcdserverpb::kv_client::KvClient;
    use concord_proto::etcdserverpb::RangeRequest;
    let cluster = Cluster::builder(BIN, 1).start().await;
    set_up(&cluster).await;
    let channel = tonic::transport::Endpoint::from_shared(cluster.url(0))
        .unwrap()
        .connect()
        .await
        .unwrap();
    // (A token of 100 KB is refused by HTTP/2 itself: the header list is too large.)
    for garbage in ["garbage", "a.b", "", "x.y.z", &"A".repeat(100_000)] {
        let mut request = tonic::Request::new(RangeRequest {
            key: b"/a/x".to_vec(),
            ..Default::default()
        });
        if let Ok(v) = garbage.parse() {
            request.metadata_mut().insert("token", v);
        }
        let status = KvClient::new(channel.clone())
            .range(request)
            .await
            .unwrap_err();
        assert!(
            matches!(
                status.code(),
                tonic::Code::Unauthenticated
                    | tonic::Code::InvalidArgument
                    | tonic::Code::ResourceExhausted
            ),
            "{status:?}"
        );
    }
    // The member is fine.
    let mut root = as_user(&cluster.url(0), "root", ROOT_PW).await.unwrap();
    root.get("/a/x", None).await.unwrap();
}
