//! Tombstone collection: a `DEL` leaves a tombstone on every replica (so that the value it
//! deleted cannot come back through a repair, a hint or anti-entropy); once it can do no
//! more work it is removed.
//!
//! Each member's pass ([`ApNode::collect_tombstones`]) looks at the tombstones it holds
//! for keys it owns. One is removed when
//!
//! 1. it is older than the grace period ([`super::ApConfig::tombstone_grace`], by the HLC
//!    time of the `DEL`), and
//! 2. every owner of the key (all `n_val` of them, not fallbacks) is seen alive and
//!    answers a read with exactly that state or with nothing; an owner that is down or
//!    answers anything else (the value the tombstone deleted, a newer write) keeps the
//!    tombstone everywhere for a later pass.
//!
//! Then each owner removes the key only if its state is still that tombstone (the `Reap`
//! call; a write that arrived meanwhile keeps it). Once every owner has removed it, no
//! replica holds the deleted value either (each held the tombstone, which replaced it,
//! or nothing), so anti-entropy and read repair have nothing to bring back. A tombstone
//! past the grace period never creates a key on a replica that lacks it (merges,
//! repairs and anti-entropy skip it), so one left on an owner whose `Reap` failed stays
//! there alone until that owner's own pass removes it. What could still hold an older
//! state is a hint: hint replay drops hints older than the grace period for that reason
//! (the owners that acknowledged the write repair the owner through anti-entropy), as
//! Cassandra bounds its hint window by `gc_grace_seconds`. Usually the first owner's pass
//! removes a tombstone from all; the others then find nothing to do.

use std::sync::atomic::Ordering;

use concord_core::clock::Timestamp;
use concord_core::crdt::RedisValue;
use concord_proto::peer::ReplicaReap;
use concord_raft::NodeId;
use concord_storage::ap::state_to_bytes;

use super::{blocking, ApError, ApNode};

impl ApNode {
    /// Whether `state` is a tombstone past the grace period at `now_ms`.
    pub(super) fn collectable(&self, state: &RedisValue, now_ms: u64) -> bool {
        state.is_tombstone() && self.older_than_grace(state, now_ms)
    }

    /// Whether the last write of `state` is older than the grace period at `now_ms`.
    pub(super) fn older_than_grace(&self, state: &RedisValue, now_ms: u64) -> bool {
        let written = Timestamp::unpack(state.last_write()).physical_ms;
        let grace = u64::try_from(self.config().tombstone_grace.as_millis()).unwrap_or(u64::MAX);
        written.saturating_add(grace) < now_ms
    }

    /// One pass over this member's keys: removes every collectable tombstone of the keys
    /// this member owns from all their owners; how many it removed.
    pub async fn collect_tombstones(&self) -> Result<u64, ApError> {
        if self.in_transition() {
            // Owners of the earlier ring may hold what a tombstone deleted.
            return Ok(0);
        }
        let collected = self
            .for_each_page(|node, bucket, page| async move {
                let now = node.now_ms();
                let mut collected = 0;
                for (key, state) in page {
                    if node.collectable(&state, now) {
                        collected += usize::from(node.collect(bucket, key, state).await);
                    }
                }
                collected
            })
            .await?;
        Ok(collected as u64)
    }

    /// Removes one tombstone from every owner if this member is an owner of the key and
    /// every owner holds exactly `state` or nothing; whether every owner that held it
    /// removed it.
    async fn collect(&self, bucket: u8, key: Vec<u8>, state: RedisValue) -> bool {
        let (owners, _) = self.placement(bucket, &key);
        if !owners.contains(&self.me()) || !owners.iter().all(|o| self.is_healthy(*o)) {
            return false;
        }
        let mut holders = Vec::new();
        for owner in owners {
            match self.read_at(owner, bucket, key.clone()).await {
                Ok(Some(theirs)) if theirs == state => holders.push(owner),
                Ok(None) => {}
                _ => return false,
            }
        }
        let mut all = true;
        for owner in holders {
            all &= self
                .reap_at(owner, bucket, key.clone(), state.clone())
                .await
                .unwrap_or(false);
        }
        all
    }

    /// Removes `key` at `at` if its state there is still `state`.
    async fn reap_at(
        &self,
        at: NodeId,
        bucket: u8,
        key: Vec<u8>,
        state: RedisValue,
    ) -> Result<bool, ApError> {
        if at == self.me() {
            return self.reap_local(bucket, key, state).await;
        }
        let mut client = self
            .client(at)
            .ok_or_else(|| ApError::Unavailable(format!("member {at} is not known")))?;
        let request = ReplicaReap {
            cluster_id: self.inner.cluster_id,
            bucket: u32::from(bucket),
            key: key.into(),
            state: state_to_bytes(&state).into(),
        };
        match tokio::time::timeout(self.config().timeout, client.reap(request)).await {
            Ok(Ok(r)) => Ok(r.into_inner().removed),
            Ok(Err(e)) => Err(ApError::Unavailable(e.message().to_string())),
            Err(_) => Err(ApError::Unavailable(format!("member {at}: timed out"))),
        }
    }

    /// Removes `key` here if its state is still `state`.
    pub(super) async fn reap_local(
        &self,
        bucket: u8,
        key: Vec<u8>,
        state: RedisValue,
    ) -> Result<bool, ApError> {
        let node = self.clone();
        let removed =
            blocking(move || Ok(node.inner.store.remove_if_same(bucket, &key, &state)?)).await?;
        if removed {
            self.inner
                .counters
                .tombstones_removed
                .fetch_add(1, Ordering::Relaxed);
        }
        Ok(removed)
    }
}
