//! Consistent-hash ring with virtual nodes (Dynamo / Cassandra style).
//!
//! Every physical node places `vnodes_per_node` virtual nodes ("vnodes") on a circle of
//! 2^64 [`Token`]s. A key is hashed onto the circle with [`hash_key`] and belongs to the first
//! vnode at or after its token, walking clockwise and wrapping from `u64::MAX` to `0`. The
//! preference list of a key (the replicas of an AP bucket) is the next `n` *distinct physical*
//! nodes found on that walk.
//!
//! ```text
//!        token 0
//!          |      (t3, t0] wraps around 0 and belongs to the vnode at t0
//!     t3 o   o t0
//!       /     \      a key hashed to k in (t0, t1] belongs to the vnode at t1
//!     t2 o---o t1
//! ```
//!
//! # Guarantees
//!
//! 1. **Stable placement.** Key tokens are `xxh3_64(key)` and the token of vnode `i` of node
//!    `n` is `xxh3_64(n.to_le_bytes() ++ (i as u32).to_le_bytes())`. XXH3 is specified and
//!    its output is identical on every platform and release, so two processes (or two
//!    versions) that know the same node set agree on every owner. Tokens are therefore part
//!    of the persistent format: changing either formula is a data migration.
//! 2. **Deterministic ties.** When two vnodes share a token, the one of the smaller
//!    [`NodeId`] owns it and the other owns an empty range. The ring is a pure function of
//!    `(vnodes_per_node, set of nodes)`, independent of the order of `add_node` calls.
//! 3. **O(log n) lookup.** Tokens live in one sorted `Vec<Token>` with the owners in a
//!    parallel `Vec`, so [`Ring::owner`] is a single binary search over 8-byte tokens (no
//!    linear scan, no tree walk).
//! 4. **Distinct replicas.** [`Ring::preference_list`] returns `min(n, node count)` distinct
//!    physical nodes, the first being [`Ring::owner`].
//! 5. **Exact movement.** [`Ring::add_node`] and [`Ring::remove_node`] return the
//!    [`TokenRange`]s whose *primary owner* changed, no more and no less: a token's owner
//!    changed iff it lies in one of the returned ranges, and `from`/`to` name the owners
//!    before and after. Adding a node only ever moves tokens *to* that node; removing one only
//!    moves tokens *from* it.
//! 6. **Compact persistence.** A ring serialises as its [`RingDescription`] (vnode count and
//!    node ids); the tokens are recomputed on load, which also re-validates them.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize};

#[cfg(test)]
mod tests;

/// Largest accepted `vnodes_per_node`.
///
/// Bounds memory (16 bytes per vnode) and the cost of a membership change; 4,096 is far
/// above the 256 that Cassandra defaults to.
pub const MAX_VNODES_PER_NODE: u32 = 4096;

/// Hashes a key onto the ring: `xxh3_64` with the default seed and secret.
///
/// The result is part of the persistent format (see the module's `# Guarantees`): it decides
/// which nodes store a key, so it must never change.
#[inline]
pub fn hash_key(key: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(key)
}

/// The token of virtual node `index` of `node`.
///
/// Hashes the 12 bytes `node.0.to_le_bytes() ++ index.to_le_bytes()`. Part of the persistent
/// format, like [`hash_key`].
pub fn vnode_token(node: NodeId, index: u32) -> Token {
    let mut bytes = [0u8; 12];
    bytes[..8].copy_from_slice(&node.0.to_le_bytes());
    bytes[8..].copy_from_slice(&index.to_le_bytes());
    Token(hash_key(&bytes))
}

/// A physical node of the ring (the crate-wide node id).
pub use crate::NodeId;

/// A position on the ring's circle of 2^64 points.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Token(pub u64);

impl Token {
    /// The token of a key, `Token(hash_key(key))`.
    #[inline]
    pub fn of_key(key: &[u8]) -> Token {
        Token(hash_key(key))
    }
}

impl fmt::Display for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#018x}", self.0)
    }
}

/// An arc of the circle, `(start, end]`, whose primary owner changed.
///
/// * `start < end`: the tokens `t` with `start < t <= end`.
/// * `start > end`: the arc wraps past `u64::MAX`: `t > start || t <= end`.
/// * `start == end`: the whole circle (only returned when the ring goes from or to empty,
///   or when every token changes hands).
///
/// An empty arc is never returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TokenRange {
    /// Exclusive lower end.
    pub start: Token,
    /// Inclusive upper end.
    pub end: Token,
    /// Owner before the change; `None` if the ring was empty.
    pub from: Option<NodeId>,
    /// Owner after the change; `None` if the ring became empty.
    pub to: Option<NodeId>,
}

impl TokenRange {
    /// Whether `token` lies in `(start, end]` (see the type's docs for wrap-around).
    pub fn contains(&self, token: Token) -> bool {
        match self.start.cmp(&self.end) {
            std::cmp::Ordering::Less => self.start < token && token <= self.end,
            std::cmp::Ordering::Greater => token > self.start || token <= self.end,
            std::cmp::Ordering::Equal => true,
        }
    }

    /// Whether the range is the whole circle.
    pub fn is_full(&self) -> bool {
        self.start == self.end
    }
}

/// Errors of ring construction and membership changes.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RingError {
    /// `vnodes_per_node` was 0 or above [`MAX_VNODES_PER_NODE`].
    #[error("vnodes per node must be in 1..={max}, got {count}")]
    InvalidVnodeCount {
        /// The rejected count.
        count: u32,
        /// [`MAX_VNODES_PER_NODE`].
        max: u32,
    },
    /// The node is already a member.
    #[error("node {0} is already in the ring")]
    NodeExists(NodeId),
    /// The node is not a member.
    #[error("node {0} is not in the ring")]
    UnknownNode(NodeId),
    /// [`Ring::validate`] found a broken invariant (a bug, or a corrupted ring).
    #[error("ring invariant violated: {0}")]
    Invariant(&'static str),
}

/// What a ring is made of; the serialised form of [`Ring`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RingDescription {
    /// Virtual nodes per physical node.
    pub vnodes_per_node: u32,
    /// Member nodes, ascending.
    pub nodes: Vec<NodeId>,
}

/// Sorted vnode table: parallel arrays so that the binary search touches only tokens.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Entries {
    // Invariant: tokens.len() == owners.len(), and the pairs (tokens[i], owners[i]) are sorted
    // ascending, so equal tokens are ordered by node id.
    tokens: Vec<Token>,
    owners: Vec<NodeId>,
}

impl Entries {
    fn from_sorted(pairs: Vec<(Token, NodeId)>) -> Entries {
        debug_assert!(pairs.windows(2).all(|w| w[0] <= w[1]));
        let (tokens, owners) = pairs.into_iter().unzip();
        Entries { tokens, owners }
    }

    fn len(&self) -> usize {
        self.tokens.len()
    }

    /// Index of the vnode owning `token`: the first one at or after it, wrapping to 0.
    #[inline]
    fn owner_index(&self, token: Token) -> Option<usize> {
        if self.tokens.is_empty() {
            return None;
        }
        // partition_point returns the first of equal tokens, the smallest node id (guarantee 2).
        let i = self.tokens.partition_point(|t| *t < token);
        Some(if i == self.tokens.len() { 0 } else { i })
    }

    /// Owner of the vnode at `index`, where `index == len` means "past the last", wrapping.
    fn owner_at(&self, index: usize) -> Option<NodeId> {
        if self.owners.is_empty() {
            None
        } else if index == self.owners.len() {
            Some(self.owners[0])
        } else {
            Some(self.owners[index])
        }
    }
}

/// A consistent-hash ring; see the module docs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RingDescription", into = "RingDescription")]
pub struct Ring {
    // Invariant: 1 <= vnodes_per_node <= MAX_VNODES_PER_NODE.
    vnodes_per_node: u32,
    // Invariant: exactly the owners appearing in `entries`, each vnodes_per_node times.
    nodes: BTreeSet<NodeId>,
    entries: Entries,
}

impl Ring {
    /// An empty ring placing `vnodes_per_node` virtual nodes per physical node.
    pub fn new(vnodes_per_node: u32) -> Result<Ring, RingError> {
        if vnodes_per_node == 0 || vnodes_per_node > MAX_VNODES_PER_NODE {
            return Err(RingError::InvalidVnodeCount {
                count: vnodes_per_node,
                max: MAX_VNODES_PER_NODE,
            });
        }
        Ok(Ring {
            vnodes_per_node,
            nodes: BTreeSet::new(),
            entries: Entries::default(),
        })
    }

    /// A ring holding `nodes`, built in one O(v log v) sort instead of one merge per node.
    pub fn with_nodes(
        vnodes_per_node: u32,
        nodes: impl IntoIterator<Item = NodeId>,
    ) -> Result<Ring, RingError> {
        let mut ring = Ring::new(vnodes_per_node)?;
        for node in nodes {
            if !ring.nodes.insert(node) {
                return Err(RingError::NodeExists(node));
            }
        }
        let mut pairs = Vec::with_capacity(ring.nodes.len() * vnodes_per_node as usize);
        for &node in &ring.nodes {
            pairs.extend((0..vnodes_per_node).map(|i| (vnode_token(node, i), node)));
        }
        pairs.sort_unstable();
        ring.entries = Entries::from_sorted(pairs);
        debug_assert_eq!(ring.validate(), Ok(()));
        Ok(ring)
    }

    /// The description this ring is a function of.
    pub fn description(&self) -> RingDescription {
        RingDescription {
            vnodes_per_node: self.vnodes_per_node,
            nodes: self.nodes.iter().copied().collect(),
        }
    }

    /// Virtual nodes per physical node.
    pub fn vnodes_per_node(&self) -> u32 {
        self.vnodes_per_node
    }

    /// Member nodes, ascending.
    pub fn nodes(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.nodes.iter().copied()
    }

    /// Number of physical nodes.
    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }

    /// Whether the ring has no nodes.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Whether `node` is a member.
    pub fn contains(&self, node: NodeId) -> bool {
        self.nodes.contains(&node)
    }

    /// Primary owner of `key`; `None` iff the ring is empty. O(log vnodes).
    #[inline]
    pub fn owner(&self, key: &[u8]) -> Option<NodeId> {
        self.owner_of_token(Token::of_key(key))
    }

    /// Primary owner of `token`; `None` iff the ring is empty. O(log vnodes).
    #[inline]
    pub fn owner_of_token(&self, token: Token) -> Option<NodeId> {
        self.entries
            .owner_index(token)
            .map(|i| self.entries.owners[i])
    }

    /// The first `n` distinct physical nodes clockwise from `key`'s token, starting with its
    /// owner; fewer if the ring has fewer than `n` nodes.
    pub fn preference_list(&self, key: &[u8], n: usize) -> Vec<NodeId> {
        self.preference_list_of_token(Token::of_key(key), n)
    }

    /// [`Ring::preference_list`] for a token.
    pub fn preference_list_of_token(&self, token: Token, n: usize) -> Vec<NodeId> {
        let want = n.min(self.nodes.len());
        let mut list = Vec::with_capacity(want);
        let Some(start) = self.entries.owner_index(token) else {
            return list;
        };
        // Replication factors are small, so a linear `contains` beats a set; large requests
        // switch to a set to stay O(v log n).
        let mut seen = BTreeSet::new();
        let len = self.entries.len();
        for step in 0..len {
            if list.len() == want {
                break;
            }
            let node = self.entries.owners[(start + step) % len];
            let fresh = if want <= 16 {
                !list.contains(&node)
            } else {
                seen.insert(node)
            };
            if fresh {
                list.push(node);
            }
        }
        debug_assert_eq!(list.len(), want);
        list
    }

    /// The parts of `[lo, hi]` (both inclusive, `lo <= hi`: no wrap-around) where the
    /// preference list of `n` holds both `a` and `b`, as inclusive spans in order, adjacent
    /// ones joined: the keys two members must both hold (anti-entropy between them compares
    /// only these). Empty when `lo > hi` or the ring is empty.
    ///
    /// O((k + 1) · n) for the k vnode tokens inside the range.
    pub fn shared_spans(
        &self,
        lo: Token,
        hi: Token,
        n: usize,
        a: NodeId,
        b: NodeId,
    ) -> Vec<(Token, Token)> {
        let mut out: Vec<(Token, Token)> = Vec::new();
        if lo > hi {
            return out;
        }
        let mut start = lo;
        // Every token from `start` up to the owning vnode's own token (or to the end of the
        // circle, when the owner is the first vnode past the wrap) has the same list.
        while let Some(idx) = self.entries.owner_index(start) {
            let own = self.entries.tokens[idx];
            let end = if own >= start { own } else { Token(u64::MAX) }.min(hi);
            let list = self.preference_list_of_token(start, n);
            if list.contains(&a) && list.contains(&b) {
                match out.last_mut() {
                    Some(last) if last.1 .0.wrapping_add(1) == start.0 => last.1 = end,
                    _ => out.push((start, end)),
                }
            }
            if end >= hi {
                break;
            }
            start = Token(end.0 + 1);
        }
        out
    }

    /// Adds `node` and returns the ranges it took over (all with `to == Some(node)`).
    ///
    /// O(v) where v is the total number of vnodes: the table is rebuilt by a merge.
    pub fn add_node(&mut self, node: NodeId) -> Result<Vec<TokenRange>, RingError> {
        if self.nodes.contains(&node) {
            return Err(RingError::NodeExists(node));
        }
        let mut fresh: Vec<(Token, NodeId)> = (0..self.vnodes_per_node)
            .map(|i| (vnode_token(node, i), node))
            .collect();
        fresh.sort_unstable();
        let old = &self.entries;
        let mut merged = Vec::with_capacity(old.len() + fresh.len());
        let mut fresh_iter = fresh.into_iter().peekable();
        for pair in old.tokens.iter().copied().zip(old.owners.iter().copied()) {
            while let Some(next) = fresh_iter.next_if(|f| *f < pair) {
                merged.push(next);
            }
            merged.push(pair);
        }
        merged.extend(fresh_iter);
        let new = Entries::from_sorted(merged);
        let moved = moved_ranges(&self.entries, &new);
        self.entries = new;
        self.nodes.insert(node);
        debug_assert_eq!(self.validate(), Ok(()));
        debug_assert!(moved.iter().all(|r| r.to == Some(node)));
        Ok(moved)
    }

    /// Removes `node` and returns the ranges it gave up (all with `from == Some(node)`).
    ///
    /// O(v) where v is the total number of vnodes.
    pub fn remove_node(&mut self, node: NodeId) -> Result<Vec<TokenRange>, RingError> {
        if !self.nodes.contains(&node) {
            return Err(RingError::UnknownNode(node));
        }
        let old = &self.entries;
        let kept: Vec<(Token, NodeId)> = old
            .tokens
            .iter()
            .copied()
            .zip(old.owners.iter().copied())
            .filter(|(_, owner)| *owner != node)
            .collect();
        let new = Entries::from_sorted(kept);
        let moved = moved_ranges(&self.entries, &new);
        self.entries = new;
        self.nodes.remove(&node);
        debug_assert_eq!(self.validate(), Ok(()));
        debug_assert!(moved.iter().all(|r| r.from == Some(node)));
        Ok(moved)
    }

    /// How many of the 2^64 tokens each node owns as primary; the values sum to 2^64 when
    /// the ring is not empty. Every member appears, possibly with 0.
    pub fn ownership(&self) -> BTreeMap<NodeId, u128> {
        let mut owned: BTreeMap<NodeId, u128> = self.nodes.iter().map(|&n| (n, 0)).collect();
        let tokens = &self.entries.tokens;
        let Some(&last) = tokens.last() else {
            return owned;
        };
        for (i, (&token, owner)) in tokens.iter().zip(&self.entries.owners).enumerate() {
            // The first vnode owns (last, MAX] and [0, token]: 2^64 - last + token tokens.
            let size = if i == 0 {
                (1u128 << 64) - u128::from(last.0) + u128::from(token.0)
            } else {
                u128::from(token.0 - tokens[i - 1].0)
            };
            *owned.entry(*owner).or_insert(0) += size;
        }
        owned
    }

    /// Checks every invariant; O(v log n). Called in debug builds after each change.
    pub fn validate(&self) -> Result<(), RingError> {
        if self.vnodes_per_node == 0 || self.vnodes_per_node > MAX_VNODES_PER_NODE {
            return Err(RingError::Invariant("vnodes per node out of range"));
        }
        let e = &self.entries;
        if e.tokens.len() != e.owners.len() {
            return Err(RingError::Invariant(
                "token and owner arrays differ in length",
            ));
        }
        if e.len() != self.nodes.len() * self.vnodes_per_node as usize {
            return Err(RingError::Invariant("vnode count is not nodes x vnodes"));
        }
        for i in 1..e.len() {
            if (e.tokens[i - 1], e.owners[i - 1]) > (e.tokens[i], e.owners[i]) {
                return Err(RingError::Invariant("vnodes not sorted by (token, node)"));
            }
        }
        let mut counts: BTreeMap<NodeId, u32> = BTreeMap::new();
        for owner in &e.owners {
            *counts.entry(*owner).or_insert(0) += 1;
        }
        if !counts.keys().eq(self.nodes.iter()) {
            return Err(RingError::Invariant(
                "vnode owners differ from the member set",
            ));
        }
        if counts.values().any(|&c| c != self.vnodes_per_node) {
            return Err(RingError::Invariant(
                "a node has the wrong number of vnodes",
            ));
        }
        Ok(())
    }
}

impl TryFrom<RingDescription> for Ring {
    type Error = RingError;

    fn try_from(description: RingDescription) -> Result<Ring, RingError> {
        Ring::with_nodes(description.vnodes_per_node, description.nodes)
    }
}

impl From<Ring> for RingDescription {
    fn from(ring: Ring) -> RingDescription {
        ring.description()
    }
}

/// The arcs whose owner differs between two vnode tables, coalesced and in clockwise order
/// of their `end` token.
///
/// Between two consecutive tokens of the union of both tables, each table has a single owner
/// (the owner of the upper boundary), so comparing owners at every boundary is exact.
fn moved_ranges(old: &Entries, new: &Entries) -> Vec<TokenRange> {
    let mut bounds: Vec<Token> = Vec::with_capacity(old.len() + new.len());
    bounds.extend_from_slice(&old.tokens);
    bounds.extend_from_slice(&new.tokens);
    // Two sorted runs: the stable sort merges them in linear time.
    bounds.sort();
    bounds.dedup();
    let Some(&last) = bounds.last() else {
        return Vec::new();
    };
    let mut moved: Vec<TokenRange> = Vec::new();
    let (mut i_old, mut i_new) = (0, 0);
    for (j, &bound) in bounds.iter().enumerate() {
        while i_old < old.len() && old.tokens[i_old] < bound {
            i_old += 1;
        }
        while i_new < new.len() && new.tokens[i_new] < bound {
            i_new += 1;
        }
        let from = old.owner_at(i_old);
        let to = new.owner_at(i_new);
        if from == to {
            continue;
        }
        // The first arc is (last, bounds[0]], wrapping around 0.
        let start = if j == 0 { last } else { bounds[j - 1] };
        match moved.last_mut() {
            Some(prev) if prev.end == start && prev.from == from && prev.to == to => {
                prev.end = bound;
            }
            _ => moved.push(TokenRange {
                start,
                end: bound,
                from,
                to,
            }),
        }
    }
    // The last arc may continue into the first one across the wrap.
    if moved.len() >= 2 {
        let first = moved[0];
        let tail = moved[moved.len() - 1];
        if tail.end == first.start && tail.from == first.from && tail.to == first.to {
            moved[0].start = tail.start;
            moved.pop();
        }
    }
    moved
}
