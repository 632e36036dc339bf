//! Leases in the simulation: every node runs the leader's expiry clock
//! (`concord_server::node::Leases`, on the simulated clock); a client grants short leases,
//! attaches a key to each, keeps some alive through whichever node leads, and reads the
//! others' keys. Checked here:
//!
//! * **not early**: a lease that was never kept alive is not revoked before its TTL has run
//!   from the grant's invocation. A linearizable read that starts after the key's put was
//!   acknowledged and ends before that time must find the key.
//! * **eventually**: once nobody keeps them alive, every lease is revoked (checked after the
//!   heal, with its key; the change log and the convergence check then see the deletes).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use concord_raft::{NodeId, StateRole};
use concord_server::node::{Leases, NodeHandle};
use concord_storage::mvcc::types::{Command, PutRequest, RangeRequest};
use rand::rngs::SmallRng;
use rand::Rng;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::disk::NodeDisk;
use crate::{lock, Handles};

/// Each live node's lease table and its expiry task.
pub type LeaseTables = Arc<Mutex<BTreeMap<NodeId, (Arc<Leases<NodeDisk>>, JoinHandle<()>)>>>;

/// Starts node `id`'s expiry clock (as the server does at start); `clock_rate` other than
/// 1 makes its lease clock run fast or slow (clock-rate skew).
pub fn start(tables: &LeaseTables, id: NodeId, node: &NodeHandle<NodeDisk>, clock_rate: f64) {
    let leases = Arc::new(Leases::new(node.clone(), Duration::from_millis(500)));
    leases.clock.set_rate(clock_rate);
    let task = tokio::spawn(
        leases
            .clone()
            .run(Duration::from_millis(100), Duration::from_millis(500)),
    );
    if let Some((_, old)) = lock(tables).insert(id, (leases, task)) {
        old.abort();
    }
}

/// Stops node `id`'s expiry clock (its process is gone).
pub fn stop(tables: &LeaseTables, id: NodeId) {
    if let Some((_, task)) = lock(tables).remove(&id) {
        task.abort();
    }
}

fn lease_key(id: i64) -> Vec<u8> {
    format!("lease/{id}").into_bytes()
}

/// What the lease client did and saw.
#[derive(Debug, Default)]
pub struct LeaseStats {
    pub granted: usize,
    pub kept_alive: usize,
    /// Reads that had to find a lease's key.
    pub reads_checked: usize,
    pub violations: Vec<String>,
}

/// The lease client: grants, attaches, keeps alive or watches expire, until `until`.
pub async fn client(
    mut rng: SmallRng,
    handles: Handles,
    tables: LeaseTables,
    until: Instant,
) -> LeaseStats {
    let mut stats = LeaseStats::default();
    let mut next_id = 1_000i64;
    while Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(rng.gen_range(50..400))).await;
        let Some(node) = random_node(&mut rng, &handles) else {
            continue;
        };
        next_id += 1;
        let id = next_id;
        let ttl = rng.gen_range(1..=2i64);
        let granted_at = Instant::now();
        if node.propose(Command::LeaseGrant { id, ttl }).await.is_err() {
            continue;
        }
        let put = Command::Put(PutRequest {
            key: lease_key(id),
            value: id.to_string().into_bytes(),
            lease: id,
            ..PutRequest::default()
        });
        if node.propose(put).await.is_err() {
            continue;
        }
        stats.granted += 1;
        let expiry_floor = granted_at + Duration::from_secs(ttl as u64);
        if rng.gen_bool(0.4) {
            let keep_for = Duration::from_millis(rng.gen_range(500..3000));
            tokio::spawn(keep_alive(id, handles.clone(), tables.clone(), keep_for));
            stats.kept_alive += 1;
            continue;
        }
        // Reads that end before the floor must find the key.
        while Instant::now() + Duration::from_millis(100) < expiry_floor {
            let Some(reader) = random_node(&mut rng, &handles) else {
                break;
            };
            let r = RangeRequest {
                key: lease_key(id),
                ..RangeRequest::default()
            };
            let result = reader.linearizable_range(&r).await;
            if let Some(found) = result.ok().filter(|_| Instant::now() < expiry_floor) {
                stats.reads_checked += 1;
                if found.kvs.is_empty() {
                    stats.violations.push(format!(
                        "lease {id} (ttl {ttl} s) expired early: its key was gone {:?} after the grant",
                        Instant::now() - granted_at
                    ));
                }
            }
            tokio::time::sleep(Duration::from_millis(rng.gen_range(50..300))).await;
        }
    }
    stats
}

/// Keeps lease `id` alive through the current leader's table for `keep_for`.
async fn keep_alive(id: i64, handles: Handles, tables: LeaseTables, keep_for: Duration) {
    let until = Instant::now() + keep_for;
    while Instant::now() < until {
        let leader = lock(&handles)
            .iter()
            .find(|(_, n)| n.status().role == StateRole::Leader)
            .map(|(id, _)| *id);
        let table = leader.and_then(|l| lock(&tables).get(&l).map(|(t, _)| t.clone()));
        if let Some(table) = table {
            if let Ok(None) = table.keep_alive(id).await {
                return; // Revoked already (a keep-alive lost to a leader change).
            }
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

fn random_node(rng: &mut SmallRng, handles: &Handles) -> Option<NodeHandle<NodeDisk>> {
    let h = lock(handles);
    if h.is_empty() {
        return None;
    }
    h.values().nth(rng.gen_range(0..h.len())).cloned()
}

/// After the heal: every lease is revoked on every node within `deadline`.
pub async fn wait_all_revoked(
    nodes: &[(NodeId, NodeHandle<NodeDisk>)],
    deadline: Instant,
) -> Result<(), String> {
    loop {
        let mut left = Vec::new();
        for (id, node) in nodes {
            let ids = node
                .with_store(|s| s.lease_ids())
                .map_err(|e| format!("node {id}: {e}"))?;
            if !ids.is_empty() {
                left.push((*id, ids));
            }
        }
        if left.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("leases never expired after the heal: {left:?}"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
