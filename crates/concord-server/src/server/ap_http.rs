//! The AP buckets over HTTP JSON, on the client URL (`docs/ap.md`, "HTTP"):
//!
//! * `GET /v1/buckets`: every bucket's properties;
//! * `GET /v1/buckets/{b}`: one bucket's properties and the keys this member holds in it;
//! * `PUT /v1/buckets/{b}` with `{"n_val": n, "r": n|"quorum", "w": n|"quorum",
//!   "durability": "fsync"|"async", "siblings": bool}` (any subset): changes them
//!   cluster-wide;
//! * `GET`, `PUT` (`{"value": text}` or `{"value_base64": b64}`, optional `"ttl_ms"`) and
//!   `DELETE /v1/buckets/{b}/keys/{key}`, with `?r=` / `?w=` for one request's quorum.
//!
//! The key operations are the Redis `GET`, `SET [PX]` and `DEL` (same coordinator, same
//! rules); keys in the path are UTF-8 (percent-encoded as needed). A key request with a
//! `Concord-Session` header (empty to start, or a token) runs in that session and its
//! answer carries the session's new token in the same header (`crate::ap::session`).
//!
//! `GET` of a string answers its `DIGEST` (XXH3, 16 hex digits) as the `ETag`; a `PUT`
//! with `If-None-Match: *` writes only an absent key (`SET NX`), with `If-Match: *` only
//! a present one (`SET XX`), with `If-Match: "<digest>"` only over that value (`SET
//! IFDEQ`), with `If-None-Match: "<digest>"` only over another (`SET IFDNE`); a `DELETE`
//! with `If-Match` deletes only that value (`DELEX IFDEQ`). These are compare-and-sets
//! decided by Paxos among the key's replicas; one whose condition fails answers `412
//! Precondition Failed` and writes nothing.
//!
//! `POST /v1/buckets/{b}/keys/{key}` with `{"command": "SADD", "args": ["a", "b"]}`
//! (or `"args_base64"`) runs any Redis data command on the key (the key is its first
//! argument; `args` are the rest) with the same code and semantics as over RESP, and
//! answers `{"result": ...}`: RESP3's reply as JSON (a bulk string that is not UTF-8 as
//! `{"base64": ...}`, a map as an object when its keys are text). Error replies answer
//! `409` (`WRONGTYPE`), `503` (`TRYAGAIN`) or `400` (the others) with the Redis text.
//!
//! In a bucket that keeps siblings (`crate::ap::siblings`), as Riak does: `GET` answers
//! `200` with the value when there is one, `300 Multiple Choices` with
//! `{"siblings": [...]}` when there are several, `404` when none, each with the causal
//! context in a `Concord-Context` header; `PUT` and `DELETE` send it back in the same
//! header to replace what was read (without it, a `PUT` adds a sibling).

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Extension;
use axum::Router;
use base64::Engine as _;
use concord_core::crdt::{Kind, SetExpiry};
use serde_json::{json, Value};

use super::http::{query_param, JSON};
use crate::ap::siblings::{context_from_text, context_to_text};
use crate::ap::{
    Access, ApError, ApNode, BucketChange, BucketProps, Durability, Op, SessionId, SessionToken,
    BUCKETS,
};
use crate::redis::{commands, Session};
use crate::resp::Frame;
use concord_core::clock::VectorClock;

/// The header that carries a session token both ways.
pub const SESSION_HEADER: &str = "concord-session";
/// The header that carries the causal context of a key in siblings mode both ways.
pub const CONTEXT_HEADER: &str = "concord-context";

/// The causal context a request sends back (none: a blind write).
fn context_of(headers: &HeaderMap) -> Result<VectorClock, HttpError> {
    match headers.get(CONTEXT_HEADER) {
        None => Ok(VectorClock::new()),
        Some(h) => context_from_text(h.as_bytes())
            .map_err(|why| bad_request(format!("invalid {CONTEXT_HEADER} header: {why}"))),
    }
}

/// Sibling values as JSON: `[{"value": text} or {"value_base64": b64}, ...]`.
fn sibling_values<V: AsRef<[u8]>>(values: &[V]) -> Vec<Value> {
    let each = values.iter().map(|v| {
        let (field, v) = value_json(v.as_ref());
        json!({ field: v })
    });
    each.collect()
}

/// `GET` of a key in siblings mode.
async fn get_siblings(ap: &ApNode, at: Access, key: &str) -> Answer {
    let found = ap.sibling_get(at, key.as_bytes()).await?;
    let values = sibling_values(&found.values);
    let (status, mut body) = match values.len() {
        0 => (
            StatusCode::NOT_FOUND,
            json!({ "error": format!("key {key:?} not found") }),
        ),
        1 => (StatusCode::OK, values[0].clone()),
        _ => (StatusCode::MULTIPLE_CHOICES, json!({ "siblings": values })),
    };
    body["bucket"] = json!(at.bucket);
    body["key"] = json!(key);
    let mut response = (status, JSON, body.to_string()).into_response();
    // Base64url text is always a valid header value.
    if let Ok(h) = HeaderValue::from_str(&context_to_text(&found.context)) {
        response.headers_mut().insert(CONTEXT_HEADER, h);
    }
    Ok(response)
}

/// Largest request body read (a value plus its JSON).
const MAX_BODY: usize = 8 << 20;

/// The routes, to be merged with the other HTTP routes.
pub(crate) fn router(ap: ApNode) -> Router {
    Router::new()
        .route("/v1/buckets", get(list))
        .route("/v1/buckets/{bucket}", get(describe).put(change))
        .route(
            "/v1/buckets/{bucket}/keys/{*key}",
            get(get_key)
                .put(put_key)
                .delete(delete_key)
                .post(command)
                .layer(axum::middleware::from_fn_with_state(ap.clone(), session)),
        )
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .with_state(ap)
}

/// Runs a key request with a `Concord-Session` header in that session (a new one when
/// the header is empty) and answers the session's token after it, also on an error.
async fn session(State(ap): State<ApNode>, mut request: Request, next: Next) -> Response {
    let Some(header) = request.headers().get(SESSION_HEADER) else {
        return next.run(request).await;
    };
    let guard = ap.open_session();
    if !header.is_empty() {
        match SessionToken::decode(header.as_bytes()) {
            Ok(token) => guard.join(&token),
            Err(why) => {
                return bad_request(format!("invalid {SESSION_HEADER} header: {why}"))
                    .into_response()
            }
        }
    }
    request.extensions_mut().insert(guard.id());
    let mut response = next.run(request).await;
    // Base64url text is always a valid header value.
    if let Ok(token) = HeaderValue::from_str(&guard.token().encode()) {
        response.headers_mut().insert(SESSION_HEADER, token);
    }
    response
}

fn reply(body: Value) -> Response {
    (StatusCode::OK, JSON, body.to_string()).into_response()
}

/// A refused request: its status and `{"error": message}`.
#[derive(Debug)]
struct HttpError(StatusCode, String);

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        (self.0, JSON, json!({ "error": self.1 }).to_string()).into_response()
    }
}

impl From<ApError> for HttpError {
    fn from(e: ApError) -> Self {
        let status = match &e {
            ApError::Invalid(_) => StatusCode::BAD_REQUEST,
            ApError::Refused(_) => StatusCode::CONFLICT,
            ApError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApError::Store(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        HttpError(status, e.to_string())
    }
}

fn bad_request(message: String) -> HttpError {
    HttpError(StatusCode::BAD_REQUEST, message)
}

type Answer = Result<Response, HttpError>;

/// A bucket's properties as JSON (a quorum left to its default is `"quorum"`, with the
/// number in force beside it).
pub(crate) fn props_json(bucket: u8, p: &BucketProps) -> Value {
    let quorum = |q: Option<u32>| q.map_or_else(|| json!("quorum"), |q| json!(q));
    json!({
        "bucket": bucket,
        "n_val": p.n_val,
        "r": quorum(p.r),
        "w": quorum(p.w),
        "r_in_force": p.r(),
        "w_in_force": p.w(),
        "durability": p.durability.as_str(),
        "siblings": p.siblings,
    })
}

fn bucket_number(text: &str) -> Result<u8, HttpError> {
    text.parse::<u8>()
        .ok()
        .filter(|b| u32::from(*b) < BUCKETS)
        .ok_or_else(|| {
            HttpError(
                StatusCode::NOT_FOUND,
                format!(
                    "bucket {text:?} does not exist (buckets are 0 to {})",
                    BUCKETS - 1
                ),
            )
        })
}

async fn list(State(ap): State<ApNode>) -> Response {
    let all: Vec<Value> = (0..BUCKETS as u8)
        .map(|b| props_json(b, &ap.bucket(b)))
        .collect();
    reply(json!({ "buckets": all }))
}

async fn describe(State(ap): State<ApNode>, Path(bucket): Path<String>) -> Answer {
    let b = bucket_number(&bucket)?;
    let mut body = props_json(b, &ap.bucket(b));
    body["keys_held_here"] = json!(ap.keys_held(b).await?);
    Ok(reply(body))
}

/// The change a `PUT /v1/buckets/{b}` body asks for.
fn parse_change(body: &[u8]) -> Result<BucketChange, String> {
    let v: Value = serde_json::from_slice(body).map_err(|e| format!("invalid JSON: {e}"))?;
    let obj = v.as_object().ok_or("expected a JSON object")?;
    let number = |name: &str, x: &Value| {
        x.as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .ok_or_else(|| format!("{name} must be a non-negative integer"))
    };
    let quorum = |name: &str, x: &Value| {
        if x.as_str() == Some("quorum") {
            Ok(None)
        } else {
            number(name, x)
                .map(Some)
                .map_err(|_| format!("{name} must be an integer or \"quorum\""))
        }
    };
    let mut change = BucketChange::default();
    for (name, x) in obj {
        match name.as_str() {
            "n_val" => change.n_val = Some(number(name, x)?),
            "r" => change.r = Some(quorum(name, x)?),
            "w" => change.w = Some(quorum(name, x)?),
            "durability" => {
                change.durability = Some(
                    x.as_str()
                        .and_then(Durability::parse)
                        .ok_or("durability must be \"fsync\" or \"async\"")?,
                )
            }
            "siblings" => {
                change.siblings = Some(x.as_bool().ok_or("siblings must be true or false")?)
            }
            // Read-only fields of a described bucket may be sent back unchanged.
            "bucket" | "r_in_force" | "w_in_force" | "keys_held_here" => {}
            other => return Err(format!("unknown property {other:?}")),
        }
    }
    Ok(change)
}

async fn change(State(ap): State<ApNode>, Path(bucket): Path<String>, body: Bytes) -> Answer {
    let b = bucket_number(&bucket)?;
    let change = parse_change(&body).map_err(bad_request)?;
    let props = ap.change_bucket(b, change).await?;
    Ok(reply(props_json(b, &props)))
}

/// The bucket, the request's own quorums (`?r=`, `?w=`), checked against the bucket, and
/// its session.
fn access(
    ap: &ApNode,
    bucket: &str,
    q: &Option<String>,
    session: Option<Extension<SessionId>>,
) -> Result<Access, HttpError> {
    let b = bucket_number(bucket)?;
    let n = ap.bucket(b).n_val;
    let quorum = |name: &str| match query_param(q, name) {
        None => Ok(None),
        Some(v) => match v.parse::<u32>() {
            Ok(x) if (1..=n).contains(&x) => Ok(Some(x)),
            _ => Err(bad_request(format!(
                "{name} must be an integer from 1 to the bucket's n_val ({n})"
            ))),
        },
    };
    Ok(Access {
        bucket: b,
        r: quorum("r")?,
        w: quorum("w")?,
        session: session.map(|Extension(id)| id),
    })
}

/// A value as JSON: text when it is UTF-8, else base64.
fn value_json(v: &[u8]) -> (&'static str, Value) {
    match std::str::from_utf8(v) {
        Ok(text) => ("value", json!(text)),
        Err(_) => (
            "value_base64",
            json!(base64::engine::general_purpose::STANDARD.encode(v)),
        ),
    }
}

async fn get_key(
    State(ap): State<ApNode>,
    Path((bucket, key)): Path<(String, String)>,
    RawQuery(q): RawQuery,
    session: Option<Extension<SessionId>>,
) -> Answer {
    let at = access(&ap, &bucket, &q, session)?;
    if ap.keeps_siblings(at.bucket) {
        return get_siblings(&ap, at, &key).await;
    }
    let state = ap.read(at, key.as_bytes()).await?;
    let now = ap.now_ms();
    let Some((state, kind)) = state.and_then(|s| s.kind(now).map(|k| (s, k))) else {
        return Err(HttpError(
            StatusCode::NOT_FOUND,
            format!("key {key:?} not found"),
        ));
    };
    let mut body = json!({ "bucket": at.bucket, "key": key });
    let mut etag = None;
    match kind {
        Kind::String => {
            let value = state.get(now).unwrap_or_default();
            let (field, v) = value_json(&value);
            body["type"] = json!("string");
            body[field] = v;
            let digest = commands::digest(&value);
            etag = HeaderValue::from_str(&format!("\"{digest}\"")).ok();
            body["digest"] = json!(digest);
        }
        Kind::Set => {
            // Members as text when every one is UTF-8, else all as base64.
            let members = state.members(now).unwrap_or_default();
            let text: Option<Vec<&str>> = members
                .iter()
                .map(|m| std::str::from_utf8(m).ok())
                .collect();
            body["type"] = json!("set");
            match text {
                Some(text) => body["members"] = json!(text),
                None => {
                    let b64 = base64::engine::general_purpose::STANDARD;
                    let encoded: Vec<String> = members.iter().map(|m| b64.encode(m)).collect();
                    body["members_base64"] = json!(encoded);
                }
            }
        }
        Kind::Hash => {
            // Fields as a text object when every name and value is UTF-8, else as base64
            // pairs.
            let fields = state.hfields(now).unwrap_or_default();
            let text: Option<serde_json::Map<String, Value>> = fields
                .iter()
                .map(|(f, v)| {
                    let f = std::str::from_utf8(f).ok()?;
                    let v = std::str::from_utf8(v).ok()?;
                    Some((f.to_string(), json!(v)))
                })
                .collect();
            body["type"] = json!("hash");
            match text {
                Some(text) => body["fields"] = Value::Object(text),
                None => {
                    let b64 = base64::engine::general_purpose::STANDARD;
                    let encoded: Vec<[String; 2]> = fields
                        .iter()
                        .map(|(f, v)| [b64.encode(f), b64.encode(v)])
                        .collect();
                    body["fields_base64"] = json!(encoded);
                }
            }
        }
        // Left from when the bucket kept siblings.
        Kind::Siblings => {
            body["type"] = json!("siblings");
            body["siblings"] = json!(sibling_values(&state.siblings().0));
        }
    }
    if let Some(at) = state.expires_at() {
        body["ttl_ms"] = json!(at.saturating_sub(now));
    }
    let mut response = reply(body);
    if let Some(etag) = etag {
        response
            .headers_mut()
            .insert(axum::http::header::ETAG, etag);
    }
    Ok(response)
}

/// The value and expiry a `PUT .../keys/{key}` body gives.
fn parse_value(body: &[u8], now_ms: u64) -> Result<(Vec<u8>, SetExpiry), String> {
    let v: Value = serde_json::from_slice(body).map_err(|e| format!("invalid JSON: {e}"))?;
    let value = match (v.get("value"), v.get("value_base64")) {
        (Some(Value::String(s)), None) => s.as_bytes().to_vec(),
        (None, Some(Value::String(s))) => base64::engine::general_purpose::STANDARD
            .decode(s)
            .map_err(|e| format!("value_base64 is not base64: {e}"))?,
        _ => return Err("expected exactly one of \"value\" or \"value_base64\" (a string)".into()),
    };
    let expiry = match v.get("ttl_ms") {
        None | Some(Value::Null) => SetExpiry::Clear,
        Some(t) => match t.as_u64().filter(|t| *t > 0) {
            Some(t) => SetExpiry::At(now_ms.saturating_add(t)),
            None => return Err("ttl_ms must be a positive integer".into()),
        },
    };
    Ok((value, expiry))
}

async fn put_key(
    State(ap): State<ApNode>,
    Path((bucket, key)): Path<(String, String)>,
    RawQuery(q): RawQuery,
    session: Option<Extension<SessionId>>,
    headers: HeaderMap,
    body: Bytes,
) -> Answer {
    let at = access(&ap, &bucket, &q, session)?;
    let (value, expiry) = parse_value(&body, ap.now_ms()).map_err(bad_request)?;
    let condition = precondition(&headers)?;
    if ap.keeps_siblings(at.bucket) {
        if condition.is_some() {
            return Err(siblings_take_context());
        }
        if expiry != SetExpiry::Clear {
            return Err(bad_request(
                "keys of a bucket that keeps siblings do not expire".into(),
            ));
        }
        ap.sibling_put(at, key.as_bytes(), context_of(&headers)?, Some(value))
            .await?;
        return Ok(reply(
            json!({ "bucket": at.bucket, "key": key, "stored": true }),
        ));
    }
    if let Some(condition) = condition {
        let mut set = vec![
            Bytes::from_static(b"SET"),
            Bytes::from(key.clone().into_bytes()),
            Bytes::from(value),
        ];
        if let SetExpiry::At(t) = expiry {
            set.extend([Bytes::from_static(b"PXAT"), Bytes::from(t.to_string())]);
        }
        set.extend(condition.set_options());
        let written = run_command(&ap, at, set).await? != Frame::Null;
        return conditional_answer(at.bucket, &key, "stored", written);
    }
    ap.write(at, key.as_bytes(), Op::Set { value, expiry })
        .await?;
    Ok(reply(
        json!({ "bucket": at.bucket, "key": key, "stored": true }),
    ))
}

/// The condition of a `PUT` or `DELETE` (`If-Match`, `If-None-Match`).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Precondition {
    /// `If-None-Match: *`.
    Absent,
    /// `If-Match: *`.
    Present,
    /// `If-Match: "digest"`.
    Is(String),
    /// `If-None-Match: "digest"`.
    IsNot(String),
}

impl Precondition {
    /// The options of `SET` that test it.
    fn set_options(&self) -> Vec<Bytes> {
        let (option, digest): (&'static [u8], Option<&str>) = match self {
            Precondition::Absent => (b"NX", None),
            Precondition::Present => (b"XX", None),
            Precondition::Is(d) => (b"IFDEQ", Some(d)),
            Precondition::IsNot(d) => (b"IFDNE", Some(d)),
        };
        let mut options = vec![Bytes::from_static(option)];
        options.extend(digest.map(|d| Bytes::from(d.to_string())));
        options
    }
}

/// The request's `If-Match` or `If-None-Match` (one of them, with `*` or one strong ETag:
/// a digest as `GET` answers it).
fn precondition(headers: &HeaderMap) -> Result<Option<Precondition>, HttpError> {
    let header = |name: axum::http::HeaderName| -> Result<Option<String>, HttpError> {
        let Some(h) = headers.get(&name) else {
            return Ok(None);
        };
        let text = h
            .to_str()
            .map_err(|_| bad_request(format!("{name} is not text")))?
            .trim();
        if text == "*" {
            return Ok(Some(text.into()));
        }
        match text.strip_prefix('"').and_then(|t| t.strip_suffix('"')) {
            Some(d) if d.len() == 16 && d.bytes().all(|b| b.is_ascii_hexdigit()) => {
                Ok(Some(d.to_ascii_lowercase()))
            }
            _ => Err(bad_request(format!(
                "{name} must be * or one ETag as GET answers it (a quoted 16-digit digest)"
            ))),
        }
    };
    let matching = header(axum::http::header::IF_MATCH)?;
    let none_matching = header(axum::http::header::IF_NONE_MATCH)?;
    Ok(match (matching, none_matching) {
        (None, None) => None,
        (Some(m), None) if m == "*" => Some(Precondition::Present),
        (Some(m), None) => Some(Precondition::Is(m)),
        (None, Some(n)) if n == "*" => Some(Precondition::Absent),
        (None, Some(n)) => Some(Precondition::IsNot(n)),
        (Some(_), Some(_)) => {
            return Err(bad_request(
                "give If-Match or If-None-Match, not both".into(),
            ))
        }
    })
}

fn siblings_take_context() -> HttpError {
    bad_request(format!(
        "a bucket that keeps siblings takes the causal context ({CONTEXT_HEADER}), not \
         If-Match or If-None-Match"
    ))
}

/// The answer of a conditional `PUT` or `DELETE`: 200, or 412 when the condition failed.
fn conditional_answer(bucket: u8, key: &str, done: &str, written: bool) -> Answer {
    let body = json!({ "bucket": bucket, "key": key, done: written });
    if written {
        return Ok(reply(body));
    }
    let mut body = body;
    body["error"] = json!("precondition failed: the key's current value did not match");
    Ok((StatusCode::PRECONDITION_FAILED, JSON, body.to_string()).into_response())
}

/// Runs one Redis command (`args`, name first) as a RESP3 client in `at` would; an error
/// reply is an [`HttpError`] (409 for `WRONGTYPE`, 503 for `TRYAGAIN`, else 400).
async fn run_command(ap: &ApNode, at: Access, args: Vec<Bytes>) -> Result<Frame, HttpError> {
    let mut session = Session::detached(at);
    match commands::run(ap, &mut session, args).await {
        Frame::Error(text) | Frame::BulkError(text) => {
            let text = String::from_utf8_lossy(&text).into_owned();
            let status = if text.starts_with("WRONGTYPE") {
                StatusCode::CONFLICT
            } else if text.starts_with("TRYAGAIN") {
                StatusCode::SERVICE_UNAVAILABLE
            } else {
                StatusCode::BAD_REQUEST
            };
            Err(HttpError(status, text))
        }
        reply => Ok(reply),
    }
}

/// A reply as JSON (see the module's documentation).
fn frame_json(f: Frame) -> Value {
    let text = |b: &[u8]| match std::str::from_utf8(b) {
        Ok(t) => json!(t),
        Err(_) => json!({ "base64": base64::engine::general_purpose::STANDARD.encode(b) }),
    };
    match f {
        Frame::Simple(b) | Frame::Bulk(b) | Frame::BigNumber(b) => text(&b),
        Frame::Verbatim { text: b, .. } => text(&b),
        Frame::Error(b) | Frame::BulkError(b) => json!({ "error": String::from_utf8_lossy(&b) }),
        Frame::Integer(i) => json!(i),
        Frame::Double(d) => json!(d),
        Frame::Boolean(b) => json!(b),
        Frame::Null | Frame::NullBulk | Frame::NullArray => Value::Null,
        Frame::Array(items) | Frame::Set(items) | Frame::Push(items) => {
            Value::Array(items.into_iter().map(frame_json).collect())
        }
        Frame::Map(pairs) => {
            let keys: Option<Vec<String>> = pairs
                .iter()
                .map(|(k, _)| match k {
                    Frame::Simple(b) | Frame::Bulk(b) => {
                        std::str::from_utf8(b).ok().map(str::to_string)
                    }
                    _ => None,
                })
                .collect();
            match keys {
                Some(keys) => Value::Object(
                    keys.into_iter()
                        .zip(pairs)
                        .map(|(k, (_, v))| (k, frame_json(v)))
                        .collect(),
                ),
                None => Value::Array(
                    pairs
                        .into_iter()
                        .map(|(k, v)| json!([frame_json(k), frame_json(v)]))
                        .collect(),
                ),
            }
        }
        Frame::Attribute { data, .. } => frame_json(*data),
    }
}

/// The command and arguments a `POST .../keys/{key}` body gives.
fn parse_command(body: &[u8]) -> Result<(String, Vec<Bytes>), String> {
    let v: Value = serde_json::from_slice(body).map_err(|e| format!("invalid JSON: {e}"))?;
    let command = v
        .get("command")
        .and_then(Value::as_str)
        .ok_or("expected \"command\": a Redis command name")?
        .to_string();
    let strings = |name: &str| -> Result<Option<Vec<String>>, String> {
        match v.get(name) {
            None => Ok(None),
            Some(Value::Array(a)) => a
                .iter()
                .map(|x| x.as_str().map(str::to_string))
                .collect::<Option<Vec<_>>>()
                .map(Some)
                .ok_or_else(|| format!("{name} must be an array of strings")),
            Some(_) => Err(format!("{name} must be an array of strings")),
        }
    };
    let args = match (strings("args")?, strings("args_base64")?) {
        (Some(a), None) => a.into_iter().map(|a| Bytes::from(a.into_bytes())).collect(),
        (None, Some(a)) => a
            .iter()
            .map(|a| {
                base64::engine::general_purpose::STANDARD
                    .decode(a)
                    .map(Bytes::from)
                    .map_err(|e| format!("args_base64 holds something not base64: {e}"))
            })
            .collect::<Result<_, _>>()?,
        (None, None) => Vec::new(),
        (Some(_), Some(_)) => return Err("give args or args_base64, not both".into()),
    };
    Ok((command, args))
}

/// `POST .../keys/{key}`: one Redis data command on the key.
async fn command(
    State(ap): State<ApNode>,
    Path((bucket, key)): Path<(String, String)>,
    RawQuery(q): RawQuery,
    session: Option<Extension<SessionId>>,
    body: Bytes,
) -> Answer {
    let at = access(&ap, &bucket, &q, session)?;
    let (name, args) = parse_command(&body).map_err(bad_request)?;
    if !commands::keyed(&name.to_ascii_lowercase()) {
        return Err(bad_request(format!(
            "{name:?} is not a Redis data command on a key (connection, keyspace-wide and \
             transaction commands are served over RESP only)"
        )));
    }
    let mut request = Vec::with_capacity(args.len() + 2);
    request.push(Bytes::from(name.into_bytes()));
    request.push(Bytes::from(key.clone().into_bytes()));
    request.extend(args);
    let result = run_command(&ap, at, request).await?;
    Ok(reply(
        json!({ "bucket": at.bucket, "key": key, "result": frame_json(result) }),
    ))
}

async fn delete_key(
    State(ap): State<ApNode>,
    Path((bucket, key)): Path<(String, String)>,
    RawQuery(q): RawQuery,
    session: Option<Extension<SessionId>>,
    headers: HeaderMap,
) -> Answer {
    let at = access(&ap, &bucket, &q, session)?;
    let condition = precondition(&headers)?;
    if ap.keeps_siblings(at.bucket) {
        if condition.is_some() {
            return Err(siblings_take_context());
        }
        ap.sibling_put(at, key.as_bytes(), context_of(&headers)?, None)
            .await?;
        return Ok(reply(
            json!({ "bucket": at.bucket, "key": key, "deleted": true }),
        ));
    }
    match &condition {
        None | Some(Precondition::Present) => {}
        Some(Precondition::Is(digest)) => {
            let delex = vec![
                Bytes::from_static(b"DELEX"),
                Bytes::from(key.clone().into_bytes()),
                Bytes::from_static(b"IFDEQ"),
                Bytes::from(digest.clone()),
            ];
            let deleted = run_command(&ap, at, delex).await? == Frame::Integer(1);
            return conditional_answer(at.bucket, &key, "deleted", deleted);
        }
        Some(_) => {
            return Err(bad_request(
                "DELETE takes If-Match (* or an ETag), not If-None-Match".into(),
            ))
        }
    }
    let now = ap.now_ms();
    let state = ap.read(at, key.as_bytes()).await?;
    let existed = state.is_some_and(|s| s.exists(now));
    if !existed && condition.is_some() {
        return conditional_answer(at.bucket, &key, "deleted", false);
    }
    if existed {
        ap.write(at, key.as_bytes(), Op::Del).await?;
    }
    Ok(reply(
        json!({ "bucket": at.bucket, "key": key, "deleted": existed }),
    ))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use axum::body::Body;
    use axum::http::Request;
    use concord_raft::NodeId;
    use tower::ServiceExt;

    use super::*;
    use crate::ap::ApConfig;

    /// A request in the session `session` (a `PUT` writes "v"): the status and headers.
    async fn call(
        app: &Router,
        method: &str,
        path: &str,
        session: Option<&str>,
    ) -> (StatusCode, HeaderMap) {
        let headers: Vec<(&str, &str)> = session.map(|t| (SESSION_HEADER, t)).into_iter().collect();
        let body = (method == "PUT").then(|| json!({ "value": "v" }));
        let (status, headers, _) = send(app, method, path, &headers, body).await;
        (status, headers)
    }

    fn token((_, headers): &(StatusCode, HeaderMap)) -> Option<SessionToken> {
        let header = headers.get(SESSION_HEADER)?;
        Some(SessionToken::decode(header.as_bytes()).unwrap())
    }

    /// `method path` with `headers` and a JSON `body`: the status, headers and JSON body.
    async fn send(
        app: &Router,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<Value>,
    ) -> (StatusCode, HeaderMap, Value) {
        let mut request = Request::builder().method(method).uri(path);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let body = body.map_or_else(Body::empty, |b| Body::from(b.to_string()));
        let response = app
            .clone()
            .oneshot(request.body(body).unwrap())
            .await
            .unwrap();
        let (parts, body) = response.into_parts();
        let bytes = axum::body::to_bytes(body, 1 << 20).await.unwrap();
        let json = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        (parts.status, parts.headers, json)
    }

    fn one_member() -> (tempfile::TempDir, Router) {
        let dir = tempfile::tempdir().unwrap();
        let ap = ApNode::open(NodeId(1), 7, dir.path(), ApConfig::default()).unwrap();
        ap.set_members(&BTreeMap::from([(NodeId(1), "http://127.0.0.1:1".into())]));
        (dir, router(ap))
    }

    #[tokio::test]
    async fn conditional_puts_and_deletes_follow_the_etag() {
        let (_dir, app) = one_member();
        let path = "/v1/buckets/0/keys/k";
        let put = |v: &str| Some(json!({ "value": v }));
        // If-None-Match: * creates only an absent key.
        let (status, _, _) = send(&app, "PUT", path, &[("if-none-match", "*")], put("a")).await;
        assert_eq!(status, StatusCode::OK);
        let (status, _, body) = send(&app, "PUT", path, &[("if-none-match", "*")], put("b")).await;
        assert_eq!(status, StatusCode::PRECONDITION_FAILED);
        assert_eq!(body["stored"], false);
        // GET answers the value's digest as the ETag.
        let (status, headers, body) = send(&app, "GET", path, &[], None).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["value"], "a");
        let etag = headers["etag"].to_str().unwrap().to_string();
        assert_eq!(etag, format!("\"{}\"", commands::digest(b"a")));
        // If-Match with that ETag writes; the old ETag then no longer matches.
        let (status, _, _) = send(&app, "PUT", path, &[("if-match", &etag)], put("c")).await;
        assert_eq!(status, StatusCode::OK);
        let (status, _, _) = send(&app, "PUT", path, &[("if-match", &etag)], put("d")).await;
        assert_eq!(status, StatusCode::PRECONDITION_FAILED);
        let (status, _, _) = send(&app, "PUT", path, &[("if-none-match", &etag)], put("e")).await;
        assert_eq!(status, StatusCode::OK);
        let (_, _, body) = send(&app, "GET", path, &[], None).await;
        assert_eq!(body["value"], "e");
        // DELETE with a stale ETag deletes nothing; with the current one it deletes.
        let (status, _, _) = send(&app, "DELETE", path, &[("if-match", &etag)], None).await;
        assert_eq!(status, StatusCode::PRECONDITION_FAILED);
        let current = format!("\"{}\"", commands::digest(b"e"));
        let (status, _, body) = send(&app, "DELETE", path, &[("if-match", &current)], None).await;
        assert_eq!(
            (status, body["deleted"].clone()),
            (StatusCode::OK, json!(true))
        );
        // If-Match: * needs a present key.
        let (status, _, _) = send(&app, "PUT", path, &[("if-match", "*")], put("f")).await;
        assert_eq!(status, StatusCode::PRECONDITION_FAILED);
        let (status, _, _) = send(&app, "DELETE", path, &[("if-match", "*")], None).await;
        assert_eq!(status, StatusCode::PRECONDITION_FAILED);
        // Malformed conditions are refused.
        for (name, value) in [("if-match", "W/\"x\""), ("if-none-match", "\"short\"")] {
            let (status, _, _) = send(&app, "PUT", path, &[(name, value)], put("g")).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{name}: {value}");
        }
        let both = [("if-match", "*"), ("if-none-match", "*")];
        let (status, _, _) = send(&app, "PUT", path, &both, put("g")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
    }

    #[tokio::test]
    async fn the_command_endpoint_runs_redis_data_commands_on_the_key() {
        let (_dir, app) = one_member();
        let path = "/v1/buckets/0/keys/s";
        let run = |command: &str, args: &[&str]| Some(json!({ "command": command, "args": args }));
        let (status, _, body) = send(&app, "POST", path, &[], run("SADD", &["a", "b", "a"])).await;
        assert_eq!((status, body["result"].clone()), (StatusCode::OK, json!(2)));
        let (_, _, body) = send(&app, "POST", path, &[], run("smembers", &[])).await;
        let mut members: Vec<String> = serde_json::from_value(body["result"].clone()).unwrap();
        members.sort();
        assert_eq!(members, ["a", "b"]);
        // Type errors answer 409 with Redis's text and change nothing.
        let (status, _, body) = send(&app, "POST", path, &[], run("HSET", &["f", "v"])).await;
        assert_eq!(status, StatusCode::CONFLICT);
        assert!(body["error"].as_str().unwrap().starts_with("WRONGTYPE"));
        // A hash reads back as an object (RESP3 map); bytes that are not UTF-8 as base64.
        let h = "/v1/buckets/0/keys/h";
        let bytes = json!({ "command": "HSET", "args_base64": ["Zg==", "/w=="] });
        let (status, _, _) = send(&app, "POST", h, &[], Some(bytes)).await;
        assert_eq!(status, StatusCode::OK);
        let (_, _, body) = send(&app, "POST", h, &[], run("HGETALL", &[])).await;
        assert_eq!(body["result"], json!({ "f": { "base64": "/w==" } }));
        // Compare-and-set: SET NX twice, then a nil result.
        let c = "/v1/buckets/0/keys/c";
        let (_, _, body) = send(&app, "POST", c, &[], run("SET", &["1", "NX"])).await;
        assert_eq!(body["result"], "OK");
        let (_, _, body) = send(&app, "POST", c, &[], run("SET", &["2", "NX", "GET"])).await;
        assert_eq!(body["result"], "1");
        let (_, _, body) = send(&app, "POST", c, &[], run("INCRBY", &["5"])).await;
        assert_eq!(body["result"], 6);
        // Commands that are not on one key, and bad bodies, are refused.
        for (body, why) in [
            (run("FLUSHALL", &[]), "keyspace-wide"),
            (run("MULTI", &[]), "transaction"),
            (run("NOSUCH", &[]), "unknown"),
            (Some(json!({ "args": ["x"] })), "no command"),
            (
                Some(json!({ "command": "GET", "args": [1] })),
                "not strings",
            ),
            (
                Some(json!({ "command": "GET", "args_base64": ["!"] })),
                "not base64",
            ),
        ] {
            let (status, _, _) = send(&app, "POST", c, &[], body).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{why}");
        }
        let (status, _, body) = send(&app, "POST", c, &[], run("GET", &["extra"])).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(body["error"]
            .as_str()
            .unwrap()
            .contains("wrong number of arguments"));
    }

    #[tokio::test]
    async fn the_session_header_starts_carries_and_answers_a_token() {
        let (_dir, app) = one_member();
        let path = "/v1/buckets/0/keys/k";
        // Without the header, no session and no token.
        let plain = call(&app, "GET", path, None).await;
        assert_eq!(plain.0, StatusCode::NOT_FOUND);
        assert!(token(&plain).is_none());
        // An empty header starts one; the write is in the answer's token.
        let put = call(&app, "PUT", path, Some("")).await;
        assert_eq!(put.0, StatusCode::OK);
        let after_put = token(&put).expect("a token");
        assert!(after_put.floor(0, b"k").is_some());
        // The token comes back with a read, also of a key not found.
        let text = after_put.encode();
        let got = call(&app, "GET", "/v1/buckets/0/keys/absent", Some(&text)).await;
        assert_eq!(got.0, StatusCode::NOT_FOUND);
        assert_eq!(token(&got), Some(after_put));
        // A malformed token is refused, not ignored.
        let bad = call(&app, "GET", path, Some("not a token")).await;
        assert_eq!(bad.0, StatusCode::BAD_REQUEST);
    }
}
