//! End to end: `concord-client` (endpoints, breakers, retries, leader discovery, definite
//! and indefinite errors) against a real 3-node cluster of `concord server` processes.

mod common;

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use common::{eventually, free_port, Cluster, BIN, WAIT};
use concord_client::{Client, ClientError, ClientOptions, Idempotence};
use concord_core::breaker::{BreakerConfig, BreakerState, TripPolicy};
use concord_proto::etcdserverpb::kv_client::KvClient;
use concord_proto::etcdserverpb::{PutRequest, RangeRequest};

fn put(key: &str, value: &str) -> PutRequest {
    PutRequest {
        key: key.into(),
        value: value.into(),
        ..Default::default()
    }
}

fn range(key: &str) -> RangeRequest {
    RangeRequest {
        key: key.into(),
        ..Default::default()
    }
}

async fn get(client: &Client, key: &str) -> Result<Option<Vec<u8>>, ClientError> {
    let r = client
        .call(Idempotence::Idempotent, |ch| async move {
            KvClient::new(ch).range(range(key)).await
        })
        .await?;
    Ok(r.kvs.into_iter().next().map(|kv| kv.value))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_skips_dead_endpoints_retries_reads_and_finds_the_leader() {
    let mut cluster = Cluster::start(BIN, 3).await;
    let dead = format!("127.0.0.1:{}", free_port());
    let mut endpoints = vec![dead.clone()];
    endpoints.extend((0..3).map(|i| cluster.url(i)));
    let options = ClientOptions {
        attempts: 6,
        // One failure opens an endpoint's breaker for the rest of the test.
        breaker: BreakerConfig {
            trip_policy: TripPolicy::ConsecutiveFailures(1),
            cool_down: Duration::from_secs(600),
            ..BreakerConfig::default()
        },
        ..ClientOptions::default()
    };
    // The dead endpoint comes first: connecting moves on to the next.
    let client = Client::connect(&endpoints, options).await.expect("connect");

    client
        .call(Idempotence::NotIdempotent, |ch| async move {
            KvClient::new(ch).put(put("k", "v1")).await
        })
        .await
        .expect("put");
    assert_eq!(get(&client, "k").await.unwrap(), Some(b"v1".to_vec()));

    // A refusal is definite and is not retried.
    let calls = AtomicU32::new(0);
    let err = client
        .call(Idempotence::Idempotent, |ch| {
            calls.fetch_add(1, Ordering::SeqCst);
            async move { KvClient::new(ch).put(put("", "x")).await }
        })
        .await
        .expect_err("an empty key is refused");
    assert!(err.is_definite(), "{err:?}");
    assert!(err.to_string().contains("key is not provided"), "{err}");
    assert_eq!(calls.load(Ordering::SeqCst), 1, "a refusal was retried");

    // The leader, as the cluster sees it.
    let leader = cluster.leader().await;
    let leader_id = cluster.member_id(leader).await;
    let (found, _channel) = client.leader().await.expect("leader");
    assert_eq!(found.get(), leader_id);

    // Kill node 0, where the calls land (the first live endpoint): reads keep working
    // through the others, and leader discovery names a live leader.
    cluster.kill9(0);
    for i in 0..10 {
        let got = get(&client, "k").await;
        assert_eq!(
            got.unwrap(),
            Some(b"v1".to_vec()),
            "read {i} after the kill"
        );
    }
    let live_leader = eventually("a live leader found by the client", WAIT, || async {
        let (id, _) = client.leader().await.ok()?;
        (id.get() != 0 && (leader != 0 || id.get() != leader_id)).then_some(id)
    })
    .await;
    if leader != 0 {
        assert_eq!(live_leader.get(), leader_id, "the leader did not change");
    }

    // The dead endpoint failed its dial and node 0 its calls: both breakers are open, the
    // others closed.
    let killed = cluster.url(0);
    for (ep, state) in client.breaker_states() {
        let open = matches!(state, BreakerState::Open { .. });
        assert_eq!(
            open,
            ep == dead || ep == killed,
            "breaker of {ep}: {state:?}"
        );
    }
}

#[tokio::test]
async fn bad_tls_settings_and_closed_ports_are_definite_errors() {
    let e = Client::new(
        ["https://127.0.0.1:2379"],
        ClientOptions {
            tls: concord_client::TlsSettings {
                ca_file: Some("/nonexistent/ca.pem".into()),
                ..Default::default()
            },
            ..ClientOptions::default()
        },
    )
    .unwrap_err();
    assert!(matches!(e, ClientError::Tls { .. }), "{e:?}");
    assert!(e.to_string().contains("/nonexistent/ca.pem"), "{e}");
    let e = Client::connect(
        [format!("127.0.0.1:{}", free_port())],
        ClientOptions {
            dial_timeout: Duration::from_millis(500),
            ..ClientOptions::default()
        },
    )
    .await
    .unwrap_err();
    assert!(e.is_definite(), "{e:?}");
}
