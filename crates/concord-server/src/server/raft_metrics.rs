//! The keyspace replica's telemetry (concord-runtime's [`Telemetry`] hooks), counted for
//! `/metrics`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use concord_raft::NodeId;
use concord_runtime::Telemetry;

/// Counters fed by the Raft driver's hooks (relaxed atomics: each is read alone).
#[derive(Debug, Default)]
pub(crate) struct RaftMetrics {
    pub leader_changes: AtomicU64,
    pub wal_writes: AtomicU64,
    pub wal_fsyncs: AtomicU64,
    pub wal_write_nanos: AtomicU64,
    pub applied_entries: AtomicU64,
    pub apply_nanos: AtomicU64,
    pub proposals_accepted: AtomicU64,
    pub proposals_refused: AtomicU64,
    pub proposals_resent: AtomicU64,
    pub snapshot_install_nanos: AtomicU64,
    pub peer_unreachable: AtomicU64,
}

fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl Telemetry for RaftMetrics {
    fn leader_changed(&self, _leader: Option<NodeId>, _term: u64) {
        add(&self.leader_changes, 1);
    }

    fn wal_written(&self, _entries: usize, synced: bool, took: Duration) {
        add(&self.wal_writes, 1);
        add(&self.wal_fsyncs, u64::from(synced));
        add(&self.wal_write_nanos, nanos(took));
    }

    fn applied(&self, entries: usize, took: Duration) {
        add(&self.applied_entries, entries as u64);
        add(&self.apply_nanos, nanos(took));
    }

    fn proposals(&self, accepted: usize, refused: usize) {
        add(&self.proposals_accepted, accepted as u64);
        add(&self.proposals_refused, refused as u64);
    }

    fn proposals_resent(&self, proposals: usize) {
        add(&self.proposals_resent, proposals as u64);
    }

    fn snapshot_installed(&self, _bytes: usize, took: Duration) {
        add(&self.snapshot_install_nanos, nanos(took));
    }

    fn peer_unreachable(&self, _peer: NodeId) {
        add(&self.peer_unreachable, 1);
    }
}

impl RaftMetrics {
    /// `(name, help, value)` of each counter, in the order `/metrics` lists them.
    pub fn counters(&self) -> Vec<(&'static str, &'static str, f64)> {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed) as f64;
        let secs = |c: &AtomicU64| c.load(Ordering::Relaxed) as f64 / 1e9;
        vec![
            (
                "concord_raft_leader_changes_seen_total",
                "Changes of the known leader (including to none) since start.",
                get(&self.leader_changes),
            ),
            (
                "concord_raft_proposals_accepted_total",
                "Proposals this member handed to Raft that entered the log.",
                get(&self.proposals_accepted),
            ),
            (
                "concord_raft_proposals_refused_total",
                "Proposals Raft refused (no leader, a leadership transfer, too large).",
                get(&self.proposals_refused),
            ),
            (
                "concord_raft_proposals_resent_total",
                "Proposals sent again because the leader they went to lost them.",
                get(&self.proposals_resent),
            ),
            (
                "concord_raft_applied_entries_total",
                "Committed entries applied to the store.",
                get(&self.applied_entries),
            ),
            (
                "concord_raft_apply_seconds_total",
                "Time spent applying committed entries.",
                secs(&self.apply_nanos),
            ),
            (
                "concord_wal_writes_total",
                "WAL batches written.",
                get(&self.wal_writes),
            ),
            (
                "concord_wal_fsyncs_total",
                "WAL batches made durable (fsync) before returning.",
                get(&self.wal_fsyncs),
            ),
            (
                "concord_wal_write_seconds_total",
                "Time spent writing (and syncing) WAL batches.",
                secs(&self.wal_write_nanos),
            ),
            (
                "concord_raft_snapshot_install_seconds_total",
                "Time spent installing snapshots received from the leader.",
                secs(&self.snapshot_install_nanos),
            ),
            (
                "concord_peer_unreachable_total",
                "Message batches that could not be handed to a peer's connection.",
                get(&self.peer_unreachable),
            ),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hooks_add_up() {
        let m = RaftMetrics::default();
        m.proposals(3, 1);
        m.wal_written(3, true, Duration::from_millis(2));
        m.wal_written(0, false, Duration::from_millis(1));
        m.applied(3, Duration::from_millis(1));
        m.leader_changed(Some(NodeId(1)), 2);
        let got: std::collections::BTreeMap<_, _> =
            m.counters().into_iter().map(|(n, _, v)| (n, v)).collect();
        assert_eq!(got["concord_raft_proposals_accepted_total"], 3.0);
        assert_eq!(got["concord_raft_proposals_refused_total"], 1.0);
        assert_eq!(got["concord_wal_writes_total"], 2.0);
        assert_eq!(got["concord_wal_fsyncs_total"], 1.0);
        assert!((got["concord_wal_write_seconds_total"] - 0.003).abs() < 1e-9);
        assert_eq!(got["concord_raft_applied_entries_total"], 3.0);
        assert_eq!(got["concord_raft_leader_changes_seen_total"], 1.0);
    }
}
