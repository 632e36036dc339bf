//! Grow-only and increment/decrement counters.
//!
//! A [`GCounter`] keeps, for every node, how much that node has added; its value is the sum.
//! Each node only raises its own entry, so the pointwise maximum of two states counts every
//! increment exactly once. A [`PnCounter`] pairs two G-Counters, one for increments and one
//! for decrements.
//!
//! # Guarantees
//!
//! 1. `merge` is the pointwise maximum: a join.
//! 2. No increment is lost or counted twice, whatever the delivery order.
//! 3. No overflow panics: a node's own entry saturates at `u64::MAX` (an increment that would
//!    pass it is clamped, which stays monotonic and so keeps the lattice laws);
//!    [`GCounter::total`] is exact in `u128`, [`GCounter::value`] saturates at `u64::MAX`,
//!    and [`PnCounter::value`] is exact in `i128` (each side is at most `2⁶⁴ · nodes`).

use std::collections::BTreeMap;

use crate::NodeId;
use serde::{Deserialize, Serialize};

use crate::crdt::Crdt;

/// A grow-only counter: one saturating count per node.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(from = "RawGCounter")]
pub struct GCounter {
    // Invariant: no entry is 0, so equal counts are equal structures.
    #[serde(rename = "counts")]
    counts: BTreeMap<NodeId, u64>,
}

#[derive(Deserialize)]
struct RawGCounter {
    counts: BTreeMap<NodeId, u64>,
}

impl From<RawGCounter> for GCounter {
    fn from(mut raw: RawGCounter) -> Self {
        raw.counts.retain(|_, c| *c != 0);
        GCounter { counts: raw.counts }
    }
}

impl GCounter {
    /// The zero counter.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `by` on behalf of `node` (saturating) and returns that node's new count.
    pub fn increment(&mut self, node: NodeId, by: u64) -> u64 {
        if by == 0 {
            return self.count(node);
        }
        let count = self.counts.entry(node).or_insert(0);
        *count = count.saturating_add(by);
        *count
    }

    /// How much `node` has added.
    pub fn count(&self, node: NodeId) -> u64 {
        self.counts.get(&node).copied().unwrap_or(0)
    }

    /// The exact sum of all counts.
    pub fn total(&self) -> u128 {
        self.counts.values().map(|&c| u128::from(c)).sum()
    }

    /// The per-node counts, in node order.
    pub fn iter(&self) -> impl Iterator<Item = (NodeId, u64)> + '_ {
        self.counts.iter().map(|(&n, &c)| (n, c))
    }
}

impl Crdt for GCounter {
    /// The sum of all counts, saturating at `u64::MAX` (see [`GCounter::total`]).
    type Value = u64;

    fn merge(&mut self, other: &Self) {
        for (&node, &count) in &other.counts {
            let mine = self.counts.entry(node).or_insert(0);
            *mine = (*mine).max(count);
        }
    }

    fn value(&self) -> u64 {
        u64::try_from(self.total()).unwrap_or(u64::MAX)
    }
}

/// A counter that goes up and down: increments and decrements are two [`GCounter`]s.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PnCounter {
    #[serde(rename = "p")]
    increments: GCounter,
    #[serde(rename = "n")]
    decrements: GCounter,
}

impl PnCounter {
    /// The zero counter.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `by` on behalf of `node`.
    pub fn increment(&mut self, node: NodeId, by: u64) {
        self.increments.increment(node, by);
    }

    /// Subtracts `by` on behalf of `node`.
    pub fn decrement(&mut self, node: NodeId, by: u64) {
        self.decrements.increment(node, by);
    }

    /// Adds a signed `delta` on behalf of `node`.
    pub fn add(&mut self, node: NodeId, delta: i64) {
        if delta >= 0 {
            self.increment(node, delta.unsigned_abs());
        } else {
            self.decrement(node, delta.unsigned_abs());
        }
    }

    /// The increments.
    pub fn increments(&self) -> &GCounter {
        &self.increments
    }

    /// The decrements.
    pub fn decrements(&self) -> &GCounter {
        &self.decrements
    }
}

impl Crdt for PnCounter {
    /// Increments minus decrements, exact.
    type Value = i128;

    fn merge(&mut self, other: &Self) {
        self.increments.merge(&other.increments);
        self.decrements.merge(&other.decrements);
    }

    fn value(&self) -> i128 {
        // Each total is at most u64::MAX times the number of nodes, far below i128::MAX, so
        // the conversions and the subtraction are exact; saturation is only a backstop.
        let p = i128::try_from(self.increments.total()).unwrap_or(i128::MAX);
        let n = i128::try_from(self.decrements.total()).unwrap_or(i128::MAX);
        p.saturating_sub(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concurrent_increments_all_count() {
        let (a, b) = (NodeId(1), NodeId(2));
        let mut x = GCounter::new();
        let mut y = GCounter::new();
        x.increment(a, 3);
        y.increment(b, 4);
        x.merge(&y);
        x.merge(&y);
        assert_eq!(x.value(), 7);
        assert_eq!(x.count(a), 3);
    }

    #[test]
    fn saturates_instead_of_overflowing() {
        let mut x = GCounter::new();
        x.increment(NodeId(1), u64::MAX);
        assert_eq!(x.increment(NodeId(1), 5), u64::MAX);
        x.increment(NodeId(2), u64::MAX);
        assert_eq!(x.value(), u64::MAX);
        assert_eq!(x.total(), 2 * u128::from(u64::MAX));

        let mut p = PnCounter::new();
        p.decrement(NodeId(1), u64::MAX);
        p.decrement(NodeId(2), u64::MAX);
        p.add(NodeId(3), i64::MIN);
        assert_eq!(
            p.value(),
            -(2 * i128::from(u64::MAX)) - i128::from(i64::MIN.unsigned_abs())
        );
    }

    #[test]
    fn pn_counter_goes_both_ways() {
        let mut x = PnCounter::new();
        let mut y = PnCounter::new();
        x.add(NodeId(1), 10);
        y.add(NodeId(2), -3);
        x.add(NodeId(1), -2);
        x.merge(&y);
        assert_eq!(x.value(), 5);
    }

    #[test]
    fn golden_json() {
        let mut c = PnCounter::new();
        c.increment(NodeId(1), 5);
        c.decrement(NodeId(2), 2);
        let json = serde_json::to_string(&c).unwrap();
        assert_eq!(json, r#"{"p":{"counts":{"1":5}},"n":{"counts":{"2":2}}}"#);
        assert_eq!(serde_json::from_str::<PnCounter>(&json).unwrap(), c);
        // Zero entries are dropped on decode, keeping equal counters structurally equal.
        let g: GCounter = serde_json::from_str(r#"{"counts":{"1":5,"2":0}}"#).unwrap();
        assert_eq!(&g, c.increments());
    }
}
