//! Benchmarks of the hot building blocks. Figures, not tests: run with
//! `cargo bench -p concord-core`.
#![allow(missing_docs)] // criterion_group! generates undocumented items.

use std::hint::black_box;

use concord_core::clock::{Hlc, Timestamp};
use concord_core::crdt::{Crdt, OrSet};
use concord_core::ring::Ring;
use concord_core::NodeId;
use criterion::{criterion_group, criterion_main, Criterion};

fn hlc(c: &mut Criterion) {
    let mut g = c.benchmark_group("hlc");
    g.bench_function("now", |b| {
        let mut clock = Hlc::new(500);
        let mut physical_ms = 1_700_000_000_000u64;
        b.iter(|| {
            // Physical time advances every 64 calls, so both branches are exercised.
            physical_ms += u64::from(clock.last().logical.is_multiple_of(64));
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

fn ring(c: &mut Criterion) {
    // 1,000 nodes x 256 virtual nodes: 256,000 tokens.
    let ring = Ring::with_nodes(256, (0..1_000).map(NodeId)).expect("valid ring");
    let keys: Vec<Vec<u8>> = (0..4_096u32)
        .map(|i| format!("user/{i:08}").into_bytes())
        .collect();
    let mut g = c.benchmark_group("ring_1000x256");
    let mut i = 0usize;
    g.bench_function("owner", |b| {
        b.iter(|| {
            i = (i + 1) % keys.len();
            black_box(ring.owner(black_box(&keys[i])))
        })
    });
    g.bench_function("preference_list_3", |b| {
        b.iter(|| {
            i = (i + 1) % keys.len();
            black_box(ring.preference_list(black_box(&keys[i]), 3))
        })
    });
    g.finish();
}

fn crdt(c: &mut Criterion) {
    // Two replicas that share 5,000 elements and each added 5,000 of their own, with some
    // removals: a realistic anti-entropy merge of 10,000-element sets.
    let mut a = OrSet::new();
    for e in 0..5_000u32 {
        a.add(e, NodeId(1));
    }
    let mut b = a.clone();
    for e in 5_000..10_000u32 {
        a.add(e, NodeId(1));
        b.add(e + 5_000, NodeId(2));
    }
    for e in (0..5_000u32).step_by(10) {
        b.remove(&e);
    }
    let mut g = c.benchmark_group("crdt");
    g.bench_function("orset_merge_10k", |bench| {
        bench.iter(|| {
            let mut x = a.clone();
            x.merge(black_box(&b));
            black_box(x)
        })
    });
    g.bench_function("orset_clone_10k_baseline", |bench| {
        bench.iter(|| black_box(a.clone()))
    });
    g.finish();
}

criterion_group!(benches, hlc, ring, crdt);
criterion_main!(benches);
