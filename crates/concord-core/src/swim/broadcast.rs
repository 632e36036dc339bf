//! The queue of membership updates waiting to be piggybacked on outgoing messages.
//!
//! Each member has at most one queued update (a newer one replaces the older, which is then
//! moot). An update is sent `limit` times in all and then dropped: with
//! `limit = mult · ⌈log10(n + 1)⌉` every member hears it with high probability (SWIM §4.1,
//! memberlist's `retransmitLimit`).
//!
//! Which updates ride a packet: half the slots go to the most recently queued updates, the
//! other half to the least transmitted ones (memberlist uses only the latter). After a mass
//! event (a whole cluster restarting, a thousand joins) every member queues a thousand
//! updates, and a packet carries sixteen; by transmit count alone a fresh update would get
//! one transmission before queueing behind that backlog, and reach only about
//! `1 - 1/e^k` of the members for the `k` it got. The recency half gives it its full
//! `limit` at once, so it still spreads in `O(log n)` periods; the backlog drains through
//! the other half, and the periodic full-state exchange covers what it misses.
//! Taking `max` updates costs `O(max · log q)` for a queue of `q`.

use std::collections::{BTreeMap, BTreeSet};

use super::Update;
use crate::NodeId;

#[derive(Debug, Clone)]
struct Queued {
    sent: u32,
    /// Queue order: a larger `seq` was queued later.
    seq: u64,
    update: Update,
}

#[derive(Debug, Clone, Default)]
pub(super) struct Broadcasts {
    queue: BTreeMap<NodeId, Queued>,
    /// (times sent, member) of every queued update. Invariant: exactly the `(sent, id)`
    /// pairs of `queue`.
    by_sent: BTreeSet<(u32, NodeId)>,
    /// seq → member of every queued update. Invariant: exactly the `(seq, id)` pairs of
    /// `queue`.
    by_age: BTreeMap<u64, NodeId>,
    next_seq: u64,
}

impl Broadcasts {
    /// Queues `update`, replacing any older update about the same member.
    pub(super) fn push(&mut self, update: Update) {
        let id = update.id;
        self.remove(id);
        self.next_seq += 1;
        let seq = self.next_seq;
        self.queue.insert(
            id,
            Queued {
                sent: 0,
                seq,
                update,
            },
        );
        self.by_sent.insert((0, id));
        self.by_age.insert(seq, id);
    }

    /// The queued update about `id`, if any.
    pub(super) fn get(&self, id: NodeId) -> Option<&Update> {
        self.queue.get(&id).map(|q| &q.update)
    }

    /// Takes up to `max` updates (half the newest, the rest least transmitted, ties by
    /// member id, so the choice is deterministic), counting a transmission for each and
    /// dropping those sent `limit` times. `skip` is left out (an update the caller already
    /// includes).
    pub(super) fn take(&mut self, max: usize, limit: u32, skip: Option<NodeId>) -> Vec<Update> {
        let mut chosen: Vec<NodeId> = self
            .by_age
            .values()
            .rev()
            .filter(|id| Some(**id) != skip)
            .take(max / 2)
            .copied()
            .collect();
        let fresh: BTreeSet<NodeId> = chosen.iter().copied().collect();
        chosen.extend(
            self.by_sent
                .iter()
                .map(|(_, id)| *id)
                .filter(|id| Some(*id) != skip && !fresh.contains(id))
                .take(max - chosen.len()),
        );
        let mut out = Vec::with_capacity(chosen.len());
        for id in chosen {
            let Some(q) = self.queue.get_mut(&id) else {
                continue;
            };
            let sent = q.sent + 1;
            out.push(q.update.clone());
            if sent >= limit {
                self.remove(id);
            } else {
                q.sent = sent;
                self.by_sent.remove(&(sent - 1, id));
                self.by_sent.insert((sent, id));
            }
        }
        debug_assert_eq!(self.by_sent.len(), self.queue.len());
        debug_assert_eq!(self.by_age.len(), self.queue.len());
        out
    }

    /// Forgets any update about `id`.
    pub(super) fn remove(&mut self, id: NodeId) {
        if let Some(q) = self.queue.remove(&id) {
            self.by_sent.remove(&(q.sent, id));
            self.by_age.remove(&q.seq);
        }
    }

    pub(super) fn len(&self) -> usize {
        self.queue.len()
    }
}
