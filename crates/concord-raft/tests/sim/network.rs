//! A simulated network: drops, duplicates, reorders (random delays) and partitions,
//! including one-way ones. Deterministic given the driver's RNG.

use std::collections::{BTreeMap, BTreeSet};

use concord_raft::{Message, NodeId};
use rand::rngs::SmallRng;
use rand::Rng;

#[derive(Clone, Copy, Debug)]
pub struct Faults {
    pub drop: f64,
    pub dup: f64,
    pub max_delay: u64,
}

pub struct Network {
    /// (deliver at step, sequence) -> message; the sequence keeps ordering deterministic.
    queue: BTreeMap<(u64, u64), Message>,
    seq: u64,
    /// One-way blocked links (from, to).
    pub blocked: BTreeSet<(NodeId, NodeId)>,
    pub faults: Faults,
}

pub enum Fate {
    Queued,
    Dropped,
}

impl Network {
    pub fn new(faults: Faults) -> Self {
        Self {
            queue: BTreeMap::new(),
            seq: 0,
            blocked: BTreeSet::new(),
            faults,
        }
    }

    pub fn send(&mut self, rng: &mut SmallRng, now: u64, m: Message) -> Fate {
        if self.blocked.contains(&(m.from, m.to)) || rng.gen_bool(self.faults.drop) {
            return Fate::Dropped;
        }
        let copies = if rng.gen_bool(self.faults.dup) { 2 } else { 1 };
        for _ in 0..copies {
            let at = now + rng.gen_range(1..=self.faults.max_delay);
            self.seq += 1;
            self.queue.insert((at, self.seq), m.clone());
        }
        Fate::Queued
    }

    /// Next message due at or before `now`.
    pub fn pop_due(&mut self, now: u64) -> Option<Message> {
        let (&key, _) = self.queue.iter().next()?;
        if key.0 > now {
            return None;
        }
        self.queue.remove(&key)
    }

    pub fn heal(&mut self) {
        self.blocked.clear();
    }

    /// Splits `ids` into two random sides; links across are cut both ways, or only one
    /// way when `asymmetric`.
    pub fn partition(&mut self, rng: &mut SmallRng, ids: &[NodeId], asymmetric: bool) {
        self.blocked.clear();
        let side: Vec<bool> = ids.iter().map(|_| rng.gen_bool(0.5)).collect();
        for (i, &a) in ids.iter().enumerate() {
            for (j, &b) in ids.iter().enumerate() {
                if side[i] && !side[j] {
                    self.blocked.insert((a, b));
                    if !asymmetric {
                        self.blocked.insert((b, a));
                    }
                }
            }
        }
    }

    /// Cuts `id` off from everyone (both ways).
    pub fn isolate(&mut self, id: NodeId, ids: &[NodeId]) {
        for &o in ids {
            if o != id {
                self.blocked.insert((id, o));
                self.blocked.insert((o, id));
            }
        }
    }
}
