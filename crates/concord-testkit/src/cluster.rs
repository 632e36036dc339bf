//! A cluster of real `concord server` processes on 127.0.0.1 (ephemeral ports, fast Raft
//! timings, data and logs in one temporary folder), driven by the independent `etcd-client`
//! crate exactly as an etcd user would drive etcd. Every wait is bounded. Dropping the
//! cluster kills every child by PID (SIGKILL, then `wait`) and removes the folder; when the
//! test is failing, the tail of every node's log is printed first.

use std::fs::OpenOptions;
use std::io::{Read, Seek, SeekFrom, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use etcd_client::{Client, ConnectOptions};
use tempfile::TempDir;

use crate::etcd::{connect, RetryClient};
use crate::http::http_get;
use crate::ports::free_ports;
use crate::wait::eventually;

/// `--heartbeat-interval` given to every node (ms).
pub const HEARTBEAT_MS: u64 = 50;
/// `--election-timeout` given to every node (ms).
pub const ELECTION_MS: u64 = 500;
/// Bound on every "wait until ready / caught up / elected" loop.
pub const WAIT: Duration = Duration::from_secs(30);
/// Per-request timeout of the clients returned by [`Cluster::client`].
pub const RPC_TIMEOUT: Duration = Duration::from_secs(10);
/// Lines of each log printed when a test fails.
const LOG_TAIL_LINES: usize = 80;

/// One `concord server` process (or a reserved slot for one).
pub struct Node {
    /// `--name`.
    pub name: String,
    /// Port of the client URL (gRPC and HTTP).
    pub client_port: u16,
    /// Port of the peer URL.
    pub peer_port: u16,
    /// Port of the Redis URL (AP buckets).
    pub redis_port: u16,
    /// `--data-dir`.
    pub data_dir: PathBuf,
    /// File receiving the child's stdout and stderr (appended across restarts).
    pub log_path: PathBuf,
    args: Vec<String>,
    child: Option<Child>,
}

impl Node {
    /// `http://127.0.0.1:<client port>`.
    pub fn client_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    /// `http://127.0.0.1:<peer port>`.
    pub fn peer_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.peer_port)
    }

    /// Whether the harness currently has a live child for this node.
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    fn kill_child(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn log_tail(&self, lines: usize) -> String {
        let mut text = String::new();
        if let Ok(mut f) = std::fs::File::open(&self.log_path) {
            // Only the last 256 KiB matter.
            if let Ok(len) = f.seek(SeekFrom::End(0)) {
                let _ = f.seek(SeekFrom::Start(len.saturating_sub(256 * 1024)));
            }
            let mut bytes = Vec::new();
            let _ = f.read_to_end(&mut bytes);
            text = String::from_utf8_lossy(&bytes).into_owned();
        }
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

/// Extra flags and size of a cluster to start.
pub struct ClusterBuilder {
    binary: PathBuf,
    size: usize,
    extra: Vec<String>,
}

impl ClusterBuilder {
    /// Adds `--name value` to every node's command line.
    pub fn flag(mut self, name: &str, value: impl ToString) -> Self {
        self.extra.push(name.to_string());
        self.extra.push(value.to_string());
        self
    }

    /// Launches the processes and waits (bounded) until every node is ready and a leader exists.
    /// Retries the whole launch when a port picked as free was taken meanwhile.
    pub async fn start(self) -> Cluster {
        const ATTEMPTS: usize = 3;
        for attempt in 1..=ATTEMPTS {
            let mut cluster = Cluster::launch(&self.binary, self.size, self.extra.clone());
            match cluster.wait_all_ready().await {
                Ok(()) => {
                    cluster.leader().await;
                    return cluster;
                }
                Err(e) if attempt < ATTEMPTS && cluster.any_log_mentions_port_in_use() => {
                    eprintln!("launch attempt {attempt} hit a taken port ({e}); retrying");
                    drop(cluster);
                }
                Err(e) => panic!("cluster of {} did not start: {e}", self.size),
            }
        }
        unreachable!("the last attempt either returns or panics")
    }
}

/// A set of `concord server` processes forming one cluster.
pub struct Cluster {
    /// The nodes, index = position in `--initial-cluster` (plus members added later).
    pub nodes: Vec<Node>,
    binary: PathBuf,
    extra: Vec<String>,
    token: String,
    dir: TempDir,
}

impl Cluster {
    /// Builder for a cluster of `size` nodes running `binary` (in a test of the `concord`
    /// crate, `env!("CARGO_BIN_EXE_concord")`).
    pub fn builder(binary: impl Into<PathBuf>, size: usize) -> ClusterBuilder {
        ClusterBuilder {
            binary: binary.into(),
            size,
            extra: Vec::new(),
        }
    }

    /// Starts `size` nodes with the default test flags and waits until they are ready.
    pub async fn start(binary: impl Into<PathBuf>, size: usize) -> Cluster {
        Cluster::builder(binary, size).start().await
    }

    fn launch(binary: &Path, size: usize, extra: Vec<String>) -> Cluster {
        let dir = tempfile::Builder::new()
            .prefix("concord-e2e-")
            .tempdir()
            .expect("create temp dir");
        let ports = free_ports(3 * size);
        let token = format!("e2e-{}", ports[0]);
        let mut nodes: Vec<Node> = (0..size)
            .map(|i| new_node(dir.path(), &format!("n{i}"), &ports[3 * i..3 * i + 3]))
            .collect();
        let initial_cluster = nodes
            .iter()
            .map(|n| format!("{}={}", n.name, n.peer_url()))
            .collect::<Vec<_>>()
            .join(",");
        for node in &mut nodes {
            node.args = server_args(node, &initial_cluster, "new", &token, &extra);
        }
        let mut cluster = Cluster {
            nodes,
            binary: binary.to_path_buf(),
            extra,
            token,
            dir,
        };
        for i in 0..size {
            cluster.spawn(i);
        }
        cluster
    }

    /// Root of the temporary folder (data dirs and logs).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Number of node slots (running or not).
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether the cluster has no node slots.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Client URL of node `i`.
    pub fn url(&self, i: usize) -> String {
        self.nodes[i].client_url()
    }

    /// Client URLs of every running node.
    pub fn running_urls(&self) -> Vec<String> {
        self.nodes
            .iter()
            .filter(|n| n.is_running())
            .map(Node::client_url)
            .collect()
    }

    /// Indexes of the running nodes.
    pub fn running(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&i| self.nodes[i].is_running())
            .collect()
    }

    /// Starts the process of node `i` with its recorded flags (does not wait).
    pub fn spawn(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        assert!(node.child.is_none(), "{} is already running", node.name);
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log_path)
            .expect("open node log");
        let _ = writeln!(log, "=== harness: starting concord {}", node.args.join(" "));
        let err = log.try_clone().expect("clone log handle");
        let child = Command::new(&self.binary)
            .args(&node.args)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(err))
            .env("RUST_BACKTRACE", "1")
            .spawn()
            .expect("spawn concord server");
        node.child = Some(child);
    }

    fn any_log_mentions_port_in_use(&self) -> bool {
        self.nodes.iter().any(|n| {
            std::fs::read_to_string(&n.log_path)
                .map(|s| {
                    let s = s.to_lowercase();
                    s.contains("address already in use") || s.contains("addrinuse")
                })
                .unwrap_or(false)
        })
    }

    async fn wait_all_ready(&mut self) -> Result<(), String> {
        for i in 0..self.nodes.len() {
            self.try_wait_ready(i).await?;
        }
        Ok(())
    }

    /// Waits (bounded by [`WAIT`]) until node `i` answers `/ready` with 200, or, failing
    /// that, answers a Maintenance `status` naming a leader. Errors if the process exits.
    pub async fn try_wait_ready(&mut self, i: usize) -> Result<(), String> {
        let deadline = Instant::now() + WAIT;
        let port = self.nodes[i].client_port;
        let url = self.nodes[i].client_url();
        loop {
            {
                let node = &mut self.nodes[i];
                let Some(child) = node.child.as_mut() else {
                    return Err(format!("{} is not running", node.name));
                };
                if let Ok(Some(status)) = child.try_wait() {
                    node.child = None;
                    return Err(format!("{} exited during startup: {status}", node.name));
                }
            }
            if let Ok(resp) = http_get(port, "/ready").await {
                if resp.status == 200 {
                    return Ok(());
                }
            }
            if let Ok(mut c) = connect(&url, Some(Duration::from_secs(2))).await {
                if let Ok(Ok(s)) = tokio::time::timeout(Duration::from_secs(2), c.status()).await {
                    if s.leader() != 0 {
                        return Ok(());
                    }
                }
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "{} not ready after {WAIT:?} (neither /ready 200 nor a status naming a leader)",
                    self.nodes[i].name
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// [`Cluster::try_wait_ready`], panicking on failure.
    pub async fn wait_ready(&mut self, i: usize) {
        if let Err(e) = self.try_wait_ready(i).await {
            panic!("{e}");
        }
    }

    /// SIGKILL node `i` and reap it.
    pub fn kill9(&mut self, i: usize) {
        self.nodes[i].kill_child();
    }

    /// SIGTERM node `i` and wait up to 15 s for it to exit (SIGKILL after that, and `Err`).
    pub fn terminate(&mut self, i: usize) -> Result<ExitStatus, String> {
        let node = &mut self.nodes[i];
        let Some(mut child) = node.child.take() else {
            return Err(format!("{} is not running", node.name));
        };
        let sent = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        if !matches!(sent, Ok(s) if s.success()) {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("could not send SIGTERM to {}: {sent:?}", node.name));
        }
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            match child.try_wait() {
                Ok(Some(status)) => return Ok(status),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(format!("{} did not exit within 15 s of SIGTERM", node.name));
                }
            }
        }
    }

    /// Starts node `i` again with the same flags and data dir, and waits until it is ready.
    pub async fn restart(&mut self, i: usize) {
        self.spawn(i);
        self.wait_ready(i).await;
    }

    /// Index of the current leader, per Maintenance status (leader id == the answering
    /// member's id). Polls up to [`WAIT`]; panics if no running node reports being leader.
    pub async fn leader(&self) -> usize {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(i) = self.leader_once().await {
                return i;
            }
            if Instant::now() > deadline {
                panic!("no leader among running nodes after {WAIT:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// One round of status calls: the running node that says it is the leader, if any.
    pub async fn leader_once(&self) -> Option<usize> {
        for i in self.running() {
            if let Some((member, leader)) = self.status_ids(i).await {
                if leader != 0 && leader == member {
                    return Some(i);
                }
            }
        }
        None
    }

    /// `(member_id, leader_id)` reported by node `i`, or `None` if it does not answer.
    pub async fn status_ids(&self, i: usize) -> Option<(u64, u64)> {
        let mut c = connect(&self.url(i), Some(Duration::from_secs(2)))
            .await
            .ok()?;
        let s = tokio::time::timeout(Duration::from_secs(2), c.status())
            .await
            .ok()?
            .ok()?;
        Some((s.header()?.member_id(), s.leader()))
    }

    /// Member id of node `i` (from its status header).
    pub async fn member_id(&self, i: usize) -> u64 {
        eventually(
            &format!("member id of {}", self.nodes[i].name),
            WAIT,
            || async { self.status_ids(i).await.map(|(m, _)| m).filter(|&m| m != 0) },
        )
        .await
    }

    /// A client of node `i` alone, with a [`RPC_TIMEOUT`] per request (unary calls).
    pub async fn client(&self, i: usize) -> Client {
        connect(&self.url(i), Some(RPC_TIMEOUT))
            .await
            .expect("connect etcd client")
    }

    /// A client of node `i` without a request timeout (for watch and keep-alive streams).
    pub async fn stream_client(&self, i: usize) -> Client {
        connect(&self.url(i), None)
            .await
            .expect("connect etcd client")
    }

    /// A client balancing over every running node.
    pub async fn client_all(&self) -> Client {
        let urls = self.running_urls();
        Client::connect(
            &urls,
            Some(
                ConnectOptions::new()
                    .with_connect_timeout(Duration::from_secs(2))
                    .with_timeout(RPC_TIMEOUT),
            ),
        )
        .await
        .expect("connect etcd client")
    }

    /// A [`RetryClient`] over every node slot (dead ones are skipped by failing fast).
    pub async fn retry_client(&self) -> RetryClient {
        let mut clients = Vec::new();
        for i in 0..self.nodes.len() {
            clients.push(
                connect(&self.url(i), Some(Duration::from_secs(2)))
                    .await
                    .expect("connect"),
            );
        }
        RetryClient::new(clients)
    }

    /// Reserves ports, a data dir and a log for a node to be added with `member add`; the
    /// process is started by [`Cluster::start_added_member`].
    pub fn reserve_node(&mut self, name: &str) -> usize {
        let ports = free_ports(3);
        let node = new_node(self.dir.path(), name, &ports);
        self.nodes.push(node);
        self.nodes.len() - 1
    }

    /// Starts reserved node `i` as an AP-only member (`--ap-only`) that reads the cluster
    /// metadata from the Raft members `raft_members` (node indexes). Waits until it is
    /// ready (it has registered and knows the ring).
    pub async fn start_ap_only_member(&mut self, i: usize, raft_members: &[usize]) {
        let token = self.token.clone();
        self.spawn_ap_only_member(i, raft_members, &token);
        self.wait_ready(i).await;
    }

    /// Spawns reserved node `i` as an AP-only member of the cluster named by `token`
    /// (the cluster's own, or another to see it refused), without waiting.
    pub fn spawn_ap_only_member(&mut self, i: usize, raft_members: &[usize], token: &str) {
        let initial_cluster = raft_members
            .iter()
            .map(|&m| format!("{}={}", self.nodes[m].name, self.nodes[m].peer_url()))
            .collect::<Vec<_>>()
            .join(",");
        let mut args = server_args(&self.nodes[i], &initial_cluster, "new", token, &self.extra);
        args.push("--ap-only".into());
        self.nodes[i].args = args;
        self.spawn(i);
    }

    /// Whether node `i`'s process has exited by itself (its status is then reaped).
    pub fn has_exited(&mut self, i: usize) -> bool {
        match self.nodes[i].child.as_mut().map(|c| c.try_wait()) {
            Some(Ok(Some(_))) => {
                self.nodes[i].child = None;
                true
            }
            Some(_) => false,
            None => true,
        }
    }

    /// Starts reserved node `i` as etcd documents for a member added at run time:
    /// `--initial-cluster-state existing` and `--initial-cluster` listing the existing members
    /// and itself. Waits until it is ready.
    pub async fn start_added_member(&mut self, i: usize, initial_cluster: &str) {
        let args = server_args(
            &self.nodes[i],
            initial_cluster,
            "existing",
            &self.token,
            &self.extra,
        );
        self.nodes[i].args = args;
        self.spawn(i);
        self.wait_ready(i).await;
    }

    /// Prints the tail of every node's log to stderr.
    pub fn print_logs(&self) {
        for node in &self.nodes {
            eprintln!(
                "----- last {LOG_TAIL_LINES} lines of {} ({}) -----\n{}",
                node.name,
                node.log_path.display(),
                node.log_tail(LOG_TAIL_LINES)
            );
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            node.kill_child();
        }
        if std::thread::panicking() {
            self.print_logs();
        }
    }
}

/// A node on `ports`: client, peer and Redis port.
fn new_node(dir: &Path, name: &str, ports: &[u16]) -> Node {
    Node {
        name: name.to_string(),
        client_port: ports[0],
        peer_port: ports[1],
        redis_port: ports[2],
        data_dir: dir.join(format!("{name}.data")),
        log_path: dir.join(format!("{name}.log")),
        args: Vec::new(),
        child: None,
    }
}

fn server_args(
    node: &Node,
    initial_cluster: &str,
    state: &str,
    token: &str,
    extra: &[String],
) -> Vec<String> {
    let mut args: Vec<String> = vec![
        "server".into(),
        "--name".into(),
        node.name.clone(),
        "--data-dir".into(),
        node.data_dir.display().to_string(),
        "--listen-client-urls".into(),
        node.client_url(),
        "--advertise-client-urls".into(),
        node.client_url(),
        "--listen-peer-urls".into(),
        node.peer_url(),
        "--initial-advertise-peer-urls".into(),
        node.peer_url(),
        "--initial-cluster".into(),
        initial_cluster.to_string(),
        "--initial-cluster-state".into(),
        state.into(),
        "--initial-cluster-token".into(),
        token.into(),
        "--heartbeat-interval".into(),
        HEARTBEAT_MS.to_string(),
        "--election-timeout".into(),
        ELECTION_MS.to_string(),
        "--listen-redis-urls".into(),
        format!("redis://127.0.0.1:{}", node.redis_port),
    ];
    args.extend(extra.iter().cloned());
    args
}
