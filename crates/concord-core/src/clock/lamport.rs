//! Lamport's scalar logical clock ("Time, Clocks, and the Ordering of Events", 1978).

use serde::{Deserialize, Serialize};

/// A Lamport clock.
///
/// `tick` before every local event that is sent or recorded; `observe` every received
/// timestamp. The resulting values respect causality: if event `a` happened before `b`,
/// `L(a) < L(b)` (the converse does not hold; use a [`super::VectorClock`] for that).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LamportClock {
    // Invariant: never decreases.
    time: u64,
}

impl LamportClock {
    /// A clock starting at 0 (the first `tick` returns 1).
    pub fn new() -> Self {
        Self::default()
    }

    /// A clock resumed from a persisted value (for example after a restart).
    pub fn from_time(time: u64) -> Self {
        Self { time }
    }

    /// The last value handed out or observed.
    pub fn time(&self) -> u64 {
        self.time
    }

    /// Advances the clock for a local event and returns the event's timestamp.
    ///
    /// Saturates at `u64::MAX` instead of wrapping, so the clock never goes backwards.
    pub fn tick(&mut self) -> u64 {
        self.time = self.time.saturating_add(1);
        self.time
    }

    /// Merges a received timestamp and returns the timestamp of the receive event, which is
    /// greater than both the local time and `remote`.
    pub fn observe(&mut self, remote: u64) -> u64 {
        self.time = self.time.max(remote);
        self.tick()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn tick_and_observe() {
        let mut c = LamportClock::new();
        assert_eq!(c.tick(), 1);
        assert_eq!(c.observe(10), 11);
        assert_eq!(c.observe(3), 12);
        assert_eq!(c.time(), 12);
    }

    #[test]
    fn saturates_instead_of_wrapping() {
        let mut c = LamportClock::from_time(u64::MAX - 1);
        assert_eq!(c.tick(), u64::MAX);
        assert_eq!(c.tick(), u64::MAX);
        assert_eq!(c.observe(u64::MAX), u64::MAX);
    }

    proptest! {
        #[test]
        fn strictly_increasing(ops in proptest::collection::vec(proptest::option::of(0u64..1_000_000), 1..200)) {
            let mut c = LamportClock::new();
            let mut last = 0;
            for op in ops {
                let t = match op {
                    None => c.tick(),
                    Some(r) => {
                        let t = c.observe(r);
                        prop_assert!(t > r);
                        t
                    }
                };
                prop_assert!(t > last);
                last = t;
            }
        }
    }
}
