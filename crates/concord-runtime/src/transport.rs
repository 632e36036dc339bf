//! The peer transport seam.
//!
//! * [`PeerTransport`]: what a node's connection layer offers, one connection per pair of
//!   nodes shared by every Raft group (and, later, every other protocol): send a batch of
//!   one group's messages to a peer.
//! * [`Transport`]: what one group's driver sees, a [`PeerTransport`] bound to its group
//!   ([`GroupTransport`]).
//! * [`Router`]: the receiving side: inbound batches go to the inbox of their group; a
//!   peer's connection reset is reported to every group (each decides whether that peer
//!   was its leader).
//! * [`LocalNetwork`]: an in-process network of nodes through tokio channels, with switches
//!   to cut links (all groups, or one group) for tests.
//!
//! # Guarantees
//!
//! 1. [`Transport::send`] never blocks: a peer whose queue is full or whose link is down
//!    is reported as unreachable (Raft retries; messages may be lost, never duplicated by
//!    the transport, and never reordered within one link and group — except, on the
//!    network transport, around a switch between a direct link and the gRPC stream,
//!    [`crate::direct`]: Raft tolerates reordering, as it tolerates loss).
//! 2. Every batch crossing a [`LocalNetwork`] goes through the wire encoding
//!    ([`crate::codec::encode_batch`] / [`crate::codec::decode_batch`]), so tests exercise
//!    exactly the bytes a network transport sends.
//! 3. A batch for a group this node does not host is dropped (logged), never delivered to
//!    another group.
//! 4. Link state is symmetric only if the test makes it so: [`LocalNetwork::cut`] drops
//!    one direction, [`LocalNetwork::isolate`] both directions of every link of a node.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use concord_raft::{Message, NodeId};
use tokio::sync::mpsc;

use crate::codec;

/// Capacity, in batches, of a group's inbound queue.
pub const INBOX_CAPACITY: usize = 4096;

/// Identifies a Raft group on a node (the etcd keyspace is group [`DEFAULT_GROUP`]).
pub type GroupId = u64;

/// The group of a node's first (or only) Raft group.
pub const DEFAULT_GROUP: GroupId = 0;

/// The peer protocol version this build speaks: the encoding of Raft messages inside a
/// batch ([`crate::codec`]). A receiver refuses a stream of another version.
pub const PEER_PROTOCOL_VERSION: u32 = 1;

/// Why a batch was not handed to the network.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TransportError {
    /// The peer cannot be reached now (unknown, link down, or its queue is full).
    #[error("peer {0} unreachable")]
    Unreachable(NodeId),
}

/// Sends one group's Raft messages to peers.
pub trait Transport: Send + Sync + 'static {
    /// Queues `msgs` (all addressed to `to`) for delivery. `Ok` means queued, not
    /// delivered; `Err` means the peer is unreachable now and Raft should be told so.
    fn send(&self, to: NodeId, msgs: Vec<Message>) -> Result<(), TransportError>;
}

/// A node's connection layer: one connection per peer, shared by every group.
pub trait PeerTransport: Send + Sync + 'static {
    /// Queues `msgs` of group `group` for peer `to`; see [`Transport::send`].
    fn send_group(
        &self,
        to: NodeId,
        group: GroupId,
        msgs: Vec<Message>,
    ) -> Result<(), TransportError>;
}

/// A [`PeerTransport`] bound to one group: what that group's driver sends through.
pub struct GroupTransport {
    peers: Arc<dyn PeerTransport>,
    group: GroupId,
}

impl GroupTransport {
    /// Group `group`'s view of `peers`.
    pub fn new(peers: Arc<dyn PeerTransport>, group: GroupId) -> Self {
        Self { peers, group }
    }
}

impl Transport for GroupTransport {
    fn send(&self, to: NodeId, msgs: Vec<Message>) -> Result<(), TransportError> {
        self.peers.send_group(to, self.group, msgs)
    }
}

/// The receiving end of a group's inbound queue: batches of messages from peers.
pub type Inbox = mpsc::Receiver<Vec<Message>>;

/// Called with a peer's id when its connection reset and did not come back.
pub type PeerDownHook = Arc<dyn Fn(NodeId) + Send + Sync>;

/// Why an inbound batch was not delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RouteError {
    /// No group with this id runs on this node.
    #[error("no raft group {0} on this node")]
    UnknownGroup(GroupId),
    /// The group's inbox is full; the batch is dropped (Raft retransmits).
    #[error("raft group {0} is not keeping up; batch dropped")]
    Full(GroupId),
    /// The group stopped.
    #[error("raft group {0} stopped")]
    Closed(GroupId),
}

#[derive(Default)]
struct Routes {
    inboxes: BTreeMap<GroupId, mpsc::Sender<Vec<Message>>>,
    hooks: BTreeMap<GroupId, PeerDownHook>,
}

/// The inbound side of a node: routes batches to their group's inbox.
#[derive(Clone, Default)]
pub struct Router {
    routes: Arc<RwLock<Routes>>,
}

impl std::fmt::Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let groups: Vec<GroupId> = self.read().inboxes.keys().copied().collect();
        f.debug_struct("Router").field("groups", &groups).finish()
    }
}

impl Router {
    /// A router with no groups.
    pub fn new() -> Self {
        Self::default()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Routes> {
        // Plain data behind the lock; a panic elsewhere leaves it consistent.
        self.routes.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Routes> {
        self.routes.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers group `group` (again, after a restart: the old inbox is replaced) and
    /// returns its inbox.
    pub fn register(&self, group: GroupId) -> Inbox {
        let (tx, rx) = mpsc::channel(INBOX_CAPACITY);
        self.write().inboxes.insert(group, tx);
        rx
    }

    /// Removes group `group`: its batches are dropped from now on.
    pub fn unregister(&self, group: GroupId) {
        let mut r = self.write();
        r.inboxes.remove(&group);
        r.hooks.remove(&group);
    }

    /// Sets group `group`'s fast-failover hook (typically
    /// [`crate::RaftHandle::report_peer_down`]).
    pub fn set_peer_down_hook(&self, group: GroupId, hook: PeerDownHook) {
        self.write().hooks.insert(group, hook);
    }

    /// Hands a batch to group `group`'s inbox, without waiting.
    pub fn route(&self, group: GroupId, msgs: Vec<Message>) -> Result<(), RouteError> {
        // `try_send` never waits, so it runs under the read lock (no sender clone per batch).
        let routes = self.read();
        let inbox = routes
            .inboxes
            .get(&group)
            .ok_or(RouteError::UnknownGroup(group))?;
        inbox.try_send(msgs).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => RouteError::Full(group),
            mpsc::error::TrySendError::Closed(_) => RouteError::Closed(group),
        })
    }

    /// Peer `id`'s connection reset and did not come back: tells every group.
    pub fn peer_down(&self, id: NodeId) {
        let hooks: Vec<PeerDownHook> = self.read().hooks.values().cloned().collect();
        for hook in hooks {
            hook(id);
        }
    }
}

/// A node's end of the in-process wire: encoded batches tagged with their group.
type Wire = mpsc::Sender<(GroupId, Vec<u8>)>;

#[derive(Default)]
struct NetState {
    nodes: BTreeMap<NodeId, (Wire, Router)>,
    // Directed links (from, to) that drop everything.
    cut: BTreeSet<(NodeId, NodeId)>,
    // Directed links (from, to) that drop one group's messages.
    cut_groups: BTreeSet<(NodeId, NodeId, GroupId)>,
}

/// An in-process network of nodes (for tests and single-process clusters).
#[derive(Clone, Default)]
pub struct LocalNetwork {
    state: Arc<Mutex<NetState>>,
}

impl std::fmt::Debug for LocalNetwork {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalNetwork").finish_non_exhaustive()
    }
}

impl LocalNetwork {
    /// An empty network.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, NetState> {
        // Plain data behind the lock; a panic elsewhere leaves it consistent.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Attaches node `id` (again, after a restart: its old connection is replaced) and
    /// returns its connection and its router, with which it registers its groups.
    pub fn attach(&self, id: NodeId) -> (LocalTransport, Router) {
        let (wire_tx, mut wire_rx) = mpsc::channel::<(GroupId, Vec<u8>)>(INBOX_CAPACITY);
        let router = Router::new();
        // Decoding happens on the receiving side, like a network server's handler.
        let r = router.clone();
        tokio::spawn(async move {
            while let Some((group, bytes)) = wire_rx.recv().await {
                match codec::decode_batch(&bytes) {
                    Ok(msgs) => {
                        if let Err(e) = r.route(group, msgs) {
                            tracing::debug!(node = %id, error = %e, "inbound batch dropped");
                        }
                    }
                    Err(e) => tracing::warn!(node = %id, error = %e, "dropping undecodable batch"),
                }
            }
        });
        self.lock().nodes.insert(id, (wire_tx, router.clone()));
        (
            LocalTransport {
                from: id,
                net: self.clone(),
            },
            router,
        )
    }

    /// Attaches node `id` with one group, [`DEFAULT_GROUP`]: its transport and inbox.
    pub fn register(&self, id: NodeId) -> (GroupTransport, Inbox) {
        let (transport, router) = self.attach(id);
        let inbox = router.register(DEFAULT_GROUP);
        (
            GroupTransport::new(Arc::new(transport), DEFAULT_GROUP),
            inbox,
        )
    }

    /// Drops every message from `from` to `to` until [`LocalNetwork::heal`].
    pub fn cut(&self, from: NodeId, to: NodeId) {
        self.lock().cut.insert((from, to));
    }

    /// Drops group `group`'s messages from `from` to `to` until [`LocalNetwork::heal`].
    pub fn cut_group(&self, from: NodeId, to: NodeId, group: GroupId) {
        self.lock().cut_groups.insert((from, to, group));
    }

    /// Cuts both directions of every link between `id` and the other attached nodes.
    pub fn isolate(&self, id: NodeId) {
        let mut s = self.lock();
        let others: Vec<NodeId> = s.nodes.keys().copied().filter(|&o| o != id).collect();
        for o in others {
            s.cut.insert((id, o));
            s.cut.insert((o, id));
        }
    }

    /// Restores every link.
    pub fn heal(&self) {
        let mut s = self.lock();
        s.cut.clear();
        s.cut_groups.clear();
    }

    fn deliver(
        &self,
        from: NodeId,
        to: NodeId,
        group: GroupId,
        msgs: &[Message],
    ) -> Result<(), TransportError> {
        let wire = {
            let s = self.lock();
            if s.cut.contains(&(from, to)) || s.cut_groups.contains(&(from, to, group)) {
                return Err(TransportError::Unreachable(to));
            }
            s.nodes.get(&to).map(|(w, _)| w.clone())
        };
        let Some(wire) = wire else {
            return Err(TransportError::Unreachable(to));
        };
        wire.try_send((group, codec::encode_batch(msgs)))
            .map_err(|_| TransportError::Unreachable(to))
    }
}

/// One node's sending side of a [`LocalNetwork`].
#[derive(Clone, Debug)]
pub struct LocalTransport {
    from: NodeId,
    net: LocalNetwork,
}

impl PeerTransport for LocalTransport {
    fn send_group(
        &self,
        to: NodeId,
        group: GroupId,
        msgs: Vec<Message>,
    ) -> Result<(), TransportError> {
        self.net.deliver(self.from, to, group, &msgs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use concord_raft::MessageType;

    fn msg(from: u64, to: u64, term: u64) -> Message {
        Message {
            msg_type: MessageType::Heartbeat,
            from: NodeId(from),
            to: NodeId(to),
            term,
            ..Message::default()
        }
    }

    #[tokio::test]
    async fn delivers_in_order_and_honours_cuts() {
        let net = LocalNetwork::new();
        let (t1, _in1) = net.register(NodeId(1));
        let (_t2, mut in2) = net.register(NodeId(2));
        t1.send(NodeId(2), vec![msg(1, 2, 1)]).unwrap();
        t1.send(NodeId(2), vec![msg(1, 2, 2), msg(1, 2, 3)])
            .unwrap();
        assert_eq!(in2.recv().await.unwrap(), vec![msg(1, 2, 1)]);
        assert_eq!(in2.recv().await.unwrap(), vec![msg(1, 2, 2), msg(1, 2, 3)]);
        net.cut(NodeId(1), NodeId(2));
        assert_eq!(
            t1.send(NodeId(2), vec![msg(1, 2, 4)]),
            Err(TransportError::Unreachable(NodeId(2)))
        );
        assert_eq!(
            t1.send(NodeId(3), vec![msg(1, 3, 4)]),
            Err(TransportError::Unreachable(NodeId(3)))
        );
        net.heal();
        t1.send(NodeId(2), vec![msg(1, 2, 5)]).unwrap();
        assert_eq!(in2.recv().await.unwrap(), vec![msg(1, 2, 5)]);
        net.isolate(NodeId(2));
        assert!(t1.send(NodeId(2), vec![msg(1, 2, 6)]).is_err());
    }

    #[tokio::test]
    async fn groups_share_a_connection_and_are_routed_apart() {
        let net = LocalNetwork::new();
        let (t1, _r1) = net.attach(NodeId(1));
        let (_t2, r2) = net.attach(NodeId(2));
        let mut a = r2.register(10);
        let mut b = r2.register(20);
        t1.send_group(NodeId(2), 20, vec![msg(1, 2, 1)]).unwrap();
        t1.send_group(NodeId(2), 10, vec![msg(1, 2, 2)]).unwrap();
        assert_eq!(a.recv().await.unwrap(), vec![msg(1, 2, 2)]);
        assert_eq!(b.recv().await.unwrap(), vec![msg(1, 2, 1)]);
        // A group-only cut leaves the other group's traffic alone.
        net.cut_group(NodeId(1), NodeId(2), 10);
        assert!(t1.send_group(NodeId(2), 10, vec![msg(1, 2, 3)]).is_err());
        t1.send_group(NodeId(2), 20, vec![msg(1, 2, 4)]).unwrap();
        assert_eq!(b.recv().await.unwrap(), vec![msg(1, 2, 4)]);
        // A batch for a group the node does not host is dropped, not misdelivered.
        t1.send_group(NodeId(2), 30, vec![msg(1, 2, 5)]).unwrap();
        assert_eq!(r2.route(30, vec![]), Err(RouteError::UnknownGroup(30)));
        assert!(a.try_recv().is_err());
    }

    #[test]
    fn peer_down_reaches_every_group() {
        let router = Router::new();
        let seen = Arc::new(Mutex::new(Vec::new()));
        for g in [1, 2] {
            let _inbox = router.register(g);
            let seen = seen.clone();
            router.set_peer_down_hook(g, Arc::new(move |id| seen.lock().unwrap().push((g, id))));
        }
        router.peer_down(NodeId(7));
        assert_eq!(*seen.lock().unwrap(), vec![(1, NodeId(7)), (2, NodeId(7))]);
    }
}
