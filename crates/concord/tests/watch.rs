//! End-to-end tests of the Watch service: replay from a past revision, live events, prev_kv,
//! filters, cancel, compaction, and resuming a watch on another node across a leader kill -9.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Cluster, BIN, WAIT};
use etcd_client::{Client, EventType, WatchFilterType, WatchOptions, WatchResponse, WatchStream};

/// One received event, flattened.
#[derive(Debug, Clone, PartialEq)]
struct Ev {
    kind: EventType,
    key: String,
    value: String,
    rev: i64,
    prev: Option<String>,
}

fn flatten(resp: &WatchResponse) -> Vec<Ev> {
    resp.events()
        .iter()
        .map(|e| {
            let kv = e.kv().expect("event without kv");
            Ev {
                kind: e.event_type(),
                key: String::from_utf8_lossy(kv.key()).into_owned(),
                value: String::from_utf8_lossy(kv.value()).into_owned(),
                rev: kv.mod_revision(),
                prev: e
                    .prev_kv()
                    .map(|p| String::from_utf8_lossy(p.value()).into_owned()),
            }
        })
        .collect()
}

async fn next_msg(stream: &mut WatchStream, what: &str) -> WatchResponse {
    match tokio::time::timeout(Duration::from_secs(10), stream.message()).await {
        Ok(Ok(Some(m))) => m,
        Ok(Ok(None)) => panic!("{what}: watch stream ended"),
        Ok(Err(e)) => panic!("{what}: watch stream error: {e}"),
        Err(_) => panic!("{what}: no watch response within 10 s"),
    }
}

/// Reads until `n` events have arrived (asserting the first response is `created`).
async fn collect_events(stream: &mut WatchStream, n: usize) -> Vec<Ev> {
    let mut out = Vec::new();
    while out.len() < n {
        let m = next_msg(stream, &format!("waiting for event {}/{n}", out.len() + 1)).await;
        assert!(!m.canceled(), "watch canceled: {}", m.cancel_reason());
        out.extend(flatten(&m));
    }
    assert_eq!(out.len(), n, "more events than expected: {out:?}");
    out
}

async fn create_watch(c: &mut Client, key: &str, opts: WatchOptions) -> WatchStream {
    create_watch_id(c, key, opts).await.0
}

/// Creates a watch and returns the stream and the watch id from the `created` response.
async fn create_watch_id(c: &mut Client, key: &str, opts: WatchOptions) -> (WatchStream, i64) {
    let mut stream = c.watch(key, Some(opts)).await.expect("watch");
    let first = next_msg(&mut stream, "watch creation").await;
    assert!(
        first.created(),
        "first response must be `created`: {first:?}"
    );
    // A `created` response carries no events in etcd; they arrive afterwards.
    assert!(
        first.events().is_empty(),
        "created response carries no events"
    );
    let id = first.watch_id();
    (stream, id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_replays_history_in_order_then_streams_live() {
    let cluster = Cluster::start(BIN, 1).await;
    let mut c = cluster.client(0).await;
    let start = c
        .put("w/k0", "v0", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    let mut expected = vec![(EventType::Put, "w/k0".to_string(), start)];
    for i in 1..20 {
        let key = format!("w/k{}", i % 5);
        let r = if i % 7 == 0 {
            let d = c.delete(key.clone(), None).await.unwrap();
            if d.deleted() == 0 {
                continue;
            }
            expected.push((EventType::Delete, key, d.header().unwrap().revision()));
            continue;
        } else {
            c.put(key.clone(), format!("v{i}"), None).await.unwrap()
        };
        expected.push((EventType::Put, key, r.header().unwrap().revision()));
    }
    c.put("other", "not watched", None).await.unwrap();

    let mut wc = cluster.stream_client(0).await;
    let mut stream = create_watch(
        &mut wc,
        "w/",
        WatchOptions::new().with_prefix().with_start_revision(start),
    )
    .await;
    let got = collect_events(&mut stream, expected.len()).await;
    let got_view: Vec<(EventType, String, i64)> =
        got.iter().map(|e| (e.kind, e.key.clone(), e.rev)).collect();
    assert_eq!(
        got_view, expected,
        "every past event exactly once, in order"
    );
    for pair in got.windows(2) {
        assert!(pair[0].rev < pair[1].rev, "revisions increase: {pair:?}");
    }

    // Live events follow, still in order and without gaps.
    let mut live = Vec::new();
    for i in 0..10 {
        let r = c.put(format!("w/live{i}"), "x", None).await.unwrap();
        live.push(r.header().unwrap().revision());
    }
    let got = collect_events(&mut stream, 10).await;
    assert_eq!(got.iter().map(|e| e.rev).collect::<Vec<_>>(), live);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_prev_kv_filters_and_cancel() {
    let cluster = Cluster::start(BIN, 1).await;
    let mut c = cluster.client(0).await;
    let mut wc = cluster.stream_client(0).await;
    let mut stream = create_watch(&mut wc, "p", WatchOptions::new().with_prev_key()).await;
    c.put("p", "v1", None).await.unwrap();
    c.put("p", "v2", None).await.unwrap();
    c.delete("p", None).await.unwrap();
    let got = collect_events(&mut stream, 3).await;
    assert_eq!(got[0].kind, EventType::Put);
    assert_eq!(got[0].value, "v1");
    assert_eq!(got[0].prev, None, "no previous version of a new key");
    assert_eq!(got[1].prev.as_deref(), Some("v1"));
    assert_eq!(got[2].kind, EventType::Delete);
    assert_eq!(got[2].value, "", "a delete event's kv has no value");
    assert_eq!(got[2].prev.as_deref(), Some("v2"));

    // Filters: NOPUT leaves deletes only.
    let mut f = create_watch(
        &mut wc,
        "q",
        WatchOptions::new().with_filters([WatchFilterType::NoPut]),
    )
    .await;
    c.put("q", "1", None).await.unwrap();
    let del = c
        .delete("q", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    let got = collect_events(&mut f, 1).await;
    assert_eq!(got[0].kind, EventType::Delete);
    assert_eq!(got[0].rev, del);

    // Cancel: the server confirms with canceled = true for that watch id.
    let (mut s, id) = create_watch_id(&mut wc, "r", WatchOptions::new()).await;
    s.cancel(id).await.expect("send cancel");
    let m = next_msg(&mut s, "cancel confirmation").await;
    assert!(m.canceled(), "expected a canceled response, got {m:?}");
    assert_eq!(m.watch_id(), id);
    // No events for a canceled watch.
    c.put("r", "after cancel", None).await.unwrap();
    assert!(
        tokio::time::timeout(Duration::from_millis(500), s.message())
            .await
            .is_err(),
        "a canceled watch must not deliver events"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_on_compacted_revision_reports_compact_revision() {
    let cluster = Cluster::start(BIN, 1).await;
    let mut c = cluster.client(0).await;
    let first = c
        .put("cw", "1", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    for i in 2..=5 {
        c.put("cw", i.to_string(), None).await.unwrap();
    }
    let compact_at = first + 3;
    c.compact(compact_at, None).await.expect("compact");

    let mut wc = cluster.stream_client(0).await;
    let mut stream = wc
        .watch("cw", Some(WatchOptions::new().with_start_revision(first)))
        .await
        .expect("watch");
    // etcd sends `created`, then a response with compact_revision set and canceled = true.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        assert!(Instant::now() < deadline, "no compact_revision response");
        let m = next_msg(&mut stream, "compacted watch").await;
        assert!(
            m.events().is_empty(),
            "no events may be sent from a compacted revision"
        );
        if m.compact_revision() != 0 {
            assert_eq!(m.compact_revision(), compact_at);
            assert!(m.canceled(), "a compacted watch is canceled");
            break;
        }
        assert!(m.created(), "unexpected response {m:?}");
    }

    // From the compaction revision on, the watch works.
    let mut ok = create_watch(
        &mut wc,
        "cw",
        WatchOptions::new().with_start_revision(compact_at),
    )
    .await;
    let got = collect_events(&mut ok, 2).await;
    assert_eq!(got[0].rev, compact_at);
    assert_eq!(got[1].rev, compact_at + 1);
}

/// The watcher side of the failover test: watches `prefix` from `from`, and whenever its
/// stream breaks (or stays silent for 3 s), re-creates the watch on the next node from the
/// last seen revision + 1, as etcd clients do.
async fn resilient_watcher(
    urls: Vec<String>,
    first: usize,
    prefix: String,
    from: i64,
    seen: Arc<Mutex<Vec<(i64, String)>>>,
    until_rev: Arc<Mutex<Option<i64>>>,
) -> usize {
    let mut node = first;
    let mut next_rev = from;
    let mut reconnects = 0;
    let deadline = Instant::now() + Duration::from_secs(90);
    'outer: while Instant::now() < deadline {
        let target = *until_rev.lock().unwrap();
        if target.is_some_and(|t| next_rev > t) {
            break;
        }
        let Ok(mut client) = common::connect(&urls[node], None).await else {
            node = (node + 1) % urls.len();
            continue;
        };
        let opts = WatchOptions::new()
            .with_prefix()
            .with_start_revision(next_rev);
        let stream = tokio::time::timeout(
            Duration::from_secs(3),
            client.watch(prefix.clone(), Some(opts)),
        )
        .await;
        let Ok(Ok(mut stream)) = stream else {
            node = (node + 1) % urls.len();
            reconnects += 1;
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        loop {
            let target = *until_rev.lock().unwrap();
            if target.is_some_and(|t| next_rev > t) {
                break 'outer;
            }
            match tokio::time::timeout(Duration::from_secs(3), stream.message()).await {
                Ok(Ok(Some(m))) => {
                    if m.canceled() {
                        break;
                    }
                    for e in m.events() {
                        let kv = e.kv().expect("kv");
                        let rev = kv.mod_revision();
                        seen.lock()
                            .unwrap()
                            .push((rev, String::from_utf8_lossy(kv.key()).into_owned()));
                        next_rev = next_rev.max(rev + 1);
                    }
                }
                _ => break,
            }
        }
        node = (node + 1) % urls.len();
        reconnects += 1;
    }
    reconnects
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_resumes_across_leader_kill() {
    let mut cluster = Cluster::start(BIN, 3).await;
    let leader = cluster.leader().await;
    let urls: Vec<String> = (0..3).map(|i| cluster.url(i)).collect();
    let mut writer = cluster.retry_client().await;
    let start = writer
        .put("fw/start", "s")
        .await
        .expect("first put")
        .header()
        .unwrap()
        .revision();

    let seen = Arc::new(Mutex::new(Vec::new()));
    let until = Arc::new(Mutex::new(None));
    let watcher = tokio::spawn(resilient_watcher(
        urls,
        leader,
        "fw/".into(),
        start,
        seen.clone(),
        until.clone(),
    ));

    const N: usize = 300;
    let writes = tokio::spawn(async move {
        let mut acked = BTreeMap::new();
        for i in 0..N {
            let key = format!("fw/k{i:04}");
            match writer.put(&key, "v").await {
                Ok(r) => {
                    acked.insert(r.header().unwrap().revision(), key);
                }
                Err(e) => panic!("write {i} not acknowledged within the retry budget: {e}"),
            }
        }
        acked
    });

    // Kill the leader (the node the watch started on) while writes are flowing.
    common::eventually("some writes before the kill", WAIT, || async {
        (seen.lock().unwrap().len() >= 50).then_some(())
    })
    .await;
    cluster.kill9(leader);
    let killed_at = Instant::now();
    let acked = writes.await.expect("writer task");
    eprintln!("writes done {:?} after the kill", killed_at.elapsed());
    let last = *acked.keys().last().expect("some acked writes");
    *until.lock().unwrap() = Some(last);
    let reconnects = tokio::time::timeout(Duration::from_secs(60), watcher)
        .await
        .expect("watcher finished")
        .expect("watcher task");
    eprintln!("watcher reconnected {reconnects} times");
    assert!(
        reconnects >= 1,
        "the watch must have been re-created after the kill"
    );

    let seen = seen.lock().unwrap().clone();
    for pair in seen.windows(2) {
        assert!(
            pair[0].0 < pair[1].0,
            "events out of order or duplicated: {pair:?}"
        );
    }
    let by_rev: BTreeMap<i64, String> = seen.iter().cloned().collect();
    let seen_revs: HashSet<i64> = by_rev.keys().copied().collect();
    for (rev, key) in &acked {
        assert!(
            seen_revs.contains(rev),
            "acknowledged write {key}@{rev} never watched"
        );
        assert_eq!(&by_rev[rev], key, "event at {rev} has the wrong key");
    }
    assert!(
        seen.iter().all(|(_, k)| k.starts_with("fw/")),
        "only keys under the prefix"
    );
}

/// Watch fan-out at scale: 10,000 watchers on one member over one gRPC stream (5,000 single
/// keys, 4,996 prefixes, 4 broad prefixes that see everything) under writes, while another
/// connection's watcher is stalled (its client never reads). Every watcher must see exactly
/// its events, once, in revision order; the stalled one must not delay the others (a
/// watch-latency measurement with a generous bound, not a benchmark) and, once read, must
/// still deliver all of its events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_watchers_see_every_event_once_and_a_stalled_one_delays_nobody() {
    use concord_proto::etcdserverpb as pb;
    use pb::watch_request::RequestUnion;
    use tokio_stream::wrappers::ReceiverStream;

    const KEYS: i64 = 5_000;
    const PREFIXES: i64 = 4_996;
    const BROAD: i64 = 4;
    const WRITES: i64 = 600;
    // 1,000 events of 8 KiB: past what the stalled stream holds (about 2.4 MB of HTTP/2
    // window and send buffer, ~300 events, then 256 buffered responses and 64 queued hub
    // batches), so the hub must drop it.
    const BIG: i64 = 1_000;
    let cluster = Cluster::start(BIN, 3).await;
    let leader = cluster.leader().await;
    let watched = (leader + 1) % 3;
    let timeout = Duration::from_secs(10);
    let url = cluster.url(watched);
    let dial = || concord_client::dial(&url, timeout);

    // Opens a raw Watch stream and creates `creates` on it; returns the request sender (kept
    // open) and the response stream once every watcher is confirmed.
    async fn open(
        ch: concord_client::Channel,
        creates: Vec<pb::WatchCreateRequest>,
    ) -> (
        tokio::sync::mpsc::Sender<pb::WatchRequest>,
        tonic::Streaming<pb::WatchResponse>,
    ) {
        let (tx, rx) = tokio::sync::mpsc::channel(1024);
        let mut client = pb::watch_client::WatchClient::new(ch);
        let n = creates.len();
        let sender = tx.clone();
        tokio::spawn(async move {
            for c in creates {
                let req = pb::WatchRequest {
                    request_union: Some(RequestUnion::CreateRequest(c)),
                };
                if sender.send(req).await.is_err() {
                    return;
                }
            }
        });
        let mut stream = client
            .watch(ReceiverStream::new(rx))
            .await
            .expect("watch stream")
            .into_inner();
        let mut created = 0;
        while created < n {
            let r = stream
                .message()
                .await
                .expect("watch response")
                .expect("stream open");
            assert!(r.created && !r.canceled, "unexpected {r:?}");
            created += 1;
        }
        (tx, stream)
    }
    let create = |id: i64, key: String, range_end: Vec<u8>| pb::WatchCreateRequest {
        key: key.into_bytes(),
        range_end,
        watch_id: id,
        ..Default::default()
    };
    let prefix_end = |p: &str| {
        let mut end = p.as_bytes().to_vec();
        *end.last_mut().unwrap() += 1;
        end
    };

    // The stalled watcher first, on its own connection: it follows big/ and is never read.
    let (_stalled_tx, mut stalled) = open(
        dial().await.unwrap(),
        vec![create(1, "big/".into(), prefix_end("big/"))],
    )
    .await;
    let mut creates = Vec::new();
    for i in 0..KEYS {
        creates.push(create(1 + i, format!("fan/k/{i}"), vec![]));
    }
    for j in 0..PREFIXES {
        let p = format!("fan/p/{j}/");
        creates.push(create(1 + KEYS + j, p.clone(), prefix_end(&p)));
    }
    for b in 0..BROAD {
        creates.push(create(
            1 + KEYS + PREFIXES + b,
            "fan/".into(),
            prefix_end("fan/"),
        ));
    }
    let started = Instant::now();
    let (_tx, mut stream) = open(dial().await.unwrap(), creates).await;
    eprintln!("10,000 watchers created in {:?}", started.elapsed());

    let mut kv = cluster.client(leader).await;
    let big = "x".repeat(8 * 1024);
    for i in 0..BIG {
        kv.put(format!("big/{i:03}"), big.as_str(), None)
            .await
            .expect("put big");
    }
    // Expected events per watcher id: (key, revision), in order.
    let mut want: BTreeMap<i64, Vec<(String, i64)>> = BTreeMap::new();
    let mut last_put = None;
    for n in 0..WRITES {
        let key = if n % 2 == 0 {
            format!("fan/k/{}", (n * 7) % KEYS)
        } else {
            format!("fan/p/{}/x", (n * 7) % PREFIXES)
        };
        let r = kv.put(key.as_str(), "v", None).await.expect("put");
        let rev = r.header().unwrap().revision();
        last_put = Some((rev, Instant::now()));
        let owner = if n % 2 == 0 {
            1 + (n * 7) % KEYS
        } else {
            1 + KEYS + (n * 7) % PREFIXES
        };
        want.entry(owner).or_default().push((key.clone(), rev));
        for b in 0..BROAD {
            want.entry(1 + KEYS + PREFIXES + b)
                .or_default()
                .push((key.clone(), rev));
        }
    }
    let total: usize = want.values().map(Vec::len).sum();
    let (last_rev, last_acked) = last_put.unwrap();

    let mut got: BTreeMap<i64, Vec<(String, i64)>> = BTreeMap::new();
    let mut received = 0;
    let mut last_seen = None;
    let deadline = Instant::now() + WAIT;
    while received < total {
        let left = deadline.saturating_duration_since(Instant::now());
        let r = tokio::time::timeout(left, stream.message())
            .await
            .unwrap_or_else(|_| panic!("only {received} of {total} events within {WAIT:?}"))
            .expect("watch response")
            .expect("stream open");
        assert!(
            !r.canceled,
            "watcher {} canceled: {}",
            r.watch_id, r.cancel_reason
        );
        for e in r.events {
            let kv = e.kv.expect("event kv");
            if kv.mod_revision == last_rev && last_seen.is_none() {
                last_seen = Some(last_acked.elapsed());
            }
            got.entry(r.watch_id)
                .or_default()
                .push((String::from_utf8(kv.key).unwrap(), kv.mod_revision));
            received += 1;
        }
    }
    assert_eq!(
        got, want,
        "every watcher sees exactly its events, once, in order"
    );
    let lag = last_seen.expect("the last write was seen");
    eprintln!(
        "10,000 watchers: {total} events delivered; the last write reached its watchers {lag:?} \
         after it was acknowledged, with a stalled watcher on the same member"
    );
    assert!(
        lag < Duration::from_secs(10),
        "a stalled watcher delayed the others: {lag:?}"
    );
    // The watchers were served by the member's shared reader, and the stalled one was
    // moved out of it.
    let port = cluster
        .url(watched)
        .rsplit(':')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let metrics = common::http_get(port, "/metrics")
        .await
        .expect("GET /metrics");
    let metrics = String::from_utf8(metrics.body).expect("UTF-8 metrics");
    let value = |name: &str| -> f64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("{name} missing from /metrics"))
    };
    assert!(
        value("concord_watch_synced_watchers") >= 10_000.0,
        "{metrics}"
    );
    assert!(
        value("concord_watch_slow_watchers_total") >= 1.0,
        "{metrics}"
    );
    let reads = value("concord_watch_hub_reads_total");
    assert!(
        reads <= (WRITES + BIG) as f64,
        "one change-log read per applied batch, not per watcher: {reads}"
    );

    // The stalled watcher, read at last, delivers every one of its events once, in order.
    let mut big_seen = Vec::new();
    while big_seen.len() < BIG as usize {
        let r = tokio::time::timeout(WAIT, stalled.message())
            .await
            .expect("stalled watcher resumes")
            .expect("watch response")
            .expect("stream open");
        assert!(!r.canceled, "stalled watcher canceled: {}", r.cancel_reason);
        big_seen.extend(
            r.events
                .into_iter()
                .map(|e| String::from_utf8(e.kv.unwrap().key).unwrap()),
        );
    }
    let want_big: Vec<String> = (0..BIG).map(|i| format!("big/{i:03}")).collect();
    assert_eq!(big_seen, want_big);
}

/// `fragment`: a revision whose events exceed `--max-request-bytes` (a DeleteRange of 20
/// keys watched with their 10 KiB previous values) comes in several responses, every
/// event once and in key order; without `fragment` it comes in one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_revisions_are_fragmented_only_when_asked() {
    let cluster = Cluster::builder(BIN, 1)
        .flag("--max-request-bytes", 64 * 1024)
        .start()
        .await;
    let mut c = cluster.client(0).await;
    let value = "v".repeat(10 * 1024);
    let keys: Vec<String> = (0..20).map(|i| format!("frag/{i:02}")).collect();
    for k in &keys {
        c.put(k.as_str(), value.as_str(), None).await.expect("put");
    }
    let opts = || WatchOptions::new().with_prefix().with_prev_key();
    let mut fragmented = create_watch(&mut c, "frag/", opts().with_fragment()).await;
    let mut whole = create_watch(&mut c, "frag/", opts()).await;
    c.delete(
        "frag/",
        Some(etcd_client::DeleteOptions::new().with_prefix()),
    )
    .await
    .expect("delete the prefix");
    for (stream, want_responses) in [(&mut fragmented, 2..=20), (&mut whole, 1..=1)] {
        let mut responses = 0;
        let mut seen = Vec::new();
        while seen.len() < keys.len() {
            let m = next_msg(stream, "the delete's events").await;
            responses += 1;
            for e in flatten(&m) {
                assert_eq!(e.kind, EventType::Delete);
                assert_eq!(e.prev.as_deref(), Some(value.as_str()));
                seen.push(e.key);
            }
        }
        assert_eq!(seen, keys);
        assert!(
            want_responses.contains(&responses),
            "{responses} responses, want {want_responses:?}"
        );
    }
}
