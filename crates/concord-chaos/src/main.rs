//! `concord-chaos`: Jepsen-style chaos runs against a Concord cluster.
//!
//! Starts N `concord server` processes (each in its own network namespace on a bridge, or on
//! loopback ports), drives a workload through etcd's gRPC API while a nemesis injects faults,
//! records the history as JSON lines, and hands it to the `concord-check` checker.
//! See docs/chaos.md.

mod client;
mod cluster;
mod history;
mod nemesis;
mod report;
mod resp;
mod workloads;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use concord_proto::consistency::ReadConsistency;
use serde_json::json;

use cluster::{Cluster, Guard, Mode};
use history::{JsonLines, Recorder};
use workloads::{Ctx, Worker, Workload};

#[derive(Parser)]
#[command(
    name = "concord-chaos",
    version,
    about = "Jepsen-style chaos runs against Concord"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Start a cluster, run a workload under faults, check the history.
    Run(RunArgs),
}

#[derive(Parser, Clone)]
struct RunArgs {
    /// Workload.
    #[arg(long, value_enum)]
    workload: Workload,
    /// Number of nodes.
    #[arg(long, default_value_t = 5)]
    nodes: usize,
    /// Seconds of workload under faults.
    #[arg(long, default_value_t = 60)]
    duration: u64,
    /// Faults, comma-separated: partition, isolate-leader, bridge, asymmetric, kill,
    /// kill-leader, pause, pause-leader, loss; groups: partitions, process, all; or none.
    #[arg(long, default_value = "partition,kill,pause")]
    nemesis: String,
    /// The `concord` binary (default: next to this binary).
    #[arg(long)]
    concord_bin: Option<PathBuf>,
    /// The `concord-check` binary (default: next to this binary).
    #[arg(long)]
    checker: Option<PathBuf>,
    /// Output folder (its previous contents from a run are replaced).
    #[arg(long)]
    out: PathBuf,
    /// Negative control: register reads are serializable (may be stale); reads-workload
    /// reads are sent `eventual` but still checked against `--read-level`.
    #[arg(long)]
    stale_reads: bool,
    /// The level of the reads workload's reads: `strong`, `bounded=<duration>` (e.g.
    /// `bounded=500ms`) or `session` (each client process sends its session token).
    #[arg(long, default_value = "session", value_parser = parse_read_level)]
    read_level: ReadConsistency,
    /// Seed of the schedule and of the workload's choices (default: from the clock).
    #[arg(long)]
    seed: Option<u64>,
    /// Nodes in network namespaces on a bridge (needs root; the default when root).
    #[arg(long, conflicts_with = "local")]
    netns: bool,
    /// Nodes on 127.0.0.1 with distinct ports; process faults only.
    #[arg(long)]
    local: bool,
    /// Client processes (default: 2 per node).
    #[arg(long)]
    concurrency: Option<usize>,
    /// Target operations per second, all processes together.
    #[arg(long, default_value_t = 50.0)]
    rate: f64,
    /// Per-operation timeout in milliseconds (a write that times out is recorded as info).
    #[arg(long, default_value_t = 1500)]
    op_timeout_ms: u64,
    /// Healthy seconds between faults.
    #[arg(long, default_value_t = 5)]
    healthy_secs: u64,
    /// Shortest fault, seconds.
    #[arg(long, default_value_t = 5)]
    fault_min_secs: u64,
    /// Longest fault, seconds.
    #[arg(long, default_value_t = 10)]
    fault_max_secs: u64,
    /// Packet loss percentage for the `loss` fault.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u8).range(1..=100))]
    loss_percent: u8,
    /// Number of watchers (watch workload).
    #[arg(long, default_value_t = 3)]
    watchers: usize,
    /// Succeed (exit 0) only when the checker finds the history INVALID.
    #[arg(long)]
    expect_invalid: bool,
    /// AP workloads: the connection's read and write quorums as `R,W` (`CONCORD.QUORUM`);
    /// default: the bucket's.
    #[arg(long, value_parser = parse_quorum)]
    ap_quorum: Option<(u32, u32)>,
    /// Extra arguments for every `concord server` (repeatable).
    #[arg(long = "server-arg", allow_hyphen_values = true)]
    server_args: Vec<String>,
}

/// The checker's verdict.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Verdict {
    Valid,
    Invalid,
    Unknown,
    Skipped,
}

impl Verdict {
    fn as_str(self) -> &'static str {
        match self {
            Verdict::Valid => "VALID",
            Verdict::Invalid => "INVALID",
            Verdict::Unknown => "UNKNOWN",
            Verdict::Skipped => "SKIPPED",
        }
    }
}

struct Outcome {
    ops: u64,
    ok: u64,
    fail: u64,
    info: u64,
    verdict: Verdict,
}

fn sibling(name: &str) -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let p = exe.parent()?.join(name);
    p.exists().then_some(p)
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

fn prepare_out(out: &Path) -> Result<PathBuf, String> {
    std::fs::create_dir_all(out).map_err(|e| format!("{}: {e}", out.display()))?;
    let out = std::fs::canonicalize(out).map_err(|e| format!("{}: {e}", out.display()))?;
    for d in ["data", "logs"] {
        let p = out.join(d);
        if p.exists() {
            std::fs::remove_dir_all(&p).map_err(|e| format!("{}: {e}", p.display()))?;
        }
    }
    for f in [
        "history.jsonl",
        "nemesis.jsonl",
        "summary.json",
        "timeline.svg",
        "check.txt",
    ] {
        let _ = std::fs::remove_file(out.join(f));
    }
    Ok(out)
}

/// Runs the checker; its exit code gives the verdict (0 valid, 1 invalid, else unknown).
fn run_checker(args: &RunArgs, out: &Path) -> Verdict {
    let bin = args.checker.clone().or_else(|| sibling("concord-check"));
    let Some(bin) = bin.filter(|b| b.exists()) else {
        eprintln!("chaos: concord-check not found; checking skipped");
        return Verdict::Skipped;
    };
    let history = out.join("history.jsonl");
    let result = Command::new(&bin)
        .arg(args.workload.name())
        .arg(&history)
        .output();
    match result {
        Ok(o) => {
            let mut text = String::from_utf8_lossy(&o.stdout).into_owned();
            text.push_str(&String::from_utf8_lossy(&o.stderr));
            let _ = std::fs::write(out.join("check.txt"), &text);
            for line in text.lines().take(20) {
                eprintln!("check: {line}");
            }
            match o.status.code() {
                Some(0) => Verdict::Valid,
                Some(1) => Verdict::Invalid,
                _ => Verdict::Unknown,
            }
        }
        Err(e) => {
            eprintln!("chaos: running {}: {e}", bin.display());
            Verdict::Unknown
        }
    }
}

/// What a run is set to do, checked before anything starts.
struct Plan {
    mode: Mode,
    faults: Vec<nemesis::Fault>,
    bin: PathBuf,
    out: PathBuf,
    seed: u64,
}

/// Checks the arguments and resolves the binary, the output folder and the seed.
fn plan(args: &RunArgs) -> Result<Plan, String> {
    if args.nodes == 0 || args.nodes > 9 {
        return Err("--nodes must be between 1 and 9".into());
    }
    let mode = if args.local {
        Mode::Local
    } else if args.netns || is_root() {
        Mode::Netns
    } else {
        Mode::Local
    };
    if mode == Mode::Netns && !is_root() {
        return Err("--netns needs root (or use --local)".into());
    }
    let faults = nemesis::parse_faults(&args.nemesis, mode)?;
    let bin = args
        .concord_bin
        .clone()
        .or_else(|| sibling("concord"))
        .ok_or("no concord binary: pass --concord-bin")?;
    let bin = std::fs::canonicalize(&bin).map_err(|e| format!("{}: {e}", bin.display()))?;
    let out = prepare_out(&args.out)?;
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
    });
    Ok(Plan {
        mode,
        faults,
        bin,
        out,
        seed,
    })
}

/// `--read-level`: a level with a checkable promise (`eventual` promises nothing).
fn parse_quorum(s: &str) -> Result<(u32, u32), String> {
    let (r, w) = s.split_once(',').ok_or("expected R,W")?;
    let n = |x: &str| x.trim().parse::<u32>().map_err(|e| format!("{x:?}: {e}"));
    Ok((n(r)?, n(w)?))
}

fn parse_read_level(s: &str) -> Result<ReadConsistency, String> {
    if s == "session" {
        // The token is each process's own.
        return Ok(ReadConsistency::Session(0));
    }
    match s.parse::<ReadConsistency>().map_err(|e| e.to_string())? {
        ReadConsistency::Eventual => Err("eventual reads promise nothing to check; for the \
             negative control use --stale-reads with the level they are checked against"
            .into()),
        level => Ok(level),
    }
}

/// The workload's setup before its clients start (accounts, the lock key, the revision
/// watchers start from); returns that revision for the watch workload, else 0.
async fn prepare_workload(
    ctx: &Arc<Ctx>,
    host: &client::ClientHost,
    workload: Workload,
) -> Result<i64, String> {
    let c = ctx.clone();
    match workload {
        Workload::Bank => {
            host.run(async move { workloads::bank_setup(&c).await })
                .await??
        }
        Workload::Lock => {
            host.run(async move { workloads::lock_setup(&c).await })
                .await??
        }
        Workload::Watch => {
            return Ok(host
                .run(async move { workloads::current_revision(&c).await })
                .await??
                + 1)
        }
        _ => {}
    }
    Ok(0)
}

/// Starts the workload's clients (and, for the watch workload, its watchers).
fn spawn_clients(
    args: &RunArgs,
    ctx: &Arc<Ctx>,
    host: &client::ClientHost,
    watch_from: i64,
) -> (Tasks<()>, Tasks<()>) {
    let mut clients = Tasks(Vec::new());
    for p in 0..ctx.concurrency {
        let w = Worker::new(ctx.clone(), p);
        clients.0.push(match args.workload {
            Workload::Register => host.spawn(workloads::register_worker(w)),
            Workload::Bank => host.spawn(workloads::bank_worker(w)),
            Workload::Set => host.spawn(workloads::set_worker(w)),
            Workload::Lock => host.spawn(workloads::lock_worker(w)),
            Workload::Watch => host.spawn(workloads::watch_writer(w)),
            Workload::Reads => host.spawn(workloads::reads_worker(w)),
            Workload::ApSet => host.spawn(workloads::ap_set_worker(w)),
            Workload::ApCounter => host.spawn(workloads::ap_counter_worker(w)),
            Workload::ApOrSet => host.spawn(workloads::ap_orset_worker(w)),
            Workload::ApRegister => host.spawn(workloads::ap_register_worker(w)),
            Workload::ApSession => host.spawn(workloads::ap_session_worker(w)),
        });
    }
    let mut watchers = Tasks(Vec::new());
    if args.workload == Workload::Watch {
        for w in 0..args.watchers.max(1) {
            watchers
                .0
                .push(host.spawn(workloads::watcher(ctx.clone(), w, watch_from)));
        }
    }
    (clients, watchers)
}

/// What the end of a run found: whether the cluster recovered after the final heal, whether
/// the workload's final read succeeded, and which nodes exited on their own.
struct Aftermath {
    recovered: bool,
    final_ok: bool,
    crashed: Vec<String>,
}

/// Heals every fault, waits for the cluster, runs the final read and stops the watchers.
async fn recover(
    cluster: &Cluster,
    host: &client::ClientHost,
    ctx: &Arc<Ctx>,
    workload: Workload,
    mut watchers: Tasks<()>,
) -> Aftermath {
    if let Err(e) = nemesis::heal(cluster) {
        eprintln!("chaos: final heal: {e}");
    }
    let ready = client::wait_ready(cluster, Duration::from_secs(30)).await;
    if let Err(e) = &ready {
        eprintln!("chaos: cluster did not recover after healing: {e}");
    }
    let final_ok = host
        .run(workloads::final_read(ctx.clone(), workload))
        .await
        .unwrap_or(false);
    if !final_ok {
        eprintln!("chaos: final read failed for 30 s");
    }
    ctx.draining.store(true, Ordering::SeqCst);
    for t in watchers.0.iter_mut() {
        let _ = t.await;
    }
    let crashed = (0..cluster.len())
        .filter_map(|i| cluster.check_alive(i).err())
        .collect();
    Aftermath {
        recovered: ready.is_ok(),
        final_ok,
        crashed,
    }
}

/// Writes `summary.json` and `timeline.svg`; returns the summary.
fn write_reports(
    args: &RunArgs,
    plan: &Plan,
    events: &[history::Brief],
    windows: &[nemesis::Window],
    extra: serde_json::Value,
) -> Result<serde_json::Value, String> {
    let summary = report::summary(events, windows, extra);
    std::fs::write(
        plan.out.join("summary.json"),
        serde_json::to_string_pretty(&summary).unwrap_or_default(),
    )
    .map_err(|e| format!("summary.json: {e}"))?;
    let title = format!(
        "concord-chaos {} ({} nodes, seed {}): ok ops per second",
        args.workload.name(),
        args.nodes,
        plan.seed
    );
    if let Err(e) = report::timeline_svg(&plan.out.join("timeline.svg"), events, windows, &title) {
        eprintln!("chaos: {e}");
    }
    Ok(summary)
}

async fn run(args: RunArgs) -> Result<Outcome, String> {
    let plan = plan(&args)?;
    let Plan {
        mode,
        seed,
        ref out,
        ..
    } = plan;
    let fault_names: Vec<&str> = plan.faults.iter().map(|f| f.name()).collect();
    eprintln!(
        "chaos: workload={} nodes={} mode={mode:?} nemesis={} seed={seed} out={}",
        args.workload.name(),
        args.nodes,
        fault_names.join(","),
        out.display()
    );

    cluster::remove_leftovers(&plan.bin);
    let cluster = Arc::new(Cluster::new(
        mode,
        args.nodes,
        plan.bin.clone(),
        out,
        args.server_args.clone(),
    ));
    let guard = Guard(cluster.clone());
    cluster.setup_hosts()?;
    for i in 0..cluster.len() {
        cluster.start(i)?;
    }
    let members = client::wait_ready(&cluster, Duration::from_secs(30)).await?;
    let host = client::ClientHost::new(mode)?;
    let client_host = host.verify(&cluster).await?;
    eprintln!("chaos: cluster ready; {client_host}");

    let start = Instant::now();
    let rec = Recorder::create(&out.join("history.jsonl"), start)
        .map_err(|e| format!("history.jsonl: {e}"))?;
    let nem_log = Arc::new(
        JsonLines::create(&out.join("nemesis.jsonl")).map_err(|e| format!("nemesis.jsonl: {e}"))?,
    );
    let concurrency = args.concurrency.unwrap_or(2 * args.nodes).max(1);
    let run_for = Duration::from_secs(args.duration);
    let ctx = Arc::new(Ctx {
        cluster: cluster.clone(),
        rec: rec.clone(),
        op_timeout: Duration::from_millis(args.op_timeout_ms.max(10)),
        concurrency,
        rate: args.rate,
        stale_reads: args.stale_reads,
        read_level: args.read_level,
        ap_quorum: args.ap_quorum,
        deadline: tokio::time::Instant::now() + run_for,
        seed,
        max_write_rev: AtomicI64::new(0),
        counter: AtomicI64::new(0),
        draining: AtomicBool::new(false),
    });

    let watch_from = prepare_workload(&ctx, &host, args.workload).await?;
    let (mut clients, watchers) = spawn_clients(&args, &ctx, &host, watch_from);
    let sched = nemesis::Schedule {
        healthy: Duration::from_secs(args.healthy_secs),
        fault_min: Duration::from_secs(args.fault_min_secs),
        fault_max: Duration::from_secs(args.fault_max_secs),
        loss_percent: args.loss_percent,
    };
    let mut nem = Tasks(vec![tokio::spawn(nemesis::run(
        cluster.clone(),
        members.clone(),
        plan.faults.clone(),
        sched,
        run_for,
        rec.clone(),
        nem_log.clone(),
        seed,
    ))]);
    for t in clients.0.iter_mut() {
        let _ = t.await;
    }
    let mut windows = Vec::new();
    for h in nem.0.iter_mut() {
        windows = h.await.unwrap_or_default();
    }
    let after = recover(&cluster, &host, &ctx, args.workload, watchers).await;

    host.check()?;
    let events = rec.finish()?;
    let extra = json!({
        "workload": args.workload.name(),
        "nodes": args.nodes,
        "mode": format!("{mode:?}"),
        "duration_s": args.duration,
        "nemesis": fault_names,
        "seed": seed,
        "concurrency": concurrency,
        "stale_reads": args.stale_reads,
        "read_level": args.read_level.to_string(),
        "client_host": client_host,
        "recovered_after_heal": after.recovered,
        "final_read_ok": after.final_ok,
        "nodes_exited_unexpectedly": after.crashed,
    });
    let summary = write_reports(&args, &plan, &events, &windows, extra)?;
    drop(guard);
    let verdict = run_checker(&args, out);
    let get = |k: &str| summary.get(k).and_then(|v| v.as_u64()).unwrap_or(0);
    Ok(Outcome {
        ops: get("ops"),
        ok: get("ok"),
        fail: get("fail"),
        info: get("info"),
        verdict,
    })
}

/// Aborts spawned tasks when dropped (on Ctrl-C, the run future is dropped).
struct Tasks<T>(Vec<tokio::task::JoinHandle<T>>);

impl<T> Drop for Tasks<T> {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let Cmd::Run(args) = cli.cmd;
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("chaos: tokio: {e}");
            return ExitCode::from(2);
        }
    };
    let a = args.clone();
    let result = rt.block_on(async move {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => return Err(format!("signal handler: {e}")),
            };
        tokio::select! {
            r = run(a) => r,
            _ = tokio::signal::ctrl_c() => Err("interrupted".to_string()),
            _ = term.recv() => Err("terminated".to_string()),
        }
    });
    rt.shutdown_timeout(Duration::from_secs(2));
    let out = args.out.display();
    match result {
        Ok(o) => {
            println!(
                "chaos: workload={} nodes={} ops={} ok={} fail={} info={} verdict={} out={}",
                args.workload.name(),
                args.nodes,
                o.ops,
                o.ok,
                o.fail,
                o.info,
                o.verdict.as_str(),
                out
            );
            let code = match (o.verdict, args.expect_invalid) {
                (Verdict::Valid, false) | (Verdict::Invalid, true) => 0,
                (Verdict::Invalid, false) | (Verdict::Valid, true) => 1,
                _ => 2,
            };
            ExitCode::from(code)
        }
        Err(e) => {
            eprintln!("chaos: error: {e}");
            println!(
                "chaos: workload={} nodes={} ops=0 ok=0 fail=0 info=0 verdict=UNKNOWN out={}",
                args.workload.name(),
                args.nodes,
                out
            );
            ExitCode::from(2)
        }
    }
}
