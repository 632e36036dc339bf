//! The heartbeat-count failure detector: suspect a peer whose heartbeat has not advanced for a
//! fixed timeout.
//!
//! Two ways to feed it, per peer:
//! * [`HeartbeatDetector::heartbeat`]: a heartbeat arrived directly from the peer;
//! * [`HeartbeatDetector::observe_counter`]: the peer's heartbeat counter (version) was seen,
//!   possibly second hand through gossip. Only an *increase* counts as progress, because a stale
//!   counter relayed by a third node says nothing about the peer being alive now.
//!
//! # Guarantees
//!
//! 1. A peer is suspected exactly when more than `timeout` has passed since its last progress
//!    (a direct heartbeat or a counter increase); a repeated or lower counter never refreshes it.
//! 2. The recorded counter of a peer never decreases, and its last-progress time never moves
//!    backwards even if `now` does (a `now` earlier than the recorded time leaves it unchanged).
//! 3. Peers are independent and kept in a `BTreeMap`: one entry each, suspects listed sorted.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::detector::DetectorConfigError;

/// The configuration of a [`HeartbeatDetector`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeartbeatConfig {
    /// How long a peer may go without progress before it is suspected (default 5 s).
    pub timeout: Duration,
}

impl Default for HeartbeatConfig {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(5),
        }
    }
}

impl HeartbeatConfig {
    /// Checks the configuration.
    pub fn validate(&self) -> Result<(), DetectorConfigError> {
        if self.timeout.is_zero() {
            return Err(DetectorConfigError::ZeroTimeout);
        }
        Ok(())
    }
}

/// What [`HeartbeatDetector::observe_counter`] made of a counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// The first counter seen for this peer: it starts being tracked now.
    New,
    /// The counter increased: the peer made progress.
    Advanced,
    /// The counter is not above the recorded one: nothing changed.
    Stale,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct PeerProgress {
    // Invariant: never decreases.
    counter: u64,
    // Invariant: never decreases.
    last_progress: Duration,
}

/// Per-peer timeout detector over heartbeats or heartbeat counters. See the [module docs](self).
#[derive(Debug, Clone)]
pub struct HeartbeatDetector<P: Ord + Clone> {
    config: HeartbeatConfig,
    peers: BTreeMap<P, PeerProgress>,
}

impl<P: Ord + Clone> HeartbeatDetector<P> {
    /// Creates a detector that tracks no peer yet.
    pub fn new(config: HeartbeatConfig) -> Result<Self, DetectorConfigError> {
        config.validate()?;
        Ok(Self {
            config,
            peers: BTreeMap::new(),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &HeartbeatConfig {
        &self.config
    }

    /// A heartbeat arrived directly from `peer` at `now`: always progress.
    pub fn heartbeat(&mut self, peer: P, now: Duration) {
        let entry = self.peers.entry(peer).or_insert(PeerProgress {
            counter: 0,
            last_progress: now,
        });
        entry.last_progress = entry.last_progress.max(now);
    }

    /// `peer`'s heartbeat counter was observed to be `counter` at `now`.
    pub fn observe_counter(&mut self, peer: P, counter: u64, now: Duration) -> Progress {
        match self.peers.get_mut(&peer) {
            None => {
                self.peers.insert(
                    peer,
                    PeerProgress {
                        counter,
                        last_progress: now,
                    },
                );
                Progress::New
            }
            Some(entry) if counter > entry.counter => {
                entry.counter = counter;
                entry.last_progress = entry.last_progress.max(now);
                Progress::Advanced
            }
            Some(_) => Progress::Stale,
        }
    }

    /// Whether `peer` is suspected at `now`, or `None` if it is not tracked.
    pub fn is_suspected(&self, peer: &P, now: Duration) -> Option<bool> {
        self.peers.get(peer).map(|p| self.suspected(p, now))
    }

    /// The tracked peers suspected at `now`, in ascending order.
    pub fn suspects(&self, now: Duration) -> Vec<P> {
        self.peers
            .iter()
            .filter(|(_, p)| self.suspected(p, now))
            .map(|(peer, _)| peer.clone())
            .collect()
    }

    /// The highest counter seen for `peer` (0 if it only ever sent direct heartbeats).
    pub fn counter(&self, peer: &P) -> Option<u64> {
        self.peers.get(peer).map(|p| p.counter)
    }

    /// When `peer` last made progress.
    pub fn last_progress(&self, peer: &P) -> Option<Duration> {
        self.peers.get(peer).map(|p| p.last_progress)
    }

    /// Stops tracking `peer`; returns whether it was tracked.
    pub fn remove(&mut self, peer: &P) -> bool {
        self.peers.remove(peer).is_some()
    }

    /// The number of tracked peers.
    pub fn len(&self) -> usize {
        self.peers.len()
    }

    /// Whether no peer is tracked.
    pub fn is_empty(&self) -> bool {
        self.peers.is_empty()
    }

    fn suspected(&self, peer: &PeerProgress, now: Duration) -> bool {
        now.saturating_sub(peer.last_progress) > self.config.timeout
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    fn detector() -> HeartbeatDetector<&'static str> {
        HeartbeatDetector::new(HeartbeatConfig { timeout: ms(1000) }).unwrap()
    }

    #[test]
    fn zero_timeout_is_rejected_and_config_roundtrips() {
        let err = HeartbeatDetector::<u8>::new(HeartbeatConfig {
            timeout: Duration::ZERO,
        })
        .unwrap_err();
        assert_eq!(err, DetectorConfigError::ZeroTimeout);
        let c = HeartbeatConfig::default();
        let back: HeartbeatConfig =
            serde_json::from_str(&serde_json::to_string(&c).unwrap()).unwrap();
        assert_eq!(back, c);
    }

    #[test]
    fn suspected_only_after_the_timeout_without_progress() {
        let mut d = detector();
        assert_eq!(d.is_suspected(&"a", ms(0)), None);
        d.heartbeat("a", ms(100));
        assert_eq!(d.is_suspected(&"a", ms(1100)), Some(false));
        assert_eq!(d.is_suspected(&"a", ms(1101)), Some(true));
        d.heartbeat("a", ms(1500));
        assert_eq!(d.is_suspected(&"a", ms(2400)), Some(false));
    }

    #[test]
    fn only_a_counter_increase_is_progress() {
        let mut d = detector();
        assert_eq!(d.observe_counter("a", 5, ms(0)), Progress::New);
        assert_eq!(d.observe_counter("a", 5, ms(900)), Progress::Stale);
        assert_eq!(d.observe_counter("a", 3, ms(950)), Progress::Stale);
        assert_eq!(d.counter(&"a"), Some(5));
        // Stale counters did not refresh: suspected 1 s after the counter was first seen.
        assert_eq!(d.is_suspected(&"a", ms(1001)), Some(true));
        assert_eq!(d.observe_counter("a", 6, ms(1200)), Progress::Advanced);
        assert_eq!(d.is_suspected(&"a", ms(2100)), Some(false));
        assert_eq!(d.last_progress(&"a"), Some(ms(1200)));
    }

    #[test]
    fn peers_are_independent_and_suspects_sorted() {
        let mut d = detector();
        d.heartbeat("c", ms(0));
        d.heartbeat("a", ms(0));
        d.heartbeat("b", ms(0));
        d.heartbeat("b", ms(900));
        assert_eq!(d.suspects(ms(1500)), vec!["a", "c"]);
        assert!(d.remove(&"a"));
        assert!(!d.remove(&"a"));
        assert_eq!(d.suspects(ms(1500)), vec!["c"]);
        assert_eq!(d.len(), 2);
    }

    #[test]
    fn time_going_backwards_does_not_rewind_progress() {
        let mut d = detector();
        d.heartbeat("a", ms(5000));
        d.heartbeat("a", ms(1000));
        assert_eq!(d.last_progress(&"a"), Some(ms(5000)));
        assert_eq!(d.observe_counter("a", 1, ms(2000)), Progress::Advanced);
        assert_eq!(d.last_progress(&"a"), Some(ms(5000)));
        // Asked about a time before the last progress: not suspected.
        assert_eq!(d.is_suspected(&"a", ms(0)), Some(false));
    }

    proptest! {
        // Model check against a naive reference: the peer is suspected at `probe` iff more than
        // the timeout passed since the last event that raised the maximum counter.
        #[test]
        fn matches_a_naive_model(
            events in proptest::collection::vec((0u64..10, 0u64..800), 1..60),
            probe_gap in 0u64..3000,
        ) {
            let mut d = detector();
            let mut now = Duration::ZERO;
            let mut max_counter = None;
            let mut last_progress = Duration::ZERO;
            for (counter, gap) in events {
                now += ms(gap);
                d.observe_counter("p", counter, now);
                if max_counter.is_none_or(|m| counter > m) {
                    max_counter = Some(counter);
                    last_progress = now;
                }
            }
            let probe = now + ms(probe_gap);
            prop_assert_eq!(
                d.is_suspected(&"p", probe),
                Some(probe - last_progress > ms(1000))
            );
        }
    }
}
