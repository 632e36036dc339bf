//! The Redis commands Concord answers, with Redis 7's replies and error texts. Data
//! commands go through the AP coordinator ([`ApNode::read`], [`ApNode::write`]); a request
//! that cannot reach its quorum answers `TRYAGAIN` with the reason (for a write: it may or
//! may not have been stored).

use concord_core::crdt::{Expiry, RedisString, SetExpiry};

use super::resp::Reply;
use super::Session;
use crate::ap::{ApError, ApNode, Op, BUCKETS};

/// The Redis version Concord answers as (the commands follow its semantics).
pub const REDIS_VERSION: &str = "7.0.15";

const NOT_INTEGER: &str = "ERR value is not an integer or out of range";
const SYNTAX: &str = "ERR syntax error";

fn wrong_arity(cmd: &str) -> Reply {
    Reply::error(format!("ERR wrong number of arguments for '{cmd}' command"))
}

fn unknown(name: &[u8], args: &[Vec<u8>]) -> Reply {
    let mut text = format!(
        "ERR unknown command '{}', with args beginning with: ",
        String::from_utf8_lossy(name)
    );
    for a in args.iter().take(128) {
        text.push_str(&format!("'{}' ", String::from_utf8_lossy(a)));
    }
    Reply::error(text)
}

fn ap_error(e: ApError) -> Reply {
    match e {
        ApError::Refused(text) => Reply::error(text),
        ApError::Unavailable(why) => Reply::error(format!("TRYAGAIN {why}")),
        ApError::Store(why) => Reply::error(format!("ERR {why}")),
    }
}

fn integer(arg: &[u8]) -> Option<i64> {
    concord_core::crdt::parse_integer(arg)
}

/// Runs one request.
pub async fn run(ap: &ApNode, s: &mut Session, args: Vec<Vec<u8>>) -> Reply {
    let Some((name, rest)) = args.split_first() else {
        return Reply::ok();
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
            None => Reply::Simple("PONG".into()),
            Some(m) => Reply::bulk(m.clone()),
        },
        "echo" => Reply::bulk(rest[0].clone()),
        "quit" => {
            s.closing = true;
            Reply::ok()
        }
        "reset" => {
            s.resp = 2;
            s.bucket = 0;
            s.name = None;
            Reply::Simple("RESET".into())
        }
        "select" => match integer(&rest[0]) {
            Some(n) if (0..i64::from(BUCKETS)).contains(&n) => {
                s.bucket = n as u8;
                Reply::ok()
            }
            Some(_) => Reply::error("ERR DB index is out of range"),
            None => Reply::error(NOT_INTEGER),
        },
        "hello" => hello(s, rest),
        "client" => client(s, rest),
        "command" => command(rest),
        "config" => config(rest),
        "info" => info(ap, s),
        "get" => match ap.read(bucket, &rest[0]).await {
            Ok(state) => state
                .and_then(|st| st.get(ap.now_ms()))
                .map_or(Reply::Null, Reply::Bulk),
            Err(e) => ap_error(e),
        },
        "set" => set(ap, bucket, rest).await,
        "mset" => {
            if rest.len() % 2 != 0 {
                return wrong_arity(&cmd);
            }
            for pair in rest.chunks(2) {
                let op = Op::Set {
                    value: pair[1].clone(),
                    expiry: SetExpiry::Clear,
                };
                if let Err(e) = ap.write(bucket, &pair[0], op).await {
                    return ap_error(e);
                }
            }
            Reply::ok()
        }
        "mget" => {
            let mut values = Vec::with_capacity(rest.len());
            for key in rest {
                match ap.read(bucket, key).await {
                    Ok(state) => values.push(
                        state
                            .and_then(|st| st.get(ap.now_ms()))
                            .map_or(Reply::Null, Reply::Bulk),
                    ),
                    Err(e) => return ap_error(e),
                }
            }
            Reply::Array(values)
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
            Reply::Integer(removed)
        }
        "exists" => {
            let mut n = 0;
            for key in rest {
                match live(ap, bucket, key).await {
                    Ok(found) => n += i64::from(found.is_some()),
                    Err(e) => return ap_error(e),
                }
            }
            Reply::Integer(n)
        }
        "incr" | "decr" | "incrby" | "decrby" => {
            let delta = match cmd.as_str() {
                "incr" => Some(1),
                "decr" => Some(-1),
                "incrby" => integer(&rest[1]),
                _ => integer(&rest[1]).and_then(i64::checked_neg),
            };
            let Some(delta) = delta else {
                return Reply::error(NOT_INTEGER);
            };
            match ap.write(bucket, &rest[0], Op::Incr(delta)).await {
                Ok(Some(n)) => Reply::Integer(n),
                Ok(None) => Reply::error("ERR the replica did not return the new value"),
                Err(e) => ap_error(e),
            }
        }
        "expire" | "pexpire" | "expireat" | "pexpireat" => {
            let Some(n) = integer(&rest[1]) else {
                return Reply::error(NOT_INTEGER);
            };
            let unit = match cmd.as_str() {
                "expire" => TimeUnit::Seconds,
                "pexpire" => TimeUnit::Millis,
                "expireat" => TimeUnit::UnixSeconds,
                _ => TimeUnit::UnixMillis,
            };
            let Some(at) = deadline_ms(unit, n, ap.now_ms()) else {
                return Reply::error(format!("ERR invalid expire time in '{cmd}' command"));
            };
            match live(ap, bucket, &rest[0]).await {
                Ok(Some(_)) => {
                    let op = Op::Expire(Expiry::At(at.max(0) as u64));
                    match ap.write(bucket, &rest[0], op).await {
                        Ok(_) => Reply::Integer(1),
                        Err(e) => ap_error(e),
                    }
                }
                Ok(None) => Reply::Integer(0),
                Err(e) => ap_error(e),
            }
        }
        "persist" => match live(ap, bucket, &rest[0]).await {
            Ok(Some(st)) if st.expires_at().is_some() => {
                match ap.write(bucket, &rest[0], Op::Expire(Expiry::Never)).await {
                    Ok(_) => Reply::Integer(1),
                    Err(e) => ap_error(e),
                }
            }
            Ok(_) => Reply::Integer(0),
            Err(e) => ap_error(e),
        },
        "ttl" | "pttl" => match live(ap, bucket, &rest[0]).await {
            Ok(None) => Reply::Integer(-2),
            Ok(Some(st)) => match st.expires_at() {
                None => Reply::Integer(-1),
                Some(at) => {
                    let left = at.saturating_sub(ap.now_ms()) as i64;
                    Reply::Integer(if cmd == "ttl" {
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

async fn set(ap: &ApNode, bucket: u8, rest: &[Vec<u8>]) -> Reply {
    let (key, value) = (&rest[0], &rest[1]);
    let mut expiry: Option<SetExpiry> = None;
    let mut i = 2;
    while i < rest.len() {
        let opt = String::from_utf8_lossy(&rest[i]).to_ascii_uppercase();
        match opt.as_str() {
            "NX" | "XX" | "GET" => {
                return Reply::error(format!(
                "ERR SET {opt} needs compare-and-set, which Concord's AP buckets do not have yet"
            ))
            }
            "KEEPTTL" if expiry.is_none() => {
                expiry = Some(SetExpiry::Keep);
                i += 1;
            }
            "EX" | "PX" | "EXAT" | "PXAT" if expiry.is_none() && i + 1 < rest.len() => {
                let Some(n) = integer(&rest[i + 1]) else {
                    return Reply::error(NOT_INTEGER);
                };
                let unit = match opt.as_str() {
                    "EX" => TimeUnit::Seconds,
                    "PX" => TimeUnit::Millis,
                    "EXAT" => TimeUnit::UnixSeconds,
                    _ => TimeUnit::UnixMillis,
                };
                match deadline_ms(unit, n, ap.now_ms()) {
                    Some(at) if n > 0 => expiry = Some(SetExpiry::At(at as u64)),
                    _ => return Reply::error("ERR invalid expire time in 'set' command"),
                }
                i += 2;
            }
            _ => return Reply::error(SYNTAX),
        }
    }
    let op = Op::Set {
        value: value.clone(),
        expiry: expiry.unwrap_or(SetExpiry::Clear),
    };
    match ap.write(bucket, key, op).await {
        Ok(_) => Reply::ok(),
        Err(e) => ap_error(e),
    }
}

fn hello(s: &mut Session, rest: &[Vec<u8>]) -> Reply {
    let mut i = 0;
    if let Some(v) = rest.first() {
        match integer(v) {
            Some(2) => s.resp = 2,
            Some(3) => s.resp = 3,
            Some(_) => return Reply::error("NOPROTO unsupported protocol version"),
            None => return Reply::error("ERR Protocol version is not an integer or out of range"),
        }
        i = 1;
    }
    while i < rest.len() {
        let opt = String::from_utf8_lossy(&rest[i]).to_ascii_uppercase();
        match opt.as_str() {
            "SETNAME" if i + 1 < rest.len() => {
                s.name = Some(rest[i + 1].clone());
                i += 2;
            }
            "AUTH" if i + 2 < rest.len() => {
                return Reply::error(
                    "ERR AUTH is not supported yet: Concord's Redis port has no users",
                )
            }
            _ => return Reply::error(SYNTAX),
        }
    }
    Reply::Map(vec![
        (Reply::bulk("server"), Reply::bulk("redis")),
        (Reply::bulk("version"), Reply::bulk(REDIS_VERSION)),
        (Reply::bulk("proto"), Reply::Integer(i64::from(s.resp))),
        (Reply::bulk("id"), Reply::Integer(s.id as i64)),
        (Reply::bulk("mode"), Reply::bulk("standalone")),
        (Reply::bulk("role"), Reply::bulk("master")),
        (Reply::bulk("modules"), Reply::Array(vec![])),
    ])
}

fn client(s: &mut Session, rest: &[Vec<u8>]) -> Reply {
    let sub = String::from_utf8_lossy(&rest[0]).to_ascii_lowercase();
    match (sub.as_str(), rest.len()) {
        ("setname", 2) => {
            if rest[1].iter().any(|b| *b <= b' ' || *b > b'~') {
                return Reply::error(
                    "ERR Client names cannot contain spaces, newlines or special characters.",
                );
            }
            s.name = (!rest[1].is_empty()).then(|| rest[1].clone());
            Reply::ok()
        }
        ("getname", 1) => s.name.clone().map_or(Reply::Null, Reply::Bulk),
        ("id", 1) => Reply::Integer(s.id as i64),
        // Libraries announce themselves; nothing to keep.
        ("setinfo", 3) => Reply::ok(),
        _ => Reply::error(format!(
            "ERR unknown subcommand or wrong number of arguments for '{sub}'. Try CLIENT HELP."
        )),
    }
}

fn command(rest: &[Vec<u8>]) -> Reply {
    match rest
        .first()
        .map(|s| String::from_utf8_lossy(s).to_ascii_lowercase())
        .as_deref()
    {
        Some("count") => Reply::Integer(COMMANDS.len() as i64),
        // redis-cli asks for the docs at start; an empty answer is valid.
        Some("docs") => Reply::Map(vec![]),
        _ => Reply::Array(vec![]),
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

fn config(rest: &[Vec<u8>]) -> Reply {
    let sub = String::from_utf8_lossy(&rest[0]).to_ascii_lowercase();
    match sub.as_str() {
        // No settings are exposed; unknown ones are accepted and ignored, as
        // Redis-compatible servers do.
        "get" => Reply::Map(vec![]),
        "set" if rest.len() >= 3 && rest.len() % 2 == 1 => Reply::ok(),
        _ => Reply::error(format!(
            "ERR unknown subcommand or wrong number of arguments for '{sub}'. Try CONFIG HELP."
        )),
    }
}

fn info(ap: &ApNode, s: &Session) -> Reply {
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
    Reply::bulk(text)
}
