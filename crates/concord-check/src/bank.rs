//! Bank: transfers between accounts must conserve money.
//!
//! The first `ok` event with `f == "setup"` carries `{"accounts": {"a0": 10, ...}}`, the
//! initial balances; their sum is the total. Every `ok` read (`f == "read"`, value
//! `{"accounts": {...}}`, a snapshot of all balances) must
//!
//! * name exactly the setup's accounts,
//! * sum to the total,
//! * have no negative balance.
//!
//! Each bad read is one anomaly per violated rule. Transfers themselves (ok, fail or info) are
//! not checked: under snapshot isolation any interleaving of them conserves the total, which
//! is exactly what the reads test. A history with no setup event is `unknown`.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::history::{pair_ops, Event, EventType, Outcome};
use crate::{Anomaly, CheckError, Validity, Verdict};

fn balances(e: &Event) -> Result<BTreeMap<String, i64>, CheckError> {
    let accounts = e
        .value
        .get("accounts")
        .and_then(Value::as_object)
        .ok_or_else(|| CheckError::Malformed {
            index: e.index,
            message: format!("{} value must be {{\"accounts\": {{...}}}}", e.f),
        })?;
    accounts
        .iter()
        .map(|(k, v)| {
            v.as_i64()
                .map(|b| (k.clone(), b))
                .ok_or_else(|| CheckError::Malformed {
                    index: e.index,
                    message: format!("balance of {k} is not an integer: {v}"),
                })
        })
        .collect()
}

/// Checks a bank history.
pub fn check(events: &[Event]) -> Result<Verdict, CheckError> {
    let ops = pair_ops(events)?;
    let mut verdict = Verdict::new("bank", ops.iter().filter(|o| o.f() != "setup").count());
    let Some(setup) = events
        .iter()
        .find(|e| e.f == "setup" && e.kind == EventType::Ok)
    else {
        verdict.valid = Validity::Unknown;
        verdict.note = Some("no ok setup event: initial balances unknown".into());
        return Ok(verdict);
    };
    let initial = balances(setup)?;
    let total: i64 = initial.values().sum();
    verdict
        .stats
        .insert("accounts".into(), initial.len() as u64);
    let mut reads = 0u64;
    for op in &ops {
        if op.f() != "read" || op.outcome() != Outcome::Ok {
            continue;
        }
        let Some(done) = op.completed() else { continue };
        reads += 1;
        let seen = balances(done)?;
        let ids = vec![op.invoke.index, done.index];
        let sum: i128 = seen.values().map(|&b| i128::from(b)).sum();
        if sum != i128::from(total) {
            verdict.push(Anomaly::new(
                "wrong-total",
                None,
                format!("read at #{} sums to {sum}, expected {total}", done.index),
                ids.clone(),
            ));
        }
        let negative: Vec<String> = seen
            .iter()
            .filter(|(_, &b)| b < 0)
            .map(|(k, b)| format!("{k}={b}"))
            .collect();
        if !negative.is_empty() {
            verdict.push(Anomaly::new(
                "negative-balance",
                None,
                format!(
                    "read at #{} has negative balances: {}",
                    done.index,
                    negative.join(", ")
                ),
                ids.clone(),
            ));
        }
        if seen.keys().ne(initial.keys()) {
            let missing: Vec<&String> = initial.keys().filter(|k| !seen.contains_key(*k)).collect();
            let extra: Vec<&String> = seen.keys().filter(|k| !initial.contains_key(*k)).collect();
            verdict.push(Anomaly::new(
                "wrong-accounts",
                None,
                format!(
                    "read at #{} has the wrong accounts: missing {missing:?}, unexpected {extra:?}",
                    done.index
                ),
                ids,
            ));
        }
    }
    verdict.stats.insert("ok_reads".into(), reads);
    verdict.stats.insert("total".into(), total.max(0) as u64);
    verdict.window_around_first(events, 6);
    Ok(verdict)
}
