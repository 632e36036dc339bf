//! Logical and hybrid clocks.
//!
//! * [`LamportClock`]: a scalar clock whose order is consistent with causality
//!   (`a → b ⇒ L(a) < L(b)`), used for heartbeat versions and ballots.
//! * [`VectorClock`]: one counter per node; its partial order *characterises* causality
//!   (`a → b ⇔ V(a) < V(b)`), so concurrent updates are detected instead of being
//!   silently ordered by wall-clock time.
//! * [`Dot`]: a single event `(node, counter)`, the unit of the dotted structures.
//! * [`DvvSet`]: a dotted version vector set, which keeps the sibling values of one key
//!   exactly while they are concurrent (as Riak does) without the sibling explosion of plain
//!   version vectors.
//! * [`Hlc`]: a hybrid logical clock (Kulkarni et al., 2014): close to physical time,
//!   monotonic even when the physical clock jumps back, and packed into a `u64` that sorts
//!   like the timestamp.
//!
//! # Guarantees
//!
//! 1. A Lamport clock never returns the same or a smaller value twice, and a value returned
//!    after observing `r` is greater than `r`.
//! 2. Vector clock comparison is a partial order (reflexive, antisymmetric, transitive) and
//!    `merge` is its least upper bound (commutative, associative, idempotent).
//! 3. A [`DvvSet`] keeps a value exactly while no other write that saw it has been observed:
//!    dominated values disappear, concurrent values survive as siblings.
//! 4. [`Hlc::now`] and [`Hlc::update`] return strictly increasing timestamps, whatever the
//!    physical time passed in does; `update` rejects a remote timestamp more than the
//!    configured maximum offset ahead of the local physical time and leaves the clock as it
//!    was; `Timestamp::pack` preserves order.

mod dvv;
mod hlc;
mod lamport;
mod vector;

pub use dvv::DvvSet;
pub use hlc::{Hlc, HlcError, Timestamp};
pub use lamport::LamportClock;
pub use vector::{CausalOrder, Dot, VectorClock};

#[cfg(test)]
pub(crate) use vector::tests as tests_support;
