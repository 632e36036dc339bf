//! The Redis commands Concord answers, with Redis 7's replies and error texts. Data
//! commands go through the AP coordinator ([`ApNode::read`], [`ApNode::write`]); a request
//! that cannot reach its quorum answers `TRYAGAIN` with the reason (for a write: it may or
//! may not have been stored).

use concord_core::crdt::{Expiry, RedisString, SetExpiry};

use bytes::Bytes;

use super::Session;
use crate::ap::{ApError, ApNode, Op, BUCKETS};
use crate::resp::{Frame, Protocol};

/// The Redis version Concord answers as (the commands follow its semantics).
pub const REDIS_VERSION: &str = "7.0.15";

const NOT_INTEGER: &str = "ERR value is not an integer or out of range";
const SYNTAX: &str = "ERR syntax error";

fn wrong_arity(cmd: &str) -> Frame {
    Frame::error(format!("ERR wrong number of arguments for '{cmd}' command"))
}

fn unknown(name: &[u8], args: &[Bytes]) -> Frame {
    let mut text = format!(
        "ERR unknown command '{}', with args beginning with: ",
        String::from_utf8_lossy(name)
    );
    for a in args.iter().take(128) {
        text.push_str(&format!("'{}' ", String::from_utf8_lossy(a)));
    }
    Frame::error(text)
}

fn ap_error(e: ApError) -> Frame {
    match e {
        ApError::Refused(text) => Frame::error(text),
        ApError::Unavailable(why) => Frame::error(format!("TRYAGAIN {why}")),
        ApError::Store(why) => Frame::error(format!("ERR {why}")),
    }
}

fn integer(arg: &[u8]) -> Option<i64> {
    concord_core::crdt::parse_integer(arg)
}

/// Runs one request.
pub async fn run(ap: &ApNode, s: &mut Session, args: Vec<Bytes>) -> Frame {
    let Some((name, rest)) = args.split_first() else {
        return Frame::ok();
    };
    let cmd = String::from_utf8_lossy(name).to_ascii_lowercase();
    // (min, max) arguments after the name; None: any number from min.
    let arity: Option<(usize, Option<usize>)> = match cmd.as_str() {
        "ping" => Some((0, Some(1))),
        "echo" | "get" | "incr" | "decr" | "ttl" | "pttl" | "persist" | "select" => {
            Some((1, Some(1)))
        }
        "incrby" | "decrby" | "expire" | "pexpire" | "expireat" | "pexpireat" => Some((2, Some(2))),
        "set" => Some((2, None)),
        "del" | "unlink" | "exists" | "mget" | "client" | "config" => Some((1, None)),
        "mset" => Some((2, None)),
        "hello" | "command" | "info" | "quit" | "reset" => Some((0, None)),
        _ => None,
    };
    let Some((min, max)) = arity else {
        return unknown(name, rest);
    };
    if rest.len() < min || max.is_some_and(|m| rest.len() > m) {
        return wrong_arity(&cmd);
    }
    let bucket = s.bucket;
    match cmd.as_str() {
        "ping" => match rest.first() {
            None => Frame::simple("PONG"),
            Some(m) => Frame::bulk(m.clone()),
        },
        "echo" => Frame::bulk(rest[0].clone()),
        "quit" => {
            s.closing = true;
            Frame::ok()
        }
        "reset" => {
            s.resp = Protocol::Resp2;
            s.bucket = 0;
            s.name = None;
            Frame::simple("RESET")
        }
        "select" => match integer(&rest[0]) {
            Some(n) if (0..i64::from(BUCKETS)).contains(&n) => {
                s.bucket = n as u8;
                Frame::ok()
            }
            Some(_) => Frame::error("ERR DB index is out of range"),
            None => Frame::error(NOT_INTEGER),
        },
        "hello" => hello(s, rest),
        "client" => client(s, rest),
        "command" => command(rest),
        "config" => config(rest),
        "info" => info(ap, s),
        "get" => match ap.read(bucket, &rest[0]).await {
            Ok(state) => state
                .and_then(|st| st.get(ap.now_ms()))
                .map_or(Frame::Null, Frame::bulk),
            Err(e) => ap_error(e),
        },
        "set" => set(ap, bucket, rest).await,
        "mset" => {
            if rest.len() % 2 != 0 {
                return wrong_arity(&cmd);
            }
            for pair in rest.chunks(2) {
                let op = Op::Set {
                    value: pair[1].to_vec(),
                    expiry: SetExpiry::Clear,
                };
                if let Err(e) = ap.write(bucket, &pair[0], op).await {
                    return ap_error(e);
                }
            }
            Frame::ok()
        }
        "mget" => {
            let mut values = Vec::with_capacity(rest.len());
            for key in rest {
                match ap.read(bucket, key).await {
                    Ok(state) => values.push(
                        state
                            .and_then(|st| st.get(ap.now_ms()))
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
                match live(ap, bucket, key).await {
                    Ok(Some(_)) => match ap.write(bucket, key, Op::Del).await {
                        Ok(_) => removed += 1,
                        Err(e) => return ap_error(e),
                    },
                    Ok(None) => {}
                    Err(e) => return ap_error(e),
                }
            }
            Frame::Integer(removed)
        }
        "exists" => {
            let mut n = 0;
            for key in rest {
                match live(ap, bucket, key).await {
                    Ok(found) => n += i64::from(found.is_some()),
                    Err(e) => return ap_error(e),
                }
            }
            Frame::Integer(n)
        }
        "incr" | "decr" | "incrby" | "decrby" => {
            let delta = match cmd.as_str() {
                "incr" => Some(1),
                "decr" => Some(-1),
                "incrby" => integer(&rest[1]),
                _ => integer(&rest[1]).and_then(i64::checked_neg),
            };
            let Some(delta) = delta else {
                return Frame::error(NOT_INTEGER);
            };
            match ap.write(bucket, &rest[0], Op::Incr(delta)).await {
                Ok(Some(n)) => Frame::Integer(n),
                Ok(None) => Frame::error("ERR the replica did not return the new value"),
                Err(e) => ap_error(e),
            }
        }
        "expire" | "pexpire" | "expireat" | "pexpireat" => {
            let Some(n) = integer(&rest[1]) else {
                return Frame::error(NOT_INTEGER);
            };
            let unit = match cmd.as_str() {
                "expire" => TimeUnit::Seconds,
                "pexpire" => TimeUnit::Millis,
                "expireat" => TimeUnit::UnixSeconds,
                _ => TimeUnit::UnixMillis,
            };
            let Some(at) = deadline_ms(unit, n, ap.now_ms()) else {
                return Frame::error(format!("ERR invalid expire time in '{cmd}' command"));
            };
            match live(ap, bucket, &rest[0]).await {
                Ok(Some(_)) => {
                    let op = Op::Expire(Expiry::At(at.max(0) as u64));
                    match ap.write(bucket, &rest[0], op).await {
                        Ok(_) => Frame::Integer(1),
                        Err(e) => ap_error(e),
                    }
                }
                Ok(None) => Frame::Integer(0),
                Err(e) => ap_error(e),
            }
        }
        "persist" => match live(ap, bucket, &rest[0]).await {
            Ok(Some(st)) if st.expires_at().is_some() => {
                match ap.write(bucket, &rest[0], Op::Expire(Expiry::Never)).await {
                    Ok(_) => Frame::Integer(1),
                    Err(e) => ap_error(e),
                }
            }
            Ok(_) => Frame::Integer(0),
            Err(e) => ap_error(e),
        },
        "ttl" | "pttl" => match live(ap, bucket, &rest[0]).await {
            Ok(None) => Frame::Integer(-2),
            Ok(Some(st)) => match st.expires_at() {
                None => Frame::Integer(-1),
                Some(at) => {
                    let left = at.saturating_sub(ap.now_ms()) as i64;
                    Frame::Integer(if cmd == "ttl" {
                        (left + 500) / 1000
                    } else {
                        left
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
async fn live(ap: &ApNode, bucket: u8, key: &[u8]) -> Result<Option<RedisString>, ApError> {
    let now = ap.now_ms();
    Ok(ap.read(bucket, key).await?.filter(|st| st.exists(now)))
}

async fn set(ap: &ApNode, bucket: u8, rest: &[Bytes]) -> Frame {
    let (key, value) = (&rest[0], &rest[1]);
    let mut expiry: Option<SetExpiry> = None;
    let mut i = 2;
    while i < rest.len() {
        let opt = String::from_utf8_lossy(&rest[i]).to_ascii_uppercase();
        match opt.as_str() {
            "NX" | "XX" | "GET" => {
                return Frame::error(format!(
                "ERR SET {opt} needs compare-and-set, which Concord's AP buckets do not have yet"
            ))
            }
            "KEEPTTL" if expiry.is_none() => {
                expiry = Some(SetExpiry::Keep);
                i += 1;
            }
            "EX" | "PX" | "EXAT" | "PXAT" if expiry.is_none() && i + 1 < rest.len() => {
                let Some(n) = integer(&rest[i + 1]) else {
                    return Frame::error(NOT_INTEGER);
                };
                let unit = match opt.as_str() {
                    "EX" => TimeUnit::Seconds,
                    "PX" => TimeUnit::Millis,
                    "EXAT" => TimeUnit::UnixSeconds,
                    _ => TimeUnit::UnixMillis,
                };
                match deadline_ms(unit, n, ap.now_ms()) {
                    Some(at) if n > 0 => expiry = Some(SetExpiry::At(at as u64)),
                    _ => return Frame::error("ERR invalid expire time in 'set' command"),
                }
                i += 2;
            }
            _ => return Frame::error(SYNTAX),
        }
    }
    let op = Op::Set {
        value: value.to_vec(),
        expiry: expiry.unwrap_or(SetExpiry::Clear),
    };
    match ap.write(bucket, key, op).await {
        Ok(_) => Frame::ok(),
        Err(e) => ap_error(e),
    }
}

fn hello(s: &mut Session, rest: &[Bytes]) -> Frame {
    let mut i = 0;
    if let Some(v) = rest.first() {
        match integer(v) {
            Some(2) => s.resp = Protocol::Resp2,
            Some(3) => s.resp = Protocol::Resp3,
            Some(_) => return Frame::error("NOPROTO unsupported protocol version"),
            None => return Frame::error("ERR Protocol version is not an integer or out of range"),
        }
        i = 1;
    }
    while i < rest.len() {
        let opt = String::from_utf8_lossy(&rest[i]).to_ascii_uppercase();
        match opt.as_str() {
            "SETNAME" if i + 1 < rest.len() => {
                s.name = Some(rest[i + 1].to_vec());
                i += 2;
            }
            "AUTH" if i + 2 < rest.len() => {
                return Frame::error(
                    "ERR AUTH is not supported yet: Concord's Redis port has no users",
                )
            }
            _ => return Frame::error(SYNTAX),
        }
    }
    Frame::Map(vec![
        (Frame::bulk("server"), Frame::bulk("redis")),
        (Frame::bulk("version"), Frame::bulk(REDIS_VERSION)),
        (
            Frame::bulk("proto"),
            Frame::Integer(match s.resp {
                Protocol::Resp2 => 2,
                Protocol::Resp3 => 3,
            }),
        ),
        (Frame::bulk("id"), Frame::Integer(s.id as i64)),
        (Frame::bulk("mode"), Frame::bulk("standalone")),
        (Frame::bulk("role"), Frame::bulk("master")),
        (Frame::bulk("modules"), Frame::Array(vec![])),
    ])
}

fn client(s: &mut Session, rest: &[Bytes]) -> Frame {
    let sub = String::from_utf8_lossy(&rest[0]).to_ascii_lowercase();
    match (sub.as_str(), rest.len()) {
        ("setname", 2) => {
            if rest[1].iter().any(|b| *b <= b' ' || *b > b'~') {
                return Frame::error(
                    "ERR Client names cannot contain spaces, newlines or special characters.",
                );
            }
            s.name = (!rest[1].is_empty()).then(|| rest[1].to_vec());
            Frame::ok()
        }
        ("getname", 1) => s.name.clone().map_or(Frame::Null, Frame::bulk),
        ("id", 1) => Frame::Integer(s.id as i64),
        // Libraries announce themselves; nothing to keep.
        ("setinfo", 3) => Frame::ok(),
        _ => Frame::error(format!(
            "ERR unknown subcommand or wrong number of arguments for '{sub}'. Try CLIENT HELP."
        )),
    }
}

fn command(rest: &[Bytes]) -> Frame {
    match rest
        .first()
        .map(|s| String::from_utf8_lossy(s).to_ascii_lowercase())
        .as_deref()
    {
        Some("count") => Frame::Integer(COMMANDS.len() as i64),
        // redis-cli asks for the docs at start; an empty answer is valid.
        Some("docs") => Frame::Map(vec![]),
        _ => Frame::Array(vec![]),
    }
}

/// The commands answered here.
const COMMANDS: &[&str] = &[
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
    "get",
    "set",
    "mset",
    "mget",
    "del",
    "unlink",
    "exists",
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
];

fn config(rest: &[Bytes]) -> Frame {
    let sub = String::from_utf8_lossy(&rest[0]).to_ascii_lowercase();
    match sub.as_str() {
        // No settings are exposed; unknown ones are accepted and ignored, as
        // Redis-compatible servers do.
        "get" => Frame::Map(vec![]),
        "set" if rest.len() >= 3 && rest.len() % 2 == 1 => Frame::ok(),
        _ => Frame::error(format!(
            "ERR unknown subcommand or wrong number of arguments for '{sub}'. Try CONFIG HELP."
        )),
    }
}

fn info(ap: &ApNode, s: &Session) -> Frame {
    let c = ap.config();
    let text = format!(
        "# Server\r\nredis_version:{REDIS_VERSION}\r\nredis_mode:standalone\r\nconcord_version:{}\r\nprocess_id:{}\r\n\r\n\
         # Clients\r\nclient_id:{}\r\n\r\n\
         # Replication\r\nrole:master\r\nconcord_n:{}\r\nconcord_r:{}\r\nconcord_w:{}\r\n\r\n\
         # Cluster\r\ncluster_enabled:0\r\n\r\n# Keyspace\r\n",
        env!("CARGO_PKG_VERSION"),
        std::process::id(),
        s.id,
        c.n,
        c.r,
        c.w,
    );
    Frame::bulk(text)
}
