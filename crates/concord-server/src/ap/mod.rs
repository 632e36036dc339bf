//! AP buckets on one member: its replica of the keys it owns (concord-storage's
//! [`ApStore`]), the `concord.peer.v1.Replica` service other members call, and the
//! coordinator that serves a client's request over the key's replicas
//! ([`coordinate`], driving concord-core's sans-I/O `coordinator`). `docs/ap.md` has the
//! write path and the rules.
//!
//! Placement: a consistent-hash ring over the cluster's members ([`ApNode::set_members`]);
//! health: the members gossip sees alive ([`ApNode::set_healthy`]). Both are refreshed by
//! the server from the member list and the gossip view.
//!
//! # Guarantees
//!
//! 1. **A replica acknowledges only what is durable**: every Apply and Merge answers after
//!    the store's fsync'd commit.
//! 2. **Operations are applied once, by one replica** (the first healthy preferred one,
//!    the coordinating replica), stamped with its hybrid logical clock after it has seen
//!    the key's current epoch, so a write it applies always supersedes what it held; the
//!    other replicas only merge the resulting state, so retries, hints and repairs are
//!    idempotent.
//! 3. **Refusals say why**: a request of another cluster, an undecodable state or a missing
//!    operation is refused with a status naming the problem; an operation the value
//!    refuses (`INCR` on text) answers Redis's error and changes nothing.
//! 4. **A replica acts under its store's actor** (`ApStore::actor`: an identity drawn when
//!    the file is created, and again whenever the store removes a state it acted on), not
//!    its member id: a member that lost its data, or a key it held (handoff's cleanup
//!    removes copies of keys a member no longer owns, and the key may come back to it
//!    before its old state does), counts under a new actor, so its new increments are
//!    never hidden behind the larger entries of its earlier acts that other replicas
//!    still hold.
//! 5. **An operation is applied within its coordinator's wait or not at all**: an apply
//!    carries the time its coordinator stops waiting for it, and a replica whose clock has
//!    passed that time refuses it (batchers also drop requests nobody waits for). A SET
//!    the coordinator retried elsewhere after a silent replica therefore cannot land
//!    there later, stamped above the writes that followed it (within the clocks' skew).

mod anti_entropy;
mod batch;
pub mod buckets;
pub mod cas;
pub mod coordinate;
mod handoff;
mod hints;
mod keyspace;
pub mod session;
pub mod siblings;
#[cfg(test)]
mod tests;
mod tombstones;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

pub use buckets::{BucketCatalog, BucketChange, BucketProps, Durability};
use concord_core::clock::VectorClock;
use concord_core::crdt::{parse_integer, Crdt, Expiry, RedisValue, SetExpiry, ValueError};
use concord_core::ring::Ring;
use concord_proto::peer::replica_client::ReplicaClient;
use concord_proto::peer::replica_server::{Replica, ReplicaServer};
use concord_proto::peer::{
    replica_apply, ApDel, ApExpire, ApHashIncr, ApHashSet, ApIncr, ApMembers, ApSet, ApSiblingPut,
    ReplicaAnswer, ReplicaApply, ReplicaApplyBatch, ReplicaCall, ReplicaKey, ReplicaKeys,
    ReplicaLeaf, ReplicaMerge, ReplicaMergeAck, ReplicaMergeBatch, ReplicaMergeBatchAck,
    ReplicaPaxos, ReplicaPaxosReply, ReplicaRead, ReplicaReadBatch, ReplicaReap, ReplicaReapAck,
    ReplicaScan, ReplicaState, ReplicaStates, ReplicaTree, ReplicaTreeLeaves,
};
use concord_raft::NodeId;
use concord_runtime::clock::{NodeClock, OffsetClock};
use concord_runtime::grpc::BoxStream;
use concord_storage::ap::{state_to_bytes, ApStore, ApStoreError};
pub(crate) use keyspace::hash_page;
pub use session::{SessionGuard, SessionId, SessionToken};
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status, Streaming};

/// Virtual nodes per member on the ring.
pub const VNODES: u32 = 64;
/// Most keys in one page of a replica scan.
pub const SCAN_PAGE: usize = 1000;
/// Buckets (Redis databases `0..16`).
pub const BUCKETS: u32 = 16;
/// How far ahead of this member's clock a peer's HLC timestamp may be before it is
/// refused: the bound on clock skew between members that LWW order and Paxos ballots
/// assume (`docs/ap.md`, "Clocks").
pub const MAX_CLOCK_OFFSET_MS: u64 = 500;

/// Settings of a member's AP side (the replication settings are each bucket's
/// [`BucketProps`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApConfig {
    /// How long a request may take before it fails.
    pub timeout: Duration,
    /// Most hints this member holds for one other member; past it, writes that miss that
    /// member are left to anti-entropy (and counted as dropped hints).
    pub max_hints_per_member: u64,
    /// Time between two anti-entropy exchanges (each with the next live member).
    pub anti_entropy_interval: Duration,
    /// How old a tombstone must be before it is collected, and a hint before it is
    /// dropped rather than handed over ([`tombstones`]).
    pub tombstone_grace: Duration,
}

impl Default for ApConfig {
    fn default() -> Self {
        ApConfig {
            timeout: Duration::from_secs(2),
            max_hints_per_member: 1_000_000,
            anti_entropy_interval: Duration::from_secs(10),
            tombstone_grace: Duration::from_secs(3600),
        }
    }
}

/// Where a request goes and how many replicas it waits for: the bucket, and a
/// connection's own R and W (`None`: the bucket's).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Access {
    /// The bucket (`SELECT`).
    pub bucket: u8,
    /// Answers a read waits for.
    pub r: Option<u32>,
    /// Acknowledgements a write waits for.
    pub w: Option<u32>,
    /// The session the request belongs to ([`session`]; `None`: none).
    pub session: Option<SessionId>,
}

/// One operation on a key, applied by its coordinating replica.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// `SET`.
    Set {
        /// The value.
        value: Vec<u8>,
        /// What happens to the expiry.
        expiry: SetExpiry,
    },
    /// `DEL`.
    Del,
    /// `INCRBY`.
    Incr(i64),
    /// `EXPIRE` (at a time) or `PERSIST` (`Expiry::Never`).
    Expire(Expiry),
    /// `SADD`.
    SetAdd(Vec<Vec<u8>>),
    /// `SREM`.
    SetRemove(Vec<Vec<u8>>),
    /// A `*STORE` command's result: the key becomes a set of exactly these members (none:
    /// deleted).
    SetStore(Vec<Vec<u8>>),
    /// `HSET`: fields and their values.
    HashSet(Vec<(Vec<u8>, Vec<u8>)>),
    /// `HSETNX`: a field and its value, set only when the field is absent.
    HashSetNx(Vec<u8>, Vec<u8>),
    /// `HDEL`.
    HashDel(Vec<Vec<u8>>),
    /// `HINCRBY`: a field and the delta.
    HashIncr(Vec<u8>, i64),
    /// A write of a bucket in siblings mode: the value (`None`: a delete) replaces the
    /// values the client's causal context saw.
    SiblingPut {
        /// What the client read (empty: a blind write, a new sibling).
        context: VectorClock,
        /// The value, or `None` for a delete.
        value: Option<Vec<u8>>,
    },
}

impl Op {
    /// Whether the new state may leave for the other replicas before this replica's commit
    /// is durable. Not for an operation that makes a counter entry or an add (a dot): after
    /// a crash before the commit, the replica would make the same entry again for another
    /// operation, and the two would be taken for one.
    pub(crate) fn sends_before_commit(&self) -> bool {
        matches!(self, Op::Set { .. } | Op::Del | Op::Expire(_))
    }

    /// Whether applying it a second time (at another replica, after one that failed or
    /// stayed silent) changes nothing more: everything but an increment.
    pub(crate) fn retriable(&self) -> bool {
        !matches!(self, Op::Incr(_) | Op::HashIncr(..) | Op::SiblingPut { .. })
    }

    /// Whether its answer is a number (`INCRBY`'s and `HINCRBY`'s values, the counts of
    /// the set and hash commands).
    pub(crate) fn answers_integer(&self) -> bool {
        !matches!(
            self,
            Op::Set { .. } | Op::Del | Op::Expire(_) | Op::SetStore(_) | Op::SiblingPut { .. }
        )
    }

    /// Whether its answer is the value the write quorum holds after it (`INCRBY`'s and
    /// `HINCRBY`'s): the coordinating replica counts from its own state, which may not yet
    /// hold an increment another coordinator made durable at W replicas; the targets that
    /// acknowledge answer their merged states, and W + W > N makes one of them hold every
    /// increment acknowledged before this one started.
    pub(crate) fn answers_from_quorum(&self) -> bool {
        matches!(self, Op::Incr(_) | Op::HashIncr(..))
    }

    /// Its answer read from `state` (a join of replicas' states after it), for an
    /// operation that [`answers_from_quorum`](Op::answers_from_quorum); `None` when the
    /// state no longer holds a number there (a newer `SET` or `DEL` superseded the
    /// increment).
    pub(crate) fn answer_of(&self, state: &RedisValue, now_ms: u64) -> Option<i64> {
        let bytes = match self {
            Op::Incr(_) => state.get(now_ms)?,
            Op::HashIncr(field, _) => state.hfield(field, now_ms).ok()??,
            _ => return None,
        };
        parse_integer(&bytes)
    }
}

/// Why an AP request failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ApError {
    /// The value refused the operation (Redis's error text; nothing changed).
    #[error("{0}")]
    Refused(String),
    /// Not enough replicas answered in time; a write may or may not have been stored.
    #[error("{0}")]
    Unavailable(String),
    /// This member's store failed.
    #[error("ap store: {0}")]
    Store(String),
    /// The request asked for something that cannot be (a bucket that does not exist,
    /// properties out of range).
    #[error("{0}")]
    Invalid(String),
}

impl From<ApStoreError> for ApError {
    fn from(e: ApStoreError) -> Self {
        ApError::Store(e.to_string())
    }
}

impl From<ValueError> for ApError {
    fn from(e: ValueError) -> Self {
        ApError::Refused(e.to_string())
    }
}

struct Inner {
    /// Dials the other members' peer URLs (TLS for `https://`).
    dialer: RwLock<concord_tls::Dialer>,
    /// Whether replica calls to `http://` members take direct links (`batch.rs`).
    direct_links: AtomicBool,
    /// Direct links of replica calls this member accepted.
    direct_links_accepted: AtomicU64,
    me: NodeId,
    cluster_id: u64,
    config: ApConfig,
    store: ApStore,
    clock: NodeClock,
    /// The physical clock under `clock` (the system clock; the chaos harness shifts it).
    physical: Arc<OffsetClock>,
    ring: RwLock<Ring>,
    /// Each bucket's properties ([`buckets`]).
    buckets: RwLock<[BucketProps; BUCKETS as usize]>,
    /// Where bucket changes go (the Raft group); `None` until the server sets it.
    catalog: RwLock<Option<Arc<dyn BucketCatalog>>>,
    peers: RwLock<BTreeMap<NodeId, Peer>>,
    healthy: RwLock<BTreeSet<NodeId>>,
    /// Whether the member list has been given (until then the ring holds this member only).
    ring_known: AtomicBool,
    /// Ring changes being handed over ([`handoff`]).
    handoff: RwLock<handoff::Handoff>,
    /// The sessions of this member's clients ([`session`]).
    sessions: session::Sessions,
    counters: Counters,
    /// Where request and command latencies go (`/metrics`); unset: not measured.
    telemetry: std::sync::OnceLock<Arc<crate::metrics::ApTelemetry>>,
}

/// Another member's replica: its URL, a client, and the queues of its batchers
/// ([`batch`]).
struct Peer {
    url: String,
    client: ReplicaClient<Channel>,
    queues: batch::Queues,
}

/// What the AP side has done since the member started.
#[derive(Debug, Default)]
struct Counters {
    hints_replayed: AtomicU64,
    hints_dropped: AtomicU64,
    read_repairs: AtomicU64,
    anti_entropy_rounds: AtomicU64,
    anti_entropy_repaired: AtomicU64,
    anti_entropy_fetched: AtomicU64,
    tombstones_removed: AtomicU64,
    handoff_sent: AtomicU64,
    handoff_removed: AtomicU64,
}

/// The AP side's figures for `/metrics`.
#[derive(Debug, Clone, Default)]
pub struct ApMetrics {
    /// Hints held, per member they are for.
    pub hints_pending: Vec<(NodeId, u64)>,
    /// Hints handed over to their member since start.
    pub hints_replayed: u64,
    /// Hints not kept because the hint store was full for their member.
    pub hints_dropped: u64,
    /// Repairs sent to stale replicas by reads.
    pub read_repairs: u64,
    /// Anti-entropy exchanges completed with another member.
    pub anti_entropy_rounds: u64,
    /// Keys anti-entropy found stale here and repaired.
    pub anti_entropy_repaired: u64,
    /// Keys anti-entropy fetched from other members to compare (repaired or not).
    pub anti_entropy_fetched: u64,
    /// Tombstones removed from this member's replica by collection.
    pub tombstones_removed: u64,
    /// Keys sent to new owners by handoff.
    pub handoff_sent: u64,
    /// Keys removed from this member after handoff gave them to their owners.
    pub handoff_removed: u64,
}

/// A member's AP side; cheap to clone.
#[derive(Clone)]
pub struct ApNode {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for ApNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApNode")
            .field("me", &self.inner.me)
            .finish_non_exhaustive()
    }
}

fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    // Plain data, consistent at any panic point.
    l.read().unwrap_or_else(|e| e.into_inner())
}

fn write<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|e| e.into_inner())
}

impl ApNode {
    /// Opens this member's replica store (`ap.redb` in `data_dir`).
    pub fn open(
        me: NodeId,
        cluster_id: u64,
        data_dir: &Path,
        config: ApConfig,
    ) -> Result<ApNode, ApStoreError> {
        let store = ApStore::open(&data_dir.join("ap.redb"), config.max_hints_per_member)?;
        let physical = Arc::new(OffsetClock::default());
        let ring = Ring::with_nodes(VNODES, [me]).map_err(|e| ApStoreError::Open {
            path: data_dir.into(),
            reason: e.to_string(),
        })?;
        Ok(ApNode {
            inner: Arc::new(Inner {
                me,
                cluster_id,
                config,
                store,
                clock: NodeClock::new(physical.clone(), MAX_CLOCK_OFFSET_MS),
                physical,
                ring: RwLock::new(ring),
                buckets: RwLock::new([BucketProps::default(); BUCKETS as usize]),
                catalog: RwLock::new(None),
                peers: RwLock::new(BTreeMap::new()),
                healthy: RwLock::new([me].into()),
                ring_known: AtomicBool::new(false),
                handoff: RwLock::new(handoff::Handoff::default()),
                sessions: session::Sessions::default(),
                counters: Counters::default(),
                telemetry: std::sync::OnceLock::new(),
                dialer: RwLock::new(concord_tls::Dialer::default()),
                direct_links: AtomicBool::new(true),
                direct_links_accepted: AtomicU64::new(0),
            }),
        })
    }

    /// This member.
    pub fn me(&self) -> NodeId {
        self.inner.me
    }

    /// The replication settings.
    pub fn config(&self) -> ApConfig {
        self.inner.config
    }

    /// How the other members are dialled from now on (their peer TLS); set before
    /// [`ApNode::set_members`].
    pub fn set_dialer(&self, dialer: concord_tls::Dialer) {
        *write(&self.inner.dialer) = dialer;
    }

    /// Whether replica calls to `http://` members go on direct links (the default) or on
    /// the `Calls` stream only (`--peer-direct-links`); set before
    /// [`ApNode::set_members`].
    pub fn set_direct_links(&self, on: bool) {
        self.inner.direct_links.store(on, Ordering::Relaxed);
    }

    /// The peer URL's service of direct links of replica calls (greeting
    /// [`concord_runtime::direct::CALLS_MAGIC`]).
    pub fn direct_calls_service(&self) -> concord_runtime::grpc::DirectService {
        batch::direct_calls_service(self.clone())
    }

    /// How many direct links of replica calls other members opened to this one.
    pub fn direct_links_accepted(&self) -> u64 {
        self.inner.direct_links_accepted.load(Ordering::Relaxed)
    }

    /// Reports request and Redis command latencies to `telemetry` (the first call wins).
    pub fn set_telemetry(&self, telemetry: Arc<crate::metrics::ApTelemetry>) {
        let _ = self.inner.telemetry.set(telemetry);
    }

    /// The telemetry set by [`ApNode::set_telemetry`].
    pub fn telemetry(&self) -> Option<&crate::metrics::ApTelemetry> {
        self.inner.telemetry.get().map(|m| &**m)
    }

    /// The cluster's members (id → peer URL, this member included): the ring is rebuilt
    /// when the set changes, and peers are dialled lazily.
    pub fn set_members(&self, members: &BTreeMap<NodeId, String>) {
        let ids: BTreeSet<NodeId> = members.keys().copied().chain([self.inner.me]).collect();
        if read(&self.inner.ring).nodes().ne(ids.iter().copied()) {
            if let Ok(ring) = Ring::with_nodes(VNODES, ids.iter().copied()) {
                let old = std::mem::replace(&mut *write(&self.inner.ring), ring);
                self.ring_changed(old, !self.ring_is_known());
            }
        }
        self.inner.ring_known.store(true, Ordering::Relaxed);
        let mut peers = write(&self.inner.peers);
        peers.retain(|id, _| members.contains_key(id));
        for (id, url) in members {
            if *id == self.inner.me || peers.get(id).is_some_and(|p| p.url == *url) {
                continue;
            }
            if let Ok(e) = Endpoint::from_shared(url.clone()) {
                // HTTP/2 pings find a connection that died silently (the replica calls'
                // stream would otherwise wait on it until each call's timeout).
                let e = e
                    .connect_timeout(Duration::from_secs(1))
                    .tcp_nodelay(true)
                    .http2_keep_alive_interval(Duration::from_secs(5))
                    .keep_alive_timeout(Duration::from_secs(5))
                    .keep_alive_while_idle(true);
                let channel = read(&self.inner.dialer).lazy(e);
                let client = ReplicaClient::new(channel)
                    .max_decoding_message_size(batch::MAX_MESSAGE)
                    .max_encoding_message_size(batch::MAX_MESSAGE);
                // The batchers end when this peer entry (their queues' senders) goes.
                let direct = match self.inner.direct_links.load(Ordering::Relaxed) {
                    true => concord_runtime::direct::addr_of(url),
                    false => None,
                };
                let queues = batch::start(
                    *id,
                    client.clone(),
                    direct,
                    self.inner.cluster_id,
                    self.inner.config.timeout,
                );
                peers.insert(
                    *id,
                    Peer {
                        url: url.clone(),
                        client,
                        queues,
                    },
                );
            }
        }
    }

    /// The members the failure detector trusts now (this member always is).
    pub fn set_healthy(&self, healthy: BTreeSet<NodeId>) {
        let mut h = healthy;
        h.insert(self.inner.me);
        *write(&self.inner.healthy) = h;
    }

    /// The preference list (`n_val` nodes, fewer while the ring has fewer) of `key` in
    /// `bucket`, and the rest of the ring walk.
    fn placement(&self, bucket: u8, key: &[u8]) -> (Vec<NodeId>, Vec<NodeId>) {
        let n = self.bucket(bucket).n_val as usize;
        let ring = read(&self.inner.ring);
        let mut all = ring.preference_list(key, ring.node_count());
        let rest = all.split_off(n.min(all.len()));
        (all, rest)
    }

    /// An error until the member list has been put in force: an AP-only member that has
    /// not yet read the cluster metadata must not place keys on a ring of itself alone.
    fn ring_ready(&self) -> Result<(), ApError> {
        if self.ring_is_known() {
            Ok(())
        } else {
            Err(ApError::Unavailable(
                "this member does not know the ring yet (it has not read the cluster \
                 metadata from a Raft member)"
                    .into(),
            ))
        }
    }

    /// Whether the member list has been put in force (at start for a Raft member; once
    /// the metadata has been read for an AP-only one).
    pub fn ring_is_known(&self) -> bool {
        self.inner.ring_known.load(Ordering::Relaxed)
    }

    fn is_healthy(&self, id: NodeId) -> bool {
        read(&self.inner.healthy).contains(&id)
    }

    fn client(&self, id: NodeId) -> Option<ReplicaClient<Channel>> {
        read(&self.inner.peers).get(&id).map(|p| p.client.clone())
    }

    /// The queues of `id`'s batchers.
    fn queues(&self, id: NodeId) -> Option<batch::Queues> {
        read(&self.inner.peers).get(&id).map(|p| p.queues.clone())
    }

    /// Applies `op` to this replica's state of `key` (joined with `base` first), stamped
    /// after the key's epoch; the state stored and, for `INCRBY`, `SADD` and `SREM`, the
    /// answer.
    pub async fn apply_local(
        &self,
        bucket: u8,
        key: &[u8],
        op: Op,
        base: Option<RedisValue>,
    ) -> Result<(RedisValue, Option<i64>), ApError> {
        let answer = self.start_apply_local(bucket, key, op, base, None, None);
        answer.await.map_err(|_| stopped())?
    }

    /// [`ApNode::apply_local`], queued for the group commit now; the answer comes
    /// through the receiver once the commit is durable. With `applied`, a `SET`, `DEL` or
    /// `EXPIRE` also sends the new state there as soon as it is computed in the commit's
    /// transaction, before the commit (an `INCR` never does: see `coordinate.rs`). With
    /// `not_after` (ms since the Unix epoch), an operation that reaches the store after
    /// that time is not applied (guarantee 5).
    fn start_apply_local(
        &self,
        bucket: u8,
        key: &[u8],
        op: Op,
        base: Option<RedisValue>,
        applied: Option<tokio::sync::oneshot::Sender<RedisValue>>,
        not_after: Option<u64>,
    ) -> tokio::sync::oneshot::Receiver<Result<(RedisValue, Option<i64>), ApError>> {
        let now = self.inner.clock.now();
        let now_ms = now.physical_ms;
        let (tx, rx) = tokio::sync::oneshot::channel();
        let clock = self.clone();
        let change = move |s: &mut RedisValue| {
            // The store's actor, not the member's id (guarantee 4), read on the commit
            // thread that makes the change, after any removal queued before it.
            let me = NodeId(clock.inner.store.actor());
            if not_after.is_some_and(|t| clock.now_ms() > t) {
                return Err(ApError::Unavailable(
                    "the write reached this replica after its coordinator stopped waiting; \
                     not applied"
                        .into(),
                ));
            }
            if let Some(base) = &base {
                s.merge(base);
            }
            // Newer than anything this replica has seen of the key (guarantee 2).
            let stamp = (now.pack().max(s.epoch().0.saturating_add(1)), me);
            match op {
                Op::Set { value, expiry } => {
                    // KEEPTTL keeps a deadline that is still ahead, not one that passed.
                    let expiry = match expiry {
                        SetExpiry::Keep if !s.exists(now_ms) => SetExpiry::Clear,
                        e => e,
                    };
                    s.set(value, stamp, me, expiry);
                }
                Op::Del => s.delete(stamp),
                Op::Incr(delta) => {
                    return s
                        .incr(delta, me, stamp, now_ms)
                        .map(Some)
                        .map_err(ApError::from)
                }
                Op::Expire(e) => s.expire(e, me),
                Op::SetAdd(members) => {
                    return s
                        .sadd(&members, me, stamp, now_ms)
                        .map(Some)
                        .map_err(ApError::from)
                }
                Op::SetRemove(members) => {
                    return s
                        .srem(&members, stamp, now_ms)
                        .map(Some)
                        .map_err(ApError::from)
                }
                Op::SetStore(members) => s.replace_set(&members, stamp, me),
                Op::HashSet(pairs) => {
                    return s
                        .hset(&pairs, me, stamp, now_ms)
                        .map(Some)
                        .map_err(ApError::from)
                }
                Op::HashSetNx(field, value) => {
                    return s
                        .hsetnx(&field, &value, me, stamp, now_ms)
                        .map(Some)
                        .map_err(ApError::from)
                }
                Op::HashDel(fields) => {
                    return s
                        .hdel(&fields, stamp, now_ms)
                        .map(Some)
                        .map_err(ApError::from)
                }
                Op::HashIncr(field, delta) => {
                    return s
                        .hincrby(&field, delta, me, stamp, now_ms)
                        .map(Some)
                        .map_err(ApError::from)
                }
                Op::SiblingPut { context, value } => s.sibling_put(&context, value, me),
            }
            if let Some(applied) = applied {
                let _ = applied.send(s.clone());
            }
            Ok(None)
        };
        // The commit thread answers; no thread waits meanwhile.
        self.inner
            .store
            .update_then(bucket, key, change, move |out| {
                let answer = match out {
                    Ok(Ok((integer, state))) => Ok((state, integer)),
                    Ok(Err(e)) => Err(e),
                    Err(e) => Err(ApError::from(e)),
                };
                let _ = tx.send(answer);
            });
        rx
    }

    /// Merges `state` into this replica's `key`, or keeps it as a hint for `hint_for`.
    pub async fn merge_local(
        &self,
        bucket: u8,
        key: &[u8],
        state: RedisValue,
        hint_for: Option<NodeId>,
    ) -> Result<(), ApError> {
        match hint_for {
            Some(owner) if owner != self.inner.me => {
                let (node, key) = (self.clone(), key.to_vec());
                let kept =
                    blocking(move || Ok(node.inner.store.store_hint(owner, bucket, &key, &state)))
                        .await?;
                if let Err(e) = kept {
                    if matches!(e, ApStoreError::HintsFull { .. }) {
                        self.inner
                            .counters
                            .hints_dropped
                            .fetch_add(1, Ordering::Relaxed);
                    }
                    return Err(e.into());
                }
                Ok(())
            }
            _ => {
                let (tx, rx) = tokio::sync::oneshot::channel();
                let create = !self.collectable(&state, self.now_ms());
                self.inner
                    .store
                    .merge_then(bucket, key, state, create, move |out| {
                        let _ = tx.send(out);
                    });
                rx.await.map_err(|_| stopped())??;
                Ok(())
            }
        }
    }

    /// This replica's state of `key`.
    pub fn read_local(&self, bucket: u8, key: &[u8]) -> Result<Option<RedisValue>, ApError> {
        Ok(self.inner.store.get(bucket, key)?)
    }

    /// Each ring member's share of the keys it is the first replica of (0 to 1), and
    /// whether gossip sees it alive.
    pub fn ring_shares(&self) -> Vec<(NodeId, f64, bool)> {
        let owned = read(&self.inner.ring).ownership();
        owned
            .into_iter()
            .map(|(id, tokens)| (id, tokens as f64 / 2f64.powi(64), self.is_healthy(id)))
            .collect()
    }

    /// The AP side's figures.
    pub fn metrics(&self) -> ApMetrics {
        let c = &self.inner.counters;
        ApMetrics {
            hints_pending: self.inner.store.hint_owners(),
            hints_replayed: c.hints_replayed.load(Ordering::Relaxed),
            hints_dropped: c.hints_dropped.load(Ordering::Relaxed),
            read_repairs: c.read_repairs.load(Ordering::Relaxed),
            anti_entropy_rounds: c.anti_entropy_rounds.load(Ordering::Relaxed),
            anti_entropy_repaired: c.anti_entropy_repaired.load(Ordering::Relaxed),
            anti_entropy_fetched: c.anti_entropy_fetched.load(Ordering::Relaxed),
            tombstones_removed: c.tombstones_removed.load(Ordering::Relaxed),
            handoff_sent: c.handoff_sent.load(Ordering::Relaxed),
            handoff_removed: c.handoff_removed.load(Ordering::Relaxed),
        }
    }

    /// Runs `each` on every page of this replica's keys ([`SCAN_PAGE`] at a time, bucket
    /// by bucket, in the store's order) one page after the other; the sum of what the
    /// pages return. The passes over a whole replica (handoff, tombstone collection) use it.
    pub(crate) async fn for_each_page<F, Fut>(&self, each: F) -> Result<usize, ApError>
    where
        F: Fn(ApNode, u8, Vec<(Vec<u8>, RedisValue)>) -> Fut,
        Fut: std::future::Future<Output = usize>,
    {
        let mut sum = 0;
        for bucket in 0..BUCKETS as u8 {
            let mut after: Option<Vec<u8>> = None;
            loop {
                let node = self.clone();
                let from = after.clone();
                let page = blocking(move || {
                    Ok(node.inner.store.scan(bucket, from.as_deref(), SCAN_PAGE)?)
                })
                .await?;
                let done = page.len() < SCAN_PAGE;
                after = page.last().map(|(k, _)| k.clone());
                sum += each(self.clone(), bucket, page).await;
                if done {
                    break;
                }
            }
        }
        Ok(sum)
    }

    /// Shifts this member's physical clock `ms` from the system clock's reading (the
    /// chaos harness's clock-skew fault; 0 heals). The HLC never goes back when it does.
    pub fn set_clock_offset(&self, ms: i64) {
        self.inner.physical.set_offset(ms);
    }

    /// The physical time of this member's clock, in ms since the Unix epoch.
    pub fn now_ms(&self) -> u64 {
        self.inner.clock.now().physical_ms
    }

    /// The `concord.peer.v1.Replica` service.
    pub fn service(&self) -> ReplicaServer<ReplicaService> {
        ReplicaServer::new(ReplicaService { node: self.clone() })
            .max_decoding_message_size(batch::MAX_MESSAGE)
            .max_encoding_message_size(batch::MAX_MESSAGE)
    }
}

fn stopped() -> ApError {
    ApError::Store("the store stopped before answering".into())
}

/// Runs blocking store work off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ApError> + Send + 'static,
) -> Result<T, ApError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApError::Store(format!("store task failed: {e}")))?
}

/// `Op` to its wire form.
pub(crate) fn op_to_wire(op: &Op) -> replica_apply::Op {
    match op {
        Op::Set { value, expiry } => {
            let (kind, at) = match expiry {
                SetExpiry::Clear => (0, 0),
                SetExpiry::At(at) => (1, *at),
                SetExpiry::Keep => (2, 0),
            };
            replica_apply::Op::Set(ApSet {
                value: value.clone().into(),
                expiry: kind,
                expire_at_ms: at,
            })
        }
        Op::Del => replica_apply::Op::Del(ApDel {}),
        Op::Incr(delta) => replica_apply::Op::Incr(ApIncr { delta: *delta }),
        Op::SetAdd(members) => replica_apply::Op::Sadd(ApMembers {
            members: members.iter().map(|m| m.clone().into()).collect(),
        }),
        Op::SetRemove(members) => replica_apply::Op::Srem(ApMembers {
            members: members.iter().map(|m| m.clone().into()).collect(),
        }),
        Op::SetStore(members) => replica_apply::Op::SetStore(ApMembers {
            members: members.iter().map(|m| m.clone().into()).collect(),
        }),
        Op::HashSet(pairs) => replica_apply::Op::Hset(ApHashSet {
            fields: pairs.iter().map(|(f, _)| f.clone().into()).collect(),
            values: pairs.iter().map(|(_, v)| v.clone().into()).collect(),
            nx: false,
        }),
        Op::HashSetNx(field, value) => replica_apply::Op::Hset(ApHashSet {
            fields: vec![field.clone().into()],
            values: vec![value.clone().into()],
            nx: true,
        }),
        Op::HashDel(fields) => replica_apply::Op::Hdel(ApMembers {
            members: fields.iter().map(|m| m.clone().into()).collect(),
        }),
        Op::HashIncr(field, delta) => replica_apply::Op::Hincrby(ApHashIncr {
            field: field.clone().into(),
            delta: *delta,
        }),
        Op::SiblingPut { context, value } => replica_apply::Op::SiblingPut(ApSiblingPut {
            context: siblings::context_to_bytes(context).into(),
            value: value.clone().unwrap_or_default().into(),
            delete: value.is_none(),
        }),
        Op::Expire(e) => replica_apply::Op::Expire(match e {
            Expiry::Never => ApExpire {
                persist: true,
                at_ms: 0,
            },
            Expiry::At(at) => ApExpire {
                persist: false,
                at_ms: *at,
            },
        }),
    }
}

pub(crate) fn op_from_wire(op: replica_apply::Op) -> Result<Op, Status> {
    Ok(match op {
        replica_apply::Op::Set(s) => Op::Set {
            value: s.value.to_vec(),
            expiry: match s.expiry {
                0 => SetExpiry::Clear,
                1 => SetExpiry::At(s.expire_at_ms),
                2 => SetExpiry::Keep,
                other => {
                    return Err(Status::invalid_argument(format!(
                        "unknown expiry kind {other}"
                    )))
                }
            },
        },
        replica_apply::Op::Del(_) => Op::Del,
        replica_apply::Op::Incr(i) => Op::Incr(i.delta),
        replica_apply::Op::Sadd(m) => Op::SetAdd(m.members.into_iter().map(Vec::from).collect()),
        replica_apply::Op::Srem(m) => Op::SetRemove(m.members.into_iter().map(Vec::from).collect()),
        replica_apply::Op::SetStore(m) => {
            Op::SetStore(m.members.into_iter().map(Vec::from).collect())
        }
        replica_apply::Op::Hset(h) => {
            if h.fields.len() != h.values.len() || h.fields.is_empty() {
                return Err(Status::invalid_argument(format!(
                    "HSET with {} fields and {} values",
                    h.fields.len(),
                    h.values.len()
                )));
            }
            let mut pairs: Vec<(Vec<u8>, Vec<u8>)> = h
                .fields
                .into_iter()
                .map(Vec::from)
                .zip(h.values.into_iter().map(Vec::from))
                .collect();
            match (h.nx, pairs.len()) {
                (false, _) => Op::HashSet(pairs),
                (true, 1) => {
                    let (f, v) = pairs.remove(0);
                    Op::HashSetNx(f, v)
                }
                (true, n) => {
                    return Err(Status::invalid_argument(format!("HSETNX with {n} fields")))
                }
            }
        }
        replica_apply::Op::Hdel(m) => Op::HashDel(m.members.into_iter().map(Vec::from).collect()),
        replica_apply::Op::Hincrby(h) => Op::HashIncr(h.field.to_vec(), h.delta),
        replica_apply::Op::SiblingPut(p) => Op::SiblingPut {
            context: siblings::context_from_bytes(&p.context).map_err(Status::invalid_argument)?,
            value: (!p.delete).then(|| p.value.to_vec()),
        },
        replica_apply::Op::Expire(e) if e.persist => Op::Expire(Expiry::Never),
        replica_apply::Op::Expire(e) => Op::Expire(Expiry::At(e.at_ms)),
    })
}

pub(crate) fn bucket_of(bucket: u32) -> Result<u8, Status> {
    if bucket < BUCKETS {
        Ok(bucket as u8)
    } else {
        Err(Status::invalid_argument(format!(
            "bucket {bucket} out of range (0..{BUCKETS})"
        )))
    }
}

fn status(e: ApError) -> Status {
    match e {
        ApError::Store(m) => Status::internal(m),
        ApError::Refused(m) | ApError::Unavailable(m) => Status::unavailable(m),
        ApError::Invalid(m) => Status::invalid_argument(m),
    }
}

/// The replica service: this member's store, for the coordinators of other members.
#[derive(Debug, Clone)]
pub struct ReplicaService {
    node: ApNode,
}

impl ReplicaService {
    fn check_cluster(&self, cluster_id: u64) -> Result<(), Status> {
        self.node
            .check_cluster(cluster_id)
            .map_err(Status::failed_precondition)
    }
}

#[tonic::async_trait]
impl Replica for ReplicaService {
    async fn apply(
        &self,
        request: Request<ReplicaApply>,
    ) -> Result<Response<ReplicaState>, Status> {
        let r = request.into_inner();
        self.check_cluster(r.cluster_id)?;
        Ok(Response::new(self.node.start_apply(r).await))
    }

    async fn merge(
        &self,
        request: Request<ReplicaMerge>,
    ) -> Result<Response<ReplicaMergeAck>, Status> {
        let r = request.into_inner();
        self.check_cluster(r.cluster_id)?;
        self.node.start_merge(r).await.map_err(status)?;
        Ok(Response::new(ReplicaMergeAck {}))
    }

    async fn apply_batch(
        &self,
        request: Request<ReplicaApplyBatch>,
    ) -> Result<Response<ReplicaStates>, Status> {
        let r = request.into_inner();
        self.check_cluster(r.cluster_id)?;
        Ok(Response::new(self.node.start_apply_batch(r.applies).await))
    }

    async fn read_batch(
        &self,
        request: Request<ReplicaReadBatch>,
    ) -> Result<Response<ReplicaStates>, Status> {
        let r = request.into_inner();
        self.check_cluster(r.cluster_id)?;
        Ok(Response::new(self.node.read_batch(&r.reads)))
    }

    async fn merge_batch(
        &self,
        request: Request<ReplicaMergeBatch>,
    ) -> Result<Response<ReplicaMergeBatchAck>, Status> {
        let r = request.into_inner();
        self.check_cluster(r.cluster_id)?;
        Ok(Response::new(self.node.start_merge_batch(r.merges).await))
    }

    async fn calls(
        &self,
        request: Request<Streaming<ReplicaCall>>,
    ) -> Result<Response<BoxStream<ReplicaAnswer>>, Status> {
        let answers = batch::serve_calls(self.node.clone(), request.into_inner());
        Ok(Response::new(Box::pin(answers)))
    }

    async fn scan(&self, request: Request<ReplicaScan>) -> Result<Response<ReplicaKeys>, Status> {
        let r = request.into_inner();
        self.check_cluster(r.cluster_id)?;
        let bucket = bucket_of(r.bucket)?;
        let limit = match r.limit {
            0 => SCAN_PAGE,
            n => (n as usize).clamp(2, SCAN_PAGE),
        };
        let node = self.node.clone();
        let (page, done) = blocking(move || {
            let store = &node.inner.store;
            if r.by_position {
                return Ok(store.scan_positions(bucket, r.from_position, limit)?);
            }
            let page = store.scan(bucket, r.has_after.then_some(&r.after[..]), limit)?;
            let done = page.len() < limit;
            Ok((page, done))
        })
        .await
        .map_err(status)?;
        Ok(Response::new(ReplicaKeys {
            digest: Default::default(),
            done,
            by_position: r.by_position,
            keys: page
                .into_iter()
                .map(|(key, state)| ReplicaKey {
                    key: key.into(),
                    state: state_to_bytes(&state).into(),
                })
                .collect(),
        }))
    }

    async fn tree(
        &self,
        request: Request<ReplicaTree>,
    ) -> Result<Response<ReplicaTreeLeaves>, Status> {
        let r = request.into_inner();
        self.check_cluster(r.cluster_id)?;
        let bucket = bucket_of(r.bucket)?;
        let store = &self.node.inner.store;
        let root = store.tree_root(bucket).map(u128::to_be_bytes);
        if root.is_some_and(|root| r.root.as_ref() == root.as_slice()) {
            return Ok(Response::new(ReplicaTreeLeaves {
                same: true,
                leaves: Default::default(),
            }));
        }
        let leaves = store.tree_leaves(bucket).unwrap_or_default();
        Ok(Response::new(ReplicaTreeLeaves {
            same: false,
            leaves: leaves
                .iter()
                .flat_map(|h| h.to_be_bytes())
                .collect::<Vec<u8>>()
                .into(),
        }))
    }

    async fn leaf(&self, request: Request<ReplicaLeaf>) -> Result<Response<ReplicaKeys>, Status> {
        let r = request.into_inner();
        self.check_cluster(r.cluster_id)?;
        let bucket = bucket_of(r.bucket)?;
        let node = self.node.clone();
        let leaf = r.leaf as usize;
        let spans: Vec<(u64, u64)> = r.spans.iter().map(|s| (s.lo, s.hi)).collect();
        let entries = blocking(move || Ok(node.inner.store.leaf(bucket, leaf)?))
            .await
            .map_err(status)?;
        let entries = anti_entropy::within(entries, &spans);
        if r.digest_only {
            return Ok(Response::new(ReplicaKeys {
                done: true,
                keys: Vec::new(),
                digest: anti_entropy::digest(&entries).to_vec().into(),
                by_position: false,
            }));
        }
        Ok(Response::new(ReplicaKeys {
            done: true,
            digest: Default::default(),
            by_position: false,
            keys: entries
                .into_iter()
                .map(|(key, state)| ReplicaKey {
                    key: key.into(),
                    state: state_to_bytes(&state).into(),
                })
                .collect(),
        }))
    }

    async fn read(&self, request: Request<ReplicaRead>) -> Result<Response<ReplicaState>, Status> {
        let r = request.into_inner();
        self.check_cluster(r.cluster_id)?;
        Ok(Response::new(self.node.read_answer(&r)))
    }

    async fn reap(
        &self,
        request: Request<ReplicaReap>,
    ) -> Result<Response<ReplicaReapAck>, Status> {
        let r = request.into_inner();
        self.check_cluster(r.cluster_id)?;
        let bucket = bucket_of(r.bucket)?;
        let state = concord_storage::ap::state_from_bytes(&r.state)
            .map_err(|e| Status::invalid_argument(format!("reap: {e}")))?;
        let removed = self
            .node
            .reap_local(bucket, r.key.to_vec(), state)
            .await
            .map_err(status)?;
        Ok(Response::new(ReplicaReapAck { removed }))
    }

    async fn paxos(
        &self,
        request: Request<ReplicaPaxos>,
    ) -> Result<Response<ReplicaPaxosReply>, Status> {
        let r = request.into_inner();
        self.check_cluster(r.cluster_id)?;
        let bucket = bucket_of(r.bucket)?;
        let step = cas::step_from_wire(&r)?;
        let reply = self
            .node
            .paxos_local(bucket, &r.key, step)
            .await
            .map_err(status)?;
        Ok(Response::new(cas::reply_to_wire(&reply)))
    }
}
