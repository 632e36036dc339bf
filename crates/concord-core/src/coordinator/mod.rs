//! The AP request engine: one write or one read of one key, coordinated over its replicas,
//! as a sans-I/O state machine (Dynamo §4.5–4.6, Riak's `get_fsm`/`put_fsm`).
//!
//! The runtime feeds a request what happens (an acknowledgement, an answer, a failure, the
//! time) and carries out the [`WriteAction`]s or [`ReadAction`]s it returns: send the write
//! to a replica (perhaps as a hint for another), ask a replica for its version, repair a
//! stale replica, answer the client. Which replicas to use comes from the ring (the key's
//! preference list, then the rest of the ring walk as fallbacks) and from the failure
//! detector (`healthy`); both are arguments.
//!
//! ```text
//!  write:  preferred p1 p2 p3 ──healthy?──▶ Write{p1} Write{p2}    p3 suspected:
//!                                           Write{f1, hint_for: p3}   (sloppy quorum)
//!          acks ─▶ W distinct acks ─▶ Reply(Ok)      a failure ─▶ next fallback, hinted
//!          no W acks by the deadline ─▶ Reply(Err(Timeout)): the write may or may not
//!          have been stored (an indefinite error)
//!          every target answered (or the deadline) ─▶ KeepHint{owner} for each owner
//!          that neither it nor a stand-in acknowledged: the coordinator keeps the write
//!          for it (Cassandra's coordinator-held hints)
//!  read:   Read{first N healthy nodes} ─▶ R answers ─▶ Reply(Ok(merge of the answers))
//!          every target answered (or the deadline) ─▶ Repair{stale replica, merge}
//!  lean:   Read{first R of them}; a failure ─▶ Read{next one}; no reply by the
//!          speculation time ─▶ Read{every other one} (Cassandra's speculative retry)
//! ```
//!
//! Values are state-based CRDTs ([`Crdt`]): a replica's answer is its state, the merge of
//! the answers is their join, so a read returns everything any of the R replicas saw and a
//! repair sends a state that can only advance the stale replica. A last-write-wins string
//! is an LWW register, an `INCR` counter a PN-counter, a delete a tombstone register.
//!
//! # Guarantees
//!
//! 1. **One reply.** Every request replies exactly once: success, failure or timeout,
//!    whichever comes first; later events change nothing a client sees.
//! 2. **Acknowledged means W replicas.** A write succeeds only after `W` distinct targets
//!    acknowledged it; targets are distinct nodes, so one node never counts twice. Hinted
//!    writes count (Dynamo's sloppy quorum): the write is durable on W nodes, though not
//!    all of them are its owners until the hints are handed over.
//! 3. **Every owner is covered.** Each preferred replica is written, either itself or,
//!    when suspected or failed, a fallback holding a hint for it; a hint always names a
//!    preferred replica.
//! 4. **A read returns at least R answers merged.** Its value is the join of the answers
//!    received when the R-th arrived (absent keys are `None`, the identity of the join).
//! 6. **No owner is forgotten.** When a write settles (every target acknowledged or
//!    failed, or the deadline passed, whichever comes first, after its reply or not), each
//!    preferred replica that neither acknowledged nor has an acknowledged stand-in is named
//!    in exactly one [`WriteAction::KeepHint`], and no other is; a settled write emits
//!    nothing more.
//! 5. **Repairs only advance.** A repair goes only to a replica that answered with less than
//!    the join of all answers received, and carries that join.
//! 7. **A lean read fails only when the full one would.** It asks R of the N targets
//!    first and each other one as soon as a target fails or the speculation time passes,
//!    so it answers `Unavailable` only once more than N − R of all its targets failed.

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

use crate::crdt::Crdt;
use crate::quorum::{AckTracker, Outcome};
use crate::NodeId;

/// Why a request failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CoordinatorError {
    /// Too many replicas failed for the quorum to be reached.
    #[error(
        "{kind} quorum unreachable: {acked} of {required} replicas answered and the others failed"
    )]
    Unavailable {
        /// `"write"` or `"read"`.
        kind: &'static str,
        /// Replicas that answered.
        acked: usize,
        /// Replicas needed.
        required: u32,
    },
    /// The deadline passed before the quorum was reached. For a write, an indefinite
    /// outcome: some replicas may have stored it.
    #[error("{kind} timed out: {acked} of {required} replicas answered")]
    Timeout {
        /// `"write"` or `"read"`.
        kind: &'static str,
        /// Replicas that answered.
        acked: usize,
        /// Replicas needed.
        required: u32,
    },
}

/// A successful write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    /// The replicas that acknowledged when the quorum was reached, in node order.
    pub acked: Vec<NodeId>,
    /// (fallback, owner) of every hinted write sent so far.
    pub hinted: Vec<(NodeId, NodeId)>,
}

/// What the runtime does for a write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteAction {
    /// Store the write on `to`; with `hint_for`, `to` keeps it as a hint and hands it to
    /// that owner when it is back.
    Write {
        /// The replica.
        to: NodeId,
        /// The preferred replica this write stands in for.
        hint_for: Option<NodeId>,
    },
    /// Answer the client.
    Reply(Result<Written, CoordinatorError>),
    /// The write settled without reaching `owner` or a stand-in for it: the coordinator
    /// keeps it as a hint and hands it over when `owner` is back.
    KeepHint {
        /// The preferred replica the write did not reach.
        owner: NodeId,
    },
}

/// One write of one key.
#[derive(Debug, Clone)]
pub struct WriteRequest {
    w: u32,
    preferred: Vec<NodeId>,
    /// Targets that acknowledged, before the reply or after.
    acked: BTreeSet<NodeId>,
    tracker: AckTracker,
    /// target → the preferred replica it stands in for (`None`: it is one). Failed targets
    /// stay, so that no node is used twice.
    targets: BTreeMap<NodeId, Option<NodeId>>,
    failed: BTreeSet<NodeId>,
    /// Healthy nodes not yet used, in ring order.
    fallbacks: VecDeque<NodeId>,
    deadline: Duration,
    replied: bool,
    settled: bool,
}

/// Pops the first fallback that is not a target yet.
fn next_fallback(
    fallbacks: &mut VecDeque<NodeId>,
    targets: &BTreeMap<NodeId, Option<NodeId>>,
) -> Option<NodeId> {
    while let Some(f) = fallbacks.pop_front() {
        if !targets.contains_key(&f) {
            return Some(f);
        }
    }
    None
}

impl WriteRequest {
    /// Starts a write that needs `w` acknowledgements: `preferred` is the key's preference
    /// list (N distinct nodes), `fallbacks` the rest of the ring walk; `healthy` says which
    /// nodes the failure detector trusts. Returns the request and its first actions.
    pub fn start(
        w: u32,
        preferred: &[NodeId],
        fallbacks: &[NodeId],
        healthy: impl Fn(NodeId) -> bool,
        now: Duration,
        timeout: Duration,
    ) -> (Self, Vec<WriteAction>) {
        let mut spare: VecDeque<NodeId> = fallbacks
            .iter()
            .copied()
            .filter(|f| healthy(*f) && !preferred.contains(f))
            .collect();
        let mut targets = BTreeMap::new();
        let mut actions = Vec::new();
        for &p in preferred {
            if targets.contains_key(&p) {
                continue;
            }
            let (to, hint_for) = match healthy(p) {
                true => (p, None),
                // A suspected owner with no fallback left is tried anyway: the detector
                // may be wrong.
                false => next_fallback(&mut spare, &targets).map_or((p, None), |f| (f, Some(p))),
            };
            targets.insert(to, hint_for);
            actions.push(WriteAction::Write { to, hint_for });
        }
        let mut req = WriteRequest {
            w,
            preferred: preferred.iter().fold(Vec::new(), |mut v, p| {
                if !v.contains(p) {
                    v.push(*p);
                }
                v
            }),
            acked: BTreeSet::new(),
            tracker: AckTracker::new(w, targets.keys().copied()),
            targets,
            failed: BTreeSet::new(),
            fallbacks: spare,
            deadline: now + timeout,
            replied: false,
            settled: false,
        };
        req.maybe_reply(&mut actions);
        req.maybe_settle(&mut actions);
        (req, actions)
    }

    /// Whether the client has its answer.
    pub fn is_done(&self) -> bool {
        self.replied
    }

    /// Whether every target has answered or the deadline passed: nothing more will come
    /// out of the request.
    pub fn is_settled(&self) -> bool {
        self.settled
    }

    /// `from` stored the write durably.
    pub fn on_ack(&mut self, from: NodeId) -> Vec<WriteAction> {
        let mut actions = Vec::new();
        if self.settled || !self.targets.contains_key(&from) || self.failed.contains(&from) {
            return actions;
        }
        self.acked.insert(from);
        self.tracker.ack(from);
        self.maybe_reply(&mut actions);
        self.maybe_settle(&mut actions);
        actions
    }

    /// `from` refused the write, could not be reached, or became suspected: its part goes
    /// to the next fallback, hinted for the owner it stood for.
    pub fn on_failure(&mut self, from: NodeId) -> Vec<WriteAction> {
        let mut actions = Vec::new();
        let Some(&stood_for) = self.targets.get(&from) else {
            return actions;
        };
        if self.settled || self.acked.contains(&from) || !self.failed.insert(from) {
            return actions;
        }
        if self.replied {
            // Too late to matter to the client; the owner it stood for may need a hint.
            self.maybe_settle(&mut actions);
            return actions;
        }
        match next_fallback(&mut self.fallbacks, &self.targets) {
            Some(f) => {
                let hint_for = stood_for.or(Some(from));
                self.targets.insert(f, hint_for);
                self.tracker.fail_over(from, f);
                actions.push(WriteAction::Write { to: f, hint_for });
            }
            None => {
                self.tracker.fail(from);
            }
        }
        self.maybe_reply(&mut actions);
        self.maybe_settle(&mut actions);
        actions
    }

    /// The time is `now`: past the deadline without a quorum, the write times out; past
    /// it at all, the write settles.
    pub fn on_tick(&mut self, now: Duration) -> Vec<WriteAction> {
        let mut actions = Vec::new();
        if now < self.deadline {
            return actions;
        }
        if !self.replied {
            self.replied = true;
            actions.push(WriteAction::Reply(Err(CoordinatorError::Timeout {
                kind: "write",
                acked: self.tracker.acked().count(),
                required: self.w,
            })));
        }
        self.settle(&mut actions);
        actions
    }

    fn maybe_settle(&mut self, actions: &mut Vec<WriteAction>) {
        let answered = |t: &NodeId| self.acked.contains(t) || self.failed.contains(t);
        if self.targets.keys().all(answered) {
            self.settle(actions);
        }
    }

    /// Names every owner not covered by an acknowledgement (guarantee 6).
    fn settle(&mut self, actions: &mut Vec<WriteAction>) {
        if self.settled {
            return;
        }
        self.settled = true;
        for &owner in &self.preferred {
            let covered = self
                .acked
                .iter()
                .any(|a| *a == owner || self.targets.get(a) == Some(&Some(owner)));
            if !covered {
                actions.push(WriteAction::KeepHint { owner });
            }
        }
    }

    /// The deadline given at the start.
    pub fn deadline(&self) -> Duration {
        self.deadline
    }

    fn maybe_reply(&mut self, actions: &mut Vec<WriteAction>) {
        if self.replied {
            return;
        }
        let reply = match self.tracker.outcome() {
            Outcome::Pending => return,
            Outcome::Succeeded => Ok(Written {
                acked: self.tracker.acked().collect(),
                hinted: self
                    .targets
                    .iter()
                    .filter(|(t, _)| !self.failed.contains(t))
                    .filter_map(|(t, h)| h.map(|owner| (*t, owner)))
                    .collect(),
            }),
            Outcome::Failed => Err(CoordinatorError::Unavailable {
                kind: "write",
                acked: self.tracker.acked().count(),
                required: self.w,
            }),
        };
        self.replied = true;
        actions.push(WriteAction::Reply(reply));
    }
}

/// What the runtime does for a read.
#[derive(Debug, Clone, PartialEq)]
pub enum ReadAction<V> {
    /// Ask `from` for its state of the key.
    Read {
        /// The replica.
        from: NodeId,
    },
    /// Send `value` to `to`, which answered with less.
    Repair {
        /// The stale replica.
        to: NodeId,
        /// The join of every answer received.
        value: V,
    },
    /// Answer the client: the join of at least R answers (`None`: no replica has the key).
    Reply(Result<Option<V>, CoordinatorError>),
}

/// One read of one key.
#[derive(Debug, Clone)]
pub struct ReadRequest<V> {
    r: u32,
    /// The nodes asked so far.
    targets: BTreeSet<NodeId>,
    /// The nodes to ask when a target fails or the speculation time passes, in order.
    spares: VecDeque<NodeId>,
    /// When every spare is asked if the read has no reply yet.
    speculate_at: Option<Duration>,
    /// Answers so far, by replica. Invariant: keys are targets, none of them failed.
    answers: BTreeMap<NodeId, Option<V>>,
    /// The join of `answers`.
    merged: Option<V>,
    /// Targets that could not answer. Invariant: disjoint from `answers`.
    failed: BTreeSet<NodeId>,
    deadline: Duration,
    replied: bool,
    repaired: bool,
}

fn join<V: Crdt + Clone>(a: &Option<V>, b: &Option<V>) -> Option<V> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.merged(b)),
        (Some(v), None) | (None, Some(v)) => Some(v.clone()),
        (None, None) => None,
    }
}

impl<V: Crdt + Clone + PartialEq> ReadRequest<V> {
    /// Starts a read that needs `r` answers from the first `preferred.len()` healthy nodes
    /// of `preferred` then `fallbacks` (suspected preferred replicas are asked too when
    /// fewer than `r` healthy nodes exist). Returns the request and its first actions.
    pub fn start(
        r: u32,
        preferred: &[NodeId],
        fallbacks: &[NodeId],
        healthy: impl Fn(NodeId) -> bool,
        now: Duration,
        timeout: Duration,
    ) -> (Self, Vec<ReadAction<V>>) {
        Self::begin(r, preferred, fallbacks, healthy, now, timeout, None)
    }

    /// [`ReadRequest::start`] asking only the first R of its targets: each of the others
    /// is asked when a target fails, and all of them once `speculate_after` has passed
    /// without a reply (guarantee 7). Half the messages of a full read when every replica
    /// answers; read repair then covers the replicas asked.
    pub fn start_lean(
        r: u32,
        preferred: &[NodeId],
        fallbacks: &[NodeId],
        healthy: impl Fn(NodeId) -> bool,
        now: Duration,
        timeout: Duration,
        speculate_after: Duration,
    ) -> (Self, Vec<ReadAction<V>>) {
        let at = now + speculate_after.min(timeout);
        Self::begin(r, preferred, fallbacks, healthy, now, timeout, Some(at))
    }

    fn begin(
        r: u32,
        preferred: &[NodeId],
        fallbacks: &[NodeId],
        healthy: impl Fn(NodeId) -> bool,
        now: Duration,
        timeout: Duration,
        speculate_at: Option<Duration>,
    ) -> (Self, Vec<ReadAction<V>>) {
        let n = preferred.len();
        let mut targets: Vec<NodeId> = Vec::with_capacity(n);
        for &node in preferred.iter().chain(fallbacks) {
            if targets.len() < n && healthy(node) && !targets.contains(&node) {
                targets.push(node);
            }
        }
        for &p in preferred {
            if targets.len() < r as usize && !targets.contains(&p) {
                targets.push(p);
            }
        }
        let spares: VecDeque<NodeId> = match speculate_at {
            Some(_) => targets.split_off((r as usize).min(targets.len())).into(),
            None => VecDeque::new(),
        };
        let mut req = ReadRequest {
            r,
            targets: targets.iter().copied().collect(),
            spares,
            speculate_at,
            answers: BTreeMap::new(),
            merged: None,
            failed: BTreeSet::new(),
            deadline: now + timeout,
            replied: false,
            repaired: false,
        };
        let mut actions: Vec<ReadAction<V>> = targets
            .iter()
            .map(|&from| ReadAction::Read { from })
            .collect();
        req.maybe_reply(&mut actions);
        req.maybe_repair(&mut actions);
        (req, actions)
    }

    /// Whether the client has its answer and every repair has been sent.
    pub fn is_done(&self) -> bool {
        self.replied && self.repaired
    }

    /// Whether `from` is a target that has neither answered nor failed.
    fn waiting_for(&self, from: NodeId) -> bool {
        self.targets.contains(&from)
            && !self.answers.contains_key(&from)
            && !self.failed.contains(&from)
    }

    /// `from` answered with its state of the key (`None`: it has none).
    pub fn on_answer(&mut self, from: NodeId, value: Option<V>) -> Vec<ReadAction<V>> {
        let mut actions = Vec::new();
        if self.repaired || !self.waiting_for(from) {
            return actions;
        }
        self.merged = join(&self.merged, &value);
        self.answers.insert(from, value);
        self.maybe_reply(&mut actions);
        self.maybe_repair(&mut actions);
        actions
    }

    /// `from` could not answer.
    pub fn on_failure(&mut self, from: NodeId) -> Vec<ReadAction<V>> {
        let mut actions = Vec::new();
        if self.repaired || !self.waiting_for(from) {
            return actions;
        }
        self.failed.insert(from);
        // A spare stands in for each target short of R answers.
        while !self.replied
            && self.targets.len() - self.failed.len() < self.r as usize
            && self.ask_spare(&mut actions)
        {}
        self.maybe_reply(&mut actions);
        self.maybe_repair(&mut actions);
        actions
    }

    /// Asks the next spare; false when there is none.
    fn ask_spare(&mut self, actions: &mut Vec<ReadAction<V>>) -> bool {
        match self.spares.pop_front() {
            Some(node) => {
                self.targets.insert(node);
                actions.push(ReadAction::Read { from: node });
                true
            }
            None => false,
        }
    }

    /// When the runtime must call [`ReadRequest::on_tick`] next: the speculation time
    /// while it matters, else the deadline.
    pub fn next_tick(&self) -> Duration {
        match self.speculate_at {
            Some(at) if !self.replied && !self.spares.is_empty() => at.min(self.deadline),
            _ => self.deadline,
        }
    }

    /// The time is `now`: past the deadline, a read without R answers times out, and the
    /// replicas that answered are repaired from what arrived.
    pub fn on_tick(&mut self, now: Duration) -> Vec<ReadAction<V>> {
        let mut actions = Vec::new();
        if !self.replied && self.speculate_at.is_some_and(|at| now >= at) {
            self.speculate_at = None;
            while self.ask_spare(&mut actions) {}
        }
        if now < self.deadline {
            return actions;
        }
        if !self.replied {
            self.replied = true;
            actions.push(ReadAction::Reply(Err(CoordinatorError::Timeout {
                kind: "read",
                acked: self.answers.len(),
                required: self.r,
            })));
        }
        self.repair(&mut actions);
        actions
    }

    fn maybe_reply(&mut self, actions: &mut Vec<ReadAction<V>>) {
        if self.replied {
            return;
        }
        let r = self.r as usize;
        let reply = if self.answers.len() >= r {
            Ok(self.merged.clone())
        } else if self.targets.len() - self.failed.len() + self.spares.len() < r {
            Err(CoordinatorError::Unavailable {
                kind: "read",
                acked: self.answers.len(),
                required: self.r,
            })
        } else {
            return;
        };
        self.replied = true;
        actions.push(ReadAction::Reply(reply));
    }

    /// Once every target answered or failed.
    fn maybe_repair(&mut self, actions: &mut Vec<ReadAction<V>>) {
        if self.answers.len() + self.failed.len() >= self.targets.len() {
            self.repair(actions);
        }
    }

    fn repair(&mut self, actions: &mut Vec<ReadAction<V>>) {
        if self.repaired {
            return;
        }
        self.repaired = true;
        let Some(merged) = &self.merged else { return };
        for (node, answer) in &self.answers {
            if answer.as_ref() != Some(merged) {
                actions.push(ReadAction::Repair {
                    to: *node,
                    value: merged.clone(),
                });
            }
        }
    }
}
