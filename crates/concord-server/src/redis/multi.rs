//! `WATCH`, `MULTI`, `EXEC`, `DISCARD`, `UNWATCH` for transactions on one key.
//!
//! A transaction's commands are queued (`+QUEUED`) and run at `EXEC` inside one
//! compare-and-set of the key ([`ApNode::cas`]): Paxos among the key's owners hands over
//! the key's current state; the commands run on it one after another, here, as Redis would
//! run them; the resulting state, if it changed, is what the compare-and-set writes. So
//! the transaction is atomic and isolated with respect to every other compare-and-set and
//! transaction of the key, and linearizable with them.
//!
//! `WATCH key` reads the key through Paxos and remembers what it held; `EXEC` answers nil
//! and runs nothing when the key has changed since (any write, or its expiry). One key per
//! transaction: the watched key, if any, and every key its commands name must be the
//! same; a command naming another key, or one not in [`COMMANDS`], is refused when queued
//! and the transaction then ends with `EXECABORT`, as for any command error at queue time.

use bytes::Bytes;
use concord_core::crdt::{RedisValue, Seen, SetExpiry, Stamp, ValueError};
use concord_raft::NodeId;

use super::commands::{
    ap_error, incr_delta, integer, set_on, set_request, string_value, type_name, Cas, NOT_INTEGER,
};
use super::sets::{bulk_set, wrong_type};
use super::Session;
use crate::ap::cas::Decision;
use crate::ap::{ApError, ApNode};
use crate::resp::Frame;

/// The commands a transaction may hold: the data commands of one key this module runs on
/// a state, and `PING`/`ECHO`.
pub const COMMANDS: &[&str] = &[
    "ping",
    "echo",
    "get",
    "set",
    "setnx",
    "getset",
    "getdel",
    "strlen",
    "append",
    "incr",
    "decr",
    "incrby",
    "decrby",
    "del",
    "unlink",
    "exists",
    "type",
    "ttl",
    "pttl",
    "sadd",
    "srem",
    "smembers",
    "sismember",
    "scard",
    "hset",
    "hmset",
    "hget",
    "hdel",
    "hgetall",
    "hincrby",
    "hlen",
    "hexists",
];

/// The commands that act on a transaction rather than being queued in it.
pub const CONTROL: &[&str] = &[
    "multi", "exec", "discard", "watch", "unwatch", "quit", "reset",
];

/// A transaction being queued.
#[derive(Debug, Default)]
pub struct Transaction {
    /// The commands, lower-case name first.
    queued: Vec<(String, Vec<Bytes>)>,
    /// The key they act on.
    key: Option<Bytes>,
    /// A command was refused while queueing: `EXEC` aborts.
    failed: bool,
}

impl Transaction {
    /// Marks the transaction to abort at `EXEC` (a command refused while queueing).
    pub fn fail(&mut self) {
        self.failed = true;
    }
}

/// A watched key and what it held when watched.
#[derive(Debug)]
pub struct Watch {
    bucket: u8,
    key: Bytes,
    seen: Seen,
    existed: bool,
}

/// The keys a queued command names.
fn keys_of<'a>(cmd: &str, args: &'a [Bytes]) -> &'a [Bytes] {
    match cmd {
        "ping" | "echo" => &[],
        "del" | "unlink" | "exists" => args,
        _ => &args[..1],
    }
}

/// Queues a command of a transaction (its arity checked): `+QUEUED`, or the error that
/// will make `EXEC` abort.
pub fn queue(s: &mut Session, cmd: &str, args: &[Bytes]) -> Frame {
    let watched = s.watch.as_ref().map(|w| w.key.clone());
    let Some(t) = s.multi.as_mut() else {
        return Frame::error("ERR not in a transaction");
    };
    if !COMMANDS.contains(&cmd) {
        t.fail();
        return Frame::error(format!(
            "ERR '{cmd}' cannot run inside MULTI on AP buckets (a transaction runs the \
             string, set and hash commands of one key)"
        ));
    }
    for key in keys_of(cmd, args) {
        let expected = t.key.clone().or_else(|| watched.clone());
        match expected {
            Some(k) if k != *key => {
                t.fail();
                return Frame::error(
                    "ERR a transaction on AP buckets reads and writes one key (the watched \
                     key, if any): this command names another",
                );
            }
            _ => t.key = Some(key.clone()),
        }
    }
    t.queued.push((cmd.to_string(), args.to_vec()));
    Frame::simple("QUEUED")
}

/// `MULTI`, `EXEC`, `DISCARD`, `WATCH`, `UNWATCH`.
pub async fn run(ap: &ApNode, s: &mut Session, cmd: &str, args: &[Bytes]) -> Frame {
    match cmd {
        "multi" if s.multi.is_some() => Frame::error("ERR MULTI calls can not be nested"),
        "multi" => {
            s.multi = Some(Transaction::default());
            Frame::ok()
        }
        "discard" => match s.multi.take() {
            Some(_) => {
                s.watch = None;
                Frame::ok()
            }
            None => Frame::error("ERR DISCARD without MULTI"),
        },
        "unwatch" => {
            s.watch = None;
            Frame::ok()
        }
        "watch" if s.multi.is_some() => Frame::error("ERR WATCH inside MULTI is not allowed"),
        "watch" => watch(ap, s, args).await,
        "exec" => match s.multi.take() {
            Some(t) => exec(ap, s, t).await,
            None => Frame::error("ERR EXEC without MULTI"),
        },
        _ => Frame::error(format!("ERR unknown command '{cmd}'")),
    }
}

async fn watch(ap: &ApNode, s: &mut Session, keys: &[Bytes]) -> Frame {
    let bucket = s.access.bucket;
    let key = &keys[0];
    let same = |k: &Bytes| k == key;
    let again = s
        .watch
        .as_ref()
        .is_some_and(|w| w.bucket == bucket && same(&w.key));
    if !keys.iter().all(same) || (s.watch.is_some() && !again) {
        return Frame::error(
            "ERR AP buckets watch one key per transaction (each key is its own Paxos \
             instance)",
        );
    }
    if again {
        return Frame::ok();
    }
    let now_ms = ap.now_ms();
    let read = ap
        .cas(s.access, key, |current, _, _| Decision {
            write: None,
            answer: current.map_or((Seen::default(), false), |c| (c.seen(), c.exists(now_ms))),
        })
        .await;
    match read {
        Ok(((seen, existed), _)) => {
            s.watch = Some(Watch {
                bucket,
                key: key.clone(),
                seen,
                existed,
            });
            Frame::ok()
        }
        Err(e) => ap_error(e),
    }
}

async fn exec(ap: &ApNode, s: &mut Session, t: Transaction) -> Frame {
    let watch = s.watch.take();
    if t.failed {
        return Frame::error("EXECABORT Transaction discarded because of previous errors.");
    }
    if watch.as_ref().is_some_and(|w| w.bucket != s.access.bucket) {
        return Frame::error(
            "EXECABORT Transaction discarded: the watched key is in another bucket (a \
             transaction on AP buckets is one key)",
        );
    }
    let Some(key) = t
        .key
        .clone()
        .or_else(|| watch.as_ref().map(|w| w.key.clone()))
    else {
        // Nothing but PING and ECHO.
        let mut none = RedisValue::new();
        let now_ms = ap.now_ms();
        let replies = t
            .queued
            .iter()
            .map(|(cmd, args)| apply(ap, &mut none, cmd, args, (0, NodeId(0)), NodeId(0), now_ms));
        return Frame::Array(replies.collect());
    };
    let now_ms = ap.now_ms();
    let outcome = ap
        .cas(s.access, &key, |current, stamp, actor| {
            if let Some(w) = &watch {
                let seen = current.map_or_else(Seen::default, RedisValue::seen);
                let exists = current.is_some_and(|c| c.exists(now_ms));
                if seen != w.seen || (w.existed && !exists) {
                    return Decision {
                        write: None,
                        answer: Frame::NullArray,
                    };
                }
            }
            let before = current.cloned().unwrap_or_default();
            let mut state = before.clone();
            let replies = t.queued.iter().enumerate().map(|(i, (cmd, args))| {
                let at = (stamp.0.saturating_add(i as u64), stamp.1);
                apply(ap, &mut state, cmd, args, at, actor, now_ms)
            });
            let replies = Frame::Array(replies.collect());
            Decision {
                write: (state != before).then_some(state),
                answer: replies,
            }
        })
        .await;
    match outcome {
        Ok((answer, _)) => answer,
        Err(e) => ap_error(e),
    }
}

fn refused(e: ValueError) -> Frame {
    ap_error(ApError::from(e))
}

/// Runs one queued command on `state` at `now_ms`, stamped `stamp` by `actor`: its reply.
fn apply(
    ap: &ApNode,
    state: &mut RedisValue,
    cmd: &str,
    args: &[Bytes],
    stamp: Stamp,
    actor: NodeId,
    now_ms: u64,
) -> Frame {
    let exists = state.exists(now_ms);
    let string = || string_value(Some(state), now_ms);
    let int = |f: Result<i64, ValueError>| match f {
        Ok(n) => Frame::Integer(n),
        Err(e) => refused(e),
    };
    let list = |from: &[Bytes]| from.iter().map(|b| b.to_vec()).collect::<Vec<_>>();
    match cmd {
        "ping" => args
            .first()
            .map_or(Frame::simple("PONG"), |m| Frame::bulk(m.clone())),
        "echo" => Frame::bulk(args[0].clone()),
        "get" => match string() {
            Ok(v) => v.map_or(Frame::Null, Frame::bulk),
            Err(e) => e,
        },
        "strlen" => match string() {
            Ok(v) => Frame::Integer(v.map_or(0, |v| v.len() as i64)),
            Err(e) => e,
        },
        "set" | "setnx" | "getset" => {
            let (expiry, cas) = match cmd {
                "set" => match set_request(ap, args) {
                    Ok(x) => x,
                    Err(e) => return e,
                },
                "setnx" => (SetExpiry::Clear, Cas::NX),
                _ => (SetExpiry::Clear, Cas::GET),
            };
            let (next, answer) = set_on(Some(state), &args[1], expiry, &cas, stamp, actor, now_ms);
            let wrote = next.is_some();
            if let Some(next) = next {
                *state = next;
            }
            let answer = answer.unwrap_or_else(|e| e);
            match cmd {
                "setnx" => Frame::Integer(i64::from(wrote)),
                _ => answer,
            }
        }
        "getdel" => match string() {
            Ok(Some(v)) => {
                state.delete(stamp);
                Frame::bulk(v)
            }
            Ok(None) => Frame::Null,
            Err(e) => e,
        },
        "append" => match string() {
            Ok(old) => {
                let mut v = old.unwrap_or_default();
                v.extend_from_slice(&args[1]);
                let len = v.len() as i64;
                let keep = if exists {
                    SetExpiry::Keep
                } else {
                    SetExpiry::Clear
                };
                state.set(v, stamp, actor, keep);
                Frame::Integer(len)
            }
            Err(e) => e,
        },
        "incr" | "decr" | "incrby" | "decrby" => match incr_delta(cmd, args) {
            Ok(d) => int(state.incr(d, actor, stamp, now_ms)),
            Err(e) => e,
        },
        "del" | "unlink" => {
            // Every key named is the transaction's one key: deleted once.
            if exists {
                state.delete(stamp);
            }
            Frame::Integer(i64::from(exists))
        }
        "exists" => Frame::Integer(if exists { args.len() as i64 } else { 0 }),
        "type" => Frame::simple(type_name(Some(state), now_ms)),
        "ttl" | "pttl" => Frame::Integer(match (exists, state.expires_at()) {
            (false, _) => -2,
            (true, None) => -1,
            (true, Some(at)) => {
                let ms = at.saturating_sub(now_ms) as i64;
                if cmd == "ttl" {
                    (ms + 500) / 1000
                } else {
                    ms
                }
            }
        }),
        "sadd" => int(state.sadd(&list(&args[1..]), actor, stamp, now_ms)),
        "srem" => int(state.srem(&list(&args[1..]), stamp, now_ms)),
        "smembers" => match state.members(now_ms) {
            Ok(m) => bulk_set(m.into_iter().map(<[u8]>::to_vec).collect::<Vec<_>>()),
            Err(e) => refused(e),
        },
        "scard" => match state.members(now_ms) {
            Ok(m) => Frame::Integer(m.len() as i64),
            Err(e) => refused(e),
        },
        "sismember" => match state.is_member(&args[1], now_ms) {
            Ok(found) => Frame::Integer(i64::from(found)),
            Err(_) => wrong_type(),
        },
        "hset" | "hmset" => {
            if args.len().is_multiple_of(2) {
                return super::commands::wrong_arity(cmd);
            }
            let pairs: Vec<(Vec<u8>, Vec<u8>)> = args[1..]
                .chunks(2)
                .map(|p| (p[0].to_vec(), p[1].to_vec()))
                .collect();
            match state.hset(&pairs, actor, stamp, now_ms) {
                Ok(_) if cmd == "hmset" => Frame::ok(),
                other => int(other),
            }
        }
        "hget" => match state.hfield(&args[1], now_ms) {
            Ok(v) => v.map_or(Frame::Null, Frame::bulk),
            Err(e) => refused(e),
        },
        "hexists" => match state.hfield(&args[1], now_ms) {
            Ok(v) => Frame::Integer(i64::from(v.is_some())),
            Err(e) => refused(e),
        },
        "hdel" => int(state.hdel(&list(&args[1..]), stamp, now_ms)),
        "hgetall" | "hlen" => match state.hfields(now_ms) {
            Ok(f) if cmd == "hlen" => Frame::Integer(f.len() as i64),
            Ok(f) => Frame::Map(
                f.into_iter()
                    .map(|(k, v)| (Frame::bulk(k), Frame::bulk(v)))
                    .collect(),
            ),
            Err(e) => refused(e),
        },
        "hincrby" => match integer(&args[2]) {
            Some(d) => int(state.hincrby(&args[1], d, actor, stamp, now_ms)),
            None => Frame::error(NOT_INTEGER),
        },
        _ => Frame::error(format!("ERR '{cmd}' cannot run inside MULTI")),
    }
}
