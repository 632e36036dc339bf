//! Throughput of a 3-node in-memory cluster driven in one thread: committed proposals per
//! second for 64 B and 1 KiB entries, with batching on (the runtime proposes up to 64
//! requests at once with `propose_batch`, and appends carry up to 1 MiB of entries) and
//! off (one `propose` and one entry per append), and messages sent per committed entry.
//!
//! Run with `cargo bench -p concord-raft --bench throughput`. Storage is `MemStorage`
//! and messages are delivered at once, so this measures the core's CPU cost only.

use std::collections::VecDeque;
use std::time::Instant;

use concord_raft::{ConfState, Config, MemStorage, Message, NodeId, RawNode, StateRole};

struct Cluster {
    nodes: Vec<(RawNode<MemStorage>, MemStorage)>,
    queue: VecDeque<Message>,
    messages: u64,
    applied_on_leader: u64,
}

impl Cluster {
    fn new(max_size_per_msg: u64) -> Self {
        let cs = ConfState {
            voters: vec![NodeId(1), NodeId(2), NodeId(3)],
            ..ConfState::default()
        };
        let nodes = (1..=3)
            .map(|id| {
                let disk = MemStorage::bootstrap(cs.clone());
                let mut cfg = Config::new(id);
                cfg.max_size_per_msg_bytes = max_size_per_msg;
                cfg.applied = 1;
                let raw = RawNode::new(&cfg, disk.clone()).expect("valid config");
                (raw, disk)
            })
            .collect();
        let mut c = Self {
            nodes,
            queue: VecDeque::new(),
            messages: 0,
            applied_on_leader: 0,
        };
        c.nodes[0].0.campaign().expect("campaign");
        c.run_until_idle();
        assert_eq!(c.nodes[0].0.soft_state().role, StateRole::Leader);
        c
    }

    fn run_until_idle(&mut self) {
        loop {
            let mut progress = false;
            for i in 0..self.nodes.len() {
                let (raw, disk) = &mut self.nodes[i];
                if !raw.has_ready() {
                    continue;
                }
                progress = true;
                let rd = raw.ready().expect("ready");
                self.queue.extend(rd.messages.iter().cloned());
                if let Some(s) = &rd.snapshot {
                    disk.apply_snapshot(s.clone()).expect("snapshot");
                }
                disk.append(&rd.entries).expect("append");
                if let Some(hs) = rd.hard_state {
                    disk.set_hard_state(hs);
                }
                self.queue.extend(rd.persisted_messages.iter().cloned());
                if i == 0 {
                    self.applied_on_leader += rd
                        .committed_entries
                        .iter()
                        .filter(|e| !e.data.is_empty())
                        .count() as u64;
                }
                raw.advance(rd);
            }
            while let Some(m) = self.queue.pop_front() {
                progress = true;
                self.messages += 1;
                let to = m.to.get() as usize - 1;
                let _ = self.nodes[to].0.step(m);
            }
            if !progress {
                return;
            }
        }
    }
}

fn run(entry_size: usize, batching: bool, total: u64) -> (f64, f64) {
    let mut c = Cluster::new(if batching { 1 << 20 } else { 0 });
    let payload = vec![0x5a; entry_size];
    let base_msgs = c.messages;
    let start = Instant::now();
    let mut proposed = 0;
    // Clients keep up to 256 proposals outstanding, as a runtime batching requests would.
    while c.applied_on_leader < total {
        while proposed < total && proposed - c.applied_on_leader < 256 {
            if batching {
                let n = (total - proposed).min(64);
                let batch = (0..n).map(|_| payload.clone()).collect();
                c.nodes[0].0.propose_batch(batch).expect("propose");
                proposed += n;
            } else {
                c.nodes[0].0.propose(payload.clone()).expect("propose");
                proposed += 1;
            }
        }
        c.run_until_idle();
    }
    let secs = start.elapsed().as_secs_f64();
    let msgs = (c.messages - base_msgs) as f64 / total as f64;
    (total as f64 / secs, msgs)
}

fn main() {
    let total = std::env::var("CONCORD_RAFT_BENCH_ENTRIES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000u64);
    println!("3-node in-memory cluster, one thread, {total} proposals per case");
    println!(
        "{:>8} {:>9} {:>16} {:>14}",
        "entry", "batching", "committed/s", "msgs/entry"
    );
    for &size in &[64usize, 1024] {
        for &batching in &[true, false] {
            let (rate, msgs) = run(size, batching, total);
            println!(
                "{:>7}B {:>9} {:>16.0} {:>14.3}",
                size,
                if batching { "on" } else { "off" },
                rate,
                msgs
            );
        }
    }
}
