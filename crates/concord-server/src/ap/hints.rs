//! Hinted handoff: the hints this member keeps for members a write did not reach (as the
//! write's coordinator, or as a fallback standing in for a suspected owner) are handed to
//! their member once gossip sees it alive again, then removed, but only if unchanged
//! since they were read (a hint merged again meanwhile is handed over again next round).
//!
//! A hint for a member that has left the cluster goes to the key's current owners
//! instead. Hints are merges of CRDT states, so handing one over twice, or after the
//! owner got the write some other way, changes nothing. A hint whose write is older than
//! the tombstone grace period is dropped instead of handed over (counted as dropped): the
//! tombstone that superseded it may have been collected ([`super::tombstones`]), and the
//! owners that acknowledged the write repair its owner through anti-entropy.

use std::sync::atomic::Ordering;

use concord_raft::NodeId;
use concord_storage::ap::Hint;
use tokio::task::JoinSet;

use super::{blocking, ApNode};

/// Hand-overs in flight at once, per member.
const IN_FLIGHT: usize = 32;

impl ApNode {
    /// Hands over up to `batch` hints per member whose member is alive (or gone from
    /// the cluster); returns how many were handed over and removed.
    pub async fn replay_hints(&self, batch: usize) -> usize {
        let mut handed = 0;
        for (owner, _) in self.inner.store.hint_owners() {
            let member = self.client(owner).is_some();
            if member && !self.is_healthy(owner) {
                continue;
            }
            if !member && !self.ring_is_known() {
                // Not a member, or the member list has not been read yet: wait.
                continue;
            }
            let node = self.clone();
            let hints = match blocking(move || Ok(node.inner.store.hints(owner, batch)?)).await {
                Ok(h) => h,
                Err(e) => {
                    tracing::warn!(owner = %owner, error = %e, "hints could not be read");
                    continue;
                }
            };
            let mut sends = JoinSet::new();
            for hint in hints {
                if sends.len() >= IN_FLIGHT {
                    handed += usize::from(matches!(sends.join_next().await, Some(Ok(true))));
                }
                let node = self.clone();
                sends.spawn(async move { node.hand_over(owner, member, hint).await });
            }
            while let Some(done) = sends.join_next().await {
                handed += usize::from(matches!(done, Ok(true)));
            }
        }
        self.inner
            .counters
            .hints_replayed
            .fetch_add(handed as u64, Ordering::Relaxed);
        handed
    }

    /// Delivers one hint and removes it; whether both happened.
    async fn hand_over(&self, owner: NodeId, member: bool, hint: Hint) -> bool {
        let Hint { bucket, key, state } = hint;
        if self.older_than_grace(&state, self.now_ms()) {
            let node = self.clone();
            let removed =
                blocking(move || Ok(node.inner.store.remove_hint(owner, bucket, &key, &state)?))
                    .await;
            if matches!(removed, Ok(true)) {
                self.inner
                    .counters
                    .hints_dropped
                    .fetch_add(1, Ordering::Relaxed);
            }
            return false;
        }
        let delivered = if member {
            self.merge_at(owner, bucket, key.clone(), state.clone(), None)
                .await
                .is_ok()
        } else {
            let (owners, _) = self.placement(bucket, &key);
            let mut any = false;
            for to in owners {
                any |= self
                    .merge_at(to, bucket, key.clone(), state.clone(), None)
                    .await
                    .is_ok();
            }
            any
        };
        if !delivered {
            return false;
        }
        let node = self.clone();
        blocking(move || Ok(node.inner.store.remove_hint(owner, bucket, &key, &state)?))
            .await
            .unwrap_or(false)
    }
}
