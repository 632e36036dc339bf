//! Generated histories: a simulated linearizable register must always pass, and a single
//! corrupted read must always fail.

use concord_check::synth::{
    corrupt_read_never_written, corrupt_read_stale, register_history, SynthConfig,
};
use concord_check::{check, CheckOptions, Validity, Workload};

fn cfg(seed: u64) -> SynthConfig {
    SynthConfig {
        seed,
        ops: 150 + (seed % 5) as usize * 30,
        keys: 1 + (seed % 3) as usize,
        processes: 3 + (seed % 6) as usize,
        info_per_mille: 40,
        fail_per_mille: 40,
        max_latency: 50 + (seed % 4) * 50,
    }
}

#[test]
fn simulated_linearizable_histories_are_valid() {
    for seed in 0..300 {
        let events = register_history(&cfg(seed));
        let v = check(Workload::Register, &events, &CheckOptions::default()).unwrap();
        assert_eq!(v.valid, Validity::Valid, "seed {seed}: {v:?}");
    }
}

#[test]
fn generator_is_deterministic_and_produces_all_outcomes() {
    let a = register_history(&cfg(42));
    let b = register_history(&cfg(42));
    assert_eq!(a, b);
    let v = check(Workload::Register, &a, &CheckOptions::default()).unwrap();
    assert!(
        v.stats["ok"] > 0 && v.stats["fail"] > 0 && v.stats["info"] > 0,
        "{:?}",
        v.stats
    );
}

#[test]
fn a_read_of_a_value_never_written_is_caught() {
    for seed in 0..150 {
        let mut events = register_history(&cfg(seed));
        let changed = corrupt_read_never_written(&mut events, seed as usize).expect("a read");
        let v = check(Workload::Register, &events, &CheckOptions::default()).unwrap();
        assert_eq!(v.valid, Validity::Invalid, "seed {seed} changed #{changed}");
        let window = v.counterexample.as_ref().expect("counterexample");
        assert!(
            window.iter().any(|e| e.index == changed),
            "seed {seed}: the window misses the corrupted read #{changed}"
        );
    }
}

#[test]
fn a_stale_read_after_a_completed_write_is_caught() {
    let mut corrupted = 0;
    for seed in 0..150 {
        let mut events = register_history(&cfg(seed));
        let Some(changed) = corrupt_read_stale(&mut events, seed as usize) else {
            continue;
        };
        corrupted += 1;
        let v = check(Workload::Register, &events, &CheckOptions::default()).unwrap();
        assert_eq!(v.valid, Validity::Invalid, "seed {seed} changed #{changed}");
    }
    assert!(
        corrupted >= 100,
        "only {corrupted} histories could be corrupted"
    );
}

#[test]
fn exhausted_time_budget_is_unknown_never_valid() {
    let events = register_history(&SynthConfig {
        ops: 3000,
        ..cfg(7)
    });
    let none = CheckOptions {
        budget: std::time::Duration::ZERO,
        ..CheckOptions::default()
    };
    let v = check(Workload::Register, &events, &none).unwrap();
    assert_eq!(v.valid, Validity::Unknown, "{:?}", v.note);
    assert!(v.note.unwrap().contains("time budget"));
    let v = check(Workload::Register, &events, &CheckOptions::default()).unwrap();
    assert_eq!(v.valid, Validity::Valid);
}
