//! Compare-and-set on one key by single-decree Paxos among the key's replicas, sans-I/O:
//! the [`Acceptor`] each replica keeps per key, and the [`CasRequest`] a coordinator drives.
//!
//! One key has a sequence of Paxos instances, as in Cassandra's lightweight transactions: an
//! instance decides one proposal, whose commit merges the proposal's value into the key's
//! data on the replicas and opens the next instance. Ballots are (HLC time, node) pairs, so a
//! coordinator's ballot follows the time it has seen and two coordinators never share one.
//!
//! ```text
//! coordinator                                   replicas (acceptors)
//!   Prepare(b) ───────────────────────────────▶ promise b unless a higher ballot was promised;
//!                                               answer the accepted proposal not yet
//!                                               committed, the last commit, the key's value
//!   quorum of promises:
//!     a proposal in progress (accepted, ballot above every commit seen)?
//!       ─▶ Propose(b, its value), Commit(b, its value), then start over above b
//!          (it is finished first: it may have been chosen)
//!     else ─▶ Decide(join of the values): the caller computes the new value or none
//!   Propose(b, v) ────────────────────────────▶ accept unless a higher ballot was promised
//!   quorum of accepts ─▶ Commit(b, v) ────────▶ merge v into the key, forget the accepted
//!   quorum of commits ─▶ Done
//! ```
//!
//! Round trips for one compare-and-set without contention: prepare (which reads the value),
//! propose, commit: three, one fewer than Cassandra's (which reads separately). A read that
//! must be linearizable with the compare-and-sets is a request that decides to write nothing:
//! one round trip, plus finishing a proposal it finds in progress.
//!
//! # Guarantees
//!
//! 1. **At most one value per instance is chosen**, and a later instance starts from it: a
//!    proposal accepted by a quorum is seen by every later quorum of promises (the two
//!    quorums meet) and finished before anything else is decided. The acceptor must have
//!    persisted a promise or an acceptance before its answer leaves (the runtime's duty).
//! 2. **Linearizable per key** among the requests that go through Paxos: each decision is
//!    made on the join of a quorum's values after every earlier chosen proposal was
//!    committed to a quorum, so it sees every earlier decision. (Plain writes to the same
//!    key bypass this order; `docs/ap.md` says what mixing them guarantees.)
//! 3. **A request knows whether its write happened.** `Done { written: true }` only after its
//!    own proposal was accepted by a quorum (chosen; committed to a quorum unless replicas
//!    failed meanwhile, when the next coordinator finishes the commit), also when it finds
//!    that proposal in progress after a retry and finishes it; `written: false` only when
//!    it decided not to write. Every other end is [`CasAction::Unavailable`], which is
//!    indefinite: also when a refused proposal of its own may have been chosen by another
//!    coordinator since.
//! 4. **Progress under contention** is the caller's: on [`CasAction::Retry`] it starts over
//!    with a ballot above the one named (after a randomized back-off, as Cassandra does).

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::crdt::Crdt;
use crate::NodeId;

/// A Paxos ballot: an HLC time and the coordinator's node, ordered by both.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Ballot {
    /// A packed HLC timestamp ([`crate::clock::Timestamp::pack`]).
    pub time: u64,
    /// The coordinator that chose it.
    pub node: NodeId,
}

/// What one replica keeps per key for Paxos (persisted before every answer).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Acceptor<V> {
    /// The highest ballot promised or accepted.
    promised: Option<Ballot>,
    /// The last proposal accepted and not yet known committed.
    accepted: Option<(Ballot, V)>,
    /// The ballot of the last commit applied here.
    committed: Option<Ballot>,
}

impl<V> Default for Acceptor<V> {
    fn default() -> Self {
        Acceptor {
            promised: None,
            accepted: None,
            committed: None,
        }
    }
}

/// An acceptor's promise: what it accepted and has not seen committed, and its last commit.
/// The runtime adds the key's value to it ([`Reply::Promise`]).
pub type Promised<V> = (Option<(Ballot, V)>, Option<Ballot>);

impl<V: Clone> Acceptor<V> {
    /// A key no request has touched.
    pub fn new() -> Self {
        Self::default()
    }

    /// Phase 1: promises `ballot` unless a higher one was promised (then names that one).
    pub fn prepare(&mut self, ballot: Ballot) -> Result<Promised<V>, Ballot> {
        if let Some(p) = self.promised.filter(|p| ballot < *p) {
            return Err(p);
        }
        self.promised = Some(ballot);
        let in_progress = self
            .accepted
            .clone()
            .filter(|(b, _)| self.committed.is_none_or(|c| *b > c));
        Ok((in_progress, self.committed))
    }

    /// Phase 2: accepts `value` under `ballot` unless a higher ballot was promised.
    pub fn propose(&mut self, ballot: Ballot, value: V) -> Result<(), Ballot> {
        if let Some(p) = self.promised.filter(|p| ballot < *p) {
            return Err(p);
        }
        self.promised = Some(ballot);
        self.accepted = Some((ballot, value));
        Ok(())
    }

    /// The commit of `ballot`'s proposal (whose value the runtime merges into the key's
    /// data in the same durable step): later prepares no longer report it in progress.
    pub fn commit(&mut self, ballot: Ballot) {
        if self.committed.is_none_or(|c| ballot > c) {
            self.committed = Some(ballot);
        }
        if self.accepted.as_ref().is_some_and(|(b, _)| *b <= ballot) {
            self.accepted = None;
        }
    }

    /// The highest ballot this acceptor promised or accepted.
    pub fn promised(&self) -> Option<Ballot> {
        self.promised
    }
}

/// A replica's answer to a coordinator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply<V> {
    /// To `Prepare`: promised; the proposal in progress there, its last commit, and the
    /// key's value there (`None`: absent).
    Promise {
        /// Accepted and not known committed.
        in_progress: Option<(Ballot, V)>,
        /// Its last commit.
        committed: Option<Ballot>,
        /// The key's value.
        value: Option<V>,
    },
    /// To `Propose`: accepted.
    Accepted,
    /// To `Commit`: applied.
    Committed,
    /// To `Prepare` or `Propose`: a higher ballot was promised there.
    Reject {
        /// That ballot.
        promised: Ballot,
    },
}

/// What the runtime does next for a [`CasRequest`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CasAction<V> {
    /// Send `Prepare(ballot)` to these replicas.
    Prepare {
        /// The replicas.
        to: Vec<NodeId>,
        /// The ballot.
        ballot: Ballot,
    },
    /// Send `Propose(ballot, value)` to these replicas.
    Propose {
        /// The replicas.
        to: Vec<NodeId>,
        /// The ballot.
        ballot: Ballot,
        /// The value proposed.
        value: V,
    },
    /// Send `Commit(ballot, value)` to these replicas.
    Commit {
        /// The replicas.
        to: Vec<NodeId>,
        /// The ballot.
        ballot: Ballot,
        /// The value committed.
        value: V,
    },
    /// A quorum promised and nothing is in progress: the key's current value (the join of
    /// the quorum's values). Answer with [`CasRequest::decide`].
    Decide {
        /// The current value (`None`: absent).
        current: Option<V>,
    },
    /// A competing coordinator holds the key: call [`CasRequest::retry`] with a ballot
    /// above this one, after a back-off.
    Retry {
        /// The highest ballot seen.
        above: Ballot,
    },
    /// Too many replicas failed for a quorum. Indefinite: a proposal of this request may
    /// have been accepted and may yet be finished by another coordinator.
    Unavailable,
    /// The request is over: `written` tells whether its own proposal was committed.
    Done {
        /// Whether this request's value was written.
        written: bool,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Phase<V> {
    Preparing,
    /// Finishing a proposal found in progress (maybe this request's own, from a ballot
    /// it tried before).
    Repairing {
        value: V,
        committing: bool,
        own: bool,
    },
    Deciding,
    Proposing(V),
    Committing,
    Over,
}

/// A promise received: [`Reply::Promise`]'s fields.
#[derive(Debug, Clone)]
struct Promise<V> {
    in_progress: Option<(Ballot, V)>,
    committed: Option<Ballot>,
    value: Option<V>,
}

/// One compare-and-set (or linearizable read) of one key, from a coordinator's side.
#[derive(Debug, Clone)]
pub struct CasRequest<V> {
    replicas: Vec<NodeId>,
    quorum: usize,
    ballot: Ballot,
    /// Every ballot this request proposed under: a proposal found in progress under one of
    /// them is this request's own write.
    proposed: BTreeSet<Ballot>,
    phase: Phase<V>,
    promises: BTreeMap<NodeId, Promise<V>>,
    acks: BTreeSet<NodeId>,
    refused: BTreeMap<NodeId, Option<Ballot>>,
}

impl<V: Crdt + Clone> CasRequest<V> {
    /// A request over `replicas` (distinct), needing `quorum` of them, with a first
    /// ballot; the first action is the returned `Prepare`. Every ballot a coordinator uses
    /// (here and in [`CasRequest::retry`]) must be above every ballot it used before, as
    /// readings of its HLC are: the value a request writes carries its ballot, and must
    /// supersede the value it read.
    pub fn new(replicas: Vec<NodeId>, quorum: usize, ballot: Ballot) -> (Self, CasAction<V>) {
        let mut r = CasRequest {
            replicas,
            quorum: quorum.max(1),
            ballot,
            proposed: BTreeSet::new(),
            phase: Phase::Over,
            promises: BTreeMap::new(),
            acks: BTreeSet::new(),
            refused: BTreeMap::new(),
        };
        let first = r.retry(ballot);
        (r, first)
    }

    /// The ballot in use.
    pub fn ballot(&self) -> Ballot {
        self.ballot
    }

    /// Starts over with `ballot` (above the one a [`CasAction::Retry`] named).
    pub fn retry(&mut self, ballot: Ballot) -> CasAction<V> {
        self.ballot = ballot;
        self.phase = Phase::Preparing;
        self.promises.clear();
        self.acks.clear();
        self.refused.clear();
        CasAction::Prepare {
            to: self.replicas.clone(),
            ballot,
        }
    }

    /// After [`CasAction::Decide`]: the value to propose (the current value joined with the
    /// change, so that it supersedes what was read), or `None` to write nothing.
    pub fn decide(&mut self, value: Option<V>) -> CasAction<V> {
        if !matches!(self.phase, Phase::Deciding) {
            return CasAction::Unavailable;
        }
        match value {
            None => {
                self.phase = Phase::Over;
                CasAction::Done { written: false }
            }
            Some(v) => {
                self.proposed.insert(self.ballot);
                self.acks.clear();
                self.refused.clear();
                self.phase = Phase::Proposing(v.clone());
                CasAction::Propose {
                    to: self.replicas.clone(),
                    ballot: self.ballot,
                    value: v,
                }
            }
        }
    }

    /// A replica's answer to a message of the current ballot (answers to earlier ballots
    /// must not be fed: the runtime tags its messages).
    pub fn on_reply(&mut self, from: NodeId, reply: Reply<V>) -> Vec<CasAction<V>> {
        if !self.replicas.contains(&from) {
            return Vec::new();
        }
        match (reply, &self.phase) {
            (Reply::Reject { promised }, Phase::Preparing)
            | (Reply::Reject { promised }, Phase::Proposing(_))
            | (
                Reply::Reject { promised },
                Phase::Repairing {
                    committing: false, ..
                },
            ) => {
                self.refused.insert(from, Some(promised));
                self.after_refusal()
            }
            (
                Reply::Promise {
                    in_progress,
                    committed,
                    value,
                },
                Phase::Preparing,
            ) => {
                let promise = Promise {
                    in_progress,
                    committed,
                    value,
                };
                self.promises.insert(from, promise);
                if self.promises.len() < self.quorum {
                    return Vec::new();
                }
                vec![self.after_promises()]
            }
            (
                Reply::Accepted,
                Phase::Proposing(_)
                | Phase::Repairing {
                    committing: false, ..
                },
            ) => {
                self.acks.insert(from);
                if self.acks.len() < self.quorum {
                    return Vec::new();
                }
                self.acks.clear();
                self.refused.clear();
                let value = match &mut self.phase {
                    Phase::Proposing(v) => {
                        let v = v.clone();
                        self.phase = Phase::Committing;
                        v
                    }
                    Phase::Repairing {
                        value, committing, ..
                    } => {
                        *committing = true;
                        value.clone()
                    }
                    _ => unreachable!("matched above"),
                };
                vec![CasAction::Commit {
                    to: self.replicas.clone(),
                    ballot: self.ballot,
                    value,
                }]
            }
            (
                Reply::Committed,
                Phase::Committing
                | Phase::Repairing {
                    committing: true, ..
                },
            ) => {
                self.acks.insert(from);
                if self.acks.len() < self.quorum {
                    return Vec::new();
                }
                match std::mem::replace(&mut self.phase, Phase::Over) {
                    Phase::Repairing { own: false, .. } => {
                        vec![CasAction::Retry { above: self.ballot }]
                    }
                    _ => vec![CasAction::Done { written: true }],
                }
            }
            // Duplicates, and answers for a phase that is over.
            _ => Vec::new(),
        }
    }

    /// `from` failed or did not answer in time (in any phase).
    pub fn on_failure(&mut self, from: NodeId) -> Vec<CasAction<V>> {
        if !self.replicas.contains(&from) || matches!(self.phase, Phase::Over) {
            return Vec::new();
        }
        self.refused.entry(from).or_insert(None);
        self.after_refusal()
    }

    // A replica refused or failed: give up on this ballot once a quorum cannot answer.
    fn after_refusal(&mut self) -> Vec<CasAction<V>> {
        let answered = match self.phase {
            Phase::Preparing => self.promises.len(),
            _ => self.acks.len(),
        };
        let possible = self
            .replicas
            .iter()
            .filter(|n| !self.refused.contains_key(n))
            .count()
            .max(answered);
        if possible >= self.quorum {
            return Vec::new();
        }
        let phase = std::mem::replace(&mut self.phase, Phase::Over);
        if matches!(phase, Phase::Committing) {
            // Accepted by a quorum: chosen. Whoever prepares next finishes the commit.
            return vec![CasAction::Done { written: true }];
        }
        match self.refused.values().flatten().max() {
            Some(&above) => vec![CasAction::Retry { above }],
            None => vec![CasAction::Unavailable],
        }
    }

    // A quorum promised: finish what is in progress, or let the caller decide.
    fn after_promises(&mut self) -> CasAction<V> {
        let last_commit = self.promises.values().filter_map(|p| p.committed).max();
        let in_progress = self
            .promises
            .values()
            .filter_map(|p| p.in_progress.clone())
            .filter(|(b, _)| last_commit.is_none_or(|c| *b > c))
            .max_by_key(|(b, _)| *b);
        self.refused.clear();
        self.acks.clear();
        if let Some((b, value)) = in_progress {
            let own = self.proposed.contains(&b);
            self.phase = Phase::Repairing {
                value: value.clone(),
                committing: false,
                own,
            };
            return CasAction::Propose {
                to: self.replicas.clone(),
                ballot: self.ballot,
                value,
            };
        }
        // A proposal of this request that was refused may have been chosen and committed
        // since under another coordinator's ballot (which is above it); deciding again
        // could then write twice or answer wrongly. Only when every commit seen is below
        // it can it never have been chosen.
        if self
            .proposed
            .iter()
            .any(|b| last_commit.is_some_and(|c| c > *b))
        {
            self.phase = Phase::Over;
            return CasAction::Unavailable;
        }
        let mut current: Option<V> = None;
        for v in self.promises.values().filter_map(|p| p.value.as_ref()) {
            match &mut current {
                Some(c) => c.merge(v),
                None => current = Some(v.clone()),
            }
        }
        self.phase = Phase::Deciding;
        CasAction::Decide { current }
    }
}

#[cfg(test)]
mod tests;
