//! A member's online defragment (`Maintenance.Defragment`): the store is copied into a
//! compact file while it keeps applying and serving; reads and applies wait only for the
//! switch (see `concord_storage::defrag`). The figures of each run go to `/metrics`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use concord_storage::defrag::Defrag;
use concord_storage::disk::Disk;
use concord_storage::errors::{SnapshotError, StoreError};

use super::NodeHandle;
use crate::error::KvError;

/// Catch-up rounds before the switch; each applies what arrived during the previous one.
const MAX_ROUNDS: usize = 16;
/// Left to apply at which the switch is made.
const SWITCH_AT: usize = 256;

/// What one defragment did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DefragReport {
    /// How long reads and applies waited: the switch to the new file.
    pub pause: Duration,
    /// The whole run.
    pub total: Duration,
    /// Commands applied during the copy and replayed into it.
    pub caught_up: u64,
    /// File size before and after.
    pub bytes_before: u64,
    /// File size after.
    pub bytes_after: u64,
}

/// Totals of a member's defragments, for `/metrics`.
#[derive(Debug, Default)]
pub struct DefragStats {
    runs: AtomicU64,
    failed: AtomicU64,
    pause_micros_total: AtomicU64,
    last_pause_micros: AtomicU64,
    max_pause_micros: AtomicU64,
}

impl DefragStats {
    /// `(completed runs, failed runs, total pause, last pause, longest pause)`.
    pub fn snapshot(&self) -> (u64, u64, Duration, Duration, Duration) {
        let us = |a: &AtomicU64| Duration::from_micros(a.load(Ordering::Relaxed));
        (
            self.runs.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
            us(&self.pause_micros_total),
            us(&self.last_pause_micros),
            us(&self.max_pause_micros),
        )
    }

    fn record(&self, r: &DefragReport) {
        let us = r.pause.as_micros() as u64;
        self.runs.fetch_add(1, Ordering::Relaxed);
        self.pause_micros_total.fetch_add(us, Ordering::Relaxed);
        self.last_pause_micros.store(us, Ordering::Relaxed);
        self.max_pause_micros.fetch_max(us, Ordering::Relaxed);
    }
}

fn store_error(e: SnapshotError) -> StoreError {
    match e {
        SnapshotError::Store(e) => e,
        other => StoreError::Corrupt(other.to_string()),
    }
}

impl<D: Disk> NodeHandle<D> {
    /// Defragments the local store online. Blocking (file I/O): call it from a blocking
    /// thread. One at a time per member; a second call fails while one runs.
    pub fn defragment(&self) -> Result<DefragReport, KvError> {
        let started = Instant::now();
        let bytes_before = self.with_store(|s| s.size_bytes())?;
        let mut d = self.with_store_mut(|s| s.begin_defragment().map_err(store_error))?;
        // Whatever happens in the steps (even a panic), the recording is stopped below:
        // left running it would refuse every later defragment.
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.defragment_steps(&mut d)
        }))
        .unwrap_or_else(|_| {
            Err(KvError::from(StoreError::Corrupt(
                "defragment: the copy panicked".into(),
            )))
        });
        let pause_start = Instant::now();
        let result = match result {
            Ok(()) => self.with_store_mut(|s| s.finish_defragment(d).map_err(store_error)),
            Err(e) => {
                // Abandoning touches only the copy; the store never stopped.
                let _ = self.with_store_mut(|s| {
                    s.abort_defragment(d);
                    Ok(())
                });
                Err(e)
            }
        };
        let pause = pause_start.elapsed();
        let caught_up = match result {
            // The old file is closed here, after the store's lock is released.
            Ok((n, replaced)) => {
                drop(replaced);
                n
            }
            Err(e) => {
                self.defrag.failed.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, "defragment failed; the store is unchanged");
                return Err(e);
            }
        };
        let report = DefragReport {
            pause,
            total: started.elapsed(),
            caught_up,
            bytes_before,
            bytes_after: self.with_store(|s| s.size_bytes())?,
        };
        self.defrag.record(&report);
        tracing::info!(
            pause_ms = report.pause.as_secs_f64() * 1e3,
            total_ms = report.total.as_secs_f64() * 1e3,
            bytes_before = report.bytes_before,
            bytes_after = report.bytes_after,
            caught_up = report.caught_up,
            "defragmented"
        );
        Ok(report)
    }

    /// Copy, catch-up rounds and a sync, all without holding the store.
    fn defragment_steps(&self, d: &mut Defrag<D>) -> Result<(), KvError> {
        d.copy().map_err(store_error)?;
        for _ in 0..MAX_ROUNDS {
            let cmds = self.with_store_mut(|s| s.take_recorded().map_err(store_error))?;
            d.catch_up(&cmds).map_err(store_error)?;
            if cmds.len() <= SWITCH_AT {
                break;
            }
        }
        d.sync().map_err(store_error)?;
        Ok(())
    }

    /// Totals of this member's defragments.
    pub fn defrag_stats(&self) -> &DefragStats {
        &self.defrag
    }
}
