//! Committed entries into the state machine, in order, and results to the callers that
//! proposed them on this node.

use concord_raft::{ConfChange, Entry, EntryKind};
use concord_storage::disk::Disk;

use super::driver::Driver;
use super::write_state;
use crate::envelope::{self, RequestKey};
use crate::error::NodeError;
use crate::state_machine::StateMachine;

/// Why committed entries could not be applied.
#[derive(Debug, thiserror::Error)]
pub(super) enum ApplyError {
    #[error("the state machine is closed")]
    Closed,
    #[error("state machine returned {got} outputs for {want} entries")]
    OutputCount { got: usize, want: usize },
    #[error(transparent)]
    StateMachine(Box<dyn std::error::Error + Send + Sync>),
}

/// One committed entry on its way to the state machine: its index, its payload (none for
/// empty entries and membership changes), and who waits for it.
struct Pending<'a> {
    index: u64,
    payload: Option<&'a [u8]>,
    key: Option<RequestKey>,
}

impl<S: StateMachine, D: Disk> Driver<S, D> {
    pub(super) fn apply(&mut self, entries: &[Entry]) -> Result<(), ApplyError> {
        // (index, payload, request key) per entry; configuration changes are applied to
        // the Raft core here and reach the state machine as payload-less entries.
        let mut batch: Vec<Pending<'_>> = Vec::with_capacity(entries.len());
        let none = |index| Pending {
            index,
            payload: None,
            key: None,
        };
        for e in entries {
            self.applied_term = self.applied_term.max(e.term);
            match e.kind {
                EntryKind::ConfChange => {
                    self.apply_conf_change(e);
                    batch.push(none(e.index));
                }
                EntryKind::Normal if e.data.is_empty() => batch.push(none(e.index)),
                EntryKind::Normal => match envelope::decode(&e.data) {
                    Ok((key, payload)) => batch.push(Pending {
                        index: e.index,
                        payload: Some(payload),
                        key: Some(key),
                    }),
                    Err(err) => {
                        // Every replica sees the same bytes and decides alike.
                        tracing::warn!(node = %self.id, index = e.index, error = %err, "undecodable entry applied as no-op");
                        batch.push(none(e.index));
                    }
                },
            }
        }
        let outputs = {
            let mut guard = write_state(&self.state);
            let state = guard.as_mut().ok_or(ApplyError::Closed)?;
            let input: Vec<(u64, Option<&[u8]>)> =
                batch.iter().map(|p| (p.index, p.payload)).collect();
            state
                .apply_batch(&input)
                .map_err(|e| ApplyError::StateMachine(Box::new(e)))?
        };
        if outputs.len() != batch.len() {
            return Err(ApplyError::OutputCount {
                got: outputs.len(),
                want: batch.len(),
            });
        }
        if let Some(last) = batch.last() {
            self.applied = self.applied.max(last.index);
        }
        // The status shows this batch before anyone hears of it: a caller that sees its
        // write answered and then opens a watch "from now" must start after that write.
        self.publish(false);
        for (pending, output) in batch.iter().zip(outputs) {
            let Some(key) = &pending.key else { continue };
            if key.origin != self.id {
                continue;
            }
            if let Some(p) = self.waiters.remove(key) {
                // `None`: applied before this process started, so it cannot be ours.
                let _ = p.tx.send(output.ok_or(NodeError::AppliedBefore));
            }
        }
        Ok(())
    }

    fn apply_conf_change(&mut self, e: &Entry) {
        let cc = match ConfChange::decode(&e.data) {
            Ok(cc) => cc,
            Err(err) => {
                tracing::warn!(node = %self.id, index = e.index, error = %err, "undecodable conf change");
                return;
            }
        };
        let result = self.raw.apply_conf_change(&cc);
        if let Ok(cs) = &result {
            self.conf_history.insert(e.index, cs.clone());
        }
        let waiter = RequestKey::from_bytes(&cc.context)
            .filter(|k| k.origin == self.id)
            .and_then(|k| self.conf_waiters.remove(&k));
        match (result, waiter) {
            (Ok(cs), Some(tx)) => {
                let _ = tx.send(Ok(cs));
            }
            (Err(err), waiter) => {
                tracing::warn!(node = %self.id, index = e.index, error = %err, "conf change refused");
                if let Some(tx) = waiter {
                    let _ = tx.send(Err(NodeError::Raft(err)));
                }
            }
            (Ok(_), None) => {}
        }
    }
}
