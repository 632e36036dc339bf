//! The nemesis: faults on a schedule (healthy, fault, heal, repeat), recorded as windows.

use std::sync::Arc;
use std::time::Duration;

use rand::rngs::SmallRng;
use rand::seq::SliceRandom;
use rand::Rng;
use serde_json::json;

use concord_proto::etcdserverpb::cluster_client::ClusterClient;
use concord_proto::etcdserverpb::{MemberAddRequest, MemberRemoveRequest};

use crate::client::{find_leader, Members};
use crate::cluster::{Cluster, Mode};
use crate::history::{JsonLines, Recorder};

/// A kind of fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Random majority/minority split.
    Partition,
    /// The leader alone on one side.
    IsolateLeader,
    /// Two overlapping majorities joined by one node.
    Bridge,
    /// One-way: a minority cannot receive from the rest, but can send.
    Asymmetric,
    /// SIGKILL a random node, restart at heal.
    Kill,
    /// SIGKILL the leader, restart at heal.
    KillLeader,
    /// SIGSTOP a random node, SIGCONT at heal.
    Pause,
    /// SIGSTOP the leader.
    PauseLeader,
    /// Random drop of peer packets on every node.
    Loss,
    /// The leader's lease clock runs 2–4× fast (clock-rate skew, what leases feel), and
    /// every running node's HLC clock is shifted by up to ±[`MAX_SKEW_MS`] (offset skew
    /// within the bound, what AP buckets feel); both through the server's test hooks.
    ClockSkew,
    /// Every node holds its outgoing Raft messages back (100–300 ms; the server's test
    /// hook, since this kernel has no `netem`).
    Delay,
    /// Remove a member (MemberRemove, kill, wipe) and add it back empty; with other faults
    /// enabled, both changes happen while one of them is in place.
    Member,
}

impl Fault {
    /// Name as used on the command line and in nemesis.jsonl.
    pub fn name(self) -> &'static str {
        match self {
            Fault::Partition => "partition",
            Fault::IsolateLeader => "isolate-leader",
            Fault::Bridge => "bridge",
            Fault::Asymmetric => "asymmetric",
            Fault::Kill => "kill",
            Fault::KillLeader => "kill-leader",
            Fault::Pause => "pause",
            Fault::PauseLeader => "pause-leader",
            Fault::Loss => "loss",
            Fault::Delay => "delay",
            Fault::ClockSkew => "clock-skew",
            Fault::Member => "member",
        }
    }

    /// Whether the fault needs network namespaces.
    pub fn needs_network(self) -> bool {
        matches!(
            self,
            Fault::Partition
                | Fault::IsolateLeader
                | Fault::Bridge
                | Fault::Asymmetric
                | Fault::Loss
        )
    }

    /// Whether the fault takes the leader away (for the unavailability figure).
    pub fn hits_leader(self) -> bool {
        matches!(
            self,
            Fault::IsolateLeader | Fault::KillLeader | Fault::PauseLeader
        )
    }

    const ALL: [Fault; 12] = [
        Fault::Partition,
        Fault::IsolateLeader,
        Fault::Bridge,
        Fault::Asymmetric,
        Fault::Kill,
        Fault::KillLeader,
        Fault::Pause,
        Fault::PauseLeader,
        Fault::Loss,
        Fault::Delay,
        Fault::ClockSkew,
        Fault::Member,
    ];
}

/// The largest shift of one node's HLC clock under the clock-skew fault: two nodes differ
/// by at most twice this, below the 500 ms the servers' HLCs tolerate.
pub const MAX_SKEW_MS: i64 = 200;

/// Parses a comma-separated list; `partitions`, `process` and `all` are groups; `none` is empty.
pub fn parse_faults(spec: &str, mode: Mode) -> Result<Vec<Fault>, String> {
    let mut out = Vec::new();
    for word in spec.split(',').map(str::trim).filter(|w| !w.is_empty()) {
        let group: Vec<Fault> = match word {
            "none" => vec![],
            "all" => Fault::ALL.to_vec(),
            "partitions" => vec![
                Fault::Partition,
                Fault::IsolateLeader,
                Fault::Bridge,
                Fault::Asymmetric,
            ],
            "process" => vec![
                Fault::Kill,
                Fault::KillLeader,
                Fault::Pause,
                Fault::PauseLeader,
            ],
            w => match Fault::ALL.iter().find(|f| f.name() == w) {
                Some(f) => vec![*f],
                None => {
                    return Err(format!(
                        "unknown nemesis {w:?}; known: {}, partitions, process, all, none",
                        Fault::ALL.map(Fault::name).join(", ")
                    ))
                }
            },
        };
        for f in group {
            if mode == Mode::Local && f.needs_network() {
                if word == "all" {
                    continue;
                }
                return Err(format!("nemesis {} needs --netns (root)", f.name()));
            }
            if !out.contains(&f) {
                out.push(f);
            }
        }
    }
    Ok(out)
}

/// One recorded fault window.
#[derive(Clone, Debug)]
pub struct Window {
    /// Fault kind.
    pub fault: Fault,
    /// Affected node names.
    pub targets: Vec<String>,
    /// Start, ns since run start.
    pub start_ns: u64,
    /// End (heal), ns since run start.
    pub end_ns: u64,
}

/// Schedule parameters.
#[derive(Clone, Debug)]
pub struct Schedule {
    /// Healthy time between faults.
    pub healthy: Duration,
    /// Shortest fault.
    pub fault_min: Duration,
    /// Longest fault.
    pub fault_max: Duration,
    /// Packet loss percentage for `loss`.
    pub loss_percent: u8,
}

/// Applies `fault`; returns the targets' node indexes and a description.
async fn apply(
    cluster: &Cluster,
    members: &Members,
    fault: Fault,
    loss: u8,
    rng: &mut SmallRng,
) -> Result<(Vec<usize>, String), String> {
    let n = cluster.len();
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(rng);
    let leader = if fault.hits_leader() {
        Some(
            find_leader(cluster, members)
                .await
                .ok_or_else(|| "no leader found".to_string())?,
        )
    } else {
        None
    };
    let split = |side: &[usize], other: &[usize]| -> Result<(), String> {
        let mut rules = Vec::new();
        for &a in side {
            for &b in other {
                rules.push((a, b, true, true));
                rules.push((b, a, true, true));
            }
        }
        cluster.block_many(&rules)
    };
    let names =
        |v: &[usize]| -> Vec<String> { v.iter().map(|i| cluster.nodes[*i].name.clone()).collect() };
    match fault {
        Fault::Partition => {
            let minority = &order[..(n - 1) / 2];
            let majority = &order[(n - 1) / 2..];
            split(minority, majority)?;
            Ok((
                minority.to_vec(),
                format!(
                    "minority {:?} | majority {:?}",
                    names(minority),
                    names(majority)
                ),
            ))
        }
        Fault::IsolateLeader => {
            let l = leader.unwrap_or(0);
            let rest: Vec<usize> = (0..n).filter(|i| *i != l).collect();
            split(&[l], &rest)?;
            Ok((
                vec![l],
                format!("leader {} isolated", cluster.nodes[l].name),
            ))
        }
        Fault::Bridge => {
            // order[0] is the bridge; each half plus the bridge is a majority.
            let bridge = order[0];
            let rest = &order[1..];
            let (a, b) = rest.split_at(rest.len() / 2);
            split(a, b)?;
            Ok((
                vec![bridge],
                format!(
                    "bridge {} between {:?} and {:?}",
                    cluster.nodes[bridge].name,
                    names(a),
                    names(b)
                ),
            ))
        }
        Fault::Asymmetric => {
            // The minority cannot receive from the majority, but its packets still arrive.
            let minority = &order[..(n - 1) / 2];
            let majority = &order[(n - 1) / 2..];
            let mut rules = Vec::new();
            for &a in minority {
                for &b in majority {
                    rules.push((a, b, true, false));
                    rules.push((b, a, false, true));
                }
            }
            cluster.block_many(&rules)?;
            Ok((
                minority.to_vec(),
                format!("{:?} deaf to {:?}", names(minority), names(majority)),
            ))
        }
        Fault::Kill | Fault::KillLeader => {
            let t = leader.unwrap_or(order[0]);
            cluster.kill9(t);
            Ok((vec![t], format!("kill -9 {}", cluster.nodes[t].name)))
        }
        Fault::Pause | Fault::PauseLeader => {
            let t = leader.unwrap_or(order[0]);
            cluster.pause(t, true);
            Ok((vec![t], format!("SIGSTOP {}", cluster.nodes[t].name)))
        }
        Fault::Member => {
            let t = order[0];
            let detail = remove_member(cluster, members, t).await?;
            Ok((vec![t], detail))
        }
        Fault::ClockSkew => {
            let t = find_leader(cluster, members)
                .await
                .ok_or_else(|| "no leader found".to_string())?;
            let rate = rng.gen_range(2.0..=4.0);
            cluster.set_clock_rate(t, rate)?;
            let mut offsets = Vec::new();
            for i in 0..n {
                if cluster.is_running(i) {
                    let ms = rng.gen_range(-MAX_SKEW_MS..=MAX_SKEW_MS);
                    cluster.set_clock_offset(i, ms)?;
                    offsets.push(format!("{} {ms:+} ms", cluster.nodes[i].name));
                }
            }
            Ok((
                vec![t],
                format!(
                    "lease clock of the leader {} runs {rate:.2}x fast; HLC clocks {}",
                    cluster.nodes[t].name,
                    offsets.join(", ")
                ),
            ))
        }
        Fault::Delay => {
            let ms = rng.gen_range(100..=300);
            for i in 0..n {
                if cluster.is_running(i) {
                    cluster.set_peer_delay(i, ms)?;
                }
            }
            Ok((
                (0..n).collect(),
                format!("{ms} ms delay on every node's outgoing Raft messages"),
            ))
        }
        Fault::Loss => {
            let p = loss;
            for i in 0..n {
                cluster.set_loss(i, p)?;
            }
            Ok((
                (0..n).collect(),
                format!("{p}% peer packet loss on every node"),
            ))
        }
    }
}

/// Removes member `t` (MemberRemove through the other nodes), kills it and empties its data
/// directory; returns a description.
async fn remove_member(cluster: &Cluster, members: &Members, t: usize) -> Result<String, String> {
    let id = members.ids[t];
    let others: Vec<usize> = (0..cluster.len()).filter(|i| *i != t).collect();
    let was_leader = find_leader(cluster, members).await == Some(t);
    let asked = tokio::time::Instant::now();
    // NotFound after a retry means an earlier attempt did remove it.
    let (_, earlier) = cluster_call(cluster, &others, move |ch| async move {
        match ClusterClient::new(ch)
            .member_remove(MemberRemoveRequest { id })
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.code() == tonic::Code::NotFound => Ok(()),
            Err(e) => Err(e),
        }
    })
    .await
    .map_err(|e| format!("MemberRemove {}: {e}", cluster.nodes[t].name))?;
    let took = asked.elapsed();
    cluster.mark_removed(t)?;
    Ok(format!(
        "member {}{} removed (MemberRemove answered in {} ms; earlier attempts: {:?})",
        cluster.nodes[t].name,
        if was_leader {
            " (last seen leader)"
        } else {
            ""
        },
        took.as_millis(),
        earlier
    ))
}

/// Calls `f` on the given nodes in turn until one succeeds (up to 20 s, 8 s per call).
/// Returns the value and the errors of earlier attempts.
async fn cluster_call<T, F, Fut>(
    cluster: &Cluster,
    nodes: &[usize],
    f: F,
) -> Result<(T, Vec<String>), String>
where
    F: Fn(tonic::transport::Channel) -> Fut,
    Fut: std::future::Future<Output = Result<T, tonic::Status>>,
{
    let start = tokio::time::Instant::now();
    let mut last = String::from("no node to ask");
    let mut earlier = Vec::new();
    let mut k = 0usize;
    while start.elapsed() < Duration::from_secs(20) && !nodes.is_empty() {
        let url = &cluster.nodes[nodes[k % nodes.len()]].client_url;
        k += 1;
        match crate::client::connect(url, Duration::from_secs(1)).await {
            Ok(ch) => match tokio::time::timeout(Duration::from_secs(8), f(ch)).await {
                Ok(Ok(v)) => return Ok((v, earlier)),
                Ok(Err(e)) => last = format!("{url}: {:?}: {}", e.code(), e.message()),
                Err(_) => last = format!("{url}: timeout"),
            },
            Err(e) => last = e,
        }
        earlier.push(last.clone());
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    Err(last)
}

/// Adds removed node `t` back as a new, empty member and lets it start.
async fn rejoin(cluster: &Cluster, members: &mut Members, t: usize) -> Result<(), String> {
    let others: Vec<usize> = (0..cluster.len()).filter(|i| *i != t).collect();
    let url = cluster.nodes[t].peer_url.clone();
    let (member, _) = cluster_call(cluster, &others, move |ch| {
        let url = url.clone();
        async move {
            ClusterClient::new(ch)
                .member_add(MemberAddRequest {
                    peer_ur_ls: vec![url],
                    is_learner: false,
                })
                .await
                .map(|r| r.into_inner().member)
        }
    })
    .await
    .map_err(|e| format!("MemberAdd {}: {e}", cluster.nodes[t].name))?;
    if let Some(m) = member {
        members.ids[t] = m.id;
    }
    cluster.mark_rejoined(t);
    Ok(())
}

/// Heals everything: network rules, paused processes, killed processes.
pub fn heal(cluster: &Cluster) -> Result<(), String> {
    let mut errs = Vec::new();
    if cluster.mode == Mode::Netns {
        if let Err(e) = cluster.heal_network() {
            errs.push(e);
        }
    }
    cluster.resume_all();
    for i in 0..cluster.len() {
        // A node that does not answer was killed: it restarts without delay.
        if cluster.is_running(i) {
            let _ = cluster.set_peer_delay(i, 0);
            let _ = cluster.set_clock_rate(i, 1.0);
            let _ = cluster.set_clock_offset(i, 0);
        }
        if let Err(e) = cluster.check_alive(i) {
            errs.push(format!("node died on its own: {e}"));
        }
        if !cluster.is_running(i) && !cluster.is_removed(i) {
            if let Err(e) = cluster.start(i) {
                errs.push(e);
            }
        }
    }
    if errs.is_empty() {
        Ok(())
    } else {
        Err(errs.join("; "))
    }
}

/// What one fault window did.
struct WindowRun {
    /// When the fault was in place, ns since run start.
    start_ns: u64,
    /// Affected nodes.
    targets: Vec<usize>,
    /// Description.
    detail: String,
    /// The fault could not be applied.
    err: Option<String>,
    /// Healing errors.
    heal_errs: Vec<String>,
}

/// One fault for `dur`, then heal (a `member` fault re-adds its node at heal).
async fn single_fault(
    cluster: &Cluster,
    members: &mut Members,
    fault: Fault,
    sched: &Schedule,
    dur: Duration,
    rng: &mut SmallRng,
    rec: &Recorder,
) -> WindowRun {
    let applied = apply(cluster, members, fault, sched.loss_percent, rng).await;
    // The window starts once the fault is in place.
    let start_ns = rec.now_ns();
    let (targets, detail, err) = match applied {
        Ok((t, d)) => (t, d, None),
        Err(e) => (vec![], String::new(), Some(e)),
    };
    if err.is_none() {
        tokio::time::sleep(dur).await;
    }
    let mut heal_errs = Vec::new();
    if fault == Fault::Member && err.is_none() {
        for &t in &targets {
            if let Err(e) = rejoin(cluster, members, t).await {
                heal_errs.push(e);
            }
        }
    }
    if let Err(e) = heal(cluster) {
        heal_errs.push(e);
    }
    WindowRun {
        start_ns,
        targets,
        detail,
        err,
        heal_errs,
    }
}

/// `member` with other faults enabled: `companion` goes in place first; while it holds, a
/// member is removed (one the companion hit, when it hit some but not all nodes) and, half-way
/// through, added back empty and started — so both membership changes happen during the
/// fault. Then everything heals. A re-add the faulty cluster could not commit is retried
/// after the heal.
async fn member_under_fault(
    cluster: &Cluster,
    members: &mut Members,
    companion: Fault,
    sched: &Schedule,
    dur: Duration,
    rng: &mut SmallRng,
    rec: &Recorder,
) -> WindowRun {
    let n = cluster.len();
    let (hit, companion_detail) =
        match apply(cluster, members, companion, sched.loss_percent, rng).await {
            Ok(v) => v,
            Err(e) => {
                return WindowRun {
                    start_ns: rec.now_ns(),
                    targets: vec![],
                    detail: String::new(),
                    err: Some(format!("companion {}: {e}", companion.name())),
                    heal_errs: heal(cluster).err().into_iter().collect(),
                }
            }
        };
    let start_ns = rec.now_ns();
    let t = if !hit.is_empty() && hit.len() < n {
        hit[rng.gen_range(0..hit.len())]
    } else {
        rng.gen_range(0..n)
    };
    let mut detail = format!("during {} ({companion_detail}): ", companion.name());
    let mut heal_errs = Vec::new();
    let removed = match remove_member(cluster, members, t).await {
        Ok(d) => {
            detail.push_str(&d);
            true
        }
        Err(e) => {
            heal_errs.push(e);
            false
        }
    };
    tokio::time::sleep(dur / 2).await;
    let mut readded = !removed;
    if removed {
        match rejoin(cluster, members, t).await {
            Ok(()) => {
                readded = true;
                detail.push_str("; re-added and started during the fault");
                if let Err(e) = cluster.start(t) {
                    heal_errs.push(e);
                }
            }
            Err(e) => detail.push_str(&format!("; re-add failed during the fault ({e})")),
        }
    }
    tokio::time::sleep(dur / 2).await;
    if let Err(e) = heal(cluster) {
        heal_errs.push(e);
    }
    if !readded {
        match rejoin(cluster, members, t).await {
            Ok(()) => {
                detail.push_str("; re-added after the heal");
                if let Err(e) = cluster.start(t) {
                    heal_errs.push(e);
                }
            }
            Err(e) => heal_errs.push(e),
        }
    }
    let mut targets = hit;
    if !targets.contains(&t) {
        targets.push(t);
    }
    WindowRun {
        start_ns,
        targets,
        detail,
        err: None,
        heal_errs,
    }
}

/// Runs the schedule until `run_for` has passed, then heals. Writes each window to `log`.
#[allow(clippy::too_many_arguments)]
pub async fn run(
    cluster: Arc<Cluster>,
    mut members: Members,
    faults: Vec<Fault>,
    sched: Schedule,
    run_for: Duration,
    rec: Recorder,
    log: Arc<JsonLines>,
    seed: u64,
) -> Vec<Window> {
    use rand::SeedableRng;
    let mut rng = SmallRng::seed_from_u64(seed ^ 0x6e656d65);
    let mut windows = Vec::new();
    let end = tokio::time::Instant::now() + run_for;
    if faults.is_empty() {
        tokio::time::sleep_until(end).await;
        return windows;
    }
    loop {
        tokio::time::sleep(sched.healthy).await;
        let now = tokio::time::Instant::now();
        if now + Duration::from_secs(1) >= end {
            break;
        }
        let fault = faults[rng.gen_range(0..faults.len())];
        let span = sched.fault_min.as_millis() as u64
            ..=sched.fault_max.as_millis().max(sched.fault_min.as_millis()) as u64;
        let dur = Duration::from_millis(rng.gen_range(span)).min(end - now);
        let companions: Vec<Fault> = faults
            .iter()
            .copied()
            .filter(|f| *f != Fault::Member)
            .collect();
        let w = if fault == Fault::Member && !companions.is_empty() {
            let companion = companions[rng.gen_range(0..companions.len())];
            member_under_fault(
                &cluster,
                &mut members,
                companion,
                &sched,
                dur,
                &mut rng,
                &rec,
            )
            .await
        } else {
            single_fault(&cluster, &mut members, fault, &sched, dur, &mut rng, &rec).await
        };
        let WindowRun {
            start_ns,
            targets,
            detail,
            err,
            heal_errs,
        } = w;
        let heal_err = (!heal_errs.is_empty()).then(|| heal_errs.join("; "));
        let end_ns = rec.now_ns();
        let target_names: Vec<String> = targets
            .iter()
            .map(|i| cluster.nodes[*i].name.clone())
            .collect();
        let _ = log.write(&json!({
            "kind": fault.name(),
            "targets": target_names,
            "start_ns": start_ns,
            "end_ns": end_ns,
            "detail": detail,
            "error": err,
            "heal_error": heal_err,
        }));
        if let Some(e) = &err {
            eprintln!("chaos: nemesis {} not applied: {e}", fault.name());
        } else {
            windows.push(Window {
                fault,
                targets: target_names,
                start_ns,
                end_ns,
            });
        }
        if let Some(e) = heal_err {
            eprintln!("chaos: heal: {e}");
        }
    }
    if let Some(rest) = end.checked_duration_since(tokio::time::Instant::now()) {
        tokio::time::sleep(rest).await;
    }
    windows
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_groups() {
        let f = parse_faults("partitions,kill", Mode::Netns).unwrap_or_default();
        assert_eq!(f.len(), 5);
        assert!(parse_faults("partition", Mode::Local).is_err());
        // Without namespaces: the four process faults, member, delay and clock-skew.
        assert_eq!(
            parse_faults("all", Mode::Local).map(|v| v.len()).ok(),
            Some(7)
        );
        assert!(parse_faults("bogus", Mode::Netns).is_err());
        assert_eq!(
            parse_faults("none", Mode::Netns).map(|v| v.len()).ok(),
            Some(0)
        );
    }
}
