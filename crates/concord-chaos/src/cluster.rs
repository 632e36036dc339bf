//! Hosts and node processes: network namespaces on a bridge (`--netns`) or loopback ports
//! (`--local`); starting, killing, pausing nodes; nftables rules; teardown.

use std::collections::BTreeSet;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// Name of the bridge in the root namespace.
pub const BRIDGE: &str = "cc-br0";
/// Address of the bridge in the root namespace (the control plane: readiness checks, leader
/// discovery, membership calls and test hooks), without prefix length.
pub const BRIDGE_IP: &str = "10.77.0.1";
/// Namespace of the client host: every workload connection starts here.
pub const CLIENT_NS: &str = "cc-client";
/// Address of the client host.
pub const CLIENT_IP: &str = "10.77.0.2";
/// Root-namespace end of the client host's veth pair.
const CLIENT_VETH: &str = "cc-vc";
/// Prefix of the node namespaces (`cc-n1`, `cc-n2`, ...).
pub const NS_PREFIX: &str = "cc-n";
/// File remembering node PIDs of a local run, to clean up after a crash.
const LOCAL_PID_FILE: &str = "/tmp/concord-chaos-local.pids";
/// First client port of a local run; node i uses BASE + 10*i and BASE + 10*i + 1.
const LOCAL_BASE_PORT: u16 = 23000;

/// How nodes are hosted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// One network namespace per node, on a bridge (needs root).
    Netns,
    /// Loopback, distinct ports, process faults only.
    Local,
}

/// One node's fixed parameters.
#[derive(Clone, Debug)]
pub struct NodeSpec {
    /// Member name (`n1`...).
    pub name: String,
    /// Namespace, in netns mode.
    pub ns: Option<String>,
    /// IP address of the node.
    pub ip: String,
    /// Client URL (`http://ip:port`).
    pub client_url: String,
    /// Peer URL.
    pub peer_url: String,
    /// Redis protocol address (`ip:port`) of the AP buckets.
    pub redis_addr: String,
    /// Data directory.
    pub data_dir: PathBuf,
    /// Log file (stdout and stderr, appended across restarts).
    pub log: PathBuf,
}

/// Per-node firewall state, rendered into the `inet cc` table of the node's namespace.
#[derive(Clone, Debug, Default)]
struct Firewall {
    drop_in: BTreeSet<String>,
    drop_out: BTreeSet<String>,
    loss_percent: Option<u8>,
}

struct NodeState {
    child: Option<Child>,
    paused: bool,
    fw: Firewall,
    /// Removed from the membership: must not start until re-added.
    removed: bool,
    /// Re-added member: starts with `--initial-cluster-state existing`.
    existing: bool,
}

/// The cluster under test.
pub struct Cluster {
    /// Hosting mode.
    pub mode: Mode,
    /// Node specifications, index 0 = `n1`.
    pub nodes: Vec<NodeSpec>,
    bin: PathBuf,
    initial_cluster: String,
    extra_args: Vec<String>,
    state: Mutex<Vec<NodeState>>,
    closed: std::sync::atomic::AtomicBool,
}

/// Runs a command, returning its stderr on failure.
pub fn run_cmd(program: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| format!("{program}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn nft_script(ns: &str, script: &str) -> Result<(), String> {
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns, "nft", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("nft: {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(script.as_bytes())
            .map_err(|e| format!("nft stdin: {e}"))?;
    }
    let out = child.wait_with_output().map_err(|e| format!("nft: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "nft in {ns}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn render(fw: &Firewall) -> String {
    let mut input = String::new();
    let mut output = String::new();
    if !fw.drop_in.is_empty() {
        let set: Vec<&str> = fw.drop_in.iter().map(String::as_str).collect();
        input.push_str(&format!("    ip saddr {{ {} }} drop\n", set.join(", ")));
    }
    if !fw.drop_out.is_empty() {
        let set: Vec<&str> = fw.drop_out.iter().map(String::as_str).collect();
        output.push_str(&format!("    ip daddr {{ {} }} drop\n", set.join(", ")));
    }
    if let Some(p) = fw.loss_percent {
        // Peer traffic only: connections to the peer port and their replies.
        for dir in ["dport", "sport"] {
            input.push_str(&format!(
                "    tcp {dir} 2380 numgen random mod 100 < {p} drop\n"
            ));
            output.push_str(&format!(
                "    tcp {dir} 2380 numgen random mod 100 < {p} drop\n"
            ));
        }
    }
    // Creating then deleting the table first makes the whole script one atomic replace.
    format!(
        "table inet cc {{}}\ndelete table inet cc\ntable inet cc {{\n  chain input {{\n    type filter hook input priority 0; policy accept;\n{input}  }}\n  chain output {{\n    type filter hook output priority 0; policy accept;\n{output}  }}\n}}\n"
    )
}

fn pid_of(child: &Child) -> Option<Pid> {
    i32::try_from(child.id()).ok().map(Pid::from_raw)
}

/// Removes what a previous crashed run may have left: processes in our namespaces, the
/// namespaces, the bridge, and processes of a local run listed in the PID file.
pub fn remove_leftovers(bin: &Path) {
    if let Ok(list) = run_cmd("ip", &["netns", "list"]) {
        for line in list.lines() {
            let Some(name) = line.split_whitespace().next() else {
                continue;
            };
            if !(name.starts_with(NS_PREFIX) || name == CLIENT_NS) {
                continue;
            }
            if let Ok(pids) = run_cmd("ip", &["netns", "pids", name]) {
                for p in pids
                    .split_whitespace()
                    .filter_map(|p| p.parse::<i32>().ok())
                {
                    let _ = kill(Pid::from_raw(p), Signal::SIGKILL);
                }
            }
            std::thread::sleep(Duration::from_millis(100));
            let _ = run_cmd("ip", &["netns", "del", name]);
        }
    }
    remove_links();
    if let Ok(text) = fs::read_to_string(LOCAL_PID_FILE) {
        let bin_s = bin.to_string_lossy();
        for p in text
            .split_whitespace()
            .filter_map(|p| p.parse::<i32>().ok())
        {
            // Only kill a process that is still a concord server started from our binary.
            let cmdline = fs::read(format!("/proc/{p}/cmdline")).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            if cmdline.contains(bin_s.as_ref()) && cmdline.contains(" server ") {
                let _ = kill(Pid::from_raw(p), Signal::SIGKILL);
            }
        }
        let _ = fs::remove_file(LOCAL_PID_FILE);
    }
}

impl Cluster {
    /// Plans `n` nodes under `out` (absolute).
    pub fn new(mode: Mode, n: usize, bin: PathBuf, out: &Path, extra_args: Vec<String>) -> Self {
        let mut nodes = Vec::with_capacity(n);
        for i in 1..=n {
            let name = format!("n{i}");
            let (ns, ip, cport, pport) = match mode {
                Mode::Netns => (
                    Some(format!("{NS_PREFIX}{i}")),
                    format!("10.77.0.{}", 10 + i),
                    2379u16,
                    2380u16,
                ),
                Mode::Local => {
                    let base = LOCAL_BASE_PORT + 10 * u16::try_from(i).unwrap_or(0);
                    (None, "127.0.0.1".to_string(), base, base + 1)
                }
            };
            nodes.push(NodeSpec {
                ns,
                client_url: format!("http://{ip}:{cport}"),
                peer_url: format!("http://{ip}:{pport}"),
                // 6379 in a namespace; the client port + 5 on loopback.
                redis_addr: match mode {
                    Mode::Netns => format!("{ip}:6379"),
                    Mode::Local => format!("{ip}:{}", cport + 5),
                },
                data_dir: out.join("data").join(&name),
                log: out.join("logs").join(format!("{name}.log")),
                ip,
                name,
            });
        }
        let initial_cluster = nodes
            .iter()
            .map(|s| format!("{}={}", s.name, s.peer_url))
            .collect::<Vec<_>>()
            .join(",");
        let state = (0..n)
            .map(|_| NodeState {
                child: None,
                paused: false,
                fw: Firewall::default(),
                removed: false,
                existing: false,
            })
            .collect();
        Cluster {
            mode,
            nodes,
            bin,
            initial_cluster,
            extra_args,
            state: Mutex::new(state),
            closed: std::sync::atomic::AtomicBool::new(false),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<NodeState>> {
        match self.state.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// Number of nodes.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Creates the bridge and namespaces (netns mode); creates data and log folders.
    pub fn setup_hosts(&self) -> Result<(), String> {
        for s in &self.nodes {
            fs::create_dir_all(&s.data_dir)
                .map_err(|e| format!("{}: {e}", s.data_dir.display()))?;
            if let Some(parent) = s.log.parent() {
                fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
            }
        }
        if self.mode == Mode::Local {
            return Ok(());
        }
        run_cmd("ip", &["link", "add", BRIDGE, "type", "bridge"])?;
        run_cmd(
            "ip",
            &["addr", "add", &format!("{BRIDGE_IP}/24"), "dev", BRIDGE],
        )?;
        run_cmd("ip", &["link", "set", BRIDGE, "up"])?;
        for (i, s) in self.nodes.iter().enumerate() {
            let ns = s.ns.as_deref().unwrap_or_default();
            add_host(ns, &format!("cc-v{}", i + 1), &s.ip)?;
            nft_script(ns, &render(&Firewall::default()))?;
        }
        add_host(CLIENT_NS, CLIENT_VETH, CLIENT_IP)
    }

    fn command(&self, i: usize, existing: bool) -> Command {
        let s = &self.nodes[i];
        let mut cmd = match &s.ns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(&self.bin);
                c
            }
            None => Command::new(&self.bin),
        };
        cmd.arg("server")
            .args(["--name", &s.name])
            .arg("--data-dir")
            .arg(&s.data_dir)
            .args(["--listen-client-urls", &s.client_url])
            .args(["--advertise-client-urls", &s.client_url])
            .args(["--listen-peer-urls", &s.peer_url])
            .args(["--listen-redis-urls", &format!("redis://{}", s.redis_addr)])
            .args(["--initial-advertise-peer-urls", &s.peer_url])
            .args(["--initial-cluster", &self.initial_cluster])
            .args([
                "--initial-cluster-state",
                if existing { "existing" } else { "new" },
            ])
            .args(["--initial-cluster-token", "concord-chaos"])
            .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
            .args(&self.extra_args)
            // Enables `POST /debug/peer-delay` for the `delay` fault.
            .env("CONCORD_UNSAFE_TEST_HOOKS", "1");
        cmd
    }

    fn save_pids(&self, st: &[NodeState]) {
        if self.mode != Mode::Local {
            return;
        }
        let pids: Vec<String> = st
            .iter()
            .filter_map(|n| n.child.as_ref().map(|c| c.id().to_string()))
            .collect();
        let _ = fs::write(LOCAL_PID_FILE, pids.join("\n"));
    }

    /// Starts node `i` (no-op if running).
    pub fn start(&self, i: usize) -> Result<(), String> {
        let mut st = self.lock();
        if self.closed.load(std::sync::atomic::Ordering::SeqCst) {
            return Err("cluster torn down".into());
        }
        if st[i].child.is_some() {
            return Ok(());
        }
        if st[i].removed {
            return Err(format!(
                "{} is removed from the cluster",
                self.nodes[i].name
            ));
        }
        let s = &self.nodes[i];
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&s.log)
            .map_err(|e| format!("{}: {e}", s.log.display()))?;
        let log2 = log
            .try_clone()
            .map_err(|e| format!("{}: {e}", s.log.display()))?;
        let child = self
            .command(i, st[i].existing)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .map_err(|e| format!("starting {}: {e}", s.name))?;
        st[i].child = Some(child);
        st[i].paused = false;
        self.save_pids(&st);
        Ok(())
    }

    /// Kills node `i` with SIGKILL and reaps it.
    pub fn kill9(&self, i: usize) {
        let mut st = self.lock();
        if let Some(mut child) = st[i].child.take() {
            if let Some(pid) = pid_of(&child) {
                let _ = kill(pid, Signal::SIGKILL);
            }
            let _ = child.wait();
        }
        st[i].paused = false;
        self.save_pids(&st);
    }

    /// Marks node `i` removed from the membership: kills it and empties its data directory.
    pub fn mark_removed(&self, i: usize) -> Result<(), String> {
        self.kill9(i);
        let mut st = self.lock();
        st[i].removed = true;
        let d = &self.nodes[i].data_dir;
        if d.exists() {
            fs::remove_dir_all(d).map_err(|e| format!("{}: {e}", d.display()))?;
        }
        fs::create_dir_all(d).map_err(|e| format!("{}: {e}", d.display()))
    }

    /// Node `i` was added back: it may start again, joining the existing cluster.
    pub fn mark_rejoined(&self, i: usize) {
        let mut st = self.lock();
        st[i].removed = false;
        st[i].existing = true;
    }

    /// Whether node `i` is currently removed from the membership.
    pub fn is_removed(&self, i: usize) -> bool {
        self.lock()[i].removed
    }

    /// Sends SIGSTOP (`pause`) or SIGCONT to node `i`.
    pub fn pause(&self, i: usize, pause: bool) {
        let mut st = self.lock();
        let sig = if pause {
            Signal::SIGSTOP
        } else {
            Signal::SIGCONT
        };
        if let Some(pid) = st[i].child.as_ref().and_then(pid_of) {
            let _ = kill(pid, sig);
            st[i].paused = pause;
        }
    }

    /// Whether node `i` has a process that has not exited; reaps it if it exited.
    pub fn check_alive(&self, i: usize) -> Result<(), String> {
        let mut st = self.lock();
        if let Some(child) = st[i].child.as_mut() {
            if let Ok(Some(status)) = child.try_wait() {
                st[i].child = None;
                return Err(format!("{} exited: {status}", self.nodes[i].name));
            }
        }
        Ok(())
    }

    /// Whether node `i` is currently running (started, not killed).
    pub fn is_running(&self, i: usize) -> bool {
        self.lock()[i].child.is_some()
    }

    fn apply_fw(&self, st: &[NodeState], i: usize) -> Result<(), String> {
        match &self.nodes[i].ns {
            Some(ns) => nft_script(ns, &render(&st[i].fw)),
            None => Err("network faults need --netns".to_string()),
        }
    }

    /// Applies many blocks at once: `(i, j, inbound, outbound)` = node `i` drops traffic from
    /// node `j` (inbound) and/or to `j` (outbound). Each affected node is updated once.
    pub fn block_many(&self, rules: &[(usize, usize, bool, bool)]) -> Result<(), String> {
        let mut st = self.lock();
        let mut touched = BTreeSet::new();
        for &(i, j, inbound, outbound) in rules {
            let ip = self.nodes[j].ip.clone();
            if inbound {
                st[i].fw.drop_in.insert(ip.clone());
            }
            if outbound {
                st[i].fw.drop_out.insert(ip);
            }
            touched.insert(i);
        }
        for i in touched {
            self.apply_fw(&st, i)?;
        }
        Ok(())
    }

    /// Node `i` drops `percent`% of its peer packets in each direction.
    pub fn set_loss(&self, i: usize, percent: u8) -> Result<(), String> {
        let mut st = self.lock();
        st[i].fw.loss_percent = Some(percent);
        self.apply_fw(&st, i)
    }

    /// Node `i` holds every outgoing Raft batch back by `ms` milliseconds (the server's
    /// test hook; this kernel has no `netem`).
    pub fn set_peer_delay(&self, i: usize, ms: u64) -> Result<(), String> {
        self.debug_hook(i, &format!("peer-delay?ms={ms}"))
    }

    /// Node `i`'s lease clock runs at `rate` times real time (the server's test hook).
    pub fn set_clock_rate(&self, i: usize, rate: f64) -> Result<(), String> {
        self.debug_hook(i, &format!("clock-rate?rate={rate}"))
    }

    /// Node `i`'s HLC clock (AP buckets) reads `ms` off the system clock (the server's
    /// test hook).
    pub fn set_clock_offset(&self, i: usize, ms: i64) -> Result<(), String> {
        self.debug_hook(i, &format!("clock-offset?ms={ms}"))
    }

    /// `POST /debug/<what>` on node `i`'s client URL (served because the runner starts
    /// servers with `CONCORD_UNSAFE_TEST_HOOKS=1`).
    fn debug_hook(&self, i: usize, what: &str) -> Result<(), String> {
        use std::io::{Read as _, Write as _};
        let url = &self.nodes[i].client_url;
        let addr = url.trim_start_matches("http://");
        let sock: std::net::SocketAddr = addr
            .parse()
            .map_err(|e| format!("bad client url {url}: {e}"))?;
        let mut s = std::net::TcpStream::connect_timeout(&sock, Duration::from_secs(1))
            .map_err(|e| format!("{}: {e}", self.nodes[i].name))?;
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        let req = format!(
            "POST /debug/{what} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
        s.write_all(req.as_bytes())
            .map_err(|e| format!("{}: {e}", self.nodes[i].name))?;
        let mut resp = String::new();
        let _ = s.read_to_string(&mut resp);
        if resp.starts_with("HTTP/1.1 200") {
            Ok(())
        } else {
            Err(format!(
                "{}: test hook {what} refused: {}",
                self.nodes[i].name,
                resp.lines().next().unwrap_or("no answer")
            ))
        }
    }

    /// Removes every network fault on every node.
    pub fn heal_network(&self) -> Result<(), String> {
        let mut st = self.lock();
        let mut first_err = None;
        for i in 0..st.len() {
            st[i].fw = Firewall::default();
            if self.mode == Mode::Netns {
                if let Err(e) = self.apply_fw(&st, i) {
                    first_err.get_or_insert(e);
                }
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    /// Resumes paused nodes.
    pub fn resume_all(&self) {
        for i in 0..self.len() {
            if self.lock()[i].paused {
                self.pause(i, false);
            }
        }
    }

    /// Kills every node process and removes namespaces and bridge. Idempotent.
    pub fn teardown(&self) {
        {
            let mut st = self.lock();
            self.closed.store(true, std::sync::atomic::Ordering::SeqCst);
            for n in st.iter_mut() {
                if let Some(mut child) = n.child.take() {
                    if let Some(pid) = pid_of(&child) {
                        let _ = kill(pid, Signal::SIGKILL);
                    }
                    let _ = child.wait();
                }
            }
        }
        if self.mode == Mode::Local {
            let _ = fs::remove_file(LOCAL_PID_FILE);
            return;
        }
        for ns in self
            .nodes
            .iter()
            .filter_map(|s| s.ns.as_deref())
            .chain([CLIENT_NS])
        {
            if Path::new("/run/netns").join(ns).exists() {
                let _ = run_cmd("ip", &["netns", "del", ns]);
            }
        }
        remove_links();
    }
}

/// Creates namespace `ns` joined to the bridge by a veth pair (`veth` in the root namespace,
/// `eth0` inside) with address `ip`/24.
fn add_host(ns: &str, veth: &str, ip: &str) -> Result<(), String> {
    run_cmd("ip", &["netns", "add", ns])?;
    run_cmd(
        "ip",
        &[
            "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns,
        ],
    )?;
    run_cmd("ip", &["link", "set", veth, "master", BRIDGE, "up"])?;
    run_cmd(
        "ip",
        &["-n", ns, "addr", "add", &format!("{ip}/24"), "dev", "eth0"],
    )?;
    run_cmd("ip", &["-n", ns, "link", "set", "eth0", "up"])?;
    run_cmd("ip", &["-n", ns, "link", "set", "lo", "up"])?;
    Ok(())
}

/// Moves the calling thread into network namespace `ns`: sockets it opens from then on
/// belong to that namespace (other threads are unaffected).
pub fn enter_netns(ns: &str) -> Result<(), String> {
    let path = Path::new("/run/netns").join(ns);
    let f = fs::File::open(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET)
        .map_err(|e| format!("setns {ns}: {e}"))
}

/// Deletes our veth ends and bridge from the root namespace (a deleted namespace's veth
/// pairs disappear asynchronously, so they are removed explicitly), waiting until gone.
fn remove_links() {
    let names: Vec<String> = (1..=9)
        .map(|i| format!("cc-v{i}"))
        .chain([CLIENT_VETH.to_string(), BRIDGE.to_string()])
        .collect();
    for _ in 0..50 {
        let mut any = false;
        for name in &names {
            if Path::new("/sys/class/net").join(name).exists() {
                any = true;
                let _ = run_cmd("ip", &["link", "del", name]);
            }
        }
        if !any {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Tears the cluster down when dropped (normal exit, error, or cancellation).
pub struct Guard(pub std::sync::Arc<Cluster>);

impl Drop for Guard {
    fn drop(&mut self) {
        self.0.teardown();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_partition_and_loss() {
        let mut fw = Firewall::default();
        fw.drop_in.insert("10.77.0.12".into());
        fw.drop_out.insert("10.77.0.13".into());
        fw.loss_percent = Some(20);
        let s = render(&fw);
        assert!(s.contains("ip saddr { 10.77.0.12 } drop"));
        assert!(s.contains("ip daddr { 10.77.0.13 } drop"));
        assert!(s.contains("tcp dport 2380 numgen random mod 100 < 20 drop"));
        assert!(s.starts_with("table inet cc {}\ndelete table inet cc\n"));
    }

    #[test]
    fn plan_local_ports() {
        let c = Cluster::new(
            Mode::Local,
            3,
            "/bin/true".into(),
            Path::new("/tmp/x"),
            vec![],
        );
        assert_eq!(c.nodes[0].client_url, "http://127.0.0.1:23010");
        assert_eq!(c.nodes[2].peer_url, "http://127.0.0.1:23031");
        assert!(c
            .initial_cluster
            .starts_with("n1=http://127.0.0.1:23011,n2="));
    }
}
