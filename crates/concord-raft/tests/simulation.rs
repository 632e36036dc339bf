//! Deterministic simulation of concord-raft clusters (see `sim/mod.rs`).
//!
//! * `CONCORD_RAFT_SEEDS=<n>` runs seeds `0..n` (default 2000 in release builds, 300 in
//!   debug builds, where the core runs an order of magnitude slower);
//! * `CONCORD_RAFT_SEED_START=<s>` starts at seed `s` instead of 0 (long runs);
//! * `CONCORD_RAFT_SEED=<n>` replays one seed (add `CONCORD_RAFT_TRACE=1` for a trace).

mod sim;

use sim::{run_seed, SimParams};

/// Steps of the fault phase per seed (4 steps per tick).
const SAFETY_STEPS: u64 = 4000;

fn default_seeds() -> u64 {
    if cfg!(debug_assertions) {
        300
    } else {
        2000
    }
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

#[test]
fn simulation_seeds() {
    if let Some(seed) = env_u64("CONCORD_RAFT_SEED") {
        let p = SimParams::from_seed(seed, SAFETY_STEPS);
        eprintln!("replaying {p:?}");
        match run_seed(p) {
            Ok(stats) => eprintln!("seed {seed} ok: {stats:?}"),
            Err(e) => panic!("seed {seed} failed: {e}"),
        }
        return;
    }
    let n = env_u64("CONCORD_RAFT_SEEDS").unwrap_or_else(default_seeds);
    let first = env_u64("CONCORD_RAFT_SEED_START").unwrap_or(0);
    let start = std::time::Instant::now();
    let mut total = sim::Stats::default();
    for seed in first..first + n {
        let p = SimParams::from_seed(seed, SAFETY_STEPS);
        match run_seed(p.clone()) {
            Ok(s) => {
                total.steps += s.steps;
                total.messages += s.messages;
                total.applied += s.applied;
                total.elections += s.elections;
                total.snapshots_sent += s.snapshots_sent;
                total.conf_changes += s.conf_changes;
                total.reads_served += s.reads_served;
                total.crashes += s.crashes;
            }
            Err(e) => panic!(
                "simulation seed {seed} failed: {e}\nparams: {p:?}\nreplay with: CONCORD_RAFT_SEED={seed} CONCORD_RAFT_TRACE=1 cargo test -p concord-raft --release --test simulation simulation_seeds"
            ),
        }
    }
    eprintln!("{n} seeds in {:?}: {total:?}", start.elapsed());
    // The workload must actually exercise the features, or the run proves little.
    assert!(total.elections >= n, "too few elections: {total:?}");
    assert!(total.applied > n * 10, "too little applied: {total:?}");
    if n >= 100 {
        assert!(
            total.snapshots_sent > 0,
            "no snapshot was ever sent: {total:?}"
        );
        assert!(
            total.conf_changes > 0,
            "no membership change was applied: {total:?}"
        );
        assert!(total.reads_served > 0, "no read was served: {total:?}");
    }
}

#[test]
fn same_seed_replays_identically() {
    for seed in [3, 17] {
        let a = run_seed(SimParams::from_seed(seed, 600)).map(|s| format!("{s:?}"));
        let b = run_seed(SimParams::from_seed(seed, 600)).map(|s| format!("{s:?}"));
        assert_eq!(a, b, "seed {seed} did not replay identically");
    }
}

/// The checker must be able to fail: with votes granted regardless of the candidate's
/// log, some seed within the budget must break an invariant.
#[test]
fn checker_catches_votes_without_log_check() {
    let budget = 400;
    for seed in 0..budget {
        let mut p = SimParams::from_seed(seed, SAFETY_STEPS);
        p.buggy_votes = true;
        if let Err(e) = run_seed(p) {
            eprintln!("seed {seed} caught the broken vote rule: {e}");
            return;
        }
    }
    panic!("no seed in 0..{budget} caught votes granted without the log check");
}

/// Same for leader leases trusted four times too long: some seed must serve a stale read.
#[test]
fn checker_catches_overlong_leases() {
    let budget = 3000;
    let mut tried = 0;
    for seed in 0..budget {
        let mut p = SimParams::from_seed(seed, SAFETY_STEPS);
        if !p.check_quorum {
            continue;
        }
        p.lease_reads = true;
        p.buggy_lease = true;
        p.tick_skip = 0.0;
        p.read_per_step = 0.3;
        p.partition_per_step = p.partition_per_step.max(0.01);
        tried += 1;
        if let Err(e) = run_seed(p) {
            eprintln!("seed {seed} caught the overlong lease: {e}");
            return;
        }
    }
    panic!("no seed of {tried} caught an overlong leader lease");
}
