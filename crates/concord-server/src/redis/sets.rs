//! Redis's set commands over AP buckets: each set is one key whose state holds an add-wins
//! OR-set ([`RedisValue`]).
//!
//! Reads (`SMEMBERS`, `SISMEMBER`, `SMISMEMBER`, `SCARD`, `SRANDMEMBER`, `SSCAN`, `SUNION`,
//! `SINTER`, `SDIFF`, `SINTERCARD`) read each key at R and answer from the join. Writes
//! read the key at R first and hand what they read to the coordinating replica as the
//! base of the write ([`ApNode::write_after`]), so that `SREM` removes every add the R
//! replicas had seen and the counts `SADD` and `SREM` answer are counted against that
//! join. `SPOP` is a read and an `SREM` of what it chose: two clients popping at once may
//! both get the same member (at-least-once, `docs/ap.md`). `SMOVE` is an `SREM` and an
//! `SADD`, not atomic across the two keys. The `*STORE` forms replace the destination with
//! a new set (a new epoch, as a `SET` would).

use std::collections::BTreeSet;

use bytes::Bytes;
use concord_core::crdt::{Kind, RedisValue, ValueError};

use super::commands::{ap_error, integer, NOT_INTEGER, SYNTAX};
use super::keyspace::{collection_scan_options, glob, parse_cursor};
use crate::ap::hash_page;
use crate::ap::{Access, ApError, ApNode, Op};
use crate::resp::Frame;

/// Sets up to this many members answer `SSCAN` in one reply, as Redis answers its small
/// (listpack) sets.
const SCAN_ALL_UP_TO: usize = 128;

pub(crate) fn wrong_type() -> Frame {
    Frame::error(ValueError::WrongType.to_string())
}

/// The key's state as R replicas answered it (`None`: no replica holds it).
async fn state(ap: &ApNode, at: Access, key: &[u8]) -> Result<Option<RedisValue>, Frame> {
    ap.read(at, key).await.map_err(ap_error)
}

/// The members of the set at `key` (empty when it does not exist), or the error reply.
async fn members(ap: &ApNode, at: Access, key: &[u8]) -> Result<BTreeSet<Vec<u8>>, Frame> {
    let now = ap.now_ms();
    match state(ap, at, key).await? {
        None => Ok(BTreeSet::new()),
        Some(st) => st
            .members(now)
            .map(|m| m.into_iter().map(<[u8]>::to_vec).collect())
            .map_err(|_| wrong_type()),
    }
}

pub(crate) fn bulk_set(members: impl IntoIterator<Item = Vec<u8>>) -> Frame {
    Frame::Set(members.into_iter().map(Frame::bulk).collect())
}

/// `SADD` and `SREM`: read at R, then the change written over what was read.
async fn change(ap: &ApNode, at: Access, key: &[u8], op: Op) -> Frame {
    let base = match state(ap, at, key).await {
        Ok(s) => s,
        Err(e) => return e,
    };
    let now = ap.now_ms();
    if let Some(st) = &base {
        if st.kind(now).is_some_and(|k| k != Kind::Set) {
            return wrong_type();
        }
        if matches!(op, Op::SetRemove(_)) && !st.exists(now) {
            return Frame::Integer(0);
        }
    } else if matches!(op, Op::SetRemove(_)) {
        return Frame::Integer(0);
    }
    match ap.write_after(at, key, op, base).await {
        Ok(Some(n)) => Frame::Integer(n),
        Ok(None) => Frame::error("ERR the replica did not return the count"),
        Err(e) => ap_error(e),
    }
}

/// A random index below `n` (`n` > 0), from a randomly keyed hasher: no RNG crate.
pub(crate) fn random_below(n: usize) -> usize {
    use std::hash::{BuildHasher, Hasher};
    let r = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    (r % n as u64) as usize
}

/// The count of `SRANDMEMBER` and `HRANDFIELD`: an integer from -(2^63 - 1) to 2^63 - 1,
/// with Redis's errors.
pub(crate) fn random_count(arg: &[u8]) -> Result<i64, Frame> {
    match integer(arg) {
        Some(i64::MIN) => Err(Frame::error(
            "ERR value is out of range, value must between -9223372036854775807 and \
             9223372036854775807",
        )),
        Some(n) => Ok(n),
        None => Err(Frame::error(NOT_INTEGER)),
    }
}

/// Most answers a negative `SRANDMEMBER` or `HRANDFIELD` count may ask for (members may
/// repeat, so Redis would try to list any number of them; Concord refuses rather than
/// build a reply that exhausts memory).
const MAX_RANDOM_REPLY: u64 = 10_000_000;

/// The error for a negative count past [`MAX_RANDOM_REPLY`] on a non-empty collection.
pub(crate) fn too_many(count: Option<i64>, len: usize) -> Option<Frame> {
    let n = count?;
    (n < 0 && len > 0 && n.unsigned_abs() > MAX_RANDOM_REPLY).then(|| {
        Frame::error(format!(
            "ERR count is too large: at most {MAX_RANDOM_REPLY} random answers per call"
        ))
    })
}

/// `count` distinct members chosen at random (all of them when there are fewer).
pub(crate) fn choose_distinct<'a>(
    members: impl IntoIterator<Item = &'a Vec<u8>>,
    count: usize,
) -> Vec<Vec<u8>> {
    let mut pool: Vec<&Vec<u8>> = members.into_iter().collect();
    let mut out = Vec::with_capacity(count.min(pool.len()));
    while out.len() < count && !pool.is_empty() {
        out.push(pool.swap_remove(random_below(pool.len())).clone());
    }
    out
}

/// Runs one set command (`cmd` lower-case, arity already checked).
pub async fn run(ap: &ApNode, at: Access, cmd: &str, rest: &[Bytes]) -> Frame {
    let now = ap.now_ms();
    match cmd {
        "sadd" => {
            let list = rest[1..].iter().map(|m| m.to_vec()).collect();
            change(ap, at, &rest[0], Op::SetAdd(list)).await
        }
        "srem" => {
            let list = rest[1..].iter().map(|m| m.to_vec()).collect();
            change(ap, at, &rest[0], Op::SetRemove(list)).await
        }
        "smembers" => match members(ap, at, &rest[0]).await {
            Ok(m) => bulk_set(m),
            Err(e) => e,
        },
        "scard" => match members(ap, at, &rest[0]).await {
            Ok(m) => Frame::Integer(m.len() as i64),
            Err(e) => e,
        },
        "sismember" => match state(ap, at, &rest[0]).await {
            Ok(st) => match st.map_or(Ok(false), |st| st.is_member(&rest[1], now)) {
                Ok(found) => Frame::Integer(i64::from(found)),
                Err(_) => wrong_type(),
            },
            Err(e) => e,
        },
        "smismember" => match members(ap, at, &rest[0]).await {
            Ok(m) => Frame::Array(
                rest[1..]
                    .iter()
                    .map(|x| Frame::Integer(i64::from(m.contains(x.as_ref()))))
                    .collect(),
            ),
            Err(e) => e,
        },
        "srandmember" => srandmember(ap, at, rest).await,
        "spop" => spop(ap, at, rest).await,
        "smove" => smove(ap, at, rest).await,
        "sunion" | "sinter" | "sdiff" => match combine(ap, at, cmd, rest).await {
            Ok(m) => bulk_set(m),
            Err(e) => e,
        },
        "sunionstore" | "sinterstore" | "sdiffstore" => {
            let source = &cmd[..cmd.len() - "store".len()];
            let result = match combine(ap, at, source, &rest[1..]).await {
                Ok(m) => m,
                Err(e) => return e,
            };
            let len = result.len() as i64;
            let dest = &rest[0];
            if result.is_empty() {
                // Redis deletes the destination; nothing to write when it does not exist.
                match state(ap, at, dest).await {
                    Ok(Some(st)) if st.exists(now) => {}
                    Ok(_) => return Frame::Integer(0),
                    Err(e) => return e,
                }
            }
            match ap
                .write(at, dest, Op::SetStore(result.into_iter().collect()))
                .await
            {
                Ok(_) => Frame::Integer(len),
                Err(e) => ap_error(e),
            }
        }
        "sintercard" => sintercard(ap, at, rest).await,
        "sscan" => sscan(ap, at, rest).await,
        _ => Frame::error(format!("ERR unknown set command '{cmd}'")),
    }
}

/// `SUNION`, `SINTER`, `SDIFF` over `keys`: every key is read (a key of another type is an
/// error even when the answer is already known), then combined.
async fn combine(
    ap: &ApNode,
    at: Access,
    cmd: &str,
    keys: &[Bytes],
) -> Result<BTreeSet<Vec<u8>>, Frame> {
    let mut sets = Vec::with_capacity(keys.len());
    for k in keys {
        sets.push(members(ap, at, k).await?);
    }
    let mut sets = sets.into_iter();
    let first = sets.next().unwrap_or_default();
    Ok(match cmd {
        "sunion" => sets.fold(first, |mut acc, s| {
            acc.extend(s);
            acc
        }),
        "sinter" => sets.fold(first, |acc, s| acc.intersection(&s).cloned().collect()),
        _ => sets.fold(first, |acc, s| acc.difference(&s).cloned().collect()),
    })
}

/// `SINTERCARD numkeys key [key ...] [LIMIT limit]`.
async fn sintercard(ap: &ApNode, at: Access, rest: &[Bytes]) -> Frame {
    let numkeys = match integer(&rest[0]) {
        Some(n) if n > 0 => n as usize,
        _ => return Frame::error("ERR numkeys should be greater than 0"),
    };
    if numkeys > rest.len() - 1 {
        return Frame::error("ERR Number of keys can't be greater than number of args");
    }
    let keys = &rest[1..1 + numkeys];
    let mut limit = 0usize;
    let mut opts = rest[1 + numkeys..].iter();
    while let Some(opt) = opts.next() {
        match (opt.eq_ignore_ascii_case(b"limit"), opts.next()) {
            (true, Some(v)) => match integer(v) {
                Some(l) if l >= 0 => limit = l as usize,
                Some(_) => return Frame::error("ERR LIMIT can't be negative"),
                None => return Frame::error("ERR LIMIT can't be negative"),
            },
            _ => return Frame::error(SYNTAX),
        }
    }
    match combine(ap, at, "sinter", keys).await {
        Ok(m) if limit > 0 => Frame::Integer(m.len().min(limit) as i64),
        Ok(m) => Frame::Integer(m.len() as i64),
        Err(e) => e,
    }
}

/// `SRANDMEMBER key [count]`.
async fn srandmember(ap: &ApNode, at: Access, rest: &[Bytes]) -> Frame {
    if rest.len() > 2 {
        return Frame::error(SYNTAX);
    }
    let count = match rest.get(1).map(|c| random_count(c)) {
        None => None,
        Some(Ok(n)) => Some(n),
        Some(Err(e)) => return e,
    };
    let m = match members(ap, at, &rest[0]).await {
        Ok(m) => m,
        Err(e) => return e,
    };
    if let Some(e) = too_many(count, m.len()) {
        return e;
    }
    match count {
        None if m.is_empty() => Frame::Null,
        None => Frame::bulk(choose_distinct(&m, 1).remove(0)),
        Some(n) if n >= 0 => Frame::Array(
            choose_distinct(&m, n as usize)
                .into_iter()
                .map(Frame::bulk)
                .collect(),
        ),
        // A negative count may repeat members.
        Some(n) => {
            if m.is_empty() {
                return Frame::Array(Vec::new());
            }
            let pool: Vec<&Vec<u8>> = m.iter().collect();
            Frame::Array(
                (0..n.unsigned_abs())
                    .map(|_| Frame::bulk(pool[random_below(pool.len())].clone()))
                    .collect(),
            )
        }
    }
}

/// `SPOP key [count]`: members chosen from a read at R, then removed with an `SREM`.
async fn spop(ap: &ApNode, at: Access, rest: &[Bytes]) -> Frame {
    if rest.len() > 2 {
        return Frame::error(SYNTAX);
    }
    let count = match rest.get(1) {
        None => None,
        Some(c) => match integer(c) {
            Some(n) if n >= 0 => Some(n as usize),
            Some(_) => return Frame::error("ERR value is out of range, must be positive"),
            None => return Frame::error("ERR value is out of range, must be positive"),
        },
    };
    let key = &rest[0];
    let base = match state(ap, at, key).await {
        Ok(s) => s,
        Err(e) => return e,
    };
    let now = ap.now_ms();
    let m: BTreeSet<Vec<u8>> = match base.as_ref().map(|st| st.members(now)) {
        None => BTreeSet::new(),
        Some(Ok(m)) => m.into_iter().map(<[u8]>::to_vec).collect(),
        Some(Err(_)) => return wrong_type(),
    };
    let chosen = choose_distinct(&m, count.unwrap_or(1));
    if !chosen.is_empty() {
        if let Err(e) = ap
            .write_after(at, key, Op::SetRemove(chosen.clone()), base)
            .await
        {
            return ap_error(e);
        }
    }
    match count {
        None => chosen.into_iter().next().map_or(Frame::Null, Frame::bulk),
        Some(_) => bulk_set(chosen),
    }
}

/// `SMOVE source destination member`, checked in Redis's order: a missing source answers
/// 0, then both keys' types, then the member.
async fn smove(ap: &ApNode, at: Access, rest: &[Bytes]) -> Frame {
    let (src, dst, member) = (&rest[0], &rest[1], rest[2].to_vec());
    let now = ap.now_ms();
    let from = match state(ap, at, src).await {
        Ok(Some(st)) if st.exists(now) => st,
        Ok(_) => return Frame::Integer(0),
        Err(e) => return e,
    };
    let to = match state(ap, at, dst).await {
        Ok(s) => s,
        Err(e) => return e,
    };
    let wrong = |st: Option<&RedisValue>| {
        st.and_then(|st| st.kind(now))
            .is_some_and(|k| k != Kind::Set)
    };
    if wrong(Some(&from)) || wrong(to.as_ref()) {
        return wrong_type();
    }
    if !from.is_member(&member, now).unwrap_or(false) {
        return Frame::Integer(0);
    }
    if src == dst {
        return Frame::Integer(1);
    }
    // A member the destination holds already is only removed from the source: the
    // destination is not written (as in Redis, where it is not modified for `WATCH`).
    let present = to
        .as_ref()
        .is_some_and(|st| st.is_member(&member, now).unwrap_or(false));
    let moved = async {
        ap.write_after(at, src, Op::SetRemove(vec![member.clone()]), Some(from))
            .await?;
        if !present {
            ap.write_after(at, dst, Op::SetAdd(vec![member]), to)
                .await?;
        }
        Ok::<_, ApError>(())
    };
    match moved.await {
        Ok(()) => Frame::Integer(1),
        Err(e) => ap_error(e),
    }
}

/// `SSCAN key cursor [MATCH pattern] [COUNT count]`: the cursor is a position in member-hash
/// order (as `SCAN`'s in key-hash order), so members present for the whole iteration are
/// returned whatever else changes; a set of up to 128 members answers in one reply. As in
/// Redis: the cursor is checked, then the key (missing: an empty scan), then the options.
async fn sscan(ap: &ApNode, at: Access, rest: &[Bytes]) -> Frame {
    let Some(cursor) = parse_cursor(&rest[1]) else {
        return Frame::error("ERR invalid cursor");
    };
    let m = match members(ap, at, &rest[0]).await {
        Ok(m) if m.is_empty() => return empty_scan(),
        Ok(m) => m,
        Err(e) => return e,
    };
    let (pattern, count, _) = match collection_scan_options(&rest[2..], false) {
        Ok(o) => o,
        Err(e) => return e,
    };
    let count = if m.len() <= SCAN_ALL_UP_TO {
        usize::MAX
    } else {
        count
    };
    let (next, page) = hash_page(&m, cursor, count);
    let page = page
        .into_iter()
        .filter(|x| pattern.as_ref().is_none_or(|p| glob(p, x)))
        .map(|x| Frame::bulk(x.clone()))
        .collect();
    Frame::Array(vec![Frame::bulk(next.to_string()), Frame::Array(page)])
}

/// The answer to a scan of a key that does not exist.
pub(crate) fn empty_scan() -> Frame {
    Frame::Array(vec![Frame::bulk("0"), Frame::Array(Vec::new())])
}
