//! Session guarantees of AP keys: read-your-writes and monotonic reads, per session.
//!
//! Operations, each with `{"session": s, ...}` as its value (a session outlives the
//! process ids of Jepsen's semantics: after an indeterminate write the process changes, the
//! session does not):
//!
//! * `write` of key `k` by the one session that writes `k`, with `"value": n`, `n` growing
//!   with each write of that session (1, 2, 3, ...);
//! * `read` of any key, whose `ok` value has `"value": n` (`null`: the key was absent).
//!
//! The writer's values order its writes, so on every `ok` read by session `s` of key `k`
//! returning `v` (`null` counts as 0):
//!
//! * `read-your-writes`: `v` ≥ the value of every `ok` write of `k` by `s` completed before
//!   the read was invoked;
//! * `monotonic-reads`: `v` ≥ the value of every `ok` read of `k` by `s` completed before
//!   the read was invoked;
//!
//! except when `v` is the value of an indeterminate (`info`) write: such a write may take
//! effect after the writes that followed it (the store bounds how late, not whether), and
//! then rightly reads as newer (counted in `stats` as `late_indeterminate`).
//! * `unexpected`: `v` was never written (no write of it was invoked before the read
//!   completed).
//!
//! A history with no read that either check constrains is `unknown`.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::history::{pair_ops, Event, Outcome};
use crate::{Anomaly, CheckError, Validity, Verdict};

fn malformed(index: u64, message: String) -> CheckError {
    CheckError::Malformed { index, message }
}

/// The session of an operation's value.
fn session_of(e: &Event) -> Result<u64, CheckError> {
    e.value["session"]
        .as_u64()
        .ok_or_else(|| malformed(e.index, format!("no session in {}", e.value)))
}

/// A value a read or write carries: `null` is 0 (absent, before any write).
fn value_of(e: &Event) -> Result<i64, CheckError> {
    match &e.value["value"] {
        Value::Null => Ok(0),
        v => v
            .as_i64()
            .ok_or_else(|| malformed(e.index, format!("value {v} is not an integer"))),
    }
}

/// Checks a session history.
pub fn check(events: &[Event]) -> Result<Verdict, CheckError> {
    let ops = pair_ops(events)?;
    let mut verdict = Verdict::new("session", ops.len());
    // Per (session, key): the highest value acknowledged to the session, from a write or a
    // read, with the event that showed it; keyed by the position it completed at.
    struct Known {
        value: i64,
        event: u64,
        from_write: bool,
        completed: usize,
    }
    let mut known: BTreeMap<(u64, &str), Vec<Known>> = BTreeMap::new();
    // Per key: (value, invoke position) of every write invoked.
    let mut invoked: BTreeMap<&str, Vec<(i64, usize)>> = BTreeMap::new();
    // Per key: the values of writes that may or may not have happened.
    let mut indeterminate: BTreeMap<&str, Vec<i64>> = BTreeMap::new();
    for op in &ops {
        let s = session_of(op.invoke)?;
        match op.f() {
            "write" => {
                invoked
                    .entry(op.key())
                    .or_default()
                    .push((value_of(op.invoke)?, op.invoke_pos));
                if op.outcome() == Outcome::Info {
                    let v = value_of(op.invoke)?;
                    indeterminate.entry(op.key()).or_default().push(v);
                }
                if let (Outcome::Ok, Some((done, pos))) = (op.outcome(), op.completion) {
                    known.entry((s, op.key())).or_default().push(Known {
                        value: value_of(op.invoke)?,
                        event: done.index,
                        from_write: true,
                        completed: pos,
                    });
                }
            }
            "read" => {
                if let (Outcome::Ok, Some((done, pos))) = (op.outcome(), op.completion) {
                    known.entry((s, op.key())).or_default().push(Known {
                        value: value_of(done)?,
                        event: done.index,
                        from_write: false,
                        completed: pos,
                    });
                }
            }
            other => {
                return Err(malformed(
                    op.invoke.index,
                    format!("unknown operation {other:?}"),
                ))
            }
        }
    }
    let (mut checked, mut constrained, mut late) = (0u64, 0u64, 0u64);
    for op in ops.iter().filter(|o| o.f() == "read") {
        let (Outcome::Ok, Some((done, done_pos))) = (op.outcome(), op.completion) else {
            continue;
        };
        let (s, key, v) = (session_of(op.invoke)?, op.key(), value_of(done)?);
        checked += 1;
        if v != 0
            && !invoked
                .get(key)
                .is_some_and(|w| w.iter().any(|(n, at)| *n == v && *at < done_pos))
        {
            verdict.anomalies.push(Anomaly::new(
                "unexpected",
                Some(key),
                format!("read #{} returned {v}, which no write invoked", done.index),
                vec![op.invoke.index, done.index],
            ));
        }
        let before = known
            .get(&(s, key))
            .into_iter()
            .flatten()
            .filter(|k| k.completed < op.invoke_pos);
        if let Some(need) = before.max_by_key(|k| k.value) {
            constrained += 1;
            let late_write = indeterminate.get(key).is_some_and(|vs| vs.contains(&v));
            if v < need.value && late_write {
                late += 1;
            } else if v < need.value {
                let kind = if need.from_write {
                    "read-your-writes"
                } else {
                    "monotonic-reads"
                };
                verdict.anomalies.push(Anomaly::new(
                    kind,
                    Some(key),
                    format!(
                        "session {s} read {v} (#{}) after it had seen {} (#{})",
                        done.index, need.value, need.event
                    ),
                    vec![need.event, op.invoke.index, done.index],
                ));
            }
        }
    }
    verdict.stats.insert("reads_checked".into(), checked);
    verdict
        .stats
        .insert("reads_constrained".into(), constrained);
    verdict.stats.insert("late_indeterminate".into(), late);
    verdict.valid = if !verdict.anomalies.is_empty() {
        Validity::Invalid
    } else if constrained == 0 {
        verdict.note = Some("no read had a floor to check against".into());
        Validity::Unknown
    } else {
        Validity::Valid
    };
    Ok(verdict)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::EventType::{Fail, Info, Invoke, Ok};
    use serde_json::json;

    /// Events from (process, type, f, key, session, value) rows.
    fn history(rows: &[(u64, crate::EventType, &str, &str, u64, Value)]) -> Vec<Event> {
        rows.iter()
            .enumerate()
            .map(|(i, (p, t, f, k, s, v))| {
                Event::new(i as u64, *p, *t, f, json!({"session": s, "value": v})).with_key(k)
            })
            .collect()
    }

    #[test]
    fn a_session_that_reads_its_writes_and_never_goes_back_is_valid() {
        let h = history(&[
            (1, Invoke, "write", "a", 1, json!(1)),
            (1, Ok, "write", "a", 1, json!(1)),
            (1, Invoke, "read", "a", 1, json!(null)),
            (1, Ok, "read", "a", 1, json!(1)),
            // Another session may read an older value; this one read nothing yet.
            (2, Invoke, "read", "a", 2, json!(null)),
            (2, Ok, "read", "a", 2, json!(null)),
            // An indeterminate write may show up or not.
            (1, Invoke, "write", "a", 1, json!(2)),
            (1, Info, "write", "a", 1, json!(2)),
            (3, Invoke, "read", "a", 1, json!(null)),
            (3, Ok, "read", "a", 1, json!(2)),
        ]);
        let v = check(&h).unwrap();
        assert_eq!(v.valid, Validity::Valid, "{:?}", v.anomalies);
        assert_eq!(v.stats["reads_constrained"], 2);
    }

    #[test]
    fn stale_reads_of_a_session_are_caught() {
        let h = history(&[
            (1, Invoke, "write", "a", 1, json!(1)),
            (1, Ok, "write", "a", 1, json!(1)),
            (1, Invoke, "read", "a", 1, json!(null)),
            (1, Ok, "read", "a", 1, json!(null)),
            (2, Invoke, "write", "b", 2, json!(1)),
            (2, Ok, "write", "b", 2, json!(1)),
            (1, Invoke, "read", "b", 1, json!(null)),
            (1, Ok, "read", "b", 1, json!(1)),
            (1, Invoke, "read", "b", 1, json!(null)),
            (1, Ok, "read", "b", 1, json!(null)),
            (1, Invoke, "read", "b", 1, json!(null)),
            (1, Ok, "read", "b", 1, json!(7)),
            (1, Invoke, "write", "a", 1, json!(2)),
            (1, Fail, "write", "a", 1, json!(2)),
        ]);
        let v = check(&h).unwrap();
        assert_eq!(v.valid, Validity::Invalid);
        let kinds: Vec<&str> = v.anomalies.iter().map(|a| a.kind.as_str()).collect();
        assert_eq!(
            kinds,
            ["read-your-writes", "monotonic-reads", "unexpected"],
            "{:?}",
            v.anomalies
        );
    }

    #[test]
    fn an_indeterminate_write_may_land_after_later_writes() {
        let h = history(&[
            (1, Invoke, "write", "a", 1, json!(1)),
            (1, Info, "write", "a", 1, json!(1)),
            (2, Invoke, "write", "a", 1, json!(2)),
            (2, Ok, "write", "a", 1, json!(2)),
            (2, Invoke, "read", "a", 1, json!(null)),
            (2, Ok, "read", "a", 1, json!(1)),
        ]);
        let v = check(&h).unwrap();
        assert_eq!(v.valid, Validity::Valid, "{:?}", v.anomalies);
        assert_eq!(v.stats["late_indeterminate"], 1);
    }

    #[test]
    fn a_history_without_floors_is_unknown() {
        let h = history(&[
            (1, Invoke, "read", "a", 1, json!(null)),
            (1, Ok, "read", "a", 1, json!(null)),
        ]);
        assert_eq!(check(&h).unwrap().valid, Validity::Unknown);
    }
}
