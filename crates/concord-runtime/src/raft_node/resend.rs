//! Proposals lost with a leader, sent again.
//!
//! A proposal handed to Raft in term T (appended by this node as leader, or forwarded to
//! the leader of T) can only ever become an entry of term T: concord-raft's leaders append
//! a forwarded proposal only in the term it was forwarded in, and nobody forwards it a
//! second time. Log terms never decrease along a log, and an entry of a later term
//! commits only after every earlier entry that will ever commit. So once this node has
//! applied an entry of a term above T without seeing the proposal's own, the proposal is
//! lost for good (its leader died or was deposed before replicating it), and sending it
//! again cannot make it apply twice. That is what this module does, at once, instead of
//! leaving the caller to its deadline: a write sent through a follower while the leader
//! is killed is answered as soon as the next leader commits it.
//!
//! A proposal whose fate a snapshot may have hidden (the snapshot can contain it, applied,
//! with no entry for this node to see) is never sent again: it waits for its deadline, an
//! indefinite outcome, as before.

use std::collections::BTreeMap;

use concord_storage::disk::Disk;

use super::driver::Driver;
use super::handle::Reply;
use crate::envelope::RequestKey;
use crate::state_machine::StateMachine;

/// A proposal of this node waiting for its entry to be applied.
pub(super) struct Proposal<O> {
    pub(super) tx: Reply<O>,
    /// The term it was last handed to Raft in.
    pub(super) term: u64,
    /// The entry, kept to send it again if it is lost; `None` once a snapshot may have
    /// applied it unseen.
    pub(super) entry: Option<Vec<u8>>,
}

impl<S: StateMachine, D: Disk> Driver<S, D> {
    /// Sends again every proposal proven lost by the entries applied so far (see the
    /// module); returns whether it proposed anything, i.e. whether Raft has new work.
    pub(super) fn resend_lost(&mut self) -> bool {
        let proven = if self.config.testing_bugs.resend_unproven {
            // Test-only broken rule: any term change counts as proof.
            self.raw.hard_state().term
        } else {
            self.applied_term
        };
        if proven <= self.resent_through {
            return false;
        }
        self.resent_through = proven;
        let applied_term = proven;
        // Key order, so that simulation replays do not depend on hash iteration order.
        let lost: BTreeMap<RequestKey, Vec<u8>> = self
            .waiters
            .iter()
            .filter(|(_, p)| p.term < applied_term && !p.tx.is_closed())
            .filter_map(|(k, p)| Some((*k, p.entry.clone()?)))
            .collect();
        if lost.is_empty() {
            return false;
        }
        let n = lost.len();
        let (keys, entries): (Vec<RequestKey>, Vec<Vec<u8>>) = lost.into_iter().unzip();
        match self.raw.propose_batch(entries) {
            Ok(()) => {
                let term = self.raw.hard_state().term;
                for k in &keys {
                    if let Some(p) = self.waiters.get_mut(k) {
                        p.term = term;
                    }
                }
                tracing::debug!(node = %self.id, proposals = n, term, "sent again proposals lost with a leader");
                self.config.telemetry.proposals_resent(n);
                true
            }
            Err(e) => {
                // Known not applied: a definite failure the caller may retry.
                let err = self.drop_error(e);
                for k in &keys {
                    if let Some(p) = self.waiters.remove(k) {
                        let _ = p.tx.send(Err(err.clone()));
                    }
                }
                false
            }
        }
    }

    /// A snapshot is being installed: it may contain any pending proposal, applied, so
    /// none of them may be sent again.
    pub(super) fn forget_resendable(&mut self) {
        for p in self.waiters.values_mut() {
            p.entry = None;
        }
    }
}
