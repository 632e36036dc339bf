//! Observed-remove map of nested CRDTs (OR-Map).
//!
//! A key holds a small set of *states* of the nested CRDT, each tagged with the dot of the
//! map update that produced it. The key is present while it holds at least one state (like an
//! element of the [`OrSet`](crate::crdt::OrSet)), and its value is the merge of its states.
//!
//! * `update(key, node, f)` reads the key's value (the merge of its states, or `V::default()`
//!   if absent), applies `f` to it, and replaces the states it read by one state under a new
//!   dot. Because the new state was built on top of the old ones, replacing them loses
//!   nothing.
//! * `remove(key)` drops the key's observed states; their dots stay in the causal context, so
//!   no merge brings them back.
//! * `merge` joins the dotted states per key exactly like the OR-Set joins dots (states
//!   under the same dot, which both sides got from the same update, are merged).
//!
//! # Remove versus a concurrent update
//!
//! **Update wins, and nothing is reset.** If replica A removes a key while replica B
//! concurrently updates it, B's state has a dot A never saw, so after the merge the key is
//! present with B's state: everything B had observed (including the effects A's remove meant
//! to discard) plus B's update. Only states the remover observed and that no concurrent update
//! built on are discarded. This is the add-wins choice of the OR-Set lifted to nested values;
//! it needs nothing from `V` but [`Crdt`], so it nests arbitrarily (maps of maps).
//!
//! Known limitation of the no-reset choice: if A removes a key and then *itself* re-creates
//! it (from `V::default()`) before receiving B's concurrent update of the old state, A's new
//! nested writes reuse A's old nested identities (its G-Counter entries, its nested dots), and
//! merging them with B's state can mask them (e.g. A's new counter increments hidden under
//! A's old, larger count). Avoiding that needs nested types that share the map's causal
//! context (Almeida et al.'s causal CRDTs), not a generic `V: Crdt`. Updates that follow a
//! merge of all concurrent states are never affected.
//!
//! # Guarantees
//!
//! 1. `merge` is a join of full states for every nested `V` whose merge is a join
//!    (checked with `PnCounter`, `OrSet` and nested `OrMap` values).
//! 2. A remove removes exactly the observed states of the key; no merge resurrects them.
//! 3. An update concurrent with a remove keeps the key (update wins).
//! 4. Concurrent updates of a key merge: the key's value is the join of every surviving state,
//!    so no concurrent nested update is lost.
//! 5. A key holds at most one state per concurrent update; removed keys leave no tombstone.

use std::collections::BTreeMap;

use crate::clock::Dot;
use crate::NodeId;
use serde::{Deserialize, Serialize, Serializer};

use crate::crdt::context::{check_covered, join_dot_maps, Pairs};
use crate::crdt::{Crdt, CrdtError, DotContext};

/// An observed-remove map whose values are CRDTs.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(
    try_from = "RawOrMap<K, V>",
    bound(
        serialize = "K: Serialize, V: Serialize",
        deserialize = "K: Ord + Deserialize<'de>, V: Deserialize<'de>"
    )
)]
pub struct OrMap<K, V> {
    // Invariant: no state map is empty; every dot is in `context`.
    #[serde(rename = "entries", serialize_with = "serialize_entries")]
    entries: BTreeMap<K, BTreeMap<Dot, V>>,
    #[serde(rename = "context")]
    context: DotContext,
}

/// `[[key, [[dot, state], ...]], ...]`: keys and dots need not be JSON strings.
fn serialize_entries<K: Serialize, V: Serialize, S: Serializer>(
    entries: &BTreeMap<K, BTreeMap<Dot, V>>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.collect_seq(entries.iter().map(|(k, states)| (k, Pairs(states))))
}

#[derive(Deserialize)]
struct RawOrMap<K, V> {
    entries: Vec<(K, Vec<(Dot, V)>)>,
    context: DotContext,
}

impl<K: Ord, V> TryFrom<RawOrMap<K, V>> for OrMap<K, V> {
    type Error = CrdtError;

    fn try_from(raw: RawOrMap<K, V>) -> Result<Self, CrdtError> {
        let mut entries = BTreeMap::new();
        for (key, raw_states) in raw.entries {
            if raw_states.is_empty() {
                return Err(CrdtError::EmptyEntry);
            }
            let mut states = BTreeMap::new();
            for (dot, state) in raw_states {
                check_covered(dot, &raw.context)?;
                if states.insert(dot, state).is_some() {
                    return Err(CrdtError::DuplicateDot {
                        node: dot.node,
                        counter: dot.counter,
                    });
                }
            }
            if entries.insert(key, states).is_some() {
                return Err(CrdtError::DuplicateKey);
            }
        }
        Ok(Self {
            entries,
            context: raw.context,
        })
    }
}

impl<K, V> Default for OrMap<K, V> {
    fn default() -> Self {
        Self {
            entries: BTreeMap::new(),
            context: DotContext::new(),
        }
    }
}

impl<K: Ord, V: Crdt + Default + Clone> OrMap<K, V> {
    /// An empty map.
    pub fn new() -> Self {
        Self::default()
    }

    /// Updates the value of `key` on behalf of `node`: `f` gets the current value (or
    /// `V::default()` if the key is absent) and changes it with `V`'s own operations, acting
    /// as `node` too. Returns what `f` returns.
    pub fn update<R>(&mut self, key: K, node: NodeId, f: impl FnOnce(&mut V) -> R) -> R {
        let mut value = self.get(&key).unwrap_or_default();
        let out = f(&mut value);
        let dot = self.context.next_dot(node);
        // The states read are superseded by `value`, which was built on all of them.
        self.entries.insert(key, BTreeMap::from([(dot, value)]));
        out
    }

    /// Removes `key`, discarding exactly the states of it this replica has observed; returns
    /// whether it was present.
    pub fn remove(&mut self, key: &K) -> bool {
        self.entries.remove(key).is_some()
    }

    /// Records an event of `node` that writes no key (a remove) under a new dot of its own,
    /// so that the context shows which of `node`'s events a state has seen; returns the
    /// dot. Joins treat it as an update already removed.
    pub fn mark(&mut self, node: NodeId) -> Dot {
        self.context.next_dot(node)
    }

    /// The value of `key`: the merge of its surviving states.
    pub fn get(&self, key: &K) -> Option<V> {
        self.entries.get(key).map(join_states)
    }

    /// Whether `key` is present.
    pub fn contains_key(&self, key: &K) -> bool {
        self.entries.contains_key(key)
    }

    /// The keys, in order.
    pub fn keys(&self) -> impl Iterator<Item = &K> + '_ {
        self.entries.keys()
    }

    /// The number of keys.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no key is present.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// How many concurrent states `key` holds (0 if absent).
    pub fn states(&self, key: &K) -> usize {
        self.entries.get(key).map_or(0, BTreeMap::len)
    }

    /// Every update and remove this state has seen.
    pub fn context(&self) -> &DotContext {
        &self.context
    }
}

fn join_states<V: Crdt + Default + Clone>(states: &BTreeMap<Dot, V>) -> V {
    let mut iter = states.values();
    let mut value = iter.next().cloned().unwrap_or_default();
    for state in iter {
        value.merge(state);
    }
    value
}

impl<K: Ord + Clone, V: Crdt + Default + Clone> Crdt for OrMap<K, V> {
    /// Every present key with the value of its merged states.
    type Value = BTreeMap<K, V::Value>;

    fn merge(&mut self, other: &Self) {
        self.entries.retain(|key, states| {
            match other.entries.get(key) {
                // The same dot on both sides is the same update; merging its states is a
                // no-op for valid states and keeps the join robust otherwise.
                Some(theirs) => join_dot_maps(
                    states,
                    &self.context,
                    theirs,
                    &other.context,
                    |mine, theirs| mine.merge(theirs),
                ),
                None => states.retain(|d, _| !other.context.contains(*d)),
            }
            !states.is_empty()
        });
        for (key, theirs) in &other.entries {
            if self.entries.contains_key(key) {
                continue;
            }
            let fresh: BTreeMap<Dot, V> = theirs
                .iter()
                .filter(|(&d, _)| !self.context.contains(d))
                .map(|(&d, v)| (d, v.clone()))
                .collect();
            if !fresh.is_empty() {
                self.entries.insert(key.clone(), fresh);
            }
        }
        self.context.merge(&other.context);
    }

    fn value(&self) -> Self::Value {
        self.entries
            .iter()
            .map(|(k, states)| (k.clone(), join_states(states).value()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crdt::{OrSet, PnCounter};

    const A: NodeId = NodeId(1);
    const B: NodeId = NodeId(2);

    fn incr(map: &mut OrMap<&'static str, PnCounter>, key: &'static str, node: NodeId, by: i64) {
        map.update(key, node, |c| c.add(node, by));
    }

    #[test]
    fn concurrent_updates_of_a_nested_counter_add_up() {
        let mut a = OrMap::new();
        incr(&mut a, "k", A, 1);
        let mut b = a.clone();
        incr(&mut a, "k", A, 2);
        incr(&mut b, "k", B, 10);
        let merged = a.merged(&b);
        assert_eq!(merged.get(&"k").map(|c| c.value()), Some(13));
        assert_eq!(merged.states(&"k"), 2);
        // The next update collapses the concurrent states into one.
        let mut c = merged.clone();
        incr(&mut c, "k", A, 0);
        assert_eq!(c.states(&"k"), 1);
        assert_eq!(c.value(), merged.value());
    }

    #[test]
    fn remove_versus_concurrent_update_keeps_the_updated_key() {
        let mut a = OrMap::new();
        incr(&mut a, "k", A, 5);
        let mut b = a.clone();
        a.remove(&"k");
        incr(&mut b, "k", B, 1);
        for merged in [a.merged(&b), b.merged(&a)] {
            // Update wins without reset: B's state includes the 5 it had observed.
            assert_eq!(merged.value(), BTreeMap::from([("k", 6)]));
        }
    }

    #[test]
    fn remove_of_observed_state_sticks() {
        let mut a = OrMap::new();
        incr(&mut a, "k", A, 5);
        incr(&mut a, "j", A, 1);
        let b = a.clone();
        a.remove(&"k");
        assert_eq!(a.merged(&b).value(), BTreeMap::from([("j", 1)]));
        assert_eq!(b.merged(&a).value(), BTreeMap::from([("j", 1)]));
        // Re-adding after the remove starts from a fresh value.
        let mut c = a.merged(&b);
        incr(&mut c, "k", B, 2);
        assert_eq!(c.get(&"k").map(|v| v.value()), Some(2));
    }

    #[test]
    fn nested_maps_and_sets_merge() {
        let mut a: OrMap<u8, OrMap<u8, OrSet<u8>>> = OrMap::new();
        a.update(1, A, |inner| inner.update(1, A, |s| s.add(1, A)));
        let mut b = a.clone();
        a.update(1, A, |inner| inner.update(1, A, |s| s.add(2, A)));
        b.update(1, B, |inner| {
            inner.update(1, B, |s| s.remove(&1));
            inner.update(2, B, |s| s.add(3, B));
        });
        let merged = a.merged(&b);
        assert_eq!(merged, b.merged(&a));
        let expected = BTreeMap::from([(1, BTreeMap::from([(1, [2].into()), (2, [3].into())]))]);
        assert_eq!(merged.value(), expected);
    }

    #[test]
    fn golden_json() {
        let mut a: OrMap<String, PnCounter> = OrMap::new();
        a.update("k".to_string(), A, |c| c.increment(A, 2));
        let json = serde_json::to_string(&a).unwrap();
        assert_eq!(
            json,
            concat!(
                r#"{"entries":[["k",[[{"node":1,"counter":1},"#,
                r#"{"p":{"counts":{"1":2}},"n":{"counts":{}}}]]]],"#,
                r#""context":{"vv":{"1":1},"cloud":[]}}"#
            )
        );
        assert_eq!(
            serde_json::from_str::<OrMap<String, PnCounter>>(&json).unwrap(),
            a
        );
        let empty = r#"{"entries":[["k",[]]],"context":{"vv":{},"cloud":[]}}"#;
        assert!(serde_json::from_str::<OrMap<String, PnCounter>>(empty).is_err());
    }
}
