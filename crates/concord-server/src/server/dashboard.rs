//! The dashboard: `GET /ui` (one HTML page with its script and styles, embedded in the
//! binary) and `GET /v1/dashboard`, what the page polls every second: every member of the
//! cluster with its `/metrics` page, fetched by this member from the others in parallel
//! (a member that does not answer within [`FETCH_TIMEOUT`] is reported down with the
//! reason). The page computes rates, latency quantiles and fsync time from those metrics
//! itself, so the dashboard shows exactly what Prometheus would scrape. The AP side comes
//! from this member's `/v1/ap` (ring, hints, anti-entropy) and `/v1/members` (gossip
//! states and phi).
//!
//! A Raft member lists the members from its own configuration and records; an AP-only
//! member, which has neither, from the member list it last read from the Raft members
//! (its [`Roster`]). Either way the page shows the whole cluster.

use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use http_body_util::BodyExt as _;
use serde_json::{json, Value};

use super::api::Ctx;
use super::http::{Listed, Roster, JSON};

/// How long the dashboard waits for another member's metrics.
pub const FETCH_TIMEOUT: Duration = Duration::from_millis(800);

/// Largest metrics page read from a member.
const MAX_PAGE: usize = 4 << 20;

/// The page.
const PAGE: &str = include_str!("dashboard.html");

/// `/ui` and `/v1/dashboard` of a Raft member.
pub(crate) fn router(ctx: Ctx) -> Router {
    Router::new()
        .route("/ui", get(page))
        .route("/ui/", get(page))
        .route("/v1/dashboard", get(cluster))
        .with_state(ctx)
}

/// What an AP-only member's dashboard needs.
#[derive(Clone)]
pub(crate) struct ApOnlyView {
    pub me: u64,
    /// The members it last read from the Raft members.
    pub roster: std::sync::Arc<Roster>,
    /// Dials the members' client URLs.
    pub dialer: concord_tls::Dialer,
}

/// `/ui` and `/v1/dashboard` of an AP-only member.
pub(crate) fn ap_only_router(view: ApOnlyView) -> Router {
    Router::new()
        .route("/ui", get(page))
        .route("/ui/", get(page))
        .route("/v1/dashboard", get(ap_only_cluster))
        .with_state(view)
}

async fn ap_only_cluster(State(view): State<ApOnlyView>) -> impl IntoResponse {
    // The leader is found by the page in the members' metrics (etcd_server_is_leader).
    answer(view.me, None, view.roster.listed(), &view.dialer).await
}

async fn page() -> impl IntoResponse {
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        PAGE,
    )
}

type Client = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    http_body_util::Empty<bytes::Bytes>,
>;

fn client() -> &'static Client {
    static CLIENT: std::sync::OnceLock<Client> = std::sync::OnceLock::new();
    CLIENT.get_or_init(|| {
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build_http()
    })
}

/// `GET {client_url}/metrics`: the page, or why not.
async fn fetch_metrics(dialer: &concord_tls::Dialer, client_url: &str) -> Result<String, String> {
    let base = client_url.trim_end_matches('/');
    let uri: axum::http::Uri = format!("{base}/metrics")
        .parse()
        .map_err(|e| format!("{base}: {e}"))?;
    let attempt = async {
        let response = match uri.scheme_str() {
            Some("http") => client().get(uri).await.map_err(|e| e.to_string())?,
            Some("https") => get_tls(dialer, &uri).await?,
            _ => return Err(format!("{base}: not an http(s) URL")),
        };
        if response.status() != StatusCode::OK {
            return Err(format!("HTTP {}", response.status()));
        }
        let body = http_body_util::Limited::new(response.into_body(), MAX_PAGE)
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        String::from_utf8(body.to_vec()).map_err(|_| "the page is not UTF-8".to_string())
    };
    match tokio::time::timeout(FETCH_TIMEOUT, attempt).await {
        Ok(r) => r,
        Err(_) => Err(format!("no answer within {} ms", FETCH_TIMEOUT.as_millis())),
    }
}

/// `GET uri` over a new TLS connection (HTTP/1.1; one per page: a member's page is
/// read once a second at most).
async fn get_tls(
    dialer: &concord_tls::Dialer,
    uri: &axum::http::Uri,
) -> Result<axum::http::Response<hyper::body::Incoming>, String> {
    let host = uri.host().ok_or_else(|| format!("{uri}: no host"))?;
    let port = uri.port_u16().unwrap_or(443);
    let stream = dialer
        .tls_stream(host, port, &[b"http/1.1"])
        .await
        .map_err(|e| e.to_string())?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let request = axum::http::Request::get(uri.path())
        .header(header::HOST, format!("{host}:{port}"))
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .map_err(|e| e.to_string())?;
    sender
        .send_request(request)
        .await
        .map_err(|e| e.to_string())
}

/// Every member (Raft voters and learners, then AP-only members) with its metrics page.
async fn cluster(State(ctx): State<Ctx>) -> impl IntoResponse {
    let status = ctx.node.status();
    let mut members: Vec<Listed> = ctx
        .members
        .list_for(&status.conf_state)
        .into_iter()
        .map(|m| Listed {
            id: m.id,
            name: m.name,
            client_url: m.client_ur_ls.into_iter().next(),
            kind: if m.is_learner { "learner" } else { "voter" },
        })
        .collect();
    members.extend(
        ctx.members
            .ap_only(&status.conf_state)
            .into_iter()
            .map(|(id, r)| Listed {
                id: id.get(),
                name: r.name,
                client_url: r.client_urls.into_iter().next(),
                kind: "ap-only",
            }),
    );
    answer(
        ctx.member_id.get(),
        status.leader.map(|l| l.get()),
        members,
        &ctx.dialer,
    )
    .await
}

/// `/v1/dashboard`'s answer: `listed` with their metrics pages, fetched in parallel.
async fn answer(
    me: u64,
    leader: Option<u64>,
    listed: Vec<Listed>,
    dialer: &concord_tls::Dialer,
) -> impl IntoResponse {
    let mut members: Vec<Value> = listed
        .iter()
        .map(|m| {
            json!({
                "id": format!("{:x}", m.id),
                "name": m.name,
                "client_url": m.client_url,
                "kind": m.kind,
            })
        })
        .collect();
    let mut fetches = tokio::task::JoinSet::new();
    for (i, m) in listed.into_iter().enumerate() {
        let url = m.client_url;
        let dialer = dialer.clone();
        fetches.spawn(async move {
            let page = match url {
                Some(url) => fetch_metrics(&dialer, &url).await,
                None => Err("no client URL published yet".to_string()),
            };
            (i, page)
        });
    }
    while let Some(done) = fetches.join_next().await {
        let Ok((i, page)) = done else { continue };
        match page {
            Ok(text) => {
                members[i]["up"] = json!(true);
                members[i]["metrics"] = json!(text);
            }
            Err(why) => {
                members[i]["up"] = json!(false);
                members[i]["error"] = json!(why);
            }
        }
    }
    let body = json!({
        "self": format!("{me:x}"),
        "leader": leader.map(|l| format!("{l:x}")),
        "members": members,
        "fetch_timeout_ms": FETCH_TIMEOUT.as_millis() as u64,
        // The page computes rates over this member's clock, not the browser's.
        "now_ms": std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64),
    });
    (StatusCode::OK, JSON, body.to_string())
}
