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

/// Installs the global subscriber. Returns a warning to log, if any. Fails only if a
/// subscriber is already installed.
pub fn init(settings: &LogSettings) -> Result<Option<String>, String> {
    let (filter, warning) = filter(settings);
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let result = match settings.format {
        LogFormat::Text => builder
            .with_ansi(std::io::stderr().is_terminal())
            .try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    result.map_err(|e| format!("cannot set up logging: {e}"))?;
    Ok(warning)
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
