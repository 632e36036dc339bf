//! etcd's `Watch` service.
//!
//! Each watcher is a task that reads the store's change log ([`MvccStore::events`]) from
//! its next revision whenever the applied revision moves, so it delivers every change at
//! or after its start revision exactly once, in revision order, with no separate event
//! buffer that could drop or reorder anything. A watcher that falls behind a compaction
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
use concord_storage::errors::RequestError;
use concord_storage::mvcc::types::{Event, EventKind};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::api::{self, Ctx};
use crate::error::Etcd;
use crate::server::api::BoxStream;

/// Events read from the store per step.
const EVENTS_PER_STEP: usize = 1000;
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
    let mut status = ctx.node.watch_status();
    let current = status.borrow_and_update().state.revision;
    let mut next = if c.start_revision > 0 {
        c.start_revision
    } else {
        current + 1
    };
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
        // Deliver everything up to the applied revision.
        loop {
            let applied = status.borrow_and_update().state.revision;
            if next > applied {
                break;
            }
            let batch = match read_events(&ctx, next, c.prev_kv) {
                Ok(Ok(b)) => b,
                Ok(Err(RequestError::Compacted)) => {
                    let compacted = ctx
                        .node
                        .with_store(|s| Ok(s.compacted_revision()))
                        .unwrap_or(0);
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
                Ok(Err(e)) | Err(crate::KvError::Request(e)) => {
                    let _ = out.send(Err(api::request_status(e))).await;
                    return;
                }
                Err(e) => {
                    let _ = out.send(Err(api::status(e))).await;
                    return;
                }
            };
            let Some(last) = batch.last().map(|e| e.kv.mod_revision) else {
                // Nothing stored past `next` yet (the status ran ahead of a reader).
                break;
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
            next = last + 1;
            if !events.is_empty() {
                let resp = pb::WatchResponse {
                    header: Some(ctx.header_at(last.max(applied))),
                    watch_id: id,
                    events,
                    ..Default::default()
                };
                if out.send(Ok(resp)).await.is_err() {
                    return;
                }
            }
        }
        tokio::select! {
            changed = status.changed() => {
                if changed.is_err() {
                    let _ = out.send(Err(Etcd::Stopped.status())).await;
                    return;
                }
            }
            _ = progress.tick(), if c.progress_notify => {
                let resp = pb::WatchResponse {
                    header: Some(ctx.header_at(next - 1)),
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

/// The events of whole revisions from `from` on: a revision is never split across two
/// reads, so `next = last + 1` never skips half a transaction.
fn read_events(
    ctx: &Ctx,
    from: i64,
    prev_kv: bool,
) -> Result<Result<Vec<Event>, RequestError>, crate::KvError> {
    let mut limit = EVENTS_PER_STEP;
    loop {
        let mut batch = match ctx.node.with_store(|s| s.events(from, limit, prev_kv))? {
            Ok(b) => b,
            Err(e) => return Ok(Err(e)),
        };
        if batch.len() < limit {
            return Ok(Ok(batch));
        }
        let last = batch.last().map_or(0, |e| e.kv.mod_revision);
        let whole = batch
            .iter()
            .take_while(|e| e.kv.mod_revision < last)
            .count();
        if whole > 0 {
            batch.truncate(whole);
            return Ok(Ok(batch));
        }
        // One revision holds more than `limit` events: read it whole.
        limit = limit.saturating_mul(2);
    }
}
