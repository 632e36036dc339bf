//! The Concord node runtime: the tokio side that drives the sans-I/O cores.
//!
//! This crate is deliberately *not* sans-I/O: it owns the timers, the disk and the
//! network, and feeds them to `concord-raft` and `concord-storage`, which stay pure.
//!
//! # Layout
//!
//! * [`node`]: the Raft driver ([`node::start`], [`node::NodeHandle`]): tick timer, Ready
//!   loop in the persistence order, apply loop, batched proposals and ReadIndex reads,
//!   snapshots and WAL compaction, restart from the data dir.
//! * [`transport`]: the [`transport::Transport`] seam and an in-process network with
//!   fault switches for tests.
//! * [`grpc`]: the network transport over concord-proto's `concord.peer.v1.Raft` service
//!   (a tonic server and one reconnecting, bounded stream per peer).
//! * [`codec`]: the wire encoding of Raft messages and the encoding of commands inside
//!   log entries.
//! * [`error`]: [`error::NodeError`], with etcd's error strings.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use concord_server::node::{self, NodeConfig};
//! use concord_server::transport::LocalNetwork;
//! use concord_storage::mvcc::types::{Command, PutRequest};
//!
//! let net = LocalNetwork::new();
//! let (transport, inbox) = net.register(1);
//! let node = node::start(NodeConfig::new(1, vec![1], "/tmp/n1"), Arc::new(transport), inbox)?;
//! node.campaign().await?;
//! let put = PutRequest { key: b"k".to_vec(), value: b"v".to_vec(), ..PutRequest::default() };
//! node.propose(Command::Put(put)).await?;
//! node.shutdown().await?;
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]

pub mod codec;
pub mod error;
pub mod grpc;
pub mod node;
pub mod server;
pub mod transport;

pub use error::NodeError;
