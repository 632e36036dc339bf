//! Connection and server commands: `PING`, `ECHO`, `QUIT`, `RESET`, `SELECT`, `HELLO`,
//! `CLIENT`, `COMMAND`, `CONFIG`, `INFO`, `TIME`, `AUTH`, and Concord's own
//! `CONCORD.QUORUM`, which sets the connection's R and W, `CONCORD.BUCKET`, which
//! reads and sets bucket properties, and `CONCORD.SESSION`, which gives and takes session
//! tokens.

use bytes::Bytes;

use super::commands::{integer, COMMANDS, NOT_INTEGER, SYNTAX};
use super::{keyspace, Session};
use crate::ap::{
    Access, ApNode, BucketChange, BucketProps, Durability, SessionGuard, SessionToken, BUCKETS,
};
use crate::resp::{Frame, Protocol};

/// The Redis version Concord answers as (the commands follow its semantics).
pub const REDIS_VERSION: &str = "7.0.15";

/// Runs one connection or server command (its arity already checked).
pub async fn run(ap: &ApNode, s: &mut Session, cmd: &str, rest: &[Bytes]) -> Frame {
    let answer = answer(ap, s, cmd, rest).await;
    // These commands are what changes a connection's CLIENT LIST row.
    s.publish();
    answer
}

async fn answer(ap: &ApNode, s: &mut Session, cmd: &str, rest: &[Bytes]) -> Frame {
    match cmd {
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
            s.access = Access::default();
            s.session = None;
            s.multi = None;
            s.watch = None;
            s.name = None;
            s.client.lib_name.clear();
            s.client.lib_ver.clear();
            Frame::simple("RESET")
        }
        "select" => match integer(&rest[0]) {
            Some(n) if (0..i64::from(BUCKETS)).contains(&n) => {
                s.access.bucket = n as u8;
                Frame::ok()
            }
            Some(_) => Frame::error("ERR DB index is out of range"),
            None => Frame::error(NOT_INTEGER),
        },
        "hello" => hello(s, rest),
        "client" => client(s, rest),
        "command" => command(rest),
        "config" => config(rest),
        "info" => info(ap, s, rest).await,
        "time" => {
            let micros = ap.now_ms() as i64 * 1000;
            Frame::Array(vec![
                Frame::bulk((micros / 1_000_000).to_string()),
                Frame::bulk((micros % 1_000_000).to_string()),
            ])
        }
        "auth" => Frame::error(
            "ERR AUTH <password> called without any password configured for the default user. \
             Are you sure your configuration is correct?",
        ),
        "concord.quorum" => quorum(ap, s, rest),
        "concord.bucket" => bucket(ap, s, rest).await,
        "concord.session" => session(ap, s, rest),
        _ => Frame::error(format!("ERR unknown command '{cmd}'")),
    }
}

/// `CONCORD.SESSION [GET]` answers the connection's session token (starting a session
/// if it has none); `CONCORD.SESSION JOIN token` adds a token's history to the
/// connection's session (starting one); `CONCORD.SESSION END` ends it.
fn session(ap: &ApNode, s: &mut Session, rest: &[Bytes]) -> Frame {
    fn guard<'s>(ap: &ApNode, s: &'s mut Session) -> &'s SessionGuard {
        let guard = s.session.get_or_insert_with(|| ap.open_session());
        s.access.session = Some(guard.id());
        guard
    }
    let sub = rest.first().map(|a| a.to_ascii_lowercase());
    match (sub.as_deref(), rest.len()) {
        (None | Some(b"get"), 0 | 1) => Frame::bulk(guard(ap, s).token().encode()),
        (Some(b"join"), 2) => match SessionToken::decode(&rest[1]) {
            Ok(token) => {
                guard(ap, s).join(&token);
                Frame::ok()
            }
            Err(why) => Frame::error(format!("ERR invalid session token: {why}")),
        },
        (Some(b"end"), 1) => {
            s.session = None;
            s.access.session = None;
            Frame::ok()
        }
        _ => Frame::error("ERR syntax error: CONCORD.SESSION [GET] | JOIN token | END".to_string()),
    }
}

/// `CONCORD.QUORUM [R n] [W n] [DEFAULT]`: sets the connection's read and write quorums
/// (1 up to the bucket's replica count), or back to the bucket's with `DEFAULT`; answers
/// the quorums in force.
fn quorum(ap: &ApNode, s: &mut Session, rest: &[Bytes]) -> Frame {
    let props = ap.bucket(s.access.bucket);
    let n = i64::from(props.n_val);
    let mut access = s.access;
    let mut i = 0;
    while i < rest.len() {
        let opt = rest[i].to_ascii_lowercase();
        if opt == b"default" {
            access.r = None;
            access.w = None;
            i += 1;
            continue;
        }
        let Some(v) = rest.get(i + 1) else {
            return Frame::error(SYNTAX);
        };
        let value = match integer(v) {
            Some(x) if (1..=n).contains(&x) => x as u32,
            _ => {
                return Frame::error(format!(
                    "ERR invalid {} '{}': it must be an integer from 1 to the replica count ({n})",
                    String::from_utf8_lossy(&opt).to_ascii_uppercase(),
                    String::from_utf8_lossy(v)
                ))
            }
        };
        match opt.as_slice() {
            b"r" => access.r = Some(value),
            b"w" => access.w = Some(value),
            _ => return Frame::error(SYNTAX),
        }
        i += 2;
    }
    s.access = access;
    Frame::Map(vec![
        (Frame::bulk("n"), Frame::Integer(n)),
        (
            Frame::bulk("r"),
            Frame::Integer(i64::from(access.r.unwrap_or(props.r()))),
        ),
        (
            Frame::bulk("w"),
            Frame::Integer(i64::from(access.w.unwrap_or(props.w()))),
        ),
    ])
}

/// A bucket's properties as a map reply.
pub(crate) fn props_frame(bucket: u8, p: &BucketProps) -> Frame {
    let quorum = |explicit: Option<u32>, value: u32| match explicit {
        Some(v) => Frame::Integer(i64::from(v)),
        None => Frame::bulk(format!("quorum ({value})")),
    };
    Frame::Map(vec![
        (Frame::bulk("bucket"), Frame::Integer(i64::from(bucket))),
        (Frame::bulk("n_val"), Frame::Integer(i64::from(p.n_val))),
        (Frame::bulk("r"), quorum(p.r, p.r())),
        (Frame::bulk("w"), quorum(p.w, p.w())),
        (
            Frame::bulk("durability"),
            Frame::bulk(p.durability.as_str()),
        ),
        (
            Frame::bulk("siblings"),
            Frame::bulk(if p.siblings { "yes" } else { "no" }),
        ),
    ])
}

/// `CONCORD.BUCKET GET [db]`, `CONCORD.BUCKET LIST`, `CONCORD.BUCKET SET db [N_VAL n]
/// [R n|QUORUM] [W n|QUORUM] [DURABILITY fsync|async] [SIBLINGS yes|no]`: reads or changes bucket
/// properties (the selected database when `db` is left out of GET).
async fn bucket(ap: &ApNode, s: &Session, rest: &[Bytes]) -> Frame {
    let sub = String::from_utf8_lossy(&rest[0]).to_ascii_lowercase();
    let db = |arg: Option<&Bytes>| -> Result<u8, Frame> {
        match arg.map(|a| integer(a)) {
            None => Ok(s.access.bucket),
            Some(Some(n)) if (0..i64::from(BUCKETS)).contains(&n) => Ok(n as u8),
            Some(Some(_)) => Err(Frame::error("ERR DB index is out of range")),
            Some(None) => Err(Frame::error(NOT_INTEGER)),
        }
    };
    match sub.as_str() {
        "get" if rest.len() <= 2 => match db(rest.get(1)) {
            Ok(b) => props_frame(b, &ap.bucket(b)),
            Err(e) => e,
        },
        "list" if rest.len() == 1 => Frame::Array(
            (0..BUCKETS as u8)
                .map(|b| props_frame(b, &ap.bucket(b)))
                .collect(),
        ),
        "set" if rest.len() >= 2 => {
            let b = match db(rest.get(1)) {
                Ok(b) => b,
                Err(e) => return e,
            };
            let change = match bucket_change(&rest[2..]) {
                Ok(c) => c,
                Err(e) => return e,
            };
            match ap.change_bucket(b, change).await {
                Ok(p) => props_frame(b, &p),
                Err(e) => super::commands::ap_error(e),
            }
        }
        _ => Frame::error(format!(
            "ERR unknown subcommand or wrong number of arguments for '{sub}'. \
             Try CONCORD.BUCKET GET [db], LIST or SET db [N_VAL n] [R n|QUORUM] [W n|QUORUM] \
             [DURABILITY fsync|async]."
        )),
    }
}

/// The options of `CONCORD.BUCKET SET` as a change.
fn bucket_change(opts: &[Bytes]) -> Result<BucketChange, Frame> {
    let mut change = BucketChange::default();
    for pair in opts.chunks(2) {
        let [name, value] = pair else {
            return Err(Frame::error(SYNTAX));
        };
        let name = String::from_utf8_lossy(name).to_ascii_lowercase();
        let text = String::from_utf8_lossy(value).to_ascii_lowercase();
        let number = || {
            integer(value)
                .and_then(|v| u32::try_from(v).ok())
                .ok_or_else(|| Frame::error(NOT_INTEGER))
        };
        let quorum = || {
            if text == "quorum" {
                Ok(None)
            } else {
                number().map(Some)
            }
        };
        match name.as_str() {
            "n_val" => change.n_val = Some(number()?),
            "r" => change.r = Some(quorum()?),
            "w" => change.w = Some(quorum()?),
            "durability" => {
                change.durability = Some(
                    Durability::parse(&text)
                        .ok_or_else(|| Frame::error("ERR durability must be fsync or async"))?,
                )
            }
            "siblings" => {
                change.siblings = Some(match text.as_str() {
                    "yes" => true,
                    "no" => false,
                    _ => return Err(Frame::error("ERR siblings must be yes or no")),
                })
            }
            _ => return Err(Frame::error(SYNTAX)),
        }
    }
    Ok(change)
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
        ("setinfo", 3) => {
            let value = rest[2].to_vec();
            if value.iter().any(|b| *b <= b' ' || *b > b'~') {
                return Frame::error(
                    "ERR lib-name and lib-ver cannot contain spaces, newlines or special characters.",
                );
            }
            match String::from_utf8_lossy(&rest[1])
                .to_ascii_lowercase()
                .as_str()
            {
                "lib-name" => s.client.lib_name = value,
                "lib-ver" => s.client.lib_ver = value,
                other => {
                    return Frame::error(format!("ERR Unrecognized option '{other}'"));
                }
            }
            Frame::ok()
        }
        ("info", 1) => {
            s.publish();
            text(s.client.line(s.id))
        }
        ("list", _) => match client_list_ids(&rest[1..]) {
            Ok(ids) => text(super::clients::list(ids.as_deref())),
            Err(e) => e,
        },
        ("no-evict" | "no-touch", 2) => match rest[1].to_ascii_lowercase().as_slice() {
            b"on" | b"off" => Frame::ok(),
            _ => Frame::error(SYNTAX),
        },
        _ => Frame::error(format!(
            "ERR unknown subcommand or wrong number of arguments for '{sub}'. Try CLIENT HELP."
        )),
    }
}

/// Text as Redis answers `CLIENT INFO` and `CLIENT LIST`: verbatim in RESP3, bulk in RESP2.
fn text(t: String) -> Frame {
    Frame::Verbatim {
        format: *b"txt",
        text: t.into(),
    }
}

/// The ids `CLIENT LIST [TYPE normal] [ID id ...]` asks for (`None`: all).
fn client_list_ids(opts: &[Bytes]) -> Result<Option<Vec<u64>>, Frame> {
    match opts {
        [] => Ok(None),
        [t, kind] if t.eq_ignore_ascii_case(b"type") => {
            match kind.to_ascii_lowercase().as_slice() {
                b"normal" => Ok(None),
                b"master" | b"replica" | b"slave" | b"pubsub" => Ok(Some(Vec::new())),
                _ => Err(Frame::error(format!(
                    "ERR Unknown client type '{}'",
                    String::from_utf8_lossy(kind)
                ))),
            }
        }
        [i, ids @ ..] if i.eq_ignore_ascii_case(b"id") && !ids.is_empty() => ids
            .iter()
            .map(|id| match integer(id) {
                Some(n) if n > 0 => Ok(n as u64),
                _ => Err(Frame::error("ERR Invalid client ID")),
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some),
        _ => Err(Frame::error(SYNTAX)),
    }
}

fn command(rest: &[Bytes]) -> Frame {
    match rest
        .first()
        .map(|s| String::from_utf8_lossy(s).to_ascii_lowercase())
        .as_deref()
    {
        Some("count") => Frame::Integer(COMMANDS.len() as i64),
        Some("list") => Frame::Array(COMMANDS.iter().map(|c| Frame::bulk(*c)).collect()),
        // redis-cli asks for the docs at start; an empty answer is valid.
        Some("docs") => Frame::Map(vec![]),
        _ => Frame::Array(vec![]),
    }
}

/// The settings `CONFIG GET` shows: what Concord's Redis port does, in Redis's terms.
/// Every write is fsync'd on W replicas before it is acknowledged, and nothing is
/// snapshotted to an RDB file.
const SETTINGS: &[(&str, &str)] = &[
    ("appendfsync", "always"),
    ("appendonly", "yes"),
    ("databases", "16"),
    ("maxclients", "10000"),
    ("maxmemory", "0"),
    ("proto-max-bulk-len", "536870912"),
    ("save", ""),
];

fn config(rest: &[Bytes]) -> Frame {
    let sub = String::from_utf8_lossy(&rest[0]).to_ascii_lowercase();
    match sub.as_str() {
        "get" if rest.len() >= 2 => {
            let mut out = Vec::new();
            for (name, value) in SETTINGS {
                if rest[1..]
                    .iter()
                    .any(|p| keyspace::glob(&p.to_ascii_lowercase(), name.as_bytes()))
                {
                    out.push((Frame::bulk(*name), Frame::bulk(*value)));
                }
            }
            Frame::Map(out)
        }
        // Settings are accepted and ignored, as Redis-compatible servers do.
        "set" if rest.len() >= 3 && rest.len() % 2 == 1 => Frame::ok(),
        "resetstat" if rest.len() == 1 => Frame::ok(),
        _ => Frame::error(format!(
            "ERR unknown subcommand or wrong number of arguments for '{sub}'. Try CONFIG HELP."
        )),
    }
}

async fn info(ap: &ApNode, s: &Session, rest: &[Bytes]) -> Frame {
    let c = ap.bucket(s.access.bucket);
    let wanted = |section: &str| {
        rest.is_empty()
            || rest.iter().any(|r| {
                let r = r.to_ascii_lowercase();
                r == b"all" || r == b"everything" || r == b"default" || r == section.as_bytes()
            })
    };
    let mut text = String::new();
    if wanted("server") {
        text.push_str(&format!(
            "# Server\r\nredis_version:{REDIS_VERSION}\r\nredis_mode:standalone\r\n\
             concord_version:{}\r\nprocess_id:{}\r\n\r\n",
            env!("CARGO_PKG_VERSION"),
            std::process::id(),
        ));
    }
    if wanted("clients") {
        text.push_str(&format!("# Clients\r\nclient_id:{}\r\n\r\n", s.id));
    }
    if wanted("replication") {
        text.push_str(&format!(
            "# Replication\r\nrole:master\r\nconcord_n:{}\r\nconcord_r:{}\r\nconcord_w:{}\r\n\r\n",
            c.n_val,
            s.access.r.unwrap_or(c.r()),
            s.access.w.unwrap_or(c.w()),
        ));
    }
    if wanted("cluster") {
        text.push_str("# Cluster\r\ncluster_enabled:0\r\n\r\n");
    }
    if wanted("keyspace") {
        text.push_str(&keyspace::info_keyspace(ap).await);
    }
    Frame::bulk(text)
}
