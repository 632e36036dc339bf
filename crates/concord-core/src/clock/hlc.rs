//! Hybrid logical clock (Kulkarni, Demirbas, Madeppa, Avva, Leone: "Logical Physical Clocks
//! and Consistent Snapshots in Globally Distributed Databases", 2014).
//!
//! A timestamp is a physical part (milliseconds since the Unix epoch, as the runtime reads
//! it from the system clock) and a logical counter that orders events within one
//! millisecond and absorbs the clock going backwards. The physical part never falls behind
//! the largest physical time seen (local or remote), so timestamps stay close to real time
//! and comparable across nodes, while the order is still consistent with causality.
//!
//! The physical time is an *argument* of [`Hlc::now`] and [`Hlc::update`]: the clock itself
//! never reads the system clock.
//!
//! # Packing
//!
//! [`Timestamp::pack`] gives `physical << 16 | logical` in a `u64` (48 bits of milliseconds
//! last until the year 10889; 16 bits allow 65,535 events per millisecond). Because the
//! physical part is in the high bits, packed values sort exactly like timestamps, so they can
//! be used as MVCC revisions or ballots. When the logical counter would overflow, the clock
//! borrows one millisecond from the future instead (the physical part is advanced by one and
//! the counter restarts): monotonicity wins over closeness to real time, by at most 1 ms per
//! 65,536 events in one millisecond.

use serde::{Deserialize, Serialize};

/// Largest physical time (in milliseconds) that fits the packed format.
pub const MAX_PHYSICAL_MS: u64 = (1 << 48) - 1;

/// A hybrid logical timestamp. Orders by physical time, then by the logical counter.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Timestamp {
    /// Milliseconds since the Unix epoch (at most [`MAX_PHYSICAL_MS`]).
    pub physical_ms: u64,
    /// Events within the same physical millisecond.
    pub logical: u16,
}

impl Timestamp {
    /// The timestamp `(physical_ms, logical)`; the physical part is clamped to
    /// [`MAX_PHYSICAL_MS`].
    pub fn new(physical_ms: u64, logical: u16) -> Self {
        Self {
            physical_ms: physical_ms.min(MAX_PHYSICAL_MS),
            logical,
        }
    }

    /// Packs into a `u64` that sorts like the timestamp.
    pub fn pack(self) -> u64 {
        (self.physical_ms << 16) | u64::from(self.logical)
    }

    /// Inverse of [`Timestamp::pack`]. Every `u64` is a valid packed timestamp.
    pub fn unpack(packed: u64) -> Self {
        Self {
            physical_ms: packed >> 16,
            logical: (packed & 0xffff) as u16,
        }
    }

    /// The next timestamp after `self` with the given physical time: strictly greater.
    fn successor(self) -> Self {
        match self.logical.checked_add(1) {
            Some(logical) => Self {
                physical_ms: self.physical_ms,
                logical,
            },
            None => Self {
                // At MAX_PHYSICAL_MS there is nothing left to borrow: saturate (10889 AD).
                physical_ms: (self.physical_ms + 1).min(MAX_PHYSICAL_MS),
                logical: 0,
            },
        }
    }
}

impl std::fmt::Display for Timestamp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.physical_ms, self.logical)
    }
}

/// Errors of [`Hlc::update`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HlcError {
    /// The remote timestamp is further ahead of local physical time than the configured
    /// maximum clock offset allows: one of the two clocks is wrong, and accepting it would
    /// drag this node's clock into the future.
    #[error(
        "remote timestamp {remote} is {ahead_ms} ms ahead of local physical time {local_physical_ms}, more than the maximum offset of {max_offset_ms} ms"
    )]
    ClockOffsetExceeded {
        /// The rejected remote timestamp.
        remote: Timestamp,
        /// The local physical time passed in.
        local_physical_ms: u64,
        /// How far ahead the remote physical time is.
        ahead_ms: u64,
        /// The configured bound.
        max_offset_ms: u64,
    },
}

/// A hybrid logical clock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hlc {
    // Invariant: `last` never decreases.
    last: Timestamp,
    max_offset_ms: u64,
}

impl Hlc {
    /// A clock that rejects remote timestamps more than `max_offset_ms` ahead of local
    /// physical time (CockroachDB's default is 500 ms).
    pub fn new(max_offset_ms: u64) -> Self {
        Self {
            last: Timestamp::default(),
            max_offset_ms,
        }
    }

    /// A clock resumed after a restart from the largest timestamp it may have issued, so it
    /// never re-issues one even if the physical clock went back while it was down.
    pub fn resume(last: Timestamp, max_offset_ms: u64) -> Self {
        Self {
            last,
            max_offset_ms,
        }
    }

    /// The last timestamp issued or observed.
    pub fn last(&self) -> Timestamp {
        self.last
    }

    /// The configured maximum offset.
    pub fn max_offset_ms(&self) -> u64 {
        self.max_offset_ms
    }

    /// A timestamp for a local or send event, given the current physical time. Strictly
    /// greater than every timestamp this clock returned or observed before.
    pub fn now(&mut self, physical_ms: u64) -> Timestamp {
        let physical_ms = physical_ms.min(MAX_PHYSICAL_MS);
        self.last = if physical_ms > self.last.physical_ms {
            Timestamp::new(physical_ms, 0)
        } else {
            self.last.successor()
        };
        self.last
    }

    /// A timestamp for receiving `remote`, given the current physical time. Strictly greater
    /// than `remote` and than every timestamp this clock returned before.
    ///
    /// Fails, leaving the clock unchanged, if `remote` is more than the maximum offset ahead
    /// of `physical_ms`.
    pub fn update(&mut self, remote: Timestamp, physical_ms: u64) -> Result<Timestamp, HlcError> {
        let physical_ms = physical_ms.min(MAX_PHYSICAL_MS);
        let ahead_ms = remote.physical_ms.saturating_sub(physical_ms);
        if ahead_ms > self.max_offset_ms {
            return Err(HlcError::ClockOffsetExceeded {
                remote,
                local_physical_ms: physical_ms,
                ahead_ms,
                max_offset_ms: self.max_offset_ms,
            });
        }
        let latest = self.last.max(remote);
        self.last = if physical_ms > latest.physical_ms {
            Timestamp::new(physical_ms, 0)
        } else {
            latest.successor()
        };
        Ok(self.last)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn follows_physical_time_when_it_advances() {
        let mut c = Hlc::new(500);
        assert_eq!(c.now(100), Timestamp::new(100, 0));
        assert_eq!(c.now(100), Timestamp::new(100, 1));
        assert_eq!(c.now(105), Timestamp::new(105, 0));
    }

    #[test]
    fn physical_clock_going_back_does_not_move_the_clock_back() {
        let mut c = Hlc::new(500);
        c.now(1_000);
        assert_eq!(c.now(400), Timestamp::new(1_000, 1));
        assert_eq!(c.now(999), Timestamp::new(1_000, 2));
    }

    #[test]
    fn update_takes_the_max_of_local_remote_and_physical() {
        let mut c = Hlc::new(500);
        c.now(100);
        // Remote ahead (within the offset): adopt its physical part, bump its counter.
        assert_eq!(
            c.update(Timestamp::new(300, 7), 200),
            Ok(Timestamp::new(300, 8))
        );
        // Physical time ahead of both: counter restarts.
        assert_eq!(
            c.update(Timestamp::new(250, 9), 400),
            Ok(Timestamp::new(400, 0))
        );
        // Same physical part everywhere: max counter + 1.
        assert_eq!(
            c.update(Timestamp::new(400, 5), 400),
            Ok(Timestamp::new(400, 6))
        );
    }

    #[test]
    fn rejects_remote_beyond_max_offset_and_stays_unchanged() {
        let mut c = Hlc::new(500);
        c.now(1_000);
        let before = c.clone();
        let err = c.update(Timestamp::new(1_501, 0), 1_000).unwrap_err();
        assert_eq!(
            err,
            HlcError::ClockOffsetExceeded {
                remote: Timestamp::new(1_501, 0),
                local_physical_ms: 1_000,
                ahead_ms: 501,
                max_offset_ms: 500,
            }
        );
        assert_eq!(c, before);
        // Exactly at the bound is accepted.
        assert!(c.update(Timestamp::new(1_500, 0), 1_000).is_ok());
    }

    #[test]
    fn logical_overflow_borrows_a_millisecond() {
        let mut c = Hlc::resume(Timestamp::new(10, u16::MAX), 500);
        assert_eq!(c.now(10), Timestamp::new(11, 0));
    }

    #[test]
    fn pack_round_trips() {
        let t = Timestamp::new(1_700_000_000_000, 42);
        assert_eq!(Timestamp::unpack(t.pack()), t);
        assert_eq!(
            Timestamp::unpack(u64::MAX),
            Timestamp::new(MAX_PHYSICAL_MS, u16::MAX)
        );
    }

    #[derive(Debug, Clone)]
    enum Event {
        Local { physical_ms: u64 },
        Receive { remote: Timestamp, physical_ms: u64 },
    }

    fn arb_event() -> impl Strategy<Value = Event> {
        // Physical time jumps around (including backwards) over a small range, so logical
        // counters and rejections both happen.
        prop_oneof![
            (0u64..2_000).prop_map(|physical_ms| Event::Local { physical_ms }),
            (0u64..3_000, any::<u16>(), 0u64..2_000).prop_map(|(p, l, physical_ms)| {
                Event::Receive {
                    remote: Timestamp::new(p, l % 8),
                    physical_ms,
                }
            }),
        ]
    }

    proptest! {
        #[test]
        fn monotonic_and_bounded(events in proptest::collection::vec(arb_event(), 1..300)) {
            let max_offset_ms = 250;
            let mut c = Hlc::new(max_offset_ms);
            let mut last = Timestamp::default();
            let mut max_physical_seen = 0;
            for e in events {
                match e {
                    Event::Local { physical_ms } => {
                        let t = c.now(physical_ms);
                        prop_assert!(t > last);
                        max_physical_seen = max_physical_seen.max(physical_ms);
                        last = t;
                    }
                    Event::Receive { remote, physical_ms } => {
                        let before = c.clone();
                        match c.update(remote, physical_ms) {
                            Ok(t) => {
                                prop_assert!(t > last);
                                prop_assert!(t > remote);
                                prop_assert!(remote.physical_ms <= physical_ms + max_offset_ms);
                                max_physical_seen = max_physical_seen.max(physical_ms).max(remote.physical_ms);
                                last = t;
                            }
                            Err(HlcError::ClockOffsetExceeded { .. }) => {
                                prop_assert!(remote.physical_ms > physical_ms + max_offset_ms);
                                prop_assert_eq!(&c, &before);
                            }
                        }
                    }
                }
                // The physical part is exactly the largest physical time seen (no overflow
                // borrowing here: fewer than 65,536 events), so it stays close to real time.
                prop_assert_eq!(last.physical_ms, max_physical_seen);
            }
        }

        #[test]
        fn packed_order_equals_timestamp_order(
            a in (0u64..=MAX_PHYSICAL_MS, any::<u16>()),
            b in (0u64..=MAX_PHYSICAL_MS, any::<u16>()),
        ) {
            let (a, b) = (Timestamp::new(a.0, a.1), Timestamp::new(b.0, b.1));
            prop_assert_eq!(a.cmp(&b), a.pack().cmp(&b.pack()));
            prop_assert_eq!(Timestamp::unpack(a.pack()), a);
        }
    }
}
