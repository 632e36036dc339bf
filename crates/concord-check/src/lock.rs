//! Lock with fencing tokens.
//!
//! * `acquire` ok returns `{"token": t}`. No two `ok` acquires may return the same token
//!   (`duplicate-token`).
//! * `write` carries `{"token": t, "seq": n}`; `ok` means the guard accepted it. Taken in
//!   acceptance order (the order of their `ok` completions), accepted tokens must never
//!   decrease (`token-regression`): the guard rejects lower tokens, so accepting one means a
//!   stale holder got through.
//! * `release` is not checked.
//!
//! The checker does not claim mutual exclusion in real time (a lease can expire under a paused
//! holder); fencing is precisely what makes that harmless, and that is what it checks.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::history::{pair_ops, Event, Outcome};
use crate::{Anomaly, CheckError, Verdict};

fn token(e: &Event) -> Result<i64, CheckError> {
    e.value
        .get("token")
        .and_then(Value::as_i64)
        .ok_or_else(|| CheckError::Malformed {
            index: e.index,
            message: format!(
                "{} value must hold an integer \"token\", got {}",
                e.f, e.value
            ),
        })
}

/// Checks a lock history.
pub fn check(events: &[Event]) -> Result<Verdict, CheckError> {
    let ops = pair_ops(events)?;
    let mut verdict = Verdict::new("lock", ops.iter().filter(|o| o.f() != "setup").count());
    let mut tokens: BTreeMap<i64, u64> = BTreeMap::new();
    // (completion position, token, invoke index, completion index)
    let mut writes: Vec<(usize, i64, u64, u64)> = Vec::new();
    let mut acquires = 0u64;
    for op in &ops {
        if op.outcome() != Outcome::Ok {
            continue;
        }
        let Some((done, pos)) = op.completion else {
            continue;
        };
        match op.f() {
            "acquire" => {
                acquires += 1;
                let t = token(done)?;
                if let Some(first) = tokens.insert(t, done.index) {
                    tokens.insert(t, first);
                    verdict.push(Anomaly::new(
                        "duplicate-token",
                        None,
                        format!(
                            "acquires #{first} and #{} both returned token {t}",
                            done.index
                        ),
                        vec![first, done.index],
                    ));
                }
            }
            "write" => {
                let t = token(op.invoke).or_else(|_| token(done))?;
                writes.push((pos, t, op.invoke.index, done.index));
            }
            _ => {}
        }
    }
    writes.sort_unstable();
    let mut max: Option<(i64, u64)> = None;
    for &(_, t, _, ci) in &writes {
        match max {
            Some((m, mi)) if t < m => verdict.push(Anomaly::new(
                "token-regression",
                None,
                format!("write with token {t} accepted at #{ci} after a write with token {m} was accepted at #{mi}"),
                vec![mi, ci],
            )),
            Some((m, _)) if t == m => {}
            _ => max = Some((t, ci)),
        }
    }
    verdict.stats.insert("ok_acquires".into(), acquires);
    verdict
        .stats
        .insert("ok_writes".into(), writes.len() as u64);
    verdict.window_around_first(events, 6);
    Ok(verdict)
}
