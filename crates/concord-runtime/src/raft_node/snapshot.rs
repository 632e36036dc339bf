//! Snapshots: the data a leader sends a far-behind follower ([`StateSource`]), installing
//! a received one, and the policy that takes local snapshots and compacts the WAL.

use concord_raft::SnapshotMetadata;
use concord_storage::disk::Disk;
use concord_storage::wal::{SnapshotSource, SourceError};

use super::driver::Driver;
use super::{read_state, write_state, Shared};
use crate::state_machine::StateMachine;

/// Builds snapshot data for the leader: the current state image (its applied index is at
/// or past the WAL snapshot's index, which is fine: the follower's state machine skips the
/// entries it already has when they are replayed).
pub(super) struct StateSource<S> {
    pub(super) state: Shared<S>,
}

impl<S: StateMachine> SnapshotSource for StateSource<S> {
    fn snapshot_data(&self, _meta: &SnapshotMetadata) -> Option<Result<Vec<u8>, SourceError>> {
        let guard = read_state(&self.state);
        let state = guard.as_ref()?;
        Some(
            state
                .snapshot_data()
                .map_err(|e| Box::new(e) as SourceError),
        )
    }
}

impl<S: StateMachine, D: Disk> Driver<S, D> {
    /// Installs a leader's snapshot into the state machine.
    pub(super) fn install_snapshot(&mut self, data: &[u8]) -> Result<(), SnapshotInstallError> {
        let mut guard = write_state(&self.state);
        let state = guard.as_mut().ok_or(SnapshotInstallError::Closed)?;
        state
            .install_snapshot(data)
            .map_err(|e| SnapshotInstallError::StateMachine(Box::new(e)))
    }

    /// Takes a local snapshot and compacts the WAL once `snapshot_count` entries were
    /// applied since the last one, up to what the state machine has made durable.
    pub(super) fn maybe_snapshot(&mut self) {
        if self.fatal.is_some()
            || self.applied < self.snapshot_index + self.config.snapshot_count
            || self.config.snapshot_count == 0
        {
            return;
        }
        let catch_up = self.config.snapshot_catch_up_entries;
        let target_at = |durable: u64| durable.min(self.applied).saturating_sub(catch_up);
        // The state machine's periodic durable commits usually cover enough: forcing one
        // here would stall this thread while everything applied since the last one is
        // flushed (the largest latency spikes under load). Only when they lag far behind
        // (an idle or slowly committing node) is a sync forced, which bounds the WAL.
        let mut target = {
            let guard = read_state(&self.state);
            let Some(state) = guard.as_ref() else { return };
            target_at(state.durable_applied_index())
        };
        if target <= self.snapshot_index {
            if self.applied < self.snapshot_index + 2 * self.config.snapshot_count {
                return;
            }
            let synced = {
                let mut guard = write_state(&self.state);
                let Some(state) = guard.as_mut() else { return };
                state.sync()
            };
            target = match synced {
                Ok(i) => target_at(i),
                Err(e) => return self.storage_failure("state machine sync", e),
            };
            if target <= self.snapshot_index {
                return;
            }
        }
        let Some(term) = self.raw.term_at(target) else {
            return;
        };
        let conf_state = self
            .conf_history
            .range(..=target)
            .next_back()
            .map(|(_, cs)| cs.clone())
            .unwrap_or_else(|| self.raw.conf_state());
        let meta = SnapshotMetadata {
            index: target,
            term,
            conf_state: conf_state.clone(),
        };
        if let Err(e) = self.wal.compact(meta) {
            return self.storage_failure("wal compact", e);
        }
        // Only the latest membership at or before the snapshot is still needed.
        self.conf_history = self.conf_history.split_off(&target);
        self.conf_history.insert(target, conf_state);
        self.snapshot_index = target;
        tracing::debug!(
            node = %self.id,
            index = target,
            "snapshot taken, wal compacted"
        );
    }
}

/// Why a received snapshot could not be installed.
#[derive(Debug, thiserror::Error)]
pub(super) enum SnapshotInstallError {
    #[error("the state machine is closed")]
    Closed,
    #[error(transparent)]
    StateMachine(Box<dyn std::error::Error + Send + Sync>),
}
