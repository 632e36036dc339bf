//! Tests of the wire contract.
//!
//! The expectations below were typed from etcd's own `.proto` files (`api/etcdserverpb/rpc.proto`,
//! `api/mvccpb/kv.proto`, `api/authpb/auth.proto`, `v3electionpb/v3election.proto`,
//! `v3lockpb/v3lock.proto`), independently of this crate's files, and are checked against the
//! descriptor set the build embeds, i.e. against what was actually compiled.

use std::collections::{BTreeMap, BTreeSet};

use prost::Message;
use prost_types::field_descriptor_proto::{Label, Type};
use prost_types::{DescriptorProto, FileDescriptorSet};

use crate::etcdserverpb;

/// A compiled method: `(name, input type, output type, client streaming, server streaming)`.
type CompiledMethod = (String, String, String, bool, bool);

/// Every message and enum of the embedded descriptor set, by full name (`etcdserverpb.Member`).
struct Schema {
    messages: BTreeMap<String, DescriptorProto>,
    enums: BTreeMap<String, Vec<(String, i32)>>,
    /// Services by full name, each with its methods in declaration order.
    services: BTreeMap<String, Vec<CompiledMethod>>,
}

impl Schema {
    fn load() -> Self {
        let set = FileDescriptorSet::decode(crate::FILE_DESCRIPTOR_SET)
            .expect("the embedded descriptor set decodes");
        let mut schema = Schema {
            messages: BTreeMap::new(),
            enums: BTreeMap::new(),
            services: BTreeMap::new(),
        };
        for file in &set.file {
            let package = file.package();
            for message in &file.message_type {
                schema.add_message(package, message);
            }
            for en in &file.enum_type {
                schema.add_enum(package, en);
            }
            for service in &file.service {
                let methods = service
                    .method
                    .iter()
                    .map(|m| {
                        (
                            m.name().to_owned(),
                            m.input_type().to_owned(),
                            m.output_type().to_owned(),
                            m.client_streaming(),
                            m.server_streaming(),
                        )
                    })
                    .collect();
                let previous = schema
                    .services
                    .insert(format!("{package}.{}", service.name()), methods);
                assert!(
                    previous.is_none(),
                    "service {} defined twice",
                    service.name()
                );
            }
        }
        schema
    }

    fn add_message(&mut self, scope: &str, message: &DescriptorProto) {
        let name = format!("{scope}.{}", message.name());
        for nested in &message.nested_type {
            self.add_message(&name, nested);
        }
        for en in &message.enum_type {
            self.add_enum(&name, en);
        }
        let previous = self.messages.insert(name.clone(), message.clone());
        assert!(previous.is_none(), "message {name} defined twice");
    }

    fn add_enum(&mut self, scope: &str, en: &prost_types::EnumDescriptorProto) {
        let name = format!("{scope}.{}", en.name());
        let values = en
            .value
            .iter()
            .map(|v| (v.name().to_owned(), v.number()))
            .collect();
        let previous = self.enums.insert(name.clone(), values);
        assert!(previous.is_none(), "enum {name} defined twice");
    }

    /// The fields of a message in the notation of [`MESSAGES`], sorted by number.
    fn fields(&self, message: &str) -> Vec<String> {
        let descriptor = self
            .messages
            .get(message)
            .unwrap_or_else(|| panic!("message {message} is missing"));
        let mut fields: Vec<_> = descriptor
            .field
            .iter()
            .map(|f| {
                assert!(
                    !f.proto3_optional(),
                    "{message}.{} must not be proto3 optional",
                    f.name()
                );
                let ty = match f.r#type() {
                    Type::Message | Type::Enum => f.type_name().to_owned(),
                    scalar => scalar
                        .as_str_name()
                        .trim_start_matches("TYPE_")
                        .to_lowercase(),
                };
                let repeated = if f.label() == Label::Repeated {
                    "*"
                } else {
                    ""
                };
                let oneof = match f.oneof_index {
                    Some(i) => {
                        let index = usize::try_from(i).expect("oneof index is small");
                        format!("@{}", descriptor.oneof_decl[index].name())
                    }
                    None => String::new(),
                };
                (
                    f.number(),
                    format!("{}={}:{repeated}{ty}{oneof}", f.name(), f.number()),
                )
            })
            .collect();
        fields.sort();
        fields.into_iter().map(|(_, text)| text).collect()
    }
}

const H: &str = "header=1:.etcdserverpb.ResponseHeader";

/// Every message of etcd's packages with all its fields: `name=number:type`, where a `*` before
/// the type marks a repeated field and `@name` after it the oneof the field belongs to.
/// Message and enum types are written with their full name. Typed from etcd's files.
const MESSAGES: &[(&str, &[&str])] = &[
    // mvccpb
    (
        "mvccpb.KeyValue",
        &[
            "key=1:bytes",
            "create_revision=2:int64",
            "mod_revision=3:int64",
            "version=4:int64",
            "value=5:bytes",
            "lease=6:int64",
        ],
    ),
    (
        "mvccpb.Event",
        &[
            "type=1:.mvccpb.Event.EventType",
            "kv=2:.mvccpb.KeyValue",
            "prev_kv=3:.mvccpb.KeyValue",
        ],
    ),
    // authpb
    ("authpb.UserAddOptions", &["no_password=1:bool"]),
    (
        "authpb.User",
        &[
            "name=1:bytes",
            "password=2:bytes",
            "roles=3:*string",
            "options=4:.authpb.UserAddOptions",
        ],
    ),
    (
        "authpb.Permission",
        &[
            "permType=1:.authpb.Permission.Type",
            "key=2:bytes",
            "range_end=3:bytes",
        ],
    ),
    (
        "authpb.Role",
        &["name=1:bytes", "keyPermission=2:*.authpb.Permission"],
    ),
    // etcdserverpb: KV
    (
        "etcdserverpb.ResponseHeader",
        &[
            "cluster_id=1:uint64",
            "member_id=2:uint64",
            "revision=3:int64",
            "raft_term=4:uint64",
        ],
    ),
    (
        "etcdserverpb.RangeRequest",
        &[
            "key=1:bytes",
            "range_end=2:bytes",
            "limit=3:int64",
            "revision=4:int64",
            "sort_order=5:.etcdserverpb.RangeRequest.SortOrder",
            "sort_target=6:.etcdserverpb.RangeRequest.SortTarget",
            "serializable=7:bool",
            "keys_only=8:bool",
            "count_only=9:bool",
            "min_mod_revision=10:int64",
            "max_mod_revision=11:int64",
            "min_create_revision=12:int64",
            "max_create_revision=13:int64",
        ],
    ),
    (
        "etcdserverpb.RangeResponse",
        &[H, "kvs=2:*.mvccpb.KeyValue", "more=3:bool", "count=4:int64"],
    ),
    (
        "etcdserverpb.PutRequest",
        &[
            "key=1:bytes",
            "value=2:bytes",
            "lease=3:int64",
            "prev_kv=4:bool",
            "ignore_value=5:bool",
            "ignore_lease=6:bool",
        ],
    ),
    (
        "etcdserverpb.PutResponse",
        &[H, "prev_kv=2:.mvccpb.KeyValue"],
    ),
    (
        "etcdserverpb.DeleteRangeRequest",
        &["key=1:bytes", "range_end=2:bytes", "prev_kv=3:bool"],
    ),
    (
        "etcdserverpb.DeleteRangeResponse",
        &[H, "deleted=2:int64", "prev_kvs=3:*.mvccpb.KeyValue"],
    ),
    (
        "etcdserverpb.RequestOp",
        &[
            "request_range=1:.etcdserverpb.RangeRequest@request",
            "request_put=2:.etcdserverpb.PutRequest@request",
            "request_delete_range=3:.etcdserverpb.DeleteRangeRequest@request",
            "request_txn=4:.etcdserverpb.TxnRequest@request",
        ],
    ),
    (
        "etcdserverpb.ResponseOp",
        &[
            "response_range=1:.etcdserverpb.RangeResponse@response",
            "response_put=2:.etcdserverpb.PutResponse@response",
            "response_delete_range=3:.etcdserverpb.DeleteRangeResponse@response",
            "response_txn=4:.etcdserverpb.TxnResponse@response",
        ],
    ),
    (
        "etcdserverpb.Compare",
        &[
            "result=1:.etcdserverpb.Compare.CompareResult",
            "target=2:.etcdserverpb.Compare.CompareTarget",
            "key=3:bytes",
            "version=4:int64@target_union",
            "create_revision=5:int64@target_union",
            "mod_revision=6:int64@target_union",
            "value=7:bytes@target_union",
            "lease=8:int64@target_union",
            "range_end=64:bytes",
        ],
    ),
    (
        "etcdserverpb.TxnRequest",
        &[
            "compare=1:*.etcdserverpb.Compare",
            "success=2:*.etcdserverpb.RequestOp",
            "failure=3:*.etcdserverpb.RequestOp",
        ],
    ),
    (
        "etcdserverpb.TxnResponse",
        &[
            H,
            "succeeded=2:bool",
            "responses=3:*.etcdserverpb.ResponseOp",
        ],
    ),
    (
        "etcdserverpb.CompactionRequest",
        &["revision=1:int64", "physical=2:bool"],
    ),
    ("etcdserverpb.CompactionResponse", &[H]),
    // etcdserverpb: Maintenance hashes and snapshot
    ("etcdserverpb.HashRequest", &[]),
    ("etcdserverpb.HashKVRequest", &["revision=1:int64"]),
    (
        "etcdserverpb.HashKVResponse",
        &[
            H,
            "hash=2:uint32",
            "compact_revision=3:int64",
            "hash_revision=4:int64",
        ],
    ),
    ("etcdserverpb.HashResponse", &[H, "hash=2:uint32"]),
    ("etcdserverpb.SnapshotRequest", &[]),
    (
        "etcdserverpb.SnapshotResponse",
        &[
            H,
            "remaining_bytes=2:uint64",
            "blob=3:bytes",
            "version=4:string",
        ],
    ),
    // etcdserverpb: Watch
    (
        "etcdserverpb.WatchRequest",
        &[
            "create_request=1:.etcdserverpb.WatchCreateRequest@request_union",
            "cancel_request=2:.etcdserverpb.WatchCancelRequest@request_union",
            "progress_request=3:.etcdserverpb.WatchProgressRequest@request_union",
        ],
    ),
    (
        "etcdserverpb.WatchCreateRequest",
        &[
            "key=1:bytes",
            "range_end=2:bytes",
            "start_revision=3:int64",
            "progress_notify=4:bool",
            "filters=5:*.etcdserverpb.WatchCreateRequest.FilterType",
            "prev_kv=6:bool",
            "watch_id=7:int64",
            "fragment=8:bool",
        ],
    ),
    ("etcdserverpb.WatchCancelRequest", &["watch_id=1:int64"]),
    ("etcdserverpb.WatchProgressRequest", &[]),
    (
        "etcdserverpb.WatchResponse",
        &[
            H,
            "watch_id=2:int64",
            "created=3:bool",
            "canceled=4:bool",
            "compact_revision=5:int64",
            "cancel_reason=6:string",
            "fragment=7:bool",
            "events=11:*.mvccpb.Event",
        ],
    ),
    // etcdserverpb: Lease
    (
        "etcdserverpb.LeaseGrantRequest",
        &["TTL=1:int64", "ID=2:int64"],
    ),
    (
        "etcdserverpb.LeaseGrantResponse",
        &[H, "ID=2:int64", "TTL=3:int64", "error=4:string"],
    ),
    ("etcdserverpb.LeaseRevokeRequest", &["ID=1:int64"]),
    ("etcdserverpb.LeaseRevokeResponse", &[H]),
    (
        "etcdserverpb.LeaseCheckpoint",
        &["ID=1:int64", "remaining_TTL=2:int64"],
    ),
    (
        "etcdserverpb.LeaseCheckpointRequest",
        &["checkpoints=1:*.etcdserverpb.LeaseCheckpoint"],
    ),
    ("etcdserverpb.LeaseCheckpointResponse", &[H]),
    ("etcdserverpb.LeaseKeepAliveRequest", &["ID=1:int64"]),
    (
        "etcdserverpb.LeaseKeepAliveResponse",
        &[H, "ID=2:int64", "TTL=3:int64"],
    ),
    (
        "etcdserverpb.LeaseTimeToLiveRequest",
        &["ID=1:int64", "keys=2:bool"],
    ),
    (
        "etcdserverpb.LeaseTimeToLiveResponse",
        &[
            H,
            "ID=2:int64",
            "TTL=3:int64",
            "grantedTTL=4:int64",
            "keys=5:*bytes",
        ],
    ),
    ("etcdserverpb.LeaseLeasesRequest", &[]),
    ("etcdserverpb.LeaseStatus", &["ID=1:int64"]),
    (
        "etcdserverpb.LeaseLeasesResponse",
        &[H, "leases=2:*.etcdserverpb.LeaseStatus"],
    ),
    // etcdserverpb: Cluster
    (
        "etcdserverpb.Member",
        &[
            "ID=1:uint64",
            "name=2:string",
            "peerURLs=3:*string",
            "clientURLs=4:*string",
            "isLearner=5:bool",
        ],
    ),
    (
        "etcdserverpb.MemberAddRequest",
        &["peerURLs=1:*string", "isLearner=2:bool"],
    ),
    (
        "etcdserverpb.MemberAddResponse",
        &[
            H,
            "member=2:.etcdserverpb.Member",
            "members=3:*.etcdserverpb.Member",
        ],
    ),
    ("etcdserverpb.MemberRemoveRequest", &["ID=1:uint64"]),
    (
        "etcdserverpb.MemberRemoveResponse",
        &[H, "members=2:*.etcdserverpb.Member"],
    ),
    (
        "etcdserverpb.MemberUpdateRequest",
        &["ID=1:uint64", "peerURLs=2:*string"],
    ),
    (
        "etcdserverpb.MemberUpdateResponse",
        &[H, "members=2:*.etcdserverpb.Member"],
    ),
    ("etcdserverpb.MemberListRequest", &["linearizable=1:bool"]),
    (
        "etcdserverpb.MemberListResponse",
        &[H, "members=2:*.etcdserverpb.Member"],
    ),
    ("etcdserverpb.MemberPromoteRequest", &["ID=1:uint64"]),
    (
        "etcdserverpb.MemberPromoteResponse",
        &[H, "members=2:*.etcdserverpb.Member"],
    ),
    // etcdserverpb: Maintenance
    ("etcdserverpb.DefragmentRequest", &[]),
    ("etcdserverpb.DefragmentResponse", &[H]),
    ("etcdserverpb.MoveLeaderRequest", &["targetID=1:uint64"]),
    ("etcdserverpb.MoveLeaderResponse", &[H]),
    (
        "etcdserverpb.AlarmRequest",
        &[
            "action=1:.etcdserverpb.AlarmRequest.AlarmAction",
            "memberID=2:uint64",
            "alarm=3:.etcdserverpb.AlarmType",
        ],
    ),
    (
        "etcdserverpb.AlarmMember",
        &["memberID=1:uint64", "alarm=2:.etcdserverpb.AlarmType"],
    ),
    (
        "etcdserverpb.AlarmResponse",
        &[H, "alarms=2:*.etcdserverpb.AlarmMember"],
    ),
    (
        "etcdserverpb.DowngradeRequest",
        &[
            "action=1:.etcdserverpb.DowngradeRequest.DowngradeAction",
            "version=2:string",
        ],
    ),
    ("etcdserverpb.DowngradeResponse", &[H, "version=2:string"]),
    (
        "etcdserverpb.DowngradeInfo",
        &["enabled=1:bool", "targetVersion=2:string"],
    ),
    ("etcdserverpb.StatusRequest", &[]),
    (
        "etcdserverpb.StatusResponse",
        &[
            H,
            "version=2:string",
            "dbSize=3:int64",
            "leader=4:uint64",
            "raftIndex=5:uint64",
            "raftTerm=6:uint64",
            "raftAppliedIndex=7:uint64",
            "errors=8:*string",
            "dbSizeInUse=9:int64",
            "isLearner=10:bool",
            "storageVersion=11:string",
            "dbSizeQuota=12:int64",
            "downgradeInfo=13:.etcdserverpb.DowngradeInfo",
        ],
    ),
    // etcdserverpb: Auth
    ("etcdserverpb.AuthEnableRequest", &[]),
    ("etcdserverpb.AuthDisableRequest", &[]),
    ("etcdserverpb.AuthStatusRequest", &[]),
    (
        "etcdserverpb.AuthenticateRequest",
        &["name=1:string", "password=2:string"],
    ),
    (
        "etcdserverpb.AuthUserAddRequest",
        &[
            "name=1:string",
            "password=2:string",
            "options=3:.authpb.UserAddOptions",
            "hashedPassword=4:string",
        ],
    ),
    ("etcdserverpb.AuthUserGetRequest", &["name=1:string"]),
    ("etcdserverpb.AuthUserDeleteRequest", &["name=1:string"]),
    (
        "etcdserverpb.AuthUserChangePasswordRequest",
        &[
            "name=1:string",
            "password=2:string",
            "hashedPassword=3:string",
        ],
    ),
    (
        "etcdserverpb.AuthUserGrantRoleRequest",
        &["user=1:string", "role=2:string"],
    ),
    (
        "etcdserverpb.AuthUserRevokeRoleRequest",
        &["name=1:string", "role=2:string"],
    ),
    ("etcdserverpb.AuthRoleAddRequest", &["name=1:string"]),
    ("etcdserverpb.AuthRoleGetRequest", &["role=1:string"]),
    ("etcdserverpb.AuthUserListRequest", &[]),
    ("etcdserverpb.AuthRoleListRequest", &[]),
    ("etcdserverpb.AuthRoleDeleteRequest", &["role=1:string"]),
    (
        "etcdserverpb.AuthRoleGrantPermissionRequest",
        &["name=1:string", "perm=2:.authpb.Permission"],
    ),
    (
        "etcdserverpb.AuthRoleRevokePermissionRequest",
        &["role=1:string", "key=2:bytes", "range_end=3:bytes"],
    ),
    ("etcdserverpb.AuthEnableResponse", &[H]),
    ("etcdserverpb.AuthDisableResponse", &[H]),
    (
        "etcdserverpb.AuthStatusResponse",
        &[H, "enabled=2:bool", "authRevision=3:uint64"],
    ),
    ("etcdserverpb.AuthenticateResponse", &[H, "token=2:string"]),
    ("etcdserverpb.AuthUserAddResponse", &[H]),
    ("etcdserverpb.AuthUserGetResponse", &[H, "roles=2:*string"]),
    ("etcdserverpb.AuthUserDeleteResponse", &[H]),
    ("etcdserverpb.AuthUserChangePasswordResponse", &[H]),
    ("etcdserverpb.AuthUserGrantRoleResponse", &[H]),
    ("etcdserverpb.AuthUserRevokeRoleResponse", &[H]),
    ("etcdserverpb.AuthRoleAddResponse", &[H]),
    (
        "etcdserverpb.AuthRoleGetResponse",
        &[H, "perm=2:*.authpb.Permission"],
    ),
    ("etcdserverpb.AuthRoleListResponse", &[H, "roles=2:*string"]),
    ("etcdserverpb.AuthUserListResponse", &[H, "users=2:*string"]),
    ("etcdserverpb.AuthRoleDeleteResponse", &[H]),
    ("etcdserverpb.AuthRoleGrantPermissionResponse", &[H]),
    ("etcdserverpb.AuthRoleRevokePermissionResponse", &[H]),
    // v3electionpb
    (
        "v3electionpb.CampaignRequest",
        &["name=1:bytes", "lease=2:int64", "value=3:bytes"],
    ),
    (
        "v3electionpb.CampaignResponse",
        &[H, "leader=2:.v3electionpb.LeaderKey"],
    ),
    (
        "v3electionpb.LeaderKey",
        &[
            "name=1:bytes",
            "key=2:bytes",
            "rev=3:int64",
            "lease=4:int64",
        ],
    ),
    ("v3electionpb.LeaderRequest", &["name=1:bytes"]),
    ("v3electionpb.LeaderResponse", &[H, "kv=2:.mvccpb.KeyValue"]),
    (
        "v3electionpb.ResignRequest",
        &["leader=1:.v3electionpb.LeaderKey"],
    ),
    ("v3electionpb.ResignResponse", &[H]),
    (
        "v3electionpb.ProclaimRequest",
        &["leader=1:.v3electionpb.LeaderKey", "value=2:bytes"],
    ),
    ("v3electionpb.ProclaimResponse", &[H]),
    // v3lockpb
    ("v3lockpb.LockRequest", &["name=1:bytes", "lease=2:int64"]),
    ("v3lockpb.LockResponse", &[H, "key=2:bytes"]),
    ("v3lockpb.UnlockRequest", &["key=1:bytes"]),
    ("v3lockpb.UnlockResponse", &[H]),
];

/// Concord's own peer protocol: not etcd's, but pinned here so that a renumbering is a
/// deliberate, visible change.
const PEER_MESSAGES: &[(&str, &[&str])] = &[
    (
        "concord.peer.v1.RaftBatch",
        &[
            "cluster_id=1:uint64",
            "from=2:uint64",
            "to=3:uint64",
            "seq=4:uint64",
            "messages=5:*bytes",
            "version=6:uint32",
            "group_id=7:uint64",
            "probe=8:bool",
            "traces=9:*.concord.peer.v1.EntryTrace",
        ],
    ),
    (
        "concord.peer.v1.EntryTrace",
        &[
            "origin=1:uint64",
            "incarnation=2:uint64",
            "seq=3:uint64",
            "traceparent=4:string",
        ],
    ),
    ("concord.peer.v1.RaftAck", &["seq=1:uint64"]),
    (
        "concord.peer.v1.SnapshotMeta",
        &[
            "cluster_id=1:uint64",
            "from=2:uint64",
            "to=3:uint64",
            "index=4:uint64",
            "term=5:uint64",
            "size=6:uint64",
            "message=7:bytes",
            "version=8:uint32",
            "group_id=9:uint64",
        ],
    ),
    (
        "concord.peer.v1.SnapshotChunk",
        &[
            "meta=1:.concord.peer.v1.SnapshotMeta",
            "offset=2:uint64",
            "data=3:bytes",
            "crc32c=4:uint32",
            "last=5:bool",
        ],
    ),
    (
        "concord.peer.v1.SnapshotAck",
        &["index=1:uint64", "bytes_received=2:uint64"],
    ),
    (
        "concord.peer.v1.MembersRequest",
        &["cluster_id=1:uint64", "known_version=2:uint64"],
    ),
    (
        "concord.peer.v1.PeerMember",
        &[
            "id=1:uint64",
            "name=2:string",
            "peer_urls=3:*string",
            "client_urls=4:*string",
            "is_learner=5:bool",
            "ap_only=6:bool",
        ],
    ),
    (
        "concord.peer.v1.MembersResponse",
        &[
            "cluster_id=1:uint64",
            "member_id=2:uint64",
            "members=3:*.concord.peer.v1.PeerMember",
            "version=4:string",
            "buckets=5:*.concord.peer.v1.MetaEntry",
            "metadata_version=6:uint64",
            "unchanged=7:bool",
        ],
    ),
    (
        "concord.peer.v1.MetaEntry",
        &["key=1:string", "value=2:bytes"],
    ),
    (
        "concord.peer.v1.RegisterRequest",
        &[
            "cluster_id=1:uint64",
            "member=2:.concord.peer.v1.PeerMember",
        ],
    ),
    ("concord.peer.v1.RegisterResponse", &[]),
    (
        "concord.peer.v1.SetBucketRequest",
        &["cluster_id=1:uint64", "bucket=2:uint32", "props=3:bytes"],
    ),
    ("concord.peer.v1.SetBucketResponse", &[]),
    (
        "concord.peer.v1.SwimUpdate",
        &[
            "id=1:uint64",
            "generation=2:uint64",
            "incarnation=3:uint64",
            "state=4:.concord.peer.v1.SwimState",
            "meta=5:uint64",
            "by=6:uint64",
        ],
    ),
    ("concord.peer.v1.SwimPing", &["seq=1:uint64"]),
    (
        "concord.peer.v1.SwimPingReq",
        &["seq=1:uint64", "target=2:uint64"],
    ),
    ("concord.peer.v1.SwimAck", &["seq=1:uint64"]),
    (
        "concord.peer.v1.SwimSync",
        &["members=1:*.concord.peer.v1.SwimUpdate", "reply=2:bool"],
    ),
    (
        "concord.peer.v1.GossipPacket",
        &[
            "cluster_id=1:uint64",
            "to=2:uint64",
            "sender=3:.concord.peer.v1.SwimUpdate",
            "updates=4:*.concord.peer.v1.SwimUpdate",
            "ping=5:.concord.peer.v1.SwimPing@message",
            "ping_req=6:.concord.peer.v1.SwimPingReq@message",
            "ack=7:.concord.peer.v1.SwimAck@message",
            "sync=8:.concord.peer.v1.SwimSync@message",
        ],
    ),
    ("concord.peer.v1.GossipAck", &[]),
    (
        "concord.peer.v1.ApSet",
        &["value=1:bytes", "expiry=2:uint32", "expire_at_ms=3:uint64"],
    ),
    ("concord.peer.v1.ApDel", &[]),
    ("concord.peer.v1.ApIncr", &["delta=1:sint64"]),
    ("concord.peer.v1.ApMembers", &["members=1:*bytes"]),
    (
        "concord.peer.v1.ApHashSet",
        &["fields=1:*bytes", "values=2:*bytes", "nx=3:bool"],
    ),
    (
        "concord.peer.v1.ApHashIncr",
        &["field=1:bytes", "delta=2:sint64"],
    ),
    (
        "concord.peer.v1.ApSiblingPut",
        &["context=1:bytes", "value=2:bytes", "delete=3:bool"],
    ),
    (
        "concord.peer.v1.ApExpire",
        &["persist=1:bool", "at_ms=2:uint64"],
    ),
    (
        "concord.peer.v1.ReplicaApply",
        &[
            "cluster_id=1:uint64",
            "bucket=2:uint32",
            "key=3:bytes",
            "set=4:.concord.peer.v1.ApSet@op",
            "del=5:.concord.peer.v1.ApDel@op",
            "incr=6:.concord.peer.v1.ApIncr@op",
            "expire=7:.concord.peer.v1.ApExpire@op",
            "base=8:bytes",
            "sadd=9:.concord.peer.v1.ApMembers@op",
            "srem=10:.concord.peer.v1.ApMembers@op",
            "set_store=11:.concord.peer.v1.ApMembers@op",
            "hset=12:.concord.peer.v1.ApHashSet@op",
            "hdel=13:.concord.peer.v1.ApMembers@op",
            "hincrby=14:.concord.peer.v1.ApHashIncr@op",
            "sibling_put=15:.concord.peer.v1.ApSiblingPut@op",
            "not_after_ms=20:uint64",
            "traceparent=21:string",
        ],
    ),
    (
        "concord.peer.v1.ReplicaState",
        &[
            "state=1:bytes",
            "integer=2:sint64",
            "error=3:string",
            "failure=4:string",
        ],
    ),
    (
        "concord.peer.v1.ReplicaApplyBatch",
        &[
            "cluster_id=1:uint64",
            "applies=2:*.concord.peer.v1.ReplicaApply",
        ],
    ),
    (
        "concord.peer.v1.ReplicaReadBatch",
        &[
            "cluster_id=1:uint64",
            "reads=2:*.concord.peer.v1.ReplicaRead",
        ],
    ),
    (
        "concord.peer.v1.ReplicaStates",
        &["states=1:*.concord.peer.v1.ReplicaState"],
    ),
    (
        "concord.peer.v1.ReplicaCall",
        &[
            "id=1:uint64",
            "applies=2:.concord.peer.v1.ReplicaApplyBatch@call",
            "merges=3:.concord.peer.v1.ReplicaMergeBatch@call",
            "reads=4:.concord.peer.v1.ReplicaReadBatch@call",
        ],
    ),
    (
        "concord.peer.v1.ReplicaAnswer",
        &[
            "id=1:uint64",
            "states=2:.concord.peer.v1.ReplicaStates@answer",
            "merged=3:.concord.peer.v1.ReplicaMergeBatchAck@answer",
            "failure=4:string@answer",
        ],
    ),
    (
        "concord.peer.v1.ReplicaMergeBatch",
        &[
            "cluster_id=1:uint64",
            "merges=2:*.concord.peer.v1.ReplicaMerge",
        ],
    ),
    (
        "concord.peer.v1.ReplicaMergeBatchAck",
        &["errors=1:*string", "states=2:*bytes"],
    ),
    (
        "concord.peer.v1.ReplicaScan",
        &[
            "cluster_id=1:uint64",
            "bucket=2:uint32",
            "after=3:bytes",
            "limit=4:uint32",
            "has_after=5:bool",
            "from_position=6:uint64",
            "by_position=7:bool",
        ],
    ),
    (
        "concord.peer.v1.ReplicaKey",
        &["key=1:bytes", "state=2:bytes"],
    ),
    (
        "concord.peer.v1.ReplicaKeys",
        &[
            "keys=1:*.concord.peer.v1.ReplicaKey",
            "done=2:bool",
            "digest=3:bytes",
            "by_position=4:bool",
        ],
    ),
    (
        "concord.peer.v1.ReplicaTree",
        &["cluster_id=1:uint64", "bucket=2:uint32", "root=3:bytes"],
    ),
    (
        "concord.peer.v1.ReplicaTreeLeaves",
        &["same=1:bool", "leaves=2:bytes"],
    ),
    (
        "concord.peer.v1.ReplicaLeaf",
        &[
            "cluster_id=1:uint64",
            "bucket=2:uint32",
            "leaf=3:uint32",
            "spans=4:*.concord.peer.v1.ReplicaSpan",
            "digest_only=5:bool",
        ],
    ),
    (
        "concord.peer.v1.ReplicaSpan",
        &["lo=1:uint64", "hi=2:uint64"],
    ),
    (
        "concord.peer.v1.ReplicaReap",
        &[
            "cluster_id=1:uint64",
            "bucket=2:uint32",
            "key=3:bytes",
            "state=4:bytes",
        ],
    ),
    ("concord.peer.v1.ReplicaReapAck", &["removed=1:bool"]),
    (
        "concord.peer.v1.PaxosBallot",
        &["time=1:uint64", "node=2:uint64"],
    ),
    (
        "concord.peer.v1.ReplicaPaxos",
        &[
            "cluster_id=1:uint64",
            "bucket=2:uint32",
            "key=3:bytes",
            "phase=4:uint32",
            "ballot=5:.concord.peer.v1.PaxosBallot",
            "value=6:bytes",
        ],
    ),
    (
        "concord.peer.v1.ReplicaPaxosReply",
        &[
            "kind=1:uint32",
            "promised=2:.concord.peer.v1.PaxosBallot",
            "in_progress_ballot=3:.concord.peer.v1.PaxosBallot",
            "in_progress_value=4:bytes",
            "committed=5:.concord.peer.v1.PaxosBallot",
            "value=6:bytes",
        ],
    ),
    (
        "concord.peer.v1.ReplicaMerge",
        &[
            "cluster_id=1:uint64",
            "bucket=2:uint32",
            "key=3:bytes",
            "state=4:bytes",
            "hint_for=5:uint64",
            "traceparent=6:string",
            "want_state=7:bool",
        ],
    ),
    ("concord.peer.v1.ReplicaMergeAck", &[]),
    (
        "concord.peer.v1.ReplicaRead",
        &["cluster_id=1:uint64", "bucket=2:uint32", "key=3:bytes"],
    ),
];

/// Every enum of etcd's packages with its values, typed from etcd's files.
const ENUMS: &[(&str, &[(&str, i32)])] = &[
    ("mvccpb.Event.EventType", &[("PUT", 0), ("DELETE", 1)]),
    (
        "concord.peer.v1.SwimState",
        &[
            ("SWIM_STATE_ALIVE", 0),
            ("SWIM_STATE_SUSPECT", 1),
            ("SWIM_STATE_DEAD", 2),
            ("SWIM_STATE_LEFT", 3),
        ],
    ),
    (
        "authpb.Permission.Type",
        &[("READ", 0), ("WRITE", 1), ("READWRITE", 2)],
    ),
    (
        "etcdserverpb.RangeRequest.SortOrder",
        &[("NONE", 0), ("ASCEND", 1), ("DESCEND", 2)],
    ),
    (
        "etcdserverpb.RangeRequest.SortTarget",
        &[
            ("KEY", 0),
            ("VERSION", 1),
            ("CREATE", 2),
            ("MOD", 3),
            ("VALUE", 4),
        ],
    ),
    (
        "etcdserverpb.Compare.CompareResult",
        &[("EQUAL", 0), ("GREATER", 1), ("LESS", 2), ("NOT_EQUAL", 3)],
    ),
    (
        "etcdserverpb.Compare.CompareTarget",
        &[
            ("VERSION", 0),
            ("CREATE", 1),
            ("MOD", 2),
            ("VALUE", 3),
            ("LEASE", 4),
        ],
    ),
    (
        "etcdserverpb.WatchCreateRequest.FilterType",
        &[("NOPUT", 0), ("NODELETE", 1)],
    ),
    (
        "etcdserverpb.AlarmType",
        &[("NONE", 0), ("NOSPACE", 1), ("CORRUPT", 2)],
    ),
    (
        "etcdserverpb.AlarmRequest.AlarmAction",
        &[("GET", 0), ("ACTIVATE", 1), ("DEACTIVATE", 2)],
    ),
    (
        "etcdserverpb.DowngradeRequest.DowngradeAction",
        &[("VALIDATE", 0), ("ENABLE", 1), ("CANCEL", 2)],
    ),
];

/// `(method, input, output, client streaming, server streaming)`, types relative to the
/// service's package.
type Method = (&'static str, &'static str, &'static str, bool, bool);

/// Every service with its full method list, typed from etcd's files (and Concord's peer file).
const SERVICES: &[(&str, &[Method])] = &[
    (
        "etcdserverpb.KV",
        &[
            ("Range", "RangeRequest", "RangeResponse", false, false),
            ("Put", "PutRequest", "PutResponse", false, false),
            (
                "DeleteRange",
                "DeleteRangeRequest",
                "DeleteRangeResponse",
                false,
                false,
            ),
            ("Txn", "TxnRequest", "TxnResponse", false, false),
            (
                "Compact",
                "CompactionRequest",
                "CompactionResponse",
                false,
                false,
            ),
        ],
    ),
    (
        "etcdserverpb.Watch",
        &[("Watch", "WatchRequest", "WatchResponse", true, true)],
    ),
    (
        "etcdserverpb.Lease",
        &[
            (
                "LeaseGrant",
                "LeaseGrantRequest",
                "LeaseGrantResponse",
                false,
                false,
            ),
            (
                "LeaseRevoke",
                "LeaseRevokeRequest",
                "LeaseRevokeResponse",
                false,
                false,
            ),
            (
                "LeaseKeepAlive",
                "LeaseKeepAliveRequest",
                "LeaseKeepAliveResponse",
                true,
                true,
            ),
            (
                "LeaseTimeToLive",
                "LeaseTimeToLiveRequest",
                "LeaseTimeToLiveResponse",
                false,
                false,
            ),
            (
                "LeaseLeases",
                "LeaseLeasesRequest",
                "LeaseLeasesResponse",
                false,
                false,
            ),
        ],
    ),
    (
        "etcdserverpb.Cluster",
        &[
            (
                "MemberAdd",
                "MemberAddRequest",
                "MemberAddResponse",
                false,
                false,
            ),
            (
                "MemberRemove",
                "MemberRemoveRequest",
                "MemberRemoveResponse",
                false,
                false,
            ),
            (
                "MemberUpdate",
                "MemberUpdateRequest",
                "MemberUpdateResponse",
                false,
                false,
            ),
            (
                "MemberList",
                "MemberListRequest",
                "MemberListResponse",
                false,
                false,
            ),
            (
                "MemberPromote",
                "MemberPromoteRequest",
                "MemberPromoteResponse",
                false,
                false,
            ),
        ],
    ),
    (
        "etcdserverpb.Maintenance",
        &[
            ("Alarm", "AlarmRequest", "AlarmResponse", false, false),
            ("Status", "StatusRequest", "StatusResponse", false, false),
            (
                "Defragment",
                "DefragmentRequest",
                "DefragmentResponse",
                false,
                false,
            ),
            ("Hash", "HashRequest", "HashResponse", false, false),
            ("HashKV", "HashKVRequest", "HashKVResponse", false, false),
            (
                "Snapshot",
                "SnapshotRequest",
                "SnapshotResponse",
                false,
                true,
            ),
            (
                "MoveLeader",
                "MoveLeaderRequest",
                "MoveLeaderResponse",
                false,
                false,
            ),
            (
                "Downgrade",
                "DowngradeRequest",
                "DowngradeResponse",
                false,
                false,
            ),
        ],
    ),
    (
        "etcdserverpb.Auth",
        &[
            (
                "AuthEnable",
                "AuthEnableRequest",
                "AuthEnableResponse",
                false,
                false,
            ),
            (
                "AuthDisable",
                "AuthDisableRequest",
                "AuthDisableResponse",
                false,
                false,
            ),
            (
                "AuthStatus",
                "AuthStatusRequest",
                "AuthStatusResponse",
                false,
                false,
            ),
            (
                "Authenticate",
                "AuthenticateRequest",
                "AuthenticateResponse",
                false,
                false,
            ),
            (
                "UserAdd",
                "AuthUserAddRequest",
                "AuthUserAddResponse",
                false,
                false,
            ),
            (
                "UserGet",
                "AuthUserGetRequest",
                "AuthUserGetResponse",
                false,
                false,
            ),
            (
                "UserList",
                "AuthUserListRequest",
                "AuthUserListResponse",
                false,
                false,
            ),
            (
                "UserDelete",
                "AuthUserDeleteRequest",
                "AuthUserDeleteResponse",
                false,
                false,
            ),
            (
                "UserChangePassword",
                "AuthUserChangePasswordRequest",
                "AuthUserChangePasswordResponse",
                false,
                false,
            ),
            (
                "UserGrantRole",
                "AuthUserGrantRoleRequest",
                "AuthUserGrantRoleResponse",
                false,
                false,
            ),
            (
                "UserRevokeRole",
                "AuthUserRevokeRoleRequest",
                "AuthUserRevokeRoleResponse",
                false,
                false,
            ),
            (
                "RoleAdd",
                "AuthRoleAddRequest",
                "AuthRoleAddResponse",
                false,
                false,
            ),
            (
                "RoleGet",
                "AuthRoleGetRequest",
                "AuthRoleGetResponse",
                false,
                false,
            ),
            (
                "RoleList",
                "AuthRoleListRequest",
                "AuthRoleListResponse",
                false,
                false,
            ),
            (
                "RoleDelete",
                "AuthRoleDeleteRequest",
                "AuthRoleDeleteResponse",
                false,
                false,
            ),
            (
                "RoleGrantPermission",
                "AuthRoleGrantPermissionRequest",
                "AuthRoleGrantPermissionResponse",
                false,
                false,
            ),
            (
                "RoleRevokePermission",
                "AuthRoleRevokePermissionRequest",
                "AuthRoleRevokePermissionResponse",
                false,
                false,
            ),
        ],
    ),
    (
        "v3electionpb.Election",
        &[
            (
                "Campaign",
                "CampaignRequest",
                "CampaignResponse",
                false,
                false,
            ),
            (
                "Proclaim",
                "ProclaimRequest",
                "ProclaimResponse",
                false,
                false,
            ),
            ("Leader", "LeaderRequest", "LeaderResponse", false, false),
            ("Observe", "LeaderRequest", "LeaderResponse", false, true),
            ("Resign", "ResignRequest", "ResignResponse", false, false),
        ],
    ),
    (
        "v3lockpb.Lock",
        &[
            ("Lock", "LockRequest", "LockResponse", false, false),
            ("Unlock", "UnlockRequest", "UnlockResponse", false, false),
        ],
    ),
    (
        "concord.peer.v1.Raft",
        &[
            ("Send", "RaftBatch", "RaftAck", true, true),
            ("Snapshot", "SnapshotChunk", "SnapshotAck", true, false),
        ],
    ),
    (
        "concord.peer.v1.Membership",
        &[
            ("Members", "MembersRequest", "MembersResponse", false, false),
            (
                "Register",
                "RegisterRequest",
                "RegisterResponse",
                false,
                false,
            ),
            (
                "SetBucket",
                "SetBucketRequest",
                "SetBucketResponse",
                false,
                false,
            ),
        ],
    ),
    (
        "concord.peer.v1.Gossip",
        &[("Send", "GossipPacket", "GossipAck", false, false)],
    ),
    (
        "concord.peer.v1.Replica",
        &[
            ("Apply", "ReplicaApply", "ReplicaState", false, false),
            ("Merge", "ReplicaMerge", "ReplicaMergeAck", false, false),
            (
                "MergeBatch",
                "ReplicaMergeBatch",
                "ReplicaMergeBatchAck",
                false,
                false,
            ),
            (
                "ApplyBatch",
                "ReplicaApplyBatch",
                "ReplicaStates",
                false,
                false,
            ),
            (
                "ReadBatch",
                "ReplicaReadBatch",
                "ReplicaStates",
                false,
                false,
            ),
            ("Calls", "ReplicaCall", "ReplicaAnswer", true, true),
            ("Read", "ReplicaRead", "ReplicaState", false, false),
            ("Scan", "ReplicaScan", "ReplicaKeys", false, false),
            ("Tree", "ReplicaTree", "ReplicaTreeLeaves", false, false),
            ("Leaf", "ReplicaLeaf", "ReplicaKeys", false, false),
            ("Reap", "ReplicaReap", "ReplicaReapAck", false, false),
            ("Paxos", "ReplicaPaxos", "ReplicaPaxosReply", false, false),
        ],
    ),
];

#[test]
fn every_message_has_etcds_fields_numbers_and_types() {
    let schema = Schema::load();
    let mut mismatches = Vec::new();
    for (message, expected) in MESSAGES.iter().chain(PEER_MESSAGES) {
        let actual = schema.fields(message);
        let expected: Vec<String> = expected.iter().map(|s| (*s).to_owned()).collect();
        if actual != expected {
            mismatches.push(format!(
                "{message}:\n  expected {expected:?}\n  compiled {actual:?}"
            ));
        }
    }
    assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));
}

#[test]
fn the_schema_has_exactly_the_listed_messages() {
    // A message added without a table entry would escape the field check above.
    let schema = Schema::load();
    let compiled: BTreeSet<&str> = schema.messages.keys().map(String::as_str).collect();
    let listed: BTreeSet<&str> = MESSAGES
        .iter()
        .chain(PEER_MESSAGES)
        .map(|(name, _)| *name)
        .collect();
    assert_eq!(compiled, listed);
    assert_eq!(
        listed.len(),
        MESSAGES.len() + PEER_MESSAGES.len(),
        "duplicates in the table"
    );
}

#[test]
fn every_enum_has_etcds_values() {
    let schema = Schema::load();
    let compiled: BTreeMap<&str, Vec<(String, i32)>> = schema
        .enums
        .iter()
        .map(|(name, values)| (name.as_str(), values.clone()))
        .collect();
    let expected: BTreeMap<&str, Vec<(String, i32)>> = ENUMS
        .iter()
        .map(|(name, values)| {
            let values = values.iter().map(|(v, n)| ((*v).to_owned(), *n)).collect();
            (*name, values)
        })
        .collect();
    assert_eq!(compiled, expected);
}

#[test]
fn every_service_has_etcds_methods_and_streaming() {
    let schema = Schema::load();
    let expected: BTreeMap<String, Vec<CompiledMethod>> = SERVICES
        .iter()
        .map(|(service, methods)| {
            let package = service.rsplit_once('.').expect("qualified service name").0;
            let methods = methods
                .iter()
                .map(|(name, input, output, client, server)| {
                    (
                        (*name).to_owned(),
                        format!(".{package}.{input}"),
                        format!(".{package}.{output}"),
                        *client,
                        *server,
                    )
                })
                .collect();
            ((*service).to_owned(), methods)
        })
        .collect();
    assert_eq!(schema.services, expected);
}

#[test]
fn the_method_list_names_every_method_with_its_streaming() {
    let expected: Vec<crate::GrpcMethod> = SERVICES
        .iter()
        .flat_map(|(service, methods)| {
            methods
                .iter()
                .map(
                    |(method, _, _, client_streaming, server_streaming)| crate::GrpcMethod {
                        service,
                        method,
                        client_streaming: *client_streaming,
                        server_streaming: *server_streaming,
                    },
                )
        })
        .collect();
    let mut listed = crate::GRPC_METHODS.to_vec();
    let key = |m: &crate::GrpcMethod| (m.service, m.method);
    listed.sort_by_key(key);
    let mut expected = expected;
    expected.sort_by_key(key);
    assert_eq!(listed, expected);
}

#[test]
fn generated_servers_answer_on_etcds_grpc_paths() {
    use tonic::server::NamedService;

    // The service name is the first half of every gRPC path: /etcdserverpb.KV/Range.
    assert_eq!(
        <crate::etcdserverpb::kv_server::KvServer<loopback::FixedKv> as NamedService>::NAME,
        "etcdserverpb.KV"
    );
    assert_eq!(
        crate::etcdserverpb::kv_server::SERVICE_NAME,
        "etcdserverpb.KV"
    );
    assert_eq!(
        crate::etcdserverpb::watch_server::SERVICE_NAME,
        "etcdserverpb.Watch"
    );
    assert_eq!(
        crate::etcdserverpb::lease_server::SERVICE_NAME,
        "etcdserverpb.Lease"
    );
    assert_eq!(
        crate::etcdserverpb::cluster_server::SERVICE_NAME,
        "etcdserverpb.Cluster"
    );
    assert_eq!(
        crate::etcdserverpb::maintenance_server::SERVICE_NAME,
        "etcdserverpb.Maintenance"
    );
    assert_eq!(
        crate::etcdserverpb::auth_server::SERVICE_NAME,
        "etcdserverpb.Auth"
    );
    assert_eq!(
        crate::v3electionpb::election_server::SERVICE_NAME,
        "v3electionpb.Election"
    );
    assert_eq!(crate::v3lockpb::lock_server::SERVICE_NAME, "v3lockpb.Lock");
    assert_eq!(
        crate::peer::raft_server::SERVICE_NAME,
        "concord.peer.v1.Raft"
    );
    assert_eq!(
        crate::peer::membership_server::SERVICE_NAME,
        "concord.peer.v1.Membership"
    );
    assert_eq!(
        crate::peer::gossip_server::SERVICE_NAME,
        "concord.peer.v1.Gossip"
    );
}

mod golden {
    //! Encodings computed by hand from the protobuf wire format, so that a wrong field
    //! number, a wrong scalar type (int64 versus sint64, say) or a wrong wire type fails.

    use prost::Message;

    use crate::etcdserverpb::{
        compare, range_request, Compare, LeaseGrantRequest, PutRequest, RangeRequest, WatchResponse,
    };
    use crate::mvccpb::{event::EventType, Event, KeyValue};

    #[test]
    fn put_request_encodes_as_etcd_does() {
        let put = PutRequest {
            key: b"foo".to_vec(),
            value: b"bar".to_vec(),
            lease: 7,
            prev_kv: true,
            ..PutRequest::default()
        };
        let expected = [
            0x0a, 0x03, b'f', b'o', b'o', // field 1, length-delimited, "foo"
            0x12, 0x03, b'b', b'a', b'r', // field 2, length-delimited, "bar"
            0x18, 0x07, // field 3, varint 7
            0x20, 0x01, // field 4, varint true
        ];
        assert_eq!(put.encode_to_vec(), expected);
        assert_eq!(PutRequest::decode(&expected[..]).expect("decodes"), put);
    }

    #[test]
    fn negative_revision_is_a_ten_byte_varint() {
        // int64, not sint64: -1 is ten bytes of two's complement varint.
        let range = RangeRequest {
            key: b"a".to_vec(),
            revision: -1,
            sort_order: range_request::SortOrder::Descend as i32,
            ..RangeRequest::default()
        };
        let expected = [
            0x0a, 0x01, b'a', // field 1 "a"
            0x20, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01, // field 4, -1
            0x28, 0x02, // field 5, DESCEND
        ];
        assert_eq!(range.encode_to_vec(), expected);
    }

    #[test]
    fn compare_decodes_etcds_field_order_including_tag_64() {
        // As etcd's Go client writes it: fields in number order, range_end at tag 64, whose
        // key takes two varint bytes (64 << 3 | 2 = 514 = 0x82 0x04).
        let bytes = [
            0x08, 0x03, // result NOT_EQUAL
            0x10, 0x04, // target LEASE
            0x1a, 0x01, b'k', // key "k"
            0x40, 0x05, // lease 5 (oneof member, field 8)
            0x82, 0x04, 0x01, b'z', // range_end "z"
        ];
        let expected = Compare {
            result: compare::CompareResult::NotEqual as i32,
            target: compare::CompareTarget::Lease as i32,
            key: b"k".to_vec(),
            range_end: b"z".to_vec(),
            target_union: Some(compare::TargetUnion::Lease(5)),
        };
        let decoded = Compare::decode(&bytes[..]).expect("decodes");
        assert_eq!(decoded, expected);
        // Field order on the wire is free; the same bytes in some order must come out.
        let mut ours = decoded.encode_to_vec();
        let mut theirs = bytes.to_vec();
        ours.sort_unstable();
        theirs.sort_unstable();
        assert_eq!(ours, theirs);
    }

    #[test]
    fn watch_events_sit_at_field_11() {
        let response = WatchResponse {
            watch_id: 1,
            events: vec![Event {
                r#type: EventType::Delete as i32,
                kv: Some(KeyValue {
                    key: b"k".to_vec(),
                    ..KeyValue::default()
                }),
                prev_kv: None,
            }],
            ..WatchResponse::default()
        };
        let expected = [
            0x10, 0x01, // field 2, watch_id 1
            0x5a, 0x07, // field 11, length-delimited, 7 bytes
            0x08, 0x01, // event type DELETE
            0x12, 0x03, 0x0a, 0x01, b'k', // kv { key "k" }
        ];
        assert_eq!(response.encode_to_vec(), expected);
    }

    #[test]
    fn lease_grant_ttl_is_field_1() {
        let grant = LeaseGrantRequest { ttl: 10, id: 0 };
        assert_eq!(grant.encode_to_vec(), [0x08, 0x0a]);
    }
}

mod round_trip {
    //! Every message decodes to what was encoded, including nested transactions, oneofs and
    //! the peer protocol's `Bytes` fields.

    use proptest::prelude::*;
    use prost::bytes::Bytes;
    use prost::Message;

    use crate::etcdserverpb::{
        compare, request_op, response_op, watch_request, Compare, DeleteRangeRequest, Member,
        PutRequest, PutResponse, RangeRequest, RequestOp, ResponseHeader, ResponseOp,
        StatusResponse, TxnRequest, TxnResponse, WatchCreateRequest, WatchRequest,
    };
    use crate::mvccpb::KeyValue;
    use crate::peer::{RaftBatch, SnapshotChunk, SnapshotMeta};

    fn round_trip<M: Message + Default + PartialEq + std::fmt::Debug>(message: &M) {
        let bytes = message.encode_to_vec();
        assert_eq!(bytes.len(), message.encoded_len());
        let decoded = M::decode(&bytes[..]).expect("decodes");
        assert_eq!(&decoded, message);
    }

    fn bytes() -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(any::<u8>(), 0..16)
    }

    fn key_value() -> impl Strategy<Value = KeyValue> {
        (
            bytes(),
            any::<i64>(),
            any::<i64>(),
            any::<i64>(),
            bytes(),
            any::<i64>(),
        )
            .prop_map(
                |(key, create_revision, mod_revision, version, value, lease)| KeyValue {
                    key,
                    create_revision,
                    mod_revision,
                    version,
                    value,
                    lease,
                },
            )
    }

    fn compare() -> impl Strategy<Value = Compare> {
        let union = prop_oneof![
            Just(None),
            any::<i64>().prop_map(|v| Some(compare::TargetUnion::Version(v))),
            any::<i64>().prop_map(|v| Some(compare::TargetUnion::CreateRevision(v))),
            any::<i64>().prop_map(|v| Some(compare::TargetUnion::ModRevision(v))),
            bytes().prop_map(|v| Some(compare::TargetUnion::Value(v))),
            any::<i64>().prop_map(|v| Some(compare::TargetUnion::Lease(v))),
        ];
        (0..4i32, 0..5i32, bytes(), bytes(), union).prop_map(
            |(result, target, key, range_end, target_union)| Compare {
                result,
                target,
                key,
                range_end,
                target_union,
            },
        )
    }

    fn request_op() -> impl Strategy<Value = RequestOp> {
        let leaf = prop_oneof![
            (bytes(), bytes(), any::<i64>(), any::<bool>()).prop_map(
                |(key, range_end, revision, serializable)| {
                    request_op::Request::RequestRange(RangeRequest {
                        key,
                        range_end,
                        revision,
                        serializable,
                        ..RangeRequest::default()
                    })
                }
            ),
            (bytes(), bytes(), any::<i64>(), any::<bool>()).prop_map(
                |(key, value, lease, prev_kv)| {
                    request_op::Request::RequestPut(PutRequest {
                        key,
                        value,
                        lease,
                        prev_kv,
                        ..PutRequest::default()
                    })
                }
            ),
            (bytes(), bytes()).prop_map(|(key, range_end)| {
                request_op::Request::RequestDeleteRange(DeleteRangeRequest {
                    key,
                    range_end,
                    prev_kv: true,
                })
            }),
        ];
        leaf.prop_recursive(3, 16, 4, |inner| {
            (
                proptest::collection::vec(compare(), 0..3),
                proptest::collection::vec(inner.clone(), 0..3),
                proptest::collection::vec(inner, 0..3),
            )
                .prop_map(|(compare, success, failure)| {
                    let ops = |v: Vec<request_op::Request>| {
                        v.into_iter()
                            .map(|r| RequestOp { request: Some(r) })
                            .collect()
                    };
                    request_op::Request::RequestTxn(TxnRequest {
                        compare,
                        success: ops(success),
                        failure: ops(failure),
                    })
                })
        })
        .prop_map(|request| RequestOp {
            request: Some(request),
        })
    }

    proptest! {
        #[test]
        fn key_values_round_trip(kv in key_value()) {
            round_trip(&kv);
        }

        #[test]
        fn nested_transactions_round_trip(
            compare in proptest::collection::vec(compare(), 0..4),
            success in proptest::collection::vec(request_op(), 0..4),
            failure in proptest::collection::vec(request_op(), 0..4),
        ) {
            round_trip(&TxnRequest { compare, success, failure });
        }

        #[test]
        fn raft_batches_round_trip(
            cluster_id in any::<u64>(),
            from in any::<u64>(),
            to in any::<u64>(),
            seq in any::<u64>(),
            messages in proptest::collection::vec(bytes(), 0..8),
            version in any::<u32>(),
            group_id in any::<u64>(),
            probe in any::<bool>(),
        ) {
            let messages = messages.into_iter().map(Bytes::from).collect();
            round_trip(&RaftBatch { cluster_id, from, to, seq, messages, version, group_id, probe, traces: Vec::new() });
        }

        #[test]
        fn snapshot_chunks_round_trip(
            offset in any::<u64>(),
            data in bytes(),
            crc32c in any::<u32>(),
            last in any::<bool>(),
            first in any::<bool>(),
        ) {
            let meta = first.then(|| SnapshotMeta {
                cluster_id: 1,
                from: 2,
                to: 3,
                index: 4,
                term: 5,
                size: 6,
                message: Bytes::from_static(b"raft"),
                version: 1,
                group_id: 7,
            });
            round_trip(&SnapshotChunk { meta, offset, data: Bytes::from(data), crc32c, last });
        }
    }

    #[test]
    fn responses_with_every_oneof_member_round_trip() {
        let header = Some(ResponseHeader {
            cluster_id: u64::MAX,
            member_id: 1,
            revision: i64::MAX,
            raft_term: 9,
        });
        let response = TxnResponse {
            header,
            succeeded: true,
            responses: vec![
                ResponseOp {
                    response: Some(response_op::Response::ResponsePut(PutResponse {
                        header,
                        prev_kv: Some(KeyValue {
                            key: b"a".to_vec(),
                            ..KeyValue::default()
                        }),
                    })),
                },
                ResponseOp {
                    response: Some(response_op::Response::ResponseTxn(TxnResponse {
                        header,
                        succeeded: false,
                        responses: vec![ResponseOp { response: None }],
                    })),
                },
            ],
        };
        round_trip(&response);
        round_trip(&WatchRequest {
            request_union: Some(watch_request::RequestUnion::CreateRequest(
                WatchCreateRequest {
                    key: b"a".to_vec(),
                    range_end: vec![0],
                    start_revision: 5,
                    filters: vec![0, 1],
                    fragment: true,
                    watch_id: -1,
                    ..WatchCreateRequest::default()
                },
            )),
        });
        round_trip(&Member {
            id: 0x8e9e_05c5_2164_694d,
            name: "n1".to_owned(),
            peer_ur_ls: vec!["http://127.0.0.1:2380".to_owned()],
            client_ur_ls: vec!["http://127.0.0.1:2379".to_owned()],
            is_learner: true,
        });
        round_trip(&StatusResponse {
            header,
            version: "3.5.0".to_owned(),
            errors: vec!["NOSPACE".to_owned()],
            db_size_quota: 1 << 31,
            ..StatusResponse::default()
        });
    }

    #[test]
    fn a_status_response_decodes_in_a_35_shaped_reader_without_the_36_fields() {
        // What a 3.5 client does with our 3.6 additions: skip them as unknown fields.
        #[derive(Clone, PartialEq, prost::Message)]
        struct Status35 {
            #[prost(string, tag = "2")]
            version: String,
            #[prost(bool, tag = "10")]
            is_learner: bool,
        }
        let ours = StatusResponse {
            version: "3.5.0".to_owned(),
            is_learner: true,
            storage_version: "3.6.0".to_owned(),
            db_size_quota: 42,
            ..StatusResponse::default()
        };
        let theirs = Status35::decode(&ours.encode_to_vec()[..]).expect("decodes");
        assert_eq!(
            theirs,
            Status35 {
                version: "3.5.0".to_owned(),
                is_learner: true
            }
        );
    }
}

mod loopback {
    //! A generated KV server and client talk over a real loopback connection, so the paths,
    //! codecs and framing the generator produced work together.

    use tonic::{Request, Response, Status};

    use crate::etcdserverpb::kv_client::KvClient;
    use crate::etcdserverpb::kv_server::{Kv, KvServer};
    use crate::etcdserverpb::{
        CompactionRequest, CompactionResponse, DeleteRangeRequest, DeleteRangeResponse, PutRequest,
        PutResponse, RangeRequest, RangeResponse, ResponseHeader, TxnRequest, TxnResponse,
    };
    use crate::mvccpb::KeyValue;

    pub(super) struct FixedKv;

    const HEADER: ResponseHeader = ResponseHeader {
        cluster_id: 1,
        member_id: 2,
        revision: 3,
        raft_term: 4,
    };

    #[tonic::async_trait]
    impl Kv for FixedKv {
        async fn range(
            &self,
            request: Request<RangeRequest>,
        ) -> Result<Response<RangeResponse>, Status> {
            let request = request.into_inner();
            Ok(Response::new(RangeResponse {
                header: Some(HEADER),
                kvs: vec![KeyValue {
                    key: request.key,
                    value: b"v".to_vec(),
                    ..KeyValue::default()
                }],
                more: false,
                count: 1,
            }))
        }

        async fn put(&self, _: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
            Err(Status::unimplemented("put"))
        }

        async fn delete_range(
            &self,
            _: Request<DeleteRangeRequest>,
        ) -> Result<Response<DeleteRangeResponse>, Status> {
            Err(Status::unimplemented("delete_range"))
        }

        async fn txn(&self, _: Request<TxnRequest>) -> Result<Response<TxnResponse>, Status> {
            Err(Status::unimplemented("txn"))
        }

        async fn compact(
            &self,
            _: Request<CompactionRequest>,
        ) -> Result<Response<CompactionResponse>, Status> {
            Err(Status::unimplemented("compact"))
        }
    }

    #[tokio::test]
    async fn generated_kv_server_and_client_talk() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let addr = listener.local_addr().expect("local address");
        let incoming = tonic::transport::server::TcpIncoming::from(listener);
        let server = tokio::spawn(
            tonic::transport::Server::builder()
                .serve_with_incoming(KvServer::new(FixedKv), incoming),
        );

        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .expect("valid endpoint")
            .connect()
            .await
            .expect("connect");
        let mut client = KvClient::new(channel);

        let response = client
            .range(RangeRequest {
                key: b"hello".to_vec(),
                ..RangeRequest::default()
            })
            .await
            .expect("range answers")
            .into_inner();
        assert_eq!(response.header, Some(HEADER));
        assert_eq!(response.kvs.len(), 1);
        assert_eq!(response.kvs[0].key, b"hello");
        assert_eq!(response.count, 1);

        let status = client
            .put(PutRequest::default())
            .await
            .expect_err("put is not implemented here");
        assert_eq!(status.code(), tonic::Code::Unimplemented);
        assert_eq!(status.message(), "put");

        server.abort();
    }
}

#[test]
fn descriptor_set_is_self_contained_and_commentless() {
    let set = FileDescriptorSet::decode(crate::FILE_DESCRIPTOR_SET).expect("decodes");
    let names: BTreeSet<&str> = set.file.iter().map(|f| f.name()).collect();
    for file in &set.file {
        for dependency in &file.dependency {
            assert!(
                names.contains(dependency.as_str()),
                "{} imports {dependency}, which is not in the set",
                file.name()
            );
        }
        assert!(
            file.source_code_info.is_none(),
            "{} keeps comments",
            file.name()
        );
    }
    let packages: BTreeSet<&str> = set.file.iter().map(|f| f.package()).collect();
    let expected: BTreeSet<&str> = [
        "authpb",
        "concord.peer.v1",
        "etcdserverpb",
        "mvccpb",
        "v3electionpb",
        "v3lockpb",
    ]
    .into();
    assert_eq!(packages, expected);
    // The module path a user imports resolves to the package's messages.
    let _: etcdserverpb::RangeRequest = etcdserverpb::RangeRequest::default();
}
