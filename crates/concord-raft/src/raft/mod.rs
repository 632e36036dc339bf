//! The Raft state machine: roles, terms, and the dispatch of every message.
//!
//! Submodules hold the per-concern handlers: [`election`] (campaigns and votes),
//! [`replication`] (appends, heartbeats, snapshots on both sides), [`leader`] (the
//! leader's step: proposals, reads, transfers, membership).
//!
//! # Guarantees
//!
//! 1. Election safety (Raft §5.2): a node votes at most once per term (`vote` is reset
//!    only when `term` grows) and only for a candidate whose log is at least as up to date
//!    (§5.4.1); the vote is persisted before the response leaves (responses go to
//!    `msgs_after_persist`).
//! 2. Terms only grow, and any message from a higher term demotes the node, except
//!    pre-votes and vote requests ignored under a live leader's lease (check-quorum).
//! 3. Each role's state lives inside [`Role`]: only a leader has read-index, transfer and
//!    pending-configuration state; only a candidate has votes.
//! 4. Messages a leader sends go to `msgs` (they may leave before the leader's own write,
//!    since the leader counts itself only once persisted); everything else goes to
//!    `msgs_after_persist`, to be sent after the hard state and entries are durable.

mod election;
mod leader;
mod replication;

use std::collections::BTreeMap;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::confchange::{self, Changer};
use crate::config::{Config, ReadOnlyOption};
use crate::errors::{ConfChangeError, Error};
use crate::raft_log::RaftLog;
use crate::read_only::ReadOnly;
use crate::storage::Storage;
use crate::tracker::{ProgressMap, ProgressTracker, TrackerConfig};
use crate::types::{
    ConfChange, ConfState, EntryKind, HardState, Message, MessageType, NodeId, ReadState,
    SoftState, StateRole, CAMPAIGN_TRANSFER,
};

/// State only a candidate (or pre-candidate) has.
#[derive(Debug, Default)]
pub(crate) struct CandidateState {
    pub(crate) votes: BTreeMap<NodeId, bool>,
}

/// State only a leader has.
#[derive(Debug, Default)]
pub(crate) struct LeaderState {
    pub(crate) read_only: ReadOnly,
    /// Reads received before the leader committed an entry of its term; its commit index
    /// may lag the cluster's until then (thesis §6.4).
    pub(crate) reads_before_commit: Vec<Message>,
    /// Target of an ongoing leadership transfer.
    pub(crate) transferee: Option<NodeId>,
    /// Index of the latest configuration change proposed; a new one is refused until the
    /// application has applied it (one change at a time).
    pub(crate) pending_conf_index: u64,
    /// Bytes of proposed entries not yet committed.
    pub(crate) uncommitted_size: u64,
    /// Ticks since this node became leader; heartbeats carry it in `index`.
    pub(crate) ticks: u64,
    /// Per voter, the latest `ticks` value of a heartbeat it acknowledged: the voter
    /// heard from us no earlier than that tick, so (with bounded drift) it will not vote
    /// for anyone else before that tick plus an election timeout.
    pub(crate) lease_acks: BTreeMap<NodeId, u64>,
    /// Set once a TimeoutNow was sent: the transferee's forced campaign overrides the
    /// followers' promises, so this leader's lease can never be trusted again in this
    /// term (even if the transfer is later abandoned). Reads fall back to ReadIndex.
    pub(crate) lease_revoked: bool,
}

/// A node's role and the state belonging to it.
#[derive(Debug)]
pub(crate) enum Role {
    Follower,
    PreCandidate(CandidateState),
    Candidate(CandidateState),
    Leader(LeaderState),
}

impl Role {
    pub(crate) fn state_role(&self) -> StateRole {
        match self {
            Role::Follower => StateRole::Follower,
            Role::PreCandidate(_) => StateRole::PreCandidate,
            Role::Candidate(_) => StateRole::Candidate,
            Role::Leader(_) => StateRole::Leader,
        }
    }
}

/// Ticks of safety margin a lease keeps below the election timeout: one for the
/// discreteness of ticks on each side.
pub(crate) const LEASE_DRIFT_MARGIN_TICKS: u64 = 2;

pub(crate) struct Raft<S: Storage> {
    pub(crate) id: NodeId,
    /// Invariant: never decreases.
    pub(crate) term: u64,
    /// Vote cast in `term`; 0 if none.
    pub(crate) vote: Option<NodeId>,
    /// Known leader of `term`; 0 if none.
    pub(crate) leader_id: Option<NodeId>,
    pub(crate) log: RaftLog<S>,
    pub(crate) tracker: ProgressTracker,
    pub(crate) role: Role,
    pub(crate) is_learner: bool,
    /// Messages that may be sent at once.
    pub(crate) msgs: Vec<Message>,
    /// Messages to send only after the next Ready's state is persisted.
    pub(crate) msgs_after_persist: Vec<Message>,
    pub(crate) read_states: Vec<ReadState>,
    /// Ticks since the last election timeout reset (followers: since the leader was last
    /// heard; leaders: since the last check-quorum).
    pub(crate) election_elapsed: u32,
    pub(crate) heartbeat_elapsed: u32,
    /// Invariant: election_tick <= randomized_election_timeout < 2 * election_tick.
    pub(crate) randomized_election_timeout: u32,
    pub(crate) election_tick: u32,
    pub(crate) heartbeat_tick: u32,
    pub(crate) max_msg_size: u64,
    pub(crate) max_uncommitted_size: u64,
    pub(crate) max_pending_reads: usize,
    pub(crate) pre_vote: bool,
    pub(crate) check_quorum: bool,
    pub(crate) read_only_option: ReadOnlyOption,
    pub(crate) skip_vote_log_check: bool,
    /// 1, or more under the test-only broken lease.
    pub(crate) lease_factor: u64,
    /// Set at start with lease reads: see [`Raft::in_lease`].
    pub(crate) restart_guard: bool,
    rng: SmallRng,
}

impl<S: Storage> Raft<S> {
    pub(crate) fn new(config: &Config, store: S) -> Result<Self, Error> {
        config.validate()?;
        let rs = store.initial_state()?;
        let log = RaftLog::new(store)?;
        #[cfg(feature = "testing-bugs")]
        let skip_vote_log_check = config.testing_skip_vote_log_check;
        #[cfg(not(feature = "testing-bugs"))]
        let skip_vote_log_check = false;
        #[cfg(feature = "testing-bugs")]
        let lease_factor = if config.testing_overlong_lease { 4 } else { 1 };
        #[cfg(not(feature = "testing-bugs"))]
        let lease_factor = 1;
        let mut r = Raft {
            id: config.id,
            term: 0,
            vote: None,
            leader_id: None,
            log,
            tracker: ProgressTracker::new(config.max_inflight_msgs, config.max_inflight_bytes),
            role: Role::Follower,
            is_learner: false,
            msgs: Vec::new(),
            msgs_after_persist: Vec::new(),
            read_states: Vec::new(),
            election_elapsed: 0,
            heartbeat_elapsed: 0,
            randomized_election_timeout: config.election_tick,
            election_tick: config.election_tick,
            heartbeat_tick: config.heartbeat_tick,
            max_msg_size: config.max_size_per_msg_bytes,
            max_uncommitted_size: config.max_uncommitted_size_bytes,
            max_pending_reads: config.max_pending_reads,
            pre_vote: config.pre_vote,
            check_quorum: config.check_quorum,
            read_only_option: config.read_only_option,
            skip_vote_log_check,
            lease_factor,
            restart_guard: config.read_only_option == ReadOnlyOption::LeaseBased,
            rng: SmallRng::seed_from_u64(config.seed),
        };
        let (cfg, prs) = confchange::restore(&r.tracker, &rs.conf_state, r.log.last_index());
        r.switch_to_config(cfg, prs);
        let hs = rs.hard_state;
        if hs != HardState::default() {
            if hs.commit < r.log.committed || hs.commit > r.log.last_index() {
                return Err(Error::Storage(crate::errors::StorageError::Other(format!(
                    "hard state commit {} out of range [{}, {}]",
                    hs.commit,
                    r.log.committed,
                    r.log.last_index()
                ))));
            }
            r.term = hs.term;
            r.vote = hs.vote;
            r.log.commit_to(hs.commit);
        }
        if config.applied > 0 {
            r.log.applied_to(config.applied.min(r.log.committed));
        }
        let term = r.term;
        r.become_follower(term, None);
        Ok(r)
    }

    pub(crate) fn soft_state(&self) -> SoftState {
        SoftState {
            leader_id: self.leader_id,
            role: self.role.state_role(),
        }
    }

    pub(crate) fn hard_state(&self) -> HardState {
        HardState {
            term: self.term,
            vote: self.vote,
            commit: self.log.committed,
        }
    }

    pub(crate) fn is_leader(&self) -> bool {
        matches!(self.role, Role::Leader(_))
    }

    pub(crate) fn leader_state(&mut self) -> Option<&mut LeaderState> {
        match &mut self.role {
            Role::Leader(ls) => Some(ls),
            _ => None,
        }
    }

    /// Queues `m`, filling in `from` and (for non-vote messages) `term`.
    pub(crate) fn send(&mut self, mut m: Message) {
        m.from = self.id;
        match m.msg_type {
            MessageType::Vote
            | MessageType::VoteResp
            | MessageType::PreVote
            | MessageType::PreVoteResp => {
                assert!(m.term != 0, "{:?} must carry a term", m.msg_type);
            }
            // Forwarded reads carry no term: the leader treats them as local. Forwarded
            // proposals carry the term they were forwarded in (see `step_forwarded`).
            MessageType::ReadIndex => m.term = 0,
            _ => m.term = self.term,
        }
        if self.is_leader() {
            self.msgs.push(m);
        } else {
            self.msgs_after_persist.push(m);
        }
    }

    fn reset_randomized_election_timeout(&mut self) {
        self.randomized_election_timeout = self
            .rng
            .gen_range(self.election_tick..2 * self.election_tick);
    }

    fn reset(&mut self, term: u64) {
        if self.term != term {
            assert!(
                term > self.term,
                "term going back from {} to {term}",
                self.term
            );
            self.term = term;
            self.vote = None;
        }
        self.leader_id = None;
        self.election_elapsed = 0;
        self.heartbeat_elapsed = 0;
        self.reset_randomized_election_timeout();
    }

    pub(crate) fn become_follower(&mut self, term: u64, leader_id: Option<NodeId>) {
        self.reset(term);
        self.role = Role::Follower;
        self.leader_id = leader_id;
    }

    pub(crate) fn become_pre_candidate(&mut self) {
        assert!(
            !self.is_leader(),
            "invalid transition leader -> pre-candidate"
        );
        // Pre-candidacy changes neither term nor vote: a rejected pre-vote leaves no trace.
        self.role = Role::PreCandidate(CandidateState::default());
        self.leader_id = None;
    }

    pub(crate) fn become_candidate(&mut self) {
        assert!(!self.is_leader(), "invalid transition leader -> candidate");
        let term = self.term + 1;
        self.reset(term);
        self.vote = Some(self.id);
        self.role = Role::Candidate(CandidateState::default());
    }

    pub(crate) fn become_leader(&mut self) {
        assert!(
            matches!(self.role, Role::Candidate(_)),
            "invalid transition to leader from {:?}",
            self.role.state_role()
        );
        let term = self.term;
        self.reset(term);
        self.leader_id = Some(self.id);
        let last = self.log.last_index();
        self.tracker.reset_progress(last + 1);
        let persisted = self.log.persisted;
        if let Some(pr) = self.tracker.progress.get_mut(&self.id) {
            pr.become_replicate();
            // The leader counts only what it has written (DESIGN: acknowledged = durable).
            pr.matched = persisted;
            pr.next = last + 1;
            pr.recent_active = true;
        }
        self.role = Role::Leader(LeaderState {
            pending_conf_index: last,
            ..LeaderState::default()
        });
        // The no-op entry of the new term lets earlier entries commit (Raft §5.4.2).
        let mut noop = vec![crate::types::Entry::default()];
        let appended = self.append_entries(&mut noop, false);
        debug_assert!(appended);
        self.bcast_append();
    }

    /// Whether this node may campaign.
    pub(crate) fn promotable(&self) -> bool {
        self.tracker.is_voter(self.id) && self.log.unstable.snapshot.is_none()
    }

    /// Whether this node promised a leader not to vote for anyone else yet: it heard
    /// from a leader within the election timeout, or (with lease reads) it restarted less
    /// than an election timeout ago and may have made such a promise before crashing.
    pub(crate) fn in_lease(&self) -> bool {
        self.check_quorum
            && (self.leader_id.is_some() || self.restart_guard)
            && self.election_elapsed < self.election_tick
    }

    /// Whether a leader lease read may be served now: a quorum acknowledged heartbeats
    /// sent less than `election_tick - LEASE_DRIFT_MARGIN_TICKS` ticks ago, and no
    /// transfer is in progress (the transferee campaigns ignoring leases).
    pub(crate) fn lease_valid(&self) -> bool {
        let Role::Leader(ls) = &self.role else {
            return false;
        };
        if ls.transferee.is_some() || ls.lease_revoked {
            return false;
        }
        let now = ls.ticks;
        let oldest = self.tracker.config.voters.committed_index(|id| {
            if id == self.id {
                Some(now)
            } else {
                ls.lease_acks.get(&id).copied()
            }
        });
        let span = (u64::from(self.election_tick) * self.lease_factor)
            .saturating_sub(LEASE_DRIFT_MARGIN_TICKS);
        oldest != 0 && now < oldest.saturating_add(span)
    }

    pub(crate) fn tick(&mut self) {
        if self.is_leader() {
            self.tick_heartbeat();
        } else {
            self.tick_election();
        }
    }

    fn tick_election(&mut self) {
        self.election_elapsed += 1;
        if self.election_elapsed >= self.election_tick {
            self.restart_guard = false;
        }
        if self.promotable() && self.election_elapsed >= self.randomized_election_timeout {
            self.election_elapsed = 0;
            self.hup(false);
        }
    }

    fn tick_heartbeat(&mut self) {
        if let Some(ls) = self.leader_state() {
            ls.ticks += 1;
        }
        self.heartbeat_elapsed += 1;
        self.election_elapsed += 1;
        if self.election_elapsed >= self.election_tick {
            self.election_elapsed = 0;
            if self.check_quorum {
                self.leader_check_quorum();
            }
            // A transfer that did not finish within an election timeout is abandoned.
            if let Some(ls) = self.leader_state() {
                ls.transferee = None;
            }
        }
        if !self.is_leader() {
            return;
        }
        if self.heartbeat_elapsed >= self.heartbeat_tick {
            self.heartbeat_elapsed = 0;
            self.bcast_heartbeat();
            self.maybe_auto_leave();
        }
    }

    /// Entry point for every message, local or remote.
    pub(crate) fn step(&mut self, m: Message) -> Result<(), Error> {
        if m.msg_type == MessageType::Propose && m.term != 0 {
            return self.step_forwarded(m);
        }
        if m.term == 0 {
            // Local message (or forwarded proposal/read).
        } else if m.term > self.term {
            if matches!(m.msg_type, MessageType::Vote | MessageType::PreVote) {
                let force = m.context == CAMPAIGN_TRANSFER;
                if !force && self.in_lease() {
                    // A leader was heard within the election timeout: ignore, so a
                    // partitioned node cannot depose it (and lease reads stay sound).
                    return Ok(());
                }
            }
            match m.msg_type {
                // Never change term on a pre-vote; a granted pre-vote response carries
                // our future term and is counted below.
                MessageType::PreVote => {}
                MessageType::PreVoteResp if !m.reject => {}
                MessageType::Append | MessageType::Heartbeat | MessageType::Snapshot => {
                    self.become_follower(m.term, Some(m.from));
                }
                _ => self.become_follower(m.term, None),
            }
        } else if m.term < self.term {
            if (self.check_quorum || self.pre_vote)
                && matches!(m.msg_type, MessageType::Heartbeat | MessageType::Append)
            {
                // Tell a stale leader about the newer term, so it steps down; without
                // this, a node partitioned with pre-vote on could never rejoin.
                self.send(Message {
                    msg_type: MessageType::AppendResp,
                    to: m.from,
                    ..Message::default()
                });
            } else if matches!(m.msg_type, MessageType::PreVote | MessageType::Vote) {
                // Reject with our term (Raft §5.1) so the candidate catches up on terms:
                // a candidate with the freshest log could otherwise stay behind a node
                // with a stale log and a high term that never contacts it.
                let msg_type = if m.msg_type == MessageType::Vote {
                    MessageType::VoteResp
                } else {
                    MessageType::PreVoteResp
                };
                self.send(Message {
                    msg_type,
                    to: m.from,
                    term: self.term,
                    reject: true,
                    ..Message::default()
                });
            }
            return Ok(());
        }

        match m.msg_type {
            MessageType::Hup => {
                self.hup(false);
                Ok(())
            }
            MessageType::Vote | MessageType::PreVote => {
                self.handle_vote_request(&m);
                Ok(())
            }
            _ => match self.role {
                Role::Leader(_) => self.step_leader(m),
                Role::Candidate(_) | Role::PreCandidate(_) => self.step_candidate(m),
                Role::Follower => self.step_follower(m),
            },
        }
    }

    /// A proposal a peer forwarded in term `m.term`. Only the leader of that very term
    /// appends it; anyone else drops it (no second forwarding). So an entry proposed in
    /// term T can only ever carry term T, and once its proposer has applied an entry of a
    /// later term without seeing its own, the proposal is lost for good (log terms never
    /// decrease, and a later-term entry commits only after every earlier entry that will
    /// ever commit): the proposer may then send it again without it applying twice. (A
    /// forwarded proposal without a term, from an older release, is stepped as before.)
    fn step_forwarded(&mut self, mut m: Message) -> Result<(), Error> {
        if self.is_leader() && m.term == self.term {
            self.propose(&mut m.entries)
        } else {
            Err(Error::ProposalDropped)
        }
    }

    fn step_follower(&mut self, mut m: Message) -> Result<(), Error> {
        match m.msg_type {
            MessageType::Propose | MessageType::TransferLeader | MessageType::ReadIndex => {
                let Some(leader) = self.leader_id else {
                    return Err(Error::ProposalDropped);
                };
                m.to = leader;
                self.send(m);
            }
            MessageType::Append => {
                self.election_elapsed = 0;
                self.leader_id = Some(m.from);
                self.handle_append(m);
            }
            MessageType::Heartbeat => {
                self.election_elapsed = 0;
                self.leader_id = Some(m.from);
                self.handle_heartbeat(m);
            }
            MessageType::Snapshot => {
                self.election_elapsed = 0;
                self.leader_id = Some(m.from);
                self.handle_snapshot(m);
            }
            MessageType::TimeoutNow => self.hup(true),
            MessageType::ReadIndexResp => self.read_states.push(ReadState {
                index: m.index,
                request_ctx: m.context,
            }),
            _ => {}
        }
        Ok(())
    }

    /// Records that entries up to `(index, term)` (and a snapshot at `snapshot_index`, if
    /// non-zero) are durable.
    pub(crate) fn on_persisted(&mut self, snapshot_index: u64, last_entry: Option<(u64, u64)>) {
        if snapshot_index > 0 {
            self.log.stable_snap_to(snapshot_index);
        }
        if let Some((index, term)) = last_entry {
            self.log.stable_to(index, term);
        }
        if !self.is_leader() {
            return;
        }
        let persisted = self.log.persisted;
        let updated = self
            .tracker
            .progress
            .get_mut(&self.id)
            .is_some_and(|pr| pr.maybe_update(persisted));
        if updated && self.maybe_commit() {
            self.bcast_append();
        }
    }

    /// Records that the application applied up to `index`.
    pub(crate) fn applied_to(&mut self, index: u64) {
        self.log.applied_to(index);
        self.maybe_auto_leave();
    }

    /// As leader of an auto-leave joint configuration that the application has applied,
    /// proposes leaving it. Retried on every apply and heartbeat tick until it sticks.
    fn maybe_auto_leave(&mut self) {
        let auto_leave = self.tracker.config.auto_leave;
        let applied = self.log.applied;
        let Some(ls) = self.leader_state() else {
            return;
        };
        if auto_leave && applied >= ls.pending_conf_index {
            // The joint configuration is in effect everywhere it matters; leave it. A
            // refusal (e.g. a transfer in progress) is retried at the next apply or beat.
            let leave = ConfChange::leave_joint().encode();
            let _ = self.step(Message {
                msg_type: MessageType::Propose,
                from: self.id,
                entries: vec![crate::types::Entry {
                    kind: EntryKind::ConfChange,
                    data: leave,
                    ..Default::default()
                }],
                ..Message::default()
            });
        }
    }

    pub(crate) fn apply_conf_change(
        &mut self,
        cc: &ConfChange,
    ) -> Result<ConfState, ConfChangeError> {
        let changer = Changer {
            tracker: &self.tracker,
            last_index: self.log.last_index(),
        };
        let (cfg, prs) = if cc.is_leave_joint() {
            changer.leave_joint()?
        } else if let Some(auto_leave) = cc.enter_joint() {
            changer.enter_joint(auto_leave, &cc.changes)?
        } else {
            changer.simple(&cc.changes)?
        };
        Ok(self.switch_to_config(cfg, prs))
    }

    pub(crate) fn switch_to_config(&mut self, cfg: TrackerConfig, prs: ProgressMap) -> ConfState {
        self.tracker.config = cfg;
        self.tracker.progress = prs;
        self.tracker.check_invariants();
        let cs = self.tracker.conf_state();
        let own = self.tracker.progress.get(&self.id).map(|p| p.is_learner);
        self.is_learner = own == Some(true);
        if !self.is_leader() {
            return cs;
        }
        if own.is_none() || self.is_learner {
            // Removed (or demoted) leader: tell everyone the commit index, then step down
            // so the remaining voters elect a leader among themselves.
            self.bcast_append();
            let term = self.term;
            self.become_follower(term, None);
            return cs;
        }
        if let Some(pr) = self.tracker.progress.get_mut(&self.id) {
            pr.recent_active = true;
        }
        if self.maybe_commit() {
            self.bcast_append();
        } else {
            let ids: Vec<NodeId> = self.tracker.progress.keys().copied().collect();
            for id in ids {
                if id != self.id {
                    self.maybe_send_append(id, false);
                }
            }
        }
        let voters = self.tracker.config.voters.clone();
        if let Some(ls) = self.leader_state() {
            if ls.transferee.is_some_and(|t| !voters.contains(t)) {
                ls.transferee = None;
            }
        }
        cs
    }
}

#[cfg(test)]
mod tests;
