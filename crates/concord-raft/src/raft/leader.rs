//! The leader's step: proposals, acknowledgements, reads, transfers (Raft §5.3, §6, and
//! thesis §3.10 leadership transfer, §6.4 read-only queries).

use super::Raft;
use crate::config::ReadOnlyOption;
use crate::errors::Error;
use crate::quorum::VoteResult;
use crate::storage::Storage;
use crate::tracker::ProgressState;
use crate::types::{ConfChange, Entry, EntryKind, Message, MessageType, NodeId, ReadState};

impl<S: Storage> Raft<S> {
    /// Steps down if a quorum was not heard from during the last election timeout.
    pub(crate) fn leader_check_quorum(&mut self) {
        if !self.tracker.quorum_active() {
            let term = self.term;
            self.become_follower(term, None);
            return;
        }
        let id = self.id;
        for (&pid, pr) in self.tracker.progress.iter_mut() {
            if pid != id {
                pr.recent_active = false;
            }
        }
    }

    /// Appends `entries` (assigning term and index) to the leader's log. Returns false
    /// if the uncommitted-size limit refuses them.
    pub(crate) fn append_entries(&mut self, entries: &mut [Entry], count_size: bool) -> bool {
        let size: u64 = entries.iter().map(|e| e.data.len() as u64).sum();
        let max = self.max_uncommitted_size;
        if count_size && max > 0 {
            let Some(ls) = self.leader_state() else {
                return false;
            };
            // Always admit one proposal when nothing is pending, so large entries progress.
            if ls.uncommitted_size > 0 && ls.uncommitted_size + size > max {
                return false;
            }
            ls.uncommitted_size += size;
        }
        let last = self.log.last_index();
        for (i, e) in entries.iter_mut().enumerate() {
            e.term = self.term;
            e.index = last + 1 + i as u64;
        }
        self.log.append(entries);
        true
    }

    /// Forgets the size of entries that are now committed.
    pub(crate) fn reduce_uncommitted_size(&mut self, committed: &[Entry]) {
        if self.max_uncommitted_size == 0 {
            return;
        }
        let size: u64 = committed.iter().map(|e| e.data.len() as u64).sum();
        if let Some(ls) = self.leader_state() {
            ls.uncommitted_size = ls.uncommitted_size.saturating_sub(size);
        }
    }

    pub(crate) fn step_leader(&mut self, mut m: Message) -> Result<(), Error> {
        match m.msg_type {
            MessageType::Beat => {
                self.bcast_heartbeat();
                return Ok(());
            }
            MessageType::CheckQuorum => {
                self.leader_check_quorum();
                return Ok(());
            }
            MessageType::Propose => return self.propose(&mut m.entries),
            MessageType::ReadIndex => return self.leader_read_index(m),
            _ => {}
        }
        if !self.tracker.progress.contains_key(&m.from) {
            return Ok(());
        }
        match m.msg_type {
            MessageType::AppendResp => self.handle_append_response(&m),
            MessageType::HeartbeatResp => self.handle_heartbeat_response(&m),
            MessageType::SnapshotStatus => {
                if let Some(pr) = self.tracker.progress.get_mut(&m.from) {
                    if pr.state == ProgressState::Snapshot {
                        if m.reject {
                            pr.pending_snapshot = 0;
                        }
                        pr.become_probe();
                        // Wait for the follower's answer (or a heartbeat) before probing.
                        pr.probe_sent = true;
                    }
                }
            }
            MessageType::Unreachable => {
                if let Some(pr) = self.tracker.progress.get_mut(&m.from) {
                    if pr.state == ProgressState::Replicate {
                        pr.become_probe();
                    }
                }
            }
            MessageType::TransferLeader => self.handle_transfer_leader(m.from),
            _ => {}
        }
        Ok(())
    }

    pub(super) fn propose(&mut self, entries: &mut [Entry]) -> Result<(), Error> {
        if entries.is_empty() {
            return Ok(());
        }
        if !self.tracker.progress.contains_key(&self.id) {
            // Removed from the configuration: cannot replicate.
            return Err(Error::ProposalDropped);
        }
        let joint = self.tracker.config.voters.is_joint();
        let applied = self.log.applied;
        let last = self.log.last_index();
        let Some(ls) = self.leader_state() else {
            return Err(Error::ProposalDropped);
        };
        if ls.transferee.is_some() {
            return Err(Error::ProposalDropped);
        }
        let mut refused = 0;
        let total = entries.len();
        for (i, e) in entries.iter_mut().enumerate() {
            if e.kind != EntryKind::ConfChange {
                continue;
            }
            let ok = match ConfChange::decode(&e.data) {
                Ok(cc) => {
                    let pending = ls.pending_conf_index > applied;
                    let leave = cc.is_leave_joint();
                    !pending && joint == leave
                }
                Err(_) => false,
            };
            if ok {
                ls.pending_conf_index = last + 1 + i as u64;
            } else {
                // Keep the slot (others may be batched with it) but make it a no-op.
                refused += 1;
                *e = Entry::default();
            }
        }
        if refused == total {
            return Err(Error::ProposalDropped);
        }
        if !self.append_entries(entries, true) {
            return Err(Error::ProposalDropped);
        }
        self.bcast_append();
        Ok(())
    }

    fn handle_append_response(&mut self, m: &Message) {
        let last_index = self.log.last_index();
        let first_index = self.log.first_index();
        let from = m.from;
        if m.reject {
            let next_probe = if m.log_term > 0 {
                self.log.find_conflict_by_term(m.reject_hint, m.log_term).0
            } else {
                m.reject_hint
            };
            let Some(pr) = self.tracker.progress.get_mut(&from) else {
                return;
            };
            pr.recent_active = true;
            if pr.maybe_decr_to(m.index, next_probe) {
                if pr.state == ProgressState::Replicate {
                    pr.become_probe();
                }
                self.maybe_send_append(from, true);
            }
            return;
        }
        let Some(pr) = self.tracker.progress.get_mut(&from) else {
            return;
        };
        pr.recent_active = true;
        let old_paused = pr.is_paused();
        if !(pr.maybe_update(m.index)
            || (pr.matched == m.index && pr.state == ProgressState::Probe))
        {
            return;
        }
        match pr.state {
            ProgressState::Probe => pr.become_replicate(),
            ProgressState::Snapshot => {
                if pr.matched >= pr.pending_snapshot || pr.matched + 1 >= first_index {
                    pr.become_probe();
                    pr.become_replicate();
                }
            }
            ProgressState::Replicate => pr.inflights.free_le(m.index),
        }
        let matched = pr.matched;
        if self.maybe_commit() {
            self.bcast_append();
        } else if old_paused {
            self.maybe_send_append(from, false);
        }
        // Pipelining: fill the in-flight window.
        while self.maybe_send_append(from, false) {}
        let transferee = self.leader_state().and_then(|ls| ls.transferee);
        if transferee == Some(from) && matched == last_index {
            self.send_timeout_now(from);
        }
    }

    fn handle_heartbeat_response(&mut self, m: &Message) {
        let last_index = self.log.last_index();
        if let Some(pr) = self.tracker.progress.get_mut(&m.from) {
            pr.recent_active = true;
            pr.probe_sent = false;
            if pr.state == ProgressState::Replicate && pr.inflights.full() {
                pr.inflights.free_first_one();
            }
            if pr.matched < last_index || pr.state == ProgressState::Probe {
                self.maybe_send_append(m.from, true);
            }
        }
        let voters = self.tracker.config.voters.clone();
        let from = m.from;
        let Some(ls) = self.leader_state() else {
            return;
        };
        if voters.contains(from) && m.index <= ls.ticks {
            let ack = ls.lease_acks.entry(from).or_insert(0);
            *ack = (*ack).max(m.index);
        }
        if m.context.is_empty() {
            return;
        }
        let Some(acks) = ls.read_only.recv_ack(m.from, &m.context) else {
            return;
        };
        if voters.vote_result(|id| acks.contains(&id).then_some(true)) != VoteResult::Won {
            return;
        }
        let released = ls.read_only.advance(&m.context);
        let next_round = if ls.read_only.round_in_flight.is_none() {
            ls.read_only.last_pending_ctx().cloned()
        } else {
            None
        };
        if let Some(ctx) = &next_round {
            ls.read_only.round_in_flight = Some(ctx.clone());
        }
        for rs in released {
            self.respond_read(rs.req, rs.index);
        }
        // Reads that arrived during the round just confirmed share the next one.
        if let Some(ctx) = next_round {
            self.bcast_heartbeat_with_ctx(ctx);
        }
    }

    fn leader_read_index(&mut self, m: Message) -> Result<(), Error> {
        if self.tracker.is_singleton() {
            let committed = self.log.committed;
            self.respond_read(m, committed);
            return Ok(());
        }
        let current_term_committed = self.log.term(self.log.committed).ok() == Some(self.term);
        let max_pending = self.max_pending_reads;
        let Some(ls) = self.leader_state() else {
            return Err(Error::ProposalDropped);
        };
        if ls.read_only.pending_count() + ls.reads_before_commit.len() >= max_pending {
            // Bounded: the client retries rather than the leader growing without limit.
            return Err(Error::ProposalDropped);
        }
        if !current_term_committed {
            ls.reads_before_commit.push(m);
            return Ok(());
        }
        self.send_read_index(m);
        Ok(())
    }

    fn send_read_index(&mut self, m: Message) {
        let committed = self.log.committed;
        match self.read_only_option {
            ReadOnlyOption::LeaseBased if self.lease_valid() => self.respond_read(m, committed),
            // Without a valid lease, fall back to a ReadIndex round.
            ReadOnlyOption::LeaseBased | ReadOnlyOption::Safe => {
                let id = self.id;
                let Some(ls) = self.leader_state() else {
                    return;
                };
                let ctx = m.context.clone();
                if !ls.read_only.add_request(committed, m, id) {
                    return;
                }
                if ls.read_only.round_in_flight.is_none() {
                    ls.read_only.round_in_flight = Some(ctx.clone());
                    self.bcast_heartbeat_with_ctx(ctx);
                }
            }
        }
    }

    pub(crate) fn release_reads_before_commit(&mut self) {
        let Some(ls) = self.leader_state() else {
            return;
        };
        if ls.reads_before_commit.is_empty() {
            return;
        }
        if self.log.term(self.log.committed).ok() != Some(self.term) {
            return;
        }
        let reads = match self.leader_state() {
            Some(ls) => std::mem::take(&mut ls.reads_before_commit),
            None => return,
        };
        for m in reads {
            self.send_read_index(m);
        }
    }

    fn respond_read(&mut self, req: Message, index: u64) {
        if req.from.is_zero() || req.from == self.id {
            self.read_states.push(ReadState {
                index,
                request_ctx: req.context,
            });
        } else {
            self.send(Message {
                msg_type: MessageType::ReadIndexResp,
                to: req.from,
                index,
                context: req.context,
                ..Message::default()
            });
        }
    }

    fn handle_transfer_leader(&mut self, transferee: NodeId) {
        let Some(pr) = self.tracker.progress.get(&transferee) else {
            return;
        };
        if pr.is_learner || transferee == self.id {
            return;
        }
        let matched = pr.matched;
        let last_index = self.log.last_index();
        let Some(ls) = self.leader_state() else {
            return;
        };
        if ls.transferee == Some(transferee) {
            return;
        }
        ls.transferee = Some(transferee);
        // The transfer must finish within one election timeout (see tick_heartbeat).
        self.election_elapsed = 0;
        if matched == last_index {
            self.send_timeout_now(transferee);
        } else {
            self.maybe_send_append(transferee, true);
        }
    }
}
