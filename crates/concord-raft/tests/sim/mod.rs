//! Deterministic simulation of a Raft cluster: one thread, one `u64` seed that picks the
//! cluster size, the fault mix and the workload. A safety phase injects faults and checks
//! the invariants of `checker` after every step; a liveness phase heals everything and
//! requires a leader to commit a proposal within a bounded number of ticks.

pub mod checker;
pub mod network;

use concord_raft::{
    ConfChange, ConfChangeSingle, ConfChangeTransition, ConfChangeType, ConfState, Config,
    EntryKind, MemStorage, Message, MessageType, NodeId, RawNode, Ready, SnapshotStatus, StateRole,
    Storage,
};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use checker::{chain, Checker};
use network::{Fate, Faults, Network};

/// Steps between two ticks: messages and fsyncs complete at a finer grain than ticks.
const STEPS_PER_TICK: u64 = 4;

/// Everything a seed decides, printed on failure.
#[derive(Clone, Debug)]
pub struct SimParams {
    pub seed: u64,
    pub voters: usize,
    pub spares: usize,
    pub faults: Faults,
    pub crash_per_step: f64,
    pub partition_per_step: f64,
    pub propose_per_step: f64,
    pub conf_change_per_step: f64,
    pub transfer_per_step: f64,
    pub compact_per_step: f64,
    pub read_per_step: f64,
    pub max_fsync_delay: u64,
    pub pre_vote: bool,
    pub check_quorum: bool,
    pub max_size_per_msg: u64,
    pub max_inflight: usize,
    pub safety_steps: u64,
    pub liveness_ticks: u64,
    pub buggy_votes: bool,
    pub lease_reads: bool,
    pub buggy_lease: bool,
    /// Probability that a node misses a tick (0 with lease reads, which assume bounded
    /// drift).
    pub tick_skip: f64,
}

impl SimParams {
    pub fn from_seed(seed: u64, safety_steps: u64) -> Self {
        let mut p = Self::draw(seed, safety_steps);
        if p.lease_reads {
            p.tick_skip = 0.0;
        }
        p
    }

    fn draw(seed: u64, safety_steps: u64) -> Self {
        let mut rng = SmallRng::seed_from_u64(seed ^ 0x5eed_5eed);
        let voters = [3, 5, 7][rng.gen_range(0..3)];
        let (pre_vote, check_quorum) =
            [(true, true), (true, false), (false, true), (false, false)][rng.gen_range(0..4)];
        Self {
            seed,
            voters,
            spares: rng.gen_range(0..=3),
            faults: Faults {
                drop: [0.0, 0.02, 0.1, 0.3][rng.gen_range(0..4)],
                dup: [0.0, 0.02, 0.1][rng.gen_range(0..3)],
                max_delay: [1, 3, 8, 20][rng.gen_range(0..4)],
            },
            crash_per_step: [0.0, 0.002, 0.01][rng.gen_range(0..3)],
            partition_per_step: [0.0, 0.003, 0.01][rng.gen_range(0..3)],
            propose_per_step: [0.05, 0.2, 0.5][rng.gen_range(0..3)],
            conf_change_per_step: [0.0, 0.005, 0.02][rng.gen_range(0..3)],
            transfer_per_step: [0.0, 0.002, 0.01][rng.gen_range(0..3)],
            compact_per_step: [0.0, 0.01, 0.05][rng.gen_range(0..3)],
            read_per_step: [0.0, 0.05, 0.2][rng.gen_range(0..3)],
            max_fsync_delay: [0, 2, 6][rng.gen_range(0..3)],
            pre_vote,
            check_quorum,
            max_size_per_msg: [0, 256, 1 << 20][rng.gen_range(0..3)],
            max_inflight: [1, 4, 256][rng.gen_range(0..3)],
            safety_steps,
            liveness_ticks: 1000,
            buggy_votes: false,
            lease_reads: check_quorum && rng.gen_bool(0.5),
            buggy_lease: false,
            tick_skip: [0.0, 0.05, 0.2][rng.gen_range(0..3)],
        }
    }
}

/// A node's application state: a digest of everything applied.
#[derive(Clone, Debug, Default)]
struct StateMachine {
    applied: u64,
    digest: u64,
    conf: ConfState,
}

impl StateMachine {
    fn encode(&self) -> Vec<u8> {
        let mut v = self.applied.to_le_bytes().to_vec();
        v.extend_from_slice(&self.digest.to_le_bytes());
        v
    }

    fn decode(index: u64, conf: ConfState, data: &[u8]) -> Result<Self, String> {
        if data.is_empty() {
            // The bootstrap snapshot: nothing applied yet.
            return Ok(Self {
                applied: index,
                digest: 0,
                conf,
            });
        }
        if data.len() != 16 {
            return Err(format!("bad snapshot data length {}", data.len()));
        }
        let mut a = [0u8; 8];
        a.copy_from_slice(&data[..8]);
        let applied = u64::from_le_bytes(a);
        a.copy_from_slice(&data[8..]);
        if applied != index {
            return Err(format!("snapshot data at {applied} labelled {index}"));
        }
        Ok(Self {
            applied,
            digest: u64::from_le_bytes(a),
            conf,
        })
    }
}

struct SimNode {
    id: NodeId,
    started: bool,
    raw: Option<RawNode<MemStorage>>,
    /// The durable disk: survives crashes; written only when a Ready's fsync completes.
    disk: MemStorage,
    pending: Option<(Ready, u64)>,
    sm: StateMachine,
    /// In-memory commit index seen in this process lifetime.
    commit_seen: u64,
    /// Durable commit index ever seen.
    durable_commit_seen: u64,
    /// Term in which this node was last seen leading.
    led_term: u64,
}

pub struct Sim {
    p: SimParams,
    rng: SmallRng,
    now: u64,
    net: Network,
    nodes: Vec<SimNode>,
    pub checker: Checker,
    next_proposal: u64,
    /// Pending reads: ctx -> highest index known committed when the read started.
    reads: std::collections::BTreeMap<Vec<u8>, u64>,
    trace: bool,
    pub stats: Stats,
}

#[derive(Default, Debug, Clone, Copy)]
pub struct Stats {
    pub steps: u64,
    pub messages: u64,
    pub applied: u64,
    pub elections: u64,
    pub snapshots_sent: u64,
    pub conf_changes: u64,
    pub reads_served: u64,
    pub crashes: u64,
}

type R<T> = Result<T, String>;

impl Sim {
    pub fn new(p: SimParams) -> R<Self> {
        let rng = SmallRng::seed_from_u64(p.seed);
        let total = p.voters + p.spares;
        let cs = ConfState {
            voters: (1..=p.voters as u64).map(NodeId).collect(),
            ..ConfState::default()
        };
        let mut nodes = Vec::with_capacity(total);
        for i in 0..total {
            let id = NodeId(i as u64 + 1);
            let founding = i < p.voters;
            let disk = if founding {
                MemStorage::bootstrap(cs.clone())
            } else {
                MemStorage::new()
            };
            nodes.push(SimNode {
                id,
                started: false,
                raw: None,
                disk,
                pending: None,
                sm: StateMachine::default(),
                commit_seen: 0,
                durable_commit_seen: 0,
                led_term: 0,
            });
        }
        let mut checker = Checker::default();
        checker.digest_at.insert(1, 0);
        let mut sim = Self {
            net: Network::new(p.faults),
            p,
            rng,
            now: 0,
            nodes,
            checker,
            next_proposal: 0,
            reads: Default::default(),
            trace: std::env::var("CONCORD_RAFT_TRACE").is_ok(),
            stats: Stats::default(),
        };
        for i in 0..sim.p.voters {
            sim.start(i)?;
        }
        Ok(sim)
    }

    fn log(&self, f: impl FnOnce() -> String) {
        if self.trace {
            eprintln!("[{:>6}] {}", self.now, f());
        }
    }

    fn config(&self, id: NodeId, applied: u64) -> Config {
        let mut c = Config::new(id);
        c.pre_vote = self.p.pre_vote;
        c.check_quorum = self.p.check_quorum;
        c.max_size_per_msg_bytes = self.p.max_size_per_msg;
        c.max_inflight_msgs = self.p.max_inflight;
        c.applied = applied;
        if self.p.lease_reads {
            c.read_only_option = concord_raft::ReadOnlyOption::LeaseBased;
        }
        c.seed = self
            .p
            .seed
            .wrapping_mul(31)
            .wrapping_add(id.get())
            .wrapping_add(self.stats.crashes << 20);
        #[cfg(feature = "testing-bugs")]
        {
            c.testing_skip_vote_log_check = self.p.buggy_votes;
            c.testing_overlong_lease = self.p.buggy_lease;
        }
        c
    }

    /// Starts (or restarts) node `i` from its disk.
    fn start(&mut self, i: usize) -> R<()> {
        let snap = disk_snapshot(&self.nodes[i].disk);
        let sm = StateMachine::decode(
            snap.metadata.index,
            snap.metadata.conf_state.clone(),
            &snap.data,
        )?;
        let cfg = self.config(self.nodes[i].id, sm.applied);
        let raw =
            RawNode::new(&cfg, self.nodes[i].disk.clone()).map_err(|e| format!("restart: {e}"))?;
        let n = &mut self.nodes[i];
        n.commit_seen = raw.hard_state().commit;
        n.raw = Some(raw);
        n.sm = sm;
        n.started = true;
        n.pending = None;
        n.led_term = 0;
        let id = n.id;
        self.log(|| format!("start {id}"));
        Ok(())
    }

    fn crash(&mut self, i: usize) {
        let torn = self.rng.gen_bool(0.5);
        let n = &mut self.nodes[i];
        n.raw = None;
        // A crash during the write: a prefix of the Ready's entries may have reached the
        // disk, without the hard state that follows them in the WAL.
        if let Some((rd, _)) = n.pending.take() {
            if torn && rd.snapshot.is_none() && !rd.entries.is_empty() {
                let keep = self.rng.gen_range(0..=rd.entries.len());
                let _ = n.disk.append(&rd.entries[..keep]);
            }
        }
        self.stats.crashes += 1;
        let id = n.id;
        self.log(|| format!("crash {id}"));
    }

    fn ids(&self) -> Vec<NodeId> {
        self.nodes
            .iter()
            .filter(|n| n.started)
            .map(|n| n.id)
            .collect()
    }

    fn leader_index(&self) -> Option<usize> {
        // The live leader with the highest term.
        self.nodes
            .iter()
            .enumerate()
            .filter_map(|(i, n)| n.raw.as_ref().map(|r| (i, r)))
            .filter(|(_, r)| r.soft_state().role == StateRole::Leader)
            .max_by_key(|(_, r)| r.hard_state().term)
            .map(|(i, _)| i)
    }

    fn send(&mut self, m: Message) {
        self.stats.messages += 1;
        let (from, to, ty) = (m.from, m.to, m.msg_type);
        let to_live = self
            .nodes
            .get(to.get() as usize - 1)
            .is_some_and(|n| n.started);
        let fate = if to_live {
            self.net.send(&mut self.rng, self.now, m)
        } else {
            Fate::Dropped
        };
        if let Fate::Dropped = fate {
            if ty == MessageType::Snapshot {
                // The transport knows the stream failed.
                if let Some(r) = self.nodes[from.get() as usize - 1].raw.as_mut() {
                    r.report_snapshot(to, SnapshotStatus::Failure);
                }
            } else if ty == MessageType::Append && self.rng.gen_bool(0.1) {
                if let Some(r) = self.nodes[from.get() as usize - 1].raw.as_mut() {
                    r.report_unreachable(to);
                }
            }
        }
    }

    fn deliver(&mut self, m: Message) -> R<()> {
        let to = m.to.get() as usize - 1;
        let (from, ty) = (m.from, m.msg_type);
        if self.net.blocked.contains(&(m.from, m.to)) {
            // Cut while in flight.
            if ty == MessageType::Snapshot {
                if let Some(r) = self.nodes[from.get() as usize - 1].raw.as_mut() {
                    r.report_snapshot(m.to, SnapshotStatus::Failure);
                }
            }
            return Ok(());
        }
        let Some(raw) = self.nodes[to].raw.as_mut() else {
            return Ok(());
        };
        let dest = m.to;
        if ty == MessageType::Snapshot {
            self.stats.snapshots_sent += 1;
        }
        if self.trace && !matches!(ty, MessageType::Heartbeat | MessageType::HeartbeatResp) {
            eprintln!(
                "[{:>6}]   deliver {:?} {}->{} t{} idx{} lt{} c{} n{} rej{} | to: term {} commit {} last {}/{:?}",
                self.now, ty, m.from, m.to, m.term, m.index, m.log_term, m.commit, m.entries.len(), m.reject,
                raw.hard_state().term, raw.hard_state().commit, raw.last_index(), raw.term_at(raw.last_index())
            );
        }
        // Errors (unknown peer, dropped forwarded proposal) are normal under faults.
        let _ = raw.step(m);
        if ty == MessageType::Snapshot {
            if let Some(r) = self.nodes[from.get() as usize - 1].raw.as_mut() {
                r.report_snapshot(dest, SnapshotStatus::Finish);
            }
        }
        Ok(())
    }

    /// Takes a Ready from node `i`: checks its entries, sends the leader's messages now
    /// and schedules the fsync.
    fn take_ready(&mut self, i: usize) -> R<()> {
        let id = self.nodes[i].id;
        let Some(raw) = self.nodes[i].raw.as_mut() else {
            return Ok(());
        };
        if !raw.has_ready() {
            return Ok(());
        }
        let mut rd = raw.ready().map_err(|e| format!("ready: {e}"))?;
        let raw = &*raw;
        for (k, e) in rd.entries.iter().enumerate() {
            let prev = if k > 0 {
                Some(rd.entries[k - 1].term)
            } else {
                raw.term_at(e.index - 1)
            };
            self.checker.observe_entry(id, e, prev)?;
        }
        for m in std::mem::take(&mut rd.messages) {
            self.send(m);
        }
        let delay = if self.p.max_fsync_delay == 0 {
            0
        } else {
            self.rng.gen_range(0..=self.p.max_fsync_delay)
        };
        self.nodes[i].pending = Some((rd, self.now + delay));
        if delay == 0 {
            self.complete_fsync(i)?;
        }
        Ok(())
    }

    /// The fsync of node `i`'s pending Ready completes: persist, send, apply, advance.
    fn complete_fsync(&mut self, i: usize) -> R<()> {
        let Some((mut rd, _)) = self.nodes[i].pending.take() else {
            return Ok(());
        };
        let id = self.nodes[i].id;
        let disk = self.nodes[i].disk.clone();
        if let Some(s) = &rd.snapshot {
            disk.apply_snapshot(s.clone())
                .map_err(|e| format!("node {id} apply snapshot: {e}"))?;
        }
        disk.append(&rd.entries)
            .map_err(|e| format!("node {id} append: {e}"))?;
        if let Some(hs) = rd.hard_state {
            disk.set_hard_state(hs);
        }
        let durable = disk.hard_state().commit;
        if durable < self.nodes[i].durable_commit_seen {
            return Err(format!(
                "commit monotonicity: node {id} durable commit went from {} to {durable}",
                self.nodes[i].durable_commit_seen
            ));
        }
        self.nodes[i].durable_commit_seen = durable;
        for m in std::mem::take(&mut rd.persisted_messages) {
            self.send(m);
        }
        if let Some(s) = &rd.snapshot {
            let sm =
                StateMachine::decode(s.metadata.index, s.metadata.conf_state.clone(), &s.data)?;
            if let Some(&d) = self.checker.digest_at.get(&sm.applied) {
                if d != sm.digest {
                    return Err(format!(
                        "state machine safety: snapshot at {} installed on {id} differs",
                        sm.applied
                    ));
                }
            }
            self.log(|| format!("node {id} installs snapshot {}", s.metadata.index));
            self.nodes[i].sm = sm;
        }
        for e in std::mem::take(&mut rd.committed_entries) {
            self.apply(i, &e)?;
        }
        for rs in std::mem::take(&mut rd.read_states) {
            self.stats.reads_served += 1;
            if self.trace {
                eprintln!(
                    "[{:>6}] node {id} serves {} at {}",
                    self.now,
                    String::from_utf8_lossy(&rs.request_ctx),
                    rs.index
                );
            }
            if let Some(min) = self.reads.remove(&rs.request_ctx) {
                if rs.index < min {
                    return Err(format!(
                        "linearizable read: node {id} read index {} below index {min} committed before the read",
                        rs.index
                    ));
                }
            }
        }
        if let Some(raw) = self.nodes[i].raw.as_mut() {
            raw.advance(rd);
        }
        Ok(())
    }

    fn apply(&mut self, i: usize, e: &concord_raft::Entry) -> R<()> {
        let node = &mut self.nodes[i];
        let (id, sm, disk) = (node.id, &mut node.sm, &node.disk);
        if e.index <= sm.applied {
            // Already covered by an installed snapshot.
            return Ok(());
        }
        if e.index != sm.applied + 1 {
            return Err(format!(
                "node {id} applies {} after {}",
                e.index, sm.applied
            ));
        }
        // Durable before applied: the entry is in this node's stable log (or under its
        // snapshot).
        let durable =
            e.index < disk.first_index().unwrap_or(0) || disk.term(e.index).ok() == Some(e.term);
        if !durable {
            return Err(format!(
                "node {id} applies {} before its log holds it durably",
                e.index
            ));
        }
        sm.applied = e.index;
        sm.digest = chain(sm.digest, e);
        let digest = sm.digest;
        let node_term = self.nodes[i]
            .raw
            .as_ref()
            .map_or(0, |r| r.hard_state().term);
        let known_by = self.checker.observe_apply(id, node_term, e, digest)?;
        self.stats.applied += 1;
        if e.kind == EntryKind::ConfChange {
            let cc =
                ConfChange::decode(&e.data).map_err(|err| format!("decode conf change: {err}"))?;
            if let Some(raw) = self.nodes[i].raw.as_mut() {
                match raw.apply_conf_change(&cc) {
                    Ok(cs) => {
                        self.log(|| format!("node {id} applied conf {cs:?} at {}", e.index));
                        self.nodes[i].sm.conf = cs;
                        self.stats.conf_changes += 1;
                    }
                    Err(err) => {
                        self.log(|| format!("node {id} rejects conf change at {}: {err}", e.index))
                    }
                }
            }
        }
        // Completeness: leaders of terms after the one by which the entry is known
        // committed must hold it.
        let (index, term) = (e.index, e.term);
        for n in &self.nodes {
            if let Some(r) = &n.raw {
                if r.soft_state().role == StateRole::Leader
                    && r.hard_state().term > known_by
                    && index >= r.first_index()
                    && r.term_at(index) != Some(term)
                {
                    return Err(format!(
                        "leader completeness: leader {} of term {} lacks committed entry {index}/{term}",
                        n.id,
                        r.hard_state().term
                    ));
                }
            }
        }
        Ok(())
    }

    /// Invariants checked after every step.
    fn check_step(&mut self) -> R<()> {
        let trace = self.trace;
        let now = self.now;
        for n in &mut self.nodes {
            let Some(raw) = &n.raw else { continue };
            let id = n.id;
            let hs = raw.hard_state();
            if hs.commit < n.commit_seen {
                return Err(format!(
                    "commit monotonicity: node {id} commit went from {} to {}",
                    n.commit_seen, hs.commit
                ));
            }
            n.commit_seen = hs.commit;
            if raw.soft_state().role == StateRole::Leader {
                let new = self.checker.observe_leader(hs.term, id)?;
                if new || n.led_term != hs.term {
                    n.led_term = hs.term;
                    self.stats.elections += 1;
                    if trace {
                        eprintln!("[{now:>6}] node {id} leads term {}", hs.term);
                    }
                    self.checker.check_leader_completeness(
                        id,
                        hs.term,
                        raw.first_index(),
                        |ix| raw.term_at(ix),
                    )?;
                }
            }
        }
        Ok(())
    }

    fn step_once(&mut self, faults: bool) -> R<()> {
        self.now += 1;
        self.stats.steps += 1;
        if faults {
            self.inject_faults()?;
        }
        self.workload();
        if self.now.checked_rem(STEPS_PER_TICK) == Some(0) {
            for n in &mut self.nodes {
                // Clock skew: a node sometimes misses a tick (safety must not care).
                if faults && self.p.tick_skip > 0.0 && self.rng.gen_bool(self.p.tick_skip) {
                    continue;
                }
                if let Some(r) = n.raw.as_mut() {
                    r.tick();
                }
            }
        }
        while let Some(m) = self.net.pop_due(self.now) {
            self.deliver(m)?;
        }
        for i in 0..self.nodes.len() {
            if self.nodes[i]
                .pending
                .as_ref()
                .is_some_and(|(_, due)| *due <= self.now)
            {
                self.complete_fsync(i)?;
            }
            if self.nodes[i].pending.is_none() {
                self.take_ready(i)?;
            }
        }
        self.check_step()
    }

    fn inject_faults(&mut self) -> R<()> {
        let p = self.p.clone();
        if self.rng.gen_bool(p.crash_per_step) {
            let live: Vec<usize> = (0..self.nodes.len())
                .filter(|&i| self.nodes[i].raw.is_some())
                .collect();
            let down: Vec<usize> = (0..self.nodes.len())
                .filter(|&i| self.nodes[i].started && self.nodes[i].raw.is_none())
                .collect();
            if !down.is_empty() && (self.rng.gen_bool(0.5) || live.len() <= 1) {
                let i = down[self.rng.gen_range(0..down.len())];
                self.start(i)?;
            } else if !live.is_empty() {
                let i = live[self.rng.gen_range(0..live.len())];
                self.crash(i);
            }
        }
        if self.rng.gen_bool(p.partition_per_step) {
            let ids = self.ids();
            match self.rng.gen_range(0..4) {
                0 => self.net.heal(),
                1 => self.net.partition(&mut self.rng, &ids, false),
                2 => self.net.partition(&mut self.rng, &ids, true),
                _ => {
                    let v = ids[self.rng.gen_range(0..ids.len())];
                    self.net.isolate(v, &ids);
                }
            }
            let blocked = self.net.blocked.len();
            self.log(|| format!("partition: {blocked} links cut"));
        }
        Ok(())
    }

    fn workload(&mut self) {
        let p = self.p.clone();
        let Some(li) = self.leader_index() else {
            return;
        };
        let backlog = self.nodes[li]
            .raw
            .as_ref()
            .map_or(0, |r| r.last_index() - r.hard_state().commit);
        // Clients have bounded outstanding requests: do not outrun replication.
        if backlog < 64 && self.rng.gen_bool(p.propose_per_step) {
            self.next_proposal += 1;
            let mut data = self.next_proposal.to_le_bytes().to_vec();
            let pad = self.rng.gen_range(0..64);
            data.resize(8 + pad, 0xab);
            // Sometimes propose through a follower, which forwards.
            let target = if self.rng.gen_bool(0.2) {
                self.rng.gen_range(0..self.nodes.len())
            } else {
                li
            };
            if let Some(r) = self.nodes[target].raw.as_mut() {
                let _ = r.propose(data);
            }
        }
        if self.rng.gen_bool(p.read_per_step) {
            let ctx = format!("read-{}", self.now).into_bytes();
            let target = if self.rng.gen_bool(0.3) {
                self.rng.gen_range(0..self.nodes.len())
            } else {
                li
            };
            if let Some(r) = self.nodes[target].raw.as_mut() {
                if r.read_index(ctx.clone()).is_ok() {
                    let min = self.checker.max_committed;
                    if self.trace {
                        eprintln!(
                            "[{:>6}] read {} on node {} needs >= {min}",
                            self.now,
                            String::from_utf8_lossy(&ctx),
                            target + 1
                        );
                    }
                    self.reads.insert(ctx, min);
                }
            }
        }
        if self.rng.gen_bool(p.transfer_per_step) {
            let cs = self.nodes[li]
                .raw
                .as_ref()
                .map(|r| r.conf_state())
                .unwrap_or_default();
            if !cs.voters.is_empty() {
                let to = cs.voters[self.rng.gen_range(0..cs.voters.len())];
                self.log(|| format!("transfer leadership to {to}"));
                if let Some(r) = self.nodes[li].raw.as_mut() {
                    r.transfer_leader(to);
                }
            }
        }
        if self.rng.gen_bool(p.conf_change_per_step) {
            self.propose_conf_change(li);
        }
        if self.rng.gen_bool(p.compact_per_step) {
            let i = self.rng.gen_range(0..self.nodes.len());
            self.compact(i);
        }
    }

    fn propose_conf_change(&mut self, li: usize) {
        let Some(cs) = self.nodes[li].raw.as_ref().map(|r| r.conf_state()) else {
            return;
        };
        let single = |kind, node_id| ConfChangeSingle { kind, node_id };
        let spare = (0..self.nodes.len()).find(|&i| !self.nodes[i].started);
        let cc = if !cs.voters_outgoing.is_empty() {
            if cs.auto_leave {
                return;
            }
            ConfChange::leave_joint()
        } else {
            let transition = [
                ConfChangeTransition::Auto,
                ConfChangeTransition::Implicit,
                ConfChangeTransition::Explicit,
            ][self.rng.gen_range(0..3)];
            let pick = |rng: &mut SmallRng, v: &[NodeId]| v[rng.gen_range(0..v.len())];
            let changes = match self.rng.gen_range(0..5) {
                0 => {
                    let Some(s) = spare else { return };
                    if self.start(s).is_err() {
                        return;
                    }
                    vec![single(ConfChangeType::AddLearner, self.nodes[s].id)]
                }
                1 if !cs.learners.is_empty() => vec![single(
                    ConfChangeType::AddNode,
                    pick(&mut self.rng, &cs.learners),
                )],
                2 if cs.voters.len() > 3 => vec![single(
                    ConfChangeType::RemoveNode,
                    pick(&mut self.rng, &cs.voters),
                )],
                3 if !cs.learners.is_empty() && cs.voters.len() >= 3 => vec![
                    single(ConfChangeType::AddNode, pick(&mut self.rng, &cs.learners)),
                    single(ConfChangeType::RemoveNode, pick(&mut self.rng, &cs.voters)),
                ],
                4 if cs.voters.len() > 3 => vec![single(
                    ConfChangeType::AddLearner,
                    pick(&mut self.rng, &cs.voters),
                )],
                _ => return,
            };
            ConfChange {
                transition,
                changes,
                context: Vec::new(),
            }
        };
        let leader = self.nodes[li].id;
        self.log(|| format!("leader {leader} proposes {cc:?}"));
        if let Some(r) = self.nodes[li].raw.as_mut() {
            let _ = r.propose_conf_change(&cc);
        }
    }

    fn dump(&self) -> String {
        let mut out = String::new();
        for n in &self.nodes {
            match &n.raw {
                Some(r) => {
                    let st = r.status();
                    out += &format!(
                        "node {}: {:?} hs {:?} applied {} sm.applied {} last {} first {} conf {:?} pending {}\n",
                        n.id, st.soft_state, st.hard_state, st.applied, n.sm.applied, r.last_index(), r.first_index(), r.conf_state(), n.pending.is_some()
                    );
                    if let Some(p) = st.progress {
                        for (id, pr) in p {
                            out += &format!("    {id}: {pr:?}\n");
                        }
                    }
                }
                None => out += &format!("node {}: down (started {})\n", n.id, n.started),
            }
        }
        out
    }

    fn compact(&mut self, i: usize) {
        let n = &self.nodes[i];
        if n.raw.is_none() || n.pending.is_some() {
            return;
        }
        let snap_index = disk_snapshot(&n.disk).metadata.index;
        if n.sm.applied <= snap_index + 4 {
            return;
        }
        let index = n.sm.applied;
        if n.disk
            .create_snapshot(index, n.sm.conf.clone(), n.sm.encode())
            .is_ok()
        {
            let keep = self.rng.gen_range(0..8);
            let _ = n.disk.compact(index.saturating_sub(keep).max(snap_index));
            let id = n.id;
            self.log(|| format!("node {id} snapshots and compacts at {index}"));
        }
    }

    /// Runs the safety phase, then the liveness phase.
    pub fn run(&mut self) -> R<()> {
        for _ in 0..self.p.safety_steps {
            self.step_once(true)?;
        }
        self.liveness()
    }

    fn liveness(&mut self) -> R<()> {
        self.log(|| "heal".to_string());
        self.net.heal();
        self.net.faults = Faults {
            drop: 0.0,
            dup: 0.0,
            max_delay: self.p.faults.max_delay.min(3),
        };
        for i in 0..self.nodes.len() {
            if self.nodes[i].started && self.nodes[i].raw.is_none() {
                self.start(i)?;
            }
        }
        let deadline = self.now + self.p.liveness_ticks * STEPS_PER_TICK;
        // (leader slot, its term, index of the marker entry)
        let mut marker: Option<(usize, u64, u64)> = None;
        let saved = self.p.clone();
        self.p.crash_per_step = 0.0;
        self.p.partition_per_step = 0.0;
        self.p.conf_change_per_step = 0.0;
        self.p.transfer_per_step = 0.0;
        self.p.propose_per_step = 0.0;
        while self.now < deadline {
            self.step_once(false)?;
            let Some(li) = self.leader_index() else {
                continue;
            };
            let raw = self.nodes[li]
                .raw
                .as_ref()
                .map(|r| (r.hard_state().term, r.last_index()));
            let term_now = raw.map_or(0, |(t, _)| t);
            match marker {
                // The same leader, still in the term it appended the marker in (so the
                // marker cannot have been overwritten).
                Some((mi, mt, idx)) if mi == li && mt == term_now => {
                    if self.nodes[li].sm.applied >= idx {
                        self.p = saved;
                        return Ok(());
                    }
                }
                _ => {
                    if let Some((term, last)) = raw {
                        let data = b"liveness-marker".to_vec();
                        if let Some(r) = self.nodes[li].raw.as_mut() {
                            if r.propose(data).is_ok() {
                                marker = Some((li, term, last + 1));
                            }
                        }
                    }
                }
            }
        }
        Err(format!(
            "liveness: no proposal committed within {} ticks after healing (leader: {:?})\n{}",
            self.p.liveness_ticks,
            self.leader_index().map(|i| self.nodes[i].id),
            self.dump()
        ))
    }
}

fn disk_snapshot(disk: &MemStorage) -> concord_raft::Snapshot {
    concord_raft::Storage::snapshot(disk, 0).unwrap_or_default()
}

/// Runs one seed; panics inside the core are turned into errors.
pub fn run_seed(p: SimParams) -> Result<Stats, String> {
    let res = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let mut sim = Sim::new(p)?;
        sim.run()?;
        Ok(sim.stats)
    }));
    match res {
        Ok(r) => r,
        Err(e) => Err(format!(
            "panic: {}",
            e.downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default()
        )),
    }
}
