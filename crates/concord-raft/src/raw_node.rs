//! [`RawNode`]: the runtime's handle on the Raft state machine, and [`Ready`], the batch
//! of work it hands out.
//!
//! # Guarantees
//!
//! 1. No I/O, no clock, no global randomness: the runtime calls [`RawNode::tick`] on its
//!    own timer and feeds messages with [`RawNode::step`].
//! 2. Each [`Ready`] is handed out once; the next is available only after
//!    [`RawNode::advance`], which is the runtime's statement that it persisted the Ready's
//!    snapshot, entries and hard state, sent its messages, and applied its committed
//!    entries. Stepping messages between `ready` and `advance` is allowed.
//! 3. Committed entries are handed out in log order, each exactly once per process
//!    lifetime (after a restart, from [`crate::Config::applied`] on).

use std::collections::BTreeMap;

use crate::config::{Config, ReadOnlyOption};
use crate::errors::Error;
use crate::raft::Raft;
use crate::storage::Storage;
use crate::tracker::Progress;
use crate::types::{
    ConfChange, ConfState, Entry, EntryKind, HardState, Message, MessageType, NodeId, ReadState,
    Snapshot, SnapshotStatus, SoftState,
};

/// Work for the runtime. Handle it in this order:
///
/// 1. send `messages` (they may go before the local write);
/// 2. write `snapshot` (if any), then `entries`, then `hard_state`, and fsync when
///    `must_sync` (one fsync for the whole batch);
/// 3. send `persisted_messages`;
/// 4. apply `snapshot` (if any) to the state machine, then `committed_entries` in order,
///    calling [`RawNode::apply_conf_change`] for configuration entries; serve
///    `read_states` once applied reaches their index;
/// 5. call [`RawNode::advance`].
#[derive(Debug, Default)]
pub struct Ready {
    number: u64,
    /// Role or leader changed (observability only).
    pub soft_state: Option<SoftState>,
    /// Hard state to persist, if it changed.
    pub hard_state: Option<HardState>,
    /// Confirmed reads.
    pub read_states: Vec<ReadState>,
    /// Entries to append to stable storage (replacing any stored from the first index on).
    pub entries: Vec<Entry>,
    /// Snapshot to persist and install.
    pub snapshot: Option<Snapshot>,
    /// Entries to apply.
    pub committed_entries: Vec<Entry>,
    /// Messages that may be sent before persisting (the leader's).
    pub messages: Vec<Message>,
    /// Messages to send only after persisting this Ready (votes, acknowledgements).
    pub persisted_messages: Vec<Message>,
    /// Whether the write must be fsynced (term, vote or entries changed; a changed
    /// commit index alone may be written lazily).
    pub must_sync: bool,
}

impl Ready {
    /// Sequence number of this Ready.
    pub fn number(&self) -> u64 {
        self.number
    }
}

/// What the last Ready handed out, to be acknowledged by `advance`.
#[derive(Debug)]
struct Outstanding {
    number: u64,
    snapshot_index: u64,
    last_entry: Option<(u64, u64)>,
    applied: u64,
}

/// A summary of the node's state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    /// Node id.
    pub id: NodeId,
    /// Term, vote, commit.
    pub hard_state: HardState,
    /// Role and known leader.
    pub soft_state: SoftState,
    /// Highest applied index.
    pub applied: u64,
    /// Per-peer progress (leader only).
    pub progress: Option<BTreeMap<NodeId, Progress>>,
}

/// The runtime's handle on one Raft node. See the crate docs for the driving loop.
pub struct RawNode<S: Storage> {
    raft: Raft<S>,
    prev_soft: SoftState,
    prev_hard: HardState,
    outstanding: Option<Outstanding>,
    ready_number: u64,
    max_committed_size_per_ready: u64,
}

impl<S: Storage> RawNode<S> {
    /// Creates a node from its configuration and the storage it restarts from.
    pub fn new(config: &Config, storage: S) -> Result<Self, Error> {
        let raft = Raft::new(config, storage)?;
        let prev_hard = raft.hard_state();
        Ok(Self {
            raft,
            prev_soft: SoftState::default(),
            prev_hard,
            outstanding: None,
            ready_number: 0,
            max_committed_size_per_ready: config.max_committed_size_per_ready_bytes,
        })
    }

    /// Advances logical time by one tick.
    pub fn tick(&mut self) {
        self.raft.tick();
    }

    /// Feeds a message received from a peer.
    pub fn step(&mut self, m: Message) -> Result<(), Error> {
        if m.msg_type.is_local() {
            return Err(Error::LocalMessage);
        }
        if m.to != self.raft.id || m.from.is_zero() {
            return Err(Error::NotForThisNode);
        }
        if m.msg_type.is_response() && !self.raft.tracker.progress.contains_key(&m.from) {
            return Err(Error::PeerNotFound(m.from));
        }
        self.raft.step(m)
    }

    /// Proposes application data. `Ok` means appended locally (or forwarded to the
    /// leader), not committed: watch the committed entries.
    pub fn propose(&mut self, data: Vec<u8>) -> Result<(), Error> {
        self.propose_entry(EntryKind::Normal, data)
    }

    /// Proposes several entries at once: they are appended together and travel in the
    /// same append messages (up to [`Config::max_size_per_msg_bytes`]), which is how a
    /// runtime batches client requests. All or none are accepted.
    pub fn propose_batch(&mut self, data: Vec<Vec<u8>>) -> Result<(), Error> {
        if data.is_empty() {
            return Ok(());
        }
        let id = self.raft.id;
        self.raft.step(Message {
            msg_type: MessageType::Propose,
            from: id,
            entries: data
                .into_iter()
                .map(|d| Entry {
                    data: d,
                    ..Entry::default()
                })
                .collect(),
            ..Message::default()
        })
    }

    /// Proposes a membership change. At most one may be pending at a time.
    pub fn propose_conf_change(&mut self, cc: &ConfChange) -> Result<(), Error> {
        self.propose_entry(EntryKind::ConfChange, cc.encode())
    }

    fn propose_entry(&mut self, kind: EntryKind, data: Vec<u8>) -> Result<(), Error> {
        let id = self.raft.id;
        self.raft.step(Message {
            msg_type: MessageType::Propose,
            from: id,
            entries: vec![Entry {
                kind,
                data,
                ..Entry::default()
            }],
            ..Message::default()
        })
    }

    /// Applies a committed membership change (call it when applying the entry) and
    /// returns the new configuration, which the runtime stores with its applied state.
    pub fn apply_conf_change(&mut self, cc: &ConfChange) -> Result<ConfState, Error> {
        Ok(self.raft.apply_conf_change(cc)?)
    }

    /// Requests a linearizable read point; the answer arrives as a [`ReadState`] with
    /// the same `ctx` in a later Ready (contexts must be unique among pending reads).
    pub fn read_index(&mut self, ctx: Vec<u8>) -> Result<(), Error> {
        let id = self.raft.id;
        self.raft.step(Message {
            msg_type: MessageType::ReadIndex,
            from: id,
            context: ctx,
            ..Message::default()
        })
    }

    /// Asks the leader to hand leadership to `transferee`.
    pub fn transfer_leader(&mut self, transferee: NodeId) {
        let id = self.raft.id;
        let _ = self.raft.step(Message {
            msg_type: MessageType::TransferLeader,
            from: transferee,
            to: id,
            ..Message::default()
        });
    }

    /// Campaigns now (fast failover when the transport saw the leader's connection
    /// reset). With pre-vote on this is harmless if the leader is alive. With lease reads,
    /// refuses while the leader's lease may hold, so followers keep their promise.
    pub fn campaign(&mut self) -> Result<(), Error> {
        if self.raft.read_only_option == ReadOnlyOption::LeaseBased && self.raft.in_lease() {
            return Err(Error::LeaseActive);
        }
        self.raft.step(Message {
            msg_type: MessageType::Hup,
            ..Message::default()
        })
    }

    /// Reports that a message to `id` could not be delivered.
    pub fn report_unreachable(&mut self, id: NodeId) {
        let _ = self.raft.step(Message {
            msg_type: MessageType::Unreachable,
            from: id,
            ..Message::default()
        });
    }

    /// Reports the result of sending a snapshot to `id`.
    pub fn report_snapshot(&mut self, id: NodeId, status: SnapshotStatus) {
        let _ = self.raft.step(Message {
            msg_type: MessageType::SnapshotStatus,
            from: id,
            reject: status == SnapshotStatus::Failure,
            ..Message::default()
        });
    }

    /// Whether [`RawNode::ready`] has anything (always false while a Ready is outstanding).
    pub fn has_ready(&self) -> bool {
        if self.outstanding.is_some() {
            return false;
        }
        let r = &self.raft;
        r.soft_state() != self.prev_soft
            || r.hard_state() != self.prev_hard
            || !r.log.unstable_entries().is_empty()
            || r.log.unstable.snapshot.is_some()
            || r.log.has_next_committed_entries()
            || !r.msgs.is_empty()
            || !r.msgs_after_persist.is_empty()
            || !r.read_states.is_empty()
    }

    /// Takes the pending work. Panics if the previous Ready was not advanced.
    pub fn ready(&mut self) -> Result<Ready, Error> {
        assert!(
            self.outstanding.is_none(),
            "ready() called before advance()"
        );
        let r = &mut self.raft;
        let soft = r.soft_state();
        let hard = r.hard_state();
        let entries = r.log.unstable_entries().to_vec();
        let snapshot = r.log.unstable.snapshot.clone();
        let committed_entries = r
            .log
            .next_committed_entries(self.max_committed_size_per_ready)?;
        r.reduce_uncommitted_size(&committed_entries);
        let must_sync = hard.term != self.prev_hard.term
            || hard.vote != self.prev_hard.vote
            || !entries.is_empty()
            || snapshot.is_some();
        self.ready_number += 1;
        let rd = Ready {
            number: self.ready_number,
            soft_state: (soft != self.prev_soft).then_some(soft),
            hard_state: (hard != self.prev_hard).then_some(hard),
            read_states: std::mem::take(&mut r.read_states),
            committed_entries,
            messages: std::mem::take(&mut r.msgs),
            persisted_messages: std::mem::take(&mut r.msgs_after_persist),
            must_sync,
            entries,
            snapshot,
        };
        self.prev_soft = soft;
        self.prev_hard = hard;
        self.outstanding = Some(Outstanding {
            number: rd.number,
            snapshot_index: rd.snapshot.as_ref().map_or(0, |s| s.metadata.index),
            last_entry: rd.entries.last().map(|e| (e.index, e.term)),
            applied: rd.committed_entries.last().map_or(0, |e| e.index),
        });
        Ok(rd)
    }

    /// Acknowledges `rd`: its state is persisted, its messages sent, its committed
    /// entries applied. New work (for example, the leader's commit advancing now that its
    /// own write is durable) shows up in the next Ready.
    pub fn advance(&mut self, rd: Ready) {
        let Some(out) = self.outstanding.take() else {
            panic!("advance() without an outstanding ready");
        };
        assert_eq!(out.number, rd.number, "advance() with a different ready");
        self.raft.on_persisted(out.snapshot_index, out.last_entry);
        if out.snapshot_index > 0 {
            self.raft.applied_to(out.snapshot_index);
        }
        if out.applied > 0 {
            self.raft.applied_to(out.applied);
        }
    }

    /// A summary, with per-peer progress when leader.
    pub fn status(&self) -> Status {
        let r = &self.raft;
        Status {
            id: r.id,
            hard_state: r.hard_state(),
            soft_state: r.soft_state(),
            applied: r.log.applied,
            progress: r.is_leader().then(|| r.tracker.progress.clone()),
        }
    }

    /// Role and leader.
    pub fn soft_state(&self) -> SoftState {
        self.raft.soft_state()
    }

    /// Term, vote and commit index (in memory; possibly not yet persisted).
    pub fn hard_state(&self) -> HardState {
        self.raft.hard_state()
    }

    /// The current membership.
    pub fn conf_state(&self) -> ConfState {
        self.raft.tracker.conf_state()
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.raft.id
    }

    /// Index of the last entry in the log.
    pub fn last_index(&self) -> u64 {
        self.raft.log.last_index()
    }

    /// Term of the entry at `index`, if the log still holds it.
    pub fn term_at(&self, index: u64) -> Option<u64> {
        self.raft.log.term(index).ok()
    }

    /// Entries in `[lo, hi)` (for diagnostics and tests).
    pub fn log_slice(&self, lo: u64, hi: u64) -> Result<Vec<Entry>, Error> {
        Ok(self.raft.log.slice(lo, hi, u64::MAX)?)
    }

    /// First index still in the log.
    pub fn first_index(&self) -> u64 {
        self.raft.log.first_index()
    }

    /// The storage.
    pub fn storage(&self) -> &S {
        &self.raft.log.store
    }

    /// Number of ReadIndex requests waiting for a heartbeat round (leader only).
    pub fn pending_read_count(&self) -> usize {
        match &self.raft.role {
            crate::raft::Role::Leader(ls) => {
                ls.read_only.pending_count() + ls.reads_before_commit.len()
            }
            _ => 0,
        }
    }

    /// The ongoing leadership transfer's target (leader only).
    pub fn lead_transferee(&self) -> Option<NodeId> {
        match &self.raft.role {
            crate::raft::Role::Leader(ls) => ls.transferee,
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::MemStorage;

    fn node(id: u64) -> RawNode<MemStorage> {
        let mut c = Config::new(id);
        c.applied = 1;
        let cs = ConfState {
            voters: vec![NodeId(1), NodeId(2), NodeId(3)],
            ..ConfState::default()
        };
        RawNode::new(&c, MemStorage::bootstrap(cs)).unwrap()
    }

    #[test]
    fn follower_acks_only_after_persisting() {
        let mut n = node(2);
        n.step(Message {
            msg_type: MessageType::Append,
            from: NodeId(1),
            to: NodeId(2),
            term: 2,
            index: 1,
            log_term: 1,
            entries: vec![Entry {
                term: 2,
                index: 2,
                ..Entry::default()
            }],
            ..Message::default()
        })
        .unwrap();
        let rd = n.ready().unwrap();
        assert!(rd.must_sync);
        assert_eq!(rd.entries.len(), 1);
        assert!(rd.messages.is_empty());
        assert_eq!(rd.persisted_messages.len(), 1);
        assert_eq!(rd.persisted_messages[0].msg_type, MessageType::AppendResp);
        assert!(!n.has_ready(), "no new Ready before advance");
        n.storage().append(&rd.entries).unwrap();
        n.advance(rd);
        assert!(!n.has_ready());
    }

    #[test]
    fn step_rejects_local_and_misaddressed_messages() {
        let mut n = node(1);
        let hup = Message {
            msg_type: MessageType::Hup,
            from: NodeId(1),
            to: NodeId(1),
            ..Message::default()
        };
        assert_eq!(n.step(hup), Err(Error::LocalMessage));
        let m = Message {
            msg_type: MessageType::Heartbeat,
            from: NodeId(2),
            to: NodeId(3),
            term: 1,
            ..Message::default()
        };
        assert_eq!(n.step(m), Err(Error::NotForThisNode));
        let resp = Message {
            msg_type: MessageType::AppendResp,
            from: NodeId(9),
            to: NodeId(1),
            term: 1,
            ..Message::default()
        };
        assert_eq!(n.step(resp), Err(Error::PeerNotFound(NodeId(9))));
    }

    #[test]
    fn invalid_config_is_an_error() {
        let c = Config::new(0);
        let r = RawNode::new(&c, MemStorage::new());
        assert!(matches!(r, Err(Error::Config(_))));
    }
}
