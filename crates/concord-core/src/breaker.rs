//! Circuit breaker: stop calling a dependency that keeps failing, then probe it carefully.
//!
//! ```text
//!            trip policy fires                    cool_down elapsed
//!   Closed ───────────────────────► Open ─────────────────────────► HalfOpen
//!     ▲                              ▲                                 │ │
//!     │                              └──── any probe fails ────────────┘ │
//!     └──────────── half_open_successes_to_close probes succeed ─────────┘
//! ```
//!
//! A call asks [`CircuitBreaker::try_acquire`] for a [`Permit`] and later hands it back with
//! [`CircuitBreaker::on_success`], [`CircuitBreaker::on_failure`] or
//! [`CircuitBreaker::on_cancel`]. While closed every call gets a permit; while open none does;
//! while half-open at most `half_open_max_probes` permits (probes) are out at once.
//!
//! Trip policies ([`TripPolicy`]):
//! * `ConsecutiveFailures(n)`: open after `n` failures in a row; a success resets the count.
//! * `FailureRate { threshold, min_calls, window }`: open when, over the last `window`, at least
//!   `min_calls` outcomes were seen and the fraction of failures is `>= threshold`. The window is
//!   a ring of [`RATE_BUCKETS`] time buckets of `window / RATE_BUCKETS` each (chosen over a ring
//!   of the last N outcomes because the policy is stated in time, and memory stays constant
//!   whatever the call rate). Outcomes therefore expire in steps of one bucket: the counted span
//!   is between `window - window / RATE_BUCKETS` and `window`.
//!
//! Time is an input: every method takes `now` (a [`Duration`] since the caller's origin). The
//! open → half-open transition happens when time passes, so it is applied lazily by the next
//! call that takes `now` ([`CircuitBreaker::tick`] applies it explicitly); [`CircuitBreaker::state`]
//! already reports it.
//!
//! # Guarantees
//!
//! 1. **Open means no calls**: between opening at `t` and `t + cool_down` every `try_acquire`
//!    is rejected with [`Rejected::Open`]. Any probe failure reopens with a fresh cool-down.
//! 2. **Bounded probing**: in half-open, the number of permits issued and not yet returned is at
//!    most `half_open_max_probes`; returning one by any of the three methods frees its slot.
//! 3. **Stale results are ignored**: every transition starts a new generation and a permit
//!    remembers the generation that issued it. A result from an older generation (a slow call
//!    that started before the circuit opened, a probe still running when the circuit closed)
//!    changes nothing and reports [`Report::Stale`].
//! 4. **Permits are linear**: a [`Permit`] is neither `Clone` nor `Copy`, and reporting consumes
//!    it, so one call cannot be counted twice.
//! 5. **Monotone time**: a `now` earlier than one already seen is treated as the latest seen, so
//!    a clock that steps back can neither shorten nor lengthen a cool-down.
//! 6. **Observable**: [`CircuitBreaker::transitions`] counts transitions and
//!    [`CircuitBreaker::last_transition`] says what changed, when, and why.
//! 7. **Bounded memory**: O(1) regardless of call volume.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The number of time buckets in a [`TripPolicy::FailureRate`] window.
pub const RATE_BUCKETS: usize = 10;

/// When a closed breaker opens.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub enum TripPolicy {
    /// Open after this many failures in a row.
    ConsecutiveFailures(u32),
    /// Open when the failure fraction over a sliding time window reaches a threshold.
    FailureRate {
        /// The failure fraction, in `(0, 1]`, at or above which the breaker opens.
        threshold: f64,
        /// The minimum number of outcomes in the window before the rate is trusted.
        min_calls: u32,
        /// The length of the sliding window.
        window: Duration,
    },
}

/// The configuration of a [`CircuitBreaker`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BreakerConfig {
    /// When to open (default: 5 consecutive failures).
    pub trip_policy: TripPolicy,
    /// How long to stay open before probing (default 10 s).
    pub cool_down: Duration,
    /// The maximum number of concurrent probes while half-open (default 1).
    pub half_open_max_probes: u32,
    /// How many successful probes close the breaker (default 1).
    pub half_open_successes_to_close: u32,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            trip_policy: TripPolicy::ConsecutiveFailures(5),
            cool_down: Duration::from_secs(10),
            half_open_max_probes: 1,
            half_open_successes_to_close: 1,
        }
    }
}

/// Why a breaker configuration was rejected.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum BreakerConfigError {
    /// `ConsecutiveFailures(0)` would open before any call.
    #[error("consecutive failures to trip must be greater than zero")]
    ZeroConsecutiveFailures,
    /// The failure-rate threshold is not in `(0, 1]`.
    #[error("failure rate threshold must be in (0, 1], got {0}")]
    InvalidFailureRateThreshold(f64),
    /// `min_calls` is zero.
    #[error("failure rate min calls must be greater than zero")]
    ZeroMinCalls,
    /// The failure-rate window is shorter than one nanosecond per bucket.
    #[error("failure rate window must be at least {min:?}, got {got:?}")]
    WindowTooShort {
        /// The configured window.
        got: Duration,
        /// The shortest accepted window.
        min: Duration,
    },
    /// The cool-down is zero.
    #[error("cool-down must be greater than zero")]
    ZeroCoolDown,
    /// No probe could ever be admitted in half-open.
    #[error("half-open max probes must be greater than zero")]
    ZeroHalfOpenProbes,
    /// Half-open would close without any successful probe.
    #[error("half-open successes to close must be greater than zero")]
    ZeroSuccessesToClose,
}

impl BreakerConfig {
    /// Checks every field.
    pub fn validate(&self) -> Result<(), BreakerConfigError> {
        match self.trip_policy {
            TripPolicy::ConsecutiveFailures(0) => {
                return Err(BreakerConfigError::ZeroConsecutiveFailures)
            }
            TripPolicy::ConsecutiveFailures(_) => {}
            TripPolicy::FailureRate {
                threshold,
                min_calls,
                window,
            } => {
                if !(threshold > 0.0 && threshold <= 1.0) {
                    return Err(BreakerConfigError::InvalidFailureRateThreshold(threshold));
                }
                if min_calls == 0 {
                    return Err(BreakerConfigError::ZeroMinCalls);
                }
                let min = Duration::from_nanos(RATE_BUCKETS as u64);
                if window < min {
                    return Err(BreakerConfigError::WindowTooShort { got: window, min });
                }
            }
        }
        if self.cool_down.is_zero() {
            return Err(BreakerConfigError::ZeroCoolDown);
        }
        if self.half_open_max_probes == 0 {
            return Err(BreakerConfigError::ZeroHalfOpenProbes);
        }
        if self.half_open_successes_to_close == 0 {
            return Err(BreakerConfigError::ZeroSuccessesToClose);
        }
        Ok(())
    }
}

/// The externally visible state of a breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Calls flow.
    Closed,
    /// Calls are rejected until `until`.
    Open {
        /// When the cool-down ends.
        until: Duration,
    },
    /// A bounded number of probe calls decide whether to close or reopen.
    HalfOpen,
}

/// Why a transition happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransitionCause {
    /// `ConsecutiveFailures(n)` fired.
    ConsecutiveFailures,
    /// `FailureRate` fired.
    FailureRate,
    /// The cool-down elapsed.
    CoolDownElapsed,
    /// A half-open probe failed.
    ProbeFailed,
    /// Enough half-open probes succeeded.
    ProbesSucceeded,
}

/// One state change, for metrics and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    /// The state left.
    pub from: BreakerState,
    /// The state entered.
    pub to: BreakerState,
    /// When it happened.
    pub at: Duration,
    /// Why it happened.
    pub cause: TransitionCause,
    /// The generation that started with it.
    pub generation: u64,
}

/// Why [`CircuitBreaker::try_acquire`] refused a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Rejected {
    /// The breaker is open; calls resume (as probes) at `until`.
    #[error("circuit open until {until:?}")]
    Open {
        /// When the cool-down ends.
        until: Duration,
    },
    /// The breaker is half-open and all probe slots are taken.
    #[error("half-open probe limit of {max_probes} reached")]
    ProbeLimitReached {
        /// The configured `half_open_max_probes`.
        max_probes: u32,
    },
}

/// Whether a reported result changed the breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Report {
    /// The result belonged to the current generation and was applied.
    Applied,
    /// The permit came from an earlier generation; the result was ignored.
    Stale,
}

/// The right to make one call; give it back with `on_success`, `on_failure` or `on_cancel`.
#[derive(Debug, PartialEq, Eq)]
#[must_use = "report the call's outcome with on_success, on_failure or on_cancel"]
pub struct Permit {
    generation: u64,
    probe: bool,
}

impl Permit {
    /// The breaker generation that issued this permit.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Whether this permit is a half-open probe.
    pub fn is_probe(&self) -> bool {
        self.probe
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct Bucket {
    epoch: u128,
    successes: u64,
    failures: u64,
}

/// Outcomes over the last `window`, in [`RATE_BUCKETS`] buckets of equal width.
#[derive(Debug, Clone)]
struct RateWindow {
    bucket_width_nanos: u128,
    // Invariant: bucket i only holds outcomes of an epoch e with e % RATE_BUCKETS == i.
    buckets: [Bucket; RATE_BUCKETS],
}

impl RateWindow {
    fn new(window: Duration) -> Self {
        let bucket_width_nanos = window.as_nanos() / RATE_BUCKETS as u128;
        assert!(bucket_width_nanos > 0);
        Self {
            bucket_width_nanos,
            buckets: [Bucket::default(); RATE_BUCKETS],
        }
    }

    fn record(&mut self, now: Duration, failed: bool) {
        let epoch = now.as_nanos() / self.bucket_width_nanos;
        let bucket = &mut self.buckets[(epoch % RATE_BUCKETS as u128) as usize];
        if bucket.epoch != epoch {
            *bucket = Bucket {
                epoch,
                ..Bucket::default()
            };
        }
        if failed {
            bucket.failures = bucket.failures.saturating_add(1);
        } else {
            bucket.successes = bucket.successes.saturating_add(1);
        }
    }

    /// (calls, failures) in the buckets of the last `RATE_BUCKETS` epochs up to `now`.
    fn totals(&self, now: Duration) -> (u64, u64) {
        let current = now.as_nanos() / self.bucket_width_nanos;
        self.buckets
            .iter()
            .filter(|b| b.epoch <= current && b.epoch + RATE_BUCKETS as u128 > current)
            .fold((0u64, 0u64), |(calls, failures), b| {
                (
                    calls.saturating_add(b.successes).saturating_add(b.failures),
                    failures.saturating_add(b.failures),
                )
            })
    }
}

#[derive(Debug, Clone)]
enum State {
    Closed {
        consecutive_failures: u32,
        // Boxed: the buckets would make every state as large as this one.
        rate: Option<Box<RateWindow>>,
    },
    Open {
        until: Duration,
    },
    HalfOpen {
        // Invariant: probes_in_flight <= half_open_max_probes.
        probes_in_flight: u32,
        // Invariant: successes < half_open_successes_to_close.
        successes: u32,
    },
}

/// A circuit breaker. See the [module docs](self).
#[derive(Debug, Clone)]
pub struct CircuitBreaker {
    config: BreakerConfig,
    state: State,
    generation: u64,
    transitions: u64,
    last_transition: Option<Transition>,
    // Invariant: the largest `now` seen; never decreases.
    latest_now: Duration,
}

impl CircuitBreaker {
    /// Creates a closed breaker.
    pub fn new(config: BreakerConfig) -> Result<Self, BreakerConfigError> {
        config.validate()?;
        Ok(Self {
            state: Self::closed_state(&config),
            config,
            generation: 0,
            transitions: 0,
            last_transition: None,
            latest_now: Duration::ZERO,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &BreakerConfig {
        &self.config
    }

    /// Asks to make one call at `now`.
    pub fn try_acquire(&mut self, now: Duration) -> Result<Permit, Rejected> {
        self.tick(now);
        let generation = self.generation;
        match &mut self.state {
            State::Closed { .. } => Ok(Permit {
                generation,
                probe: false,
            }),
            State::Open { until } => Err(Rejected::Open { until: *until }),
            State::HalfOpen {
                probes_in_flight, ..
            } => {
                if *probes_in_flight >= self.config.half_open_max_probes {
                    return Err(Rejected::ProbeLimitReached {
                        max_probes: self.config.half_open_max_probes,
                    });
                }
                *probes_in_flight += 1;
                Ok(Permit {
                    generation,
                    probe: true,
                })
            }
        }
    }

    /// The call made under `permit` succeeded at `now`.
    pub fn on_success(&mut self, permit: Permit, now: Duration) -> Report {
        let now = self.tick(now);
        if !self.is_current(&permit) {
            return Report::Stale;
        }
        let to_close = self.config.half_open_successes_to_close;
        match &mut self.state {
            State::Closed {
                consecutive_failures,
                rate,
            } => {
                *consecutive_failures = 0;
                if let Some(rate) = rate {
                    rate.record(now, false);
                }
            }
            State::HalfOpen {
                probes_in_flight,
                successes,
            } => {
                assert!(*probes_in_flight > 0, "probe permit without a slot");
                *probes_in_flight -= 1;
                *successes += 1;
                if *successes >= to_close {
                    let closed = Self::closed_state(&self.config);
                    self.transition(closed, now, TransitionCause::ProbesSucceeded);
                }
            }
            State::Open { .. } => unreachable!("no permit is issued while open"),
        }
        Report::Applied
    }

    /// The call made under `permit` failed at `now`.
    pub fn on_failure(&mut self, permit: Permit, now: Duration) -> Report {
        let now = self.tick(now);
        if !self.is_current(&permit) {
            return Report::Stale;
        }
        let cause = match &mut self.state {
            State::Closed {
                consecutive_failures,
                rate,
            } => {
                *consecutive_failures = consecutive_failures.saturating_add(1);
                match (self.config.trip_policy, rate) {
                    (TripPolicy::ConsecutiveFailures(n), _) if *consecutive_failures >= n => {
                        Some(TransitionCause::ConsecutiveFailures)
                    }
                    (
                        TripPolicy::FailureRate {
                            threshold,
                            min_calls,
                            ..
                        },
                        Some(rate),
                    ) => {
                        rate.record(now, true);
                        let (calls, failures) = rate.totals(now);
                        let tripped = calls >= u64::from(min_calls)
                            && failures as f64 >= threshold * calls as f64;
                        tripped.then_some(TransitionCause::FailureRate)
                    }
                    _ => None,
                }
            }
            State::HalfOpen {
                probes_in_flight, ..
            } => {
                assert!(*probes_in_flight > 0, "probe permit without a slot");
                *probes_in_flight -= 1;
                Some(TransitionCause::ProbeFailed)
            }
            State::Open { .. } => unreachable!("no permit is issued while open"),
        };
        if let Some(cause) = cause {
            let until = now
                .checked_add(self.config.cool_down)
                .unwrap_or(Duration::MAX);
            self.transition(State::Open { until }, now, cause);
        }
        Report::Applied
    }

    /// The call made under `permit` was abandoned without an outcome: frees its probe slot and
    /// counts neither as success nor as failure.
    pub fn on_cancel(&mut self, permit: Permit) -> Report {
        if !self.is_current(&permit) {
            return Report::Stale;
        }
        if let State::HalfOpen {
            probes_in_flight, ..
        } = &mut self.state
        {
            assert!(*probes_in_flight > 0, "probe permit without a slot");
            *probes_in_flight -= 1;
        }
        Report::Applied
    }

    /// Applies the time-driven transition (open → half-open once the cool-down has elapsed) and
    /// returns the effective, monotone `now`.
    pub fn tick(&mut self, now: Duration) -> Duration {
        self.latest_now = self.latest_now.max(now);
        let now = self.latest_now;
        if let State::Open { until } = self.state {
            if now >= until {
                let half_open = State::HalfOpen {
                    probes_in_flight: 0,
                    successes: 0,
                };
                self.transition(half_open, now, TransitionCause::CoolDownElapsed);
            }
        }
        now
    }

    /// The state at `now`, including a cool-down that has elapsed but not yet been applied.
    pub fn state(&self, now: Duration) -> BreakerState {
        match Self::public_state(&self.state) {
            BreakerState::Open { until } if now.max(self.latest_now) >= until => {
                BreakerState::HalfOpen
            }
            state => state,
        }
    }

    /// The current generation; it increases by one at every transition.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// How many transitions have been applied.
    pub fn transitions(&self) -> u64 {
        self.transitions
    }

    /// The most recent transition.
    pub fn last_transition(&self) -> Option<Transition> {
        self.last_transition
    }

    /// The number of half-open probes issued and not yet returned (0 unless half-open).
    pub fn probes_in_flight(&self) -> u32 {
        match self.state {
            State::HalfOpen {
                probes_in_flight, ..
            } => probes_in_flight,
            _ => 0,
        }
    }

    fn is_current(&self, permit: &Permit) -> bool {
        if permit.generation != self.generation {
            return false;
        }
        // A permit of the current generation is a probe exactly when the breaker is half-open;
        // anything else means a permit from another breaker.
        let half_open = matches!(self.state, State::HalfOpen { .. });
        assert_eq!(permit.probe, half_open, "permit from another breaker");
        true
    }

    fn transition(&mut self, to: State, now: Duration, cause: TransitionCause) {
        let from = Self::public_state(&self.state);
        self.state = to;
        // Wrapping is harmless: 2^64 transitions cannot happen while an old permit is alive.
        self.generation = self.generation.wrapping_add(1);
        self.transitions = self.transitions.saturating_add(1);
        self.last_transition = Some(Transition {
            from,
            to: Self::public_state(&self.state),
            at: now,
            cause,
            generation: self.generation,
        });
    }

    fn closed_state(config: &BreakerConfig) -> State {
        State::Closed {
            consecutive_failures: 0,
            rate: match config.trip_policy {
                TripPolicy::FailureRate { window, .. } => Some(Box::new(RateWindow::new(window))),
                TripPolicy::ConsecutiveFailures(_) => None,
            },
        }
    }

    fn public_state(state: &State) -> BreakerState {
        match state {
            State::Closed { .. } => BreakerState::Closed,
            State::Open { until } => BreakerState::Open { until: *until },
            State::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }
}

#[cfg(test)]
mod tests;
