//! Fault injection as a wrapper around any [`PeerTransport`]: hold batches back, drop them
//! at random, or cut the links to some peers. The gRPC transport and the in-process
//! network get the same faults this way, and neither carries test-only code paths. Used by
//! the chaos harness's delay fault (the kernel here has no `netem`) and by tests. (The
//! whole-node simulation has its own network, which draws delays and losses from the run's
//! seed on the simulated clock.)
//!
//! # Guarantees
//!
//! 1. With no fault set, a batch goes to the wrapped transport at once and its answer is
//!    returned unchanged.
//! 2. A cut link answers [`TransportError::Unreachable`] (Raft is told, as for a real
//!    outage); a dropped batch answers `Ok` and vanishes (as a lost packet would).
//! 3. Delayed batches are pipelined: each is held back on its own, so later batches are
//!    not held behind earlier ones (Raft tolerates the reordering this may cause).

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use concord_raft::{Message, NodeId};

use crate::transport::{GroupId, PeerTransport, TransportError};

#[derive(Debug, Default)]
struct Faults {
    delay: Duration,
    drop_per_mille: u32,
    cut: BTreeSet<NodeId>,
    // xorshift state for drops (never 0).
    rng: u64,
}

/// A [`PeerTransport`] with switchable faults in front of another one.
#[derive(Debug)]
pub struct FaultyTransport<T> {
    inner: Arc<T>,
    // Whether any fault was set since the last heal: without one, a batch goes straight to
    // the wrapped transport, with no lock on the send path.
    active: AtomicBool,
    faults: Mutex<Faults>,
}

impl<T: PeerTransport> FaultyTransport<T> {
    /// `inner` with no fault set; `seed` drives the random drops.
    pub fn new(inner: Arc<T>, seed: u64) -> Self {
        Self {
            inner,
            active: AtomicBool::new(false),
            faults: Mutex::new(Faults {
                rng: seed | 1,
                ..Faults::default()
            }),
        }
    }

    /// The wrapped transport.
    pub fn inner(&self) -> &Arc<T> {
        &self.inner
    }

    fn lock(&self) -> MutexGuard<'_, Faults> {
        // Plain data behind the lock; a panic elsewhere leaves it consistent.
        self.faults.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The faults, for a change that sets one.
    fn set(&self) -> MutexGuard<'_, Faults> {
        let f = self.lock();
        self.active.store(true, Ordering::Release);
        f
    }

    /// Holds every outgoing batch back by `delay` (zero: no delay).
    pub fn set_delay(&self, delay: Duration) {
        self.set().delay = delay;
    }

    /// Drops each batch with probability `per_mille`/1000 (0: none).
    pub fn set_drop_per_mille(&self, per_mille: u32) {
        self.set().drop_per_mille = per_mille.min(1000);
    }

    /// Cuts the link to `to` until [`FaultyTransport::heal`].
    pub fn cut(&self, to: NodeId) {
        self.set().cut.insert(to);
    }

    /// Lifts every fault.
    pub fn heal(&self) {
        let mut f = self.lock();
        f.delay = Duration::ZERO;
        f.drop_per_mille = 0;
        f.cut.clear();
        self.active.store(false, Ordering::Release);
    }
}

impl<T: PeerTransport> PeerTransport for FaultyTransport<T> {
    fn send_group(
        &self,
        to: NodeId,
        group: GroupId,
        msgs: Vec<Message>,
    ) -> Result<(), TransportError> {
        if !self.active.load(Ordering::Acquire) {
            return self.inner.send_group(to, group, msgs);
        }
        let delay = {
            let mut f = self.lock();
            if f.cut.contains(&to) {
                return Err(TransportError::Unreachable(to));
            }
            if f.drop_per_mille > 0 {
                f.rng ^= f.rng << 13;
                f.rng ^= f.rng >> 7;
                f.rng ^= f.rng << 17;
                if (f.rng % 1000) < u64::from(f.drop_per_mille) {
                    return Ok(());
                }
            }
            f.delay
        };
        if delay.is_zero() {
            return self.inner.send_group(to, group, msgs);
        }
        let inner = self.inner.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let _ = inner.send_group(to, group, msgs);
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::LocalNetwork;
    use concord_raft::MessageType;

    fn msg(term: u64) -> Message {
        Message {
            msg_type: MessageType::Heartbeat,
            from: NodeId(1),
            to: NodeId(2),
            term,
            ..Message::default()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn delays_drops_and_cuts_then_heals() {
        let net = LocalNetwork::new();
        let (t1, _r1) = net.attach(NodeId(1));
        let (_t2, r2) = net.attach(NodeId(2));
        let mut inbox = r2.register(0);
        let faulty = FaultyTransport::new(Arc::new(t1), 42);

        faulty.send_group(NodeId(2), 0, vec![msg(1)]).unwrap();
        assert_eq!(inbox.recv().await.unwrap(), vec![msg(1)]);

        faulty.set_delay(Duration::from_millis(500));
        let sent = tokio::time::Instant::now();
        faulty.send_group(NodeId(2), 0, vec![msg(2)]).unwrap();
        assert_eq!(inbox.recv().await.unwrap(), vec![msg(2)]);
        assert!(sent.elapsed() >= Duration::from_millis(500));

        faulty.heal();
        faulty.cut(NodeId(2));
        assert_eq!(
            faulty.send_group(NodeId(2), 0, vec![msg(3)]),
            Err(TransportError::Unreachable(NodeId(2)))
        );

        faulty.heal();
        faulty.set_drop_per_mille(1000);
        faulty.send_group(NodeId(2), 0, vec![msg(4)]).unwrap();
        faulty.heal();
        faulty.send_group(NodeId(2), 0, vec![msg(5)]).unwrap();
        // The dropped batch never arrives; the next one does.
        assert_eq!(inbox.recv().await.unwrap(), vec![msg(5)]);
    }
}
