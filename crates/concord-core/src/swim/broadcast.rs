//! The queue of membership updates waiting to be piggybacked on outgoing messages.
//!
//! Each member has at most one queued update (a newer one replaces the older, which is then
//! moot). An update is sent `limit` times in all, least-sent first, and then dropped: with
//! `limit = mult · ⌈log10(n + 1)⌉` every member hears it with high probability (SWIM §4.1,
//! memberlist's `retransmitLimit`).

use std::collections::BTreeMap;

use super::Update;
use crate::NodeId;

#[derive(Debug, Clone, Default)]
pub(super) struct Broadcasts {
    /// member → (times sent, update). Invariant: `times sent < limit` at insertion time.
    queue: BTreeMap<NodeId, (u32, Update)>,
}

impl Broadcasts {
    /// Queues `update`, replacing any older update about the same member.
    pub(super) fn push(&mut self, update: Update) {
        self.queue.insert(update.id, (0, update));
    }

    /// The queued update about `id`, if any.
    pub(super) fn get(&self, id: NodeId) -> Option<&Update> {
        self.queue.get(&id).map(|(_, u)| u)
    }

    /// Takes up to `max` updates, least transmitted first (ties by member id, so the choice
    /// is deterministic), counting a transmission for each and dropping those sent `limit`
    /// times. `skip` is left out (an update the caller already includes).
    pub(super) fn take(&mut self, max: usize, limit: u32, skip: Option<NodeId>) -> Vec<Update> {
        let mut order: Vec<(u32, NodeId)> = self
            .queue
            .iter()
            .filter(|(id, _)| Some(**id) != skip)
            .map(|(id, (sent, _))| (*sent, *id))
            .collect();
        order.sort_unstable();
        order.truncate(max);
        let mut out = Vec::with_capacity(order.len());
        for (_, id) in order {
            if let Some((sent, update)) = self.queue.get_mut(&id) {
                *sent += 1;
                out.push(update.clone());
                if *sent >= limit {
                    self.queue.remove(&id);
                }
            }
        }
        out
    }

    /// Forgets any update about `id`.
    pub(super) fn remove(&mut self, id: NodeId) {
        self.queue.remove(&id);
    }

    pub(super) fn len(&self) -> usize {
        self.queue.len()
    }
}
