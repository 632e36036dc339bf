//! Range partitioner over byte keys, the layout of the CP side's ranges (multi-raft).
//!
//! The key space is the set of byte strings in lexicographic order, from `b""` (the smallest
//! key) to +infinity. It is cut into half-open [`Partition`]s `[start, end)` sorted by
//! `start`, each named by a [`PartitionId`]:
//!
//! ```text
//!   b""           b"g"            b"p"
//!    |---- 1 ------|----- 7 -------|------ 3 ------> +inf
//!    [b"", b"g")    [b"g", b"p")    [b"p", None)
//!
//!   split(b"k", 9):  |-- 1 --|-- 7 --|-- 9 --|-- 3 -->     (7 keeps [g, k), 9 gets [k, p))
//!   merge(7):        |-- 1 --|------ 7 ------|-- 3 -->     (7 absorbs its right neighbour)
//! ```
//!
//! # Guarantees
//!
//! Checked by [`RangePartitioner::validate`] after every change in debug builds and on every
//! construction or deserialisation:
//!
//! 1. **Total cover, no overlap.** The first partition starts at `b""`, each partition ends
//!    exactly where the next one starts, and only the last one is unbounded (`end == None`).
//!    Hence every key lies in exactly one partition and [`RangePartitioner::lookup`] never
//!    fails.
//! 2. **Non-empty partitions.** `start < end` for every bounded partition, because starts are
//!    strictly increasing; a split at an existing start is refused rather than creating an
//!    empty partition.
//! 3. **Unique ids.** No two partitions share a [`PartitionId`], so a split with a used id is
//!    refused.
//! 4. **O(log n) lookup.** Partitions are kept in a `Vec` sorted by start key, and
//!    [`RangePartitioner::lookup`] and [`RangePartitioner::overlapping`] binary-search it.
//!    Splits and merges shift the `Vec` (O(n)); they are rare next to lookups.
//! 5. **Split and merge are inverses.** `split(k, id)` followed by `merge(left)` restores the
//!    previous layout exactly; neither ever moves a key to a partition other than the two
//!    involved.

use std::collections::BTreeSet;
use std::fmt;

use serde::{Deserialize, Serialize};

#[cfg(test)]
mod tests;

/// Names a partition (in the CP design, its Raft group).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct PartitionId(pub u64);

impl fmt::Display for PartitionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A half-open key interval `[start, end)` and its id.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Partition {
    /// Identity, stable across splits and merges of neighbours.
    pub id: PartitionId,
    /// First key of the partition (inclusive).
    pub start: Vec<u8>,
    /// First key after the partition (exclusive); `None` means +infinity.
    pub end: Option<Vec<u8>>,
}

impl Partition {
    /// Whether `key` lies in `[start, end)`.
    pub fn contains(&self, key: &[u8]) -> bool {
        self.start.as_slice() <= key && self.end.as_deref().is_none_or(|end| key < end)
    }
}

/// Errors of range partitioner operations.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RangeError {
    /// The split key is already the start of a partition; splitting would create an empty
    /// partition.
    #[error("split key is already the start of partition {id}")]
    SplitAtBoundary {
        /// The partition starting at the split key.
        id: PartitionId,
    },
    /// The id for the new partition is already in use.
    #[error("partition id {0} is already in use")]
    DuplicateId(PartitionId),
    /// No partition has this id.
    #[error("partition {0} does not exist")]
    UnknownPartition(PartitionId),
    /// The partition is the last one, so there is nothing to merge it with.
    #[error("partition {0} has no right neighbour")]
    NoRightNeighbour(PartitionId),
    /// A layout given to [`RangePartitioner::from_partitions`] (or a corrupted partitioner)
    /// breaks a guarantee.
    #[error("invalid partition layout at index {index}: {reason}")]
    InvalidLayout {
        /// Index of the offending partition.
        index: usize,
        /// Which guarantee it breaks.
        reason: &'static str,
    },
}

/// The serialised form of a [`RangePartitioner`]; validated on the way in.
#[derive(Deserialize)]
struct RawRangePartitioner {
    partitions: Vec<Partition>,
}

/// Sorted partitions covering the whole key space; see the module docs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RawRangePartitioner")]
pub struct RangePartitioner {
    // Invariant: the guarantees of the module docs (see `validate`).
    partitions: Vec<Partition>,
}

impl RangePartitioner {
    /// A single partition `id` covering every key.
    pub fn new(id: PartitionId) -> RangePartitioner {
        RangePartitioner {
            partitions: vec![Partition {
                id,
                start: Vec::new(),
                end: None,
            }],
        }
    }

    /// A partitioner over an explicit layout (for example one read from cluster metadata),
    /// rejected unless it satisfies every guarantee.
    pub fn from_partitions(partitions: Vec<Partition>) -> Result<RangePartitioner, RangeError> {
        let partitioner = RangePartitioner { partitions };
        partitioner.validate()?;
        Ok(partitioner)
    }

    /// All partitions, sorted by start key.
    pub fn partitions(&self) -> &[Partition] {
        &self.partitions
    }

    /// The partition containing `key`. O(log n).
    pub fn lookup(&self, key: &[u8]) -> &Partition {
        &self.partitions[self.index_of(key)]
    }

    /// The partition named `id`, if any. O(n): callers routing by id keep their own map.
    pub fn get(&self, id: PartitionId) -> Option<&Partition> {
        self.partitions.iter().find(|p| p.id == id)
    }

    /// The partitions overlapping the key interval `[start, end)` (`end == None` means
    /// +infinity), sorted by start key; empty if the interval is empty. O(log n).
    pub fn overlapping(&self, start: &[u8], end: Option<&[u8]>) -> &[Partition] {
        if end.is_some_and(|end| end <= start) {
            return &[];
        }
        let first = self.index_of(start);
        let past_last = match end {
            None => self.partitions.len(),
            // Partitions starting before `end` overlap, since they end after `start`.
            Some(end) => self
                .partitions
                .partition_point(|p| p.start.as_slice() < end),
        };
        debug_assert!(first < past_last);
        &self.partitions[first..past_last]
    }

    /// Splits the partition containing `at_key` into `[start, at_key)`, which keeps its id,
    /// and `[at_key, end)`, named `new_id`. Returns the id of the partition that was split.
    ///
    /// Checks the id first: a used `new_id` is [`RangeError::DuplicateId`] even when
    /// `at_key` is also a boundary.
    pub fn split(&mut self, at_key: &[u8], new_id: PartitionId) -> Result<PartitionId, RangeError> {
        if self.partitions.iter().any(|p| p.id == new_id) {
            return Err(RangeError::DuplicateId(new_id));
        }
        let index = self.index_of(at_key);
        let left = &mut self.partitions[index];
        if left.start.as_slice() == at_key {
            return Err(RangeError::SplitAtBoundary { id: left.id });
        }
        let right = Partition {
            id: new_id,
            start: at_key.to_vec(),
            end: left.end.take(),
        };
        left.end = Some(at_key.to_vec());
        let left_id = left.id;
        self.partitions.insert(index + 1, right);
        debug_assert_eq!(self.validate(), Ok(()));
        Ok(left_id)
    }

    /// Merges partition `left_id` with its right neighbour: `left_id` now covers both, and
    /// the neighbour's id, which is returned, no longer exists.
    pub fn merge(&mut self, left_id: PartitionId) -> Result<PartitionId, RangeError> {
        let index = self
            .partitions
            .iter()
            .position(|p| p.id == left_id)
            .ok_or(RangeError::UnknownPartition(left_id))?;
        if index + 1 == self.partitions.len() {
            return Err(RangeError::NoRightNeighbour(left_id));
        }
        let right = self.partitions.remove(index + 1);
        self.partitions[index].end = right.end;
        debug_assert_eq!(self.validate(), Ok(()));
        Ok(right.id)
    }

    /// Checks guarantees 1 to 3; O(n log n).
    pub fn validate(&self) -> Result<(), RangeError> {
        let invalid = |index, reason| Err(RangeError::InvalidLayout { index, reason });
        let Some(first) = self.partitions.first() else {
            return invalid(0, "no partitions");
        };
        if !first.start.is_empty() {
            return invalid(0, "first partition does not start at the empty key");
        }
        let mut ids = BTreeSet::new();
        for (index, partition) in self.partitions.iter().enumerate() {
            if !ids.insert(partition.id) {
                return invalid(index, "duplicate partition id");
            }
            match (self.partitions.get(index + 1), &partition.end) {
                (Some(next), Some(end)) if *end == next.start => {
                    if partition.start >= *end {
                        return invalid(index, "empty or reversed partition");
                    }
                }
                (Some(_), _) => return invalid(index, "end differs from the next start"),
                (None, None) => {}
                (None, Some(_)) => return invalid(index, "last partition is bounded"),
            }
        }
        Ok(())
    }

    /// Index of the partition containing `key`.
    fn index_of(&self, key: &[u8]) -> usize {
        // Guarantee 1: partitions[0] starts at b"" <= key, so the partition point is >= 1.
        let after = self
            .partitions
            .partition_point(|p| p.start.as_slice() <= key);
        debug_assert!(after >= 1);
        after - 1
    }
}

impl TryFrom<RawRangePartitioner> for RangePartitioner {
    type Error = RangeError;

    fn try_from(raw: RawRangePartitioner) -> Result<RangePartitioner, RangeError> {
        RangePartitioner::from_partitions(raw.partitions)
    }
}
