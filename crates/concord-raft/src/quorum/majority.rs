//! A simple majority configuration.

use std::collections::BTreeSet;

use super::VoteResult;
use crate::types::NodeId;

/// A set of voters deciding by simple majority.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct MajorityConfig {
    pub(crate) voters: BTreeSet<NodeId>,
}

impl MajorityConfig {
    pub(crate) fn new(voters: BTreeSet<NodeId>) -> Self {
        Self { voters }
    }

    /// The largest index acknowledged by a majority (`u64::MAX` when empty).
    pub(crate) fn committed_index(&self, acked: impl Fn(NodeId) -> Option<u64>) -> u64 {
        if self.voters.is_empty() {
            return u64::MAX;
        }
        let mut idx: Vec<u64> = self
            .voters
            .iter()
            .map(|&id| acked(id).unwrap_or(0))
            .collect();
        idx.sort_unstable_by(|a, b| b.cmp(a));
        idx[self.voters.len() / 2]
    }

    pub(crate) fn vote_result(&self, votes: impl Fn(NodeId) -> Option<bool>) -> VoteResult {
        if self.voters.is_empty() {
            return VoteResult::Won;
        }
        let (mut yes, mut missing) = (0, 0);
        for &id in &self.voters {
            match votes(id) {
                Some(true) => yes += 1,
                Some(false) => {}
                None => missing += 1,
            }
        }
        let q = self.voters.len() / 2 + 1;
        if yes >= q {
            VoteResult::Won
        } else if yes + missing >= q {
            VoteResult::Pending
        } else {
            VoteResult::Lost
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Matches a naive reference: the largest index that at least a majority reached.
        #[test]
        fn committed_index_matches_reference(acks in proptest::collection::vec(0u64..20, 1..8)) {
            let cfg = MajorityConfig::new((1..=acks.len() as u64).map(NodeId).collect());
            let got = cfg.committed_index(|id| Some(acks[(id.get() - 1) as usize]));
            let q = acks.len() / 2 + 1;
            let want = (0..20u64).rev().find(|&i| acks.iter().filter(|&&a| a >= i).count() >= q).unwrap_or(0);
            prop_assert_eq!(got, want);
        }

        #[test]
        fn vote_result_matches_reference(votes in proptest::collection::vec(0u8..3, 1..8)) {
            let cfg = MajorityConfig::new((1..=votes.len() as u64).map(NodeId).collect());
            let v = |id: NodeId| match votes[(id.get() - 1) as usize] { 0 => None, 1 => Some(true), _ => Some(false) };
            let yes = votes.iter().filter(|&&x| x == 1).count();
            let no = votes.iter().filter(|&&x| x == 2).count();
            let q = votes.len() / 2 + 1;
            let want = if yes >= q { VoteResult::Won } else if votes.len() - no >= q { VoteResult::Pending } else { VoteResult::Lost };
            prop_assert_eq!(cfg.vote_result(v), want);
        }
    }
}
