//! Distributed tracing: the spans Concord records for OpenTelemetry, and the W3C trace
//! context (`traceparent`) they carry between processes.
//!
//! Every span here has the target [`TARGET`] at `DEBUG` level, so it exists only when the
//! process installed a layer that wants it (the `concord` binary does when
//! `--otlp-endpoint` is set); otherwise creating one is a disabled-callsite check and
//! nothing is allocated. Even then, a request starts a trace only when it is sampled
//! ([`set_sampling_ratio`], decided here before any span exists, so an unsampled request
//! costs one random draw) or when its caller sent a `traceparent`; the steps and the
//! replicas' spans exist only inside a traced request. Spans name operations, never keys
//! or values: no user data leaves the process in a trace.
//!
//! * A gRPC request to the client URL continues the caller's trace when its metadata
//!   holds a `traceparent` ([`request_span`]).
//! * The AP coordinator sends its span's context with every replica apply
//!   (`ReplicaApply.traceparent`); the replica's apply is a child of it
//!   ([`remote_span`]), so one trace shows the coordinator and its replicas.
//! * A traced Raft proposal carries its `raft.propose` span's context to every member
//!   beside the log entry (concord-runtime's `traces`); each member's WAL append, the
//!   leader's replication and each member's apply of the entry are its children
//!   ([`linked_step`]), so one trace shows the leader and its followers.

use std::collections::HashMap;
use std::hash::BuildHasher as _;
use std::sync::atomic::{AtomicU64, Ordering};

use opentelemetry::propagation::{Extractor, Injector};
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

/// The target of every tracing span.
pub const TARGET: &str = "concord::trace";

/// The fraction of requests without a caller's context that start a trace, as the bits
/// of an `f64` (0 until the binary sets it).
static RATIO: AtomicU64 = AtomicU64::new(0);

/// Sets the fraction (0 to 1) of requests without a caller's context that start a trace.
pub fn set_sampling_ratio(ratio: f64) {
    RATIO.store(ratio.clamp(0.0, 1.0).to_bits(), Ordering::Relaxed);
}

/// Whether a request without a caller's context starts a trace.
fn sampled() -> bool {
    let ratio = f64::from_bits(RATIO.load(Ordering::Relaxed));
    if ratio <= 0.0 {
        return false;
    }
    if ratio >= 1.0 {
        return true;
    }
    static DRAWS: AtomicU64 = AtomicU64::new(0);
    static KEY: std::sync::OnceLock<std::hash::RandomState> = std::sync::OnceLock::new();
    let draw = KEY
        .get_or_init(std::hash::RandomState::new)
        .hash_one(DRAWS.fetch_add(1, Ordering::Relaxed));
    (draw as f64) < ratio * (u64::MAX as f64)
}

/// Whether tracing spans are wanted at all (an exporter is installed).
fn wanted() -> bool {
    tracing::enabled!(target: TARGET, tracing::Level::DEBUG)
}

struct Headers<'a>(&'a axum::http::HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

struct Fields(HashMap<String, String>);

impl Injector for Fields {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key.to_string(), value);
    }
}

impl Extractor for Fields {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(String::as_str).collect()
    }
}

/// The span of a client request named `name` (`etcdserverpb.KV/Put`), a child of the
/// caller's trace when `headers` carry a W3C `traceparent`.
pub fn request_span(name: &str, headers: &axum::http::HeaderMap) -> Span {
    let continued = headers.contains_key("traceparent");
    if !wanted() || !(continued || sampled()) {
        return Span::none();
    }
    let span = tracing::debug_span!(
        target: TARGET,
        "request",
        otel.name = name,
        otel.kind = "server",
        rpc.system = "grpc"
    );
    if continued {
        let parent =
            opentelemetry::global::get_text_map_propagator(|p| p.extract(&Headers(headers)));
        let _ = span.set_parent(parent);
    }
    span
}

/// The W3C `traceparent` of the current span, or empty when there is none (tracing off,
/// or not sampled).
pub fn current_traceparent() -> String {
    let span = Span::current();
    if span.is_disabled() {
        return String::new();
    }
    let mut fields = Fields(HashMap::new());
    opentelemetry::global::get_text_map_propagator(|p| {
        p.inject_context(&span.context(), &mut fields)
    });
    fields.0.remove("traceparent").unwrap_or_default()
}

/// A span named `name` whose parent is the remote span `traceparent` (from a peer's
/// message); none when that is empty (the request is not traced).
pub fn remote_span(name: &'static str, traceparent: &str) -> Span {
    if traceparent.is_empty() || !wanted() {
        return Span::none();
    }
    let span = tracing::debug_span!(target: TARGET, "peer", otel.name = name, otel.kind = "server");
    with_parent(span, traceparent)
}

/// A span for a step of this member's work on a traced proposal (`raft.apply`, ...),
/// whose parent is the span `traceparent` that proposed it, here or on another member.
pub fn linked_step(name: &'static str, traceparent: &str) -> Span {
    if traceparent.is_empty() || !wanted() {
        return Span::none();
    }
    let span = tracing::debug_span!(target: TARGET, "step", otel.name = name);
    with_parent(span, traceparent)
}

fn with_parent(span: Span, traceparent: &str) -> Span {
    let fields = Fields(HashMap::from([(
        "traceparent".to_string(),
        traceparent.to_string(),
    )]));
    let parent = opentelemetry::global::get_text_map_propagator(|p| p.extract(&fields));
    let _ = span.set_parent(parent);
    span
}

/// A span for a step of the current request (`raft.propose`, `ap.write`, ...); none
/// outside a traced request.
pub fn step(name: &'static str) -> Span {
    if Span::current().is_none() {
        return Span::none();
    }
    tracing::debug_span!(target: TARGET, "step", otel.name = name)
}

/// The span of one Redis command (`SET`) when it is sampled, a root span: RESP carries
/// no trace context.
pub fn command_span(command: &[u8]) -> Span {
    if !wanted() || !sampled() {
        return Span::none();
    }
    tracing::debug_span!(
        target: TARGET,
        "request",
        otel.name = %String::from_utf8_lossy(command).to_ascii_uppercase(),
        otel.kind = "server",
        rpc.system = "redis"
    )
}
