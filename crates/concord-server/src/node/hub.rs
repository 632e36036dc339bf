//! Watch fan-out: one reader of the change log per node serves every watcher that has
//! caught up with it, as etcd's watchable store does with its synced watcher group.
//!
//! ```text
//!  store change log ──(one read per applied batch)──► WatchHub task
//!                                                      │ match each event: exact keys by map,
//!                                                      │ ranges and prefixes by scan
//!                                                      ├──► synced watcher (bounded queue)
//!                                                      └──► synced watcher ...
//!  a watcher behind the hub (new with an old start revision, or dropped for being slow)
//!  reads the change log itself (its own EventFeed) until it is past the hub, then joins it.
//! ```
//!
//! # Guarantees
//!
//! 1. **Exactly once, in order.** A watcher's [`WatchFeed`] keeps its own next revision.
//!    It joins the hub only when that revision is past everything the hub has already
//!    handed out ([`HubState::delivered`]), checked and recorded under the hub's lock, so
//!    the hub's next batch starts at or before it; events below it are skipped. When the
//!    hub drops it, it drains what was queued and resumes reading the change log itself
//!    from its next revision. Nothing is skipped, nothing is repeated.
//! 2. **A slow watcher never delays the others.** The hub never waits for a watcher: a
//!    watcher whose queue is full is dropped from the synced group (it catches up alone,
//!    reading the change log at its own pace) and the hub moves on.
//! 3. **Compaction**: only a watcher reading alone can fall behind a compaction; it is
//!    then cancelled with the compaction revision, as etcd does.
//! 4. **One read per applied batch** however many watchers are synced, and none when no
//!    watcher is (the hub only advances its position).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};

use concord_storage::disk::Disk;
use concord_storage::mvcc::types::Event;
use tokio::sync::mpsc;

use super::feed::{EventFeed, FeedError};
use super::NodeHandle;

/// Batches queued per synced watcher before the hub drops it as slow.
const WATCHER_QUEUE: usize = 64;

/// The keys a watcher follows, with etcd's meaning of `range_end`: empty for the key
/// alone, `"\0"` for every key from `key` on, else the half-open `[key, range_end)`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyRange {
    key: Vec<u8>,
    range_end: Vec<u8>,
}

impl KeyRange {
    /// A range as a `WatchCreateRequest` or `RangeRequest` states it.
    pub fn new(key: Vec<u8>, range_end: Vec<u8>) -> Self {
        Self { key, range_end }
    }

    /// Every key.
    pub fn all() -> Self {
        Self::new(vec![0], vec![0])
    }

    /// Whether `k` is in the range.
    pub fn contains(&self, k: &[u8]) -> bool {
        match self.range_end.as_slice() {
            [] => k == self.key.as_slice(),
            [0] => k >= self.key.as_slice(),
            end => k >= self.key.as_slice() && k < end,
        }
    }

    fn single_key(&self) -> Option<&[u8]> {
        self.range_end.is_empty().then_some(self.key.as_slice())
    }
}

/// One read of the change log, shared by the watchers it concerns.
#[derive(Debug)]
struct Delivery {
    events: Arc<Vec<Event>>,
    /// Indexes into `events` of the watcher's events.
    matches: Vec<u32>,
    /// The applied revision when the hub read it.
    applied: i64,
}

#[derive(Debug)]
struct Subscriber {
    range: KeyRange,
    prev_kv: bool,
    /// The first revision it wants (events below were read by the watcher itself).
    from: i64,
    tx: mpsc::Sender<Delivery>,
}

/// The synced watcher group. Ordered maps, so a simulation replays alike.
#[derive(Debug, Default)]
struct HubState {
    /// Every event up to this revision has been handed to the synced watchers.
    delivered: i64,
    /// Whether the hub's reader task runs (started on the first subscription).
    running: bool,
    next_id: u64,
    subs: BTreeMap<u64, Subscriber>,
    /// Watchers of one key, by key.
    by_key: BTreeMap<Vec<u8>, BTreeSet<u64>>,
    /// Watchers of a range or prefix, with their range.
    ranges: BTreeMap<u64, KeyRange>,
    /// Change-log reads made for the synced watchers, and watchers dropped as slow.
    reads: u64,
    dropped_slow: u64,
}

impl HubState {
    fn remove(&mut self, id: u64) {
        let Some(s) = self.subs.remove(&id) else {
            return;
        };
        match s.range.single_key() {
            Some(k) => {
                if let Some(ids) = self.by_key.get_mut(k) {
                    ids.remove(&id);
                    if ids.is_empty() {
                        self.by_key.remove(k);
                    }
                }
            }
            None => {
                self.ranges.remove(&id);
            }
        }
    }

    fn clear(&mut self) {
        self.subs.clear();
        self.by_key.clear();
        self.ranges.clear();
    }

    /// Hands `events` (whole revisions after `delivered`, read with previous values when
    /// `with_prev`) to the synced watchers they concern; drops a watcher whose queue is
    /// full or closed, or that wants previous values the read did not fetch (it joined
    /// after the read started).
    fn fan_out(&mut self, events: Vec<Event>, applied: i64, with_prev: bool) {
        let Some(last) = events.last().map(|e| e.kv.mod_revision) else {
            return;
        };
        let mut matches: BTreeMap<u64, Vec<u32>> = BTreeMap::new();
        for (i, e) in events.iter().enumerate() {
            let exact = self
                .by_key
                .get(e.kv.key.as_slice())
                .into_iter()
                .flatten()
                .copied();
            let ranged = self
                .ranges
                .iter()
                .filter(|(_, r)| r.contains(&e.kv.key))
                .map(|(id, _)| *id);
            for id in exact.chain(ranged) {
                if e.kv.mod_revision >= self.subs[&id].from {
                    matches.entry(id).or_default().push(i as u32);
                }
            }
        }
        let events = Arc::new(events);
        for (id, matches) in matches {
            if self.subs[&id].prev_kv && !with_prev {
                self.remove(id);
                continue;
            }
            let delivery = Delivery {
                events: events.clone(),
                matches,
                applied,
            };
            match self.subs[&id].tx.try_send(delivery) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(_)) => {
                    self.dropped_slow += 1;
                    self.remove(id);
                }
                Err(mpsc::error::TrySendError::Closed(_)) => self.remove(id),
            }
        }
        self.delivered = last;
    }
}

/// Counters of a [`WatchHub`] (for `/metrics`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HubStats {
    /// Watchers served by the hub now.
    pub synced: usize,
    /// Change-log reads made for them since start.
    pub reads: u64,
    /// Watchers dropped from the hub because their queue was full (they catch up alone).
    pub dropped_slow: u64,
}

/// A node's watch fan-out; see the module. Cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct WatchHub {
    state: Arc<Mutex<HubState>>,
}

impl WatchHub {
    fn lock(&self) -> MutexGuard<'_, HubState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// What the hub did so far.
    pub fn stats(&self) -> HubStats {
        let s = self.lock();
        HubStats {
            synced: s.subs.len(),
            reads: s.reads,
            dropped_slow: s.dropped_slow,
        }
    }

    /// Joins the synced group at revision `next`, if the hub has not handed out anything
    /// at or past it yet; starts the reader on first use.
    fn subscribe<D: Disk>(
        &self,
        node: &NodeHandle<D>,
        next: i64,
        range: &KeyRange,
        prev_kv: bool,
    ) -> Option<(u64, mpsc::Receiver<Delivery>)> {
        let mut s = self.lock();
        if !s.running {
            s.running = true;
            let (feed, current) = EventFeed::new(node, 0, false);
            s.delivered = current;
            tokio::spawn(run(self.clone(), feed, node.watch_status()));
        }
        if next <= s.delivered {
            return None;
        }
        let (tx, rx) = mpsc::channel(WATCHER_QUEUE);
        let id = s.next_id;
        s.next_id += 1;
        match range.single_key() {
            Some(k) => {
                s.by_key.entry(k.to_vec()).or_default().insert(id);
            }
            None => {
                s.ranges.insert(id, range.clone());
            }
        }
        s.subs.insert(
            id,
            Subscriber {
                range: range.clone(),
                prev_kv,
                from: next,
                tx,
            },
        );
        Some((id, rx))
    }

    /// Takes watcher `id` out of the synced group (a no-op if it is no longer in it; ids
    /// are never reused).
    fn unsubscribe(&self, id: u64) {
        self.lock().remove(id);
    }
}

/// The hub's reader: one change-log read per applied batch while anyone is synced.
async fn run<D: Disk>(
    hub: WatchHub,
    mut feed: EventFeed<D>,
    mut status: tokio::sync::watch::Receiver<super::NodeStatus>,
) {
    loop {
        let applied = status.borrow_and_update().state.revision;
        if feed.next_revision() <= applied {
            let prev_kv = {
                // (A watcher leaves the group when its feed is dropped, so an idle hub
                // reads nothing.)
                let mut s = hub.lock();
                if s.subs.is_empty() {
                    // Nobody to serve: move past what is applied without reading it.
                    s.delivered = applied;
                    feed.skip_to(applied + 1);
                    continue;
                }
                s.subs.values().any(|sub| sub.prev_kv)
            };
            feed.set_prev_kv(prev_kv);
            match feed.try_batch() {
                Ok(Some((events, applied))) => {
                    {
                        let mut s = hub.lock();
                        s.reads += 1;
                        s.fan_out(events, applied, prev_kv);
                    }
                    // Let the watchers (and everything else) run between two batches.
                    tokio::task::yield_now().await;
                    continue;
                }
                // The status ran ahead of the store: wait for the next change.
                Ok(None) => {}
                Err(e) => {
                    // The hub cannot go on from here (compacted past it, a failed read):
                    // every synced watcher continues alone from its own position, where
                    // it meets the same condition and reports it.
                    tracing::debug!(error = %e, "watch hub read failed; watchers continue alone");
                    let mut s = hub.lock();
                    s.clear();
                    s.delivered = applied;
                    feed.skip_to(applied + 1);
                    continue;
                }
            }
        }
        if status.changed().await.is_err() {
            hub.lock().clear();
            return;
        }
    }
}

/// One watcher's events over `range`: from the hub while synced, from the change log
/// itself while behind. Same contract as [`EventFeed`], filtered to the range.
#[derive(Debug)]
pub struct WatchFeed<D: Disk> {
    node: NodeHandle<D>,
    own: EventFeed<D>,
    range: KeyRange,
    prev_kv: bool,
    next: i64,
    /// The hub's queue for this watcher, and its id there, while synced.
    synced: Option<(u64, mpsc::Receiver<Delivery>)>,
}

impl<D: Disk> Drop for WatchFeed<D> {
    fn drop(&mut self) {
        if let Some((id, _)) = &self.synced {
            self.node.watch_hub().unsubscribe(*id);
        }
    }
}

impl<D: Disk> WatchFeed<D> {
    /// A feed of `node`'s changes over `range` from `start_revision` (if positive) or
    /// from the revision after the current one; also returns the current revision.
    pub fn new(
        node: &NodeHandle<D>,
        start_revision: i64,
        range: KeyRange,
        prev_kv: bool,
    ) -> (Self, i64) {
        let (own, current) = EventFeed::new(node, start_revision, prev_kv);
        let feed = WatchFeed {
            node: node.clone(),
            next: own.next_revision(),
            own,
            range,
            prev_kv,
            synced: None,
        };
        (feed, current)
    }

    /// The first revision not delivered yet.
    pub fn next_revision(&self) -> i64 {
        self.next
    }

    /// Whether the hub serves this watcher now (false while it reads alone).
    pub fn is_synced(&self) -> bool {
        self.synced.is_some()
    }

    /// The watcher's next events (whole revisions, in order, at least one), with the
    /// applied revision at the time of the read. Cancel-safe.
    pub async fn next_batch(&mut self) -> Result<(Vec<Event>, i64), FeedError> {
        loop {
            if let Some((_, rx)) = &mut self.synced {
                match rx.recv().await {
                    Some(d) => {
                        let events: Vec<Event> = d
                            .matches
                            .iter()
                            .map(|&i| &d.events[i as usize])
                            .filter(|e| e.kv.mod_revision >= self.next)
                            .map(|e| {
                                let mut e = e.clone();
                                if !self.prev_kv {
                                    e.prev_kv = None;
                                }
                                e
                            })
                            .collect();
                        if let Some(last) = events.last().map(|e| e.kv.mod_revision) {
                            self.next = last + 1;
                            return Ok((events, d.applied));
                        }
                    }
                    None => {
                        // Dropped as slow (or the hub stopped): go on alone from here.
                        self.synced = None;
                        self.own.skip_to(self.next);
                    }
                }
                continue;
            }
            let hub = self.node.watch_hub();
            if let Some(sub) = hub.subscribe(&self.node, self.next, &self.range, self.prev_kv) {
                self.synced = Some(sub);
                continue;
            }
            let (batch, applied) = self.own.next_batch().await?;
            self.next = self.own.next_revision();
            let events: Vec<Event> = batch
                .into_iter()
                .filter(|e| self.range.contains(&e.kv.key))
                .collect();
            if !events.is_empty() {
                return Ok((events, applied));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::KeyRange;

    #[test]
    fn key_ranges_mean_what_etcd_means() {
        let one = KeyRange::new(b"a".to_vec(), vec![]);
        assert!(one.contains(b"a") && !one.contains(b"ab"));
        let half_open = KeyRange::new(b"a".to_vec(), b"b".to_vec());
        assert!(half_open.contains(b"ab") && !half_open.contains(b"b"));
        let from = KeyRange::new(b"a".to_vec(), vec![0]);
        assert!(from.contains(b"zzz") && !from.contains(b"0"));
        assert!(KeyRange::all().contains(b"\x00"));
        assert!(KeyRange::all().contains(b"anything"));
    }
}
