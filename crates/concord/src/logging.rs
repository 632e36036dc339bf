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

/// Installs the global subscriber; every line names the member (`member_name` in JSON, the
/// first word in text). The filter can be replaced while the process runs (`PUT
/// /v1/log-level`, through [`concord_server::logs`]). Returns a warning to log, if any.
/// Fails only if a subscriber is already installed.
pub fn init(settings: &LogSettings, member: &str) -> Result<Option<String>, String> {
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
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
        .event_format(format);
    tracing_subscriber::registry()
        .with(filter)
        .with(fmt)
        .try_init()
        .map_err(|e| format!("cannot set up logging: {e}"))?;
    concord_server::logs::register(std::sync::Arc::new(Reloadable {
        handle,
        spec: std::sync::Mutex::new(spec),
    }));
    Ok(warning)
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
        if !self.json {
            write!(writer, "{} ", self.member)?;
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
                write!(writer, "{{\"member_name\":{name},{rest}")
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
