//! Handoff when the ring changes (a member joins or leaves): the keys whose owners change
//! are streamed to their new owners, and reads stay correct while they move.
//!
//! ```text
//! ring change seen (the member list, every 500 ms)
//!   ─▶ transition: the rings before it are kept
//!   ─▶ push pass: every local key ─MergeBatch─▶ its owners that were not owners before
//!      (a page of keys at a time, at most IN_FLIGHT sends: back-pressure)
//!   ─▶ gossip meta = fingerprint of the ring (this member has pushed for it)
//!   ─▶ every live member of the ring announces it: transition over
//!   ─▶ cleanup pass: keys this member no longer owns are merged into their owners
//!      again, then removed here if unchanged
//! ```
//!
//! While a transition lasts, a read also asks the key's owners under the earlier rings
//! and waits for one more answer per such owner ([`ApNode::read_targets`]): a write
//! acknowledged by W owners of either ring is then always among the answers when
//! R + W > N, whether or not it has been handed over yet. Writes go to the new owners
//! only. Tombstone collection waits for the transition to end.
//!
//! A member that *starts* in a ring with other members (an AP-only member registering, a
//! new member, one back with an empty store) has no earlier ring of its own, yet the
//! others may not have pushed it the keys it now owns. It takes the ring without itself
//! as the earlier one, and its transition ends once every other member of the ring
//! announces the current ring (whatever gossip says of their health, for [`START_GRACE`]:
//! at start gossip has seen nobody yet, and "every live member" would be nobody).
//!
//! The cleanup pass also runs when a member starts and every [`CLEANUP_EVERY`]
//! anti-entropy intervals, for copies of keys a member does not own that came another way:
//! a restart after the ring changed, or a read or write that used it as a fallback while
//! an owner was suspected. Anti-entropy covers what a member missed while it was down.

use std::sync::atomic::Ordering;

use concord_core::crdt::RedisValue;
use concord_core::ring::Ring;
use concord_raft::NodeId;
use tokio::task::JoinSet;

use super::{read, write, ApError, ApNode};

/// Sends in flight at once during a pass.
const IN_FLIGHT: usize = 64;

/// Anti-entropy intervals between two cleanup passes outside transitions.
pub const CLEANUP_EVERY: u32 = 6;

/// How long a write received during a transition waits for its copies to the key's new
/// owners before it is acknowledged ([`ApNode::forward_moving`]).
const FORWARD_WAIT: std::time::Duration = std::time::Duration::from_millis(100);

/// How long a member that started in a ring with others waits for every one of them to
/// announce the ring before only the members gossip sees alive count (see the module's
/// documentation): gossip has heard from the live ones well before.
const START_GRACE: std::time::Duration = std::time::Duration::from_secs(10);

/// Wait before a failed push pass is tried again.
const RETRY_AFTER: std::time::Duration = std::time::Duration::from_secs(5);

/// What this member knows of an ongoing ring change.
#[derive(Debug, Default)]
pub(super) struct Handoff {
    /// The rings in force before the current one since the transition began; empty when
    /// there is no transition.
    pub(super) old: Vec<Ring>,
    /// Bumped at every ring change.
    pub(super) version: u64,
    /// The version this member's push pass has finished for.
    pub(super) pushed: u64,
    /// Whether a cleanup pass is due now.
    pub(super) cleanup: bool,
    /// When the last cleanup pass finished.
    pub(super) cleaned_at: Option<std::time::Instant>,
    /// When a failed push pass may be tried again.
    pub(super) retry_at: Option<std::time::Instant>,
    /// What the other members announce (gossip meta).
    pub(super) announced: std::collections::BTreeMap<NodeId, u64>,
    /// When this member started, while the transition it started in lasts.
    pub(super) starting: Option<std::time::Instant>,
}

/// A ring's fingerprint: what members announce once they have pushed for it (never 0).
pub(super) fn fingerprint(ring: &Ring) -> u64 {
    let ids: Vec<u8> = ring.nodes().flat_map(|n| n.get().to_be_bytes()).collect();
    xxhash_rust::xxh3::xxh3_64(&ids).max(1)
}

impl ApNode {
    /// Records a ring change (called once the new ring is in force; `old` is the one it
    /// replaced, `first` when it is the first ring this member learns).
    pub(super) fn ring_changed(&self, old: Ring, first: bool) {
        // The ring without this member: the earlier ring of a member that starts (none
        // when it is alone: nothing can have been written elsewhere).
        let others: Vec<NodeId> = if first {
            read(&self.inner.ring)
                .nodes()
                .filter(|n| *n != self.me())
                .collect()
        } else {
            Vec::new()
        };
        let earlier = if others.is_empty() {
            None
        } else {
            Ring::with_nodes(super::VNODES, others).ok()
        };
        let mut h = write(&self.inner.handoff);
        h.version += 1;
        if first {
            // A member starting up: nothing to push, but copies of keys it no longer
            // owns are sent on and removed, once the others have pushed it what it owns.
            h.pushed = h.version;
            h.cleanup = true;
            if let Some(earlier) = earlier {
                h.old.push(earlier);
                h.starting = Some(std::time::Instant::now());
            }
        } else {
            h.old.push(old);
        }
    }

    /// What this member announces in gossip: the fingerprint of the ring it has pushed
    /// for, or 0 while a push pass is due.
    pub fn handoff_meta(&self) -> u64 {
        // One lock at a time, here and below: no lock order to keep.
        let pushed = {
            let h = read(&self.inner.handoff);
            h.pushed == h.version
        };
        if pushed {
            fingerprint(&read(&self.inner.ring))
        } else {
            0
        }
    }

    /// What the members announce in gossip (their [`ApNode::handoff_meta`]).
    pub fn set_announced(&self, announced: std::collections::BTreeMap<NodeId, u64>) {
        write(&self.inner.handoff).announced = announced;
    }

    /// Whether a ring change is still being handed over.
    pub fn in_transition(&self) -> bool {
        !read(&self.inner.handoff).old.is_empty()
    }

    /// The owners of `key` in `bucket` under the rings before the current one, while a
    /// transition lasts (empty otherwise).
    pub(super) fn earlier_owners(&self, bucket: u8, key: &[u8]) -> Vec<NodeId> {
        // Every read comes here: outside a transition it costs one uncontended read lock.
        if !self.in_transition() {
            return Vec::new();
        }
        let n = self.bucket(bucket).n_val as usize;
        let h = read(&self.inner.handoff);
        let mut out = Vec::new();
        for ring in &h.old {
            for o in ring.preference_list(key, n) {
                if !out.contains(&o) {
                    out.push(o);
                }
            }
        }
        out
    }

    /// Sends a write this member received as a replica on to the key's new owners (owners
    /// under the current ring that were not under an earlier one), when a transition
    /// lasts and this member owned the key under an earlier ring. Such a write can come
    /// from a coordinator that has not seen the ring change yet (a removed member may never
    /// see it) after this member's push pass went by: acknowledged by W owners of the old
    /// ring, one of them perhaps leaving with its copy, it would otherwise be on fewer than
    /// W new owners when the transition ends and reads stop asking the old ones.
    ///
    /// The write's acknowledgement waits for the sends up to [`FORWARD_WAIT`] (a live new
    /// owner answers well within it); a new owner that is silent costs the write no more,
    /// its send goes on behind. A new owner never sends on, so nothing loops.
    pub(super) async fn forward_moving(&self, bucket: u8, key: &[u8], state: &RedisValue) {
        // Empty outside a transition (one uncontended read lock).
        let earlier = self.earlier_owners(bucket, key);
        if !earlier.contains(&self.me()) {
            return;
        }
        let (owners, _) = self.placement(bucket, key);
        let mut sends = JoinSet::new();
        for to in owners {
            if to != self.me() && !earlier.contains(&to) && self.is_healthy(to) {
                self.send(&mut sends, to, bucket, key.to_vec(), state.clone())
                    .await;
            }
        }
        if sends.is_empty() {
            return;
        }
        if tokio::time::timeout(FORWARD_WAIT, drain(&mut sends))
            .await
            .is_err()
        {
            sends.detach_all();
        }
    }

    /// One step of the handoff, run every 500 ms by the server: a push pass when the ring
    /// changed, the end of a transition once every live member has pushed, a cleanup pass
    /// when one is due.
    pub async fn handoff_step(&self) {
        let (version, pushed) = {
            let h = read(&self.inner.handoff);
            (h.version, h.pushed)
        };
        if pushed != version {
            let waiting = read(&self.inner.handoff)
                .retry_at
                .is_some_and(|at| at > std::time::Instant::now());
            if waiting {
                return;
            }
            let outcome = self.push_pass().await;
            let mut h = write(&self.inner.handoff);
            match outcome {
                Ok(()) if h.version == version => {
                    h.pushed = version;
                    h.retry_at = None;
                }
                Ok(()) => {}
                Err(e) => {
                    h.retry_at = Some(std::time::Instant::now() + RETRY_AFTER);
                    tracing::info!(error = %e, "handoff: push pass to retry in 5 s");
                }
            }
            return;
        }
        if self.in_transition() && self.everyone_pushed() {
            let mut h = write(&self.inner.handoff);
            // Not if the ring changed again meanwhile: that change has its own transition.
            if h.version == version {
                h.old.clear();
                h.starting = None;
                h.cleanup = true;
                tracing::info!("handoff: every member has pushed; transition over");
            }
        }
        let due = {
            let h = read(&self.inner.handoff);
            let every = self.config().anti_entropy_interval * CLEANUP_EVERY;
            h.cleanup || h.cleaned_at.is_some_and(|at| at.elapsed() >= every)
        };
        if due && !self.in_transition() {
            let outcome = self.cleanup_pass().await;
            // A failed pass is tried again a period later, not at once.
            let mut h = write(&self.inner.handoff);
            h.cleanup = false;
            h.cleaned_at = Some(std::time::Instant::now());
            drop(h);
            match outcome {
                Ok(0) => {}
                Ok(n) => tracing::info!(keys = n, "handoff: keys not owned here handed on"),
                Err(e) => tracing::info!(error = %e, "handoff: cleanup pass to retry"),
            }
        }
    }

    /// Whether every live member of the ring announces the current ring's fingerprint
    /// (every member, live or not, in the first [`START_GRACE`] of a member's start).
    fn everyone_pushed(&self) -> bool {
        let (fp, members): (u64, Vec<NodeId>) = {
            let ring = read(&self.inner.ring);
            (fingerprint(&ring), ring.nodes().collect())
        };
        let starting = read(&self.inner.handoff)
            .starting
            .is_some_and(|at| at.elapsed() < START_GRACE);
        let expected: Vec<NodeId> = members
            .into_iter()
            .filter(|m| *m != self.me() && (starting || self.is_healthy(*m)))
            .collect();
        let h = read(&self.inner.handoff);
        expected.iter().all(|m| h.announced.get(m) == Some(&fp))
    }

    /// Sends every local key to its owners that were not owners under an earlier ring.
    async fn push_pass(&self) -> Result<(), ApError> {
        let failed = self
            .for_each_page(|node, bucket, page| async move {
                let mut sends = JoinSet::new();
                let mut failed = 0;
                for (key, state) in page {
                    let (owners, _) = node.placement(bucket, &key);
                    let earlier = node.earlier_owners(bucket, &key);
                    for to in owners {
                        if to != node.me() && !earlier.contains(&to) {
                            failed += node
                                .send(&mut sends, to, bucket, key.clone(), state.clone())
                                .await;
                        }
                    }
                }
                failed + drain(&mut sends).await
            })
            .await?;
        if failed > 0 {
            return Err(ApError::Unavailable(format!(
                "{failed} keys could not be handed over"
            )));
        }
        Ok(())
    }

    /// Hands every local key this member does not own to its owners, then removes it here
    /// if unchanged; how many it removed.
    async fn cleanup_pass(&self) -> Result<u64, ApError> {
        let before = self.inner.counters.handoff_removed.load(Ordering::Relaxed);
        let failed = self
            .for_each_page(|node, bucket, page| async move {
                let mut failed = 0;
                for (key, state) in page {
                    let (owners, _) = node.placement(bucket, &key);
                    if owners.contains(&node.me()) {
                        continue;
                    }
                    let mut sends = JoinSet::new();
                    for to in owners {
                        failed += node
                            .send(&mut sends, to, bucket, key.clone(), state.clone())
                            .await;
                    }
                    let missed = drain(&mut sends).await;
                    failed += missed;
                    if missed == 0 && node.reap_local(bucket, key, state).await.unwrap_or(false) {
                        node.inner
                            .counters
                            .handoff_removed
                            .fetch_add(1, Ordering::Relaxed);
                    }
                }
                failed
            })
            .await?;
        if failed > 0 {
            return Err(ApError::Unavailable(format!(
                "{failed} keys could not be handed on"
            )));
        }
        Ok(self.inner.counters.handoff_removed.load(Ordering::Relaxed) - before)
    }

    /// Queues one merge of `key` into `to`, keeping at most [`IN_FLIGHT`] in flight; how
    /// many of the earlier sends it waited for failed.
    async fn send(
        &self,
        sends: &mut JoinSet<bool>,
        to: NodeId,
        bucket: u8,
        key: Vec<u8>,
        state: RedisValue,
    ) -> usize {
        let mut failed = 0;
        while sends.len() >= IN_FLIGHT {
            failed += usize::from(!matches!(sends.join_next().await, Some(Ok(true))));
        }
        let node = self.clone();
        sends.spawn(async move {
            let ok = node.merge_at(to, bucket, key, state, None).await.is_ok();
            if ok {
                node.inner
                    .counters
                    .handoff_sent
                    .fetch_add(1, Ordering::Relaxed);
            }
            ok
        });
        failed
    }
}

/// Waits for every send; how many failed.
async fn drain(sends: &mut JoinSet<bool>) -> usize {
    let mut failed = 0;
    while let Some(done) = sends.join_next().await {
        failed += usize::from(!matches!(done, Ok(true)));
    }
    failed
}
