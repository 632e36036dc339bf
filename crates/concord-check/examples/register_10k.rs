//! Times the register checker on a synthetic 10,000-operation history (5 keys, 10 processes).
//!
//! `cargo run --release -p concord-check --example register_10k [SEEDS] [INFO_PER_MILLE]`
//!
//! Prints the time per history ("checker run time per 10,000 operations"). Not a test: the
//! numbers depend on the machine.

use std::time::Instant;

use concord_check::synth::{corrupt_read_stale, register_history, SynthConfig};
use concord_check::{check, CheckOptions, Validity, Workload};

fn main() {
    let seeds: u64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let info_per_mille: u32 = std::env::args()
        .nth(2)
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let mut times = Vec::new();
    for seed in 0..seeds {
        let cfg = SynthConfig {
            seed,
            ops: 10_000,
            keys: 5,
            processes: 10,
            info_per_mille,
            fail_per_mille: 20,
            max_latency: 1_000_000,
        };
        let events = register_history(&cfg);
        let start = Instant::now();
        let verdict = match check(Workload::Register, &events, &CheckOptions::default()) {
            Ok(v) => v,
            Err(e) => {
                eprintln!("seed {seed}: {e}");
                std::process::exit(2);
            }
        };
        let ms = start.elapsed().as_secs_f64() * 1000.0;
        times.push(ms);
        println!(
            "seed {seed}: {} ops, {} events, valid={:?}, {:.1} ms, states={}, info={}, fail={}",
            verdict.ops,
            events.len(),
            verdict.valid,
            ms,
            verdict.stats["states"],
            verdict.stats["info"],
            verdict.stats["fail"],
        );
        if verdict.valid != Validity::Valid {
            eprintln!("seed {seed}: expected valid");
            std::process::exit(1);
        }
        let mut bad = events;
        if corrupt_read_stale(&mut bad, seed as usize).is_some() {
            let start = Instant::now();
            let valid = check(Workload::Register, &bad, &CheckOptions::default()).map(|v| v.valid);
            println!(
                "seed {seed}: with one stale read: {valid:?} in {:.1} ms",
                start.elapsed().as_secs_f64() * 1000.0
            );
        }
    }
    times.sort_by(f64::total_cmp);
    println!(
        "checker run time per 10,000 operations: median {:.1} ms, max {:.1} ms over {} histories",
        times[times.len() / 2],
        times[times.len() - 1],
        times.len()
    );
}
