//! Redis's hash commands over AP buckets: each hash is one key whose state holds an
//! observed-remove map of fields, each field a last-write-wins register with a counter
//! ([`RedisValue`]; `docs/ap.md` has the conflict table).
//!
//! Reads (`HGET`, `HMGET`, `HGETALL`, `HKEYS`, `HVALS`, `HLEN`, `HEXISTS`, `HSTRLEN`,
//! `HSCAN`, `HRANDFIELD`) answer from the join of R replicas. Writes read the key at R
//! first and give what they read to the coordinating replica as the base of the write, as
//! the set commands do: `HDEL` removes every write of the field those replicas had seen,
//! the counts answered are counted against that join, and `HSETNX` checks the field there
//! (not atomically with other writers: compare-and-set comes with Paxos). `HINCRBY` adds to
//! the field's counter, so concurrent increments all count; `HINCRBYFLOAT` writes the sum
//! it computed, as `INCRBYFLOAT` does for strings.

use bytes::Bytes;
use concord_core::crdt::{Kind, RedisValue};

use super::commands::{
    ap_error, format_float, integer, parse_float, wrong_arity, NOT_FLOAT, NOT_INTEGER, SYNTAX,
};
use super::keyspace::{collection_scan_options, glob, parse_cursor};
use super::sets::{choose_distinct, empty_scan, random_below, random_count, too_many, wrong_type};
use crate::ap::hash_page;
use crate::ap::{Access, ApNode, Op};
use crate::resp::{Frame, Protocol};

/// Hashes up to this many fields answer `HSCAN` in one reply, as Redis answers its small
/// (listpack) hashes.
const SCAN_ALL_UP_TO: usize = 128;

/// The key's state as R replicas answered it, refused when it holds another type.
async fn state(ap: &ApNode, at: Access, key: &[u8]) -> Result<Option<RedisValue>, Frame> {
    let st = ap.read(at, key).await.map_err(ap_error)?;
    let now = ap.now_ms();
    if st
        .as_ref()
        .and_then(|s| s.kind(now))
        .is_some_and(|k| k != Kind::Hash)
    {
        return Err(wrong_type());
    }
    Ok(st)
}

/// The hash's fields and values (empty when it does not exist), or the error reply.
async fn fields(
    ap: &ApNode,
    at: Access,
    key: &[u8],
) -> Result<std::collections::BTreeMap<Vec<u8>, Vec<u8>>, Frame> {
    let now = ap.now_ms();
    match state(ap, at, key).await? {
        None => Ok(Default::default()),
        Some(st) => st.hfields(now).map_err(|_| wrong_type()),
    }
}

/// A write over what was read: the coordinating replica joins `base` first.
async fn write(ap: &ApNode, at: Access, key: &[u8], op: Op, base: Option<RedisValue>) -> Frame {
    match ap.write_after(at, key, op, base).await {
        Ok(Some(n)) => Frame::Integer(n),
        Ok(None) => Frame::error("ERR the replica did not return the answer"),
        Err(e) => ap_error(e),
    }
}

/// Runs one hash command (`cmd` lower-case, arity already checked).
pub async fn run(ap: &ApNode, at: Access, resp: Protocol, cmd: &str, rest: &[Bytes]) -> Frame {
    let key = &rest[0];
    let now = ap.now_ms();
    match cmd {
        "hset" | "hmset" => {
            if rest.len().is_multiple_of(2) {
                return wrong_arity(cmd);
            }
            let pairs = rest[1..]
                .chunks(2)
                .map(|p| (p[0].to_vec(), p[1].to_vec()))
                .collect();
            let base = match state(ap, at, key).await {
                Ok(s) => s,
                Err(e) => return e,
            };
            match write(ap, at, key, Op::HashSet(pairs), base).await {
                Frame::Integer(_) if cmd == "hmset" => Frame::ok(),
                reply => reply,
            }
        }
        "hsetnx" => match state(ap, at, key).await {
            Ok(base) => {
                let op = Op::HashSetNx(rest[1].to_vec(), rest[2].to_vec());
                write(ap, at, key, op, base).await
            }
            Err(e) => e,
        },
        "hdel" => match state(ap, at, key).await {
            Ok(Some(base)) if base.exists(now) => {
                let op = Op::HashDel(rest[1..].iter().map(|f| f.to_vec()).collect());
                write(ap, at, key, op, Some(base)).await
            }
            Ok(_) => Frame::Integer(0),
            Err(e) => e,
        },
        "hincrby" => {
            let Some(delta) = integer(&rest[2]) else {
                return Frame::error(NOT_INTEGER);
            };
            match state(ap, at, key).await {
                Ok(base) => write(ap, at, key, Op::HashIncr(rest[1].to_vec(), delta), base).await,
                Err(e) => e,
            }
        }
        "hincrbyfloat" => hincrbyfloat(ap, at, rest).await,
        "hget" => match fields(ap, at, key).await {
            Ok(f) => f
                .get(rest[1].as_ref())
                .cloned()
                .map_or(Frame::Null, Frame::bulk),
            Err(e) => e,
        },
        "hmget" => match fields(ap, at, key).await {
            Ok(f) => Frame::Array(
                rest[1..]
                    .iter()
                    .map(|x| f.get(x.as_ref()).cloned().map_or(Frame::Null, Frame::bulk))
                    .collect(),
            ),
            Err(e) => e,
        },
        "hexists" => match fields(ap, at, key).await {
            Ok(f) => Frame::Integer(i64::from(f.contains_key(rest[1].as_ref()))),
            Err(e) => e,
        },
        "hstrlen" => match fields(ap, at, key).await {
            Ok(f) => Frame::Integer(f.get(rest[1].as_ref()).map_or(0, |v| v.len() as i64)),
            Err(e) => e,
        },
        "hlen" => match fields(ap, at, key).await {
            Ok(f) => Frame::Integer(f.len() as i64),
            Err(e) => e,
        },
        "hgetall" => match fields(ap, at, key).await {
            Ok(f) => Frame::Map(
                f.into_iter()
                    .map(|(k, v)| (Frame::bulk(k), Frame::bulk(v)))
                    .collect(),
            ),
            Err(e) => e,
        },
        "hkeys" => match fields(ap, at, key).await {
            Ok(f) => Frame::Array(f.into_keys().map(Frame::bulk).collect()),
            Err(e) => e,
        },
        "hvals" => match fields(ap, at, key).await {
            Ok(f) => Frame::Array(f.into_values().map(Frame::bulk).collect()),
            Err(e) => e,
        },
        "hrandfield" => hrandfield(ap, at, resp, rest).await,
        "hscan" => hscan(ap, at, rest).await,
        _ => Frame::error(format!("ERR unknown hash command '{cmd}'")),
    }
}

/// `HINCRBYFLOAT key field delta`: checked in Redis's order (the increment, the key's type,
/// the field's value), then the sum written over what was read.
async fn hincrbyfloat(ap: &ApNode, at: Access, rest: &[Bytes]) -> Frame {
    let Some(delta) = parse_float(&rest[2]) else {
        return Frame::error(NOT_FLOAT);
    };
    if !delta.is_finite() {
        return Frame::error("ERR value is NaN or Infinity");
    }
    let (key, field) = (&rest[0], &rest[1]);
    let base = match state(ap, at, key).await {
        Ok(s) => s,
        Err(e) => return e,
    };
    let current = base
        .as_ref()
        .and_then(|st| st.hfield(field, ap.now_ms()).ok().flatten());
    let value = match current.as_deref().map(parse_float) {
        None => 0.0,
        Some(Some(v)) => v,
        Some(None) => return Frame::error("ERR hash value is not a float"),
    };
    let sum = value + delta;
    if !sum.is_finite() {
        return Frame::error("ERR increment would produce NaN or Infinity");
    }
    let text = format_float(sum);
    let op = Op::HashSet(vec![(field.to_vec(), text.clone().into_bytes())]);
    match write(ap, at, key, op, base).await {
        Frame::Integer(_) => Frame::bulk(text),
        reply => reply,
    }
}

/// `HRANDFIELD key [count [WITHVALUES]]`.
async fn hrandfield(ap: &ApNode, at: Access, resp: Protocol, rest: &[Bytes]) -> Frame {
    // The count first, then the option, as Redis checks them.
    let count = match rest.get(1).map(|c| random_count(c)) {
        None => None,
        Some(Ok(n)) => Some(n),
        Some(Err(e)) => return e,
    };
    let with_values = match rest.get(2) {
        None => false,
        Some(w) if rest.len() == 3 && w.eq_ignore_ascii_case(b"withvalues") => true,
        Some(_) => return Frame::error(SYNTAX),
    };
    if with_values && count.is_some_and(|n| n.unsigned_abs() > (i64::MAX as u64) / 2) {
        return Frame::error("ERR value is out of range");
    }
    let f = match fields(ap, at, &rest[0]).await {
        Ok(f) => f,
        Err(e) => return e,
    };
    if let Some(e) = too_many(count, f.len()) {
        return e;
    }
    let reply = |names: Vec<Vec<u8>>| {
        let mut out = Vec::with_capacity(names.len() * 2);
        for name in names {
            let value = f.get(&name).cloned().unwrap_or_default();
            if with_values {
                out.push(Frame::Array(vec![Frame::bulk(name), Frame::bulk(value)]));
            } else {
                out.push(Frame::bulk(name));
            }
        }
        out
    };
    match count {
        None if f.is_empty() => Frame::Null,
        None => Frame::bulk(choose_distinct(f.keys(), 1).remove(0)),
        Some(n) if n >= 0 => {
            Frame::Array(pairs(resp, reply(choose_distinct(f.keys(), n as usize))))
        }
        // A negative count may repeat fields.
        Some(n) => {
            if f.is_empty() {
                return Frame::Array(Vec::new());
            }
            let pool: Vec<&Vec<u8>> = f.keys().collect();
            let names = (0..n.unsigned_abs())
                .map(|_| pool[random_below(pool.len())].clone())
                .collect();
            Frame::Array(pairs(resp, reply(names)))
        }
    }
}

/// Field-value pairs as Redis answers them: one two-element array per pair in RESP3, one
/// flat list in RESP2.
fn pairs(resp: Protocol, items: Vec<Frame>) -> Vec<Frame> {
    if resp == Protocol::Resp3 {
        return items;
    }
    let mut out = Vec::with_capacity(items.len() * 2);
    for item in items {
        match item {
            Frame::Array(pair) => out.extend(pair),
            other => out.push(other),
        }
    }
    out
}

/// `HSCAN key cursor [MATCH pattern] [COUNT count] [NOVALUES]`: the cursor is a position in
/// field-hash order, as `SSCAN`'s; a hash of up to 128 fields answers in one reply. Checked
/// in Redis's order: the cursor, the key (missing: an empty scan), the options.
async fn hscan(ap: &ApNode, at: Access, rest: &[Bytes]) -> Frame {
    let Some(cursor) = parse_cursor(&rest[1]) else {
        return Frame::error("ERR invalid cursor");
    };
    let f = match fields(ap, at, &rest[0]).await {
        Ok(f) if f.is_empty() => return empty_scan(),
        Ok(f) => f,
        Err(e) => return e,
    };
    let (pattern, count, novalues) = match collection_scan_options(&rest[2..], true) {
        Ok(o) => o,
        Err(e) => return e,
    };
    let count = if f.len() <= SCAN_ALL_UP_TO {
        usize::MAX
    } else {
        count
    };
    let (next, page) = hash_page(f.keys(), cursor, count);
    let mut out = Vec::new();
    for k in page {
        if pattern.as_ref().is_none_or(|p| glob(p, k)) {
            out.push(Frame::bulk(k.clone()));
            if !novalues {
                out.push(Frame::bulk(f[k].clone()));
            }
        }
    }
    Frame::Array(vec![Frame::bulk(next.to_string()), Frame::Array(out)])
}
