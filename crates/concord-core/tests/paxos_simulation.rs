//! Paxos compare-and-set in simulation: three coordinators run reads, writes and
//! compare-and-sets of one key against 3 or 5 acceptors over a network that reorders,
//! drops and duplicates messages, with coordinators that crash mid-request, competing
//! ballots with equal times, and timeouts. Every history is checked for linearizability by
//! `concord-check`'s register checker; a negative control (acceptors that forget their
//! promises: they do not keep them, and now and then restart having persisted nothing) must
//! be caught.

use concord_check::history::{Event, EventType};
use concord_check::{check, CheckOptions, Validity, Workload};
use concord_core::crdt::Crdt;
use concord_core::paxos::{Acceptor, Ballot, CasAction, CasRequest, Reply};
use concord_core::NodeId;
use serde_json::{json, Value};

/// The key's value: last writer wins by the ballot that wrote it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Reg(Ballot, i64);

impl Crdt for Reg {
    type Value = i64;
    fn merge(&mut self, other: &Self) {
        if other.0 > self.0 {
            *self = other.clone();
        }
    }
    fn value(&self) -> i64 {
        self.1
    }
}

/// xorshift64*: deterministic per seed, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

#[derive(Clone)]
enum Msg {
    Prepare(Ballot),
    Propose(Ballot, Reg),
    Commit(Ballot, Reg),
}

/// A message in flight: to a replica, or a replica's reply to a coordinator.
#[derive(Clone)]
enum Packet {
    Request {
        to: usize,
        from: usize,
        msg: Msg,
    },
    Reply {
        to: usize,
        from: usize,
        ballot: Ballot,
        reply: Reply<Reg>,
    },
}

struct Replica {
    acceptor: Acceptor<Reg>,
    data: Option<Reg>,
}

#[derive(Clone, Copy)]
enum OpKind {
    Read,
    Write(i64),
    Cas(i64, i64),
}

impl OpKind {
    fn invocation(self) -> (&'static str, Value) {
        match self {
            OpKind::Read => ("read", Value::Null),
            OpKind::Write(v) => ("write", json!(v)),
            OpKind::Cas(e, n) => ("cas", json!([e, n])),
        }
    }
}

struct Coordinator {
    process: u64,
    clock: u64,
    /// The request in progress and what it is.
    op: Option<(OpKind, CasRequest<Reg>)>,
}

struct Sim {
    rng: Rng,
    replicas: Vec<Replica>,
    coordinators: Vec<Coordinator>,
    net: Vec<Packet>,
    events: Vec<Event>,
    next_process: u64,
    forget_promises: bool,
}

fn node(i: usize) -> NodeId {
    NodeId(i as u64 + 1)
}

impl Sim {
    fn record(&mut self, process: u64, kind: EventType, f: &str, value: Value) {
        let i = self.events.len() as u64;
        self.events.push(Event::new(i, process, kind, f, value));
    }

    fn ballot(&mut self, c: usize, above: Option<Ballot>) -> Ballot {
        // Each coordinator's ballots rise (as an HLC's readings do); clocks start together
        // and move slowly, so coordinators often share a time and the node breaks the tie.
        let co = &mut self.coordinators[c];
        co.clock += 1 + self.rng.below(2);
        let mut time = co.clock;
        if let Some(a) = above {
            time = time.max(a.time + 1);
        }
        co.clock = time;
        Ballot {
            time,
            node: NodeId(100 + c as u64),
        }
    }

    fn start(&mut self, c: usize) {
        let kind = match self.rng.below(3) {
            0 => OpKind::Read,
            // Few values, so that compare-and-sets often expect what is there and race.
            1 => OpKind::Write(self.rng.below(3) as i64),
            _ => OpKind::Cas(self.rng.below(3) as i64, self.rng.below(3) as i64),
        };
        let (f, v) = kind.invocation();
        let p = self.coordinators[c].process;
        self.record(p, EventType::Invoke, f, v);
        let ballot = self.ballot(c, None);
        let n = self.replicas.len();
        let (req, first) = CasRequest::new((0..n).map(node).collect(), n / 2 + 1, ballot);
        self.coordinators[c].op = Some((kind, req));
        self.act(c, vec![first]);
    }

    /// Records the end of `c`'s request: `seen` is a read's value.
    fn finish(&mut self, c: usize, kind: EventType, seen: Option<Value>) {
        let co = &mut self.coordinators[c];
        let Some((op, _)) = co.op.take() else {
            return;
        };
        let process = co.process;
        let (f, invoked) = op.invocation();
        self.record(process, kind, f, seen.unwrap_or(invoked));
        if kind == EventType::Info {
            // A process with an indefinite operation never issues another.
            self.coordinators[c].process = self.next_process;
            self.next_process += 1;
        }
    }

    fn act(&mut self, c: usize, actions: Vec<CasAction<Reg>>) {
        for a in actions {
            match a {
                CasAction::Prepare { to, ballot } => {
                    for r in to {
                        self.send(r, c, Msg::Prepare(ballot));
                    }
                }
                CasAction::Propose { to, ballot, value } => {
                    for r in to {
                        self.send(r, c, Msg::Propose(ballot, value.clone()));
                    }
                }
                CasAction::Commit { to, ballot, value } => {
                    for r in to {
                        self.send(r, c, Msg::Commit(ballot, value.clone()));
                    }
                }
                CasAction::Decide { current } => {
                    let Some((kind, req)) = self.coordinators[c].op.as_mut() else {
                        return;
                    };
                    let ballot = req.ballot();
                    let now = current.as_ref().map(|r| r.1);
                    // The new value supersedes what was read (its ballot is higher).
                    let write = |v: i64| {
                        let mut next = current.clone().unwrap_or(Reg(ballot, v));
                        next.merge(&Reg(ballot, v));
                        next
                    };
                    let (decision, read) = match *kind {
                        OpKind::Read => (None, Some(now)),
                        OpKind::Write(v) => (Some(write(v)), None),
                        OpKind::Cas(e, n) if now == Some(e) => (Some(write(n)), None),
                        OpKind::Cas(..) => (None, None),
                    };
                    let next = req.decide(decision);
                    if let (Some(seen), CasAction::Done { .. }) = (read, &next) {
                        let seen = seen.map_or(Value::Null, |v| json!(v));
                        self.finish(c, EventType::Ok, Some(seen));
                        continue;
                    }
                    self.act(c, vec![next]);
                }
                CasAction::Retry { above } => {
                    let ballot = self.ballot(c, Some(above));
                    if let Some((_, req)) = self.coordinators[c].op.as_mut() {
                        let next = req.retry(ballot);
                        self.act(c, vec![next]);
                    }
                }
                CasAction::Unavailable => self.finish(c, EventType::Info, None),
                CasAction::Done { written } => {
                    let kind = if written {
                        EventType::Ok
                    } else {
                        EventType::Fail
                    };
                    self.finish(c, kind, None);
                }
            }
        }
    }

    fn send(&mut self, to: NodeId, from: usize, msg: Msg) {
        let to = to.0 as usize - 1;
        self.net.push(Packet::Request { to, from, msg });
    }

    fn deliver(&mut self, packet: Packet) {
        match packet {
            Packet::Request { to, from, msg } => {
                let rep = &mut self.replicas[to];
                let (ballot, reply) = match msg {
                    Msg::Prepare(b) => {
                        let before = rep.acceptor.clone();
                        let reply = match rep.acceptor.prepare(b) {
                            Ok((in_progress, committed)) => Reply::Promise {
                                in_progress,
                                committed,
                                value: rep.data.clone(),
                            },
                            Err(promised) => Reply::Reject { promised },
                        };
                        if self.forget_promises {
                            rep.acceptor = before;
                        }
                        (b, reply)
                    }
                    Msg::Propose(b, v) => match rep.acceptor.propose(b, v) {
                        Ok(()) => (b, Reply::Accepted),
                        Err(promised) => (b, Reply::Reject { promised }),
                    },
                    Msg::Commit(b, v) => {
                        rep.acceptor.commit(b);
                        match &mut rep.data {
                            Some(d) => d.merge(&v),
                            None => rep.data = Some(v),
                        }
                        (b, Reply::Committed)
                    }
                };
                if self.forget_promises && self.rng.chance(50) {
                    // Nothing was persisted: after a restart it has forgotten what it
                    // promised and accepted (its data, written by commits, survives).
                    self.replicas[to].acceptor = Acceptor::new();
                }
                self.net.push(Packet::Reply {
                    to: from,
                    from: to,
                    ballot,
                    reply,
                });
            }
            Packet::Reply {
                to,
                from,
                ballot,
                reply,
            } => {
                let Some((_, req)) = self.coordinators[to].op.as_mut() else {
                    return;
                };
                if req.ballot() != ballot {
                    return;
                }
                let acts = req.on_reply(node(from), reply);
                self.act(to, acts);
            }
        }
    }

    fn step(&mut self) {
        let roll = self.rng.below(100);
        if roll < 70 && !self.net.is_empty() {
            let i = self.rng.below(self.net.len() as u64) as usize;
            if self.rng.chance(8) {
                // Dropped.
                self.net.swap_remove(i);
                return;
            }
            let packet = self.net.swap_remove(i);
            if self.rng.chance(8) {
                // Duplicated: delivered now and again later.
                self.net.push(packet.clone());
            }
            self.deliver(packet);
            return;
        }
        let c = self.rng.below(self.coordinators.len() as u64) as usize;
        if self.coordinators[c].op.is_none() {
            self.start(c);
        } else if roll < 80 {
            // A timeout: a replica that has not answered counts as failed.
            let r = node(self.rng.below(self.replicas.len() as u64) as usize);
            if let Some((_, req)) = self.coordinators[c].op.as_mut() {
                let acts = req.on_failure(r);
                self.act(c, acts);
            }
        } else if roll < 82 {
            // The coordinator crashes: its request stays pending forever.
            let co = &mut self.coordinators[c];
            co.op = None;
            co.process = self.next_process;
            self.next_process += 1;
        }
    }
}

fn run(seed: u64, forget_promises: bool) -> (Validity, usize) {
    let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let n = if rng.chance(50) { 3 } else { 5 };
    let mut sim = Sim {
        rng,
        replicas: (0..n)
            .map(|_| Replica {
                acceptor: Acceptor::new(),
                data: None,
            })
            .collect(),
        coordinators: (0..3)
            .map(|p| Coordinator {
                process: p,
                clock: 0,
                op: None,
            })
            .collect(),
        net: Vec::new(),
        events: Vec::new(),
        next_process: 3,
        forget_promises,
    };
    // Short histories: requests left indefinite can be linearized anywhere after their
    // call, which the checker pays for in states; 1,200 steps keep each check small.
    for _ in 0..1_200 {
        sim.step();
    }
    let completed = sim
        .events
        .iter()
        .filter(|e| e.kind == EventType::Ok)
        .count();
    let verdict = check(Workload::Register, &sim.events, &CheckOptions::default())
        .expect("a well-formed history");
    (verdict.valid, completed)
}

#[test]
fn compare_and_set_histories_are_linearizable_over_many_seeds() {
    let mut completed = 0;
    for seed in 0..1_000 {
        let (valid, ok) = run(seed, false);
        assert_eq!(valid, Validity::Valid, "seed {seed}");
        completed += ok;
    }
    // The runs do work: most requests complete despite drops, crashes and contention.
    assert!(
        completed > 1_000 * 5,
        "only {completed} operations completed"
    );
    println!("{completed} operations completed over 1,000 seeds");
}

#[test]
fn acceptors_that_forget_their_promises_are_caught() {
    let invalid = (0..1_000)
        .filter(|seed| run(*seed, true).0 == Validity::Invalid)
        .count();
    assert!(invalid > 0, "no seed of 1,000 found the broken acceptors");
    println!("{invalid} of 1,000 seeds caught the broken acceptors");
}
