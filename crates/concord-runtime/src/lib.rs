//! Concord's node runtime, independent of any client API: the tokio side that drives the
//! sans-I/O cores. It owns timers, the disk and the network, and feeds them to
//! `concord-raft` and `concord-storage`, which stay pure. It knows nothing of etcd:
//! `concord-server` puts the etcd API on top of it, with the etcd keyspace as one
//! [`StateMachine`].
//!
//! # Layout
//!
//! * [`raft_node`]: the Raft group driver, generic over its [`StateMachine`] and its
//!   `Disk` ([`raft_node::start`], [`raft_node::RaftHandle`]): tick timer, Ready loop in
//!   the persistence order, batched proposals and ReadIndex reads, snapshots and WAL
//!   compaction, restart, fast failover. Nothing in it assumes one group per process.
//! * [`state_machine`]: the [`StateMachine`] trait and its contract.
//! * [`envelope`]: the header of every normal log entry (who waits for the result).
//! * [`clock`]: the node's hybrid logical clock service ([`clock::NodeClock`]).
//! * [`transport`]: the [`transport::Transport`] seam and an in-process network with fault
//!   switches for tests.
//! * [`grpc`]: the network transport over concord-proto's `concord.peer.v1.Raft` service.
//! * [`direct`]: its fast path between `http://` peers, frames written straight to a TCP
//!   connection.
//! * [`membership`]: SWIM gossip membership ([`concord_core::swim`]) driven over the
//!   `concord.peer.v1.Gossip` service, with a phi-accrual detector per peer.
//! * [`faults`]: fault injection (delay, drop, cut) as a wrapper around any transport.
//! * [`codec`]: the wire encoding of Raft messages.
//! * [`error`]: [`NodeError`], the runtime's typed errors.
#![forbid(unsafe_code)]

pub mod clock;
pub mod codec;
pub mod direct;
pub mod envelope;
pub mod error;
pub mod faults;
pub mod grpc;
pub mod membership;
pub mod raft_node;
pub mod state_machine;
pub mod telemetry;
pub mod traces;
pub mod transport;

pub use error::{NodeError, StorageFailure};
pub use raft_node::{NodeConfig, NodeStatus, RaftHandle};
pub use state_machine::StateMachine;
pub use telemetry::{NoTelemetry, Telemetry};
