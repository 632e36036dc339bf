//! Sans-I/O Raft consensus for Concord, in the style of etcd-io/raft and tikv/raft-rs
//! (the *Ready* pattern), written for Concord.
//!
//! The crate does no I/O, reads no clock and uses no global randomness: the runtime feeds
//! it ticks and messages, and carries out the work it hands back. That is what lets the
//! deterministic simulator in `tests/sim` drive thousands of clusters through crashes and
//! partitions from a single seed.
//!
//! # Flow
//!
//! ```text
//!            timer                 network                client
//!              |                      |                      |
//!           tick()                step(msg)     propose / propose_conf_change /
//!              |                      |         read_index / transfer_leader / campaign
//!              v                      v                      v
//!        +----------------------------------------------------------+
//!        |                    RawNode (pure state)                  |
//!        +----------------------------------------------------------+
//!              | has_ready()? -> ready()                        ^
//!              v                                                |
//!        Ready { messages, snapshot, entries, hard_state,       | advance(ready)
//!                persisted_messages, committed_entries,         |
//!                read_states, soft_state, must_sync }           |
//!              |                                                |
//!              +--> 1. send `messages` (leader traffic; may go before the fsync)
//!              +--> 2. write snapshot, entries, hard state; fsync if `must_sync`
//!              +--> 3. send `persisted_messages` (votes, acks: only after the fsync)
//!              +--> 4. install snapshot, apply `committed_entries` (calling
//!              |       `apply_conf_change` for configuration entries), answer
//!              |       `read_states` once applied >= their index
//!              +--> 5. advance(ready) -------------------------------------------+
//! ```
//!
//! # Persistence order (the runtime's duty)
//!
//! 1. A node's vote and term must be durable before any vote response or vote request
//!    leaves: those messages are in `persisted_messages`.
//! 2. A follower acknowledges entries only once they are durable: its `AppendResp` is in
//!    `persisted_messages` of the Ready that carries the entries.
//! 3. A leader may send its appends before its own fsync (they are in `messages`); it
//!    counts itself toward the commit quorum only after `advance` reports the entries
//!    persisted (docs/design.md, "Acknowledged means durable").
//! 4. Entries replace any stored entries from their first index on (a conflict
//!    truncates the stored suffix); a snapshot replaces the whole log.
//! 5. Committed entries are applied in order, after the Ready's writes are durable.
//!    After a restart, set [`Config::applied`] to the state machine's applied index and
//!    return, from [`Storage::initial_state`], the membership as of that index.
//!
//! Snapshot *data* is opaque here: the leader emits one [`MessageType::Snapshot`]
//! message carrying the application's snapshot, and splitting it into chunks for the
//! wire (and reassembling it) is the transport's job; the runtime reports the outcome
//! with [`RawNode::report_snapshot`].
//!
//! # Invariants and where they live
//!
//! | invariant (Raft paper) | where |
//! |---|---|
//! | election safety: one leader per term (§5.2) | `raft/election.rs` (one vote per term, persisted before the response) |
//! | votes only for up-to-date logs (§5.4.1) | `raft_log.rs` `is_up_to_date`, `raft/election.rs` |
//! | log matching (§5.3) | `raft_log.rs` `maybe_append` |
//! | commit only current-term entries by counting (§5.4.2) | `raft_log.rs` `maybe_commit` |
//! | leader counts itself only once durable | `raft/mod.rs` `on_persisted`, `raft_log.rs` `persisted` |
//! | joint consensus: both majorities decide (§6) | `quorum/joint.rs`, `confchange.rs` |
//! | learners never vote nor count | `tracker/mod.rs` (only voters in quorums), `raft/election.rs` |
//! | ReadIndex confirmed by a quorum heartbeat after arrival (thesis §6.4) | `read_only.rs`, `raft/leader.rs` |
//! | lease reads only while a quorum acked within the timeout | `raft/mod.rs` `lease_valid`, `in_lease` |
//! | bounded in-flight appends per follower | `tracker/inflights.rs` |
//!
//! The simulator (`tests/sim`) checks election safety, log matching, leader
//! completeness, state-machine safety, commit monotonicity and read linearizability
//! after every step, then liveness after healing. Scenario scripts in `testdata/` walk
//! through the classic traps (Figure 8, stale candidates, pre-vote, check-quorum,
//! removing the leader, learners, ReadIndex, transfer, snapshots).
//!
//! # Leases and clocks
//!
//! With [`ReadOnlyOption::LeaseBased`] the leader answers reads from its commit index
//! without a round trip while a quorum acknowledged heartbeats sent less than
//! `election_tick - 2` of its ticks ago; followers do not vote for another candidate
//! within `election_tick` of their ticks after hearing from it (and, after a restart,
//! within `election_tick` ticks of starting). This is sound only if tick rates differ by
//! less than that two-tick margin over an election timeout (bounded clock drift); a paused
//! or slowed leader process breaks it. ReadIndex ([`ReadOnlyOption::Safe`], the default)
//! makes no such assumption.
//!
//! # Example
//!
//! ```
//! use concord_raft::{Config, ConfState, MemStorage, NodeId, RawNode, StateRole};
//!
//! let storage = MemStorage::bootstrap(ConfState { voters: vec![NodeId(1)], ..ConfState::default() });
//! let mut config = Config::new(1);
//! config.applied = 1;
//! let mut node = RawNode::new(&config, storage.clone()).unwrap();
//! node.campaign().unwrap();
//! node.propose(b"hello".to_vec()).unwrap();
//! let mut applied = Vec::new();
//! while node.has_ready() {
//!     let rd = node.ready().unwrap();
//!     // (send rd.messages here)
//!     storage.append(&rd.entries).unwrap();
//!     if let Some(hs) = rd.hard_state {
//!         storage.set_hard_state(hs);
//!     }
//!     // (send rd.persisted_messages here)
//!     applied.extend(rd.committed_entries.iter().map(|e| e.data.clone()));
//!     node.advance(rd);
//! }
//! assert_eq!(node.status().soft_state.role, StateRole::Leader);
//! assert_eq!(applied.last().unwrap(), b"hello");
//! ```
//!
//! # Layout
//!
//! `types` (entries, messages, configuration changes), `config`, `errors`, `storage`
//! (the [`Storage`] trait and [`MemStorage`]), [`conformance`] (the suite every storage
//! must pass), `log_unstable` and `raft_log` (the log),
//! `quorum/` (majority and joint), `tracker/` (progress, in-flight window),
//! `confchange` (joint consensus), `read_only` (ReadIndex), `raft/` (the state machine:
//! election, replication, leader), `raw_node` ([`RawNode`], [`Ready`]).
#![forbid(unsafe_code)]

mod confchange;
mod config;
pub mod conformance;
mod errors;
mod log_unstable;
mod quorum;
mod raft;
mod raft_log;
mod raw_node;
mod read_only;
mod storage;
mod tracker;
mod types;

pub use config::{Config, ReadOnlyOption};
pub use errors::{ConfChangeError, ConfigError, Error, StorageError};
pub use quorum::VoteResult;
pub use raw_node::{RawNode, Ready, Status};
pub use storage::{MemStorage, RaftState, Storage};
pub use tracker::{Progress, ProgressState};
pub use types::*;
