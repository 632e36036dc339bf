//! Last-writer-wins register.
//!
//! Every write carries the hybrid logical [`Timestamp`] of its node's clock and the writing
//! [`NodeId`]. The register keeps the write with the greatest `(timestamp, node)` pair: the
//! timestamp orders writes close to real time (and after every write the writer had seen,
//! since the HLC observes remote timestamps), and the node id breaks ties between nodes
//! deterministically, so every replica picks the same winner.
//!
//! # Guarantees
//!
//! 1. `merge` keeps the maximum by `(timestamp, node)`: a join, given that a node never
//!    issues two writes with the same timestamp (its [`Hlc`] guarantees that, since its
//!    timestamps strictly increase).
//! 2. Concurrent writes are *not* kept: exactly one survives, the same one everywhere. Use
//!    [`MvRegister`] to keep them.
//! 3. A write with a timestamp not above the current one (or equal, from a lower node) has no
//!    effect, so re-applying or re-delivering an old write cannot roll the register back.
//!
//! [`Hlc`]: crate::clock::Hlc
//! [`MvRegister`]: crate::crdt::MvRegister

use crate::clock::Timestamp;
use crate::NodeId;
use serde::{Deserialize, Serialize};

use crate::crdt::Crdt;

/// A register where the write with the greatest `(timestamp, node)` wins.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(bound(serialize = "V: Serialize", deserialize = "V: Deserialize<'de>"))]
pub struct LwwRegister<V> {
    // None until the first write; every write beats None.
    #[serde(rename = "write")]
    write: Option<Write<V>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
struct Write<V> {
    #[serde(rename = "value")]
    value: V,
    #[serde(rename = "ts")]
    timestamp: Timestamp,
    #[serde(rename = "node")]
    node: NodeId,
}

impl<V> Default for LwwRegister<V> {
    fn default() -> Self {
        Self { write: None }
    }
}

impl<V> LwwRegister<V> {
    /// An empty register.
    pub fn new() -> Self {
        Self::default()
    }

    /// Writes `value` at `timestamp` on behalf of `node`; returns whether it won (it loses to
    /// a current write with a greater or equal `(timestamp, node)`).
    pub fn set(&mut self, value: V, timestamp: Timestamp, node: NodeId) -> bool {
        let wins = self
            .write
            .as_ref()
            .is_none_or(|w| (timestamp, node) > (w.timestamp, w.node));
        if wins {
            self.write = Some(Write {
                value,
                timestamp,
                node,
            });
        }
        wins
    }

    /// The current value, if anything was written.
    pub fn get(&self) -> Option<&V> {
        self.write.as_ref().map(|w| &w.value)
    }

    /// The timestamp of the winning write.
    pub fn timestamp(&self) -> Option<Timestamp> {
        self.write.as_ref().map(|w| w.timestamp)
    }

    /// The node of the winning write.
    pub fn writer(&self) -> Option<NodeId> {
        self.write.as_ref().map(|w| w.node)
    }
}

impl<V: Clone> Crdt for LwwRegister<V> {
    /// The winning value, `None` before the first write.
    type Value = Option<V>;

    fn merge(&mut self, other: &Self) {
        if let Some(w) = &other.write {
            self.set(w.value.clone(), w.timestamp, w.node);
        }
    }

    fn value(&self) -> Option<V> {
        self.get().cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(physical_ms: u64, logical: u16) -> Timestamp {
        Timestamp::new(physical_ms, logical)
    }

    #[test]
    fn later_timestamp_wins_whatever_the_node() {
        let mut a = LwwRegister::new();
        let mut b = LwwRegister::new();
        a.set("old", ts(10, 0), NodeId(9));
        b.set("new", ts(10, 1), NodeId(1));
        assert_eq!(a.merged(&b).get(), Some(&"new"));
        assert_eq!(b.merged(&a).get(), Some(&"new"));
        assert!(!b.set("stale", ts(9, 0), NodeId(9)));
        assert_eq!(b.get(), Some(&"new"));
    }

    #[test]
    fn tie_is_broken_by_node_id() {
        let mut a = LwwRegister::new();
        let mut b = LwwRegister::new();
        a.set("from 1", ts(10, 0), NodeId(1));
        b.set("from 2", ts(10, 0), NodeId(2));
        assert_eq!(a.merged(&b).value(), Some("from 2"));
        assert_eq!(b.merged(&a).value(), Some("from 2"));
        assert_eq!(a.merged(&b).writer(), Some(NodeId(2)));
    }

    #[test]
    fn empty_register_loses_to_any_write() {
        let mut a: LwwRegister<u8> = LwwRegister::new();
        assert_eq!(a.value(), None);
        assert!(a.set(1, Timestamp::default(), NodeId(0)));
        assert_eq!(a.merged(&LwwRegister::new()).value(), Some(1));
    }

    #[test]
    fn golden_json() {
        let mut a = LwwRegister::new();
        a.set("v".to_string(), ts(1_700, 3), NodeId(2));
        let json = serde_json::to_string(&a).unwrap();
        assert_eq!(
            json,
            r#"{"write":{"value":"v","ts":{"physical_ms":1700,"logical":3},"node":2}}"#
        );
        assert_eq!(
            serde_json::from_str::<LwwRegister<String>>(&json).unwrap(),
            a
        );
        let empty = serde_json::to_string(&LwwRegister::<String>::new()).unwrap();
        assert_eq!(empty, r#"{"write":null}"#);
    }
}
