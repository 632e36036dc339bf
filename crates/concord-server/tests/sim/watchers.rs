//! Watchers in the simulation: each follows the change log from the revision it started at,
//! on one live node at a time. When its node stops, or at random, it resumes on another
//! live node from its next revision, as an etcd client does. Deliveries enter the history
//! (concord-check's watch checker: in order, no duplicates, every acknowledged write in the
//! claimed range delivered with its value), and after the heal each watcher's deliveries
//! must equal the converged change log over its range exactly: nothing missed, nothing
//! repeated, nothing invented, across every resume.

use std::time::Duration;

use concord_check::history::{Event, EventType};
use concord_server::node::{FeedError, KeyRange, WatchFeed};
use concord_storage::mvcc::types::{Event as Change, EventKind};
use rand::rngs::SmallRng;
use rand::Rng;
use serde_json::{json, Value};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::{lock, Handles};

/// What a watcher saw: the revision it started at, every change delivered in order, and
/// its history events (kept apart from the shared history: two watchers woken by one
/// status change run in an order the runtime does not fix, so they are merged by time
/// afterwards, which keeps a seed's history reproducible).
#[derive(Debug, Default, Clone)]
pub struct Seen {
    pub from: i64,
    pub changes: Vec<(i64, String, EventKind, Vec<u8>)>,
    pub events: Vec<Event>,
}

/// The delivered form of a change (for the history and the final comparison).
pub fn describe(c: &Change) -> (i64, String, EventKind, Vec<u8>) {
    (
        c.kv.mod_revision,
        String::from_utf8_lossy(&c.kv.key).into_owned(),
        c.kind,
        c.kv.value.clone(),
    )
}

fn as_json(c: &(i64, String, EventKind, Vec<u8>)) -> Value {
    let value = std::str::from_utf8(&c.3)
        .ok()
        .and_then(|s| s.parse::<i64>().ok())
        .map_or(Value::Null, Value::from);
    json!({"key": c.1, "revision": c.0, "value": value, "delete": c.2 == EventKind::Delete})
}

/// Watcher `w`: runs until `target` names a revision it has delivered past, then records its
/// claim (`watch-end`) and returns what it saw.
pub async fn watcher(
    w: u64,
    mut rng: SmallRng,
    handles: Handles,
    start: Instant,
    mut target: watch::Receiver<Option<i64>>,
    resume_skips: bool,
) -> Result<Seen, String> {
    let process = 2_000 + w;
    let mut seen = Seen::default();
    let mut next = 0i64;
    loop {
        if let Some(end) = *target.borrow_and_update() {
            if next > end {
                let claim = json!({"watcher": w, "from_revision": seen.from, "to_revision": end});
                let mut e = Event::new(0, process, EventType::Ok, "watch-end", claim);
                e.time_ns = start.elapsed().as_nanos() as u64;
                seen.events.push(e);
                return Ok(seen);
            }
        }
        let node = {
            let h = lock(&handles);
            (!h.is_empty())
                .then(|| h.values().nth(rng.gen_range(0..h.len())).cloned())
                .flatten()
        };
        let Some(node) = node else {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        // The negative control's bug: resuming one revision past where it should.
        let resume_at = if resume_skips && next > 0 {
            next + 1
        } else {
            next
        };
        let (mut feed, _) = WatchFeed::new(&node, resume_at, KeyRange::all(), false);
        if next == 0 {
            seen.from = feed.next_revision();
        }
        // Hop to another node now and then even when this one stays up.
        let hop = tokio::time::sleep(Duration::from_millis(rng.gen_range(200..3000)));
        tokio::pin!(hop);
        loop {
            tokio::select! {
                batch = feed.next_batch() => match batch {
                    Ok((changes, _)) => {
                        let changes: Vec<_> = changes.iter().map(describe).collect();
                        let events: Vec<Value> = changes.iter().map(as_json).collect();
                        let mut e = Event::new(0, process, EventType::Ok, "watch",
                            json!({"watcher": w, "events": events}));
                        e.node = Some(format!("n{}", node.id()));
                        e.time_ns = start.elapsed().as_nanos() as u64;
                        seen.events.push(e);
                        seen.changes.extend(changes);
                        next = feed.next_revision();
                    }
                    Err(FeedError::Stopped) => break,
                    Err(e) => return Err(format!("watcher {w} on node {}: {e}", node.id())),
                },
                _ = &mut hop => break,
                changed = target.changed() => {
                    if changed.is_err() {
                        return Err(format!("watcher {w}: the simulation ended first"));
                    }
                    break;
                }
            }
        }
        next = next.max(feed.next_revision());
    }
}

/// Compares what watcher `w` saw with the converged change log over its range.
pub fn compare(w: u64, seen: &Seen, log: &[Change]) -> Result<(), String> {
    let want: Vec<_> = log
        .iter()
        .filter(|c| c.kv.mod_revision >= seen.from)
        .map(describe)
        .collect();
    if seen.changes == want {
        return Ok(());
    }
    let at = seen
        .changes
        .iter()
        .zip(&want)
        .position(|(a, b)| a != b)
        .unwrap_or(seen.changes.len().min(want.len()));
    Err(format!(
        "watcher {w} (from revision {}) saw {} changes, the log has {}; first difference at #{at}: saw {:?}, log {:?}",
        seen.from,
        seen.changes.len(),
        want.len(),
        seen.changes.get(at),
        want.get(at)
    ))
}
