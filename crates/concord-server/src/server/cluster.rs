//! etcd's `Cluster` service: member add, remove, update, list, promote.
//!
//! A change is two Raft proposals: the member's record (peer URLs), then the
//! configuration change. Raft allows one configuration change at a time; a learner is
//! promoted only once it has caught up with the leader (etcd's rule, "can only promote a
//! learner member which is in sync with leader").

use concord_proto::etcdserverpb as pb;
use concord_proto::etcdserverpb::cluster_client::ClusterClient;
use concord_proto::etcdserverpb::cluster_server::Cluster;
use concord_raft::{ConfChange, ConfChangeSingle, ConfChangeType, ConfState, NodeId};
use tonic::{Request, Response, Status};

use super::api::{self, Ctx};
use super::config::check_url;
use super::members::{self, MemberRecord};
use crate::error::Etcd;

/// The `etcdserverpb.Cluster` service.
#[derive(Clone)]
pub(crate) struct ClusterService {
    pub ctx: Ctx,
    pub token: String,
}

impl ClusterService {
    async fn change(&self, kind: ConfChangeType, id: NodeId) -> Result<ConfState, Status> {
        let cc = ConfChange {
            changes: vec![ConfChangeSingle { kind, node_id: id }],
            ..ConfChange::default()
        };
        self.ctx
            .node
            .change_membership(cc)
            .await
            .map_err(api::status)
    }

    /// Transfers leadership to the other voter with the longest log and waits (bounded)
    /// until a new leader is known.
    async fn step_down(&self) -> Result<(), Status> {
        let me = self.ctx.member_id;
        let voters = self.ctx.node.status().conf_state.voters;
        let progress = self.ctx.node.progress().await.map_err(api::status)?;
        let target = voters
            .iter()
            .filter(|v| **v != me)
            .max_by_key(|v| progress.get(v).copied().unwrap_or(0))
            .copied()
            .ok_or_else(|| Etcd::OnlyVoter.status())?;
        self.ctx
            .node
            .transfer_leader(target)
            .await
            .map_err(api::status)?;
        let moved = self
            .ctx
            .node
            .wait_for_leader(std::time::Duration::from_secs(5), |l| {
                l.is_some_and(|l| l != me)
            })
            .await
            .map_err(api::status)?;
        if moved {
            Ok(())
        } else {
            Err(Etcd::LeaderTransferTimeout.status())
        }
    }

    fn find(&self, id: NodeId) -> Result<pb::Member, Status> {
        self.ctx
            .members
            .list()
            .into_iter()
            .find(|m| m.id == id.get())
            .ok_or_else(|| Etcd::MemberNotFound.status())
    }
}

fn check_urls(urls: &[String]) -> Result<(), Status> {
    if urls.is_empty() {
        return Err(Etcd::PeerUrlsNotProvided.status());
    }
    for u in urls {
        check_url(u).map_err(Status::invalid_argument)?;
    }
    Ok(())
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn member_add(
        &self,
        request: Request<pb::MemberAddRequest>,
    ) -> Result<Response<pb::MemberAddResponse>, Status> {
        self.ctx.auth.require_admin(request.metadata())?;
        let r = request.into_inner();
        check_urls(&r.peer_ur_ls)?;
        let current = self.ctx.members.list();
        for m in &current {
            if m.peer_ur_ls.iter().any(|u| r.peer_ur_ls.contains(u)) {
                return Err(Etcd::PeerUrlExists.status());
            }
        }
        let id = members::member_id(&r.peer_ur_ls, &self.token);
        let record = MemberRecord {
            name: String::new(),
            peer_urls: r.peer_ur_ls.clone(),
            client_urls: Vec::new(),
            ap_only: false,
        };
        self.ctx
            .node
            .propose(members::set_command(id, &record))
            .await
            .map_err(api::status)?;
        let kind = if r.is_learner {
            ConfChangeType::AddLearner
        } else {
            ConfChangeType::AddNode
        };
        let cs = self.change(kind, id).await?;
        let list = self.ctx.members.list_for(&cs);
        let member = list.iter().find(|m| m.id == id.get()).cloned();
        Ok(Response::new(pb::MemberAddResponse {
            header: Some(self.ctx.header()),
            member,
            members: list,
        }))
    }

    async fn member_remove(
        &self,
        request: Request<pb::MemberRemoveRequest>,
    ) -> Result<Response<pb::MemberRemoveResponse>, Status> {
        self.ctx.auth.require_admin(request.metadata())?;
        let token = api::token_of(request.metadata());
        let id = NodeId(request.into_inner().id);
        let cs = self.ctx.node.status().conf_state;
        if self.ctx.members.ap_only(&cs).contains_key(&id) {
            // An AP-only member is only a record: removing it takes it out of the ring
            // (its keys are handed over) and stops it once it sees it is gone.
            self.ctx
                .node
                .propose(members::remove_command(id))
                .await
                .map_err(api::status)?;
            return Ok(Response::new(pb::MemberRemoveResponse {
                header: Some(self.ctx.header()),
                members: self.ctx.members.list_for(&cs),
            }));
        }
        self.find(id)?;
        if id == self.ctx.member_id
            && self.ctx.node.status().role == concord_raft::StateRole::Leader
        {
            // A leader removing itself would stop leading before it could answer: hand
            // leadership to the most up-to-date other voter first, then let the new leader
            // do the removal.
            self.step_down().await?;
            let mut leader = ClusterClient::new(self.ctx.leader_channel().await?);
            return leader
                .member_remove(api::with_token(
                    pb::MemberRemoveRequest { id: id.get() },
                    &token,
                ))
                .await;
        }
        let cs = self.change(ConfChangeType::RemoveNode, id).await?;
        // The member is out of the configuration: that is the answer. Its record (name,
        // URLs) goes in the background, since removing the leader starts an election and a
        // proposal forwarded meanwhile is lost until the request timeout; a leftover record
        // is harmless (members are listed from the configuration).
        let node = self.ctx.node.clone();
        tokio::spawn(async move {
            for attempt in 1..=3 {
                match node.propose(members::remove_command(id)).await {
                    Ok(_) => return,
                    Err(e) if attempt == 3 => {
                        tracing::warn!(member = %id, error = %e, "member record not removed")
                    }
                    Err(_) => tokio::time::sleep(std::time::Duration::from_millis(500)).await,
                }
            }
        });
        Ok(Response::new(pb::MemberRemoveResponse {
            header: Some(self.ctx.header()),
            members: self.ctx.members.list_for(&cs),
        }))
    }

    async fn member_update(
        &self,
        request: Request<pb::MemberUpdateRequest>,
    ) -> Result<Response<pb::MemberUpdateResponse>, Status> {
        self.ctx.auth.require_admin(request.metadata())?;
        let r = request.into_inner();
        check_urls(&r.peer_ur_ls)?;
        let id = NodeId(r.id);
        self.find(id)?;
        let mut record = self.ctx.members.records().remove(&id).unwrap_or_default();
        record.peer_urls = r.peer_ur_ls;
        self.ctx
            .node
            .propose(members::set_command(id, &record))
            .await
            .map_err(api::status)?;
        Ok(Response::new(pb::MemberUpdateResponse {
            header: Some(self.ctx.header()),
            members: self.ctx.members.list(),
        }))
    }

    async fn member_list(
        &self,
        request: Request<pb::MemberListRequest>,
    ) -> Result<Response<pb::MemberListResponse>, Status> {
        if request.into_inner().linearizable {
            self.ctx.node.read_barrier().await.map_err(api::status)?;
        }
        Ok(Response::new(pb::MemberListResponse {
            header: Some(self.ctx.header()),
            members: self.ctx.members.list(),
        }))
    }

    async fn member_promote(
        &self,
        request: Request<pb::MemberPromoteRequest>,
    ) -> Result<Response<pb::MemberPromoteResponse>, Status> {
        self.ctx.auth.require_admin(request.metadata())?;
        let token = api::token_of(request.metadata());
        let id = NodeId(request.into_inner().id);
        let m = self.find(id)?;
        if !m.is_learner {
            return Err(Etcd::MemberNotLearner.status());
        }
        if self.ctx.node.status().role != concord_raft::StateRole::Leader {
            // Only the leader knows each member's progress: forward, as etcd does.
            let mut leader = ClusterClient::new(self.ctx.leader_channel().await?);
            return leader
                .member_promote(api::with_token(
                    pb::MemberPromoteRequest { id: id.get() },
                    &token,
                ))
                .await;
        }
        if !self.ctx.node.is_caught_up(id).await.map_err(api::status)? {
            return Err(Etcd::LearnerNotReady.status());
        }
        let cs = self.change(ConfChangeType::AddNode, id).await?;
        Ok(Response::new(pb::MemberPromoteResponse {
            header: Some(self.ctx.header()),
            members: self.ctx.members.list_for(&cs),
        }))
    }
}
