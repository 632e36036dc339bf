//! The trace contexts of sampled proposals, by request key, so that every member's steps
//! for a traced write (WAL append and fsync, replication, apply) join the trace of the
//! request that proposed it.
//!
//! A traced proposal's W3C `traceparent` is put on this process's board under its
//! [`RequestKey`] when it is proposed ([`crate::raft_node::RaftHandle::propose_traced_with`]).
//! The peer transport sends the contexts of the entries a batch carries beside the batch
//! (`RaftBatch.traces`, never inside the log entries: the log and its format stay free of
//! tracing), and the receiving member puts them on its own board. The Raft driver looks
//! the entries it writes and applies up on the board and reports a step for each traced
//! one ([`crate::Telemetry::trace_step`]).
//!
//! # Guarantees
//!
//! 1. Nothing is done for untraced traffic: while the board is empty (tracing off, or no
//!    sampled request in the last [`TTL`]), a lookup is one atomic load.
//! 2. Bounded: at most [`CAPACITY`] contexts, each kept [`TTL`] at most; the oldest goes
//!    first. A context that is gone costs its steps' spans, nothing else.
//! 3. Keys are unique per proposal ([`RequestKey`]: origin node, incarnation, sequence), so
//!    members sharing a process (tests) share the board without confusion.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use crate::envelope::{self, RequestKey};

/// Contexts kept at most.
pub const CAPACITY: usize = 4096;
/// How long a context is kept.
pub const TTL: Duration = Duration::from_secs(30);

#[derive(Default)]
struct Board {
    by_key: HashMap<RequestKey, Arc<str>>,
    order: VecDeque<(Instant, RequestKey)>,
}

static LEN: AtomicUsize = AtomicUsize::new(0);
static BOARD: LazyLock<Mutex<Board>> = LazyLock::new(Mutex::default);

fn board() -> std::sync::MutexGuard<'static, Board> {
    // Plain maps, consistent at any panic point.
    BOARD.lock().unwrap_or_else(|e| e.into_inner())
}

/// Whether no context is kept (the common case: nothing to look up).
pub fn is_empty() -> bool {
    LEN.load(Ordering::Relaxed) == 0
}

/// Keeps `traceparent` as the context of the proposal `key`.
pub fn insert(key: RequestKey, traceparent: Arc<str>) {
    let mut b = board();
    let now = Instant::now();
    while let Some(&(at, old)) = b.order.front() {
        if b.order.len() < CAPACITY && now.duration_since(at) < TTL {
            break;
        }
        b.order.pop_front();
        b.by_key.remove(&old);
    }
    if b.by_key.insert(key, traceparent).is_none() {
        b.order.push_back((now, key));
    }
    LEN.store(b.by_key.len(), Ordering::Relaxed);
}

/// The contexts of the traced entries among `entries` (each an entry's data: an
/// envelope), in their order.
pub fn of_entries<'a>(entries: impl IntoIterator<Item = &'a [u8]>) -> Vec<(RequestKey, Arc<str>)> {
    if is_empty() {
        return Vec::new();
    }
    let b = board();
    entries
        .into_iter()
        .filter_map(|data| {
            let (key, _) = envelope::decode(data).ok()?;
            b.by_key.get(&key).map(|t| (key, t.clone()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(seq: u64) -> (RequestKey, Vec<u8>) {
        let key = RequestKey {
            incarnation: 77,
            seq,
            origin: concord_raft::NodeId(9_000_001),
        };
        let mut data = Vec::new();
        envelope::write_header(&key, &mut data);
        data.extend_from_slice(b"payload");
        (key, data)
    }

    #[test]
    fn traced_entries_are_found_and_the_board_stays_bounded() {
        let (k1, d1) = entry(1);
        let (_, d2) = entry(2);
        insert(k1, "00-a-b-01".into());
        let found = of_entries([&d1[..], &d2[..], b"not an envelope"]);
        assert_eq!(found, vec![(k1, Arc::from("00-a-b-01"))]);
        for seq in 10..10 + 2 * CAPACITY as u64 {
            insert(entry(seq).0, "00-c-d-01".into());
        }
        {
            let b = board();
            assert!(b.by_key.len() <= CAPACITY);
            assert_eq!(b.by_key.len(), b.order.len());
        }
        assert!(of_entries([&d1[..]]).is_empty(), "the oldest went first");
    }
}
