//! The `concord server` process: one member of a cluster, serving etcd's gRPC API and
//! HTTP (`/health`, `/ready`, `/metrics`, `/version`) on its client URLs and Raft on its
//! peer URLs.
//!
//! ```no_run
//! # async fn demo() -> Result<(), concord_server::server::ServerError> {
//! use concord_server::server::{Server, ServerConfig};
//! let server = Server::start(ServerConfig::new("default")).await?;
//! println!("serving on {:?}", server.client_urls());
//! server.shutdown().await?;
//! # Ok(()) }
//! ```

mod ap_http;
mod ap_only;
mod api;
mod auth_api;
mod cluster;
mod concurrency;
pub mod config;
mod dashboard;
pub mod dirlock;
mod gateway;
mod http;
mod kv;
mod lease;
pub mod listener;
mod maintenance;
pub mod members;
mod meta;
mod one_port;
pub mod restore;
mod tls;
mod watch;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use concord_proto::etcdserverpb::auth_server::AuthServer;
use concord_proto::etcdserverpb::cluster_server::ClusterServer;
use concord_proto::etcdserverpb::kv_server::KvServer;
use concord_proto::etcdserverpb::lease_server::LeaseServer;
use concord_proto::etcdserverpb::maintenance_server::MaintenanceServer;
use concord_proto::etcdserverpb::watch_server::WatchServer;
use concord_proto::v3electionpb::election_server::ElectionServer;
use concord_proto::v3lockpb::lock_server::LockServer;
use tokio::net::TcpListener;
use tokio::sync::watch as tokio_watch;
use tokio::task::JoinHandle;

pub use config::{ClusterState, ServerConfig, TlsFlags};
use members::{MemberRecord, Members};

use crate::ap::ApNode;
use crate::node::{self, NodeConfig, NodeHandle};
use concord_raft::NodeId;
use concord_runtime::faults::FaultyTransport;
use concord_runtime::grpc::{GrpcTransport, RaftPeerService};
use concord_runtime::membership::{generation_now, Membership, MembershipConfig};
use concord_runtime::transport::{GroupTransport, Router, DEFAULT_GROUP};

/// Why a server could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// A setting is invalid; the message names the flag.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// A listener could not be bound.
    #[error("cannot listen on {url}: {source}")]
    Listen {
        /// The URL.
        url: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The node could not start (data dir, WAL, store).
    #[error("cannot start the node: {0}")]
    Start(String),
    /// The node stopped on a fatal error.
    #[error("node stopped: {0}")]
    Node(String),
    /// The data directory is locked by another server, or cannot be locked.
    #[error(transparent)]
    DataDir(#[from] dirlock::LockError),
}

/// A running member.
pub struct Server {
    member_id: NodeId,
    cluster_id: u64,
    client_urls: Vec<String>,
    peer_urls: Vec<String>,
    role: Role,
    membership: Membership,
    stop: tokio_watch::Sender<bool>,
    servers: Vec<JoinHandle<()>>,
    background: Vec<JoinHandle<()>>,
    // Released (dropped) only after the node has shut down and closed its files.
    dir_lock: dirlock::DataDirLock,
}

/// What a member is besides an AP member.
enum Role {
    /// A Raft member (voter or learner): the CP keyspace, and the cluster metadata.
    Raft(NodeHandle),
    /// An AP-only member; the reason it stopped is sent when it does (it was removed).
    ApOnly(tokio_watch::Receiver<Option<String>>),
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("member_id", &format_args!("{}", self.member_id))
            .field("client_urls", &self.client_urls)
            .field("peer_urls", &self.peer_urls)
            .finish_non_exhaustive()
    }
}

/// `host:port` of an `http://host:port` URL.
fn host_port(url: &str) -> Result<String, ServerError> {
    config::check_url(url).map_err(ServerError::Config)?;
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .unwrap_or(url);
    Ok(rest.trim_end_matches('/').to_string())
}

async fn bind(urls: &[String]) -> Result<Vec<(TcpListener, String)>, ServerError> {
    let mut out = Vec::new();
    for url in urls {
        let addr = host_port(url)?;
        let listener = TcpListener::bind(&addr)
            .await
            .map_err(|source| ServerError::Listen {
                url: url.clone(),
                source,
            })?;
        let local = listener
            .local_addr()
            .map_err(|source| ServerError::Listen {
                url: url.clone(),
                source,
            })?;
        let scheme = if tls::is_tls(url) { "https" } else { "http" };
        out.push((listener, format!("{scheme}://{local}")));
    }
    Ok(out)
}

/// Every listener of a member, bound, with the URLs it answers on.
struct Listeners {
    client: Vec<(TcpListener, String)>,
    redis: Vec<(TcpListener, String)>,
    peer: Vec<(TcpListener, String)>,
    /// The client URLs listened on (with the ports chosen).
    client_bound: Vec<String>,
    /// The peer URLs listened on.
    peer_bound: Vec<String>,
    /// The client URLs advertised (port 0 resolved).
    my_client_urls: Vec<String>,
    /// The TLS of both sides.
    tls: tls::MemberTls,
}

impl Listeners {
    async fn bind(config: &ServerConfig) -> Result<Listeners, ServerError> {
        // Certificates load (or fail, naming the flag) before any port is taken.
        let tls = tls::MemberTls::from_config(config)?;
        let client = bind(&config.listen_client_urls).await?;
        let redis = bind_redis(&config.listen_redis_urls).await?;
        let peer = bind(&config.listen_peer_urls).await?;
        let client_bound: Vec<String> = client.iter().map(|(_, u)| u.clone()).collect();
        let peer_bound: Vec<String> = peer.iter().map(|(_, u)| u.clone()).collect();
        let my_client_urls = resolve(
            config.advertised_client_urls(),
            &config.listen_client_urls,
            &client_bound,
        );
        Ok(Listeners {
            client,
            redis,
            peer,
            client_bound,
            peer_bound,
            my_client_urls,
            tls,
        })
    }
}

/// Binds the Redis listeners (`redis://host:port`).
async fn bind_redis(urls: &[String]) -> Result<Vec<(TcpListener, String)>, ServerError> {
    let mut out = Vec::new();
    for url in urls {
        let addr = config::redis_host_port(url).map_err(ServerError::Config)?;
        let listener = TcpListener::bind(&addr)
            .await
            .map_err(|source| ServerError::Listen {
                url: url.clone(),
                source,
            })?;
        out.push((listener, url.clone()));
    }
    Ok(out)
}

/// Serves Redis clients on `listeners` until stopped; the URLs bound.
fn serve_redis(
    listeners: Vec<(TcpListener, String)>,
    tls: &tls::MemberTls,
    ap: &ApNode,
    stop_rx: &tokio_watch::Receiver<bool>,
    servers: &mut Vec<JoinHandle<()>>,
) -> Vec<String> {
    let mut bound = Vec::new();
    for (listener, url) in listeners {
        let tls = tls.client_for(&url);
        if let Ok(addr) = listener.local_addr() {
            let scheme = if tls.is_some() { "rediss" } else { "redis" };
            bound.push(format!("{scheme}://{addr}"));
        }
        let ap = ap.clone();
        let stop = wait_stop(stop_rx.clone());
        servers.push(tokio::spawn(async move {
            tokio::select! {
                _ = crate::redis::serve(listener, ap, tls) => {}
                _ = stop => {}
            }
        }));
    }
    bound
}

/// Serves the peer services (Raft and `extra`) on `listener` until stopped.
fn serve_peers(
    listener: TcpListener,
    raft: RaftPeerService,
    extra: tonic::service::Routes,
    tls: Option<concord_tls::Acceptor>,
    stop_rx: &tokio_watch::Receiver<bool>,
) -> JoinHandle<()> {
    let stop = wait_stop(stop_rx.clone());
    tokio::spawn(async move {
        if let Err(e) = concord_runtime::grpc::serve(listener, raft, Some(extra), tls, stop).await {
            tracing::error!(error = %e, "peer server failed");
        }
    })
}

/// Advertised URLs: the configured ones, with port 0 replaced by the bound port when
/// they are the listen URLs themselves.
fn resolve(advertised: &[String], listen: &[String], bound: &[String]) -> Vec<String> {
    advertised
        .iter()
        .map(|u| match listen.iter().position(|l| l == u) {
            Some(i) => bound.get(i).cloned().unwrap_or_else(|| u.clone()),
            None => u.clone(),
        })
        .collect()
}

/// Headroom over `--max-request-bytes` for gRPC framing. gRPC decodes messages up to
/// twice the limit plus this, so that a request somewhat over the limit reaches the
/// server's own check and gets etcd's "etcdserver: request is too large"; a larger one
/// is refused by gRPC itself ("decoded message length too large") before it is buffered.
const GRPC_OVERHEAD_BYTES: usize = 512 * 1024;

impl Server {
    /// Starts a member: binds the listeners (port 0 picks a free port), opens or
    /// bootstraps the data dir, starts Raft and the services. Returns once listening.
    pub async fn start(config: ServerConfig) -> Result<Server, ServerError> {
        config.validate().map_err(ServerError::Config)?;
        let token = config.initial_cluster_token.clone();
        let cluster_id = members::cluster_id(&token);
        let my_peer_urls = config.advertised_peer_urls().to_vec();
        std::fs::create_dir_all(&config.data_dir).map_err(|e| {
            ServerError::Start(format!("cannot create {}: {e}", config.data_dir.display()))
        })?;
        // Before anything in the directory is read or written: one server per directory.
        let dir_lock = dirlock::DataDirLock::acquire(&config.data_dir)?;
        // A member keeps the id it started with, whatever its URLs are now (etcd keeps it
        // in its WAL); the id file is written before the node's first WAL record.
        let member_id =
            members::load_or_store_id(&config.data_dir, members::member_id(&my_peer_urls, &token))
                .map_err(ServerError::Start)?;
        if config.ap_only {
            return ap_only::start(config, dir_lock, member_id, cluster_id).await;
        }
        let mut founding = founding_members(&config, member_id, &my_peer_urls);
        let Listeners {
            client: client_listeners,
            redis: redis_listeners,
            peer: peer_listeners,
            client_bound,
            peer_bound,
            my_client_urls,
            tls,
        } = Listeners::bind(&config).await?;
        if let Some(me) = founding.get_mut(&member_id) {
            me.client_urls = my_client_urls.clone();
        }

        let mut nc = node_config(&config, member_id, &founding);
        let metrics = Arc::new(crate::metrics::Metrics::new());
        nc.raft.telemetry = metrics.raft.clone();
        let peers: BTreeMap<NodeId, String> = founding
            .iter()
            .filter_map(|(id, r)| r.peer_urls.first().map(|u| (*id, u.clone())))
            .collect();
        let grpc = Arc::new(GrpcTransport::with_telemetry(
            member_id,
            cluster_id,
            BTreeMap::new(),
            tls.peer_dialer.clone(),
            metrics.raft.clone(),
        ));
        grpc.set_direct_links(config.peer_direct_links);
        for (id, url) in &peers {
            grpc.set_peer(*id, url.clone());
        }
        let generation = generation_now();
        let (membership, gossip) = Membership::start(
            MembershipConfig {
                me: member_id,
                cluster_id,
                generation,
                swim: config.gossip,
                seed: generation ^ member_id.get(),
                dialer: tls.peer_dialer.clone(),
            },
            peers,
        )
        .map_err(|e| ServerError::Config(e.to_string()))?;
        let ap = ApNode::open(member_id, cluster_id, &config.data_dir, config.ap)
            .map_err(|e| ServerError::Start(e.to_string()))?;
        ap.set_dialer(tls.peer_dialer.clone());
        ap.set_direct_links(config.peer_direct_links);
        ap.set_telemetry(metrics.ap.clone());
        // Faults are switched on only through the test hooks (CONCORD_UNSAFE_TEST_HOOKS).
        let transport = Arc::new(FaultyTransport::new(grpc.clone(), member_id.get()));
        // One connection per peer carries every group; the keyspace is the default group.
        let router = Router::new();
        let inbox = router.register(DEFAULT_GROUP);
        let group_transport = GroupTransport::new(transport.clone(), DEFAULT_GROUP);
        let node = node::start(nc, Arc::new(group_transport), inbox)
            .map_err(|e| ServerError::Start(e.to_string()))?;
        ap.set_catalog(Arc::new(RaftCatalog(node.clone())));
        sync_buckets(&node, &ap);
        {
            let node = node.clone();
            router.set_peer_down_hook(DEFAULT_GROUP, Arc::new(move |id| node.report_peer_down(id)));
        }

        let (stop, stop_rx) = tokio_watch::channel(false);
        let mut servers = Vec::new();
        let peer_service = RaftPeerService::new(cluster_id, router)
            .with_telemetry(metrics.raft.clone())
            .with_link_runtime(node.raft().driver_runtime().cloned())
            .with_direct_service(
                concord_runtime::direct::CALLS_MAGIC,
                ap.direct_calls_service(),
            );
        let members = Arc::new(Members::new(node.clone(), founding));
        let meta = meta::MetaService {
            node: node.clone(),
            members: members.clone(),
            cluster_id,
            token: token.clone(),
        };
        for (listener, url) in peer_listeners {
            let extra = tonic::service::Routes::new(gossip.clone().into_server())
                .add_service(ap.service())
                .add_service(meta.clone().into_server());
            servers.push(serve_peers(
                listener,
                peer_service.clone(),
                extra,
                tls.peer_for(&url),
                &stop_rx,
            ));
        }

        let leases = Arc::new(node::Leases::new(node.clone(), config.election_timeout));
        let roster = Arc::new(http::Roster::default());
        let ctx = api::Ctx {
            node: node.clone(),
            cluster_id,
            member_id,
            max_txn_ops: config.max_txn_ops,
            quota_bytes: config.quota_backend_bytes,
            max_request_bytes: config.max_request_bytes,
            leases: leases.clone(),
            members: members.clone(),
            metrics: metrics.clone(),
            membership: membership.clone(),
            ap: ap.clone(),
            roster: roster.clone(),
            dialer: tls.client_dialer.clone(),
            auth: Arc::new(crate::auth::AuthStore::new(
                node.clone(),
                config.auth_token_ttl,
            )),
        };
        let routes = grpc_services(&ctx, &token, config.max_request_bytes);
        // One port for both: gRPC requests (content-type application/grpc) go to the
        // services, everything else to the HTTP routes, which answer 404 for unknown paths.
        let mut plain = http::router(ctx.clone());
        if std::env::var_os("CONCORD_UNSAFE_TEST_HOOKS").is_some_and(|v| v == "1") {
            tracing::warn!("CONCORD_UNSAFE_TEST_HOOKS=1: fault-injection endpoints are enabled");
            plain = plain.merge(http::test_hooks(
                transport.clone(),
                leases.clone(),
                ap.clone(),
            ));
        }
        let plain = plain
            .merge(gateway::router(gateway::Gateway::new(
                ctx.clone(),
                token.clone(),
            )))
            .fallback(http::not_found);
        let router = one_port::OnePort::new(routes, plain, metrics.grpc.clone());
        let limits = listener::Limits {
            max_connections: config.max_client_connections,
            max_concurrent_streams: config.max_concurrent_streams,
        };
        for (tcp, url) in client_listeners {
            let router = router.clone();
            let stop = wait_stop(stop_rx.clone());
            let tls = tls.client_for(&url);
            servers.push(tokio::spawn(listener::serve(
                tcp, router, limits, tls, stop,
            )));
        }

        let redis_bound = serve_redis(redis_listeners, &tls, &ap, &stop_rx, &mut servers);

        let heartbeat = config.heartbeat_interval;
        let mut background = vec![
            tokio::spawn(leases.clone().run(
                heartbeat.max(Duration::from_millis(50)),
                config.lease_checkpoint_interval,
            )),
            tokio::spawn(publish_self(
                node.clone(),
                members.clone(),
                member_id,
                config.name.clone(),
                my_peer_urls,
                my_client_urls.clone(),
            )),
            tokio::spawn(sync_peers(
                node.clone(),
                members,
                roster,
                grpc,
                membership.clone(),
                ap.clone(),
                member_id,
            )),
            tokio::spawn(compact_in_background(node.clone())),
        ];
        background.extend(ap_in_background(&ap));
        tracing::info!(
            member = format_args!("{member_id}"),
            cluster = format_args!("{cluster_id:x}"),
            name = %config.name,
            client_urls = ?my_client_urls,
            peer_urls = ?peer_bound,
            redis_urls = ?redis_bound,
            data_dir = %config.data_dir.display(),
            "concord member started"
        );
        Ok(Server {
            member_id,
            cluster_id,
            client_urls: client_bound,
            peer_urls: peer_bound,
            role: Role::Raft(node),
            membership,
            stop,
            servers,
            background,
            dir_lock,
        })
    }

    /// This member's id.
    pub fn member_id(&self) -> NodeId {
        self.member_id
    }

    /// The cluster's id.
    pub fn cluster_id(&self) -> u64 {
        self.cluster_id
    }

    /// The client URLs actually listened on (with the chosen ports).
    pub fn client_urls(&self) -> &[String] {
        &self.client_urls
    }

    /// The peer URLs actually listened on.
    pub fn peer_urls(&self) -> &[String] {
        &self.peer_urls
    }

    /// The Raft node, for embedding and tests (none on an AP-only member).
    pub fn node(&self) -> Option<&NodeHandle> {
        match &self.role {
            Role::Raft(node) => Some(node),
            Role::ApOnly(_) => None,
        }
    }

    /// Resolves when the member stops by itself (a fatal storage error; an AP-only
    /// member removed from the cluster), with the reason. Never resolves while the member
    /// runs.
    pub async fn stopped(&self) -> ServerError {
        match &self.role {
            Role::Raft(node) => ServerError::Node(node.stopped().await),
            Role::ApOnly(removed) => {
                let mut removed = removed.clone();
                let reason = match removed.wait_for(Option::is_some).await {
                    Ok(reason) => reason.clone().unwrap_or_default(),
                    Err(_) => std::future::pending().await,
                };
                ServerError::Node(reason)
            }
        }
    }

    /// Stops accepting requests, gives open connections up to two seconds to finish,
    /// then stops Raft and makes the store durable.
    pub async fn shutdown(self) -> Result<(), ServerError> {
        // Tell the other members first, so they mark this one Left instead of suspecting it.
        let _ = tokio::time::timeout(Duration::from_secs(1), self.membership.leave()).await;
        let _ = self.stop.send(true);
        for mut s in self.servers {
            if tokio::time::timeout(Duration::from_secs(2), &mut s)
                .await
                .is_err()
            {
                s.abort();
            }
        }
        for b in self.background {
            b.abort();
        }
        let result = match &self.role {
            Role::Raft(node) => node
                .shutdown()
                .await
                .map_err(|e| ServerError::Node(e.to_string())),
            Role::ApOnly(_) => Ok(()),
        };
        drop(self.dir_lock);
        result
    }
}

/// The founding members as the command line names them, this member with its own URLs.
fn founding_members(
    config: &ServerConfig,
    member_id: NodeId,
    my_peer_urls: &[String],
) -> BTreeMap<NodeId, MemberRecord> {
    let token = &config.initial_cluster_token;
    let mut founding = BTreeMap::new();
    for (name, urls) in config.founding_members() {
        founding.insert(
            members::member_id(&urls, token),
            MemberRecord {
                name,
                peer_urls: urls,
                client_urls: Vec::new(),
                ap_only: false,
            },
        );
    }
    founding.insert(
        member_id,
        MemberRecord {
            name: config.name.clone(),
            peer_urls: my_peer_urls.to_vec(),
            client_urls: Vec::new(),
            ap_only: config.ap_only,
        },
    );
    founding
}

/// The keyspace replica's settings from the server's (etcd's flags).
fn node_config(
    config: &ServerConfig,
    member_id: NodeId,
    founding: &BTreeMap<NodeId, MemberRecord>,
) -> NodeConfig {
    let heartbeat = config.heartbeat_interval;
    let mut nc = NodeConfig::new(
        member_id,
        match config.initial_cluster_state {
            ClusterState::New => founding.keys().copied().collect(),
            ClusterState::Existing => Vec::new(),
        },
        &config.data_dir,
    );
    nc.raft.tick = heartbeat;
    nc.raft.heartbeat_ticks = 1;
    nc.raft.election_ticks =
        (config.election_timeout.as_millis() / heartbeat.as_millis().max(1)).max(2) as u32;
    nc.raft.lease_reads = config.lease_reads;
    nc.raft.snapshot_count = config.snapshot_count;
    nc.raft.snapshot_catch_up_entries = (config.snapshot_count / 2).clamp(1, 5_000);
    nc.raft.max_request_bytes = config.max_request_bytes;
    nc.raft.request_timeout = config.request_timeout;
    nc.mvcc.quota_bytes = config.quota_backend_bytes;
    nc.mvcc.cache_bytes = config.backend_cache_bytes;
    nc.mvcc.batches_per_commit = config.backend_batches_per_commit.max(1);
    nc
}

/// etcd's gRPC services over `ctx`, with message limits from `--max-request-bytes`.
fn grpc_services(ctx: &api::Ctx, token: &str, max_request_bytes: usize) -> one_port::GrpcServices {
    let limit = max_request_bytes
        .saturating_mul(2)
        .saturating_add(GRPC_OVERHEAD_BYTES);
    one_port::GrpcServices {
        kv: KvServer::new(kv::KvService { ctx: ctx.clone() })
            .max_decoding_message_size(limit)
            .max_encoding_message_size(usize::MAX),
        watch: WatchServer::new(watch::WatchService { ctx: ctx.clone() })
            .max_decoding_message_size(limit)
            .max_encoding_message_size(usize::MAX),
        lease: LeaseServer::new(lease::LeaseService { ctx: ctx.clone() })
            .max_decoding_message_size(limit),
        cluster: ClusterServer::new(cluster::ClusterService {
            ctx: ctx.clone(),
            token: token.to_string(),
        })
        .max_decoding_message_size(limit),
        maintenance: MaintenanceServer::new(maintenance::MaintenanceService { ctx: ctx.clone() })
            .max_decoding_message_size(limit)
            .max_encoding_message_size(usize::MAX),
        auth: AuthServer::new(auth_api::AuthService { ctx: ctx.clone() }),
        lock: LockServer::new(concurrency::ConcurrencyService { ctx: ctx.clone() }),
        election: ElectionServer::new(concurrency::ConcurrencyService { ctx: ctx.clone() }),
    }
}

async fn wait_stop(mut rx: tokio_watch::Receiver<bool>) {
    while !*rx.borrow_and_update() {
        if rx.changed().await.is_err() {
            return;
        }
    }
}

/// Publishes this member's name and client URLs through Raft once a leader exists, and
/// again whenever the replicated record differs (etcd's "publish").
async fn publish_self(
    node: NodeHandle,
    members: Arc<Members>,
    id: NodeId,
    name: String,
    peer_urls: Vec<String>,
    client_urls: Vec<String>,
) {
    let mut every = tokio::time::interval(Duration::from_millis(200));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut published = false;
    loop {
        every.tick().await;
        let st = node.status();
        if st.stopped {
            return;
        }
        if st.leader.is_none() {
            continue;
        }
        let current = members.records().remove(&id).unwrap_or_default();
        let mut want = current.clone();
        want.name = name.clone();
        want.client_urls = client_urls.clone();
        if want.peer_urls.is_empty() {
            want.peer_urls = peer_urls.clone();
        }
        // The fallback record (from the command line) already looks right before anything
        // is replicated, so publish at least once.
        if published && want == current {
            continue;
        }
        match node.propose(members::set_command(id, &want)).await {
            Ok(_) => {
                published = true;
                tracing::info!(member = format_args!("{id}"), "published member attributes");
            }
            Err(e) => tracing::debug!(error = %e, "publishing member attributes failed; retrying"),
        }
        if published {
            every = tokio::time::interval(Duration::from_secs(2));
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        }
    }
}

/// Keeps the transport's, gossip's and the AP ring's peers in line with the membership and
/// the members' peer URLs, and the AP side's health with the gossip view.
async fn sync_peers(
    node: NodeHandle,
    members: Arc<Members>,
    roster: Arc<http::Roster>,
    transport: Arc<GrpcTransport>,
    membership: Membership,
    ap: ApNode,
    me: NodeId,
) {
    let mut every = tokio::time::interval(Duration::from_millis(500));
    let mut ap_only_before = BTreeMap::new();
    loop {
        every.tick().await;
        let st = node.status();
        if st.stopped {
            return;
        }
        let records = members.records();
        let cs = &st.conf_state;
        let in_conf: Vec<NodeId> = cs
            .voters
            .iter()
            .chain(&cs.voters_outgoing)
            .chain(&cs.learners)
            .chain(&cs.learners_next)
            .copied()
            .collect();
        for id in &in_conf {
            if *id == me {
                continue;
            }
            if let Some(url) = records.get(id).and_then(|r| r.peer_urls.first()) {
                transport.set_peer(*id, url.clone());
                membership.set_peer(*id, url.clone());
            }
        }
        // AP-only members are in the ring and in gossip, not in Raft.
        let ap_only: BTreeMap<NodeId, String> = members
            .ap_only(cs)
            .into_iter()
            .filter(|(id, _)| *id != me)
            .filter_map(|(id, r)| r.peer_urls.first().map(|u| (id, u.clone())))
            .collect();
        for (id, url) in &ap_only {
            membership.set_peer(*id, url.clone());
        }
        // A joining member knows no configuration until the leader's snapshot arrives;
        // until then it keeps every peer it was told about.
        if !in_conf.is_empty() {
            for id in transport.peers().keys() {
                if !in_conf.contains(id) {
                    transport.remove_peer(*id);
                    if !ap_only.contains_key(id) {
                        membership.remove_peer(*id);
                    }
                }
            }
        }
        for id in ap_only_before.keys() {
            if !ap_only.contains_key(id) && !in_conf.contains(id) {
                membership.remove_peer(*id);
            }
        }
        // The AP ring holds the same members and the AP-only ones.
        roster.set(in_conf.iter().chain(ap_only.keys()).chain([&me]).map(|id| {
            let record = records.get(id);
            http::Listed {
                id: id.get(),
                name: record.map(|r| r.name.clone()).unwrap_or_default(),
                client_url: record.and_then(|r| r.client_urls.first().cloned()),
                kind: if ap_only.contains_key(id) {
                    "ap-only"
                } else {
                    "voter"
                },
            }
        }));
        let mut ring = transport.peers();
        ring.extend(ap_only.clone());
        ap.set_members(&ring);
        ap_only_before = ap_only;
        sync_buckets(&node, &ap);
        if !gossip_to_ap(&membership, &ap).await {
            return;
        }
    }
}

/// Puts gossip's view in force on the AP side (who is alive; the handoff progress each
/// member announces) and announces this member's; false once gossip has stopped.
async fn gossip_to_ap(membership: &Membership, ap: &ApNode) -> bool {
    let Some(view) = membership.view().await else {
        return false;
    };
    ap.set_healthy(
        view.members
            .iter()
            .filter(|m| m.state == concord_core::swim::State::Alive)
            .map(|m| m.id)
            .collect(),
    );
    // Handoff progress travels as gossip metadata.
    ap.set_announced(view.members.iter().map(|m| (m.id, m.meta)).collect());
    membership.set_meta(ap.handoff_meta());
    true
}

/// Bucket properties go through the Raft group as cluster metadata.
struct RaftCatalog(NodeHandle);

impl crate::ap::BucketCatalog for RaftCatalog {
    fn store(
        &self,
        bucket: u8,
        props: crate::ap::BucketProps,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send>> {
        let node = self.0.clone();
        Box::pin(async move {
            node.propose(crate::ap::buckets::set_command(bucket, &props))
                .await
                .map(|_| ())
                .map_err(|e| format!("bucket properties not stored: {e}"))
        })
    }
}

/// Puts the bucket properties this member has applied in force (those in force stay when
/// the store cannot be read).
fn sync_buckets(node: &NodeHandle, ap: &ApNode) {
    match node.with_store(|s| s.cluster_meta()) {
        Ok(entries) => ap.set_buckets(&crate::ap::buckets::from_meta(&entries)),
        Err(e) => tracing::warn!(error = %e, "bucket properties unreadable"),
    }
}

/// The AP side's background work, on every member: hint replay, anti-entropy, handoff,
/// tombstone collection. The tasks run until aborted (at shutdown).
fn ap_in_background(ap: &ApNode) -> Vec<JoinHandle<()>> {
    vec![
        tokio::spawn(replay_hints_in_background(ap.clone())),
        tokio::spawn(anti_entropy_in_background(ap.clone())),
        tokio::spawn(collect_tombstones_in_background(ap.clone())),
        tokio::spawn(hand_off_in_background(ap.clone())),
    ]
}

/// Hands hints over to the members they are for, once a second, batch after batch while
/// there are hints to hand over.
async fn replay_hints_in_background(ap: ApNode) {
    let mut every = tokio::time::interval(Duration::from_secs(1));
    loop {
        every.tick().await;
        while ap.replay_hints(256).await > 0 {}
    }
}

/// One anti-entropy exchange per interval, with the live members in turn.
async fn anti_entropy_in_background(ap: ApNode) {
    let mut every = tokio::time::interval(ap.config().anti_entropy_interval);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut turn = 0usize;
    loop {
        every.tick().await;
        let peers = ap.anti_entropy_peers();
        if peers.is_empty() {
            continue;
        }
        let peer = peers[turn % peers.len()];
        turn = turn.wrapping_add(1);
        match ap.anti_entropy_with(peer).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(peer = %peer, repaired = n, "anti-entropy repaired keys"),
            Err(e) => tracing::debug!(peer = %peer, error = %e, "anti-entropy exchange failed"),
        }
    }
}

/// Hands keys over after ring changes (`ap/handoff.rs`), a step every 500 ms.
async fn hand_off_in_background(ap: ApNode) {
    let mut every = tokio::time::interval(Duration::from_millis(500));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        ap.handoff_step().await;
    }
}

/// A pass of tombstone collection every tenth of the grace period (1 s to 1 min).
async fn collect_tombstones_in_background(ap: ApNode) {
    let period =
        (ap.config().tombstone_grace / 10).clamp(Duration::from_secs(1), Duration::from_secs(60));
    let mut every = tokio::time::interval(period);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        match ap.collect_tombstones().await {
            Ok(0) => {}
            Ok(n) => tracing::info!(collected = n, "tombstones collected"),
            Err(e) => tracing::debug!(error = %e, "tombstone collection pass failed"),
        }
    }
}

/// Reclaims the space of compacted revisions in small steps.
async fn compact_in_background(node: NodeHandle) {
    let mut every = tokio::time::interval(Duration::from_millis(100));
    loop {
        every.tick().await;
        if node.status().stopped {
            return;
        }
        let n = node.clone();
        let step =
            tokio::task::spawn_blocking(move || n.with_store_mut(|s| s.compact_step())).await;
        match step {
            Ok(Ok(true)) => {}
            Ok(Ok(false)) => every.reset_immediately(),
            Ok(Err(e)) => tracing::warn!(error = %e, "compaction step failed"),
            Err(_) => return,
        }
    }
}
