//! A crash loop with a real process: a child appends to a WAL on the real file system and
//! prints an acknowledgement after each durable append; the parent kills it with SIGKILL
//! at random moments and checks, after every restart, that each acknowledged entry is
//! there with the right content and that nothing was invented.
//!
//! The child is this test binary itself, re-executed to run [`wal_crash_child`] only, so
//! no extra binary is built or installed.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

use concord_raft::{Entry, EntryKind, HardState, NodeId};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::disk::RealDisk;
use crate::wal::{Batch, Wal, WalConfig};

const DIR_VAR: &str = "CONCORD_WAL_CRASH_CHILD_DIR";
const SEED_VAR: &str = "CONCORD_WAL_CRASH_CHILD_SEED";

fn config() -> WalConfig {
    WalConfig {
        segment_bytes: 64 << 10,
        ..WalConfig::default()
    }
}

fn data_of(index: u64) -> Vec<u8> {
    (0..64u64)
        .map(|j| (index.wrapping_mul(31) + j) as u8)
        .collect()
}

/// The child's body: does nothing unless started by [`crash_loop_with_sigkill`].
#[test]
fn wal_crash_child() {
    let Ok(dir) = std::env::var(DIR_VAR) else {
        return;
    };
    let seed: u64 = std::env::var(SEED_VAR)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut wal = Wal::open(RealDisk, &dir, config()).expect("child: open");
    // Bounded even if the parent never kills it.
    for _ in 0..20_000 {
        let from = wal.last_index() + 1;
        let n = rng.gen_range(1..8u64);
        let entries: Vec<Entry> = (from..from + n)
            .map(|index| Entry {
                term: 1,
                index,
                kind: EntryKind::Normal,
                data: data_of(index),
            })
            .collect();
        let last = from + n - 1;
        wal.append(Batch {
            snapshot: None,
            entries: &entries,
            hard_state: Some(HardState {
                term: 1,
                vote: Some(NodeId(1)),
                commit: last,
            }),
            lazy: false,
        })
        .expect("child: append");
        println!("ACK {last}");
    }
}

#[test]
fn crash_loop_with_sigkill() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("wal");
    let exe = std::env::current_exe().expect("current exe");
    // The test's name as libtest knows it: the module path without the crate name.
    let child_test = format!(
        "{}::wal_crash_child",
        module_path!().split_once("::").map_or("", |(_, m)| m)
    );
    let mut rng = SmallRng::seed_from_u64(0xC0FFEE);
    let mut acked = 0u64;
    for cycle in 0..30u64 {
        let mut child = Command::new(&exe)
            .args(["--exact", child_test.as_str(), "--nocapture"])
            .args(["--test-threads", "1"])
            .env(DIR_VAR, &dir)
            .env(SEED_VAR, cycle.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn child");
        let stdout = child.stdout.take().expect("child stdout");
        let mut lines = BufReader::new(stdout).lines();
        let kill_after = rng.gen_range(1..120);
        let mut seen = 0;
        while seen < kill_after {
            let Some(Ok(line)) = lines.next() else { break };
            if let Some(n) = line.strip_prefix("ACK ") {
                acked = acked.max(n.parse().expect("ack"));
                seen += 1;
            }
        }
        child.kill().expect("SIGKILL");
        // Acknowledgements already in the pipe were given before the kill: they count.
        for line in lines.map_while(Result::ok) {
            if let Some(n) = line.strip_prefix("ACK ") {
                acked = acked.max(n.parse().expect("ack"));
            }
        }
        let status = child.wait().expect("wait");
        assert!(!status.success() || seen < kill_after, "cycle {cycle}");
        verify(&dir, acked, cycle);
    }
    assert!(acked > 30, "the child made progress: {acked}");
}

fn verify(dir: &Path, acked: u64, cycle: u64) {
    let wal = Wal::open(RealDisk, dir, config())
        .unwrap_or_else(|e| panic!("cycle {cycle}: reopen failed: {e}"));
    assert!(
        wal.last_index() >= acked,
        "cycle {cycle}: lost acknowledged entries: last {} < acked {acked}",
        wal.last_index()
    );
    assert!(wal.hard_state().commit <= wal.last_index());
    for e in wal
        .entries(1, wal.last_index() + 1, u64::MAX)
        .expect("read")
    {
        assert_eq!(e.data, data_of(e.index), "cycle {cycle}: entry {}", e.index);
        assert_eq!(e.term, 1);
    }
}
