//! RESP2 and RESP3, the Redis wire protocol, as pure code: bytes in, [`Frame`]s and
//! commands out, bytes back. No I/O; the connection task owns the socket and the buffers.
//!
//! ```text
//!  server:  socket ──▶ BytesMut ──parse_request──▶ Vec<Bytes> (one command)
//!                                                       │ handler
//!           socket ◀── BytesMut ◀──encode(proto)─── Frame (the reply)
//!  client:  socket ──▶ BytesMut ──parse_frame───▶ Frame    (tests, differential harness)
//! ```
//!
//! Requests are read the way Redis 7.0 reads them (`processMultibulkBuffer`,
//! `processInlineBuffer` and `sdssplitargs` in its `networking.c` and `sds.c`), quirks
//! included, so that redis-cli, redis-py, redis-rs and redis-benchmark see the same server:
//!
//! * a length line ends at the first `\r`, and the byte after it is skipped unchecked, as
//!   are the two bytes after a bulk argument (`*1\rX$4\rYPINGxx` is `PING`);
//! * Redis searches its NUL-terminated buffer with `strchr`, so a NUL byte before the end
//!   of a line hides the line: the request waits for more bytes, until the size limit;
//! * `*0`, `*-1` and blank inline lines are skipped.
//!
//! Replies are written as Redis 7.0 writes them for the client's protocol: a RESP3-only
//! type reaching a RESP2 client is downgraded (see [`encode`]).
//!
//! # Guarantees
//!
//! 1. **Incremental.** [`parse_request`] and [`parse_frame`] consume exactly one complete
//!    command or frame from the front of the buffer, or nothing (`Ok(None)`) until more
//!    bytes arrive; a stream split anywhere parses to the same sequence as unsplit.
//! 2. **Redis's request grammar.** Multibulk and inline requests, the inline quoting rules
//!    of `sdssplitargs` and the quirks above are Redis 7.0's.
//! 3. **Redis's error texts.** Every [`ProtocolError`] of [`parse_request`] carries the
//!    reply Redis sends, byte for byte ([`ProtocolError::reply`]). A protocol error ends
//!    the connection: it is answered with that reply and closed, as Redis does, and the
//!    rest of the buffer is never parsed.
//! 4. **No allocation on a promise.** A declared bulk length reserves at most
//!    [`PREALLOC_BYTES_MAX`] bytes ahead, and a declared count at most
//!    [`PREALLOC_ITEMS_MAX`] slots; the rest grows only as bytes arrive.
//! 5. **Round trip.** `parse_frame(encode(f, Resp3)) == f` for every frame, except that a
//!    RESP2 null ([`Frame::NullBulk`], [`Frame::NullArray`]) comes back as [`Frame::Null`]
//!    (RESP3 has one null), CR and LF in a line type come back as spaces, and NaN is not
//!    equal to itself. For frames of RESP2 types the same holds with `Resp2`.
//! 6. **Redis 7.0's RESP2 downgrade**, byte for byte (see [`encode`]).
//! 7. **Never panics** on any input bytes, and [`parse_frame`] recurses at most
//!    `max_depth` levels.
//!
//! ```
//! use bytes::BytesMut;
//! use concord_server::resp::{encode, parse_request, Frame, Limits, Protocol};
//!
//! let mut input = BytesMut::from(&b"*2\r\n$4\r\nECHO\r\n$2\r\nhi\r\nPING\r\n"[..]);
//! let echo = parse_request(&mut input, &Limits::default())?.expect("complete");
//! assert_eq!(echo, ["ECHO", "hi"]);
//! let ping = parse_request(&mut input, &Limits::default())?.expect("complete");
//! assert_eq!(ping, ["PING"]);
//!
//! let mut output = BytesMut::new();
//! encode(&Frame::Boolean(true), Protocol::Resp2, &mut output);
//! encode(&Frame::Boolean(true), Protocol::Resp3, &mut output);
//! assert_eq!(&output[..], b":1\r\n#t\r\n");
//! # Ok::<(), concord_server::resp::ProtocolError>(())
//! ```

#[cfg(test)]
mod tests;

use std::fmt::Write as _;

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// Most bytes [`parse_request`] reserves ahead for a declared bulk that has not arrived.
pub const PREALLOC_BYTES_MAX: usize = 64 << 10;
/// Most slots reserved for a declared argument or element count (Redis's `argv` starts at
/// `min(count, 1024)`).
pub const PREALLOC_ITEMS_MAX: usize = 1024;

/// The protocol a connection speaks: RESP2 until the client says `HELLO 3`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Protocol {
    /// RESP2, every Redis client's default.
    #[default]
    Resp2,
    /// RESP3, after `HELLO 3`.
    Resp3,
}

/// One RESP value. Each variant names its RESP3 wire form; [`encode`] says what a RESP2
/// client receives instead.
#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    /// `+OK`: a line without CR or LF.
    Simple(Bytes),
    /// `-ERR unknown command`: the text starts with the error code.
    Error(Bytes),
    /// `:42`.
    Integer(i64),
    /// `$5\r\nhello`: binary safe.
    Bulk(Bytes),
    /// `$-1`: RESP2's null bulk string, as parsed from a RESP2 stream. Written as
    /// [`Frame::Null`] is.
    NullBulk,
    /// `*-1`: RESP2's null array (Redis's `addReplyNullArray`); `_` in RESP3.
    NullArray,
    /// `_`: RESP3's null; `$-1` in RESP2 (Redis's `addReplyNull`). The "no value" reply.
    Null,
    /// `*2\r\n...`.
    Array(Vec<Frame>),
    /// `#t` or `#f`.
    Boolean(bool),
    /// `,3.14`, `,inf`, `,-inf`.
    Double(f64),
    /// `(3492890328409238509324850943850943825024385`: an optional `-`, then digits.
    BigNumber(Bytes),
    /// `!21\r\nSYNTAX invalid syntax`: an error that may hold any bytes.
    BulkError(Bytes),
    /// `=15\r\ntxt:Some string`: text with its 3-byte format (`txt`, `mkd`).
    Verbatim {
        /// The format, such as `*b"txt"`.
        format: [u8; 3],
        /// The text after `format:`.
        text: Bytes,
    },
    /// `%2\r\n...`: keys and values, in order.
    Map(Vec<(Frame, Frame)>),
    /// `~2\r\n...`.
    Set(Vec<Frame>),
    /// `|1\r\n...`: attributes, then the frame they describe.
    Attribute {
        /// The attribute map.
        attributes: Vec<(Frame, Frame)>,
        /// The frame that follows the attributes on the wire.
        data: Box<Frame>,
    },
    /// `>2\r\n...`: an out-of-band message (pub/sub, client tracking).
    Push(Vec<Frame>),
}

impl Frame {
    /// `+OK`.
    pub fn ok() -> Frame {
        Frame::Simple(Bytes::from_static(b"OK"))
    }

    /// A simple string: `+text`.
    pub fn simple(text: impl Into<Bytes>) -> Frame {
        Frame::Simple(text.into())
    }

    /// An error reply; `text` starts with the error code: `Frame::error("ERR syntax error")`.
    pub fn error(text: impl Into<Bytes>) -> Frame {
        Frame::Error(text.into())
    }

    /// A bulk string.
    pub fn bulk(bytes: impl Into<Bytes>) -> Frame {
        Frame::Bulk(bytes.into())
    }

    /// The null reply that stands for a missing bulk string (`GET` of a missing key).
    pub fn null() -> Frame {
        Frame::Null
    }

    /// The null reply that stands for a missing array (`BLPOP` timing out).
    pub fn null_array() -> Frame {
        Frame::NullArray
    }
}

/// Redis's protocol limits for requests; the defaults are Redis 7.0's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Longest bulk argument, in bytes: Redis's `proto-max-bulk-len` (512 MiB). Longer is
    /// `invalid bulk length`.
    pub max_bulk_len: usize,
    /// Most bytes waiting in the buffer without the end of an inline request, or of a
    /// `*<count>` or `$<len>` line: Redis's `PROTO_INLINE_MAX_SIZE` (64 KiB). More is
    /// `too big inline request`, `too big mbulk count string` or `too big bulk count string`.
    pub max_inline_len: usize,
    /// Most arguments in one multibulk request: `INT_MAX` in Redis 7 (`ll > INT_MAX` in
    /// `processMultibulkBuffer`). More is `invalid multibulk length`.
    pub max_multibulk_len: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_bulk_len: 512 << 20,
            max_inline_len: 64 << 10,
            // i32::MAX fits every usize Concord builds for (32 and 64 bits).
            max_multibulk_len: i32::MAX as usize,
        }
    }
}

/// A malformed request or reply. After any of them the connection is answered
/// ([`ProtocolError::reply`]) and closed.
///
/// The request errors display as Redis's reply text, which starts with the error code
/// `ERR`; the reply errors follow the crate's lowercase style.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProtocolError {
    /// `*<count>` is not a number, or is above [`Limits::max_multibulk_len`].
    #[error("ERR Protocol error: invalid multibulk length")]
    InvalidMultibulkLength,
    /// `$<len>` is not a number, is negative, or is above [`Limits::max_bulk_len`].
    #[error("ERR Protocol error: invalid bulk length")]
    InvalidBulkLength,
    /// A multibulk argument does not start with `$`; holds the byte as Redis prints it
    /// (CR and LF as a space).
    #[error("ERR Protocol error: expected '$', got '{}'", .0.escape_ascii())]
    ExpectedDollar(u8),
    /// No end of line within [`Limits::max_inline_len`] bytes of an inline request.
    #[error("ERR Protocol error: too big inline request")]
    TooBigInlineRequest,
    /// No end of the `*<count>` line within [`Limits::max_inline_len`] bytes.
    #[error("ERR Protocol error: too big mbulk count string")]
    TooBigMultibulkCount,
    /// No end of a `$<len>` line within [`Limits::max_inline_len`] bytes.
    #[error("ERR Protocol error: too big bulk count string")]
    TooBigBulkCount,
    /// An inline request with an open quote, or a closing quote not followed by a space.
    #[error("ERR Protocol error: unbalanced quotes in request")]
    UnbalancedQuotes,
    /// A reply with a malformed part (its name).
    #[error("invalid {0} in reply")]
    InvalidReply(&'static str),
    /// A reply starting with a byte that is no RESP type.
    #[error("unknown reply type byte {0:#04x}")]
    UnknownType(u8),
    /// A reply nested deeper than the `max_depth` given to [`parse_frame`].
    #[error("reply nested deeper than {0} levels")]
    TooDeep(usize),
}

impl ProtocolError {
    /// The error reply Redis sends before closing the connection, byte for byte (the text
    /// of [`ProtocolError::ExpectedDollar`] holds the raw byte, which `Display` escapes).
    pub fn reply(&self) -> Frame {
        match self {
            ProtocolError::ExpectedDollar(got) => {
                let mut text = b"ERR Protocol error: expected '$', got '".to_vec();
                text.extend([*got, b'\'']);
                Frame::Error(text.into())
            }
            other => Frame::Error(other.to_string().into()),
        }
    }
}

/// `Ok(Some(_))`: a complete value; `Ok(None)`: more bytes are needed.
type Parsed<T> = Result<Option<T>, ProtocolError>;

/// Unwraps `Ok(Some(v))`, or returns `Ok(None)` or the error from the enclosing function.
macro_rules! need {
    ($parsed:expr) => {
        match $parsed? {
            Some(v) => v,
            None => return Ok(None),
        }
    };
}

// ---------------------------------------------------------------------------------------
// Requests (server side)
// ---------------------------------------------------------------------------------------

/// Takes one command from the front of `buf`: its arguments, at least one.
///
/// `Ok(None)` means more bytes are needed; nothing but skipped empty requests (`*0`,
/// `*-1`, blank lines) has been consumed then. A multibulk command's arguments share the
/// buffer's memory; inline ones are copied out of their quoting. A declared bulk that has
/// not arrived reserves at most [`PREALLOC_BYTES_MAX`] more bytes in `buf`.
///
/// The parser keeps no state between calls: a partial command's length lines are read
/// again on the next call (its bulk payloads are skipped by length, not scanned).
///
/// An error is the reply to send before closing the connection, as Redis does.
pub fn parse_request(
    buf: &mut BytesMut,
    limits: &Limits,
) -> Result<Option<Vec<Bytes>>, ProtocolError> {
    loop {
        let request = match buf.first() {
            None => return Ok(None),
            Some(b'*') => need!(multibulk(buf, limits)),
            Some(_) => need!(inline(buf, limits)),
        };
        if !request.is_empty() {
            return Ok(Some(request));
        }
    }
}

/// `*<count>\r\n` then `count` times `$<len>\r\n<bytes>\r\n` (`processMultibulkBuffer`).
fn multibulk(buf: &mut BytesMut, limits: &Limits) -> Parsed<Vec<Bytes>> {
    let (line, mut pos) = need!(length_line(
        buf,
        0,
        limits.max_inline_len,
        ProtocolError::TooBigMultibulkCount
    ));
    let count = line
        .get(1..)
        .and_then(string2ll)
        .filter(|&n| n <= i64::try_from(limits.max_multibulk_len).unwrap_or(i64::MAX))
        .ok_or(ProtocolError::InvalidMultibulkLength)?;
    // Redis skips a count of zero or less, as it does a blank inline line.
    let Ok(count @ 1..) = usize::try_from(count) else {
        buf.advance(pos);
        return Ok(Some(Vec::new()));
    };
    let mut spans = Vec::with_capacity(count.min(PREALLOC_ITEMS_MAX));
    for _ in 0..count {
        let (line, start) = need!(length_line(
            buf,
            pos,
            limits.max_inline_len,
            ProtocolError::TooBigBulkCount
        ));
        let digits = match line.split_first() {
            Some((b'$', digits)) => digits,
            // Redis's error text maps CR and LF to spaces; an empty line starts with CR.
            Some((b'\n', _)) | None => return Err(ProtocolError::ExpectedDollar(b' ')),
            Some((&got, _)) => return Err(ProtocolError::ExpectedDollar(got)),
        };
        let len = string2ll(digits)
            .and_then(|n| usize::try_from(n).ok())
            .filter(|&n| n <= limits.max_bulk_len)
            .ok_or(ProtocolError::InvalidBulkLength)?;
        // Redis skips the two bytes after the argument without checking them.
        let end = start.saturating_add(len).saturating_add(2);
        if buf.len() < end {
            buf.reserve((end - buf.len()).min(PREALLOC_BYTES_MAX));
            return Ok(None);
        }
        spans.push(start..start + len);
        pos = end;
    }
    let request = buf.split_to(pos).freeze();
    Ok(Some(spans.into_iter().map(|r| request.slice(r)).collect()))
}

/// The `*<count>` or `$<len>` line at `pos`, and where the next one starts.
///
/// As Redis: the line ends at the first `\r` (searched with `strchr`, so a NUL byte hides
/// it), one more byte must have arrived, and it is skipped whatever it is.
fn length_line(
    buf: &[u8],
    pos: usize,
    limit: usize,
    too_big: ProtocolError,
) -> Parsed<(&[u8], usize)> {
    let rest = buf.get(pos..).unwrap_or_default();
    let Some(cr) = c_strchr(rest, b'\r') else {
        return if rest.len() > limit {
            Err(too_big)
        } else {
            Ok(None)
        };
    };
    if cr + 2 > rest.len() {
        return Ok(None);
    }
    Ok(rest.get(..cr).map(|line| (line, pos + cr + 2)))
}

/// A line of space-separated arguments ending in `\n` or `\r\n` (`processInlineBuffer`).
fn inline(buf: &mut BytesMut, limits: &Limits) -> Parsed<Vec<Bytes>> {
    let Some(newline) = c_strchr(buf, b'\n') else {
        return if buf.len() > limits.max_inline_len {
            Err(ProtocolError::TooBigInlineRequest)
        } else {
            Ok(None)
        };
    };
    let line = buf.get(..newline).unwrap_or_default();
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let args = split_args(line).ok_or(ProtocolError::UnbalancedQuotes)?;
    buf.advance(newline + 1);
    Ok(Some(args))
}

/// Where `byte` first occurs in `buf`, as C's `strchr` finds it in Redis's NUL-terminated
/// query buffer: never past a NUL byte.
fn c_strchr(buf: &[u8], byte: u8) -> Option<usize> {
    buf.iter().take_while(|&&b| b != 0).position(|&b| b == byte)
}

/// Splits an inline request line as Redis's `sdssplitargs` does; `None` for unbalanced
/// quotes.
///
/// Blanks (C's `isspace`: space, `\t`, `\n`, `\v`, `\f`, `\r`) separate arguments, but only
/// space, `\t`, `\n` and `\r` end an unquoted one. A quote opens quoting even within an
/// argument (`foo"bar baz"` is `foobar baz`). Inside `"..."`: `\n \r \t \b \a`, `\xHH`, and
/// a backslash before any other byte stands for that byte. Inside `'...'`: only `\'`. A
/// closing quote must be followed by a blank or the end. A NUL byte ends the line, as in C.
pub fn split_args(line: &[u8]) -> Option<Vec<Bytes>> {
    let mut rest = line.split(|&b| b == 0).next().unwrap_or_default();
    let mut args = Vec::new();
    loop {
        rest = trim_c_space_start(rest);
        if rest.is_empty() {
            return Some(args);
        }
        let mut arg = Vec::new();
        rest = split_arg(rest, &mut arg)?;
        args.push(Bytes::from(arg));
    }
}

#[derive(Clone, Copy)]
enum Quoting {
    None,
    Double,
    Single,
}

/// Reads one argument of [`split_args`] into `arg`; returns what follows it.
fn split_arg<'a>(mut rest: &'a [u8], arg: &mut Vec<u8>) -> Option<&'a [u8]> {
    let mut quoting = Quoting::None;
    loop {
        (quoting, rest) = match (quoting, rest) {
            (Quoting::None, [] | [b' ' | b'\n' | b'\r' | b'\t', ..]) => return Some(rest),
            (Quoting::None, [b'"', tail @ ..]) => (Quoting::Double, tail),
            (Quoting::None, [b'\'', tail @ ..]) => (Quoting::Single, tail),
            (Quoting::Double, [b'\\', b'x', high, low, tail @ ..])
                if high.is_ascii_hexdigit() && low.is_ascii_hexdigit() =>
            {
                arg.push((hex_value(*high) << 4) | hex_value(*low));
                (quoting, tail)
            }
            (Quoting::Double, [b'\\', escaped, tail @ ..]) => {
                arg.push(match escaped {
                    b'n' => b'\n',
                    b'r' => b'\r',
                    b't' => b'\t',
                    b'b' => 0x08,
                    b'a' => 0x07,
                    other => *other,
                });
                (quoting, tail)
            }
            (Quoting::Single, [b'\\', b'\'', tail @ ..]) => {
                arg.push(b'\'');
                (quoting, tail)
            }
            (Quoting::Double, [b'"', tail @ ..]) | (Quoting::Single, [b'\'', tail @ ..]) => {
                return match tail.first() {
                    Some(&b) if !is_c_space(b) => None,
                    _ => Some(tail),
                };
            }
            (Quoting::Double | Quoting::Single, []) => return None,
            (_, [byte, tail @ ..]) => {
                arg.push(*byte);
                (quoting, tail)
            }
        };
    }
}

/// C's `isspace` in the "C" locale.
fn is_c_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r')
}

fn trim_c_space_start(s: &[u8]) -> &[u8] {
    let blanks = s.iter().take_while(|&&b| is_c_space(b)).count();
    s.get(blanks..).unwrap_or_default()
}

fn hex_value(digit: u8) -> u8 {
    match digit {
        b'0'..=b'9' => digit - b'0',
        b'a'..=b'f' => digit - b'a' + 10,
        b'A'..=b'F' => digit - b'A' + 10,
        _ => 0,
    }
}

/// Redis's `string2ll`: an optional `-`, then digits without a leading zero (`0` alone is
/// fine), fewer than 21 bytes, within `i64`. No `+`, no `-0`, no blanks.
fn string2ll(s: &[u8]) -> Option<i64> {
    if s.is_empty() || s.len() >= 21 {
        return None;
    }
    if s == b"0" {
        return Some(0);
    }
    let (negative, digits) = match s.split_first() {
        Some((b'-', digits)) => (true, digits),
        _ => (false, s),
    };
    if !matches!(digits.first(), Some(b'1'..=b'9')) {
        return None;
    }
    let mut magnitude: u64 = 0;
    for &b in digits {
        if !b.is_ascii_digit() {
            return None;
        }
        magnitude = magnitude
            .checked_mul(10)?
            .checked_add(u64::from(b - b'0'))?;
    }
    if negative {
        0i64.checked_sub_unsigned(magnitude)
    } else {
        i64::try_from(magnitude).ok()
    }
}

// ---------------------------------------------------------------------------------------
// Replies (client side)
// ---------------------------------------------------------------------------------------

/// Takes one frame of any RESP2 or RESP3 type from the front of `buf`.
///
/// `Ok(None)` means more bytes are needed and nothing was consumed; the next call parses
/// the frame again from its start. Aggregates nested more than `max_depth` levels deep
/// are [`ProtocolError::TooDeep`] (a top-level array is one level); the parser recurses
/// once per level, so `max_depth` also bounds its stack. Payloads are copied out. RESP3's
/// streamed strings and aggregates (`$?`), which Redis never sends, are not read.
pub fn parse_frame(buf: &mut BytesMut, max_depth: usize) -> Result<Option<Frame>, ProtocolError> {
    let mut reader = Reader {
        buf: &buf[..],
        pos: 0,
        max_depth,
    };
    let frame = need!(reader.frame(0));
    let consumed = reader.pos;
    buf.advance(consumed);
    Ok(Some(frame))
}

/// A cursor over a buffer holding the start of a reply.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    max_depth: usize,
}

impl<'a> Reader<'a> {
    /// The frame at the cursor; `depth` aggregates enclose it.
    fn frame(&mut self, depth: usize) -> Parsed<Frame> {
        let line = need!(self.line());
        let Some((&kind, body)) = line.split_first() else {
            return Err(ProtocolError::InvalidReply("type byte"));
        };
        let copy = Bytes::copy_from_slice;
        let frame = match kind {
            b'+' => Frame::Simple(copy(body)),
            b'-' => Frame::Error(copy(body)),
            b':' => Frame::Integer(string2ll(body).ok_or(ProtocolError::InvalidReply("integer"))?),
            b'_' if body.is_empty() => Frame::Null,
            b'#' if body == b"t" => Frame::Boolean(true),
            b'#' if body == b"f" => Frame::Boolean(false),
            b',' => Frame::Double(parse_double(body).ok_or(ProtocolError::InvalidReply("double"))?),
            b'(' => Frame::BigNumber(parse_big_number(body)?),
            b'$' if body == b"-1" => Frame::NullBulk,
            b'$' => Frame::Bulk(copy(need!(self.payload(length(body)?)))),
            b'!' => Frame::BulkError(copy(need!(self.payload(length(body)?)))),
            b'=' => match need!(self.payload(length(body)?)) {
                [a, b, c, b':', text @ ..] => Frame::Verbatim {
                    format: [*a, *b, *c],
                    text: copy(text),
                },
                _ => return Err(ProtocolError::InvalidReply("verbatim string")),
            },
            b'*' if body == b"-1" => Frame::NullArray,
            b'*' => Frame::Array(need!(self.frames(length(body)?, depth))),
            b'~' => Frame::Set(need!(self.frames(length(body)?, depth))),
            b'>' => Frame::Push(need!(self.frames(length(body)?, depth))),
            b'%' => Frame::Map(need!(self.pairs(length(body)?, depth))),
            b'|' => Frame::Attribute {
                attributes: need!(self.pairs(length(body)?, depth)),
                data: Box::new(need!(self.frame(depth + 1))),
            },
            b'_' => return Err(ProtocolError::InvalidReply("null")),
            b'#' => return Err(ProtocolError::InvalidReply("boolean")),
            _ => return Err(ProtocolError::UnknownType(kind)),
        };
        Ok(Some(frame))
    }

    /// `count` frames, the elements of an aggregate at `depth`.
    fn frames(&mut self, count: usize, depth: usize) -> Parsed<Vec<Frame>> {
        self.check_depth(depth)?;
        let mut frames = Vec::with_capacity(count.min(PREALLOC_ITEMS_MAX));
        for _ in 0..count {
            frames.push(need!(self.frame(depth + 1)));
        }
        Ok(Some(frames))
    }

    /// `count` key-value pairs, the elements of a map or attribute at `depth`.
    fn pairs(&mut self, count: usize, depth: usize) -> Parsed<Vec<(Frame, Frame)>> {
        self.check_depth(depth)?;
        let mut pairs = Vec::with_capacity(count.min(PREALLOC_ITEMS_MAX));
        for _ in 0..count {
            let key = need!(self.frame(depth + 1));
            pairs.push((key, need!(self.frame(depth + 1))));
        }
        Ok(Some(pairs))
    }

    /// An aggregate may open at `depth` only below `max_depth`.
    fn check_depth(&self, depth: usize) -> Result<(), ProtocolError> {
        if depth >= self.max_depth {
            return Err(ProtocolError::TooDeep(self.max_depth));
        }
        Ok(())
    }

    /// The bytes up to the next `\r\n`, which is consumed too.
    fn line(&mut self) -> Parsed<&'a [u8]> {
        let rest = self.buf.get(self.pos..).unwrap_or_default();
        let Some(end) = rest.windows(2).position(|w| w == b"\r\n") else {
            return Ok(None);
        };
        self.pos += end + 2;
        Ok(rest.get(..end))
    }

    /// `len` bytes, which must be followed by `\r\n`.
    fn payload(&mut self, len: usize) -> Parsed<&'a [u8]> {
        let rest = self.buf.get(self.pos..).unwrap_or_default();
        let (Some(payload), Some(end)) = (rest.get(..len), rest.get(len..len.saturating_add(2)))
        else {
            return Ok(None);
        };
        if end != b"\r\n" {
            return Err(ProtocolError::InvalidReply("end of bulk"));
        }
        self.pos += len + 2;
        Ok(Some(payload))
    }
}

/// A length or count: a non-negative integer.
fn length(digits: &[u8]) -> Result<usize, ProtocolError> {
    string2ll(digits)
        .and_then(|n| usize::try_from(n).ok())
        .ok_or(ProtocolError::InvalidReply("length"))
}

/// `inf`, `-inf`, `nan` or a decimal number, as `strtod` reads what Redis writes.
fn parse_double(text: &[u8]) -> Option<f64> {
    std::str::from_utf8(text).ok()?.parse().ok()
}

/// An optional `-`, then one digit or more.
fn parse_big_number(text: &[u8]) -> Result<Bytes, ProtocolError> {
    let digits = text.strip_prefix(b"-").unwrap_or(text);
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return Err(ProtocolError::InvalidReply("big number"));
    }
    Ok(Bytes::copy_from_slice(text))
}

// ---------------------------------------------------------------------------------------
// Encoding
// ---------------------------------------------------------------------------------------

/// Appends `frame` to `out` as Redis 7.0 writes it to a client speaking `proto`.
///
/// RESP3 types reach a RESP2 client as Redis downgrades them:
///
/// | frame                      | RESP2                                      |
/// |----------------------------|--------------------------------------------|
/// | `Null`, `NullBulk`         | `$-1` (`addReplyNull`)                     |
/// | `NullArray`                | `*-1` (`addReplyNullArray`; RESP3: `_`)    |
/// | `Boolean`                  | `:1` or `:0`                               |
/// | `Double`                   | a bulk string of `%.17g`, `inf` or `-inf`  |
/// | `BigNumber`                | a bulk string of its digits                |
/// | `BulkError`                | a simple error, CR and LF as spaces        |
/// | `Verbatim`                 | a bulk string of its text, without format  |
/// | `Map`                      | a flat array of keys and values            |
/// | `Set`, `Push`              | an array                                   |
/// | `Attribute`                | only its data                              |
///
/// CR and LF in a simple string, error or big number are written as spaces, as Redis's
/// `addReplyErrorFormat` does, so that the output is always well formed.
pub fn encode(frame: &Frame, proto: Protocol, out: &mut BytesMut) {
    let resp3 = proto == Protocol::Resp3;
    match frame {
        Frame::Simple(text) => put_line(out, b'+', text),
        Frame::Error(text) => put_line(out, b'-', text),
        Frame::Integer(n) => put_header(out, b':', n),
        Frame::Bulk(bytes) => put_bulk(out, b'$', bytes),
        Frame::Null | Frame::NullBulk | Frame::NullArray if resp3 => out.put_slice(b"_\r\n"),
        Frame::Null | Frame::NullBulk => out.put_slice(b"$-1\r\n"),
        Frame::NullArray => out.put_slice(b"*-1\r\n"),
        Frame::Array(items) => put_aggregate(out, b'*', items, proto),
        Frame::Boolean(b) if resp3 => out.put_slice(if *b { b"#t\r\n" } else { b"#f\r\n" }),
        Frame::Boolean(b) => out.put_slice(if *b { b":1\r\n" } else { b":0\r\n" }),
        Frame::Double(d) if resp3 => put_line(out, b',', format_double(*d).as_bytes()),
        Frame::Double(d) => put_bulk(out, b'$', format_double(*d).as_bytes()),
        Frame::BigNumber(digits) if resp3 => put_line(out, b'(', digits),
        Frame::BigNumber(digits) => put_bulk(out, b'$', digits),
        Frame::BulkError(text) if resp3 => put_bulk(out, b'!', text),
        Frame::BulkError(text) => put_line(out, b'-', text),
        Frame::Verbatim { format, text } if resp3 => {
            put_header(out, b'=', text.len().saturating_add(4));
            out.put_slice(format);
            out.put_u8(b':');
            out.put_slice(text);
            out.put_slice(b"\r\n");
        }
        Frame::Verbatim { text, .. } => put_bulk(out, b'$', text),
        Frame::Map(pairs) if resp3 => put_pairs(out, b'%', pairs, proto),
        Frame::Map(pairs) => {
            put_header(out, b'*', pairs.len().saturating_mul(2));
            for (key, value) in pairs {
                encode(key, proto, out);
                encode(value, proto, out);
            }
        }
        Frame::Set(items) => put_aggregate(out, if resp3 { b'~' } else { b'*' }, items, proto),
        Frame::Push(items) => put_aggregate(out, if resp3 { b'>' } else { b'*' }, items, proto),
        Frame::Attribute { attributes, data } => {
            if resp3 {
                put_pairs(out, b'|', attributes, proto);
            }
            encode(data, proto, out);
        }
    }
}

fn put_header(out: &mut BytesMut, kind: u8, n: impl std::fmt::Display) {
    out.put_u8(kind);
    // Writing to a BytesMut cannot fail.
    let _ = write!(out, "{n}\r\n");
}

fn put_line(out: &mut BytesMut, kind: u8, text: &[u8]) {
    out.put_u8(kind);
    out.extend(
        text.iter()
            .map(|&b| if b == b'\r' || b == b'\n' { b' ' } else { b }),
    );
    out.put_slice(b"\r\n");
}

fn put_bulk(out: &mut BytesMut, kind: u8, bytes: &[u8]) {
    put_header(out, kind, bytes.len());
    out.put_slice(bytes);
    out.put_slice(b"\r\n");
}

fn put_aggregate(out: &mut BytesMut, kind: u8, items: &[Frame], proto: Protocol) {
    put_header(out, kind, items.len());
    for item in items {
        encode(item, proto, out);
    }
}

fn put_pairs(out: &mut BytesMut, kind: u8, pairs: &[(Frame, Frame)], proto: Protocol) {
    put_header(out, kind, pairs.len());
    for (key, value) in pairs {
        encode(key, proto, out);
        encode(value, proto, out);
    }
}

/// `d` as Redis 7.0 writes a double: C's `%.17g` (17 significant digits, trailing zeros
/// dropped, exponent form below 1e-4 and from 1e17), with `inf` and `-inf` (and glibc's
/// `nan`, `-nan`). Redis 7.2 and later write the shortest round-trip form instead.
fn format_double(d: f64) -> String {
    if d.is_nan() {
        return if d.is_sign_negative() { "-nan" } else { "nan" }.into();
    }
    if d.is_infinite() {
        return if d > 0.0 { "inf" } else { "-inf" }.into();
    }
    // %g picks its style from the exponent of the %e form, after rounding.
    let scientific = format!("{d:.16e}");
    let (mantissa, exponent) = scientific.split_once('e').unwrap_or((&scientific, "0"));
    let exponent: i32 = exponent.parse().unwrap_or_default();
    if (-4..17).contains(&exponent) {
        let decimals = usize::try_from(16 - exponent).unwrap_or_default();
        trim_fraction(&format!("{d:.decimals$}")).to_owned()
    } else {
        let sign = if exponent < 0 { '-' } else { '+' };
        let mantissa = trim_fraction(mantissa);
        format!("{mantissa}e{sign}{:02}", exponent.unsigned_abs())
    }
}

/// Drops the zeros ending a fraction, then a bare decimal point.
fn trim_fraction(number: &str) -> &str {
    if number.contains('.') {
        number.trim_end_matches('0').trim_end_matches('.')
    } else {
        number
    }
}
