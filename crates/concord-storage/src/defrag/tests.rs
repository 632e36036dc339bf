use std::path::Path;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use super::*;
use crate::disk::{SimDisk, Tear};
use crate::snapshot::tests::random_command;

const PATH: &str = "/n/state.redb";

fn open(disk: &SimDisk, path: &str, sync_applies: bool) -> MvccStore<SimDisk> {
    let config = MvccConfig {
        sync_applies,
        ..MvccConfig::default()
    };
    MvccStore::open(disk.clone(), Path::new(path), config).unwrap()
}

/// Applies `n` random commands to both stores.
fn run(a: &mut MvccStore<SimDisk>, b: &mut MvccStore<SimDisk>, rng: &mut SmallRng, n: usize) {
    for _ in 0..n {
        let cmd = random_command(rng);
        let i = a.applied_index() + 1;
        assert_eq!(a.apply(i, &cmd).unwrap(), b.apply(i, &cmd).unwrap());
        if rng.gen_bool(0.1) {
            a.compact_step().unwrap();
        }
    }
}

/// Everything a client can observe, plus the applied index.
fn state(s: &MvccStore<SimDisk>) -> impl PartialEq + std::fmt::Debug {
    let leases: Vec<_> = s
        .lease_ids()
        .unwrap()
        .into_iter()
        .map(|id| s.lease(id).unwrap())
        .collect();
    (
        s.applied_index(),
        s.revision(),
        s.compacted_revision(),
        s.hash_kv(0).unwrap(),
        leases,
        s.cluster_meta().unwrap(),
    )
}

#[test]
fn the_store_applies_throughout_and_ends_where_it_would_have_without_it() {
    for seed in 0..30u64 {
        let mut rng = SmallRng::seed_from_u64(seed);
        let disk = SimDisk::new();
        let mut live = open(&disk, PATH, false);
        let mut reference = open(&disk, "/r/state.redb", false);
        let n = rng.gen_range(0..300);
        run(&mut live, &mut reference, &mut rng, n);
        let mut d = live.begin_defragment().unwrap();
        let n = rng.gen_range(0..100);
        run(&mut live, &mut reference, &mut rng, n);
        d.copy().unwrap();
        for _ in 0..rng.gen_range(0..3) {
            let n = rng.gen_range(0..100);
            run(&mut live, &mut reference, &mut rng, n);
            let cmds = live.take_recorded().unwrap();
            d.catch_up(&cmds).unwrap();
        }
        d.sync().unwrap();
        let n = rng.gen_range(0..50);
        run(&mut live, &mut reference, &mut rng, n);
        live.finish_defragment(d).unwrap();
        assert_eq!(state(&live), state(&reference), "seed {seed}");
        assert!(!disk.exists(&tmp_path_for(Path::new(PATH))).unwrap());
        // It goes on applying, and the file it left behind reopens to the same state.
        run(&mut live, &mut reference, &mut rng, 50);
        assert_eq!(state(&live), state(&reference), "seed {seed}");
        live.sync().unwrap();
        drop(live);
        let reopened = open(&disk, PATH, false);
        assert_eq!(state(&reopened), state(&reference), "seed {seed}");
    }
}

#[test]
fn a_snapshot_installed_during_the_copy_abandons_it_and_changes_nothing() {
    let mut rng = SmallRng::seed_from_u64(1);
    let disk = SimDisk::new();
    let mut live = open(&disk, PATH, false);
    let mut other = open(&disk, "/o/state.redb", false);
    run(&mut live, &mut other, &mut rng, 200);
    let mut d = live.begin_defragment().unwrap();
    assert!(matches!(
        live.begin_defragment(),
        Err(SnapshotError::Defrag(_))
    ));
    d.copy().unwrap();
    // A leader's snapshot arrives and replaces the store.
    for _ in 0..30 {
        let i = other.applied_index() + 1;
        other.apply(i, &random_command(&mut rng)).unwrap();
    }
    let mut installer = SnapshotInstaller::new(disk.clone(), Path::new(PATH)).unwrap();
    for chunk in SnapshotStream::new(&other, 1 << 12).unwrap() {
        installer.push(&chunk.unwrap()).unwrap();
    }
    live.install_snapshot(installer).unwrap();
    let err = live.take_recorded().unwrap_err();
    assert!(err.to_string().contains("snapshot replaced"), "{err}");
    live.abort_defragment(d);
    assert!(!disk.exists(&tmp_path_for(Path::new(PATH))).unwrap());
    assert_eq!(state(&live), state(&other));
    // A later defragment works.
    live.defragment().unwrap();
    assert_eq!(state(&live), state(&other));
}

#[test]
fn a_power_cut_at_any_sync_of_the_switch_leaves_the_old_or_the_new_file_whole() {
    let mut rng = SmallRng::seed_from_u64(2);
    let base = SimDisk::new();
    let mut live = open(&base, PATH, true);
    let mut reference = open(&base, "/r/state.redb", true);
    run(&mut live, &mut reference, &mut rng, 300);
    drop(live);
    let want = state(&reference);
    let mut n = 1;
    loop {
        let disk = base.fork();
        let mut live = open(&disk, PATH, true);
        let mut d = live.begin_defragment().unwrap();
        d.copy().unwrap();
        disk.fail_syncs_after(Some(n));
        let finished = live.finish_defragment(d).is_ok();
        drop(live);
        disk.power_cut(Tear::Sectors, &mut rng);
        let reopened = open(&disk, PATH, true);
        assert_eq!(state(&reopened), want, "power cut at sync {n}");
        if finished {
            break;
        }
        n += 1;
    }
    assert!(n > 1, "the switch syncs at least twice");
}
