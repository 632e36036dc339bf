//! The leader's lease expiry clock, over any disk (the etcd `Lease` service in
//! `server/lease.rs` answers with it; the whole-node simulation drives it directly).
//!
//! # Guarantees
//!
//! 1. **Only the leader expires leases**, and only by proposing a revoke through Raft, so a
//!    lease's keys disappear on every member at the same revision.
//! 2. **Not early.** A new leader gives each lease its last checkpointed remaining TTL (or
//!    its full TTL if never checkpointed), which is never less than what the old leader
//!    had left when it checkpointed.
//! 3. **Not extended without bound.** The leader checkpoints remaining TTLs every
//!    `lease_checkpoint_interval`, so a leader change extends a lease by at most that
//!    interval plus the time to elect the new leader.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use concord_raft::StateRole;
use concord_runtime::NodeError;
use concord_storage::disk::{Disk, RealDisk};
use concord_storage::errors::RequestError;
use concord_storage::mvcc::types::{Command, Lease};
use tokio::time::Instant;

use super::NodeHandle;
use crate::KvError;

/// The clock leases expire by: the monotonic clock, optionally running at a different
/// rate (a test-only fault: a node whose clock runs fast expires leases early, which is
/// what clock-rate skew does to any lease system). `now()` never goes backwards, also
/// across rate changes.
#[derive(Debug)]
pub struct LeaseClock {
    // (real instant of the last rate change, lease time then, rate)
    state: Mutex<(Instant, Instant, f64)>,
}

impl LeaseClock {
    fn new() -> Self {
        let now = Instant::now();
        Self {
            state: Mutex::new((now, now, 1.0)),
        }
    }

    /// Lease time now.
    pub fn now(&self) -> Instant {
        let (real0, virt0, rate) = *self.state.lock().unwrap_or_else(|e| e.into_inner());
        virt0 + Instant::now().duration_since(real0).mul_f64(rate)
    }

    /// Sets the rate (1.0: real time).
    pub fn set_rate(&self, rate: f64) {
        let now = self.now();
        *self.state.lock().unwrap_or_else(|e| e.into_inner()) = (Instant::now(), now, rate);
    }
}

/// The leader's view of lease deadlines.
#[derive(Debug)]
pub struct Leases<D: Disk = RealDisk> {
    node: NodeHandle<D>,
    /// The clock deadlines are kept by.
    pub clock: LeaseClock,
    /// The shortest TTL granted (etcd: 1.5 election timeouts, rounded up to seconds).
    pub(crate) min_ttl: i64,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// The term in which `deadlines` is valid (0: not leader).
    term: u64,
    /// Deadline per lease id. Ordered, so expiries and checkpoints are proposed in id order
    /// and a simulated run replays exactly.
    deadlines: BTreeMap<i64, Instant>,
}

fn ceil_secs(d: Duration) -> i64 {
    let s = d.as_secs() as i64;
    if d.subsec_nanos() > 0 {
        s + 1
    } else {
        s
    }
}

impl<D: Disk> Leases<D> {
    /// The lease table of `node`, with etcd's minimum TTL for `election_timeout`.
    pub fn new(node: NodeHandle<D>, election_timeout: Duration) -> Self {
        Self {
            node,
            min_ttl: ceil_secs(election_timeout * 3 / 2).max(1),
            clock: LeaseClock::new(),
            state: Mutex::new(State::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether this node leads in the term the deadlines belong to.
    fn leader_term(&self) -> Option<u64> {
        let st = self.node.status();
        (st.role == StateRole::Leader).then_some(st.term)
    }

    /// Brings the deadlines in line with the store: leases granted or revoked elsewhere,
    /// and a fresh table after this node became leader. Returns the term, if leader.
    fn sync(&self) -> Result<Option<u64>, KvError> {
        let Some(term) = self.leader_term() else {
            let mut st = self.lock();
            st.term = 0;
            st.deadlines.clear();
            return Ok(None);
        };
        let ids = self.node.with_store(|s| s.lease_ids())?;
        let now = self.clock.now();
        let mut fresh = Vec::new();
        {
            let mut st = self.lock();
            if st.term != term {
                st.term = term;
                st.deadlines.clear();
            }
            st.deadlines.retain(|id, _| ids.binary_search(id).is_ok());
            for id in &ids {
                if !st.deadlines.contains_key(id) {
                    fresh.push(*id);
                }
            }
        }
        for id in fresh {
            let Some(l) = self.node.with_store(|s| s.lease(id))? else {
                continue;
            };
            let remaining = if l.remaining_ttl > 0 {
                l.remaining_ttl
            } else {
                l.ttl
            };
            let mut st = self.lock();
            if st.term == term {
                st.deadlines
                    .entry(id)
                    .or_insert(now + Duration::from_secs(remaining.max(0) as u64));
            }
        }
        Ok(Some(term))
    }

    /// The leader's loop: expires leases and checkpoints remaining TTLs. Ends when the
    /// node stops.
    pub async fn run(self: std::sync::Arc<Self>, tick: Duration, checkpoint: Duration) {
        let mut ticker = tokio::time::interval(tick);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_checkpoint = self.clock.now();
        loop {
            ticker.tick().await;
            if self.node.status().stopped {
                return;
            }
            let term = match self.sync() {
                Ok(Some(t)) => t,
                Ok(None) => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "lease bookkeeping failed");
                    continue;
                }
            };
            let now = self.clock.now();
            let (expired, remaining): (Vec<i64>, Vec<(i64, i64)>) = {
                let st = self.lock();
                if st.term != term {
                    continue;
                }
                let expired = st
                    .deadlines
                    .iter()
                    .filter(|(_, d)| **d <= now)
                    .map(|(id, _)| *id)
                    .collect();
                let remaining = st
                    .deadlines
                    .iter()
                    .filter(|(_, d)| **d > now)
                    .map(|(id, d)| (*id, ceil_secs(*d - now)))
                    .collect();
                (expired, remaining)
            };
            for id in expired {
                let node = self.node.clone();
                tokio::spawn(async move {
                    match node.propose(Command::LeaseRevoke { id }).await {
                        Ok(_) | Err(KvError::Request(RequestError::LeaseNotFound)) => {
                            tracing::debug!(lease = id, "lease expired and revoked")
                        }
                        // Still in the table: the next tick retries.
                        Err(e) => tracing::warn!(lease = id, error = %e, "lease revoke failed"),
                    }
                });
            }
            if now.duration_since(last_checkpoint) >= checkpoint {
                last_checkpoint = now;
                for (id, remaining_ttl) in remaining {
                    let node = self.node.clone();
                    tokio::spawn(async move {
                        let _ = node
                            .propose(Command::LeaseCheckpoint { id, remaining_ttl })
                            .await;
                    });
                }
            }
        }
    }

    /// Lease `id` as this leader's applied state has it, with the deadline table locked,
    /// both of one term. A read barrier first makes a grant acknowledged elsewhere visible.
    /// `Ok(None)`: no such lease.
    async fn leader_view(
        &self,
        id: i64,
    ) -> Result<Option<(Lease, std::sync::MutexGuard<'_, State>)>, KvError> {
        self.node.read_barrier().await?;
        let term = self.sync()?.ok_or(KvError::Node(NodeError::NotLeader {
            leader: self.node.status().leader,
        }))?;
        let Some(lease) = self.node.with_store(|s| s.lease(id))? else {
            return Ok(None);
        };
        let st = self.lock();
        if st.term != term {
            return Err(NodeError::LeaderChanged.into());
        }
        Ok(Some((lease, st)))
    }

    /// Resets lease `id`'s deadline to its full TTL (leader only). `Ok(None)`: no such lease.
    pub async fn keep_alive(&self, id: i64) -> Result<Option<i64>, KvError> {
        let Some((l, mut st)) = self.leader_view(id).await? else {
            return Ok(None);
        };
        st.deadlines.insert(
            id,
            self.clock.now() + Duration::from_secs(l.ttl.max(0) as u64),
        );
        Ok(Some(l.ttl))
    }

    /// `(remaining, granted, keys)` of lease `id` (leader only).
    pub async fn time_to_live(&self, id: i64) -> Result<Option<(i64, i64, Vec<Vec<u8>>)>, KvError> {
        let Some((l, st)) = self.leader_view(id).await? else {
            return Ok(None);
        };
        let now = self.clock.now();
        let remaining = st
            .deadlines
            .get(&id)
            .map_or(l.ttl, |d| ceil_secs(d.saturating_duration_since(now)));
        Ok(Some((remaining, l.ttl, l.keys)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_clock_is_monotonic_across_rate_changes() {
        let c = LeaseClock::new();
        let mut last = c.now();
        for rate in [4.0, 0.25, 1.0, 10.0, 0.1] {
            c.set_rate(rate);
            std::thread::sleep(Duration::from_millis(2));
            let now = c.now();
            assert!(now >= last, "clock went backwards at rate {rate}");
            last = now;
        }
        // At rate 4, 20 ms of real time are about 80 ms of lease time.
        c.set_rate(4.0);
        let t0 = c.now();
        std::thread::sleep(Duration::from_millis(20));
        assert!(c.now().duration_since(t0) >= Duration::from_millis(79));
    }
}
