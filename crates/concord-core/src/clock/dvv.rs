//! Dotted version vector sets (Almeida, Baquero, Gonçalves, Preguiça, Fonte: "Scalable and
//! Accurate Causality Tracking for Eventually Consistent Stores", 2014).
//!
//! A [`DvvSet`] holds the current values of one key at one replica. Each value carries the
//! [`Dot`] of the write that created it, and the set carries a causal context (a
//! [`VectorClock`]) summarising every write the replica knows of, including overwritten ones.
//! A client reads the values and the context, and sends the context back with its next write:
//! the write then replaces exactly the values the client saw and keeps the others as siblings.
//!
//! Unlike a version vector per value, the dot pins each value to the one write that made it,
//! so two clients writing through the same coordinator concurrently still produce two
//! siblings (no false dominance), and the metadata stays bounded by the number of replicas.

use serde::{Deserialize, Serialize};

use super::{Dot, VectorClock};
use crate::NodeId;

/// The sibling values of one key at one replica, with their causal context.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(
    try_from = "RawDvvSet<V>",
    bound(serialize = "V: Serialize", deserialize = "V: Deserialize<'de>")
)]
pub struct DvvSet<V> {
    // Invariant: every sibling's dot is contained in `context`.
    context: VectorClock,
    // Invariant: sorted by dot, no two siblings share a dot.
    siblings: Vec<(Dot, V)>,
}

/// A [`DvvSet`] as read, before its invariants are checked.
#[derive(Deserialize)]
struct RawDvvSet<V> {
    context: VectorClock,
    siblings: Vec<(Dot, V)>,
}

impl<V> TryFrom<RawDvvSet<V>> for DvvSet<V> {
    type Error = String;

    fn try_from(raw: RawDvvSet<V>) -> Result<Self, String> {
        let set = DvvSet {
            context: raw.context,
            siblings: raw.siblings,
        };
        if set.is_valid() {
            Ok(set)
        } else {
            Err(
                "a dotted version vector set with unordered siblings or a sibling outside its \
                 context"
                    .into(),
            )
        }
    }
}

impl<V> DvvSet<V> {
    fn is_valid(&self) -> bool {
        self.siblings.windows(2).all(|w| w[0].0 < w[1].0)
            && self.siblings.iter().all(|(d, _)| self.context.contains(*d))
    }
}

impl<V> Default for DvvSet<V> {
    fn default() -> Self {
        Self {
            context: VectorClock::new(),
            siblings: Vec::new(),
        }
    }
}

impl<V: Clone> DvvSet<V> {
    /// An empty set: no values, no history.
    pub fn new() -> Self {
        Self::default()
    }

    /// The causal context a client must send back with its next write to this key.
    pub fn context(&self) -> &VectorClock {
        &self.context
    }

    /// The surviving values, in dot order (one unless there are concurrent writes).
    pub fn values(&self) -> impl Iterator<Item = &V> + '_ {
        self.siblings.iter().map(|(_, v)| v)
    }

    /// The surviving values with the dots of the writes that made them.
    pub fn siblings(&self) -> &[(Dot, V)] {
        &self.siblings
    }

    /// Number of surviving values.
    pub fn len(&self) -> usize {
        self.siblings.len()
    }

    /// Whether no value survives (never written, or only deletes were kept elsewhere).
    pub fn is_empty(&self) -> bool {
        self.siblings.is_empty()
    }

    /// Applies a write coordinated by replica `node`: the values whose dots `client_context`
    /// contains (the ones the client read) are replaced by `value`; the others stay as
    /// siblings. Returns the dot of the new write.
    ///
    /// Pass an empty context for a blind write: it then becomes a sibling of every value.
    pub fn update(&mut self, client_context: &VectorClock, node: NodeId, value: V) -> Dot {
        let counter = self
            .context
            .get(node)
            .max(client_context.get(node))
            .saturating_add(1);
        let dot = Dot { node, counter };
        self.siblings.retain(|(d, _)| !client_context.contains(*d));
        self.context.merge(client_context);
        self.context.add_dot(dot);
        // The new dot is greater than every dot of `node` known here, so it sorts after the
        // siblings of `node`; a plain insert at the right place keeps the order.
        let at = self.siblings.partition_point(|(d, _)| *d < dot);
        self.siblings.insert(at, (dot, value));
        debug_assert!(self.is_valid());
        dot
    }

    /// Merges the state of another replica of the same key (anti-entropy, read repair,
    /// hinted handoff). A value survives unless the other side has seen its write and no
    /// longer holds it (which means a later write replaced it).
    pub fn sync(&mut self, other: &DvvSet<V>) {
        let mut merged: Vec<(Dot, V)> = Vec::with_capacity(self.siblings.len());
        let mut mine = std::mem::take(&mut self.siblings).into_iter().peekable();
        let mut theirs = other.siblings.iter().peekable();
        loop {
            match (mine.peek(), theirs.peek()) {
                (Some((a, _)), Some((b, _))) if a == b => {
                    merged.extend(mine.next());
                    theirs.next();
                }
                (Some((a, _)), Some((b, _))) if a < b => {
                    let (dot, v) = mine.next().expect("peeked");
                    if !other.context.contains(dot) {
                        merged.push((dot, v));
                    }
                }
                (Some(_), None) => {
                    let (dot, v) = mine.next().expect("peeked");
                    if !other.context.contains(dot) {
                        merged.push((dot, v));
                    }
                }
                (_, Some(_)) => {
                    let (dot, v) = theirs.next().expect("peeked");
                    if !self.context.contains(*dot) {
                        merged.push((*dot, v.clone()));
                    }
                }
                (None, None) => break,
            }
        }
        self.siblings = merged;
        self.context.merge(&other.context);
        debug_assert!(self.is_valid());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn values(s: &DvvSet<&'static str>) -> Vec<&'static str> {
        let mut v: Vec<_> = s.values().copied().collect();
        v.sort();
        v
    }

    #[test]
    fn overwrite_with_context_replaces() {
        let mut s = DvvSet::new();
        s.update(&VectorClock::new(), NodeId(1), "a");
        let ctx = s.context().clone();
        s.update(&ctx, NodeId(1), "b");
        assert_eq!(values(&s), ["b"]);
    }

    #[test]
    fn concurrent_writes_through_one_coordinator_become_siblings() {
        let mut s = DvvSet::new();
        s.update(&VectorClock::new(), NodeId(1), "v0");
        let seen = s.context().clone();
        // Two clients read v0, then both write through node 1.
        s.update(&seen, NodeId(1), "x");
        s.update(&seen, NodeId(1), "y");
        assert_eq!(values(&s), ["x", "y"]);
        // A client that read both resolves them.
        let ctx = s.context().clone();
        s.update(&ctx, NodeId(1), "z");
        assert_eq!(values(&s), ["z"]);
    }

    #[test]
    fn sync_drops_what_the_other_side_overwrote() {
        let mut a = DvvSet::new();
        a.update(&VectorClock::new(), NodeId(1), "v1");
        let mut b = a.clone();
        let ctx = b.context().clone();
        b.update(&ctx, NodeId(2), "v2");
        a.sync(&b);
        assert_eq!(values(&a), ["v2"]);
        // Concurrent writes on both sides survive.
        let mut c = DvvSet::new();
        c.update(&VectorClock::new(), NodeId(3), "v3");
        a.sync(&c);
        assert_eq!(values(&a), ["v2", "v3"]);
    }

    /// One step of a random history over 3 replicas of one key.
    #[derive(Debug, Clone)]
    enum Op {
        /// A client reads replica `read_from` (or writes blind) and writes through `write_to`.
        Put {
            read_from: Option<usize>,
            write_to: usize,
        },
        /// Replica `to` merges the state of replica `from`.
        Sync { from: usize, to: usize },
    }

    fn arb_op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (proptest::option::of(0usize..3), 0usize..3).prop_map(|(read_from, write_to)| {
                Op::Put {
                    read_from,
                    write_to,
                }
            }),
            (0usize..3, 0usize..3).prop_map(|(from, to)| Op::Sync { from, to }),
        ]
    }

    proptest! {
        /// Siblings are kept exactly when concurrent: at every replica, the surviving values
        /// are the writes it knows of that no other known write has seen.
        #[test]
        fn siblings_are_exactly_the_concurrent_writes(ops in proptest::collection::vec(arb_op(), 1..60)) {
            let mut replicas: Vec<DvvSet<u32>> = vec![DvvSet::new(); 3];
            // Every write: its dot and the context it was made with.
            let mut writes: Vec<(Dot, VectorClock)> = Vec::new();
            for (i, op) in ops.into_iter().enumerate() {
                match op {
                    Op::Put { read_from, write_to } => {
                        let ctx = read_from.map(|r| replicas[r].context().clone()).unwrap_or_default();
                        let dot = replicas[write_to].update(&ctx, NodeId(write_to as u64), i as u32);
                        writes.push((dot, ctx));
                    }
                    Op::Sync { from, to } => {
                        let src = replicas[from].clone();
                        replicas[to].sync(&src);
                    }
                }
                for r in &replicas {
                    let known: Vec<&(Dot, VectorClock)> =
                        writes.iter().filter(|(d, _)| r.context().contains(*d)).collect();
                    let mut expected: Vec<Dot> = known
                        .iter()
                        .filter(|(d, _)| !known.iter().any(|(_, seen)| seen.contains(*d)))
                        .map(|(d, _)| *d)
                        .collect();
                    expected.sort();
                    let actual: Vec<Dot> = r.siblings().iter().map(|(d, _)| *d).collect();
                    prop_assert_eq!(actual, expected);
                }
            }
        }

        #[test]
        fn sync_is_commutative_and_idempotent(ops in proptest::collection::vec(arb_op(), 1..40)) {
            let mut replicas: Vec<DvvSet<u32>> = vec![DvvSet::new(); 3];
            for (i, op) in ops.into_iter().enumerate() {
                match op {
                    Op::Put { read_from, write_to } => {
                        let ctx = read_from.map(|r| replicas[r].context().clone()).unwrap_or_default();
                        replicas[write_to].update(&ctx, NodeId(write_to as u64), i as u32);
                    }
                    Op::Sync { from, to } => {
                        let src = replicas[from].clone();
                        replicas[to].sync(&src);
                    }
                }
            }
            let mut ab = replicas[0].clone();
            ab.sync(&replicas[1]);
            let mut ba = replicas[1].clone();
            ba.sync(&replicas[0]);
            prop_assert_eq!(&ab, &ba);
            let mut again = ab.clone();
            again.sync(&replicas[1]);
            prop_assert_eq!(&again, &ab);
        }
    }
}
