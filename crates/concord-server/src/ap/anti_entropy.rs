//! Merkle-tree anti-entropy: the repair of what writes, hints and read repair missed
//! (a replica that lost its file, a hint dropped because the hint store was full, a key
//! nobody reads).
//!
//! Each member keeps one Merkle tree per bucket over its keys (concord-storage's
//! `ApStore`, 1,024 leaves by ring-hash range, maintained at every commit, never rebuilt
//! by a scan except at open). An exchange with a peer compares the roots (one call per
//! bucket, 16 bytes each way when they agree), then the leaves, then fetches the peer's
//! keys of each differing leaf and merges into this member those it is a replica of, in
//! one commit per leaf. It pulls only: the peer repairs itself from this member in its
//! own exchanges. States are joined, so a repair can only advance a key, and a tombstone
//! wins over the value it deleted.
//!
//! Trees cover a member's whole bucket rather than one ring range, so two members that
//! share only some ranges (more members than replicas) see the others' leaves differ and
//! fetch keys they then skip; with as many members as replicas (the default three) every
//! difference is a real one.

use std::sync::atomic::Ordering;

use concord_core::crdt::RedisString;
use concord_proto::peer::{ReplicaLeaf, ReplicaTree};
use concord_raft::NodeId;
use concord_storage::ap::state_from_bytes;

use super::{blocking, ApError, ApNode, BUCKETS};

impl ApNode {
    /// One exchange with `peer` over every bucket; the keys repaired here.
    pub async fn anti_entropy_with(&self, peer: NodeId) -> Result<usize, ApError> {
        let unavailable = |what: String| ApError::Unavailable(format!("member {peer}: {what}"));
        let mut client = self
            .client(peer)
            .ok_or_else(|| unavailable("not a member".into()))?;
        let timeout = self.config().timeout;
        let mut repaired = 0;
        for bucket in 0..BUCKETS as u8 {
            let Some(root) = self.inner.store.tree_root(bucket) else {
                continue;
            };
            let request = ReplicaTree {
                cluster_id: self.inner.cluster_id,
                bucket: u32::from(bucket),
                root: root.to_be_bytes().to_vec().into(),
            };
            let theirs = match tokio::time::timeout(timeout, client.tree(request)).await {
                Ok(Ok(r)) => r.into_inner(),
                Ok(Err(e)) => return Err(unavailable(e.message().to_string())),
                Err(_) => return Err(unavailable("timed out".into())),
            };
            if theirs.same {
                continue;
            }
            let mine = self.inner.store.tree_leaves(bucket).unwrap_or_default();
            if theirs.leaves.len() != mine.len() * 16 {
                return Err(unavailable(format!(
                    "its tree has {} bytes of leaves, this member's {}",
                    theirs.leaves.len(),
                    mine.len() * 16
                )));
            }
            let differing = theirs
                .leaves
                .chunks_exact(16)
                .zip(&mine)
                .enumerate()
                .filter(|(_, (t, m))| **t != m.to_be_bytes())
                .map(|(i, _)| i);
            for leaf in differing {
                let request = ReplicaLeaf {
                    cluster_id: self.inner.cluster_id,
                    bucket: u32::from(bucket),
                    leaf: leaf as u32,
                };
                let keys = match tokio::time::timeout(timeout, client.leaf(request)).await {
                    Ok(Ok(r)) => r.into_inner().keys,
                    Ok(Err(e)) => return Err(unavailable(e.message().to_string())),
                    Err(_) => return Err(unavailable("timed out".into())),
                };
                let mut owned = Vec::new();
                for k in keys {
                    if !self.placement(bucket, &k.key).0.contains(&self.me()) {
                        continue;
                    }
                    let state = state_from_bytes(&k.state)
                        .map_err(|e| unavailable(format!("answered {e}")))?;
                    owned.push((k.key.to_vec(), state));
                }
                if owned.is_empty() {
                    continue;
                }
                let node = self.clone();
                repaired += blocking(move || {
                    let (judge, now) = (node.clone(), node.now_ms());
                    let creates = move |s: &RedisString| !judge.collectable(s, now);
                    Ok(node.inner.store.merge_many(bucket, owned, creates)?)
                })
                .await?;
            }
        }
        let c = &self.inner.counters;
        c.anti_entropy_rounds.fetch_add(1, Ordering::Relaxed);
        c.anti_entropy_repaired
            .fetch_add(repaired as u64, Ordering::Relaxed);
        Ok(repaired)
    }

    /// The members to exchange with, in ring order: alive, not this one.
    pub fn anti_entropy_peers(&self) -> Vec<NodeId> {
        let ring = super::read(&self.inner.ring);
        ring.nodes()
            .filter(|n| *n != self.me() && self.is_healthy(*n))
            .collect()
    }
}
