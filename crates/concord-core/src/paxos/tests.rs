use super::*;
use crate::crdt::Crdt;

/// A last-write-wins register by ballot, the shape of a value a compare-and-set writes.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Reg(Ballot, i64);

impl Crdt for Reg {
    type Value = i64;
    fn merge(&mut self, other: &Self) {
        if other.0 > self.0 {
            *self = other.clone();
        }
    }
    fn value(&self) -> i64 {
        self.1
    }
}

fn b(time: u64, node: u64) -> Ballot {
    Ballot {
        time,
        node: NodeId(node),
    }
}

const R: [NodeId; 3] = [NodeId(1), NodeId(2), NodeId(3)];

fn promise(value: Option<Reg>) -> Reply<Reg> {
    Reply::Promise {
        in_progress: None,
        committed: None,
        value,
    }
}

#[test]
fn an_acceptor_refuses_ballots_below_its_promise_and_a_commit_ends_the_proposal() {
    let mut a: Acceptor<Reg> = Acceptor::new();
    assert_eq!(a.prepare(b(5, 1)), Ok((None, None)));
    assert_eq!(a.prepare(b(4, 9)), Err(b(5, 1)));
    assert_eq!(a.prepare(b(5, 1)), Ok((None, None)), "a repeated prepare");
    assert_eq!(a.propose(b(4, 9), Reg(b(4, 9), 1)), Err(b(5, 1)));
    assert_eq!(a.propose(b(5, 1), Reg(b(5, 1), 7)), Ok(()));
    // Reported in progress until committed.
    assert_eq!(
        a.prepare(b(6, 2)),
        Ok((Some((b(5, 1), Reg(b(5, 1), 7))), None))
    );
    assert_eq!(a.propose(b(5, 1), Reg(b(5, 1), 7)), Err(b(6, 2)));
    a.commit(b(6, 2));
    assert_eq!(a.prepare(b(7, 1)), Ok((None, Some(b(6, 2)))));
    assert_eq!(a.promised(), Some(b(7, 1)));
}

#[test]
fn without_contention_a_write_is_prepare_propose_commit() {
    let (mut r, first) = CasRequest::<Reg>::new(R.to_vec(), 2, b(10, 7));
    assert_eq!(
        first,
        CasAction::Prepare {
            to: R.to_vec(),
            ballot: b(10, 7)
        }
    );
    assert!(r.on_reply(R[0], promise(Some(Reg(b(3, 1), 1)))).is_empty());
    assert_eq!(
        r.on_reply(R[1], promise(Some(Reg(b(4, 1), 2)))),
        vec![CasAction::Decide {
            current: Some(Reg(b(4, 1), 2))
        }],
        "the join of a quorum's values"
    );
    let v = Reg(b(10, 7), 3);
    assert!(matches!(
        r.decide(Some(v.clone())),
        CasAction::Propose { .. }
    ));
    assert!(r.on_reply(R[2], Reply::Accepted).is_empty());
    assert!(r.on_reply(R[2], Reply::Accepted).is_empty(), "a duplicate");
    assert_eq!(
        r.on_reply(R[0], Reply::Accepted),
        vec![CasAction::Commit {
            to: R.to_vec(),
            ballot: b(10, 7),
            value: v
        }]
    );
    assert!(r.on_reply(R[0], Reply::Committed).is_empty());
    assert_eq!(
        r.on_reply(R[1], Reply::Committed),
        vec![CasAction::Done { written: true }]
    );
    // A request that decides not to write is a linearizable read: one round trip.
    let (mut r, _) = CasRequest::<Reg>::new(R.to_vec(), 2, b(11, 7));
    r.on_reply(R[0], promise(None));
    r.on_reply(R[1], promise(None));
    assert_eq!(r.decide(None), CasAction::Done { written: false });
}

#[test]
fn a_proposal_in_progress_is_finished_first_then_the_request_starts_over() {
    let (mut r, _) = CasRequest::<Reg>::new(R.to_vec(), 2, b(10, 7));
    let theirs = Reg(b(8, 5), 42);
    r.on_reply(
        R[0],
        Reply::Promise {
            in_progress: Some((b(8, 5), theirs.clone())),
            committed: Some(b(6, 1)),
            value: None,
        },
    );
    // An older accepted proposal below a commit seen elsewhere is not in progress.
    let acts = r.on_reply(
        R[1],
        Reply::Promise {
            in_progress: Some((b(5, 1), Reg(b(5, 1), 0))),
            committed: Some(b(7, 2)),
            value: None,
        },
    );
    assert_eq!(
        acts,
        vec![CasAction::Propose {
            to: R.to_vec(),
            ballot: b(10, 7),
            value: theirs.clone()
        }]
    );
    r.on_reply(R[0], Reply::Accepted);
    assert!(matches!(
        r.on_reply(R[1], Reply::Accepted)[..],
        [CasAction::Commit { .. }]
    ));
    r.on_reply(R[0], Reply::Committed);
    assert_eq!(
        r.on_reply(R[1], Reply::Committed),
        vec![CasAction::Retry { above: b(10, 7) }]
    );
    assert!(matches!(r.retry(b(12, 7)), CasAction::Prepare { .. }));
}

#[test]
fn a_refused_proposal_found_later_in_progress_is_the_request_s_own_write() {
    let (mut r, _) = CasRequest::<Reg>::new(R.to_vec(), 2, b(10, 7));
    r.on_reply(R[0], promise(None));
    r.on_reply(R[1], promise(None));
    let mine = Reg(b(10, 7), 1);
    r.decide(Some(mine.clone()));
    r.on_reply(R[0], Reply::Accepted);
    r.on_reply(R[1], Reply::Reject { promised: b(11, 5) });
    assert_eq!(
        r.on_reply(R[2], Reply::Reject { promised: b(12, 5) }),
        vec![CasAction::Retry { above: b(12, 5) }]
    );
    r.retry(b(13, 7));
    r.on_reply(
        R[0],
        Reply::Promise {
            in_progress: Some((b(10, 7), mine.clone())),
            committed: None,
            value: None,
        },
    );
    r.on_reply(R[2], promise(None));
    r.on_reply(R[0], Reply::Accepted);
    r.on_reply(R[2], Reply::Accepted);
    r.on_reply(R[0], Reply::Committed);
    assert_eq!(
        r.on_reply(R[2], Reply::Committed),
        vec![CasAction::Done { written: true }]
    );
}

#[test]
fn a_refused_proposal_that_may_have_been_chosen_since_is_indefinite() {
    let (mut r, _) = CasRequest::<Reg>::new(R.to_vec(), 2, b(10, 7));
    r.on_reply(R[0], promise(None));
    r.on_reply(R[1], promise(None));
    r.decide(Some(Reg(b(10, 7), 1)));
    r.on_reply(R[0], Reply::Reject { promised: b(11, 5) });
    r.on_reply(R[1], Reply::Reject { promised: b(11, 5) });
    r.retry(b(12, 7));
    // Nothing in progress, but a commit above the refused ballot: it may have been ours.
    let seen = Reply::Promise {
        in_progress: None,
        committed: Some(b(11, 5)),
        value: Some(Reg(b(10, 7), 1)),
    };
    r.on_reply(R[0], seen.clone());
    assert_eq!(r.on_reply(R[1], seen), vec![CasAction::Unavailable]);
}

#[test]
fn failures_end_a_request_once_no_quorum_can_answer() {
    let (mut r, _) = CasRequest::<Reg>::new(R.to_vec(), 2, b(10, 7));
    assert!(r.on_failure(R[0]).is_empty());
    assert_eq!(r.on_failure(R[1]), vec![CasAction::Unavailable]);
    assert!(r.on_reply(R[2], promise(None)).is_empty(), "over");
    // Once accepted by a quorum, failures during the commit do not undo the write.
    let (mut r, _) = CasRequest::<Reg>::new(R.to_vec(), 2, b(10, 7));
    r.on_reply(R[0], promise(None));
    r.on_reply(R[1], promise(None));
    r.decide(Some(Reg(b(10, 7), 1)));
    r.on_reply(R[0], Reply::Accepted);
    r.on_reply(R[1], Reply::Accepted);
    r.on_failure(R[0]);
    assert_eq!(r.on_failure(R[1]), vec![CasAction::Done { written: true }]);
}
