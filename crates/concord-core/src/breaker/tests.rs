use super::*;
use proptest::prelude::*;

fn ms(v: u64) -> Duration {
    Duration::from_millis(v)
}

fn consecutive(n: u32, probes: u32, successes: u32) -> CircuitBreaker {
    CircuitBreaker::new(BreakerConfig {
        trip_policy: TripPolicy::ConsecutiveFailures(n),
        cool_down: ms(1000),
        half_open_max_probes: probes,
        half_open_successes_to_close: successes,
    })
    .unwrap()
}

fn rate(threshold: f64, min_calls: u32, window_ms: u64) -> CircuitBreaker {
    CircuitBreaker::new(BreakerConfig {
        trip_policy: TripPolicy::FailureRate {
            threshold,
            min_calls,
            window: ms(window_ms),
        },
        cool_down: ms(1000),
        half_open_max_probes: 1,
        half_open_successes_to_close: 1,
    })
    .unwrap()
}

fn fail(b: &mut CircuitBreaker, now: Duration) -> Report {
    let permit = b.try_acquire(now).unwrap();
    b.on_failure(permit, now)
}

fn succeed(b: &mut CircuitBreaker, now: Duration) -> Report {
    let permit = b.try_acquire(now).unwrap();
    b.on_success(permit, now)
}

/// Opens `b` (a `consecutive(3, ..)` breaker) at `now`.
fn open(b: &mut CircuitBreaker, now: Duration) {
    for _ in 0..3 {
        fail(b, now);
    }
    assert_eq!(
        b.state(now),
        BreakerState::Open {
            until: now + ms(1000)
        }
    );
}

#[test]
fn config_validation_names_the_bad_field() {
    let ok = BreakerConfig::default();
    assert_eq!(ok.validate(), Ok(()));
    let cases = [
        (
            BreakerConfig {
                trip_policy: TripPolicy::ConsecutiveFailures(0),
                ..ok
            },
            BreakerConfigError::ZeroConsecutiveFailures,
        ),
        (
            BreakerConfig {
                cool_down: Duration::ZERO,
                ..ok
            },
            BreakerConfigError::ZeroCoolDown,
        ),
        (
            BreakerConfig {
                half_open_max_probes: 0,
                ..ok
            },
            BreakerConfigError::ZeroHalfOpenProbes,
        ),
        (
            BreakerConfig {
                half_open_successes_to_close: 0,
                ..ok
            },
            BreakerConfigError::ZeroSuccessesToClose,
        ),
        (
            BreakerConfig {
                trip_policy: TripPolicy::FailureRate {
                    threshold: 0.5,
                    min_calls: 0,
                    window: ms(100),
                },
                ..ok
            },
            BreakerConfigError::ZeroMinCalls,
        ),
        (
            BreakerConfig {
                trip_policy: TripPolicy::FailureRate {
                    threshold: 0.5,
                    min_calls: 1,
                    window: Duration::from_nanos(9),
                },
                ..ok
            },
            BreakerConfigError::WindowTooShort {
                got: Duration::from_nanos(9),
                min: Duration::from_nanos(10),
            },
        ),
    ];
    for (config, expected) in cases {
        assert_eq!(CircuitBreaker::new(config).unwrap_err(), expected);
    }
    for threshold in [0.0, 1.5, f64::NAN] {
        let config = BreakerConfig {
            trip_policy: TripPolicy::FailureRate {
                threshold,
                min_calls: 1,
                window: ms(100),
            },
            ..ok
        };
        assert!(matches!(
            config.validate(),
            Err(BreakerConfigError::InvalidFailureRateThreshold(_))
        ));
    }
}

#[test]
fn config_roundtrips_through_serde() {
    for trip_policy in [
        TripPolicy::ConsecutiveFailures(3),
        TripPolicy::FailureRate {
            threshold: 0.25,
            min_calls: 20,
            window: ms(60_000),
        },
    ] {
        let config = BreakerConfig {
            trip_policy,
            ..BreakerConfig::default()
        };
        let json = serde_json::to_string(&config).unwrap();
        let back: BreakerConfig = serde_json::from_str(&json).unwrap();
        assert_eq!(back, config);
    }
}

#[test]
fn consecutive_failures_open_the_circuit() {
    let mut b = consecutive(3, 1, 1);
    fail(&mut b, ms(0));
    fail(&mut b, ms(1));
    assert_eq!(b.state(ms(1)), BreakerState::Closed);
    assert_eq!(b.transitions(), 0);
    fail(&mut b, ms(2));
    assert_eq!(b.state(ms(2)), BreakerState::Open { until: ms(1002) });
    assert_eq!(b.transitions(), 1);
    let t = b.last_transition().unwrap();
    assert_eq!(t.from, BreakerState::Closed);
    assert_eq!(t.to, BreakerState::Open { until: ms(1002) });
    assert_eq!(t.cause, TransitionCause::ConsecutiveFailures);
    assert_eq!(t.at, ms(2));
}

#[test]
fn success_resets_the_consecutive_count() {
    let mut b = consecutive(3, 1, 1);
    for round in 0..5 {
        fail(&mut b, ms(round));
        fail(&mut b, ms(round));
        succeed(&mut b, ms(round));
    }
    assert_eq!(b.state(ms(10)), BreakerState::Closed);
    fail(&mut b, ms(10));
    fail(&mut b, ms(10));
    fail(&mut b, ms(10));
    assert!(matches!(b.state(ms(10)), BreakerState::Open { .. }));
}

#[test]
fn failure_rate_trips_only_after_min_calls() {
    let mut b = rate(0.5, 10, 10_000);
    for i in 0..9 {
        fail(&mut b, ms(i));
        assert_eq!(
            b.state(ms(i)),
            BreakerState::Closed,
            "after {} calls",
            i + 1
        );
    }
    fail(&mut b, ms(9));
    assert_eq!(b.state(ms(9)), BreakerState::Open { until: ms(1009) });
    assert_eq!(
        b.last_transition().unwrap().cause,
        TransitionCause::FailureRate
    );
}

#[test]
fn failure_rate_below_threshold_stays_closed() {
    let mut b = rate(0.5, 10, 10_000);
    // 2 successes per failure: 33 % < 50 %, and no streak matters under this policy.
    for i in 0..30 {
        if i % 3 == 0 {
            fail(&mut b, ms(i));
        } else {
            succeed(&mut b, ms(i));
        }
    }
    assert_eq!(b.state(ms(30)), BreakerState::Closed);
    // 6 more failures in a row: 16 failures of 36 calls, still below half...
    for i in 0..6 {
        fail(&mut b, ms(40 + i));
    }
    assert_eq!(b.state(ms(46)), BreakerState::Closed);
    // ... until failures reach half of the calls (20 of 40).
    for i in 0..3 {
        fail(&mut b, ms(50 + i));
        assert_eq!(b.state(ms(50 + i)), BreakerState::Closed);
    }
    fail(&mut b, ms(60));
    assert!(matches!(b.state(ms(60)), BreakerState::Open { .. }));
}

#[test]
fn failure_rate_window_forgets_old_outcomes() {
    // 1 s window in 100 ms buckets.
    let mut b = rate(0.5, 4, 1000);
    for i in 0..3 {
        fail(&mut b, ms(i));
    }
    // 1.5 s later the three failures have left the window: three more are not enough.
    for i in 0..3 {
        fail(&mut b, ms(1500 + i));
    }
    assert_eq!(b.state(ms(1503)), BreakerState::Closed);
    // Within the window the fourth failure trips.
    fail(&mut b, ms(1600));
    assert!(matches!(b.state(ms(1600)), BreakerState::Open { .. }));
}

#[test]
fn open_rejects_until_the_cool_down_elapses() {
    let mut b = consecutive(3, 1, 1);
    open(&mut b, ms(100));
    for t in [100, 500, 1099] {
        assert_eq!(
            b.try_acquire(ms(t)),
            Err(Rejected::Open { until: ms(1100) })
        );
    }
    assert_eq!(
        Rejected::Open { until: ms(1100) }.to_string(),
        "circuit open until 1.1s"
    );
    assert_eq!(b.transitions(), 1);
    let permit = b.try_acquire(ms(1100)).unwrap();
    assert!(permit.is_probe());
    assert_eq!(b.on_cancel(permit), Report::Applied);
}

#[test]
fn open_becomes_half_open_after_the_cool_down() {
    let mut b = consecutive(3, 1, 1);
    open(&mut b, ms(0));
    // state() reports the elapsed cool-down before anything applies it.
    assert_eq!(b.state(ms(1000)), BreakerState::HalfOpen);
    assert_eq!(b.transitions(), 1);
    b.tick(ms(1000));
    assert_eq!(b.transitions(), 2);
    let t = b.last_transition().unwrap();
    assert_eq!(t.from, BreakerState::Open { until: ms(1000) });
    assert_eq!(t.to, BreakerState::HalfOpen);
    assert_eq!(t.cause, TransitionCause::CoolDownElapsed);
    assert_eq!(t.generation, b.generation());
}

#[test]
fn half_open_admits_at_most_max_probes() {
    let mut b = consecutive(3, 2, 5);
    open(&mut b, ms(0));
    let first = b.try_acquire(ms(1000)).unwrap();
    let second = b.try_acquire(ms(1001)).unwrap();
    assert_eq!(b.probes_in_flight(), 2);
    for t in [1002, 1500, 9000] {
        assert_eq!(
            b.try_acquire(ms(t)),
            Err(Rejected::ProbeLimitReached { max_probes: 2 })
        );
    }
    assert_eq!(b.probes_in_flight(), 2);
    assert_eq!(b.state(ms(9000)), BreakerState::HalfOpen);
    assert_eq!(b.on_cancel(first), Report::Applied);
    assert_eq!(b.on_cancel(second), Report::Applied);
}

#[test]
fn returning_a_probe_frees_its_slot() {
    // success: with 3 successes needed, one success keeps the breaker half-open.
    let mut b = consecutive(3, 1, 3);
    open(&mut b, ms(0));
    let p = b.try_acquire(ms(1000)).unwrap();
    assert!(b.try_acquire(ms(1000)).is_err());
    b.on_success(p, ms(1001));
    assert_eq!(b.state(ms(1001)), BreakerState::HalfOpen);
    let p = b.try_acquire(ms(1001)).unwrap();
    // cancel: neither success nor failure, the slot is free again.
    assert_eq!(b.on_cancel(p), Report::Applied);
    assert_eq!(b.probes_in_flight(), 0);
    assert_eq!(b.state(ms(1002)), BreakerState::HalfOpen);
    let p = b.try_acquire(ms(1002)).unwrap();
    // failure: frees the slot by reopening; the next half-open starts with all slots free.
    b.on_failure(p, ms(1003));
    assert_eq!(b.probes_in_flight(), 0);
    let p = b.try_acquire(ms(2003)).unwrap();
    assert_eq!(b.probes_in_flight(), 1);
    b.on_success(p, ms(2004));
}

#[test]
fn half_open_closes_after_enough_successes() {
    let mut b = consecutive(3, 2, 3);
    open(&mut b, ms(0));
    let p1 = b.try_acquire(ms(1000)).unwrap();
    let p2 = b.try_acquire(ms(1000)).unwrap();
    b.on_success(p1, ms(1001));
    b.on_success(p2, ms(1002));
    assert_eq!(b.state(ms(1002)), BreakerState::HalfOpen);
    let p3 = b.try_acquire(ms(1003)).unwrap();
    assert_eq!(b.on_success(p3, ms(1004)), Report::Applied);
    assert_eq!(b.state(ms(1004)), BreakerState::Closed);
    let t = b.last_transition().unwrap();
    assert_eq!(t.cause, TransitionCause::ProbesSucceeded);
    assert_eq!(t.to, BreakerState::Closed);
    assert_eq!(b.transitions(), 3);
    // Closed again with a fresh failure count: two failures do not trip.
    fail(&mut b, ms(1005));
    fail(&mut b, ms(1005));
    assert_eq!(b.state(ms(1005)), BreakerState::Closed);
}

#[test]
fn a_failed_probe_reopens_and_restarts_the_cool_down() {
    let mut b = consecutive(3, 2, 2);
    open(&mut b, ms(0));
    let p1 = b.try_acquire(ms(1500)).unwrap();
    let p2 = b.try_acquire(ms(1500)).unwrap();
    b.on_success(p1, ms(1600));
    assert_eq!(b.on_failure(p2, ms(1700)), Report::Applied);
    assert_eq!(b.state(ms(1700)), BreakerState::Open { until: ms(2700) });
    assert_eq!(
        b.last_transition().unwrap().cause,
        TransitionCause::ProbeFailed
    );
    assert_eq!(
        b.try_acquire(ms(2699)),
        Err(Rejected::Open { until: ms(2700) })
    );
    assert!(b.try_acquire(ms(2700)).unwrap().is_probe());
}

#[test]
fn stale_permits_are_ignored() {
    let mut b = consecutive(3, 2, 1);
    // A slow call that started while closed...
    let slow = b.try_acquire(ms(0)).unwrap();
    let slow_too = b.try_acquire(ms(0)).unwrap();
    open(&mut b, ms(10));
    // ...and fails after the breaker opened: no effect on the open state.
    assert_eq!(b.on_failure(slow, ms(20)), Report::Stale);
    assert_eq!(b.state(ms(20)), BreakerState::Open { until: ms(1010) });
    // Two probes; the first success closes, the second probe is now stale.
    let p1 = b.try_acquire(ms(1010)).unwrap();
    let p2 = b.try_acquire(ms(1010)).unwrap();
    assert_eq!(p1.generation(), b.generation());
    b.on_success(p1, ms(1011));
    assert_eq!(b.state(ms(1011)), BreakerState::Closed);
    let generation = b.generation();
    assert_eq!(b.on_failure(p2, ms(1012)), Report::Stale);
    assert_eq!(b.on_success(slow_too, ms(1012)), Report::Stale);
    assert_eq!(b.generation(), generation);
    // The stale failure did not count towards the new closed state's streak.
    fail(&mut b, ms(1013));
    fail(&mut b, ms(1013));
    assert_eq!(b.state(ms(1013)), BreakerState::Closed);
    // A stale cancel in a later half-open does not free anyone's slot.
    let old = b.try_acquire(ms(1014)).unwrap();
    fail(&mut b, ms(1014));
    let probe = b.try_acquire(ms(2014)).unwrap();
    let other = b.try_acquire(ms(2014)).unwrap();
    assert_eq!(b.on_cancel(old), Report::Stale);
    assert_eq!(b.probes_in_flight(), 2);
    assert!(b.try_acquire(ms(2014)).is_err());
    b.on_cancel(probe);
    b.on_cancel(other);
}

#[test]
fn a_clock_stepping_back_does_not_shorten_or_extend_the_cool_down() {
    let mut b = consecutive(3, 1, 1);
    open(&mut b, ms(5000));
    // A reading from before the opening does not matter: still open until 6000.
    assert_eq!(
        b.try_acquire(ms(100)),
        Err(Rejected::Open { until: ms(6000) })
    );
    b.tick(ms(6000));
    assert_eq!(b.state(ms(0)), BreakerState::HalfOpen);
    assert!(b.try_acquire(ms(0)).is_ok());
}

#[derive(Debug, Clone)]
enum Op {
    Acquire,
    Succeed(usize),
    Fail(usize),
    Cancel(usize),
    Advance(u64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => Just(Op::Acquire),
        2 => any::<usize>().prop_map(Op::Succeed),
        2 => any::<usize>().prop_map(Op::Fail),
        1 => any::<usize>().prop_map(Op::Cancel),
        2 => (0u64..700).prop_map(Op::Advance),
    ]
}

fn policy() -> impl Strategy<Value = TripPolicy> {
    prop_oneof![
        (1u32..4).prop_map(TripPolicy::ConsecutiveFailures),
        (0.1f64..=1.0, 1u32..6, 100u64..3000).prop_map(|(threshold, min_calls, w)| {
            TripPolicy::FailureRate {
                threshold,
                min_calls,
                window: ms(w),
            }
        }),
    ]
}

proptest! {
    // Random interleavings of acquires, outcomes (of any held permit, stale or not) and time:
    // half-open never has more than `half_open_max_probes` live probes (counted from the
    // permits the test holds), and no call is admitted while open before the cool-down ends
    // (checked against the transition log, not the breaker's own state).
    #[test]
    fn random_calls_respect_the_probe_limit_and_the_cool_down(
        trip_policy in policy(),
        max_probes in 1u32..4,
        successes_to_close in 1u32..4,
        ops in proptest::collection::vec(op(), 1..300),
    ) {
        let config = BreakerConfig {
            trip_policy,
            cool_down: ms(1000),
            half_open_max_probes: max_probes,
            half_open_successes_to_close: successes_to_close,
        };
        let mut b = CircuitBreaker::new(config).unwrap();
        let mut held: Vec<Permit> = Vec::new();
        let mut now = Duration::ZERO;
        let mut seen_transitions = 0;
        let mut open_until: Option<Duration> = None;
        for op in ops {
            match op {
                Op::Acquire => match b.try_acquire(now) {
                    Ok(permit) => {
                        if let Some(until) = open_until {
                            prop_assert!(now >= until, "admitted at {now:?}, open until {until:?}");
                        }
                        held.push(permit);
                    }
                    Err(Rejected::Open { until }) => prop_assert!(now < until),
                    Err(Rejected::ProbeLimitReached { max_probes: m }) => {
                        prop_assert_eq!(m, max_probes);
                        prop_assert_eq!(b.state(now), BreakerState::HalfOpen);
                    }
                },
                Op::Succeed(i) | Op::Fail(i) | Op::Cancel(i) if !held.is_empty() => {
                    let permit = held.swap_remove(i % held.len());
                    let stale = permit.generation() != b.generation();
                    let report = match op {
                        Op::Succeed(_) => b.on_success(permit, now),
                        Op::Fail(_) => b.on_failure(permit, now),
                        _ => b.on_cancel(permit),
                    };
                    // tick() inside on_* may start a new generation first, so a permit that
                    // was current can become stale, never the other way round.
                    if stale {
                        prop_assert_eq!(report, Report::Stale);
                    }
                }
                Op::Advance(d) => now += ms(d),
                _ => {}
            }
            if b.transitions() != seen_transitions {
                seen_transitions = b.transitions();
                let t = b.last_transition().unwrap();
                open_until = match t.to {
                    BreakerState::Open { until } => {
                        prop_assert_eq!(until, t.at + ms(1000));
                        Some(until)
                    }
                    _ => None,
                };
            }
            if b.state(now) == BreakerState::HalfOpen && open_until.is_none() {
                let live_probes = held
                    .iter()
                    .filter(|p| p.is_probe() && p.generation() == b.generation())
                    .count();
                prop_assert!(live_probes <= max_probes as usize);
                prop_assert_eq!(live_probes, b.probes_in_flight() as usize);
            }
        }
    }
}
