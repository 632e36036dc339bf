//! The JSON API on the client URL (etcd's grpc-gateway paths, `POST /v3/...`): for
//! `curl` and scripts without a gRPC client.
//!
//! Bodies follow etcd's gateway: proto field names (`range_end`, `prev_kv`), byte fields
//! base64-encoded, 64-bit integers accepted as numbers or strings and returned as strings.
//! A malformed body is answered `400` with `{"error": ..., "code": 3}`; request errors
//! carry etcd's message and gRPC code with the matching HTTP status.
//!
//! Served: `kv/range`, `kv/put`, `kv/deleterange`, `kv/compaction`, `lease/grant`,
//! `lease/revoke` (and `kv/lease/revoke`), `lease/leases`, `maintenance/status`,
//! `cluster/member/list`, `auth/authenticate`. Other gRPC methods are reachable with gRPC
//! only.
//!
//! With authentication on, a request carries its token in the `Authorization` header (as
//! etcd's gateway: the bare token from `auth/authenticate`, no scheme); a connection's
//! verified client certificate names its user as on the gRPC side.

use axum::body::Bytes;
use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use base64::Engine as _;
use concord_proto::etcdserverpb as pb;
use concord_proto::etcdserverpb::auth_server::Auth;
use concord_proto::etcdserverpb::cluster_server::Cluster;
use concord_proto::etcdserverpb::kv_server::Kv;
use concord_proto::etcdserverpb::lease_server::Lease;
use concord_proto::etcdserverpb::maintenance_server::Maintenance;
use concord_proto::mvccpb;
use serde_json::{json, Map, Value};
use tonic::{Code, Status};

use super::api::Ctx;
use super::auth_api::AuthService;
use super::cluster::ClusterService;
use super::kv::KvService;
use super::lease::LeaseService;
use super::maintenance::MaintenanceService;

/// The gateway's state: the same services the gRPC side uses.
#[derive(Clone)]
pub(crate) struct Gateway {
    pub kv: KvService,
    pub lease: LeaseService,
    pub maintenance: MaintenanceService,
    pub cluster: ClusterService,
    pub auth: AuthService,
}

impl Gateway {
    pub(crate) fn new(ctx: Ctx, token: String) -> Self {
        Self {
            kv: KvService { ctx: ctx.clone() },
            lease: LeaseService { ctx: ctx.clone() },
            maintenance: MaintenanceService { ctx: ctx.clone() },
            auth: AuthService { ctx: ctx.clone() },
            cluster: ClusterService { ctx, token },
        }
    }
}

pub(crate) fn router(gw: Gateway) -> Router {
    Router::new()
        .route("/v3/kv/range", post(range))
        .route("/v3/kv/put", post(put))
        .route("/v3/kv/deleterange", post(delete_range))
        .route("/v3/kv/compaction", post(compaction))
        .route("/v3/lease/grant", post(lease_grant))
        .route("/v3/lease/revoke", post(lease_revoke))
        .route("/v3/kv/lease/revoke", post(lease_revoke))
        .route("/v3/lease/leases", post(lease_leases))
        .route("/v3/maintenance/status", post(status))
        .route("/v3/cluster/member/list", post(member_list))
        .route("/v3/auth/authenticate", post(authenticate))
        .with_state(gw)
}

/// Who sends a request: its token (the `Authorization` header) and the common name of
/// its connection's verified client certificate, passed to the services as the gRPC
/// side passes them.
pub(crate) struct Caller {
    token: Option<tonic::metadata::AsciiMetadataValue>,
    cert_user: Option<tonic::metadata::AsciiMetadataValue>,
}

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let token = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| tonic::metadata::AsciiMetadataValue::try_from(v.as_bytes()).ok());
        let cert_user = parts
            .extensions
            .get::<super::listener::CertName>()
            .and_then(|n| n.0.as_deref())
            .and_then(|n| tonic::metadata::AsciiMetadataValue::try_from(n).ok());
        Ok(Self { token, cert_user })
    }
}

impl Caller {
    /// `msg` as a gRPC request from this caller.
    fn request<T>(&self, msg: T) -> tonic::Request<T> {
        let mut request = super::api::with_token(msg, &self.token);
        if let Some(name) = &self.cert_user {
            request
                .metadata_mut()
                .insert(crate::auth::CERT_USER_HEADER, name.clone());
        }
        request
    }
}

/// A refusal as etcd's gateway shapes it.
struct ApiError(Status);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let code = self.0.code();
        let http = match code {
            Code::InvalidArgument | Code::OutOfRange | Code::FailedPrecondition => {
                StatusCode::BAD_REQUEST
            }
            Code::NotFound => StatusCode::NOT_FOUND,
            Code::Unauthenticated => StatusCode::UNAUTHORIZED,
            Code::PermissionDenied => StatusCode::FORBIDDEN,
            Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
            Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
            Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
            Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        let body = json!({
            "error": self.0.message(),
            "message": self.0.message(),
            "code": code as i32,
        });
        (
            http,
            [("content-type", "application/json")],
            body.to_string(),
        )
            .into_response()
    }
}

impl From<Status> for ApiError {
    fn from(s: Status) -> Self {
        ApiError(s)
    }
}

type Reply = Result<Response, ApiError>;

fn bad(msg: impl Into<String>) -> ApiError {
    ApiError(Status::invalid_argument(msg.into()))
}

/// The body as a JSON object (empty body: `{}`).
fn object(body: &Bytes) -> Result<Map<String, Value>, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Map::new());
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(bad("request body must be a JSON object")),
        Err(e) => Err(bad(format!("malformed JSON body: {e}"))),
    }
}

fn bytes(m: &Map<String, Value>, field: &str) -> Result<Vec<u8>, ApiError> {
    match m.get(field) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(s)) => base64::engine::general_purpose::STANDARD
            .decode(s)
            .map_err(|e| bad(format!("field {field}: not base64: {e}"))),
        Some(_) => Err(bad(format!("field {field}: expected a base64 string"))),
    }
}

fn int(m: &Map<String, Value>, field: &str) -> Result<i64, ApiError> {
    match m.get(field) {
        None | Some(Value::Null) => Ok(0),
        Some(Value::Number(n)) => n
            .as_i64()
            .ok_or_else(|| bad(format!("field {field}: not a 64-bit integer"))),
        Some(Value::String(s)) => s
            .parse()
            .map_err(|_| bad(format!("field {field}: not a 64-bit integer"))),
        Some(_) => Err(bad(format!("field {field}: expected an integer"))),
    }
}

fn flag(m: &Map<String, Value>, field: &str) -> Result<bool, ApiError> {
    match m.get(field) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err(bad(format!("field {field}: expected true or false"))),
    }
}

/// An enum field given by name or number.
fn enumeration(
    m: &Map<String, Value>,
    field: &str,
    from_name: impl Fn(&str) -> Option<i32>,
) -> Result<i32, ApiError> {
    match m.get(field) {
        None | Some(Value::Null) => Ok(0),
        Some(Value::Number(n)) => n
            .as_i64()
            .map(|v| v as i32)
            .ok_or_else(|| bad(format!("field {field}: bad value"))),
        Some(Value::String(s)) => {
            from_name(s).ok_or_else(|| bad(format!("field {field}: unknown value {s}")))
        }
        Some(_) => Err(bad(format!("field {field}: bad value"))),
    }
}

fn b64(b: &[u8]) -> Value {
    Value::String(base64::engine::general_purpose::STANDARD.encode(b))
}

fn s64(v: impl ToString) -> Value {
    Value::String(v.to_string())
}

fn header(h: Option<pb::ResponseHeader>) -> Value {
    let h = h.unwrap_or_default();
    json!({
        "cluster_id": s64(h.cluster_id),
        "member_id": s64(h.member_id),
        "revision": s64(h.revision),
        "raft_term": s64(h.raft_term),
    })
}

fn kv(kv: mvccpb::KeyValue) -> Value {
    json!({
        "key": b64(&kv.key),
        "create_revision": s64(kv.create_revision),
        "mod_revision": s64(kv.mod_revision),
        "version": s64(kv.version),
        "value": b64(&kv.value),
        "lease": s64(kv.lease),
    })
}

fn ok(v: Value) -> Reply {
    Ok(([("content-type", "application/json")], v.to_string()).into_response())
}

async fn range(State(gw): State<Gateway>, caller: Caller, body: Bytes) -> Reply {
    let m = object(&body)?;
    let req = pb::RangeRequest {
        key: bytes(&m, "key")?,
        range_end: bytes(&m, "range_end")?,
        limit: int(&m, "limit")?,
        revision: int(&m, "revision")?,
        sort_order: enumeration(&m, "sort_order", |s| {
            pb::range_request::SortOrder::from_str_name(s).map(|v| v as i32)
        })?,
        sort_target: enumeration(&m, "sort_target", |s| {
            pb::range_request::SortTarget::from_str_name(s).map(|v| v as i32)
        })?,
        serializable: flag(&m, "serializable")?,
        keys_only: flag(&m, "keys_only")?,
        count_only: flag(&m, "count_only")?,
        min_mod_revision: int(&m, "min_mod_revision")?,
        max_mod_revision: int(&m, "max_mod_revision")?,
        min_create_revision: int(&m, "min_create_revision")?,
        max_create_revision: int(&m, "max_create_revision")?,
    };
    let r = gw.kv.range(caller.request(req)).await?.into_inner();
    let mut out = json!({ "header": header(r.header), "count": s64(r.count) });
    if !r.kvs.is_empty() {
        out["kvs"] = Value::Array(r.kvs.into_iter().map(kv).collect());
    }
    if r.more {
        out["more"] = Value::Bool(true);
    }
    ok(out)
}

async fn put(State(gw): State<Gateway>, caller: Caller, body: Bytes) -> Reply {
    let m = object(&body)?;
    let req = pb::PutRequest {
        key: bytes(&m, "key")?,
        value: bytes(&m, "value")?,
        lease: int(&m, "lease")?,
        prev_kv: flag(&m, "prev_kv")?,
        ignore_value: flag(&m, "ignore_value")?,
        ignore_lease: flag(&m, "ignore_lease")?,
    };
    let r = gw.kv.put(caller.request(req)).await?.into_inner();
    let mut out = json!({ "header": header(r.header) });
    if let Some(p) = r.prev_kv {
        out["prev_kv"] = kv(p);
    }
    ok(out)
}

async fn delete_range(State(gw): State<Gateway>, caller: Caller, body: Bytes) -> Reply {
    let m = object(&body)?;
    let req = pb::DeleteRangeRequest {
        key: bytes(&m, "key")?,
        range_end: bytes(&m, "range_end")?,
        prev_kv: flag(&m, "prev_kv")?,
    };
    let r = gw.kv.delete_range(caller.request(req)).await?.into_inner();
    let mut out = json!({ "header": header(r.header), "deleted": s64(r.deleted) });
    if !r.prev_kvs.is_empty() {
        out["prev_kvs"] = Value::Array(r.prev_kvs.into_iter().map(kv).collect());
    }
    ok(out)
}

async fn compaction(State(gw): State<Gateway>, caller: Caller, body: Bytes) -> Reply {
    let m = object(&body)?;
    let req = pb::CompactionRequest {
        revision: int(&m, "revision")?,
        physical: flag(&m, "physical")?,
    };
    let r = gw.kv.compact(caller.request(req)).await?.into_inner();
    ok(json!({ "header": header(r.header) }))
}

async fn lease_grant(State(gw): State<Gateway>, caller: Caller, body: Bytes) -> Reply {
    let m = object(&body)?;
    let ttl = match m.get("TTL") {
        Some(_) => int(&m, "TTL")?,
        None => int(&m, "ttl")?,
    };
    let id = match m.get("ID") {
        Some(_) => int(&m, "ID")?,
        None => int(&m, "id")?,
    };
    let r = gw
        .lease
        .lease_grant(caller.request(pb::LeaseGrantRequest { ttl, id }))
        .await?
        .into_inner();
    ok(json!({ "header": header(r.header), "ID": s64(r.id), "TTL": s64(r.ttl) }))
}

async fn lease_revoke(State(gw): State<Gateway>, caller: Caller, body: Bytes) -> Reply {
    let m = object(&body)?;
    let id = match m.get("ID") {
        Some(_) => int(&m, "ID")?,
        None => int(&m, "id")?,
    };
    let r = gw
        .lease
        .lease_revoke(caller.request(pb::LeaseRevokeRequest { id }))
        .await?
        .into_inner();
    ok(json!({ "header": header(r.header) }))
}

async fn lease_leases(State(gw): State<Gateway>, caller: Caller, body: Bytes) -> Reply {
    object(&body)?;
    let r = gw
        .lease
        .lease_leases(caller.request(pb::LeaseLeasesRequest {}))
        .await?
        .into_inner();
    let leases: Vec<Value> = r
        .leases
        .into_iter()
        .map(|l| json!({ "ID": s64(l.id) }))
        .collect();
    ok(json!({ "header": header(r.header), "leases": leases }))
}

async fn status(State(gw): State<Gateway>, caller: Caller, body: Bytes) -> Reply {
    object(&body)?;
    let r = gw
        .maintenance
        .status(caller.request(pb::StatusRequest {}))
        .await?
        .into_inner();
    ok(json!({
        "header": header(r.header),
        "version": r.version,
        "dbSize": s64(r.db_size),
        "leader": s64(r.leader),
        "raftIndex": s64(r.raft_index),
        "raftTerm": s64(r.raft_term),
        "raftAppliedIndex": s64(r.raft_applied_index),
        "errors": r.errors,
        "dbSizeInUse": s64(r.db_size_in_use),
        "isLearner": r.is_learner,
    }))
}

async fn member_list(State(gw): State<Gateway>, caller: Caller, body: Bytes) -> Reply {
    let m = object(&body)?;
    let r = gw
        .cluster
        .member_list(caller.request(pb::MemberListRequest {
            linearizable: flag(&m, "linearizable")?,
        }))
        .await?
        .into_inner();
    let members: Vec<Value> = r
        .members
        .into_iter()
        .map(|m| {
            json!({
                "ID": s64(m.id),
                "name": m.name,
                "peerURLs": m.peer_ur_ls,
                "clientURLs": m.client_ur_ls,
                "isLearner": m.is_learner,
            })
        })
        .collect();
    ok(json!({ "header": header(r.header), "members": members }))
}

async fn authenticate(State(gw): State<Gateway>, caller: Caller, body: Bytes) -> Reply {
    let m = object(&body)?;
    let text = |field: &str| -> Result<String, ApiError> {
        match m.get(field) {
            None | Some(Value::Null) => Ok(String::new()),
            Some(Value::String(s)) => Ok(s.clone()),
            Some(_) => Err(bad(format!("{field}: expected a string"))),
        }
    };
    let req = pb::AuthenticateRequest {
        name: text("name")?,
        password: text("password")?,
    };
    let r = gw
        .auth
        .authenticate(caller.request(req))
        .await?
        .into_inner();
    ok(json!({ "header": header(r.header), "token": r.token }))
}
