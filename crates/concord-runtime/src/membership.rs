//! Gossip membership over the network: drives concord-core's sans-I/O [`Swim`] with a
//! tokio task, the monotonic clock and the `concord.peer.v1.Gossip` service.
//!
//! ```text
//!   GossipService::send ──(decode, check cluster and addressee)──▶ inbound queue ─┐
//!   interval (tick_hint) ────────────────────────────────────────────────────────▶ task: Swim
//!   Membership::{view, set_peer, remove_peer} ── commands ───────────────────────▶   │
//!                       outbox ◀──────────────────────────────────────────────────────┘
//!                         └─▶ one unary Gossip.Send per packet, on a lazily connected
//!                             channel per peer, bounded in flight, dropped on timeout
//! ```
//!
//! # Guarantees
//!
//! 1. **Bounded.** At most [`INBOUND_QUEUE`] received packets wait for the task and at most
//!    [`SENDS_IN_FLIGHT`] sends are outstanding; beyond that packets are dropped, which
//!    SWIM tolerates (a dropped ping is a failed probe, refuted later if wrong).
//! 2. **Refusals say why.** A packet from another cluster, addressed to another member, or
//!    malformed (no sender, an unknown state, a zero id) is refused with a status naming
//!    the problem and never reaches the state machine.
//! 3. **The generation rises at every restart.** It is the process's start time in
//!    milliseconds since the Unix epoch (as Cassandra's generation is its start time in
//!    seconds), so a restarted member overrides what was believed about its earlier life.
//! 4. **No timing in the core.** Time is a `Duration` since the task started, from tokio's
//!    monotonic clock; the randomness is a seed.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use concord_core::swim::{Message, Packet, State, Swim, SwimConfig, SwimConfigError, Update};
use concord_proto::peer::gossip_client::GossipClient;
use concord_proto::peer::gossip_server::{Gossip, GossipServer};
use concord_proto::peer::{
    gossip_packet, GossipAck, GossipPacket, SwimAck, SwimPing, SwimPingReq, SwimState, SwimSync,
    SwimUpdate,
};
use concord_raft::NodeId;
use tokio::sync::{mpsc, oneshot, Semaphore};
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status};

/// Received packets waiting for the membership task.
pub const INBOUND_QUEUE: usize = 1024;
/// Gossip sends outstanding at once.
pub const SENDS_IN_FLIGHT: usize = 256;

/// How a member gossips.
#[derive(Debug, Clone)]
pub struct MembershipConfig {
    /// This member.
    pub me: NodeId,
    /// Packets of other clusters are refused.
    pub cluster_id: u64,
    /// Rises at every restart (see guarantee 3; [`generation_now`]).
    pub generation: u64,
    /// The protocol's timing and the phi detector's settings.
    pub swim: SwimConfig,
    /// Seeds the protocol's random choices.
    pub seed: u64,
    /// Dials the other members (TLS for `https://` peer URLs).
    pub dialer: concord_tls::Dialer,
}

/// The start time of this process in milliseconds since the Unix epoch: a generation that
/// rises at every restart as long as the wall clock does not go back by more than the
/// time between two starts.
pub fn generation_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_millis() as u64)
}

/// One member as this node sees it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct MemberView {
    /// The member's id.
    pub id: NodeId,
    /// `alive`, `suspect`, `dead` or `left`.
    pub state: State,
    /// The member's process generation.
    pub generation: u64,
    /// The member's incarnation in that generation.
    pub incarnation: u64,
    /// What the member announces about itself.
    pub meta: u64,
    /// The phi of the member's packets now (`None` before the first).
    pub phi: Option<f64>,
    /// Seconds since the state last changed.
    pub for_secs: f64,
}

/// This node's view of the membership.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct MembershipView {
    /// This node's own record.
    pub me: MemberView,
    /// Every other member, in id order.
    pub members: Vec<MemberView>,
    /// Updates waiting to be piggybacked.
    pub pending_updates: usize,
    /// The phi at or above which a member counts as suspected by the detector.
    pub phi_threshold: f64,
}

enum Command {
    View(oneshot::Sender<MembershipView>),
    SetPeer(NodeId, String),
    RemovePeer(NodeId),
    SetMeta(u64),
    Leave(oneshot::Sender<()>),
}

/// A handle to the membership task; cheap to clone. The task stops when every handle is
/// dropped, or after [`Membership::leave`].
#[derive(Debug, Clone)]
pub struct Membership {
    commands: mpsc::Sender<Command>,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Command::View(_) => f.write_str("View"),
            Command::SetPeer(id, url) => write!(f, "SetPeer({id}, {url})"),
            Command::RemovePeer(id) => write!(f, "RemovePeer({id})"),
            Command::SetMeta(m) => write!(f, "SetMeta({m})"),
            Command::Leave(_) => f.write_str("Leave"),
        }
    }
}

impl Membership {
    /// Starts gossiping with `peers` (id → peer URL), joining through all of them; returns
    /// the handle and the service to mount on the peer port. Must be called on a tokio
    /// runtime.
    pub fn start(
        config: MembershipConfig,
        peers: BTreeMap<NodeId, String>,
    ) -> Result<(Membership, GossipService), SwimConfigError> {
        let swim = Swim::new(
            config.swim,
            config.me,
            config.generation,
            config.seed,
            Duration::ZERO,
        )?;
        let (commands, commands_rx) = mpsc::channel(64);
        let (inbound, inbound_rx) = mpsc::channel(INBOUND_QUEUE);
        let task = Task {
            swim,
            cluster_id: config.cluster_id,
            origin: tokio::time::Instant::now(),
            channels: BTreeMap::new(),
            in_flight: Arc::new(Semaphore::new(SENDS_IN_FLIGHT)),
            dialer: config.dialer,
        };
        tokio::spawn(task.run(peers, commands_rx, inbound_rx));
        let service = GossipService {
            me: config.me,
            cluster_id: config.cluster_id,
            inbound,
        };
        Ok((Membership { commands }, service))
    }

    /// The current view (`None` once the task has stopped).
    pub async fn view(&self) -> Option<MembershipView> {
        let (tx, rx) = oneshot::channel();
        self.commands.send(Command::View(tx)).await.ok()?;
        rx.await.ok()
    }

    /// Gossips with `id` at `url` from now on (a new member, or a new URL).
    pub fn set_peer(&self, id: NodeId, url: String) {
        let _ = self.commands.try_send(Command::SetPeer(id, url));
    }

    /// Forgets `id` (removed from the cluster).
    pub fn remove_peer(&self, id: NodeId) {
        let _ = self.commands.try_send(Command::RemovePeer(id));
    }

    /// Announces `meta` about this member (a new incarnation carries it to the others,
    /// who see it as [`MemberView::meta`]); the same value again changes nothing.
    pub fn set_meta(&self, meta: u64) {
        let _ = self.commands.try_send(Command::SetMeta(meta));
    }

    /// Tells every member this one leaves (a graceful shutdown: they mark it Left rather
    /// than suspecting it), then stops gossiping. Resolves once the announcements are sent
    /// or have timed out.
    pub async fn leave(&self) {
        let (tx, rx) = oneshot::channel();
        if self.commands.send(Command::Leave(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }
}

struct Task {
    swim: Swim,
    cluster_id: u64,
    origin: tokio::time::Instant,
    channels: BTreeMap<NodeId, (String, GossipClient<Channel>)>,
    in_flight: Arc<Semaphore>,
    dialer: concord_tls::Dialer,
}

impl Task {
    fn now(&self) -> Duration {
        self.origin.elapsed()
    }

    async fn run(
        mut self,
        peers: BTreeMap<NodeId, String>,
        mut commands: mpsc::Receiver<Command>,
        mut inbound: mpsc::Receiver<Packet>,
    ) {
        for (id, url) in &peers {
            self.set_peer(*id, url.clone());
        }
        self.swim.join(peers.keys().copied());
        let mut ticker = tokio::time::interval(
            self.swim
                .config()
                .tick_hint()
                .max(Duration::from_millis(10)),
        );
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticker.tick() => {
                    let now = self.now();
                    self.swim.tick(now);
                }
                p = inbound.recv() => match p {
                    Some(p) => {
                        let now = self.now();
                        self.swim.receive(p, now);
                    }
                    None => return,
                },
                c = commands.recv() => match c {
                    Some(Command::View(tx)) => {
                        let _ = tx.send(self.view());
                    }
                    Some(Command::SetPeer(id, url)) => self.set_peer(id, url),
                    Some(Command::RemovePeer(id)) => {
                        self.channels.remove(&id);
                        self.swim.remove(id);
                    }
                    Some(Command::SetMeta(meta)) => self.swim.set_meta(meta),
                    Some(Command::Leave(done)) => {
                        self.swim.leave();
                        let sends = self.flush();
                        for s in sends {
                            let _ = s.await;
                        }
                        let _ = done.send(());
                        return;
                    }
                    None => return,
                },
            }
            self.flush();
            if self.swim.is_superseded() {
                tracing::error!(
                    member = %self.swim.me().id,
                    "a later generation of this member gossips: another process has its identity; gossip stops here"
                );
                return;
            }
        }
    }

    fn set_peer(&mut self, id: NodeId, url: String) {
        if id == self.swim.me().id || self.channels.get(&id).is_some_and(|(u, _)| *u == url) {
            return;
        }
        match Endpoint::from_shared(url.clone()) {
            Ok(e) => {
                let channel = self
                    .dialer
                    .lazy(e.connect_timeout(Duration::from_secs(1)).tcp_nodelay(true));
                self.channels.insert(id, (url, GossipClient::new(channel)));
            }
            Err(e) => tracing::warn!(peer = %id, %url, error = %e, "invalid peer url for gossip"),
        }
    }

    /// Sends the outbox and logs the view's changes; returns the send tasks.
    fn flush(&mut self) -> Vec<tokio::task::JoinHandle<()>> {
        let mut sends = Vec::new();
        let timeout = self.swim.config().ping_timeout;
        for out in self.swim.drain_outbox() {
            let Some((_, client)) = self.channels.get(&out.to) else {
                continue;
            };
            let Ok(permit) = self.in_flight.clone().try_acquire_owned() else {
                continue;
            };
            let mut client = client.clone();
            let packet = to_wire(&out.packet, self.cluster_id, out.to);
            sends.push(tokio::spawn(async move {
                let _ = tokio::time::timeout(timeout, client.send(packet)).await;
                drop(permit);
            }));
        }
        for e in self.swim.drain_events() {
            let previous = e.previous.map_or("unknown", State::as_str);
            tracing::info!(
                member = %e.current.id,
                from = previous,
                to = e.current.state.as_str(),
                generation = e.current.generation,
                incarnation = e.current.incarnation,
                "gossip: member state changed"
            );
        }
        sends
    }

    fn view(&self) -> MembershipView {
        let now = self.now();
        let member = |u: &Update, since: Duration| MemberView {
            id: u.id,
            state: u.state,
            generation: u.generation,
            incarnation: u.incarnation,
            meta: u.meta,
            phi: self.swim.phi(u.id, now),
            for_secs: now.saturating_sub(since).as_secs_f64(),
        };
        MembershipView {
            me: member(self.swim.me(), Duration::ZERO),
            members: self
                .swim
                .members()
                .map(|m| member(&m.record, m.since))
                .collect(),
            pending_updates: self.swim.pending_updates(),
            phi_threshold: self.swim.config().phi.threshold,
        }
    }
}

/// The `concord.peer.v1.Gossip` service: hands valid packets to the membership task.
#[derive(Debug, Clone)]
pub struct GossipService {
    me: NodeId,
    cluster_id: u64,
    inbound: mpsc::Sender<Packet>,
}

impl GossipService {
    /// The tonic service.
    pub fn into_server(self) -> GossipServer<Self> {
        GossipServer::new(self)
    }
}

#[tonic::async_trait]
impl Gossip for GossipService {
    async fn send(&self, request: Request<GossipPacket>) -> Result<Response<GossipAck>, Status> {
        let wire = request.into_inner();
        if wire.cluster_id != self.cluster_id {
            return Err(Status::failed_precondition(format!(
                "gossip from cluster {:x}, this member belongs to cluster {:x}",
                wire.cluster_id, self.cluster_id
            )));
        }
        if wire.to != self.me.get() {
            return Err(Status::invalid_argument(format!(
                "gossip for member {:x} reached member {}",
                wire.to, self.me
            )));
        }
        let packet = from_wire(wire).map_err(Status::invalid_argument)?;
        // A full queue drops the packet: SWIM treats it as lost.
        let _ = self.inbound.try_send(packet);
        Ok(Response::new(GossipAck {}))
    }
}

fn state_to_wire(s: State) -> SwimState {
    match s {
        State::Alive => SwimState::Alive,
        State::Suspect => SwimState::Suspect,
        State::Dead => SwimState::Dead,
        State::Left => SwimState::Left,
    }
}

fn update_to_wire(u: &Update) -> SwimUpdate {
    SwimUpdate {
        id: u.id.get(),
        generation: u.generation,
        incarnation: u.incarnation,
        state: state_to_wire(u.state) as i32,
        meta: u.meta,
        by: u.by.get(),
    }
}

fn update_from_wire(u: SwimUpdate) -> Result<Update, String> {
    let state = match SwimState::try_from(u.state) {
        Ok(SwimState::Alive) => State::Alive,
        Ok(SwimState::Suspect) => State::Suspect,
        Ok(SwimState::Dead) => State::Dead,
        Ok(SwimState::Left) => State::Left,
        Err(_) => return Err(format!("unknown member state {}", u.state)),
    };
    if u.id == 0 || u.by == 0 {
        return Err("member id 0 in a gossip update".into());
    }
    Ok(Update {
        id: NodeId(u.id),
        generation: u.generation,
        incarnation: u.incarnation,
        state,
        meta: u.meta,
        by: NodeId(u.by),
    })
}

/// The wire form of `packet` for member `to` of cluster `cluster_id`.
pub fn to_wire(packet: &Packet, cluster_id: u64, to: NodeId) -> GossipPacket {
    let message = match &packet.message {
        Message::Ping { seq } => gossip_packet::Message::Ping(SwimPing { seq: *seq }),
        Message::PingReq { seq, target } => gossip_packet::Message::PingReq(SwimPingReq {
            seq: *seq,
            target: target.get(),
        }),
        Message::Ack { seq } => gossip_packet::Message::Ack(SwimAck { seq: *seq }),
        Message::Sync { members, reply } => gossip_packet::Message::Sync(SwimSync {
            members: members.iter().map(update_to_wire).collect(),
            reply: *reply,
        }),
    };
    GossipPacket {
        cluster_id,
        to: to.get(),
        sender: Some(update_to_wire(&packet.sender)),
        updates: packet.updates.iter().map(update_to_wire).collect(),
        message: Some(message),
    }
}

/// The packet in `wire`, or what is wrong with it.
pub fn from_wire(wire: GossipPacket) -> Result<Packet, String> {
    let sender = update_from_wire(wire.sender.ok_or("gossip packet without a sender")?)?;
    let message = match wire.message.ok_or("gossip packet without a message")? {
        gossip_packet::Message::Ping(p) => Message::Ping { seq: p.seq },
        gossip_packet::Message::PingReq(p) if p.target == 0 => {
            return Err("ping-req for member id 0".into())
        }
        gossip_packet::Message::PingReq(p) => Message::PingReq {
            seq: p.seq,
            target: NodeId(p.target),
        },
        gossip_packet::Message::Ack(a) => Message::Ack { seq: a.seq },
        gossip_packet::Message::Sync(s) => Message::Sync {
            members: s
                .members
                .into_iter()
                .map(update_from_wire)
                .collect::<Result<_, _>>()?,
            reply: s.reply,
        },
    };
    let updates = wire
        .updates
        .into_iter()
        .map(update_from_wire)
        .collect::<Result<_, _>>()?;
    Ok(Packet {
        sender,
        message,
        updates,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u(id: u64, state: State) -> Update {
        Update {
            id: NodeId(id),
            generation: 7,
            incarnation: 3,
            state,
            meta: 9,
            by: NodeId(id),
        }
    }

    #[test]
    fn every_packet_survives_the_wire() {
        let messages = [
            Message::Ping { seq: 1 },
            Message::PingReq {
                seq: 2,
                target: NodeId(5),
            },
            Message::Ack { seq: 3 },
            Message::Sync {
                members: vec![u(4, State::Dead), u(6, State::Left)],
                reply: true,
            },
        ];
        for message in messages {
            let p = Packet {
                sender: u(1, State::Alive),
                message,
                updates: vec![u(2, State::Suspect), u(3, State::Alive)],
            };
            let wire = to_wire(&p, 0xc1, NodeId(2));
            assert_eq!((wire.cluster_id, wire.to), (0xc1, 2));
            assert_eq!(from_wire(wire), Ok(p));
        }
    }

    #[test]
    fn malformed_packets_are_refused_with_the_reason() {
        let good = to_wire(
            &Packet {
                sender: u(1, State::Alive),
                message: Message::Ping { seq: 1 },
                updates: vec![],
            },
            1,
            NodeId(2),
        );
        let mut no_sender = good.clone();
        no_sender.sender = None;
        assert_eq!(
            from_wire(no_sender),
            Err("gossip packet without a sender".into())
        );
        let mut bad_state = good.clone();
        bad_state.updates.push(SwimUpdate {
            id: 3,
            state: 42,
            by: 3,
            ..SwimUpdate::default()
        });
        assert_eq!(from_wire(bad_state), Err("unknown member state 42".into()));
        let mut zero = good.clone();
        zero.updates.push(SwimUpdate::default());
        assert!(from_wire(zero).unwrap_err().contains("member id 0"));
        let mut no_message = good;
        no_message.message = None;
        assert!(from_wire(no_message).is_err());
    }

    #[tokio::test]
    async fn the_service_refuses_other_clusters_and_addressees() {
        let (inbound, mut rx) = mpsc::channel(4);
        let svc = GossipService {
            me: NodeId(2),
            cluster_id: 1,
            inbound,
        };
        let packet = |cluster, to| {
            to_wire(
                &Packet {
                    sender: u(1, State::Alive),
                    message: Message::Ping { seq: 1 },
                    updates: vec![],
                },
                cluster,
                NodeId(to),
            )
        };
        let err = svc.send(Request::new(packet(9, 2))).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::FailedPrecondition);
        let err = svc.send(Request::new(packet(1, 3))).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert!(rx.try_recv().is_err());
        svc.send(Request::new(packet(1, 2))).await.unwrap();
        assert_eq!(rx.try_recv().unwrap().sender.id, NodeId(1));
    }

    /// Three members over real gRPC on loopback find each other; when one stops, the
    /// others declare it dead.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn three_members_gossip_over_grpc_and_see_a_stopped_one_die() {
        let swim = SwimConfig {
            protocol_period: Duration::from_millis(100),
            ping_timeout: Duration::from_millis(40),
            suspicion_mult: 3,
            sync_interval: Duration::from_millis(500),
            ..SwimConfig::default()
        };
        let mut listeners = Vec::new();
        let mut urls = BTreeMap::new();
        for i in 1..=3u64 {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            urls.insert(NodeId(i), format!("http://{}", l.local_addr().unwrap()));
            listeners.push(l);
        }
        let mut handles = Vec::new();
        let mut servers = Vec::new();
        for (i, listener) in (1..=3u64).zip(listeners) {
            let config = MembershipConfig {
                me: NodeId(i),
                cluster_id: 77,
                generation: 1,
                swim,
                seed: i,
                dialer: concord_tls::Dialer::default(),
            };
            let (m, svc) = Membership::start(config, urls.clone()).unwrap();
            handles.push(m);
            servers.push(tokio::spawn(
                tonic::transport::Server::builder()
                    .add_service(svc.into_server())
                    .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
            ));
        }
        let all_alive = |v: &MembershipView| {
            v.members.len() == 2 && v.members.iter().all(|m| m.state == State::Alive)
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let mut ok = true;
            for h in &handles {
                ok &= h.view().await.is_some_and(|v| all_alive(&v));
            }
            if ok {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "members never all alive"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let v = handles[0].view().await.unwrap();
        assert!(v.members.iter().all(|m| m.phi.is_some()));
        // Member 1 leaves: the others mark it Left at once.
        handles[0].leave().await;
        assert!(handles[0].view().await.is_none());
        for h in &handles[1..] {
            let v = h.view().await.unwrap();
            let one = v.members.iter().find(|m| m.id == NodeId(1)).unwrap();
            assert_eq!(one.state, State::Left);
        }
        // Member 3 stops answering (its task and server gone, as in a crash): member 2
        // declares it dead.
        let crashed = handles.pop().unwrap();
        drop(crashed);
        servers.pop().unwrap().abort();
        loop {
            let v = handles[1].view().await.unwrap();
            if v.members
                .iter()
                .any(|m| m.id == NodeId(3) && m.state == State::Dead)
            {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "member 3 never declared dead"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
