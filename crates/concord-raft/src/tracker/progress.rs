//! The leader's view of one follower's log.
//!
//! # Guarantees
//!
//! 1. `matched < next` always: the leader never sends an entry it knows the follower has
//!    without first learning otherwise.
//! 2. `matched` never decreases while the leader leads (a follower never loses
//!    acknowledged, persisted entries).
//! 3. In [`ProgressState::Probe`] at most one append is outstanding; in
//!    [`ProgressState::Replicate`] appends are pipelined up to the in-flight window; in
//!    [`ProgressState::Snapshot`] nothing is sent until the snapshot is reported.

use serde::{Deserialize, Serialize};

use super::inflights::Inflights;

/// How the leader sends to a follower.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum ProgressState {
    /// The follower's log position is unknown: one append per heartbeat round.
    #[default]
    Probe,
    /// The follower is in sync: appends are pipelined.
    Replicate,
    /// A snapshot is being sent.
    Snapshot,
}

/// Per-follower replication state kept by the leader.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Progress {
    /// Highest index known replicated (and persisted) on the follower.
    pub matched: u64,
    /// Next index to send. Invariant: matched < next.
    pub next: u64,
    /// Sending mode.
    pub state: ProgressState,
    /// Index of the snapshot being sent (in [`ProgressState::Snapshot`]).
    pub pending_snapshot: u64,
    /// Whether the follower was heard from since the last check-quorum.
    pub recent_active: bool,
    /// In probe state: an append was sent and not answered yet.
    pub(crate) probe_sent: bool,
    pub(crate) inflights: Inflights,
    /// Whether the node is a learner.
    pub is_learner: bool,
}

impl Progress {
    pub(crate) fn new(next: u64, max_inflight: usize, max_inflight_bytes: u64) -> Self {
        Self {
            matched: 0,
            next,
            state: ProgressState::Probe,
            pending_snapshot: 0,
            recent_active: false,
            probe_sent: false,
            inflights: Inflights::new(max_inflight, max_inflight_bytes),
            is_learner: false,
        }
    }

    fn reset_state(&mut self, state: ProgressState) {
        self.probe_sent = false;
        self.pending_snapshot = 0;
        self.state = state;
        self.inflights.reset();
    }

    pub(crate) fn become_probe(&mut self) {
        if self.state == ProgressState::Snapshot {
            let pending = self.pending_snapshot;
            self.reset_state(ProgressState::Probe);
            self.next = (self.matched + 1).max(pending + 1);
        } else {
            self.reset_state(ProgressState::Probe);
            self.next = self.matched + 1;
        }
    }

    pub(crate) fn become_replicate(&mut self) {
        self.reset_state(ProgressState::Replicate);
        self.next = self.matched + 1;
    }

    pub(crate) fn become_snapshot(&mut self, snapshot_index: u64) {
        self.reset_state(ProgressState::Snapshot);
        self.pending_snapshot = snapshot_index;
    }

    /// Records an acknowledgement of `n`; returns whether `matched` grew.
    pub(crate) fn maybe_update(&mut self, n: u64) -> bool {
        let updated = self.matched < n;
        if updated {
            self.matched = n;
            self.probe_sent = false;
        }
        self.next = self.next.max(n + 1);
        updated
    }

    /// Records that an append with `entries` entries ending at `last` (`bytes` bytes) was
    /// sent.
    pub(crate) fn sent_entries(&mut self, entries: usize, last: u64, bytes: u64) {
        match self.state {
            ProgressState::Replicate => {
                if entries > 0 {
                    self.next = last + 1;
                    self.inflights.add(last, bytes);
                }
            }
            ProgressState::Probe => {
                if entries > 0 {
                    self.probe_sent = true;
                }
            }
            ProgressState::Snapshot => panic!("sending entries in snapshot state"),
        }
    }

    /// Handles a rejection of the append after `rejected`, with the follower's hint that
    /// its log may match at `match_hint`; returns whether `next` moved (so a new append
    /// should be sent). Stale rejections are ignored.
    pub(crate) fn maybe_decr_to(&mut self, rejected: u64, match_hint: u64) -> bool {
        if self.state == ProgressState::Replicate {
            if rejected <= self.matched {
                return false;
            }
            self.next = self.matched + 1;
            return true;
        }
        if self.next == 0 || self.next - 1 != rejected {
            return false;
        }
        self.next = rejected.min(match_hint + 1).max(self.matched + 1);
        self.probe_sent = false;
        true
    }

    /// Whether sending appends is paused.
    pub fn is_paused(&self) -> bool {
        match self.state {
            ProgressState::Probe => self.probe_sent,
            ProgressState::Replicate => self.inflights.full(),
            ProgressState::Snapshot => true,
        }
    }

    /// Number of appends in flight.
    pub fn inflight_count(&self) -> usize {
        self.inflights.count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_then_replicate_then_reject() {
        let mut p = Progress::new(10, 2, 0);
        p.sent_entries(1, 10, 1);
        assert!(p.is_paused());
        assert!(!p.maybe_decr_to(5, 3), "stale rejection ignored");
        assert!(p.maybe_decr_to(9, 3));
        assert_eq!(p.next, 4);
        assert!(!p.is_paused());
        assert!(p.maybe_update(5));
        p.become_replicate();
        assert_eq!(p.next, 6);
        p.sent_entries(2, 7, 1);
        p.sent_entries(1, 8, 1);
        assert!(p.is_paused());
        assert!(!p.maybe_decr_to(5, 0));
        assert!(p.maybe_decr_to(7, 0));
        assert_eq!(p.next, 6);
    }

    #[test]
    fn snapshot_to_probe_skips_past_snapshot() {
        let mut p = Progress::new(3, 2, 0);
        p.become_snapshot(20);
        assert!(p.is_paused());
        p.become_probe();
        assert_eq!(p.next, 21);
    }
}
