//! `concord watch KEY [RANGE_END]`: prints each event as etcdctl does (`PUT`/`DELETE`,
//! then the previous key-value pair with `--prev-kv`, then the key and value lines) until
//! Ctrl-C, or until the server cancels the watch (an error, e.g. a compacted revision).

use clap::Args;
use concord_proto::etcdserverpb as pb;
use concord_proto::mvccpb;
use pb::watch_request::RequestUnion;

use super::printer::{self, Json, ObjBuilder};
use super::{out, CtlError, CtlResult, Ctx, GlobalArgs, OutputFormat};

/// `concord watch`.
#[derive(Args, Debug)]
pub struct WatchArgs {
    #[command(flatten)]
    /// Global flags.
    pub global: GlobalArgs,
    /// The key
    pub key: String,
    /// End of the range [key, range_end)
    pub range_end: Option<String>,
    /// Watch on a prefix if prefix is set
    #[arg(long)]
    pub prefix: bool,
    /// Revision to start watching
    #[arg(long, default_value_t = 0)]
    pub rev: i64,
    /// Get the previous key-value pair before the event happens
    #[arg(long)]
    pub prev_kv: bool,
}

/// The events of one response in simple format.
pub fn simple_events(events: &[mvccpb::Event], hex: bool) -> String {
    let mut text = String::new();
    for e in events {
        let kind = if e.r#type == mvccpb::event::EventType::Delete as i32 {
            "DELETE"
        } else {
            "PUT"
        };
        text.push_str(kind);
        text.push('\n');
        if let Some(prev) = &e.prev_kv {
            printer::simple_kv(&mut text, prev, false, hex);
        }
        if let Some(kv) = &e.kv {
            printer::simple_kv(&mut text, kv, false, hex);
        }
    }
    text
}

/// One response as JSON, as etcdctl marshals `clientv3.WatchResponse`.
pub fn watch_json(r: &pb::WatchResponse) -> Json {
    let h = r.header.unwrap_or_default();
    let events = r
        .events
        .iter()
        .map(|e| {
            ObjBuilder::new()
                .num("type", e.r#type)
                .opt("kv", e.kv.as_ref().map(printer::kv_json))
                .opt("prev_kv", e.prev_kv.as_ref().map(printer::kv_json))
                .build()
        })
        .collect();
    Json::Obj(vec![
        (
            "Header".into(),
            printer::header_json(Some(&h)).unwrap_or(Json::Obj(vec![])),
        ),
        ("Events".into(), Json::Arr(events)),
        ("CompactRevision".into(), Json::num(r.compact_revision)),
        ("Canceled".into(), Json::Bool(r.canceled)),
        ("Created".into(), Json::Bool(r.created)),
    ])
}

/// Runs `concord watch`.
pub async fn run(args: WatchArgs) -> CtlResult<()> {
    let (key, range_end) = {
        let o = super::kv::DelOpts {
            key: args.key.clone(),
            range_end: args.range_end.clone(),
            prefix: args.prefix,
            from_key: false,
            prev_kv: false,
        };
        let r = super::kv::del_request(&o)?;
        (r.key, r.range_end)
    };
    let ctx = Ctx::connect(&args.global).await?;
    let create = pb::WatchRequest {
        request_union: Some(RequestUnion::CreateRequest(pb::WatchCreateRequest {
            key,
            range_end,
            start_revision: args.rev,
            prev_kv: args.prev_kv,
            ..Default::default()
        })),
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<pb::WatchRequest>(1);
    tx.send(create)
        .await
        .map_err(|_| CtlError::new("watch stream closed"))?;
    let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
    let mut responses = ctx.call(ctx.watch().watch(stream)).await?;
    let fmt = ctx.format();
    loop {
        let next = tokio::select! {
            r = responses.message() => r,
            _ = tokio::signal::ctrl_c() => return Ok(()),
        };
        let resp = match next {
            Ok(Some(resp)) => resp,
            Ok(None) => return Err(CtlError::new("watch is closed by the server")),
            Err(status) => return Err(status.into()),
        };
        if resp.canceled {
            let reason = if resp.compact_revision > 0 {
                format!(
                    "mvcc: required revision has been compacted (compact revision {})",
                    resp.compact_revision
                )
            } else if resp.cancel_reason.is_empty() {
                "canceled by the server".to_string()
            } else {
                resp.cancel_reason.clone()
            };
            return Err(CtlError::new(format!("watch was canceled ({reason})")));
        }
        if resp.events.is_empty() {
            continue;
        }
        match fmt {
            OutputFormat::Json => out(&format!("{}\n", watch_json(&resp).render())),
            _ => out(&simple_events(&resp.events, ctx.printing().hex)),
        }
    }
    // `tx` lives until here so that the request stream stays open.
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_print_like_etcdctl() {
        let kv = |k: &str, v: &str| mvccpb::KeyValue {
            key: k.into(),
            value: v.into(),
            ..Default::default()
        };
        let events = vec![
            mvccpb::Event {
                r#type: mvccpb::event::EventType::Put as i32,
                kv: Some(kv("foo", "bar")),
                prev_kv: None,
            },
            mvccpb::Event {
                r#type: mvccpb::event::EventType::Delete as i32,
                kv: Some(kv("foo", "")),
                prev_kv: Some(kv("foo", "bar")),
            },
        ];
        assert_eq!(
            simple_events(&events, false),
            "PUT\nfoo\nbar\nDELETE\nfoo\nbar\nfoo\n\n"
        );
    }
}
