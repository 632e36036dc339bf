//! `concord dev`: a local cluster of `concord server` processes on 127.0.0.1, like etcd's
//! Procfile.
//!
//! ```text
//!   plan ports ─> spawn n1..nN ─> poll GET /ready on each (100 ms, 30 s at most)
//!                    │                 └─ a node exits or times out ─> error + log tail
//!                    v
//!           print endpoints ─> wait ──SIGINT/SIGTERM/SIGHUP──> SIGTERM each child,
//!                               │                              10 s, SIGKILL survivors
//!                               └─ a child exits by itself ─> report it, keep the others
//! ```
//!
//! Member `nK` (K from 1) listens for clients on `base + 10000*(K-1)` and for peers on
//! the next port; data in `D/nK`, its output in `D/nK.log`. The children run in their own
//! process group so that a terminal's Ctrl-C reaches only `concord dev`, which then stops
//! them in order. [`Children`] kills and reaps whatever is still running when dropped, so
//! an error in `concord dev` never leaves orphans behind (a SIGKILL of `concord dev`
//! itself still can).

use std::fs::OpenOptions;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ExitCode, ExitStatus, Stdio};
use std::time::Duration;

use nix::sys::signal::{kill, Signal as NixSignal};
use nix::unistd::Pid;
use tokio::io::AsyncReadExt;
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::time::{sleep, timeout, Instant};

use crate::cli::DevArgs;
use crate::ctl::http::{parse_status_line, send_get};

/// How long every node has to answer `GET /ready` with 200.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Between two readiness probes.
const READY_POLL: Duration = Duration::from_millis(100);
/// How long the children have to stop after SIGTERM before they are killed.
const STOP_GRACE: Duration = Duration::from_secs(10);
/// In a kept data folder: the names and ports of the cluster, reused by the next run.
const PLAN_FILE: &str = "concord-dev.toml";
/// Lines of a node's log shown when it fails.
const TAIL_LINES: usize = 20;

/// Why `concord dev` failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DevError {
    /// The requested ports do not fit, or free ports could not be found.
    #[error("{0}")]
    Ports(String),
    /// The data folder could not be created.
    #[error("cannot create the data folder {path}: {source}")]
    DataDir {
        /// The folder.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// The saved ports of a kept data folder cannot be used.
    #[error("{0}")]
    Plan(String),
    /// This program's own path is unknown, so children cannot be started.
    #[error("cannot find the concord executable: {0}")]
    Exe(io::Error),
    /// Signal handlers could not be installed.
    #[error("cannot install signal handlers: {0}")]
    Signals(io::Error),
    /// A child could not be started.
    #[error("cannot start {name}: {source}")]
    Spawn {
        /// The member.
        name: String,
        /// The OS error.
        source: io::Error,
    },
    /// A child exited before it was ready.
    #[error("{name} exited ({status}) before it was ready; the end of {log}:\n{tail}")]
    ExitedEarly {
        /// The member.
        name: String,
        /// How it exited.
        status: ExitStatus,
        /// Its log file.
        log: String,
        /// The last lines of its log.
        tail: String,
    },
    /// A child did not answer `/ready` in time.
    #[error(
        "{name} did not answer GET /ready with 200 within {secs} s; the end of {log}:\n{tail}"
    )]
    NotReady {
        /// The member.
        name: String,
        /// The timeout, in seconds.
        secs: u64,
        /// Its log file.
        log: String,
        /// The last lines of its log.
        tail: String,
    },
    /// Every child has exited by itself.
    #[error("every node has exited; see the logs in {0}")]
    AllExited(String),
}

/// One member's name and ports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodePlan {
    /// `n1`, `n2`, ...
    pub name: String,
    /// The client port (gRPC and HTTP).
    pub client_port: u16,
    /// The peer port.
    pub peer_port: u16,
    /// The Redis port (AP buckets); `None` in plans saved before it existed.
    pub redis_port: Option<u16>,
    /// An AP-only member (`--ap-only`): not in Raft, no CP keyspace.
    pub ap_only: bool,
    /// TLS on the client and peer URLs (`concord dev --tls`).
    pub tls: bool,
}

impl NodePlan {
    fn scheme(&self) -> &'static str {
        if self.tls {
            "https"
        } else {
            "http"
        }
    }

    /// `http://127.0.0.1:<client port>` (`https://` with TLS).
    pub fn client_url(&self) -> String {
        format!("{}://127.0.0.1:{}", self.scheme(), self.client_port)
    }

    /// `http://127.0.0.1:<peer port>` (`https://` with TLS).
    pub fn peer_url(&self) -> String {
        format!("{}://127.0.0.1:{}", self.scheme(), self.peer_port)
    }

    /// `redis://127.0.0.1:<redis port>`.
    pub fn redis_url(&self) -> Option<String> {
        self.redis_port.map(|p| format!("redis://127.0.0.1:{p}"))
    }
}

/// The first member's Redis port; the others' are 10000 apart, like the client ports.
const REDIS_BASE_PORT: u32 = 6379;

/// Names and ports of `nodes` members: `base + 10000*k` and one more (Redis: 6379 +
/// 10000*k while below 65536, else two above the client port), or free ports when `base`
/// is 0.
pub fn plan(nodes: u8, base: u16) -> Result<Vec<NodePlan>, DevError> {
    let n = usize::from(nodes);
    let ports: Vec<(u16, u16, u16)> = if base == 0 {
        let free = free_ports(3 * n)
            .map_err(|e| DevError::Ports(format!("cannot find free ports: {e}")))?;
        free.chunks(3).map(|c| (c[0], c[1], c[2])).collect()
    } else {
        (0..n)
            .map(|k| {
                let client = u32::from(base) + 10_000 * k as u32;
                // 6379, 16379, ... while that fits; beyond, two above the client port.
                let redis = Some(REDIS_BASE_PORT + 10_000 * k as u32)
                    .filter(|r| *r <= u32::from(u16::MAX))
                    .unwrap_or(client + 2);
                match (
                    u16::try_from(client),
                    u16::try_from(client + 1),
                    u16::try_from(redis),
                ) {
                    (Ok(c), Ok(p), Ok(r)) => Ok((c, p, r)),
                    _ => Err(DevError::Ports(format!(
                        "--base-port {base} with --nodes {nodes} needs ports above 65535; \
                         use a lower --base-port, or --base-port 0 for free ports"
                    ))),
                }
            })
            .collect::<Result<_, _>>()?
    };
    Ok(ports
        .into_iter()
        .enumerate()
        .map(|(k, (client_port, peer_port, redis_port))| NodePlan {
            name: format!("n{}", k + 1),
            client_port,
            peer_port,
            redis_port: Some(redis_port),
            ap_only: false,
            tls: false,
        })
        .collect())
}

/// Writes `plans` to `path` (TOML, one `[[node]]` table per member).
fn save_plan(path: &Path, plans: &[NodePlan]) -> Result<(), DevError> {
    let mut text = String::from(
        "# Written by `concord dev`: the members of the cluster in this folder and their ports,\n\
         # reused by the next `concord dev --data-dir` on this folder.\n",
    );
    for p in plans {
        text.push_str(&format!(
            "\n[[node]]\nname = \"{}\"\nclient_port = {}\npeer_port = {}\n",
            p.name, p.client_port, p.peer_port
        ));
        if let Some(r) = p.redis_port {
            text.push_str(&format!("redis_port = {r}\n"));
        }
        if p.ap_only {
            text.push_str("ap_only = true\n");
        }
        if p.tls {
            text.push_str("tls = true\n");
        }
    }
    std::fs::write(path, text)
        .map_err(|e| DevError::Plan(format!("cannot write {}: {e}", path.display())))
}

/// Reads what [`save_plan`] wrote; `None` when there is no such file.
fn load_plan(path: &Path) -> Result<Option<Vec<NodePlan>>, DevError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(DevError::Plan(format!(
                "cannot read {}: {e}",
                path.display()
            )));
        }
    };
    let bad = |why: &str| {
        DevError::Plan(format!(
            "{} is damaged ({why}); remove it, or use another --data-dir",
            path.display()
        ))
    };
    let table: toml::Table = text.parse().map_err(|_| bad("not TOML"))?;
    let nodes = table
        .get("node")
        .and_then(toml::Value::as_array)
        .ok_or_else(|| bad("no [[node]]"))?;
    let port = |node: &toml::Value, key: &str| {
        node.get(key)
            .and_then(toml::Value::as_integer)
            .and_then(|p| u16::try_from(p).ok())
            .filter(|p| *p != 0)
            .ok_or_else(|| bad(&format!("bad {key}")))
    };
    let mut plans = Vec::new();
    for (k, node) in nodes.iter().enumerate() {
        let name = format!("n{}", k + 1);
        if node.get("name").and_then(toml::Value::as_str) != Some(name.as_str()) {
            return Err(bad(&format!("node {} is not named {name}", k + 1)));
        }
        plans.push(NodePlan {
            name,
            client_port: port(node, "client_port")?,
            peer_port: port(node, "peer_port")?,
            redis_port: match node.get("redis_port") {
                None => None,
                Some(_) => Some(port(node, "redis_port")?),
            },
            ap_only: node
                .get("ap_only")
                .and_then(toml::Value::as_bool)
                .unwrap_or(false),
            tls: node
                .get("tls")
                .and_then(toml::Value::as_bool)
                .unwrap_or(false),
        });
    }
    if plans.is_empty() || plans.len() > 7 {
        return Err(bad("expected 1 to 7 nodes"));
    }
    Ok(Some(plans))
}

/// `count` distinct free TCP ports on 127.0.0.1 (all bound at once, then released).
fn free_ports(count: usize) -> io::Result<Vec<u16>> {
    let listeners = (0..count)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
        .collect::<io::Result<Vec<_>>>()?;
    listeners
        .iter()
        .map(|l| l.local_addr().map(|a| a.port()))
        .collect()
}

/// The `concord server` arguments of member `index` of `plans`.
pub fn server_args(plans: &[NodePlan], index: usize, data_dir: &Path) -> Vec<String> {
    let me = &plans[index];
    // The Raft members; an AP-only member reads the cluster metadata from them.
    let cluster = plans
        .iter()
        .filter(|p| !p.ap_only)
        .map(|p| format!("{}={}", p.name, p.peer_url()))
        .collect::<Vec<_>>()
        .join(",");
    let mut args: Vec<String> = vec![
        "server".into(),
        format!("--name={}", me.name),
        format!("--data-dir={}", data_dir.join(&me.name).display()),
        format!("--listen-client-urls={}", me.client_url()),
        format!("--advertise-client-urls={}", me.client_url()),
        format!("--listen-peer-urls={}", me.peer_url()),
        format!("--initial-advertise-peer-urls={}", me.peer_url()),
        format!("--initial-cluster={cluster}"),
        // The server ignores this when its data dir already holds a member, so a restart
        // with the same --data-dir finds its data.
        "--initial-cluster-state=new".into(),
        "--initial-cluster-token=concord-dev".into(),
    ];
    args.extend(me.redis_url().map(|u| format!("--listen-redis-urls={u}")));
    if me.ap_only {
        args.push("--ap-only".into());
    }
    if me.tls {
        // Clients verify the members (server TLS); members verify each other (mutual TLS).
        let dir = data_dir.join(TLS_DIR);
        let file = |name: &str| dir.join(name).display().to_string();
        let cert = file(&format!("{}.pem", me.name));
        let key = file(&format!("{}-key.pem", me.name));
        let ca = file("ca.pem");
        args.extend([
            format!("--cert-file={cert}"),
            format!("--key-file={key}"),
            format!("--peer-cert-file={cert}"),
            format!("--peer-key-file={key}"),
            format!("--peer-trusted-ca-file={ca}"),
            "--peer-client-cert-auth".into(),
        ]);
    }
    args
}

/// Where `concord dev --tls` keeps its throw-away CA and certificates, in the data folder.
pub const TLS_DIR: &str = "tls";

/// The CA and a certificate per member (and `client.pem` for clients) in `dir`: made
/// unless every file is already there (a kept folder reuses them).
fn dev_pki(dir: &Path, plans: &[NodePlan]) -> Result<PathBuf, DevError> {
    let ca_file = dir.join("ca.pem");
    let names: Vec<String> = plans
        .iter()
        .map(|p| p.name.clone())
        .chain(["client".to_string()])
        .collect();
    let complete = ca_file.exists()
        && names.iter().all(|n| {
            dir.join(format!("{n}.pem")).exists() && dir.join(format!("{n}-key.pem")).exists()
        });
    if complete {
        return Ok(ca_file);
    }
    let fail = |e: concord_tls::TlsError| DevError::Plan(format!("certificates: {e}"));
    std::fs::create_dir_all(dir)
        .map_err(|e| DevError::Plan(format!("cannot create {}: {e}", dir.display())))?;
    let ca = concord_tls::pki::Ca::create(dir, "concord dev CA", "ca").map_err(fail)?;
    let hosts = concord_tls::pki::hosts_for([]);
    for name in &names {
        ca.issue(dir, name, &hosts).map_err(fail)?;
    }
    Ok(ca.cert_file)
}

/// A running (or exited) child.
struct Node {
    plan: NodePlan,
    log: PathBuf,
    child: Child,
    exit: Option<ExitStatus>,
}

impl Node {
    fn pid(&self) -> Option<Pid> {
        i32::try_from(self.child.id()).ok().map(Pid::from_raw)
    }

    /// Sends `sig` unless the child was already reaped (its PID may be reused).
    fn signal(&self, sig: NixSignal) {
        if self.exit.is_none() {
            if let Some(pid) = self.pid() {
                // ESRCH (already gone) is fine.
                let _ = kill(pid, sig);
            }
        }
    }

    /// Records the exit status if the child has exited. True when newly exited.
    fn poll_exit(&mut self) -> bool {
        if self.exit.is_some() {
            return false;
        }
        match self.child.try_wait() {
            Ok(Some(status)) => {
                self.exit = Some(status);
                true
            }
            Ok(None) => false,
            Err(_) => false,
        }
    }
}

/// The children. Dropping it SIGKILLs and reaps every child still running.
#[derive(Default)]
struct Children {
    nodes: Vec<Node>,
}

impl Children {
    fn running(&self) -> usize {
        self.nodes.iter().filter(|n| n.exit.is_none()).count()
    }

    /// Stops every running child: SIGTERM, up to `grace`, then SIGKILL. Reports each.
    async fn stop(&mut self, grace: Duration) {
        for node in &self.nodes {
            node.signal(NixSignal::SIGTERM);
        }
        let deadline = Instant::now() + grace;
        loop {
            for node in &mut self.nodes {
                if node.poll_exit() {
                    println!("stopped {} ({})", node.plan.name, describe(node.exit));
                }
            }
            if self.running() == 0 || Instant::now() >= deadline {
                break;
            }
            sleep(Duration::from_millis(50)).await;
        }
        for node in &mut self.nodes {
            if node.exit.is_none() {
                node.signal(NixSignal::SIGKILL);
                node.exit = node.child.wait().ok();
                println!(
                    "killed {}: it did not stop within {} s of SIGTERM (see {})",
                    node.plan.name,
                    grace.as_secs(),
                    node.log.display()
                );
            }
        }
    }
}

impl Drop for Children {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            node.poll_exit();
            if node.exit.is_none() {
                node.signal(NixSignal::SIGKILL);
                node.exit = node.child.wait().ok();
            }
        }
    }
}

fn describe(status: Option<ExitStatus>) -> String {
    match status {
        Some(s) => s.to_string(),
        None => "status unknown".into(),
    }
}

/// The data folder: given (kept) or temporary (removed when dropped).
struct DataDir {
    path: PathBuf,
    _temp: Option<tempfile::TempDir>,
}

impl DataDir {
    fn new(given: Option<PathBuf>) -> Result<Self, DevError> {
        match given {
            Some(path) => {
                std::fs::create_dir_all(&path).map_err(|source| DevError::DataDir {
                    path: path.clone(),
                    source,
                })?;
                Ok(DataDir { path, _temp: None })
            }
            None => {
                let temp = tempfile::Builder::new()
                    .prefix("concord-dev-")
                    .tempdir()
                    .map_err(|source| DevError::DataDir {
                        path: std::env::temp_dir(),
                        source,
                    })?;
                Ok(DataDir {
                    path: temp.path().to_path_buf(),
                    _temp: Some(temp),
                })
            }
        }
    }

    fn is_temporary(&self) -> bool {
        self._temp.is_some()
    }
}

/// Stop signals: SIGINT (Ctrl-C), SIGTERM, SIGHUP (the terminal went away).
struct StopSignals {
    int: Signal,
    term: Signal,
    hup: Signal,
}

impl StopSignals {
    fn new() -> io::Result<Self> {
        Ok(StopSignals {
            int: signal(SignalKind::interrupt())?,
            term: signal(SignalKind::terminate())?,
            hup: signal(SignalKind::hangup())?,
        })
    }

    async fn next(&mut self) -> &'static str {
        tokio::select! {
            _ = self.int.recv() => "SIGINT",
            _ = self.term.recv() => "SIGTERM",
            _ = self.hup.recv() => "SIGHUP",
        }
    }
}

/// Runs `concord dev`; returns the exit code.
pub fn run(args: DevArgs) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("concord dev: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(dev(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("concord dev: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn dev(args: DevArgs) -> Result<(), DevError> {
    let mut signals = StopSignals::new().map_err(DevError::Signals)?;
    let exe = std::env::current_exe().map_err(DevError::Exe)?;
    // Declared before `children`, so dropped after them: the folder outlives the processes.
    let data = DataDir::new(args.data_dir)?;
    let total = args.nodes.saturating_add(args.ap_members);
    if total > 7 {
        return Err(DevError::Plan(format!(
            "--nodes {} with --ap-members {} makes {total} members; at most 7",
            args.nodes, args.ap_members
        )));
    }
    let fresh_plan = || -> Result<Vec<NodePlan>, DevError> {
        let mut plans = plan(total, args.base_port)?;
        for p in plans.iter_mut().skip(usize::from(args.nodes)) {
            p.ap_only = true;
        }
        for p in &mut plans {
            p.tls = args.tls;
        }
        Ok(plans)
    };
    let ap_members = |plans: &[NodePlan]| plans.iter().filter(|p| p.ap_only).count();
    let plans = if data.is_temporary() {
        fresh_plan()?
    } else {
        // A kept folder remembers its ports: members are known to each other by their peer
        // URLs, so a restart (even after --base-port 0) must use the same ones.
        let saved = data.path.join(PLAN_FILE);
        match load_plan(&saved)? {
            Some(plans) if plans.iter().any(|p| p.tls != args.tls) => {
                return Err(DevError::Plan(format!(
                    "{} holds a cluster {} TLS; run {} --tls or use another --data-dir",
                    data.path.display(),
                    if args.tls { "without" } else { "with" },
                    if args.tls { "without" } else { "with" },
                )));
            }
            Some(plans)
                if plans.len() == usize::from(total)
                    && ap_members(&plans) == usize::from(args.ap_members) =>
            {
                println!(
                    "concord dev: reusing the ports of the previous run (from {})",
                    saved.display()
                );
                plans
            }
            Some(plans) => {
                let ap = ap_members(&plans);
                return Err(DevError::Plan(format!(
                    "{} holds a cluster of {} Raft and {ap} AP-only members; run with \
                     --nodes {} --ap-members {ap} or use another --data-dir",
                    data.path.display(),
                    plans.len() - ap,
                    plans.len() - ap,
                )));
            }
            None => {
                let plans = fresh_plan()?;
                save_plan(&saved, &plans)?;
                plans
            }
        }
    };
    if args.tls {
        let ca = dev_pki(&data.path.join(TLS_DIR), &plans)?;
        let dialer = concord_client::Dialer::new(concord_client::TlsSettings {
            ca_file: Some(ca),
            ..Default::default()
        })
        .map_err(|e| DevError::Plan(format!("certificates: {e}")))?;
        crate::ctl::http::set_tls(dialer);
    }
    let mut children = Children::default();

    println!(
        "concord dev: starting {} node{} in {}{}",
        plans.len(),
        if plans.len() == 1 { "" } else { "s" },
        data.path.display(),
        if data.is_temporary() {
            " (temporary, removed on exit)"
        } else {
            " (kept)"
        }
    );
    for (i, p) in plans.iter().enumerate() {
        let log = data.path.join(format!("{}.log", p.name));
        let child = spawn(&exe, &server_args(&plans, i, &data.path), &log).map_err(|source| {
            DevError::Spawn {
                name: p.name.clone(),
                source,
            }
        })?;
        println!("  {} logs to {}", p.name, log.display());
        children.nodes.push(Node {
            plan: p.clone(),
            log,
            child,
            exit: None,
        });
    }

    let ready = tokio::select! {
        r = wait_ready(&mut children) => Some(r),
        sig = signals.next() => {
            println!("received {sig} before the cluster was ready; stopping");
            None
        }
    };
    match ready {
        Some(Ok(())) => {}
        Some(Err(e)) => {
            children.stop(STOP_GRACE).await;
            return Err(e);
        }
        None => {
            children.stop(STOP_GRACE).await;
            return Ok(());
        }
    }
    print_endpoints(&plans, &data);

    loop {
        tokio::select! {
            sig = signals.next() => {
                println!("received {sig}; stopping the cluster");
                break;
            }
            _ = sleep(Duration::from_millis(200)) => {
                for node in &mut children.nodes {
                    if node.poll_exit() {
                        println!(
                            "{} exited by itself ({}); its log: {}",
                            node.plan.name,
                            describe(node.exit),
                            node.log.display()
                        );
                    }
                }
                if children.running() == 0 {
                    return Err(DevError::AllExited(data.path.display().to_string()));
                }
            }
        }
    }
    children.stop(STOP_GRACE).await;
    Ok(())
}

fn spawn(exe: &Path, args: &[String], log: &Path) -> io::Result<Child> {
    let out = OpenOptions::new().create(true).append(true).open(log)?;
    let err = out.try_clone()?;
    std::process::Command::new(exe)
        .args(args)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        // Own process group: Ctrl-C in the terminal reaches only `concord dev`.
        .process_group(0)
        .spawn()
}

/// Polls every node's `/ready` until all answer 200, a node exits, or the time is up.
async fn wait_ready(children: &mut Children) -> Result<(), DevError> {
    let deadline = Instant::now() + READY_TIMEOUT;
    let mut ready = vec![false; children.nodes.len()];
    loop {
        for (i, node) in children.nodes.iter_mut().enumerate() {
            if ready[i] {
                continue;
            }
            if node.poll_exit() {
                let mut tail = log_tail(&node.log, TAIL_LINES);
                if tail.contains("already in use") {
                    tail.push_str(
                        "\nhint: a port is taken (another etcd or concord?); \
                         try another --base-port, or --base-port 0 for free ports",
                    );
                }
                return Err(DevError::ExitedEarly {
                    name: node.plan.name.clone(),
                    status: node.exit.unwrap_or_default(),
                    log: node.log.display().to_string(),
                    tail,
                });
            }
            ready[i] = matches!(
                http_status(&node.plan.client_url(), "/ready").await,
                Ok(200)
            );
        }
        if ready.iter().all(|r| *r) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            let i = ready.iter().position(|r| !r).unwrap_or(0);
            let node = &children.nodes[i];
            return Err(DevError::NotReady {
                name: node.plan.name.clone(),
                secs: READY_TIMEOUT.as_secs(),
                log: node.log.display().to_string(),
                tail: log_tail(&node.log, TAIL_LINES),
            });
        }
        sleep(READY_POLL).await;
    }
}

/// The status code of `GET path` on `endpoint` (HTTP/1.1, one second at most).
pub async fn http_status(endpoint: &str, path: &str) -> io::Result<u16> {
    let attempt = async {
        let mut stream = send_get(endpoint, path).await?;
        let mut head = Vec::with_capacity(128);
        let mut buf = [0u8; 128];
        while !head.windows(2).any(|w| w == b"\r\n") && head.len() < 1024 {
            let n = stream.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            head.extend_from_slice(&buf[..n]);
        }
        parse_status_line(&head)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "not an HTTP response"))
    };
    timeout(Duration::from_secs(1), attempt)
        .await
        .unwrap_or_else(|_| {
            Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "no answer within 1 s",
            ))
        })
}

/// The last `lines` lines of a log file (at most its last 64 KiB), for error messages.
pub fn log_tail(path: &Path, lines: usize) -> String {
    const MAX: u64 = 64 * 1024;
    let read = || -> io::Result<String> {
        let mut f = std::fs::File::open(path)?;
        let len = f.metadata()?.len();
        f.seek(SeekFrom::Start(len.saturating_sub(MAX)))?;
        let mut bytes = Vec::new();
        f.read_to_end(&mut bytes)?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    };
    match read() {
        Ok(text) => {
            let all: Vec<&str> = text.lines().collect();
            let tail = &all[all.len().saturating_sub(lines)..];
            if tail.is_empty() {
                "  (the log is empty)".into()
            } else {
                tail.iter()
                    .map(|l| format!("  | {l}"))
                    .collect::<Vec<_>>()
                    .join("\n")
            }
        }
        Err(e) => format!("  (cannot read the log: {e})"),
    }
}

fn print_endpoints(plans: &[NodePlan], data: &DataDir) {
    let endpoints = plans
        .iter()
        .filter(|p| !p.ap_only)
        .map(|p| {
            if p.tls {
                p.client_url()
            } else {
                format!("127.0.0.1:{}", p.client_port)
            }
        })
        .collect::<Vec<_>>()
        .join(",");
    let tls = plans.iter().any(|p| p.tls);
    println!();
    println!("concord dev: {} node(s) ready", plans.len());
    println!();
    println!(
        "  {:<5} {:<8} {:<24} {:<24} {:<24} LOG",
        "NAME", "ROLE", "CLIENT ENDPOINT", "PEER URL", "REDIS URL"
    );
    for p in plans {
        println!(
            "  {:<5} {:<8} {:<24} {:<24} {:<24} {}",
            p.name,
            if p.ap_only { "AP-only" } else { "raft" },
            p.client_url(),
            p.peer_url(),
            p.redis_url().unwrap_or_else(|| "-".into()),
            data.path.join(format!("{}.log", p.name)).display()
        );
    }
    println!();
    if let Some(first) = plans.first() {
        println!("dashboard: {}/ui", first.client_url());
    }
    if tls {
        let ca = data.path.join(TLS_DIR).join("ca.pem");
        println!(
            "ETCDCTL_API=3 etcdctl --endpoints={endpoints} --cacert={} endpoint status -w table",
            ca.display()
        );
        println!(
            "(TLS: the CA is {}; a client certificate is tls/client.pem with tls/client-key.pem)",
            ca.display()
        );
    } else {
        println!("ETCDCTL_API=3 etcdctl --endpoints={endpoints} endpoint status -w table");
    }
    println!("export ENDPOINTS={endpoints}");
    if let Some(port) = plans.first().and_then(|p| p.redis_port) {
        println!("redis-cli -p {port} set greeting hello   # AP buckets over the Redis protocol");
    }
    println!();
    println!(
        "data in {}{}; press Ctrl-C to stop",
        data.path.display(),
        if data.is_temporary() {
            " (removed on exit)"
        } else {
            " (kept)"
        }
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[test]
    fn default_plan_matches_etcds_procfile() {
        let p = plan(3, 2379).unwrap();
        let ports: Vec<(u16, u16)> = p.iter().map(|n| (n.client_port, n.peer_port)).collect();
        assert_eq!(ports, vec![(2379, 2380), (12379, 12380), (22379, 22380)]);
        assert_eq!(p[2].name, "n3");
        assert_eq!(plan(7, 2379).unwrap()[6].client_port, 62379);
        let redis: Vec<Option<u16>> = p.iter().map(|n| n.redis_port).collect();
        assert_eq!(redis, [Some(6379), Some(16379), Some(26379)]);
        assert_eq!(plan(7, 2379).unwrap()[6].redis_port, Some(62381));
        let args = server_args(&p, 1, Path::new("/d"));
        assert!(args.contains(&"--listen-redis-urls=redis://127.0.0.1:16379".to_string()));
    }

    #[test]
    fn ports_past_65535_are_refused() {
        let e = plan(7, 10_000).unwrap_err().to_string();
        assert!(e.contains("--base-port 0"), "{e}");
        assert!(plan(1, 65_535).is_err(), "the peer port would be 65536");
    }

    #[test]
    fn base_port_zero_picks_distinct_free_ports() {
        let p = plan(3, 0).unwrap();
        let mut ports: Vec<u16> = p
            .iter()
            .flat_map(|n| [n.client_port, n.peer_port, n.redis_port.unwrap_or(0)])
            .collect();
        assert!(ports.iter().all(|p| *p != 0));
        ports.sort_unstable();
        ports.dedup();
        assert_eq!(ports.len(), 9);
    }

    #[test]
    fn child_arguments_form_a_valid_cluster() {
        let plans = plan(3, 2379).unwrap();
        let args = server_args(&plans, 1, Path::new("/d"));
        assert_eq!(args[0], "server");
        assert!(args.contains(&"--name=n2".to_string()));
        assert!(args.contains(&"--data-dir=/d/n2".to_string()));
        assert!(args.contains(&"--listen-client-urls=http://127.0.0.1:12379".to_string()));
        assert!(args.contains(
            &"--initial-cluster=n1=http://127.0.0.1:2380,n2=http://127.0.0.1:12380,n3=http://127.0.0.1:22380"
                .to_string()
        ));
        // The arguments parse and validate as `concord server` would.
        let mut argv: Vec<std::ffi::OsString> = vec!["concord".into()];
        argv.extend(args.iter().map(Into::into));
        let cli = crate::cli::parse(argv).unwrap();
        let crate::cli::Command::Server(a) = cli.command else {
            panic!("not server")
        };
        let s = crate::config::resolve(*a, &Default::default()).unwrap();
        assert_eq!(s.server.founding_members().len(), 3);
        assert!(s.warnings.is_empty());
    }

    #[test]
    fn ap_only_members_read_from_the_raft_members_and_their_role_is_saved() {
        let mut plans = plan(5, 2379).unwrap();
        for p in plans.iter_mut().skip(3) {
            p.ap_only = true;
        }
        let raft = "--initial-cluster=n1=http://127.0.0.1:2380,n2=http://127.0.0.1:12380,\
                    n3=http://127.0.0.1:22380";
        for i in 0..5 {
            let args = server_args(&plans, i, Path::new("/d"));
            assert!(args.contains(&raft.to_string()), "{args:?}");
            assert_eq!(args.contains(&"--ap-only".to_string()), i >= 3, "{args:?}");
            let mut argv: Vec<std::ffi::OsString> = vec!["concord".into()];
            argv.extend(args.iter().map(Into::into));
            let crate::cli::Command::Server(a) = crate::cli::parse(argv).unwrap().command else {
                panic!("not server")
            };
            let s = crate::config::resolve(*a, &Default::default()).unwrap();
            assert_eq!(s.server.ap_only, i >= 3);
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(PLAN_FILE);
        save_plan(&path, &plans).unwrap();
        assert_eq!(load_plan(&path).unwrap().unwrap(), plans);
    }

    #[test]
    fn saved_plan_round_trips_and_damage_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(PLAN_FILE);
        assert!(load_plan(&path).unwrap().is_none());
        let plans = plan(3, 0).unwrap();
        save_plan(&path, &plans).unwrap();
        assert_eq!(load_plan(&path).unwrap().unwrap(), plans);
        std::fs::write(
            &path,
            "[[node]]\nname = \"n1\"\nclient_port = 70000\npeer_port = 1\n",
        )
        .unwrap();
        let e = load_plan(&path).unwrap_err().to_string();
        assert!(e.contains("bad client_port"), "{e}");
        std::fs::write(&path, "[[node]]\nname = \"n2\"\n").unwrap();
        assert!(load_plan(&path).is_err());
    }

    #[tokio::test]
    async fn http_status_reads_the_status_code() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 512];
            let n = s.read(&mut buf).await.unwrap();
            assert!(buf[..n].starts_with(b"GET /ready HTTP/1.1\r\n"));
            s.write_all(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n")
                .await
                .unwrap();
        });
        assert_eq!(
            http_status(&format!("127.0.0.1:{port}"), "/ready")
                .await
                .unwrap(),
            503
        );
        server.await.unwrap();
        // Nothing listens there any more.
        assert!(http_status(&format!("127.0.0.1:{port}"), "/ready")
            .await
            .is_err());
    }

    #[test]
    fn log_tail_shows_the_last_lines() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("n1.log");
        let text: String = (1..=30).map(|i| format!("line {i}\n")).collect();
        std::fs::write(&log, text).unwrap();
        let tail = log_tail(&log, 3);
        assert_eq!(tail, "  | line 28\n  | line 29\n  | line 30");
        assert!(log_tail(&dir.path().join("missing.log"), 3).contains("cannot read"));
    }

    #[test]
    fn dropping_children_kills_them() {
        let mut children = Children::default();
        let child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .expect("sleep runs");
        let pid = Pid::from_raw(i32::try_from(child.id()).unwrap());
        children.nodes.push(Node {
            plan: plan(1, 2379).unwrap().remove(0),
            log: PathBuf::from("/dev/null"),
            child,
            exit: None,
        });
        drop(children);
        // Reaped: the PID no longer names our child.
        assert!(kill(pid, None).is_err());
    }

    #[tokio::test]
    async fn stop_terminates_children() {
        let mut children = Children::default();
        let child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .expect("sleep runs");
        children.nodes.push(Node {
            plan: plan(1, 2379).unwrap().remove(0),
            log: PathBuf::from("/dev/null"),
            child,
            exit: None,
        });
        children.stop(Duration::from_secs(5)).await;
        let status = children.nodes[0].exit.expect("reaped");
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(libc_sigterm()));
    }

    #[tokio::test]
    async fn stop_kills_children_that_ignore_sigterm() {
        let dir = tempfile::tempdir().unwrap();
        let flag = dir.path().join("trapped");
        let mut children = Children::default();
        let child = std::process::Command::new("sh")
            .args(["-c", "trap '' TERM; : > \"$1\"; exec sleep 30", "sh"])
            .arg(&flag)
            .spawn()
            .expect("sh runs");
        children.nodes.push(Node {
            plan: plan(1, 2379).unwrap().remove(0),
            log: PathBuf::from("/dev/null"),
            child,
            exit: None,
        });
        // Signal only once the shell ignores SIGTERM.
        let waiting = Instant::now();
        while !flag.exists() {
            assert!(
                waiting.elapsed() < Duration::from_secs(10),
                "sh never started"
            );
            sleep(Duration::from_millis(10)).await;
        }
        let started = Instant::now();
        children.stop(Duration::from_millis(300)).await;
        assert!(started.elapsed() < Duration::from_secs(5));
        let status = children.nodes[0].exit.expect("reaped");
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(NixSignal::SIGKILL as i32));
    }

    fn libc_sigterm() -> i32 {
        NixSignal::SIGTERM as i32
    }
}
