//! Quorum arithmetic and replica-answer resolution for the Dynamo-style AP buckets.
//!
//! * [`QuorumConfig`]: N replicas, R reads, W writes, validated; tells whether read and write
//!   quorums must overlap (`R + W > N`) and whether two write quorums must (`2W > N`).
//! * [`Consistency`]: the per-request levels `one`, `quorum`, `all` and explicit counts,
//!   turned into a count for a given N.
//! * [`AckTracker`]: follows the replies to one request and says as soon as the outcome is
//!   known: succeeded (enough distinct acks), failed (too many distinct failures for success
//!   to remain possible), or pending.
//! * [`resolve`]: merges the versions that replicas return for a key **by causality**: a
//!   version dominated by another (its vector clock happened before) is dropped, concurrent
//!   versions are all kept as siblings, and the replicas that missed a surviving version are
//!   named for read repair. Wall-clock time plays no part: a later timestamp on a concurrent
//!   write does not make it win (that is the `lww` bucket policy's job, explicitly chosen).
//!
//! # Guarantees
//!
//! 1. A [`QuorumConfig`] exists only with `1 ≤ R ≤ N` and `1 ≤ W ≤ N`.
//! 2. An [`AckTracker`] counts each replica once, whatever the number of duplicate replies,
//!    ignores replies from nodes that are not its targets, and its outcome never changes
//!    once decided.
//! 3. [`resolve`] returns pairwise-concurrent versions only, every answered version is
//!    dominated by or equal to a returned one, and the result does not depend on the order
//!    of the answers.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::clock::{CausalOrder, VectorClock};
use crate::NodeId;

/// Errors of quorum configuration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum QuorumError {
    /// N must be at least 1.
    #[error("replication factor n must be at least 1")]
    ZeroReplicas,
    /// R or W is 0 or larger than N.
    #[error("{name} = {value} is out of range: it must be between 1 and n = {n}")]
    OutOfRange {
        /// `"r"` or `"w"`.
        name: &'static str,
        /// The rejected value.
        value: u32,
        /// The replication factor.
        n: u32,
    },
}

/// A validated N/R/W configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RawQuorumConfig", into = "RawQuorumConfig")]
pub struct QuorumConfig {
    n: u32,
    r: u32,
    w: u32,
}

#[derive(Serialize, Deserialize)]
struct RawQuorumConfig {
    n: u32,
    r: u32,
    w: u32,
}

impl TryFrom<RawQuorumConfig> for QuorumConfig {
    type Error = QuorumError;
    fn try_from(raw: RawQuorumConfig) -> Result<Self, QuorumError> {
        QuorumConfig::new(raw.n, raw.r, raw.w)
    }
}

impl From<QuorumConfig> for RawQuorumConfig {
    fn from(q: QuorumConfig) -> Self {
        RawQuorumConfig {
            n: q.n,
            r: q.r,
            w: q.w,
        }
    }
}

impl QuorumConfig {
    /// Validates N, R and W.
    pub fn new(n: u32, r: u32, w: u32) -> Result<Self, QuorumError> {
        if n == 0 {
            return Err(QuorumError::ZeroReplicas);
        }
        for (name, value) in [("r", r), ("w", w)] {
            if value == 0 || value > n {
                return Err(QuorumError::OutOfRange { name, value, n });
            }
        }
        Ok(Self { n, r, w })
    }

    /// Majority reads and writes for `n` replicas (Dynamo's usual N=3, R=2, W=2).
    pub fn majority(n: u32) -> Result<Self, QuorumError> {
        let m = majority(n);
        Self::new(n, m, m)
    }

    /// The replication factor.
    pub fn n(&self) -> u32 {
        self.n
    }

    /// Replicas a read waits for.
    pub fn r(&self) -> u32 {
        self.r
    }

    /// Replicas a write waits for.
    pub fn w(&self) -> u32 {
        self.w
    }

    /// Whether every read quorum intersects every write quorum (`R + W > N`), so a read
    /// sees the latest acknowledged write when no sloppy-quorum fallback was used.
    pub fn reads_see_writes(&self) -> bool {
        self.r + self.w > self.n
    }

    /// Whether two write quorums always intersect (`2W > N`), so concurrent writes are
    /// detected by at least one replica.
    pub fn writes_overlap(&self) -> bool {
        2 * self.w > self.n
    }
}

/// The number of replicas that make a majority of `n`.
pub fn majority(n: u32) -> u32 {
    n / 2 + 1
}

/// A per-request consistency level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Consistency {
    /// One replica.
    One,
    /// A majority of the N replicas.
    Quorum,
    /// All N replicas.
    All,
    /// An explicit count.
    Count(u32),
}

impl Consistency {
    /// The number of replicas this level needs out of `n`; an explicit count out of range is
    /// an error.
    pub fn required(self, n: u32) -> Result<u32, QuorumError> {
        if n == 0 {
            return Err(QuorumError::ZeroReplicas);
        }
        match self {
            Consistency::One => Ok(1),
            Consistency::Quorum => Ok(majority(n)),
            Consistency::All => Ok(n),
            Consistency::Count(c) if c == 0 || c > n => Err(QuorumError::OutOfRange {
                name: "count",
                value: c,
                n,
            }),
            Consistency::Count(c) => Ok(c),
        }
    }
}

/// The state of a request followed by an [`AckTracker`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Neither enough acks nor enough failures yet.
    Pending,
    /// At least the required number of distinct replicas acknowledged.
    Succeeded,
    /// So many distinct replicas failed that the required count can no longer be reached.
    Failed,
}

/// Follows the replies to one replicated request.
#[derive(Debug, Clone)]
pub struct AckTracker {
    required: usize,
    targets: BTreeSet<NodeId>,
    acked: BTreeSet<NodeId>,
    failed: BTreeSet<NodeId>,
    // Invariant: once not Pending, never changes.
    outcome: Outcome,
}

impl AckTracker {
    /// A tracker that needs `required` acks out of `targets` (duplicates in `targets` count
    /// once). With fewer distinct targets than `required`, the request has already failed.
    pub fn new(required: u32, targets: impl IntoIterator<Item = NodeId>) -> Self {
        let mut t = Self {
            required: required as usize,
            targets: targets.into_iter().collect(),
            acked: BTreeSet::new(),
            failed: BTreeSet::new(),
            outcome: Outcome::Pending,
        };
        t.decide();
        t
    }

    /// Sloppy quorum: `failed` is suspected or unreachable, and `fallback` (the next healthy
    /// node on the ring) takes its write with a hint. Both happen at once, so the request is
    /// not declared failed in between. Cannot revive a decided request.
    pub fn fail_over(&mut self, failed: NodeId, fallback: NodeId) -> Outcome {
        if self.outcome == Outcome::Pending {
            self.targets.insert(fallback);
        }
        self.fail(failed)
    }

    /// Records an acknowledgement from `node` and returns the outcome.
    pub fn ack(&mut self, node: NodeId) -> Outcome {
        if self.outcome == Outcome::Pending
            && self.targets.contains(&node)
            && !self.failed.contains(&node)
        {
            self.acked.insert(node);
            self.decide();
        }
        self.outcome
    }

    /// Records a failure (error reply, timeout, suspected node) of `node` and returns the
    /// outcome. A node that already acknowledged stays acknowledged.
    pub fn fail(&mut self, node: NodeId) -> Outcome {
        if self.outcome == Outcome::Pending
            && self.targets.contains(&node)
            && !self.acked.contains(&node)
        {
            self.failed.insert(node);
            self.decide();
        }
        self.outcome
    }

    /// The current outcome.
    pub fn outcome(&self) -> Outcome {
        self.outcome
    }

    /// The replicas that acknowledged, in node order.
    pub fn acked(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.acked.iter().copied()
    }

    /// The targets that have not answered yet, in node order.
    pub fn waiting(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.targets
            .iter()
            .filter(|n| !self.acked.contains(n) && !self.failed.contains(n))
            .copied()
    }

    fn decide(&mut self) {
        if self.acked.len() >= self.required {
            self.outcome = Outcome::Succeeded;
        } else if self.targets.len() - self.failed.len() < self.required {
            self.outcome = Outcome::Failed;
        }
    }
}

/// A value with the vector clock of the write that produced it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Versioned<V> {
    /// The causal version.
    pub version: VectorClock,
    /// The value (`None` is a tombstone, so deletes take part in resolution).
    pub value: Option<V>,
}

/// The outcome of [`resolve`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved<V> {
    /// The surviving versions, pairwise concurrent, sorted by version for determinism.
    /// More than one means siblings: the client must reconcile them.
    pub versions: Vec<Versioned<V>>,
    /// Replicas that answered but miss at least one surviving version, or hold a version
    /// that is dominated: the targets of read repair.
    pub stale: Vec<NodeId>,
}

impl<V> Resolved<V> {
    /// The causal context to hand to the client: the merge of all surviving versions. A
    /// write made with it supersedes every version it read.
    pub fn context(&self) -> VectorClock {
        let mut ctx = VectorClock::new();
        for v in &self.versions {
            ctx.merge(&v.version);
        }
        ctx
    }
}

/// Resolves the versions returned by replicas for one key by causality.
///
/// Each answer is a replica and the versions it holds (empty when it has none). Versions
/// with equal clocks are the same write; dominated versions are dropped; concurrent ones are
/// all kept.
pub fn resolve<V: Clone>(answers: &[(NodeId, Vec<Versioned<V>>)]) -> Resolved<V> {
    let mut survivors: Vec<Versioned<V>> = Vec::new();
    for (_, versions) in answers {
        for candidate in versions {
            let mut dominated = false;
            survivors.retain(|s| match candidate.version.compare(&s.version) {
                CausalOrder::After => false,
                CausalOrder::Before | CausalOrder::Equal => {
                    dominated = true;
                    true
                }
                CausalOrder::Concurrent => true,
            });
            if !dominated {
                survivors.push(candidate.clone());
            }
        }
    }
    survivors.sort_by(|a, b| cmp_clocks(&a.version, &b.version));
    let mut stale: Vec<NodeId> = answers
        .iter()
        .filter(|(_, versions)| {
            versions.len() != survivors.len()
                || !survivors.iter().all(|s| {
                    versions
                        .iter()
                        .any(|v| v.version.compare(&s.version) == CausalOrder::Equal)
                })
        })
        .map(|(node, _)| *node)
        .collect();
    stale.sort();
    stale.dedup();
    Resolved {
        versions: survivors,
        stale,
    }
}

/// A total order on clocks, used only to make outputs deterministic.
fn cmp_clocks(a: &VectorClock, b: &VectorClock) -> std::cmp::Ordering {
    a.iter().cmp(b.iter())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::tests_support::arb_clock;
    use proptest::prelude::*;

    fn n(id: u64) -> NodeId {
        NodeId(id)
    }

    fn vc(entries: &[(u64, u64)]) -> VectorClock {
        entries.iter().map(|&(n, c)| (NodeId(n), c)).collect()
    }

    fn ver(entries: &[(u64, u64)], value: &'static str) -> Versioned<&'static str> {
        Versioned {
            version: vc(entries),
            value: Some(value),
        }
    }

    #[test]
    fn config_validation() {
        assert_eq!(QuorumConfig::new(0, 1, 1), Err(QuorumError::ZeroReplicas));
        assert_eq!(
            QuorumConfig::new(3, 4, 1),
            Err(QuorumError::OutOfRange {
                name: "r",
                value: 4,
                n: 3
            })
        );
        assert!(QuorumConfig::new(3, 1, 0).is_err());
        let q = QuorumConfig::majority(3).unwrap();
        assert_eq!((q.r(), q.w()), (2, 2));
        assert!(q.reads_see_writes() && q.writes_overlap());
        let weak = QuorumConfig::new(3, 1, 1).unwrap();
        assert!(!weak.reads_see_writes());
        assert!(!weak.writes_overlap());
        // Serde goes through validation.
        assert!(serde_json::from_str::<QuorumConfig>(r#"{"n":3,"r":5,"w":1}"#).is_err());
        let back: QuorumConfig = serde_json::from_str(r#"{"n":5,"r":3,"w":3}"#).unwrap();
        assert_eq!(back, QuorumConfig::majority(5).unwrap());
    }

    #[test]
    fn consistency_levels() {
        assert_eq!(Consistency::One.required(5), Ok(1));
        assert_eq!(Consistency::Quorum.required(5), Ok(3));
        assert_eq!(Consistency::Quorum.required(4), Ok(3));
        assert_eq!(Consistency::All.required(5), Ok(5));
        assert!(Consistency::Count(6).required(5).is_err());
        assert!(Consistency::Count(0).required(5).is_err());
    }

    #[test]
    fn tracker_decides_once() {
        let mut t = AckTracker::new(2, [n(1), n(2), n(3)]);
        assert_eq!(t.ack(n(1)), Outcome::Pending);
        assert_eq!(t.ack(n(1)), Outcome::Pending, "duplicate acks count once");
        assert_eq!(t.ack(n(9)), Outcome::Pending, "strangers are ignored");
        assert_eq!(t.fail(n(2)), Outcome::Pending);
        assert_eq!(t.ack(n(3)), Outcome::Succeeded);
        assert_eq!(t.fail(n(3)), Outcome::Succeeded);
        let mut t = AckTracker::new(2, [n(1), n(2), n(3)]);
        assert_eq!(t.fail(n(1)), Outcome::Pending);
        assert_eq!(t.fail(n(2)), Outcome::Failed);
        assert_eq!(t.ack(n(3)), Outcome::Failed);
        assert_eq!(AckTracker::new(3, [n(1), n(1)]).outcome(), Outcome::Failed);
    }

    #[test]
    fn sloppy_quorum_fallback_counts() {
        let mut t = AckTracker::new(2, [n(1), n(2)]);
        assert_eq!(t.fail_over(n(2), n(4)), Outcome::Pending);
        assert_eq!(
            t.ack(n(2)),
            Outcome::Pending,
            "a failed replica no longer counts"
        );
        assert_eq!(t.ack(n(4)), Outcome::Pending);
        assert_eq!(t.ack(n(1)), Outcome::Succeeded);
        assert_eq!(t.waiting().count(), 0);
    }

    #[test]
    fn resolve_keeps_concurrent_and_drops_dominated() {
        let old = ver(&[(1, 1)], "old");
        let newer = ver(&[(1, 2)], "new");
        let other = ver(&[(1, 1), (2, 1)], "other");
        let answers = vec![
            (n(1), vec![newer.clone()]),
            (n(2), vec![old.clone()]),
            (n(3), vec![other.clone(), newer.clone()]),
        ];
        let r = resolve(&answers);
        assert_eq!(r.versions, vec![other.clone(), newer.clone()]);
        assert_eq!(r.stale, vec![n(1), n(2)]);
        assert_eq!(r.context(), vc(&[(1, 2), (2, 1)]));
    }

    #[test]
    fn resolve_ignores_wall_clock() {
        // Two concurrent writes: whatever "time" a value names, both survive.
        let a = ver(&[(1, 1)], "written at 10:00:05");
        let b = ver(&[(2, 1)], "written at 10:00:01");
        let r = resolve(&[(n(1), vec![a.clone()]), (n(2), vec![b.clone()])]);
        assert_eq!(r.versions.len(), 2);
        // A tombstone that saw the value dominates it.
        let del = Versioned {
            version: vc(&[(1, 1), (2, 2)]),
            value: None,
        };
        let r = resolve(&[(n(1), vec![a]), (n(2), vec![b, del.clone()])]);
        assert_eq!(r.versions, vec![del]);
    }

    fn arb_answers() -> impl Strategy<Value = Vec<(NodeId, Vec<Versioned<u8>>)>> {
        proptest::collection::vec(
            (
                0u64..4,
                proptest::collection::vec(
                    arb_clock().prop_map(|version| Versioned {
                        version,
                        value: Some(0u8),
                    }),
                    0..3,
                ),
            )
                .prop_map(|(node, versions)| (NodeId(node), versions)),
            0..5,
        )
    }

    proptest! {
        #[test]
        fn resolve_matches_reference(answers in arb_answers()) {
            let r = resolve(&answers);
            // Pairwise concurrent.
            for (i, a) in r.versions.iter().enumerate() {
                for b in &r.versions[i + 1..] {
                    prop_assert_eq!(a.version.compare(&b.version), CausalOrder::Concurrent);
                }
            }
            // Reference: the maximal elements of all answered versions.
            let all: Vec<&VectorClock> = answers.iter().flat_map(|(_, v)| v.iter().map(|x| &x.version)).collect();
            let mut maximal: Vec<VectorClock> = all
                .iter()
                .filter(|c| !all.iter().any(|d| d.compare(c) == CausalOrder::After))
                .map(|c| (*c).clone())
                .collect();
            maximal.sort_by(cmp_clocks);
            maximal.dedup();
            let got: Vec<VectorClock> = r.versions.iter().map(|v| v.version.clone()).collect();
            prop_assert_eq!(&got, &maximal);
            // Order of answers does not matter.
            let mut reversed = answers.clone();
            reversed.reverse();
            prop_assert_eq!(resolve(&reversed).versions, r.versions);
        }

        #[test]
        fn tracker_matches_counting(required in 1u32..5, events in proptest::collection::vec((0u64..6, any::<bool>()), 0..20)) {
            let targets = [n(0), n(1), n(2), n(3), n(4)];
            let mut t = AckTracker::new(required, targets);
            let mut acked = BTreeSet::new();
            let mut failed = BTreeSet::new();
            let mut decided = None;
            for (node, ok) in events {
                let out = if ok { t.ack(n(node)) } else { t.fail(n(node)) };
                if decided.is_none() && node < 5 {
                    if ok && !failed.contains(&node) { acked.insert(node); }
                    if !ok && !acked.contains(&node) { failed.insert(node); }
                    if acked.len() >= required as usize {
                        decided = Some(Outcome::Succeeded);
                    } else if 5 - failed.len() < required as usize {
                        decided = Some(Outcome::Failed);
                    }
                }
                prop_assert_eq!(out, decided.unwrap_or(Outcome::Pending));
            }
        }
    }
}
