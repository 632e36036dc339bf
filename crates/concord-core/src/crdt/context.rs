//! The causal context of the dotted CRDTs, and the join of dotted stores.
//!
//! A [`DotContext`] is the set of every [`Dot`] a state has seen, stored compactly: a
//! [`VectorClock`] for the gap-free prefix of each node's dots, plus a "dot cloud" for the
//! dots received out of order (after a merge with a state that saw dots this one missed).
//! Whenever a cloud dot becomes contiguous with the vector it is folded into it, so the
//! context stays as small as the vector clock in the common case.
//!
//! # Guarantees
//!
//! 1. [`DotContext::contains`] is exact: it answers for the set of dots ever inserted or
//!    merged in, never forgets one and never invents one.
//! 2. The representation is canonical (every cloud dot is above its node's vector entry + 1),
//!    so two contexts holding the same dots are structurally equal and serialise identically.
//! 3. [`DotContext::next_dot`] returns a dot above every dot of that node known to the
//!    context, so a replica never reuses one of its own dots.
//! 4. `merge` is set union: a join, and costs `O((c₁ + c₂) log(c₁ + c₂))`.

use std::collections::{BTreeMap, BTreeSet};

use crate::clock::{Dot, VectorClock};
use crate::NodeId;
use serde::{Deserialize, Serialize, Serializer};

use crate::crdt::CrdtError;

/// The set of dots a dotted CRDT state has seen (a compact vector plus a dot cloud).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "RawDotContext")]
pub struct DotContext {
    // Invariant: `clock.get(n)` = c means dots (n, 1..=c) are all in the set.
    #[serde(rename = "vv")]
    clock: VectorClock,
    // Invariant: every dot d here has d.counter > clock.get(d.node) + 1 (compacted).
    #[serde(rename = "cloud")]
    cloud: BTreeSet<Dot>,
}

#[derive(Deserialize)]
struct RawDotContext {
    vv: BTreeMap<NodeId, u64>,
    cloud: Vec<Dot>,
}

impl TryFrom<RawDotContext> for DotContext {
    type Error = CrdtError;

    fn try_from(raw: RawDotContext) -> Result<Self, CrdtError> {
        let mut context = DotContext {
            // Collecting drops zero entries, which `VectorClock` must never store.
            clock: raw.vv.into_iter().collect(),
            cloud: BTreeSet::new(),
        };
        for dot in raw.cloud {
            check_dot(dot)?;
            context.cloud.insert(dot);
        }
        context.compact();
        Ok(context)
    }
}

impl DotContext {
    /// The empty context (has seen no dot).
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether `dot` has been seen.
    pub fn contains(&self, dot: Dot) -> bool {
        self.clock.contains(dot) || self.cloud.contains(&dot)
    }

    /// Records `dot` as seen. Dots with counter 0 do not exist and are ignored.
    pub fn insert(&mut self, dot: Dot) {
        if dot.counter == 0 || self.contains(dot) {
            return;
        }
        if dot.counter == self.clock.get(dot.node).saturating_add(1) {
            self.clock.add_dot(dot);
            self.absorb(dot.node);
        } else {
            self.cloud.insert(dot);
        }
    }

    /// A fresh dot for a new write by `node`, recorded as seen.
    ///
    /// It is above every dot of `node` this context knows, including cloud dots. (Counters
    /// saturate at `u64::MAX`, which 2⁶⁴ writes by one node would take to reach.)
    pub fn next_dot(&mut self, node: NodeId) -> Dot {
        let dot = Dot {
            node,
            counter: self.max_counter(node).saturating_add(1),
        };
        self.insert(dot);
        dot
    }

    /// The largest counter of `node` seen (0 if none).
    pub fn max_counter(&self, node: NodeId) -> u64 {
        let in_cloud = self
            .cloud
            .range(Dot::new(node, 0)..=Dot::new(node, u64::MAX))
            .next_back()
            .map_or(0, |d| d.counter);
        self.clock.get(node).max(in_cloud)
    }

    /// Set union with `other`.
    pub fn merge(&mut self, other: &DotContext) {
        self.clock.merge(&other.clock);
        self.cloud.extend(other.cloud.iter().copied());
        self.compact();
    }

    /// The gap-free prefix of every node's dots.
    pub fn clock(&self) -> &VectorClock {
        &self.clock
    }

    /// The dots seen out of order, above the gap-free prefix.
    pub fn cloud(&self) -> &BTreeSet<Dot> {
        &self.cloud
    }

    /// Whether no dot has been seen.
    pub fn is_empty(&self) -> bool {
        self.clock.is_empty() && self.cloud.is_empty()
    }

    /// Restores the compaction invariant after the vector or the cloud grew.
    fn compact(&mut self) {
        let cloud = std::mem::take(&mut self.cloud);
        // The cloud iterates by node, then counter: a run n+1, n+2, ... folds in one pass.
        for dot in cloud {
            let known = self.clock.get(dot.node);
            if dot.counter <= known {
                continue;
            }
            if dot.counter == known.saturating_add(1) {
                self.clock.add_dot(dot);
            } else {
                self.cloud.insert(dot);
            }
        }
    }

    /// Folds the cloud dots of `node` that have become contiguous into the vector.
    fn absorb(&mut self, node: NodeId) {
        loop {
            let next = Dot::new(node, self.clock.get(node).saturating_add(1));
            if !self.cloud.remove(&next) {
                break;
            }
            self.clock.add_dot(next);
        }
    }

    /// Checks the compaction invariant (decoding builds it; tests check it after every step).
    #[cfg(test)]
    pub(crate) fn is_compact(&self) -> bool {
        self.cloud
            .iter()
            .all(|d| d.counter > self.clock.get(d.node).saturating_add(1))
    }
}

/// Rejects the impossible dot counter 0.
pub(crate) fn check_dot(dot: Dot) -> Result<(), CrdtError> {
    if dot.counter == 0 {
        return Err(CrdtError::ZeroDot { node: dot.node });
    }
    Ok(())
}

/// Checks that a live dot is valid and covered by the state's context.
pub(crate) fn check_covered(dot: Dot, context: &DotContext) -> Result<(), CrdtError> {
    check_dot(dot)?;
    if !context.contains(dot) {
        return Err(CrdtError::DotNotInContext {
            node: dot.node,
            counter: dot.counter,
        });
    }
    Ok(())
}

/// Joins the live dots of one entry: a dot survives if both sides have it, or if one side has
/// it and the other side never saw it (a dot seen but absent was removed there).
///
/// `mine_ctx` must be the context of `mine` before it is merged with `theirs_ctx`.
pub(crate) fn join_dot_sets(
    mine: &mut BTreeSet<Dot>,
    mine_ctx: &DotContext,
    theirs: &BTreeSet<Dot>,
    theirs_ctx: &DotContext,
) {
    mine.retain(|d| theirs.contains(d) || !theirs_ctx.contains(*d));
    for &dot in theirs {
        if !mine_ctx.contains(dot) {
            mine.insert(dot);
        }
    }
}

/// [`join_dot_sets`] for dots that carry a payload; `both` combines the payloads of a dot
/// present on both sides.
pub(crate) fn join_dot_maps<T: Clone>(
    mine: &mut BTreeMap<Dot, T>,
    mine_ctx: &DotContext,
    theirs: &BTreeMap<Dot, T>,
    theirs_ctx: &DotContext,
    mut both: impl FnMut(&mut T, &T),
) {
    mine.retain(|d, payload| match theirs.get(d) {
        Some(other) => {
            both(payload, other);
            true
        }
        None => !theirs_ctx.contains(*d),
    });
    for (&dot, payload) in theirs {
        if !mine_ctx.contains(dot) {
            mine.entry(dot).or_insert_with(|| payload.clone());
        }
    }
}

/// Serialises a map as a sequence of `[key, value]` pairs, so keys need not be strings in
/// JSON (dots, structured set elements).
pub(crate) struct Pairs<'a, K, V>(pub(crate) &'a BTreeMap<K, V>);

impl<K: Serialize, V: Serialize> Serialize for Pairs<'_, K, V> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.0.iter())
    }
}

/// `serialize_with` adapter for [`Pairs`].
pub(crate) fn serialize_pairs<K: Serialize, V: Serialize, S: Serializer>(
    map: &BTreeMap<K, V>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    Pairs(map).serialize(serializer)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn dot(node: u64, counter: u64) -> Dot {
        Dot::new(node, counter)
    }

    fn arb_dots() -> impl Strategy<Value = Vec<Dot>> {
        proptest::collection::vec((0u64..3, 1u64..8).prop_map(|(n, c)| dot(n, c)), 0..12)
    }

    fn context_of(dots: &[Dot]) -> DotContext {
        let mut c = DotContext::new();
        for &d in dots {
            c.insert(d);
        }
        c
    }

    #[test]
    fn contiguous_dots_fold_into_the_vector() {
        let mut c = DotContext::new();
        c.insert(dot(1, 3));
        c.insert(dot(1, 2));
        assert_eq!(c.cloud().len(), 2);
        assert_eq!(c.clock().get(NodeId(1)), 0);
        c.insert(dot(1, 1));
        assert!(c.cloud().is_empty());
        assert_eq!(c.clock().get(NodeId(1)), 3);
    }

    #[test]
    fn next_dot_is_above_cloud_dots() {
        let mut c = context_of(&[dot(1, 1), dot(1, 5)]);
        assert_eq!(c.next_dot(NodeId(1)), dot(1, 6));
        assert_eq!(c.next_dot(NodeId(2)), dot(2, 1));
        assert!(c.contains(dot(1, 6)));
        assert!(!c.contains(dot(1, 3)));
    }

    #[test]
    fn golden_json() {
        let c = context_of(&[dot(1, 1), dot(1, 2), dot(2, 4)]);
        let json = serde_json::to_string(&c).unwrap();
        assert_eq!(json, r#"{"vv":{"1":2},"cloud":[{"node":2,"counter":4}]}"#);
        assert_eq!(serde_json::from_str::<DotContext>(&json).unwrap(), c);
    }

    #[test]
    fn decoding_compacts_and_rejects_zero_counters() {
        let loose =
            r#"{"vv":{"1":1,"3":0},"cloud":[{"node":1,"counter":2},{"node":1,"counter":1}]}"#;
        let c: DotContext = serde_json::from_str(loose).unwrap();
        assert_eq!(c, context_of(&[dot(1, 1), dot(1, 2)]));
        let zero = r#"{"vv":{},"cloud":[{"node":1,"counter":0}]}"#;
        assert!(serde_json::from_str::<DotContext>(zero).is_err());
    }

    proptest! {
        #[test]
        fn context_is_exactly_the_set_of_dots(a in arb_dots(), b in arb_dots()) {
            let (ca, cb) = (context_of(&a), context_of(&b));
            let mut merged = ca.clone();
            merged.merge(&cb);
            prop_assert!(ca.is_compact() && cb.is_compact() && merged.is_compact());
            for node in 0..3 {
                for counter in 1..9 {
                    let d = dot(node, counter);
                    prop_assert_eq!(ca.contains(d), a.contains(&d));
                    prop_assert_eq!(merged.contains(d), a.contains(&d) || b.contains(&d));
                }
            }
            // Canonical: the same set built in another order is the same structure.
            let mut rev = b.clone();
            rev.extend(a.iter().rev());
            prop_assert_eq!(&context_of(&rev), &merged);
        }

        #[test]
        fn merge_is_a_join(a in arb_dots(), b in arb_dots(), c in arb_dots()) {
            let (a, b, c) = (context_of(&a), context_of(&b), context_of(&c));
            let join = |x: &DotContext, y: &DotContext| { let mut z = x.clone(); z.merge(y); z };
            prop_assert_eq!(join(&a, &b), join(&b, &a));
            prop_assert_eq!(join(&join(&a, &b), &c), join(&a, &join(&b, &c)));
            prop_assert_eq!(join(&a, &a), a.clone());
        }
    }
}
