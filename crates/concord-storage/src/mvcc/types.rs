//! Requests and responses of the state machine, as plain Rust data mirroring etcd v3's
//! `KV` and `Lease` messages (the server maps the protobufs onto these).
//!
//! # Guarantees
//!
//! 1. Field names and meanings follow etcd's `rpc.proto`; revisions, versions and lease
//!    ids are `i64` as there.
//! 2. A [`Command`] is everything that changes the state machine; applying the same
//!    sequence of commands gives the same state on every replica.

/// A key's current (or historical) value and metadata.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct KeyValue {
    /// The key.
    pub key: Vec<u8>,
    /// Revision of the last creation of the key.
    pub create_revision: i64,
    /// Revision of the last modification.
    pub mod_revision: i64,
    /// Number of modifications since creation (1 after creation).
    pub version: i64,
    /// The value (empty with `keys_only`).
    pub value: Vec<u8>,
    /// Attached lease, 0 if none.
    pub lease: i64,
}

/// Order of a range's results.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum SortOrder {
    /// Key order (no sorting asked).
    #[default]
    None,
    /// Ascending by the target.
    Ascend,
    /// Descending by the target.
    Descend,
}

/// What a range sorts by.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum SortTarget {
    /// The key.
    #[default]
    Key,
    /// The version.
    Version,
    /// The create revision.
    Create,
    /// The mod revision.
    Mod,
    /// The value.
    Value,
}

/// etcd's `RangeRequest`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct RangeRequest {
    /// First key.
    pub key: Vec<u8>,
    /// End of the range (exclusive): empty for the single `key`, `[0]` for every key
    /// `>= key`.
    pub range_end: Vec<u8>,
    /// Most keys returned, 0 for no limit.
    pub limit: i64,
    /// Revision to read at, `<= 0` for the current one.
    pub revision: i64,
    /// Sort order.
    pub sort_order: SortOrder,
    /// Sort target.
    pub sort_target: SortTarget,
    /// Return keys without values.
    pub keys_only: bool,
    /// Return only the count.
    pub count_only: bool,
    /// Keep only keys with `mod_revision >=` this (0: no filter).
    pub min_mod_revision: i64,
    /// Keep only keys with `mod_revision <=` this (0: no filter).
    pub max_mod_revision: i64,
    /// Keep only keys with `create_revision >=` this (0: no filter).
    pub min_create_revision: i64,
    /// Keep only keys with `create_revision <=` this (0: no filter).
    pub max_create_revision: i64,
}

/// etcd's `RangeResponse`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct RangeResponse {
    /// Current revision of the store (the header's revision).
    pub revision: i64,
    /// The keys.
    pub kvs: Vec<KeyValue>,
    /// Whether the limit cut keys off.
    pub more: bool,
    /// Number of keys in the range at the revision (before filters and limit).
    pub count: i64,
}

/// etcd's `PutRequest`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct PutRequest {
    /// The key.
    pub key: Vec<u8>,
    /// The value.
    pub value: Vec<u8>,
    /// Lease to attach, 0 for none.
    pub lease: i64,
    /// Return the previous key-value.
    pub prev_kv: bool,
    /// Keep the current value.
    pub ignore_value: bool,
    /// Keep the current lease.
    pub ignore_lease: bool,
}

/// etcd's `PutResponse`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct PutResponse {
    /// Revision after the put.
    pub revision: i64,
    /// The previous key-value, if asked and present.
    pub prev_kv: Option<KeyValue>,
}

/// etcd's `DeleteRangeRequest`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct DeleteRangeRequest {
    /// First key.
    pub key: Vec<u8>,
    /// End of the range, as in [`RangeRequest::range_end`].
    pub range_end: Vec<u8>,
    /// Return the deleted key-values.
    pub prev_kv: bool,
}

/// etcd's `DeleteRangeResponse`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct DeleteRangeResponse {
    /// Revision after the delete.
    pub revision: i64,
    /// Number of keys deleted.
    pub deleted: i64,
    /// The deleted key-values, if asked.
    pub prev_kvs: Vec<KeyValue>,
}

/// How a compare relates the stored field to the given one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum CompareResult {
    /// Stored == given.
    #[default]
    Equal,
    /// Stored > given.
    Greater,
    /// Stored < given.
    Less,
    /// Stored != given.
    NotEqual,
}

/// The field a compare looks at, with the value to compare against.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum CompareTarget {
    /// The version (0 for a missing key).
    Version(i64),
    /// The create revision (0 for a missing key).
    Create(i64),
    /// The mod revision (0 for a missing key).
    Mod(i64),
    /// The value (a compare on a missing key's value is false).
    Value(Vec<u8>),
    /// The lease (0 for a missing key).
    Lease(i64),
}

/// etcd's `Compare`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Compare {
    /// The relation.
    pub result: CompareResult,
    /// Field and value.
    pub target: CompareTarget,
    /// The key.
    pub key: Vec<u8>,
    /// If set, every key of `[key, range_end)` must satisfy the compare.
    pub range_end: Vec<u8>,
}

/// One operation of a transaction.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum RequestOp {
    /// A range.
    Range(RangeRequest),
    /// A put.
    Put(PutRequest),
    /// A delete.
    DeleteRange(DeleteRangeRequest),
    /// A nested transaction.
    Txn(TxnRequest),
}

/// The response of one [`RequestOp`].
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ResponseOp {
    /// A range's response.
    Range(RangeResponse),
    /// A put's response.
    Put(PutResponse),
    /// A delete's response.
    DeleteRange(DeleteRangeResponse),
    /// A nested transaction's response.
    Txn(TxnResponse),
}

/// etcd's `TxnRequest`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct TxnRequest {
    /// All must hold for `success` to run, else `failure` runs.
    pub compare: Vec<Compare>,
    /// Operations when the compares hold.
    pub success: Vec<RequestOp>,
    /// Operations otherwise.
    pub failure: Vec<RequestOp>,
}

/// etcd's `TxnResponse`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct TxnResponse {
    /// Revision after the transaction.
    pub revision: i64,
    /// Whether the compares held.
    pub succeeded: bool,
    /// One response per operation run.
    pub responses: Vec<ResponseOp>,
}

/// A lease as stored.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Lease {
    /// Id.
    pub id: i64,
    /// Granted TTL in seconds.
    pub ttl: i64,
    /// Last checkpointed remaining TTL in seconds (0: none yet).
    pub remaining_ttl: i64,
    /// Attached keys, sorted.
    pub keys: Vec<Vec<u8>>,
}

/// Everything that changes the state machine, applied through Raft.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Command {
    /// An entry with no effect on the keyspace (a new leader's empty entry, a
    /// membership change): only the applied index moves.
    Noop,
    /// `KV.Put`.
    Put(PutRequest),
    /// `KV.DeleteRange`.
    DeleteRange(DeleteRangeRequest),
    /// `KV.Txn`.
    Txn(TxnRequest),
    /// `KV.Compact`: reads below `revision` fail from now on; the space is reclaimed by
    /// [`crate::mvcc::MvccStore::compact_step`].
    Compact {
        /// The new compacted revision.
        revision: i64,
    },
    /// `Lease.LeaseGrant` (the proposer picks a non-zero id).
    LeaseGrant {
        /// Lease id.
        id: i64,
        /// TTL in seconds.
        ttl: i64,
    },
    /// `Lease.LeaseRevoke`: deletes the lease and its keys in one revision.
    LeaseRevoke {
        /// Lease id.
        id: i64,
    },
    /// Records a lease's remaining TTL so a new leader does not reset it.
    LeaseCheckpoint {
        /// Lease id.
        id: i64,
        /// Remaining TTL in seconds.
        remaining_ttl: i64,
    },
    /// Raises the NOSPACE alarm for member 0 (the form written before alarms carried a
    /// member; still decoded and applied): writes are refused until it is disarmed.
    AlarmNoSpace,
    /// Disarms every NOSPACE alarm.
    AlarmDisarm,
    /// Raises the NOSPACE alarm on behalf of `member` (etcd's `Alarm` ACTIVATE, or a member
    /// over its quota): writes are refused while any member's alarm is raised.
    AlarmActivate {
        /// The member id the alarm names (any value, as etcd accepts).
        member: u64,
    },
    /// Clears `member`'s NOSPACE alarm (etcd's `Alarm` DEACTIVATE).
    AlarmDeactivate {
        /// The member id the alarm names.
        member: u64,
    },
    /// Sets (`Some`) or removes (`None`) an entry of the cluster metadata table (member
    /// names and URLs, kept by the server). Does not touch the keyspace or its revision.
    ClusterMeta {
        /// The entry's key.
        key: Vec<u8>,
        /// The new value, or `None` to remove the entry.
        value: Option<Vec<u8>>,
    },
    /// [`Command::ClusterMeta`] only if the entry is `expect` now (`None`: absent);
    /// otherwise nothing changes and the proposer gets
    /// [`crate::errors::RequestError::MetaChanged`]. Read-modify-write of one entry
    /// (the authentication state) without lost updates.
    ClusterMetaCas {
        /// The entry's key.
        key: Vec<u8>,
        /// The value the entry must hold for the change to apply.
        expect: Option<Vec<u8>>,
        /// The new value, or `None` to remove the entry.
        value: Option<Vec<u8>>,
    },
    /// A client's write (`Put`, `DeleteRange`, `Txn`) with the authentication it was
    /// checked against at the member that received it (etcd's `AuthInfo`). The server
    /// decides at apply whether that check still holds and refuses the write when the
    /// auth state changed in between; the store itself applies `cmd`.
    Authorized {
        /// The auth revision the caller's permissions were checked at, or `None` when the
        /// request named no user (auth was off where it was received).
        auth_revision: Option<u64>,
        /// The write; never itself [`Command::Authorized`].
        cmd: Box<Command>,
    },
}

/// The result of applying a [`Command`].
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Response {
    /// For commands without a response body; the revision after applying.
    Revision(i64),
    /// A put's response.
    Put(PutResponse),
    /// A delete's response.
    DeleteRange(DeleteRangeResponse),
    /// A transaction's response.
    Txn(TxnResponse),
}

/// What a change did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum EventKind {
    /// The key was created or modified.
    #[default]
    Put,
    /// The key was deleted.
    Delete,
}

/// One change, as etcd's `mvccpb.Event`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Event {
    /// Put or delete.
    pub kind: EventKind,
    /// The new version; for a delete only `key` and `mod_revision` are set.
    pub kv: KeyValue,
    /// The version before the change, if asked for and present.
    pub prev_kv: Option<KeyValue>,
}
