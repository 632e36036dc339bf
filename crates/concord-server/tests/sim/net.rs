//! The simulated network: every batch goes through the wire encoding, then waits a random
//! delay (so batches reorder) on the simulation's clock; links can be cut, batches dropped
//! at random, and nodes taken down. All randomness comes from the run's seed.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use concord_raft::{Message, NodeId};
use concord_runtime::codec;
use concord_runtime::transport::{GroupId, PeerTransport, Router, TransportError};
use rand::rngs::SmallRng;
use rand::Rng;

pub struct NetState {
    pub rng: SmallRng,
    pub routers: BTreeMap<NodeId, Router>,
    pub up: BTreeSet<NodeId>,
    /// Directed links that drop everything.
    pub cut: BTreeSet<(NodeId, NodeId)>,
    /// Chance, in thousandths, that a batch is lost.
    pub drop_per_mille: u32,
    /// Range of one-way delays, in milliseconds.
    pub delay_ms: (u64, u64),
    pub batches_sent: u64,
    pub batches_dropped: u64,
}

#[derive(Clone)]
pub struct SimNet(Arc<Mutex<NetState>>);

impl SimNet {
    pub fn new(rng: SmallRng) -> Self {
        SimNet(Arc::new(Mutex::new(NetState {
            rng,
            routers: BTreeMap::new(),
            up: BTreeSet::new(),
            cut: BTreeSet::new(),
            drop_per_mille: 0,
            delay_ms: (1, 5),
            batches_sent: 0,
            batches_dropped: 0,
        })))
    }

    pub fn lock(&self) -> MutexGuard<'_, NetState> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Node `id`'s sending side.
    pub fn link(&self, id: NodeId) -> SimLink {
        SimLink {
            from: id,
            net: self.clone(),
        }
    }

    /// Splits the nodes in two sides that cannot talk to each other.
    pub fn partition(&self, side: &BTreeSet<NodeId>) {
        let mut s = self.lock();
        let all: Vec<NodeId> = s.routers.keys().copied().collect();
        for &a in &all {
            for &b in &all {
                if side.contains(&a) != side.contains(&b) {
                    s.cut.insert((a, b));
                }
            }
        }
    }

    pub fn heal(&self) {
        let mut s = self.lock();
        s.cut.clear();
        s.drop_per_mille = 0;
    }
}

pub struct SimLink {
    from: NodeId,
    net: SimNet,
}

impl PeerTransport for SimLink {
    fn send_group(
        &self,
        to: NodeId,
        group: GroupId,
        msgs: Vec<Message>,
    ) -> Result<(), TransportError> {
        let (delay, net) = {
            let mut s = self.net.lock();
            // A down peer or a cut link refuses the connection: Raft hears "unreachable".
            if !s.up.contains(&self.from) || !s.up.contains(&to) || s.cut.contains(&(self.from, to))
            {
                return Err(TransportError::Unreachable(to));
            }
            s.batches_sent += 1;
            let roll = s.rng.gen_range(0..1000);
            if roll < s.drop_per_mille {
                s.batches_dropped += 1;
                return Ok(());
            }
            let (lo, hi) = s.delay_ms;
            (
                Duration::from_millis(s.rng.gen_range(lo..=hi)),
                self.net.clone(),
            )
        };
        let bytes = codec::encode_batch(&msgs);
        let from = self.from;
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let router = {
                let s = net.lock();
                // Lost with its connection if either end went down or the link was cut
                // while it travelled.
                if !s.up.contains(&to) || !s.up.contains(&from) || s.cut.contains(&(from, to)) {
                    return;
                }
                s.routers.get(&to).cloned()
            };
            let (Some(router), Ok(msgs)) = (router, codec::decode_batch(&bytes)) else {
                return;
            };
            let _ = router.route(group, msgs);
        });
        Ok(())
    }
}
