//! Counter: the final value counts every acknowledged increment, and nothing that was
//! never attempted.
//!
//! Operations: `add d` (an integer delta), then reads whose `ok` value is an integer; the
//! last `ok` read is the final read (taken after healing). An add acknowledged before the
//! final read began must be in it; an add that is `info`, never completed, or acknowledged
//! during the final read may or may not be; a failed add must not be. So the final value
//! must lie in `[certain + Σ negative uncertain deltas, certain + Σ positive uncertain
//! deltas]`, where `certain` sums the adds that must be in it:
//!
//! * `lost-increments` (anomaly): the final value is below that range;
//! * `phantom-increments` (anomaly): it is above it.
//!
//! With no `ok` read the verdict is `unknown`.

use crate::history::{final_read, pair_ops, Event, Outcome};
use crate::{Anomaly, CheckError, Validity, Verdict};

/// Checks a counter history.
pub fn check(events: &[Event]) -> Result<Verdict, CheckError> {
    let ops = pair_ops(events)?;
    let mut verdict = Verdict::new("counter", ops.iter().filter(|o| o.f() != "setup").count());
    let Some((final_read, read_event)) = final_read(&ops)? else {
        verdict.valid = Validity::Unknown;
        verdict.note = Some("no ok read: nothing to check the increments against".into());
        return Ok(verdict);
    };
    let value = read_event
        .value
        .as_i64()
        .ok_or_else(|| CheckError::Malformed {
            index: read_event.index,
            message: format!(
                "final read value must be an integer, got {}",
                read_event.value
            ),
        })?;
    let (mut certain, mut low, mut high) = (0i128, 0i128, 0i128);
    let (mut ok, mut uncertain) = (0u64, 0u64);
    for op in &ops {
        if op.f() != "add" {
            continue;
        }
        let d = op
            .invoke
            .value
            .as_i64()
            .ok_or_else(|| CheckError::Malformed {
                index: op.invoke.index,
                message: format!("add value must be an integer, got {}", op.invoke.value),
            })?;
        let d = i128::from(d);
        let before_read = op
            .completion_pos()
            .is_some_and(|c| c < final_read.invoke_pos);
        match op.outcome() {
            Outcome::Ok if before_read => {
                ok += 1;
                certain += d;
            }
            Outcome::Fail => {}
            _ => {
                uncertain += 1;
                low += d.min(0);
                high += d.max(0);
            }
        }
    }
    let (min, max) = (certain + low, certain + high);
    let v = i128::from(value);
    let ri = read_event.index;
    if v < min {
        verdict.push(Anomaly::new(
            "lost-increments",
            None,
            format!("final read #{ri} is {v}, but the acknowledged increments alone make at least {min}"),
            vec![ri],
        ));
    }
    if v > max {
        verdict.push(Anomaly::new(
            "phantom-increments",
            None,
            format!(
                "final read #{ri} is {v}, more than every increment that may have happened ({max})"
            ),
            vec![ri],
        ));
    }
    verdict.stats.insert("ok_adds".into(), ok);
    verdict.stats.insert("uncertain_adds".into(), uncertain);
    verdict.stats.insert("final".into(), value.max(0) as u64);
    verdict.window_around_first(events, 6);
    Ok(verdict)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::{Event, EventType};
    use serde_json::json;

    fn history(adds: &[(EventType, i64)], last: i64) -> Vec<Event> {
        let mut events = Vec::new();
        let mut i = 0;
        for (p, (kind, d)) in adds.iter().enumerate() {
            events.push(Event::new(i, p as u64, EventType::Invoke, "add", json!(d)));
            events.push(Event::new(i + 1, p as u64, *kind, "add", json!(d)));
            i += 2;
        }
        events.push(Event::new(i, 99, EventType::Invoke, "read", json!(null)));
        events.push(Event::new(i + 1, 99, EventType::Ok, "read", json!(last)));
        events
    }

    #[test]
    fn the_final_value_must_count_every_acknowledged_increment_and_no_more() {
        use EventType::{Fail, Info, Ok};
        let adds = [(Ok, 1), (Ok, 1), (Info, 1), (Fail, 1), (Ok, 5)];
        for (last, valid) in [(7, true), (8, true), (6, false), (9, false)] {
            let v = check(&history(&adds, last)).unwrap();
            assert_eq!(v.valid == Validity::Valid, valid, "final {last}: {v:?}");
        }
        let lost = check(&history(&adds, 6)).unwrap();
        assert_eq!(lost.anomalies[0].kind, "lost-increments");
        let phantom = check(&history(&adds, 9)).unwrap();
        assert_eq!(phantom.anomalies[0].kind, "phantom-increments");
        // Negative deltas widen the range downwards only when uncertain.
        assert!(check(&history(&[(Ok, 3), (Info, -2)], 1)).unwrap().valid == Validity::Valid);
        assert!(check(&history(&[(Ok, 3), (Ok, -2)], 3)).unwrap().valid == Validity::Invalid);
    }

    #[test]
    fn without_a_final_read_the_verdict_is_unknown() {
        let events = vec![
            Event::new(0, 0, EventType::Invoke, "add", json!(1)),
            Event::new(1, 0, EventType::Ok, "add", json!(1)),
        ];
        assert_eq!(check(&events).unwrap().valid, Validity::Unknown);
    }
}
