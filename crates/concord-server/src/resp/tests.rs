//! Tests of the RESP codec, one or more per guarantee of the module doc.
//!
//! Every literal wire expectation marked "redis-server 7.0" was checked against Debian's
//! redis-server 7.0.15: raw bytes sent over a Unix socket with Python, the reply (and
//! whether the connection was closed) recorded; RESP3 replies and their RESP2 downgrades
//! come from `DEBUG PROTOCOL <type>` with and without `HELLO 3`, doubles from `ZSCORE`.

use bytes::{Bytes, BytesMut};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::{select, Index};

use super::*;

const DEPTH: usize = 64;

fn args(words: &[&[u8]]) -> Vec<Bytes> {
    words.iter().map(|w| Bytes::copy_from_slice(w)).collect()
}

/// Feeds `wire` in chunks cut at `cuts`, taking every complete item after each chunk.
fn feed<T>(
    wire: &[u8],
    cuts: &[usize],
    mut parse: impl FnMut(&mut BytesMut) -> Result<Option<T>, ProtocolError>,
) -> Result<Vec<T>, ProtocolError> {
    let mut cuts: Vec<usize> = cuts.iter().map(|&c| c.min(wire.len())).collect();
    cuts.push(wire.len());
    cuts.sort_unstable();
    let (mut buf, mut from, mut items) = (BytesMut::new(), 0, Vec::new());
    for cut in cuts {
        buf.extend_from_slice(&wire[from..cut]);
        from = cut;
        while let Some(item) = parse(&mut buf)? {
            items.push(item);
        }
    }
    assert!(buf.is_empty(), "left over: {buf:?}");
    Ok(items)
}

fn requests(wire: &[u8]) -> Result<Vec<Vec<Bytes>>, ProtocolError> {
    feed(wire, &[], |buf| parse_request(buf, &Limits::default()))
}

fn first_error(wire: &[u8]) -> ProtocolError {
    let mut buf = BytesMut::from(wire);
    loop {
        match parse_request(&mut buf, &Limits::default()) {
            Ok(Some(_)) => {}
            Ok(None) => panic!("no error in {wire:?}"),
            Err(e) => return e,
        }
    }
}

fn encoded(frame: &Frame, proto: Protocol) -> Vec<u8> {
    let mut out = BytesMut::new();
    encode(frame, proto, &mut out);
    out.to_vec()
}

/// The example of the module doc, which `--lib` does not run as a doctest.
#[test]
fn module_doc_example() -> Result<(), ProtocolError> {
    let mut input = BytesMut::from(&b"*2\r\n$4\r\nECHO\r\n$2\r\nhi\r\nPING\r\n"[..]);
    let echo = parse_request(&mut input, &Limits::default())?.expect("complete");
    assert_eq!(echo, ["ECHO", "hi"]);
    let ping = parse_request(&mut input, &Limits::default())?.expect("complete");
    assert_eq!(ping, ["PING"]);

    let mut output = BytesMut::new();
    encode(&Frame::Boolean(true), Protocol::Resp2, &mut output);
    encode(&Frame::Boolean(true), Protocol::Resp3, &mut output);
    assert_eq!(&output[..], b":1\r\n#t\r\n");
    Ok(())
}

/// Guarantees 1 and 2: a pipeline of both request forms, fed whole, split at every
/// boundary, and byte by byte.
#[test]
fn pipeline_split_at_every_boundary_parses_alike() {
    let wire = b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$3\r\na\0b\r\nGET k\r\n*0\r\n\
                 \r\nECHO \"x y\" 'z'\n*1\r\n$4\r\nPING\r\n";
    let expected = vec![
        args(&[b"SET", b"k", b"a\0b"]),
        args(&[b"GET", b"k"]),
        args(&[b"ECHO", b"x y", b"z"]),
        args(&[b"PING"]),
    ];
    assert_eq!(requests(wire), Ok(expected.clone()));
    for cut in 0..=wire.len() {
        let got = feed(wire, &[cut], |buf| parse_request(buf, &Limits::default()));
        assert_eq!(got, Ok(expected.clone()), "cut at {cut}");
    }
    let every: Vec<usize> = (0..wire.len()).collect();
    let got = feed(wire, &every, |buf| parse_request(buf, &Limits::default()));
    assert_eq!(got, Ok(expected));
}

/// Guarantee 1: an incomplete request consumes nothing.
#[test]
fn an_incomplete_request_consumes_nothing() {
    for wire in [
        &b"*2\r\n$3\r\nGET\r\n$1\r\n"[..],
        b"*2\r",
        b"GET k",
        b"*1\r\n$4\r\nPING\r",
    ] {
        let mut buf = BytesMut::from(wire);
        assert_eq!(parse_request(&mut buf, &Limits::default()), Ok(None));
        assert_eq!(&buf[..], wire);
    }
}

/// Guarantee 2: `*0`, `*-5`, blank and all-blank lines are skipped (redis-server 7.0
/// answers `*0\r\n*-5\r\nPING\r\n` and `\r\n  \r\nPING\r\n` with one `+PONG`).
#[test]
fn empty_requests_are_skipped() {
    let ping = vec![args(&[b"PING"])];
    assert_eq!(requests(b"*0\r\n*-5\r\nPING\r\n"), Ok(ping.clone()));
    assert_eq!(requests(b"\r\n  \r\n\t\x0b\nPING\r\n"), Ok(ping));
    let mut buf = BytesMut::from(&b"*0\r\n\r\n"[..]);
    assert_eq!(parse_request(&mut buf, &Limits::default()), Ok(None));
    assert!(buf.is_empty());
}

/// Guarantee 2: Redis's leniencies and its `strchr` on a NUL-terminated buffer, as
/// redis-server 7.0 shows them: `*1\rX$4\rYPINGxx` is PING; a NUL byte in a line makes
/// the request wait (no reply to `PI\0NG\r\nPING\r\n` nor `*1\0\r\n$4\r\nPING\r\n`).
#[test]
fn redis_quirks_of_lines_and_nul_bytes() {
    let ping = args(&[b"PING"]);
    assert_eq!(
        requests(b"*1\rX$4\rYPINGxx*1\r\n$4\r\nPING\r\n"),
        Ok(vec![ping.clone(), ping])
    );
    for wire in [&b"PI\0NG\r\nPING\r\n"[..], b"*1\0\r\n$4\r\nPING\r\n"] {
        let mut buf = BytesMut::from(wire);
        assert_eq!(parse_request(&mut buf, &Limits::default()), Ok(None));
        assert_eq!(buf.len(), wire.len());
    }
}

/// Guarantee 3: each protocol error's reply, byte for byte, as redis-server 7.0 sent it
/// before closing the connection.
#[test]
fn protocol_errors_have_redis_texts() {
    let k64 = 64 << 10;
    let inline_too_big = vec![b'a'; k64 + 1];
    let mut count_too_big = b"*".to_vec();
    count_too_big.extend(vec![b'1'; k64]);
    let mut bulk_count_too_big = b"*1\r\n$".to_vec();
    bulk_count_too_big.extend(vec![b'1'; k64]);
    let invalid_multibulk = &b"-ERR Protocol error: invalid multibulk length\r\n"[..];
    let invalid_bulk = &b"-ERR Protocol error: invalid bulk length\r\n"[..];
    let cases: Vec<(&[u8], &[u8])> = vec![
        (b"*x\r\n", invalid_multibulk),
        (b"*2147483648\r\n", invalid_multibulk),
        (b"*+1\r\n", invalid_multibulk),
        (b"*01\r\n", invalid_multibulk),
        (b"*-0\r\n", invalid_multibulk),
        (b"*1\r\n$-1\r\n", invalid_bulk),
        (b"*1\r\n$536870913\r\n", invalid_bulk),
        (
            b"*1\r\n+x\r\n",
            b"-ERR Protocol error: expected '$', got '+'\r\n",
        ),
        (
            b"*1\r\n\r\n",
            b"-ERR Protocol error: expected '$', got ' '\r\n",
        ),
        (
            b"*1\r\n\n$1\r\n",
            b"-ERR Protocol error: expected '$', got ' '\r\n",
        ),
        (
            b"*1\r\n\xff\r\n",
            b"-ERR Protocol error: expected '$', got '\xff'\r\n",
        ),
        (
            b"SET a \"b\r\n",
            b"-ERR Protocol error: unbalanced quotes in request\r\n",
        ),
        (
            &inline_too_big,
            b"-ERR Protocol error: too big inline request\r\n",
        ),
        (
            &count_too_big,
            b"-ERR Protocol error: too big mbulk count string\r\n",
        ),
        (
            &bulk_count_too_big,
            b"-ERR Protocol error: too big bulk count string\r\n",
        ),
    ];
    for (wire, reply) in cases {
        let error = first_error(wire);
        assert_eq!(encoded(&error.reply(), Protocol::Resp2), reply, "{wire:?}");
        assert_eq!(encoded(&error.reply(), Protocol::Resp3), reply, "{wire:?}");
    }
    assert_eq!(
        ProtocolError::InvalidBulkLength.to_string(),
        "ERR Protocol error: invalid bulk length"
    );
    assert_eq!(
        ProtocolError::ExpectedDollar(0xff).to_string(),
        "ERR Protocol error: expected '$', got '\\xff'"
    );
}

/// Guarantees 2 and 3: each limit at its boundary (redis-server 7.0 waits on exactly
/// 64 KiB without a line end and on `*2147483647` or `$536870912`, and errs one past).
#[test]
fn limits_at_their_boundaries() {
    let limits = Limits::default();
    let k64 = limits.max_inline_len;
    let mut inline = vec![b'a'; k64];
    let mut count = b"*".to_vec();
    count.extend(vec![b'1'; k64 - 1]);
    let mut bulk_count = b"*1\r\n$".to_vec();
    bulk_count.extend(vec![b'1'; k64 - 1]);
    for wire in [
        &inline[..],
        &count,
        &bulk_count,
        b"*2147483647\r\n",
        b"*1\r\n$536870912\r\n",
    ] {
        let mut buf = BytesMut::from(wire);
        assert_eq!(
            parse_request(&mut buf, &limits),
            Ok(None),
            "{:?}",
            &wire[..20.min(wire.len())]
        );
    }
    // A line end found within the buffer is never too big, as in Redis.
    inline.extend(b"\r\n");
    assert_eq!(requests(&inline).map(|r| r.len()), Ok(1));
    // Configured limits.
    let small = Limits {
        max_bulk_len: 3,
        max_inline_len: 8,
        max_multibulk_len: 2,
    };
    let parse = |wire: &[u8]| parse_request(&mut BytesMut::from(wire), &small);
    assert_eq!(parse(b"*1\r\n$3\r\nabc\r\n"), Ok(Some(args(&[b"abc"]))));
    assert_eq!(
        parse(b"*1\r\n$4\r\n"),
        Err(ProtocolError::InvalidBulkLength)
    );
    assert_eq!(parse(b"*3\r\n"), Err(ProtocolError::InvalidMultibulkLength));
    assert_eq!(
        parse(b"GET abcdef"),
        Err(ProtocolError::TooBigInlineRequest)
    );
}

/// Guarantee 2: inline quoting as `sdssplitargs`; each case was sent to redis-server 7.0
/// as `RPUSH k <line>` and read back with `LRANGE` (`None`: unbalanced quotes).
#[test]
fn inline_quoting_as_sdssplitargs() {
    type Case<'a> = (&'a [u8], Option<Vec<&'a [u8]>>);
    let cases: Vec<Case> = vec![
        (b"a  b", Some(vec![b"a", b"b"])),
        (br#""x\ny" 'it\'s'"#, Some(vec![b"x\ny", b"it's"])),
        (br#""\x41\x4a\x4G""#, Some(vec![b"AJx4G"])),
        (br#""a"b"#, None),
        (b"'open", None),
        (br#"foo"bar baz""#, Some(vec![b"foobar baz"])),
        (br#""\q\"\\" x"#, Some(vec![b"q\"\\", b"x"])),
        (b"a\x0bb \x0cc", Some(vec![b"a\x0bb", b"c"])),
        (b"\x0b\"q\"\x0b z", Some(vec![b"q", b"z"])),
        (br#""\t\b\a\r""#, Some(vec![b"\t\x08\x07\r"])),
        (b"a\rb", Some(vec![b"a", b"b"])),
        (br#"'a\\b\"c'"#, Some(vec![br#"a\\b\"c"#])),
        (br#""""#, Some(vec![b""])),
        (b"''", Some(vec![b""])),
        (br#""abc\""#, None),
        (b"'x'y", None),
        (b"\"a\"\x0c", Some(vec![b"a"])),
        (br#""\x4""#, Some(vec![b"x4"])),
        (br#""\xzz""#, Some(vec![b"xzz"])),
        (b"\xff\xfe", Some(vec![b"\xff\xfe"])),
        (b"", Some(vec![])),
        (b"a\0b", Some(vec![b"a"])),
    ];
    for (line, expected) in cases {
        let expected = expected.map(|words| args(&words));
        assert_eq!(split_args(line), expected, "{line:?}");
    }
}

/// Guarantee 4: declared lengths and counts allocate nothing big before the bytes come.
#[test]
fn huge_declared_lengths_are_not_allocated() {
    let mut buf = BytesMut::from(&b"*1\r\n$536870912\r\nabc"[..]);
    assert_eq!(parse_request(&mut buf, &Limits::default()), Ok(None));
    assert!(buf.capacity() <= 1 << 17, "capacity {}", buf.capacity());

    let mut buf = BytesMut::from(&b"*2147483647\r\n$1\r\na\r\n"[..]);
    assert_eq!(parse_request(&mut buf, &Limits::default()), Ok(None));
    assert!(buf.capacity() <= 1 << 17, "capacity {}", buf.capacity());

    for wire in [
        &b"$1000000000\r\nabc"[..],
        b"*1000000000\r\n:1\r\n",
        b"%1000000000\r\n",
    ] {
        let mut buf = BytesMut::from(wire);
        assert_eq!(parse_frame(&mut buf, DEPTH), Ok(None));
        assert_eq!(buf.capacity(), wire.len());
    }
}

/// Guarantee 5: the RESP2 nulls are one null in RESP3; each parses back to its own kind.
#[test]
fn null_kinds() {
    for (frame, resp2) in [
        (Frame::Null, &b"$-1\r\n"[..]),
        (Frame::NullBulk, b"$-1\r\n"),
        (Frame::NullArray, b"*-1\r\n"),
    ] {
        assert_eq!(encoded(&frame, Protocol::Resp2), resp2);
        assert_eq!(encoded(&frame, Protocol::Resp3), b"_\r\n");
    }
    let mut buf = BytesMut::from(&b"$-1\r\n*-1\r\n_\r\n"[..]);
    let parsed: Vec<_> =
        std::iter::from_fn(|| parse_frame(&mut buf, DEPTH).ok().flatten()).collect();
    assert_eq!(parsed, [Frame::NullBulk, Frame::NullArray, Frame::Null]);
    assert_eq!(Frame::null(), Frame::Null);
    assert_eq!(Frame::null_array(), Frame::NullArray);
}

/// Guarantee 6: each RESP3 type in both protocols, as redis-server 7.0's
/// `DEBUG PROTOCOL <type>` sends it; RESP3 bytes parse back to the frame. Two rows are
/// not from Redis: it refuses `push` on RESP2 and never sends a bulk error.
#[test]
#[allow(clippy::approx_constant)] // Redis's `DEBUG PROTOCOL double` is 3.141, not π.
fn resp2_downgrade_matches_redis() {
    let ints = |ns: &[i64]| ns.iter().map(|&n| Frame::Integer(n)).collect::<Vec<_>>();
    let cases: Vec<(Frame, &[u8], &[u8])> = vec![
        (
            Frame::bulk("Hello World"),
            b"$11\r\nHello World\r\n",
            b"$11\r\nHello World\r\n",
        ),
        (Frame::Integer(12345), b":12345\r\n", b":12345\r\n"),
        (Frame::Double(3.141), b"$5\r\n3.141\r\n", b",3.141\r\n"),
        (
            Frame::BigNumber("1234567999999999999999999999999999999".into()),
            b"$37\r\n1234567999999999999999999999999999999\r\n",
            b"(1234567999999999999999999999999999999\r\n",
        ),
        (Frame::null(), b"$-1\r\n", b"_\r\n"),
        (Frame::null_array(), b"*-1\r\n", b"_\r\n"), // BLPOP timing out
        (
            Frame::Array(ints(&[0, 1, 2])),
            b"*3\r\n:0\r\n:1\r\n:2\r\n",
            b"*3\r\n:0\r\n:1\r\n:2\r\n",
        ),
        (
            Frame::Set(ints(&[0, 1, 2])),
            b"*3\r\n:0\r\n:1\r\n:2\r\n",
            b"~3\r\n:0\r\n:1\r\n:2\r\n",
        ),
        (
            Frame::Map(vec![
                (Frame::Integer(0), Frame::Boolean(false)),
                (Frame::Integer(1), Frame::Boolean(true)),
                (Frame::Integer(2), Frame::Boolean(false)),
            ]),
            b"*6\r\n:0\r\n:0\r\n:1\r\n:1\r\n:2\r\n:0\r\n",
            b"%3\r\n:0\r\n#f\r\n:1\r\n#t\r\n:2\r\n#f\r\n",
        ),
        (
            Frame::Attribute {
                attributes: vec![(
                    Frame::bulk("key-popularity"),
                    Frame::Array(vec![Frame::bulk("key:123"), Frame::Integer(90)]),
                )],
                data: Box::new(Frame::bulk("Some real reply following the attribute")),
            },
            b"$39\r\nSome real reply following the attribute\r\n",
            b"|1\r\n$14\r\nkey-popularity\r\n*2\r\n$7\r\nkey:123\r\n:90\r\n\
              $39\r\nSome real reply following the attribute\r\n",
        ),
        (
            Frame::Push(vec![Frame::bulk("server-cpu-usage"), Frame::Integer(42)]),
            b"*2\r\n$16\r\nserver-cpu-usage\r\n:42\r\n",
            b">2\r\n$16\r\nserver-cpu-usage\r\n:42\r\n",
        ),
        (
            Frame::Verbatim {
                format: *b"txt",
                text: "This is a verbatim\nstring".into(),
            },
            b"$25\r\nThis is a verbatim\nstring\r\n",
            b"=29\r\ntxt:This is a verbatim\nstring\r\n",
        ),
        (Frame::Boolean(true), b":1\r\n", b"#t\r\n"),
        (Frame::Boolean(false), b":0\r\n", b"#f\r\n"),
        (
            Frame::BulkError("ERR a\r\nb".into()),
            b"-ERR a  b\r\n",
            b"!8\r\nERR a\r\nb\r\n",
        ),
    ];
    for (frame, resp2, resp3) in cases {
        assert_eq!(encoded(&frame, Protocol::Resp2), resp2, "{frame:?}");
        assert_eq!(encoded(&frame, Protocol::Resp3), resp3, "{frame:?}");
        let expected = match frame {
            Frame::NullArray => Frame::Null,
            other => other,
        };
        assert_eq!(
            parse_frame(&mut BytesMut::from(resp3), DEPTH),
            Ok(Some(expected))
        );
    }
}

/// Guarantee 6: doubles as `%.17g`. The RESP2 and RESP3 bytes of every value but three
/// are redis-server 7.0's `ZSCORE` replies; `-0`, `nan` and `-nan` are glibc's `printf`
/// (Redis normalizes `-0` scores and refuses NaN).
#[test]
fn doubles_as_redis_formats_them() {
    let cases: &[(f64, &str)] = &[
        (0.1, "0.10000000000000001"),
        (1.5, "1.5"),
        (1e20, "1e+20"),
        (1e-5, "1.0000000000000001e-05"),
        (123456789.123, "123456789.123"),
        (1.0 + 1.0 / 131072.0, "1.0000076293945312"), // 1 + 2^-17 ends in a tie: to even
        (1e17, "1e+17"),
        (1e16, "10000000000000000"),
        (99999999999999999.0, "1e+17"),
        (12345678901234567890.0, "1.2345678901234567e+19"),
        (0.0001, "0.0001"),
        (f64::INFINITY, "inf"),
        (f64::NEG_INFINITY, "-inf"),
        (5e-324, "4.9406564584124654e-324"),
        (f64::MAX, "1.7976931348623157e+308"),
        (2.5, "2.5"),
        (-3.75e-7, "-3.7500000000000001e-07"),
        (100.0, "100"),
        (0.3, "0.29999999999999999"),
        (0.0, "0"),
        (-0.0, "-0"),
        (f64::NAN, "nan"),
        (-f64::NAN, "-nan"),
    ];
    for &(d, text) in cases {
        let resp2 = format!("${}\r\n{text}\r\n", text.len());
        assert_eq!(
            encoded(&Frame::Double(d), Protocol::Resp2),
            resp2.as_bytes(),
            "{d:e}"
        );
        let resp3 = format!(",{text}\r\n");
        assert_eq!(
            encoded(&Frame::Double(d), Protocol::Resp3),
            resp3.as_bytes(),
            "{d:e}"
        );
    }
    let parsed = parse_frame(&mut BytesMut::from(&b",nan\r\n"[..]), DEPTH);
    assert!(matches!(parsed, Ok(Some(Frame::Double(d))) if d.is_nan()));
}

/// Guarantee 5: line types never carry CR or LF, so the output stays well formed.
#[test]
fn line_types_never_carry_cr_or_lf() {
    assert_eq!(
        encoded(&Frame::simple("a\r\nb"), Protocol::Resp3),
        b"+a  b\r\n"
    );
    assert_eq!(
        encoded(&Frame::error("ERR x\ny"), Protocol::Resp2),
        b"-ERR x y\r\n"
    );
    assert_eq!(encoded(&Frame::ok(), Protocol::Resp2), b"+OK\r\n");
}

/// Guarantee 7: nesting past `max_depth` is an error, reached without deep recursion.
#[test]
fn depth_limit() {
    let nested = |levels: usize| {
        let mut wire = "*1\r\n".repeat(levels).into_bytes();
        wire.extend(b":1\r\n");
        BytesMut::from(&wire[..])
    };
    assert!(matches!(
        parse_frame(&mut nested(3), 3),
        Ok(Some(Frame::Array(_)))
    ));
    assert_eq!(
        parse_frame(&mut nested(4), 3),
        Err(ProtocolError::TooDeep(3))
    );
    assert_eq!(
        parse_frame(&mut nested(1_000_000), DEPTH),
        Err(ProtocolError::TooDeep(DEPTH))
    );
    let mut attribute = BytesMut::from(&b"|0\r\n:1\r\n"[..]);
    assert_eq!(
        parse_frame(&mut attribute, 0),
        Err(ProtocolError::TooDeep(0))
    );
    assert_eq!(
        parse_frame(&mut BytesMut::from(&b":7\r\n"[..]), 0),
        Ok(Some(Frame::Integer(7)))
    );
}

/// Guarantee 7: malformed replies are errors.
#[test]
fn malformed_replies() {
    let cases: &[(&[u8], ProtocolError)] = &[
        (
            b"$3\r\nabcd\r\n",
            ProtocolError::InvalidReply("end of bulk"),
        ),
        (b"#x\r\n", ProtocolError::InvalidReply("boolean")),
        (b"_x\r\n", ProtocolError::InvalidReply("null")),
        (b":01\r\n", ProtocolError::InvalidReply("integer")),
        (b",one\r\n", ProtocolError::InvalidReply("double")),
        (b"(12a\r\n", ProtocolError::InvalidReply("big number")),
        (
            b"=3\r\ntxt\r\n",
            ProtocolError::InvalidReply("verbatim string"),
        ),
        (
            b"=5\r\ntxt-a\r\n",
            ProtocolError::InvalidReply("verbatim string"),
        ),
        (b"%-1\r\n", ProtocolError::InvalidReply("length")),
        (b"$?\r\n", ProtocolError::InvalidReply("length")),
        (b"\r\n", ProtocolError::InvalidReply("type byte")),
        (b"x\r\n", ProtocolError::UnknownType(b'x')),
    ];
    for (wire, error) in cases {
        assert_eq!(
            parse_frame(&mut BytesMut::from(*wire), DEPTH),
            Err(error.clone()),
            "{wire:?}"
        );
    }
}

fn line_bytes() -> impl Strategy<Value = Bytes> {
    vec(
        any::<u8>().prop_filter("no CR or LF", |b| !matches!(b, b'\r' | b'\n')),
        0..12,
    )
    .prop_map(Bytes::from)
}

fn any_bytes() -> impl Strategy<Value = Bytes> {
    vec(any::<u8>(), 0..24).prop_map(Bytes::from)
}

/// Frames of every type (`resp3`) or of the RESP2 types only.
fn frames(resp3: bool) -> BoxedStrategy<Frame> {
    let common = prop_oneof![
        line_bytes().prop_map(Frame::Simple),
        line_bytes().prop_map(Frame::Error),
        any::<i64>().prop_map(Frame::Integer),
        any_bytes().prop_map(Frame::Bulk),
    ];
    if !resp3 {
        let leaf = prop_oneof![common, Just(Frame::NullBulk), Just(Frame::NullArray)];
        return leaf
            .prop_recursive(4, 32, 6, |inner| vec(inner, 0..6).prop_map(Frame::Array))
            .boxed();
    }
    let leaf = prop_oneof![
        common,
        Just(Frame::Null),
        any::<bool>().prop_map(Frame::Boolean),
        any::<f64>()
            .prop_filter("NaN is not equal to itself", |d| !d.is_nan())
            .prop_map(Frame::Double),
        "-?[0-9]{1,40}".prop_map(|digits| Frame::BigNumber(digits.into())),
        any_bytes().prop_map(Frame::BulkError),
        (any::<[u8; 3]>(), any_bytes()).prop_map(|(format, text)| Frame::Verbatim { format, text }),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        let pairs = vec((inner.clone(), inner.clone()), 0..4);
        prop_oneof![
            vec(inner.clone(), 0..6).prop_map(Frame::Array),
            vec(inner.clone(), 0..6).prop_map(Frame::Set),
            vec(inner.clone(), 0..6).prop_map(Frame::Push),
            pairs.clone().prop_map(Frame::Map),
            (pairs, inner).prop_map(|(attributes, data)| Frame::Attribute {
                attributes,
                data: Box::new(data),
            }),
        ]
    })
    .boxed()
}

/// A request on the wire: multibulk, or inline with every byte quoted as `\xHH`, after an
/// optional empty request that must be skipped.
fn request_wire(words: &[Vec<u8>], inline: bool, empty_before: Option<&[u8]>) -> Vec<u8> {
    let mut wire = empty_before.unwrap_or_default().to_vec();
    if inline {
        for (i, word) in words.iter().enumerate() {
            wire.extend(if i == 0 { "\"" } else { " \"" }.bytes());
            word.iter()
                .for_each(|b| wire.extend(format!("\\x{b:02x}").bytes()));
            wire.push(b'"');
        }
        wire.extend(b"\r\n");
    } else {
        wire.extend(format!("*{}\r\n", words.len()).bytes());
        for word in words {
            wire.extend(format!("${}\r\n", word.len()).bytes());
            wire.extend(word);
            wire.extend(b"\r\n");
        }
    }
    wire
}

proptest! {
    /// Guarantees 1 and 2: a stream of requests cut anywhere parses to the same commands.
    #[test]
    fn split_request_stream_parses_alike(
        commands in vec((
            vec(vec(any::<u8>(), 0..12), 1..5),
            any::<bool>(),
            prop::option::of(select(vec![&b"*0\r\n"[..], b"*-1\r\n", b"\r\n", b" \t\n"])),
        ), 1..6),
        cuts in vec(any::<Index>(), 0..8),
    ) {
        let mut wire = Vec::new();
        for (words, inline, empty_before) in &commands {
            wire.extend(request_wire(words, *inline, *empty_before));
        }
        let cuts: Vec<usize> = cuts.iter().map(|c| c.index(wire.len() + 1)).collect();
        let got = feed(&wire, &cuts, |buf| parse_request(buf, &Limits::default()));
        let expected: Vec<Vec<Bytes>> = commands
            .iter()
            .map(|(words, _, _)| words.iter().map(|w| Bytes::copy_from_slice(w)).collect())
            .collect();
        prop_assert_eq!(got, Ok(expected));
    }

    /// Guarantees 1 and 5: frames encoded in RESP3 and cut anywhere parse back to
    /// themselves.
    #[test]
    fn frames_round_trip_through_resp3(
        frames in vec(frames(true), 1..4),
        cuts in vec(any::<Index>(), 0..6),
    ) {
        let mut wire = BytesMut::new();
        frames.iter().for_each(|f| encode(f, Protocol::Resp3, &mut wire));
        let cuts: Vec<usize> = cuts.iter().map(|c| c.index(wire.len() + 1)).collect();
        prop_assert_eq!(feed(&wire, &cuts, |buf| parse_frame(buf, DEPTH)), Ok(frames));
    }

    /// Guarantee 5: frames of RESP2 types round trip through RESP2 too.
    #[test]
    fn resp2_frames_round_trip_through_resp2(frame in frames(false)) {
        let wire = encoded(&frame, Protocol::Resp2);
        prop_assert_eq!(parse_frame(&mut BytesMut::from(&wire[..]), DEPTH), Ok(Some(frame)));
    }

    /// Guarantee 7: any bytes, random or made of protocol characters, never panic either
    /// parser, with default or tiny limits.
    #[test]
    fn arbitrary_bytes_never_panic(
        bytes in prop_oneof![
            vec(any::<u8>(), 0..256),
            vec(select(b"*$:+-_#,(!=%~|>\r\n\r\n0123456789-1tf \"'\\x\0".to_vec()), 0..256),
        ],
    ) {
        let tiny = Limits { max_bulk_len: 4, max_inline_len: 8, max_multibulk_len: 3 };
        for limits in [Limits::default(), tiny] {
            let mut buf = BytesMut::from(&bytes[..]);
            while let Ok(Some(_)) = parse_request(&mut buf, &limits) {}
        }
        let mut buf = BytesMut::from(&bytes[..]);
        while let Ok(Some(_)) = parse_frame(&mut buf, 8) {}
    }
}
