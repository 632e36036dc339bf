//! Unit tests of the core's rules, stepping messages by hand.
//! References are to sections of the Raft paper (and Ongaro's thesis).

use super::*;
use crate::raw_node::RawNode;
use crate::storage::MemStorage;
use crate::types::{ConfChangeSingle, ConfChangeType, Entry};

fn voters(ids: &[u64]) -> ConfState {
    ConfState {
        voters: ids.iter().copied().map(NodeId).collect(),
        ..ConfState::default()
    }
}

fn raft(id: u64, ids: &[u64], pre_vote: bool, check_quorum: bool) -> Raft<MemStorage> {
    let mut c = Config::new(id);
    c.pre_vote = pre_vote;
    c.check_quorum = check_quorum;
    c.applied = 1;
    Raft::new(&c, MemStorage::bootstrap(voters(ids))).unwrap()
}

fn msg(ty: MessageType, from: u64, to: u64, term: u64) -> Message {
    Message {
        msg_type: ty,
        from: NodeId(from),
        to: NodeId(to),
        term,
        ..Message::default()
    }
}

fn take_all(r: &mut Raft<MemStorage>) -> Vec<Message> {
    let mut v = std::mem::take(&mut r.msgs);
    v.extend(std::mem::take(&mut r.msgs_after_persist));
    v
}

/// Writes the unstable entries to storage and reports them persisted, as a runtime does.
fn persist(r: &mut Raft<MemStorage>) {
    let ents = r.log.unstable_entries().to_vec();
    r.log.store.append(&ents).unwrap();
    let last = ents.last().map(|e| (e.index, e.term));
    r.on_persisted(0, last);
}

/// Makes `r` (node 1) leader of a 3-node cluster without pre-vote.
fn elect(r: &mut Raft<MemStorage>) {
    r.step(msg(MessageType::Hup, 1, 1, 0)).unwrap();
    let term = r.term;
    r.step(msg(MessageType::VoteResp, 2, 1, term)).unwrap();
    assert!(r.is_leader());
    take_all(r);
}

#[test]
fn votes_once_per_term_and_only_for_up_to_date_logs() {
    // Reference: §5.2 (one vote per term) and §5.4.1 (election restriction).
    let mut r = raft(1, &[1, 2, 3], false, false);
    let mut v = msg(MessageType::Vote, 2, 1, 5);
    v.index = 1;
    v.log_term = 1;
    r.step(v.clone()).unwrap();
    assert_eq!(r.vote, Some(NodeId(2)));
    let out = take_all(&mut r);
    assert!(!out[0].reject);
    let mut v3 = v.clone();
    v3.from = NodeId(3);
    r.step(v3).unwrap();
    assert!(take_all(&mut r)[0].reject, "second vote in the same term");

    let mut r = raft(1, &[1, 2, 3], false, false);
    r.log.append(&[Entry {
        term: 2,
        index: 2,
        ..Entry::default()
    }]);
    let mut stale = msg(MessageType::Vote, 2, 1, 5);
    stale.index = 5;
    stale.log_term = 1;
    r.step(stale).unwrap();
    assert!(take_all(&mut r)[0].reject, "stale log must be rejected");
    assert_eq!(r.vote, None);
}

#[test]
fn vote_responses_wait_for_persistence() {
    let mut r = raft(1, &[1, 2, 3], false, false);
    let mut v = msg(MessageType::Vote, 2, 1, 5);
    v.index = 1;
    v.log_term = 1;
    r.step(v).unwrap();
    assert!(r.msgs.is_empty());
    assert_eq!(r.msgs_after_persist.len(), 1);
}

#[test]
fn pre_vote_keeps_the_term() {
    // Reference: thesis §9.6.
    let mut r = raft(1, &[1, 2, 3], true, false);
    r.step(msg(MessageType::Hup, 1, 1, 0)).unwrap();
    assert_eq!(r.role.state_role(), StateRole::PreCandidate);
    assert_eq!(r.term, 1);
    let out = take_all(&mut r);
    assert!(out
        .iter()
        .all(|m| m.msg_type == MessageType::PreVote && m.term == 2));
    let mut resp = msg(MessageType::PreVoteResp, 2, 1, 2);
    resp.reject = false;
    r.step(resp).unwrap();
    assert_eq!(r.role.state_role(), StateRole::Candidate);
    assert_eq!(r.term, 2);
}

#[test]
fn leader_counts_itself_only_once_persisted() {
    // DESIGN: acknowledged means durable; the leader's own entry counts after its fsync.
    let mut c = Config::new(1);
    c.applied = 1;
    let mut node = RawNode::new(&c, MemStorage::bootstrap(voters(&[1]))).unwrap();
    node.campaign().unwrap();
    assert_eq!(node.status().soft_state.role, StateRole::Leader);
    let rd = node.ready().unwrap();
    assert_eq!(rd.entries.len(), 1);
    assert!(
        rd.committed_entries.is_empty(),
        "committed before persisting"
    );
    node.storage().append(&rd.entries).unwrap();
    node.storage().set_hard_state(rd.hard_state.unwrap());
    node.advance(rd);
    let rd = node.ready().unwrap();
    assert_eq!(rd.committed_entries.len(), 1);
    node.advance(rd);
}

#[test]
fn commits_only_current_term_entries_by_counting() {
    // Reference: §5.4.2 and Figure 8.
    let mut r = raft(1, &[1, 2, 3], false, false);
    r.log.append(&[Entry {
        term: 1,
        index: 2,
        ..Entry::default()
    }]);
    persist(&mut r);
    elect(&mut r);
    let term = r.term;
    let mut ack = msg(MessageType::AppendResp, 2, 1, term);
    ack.index = 2;
    r.step(ack).unwrap();
    persist(&mut r);
    assert_eq!(r.log.committed, 1, "entry 2 is from term 1");
    let mut ack = msg(MessageType::AppendResp, 2, 1, term);
    ack.index = 3;
    r.step(ack).unwrap();
    assert_eq!(r.log.committed, 3);
}

#[test]
fn rejection_hint_skips_a_term() {
    // Follower log: terms [1(snapshot), 2, 2, 2]; leader probes after index 6, term 5.
    let mut r = raft(2, &[1, 2, 3], false, false);
    r.log.append(&[2, 3, 4].map(|i| Entry {
        term: 2,
        index: i,
        ..Entry::default()
    }));
    r.step(msg(MessageType::Heartbeat, 1, 2, 5)).unwrap();
    take_all(&mut r);
    let mut app = msg(MessageType::Append, 1, 2, 5);
    app.index = 6;
    app.log_term = 5;
    r.step(app).unwrap();
    let out = take_all(&mut r);
    assert!(out[0].reject);
    assert_eq!((out[0].reject_hint, out[0].log_term), (4, 2));
}

#[test]
fn check_quorum_lease_ignores_votes_and_isolated_leader_steps_down() {
    // Reference: thesis §6.2 and §4.2.3.
    let mut r = raft(2, &[1, 2, 3], false, true);
    r.step(msg(MessageType::Heartbeat, 1, 2, 2)).unwrap();
    take_all(&mut r);
    let mut v = msg(MessageType::Vote, 3, 2, 3);
    v.index = 10;
    v.log_term = 2;
    r.step(v.clone()).unwrap();
    assert_eq!(r.term, 2, "vote ignored under a live leader");
    v.context = CAMPAIGN_TRANSFER.to_vec();
    r.step(v).unwrap();
    assert_eq!(r.term, 3, "a transfer vote is not ignored");

    let mut l = raft(1, &[1, 2, 3], false, true);
    elect(&mut l);
    for _ in 0..2 * l.election_tick {
        l.tick();
    }
    assert_eq!(l.role.state_role(), StateRole::Follower);
}

#[test]
fn one_conf_change_at_a_time() {
    let mut r = raft(1, &[1, 2, 3], false, false);
    elect(&mut r);
    let cc = |id| {
        ConfChange::new(vec![ConfChangeSingle {
            kind: ConfChangeType::AddLearner,
            node_id: NodeId(id),
        }])
        .encode()
    };
    let prop = |data: Vec<u8>| Message {
        msg_type: MessageType::Propose,
        from: NodeId(1),
        entries: vec![Entry {
            kind: EntryKind::ConfChange,
            data,
            ..Entry::default()
        }],
        ..Message::default()
    };
    r.step(prop(cc(4))).unwrap();
    assert_eq!(r.step(prop(cc(5))), Err(Error::ProposalDropped));
    // Leaving a joint configuration that is not joint is refused too.
    r.applied_to(r.log.applied);
    let mut r2 = raft(1, &[1, 2, 3], false, false);
    elect(&mut r2);
    assert_eq!(
        r2.step(prop(ConfChange::leave_joint().encode())),
        Err(Error::ProposalDropped)
    );
}

#[test]
fn transfer_is_abandoned_after_an_election_timeout() {
    // Reference: thesis §3.10.
    let mut r = raft(1, &[1, 2, 3], false, false);
    elect(&mut r);
    r.step(msg(MessageType::TransferLeader, 3, 1, 0)).unwrap();
    assert_eq!(r.leader_state().unwrap().transferee, Some(NodeId(3)));
    assert_eq!(
        r.step(Message {
            msg_type: MessageType::Propose,
            from: NodeId(1),
            entries: vec![Entry::default()],
            ..Message::default()
        }),
        Err(Error::ProposalDropped)
    );
    for _ in 0..r.election_tick {
        r.tick();
    }
    assert_eq!(r.leader_state().unwrap().transferee, None);
}

#[test]
fn read_index_waits_for_a_quorum_heartbeat() {
    // Reference: thesis §6.4.
    let mut r = raft(1, &[1, 2, 3], false, false);
    elect(&mut r);
    let term = r.term;
    let mut ack = msg(MessageType::AppendResp, 2, 1, term);
    ack.index = 2;
    r.step(ack).unwrap();
    persist(&mut r);
    assert_eq!(r.log.committed, 2);
    take_all(&mut r);
    let mut read = msg(MessageType::ReadIndex, 1, 1, 0);
    read.context = b"q".to_vec();
    r.step(read).unwrap();
    assert!(r.read_states.is_empty());
    let hb = take_all(&mut r);
    assert!(hb
        .iter()
        .all(|m| m.msg_type == MessageType::Heartbeat && m.context == b"q"));
    let mut resp = msg(MessageType::HeartbeatResp, 3, 1, term);
    resp.context = b"q".to_vec();
    r.step(resp).unwrap();
    assert_eq!(r.read_states.len(), 1);
    assert_eq!(r.read_states[0].index, 2);
}

#[test]
fn random_election_timeout_in_range() {
    let mut r = raft(1, &[1, 2, 3], false, false);
    for _ in 0..100 {
        r.reset_randomized_election_timeout();
        assert!(r.randomized_election_timeout >= r.election_tick);
        assert!(r.randomized_election_timeout < 2 * r.election_tick);
    }
}

#[test]
fn uncommitted_size_is_bounded() {
    let mut c = Config::new(1);
    c.applied = 1;
    c.pre_vote = false;
    c.max_uncommitted_size_bytes = 100;
    let mut r = Raft::new(&c, MemStorage::bootstrap(voters(&[1, 2, 3]))).unwrap();
    elect(&mut r);
    let prop = |n: usize| Message {
        msg_type: MessageType::Propose,
        from: NodeId(1),
        entries: vec![Entry {
            data: vec![0; n],
            ..Entry::default()
        }],
        ..Message::default()
    };
    r.step(prop(80)).unwrap();
    assert_eq!(r.step(prop(30)), Err(Error::ProposalDropped));
    r.step(prop(20)).unwrap();
    let committed = r.log.slice(3, 5, u64::MAX).unwrap();
    r.reduce_uncommitted_size(&committed);
    r.step(prop(90)).unwrap();
}

#[test]
fn stale_vote_request_learns_the_newer_term() {
    // Reference: §5.1 — a stale request is rejected with the current term.
    let mut r = raft(1, &[1, 2, 3], false, false);
    r.step(msg(MessageType::Heartbeat, 2, 1, 9)).unwrap();
    take_all(&mut r);
    let mut v = msg(MessageType::Vote, 3, 1, 4);
    v.index = 100;
    v.log_term = 3;
    r.step(v).unwrap();
    let out = take_all(&mut r);
    assert_eq!(out.len(), 1);
    assert!(out[0].reject);
    assert_eq!(out[0].term, 9);
}

#[test]
fn forwarded_proposals_carry_their_term_and_are_appended_only_in_it() {
    // A follower forwards a proposal stamped with its term.
    let mut f = raft(2, &[1, 2, 3], false, false);
    f.step(msg(MessageType::Heartbeat, 1, 2, 3)).unwrap();
    assert_eq!(f.leader_id, Some(NodeId(1)));
    take_all(&mut f);
    let mut p = msg(MessageType::Propose, 2, 2, 0);
    p.entries = vec![Entry {
        data: b"x".to_vec(),
        ..Entry::default()
    }];
    f.step(p.clone()).unwrap();
    let fwd = take_all(&mut f);
    assert_eq!(fwd.len(), 1);
    assert_eq!(
        (fwd[0].msg_type, fwd[0].to, fwd[0].term),
        (MessageType::Propose, NodeId(1), 3)
    );

    // The leader of that term appends it, with that term.
    let mut l = raft(1, &[1, 2, 3], false, false);
    elect(&mut l);
    let term = l.term;
    let mut same = fwd[0].clone();
    same.term = term;
    let last = l.log.last_index();
    l.step(same.clone()).unwrap();
    assert_eq!(l.log.last_index(), last + 1);
    assert_eq!(l.log.term(last + 1), Ok(term));
    // Forwarded in an earlier (or a later) term: dropped, and the leader keeps its term
    // and role.
    for t in [term - 1, term + 1] {
        let mut other = same.clone();
        other.term = t;
        assert_eq!(l.step(other), Err(Error::ProposalDropped));
        assert_eq!((l.term, l.is_leader()), (term, true));
        assert_eq!(l.log.last_index(), last + 1);
    }
    // A follower never forwards a peer's proposal a second time.
    take_all(&mut f);
    let mut relayed = same;
    relayed.from = NodeId(3);
    relayed.term = 3;
    assert_eq!(f.step(relayed), Err(Error::ProposalDropped));
    assert!(take_all(&mut f).is_empty());
    // A local proposal (term 0) is still forwarded.
    f.step(p).unwrap();
    assert_eq!(take_all(&mut f).len(), 1);
}
