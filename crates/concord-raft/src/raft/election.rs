//! Campaigns, votes and the candidate's step (Raft §5.2, §5.4.1; thesis §9.6 pre-vote).

use super::{Raft, Role};
use crate::errors::Error;
use crate::quorum::VoteResult;
use crate::storage::Storage;
use crate::types::{EntryKind, Message, MessageType, NodeId, CAMPAIGN_TRANSFER};

impl<S: Storage> Raft<S> {
    /// Starts an election if this node may. `transfer` marks a campaign ordered by the
    /// leader (TimeoutNow): it skips pre-vote and overrides followers' leases.
    pub(crate) fn hup(&mut self, transfer: bool) {
        if self.is_leader() || !self.promotable() {
            return;
        }
        if self.has_unapplied_conf_changes() {
            // Our configuration may be stale until those are applied; campaigning with it
            // could count the wrong voters.
            return;
        }
        if self.pre_vote && !transfer {
            self.campaign(true, false);
        } else {
            self.campaign(false, transfer);
        }
    }

    fn has_unapplied_conf_changes(&self) -> bool {
        if self.log.applied >= self.log.committed {
            return false;
        }
        match self.log.next_committed_entries(u64::MAX) {
            Ok(ents) => ents.iter().any(|e| e.kind == EntryKind::ConfChange),
            // Cannot tell: be conservative.
            Err(_) => true,
        }
    }

    pub(crate) fn campaign(&mut self, pre: bool, transfer: bool) {
        let (vote_type, term) = if pre {
            self.become_pre_candidate();
            (MessageType::PreVote, self.term + 1)
        } else {
            self.become_candidate();
            (MessageType::Vote, self.term)
        };
        let resp_type = if pre {
            MessageType::PreVoteResp
        } else {
            MessageType::VoteResp
        };
        let id = self.id;
        if self.poll(id, resp_type, true) == VoteResult::Won {
            // Single-voter configuration.
            if pre {
                self.campaign(false, transfer);
            } else {
                self.become_leader();
            }
            return;
        }
        let last_index = self.log.last_index();
        let last_term = self.log.last_term();
        let context = if transfer {
            CAMPAIGN_TRANSFER.to_vec()
        } else {
            Vec::new()
        };
        for to in self.tracker.config.voters.ids() {
            if to == self.id {
                continue;
            }
            self.send(Message {
                msg_type: vote_type,
                to,
                term,
                index: last_index,
                log_term: last_term,
                context: context.clone(),
                ..Message::default()
            });
        }
    }

    fn poll(&mut self, from: NodeId, resp_type: MessageType, granted: bool) -> VoteResult {
        let votes = match (&mut self.role, resp_type) {
            (Role::PreCandidate(c), MessageType::PreVoteResp)
            | (Role::Candidate(c), MessageType::VoteResp) => &mut c.votes,
            _ => return VoteResult::Pending,
        };
        // Only a voter's first answer counts.
        votes.entry(from).or_insert(granted);
        let votes = votes.clone();
        self.tracker.vote_result(&votes)
    }

    pub(crate) fn handle_vote_request(&mut self, m: &Message) {
        let pre = m.msg_type == MessageType::PreVote;
        let resp_type = if pre {
            MessageType::PreVoteResp
        } else {
            MessageType::VoteResp
        };
        let can_vote = self.vote == Some(m.from)
            || (self.vote.is_none() && self.leader_id.is_none())
            || (pre && m.term > self.term);
        let up_to_date = self.skip_vote_log_check || self.log.is_up_to_date(m.index, m.log_term);
        if can_vote && up_to_date {
            // The response carries the candidate's term, so a pre-candidate can count it.
            self.send(Message {
                msg_type: resp_type,
                to: m.from,
                term: m.term,
                ..Message::default()
            });
            if !pre {
                self.election_elapsed = 0;
                self.vote = Some(m.from);
            }
        } else {
            self.send(Message {
                msg_type: resp_type,
                to: m.from,
                term: self.term,
                reject: true,
                ..Message::default()
            });
        }
    }

    pub(crate) fn step_candidate(&mut self, m: Message) -> Result<(), Error> {
        match m.msg_type {
            MessageType::Propose | MessageType::ReadIndex | MessageType::TransferLeader => {
                return Err(Error::ProposalDropped);
            }
            MessageType::Append => {
                self.become_follower(m.term, Some(m.from));
                self.handle_append(m);
            }
            MessageType::Heartbeat => {
                self.become_follower(m.term, Some(m.from));
                self.handle_heartbeat(m);
            }
            MessageType::Snapshot => {
                self.become_follower(m.term, Some(m.from));
                self.handle_snapshot(m);
            }
            MessageType::VoteResp | MessageType::PreVoteResp => {
                let pre = matches!(self.role, Role::PreCandidate(_));
                if pre != (m.msg_type == MessageType::PreVoteResp) {
                    return Ok(());
                }
                match self.poll(m.from, m.msg_type, !m.reject) {
                    VoteResult::Won => {
                        if pre {
                            self.campaign(false, false);
                        } else {
                            self.become_leader();
                        }
                    }
                    VoteResult::Lost => {
                        let term = self.term;
                        self.become_follower(term, None);
                    }
                    VoteResult::Pending => {}
                }
            }
            _ => {}
        }
        Ok(())
    }
}
