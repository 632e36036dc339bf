//! Concord's protocol buffers: the etcd v3.5 gRPC API and Concord's own peer protocol.
//!
//! # What is generated, and how
//!
//! `build.rs` compiles the `.proto` files under `proto/` with [`protox`](https://docs.rs/protox)
//! (a protobuf compiler in Rust, so a build never needs `protoc`) into a file descriptor set,
//! from which `tonic-prost-build` generates, per protobuf package, the messages (with `prost`),
//! a client (`<service>_client::<Service>Client`) and a server
//! (`<service>_server::{<Service>, <Service>Server}`) for every service. The generated code
//! needs `prost`, `tonic` (feature `codegen`) and `tonic-prost` at run time.
//!
//! | module | protobuf package | contents |
//! |---|---|---|
//! | [`etcdserverpb`] | `etcdserverpb` | services `KV`, `Watch`, `Lease`, `Cluster`, `Maintenance`, `Auth` and their messages |
//! | [`mvccpb`] | `mvccpb` | `KeyValue`, `Event` |
//! | [`authpb`] | `authpb` | `User`, `Permission`, `Role`, `UserAddOptions` |
//! | [`v3electionpb`] | `v3electionpb` | service `Election` (`Campaign`, `Proclaim`, `Leader`, `Observe`, `Resign`) |
//! | [`v3lockpb`] | `v3lockpb` | service `Lock` (`Lock`, `Unlock`) |
//! | [`peer`] | `concord.peer.v1` | services `Raft` (`Send`, `Snapshot`), `Gossip` (`Send`, SWIM packets), `Replica` (`Apply`, `Merge`, `Read`: AP keys) and `Membership` (`Members`) |
//! | [`consistency`] | (hand-written) | the `concord-consistency` metadata key: read levels beyond etcd's two |
//!
//! The modules are siblings at the crate root because prost refers across packages with
//! `super::mvccpb::KeyValue`-style paths. Generated clients have no `connect` constructor
//! (that would pull tonic's transport into every user of this crate): build a channel and pass
//! it to `new` or `with_origin`.
//!
//! Field names follow prost's conversion of etcd's names to snake case, exactly as in the
//! `etcd-client` crate: `TTL` becomes `ttl`, `ID` becomes `id`, `peerURLs` becomes
//! `peer_ur_ls`, `isLearner` becomes `is_learner`. Enumerations are `i32` fields with a
//! companion Rust enum (`range_request::SortOrder` and so on). Bytes fields of the etcd
//! packages are `Vec<u8>`; those of the peer package are `bytes::Bytes`, so Raft payloads and
//! snapshot chunks are passed on without copying.
//!
//! [`FILE_DESCRIPTOR_SET`] is the encoded descriptor set of every file (without source
//! comments), for gRPC server reflection.
//!
//! # Compatibility promise
//!
//! The etcd packages are wire-compatible with etcd v3.5: same package names, so the same gRPC
//! method paths (`/etcdserverpb.KV/Range`, `/v3lockpb.Lock/Lock`, ...); same streaming shape
//! of every method; same message names, field names, field numbers, field types and enum
//! values. The `.proto` files are Concord's own (with condensed comments); etcd's `gogoproto`,
//! `google.api.http` and version annotations are left out because they change neither the
//! encoding nor the method paths. No etcd 3.5 field is omitted. A few optional fields and one
//! message that etcd added in 3.6 are included (`HashKVResponse.hash_revision`,
//! `SnapshotResponse.version`, `StatusResponse.storageVersion`/`dbSizeQuota`/`downgradeInfo`
//! and `DowngradeInfo`): clients built against 3.5 skip them as unknown fields. etcd's
//! test-only `DowngradeVersionTestRequest`, used by no RPC, is not included.
//!
//! The peer package `concord.peer.v1` is Concord's own; its field numbers are stable within
//! `v1`: new fields take new numbers, removed ones are reserved.
//!
//! # Guarantees
//!
//! * The wire contract above is checked by this crate's tests against the numbers read from
//!   etcd's own `.proto` files: for every message, each field's name, number, type, label
//!   and oneof, and that no message is missing or extra; every enum's values; and the full
//!   method list of every service with its streaming flags; plus byte-exact encodings computed by hand and a
//!   loopback call through a generated server and client.
//! * Building needs no external tool: only Rust crates.

pub mod consistency;

/// The gRPC metadata key that selects the image `Maintenance.Snapshot` streams: absent or
/// `etcd`, an etcd 3.4 snapshot (a bbolt database, then its SHA-256), which `etcdctl
/// snapshot save|status|restore` read; `concord`, Concord's own image in checksummed
/// chunks. Both restore with `concord snapshot restore`.
pub const SNAPSHOT_FORMAT_KEY: &str = "concord-snapshot-format";

/// etcd's client API, package `etcdserverpb`: KV, Watch, Lease, Cluster, Maintenance, Auth.
pub mod etcdserverpb {
    tonic::include_proto!("etcdserverpb");
}

/// etcd's storage-level messages, package `mvccpb`: `KeyValue` and `Event`.
pub mod mvccpb {
    tonic::include_proto!("mvccpb");
}

/// etcd's auth storage messages, package `authpb`: `User`, `Permission`, `Role`.
pub mod authpb {
    tonic::include_proto!("authpb");
}

/// etcd's election service, package `v3electionpb`.
pub mod v3electionpb {
    tonic::include_proto!("v3electionpb");
}

/// etcd's lock service, package `v3lockpb`.
pub mod v3lockpb {
    tonic::include_proto!("v3lockpb");
}

/// Concord's node-to-node protocol, package `concord.peer.v1`.
///
/// `Raft.Send` carries batches of encoded Raft messages on one long-lived stream per ordered
/// pair of members, acknowledged by sequence number; `Raft.Snapshot` carries one snapshot as
/// checksummed chunks (metadata in the first); `Membership.Members` lets a member check the
/// cluster it is about to join. Payloads are opaque bytes: the server encodes concord-raft's
/// messages itself.
pub mod peer {
    tonic::include_proto!("concord.peer.v1");
}

/// Encoded `google.protobuf.FileDescriptorSet` of every `.proto` file of this crate
/// (imports included, source comments stripped), for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/concord_descriptor.bin"));

/// One method of a compiled service, as its descriptor declares it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GrpcMethod {
    /// The service's full name: `etcdserverpb.KV`.
    pub service: &'static str,
    /// `Range`.
    pub method: &'static str,
    /// The client sends a stream.
    pub client_streaming: bool,
    /// The server answers with a stream.
    pub server_streaming: bool,
}

/// Every method of every service of this crate (etcd's and the peer protocol's), in
/// declaration order: what a server can name in its metrics without trusting a request's
/// path.
pub const GRPC_METHODS: &[GrpcMethod] = include!(concat!(env!("OUT_DIR"), "/grpc_methods.rs"));

#[cfg(test)]
mod tests;
