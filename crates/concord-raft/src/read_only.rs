//! Pending ReadIndex requests on the leader (Raft thesis §6.4).
//!
//! # Guarantees
//!
//! 1. A read is released only after a quorum acknowledged a heartbeat that was sent
//!    after the read arrived, which proves the leader was still leader at a moment after
//!    the read started; its read index is the commit index at arrival.
//! 2. Reads are released in arrival order, and one acknowledged heartbeat releases every
//!    read queued before its context (batching: reads arriving while a round is in flight
//!    share the next round).
//! 3. A duplicate context is ignored rather than confused with another read.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use crate::types::{Message, NodeId};

#[derive(Clone, Debug)]
pub(crate) struct ReadIndexStatus {
    /// The request (its `from` and `context` say whom to answer).
    pub(crate) req: Message,
    /// Commit index when the request arrived.
    pub(crate) index: u64,
    pub(crate) acks: BTreeSet<NodeId>,
}

#[derive(Debug, Default)]
pub(crate) struct ReadOnly {
    pending: BTreeMap<Vec<u8>, ReadIndexStatus>,
    queue: VecDeque<Vec<u8>>,
    /// Context of the latest heartbeat round that carried a read context, if it is still
    /// pending; new reads wait for the next round instead of starting their own.
    pub(crate) round_in_flight: Option<Vec<u8>>,
}

impl ReadOnly {
    pub(crate) fn add_request(&mut self, index: u64, req: Message, self_id: NodeId) -> bool {
        if self.pending.contains_key(&req.context) {
            return false;
        }
        let ctx = req.context.clone();
        self.pending.insert(
            ctx.clone(),
            ReadIndexStatus {
                req,
                index,
                acks: [self_id].into(),
            },
        );
        self.queue.push_back(ctx);
        true
    }

    pub(crate) fn recv_ack(&mut self, id: NodeId, ctx: &[u8]) -> Option<&BTreeSet<NodeId>> {
        let rs = self.pending.get_mut(ctx)?;
        rs.acks.insert(id);
        Some(&rs.acks)
    }

    /// Releases every read up to and including `ctx`.
    pub(crate) fn advance(&mut self, ctx: &[u8]) -> Vec<ReadIndexStatus> {
        let Some(pos) = self.queue.iter().position(|c| c.as_slice() == ctx) else {
            return Vec::new();
        };
        let mut out = Vec::with_capacity(pos + 1);
        for c in self.queue.drain(..=pos) {
            if let Some(rs) = self.pending.remove(&c) {
                out.push(rs);
            }
        }
        if self
            .round_in_flight
            .as_ref()
            .is_some_and(|r| !self.pending.contains_key(r))
        {
            self.round_in_flight = None;
        }
        out
    }

    pub(crate) fn last_pending_ctx(&self) -> Option<&Vec<u8>> {
        self.queue.back()
    }

    pub(crate) fn pending_count(&self) -> usize {
        self.queue.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(ctx: &[u8]) -> Message {
        Message {
            context: ctx.to_vec(),
            ..Message::default()
        }
    }

    #[test]
    fn one_ack_round_releases_all_earlier_reads() {
        let mut ro = ReadOnly::default();
        assert!(ro.add_request(5, req(b"a"), NodeId(1)));
        assert!(ro.add_request(6, req(b"b"), NodeId(1)));
        assert!(!ro.add_request(7, req(b"b"), NodeId(1)));
        assert!(ro.add_request(7, req(b"c"), NodeId(1)));
        assert_eq!(ro.recv_ack(NodeId(2), b"b").unwrap().len(), 2);
        let released = ro.advance(b"b");
        assert_eq!(
            released.iter().map(|r| r.index).collect::<Vec<_>>(),
            vec![5, 6]
        );
        assert_eq!(ro.pending_count(), 1);
        assert_eq!(ro.last_pending_ctx().unwrap(), b"c");
        assert!(ro.recv_ack(NodeId(2), b"a").is_none());
    }
}
