//! Set: no acknowledged add may be lost, no acknowledged remove undone.
//!
//! Operations: `add v` (integer, each element added at most once), `remove v` (of an
//! element whose add was acknowledged), and reads whose `ok` value is a list of integers.
//! The last `ok` read in the history is the final read (taken after healing). Against it:
//!
//! * `lost` (anomaly): an `ok` add missing from the final read, when no remove of the
//!   element was attempted;
//! * `resurrected` (anomaly): an element present in the final read although a remove of it
//!   was acknowledged before that read began;
//! * `unexpected` (anomaly): an element that no add ever attempted;
//! * `failed-present` (anomaly): an element whose every add failed (`fail` means it did not
//!   happen) yet is present;
//! * `duplicate` (anomaly): an element listed twice by the final read;
//! * `recovered` (counted in `stats`, not an anomaly): an `info` or pending add that is
//!   present — it happened, which is allowed.
//!
//! With no `ok` read the verdict is `unknown`. Adds acknowledged after the final read began are
//! not required to be present (concurrent with it, they may or may not be seen).

use std::collections::{BTreeMap, BTreeSet};

use crate::history::{final_read, pair_ops, Event, Outcome};
use crate::{Anomaly, CheckError, Validity, Verdict};

#[derive(Default)]
struct Attempts {
    ok: Vec<u64>,
    info: Vec<u64>,
    fail: Vec<u64>,
    /// Some `ok` add completed before the final read began, so the element must be present.
    required: bool,
}

/// Checks a set history.
pub fn check(events: &[Event]) -> Result<Verdict, CheckError> {
    let ops = pair_ops(events)?;
    let mut verdict = Verdict::new("set", ops.iter().filter(|o| o.f() != "setup").count());
    let Some((final_read, read_event)) = final_read(&ops)? else {
        verdict.valid = Validity::Unknown;
        verdict.note = Some("no ok read: nothing to check adds against".into());
        return Ok(verdict);
    };
    let list = read_event
        .value
        .as_array()
        .ok_or_else(|| CheckError::Malformed {
            index: read_event.index,
            message: format!(
                "final read value must be a list of integers, got {}",
                read_event.value
            ),
        })?;
    let mut present: BTreeMap<i64, usize> = BTreeMap::new();
    for v in list {
        let x = v.as_i64().ok_or_else(|| CheckError::Malformed {
            index: read_event.index,
            message: format!("final read holds a non-integer {v}"),
        })?;
        *present.entry(x).or_default() += 1;
    }
    // Per element: the adds attempted, and the removes (of elements already added).
    let mut adds: BTreeMap<i64, Attempts> = BTreeMap::new();
    let mut removes: BTreeMap<i64, Attempts> = BTreeMap::new();
    for op in &ops {
        let attempts = match op.f() {
            "add" => &mut adds,
            "remove" => &mut removes,
            _ => continue,
        };
        let v = op
            .invoke
            .value
            .as_i64()
            .ok_or_else(|| CheckError::Malformed {
                index: op.invoke.index,
                message: format!(
                    "{} value must be an integer, got {}",
                    op.f(),
                    op.invoke.value
                ),
            })?;
        let a = attempts.entry(v).or_default();
        let idx = op.invoke.index;
        match op.outcome() {
            Outcome::Ok => {
                a.ok.push(idx);
                // Only operations acknowledged before the final read began must show in it.
                if op
                    .completion_pos()
                    .is_some_and(|c| c < final_read.invoke_pos)
                {
                    a.required = true;
                }
            }
            Outcome::Info => a.info.push(idx),
            Outcome::Fail => a.fail.push(idx),
        }
    }
    let ri = read_event.index;
    let (mut ok, mut lost, mut recovered, mut unexpected) = (0u64, 0u64, 0u64, 0u64);
    let mut resurrected = 0u64;
    for (v, r) in &removes {
        if r.required && present.contains_key(v) {
            resurrected += 1;
            let mut ids = r.ok.clone();
            ids.push(ri);
            verdict.push(Anomaly::new(
                "resurrected",
                None,
                format!(
                    "remove of {v} was acknowledged (#{}) yet {v} is in the final read #{ri}",
                    r.ok[0]
                ),
                ids,
            ));
        }
    }
    for (v, a) in &adds {
        let here = present.contains_key(v);
        if !a.ok.is_empty() {
            ok += 1;
            if !here && a.required && !removes.contains_key(v) {
                lost += 1;
                let mut ids = a.ok.clone();
                ids.push(ri);
                verdict.push(Anomaly::new(
                    "lost",
                    None,
                    format!(
                        "add {v} was acknowledged (#{}) but is missing from the final read #{ri}",
                        a.ok[0]
                    ),
                    ids,
                ));
            }
        } else if here && !a.info.is_empty() {
            recovered += 1;
        } else if here {
            let mut ids = a.fail.clone();
            ids.push(ri);
            verdict.push(Anomaly::new(
                "failed-present",
                None,
                format!(
                    "add {v} failed (#{}) yet is present in the final read #{ri}",
                    a.fail[0]
                ),
                ids,
            ));
        }
    }
    for (v, n) in &present {
        if !adds.contains_key(v) {
            unexpected += 1;
            verdict.push(Anomaly::new(
                "unexpected",
                None,
                format!("final read #{ri} holds {v}, which no add attempted"),
                vec![ri],
            ));
        }
        if *n > 1 {
            verdict.push(Anomaly::new(
                "duplicate",
                None,
                format!("final read #{ri} lists {v} {n} times"),
                vec![ri],
            ));
        }
    }
    let present_set: BTreeSet<i64> = present.keys().copied().collect();
    verdict.stats.insert("attempted".into(), adds.len() as u64);
    verdict.stats.insert("ok_adds".into(), ok);
    verdict.stats.insert("lost".into(), lost);
    verdict.stats.insert(
        "removes".into(),
        removes.values().map(|r| r.ok.len() as u64).sum(),
    );
    verdict.stats.insert("resurrected".into(), resurrected);
    verdict.stats.insert("recovered".into(), recovered);
    verdict.stats.insert("unexpected".into(), unexpected);
    verdict
        .stats
        .insert("final_size".into(), present_set.len() as u64);
    verdict.window_around_first(events, 6);
    Ok(verdict)
}
