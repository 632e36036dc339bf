//! The driver loop: one task per group replica owns the [`RawNode`], steps what peers
//! send, batches what callers ask, and handles each Ready in the persistence order.

use std::collections::{BTreeMap, HashMap};

use concord_raft::{
    ConfState, Message, MessageType, NodeId, RawNode, Ready, SnapshotStatus, StateRole,
};
use concord_storage::disk::Disk;
use concord_storage::wal::{Batch, WalStorage};
use tokio::sync::{mpsc, watch};
use tokio::time::MissedTickBehavior;

use super::handle::{Reply, Request};
use super::reads::Reads;
use super::resend::Proposal;
use super::{read_state, write_state, NodeConfig, NodeStatus, Shared};
use crate::envelope::RequestKey;
use crate::error::{NodeError, StorageFailure};
use crate::state_machine::StateMachine;
use crate::transport::{Inbox, Transport};

/// Driver iterations between sweeps of waiters whose callers gave up.
const SWEEP_EVERY_TICKS: u64 = 16;

pub(super) struct Driver<S: StateMachine, D: Disk> {
    pub(super) id: NodeId,
    pub(super) raw: RawNode<WalStorage<D>>,
    pub(super) wal: WalStorage<D>,
    pub(super) state: Shared<S>,
    pub(super) transport: std::sync::Arc<dyn Transport>,
    pub(super) status: watch::Sender<NodeStatus<S::Summary>>,
    pub(super) stop_reason: watch::Sender<Option<String>>,
    /// Proposals of this node waiting for their entry to be applied.
    // Hash maps (on the hot path); `fail_all` answers in key order, so that simulation
    // replays do not depend on their iteration order.
    pub(super) waiters: HashMap<RequestKey, Proposal<S::Output>>,
    pub(super) conf_waiters: HashMap<RequestKey, Reply<ConfState>>,
    pub(super) reads: Reads,
    /// On the leader, the traced entries being replicated: their `raft.replicate` steps,
    /// ended when the entry commits ([`crate::traces`]).
    pub(super) replicating: HashMap<RequestKey, crate::telemetry::TraceStep>,
    /// Membership as of each index where it changed (for snapshot metadata).
    pub(super) conf_history: BTreeMap<u64, ConfState>,
    // Invariant: snapshot_index <= applied.
    pub(super) applied: u64,
    /// The highest term of an entry applied since start, and the highest for which lost
    /// proposals were already sent again (`resend.rs`).
    pub(super) applied_term: u64,
    pub(super) resent_through: u64,
    pub(super) snapshot_index: u64,
    pub(super) snapshots_installed: u64,
    pub(super) leader: Option<NodeId>,
    pub(super) config: NodeConfig,
    /// Set when storage failed: the node stops.
    pub(super) fatal: Option<NodeError>,
    /// Fast failover: campaign at this moment if the lost leader is still our leader.
    pub(super) failover: Option<(NodeId, tokio::time::Instant)>,
}

impl<S: StateMachine, D: Disk> Driver<S, D> {
    pub(super) async fn run(
        mut self,
        mut requests: mpsc::Receiver<Request<S::Output>>,
        mut inbox: Inbox,
    ) {
        let mut ticker = tokio::time::interval(self.config.tick);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut ticks: u64 = 0;
        // With lease reads the Raft clock follows the monotonic clock (see `catch_up`).
        let started = tokio::time::Instant::now();
        let mut shutdown: Option<Reply<()>> = None;
        let mut inbox_open = true;
        loop {
            let mut reqs = Vec::new();
            let failover_at = self.failover.map(|(_, at)| at);
            tokio::select! {
                // A fixed order: the same inputs give the same steps (simulation replay).
                biased;
                _ = tokio::time::sleep_until(failover_at.unwrap_or_else(tokio::time::Instant::now)), if failover_at.is_some() => {
                    self.on_failover_due();
                }
                _ = ticker.tick() => {
                    // With lease reads the timer only wakes the loop; `catch_up` ticks.
                    if !self.config.lease_reads {
                        self.tick(&mut ticks);
                    }
                }
                m = inbox.recv(), if inbox_open => match m {
                    Some(batch) => self.step_all(batch),
                    None => inbox_open = false,
                },
                r = requests.recv() => match r {
                    Some(r) => reqs.push(r),
                    // Every handle is gone: nobody can ask for anything any more.
                    None => break,
                },
            }
            // Drain whatever else is queued, so one Ready covers it all.
            for _ in 0..self.config.max_batch {
                match inbox.try_recv() {
                    Ok(batch) => self.step_all(batch),
                    Err(_) => break,
                }
            }
            while reqs.len() < self.config.max_batch {
                match requests.try_recv() {
                    Ok(r) => reqs.push(r),
                    Err(_) => break,
                }
            }
            if self.config.lease_reads {
                self.catch_up(started, &mut ticks);
            }
            self.handle_requests(reqs, &mut shutdown);
            loop {
                while self.fatal.is_none() && self.raw.has_ready() {
                    self.on_ready();
                }
                if self.fatal.is_some() || !self.resend_lost() {
                    break;
                }
            }
            self.maybe_snapshot();
            self.publish(false);
            if shutdown.is_some() || self.fatal.is_some() {
                break;
            }
        }
        self.stop(shutdown);
    }

    /// Fails what still waits, makes the state machine durable, closes it (so the data
    /// can be reopened) and tells everyone why the node stopped.
    fn stop(mut self, shutdown: Option<Reply<()>>) {
        let err = self.fatal.clone().unwrap_or(NodeError::Stopped);
        self.fail_all(&err);
        let result = {
            let mut guard = write_state(&self.state);
            let r = match guard.as_mut() {
                Some(s) => s
                    .sync()
                    .map(|_| ())
                    .map_err(|e| NodeError::from(StorageFailure::new("state machine sync", e))),
                None => Ok(()),
            };
            *guard = None;
            r
        };
        self.publish(true);
        let _ = self.stop_reason.send(Some(err.to_string()));
        if let Some(tx) = shutdown {
            let _ = tx.send(result);
        }
    }

    fn tick(&mut self, ticks: &mut u64) {
        self.raw.tick();
        *ticks += 1;
        if ticks.is_multiple_of(SWEEP_EVERY_TICKS) {
            self.sweep_abandoned();
        }
    }

    /// Gives Raft every tick the monotonic clock says is due since `started`, right
    /// before the requests of this iteration are handled. A leader's lease is counted in
    /// its ticks; ticks that fell behind real time (the driver paused, starved of CPU, or
    /// blocked in a long fsync) would stretch the lease past the moment its followers
    /// may elect another leader. Caught up here, a lease read is checked against ticks at
    /// most one tick behind real time — within the lease's margin — and a pause between
    /// this catch-up and the check only moves the read's linearization point back to the
    /// catch-up, when the lease held (the requests were already received).
    fn catch_up(&mut self, started: tokio::time::Instant, ticks: &mut u64) {
        let period = self.config.tick.as_nanos().max(1);
        let due = u64::try_from(started.elapsed().as_nanos() / period).unwrap_or(u64::MAX);
        while *ticks < due {
            self.tick(ticks);
        }
    }

    fn step_all(&mut self, batch: Vec<Message>) {
        for m in batch {
            if let Err(e) = self.raw.step(m) {
                tracing::debug!(node = %self.id, error = %e, "message not stepped");
            }
        }
    }

    fn handle_requests(&mut self, reqs: Vec<Request<S::Output>>, shutdown: &mut Option<Reply<()>>) {
        let mut batch = Vec::new();
        let mut batch_waiters = Vec::new();
        let mut reads = Vec::new();
        for r in reqs {
            match r {
                Request::Propose { key, data, tx } => {
                    // A copy is kept to send the entry again if a leader loses it.
                    batch.push(data.clone());
                    batch_waiters.push((key, data, tx));
                }
                Request::Read { tx } if self.config.testing_bugs.read_without_read_index => {
                    // Test-only broken rule: the local state, with no quorum check.
                    let _ = tx.send(Ok(()));
                }
                Request::Read { tx } => reads.push(tx),
                Request::Campaign { tx } => {
                    let _ = tx.send(self.raw.campaign().map_err(NodeError::from));
                }
                Request::Progress { tx } => {
                    let r = match self.raw.status().progress {
                        Some(p) => Ok(p.iter().map(|(id, pr)| (*id, pr.matched)).collect()),
                        None => Err(self.not_leader()),
                    };
                    let _ = tx.send(r);
                }
                Request::Transfer { to, tx } => {
                    let r = if self.raw.soft_state().role == StateRole::Leader {
                        self.raw.transfer_leader(to);
                        Ok(())
                    } else {
                        Err(self.not_leader())
                    };
                    let _ = tx.send(r);
                }
                Request::ConfChange { key, cc, tx } => match self.raw.propose_conf_change(&cc) {
                    Ok(()) => {
                        self.conf_waiters.insert(key, tx);
                    }
                    Err(e) => {
                        let _ = tx.send(Err(self.drop_error(e)));
                    }
                },
                Request::Shutdown { tx } => *shutdown = Some(tx),
                Request::PeerDown { id } => self.on_peer_down(id),
            }
        }
        if !batch.is_empty() {
            let n = batch.len();
            match self.raw.propose_batch(batch) {
                Ok(()) => {
                    self.config.telemetry.proposals(n, 0);
                    let term = self.raw.hard_state().term;
                    self.waiters
                        .extend(batch_waiters.into_iter().map(|(key, entry, tx)| {
                            let entry = Some(entry);
                            (key, Proposal { tx, term, entry })
                        }));
                }
                Err(e) => {
                    self.config.telemetry.proposals(0, n);
                    let err = self.drop_error(e);
                    for (_, _, tx) in batch_waiters {
                        let _ = tx.send(Err(err.clone()));
                    }
                }
            }
        }
        if !reads.is_empty() {
            let (ctx, bytes) = self.reads.next_context();
            match self.raw.read_index(bytes) {
                Ok(()) => self.reads.wait(ctx, reads),
                Err(e) => {
                    let err = self.drop_error(e);
                    for tx in reads {
                        let _ = tx.send(Err(err.clone()));
                    }
                }
            }
        }
    }

    fn not_leader(&self) -> NodeError {
        NodeError::NotLeader {
            leader: self.raw.soft_state().leader_id,
        }
    }

    pub(super) fn drop_error(&self, e: concord_raft::Error) -> NodeError {
        match e {
            concord_raft::Error::ProposalDropped => {
                if self.raw.soft_state().leader_id.is_none() {
                    NodeError::NoLeader
                } else {
                    NodeError::ProposalDropped
                }
            }
            other => NodeError::Raft(other),
        }
    }

    fn send(&mut self, msgs: Vec<Message>) {
        // One batch per peer, in the order Raft produced them.
        let mut per_peer: BTreeMap<NodeId, Vec<Message>> = BTreeMap::new();
        for m in msgs {
            per_peer.entry(m.to).or_default().push(m);
        }
        for (to, msgs) in per_peer {
            let has_snapshot = msgs.iter().any(|m| m.msg_type == MessageType::Snapshot);
            match self.transport.send(to, msgs) {
                Ok(()) => {
                    if has_snapshot {
                        self.raw.report_snapshot(to, SnapshotStatus::Finish);
                    }
                }
                Err(_) => {
                    self.config.telemetry.peer_unreachable(to);
                    self.raw.report_unreachable(to);
                    if has_snapshot {
                        self.raw.report_snapshot(to, SnapshotStatus::Failure);
                    }
                }
            }
        }
    }

    pub(super) fn storage_failure(
        &mut self,
        what: &'static str,
        e: impl std::error::Error + Send + Sync + 'static,
    ) {
        tracing::error!(node = %self.id, error = %e, "{what} failed; stopping the node");
        self.fatal = Some(StorageFailure::new(what, e).into());
    }

    fn on_ready(&mut self) {
        let mut rd: Ready = match self.raw.ready() {
            Ok(rd) => rd,
            Err(e) => return self.storage_failure("raft ready", e),
        };
        if let Some(ss) = rd.soft_state {
            if ss.leader_id != self.leader {
                self.leader = ss.leader_id;
                let term = rd
                    .hard_state
                    .map_or(self.raw.hard_state().term, |hs| hs.term);
                self.config.telemetry.leader_changed(ss.leader_id, term);
                self.reads.fail_pending(&NodeError::LeaderChanged);
                self.replicating.clear();
            }
        }
        // 1. The leader's messages go out while it writes its own copy. A Ready that
        //    only advances the leader's commit index (nothing to write, something to
        //    apply) applies first: its messages tell the followers of the commit, and
        //    the proposers' answers need not wait behind those sends.
        let commit_only = rd.entries.is_empty()
            && rd.snapshot.is_none()
            && !rd.must_sync
            && !rd.committed_entries.is_empty()
            && self.raw.soft_state().role == StateRole::Leader;
        let msgs = std::mem::take(&mut rd.messages);
        let after_apply = if commit_only {
            msgs
        } else {
            self.send(msgs);
            Vec::new()
        };
        // 2. A received snapshot: into the state machine first, then the WAL batch
        //    recording it.
        if let Some(snap) = &rd.snapshot {
            self.forget_resendable();
            let started = std::time::Instant::now();
            if let Err(e) = self.install_snapshot(&snap.data) {
                return self.storage_failure("snapshot install", e);
            }
            self.config
                .telemetry
                .snapshot_installed(snap.data.len(), started.elapsed());
            self.conf_history.clear();
            self.conf_history
                .insert(snap.metadata.index, snap.metadata.conf_state.clone());
            self.snapshot_index = snap.metadata.index;
            self.applied = self.applied.max(snap.metadata.index);
            self.snapshots_installed += 1;
        }
        let batch = Batch {
            snapshot: rd.snapshot.as_ref().map(|s| &s.metadata),
            entries: &rd.entries,
            hard_state: rd.hard_state,
            lazy: !rd.must_sync,
        };
        let (entries, synced) = (rd.entries.len(), rd.must_sync);
        let appending = self.trace_appends(&rd.entries);
        let started = std::time::Instant::now();
        if let Err(e) = self.wal.append(batch) {
            return self.storage_failure("wal append", e);
        }
        self.config
            .telemetry
            .wal_written(entries, synced, started.elapsed());
        drop(appending);
        // 3. Votes and acknowledgements only once durable.
        let msgs = std::mem::take(&mut rd.persisted_messages);
        self.send(msgs);
        // 4. Apply, in order.
        if !rd.committed_entries.is_empty() {
            let applying = self.trace_applies(&rd.committed_entries);
            let started = std::time::Instant::now();
            if let Err(e) = self.apply(&rd.committed_entries) {
                return self.storage_failure("apply", e);
            }
            drop(applying);
            self.config
                .telemetry
                .applied(rd.committed_entries.len(), started.elapsed());
        }
        self.send(after_apply);
        let telemetry = &self.config.telemetry;
        self.reads
            .confirm(std::mem::take(&mut rd.read_states), |took| {
                telemetry.read_index(took)
            });
        self.reads.release(self.applied);
        self.raw.advance(rd);
    }

    /// The `raft.wal_append` steps of the traced entries among `entries` (and, on the
    /// leader, their `raft.replicate` steps, which end at commit): nothing when no
    /// proposal is traced.
    fn trace_appends(
        &mut self,
        entries: &[concord_raft::Entry],
    ) -> Vec<crate::telemetry::TraceStep> {
        let traced = crate::traces::of_entries(entries.iter().map(|e| &e.data[..]));
        if traced.is_empty() {
            return Vec::new();
        }
        let telemetry = &self.config.telemetry;
        if self.raw.soft_state().role == StateRole::Leader
            && self.replicating.len() < crate::traces::CAPACITY
        {
            for (key, parent) in &traced {
                if let Some(step) = telemetry.trace_step("raft.replicate", parent) {
                    self.replicating.insert(*key, step);
                }
            }
        }
        traced
            .iter()
            .filter_map(|(_, parent)| telemetry.trace_step("raft.wal_append", parent))
            .collect()
    }

    /// The `raft.apply` steps of the traced entries among `committed`, whose
    /// `raft.replicate` steps end here.
    fn trace_applies(
        &mut self,
        committed: &[concord_raft::Entry],
    ) -> Vec<crate::telemetry::TraceStep> {
        let traced = crate::traces::of_entries(committed.iter().map(|e| &e.data[..]));
        let telemetry = &self.config.telemetry;
        traced
            .iter()
            .filter_map(|(key, parent)| {
                self.replicating.remove(key);
                telemetry.trace_step("raft.apply", parent)
            })
            .collect()
    }

    fn sweep_abandoned(&mut self) {
        self.waiters.retain(|_, p| !p.tx.is_closed());
        self.conf_waiters.retain(|_, tx| !tx.is_closed());
        self.reads.sweep();
    }

    fn fail_all(&mut self, err: &NodeError) {
        let waiters: BTreeMap<_, _> = std::mem::take(&mut self.waiters).into_iter().collect();
        for (_, p) in waiters {
            let _ = p.tx.send(Err(err.clone()));
        }
        let conf_waiters: BTreeMap<_, _> =
            std::mem::take(&mut self.conf_waiters).into_iter().collect();
        for (_, tx) in conf_waiters {
            let _ = tx.send(Err(err.clone()));
        }
        self.reads.fail_all(err);
    }

    pub(super) fn publish(&self, stopped: bool) {
        let st = self.raw.status();
        let new = NodeStatus {
            id: self.id,
            leader: st.soft_state.leader_id,
            role: st.soft_state.role,
            term: st.hard_state.term,
            commit: st.hard_state.commit,
            applied: self.applied,
            snapshot_index: self.snapshot_index,
            snapshots_installed: self.snapshots_installed,
            pending_proposals: self.waiters.len() + self.conf_waiters.len(),
            state: read_state(&self.state)
                .as_ref()
                .map(|s| s.summary())
                .unwrap_or_default(),
            conf_state: self
                .conf_history
                .last_key_value()
                .map(|(_, cs)| cs.clone())
                .unwrap_or_default(),
            stopped,
            fatal: self.fatal.as_ref().map(|e| e.to_string()),
        };
        self.status.send_if_modified(|cur| {
            if *cur != new {
                *cur = new;
                true
            } else {
                false
            }
        });
    }
}
