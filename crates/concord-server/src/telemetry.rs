//! Distributed tracing: the spans Concord records for OpenTelemetry, and the W3C trace
//! context (`traceparent`) they carry between processes.
//!
//! Every span here has the target [`TARGET`] at `DEBUG` level, so it exists only when the
//! process installed a layer that wants it (the `concord` binary does when
//! `--otlp-endpoint` is set); otherwise creating one is a disabled-callsite check and
//! nothing is allocated. Spans name operations, never keys or values: no user data
//! leaves the process in a trace.
//!
//! * A gRPC request to the client URL continues the caller's trace when its metadata
//!   holds a `traceparent` ([`request_span`]).
//! * The AP coordinator sends its span's context with every replica apply
//!   (`ReplicaApply.traceparent`); the replica's apply is a child of it
//!   ([`remote_span`]), so one trace shows the coordinator and its replicas.

use std::collections::HashMap;

use opentelemetry::propagation::{Extractor, Injector};
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

/// The target of every tracing span.
pub const TARGET: &str = "concord::trace";

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
    let span = tracing::debug_span!(
        target: TARGET,
        "request",
        otel.name = name,
        otel.kind = "server",
        rpc.system = "grpc"
    );
    if !span.is_disabled() && headers.contains_key("traceparent") {
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
/// message); a span of its own trace when that is empty or malformed.
pub fn remote_span(name: &'static str, traceparent: &str) -> Span {
    let span = tracing::debug_span!(target: TARGET, "peer", otel.name = name, otel.kind = "server");
    if !span.is_disabled() && !traceparent.is_empty() {
        let fields = Fields(HashMap::from([(
            "traceparent".to_string(),
            traceparent.to_string(),
        )]));
        let parent = opentelemetry::global::get_text_map_propagator(|p| p.extract(&fields));
        let _ = span.set_parent(parent);
    }
    span
}

/// A span for a step of the current request (`raft.propose`, `ap.write`, ...).
pub fn step(name: &'static str) -> Span {
    tracing::debug_span!(target: TARGET, "step", otel.name = name)
}

/// The span of one Redis command (`SET`), a root span: RESP carries no trace context.
pub fn command_span(command: &[u8]) -> Span {
    tracing::debug_span!(
        target: TARGET,
        "request",
        otel.name = %String::from_utf8_lossy(command).to_ascii_uppercase(),
        otel.kind = "server",
        rpc.system = "redis"
    )
}
