//! A simulated linearizable register store that writes histories in the shared format, for
//! tests and benchmarks of the register checker.
//!
//! Every operation gets a linearization point strictly between its invocation and its
//! completion; applying the operations in that order to one register per key yields the read
//! results and cas outcomes, so every generated history is linearizable by construction.
//! Some operations become `info` (applied or not, the effect possibly landing after the `info`
//! event, as a timed-out request can), some writes `fail` (not applied), and a process's last
//! operation may be left pending. Written values are unique across the history, which lets the
//! corruption helpers build reads that are certainly not linearizable.

use serde_json::{json, Value};

use crate::history::{pair_ops, Event, EventType, Outcome};

/// A small deterministic PRNG (SplitMix64): no dependency, same stream on every platform.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// Seeds the generator.
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// True with probability `per_mille / 1000`.
    pub fn chance(&mut self, per_mille: u32) -> bool {
        self.below(1000) < u64::from(per_mille)
    }
}

/// Shape of a synthetic register history.
#[derive(Debug, Clone)]
pub struct SynthConfig {
    /// PRNG seed: same seed, same history.
    pub seed: u64,
    /// Number of operations.
    pub ops: usize,
    /// Number of keys (`r0`, `r1`, ...).
    pub keys: usize,
    /// Number of concurrent client processes.
    pub processes: usize,
    /// Chance (per mille) that an operation ends `info`.
    pub info_per_mille: u32,
    /// Chance (per mille) that a write ends `fail` (not applied).
    pub fail_per_mille: u32,
    /// Upper bound on each latency segment, in ns.
    pub max_latency: u64,
}

impl Default for SynthConfig {
    fn default() -> Self {
        SynthConfig {
            seed: 1,
            ops: 200,
            keys: 2,
            processes: 5,
            info_per_mille: 30,
            fail_per_mille: 30,
            max_latency: 100,
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Intent {
    Read,
    Write(i64),
    Cas(Option<i64>, i64),
}

#[derive(Debug)]
struct SimOp {
    process: u64,
    key: usize,
    intent: Intent,
    invoke: u64,
    lin: u64,
    complete: Option<u64>,
    outcome: Outcome,
    applied: bool,
    result: Value,
}

/// Generates a linearizable register history.
pub fn register_history(cfg: &SynthConfig) -> Vec<Event> {
    let mut rng = Rng::new(cfg.seed);
    let procs = cfg.processes.max(1);
    let keys = cfg.keys.max(1);
    let lat = cfg.max_latency.max(1);
    let mut free_at = vec![0u64; procs];
    let mut issued: Vec<Vec<i64>> = vec![Vec::new(); keys];
    let mut next_value = 1i64;
    let mut ops: Vec<SimOp> = Vec::with_capacity(cfg.ops);
    for _ in 0..cfg.ops {
        let p = (0..procs).min_by_key(|&p| (free_at[p], p)).unwrap_or(0);
        let key = rng.below(keys as u64) as usize;
        let intent = match rng.below(10) {
            0..=3 => Intent::Read,
            4..=7 => {
                next_value += 1;
                Intent::Write(next_value)
            }
            _ => {
                next_value += 1;
                let recent = &issued[key];
                let expected = if recent.is_empty() || rng.chance(100) {
                    None
                } else {
                    let back = rng.below(recent.len().min(3) as u64) as usize;
                    Some(recent[recent.len() - 1 - back])
                };
                Intent::Cas(expected, next_value)
            }
        };
        match intent {
            Intent::Write(v) | Intent::Cas(_, v) => issued[key].push(v),
            Intent::Read => {}
        }
        let invoke = free_at[p] + 1 + rng.below(lat);
        let lin = invoke + 1 + rng.below(lat);
        let mut complete = lin + 1 + rng.below(lat);
        let mut outcome = Outcome::Ok;
        let mut applied = true;
        let mut lin_at = lin;
        if rng.chance(cfg.info_per_mille) {
            outcome = Outcome::Info;
            applied = rng.chance(500);
            // A timed-out request may take effect well after the client gave up.
            lin_at = invoke + 1 + rng.below(3 * lat);
            complete = invoke + 1 + rng.below(lat);
        } else if matches!(intent, Intent::Write(_)) && rng.chance(cfg.fail_per_mille) {
            outcome = Outcome::Fail;
            applied = false;
        }
        free_at[p] = complete;
        ops.push(SimOp {
            process: p as u64,
            key,
            intent,
            invoke,
            lin: lin_at,
            complete: Some(complete),
            outcome,
            applied,
            result: Value::Null,
        });
    }
    // Leave some processes' last operation pending.
    let mut last: Vec<Option<usize>> = vec![None; procs];
    for (i, op) in ops.iter().enumerate() {
        last[op.process as usize] = Some(i);
    }
    for i in last.into_iter().flatten() {
        if rng.chance(cfg.info_per_mille) {
            ops[i].complete = None;
            ops[i].outcome = Outcome::Info;
        }
    }
    // Apply in linearization order.
    let mut order: Vec<usize> = (0..ops.len()).collect();
    order.sort_by_key(|&i| (ops[i].lin, i));
    let mut regs: Vec<Option<i64>> = vec![None; keys];
    for i in order {
        let op = &mut ops[i];
        if !op.applied {
            continue;
        }
        let reg = &mut regs[op.key];
        match op.intent {
            Intent::Read => op.result = json!(*reg),
            Intent::Write(v) => {
                *reg = Some(v);
                op.result = json!(v);
            }
            Intent::Cas(e, n) => {
                if *reg == e {
                    *reg = Some(n);
                    op.result = json!([e, n]);
                } else if op.outcome == Outcome::Ok {
                    op.outcome = Outcome::Fail;
                }
            }
        }
    }
    // Emit events in time order.
    let mut raw: Vec<(u64, u8, usize)> = Vec::with_capacity(ops.len() * 2);
    for (i, op) in ops.iter().enumerate() {
        raw.push((op.invoke, 1, i));
        if let Some(c) = op.complete {
            raw.push((c, 0, i));
        }
    }
    raw.sort_unstable();
    let mut events = Vec::with_capacity(raw.len());
    for (t, is_invoke, i) in raw {
        let op = &ops[i];
        let (f, arg) = match op.intent {
            Intent::Read => ("read", Value::Null),
            Intent::Write(v) => ("write", json!(v)),
            Intent::Cas(e, n) => ("cas", json!([e, n])),
        };
        let (kind, value) = if is_invoke == 1 {
            (EventType::Invoke, arg)
        } else {
            match op.outcome {
                Outcome::Ok => (
                    EventType::Ok,
                    if f == "read" { op.result.clone() } else { arg },
                ),
                Outcome::Fail => (EventType::Fail, arg),
                Outcome::Info => (EventType::Info, arg),
            }
        };
        let mut e = Event::new(events.len() as u64, op.process, kind, f, value)
            .with_key(&format!("r{}", op.key));
        e.time_ns = t;
        if kind == EventType::Info || kind == EventType::Fail {
            e.error = Some("simulated".into());
        }
        events.push(e);
    }
    events
}

/// Makes one `ok` read (the `skip`-th, cyclically) return a value no operation wrote.
/// Returns the `index` of the changed event, or `None` if there is no ok read.
pub fn corrupt_read_never_written(events: &mut [Event], skip: usize) -> Option<u64> {
    let reads: Vec<usize> = events
        .iter()
        .enumerate()
        .filter(|(_, e)| e.kind == EventType::Ok && e.f == "read")
        .map(|(i, _)| i)
        .collect();
    if reads.is_empty() {
        return None;
    }
    let pos = reads[skip % reads.len()];
    events[pos].value = json!(-999_999_999i64);
    Some(events[pos].index)
}

/// Makes one `ok` read return the value of a write that a later write had overwritten before
/// the read began: an `ok` write W1, then an `ok` write W2 of the same key invoked after W1
/// completed, then the read invoked after W2 completed. With unique written values (as
/// [`register_history`] makes them) the result is certainly not linearizable. Returns the
/// `index` of the changed event, or `None` when no such triple exists.
pub fn corrupt_read_stale(events: &mut [Event], skip: usize) -> Option<u64> {
    let (read_pos, value) = {
        let ops = pair_ops(events).ok()?;
        let done = |o: &crate::history::Op<'_>| o.outcome() == Outcome::Ok;
        let writes: Vec<_> = ops.iter().filter(|o| o.f() == "write" && done(o)).collect();
        let mut candidates = Vec::new();
        for r in ops.iter().filter(|o| o.f() == "read" && done(o)) {
            let before: Vec<_> = writes
                .iter()
                .filter(|w| w.key() == r.key() && w.completion_pos() < Some(r.invoke_pos))
                .collect();
            let stale = before.iter().find(|w1| {
                before
                    .iter()
                    .any(|w2| w1.completion_pos() < Some(w2.invoke_pos))
            });
            if let (Some(w1), Some(rp)) = (stale, r.completion_pos()) {
                candidates.push((rp, w1.invoke.value.clone()));
            }
        }
        if candidates.is_empty() {
            return None;
        }
        candidates.swap_remove(skip % candidates.len())
    };
    events[read_pos].value = value;
    Some(events[read_pos].index)
}
