//! Storage benchmarks that print figures (not a timed test).
//!
//! `cargo bench -p concord-storage` runs: the raw synchronous-write rate of this machine
//! (4 KiB appends and overwrites with `O_DSYNC`, and 4 KiB append + `fdatasync`), WAL
//! group commit at batch
//! sizes 1, 16 and 256 of 256-byte entries, WAL open (recovery) time, MVCC puts/s and
//! range reads/s, and resident memory after loading the keys.
//!
//! Environment: `CONCORD_BENCH_KEYS` (default 100000; 1000000 for the figure),
//! `CONCORD_BENCH_WAL_MIB` (size of the WAL written for the open-time figure, default 256;
//! 1024 for 1 GiB), `CONCORD_BENCH_DIR` (where to write; default a temporary directory).

use std::fs::OpenOptions;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::time::{Duration, Instant};

use concord_raft::{Entry, EntryKind, HardState};
use concord_storage::disk::RealDisk;
use concord_storage::mvcc::types::{Command, PutRequest, RangeRequest};
use concord_storage::mvcc::{MvccConfig, MvccStore};
use concord_storage::wal::{Batch, Wal, WalConfig};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

fn raw_sync_writes(dir: &Path) {
    let path = dir.join("raw-dsync");
    let f = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .custom_flags(libc::O_DSYNC)
        .open(&path)
        .expect("open O_DSYNC");
    let buf = vec![0xA5u8; 4096];
    let n = 2000u64;
    let t = Instant::now();
    for i in 0..n {
        f.write_all_at(&buf, i * 4096).expect("write");
    }
    let s = t.elapsed().as_secs_f64();
    println!(
        "raw 4 KiB O_DSYNC writes:        {:>9.0} writes/s  {:>7.1} MiB/s  ({:.3} ms each)",
        n as f64 / s,
        n as f64 * 4096.0 / s / 1048576.0,
        s * 1000.0 / n as f64
    );
    // The same O_DSYNC writes over blocks that already exist (what WAL preallocation buys).
    let t = Instant::now();
    for i in 0..n {
        f.write_all_at(&buf, i * 4096).expect("write");
    }
    let s = t.elapsed().as_secs_f64();
    println!(
        "raw 4 KiB O_DSYNC overwrites:    {:>9.0} writes/s  {:>7.1} MiB/s  ({:.3} ms each)",
        n as f64 / s,
        n as f64 * 4096.0 / s / 1048576.0,
        s * 1000.0 / n as f64
    );
    let path = dir.join("raw-fdatasync");
    let f = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(&path)
        .expect("open");
    let t = Instant::now();
    for i in 0..n {
        f.write_all_at(&buf, i * 4096).expect("write");
        f.sync_data().expect("fdatasync");
    }
    let s = t.elapsed().as_secs_f64();
    println!(
        "raw 4 KiB write + fdatasync:     {:>9.0} writes/s  {:>7.1} MiB/s  ({:.3} ms each)",
        n as f64 / s,
        n as f64 * 4096.0 / s / 1048576.0,
        s * 1000.0 / n as f64
    );
}

fn entries(from: u64, n: u64, size: usize) -> Vec<Entry> {
    (from..from + n)
        .map(|index| Entry {
            term: 1,
            index,
            kind: EntryKind::Normal,
            data: vec![(index % 251) as u8; size],
        })
        .collect()
}

fn append_all(wal: &mut Wal<RealDisk>, batch: u64, batches: u64, size: usize) -> Duration {
    let t = Instant::now();
    for _ in 0..batches {
        let from = wal.last_index() + 1;
        let es = entries(from, batch, size);
        wal.append(Batch {
            snapshot: None,
            entries: &es,
            hard_state: Some(HardState {
                term: 1,
                vote: Some(concord_raft::NodeId(1)),
                commit: from + batch - 1,
            }),
            lazy: false,
        })
        .expect("append");
    }
    t.elapsed()
}

fn wal_group_commit(dir: &Path) {
    for (batch, batches) in [(1u64, 2000u64), (16, 1000), (256, 200)] {
        let d = dir.join(format!("wal-{batch}"));
        let mut wal = Wal::open(RealDisk, &d, WalConfig::default()).expect("open");
        let s = append_all(&mut wal, batch, batches, 256).as_secs_f64();
        let n = (batch * batches) as f64;
        println!(
            "wal append, batch {batch:>3} x 256 B:  {:>9.0} entries/s {:>7.1} MiB/s  {:>7.0} fsyncs/s",
            n / s,
            n * 256.0 / s / 1048576.0,
            batches as f64 / s
        );
    }
}

fn wal_open_time(dir: &Path) {
    let mib = env_u64("CONCORD_BENCH_WAL_MIB", 256);
    let d = dir.join("wal-open");
    let mut wal = Wal::open(RealDisk, &d, WalConfig::default()).expect("open");
    let size = 4096usize;
    let batch = 256u64;
    let batches = (mib << 20) / (size as u64 * batch);
    let s = append_all(&mut wal, batch, batches, size).as_secs_f64();
    println!(
        "wal write {mib} MiB (batch 256 x 4 KiB): {:.1} s, {:.0} MiB/s",
        s,
        mib as f64 / s
    );
    drop(wal);
    let rss0 = rss_mib();
    let t = Instant::now();
    let wal = Wal::open(RealDisk, &d, WalConfig::default()).expect("reopen");
    println!(
        "wal open (recovery) of {mib} MiB, {} entries, {} segments: {:.2} s; RSS +{:.1} MiB",
        wal.last_index(),
        wal.segment_count(),
        t.elapsed().as_secs_f64(),
        rss_mib() - rss0
    );
}

fn mvcc(dir: &Path) {
    let keys = env_u64("CONCORD_BENCH_KEYS", 100_000);
    let config = MvccConfig {
        batches_per_commit: env_u64(
            "CONCORD_BENCH_BATCHES_PER_COMMIT",
            MvccConfig::default().batches_per_commit.into(),
        ) as u32,
        ..MvccConfig::default()
    };
    let per_commit = config.batches_per_commit;
    let mut store = MvccStore::open(RealDisk, dir.join("state.redb"), config).expect("open");
    let key_of = |i: u64| format!("/bench/key/{i:010}").into_bytes();
    let rss0 = rss_mib();
    let batch = 256u64;
    let t = Instant::now();
    let mut index = 0u64;
    let mut i = 0u64;
    while i < keys {
        let cmds: Vec<Command> = (i..(i + batch).min(keys))
            .map(|k| {
                Command::Put(PutRequest {
                    key: key_of(k),
                    value: vec![(k % 251) as u8; 256],
                    ..PutRequest::default()
                })
            })
            .collect();
        let with_index: Vec<(u64, &Command)> = cmds
            .iter()
            .map(|c| {
                index += 1;
                (index, c)
            })
            .collect();
        store.apply_batch(&with_index).expect("apply");
        i += batch;
    }
    store.sync().expect("sync");
    let s = t.elapsed().as_secs_f64();
    println!(
        "mvcc put {keys} keys x 256 B (apply batches of 256, one fsync at end): {:>9.0} puts/s",
        keys as f64 / s
    );
    let n = 20_000u64.min(keys);
    let mut rng = SmallRng::seed_from_u64(1);
    let t = Instant::now();
    for _ in 0..n {
        let k = rng.gen_range(0..keys);
        index += 1;
        let cmd = Command::Put(PutRequest {
            key: key_of(k),
            value: vec![1; 256],
            ..PutRequest::default()
        });
        store.apply(index, &cmd).expect("apply");
    }
    let s = t.elapsed().as_secs_f64();
    println!(
        "mvcc put, one command per batch, {per_commit:>2} batches per redb commit:   {:>9.0} puts/s",
        n as f64 / s
    );
    let t = Instant::now();
    for _ in 0..n {
        let k = rng.gen_range(0..keys);
        let r = store
            .range(&RangeRequest {
                key: key_of(k),
                ..RangeRequest::default()
            })
            .expect("range")
            .expect("range ok");
        assert_eq!(r.kvs.len(), 1);
    }
    let s = t.elapsed().as_secs_f64();
    println!(
        "mvcc range, single key (random):                                  {:>9.0} reads/s",
        n as f64 / s
    );
    let m = 2000u64;
    let t = Instant::now();
    for _ in 0..m {
        let k = rng.gen_range(0..keys.saturating_sub(100).max(1));
        let r = store
            .range(&RangeRequest {
                key: key_of(k),
                range_end: key_of(k + 100),
                ..RangeRequest::default()
            })
            .expect("range")
            .expect("range ok");
        assert!(!r.kvs.is_empty());
    }
    let s = t.elapsed().as_secs_f64();
    println!(
        "mvcc range, 100 keys:                                             {:>9.0} reads/s",
        m as f64 / s
    );
    println!(
        "resident memory after loading {keys} keys: {:.1} MiB (+{:.1} MiB), backend file {:.1} MiB, in use {:.1} MiB",
        rss_mib(),
        rss_mib() - rss0,
        store.size_bytes().expect("size") as f64 / 1048576.0,
        store.size_in_use_bytes().expect("size") as f64 / 1048576.0
    );
    store.sync().expect("sync");
    drop(store);
    let t = Instant::now();
    let store =
        MvccStore::open(RealDisk, dir.join("state.redb"), MvccConfig::default()).expect("reopen");
    println!(
        "mvcc open with {keys} keys (key index rebuilt, every row's checksum verified): {:.0} ms",
        t.elapsed().as_secs_f64() * 1000.0
    );
    assert_eq!(store.indexed_keys() as u64, keys);
}

fn main() {
    // `cargo test --benches` passes `--bench`-less flags; run only under `cargo bench`.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let tmp = tempfile::tempdir_in(
        std::env::var("CONCORD_BENCH_DIR")
            .unwrap_or_else(|_| std::env::temp_dir().to_string_lossy().into_owned()),
    )
    .expect("tempdir");
    let dir = tmp.path();
    println!("concord-storage benchmarks in {}", dir.display());
    raw_sync_writes(dir);
    wal_group_commit(dir);
    wal_open_time(dir);
    mvcc(dir);
}
