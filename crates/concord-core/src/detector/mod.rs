//! Failure detectors: is a peer still alive?
//!
//! Two detectors, both pure state machines that take the current time as an argument
//! (`now`: a [`Duration`] since an origin the caller picks and keeps):
//!
//! * [`heartbeat::HeartbeatDetector`]: a peer is suspected when its heartbeat counter has not
//!   increased (or no heartbeat arrived) for a fixed timeout. Simple and predictable, and the
//!   natural fit for gossip, where a peer's heartbeat *version* travels second hand.
//! * [`phi::PhiAccrualDetector`] (Hayashibara et al., "The φ accrual failure detector", 2004;
//!   the variant used by Akka and Cassandra): instead of a yes/no answer it outputs a suspicion
//!   level φ that grows with the time since the last heartbeat, scaled by the distribution of
//!   the inter-arrival times this peer has shown so far. [`FailureDetectors`] keeps one per peer.
//!
//! ```text
//!   heartbeat(peer, now) ──► FailureDetectors ──► PhiAccrualDetector (one per peer)
//!                                                    │ window of inter-arrival times
//!   phi(peer, now) / suspects(now) ◄─────────────────┘ φ = -log10(1 - CDF(now - last))
//! ```
//!
//! # Guarantees
//!
//! 1. **Peers never share history.** [`FailureDetectors`] maps each peer to its own
//!    [`phi::PhiAccrualDetector`] with its own window; a heartbeat for one peer cannot change
//!    another peer's φ. (A shared history makes a slow peer look dead, or a dead one alive.)
//! 2. **Bounded memory.** Each phi detector keeps at most `window_capacity` inter-arrival
//!    samples; the heartbeat detector keeps one counter and one timestamp per peer.
//! 3. **φ is finite, non-negative and non-decreasing in the time since the last heartbeat**,
//!    even for absurdly long silences (see [`phi::phi_normal`]).
//! 4. **Deterministic.** No clock, no randomness, no hash-order iteration: the same inputs give
//!    the same outputs, and lists of peers come out sorted.
//! 5. **Configs are validated** before a detector exists; an invalid one is a
//!    [`DetectorConfigError`], never a panic or a NaN later.

pub mod heartbeat;
pub mod phi;

use std::collections::BTreeMap;
use std::time::Duration;

pub use heartbeat::{HeartbeatConfig, HeartbeatDetector, Progress};
pub use phi::{HeartbeatOutcome, IntervalStats, PhiAccrualConfig, PhiAccrualDetector};

/// Why a detector configuration was rejected.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum DetectorConfigError {
    /// The phi threshold is not a finite number greater than zero.
    #[error("phi threshold must be finite and greater than zero, got {0}")]
    InvalidThreshold(f64),
    /// The window capacity is zero or above [`phi::MAX_WINDOW_CAPACITY`].
    #[error("window capacity must be between 1 and {max}, got {got}")]
    InvalidWindowCapacity {
        /// The configured capacity.
        got: usize,
        /// The largest accepted capacity.
        max: usize,
    },
    /// The minimum standard deviation is zero.
    #[error("minimum standard deviation must be greater than zero")]
    ZeroMinStdDeviation,
    /// The first-heartbeat estimate is zero.
    #[error("first heartbeat estimate must be greater than zero")]
    ZeroFirstHeartbeatEstimate,
    /// The heartbeat detector's timeout is zero.
    #[error("heartbeat timeout must be greater than zero")]
    ZeroTimeout,
}

/// One [`PhiAccrualDetector`] per peer, created on the peer's first heartbeat.
///
/// Peers are kept in a [`BTreeMap`], so [`FailureDetectors::suspects`] and
/// [`FailureDetectors::peers`] are sorted and deterministic. Peers are added by their first
/// heartbeat and leave only through [`FailureDetectors::remove`]; the caller removes peers that
/// leave the membership, which bounds the map by the cluster size.
#[derive(Debug, Clone)]
pub struct FailureDetectors<P: Ord + Clone> {
    config: PhiAccrualConfig,
    detectors: BTreeMap<P, PhiAccrualDetector>,
}

impl<P: Ord + Clone> FailureDetectors<P> {
    /// Creates an empty set of detectors that will all use `config`.
    pub fn new(config: PhiAccrualConfig) -> Result<Self, DetectorConfigError> {
        config.validate()?;
        Ok(Self {
            config,
            detectors: BTreeMap::new(),
        })
    }

    /// The configuration every per-peer detector uses.
    pub fn config(&self) -> &PhiAccrualConfig {
        &self.config
    }

    /// Records a heartbeat from `peer` at `now`, creating its detector on first contact.
    pub fn heartbeat(&mut self, peer: P, now: Duration) -> HeartbeatOutcome {
        let config = self.config;
        self.detectors
            .entry(peer)
            .or_insert_with(|| PhiAccrualDetector::from_valid_config(config))
            .heartbeat(now)
    }

    /// The suspicion level of `peer` at `now`, or `None` if the peer is unknown.
    pub fn phi(&self, peer: &P, now: Duration) -> Option<f64> {
        self.detectors.get(peer).map(|d| d.phi(now))
    }

    /// Whether `peer` is below the threshold at `now`, or `None` if the peer is unknown.
    pub fn is_available(&self, peer: &P, now: Duration) -> Option<bool> {
        self.detectors.get(peer).map(|d| d.is_available(now))
    }

    /// The peers whose φ is at or above the threshold at `now`, in ascending order.
    pub fn suspects(&self, now: Duration) -> Vec<P> {
        self.detectors
            .iter()
            .filter(|(_, d)| !d.is_available(now))
            .map(|(p, _)| p.clone())
            .collect()
    }

    /// Forgets `peer` and its history; returns whether it was known.
    pub fn remove(&mut self, peer: &P) -> bool {
        self.detectors.remove(peer).is_some()
    }

    /// The detector of `peer`, for inspection (metrics, dashboards).
    pub fn detector(&self, peer: &P) -> Option<&PhiAccrualDetector> {
        self.detectors.get(peer)
    }

    /// The known peers, in ascending order.
    pub fn peers(&self) -> impl Iterator<Item = &P> {
        self.detectors.keys()
    }

    /// The number of known peers.
    pub fn len(&self) -> usize {
        self.detectors.len()
    }

    /// Whether no peer is known.
    pub fn is_empty(&self) -> bool {
        self.detectors.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    fn config() -> PhiAccrualConfig {
        PhiAccrualConfig {
            threshold: 8.0,
            window_capacity: 100,
            min_std_deviation: ms(50),
            acceptable_heartbeat_pause: Duration::ZERO,
            first_heartbeat_estimate: ms(1000),
        }
    }

    #[test]
    fn invalid_config_is_rejected() {
        let bad = PhiAccrualConfig {
            threshold: 0.0,
            ..config()
        };
        assert_eq!(
            FailureDetectors::<u32>::new(bad).err(),
            Some(DetectorConfigError::InvalidThreshold(0.0))
        );
    }

    #[test]
    fn unknown_peer_has_no_phi() {
        let d = FailureDetectors::<u32>::new(config()).unwrap();
        assert_eq!(d.phi(&7, ms(10)), None);
        assert_eq!(d.is_available(&7, ms(10)), None);
        assert!(d.suspects(ms(10)).is_empty());
        assert!(d.is_empty());
    }

    // A fast peer (every 100 ms) and a slow one (every 2 s): with a shared history the slow peer
    // would look dead and the fast peer's silences would be judged by the slow peer's pace.
    #[test]
    fn peers_do_not_share_history() {
        let mut d = FailureDetectors::new(config()).unwrap();
        let mut alone = PhiAccrualDetector::new(config()).unwrap();
        for i in 0..200u64 {
            d.heartbeat("fast", ms(i * 100));
            alone.heartbeat(ms(i * 100));
        }
        let before = d.phi(&"fast", ms(19_950)).unwrap();
        for i in 0..10u64 {
            d.heartbeat("slow", ms(i * 2000));
        }
        for t in [19_950, 20_000, 20_500, 25_000] {
            // The fast peer's phi is exactly what a detector that never saw the slow peer says.
            assert_eq!(d.phi(&"fast", ms(t)), Some(alone.phi(ms(t))));
        }
        assert_eq!(d.phi(&"fast", ms(19_950)), Some(before));
        // The slow peer is judged by its own 2 s pace: 1.9 s after its last heartbeat it is fine,
        // while the fast peer, 1.9 s after its last, is long suspected.
        assert!(d.is_available(&"slow", ms(18_000 + 1900)).unwrap());
        assert!(!d.is_available(&"fast", ms(19_900 + 1900)).unwrap());
        assert_eq!(d.suspects(ms(19_900 + 1900)), vec!["fast"]);
    }

    #[test]
    fn suspects_are_sorted_and_remove_forgets() {
        let mut d = FailureDetectors::new(config()).unwrap();
        for peer in [5u32, 1, 9, 3] {
            for i in 0..20u64 {
                d.heartbeat(peer, ms(i * 1000));
            }
        }
        d.heartbeat(3, ms(60_000));
        let suspects = d.suspects(ms(60_000));
        assert_eq!(suspects, vec![1, 5, 9]);
        assert_eq!(d.peers().copied().collect::<Vec<_>>(), vec![1, 3, 5, 9]);
        assert!(d.remove(&5));
        assert!(!d.remove(&5));
        assert_eq!(d.suspects(ms(60_000)), vec![1, 9]);
        assert_eq!(d.len(), 3);
        // A removed peer starts from scratch: its first heartbeat bootstraps a fresh window.
        d.heartbeat(5, ms(61_000));
        let stats = d.detector(&5).unwrap().stats().unwrap();
        assert_eq!(stats.samples, 2);
    }

    proptest! {
        // Interleaved heartbeats of several peers: each peer's phi equals that of a detector fed
        // only that peer's heartbeats.
        #[test]
        fn interleaving_does_not_leak_between_peers(
            events in proptest::collection::vec((0u8..4, 1u64..3000), 1..200),
            probe_ms in 0u64..10_000,
        ) {
            let mut shared = FailureDetectors::new(config()).unwrap();
            let mut alone: BTreeMap<u8, PhiAccrualDetector> = BTreeMap::new();
            let mut now = Duration::ZERO;
            for (peer, gap) in events {
                now += ms(gap);
                shared.heartbeat(peer, now);
                alone
                    .entry(peer)
                    .or_insert_with(|| PhiAccrualDetector::new(config()).unwrap())
                    .heartbeat(now);
            }
            let at = now + ms(probe_ms);
            for (peer, det) in &alone {
                prop_assert_eq!(shared.phi(peer, at), Some(det.phi(at)));
            }
        }
    }
}
