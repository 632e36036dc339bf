//! What every client-facing service shares: the [`Ctx`] (node, ids, limits), response
//! headers filled as etcd fills them, the mapping of errors to gRPC statuses with etcd's
//! strings, and the conversions between etcd's protobufs and the store's types.

use std::sync::Arc;

use concord_proto::etcdserverpb as pb;
use concord_proto::mvccpb;
use concord_storage::mvcc::types as st;
use tonic::Status;

use super::members::Members;
use crate::error::Etcd;
pub(crate) use crate::error::{request_status, status};
use crate::node::Leases;
use crate::node::NodeHandle;
use concord_raft::NodeId;

/// Everything a service needs; cheap to clone.
#[derive(Clone)]
pub(crate) struct Ctx {
    pub node: NodeHandle,
    pub cluster_id: u64,
    pub member_id: NodeId,
    pub max_txn_ops: usize,
    pub quota_bytes: u64,
    /// `--max-request-bytes`: also the size of a watch response fragment.
    pub max_request_bytes: usize,
    pub leases: Arc<Leases>,
    pub members: Arc<Members>,
    /// The member's metrics registry.
    pub metrics: Arc<crate::metrics::Metrics>,
    /// SWIM gossip: who is alive, with phi per peer.
    pub membership: concord_runtime::membership::Membership,
    /// The AP buckets on this member.
    pub ap: crate::ap::ApNode,
    /// Members' names and roles for the views.
    pub roster: Arc<super::http::Roster>,
    /// Dials other members' client URLs (TLS for `https://`).
    pub dialer: concord_tls::Dialer,
    /// Authentication and permissions.
    pub auth: Arc<crate::auth::AuthStore>,
}

impl Ctx {
    /// A header with the node's current store revision.
    pub fn header(&self) -> pb::ResponseHeader {
        let (term, revision) = self.node.term_and_revision();
        self.header_with(term, revision)
    }

    /// A header for a response at `revision`.
    pub fn header_at(&self, revision: i64) -> pb::ResponseHeader {
        self.header_with(self.node.term_and_revision().0, revision)
    }

    fn header_with(&self, raft_term: u64, revision: i64) -> pb::ResponseHeader {
        pb::ResponseHeader {
            cluster_id: self.cluster_id,
            member_id: self.member_id.get(),
            revision,
            raft_term,
        }
    }
}

impl Ctx {
    /// A connection to the leader's client URL, for requests only the leader can answer
    /// (keep-alives, promotions), which etcd forwards there too.
    pub async fn leader_channel(&self) -> Result<tonic::transport::Channel, Status> {
        // Just after an election the new leader may not have published its client URL
        // yet: wait for it, briefly.
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(3);
        let url = loop {
            let leader = self.node.status().leader;
            if let Some(url) = leader.and_then(|l| self.members.client_url(l)) {
                break url;
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(match leader {
                    None => Etcd::NoLeader.status(),
                    Some(_) => Etcd::LeaderUrlUnknown.status(),
                });
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        };
        let endpoint = tonic::transport::Endpoint::from_shared(url)
            .map_err(|e| Status::internal(e.to_string()))?
            .connect_timeout(std::time::Duration::from_secs(2));
        self.dialer
            .connect(endpoint)
            .await
            .map_err(|e| Status::unavailable(format!("cannot reach the leader: {e}")))
    }
}

/// The caller's auth token (gRPC metadata), passed on when a request is forwarded to
/// the leader so that the leader checks the same caller.
pub(crate) type Token = Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>;

/// The token of `metadata`.
pub(crate) fn token_of(metadata: &tonic::metadata::MetadataMap) -> Token {
    metadata.get(crate::auth::TOKEN_METADATA).cloned()
}

/// `msg` as a request carrying `token`.
pub(crate) fn with_token<T>(msg: T, token: &Token) -> tonic::Request<T> {
    let mut request = tonic::Request::new(msg);
    if let Some(t) = token {
        request
            .metadata_mut()
            .insert(crate::auth::TOKEN_METADATA, t.clone());
    }
    request
}

/// The response stream type of streaming gRPC methods (as generated servers expect).
pub type BoxStream<T> =
    std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<T, Status>> + Send + 'static>>;

pub(crate) fn kv_to_pb(kv: st::KeyValue) -> mvccpb::KeyValue {
    mvccpb::KeyValue {
        key: kv.key,
        create_revision: kv.create_revision,
        mod_revision: kv.mod_revision,
        version: kv.version,
        value: kv.value,
        lease: kv.lease,
    }
}

pub(crate) fn range_from_pb(r: pb::RangeRequest) -> st::RangeRequest {
    use pb::range_request::{SortOrder, SortTarget};
    st::RangeRequest {
        key: r.key,
        range_end: r.range_end,
        limit: r.limit,
        revision: r.revision,
        sort_order: match SortOrder::try_from(r.sort_order) {
            Ok(SortOrder::Ascend) => st::SortOrder::Ascend,
            Ok(SortOrder::Descend) => st::SortOrder::Descend,
            _ => st::SortOrder::None,
        },
        sort_target: match SortTarget::try_from(r.sort_target) {
            Ok(SortTarget::Version) => st::SortTarget::Version,
            Ok(SortTarget::Create) => st::SortTarget::Create,
            Ok(SortTarget::Mod) => st::SortTarget::Mod,
            Ok(SortTarget::Value) => st::SortTarget::Value,
            _ => st::SortTarget::Key,
        },
        keys_only: r.keys_only,
        count_only: r.count_only,
        min_mod_revision: r.min_mod_revision,
        max_mod_revision: r.max_mod_revision,
        min_create_revision: r.min_create_revision,
        max_create_revision: r.max_create_revision,
    }
}

pub(crate) fn range_to_pb(ctx: &Ctx, r: st::RangeResponse) -> pb::RangeResponse {
    pb::RangeResponse {
        header: Some(ctx.header_at(r.revision)),
        kvs: r.kvs.into_iter().map(kv_to_pb).collect(),
        more: r.more,
        count: r.count,
    }
}

pub(crate) fn put_from_pb(p: pb::PutRequest) -> st::PutRequest {
    st::PutRequest {
        key: p.key,
        value: p.value,
        lease: p.lease,
        prev_kv: p.prev_kv,
        ignore_value: p.ignore_value,
        ignore_lease: p.ignore_lease,
    }
}

pub(crate) fn put_to_pb(ctx: &Ctx, p: st::PutResponse) -> pb::PutResponse {
    pb::PutResponse {
        header: Some(ctx.header_at(p.revision)),
        prev_kv: p.prev_kv.map(kv_to_pb),
    }
}

pub(crate) fn delete_from_pb(d: pb::DeleteRangeRequest) -> st::DeleteRangeRequest {
    st::DeleteRangeRequest {
        key: d.key,
        range_end: d.range_end,
        prev_kv: d.prev_kv,
    }
}

pub(crate) fn delete_to_pb(ctx: &Ctx, d: st::DeleteRangeResponse) -> pb::DeleteRangeResponse {
    pb::DeleteRangeResponse {
        header: Some(ctx.header_at(d.revision)),
        deleted: d.deleted,
        prev_kvs: d.prev_kvs.into_iter().map(kv_to_pb).collect(),
    }
}

/// Converts a transaction, counting its operations (nested ones included) against
/// `max_ops` as etcd's `--max-txn-ops` does (per branch, recursively).
pub(crate) fn txn_from_pb(t: pb::TxnRequest, max_ops: usize) -> Result<st::TxnRequest, Status> {
    txn_from_pb_at(t, max_ops, 0)
}

fn txn_from_pb_at(
    t: pb::TxnRequest,
    max_ops: usize,
    depth: usize,
) -> Result<st::TxnRequest, Status> {
    if depth > 64 {
        return Err(Etcd::TxnTooDeep.status());
    }
    if t.compare.len() > max_ops || t.success.len() > max_ops || t.failure.len() > max_ops {
        return Err(Etcd::TooManyTxnOps.status());
    }
    let mut compare = Vec::with_capacity(t.compare.len());
    for c in t.compare {
        compare.push(compare_from_pb(c)?);
    }
    let ops = |v: Vec<pb::RequestOp>| -> Result<Vec<st::RequestOp>, Status> {
        v.into_iter()
            .map(|op| match op.request {
                Some(pb::request_op::Request::RequestRange(r)) => {
                    Ok(st::RequestOp::Range(range_from_pb(r)))
                }
                Some(pb::request_op::Request::RequestPut(p)) => {
                    Ok(st::RequestOp::Put(put_from_pb(p)))
                }
                Some(pb::request_op::Request::RequestDeleteRange(d)) => {
                    Ok(st::RequestOp::DeleteRange(delete_from_pb(d)))
                }
                Some(pb::request_op::Request::RequestTxn(t)) => {
                    Ok(st::RequestOp::Txn(txn_from_pb_at(t, max_ops, depth + 1)?))
                }
                None => Err(Etcd::EmptyRequestOp.status()),
            })
            .collect()
    };
    Ok(st::TxnRequest {
        compare,
        success: ops(t.success)?,
        failure: ops(t.failure)?,
    })
}

fn compare_from_pb(c: pb::Compare) -> Result<st::Compare, Status> {
    use pb::compare::{CompareResult, CompareTarget, TargetUnion};
    let result = match CompareResult::try_from(c.result) {
        Ok(CompareResult::Equal) => st::CompareResult::Equal,
        Ok(CompareResult::Greater) => st::CompareResult::Greater,
        Ok(CompareResult::Less) => st::CompareResult::Less,
        Ok(CompareResult::NotEqual) => st::CompareResult::NotEqual,
        Err(_) => return Err(Etcd::UnknownCompareResult.status_with(c.result)),
    };
    let target = CompareTarget::try_from(c.target)
        .map_err(|_| Etcd::UnknownCompareTarget.status_with(c.target))?;
    // etcd reads the union member that matches the target; a missing one compares with
    // the type's zero value.
    let u = c.target_union;
    let target = match target {
        CompareTarget::Version => st::CompareTarget::Version(match u {
            Some(TargetUnion::Version(v)) => v,
            _ => 0,
        }),
        CompareTarget::Create => st::CompareTarget::Create(match u {
            Some(TargetUnion::CreateRevision(v)) => v,
            _ => 0,
        }),
        CompareTarget::Mod => st::CompareTarget::Mod(match u {
            Some(TargetUnion::ModRevision(v)) => v,
            _ => 0,
        }),
        CompareTarget::Value => st::CompareTarget::Value(match u {
            Some(TargetUnion::Value(v)) => v,
            _ => Vec::new(),
        }),
        CompareTarget::Lease => st::CompareTarget::Lease(match u {
            Some(TargetUnion::Lease(v)) => v,
            _ => 0,
        }),
    };
    Ok(st::Compare {
        result,
        target,
        key: c.key,
        range_end: c.range_end,
    })
}

pub(crate) fn txn_to_pb(ctx: &Ctx, t: st::TxnResponse) -> pb::TxnResponse {
    let mut out = txn_to_pb_inner(t);
    out.header = Some(ctx.header_at(out.header.map_or(0, |h| h.revision)));
    out
}

/// A response inside a transaction: as etcd, its header carries only the revision.
fn inner_header(revision: i64) -> Option<pb::ResponseHeader> {
    Some(pb::ResponseHeader {
        revision,
        ..pb::ResponseHeader::default()
    })
}

fn txn_to_pb_inner(t: st::TxnResponse) -> pb::TxnResponse {
    use pb::response_op::Response as R;
    pb::TxnResponse {
        header: inner_header(t.revision),
        succeeded: t.succeeded,
        responses: t
            .responses
            .into_iter()
            .map(|r| pb::ResponseOp {
                response: Some(match r {
                    st::ResponseOp::Range(r) => R::ResponseRange(pb::RangeResponse {
                        header: inner_header(r.revision),
                        kvs: r.kvs.into_iter().map(kv_to_pb).collect(),
                        more: r.more,
                        count: r.count,
                    }),
                    st::ResponseOp::Put(p) => R::ResponsePut(pb::PutResponse {
                        header: inner_header(p.revision),
                        prev_kv: p.prev_kv.map(kv_to_pb),
                    }),
                    st::ResponseOp::DeleteRange(d) => {
                        R::ResponseDeleteRange(pb::DeleteRangeResponse {
                            header: inner_header(d.revision),
                            deleted: d.deleted,
                            prev_kvs: d.prev_kvs.into_iter().map(kv_to_pb).collect(),
                        })
                    }
                    st::ResponseOp::Txn(t) => R::ResponseTxn(txn_to_pb_inner(t)),
                }),
            })
            .collect(),
    }
}

pub(crate) fn event_to_pb(e: st::Event) -> mvccpb::Event {
    mvccpb::Event {
        r#type: match e.kind {
            st::EventKind::Put => mvccpb::event::EventType::Put as i32,
            st::EventKind::Delete => mvccpb::event::EventType::Delete as i32,
        },
        kv: Some(kv_to_pb(e.kv)),
        prev_kv: e.prev_kv.map(kv_to_pb),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn txn_limits_are_enforced() {
        let op = pb::RequestOp {
            request: Some(pb::request_op::Request::RequestPut(pb::PutRequest {
                key: b"k".to_vec(),
                ..Default::default()
            })),
        };
        let t = pb::TxnRequest {
            success: vec![op.clone(), op.clone(), op],
            ..Default::default()
        };
        assert!(txn_from_pb(t.clone(), 3).is_ok());
        let e = txn_from_pb(t, 2).unwrap_err();
        assert!(e.message().contains("too many operations"));
        let bad = pb::TxnRequest {
            success: vec![pb::RequestOp { request: None }],
            ..Default::default()
        };
        assert_eq!(
            txn_from_pb(bad, 8).unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
    }
}
