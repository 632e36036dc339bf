//! Merkle-tree anti-entropy: the repair of what writes, hints and read repair missed
//! (a replica that lost its file, a hint dropped because the hint store was full, a key
//! nobody reads).
//!
//! Each member keeps one Merkle tree per bucket over its keys (concord-storage's
//! `ApStore`, 1,024 leaves by ring-token range, maintained at every commit, never rebuilt
//! by a scan except at open). An exchange with a peer compares the roots (one call per
//! bucket, 16 bytes each way when they agree), then the leaves, and for each differing
//! leaf looks at the part of it the two members must both hold (the ring's
//! [`shared_spans`](concord_core::ring::Ring::shared_spans) for the bucket's `n_val`):
//!
//! * none of it: skipped (the difference is keys only one of them owns);
//! * all of it: the peer's keys of the leaf are fetched;
//! * part of it (a vnode boundary inside the leaf): both sides digest the shared part of
//!   the leaf (a read of 1/1,024 of the bucket), and the peer's keys in it are fetched
//!   only when the digests differ.
//!
//! The fetched keys this member is a replica of are merged in, one commit per leaf. It
//! pulls only: the peer repairs itself from this member in its own exchanges. States are
//! joined, so a repair can only advance a key, and a tombstone wins over the value it
//! deleted. With as many members as replicas (the default three) every leaf is shared
//! whole; with more, an exchange in sync fetches nothing.

use std::sync::atomic::Ordering;

use concord_core::crdt::RedisValue;
use concord_core::ring::Token;
use concord_proto::peer::{ReplicaLeaf, ReplicaSpan, ReplicaTree};
use concord_raft::NodeId;
use concord_storage::ap::{state_from_bytes, state_to_bytes, TREE_LEAVES};

use super::{blocking, ApError, ApNode, BUCKETS};

impl ApNode {
    /// One exchange with `peer` over every bucket; the keys repaired here.
    pub async fn anti_entropy_with(&self, peer: NodeId) -> Result<usize, ApError> {
        let unavailable = |what: String| ApError::Unavailable(format!("member {peer}: {what}"));
        let mut client = self
            .client(peer)
            .ok_or_else(|| unavailable("not a member".into()))?;
        let timeout = self.config().timeout;
        let ring = super::read(&self.inner.ring).clone();
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
            let differing: Vec<usize> = theirs
                .leaves
                .chunks_exact(16)
                .zip(&mine)
                .enumerate()
                .filter(|(_, (t, m))| **t != m.to_be_bytes())
                .map(|(i, _)| i)
                .collect();
            let n = self.bucket(bucket).n_val as usize;
            for leaf in differing {
                let (lo, hi) = leaf_tokens(leaf);
                let spans = ring.shared_spans(lo, hi, n, self.me(), peer);
                if spans.is_empty() {
                    continue;
                }
                let spans: Vec<(u64, u64)> = spans.iter().map(|(a, b)| (a.0, b.0)).collect();
                let whole = spans == [(lo.0, hi.0)];
                let request = |digest_only: bool| ReplicaLeaf {
                    cluster_id: self.inner.cluster_id,
                    bucket: u32::from(bucket),
                    leaf: leaf as u32,
                    spans: if whole {
                        Vec::new()
                    } else {
                        spans
                            .iter()
                            .map(|&(lo, hi)| ReplicaSpan { lo, hi })
                            .collect()
                    },
                    digest_only,
                };
                if !whole {
                    let theirs =
                        match tokio::time::timeout(timeout, client.leaf(request(true))).await {
                            Ok(Ok(r)) => r.into_inner().digest,
                            Ok(Err(e)) => return Err(unavailable(e.message().to_string())),
                            Err(_) => return Err(unavailable("timed out".into())),
                        };
                    let node = self.clone();
                    let ours = blocking(move || Ok(node.inner.store.leaf(bucket, leaf)?)).await?;
                    if digest(&within(ours, &spans))[..] == theirs[..] {
                        continue;
                    }
                }
                let keys = match tokio::time::timeout(timeout, client.leaf(request(false))).await {
                    Ok(Ok(r)) => r.into_inner().keys,
                    Ok(Err(e)) => return Err(unavailable(e.message().to_string())),
                    Err(_) => return Err(unavailable("timed out".into())),
                };
                self.inner
                    .counters
                    .anti_entropy_fetched
                    .fetch_add(keys.len() as u64, Ordering::Relaxed);
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
                    let creates = move |s: &RedisValue| !judge.collectable(s, now);
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

/// The ring tokens Merkle leaf `leaf` covers, both ends included.
fn leaf_tokens(leaf: usize) -> (Token, Token) {
    let shift = 64 - TREE_LEAVES.trailing_zeros();
    let lo = (leaf as u64) << shift;
    (Token(lo), Token(lo | (u64::MAX >> (64 - shift))))
}

/// The entries whose key's ring token lies in one of `spans` (all of them when there are
/// no spans).
pub(super) fn within(
    mut entries: Vec<(Vec<u8>, RedisValue)>,
    spans: &[(u64, u64)],
) -> Vec<(Vec<u8>, RedisValue)> {
    if !spans.is_empty() {
        entries.retain(|(k, _)| {
            let t = Token::of_key(k).0;
            spans.iter().any(|&(lo, hi)| lo <= t && t <= hi)
        });
    }
    entries
}

/// A digest of keys and their states, in the order given (the store's, the same on both
/// sides of an exchange).
pub(super) fn digest(entries: &[(Vec<u8>, RedisValue)]) -> [u8; 16] {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    for (k, state) in entries {
        let state = state_to_bytes(state);
        h.update(&(k.len() as u64).to_le_bytes());
        h.update(k);
        h.update(&(state.len() as u64).to_le_bytes());
        h.update(&state);
    }
    h.digest128().to_be_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leaves_tile_the_ring() {
        assert_eq!(leaf_tokens(0).0, Token(0));
        assert_eq!(leaf_tokens(TREE_LEAVES - 1).1, Token(u64::MAX));
        for i in 1..TREE_LEAVES {
            assert_eq!(leaf_tokens(i - 1).1 .0 + 1, leaf_tokens(i).0 .0);
        }
    }
}
