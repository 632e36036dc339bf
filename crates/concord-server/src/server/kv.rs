//! etcd's `KV` service: Range, Put, DeleteRange, Txn, Compact.
//!
//! Writes go through Raft ([`NodeHandle::propose`]; a follower's proposal is forwarded to
//! the leader by Raft), wrapped with the auth revision their permissions were checked at,
//! which the apply checks again ([`auth::authorized`]). Reads are linearizable by default
//! (a batched ReadIndex, then the local store) and local when `serializable` is set; the
//! `concord-consistency` metadata key asks for `bounded`, `session` or `eventual` instead
//! (docs/consistency.md).

use concord_proto::consistency::ReadConsistency;
use concord_proto::etcdserverpb as pb;
use concord_proto::etcdserverpb::kv_server::Kv;
use concord_storage::mvcc::types::{Command, Response as StResponse};
use tonic::{Request, Response, Status};

use super::api::{self, Ctx};
use crate::auth;
use crate::error::Etcd;

/// The `etcdserverpb.KV` service.
#[derive(Clone)]
pub(crate) struct KvService {
    pub ctx: Ctx,
}

fn unexpected() -> Status {
    Status::internal("unexpected response kind from the state machine")
}

impl KvService {
    async fn propose(&self, cmd: Command) -> Result<StResponse, Status> {
        self.ctx.node.propose(cmd).await.map_err(api::status)
    }
}

#[tonic::async_trait]
impl Kv for KvService {
    async fn range(
        &self,
        request: Request<pb::RangeRequest>,
    ) -> Result<Response<pb::RangeResponse>, Status> {
        let consistency = ReadConsistency::from_metadata(request.metadata())
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let (metadata, _, r) = request.into_parts();
        if r.key.is_empty() {
            return Err(Etcd::EmptyKey.status());
        }
        let consistency = if r.serializable {
            ReadConsistency::Eventual
        } else {
            consistency
        };
        // As etcd: the read's wait comes before the permission check, so a linearizable
        // read is checked against every auth change committed before it (enabling auth
        // through another member, a revoked permission), not this member's older view.
        self.ctx
            .node
            .wait_for(consistency)
            .await
            .map_err(api::status)?;
        if let Some(caller) = self.ctx.auth.principal(&metadata)? {
            caller.read(&r.key, &r.range_end)?;
        }
        let req = api::range_from_pb(r);
        let res = self.ctx.node.serializable_range(&req);
        Ok(Response::new(api::range_to_pb(
            &self.ctx,
            res.map_err(api::status)?,
        )))
    }

    async fn put(
        &self,
        request: Request<pb::PutRequest>,
    ) -> Result<Response<pb::PutResponse>, Status> {
        let caller = self.ctx.auth.principal(request.metadata())?;
        let p = request.into_inner();
        if p.key.is_empty() {
            return Err(Etcd::EmptyKey.status());
        }
        let p = api::put_from_pb(p);
        if let Some(caller) = &caller {
            caller.put(&p)?;
        }
        match self
            .propose(auth::authorized(caller.as_ref(), Command::Put(p)))
            .await?
        {
            StResponse::Put(p) => Ok(Response::new(api::put_to_pb(&self.ctx, p))),
            _ => Err(unexpected()),
        }
    }

    async fn delete_range(
        &self,
        request: Request<pb::DeleteRangeRequest>,
    ) -> Result<Response<pb::DeleteRangeResponse>, Status> {
        let caller = self.ctx.auth.principal(request.metadata())?;
        let d = request.into_inner();
        if d.key.is_empty() {
            return Err(Etcd::EmptyKey.status());
        }
        let d = api::delete_from_pb(d);
        if let Some(caller) = &caller {
            caller.delete(&d)?;
        }
        match self
            .propose(auth::authorized(caller.as_ref(), Command::DeleteRange(d)))
            .await?
        {
            StResponse::DeleteRange(d) => Ok(Response::new(api::delete_to_pb(&self.ctx, d))),
            _ => Err(unexpected()),
        }
    }

    async fn txn(
        &self,
        request: Request<pb::TxnRequest>,
    ) -> Result<Response<pb::TxnResponse>, Status> {
        let caller = self.ctx.auth.principal(request.metadata())?;
        let t = api::txn_from_pb(request.into_inner(), self.ctx.max_txn_ops)?;
        if let Some(caller) = &caller {
            caller.txn(&t)?;
        }
        match self
            .propose(auth::authorized(caller.as_ref(), Command::Txn(t)))
            .await?
        {
            StResponse::Txn(t) => Ok(Response::new(api::txn_to_pb(&self.ctx, t))),
            _ => Err(unexpected()),
        }
    }

    async fn compact(
        &self,
        request: Request<pb::CompactionRequest>,
    ) -> Result<Response<pb::CompactionResponse>, Status> {
        // As etcd: any authenticated user may compact (Kubernetes' API server compacts
        // with its own user).
        self.ctx.auth.principal(request.metadata())?;
        let c = request.into_inner();
        match self
            .propose(Command::Compact {
                revision: c.revision,
            })
            .await?
        {
            StResponse::Revision(rev) => {
                if c.physical {
                    // etcd's `physical`: answer once the space is reclaimed here.
                    let node = self.ctx.node.clone();
                    tokio::task::spawn_blocking(move || loop {
                        match node.with_store_mut(|s| s.compact_step()) {
                            Ok(true) => return Ok(()),
                            Ok(false) => {}
                            Err(e) => return Err(e),
                        }
                    })
                    .await
                    .map_err(|e| Status::internal(e.to_string()))?
                    .map_err(api::status)?;
                }
                Ok(Response::new(pb::CompactionResponse {
                    header: Some(self.ctx.header_at(rev)),
                }))
            }
            _ => Err(unexpected()),
        }
    }
}
