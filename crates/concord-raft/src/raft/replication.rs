//! Log replication on both sides: the leader's appends, heartbeats and snapshots, and the
//! follower's handling of them (Raft §5.3, §7).

use super::Raft;
use crate::confchange;
use crate::errors::StorageError;
use crate::storage::Storage;
use crate::tracker::ProgressState;
use crate::types::{Message, MessageType, NodeId, Snapshot};

impl<S: Storage> Raft<S> {
    /// Sends an append (or a snapshot) to `to` if its progress allows; with
    /// `send_if_empty`, also when there is nothing new (to carry the commit index or to
    /// probe). Returns whether a message was sent.
    pub(crate) fn maybe_send_append(&mut self, to: NodeId, send_if_empty: bool) -> bool {
        let Some(pr) = self.tracker.progress.get(&to) else {
            return false;
        };
        if pr.is_paused() {
            return false;
        }
        let next = pr.next;
        let prev_index = next - 1;
        let prev_term = self.log.term(prev_index);
        let ents = if pr.state != ProgressState::Replicate || !pr.inflights.full() {
            self.log.entries(next, self.max_msg_size)
        } else {
            Ok(Vec::new())
        };
        if ents.as_ref().is_ok_and(|e| e.is_empty()) && !send_if_empty {
            return false;
        }
        let (Ok(prev_term), Ok(entries)) = (prev_term, ents) else {
            // The entries the follower needs were compacted.
            return self.maybe_send_snapshot(to);
        };
        let (count, last, bytes) = (
            entries.len(),
            entries.last().map_or(prev_index, |e| e.index),
            entries.iter().map(|e| e.size_bytes()).sum(),
        );
        if let Some(pr) = self.tracker.progress.get_mut(&to) {
            pr.sent_entries(count, last, bytes);
        }
        let commit = self.log.committed;
        self.send(Message {
            msg_type: MessageType::Append,
            to,
            index: prev_index,
            log_term: prev_term,
            entries,
            commit,
            ..Message::default()
        });
        true
    }

    fn maybe_send_snapshot(&mut self, to: NodeId) -> bool {
        let Some(pr) = self.tracker.progress.get(&to) else {
            return false;
        };
        if !pr.recent_active {
            // Do not ship a large snapshot to a peer that may be down.
            return false;
        }
        let snapshot = match self.log.snapshot(pr.next - 1) {
            Ok(s) if !s.is_empty() => s,
            // Temporarily unavailable (being built) or failing: retry at the next probe.
            Ok(_) | Err(StorageError::SnapshotTemporarilyUnavailable) | Err(_) => return false,
        };
        let index = snapshot.metadata.index;
        if let Some(pr) = self.tracker.progress.get_mut(&to) {
            pr.become_snapshot(index);
        }
        self.send(Message {
            msg_type: MessageType::Snapshot,
            to,
            snapshot: Some(snapshot),
            ..Message::default()
        });
        true
    }

    pub(crate) fn send_timeout_now(&mut self, to: NodeId) {
        if let Some(ls) = self.leader_state() {
            ls.lease_revoked = true;
        }
        self.send(Message {
            msg_type: MessageType::TimeoutNow,
            to,
            ..Message::default()
        });
    }

    pub(crate) fn bcast_append(&mut self) {
        let ids: Vec<NodeId> = self.tracker.progress.keys().copied().collect();
        for id in ids {
            if id != self.id {
                self.maybe_send_append(id, true);
            }
        }
    }

    /// Sends heartbeats carrying the latest pending read context, if any.
    pub(crate) fn bcast_heartbeat(&mut self) {
        let ctx = match self.leader_state() {
            Some(ls) => {
                let ctx = ls.read_only.last_pending_ctx().cloned();
                if ctx.is_some() {
                    ls.read_only.round_in_flight = ctx.clone();
                }
                ctx.unwrap_or_default()
            }
            None => return,
        };
        self.bcast_heartbeat_with_ctx(ctx);
    }

    pub(crate) fn bcast_heartbeat_with_ctx(&mut self, context: Vec<u8>) {
        let ticks = self.leader_state().map_or(0, |ls| ls.ticks);
        let targets: Vec<(NodeId, u64)> = self
            .tracker
            .progress
            .iter()
            .filter(|(&id, _)| id != self.id)
            .map(|(&id, pr)| (id, pr.matched))
            .collect();
        for (to, matched) in targets {
            // Never tell a follower to commit past what it is known to hold.
            let commit = matched.min(self.log.committed);
            self.send(Message {
                msg_type: MessageType::Heartbeat,
                to,
                commit,
                index: ticks,
                context: context.clone(),
                ..Message::default()
            });
        }
    }

    /// Advances the commit index to what a quorum holds, if that entry is of this term.
    pub(crate) fn maybe_commit(&mut self) -> bool {
        let mci = self.tracker.committed();
        let committed = self.log.maybe_commit(mci, self.term);
        if committed {
            self.release_reads_before_commit();
        }
        committed
    }

    pub(crate) fn handle_append(&mut self, m: Message) {
        if m.index < self.log.committed {
            let committed = self.log.committed;
            self.send(Message {
                msg_type: MessageType::AppendResp,
                to: m.from,
                index: committed,
                ..Message::default()
            });
            return;
        }
        match self
            .log
            .maybe_append(m.index, m.log_term, m.commit, &m.entries)
        {
            Some(last) => self.send(Message {
                msg_type: MessageType::AppendResp,
                to: m.from,
                index: last,
                ..Message::default()
            }),
            None => {
                // Hint the leader at the last entry that may match, skipping whole terms.
                let hint = m.index.min(self.log.last_index());
                let (hint_index, hint_term) = self.log.find_conflict_by_term(hint, m.log_term);
                self.send(Message {
                    msg_type: MessageType::AppendResp,
                    to: m.from,
                    index: m.index,
                    reject: true,
                    reject_hint: hint_index,
                    log_term: hint_term,
                    ..Message::default()
                });
            }
        }
    }

    pub(crate) fn handle_heartbeat(&mut self, m: Message) {
        let commit = m.commit.min(self.log.last_index());
        self.log.commit_to(commit);
        self.send(Message {
            msg_type: MessageType::HeartbeatResp,
            to: m.from,
            index: m.index,
            context: m.context,
            ..Message::default()
        });
    }

    pub(crate) fn handle_snapshot(&mut self, m: Message) {
        let Some(snapshot) = m.snapshot else {
            return;
        };
        let index = if self.restore(snapshot) {
            self.log.last_index()
        } else {
            self.log.committed
        };
        self.send(Message {
            msg_type: MessageType::AppendResp,
            to: m.from,
            index,
            ..Message::default()
        });
    }

    /// Installs `snapshot` if it is ahead of our commit index; returns whether it did.
    pub(crate) fn restore(&mut self, snapshot: Snapshot) -> bool {
        let (index, term) = (snapshot.metadata.index, snapshot.metadata.term);
        if index <= self.log.committed {
            return false;
        }
        if self.is_leader() {
            return false;
        }
        if self.log.match_term(index, term) {
            // We already have the entries: just fast-forward the commit index.
            self.log.commit_to(index);
            return false;
        }
        let cs = snapshot.metadata.conf_state.clone();
        self.log.restore(snapshot);
        let (cfg, prs) = confchange::restore(&self.tracker, &cs, self.log.last_index());
        self.switch_to_config(cfg, prs);
        true
    }
}
