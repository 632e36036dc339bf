//! Scenario tests of the write and read requests, then property tests that play random
//! event scripts (acks, answers, failures, ticks, from targets and strangers alike) and
//! check every guarantee of the module on what comes out.

use std::collections::BTreeSet;

use proptest::prelude::*;

use super::*;
use crate::crdt::GCounter;

const T0: Duration = Duration::from_secs(100);
const TIMEOUT: Duration = Duration::from_secs(1);

fn n(i: u64) -> NodeId {
    NodeId(i)
}

fn nodes(ids: &[u64]) -> Vec<NodeId> {
    ids.iter().copied().map(NodeId).collect()
}

fn counter(entries: &[(u64, u64)]) -> GCounter {
    let mut c = GCounter::new();
    for &(node, by) in entries {
        c.increment(n(node), by);
    }
    c
}

fn writes(actions: &[WriteAction]) -> Vec<(NodeId, Option<NodeId>)> {
    actions
        .iter()
        .filter_map(|a| match a {
            WriteAction::Write { to, hint_for } => Some((*to, *hint_for)),
            _ => None,
        })
        .collect()
}

fn kept(actions: &[WriteAction]) -> Vec<NodeId> {
    actions
        .iter()
        .filter_map(|a| match a {
            WriteAction::KeepHint { owner } => Some(*owner),
            _ => None,
        })
        .collect()
}

#[test]
fn an_owner_no_write_reached_is_kept_as_a_hint_once_the_write_settles() {
    // Three owners, no fallback: owner 3 fails, the write succeeds on 1 and 2.
    let (mut w, _) = WriteRequest::start(2, &nodes(&[1, 2, 3]), &[], |_| true, T0, TIMEOUT);
    assert!(w.on_ack(n(1)).is_empty());
    let out = w.on_ack(n(2));
    assert!(matches!(out.as_slice(), [WriteAction::Reply(Ok(_))]));
    assert!(!w.is_settled(), "owner 3 has not answered yet");
    assert_eq!(w.on_failure(n(3)), [WriteAction::KeepHint { owner: n(3) }]);
    assert!(w.is_settled());
    assert!(w.on_tick(T0 + TIMEOUT).is_empty(), "settled once");

    // Owner 2 never answers: the deadline settles the write.
    let (mut w, _) = WriteRequest::start(2, &nodes(&[1, 2, 3]), &[], |_| true, T0, TIMEOUT);
    w.on_ack(n(1));
    w.on_ack(n(3));
    assert!(w.on_tick(T0 + TIMEOUT / 2).is_empty());
    assert_eq!(
        w.on_tick(T0 + TIMEOUT),
        [WriteAction::KeepHint { owner: n(2) }]
    );

    // A hinted stand-in that acknowledged covers its owner.
    let (mut w, first) = WriteRequest::start(
        3,
        &nodes(&[1, 2, 3]),
        &nodes(&[4]),
        |x| x != n(2),
        T0,
        TIMEOUT,
    );
    assert_eq!(writes(&first)[1], (n(4), Some(n(2))));
    w.on_ack(n(1));
    w.on_ack(n(4));
    let out = w.on_ack(n(3));
    assert!(kept(&out).is_empty(), "{out:?}");
    assert!(w.is_settled());
}

#[test]
fn a_healthy_write_goes_to_the_owners_and_replies_at_w_acks() {
    let (mut w, first) = WriteRequest::start(
        2,
        &nodes(&[1, 2, 3]),
        &nodes(&[4, 5]),
        |_| true,
        T0,
        TIMEOUT,
    );
    assert_eq!(writes(&first), [(n(1), None), (n(2), None), (n(3), None)]);
    assert!(w.on_ack(n(2)).is_empty());
    assert!(w.on_ack(n(2)).is_empty(), "a duplicate ack counts once");
    assert!(
        w.on_ack(n(9)).is_empty(),
        "a stranger's ack counts for nothing"
    );
    let reply = w.on_ack(n(3));
    assert_eq!(
        reply,
        [WriteAction::Reply(Ok(Written {
            acked: nodes(&[2, 3]),
            hinted: vec![]
        }))]
    );
    assert!(w.is_done());
    assert!(w.on_ack(n(1)).is_empty());
    assert!(w.on_tick(T0 + TIMEOUT).is_empty(), "no second reply");
}

#[test]
fn a_suspected_owner_is_replaced_by_a_hinted_fallback() {
    let healthy = |x: NodeId| x != n(2);
    let (mut w, first) = WriteRequest::start(
        3,
        &nodes(&[1, 2, 3]),
        &nodes(&[2, 4, 5]),
        healthy,
        T0,
        TIMEOUT,
    );
    assert_eq!(
        writes(&first),
        [(n(1), None), (n(4), Some(n(2))), (n(3), None)]
    );
    // 4 fails too: 5 takes the hint for 2, not for 4.
    assert_eq!(writes(&w.on_failure(n(4))), [(n(5), Some(n(2)))]);
    w.on_ack(n(1));
    w.on_ack(n(3));
    let reply = w.on_ack(n(5));
    assert_eq!(
        reply,
        [WriteAction::Reply(Ok(Written {
            acked: nodes(&[1, 3, 5]),
            hinted: vec![(n(5), n(2))]
        }))]
    );
}

#[test]
fn a_write_without_enough_replicas_fails_and_one_without_acks_times_out() {
    let (mut w, _) = WriteRequest::start(2, &nodes(&[1, 2, 3]), &[], |_| true, T0, TIMEOUT);
    assert!(w.on_failure(n(1)).is_empty());
    assert_eq!(
        w.on_failure(n(2)),
        [WriteAction::Reply(Err(CoordinatorError::Unavailable {
            kind: "write",
            acked: 0,
            required: 2
        }))]
    );
    let (mut w, _) = WriteRequest::start(2, &nodes(&[1, 2, 3]), &[], |_| true, T0, TIMEOUT);
    w.on_ack(n(1));
    assert!(w.on_tick(T0 + TIMEOUT / 2).is_empty());
    let reply = w.on_tick(T0 + TIMEOUT);
    // A write that failed may still have been stored: the owners it did not reach get it
    // as hints, which completes it rather than undoing it.
    assert_eq!(
        reply,
        [
            WriteAction::Reply(Err(CoordinatorError::Timeout {
                kind: "write",
                acked: 1,
                required: 2
            })),
            WriteAction::KeepHint { owner: n(2) },
            WriteAction::KeepHint { owner: n(3) },
        ]
    );
    assert_eq!(
        CoordinatorError::Timeout {
            kind: "write",
            acked: 1,
            required: 2
        }
        .to_string(),
        "write timed out: 1 of 2 replicas answered"
    );
    // A suspected owner with no fallback is tried anyway.
    let (_, first) = WriteRequest::start(1, &nodes(&[1]), &[], |_| false, T0, TIMEOUT);
    assert_eq!(writes(&first), [(n(1), None)]);
}

#[test]
fn a_read_replies_at_r_answers_and_repairs_the_stale_replicas() {
    let (mut r, first) =
        ReadRequest::<GCounter>::start(2, &nodes(&[1, 2, 3]), &nodes(&[4]), |_| true, T0, TIMEOUT);
    assert_eq!(
        first,
        nodes(&[1, 2, 3])
            .into_iter()
            .map(|from| ReadAction::Read { from })
            .collect::<Vec<_>>()
    );
    assert!(r.on_answer(n(1), Some(counter(&[(1, 1)]))).is_empty());
    let reply = r.on_answer(n(2), None);
    assert_eq!(reply, [ReadAction::Reply(Ok(Some(counter(&[(1, 1)]))))]);
    assert!(!r.is_done(), "repairs wait for the last answer");
    let repairs = r.on_answer(n(3), Some(counter(&[(1, 1), (3, 2)])));
    let merged = counter(&[(1, 1), (3, 2)]);
    assert_eq!(
        repairs,
        [
            ReadAction::Repair {
                to: n(1),
                value: merged.clone()
            },
            ReadAction::Repair {
                to: n(2),
                value: merged
            },
        ]
    );
    assert!(r.is_done());
}

#[test]
fn a_read_skips_suspected_replicas_and_times_out_without_r_answers() {
    let healthy = |x: NodeId| x != n(1);
    let (mut r, first) = ReadRequest::<GCounter>::start(
        3,
        &nodes(&[1, 2, 3]),
        &nodes(&[4, 5]),
        healthy,
        T0,
        TIMEOUT,
    );
    let asked: Vec<_> = first
        .iter()
        .map(|a| match a {
            ReadAction::Read { from } => *from,
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(asked, nodes(&[2, 3, 4]));
    r.on_answer(n(2), Some(counter(&[(2, 1)])));
    r.on_answer(n(4), None);
    let out = r.on_tick(T0 + TIMEOUT);
    assert_eq!(
        out,
        [
            ReadAction::Reply(Err(CoordinatorError::Timeout {
                kind: "read",
                acked: 2,
                required: 3
            })),
            ReadAction::Repair {
                to: n(4),
                value: counter(&[(2, 1)])
            },
        ]
    );
    assert!(r.is_done());
    assert!(r.on_answer(n(3), None).is_empty());
}

/// An event of a random script.
#[derive(Debug, Clone)]
enum Ev {
    Ok(u64),
    Fail(u64),
    Answer(u64, Option<u64>),
    Tick(u64),
}

fn arb_event() -> impl Strategy<Value = Ev> {
    prop_oneof![
        (1..=8u64).prop_map(Ev::Ok),
        (1..=8u64).prop_map(Ev::Fail),
        (1..=8u64, prop::option::of(0..4u64)).prop_map(|(n, v)| Ev::Answer(n, v)),
        (0..1500u64).prop_map(Ev::Tick),
    ]
}

fn setup() -> impl Strategy<Value = (usize, u32, BTreeSet<u64>, Vec<Ev>)> {
    (1..=5usize)
        .prop_flat_map(|size| (Just(size), 1..=size as u32))
        .prop_flat_map(|(size, q)| {
            (
                Just(size),
                Just(q),
                prop::collection::btree_set(1..=8u64, 0..=8),
                prop::collection::vec(arb_event(), 0..30),
            )
        })
}

proptest! {
    /// Guarantees 1–3 and 6 on random scripts.
    #[test]
    fn writes_reply_once_only_after_w_acks_and_cover_every_owner(
        (size, w, healthy, events) in setup(),
    ) {
        let preferred: Vec<NodeId> = (1..=size as u64).map(NodeId).collect();
        let fallbacks: Vec<NodeId> = (size as u64 + 1..=8).map(NodeId).collect();
        let is_healthy = |x: NodeId| healthy.contains(&x.0);
        let (mut req, mut actions) =
            WriteRequest::start(w, &preferred, &fallbacks, is_healthy, T0, TIMEOUT);
        // Guarantee 3 at the start: one write per owner, itself or a hint for it.
        let first = writes(&actions);
        prop_assert_eq!(first.len(), size);
        for p in &preferred {
            prop_assert!(first.iter().any(|(to, h)| (to == p && h.is_none()) || *h == Some(*p)));
        }
        let mut acked_before_reply = BTreeSet::new();
        let mut failed = BTreeSet::new();
        let mut replies = Vec::new();
        let mut timed_out = false;
        let mut sent: Vec<(NodeId, Option<NodeId>)> = Vec::new();
        let record = |out: Vec<WriteAction>,
                      replies: &mut Vec<_>,
                      sent: &mut Vec<_>,
                      kept_hints: &mut Vec<NodeId>| {
            sent.extend(writes(&out));
            kept_hints.extend(kept(&out));
            replies.extend(out.into_iter().filter_map(|a| match a {
                WriteAction::Reply(r) => Some(r),
                _ => None,
            }));
        };
        let mut kept_hints = Vec::new();
        let mut acked_any = BTreeSet::new();
        let mut failed_any = BTreeSet::new();
        record(std::mem::take(&mut actions), &mut replies, &mut sent, &mut kept_hints);
        for e in events {
            let out = match e {
                Ev::Ok(x) | Ev::Answer(x, _) => {
                    let x = NodeId(x);
                    let target = sent.iter().any(|(to, _)| *to == x);
                    if replies.is_empty() && target && !failed.contains(&x) {
                        acked_before_reply.insert(x);
                    }
                    if !req.is_settled() && target && !failed_any.contains(&x) {
                        acked_any.insert(x);
                    }
                    req.on_ack(x)
                }
                Ev::Fail(x) => {
                    let x = NodeId(x);
                    let target = sent.iter().any(|(to, _)| *to == x);
                    if replies.is_empty() && target && !acked_before_reply.contains(&x) {
                        failed.insert(x);
                    }
                    if !req.is_settled() && target && !acked_any.contains(&x) {
                        failed_any.insert(x);
                    }
                    req.on_failure(x)
                }
                Ev::Tick(ms) => {
                    let now = T0 + Duration::from_millis(ms);
                    timed_out |= now >= T0 + TIMEOUT;
                    req.on_tick(now)
                }
            };
            record(out, &mut replies, &mut sent, &mut kept_hints);
        }
        prop_assert!(replies.len() <= 1, "{:?}", replies);
        if timed_out {
            prop_assert_eq!(replies.len(), 1);
        }
        // No node is written twice; every hint names an owner.
        let mut seen = BTreeSet::new();
        for (to, hint) in &sent {
            prop_assert!(seen.insert(*to), "{:?} written twice", to);
            if let Some(owner) = hint {
                prop_assert!(preferred.contains(owner));
            }
        }
        // Guarantee 6: once settled, exactly the owners no acknowledgement covers are
        // kept, each once; nothing before.
        prop_assert!(!timed_out || req.is_settled());
        let kept_set: BTreeSet<NodeId> = kept_hints.iter().copied().collect();
        prop_assert_eq!(kept_set.len(), kept_hints.len(), "an owner kept twice");
        let covered = |o: NodeId| {
            acked_any.iter().any(|a| *a == o || sent.iter().any(|(to, h)| to == a && *h == Some(o)))
        };
        for p in &preferred {
            prop_assert_eq!(kept_set.contains(p), req.is_settled() && !covered(*p), "owner {:?}", p);
        }
        prop_assert!(kept_set.iter().all(|o| preferred.contains(o)));
        if let Some(Ok(written)) = replies.first() {
            prop_assert!(written.acked.len() >= w as usize);
            for a in &written.acked {
                prop_assert!(acked_before_reply.contains(a), "{:?} counted without an ack", a);
            }
        }
    }

    /// Guarantees 1, 4 and 5 on random scripts.
    #[test]
    fn reads_reply_once_with_the_join_of_r_answers_and_repair_only_the_stale(
        (size, r, healthy, events) in setup(),
    ) {
        check_read(size, r, &healthy, events, None)?;
    }

    /// Guarantees 1, 4, 5 and 7 for lean reads (R asked first, spares on failure and at
    /// the speculation time).
    #[test]
    fn lean_reads_keep_the_guarantees_and_fail_only_when_a_full_read_would(
        (size, r, healthy, events) in setup(),
        speculate_ms in 0u64..1500,
    ) {
        check_read(size, r, &healthy, events, Some(Duration::from_millis(speculate_ms)))?;
    }
}

/// Runs a read (lean when `speculate_after` is given) through `events` and checks its
/// guarantees.
fn check_read(
    size: usize,
    r: u32,
    healthy: &BTreeSet<u64>,
    events: Vec<Ev>,
    speculate_after: Option<Duration>,
) -> Result<(), TestCaseError> {
    let preferred: Vec<NodeId> = (1..=size as u64).map(NodeId).collect();
    let fallbacks: Vec<NodeId> = (size as u64 + 1..=8).map(NodeId).collect();
    let is_healthy = |x: NodeId| healthy.contains(&x.0);
    let reads = |actions: &[ReadAction<GCounter>]| -> Vec<NodeId> {
        actions
            .iter()
            .filter_map(|a| match a {
                ReadAction::Read { from } => Some(*from),
                _ => None,
            })
            .collect()
    };
    // Whom a full read asks.
    let (_, full) =
        ReadRequest::<GCounter>::start(r, &preferred, &fallbacks, is_healthy, T0, TIMEOUT);
    let all_targets: BTreeSet<NodeId> = reads(&full).into_iter().collect();
    let (mut req, first) = match speculate_after {
        None => ReadRequest::<GCounter>::start(r, &preferred, &fallbacks, is_healthy, T0, TIMEOUT),
        Some(after) => ReadRequest::<GCounter>::start_lean(
            r, &preferred, &fallbacks, is_healthy, T0, TIMEOUT, after,
        ),
    };
    let mut targets: BTreeSet<NodeId> = reads(&first).into_iter().collect();
    if speculate_after.is_some() {
        prop_assert_eq!(targets.len(), (r as usize).min(all_targets.len()));
    }
    let mut answers: BTreeMap<NodeId, Option<GCounter>> = BTreeMap::new();
    let mut failed = BTreeSet::new();
    let mut out_all = first;
    let mut answers_at_reply = None;
    for e in events {
        let out = match e {
            Ev::Answer(x, v) => {
                let x = NodeId(x);
                let value = v.map(|v| counter(&[(x.0, v + 1)]));
                if targets.contains(&x) && !answers.contains_key(&x) && !failed.contains(&x) {
                    answers.insert(x, value.clone());
                }
                req.on_answer(x, value)
            }
            Ev::Fail(x) => {
                let x = NodeId(x);
                if targets.contains(&x) && !answers.contains_key(&x) {
                    failed.insert(x);
                }
                req.on_failure(x)
            }
            Ev::Ok(_) => Vec::new(),
            Ev::Tick(ms) => req.on_tick(T0 + Duration::from_millis(ms)),
        };
        // Every node asked is one a full read asks, asked once.
        for x in reads(&out) {
            prop_assert!(all_targets.contains(&x), "{:?} is no target", x);
            prop_assert!(targets.insert(x), "{:?} asked twice", x);
        }
        if answers_at_reply.is_none() && out.iter().any(|a| matches!(a, ReadAction::Reply(_))) {
            answers_at_reply = Some(answers.clone());
        }
        out_all.extend(out);
    }
    let replies: Vec<_> = out_all
        .iter()
        .filter(|a| matches!(a, ReadAction::Reply(_)))
        .collect();
    prop_assert!(replies.len() <= 1);
    match replies.first() {
        Some(ReadAction::Reply(Ok(value))) => {
            let seen = answers_at_reply.unwrap_or_default();
            prop_assert!(seen.len() >= r as usize);
            let joined = seen.values().fold(None, |acc, v| join(&acc, v));
            prop_assert_eq!(value, &joined);
        }
        // Guarantee 7: as many of all the targets failed as would fail a full read.
        Some(ReadAction::Reply(Err(CoordinatorError::Unavailable { .. }))) => {
            prop_assert!(all_targets.len() - failed.len() < r as usize);
        }
        _ => {}
    }
    let final_join = answers.values().fold(None, |acc, v| join(&acc, v));
    for a in &out_all {
        if let ReadAction::Repair { to, value } = a {
            prop_assert!(
                answers.contains_key(to),
                "repair of {:?}, which never answered",
                to
            );
            prop_assert_ne!(answers[to].as_ref(), Some(value));
            // The join at repair time can only be below the final one.
            let below = final_join.as_ref().is_some_and(|f| &f.merged(value) == f);
            prop_assert!(below);
        }
    }
    Ok(())
}
