//! Commands over a whole bucket: `KEYS`, `SCAN`, `DBSIZE`, `RANDOMKEY`, `FLUSHDB`,
//! `FLUSHALL`, and the keyspace section of `INFO`, over [`ApNode::bucket_states`]
//! (`SCAN` over [`ApNode::scan_page`]).
//!
//! `SCAN`'s cursor is a position in key-hash order (63 bits of the ring's key hash, plus
//! one so that 0 stays "start"/"done"): it depends on no member or topology, so a scan
//! that spans member joins, leaves and restarts returns every key that existed for all of
//! it, as Redis guarantees, possibly with duplicates. Each call reads about `COUNT` keys
//! on each member, not the bucket (more while what it reads is only tombstones and
//! expired keys, which do not count).

use bytes::Bytes;

use super::commands::{ap_error, type_name, SYNTAX};
use crate::ap::{Access, ApNode, Op, BUCKETS};
use crate::resp::Frame;

/// The keys of the bucket that exist now, in key order.
async fn live_keys(ap: &ApNode, bucket: u8) -> Result<Vec<Vec<u8>>, Frame> {
    Ok(typed_keys(ap, bucket)
        .await?
        .into_iter()
        .map(|(k, _)| k)
        .collect())
}

/// The keys of the bucket that exist now, in key order, with `TYPE`'s name for each.
async fn typed_keys(ap: &ApNode, bucket: u8) -> Result<Vec<(Vec<u8>, &'static str)>, Frame> {
    let now = ap.now_ms();
    let states = ap.bucket_states(bucket).await.map_err(ap_error)?;
    Ok(states
        .into_iter()
        .filter(|(_, s)| s.exists(now))
        .map(|(k, s)| (k, type_name(Some(&s), now)))
        .collect())
}

/// `KEYS pattern`.
pub async fn keys(ap: &ApNode, at: Access, pattern: &[u8]) -> Frame {
    match live_keys(ap, at.bucket).await {
        Ok(keys) => Frame::Array(
            keys.into_iter()
                .filter(|k| glob(pattern, k))
                .map(Frame::bulk)
                .collect(),
        ),
        Err(e) => e,
    }
}

/// `DBSIZE`.
pub async fn dbsize(ap: &ApNode, at: Access) -> Frame {
    match live_keys(ap, at.bucket).await {
        Ok(keys) => Frame::Integer(keys.len() as i64),
        Err(e) => e,
    }
}

/// `RANDOMKEY`.
pub async fn randomkey(ap: &ApNode, at: Access) -> Frame {
    match live_keys(ap, at.bucket).await {
        Ok(keys) if keys.is_empty() => Frame::Null,
        Ok(keys) => {
            // A fresh RandomState is randomly keyed: a random index without a crate.
            use std::hash::{BuildHasher, Hasher};
            let r = std::collections::hash_map::RandomState::new()
                .build_hasher()
                .finish();
            Frame::bulk(keys[(r % keys.len() as u64) as usize].clone())
        }
        Err(e) => e,
    }
}

/// `FLUSHDB` (`all`: `FLUSHALL`): a delete of every key, as tombstones, so that the
/// keys stay deleted on replicas that were away.
pub async fn flush(ap: &ApNode, at: Access, all: bool, rest: &[Bytes]) -> Frame {
    match rest {
        [] => {}
        [mode] if mode.eq_ignore_ascii_case(b"async") || mode.eq_ignore_ascii_case(b"sync") => {}
        _ => return Frame::error(SYNTAX),
    }
    let buckets = if all {
        0..BUCKETS as u8
    } else {
        at.bucket..at.bucket + 1
    };
    for bucket in buckets {
        let keys = match live_keys(ap, bucket).await {
            Ok(k) => k,
            Err(e) => return e,
        };
        let at = Access { bucket, ..at };
        for key in keys {
            if let Err(e) = ap.write(at, &key, Op::Del).await {
                return ap_error(e);
            }
        }
    }
    Frame::ok()
}

/// `SCAN cursor [MATCH pattern] [COUNT count] [TYPE type]`.
pub async fn scan(ap: &ApNode, at: Access, rest: &[Bytes]) -> Frame {
    let Some(cursor) = parse_cursor(&rest[0]) else {
        return Frame::error("ERR invalid cursor");
    };
    let (mut pattern, mut count, mut kind) = (None, 10usize, None);
    let mut i = 1;
    while i < rest.len() {
        let Some(value) = rest.get(i + 1) else {
            return Frame::error(SYNTAX);
        };
        match rest[i].to_ascii_lowercase().as_slice() {
            b"match" => pattern = Some(value.clone()),
            b"count" => match super::commands::integer(value) {
                Some(n) if n >= 1 => count = n as usize,
                Some(_) => return Frame::error(SYNTAX),
                None => return Frame::error(super::commands::NOT_INTEGER),
            },
            b"type" => kind = Some(value.to_ascii_lowercase()),
            _ => return Frame::error(SYNTAX),
        }
        i += 2;
    }
    // COUNT counts the keys that exist, as it did when they were all there was: a page of
    // tombstones (and expired keys) reads on, more keys at a time, until it has COUNT keys
    // or the scan ends.
    let now = ap.now_ms();
    let (mut from, mut read, mut live) = (cursor, count, Vec::new());
    let next = loop {
        let (next, states) = match ap.scan_page(at.bucket, from, read).await {
            Ok(page) => page,
            Err(e) => return ap_error(e),
        };
        live.extend(states.into_iter().filter(|(_, s)| s.exists(now)));
        if next == 0 || live.len() >= count {
            break next;
        }
        (from, read) = (next, read.saturating_mul(2));
    };
    let page = live
        .iter()
        .filter(|(k, _)| pattern.as_ref().is_none_or(|p| glob(p, k)))
        .filter(|(_, s)| {
            kind.as_deref()
                .is_none_or(|want| want == type_name(Some(s), now).as_bytes())
        })
        .map(|(k, _)| Frame::bulk(k.clone()))
        .collect();
    Frame::Array(vec![Frame::bulk(next.to_string()), Frame::Array(page)])
}

/// `SSCAN`'s and `HSCAN`'s options after the cursor: `MATCH pattern`, `COUNT n` and, when
/// `novalues` is allowed, `NOVALUES`; the pattern, the count (10 by default) and whether
/// `NOVALUES` was given.
pub(crate) fn collection_scan_options(
    opts: &[Bytes],
    novalues_allowed: bool,
) -> Result<(Option<Bytes>, usize, bool), Frame> {
    let (mut pattern, mut count, mut novalues) = (None, 10usize, false);
    let mut i = 0;
    while i < opts.len() {
        let opt = opts[i].to_ascii_lowercase();
        if novalues_allowed && opt == b"novalues" {
            novalues = true;
            i += 1;
            continue;
        }
        let Some(value) = opts.get(i + 1) else {
            return Err(Frame::error(SYNTAX));
        };
        match opt.as_slice() {
            b"match" => pattern = Some(value.clone()),
            b"count" => match super::commands::integer(value) {
                Some(n) if n >= 1 => count = n as usize,
                Some(_) => return Err(Frame::error(SYNTAX)),
                None => return Err(Frame::error(super::commands::NOT_INTEGER)),
            },
            _ => return Err(Frame::error(SYNTAX)),
        }
        i += 2;
    }
    Ok((pattern, count, novalues))
}

/// A cursor as Redis reads one (`strtoul`): empty is 0, a sign may lead (`-1` wraps), no
/// spaces, nothing after the digits, no overflow.
pub(crate) fn parse_cursor(b: &[u8]) -> Option<u64> {
    let (negative, digits) = match b.split_first() {
        Some((b'-', d)) => (true, d),
        Some((b'+', d)) => (false, d),
        _ => (false, b),
    };
    if !digits.iter().all(u8::is_ascii_digit) || (digits.is_empty() && !b.is_empty()) {
        return None;
    }
    let mut n: u64 = 0;
    for d in digits {
        n = n.checked_mul(10)?.checked_add(u64::from(d - b'0'))?;
    }
    Some(if negative { n.wrapping_neg() } else { n })
}

/// `INFO`'s keyspace section: `dbN:keys=..,expires=..,avg_ttl=0` for each non-empty
/// bucket.
pub async fn info_keyspace(ap: &ApNode) -> String {
    let now = ap.now_ms();
    let mut out = String::from("# Keyspace\r\n");
    for bucket in 0..BUCKETS as u8 {
        let Ok(states) = ap.bucket_states(bucket).await else {
            continue;
        };
        let live: Vec<_> = states.values().filter(|s| s.exists(now)).collect();
        if live.is_empty() {
            continue;
        }
        let expires = live.iter().filter(|s| s.expires_at().is_some()).count();
        out.push_str(&format!(
            "db{bucket}:keys={},expires={expires},avg_ttl=0\r\n",
            live.len()
        ));
    }
    out
}

/// Redis's glob-style match (`stringmatchlen`): `*`, `?`, `[abc]`, `[^a-z]`, `\x`.
pub fn glob(pattern: &[u8], s: &[u8]) -> bool {
    let (mut p, mut i) = (0, 0);
    // Where the last `*` was and the string position it stands for so far.
    let mut star: Option<(usize, usize)> = None;
    while i < s.len() {
        if p < pattern.len() && pattern[p] == b'*' {
            // Runs of stars match like one.
            while p < pattern.len() && pattern[p] == b'*' {
                p += 1;
            }
            star = Some((p, i));
            continue;
        }
        if let Some((matched, next)) = one(pattern, p, s[i]) {
            if matched {
                p = next;
                i += 1;
                continue;
            }
        }
        match star {
            Some((sp, si)) => {
                p = sp;
                i = si + 1;
                star = Some((sp, si + 1));
            }
            None => return false,
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

/// Whether the pattern token at `p` matches `c`, and where the next token starts; `None`
/// at the end of the pattern.
fn one(pattern: &[u8], p: usize, c: u8) -> Option<(bool, usize)> {
    let first = *pattern.get(p)?;
    Some(match first {
        b'?' => (true, p + 1),
        b'\\' if p + 1 < pattern.len() => (pattern[p + 1] == c, p + 2),
        b'[' => {
            let mut j = p + 1;
            let negate = pattern.get(j) == Some(&b'^');
            if negate {
                j += 1;
            }
            let mut matched = false;
            loop {
                match pattern.get(j) {
                    // An unclosed class ends with the pattern.
                    None => break,
                    Some(b']') => {
                        j += 1;
                        break;
                    }
                    Some(b'\\') if j + 1 < pattern.len() => {
                        matched |= pattern[j + 1] == c;
                        j += 2;
                    }
                    Some(&lo) if pattern.get(j + 1) == Some(&b'-') && j + 2 < pattern.len() => {
                        let hi = pattern[j + 2];
                        let (lo, hi) = if lo <= hi { (lo, hi) } else { (hi, lo) };
                        matched |= (lo..=hi).contains(&c);
                        j += 3;
                    }
                    Some(&x) => {
                        matched |= x == c;
                        j += 1;
                    }
                }
            }
            (matched != negate, j)
        }
        x => (x == c, p + 1),
    })
}

#[cfg(test)]
mod tests {
    use super::glob;

    #[test]
    fn cursors_parse_as_strtoul_does() {
        use super::parse_cursor;
        assert_eq!(parse_cursor(b""), Some(0));
        assert_eq!(parse_cursor(b"0"), Some(0));
        assert_eq!(parse_cursor(b"007"), Some(7));
        assert_eq!(parse_cursor(b"+5"), Some(5));
        assert_eq!(parse_cursor(b"-1"), Some(u64::MAX));
        assert_eq!(parse_cursor(b"18446744073709551615"), Some(u64::MAX));
        for bad in [
            &b"18446744073709551616"[..],
            b" 1",
            b"1 ",
            b"x",
            b"-",
            b"+",
            b"1.0",
        ] {
            assert_eq!(parse_cursor(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn glob_matches_as_redis_does() {
        for (p, s, want) in [
            ("*", "", true),
            ("*", "anything", true),
            ("h?llo", "hello", true),
            ("h?llo", "hllo", false),
            ("h*llo", "heeeello", true),
            ("h*llo", "hllo", true),
            ("h[ae]llo", "hallo", true),
            ("h[ae]llo", "hillo", false),
            ("h[^e]llo", "hallo", true),
            ("h[^e]llo", "hello", false),
            ("h[a-b]llo", "hbllo", true),
            ("h[b-a]llo", "hallo", true),
            ("h\\*llo", "h*llo", true),
            ("h\\*llo", "hello", false),
            ("a*b*c", "aXXbYYc", true),
            ("a*b*c", "aXXbYY", false),
            ("k*", "k1", true),
            ("*1", "k1", true),
            ("*1", "k2", false),
            ("[abc", "a", true),
            ("user:*:name", "user:42:name", true),
            ("user:*:name", "user:42:mail", false),
        ] {
            assert_eq!(glob(p.as_bytes(), s.as_bytes()), want, "{p} vs {s}");
        }
    }
}
