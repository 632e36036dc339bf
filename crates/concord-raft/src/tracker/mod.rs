//! The membership configuration and the leader's per-peer progress.
//!
//! # Guarantees
//!
//! 1. Every voter and learner of the configuration has a [`Progress`] entry and nothing
//!    else does (checked by [`ProgressTracker::check_invariants`] after every change).
//! 2. A node is never both voter (incoming) and learner.
//! 3. Commit and vote decisions count only voters of the (joint) configuration, never
//!    learners.

pub(crate) mod inflights;
pub(crate) mod progress;

use std::collections::{BTreeMap, BTreeSet};

use crate::quorum::joint::JointConfig;
use crate::quorum::majority::MajorityConfig;
use crate::quorum::VoteResult;
use crate::types::{ConfState, NodeId};
pub use progress::{Progress, ProgressState};

/// Membership: voters (possibly joint) and learners.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct TrackerConfig {
    pub(crate) voters: JointConfig,
    /// Invariant: disjoint from `voters.incoming`.
    pub(crate) learners: BTreeSet<NodeId>,
    /// Outgoing voters to demote to learners when leaving the joint configuration.
    /// Invariant: each is in `voters.outgoing` and not in `learners`.
    pub(crate) learners_next: BTreeSet<NodeId>,
    pub(crate) auto_leave: bool,
}

impl TrackerConfig {
    pub(crate) fn from_conf_state(cs: &ConfState) -> Self {
        Self {
            voters: JointConfig {
                incoming: MajorityConfig::new(cs.voters.iter().copied().collect()),
                outgoing: MajorityConfig::new(cs.voters_outgoing.iter().copied().collect()),
            },
            learners: cs.learners.iter().copied().collect(),
            learners_next: cs.learners_next.iter().copied().collect(),
            auto_leave: cs.auto_leave,
        }
    }

    pub(crate) fn to_conf_state(&self) -> ConfState {
        ConfState {
            voters: self.voters.incoming.voters.iter().copied().collect(),
            voters_outgoing: self.voters.outgoing.voters.iter().copied().collect(),
            learners: self.learners.iter().copied().collect(),
            learners_next: self.learners_next.iter().copied().collect(),
            auto_leave: self.auto_leave,
        }
    }
}

/// Map from peer to its progress, in id order (so iteration is deterministic).
pub(crate) type ProgressMap = BTreeMap<NodeId, Progress>;

pub(crate) struct ProgressTracker {
    pub(crate) config: TrackerConfig,
    pub(crate) progress: ProgressMap,
    pub(crate) max_inflight: usize,
    pub(crate) max_inflight_bytes: u64,
}

impl ProgressTracker {
    pub(crate) fn new(max_inflight: usize, max_inflight_bytes: u64) -> Self {
        Self {
            config: TrackerConfig::default(),
            progress: ProgressMap::new(),
            max_inflight,
            max_inflight_bytes,
        }
    }

    pub(crate) fn conf_state(&self) -> ConfState {
        self.config.to_conf_state()
    }

    /// The largest index replicated on a quorum of voters.
    pub(crate) fn committed(&self) -> u64 {
        self.config
            .voters
            .committed_index(|id| self.progress.get(&id).map(|p| p.matched))
    }

    pub(crate) fn vote_result(&self, votes: &BTreeMap<NodeId, bool>) -> VoteResult {
        self.config.voters.vote_result(|id| votes.get(&id).copied())
    }

    /// Whether a quorum was heard from since the last check.
    pub(crate) fn quorum_active(&self) -> bool {
        self.config
            .voters
            .vote_result(|id| self.progress.get(&id).map(|p| p.recent_active))
            == VoteResult::Won
    }

    pub(crate) fn is_voter(&self, id: NodeId) -> bool {
        self.config.voters.contains(id)
    }

    pub(crate) fn is_singleton(&self) -> bool {
        self.config.voters.incoming.voters.len() == 1 && !self.config.voters.is_joint()
    }

    pub(crate) fn reset_progress(&mut self, next: u64) {
        for p in self.progress.values_mut() {
            let learner = p.is_learner;
            *p = Progress::new(next, self.max_inflight, self.max_inflight_bytes);
            p.is_learner = learner;
        }
    }

    pub(crate) fn check_invariants(&self) {
        let c = &self.config;
        for id in c
            .voters
            .ids()
            .iter()
            .chain(&c.learners)
            .chain(&c.learners_next)
        {
            assert!(self.progress.contains_key(id), "no progress for {id}");
        }
        for id in &c.learners {
            assert!(
                !c.voters.incoming.voters.contains(id),
                "{id} voter and learner"
            );
        }
        for id in &c.learners_next {
            assert!(
                c.voters.outgoing.voters.contains(id),
                "{id} next learner not outgoing"
            );
            assert!(!c.learners.contains(id), "{id} learner and next learner");
        }
        for (id, p) in &self.progress {
            let member =
                c.voters.contains(*id) || c.learners.contains(id) || c.learners_next.contains(id);
            assert!(member, "progress for non-member {id}");
            assert_eq!(
                p.is_learner,
                c.learners.contains(id),
                "learner flag of {id}"
            );
        }
        if !c.voters.is_joint() {
            assert!(
                c.learners_next.is_empty(),
                "learners_next outside joint config"
            );
            assert!(!c.auto_leave, "auto_leave outside joint config");
        }
    }
}
