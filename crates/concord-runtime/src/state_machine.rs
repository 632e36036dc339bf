//! The [`StateMachine`] a Raft group replicates: the driver hands it committed entries in
//! order and asks it for snapshots; it knows nothing else of Raft.
//!
//! # Contract
//!
//! 1. `apply_batch` sees every committed index exactly once per process, in increasing
//!    order, with no gaps after the snapshot it was opened or installed at. Entries at or
//!    below [`StateMachine::applied_index`] (a replay after a restart) must be skipped and
//!    answered with `None`.
//! 2. A payload of `None` (an empty entry, a membership change, an entry whose envelope is
//!    undecodable) still moves the applied index: every replica applies the same indexes.
//! 3. The state machine decides alike on every replica: the same payloads in the same order
//!    give the same state, including payloads it cannot decode.
//! 4. [`StateMachine::durable_applied_index`] never exceeds what a crash would keep; the
//!    driver compacts the WAL only up to it, so nothing the store could lose is dropped.
//! 5. An `Err` from any method is a storage failure: the driver stops the node.

use std::fmt::Debug;

/// A replicated state machine driven by [`crate::raft_node`].
pub trait StateMachine: Send + Sync + 'static {
    /// What applying one entry yields for the client that proposed it.
    type Output: Send + 'static;
    /// What observers see of the state after each apply (published in the node status).
    type Summary: Clone + Debug + Default + PartialEq + Send + Sync + 'static;
    /// A failure of the state machine's storage.
    type Error: std::error::Error + Send + Sync + 'static;

    /// Applies `entries` (index, payload) in order; one output per entry, `None` for an
    /// entry applied before (see the contract).
    fn apply_batch(
        &mut self,
        entries: &[(u64, Option<&[u8]>)],
    ) -> Result<Vec<Option<Self::Output>>, Self::Error>;

    /// The last applied index.
    fn applied_index(&self) -> u64;

    /// The last applied index that a crash would not lose.
    fn durable_applied_index(&self) -> u64;

    /// Makes everything applied durable; returns the durable applied index.
    fn sync(&mut self) -> Result<u64, Self::Error>;

    /// The state as snapshot data (self-delimiting chunks), at its current applied index.
    fn snapshot_data(&self) -> Result<Vec<u8>, Self::Error>;

    /// Replaces the state with snapshot data from [`StateMachine::snapshot_data`] of
    /// another replica. Data not newer than the current state is ignored.
    fn install_snapshot(&mut self, data: &[u8]) -> Result<(), Self::Error>;

    /// The summary published after each apply.
    fn summary(&self) -> Self::Summary;
}
