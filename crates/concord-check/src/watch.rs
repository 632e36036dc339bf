//! Watch: every watcher sees writes in order, once, and all of them over the range it claims.
//!
//! Events (deliveries need no invocation, so this checker reads events, not paired ops):
//!
//! * `write` `ok` with an integer `value`, a `key` and the header `revision`;
//! * `watch` `ok` with value `{"watcher": w, "events": [{"key", "value", "revision"}, ...]}`,
//!   delivered in order per watcher (`w` may be any JSON scalar);
//! * `watch-end` `ok` with value `{"watcher": w, "from_revision": r0, "to_revision": r1}`: the
//!   watcher claims to have seen everything in `[r0, r1]`. An optional `"prefix"` (or `"key"`)
//!   in that value restricts the claim to keys with that prefix (or that exact key).
//!
//! Per watcher:
//!
//! * `out-of-order`: an event's revision is lower than the previous event's. Equal revisions
//!   are allowed for different keys (one etcd transaction touching several keys);
//! * `duplicate`: the same (key, revision) delivered twice;
//! * for every `ok` write whose revision lies in a claimed range (and matches its key filter):
//!   `missing` if the watcher never delivered (key, revision), `wrong-value` if it delivered
//!   another value. A value delivered as a string equal to the written integer's decimal
//!   form counts as equal.
//!
//! Limits: writes that are `info` may or may not appear and are not checked; a watcher with
//! no `watch-end` is only checked for order and duplicates (counted in `stats`).

use std::collections::{BTreeMap, HashMap, HashSet};

use serde_json::Value;

use crate::history::{Event, EventType};
use crate::{Anomaly, CheckError, Verdict};

fn watcher_id(e: &Event) -> Result<String, CheckError> {
    match e.value.get("watcher") {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(v @ (Value::Number(_) | Value::Bool(_))) => Ok(v.to_string()),
        _ => Err(CheckError::Malformed {
            index: e.index,
            message: format!(
                "{} value must hold a scalar \"watcher\", got {}",
                e.f, e.value
            ),
        }),
    }
}

fn field_i64(e: &Event, v: &Value, name: &str) -> Result<i64, CheckError> {
    v.get(name)
        .and_then(Value::as_i64)
        .ok_or_else(|| CheckError::Malformed {
            index: e.index,
            message: format!("{} needs an integer \"{name}\", got {v}", e.f),
        })
}

fn same_value(written: &Value, seen: &Value) -> bool {
    written == seen
        || match (written, seen) {
            (Value::Number(n), Value::String(s)) => n.to_string() == *s,
            _ => false,
        }
}

struct Delivered {
    value: Value,
    event_index: u64,
    count: usize,
}

struct End {
    from: i64,
    to: i64,
    filter: Option<(bool, String)>, // (exact, key-or-prefix)
    index: u64,
}

/// Checks a watch history.
pub fn check(events: &[Event]) -> Result<Verdict, CheckError> {
    // (key, revision) -> (value, completion index)
    let mut writes: Vec<(&str, i64, &Value, u64)> = Vec::new();
    let mut unrevisioned = 0u64;
    let mut streams: BTreeMap<String, HashMap<(String, i64), Delivered>> = BTreeMap::new();
    let mut last_rev: HashMap<String, i64> = HashMap::new();
    let mut ends: BTreeMap<String, Vec<End>> = BTreeMap::new();
    let mut batches = 0usize;
    let mut delivered_total = 0u64;
    let mut anomalies: Vec<Anomaly> = Vec::new();
    for e in events {
        if e.kind != EventType::Ok {
            continue;
        }
        match e.f.as_str() {
            "write" => match e.revision {
                Some(r) => writes.push((e.key.as_deref().unwrap_or(""), r, &e.value, e.index)),
                None => unrevisioned += 1,
            },
            "watch" => {
                batches += 1;
                let w = watcher_id(e)?;
                let list = e
                    .value
                    .get("events")
                    .and_then(Value::as_array)
                    .ok_or_else(|| CheckError::Malformed {
                        index: e.index,
                        message: format!("watch value needs an \"events\" list, got {}", e.value),
                    })?;
                let stream = streams.entry(w.clone()).or_default();
                for ev in list {
                    delivered_total += 1;
                    let r = field_i64(e, ev, "revision")?;
                    let k = ev
                        .get("key")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_string();
                    let value = ev.get("value").cloned().unwrap_or(Value::Null);
                    if let Some(&prev) = last_rev.get(&w) {
                        if r < prev {
                            anomalies.push(Anomaly::new(
                                "out-of-order",
                                Some(&k),
                                format!("watcher {w} delivered revision {r} after revision {prev} (#{})", e.index),
                                vec![e.index],
                            ));
                        }
                    }
                    last_rev.insert(w.clone(), r);
                    let d = stream.entry((k.clone(), r)).or_insert(Delivered {
                        value,
                        event_index: e.index,
                        count: 0,
                    });
                    d.count += 1;
                    if d.count == 2 {
                        anomalies.push(Anomaly::new(
                            "duplicate",
                            Some(&k),
                            format!("watcher {w} delivered key {k:?} at revision {r} twice (#{} and #{})", d.event_index, e.index),
                            vec![d.event_index, e.index],
                        ));
                    }
                }
            }
            "watch-end" => {
                let w = watcher_id(e)?;
                let from = field_i64(e, &e.value, "from_revision")?;
                let to = field_i64(e, &e.value, "to_revision")?;
                let filter = match (e.value.get("prefix"), e.value.get("key")) {
                    (Some(Value::String(p)), _) => Some((false, p.clone())),
                    (_, Some(Value::String(k))) => Some((true, k.clone())),
                    _ => None,
                };
                ends.entry(w).or_default().push(End {
                    from,
                    to,
                    filter,
                    index: e.index,
                });
            }
            _ => {}
        }
    }
    let mut checked = 0u64;
    let mut without_end = 0u64;
    let empty = HashMap::new();
    let all: HashSet<&String> = streams.keys().chain(ends.keys()).collect();
    let mut watchers: Vec<&String> = all.into_iter().collect();
    watchers.sort();
    for w in watchers {
        let stream = streams.get(w).unwrap_or(&empty);
        let Some(claims) = ends.get(w) else {
            without_end += 1;
            continue;
        };
        for end in claims {
            for &(k, r, v, wi) in &writes {
                if r < end.from || r > end.to {
                    continue;
                }
                match &end.filter {
                    Some((true, key)) if k != key => continue,
                    Some((false, prefix)) if !k.starts_with(prefix.as_str()) => continue,
                    _ => {}
                }
                checked += 1;
                match stream.get(&(k.to_string(), r)) {
                    None => anomalies.push(Anomaly::new(
                        "missing",
                        Some(k),
                        format!(
                            "watcher {w} claims [{}, {}] (#{}) but never delivered the write of {v} to {k:?} at revision {r} (#{wi})",
                            end.from, end.to, end.index
                        ),
                        vec![wi, end.index],
                    )),
                    Some(d) if !same_value(v, &d.value) => anomalies.push(Anomaly::new(
                        "wrong-value",
                        Some(k),
                        format!(
                            "watcher {w} delivered {} for {k:?} at revision {r} (#{}), but {v} was written (#{wi})",
                            d.value, d.event_index
                        ),
                        vec![wi, d.event_index],
                    )),
                    Some(_) => {}
                }
            }
        }
    }
    let mut verdict = Verdict::new("watch", writes.len() + batches);
    for a in anomalies {
        verdict.push(a);
    }
    verdict
        .stats
        .insert("ok_writes".into(), writes.len() as u64);
    verdict
        .stats
        .insert("unrevisioned_writes".into(), unrevisioned);
    verdict.stats.insert("watch_batches".into(), batches as u64);
    verdict
        .stats
        .insert("delivered_events".into(), delivered_total);
    verdict.stats.insert("coverage_checks".into(), checked);
    verdict
        .stats
        .insert("watchers_without_end".into(), without_end);
    verdict.window_around_first(events, 6);
    Ok(verdict)
}
