//! Add-wins observed-remove set (OR-Set).
//!
//! Every add of an element is a fresh dot; the element is in the set while it has at least
//! one live dot. A remove drops the dots of the element that this replica holds, i.e. the adds
//! it has *observed*; those dots stay in the causal context, which is how a later merge knows
//! they were removed and must not come back from a replica that still holds them. An add the
//! remover had not observed has a dot outside its context, so it survives the merge: a
//! concurrent add wins over a remove.
//!
//! Merge, per element: a dot survives iff it is live on both sides, or live on one side and
//! not in the other side's context (the other side never saw it, rather than removed it).
//!
//! # Guarantees
//!
//! 1. `merge` is a join of full states, in `O((n + m) log(n + m))` for `n` and `m` elements.
//! 2. A remove removes exactly the observed adds; no merge ever resurrects them.
//! 3. Add wins: an element added concurrently with its remove is present after the merge.
//! 4. An element can be re-added after a remove (the new add has a new dot).
//! 5. Each element holds at most one dot per concurrent add (an add replaces the element's
//!    observed dots), so metadata is bounded by concurrency, not by history; removed elements
//!    leave no tombstone, only the compact context.

use std::collections::{BTreeMap, BTreeSet};

use crate::clock::Dot;
use crate::NodeId;
use serde::{Deserialize, Serialize};

use crate::crdt::context::{check_covered, join_dot_sets, serialize_pairs};
use crate::crdt::{Crdt, CrdtError, DotContext};

/// An add-wins observed-remove set.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(
    try_from = "RawOrSet<E>",
    bound(serialize = "E: Serialize", deserialize = "E: Ord + Deserialize<'de>")
)]
pub struct OrSet<E> {
    // Invariant: no dot set is empty; every dot is in `context`.
    #[serde(rename = "entries", serialize_with = "serialize_pairs")]
    entries: BTreeMap<E, BTreeSet<Dot>>,
    #[serde(rename = "context")]
    context: DotContext,
}

#[derive(Deserialize)]
struct RawOrSet<E> {
    entries: Vec<(E, BTreeSet<Dot>)>,
    context: DotContext,
}

impl<E: Ord> TryFrom<RawOrSet<E>> for OrSet<E> {
    type Error = CrdtError;

    fn try_from(raw: RawOrSet<E>) -> Result<Self, CrdtError> {
        let mut entries = BTreeMap::new();
        for (element, dots) in raw.entries {
            if dots.is_empty() {
                return Err(CrdtError::EmptyEntry);
            }
            for &dot in &dots {
                check_covered(dot, &raw.context)?;
            }
            if entries.insert(element, dots).is_some() {
                return Err(CrdtError::DuplicateKey);
            }
        }
        Ok(Self {
            entries,
            context: raw.context,
        })
    }
}

impl<E> Default for OrSet<E> {
    fn default() -> Self {
        Self {
            entries: BTreeMap::new(),
            context: DotContext::new(),
        }
    }
}

impl<E: Ord> OrSet<E> {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `element` on behalf of `node`; returns the add's dot.
    pub fn add(&mut self, element: E, node: NodeId) -> Dot {
        let dot = self.context.next_dot(node);
        // The element's observed dots are superseded (they stay in the context).
        self.entries.insert(element, BTreeSet::from([dot]));
        dot
    }

    /// Removes `element`, cancelling exactly the adds of it this replica has observed;
    /// returns whether it was present.
    pub fn remove(&mut self, element: &E) -> bool {
        // Its dots are already in the context (invariant), which is what remembers the remove.
        self.entries.remove(element).is_some()
    }

    /// Records an event of `node` that adds nothing (a remove) under a new dot of its own,
    /// so that the context shows which of `node`'s events a state has seen; returns the
    /// dot. Joins treat it as an add already removed.
    pub fn mark(&mut self, node: NodeId) -> Dot {
        self.context.next_dot(node)
    }

    /// Removes every element this replica holds.
    pub fn clear(&mut self) {
        self.entries.clear();
    }

    /// Whether `element` is in the set.
    pub fn contains(&self, element: &E) -> bool {
        self.entries.contains_key(element)
    }

    /// The elements, in order.
    pub fn elements(&self) -> impl Iterator<Item = &E> + '_ {
        self.entries.keys()
    }

    /// The number of elements.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The live dots of `element` (the adds of it not yet removed).
    pub fn dots(&self, element: &E) -> impl Iterator<Item = Dot> + '_ {
        self.entries.get(element).into_iter().flatten().copied()
    }

    /// Every add and remove this state has seen.
    pub fn context(&self) -> &DotContext {
        &self.context
    }
}

impl<E: Ord + Clone> Crdt for OrSet<E> {
    /// The elements.
    type Value = BTreeSet<E>;

    fn merge(&mut self, other: &Self) {
        self.entries.retain(|element, dots| {
            match other.entries.get(element) {
                Some(theirs) => join_dot_sets(dots, &self.context, theirs, &other.context),
                // Absent there: removed there if there it saw the dot, else not yet seen.
                None => dots.retain(|d| !other.context.contains(*d)),
            }
            !dots.is_empty()
        });
        for (element, theirs) in &other.entries {
            if self.entries.contains_key(element) {
                continue;
            }
            let fresh: BTreeSet<Dot> = theirs
                .iter()
                .copied()
                .filter(|&d| !self.context.contains(d))
                .collect();
            if !fresh.is_empty() {
                self.entries.insert(element.clone(), fresh);
            }
        }
        self.context.merge(&other.context);
    }

    fn value(&self) -> BTreeSet<E> {
        self.entries.keys().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const A: NodeId = NodeId(1);
    const B: NodeId = NodeId(2);
    const C: NodeId = NodeId(3);

    #[test]
    fn add_remove_and_merge() {
        let mut a = OrSet::new();
        a.add("x", A);
        a.add("y", A);
        assert!(a.remove(&"x"));
        assert!(!a.remove(&"x"));
        let mut b = OrSet::new();
        b.add("z", B);
        a.merge(&b);
        assert_eq!(a.value(), BTreeSet::from(["y", "z"]));
        assert_eq!(a.len(), 2);
        assert!(a.contains(&"z") && !a.contains(&"x"));
    }

    #[test]
    fn remove_then_merge_with_a_replica_that_still_has_it_does_not_bring_it_back() {
        let mut a = OrSet::new();
        a.add("x", A);
        let mut b = a.clone(); // b still holds x
        let mut c = a.clone();
        a.remove(&"x");
        c.merge(&b);
        for _ in 0..2 {
            a.merge(&b);
            a.merge(&c);
            b.merge(&a);
        }
        assert!(!a.contains(&"x"));
        assert!(!b.contains(&"x"));
        // A stale copy delivered late does not either.
        let mut stale = OrSet::new();
        stale.add("x", A);
        b.merge(&stale);
        assert!(!b.contains(&"x"));
    }

    #[test]
    fn concurrent_add_wins_over_remove() {
        let mut a = OrSet::new();
        a.add("x", A);
        let mut b = a.clone();
        a.remove(&"x");
        b.add("x", B); // concurrent with the remove: a new dot a has not seen
        assert!(a.merged(&b).contains(&"x"));
        assert!(b.merged(&a).contains(&"x"));
        // Only the unobserved add survives; the removed one is gone.
        assert_eq!(
            a.merged(&b).dots(&"x").collect::<Vec<_>>(),
            vec![Dot::new(B, 1)]
        );
    }

    #[test]
    fn re_add_after_remove_works() {
        let mut a = OrSet::new();
        a.add("x", A);
        let mut b = a.clone();
        a.remove(&"x");
        b.merge(&a);
        assert!(!b.contains(&"x"));
        b.add("x", B);
        a.merge(&b);
        assert!(a.contains(&"x"));
        a.add("x", A);
        a.remove(&"x");
        a.add("x", C);
        assert!(a.contains(&"x"));
    }

    #[test]
    fn large_sets_merge() {
        let mut a = OrSet::new();
        let mut b = OrSet::new();
        for i in 0..10_000u32 {
            a.add(i, A);
            b.add(i + 5_000, B);
        }
        for i in 0..1_000u32 {
            a.remove(&(i * 3));
        }
        let merged = a.merged(&b);
        assert_eq!(
            merged.len(),
            15_000 - (0..1_000).filter(|i| i * 3 < 5_000).count()
        );
        assert_eq!(merged, b.merged(&a));
    }

    #[test]
    fn golden_json() {
        let mut a = OrSet::new();
        a.add("x".to_string(), A);
        a.add("y".to_string(), A);
        a.remove(&"x".to_string());
        let mut b = OrSet::new();
        b.add("y".to_string(), B);
        a.merge(&b);
        let json = serde_json::to_string(&a).unwrap();
        assert_eq!(
            json,
            concat!(
                r#"{"entries":[["y",[{"node":1,"counter":2},{"node":2,"counter":1}]]],"#,
                r#""context":{"vv":{"1":2,"2":1},"cloud":[]}}"#
            )
        );
        assert_eq!(serde_json::from_str::<OrSet<String>>(&json).unwrap(), a);
        let bad = [
            r#"{"entries":[["y",[]]],"context":{"vv":{},"cloud":[]}}"#,
            r#"{"entries":[["y",[{"node":1,"counter":3}]]],"context":{"vv":{"1":2},"cloud":[]}}"#,
            r#"{"entries":[["y",[{"node":1,"counter":1}]],["y",[{"node":1,"counter":2}]]],"context":{"vv":{"1":2},"cloud":[]}}"#,
        ];
        for json in bad {
            assert!(
                serde_json::from_str::<OrSet<String>>(json).is_err(),
                "{json}"
            );
        }
    }

    /// Builds a replica state from a random history (adds, removes, merges from the others).
    fn history() -> impl Strategy<Value = Vec<(usize, u8, u8)>> {
        proptest::collection::vec((0usize..3, 0u8..3, 0u8..4), 0..25)
    }

    fn run(steps: &[(usize, u8, u8)]) -> Vec<OrSet<u8>> {
        let mut replicas = vec![OrSet::new(); 3];
        for &(i, kind, e) in steps {
            match kind {
                0 => {
                    replicas[i].add(e, NodeId(i as u64));
                }
                1 => {
                    replicas[i].remove(&e);
                }
                _ => {
                    let other = replicas[(i + 1 + usize::from(e) % 2) % 3].clone();
                    replicas[i].merge(&other);
                }
            }
        }
        replicas
    }

    proptest! {
        /// After a remove, a merge shows the element iff the other side holds an add of it the
        /// remover never observed: removed adds never come back, unobserved adds always win.
        #[test]
        fn remove_then_merge_keeps_exactly_unobserved_adds(
            steps in history(),
            e in 0u8..4,
        ) {
            let replicas = run(&steps);
            let mut a = replicas[0].clone();
            a.remove(&e);
            for b in &replicas[1..] {
                let unobserved = b.dots(&e).any(|d| !a.context().contains(d));
                prop_assert_eq!(a.merged(b).contains(&e), unobserved);
                prop_assert_eq!(b.merged(&a).contains(&e), unobserved);
            }
        }
    }
}
