//! Applying membership changes to a configuration (Raft §6 and the thesis' §4.3 joint
//! consensus, in etcd's `ConfChangeV2` form).
//!
//! # Guarantees
//!
//! 1. A simple change alters at most one voter, so the old and new majorities always
//!    overlap; anything larger must go through a joint configuration.
//! 2. Entering a joint configuration copies the current voters to the outgoing half and
//!    applies the changes to the incoming half; leaving drops the outgoing half and turns
//!    `learners_next` into learners. Both halves must agree on every decision meanwhile.
//! 3. A configuration never ends up without voters, and the result satisfies
//!    [`ProgressTracker::check_invariants`]. Errors leave the input untouched (the changer
//!    works on copies).

use crate::errors::ConfChangeError;
use crate::tracker::{Progress, ProgressMap, ProgressTracker, TrackerConfig};
use crate::types::{ConfChangeSingle, ConfChangeType, ConfState, NodeId};

pub(crate) struct Changer<'a> {
    pub(crate) tracker: &'a ProgressTracker,
    pub(crate) last_index: u64,
}

type Outcome = Result<(TrackerConfig, ProgressMap), ConfChangeError>;

impl Changer<'_> {
    fn copy(&self) -> (TrackerConfig, ProgressMap) {
        (self.tracker.config.clone(), self.tracker.progress.clone())
    }

    fn check(&self, cfg: TrackerConfig, prs: ProgressMap) -> Outcome {
        if cfg.voters.incoming.voters.is_empty() {
            return Err(ConfChangeError::NoVoters);
        }
        let t = ProgressTracker {
            config: cfg,
            progress: prs,
            max_inflight: self.tracker.max_inflight,
            max_inflight_bytes: self.tracker.max_inflight_bytes,
        };
        t.check_invariants();
        Ok((t.config, t.progress))
    }

    pub(crate) fn enter_joint(&self, auto_leave: bool, ccs: &[ConfChangeSingle]) -> Outcome {
        let (mut cfg, mut prs) = self.copy();
        if cfg.voters.is_joint() {
            return Err(ConfChangeError::AlreadyJoint);
        }
        if cfg.voters.incoming.voters.is_empty() {
            return Err(ConfChangeError::NoVoters);
        }
        cfg.voters.outgoing = cfg.voters.incoming.clone();
        self.apply(&mut cfg, &mut prs, ccs)?;
        cfg.auto_leave = auto_leave;
        self.check(cfg, prs)
    }

    pub(crate) fn leave_joint(&self) -> Outcome {
        let (mut cfg, mut prs) = self.copy();
        if !cfg.voters.is_joint() {
            return Err(ConfChangeError::NotJoint);
        }
        for id in std::mem::take(&mut cfg.learners_next) {
            cfg.learners.insert(id);
            if let Some(p) = prs.get_mut(&id) {
                p.is_learner = true;
            }
        }
        for id in std::mem::take(&mut cfg.voters.outgoing.voters) {
            if !cfg.voters.incoming.voters.contains(&id) && !cfg.learners.contains(&id) {
                prs.remove(&id);
            }
        }
        cfg.auto_leave = false;
        self.check(cfg, prs)
    }

    pub(crate) fn simple(&self, ccs: &[ConfChangeSingle]) -> Outcome {
        let (mut cfg, mut prs) = self.copy();
        if cfg.voters.is_joint() {
            return Err(ConfChangeError::AlreadyJoint);
        }
        let before = cfg.voters.incoming.voters.clone();
        self.apply(&mut cfg, &mut prs, ccs)?;
        let changed = before
            .symmetric_difference(&cfg.voters.incoming.voters)
            .count();
        if changed > 1 {
            return Err(ConfChangeError::TooManyVoterChanges);
        }
        self.check(cfg, prs)
    }

    fn apply(
        &self,
        cfg: &mut TrackerConfig,
        prs: &mut ProgressMap,
        ccs: &[ConfChangeSingle],
    ) -> Result<(), ConfChangeError> {
        for cc in ccs {
            if cc.node_id.is_zero() {
                return Err(ConfChangeError::ZeroId);
            }
            match cc.kind {
                ConfChangeType::AddNode => self.make_voter(cfg, prs, cc.node_id),
                ConfChangeType::AddLearner => self.make_learner(cfg, prs, cc.node_id),
                ConfChangeType::RemoveNode => remove(cfg, prs, cc.node_id),
            }
        }
        if cfg.voters.incoming.voters.is_empty() {
            return Err(ConfChangeError::NoVoters);
        }
        Ok(())
    }

    fn init_progress(
        &self,
        cfg: &mut TrackerConfig,
        prs: &mut ProgressMap,
        id: NodeId,
        learner: bool,
    ) {
        if learner {
            cfg.learners.insert(id);
        } else {
            cfg.voters.incoming.voters.insert(id);
        }
        let mut p = Progress::new(
            self.last_index.max(1),
            self.tracker.max_inflight,
            self.tracker.max_inflight_bytes,
        );
        p.is_learner = learner;
        // A new peer counts as active so check-quorum does not fire before it is heard.
        p.recent_active = true;
        prs.insert(id, p);
    }

    fn make_voter(&self, cfg: &mut TrackerConfig, prs: &mut ProgressMap, id: NodeId) {
        let Some(p) = prs.get_mut(&id) else {
            self.init_progress(cfg, prs, id, false);
            return;
        };
        p.is_learner = false;
        cfg.learners.remove(&id);
        cfg.learners_next.remove(&id);
        cfg.voters.incoming.voters.insert(id);
    }

    fn make_learner(&self, cfg: &mut TrackerConfig, prs: &mut ProgressMap, id: NodeId) {
        let Some(p) = prs.get(&id) else {
            self.init_progress(cfg, prs, id, true);
            return;
        };
        if p.is_learner {
            return;
        }
        let saved = p.clone();
        remove(cfg, prs, id);
        let mut p = saved;
        // A voter of the outgoing half stays a voter until the joint config is left.
        if cfg.voters.outgoing.voters.contains(&id) {
            cfg.learners_next.insert(id);
            p.is_learner = false;
        } else {
            cfg.learners.insert(id);
            p.is_learner = true;
        }
        prs.insert(id, p);
    }
}

fn remove(cfg: &mut TrackerConfig, prs: &mut ProgressMap, id: NodeId) {
    if !prs.contains_key(&id) {
        return;
    }
    cfg.voters.incoming.voters.remove(&id);
    cfg.learners.remove(&id);
    cfg.learners_next.remove(&id);
    if !cfg.voters.outgoing.voters.contains(&id) {
        prs.remove(&id);
    }
}

/// Builds the tracker state for `cs` (after a restart or a snapshot).
pub(crate) fn restore(
    tracker: &ProgressTracker,
    cs: &ConfState,
    last_index: u64,
) -> (TrackerConfig, ProgressMap) {
    let cfg = TrackerConfig::from_conf_state(cs);
    let mut prs = ProgressMap::new();
    let members = cfg
        .voters
        .ids()
        .into_iter()
        .chain(cfg.learners.iter().copied());
    for id in members {
        let mut p = Progress::new(
            last_index + 1,
            tracker.max_inflight,
            tracker.max_inflight_bytes,
        );
        p.is_learner = cfg.learners.contains(&id);
        p.recent_active = true;
        prs.insert(id, p);
    }
    (cfg, prs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cc(kind: ConfChangeType, node_id: u64) -> ConfChangeSingle {
        ConfChangeSingle {
            kind,
            node_id: NodeId(node_id),
        }
    }

    fn ids(ids: &[u64]) -> Vec<NodeId> {
        ids.iter().copied().map(NodeId).collect()
    }

    fn tracker(voters: &[u64], learners: &[u64]) -> ProgressTracker {
        let mut t = ProgressTracker::new(10, 0);
        let cs = ConfState {
            voters: ids(voters),
            learners: ids(learners),
            ..ConfState::default()
        };
        let (c, p) = restore(&t, &cs, 5);
        t.config = c;
        t.progress = p;
        t
    }

    #[test]
    fn simple_allows_one_voter_change() {
        let t = tracker(&[1, 2, 3], &[]);
        let ch = Changer {
            tracker: &t,
            last_index: 5,
        };
        let (c, _) = ch.simple(&[cc(ConfChangeType::AddNode, 4)]).unwrap();
        assert_eq!(c.voters.incoming.voters.len(), 4);
        assert_eq!(
            ch.simple(&[
                cc(ConfChangeType::AddNode, 4),
                cc(ConfChangeType::RemoveNode, 1)
            ]),
            Err(ConfChangeError::TooManyVoterChanges)
        );
        // Adding learners does not count as a voter change.
        assert!(ch
            .simple(&[
                cc(ConfChangeType::AddLearner, 7),
                cc(ConfChangeType::AddLearner, 8)
            ])
            .is_ok());
    }

    #[test]
    fn joint_demotion_goes_through_learners_next() {
        let mut t = tracker(&[1, 2, 3], &[]);
        let (c, p) = Changer {
            tracker: &t,
            last_index: 5,
        }
        .enter_joint(
            true,
            &[
                cc(ConfChangeType::AddLearner, 3),
                cc(ConfChangeType::AddNode, 4),
            ],
        )
        .unwrap();
        assert!(c.voters.is_joint());
        assert!(c.learners_next.contains(&NodeId(3)));
        t.config = c;
        t.progress = p;
        assert_eq!(
            Changer {
                tracker: &t,
                last_index: 5
            }
            .enter_joint(false, &[]),
            Err(ConfChangeError::AlreadyJoint)
        );
        let (c, p) = Changer {
            tracker: &t,
            last_index: 5,
        }
        .leave_joint()
        .unwrap();
        assert!(!c.voters.is_joint());
        assert!(c.learners.contains(&NodeId(3)));
        assert!(p[&NodeId(3)].is_learner);
        assert_eq!(
            c.voters.incoming.voters,
            ids(&[1, 2, 4]).into_iter().collect()
        );
    }

    #[test]
    fn removing_everyone_fails() {
        let t = tracker(&[1], &[2]);
        let ch = Changer {
            tracker: &t,
            last_index: 5,
        };
        assert_eq!(
            ch.simple(&[cc(ConfChangeType::RemoveNode, 1)]),
            Err(ConfChangeError::NoVoters)
        );
        assert_eq!(ch.leave_joint(), Err(ConfChangeError::NotJoint));
        let (c, p) = ch.simple(&[cc(ConfChangeType::AddNode, 2)]).unwrap();
        assert!(c.learners.is_empty());
        assert!(!p[&NodeId(2)].is_learner);
    }
}
