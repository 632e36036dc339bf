//! `concord txn`: etcdctl's transaction syntax, read from standard input in three
//! sections separated by blank lines (compares, success requests, failure requests).
//!
//! ```text
//! mod("key1") > "0"
//! value("key2") = "x"
//!
//! put key1 "overwrote-key1"
//!
//! put key1 "created-key1"
//! del key2 --prefix
//! ```
//!
//! A compare is `TARGET("key") OP "value"` with TARGET one of `ver`/`version`,
//! `c`/`create`, `m`/`mod`, `val`/`value`, `lease` (lease ids in hex) and OP one of `=`,
//! `==`, `!=`, `>`, `<`. A request is a `get`, `put` or `del` (`delete`) line taking the
//! same arguments and flags as the commands; words may be double-quoted with Go escapes.

use std::io::BufRead;

use clap::{Args, Parser, Subcommand};
use concord_proto::etcdserverpb as pb;
use pb::compare::{CompareResult, CompareTarget, TargetUnion};
use pb::request_op::Request;

use super::kv::{self, DelOpts, GetOpts, PutOpts};
use super::printer;
use super::{out, CtlError, CtlResult, Ctx, Format, GlobalArgs, OutputFormat};

/// `concord txn`.
#[derive(Args, Debug)]
pub struct TxnArgs {
    #[command(flatten)]
    /// Global flags.
    pub global: GlobalArgs,
    /// Input from stdin with prompts for each section
    #[arg(short, long)]
    pub interactive: bool,
}

/// One request line of a transaction.
#[derive(Parser, Debug)]
#[command(
    no_binary_name = true,
    disable_help_flag = true,
    disable_help_subcommand = true
)]
struct RequestLine {
    #[command(subcommand)]
    op: RequestCmd,
}

#[derive(Subcommand, Debug)]
enum RequestCmd {
    Get(GetOpts),
    Put(PutOpts),
    #[command(alias = "delete")]
    Del(DelOpts),
}

/// Reads a Go double-quoted (or back-quoted) string at the start of `s`: the text and
/// the rest after the closing quote.
fn take_quoted(s: &str) -> Option<(String, &str)> {
    if let Some(rest) = s.strip_prefix('`') {
        let end = rest.find('`')?;
        return Some((rest[..end].to_string(), &rest[end + 1..]));
    }
    let rest = s.strip_prefix('"')?;
    let mut text = String::new();
    let mut chars = rest.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Some((text, &rest[i + 1..])),
            '\\' => {
                let (_, e) = chars.next()?;
                match e {
                    'n' => text.push('\n'),
                    't' => text.push('\t'),
                    'r' => text.push('\r'),
                    '0' => text.push('\0'),
                    '"' | '\\' | '\'' => text.push(e),
                    'x' => {
                        let hi = chars.next()?.1.to_digit(16)?;
                        let lo = chars.next()?.1.to_digit(16)?;
                        text.push(char::from_u32(hi * 16 + lo)?);
                    }
                    'u' => {
                        let mut v = 0;
                        for _ in 0..4 {
                            v = v * 16 + chars.next()?.1.to_digit(16)?;
                        }
                        text.push(char::from_u32(v)?);
                    }
                    _ => return None,
                }
            }
            c => text.push(c),
        }
    }
    None
}

/// Splits a request line into words like etcdctl's `argify`: double-quoted words are
/// unquoted, the rest split on white space.
pub fn argify(line: &str) -> CtlResult<Vec<String>> {
    let mut words = Vec::new();
    let mut rest = line.trim_start();
    while !rest.is_empty() {
        if rest.starts_with('"') {
            let (w, after) = take_quoted(rest)
                .ok_or_else(|| CtlError::new(format!("bad quoting in {line:?}")))?;
            words.push(w);
            rest = after;
        } else {
            let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
            words.push(rest[..end].to_string());
            rest = &rest[end..];
        }
        rest = rest.trim_start();
    }
    Ok(words)
}

/// Parses one compare line, e.g. `mod("k") > "5"`.
pub fn parse_compare(line: &str) -> CtlResult<pb::Compare> {
    let malformed = |why: &str| CtlError::new(format!("malformed comparison: {line}{why}"));
    let (target, rest) = line.trim().split_once('(').ok_or_else(|| malformed(""))?;
    let (key, rest) = take_quoted(rest.trim_start()).ok_or_else(|| malformed(""))?;
    let rest = rest
        .trim_start()
        .strip_prefix(')')
        .ok_or_else(|| malformed(""))?
        .trim_start();
    let op_len = rest.find(char::is_whitespace).unwrap_or(rest.len());
    let (op, rest) = rest.split_at(op_len);
    let rest = rest.trim();
    let value = if rest.starts_with('"') || rest.starts_with('`') {
        let (v, after) = take_quoted(rest).ok_or_else(|| malformed(""))?;
        if !after.trim().is_empty() {
            return Err(malformed(""));
        }
        v
    } else if !rest.is_empty() && !rest.contains(char::is_whitespace) {
        rest.to_string()
    } else {
        return Err(malformed(""));
    };
    let result = match op {
        "=" | "==" => CompareResult::Equal,
        "!=" => CompareResult::NotEqual,
        ">" => CompareResult::Greater,
        "<" => CompareResult::Less,
        _ => return Err(CtlError::new(format!("Unknown compare type {op}"))),
    };
    let int = |v: &str, radix: u32| {
        i64::from_str_radix(v, radix).map_err(|_| malformed(&format!(" (bad number {v:?})")))
    };
    let (target, union) = match target.trim() {
        "ver" | "version" => (
            CompareTarget::Version,
            TargetUnion::Version(int(&value, 10)?),
        ),
        "c" | "create" => (
            CompareTarget::Create,
            TargetUnion::CreateRevision(int(&value, 10)?),
        ),
        "m" | "mod" => (
            CompareTarget::Mod,
            TargetUnion::ModRevision(int(&value, 10)?),
        ),
        "val" | "value" => (CompareTarget::Value, TargetUnion::Value(value.into_bytes())),
        "lease" => (CompareTarget::Lease, TargetUnion::Lease(int(&value, 16)?)),
        other => return Err(malformed(&format!(" (unknown target {other})"))),
    };
    Ok(pb::Compare {
        result: result as i32,
        target: target as i32,
        key: key.into_bytes(),
        range_end: Vec::new(),
        target_union: Some(union),
    })
}

/// Parses one request line, e.g. `put k "v w"` or `get k --prefix`.
pub fn parse_request(line: &str) -> CtlResult<pb::RequestOp> {
    let words = argify(line)?;
    let parsed = RequestLine::try_parse_from(&words).map_err(|e| {
        let first = e.to_string();
        let first = first
            .lines()
            .next()
            .unwrap_or("")
            .trim_start_matches("error: ");
        CtlError::new(format!("invalid txn request {line:?}: {first}"))
    })?;
    let request = match parsed.op {
        RequestCmd::Get(o) => Request::RequestRange(kv::range_request(&o)?),
        RequestCmd::Put(o) => {
            let value = match (&o.value, o.ignore_value) {
                (Some(v), _) => v.as_bytes().to_vec(),
                (None, true) => Vec::new(),
                (None, false) => {
                    return Err(CtlError::new(format!(
                        "invalid txn request {line:?}: put needs a key and a value"
                    )))
                }
            };
            Request::RequestPut(kv::put_request(&o, value)?)
        }
        RequestCmd::Del(o) => Request::RequestDeleteRange(kv::del_request(&o)?),
    };
    Ok(pb::RequestOp {
        request: Some(request),
    })
}

/// Lines of one section: up to a blank line or the end of the input.
fn read_section(input: &mut impl BufRead) -> CtlResult<Vec<String>> {
    let mut lines = Vec::new();
    loop {
        let mut line = String::new();
        let n = input
            .read_line(&mut line)
            .map_err(|e| CtlError::new(format!("cannot read stdin: {e}")))?;
        let trimmed = line.trim();
        if n == 0 || trimmed.is_empty() {
            return Ok(lines);
        }
        lines.push(trimmed.to_string());
    }
}

/// Reads a whole transaction; `prompt` is called before each section.
pub fn read_txn(
    input: &mut impl BufRead,
    mut prompt: impl FnMut(&str),
) -> CtlResult<pb::TxnRequest> {
    prompt("compares:");
    let compare = read_section(input)?
        .iter()
        .map(|l| parse_compare(l))
        .collect::<CtlResult<_>>()?;
    prompt("success requests (get, put, del):");
    let success = read_section(input)?
        .iter()
        .map(|l| parse_request(l))
        .collect::<CtlResult<_>>()?;
    prompt("failure requests (get, put, del):");
    let failure = read_section(input)?
        .iter()
        .map(|l| parse_request(l))
        .collect::<CtlResult<_>>()?;
    Ok(pb::TxnRequest {
        compare,
        success,
        failure,
    })
}

/// Formats a `txn` answer.
pub fn format_txn(r: &pb::TxnResponse, fmt: Format) -> String {
    match fmt.out {
        OutputFormat::Json => format!("{}\n", printer::txn_json(r).render()),
        _ => printer::simple_txn(r, fmt.hex),
    }
}

/// Runs `concord txn`.
pub async fn run(args: TxnArgs) -> CtlResult<()> {
    let interactive = args.interactive;
    let req = read_txn(&mut std::io::stdin().lock(), |p| {
        if interactive {
            out(&format!("{p}\n"));
        }
    })?;
    let ctx = Ctx::connect(&args.global).await?;
    let resp = ctx.call(ctx.kv().txn(req)).await?;
    out(&format_txn(&resp, ctx.printing()));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compares() {
        let c = parse_compare(r#"value("k") = "v""#).unwrap();
        assert_eq!(c.key, b"k");
        assert_eq!(c.result, CompareResult::Equal as i32);
        assert_eq!(c.target, CompareTarget::Value as i32);
        assert_eq!(c.target_union, Some(TargetUnion::Value(b"v".to_vec())));

        let c = parse_compare(r#"mod("key1") > "5""#).unwrap();
        assert_eq!(c.result, CompareResult::Greater as i32);
        assert_eq!(c.target_union, Some(TargetUnion::ModRevision(5)));

        let c = parse_compare(r#"ver("a b") != "0""#).unwrap();
        assert_eq!(c.key, b"a b");
        assert_eq!(c.result, CompareResult::NotEqual as i32);
        assert_eq!(c.target_union, Some(TargetUnion::Version(0)));

        let c = parse_compare(r#"c("k") < 10"#).unwrap();
        assert_eq!(c.target_union, Some(TargetUnion::CreateRevision(10)));

        let c = parse_compare(r#"lease("k") == "694d7f3a1b2c""#).unwrap();
        assert_eq!(c.target_union, Some(TargetUnion::Lease(0x694d7f3a1b2c)));

        let c = parse_compare(r#"val("k") = "a \"q\"\n""#).unwrap();
        assert_eq!(
            c.target_union,
            Some(TargetUnion::Value(b"a \"q\"\n".to_vec()))
        );
    }

    #[test]
    fn bad_compares() {
        for bad in [
            "value(k) = \"v\"",
            "value(\"k\" = \"v\"",
            "nope(\"k\") = \"v\"",
            "mod(\"k\") > \"x\"",
            "mod(\"k\") >",
            "value(\"k\") = \"v\" extra",
            "",
        ] {
            assert!(parse_compare(bad).is_err(), "{bad:?} parsed");
        }
        assert_eq!(
            parse_compare("value(\"k\") ~ \"v\"").unwrap_err().0,
            "Unknown compare type ~"
        );
        assert_eq!(
            parse_compare("nope(\"k\") = \"v\"").unwrap_err().0,
            "malformed comparison: nope(\"k\") = \"v\" (unknown target nope)"
        );
    }

    #[test]
    fn words() {
        assert_eq!(
            argify(r#"put k "v w" --prev-kv"#).unwrap(),
            vec!["put", "k", "v w", "--prev-kv"]
        );
        assert_eq!(argify(r#"put "a\"b" """#).unwrap(), vec!["put", "a\"b", ""]);
        assert!(argify(r#"put "open"#).is_err());
    }

    #[test]
    fn requests() {
        let r = parse_request("put k \"v 1\" --prev-kv").unwrap();
        let Some(Request::RequestPut(p)) = r.request else {
            panic!("not a put")
        };
        assert_eq!(
            (p.key, p.value, p.prev_kv),
            (b"k".to_vec(), b"v 1".to_vec(), true)
        );

        let r = parse_request("get a --prefix --limit 3").unwrap();
        let Some(Request::RequestRange(g)) = r.request else {
            panic!("not a get")
        };
        assert_eq!(
            (g.key, g.range_end, g.limit),
            (b"a".to_vec(), b"b".to_vec(), 3)
        );

        let r = parse_request("delete a c").unwrap();
        let Some(Request::RequestDeleteRange(d)) = r.request else {
            panic!("not a del")
        };
        assert_eq!((d.key, d.range_end), (b"a".to_vec(), b"c".to_vec()));

        assert!(parse_request("put k").is_err());
        assert!(parse_request("frob k").is_err());
        assert!(parse_request("get").is_err());
        assert!(parse_request("get k --bogus").is_err());
    }

    #[test]
    fn whole_transaction_and_prompts() {
        let input = "mod(\"key1\") > \"0\"\n\nput key1 \"overwrote-key1\"\n\nput key1 \"created-key1\"\nput key2 \"some extra key\"\n\n";
        let mut prompts = Vec::new();
        let t = read_txn(&mut input.as_bytes(), |p| prompts.push(p.to_string())).unwrap();
        assert_eq!(t.compare.len(), 1);
        assert_eq!(t.success.len(), 1);
        assert_eq!(t.failure.len(), 2);
        assert_eq!(
            prompts,
            vec![
                "compares:",
                "success requests (get, put, del):",
                "failure requests (get, put, del):"
            ]
        );
        // End of input ends the sections too.
        let t = read_txn(&mut "\nput a b".as_bytes(), |_| {}).unwrap();
        assert_eq!(
            (t.compare.len(), t.success.len(), t.failure.len()),
            (0, 1, 0)
        );
        let t = read_txn(&mut "".as_bytes(), |_| {}).unwrap();
        assert!(t.success.is_empty());
        assert!(read_txn(&mut "bad\n".as_bytes(), |_| {}).is_err());
    }
}
