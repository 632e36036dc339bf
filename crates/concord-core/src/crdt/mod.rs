//! Conflict-free replicated data types (state-based, "CvRDTs").
//!
//! AP buckets of a CRDT type keep one of these states per key at every replica. Replicas
//! change their own copy with operations that name the acting node explicitly (there is no
//! global state and no clock inside), and ship whole states to each other; the receiver calls
//! [`Crdt::merge`]. Merging happens at write, read, read-repair and anti-entropy time, in any
//! order and any number of times, so the only requirement on delivery is that every state
//! eventually reaches every replica.
//!
//! | type | semantics |
//! |---|---|
//! | [`GCounter`] | grow-only counter, one saturating count per node |
//! | [`PnCounter`] | counter with increments and decrements (two G-Counters), exact `i128` value |
//! | [`LwwRegister`] | last writer wins by hybrid logical timestamp, node id breaks ties |
//! | [`MvRegister`] | multi-value register: concurrent assignments survive as siblings |
//! | [`OrSet`] | add-wins observed-remove set |
//! | [`OrMap`] | observed-remove map of nested CRDTs, update wins over a concurrent remove |
//! | [`EnableWinsFlag`] | boolean flag, enable wins over a concurrent disable |
//! | [`RedisValue`] | a Redis key: LWW register whose writes start epochs; per epoch a PN-counter, an OR-set of members and a multi-value expiry (`docs/ap.md`) |
//!
//! The dotted types ([`MvRegister`], [`OrSet`], [`OrMap`], [`EnableWinsFlag`]) follow the
//! "optimized OR-Set" / causal-CRDT construction (Bieniusa et al., 2012; Almeida, Shoker,
//! Baquero, "Delta State Replicated Data Types", 2018): every write is a unique [`Dot`]
//! `(node, counter)` and each state carries a [`DotContext`] of every dot it has ever seen.
//! A dot that is in the context but no longer in the state was removed or overwritten, so a
//! merge can tell "removed here" (drop it) from "not yet seen here" (keep it) without
//! tombstones per element.
//!
//! # Guarantees
//!
//! 1. For every type, `merge` is a join of a semilattice: commutative, associative and
//!    idempotent on the full state (not only on the observed value). Hence replicas that have
//!    received the same set of states are equal, whatever the order, duplication or staleness
//!    of deliveries.
//! 2. Operations only move a state up in that lattice (an operation's result merged with the
//!    state before it is the result), so merging an older copy of a state is a no-op.
//! 3. Dotted types: a remove or overwrite affects exactly the dots the acting replica had
//!    observed. A merge never resurrects a removed dot, and a write concurrent with a remove
//!    (a dot the remover had not seen) survives it.
//! 4. Serialised states use explicit, stable field names (pinned by golden tests), and
//!    decoding validates the invariants ([`CrdtError`]), so a corrupt or hostile state is
//!    rejected instead of breaking the laws above.
//! 5. Merges of dotted types cost `O((n + m) log(n + m))` for states of `n` and `m` entries;
//!    nothing is quadratic.
//!
//! [`Dot`]: crate::clock::Dot

mod context;
mod counter;
mod flag;
mod lww;
mod map;
mod mvreg;
mod orset;
mod redis_value;
#[cfg(test)]
mod tests;

use crate::NodeId;

pub use context::DotContext;
pub use counter::{GCounter, PnCounter};
pub use flag::EnableWinsFlag;
pub use lww::LwwRegister;
pub use map::OrMap;
pub use mvreg::MvRegister;
pub use orset::OrSet;
pub use redis_value::{
    parse_integer, CollectionsLayout, CollectionsLayoutRef, Expiry, HashField, Kind, RedisValue,
    Seen, SetExpiry, Stamp, StringLayout, StringLayoutRef, ValueError,
};

/// A state-based CRDT: a join-semilattice whose join is [`Crdt::merge`].
///
/// # Guarantees
///
/// Implementations guarantee, for all states `a`, `b`, `c` reachable by their operations:
/// `a ⊔ b = b ⊔ a`, `(a ⊔ b) ⊔ c = a ⊔ (b ⊔ c)` and `a ⊔ a = a`, as equality of the whole
/// state, and therefore of [`Crdt::value`].
pub trait Crdt {
    /// What a reader observes.
    type Value;

    /// Joins `other` into `self` (least upper bound of both states).
    fn merge(&mut self, other: &Self);

    /// The observed value of the state.
    fn value(&self) -> Self::Value;

    /// The join of `self` and `other`, as a new state.
    fn merged(&self, other: &Self) -> Self
    where
        Self: Clone,
    {
        let mut out = self.clone();
        out.merge(other);
        out
    }
}

/// Why a decoded CRDT state was rejected: it could not have been produced by the operations
/// and merges of this module.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CrdtError {
    /// A dot's counter is 0; counters start at 1.
    #[error("dot of node {node} has counter 0")]
    ZeroDot {
        /// The node of the dot.
        node: NodeId,
    },
    /// A live dot is missing from the state's causal context.
    #[error("dot {node}:{counter} is not covered by the causal context")]
    DotNotInContext {
        /// The node of the dot.
        node: NodeId,
        /// The counter of the dot.
        counter: u64,
    },
    /// The same dot names two writes.
    #[error("dot {node}:{counter} appears twice")]
    DuplicateDot {
        /// The node of the dot.
        node: NodeId,
        /// The counter of the dot.
        counter: u64,
    },
    /// The same element or key appears twice.
    #[error("duplicate element or key")]
    DuplicateKey,
    /// An element or key is present without any dot.
    #[error("element or key without dots")]
    EmptyEntry,
}
