//! `get`, `put`, `del` and `compaction`, with etcdctl's flags and checks. The request
//! builders are shared with `txn`, whose request lines take the same flags.

use std::io::Read as _;

use clap::Args;
use concord_proto::consistency::ReadConsistency;
use concord_proto::etcdserverpb as pb;

use super::printer;
use super::{out, parse_lease_id, CtlError, CtlResult, Ctx, Format, GlobalArgs, OutputFormat};

/// The range end that covers every key with prefix `key` (clientv3's
/// `GetPrefixRangeEnd`): the prefix with its last byte below 0xff incremented; `\0`
/// (every key from `key` on) when there is none.
pub fn prefix_range_end(key: &[u8]) -> Vec<u8> {
    let mut end = key.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// `key` and `range_end` for `--prefix`, `--from-key` or an explicit end.
fn key_range(
    key: &str,
    range_end: Option<&str>,
    prefix: bool,
    from_key: bool,
) -> CtlResult<(Vec<u8>, Vec<u8>)> {
    if prefix && from_key {
        return Err(CtlError::new(
            "`--prefix` and `--from-key` cannot be set at the same time, choose one",
        ));
    }
    if range_end.is_some() && (prefix || from_key) {
        return Err(CtlError::new(
            "too many arguments, only accept one argument when `--prefix` or `--from-key` is set",
        ));
    }
    let mut k = key.as_bytes().to_vec();
    let end = if prefix {
        if k.is_empty() {
            k = vec![0];
            vec![0]
        } else {
            prefix_range_end(&k)
        }
    } else if from_key {
        if k.is_empty() {
            k = vec![0];
        }
        vec![0]
    } else {
        range_end.map(|e| e.as_bytes().to_vec()).unwrap_or_default()
    };
    Ok((k, end))
}

/// The flags of `get` (also a `get` line of `txn`).
#[derive(Args, Clone, Debug, Default)]
pub struct GetOpts {
    /// The key
    pub key: String,
    /// End of the range [key, range_end)
    pub range_end: Option<String>,
    /// Get keys with matching prefix
    #[arg(long)]
    pub prefix: bool,
    /// Get keys that are greater than or equal to the given key using byte compare
    #[arg(long)]
    pub from_key: bool,
    /// Maximum number of results
    #[arg(long, default_value_t = 0)]
    pub limit: i64,
    /// Specify the kv revision
    #[arg(long, default_value_t = 0)]
    pub rev: i64,
    /// Get only the keys
    #[arg(long)]
    pub keys_only: bool,
    /// Get only the count (with -w fields or json)
    #[arg(long)]
    pub count_only: bool,
    /// Only write values when using the "simple" output format
    #[arg(long)]
    pub print_value_only: bool,
    /// Sort target; CREATE, KEY, MODIFY, VALUE, or VERSION
    #[arg(long, default_value = "")]
    pub sort_by: String,
    /// Order of results; ASCEND or DESCEND (ASCEND by default)
    #[arg(long, default_value = "")]
    pub order: String,
    /// Linearizable(l) or Serializable(s), or a Concord level: strong, eventual,
    /// session=<revision>, bounded=<duration> (250ms, 2s)
    #[arg(long, default_value = "l")]
    pub consistency: String,
}

/// `concord get`.
#[derive(Args, Debug)]
pub struct GetArgs {
    #[command(flatten)]
    /// Global flags.
    pub global: GlobalArgs,
    #[command(flatten)]
    /// The request.
    pub opts: GetOpts,
}

/// The `RangeRequest` that `opts` asks for.
pub fn range_request(o: &GetOpts) -> CtlResult<pb::RangeRequest> {
    let (key, range_end) = key_range(&o.key, o.range_end.as_deref(), o.prefix, o.from_key)?;
    let serializable = read_consistency(o)? == ReadConsistency::Eventual;
    use pb::range_request::{SortOrder, SortTarget};
    let sort_order = match o.order.to_uppercase().as_str() {
        "" => SortOrder::None,
        "ASCEND" => SortOrder::Ascend,
        "DESCEND" => SortOrder::Descend,
        _ => return Err(CtlError::new(format!("bad sort order {}", o.order))),
    };
    let sort_target = match o.sort_by.to_uppercase().as_str() {
        "" | "KEY" => SortTarget::Key,
        "CREATE" => SortTarget::Create,
        "MODIFY" => SortTarget::Mod,
        "VALUE" => SortTarget::Value,
        "VERSION" => SortTarget::Version,
        _ => return Err(CtlError::new(format!("bad sort target {}", o.sort_by))),
    };
    // clientv3 sorts ascending when only a target is given.
    let sort_order = if sort_order == SortOrder::None && !o.sort_by.is_empty() {
        SortOrder::Ascend
    } else {
        sort_order
    };
    if o.limit < 0 {
        return Err(CtlError::new("--limit must not be negative"));
    }
    Ok(pb::RangeRequest {
        key,
        range_end,
        limit: o.limit,
        revision: o.rev,
        sort_order: sort_order as i32,
        sort_target: sort_target as i32,
        serializable,
        keys_only: o.keys_only,
        count_only: o.count_only,
        ..Default::default()
    })
}

/// The read level `--consistency` asks for: etcdctl's `l` and `s`, or one of Concord's
/// (sent in the `concord-consistency` metadata; `eventual` as etcd's `serializable`).
pub fn read_consistency(o: &GetOpts) -> CtlResult<ReadConsistency> {
    match o.consistency.as_str() {
        "l" => Ok(ReadConsistency::Strong),
        "s" => Ok(ReadConsistency::Eventual),
        // etcdctl's message for a value it does not know.
        other => other
            .parse()
            .map_err(|_| CtlError::new(format!("unknown consistency flag {other:?}"))),
    }
}

/// Formats a `get` answer.
pub fn format_range(r: &pb::RangeResponse, fmt: Format, value_only: bool) -> String {
    match fmt.out {
        OutputFormat::Json => format!("{}\n", printer::range_json(r).render()),
        OutputFormat::Fields => printer::fields_range(r),
        OutputFormat::Simple | OutputFormat::Table => printer::simple_range(r, value_only, fmt.hex),
    }
}

/// Runs `concord get`.
pub async fn get(args: GetArgs) -> CtlResult<()> {
    let fmt = args.global.write_out;
    if args.opts.count_only && fmt != OutputFormat::Fields && fmt != OutputFormat::Json {
        return Err(CtlError::new(
            "--count-only is only for `--write-out=fields` (or json)",
        ));
    }
    if args.opts.print_value_only && fmt != OutputFormat::Simple {
        return Err(CtlError::new(
            "print-value-only is only for `--write-out=simple`",
        ));
    }
    let mut req = tonic::Request::new(range_request(&args.opts)?);
    read_consistency(&args.opts)?.set_on(&mut req);
    let ctx = Ctx::connect(&args.global).await?;
    let resp = ctx.call(ctx.kv().range(req)).await?;
    out(&format_range(
        &resp,
        args.global.printing(),
        args.opts.print_value_only,
    ));
    Ok(())
}

/// The flags of `put` (also a `put` line of `txn`).
#[derive(Args, Clone, Debug, Default)]
pub struct PutOpts {
    /// The key
    pub key: String,
    /// The value (read from standard input when omitted)
    pub value: Option<String>,
    /// Lease ID (in hexadecimal) to attach to the key
    #[arg(long, default_value = "0")]
    pub lease: String,
    /// Return the previous key-value pair before modification
    #[arg(long)]
    pub prev_kv: bool,
    /// Updates the key using its current value
    #[arg(long)]
    pub ignore_value: bool,
    /// Updates the key using its current lease
    #[arg(long)]
    pub ignore_lease: bool,
}

/// `concord put`.
#[derive(Args, Debug)]
pub struct PutArgs {
    #[command(flatten)]
    /// Global flags.
    pub global: GlobalArgs,
    #[command(flatten)]
    /// The request.
    pub opts: PutOpts,
}

/// The `PutRequest` of `opts` with `value` (already resolved).
pub fn put_request(o: &PutOpts, value: Vec<u8>) -> CtlResult<pb::PutRequest> {
    if o.key.is_empty() {
        return Err(CtlError::new(
            "put command needs 1 argument and input from stdin or 2 arguments",
        ));
    }
    if o.ignore_value && o.value.is_some() {
        return Err(CtlError::new(
            "put command needs only 1 argument when 'ignore-value' is set",
        ));
    }
    let lease = parse_lease_id(&o.lease)?;
    if o.ignore_lease && lease != 0 {
        return Err(CtlError::new(
            "put command needs no lease ID when 'ignore-lease' is set",
        ));
    }
    Ok(pb::PutRequest {
        key: o.key.as_bytes().to_vec(),
        value,
        lease,
        prev_kv: o.prev_kv,
        ignore_value: o.ignore_value,
        ignore_lease: o.ignore_lease,
    })
}

/// Formats a `put` answer.
pub fn format_put(r: &pb::PutResponse, fmt: Format) -> String {
    match fmt.out {
        OutputFormat::Json => format!("{}\n", printer::put_json(r).render()),
        OutputFormat::Fields => printer::fields_put(r),
        OutputFormat::Simple | OutputFormat::Table => printer::simple_put(r, fmt.hex),
    }
}

/// Runs `concord put`.
pub async fn put(args: PutArgs) -> CtlResult<()> {
    let value = match &args.opts.value {
        Some(v) => v.as_bytes().to_vec(),
        None if args.opts.ignore_value => Vec::new(),
        None => {
            let mut buf = Vec::new();
            std::io::stdin()
                .read_to_end(&mut buf)
                .map_err(|e| CtlError::new(format!("cannot read the value from stdin: {e}")))?;
            if buf.is_empty() {
                return Err(CtlError::new(
                    "put command needs 1 argument and input from stdin or 2 arguments",
                ));
            }
            buf
        }
    };
    let req = put_request(&args.opts, value)?;
    let ctx = Ctx::connect(&args.global).await?;
    let resp = ctx.call(ctx.kv().put(req)).await?;
    out(&format_put(&resp, ctx.printing()));
    Ok(())
}

/// The flags of `del` (also a `del` line of `txn`).
#[derive(Args, Clone, Debug, Default)]
pub struct DelOpts {
    /// The key
    pub key: String,
    /// End of the range [key, range_end)
    pub range_end: Option<String>,
    /// Delete keys with matching prefix
    #[arg(long)]
    pub prefix: bool,
    /// Delete keys that are greater than or equal to the given key using byte compare
    #[arg(long)]
    pub from_key: bool,
    /// Return deleted key-value pairs
    #[arg(long)]
    pub prev_kv: bool,
}

/// `concord del`.
#[derive(Args, Debug)]
pub struct DelArgs {
    #[command(flatten)]
    /// Global flags.
    pub global: GlobalArgs,
    #[command(flatten)]
    /// The request.
    pub opts: DelOpts,
}

/// The `DeleteRangeRequest` of `opts`.
pub fn del_request(o: &DelOpts) -> CtlResult<pb::DeleteRangeRequest> {
    let (key, range_end) = key_range(&o.key, o.range_end.as_deref(), o.prefix, o.from_key)?;
    Ok(pb::DeleteRangeRequest {
        key,
        range_end,
        prev_kv: o.prev_kv,
    })
}

/// Formats a `del` answer.
pub fn format_del(r: &pb::DeleteRangeResponse, fmt: Format) -> String {
    match fmt.out {
        OutputFormat::Json => format!("{}\n", printer::del_json(r).render()),
        OutputFormat::Fields => printer::fields_del(r),
        OutputFormat::Simple | OutputFormat::Table => printer::simple_del(r, fmt.hex),
    }
}

/// Runs `concord del`.
pub async fn del(args: DelArgs) -> CtlResult<()> {
    let req = del_request(&args.opts)?;
    let ctx = Ctx::connect(&args.global).await?;
    let resp = ctx.call(ctx.kv().delete_range(req)).await?;
    out(&format_del(&resp, ctx.printing()));
    Ok(())
}

/// `concord compaction`.
#[derive(Args, Debug)]
pub struct CompactionArgs {
    #[command(flatten)]
    /// Global flags.
    pub global: GlobalArgs,
    /// The revision to compact up to
    pub revision: i64,
    /// 'true' to wait for compaction to physically remove all old revisions
    #[arg(long)]
    pub physical: bool,
}

/// Runs `concord compaction`.
pub async fn compaction(args: CompactionArgs) -> CtlResult<()> {
    let ctx = Ctx::connect(&args.global).await?;
    let resp = ctx
        .call(ctx.kv().compact(pb::CompactionRequest {
            revision: args.revision,
            physical: args.physical,
        }))
        .await?;
    match ctx.format() {
        OutputFormat::Json => out(&format!(
            "{}\n",
            printer::ObjBuilder::new()
                .opt("header", printer::header_json(resp.header.as_ref()))
                .build()
                .render()
        )),
        _ => out(&format!("compacted revision {}\n", args.revision)),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_ends() {
        assert_eq!(prefix_range_end(b"foo"), b"fop".to_vec());
        assert_eq!(prefix_range_end(b"a\xff"), b"b".to_vec());
        assert_eq!(prefix_range_end(b"\xff\xff"), vec![0]);
    }

    fn opts(key: &str) -> GetOpts {
        GetOpts {
            key: key.into(),
            consistency: "l".into(),
            ..Default::default()
        }
    }

    #[test]
    fn get_requests() {
        let mut o = opts("foo");
        o.prefix = true;
        let r = range_request(&o).unwrap();
        assert_eq!((r.key, r.range_end), (b"foo".to_vec(), b"fop".to_vec()));
        let mut o = opts("");
        o.from_key = true;
        let r = range_request(&o).unwrap();
        assert_eq!((r.key, r.range_end), (vec![0], vec![0]));
        let mut o = opts("a");
        o.range_end = Some("c".into());
        o.sort_by = "modify".into();
        o.consistency = "s".into();
        let r = range_request(&o).unwrap();
        assert_eq!(r.range_end, b"c".to_vec());
        assert!(r.serializable);
        assert_eq!(r.sort_order, pb::range_request::SortOrder::Ascend as i32);
        assert_eq!(r.sort_target, pb::range_request::SortTarget::Mod as i32);
    }

    #[test]
    fn consistency_levels() {
        let mut o = opts("a");
        for (flag, level, serializable) in [
            ("l", ReadConsistency::Strong, false),
            ("s", ReadConsistency::Eventual, true),
            ("eventual", ReadConsistency::Eventual, true),
            ("session=12", ReadConsistency::Session(12), false),
            (
                "bounded=250ms",
                ReadConsistency::Bounded(std::time::Duration::from_millis(250)),
                false,
            ),
        ] {
            o.consistency = flag.into();
            assert_eq!(read_consistency(&o).unwrap(), level, "{flag}");
            assert_eq!(
                range_request(&o).unwrap().serializable,
                serializable,
                "{flag}"
            );
        }
    }

    #[test]
    fn get_refuses_bad_flags() {
        let mut o = opts("a");
        o.prefix = true;
        o.from_key = true;
        assert!(range_request(&o)
            .unwrap_err()
            .0
            .contains("cannot be set at the same time"));
        let mut o = opts("a");
        o.prefix = true;
        o.range_end = Some("b".into());
        assert!(range_request(&o)
            .unwrap_err()
            .0
            .contains("too many arguments"));
        let mut o = opts("a");
        o.consistency = "x".into();
        assert_eq!(
            range_request(&o).unwrap_err().0,
            "unknown consistency flag \"x\""
        );
        let mut o = opts("a");
        o.consistency = "bounded=soon".into();
        assert_eq!(
            range_request(&o).unwrap_err().0,
            "unknown consistency flag \"bounded=soon\""
        );
        let mut o = opts("a");
        o.order = "sideways".into();
        assert!(range_request(&o).is_err());
    }

    #[test]
    fn put_requests() {
        let o = PutOpts {
            key: "k".into(),
            value: Some("v".into()),
            lease: "1f".into(),
            ..Default::default()
        };
        let r = put_request(&o, b"v".to_vec()).unwrap();
        assert_eq!(r.lease, 0x1f);
        let bad = PutOpts {
            lease: "zz".into(),
            ..o.clone()
        };
        assert!(put_request(&bad, vec![]).is_err());
        let bad = PutOpts {
            ignore_value: true,
            ..o
        };
        assert!(put_request(&bad, vec![]).is_err());
    }
}
