//! etcd's `Watch` service.
//!
//! Each watcher is a task that reads the store's change log ([`MvccStore::events`], through
//! [`EventFeed`]) from its next revision whenever the applied revision moves, so it
//! delivers every change at or after its start revision exactly once, in revision order,
//! with no separate event buffer that could drop or reorder anything. A watcher that falls behind a compaction
//! is cancelled with `compact_revision` set, as etcd does.
//!
//! # Limits
//!
//! * Every watcher scans the whole change log after each revision and filters by its key
//!   range: cheap for tens of watchers, linear in their number beyond that (etcd groups
//!   watchers by interval; doing so here is future work).
//! * Responses are not fragmented: a revision's events go in one message, however large.
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
use crate::node::{EventFeed, FeedError};
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
    let (mut feed, current) = EventFeed::new(&ctx.node, c.start_revision, c.prev_kv);
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
                    .filter(|e| api::in_range(&e.kv.key, &c.key, &c.range_end))
                    .filter(|e| match e.kind {
                        EventKind::Put => !no_put,
                        EventKind::Delete => !no_delete,
                    })
                    .map(api::event_to_pb)
                    .collect();
                if !events.is_empty() {
                    let resp = pb::WatchResponse {
                        header: Some(ctx.header_at(applied)),
                        watch_id: id,
                        events,
                        ..Default::default()
                    };
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
