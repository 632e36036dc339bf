//! Requests over a whole bucket (`KEYS`, `SCAN`, `DBSIZE`, `FLUSHDB`, `RANDOMKEY`): every
//! member's keys of the bucket, each key's states joined over the members that answered,
//! so that a tombstone on one replica hides a stale value on another.
//!
//! Every key lives on N members, so the listing is complete while fewer than N members
//! are unreadable; with more, the request fails rather than answer a partial list. The
//! cost of the whole-bucket ones is a scan of every member's replica of the bucket, held
//! in memory: they are for administration and modest buckets, as `KEYS` is in Redis.
//! `SCAN` reads one page ([`ApNode::scan_page`]).

use std::collections::{BTreeMap, BTreeSet};

use concord_core::crdt::{Crdt, RedisValue};
use concord_proto::peer::{ReplicaKey, ReplicaKeys, ReplicaScan};
use concord_raft::NodeId;
use concord_storage::ap::{scan_position, state_from_bytes, KeyStates};
use tokio::task::JoinSet;

use super::{blocking, read, ApError, ApNode, SCAN_PAGE};

impl ApNode {
    /// Every key of `bucket` any readable member holds, with its joined state
    /// (tombstones and expired keys included).
    pub async fn bucket_states(
        &self,
        bucket: u8,
    ) -> Result<BTreeMap<Vec<u8>, RedisValue>, ApError> {
        let scans = self
            .ask_members(bucket, move |node, m| async move {
                node.scan_member(m, bucket).await
            })
            .await?;
        Ok(joined(scans.into_iter().flatten()))
    }

    /// One page of a scan of `bucket` (Redis's `SCAN`): the keys at [`scan_position`]s
    /// from `from` (0: the first) up to the returned cursor (0: the scan is over), with
    /// their states joined over the members that answered (tombstones and expired keys
    /// included). Each member reads about `count` of its keys, whatever the bucket's size,
    /// and the page holds every key of its positions that a readable member holds: every
    /// member has sent all its keys up to the last position of its page, so the keys up to
    /// the least of those are complete.
    pub async fn scan_page(
        &self,
        bucket: u8,
        from: u64,
        count: usize,
    ) -> Result<(u64, BTreeMap<Vec<u8>, RedisValue>), ApError> {
        let limit = count.clamp(2, SCAN_PAGE);
        let pages = self
            .ask_members(bucket, move |node, m| async move {
                node.scan_member_page(m, bucket, from, limit).await
            })
            .await?;
        let Some(pages) = pages.into_iter().collect::<Option<Vec<_>>>() else {
            // A member that pages only by key (an older build): the whole bucket, then the
            // page of it.
            let mut states = self.bucket_states(bucket).await?;
            let (next, page) = hash_page(states.keys(), from, count);
            let page: BTreeSet<Vec<u8>> = page.into_iter().cloned().collect();
            states.retain(|k, _| page.contains(k));
            return Ok((next, states));
        };
        let bound = pages
            .iter()
            .filter(|(_, done)| !done)
            .filter_map(|(page, _)| page.last())
            .map(|(key, _)| scan_position(key))
            .min();
        let within = pages
            .into_iter()
            .flat_map(|(page, _)| page)
            .filter(|(key, _)| bound.is_none_or(|b| scan_position(key) <= b));
        Ok((bound.map_or(0, |b| b + 1), joined(within)))
    }

    /// `each` of every healthy member of the ring, run at once; their answers, or an error
    /// when more of them failed (or are suspected) than `bucket` tolerates: every key lives
    /// on N members, so N - 1 may be missing.
    async fn ask_members<T, F, Fut>(&self, bucket: u8, each: F) -> Result<Vec<T>, ApError>
    where
        T: Send + 'static,
        F: Fn(ApNode, NodeId) -> Fut,
        Fut: std::future::Future<Output = Result<T, ApError>> + Send + 'static,
    {
        self.ring_ready()?;
        let members: Vec<NodeId> = read(&self.inner.ring).nodes().collect();
        let tolerated = (self.bucket(bucket).n_val as usize)
            .min(members.len())
            .saturating_sub(1);
        let mut asked = JoinSet::new();
        let mut failed = Vec::new();
        for m in members {
            if !self.is_healthy(m) {
                failed.push(format!("member {m} is suspected"));
                continue;
            }
            asked.spawn(each(self.clone(), m));
        }
        let mut answers = Vec::new();
        while let Some(done) = asked.join_next().await {
            match done {
                Ok(Ok(answer)) => answers.push(answer),
                Ok(Err(e)) => failed.push(e.to_string()),
                Err(e) => failed.push(format!("scan task failed: {e}")),
            }
        }
        if failed.len() > tolerated {
            return Err(ApError::Unavailable(format!(
                "{} members could not be read, {tolerated} may be: {}",
                failed.len(),
                failed.join("; ")
            )));
        }
        Ok(answers)
    }

    /// Up to `limit` keys of `bucket` on member `m` from scan position `from` on, ending at
    /// a whole position, and whether no key follows them there
    /// ([`ApStore::scan_positions`](concord_storage::ap::ApStore::scan_positions)); `None`
    /// when `m` pages only by key (an older build).
    async fn scan_member_page(
        &self,
        m: NodeId,
        bucket: u8,
        from: u64,
        limit: usize,
    ) -> Result<Option<ScanPage>, ApError> {
        if m == self.me() {
            let node = self.clone();
            return blocking(move || {
                Ok(Some(node.inner.store.scan_positions(bucket, from, limit)?))
            })
            .await;
        }
        let request = ReplicaScan {
            cluster_id: self.inner.cluster_id,
            bucket: u32::from(bucket),
            limit: limit as u32,
            from_position: from,
            by_position: true,
            ..Default::default()
        };
        let page = self.scan_call(m, request).await?;
        if !page.by_position {
            return Ok(None);
        }
        let keys = decoded(m, page.keys)?;
        Ok(Some((keys, page.done)))
    }

    /// Every key of `bucket` on member `m`, page by page.
    async fn scan_member(&self, m: NodeId, bucket: u8) -> Result<KeyStates, ApError> {
        if m == self.me() {
            let node = self.clone();
            return blocking(move || {
                let mut out = KeyStates::new();
                loop {
                    let after = out.last().map(|(k, _): &(Vec<u8>, _)| k.as_slice());
                    let page = node.inner.store.scan(bucket, after, SCAN_PAGE)?;
                    let done = page.len() < SCAN_PAGE;
                    out.extend(page);
                    if done {
                        return Ok(out);
                    }
                }
            })
            .await;
        }
        let mut out = KeyStates::new();
        loop {
            let request = ReplicaScan {
                cluster_id: self.inner.cluster_id,
                bucket: u32::from(bucket),
                after: out
                    .last()
                    .map(|(k, _)| k.clone())
                    .unwrap_or_default()
                    .into(),
                limit: SCAN_PAGE as u32,
                has_after: !out.is_empty(),
                ..Default::default()
            };
            let page = self.scan_call(m, request).await?;
            out.extend(decoded(m, page.keys)?);
            if page.done {
                return Ok(out);
            }
        }
    }

    /// Member `m`'s answer to `request`, within the request timeout.
    async fn scan_call(&self, m: NodeId, request: ReplicaScan) -> Result<ReplicaKeys, ApError> {
        let mut client = self
            .client(m)
            .ok_or_else(|| ApError::Unavailable(format!("member {m} is unknown")))?;
        match tokio::time::timeout(self.config().timeout, client.scan(request)).await {
            Ok(Ok(page)) => Ok(page.into_inner()),
            Ok(Err(e)) => Err(ApError::Unavailable(format!("member {m}: {}", e.message()))),
            Err(_) => Err(ApError::Unavailable(format!("member {m} timed out"))),
        }
    }
}

/// A member's page of a scan by position: its keys with their states, and whether no key
/// follows them.
type ScanPage = (KeyStates, bool);

/// The keys member `m` sent, with their states decoded.
fn decoded(m: NodeId, keys: Vec<ReplicaKey>) -> Result<KeyStates, ApError> {
    keys.into_iter()
        .map(|k| {
            let state = state_from_bytes(&k.state)
                .map_err(|e| ApError::Unavailable(format!("member {m} answered {e}")))?;
            Ok((k.key.to_vec(), state))
        })
        .collect()
}

/// Each key's states, as several members sent them, joined.
fn joined(
    entries: impl IntoIterator<Item = (Vec<u8>, RedisValue)>,
) -> BTreeMap<Vec<u8>, RedisValue> {
    let mut joined: BTreeMap<Vec<u8>, RedisValue> = BTreeMap::new();
    for (key, state) in entries {
        joined
            .entry(key)
            .and_modify(|s| s.merge(&state))
            .or_insert(state);
    }
    joined
}

/// One page of a scan in [`scan_position`] order over `names` (keys of a bucket, members
/// of a set, fields of a hash): the names at or after `cursor`, at most `count`, and the
/// cursor of the next page (0 when this one ends the scan). A name's position depends on
/// nothing but the name; names sharing the next position are returned by the next call
/// (duplicates are allowed, skipping is not).
pub(crate) fn hash_page<'a>(
    names: impl IntoIterator<Item = &'a Vec<u8>>,
    cursor: u64,
    count: usize,
) -> (u64, Vec<&'a Vec<u8>>) {
    let mut positioned: Vec<(u64, &Vec<u8>)> = names
        .into_iter()
        .map(|k| (scan_position(k), k))
        .filter(|(p, _)| *p >= cursor)
        .collect();
    positioned.sort_unstable();
    let next = positioned.get(count).map_or(0, |(p, _)| *p);
    (
        next,
        positioned.into_iter().take(count).map(|(_, k)| k).collect(),
    )
}
