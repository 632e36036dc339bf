//! The etcd API of a Concord node, on top of concord-runtime.
//!
//! concord-runtime drives Raft groups over a generic state machine and knows nothing of
//! etcd; this crate supplies the etcd keyspace as that state machine and serves etcd's
//! gRPC and HTTP APIs from it.
//!
//! # Layout
//!
//! * [`node`]: the keyspace as a Raft group: [`node::KvState`] (the MVCC store as a
//!   `StateMachine`), [`node::start`] and [`node::NodeHandle`] (propose a `Command`,
//!   linearizable and serializable ranges, the store's hash).
//! * [`server`]: one member process: configuration, the data-directory lock, listeners,
//!   and the services (`kv`, `watch`, `lease`, `cluster`, `maintenance`, `concurrency` for
//!   Lock and Election, the JSON `gateway`, `http` for `/health`, `/metrics` and the rest),
//!   each in its own file under `server/`.
//! * [`ap`]: AP buckets on this member: its replica store, the replica service, and the
//!   coordinator of client requests over a key's replicas (`docs/ap.md`).
//! * [`redis`]: the Redis front door (RESP2/RESP3) to the AP buckets.
//! * [`resp`]: the RESP2/RESP3 frame codec, pure code: requests read as Redis 7 reads
//!   them, [`resp::Frame`]s written with Redis's RESP2 downgrade, replies parsed.
//! * [`error`]: [`error::KvError`], with etcd's error strings in one catalogue.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use concord_raft::NodeId;
//! use concord_runtime::transport::LocalNetwork;
//! use concord_server::node::{self, NodeConfig};
//! use concord_storage::mvcc::types::{Command, PutRequest};
//!
//! let net = LocalNetwork::new();
//! let (transport, inbox) = net.register(NodeId(1));
//! let config = NodeConfig::new(NodeId(1), vec![NodeId(1)], "/tmp/n1");
//! let node = node::start(config, Arc::new(transport), inbox)?;
//! node.campaign().await?;
//! let put = PutRequest { key: b"k".to_vec(), value: b"v".to_vec(), ..PutRequest::default() };
//! node.propose(Command::Put(put)).await?;
//! node.shutdown().await?;
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]

pub mod ap;
pub mod auth;
pub mod error;
pub mod logs;
pub mod metrics;
pub mod node;
pub mod redis;
pub mod resp;
pub mod server;
pub mod telemetry;

pub use error::KvError;
