//! Capped exponential backoff with full jitter.

use std::time::Duration;

use rand::Rng;

/// Waits between attempts: attempt `n` (from 0) sleeps a uniformly random time in
/// `[0, min(max, base * 2^n)]` ("full jitter"), so clients that failed together do not
/// retry together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The cap of the first wait.
    pub base: Duration,
    /// The cap of every wait.
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            base: Duration::from_millis(25),
            max: Duration::from_secs(1),
        }
    }
}

impl Backoff {
    /// The upper bound of the wait before retry `attempt` (0 for the first retry).
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let factor = 1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.max)
    }

    /// A random wait for retry `attempt`, drawn from `rng`.
    pub fn delay(&self, attempt: u32, rng: &mut impl Rng) -> Duration {
        let ceiling = self.ceiling(attempt).as_nanos() as u64;
        Duration::from_nanos(rng.gen_range(0..=ceiling))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::SeedableRng;

    #[test]
    fn ceilings_double_then_stop_at_the_cap() {
        let b = Backoff {
            base: Duration::from_millis(10),
            max: Duration::from_millis(100),
        };
        let got: Vec<u128> = (0..6).map(|n| b.ceiling(n).as_millis()).collect();
        assert_eq!(got, [10, 20, 40, 80, 100, 100]);
        assert_eq!(b.ceiling(u32::MAX), b.max);
    }

    #[test]
    fn delays_spread_over_the_whole_range() {
        let b = Backoff::default();
        let mut rng = rand::rngs::SmallRng::seed_from_u64(7);
        let delays: Vec<Duration> = (0..200).map(|_| b.delay(5, &mut rng)).collect();
        let ceiling = b.ceiling(5);
        assert!(delays.iter().any(|d| *d < ceiling / 4), "no short waits");
        assert!(delays.iter().any(|d| *d > ceiling * 3 / 4), "no long waits");
    }

    proptest! {
        #[test]
        fn a_delay_never_exceeds_its_ceiling(attempt in 0u32..64, seed: u64,
                                             base_ms in 1u64..1000, max_ms in 1u64..60_000) {
            let b = Backoff { base: Duration::from_millis(base_ms), max: Duration::from_millis(max_ms) };
            let mut rng = rand::rngs::SmallRng::seed_from_u64(seed);
            let d = b.delay(attempt, &mut rng);
            prop_assert!(d <= b.ceiling(attempt));
            prop_assert!(b.ceiling(attempt) <= b.max);
        }
    }
}
