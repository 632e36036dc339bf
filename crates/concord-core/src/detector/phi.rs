//! The phi-accrual failure detector for one peer (Hayashibara et al., 2004), as Akka and
//! Cassandra implement it.
//!
//! The detector remembers the last `window_capacity` intervals between heartbeats. When asked
//! about time `now`, it models the next interval as a normal distribution with the window's mean
//! (plus `acceptable_heartbeat_pause`) and standard deviation (at least `min_std_deviation`) and
//! returns
//!
//! ```text
//! φ(t) = -log10(1 - CDF(t)),   t = now - last heartbeat
//!      = -log10(0.5 * erfc((t - mean) / (std * √2)))
//! ```
//!
//! φ = 1 means a 10% chance that a heartbeat this late is still coming, φ = 8 (the default
//! threshold) a chance of 10⁻⁸. The first heartbeat bootstraps the window as Akka does: two
//! synthetic samples `estimate ± estimate/4`, so the mean is `first_heartbeat_estimate` and the
//! standard deviation a quarter of it, until real intervals push them out.
//!
//! # Guarantees
//!
//! 1. **Bounded, O(1) per heartbeat.** At most `window_capacity` samples; adding one evicts the
//!    oldest and updates the running sums in constant time.
//! 2. **No drift.** Intervals are stored as whole microseconds and the running sum and sum of
//!    squares as `u128`, so after any number of heartbeats they equal the sums over the window
//!    exactly. (Bound: `2^20` samples of at most `2^40` µs keep both sums below `2^120`.) An
//!    interval longer than `2^40` µs (about 12.7 days) is recorded as `2^40` µs; a peer that
//!    silent has long been suspected.
//! 3. **φ is finite, ≥ 0 and non-decreasing in `now`.** The tail is computed with
//!    [`libm::erfc`], which is accurate where it matters; where `erfc` would underflow (`z ≥ 20`,
//!    i.e. φ above about 176) an asymptotic expansion of `log(erfc)` takes over, clamped so it
//!    never dips below the value at the switch. φ never becomes infinity or NaN, even at
//!    `Duration::MAX`; [`PHI_MAX`] caps it as a last resort.
//! 4. **Silences do not poison the window** (as Akka): an interval is recorded only if the peer
//!    was still available when the heartbeat arrived, so a peer returning after an outage is not
//!    judged by the outage afterwards. The cost: a peer that slows down by more than the
//!    acceptable pause is suspected between heartbeats until the configuration changes.
//! 5. **Time never goes backwards inside.** A heartbeat stamped before the previous one is
//!    ignored ([`HeartbeatOutcome::OutOfOrder`]); `phi` at a time before the last heartbeat is 0.

use std::collections::VecDeque;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::detector::DetectorConfigError;

/// The largest accepted `window_capacity`; it keeps the exact running sums inside `u128`.
pub const MAX_WINDOW_CAPACITY: usize = 1 << 20;

/// The cap on φ, reached only if the inputs themselves are extreme; φ is always finite.
pub const PHI_MAX: f64 = 1e300;

/// The longest interval the window records, in microseconds (about 12.7 days).
const MAX_INTERVAL_MICROS: u64 = 1 << 40;

/// Above this `z/√2`, `erfc` is below 1e-175 and the asymptotic expansion is used instead.
const ASYMPTOTIC_FROM: f64 = 20.0;

/// The configuration of a phi-accrual detector. Defaults are Akka's cluster defaults.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PhiAccrualConfig {
    /// φ at or above which the peer is suspected (default 8.0: a 10⁻⁸ chance of a false alarm
    /// under the model).
    pub threshold: f64,
    /// How many inter-arrival samples to keep (default 1000).
    pub window_capacity: usize,
    /// Lower bound on the standard deviation (default 100 ms), so a very regular peer is not
    /// suspected after a tiny delay.
    pub min_std_deviation: Duration,
    /// Added to the mean interval (default 3 s): how long a peer may pause (GC, network blip)
    /// before φ starts climbing in earnest.
    pub acceptable_heartbeat_pause: Duration,
    /// The expected interval before any real sample exists (default 1 s, the heartbeat period).
    pub first_heartbeat_estimate: Duration,
}

impl Default for PhiAccrualConfig {
    fn default() -> Self {
        Self {
            threshold: 8.0,
            window_capacity: 1000,
            min_std_deviation: Duration::from_millis(100),
            acceptable_heartbeat_pause: Duration::from_secs(3),
            first_heartbeat_estimate: Duration::from_secs(1),
        }
    }
}

impl PhiAccrualConfig {
    /// Checks every field; all cross-field rules live here.
    pub fn validate(&self) -> Result<(), DetectorConfigError> {
        if !(self.threshold.is_finite() && self.threshold > 0.0) {
            return Err(DetectorConfigError::InvalidThreshold(self.threshold));
        }
        if self.window_capacity == 0 || self.window_capacity > MAX_WINDOW_CAPACITY {
            return Err(DetectorConfigError::InvalidWindowCapacity {
                got: self.window_capacity,
                max: MAX_WINDOW_CAPACITY,
            });
        }
        if self.min_std_deviation.is_zero() {
            return Err(DetectorConfigError::ZeroMinStdDeviation);
        }
        if self.first_heartbeat_estimate.is_zero() {
            return Err(DetectorConfigError::ZeroFirstHeartbeatEstimate);
        }
        Ok(())
    }
}

/// What [`PhiAccrualDetector::heartbeat`] did with a heartbeat.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeartbeatOutcome {
    /// The first heartbeat: the window was bootstrapped from `first_heartbeat_estimate`.
    First,
    /// The interval since the previous heartbeat was added to the window.
    Recorded,
    /// The peer was already suspected when the heartbeat arrived: the last-heartbeat time was
    /// updated but the (outage-sized) interval was not recorded.
    RecordedAfterSuspicion,
    /// The heartbeat is stamped before the previous one and was ignored.
    OutOfOrder,
}

/// The raw statistics of a detector's window (without pause or minimum deviation applied).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct IntervalStats {
    /// The number of samples in the window.
    pub samples: usize,
    /// The mean interval, in milliseconds.
    pub mean_ms: f64,
    /// The population standard deviation of the intervals, in milliseconds.
    pub std_deviation_ms: f64,
}

/// A sliding window of inter-arrival times with exact running sums.
#[derive(Debug, Clone)]
struct IntervalWindow {
    // Invariant: intervals.len() <= capacity, every interval <= MAX_INTERVAL_MICROS,
    // sum == Σ intervals and sum_squares == Σ intervals².
    intervals: VecDeque<u64>,
    capacity: usize,
    sum: u128,
    sum_squares: u128,
}

impl IntervalWindow {
    fn new(capacity: usize) -> Self {
        assert!(capacity >= 1);
        assert!(capacity <= MAX_WINDOW_CAPACITY);
        Self {
            intervals: VecDeque::new(),
            capacity,
            sum: 0,
            sum_squares: 0,
        }
    }

    fn push(&mut self, interval: Duration) {
        let micros = u64::try_from(interval.as_micros())
            .unwrap_or(u64::MAX)
            .min(MAX_INTERVAL_MICROS);
        if self.intervals.len() == self.capacity {
            if let Some(old) = self.intervals.pop_front() {
                self.sum -= u128::from(old);
                self.sum_squares -= u128::from(old) * u128::from(old);
            }
        }
        self.intervals.push_back(micros);
        self.sum += u128::from(micros);
        self.sum_squares += u128::from(micros) * u128::from(micros);
        debug_assert!(self.intervals.len() <= self.capacity);
    }

    /// Mean and population standard deviation in microseconds, if the window is not empty.
    fn mean_and_std_micros(&self) -> Option<(f64, f64)> {
        let n = self.intervals.len() as u128;
        if n == 0 {
            return None;
        }
        // n·Σx² - (Σx)² is exact in u128 and never negative (Cauchy-Schwarz), so the variance
        // has no cancellation error beyond the final division.
        let numerator = n * self.sum_squares;
        let square_of_sum = self.sum * self.sum;
        debug_assert!(numerator >= square_of_sum);
        let variance = numerator.saturating_sub(square_of_sum) as f64 / (n * n) as f64;
        Some((self.sum as f64 / n as f64, variance.sqrt()))
    }
}

/// A phi-accrual failure detector for one peer. See the [module docs](self).
#[derive(Debug, Clone)]
pub struct PhiAccrualDetector {
    config: PhiAccrualConfig,
    window: IntervalWindow,
    last_heartbeat: Option<Duration>,
}

impl PhiAccrualDetector {
    /// Creates a detector that has seen no heartbeat yet.
    pub fn new(config: PhiAccrualConfig) -> Result<Self, DetectorConfigError> {
        config.validate()?;
        Ok(Self::from_valid_config(config))
    }

    pub(crate) fn from_valid_config(config: PhiAccrualConfig) -> Self {
        debug_assert!(config.validate().is_ok());
        Self {
            config,
            window: IntervalWindow::new(config.window_capacity),
            last_heartbeat: None,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &PhiAccrualConfig {
        &self.config
    }

    /// The time of the last accepted heartbeat.
    pub fn last_heartbeat(&self) -> Option<Duration> {
        self.last_heartbeat
    }

    /// Records a heartbeat that arrived at `now`.
    pub fn heartbeat(&mut self, now: Duration) -> HeartbeatOutcome {
        let Some(last) = self.last_heartbeat else {
            let estimate = self.config.first_heartbeat_estimate;
            self.window.push(estimate - estimate / 4);
            self.window.push(estimate + estimate / 4);
            self.last_heartbeat = Some(now);
            return HeartbeatOutcome::First;
        };
        if now < last {
            return HeartbeatOutcome::OutOfOrder;
        }
        let outcome = if self.is_available(now) {
            self.window.push(now - last);
            HeartbeatOutcome::Recorded
        } else {
            HeartbeatOutcome::RecordedAfterSuspicion
        };
        self.last_heartbeat = Some(now);
        outcome
    }

    /// The suspicion level at `now`: 0 before the first heartbeat (nothing to suspect yet).
    pub fn phi(&self, now: Duration) -> f64 {
        let (Some(last), Some((mean, std))) =
            (self.last_heartbeat, self.window.mean_and_std_micros())
        else {
            return 0.0;
        };
        let elapsed = now.saturating_sub(last).as_nanos() as f64 / 1000.0;
        let pause = self.config.acceptable_heartbeat_pause.as_nanos() as f64 / 1000.0;
        let min_std = self.config.min_std_deviation.as_nanos() as f64 / 1000.0;
        phi_normal(elapsed, mean + pause, std.max(min_std))
    }

    /// Whether φ at `now` is below the threshold.
    pub fn is_available(&self, now: Duration) -> bool {
        self.phi(now) < self.config.threshold
    }

    /// The window's raw statistics, or `None` before the first heartbeat.
    pub fn stats(&self) -> Option<IntervalStats> {
        let (mean, std) = self.window.mean_and_std_micros()?;
        Some(IntervalStats {
            samples: self.window.intervals.len(),
            mean_ms: mean / 1000.0,
            std_deviation_ms: std / 1000.0,
        })
    }
}

/// φ of `elapsed` under a normal distribution with `mean` and `std_deviation` (any one unit):
/// `-log10(1 - CDF(elapsed))`.
///
/// Finite, ≥ 0 and non-decreasing in `elapsed` for finite inputs. For
/// `z = (elapsed - mean) / (std_deviation·√2) ≥ 20` the tail `0.5·erfc(z)` would soon underflow,
/// so `-ln(0.5·erfc(z))` is computed from the asymptotic series
/// `erfc(z) ≈ e^{-z²} / (z√π) · (1 - 1/(2z²) + 3/(4z⁴) - 15/(8z⁶))`, whose relative error there is
/// below 1e-9 (the φ error is far smaller still). The result is capped at [`PHI_MAX`].
///
/// # Panics
/// If `std_deviation` is not positive or an input is NaN (programmer errors).
pub fn phi_normal(elapsed: f64, mean: f64, std_deviation: f64) -> f64 {
    assert!(std_deviation > 0.0, "std deviation must be positive");
    assert!(!elapsed.is_nan(), "elapsed is NaN");
    assert!(!mean.is_nan(), "mean is NaN");
    let z = (elapsed - mean) / (std_deviation * std::f64::consts::SQRT_2);
    let phi = if z < ASYMPTOTIC_FROM {
        -libm::log10(0.5 * libm::erfc(z))
    } else {
        // At the switch the two formulas differ by ~1e-10; the max keeps φ non-decreasing.
        let at_switch = -libm::log10(0.5 * libm::erfc(ASYMPTOTIC_FROM));
        asymptotic_phi(z).max(at_switch)
    };
    if phi.is_nan() {
        // Only reachable with infinite inputs (e.g. ∞ - ∞): treat as the most suspicious.
        return PHI_MAX;
    }
    // `+ 0.0` turns the -0.0 of `-log10(1.0)` into 0.0 (clamp keeps -0.0, which prints as
    // "-0").
    phi.clamp(0.0, PHI_MAX) + 0.0
}

/// `-log10(0.5·erfc(z))` for large `z`, from the asymptotic series of `erfc`.
fn asymptotic_phi(z: f64) -> f64 {
    // ln(2√π)
    const LN_TWO_SQRT_PI: f64 = 1.265_512_123_484_645_3;
    let inv_z2 = 1.0 / (z * z);
    let series = inv_z2 * (-0.5 + inv_z2 * (0.75 - inv_z2 * 1.875));
    // -ln(tail) = z² + ln(2√π·z) - ln(1 + series); z² dominates every other term's change, so
    // the rounded sum is non-decreasing in z.
    let minus_ln_tail = z * z + (libm::log(z) + LN_TWO_SQRT_PI - libm::log1p(series));
    minus_ln_tail / std::f64::consts::LN_10
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    /// The standard normal quantile for an upper tail of 1e-8 (φ = 8).
    const Z_PHI_8: f64 = 5.612_001_244;

    fn config(pause_ms: u64, min_std_ms: u64, capacity: usize) -> PhiAccrualConfig {
        PhiAccrualConfig {
            threshold: 8.0,
            window_capacity: capacity,
            min_std_deviation: ms(min_std_ms),
            acceptable_heartbeat_pause: ms(pause_ms),
            first_heartbeat_estimate: ms(1000),
        }
    }

    /// A detector whose window holds exactly the intervals 900, 1100, 900, 1100 ms:
    /// mean 1000 ms, population standard deviation 100 ms. Returns the last heartbeat time.
    fn mean_1000_std_100() -> (PhiAccrualDetector, Duration) {
        let mut d = PhiAccrualDetector::new(config(0, 1, 4)).unwrap();
        let mut now = ms(5000);
        d.heartbeat(now);
        for gap in [900, 1100, 900, 1100] {
            now += ms(gap);
            assert_eq!(d.heartbeat(now), HeartbeatOutcome::Recorded);
        }
        let stats = d.stats().unwrap();
        assert_eq!(stats.samples, 4);
        assert!((stats.mean_ms - 1000.0).abs() < 1e-9);
        assert!((stats.std_deviation_ms - 100.0).abs() < 1e-9);
        (d, now)
    }

    #[test]
    fn default_config_is_valid_and_roundtrips_through_serde() {
        let c = PhiAccrualConfig::default();
        assert_eq!(c.validate(), Ok(()));
        assert_eq!(c.threshold, 8.0);
        let json = serde_json::to_string(&c).unwrap();
        let back: PhiAccrualConfig = serde_json::from_str(&json).unwrap();
        assert_eq!(back, c);
    }

    #[test]
    fn each_invalid_field_has_its_error() {
        let ok = PhiAccrualConfig::default();
        for threshold in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            let err = PhiAccrualConfig { threshold, ..ok }.validate().unwrap_err();
            assert!(matches!(err, DetectorConfigError::InvalidThreshold(_)));
        }
        for window_capacity in [0, MAX_WINDOW_CAPACITY + 1] {
            let c = PhiAccrualConfig {
                window_capacity,
                ..ok
            };
            assert!(matches!(
                PhiAccrualDetector::new(c).unwrap_err(),
                DetectorConfigError::InvalidWindowCapacity { .. }
            ));
        }
        let c = PhiAccrualConfig {
            min_std_deviation: Duration::ZERO,
            ..ok
        };
        assert_eq!(c.validate(), Err(DetectorConfigError::ZeroMinStdDeviation));
        let c = PhiAccrualConfig {
            first_heartbeat_estimate: Duration::ZERO,
            ..ok
        };
        assert_eq!(
            c.validate(),
            Err(DetectorConfigError::ZeroFirstHeartbeatEstimate)
        );
        assert_eq!(
            DetectorConfigError::ZeroMinStdDeviation.to_string(),
            "minimum standard deviation must be greater than zero"
        );
    }

    // Expected values: 1 - Φ(0) = 0.5 → log10(2); 1 - Φ(2) = 0.0227501319 → 1.6430161;
    // 1 - Φ(1) = 0.1586552539 → 0.7995455; 1 - Φ(3) = 0.0013498980 → 2.8696990;
    // 1 - Φ(-1) = 0.8413447461 → 0.0750160 (tabulated normal tail values).
    #[test]
    fn phi_matches_the_normal_tail_on_fixed_inputs() {
        let (d, last) = mean_1000_std_100();
        let cases = [
            (1000, 2f64.log10()),
            (1200, -(0.022_750_131_948_179_2f64).log10()),
            (1100, -(0.158_655_253_931_457f64).log10()),
            (1300, -(0.001_349_898_031_630_1f64).log10()),
            (900, -(0.841_344_746_068_543f64).log10()),
        ];
        for (t, expected) in cases {
            let phi = d.phi(last + ms(t));
            assert!((phi - expected).abs() < 1e-4, "t={t}: {phi} vs {expected}");
        }
        assert!((d.phi(last + ms(1000)) - std::f64::consts::LOG10_2).abs() < 1e-4);
        assert!((d.phi(last + ms(1200)) - 1.64302).abs() < 1e-4);
    }

    #[test]
    fn pause_shifts_the_mean_and_min_std_floors_the_deviation() {
        let mut d = PhiAccrualDetector::new(config(500, 300, 4)).unwrap();
        let mut now = Duration::ZERO;
        d.heartbeat(now);
        for gap in [900, 1100, 900, 1100] {
            now += ms(gap);
            d.heartbeat(now);
        }
        // mean 1000 + 500 pause = 1500; std max(100, 300) = 300; t = 2100 → z = 2.
        let phi = d.phi(now + ms(2100));
        assert!((phi - 1.643_016_08).abs() < 1e-4, "{phi}");
    }

    #[test]
    fn first_heartbeat_bootstraps_like_akka() {
        let mut d = PhiAccrualDetector::new(config(0, 1, 1000)).unwrap();
        assert_eq!(d.phi(ms(123_456)), 0.0);
        assert!(d.is_available(ms(123_456)));
        assert_eq!(d.heartbeat(ms(10)), HeartbeatOutcome::First);
        let stats = d.stats().unwrap();
        assert_eq!(stats.samples, 2);
        assert!((stats.mean_ms - 1000.0).abs() < 1e-9);
        assert!((stats.std_deviation_ms - 250.0).abs() < 1e-9);
        // z = 1 under mean 1000 ms and std 250 ms.
        assert!((d.phi(ms(10 + 1250)) - 0.799_545_54).abs() < 1e-4);
    }

    // Reference: Hayashibara et al. section 3 — with φ = -log10(P_later(t)), the peer crosses
    // threshold Φ when P_later(t) = 10^-Φ, i.e. at t = mean + pause + z·std with
    // 1 - CDF(z) = 1e-8 (z ≈ 5.612001244).
    #[test]
    fn silent_peer_crosses_threshold_at_the_expected_time() {
        // Regular 1 s heartbeats: std 0 → min_std 100 ms; pause 3 s.
        let mut d = PhiAccrualDetector::new(config(3000, 100, 1000)).unwrap();
        let mut now = Duration::ZERO;
        for _ in 0..1500 {
            d.heartbeat(now);
            now += ms(1000);
        }
        let last = d.last_heartbeat().unwrap();
        let expected_ms = 1000.0 + 3000.0 + Z_PHI_8 * 100.0;
        assert_crossing_near(&d, last, expected_ms);

        // Alternating 800/1200 ms: std 200 ms (above the 100 ms floor), no pause.
        let mut d = PhiAccrualDetector::new(config(0, 100, 1000)).unwrap();
        let mut now = Duration::ZERO;
        for i in 0..1500u64 {
            d.heartbeat(now);
            now += ms(if i % 2 == 0 { 800 } else { 1200 });
        }
        let last = d.last_heartbeat().unwrap();
        let stats = d.stats().unwrap();
        assert!((stats.mean_ms - 1000.0).abs() < 1e-9);
        assert!((stats.std_deviation_ms - 200.0).abs() < 1e-9);
        assert_crossing_near(&d, last, 1000.0 + Z_PHI_8 * 200.0);
    }

    /// Scans in 1 ms steps for the first time φ reaches 8 and checks it against `expected_ms`.
    fn assert_crossing_near(d: &PhiAccrualDetector, last: Duration, expected_ms: f64) {
        let crossing = (0..100_000u64)
            .find(|&t| !d.is_available(last + ms(t)))
            .unwrap();
        assert!(
            (crossing as f64 - expected_ms).abs() <= 2.0,
            "crossed at {crossing} ms, expected {expected_ms} ms"
        );
        assert!(d.phi(last + ms(crossing - 2)) < 8.0);
    }

    #[test]
    fn huge_silences_give_finite_phi() {
        let (d, last) = mean_1000_std_100();
        let mut previous = 0.0;
        for t in [
            ms(3000),   // z = 20, erfc still fine
            ms(3829),   // just past the switch to the asymptotic series
            ms(5000),   // erfc(28) would be subnormal
            ms(10_000), // erfc would be exactly 0
            Duration::from_secs(86_400 * 365),
            Duration::MAX - last,
        ] {
            let phi = d.phi(last + t);
            assert!(phi.is_finite(), "{t:?}");
            assert!(phi >= previous, "{t:?}: {phi} < {previous}");
            previous = phi;
        }
        assert!(previous > 1e20);
        assert!(phi_normal(f64::MAX, 0.0, f64::MIN_POSITIVE).is_finite());
        assert!(phi_normal(f64::INFINITY, 0.0, 1.0).is_finite());
    }

    #[test]
    fn asymptotic_series_agrees_with_erfc_near_the_switch() {
        for z in [18.0, 20.0, 22.0, 25.0] {
            let exact = -libm::log10(0.5 * libm::erfc(z));
            let series = asymptotic_phi(z);
            assert!((exact - series).abs() < 1e-9, "z={z}: {exact} vs {series}");
        }
    }

    #[test]
    fn an_outage_is_not_recorded_and_out_of_order_is_ignored() {
        let (mut d, last) = mean_1000_std_100();
        let before = d.stats().unwrap();
        assert_eq!(
            d.heartbeat(last + ms(60_000)),
            HeartbeatOutcome::RecordedAfterSuspicion
        );
        assert_eq!(d.stats().unwrap(), before);
        assert_eq!(d.last_heartbeat(), Some(last + ms(60_000)));
        assert!(d.is_available(last + ms(60_500)));
        assert_eq!(d.heartbeat(last), HeartbeatOutcome::OutOfOrder);
        assert_eq!(d.last_heartbeat(), Some(last + ms(60_000)));
        assert_eq!(d.phi(last), 0.0);
    }

    #[test]
    fn running_sums_stay_exact_after_many_evictions() {
        let mut d = PhiAccrualDetector::new(config(0, 1, 7)).unwrap();
        let mut now = Duration::ZERO;
        let mut gaps = Vec::new();
        for i in 0..10_000u64 {
            d.heartbeat(now);
            let gap = 950 + (i * 37) % 100;
            gaps.push(gap);
            now += ms(gap);
        }
        // The window holds the last 7 intervals before the final heartbeat.
        let last7 = &gaps[gaps.len() - 8..gaps.len() - 1];
        let mean = last7.iter().sum::<u64>() as f64 / 7.0;
        let var = last7
            .iter()
            .map(|&g| (g as f64 - mean).powi(2))
            .sum::<f64>()
            / 7.0;
        let stats = d.stats().unwrap();
        assert!((stats.mean_ms - mean).abs() < 1e-9);
        assert!((stats.std_deviation_ms - var.sqrt()).abs() < 1e-9);
    }

    proptest! {
        #[test]
        fn phi_is_monotone_in_time(
            gaps in proptest::collection::vec(1u64..5000, 1..50),
            pause in 0u64..3000,
            min_std in 1u64..500,
            a in 0u64..u64::MAX / 2,
            b in 0u64..u64::MAX / 2,
            scale in 0u32..3,
        ) {
            let mut d = PhiAccrualDetector::new(config(pause, min_std, 16)).unwrap();
            let mut now = Duration::ZERO;
            for g in gaps {
                d.heartbeat(now);
                now += ms(g);
            }
            // Probe at nanosecond, microsecond-ish and huge offsets.
            let shift = [40u32, 20, 0][scale as usize];
            let (lo, hi) = if a <= b { (a >> shift, b >> shift) } else { (b >> shift, a >> shift) };
            let p_lo = d.phi(now + Duration::from_nanos(lo));
            let p_hi = d.phi(now + Duration::from_nanos(hi));
            prop_assert!(p_lo.is_finite() && p_hi.is_finite());
            prop_assert!(p_lo >= 0.0);
            prop_assert!(p_lo.is_sign_positive());
            prop_assert!(p_lo <= p_hi, "phi({lo}) = {p_lo} > phi({hi}) = {p_hi}");
        }

        #[test]
        fn phi_normal_is_monotone_between_neighbouring_floats(x in -40.0f64..1e12) {
            prop_assume!(x != 0.0);
            // The next float up: one more ulp away from zero if positive, one closer if negative.
            let bits = x.to_bits();
            let y = f64::from_bits(if x > 0.0 { bits + 1 } else { bits - 1 });
            prop_assert!(y > x);
            prop_assert!(phi_normal(x, 0.0, 1.0) <= phi_normal(y, 0.0, 1.0));
        }

        // Heartbeats every 1 s ± 30 %: the peer is available at every arrival and halfway
        // between arrivals, with no pause configured at all.
        #[test]
        fn jittered_regular_heartbeats_stay_available(
            jitter in proptest::collection::vec(-300i64..=300, 1..300),
        ) {
            let mut d = PhiAccrualDetector::new(config(0, 100, 1000)).unwrap();
            let mut now = ms(1);
            d.heartbeat(now);
            for j in jitter {
                let gap = ms((1000 + j) as u64);
                prop_assert!(d.is_available(now + gap / 2));
                prop_assert!(d.is_available(now + gap), "phi {}", d.phi(now + gap));
                now += gap;
                prop_assert_eq!(d.heartbeat(now), HeartbeatOutcome::Recorded);
            }
        }
    }
}
