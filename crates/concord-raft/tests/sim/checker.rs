//! Invariant checkers. Each check names the Raft paper section it enforces; all of them
//! return `Err(description)` instead of panicking so the driver can print the seed.

use std::collections::{BTreeMap, HashMap};

use concord_raft::{Entry, NodeId};

/// FNV-1a, enough to tell entries apart.
pub fn hash_bytes(data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in data {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Chains one applied entry into a state-machine digest.
pub fn chain(hash: u64, e: &Entry) -> u64 {
    let mut x = hash ^ e.term.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    x = x.rotate_left(17) ^ hash_bytes(&e.data);
    x.wrapping_mul(0xff51_afd7_ed55_8ccd)
}

#[derive(Default)]
pub struct Checker {
    /// Election safety (§5.2): term -> the only leader of that term.
    leaders: HashMap<u64, NodeId>,
    /// Log matching (§5.3): (index, term) -> (data hash, term of the previous entry).
    entries: HashMap<(u64, u64), (u64, u64)>,
    /// State machine safety (§5.4.3): index -> (term, data hash) of the applied entry, and
    /// the lowest term any node was in when applying it: the entry was committed in that
    /// term or earlier, so every leader of a later term must hold it (§5.4, leader
    /// completeness).
    pub applied: BTreeMap<u64, (u64, u64, u64)>,
    /// Digest of the state machine after applying each index.
    pub digest_at: HashMap<u64, u64>,
    /// Highest index known committed (applied somewhere).
    pub max_committed: u64,
}

impl Checker {
    /// §5.2: at most one leader per term.
    pub fn observe_leader(&mut self, term: u64, id: NodeId) -> Result<bool, String> {
        match self.leaders.get(&term) {
            Some(&other) if other != id => Err(format!(
                "election safety: nodes {other} and {id} both leaders of term {term}"
            )),
            Some(_) => Ok(false),
            None => {
                self.leaders.insert(term, id);
                Ok(true)
            }
        }
    }

    /// §5.3: two entries with the same index and term carry the same data and follow
    /// entries of the same term (which by induction gives identical prefixes).
    pub fn observe_entry(
        &mut self,
        node: NodeId,
        e: &Entry,
        prev_term: Option<u64>,
    ) -> Result<(), String> {
        let h = hash_bytes(&e.data);
        let key = (e.index, e.term);
        match self.entries.get(&key) {
            Some(&(dh, pt)) => {
                if dh != h {
                    return Err(format!(
                        "log matching: node {node} has a different entry at index {} term {}",
                        e.index, e.term
                    ));
                }
                if let Some(p) = prev_term {
                    if pt != u64::MAX && p != pt {
                        return Err(format!(
                            "log matching: node {node} entry {}/{} follows term {p}, elsewhere term {pt}",
                            e.index, e.term
                        ));
                    }
                }
            }
            None => {
                self.entries.insert(key, (h, prev_term.unwrap_or(u64::MAX)));
            }
        }
        Ok(())
    }

    /// §5.4.3: no two nodes apply different entries at the same index.
    /// Returns the term by which the entry is known committed.
    pub fn observe_apply(
        &mut self,
        node: NodeId,
        node_term: u64,
        e: &Entry,
        digest: u64,
    ) -> Result<u64, String> {
        let v = (e.term, hash_bytes(&e.data));
        let known_by = match self.applied.get_mut(&e.index) {
            Some(w) if (w.0, w.1) != v => {
                return Err(format!(
                    "state machine safety: node {node} applied {}/{} but another node applied term {} there",
                    e.index, e.term, w.0
                ))
            }
            Some(w) => {
                w.2 = w.2.min(node_term);
                w.2
            }
            None => {
                self.applied.insert(e.index, (v.0, v.1, node_term));
                node_term
            }
        };
        match self.digest_at.get(&e.index) {
            Some(&d) if d != digest => {
                return Err(format!(
                    "state machine safety: node {node} state after index {} differs",
                    e.index
                ))
            }
            Some(_) => {}
            None => {
                self.digest_at.insert(e.index, digest);
            }
        }
        self.max_committed = self.max_committed.max(e.index);
        Ok(known_by)
    }

    /// §5.4: a leader's log holds every committed entry. `term_at` answers for indexes
    /// the leader still has; `first_index` bounds what it compacted (covered by its
    /// snapshot, itself committed).
    pub fn check_leader_completeness(
        &self,
        leader: NodeId,
        leader_term: u64,
        first_index: u64,
        term_at: impl Fn(u64) -> Option<u64>,
    ) -> Result<(), String> {
        for (&index, &(term, _, known_by)) in self.applied.range(first_index..) {
            if known_by >= leader_term {
                continue;
            }
            if term_at(index) != Some(term) {
                return Err(format!(
                    "leader completeness: leader {leader} of term {leader_term} lacks committed entry {index}/{term} (has term {:?})",
                    term_at(index)
                ));
            }
        }
        Ok(())
    }
}
