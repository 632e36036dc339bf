//! Batched ReadIndex reads: every read that arrives in one driver iteration shares one
//! `read_index` context; once Raft confirms it at an index, the reads wait for the apply
//! to reach that index.

use std::time::{Duration, Instant};

use concord_raft::{NodeId, ReadState};

use super::handle::Reply;
use crate::error::NodeError;

/// The reads of one node, by state.
pub(super) struct Reads {
    id: NodeId,
    next_ctx: u64,
    /// Reads waiting for their ReadState, by context, with the time the round started.
    pending: Vec<(u64, Instant, Vec<Reply<()>>)>,
    /// Reads confirmed at an index, waiting for the apply to reach it.
    confirmed: Vec<(u64, Vec<Reply<()>>)>,
}

impl Reads {
    pub(super) fn new(id: NodeId) -> Self {
        Self {
            id,
            next_ctx: 0,
            pending: Vec::new(),
            confirmed: Vec::new(),
        }
    }

    /// A fresh context for `read_index`: 16 bytes, this node's id then a counter, unique
    /// among every node's reads (the leader keys pending reads by it).
    pub(super) fn next_context(&mut self) -> (u64, Vec<u8>) {
        self.next_ctx += 1;
        let mut bytes = self.id.get().to_le_bytes().to_vec();
        bytes.extend_from_slice(&self.next_ctx.to_le_bytes());
        (self.next_ctx, bytes)
    }

    /// Records `txs` as waiting for the ReadState of context `ctx`.
    pub(super) fn wait(&mut self, ctx: u64, txs: Vec<Reply<()>>) {
        self.pending.push((ctx, Instant::now(), txs));
    }

    /// Moves the reads of each ReadState to "confirmed at its index"; calls `confirmed`
    /// with the time each round took.
    pub(super) fn confirm(&mut self, states: Vec<ReadState>, mut confirmed: impl FnMut(Duration)) {
        for rs in states {
            let Ok(ctx) = <[u8; 16]>::try_from(rs.request_ctx.as_slice()) else {
                continue;
            };
            let mut c = [0u8; 8];
            c.copy_from_slice(&ctx[8..]);
            let ctx = u64::from_le_bytes(c);
            if let Some(pos) = self.pending.iter().position(|(c, _, _)| *c == ctx) {
                let (_, started, txs) = self.pending.remove(pos);
                confirmed(started.elapsed());
                self.confirmed.push((rs.index, txs));
            }
        }
    }

    /// Answers the confirmed reads whose index `applied` has reached.
    pub(super) fn release(&mut self, applied: u64) {
        let mut i = 0;
        while i < self.confirmed.len() {
            if self.confirmed[i].0 <= applied {
                let (_, txs) = self.confirmed.swap_remove(i);
                for tx in txs {
                    let _ = tx.send(Ok(()));
                }
            } else {
                i += 1;
            }
        }
    }

    /// Fails the reads nobody confirmed yet (the leader changed: they may never be), so
    /// their clients retry.
    pub(super) fn fail_pending(&mut self, err: &NodeError) {
        for (_, _, txs) in self.pending.drain(..) {
            for tx in txs {
                let _ = tx.send(Err(err.clone()));
            }
        }
    }

    /// Fails every read.
    pub(super) fn fail_all(&mut self, err: &NodeError) {
        self.fail_pending(err);
        for (_, txs) in self.confirmed.drain(..) {
            for tx in txs {
                let _ = tx.send(Err(err.clone()));
            }
        }
    }

    /// Forgets reads whose callers gave up.
    pub(super) fn sweep(&mut self) {
        for (_, _, txs) in self.pending.iter_mut() {
            txs.retain(|tx| !tx.is_closed());
        }
        self.pending.retain(|(_, _, txs)| !txs.is_empty());
        for (_, txs) in self.confirmed.iter_mut() {
            txs.retain(|tx| !tx.is_closed());
        }
        self.confirmed.retain(|(_, txs)| !txs.is_empty());
    }
}
