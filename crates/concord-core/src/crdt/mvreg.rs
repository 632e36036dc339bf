//! Multi-value register.
//!
//! Each assignment is a dot holding a value. An assignment at a replica replaces exactly the
//! values that replica holds (the ones it has observed) and records their dots in the causal
//! context; a merge drops a value whose dot the other side has seen and no longer holds. So
//! a value disappears only when some assignment that saw it has been merged in, and
//! assignments that did not see each other survive side by side as siblings, as in Riak and
//! Dynamo. The next assignment at any replica that has merged the siblings resolves them.
//!
//! # Guarantees
//!
//! 1. `merge` is a join (dotted-store join over the [`DotContext`]).
//! 2. Siblings exactly when concurrent: after any merges, the values held are the writes known
//!    to the state that no other known write has observed, i.e. the maximal writes under
//!    happened-before.
//! 3. An assignment never loses a value it did not observe.

use std::collections::BTreeMap;

use crate::clock::Dot;
use crate::NodeId;
use serde::{Deserialize, Serialize};

use crate::crdt::context::{check_covered, join_dot_maps, serialize_pairs};
use crate::crdt::{Crdt, CrdtError, DotContext};

/// A register that keeps concurrent assignments as siblings.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(
    try_from = "RawMvRegister<V>",
    bound(serialize = "V: Serialize", deserialize = "V: Deserialize<'de>")
)]
pub struct MvRegister<V> {
    // Invariant: every dot here is in `context`.
    #[serde(rename = "values", serialize_with = "serialize_pairs")]
    values: BTreeMap<Dot, V>,
    #[serde(rename = "context")]
    context: DotContext,
}

#[derive(Deserialize)]
struct RawMvRegister<V> {
    values: Vec<(Dot, V)>,
    context: DotContext,
}

impl<V> TryFrom<RawMvRegister<V>> for MvRegister<V> {
    type Error = CrdtError;

    fn try_from(raw: RawMvRegister<V>) -> Result<Self, CrdtError> {
        let mut values = BTreeMap::new();
        for (dot, value) in raw.values {
            check_covered(dot, &raw.context)?;
            if values.insert(dot, value).is_some() {
                return Err(CrdtError::DuplicateDot {
                    node: dot.node,
                    counter: dot.counter,
                });
            }
        }
        Ok(Self {
            values,
            context: raw.context,
        })
    }
}

impl<V> Default for MvRegister<V> {
    fn default() -> Self {
        Self {
            values: BTreeMap::new(),
            context: DotContext::new(),
        }
    }
}

impl<V> MvRegister<V> {
    /// An empty register.
    pub fn new() -> Self {
        Self::default()
    }

    /// Assigns `value` on behalf of `node`, replacing every value this replica holds; returns
    /// the new write's dot.
    pub fn assign(&mut self, value: V, node: NodeId) -> Dot {
        let dot = self.context.next_dot(node);
        // The replaced dots stay in the context, so merges will not bring them back.
        self.values.clear();
        self.values.insert(dot, value);
        dot
    }

    /// The current values (one, or several concurrent siblings), in dot order.
    pub fn read(&self) -> impl Iterator<Item = &V> + '_ {
        self.values.values()
    }

    /// The current values with the dots of the writes that made them.
    pub fn entries(&self) -> impl Iterator<Item = (Dot, &V)> + '_ {
        self.values.iter().map(|(&d, v)| (d, v))
    }

    /// How many values are held (more than one means concurrent siblings).
    pub fn len(&self) -> usize {
        self.values.len()
    }

    /// Whether nothing was assigned yet.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// Every write this state has seen.
    pub fn context(&self) -> &DotContext {
        &self.context
    }
}

impl<V: Clone> Crdt for MvRegister<V> {
    /// All current values, in dot order.
    type Value = Vec<V>;

    fn merge(&mut self, other: &Self) {
        // A dot names one write, so a dot on both sides holds the same value.
        join_dot_maps(
            &mut self.values,
            &self.context,
            &other.values,
            &other.context,
            |_, _| {},
        );
        self.context.merge(&other.context);
    }

    fn value(&self) -> Vec<V> {
        self.values.values().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const A: NodeId = NodeId(1);
    const B: NodeId = NodeId(2);

    #[test]
    fn concurrent_assigns_are_siblings_and_a_later_assign_resolves_them() {
        let mut a = MvRegister::new();
        let mut b = MvRegister::new();
        a.assign("x", A);
        b.assign("y", B);
        a.merge(&b);
        assert_eq!(a.value(), vec!["x", "y"]);
        a.assign("z", A);
        assert_eq!(a.value(), vec!["z"]);
        b.merge(&a);
        assert_eq!(b.value(), vec!["z"]);
    }

    #[test]
    fn sequential_assigns_leave_one_value() {
        let mut a = MvRegister::new();
        a.assign(1, A);
        let mut b = a.clone();
        b.assign(2, B);
        a.merge(&b);
        assert_eq!(a.value(), vec![2]);
        // The stale state brings nothing back.
        let stale = {
            let mut s = MvRegister::new();
            s.assign(1, A);
            s
        };
        a.merge(&stale);
        assert_eq!(a.value(), vec![2]);
    }

    #[test]
    fn golden_json() {
        let mut a = MvRegister::new();
        a.assign("x".to_string(), A);
        let mut b = MvRegister::new();
        b.assign("y".to_string(), B);
        a.merge(&b);
        let json = serde_json::to_string(&a).unwrap();
        assert_eq!(
            json,
            concat!(
                r#"{"values":[[{"node":1,"counter":1},"x"],[{"node":2,"counter":1},"y"]],"#,
                r#""context":{"vv":{"1":1,"2":1},"cloud":[]}}"#
            )
        );
        assert_eq!(
            serde_json::from_str::<MvRegister<String>>(&json).unwrap(),
            a
        );
        let uncovered =
            r#"{"values":[[{"node":1,"counter":2},"x"]],"context":{"vv":{"1":1},"cloud":[]}}"#;
        assert!(serde_json::from_str::<MvRegister<String>>(uncovered).is_err());
    }

    proptest! {
        /// Siblings exactly when concurrent: track each write's causal past (the context of
        /// its replica when it was made) and check that a state holds exactly the known writes
        /// that no other known write has in its past.
        #[test]
        fn siblings_exactly_when_concurrent(
            steps in proptest::collection::vec((0usize..3, 0usize..3, any::<bool>()), 1..30)
        ) {
            let mut replicas: Vec<MvRegister<u8>> = vec![MvRegister::new(); 3];
            let mut past: BTreeMap<Dot, DotContext> = BTreeMap::new();
            for (i, j, assign) in steps {
                if assign {
                    let before = replicas[i].context().clone();
                    let dot = replicas[i].assign(0, NodeId(i as u64));
                    past.insert(dot, before);
                } else {
                    let other = replicas[j].clone();
                    replicas[i].merge(&other);
                }
            }
            for r in &replicas {
                let known: Vec<Dot> =
                    past.keys().copied().filter(|&d| r.context().contains(d)).collect();
                let maximal: Vec<Dot> = known
                    .iter()
                    .copied()
                    .filter(|&d| !known.iter().any(|w| past[w].contains(d)))
                    .collect();
                let held: Vec<Dot> = r.entries().map(|(d, _)| d).collect();
                prop_assert_eq!(held, maximal);
            }
        }
    }
}
