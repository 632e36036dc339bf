//! etcd's `v3lock.Lock` and `v3election.Election` services, built on the keyspace with
//! etcd's key layout, so they interoperate with clients that use etcd's `concurrency`
//! recipes directly.
//!
//! * A contender's key is `<name>/<lease id in lowercase hex>`, attached to its lease.
//! * Contenders are ordered by their key's create revision; the lowest one holds the lock
//!   (leads the election). A waiter waits until every key with a lower create revision
//!   under the prefix is gone (released, or its lease expired).
//! * **Fencing token**: a lock grant's `header.revision`, and a leader key's `rev`, are
//!   the owner key's create revision. It increases with every new owner, so a protected
//!   resource that remembers the highest token it has seen can refuse a stale holder
//!   (docs/locks.md).
//! * A `Lock` or `Campaign` call abandoned by its client while waiting deletes the key it
//!   created, as etcd's recipes do.
//! * The writes a call makes for its client are checked again at apply, like the `KV`
//!   service's ([`By::Client`]); the cleanup of an abandoned call is the service's own.

use concord_proto::v3electionpb as el;
use concord_proto::v3electionpb::election_server::Election;
use concord_proto::v3lockpb as lk;
use concord_proto::v3lockpb::lock_server::Lock;
use concord_storage::mvcc::types::Command;
use concord_storage::mvcc::types::{
    Compare, CompareResult, CompareTarget, DeleteRangeRequest, KeyValue, PutRequest, RangeRequest,
    RequestOp, Response as StResponse, ResponseOp, SortOrder, SortTarget, TxnRequest,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::api::{self, Ctx};
use crate::auth::{self, Principal};
use crate::error::Etcd;
use crate::server::api::BoxStream;

/// The services of both recipes.
#[derive(Clone)]
pub(crate) struct ConcurrencyService {
    pub ctx: Ctx,
}

fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

fn contender_key(name: &[u8], lease: i64) -> Vec<u8> {
    let mut k = name.to_vec();
    k.push(b'/');
    k.extend_from_slice(format!("{lease:x}").as_bytes());
    k
}

fn prefix_of(name: &[u8]) -> Vec<u8> {
    let mut p = name.to_vec();
    p.push(b'/');
    p
}

/// On whose behalf a write is made.
#[derive(Clone, Copy)]
enum By<'a> {
    /// A client's call, checked where it was received: proposed as
    /// [`Command::Authorized`], so the check is made again at apply.
    Client(Option<&'a Principal>),
    /// The service itself (the cleanup of an abandoned call).
    Service,
}

impl By<'_> {
    fn command(self, cmd: Command) -> Command {
        match self {
            By::Client(caller) => auth::authorized(caller, cmd),
            By::Service => cmd,
        }
    }
}

/// Deletes a contender key when a waiting call is abandoned.
struct Abandon {
    ctx: Option<Ctx>,
    key: Vec<u8>,
    rev: i64,
}

impl Drop for Abandon {
    fn drop(&mut self) {
        let Some(ctx) = self.ctx.take() else { return };
        let key = std::mem::take(&mut self.key);
        let rev = self.rev;
        tokio::spawn(async move {
            let _ = delete_if_owner(&ctx, By::Service, key, rev).await;
        });
    }
}

impl Abandon {
    fn disarm(mut self) {
        self.ctx = None;
    }
}

async fn txn(
    ctx: &Ctx,
    by: By<'_>,
    t: TxnRequest,
) -> Result<concord_storage::mvcc::types::TxnResponse, Status> {
    match ctx
        .node
        .propose(by.command(Command::Txn(t)))
        .await
        .map_err(api::status)?
    {
        StResponse::Txn(r) => Ok(r),
        _ => Err(Status::internal(
            "unexpected response kind from the state machine",
        )),
    }
}

fn create_rev_is(key: &[u8], rev: i64) -> Compare {
    Compare {
        result: CompareResult::Equal,
        target: CompareTarget::Create(rev),
        key: key.to_vec(),
        range_end: Vec::new(),
    }
}

async fn delete_if_owner(ctx: &Ctx, by: By<'_>, key: Vec<u8>, rev: i64) -> Result<bool, Status> {
    let r = txn(
        ctx,
        by,
        TxnRequest {
            compare: vec![create_rev_is(&key, rev)],
            success: vec![RequestOp::DeleteRange(DeleteRangeRequest {
                key,
                range_end: Vec::new(),
                prev_kv: false,
            })],
            failure: Vec::new(),
        },
    )
    .await?;
    Ok(r.succeeded)
}

/// Creates the contender key if absent (with `value`); returns its create revision, the
/// revision of the write, and whether it existed already (then its value is left alone).
async fn create_key(
    ctx: &Ctx,
    by: By<'_>,
    key: &[u8],
    lease: i64,
    value: Vec<u8>,
) -> Result<(KeyValue, i64, bool), Status> {
    let r = txn(
        ctx,
        by,
        TxnRequest {
            compare: vec![create_rev_is(key, 0)],
            success: vec![RequestOp::Put(PutRequest {
                key: key.to_vec(),
                value,
                lease,
                ..PutRequest::default()
            })],
            failure: vec![RequestOp::Range(RangeRequest {
                key: key.to_vec(),
                ..RangeRequest::default()
            })],
        },
    )
    .await?;
    if r.succeeded {
        let kv = KeyValue {
            key: key.to_vec(),
            create_revision: r.revision,
            mod_revision: r.revision,
            version: 1,
            lease,
            ..KeyValue::default()
        };
        return Ok((kv, r.revision, false));
    }
    match r.responses.into_iter().next() {
        Some(ResponseOp::Range(g)) => match g.kvs.into_iter().next() {
            Some(kv) => Ok((kv, g.revision, true)),
            None => Err(Status::aborted("contender key vanished; retry")),
        },
        _ => Err(Status::internal("unexpected transaction response")),
    }
}

/// The first contender under `prefix` created before `before` (all of them if 0).
fn first_contender(ctx: &Ctx, prefix: &[u8], before: i64) -> Result<Option<KeyValue>, Status> {
    let r = ctx
        .node
        .serializable_range(&RangeRequest {
            key: prefix.to_vec(),
            range_end: prefix_end(prefix),
            limit: 1,
            sort_order: SortOrder::Ascend,
            sort_target: SortTarget::Create,
            max_create_revision: if before > 0 { before - 1 } else { 0 },
            ..RangeRequest::default()
        })
        .map_err(api::status)?;
    Ok(r.kvs.into_iter().next())
}

fn key_exists(ctx: &Ctx, key: &[u8], create_rev: i64) -> Result<bool, Status> {
    let r = ctx
        .node
        .serializable_range(&RangeRequest {
            key: key.to_vec(),
            ..RangeRequest::default()
        })
        .map_err(api::status)?;
    Ok(r.kvs
        .first()
        .is_some_and(|kv| kv.create_revision == create_rev))
}

/// Waits until no key under `prefix` has a create revision below `rev`. Fails if the
/// waiter's own key disappears (its lease expired).
async fn wait_turn(ctx: &Ctx, prefix: &[u8], key: &[u8], rev: i64) -> Result<(), Status> {
    ctx.node.read_barrier().await.map_err(api::status)?;
    let mut status = ctx.node.watch_status();
    loop {
        status.borrow_and_update();
        if !key_exists(ctx, key, rev)? {
            return Err(Etcd::ContenderDeleted.status());
        }
        if first_contender(ctx, prefix, rev)?.is_none() {
            return Ok(());
        }
        if status.changed().await.is_err() {
            return Err(Etcd::Stopped.status());
        }
    }
}

fn not_leader() -> Status {
    Status::failed_precondition("election: not leader")
}

/// TTL of the lease `Lock` and `Campaign` grant a caller that brought none (etcd's session
/// default).
const SESSION_TTL_SECS: i64 = 60;

/// Grants a fresh lease of [`SESSION_TTL_SECS`] for a request that brought none.
async fn session_lease(ctx: &Ctx) -> Result<i64, Status> {
    let id = super::lease::random_id();
    ctx.node
        .propose(Command::LeaseGrant {
            id,
            ttl: SESSION_TTL_SECS,
        })
        .await
        .map_err(api::status)?;
    Ok(id)
}

#[tonic::async_trait]
impl Lock for ConcurrencyService {
    async fn lock(
        &self,
        request: Request<lk::LockRequest>,
    ) -> Result<Response<lk::LockResponse>, Status> {
        let caller = self.ctx.auth.principal(request.metadata())?;
        let r = request.into_inner();
        if r.name.is_empty() {
            return Err(Status::invalid_argument("lock: name is not provided"));
        }
        if let Some(p) = &caller {
            let prefix = prefix_of(&r.name);
            p.write(&prefix, &prefix_end(&prefix))?;
            p.read(&prefix, &prefix_end(&prefix))?;
        }
        // As etcd's lock service does: without a lease, the caller gets a session lease of
        // its own (60 s, etcd's session default) that nobody keeps alive, so an abandoned
        // lock frees itself within a minute.
        let lease = if r.lease == 0 {
            session_lease(&self.ctx).await?
        } else {
            r.lease
        };
        let key = contender_key(&r.name, lease);
        let by = By::Client(caller.as_ref());
        let (kv, _, _) = create_key(&self.ctx, by, &key, lease, Vec::new()).await?;
        let guard = Abandon {
            ctx: Some(self.ctx.clone()),
            key: key.clone(),
            rev: kv.create_revision,
        };
        wait_turn(&self.ctx, &prefix_of(&r.name), &key, kv.create_revision).await?;
        guard.disarm();
        Ok(Response::new(lk::LockResponse {
            header: Some(self.ctx.header_at(kv.create_revision)),
            key,
        }))
    }

    async fn unlock(
        &self,
        request: Request<lk::UnlockRequest>,
    ) -> Result<Response<lk::UnlockResponse>, Status> {
        let caller = self.ctx.auth.principal(request.metadata())?;
        let key = request.into_inner().key;
        if key.is_empty() {
            return Err(Status::invalid_argument("lock: key is not provided"));
        }
        if let Some(p) = &caller {
            p.write(&key, &[])?;
        }
        let resp = self
            .ctx
            .node
            .propose(By::Client(caller.as_ref()).command(Command::DeleteRange(
                DeleteRangeRequest {
                    key,
                    range_end: Vec::new(),
                    prev_kv: false,
                },
            )))
            .await
            .map_err(api::status)?;
        let rev = match resp {
            StResponse::DeleteRange(d) => d.revision,
            _ => self.ctx.node.status().state.revision,
        };
        Ok(Response::new(lk::UnlockResponse {
            header: Some(self.ctx.header_at(rev)),
        }))
    }
}

#[tonic::async_trait]
impl Election for ConcurrencyService {
    async fn campaign(
        &self,
        request: Request<el::CampaignRequest>,
    ) -> Result<Response<el::CampaignResponse>, Status> {
        let caller = self.ctx.auth.principal(request.metadata())?;
        let r = request.into_inner();
        if r.name.is_empty() {
            return Err(Status::invalid_argument("election: name is not provided"));
        }
        if let Some(p) = &caller {
            let prefix = prefix_of(&r.name);
            p.write(&prefix, &prefix_end(&prefix))?;
            p.read(&prefix, &prefix_end(&prefix))?;
        }
        // Without a lease, a session lease of its own, as for `Lock` (and as etcd does).
        let lease = if r.lease == 0 {
            session_lease(&self.ctx).await?
        } else {
            r.lease
        };
        let key = contender_key(&r.name, lease);
        let by = By::Client(caller.as_ref());
        let (kv, _, existed) = create_key(&self.ctx, by, &key, lease, r.value.clone()).await?;
        let rev = kv.create_revision;
        if existed && kv.value != r.value {
            // Campaigning again with the same lease proclaims the new value.
            proclaim(&self.ctx, by, &key, rev, lease, r.value).await?;
        }
        let guard = Abandon {
            ctx: Some(self.ctx.clone()),
            key: key.clone(),
            rev,
        };
        wait_turn(&self.ctx, &prefix_of(&r.name), &key, rev).await?;
        guard.disarm();
        Ok(Response::new(el::CampaignResponse {
            header: Some(self.ctx.header_at(rev)),
            leader: Some(el::LeaderKey {
                name: r.name,
                key,
                rev,
                lease,
            }),
        }))
    }

    async fn proclaim(
        &self,
        request: Request<el::ProclaimRequest>,
    ) -> Result<Response<el::ProclaimResponse>, Status> {
        let caller = self.ctx.auth.principal(request.metadata())?;
        let r = request.into_inner();
        let l = r
            .leader
            .ok_or_else(|| Status::invalid_argument("election: leader key is not provided"))?;
        if let Some(p) = &caller {
            p.write(&l.key, &[])?;
        }
        let by = By::Client(caller.as_ref());
        proclaim(&self.ctx, by, &l.key, l.rev, l.lease, r.value).await?;
        Ok(Response::new(el::ProclaimResponse {
            header: Some(self.ctx.header()),
        }))
    }

    async fn leader(
        &self,
        request: Request<el::LeaderRequest>,
    ) -> Result<Response<el::LeaderResponse>, Status> {
        let caller = self.ctx.auth.principal(request.metadata())?;
        let name = request.into_inner().name;
        if let Some(p) = &caller {
            let prefix = prefix_of(&name);
            p.read(&prefix, &prefix_end(&prefix))?;
        }
        self.ctx.node.read_barrier().await.map_err(api::status)?;
        let kv = first_contender(&self.ctx, &prefix_of(&name), 0)?
            .ok_or_else(|| Status::not_found("election: no leader"))?;
        Ok(Response::new(el::LeaderResponse {
            header: Some(self.ctx.header()),
            kv: Some(api::kv_to_pb(kv)),
        }))
    }

    async fn observe(
        &self,
        request: Request<el::LeaderRequest>,
    ) -> Result<Response<BoxStream<el::LeaderResponse>>, Status> {
        let caller = self.ctx.auth.principal(request.metadata())?;
        let name = request.into_inner().name;
        let prefix = prefix_of(&name);
        if let Some(p) = &caller {
            p.read(&prefix, &prefix_end(&prefix))?;
        }
        let ctx = self.ctx.clone();
        let (tx, rx) = mpsc::channel(16);
        tokio::spawn(async move {
            let mut status = ctx.node.watch_status();
            let mut last: Option<(Vec<u8>, i64)> = None;
            loop {
                status.borrow_and_update();
                match first_contender(&ctx, &prefix, 0) {
                    Ok(Some(kv)) => {
                        let now = (kv.key.clone(), kv.mod_revision);
                        if last.as_ref() != Some(&now) {
                            last = Some(now);
                            let resp = el::LeaderResponse {
                                header: Some(ctx.header()),
                                kv: Some(api::kv_to_pb(kv)),
                            };
                            if tx.send(Ok(resp)).await.is_err() {
                                return;
                            }
                        }
                    }
                    Ok(None) => {}
                    Err(e) => {
                        let _ = tx.send(Err(e)).await;
                        return;
                    }
                }
                tokio::select! {
                    changed = status.changed() => if changed.is_err() { return },
                    _ = tx.closed() => return,
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn resign(
        &self,
        request: Request<el::ResignRequest>,
    ) -> Result<Response<el::ResignResponse>, Status> {
        let caller = self.ctx.auth.principal(request.metadata())?;
        let l = request
            .into_inner()
            .leader
            .ok_or_else(|| Status::invalid_argument("election: leader key is not provided"))?;
        if let Some(p) = &caller {
            p.write(&l.key, &[])?;
        }
        delete_if_owner(&self.ctx, By::Client(caller.as_ref()), l.key, l.rev).await?;
        Ok(Response::new(el::ResignResponse {
            header: Some(self.ctx.header()),
        }))
    }
}

async fn proclaim(
    ctx: &Ctx,
    by: By<'_>,
    key: &[u8],
    rev: i64,
    lease: i64,
    value: Vec<u8>,
) -> Result<(), Status> {
    let r = txn(
        ctx,
        by,
        TxnRequest {
            compare: vec![create_rev_is(key, rev)],
            success: vec![RequestOp::Put(PutRequest {
                key: key.to_vec(),
                value,
                lease,
                ..PutRequest::default()
            })],
            failure: Vec::new(),
        },
    )
    .await?;
    if r.succeeded {
        Ok(())
    } else {
        Err(not_leader())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_follow_etcds_layout() {
        assert_eq!(contender_key(b"job", 0x694d_7f3a), b"job/694d7f3a".to_vec());
        assert_eq!(prefix_end(b"job/"), b"job0".to_vec());
        assert_eq!(prefix_end(&[0xff]), vec![0]);
    }
}
