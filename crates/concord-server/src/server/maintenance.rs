//! etcd's `Maintenance` service (status, hash, hashKV, snapshot, alarms, move-leader,
//! defragment) and the `Auth` service, which reports authentication as not enabled.

use concord_proto::etcdserverpb as pb;
use concord_proto::etcdserverpb::maintenance_server::Maintenance;
use concord_raft::{NodeId, StateRole};
use concord_storage::mvcc::types::Command;
use concord_storage::snapshot::SnapshotStream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::api::{self, Ctx};
use crate::error::Etcd;
use crate::server::api::BoxStream;

/// The etcd API version Concord answers in `Status` and `/version`.
pub const ETCD_VERSION: &str = "3.5.0";
/// The etcd cluster version Concord reports.
pub const ETCD_CLUSTER_VERSION: &str = "3.5.0";

/// Snapshot bytes per `SnapshotResponse`.
const SNAPSHOT_CHUNK: usize = 1 << 20;

/// The `etcdserverpb.Maintenance` service.
#[derive(Clone)]
pub(crate) struct MaintenanceService {
    pub ctx: Ctx,
}

/// The raised alarms, one per member that raised NOSPACE (as etcd lists them).
fn alarms(ctx: &Ctx) -> Vec<pb::AlarmMember> {
    let members = ctx
        .node
        .with_store(|s| Ok(s.alarm_members().to_vec()))
        .unwrap_or_default();
    members.into_iter().map(nospace).collect()
}

fn nospace(member_id: u64) -> pb::AlarmMember {
    pb::AlarmMember {
        member_id,
        alarm: pb::AlarmType::Nospace as i32,
    }
}

#[tonic::async_trait]
impl Maintenance for MaintenanceService {
    async fn alarm(
        &self,
        request: Request<pb::AlarmRequest>,
    ) -> Result<Response<pb::AlarmResponse>, Status> {
        // etcd checks nothing here; Concord lets any user list the alarms and asks for
        // the root role to raise or clear one.
        let caller = self.ctx.auth.principal(request.metadata())?;
        use pb::alarm_request::AlarmAction;
        let r = request.into_inner();
        if r.action != AlarmAction::Get as i32 {
            if let Some(p) = caller {
                p.admin()?;
            }
        }
        // As etcd answers: GET lists every alarm; ACTIVATE and DEACTIVATE answer with the
        // alarm they changed, named by the member id the request gave (0 included).
        let changed = match AlarmAction::try_from(r.action) {
            Ok(AlarmAction::Get) => alarms(&self.ctx),
            Ok(AlarmAction::Activate) => {
                if r.alarm != pb::AlarmType::Nospace as i32 {
                    return Err(Etcd::OnlyNoSpaceAlarm.status());
                }
                self.ctx
                    .node
                    .propose(Command::AlarmActivate {
                        member: r.member_id,
                    })
                    .await
                    .map_err(api::status)?;
                vec![nospace(r.member_id)]
            }
            Ok(AlarmAction::Deactivate) => {
                let raised = alarms(&self.ctx)
                    .into_iter()
                    .any(|a| a.member_id == r.member_id);
                if (r.alarm == pb::AlarmType::Nospace as i32 || r.alarm == 0) && raised {
                    self.ctx
                        .node
                        .propose(Command::AlarmDeactivate {
                            member: r.member_id,
                        })
                        .await
                        .map_err(api::status)?;
                    vec![nospace(r.member_id)]
                } else {
                    Vec::new()
                }
            }
            Err(_) => return Err(Etcd::UnknownAlarmAction.status_with(r.action)),
        };
        Ok(Response::new(pb::AlarmResponse {
            header: Some(self.ctx.header()),
            alarms: changed,
        }))
    }

    async fn status(
        &self,
        _request: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        let st = self.ctx.node.status();
        let (size, in_use) = self
            .ctx
            .node
            .with_store(|s| Ok((s.size_bytes()?, s.size_in_use_bytes()?)))
            .map_err(api::status)?;
        let mut errors = Vec::new();
        if st.leader.is_none() {
            errors.push(Etcd::NoLeader.text().to_string());
        }
        for alarm in alarms(&self.ctx) {
            errors.push(format!("memberID:{} alarm:NOSPACE", alarm.member_id));
        }
        Ok(Response::new(pb::StatusResponse {
            header: Some(self.ctx.header_at(st.state.revision)),
            version: ETCD_VERSION.into(),
            db_size: size as i64,
            leader: st.leader.map_or(0, NodeId::get),
            raft_index: st.commit,
            raft_term: st.term,
            raft_applied_index: st.applied,
            errors,
            db_size_in_use: in_use as i64,
            is_learner: st.conf_state.learners.contains(&self.ctx.member_id),
            db_size_quota: self.ctx.quota_bytes as i64,
            ..Default::default()
        }))
    }

    async fn defragment(
        &self,
        request: Request<pb::DefragmentRequest>,
    ) -> Result<Response<pb::DefragmentResponse>, Status> {
        self.ctx.auth.require_admin(request.metadata())?;
        let node = self.ctx.node.clone();
        // Online: requests go on during the copy and wait only for the switch.
        tokio::task::spawn_blocking(move || node.defragment())
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(api::status)?;
        // etcd 3.4 answers Defragment without a header.
        Ok(Response::new(pb::DefragmentResponse { header: None }))
    }

    async fn hash(
        &self,
        request: Request<pb::HashRequest>,
    ) -> Result<Response<pb::HashResponse>, Status> {
        self.ctx.auth.require_admin(request.metadata())?;
        let hash = self
            .ctx
            .node
            .with_store(|s| s.hash())
            .map_err(api::status)?;
        Ok(Response::new(pb::HashResponse {
            header: Some(self.ctx.header()),
            hash,
        }))
    }

    async fn hash_kv(
        &self,
        request: Request<pb::HashKvRequest>,
    ) -> Result<Response<pb::HashKvResponse>, Status> {
        self.ctx.auth.require_admin(request.metadata())?;
        let rev = request.into_inner().revision;
        let (hash, hash_rev, compacted) = self
            .ctx
            .node
            .with_store(|s| s.hash_kv(rev))
            .map_err(api::status)?
            .map_err(api::request_status)?;
        Ok(Response::new(pb::HashKvResponse {
            header: Some(self.ctx.header()),
            hash,
            compact_revision: compacted,
            hash_revision: hash_rev,
        }))
    }

    async fn snapshot(
        &self,
        request: Request<pb::SnapshotRequest>,
    ) -> Result<Response<BoxStream<pb::SnapshotResponse>>, Status> {
        self.ctx.auth.require_admin(request.metadata())?;
        let format = request
            .metadata()
            .get(concord_proto::SNAPSHOT_FORMAT_KEY)
            .map(|v| v.to_str().unwrap_or("?"))
            .unwrap_or("etcd");
        // One consistent image (a single read transaction), streamed in chunks.
        let chunks: Vec<Vec<u8>> = match format {
            "etcd" => {
                let db = self
                    .ctx
                    .node
                    .with_store(|s| s.export_etcd())
                    .map_err(api::status)?;
                db.chunks(SNAPSHOT_CHUNK).map(<[u8]>::to_vec).collect()
            }
            "concord" => self
                .ctx
                .node
                .with_store(|s| SnapshotStream::new(s, SNAPSHOT_CHUNK)?.collect())
                .map_err(api::status)?,
            other => {
                return Err(Status::invalid_argument(format!(
                    "unknown snapshot format {other:?} in {}: use etcd or concord",
                    concord_proto::SNAPSHOT_FORMAT_KEY
                )))
            }
        };
        // etcd's stream format: the image, zero padding to 512 bytes (a bbolt image needs
        // none), its SHA-256 (etcdctl checks both). Concord's restore verifies them.
        let mut hasher = <sha2::Sha256 as sha2::Digest>::new();
        for c in &chunks {
            sha2::Digest::update(&mut hasher, c);
        }
        let image: u64 = chunks.iter().map(|c| c.len() as u64).sum();
        let mut chunks = chunks;
        chunks.push(concord_storage::snapshot::etcd_trailer(image, hasher));
        let total: u64 = chunks.iter().map(|c| c.len() as u64).sum();
        let header = self.ctx.header();
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(async move {
            let mut sent = 0u64;
            for blob in chunks {
                sent += blob.len() as u64;
                let resp = pb::SnapshotResponse {
                    header: Some(header),
                    remaining_bytes: total - sent,
                    blob,
                    version: ETCD_VERSION.into(),
                };
                if tx.send(Ok(resp)).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn move_leader(
        &self,
        request: Request<pb::MoveLeaderRequest>,
    ) -> Result<Response<pb::MoveLeaderResponse>, Status> {
        self.ctx.auth.require_admin(request.metadata())?;
        let target = NodeId(request.into_inner().target_id);
        let st = self.ctx.node.status();
        if st.role != StateRole::Leader {
            return Err(Etcd::NotLeader.status());
        }
        if !st.conf_state.voters.contains(&target) {
            return Err(Etcd::BadLeaderTransferee.status());
        }
        self.ctx
            .node
            .transfer_leader(target)
            .await
            .map_err(api::status)?;
        // Wait for the outcome, bounded by the request timeout (as etcd does).
        let moved = self
            .ctx
            .node
            .wait_for_leader(std::time::Duration::from_secs(7), |l| l == Some(target))
            .await
            .map_err(api::status)?;
        if !moved {
            return Err(Etcd::Timeout.status());
        }
        Ok(Response::new(pb::MoveLeaderResponse {
            header: Some(self.ctx.header()),
        }))
    }
}
