//! The command line: `concord server` (etcd's flag names) and `concord dev`.
//!
//! Parsing happens in two steps:
//!
//! 1. [`normalize_server_argv`] rewrites what Go's `flag` package accepts and clap does not:
//!    a single dash (`-name n1`, `-data-dir=x`) and any `--experimental-*` flag, which is
//!    taken out of the argument list and recorded so it can be warned about.
//! 2. clap parses the rest. Every field of [`ServerArgs`] is an `Option` with no default,
//!    so [`crate::config`] can tell "not given" from "given the default" and layer the
//!    command line over the environment over the config file over the defaults.
//!
//! etcd flags that Concord does not implement ([`COMPAT_FLAGS`]) are real, hidden clap
//! arguments: they parse like etcd's (`--enable-pprof`, `--enable-pprof=false`,
//! `--log-outputs stderr`) and end up in [`CompatFlags`] for a warning. Anything else is an
//! unknown flag and clap refuses it.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{
    Arg, ArgAction, ArgMatches, Args, CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum,
};
use concord_server::server::ServerConfig;

/// The prefix of every environment variable that sets a `concord server` flag.
pub const ENV_PREFIX: &str = "CONCORD_";

/// Flag-name prefixes whose every member is accepted (and ignored with a warning), as
/// etcd's `--experimental-*` flags change from release to release.
pub const COMPAT_PREFIXES: &[&str] = &["experimental-"];

/// An etcd server flag that Concord accepts for compatibility but does not implement.
#[derive(Clone, Copy, Debug)]
pub struct CompatFlag {
    /// The long name, without dashes.
    pub name: &'static str,
    /// `false` for Go boolean flags: `--x` means true, a value needs `--x=value`.
    pub takes_value: bool,
}

const fn v(name: &'static str) -> CompatFlag {
    CompatFlag {
        name,
        takes_value: true,
    }
}

const fn b(name: &'static str) -> CompatFlag {
    CompatFlag {
        name,
        takes_value: false,
    }
}

/// Every documented etcd 3.4/3.5 (and common 3.6) server flag that Concord does not
/// implement. They are accepted so that existing launch scripts work, and each one given
/// is logged once as a warning.
pub const COMPAT_FLAGS: &[CompatFlag] = &[
    // Member.
    v("wal-dir"),
    v("max-snapshots"),
    v("max-wals"),
    v("listen-client-http-urls"),
    v("backend-bbolt-freelist-type"),
    v("backend-batch-interval"),
    v("backend-batch-limit"),
    v("grpc-keepalive-min-time"),
    v("grpc-keepalive-interval"),
    v("grpc-keepalive-timeout"),
    v("snapshot-catchup-entries"),
    v("max-learners"),
    v("corrupt-check-time"),
    v("compact-hash-check-time"),
    v("compaction-batch-limit"),
    v("compaction-sleep-interval"),
    v("watch-progress-notify-interval"),
    v("warning-apply-duration"),
    v("warning-unary-request-duration"),
    v("downgrade-check-time"),
    v("bootstrap-defrag-threshold-megabytes"),
    v("feature-gates"),
    v("config-file"),
    b("socket-reuse-port"),
    b("socket-reuse-address"),
    b("memory-mlock"),
    b("initial-corrupt-check"),
    b("compact-hash-check-enabled"),
    b("stop-grpc-service-on-defrag"),
    b("txn-mode-write-with-shared-buffer"),
    // Clustering.
    v("discovery"),
    v("discovery-fallback"),
    v("discovery-proxy"),
    v("discovery-srv"),
    v("discovery-srv-name"),
    v("discovery-token"),
    v("discovery-endpoints"),
    v("discovery-dial-timeout"),
    v("discovery-request-timeout"),
    v("discovery-keepalive-time"),
    v("discovery-keepalive-timeout"),
    v("discovery-cert"),
    v("discovery-key"),
    v("discovery-cacert"),
    v("discovery-user"),
    v("discovery-password"),
    b("discovery-insecure-transport"),
    b("discovery-insecure-skip-tls-verify"),
    v("auto-compaction-retention"),
    v("auto-compaction-mode"),
    v("v2-deprecation"),
    b("strict-reconfig-check"),
    b("pre-vote"),
    b("initial-election-tick-advance"),
    b("enable-v2"),
    b("enable-grpc-gateway"),
    // Security.
    v("client-cert-file"),
    v("client-key-file"),
    v("client-crl-file"),
    v("client-cert-allowed-hostname"),
    v("peer-client-cert-file"),
    v("peer-client-key-file"),
    v("peer-cert-allowed-cn"),
    v("peer-cert-allowed-hostname"),
    v("peer-crl-file"),
    v("self-signed-cert-validity"),
    v("cors"),
    v("host-whitelist"),
    b("peer-skip-client-san-verification"),
    // Auth.
    v("bcrypt-cost"),
    // Profiling, monitoring, tracing.
    v("metrics"),
    v("listen-metrics-urls"),
    v("distributed-tracing-address"),
    v("distributed-tracing-service-name"),
    v("distributed-tracing-instance-id"),
    v("distributed-tracing-sampling-rate"),
    b("enable-distributed-tracing"),
    b("enable-pprof"),
    // Logging.
    v("logger"),
    v("log-outputs"),
    v("log-output"),
    v("log-package-levels"),
    v("log-rotation-config-json"),
    b("enable-log-rotation"),
    b("debug"),
    // v2 proxy.
    v("proxy"),
    v("proxy-failure-wait"),
    v("proxy-refresh-interval"),
    v("proxy-dial-timeout"),
    v("proxy-write-timeout"),
    v("proxy-read-timeout"),
    // Unsafe.
    b("force-new-cluster"),
    b("unsafe-no-fsync"),
];

/// The `concord` command line.
#[derive(Debug, Parser)]
#[command(
    name = "concord",
    version,
    about = "Concord: a distributed key-value store that speaks etcd's v3 API",
    arg_required_else_help = true,
    propagate_version = true
)]
pub struct Cli {
    /// What to run.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Runs one member of a cluster, with etcd's flag names
    ///
    /// With no flags: a one-node cluster on 127.0.0.1:2379 with its data in
    /// ./default.concord.
    #[command(
        args_override_self = true,
        after_help = "Every flag can also be set by the environment variable CONCORD_<FLAG> \
                      (e.g. CONCORD_DATA_DIR) or in the --config file; the command line wins \
                      over the environment, which wins over the file.\n\
                      Every other etcd 3.4/3.5 server flag (--bcrypt-cost, --enable-pprof, \
                      --experimental-*, ...) is accepted and ignored with a warning.\n\
                      RUST_LOG, when set, overrides --log-level."
    )]
    Server(Box<ServerArgs>),
    /// Starts a local cluster on 127.0.0.1 and stops it on Ctrl-C
    ///
    /// Runs `concord server` processes n1..nN (clients on base-port, base-port+10000, ...;
    /// peers one port higher), waits until each answers GET /ready, prints the endpoints,
    /// and on Ctrl-C or SIGTERM stops them (SIGTERM, then SIGKILL after 10 s).
    Dev(DevArgs),
    /// Load generator for any etcd v3 endpoints (Concord or etcd)
    ///
    /// Closed-loop clients over shared gRPC connections; stops after --total requests or
    /// --duration seconds. Prints a human summary, then one JSON line with the figures.
    Bench(crate::bench::BenchArgs),
    /// etcdctl-style client commands (get, put, del, txn, watch, lease, member, ...)
    #[command(flatten)]
    Ctl(crate::ctl::CtlCommand),
}

/// Log verbosity (`--log-level`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum LogLevel {
    /// Everything, including per-request detail.
    Debug,
    /// Lifecycle events (the default).
    #[default]
    Info,
    /// Problems that Concord works around.
    Warn,
    /// Failures (etcd's `panic` and `fatal` mean this too).
    #[value(alias = "panic", alias = "fatal")]
    Error,
}

impl LogLevel {
    /// The name as a tracing filter directive.
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Debug => "debug",
            LogLevel::Info => "info",
            LogLevel::Warn => "warn",
            LogLevel::Error => "error",
        }
    }
}

/// Log line format (`--log-format`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// One human-readable line per event (the default).
    #[default]
    #[value(alias = "console")]
    Text,
    /// One JSON object per line.
    Json,
}

/// `--initial-cluster-state`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum InitialClusterState {
    /// Found a new cluster.
    New,
    /// Join a running cluster that already added this member.
    Existing,
}

/// A comma-separated list of URLs, each checked to be `http(s)://host:port`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UrlList(pub Vec<String>);

/// A parsed `--initial-cluster` value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InitialCluster(pub Vec<(String, Vec<String>)>);

/// A comma-separated list of at least one URL, each accepted by `check`.
fn url_list<T>(s: &str, check: fn(&str) -> Result<T, String>) -> Result<UrlList, String> {
    let urls: Vec<String> = s
        .split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(str::to_string)
        .collect();
    if urls.is_empty() {
        return Err("expected at least one URL".into());
    }
    for url in &urls {
        check(url)?;
    }
    Ok(UrlList(urls))
}

fn parse_url_list(s: &str) -> Result<UrlList, String> {
    url_list(s, concord_server::server::config::check_url)
}

fn parse_redis_url_list(s: &str) -> Result<UrlList, String> {
    url_list(s, concord_server::server::config::redis_host_port)
}

fn parse_initial_cluster(s: &str) -> Result<InitialCluster, String> {
    let members = ServerConfig::parse_initial_cluster(s)?;
    if members.is_empty() {
        return Err("expected name=url[,name=url...]".into());
    }
    Ok(InitialCluster(members))
}

/// The flags of `concord server`. Every field is `None` when not given, so that the
/// layers (command line, environment, config file, defaults) can be merged; see
/// [`crate::config::resolve`] for the defaults.
#[derive(Clone, Debug, Default, PartialEq, Args)]
pub struct ServerArgs {
    /// TOML file whose keys are these flags' names (data-dir = "...")
    #[arg(long, value_name = "FILE", help_heading = "Concord")]
    pub config: Option<PathBuf>,

    /// Human-readable name of this member [default: default]
    #[arg(long, value_name = "NAME", help_heading = "Member")]
    pub name: Option<String>,
    /// Where the WAL and the store live [default: <name>.concord]
    #[arg(long, value_name = "DIR", help_heading = "Member")]
    pub data_dir: Option<PathBuf>,
    /// URLs to serve clients on: gRPC and HTTP, comma-separated [default: http://127.0.0.1:2379]
    #[arg(long, value_name = "URLS", value_parser = parse_url_list, help_heading = "Member")]
    pub listen_client_urls: Option<UrlList>,
    /// URLs to serve peers on, comma-separated [default: http://127.0.0.1:2380]
    #[arg(long, value_name = "URLS", value_parser = parse_url_list, help_heading = "Member")]
    pub listen_peer_urls: Option<UrlList>,
    /// Raft heartbeat interval and tick, in milliseconds [default: 100]
    #[arg(long, value_name = "MS", help_heading = "Member")]
    pub heartbeat_interval: Option<u64>,
    /// Raft election timeout, in milliseconds [default: 1000]
    #[arg(long, value_name = "MS", help_heading = "Member")]
    pub election_timeout: Option<u64>,
    /// Leader lease reads: the leader answers linearizable reads without a heartbeat
    /// round while its lease holds; assumes the members' clocks tick at rates within 10%
    /// of each other (docs/consistency.md) [default: false]
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true", help_heading = "Member")]
    pub lease_reads: Option<bool>,
    /// Raft batches to `http://` peers written straight to a TCP connection, not through
    /// the gRPC stream (TLS peers always use the stream) [default: true]
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true", help_heading = "Member")]
    pub peer_direct_links: Option<bool>,
    /// Applied entries between two snapshots [default: 10000]
    #[arg(long, value_name = "N", help_heading = "Member")]
    pub snapshot_count: Option<u64>,
    /// Store size that raises the NOSPACE alarm, in bytes [default: 2147483648]
    #[arg(long, value_name = "BYTES", help_heading = "Member")]
    pub quota_backend_bytes: Option<u64>,
    /// The store's page cache, in bytes: multi-key ranges stay fast while their rows fit;
    /// resident memory grows up to it [default: 67108864]
    #[arg(long, value_name = "BYTES", help_heading = "Member")]
    pub backend_cache_bytes: Option<usize>,
    /// Applied Raft batches that share one commit of the store (1: a commit per batch);
    /// reads see the batches not yet committed all the same [default: 32]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..), help_heading = "Member")]
    pub backend_batches_per_commit: Option<u32>,
    /// Largest client request, in bytes [default: 1572864]
    #[arg(long, value_name = "BYTES", help_heading = "Member")]
    pub max_request_bytes: Option<usize>,
    /// Most operations in one transaction [default: 128]
    #[arg(long, value_name = "N", help_heading = "Member")]
    pub max_txn_ops: Option<usize>,
    /// Most concurrent HTTP/2 streams per client connection (etcd's flag) [default: 4294967295]
    #[arg(long, value_name = "N", help_heading = "Member")]
    pub max_concurrent_streams: Option<u32>,
    /// Most open client connections; more wait to be accepted [default: 10000]
    #[arg(long, value_name = "N", help_heading = "Member")]
    pub max_client_connections: Option<usize>,

    /// This member's client URLs as told to clients [default: the listen URLs]
    #[arg(long, value_name = "URLS", value_parser = parse_url_list, help_heading = "Clustering")]
    pub advertise_client_urls: Option<UrlList>,
    /// This member's peer URLs as told to other members [default: the listen URLs]
    #[arg(long, value_name = "URLS", value_parser = parse_url_list, help_heading = "Clustering")]
    pub initial_advertise_peer_urls: Option<UrlList>,
    /// Founding members: name=peer-url,... [default: this member alone]
    #[arg(long, value_name = "NAME=URL,...", value_parser = parse_initial_cluster, help_heading = "Clustering")]
    pub initial_cluster: Option<InitialCluster>,
    /// Found a new cluster or join an existing one [default: new]
    #[arg(long, value_name = "STATE", help_heading = "Clustering")]
    pub initial_cluster_state: Option<InitialClusterState>,
    /// Makes cluster and member ids unique to one cluster [default: etcd-cluster]
    #[arg(long, value_name = "TOKEN", help_heading = "Clustering")]
    pub initial_cluster_token: Option<String>,

    /// How often the leader checkpoints lease TTLs, in milliseconds [default: 5000]
    #[arg(long, value_name = "MS", help_heading = "Concord")]
    pub lease_checkpoint_interval: Option<u64>,
    /// How long a client request may wait for the cluster, in milliseconds [default: 7000]
    #[arg(long, value_name = "MS", help_heading = "Concord")]
    pub request_timeout: Option<u64>,

    /// Redis protocol URLs (AP buckets), comma-separated redis://host:port [default:
    /// redis://127.0.0.1:6379 when no --listen-client-urls is given either, else none]
    #[arg(long, value_name = "URLS", value_parser = parse_redis_url_list, help_heading = "Member")]
    pub listen_redis_urls: Option<UrlList>,

    /// SWIM gossip: one probe of a member per this many milliseconds [default: 1000]
    #[arg(long, value_name = "MS", help_heading = "Gossip")]
    pub gossip_interval: Option<u64>,
    /// Phi at or above which the detector counts a member as late [default: 8]
    #[arg(long, value_name = "PHI", help_heading = "Gossip")]
    pub phi_threshold: Option<f64>,
    /// How long a member may pause before its phi climbs, in milliseconds [default: 3000]
    #[arg(long, value_name = "MS", help_heading = "Gossip")]
    pub phi_acceptable_pause: Option<u64>,
    /// Least standard deviation of a member's packet intervals, in milliseconds [default: 100]
    #[arg(long, value_name = "MS", help_heading = "Gossip")]
    pub phi_min_std_deviation: Option<u64>,

    /// Most hints a member keeps for one other member; past it, missed writes are left to
    /// anti-entropy [default: 1000000]
    #[arg(long, value_name = "N", help_heading = "AP buckets")]
    pub ap_max_hints: Option<u64>,
    /// Time between two anti-entropy exchanges, each with the next live member, in
    /// milliseconds [default: 10000]
    #[arg(long, value_name = "MS", help_heading = "AP buckets")]
    pub ap_anti_entropy_interval: Option<u64>,
    /// Age, in milliseconds, after which a tombstone every replica holds is collected, and a
    /// hint is dropped rather than handed over [default: 3600000]
    #[arg(long, value_name = "MS", help_heading = "AP buckets")]
    pub ap_tombstone_grace: Option<u64>,
    /// Join as an AP-only member: hold AP data and serve Redis clients without being a
    /// Raft member (no CP keyspace); --initial-cluster names the Raft members to read the
    /// cluster metadata from [default: false]
    #[arg(
        long,
        value_name = "BOOL",
        num_args = 0..=1,
        default_missing_value = "true",
        help_heading = "AP buckets"
    )]
    pub ap_only: Option<bool>,

    /// Log verbosity (RUST_LOG overrides it) [default: info]
    #[arg(long, value_name = "LEVEL", help_heading = "Logging")]
    pub log_level: Option<LogLevel>,
    /// Log line format [default: text]
    #[arg(long, value_name = "FORMAT", help_heading = "Logging")]
    pub log_format: Option<LogFormat>,

    /// Export OpenTelemetry traces over OTLP/gRPC to this collector (e.g.
    /// http://127.0.0.1:4317); no spans are recorded when unset
    #[arg(long, value_name = "URL", help_heading = "Tracing")]
    pub otlp_endpoint: Option<String>,
    /// Fraction of requests that start a trace, 0 to 1 (a request whose caller sampled its
    /// trace is always traced) [default: 0.01]
    #[arg(long, value_name = "RATIO", help_heading = "Tracing")]
    pub otlp_sampling_ratio: Option<f64>,

    /// Certificate of the client URLs (https://), PEM
    #[arg(long, value_name = "FILE", help_heading = "Security")]
    pub cert_file: Option<PathBuf>,
    /// Private key of --cert-file, PEM
    #[arg(long, value_name = "FILE", help_heading = "Security")]
    pub key_file: Option<PathBuf>,
    /// CA that clients' certificates must chain to (with --client-cert-auth)
    #[arg(long, value_name = "FILE", help_heading = "Security")]
    pub trusted_ca_file: Option<PathBuf>,
    /// Refuse clients without a certificate signed by --trusted-ca-file [default: false]
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true", help_heading = "Security")]
    pub client_cert_auth: Option<bool>,
    /// Self-signed certificate for https:// client URLs when --cert-file is not given
    /// (encrypts, does not authenticate) [default: false]
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true", help_heading = "Security")]
    pub auto_tls: Option<bool>,
    /// Certificate of the peer URLs (https://), also presented to the other members, PEM
    #[arg(long, value_name = "FILE", help_heading = "Security")]
    pub peer_cert_file: Option<PathBuf>,
    /// Private key of --peer-cert-file, PEM
    #[arg(long, value_name = "FILE", help_heading = "Security")]
    pub peer_key_file: Option<PathBuf>,
    /// CA that the other members' certificates must chain to
    #[arg(long, value_name = "FILE", help_heading = "Security")]
    pub peer_trusted_ca_file: Option<PathBuf>,
    /// Refuse members without a certificate signed by --peer-trusted-ca-file [default: false]
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true", help_heading = "Security")]
    pub peer_client_cert_auth: Option<bool>,
    /// Self-signed peer certificate when --peer-cert-file is not given; members then do not
    /// verify each other [default: false]
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true", help_heading = "Security")]
    pub peer_auto_tls: Option<bool>,
    /// Lowest TLS version accepted: TLS1.2 or TLS1.3 [default: TLS1.2]
    #[arg(long, value_name = "VERSION", help_heading = "Security")]
    pub tls_min_version: Option<String>,
    /// Highest TLS version accepted: TLS1.2 or TLS1.3 [default: TLS1.3]
    #[arg(long, value_name = "VERSION", help_heading = "Security")]
    pub tls_max_version: Option<String>,
    /// TLS 1.2 cipher suites allowed, comma-separated IANA names (TLS 1.3's are fixed)
    /// [default: all that rustls implements]
    #[arg(long, value_name = "SUITES", help_heading = "Security")]
    pub cipher_suites: Option<String>,

    /// Auth token kind: `simple` or `jwt[,options]`; both are signed tokens any member
    /// verifies (see docs/security.md) [default: simple]
    #[arg(long, value_name = "KIND", help_heading = "Security")]
    pub auth_token: Option<String>,
    /// Lifetime of an auth token, in seconds [default: 300]
    #[arg(long, value_name = "SECONDS", help_heading = "Security")]
    pub auth_token_ttl: Option<u64>,

    /// etcd flags accepted for compatibility and ignored with a warning.
    #[command(flatten)]
    pub compat: CompatFlags,
}

/// The accepted-but-unimplemented etcd flags that were given, by name (no dashes), in
/// the order of [`COMPAT_FLAGS`], plus the `--experimental-*` ones taken out by
/// [`normalize_server_argv`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CompatFlags {
    /// The names given.
    pub given: Vec<String>,
}

impl FromArgMatches for CompatFlags {
    fn from_arg_matches(matches: &ArgMatches) -> Result<Self, clap::Error> {
        let given = COMPAT_FLAGS
            .iter()
            .filter(|f| matches.contains_id(f.name))
            .map(|f| f.name.to_string())
            .collect();
        Ok(CompatFlags { given })
    }

    fn update_from_arg_matches(&mut self, matches: &ArgMatches) -> Result<(), clap::Error> {
        *self = Self::from_arg_matches(matches)?;
        Ok(())
    }
}

impl Args for CompatFlags {
    fn augment_args(cmd: clap::Command) -> clap::Command {
        cmd.args(COMPAT_FLAGS.iter().map(|f| {
            let arg = Arg::new(f.name)
                .long(f.name)
                .hide(true)
                .action(ArgAction::Set)
                .value_name("VALUE");
            if f.takes_value {
                arg.num_args(1).allow_hyphen_values(true)
            } else {
                arg.num_args(0..=1)
                    .require_equals(true)
                    .default_missing_value("true")
            }
        }))
    }

    fn augment_args_for_update(cmd: clap::Command) -> clap::Command {
        Self::augment_args(cmd)
    }
}

/// The flags of `concord dev`.
#[derive(Clone, Debug, PartialEq, Eq, Args)]
pub struct DevArgs {
    /// Number of members
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u8).range(1..=7))]
    pub nodes: u8,
    /// Keep the data (and logs) in this folder, reused by the next run [default: a temporary
    /// folder, removed on exit]
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Client port of n1; nK uses base-port + 10000*(K-1) for clients and one more for
    /// peers; 0 picks free ports
    #[arg(long, value_name = "PORT", default_value_t = 2379)]
    pub base_port: u16,
    /// AP-only members started after the --nodes Raft members (they hold AP data and serve
    /// Redis clients, not the CP keyspace); --nodes 3 --ap-members 2 is the 3+2 demo
    #[arg(long, value_name = "N", default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=4))]
    pub ap_members: u8,
    /// TLS everywhere: a throw-away CA and certificates in <data-dir>/tls; clients verify
    /// the members with tls/ca.pem, members verify each other (mutual TLS)
    #[arg(long)]
    pub tls: bool,
}

impl ServerArgs {
    /// Fills every field not set in `self` from `lower` (command line over environment
    /// over config file). The compat flags of both are kept.
    pub fn or(self, lower: ServerArgs) -> ServerArgs {
        let mut compat = self.compat.given;
        for flag in lower.compat.given {
            if !compat.contains(&flag) {
                compat.push(flag);
            }
        }
        ServerArgs {
            config: self.config.or(lower.config),
            name: self.name.or(lower.name),
            data_dir: self.data_dir.or(lower.data_dir),
            listen_client_urls: self.listen_client_urls.or(lower.listen_client_urls),
            listen_peer_urls: self.listen_peer_urls.or(lower.listen_peer_urls),
            heartbeat_interval: self.heartbeat_interval.or(lower.heartbeat_interval),
            election_timeout: self.election_timeout.or(lower.election_timeout),
            lease_reads: self.lease_reads.or(lower.lease_reads),
            peer_direct_links: self.peer_direct_links.or(lower.peer_direct_links),
            snapshot_count: self.snapshot_count.or(lower.snapshot_count),
            quota_backend_bytes: self.quota_backend_bytes.or(lower.quota_backend_bytes),
            backend_cache_bytes: self.backend_cache_bytes.or(lower.backend_cache_bytes),
            backend_batches_per_commit: self
                .backend_batches_per_commit
                .or(lower.backend_batches_per_commit),
            max_request_bytes: self.max_request_bytes.or(lower.max_request_bytes),
            max_txn_ops: self.max_txn_ops.or(lower.max_txn_ops),
            max_concurrent_streams: self.max_concurrent_streams.or(lower.max_concurrent_streams),
            max_client_connections: self.max_client_connections.or(lower.max_client_connections),
            advertise_client_urls: self.advertise_client_urls.or(lower.advertise_client_urls),
            initial_advertise_peer_urls: self
                .initial_advertise_peer_urls
                .or(lower.initial_advertise_peer_urls),
            initial_cluster: self.initial_cluster.or(lower.initial_cluster),
            initial_cluster_state: self.initial_cluster_state.or(lower.initial_cluster_state),
            initial_cluster_token: self.initial_cluster_token.or(lower.initial_cluster_token),
            lease_checkpoint_interval: self
                .lease_checkpoint_interval
                .or(lower.lease_checkpoint_interval),
            request_timeout: self.request_timeout.or(lower.request_timeout),
            listen_redis_urls: self.listen_redis_urls.or(lower.listen_redis_urls),
            gossip_interval: self.gossip_interval.or(lower.gossip_interval),
            phi_threshold: self.phi_threshold.or(lower.phi_threshold),
            phi_acceptable_pause: self.phi_acceptable_pause.or(lower.phi_acceptable_pause),
            phi_min_std_deviation: self.phi_min_std_deviation.or(lower.phi_min_std_deviation),
            ap_max_hints: self.ap_max_hints.or(lower.ap_max_hints),
            ap_anti_entropy_interval: self
                .ap_anti_entropy_interval
                .or(lower.ap_anti_entropy_interval),
            ap_tombstone_grace: self.ap_tombstone_grace.or(lower.ap_tombstone_grace),
            ap_only: self.ap_only.or(lower.ap_only),
            log_level: self.log_level.or(lower.log_level),
            log_format: self.log_format.or(lower.log_format),
            otlp_endpoint: self.otlp_endpoint.or(lower.otlp_endpoint),
            otlp_sampling_ratio: self.otlp_sampling_ratio.or(lower.otlp_sampling_ratio),
            cert_file: self.cert_file.or(lower.cert_file),
            key_file: self.key_file.or(lower.key_file),
            trusted_ca_file: self.trusted_ca_file.or(lower.trusted_ca_file),
            client_cert_auth: self.client_cert_auth.or(lower.client_cert_auth),
            auto_tls: self.auto_tls.or(lower.auto_tls),
            peer_cert_file: self.peer_cert_file.or(lower.peer_cert_file),
            peer_key_file: self.peer_key_file.or(lower.peer_key_file),
            peer_trusted_ca_file: self.peer_trusted_ca_file.or(lower.peer_trusted_ca_file),
            peer_client_cert_auth: self.peer_client_cert_auth.or(lower.peer_client_cert_auth),
            peer_auto_tls: self.peer_auto_tls.or(lower.peer_auto_tls),
            tls_min_version: self.tls_min_version.or(lower.tls_min_version),
            tls_max_version: self.tls_max_version.or(lower.tls_max_version),
            cipher_suites: self.cipher_suites.or(lower.cipher_suites),
            auth_token: self.auth_token.or(lower.auth_token),
            auth_token_ttl: self.auth_token_ttl.or(lower.auth_token_ttl),
            compat: CompatFlags { given: compat },
        }
    }
}

/// The environment variable that sets `--flag`: `data-dir` → `CONCORD_DATA_DIR`.
pub fn env_name(flag: &str) -> String {
    format!(
        "{ENV_PREFIX}{}",
        flag.replace('-', "_").to_ascii_uppercase()
    )
}

/// Whether `flag` (no dashes) is one of the accepted `--experimental-*` style flags.
pub fn is_compat_prefixed(flag: &str) -> bool {
    COMPAT_PREFIXES
        .iter()
        .any(|p| flag.len() > p.len() && flag.starts_with(p))
}

/// Notes each flag's environment variable in its help line.
fn with_env_notes(cmd: clap::Command) -> clap::Command {
    cmd.mut_args(|arg| match (arg.get_long(), arg.get_help()) {
        (Some(long), Some(help)) if !arg.is_hide_set() => {
            let help = format!("{help} [env: {}]", env_name(long));
            arg.help(help)
        }
        _ => arg,
    })
}

/// The `concord` command as clap sees it (with env notes in `server`'s help).
pub fn command() -> clap::Command {
    Cli::command().mut_subcommand("server", with_env_notes)
}

/// A standalone command holding only `concord server`'s flags, used to parse the values
/// that come from the environment and the config file with the same rules.
pub fn server_command() -> clap::Command {
    ServerArgs::augment_args(
        clap::Command::new("concord-server")
            .no_binary_name(true)
            .args_override_self(true)
            .disable_help_flag(true),
    )
}

/// Every long flag of `concord server` (no dashes), compat ones included.
pub fn server_flags() -> Vec<String> {
    server_command()
        .get_arguments()
        .filter_map(|a| a.get_long().map(str::to_string))
        .collect()
}

/// Parses the process arguments (`argv[0]` included).
pub fn parse(argv: impl IntoIterator<Item = OsString>) -> Result<Cli, clap::Error> {
    let (argv, experimental) = normalize_server_argv(argv.into_iter().collect());
    let cmd = command();
    let argv = hoist_client_flags(&cmd, argv);
    let matches = cmd.try_get_matches_from(argv)?;
    let mut cli = Cli::from_arg_matches(&matches)?;
    if let Command::Server(args) = &mut cli.command {
        for flag in experimental {
            if !args.compat.given.contains(&flag) {
                args.compat.given.push(flag);
            }
        }
    }
    Ok(cli)
}

/// etcdctl reads its global flags before the command too (`etcdctl --endpoints=a:2379 get
/// foo`), and scripts write them there. For a client command, the client's global flags
/// (`--endpoints`, `-w`, `--user`, ...) that come before its name move to just after its
/// full name (`lease grant`), where clap reads them; anything else is left as it is, for
/// clap to accept or refuse.
fn hoist_client_flags(cmd: &clap::Command, argv: Vec<OsString>) -> Vec<OsString> {
    // Every client command has the global flags; `get` stands for them all.
    let Some(client) = cmd.find_subcommand("get") else {
        return argv;
    };
    let global = |is: &dyn Fn(&clap::Arg) -> bool| {
        client.get_arguments().find(|a| a.is_global_set() && is(a))
    };
    let mut at = 1;
    while let Some(word) = argv.get(at).and_then(|a| a.to_str()) {
        let (flag, inline) = if let Some(long) = word.strip_prefix("--") {
            let (name, inline) = long
                .split_once('=')
                .map_or((long, false), |(n, _)| (n, true));
            (global(&|a| a.get_long() == Some(name)), inline)
        } else if let Some(short) = word.strip_prefix('-').and_then(|w| w.chars().next()) {
            (global(&|a| a.get_short() == Some(short)), word.len() > 2)
        } else {
            break;
        };
        let Some(flag) = flag else {
            break;
        };
        at += if flag.get_action().takes_values() && !inline {
            2
        } else {
            1
        };
    }
    if at == 1 || at >= argv.len() {
        return argv;
    }
    // The command's full name (`lease`, then `grant`), and whether one of its parts
    // declares the flags (they reach the parts under it when clap parses).
    let (mut end, mut named, mut takes_them) = (at, cmd, false);
    while let Some(word) = argv.get(end).and_then(|a| a.to_str()) {
        let Some(sub) = named.find_subcommand(word) else {
            break;
        };
        takes_them |= sub
            .get_arguments()
            .any(|a| a.is_global_set() && a.get_long() == Some("endpoints"));
        named = sub;
        end += 1;
    }
    if !takes_them {
        return argv;
    }
    let mut out = vec![argv[0].clone()];
    out.extend_from_slice(&argv[at..end]);
    out.extend_from_slice(&argv[1..at]);
    out.extend_from_slice(&argv[end..]);
    out
}

/// For `concord server ...` only: rewrites `-flag` to `--flag` (Go's `flag` package takes
/// both) and takes out every `--experimental-*` flag with its value, returning their names.
/// Anything else is left for clap.
pub fn normalize_server_argv(argv: Vec<OsString>) -> (Vec<OsString>, Vec<String>) {
    if argv.get(1).and_then(|a| a.to_str()) != Some("server") {
        return (argv, Vec::new());
    }
    let known = server_flags();
    let mut out: Vec<OsString> = argv[..2].to_vec();
    let mut experimental = Vec::new();
    let mut rest = argv.into_iter().skip(2).peekable();
    while let Some(arg) = rest.next() {
        let Some(s) = arg.to_str() else {
            out.push(arg);
            continue;
        };
        if s == "--" {
            out.push(arg);
            out.extend(rest);
            break;
        }
        let body = if let Some(b) = s.strip_prefix("--") {
            b
        } else if let Some(b) = s.strip_prefix('-') {
            b
        } else {
            out.push(arg);
            continue;
        };
        let (flag, has_value) = match body.split_once('=') {
            Some((f, _)) => (f, true),
            None => (body, false),
        };
        if is_compat_prefixed(flag) {
            if !has_value {
                // `--experimental-x value`: etcd refuses stray arguments, so a word that
                // follows a flag is always its value.
                if rest
                    .peek()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| !n.starts_with('-'))
                {
                    rest.next();
                }
            }
            if !experimental.iter().any(|e| e == flag) {
                experimental.push(flag.to_string());
            }
        } else if !s.starts_with("--") && known.iter().any(|k| k == flag) {
            out.push(format!("-{s}").into());
        } else {
            out.push(arg);
        }
    }
    (out, experimental)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<OsString> {
        list.iter().map(OsString::from).collect()
    }

    fn server(list: &[&str]) -> Result<ServerArgs, clap::Error> {
        let mut argv = vec!["concord", "server"];
        argv.extend_from_slice(list);
        match parse(args(&argv))?.command {
            Command::Server(a) => Ok(*a),
            other => panic!("not parsed as server: {other:?}"),
        }
    }

    #[test]
    fn clap_definition_is_consistent() {
        command().debug_assert();
        server_command().debug_assert();
    }

    #[test]
    fn compat_flags_are_unique_and_do_not_shadow_real_flags() {
        let flags = server_flags();
        let mut sorted = flags.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), flags.len(), "a flag is defined twice");
        for f in COMPAT_FLAGS {
            assert!(
                !is_compat_prefixed(f.name),
                "{} is covered by a prefix",
                f.name
            );
        }
    }

    #[test]
    fn no_flags_is_all_none() {
        assert_eq!(server(&[]).unwrap(), ServerArgs::default());
    }

    #[test]
    fn both_value_forms_and_single_dash() {
        let a = server(&[
            "--name=n1",
            "--data-dir",
            "/tmp/x",
            "-heartbeat-interval",
            "50",
            "-election-timeout=500",
        ])
        .unwrap();
        assert_eq!(a.name.as_deref(), Some("n1"));
        assert_eq!(a.data_dir, Some(PathBuf::from("/tmp/x")));
        assert_eq!(a.heartbeat_interval, Some(50));
        assert_eq!(a.election_timeout, Some(500));
    }

    #[test]
    fn later_occurrence_wins_like_go_flags() {
        let a = server(&["--name", "a", "--name", "b"]).unwrap();
        assert_eq!(a.name.as_deref(), Some("b"));
    }

    #[test]
    fn url_lists_are_comma_separated_and_checked() {
        let a = server(&[
            "--listen-client-urls",
            "http://127.0.0.1:1, http://10.0.0.1:2",
        ])
        .unwrap();
        assert_eq!(
            a.listen_client_urls.unwrap().0,
            vec!["http://127.0.0.1:1", "http://10.0.0.1:2"]
        );
        let e = server(&["--listen-peer-urls", "127.0.0.1:2380"]).unwrap_err();
        assert_eq!(e.kind(), clap::error::ErrorKind::ValueValidation);
        assert!(e.to_string().contains("--listen-peer-urls"), "{e}");
        assert!(e.to_string().contains("http://"), "{e}");
    }

    #[test]
    fn initial_cluster_errors_are_surfaced() {
        let a = server(&["--initial-cluster", "n1=http://a:1,n2=http://b:2"]).unwrap();
        assert_eq!(a.initial_cluster.unwrap().0.len(), 2);
        let e = server(&["--initial-cluster", "n1"]).unwrap_err();
        assert!(e.to_string().contains("not name=url"), "{e}");
        let e = server(&["--initial-cluster", "n1=ftp://a:1"]).unwrap_err();
        assert!(e.to_string().contains("http://"), "{e}");
    }

    #[test]
    fn enums_parse_with_etcd_spellings() {
        let a = server(&[
            "--initial-cluster-state=existing",
            "--log-level",
            "fatal",
            "--log-format",
            "json",
        ])
        .unwrap();
        assert_eq!(a.initial_cluster_state, Some(InitialClusterState::Existing));
        assert_eq!(a.log_level, Some(LogLevel::Error));
        assert_eq!(a.log_format, Some(LogFormat::Json));
        assert!(server(&["--log-level", "loud"]).is_err());
        assert!(server(&["--initial-cluster-state", "old"]).is_err());
    }

    #[test]
    fn compat_flags_are_accepted_and_recorded() {
        let a = server(&[
            "--bcrypt-cost",
            "10",
            "--enable-pprof",
            "--strict-reconfig-check=false",
            "--enable-v2",
            "--logger",
            "zap",
            "--log-outputs=stderr",
            "--auto-compaction-mode",
            "periodic",
            "--auto-compaction-retention",
            "1h",
            "--experimental-initial-corrupt-check",
            "--experimental-backend-bbolt-freelist-type",
            "map",
            "-experimental-enable-lease-checkpoint=true",
            "--name",
            "n1",
            "-force-new-cluster",
        ])
        .unwrap();
        assert_eq!(a.name.as_deref(), Some("n1"));
        let given = a.compat.given;
        for f in [
            "bcrypt-cost",
            "enable-pprof",
            "strict-reconfig-check",
            "enable-v2",
            "logger",
            "log-outputs",
            "auto-compaction-mode",
            "auto-compaction-retention",
            "force-new-cluster",
            "experimental-initial-corrupt-check",
            "experimental-backend-bbolt-freelist-type",
            "experimental-enable-lease-checkpoint",
        ] {
            assert!(given.iter().any(|g| g == f), "{f} missing from {given:?}");
        }
    }

    #[test]
    fn boolean_compat_flag_does_not_swallow_the_next_flag() {
        let a = server(&["--enable-pprof", "--name", "x"]).unwrap();
        assert_eq!(a.name.as_deref(), Some("x"));
        assert_eq!(a.compat.given, vec!["enable-pprof".to_string()]);
        // The implemented boolean TLS flags parse the same way.
        let a = server(&["--auto-tls", "--peer-client-cert-auth=false", "--name", "y"]).unwrap();
        assert_eq!(a.name.as_deref(), Some("y"));
        assert_eq!(
            (a.auto_tls, a.peer_client_cert_auth),
            (Some(true), Some(false))
        );
        assert!(a.compat.given.is_empty());
    }

    #[test]
    fn unknown_flags_are_errors() {
        let e = server(&["--no-such-flag"]).unwrap_err();
        assert_eq!(e.kind(), clap::error::ErrorKind::UnknownArgument);
        let e = server(&["-no-such-flag"]).unwrap_err();
        assert_eq!(e.kind(), clap::error::ErrorKind::UnknownArgument);
        assert!(server(&["--experimental"]).is_err());
        assert!(server(&["stray"]).is_err());
    }

    #[test]
    fn dev_flags() {
        let cli = parse(args(&["concord", "dev"])).unwrap();
        let Command::Dev(d) = cli.command else {
            panic!("not dev")
        };
        assert_eq!(d.nodes, 3);
        assert_eq!(d.base_port, 2379);
        assert!(parse(args(&["concord", "dev", "--nodes", "8"])).is_err());
        assert!(parse(args(&["concord", "dev", "--nodes", "0"])).is_err());
        assert!(parse(args(&["concord", "dev", "--auth-token", "x"])).is_err());
    }

    #[test]
    fn plain_concord_is_help() {
        let e = parse(args(&["concord"])).unwrap_err();
        assert_eq!(
            e.kind(),
            clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
        );
    }

    #[test]
    fn help_names_the_env_variables() {
        let mut cmd = command();
        let help = cmd
            .find_subcommand_mut("server")
            .unwrap()
            .render_help()
            .to_string();
        assert!(help.contains("CONCORD_DATA_DIR"), "{help}");
        assert!(help.contains("CONCORD_INITIAL_CLUSTER_TOKEN"), "{help}");
        assert!(
            !help.contains("--client-crl-file"),
            "compat flags are hidden"
        );
    }

    #[test]
    fn env_names() {
        assert_eq!(env_name("data-dir"), "CONCORD_DATA_DIR");
        assert_eq!(env_name("name"), "CONCORD_NAME");
    }
}
