//! The cluster metadata for members outside Raft: the peer service `Membership`, served by
//! every Raft member (voter or learner) on its peer URLs and called by AP-only members.
//!
//! * `Members` answers the member's applied view: the members of the AP ring (Raft's
//!   configuration and the AP-only records) and the bucket properties, with a version
//!   (a digest of both) so that a caller holding the current one gets a short
//!   `unchanged` answer.
//! * `Register` records an AP-only member through Raft, after checking that its id is the
//!   one its peer URLs and the cluster token give and that it is not a Raft member.
//! * `SetBucket` changes a bucket's properties through Raft, so that `CONCORD.BUCKET SET`
//!   works on an AP-only member as on any other.

use std::sync::Arc;

use concord_proto::peer::membership_server::{Membership as MembershipRpc, MembershipServer};
use concord_proto::peer::{
    MembersRequest, MembersResponse, MetaEntry, PeerMember, RegisterRequest, RegisterResponse,
    SetBucketRequest, SetBucketResponse,
};
use concord_raft::NodeId;
use prost::Message as _;
use tonic::{Request, Response, Status};

use super::members::{self, MemberRecord, Members};
use crate::ap::{buckets, BucketProps, BUCKETS};
use crate::node::NodeHandle;

/// The `Membership` peer service of a Raft member.
#[derive(Clone)]
pub(crate) struct MetaService {
    pub node: NodeHandle,
    pub members: Arc<Members>,
    pub cluster_id: u64,
    pub token: String,
}

impl MetaService {
    pub(crate) fn into_server(self) -> MembershipServer<Self> {
        MembershipServer::new(self)
    }

    fn check_cluster(&self, cluster_id: u64, any: bool) -> Result<(), Status> {
        if cluster_id == self.cluster_id || (any && cluster_id == 0) {
            Ok(())
        } else {
            Err(Status::failed_precondition(format!(
                "cluster id mismatch: this member is in cluster {:x}, the caller in {cluster_id:x}",
                self.cluster_id
            )))
        }
    }

    async fn propose(&self, cmd: concord_storage::mvcc::types::Command) -> Result<(), Status> {
        self.node
            .propose(cmd)
            .await
            .map(|_| ())
            .map_err(|e| Status::unavailable(format!("not stored: {e}")))
    }
}

/// The version of a metadata answer: a digest of its members and buckets (never 0).
pub(crate) fn metadata_version(members: &[PeerMember], buckets: &[MetaEntry]) -> u64 {
    let mut buf = Vec::new();
    for m in members {
        m.encode_length_delimited(&mut buf).unwrap_or_default();
    }
    for b in buckets {
        b.encode_length_delimited(&mut buf).unwrap_or_default();
    }
    xxhash_rust::xxh3::xxh3_64(&buf).max(1)
}

#[tonic::async_trait]
impl MembershipRpc for MetaService {
    async fn members(
        &self,
        request: Request<MembersRequest>,
    ) -> Result<Response<MembersResponse>, Status> {
        let request = request.into_inner();
        self.check_cluster(request.cluster_id, true)?;
        let cs = self.node.status().conf_state;
        let mut list: Vec<PeerMember> = self
            .members
            .list_for(&cs)
            .into_iter()
            .map(|m| PeerMember {
                id: m.id,
                name: m.name,
                peer_urls: m.peer_ur_ls,
                client_urls: m.client_ur_ls,
                is_learner: m.is_learner,
                ap_only: false,
            })
            .collect();
        list.extend(
            self.members
                .ap_only(&cs)
                .into_iter()
                .map(|(id, r)| PeerMember {
                    id: id.get(),
                    name: r.name,
                    peer_urls: r.peer_urls,
                    client_urls: r.client_urls,
                    is_learner: false,
                    ap_only: true,
                }),
        );
        list.sort_by_key(|m| m.id);
        let entries = self
            .node
            .with_store(|s| s.cluster_meta())
            .map_err(|e| Status::unavailable(format!("cluster metadata unreadable: {e}")))?;
        let buckets: Vec<MetaEntry> = entries
            .into_iter()
            .filter_map(|(k, v)| {
                let key = String::from_utf8(k).ok()?;
                key.starts_with(buckets::PREFIX).then(|| MetaEntry {
                    key,
                    value: v.into(),
                })
            })
            .collect();
        let version = metadata_version(&list, &buckets);
        let unchanged = request.known_version == version;
        Ok(Response::new(MembersResponse {
            cluster_id: self.cluster_id,
            member_id: self.node.id().get(),
            members: if unchanged { Vec::new() } else { list },
            version: env!("CARGO_PKG_VERSION").to_string(),
            buckets: if unchanged { Vec::new() } else { buckets },
            metadata_version: version,
            unchanged,
        }))
    }

    async fn register(
        &self,
        request: Request<RegisterRequest>,
    ) -> Result<Response<RegisterResponse>, Status> {
        let request = request.into_inner();
        self.check_cluster(request.cluster_id, false)?;
        let m = request
            .member
            .ok_or_else(|| Status::invalid_argument("register: no member given"))?;
        if m.peer_urls.is_empty() {
            return Err(Status::invalid_argument("register: no peer URLs given"));
        }
        for url in &m.peer_urls {
            super::config::check_url(url).map_err(Status::invalid_argument)?;
        }
        let id = NodeId(m.id);
        let expected = members::member_id(&m.peer_urls, &self.token);
        if id != expected {
            return Err(Status::invalid_argument(format!(
                "register: member id {id} does not match its peer URLs in this cluster \
                 (expected {expected}; is --initial-cluster-token the same?)"
            )));
        }
        let cs = self.node.status().conf_state;
        if cs
            .voters
            .iter()
            .chain(&cs.voters_outgoing)
            .chain(&cs.learners)
            .chain(&cs.learners_next)
            .any(|v| *v == id)
        {
            return Err(Status::failed_precondition(format!(
                "member {id} is a Raft member; it cannot register as AP-only"
            )));
        }
        let record = MemberRecord {
            name: m.name,
            peer_urls: m.peer_urls,
            client_urls: m.client_urls,
            ap_only: true,
        };
        if self.members.records().get(&id) != Some(&record) {
            self.propose(members::set_command(id, &record)).await?;
            tracing::info!(member = %id, name = %record.name, "AP-only member recorded");
        }
        Ok(Response::new(RegisterResponse {}))
    }

    async fn set_bucket(
        &self,
        request: Request<SetBucketRequest>,
    ) -> Result<Response<SetBucketResponse>, Status> {
        let request = request.into_inner();
        self.check_cluster(request.cluster_id, false)?;
        let bucket = u8::try_from(request.bucket)
            .ok()
            .filter(|b| u32::from(*b) < BUCKETS)
            .ok_or_else(|| {
                Status::invalid_argument(format!("bucket {} does not exist", request.bucket))
            })?;
        let props: BucketProps = serde_json::from_slice(&request.props)
            .map_err(|e| Status::invalid_argument(format!("bucket properties: {e}")))?;
        props.check().map_err(Status::invalid_argument)?;
        self.propose(buckets::set_command(bucket, &props)).await?;
        Ok(Response::new(SetBucketResponse {}))
    }
}
