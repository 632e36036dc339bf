//! Fast failover: when the transport reports the leader's connection reset (its process
//! died and the kernel reset its connections), followers campaign without waiting out the
//! election timeout, in turn by rank so their votes do not split. Pre-vote keeps an early
//! campaign harmless when the leader is in fact alive; with lease reads, concord-raft's
//! `campaign` refuses while the leader's lease may still hold.

use std::time::Duration;

use concord_raft::{NodeId, StateRole};
use concord_storage::disk::Disk;

use super::driver::Driver;
use crate::state_machine::StateMachine;

/// Gap between the fast-failover campaigns of successive followers (see
/// [`super::RaftHandle::report_peer_down`]).
pub const FAILOVER_STAGGER: Duration = Duration::from_millis(30);

/// This node's rank among `voters` other than the lost leader `lost`: 0 campaigns first.
pub(super) fn rank(voters: &[NodeId], lost: NodeId, me: NodeId) -> u32 {
    voters
        .iter()
        .filter(|&&v| v != lost)
        .position(|&v| v == me)
        .unwrap_or(0) as u32
}

impl<S: StateMachine, D: Disk> Driver<S, D> {
    /// Peer `id`'s connection reset: if it is our leader, schedule a campaign.
    pub(super) fn on_peer_down(&mut self, id: NodeId) {
        let ss = self.raw.soft_state();
        if ss.leader_id == Some(id) && ss.role != StateRole::Leader {
            // Every follower sees the reset at about the same moment; if all campaigned
            // at once their votes would split until the election timeout. So they
            // campaign in turn, by rank among the remaining voters, and a later one
            // stands down once it hears of a new term.
            let rank = rank(&self.raw.conf_state().voters, id, self.id);
            let at = tokio::time::Instant::now() + FAILOVER_STAGGER * rank;
            self.failover = Some((id, at));
        }
    }

    /// The scheduled campaign is due: campaign if the lost leader is still our leader.
    pub(super) fn on_failover_due(&mut self) {
        if let Some((lost, _)) = self.failover.take() {
            let ss = self.raw.soft_state();
            if ss.leader_id == Some(lost) && ss.role != StateRole::Leader {
                tracing::info!(
                    node = %self.id,
                    leader = %lost,
                    "leader connection lost; campaigning"
                );
                if let Err(e) = self.raw.campaign() {
                    tracing::debug!(node = %self.id, error = %e, "fast-failover campaign refused");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{rank, NodeId};

    fn rank_of(voters: &[u64], lost: u64, me: u64) -> u32 {
        let voters: Vec<NodeId> = voters.iter().copied().map(NodeId).collect();
        rank(&voters, NodeId(lost), NodeId(me))
    }

    #[test]
    fn ranks_skip_the_lost_leader() {
        assert_eq!(rank_of(&[1, 2, 3], 1, 2), 0);
        assert_eq!(rank_of(&[1, 2, 3], 1, 3), 1);
        assert_eq!(rank_of(&[1, 2, 3], 2, 3), 1);
        assert_eq!(rank_of(&[1, 2, 3, 4, 5], 3, 5), 3);
    }
}
