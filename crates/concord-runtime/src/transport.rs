//! The peer transport seam: [`Transport`] sends batches of Raft messages to peers, and an
//! in-process implementation, [`LocalNetwork`], connects nodes of one process through tokio
//! channels, with switches to cut links, partition and drop messages in tests.
//!
//! # Guarantees
//!
//! 1. [`Transport::send`] never blocks: a peer whose queue is full or whose link is down
//!    is reported as unreachable (Raft retries; messages may be lost, never reordered
//!    within one link, never duplicated by the transport).
//! 2. Every batch crossing a [`LocalNetwork`] goes through the wire encoding
//!    ([`crate::codec::encode_batch`] / [`crate::codec::decode_batch`]), so tests exercise
//!    exactly the bytes a network transport sends.
//! 3. Link state is symmetric only if the test makes it so: [`LocalNetwork::cut`] drops
//!    one direction, [`LocalNetwork::isolate`] both directions of every link of a node.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};

use concord_raft::{Message, NodeId};
use tokio::sync::mpsc;

use crate::codec;

/// Capacity, in batches, of a node's inbound queue.
pub const INBOX_CAPACITY: usize = 4096;

/// Why a batch was not handed to the network.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TransportError {
    /// The peer cannot be reached now (unknown, link down, or its queue is full).
    #[error("peer {0} unreachable")]
    Unreachable(NodeId),
}

/// Sends Raft messages to peers.
pub trait Transport: Send + Sync + 'static {
    /// Queues `msgs` (all addressed to `to`) for delivery. `Ok` means queued, not
    /// delivered; `Err` means the peer is unreachable now and Raft should be told so.
    fn send(&self, to: NodeId, msgs: Vec<Message>) -> Result<(), TransportError>;
}

/// The receiving end of a node's inbound queue: batches of messages from peers.
pub type Inbox = mpsc::Receiver<Vec<Message>>;

#[derive(Default)]
struct NetState {
    inboxes: BTreeMap<NodeId, mpsc::Sender<Vec<u8>>>,
    // Directed links (from, to) that drop everything.
    cut: BTreeSet<(NodeId, NodeId)>,
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

    /// Attaches node `id` (again, after a restart: the old inbox is replaced) and returns
    /// its transport and inbox.
    pub fn register(&self, id: NodeId) -> (LocalTransport, Inbox) {
        let (wire_tx, mut wire_rx) = mpsc::channel::<Vec<u8>>(INBOX_CAPACITY);
        let (tx, rx) = mpsc::channel(INBOX_CAPACITY);
        // Decoding happens on the receiving side, like a network server's handler.
        tokio::spawn(async move {
            while let Some(bytes) = wire_rx.recv().await {
                match codec::decode_batch(&bytes) {
                    Ok(msgs) => {
                        if tx.send(msgs).await.is_err() {
                            break;
                        }
                    }
                    Err(e) => tracing::warn!(node = id, error = %e, "dropping undecodable batch"),
                }
            }
        });
        self.lock().inboxes.insert(id, wire_tx);
        (
            LocalTransport {
                from: id,
                net: self.clone(),
            },
            rx,
        )
    }

    /// Drops every message from `from` to `to` until [`LocalNetwork::heal`].
    pub fn cut(&self, from: NodeId, to: NodeId) {
        self.lock().cut.insert((from, to));
    }

    /// Cuts both directions of every link between `id` and the other registered nodes.
    pub fn isolate(&self, id: NodeId) {
        let mut s = self.lock();
        let others: Vec<NodeId> = s.inboxes.keys().copied().filter(|&o| o != id).collect();
        for o in others {
            s.cut.insert((id, o));
            s.cut.insert((o, id));
        }
    }

    /// Restores every link.
    pub fn heal(&self) {
        self.lock().cut.clear();
    }

    fn deliver(&self, from: NodeId, to: NodeId, msgs: &[Message]) -> Result<(), TransportError> {
        let inbox = {
            let s = self.lock();
            if s.cut.contains(&(from, to)) {
                return Err(TransportError::Unreachable(to));
            }
            s.inboxes.get(&to).cloned()
        };
        let Some(inbox) = inbox else {
            return Err(TransportError::Unreachable(to));
        };
        inbox
            .try_send(codec::encode_batch(msgs))
            .map_err(|_| TransportError::Unreachable(to))
    }
}

/// One node's sending side of a [`LocalNetwork`].
#[derive(Clone, Debug)]
pub struct LocalTransport {
    from: NodeId,
    net: LocalNetwork,
}

impl Transport for LocalTransport {
    fn send(&self, to: NodeId, msgs: Vec<Message>) -> Result<(), TransportError> {
        self.net.deliver(self.from, to, &msgs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use concord_raft::MessageType;

    fn msg(from: NodeId, to: NodeId, term: u64) -> Message {
        Message {
            msg_type: MessageType::Heartbeat,
            from,
            to,
            term,
            ..Message::default()
        }
    }

    #[tokio::test]
    async fn delivers_in_order_and_honours_cuts() {
        let net = LocalNetwork::new();
        let (t1, _in1) = net.register(1);
        let (_t2, mut in2) = net.register(2);
        t1.send(2, vec![msg(1, 2, 1)]).unwrap();
        t1.send(2, vec![msg(1, 2, 2), msg(1, 2, 3)]).unwrap();
        assert_eq!(in2.recv().await.unwrap(), vec![msg(1, 2, 1)]);
        assert_eq!(in2.recv().await.unwrap(), vec![msg(1, 2, 2), msg(1, 2, 3)]);
        net.cut(1, 2);
        assert_eq!(
            t1.send(2, vec![msg(1, 2, 4)]),
            Err(TransportError::Unreachable(2))
        );
        assert_eq!(
            t1.send(3, vec![msg(1, 3, 4)]),
            Err(TransportError::Unreachable(3))
        );
        net.heal();
        t1.send(2, vec![msg(1, 2, 5)]).unwrap();
        assert_eq!(in2.recv().await.unwrap(), vec![msg(1, 2, 5)]);
        net.isolate(2);
        assert!(t1.send(2, vec![msg(1, 2, 6)]).is_err());
    }
}
