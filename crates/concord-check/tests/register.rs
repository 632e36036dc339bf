//! Hand-written register histories: classic linearizable and non-linearizable cases.

use concord_check::history::{Event, EventType};
use concord_check::{check, CheckError, CheckOptions, Validity, Verdict, Workload};
use serde_json::{json, Value};

/// Builds a history from (process, type, f, value) rows on key "x".
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
            Event::new(i as u64, *p, kind, f, v.clone()).with_key("x")
        })
        .collect()
}

fn verdict(events: &[Event]) -> Verdict {
    check(Workload::Register, events, &CheckOptions::default()).unwrap()
}

fn valid(rows: &[(u64, &str, &str, Value)]) -> Validity {
    verdict(&h(rows)).valid
}

const N: Value = Value::Null;

#[test]
fn sequential_history_is_linearizable() {
    assert_eq!(
        valid(&[
            (1, "invoke", "read", N),
            (1, "ok", "read", N),
            (1, "invoke", "write", json!(1)),
            (1, "ok", "write", json!(1)),
            (2, "invoke", "read", N),
            (2, "ok", "read", json!(1)),
        ]),
        Validity::Valid
    );
}

#[test]
fn initial_state_is_absent() {
    assert_eq!(
        valid(&[(1, "invoke", "read", N), (1, "ok", "read", json!(5))]),
        Validity::Invalid
    );
}

#[test]
fn stale_read_after_completed_write_is_not_linearizable() {
    let events = h(&[
        (1, "invoke", "write", json!(1)),
        (1, "ok", "write", json!(1)),
        (1, "invoke", "write", json!(2)),
        (1, "ok", "write", json!(2)),
        (2, "invoke", "read", N),
        (2, "ok", "read", json!(1)),
    ]);
    let v = verdict(&events);
    assert_eq!(v.valid, Validity::Invalid);
    assert_eq!(v.anomalies.len(), 1);
    assert_eq!(v.anomalies[0].key.as_deref(), Some("x"));
    assert!(v.anomalies[0].events.contains(&4), "{:?}", v.anomalies[0]);
    let window = v.counterexample.expect("counterexample");
    assert!(window.iter().any(|e| e.index == 5), "{window:?}");
    assert!(
        v.anomalies[0].message.contains("leaves the register at 2"),
        "{}",
        v.anomalies[0].message
    );
}

#[test]
fn reads_concurrent_with_a_write_may_see_either_value() {
    // Herlihy & Wing: a read overlapping write(1) may return nil or 1, in any mix, as long
    // as no read that starts after another read saw 1 sees nil again.
    assert_eq!(
        valid(&[
            (1, "invoke", "write", json!(1)),
            (2, "invoke", "read", N),
            (3, "invoke", "read", N),
            (2, "ok", "read", json!(1)),
            (3, "ok", "read", N),
            (1, "ok", "write", json!(1)),
        ]),
        Validity::Valid
    );
}

#[test]
fn new_old_inversion_is_not_linearizable() {
    // Read 1 completes, then a later read (still during the write) returns the old nil.
    assert_eq!(
        valid(&[
            (1, "invoke", "write", json!(1)),
            (2, "invoke", "read", N),
            (2, "ok", "read", json!(1)),
            (3, "invoke", "read", N),
            (3, "ok", "read", N),
            (1, "ok", "write", json!(1)),
        ]),
        Validity::Invalid
    );
}

#[test]
fn concurrent_writes_order_is_fixed_once_observed() {
    // Two concurrent writes; readers after both complete must agree on the winner.
    let base = [
        (1, "invoke", "write", json!(1)),
        (2, "invoke", "write", json!(2)),
        (1, "ok", "write", json!(1)),
        (2, "ok", "write", json!(2)),
    ];
    let mut agree = base.to_vec();
    agree.extend([
        (3, "invoke", "read", N),
        (3, "ok", "read", json!(1)),
        (4, "invoke", "read", N),
        (4, "ok", "read", json!(1)),
    ]);
    assert_eq!(valid(&agree), Validity::Valid);
    let mut disagree = base.to_vec();
    disagree.extend([
        (3, "invoke", "read", N),
        (3, "ok", "read", json!(1)),
        (4, "invoke", "read", N),
        (4, "ok", "read", json!(2)),
    ]);
    assert_eq!(valid(&disagree), Validity::Invalid);
    // Concurrent readers may each see a different winner while the writes are in flight.
    assert_eq!(
        valid(&[
            (1, "invoke", "write", json!(1)),
            (2, "invoke", "write", json!(2)),
            (3, "invoke", "read", N),
            (4, "invoke", "read", N),
            (3, "ok", "read", json!(1)),
            (4, "ok", "read", json!(2)),
            (1, "ok", "write", json!(1)),
            (2, "ok", "write", json!(2)),
        ]),
        Validity::Valid
    );
    // ...but 2, then 1, then 2 again needs a third write.
    assert_eq!(
        valid(&[
            (1, "invoke", "write", json!(1)),
            (2, "invoke", "write", json!(2)),
            (3, "invoke", "read", N),
            (3, "ok", "read", json!(2)),
            (4, "invoke", "read", N),
            (4, "ok", "read", json!(1)),
            (5, "invoke", "read", N),
            (5, "ok", "read", json!(2)),
            (1, "ok", "write", json!(1)),
            (2, "ok", "write", json!(2)),
        ]),
        Validity::Invalid
    );
}

#[test]
fn info_write_may_be_assumed_applied() {
    assert_eq!(
        valid(&[
            (1, "invoke", "write", json!(1)),
            (1, "ok", "write", json!(1)),
            (1, "invoke", "write", json!(2)),
            (1, "info", "write", json!(2)),
            (2, "invoke", "read", N),
            (2, "ok", "read", json!(2)),
        ]),
        Validity::Valid
    );
}

#[test]
fn info_write_may_be_assumed_not_applied() {
    assert_eq!(
        valid(&[
            (1, "invoke", "write", json!(1)),
            (1, "ok", "write", json!(1)),
            (1, "invoke", "write", json!(2)),
            (1, "info", "write", json!(2)),
            (2, "invoke", "read", N),
            (2, "ok", "read", json!(1)),
        ]),
        Validity::Valid
    );
}

#[test]
fn info_write_may_apply_long_after_the_client_gave_up() {
    assert_eq!(
        valid(&[
            (1, "invoke", "write", json!(1)),
            (1, "ok", "write", json!(1)),
            (1, "invoke", "write", json!(2)),
            (1, "info", "write", json!(2)),
            (2, "invoke", "read", N),
            (2, "ok", "read", json!(1)),
            (2, "invoke", "read", N),
            (2, "ok", "read", json!(2)),
        ]),
        Validity::Valid
    );
}

#[test]
fn info_write_applies_at_most_once() {
    assert_eq!(
        valid(&[
            (1, "invoke", "write", json!(1)),
            (1, "ok", "write", json!(1)),
            (1, "invoke", "write", json!(2)),
            (1, "info", "write", json!(2)),
            (2, "invoke", "read", N),
            (2, "ok", "read", json!(2)),
            (2, "invoke", "read", N),
            (2, "ok", "read", json!(1)),
        ]),
        Validity::Invalid
    );
}

#[test]
fn pending_invoke_at_end_counts_as_info() {
    assert_eq!(
        valid(&[
            (1, "invoke", "write", json!(7)),
            (2, "invoke", "read", N),
            (2, "ok", "read", json!(7)),
        ]),
        Validity::Valid
    );
}

#[test]
fn failed_write_never_happened() {
    assert_eq!(
        valid(&[
            (1, "invoke", "write", json!(1)),
            (1, "fail", "write", json!(1)),
            (2, "invoke", "read", N),
            (2, "ok", "read", json!(1)),
        ]),
        Validity::Invalid
    );
}

#[test]
fn cas_semantics() {
    let prefix = [
        (1, "invoke", "write", json!(1)),
        (1, "ok", "write", json!(1)),
    ];
    let with = |rest: &[(u64, &str, &str, Value)]| {
        let mut rows = prefix.to_vec();
        rows.extend_from_slice(rest);
        valid(&rows)
    };
    // ok cas swaps.
    assert_eq!(
        with(&[
            (2, "invoke", "cas", json!([1, 2])),
            (2, "ok", "cas", json!([1, 2])),
            (3, "invoke", "read", N),
            (3, "ok", "read", json!(2)),
        ]),
        Validity::Valid
    );
    // fail cas did not happen: the register still holds 1.
    assert_eq!(
        with(&[
            (2, "invoke", "cas", json!([1, 2])),
            (2, "fail", "cas", json!([1, 2])),
            (3, "invoke", "read", N),
            (3, "ok", "read", json!(2)),
        ]),
        Validity::Invalid
    );
    assert_eq!(
        with(&[
            (2, "invoke", "cas", json!([3, 2])),
            (2, "fail", "cas", json!([3, 2])),
            (3, "invoke", "read", N),
            (3, "ok", "read", json!(1)),
        ]),
        Validity::Valid
    );
    // ok cas with the wrong expected value cannot have happened.
    assert_eq!(
        with(&[
            (2, "invoke", "cas", json!([5, 6])),
            (2, "ok", "cas", json!([5, 6])),
        ]),
        Validity::Invalid
    );
    // info cas: may have swapped if the compare could succeed...
    assert_eq!(
        with(&[
            (2, "invoke", "cas", json!([1, 2])),
            (2, "info", "cas", json!([1, 2])),
            (3, "invoke", "read", N),
            (3, "ok", "read", json!(2)),
        ]),
        Validity::Valid
    );
    // ...but not if it could not.
    assert_eq!(
        with(&[
            (2, "invoke", "cas", json!([3, 4])),
            (2, "info", "cas", json!([3, 4])),
            (3, "invoke", "read", N),
            (3, "ok", "read", json!(4)),
        ]),
        Validity::Invalid
    );
    // cas on an absent key.
    assert_eq!(
        valid(&[
            (2, "invoke", "cas", json!([null, 4])),
            (2, "ok", "cas", json!([null, 4])),
            (3, "invoke", "read", N),
            (3, "ok", "read", json!(4)),
        ]),
        Validity::Valid
    );
}

#[test]
fn keys_are_checked_independently() {
    let mut events = h(&[
        (1, "invoke", "write", json!(1)),
        (1, "ok", "write", json!(1)),
        (2, "invoke", "read", N),
        (2, "ok", "read", json!(1)),
    ]);
    // On key y, read 1 although y was never written.
    let mut y = h(&[(3, "invoke", "read", N), (3, "ok", "read", json!(1))]);
    for (i, e) in y.iter_mut().enumerate() {
        e.key = Some("y".into());
        e.index = 10 + i as u64;
    }
    events.extend(y);
    let v = verdict(&events);
    assert_eq!(v.valid, Validity::Invalid);
    assert_eq!(v.anomalies.len(), 1);
    assert_eq!(v.anomalies[0].key.as_deref(), Some("y"));
    assert_eq!(v.stats["keys"], 2);
}

#[test]
fn exhausted_state_budget_is_unknown_never_valid() {
    let events = h(&[
        (1, "invoke", "write", json!(1)),
        (2, "invoke", "write", json!(2)),
        (1, "ok", "write", json!(1)),
        (2, "ok", "write", json!(2)),
        (3, "invoke", "read", N),
        (3, "ok", "read", json!(2)),
    ]);
    let tight = CheckOptions {
        max_states: 1,
        ..CheckOptions::default()
    };
    let v = check(Workload::Register, &events, &tight).unwrap();
    assert_eq!(v.valid, Validity::Unknown);
    assert!(v.note.unwrap().contains("state budget"));
    assert_eq!(verdict(&events).valid, Validity::Valid);
}

#[test]
fn malformed_values_are_errors() {
    let events = h(&[
        (1, "invoke", "write", json!("one")),
        (1, "ok", "write", json!("one")),
    ]);
    let err = check(Workload::Register, &events, &CheckOptions::default()).unwrap_err();
    assert!(
        matches!(err, CheckError::Malformed { index: 0, .. }),
        "{err}"
    );
    let events = h(&[(1, "invoke", "incr", json!(1)), (1, "ok", "incr", json!(1))]);
    assert!(check(Workload::Register, &events, &CheckOptions::default()).is_err());
}
