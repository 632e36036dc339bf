//! Concord's own client for the etcd v3 gRPC API, used by the `concord` CLI, `concord bench`,
//! the chaos runner and the tests.
//!
//! * [`endpoint`]: what a user types (`host:port`, `http://host:port`) becomes a URL, and
//!   [`dial`] is the one way to open a channel (bounded by a timeout, `TCP_NODELAY`).
//! * [`ClientError`] says whether a failed request **certainly had no effect**
//!   ([`ClientError::is_definite`]) or may have been applied (an indefinite error: a timeout,
//!   a connection lost after the request left). Only definite failures of non-idempotent
//!   requests are retried; a history checker must treat indefinite ones as "maybe".
//! * [`Backoff`]: capped exponential backoff with full jitter between attempts.
//! * [`Client`]: a set of endpoints, each with a lazily dialled channel and a circuit breaker
//!   (`concord_core::breaker`); [`Client::call`] retries on the next endpoint; [`Client::leader`]
//!   finds the leader's channel (Status for the leader's id, MemberList for its client URL).
//! * [`ReadConsistency`]: a read level beyond etcd's two (`bounded`, `session`), set on a
//!   request with [`ReadConsistency::set_on`] (the `concord-consistency` metadata key).
//!
//! `https://` endpoints are dialled with TLS ([`ClientOptions::tls`]: the CA, the client
//! certificate, or skipping verification, as etcdctl's `--cacert`, `--cert`, `--key`,
//! `--insecure-skip-tls-verify`); `http://` ones in plain text.
#![forbid(unsafe_code)]

mod backoff;
mod client;
pub mod endpoint;
mod error;

pub use backoff::Backoff;
pub use client::{Client, ClientOptions, Idempotence};
pub use concord_proto::consistency::{ReadConsistency, METADATA_KEY as CONSISTENCY_METADATA_KEY};
pub use concord_tls::{ClientSettings as TlsSettings, Dialer, Identity};
pub use endpoint::{dial, dial_with};
pub use error::{is_definite_status, ClientError};
pub use tonic::transport::Channel;
