//! SWIM membership (Das, Gupta, Motivala, 2002) as a sans-I/O state machine, with the
//! refinements memberlist and Lifeguard made standard: suspicion with incarnation numbers,
//! piggybacked dissemination, periodic full-state push-pull, and a generation that rises
//! at every restart.
//!
//! The runtime owns the sockets and the clock. It calls [`Swim::tick`] with the time (at
//! least every [`SwimConfig::tick_hint`], or at [`Swim::next_deadline`]), hands every
//! received [`Packet`] to [`Swim::receive`], sends what [`Swim::drain_outbox`] returns, and
//! reads membership changes from [`Swim::drain_events`]. Randomness comes from the seed
//! given to [`Swim::new`], so a run is replayed exactly from its inputs.
//!
//! ```text
//!   every period:  ping target ──────────────▶ ack?  yes: done
//!                  (round robin over a shuffled member list)
//!   after ping_timeout without ack: ping-req to k members ──▶ they ping target, forward ack
//!   at period end without any ack: target becomes Suspect (gossiped)
//!   Suspect for suspicion_timeout without refutation: Dead (gossiped)
//!   a member that hears itself suspected or dead refutes: incarnation + 1, Alive (gossiped)
//!   every sync_interval: full state exchanged with one member, Dead ones included
//! ```
//!
//! Every [`Packet`] carries the sender's own record and up to
//! [`SwimConfig::max_piggyback`] queued updates. What a node believes about a member is one
//! [`Update`]; two beliefs merge by keeping the greater [`Update::precedence`]
//! (generation, then incarnation, then state in the order Alive < Suspect < Dead < Left,
//! then metadata and author, which only make the order total),
//! which is the SWIM override rule and makes merging commutative, associative and
//! idempotent. Every message received also feeds a phi-accrual detector for its sender
//! ([`Swim::phi`]): SWIM decides who is a member, phi grades how late a peer is right now
//! (the AP coordinator's sloppy quorum reads it).
//!
//! # Guarantees
//!
//! 1. **Convergence of beliefs.** Merging is a join on [`Update::precedence`]; nodes that
//!    exchange their states end with the same record for every member, whatever the order
//!    in which updates arrived.
//! 2. **Completeness.** A member that stops answering is suspected by the first node whose
//!    probe of it fails (every live member is probed once per round of at most `n`
//!    periods, as the probe order is a shuffled round robin) and declared dead by every
//!    node that heard the suspicion once it has lasted its timeout: `suspicion_mult ·
//!    max(1, log10 n)` periods when `suspicion_mult - 2` other members confirmed it,
//!    `suspicion_max_mult` times that when nobody did (Lifeguard: a lone accuser, perhaps
//!    itself the slow one, gives the accused time to refute).
//! 3. **Refutation.** A live member that is suspected or declared dead, and still exchanges
//!    messages with anyone, learns it (messages to a member lead with that member's own
//!    record when it is not Alive) and refutes with a higher incarnation, which overrides
//!    the suspicion everywhere.
//! 4. **Restarts.** A node started with a higher generation overrides every belief about
//!    its earlier life, including Dead and Left. A node that hears of a later generation of
//!    itself stops ([`Swim::is_superseded`]): another process has its identity.
//! 5. **Partitions heal.** Push-pull also picks Dead members, so two sides that declared
//!    each other dead find each other again when the network heals.
//! 6. **Bounded work.** A packet carries at most `max_piggyback` updates besides the
//!    sender's record (and, in a push-pull, the full member list); an update is sent at
//!    most `retransmit_mult · ⌈log10(n + 1)⌉` times; forwarding state for indirect probes
//!    expires after one period.
//! 7. **No panics on input.** Any packet, from any sender, in any order is handled; a
//!    packet claiming to come from this node is ignored.

mod broadcast;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::detector::{DetectorConfigError, FailureDetectors, PhiAccrualConfig};
use crate::NodeId;
use broadcast::Broadcasts;

/// A member's state. The order is the override order of equal incarnations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum State {
    /// Answering probes.
    Alive,
    /// A probe failed; dead unless it refutes within the suspicion timeout.
    Suspect,
    /// Declared dead. Not probed; still offered a push-pull now and then.
    Dead,
    /// Left on purpose. Never probed or suspected again in this generation.
    Left,
}

impl State {
    /// The lowercase name (`alive`, `suspect`, `dead`, `left`), for APIs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Alive => "alive",
            State::Suspect => "suspect",
            State::Dead => "dead",
            State::Left => "left",
        }
    }
}

/// One belief about one member, as gossiped.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Update {
    /// The member.
    pub id: NodeId,
    /// Rises at every restart of the member's process.
    pub generation: u64,
    /// Raised by the member itself to refute a suspicion or to announce new metadata.
    pub incarnation: u64,
    /// What is believed.
    pub state: State,
    /// An opaque number the member announces about itself (Concord: the cluster-metadata
    /// version it has applied), changed only with a new incarnation.
    pub meta: u64,
    /// Who made this record: the member itself for Alive and Left, its accuser for Suspect
    /// and Dead. Suspicions of one incarnation from distinct accusers are independent
    /// confirmations, which shorten the suspicion (Lifeguard).
    pub by: NodeId,
}

impl Update {
    /// The override order: the greater value wins a merge.
    pub fn precedence(&self) -> (u64, u64, State, u64, NodeId) {
        (
            self.generation,
            self.incarnation,
            self.state,
            self.meta,
            self.by,
        )
    }

    /// The same record with another state, made by `by`.
    fn accused(&self, state: State, by: NodeId) -> Update {
        Update {
            state,
            by,
            ..self.clone()
        }
    }
}

/// What a packet asks or answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    /// Are you alive? Answered with an [`Message::Ack`] of the same `seq`.
    Ping {
        /// Chosen by the sender, unique in its process.
        seq: u64,
    },
    /// Ping `target` for me and forward its ack (with my `seq`).
    PingReq {
        /// The requester's sequence number, echoed in the forwarded ack.
        seq: u64,
        /// The member to probe.
        target: NodeId,
    },
    /// The answer to a ping, direct or forwarded.
    Ack {
        /// The ping's sequence number.
        seq: u64,
    },
    /// The sender's whole member list (push-pull).
    Sync {
        /// Every member the sender knows, but itself (that is the packet's `sender`).
        members: Vec<Update>,
        /// Whether the receiver answers with its own list.
        reply: bool,
    },
}

/// One datagram between members.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Packet {
    /// The sender's record of itself.
    pub sender: Update,
    /// The request or answer.
    pub message: Message,
    /// Piggybacked membership updates.
    pub updates: Vec<Update>,
}

/// A packet to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    /// The member to send it to.
    pub to: NodeId,
    /// What to send.
    pub packet: Packet,
}

/// A change in this node's view of a member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// The state before (`None`: the member was unknown).
    pub previous: Option<State>,
    /// The record now.
    pub current: Update,
}

/// A member as this node sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Member {
    /// The current belief.
    pub record: Update,
    /// When the state last changed (or the member was first heard of).
    pub since: Duration,
    /// While Suspect: when it is declared dead, unless refuted first.
    suspicion: Option<Suspicion>,
}

/// A running suspicion (Lifeguard's dynamic timeout, as memberlist implements it): it
/// starts at `max` and shrinks towards `min` as independent accusers confirm it, reaching
/// `min` after `k` confirmations.
#[derive(Debug, Clone, PartialEq)]
struct Suspicion {
    started: Duration,
    min: Duration,
    max: Duration,
    k: usize,
    /// Accusers heard so far, the first included.
    accusers: BTreeSet<NodeId>,
}

impl Suspicion {
    fn deadline(&self) -> Duration {
        let confirmations = self.accusers.len().saturating_sub(1);
        if self.k == 0 || confirmations >= self.k {
            return self.started + self.min;
        }
        let frac = ((confirmations + 1) as f64).ln() / ((self.k + 1) as f64).ln();
        let timeout = self.max.saturating_sub((self.max - self.min).mul_f64(frac));
        self.started + timeout.max(self.min)
    }
}

/// The protocol's timing and fan-out. Defaults follow memberlist's LAN profile.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SwimConfig {
    /// One probe per period (default 1 s).
    pub protocol_period: Duration,
    /// How long to wait for a direct ack before asking others (default 500 ms); less than
    /// the period.
    pub ping_timeout: Duration,
    /// How many members relay an indirect probe (default 3).
    pub indirect_probes: usize,
    /// A suspicion confirmed by `suspicion_mult - 2` independent accusers lasts
    /// `suspicion_mult · max(1, log10(n)) · protocol_period` (default 4).
    pub suspicion_mult: u32,
    /// An unconfirmed suspicion lasts this many times longer (default 6).
    pub suspicion_max_mult: u32,
    /// Each update is piggybacked `retransmit_mult · ⌈log10(n + 1)⌉` times (default 4).
    pub retransmit_mult: u32,
    /// Updates per packet besides the sender's own record (default 16).
    pub max_piggyback: usize,
    /// Full-state exchange with one random member, Dead ones included (default 30 s).
    pub sync_interval: Duration,
    /// The detector fed by every packet received (Akka's and Cassandra's defaults).
    pub phi: PhiAccrualConfig,
}

impl Default for SwimConfig {
    fn default() -> Self {
        Self {
            protocol_period: Duration::from_secs(1),
            ping_timeout: Duration::from_millis(500),
            indirect_probes: 3,
            suspicion_mult: 4,
            suspicion_max_mult: 6,
            retransmit_mult: 4,
            max_piggyback: 16,
            sync_interval: Duration::from_secs(30),
            phi: PhiAccrualConfig::default(),
        }
    }
}

/// Why a [`SwimConfig`] was rejected.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum SwimConfigError {
    /// The protocol period is zero.
    #[error("swim protocol period must be greater than zero")]
    ZeroPeriod,
    /// The ping timeout is zero or not shorter than the period.
    #[error("swim ping timeout must be greater than zero and shorter than the protocol period ({period:?}), got {got:?}")]
    PingTimeout {
        /// The configured timeout.
        got: Duration,
        /// The configured period.
        period: Duration,
    },
    /// A multiplier, the piggyback limit or the sync interval is zero.
    #[error("swim {0} must be greater than zero")]
    Zero(&'static str),
    /// The phi detector's configuration is invalid.
    #[error(transparent)]
    Phi(#[from] DetectorConfigError),
}

impl SwimConfig {
    /// Checks every field; [`Swim::new`] calls it.
    pub fn validate(&self) -> Result<(), SwimConfigError> {
        if self.protocol_period.is_zero() {
            return Err(SwimConfigError::ZeroPeriod);
        }
        if self.ping_timeout.is_zero() || self.ping_timeout >= self.protocol_period {
            return Err(SwimConfigError::PingTimeout {
                got: self.ping_timeout,
                period: self.protocol_period,
            });
        }
        for (name, zero) in [
            ("suspicion multiplier", self.suspicion_mult == 0),
            ("suspicion max multiplier", self.suspicion_max_mult == 0),
            ("retransmit multiplier", self.retransmit_mult == 0),
            ("piggyback limit", self.max_piggyback == 0),
            ("sync interval", self.sync_interval.is_zero()),
        ] {
            if zero {
                return Err(SwimConfigError::Zero(name));
            }
        }
        self.phi.validate()?;
        Ok(())
    }

    /// How often a runtime that does not use [`Swim::next_deadline`] should call
    /// [`Swim::tick`]: a tenth of the ping timeout.
    pub fn tick_hint(&self) -> Duration {
        self.ping_timeout / 10
    }
}

/// The probe of the current period.
#[derive(Debug, Clone)]
struct Probe {
    target: NodeId,
    seq: u64,
    /// When to ask others to probe the target.
    indirect_at: Duration,
    /// When the period ends: no ack by then makes the target Suspect.
    deadline: Duration,
    indirect_sent: bool,
    acked: bool,
}

/// An indirect probe relayed for another member.
#[derive(Debug, Clone)]
struct Forward {
    requester: NodeId,
    seq: u64,
    expires: Duration,
}

/// SplitMix64: small, fast, and enough for shuffles and random picks.
#[derive(Debug, Clone)]
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n`; `n` must be positive.
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            v.swap(i, self.below(i + 1));
        }
    }
}

/// One node's SWIM state machine.
#[derive(Debug, Clone)]
pub struct Swim {
    config: SwimConfig,
    /// This node's own record. Invariant: `me.state` is Alive or Left.
    me: Update,
    /// Every other member ever heard of (until [`Swim::remove`]).
    members: BTreeMap<NodeId, Member>,
    /// The members with a running suspicion. Invariant: exactly those whose
    /// `Member::suspicion` is set.
    suspects: BTreeSet<NodeId>,
    broadcasts: Broadcasts,
    detectors: FailureDetectors<NodeId>,
    rng: Rng,
    /// The last sequence number used; unique per node lifetime.
    seq: u64,
    probe: Option<Probe>,
    /// Members still to probe in this round, popped from the back.
    probe_order: Vec<NodeId>,
    next_probe_at: Duration,
    next_sync_at: Duration,
    forwards: BTreeMap<u64, Forward>,
    outbox: Vec<Outgoing>,
    events: Vec<Event>,
    superseded: bool,
}

impl Swim {
    /// A node `me` in its `generation` (which must rise at every restart), alone until it
    /// [`Swim::join`]s or hears from others. `now` is the runtime's monotonic time.
    pub fn new(
        config: SwimConfig,
        me: NodeId,
        generation: u64,
        seed: u64,
        now: Duration,
    ) -> Result<Self, SwimConfigError> {
        config.validate()?;
        let mut rng = Rng(seed ^ me.get());
        // Spread the first probes of nodes started together over one period.
        let jitter = config
            .protocol_period
            .mul_f64((rng.next() % 1000) as f64 / 1000.0);
        Ok(Self {
            config,
            me: Update {
                id: me,
                generation,
                incarnation: 0,
                state: State::Alive,
                meta: 0,
                by: me,
            },
            members: BTreeMap::new(),
            suspects: BTreeSet::new(),
            broadcasts: Broadcasts::default(),
            detectors: FailureDetectors::new(config.phi)?,
            rng,
            seq: 0,
            probe: None,
            probe_order: Vec::new(),
            next_probe_at: now + jitter,
            next_sync_at: now + config.sync_interval,
            forwards: BTreeMap::new(),
            outbox: Vec::new(),
            events: Vec::new(),
            superseded: false,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &SwimConfig {
        &self.config
    }

    /// This node's own record.
    pub fn me(&self) -> &Update {
        &self.me
    }

    /// Every other member known, in id order.
    pub fn members(&self) -> impl Iterator<Item = &Member> {
        self.members.values()
    }

    /// What this node believes about `id` (not itself).
    pub fn member(&self, id: NodeId) -> Option<&Member> {
        self.members.get(&id)
    }

    /// The phi of `id` at `now`, from every packet received from it (`None` before the
    /// first).
    pub fn phi(&self, id: NodeId, now: Duration) -> Option<f64> {
        self.detectors.phi(&id, now)
    }

    /// Whether a later generation of this node exists: this process must stop.
    pub fn is_superseded(&self) -> bool {
        self.superseded
    }

    /// Updates waiting to be piggybacked (a metric).
    pub fn pending_updates(&self) -> usize {
        self.broadcasts.len()
    }

    /// Packets to send, oldest first.
    pub fn drain_outbox(&mut self) -> Vec<Outgoing> {
        std::mem::take(&mut self.outbox)
    }

    /// Changes of the view since the last call, in order.
    pub fn drain_events(&mut self) -> Vec<Event> {
        std::mem::take(&mut self.events)
    }

    /// Asks `seeds` for their member lists (a push-pull with each).
    pub fn join(&mut self, seeds: impl IntoIterator<Item = NodeId>) {
        for seed in seeds {
            if seed != self.me.id {
                self.send_sync(seed, true);
            }
        }
    }

    /// Announces a new `meta` for this node (a new incarnation carries it).
    pub fn set_meta(&mut self, meta: u64) {
        if self.me.meta != meta {
            self.me.meta = meta;
            self.me.incarnation += 1;
            self.broadcasts.push(self.me.clone());
        }
    }

    /// Leaves the cluster: every member that is not known dead gets this node's member
    /// list with its Left record at once (a push), and Left is gossiped from then on.
    pub fn leave(&mut self) {
        if self.me.state == State::Left {
            return;
        }
        self.me.state = State::Left;
        self.broadcasts.push(self.me.clone());
        let reachable: Vec<NodeId> = self
            .members
            .values()
            .filter(|m| matches!(m.record.state, State::Alive | State::Suspect))
            .map(|m| m.record.id)
            .collect();
        for id in reachable {
            self.send_sync(id, false);
        }
    }

    /// Forgets `id` (removed from the cluster by the operator).
    pub fn remove(&mut self, id: NodeId) {
        self.members.remove(&id);
        self.suspects.remove(&id);
        self.broadcasts.remove(id);
        self.detectors.remove(&id);
        self.probe_order.retain(|m| *m != id);
        if self.probe.as_ref().is_some_and(|p| p.target == id) {
            self.probe = None;
        }
    }

    /// The earliest time at which [`Swim::tick`] has something to do.
    pub fn next_deadline(&self) -> Duration {
        let mut at = self.next_probe_at.min(self.next_sync_at);
        if let Some(p) = &self.probe {
            at = at.min(if p.indirect_sent || p.acked {
                p.deadline
            } else {
                p.indirect_at
            });
        }
        let suspects = self.suspects.iter().filter_map(|id| {
            self.members
                .get(id)?
                .suspicion
                .as_ref()
                .map(Suspicion::deadline)
        });
        let forwards = self.forwards.values().map(|f| f.expires);
        suspects.chain(forwards).fold(at, Duration::min)
    }

    /// Advances the protocol to `now`: suspicion timeouts, the current probe, the next
    /// probe, push-pull.
    pub fn tick(&mut self, now: Duration) {
        if self.superseded {
            return;
        }
        self.expire_suspicions(now);
        self.forwards.retain(|_, f| f.expires > now);
        self.advance_probe(now);
        if self.probe.is_none() && now >= self.next_probe_at {
            self.next_probe_at = now + self.config.protocol_period;
            self.start_probe(now);
        }
        if now >= self.next_sync_at {
            self.next_sync_at = now + self.config.sync_interval;
            let candidates: Vec<NodeId> = self
                .members
                .values()
                .filter(|m| m.record.state != State::Left)
                .map(|m| m.record.id)
                .collect();
            if !candidates.is_empty() {
                let to = candidates[self.rng.below(candidates.len())];
                self.send_sync(to, true);
            }
        }
    }

    /// Handles one packet received at `now`.
    pub fn receive(&mut self, packet: Packet, now: Duration) {
        let from = packet.sender.id;
        if self.superseded || from == self.me.id {
            return;
        }
        self.detectors.heartbeat(from, now);
        self.merge(packet.sender, now);
        for update in packet.updates {
            self.merge(update, now);
        }
        match packet.message {
            Message::Ping { seq } => self.send(from, Message::Ack { seq }),
            Message::PingReq { seq, target } if target == self.me.id => {
                self.send(from, Message::Ack { seq });
            }
            Message::PingReq { seq, target } => {
                let ours = self.next_seq();
                self.forwards.insert(
                    ours,
                    Forward {
                        requester: from,
                        seq,
                        expires: now + self.config.protocol_period,
                    },
                );
                self.send(target, Message::Ping { seq: ours });
            }
            Message::Ack { seq } => {
                if let Some(p) = self.probe.as_mut().filter(|p| p.seq == seq) {
                    p.acked = true;
                } else if let Some(f) = self.forwards.remove(&seq) {
                    self.send(f.requester, Message::Ack { seq: f.seq });
                }
            }
            Message::Sync { members, reply } => {
                for update in members {
                    self.merge(update, now);
                }
                if reply {
                    self.send_sync(from, false);
                }
            }
        }
    }

    fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    fn member_count(&self) -> usize {
        self.members.len() + 1
    }

    /// A new suspicion accused by `by`: from `max_mult · min` down to
    /// `min = suspicion_mult · max(1, log10(n)) · period` after `suspicion_mult - 2`
    /// confirmations (none needed when fewer members could confirm), as memberlist.
    fn suspicion(&self, by: NodeId, now: Duration) -> Suspicion {
        let scale = (self.member_count() as f64).log10().max(1.0);
        let min = self
            .config
            .protocol_period
            .mul_f64(self.config.suspicion_mult as f64 * scale);
        let alive = self
            .members
            .values()
            .filter(|m| m.record.state == State::Alive)
            .count()
            + 1;
        let k = (self.config.suspicion_mult as usize).saturating_sub(2);
        Suspicion {
            started: now,
            min,
            max: min * self.config.suspicion_max_mult,
            k: if alive.saturating_sub(2) < k { 0 } else { k },
            accusers: [by].into(),
        }
    }

    fn retransmit_limit(&self) -> u32 {
        let n = (self.member_count() + 1) as f64;
        self.config.retransmit_mult * (n.log10().ceil() as u32).max(1)
    }

    fn expire_suspicions(&mut self, now: Duration) {
        let due: Vec<NodeId> = self
            .suspects
            .iter()
            .filter(|id| {
                self.members
                    .get(id)
                    .and_then(|m| m.suspicion.as_ref())
                    .is_some_and(|s| s.deadline() <= now)
            })
            .copied()
            .collect();
        for id in due {
            if let Some(m) = self.members.get(&id) {
                let dead = m.record.accused(State::Dead, self.me.id);
                self.merge(dead, now);
            }
        }
    }

    fn advance_probe(&mut self, now: Duration) {
        let Some(p) = self.probe.as_mut() else { return };
        if !p.acked && !p.indirect_sent && now >= p.indirect_at {
            p.indirect_sent = true;
            let (target, seq) = (p.target, p.seq);
            let mut relays: Vec<NodeId> = self
                .members
                .values()
                .filter(|m| m.record.state == State::Alive && m.record.id != target)
                .map(|m| m.record.id)
                .collect();
            self.rng.shuffle(&mut relays);
            relays.truncate(self.config.indirect_probes);
            for relay in relays {
                self.send(relay, Message::PingReq { seq, target });
            }
        }
        let Some(p) = self.probe.as_ref() else { return };
        if now < p.deadline {
            return;
        }
        let (target, acked) = (p.target, p.acked);
        self.probe = None;
        if acked {
            return;
        }
        // A failed probe of a Suspect member confirms the suspicion.
        if let Some(m) = self.members.get(&target) {
            if matches!(m.record.state, State::Alive | State::Suspect) {
                let suspect = m.record.accused(State::Suspect, self.me.id);
                self.merge(suspect, now);
            }
        }
    }

    fn start_probe(&mut self, now: Duration) {
        let probeable = |m: &Member| matches!(m.record.state, State::Alive | State::Suspect);
        let target = loop {
            match self.probe_order.pop() {
                Some(id) if self.members.get(&id).is_some_and(probeable) => break id,
                Some(_) => continue,
                None => {
                    let mut order: Vec<NodeId> = self
                        .members
                        .values()
                        .filter(|m| probeable(m))
                        .map(|m| m.record.id)
                        .collect();
                    if order.is_empty() {
                        return;
                    }
                    self.rng.shuffle(&mut order);
                    self.probe_order = order;
                }
            }
        };
        let seq = self.next_seq();
        self.probe = Some(Probe {
            target,
            seq,
            indirect_at: now + self.config.ping_timeout,
            deadline: now + self.config.protocol_period,
            indirect_sent: false,
            acked: false,
        });
        self.send(target, Message::Ping { seq });
    }

    fn send_sync(&mut self, to: NodeId, reply: bool) {
        let members = self.members.values().map(|m| m.record.clone()).collect();
        self.send(to, Message::Sync { members, reply });
    }

    /// Queues `message` to `to` with piggybacked updates: `to`'s own record first when it
    /// is not Alive here (so it can refute), then the least-sent queued updates.
    fn send(&mut self, to: NodeId, message: Message) {
        let max = self.config.max_piggyback;
        let mut updates = Vec::with_capacity(max);
        let lead = self
            .members
            .get(&to)
            .filter(|m| m.record.state != State::Alive)
            .map(|m| m.record.clone());
        let skip = lead.as_ref().map(|u| u.id);
        updates.extend(lead);
        let limit = self.retransmit_limit();
        let more = self.broadcasts.take(max - updates.len(), limit, skip);
        updates.extend(more);
        self.outbox.push(Outgoing {
            to,
            packet: Packet {
                sender: self.me.clone(),
                message,
                updates,
            },
        });
    }

    /// Folds one belief into the view (the SWIM override rule), refuting beliefs about
    /// this node and queueing whatever changed for dissemination.
    fn merge(&mut self, update: Update, now: Duration) {
        if update.id == self.me.id {
            return self.merge_about_me(update);
        }
        if update.id.is_zero() {
            return;
        }
        // A suspicion of the same incarnation from another accuser confirms the running
        // one (and, if it sorts higher, replaces the record so the confirmation spreads).
        let confirms = |m: &Member| {
            update.state == State::Suspect
                && m.record.state == State::Suspect
                && (m.record.generation, m.record.incarnation)
                    == (update.generation, update.incarnation)
        };
        if let Some(m) = self.members.get_mut(&update.id) {
            if confirms(m) {
                let new_accuser = m
                    .suspicion
                    .as_mut()
                    .is_some_and(|s| s.accusers.insert(update.by));
                if update.precedence() > m.record.precedence() {
                    m.record = update.clone();
                }
                if new_accuser {
                    // Others count it too.
                    self.broadcasts.push(update);
                }
                return;
            }
        }
        let previous = match self.members.get(&update.id) {
            Some(m) if update.precedence() <= m.record.precedence() => return,
            Some(m) => Some(m.record.clone()),
            None => None,
        };
        let state_changed = previous.as_ref().map(|p| p.state) != Some(update.state);
        if previous
            .as_ref()
            .is_some_and(|p| p.generation != update.generation)
        {
            // A new process: its timing history says nothing about it.
            self.detectors.remove(&update.id);
        }
        let suspicion = (update.state == State::Suspect).then(|| self.suspicion(update.by, now));
        if suspicion.is_some() {
            self.suspects.insert(update.id);
        } else {
            self.suspects.remove(&update.id);
        }
        let since = match (&previous, state_changed) {
            (Some(_), false) => self.members.get(&update.id).map_or(now, |m| m.since),
            _ => now,
        };
        self.members.insert(
            update.id,
            Member {
                record: update.clone(),
                since,
                suspicion,
            },
        );
        self.broadcasts.push(update.clone());
        let visible = previous.as_ref().is_none_or(|p| {
            p.state != update.state || p.generation != update.generation || p.meta != update.meta
        });
        if visible {
            self.events.push(Event {
                previous: previous.map(|p| p.state),
                current: update,
            });
        }
    }

    fn merge_about_me(&mut self, update: Update) {
        if update.generation > self.me.generation {
            self.superseded = true;
            return;
        }
        let stale = update.generation < self.me.generation;
        let accused = matches!(update.state, State::Suspect | State::Dead)
            && update.incarnation >= self.me.incarnation;
        if self.me.state == State::Alive && !stale && accused {
            self.me.incarnation = update.incarnation + 1;
            self.broadcasts.push(self.me.clone());
        } else if stale && self.broadcasts.get(self.me.id).is_none() {
            // Someone still talks about an earlier life: tell them about this one.
            self.broadcasts.push(self.me.clone());
        }
    }
}
