//! gRPC connections to nodes, error classification and leader discovery.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use concord_proto::etcdserverpb::maintenance_client::MaintenanceClient;
use concord_proto::etcdserverpb::StatusRequest;
use tonic::transport::Channel;

use crate::cluster::{enter_netns, Cluster, Mode, CLIENT_IP, CLIENT_NS};

/// Connects to `url` within `timeout` (through `concord-client`).
pub async fn connect(url: &str, timeout: Duration) -> Result<Channel, String> {
    concord_client::dial(url, timeout)
        .await
        .map_err(|e| e.to_string())
}

/// An operation error, and whether the operation certainly had no effect.
#[derive(Debug, Clone)]
pub struct OpErr {
    /// Text for the history.
    pub msg: String,
    /// True when the operation certainly did not take effect.
    pub definite: bool,
}

impl From<tonic::Status> for OpErr {
    fn from(s: tonic::Status) -> Self {
        // The one classification of definite and indefinite failures: concord-client's.
        OpErr {
            msg: format!("{:?}: {}", s.code(), s.message()),
            definite: concord_client::is_definite_status(&s),
        }
    }
}

/// What each node said about itself and the leader.
#[derive(Debug, Clone, Default)]
pub struct StatusView {
    /// Member id per node index (None if unreachable).
    pub member_ids: Vec<Option<u64>>,
    /// Leader id as reported by each reachable node.
    pub leaders: Vec<Option<u64>>,
}

/// Asks every node for its status, in parallel, within `timeout`.
pub async fn status_all(cluster: &Cluster, timeout: Duration) -> StatusView {
    let mut tasks = Vec::new();
    for s in &cluster.nodes {
        let url = s.client_url.clone();
        tasks.push(tokio::spawn(async move {
            let ch = connect(&url, timeout).await.ok()?;
            let mut c = MaintenanceClient::new(ch);
            let r = tokio::time::timeout(timeout, c.status(StatusRequest {}))
                .await
                .ok()?
                .ok()?
                .into_inner();
            let id = r.header.map(|h| h.member_id).unwrap_or(0);
            Some((id, r.leader))
        }));
    }
    let mut view = StatusView::default();
    for t in tasks {
        let r = t.await.ok().flatten();
        view.member_ids.push(r.map(|(id, _)| id));
        view.leaders.push(r.map(|(_, l)| l).filter(|l| *l != 0));
    }
    view
}

/// Maps member ids to node indexes, learned once at start (ids survive restarts).
#[derive(Debug, Clone, Default)]
pub struct Members {
    /// Member id of node i.
    pub ids: Vec<u64>,
}

impl Members {
    /// Index of the node whose member id is `id`.
    pub fn index_of(&self, id: u64) -> Option<usize> {
        self.ids.iter().position(|x| *x == id)
    }
}

/// Finds the current leader's index: the leader named by the most reachable nodes.
pub async fn find_leader(cluster: &Cluster, members: &Members) -> Option<usize> {
    let view = status_all(cluster, Duration::from_millis(700)).await;
    let mut counts: Vec<(u64, usize)> = Vec::new();
    for l in view.leaders.iter().flatten() {
        match counts.iter_mut().find(|(id, _)| id == l) {
            Some((_, c)) => *c += 1,
            None => counts.push((*l, 1)),
        }
    }
    counts.sort_by_key(|c| std::cmp::Reverse(c.1));
    counts.first().and_then(|(id, _)| members.index_of(*id))
}

/// Waits until every node answers and all agree on one leader; returns the member ids.
pub async fn wait_ready(cluster: &Cluster, deadline: Duration) -> Result<Members, String> {
    let start = std::time::Instant::now();
    loop {
        let view = status_all(cluster, Duration::from_millis(700)).await;
        let all_up = view.member_ids.iter().all(|m| m.is_some());
        let first = view.leaders.first().copied().flatten();
        let agree = first.is_some() && view.leaders.iter().all(|l| *l == first);
        if all_up && agree {
            return Ok(Members {
                ids: view.member_ids.iter().map(|m| m.unwrap_or(0)).collect(),
            });
        }
        for i in 0..cluster.len() {
            cluster.check_alive(i)?;
        }
        if start.elapsed() > deadline {
            return Err(format!(
                "cluster not ready after {:?}: member ids {:?}, leaders {:?}",
                deadline, view.member_ids, view.leaders
            ));
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// The client host: where every workload task runs. With `--netns`, a tokio runtime whose
/// threads all enter the client namespace when they start, so each connection a client opens
/// leaves from `CLIENT_IP` over its own veth, like a separate machine; with `--local`, the
/// current runtime. The control plane (readiness, leader discovery, nemesis) stays in the
/// root namespace.
pub struct ClientHost {
    rt: Option<tokio::runtime::Runtime>,
    handle: tokio::runtime::Handle,
    thread_error: Arc<Mutex<Option<String>>>,
}

impl ClientHost {
    /// Builds the client host for `mode` (call after the hosts are set up).
    pub fn new(mode: Mode) -> Result<Self, String> {
        let thread_error = Arc::new(Mutex::new(None));
        if mode == Mode::Local {
            return Ok(ClientHost {
                rt: None,
                handle: tokio::runtime::Handle::current(),
                thread_error,
            });
        }
        // Fails early, on this thread, when the namespace cannot be entered at all.
        std::thread::spawn(|| enter_netns(CLIENT_NS))
            .join()
            .map_err(|_| "client namespace probe panicked".to_string())??;
        let errs = thread_error.clone();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("chaos-client")
            .enable_all()
            .on_thread_start(move || {
                if let Err(e) = enter_netns(CLIENT_NS) {
                    if let Ok(mut g) = errs.lock() {
                        g.get_or_insert(e);
                    }
                }
            })
            .build()
            .map_err(|e| format!("client runtime: {e}"))?;
        Ok(ClientHost {
            handle: rt.handle().clone(),
            rt: Some(rt),
            thread_error,
        })
    }

    /// Starts `f` on the client host.
    pub fn spawn<F>(&self, f: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: std::future::Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.handle.spawn(f)
    }

    /// Runs `f` on the client host and waits for it.
    pub async fn run<F>(&self, f: F) -> Result<F::Output, String>
    where
        F: std::future::Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.spawn(f).await.map_err(|e| format!("client task: {e}"))
    }

    /// An error if some client thread could not enter the client namespace.
    pub fn check(&self) -> Result<(), String> {
        match self.thread_error.lock() {
            Ok(g) => g.clone().map_or(Ok(()), Err),
            Err(_) => Err("client thread state poisoned".into()),
        }
    }

    /// Checks that connections from the client host reach node 1 from the client address
    /// (netns mode); returns a description of the host for the log.
    pub async fn verify(&self, cluster: &Cluster) -> Result<String, String> {
        if self.rt.is_none() {
            return Ok("clients run in the runner's namespace (--local)".into());
        }
        let url = &cluster.nodes[0].client_url;
        let addr = url.trim_start_matches("http://").to_string();
        let ip = self
            .run(async move {
                let s = tokio::time::timeout(
                    Duration::from_secs(2),
                    tokio::net::TcpStream::connect(addr.as_str()),
                )
                .await
                .map_err(|_| format!("connect {addr}: timeout"))?
                .map_err(|e| format!("connect {addr}: {e}"))?;
                s.local_addr()
                    .map(|a| a.ip().to_string())
                    .map_err(|e| format!("local address: {e}"))
            })
            .await??;
        self.check()?;
        if ip != CLIENT_IP {
            return Err(format!(
                "client connections leave from {ip}, not the client host {CLIENT_IP}"
            ));
        }
        Ok(format!("clients run in namespace {CLIENT_NS} ({ip})"))
    }
}

impl Drop for ClientHost {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            // Allowed inside an async context, unlike dropping the runtime.
            rt.shutdown_background();
        }
    }
}
