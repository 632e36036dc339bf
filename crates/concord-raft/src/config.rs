//! Node configuration.
//!
//! # Guarantees
//!
//! 1. [`Config::validate`] rejects every combination the core cannot run safely, notably
//!    lease reads without check-quorum (a lease is only sound if a leader that lost its
//!    quorum steps down within one election timeout).
//! 2. All limits carry their unit in their name or doc.

use crate::errors::ConfigError;
use crate::types::NodeId;

/// How linearizable reads are confirmed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ReadOnlyOption {
    /// ReadIndex: the leader confirms it is still leader with a heartbeat round to a
    /// quorum. Safe whatever the clocks do.
    #[default]
    Safe,
    /// Leader lease: the leader answers from its commit index without a round trip,
    /// trusting that followers that heard from it within an election timeout will not
    /// elect another leader. Requires `check_quorum`, and assumes tick rates of any two
    /// nodes differ by less than the gap between `election_tick` and the randomized
    /// timeout (bounded clock drift): a leader whose clock runs slow could otherwise
    /// believe in a lease its followers consider expired.
    LeaseBased,
}

/// Configuration of one Raft node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// This node's id (non-zero).
    pub id: NodeId,
    /// A follower that hears nothing for a randomized timeout in
    /// `[election_tick, 2 * election_tick)` ticks campaigns.
    pub election_tick: u32,
    /// The leader sends heartbeats every `heartbeat_tick` ticks.
    pub heartbeat_tick: u32,
    /// Upper bound, in bytes of entries, of one append message (at least one entry is
    /// always sent). `0` means one entry per message, i.e. batching off.
    pub max_size_per_msg_bytes: u64,
    /// Upper bound, in bytes, of committed entries handed out in one Ready (at least one
    /// entry is always handed out).
    pub max_committed_size_per_ready_bytes: u64,
    /// Upper bound on append messages in flight per follower in replicate state.
    pub max_inflight_msgs: usize,
    /// Upper bound on bytes of entries in flight per follower (`0`: unlimited).
    pub max_inflight_bytes: u64,
    /// Upper bound on bytes of proposed but uncommitted entries on a leader (`0`:
    /// unlimited); proposals beyond it are dropped.
    pub max_uncommitted_size_bytes: u64,
    /// Upper bound on read requests a leader keeps waiting for confirmation; more are
    /// refused with [`crate::Error::ProposalDropped`].
    pub max_pending_reads: usize,
    /// Run a pre-vote round before raising the term, so that a partitioned node that
    /// rejoins does not disrupt a healthy leader.
    pub pre_vote: bool,
    /// A leader that does not hear from a quorum within an election timeout steps down;
    /// followers that heard from a leader within the timeout ignore vote requests.
    pub check_quorum: bool,
    /// How reads are confirmed.
    pub read_only_option: ReadOnlyOption,
    /// Highest index the application has applied (on restart); committed entries after
    /// it are handed out again.
    pub applied: u64,
    /// Seed of the node's random number generator (randomized election timeouts).
    pub seed: u64,
    /// Test-only: grant votes without checking that the candidate's log is up to date.
    /// Breaks safety; exists so the simulator can prove it catches such bugs.
    #[cfg(feature = "testing-bugs")]
    #[doc(hidden)]
    pub testing_skip_vote_log_check: bool,
    /// Test-only: trust a leader lease for four election timeouts instead of one.
    /// Breaks linearizable lease reads; exists so the simulator can prove it catches it.
    #[cfg(feature = "testing-bugs")]
    #[doc(hidden)]
    pub testing_overlong_lease: bool,
}

impl Config {
    /// A configuration with etcd's defaults: election 10 ticks, heartbeat 1 tick, 1 MiB
    /// per message, 256 messages in flight, pre-vote and check-quorum on.
    pub fn new(id: impl Into<NodeId>) -> Self {
        let id = id.into();
        Self {
            id,
            election_tick: 10,
            heartbeat_tick: 1,
            max_size_per_msg_bytes: 1 << 20,
            max_committed_size_per_ready_bytes: 16 << 20,
            max_inflight_msgs: 256,
            max_inflight_bytes: 0,
            max_uncommitted_size_bytes: 0,
            max_pending_reads: 4096,
            pre_vote: true,
            check_quorum: true,
            read_only_option: ReadOnlyOption::Safe,
            applied: 0,
            seed: id.get(),
            #[cfg(feature = "testing-bugs")]
            testing_skip_vote_log_check: false,
            #[cfg(feature = "testing-bugs")]
            testing_overlong_lease: false,
        }
    }

    /// Checks the configuration.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.id.is_zero() {
            return Err(ConfigError::ZeroId);
        }
        if self.heartbeat_tick == 0 {
            return Err(ConfigError::ZeroHeartbeatTick);
        }
        if self.election_tick <= self.heartbeat_tick {
            return Err(ConfigError::ElectionTickTooSmall);
        }
        if self.max_inflight_msgs == 0 {
            return Err(ConfigError::ZeroMaxInflight);
        }
        if self.max_pending_reads == 0 {
            return Err(ConfigError::ZeroMaxPendingReads);
        }
        if self.read_only_option == ReadOnlyOption::LeaseBased && !self.check_quorum {
            return Err(ConfigError::LeaseWithoutCheckQuorum);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validate_rejects_bad_configs() {
        assert_eq!(Config::new(1).validate(), Ok(()));
        assert_eq!(Config::new(0).validate(), Err(ConfigError::ZeroId));
        let mut c = Config::new(1);
        c.heartbeat_tick = 0;
        assert_eq!(c.validate(), Err(ConfigError::ZeroHeartbeatTick));
        let mut c = Config::new(1);
        c.election_tick = 1;
        assert_eq!(c.validate(), Err(ConfigError::ElectionTickTooSmall));
        let mut c = Config::new(1);
        c.max_inflight_msgs = 0;
        assert_eq!(c.validate(), Err(ConfigError::ZeroMaxInflight));
        let mut c = Config::new(1);
        c.check_quorum = false;
        c.read_only_option = ReadOnlyOption::LeaseBased;
        assert_eq!(c.validate(), Err(ConfigError::LeaseWithoutCheckQuorum));
    }
}
