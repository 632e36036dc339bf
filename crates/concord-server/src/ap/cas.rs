//! Compare-and-set over a key's replicas: concord-core's sans-I/O Paxos
//! ([`concord_core::paxos`]) driven over the replica service's `Paxos` call.
//!
//! ```text
//! cas(key, decide): replicas = the key's N preferred members (not fallbacks: Paxos needs
//!                   the owners), quorum = a majority of them
//!   Prepare(b) to all ─▶ majority of promises ─▶ decide(join of their states)
//!     ─▶ nothing to write: done (a linearizable read)
//!     ─▶ Propose(b, new state) ─▶ majority ─▶ Commit(b, new state) ─▶ majority ─▶ done
//!   a higher ballot seen ─▶ back off 1–20 ms at random, start over above it
//! ```
//!
//! Each replica keeps the key's acceptor state in its store (`ap_paxos`) and makes every
//! promise, acceptance and commit durable before it answers; a commit merges the new
//! state into the key like any other write, so plain reads see it. A request that cannot
//! finish by the deadline answers `Unavailable`: its write may or may not happen.

use std::time::Duration;

use concord_core::clock::Timestamp;
use concord_core::crdt::{Crdt, RedisValue, Stamp};
use concord_core::paxos::{Acceptor, Ballot, CasAction, CasRequest, Reply};
use concord_proto::peer::{PaxosBallot, ReplicaPaxos, ReplicaPaxosReply};
use concord_raft::NodeId;
use concord_storage::ap::{state_from_bytes, state_to_bytes};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tonic::Status;

use super::{stopped, Access, ApError, ApNode};

/// One Paxos step for a key's acceptor.
#[derive(Debug, Clone)]
pub enum PaxosStep {
    /// Phase 1.
    Prepare(Ballot),
    /// Phase 2.
    Propose(Ballot, RedisValue),
    /// The commit: the value is merged into the key.
    Commit(Ballot, RedisValue),
}

/// What a compare-and-set decides on the key's current state: the state to write (the
/// current one with the change applied, so that it supersedes it) or none, and the answer
/// for the client.
pub struct Decision<T> {
    /// The new state, or `None` to write nothing.
    pub write: Option<RedisValue>,
    /// What the client is told (when the write, if any, happens).
    pub answer: T,
}

fn ballot_to_wire(b: Ballot) -> PaxosBallot {
    PaxosBallot {
        time: b.time,
        node: b.node.0,
    }
}

fn ballot_from_wire(b: Option<PaxosBallot>) -> Option<Ballot> {
    b.map(|b| Ballot {
        time: b.time,
        node: NodeId(b.node),
    })
}

fn state_or_none(bytes: &[u8]) -> Result<Option<RedisValue>, String> {
    if bytes.is_empty() {
        Ok(None)
    } else {
        state_from_bytes(bytes).map(Some)
    }
}

/// A replica's answer as it travels.
pub(crate) fn reply_to_wire(reply: &Reply<RedisValue>) -> ReplicaPaxosReply {
    let mut out = ReplicaPaxosReply::default();
    match reply {
        Reply::Promise {
            in_progress,
            committed,
            value,
        } => {
            out.kind = 1;
            if let Some((b, v)) = in_progress {
                out.in_progress_ballot = Some(ballot_to_wire(*b));
                out.in_progress_value = state_to_bytes(v).into();
            }
            out.committed = committed.map(ballot_to_wire);
            out.value = value
                .as_ref()
                .map(state_to_bytes)
                .unwrap_or_default()
                .into();
        }
        Reply::Accepted => out.kind = 2,
        Reply::Committed => out.kind = 3,
        Reply::Reject { promised } => {
            out.kind = 4;
            out.promised = Some(ballot_to_wire(*promised));
        }
    }
    out
}

fn reply_from_wire(r: ReplicaPaxosReply) -> Result<Reply<RedisValue>, String> {
    Ok(match r.kind {
        1 => Reply::Promise {
            in_progress: match ballot_from_wire(r.in_progress_ballot) {
                Some(b) => Some((
                    b,
                    state_from_bytes(&r.in_progress_value)
                        .map_err(|e| format!("in-progress value: {e}"))?,
                )),
                None => None,
            },
            committed: ballot_from_wire(r.committed),
            value: state_or_none(&r.value)?,
        },
        2 => Reply::Accepted,
        3 => Reply::Committed,
        4 => Reply::Reject {
            promised: ballot_from_wire(r.promised).ok_or("a refusal without its ballot")?,
        },
        other => return Err(format!("unknown paxos answer kind {other}")),
    })
}

/// The step a request carries, checked.
pub(crate) fn step_from_wire(r: &ReplicaPaxos) -> Result<PaxosStep, Status> {
    let ballot = ballot_from_wire(r.ballot)
        .ok_or_else(|| Status::invalid_argument("paxos step without a ballot"))?;
    let value = || {
        state_from_bytes(&r.value)
            .map_err(|e| Status::invalid_argument(format!("paxos value: {e}")))
    };
    Ok(match r.phase {
        1 => PaxosStep::Prepare(ballot),
        2 => PaxosStep::Propose(ballot, value()?),
        3 => PaxosStep::Commit(ballot, value()?),
        other => {
            return Err(Status::invalid_argument(format!(
                "unknown paxos phase {other}"
            )))
        }
    })
}

/// The acceptor's transition for `step`, with the key's data beside it.
fn accept(
    step: PaxosStep,
    acceptor: &mut Acceptor<RedisValue>,
    data: &mut RedisValue,
) -> Reply<RedisValue> {
    match step {
        PaxosStep::Prepare(b) => match acceptor.prepare(b) {
            Ok((in_progress, committed)) => Reply::Promise {
                in_progress,
                committed,
                value: (*data != RedisValue::new()).then(|| data.clone()),
            },
            Err(promised) => Reply::Reject { promised },
        },
        PaxosStep::Propose(b, v) => match acceptor.propose(b, v) {
            Ok(()) => Reply::Accepted,
            Err(promised) => Reply::Reject { promised },
        },
        PaxosStep::Commit(b, v) => {
            acceptor.commit(b);
            data.merge(&v);
            Reply::Committed
        }
    }
}

impl ApNode {
    /// Carries out `step` on this replica's acceptor of `key`, durably.
    pub async fn paxos_local(
        &self,
        bucket: u8,
        key: &[u8],
        step: PaxosStep,
    ) -> Result<Reply<RedisValue>, ApError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.inner.store.paxos_then(
            bucket,
            key,
            move |acceptor, data| accept(step, acceptor, data),
            move |out| {
                let _ = tx.send(out);
            },
        );
        let (reply, _) = rx.await.map_err(|_| stopped())??;
        Ok(reply)
    }

    async fn paxos_at(
        &self,
        at: NodeId,
        bucket: u8,
        key: Vec<u8>,
        step: PaxosStep,
    ) -> Result<Reply<RedisValue>, ApError> {
        if at == self.me() {
            return self.paxos_local(bucket, &key, step).await;
        }
        let mut client = self
            .client(at)
            .ok_or_else(|| ApError::Unavailable(format!("member {at} is unknown")))?;
        let (phase, ballot, value) = match &step {
            PaxosStep::Prepare(b) => (1, *b, Vec::new()),
            PaxosStep::Propose(b, v) => (2, *b, state_to_bytes(v)),
            PaxosStep::Commit(b, v) => (3, *b, state_to_bytes(v)),
        };
        let request = ReplicaPaxos {
            cluster_id: self.inner.cluster_id,
            bucket: u32::from(bucket),
            key: key.into(),
            phase,
            ballot: Some(ballot_to_wire(ballot)),
            value: value.into(),
        };
        let reply = client
            .paxos(request)
            .await
            .map_err(|e| ApError::Unavailable(format!("member {at}: {}", e.message())))?;
        reply_from_wire(reply.into_inner())
            .map_err(|e| ApError::Unavailable(format!("member {at} answered {e}")))
    }

    /// A ballot of this member above `above`: the HLC's next reading, after observing it.
    fn next_ballot(&self, above: Option<Ballot>) -> Ballot {
        if let Some(a) = above {
            let _ = self.inner.clock.observe(Timestamp::unpack(a.time));
        }
        let mut time = self.inner.clock.now().pack();
        if let Some(a) = above {
            time = time.max(a.time.saturating_add(1));
        }
        Ballot {
            time,
            node: self.me(),
        }
    }

    /// A compare-and-set of `key` through Paxos among its N preferred replicas: `decide`
    /// gets the key's current state (the join of a majority's, every earlier
    /// compare-and-set in it), a stamp newer than it and this replica's actor id, and says
    /// what to write and answer; it may be called again after contention. Returns the
    /// answer and whether the write happened (`false`: `decide` wrote nothing).
    pub async fn cas<T>(
        &self,
        access: Access,
        key: &[u8],
        mut decide: impl FnMut(Option<&RedisValue>, Stamp, NodeId) -> Decision<T>,
    ) -> Result<(T, bool), ApError> {
        self.ring_ready()?;
        let bucket = access.bucket;
        let deadline = Instant::now() + self.config().timeout;
        let (replicas, _) = self.placement(bucket, key);
        if replicas.is_empty() {
            return Err(ApError::Unavailable("the key has no replicas".into()));
        }
        let quorum = replicas.len() / 2 + 1;
        let actor = NodeId(self.inner.store.actor());
        // In a session, what it has seen of the key is decided on too (a plain write of
        // the session that no majority holds yet).
        let base = match self.session_floor(access, key) {
            Some(floor) => self.read_covering(access, key, &floor, None).await?,
            None => None,
        };
        let mut seen = None;
        let (mut request, first) = CasRequest::new(replicas, quorum, self.next_ballot(None));
        let (tx, mut rx) = mpsc::unbounded_channel::<(Ballot, NodeId, Result<_, ApError>)>();
        let mut pending = vec![first];
        let mut answer = None;
        loop {
            for action in std::mem::take(&mut pending) {
                let (to, step) = match action {
                    CasAction::Prepare { to, ballot } => (to, PaxosStep::Prepare(ballot)),
                    CasAction::Propose { to, ballot, value } => {
                        (to, PaxosStep::Propose(ballot, value))
                    }
                    CasAction::Commit { to, ballot, value } => {
                        (to, PaxosStep::Commit(ballot, value))
                    }
                    CasAction::Decide { mut current } => {
                        if let Some(base) = &base {
                            current.get_or_insert_with(RedisValue::new).merge(base);
                        }
                        let latest = current.as_ref().map_or(0, |c| c.last_write());
                        let time = request.ballot().time.max(latest.saturating_add(1));
                        let d = decide(current.as_ref(), (time, actor), actor);
                        if access.session.is_some() {
                            seen = d.write.as_ref().or(current.as_ref()).cloned();
                        }
                        answer = Some(d.answer);
                        pending.push(request.decide(d.write));
                        continue;
                    }
                    CasAction::Retry { above } => {
                        let pause = 1 + (self.now_ms() ^ above.time) % 20;
                        tokio::time::sleep(Duration::from_millis(pause)).await;
                        if Instant::now() >= deadline {
                            return Err(ApError::Unavailable(
                                "compare-and-set timed out under contention; it may or may \
                                 not have been applied"
                                    .into(),
                            ));
                        }
                        let ballot = self.next_ballot(Some(above));
                        pending.push(request.retry(ballot));
                        continue;
                    }
                    CasAction::Unavailable => {
                        return Err(ApError::Unavailable(format!(
                            "compare-and-set could not reach a majority of the key's \
                             replicas ({quorum} of the owners); it may or may not have been \
                             applied"
                        )))
                    }
                    CasAction::Done { written } => {
                        self.session_saw(access, key, seen.as_ref());
                        return answer.map(|a| (a, written)).ok_or_else(|| {
                            ApError::Unavailable("compare-and-set ended undecided".into())
                        });
                    }
                };
                let ballot = request.ballot();
                for at in to {
                    let (node, tx, step) = (self.clone(), tx.clone(), step.clone());
                    let key = key.to_vec();
                    tokio::spawn(async move {
                        let out = node.paxos_at(at, bucket, key, step).await;
                        let _ = tx.send((ballot, at, out));
                    });
                }
            }
            if !pending.is_empty() {
                continue;
            }
            let next = tokio::time::timeout_at(deadline, rx.recv()).await;
            match next {
                Ok(Some((ballot, from, out))) if ballot == request.ballot() => {
                    pending = match out {
                        Ok(reply) => request.on_reply(from, reply),
                        Err(_) => request.on_failure(from),
                    };
                }
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => {
                    return Err(ApError::Unavailable(
                        "compare-and-set timed out; it may or may not have been applied".into(),
                    ))
                }
            }
        }
    }
}
