//! An AP-only member (`--ap-only`): it holds AP data, serves Redis clients and the AP
//! HTTP routes, and gossips, but is not in Raft's configuration and holds none of the CP
//! keyspace. The cluster metadata (the ring's members, bucket properties) it reads from
//! the Raft members named by `--initial-cluster`, over the peer service `Membership`
//! (`meta.rs`):
//!
//! ```text
//! every 500 ms: Members(known version) ─▶ a Raft member
//!   unchanged            ─▶ nothing to do (a short answer)
//!   new members/buckets  ─▶ the AP ring, gossip's peers, bucket properties
//!   this member missing  ─▶ Register (through Raft), before it has been seen;
//!                           after it has been seen, for REMOVED_AFTER: it was removed,
//!                           and it stops
//!   a refusal            ─▶ it stops with the reason (a wrong cluster token, an id
//!                           that is a Raft member's)
//! ```
//!
//! Until it finds itself among the members, it knows no ring and answers AP requests
//! with an error rather than placing keys on a ring of itself alone. Bucket changes made
//! here (`CONCORD.BUCKET SET`, HTTP) go to a Raft member (`SetBucket`). etcd's gRPC API
//! is not served: such requests get UNIMPLEMENTED with a message naming the reason.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use concord_proto::peer::membership_client::MembershipClient;
use concord_proto::peer::{MembersRequest, MembersResponse, PeerMember, RegisterRequest};
use concord_raft::NodeId;
use concord_runtime::direct::CALLS_MAGIC;
use concord_runtime::grpc::RaftPeerService;
use concord_runtime::membership::{generation_now, Membership, MembershipConfig};
use concord_runtime::transport::Router;
use tokio::sync::watch as tokio_watch;
use tonic::transport::{Channel, Endpoint};

use super::http::{self, ApSide};
use super::{
    ap_in_background, dirlock, founding_members, gossip_to_ap, serve_peers, serve_redis, wait_stop,
    Listeners, Role, Server, ServerConfig, ServerError,
};
use crate::ap::{buckets, ApNode, BucketCatalog, BucketProps};

/// How often the metadata is read.
const SYNC_EVERY: Duration = Duration::from_millis(500);

/// How long this member may be missing from the metadata, once it has been seen there,
/// before it takes itself as removed (a Raft member that lags behind answers without it
/// for a moment).
const REMOVED_AFTER: Duration = Duration::from_secs(10);

/// How long the metadata may go unread before `/health` reports the member unhealthy.
const STALE_AFTER: Duration = Duration::from_secs(5);

/// Each call to a Raft member is given this long.
const CALL_TIMEOUT: Duration = Duration::from_secs(3);

/// The Raft members this member calls: the seeds from `--initial-cluster` at first, then
/// the Raft members the metadata names. Calls go to the one that answered last, then to
/// the others in turn.
struct RaftMembers {
    cluster_id: u64,
    state: Mutex<RaftMembersState>,
    dialer: concord_tls::Dialer,
}

#[derive(Default)]
struct RaftMembersState {
    urls: Vec<String>,
    preferred: usize,
    channels: BTreeMap<String, Channel>,
}

impl RaftMembers {
    fn new(cluster_id: u64, seeds: Vec<String>, dialer: concord_tls::Dialer) -> Self {
        Self {
            cluster_id,
            dialer,
            state: Mutex::new(RaftMembersState {
                urls: seeds,
                ..RaftMembersState::default()
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, RaftMembersState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The Raft members to call from now on (kept when `urls` is empty).
    fn set_urls(&self, urls: Vec<String>) {
        if urls.is_empty() {
            return;
        }
        let mut st = self.lock();
        if st.urls != urls {
            let preferred = st.urls.get(st.preferred).cloned();
            st.preferred = preferred
                .and_then(|p| urls.iter().position(|u| *u == p))
                .unwrap_or(0);
            st.channels.retain(|u, _| urls.contains(u));
            st.urls = urls;
        }
    }

    /// Clients for the Raft members, the preferred one first, each with its index.
    fn clients(&self) -> Vec<(usize, String, MembershipClient<Channel>)> {
        let mut st = self.lock();
        let n = st.urls.len();
        let start = st.preferred;
        let mut out = Vec::new();
        for i in (0..n).map(|k| (start + k) % n) {
            let url = st.urls[i].clone();
            let channel = match st.channels.get(&url) {
                Some(c) => c.clone(),
                None => match Endpoint::from_shared(url.clone()) {
                    Ok(e) => {
                        let c = self.dialer.lazy(e.connect_timeout(CALL_TIMEOUT));
                        st.channels.insert(url.clone(), c.clone());
                        c
                    }
                    Err(_) => continue,
                },
            };
            out.push((i, url, MembershipClient::new(channel)));
        }
        out
    }

    fn answered(&self, index: usize) {
        self.lock().preferred = index;
    }

    /// Calls the Raft members in turn until one answers; the last error otherwise.
    async fn call<T, F, Fut>(&self, what: &str, f: F) -> Result<T, CallError>
    where
        F: Fn(MembershipClient<Channel>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let mut last = format!("{what}: no Raft member is known");
        for (i, url, client) in self.clients() {
            match tokio::time::timeout(CALL_TIMEOUT, f(client)).await {
                Ok(Ok(r)) => {
                    self.answered(i);
                    return Ok(r.into_inner());
                }
                // The member answered with a refusal: another would say the same.
                Ok(Err(s))
                    if matches!(
                        s.code(),
                        tonic::Code::InvalidArgument | tonic::Code::FailedPrecondition
                    ) =>
                {
                    return Err(CallError::Refused(format!(
                        "{what}: {url}: {}",
                        s.message()
                    )));
                }
                Ok(Err(s)) => last = format!("{what}: {url}: {}", s.message()),
                Err(_) => last = format!("{what}: {url}: timed out"),
            }
        }
        Err(CallError::Unreachable(last))
    }

    async fn members(&self, known_version: u64) -> Result<MembersResponse, CallError> {
        let cluster_id = self.cluster_id;
        self.call("reading the cluster metadata", |mut c| async move {
            c.members(MembersRequest {
                cluster_id,
                known_version,
            })
            .await
        })
        .await
    }

    async fn register(&self, me: PeerMember) -> Result<(), CallError> {
        let cluster_id = self.cluster_id;
        self.call("registering this member", |mut c| {
            let member = Some(me.clone());
            async move { c.register(RegisterRequest { cluster_id, member }).await }
        })
        .await
        .map(|_| ())
    }
}

/// Why a call to the Raft members failed.
#[derive(Debug)]
enum CallError {
    /// A Raft member refused it (a wrong cluster token, an id that is a Raft member's):
    /// every other would too, and trying again changes nothing.
    Refused(String),
    /// No Raft member answered in time.
    Unreachable(String),
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::Refused(why) | CallError::Unreachable(why) => f.write_str(why),
        }
    }
}

/// Bucket changes made on an AP-only member go to a Raft member.
struct PeerCatalog(Arc<RaftMembers>);

impl BucketCatalog for PeerCatalog {
    fn store(
        &self,
        bucket: u8,
        props: BucketProps,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send>> {
        let raft = self.0.clone();
        Box::pin(async move {
            let cluster_id = raft.cluster_id;
            let encoded = serde_json::to_vec(&props).map_err(|e| e.to_string())?;
            raft.call("bucket properties not stored", |mut c| {
                let request = concord_proto::peer::SetBucketRequest {
                    cluster_id,
                    bucket: u32::from(bucket),
                    props: encoded.clone().into(),
                };
                async move { c.set_bucket(request).await }
            })
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
        })
    }
}

/// What `/health` and `/ready` report on an AP-only member.
#[derive(Default)]
struct MetaHealth {
    /// When the metadata was last read.
    read_at: Mutex<Option<Instant>>,
}

impl MetaHealth {
    fn age(&self) -> Option<Duration> {
        self.read_at
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .map(|t| t.elapsed())
    }

    fn mark(&self) {
        *self.read_at.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
    }
}

#[derive(Clone)]
struct HttpState {
    side: ApSide,
    health: Arc<MetaHealth>,
    metrics: Arc<crate::metrics::Metrics>,
}

/// Starts an AP-only member (the caller holds the data directory's lock).
pub(super) async fn start(
    config: ServerConfig,
    dir_lock: dirlock::DataDirLock,
    member_id: NodeId,
    cluster_id: u64,
) -> Result<Server, ServerError> {
    let my_peer_urls = config.advertised_peer_urls().to_vec();
    let seeds: BTreeMap<NodeId, String> = founding_members(&config, member_id, &my_peer_urls)
        .into_iter()
        .filter(|(id, _)| *id != member_id)
        .filter_map(|(id, r)| r.peer_urls.first().map(|u| (id, u.clone())))
        .collect();
    let Listeners {
        client: client_listeners,
        redis: redis_listeners,
        peer: peer_listeners,
        client_bound,
        peer_bound,
        my_client_urls,
        tls,
    } = Listeners::bind(&config).await?;

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
        seeds.clone(),
    )
    .map_err(|e| ServerError::Config(e.to_string()))?;
    let ap = ApNode::open(member_id, cluster_id, &config.data_dir, config.ap)
        .map_err(|e| ServerError::Start(e.to_string()))?;
    ap.set_dialer(tls.peer_dialer.clone());
    ap.set_direct_links(config.peer_direct_links);
    let metrics = Arc::new(crate::metrics::Metrics::new());
    ap.set_telemetry(metrics.ap.clone());
    let raft = Arc::new(RaftMembers::new(
        cluster_id,
        seeds.values().cloned().collect(),
        tls.peer_dialer.clone(),
    ));
    ap.set_catalog(Arc::new(PeerCatalog(raft.clone())));

    let (stop, stop_rx) = tokio_watch::channel(false);
    let mut servers = Vec::new();
    // No Raft group is registered: Raft traffic sent here by mistake is refused.
    let no_raft = RaftPeerService::new(cluster_id, Router::new())
        .with_direct_service(CALLS_MAGIC, ap.direct_calls_service());
    for (listener, url) in peer_listeners {
        let extra =
            tonic::service::Routes::new(gossip.clone().into_server()).add_service(ap.service());
        let tls = tls.peer_for(&url);
        servers.push(serve_peers(listener, no_raft.clone(), extra, tls, &stop_rx));
    }

    let health = Arc::new(MetaHealth::default());
    let roster = Arc::new(http::Roster::default());
    let side = ApSide {
        ap: ap.clone(),
        membership: membership.clone(),
        member_id,
        roster: roster.clone(),
    };
    let router = axum::Router::new()
        .route("/health", get(health_route))
        .route("/ready", get(ready_route))
        .route("/readyz", get(ready_route))
        .route("/livez", get(|| async { "ok\n" }))
        .route("/metrics", get(metrics_route))
        .with_state(HttpState {
            side: side.clone(),
            health: health.clone(),
            metrics,
        })
        .merge(http::ap_routes(side))
        .merge(super::dashboard::ap_only_router(
            super::dashboard::ApOnlyView {
                me: member_id.get(),
                roster: roster.clone(),
                dialer: tls.client_dialer.clone(),
            },
        ))
        .fallback(not_served);
    let limits = super::listener::Limits {
        max_connections: config.max_client_connections,
        max_concurrent_streams: config.max_concurrent_streams,
    };
    for (tcp, url) in client_listeners {
        let stop = wait_stop(stop_rx.clone());
        servers.push(tokio::spawn(super::listener::serve(
            tcp,
            router.clone(),
            limits,
            tls.client_for(&url),
            stop,
        )));
    }
    let redis_bound = serve_redis(redis_listeners, &tls, &ap, &stop_rx, &mut servers);

    let me = PeerMember {
        id: member_id.get(),
        name: config.name.clone(),
        peer_urls: my_peer_urls,
        client_urls: my_client_urls.clone(),
        is_learner: false,
        ap_only: true,
    };
    let (removed_tx, removed_rx) = tokio_watch::channel(None);
    let mut background = vec![tokio::spawn(sync_metadata(
        raft,
        membership.clone(),
        ap.clone(),
        me,
        health,
        roster,
        removed_tx,
    ))];
    background.extend(ap_in_background(&ap));
    tracing::info!(
        member = format_args!("{member_id}"),
        cluster = format_args!("{cluster_id:x}"),
        name = %config.name,
        client_urls = ?my_client_urls,
        peer_urls = ?peer_bound,
        redis_urls = ?redis_bound,
        raft_members = ?seeds.values().collect::<Vec<_>>(),
        data_dir = %config.data_dir.display(),
        "concord AP-only member started"
    );
    Ok(Server {
        member_id,
        cluster_id,
        client_urls: client_bound,
        peer_urls: peer_bound,
        role: Role::ApOnly(removed_rx),
        membership,
        stop,
        servers,
        background,
        dir_lock,
    })
}

/// Reads the cluster metadata from a Raft member every [`SYNC_EVERY`] and puts it in
/// force; registers this member until it is recorded; stops it once it has been removed.
async fn sync_metadata(
    raft: Arc<RaftMembers>,
    membership: Membership,
    ap: ApNode,
    me: PeerMember,
    health: Arc<MetaHealth>,
    roster: Arc<http::Roster>,
    removed: tokio_watch::Sender<Option<String>>,
) {
    let my_id = NodeId(me.id);
    let mut every = tokio::time::interval(SYNC_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut known_version = 0;
    let mut peers_before: BTreeMap<NodeId, String> = BTreeMap::new();
    let mut seen = false;
    let mut missing_since: Option<Instant> = None;
    let mut failures = 0u64;
    loop {
        every.tick().await;
        // Why this member must stop, if it must.
        let mut refused = None;
        match raft.members(known_version).await {
            Ok(answer) => {
                health.mark();
                failures = 0;
                if !answer.unchanged {
                    known_version = answer.metadata_version;
                    raft.set_urls(
                        answer
                            .members
                            .iter()
                            .filter(|m| !m.ap_only)
                            .filter_map(|m| m.peer_urls.first().cloned())
                            .collect(),
                    );
                    roster.set(answer.members.iter().map(|m| http::Listed {
                        id: m.id,
                        name: m.name.clone(),
                        client_url: m.client_urls.first().cloned(),
                        kind: match (m.ap_only, m.is_learner) {
                            (true, _) => "ap-only",
                            (false, true) => "learner",
                            (false, false) => "voter",
                        },
                    }));
                    let mine = answer.members.iter().find(|m| m.id == me.id);
                    match mine {
                        Some(record) => {
                            seen = true;
                            missing_since = None;
                            let peers: BTreeMap<NodeId, String> = answer
                                .members
                                .iter()
                                .filter(|m| m.id != me.id)
                                .filter_map(|m| {
                                    m.peer_urls.first().map(|u| (NodeId(m.id), u.clone()))
                                })
                                .collect();
                            for (id, url) in &peers {
                                membership.set_peer(*id, url.clone());
                            }
                            for id in peers_before.keys() {
                                if !peers.contains_key(id) {
                                    membership.remove_peer(*id);
                                }
                            }
                            ap.set_members(&peers);
                            peers_before = peers;
                            let entries: Vec<(Vec<u8>, Vec<u8>)> = answer
                                .buckets
                                .into_iter()
                                .map(|e| (e.key.into_bytes(), e.value.to_vec()))
                                .collect();
                            ap.set_buckets(&buckets::from_meta(&entries));
                            if record.name != me.name
                                || record.peer_urls != me.peer_urls
                                || record.client_urls != me.client_urls
                            {
                                refused = register(&raft, &me, &mut known_version).await.err();
                            }
                        }
                        None if !seen => {
                            refused = register(&raft, &me, &mut known_version).await.err();
                        }
                        None => {
                            missing_since.get_or_insert_with(Instant::now);
                        }
                    }
                }
                if missing_since.is_some_and(|t| t.elapsed() >= REMOVED_AFTER) {
                    refused = Some(format!(
                        "member {my_id} was removed from the cluster (its record is gone)"
                    ));
                }
            }
            Err(CallError::Refused(why)) => refused = Some(why),
            Err(CallError::Unreachable(why)) => {
                failures += 1;
                // Said once, then every ten seconds while it lasts.
                if failures % 20 == 1 {
                    tracing::warn!(error = %why, failures, "cluster metadata not read");
                }
            }
        }
        if let Some(reason) = refused {
            tracing::error!("{reason}; stopping");
            let _ = removed.send(Some(reason));
            return;
        }
        if !gossip_to_ap(&membership, &ap).await {
            return;
        }
    }
}

/// Records this member through a Raft member; the metadata is read in full next time.
/// An error only when the Raft members refuse it (then it must stop); one that did not
/// answer is tried again at the next round.
async fn register(
    raft: &RaftMembers,
    me: &PeerMember,
    known_version: &mut u64,
) -> Result<(), String> {
    match raft.register(me.clone()).await {
        Ok(()) => {
            tracing::info!("registered as an AP-only member");
            *known_version = 0;
            Ok(())
        }
        Err(CallError::Refused(why)) => Err(why),
        Err(CallError::Unreachable(why)) => {
            tracing::warn!(error = %why, "registration failed; retrying");
            Ok(())
        }
    }
}

/// Healthy while the metadata is fresh and the ring known.
async fn health_route(State(st): State<HttpState>) -> impl IntoResponse {
    let reason = match st.health.age() {
        None => "NO METADATA: no Raft member has answered yet".to_string(),
        Some(age) if age > STALE_AFTER => format!(
            "STALE METADATA: no Raft member has answered for {} s",
            age.as_secs()
        ),
        Some(_) if !st.side.ap.ring_is_known() => {
            "NOT REGISTERED: this member is not among the members yet".to_string()
        }
        Some(_) => String::new(),
    };
    http::health_response(&reason, serde_json::json!({"ap_only": true}))
}

/// Ready once the member knows the ring.
async fn ready_route(State(st): State<HttpState>) -> impl IntoResponse {
    if st.side.ap.ring_is_known() {
        (StatusCode::OK, "ready\n")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: the cluster metadata has not been read yet\n",
        )
    }
}

async fn metrics_route(State(st): State<HttpState>) -> impl IntoResponse {
    let mut out = Vec::new();
    http::metric(
        &mut out,
        crate::metrics::Kind::Gauge,
        "concord_server_ap_only",
        "Whether this member is AP-only (1): not in Raft, no CP keyspace.",
        1.0,
    );
    http::metric(
        &mut out,
        crate::metrics::Kind::Gauge,
        "concord_ap_metadata_age_seconds",
        "Time since the cluster metadata was last read from a Raft member (-1: never).",
        st.health.age().map_or(-1.0, |a| a.as_secs_f64()),
    );
    http::ap_side_metrics(&mut out, &st.side.membership, &st.side.ap).await;
    http::metrics_response(&st.metrics, out)
}

/// gRPC requests (etcd's API) get UNIMPLEMENTED with the reason; others 404.
async fn not_served(req: axum::extract::Request) -> axum::response::Response {
    if http::is_grpc(&req) {
        tonic::Status::unimplemented(
            "this member is AP-only: it does not serve the etcd API; \
             send etcd requests to a Raft member's client URL",
        )
        .into_http()
    } else {
        http::not_found().await.into_response()
    }
}
