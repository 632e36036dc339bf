//! The node's clock: a hybrid logical clock ([`concord_core::clock::Hlc`]) shared by every
//! part of a node, fed by a physical clock the runtime chooses (the system clock in a
//! server, a manual one in simulations). The HLC itself never reads time; this service
//! does, which keeps the sans-I/O line where it is.
//!
//! # Guarantees
//!
//! 1. [`NodeClock::now`] is strictly increasing across every caller of one clock, threads
//!    included, even when the physical clock goes backwards.
//! 2. [`NodeClock::observe`] of a timestamp received from a peer returns a timestamp
//!    greater than it (causality), unless the peer is further ahead than the maximum
//!    offset, which is refused and leaves the clock unchanged.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use concord_core::clock::{Hlc, HlcError, Timestamp};

/// Where physical time comes from, in milliseconds since the Unix epoch.
pub trait PhysicalClock: Send + Sync + 'static {
    /// The current physical time.
    fn now_ms(&self) -> u64;
}

/// The operating system's wall clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl PhysicalClock for SystemClock {
    fn now_ms(&self) -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64)
    }
}

/// The system clock read with an offset that can be changed while it runs: how the chaos
/// harness puts a member's clock ahead of or behind the others (within the maximum offset
/// the HLC tolerates) without touching the machine's clock. Offset 0 reads the system
/// clock unchanged.
#[derive(Debug, Default)]
pub struct OffsetClock(std::sync::atomic::AtomicI64);

impl OffsetClock {
    /// Reads `ms` ahead of the system clock from now on (negative: behind).
    pub fn set_offset(&self, ms: i64) {
        self.0.store(ms, Ordering::SeqCst);
    }

    /// The offset in force.
    pub fn offset(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }
}

impl PhysicalClock for OffsetClock {
    fn now_ms(&self) -> u64 {
        SystemClock.now_ms().saturating_add_signed(self.offset())
    }
}

/// A physical clock that moves only when told to (tests and simulations).
#[derive(Debug, Default)]
pub struct ManualClock(AtomicU64);

impl ManualClock {
    /// A clock reading `ms`.
    pub fn new(ms: u64) -> Self {
        Self(AtomicU64::new(ms))
    }

    /// Sets the reading (it may go backwards, as a real clock may after an NTP step).
    pub fn set(&self, ms: u64) {
        self.0.store(ms, Ordering::SeqCst);
    }
}

impl PhysicalClock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// A node's hybrid logical clock service. Cheap to clone; clones share the clock.
#[derive(Clone)]
pub struct NodeClock {
    hlc: Arc<Mutex<Hlc>>,
    physical: Arc<dyn PhysicalClock>,
}

impl std::fmt::Debug for NodeClock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeClock")
            .field("last", &self.last())
            .finish_non_exhaustive()
    }
}

impl NodeClock {
    /// A clock over `physical` that refuses peers more than `max_offset_ms` ahead.
    pub fn new(physical: Arc<dyn PhysicalClock>, max_offset_ms: u64) -> Self {
        Self {
            hlc: Arc::new(Mutex::new(Hlc::new(max_offset_ms))),
            physical,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Hlc> {
        // The clock's state is one timestamp, consistent at any panic point.
        self.hlc.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A timestamp for a local or send event.
    pub fn now(&self) -> Timestamp {
        let physical = self.physical.now_ms();
        self.lock().now(physical)
    }

    /// A timestamp for receiving `remote` from a peer.
    pub fn observe(&self, remote: Timestamp) -> Result<Timestamp, HlcError> {
        let physical = self.physical.now_ms();
        self.lock().update(remote, physical)
    }

    /// The last timestamp issued or observed.
    pub fn last(&self) -> Timestamp {
        self.lock().last()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_offset_clock_reads_the_system_clock_shifted() {
        let c = OffsetClock::default();
        let before = SystemClock.now_ms();
        assert!((before..before + 1_000).contains(&c.now_ms()));
        c.set_offset(-60_000);
        let behind = c.now_ms();
        assert!(behind + 59_000 <= SystemClock.now_ms() && behind + 61_000 >= before);
        c.set_offset(60_000);
        assert!(c.now_ms() >= before + 60_000);
    }

    #[test]
    fn strictly_increasing_across_threads_and_backward_steps() {
        let physical = Arc::new(ManualClock::new(1_000));
        let clock = NodeClock::new(physical.clone(), 500);
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let c = clock.clone();
                std::thread::spawn(move || (0..1_000).map(|_| c.now()).collect::<Vec<_>>())
            })
            .collect();
        physical.set(400);
        let mut all = Vec::new();
        for t in threads {
            let mine = t.join().unwrap();
            assert!(mine.windows(2).all(|w| w[0] < w[1]), "one caller went back");
            all.extend(mine);
        }
        all.sort();
        all.dedup();
        assert_eq!(all.len(), 4_000, "a timestamp was issued twice");
        assert!(clock.now() > *all.last().unwrap());
    }

    #[test]
    fn observing_a_peer_orders_after_it_within_the_offset() {
        let physical = Arc::new(ManualClock::new(10_000));
        let clock = NodeClock::new(physical, 500);
        let remote = Timestamp::new(10_300, 7);
        let t = clock.observe(remote).unwrap();
        assert!(t > remote);
        assert!(clock.now() > t);
        let before = clock.last();
        let too_far = Timestamp::new(20_000, 0);
        assert!(clock.observe(too_far).is_err());
        assert_eq!(clock.last(), before, "a refused timestamp moved the clock");
    }

    #[test]
    fn the_system_clock_reads_the_present() {
        // After 2020-01-01 and before 2200: a sanity check of the unit, not of the time.
        let ms = SystemClock.now_ms();
        assert!(ms > 1_577_836_800_000 && ms < 7_258_118_400_000, "{ms}");
    }
}
