//! A joint configuration: incoming and outgoing majorities.

use std::collections::BTreeSet;

use super::majority::MajorityConfig;
use super::VoteResult;
use crate::types::NodeId;

/// `incoming` is the active configuration; `outgoing` is non-empty only while joint.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct JointConfig {
    pub(crate) incoming: MajorityConfig,
    pub(crate) outgoing: MajorityConfig,
}

impl JointConfig {
    pub(crate) fn is_joint(&self) -> bool {
        !self.outgoing.voters.is_empty()
    }

    /// All voters of both halves.
    pub(crate) fn ids(&self) -> BTreeSet<NodeId> {
        self.incoming
            .voters
            .union(&self.outgoing.voters)
            .copied()
            .collect()
    }

    pub(crate) fn contains(&self, id: NodeId) -> bool {
        self.incoming.voters.contains(&id) || self.outgoing.voters.contains(&id)
    }

    pub(crate) fn committed_index(&self, acked: impl Fn(NodeId) -> Option<u64>) -> u64 {
        let a = self.incoming.committed_index(&acked);
        let b = self.outgoing.committed_index(&acked);
        a.min(b)
    }

    pub(crate) fn vote_result(&self, votes: impl Fn(NodeId) -> Option<bool>) -> VoteResult {
        let a = self.incoming.vote_result(&votes);
        let b = self.outgoing.vote_result(&votes);
        match (a, b) {
            (VoteResult::Won, VoteResult::Won) => VoteResult::Won,
            (VoteResult::Lost, _) | (_, VoteResult::Lost) => VoteResult::Lost,
            _ => VoteResult::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn joint_needs_both_halves() {
        let j = JointConfig {
            incoming: MajorityConfig::new([1, 2, 3].map(NodeId).into()),
            outgoing: MajorityConfig::new([3, 4, 5].map(NodeId).into()),
        };
        let acks = |id: NodeId| Some([0, 5, 5, 3, 1, 1][id.get() as usize]);
        assert_eq!(j.committed_index(acks), 1);
        let votes =
            |id: NodeId| [None, Some(true), Some(true), None, None, None][id.get() as usize];
        assert_eq!(j.vote_result(votes), VoteResult::Pending);
        let votes = |id: NodeId| {
            [
                None,
                Some(true),
                Some(true),
                Some(true),
                Some(false),
                Some(true),
            ][id.get() as usize]
        };
        assert_eq!(j.vote_result(votes), VoteResult::Won);
        let votes = |id: NodeId| {
            [None, Some(true), Some(true), None, Some(false), Some(false)][id.get() as usize]
        };
        assert_eq!(j.vote_result(votes), VoteResult::Lost);
        let simple = JointConfig {
            incoming: MajorityConfig::new([NodeId(1)].into()),
            outgoing: MajorityConfig::default(),
        };
        assert!(!simple.is_joint());
        assert_eq!(simple.committed_index(|_| Some(7)), 7);
    }
}
