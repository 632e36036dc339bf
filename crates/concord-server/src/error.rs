//! [`KvError`]: what a call on the keyspace can fail with, and the one catalogue of etcd's
//! errors: [`Etcd`] (code and text of each error the API raises), [`etcd_text`] (etcd's
//! strings for the runtime's errors), and `status` / `request_status`, which turn every
//! error into the gRPC status etcd answers with.
//!
//! # Guarantees
//!
//! 1. Messages are etcd's own strings where etcd has one (`etcdserver: request timed out`,
//!    `etcdserver: no leader`, …), so clients that match on them keep working; they are
//!    written here once ([`etcd_text`]), not at each call site.
//! 2. Request errors of the state machine ([`RequestError`]) pass through unchanged.

use std::sync::Arc;

use concord_runtime::NodeError;
use concord_storage::errors::{RequestError, StoreError};

/// Why a request to the keyspace failed.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum KvError {
    /// The Raft group could not serve it (timeout, no leader, stopped, ...).
    #[error("{}", etcd_text(.0))]
    Node(NodeError),
    /// The state machine refused the request (etcd's request errors).
    #[error(transparent)]
    Request(#[from] RequestError),
    /// Reading the local store failed.
    #[error("storage failure: {0}")]
    Store(Arc<StoreError>),
}

impl From<NodeError> for KvError {
    fn from(e: NodeError) -> Self {
        KvError::Node(e)
    }
}

impl From<StoreError> for KvError {
    fn from(e: StoreError) -> Self {
        KvError::Store(Arc::new(e))
    }
}

impl PartialEq for KvError {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (KvError::Node(a), KvError::Node(b)) => a == b,
            (KvError::Request(a), KvError::Request(b)) => a == b,
            (KvError::Store(a), KvError::Store(b)) => a.to_string() == b.to_string(),
            _ => false,
        }
    }
}

/// etcd's text for a runtime error (`rpctypes` in etcd's source), or the runtime's own
/// where etcd has none.
pub fn etcd_text(e: &NodeError) -> String {
    match e {
        NodeError::Timeout => Etcd::Timeout.text().into(),
        NodeError::LeaderChanged => "etcdserver: leader changed".into(),
        NodeError::NoLeader => Etcd::NoLeader.text().into(),
        NodeError::Stopped => Etcd::Stopped.text().into(),
        NodeError::RequestTooLarge => "etcdserver: request is too large".into(),
        NodeError::NotLeader { leader } => {
            format!("etcdserver: not leader (leader is {leader:?})")
        }
        NodeError::Storage(f) => format!("storage failure: {f}"),
        other => other.to_string(),
    }
}

/// A keyspace error as the gRPC status etcd returns for it.
pub(crate) fn status(e: KvError) -> tonic::Status {
    match e {
        KvError::Request(r) => request_status(r),
        KvError::Node(ref n) => match n {
            NodeError::Timeout
            | NodeError::LeaderChanged
            | NodeError::NoLeader
            | NodeError::Stopped
            | NodeError::ProposalDropped => tonic::Status::unavailable(e.to_string()),
            NodeError::RequestTooLarge => tonic::Status::invalid_argument(e.to_string()),
            NodeError::NotLeader { .. } => tonic::Status::failed_precondition(e.to_string()),
            _ => tonic::Status::internal(e.to_string()),
        },
        other => tonic::Status::internal(other.to_string()),
    }
}

/// A state-machine refusal as etcd's gRPC status (codes and strings of etcd's
/// `rpctypes`).
pub(crate) fn request_status(e: RequestError) -> tonic::Status {
    match e {
        RequestError::Compacted => Etcd::Compacted.status(),
        RequestError::FutureRevision => Etcd::FutureRevision.status(),
        RequestError::LeaseNotFound => tonic::Status::not_found(e.to_string()),
        RequestError::LeaseExists => tonic::Status::failed_precondition(e.to_string()),
        RequestError::NoSpace => tonic::Status::resource_exhausted(e.to_string()),
        other => tonic::Status::invalid_argument(other.to_string()),
    }
}

/// etcd's client-visible errors that the API layer raises itself (etcd's `rpctypes`, plus a
/// few of Concord's own in the same style): each with its gRPC code and its text, written
/// once. Errors of the state machine are [`RequestError`] (concord-storage), those of the
/// Raft group [`NodeError`] (see [`etcd_text`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Etcd {
    /// A key is required.
    EmptyKey,
    /// The revision asked for was compacted.
    Compacted,
    /// The revision asked for is past the current one.
    FutureRevision,
    /// A transaction nests deeper than allowed.
    TxnTooDeep,
    /// A transaction branch has more operations than `--max-txn-ops`.
    TooManyTxnOps,
    /// A transaction's request op carries no request.
    EmptyRequestOp,
    /// A compare result outside etcd's enum (the value follows).
    UnknownCompareResult,
    /// A compare target outside etcd's enum (the value follows).
    UnknownCompareTarget,
    /// A watch asked for an id already in use on its stream.
    WatcherIdExists,
    /// A lease id below zero.
    LeaseIdNotPositive,
    /// A lease TTL over etcd's limit.
    LeaseTtlTooLarge,
    /// `MemberRemove` of the only voter.
    OnlyVoter,
    /// The leader did not hand over within the wait.
    LeaderTransferTimeout,
    /// No member with that id.
    MemberNotFound,
    /// `MemberAdd` without peer URLs.
    PeerUrlsNotProvided,
    /// A peer URL another member has.
    PeerUrlExists,
    /// `MemberPromote` of a voter.
    MemberNotLearner,
    /// `MemberPromote` of a learner that is not caught up.
    LearnerNotReady,
    /// An alarm other than NOSPACE raised by a client.
    OnlyNoSpaceAlarm,
    /// An alarm action outside etcd's enum (the value follows).
    UnknownAlarmAction,
    /// An operation only the leader performs.
    NotLeader,
    /// `MoveLeader` to a member that is not a voter.
    BadLeaderTransferee,
    /// No answer in time.
    Timeout,
    /// No leader is known.
    NoLeader,
    /// The leader's client URL has not been published yet.
    LeaderUrlUnknown,
    /// The member is stopping.
    Stopped,
    /// Auth calls while authentication is off.
    AuthNotEnabled,
    /// An election contender's key disappeared while it waited.
    ContenderDeleted,
}

impl Etcd {
    /// The gRPC code etcd answers with.
    pub fn code(self) -> tonic::Code {
        use tonic::Code;
        match self {
            Etcd::Compacted | Etcd::FutureRevision | Etcd::LeaseTtlTooLarge => Code::OutOfRange,
            Etcd::MemberNotFound => Code::NotFound,
            Etcd::OnlyVoter
            | Etcd::PeerUrlExists
            | Etcd::MemberNotLearner
            | Etcd::LearnerNotReady
            | Etcd::NotLeader
            | Etcd::BadLeaderTransferee
            | Etcd::AuthNotEnabled
            | Etcd::ContenderDeleted => Code::FailedPrecondition,
            Etcd::LeaderTransferTimeout
            | Etcd::Timeout
            | Etcd::NoLeader
            | Etcd::LeaderUrlUnknown
            | Etcd::Stopped => Code::Unavailable,
            Etcd::EmptyKey
            | Etcd::TxnTooDeep
            | Etcd::TooManyTxnOps
            | Etcd::EmptyRequestOp
            | Etcd::UnknownCompareResult
            | Etcd::UnknownCompareTarget
            | Etcd::WatcherIdExists
            | Etcd::LeaseIdNotPositive
            | Etcd::PeerUrlsNotProvided
            | Etcd::OnlyNoSpaceAlarm
            | Etcd::UnknownAlarmAction => Code::InvalidArgument,
        }
    }

    /// The text etcd answers with.
    pub fn text(self) -> &'static str {
        match self {
            Etcd::EmptyKey => "etcdserver: key is not provided",
            Etcd::Compacted => "etcdserver: mvcc: required revision has been compacted",
            Etcd::FutureRevision => "etcdserver: mvcc: required revision is a future revision",
            Etcd::TxnTooDeep => "etcdserver: transactions nested too deeply",
            Etcd::TooManyTxnOps => "etcdserver: too many operations in txn request",
            Etcd::EmptyRequestOp => "etcdserver: request op has no request",
            Etcd::UnknownCompareResult => "etcdserver: unknown compare result",
            Etcd::UnknownCompareTarget => "etcdserver: unknown compare target",
            Etcd::WatcherIdExists => "etcdserver: mvcc: watcher ID already exists",
            Etcd::LeaseIdNotPositive => "etcdserver: lease id must be positive",
            Etcd::LeaseTtlTooLarge => "etcdserver: too large lease TTL",
            Etcd::OnlyVoter => "etcdserver: cannot remove the only voter",
            Etcd::LeaderTransferTimeout => "etcdserver: leader transfer timed out",
            Etcd::MemberNotFound => "etcdserver: member not found",
            Etcd::PeerUrlsNotProvided => "etcdserver: member peer URLs are not provided",
            Etcd::PeerUrlExists => "etcdserver: Peer URLs already exists",
            Etcd::MemberNotLearner => "etcdserver: can only promote a learner member",
            Etcd::LearnerNotReady => {
                "etcdserver: can only promote a learner member which is in sync with leader"
            }
            Etcd::OnlyNoSpaceAlarm => "etcdserver: only the NOSPACE alarm can be raised",
            Etcd::UnknownAlarmAction => "etcdserver: unknown alarm action",
            Etcd::NotLeader => "etcdserver: not leader",
            Etcd::BadLeaderTransferee => "etcdserver: bad leader transferee",
            Etcd::Timeout => "etcdserver: request timed out",
            Etcd::NoLeader => "etcdserver: no leader",
            Etcd::LeaderUrlUnknown => "etcdserver: the leader's client URL is not known yet",
            Etcd::Stopped => "etcdserver: server stopped",
            Etcd::AuthNotEnabled => "etcdserver: authentication is not enabled",
            Etcd::ContenderDeleted => {
                "etcdserver: the contender's key was deleted (its lease expired?)"
            }
        }
    }

    /// The gRPC status etcd answers with.
    pub fn status(self) -> tonic::Status {
        tonic::Status::new(self.code(), self.text())
    }

    /// The status with a detail after the text (e.g. the unknown value).
    pub fn status_with(self, detail: impl std::fmt::Display) -> tonic::Status {
        tonic::Status::new(self.code(), format!("{} {detail}", self.text()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_catalogued_error_is_an_etcd_string_with_a_non_ok_code() {
        use Etcd::*;
        let all = [
            EmptyKey,
            Compacted,
            FutureRevision,
            TxnTooDeep,
            TooManyTxnOps,
            EmptyRequestOp,
            UnknownCompareResult,
            UnknownCompareTarget,
            WatcherIdExists,
            LeaseIdNotPositive,
            LeaseTtlTooLarge,
            OnlyVoter,
            LeaderTransferTimeout,
            MemberNotFound,
            PeerUrlsNotProvided,
            PeerUrlExists,
            MemberNotLearner,
            LearnerNotReady,
            OnlyNoSpaceAlarm,
            UnknownAlarmAction,
            NotLeader,
            BadLeaderTransferee,
            Timeout,
            NoLeader,
            LeaderUrlUnknown,
            Stopped,
            AuthNotEnabled,
            ContenderDeleted,
        ];
        let mut texts = std::collections::BTreeSet::new();
        for e in all {
            assert!(e.text().starts_with("etcdserver: "), "{e:?}");
            assert_ne!(e.code(), tonic::Code::Ok, "{e:?}");
            assert!(texts.insert(e.text()), "{e:?}: text used twice");
            let st = e.status();
            assert_eq!((st.code(), st.message()), (e.code(), e.text()));
        }
        // The strings etcd's clients match on, pinned.
        assert_eq!(
            Compacted.status().message(),
            "etcdserver: mvcc: required revision has been compacted"
        );
        assert_eq!(Compacted.code(), tonic::Code::OutOfRange);
        assert_eq!(EmptyKey.code(), tonic::Code::InvalidArgument);
        assert_eq!(
            UnknownAlarmAction.status_with(9).message(),
            "etcdserver: unknown alarm action 9"
        );
        assert_eq!(
            etcd_text(&NodeError::Timeout),
            "etcdserver: request timed out"
        );
    }
}
