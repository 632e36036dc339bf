//! Turns the command line, the environment and the config file into one
//! [`ServerConfig`] plus logging settings.
//!
//! Precedence, highest first: command line, `CONCORD_<FLAG>` environment variables, the
//! TOML file named by `--config` (or `CONCORD_CONFIG`), the defaults of
//! [`ServerConfig::new`]. Values from the environment and the file are parsed by the same
//! clap definitions as the command line (one `--flag=value` at a time), so they obey the
//! same rules and their errors name the variable or key at fault.
//!
//! The environment is passed in as a map, never read here, so tests can run in parallel.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::FromArgMatches;
use concord_server::server::{ClusterState, ServerConfig};

use crate::cli::{self, InitialClusterState, LogFormat, LogLevel, ServerArgs};

/// The environment, by variable name.
pub type EnvMap = BTreeMap<String, String>;

/// The process environment, skipping variables that are not valid UTF-8.
pub fn process_env() -> EnvMap {
    std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .collect()
}

/// Why the settings could not be put together. Each message names the flag, variable or
/// key at fault.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// An environment variable has a bad value.
    #[error("environment variable {var}: {message}")]
    Env {
        /// The variable.
        var: String,
        /// What is wrong.
        message: String,
    },
    /// The config file cannot be read.
    #[error("cannot read config file {path}: {source}")]
    ReadFile {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The config file is not valid TOML.
    #[error("config file {path} is not valid TOML: {message}")]
    Toml {
        /// The file.
        path: PathBuf,
        /// The parser's message.
        message: String,
    },
    /// A key of the config file is unknown, repeated or has a bad value.
    #[error("config file {path}: {message}")]
    FileKey {
        /// The file.
        path: PathBuf,
        /// What is wrong, naming the key.
        message: String,
    },
    /// The settings are inconsistent (checked by [`ServerConfig::validate`]).
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// How to log.
#[derive(Clone, Debug, PartialEq)]
pub struct LogSettings {
    /// `--log-level`.
    pub level: LogLevel,
    /// `--log-format`.
    pub format: LogFormat,
    /// `RUST_LOG`, which overrides `level` when set and not empty.
    pub rust_log: Option<String>,
    /// `--otlp-endpoint`: where traces go (none: no spans recorded).
    pub otlp_endpoint: Option<String>,
    /// `--otlp-sampling-ratio`: the fraction of requests that start a trace.
    pub otlp_sampling_ratio: f64,
}

/// The default of `--otlp-sampling-ratio`.
pub const DEFAULT_SAMPLING_RATIO: f64 = 0.01;

/// Everything `concord server` needs to run.
#[derive(Clone, Debug)]
pub struct Settings {
    /// The member's configuration.
    pub server: ServerConfig,
    /// Logging.
    pub log: LogSettings,
    /// Warnings to log once logging is set up: accepted-but-unimplemented etcd flags and
    /// unrecognized `CONCORD_*` variables. Each appears once.
    pub warnings: Vec<String>,
}

/// The warning logged for an etcd flag that Concord accepts but does not implement.
pub fn compat_warning(flag: &str) -> String {
    format!("flag --{flag} is accepted for etcd compatibility but not implemented")
}

/// Layers `cli` over `env` over the config file over the defaults.
pub fn resolve(cli: ServerArgs, env: &EnvMap) -> Result<Settings, ConfigError> {
    let mut warnings = Vec::new();
    let from_env = env_layer(env, &mut warnings)?;
    let config_path = cli.config.clone().or_else(|| from_env.config.clone());
    let from_file = match config_path {
        Some(path) => {
            let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::ReadFile {
                path: path.clone(),
                source,
            })?;
            file_layer(&path, &text)?
        }
        None => ServerArgs::default(),
    };
    let merged = cli.or(from_env).or(from_file);
    let rust_log = env
        .get("RUST_LOG")
        .filter(|v| !v.trim().is_empty())
        .cloned();
    for flag in &merged.compat.given {
        warnings.push(compat_warning(flag));
    }
    match merged.auth_token.as_deref().map(str::trim) {
        None | Some("simple") | Some("jwt") => {}
        Some(t) if t.starts_with("jwt,") => warnings.push(
            "--auth-token jwt options (keys, sign-method) are not used: every token is \
             HMAC-SHA256-signed with a secret the cluster replicates (docs/security.md)"
                .into(),
        ),
        Some(other) => {
            return Err(ConfigError::Invalid(format!(
                "--auth-token must be simple or jwt[,options], not {other:?}"
            )))
        }
    }
    let mut seen = BTreeSet::new();
    warnings.retain(|w| seen.insert(w.clone()));
    let ratio = merged.otlp_sampling_ratio.unwrap_or(DEFAULT_SAMPLING_RATIO);
    if !(0.0..=1.0).contains(&ratio) {
        return Err(ConfigError::Invalid(format!(
            "--otlp-sampling-ratio must be from 0 to 1, not {ratio}"
        )));
    }
    let log = LogSettings {
        level: merged.log_level.unwrap_or_default(),
        format: merged.log_format.unwrap_or_default(),
        rust_log,
        otlp_endpoint: merged
            .otlp_endpoint
            .clone()
            .filter(|e| !e.trim().is_empty()),
        otlp_sampling_ratio: ratio,
    };
    let server = to_server_config(merged);
    server.validate().map_err(ConfigError::Invalid)?;
    Ok(Settings {
        server,
        log,
        warnings,
    })
}

/// Applies the given settings over [`ServerConfig::new`]'s defaults.
pub fn to_server_config(args: ServerArgs) -> ServerConfig {
    let mut c = ServerConfig::new(args.name.unwrap_or_else(|| "default".to_string()));
    if let Some(d) = args.data_dir {
        c.data_dir = d;
    }
    match (&args.listen_redis_urls, &args.listen_client_urls) {
        (Some(u), _) => c.listen_redis_urls = u.0.clone(),
        // With no listen flags at all, Redis clients find Concord where they look first.
        (None, None) => c.listen_redis_urls = vec!["redis://127.0.0.1:6379".into()],
        (None, Some(_)) => {}
    }
    if let Some(u) = args.listen_client_urls {
        c.listen_client_urls = u.0;
    }
    if let Some(u) = args.advertise_client_urls {
        c.advertise_client_urls = u.0;
    }
    if let Some(u) = args.listen_peer_urls {
        c.listen_peer_urls = u.0;
    }
    if let Some(u) = args.initial_advertise_peer_urls {
        c.initial_advertise_peer_urls = u.0;
    }
    if let Some(m) = args.initial_cluster {
        c.initial_cluster = m.0;
    }
    if let Some(s) = args.initial_cluster_state {
        c.initial_cluster_state = match s {
            InitialClusterState::New => ClusterState::New,
            InitialClusterState::Existing => ClusterState::Existing,
        };
    }
    if let Some(t) = args.initial_cluster_token {
        c.initial_cluster_token = t;
    }
    if let Some(ms) = args.heartbeat_interval {
        c.heartbeat_interval = Duration::from_millis(ms);
    }
    if let Some(ms) = args.election_timeout {
        c.election_timeout = Duration::from_millis(ms);
    }
    if let Some(on) = args.lease_reads {
        c.lease_reads = on;
    }
    if let Some(on) = args.peer_direct_links {
        c.peer_direct_links = on;
    }
    if let Some(n) = args.snapshot_count {
        c.snapshot_count = n;
    }
    if let Some(n) = args.quota_backend_bytes {
        c.quota_backend_bytes = n;
    }
    if let Some(n) = args.backend_cache_bytes {
        c.backend_cache_bytes = n;
    }
    if let Some(n) = args.backend_batches_per_commit {
        c.backend_batches_per_commit = n;
    }
    if let Some(n) = args.max_request_bytes {
        c.max_request_bytes = n;
    }
    if let Some(n) = args.max_txn_ops {
        c.max_txn_ops = n;
    }
    if let Some(n) = args.max_concurrent_streams {
        c.max_concurrent_streams = n;
    }
    if let Some(n) = args.max_client_connections {
        c.max_client_connections = n;
    }
    if let Some(ms) = args.lease_checkpoint_interval {
        c.lease_checkpoint_interval = Duration::from_millis(ms);
    }
    if let Some(ms) = args.request_timeout {
        c.request_timeout = Duration::from_millis(ms);
    }
    if let Some(ms) = args.gossip_interval {
        c.set_gossip_interval(Duration::from_millis(ms));
    }
    if let Some(phi) = args.phi_threshold {
        c.gossip.phi.threshold = phi;
    }
    if let Some(ms) = args.phi_acceptable_pause {
        c.gossip.phi.acceptable_heartbeat_pause = Duration::from_millis(ms);
    }
    if let Some(ms) = args.phi_min_std_deviation {
        c.gossip.phi.min_std_deviation = Duration::from_millis(ms);
    }
    if let Some(n) = args.ap_max_hints {
        c.ap.max_hints_per_member = n;
    }
    if let Some(ms) = args.ap_anti_entropy_interval {
        c.ap.anti_entropy_interval = Duration::from_millis(ms.max(1));
    }
    if let Some(ms) = args.ap_tombstone_grace {
        c.ap.tombstone_grace = Duration::from_millis(ms);
    }
    if let Some(b) = args.ap_only {
        c.ap_only = b;
    }
    c.client_tls = concord_server::server::TlsFlags {
        cert_file: args.cert_file,
        key_file: args.key_file,
        trusted_ca_file: args.trusted_ca_file,
        client_cert_auth: args.client_cert_auth.unwrap_or(false),
        auto_tls: args.auto_tls.unwrap_or(false),
    };
    c.peer_tls = concord_server::server::TlsFlags {
        cert_file: args.peer_cert_file,
        key_file: args.peer_key_file,
        trusted_ca_file: args.peer_trusted_ca_file,
        client_cert_auth: args.peer_client_cert_auth.unwrap_or(false),
        auto_tls: args.peer_auto_tls.unwrap_or(false),
    };
    if let Some(s) = args.auth_token_ttl {
        c.auth_token_ttl = Duration::from_secs(s.max(1));
    }
    c.tls_policy = concord_tls::Policy {
        min_version: args.tls_min_version,
        max_version: args.tls_max_version,
        cipher_suites: args
            .cipher_suites
            .iter()
            .flat_map(|s| s.split(','))
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect(),
    };
    c
}

/// Parses one `--flag=value` with the server's clap definitions.
fn parse_one(flag: &str, value: &str) -> Result<ServerArgs, String> {
    let argv: [OsString; 1] = [format!("--{flag}={value}").into()];
    let parsed = cli::server_command()
        .try_get_matches_from(argv)
        .and_then(|m| ServerArgs::from_arg_matches(&m));
    parsed.map_err(|e| first_line(&e.to_string()))
}

/// The first line of a clap error, without its `error: ` prefix.
fn first_line(message: &str) -> String {
    let line = message.lines().next().unwrap_or(message).trim();
    line.strip_prefix("error: ").unwrap_or(line).to_string()
}

/// The `CONCORD_*` variables, parsed. Unrecognized ones become warnings.
fn env_layer(env: &EnvMap, warnings: &mut Vec<String>) -> Result<ServerArgs, ConfigError> {
    let by_var: BTreeMap<String, String> = cli::server_flags()
        .into_iter()
        .map(|f| (cli::env_name(&f), f))
        .collect();
    let mut layer = ServerArgs::default();
    for (var, value) in env.range(cli::ENV_PREFIX.to_string()..) {
        let Some(rest) = var.strip_prefix(cli::ENV_PREFIX) else {
            break;
        };
        if let Some(flag) = by_var.get(var) {
            let parsed = parse_one(flag, value).map_err(|message| ConfigError::Env {
                var: var.clone(),
                message,
            })?;
            layer = layer.or(parsed);
        } else {
            let flag = rest.to_ascii_lowercase().replace('_', "-");
            if cli::is_compat_prefixed(&flag) {
                warnings.push(compat_warning(&flag));
            } else {
                warnings.push(format!(
                    "environment variable {var} is not a concord server flag; ignored"
                ));
            }
        }
    }
    Ok(layer)
}

/// Parses a config file's text. Keys are flag names, with `-` or `_`.
pub fn file_layer(path: &Path, text: &str) -> Result<ServerArgs, ConfigError> {
    let table: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| ConfigError::Toml {
            path: path.to_path_buf(),
            message: e.message().to_string(),
        })?;
    let known = cli::server_flags();
    let key_error = |message: String| ConfigError::FileKey {
        path: path.to_path_buf(),
        message,
    };
    let mut layer = ServerArgs::default();
    let mut seen: BTreeMap<String, String> = BTreeMap::new();
    for (key, value) in &table {
        let flag = key.replace('_', "-");
        if let Some(first) = seen.insert(flag.clone(), key.clone()) {
            return Err(key_error(format!("`{first}` and `{key}` both set {flag}")));
        }
        if flag == "config" {
            return Err(key_error(
                "the key `config` is not allowed in a config file".into(),
            ));
        }
        let value = toml_value_to_flag(value).ok_or_else(|| {
            key_error(format!(
                "key `{key}`: expected a string, number, boolean or list of them"
            ))
        })?;
        if cli::is_compat_prefixed(&flag) {
            let mut compat = ServerArgs::default();
            compat.compat.given.push(flag);
            layer = layer.or(compat);
            continue;
        }
        if !known.contains(&flag) {
            return Err(key_error(format!("unknown key `{key}`")));
        }
        let parsed =
            parse_one(&flag, &value).map_err(|m| key_error(format!("key `{key}`: {m}")))?;
        layer = layer.or(parsed);
    }
    Ok(layer)
}

/// A TOML value as a flag would spell it: lists are joined with commas.
fn toml_value_to_flag(value: &toml::Value) -> Option<String> {
    match value {
        toml::Value::String(s) => Some(s.clone()),
        toml::Value::Integer(i) => Some(i.to_string()),
        toml::Value::Float(f) => Some(f.to_string()),
        toml::Value::Boolean(b) => Some(b.to_string()),
        toml::Value::Datetime(d) => Some(d.to_string()),
        toml::Value::Array(items) => {
            let parts: Option<Vec<String>> = items
                .iter()
                .map(|i| match i {
                    toml::Value::Array(_) | toml::Value::Table(_) => None,
                    other => toml_value_to_flag(other),
                })
                .collect();
            Some(parts?.join(","))
        }
        toml::Value::Table(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsString;

    fn cli_args(list: &[&str]) -> ServerArgs {
        let mut argv: Vec<OsString> = vec!["concord".into(), "server".into()];
        argv.extend(list.iter().map(OsString::from));
        match cli::parse(argv).expect("command line parses").command {
            cli::Command::Server(a) => *a,
            other => panic!("not parsed as server: {other:?}"),
        }
    }

    fn env(pairs: &[(&str, &str)]) -> EnvMap {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_are_a_one_node_cluster_in_default_concord() {
        let s = resolve(cli_args(&[]), &EnvMap::new()).unwrap();
        assert_eq!(s.server.name, "default");
        assert_eq!(s.server.data_dir, PathBuf::from("default.concord"));
        assert_eq!(s.server.listen_client_urls, vec!["http://127.0.0.1:2379"]);
        assert_eq!(s.server.listen_peer_urls, vec!["http://127.0.0.1:2380"]);
        assert_eq!(s.server.heartbeat_interval, Duration::from_millis(100));
        assert_eq!(s.server.election_timeout, Duration::from_millis(1000));
        assert_eq!(s.server.founding_members().len(), 1);
        assert_eq!(s.log.level, LogLevel::Info);
        assert_eq!(s.log.format, LogFormat::Text);
        assert!(s.warnings.is_empty());
    }

    #[test]
    fn data_dir_follows_the_name() {
        let s = resolve(cli_args(&["--name", "n7"]), &EnvMap::new()).unwrap();
        assert_eq!(s.server.data_dir, PathBuf::from("n7.concord"));
    }

    #[test]
    fn every_flag_reaches_the_server_config() {
        let s = resolve(
            cli_args(&[
                "--name=n1",
                "--data-dir=/d",
                "--listen-client-urls=http://0.0.0.0:1",
                "--advertise-client-urls=http://h:1",
                "--listen-peer-urls=http://0.0.0.0:2",
                "--initial-advertise-peer-urls=http://h:2",
                "--initial-cluster=n1=http://h:2,n2=http://g:2",
                "--initial-cluster-state=existing",
                "--initial-cluster-token=tok",
                "--heartbeat-interval=50",
                "--election-timeout=600",
                "--lease-reads",
                "--peer-direct-links=false",
                "--snapshot-count=5",
                "--quota-backend-bytes=1000",
                "--backend-cache-bytes=3000000",
                "--backend-batches-per-commit=4",
                "--max-request-bytes=2000",
                "--max-txn-ops=3",
                "--max-concurrent-streams=7",
                "--max-client-connections=9",
                "--lease-checkpoint-interval=900",
                "--request-timeout=1500",
                "--gossip-interval=400",
                "--phi-threshold=10.5",
                "--phi-acceptable-pause=700",
                "--phi-min-std-deviation=30",
                "--log-level=debug",
                "--log-format=json",
                "--cert-file=/c.pem",
                "--key-file=/c-key.pem",
                "--trusted-ca-file=/ca.pem",
                "--client-cert-auth",
                "--peer-auto-tls",
                "--peer-trusted-ca-file=/pca.pem",
                "--peer-client-cert-auth=true",
                "--tls-min-version=TLS1.3",
                "--cipher-suites=TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256, TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
            ]),
            &EnvMap::new(),
        )
        .unwrap();
        let c = &s.server;
        assert_eq!(c.client_tls.cert_file, Some(PathBuf::from("/c.pem")));
        assert_eq!(c.client_tls.key_file, Some(PathBuf::from("/c-key.pem")));
        assert_eq!(c.client_tls.trusted_ca_file, Some(PathBuf::from("/ca.pem")));
        assert!(c.client_tls.client_cert_auth && !c.client_tls.auto_tls);
        assert!(c.peer_tls.auto_tls && c.peer_tls.client_cert_auth);
        assert_eq!(c.peer_tls.trusted_ca_file, Some(PathBuf::from("/pca.pem")));
        assert_eq!(c.tls_policy.min_version.as_deref(), Some("TLS1.3"));
        assert_eq!(c.tls_policy.cipher_suites.len(), 2);
        assert_eq!(c.name, "n1");
        assert_eq!(c.data_dir, PathBuf::from("/d"));
        assert_eq!(c.listen_client_urls, vec!["http://0.0.0.0:1"]);
        assert_eq!(c.advertise_client_urls, vec!["http://h:1"]);
        assert_eq!(c.listen_peer_urls, vec!["http://0.0.0.0:2"]);
        assert_eq!(c.initial_advertise_peer_urls, vec!["http://h:2"]);
        assert_eq!(c.initial_cluster.len(), 2);
        assert_eq!(c.initial_cluster_state, ClusterState::Existing);
        assert_eq!(c.initial_cluster_token, "tok");
        assert_eq!(c.heartbeat_interval, Duration::from_millis(50));
        assert_eq!(c.election_timeout, Duration::from_millis(600));
        assert!(c.lease_reads);
        assert!(!c.peer_direct_links);
        assert_eq!(c.snapshot_count, 5);
        assert_eq!(c.quota_backend_bytes, 1000);
        assert_eq!(c.backend_cache_bytes, 3_000_000);
        assert_eq!(c.backend_batches_per_commit, 4);
        assert_eq!(c.max_request_bytes, 2000);
        assert_eq!(c.max_txn_ops, 3);
        assert_eq!(c.max_concurrent_streams, 7);
        assert_eq!(c.max_client_connections, 9);
        assert_eq!(c.lease_checkpoint_interval, Duration::from_millis(900));
        assert_eq!(c.request_timeout, Duration::from_millis(1500));
        assert_eq!(c.gossip.protocol_period, Duration::from_millis(400));
        assert_eq!(c.gossip.ping_timeout, Duration::from_millis(200));
        assert_eq!(c.gossip.phi.threshold, 10.5);
        assert_eq!(
            c.gossip.phi.acceptable_heartbeat_pause,
            Duration::from_millis(700)
        );
        assert_eq!(c.gossip.phi.min_std_deviation, Duration::from_millis(30));
        assert_eq!(s.log.level, LogLevel::Debug);
        assert_eq!(s.log.format, LogFormat::Json);
    }

    #[test]
    fn command_line_beats_env_beats_file_beats_default() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(
            &file,
            "name = \"from-file\"\nsnapshot_count = 11\nmax-txn-ops = 22\n\"initial-cluster-token\" = \"file-token\"\n",
        )
        .unwrap();
        let e = env(&[
            ("CONCORD_CONFIG", file.to_str().unwrap()),
            ("CONCORD_NAME", "from-env"),
            ("CONCORD_SNAPSHOT_COUNT", "33"),
            ("CONCORD_INITIAL_CLUSTER_TOKEN", "env-token"),
        ]);
        let s = resolve(cli_args(&["--initial-cluster-token", "cli-token"]), &e).unwrap();
        assert_eq!(s.server.initial_cluster_token, "cli-token", "cli > env");
        assert_eq!(s.server.name, "from-env", "env > file");
        assert_eq!(s.server.snapshot_count, 33, "env > file");
        assert_eq!(s.server.max_txn_ops, 22, "file > default");
        assert_eq!(s.server.data_dir, PathBuf::from("from-env.concord"));
        assert_eq!(s.server.max_request_bytes, 1_572_864, "default");

        // --config on the command line beats CONCORD_CONFIG.
        let other = dir.path().join("other.toml");
        std::fs::write(&other, "max_txn_ops = 44\n").unwrap();
        let s = resolve(cli_args(&["--config", other.to_str().unwrap()]), &e).unwrap();
        assert_eq!(s.server.max_txn_ops, 44);
    }

    #[test]
    fn env_values_are_checked_and_named() {
        let err = resolve(
            cli_args(&[]),
            &env(&[("CONCORD_HEARTBEAT_INTERVAL", "fast")]),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("CONCORD_HEARTBEAT_INTERVAL"), "{err}");
        assert!(err.contains("fast"), "{err}");
        let err = resolve(cli_args(&[]), &env(&[("CONCORD_INITIAL_CLUSTER", "oops")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("CONCORD_INITIAL_CLUSTER"), "{err}");
        assert!(err.contains("not name=url"), "{err}");
    }

    #[test]
    fn unrelated_env_is_ignored_and_unknown_concord_vars_warn() {
        let s = resolve(
            cli_args(&[]),
            &env(&[
                ("PATH", "/bin"),
                ("CONCORD_NO_SUCH_THING", "1"),
                ("ETCD_NAME", "x"),
            ]),
        )
        .unwrap();
        assert_eq!(s.server.name, "default");
        assert_eq!(s.warnings.len(), 1, "{:?}", s.warnings);
        assert!(s.warnings[0].contains("CONCORD_NO_SUCH_THING"));
    }

    #[test]
    fn toml_accepts_both_spellings_lists_and_numbers() {
        let s = file_layer(
            Path::new("c.toml"),
            r#"
                data_dir = "/var/lib/concord"
                listen-client-urls = ["http://127.0.0.1:1", "http://127.0.0.1:2"]
                initial_cluster = "default=http://127.0.0.1:2380"
                heartbeat-interval = 20
                election_timeout = 200
                log-level = "warn"
            "#,
        )
        .unwrap();
        assert_eq!(s.data_dir, Some(PathBuf::from("/var/lib/concord")));
        assert_eq!(s.listen_client_urls.unwrap().0.len(), 2);
        assert_eq!(s.heartbeat_interval, Some(20));
        assert_eq!(s.election_timeout, Some(200));
        assert_eq!(s.log_level, Some(LogLevel::Warn));
        assert!(s.initial_cluster.is_some());
    }

    #[test]
    fn toml_unknown_key_is_an_error_naming_it() {
        let err = file_layer(Path::new("c.toml"), "name = \"a\"\ndata-dri = \"x\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown key `data-dri`"), "{err}");
        assert!(err.contains("c.toml"), "{err}");
    }

    #[test]
    fn toml_errors() {
        let p = Path::new("c.toml");
        let err = file_layer(p, "data-dir = \"a\"\ndata_dir = \"b\"\n").unwrap_err();
        assert!(err.to_string().contains("both set data-dir"), "{err}");
        let err = file_layer(p, "heartbeat-interval = \"soon\"\n").unwrap_err();
        assert!(err.to_string().contains("heartbeat-interval"), "{err}");
        let err = file_layer(p, "name = [\n").unwrap_err();
        assert!(matches!(err, ConfigError::Toml { .. }), "{err}");
        let err = file_layer(p, "config = \"x.toml\"\n").unwrap_err();
        assert!(err.to_string().contains("`config`"), "{err}");
        let err = file_layer(p, "[name]\nx = 1\n").unwrap_err();
        assert!(err.to_string().contains("key `name`"), "{err}");
        let err = file_layer(p, "initial-cluster = \"n1\"\n").unwrap_err();
        assert!(err.to_string().contains("not name=url"), "{err}");
    }

    #[test]
    fn missing_config_file_is_an_error_naming_it() {
        let err = resolve(
            cli_args(&["--config", "/no/such/concord.toml"]),
            &EnvMap::new(),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("/no/such/concord.toml"), "{err}");
    }

    #[test]
    fn compat_flags_warn_once_from_every_source() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(
            &file,
            "bcrypt-cost = 10\nexperimental_corrupt_check_time = \"1m\"\nenable-v2 = true\n",
        )
        .unwrap();
        let s = resolve(
            cli_args(&[
                "--config",
                file.to_str().unwrap(),
                "--bcrypt-cost=12",
                "--enable-pprof",
                "--experimental-watch-progress-notify-interval",
                "5s",
            ]),
            &env(&[
                ("CONCORD_ENABLE_PPROF", "true"),
                ("CONCORD_LOGGER", "zap"),
                (
                    "CONCORD_EXPERIMENTAL_PEER_SKIP_CLIENT_SAN_VERIFICATION",
                    "true",
                ),
            ]),
        )
        .unwrap();
        let mut expected: Vec<String> = [
            "bcrypt-cost",
            "enable-pprof",
            "logger",
            "enable-v2",
            "experimental-watch-progress-notify-interval",
            "experimental-corrupt-check-time",
            "experimental-peer-skip-client-san-verification",
        ]
        .iter()
        .map(|f| compat_warning(f))
        .collect();
        expected.sort();
        let mut got = s.warnings.clone();
        got.sort();
        assert_eq!(got, expected);
        assert_eq!(
            compat_warning("bcrypt-cost"),
            "flag --bcrypt-cost is accepted for etcd compatibility but not implemented"
        );
    }

    #[test]
    fn inconsistent_settings_are_refused_with_the_flag_named() {
        let err = resolve(
            cli_args(&[
                "--name",
                "n1",
                "--initial-cluster",
                "n2=http://127.0.0.1:2380",
            ]),
            &EnvMap::new(),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("--initial-cluster"), "{err}");
        let err = resolve(
            cli_args(&["--heartbeat-interval", "100", "--election-timeout", "100"]),
            &EnvMap::new(),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("--election-timeout"), "{err}");
    }

    #[test]
    fn rust_log_is_picked_up_from_the_env_map() {
        let s = resolve(cli_args(&[]), &env(&[("RUST_LOG", "concord=trace")])).unwrap();
        assert_eq!(s.log.rust_log.as_deref(), Some("concord=trace"));
        let s = resolve(cli_args(&[]), &env(&[("RUST_LOG", " ")])).unwrap();
        assert_eq!(s.log.rust_log, None);
    }
}
