//! Concord's test kit (a dev-dependency only; never part of a shipped binary).
//!
//! * [`cluster`]: a cluster of real `concord server` processes on loopback, driven with the
//!   independent `etcd-client` crate, killed by PID on drop.
//! * [`ports`]: free loopback ports.
//! * [`wait`]: bounded "eventually" polling, async and blocking.
//! * [`http`]: a raw HTTP/1.1 client (exact bytes out, parsed answer back).
//! * [`metrics`]: `/metrics` pages parsed by a Prometheus text-format parser.
//! * [`redis`]: a minimal Redis client (one command, one parsed reply).
//! * [`etcd`]: `etcd-client` helpers (connect, error text, a client that retries across
//!   nodes).
//!
//! Every wait is bounded; every process and temporary folder a test creates is cleaned up
//! when its owner is dropped.
#![forbid(unsafe_code)]

pub mod cluster;
pub mod etcd;
pub mod http;
pub mod metrics;
pub mod ports;
pub mod redis;
pub mod wait;

pub use cluster::{Cluster, ClusterBuilder, Node};
pub use etcd::{connect, err_text, expect_err, initial_cluster_after_add, RetryClient};
pub use http::{http_get, http_request, parse_http_response, raw_exchange, HttpResponse};
pub use ports::{free_port, free_ports};
pub use redis::{RedisConn, RedisReply};
pub use wait::{eventually, eventually_blocking};
