//! What went wrong, and whether the request may have taken effect.

use std::time::Duration;

use tonic::Code;

/// A failed client operation.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// No endpoint was given.
    #[error("no endpoints given")]
    NoEndpoints,
    /// The endpoint cannot be parsed.
    #[error("bad endpoint {endpoint:?}: {reason}")]
    BadEndpoint {
        /// As given.
        endpoint: String,
        /// Why it was refused.
        reason: String,
    },
    /// The TLS settings (CA, certificate, key, versions) do not load.
    #[error("TLS settings: {detail}")]
    Tls {
        /// What is wrong, naming the file.
        detail: String,
    },
    /// The connection could not be made (nothing was sent).
    #[error("cannot connect to {endpoint}: {detail}")]
    Connect {
        /// The endpoint dialled.
        endpoint: String,
        /// The transport's reason.
        detail: String,
    },
    /// The connection was not made in time (nothing was sent).
    #[error("cannot connect to {endpoint} within {timeout:?}")]
    ConnectTimeout {
        /// The endpoint dialled.
        endpoint: String,
        /// The bound.
        timeout: Duration,
    },
    /// The endpoint's circuit breaker is open: it failed repeatedly and is left alone for a
    /// while (nothing was sent).
    #[error("endpoint {endpoint} skipped: its circuit breaker is open after repeated failures")]
    BreakerOpen {
        /// The endpoint.
        endpoint: String,
    },
    /// No answer within the request timeout; the request may have been applied.
    #[error("no answer from {endpoint} within {timeout:?}")]
    Timeout {
        /// The endpoint asked.
        endpoint: String,
        /// The bound.
        timeout: Duration,
    },
    /// The server answered with an error status.
    #[error("{}: {}", .0.code(), .0.message())]
    Rpc(tonic::Status),
    /// No member named a leader, or the leader's client URL is unknown.
    #[error("no leader found: {0}")]
    NoLeader(String),
}

impl ClientError {
    /// Whether the request certainly had no effect: it never left this process, or the
    /// server refused it before it could be applied. An indefinite error (a timeout, a
    /// connection lost after sending, an internal error) may hide a commit.
    pub fn is_definite(&self) -> bool {
        match self {
            ClientError::Rpc(status) => is_definite_status(status),
            ClientError::Timeout { .. } => false,
            _ => true,
        }
    }

    /// Whether the failure is the endpoint's (unreachable, refusing, silent, a broken
    /// transport) rather than the request's or the cluster's: what its circuit breaker
    /// counts. A status the server itself sent (its message starts with `etcdserver:`, as
    /// every Concord and etcd error does) means the endpoint is up, even when it answers
    /// that there is no leader.
    pub fn is_endpoint_failure(&self) -> bool {
        match self {
            ClientError::Connect { .. }
            | ClientError::ConnectTimeout { .. }
            | ClientError::BreakerOpen { .. }
            | ClientError::Timeout { .. } => true,
            // The transport's own statuses: no connection (Unavailable), a connection
            // closed under the request (Cancelled), a broken stream (Unknown).
            ClientError::Rpc(s) => {
                matches!(
                    s.code(),
                    Code::Unavailable | Code::Cancelled | Code::Unknown
                ) && !s.message().starts_with("etcdserver:")
            }
            _ => false,
        }
    }

    /// Whether trying again (elsewhere, later) may succeed: endpoint failures and the codes
    /// that mean "not now" (no leader, timed out, stopping, aborted).
    pub fn is_transient(&self) -> bool {
        self.is_endpoint_failure()
            || matches!(self, ClientError::Rpc(s)
                if matches!(s.code(), Code::Unavailable | Code::DeadlineExceeded | Code::Aborted))
    }

    /// The status, when the server answered.
    pub fn status(&self) -> Option<&tonic::Status> {
        match self {
            ClientError::Rpc(s) => Some(s),
            _ => None,
        }
    }
}

impl From<tonic::Status> for ClientError {
    fn from(s: tonic::Status) -> Self {
        ClientError::Rpc(s)
    }
}

/// Whether a status means the request certainly had no effect.
///
/// Definite: the codes a server uses to refuse a request before applying it
/// (`InvalidArgument`, `PermissionDenied`, `Unauthenticated`, `Unimplemented`, `OutOfRange`,
/// `ResourceExhausted`), and `Unavailable` when the channel could not even connect. Every
/// other code (`Unavailable` after sending, `DeadlineExceeded`, `Unknown`, `Internal`,
/// `Cancelled`, ...) may hide a commit.
pub fn is_definite_status(s: &tonic::Status) -> bool {
    let refused = matches!(
        s.code(),
        Code::InvalidArgument
            | Code::PermissionDenied
            | Code::Unauthenticated
            | Code::Unimplemented
            | Code::OutOfRange
            | Code::ResourceExhausted
    );
    // A channel that had to reconnect and could not never sent the request.
    let never_sent = s.code() == Code::Unavailable
        && (s.message().contains("tcp connect error")
            || s.message().contains("Connection refused"));
    refused || never_sent
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Status;

    #[test]
    fn only_refusals_and_unsent_requests_are_definite() {
        let definite = [
            Status::invalid_argument("etcdserver: key is not provided"),
            Status::out_of_range("etcdserver: mvcc: required revision has been compacted"),
            Status::unavailable("error trying to connect: tcp connect error: Connection refused"),
            Status::resource_exhausted("etcdserver: too many requests"),
        ];
        for s in definite {
            assert!(ClientError::Rpc(s.clone()).is_definite(), "{s:?}");
        }
        let indefinite = [
            Status::unavailable("etcdserver: request timed out"),
            Status::unavailable("etcdserver: no leader"),
            Status::deadline_exceeded("context deadline exceeded"),
            Status::unknown("transport error"),
            Status::internal("h2 protocol error"),
            Status::cancelled("operation was canceled"),
        ];
        for s in indefinite {
            assert!(!ClientError::Rpc(s.clone()).is_definite(), "{s:?}");
        }
        let timeout = ClientError::Timeout {
            endpoint: "a:1".into(),
            timeout: Duration::from_secs(1),
        };
        assert!(!timeout.is_definite() && timeout.is_endpoint_failure());
        let refused = ClientError::Connect {
            endpoint: "a:1".into(),
            detail: "refused".into(),
        };
        assert!(refused.is_definite() && refused.is_transient());
        let rejected = ClientError::Rpc(Status::invalid_argument("bad"));
        assert!(rejected.is_definite() && !rejected.is_transient());
        // The server says there is no leader: try again, but the endpoint itself is fine.
        let no_leader = ClientError::Rpc(Status::unavailable("etcdserver: no leader"));
        assert!(no_leader.is_transient() && !no_leader.is_endpoint_failure());
        let reset = ClientError::Rpc(Status::unavailable("transport error: connection reset"));
        assert!(reset.is_transient() && reset.is_endpoint_failure());
        let closed = ClientError::Rpc(Status::cancelled("operation was canceled"));
        assert!(closed.is_transient() && !closed.is_definite());
    }
}
