//! The end-to-end tests' harness: the test kit (`concord-testkit`) with this crate's binary.
#![allow(dead_code, unused_imports)]

pub use concord_testkit::cluster::{ELECTION_MS, HEARTBEAT_MS, RPC_TIMEOUT, WAIT};
pub use concord_testkit::etcd::{ATTEMPT_TIMEOUT, RETRY_BUDGET};
pub use concord_testkit::*;

pub mod otlp;

/// The `concord` binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_concord");
