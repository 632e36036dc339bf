//! Benchmarks of the hot building blocks. Figures, not tests: run with
//! `cargo bench -p concord-core`.
#![allow(missing_docs)] // criterion_group! generates undocumented items.

use std::hint::black_box;

use concord_core::clock::{Hlc, Timestamp};
use criterion::{criterion_group, criterion_main, Criterion};

fn hlc(c: &mut Criterion) {
    let mut g = c.benchmark_group("hlc");
    g.bench_function("now", |b| {
        let mut clock = Hlc::new(500);
        let mut physical_ms = 1_700_000_000_000u64;
        b.iter(|| {
            // Physical time advances every 64 calls, so both branches are exercised.
            physical_ms += u64::from(clock.last().logical % 64 == 0);
            black_box(clock.now(black_box(physical_ms)))
        })
    });
    g.bench_function("update", |b| {
        let mut clock = Hlc::new(500);
        let remote = Timestamp::new(1_700_000_000_000, 3);
        b.iter(|| black_box(clock.update(black_box(remote), black_box(1_700_000_000_000))))
    });
    g.finish();
}

criterion_group!(benches, hlc);
criterion_main!(benches);
