//! The Redis commands Concord answers, with Redis 7's replies and error texts. Data
//! commands go through the AP coordinator ([`ApNode::read`], [`ApNode::write`]); a request
//! that cannot reach its quorum answers `TRYAGAIN` with the reason (for a write: it may or
//! may not have been stored).
//!
//! Commands that read a value and write a new one from it (`APPEND`, `SETRANGE`,
//! `INCRBYFLOAT`, `GETDEL`, `GETEX`, the expire options) read at R, then write at W a
//! state that supersedes what they read ([`ApNode::write_after`]); a write by another
//! client between the two may be overwritten, as `docs/ap.md` says. Inside a one-key
//! `MULTI`/`EXEC` (`multi.rs`), `APPEND` and `GETDEL` are atomic: the transaction is one
//! compare-and-set through Paxos.

use bytes::Bytes;
use concord_core::crdt::{Expiry, Kind, RedisValue, SetExpiry, Stamp};
use concord_raft::NodeId;

use super::sets::wrong_type;
use super::{admin, hashes, keyspace, multi, sets, Session};
use crate::ap::cas::Decision;
use crate::ap::siblings::{context_from_text, context_to_text};
use crate::ap::{Access, ApError, ApNode, Op};
use crate::resp::Frame;

pub(crate) const NOT_INTEGER: &str = "ERR value is not an integer or out of range";
pub(crate) const SYNTAX: &str = "ERR syntax error";
pub(crate) const NOT_FLOAT: &str = "ERR value is not a valid float";
const TOO_BIG: &str = "ERR string exceeds maximum allowed size (proto-max-bulk-len)";
/// Redis's `proto-max-bulk-len`: the largest string value.
pub const MAX_STRING: usize = 512 << 20;

fn arity_message(cmd: &str) -> String {
    format!("ERR wrong number of arguments for '{cmd}' command")
}

pub(crate) fn wrong_arity(cmd: &str) -> Frame {
    Frame::error(arity_message(cmd))
}

/// An error reply quoting client bytes as Redis's `addReplyErrorFormat` does: each part
/// as a C string (up to its first NUL), line breaks at the end trimmed and the others
/// turned into spaces.
fn error_bytes(parts: &[&[u8]]) -> Frame {
    let mut text: Vec<u8> = Vec::new();
    for p in parts {
        text.extend(p.iter().take_while(|b| **b != 0));
    }
    while text.last().is_some_and(|b| *b == b'\r' || *b == b'\n') {
        text.pop();
    }
    for b in &mut text {
        if *b == b'\r' || *b == b'\n' {
            *b = b' ';
        }
    }
    Frame::error(text)
}

/// The first 128 bytes of `b` (Redis's `%.128s`).
fn head(b: &[u8]) -> &[u8] {
    &b[..b.len().min(128)]
}

fn unknown(name: &[u8], args: &[Bytes]) -> Frame {
    let mut quoted = Vec::new();
    // Arguments are quoted while the quote is shorter than 128 bytes, each cut to what is
    // left of the 128 and at its first NUL (Redis's `'%.*s' `).
    for a in args {
        if quoted.len() >= 128 {
            break;
        }
        let a = &a[..a.iter().position(|b| *b == 0).unwrap_or(a.len())];
        quoted.extend_from_slice(b"'");
        quoted.extend_from_slice(&a[..a.len().min(128 - quoted.len() + 1)]);
        quoted.extend_from_slice(b"' ");
    }
    error_bytes(&[
        b"ERR unknown command '",
        head(name),
        b"', with args beginning with: ",
        &quoted,
    ])
}

pub(crate) fn ap_error(e: ApError) -> Frame {
    match e {
        ApError::Refused(text) => Frame::error(text),
        ApError::Unavailable(why) => Frame::error(format!("TRYAGAIN {why}")),
        ApError::Store(why) => Frame::error(format!("ERR {why}")),
        ApError::Invalid(why) => Frame::error(format!("ERR {why}")),
    }
}

pub(crate) fn integer(arg: &[u8]) -> Option<i64> {
    concord_core::crdt::parse_integer(arg)
}

/// Connection commands (they name no key).
const CONNECTION: &[&str] = &[
    "ping",
    "echo",
    "quit",
    "reset",
    "select",
    "hello",
    "client",
    "command",
    "config",
    "info",
    "time",
    "auth",
    "concord.quorum",
    "concord.bucket",
    "concord.session",
];

/// Keyspace-wide commands.
const KEYSPACE: &[&str] = &["keys", "scan", "dbsize", "randomkey", "flushdb", "flushall"];

/// Transaction commands.
const TRANSACTION: &[&str] = &["multi", "exec", "discard", "watch", "unwatch"];

/// Whether a bucket that keeps siblings answers `cmd`: connection and keyspace-wide
/// commands, the sibling commands, and those that read no value (the others read or
/// write values that are not lists of siblings).
fn any_bucket(cmd: &str) -> bool {
    const ALSO: &[&str] = &[
        "concord.sget",
        "concord.sput",
        "concord.sdel",
        "exists",
        "type",
        "exec",
        "discard",
        "unwatch",
    ];
    CONNECTION.contains(&cmd) || KEYSPACE.contains(&cmd) || ALSO.contains(&cmd)
}

/// Whether `cmd` (lower case) is a data command whose first argument is the key it acts
/// on (other keys may follow): what the HTTP command endpoint runs.
pub fn keyed(cmd: &str) -> bool {
    arity(cmd).is_some_and(|(min, _)| min >= 1)
        && ![CONNECTION, KEYSPACE, TRANSACTION]
            .iter()
            .any(|list| list.contains(&cmd))
}

/// (min, max) arguments after the name (`None`: any number from min), by command.
fn arity(cmd: &str) -> Option<(usize, Option<usize>)> {
    Some(match cmd {
        "ping" => (0, Some(1)),
        "echo" | "get" | "incr" | "decr" | "ttl" | "pttl" | "persist" | "select" | "strlen"
        | "getdel" | "type" | "expiretime" | "pexpiretime" | "keys" => (1, Some(1)),
        "incrby" | "decrby" | "append" | "incrbyfloat" | "setnx" | "getset" => (2, Some(2)),
        "concord.casget" | "digest" | "concord.sget" => (1, Some(1)),
        "concord.sput" => (3, Some(3)),
        "concord.sdel" => (2, Some(2)),
        "multi" | "exec" | "discard" | "unwatch" => (0, Some(0)),
        "watch" => (1, None),
        "delex" => (1, Some(3)),
        "msetnx" => (2, None),
        "concord.session" => (0, Some(2)),
        "getrange" | "substr" | "setrange" | "setex" | "psetex" => (3, Some(3)),
        "expire" | "pexpire" | "expireat" | "pexpireat" => (2, None),
        "set" => (2, None),
        "del" | "unlink" | "exists" | "touch" | "mget" | "client" | "config" | "getex" | "scan"
        | "auth" => (1, None),
        "mset" => (2, None),
        "hello" | "command" | "info" | "quit" | "reset" | "flushdb" | "flushall"
        | "concord.quorum" => (0, None),
        "concord.bucket" => (1, None),
        "time" | "dbsize" | "randomkey" => (0, Some(0)),
        "smembers" | "scard" => (1, Some(1)),
        "sismember" => (2, Some(2)),
        "smove" => (3, Some(3)),
        "srandmember" | "spop" | "hrandfield" => (1, None),
        "sadd" | "srem" | "smismember" | "sunionstore" | "sinterstore" | "sdiffstore"
        | "sintercard" | "sscan" => (2, None),
        "sunion" | "sinter" | "sdiff" => (1, None),
        "hget" | "hexists" | "hstrlen" => (2, Some(2)),
        "hlen" | "hgetall" | "hkeys" | "hvals" => (1, Some(1)),
        "hsetnx" | "hincrby" | "hincrbyfloat" => (3, Some(3)),
        "hset" | "hmset" => (3, None),
        "hmget" | "hdel" | "hscan" => (2, None),
        _ => return None,
    })
}

/// A command's name for the metrics: its lowercase name when Concord has the command,
/// `unknown` otherwise (clients cannot create series).
pub fn metric_name(name: Option<&Bytes>) -> std::borrow::Cow<'static, str> {
    let name = name.map(|n| String::from_utf8_lossy(n).to_ascii_lowercase());
    match name {
        Some(n) if arity(&n).is_some() => n.into(),
        _ => "unknown".into(),
    }
}

/// Runs one request.
pub async fn run(ap: &ApNode, s: &mut Session, args: Vec<Bytes>) -> Frame {
    let Some((name, rest)) = args.split_first() else {
        return Frame::ok();
    };
    let cmd = String::from_utf8_lossy(name).to_ascii_lowercase();
    // In a transaction, a command refused here makes EXEC abort.
    let refuse = |s: &mut Session, reply: Frame| {
        if let Some(t) = s.multi.as_mut() {
            t.fail();
        }
        reply
    };
    let Some((min, max)) = arity(&cmd) else {
        return refuse(s, unknown(name, rest));
    };
    if rest.len() < min || max.is_some_and(|m| rest.len() > m) {
        if cmd == "exec" {
            // Redis discards the transaction, if any, and the watch.
            s.multi = None;
            s.watch = None;
            return Frame::error(format!(
                "EXECABORT Transaction discarded because of: {}",
                arity_message(&cmd)
            ));
        }
        return refuse(s, wrong_arity(&cmd));
    }
    if ap.keeps_siblings(s.access.bucket) && !any_bucket(&cmd) {
        let b = s.access.bucket;
        return refuse(
            s,
            Frame::error(format!(
                "ERR bucket {b} keeps siblings: use CONCORD.SGET, CONCORD.SPUT and CONCORD.SDEL"
            )),
        );
    }
    if s.multi.is_some() && !multi::CONTROL.contains(&cmd.as_str()) {
        return multi::queue(s, &cmd, rest);
    }
    let at = s.access;
    match cmd.as_str() {
        "ping" | "echo" | "quit" | "reset" | "select" | "hello" | "client" | "command"
        | "config" | "info" | "time" | "auth" | "concord.quorum" | "concord.bucket"
        | "concord.session" => admin::run(ap, s, &cmd, rest).await,
        "keys" => keyspace::keys(ap, at, &rest[0]).await,
        "scan" => keyspace::scan(ap, at, rest).await,
        "dbsize" => keyspace::dbsize(ap, at).await,
        "randomkey" => keyspace::randomkey(ap, at).await,
        "flushdb" | "flushall" => keyspace::flush(ap, at, cmd == "flushall", rest).await,
        "sadd" | "srem" | "smembers" | "scard" | "sismember" | "smismember" | "srandmember"
        | "spop" | "smove" | "sunion" | "sinter" | "sdiff" | "sunionstore" | "sinterstore"
        | "sdiffstore" | "sintercard" | "sscan" => sets::run(ap, at, &cmd, rest).await,
        "hset" | "hmset" | "hsetnx" | "hget" | "hmget" | "hdel" | "hexists" | "hlen"
        | "hgetall" | "hkeys" | "hvals" | "hstrlen" | "hscan" | "hrandfield" | "hincrby"
        | "hincrbyfloat" => hashes::run(ap, at, s.resp, &cmd, rest).await,
        "get" => match value(ap, at, &rest[0]).await {
            Ok(v) => v.map_or(Frame::Null, Frame::bulk),
            Err(e) => e,
        },
        "strlen" => match value(ap, at, &rest[0]).await {
            Ok(v) => Frame::Integer(v.map_or(0, |v| v.len() as i64)),
            Err(e) => e,
        },
        // SUBSTR is GETRANGE's old name, still answered by Redis 7.
        "getrange" | "substr" => {
            let (Some(start), Some(end)) = (integer(&rest[1]), integer(&rest[2])) else {
                return Frame::error(NOT_INTEGER);
            };
            match value(ap, at, &rest[0]).await {
                Ok(v) => Frame::bulk(substring(&v.unwrap_or_default(), start, end)),
                Err(e) => e,
            }
        }
        "set" => set(ap, at, rest).await,
        // One key is one Paxos instance: several keys cannot be set together atomically.
        "msetnx" if rest.len() % 2 != 0 => wrong_arity(&cmd),
        "msetnx" if rest.len() > 2 => Frame::error(
            "ERR MSETNX of more than one key is not supported by AP buckets (each key is \
             decided by its own Paxos instance); use SET key value NX per key",
        ),
        "setnx" | "msetnx" => {
            match cas_set(
                ap,
                at,
                &rest[0],
                rest[1].to_vec(),
                SetExpiry::Clear,
                &Cas::NX,
            )
            .await
            {
                Frame::Simple(_) => Frame::Integer(1),
                Frame::Null => Frame::Integer(0),
                other => other,
            }
        }
        "getset" => {
            cas_set(
                ap,
                at,
                &rest[0],
                rest[1].to_vec(),
                SetExpiry::Clear,
                &Cas::GET,
            )
            .await
        }
        "concord.casget" => cas_get(ap, at, &rest[0]).await,
        "multi" | "exec" | "discard" | "watch" | "unwatch" => multi::run(ap, s, &cmd, rest).await,
        "delex" => delex(ap, at, rest).await,
        "concord.sget" | "concord.sput" | "concord.sdel" => siblings(ap, at, &cmd, rest).await,
        "digest" => match value(ap, at, &rest[0]).await {
            Ok(v) => v.map_or(Frame::Null, |v| Frame::bulk(digest(&v))),
            Err(e) => e,
        },
        "setex" | "psetex" => {
            let Some(n) = integer(&rest[1]) else {
                return Frame::error(NOT_INTEGER);
            };
            let unit = if cmd == "setex" {
                TimeUnit::Seconds
            } else {
                TimeUnit::Millis
            };
            match deadline_ms(unit, n, ap.now_ms()) {
                Some(t) if n > 0 => {
                    store(ap, at, &rest[0], rest[2].to_vec(), SetExpiry::At(t as u64)).await
                }
                _ => Frame::error(format!("ERR invalid expire time in '{cmd}' command")),
            }
        }
        "mset" => {
            if rest.len() % 2 != 0 {
                return wrong_arity(&cmd);
            }
            for pair in rest.chunks(2) {
                let reply = store(ap, at, &pair[0], pair[1].to_vec(), SetExpiry::Clear).await;
                if matches!(reply, Frame::Error(_)) {
                    return reply;
                }
            }
            Frame::ok()
        }
        "mget" => {
            // A key of another type reads as nil here, not as an error.
            let mut values = Vec::with_capacity(rest.len());
            for key in rest {
                match ap.read(at, key).await {
                    Ok(st) => values.push(
                        st.and_then(|st| st.get(ap.now_ms()))
                            .map_or(Frame::Null, Frame::bulk),
                    ),
                    Err(e) => return ap_error(e),
                }
            }
            Frame::Array(values)
        }
        "del" | "unlink" => {
            let mut removed = 0;
            for key in rest {
                match live(ap, at, key).await {
                    Ok(Some(_)) => match ap.write(at, key, Op::Del).await {
                        Ok(_) => removed += 1,
                        Err(e) => return ap_error(e),
                    },
                    Ok(None) => {}
                    Err(e) => return ap_error(e),
                }
            }
            Frame::Integer(removed)
        }
        "exists" | "touch" => {
            let mut n = 0;
            for key in rest {
                match live(ap, at, key).await {
                    Ok(found) => n += i64::from(found.is_some()),
                    Err(e) => return ap_error(e),
                }
            }
            Frame::Integer(n)
        }
        "type" => match live(ap, at, &rest[0]).await {
            Ok(st) => Frame::simple(type_name(st.as_ref(), ap.now_ms())),
            Err(e) => ap_error(e),
        },
        "getdel" => match live(ap, at, &rest[0]).await {
            Ok(Some(st)) if st.kind(ap.now_ms()) != Some(Kind::String) => wrong_type(),
            Ok(Some(st)) => match ap
                .write_after(at, &rest[0], Op::Del, Some(st.clone()))
                .await
            {
                Ok(_) => st.get(ap.now_ms()).map_or(Frame::Null, Frame::bulk),
                Err(e) => ap_error(e),
            },
            Ok(None) => Frame::Null,
            Err(e) => ap_error(e),
        },
        "getex" => getex(ap, at, rest).await,
        "append" | "setrange" | "incrbyfloat" => edit(ap, at, &cmd, rest).await,
        "incr" | "decr" | "incrby" | "decrby" => {
            let delta = match incr_delta(&cmd, rest) {
                Ok(d) => d,
                Err(e) => return e,
            };
            match ap.write(at, &rest[0], Op::Incr(delta)).await {
                Ok(Some(n)) => Frame::Integer(n),
                Ok(None) => Frame::error("ERR the replica did not return the new value"),
                Err(e) => ap_error(e),
            }
        }
        "expire" | "pexpire" | "expireat" | "pexpireat" => expire(ap, at, &cmd, rest).await,
        "persist" => match live(ap, at, &rest[0]).await {
            Ok(Some(st)) if st.expires_at().is_some() => {
                match ap.write(at, &rest[0], Op::Expire(Expiry::Never)).await {
                    Ok(_) => Frame::Integer(1),
                    Err(e) => ap_error(e),
                }
            }
            Ok(_) => Frame::Integer(0),
            Err(e) => ap_error(e),
        },
        "ttl" | "pttl" | "expiretime" | "pexpiretime" => match live(ap, at, &rest[0]).await {
            Ok(None) => Frame::Integer(-2),
            Ok(Some(st)) => match st.expires_at() {
                None => Frame::Integer(-1),
                Some(when) => {
                    let left = when.saturating_sub(ap.now_ms()) as i64;
                    Frame::Integer(match cmd.as_str() {
                        "ttl" => (left + 500) / 1000,
                        "pttl" => left,
                        "expiretime" => ((when + 500) / 1000) as i64,
                        _ => when as i64,
                    })
                }
            },
            Err(e) => ap_error(e),
        },
        _ => unknown(name, rest),
    }
}

/// How an expiry argument counts.
#[derive(Clone, Copy)]
enum TimeUnit {
    /// Seconds from now (`EX`, `EXPIRE`).
    Seconds,
    /// Milliseconds from now (`PX`, `PEXPIRE`).
    Millis,
    /// A Unix time in seconds (`EXAT`, `EXPIREAT`).
    UnixSeconds,
    /// A Unix time in milliseconds (`PXAT`, `PEXPIREAT`).
    UnixMillis,
}

impl TimeUnit {
    /// The unit of a `SET`/`GETEX` option or an `EXPIRE`-family command.
    fn of(name: &str) -> Option<TimeUnit> {
        Some(match name {
            "ex" | "expire" => TimeUnit::Seconds,
            "px" | "pexpire" => TimeUnit::Millis,
            "exat" | "expireat" => TimeUnit::UnixSeconds,
            "pxat" | "pexpireat" => TimeUnit::UnixMillis,
            _ => return None,
        })
    }
}

/// The deadline in ms since the Unix epoch; `None` when it overflows.
fn deadline_ms(unit: TimeUnit, n: i64, now_ms: u64) -> Option<i64> {
    let now = i64::try_from(now_ms).ok()?;
    match unit {
        TimeUnit::Seconds => n.checked_mul(1000)?.checked_add(now),
        TimeUnit::Millis => n.checked_add(now),
        TimeUnit::UnixSeconds => n.checked_mul(1000),
        TimeUnit::UnixMillis => Some(n),
    }
}

/// The key's state if it exists now.
async fn live(ap: &ApNode, at: Access, key: &[u8]) -> Result<Option<RedisValue>, ApError> {
    let now = ap.now_ms();
    Ok(ap.read(at, key).await?.filter(|st| st.exists(now)))
}

/// `TYPE`'s answer for a key's state (`None`: no replica holds it).
pub(crate) fn type_name(state: Option<&RedisValue>, now_ms: u64) -> &'static str {
    match state.and_then(|st| st.kind(now_ms)) {
        Some(Kind::String) => "string",
        Some(Kind::Set) => "set",
        Some(Kind::Hash) => "hash",
        Some(Kind::Siblings) => "siblings",
        None => "none",
    }
}

/// The string value of `state` now; the error reply when the key is of another type.
pub(crate) fn string_value(
    state: Option<&RedisValue>,
    now_ms: u64,
) -> Result<Option<Vec<u8>>, Frame> {
    match state {
        Some(st) if st.kind(now_ms).is_some_and(|k| k != Kind::String) => Err(wrong_type()),
        Some(st) => Ok(st.get(now_ms)),
        None => Ok(None),
    }
}

/// The key's value now, or the error reply.
async fn value(ap: &ApNode, at: Access, key: &[u8]) -> Result<Option<Vec<u8>>, Frame> {
    match ap.read(at, key).await {
        Ok(state) => string_value(state.as_ref(), ap.now_ms()),
        Err(e) => Err(ap_error(e)),
    }
}

/// `SET key value` with `expiry`.
async fn store(ap: &ApNode, at: Access, key: &[u8], value: Vec<u8>, expiry: SetExpiry) -> Frame {
    match ap.write(at, key, Op::Set { value, expiry }).await {
        Ok(_) => Frame::ok(),
        Err(e) => ap_error(e),
    }
}

/// `GETRANGE`'s slice, with Redis 7's index rules.
fn substring(v: &[u8], start: i64, end: i64) -> Vec<u8> {
    let len = v.len() as i64;
    if start < 0 && end < 0 && start > end {
        return Vec::new();
    }
    let start = if start < 0 { len + start } else { start }.max(0);
    let end = if end < 0 { len + end } else { end }.max(0).min(len - 1);
    if len == 0 || start > end {
        return Vec::new();
    }
    v[start as usize..=end as usize].to_vec()
}

/// The options of `SET` (`getex`: false) or `GETEX` (`getex`: true), read as Redis's
/// `parseExtendedStringArgumentsOrReply` reads them: every option checked first (an
/// option may repeat, the last value wins, conflicting ones are a syntax error), then
/// the time value.
struct Options {
    /// `NX`, `XX` and `GET` (`SET` only), which go through compare-and-set.
    cas: Cas,
    keepttl: bool,
    persist: bool,
    /// The time option given: its unit and value, not yet checked ([`Options::deadline`]).
    time: Option<(TimeUnit, Bytes)>,
}

impl Options {
    /// The deadline given, in ms since the Unix epoch, or the error reply for a value
    /// that is not an integer or not a valid time.
    fn deadline(&self, ap: &ApNode, cmd: &str) -> Result<Option<u64>, Frame> {
        let Some((unit, v)) = &self.time else {
            return Ok(None);
        };
        let n = integer(v).ok_or_else(|| Frame::error(NOT_INTEGER))?;
        match deadline_ms(*unit, n, ap.now_ms()) {
            Some(t) if n > 0 && t > 0 => Ok(Some(t as u64)),
            _ => Err(Frame::error(format!(
                "ERR invalid expire time in '{cmd}' command"
            ))),
        }
    }
}

fn options(opts: &[Bytes], getex: bool) -> Result<Options, Frame> {
    let (mut nx, mut xx, mut get, mut keepttl, mut persist) = (false, false, false, false, false);
    let mut compare: Option<Condition> = None;
    let mut time: Option<(&'static str, &Bytes)> = None;
    let mut i = 0;
    while i < opts.len() {
        let opt = opts[i].to_ascii_lowercase();
        let next = opts.get(i + 1);
        let unit_free = |u: &str| time.is_none_or(|(t, _)| t == u);
        match opt.as_slice() {
            b"nx" if !getex && !xx && compare.is_none() => nx = true,
            b"xx" if !getex && !nx && compare.is_none() => xx = true,
            // Redis 8.4's conditions on the current value (one kind; repeated, the last).
            b"ifeq" | b"ifne" | b"ifdeq" | b"ifdne" if !getex && !nx && !xx => {
                match (next.and_then(|v| Condition::parse(&opt, v)), &compare) {
                    (Some(c), None) => compare = Some(c),
                    (Some(c), Some(old)) if old.test == c.test => compare = Some(c),
                    _ => return Err(Frame::error(SYNTAX)),
                }
                i += 1;
            }
            b"get" if !getex => get = true,
            b"keepttl" if !getex && time.is_none() => keepttl = true,
            b"persist" if getex && time.is_none() => persist = true,
            b"ex" | b"px" | b"exat" | b"pxat" if !keepttl && !persist && next.is_some() => {
                let unit = match opt.as_slice() {
                    b"ex" => "ex",
                    b"px" => "px",
                    b"exat" => "exat",
                    _ => "pxat",
                };
                match next {
                    Some(v) if unit_free(unit) => time = Some((unit, v)),
                    _ => return Err(Frame::error(SYNTAX)),
                }
                i += 1;
            }
            _ => return Err(Frame::error(SYNTAX)),
        }
        i += 1;
    }
    Ok(Options {
        cas: Cas {
            nx,
            xx,
            get,
            compare,
        },
        keepttl,
        persist,
        time: time.map(|(unit, v)| (TimeUnit::of(unit).unwrap_or(TimeUnit::Seconds), v.clone())),
    })
}

/// The delta of `INCR`, `DECR`, `INCRBY` or `DECRBY` (`rest`: the arguments), or the
/// error reply.
pub(crate) fn incr_delta(cmd: &str, rest: &[Bytes]) -> Result<i64, Frame> {
    let delta = match cmd {
        "incr" => Some(1),
        "decr" => Some(-1),
        "incrby" => integer(&rest[1]),
        _ => match integer(&rest[1]) {
            Some(i64::MIN) => return Err(Frame::error("ERR decrement would overflow")),
            d => d.map(|d| -d),
        },
    };
    delta.ok_or_else(|| Frame::error(NOT_INTEGER))
}

/// The expiry and the conditions `SET key value [options]` (`rest`) asks for, or the
/// error reply.
pub(crate) fn set_request(ap: &ApNode, rest: &[Bytes]) -> Result<(SetExpiry, Cas), Frame> {
    let o = options(&rest[2..], false)?;
    let expiry = match (o.deadline(ap, "set")?, o.keepttl) {
        (Some(t), _) => SetExpiry::At(t),
        (None, true) => SetExpiry::Keep,
        (None, false) => SetExpiry::Clear,
    };
    Ok((expiry, o.cas))
}

async fn set(ap: &ApNode, at: Access, rest: &[Bytes]) -> Frame {
    let (expiry, cas) = match set_request(ap, rest) {
        Ok(x) => x,
        Err(e) => return e,
    };
    if cas != Cas::default() {
        return cas_set(ap, at, &rest[0], rest[1].to_vec(), expiry, &cas).await;
    }
    store(ap, at, &rest[0], rest[1].to_vec(), expiry).await
}

/// The conditions and answer of a `SET` that goes through compare-and-set.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Cas {
    /// Only if the key does not exist.
    nx: bool,
    /// Only if it exists.
    xx: bool,
    /// Answer the old string value.
    get: bool,
    /// `IFEQ`, `IFNE`, `IFDEQ` or `IFDNE`: a condition on the current string value.
    compare: Option<Condition>,
}

impl Cas {
    /// `SETNX`'s: only if the key does not exist.
    pub(crate) const NX: Cas = Cas {
        nx: true,
        xx: false,
        get: false,
        compare: None,
    };
    /// `GETSET`'s: answer the old value.
    pub(crate) const GET: Cas = Cas {
        nx: false,
        xx: false,
        get: true,
        compare: None,
    };
}

/// What a Redis 8.4 condition compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Test {
    /// `IFEQ v`: the value is `v`.
    Equal,
    /// `IFNE v`: the value is not `v` (or the key is absent).
    NotEqual,
    /// `IFDEQ d`: the value's digest is `d`.
    DigestEqual,
    /// `IFDNE d`: the value's digest is not `d` (or the key is absent).
    DigestNotEqual,
}

/// A condition of `SET` or `DELEX` on a key's current string value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Condition {
    test: Test,
    arg: Bytes,
}

/// `DIGEST`'s answer for a string value: its XXH3 (64 bits) as 16 hex digits.
pub(crate) fn digest(value: &[u8]) -> String {
    format!("{:016x}", xxhash_rust::xxh3::xxh3_64(value))
}

impl Condition {
    /// The condition an option (lower case) names, with its argument.
    fn parse(option: &[u8], arg: &Bytes) -> Option<Condition> {
        let test = match option {
            b"ifeq" => Test::Equal,
            b"ifne" => Test::NotEqual,
            b"ifdeq" => Test::DigestEqual,
            b"ifdne" => Test::DigestNotEqual,
            _ => return None,
        };
        Some(Condition {
            test,
            arg: arg.clone(),
        })
    }

    /// Whether it holds for the current value (`None`: the key is absent), or the error
    /// reply for a digest that is not 16 characters (checked, as Redis does, only when
    /// the key exists).
    fn holds(&self, current: Option<&[u8]>) -> Result<bool, Frame> {
        let digest_matches = |v: &[u8]| {
            if self.arg.len() != 16 {
                return Err(Frame::error(
                    "ERR digest must be exactly 16 hexadecimal characters",
                ));
            }
            Ok(digest(v).as_bytes().eq_ignore_ascii_case(&self.arg))
        };
        Ok(match (self.test, current) {
            (Test::Equal, v) => v == Some(self.arg.as_ref()),
            (Test::NotEqual, v) => v != Some(self.arg.as_ref()),
            (Test::DigestEqual, None) => false,
            (Test::DigestNotEqual, None) => true,
            (Test::DigestEqual, Some(v)) => digest_matches(v)?,
            (Test::DigestNotEqual, Some(v)) => !digest_matches(v)?,
        })
    }
}

/// `SET key value [NX|XX] [GET] ...`, `SETNX` and `GETSET`: decided by Paxos among the
/// key's owners on their current state, so two such writes of one key never both succeed
/// on the same old value. The answer: with `GET` the old value (whether or not the write
/// happened; `WRONGTYPE` and nothing written when the key is not a string), else `OK`, or
/// nil when the condition failed.
async fn cas_set(
    ap: &ApNode,
    at: Access,
    key: &[u8],
    value: Vec<u8>,
    expiry: SetExpiry,
    c: &Cas,
) -> Frame {
    let now_ms = ap.now_ms();
    let outcome = ap
        .cas(at, key, |current, stamp, actor| {
            let (write, answer) = set_on(current, &value, expiry, c, stamp, actor, now_ms);
            Decision { write, answer }
        })
        .await;
    match outcome {
        Ok((answer, _)) => answer.unwrap_or_else(|e| e),
        Err(e) => ap_error(e),
    }
}

/// A conditional `SET` of `value` on the key's `current` state at `now_ms` (`stamp` newer
/// than it, by `actor`): the new state, if the write happens, and the answer (an error
/// reply as `Err`). What `SET` through Paxos and `SET` inside `MULTI` decide.
pub(crate) fn set_on(
    current: Option<&RedisValue>,
    value: &[u8],
    expiry: SetExpiry,
    c: &Cas,
    stamp: Stamp,
    actor: NodeId,
    now_ms: u64,
) -> (Option<RedisValue>, Result<Frame, Frame>) {
    let live = current.filter(|st| st.exists(now_ms));
    let string = live.is_none_or(|st| st.kind(now_ms) == Some(Kind::String));
    if (c.get || c.compare.is_some()) && !string {
        return (None, Err(wrong_type()));
    }
    let old = live.and_then(|st| st.get(now_ms));
    let answer = Ok(if c.get {
        old.clone().map_or(Frame::Null, Frame::bulk)
    } else {
        Frame::ok()
    });
    let refused = match &c.compare {
        Some(condition) => match condition.holds(old.as_deref()) {
            Ok(holds) => !holds,
            Err(e) => return (None, Err(e)),
        },
        None => (c.nx && live.is_some()) || (c.xx && live.is_none()),
    };
    if refused {
        return (None, if c.get { answer } else { Ok(Frame::Null) });
    }
    let mut next = current.cloned().unwrap_or_default();
    let expiry = match expiry {
        SetExpiry::Keep if live.is_none() => SetExpiry::Clear,
        e => e,
    };
    next.set(value.to_vec(), stamp, actor, expiry);
    (Some(next), answer)
}

/// `CONCORD.SGET key` (the causal context, then the values), `CONCORD.SPUT key context
/// value` and `CONCORD.SDEL key context` (`context` from an `SGET`, or empty for a blind
/// write, which adds a sibling): keys of a bucket that keeps siblings.
async fn siblings(ap: &ApNode, at: Access, cmd: &str, rest: &[Bytes]) -> Frame {
    let key = &rest[0];
    let outcome = match cmd {
        "concord.sget" => {
            return match ap.sibling_get(at, key).await {
                Ok(found) => Frame::Array(vec![
                    Frame::bulk(context_to_text(&found.context)),
                    Frame::Array(found.values.into_iter().map(Frame::bulk).collect()),
                ]),
                Err(e) => ap_error(e),
            }
        }
        _ => match context_from_text(&rest[1]) {
            Ok(context) => {
                let value = (cmd == "concord.sput").then(|| rest[2].to_vec());
                ap.sibling_put(at, key, context, value).await
            }
            Err(why) => return Frame::error(format!("ERR invalid causal context: {why}")),
        },
    };
    match outcome {
        Ok(()) => Frame::ok(),
        Err(e) => ap_error(e),
    }
}

/// `DELEX key [IFEQ v | IFNE v | IFDEQ d | IFDNE d]`: without a condition, `DEL` of one
/// key; with one, a compare-and-delete decided by Paxos among the key's owners (the key
/// must then be a string). 1 when the key was deleted, else 0.
async fn delex(ap: &ApNode, at: Access, rest: &[Bytes]) -> Frame {
    let key = &rest[0];
    let condition = match &rest[1..] {
        [] => None,
        [opt, arg] => match Condition::parse(&opt.to_ascii_lowercase(), arg) {
            Some(c) => Some(c),
            None => return Frame::error(SYNTAX),
        },
        _ => return Frame::error(SYNTAX),
    };
    let Some(condition) = condition else {
        return match live(ap, at, key).await {
            Ok(Some(st)) => match ap.write_after(at, key, Op::Del, Some(st)).await {
                Ok(_) => Frame::Integer(1),
                Err(e) => ap_error(e),
            },
            Ok(None) => Frame::Integer(0),
            Err(e) => ap_error(e),
        };
    };
    let now_ms = ap.now_ms();
    let outcome = ap
        .cas(at, key, |current, stamp, _| {
            let Some(live) = current.filter(|st| st.exists(now_ms)) else {
                return Decision {
                    write: None,
                    answer: Frame::Integer(0),
                };
            };
            let holds = match string_value(Some(live), now_ms) {
                Ok(v) => condition.holds(v.as_deref()),
                Err(e) => Err(e),
            };
            match holds {
                Ok(true) => {
                    let mut next = live.clone();
                    next.delete(stamp);
                    Decision {
                        write: Some(next),
                        answer: Frame::Integer(1),
                    }
                }
                Ok(false) => Decision {
                    write: None,
                    answer: Frame::Integer(0),
                },
                Err(e) => Decision {
                    write: None,
                    answer: e,
                },
            }
        })
        .await;
    match outcome {
        Ok((answer, _)) => answer,
        Err(e) => ap_error(e),
    }
}

/// `CONCORD.CASGET key`: `GET` through Paxos, linearizable with the compare-and-set
/// writes of the key (one round trip to a majority of its owners).
async fn cas_get(ap: &ApNode, at: Access, key: &[u8]) -> Frame {
    let now_ms = ap.now_ms();
    let outcome = ap
        .cas(at, key, |current, _, _| Decision {
            write: None,
            answer: string_value(current, now_ms),
        })
        .await;
    match outcome {
        Ok((Ok(v), _)) => v.map_or(Frame::Null, Frame::bulk),
        Ok((Err(e), _)) => e,
        Err(e) => ap_error(e),
    }
}

/// `GETEX key [EX s | PX ms | EXAT t | PXAT t | PERSIST]`.
async fn getex(ap: &ApNode, at: Access, rest: &[Bytes]) -> Frame {
    let key = &rest[0];
    let o = match options(&rest[1..], true) {
        Ok(o) => o,
        Err(e) => return e,
    };
    // Redis looks the key up before it checks the time value.
    let state = match live(ap, at, key).await {
        Ok(Some(st)) => st,
        Ok(None) => return Frame::Null,
        Err(e) => return ap_error(e),
    };
    // Then the type, then the time value.
    let value = match string_value(Some(&state), ap.now_ms()) {
        Ok(v) => v.map_or(Frame::Null, Frame::bulk),
        Err(e) => return e,
    };
    let change = match (o.deadline(ap, "getex"), o.persist) {
        (Err(e), _) => return e,
        (Ok(Some(t)), _) => Some(Expiry::At(t)),
        (Ok(None), true) => Some(Expiry::Never),
        (Ok(None), false) => None,
    };
    let change = match change {
        Some(Expiry::Never) if state.expires_at().is_none() => None,
        other => other,
    };
    if let Some(e) = change {
        if let Err(e) = ap.write_after(at, key, Op::Expire(e), Some(state)).await {
            return ap_error(e);
        }
    }
    value
}

/// `APPEND`, `SETRANGE` and `INCRBYFLOAT`: a new value computed from the current one,
/// written over what was read (the expiry kept).
async fn edit(ap: &ApNode, at: Access, cmd: &str, rest: &[Bytes]) -> Frame {
    let key = &rest[0];
    // Arguments are checked before anything is read, as Redis does.
    let offset = match cmd {
        "setrange" => match integer(&rest[1]) {
            Some(o) if o < 0 => return Frame::error("ERR offset is out of range"),
            Some(o) => o as usize,
            None => return Frame::error(NOT_INTEGER),
        },
        _ => 0,
    };
    let state = match ap.read(at, key).await {
        Ok(s) => s,
        Err(e) => return ap_error(e),
    };
    let current = match string_value(state.as_ref(), ap.now_ms()) {
        Ok(v) => v,
        Err(e) => return e,
    };
    let (next, reply) = match cmd {
        "append" => {
            let mut v = current.unwrap_or_default();
            if v.len() + rest[1].len() > MAX_STRING {
                return Frame::error(TOO_BIG);
            }
            v.extend_from_slice(&rest[1]);
            let len = v.len() as i64;
            (v, Frame::Integer(len))
        }
        "setrange" => {
            let piece = &rest[2];
            let v = current.unwrap_or_default();
            if piece.is_empty() {
                // Nothing to write: the length as it is, and no key created.
                return Frame::Integer(v.len() as i64);
            }
            if offset.saturating_add(piece.len()) > MAX_STRING {
                return Frame::error(TOO_BIG);
            }
            let mut v = v;
            if v.len() < offset + piece.len() {
                v.resize(offset + piece.len(), 0);
            }
            v[offset..offset + piece.len()].copy_from_slice(piece);
            let len = v.len() as i64;
            (v, Frame::Integer(len))
        }
        _ => {
            // The key's type first, then its value, then the increment, as Redis checks.
            let base = match current.as_deref().map(parse_float) {
                None => 0.0,
                Some(Some(b)) => b,
                Some(None) => return Frame::error(NOT_FLOAT),
            };
            let Some(delta) = parse_float(&rest[1]) else {
                return Frame::error(NOT_FLOAT);
            };
            let sum = base + delta;
            if !sum.is_finite() {
                return Frame::error("ERR increment would produce NaN or Infinity");
            }
            let text = format_float(sum);
            (text.clone().into_bytes(), Frame::bulk(text))
        }
    };
    let op = Op::Set {
        value: next,
        expiry: SetExpiry::Keep,
    };
    match ap.write_after(at, key, op, state).await {
        Ok(_) => reply,
        Err(e) => ap_error(e),
    }
}

/// A float as Redis's `strtold` takes it (no spaces, no NaN, no infinities).
pub(crate) fn parse_float(b: &[u8]) -> Option<f64> {
    let s = std::str::from_utf8(b).ok()?;
    if s.is_empty() || s.starts_with(|c: char| c.is_whitespace()) {
        return None;
    }
    if s.to_ascii_lowercase().contains("nan") {
        return None;
    }
    // Infinities parse (the sum is then refused, as Redis refuses it).
    s.parse::<f64>().ok()
}

/// A float as Redis writes `INCRBYFLOAT`'s result: plain decimal, no exponent, no
/// trailing zeros.
pub(crate) fn format_float(f: f64) -> String {
    let s = format!("{f}");
    if s == "-0" {
        "0".into()
    } else {
        s
    }
}

/// `EXPIRE key n [NX|XX|GT|LT]` and its variants.
async fn expire(ap: &ApNode, at: Access, cmd: &str, rest: &[Bytes]) -> Frame {
    let (mut nx, mut xx, mut gt, mut lt) = (false, false, false, false);
    for opt in &rest[2..] {
        match opt.to_ascii_lowercase().as_slice() {
            b"nx" => nx = true,
            b"xx" => xx = true,
            b"gt" => gt = true,
            b"lt" => lt = true,
            _ => return error_bytes(&[b"ERR Unsupported option ", opt]),
        }
    }
    if nx && (xx || gt || lt) {
        return Frame::error("ERR NX and XX, GT or LT options at the same time are not compatible");
    }
    if gt && lt {
        return Frame::error("ERR GT and LT options at the same time are not compatible");
    }
    let Some(n) = integer(&rest[1]) else {
        return Frame::error(NOT_INTEGER);
    };
    let unit = TimeUnit::of(cmd).unwrap_or(TimeUnit::Seconds);
    let Some(when) = deadline_ms(unit, n, ap.now_ms()) else {
        return Frame::error(format!("ERR invalid expire time in '{cmd}' command"));
    };
    let state = match live(ap, at, &rest[0]).await {
        Ok(Some(st)) => st,
        Ok(None) => return Frame::Integer(0),
        Err(e) => return ap_error(e),
    };
    let when = when.max(0) as u64;
    // No expiry counts as an infinite one for GT and LT.
    let current = state.expires_at();
    let refused = (nx && current.is_some())
        || (xx && current.is_none())
        || (gt && current.is_none_or(|c| when <= c))
        || (lt && current.is_some_and(|c| when >= c));
    if refused {
        return Frame::Integer(0);
    }
    match ap
        .write_after(at, &rest[0], Op::Expire(Expiry::At(when)), Some(state))
        .await
    {
        Ok(_) => Frame::Integer(1),
        Err(e) => ap_error(e),
    }
}

/// The commands answered here, for `COMMAND COUNT` and `COMMAND LIST`.
pub(crate) const COMMANDS: &[&str] = &[
    "ping",
    "echo",
    "quit",
    "reset",
    "select",
    "hello",
    "client",
    "command",
    "config",
    "info",
    "time",
    "auth",
    "concord.quorum",
    "concord.bucket",
    "concord.session",
    "keys",
    "scan",
    "dbsize",
    "randomkey",
    "flushdb",
    "flushall",
    "get",
    "strlen",
    "getrange",
    "substr",
    "set",
    "setnx",
    "getset",
    "concord.casget",
    "delex",
    "digest",
    "multi",
    "exec",
    "discard",
    "watch",
    "unwatch",
    "concord.sget",
    "concord.sput",
    "concord.sdel",
    "msetnx",
    "setex",
    "psetex",
    "mset",
    "mget",
    "del",
    "unlink",
    "exists",
    "touch",
    "type",
    "getdel",
    "getex",
    "append",
    "setrange",
    "incrbyfloat",
    "incr",
    "decr",
    "incrby",
    "decrby",
    "expire",
    "pexpire",
    "expireat",
    "pexpireat",
    "persist",
    "ttl",
    "pttl",
    "expiretime",
    "pexpiretime",
    "sadd",
    "srem",
    "smembers",
    "scard",
    "sismember",
    "smismember",
    "srandmember",
    "spop",
    "smove",
    "sunion",
    "sinter",
    "sdiff",
    "sunionstore",
    "sinterstore",
    "sdiffstore",
    "sintercard",
    "sscan",
    "hset",
    "hmset",
    "hsetnx",
    "hget",
    "hmget",
    "hdel",
    "hexists",
    "hlen",
    "hgetall",
    "hkeys",
    "hvals",
    "hstrlen",
    "hscan",
    "hrandfield",
    "hincrby",
    "hincrbyfloat",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_listed_command_has_an_arity_and_every_arity_is_listed() {
        for c in COMMANDS {
            assert!(arity(c).is_some(), "{c}");
        }
        assert_eq!(
            COMMANDS.iter().filter(|c| arity(c).is_some()).count(),
            COMMANDS.len()
        );
    }

    #[test]
    fn getrange_follows_redis_s_index_rules() {
        let v = b"This is a string";
        for (start, end, want) in [
            (0, 3, "This"),
            (-3, -1, "ing"),
            (0, -1, "This is a string"),
            (10, 100, "string"),
            (5, 3, ""),
            (-1, -5, ""),
            (-100, 2, "Thi"),
            (100, 200, ""),
        ] {
            assert_eq!(substring(v, start, end), want.as_bytes(), "{start} {end}");
        }
        assert_eq!(substring(b"", 0, -1), b"");
    }

    #[test]
    fn floats_parse_and_print_as_redis_does() {
        assert_eq!(parse_float(b"10.5"), Some(10.5));
        assert_eq!(parse_float(b"5.0e3"), Some(5000.0));
        assert_eq!(parse_float(b"-inf"), Some(f64::NEG_INFINITY));
        for bad in [&b""[..], b" 1", b"abc", b"nan", b"1 "] {
            assert_eq!(parse_float(bad), None, "{bad:?}");
        }
        assert_eq!(format_float(10.5 + 0.1), "10.6");
        assert_eq!(format_float(5000.0), "5000");
        assert_eq!(format_float(-0.0), "0");
        assert_eq!(format_float(3.0e20), "300000000000000000000");
    }
}
