//! Plain data types exchanged with the runtime: log entries, hard state, configuration
//! state, configuration changes, snapshots, messages and read states.
//!
//! # Guarantees
//!
//! 1. Every type is plain Rust data deriving `serde::{Serialize, Deserialize}`, so the
//!    runtime chooses its own wire and disk encoding; only [`ConfChange`] has a built-in
//!    binary encoding, because it travels inside [`Entry::data`] and the core must decode it.
//! 2. [`ConfChange::decode`] never panics: malformed bytes give a [`ConfChangeDecodeError`].
//! 3. Byte fields serialize as byte strings (`serde_bytes`), so encoders and decoders copy
//!    them whole rather than one element at a time. In postcard, the runtime's encoding, a
//!    byte string and a sequence of `u8` are the same bytes: the change from sequences
//!    left every encoded message and WAL record as it was.

use serde::{Deserialize, Serialize};

/// A node identifier: the one `NodeId` of the workspace (`concord_core::NodeId`). `0` never
/// names a node; "no leader" and "no vote" are `None`, never a zero id.
pub use concord_core::NodeId;

/// What an entry carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
pub enum EntryKind {
    /// Application data (an empty one is the no-op a new leader appends).
    #[default]
    Normal,
    /// An encoded [`ConfChange`] (see [`ConfChange::encode`]).
    ConfChange,
}

/// One log entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Entry {
    /// Term of the leader that created the entry.
    pub term: u64,
    /// Position in the log, starting at 1.
    pub index: u64,
    /// What `data` holds.
    pub kind: EntryKind,
    /// Opaque payload.
    #[serde(with = "serde_bytes")]
    pub data: Vec<u8>,
}

impl Entry {
    /// Approximate encoded size in bytes, used for the per-message and uncommitted limits.
    pub fn size_bytes(&self) -> u64 {
        self.data.len() as u64 + 24
    }
}

/// The state a node must persist before sending the messages that depend on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct HardState {
    /// Current term.
    pub term: u64,
    /// Candidate voted for in `term`, if any.
    pub vote: Option<NodeId>,
    /// Highest index known committed.
    pub commit: u64,
}

/// A membership configuration, as stored with snapshots and returned by
/// [`crate::RawNode::apply_conf_change`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ConfState {
    /// Voters of the incoming (or only) configuration.
    pub voters: Vec<NodeId>,
    /// Voters of the outgoing configuration; non-empty only while joint.
    pub voters_outgoing: Vec<NodeId>,
    /// Non-voting members.
    pub learners: Vec<NodeId>,
    /// Outgoing voters that become learners when the joint configuration is left.
    pub learners_next: Vec<NodeId>,
    /// Whether the leader leaves the joint configuration by itself once it is applied.
    pub auto_leave: bool,
}

/// The kind of a single membership change.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ConfChangeType {
    /// Add a voter (or promote a learner).
    AddNode,
    /// Remove a voter or learner.
    RemoveNode,
    /// Add a learner (or demote a voter, through a joint configuration).
    AddLearner,
}

/// One membership change.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfChangeSingle {
    /// What to do.
    pub kind: ConfChangeType,
    /// To whom.
    pub node_id: NodeId,
}

/// How a [`ConfChange`] moves between configurations.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum ConfChangeTransition {
    /// A single voter change is applied directly; several changes go through a joint
    /// configuration that the leader leaves by itself.
    #[default]
    Auto,
    /// Always enter a joint configuration, left by itself.
    Implicit,
    /// Always enter a joint configuration, left only by an explicit empty [`ConfChange`].
    Explicit,
}

/// A membership change (etcd's `ConfChangeV2`). An empty `changes` list leaves the current
/// joint configuration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ConfChange {
    /// How to apply the changes.
    pub transition: ConfChangeTransition,
    /// The changes, applied in order.
    pub changes: Vec<ConfChangeSingle>,
    /// Opaque application context.
    #[serde(with = "serde_bytes")]
    pub context: Vec<u8>,
}

/// Why [`ConfChange::decode`] failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfChangeDecodeError {
    /// The bytes end before the structure does.
    #[error("conf change truncated")]
    Truncated,
    /// An enum tag has no meaning.
    #[error("conf change has invalid tag {0}")]
    InvalidTag(u8),
    /// The encoding version is unknown.
    #[error("conf change has unknown version {0}")]
    UnknownVersion(u8),
}

const CONF_CHANGE_VERSION: u8 = 1;

impl ConfChange {
    /// A change that leaves the joint configuration.
    pub fn leave_joint() -> Self {
        Self::default()
    }

    /// A change made of `changes` with the [`ConfChangeTransition::Auto`] transition.
    pub fn new(changes: Vec<ConfChangeSingle>) -> Self {
        Self {
            transition: ConfChangeTransition::Auto,
            changes,
            context: Vec::new(),
        }
    }

    /// Whether this change leaves a joint configuration rather than entering one.
    pub fn is_leave_joint(&self) -> bool {
        self.changes.is_empty()
    }

    /// If the change enters a joint configuration, whether it leaves it automatically.
    pub fn enter_joint(&self) -> Option<bool> {
        if self.transition != ConfChangeTransition::Auto || self.changes.len() > 1 {
            Some(self.transition != ConfChangeTransition::Explicit)
        } else {
            None
        }
    }

    /// Encodes into the byte format stored in [`Entry::data`].
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(14 + self.changes.len() * 9 + self.context.len());
        out.push(CONF_CHANGE_VERSION);
        out.push(match self.transition {
            ConfChangeTransition::Auto => 0,
            ConfChangeTransition::Implicit => 1,
            ConfChangeTransition::Explicit => 2,
        });
        out.extend_from_slice(&(self.changes.len() as u32).to_le_bytes());
        for c in &self.changes {
            out.push(match c.kind {
                ConfChangeType::AddNode => 0,
                ConfChangeType::RemoveNode => 1,
                ConfChangeType::AddLearner => 2,
            });
            out.extend_from_slice(&c.node_id.get().to_le_bytes());
        }
        out.extend_from_slice(&(self.context.len() as u32).to_le_bytes());
        out.extend_from_slice(&self.context);
        out
    }

    /// Decodes bytes made by [`ConfChange::encode`].
    pub fn decode(mut bytes: &[u8]) -> Result<Self, ConfChangeDecodeError> {
        fn take<'a>(b: &mut &'a [u8], n: usize) -> Result<&'a [u8], ConfChangeDecodeError> {
            if b.len() < n {
                return Err(ConfChangeDecodeError::Truncated);
            }
            let (head, tail) = b.split_at(n);
            *b = tail;
            Ok(head)
        }
        fn u32_of(b: &[u8]) -> u32 {
            let mut a = [0u8; 4];
            a.copy_from_slice(b);
            u32::from_le_bytes(a)
        }
        let version = take(&mut bytes, 1)?[0];
        if version != CONF_CHANGE_VERSION {
            return Err(ConfChangeDecodeError::UnknownVersion(version));
        }
        let transition = match take(&mut bytes, 1)?[0] {
            0 => ConfChangeTransition::Auto,
            1 => ConfChangeTransition::Implicit,
            2 => ConfChangeTransition::Explicit,
            t => return Err(ConfChangeDecodeError::InvalidTag(t)),
        };
        let n = u32_of(take(&mut bytes, 4)?) as usize;
        // Each change takes 9 bytes; reject counts the input cannot hold before allocating.
        if n > bytes.len() / 9 {
            return Err(ConfChangeDecodeError::Truncated);
        }
        let mut changes = Vec::with_capacity(n);
        for _ in 0..n {
            let kind = match take(&mut bytes, 1)?[0] {
                0 => ConfChangeType::AddNode,
                1 => ConfChangeType::RemoveNode,
                2 => ConfChangeType::AddLearner,
                t => return Err(ConfChangeDecodeError::InvalidTag(t)),
            };
            let mut id = [0u8; 8];
            id.copy_from_slice(take(&mut bytes, 8)?);
            changes.push(ConfChangeSingle {
                kind,
                node_id: NodeId(u64::from_le_bytes(id)),
            });
        }
        let len = u32_of(take(&mut bytes, 4)?) as usize;
        let context = take(&mut bytes, len)?.to_vec();
        Ok(Self {
            transition,
            changes,
            context,
        })
    }
}

/// Where a snapshot sits in the log and which configuration it carries.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct SnapshotMetadata {
    /// Last index covered.
    pub index: u64,
    /// Term of the entry at `index`.
    pub term: u64,
    /// Configuration as of `index`.
    pub conf_state: ConfState,
}

/// An application snapshot. Raft treats `data` as opaque; splitting it into chunks for
/// the network is the transport's job.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Snapshot {
    /// Position and configuration.
    pub metadata: SnapshotMetadata,
    /// Opaque state-machine image.
    #[serde(with = "serde_bytes")]
    pub data: Vec<u8>,
}

impl Snapshot {
    /// Whether this is the empty placeholder (index 0).
    pub fn is_empty(&self) -> bool {
        self.metadata.index == 0
    }
}

/// The type of a [`Message`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
pub enum MessageType {
    /// Local: start an election.
    #[default]
    Hup,
    /// Local: the leader's heartbeat timer fired.
    Beat,
    /// Local or forwarded: append entries as leader.
    Propose,
    /// Request a vote (`index`/`log_term` describe the candidate's last entry).
    Vote,
    /// Answer to [`MessageType::Vote`].
    VoteResp,
    /// Ask whether a vote would be granted, without raising terms.
    PreVote,
    /// Answer to [`MessageType::PreVote`].
    PreVoteResp,
    /// Replicate entries after (`index`, `log_term`).
    Append,
    /// Answer to [`MessageType::Append`]; on reject, `reject_hint`/`log_term` give where the
    /// follower's log may diverge.
    AppendResp,
    /// Leader liveness and commit propagation.
    Heartbeat,
    /// Answer to [`MessageType::Heartbeat`], echoing its `context`.
    HeartbeatResp,
    /// Install a snapshot.
    Snapshot,
    /// Local: the runtime reports the result of sending a snapshot.
    SnapshotStatus,
    /// Local: the runtime reports a peer unreachable.
    Unreachable,
    /// Local: the leader checks it still hears from a quorum.
    CheckQuorum,
    /// Transfer leadership to `from`.
    TransferLeader,
    /// Tells the transfer target to campaign at once.
    TimeoutNow,
    /// Ask for a read index (`context` identifies the request).
    ReadIndex,
    /// Answer to [`MessageType::ReadIndex`].
    ReadIndexResp,
}

impl MessageType {
    /// Whether the message never leaves the node.
    pub fn is_local(self) -> bool {
        matches!(
            self,
            MessageType::Hup
                | MessageType::Beat
                | MessageType::SnapshotStatus
                | MessageType::Unreachable
                | MessageType::CheckQuorum
        )
    }

    /// Whether the message answers another one.
    pub fn is_response(self) -> bool {
        matches!(
            self,
            MessageType::VoteResp
                | MessageType::PreVoteResp
                | MessageType::AppendResp
                | MessageType::HeartbeatResp
                | MessageType::ReadIndexResp
        )
    }
}

/// A Raft message. Unused fields stay at their defaults.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Message {
    /// What the message is.
    pub msg_type: MessageType,
    /// Destination.
    pub to: NodeId,
    /// Source.
    pub from: NodeId,
    /// Sender's term (`0` for local messages).
    pub term: u64,
    /// Term of the entry at `index` (Append, Vote), or the rejection hint's term (AppendResp).
    pub log_term: u64,
    /// Log index whose meaning depends on the type.
    pub index: u64,
    /// Entries to append or propose.
    pub entries: Vec<Entry>,
    /// The sender's commit index (Append, Heartbeat).
    pub commit: u64,
    /// The snapshot of a [`MessageType::Snapshot`].
    pub snapshot: Option<Snapshot>,
    /// Whether the request is rejected.
    pub reject: bool,
    /// On a rejected append, the index the follower suggests probing from.
    pub reject_hint: u64,
    /// Opaque context: read request id, or [`CAMPAIGN_TRANSFER`] on transfer votes.
    #[serde(with = "serde_bytes")]
    pub context: Vec<u8>,
}

/// Context marking a vote request caused by a leadership transfer, which followers grant
/// even while they believe a leader is alive.
pub const CAMPAIGN_TRANSFER: &[u8] = b"transfer";

/// A linearizable read point: once the local applied index reaches `index`, the state
/// machine reflects every write acknowledged before the read was requested.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ReadState {
    /// Commit index at the time the read was confirmed.
    pub index: u64,
    /// The context given to [`crate::RawNode::read_index`].
    #[serde(with = "serde_bytes")]
    pub request_ctx: Vec<u8>,
}

/// A node's role.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
pub enum StateRole {
    /// Follows a leader (or waits for one).
    #[default]
    Follower,
    /// Asks for pre-votes without raising its term.
    PreCandidate,
    /// Asks for votes.
    Candidate,
    /// Leads the term.
    Leader,
}

/// Volatile state that the runtime may want to observe (no need to persist it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct SoftState {
    /// Known leader, if any.
    pub leader_id: Option<NodeId>,
    /// Own role.
    pub role: StateRole,
}

/// Outcome of sending a snapshot, reported with [`crate::RawNode::report_snapshot`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SnapshotStatus {
    /// The follower received the whole snapshot.
    Finish,
    /// Sending failed; the leader will probe again.
    Failure,
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn conf_change_roundtrip(ids in proptest::collection::vec((0u8..3, any::<u64>()), 0..8),
                                 t in 0u8..3, ctx in proptest::collection::vec(any::<u8>(), 0..16)) {
            let cc = ConfChange {
                transition: [ConfChangeTransition::Auto, ConfChangeTransition::Implicit,
                             ConfChangeTransition::Explicit][t as usize],
                changes: ids.iter().map(|&(k, id)| ConfChangeSingle {
                    kind: [ConfChangeType::AddNode, ConfChangeType::RemoveNode,
                           ConfChangeType::AddLearner][k as usize],
                    node_id: NodeId(id),
                }).collect(),
                context: ctx,
            };
            prop_assert_eq!(ConfChange::decode(&cc.encode()).unwrap(), cc);
        }

        #[test]
        fn conf_change_decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = ConfChange::decode(&bytes);
        }
    }
}
