//! Reads at a consistency level: each read is checked against the guarantee it claims.
//!
//! Operations: `write` (a put of a unique integer; `ok` carries the write's revision) and
//! `read`, whose invocation value is `{"level": L, "check": C}` — `L` the level sent,
//! `C` the guarantee checked (equal, except in a negative control, which sends weaker
//! reads and checks the stronger guarantee) — and whose `ok` value is
//! `[value, mod_revision]` (`mod_revision` 0: no such key), with the response header's
//! revision in `revision`.
//!
//! The checks, per `C`, on every `ok` read of key `k` with `mod_revision` `m`:
//!
//! * `strong`: `m` ≥ the revision of every `ok` write of `k` completed before the read was
//!   invoked (a necessary condition of linearizability) — anomaly `stale-read`.
//! * `bounded=D` (`250ms`, `2s`, or milliseconds): `m` ≥ the revision of every `ok` write of
//!   `k` that completed more than `D` before the read was invoked (by `time_ns`, one clock)
//!   — anomaly `staler-than-bound`.
//! * `session=T` (`T` the session token the client sent: the highest revision its session
//!   had seen): the response header's revision ≥ `T` (`behind-session-token`); `m` ≥ the
//!   revision of the process's own earlier `ok` writes of `k` (`read-your-writes`) and ≥
//!   the `mod_revision` of its earlier `ok` reads of `k` (`monotonic-reads`).
//!
//! Writes are compared by revision, which the store assigns in commit order, so no search
//! is needed. A history with no read whose check could have failed is `unknown`.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::history::{pair_ops, Event, Op, Outcome};
use crate::{Anomaly, CheckError, Validity, Verdict};

/// The guarantee a read claims.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Claim {
    Strong,
    Bounded(u64),
    Session(i64),
}

fn parse_claim(s: &str) -> Option<Claim> {
    if s == "strong" {
        return Some(Claim::Strong);
    }
    if let Some(d) = s.strip_prefix("bounded=") {
        let ns = if let Some(ms) = d.strip_suffix("ms") {
            ms.parse::<u64>().ok()? * 1_000_000
        } else if let Some(secs) = d.strip_suffix('s') {
            secs.parse::<u64>().ok()? * 1_000_000_000
        } else {
            d.parse::<u64>().ok()? * 1_000_000
        };
        return Some(Claim::Bounded(ns));
    }
    s.strip_prefix("session=")?.parse().ok().map(Claim::Session)
}

fn malformed(index: u64, message: String) -> CheckError {
    CheckError::Malformed { index, message }
}

struct Write {
    rev: i64,
    process: u64,
    completed_pos: usize,
    completed_ns: u64,
    index: u64,
}

/// Checks a reads history.
pub fn check(events: &[Event]) -> Result<Verdict, CheckError> {
    let ops = pair_ops(events)?;
    let mut verdict = Verdict::new("reads", ops.len());
    // Acknowledged writes per key, in completion order.
    let mut writes: BTreeMap<&str, Vec<Write>> = BTreeMap::new();
    for op in ops.iter().filter(|o| o.f() == "write") {
        if let (Outcome::Ok, Some((done, pos))) = (op.outcome(), op.completion) {
            let rev = done
                .revision
                .ok_or_else(|| malformed(done.index, "ok write without a revision".into()))?;
            writes.entry(op.key()).or_default().push(Write {
                rev,
                process: op.invoke.process,
                completed_pos: pos,
                completed_ns: done.time_ns,
                index: done.index,
            });
        }
    }
    for w in writes.values_mut() {
        w.sort_by_key(|w| w.completed_pos);
    }
    let mut checked = 0u64;
    let mut constrained = 0u64;
    // (process, key) -> highest mod_revision an earlier ok read of the process returned.
    let mut seen: BTreeMap<(u64, &str), (i64, u64)> = BTreeMap::new();
    let reads: Vec<&Op<'_>> = ops.iter().filter(|o| o.f() == "read").collect();
    for op in reads {
        let (Outcome::Ok, Some(done)) = (op.outcome(), op.completed()) else {
            continue;
        };
        let claim = op.invoke.value["check"]
            .as_str()
            .and_then(parse_claim)
            .ok_or_else(|| {
                malformed(
                    op.invoke.index,
                    format!("read without a valid check: {}", op.invoke.value),
                )
            })?;
        let m = match &done.value {
            Value::Array(a) if a.len() == 2 => a[1].as_i64(),
            _ => None,
        }
        .ok_or_else(|| malformed(done.index, format!("read value {}", done.value)))?;
        let key = op.key();
        let process = op.invoke.process;
        checked += 1;
        let key_writes = writes.get(key).map(Vec::as_slice).unwrap_or(&[]);
        let stale = |kind: &str, what: String, need: i64, other: u64| {
            Anomaly::new(
                kind,
                Some(key),
                format!(
                    "read #{} ({}) returned mod_revision {m}; {what} needs at least {need}",
                    op.invoke.index, op.invoke.value
                ),
                vec![other, op.invoke.index, done.index],
            )
        };
        let required = |pred: &dyn Fn(&Write) -> bool| {
            key_writes
                .iter()
                .filter(|w| pred(w))
                .max_by_key(|w| w.rev)
                .map(|w| (w.rev, w.index))
        };
        match claim {
            Claim::Strong => {
                if let Some((need, at)) = required(&|w| w.completed_pos < op.invoke_pos) {
                    constrained += 1;
                    if m < need {
                        verdict.push(stale(
                            "stale-read",
                            format!("write #{at}, acknowledged before"),
                            need,
                            at,
                        ));
                    }
                }
            }
            Claim::Bounded(ns) => {
                let cutoff = op.invoke.time_ns.saturating_sub(ns);
                if let Some((need, at)) = required(&|w| w.completed_ns < cutoff) {
                    constrained += 1;
                    if m < need {
                        verdict.push(stale(
                            "staler-than-bound",
                            format!("write #{at}, acknowledged longer than the bound before,"),
                            need,
                            at,
                        ));
                    }
                }
            }
            Claim::Session(token) => {
                if token > 0 {
                    constrained += 1;
                }
                let header = done.revision.unwrap_or(0);
                if header < token {
                    verdict.push(Anomaly::new(
                        "behind-session-token",
                        Some(key),
                        format!(
                            "read #{} was served at revision {header}, below its session token \
                             {token}",
                            op.invoke.index
                        ),
                        vec![op.invoke.index, done.index],
                    ));
                }
                let own = required(&|w| w.process == process && w.completed_pos < op.invoke_pos);
                if let Some((need, at)) = own {
                    if m < need {
                        verdict.push(stale(
                            "read-your-writes",
                            format!("the session's write #{at}"),
                            need,
                            at,
                        ));
                    }
                }
                if let Some(&(before, at)) = seen.get(&(process, key)) {
                    if m < before {
                        verdict.push(stale(
                            "monotonic-reads",
                            format!("the session's earlier read #{at}"),
                            before,
                            at,
                        ));
                    }
                }
            }
        }
        let e = seen.entry((process, key)).or_insert((m, done.index));
        if m > e.0 {
            *e = (m, done.index);
        }
    }
    verdict.stats.insert("reads_checked".into(), checked);
    verdict
        .stats
        .insert("reads_constrained".into(), constrained);
    verdict.stats.insert(
        "ok_writes".into(),
        writes.values().map(|w| w.len() as u64).sum(),
    );
    if verdict.valid == Validity::Valid && constrained == 0 {
        verdict.valid = Validity::Unknown;
        verdict.note = Some("no read had a write it was required to see".into());
    }
    verdict.window_around_first(events, 6);
    Ok(verdict)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::history::EventType;

    struct H(Vec<Event>);

    impl H {
        fn at(&mut self, ns: u64, p: u64, kind: EventType, f: &str, key: &str, v: Value) {
            let mut e = Event::new(self.0.len() as u64, p, kind, f, v).with_key(key);
            e.time_ns = ns;
            self.0.push(e);
        }
        fn write(&mut self, t: u64, p: u64, key: &str, rev: i64) {
            self.at(t, p, EventType::Invoke, "write", key, json!(rev));
            self.at(t + 1, p, EventType::Ok, "write", key, json!(rev));
            self.0.last_mut().unwrap().revision = Some(rev);
        }
        fn read(&mut self, t: u64, p: u64, key: &str, check: &str, m: i64, header: i64) {
            let v = json!({"level": check, "check": check});
            self.at(t, p, EventType::Invoke, "read", key, v);
            self.at(t + 1, p, EventType::Ok, "read", key, json!([m, m]));
            self.0.last_mut().unwrap().revision = Some(header);
        }
    }

    fn kinds(h: &H) -> (Validity, Vec<String>) {
        let v = check(&h.0).unwrap();
        (
            v.valid,
            v.anomalies.iter().map(|a| a.kind.clone()).collect(),
        )
    }

    const MS: u64 = 1_000_000;

    #[test]
    fn bounded_reads_may_lag_only_by_the_bound() {
        let mut h = H(Vec::new());
        h.write(0, 1, "k", 5);
        h.write(400 * MS, 1, "k", 7);
        // 300 ms after the second write, within a 500 ms bound: revision 5 is enough.
        h.read(700 * MS, 2, "k", "bounded=500ms", 5, 7);
        assert_eq!(kinds(&h), (Validity::Valid, vec![]));
        // 600 ms after it, revision 7 is required.
        h.read(1001 * MS, 2, "k", "bounded=500ms", 5, 7);
        assert_eq!(kinds(&h).1, vec!["staler-than-bound"]);
    }

    #[test]
    fn session_reads_see_their_own_writes_and_never_go_back() {
        let mut h = H(Vec::new());
        h.write(0, 1, "k", 5);
        h.read(MS, 1, "k", "session=5", 5, 9);
        h.read(2 * MS, 2, "k", "session=0", 0, 3); // another session may lag
        assert_eq!(kinds(&h), (Validity::Valid, vec![]));
        h.read(3 * MS, 1, "k", "session=5", 4, 4);
        assert_eq!(
            kinds(&h).1,
            vec![
                "behind-session-token",
                "read-your-writes",
                "monotonic-reads"
            ]
        );
    }

    #[test]
    fn strong_reads_see_every_earlier_acknowledged_write() {
        let mut h = H(Vec::new());
        h.write(0, 1, "k", 5);
        h.read(MS, 2, "k", "strong", 5, 5);
        assert_eq!(kinds(&h), (Validity::Valid, vec![]));
        h.read(2 * MS, 2, "k", "strong", 0, 5);
        assert_eq!(kinds(&h).1, vec!["stale-read"]);
    }

    #[test]
    fn nothing_to_check_is_unknown_and_garbage_is_an_error() {
        let mut h = H(Vec::new());
        h.read(0, 1, "k", "strong", 0, 1);
        assert_eq!(kinds(&h).0, Validity::Unknown);
        let mut h = H(Vec::new());
        h.read(0, 1, "k", "sometimes", 0, 1);
        assert!(check(&h.0).is_err());
    }
}
