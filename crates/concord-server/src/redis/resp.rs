//! The Redis wire protocol as a server speaks it: requests in (multibulk `*2\r\n$3\r\nGET..`
//! or inline `GET k\r\n`), replies out in RESP2 or RESP3.
//!
//! # Guarantees
//!
//! 1. **Incremental.** [`parse_request`] consumes exactly one complete request from the
//!    buffer, or nothing (`Ok(None)`) until more bytes arrive; pipelined requests come out
//!    one by one, in order.
//! 2. **Redis's limits and errors.** A bulk longer than [`MAX_BULK`] (Redis's
//!    `proto-max-bulk-len`), more than [`MAX_MULTIBULK`] arguments, or an inline request or
//!    length line longer than [`MAX_INLINE`] is a [`ProtocolError`] whose text is Redis's
//!    (`ERR Protocol error: invalid bulk length`, ...); after one the connection is
//!    answered and closed, as Redis does.
//! 3. **No allocation on a promise.** A declared length reserves at most [`MAX_PREALLOC`]
//!    bytes up front; the rest grows only as bytes arrive.
//! 4. **Never panics** on any input bytes.

use bytes::{Buf, BytesMut};

/// Largest bulk argument (Redis's default `proto-max-bulk-len`, 512 MiB).
pub const MAX_BULK: usize = 512 << 20;
/// Most arguments in one request (Redis: 1024 · 1024 · 1024 for authenticated clients;
/// far more than any real command needs, so Concord takes a million).
pub const MAX_MULTIBULK: usize = 1 << 20;
/// Longest inline request or length line (Redis's `PROTO_INLINE_MAX_SIZE`).
pub const MAX_INLINE: usize = 64 << 10;
/// Most bytes reserved on a declared length before they arrive.
pub const MAX_PREALLOC: usize = 64 << 10;

/// A malformed request: the reply to send before closing the connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("ERR Protocol error: {0}")]
pub struct ProtocolError(pub String);

fn err(what: &str) -> ProtocolError {
    ProtocolError(what.into())
}

/// The position of the first `\r\n` at or after `from`.
fn line_end(buf: &[u8], from: usize) -> Option<usize> {
    buf.get(from..)?
        .windows(2)
        .position(|w| w == b"\r\n")
        .map(|p| from + p)
}

fn parse_len(bytes: &[u8]) -> Option<i64> {
    std::str::from_utf8(bytes).ok()?.parse().ok()
}

/// One request from the front of `buf`, consumed; `None` until it is complete.
pub fn parse_request(buf: &mut BytesMut) -> Result<Option<Vec<Vec<u8>>>, ProtocolError> {
    loop {
        match buf.first() {
            None => return Ok(None),
            // Redis skips empty multibulks (`*0`, `*-1`) as it does empty inline lines.
            Some(b'*') => match parse_multibulk(buf)? {
                Some(args) if args.is_empty() => continue,
                other => return Ok(other),
            },
            Some(_) => match parse_inline(buf)? {
                // Redis skips empty inline lines.
                Some(args) if args.is_empty() => continue,
                other => return Ok(other),
            },
        }
    }
}

fn parse_multibulk(buf: &mut BytesMut) -> Result<Option<Vec<Vec<u8>>>, ProtocolError> {
    let Some(end) = line_end(buf, 0) else {
        if buf.len() > MAX_INLINE {
            return Err(err("too big mbulk count string"));
        }
        return Ok(None);
    };
    let count = parse_len(&buf[1..end])
        .filter(|n| *n <= MAX_MULTIBULK as i64)
        .ok_or_else(|| err("invalid multibulk length"))?;
    let mut pos = end + 2;
    if count <= 0 {
        buf.advance(pos);
        return Ok(Some(Vec::new()));
    }
    let mut args = Vec::with_capacity((count as usize).min(1024));
    for _ in 0..count {
        let Some(end) = line_end(buf, pos) else {
            if buf.len() - pos > MAX_INLINE {
                return Err(err("too big bulk count string"));
            }
            return Ok(None);
        };
        match buf.get(pos) {
            Some(b'$') => {}
            Some(&c) => {
                return Err(ProtocolError(format!(
                    "expected '$', got '{}'",
                    char::from(c)
                )))
            }
            None => return Ok(None),
        }
        let len = parse_len(&buf[pos + 1..end])
            .filter(|n| (0..=MAX_BULK as i64).contains(n))
            .ok_or_else(|| err("invalid bulk length"))? as usize;
        let start = end + 2;
        if buf.len() < start + len + 2 {
            // Wait for the rest, reserving only a bounded amount ahead of it.
            let missing = start + len + 2 - buf.len();
            buf.reserve(missing.min(MAX_PREALLOC));
            return Ok(None);
        }
        args.push(buf[start..start + len].to_vec());
        pos = start + len + 2;
    }
    buf.advance(pos);
    Ok(Some(args))
}

fn parse_inline(buf: &mut BytesMut) -> Result<Option<Vec<Vec<u8>>>, ProtocolError> {
    let Some(end) = buf.iter().position(|&b| b == b'\n') else {
        if buf.len() > MAX_INLINE {
            return Err(err("too big inline request"));
        }
        return Ok(None);
    };
    let line = &buf[..end];
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let args = split_args(line).ok_or_else(|| err("unbalanced quotes in request"))?;
    buf.advance(end + 1);
    Ok(Some(args))
}

/// Splits an inline request as Redis's `sdssplitargs` does: spaces separate arguments,
/// `"..."` understands `\n \r \t \b \a \\ \"` and `\xHH`, `'...'` understands `\'`; a
/// closing quote must be followed by a space or the end. `None`: unbalanced quotes.
pub fn split_args(line: &[u8]) -> Option<Vec<Vec<u8>>> {
    let mut args = Vec::new();
    let mut i = 0;
    loop {
        while line.get(i).is_some_and(|b| b.is_ascii_whitespace()) {
            i += 1;
        }
        if i >= line.len() {
            return Some(args);
        }
        let mut arg = Vec::new();
        match line[i] {
            b'"' => {
                i += 1;
                loop {
                    match *line.get(i)? {
                        b'\\'
                            if line.get(i + 1) == Some(&b'x')
                                && line.get(i + 2).is_some_and(u8::is_ascii_hexdigit)
                                && line.get(i + 3).is_some_and(u8::is_ascii_hexdigit) =>
                        {
                            let hex = std::str::from_utf8(&line[i + 2..i + 4]).ok()?;
                            arg.push(u8::from_str_radix(hex, 16).ok()?);
                            i += 4;
                        }
                        b'\\' => {
                            let c = *line.get(i + 1)?;
                            arg.push(match c {
                                b'n' => b'\n',
                                b'r' => b'\r',
                                b't' => b'\t',
                                b'b' => 8,
                                b'a' => 7,
                                other => other,
                            });
                            i += 2;
                        }
                        b'"' => {
                            i += 1;
                            if line.get(i).is_some_and(|b| !b.is_ascii_whitespace()) {
                                return None;
                            }
                            break;
                        }
                        c => {
                            arg.push(c);
                            i += 1;
                        }
                    }
                }
            }
            b'\'' => {
                i += 1;
                loop {
                    match *line.get(i)? {
                        b'\\' if line.get(i + 1) == Some(&b'\'') => {
                            arg.push(b'\'');
                            i += 2;
                        }
                        b'\'' => {
                            i += 1;
                            if line.get(i).is_some_and(|b| !b.is_ascii_whitespace()) {
                                return None;
                            }
                            break;
                        }
                        c => {
                            arg.push(c);
                            i += 1;
                        }
                    }
                }
            }
            _ => {
                while let Some(&c) = line.get(i) {
                    if c.is_ascii_whitespace() {
                        break;
                    }
                    arg.push(c);
                    i += 1;
                }
            }
        }
        args.push(arg);
    }
}

/// A reply.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// `+OK`.
    Simple(String),
    /// `-ERR ...`.
    Error(String),
    /// `:1`.
    Integer(i64),
    /// `$3\r\nabc`.
    Bulk(Vec<u8>),
    /// No value: `$-1` in RESP2, `_` in RESP3.
    Null,
    /// `*n`.
    Array(Vec<Reply>),
    /// A map in RESP3 (`%n`), a flat array of keys and values in RESP2.
    Map(Vec<(Reply, Reply)>),
}

impl Reply {
    /// `+OK`.
    pub fn ok() -> Reply {
        Reply::Simple("OK".into())
    }

    /// An error reply with Redis's text.
    pub fn error(text: impl Into<String>) -> Reply {
        Reply::Error(text.into())
    }

    /// A bulk string.
    pub fn bulk(bytes: impl Into<Vec<u8>>) -> Reply {
        Reply::Bulk(bytes.into())
    }

    /// Appends the reply to `out` in protocol `resp` (2 or 3).
    pub fn encode(&self, resp: u8, out: &mut Vec<u8>) {
        match self {
            Reply::Simple(s) => {
                out.push(b'+');
                out.extend(s.bytes().filter(|&b| b != b'\r' && b != b'\n'));
                out.extend_from_slice(b"\r\n");
            }
            Reply::Error(s) => {
                out.push(b'-');
                out.extend(s.bytes().filter(|&b| b != b'\r' && b != b'\n'));
                out.extend_from_slice(b"\r\n");
            }
            Reply::Integer(n) => out.extend_from_slice(format!(":{n}\r\n").as_bytes()),
            Reply::Bulk(b) => {
                out.extend_from_slice(format!("${}\r\n", b.len()).as_bytes());
                out.extend_from_slice(b);
                out.extend_from_slice(b"\r\n");
            }
            Reply::Null if resp >= 3 => out.extend_from_slice(b"_\r\n"),
            Reply::Null => out.extend_from_slice(b"$-1\r\n"),
            Reply::Array(items) => {
                out.extend_from_slice(format!("*{}\r\n", items.len()).as_bytes());
                for i in items {
                    i.encode(resp, out);
                }
            }
            Reply::Map(pairs) => {
                let header = if resp >= 3 {
                    format!("%{}\r\n", pairs.len())
                } else {
                    format!("*{}\r\n", pairs.len() * 2)
                };
                out.extend_from_slice(header.as_bytes());
                for (k, v) in pairs {
                    k.encode(resp, out);
                    v.encode(resp, out);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn parse_all(bytes: &[u8]) -> Result<Vec<Vec<Vec<u8>>>, ProtocolError> {
        let mut buf = BytesMut::from(bytes);
        let mut out = Vec::new();
        while let Some(r) = parse_request(&mut buf)? {
            out.push(r);
        }
        Ok(out)
    }

    fn args(v: &[&str]) -> Vec<Vec<u8>> {
        v.iter().map(|s| s.as_bytes().to_vec()).collect()
    }

    #[test]
    fn multibulk_inline_and_pipelines() {
        let got =
            parse_all(b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\nPING\r\n\r\nSET a \"b c\"\r\n").unwrap();
        assert_eq!(
            got,
            [
                args(&["GET", "k"]),
                args(&["PING"]),
                args(&["SET", "a", "b c"])
            ]
        );
        // Incomplete: nothing consumed.
        let mut buf = BytesMut::from(&b"*2\r\n$3\r\nGET\r\n$1\r\n"[..]);
        assert_eq!(parse_request(&mut buf), Ok(None));
        assert_eq!(buf.len(), 17);
    }

    #[test]
    fn protocol_errors_have_redis_texts() {
        let cases: [(&[u8], &str); 6] = [
            (b"*x\r\n", "ERR Protocol error: invalid multibulk length"),
            (b"*1\r\n$-5\r\n", "ERR Protocol error: invalid bulk length"),
            (
                b"*1\r\n$999999999999\r\n",
                "ERR Protocol error: invalid bulk length",
            ),
            (b"*1\r\n+x\r\n", "ERR Protocol error: expected '$', got '+'"),
            (
                b"SET a \"b\r\n",
                "ERR Protocol error: unbalanced quotes in request",
            ),
            (
                b"*2000000\r\n",
                "ERR Protocol error: invalid multibulk length",
            ),
        ];
        for (input, text) in cases {
            assert_eq!(parse_all(input).unwrap_err().to_string(), text, "{input:?}");
        }
        let long = vec![b'a'; MAX_INLINE + 1];
        assert_eq!(
            parse_all(&long).unwrap_err().to_string(),
            "ERR Protocol error: too big inline request"
        );
    }

    #[test]
    fn a_huge_declared_bulk_is_not_allocated_up_front() {
        let mut buf = BytesMut::from(&b"*1\r\n$536870912\r\nabc"[..]);
        assert_eq!(parse_request(&mut buf), Ok(None));
        assert!(buf.capacity() < 1 << 20, "{}", buf.capacity());
    }

    #[test]
    fn inline_quoting_as_sdssplitargs() {
        assert_eq!(split_args(b"a  b"), Some(args(&["a", "b"])));
        assert_eq!(
            split_args(br#""x\ny" 'it\'s'"#),
            Some(args(&["x\ny", "it's"]))
        );
        assert_eq!(split_args(br#""\x41\x4a""#), Some(args(&["AJ"])));
        assert_eq!(split_args(br#""a"b"#), None);
        assert_eq!(split_args(b"'open"), None);
        assert_eq!(split_args(b""), Some(vec![]));
    }

    #[test]
    fn replies_in_both_protocols() {
        let enc = |r: &Reply, v| {
            let mut out = Vec::new();
            r.encode(v, &mut out);
            String::from_utf8(out).unwrap()
        };
        assert_eq!(enc(&Reply::Null, 2), "$-1\r\n");
        assert_eq!(enc(&Reply::Null, 3), "_\r\n");
        let map = Reply::Map(vec![(Reply::bulk("a"), Reply::Integer(1))]);
        assert_eq!(enc(&map, 2), "*2\r\n$1\r\na\r\n:1\r\n");
        assert_eq!(enc(&map, 3), "%1\r\n$1\r\na\r\n:1\r\n");
        assert_eq!(enc(&Reply::error("ERR x\r\ny"), 2), "-ERR xy\r\n");
    }

    proptest! {
        /// Guarantees 1 and 4: any split of a pipeline parses alike; any bytes never panic.
        #[test]
        fn splits_parse_alike_and_garbage_never_panics(
            reqs in prop::collection::vec(prop::collection::vec(prop::collection::vec(any::<u8>(), 0..20), 1..4), 1..5),
            cut in any::<prop::sample::Index>(),
            garbage in prop::collection::vec(any::<u8>(), 0..200),
        ) {
            let mut wire = Vec::new();
            for r in &reqs {
                wire.extend(format!("*{}\r\n", r.len()).bytes());
                for a in r {
                    wire.extend(format!("${}\r\n", a.len()).bytes());
                    wire.extend(a);
                    wire.extend(b"\r\n");
                }
            }
            let at = cut.index(wire.len() + 1);
            let mut buf = BytesMut::from(&wire[..at]);
            let mut got = Vec::new();
            while let Some(r) = parse_request(&mut buf).unwrap() {
                got.push(r);
            }
            buf.extend_from_slice(&wire[at..]);
            while let Some(r) = parse_request(&mut buf).unwrap() {
                got.push(r);
            }
            prop_assert_eq!(got, reqs);
            let _ = parse_all(&garbage);
        }
    }
}
