//! Logging to stderr with `tracing-subscriber`: text (the default) or JSON, one event per
//! line (text is coloured only on a terminal). `RUST_LOG`, when set, replaces the filter that `--log-level` would give.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::cli::{LogFormat, LogLevel};
use crate::config::LogSettings;

/// Libraries whose debug output is per-frame noise: kept at `warn` unless `RUST_LOG`
/// asks for them.
const NOISY: &[&str] = &["h2", "hyper", "hyper_util", "tower", "tonic", "mio", "want"];

/// The filter directives for a `--log-level`.
pub fn directives(level: LogLevel) -> String {
    let mut d = level.as_str().to_string();
    if matches!(level, LogLevel::Debug | LogLevel::Info) {
        for lib in NOISY {
            d.push_str(&format!(",{lib}=warn"));
        }
    }
    d
}

/// Chooses the filter. Returns a warning when `RUST_LOG` is invalid (the `--log-level`
/// filter is used instead).
pub fn filter(settings: &LogSettings) -> (EnvFilter, Option<String>) {
    let fallback = || EnvFilter::new(directives(settings.level));
    match &settings.rust_log {
        Some(spec) => match EnvFilter::try_new(spec) {
            Ok(f) => (f, None),
            Err(e) => (
                fallback(),
                Some(format!(
                    "RUST_LOG={spec:?} is not a valid filter ({e}); using --log-level {}",
                    settings.level.as_str()
                )),
            ),
        },
        None => (fallback(), None),
    }
}

/// What must outlive the server: the trace exporter, flushed by [`Tracing::shutdown`].
#[derive(Default)]
pub struct Tracing(Option<opentelemetry_sdk::trace::SdkTracerProvider>);

impl Tracing {
    /// Exports the spans still buffered (within the exporter's timeout).
    pub fn shutdown(self) {
        if let Some(provider) = self.0 {
            if let Err(e) = provider.shutdown() {
                eprintln!("concord: flushing traces failed: {e}");
            }
        }
    }
}

/// The OTLP/HTTP endpoint of traces: `url`, with `/v1/traces` when it names no path.
pub fn traces_url(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    match rest.split_once('/') {
        Some((_, path)) if !path.is_empty() => url.to_string(),
        _ => format!("{}/v1/traces", url.trim_end_matches('/')),
    }
}

/// The tracer provider for `--otlp-endpoint` (OTLP over HTTP/protobuf, batched on a
/// thread of its own).
fn tracer_provider(
    endpoint: &str,
    member: &str,
) -> Result<opentelemetry_sdk::trace::SdkTracerProvider, String> {
    use opentelemetry_otlp::WithExportConfig as _;
    use opentelemetry_sdk::trace::Sampler;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_endpoint(traces_url(endpoint))
        .build()
        .map_err(|e| format!("--otlp-endpoint {endpoint}: {e}"))?;
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name("concord")
        .with_attribute(opentelemetry::KeyValue::new(
            "service.instance.id",
            member.to_string(),
        ))
        .build();
    Ok(opentelemetry_sdk::trace::SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        // Which requests start a trace is decided before their span exists
        // (`concord_server::telemetry`); a caller's unsampled context is still honoured.
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::AlwaysOn)))
        .with_resource(resource)
        .build())
}

/// Installs the global subscriber; every line names the member (`member_name` in JSON, the
/// first word in text) and, inside a traced request, its trace id. The filter can be
/// replaced while the process runs (`PUT /v1/log-level`, through
/// [`concord_server::logs`]). With `--otlp-endpoint`, Concord's spans
/// ([`concord_server::telemetry`]) are exported there. Returns the tracing handle and a
/// warning to log, if any. Fails only if a subscriber is already installed or the
/// endpoint is not a URL.
pub fn init(settings: &LogSettings, member: &str) -> Result<(Tracing, Option<String>), String> {
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    use tracing_subscriber::Layer as _;
    let (filter, warning) = filter(settings);
    let spec = filter.to_string();
    let (filter, handle) = tracing_subscriber::reload::Layer::new(filter);
    let json = settings.format == LogFormat::Json;
    let format = Named {
        member: member.to_string(),
        json,
        text: tracing_subscriber::fmt::format::Format::default(),
        json_format: tracing_subscriber::fmt::format::Format::default()
            .json()
            .flatten_event(true),
    };
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(!json && std::io::stderr().is_terminal())
        .event_format(format)
        .with_filter(filter);
    let provider = match &settings.otlp_endpoint {
        Some(endpoint) => Some(tracer_provider(endpoint, member)?),
        None => None,
    };
    let spans = provider.as_ref().map(|p| {
        use opentelemetry::trace::TracerProvider as _;
        concord_server::telemetry::set_sampling_ratio(settings.otlp_sampling_ratio);
        opentelemetry::global::set_text_map_propagator(
            opentelemetry_sdk::propagation::TraceContextPropagator::new(),
        );
        tracing_opentelemetry::layer()
            .with_tracer(p.tracer("concord"))
            .with_filter(
                tracing_subscriber::filter::Targets::new()
                    .with_target(concord_server::telemetry::TARGET, tracing::Level::DEBUG),
            )
    });
    tracing_subscriber::registry()
        .with(fmt)
        .with(spans)
        .try_init()
        .map_err(|e| format!("cannot set up logging: {e}"))?;
    concord_server::logs::register(std::sync::Arc::new(Reloadable {
        handle,
        spec: std::sync::Mutex::new(spec),
    }));
    Ok((Tracing(provider), warning))
}

type FilterHandle = tracing_subscriber::reload::Handle<EnvFilter, tracing_subscriber::Registry>;

/// The installed filter, replaceable at run time.
struct Reloadable {
    handle: FilterHandle,
    spec: std::sync::Mutex<String>,
}

impl concord_server::logs::LogControl for Reloadable {
    fn filter(&self) -> String {
        self.spec.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn set_filter(&self, spec: &str) -> Result<(), String> {
        // A bare level gets the same quieting of noisy libraries as --log-level.
        let spec = match spec.to_ascii_lowercase().as_str() {
            "debug" => directives(LogLevel::Debug),
            "info" => directives(LogLevel::Info),
            "warn" => directives(LogLevel::Warn),
            "error" => directives(LogLevel::Error),
            _ => spec.to_string(),
        };
        let filter = EnvFilter::try_new(&spec)
            .map_err(|e| format!("{spec:?} is not a log level or filter: {e}"))?;
        self.handle
            .reload(filter)
            .map_err(|e| format!("cannot replace the filter: {e}"))?;
        *self.spec.lock().unwrap_or_else(|e| e.into_inner()) = spec;
        Ok(())
    }
}

/// The trace id of the current span, when it belongs to a sampled trace.
fn trace_id() -> Option<String> {
    use opentelemetry::trace::TraceContextExt as _;
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;
    let span = tracing::Span::current();
    if span.is_disabled() {
        return None;
    }
    let context = span.context();
    let span_context = context.span().span_context().clone();
    (span_context.is_valid() && span_context.is_sampled())
        .then(|| span_context.trace_id().to_string())
}

/// The default text or JSON line, with the member's name.
struct Named {
    member: String,
    json: bool,
    text: tracing_subscriber::fmt::format::Format,
    json_format: tracing_subscriber::fmt::format::Format<tracing_subscriber::fmt::format::Json>,
}

impl<S, N> tracing_subscriber::fmt::FormatEvent<S, N> for Named
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    N: for<'a> tracing_subscriber::fmt::FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &tracing_subscriber::fmt::FmtContext<'_, S, N>,
        mut writer: tracing_subscriber::fmt::format::Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let trace = trace_id();
        if !self.json {
            write!(writer, "{} ", self.member)?;
            if let Some(t) = &trace {
                write!(writer, "trace_id={t} ")?;
            }
            return self.text.format_event(ctx, writer, event);
        }
        // The JSON object, with the member's name as its first field.
        let mut line = String::new();
        self.json_format.format_event(
            ctx,
            tracing_subscriber::fmt::format::Writer::new(&mut line),
            event,
        )?;
        match line.strip_prefix('{') {
            Some(rest) => {
                let name = serde_json::Value::String(self.member.clone());
                write!(writer, "{{\"member_name\":{name},")?;
                if let Some(t) = &trace {
                    write!(writer, "\"trace_id\":\"{t}\",")?;
                }
                writer.write_str(rest)
            }
            None => writer.write_str(&line),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn level_directives_parse() {
        for level in [
            LogLevel::Debug,
            LogLevel::Info,
            LogLevel::Warn,
            LogLevel::Error,
        ] {
            EnvFilter::try_new(directives(level)).unwrap();
        }
        assert_eq!(directives(LogLevel::Error), "error");
        assert!(directives(LogLevel::Debug).starts_with("debug,h2=warn"));
    }

    #[test]
    fn rust_log_overrides_and_bad_rust_log_falls_back() {
        let mut s = LogSettings {
            level: LogLevel::Warn,
            format: LogFormat::Text,
            rust_log: Some("concord=trace".into()),
            otlp_endpoint: None,
            otlp_sampling_ratio: 0.01,
        };
        let (f, w) = filter(&s);
        assert!(w.is_none());
        assert_eq!(f.to_string(), "concord=trace");
        s.rust_log = Some("=[".into());
        let (f, w) = filter(&s);
        assert!(w.unwrap().contains("RUST_LOG"));
        assert_eq!(f.to_string(), "warn");
    }
}
