//! Client commands modelled on etcdctl v3 (3.4/3.5): `concord get`, `put`, `del`, `txn`,
//! `watch`, `compaction`, `lease`, `elect`, `lock`, `member`, `endpoint`, `snapshot` and
//! `completion`. They speak etcd's v3 gRPC API, so they work against etcd too.
//!
//! # Layout
//!
//! * [`GlobalArgs`]: `--endpoints`, `--dial-timeout`, `--command-timeout`, `-w`, on every
//!   command; [`Ctx`] is the connection they produce.
//! * One module per command group: [`kv`] (get, put, del, compaction), [`txn`],
//!   [`watch`], [`lease`], [`concurrency`] (elect, lock), [`member`], [`endpoint`],
//!   [`snapshot`].
//! * [`printer`]: etcdctl's output formats; [`duration`]: Go's duration syntax.
//!
//! Errors are printed as one line, `Error: <message>`, on standard error (the server's
//! message, e.g. `etcdserver: requested lease not found`), and the exit status is 1.

pub mod auth;
pub mod bucket;
pub mod concurrency;
pub mod duration;
pub mod endpoint;
pub mod http;
pub mod kv;
pub mod lease;
pub mod member;
pub mod printer;
pub mod snapshot;
pub mod top;
pub mod txn;
pub mod watch;

use std::future::Future;
use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand, ValueEnum};
use concord_client::{Client, ClientError, ClientOptions};
use concord_proto::etcdserverpb::cluster_client::ClusterClient;
use concord_proto::etcdserverpb::kv_client::KvClient;
use concord_proto::etcdserverpb::lease_client::LeaseClient;
use concord_proto::etcdserverpb::maintenance_client::MaintenanceClient;
use concord_proto::etcdserverpb::watch_client::WatchClient;
use tonic::transport::Channel;

/// `-w/--write-out`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// etcdctl's default: plain lines.
    #[default]
    Simple,
    /// The response as JSON (bytes in base64).
    Json,
    /// A table (member list, endpoint status/health, snapshot status; others: simple).
    Table,
    /// `"Field" : value` lines (get, put, del; others: simple).
    Fields,
}

/// Flags shared by every client command. As with etcdctl, each can also come from an
/// `ETCDCTL_`-prefixed environment variable (`ETCDCTL_ENDPOINTS`, …); a flag wins.
#[derive(Args, Clone, Debug)]
pub struct GlobalArgs {
    /// gRPC endpoints, comma-separated (host:port, with or without http://)
    #[arg(
        long,
        global = true,
        value_delimiter = ',',
        default_value = "127.0.0.1:2379",
        env = "ETCDCTL_ENDPOINTS",
        help_heading = "Global options"
    )]
    pub endpoints: Vec<String>,
    /// Dial timeout for client connections (Go duration: 2s, 500ms)
    #[arg(long, global = true, default_value = "2s", value_parser = duration::parse, env = "ETCDCTL_DIAL_TIMEOUT", help_heading = "Global options")]
    pub dial_timeout: Duration,
    /// Timeout for short running commands, excluding the dial timeout
    #[arg(long, global = true, default_value = "5s", value_parser = duration::parse, env = "ETCDCTL_COMMAND_TIMEOUT", help_heading = "Global options")]
    pub command_timeout: Duration,
    /// Output format: simple, json, table or fields
    #[arg(
        short = 'w',
        long,
        global = true,
        value_enum,
        default_value = "simple",
        env = "ETCDCTL_WRITE_OUT",
        help_heading = "Global options"
    )]
    pub write_out: OutputFormat,
    /// Print keys and values as hex (`\x66\x6f\x6f`) in simple output
    #[arg(
        long,
        global = true,
        env = "ETCDCTL_HEX",
        help_heading = "Global options"
    )]
    pub hex: bool,
    /// Verify the members' certificates with this CA bundle (https:// endpoints)
    #[arg(
        long,
        global = true,
        value_name = "FILE",
        env = "ETCDCTL_CACERT",
        help_heading = "Global options"
    )]
    pub cacert: Option<PathBuf>,
    /// Identify with this TLS client certificate
    #[arg(
        id = "tls-cert",
        long = "cert",
        global = true,
        value_name = "FILE",
        env = "ETCDCTL_CERT",
        help_heading = "Global options"
    )]
    pub cert: Option<PathBuf>,
    /// The client certificate's private key
    // Its own id: `key` is the positional argument of get, put, del, ...
    #[arg(
        id = "tls-key",
        long = "key",
        global = true,
        value_name = "FILE",
        env = "ETCDCTL_KEY",
        help_heading = "Global options"
    )]
    pub key: Option<PathBuf>,
    /// User name for authentication, `NAME` or `NAME:PASSWORD`
    #[arg(
        long,
        global = true,
        value_name = "NAME[:PASSWORD]",
        env = "ETCDCTL_USER",
        help_heading = "Global options"
    )]
    pub user: Option<String>,
    /// Password for authentication (then --user holds only the name)
    #[arg(
        long,
        global = true,
        value_name = "PASSWORD",
        env = "ETCDCTL_PASSWORD",
        help_heading = "Global options"
    )]
    pub password: Option<String>,
    /// Accept any server certificate (encrypts without authenticating the server)
    #[arg(
        long,
        global = true,
        env = "ETCDCTL_INSECURE_SKIP_TLS_VERIFY",
        help_heading = "Global options"
    )]
    pub insecure_skip_tls_verify: bool,
}

/// Client TLS settings from etcdctl's flags (`--cacert`, `--cert`, `--key`,
/// `--insecure-skip-tls-verify`), shared by the client commands and `concord bench`.
pub fn tls_settings(
    cacert: &Option<PathBuf>,
    cert: &Option<PathBuf>,
    key: &Option<PathBuf>,
    insecure_skip_verify: bool,
) -> Result<concord_client::TlsSettings, &'static str> {
    let identity = match (cert, key) {
        (Some(cert), Some(key)) => Some(concord_client::Identity {
            cert_file: cert.clone(),
            key_file: key.clone(),
        }),
        (None, None) => None,
        (Some(_), None) => return Err("--cert needs --key"),
        (None, Some(_)) => return Err("--key needs --cert"),
    };
    Ok(concord_client::TlsSettings {
        ca_file: cacert.clone(),
        identity,
        insecure_skip_verify,
        policy: Default::default(),
    })
}

impl GlobalArgs {
    /// The TLS settings the flags give.
    pub fn tls(&self) -> CtlResult<concord_client::TlsSettings> {
        tls_settings(
            &self.cacert,
            &self.cert,
            &self.key,
            self.insecure_skip_tls_verify,
        )
        .map_err(CtlError::new)
    }

    /// The user and password of `--user` and `--password`, if given.
    pub fn credentials(&self) -> CtlResult<Option<(String, String)>> {
        let Some(user) = &self.user else {
            if self.password.is_some() {
                return Err(CtlError::new("--password needs --user"));
            }
            return Ok(None);
        };
        match (user.split_once(':'), &self.password) {
            (Some(_), Some(_)) => Err(CtlError::new(
                "give the password either in --user NAME:PASSWORD or in --password, not both",
            )),
            (Some((name, password)), None) => Ok(Some((name.into(), password.into()))),
            (None, Some(password)) => Ok(Some((user.clone(), password.clone()))),
            (None, None) => Err(CtlError::new(
                "--user needs a password: --user NAME:PASSWORD or --password",
            )),
        }
    }

    /// The dialer for the flags' TLS settings.
    pub fn dialer(&self) -> CtlResult<concord_client::Dialer> {
        concord_client::Dialer::new(self.tls()?).map_err(|e| CtlError::new(e.to_string()))
    }

    /// How answers are printed.
    pub fn printing(&self) -> Format {
        Format {
            out: self.write_out,
            hex: self.hex,
        }
    }
}

/// How answers are printed: the output format and, for simple output, `--hex`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Format {
    /// `-w`.
    pub out: OutputFormat,
    /// `--hex`.
    pub hex: bool,
}

/// A failed client command: the text printed after `Error: `.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct CtlError(pub String);

impl CtlError {
    /// An error with this message.
    pub fn new(msg: impl Into<String>) -> Self {
        CtlError(msg.into())
    }
}

impl From<tonic::Status> for CtlError {
    fn from(s: tonic::Status) -> Self {
        match s.code() {
            tonic::Code::DeadlineExceeded => CtlError::new("context deadline exceeded"),
            _ if s.message().is_empty() => CtlError::new(format!("{:?}", s.code())),
            _ => CtlError::new(s.message()),
        }
    }
}

/// The result of a client command.
pub type CtlResult<T> = Result<T, CtlError>;

/// The client commands (flattened into `concord`'s subcommands).
#[derive(Debug, Subcommand)]
pub enum CtlCommand {
    /// Gets the key or a range of keys
    Get(kv::GetArgs),
    /// Puts the given key into the store (the value is read from stdin when omitted)
    Put(kv::PutArgs),
    /// Removes the specified key or range of keys [key, range_end)
    Del(kv::DelArgs),
    /// Txn processes all the requests in one transaction (read from stdin; -i prompts)
    Txn(txn::TxnArgs),
    /// Watches events stream on keys or prefixes, until Ctrl-C
    Watch(watch::WatchArgs),
    /// Compacts the event history in the store
    Compaction(kv::CompactionArgs),
    /// Lease related commands
    Lease(lease::LeaseArgs),
    /// Observes and participates in leader election
    Elect(concurrency::ElectArgs),
    /// Acquires a named lock
    Lock(concurrency::LockArgs),
    /// Membership related commands
    Member(member::MemberArgs),
    /// Endpoint related commands
    Endpoint(endpoint::EndpointArgs),
    /// Saves, checks and restores snapshots of a member's keyspace
    Snapshot(snapshot::SnapshotArgs),
    /// Lists, shows and changes the AP buckets' properties (n_val, r, w, durability)
    Bucket(bucket::BucketArgs),
    /// Reads, writes and deletes keys of the AP buckets (as Redis GET, SET, DEL)
    Ap(bucket::ApArgs),
    /// Shows the cluster's members and live request rate and latency, refreshing (the
    /// dashboard's numbers in a terminal)
    Top(top::TopArgs),
    /// User related commands
    User(auth::UserArgs),
    /// Role related commands
    Role(auth::RoleArgs),
    /// Enables, disables or shows authentication
    Auth(auth::AuthArgs),
    /// Generates the shell completion script for concord
    Completion(CompletionArgs),
}

impl CtlCommand {
    /// The global flags of the command (none for `completion`).
    fn global(&self) -> Option<&GlobalArgs> {
        Some(match self {
            CtlCommand::Get(a) => &a.global,
            CtlCommand::Put(a) => &a.global,
            CtlCommand::Del(a) => &a.global,
            CtlCommand::Txn(a) => &a.global,
            CtlCommand::Watch(a) => &a.global,
            CtlCommand::Compaction(a) => &a.global,
            CtlCommand::Lease(a) => &a.global,
            CtlCommand::Elect(a) => &a.global,
            CtlCommand::Lock(a) => &a.global,
            CtlCommand::Member(a) => &a.global,
            CtlCommand::Endpoint(a) => &a.global,
            CtlCommand::Snapshot(a) => &a.global,
            CtlCommand::Bucket(a) => &a.global,
            CtlCommand::Ap(a) => &a.global,
            CtlCommand::Top(a) => &a.global,
            CtlCommand::User(a) => &a.global,
            CtlCommand::Role(a) => &a.global,
            CtlCommand::Auth(a) => &a.global,
            CtlCommand::Completion(_) => return None,
        })
    }
}

/// `concord completion SHELL`.
#[derive(Args, Debug)]
pub struct CompletionArgs {
    /// The shell
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

/// Runs one client command and prints its error, if any, like etcdctl.
pub fn run(cmd: CtlCommand) -> ExitCode {
    if let CtlCommand::Completion(args) = &cmd {
        let mut command = crate::cli::command();
        // Into a buffer: clap_complete panics when its writer fails (a closed pipe).
        let mut script = Vec::new();
        clap_complete::generate(args.shell, &mut command, "concord", &mut script);
        let mut stdout = std::io::stdout().lock();
        return match stdout.write_all(&script).and_then(|()| stdout.flush()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("Error: {e}");
                ExitCode::from(1)
            }
        };
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("Error: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    // The JSON endpoints (members, buckets, ap, top) are dialled with the same TLS.
    if let Some(global) = cmd.global() {
        match global.dialer() {
            Ok(dialer) => http::set_tls(dialer),
            Err(e) => {
                eprintln!("Error: {e}");
                return ExitCode::from(1);
            }
        }
    }
    let result = rt.block_on(async move {
        match cmd {
            CtlCommand::Get(a) => kv::get(a).await,
            CtlCommand::Put(a) => kv::put(a).await,
            CtlCommand::Del(a) => kv::del(a).await,
            CtlCommand::Txn(a) => txn::run(a).await,
            CtlCommand::Watch(a) => watch::run(a).await,
            CtlCommand::Compaction(a) => kv::compaction(a).await,
            CtlCommand::Lease(a) => lease::run(a).await,
            CtlCommand::Elect(a) => concurrency::elect(a).await,
            CtlCommand::Lock(a) => concurrency::lock(a).await,
            CtlCommand::Member(a) => member::run(a).await,
            CtlCommand::Endpoint(a) => endpoint::run(a).await,
            CtlCommand::Snapshot(a) => snapshot::run(a).await,
            CtlCommand::Bucket(a) => bucket::run_bucket(a).await,
            CtlCommand::Ap(a) => bucket::run_ap(a).await,
            CtlCommand::Top(a) => top::run(a).await,
            CtlCommand::User(a) => auth::run_user(a).await,
            CtlCommand::Role(a) => auth::run_role(a).await,
            CtlCommand::Auth(a) => auth::run_auth(a).await,
            CtlCommand::Completion(_) => Ok(()),
        }
    });
    // Streams (watch, keep-alive) may still hold tasks: do not wait for them.
    rt.shutdown_background();
    let _ = std::io::stdout().flush();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("Error: {e}");
            ExitCode::from(1)
        }
    }
}

/// Prints `text` to standard output and flushes it (watch output is read live).
pub fn out(text: &str) {
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(text.as_bytes());
    let _ = stdout.flush();
}

/// Dials one endpoint within `--dial-timeout` with the TLS flags (through
/// `concord-client`), with etcdctl's error text.
pub async fn dial(ep: &str, global: &GlobalArgs) -> CtlResult<Channel> {
    concord_client::dial_with(ep, global.dial_timeout, &global.dialer()?)
        .await
        .map_err(dial_error)
}

/// A connection failure as etcdctl words it.
fn dial_error(e: ClientError) -> CtlError {
    match e {
        ClientError::Connect { endpoint, detail } => CtlError::new(format!(
            "context deadline exceeded (cannot connect to {endpoint}: {detail})"
        )),
        ClientError::ConnectTimeout { endpoint, timeout } => CtlError::new(format!(
            "context deadline exceeded (cannot connect to {endpoint} within {})",
            duration::format(timeout)
        )),
        other => CtlError::new(other.to_string()),
    }
}

/// Adds the auth token (from `--user`) to every request.
#[derive(Clone, Debug, Default)]
pub struct WithToken(Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>);

impl tonic::service::Interceptor for WithToken {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(token) = &self.0 {
            request.metadata_mut().insert("token", token.clone());
        }
        Ok(request)
    }
}

/// A channel whose requests carry the caller's token.
pub type Conn = tonic::service::interceptor::InterceptedService<Channel, WithToken>;

/// A connection to the first endpoint of `--endpoints` that answers, and the flags.
pub struct Ctx {
    /// The global flags.
    pub global: GlobalArgs,
    /// The connection (with the token of `--user`, when given).
    pub channel: Conn,
}

impl Ctx {
    /// Dials the endpoints in order and keeps the first that connects.
    pub async fn connect(global: &GlobalArgs) -> CtlResult<Ctx> {
        let options = ClientOptions {
            dial_timeout: global.dial_timeout,
            // Each command bounds its own calls with `--command-timeout`.
            request_timeout: None,
            tls: global.tls()?,
            ..ClientOptions::default()
        };
        let client = Client::new(&global.endpoints, options).map_err(dial_error)?;
        let channel = client.channel().await.map_err(dial_error)?;
        let token = match global.credentials()? {
            None => None,
            Some((name, password)) => {
                let mut auth =
                    concord_proto::etcdserverpb::auth_client::AuthClient::new(channel.clone());
                let answer = timed(
                    global.command_timeout,
                    auth.authenticate(concord_proto::etcdserverpb::AuthenticateRequest {
                        name,
                        password,
                    }),
                )
                .await?;
                Some(answer.token.parse().map_err(|_| {
                    CtlError::new("the server answered a token that is not valid ASCII")
                })?)
            }
        };
        Ok(Ctx {
            global: global.clone(),
            channel: tonic::service::interceptor::InterceptedService::new(
                channel,
                WithToken(token),
            ),
        })
    }

    /// The output format.
    pub fn format(&self) -> OutputFormat {
        self.global.write_out
    }

    /// Output format and `--hex`.
    pub fn printing(&self) -> Format {
        self.global.printing()
    }

    /// KV client.
    pub fn kv(&self) -> KvClient<Conn> {
        KvClient::new(self.channel.clone())
    }
    /// Lease client.
    pub fn lease(&self) -> LeaseClient<Conn> {
        LeaseClient::new(self.channel.clone())
    }
    /// Watch client.
    pub fn watch(&self) -> WatchClient<Conn> {
        WatchClient::new(self.channel.clone())
    }
    /// Cluster client.
    pub fn cluster(&self) -> ClusterClient<Conn> {
        ClusterClient::new(self.channel.clone())
    }
    /// Maintenance client.
    pub fn maintenance(&self) -> MaintenanceClient<Conn> {
        MaintenanceClient::new(self.channel.clone()).max_decoding_message_size(64 << 20)
    }

    /// Runs one unary call within `--command-timeout`.
    pub async fn call<T>(
        &self,
        fut: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    ) -> CtlResult<T> {
        timed(self.global.command_timeout, fut).await
    }
}

/// Runs one unary call within `timeout`.
pub async fn timed<T>(
    timeout: Duration,
    fut: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> CtlResult<T> {
    match tokio::time::timeout(timeout, fut).await {
        Ok(Ok(resp)) => Ok(resp.into_inner()),
        Ok(Err(status)) => Err(status.into()),
        Err(_) => Err(CtlError::new("context deadline exceeded")),
    }
}

/// Parses a lease id as etcdctl does: hexadecimal.
pub fn parse_lease_id(s: &str) -> CtlResult<i64> {
    i64::from_str_radix(s.trim_start_matches("0x"), 16)
        .map_err(|_| CtlError::new(format!("bad lease ID arg ({s}), expecting ID in Hex")))
}

/// Parses a member id as etcdctl does: hexadecimal.
pub fn parse_member_id(s: &str) -> CtlResult<u64> {
    u64::from_str_radix(s.trim_start_matches("0x"), 16)
        .map_err(|_| CtlError::new(format!("bad member ID arg ({s}), expecting ID in Hex")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<CtlCommand, clap::Error> {
        let mut argv = vec!["concord"];
        argv.extend_from_slice(args);
        match crate::cli::parse(argv.iter().map(std::ffi::OsString::from))?.command {
            crate::cli::Command::Ctl(c) => Ok(c),
            other => panic!("not a client command: {other:?}"),
        }
    }

    #[test]
    fn global_flags_parse_everywhere() {
        let CtlCommand::Get(g) = parse(&[
            "get",
            "foo",
            "--prefix",
            "-w",
            "json",
            "--dial-timeout",
            "500ms",
            "--endpoints",
            "a:1,http://b:2",
        ])
        .unwrap() else {
            panic!("not get")
        };
        assert_eq!(g.global.write_out, OutputFormat::Json);
        assert_eq!(g.global.dial_timeout, Duration::from_millis(500));
        assert_eq!(g.global.command_timeout, Duration::from_secs(5));
        assert_eq!(g.global.endpoints, vec!["a:1", "http://b:2"]);
        assert!(g.opts.prefix);

        // Nested subcommands take the global flags after their own name too.
        let CtlCommand::Lease(l) = parse(&["lease", "grant", "10", "-w", "table"]).unwrap() else {
            panic!("not lease")
        };
        assert_eq!(l.global.write_out, OutputFormat::Table);
        assert!(matches!(l.cmd, lease::LeaseCmd::Grant { ttl: 10 }));
        let CtlCommand::Member(m) = parse(&["member", "list", "--endpoints=x:1"]).unwrap() else {
            panic!("not member")
        };
        assert_eq!(m.global.endpoints, vec!["x:1"]);
        assert_eq!(m.global.endpoints.len(), 1);

        assert!(parse(&["get", "k", "--dial-timeout", "2"]).is_err());
        assert!(parse(&["get", "k", "-w", "yaml"]).is_err());
        assert!(parse(&["get"]).is_err());
    }

    /// As etcdctl, the global flags may also come before the command's name.
    #[test]
    fn global_flags_may_come_before_the_command() {
        let CtlCommand::Get(g) = parse(&[
            "--endpoints=a:1",
            "-w",
            "json",
            "--hex",
            "--user",
            "svc:pw",
            "get",
            "foo",
            "--prefix",
        ])
        .unwrap() else {
            panic!("not get")
        };
        assert_eq!(g.global.endpoints, vec!["a:1"]);
        assert_eq!(g.global.write_out, OutputFormat::Json);
        assert!(g.global.hex && g.opts.prefix);
        assert_eq!(g.global.user.as_deref(), Some("svc:pw"));
        assert_eq!(g.opts.key, "foo");
        let CtlCommand::Lease(l) =
            parse(&["-wtable", "--endpoints", "x:1", "lease", "grant", "10"]).unwrap()
        else {
            panic!("not lease")
        };
        assert_eq!(l.global.write_out, OutputFormat::Table);
        assert_eq!(l.global.endpoints, vec!["x:1"]);
        assert!(matches!(l.cmd, lease::LeaseCmd::Grant { ttl: 10 }));
        // Only the client's flags, only before a client command.
        assert!(parse(&["--prefix", "get", "foo"]).is_err());
        assert!(
            crate::cli::parse(["concord", "--endpoints", "a:1", "server"].map(Into::into)).is_err()
        );
        assert!(parse(&["--endpoints", "a:1"]).is_err());
    }

    #[test]
    fn lock_takes_a_command_with_its_flags() {
        let CtlCommand::Lock(l) = parse(&["lock", "--ttl", "5", "name", "ls", "-l", "/"]).unwrap()
        else {
            panic!("not lock")
        };
        assert_eq!(l.ttl, 5);
        assert_eq!(l.name, "name");
        assert_eq!(l.command, vec!["ls", "-l", "/"]);
        let CtlCommand::Elect(e) = parse(&["elect", "-l", "e"]).unwrap() else {
            panic!("not elect")
        };
        assert!(e.listen && e.proposal.is_none());
    }

    #[test]
    fn hex_ids() {
        assert_eq!(parse_lease_id("694d7f3a1b2c"), Ok(0x694d7f3a1b2c));
        assert!(parse_lease_id("xyz").is_err());
        assert_eq!(parse_member_id("8e9e05c52164694d"), Ok(0x8e9e05c52164694d));
        assert_eq!(
            parse_member_id("12g").unwrap_err().0,
            "bad member ID arg (12g), expecting ID in Hex"
        );
    }

    #[test]
    fn status_messages_pass_through() {
        let e: CtlError = tonic::Status::not_found("etcdserver: requested lease not found").into();
        assert_eq!(e.0, "etcdserver: requested lease not found");
        let e: CtlError = tonic::Status::deadline_exceeded("x").into();
        assert_eq!(e.0, "context deadline exceeded");
    }
}
