//! `concord bench`: a load generator for any etcd v3 endpoint list (Concord or etcd).
//!
//! Clients are tokio tasks sharing `--conns` gRPC connections spread over the endpoints;
//! `--threads` single-threaded runtimes share the connections and their clients out.
//! Each client runs one request at a time (closed loop), so `--clients` is the
//! concurrency. The run stops after `--total` requests or `--duration`, whichever comes
//! first; latencies go into an HDR histogram (microsecond resolution). The last line of
//! output is one JSON object with the figures, for scripts.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Args, ValueEnum};
use concord_client::{ClientError, ReadConsistency};
use concord_proto::etcdserverpb as pb;
use concord_proto::etcdserverpb::kv_client::KvClient;
use concord_proto::etcdserverpb::lease_client::LeaseClient;
use concord_proto::etcdserverpb::watch_client::WatchClient;
use hdrhistogram::Histogram;
use tonic::transport::Channel;

/// What each request does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Op {
    /// `Put` of a random key in the key space.
    Put,
    /// Linearizable `Range` of one random key.
    Range,
    /// Serializable (local, possibly stale) `Range` of one random key.
    RangeSerializable,
    /// `Txn`: compare-and-swap on a random key (compare mod revision, then put).
    TxnCas,
    /// Put a key and time until a watcher on another connection sees it.
    WatchLatency,
    /// One `LeaseKeepAlive` round trip on a granted lease.
    LeaseKeepalive,
}

/// `concord bench` options.
#[derive(Args, Clone, Debug)]
pub struct BenchArgs {
    /// Comma-separated client URLs.
    #[arg(long, value_delimiter = ',', default_value = "http://127.0.0.1:2379")]
    pub endpoints: Vec<String>,
    /// The operation.
    #[arg(long, value_enum, default_value = "put")]
    pub op: Op,
    /// Concurrent clients (requests in flight).
    #[arg(long, default_value_t = 64)]
    pub clients: usize,
    /// gRPC connections shared by the clients (spread over the endpoints).
    #[arg(long, default_value_t = 8)]
    pub conns: usize,
    /// Stop after this many requests.
    #[arg(long, default_value_t = 100_000)]
    pub total: u64,
    /// Stop after this many seconds.
    #[arg(long, default_value_t = 60.0)]
    pub duration: f64,
    /// Number of distinct keys.
    #[arg(long, default_value_t = 100_000)]
    pub key_space: u64,
    /// Value size in bytes.
    #[arg(long, default_value_t = 256)]
    pub value_size: usize,
    /// Prefix of every key written or read.
    #[arg(long, default_value = "bench/")]
    pub key_prefix: String,
    /// Keys in order (request n uses key n modulo the key space) instead of at random:
    /// `--op put --sequential-keys --total N --key-space N` writes exactly N distinct keys.
    #[arg(long)]
    pub sequential_keys: bool,
    /// Hide the progress bar.
    #[arg(long)]
    pub no_progress: bool,
    /// Dial timeout in seconds.
    #[arg(long, default_value_t = 5.0)]
    pub dial_timeout: f64,
    /// Client threads, each a single-threaded runtime owning its share of the
    /// connections (default: one per core, at most one per connection)
    #[arg(long)]
    pub threads: Option<usize>,
    /// Extra watchers to hold open during the run (one stream, on the last connection):
    /// each watches one key of the key space (`<prefix><n>`), so the writes of `--op
    /// put` or `watch-latency` reach them, as a watch-heavy deployment's do
    #[arg(long, default_value_t = 0)]
    pub watchers: u64,
    /// Read level of `--op range`: strong, bounded=<duration>, session=<revision> or
    /// eventual (sent in the `concord-consistency` metadata; docs/consistency.md)
    #[arg(long, default_value = "strong")]
    pub consistency: ReadConsistency,
    /// CA bundle that verifies the members' certificates (https:// endpoints)
    #[arg(long, value_name = "FILE")]
    pub cacert: Option<std::path::PathBuf>,
    /// TLS client certificate
    #[arg(long, value_name = "FILE", requires = "key")]
    pub cert: Option<std::path::PathBuf>,
    /// Private key of --cert
    #[arg(long, value_name = "FILE", requires = "cert")]
    pub key: Option<std::path::PathBuf>,
    /// Accept any server certificate
    #[arg(long)]
    pub insecure_skip_tls_verify: bool,
}

impl BenchArgs {
    /// The dialer of the TLS flags.
    fn dialer(&self) -> Result<concord_client::Dialer, BenchError> {
        let settings = crate::ctl::tls_settings(
            &self.cacert,
            &self.cert,
            &self.key,
            self.insecure_skip_tls_verify,
        )
        .map_err(|e| BenchError::Args(e.to_string()))?;
        concord_client::Dialer::new(settings).map_err(|e| BenchError::Args(e.to_string()))
    }
}

/// Why a run failed before producing figures.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// Bad options.
    #[error("{0}")]
    Args(String),
    /// No endpoint could be reached.
    #[error("cannot connect to {0}: {1}")]
    Connect(String, String),
    /// The setup request (lease grant, watch) failed.
    #[error("setup failed: {0}")]
    Setup(String),
}

/// The figures of one run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Summary {
    /// The operation.
    pub op: String,
    /// Concurrency.
    pub clients: usize,
    /// Connections.
    pub conns: usize,
    /// Value size.
    pub value_size: usize,
    /// Successful requests.
    pub ok: u64,
    /// Failed requests.
    pub errors: u64,
    /// Wall time in seconds.
    pub seconds: f64,
    /// Successful requests per second.
    pub throughput: f64,
    /// Latency percentiles in milliseconds.
    pub p50_ms: f64,
    /// 90th percentile.
    pub p90_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// 99.9th percentile.
    pub p999_ms: f64,
    /// Maximum.
    pub max_ms: f64,
    /// First error message seen, if any.
    pub first_error: Option<String>,
}

async fn connect(
    url: &str,
    timeout: Duration,
    dialer: &concord_client::Dialer,
) -> Result<Channel, BenchError> {
    concord_client::dial_with(url, timeout, dialer)
        .await
        .map_err(|e| match e {
            ClientError::Connect { detail, .. } => BenchError::Connect(url.to_string(), detail),
            other => BenchError::Args(other.to_string()),
        })
}

struct Shared {
    args: BenchArgs,
    issued: AtomicU64,
    ok: AtomicU64,
    errors: AtomicU64,
    first_error: std::sync::Mutex<Option<String>>,
    deadline: Instant,
}

impl Shared {
    /// Claims the next request slot (its number); `None` once the run is over.
    fn claim(&self) -> Option<u64> {
        if Instant::now() >= self.deadline {
            return None;
        }
        let slot = self.issued.fetch_add(1, Ordering::Relaxed);
        (slot < self.args.total).then_some(slot)
    }

    fn error(&self, e: impl std::fmt::Display) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        let mut first = self.first_error.lock().unwrap_or_else(|e| e.into_inner());
        if first.is_none() {
            *first = Some(e.to_string());
        }
    }
}

fn key(args: &BenchArgs, rng: &mut u64, slot: u64) -> Vec<u8> {
    // xorshift: cheap, per client, no shared state.
    *rng ^= *rng << 13;
    *rng ^= *rng >> 7;
    *rng ^= *rng << 17;
    let n = if args.sequential_keys { slot } else { *rng };
    let k = n % args.key_space.max(1);
    format!("{}{k:012}", args.key_prefix).into_bytes()
}

/// The number of client threads: `--threads`, or one per core up to one per connection.
fn threads(args: &BenchArgs) -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    args.threads.unwrap_or(cores).clamp(1, args.conns)
}

/// Runs the benchmark and returns its figures.
///
/// The clients run on `threads` single-threaded runtimes, each owning every
/// `threads`-th connection and the clients that share them, so a request, its
/// connection's I/O and the wake-ups between them stay on one thread (a multi-threaded
/// runtime spent ~25% more CPU per put on cross-thread wake-ups, CPU taken from the
/// members when they share the machine). Setup (a lease, watchers) runs on the caller's
/// runtime, on connections of its own.
pub async fn run(args: BenchArgs) -> Result<Summary, BenchError> {
    if args.endpoints.is_empty() || args.clients == 0 || args.conns == 0 {
        return Err(BenchError::Args(
            "--endpoints, --clients and --conns must be non-empty / positive".into(),
        ));
    }
    if args.duration.is_nan() || args.duration <= 0.0 {
        return Err(BenchError::Args("--duration must be positive".into()));
    }
    let timeout = Duration::from_secs_f64(args.dial_timeout.max(0.1));
    let dialer = args.dialer()?;
    // Per-op setup: a lease for keep-alives; a watcher for watch latency.
    let lease_id = if args.op == Op::LeaseKeepalive {
        let ch = connect(&args.endpoints[0], timeout, &dialer).await?;
        LeaseClient::new(ch)
            .lease_grant(pb::LeaseGrantRequest { ttl: 600, id: 0 })
            .await
            .map_err(|e| BenchError::Setup(e.message().to_string()))?
            .into_inner()
            .id
    } else {
        0
    };
    let watch_url = &args.endpoints[(args.conns - 1) % args.endpoints.len()];
    let _extra_watchers = if args.watchers > 0 {
        let ch = connect(watch_url, timeout, &dialer).await?;
        Some(start_extra_watchers(&ch, &args).await?)
    } else {
        None
    };
    let watch_seen = if args.op == Op::WatchLatency {
        let ch = connect(watch_url, timeout, &dialer).await?;
        Some(start_watcher(&ch, &args.key_prefix).await?)
    } else {
        None
    };

    let bar = if args.no_progress {
        indicatif::ProgressBar::hidden()
    } else {
        let b = indicatif::ProgressBar::new(args.total);
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} {op} [{elapsed_precise}] {bar:40} {pos}/{len} ({per_sec})",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .with_key("op", {
                let op = format!("{:?}", args.op);
                move |_: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
                    let _ = w.write_str(&op);
                }
            }),
        );
        b
    };
    // Each thread connects, reports, and waits for the shared state that starts the run.
    let n = threads(&args);
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::unbounded_channel();
    let (go_tx, go_rx) = tokio::sync::watch::channel(None::<Arc<Shared>>);
    let mut handles = Vec::new();
    for t in 0..n {
        let worker = Worker {
            thread: t,
            threads: n,
            args: args.clone(),
            dialer: dialer.clone(),
            timeout,
            lease_id,
            watch_seen: watch_seen.clone(),
            bar: bar.clone(),
        };
        let (ready, go) = (ready_tx.clone(), go_rx.clone());
        let spawned = std::thread::Builder::new()
            .name(format!("bench-{t}"))
            .spawn(move || worker.run(ready, go));
        match spawned {
            Ok(h) => handles.push(h),
            Err(e) => return Err(BenchError::Args(format!("cannot start a thread: {e}"))),
        }
    }
    drop(ready_tx);
    for _ in 0..n {
        match ready_rx.recv().await {
            Some(Ok(())) => {}
            // Dropping `go_tx` on return stops the threads that connected.
            Some(Err(e)) => return Err(e),
            None => return Err(BenchError::Setup("a client thread ended".into())),
        }
    }
    let shared = Arc::new(Shared {
        issued: AtomicU64::new(0),
        ok: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        first_error: std::sync::Mutex::new(None),
        deadline: Instant::now() + Duration::from_secs_f64(args.duration),
        args: args.clone(),
    });
    let started = Instant::now();
    let _ = go_tx.send(Some(shared.clone()));
    let mut hist = new_histogram();
    for h in handles {
        let joined = tokio::task::spawn_blocking(move || h.join()).await;
        if let Ok(Ok(h)) = joined {
            let _ = hist.add(h);
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    bar.finish_and_clear();
    let ok = shared.ok.load(Ordering::Relaxed);
    let ms = |q: f64| hist.value_at_quantile(q) as f64 / 1000.0;
    let first_error = shared
        .first_error
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    Ok(Summary {
        op: format!("{:?}", args.op).to_lowercase(),
        clients: args.clients,
        conns: args.conns,
        value_size: args.value_size,
        ok,
        errors: shared.errors.load(Ordering::Relaxed),
        seconds,
        throughput: ok as f64 / seconds.max(1e-9),
        p50_ms: ms(0.5),
        p90_ms: ms(0.9),
        p99_ms: ms(0.99),
        p999_ms: ms(0.999),
        max_ms: hist.max() as f64 / 1000.0,
        first_error,
    })
}

fn new_histogram() -> Histogram<u64> {
    Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)
        .unwrap_or_else(|_| Histogram::new(3).expect("3 significant figures is valid"))
}

/// One client thread: connection `i` is its own when `i % threads == thread`, and client
/// `c` runs on connection `c % conns`.
struct Worker {
    thread: usize,
    threads: usize,
    args: BenchArgs,
    dialer: concord_client::Dialer,
    timeout: Duration,
    lease_id: i64,
    watch_seen: Option<tokio::sync::watch::Sender<i64>>,
    bar: indicatif::ProgressBar,
}

impl Worker {
    /// Connects, reports on `ready`, waits for the run's shared state on `go`, runs its
    /// clients and returns their merged latencies.
    fn run(
        self,
        ready: tokio::sync::mpsc::UnboundedSender<Result<(), BenchError>>,
        mut go: tokio::sync::watch::Receiver<Option<Arc<Shared>>>,
    ) -> Histogram<u64> {
        let mut hist = new_histogram();
        let rt = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                let _ = ready.send(Err(BenchError::Args(format!(
                    "cannot start a runtime: {e}"
                ))));
                return hist;
            }
        };
        rt.block_on(async {
            let args = &self.args;
            let mut channels = Vec::new();
            for i in (self.thread..args.conns).step_by(self.threads) {
                let url = &args.endpoints[i % args.endpoints.len()];
                match connect(url, self.timeout, &self.dialer).await {
                    Ok(ch) => channels.push((i, ch)),
                    Err(e) => {
                        let _ = ready.send(Err(e));
                        return;
                    }
                }
            }
            let _ = ready.send(Ok(()));
            let Some(shared) = go
                .wait_for(Option::is_some)
                .await
                .ok()
                .and_then(|s| s.clone())
            else {
                return;
            };
            // The clients of connection `i`: `i`, `i + conns`, `i + 2 * conns`, ...
            let mut tasks = Vec::new();
            for (i, ch) in &channels {
                for c in (*i..args.clients).step_by(args.conns) {
                    tasks.push(tokio::spawn(client(
                        c,
                        ch.clone(),
                        shared.clone(),
                        self.lease_id,
                        self.watch_seen.clone(),
                        self.bar.clone(),
                    )));
                }
            }
            for t in tasks {
                if let Ok(h) = t.await {
                    let _ = hist.add(h);
                }
            }
        });
        hist
    }
}

/// One closed-loop client: claims request slots until the run is over.
async fn client(
    c: usize,
    ch: Channel,
    shared: Arc<Shared>,
    lease_id: i64,
    watch_seen: Option<tokio::sync::watch::Sender<i64>>,
    bar: indicatif::ProgressBar,
) -> Histogram<u64> {
    let mut hist = new_histogram();
    let mut kv = KvClient::new(ch.clone());
    let mut lease = LeaseClient::new(ch);
    let mut rng = 0x9e37_79b9_7f4a_7c15u64 ^ ((c as u64 + 1) * 0x1000_0001);
    let args = &shared.args;
    let mut keepalive: Option<(
        tokio::sync::mpsc::Sender<pb::LeaseKeepAliveRequest>,
        tonic::Streaming<pb::LeaseKeepAliveResponse>,
    )> = None;
    let value = vec![b'x'; args.value_size];
    while let Some(slot) = shared.claim() {
        let t0 = Instant::now();
        let result: Result<(), String> = match args.op {
            Op::Put => kv
                .put(pb::PutRequest {
                    key: key(args, &mut rng, slot),
                    value: value.clone(),
                    ..Default::default()
                })
                .await
                .map(|_| ())
                .map_err(|e| e.message().to_string()),
            Op::Range | Op::RangeSerializable => kv
                .range({
                    let mut req = tonic::Request::new(pb::RangeRequest {
                        key: key(args, &mut rng, slot),
                        serializable: args.op == Op::RangeSerializable,
                        ..Default::default()
                    });
                    args.consistency.set_on(&mut req);
                    req
                })
                .await
                .map(|_| ())
                .map_err(|e| e.message().to_string()),
            Op::TxnCas => cas(&mut kv, key(args, &mut rng, slot), value.clone()).await,
            Op::WatchLatency => match &watch_seen {
                Some(seen) => {
                    let k = key(args, &mut rng, slot);
                    let mut rx = seen.subscribe();
                    match kv
                        .put(pb::PutRequest {
                            key: k.clone(),
                            value: value.clone(),
                            ..Default::default()
                        })
                        .await
                    {
                        Ok(r) => {
                            let rev = r.into_inner().header.map_or(0, |h| h.revision);
                            wait_seen(&mut rx, rev).await
                        }
                        Err(e) => Err(e.message().to_string()),
                    }
                }
                None => Err("no watcher".into()),
            },
            Op::LeaseKeepalive => keepalive_once(&mut lease, &mut keepalive, lease_id).await,
        };
        match result {
            Ok(()) => {
                shared.ok.fetch_add(1, Ordering::Relaxed);
                let us = t0.elapsed().as_micros().clamp(1, 60_000_000) as u64;
                let _ = hist.record(us);
            }
            Err(e) => shared.error(e),
        }
        bar.inc(1);
    }
    hist
}

async fn cas(kv: &mut KvClient<Channel>, key: Vec<u8>, value: Vec<u8>) -> Result<(), String> {
    use pb::compare::{CompareResult, CompareTarget, TargetUnion};
    let got = kv
        .range(pb::RangeRequest {
            key: key.clone(),
            serializable: true,
            ..Default::default()
        })
        .await
        .map_err(|e| e.message().to_string())?
        .into_inner();
    let mod_rev = got.kvs.first().map_or(0, |kv| kv.mod_revision);
    let put = pb::RequestOp {
        request: Some(pb::request_op::Request::RequestPut(pb::PutRequest {
            key: key.clone(),
            value,
            ..Default::default()
        })),
    };
    kv.txn(pb::TxnRequest {
        compare: vec![pb::Compare {
            result: CompareResult::Equal as i32,
            target: CompareTarget::Mod as i32,
            key,
            target_union: Some(TargetUnion::ModRevision(mod_rev)),
            range_end: Vec::new(),
        }],
        success: vec![put],
        failure: Vec::new(),
    })
    .await
    .map(|_| ())
    .map_err(|e| e.message().to_string())
}

async fn keepalive_once(
    lease: &mut LeaseClient<Channel>,
    stream: &mut Option<(
        tokio::sync::mpsc::Sender<pb::LeaseKeepAliveRequest>,
        tonic::Streaming<pb::LeaseKeepAliveResponse>,
    )>,
    id: i64,
) -> Result<(), String> {
    if stream.is_none() {
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        let resp = lease
            .lease_keep_alive(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .map_err(|e| e.message().to_string())?;
        *stream = Some((tx, resp.into_inner()));
    }
    let Some((tx, rx)) = stream.as_mut() else {
        return Err("no stream".into());
    };
    let sent = tx.send(pb::LeaseKeepAliveRequest { id }).await;
    let got = match sent {
        Ok(()) => rx.message().await,
        Err(_) => Ok(None),
    };
    match got {
        Ok(Some(r)) if r.ttl > 0 => Ok(()),
        Ok(Some(_)) => Err("lease not found".into()),
        Ok(None) => {
            *stream = None;
            Err("keep-alive stream closed".into())
        }
        Err(e) => {
            *stream = None;
            Err(e.message().to_string())
        }
    }
}

/// Opens one stream with `--watchers` watchers on single keys of the key space, waits
/// until every one is created, and drains their events in the background. The returned
/// sender keeps the stream open.
async fn start_extra_watchers(
    ch: &Channel,
    args: &BenchArgs,
) -> Result<tokio::sync::mpsc::Sender<pb::WatchRequest>, BenchError> {
    let setup = |e: String| BenchError::Setup(format!("extra watchers: {e}"));
    let (tx, rx) = tokio::sync::mpsc::channel(1024);
    // The creates are queued first: etcd sends the stream's response headers only with
    // its first message, so the call below waits for one.
    let (n, sender) = (args.watchers, tx.clone());
    let (prefix, key_space) = (args.key_prefix.clone(), args.key_space.max(1));
    tokio::spawn(async move {
        for i in 0..n {
            let key = format!("{prefix}{:012}", i % key_space).into_bytes();
            let create = pb::WatchCreateRequest {
                key,
                ..Default::default()
            };
            let req = pb::WatchRequest {
                request_union: Some(pb::watch_request::RequestUnion::CreateRequest(create)),
            };
            if sender.send(req).await.is_err() {
                return;
            }
        }
    });
    let mut stream = WatchClient::new(ch.clone())
        .watch(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .map_err(|e| setup(e.message().to_string()))?
        .into_inner();
    let mut created = 0;
    while created < n {
        match stream.message().await {
            Ok(Some(m)) if m.created => created += 1,
            Ok(Some(_)) => {}
            Ok(None) => return Err(setup("the stream ended".into())),
            Err(e) => return Err(setup(e.message().to_string())),
        }
    }
    tokio::spawn(async move { while let Ok(Some(_)) = stream.message().await {} });
    Ok(tx)
}

/// Starts one watcher on `prefix` and publishes the highest revision it has seen.
async fn start_watcher(
    ch: &Channel,
    prefix: &str,
) -> Result<tokio::sync::watch::Sender<i64>, BenchError> {
    let mut w = WatchClient::new(ch.clone());
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let mut end = prefix.as_bytes().to_vec();
    if let Some(last) = end.last_mut() {
        *last = last.wrapping_add(1);
    }
    tx.send(pb::WatchRequest {
        request_union: Some(pb::watch_request::RequestUnion::CreateRequest(
            pb::WatchCreateRequest {
                key: prefix.as_bytes().to_vec(),
                range_end: end,
                ..Default::default()
            },
        )),
    })
    .await
    .map_err(|e| BenchError::Setup(e.to_string()))?;
    let mut stream = w
        .watch(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .map_err(|e| BenchError::Setup(e.message().to_string()))?
        .into_inner();
    let (seen_tx, _) = tokio::sync::watch::channel(0i64);
    let seen = seen_tx.clone();
    tokio::spawn(async move {
        let _keep_request_stream_open = tx;
        while let Ok(Some(m)) = stream.message().await {
            if let Some(rev) = m
                .events
                .iter()
                .filter_map(|e| e.kv.as_ref())
                .map(|kv| kv.mod_revision)
                .max()
            {
                seen.send_if_modified(|cur| {
                    if rev > *cur {
                        *cur = rev;
                        true
                    } else {
                        false
                    }
                });
            }
        }
    });
    Ok(seen_tx)
}

async fn wait_seen(rx: &mut tokio::sync::watch::Receiver<i64>, rev: i64) -> Result<(), String> {
    let wait = async {
        loop {
            if *rx.borrow_and_update() >= rev {
                return Ok(());
            }
            if rx.changed().await.is_err() {
                return Err("watcher ended".to_string());
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), wait)
        .await
        .map_err(|_| "watch event not seen within 10 s".to_string())?
}

/// Prints the human summary and the JSON line (a closed stdout is not an error).
pub fn print(s: &Summary) {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "{}: {} ok, {} errors in {:.2} s = {:.0} ops/s; latency ms p50 {:.3} p90 {:.3} p99 {:.3} p99.9 {:.3} max {:.3}",
        s.op, s.ok, s.errors, s.seconds, s.throughput, s.p50_ms, s.p90_ms, s.p99_ms, s.p999_ms, s.max_ms
    );
    if let Some(e) = &s.first_error {
        let _ = writeln!(out, "first error: {e}");
    }
    let _ = match serde_json::to_string(s) {
        Ok(j) => writeln!(out, "{j}"),
        Err(e) => writeln!(out, "{{\"error\":\"{e}\"}}"),
    };
}
