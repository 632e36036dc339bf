//! Linearizability of per-key registers: the Wing–Gong search with Lowe's improvements, as
//! Knossos' `linear` and Porcupine do it.
//!
//! # Model
//!
//! Each key is an independent register holding `Option<i64>` (`None`: absent), initially
//! `None`. `read` must return the state; `write v` sets it; `cas [e, n]` succeeds iff the state
//! equals `e` (`null` means absent) and then sets `n`.
//!
//! # Algorithm
//!
//! Linearizability is compositional (Herlihy & Wing's locality, "P-compositionality" in
//! Porcupine), so every key is checked on its own. For one key, the operations become a list
//! of call and return entries in history order. The search walks the list:
//!
//! * at a call entry it tries to linearize that operation now: if the model accepts it and the
//!   pair (set of linearized operations, resulting state) was never seen before, the call and
//!   its return are lifted out of the list and pushed on the undo stack; else it moves on;
//! * at a return entry, the operation returning there should have been linearized before this
//!   point and was not: the search pops the undo stack (Lowe's undo), restores the state and
//!   the two entries, and tries the next call after the popped one;
//! * an empty undo stack at a return entry means no linearization exists.
//!
//! The cache of (bitset, state) pairs is what keeps this from being exponential on typical
//! histories: two orders that linearize the same set of operations into the same state are
//! interchangeable.
//!
//! * `fail` operations are dropped; `info` reads are dropped (they constrain nothing).
//! * `info` writes and cas (and invocations that never complete) return at +∞: they can be
//!   linearized anywhere after their invocation, and since their return entries sit after all
//!   finite ones, the search succeeds once only such entries remain, which leaves any of them
//!   un-linearized, i.e. never applied.
//!
//! # Guarantees and limits
//!
//! * `valid: true` only when a linearization of every key was found.
//! * When the wall-clock budget or the state budget ([`CheckOptions`]) runs out, the verdict is
//!   `unknown`, unless another key was already proven non-linearizable.
//! * On failure the anomaly names the key, the longest linearizable prefix the search reached
//!   (its length, its last operations, and the register state it leaves), and the operation
//!   that could not be linearized after it; the counterexample holds the events of the
//!   operations around that point.
//! * The search is exponential in the worst case (the problem is NP-complete); many
//!   concurrent `info` operations widen it most, since each stays open to the end.

use std::collections::{BTreeMap, HashSet};
use std::time::Instant;

use serde_json::Value;

use crate::history::{pair_ops, Event, Op, Outcome};
use crate::{Anomaly, CheckError, CheckOptions, Validity, Verdict};

/// Register state: the value, or `None` when the key is absent.
pub type State = Option<i64>;

/// A register operation with its observed result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegOp {
    /// A read that returned this state.
    Read(State),
    /// A write of this value.
    Write(i64),
    /// A compare-and-set that succeeded: expected, new.
    Cas(State, i64),
}

impl RegOp {
    /// The model: the state after applying `self` to `state`, or `None` if `self` cannot
    /// happen in `state`.
    pub fn step(self, state: State) -> Option<State> {
        match self {
            RegOp::Read(v) => (v == state).then_some(state),
            RegOp::Write(v) => Some(Some(v)),
            RegOp::Cas(expected, new) => (expected == state).then_some(Some(new)),
        }
    }
}

impl std::fmt::Display for RegOp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        fn s(v: State) -> String {
            v.map_or_else(|| "nil".to_string(), |v| v.to_string())
        }
        match self {
            RegOp::Read(v) => write!(f, "read -> {}", s(*v)),
            RegOp::Write(v) => write!(f, "write {v}"),
            RegOp::Cas(e, n) => write!(f, "cas {} -> {n}", s(*e)),
        }
    }
}

/// One operation prepared for the search.
#[derive(Debug, Clone)]
pub struct LinOp {
    /// What it does.
    pub op: RegOp,
    /// Position of the invocation in the history.
    pub call: usize,
    /// Position of the `ok` completion; `None` for `info`/pending (returns at +∞).
    pub ret: Option<usize>,
    /// `index` of the invocation event.
    pub invoke_index: u64,
    /// `index` of the completion event, if any.
    pub completion_index: Option<u64>,
    /// The client.
    pub process: u64,
}

/// Why the search gave up without an answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exhausted {
    /// The wall-clock budget ran out.
    Time,
    /// The cache grew past `max_states`.
    States,
}

/// What the search found for one key.
#[derive(Debug, Clone)]
pub enum SearchResult {
    /// A linearization exists.
    Linearizable,
    /// None exists; the deepest partial linearization reached and the blocking operation.
    NotLinearizable(Failure),
    /// Budget exhausted.
    Unknown(Exhausted),
}

/// The deepest point the search reached on a non-linearizable key.
#[derive(Debug, Clone)]
pub struct Failure {
    /// Operation ids (indices into the key's ops) of the longest linearizable prefix, in order.
    pub prefix: Vec<usize>,
    /// Register state after the prefix.
    pub state: State,
    /// The operation whose return could not be passed after that prefix.
    pub blocked: usize,
}

/// Counters from one search.
#[derive(Debug, Clone, Copy, Default)]
pub struct SearchStats {
    /// Loop iterations.
    pub steps: u64,
    /// Distinct configurations cached.
    pub states: u64,
}

const NIL: usize = usize::MAX;
const HEAD: usize = 0;

#[derive(Debug, Clone)]
struct Entry {
    prev: usize,
    next: usize,
    op: usize,
    is_call: bool,
    /// For a call, its return entry; for a return, its call entry.
    matching: usize,
    /// A return at +∞ (info or pending).
    infinite: bool,
}

struct List {
    e: Vec<Entry>,
}

impl List {
    fn build(ops: &[LinOp]) -> List {
        // (time, is_return, op); returns at +inf sort last.
        let mut items: Vec<(usize, bool, usize)> = Vec::with_capacity(ops.len() * 2);
        for (id, op) in ops.iter().enumerate() {
            items.push((op.call, false, id));
            items.push((op.ret.unwrap_or(usize::MAX), true, id));
        }
        items.sort_unstable();
        let mut e = Vec::with_capacity(items.len() + 1);
        e.push(Entry {
            prev: NIL,
            next: NIL,
            op: NIL,
            is_call: false,
            matching: NIL,
            infinite: false,
        });
        let mut call_entry = vec![NIL; ops.len()];
        let mut ret_entry = vec![NIL; ops.len()];
        for (i, &(_, is_ret, id)) in items.iter().enumerate() {
            let idx = i + 1;
            if is_ret {
                ret_entry[id] = idx;
            } else {
                call_entry[id] = idx;
            }
            e.push(Entry {
                prev: idx - 1,
                next: if i + 1 < items.len() { idx + 1 } else { NIL },
                op: id,
                is_call: !is_ret,
                matching: NIL,
                infinite: is_ret && ops[id].ret.is_none(),
            });
        }
        e[HEAD].next = if items.is_empty() { NIL } else { 1 };
        for id in 0..ops.len() {
            e[call_entry[id]].matching = ret_entry[id];
            e[ret_entry[id]].matching = call_entry[id];
        }
        List { e }
    }

    /// Removes a call entry and its return from the list.
    fn lift(&mut self, call: usize) {
        let (p, n) = (self.e[call].prev, self.e[call].next);
        self.e[p].next = n;
        if n != NIL {
            self.e[n].prev = p;
        }
        let ret = self.e[call].matching;
        let (p, n) = (self.e[ret].prev, self.e[ret].next);
        self.e[p].next = n;
        if n != NIL {
            self.e[n].prev = p;
        }
    }

    /// Undoes `lift` (must be called in reverse order of lifts).
    fn unlift(&mut self, call: usize) {
        let ret = self.e[call].matching;
        let (p, n) = (self.e[ret].prev, self.e[ret].next);
        self.e[p].next = ret;
        if n != NIL {
            self.e[n].prev = ret;
        }
        let (p, n) = (self.e[call].prev, self.e[call].next);
        self.e[p].next = call;
        if n != NIL {
            self.e[n].prev = call;
        }
    }
}

/// Searches for a linearization of one key's operations.
///
/// `deadline` bounds wall time, `max_states` the cache size.
pub fn search(ops: &[LinOp], deadline: Instant, max_states: usize) -> (SearchResult, SearchStats) {
    let mut list = List::build(ops);
    let words = ops.len().div_ceil(64).max(1);
    let mut linearized = vec![0u64; words];
    let mut cache: HashSet<(Box<[u64]>, State)> = HashSet::new();
    let mut undo: Vec<(usize, State)> = Vec::new();
    let mut state: State = None;
    let mut stats = SearchStats::default();
    let mut best: Option<Failure> = None;
    let mut entry = list.e[HEAD].next;
    loop {
        stats.steps += 1;
        if stats.steps.is_multiple_of(4096) && Instant::now() >= deadline {
            stats.states = cache.len() as u64;
            return (SearchResult::Unknown(Exhausted::Time), stats);
        }
        if entry == NIL {
            break;
        }
        let cur = list.e[entry].clone();
        if cur.is_call {
            let id = cur.op;
            match ops[id].op.step(state) {
                Some(next_state) => {
                    linearized[id / 64] |= 1 << (id % 64);
                    if cache.insert((linearized.clone().into_boxed_slice(), next_state)) {
                        if cache.len() > max_states {
                            stats.states = cache.len() as u64;
                            return (SearchResult::Unknown(Exhausted::States), stats);
                        }
                        undo.push((entry, state));
                        state = next_state;
                        list.lift(entry);
                        entry = list.e[HEAD].next;
                    } else {
                        linearized[id / 64] &= !(1 << (id % 64));
                        entry = cur.next;
                    }
                }
                None => entry = cur.next,
            }
        } else {
            if cur.infinite {
                // Only +inf returns remain: every completed op is linearized, and the
                // remaining info ops are taken never to have happened.
                break;
            }
            if best.as_ref().is_none_or(|b| undo.len() > b.prefix.len()) {
                best = Some(Failure {
                    prefix: undo.iter().map(|&(c, _)| list.e[c].op).collect(),
                    state,
                    blocked: cur.op,
                });
            }
            let Some((call, prev_state)) = undo.pop() else {
                stats.states = cache.len() as u64;
                let failure = best.unwrap_or(Failure {
                    prefix: Vec::new(),
                    state: None,
                    blocked: cur.op,
                });
                return (SearchResult::NotLinearizable(failure), stats);
            };
            let id = list.e[call].op;
            linearized[id / 64] &= !(1 << (id % 64));
            state = prev_state;
            list.unlift(call);
            entry = list.e[call].next;
        }
    }
    stats.states = cache.len() as u64;
    (SearchResult::Linearizable, stats)
}

fn value_as_state(v: &Value) -> Option<State> {
    match v {
        Value::Null => Some(None),
        Value::Number(n) => n.as_i64().map(Some),
        _ => None,
    }
}

fn malformed(e: &Event, what: &str) -> CheckError {
    CheckError::Malformed {
        index: e.index,
        message: format!("{what}, got {}", e.value),
    }
}

/// Turns a paired operation into a search operation; `Ok(None)` when it is dropped.
fn prepare(op: &Op<'_>) -> Result<Option<LinOp>, CheckError> {
    let outcome = op.outcome();
    if outcome == Outcome::Fail {
        return Ok(None);
    }
    let inv = op.invoke;
    let reg = match op.f() {
        "read" => {
            if outcome == Outcome::Info {
                return Ok(None);
            }
            let Some(done) = op.completed() else {
                return Ok(None);
            };
            let v = value_as_state(&done.value)
                .ok_or_else(|| malformed(done, "read ok value must be an integer or null"))?;
            RegOp::Read(v)
        }
        "write" => {
            let v = inv
                .value
                .as_i64()
                .ok_or_else(|| malformed(inv, "write value must be an integer"))?;
            RegOp::Write(v)
        }
        "cas" => {
            let pair = inv.value.as_array().filter(|a| a.len() == 2);
            let parsed = pair.and_then(|a| Some((value_as_state(&a[0])?, a[1].as_i64()?)));
            let (e, n) = parsed.ok_or_else(|| {
                malformed(
                    inv,
                    "cas value must be [expected (integer or null), new (integer)]",
                )
            })?;
            RegOp::Cas(e, n)
        }
        other => {
            return Err(CheckError::Malformed {
                index: inv.index,
                message: format!("register workload has no operation {other:?}"),
            })
        }
    };
    let ret = if outcome == Outcome::Ok {
        op.completion_pos()
    } else {
        None
    };
    Ok(Some(LinOp {
        op: reg,
        call: op.invoke_pos,
        ret,
        invoke_index: inv.index,
        completion_index: op.completed().map(|c| c.index),
        process: inv.process,
    }))
}

/// Maximum number of operations shown in a counterexample window.
const WINDOW_OPS: usize = 24;

fn explain(key: &str, ops: &[LinOp], f: &Failure, events: &[Event]) -> (Anomaly, Vec<Event>) {
    let blocked = &ops[f.blocked];
    let state = f.state.map_or_else(|| "nil".to_string(), |v| v.to_string());
    let tail: Vec<String> = f
        .prefix
        .iter()
        .rev()
        .take(5)
        .rev()
        .map(|&id| {
            format!(
                "{} (p{}, #{})",
                ops[id].op, ops[id].process, ops[id].invoke_index
            )
        })
        .collect();
    let message = format!(
        "key {key:?} is not linearizable: the longest linearizable prefix has {} of {} operations \
         (ending [{}]) and leaves the register at {state}; then {} by process {} (invoked at #{}, \
         returned at #{}) cannot be linearized",
        f.prefix.len(),
        ops.len(),
        tail.join(", "),
        blocked.op,
        blocked.process,
        blocked.invoke_index,
        blocked
            .completion_index
            .map_or_else(|| "never".to_string(), |i| i.to_string()),
    );
    // Window: the last operations of the prefix, the blocked operation, and the
    // operations not in the prefix that were called before it returned and overlap it.
    let in_prefix: HashSet<usize> = f.prefix.iter().copied().collect();
    let b_ret = blocked.ret.unwrap_or(usize::MAX);
    let mut chosen: Vec<usize> = f.prefix.iter().rev().take(4).copied().collect();
    chosen.push(f.blocked);
    let mut concurrent: Vec<usize> = (0..ops.len())
        .filter(|&id| id != f.blocked && !in_prefix.contains(&id))
        .filter(|&id| ops[id].call < b_ret && ops[id].ret.is_none_or(|r| r > blocked.call))
        .collect();
    concurrent.sort_by_key(|&id| blocked.call.abs_diff(ops[id].call));
    concurrent.truncate(WINDOW_OPS.saturating_sub(chosen.len()));
    chosen.extend(concurrent);
    let mut positions: Vec<usize> = Vec::new();
    for &id in &chosen {
        positions.push(ops[id].call);
        if let Some(r) = ops[id].ret {
            positions.push(r);
        } else if let Some(ci) = ops[id].completion_index {
            if let Some(p) = events[ops[id].call..].iter().position(|e| e.index == ci) {
                positions.push(ops[id].call + p);
            }
        }
    }
    positions.sort_unstable();
    positions.dedup();
    let window: Vec<Event> = positions
        .iter()
        .filter_map(|&p| events.get(p).cloned())
        .collect();
    let mut ids = vec![blocked.invoke_index];
    ids.extend(blocked.completion_index);
    ids.extend(
        f.prefix
            .iter()
            .rev()
            .take(4)
            .map(|&id| ops[id].invoke_index),
    );
    (
        Anomaly::new("nonlinearizable", Some(key), message, ids),
        window,
    )
}

/// Checks a register history for linearizability, key by key.
pub fn check(events: &[Event], options: &CheckOptions) -> Result<Verdict, CheckError> {
    let start = Instant::now();
    let deadline = start + options.budget;
    let paired = pair_ops(events)?;
    let mut by_key: BTreeMap<&str, Vec<LinOp>> = BTreeMap::new();
    let mut dropped = 0u64;
    let mut total = 0usize;
    let mut counts = [0u64; 3];
    for op in &paired {
        if op.f() == "setup" {
            continue;
        }
        total += 1;
        counts[match op.outcome() {
            Outcome::Ok => 0,
            Outcome::Fail => 1,
            Outcome::Info => 2,
        }] += 1;
        match prepare(op)? {
            Some(lin) => by_key.entry(op.key()).or_default().push(lin),
            None => dropped += 1,
        }
    }
    let mut verdict = Verdict::new("register-linearizability", total);
    verdict.stats.insert("keys".into(), by_key.len() as u64);
    verdict.stats.insert("ok".into(), counts[0]);
    verdict.stats.insert("fail".into(), counts[1]);
    verdict.stats.insert("info".into(), counts[2]);
    verdict.stats.insert("dropped".into(), dropped);
    let mut states = 0u64;
    let mut unknown_keys: Vec<String> = Vec::new();
    for (key, ops) in &by_key {
        let per_state = ops.len().div_ceil(64) * 8 + 64;
        let limit = options
            .max_states
            .min(options.max_cache_bytes / per_state)
            .max(1);
        let (result, stats) = search(ops, deadline, limit);
        states += stats.states;
        match result {
            SearchResult::Linearizable => {}
            SearchResult::NotLinearizable(f) => {
                let (anomaly, window) = explain(key, ops, &f, events);
                if verdict.counterexample.is_none() {
                    verdict.counterexample = Some(window);
                }
                verdict.push(anomaly);
            }
            SearchResult::Unknown(why) => {
                unknown_keys.push(format!(
                    "{key:?} ({})",
                    match why {
                        Exhausted::Time => "time budget exhausted",
                        Exhausted::States => "state budget exhausted",
                    }
                ));
            }
        }
    }
    verdict.stats.insert("states".into(), states);
    if !unknown_keys.is_empty() {
        verdict.valid = verdict.valid.and(Validity::Unknown);
        verdict.note = Some(format!("undecided keys: {}", unknown_keys.join(", ")));
    }
    Ok(verdict)
}
