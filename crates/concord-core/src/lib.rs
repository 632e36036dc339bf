//! Pure building blocks of Concord.
//!
//! Nothing in this crate touches a socket, a file, a thread or the system clock: time and
//! randomness are arguments. That is what lets the runtime drive these state machines and the
//! tests replay them deterministically from a seed.
//!
//! # Layout
//!
//! | module | what it provides |
//! |---|---|
//! | [`clock`] | Lamport clock, vector clocks, dotted version vector sets, hybrid logical clock |
//! | [`crdt`] | G/PN-Counter, LWW and MV registers, add-wins OR-Set, OR-Map of nested CRDTs, enable-wins flag |
//! | [`ring`] | consistent-hash ring with virtual nodes, preference lists, exact moved ranges |
//! | [`range`] | range partitioner over byte keys (split, merge, overlap queries) |
//! | [`merkle`] | Merkle tree over key-hash buckets with an exact diff |
//! | [`detector`] | heartbeat-count and phi-accrual failure detectors, one history per peer |
//! | [`breaker`] | circuit breaker: closed, open, half-open with a bounded number of probes |
//! | [`quorum`] | N/R/W validation, consistency levels, ack tracking, causal resolution of replica answers |
//! | [`coordinator`] | one AP write or read over a key's replicas: sloppy quorum with hints, R-of-N reads of CRDT states, read repair |
//! | [`swim`] | SWIM gossip membership: probes, indirect probes, suspicion, incarnations, generations, push-pull; phi per peer |
//! | [`paxos`] | compare-and-set on one key by single-decree Paxos: acceptor state, the coordinator's request (prepare with read, propose, commit; finishing proposals in progress) |
//!
//! Every module documents the guarantees it gives in a `# Guarantees` section, and every
//! guarantee has a test beside the code.

pub mod breaker;
pub mod clock;
pub mod coordinator;
pub mod crdt;
pub mod detector;
pub mod merkle;
pub mod paxos;
pub mod quorum;
pub mod range;
pub mod ring;
pub mod swim;

use serde::{Deserialize, Serialize};

/// Identity of a node (a replica, a member, an actor of a CRDT).
///
/// Node ids are opaque 64-bit numbers, like etcd's member ids. They are totally ordered so that
/// every structure keyed by them iterates deterministically.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default,
)]
#[serde(transparent)]
pub struct NodeId(pub u64);

impl std::fmt::Display for NodeId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:x}", self.0)
    }
}

impl std::fmt::LowerHex for NodeId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::LowerHex::fmt(&self.0, f)
    }
}

impl NodeId {
    /// The raw 64-bit id (as etcd's member ids travel on the wire).
    pub const fn get(self) -> u64 {
        self.0
    }

    /// Whether this is `0`, which never names a node (configurations and decoders refuse it;
    /// "no node" is `Option::<NodeId>::None`).
    pub const fn is_zero(self) -> bool {
        self.0 == 0
    }
}

impl From<u64> for NodeId {
    fn from(id: u64) -> Self {
        NodeId(id)
    }
}
