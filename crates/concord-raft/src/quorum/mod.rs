//! Quorum arithmetic: which index a set of voters has committed and who won a vote, for a
//! simple majority and for a joint configuration (two majorities that must both agree).
//!
//! # Guarantees
//!
//! 1. A joint configuration commits an index only when both of its majorities do, and a
//!    vote is won only when both majorities grant it (Raft §6, joint consensus).
//! 2. An empty majority commits everything and wins every vote, so a joint configuration
//!    whose outgoing half is empty behaves exactly like its incoming half.

pub(crate) mod joint;
pub(crate) mod majority;

/// Outcome of counting votes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VoteResult {
    /// Not decided yet.
    Pending,
    /// A quorum rejected.
    Lost,
    /// A quorum granted.
    Won,
}
