//! Bank, set, lock and watch checkers: one valid and one or more invalid histories each.

use concord_check::history::{Event, EventType};
use concord_check::{check, CheckOptions, Validity, Verdict, Workload};
use serde_json::{json, Value};

fn h(rows: &[(u64, &str, &str, Value)]) -> Vec<Event> {
    rows.iter()
        .enumerate()
        .map(|(i, (p, t, f, v))| {
            let kind = match *t {
                "invoke" => EventType::Invoke,
                "ok" => EventType::Ok,
                "fail" => EventType::Fail,
                _ => EventType::Info,
            };
            Event::new(i as u64, *p, kind, f, v.clone())
        })
        .collect()
}

fn run(w: Workload, events: &[Event]) -> Verdict {
    check(w, events, &CheckOptions::default()).unwrap()
}

fn kinds(v: &Verdict) -> Vec<&str> {
    v.anomalies.iter().map(|a| a.kind.as_str()).collect()
}

const N: Value = Value::Null;

fn bank(reads: &[Value]) -> Vec<Event> {
    let mut rows = vec![
        (
            0,
            "ok",
            "setup",
            json!({"accounts": {"a0": 10, "a1": 10, "a2": 0}}),
        ),
        (
            1,
            "invoke",
            "transfer",
            json!({"from": "a0", "to": "a2", "amount": 5}),
        ),
        (
            1,
            "ok",
            "transfer",
            json!({"from": "a0", "to": "a2", "amount": 5}),
        ),
        (
            2,
            "invoke",
            "transfer",
            json!({"from": "a1", "to": "a0", "amount": 3}),
        ),
        (
            2,
            "info",
            "transfer",
            json!({"from": "a1", "to": "a0", "amount": 3}),
        ),
    ];
    for r in reads {
        rows.push((3, "invoke", "read", N));
        rows.push((3, "ok", "read", r.clone()));
    }
    h(&rows)
}

#[test]
fn bank_valid() {
    let v = run(
        Workload::Bank,
        &bank(&[
            json!({"accounts": {"a0": 5, "a1": 10, "a2": 5}}),
            json!({"accounts": {"a0": 8, "a1": 7, "a2": 5}}),
        ]),
    );
    assert_eq!(v.valid, Validity::Valid, "{v:?}");
    assert_eq!(v.stats["ok_reads"], 2);
}

#[test]
fn bank_invalid_reads_are_each_reported() {
    let v = run(
        Workload::Bank,
        &bank(&[
            json!({"accounts": {"a0": 5, "a1": 10, "a2": 5}}),
            json!({"accounts": {"a0": 5, "a1": 7, "a2": 5}}),
            json!({"accounts": {"a0": -2, "a1": 17, "a2": 5}}),
            json!({"accounts": {"a0": 10, "a1": 10}}),
        ]),
    );
    assert_eq!(v.valid, Validity::Invalid);
    assert_eq!(
        kinds(&v),
        ["wrong-total", "negative-balance", "wrong-accounts"]
    );
    assert!(v.counterexample.is_some());
}

#[test]
fn bank_without_setup_is_unknown() {
    let events = h(&[
        (3, "invoke", "read", N),
        (3, "ok", "read", json!({"accounts": {}})),
    ]);
    assert_eq!(run(Workload::Bank, &events).valid, Validity::Unknown);
}

fn set(final_read: Value) -> Vec<Event> {
    h(&[
        (1, "invoke", "add", json!(1)),
        (1, "ok", "add", json!(1)),
        (2, "invoke", "add", json!(2)),
        (2, "info", "add", json!(2)),
        (3, "invoke", "add", json!(3)),
        (3, "fail", "add", json!(3)),
        (4, "invoke", "add", json!(4)),
        (4, "ok", "add", json!(4)),
        (5, "invoke", "read", N),
        (6, "invoke", "add", json!(5)),
        (6, "ok", "add", json!(5)),
        (5, "ok", "read", final_read),
    ])
}

#[test]
fn set_valid_counts_recovered() {
    // 5 was acknowledged only while the final read was running, so it may be missing.
    let v = run(Workload::Set, &set(json!([1, 2, 4])));
    assert_eq!(v.valid, Validity::Valid, "{v:?}");
    assert_eq!(v.stats["recovered"], 1);
    assert_eq!(v.stats["lost"], 0);
}

#[test]
fn set_invalid_reports_lost_unexpected_and_failed() {
    let v = run(Workload::Set, &set(json!([2, 3, 9, 9])));
    assert_eq!(v.valid, Validity::Invalid);
    let k = kinds(&v);
    assert_eq!(k.iter().filter(|k| **k == "lost").count(), 2, "{k:?}");
    assert!(k.contains(&"failed-present"), "{k:?}");
    assert!(k.contains(&"unexpected"), "{k:?}");
    assert!(k.contains(&"duplicate"), "{k:?}");
    assert_eq!(v.stats["lost"], 2);
    assert_eq!(v.stats["unexpected"], 1);
}

fn orset(final_read: Value) -> Vec<Event> {
    h(&[
        (1, "invoke", "add", json!(1)),
        (1, "ok", "add", json!(1)),
        (1, "invoke", "add", json!(2)),
        (1, "ok", "add", json!(2)),
        (2, "invoke", "add", json!(3)),
        (2, "ok", "add", json!(3)),
        // 1's remove acknowledged; 2's remove indeterminate; 3 kept.
        (1, "invoke", "remove", json!(1)),
        (1, "ok", "remove", json!(1)),
        (1, "invoke", "remove", json!(2)),
        (1, "info", "remove", json!(2)),
        (5, "invoke", "read", N),
        (5, "ok", "read", final_read),
    ])
}

#[test]
fn orset_valid_when_removed_members_are_gone_and_the_rest_kept() {
    // 2's remove may or may not have happened: either answer is valid.
    for read in [json!([3]), json!([2, 3])] {
        let v = run(Workload::ApOrSet, &orset(read));
        assert_eq!(v.valid, Validity::Valid, "{v:?}");
        assert_eq!((v.stats["removes"], v.stats["resurrected"]), (1, 0));
    }
}

#[test]
fn orset_invalid_reports_resurrected_and_lost() {
    let v = run(Workload::ApOrSet, &orset(json!([1, 2])));
    assert_eq!(v.valid, Validity::Invalid);
    let k = kinds(&v);
    assert_eq!(k, vec!["resurrected", "lost"], "1 came back, 3 was lost");
    assert_eq!(v.stats["resurrected"], 1);
}

fn lock(rows_after: &[(u64, &str, &str, Value)]) -> Vec<Event> {
    let mut rows = vec![
        (1, "invoke", "acquire", N),
        (1, "ok", "acquire", json!({"token": 1})),
        (1, "invoke", "write", json!({"token": 1, "seq": 0})),
        (1, "ok", "write", json!({"token": 1, "seq": 0})),
        (2, "invoke", "acquire", N),
        (2, "ok", "acquire", json!({"token": 2})),
        (2, "invoke", "write", json!({"token": 2, "seq": 1})),
        (2, "ok", "write", json!({"token": 2, "seq": 1})),
    ];
    rows.extend_from_slice(rows_after);
    h(&rows)
}

#[test]
fn lock_valid_with_rejected_stale_write() {
    let v = run(
        Workload::Lock,
        &lock(&[
            (1, "invoke", "write", json!({"token": 1, "seq": 2})),
            (1, "fail", "write", json!({"token": 1, "seq": 2})),
            (2, "invoke", "release", N),
            (2, "ok", "release", N),
        ]),
    );
    assert_eq!(v.valid, Validity::Valid, "{v:?}");
}

#[test]
fn lock_invalid_regression_and_duplicate_token() {
    let v = run(
        Workload::Lock,
        &lock(&[
            (1, "invoke", "write", json!({"token": 1, "seq": 2})),
            (1, "ok", "write", json!({"token": 1, "seq": 2})),
            (3, "invoke", "acquire", N),
            (3, "ok", "acquire", json!({"token": 2})),
        ]),
    );
    assert_eq!(v.valid, Validity::Invalid);
    assert_eq!(kinds(&v), ["duplicate-token", "token-regression"]);
}

fn watch(deliveries: &[Value]) -> Vec<Event> {
    let mut events = vec![
        Event::new(0, 1, EventType::Invoke, "write", json!(10)).with_key("k1"),
        Event::new(1, 1, EventType::Ok, "write", json!(10))
            .with_key("k1")
            .with_revision(2),
        Event::new(2, 1, EventType::Invoke, "write", json!(11)).with_key("k2"),
        Event::new(3, 1, EventType::Ok, "write", json!(11))
            .with_key("k2")
            .with_revision(3),
        Event::new(4, 1, EventType::Invoke, "write", json!(12)).with_key("k1"),
        Event::new(5, 1, EventType::Ok, "write", json!(12))
            .with_key("k1")
            .with_revision(4),
        // Outside the claimed range: not required.
        Event::new(6, 1, EventType::Invoke, "write", json!(13)).with_key("k1"),
        Event::new(7, 1, EventType::Ok, "write", json!(13))
            .with_key("k1")
            .with_revision(9),
    ];
    for d in deliveries {
        let i = events.len() as u64;
        events.push(Event::new(i, 9, EventType::Ok, "watch", d.clone()));
    }
    let i = events.len() as u64;
    events.push(Event::new(
        i,
        9,
        EventType::Ok,
        "watch-end",
        json!({"watcher": 0, "from_revision": 2, "to_revision": 5}),
    ));
    events
}

fn ev(k: &str, v: Value, r: i64) -> Value {
    json!({"key": k, "value": v, "revision": r})
}

#[test]
fn watch_valid() {
    let v = run(
        Workload::Watch,
        &watch(&[
            json!({"watcher": 0, "events": [ev("k1", json!(10), 2), ev("k2", json!("11"), 3)]}),
            json!({"watcher": 0, "events": [ev("k1", json!(12), 4)]}),
        ]),
    );
    assert_eq!(v.valid, Validity::Valid, "{v:?}");
    assert_eq!(v.stats["coverage_checks"], 3);
}

#[test]
fn watch_invalid_missing_duplicate_out_of_order_wrong_value() {
    let v = run(
        Workload::Watch,
        &watch(&[
            json!({"watcher": 0, "events": [ev("k2", json!(11), 3), ev("k1", json!(10), 2)]}),
            json!({"watcher": 0, "events": [ev("k2", json!(11), 3)]}),
        ]),
    );
    assert_eq!(v.valid, Validity::Invalid);
    let k = kinds(&v);
    assert!(k.contains(&"out-of-order"), "{k:?}");
    assert!(k.contains(&"duplicate"), "{k:?}");
    assert!(k.contains(&"missing"), "{k:?}");
    let v = run(
        Workload::Watch,
        &watch(&[json!({"watcher": 0, "events": [
            ev("k1", json!(10), 2), ev("k2", json!(11), 3), ev("k1", json!(99), 4)
        ]})]),
    );
    assert_eq!(kinds(&v), ["wrong-value"]);
}
