//! Merkle tree over key-hash buckets, for anti-entropy between replicas.
//!
//! The tree has a fixed number of leaf *buckets*, a power of two `2^depth`. A key falls in
//! the bucket named by the top `depth` bits of [`crate::ring::hash_key`], so a bucket is a
//! contiguous arc of ring tokens and buckets follow the ring's clockwise order. A bucket's
//! hash summarises the multiset of `(key, value_digest)` pairs stored in it; each internal
//! node hashes its two children. Two replicas holding the same data have the same root; when
//! the roots differ, descending only into differing children names the buckets to repair.
//!
//! ```text
//!   depth 0            [1]                  node i has children 2i and 2i+1
//!   depth 1       [2]        [3]            (heap order; index 0 unused)
//!   depth 2     [4] [5]    [6] [7]          leaves = buckets 0..4
//! ```
//!
//! # Bucket hash: wrapping sum of `xxh3_128`
//!
//! A bucket's hash is the wrapping (mod 2^128) sum of `xxh3_128(len(key) as u64 LE ++ key ++
//! value_digest)` over its pairs; the length prefix makes the `(key, digest)` split
//! unambiguous. Addition is commutative and invertible, so a bucket is updated in O(1)
//! without reading its other keys (insert adds, remove subtracts) and the result does not
//! depend on the order of the operations. Unlike XOR, a pair added twice does not cancel
//! out: the tree is a multiset, and a remove must match an earlier insert.
//!
//! Weaknesses, accepted for anti-entropy between trusting replicas:
//! * the combination is linear, so someone choosing keys and digests on purpose can build
//!   two different multisets with the same sum (xxh3 is not cryptographic anyway); accidental
//!   collisions have probability about 2^-128 per compared node;
//! * the tree cannot tell whether a removed pair was ever inserted: removing a pair that is
//!   not there silently corrupts the bucket until it is rebuilt. The caller must mirror its
//!   storage exactly: insert when a version is written, [`MerkleTree::update`] when it is
//!   replaced, remove when it is deleted or purged.
//!
//! # Guarantees
//!
//! 1. **Content-determined.** Every node is a function of the multiset of pairs below it
//!    only, not of the operation order; equal multisets give equal trees.
//! 2. **O(depth) updates.** Insert, remove and update touch one bucket and its `depth`
//!    ancestors.
//! 3. **Exact diff.** [`MerkleTree::diff`] returns, ascending, exactly the buckets whose
//!    hashes differ (barring a 128-bit collision, exactly the buckets whose multisets
//!    differ), and visits only children of differing nodes: O(d * depth) nodes for d
//!    differing buckets.
//! 4. **Remote comparison.** [`MerkleTree::nodes_at`] / [`MerkleTree::differing`] /
//!    [`MerkleTree::children`] run the same descent one level per round trip; at the leaf
//!    level they yield the same buckets as [`MerkleTree::diff`] would locally.
//! 5. **Typed mismatches.** Comparing trees of different bucket counts, or asking for a level
//!    or node that does not exist, is an error, never a panic, since it may come from a peer.

use xxhash_rust::xxh3::{xxh3_128, Xxh3Default};

#[cfg(test)]
mod tests;

/// Largest accepted depth: 2^20 buckets, 32 MiB of node hashes.
pub const MAX_DEPTH: u32 = 20;

/// Errors of Merkle tree construction and comparison.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MerkleError {
    /// The bucket count is not a power of two in `1..=2^MAX_DEPTH`.
    #[error("bucket count must be a power of two in 1..={max}, got {buckets}")]
    InvalidBucketCount {
        /// The rejected count.
        buckets: usize,
        /// `2^MAX_DEPTH`.
        max: usize,
    },
    /// The two trees have different bucket counts.
    #[error("bucket counts differ: local {local}, remote {remote}")]
    BucketCountMismatch {
        /// Local bucket count.
        local: usize,
        /// Remote bucket count.
        remote: usize,
    },
    /// The requested level is below the leaves.
    #[error("depth {depth} is beyond the leaf level {max}")]
    DepthOutOfRange {
        /// Requested depth.
        depth: u32,
        /// Depth of the leaves.
        max: u32,
    },
    /// The requested node index does not exist at its level.
    #[error("node {index} does not exist at depth {depth}")]
    IndexOutOfRange {
        /// Depth of the level.
        depth: u32,
        /// Index within the level.
        index: usize,
    },
    /// [`MerkleTree::validate`] found an internal node that does not hash its children.
    #[error("node {index} at depth {depth} does not hash its children")]
    Corrupt {
        /// Depth of the node.
        depth: u32,
        /// Index of the node within its level.
        index: usize,
    },
}

/// A Merkle tree over `2^depth` key-hash buckets; see the module docs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MerkleTree {
    // Invariant: depth <= MAX_DEPTH.
    depth: u32,
    // Heap layout: nodes[1] is the root, nodes[i] has children 2i and 2i+1, the buckets are
    // nodes[2^depth..2^(depth+1)], nodes[0] is unused. Invariant: every internal node equals
    // combine(children).
    nodes: Vec<u128>,
}

/// Hash of one `(key, value_digest)` pair: a bucket sums these.
pub fn pair_hash(key: &[u8], value_digest: &[u8]) -> u128 {
    let mut hasher = Xxh3Default::new();
    hasher.update(&(key.len() as u64).to_le_bytes());
    hasher.update(key);
    hasher.update(value_digest);
    hasher.digest128()
}

fn combine(left: u128, right: u128) -> u128 {
    let mut bytes = [0u8; 32];
    bytes[..16].copy_from_slice(&left.to_le_bytes());
    bytes[16..].copy_from_slice(&right.to_le_bytes());
    xxh3_128(&bytes)
}

impl MerkleTree {
    /// An empty tree with `buckets` leaves, a power of two in `1..=2^MAX_DEPTH`.
    pub fn new(buckets: usize) -> Result<MerkleTree, MerkleError> {
        let max = 1usize << MAX_DEPTH;
        if !buckets.is_power_of_two() || buckets > max {
            return Err(MerkleError::InvalidBucketCount { buckets, max });
        }
        let depth = buckets.trailing_zeros();
        let mut nodes = vec![0u128; 2 * buckets];
        for i in (1..buckets).rev() {
            nodes[i] = combine(nodes[2 * i], nodes[2 * i + 1]);
        }
        let tree = MerkleTree { depth, nodes };
        debug_assert_eq!(tree.validate(), Ok(()));
        Ok(tree)
    }

    /// Number of leaf buckets, `2^depth`.
    pub fn buckets(&self) -> usize {
        1 << self.depth
    }

    /// Depth of the leaves (the root is depth 0).
    pub fn depth(&self) -> u32 {
        self.depth
    }

    /// The bucket `key` falls in: the top `depth` bits of its ring token.
    pub fn bucket_of(&self, key: &[u8]) -> usize {
        if self.depth == 0 {
            return 0;
        }
        (crate::ring::hash_key(key) >> (64 - self.depth)) as usize
    }

    /// Root hash; equal roots mean equal contents (barring a 128-bit collision).
    pub fn root(&self) -> u128 {
        self.nodes[1]
    }

    /// Hash of `bucket`, or `None` if there is no such bucket.
    pub fn bucket_hash(&self, bucket: usize) -> Option<u128> {
        self.level(self.depth)
            .and_then(|leaves| leaves.get(bucket).copied())
    }

    /// Records that `key` is stored with `value_digest`. O(depth).
    pub fn insert(&mut self, key: &[u8], value_digest: &[u8]) {
        let bucket = self.bucket_of(key);
        let hash = pair_hash(key, value_digest);
        self.apply(bucket, |sum| sum.wrapping_add(hash));
    }

    /// Records that the pair `(key, value_digest)`, inserted before, is gone. O(depth).
    pub fn remove(&mut self, key: &[u8], value_digest: &[u8]) {
        let bucket = self.bucket_of(key);
        let hash = pair_hash(key, value_digest);
        self.apply(bucket, |sum| sum.wrapping_sub(hash));
    }

    /// Replaces the pair `(key, old_digest)` by `(key, new_digest)`. O(depth).
    pub fn update(&mut self, key: &[u8], old_digest: &[u8], new_digest: &[u8]) {
        let bucket = self.bucket_of(key);
        let old = pair_hash(key, old_digest);
        let new = pair_hash(key, new_digest);
        self.apply(bucket, |sum| sum.wrapping_sub(old).wrapping_add(new));
    }

    fn apply(&mut self, bucket: usize, change: impl FnOnce(u128) -> u128) {
        assert!(bucket < self.buckets(), "bucket_of returns a valid bucket");
        let mut i = self.buckets() + bucket;
        self.nodes[i] = change(self.nodes[i]);
        while i > 1 {
            i /= 2;
            self.nodes[i] = combine(self.nodes[2 * i], self.nodes[2 * i + 1]);
        }
    }

    /// The buckets whose hashes differ from `other`'s, ascending. Descends only into
    /// differing subtrees.
    pub fn diff(&self, other: &MerkleTree) -> Result<Vec<usize>, MerkleError> {
        let mut visited = 0;
        self.diff_counting(other, &mut visited)
    }

    fn diff_counting(
        &self,
        other: &MerkleTree,
        visited: &mut usize,
    ) -> Result<Vec<usize>, MerkleError> {
        self.check_same_shape(other.buckets())?;
        let leaves = self.buckets();
        let mut differing = Vec::new();
        let mut stack = vec![1usize];
        while let Some(i) = stack.pop() {
            *visited += 1;
            if self.nodes[i] == other.nodes[i] {
                continue;
            }
            if i >= leaves {
                differing.push(i - leaves);
            } else {
                // Right first so the left subtree pops first: buckets come out ascending.
                stack.push(2 * i + 1);
                stack.push(2 * i);
            }
        }
        debug_assert!(differing.windows(2).all(|w| w[0] < w[1]));
        Ok(differing)
    }

    /// The node hashes at `depth` (2^depth of them, left to right), `None` below the leaves.
    /// `level(depth())` are the bucket hashes.
    pub fn level(&self, depth: u32) -> Option<&[u128]> {
        if depth > self.depth {
            return None;
        }
        Some(&self.nodes[1 << depth..2 << depth])
    }

    /// The hashes of the nodes `indices` at `depth`, to send to a peer.
    pub fn nodes_at(
        &self,
        depth: u32,
        indices: &[usize],
    ) -> Result<Vec<(usize, u128)>, MerkleError> {
        let level = self.checked_level(depth)?;
        indices
            .iter()
            .map(|&index| {
                level
                    .get(index)
                    .map(|&hash| (index, hash))
                    .ok_or(MerkleError::IndexOutOfRange { depth, index })
            })
            .collect()
    }

    /// Of the peer's `(index, hash)` nodes at `depth` (from its [`MerkleTree::nodes_at`]),
    /// the indices whose hashes differ from ours, in the given order. `remote_buckets` is the
    /// peer's bucket count, exchanged beforehand.
    pub fn differing(
        &self,
        remote_buckets: usize,
        depth: u32,
        remote: &[(usize, u128)],
    ) -> Result<Vec<usize>, MerkleError> {
        self.check_same_shape(remote_buckets)?;
        let level = self.checked_level(depth)?;
        let mut differing = Vec::new();
        for &(index, hash) in remote {
            let local = level
                .get(index)
                .ok_or(MerkleError::IndexOutOfRange { depth, index })?;
            if *local != hash {
                differing.push(index);
            }
        }
        Ok(differing)
    }

    /// The indices, one level down, of the children of `indices`: what to request next.
    pub fn children(indices: &[usize]) -> Vec<usize> {
        indices.iter().flat_map(|&i| [2 * i, 2 * i + 1]).collect()
    }

    /// Checks that every internal node hashes its children. O(buckets).
    pub fn validate(&self) -> Result<(), MerkleError> {
        assert!(self.depth <= MAX_DEPTH);
        assert_eq!(self.nodes.len(), 2 * self.buckets());
        // Bottom-up, so the reported node is the lowest stale one.
        for i in (1..self.buckets()).rev() {
            if self.nodes[i] != combine(self.nodes[2 * i], self.nodes[2 * i + 1]) {
                let depth = usize::BITS - 1 - i.leading_zeros();
                return Err(MerkleError::Corrupt {
                    depth,
                    index: i - (1 << depth),
                });
            }
        }
        Ok(())
    }

    fn check_same_shape(&self, remote_buckets: usize) -> Result<(), MerkleError> {
        if remote_buckets != self.buckets() {
            return Err(MerkleError::BucketCountMismatch {
                local: self.buckets(),
                remote: remote_buckets,
            });
        }
        Ok(())
    }

    fn checked_level(&self, depth: u32) -> Result<&[u128], MerkleError> {
        self.level(depth).ok_or(MerkleError::DepthOutOfRange {
            depth,
            max: self.depth,
        })
    }
}
