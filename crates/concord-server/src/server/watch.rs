//! etcd's `Watch` service.
//!
//! Each watcher is a task over a [`WatchFeed`]: while it is caught up, the node's watch hub
//! reads the store's change log once per applied batch for every such watcher and hands
//! each its events; a watcher behind (an old start revision, or too slow for the hub)
//! reads the change log itself ([`MvccStore::events`]) until it has caught up. Either way
//! it delivers every change at or after its start revision exactly once, in revision
//! order (node/hub.rs). A watcher that falls behind a compaction is cancelled with
//! `compact_revision` set, as etcd does.
//!
//! With `fragment` set, a response larger than `--max-request-bytes` is split into several
//! with `fragment: true` on all but the last, as etcd does; without it, a revision's events
//! go in one message however large.
//!
//! [`MvccStore::events`]: concord_storage::mvcc::MvccStore::events

use std::collections::HashMap;
use std::time::Duration;

use concord_proto::etcdserverpb as pb;
use concord_proto::etcdserverpb::watch_server::Watch;
use concord_storage::mvcc::types::EventKind;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::api::{self, Ctx};
use crate::error::Etcd;
use crate::node::{FeedError, KeyRange, WatchFeed};
use crate::server::api::BoxStream;

/// Responses buffered per stream before watchers wait for the client.
const STREAM_BUFFER: usize = 256;
/// Interval of progress notifications for watchers that asked for them (etcd: 10 min).
const PROGRESS_INTERVAL: Duration = Duration::from_secs(600);

/// The `etcdserverpb.Watch` service.
#[derive(Clone)]
pub(crate) struct WatchService {
    pub ctx: Ctx,
}

type Out = mpsc::Sender<Result<pb::WatchResponse, Status>>;

#[tonic::async_trait]
impl Watch for WatchService {
    async fn watch(
        &self,
        request: Request<Streaming<pb::WatchRequest>>,
    ) -> Result<Response<BoxStream<pb::WatchResponse>>, Status> {
        // The stream's token is checked once; each watch it creates is checked against
        // the caller's read permissions.
        let caller = self.ctx.auth.principal(request.metadata())?;
        let mut input = request.into_inner();
        let (out, rx) = mpsc::channel(STREAM_BUFFER);
        let ctx = self.ctx.clone();
        tokio::spawn(async move {
            let mut watchers: HashMap<i64, tokio::task::JoinHandle<()>> = HashMap::new();
            let mut next_id: i64 = 0;
            loop {
                let msg = tokio::select! {
                    m = input.message() => m,
                    _ = out.closed() => break,
                };
                let req = match msg {
                    Ok(Some(r)) => r,
                    Ok(None) | Err(_) => break,
                };
                watchers.retain(|_, h| !h.is_finished());
                use pb::watch_request::RequestUnion;
                match req.request_union {
                    Some(RequestUnion::CreateRequest(c)) => {
                        let id = if c.watch_id != 0 {
                            c.watch_id
                        } else {
                            while watchers.contains_key(&next_id) {
                                next_id += 1;
                            }
                            next_id
                        };
                        if watchers.contains_key(&id) {
                            let _ = out
                                .send(Ok(pb::WatchResponse {
                                    header: Some(ctx.header()),
                                    watch_id: id,
                                    created: true,
                                    canceled: true,
                                    cancel_reason: Etcd::WatcherIdExists.text().into(),
                                    ..Default::default()
                                }))
                                .await;
                            continue;
                        }
                        if c.key.is_empty() {
                            let _ = out
                                .send(Ok(pb::WatchResponse {
                                    header: Some(ctx.header()),
                                    watch_id: id,
                                    created: true,
                                    canceled: true,
                                    cancel_reason: Etcd::EmptyKey.text().into(),
                                    ..Default::default()
                                }))
                                .await;
                            continue;
                        }
                        if let Some(denied) = caller
                            .as_ref()
                            .and_then(|p| p.read(&c.key, &c.range_end).err())
                        {
                            // etcd's exact answer: watch id -1 and the whole gRPC status
                            // as text (the Go client maps the text to its typed error).
                            let _ = out
                                .send(Ok(pb::WatchResponse {
                                    header: Some(ctx.header()),
                                    watch_id: -1,
                                    created: true,
                                    canceled: true,
                                    cancel_reason: format!(
                                        "rpc error: code = PermissionDenied desc = {}",
                                        denied.message()
                                    ),
                                    ..Default::default()
                                }))
                                .await;
                            continue;
                        }
                        let handle = tokio::spawn(run_watcher(ctx.clone(), id, c, out.clone()));
                        watchers.insert(id, handle);
                    }
                    Some(RequestUnion::CancelRequest(c)) => {
                        if let Some(h) = watchers.remove(&c.watch_id) {
                            h.abort();
                            let _ = out
                                .send(Ok(pb::WatchResponse {
                                    header: Some(ctx.header()),
                                    watch_id: c.watch_id,
                                    canceled: true,
                                    ..Default::default()
                                }))
                                .await;
                        }
                    }
                    Some(RequestUnion::ProgressRequest(_)) => {
                        // etcd answers on the stream with watch id -1 and the current
                        // revision, once every watcher has caught up to it; a watcher here
                        // delivers in order, so the revision bounds what it has sent.
                        let _ = out
                            .send(Ok(pb::WatchResponse {
                                header: Some(ctx.header()),
                                watch_id: -1,
                                ..Default::default()
                            }))
                            .await;
                    }
                    None => {}
                }
            }
            for (_, h) in watchers {
                h.abort();
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

async fn run_watcher(ctx: Ctx, id: i64, c: pb::WatchCreateRequest, out: Out) {
    let range = KeyRange::new(c.key.clone(), c.range_end.clone());
    let (mut feed, current) = WatchFeed::new(&ctx.node, c.start_revision, range, c.prev_kv);
    let no_put = c
        .filters
        .contains(&(pb::watch_create_request::FilterType::Noput as i32));
    let no_delete = c
        .filters
        .contains(&(pb::watch_create_request::FilterType::Nodelete as i32));
    let created = pb::WatchResponse {
        header: Some(ctx.header_at(current)),
        watch_id: id,
        created: true,
        ..Default::default()
    };
    if out.send(Ok(created)).await.is_err() {
        return;
    }
    let mut progress = tokio::time::interval(PROGRESS_INTERVAL);
    progress.tick().await;
    loop {
        tokio::select! {
            batch = feed.next_batch() => {
                let (batch, applied) = match batch {
                    Ok(b) => b,
                    Err(FeedError::Compacted { compacted }) => {
                        let _ = out
                            .send(Ok(pb::WatchResponse {
                                header: Some(ctx.header()),
                                watch_id: id,
                                canceled: true,
                                compact_revision: compacted,
                                cancel_reason: Etcd::Compacted.text().into(),
                                ..Default::default()
                            }))
                            .await;
                        return;
                    }
                    Err(FeedError::Stopped) => {
                        let _ = out.send(Err(Etcd::Stopped.status())).await;
                        return;
                    }
                    Err(FeedError::Request(e)) => {
                        let _ = out.send(Err(api::request_status(e))).await;
                        return;
                    }
                    Err(FeedError::Node(e)) => {
                        let _ = out.send(Err(api::status(e))).await;
                        return;
                    }
                };
                let events: Vec<_> = batch
                    .into_iter()
                    .filter(|e| match e.kind {
                        EventKind::Put => !no_put,
                        EventKind::Delete => !no_delete,
                    })
                    .map(api::event_to_pb)
                    .collect();
                let limit = if c.fragment { ctx.max_request_bytes } else { usize::MAX };
                for resp in fragments(ctx.header_at(applied), id, events, limit) {
                    if out.send(Ok(resp)).await.is_err() {
                        return;
                    }
                }
            }
            _ = progress.tick(), if c.progress_notify => {
                let resp = pb::WatchResponse {
                    header: Some(ctx.header_at(feed.next_revision() - 1)),
                    watch_id: id,
                    ..Default::default()
                };
                if out.send(Ok(resp)).await.is_err() {
                    return;
                }
            }
            _ = out.closed() => return,
        }
    }
}

/// The responses carrying `events`: one, or with `limit` (etcd's `fragment`), as many as
/// keep each under `limit` encoded bytes (at least one event each), all but the last
/// marked `fragment`. None when there are no events.
fn fragments(
    header: pb::ResponseHeader,
    watch_id: i64,
    events: Vec<concord_proto::mvccpb::Event>,
    limit: usize,
) -> Vec<pb::WatchResponse> {
    use prost::Message as _;
    let response = |events| pb::WatchResponse {
        header: Some(header),
        watch_id,
        events,
        ..Default::default()
    };
    let mut parts: Vec<Vec<concord_proto::mvccpb::Event>> = Vec::new();
    let mut size = 0;
    for e in events {
        let len = e.encoded_len();
        match parts.last_mut() {
            Some(part) if size + len <= limit => part.push(e),
            _ => {
                parts.push(vec![e]);
                size = 0;
            }
        }
        size += len;
    }
    let n = parts.len();
    parts
        .into_iter()
        .enumerate()
        .map(|(i, events)| pb::WatchResponse {
            fragment: i + 1 < n,
            ..response(events)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use concord_proto::mvccpb;

    fn event(value_len: usize) -> mvccpb::Event {
        mvccpb::Event {
            kv: Some(mvccpb::KeyValue {
                key: b"k".to_vec(),
                value: vec![b'v'; value_len],
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn fragments_keep_every_event_in_order_under_the_limit() {
        let header = pb::ResponseHeader::default();
        assert!(fragments(header, 1, vec![], 100).is_empty());
        let one = fragments(header, 1, vec![event(10), event(10)], usize::MAX);
        assert_eq!(one.len(), 1);
        assert!(!one[0].fragment);
        let events: Vec<_> = (0..10).map(|i| event(40 + i)).collect();
        let parts = fragments(header, 7, events.clone(), 120);
        assert!(parts.len() > 1);
        for (i, p) in parts.iter().enumerate() {
            assert_eq!(p.fragment, i + 1 < parts.len());
            assert_eq!(p.watch_id, 7);
            assert!(!p.events.is_empty());
            let size: usize = p.events.iter().map(prost::Message::encoded_len).sum();
            assert!(size <= 120 || p.events.len() == 1, "part {i}: {size} bytes");
        }
        let flat: Vec<_> = parts.into_iter().flat_map(|p| p.events).collect();
        assert_eq!(flat, events);
    }
}
