//! Requests over a whole bucket (`KEYS`, `SCAN`, `DBSIZE`, `FLUSHDB`, `RANDOMKEY`): every
//! member's keys of the bucket, each key's states joined over the members that answered,
//! so that a tombstone on one replica hides a stale value on another.
//!
//! Every key lives on N members, so the listing is complete while fewer than N members
//! are unreadable; with more, the request fails rather than answer a partial list. The
//! cost is a scan of every member's replica of the bucket, held in memory: these
//! commands are for administration and modest buckets, as `KEYS` is in Redis.

use std::collections::BTreeMap;

use concord_core::crdt::{Crdt, RedisValue};
use concord_proto::peer::ReplicaScan;
use concord_raft::NodeId;
use concord_storage::ap::state_from_bytes;
use tokio::task::JoinSet;

use super::{blocking, read, ApError, ApNode, SCAN_PAGE};

impl ApNode {
    /// Every key of `bucket` any readable member holds, with its joined state
    /// (tombstones and expired keys included).
    pub async fn bucket_states(
        &self,
        bucket: u8,
    ) -> Result<BTreeMap<Vec<u8>, RedisValue>, ApError> {
        self.ring_ready()?;
        let members: Vec<NodeId> = read(&self.inner.ring).nodes().collect();
        let tolerated = (self.bucket(bucket).n_val as usize)
            .min(members.len())
            .saturating_sub(1);
        let mut scans = JoinSet::new();
        let mut failed = Vec::new();
        for m in members {
            if !self.is_healthy(m) {
                failed.push(format!("member {m} is suspected"));
                continue;
            }
            let node = self.clone();
            scans.spawn(async move { node.scan_member(m, bucket).await });
        }
        let mut joined: BTreeMap<Vec<u8>, RedisValue> = BTreeMap::new();
        while let Some(done) = scans.join_next().await {
            match done {
                Ok(Ok(entries)) => {
                    for (key, state) in entries {
                        joined
                            .entry(key)
                            .and_modify(|s| s.merge(&state))
                            .or_insert(state);
                    }
                }
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
        Ok(joined)
    }

    /// Every key of `bucket` on member `m`, page by page.
    async fn scan_member(
        &self,
        m: NodeId,
        bucket: u8,
    ) -> Result<Vec<(Vec<u8>, RedisValue)>, ApError> {
        if m == self.me() {
            let node = self.clone();
            return blocking(move || {
                let mut out = Vec::new();
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
        let mut client = self
            .client(m)
            .ok_or_else(|| ApError::Unavailable(format!("member {m} is unknown")))?;
        let timeout = self.config().timeout;
        let mut out: Vec<(Vec<u8>, RedisValue)> = Vec::new();
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
            };
            let page = match tokio::time::timeout(timeout, client.scan(request)).await {
                Ok(Ok(page)) => page.into_inner(),
                Ok(Err(e)) => {
                    return Err(ApError::Unavailable(format!("member {m}: {}", e.message())))
                }
                Err(_) => return Err(ApError::Unavailable(format!("member {m} timed out"))),
            };
            for k in page.keys {
                let state = state_from_bytes(&k.state)
                    .map_err(|e| ApError::Unavailable(format!("member {m} answered {e}")))?;
                out.push((k.key.to_vec(), state));
            }
            if page.done {
                return Ok(out);
            }
        }
    }
}
