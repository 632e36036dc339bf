//! Plain HTTP on the client URL, next to gRPC: `/health` (etcd's JSON), `/ready`,
//! `/metrics` (Prometheus text format), `/version` and `/v1/members` (the gossip view:
//! every member's SWIM state and phi).

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use concord_raft::StateRole;

use super::api::Ctx;
use super::maintenance::{ETCD_CLUSTER_VERSION, ETCD_VERSION};
use crate::metrics::{Kind, Metrics, Sample};
use concord_runtime::membership::{MemberView, Membership, MembershipView};

/// The HTTP routes, to be merged with the gRPC router.
pub(crate) fn router(ctx: Ctx) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/readyz", get(ready))
        .route("/livez", get(livez))
        .route("/metrics", get(metrics))
        .with_state(ctx.clone())
        .merge(super::dashboard::router(ctx.clone()))
        .merge(ap_routes(ApSide {
            ap: ctx.ap,
            membership: ctx.membership,
            member_id: ctx.member_id,
            roster: ctx.roster,
        }))
}

/// A member as the views list it.
#[derive(Debug, Clone)]
pub(crate) struct Listed {
    pub id: u64,
    pub name: String,
    pub client_url: Option<String>,
    /// `voter`, `learner` or `ap-only`.
    pub kind: &'static str,
}

/// The members (names, client URLs, kinds) as this member last read them from the cluster
/// metadata, for the views (`/v1/members`, `/v1/ap`, and an AP-only member's dashboard).
#[derive(Debug, Default)]
pub(crate) struct Roster(std::sync::RwLock<std::collections::BTreeMap<u64, Listed>>);

impl Roster {
    pub fn set(&self, members: impl IntoIterator<Item = Listed>) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) =
            members.into_iter().map(|m| (m.id, m)).collect();
    }

    /// Every member, in id order.
    pub fn listed(&self) -> Vec<Listed> {
        let members = self.0.read().unwrap_or_else(|e| e.into_inner());
        members.values().cloned().collect()
    }

    /// `"name"` and `"role"` (`raft` or `ap-only`) of member `id`, for a JSON view.
    fn describe(&self, id: concord_raft::NodeId, into: &mut serde_json::Value) {
        let members = self.0.read().unwrap_or_else(|e| e.into_inner());
        if let Some(m) = members.get(&id.get()) {
            into["name"] = serde_json::json!(m.name);
            into["role"] = serde_json::json!(if m.kind == "ap-only" {
                "ap-only"
            } else {
                "raft"
            });
        }
    }
}

/// What the AP side's routes need: every member has it, AP-only members included.
#[derive(Clone)]
pub(crate) struct ApSide {
    pub ap: crate::ap::ApNode,
    pub membership: Membership,
    pub member_id: concord_raft::NodeId,
    pub roster: std::sync::Arc<Roster>,
}

/// The routes every member serves, AP-only members included: `/version`, `/v1/members`,
/// `/v1/ap`, and the buckets and their keys.
pub(crate) fn ap_routes(side: ApSide) -> Router {
    Router::new()
        .route("/version", get(version))
        .route("/v1/members", get(gossip_members))
        .route("/v1/ap", get(ap_status))
        .route("/v1/log-level", get(log_level).put(set_log_level))
        .with_state(side.clone())
        .merge(super::ap_http::router(side.ap))
}

pub(crate) const JSON: [(header::HeaderName, &str); 1] =
    [(header::CONTENT_TYPE, "application/json")];

/// etcd's `/health`: healthy when a leader is known and no alarm is raised.
async fn health(State(ctx): State<Ctx>) -> impl IntoResponse {
    let st = ctx.node.status();
    let nospace = ctx.node.with_store(|s| Ok(s.nospace())).unwrap_or(false);
    let reason = if st.stopped {
        "server stopped"
    } else if st.leader.is_none() {
        "RAFT NO LEADER"
    } else if nospace {
        "ALARM NOSPACE"
    } else {
        ""
    };
    health_response(reason, serde_json::json!({}))
}

/// etcd's `/health` answer: healthy (200) when `reason` is empty, else 503 with it; the
/// fields of `extra` are added.
pub(crate) fn health_response(reason: &str, extra: serde_json::Value) -> impl IntoResponse {
    let code = if reason.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let mut body = serde_json::json!({
        "health": if reason.is_empty() { "true" } else { "false" },
        "reason": reason,
    });
    if let (Some(body), Some(extra)) = (body.as_object_mut(), extra.as_object()) {
        body.extend(extra.clone());
    }
    (code, JSON, body.to_string())
}

/// Committed entries a member may still have to apply and be ready.
pub(crate) const READY_APPLY_LAG: u64 = 1000;

/// Ready to serve (`/ready`, etcd 3.5's `/readyz`): the member knows a leader, has applied
/// what is committed (within [`READY_APPLY_LAG`] entries) and no alarm is raised; else 503
/// with the reason.
async fn ready(State(ctx): State<Ctx>) -> impl IntoResponse {
    let st = ctx.node.status();
    let nospace = ctx.node.with_store(|s| Ok(s.nospace())).unwrap_or(false);
    let lag = st.commit.saturating_sub(st.applied);
    let reason = if st.stopped {
        format!(
            "server stopped{}",
            st.fatal.map(|f| format!(": {f}")).unwrap_or_default()
        )
    } else if st.leader.is_none() {
        "no leader".into()
    } else if lag > READY_APPLY_LAG {
        format!("applying: {lag} committed entries not applied yet")
    } else if nospace {
        "alarm NOSPACE raised".into()
    } else {
        return (StatusCode::OK, "ready\n".to_string());
    };
    (
        StatusCode::SERVICE_UNAVAILABLE,
        format!("not ready: {reason}\n"),
    )
}

/// Alive (`/livez`): the process answers and its Raft driver runs; else 503 with why it
/// stopped (a restart is the remedy, which is what a liveness probe is for).
async fn livez(State(ctx): State<Ctx>) -> impl IntoResponse {
    let st = ctx.node.status();
    match (st.stopped, st.fatal) {
        (false, _) => (StatusCode::OK, "ok\n".to_string()),
        (true, Some(why)) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not live: the Raft driver stopped: {why}\n"),
        ),
        (true, None) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "not live: the Raft driver stopped\n".to_string(),
        ),
    }
}

/// This member's gossip view: `{"me": {...}, "members": [...], "pending_updates": n,
/// "phi_threshold": x}`, ids in hex as etcdctl prints them.
async fn gossip_members(State(ctx): State<ApSide>) -> impl IntoResponse {
    let Some(view) = ctx.membership.view().await else {
        let body = serde_json::json!({"error": "gossip has stopped on this member"});
        return (StatusCode::SERVICE_UNAVAILABLE, JSON, body.to_string());
    };
    let member = |m: &MemberView| {
        let mut v = serde_json::json!({
            "id": format!("{:x}", m.id.get()),
            "state": m.state.as_str(),
            "generation": m.generation,
            "incarnation": m.incarnation,
            "meta": m.meta,
            "phi": m.phi,
            "for_secs": m.for_secs,
        });
        ctx.roster.describe(m.id, &mut v);
        v
    };
    let body = serde_json::json!({
        "me": member(&view.me),
        "members": view.members.iter().map(member).collect::<Vec<_>>(),
        "pending_updates": view.pending_updates,
        "phi_threshold": view.phi_threshold,
    });
    (StatusCode::OK, JSON, body.to_string())
}

/// This member's view of the AP buckets: replication settings, the ring (each member's
/// share of first replicas and whether it is alive), the hints held here per member, and
/// the AP counters.
async fn ap_status(State(ctx): State<ApSide>) -> impl IntoResponse {
    let m = ctx.ap.metrics();
    let pending: std::collections::BTreeMap<_, _> = m.hints_pending.iter().copied().collect();
    let ring: Vec<_> = ctx
        .ap
        .ring_shares()
        .into_iter()
        .map(|(id, share, alive)| {
            let mut v = serde_json::json!({
                "id": format!("{:x}", id.get()),
                "share": share,
                "alive": alive,
                "hints_held_here": pending.get(&id).copied().unwrap_or(0),
            });
            ctx.roster.describe(id, &mut v);
            v
        })
        .collect();
    let body = serde_json::json!({
        "me": format!("{:x}", ctx.member_id.get()),
        "buckets": (0..crate::ap::BUCKETS as u8)
            .map(|b| super::ap_http::props_json(b, &ctx.ap.bucket(b)))
            .collect::<Vec<_>>(),
        "vnodes_per_member": crate::ap::VNODES,
        "ring": ring,
        "hints_replayed": m.hints_replayed,
        "hints_dropped": m.hints_dropped,
        "read_repairs": m.read_repairs,
        "anti_entropy_rounds": m.anti_entropy_rounds,
        "anti_entropy_keys_repaired": m.anti_entropy_repaired,
        "anti_entropy_keys_fetched": m.anti_entropy_fetched,
        "tombstones_removed": m.tombstones_removed,
        "in_transition": ctx.ap.in_transition(),
        "handoff_sent": m.handoff_sent,
        "handoff_removed": m.handoff_removed,
    });
    (StatusCode::OK, JSON, body.to_string())
}

fn no_log_control() -> (StatusCode, String) {
    (
        StatusCode::NOT_IMPLEMENTED,
        "not implemented: this process installed no reloadable logger\n".into(),
    )
}

/// `GET /v1/log-level`: the log filter in force.
async fn log_level() -> (StatusCode, String) {
    match crate::logs::control() {
        Some(c) => (StatusCode::OK, format!("{}\n", c.filter())),
        None => no_log_control(),
    }
}

/// `PUT /v1/log-level` with a level (`debug`) or filter directives as the body: replaces
/// the log filter at once (no restart); answers the filter now in force.
async fn set_log_level(body: axum::body::Bytes) -> (StatusCode, String) {
    let Some(c) = crate::logs::control() else {
        return no_log_control();
    };
    let Ok(spec) = std::str::from_utf8(&body) else {
        return (StatusCode::BAD_REQUEST, "the filter is not UTF-8\n".into());
    };
    match c.set_filter(spec.trim()) {
        Ok(()) => {
            tracing::warn!(filter = %c.filter(), "log filter changed through /v1/log-level");
            (StatusCode::OK, format!("{}\n", c.filter()))
        }
        Err(why) => (StatusCode::BAD_REQUEST, format!("{why}\n")),
    }
}

async fn version() -> impl IntoResponse {
    let body = serde_json::json!({
        "etcdserver": ETCD_VERSION,
        "etcdcluster": ETCD_CLUSTER_VERSION,
        "concord": env!("CARGO_PKG_VERSION"),
    });
    (StatusCode::OK, JSON, body.to_string())
}

/// Adds one sample without labels.
pub(crate) fn metric(
    out: &mut Vec<Sample>,
    kind: Kind,
    name: &'static str,
    help: &'static str,
    value: f64,
) {
    out.push(Sample::new(kind, name, help, value));
}

async fn metrics(State(ctx): State<Ctx>) -> impl IntoResponse {
    let st = ctx.node.status();
    let (size, in_use, keys, nospace) = ctx
        .node
        .with_store(|s| {
            Ok((
                s.size_bytes()?,
                s.size_in_use_bytes()?,
                s.indexed_keys(),
                s.nospace(),
            ))
        })
        .unwrap_or((0, 0, 0, false));
    let mut out = Vec::new();
    let has_leader = f64::from(u8::from(st.leader.is_some()));
    let is_leader = f64::from(u8::from(st.role == StateRole::Leader));
    for (name, help, value) in [
        (
            "etcd_server_has_leader",
            "Whether or not a leader exists. 1 is existence, 0 is not.",
            has_leader,
        ),
        (
            "etcd_server_is_leader",
            "Whether or not this member is a leader. 1 if is, 0 otherwise.",
            is_leader,
        ),
        (
            "etcd_server_proposals_committed_total",
            "The total number of consensus proposals committed (the Raft commit index).",
            st.commit as f64,
        ),
        (
            "etcd_server_proposals_applied_total",
            "The total number of consensus proposals applied (the applied index).",
            st.applied as f64,
        ),
        (
            "etcd_server_proposals_pending",
            "The current number of pending proposals to commit.",
            st.pending_proposals as f64,
        ),
        (
            "etcd_mvcc_db_total_size_in_bytes",
            "Total size of the underlying database physically allocated in bytes.",
            size as f64,
        ),
        (
            "etcd_mvcc_db_total_size_in_use_in_bytes",
            "Total size of the underlying database logically in use in bytes.",
            in_use as f64,
        ),
        (
            "etcd_debugging_mvcc_keys_total",
            "Total number of keys (with versions not yet compacted away).",
            keys as f64,
        ),
        (
            "concord_alarm_nospace",
            "Whether the NOSPACE alarm is raised (writes refused until it is disarmed).",
            f64::from(u8::from(nospace)),
        ),
        ("concord_raft_term", "Current Raft term.", st.term as f64),
        (
            "concord_raft_commit_index",
            "Raft commit index.",
            st.commit as f64,
        ),
        (
            "concord_raft_applied_index",
            "Raft applied index.",
            st.applied as f64,
        ),
        (
            "concord_raft_apply_lag_entries",
            "Committed entries not yet applied on this member.",
            st.commit.saturating_sub(st.applied) as f64,
        ),
        (
            "concord_raft_snapshot_index",
            "Index of the latest snapshot.",
            st.snapshot_index as f64,
        ),
        (
            "concord_mvcc_revision",
            "Current store revision.",
            st.state.revision as f64,
        ),
    ] {
        metric(&mut out, Kind::Gauge, name, help, value);
    }
    // `_total`: a counter, as Prometheus's naming rules expect.
    metric(
        &mut out,
        Kind::Counter,
        "concord_raft_snapshots_installed_total",
        "Snapshots received and installed since start.",
        st.snapshots_installed as f64,
    );
    let hub = ctx.node.watch_hub().stats();
    metric(
        &mut out,
        Kind::Gauge,
        "concord_watch_synced_watchers",
        "Watchers served by the shared change-log reader (caught up).",
        hub.synced as f64,
    );
    metric(
        &mut out,
        Kind::Counter,
        "concord_watch_hub_reads_total",
        "Change-log reads made once for all synced watchers.",
        hub.reads as f64,
    );
    metric(
        &mut out,
        Kind::Counter,
        "concord_watch_slow_watchers_total",
        "Watchers moved out of the shared reader because their client fell behind.",
        hub.dropped_slow as f64,
    );
    let (runs, failed, pause_total, last_pause, max_pause) = ctx.node.defrag_stats().snapshot();
    for (kind, name, help, value) in [
        (
            Kind::Counter,
            "concord_defragment_total",
            "Defragments completed.",
            runs as f64,
        ),
        (
            Kind::Counter,
            "concord_defragment_failed_total",
            "Defragments abandoned (the store is left as it was).",
            failed as f64,
        ),
        (
            Kind::Counter,
            "concord_defragment_pause_seconds_total",
            "Time reads and applies waited for defragments to switch files.",
            pause_total.as_secs_f64(),
        ),
        (
            Kind::Gauge,
            "concord_defragment_last_pause_seconds",
            "Pause of the latest defragment.",
            last_pause.as_secs_f64(),
        ),
        (
            Kind::Gauge,
            "concord_defragment_max_pause_seconds",
            "Longest pause of a defragment since start.",
            max_pause.as_secs_f64(),
        ),
    ] {
        metric(&mut out, kind, name, help, value);
    }
    ap_side_metrics(&mut out, &ctx.membership, &ctx.ap).await;
    metrics_response(&ctx.metrics, out)
}

/// A `/metrics` answer: the registry's metrics with `samples`.
pub(crate) fn metrics_response(metrics: &Metrics, samples: Vec<Sample>) -> impl IntoResponse {
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
        )],
        metrics.encode(samples),
    )
}

/// The metrics of gossip and the AP buckets, which every member has.
pub(crate) async fn ap_side_metrics(
    out: &mut Vec<Sample>,
    membership: &Membership,
    ap: &crate::ap::ApNode,
) {
    if let Some(view) = membership.view().await {
        gossip_metrics(out, &view);
    }
    ap_metrics(out, &ap.metrics());
}

/// One series per member and state (1 for the member's state, 0 for the others), phi
/// per member, and the updates waiting to be gossiped.
fn gossip_metrics(out: &mut Vec<Sample>, view: &MembershipView) {
    use concord_core::swim::State;
    for m in &view.members {
        for s in [State::Alive, State::Suspect, State::Dead, State::Left] {
            out.push(
                Sample::new(
                    Kind::Gauge,
                    "concord_gossip_member_state",
                    "The member's SWIM state as this member sees it (1 for the current state).",
                    f64::from(u8::from(m.state == s)),
                )
                .label("member", format!("{:x}", m.id.get()))
                .label("state", s.as_str()),
            );
        }
    }
    for m in &view.members {
        if let Some(phi) = m.phi {
            out.push(
                Sample::new(
                    Kind::Gauge,
                    "concord_gossip_member_phi",
                    "Phi-accrual suspicion of the member, from the gossip packets received from it.",
                    phi,
                )
                .label("member", format!("{:x}", m.id.get())),
            );
        }
    }
    metric(
        out,
        Kind::Gauge,
        "concord_gossip_pending_updates",
        "Membership updates waiting to be piggybacked on gossip packets.",
        view.pending_updates as f64,
    );
}

/// Hints held per member, hints handed over and dropped, read repairs.
fn ap_metrics(out: &mut Vec<Sample>, m: &crate::ap::ApMetrics) {
    for (member, n) in &m.hints_pending {
        out.push(
            Sample::new(
                Kind::Gauge,
                "concord_ap_hints_pending",
                "Hints this member holds for another member, by that member.",
                *n as f64,
            )
            .label("member", format!("{:x}", member.get())),
        );
    }
    for (name, help, value) in [
        (
            "concord_ap_hints_replayed_total",
            "Hints handed over to the member they were for.",
            m.hints_replayed,
        ),
        (
            "concord_ap_hints_dropped_total",
            "Hints not kept because the hint store held its limit for their member.",
            m.hints_dropped,
        ),
        (
            "concord_ap_read_repairs_total",
            "Repairs sent to replicas that answered a read with less than the others.",
            m.read_repairs,
        ),
        (
            "concord_ap_anti_entropy_rounds_total",
            "Anti-entropy exchanges completed with another member.",
            m.anti_entropy_rounds,
        ),
        (
            "concord_ap_anti_entropy_keys_repaired_total",
            "Keys anti-entropy found stale on this member and repaired.",
            m.anti_entropy_repaired,
        ),
        (
            "concord_ap_anti_entropy_keys_fetched_total",
            "Keys anti-entropy fetched from other members to compare (repaired or not).",
            m.anti_entropy_fetched,
        ),
        (
            "concord_ap_tombstones_removed_total",
            "Tombstones removed from this member's replica by tombstone collection.",
            m.tombstones_removed,
        ),
        (
            "concord_ap_handoff_keys_sent_total",
            "Keys sent to their new owners after a ring change.",
            m.handoff_sent,
        ),
        (
            "concord_ap_handoff_keys_removed_total",
            "Keys removed from this member once handoff gave them to their owners.",
            m.handoff_removed,
        ),
    ] {
        metric(out, Kind::Counter, name, help, value as f64);
    }
}

/// Whether a request is gRPC (by its content type).
pub(crate) fn is_grpc(req: &axum::extract::Request) -> bool {
    req.headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"))
}

/// Unknown HTTP paths.
pub(crate) async fn not_found() -> impl IntoResponse {
    (
        StatusCode::NOT_FOUND,
        JSON,
        r#"{"error":"not found","code":5}"#,
    )
}

pub(crate) fn query_param<'a>(q: &'a Option<String>, name: &str) -> Option<&'a str> {
    q.as_deref()?
        .split('&')
        .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
}

/// Fault-injection endpoints for the chaos harness, served only when the process runs with
/// `CONCORD_UNSAFE_TEST_HOOKS=1`:
///
/// * `POST /debug/peer-delay?ms=N` holds every outgoing Raft batch back by N ms (0 heals);
/// * `POST /debug/clock-rate?rate=R` makes the lease clock run at R times real time
///   (1 heals): clock-rate skew, the clock fault that matters to leases, since Concord
///   never reads the wall clock for safety;
/// * `POST /debug/clock-offset?ms=N` shifts the physical clock under the AP buckets' HLC
///   N ms (negative: behind; 0 heals): clock-offset skew, what LWW order, Paxos ballots
///   and apply deadlines see.
pub(crate) fn test_hooks(
    transport: std::sync::Arc<
        concord_runtime::faults::FaultyTransport<concord_runtime::grpc::GrpcTransport>,
    >,
    leases: std::sync::Arc<crate::node::Leases>,
    ap: crate::ap::ApNode,
) -> Router {
    Router::new()
        .route(
            "/debug/peer-delay",
            axum::routing::post(
                move |axum::extract::RawQuery(q): axum::extract::RawQuery| async move {
                    match query_param(&q, "ms").and_then(|v| v.parse::<u64>().ok()) {
                        Some(ms) if ms <= 60_000 => {
                            transport.set_delay(std::time::Duration::from_millis(ms));
                            (StatusCode::OK, format!("peer delay {ms} ms\n"))
                        }
                        _ => (
                            StatusCode::BAD_REQUEST,
                            "expected ?ms=N with N <= 60000\n".to_string(),
                        ),
                    }
                },
            ),
        )
        .route(
            "/debug/clock-rate",
            axum::routing::post(
                move |axum::extract::RawQuery(q): axum::extract::RawQuery| async move {
                    match query_param(&q, "rate").and_then(|v| v.parse::<f64>().ok()) {
                        Some(r) if (0.1..=10.0).contains(&r) => {
                            leases.clock.set_rate(r);
                            (StatusCode::OK, format!("lease clock rate {r}\n"))
                        }
                        _ => (
                            StatusCode::BAD_REQUEST,
                            "expected ?rate=R with 0.1 <= R <= 10\n".to_string(),
                        ),
                    }
                },
            ),
        )
        .route(
            "/debug/clock-offset",
            axum::routing::post(
                move |axum::extract::RawQuery(q): axum::extract::RawQuery| async move {
                    match query_param(&q, "ms").and_then(|v| v.parse::<i64>().ok()) {
                        Some(ms) if ms.abs() <= 60_000 => {
                            ap.set_clock_offset(ms);
                            (StatusCode::OK, format!("clock offset {ms} ms\n"))
                        }
                        _ => (
                            StatusCode::BAD_REQUEST,
                            "expected ?ms=N with -60000 <= N <= 60000\n".to_string(),
                        ),
                    }
                },
            ),
        )
}
