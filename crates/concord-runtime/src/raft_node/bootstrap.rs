//! [`start`]: opens (or bootstraps) a group's WAL beside its state machine and spawns the
//! driver.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, RwLock};

use concord_raft::{ConfState, Config, HardState, RawNode, ReadOnlyOption, SnapshotMetadata};
use concord_storage::disk::Disk;
use concord_storage::wal::{Batch, Wal, WalStorage};
use tokio::sync::{mpsc, oneshot, watch};

use super::driver::Driver;
use super::handle::RaftHandle;
use super::reads::Reads;
use super::snapshot::StateSource;
use super::{NodeConfig, NodeStatus, Shared, StartError};
use crate::state_machine::StateMachine;
use crate::transport::{Inbox, Transport};

/// Capacity of a node's request queue.
const REQUEST_QUEUE: usize = 65_536;

/// Starts the replica `config.id` of a group: opens (or, when empty and
/// `config.initial_voters` is set, bootstraps) its WAL on `disk`, then spawns the driver
/// over `state` (already opened by the caller), sending through `transport` and receiving
/// from `inbox`.
pub fn start<S: StateMachine, D: Disk>(
    config: NodeConfig,
    disk: D,
    mut state: S,
    transport: Arc<dyn Transport>,
    inbox: Inbox,
) -> Result<RaftHandle<S>, StartError> {
    if config.id.is_zero() {
        return Err(StartError::Config("node id must not be 0"));
    }
    if config.tick.is_zero() {
        return Err(StartError::Config("tick must be positive"));
    }
    let wal = WalStorage::new(Wal::open(disk, &config.wal_dir, config.wal.clone())?);
    let fresh = {
        let w = wal.read();
        w.snapshot_metadata().index == 0 && w.last_index() == 0
    };
    if fresh && !config.initial_voters.is_empty() {
        bootstrap(&config, &wal, &mut state)?;
    }
    let snap_meta = wal.read().snapshot_metadata().clone();
    let mut rc = Config::new(config.id);
    rc.election_tick = config.election_ticks;
    rc.heartbeat_tick = config.heartbeat_ticks;
    if config.lease_reads {
        rc.read_only_option = ReadOnlyOption::LeaseBased;
        rc.check_quorum = true;
    }
    rc.testing_overlong_lease = config.testing_bugs.overlong_lease;
    rc.applied = snap_meta.index;
    // Each process gets its own election timer sequence.
    let incarnation =
        config.incarnation.unwrap_or_else(incarnation_seed) ^ config.id.get().rotate_left(32);
    rc.seed = incarnation;
    let shared: Shared<S> = Arc::new(RwLock::new(Some(state)));
    wal.set_snapshot_source(Arc::new(StateSource {
        state: shared.clone(),
    }));
    let raw = RawNode::new(&rc, wal.clone())?;
    let mut conf_history = BTreeMap::new();
    conf_history.insert(snap_meta.index, snap_meta.conf_state.clone());
    let status = NodeStatus {
        id: config.id,
        applied: snap_meta.index,
        snapshot_index: snap_meta.index,
        ..NodeStatus::default()
    };
    let (status_tx, status_rx) = watch::channel(status);
    let (stop_tx, stop_rx) = watch::channel(None);
    let (req_tx, req_rx) = mpsc::channel(REQUEST_QUEUE);
    let driver = Driver {
        id: config.id,
        raw,
        wal,
        state: shared.clone(),
        transport,
        status: status_tx,
        stop_reason: stop_tx,
        waiters: Default::default(),
        conf_waiters: Default::default(),
        reads: Reads::new(config.id),
        replicating: Default::default(),
        conf_history,
        applied: snap_meta.index,
        applied_term: 0,
        resent_through: 0,
        snapshot_index: snap_meta.index,
        snapshots_installed: 0,
        leader: None,
        config: config.clone(),
        fatal: None,
        failover: None,
    };
    let (done_tx, task) = oneshot::channel();
    let id = config.id;
    let run = async move {
        driver.run(req_rx, inbox).await;
        let _ = done_tx.send(());
    };
    let mut abort = None;
    let mut runtime = None;
    if config.own_thread {
        // The driver gets its own thread and single-threaded runtime: its fsyncs and state
        // machine commits block only that thread (no `block_in_place` hand-offs of the
        // server's workers), and the request path never waits behind it for a worker.
        // The runtime is built on that thread, which sends its handle back.
        let (rt_tx, rt_rx) = std::sync::mpsc::sync_channel(1);
        std::thread::Builder::new()
            .name(format!("concord-raft-{id}"))
            .spawn(move || {
                match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => {
                        let _ = rt_tx.send(Ok(rt.handle().clone()));
                        rt.block_on(run)
                    }
                    Err(e) => {
                        let _ = rt_tx.send(Err(e));
                    }
                }
            })
            .map_err(StartError::Thread)?;
        // Building a current-thread runtime takes microseconds.
        runtime = Some(
            rt_rx
                .recv()
                .map_err(|_| StartError::Thread(std::io::Error::other("the raft thread ended")))?
                .map_err(StartError::Thread)?,
        );
    } else {
        abort = Some(tokio::spawn(run).abort_handle());
    }
    Ok(RaftHandle {
        id: config.id,
        requests: req_tx,
        state: shared,
        status: status_rx,
        stop_reason: stop_rx,
        runtime,
        incarnation,
        seq: Arc::new(AtomicU64::new(0)),
        request_timeout: config.request_timeout,
        max_request_bytes: config.max_request_bytes,
        task: Arc::new(tokio::sync::Mutex::new(Some(task))),
        abort,
    })
}

/// The same bootstrap on every member: a snapshot at index 1 holding the initial
/// membership, and index 1 applied to the state machine as an empty entry, so both agree
/// from the first entry on.
fn bootstrap<S: StateMachine, D: Disk>(
    config: &NodeConfig,
    wal: &WalStorage<D>,
    state: &mut S,
) -> Result<(), StartError> {
    if !config.initial_voters.contains(&config.id) {
        return Err(StartError::Config("initial voters must include the node"));
    }
    let mut voters = config.initial_voters.clone();
    voters.sort_unstable();
    voters.dedup();
    let meta = SnapshotMetadata {
        index: 1,
        term: 1,
        conf_state: ConfState {
            voters,
            ..ConfState::default()
        },
    };
    let sm_error = |e: S::Error| StartError::StateMachine(Box::new(e));
    state.apply_batch(&[(1, None)]).map_err(sm_error)?;
    state.sync().map_err(sm_error)?;
    wal.append(Batch {
        snapshot: Some(&meta),
        entries: &[],
        hard_state: Some(HardState {
            term: 1,
            vote: None,
            commit: 1,
        }),
        lazy: false,
    })?;
    Ok(())
}

fn incarnation_seed() -> u64 {
    // Only needs to differ between runs of a node (request keys of a previous run must
    // not match this run's waiters); the wall clock does that.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let mut x = nanos ^ 0x9e37_79b9_7f4a_7c15;
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x
}
