//! Merges to one replica, batched: a coordinator's merges for a member go through one
//! queue per member, and whatever has queued up while earlier batches were on the wire
//! leaves as one `MergeBatch` call (at most [`MAX_BATCH`] merges, [`IN_FLIGHT`] calls at
//! once). The replica queues the whole batch for its group commit before it waits, so one
//! call and usually one fsync carry many clients' writes; a lone merge still leaves at
//! once. Each merge keeps its own answer.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use concord_core::crdt::RedisString;
use concord_proto::peer::replica_client::ReplicaClient;
use concord_proto::peer::{ReplicaMerge, ReplicaMergeBatch};
use concord_raft::NodeId;
use concord_storage::ap::state_from_bytes;
use tokio::sync::{mpsc, oneshot, Semaphore};
use tonic::transport::Channel;

use super::{bucket_of, stopped, ApError, ApNode};

/// Most merges in one call.
pub const MAX_BATCH: usize = 512;
/// Most calls in flight to one replica.
pub const IN_FLIGHT: usize = 4;

/// A merge waiting for its batch.
#[derive(Debug)]
pub struct PendingMerge {
    merge: ReplicaMerge,
    done: oneshot::Sender<Result<(), ApError>>,
}

/// Sends the merges queued for member `to` until the queue's senders are gone.
pub async fn merge_batches(
    to: NodeId,
    client: ReplicaClient<Channel>,
    cluster_id: u64,
    timeout: Duration,
    mut queue: mpsc::UnboundedReceiver<PendingMerge>,
) {
    let slots = Arc::new(Semaphore::new(IN_FLIGHT));
    loop {
        // A batch forms while every slot is busy.
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let Some(first) = queue.recv().await else {
            return;
        };
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(m) => batch.push(m),
                Err(_) => break,
            }
        }
        let mut client = client.clone();
        tokio::spawn(async move {
            let (merges, dones): (Vec<_>, Vec<_>) =
                batch.into_iter().map(|p| (p.merge, p.done)).unzip();
            let request = ReplicaMergeBatch { cluster_id, merges };
            let outcome = tokio::time::timeout(timeout, client.merge_batch(request)).await;
            let failed = |why: String| ApError::Unavailable(format!("replica {to}: {why}"));
            match outcome {
                Ok(Ok(ack)) => {
                    let errors = ack.into_inner().errors;
                    for (i, done) in dones.into_iter().enumerate() {
                        let answer = match errors.get(i) {
                            Some(e) if e.is_empty() => Ok(()),
                            Some(e) => Err(failed(e.clone())),
                            None => Err(failed("no answer for this merge".into())),
                        };
                        let _ = done.send(answer);
                    }
                }
                Ok(Err(status)) => {
                    for done in dones {
                        let _ = done.send(Err(failed(status.message().to_string())));
                    }
                }
                Err(_) => {
                    for done in dones {
                        let _ = done.send(Err(failed("timed out".into())));
                    }
                }
            }
            drop(slot);
        });
    }
}

impl ApNode {
    /// Queues a merge of `state` into `key` for member `to`; resolves once that replica
    /// made it durable, or failed.
    pub(super) fn queue_merge(
        &self,
        to: NodeId,
        merge: ReplicaMerge,
    ) -> impl Future<Output = Result<(), ApError>> {
        let (done, answer) = oneshot::channel();
        let queued = match self.merge_queue(to) {
            Some(q) => q.send(PendingMerge { merge, done }).is_ok(),
            None => false,
        };
        async move {
            if !queued {
                return Err(ApError::Unavailable(format!("replica {to} is unreachable")));
            }
            answer
                .await
                .unwrap_or_else(|_| Err(ApError::Unavailable(format!("replica {to} went away"))))
        }
    }

    /// Starts one merge of a batch received from a coordinator: queued for the group
    /// commit now, awaited later.
    pub(super) fn start_merge(
        &self,
        m: ReplicaMerge,
    ) -> impl Future<Output = Result<(), ApError>> + use<> {
        let node = self.clone();
        let checked = bucket_of(m.bucket)
            .map_err(|s| ApError::Refused(s.message().to_string()))
            .and_then(|b| {
                let state = state_from_bytes(&m.state).map_err(ApError::Refused)?;
                Ok((b, state))
            });
        let hint_for = (m.hint_for != 0).then_some(NodeId(m.hint_for));
        // A plain merge is queued at once; a hint goes through its own store call.
        let queued: Option<oneshot::Receiver<_>> = match (&checked, hint_for) {
            (Ok((bucket, state)), None) => {
                let (tx, rx) = oneshot::channel();
                let state: RedisString = state.clone();
                self.inner.store.merge_then(*bucket, &m.key, state, move |out| {
                    let _ = tx.send(out);
                });
                Some(rx)
            }
            _ => None,
        };
        async move {
            let (bucket, state) = checked?;
            match queued {
                Some(rx) => {
                    rx.await.map_err(|_| stopped())??;
                    Ok(())
                }
                None => node.merge_local(bucket, &m.key, state, hint_for).await,
            }
        }
    }
}
