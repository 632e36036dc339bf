//! etcd's `Lease` service over the leader's expiry clock ([`crate::node::Leases`], where the
//! expiry guarantees are stated). Keep-alives and time-to-live questions are answered by
//! the leader: a follower forwards them to the leader's client URL.

use concord_proto::etcdserverpb as pb;
use concord_proto::etcdserverpb::lease_client::LeaseClient;
use concord_proto::etcdserverpb::lease_server::Lease;
use concord_raft::StateRole;
use concord_storage::mvcc::types::Command;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::api::{self, Ctx};
use crate::error::Etcd;
use crate::server::api::BoxStream;

/// The `etcdserverpb.Lease` service.
#[derive(Clone)]
pub(crate) struct LeaseService {
    pub ctx: Ctx,
}

impl LeaseService {
    /// A client of the leader's Lease service, for forwarding.
    async fn leader_client(&self) -> Result<LeaseClient<tonic::transport::Channel>, Status> {
        Ok(LeaseClient::new(self.ctx.leader_channel().await?))
    }

    fn is_leader(&self) -> bool {
        self.ctx.node.status().role == StateRole::Leader
    }
}

pub(crate) fn random_id() -> i64 {
    // Positive, non-zero, unpredictable enough to avoid collisions between grants (a
    // collision is refused by the state machine with "lease already exists").
    let mut buf = [0u8; 8];
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let c = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    buf.copy_from_slice(&(nanos ^ c.rotate_left(40)).to_le_bytes());
    let h = xxhash_rust::xxh3::xxh3_64(&buf);
    ((h >> 1) as i64).max(1)
}

#[tonic::async_trait]
impl Lease for LeaseService {
    async fn lease_grant(
        &self,
        request: Request<pb::LeaseGrantRequest>,
    ) -> Result<Response<pb::LeaseGrantResponse>, Status> {
        self.ctx.auth.principal(request.metadata())?;
        let r = request.into_inner();
        if r.id < 0 {
            return Err(Etcd::LeaseIdNotPositive.status());
        }
        let id = if r.id == 0 { random_id() } else { r.id };
        // etcd: TTLs above 9,000,000,000 s are refused, short ones raised to the minimum.
        if r.ttl > 9_000_000_000 {
            return Err(Etcd::LeaseTtlTooLarge.status());
        }
        let ttl = r.ttl.max(self.ctx.leases.min_ttl);
        let resp = self
            .ctx
            .node
            .propose(Command::LeaseGrant { id, ttl })
            .await
            .map_err(api::status)?;
        let rev = match resp {
            concord_storage::mvcc::types::Response::Revision(r) => r,
            _ => self.ctx.node.status().state.revision,
        };
        Ok(Response::new(pb::LeaseGrantResponse {
            header: Some(self.ctx.header_at(rev)),
            id,
            ttl,
            error: String::new(),
        }))
    }

    async fn lease_revoke(
        &self,
        request: Request<pb::LeaseRevokeRequest>,
    ) -> Result<Response<pb::LeaseRevokeResponse>, Status> {
        self.ctx.auth.principal(request.metadata())?;
        let id = request.into_inner().id;
        let resp = self
            .ctx
            .node
            .propose(Command::LeaseRevoke { id })
            .await
            .map_err(api::status)?;
        let rev = match resp {
            concord_storage::mvcc::types::Response::Revision(r) => r,
            _ => self.ctx.node.status().state.revision,
        };
        Ok(Response::new(pb::LeaseRevokeResponse {
            header: Some(self.ctx.header_at(rev)),
        }))
    }

    async fn lease_keep_alive(
        &self,
        request: Request<Streaming<pb::LeaseKeepAliveRequest>>,
    ) -> Result<Response<BoxStream<pb::LeaseKeepAliveResponse>>, Status> {
        self.ctx.auth.principal(request.metadata())?;
        let token = api::token_of(request.metadata());
        let mut input = request.into_inner();
        if !self.is_leader() {
            // Forward the whole stream to the leader.
            let mut client = self.leader_client().await?;
            let (tx, rx) = mpsc::channel::<pb::LeaseKeepAliveRequest>(64);
            tokio::spawn(async move {
                while let Ok(Some(r)) = input.message().await {
                    if tx.send(r).await.is_err() {
                        break;
                    }
                }
            });
            let resp = client
                .lease_keep_alive(api::with_token(ReceiverStream::new(rx), &token))
                .await?;
            let stream = resp.into_inner();
            return Ok(Response::new(Box::pin(stream)));
        }
        let (out, rx) = mpsc::channel(64);
        let ctx = self.ctx.clone();
        tokio::spawn(async move {
            loop {
                let r = tokio::select! {
                    m = input.message() => m,
                    _ = out.closed() => break,
                };
                let id = match r {
                    Ok(Some(r)) => r.id,
                    _ => break,
                };
                let resp = match ctx.leases.keep_alive(id).await {
                    Ok(ttl) => Ok(pb::LeaseKeepAliveResponse {
                        header: Some(ctx.header()),
                        id,
                        ttl: ttl.unwrap_or(0),
                    }),
                    Err(e) => Err(api::status(e)),
                };
                let failed = resp.is_err();
                if out.send(resp).await.is_err() || failed {
                    break;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn lease_time_to_live(
        &self,
        request: Request<pb::LeaseTimeToLiveRequest>,
    ) -> Result<Response<pb::LeaseTimeToLiveResponse>, Status> {
        self.ctx.auth.principal(request.metadata())?;
        let token = api::token_of(request.metadata());
        let r = request.into_inner();
        if !self.is_leader() {
            let mut client = self.leader_client().await?;
            return client.lease_time_to_live(api::with_token(r, &token)).await;
        }
        match self.ctx.leases.time_to_live(r.id).await {
            Ok(Some((ttl, granted, keys))) => Ok(Response::new(pb::LeaseTimeToLiveResponse {
                header: Some(self.ctx.header()),
                id: r.id,
                ttl,
                granted_ttl: granted,
                keys: if r.keys { keys } else { Vec::new() },
            })),
            // etcd answers an unknown lease with TTL -1.
            Ok(None) => Ok(Response::new(pb::LeaseTimeToLiveResponse {
                header: Some(self.ctx.header()),
                id: r.id,
                ttl: -1,
                granted_ttl: 0,
                keys: Vec::new(),
            })),
            Err(e) => Err(api::status(e)),
        }
    }

    async fn lease_leases(
        &self,
        request: Request<pb::LeaseLeasesRequest>,
    ) -> Result<Response<pb::LeaseLeasesResponse>, Status> {
        self.ctx.auth.principal(request.metadata())?;
        self.ctx.node.read_barrier().await.map_err(api::status)?;
        let ids = self
            .ctx
            .node
            .with_store(|s| s.lease_ids())
            .map_err(api::status)?;
        Ok(Response::new(pb::LeaseLeasesResponse {
            header: Some(self.ctx.header()),
            leases: ids.into_iter().map(|id| pb::LeaseStatus { id }).collect(),
        }))
    }
}
