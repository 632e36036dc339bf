//! A member's metrics: one `prometheus-client` registry, encoded in the Prometheus text
//! format (0.0.4) at `/metrics`. `docs/observability.md` lists every name.
//!
//! Two kinds of metric live in it:
//!
//! * **event-driven** ones, counted where the event happens: the Raft driver's telemetry
//!   ([`RaftMetrics`]: proposals, WAL fsync and backend commit durations, leader changes)
//!   and the gRPC server's ([`GrpcMetrics`], one series per service, method, type and
//!   code, as `go-grpc-prometheus` names them for etcd);
//! * **read at scrape time** ([`Sample`]): values another component already keeps (Raft
//!   status, store sizes, gossip view, AP counters, the process's CPU and memory), handed
//!   to [`Metrics::encode`] by the route and written by the registry's collector, so
//!   nothing is copied between scrapes.
//!
//! etcd's names are used where etcd has the metric (with etcd's types: etcd's
//! `etcd_server_proposals_committed_total` is a gauge), so etcd's dashboards and alerts
//! work unchanged; Concord's own carry the `concord_` prefix.

use std::pin::Pin;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use concord_raft::NodeId;
use concord_runtime::Telemetry;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::{Family, MetricConstructor};
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

/// The type of a [`Sample`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Goes up and down.
    Gauge,
    /// Only goes up (its source is monotonic); the name ends in `_total`.
    Counter,
}

/// One value read at scrape time. Samples of one name must be adjacent, with the same
/// help and kind.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// The metric's name (a counter's ends in `_total`).
    pub name: &'static str,
    /// Its help text.
    pub help: &'static str,
    /// Its type.
    pub kind: Kind,
    /// Label names and values.
    pub labels: Vec<(&'static str, String)>,
    /// The value.
    pub value: f64,
}

impl Sample {
    /// A sample without labels.
    pub fn new(kind: Kind, name: &'static str, help: &'static str, value: f64) -> Sample {
        Sample {
            name,
            help,
            kind,
            labels: Vec::new(),
            value,
        }
    }

    /// The same sample with one more label.
    pub fn label(mut self, name: &'static str, value: impl Into<String>) -> Sample {
        self.labels.push((name, value.into()));
        self
    }
}

/// The samples of the scrape in progress, written by the registry as a collector.
#[derive(Debug, Default)]
struct Scraped(Mutex<Vec<Sample>>);

impl Collector for Scraped {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let samples = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let mut rest = &samples[..];
        while let Some(first) = rest.first() {
            let n = rest.iter().take_while(|s| s.name == first.name).count();
            let (family, after) = rest.split_at(n);
            rest = after;
            // The encoder adds `_total` to a counter's name.
            let (name, kind) = match first.kind {
                Kind::Gauge => (first.name, MetricType::Gauge),
                Kind::Counter => (
                    first.name.strip_suffix("_total").unwrap_or(first.name),
                    MetricType::Counter,
                ),
            };
            // The encoder ends the help with a period itself.
            let help = first.help.trim_end_matches('.');
            let mut metric = encoder.encode_descriptor(name, help, None, kind)?;
            for s in family {
                let labels: Vec<(&str, &str)> =
                    s.labels.iter().map(|(k, v)| (*k, v.as_str())).collect();
                let one = metric.encode_family(&labels)?;
                // Whole numbers as integers ("1", not "1.0").
                let whole = s.value.fract() == 0.0 && s.value.abs() < 9e15;
                match s.kind {
                    Kind::Gauge if whole => ConstGauge::new(s.value as i64).encode(one)?,
                    Kind::Gauge => ConstGauge::new(s.value).encode(one)?,
                    Kind::Counter if whole => {
                        ConstCounter::new(s.value.max(0.0) as u64).encode(one)?
                    }
                    Kind::Counter => ConstCounter::new(s.value.max(0.0)).encode(one)?,
                }
            }
        }
        Ok(())
    }
}

/// The registry and the event-driven metrics of one member.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    scraped: Arc<Scraped>,
    /// One scrape at a time (the samples are the collector's input).
    encoding: Mutex<()>,
    /// The Raft driver's telemetry (unused on an AP-only member).
    pub raft: Arc<RaftMetrics>,
    /// The gRPC server's.
    pub grpc: Arc<GrpcMetrics>,
    /// The AP side's: quorum requests and Redis commands.
    pub ap: Arc<ApTelemetry>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// A registry with every event-driven metric registered at zero.
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        let raft = Arc::new(RaftMetrics::default());
        raft.register(&mut registry);
        let grpc = Arc::new(GrpcMetrics::default());
        grpc.register(&mut registry);
        let ap = Arc::new(ApTelemetry::default());
        ap.register(&mut registry);
        let scraped = Arc::new(Scraped::default());
        registry.register_collector(Box::new(scraped.clone()));
        Metrics {
            registry,
            scraped,
            encoding: Mutex::new(()),
            raft,
            grpc,
            ap,
        }
    }

    /// The Prometheus text of every metric, with `samples` (read at this scrape) and the
    /// process's own.
    pub fn encode(&self, mut samples: Vec<Sample>) -> String {
        let _one = self.encoding.lock().unwrap_or_else(|e| e.into_inner());
        samples.extend(process_samples());
        *self.scraped.0.lock().unwrap_or_else(|e| e.into_inner()) = samples;
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry);
        self.scraped
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        out
    }
}

/// etcd's buckets for disk durations: 1 ms to 8 s, doubling.
fn disk_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 14))
}

/// Counters and histograms fed by the Raft driver's hooks.
#[derive(Debug)]
pub struct RaftMetrics {
    leader_changes: Counter,
    proposals_failed: Counter,
    proposals_accepted: Counter,
    proposals_resent: Counter,
    wal_writes: Counter,
    wal_fsyncs: Counter,
    wal_fsync_seconds: Histogram,
    wal_write_seconds: Counter<f64, AtomicU64>,
    applied_entries: Counter,
    apply_batch_entries: Histogram,
    backend_commit_seconds: Histogram,
    snapshot_install_seconds: Counter<f64, AtomicU64>,
    snapshots_installed_bytes: Counter,
    peer_unreachable: Counter,
    read_index_seconds: Histogram,
    peer_sent_bytes: Family<PeerLabel, Counter>,
    peer_received_bytes: Family<PeerLabel, Counter>,
    peer_round_trip_seconds: HistogramFamily<PeerLabel>,
    peer_queued: Family<PeerLabel, Gauge>,
    peer_connects: Family<PeerLabel, Counter>,
    peer_direct_link: Family<PeerLabel, Gauge>,
    snapshots_sent: Family<PeerLabel, Counter>,
    /// Each peer's series, looked up once (a batch then costs a read lock and an add).
    peer_series: std::sync::RwLock<std::collections::HashMap<u64, PeerSeries>>,
}

/// A peer's label, as etcd names it: `To` for what is sent, `From` for what is received;
/// the value is the member id in hex (etcd's `types.ID`).
type PeerLabel = [(&'static str, String); 1];

#[derive(Debug)]
struct PeerSeries {
    sent: Counter,
    received: Counter,
    round_trip: Histogram,
    queued: Gauge,
    connects: Counter,
    direct_link: Gauge,
    snapshots_sent: Counter,
}

/// etcd's buckets for peer round trips: 0.1 ms to 3.3 s, doubling.
fn round_trip_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.0001, 2.0, 16))
}

impl Default for RaftMetrics {
    fn default() -> Self {
        RaftMetrics {
            leader_changes: Counter::default(),
            proposals_failed: Counter::default(),
            proposals_accepted: Counter::default(),
            proposals_resent: Counter::default(),
            wal_writes: Counter::default(),
            wal_fsyncs: Counter::default(),
            wal_fsync_seconds: disk_buckets(),
            wal_write_seconds: Counter::default(),
            applied_entries: Counter::default(),
            apply_batch_entries: Histogram::new(exponential_buckets(1.0, 2.0, 12)),
            backend_commit_seconds: disk_buckets(),
            snapshot_install_seconds: Counter::default(),
            snapshots_installed_bytes: Counter::default(),
            peer_unreachable: Counter::default(),
            read_index_seconds: round_trip_buckets(),
            peer_sent_bytes: Family::default(),
            peer_received_bytes: Family::default(),
            peer_round_trip_seconds: Family::new_with_constructor(round_trip_buckets),
            peer_queued: Family::default(),
            peer_connects: Family::default(),
            peer_direct_link: Family::default(),
            snapshots_sent: Family::default(),
            peer_series: Default::default(),
        }
    }
}

/// The series of `family` for one peer (`label` is `To` or `From`, `id` the peer's).
fn labelled<M: Clone, C: MetricConstructor<M>>(
    family: &Family<PeerLabel, M, C>,
    label: &'static str,
    id: &str,
) -> M {
    family.get_or_create(&[(label, id.to_owned())]).clone()
}

impl RaftMetrics {
    /// Records into `peer`'s series (created at its first use).
    fn peer(&self, peer: NodeId, record: impl Fn(&PeerSeries)) {
        if let Some(s) = self
            .peer_series
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&peer.get())
        {
            return record(s);
        }
        let id = format!("{:x}", peer.get());
        let series = PeerSeries {
            sent: labelled(&self.peer_sent_bytes, "To", &id),
            received: labelled(&self.peer_received_bytes, "From", &id),
            round_trip: labelled(&self.peer_round_trip_seconds, "To", &id),
            queued: labelled(&self.peer_queued, "To", &id),
            connects: labelled(&self.peer_connects, "To", &id),
            direct_link: labelled(&self.peer_direct_link, "To", &id),
            snapshots_sent: labelled(&self.snapshots_sent, "To", &id),
        };
        record(
            self.peer_series
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .entry(peer.get())
                .or_insert(series),
        )
    }

    fn register(&self, r: &mut Registry) {
        r.register(
            "etcd_server_leader_changes_seen",
            "The number of leader changes seen",
            self.leader_changes.clone(),
        );
        r.register(
            "etcd_server_proposals_failed",
            "The total number of failed proposals seen (refused by Raft: no leader, a \
             leadership transfer, too large)",
            self.proposals_failed.clone(),
        );
        r.register(
            "etcd_disk_wal_fsync_duration_seconds",
            "The latency distributions of fsync called by WAL",
            self.wal_fsync_seconds.clone(),
        );
        r.register(
            "etcd_disk_backend_commit_duration_seconds",
            "The latency distributions of commit called by backend (one apply batch: \
             applying its entries and committing the store's transaction)",
            self.backend_commit_seconds.clone(),
        );
        r.register(
            "concord_raft_proposals_accepted",
            "Proposals this member handed to Raft that entered the log",
            self.proposals_accepted.clone(),
        );
        r.register(
            "concord_raft_proposals_resent",
            "Proposals sent again because the leader they went to lost them",
            self.proposals_resent.clone(),
        );
        r.register(
            "concord_raft_applied_entries",
            "Committed entries applied to the store",
            self.applied_entries.clone(),
        );
        r.register(
            "concord_raft_apply_batch_entries",
            "Entries per apply batch (one store transaction)",
            self.apply_batch_entries.clone(),
        );
        r.register(
            "concord_wal_writes",
            "WAL batches written",
            self.wal_writes.clone(),
        );
        r.register(
            "concord_wal_fsyncs",
            "WAL batches made durable (fsync) before returning",
            self.wal_fsyncs.clone(),
        );
        r.register(
            "concord_wal_write_seconds",
            "Time spent writing (and syncing) WAL batches",
            self.wal_write_seconds.clone(),
        );
        r.register(
            "concord_raft_snapshot_install_seconds",
            "Time spent installing snapshots received from the leader",
            self.snapshot_install_seconds.clone(),
        );
        r.register(
            "concord_raft_snapshot_received_bytes",
            "Bytes of the snapshots received from the leader and installed",
            self.snapshots_installed_bytes.clone(),
        );
        r.register(
            "etcd_network_peer_sent_bytes",
            "The total number of bytes sent to peers (Raft message batches)",
            self.peer_sent_bytes.clone(),
        );
        r.register(
            "etcd_network_peer_received_bytes",
            "The total number of bytes received from peers (Raft message batches)",
            self.peer_received_bytes.clone(),
        );
        r.register(
            "etcd_network_peer_round_trip_time_seconds",
            "Round-Trip-Time histogram between peers (a probe on each peer stream every 5 s)",
            self.peer_round_trip_seconds.clone(),
        );
        r.register(
            "concord_peer_queued_batches",
            "Raft message batches waiting for a peer's stream (at the last batch sent)",
            self.peer_queued.clone(),
        );
        r.register(
            "concord_peer_stream_connects",
            "Streams opened to a peer: the first connection and every reconnect",
            self.peer_connects.clone(),
        );
        r.register(
            "concord_peer_direct_link_up",
            "1 while the direct link to a peer is up (Raft batches bypass the gRPC stream), \
             0 when it is down or not used",
            self.peer_direct_link.clone(),
        );
        r.register(
            "concord_raft_snapshots_sent",
            "Snapshots sent to a peer whole and acknowledged",
            self.snapshots_sent.clone(),
        );
        r.register(
            "concord_raft_read_index_duration_seconds",
            "Time from starting a ReadIndex round (one batch of linearizable reads) to its \
             confirmation by a quorum",
            self.read_index_seconds.clone(),
        );
        r.register(
            "concord_peer_unreachable",
            "Message batches that could not be handed to a peer's connection",
            self.peer_unreachable.clone(),
        );
    }
}

impl Telemetry for RaftMetrics {
    fn leader_changed(&self, _leader: Option<NodeId>, _term: u64) {
        self.leader_changes.inc();
    }

    fn wal_written(&self, _entries: usize, synced: bool, took: Duration) {
        self.wal_writes.inc();
        self.wal_write_seconds.inc_by(took.as_secs_f64());
        if synced {
            self.wal_fsyncs.inc();
            self.wal_fsync_seconds.observe(took.as_secs_f64());
        }
    }

    fn applied(&self, entries: usize, took: Duration) {
        self.applied_entries.inc_by(entries as u64);
        self.apply_batch_entries.observe(entries as f64);
        self.backend_commit_seconds.observe(took.as_secs_f64());
    }

    fn proposals(&self, accepted: usize, refused: usize) {
        self.proposals_accepted.inc_by(accepted as u64);
        self.proposals_failed.inc_by(refused as u64);
    }

    fn proposals_resent(&self, proposals: usize) {
        self.proposals_resent.inc_by(proposals as u64);
    }

    fn snapshot_installed(&self, bytes: usize, took: Duration) {
        self.snapshot_install_seconds.inc_by(took.as_secs_f64());
        self.snapshots_installed_bytes.inc_by(bytes as u64);
    }

    fn peer_unreachable(&self, _peer: NodeId) {
        self.peer_unreachable.inc();
    }

    fn read_index(&self, took: Duration) {
        self.read_index_seconds.observe(took.as_secs_f64());
    }

    fn peer_sent(&self, peer: NodeId, bytes: usize, queued: usize) {
        self.peer(peer, |s| {
            s.sent.inc_by(bytes as u64);
            s.queued.set(queued as i64);
        });
    }

    fn peer_connected(&self, peer: NodeId) {
        self.peer(peer, |s| {
            s.connects.inc();
        });
    }

    fn peer_direct_link(&self, peer: NodeId, up: bool) {
        self.peer(peer, |s| {
            s.direct_link.set(i64::from(up));
        });
    }

    fn snapshot_sent(&self, peer: NodeId) {
        self.peer(peer, |s| {
            s.snapshots_sent.inc();
        });
    }

    fn peer_received(&self, peer: NodeId, bytes: usize) {
        self.peer(peer, |s| {
            s.received.inc_by(bytes as u64);
        });
    }

    fn peer_round_trip(&self, peer: NodeId, rtt: Duration) {
        self.peer(peer, |s| s.round_trip.observe(rtt.as_secs_f64()));
    }

    fn trace_step(
        &self,
        name: &'static str,
        traceparent: &str,
    ) -> Option<concord_runtime::telemetry::TraceStep> {
        let span = crate::telemetry::linked_step(name, traceparent);
        (!span.is_disabled()).then(|| Box::new(span) as concord_runtime::telemetry::TraceStep)
    }
}

/// The AP side's event-driven metrics: each coordinated quorum request (its latency and
/// why it failed) and each Redis command (calls, latency, errors by their code), as
/// Redis's `INFO commandstats` and `errorstats` count them.
#[derive(Debug)]
pub struct ApTelemetry {
    requests: HistogramFamily<[(&'static str, &'static str); 1]>,
    failed: Family<[(&'static str, &'static str); 2], Counter>,
    command_seconds: HistogramFamily<[(&'static str, String); 1]>,
    command_errors: Family<[(&'static str, String); 2], Counter>,
    /// Each command's latency series, looked up without allocating.
    commands: std::sync::RwLock<std::collections::HashMap<String, Histogram>>,
}

impl Default for ApTelemetry {
    fn default() -> Self {
        ApTelemetry {
            requests: Family::new_with_constructor(round_trip_buckets),
            failed: Family::default(),
            command_seconds: Family::new_with_constructor(round_trip_buckets),
            command_errors: Family::default(),
            commands: Default::default(),
        }
    }
}

impl ApTelemetry {
    fn register(&self, r: &mut Registry) {
        r.register(
            "concord_ap_request_duration_seconds",
            "Coordinated AP requests, from start to answer (op: read or write; failed ones too)",
            self.requests.clone(),
        );
        r.register(
            "concord_ap_requests_failed",
            "Coordinated AP requests that failed, by op and reason (unavailable: no quorum \
             in time; refused: the value refused the operation; store; invalid)",
            self.failed.clone(),
        );
        r.register(
            "concord_redis_command_duration_seconds",
            "Redis commands served, by command (lowercase; unknown for commands Concord does \
             not have), from parsed to answered",
            self.command_seconds.clone(),
        );
        r.register(
            "concord_redis_command_errors",
            "Redis commands answered with an error, by command and error code (ERR, \
             WRONGTYPE, TRYAGAIN, ...)",
            self.command_errors.clone(),
        );
    }

    /// A coordinated request `op` (`read` or `write`) took `took`; `failure` names why it
    /// failed, if it did.
    pub fn request(&self, op: &'static str, took: Duration, failure: Option<&'static str>) {
        self.requests
            .get_or_create(&[("op", op)])
            .observe(took.as_secs_f64());
        if let Some(reason) = failure {
            self.failed
                .get_or_create(&[("op", op), ("reason", reason)])
                .inc();
        }
    }

    /// Redis command `command` (a known command's lowercase name, or `unknown`, so that
    /// clients cannot create series) was answered after `took`, with the error code
    /// `error` if it failed.
    pub fn command(&self, command: &str, took: Duration, error: Option<&str>) {
        let seconds = took.as_secs_f64();
        let known = self
            .commands
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(command)
            .map(|h| h.observe(seconds))
            .is_some();
        if !known {
            let h = self
                .command_seconds
                .get_or_create(&[("command", command.to_string())])
                .clone();
            h.observe(seconds);
            self.commands
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .insert(command.to_string(), h);
        }
        if let Some(code) = error {
            self.command_errors
                .get_or_create(&[
                    ("command", command.to_string()),
                    ("error", code.to_string()),
                ])
                .inc();
        }
    }
}

/// The labels of a gRPC method, as `go-grpc-prometheus` (which etcd uses) names them.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct GrpcLabels {
    /// `unary`, `client_stream`, `server_stream` or `bidi_stream`.
    pub grpc_type: &'static str,
    /// `etcdserverpb.KV`.
    pub grpc_service: String,
    /// `Range`.
    pub grpc_method: String,
}

impl GrpcLabels {
    /// These labels with gRPC status `code`'s name.
    fn with_code(&self, code: u32) -> HandledLabels {
        HandledLabels {
            grpc_type: self.grpc_type,
            grpc_service: self.grpc_service.clone(),
            grpc_method: self.grpc_method.clone(),
            grpc_code: grpc_code_name(code),
        }
    }
}

/// [`GrpcLabels`] and the status code.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct HandledLabels {
    /// `unary`, `client_stream`, `server_stream` or `bidi_stream`.
    pub grpc_type: &'static str,
    /// `etcdserverpb.KV`.
    pub grpc_service: String,
    /// `Range`.
    pub grpc_method: String,
    /// `OK`, `NotFound`, ... (the code's name as Go's `codes.Code` prints it).
    pub grpc_code: &'static str,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// The gRPC server's metrics (client requests, not peer traffic).
#[derive(Debug)]
pub struct GrpcMetrics {
    started: Family<GrpcLabels, Counter>,
    handled: Family<HandledLabels, Counter>,
    handling: HistogramFamily<GrpcLabels>,
    received_bytes: Counter,
    sent_bytes: Counter,
    /// The metrics of each method served, by request path, taken from the families at its
    /// first call. Only these paths are counted: a made-up one (answered `UNIMPLEMENTED`)
    /// adds no series, as go-grpc-prometheus's interceptors never see such calls in etcd.
    methods: std::collections::HashMap<String, MethodSlot>,
}

/// A method served: its labels, and its metrics once it has been called.
#[derive(Debug)]
struct MethodSlot {
    labels: GrpcLabels,
    metrics: std::sync::OnceLock<Arc<MethodMetrics>>,
}

/// One method's metrics, taken from the families once (the handles share their counts):
/// a call then builds no labels and hashes none.
#[derive(Debug)]
struct MethodMetrics {
    labels: GrpcLabels,
    started: Counter,
    handling: Histogram,
    /// `grpc_server_handled_total` with code `OK`, the usual end.
    handled_ok: Counter,
}

fn handling_buckets() -> Histogram {
    // Prometheus's default buckets, as go-grpc-prometheus uses them.
    Histogram::new([
        0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    ])
}

impl Default for GrpcMetrics {
    fn default() -> Self {
        GrpcMetrics {
            started: Family::default(),
            handled: Family::default(),
            handling: Family::new_with_constructor(handling_buckets),
            received_bytes: Counter::default(),
            sent_bytes: Counter::default(),
            methods: served_methods()
                .map(|(path, labels)| {
                    let slot = MethodSlot {
                        labels,
                        metrics: Default::default(),
                    };
                    (path, slot)
                })
                .collect(),
        }
    }
}

/// The name of gRPC status `code`, as Go's `codes.Code.String()` gives it.
pub fn grpc_code_name(code: u32) -> &'static str {
    const NAMES: [&str; 17] = [
        "OK",
        "Canceled",
        "Unknown",
        "InvalidArgument",
        "DeadlineExceeded",
        "NotFound",
        "AlreadyExists",
        "PermissionDenied",
        "ResourceExhausted",
        "FailedPrecondition",
        "Aborted",
        "OutOfRange",
        "Unimplemented",
        "Internal",
        "Unavailable",
        "DataLoss",
        "Unauthenticated",
    ];
    NAMES.get(code as usize).copied().unwrap_or("Unknown")
}

/// The services of the client port (the peer protocol's are served on the peer port).
fn is_client_service(service: &str) -> bool {
    !service.starts_with("concord.peer.")
}

/// The path and labels of every method the client port serves (`/etcdserverpb.KV/Range`).
fn served_methods() -> impl Iterator<Item = (String, GrpcLabels)> {
    concord_proto::GRPC_METHODS
        .iter()
        .filter(|m| is_client_service(m.service))
        .map(|m| {
            let grpc_type = match (m.client_streaming, m.server_streaming) {
                (false, false) => "unary",
                (true, false) => "client_stream",
                (false, true) => "server_stream",
                (true, true) => "bidi_stream",
            };
            let labels = GrpcLabels {
                grpc_type,
                grpc_service: m.service.to_string(),
                grpc_method: m.method.to_string(),
            };
            (format!("/{}/{}", m.service, m.method), labels)
        })
}

impl GrpcMetrics {
    fn register(&self, r: &mut Registry) {
        r.register(
            "grpc_server_started",
            "Total number of RPCs started on the server",
            self.started.clone(),
        );
        r.register(
            "grpc_server_handled",
            "Total number of RPCs completed on the server, regardless of success or failure",
            self.handled.clone(),
        );
        r.register(
            "grpc_server_handling_seconds",
            "Histogram of response latency (seconds) of gRPC that had been application-level \
             handled by the server",
            self.handling.clone(),
        );
        r.register(
            "etcd_network_client_grpc_received_bytes",
            "The total number of bytes received from grpc clients",
            self.received_bytes.clone(),
        );
        r.register(
            "etcd_network_client_grpc_sent_bytes",
            "The total number of bytes sent to grpc clients",
            self.sent_bytes.clone(),
        );
    }

    /// The metrics of the method `path` names (`None`: not a method served).
    fn method(&self, path: &str) -> Option<Arc<MethodMetrics>> {
        let slot = self.methods.get(path)?;
        let m = slot.metrics.get_or_init(|| {
            let labels = slot.labels.clone();
            Arc::new(MethodMetrics {
                started: self.started.get_or_create(&labels).clone(),
                handling: self.handling.get_or_create(&labels).clone(),
                handled_ok: self.handled.get_or_create(&labels.with_code(0)).clone(),
                labels,
            })
        });
        Some(m.clone())
    }

    /// Counts a request to `path` as started; the request body and the response (through
    /// [`GrpcCall::response`]) then count their bytes and the outcome.
    pub fn start(
        self: &Arc<Self>,
        path: &str,
        body: axum::body::Body,
    ) -> (GrpcCall, axum::body::Body) {
        let method = self.method(path);
        if let Some(m) = &method {
            m.started.inc();
        }
        let call = GrpcCall {
            metrics: self.clone(),
            method,
            start: Instant::now(),
        };
        let counted = axum::body::Body::new(Counted {
            inner: body,
            bytes: self.received_bytes.clone(),
            end: None,
        });
        (call, counted)
    }
}

/// A gRPC request in progress.
#[derive(Debug)]
pub struct GrpcCall {
    metrics: Arc<GrpcMetrics>,
    method: Option<Arc<MethodMetrics>>,
    start: Instant,
}

impl GrpcCall {
    /// The response, counted: its bytes as sent, and the call as handled when its last
    /// frame has gone (the status from the trailers, or from the headers of a
    /// trailers-only answer; `Canceled` when the client went away first).
    pub fn response(self, response: axum::response::Response) -> axum::response::Response {
        let early = grpc_status(response.headers());
        let (parts, body) = response.into_parts();
        let sent = self.metrics.sent_bytes.clone();
        let end = Ending {
            call: self,
            code: early,
        };
        let body = axum::body::Body::new(Counted {
            inner: body,
            bytes: sent,
            end: Some(end),
        });
        axum::response::Response::from_parts(parts, body)
    }
}

fn grpc_status(headers: &axum::http::HeaderMap) -> Option<u32> {
    headers.get("grpc-status")?.to_str().ok()?.parse().ok()
}

/// What a response's end records.
#[derive(Debug)]
struct Ending {
    call: GrpcCall,
    code: Option<u32>,
}

impl Ending {
    fn record(self, code: Option<u32>) {
        let Some(m) = self.call.method else {
            return;
        };
        // No status at all: the stream was cut before it ended (the client cancelled).
        let code = self.code.or(code).unwrap_or(1);
        if code == 0 {
            m.handled_ok.inc();
        } else {
            let handled = m.labels.with_code(code);
            self.call.metrics.handled.get_or_create(&handled).inc();
        }
        m.handling.observe(self.call.start.elapsed().as_secs_f64());
    }
}

/// A body that counts its data bytes (and, for a response, records the call's end).
struct Counted {
    inner: axum::body::Body,
    bytes: Counter,
    end: Option<Ending>,
}

impl http_body::Body for Counted {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    self.bytes.inc_by(data.len() as u64);
                }
                if let Some(trailers) = frame.trailers_ref() {
                    let code = grpc_status(trailers);
                    if let Some(end) = self.end.take() {
                        end.record(code);
                    }
                }
            }
            Poll::Ready(None) => {
                if let Some(end) = self.end.take() {
                    end.record(None);
                }
            }
            Poll::Ready(Some(Err(_))) => {
                if let Some(end) = self.end.take() {
                    end.record(Some(2));
                }
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        if let Some(end) = self.end.take() {
            end.record(None);
        }
    }
}

/// The process's CPU time, memory and file descriptors, from `/proc/self` (Linux; none
/// elsewhere), under the names Prometheus's client libraries use.
fn process_samples() -> Vec<Sample> {
    let mut out = Vec::new();
    // USER_HZ is 100 on every Linux architecture's user-space ABI.
    const TICKS_PER_SECOND: f64 = 100.0;
    if let Ok(stat) = std::fs::read_to_string("/proc/self/stat") {
        // The fields after the command name (which may hold spaces, inside parentheses).
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map(|(_, rest)| rest.split_whitespace().collect())
            .unwrap_or_default();
        let field = |n: usize| fields.get(n - 3).and_then(|f| f.parse::<f64>().ok());
        if let (Some(user), Some(system)) = (field(14), field(15)) {
            out.push(Sample::new(
                Kind::Counter,
                "process_cpu_seconds_total",
                "Total user and system CPU time spent in seconds.",
                (user + system) / TICKS_PER_SECOND,
            ));
        }
        let boot = std::fs::read_to_string("/proc/stat").ok().and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("btime "))
                .and_then(|t| t.trim().parse::<f64>().ok())
        });
        if let (Some(boot), Some(start)) = (boot, field(22)) {
            out.push(Sample::new(
                Kind::Gauge,
                "process_start_time_seconds",
                "Start time of the process since unix epoch in seconds.",
                boot + start / TICKS_PER_SECOND,
            ));
        }
    }
    if let Ok(status) = std::fs::read_to_string("/proc/self/status") {
        let kib = |key: &str| {
            status.lines().find_map(|l| {
                let v = l.strip_prefix(key)?.trim().strip_suffix("kB")?;
                v.trim().parse::<f64>().ok().map(|v| v * 1024.0)
            })
        };
        for (key, name, help) in [
            (
                "VmRSS:",
                "process_resident_memory_bytes",
                "Resident memory size in bytes.",
            ),
            (
                "VmSize:",
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes.",
            ),
        ] {
            if let Some(v) = kib(key) {
                out.push(Sample::new(Kind::Gauge, name, help, v));
            }
        }
    }
    if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
        out.push(Sample::new(
            Kind::Gauge,
            "process_open_fds",
            "Number of open file descriptors.",
            fds.count() as f64,
        ));
    }
    let max_fds = std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|l| {
            l.lines()
                .find_map(|l| l.strip_prefix("Max open files"))
                .and_then(|rest| rest.split_whitespace().next()?.parse::<f64>().ok())
        });
    if let Some(max) = max_fds {
        out.push(Sample::new(
            Kind::Gauge,
            "process_max_fds",
            "Maximum number of open file descriptors.",
            max,
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    use concord_testkit::metrics::{parse_metrics, MetricSample};

    fn find<'a>(scrape: &'a [MetricSample], family: &str) -> Vec<&'a MetricSample> {
        scrape.iter().filter(|s| s.family == family).collect()
    }

    /// The labels of the served method `path`.
    fn labels(m: &GrpcMetrics, path: &str) -> GrpcLabels {
        m.methods.get(path).expect("a method served").labels.clone()
    }

    #[test]
    fn only_the_methods_served_are_counted() {
        let m = Arc::new(GrpcMetrics::default());
        let made_up: Vec<String> = (0..300)
            .map(|i| format!("/svc{i}/Call"))
            .chain(
                [
                    "/",
                    "/etcdserverpb.KV",
                    "/etcdserverpb.KV/",
                    "/etcdserverpb.KV/Nope",
                    "/etcdserverpb.KV/Range/x",
                    "/concord.peer.v1.Raft/Send",
                ]
                .map(String::from),
            )
            .collect();
        for path in made_up
            .iter()
            .map(String::as_str)
            .chain(["/etcdserverpb.KV/Put"])
        {
            for code in [0, 5] {
                let (call, _) = m.start(path, axum::body::Body::empty());
                Ending { call, code: None }.record(Some(code));
            }
        }
        let put = labels(&m, "/etcdserverpb.KV/Put");
        assert_eq!(m.started.get_or_create(&put).get(), 2);
        for (code, name) in [(0, "OK"), (5, "NotFound")] {
            let handled = put.with_code(code);
            assert_eq!(handled.grpc_code, name);
            assert_eq!(m.handled.get_or_create(&handled).get(), 1, "{name}");
        }
        // A scrape shows the one method called, and nothing of the made-up paths.
        let mut registry = Registry::default();
        m.register(&mut registry);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("encoded");
        let series: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("grpc_server_") && !l.contains("_bucket{"))
            .collect();
        assert_eq!(series.len(), 5, "{series:#?}"); // started, 2 handled, sum, count
        assert!(
            series.iter().all(|l| l.contains("grpc_method=\"Put\"")),
            "{series:#?}"
        );
    }

    #[test]
    fn every_client_method_is_served_with_its_stream_type() {
        let m = GrpcMetrics::default();
        let services: std::collections::BTreeSet<&str> = m
            .methods
            .values()
            .map(|s| s.labels.grpc_service.as_str())
            .collect();
        assert_eq!(
            services.into_iter().collect::<Vec<_>>(),
            [
                "etcdserverpb.Auth",
                "etcdserverpb.Cluster",
                "etcdserverpb.KV",
                "etcdserverpb.Lease",
                "etcdserverpb.Maintenance",
                "etcdserverpb.Watch",
                "v3electionpb.Election",
                "v3lockpb.Lock"
            ]
        );
        for (path, grpc_type) in [
            ("/etcdserverpb.KV/Range", "unary"),
            ("/etcdserverpb.Watch/Watch", "bidi_stream"),
            ("/etcdserverpb.Lease/LeaseKeepAlive", "bidi_stream"),
            ("/etcdserverpb.Maintenance/Snapshot", "server_stream"),
            ("/v3electionpb.Election/Observe", "server_stream"),
            ("/v3lockpb.Lock/Lock", "unary"),
        ] {
            assert_eq!(labels(&m, path).grpc_type, grpc_type, "{path}");
        }
    }

    #[test]
    fn samples_raft_and_process_metrics_encode_as_typed_families() {
        let m = Metrics::new();
        m.raft.proposals(3, 1);
        m.raft.wal_written(3, true, Duration::from_millis(2));
        m.raft.wal_written(0, false, Duration::from_millis(1));
        m.raft.applied(3, Duration::from_millis(1));
        m.raft.leader_changed(Some(NodeId(1)), 2);
        let samples = vec![
            Sample::new(Kind::Gauge, "etcd_server_has_leader", "h", 1.0),
            Sample::new(Kind::Gauge, "concord_half", "h", 0.5),
            Sample::new(Kind::Counter, "concord_x_total", "c", 7.0).label("member", "a"),
            Sample::new(Kind::Counter, "concord_x_total", "c", 8.0).label("member", "b"),
        ];
        let text = m.encode(samples);
        let scrape = parse_metrics(&text).unwrap_or_else(|e| panic!("{e}:\n{text}"));
        let one = |family: &str, kind: &str| {
            let found = find(&scrape, family);
            assert_eq!(found.len(), 1, "{family}");
            assert_eq!(found[0].kind, kind, "{family}");
            found[0].value
        };
        assert_eq!(one("etcd_server_leader_changes_seen_total", "counter"), 1.0);
        assert_eq!(one("etcd_server_proposals_failed_total", "counter"), 1.0);
        assert_eq!(one("concord_raft_proposals_accepted_total", "counter"), 3.0);
        assert_eq!(one("concord_wal_fsyncs_total", "counter"), 1.0);
        assert_eq!(one("etcd_server_has_leader", "gauge"), 1.0);
        assert_eq!(one("concord_half", "gauge"), 0.5);
        assert!(one("process_cpu_seconds_total", "counter") >= 0.0);
        assert!(one("process_open_fds", "gauge") >= 3.0);
        assert!(one("process_resident_memory_bytes", "gauge") > 1e6);
        assert!(
            text.contains("etcd_server_has_leader 1\n"),
            "integers as integers"
        );
        let x = find(&scrape, "concord_x_total");
        assert_eq!(x.len(), 2);
        assert!(x
            .iter()
            .any(|s| s.has(&[("member", "b")]) && s.value == 8.0));
        assert!(x.iter().all(|s| s.kind == "counter"));
        let fsync = find(&scrape, "etcd_disk_wal_fsync_duration_seconds");
        assert_eq!((fsync[0].kind.as_str(), fsync[0].value), ("histogram", 1.0));
        assert!(
            fsync[0].buckets.contains(&(0.004, 1.0)),
            "{:?}",
            fsync[0].buckets
        );
        assert!(
            fsync[0].buckets.contains(&(0.001, 0.0)),
            "{:?}",
            fsync[0].buckets
        );
        // The scrape's samples are not kept for the next one.
        let next = parse_metrics(&m.encode(Vec::new())).unwrap();
        assert!(find(&next, "concord_x_total").is_empty());
    }

    #[test]
    fn grpc_paths_and_codes_are_named_as_go_grpc_prometheus_does() {
        let l = labels(&GrpcMetrics::default(), "/etcdserverpb.KV/Range");
        assert_eq!(
            (l.grpc_type, l.grpc_service.as_str(), l.grpc_method.as_str()),
            ("unary", "etcdserverpb.KV", "Range")
        );
        assert_eq!(grpc_code_name(0), "OK");
        assert_eq!(grpc_code_name(14), "Unavailable");
        assert_eq!(grpc_code_name(99), "Unknown");
    }

    #[tokio::test]
    async fn a_grpc_call_counts_bytes_and_its_status_from_the_trailers() {
        use http_body_util::BodyExt as _;
        let m = Arc::new(GrpcMetrics::default());
        let (call, request) = m.start("/etcdserverpb.KV/Put", axum::body::Body::from("12345"));
        assert_eq!(request.collect().await.unwrap().to_bytes().len(), 5);
        let mut trailers = axum::http::HeaderMap::new();
        trailers.insert("grpc-status", "5".parse().unwrap());
        let body = http_body_util::StreamBody::new(futures_stream(vec![
            http_body::Frame::data(Bytes::from_static(b"abc")),
            http_body::Frame::trailers(trailers),
        ]));
        let response = call.response(axum::response::Response::new(axum::body::Body::new(body)));
        response.into_body().collect().await.unwrap();
        assert_eq!(m.received_bytes.get(), 5);
        assert_eq!(m.sent_bytes.get(), 3);
        let labels = labels(&m, "/etcdserverpb.KV/Put");
        assert_eq!(m.started.get_or_create(&labels).get(), 1);
        let handled = |code| HandledLabels {
            grpc_type: "unary",
            grpc_service: "etcdserverpb.KV".into(),
            grpc_method: "Put".into(),
            grpc_code: code,
        };
        assert_eq!(m.handled.get_or_create(&handled("NotFound")).get(), 1);
        assert_eq!(m.handled.get_or_create(&handled("OK")).get(), 0);
        // A response dropped before its end counts as cancelled.
        let (call, _) = m.start("/etcdserverpb.KV/Put", axum::body::Body::empty());
        drop(call.response(axum::response::Response::new(axum::body::Body::from("x"))));
        assert_eq!(m.handled.get_or_create(&handled("Canceled")).get(), 1);
    }

    fn futures_stream(
        frames: Vec<http_body::Frame<Bytes>>,
    ) -> impl tokio_stream::Stream<Item = Result<http_body::Frame<Bytes>, axum::Error>> {
        tokio_stream::iter(frames.into_iter().map(Ok))
    }
}
