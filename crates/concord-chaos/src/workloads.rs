//! Workloads: client processes that invoke operations and record them.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use concord_proto::consistency::ReadConsistency;
use concord_proto::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use concord_proto::etcdserverpb::kv_client::KvClient;
use concord_proto::etcdserverpb::lease_client::LeaseClient;
use concord_proto::etcdserverpb::request_op::Request;
use concord_proto::etcdserverpb::watch_client::WatchClient;
use concord_proto::etcdserverpb::watch_request::RequestUnion;
use concord_proto::etcdserverpb::{
    Compare, LeaseGrantRequest, LeaseRevokeRequest, PutRequest, RangeRequest, RequestOp,
    TxnRequest, WatchCreateRequest, WatchRequest,
};
use concord_proto::v3lockpb::lock_client::LockClient;
use concord_proto::v3lockpb::{LockRequest, UnlockRequest};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Map, Value};
use tonic::transport::Channel;

use crate::client::{connect, OpErr};
use crate::cluster::Cluster;
use crate::resp::{self, Reply};
use concord_check::history::EventType;

use crate::history::{Op, Recorder};

/// The workloads: the checker's list, so runner and checker cannot disagree.
pub use concord_check::Workload;

/// Shared context of all client processes.
pub struct Ctx {
    /// The cluster.
    pub cluster: Arc<Cluster>,
    /// History recorder.
    pub rec: Recorder,
    /// Per-operation timeout.
    pub op_timeout: Duration,
    /// Number of client processes.
    pub concurrency: usize,
    /// Target total operations per second.
    pub rate: f64,
    /// Negative control: serializable register reads; `eventual` reads-workload reads.
    pub stale_reads: bool,
    /// The reads workload's level.
    pub read_level: ReadConsistency,
    /// AP workloads: the connections' (R, W), when not the bucket's.
    pub ap_quorum: Option<(u32, u32)>,
    /// When processes stop invoking.
    pub deadline: tokio::time::Instant,
    /// Seed.
    pub seed: u64,
    /// Highest revision of an acknowledged write.
    pub max_write_rev: AtomicI64,
    /// Unique value counter.
    pub counter: AtomicI64,
    /// Set once the run is healed and the watchers should catch up and stop.
    pub draining: AtomicBool,
}

/// Result of an operation that got an answer.
pub enum Done {
    /// It took effect: optional value for the completion, revision, and extra data.
    Ok(Option<Value>, Option<i64>, Vec<i64>),
    /// It certainly did not take effect.
    Fail(String),
}

fn ok(value: Option<Value>, rev: Option<i64>) -> Result<Done, OpErr> {
    Ok(Done::Ok(value, rev, vec![]))
}

/// One client process (its id changes after an indeterminate result, as in Jepsen).
pub struct Worker {
    ctx: Arc<Ctx>,
    /// Current process id.
    pub process: u64,
    chan: Option<(usize, Channel)>,
    rng: SmallRng,
    /// The member the next operation goes to, when the workload picks one per operation.
    pin: Option<usize>,
    /// AP workloads: a Redis connection and the node it goes to.
    redis: Option<(usize, resp::Conn)>,
}

impl Worker {
    /// Worker number `p`.
    pub fn new(ctx: Arc<Ctx>, p: usize) -> Self {
        let rng = SmallRng::seed_from_u64(ctx.seed.wrapping_mul(1_000_003).wrapping_add(p as u64));
        Worker {
            ctx,
            process: p as u64,
            chan: None,
            rng,
            pin: None,
            redis: None,
        }
    }

    /// The node of the current process id: `id mod N`, shifted by one for each new id the
    /// worker took, so a worker that lost track of an operation moves to the next node.
    fn node(&self) -> usize {
        if let Some(n) = self.pin {
            return n % self.ctx.cluster.len();
        }
        let p = self.process as usize;
        (p + p / self.ctx.concurrency.max(1)) % self.ctx.cluster.len()
    }

    async fn channel(&mut self) -> Result<Channel, String> {
        let node = self.node();
        if let Some((i, ch)) = &self.chan {
            if *i == node {
                return Ok(ch.clone());
            }
        }
        let t = self.ctx.op_timeout.min(Duration::from_secs(1));
        let ch = connect(&self.ctx.cluster.nodes[node].client_url, t).await?;
        self.chan = Some((node, ch.clone()));
        Ok(ch)
    }

    fn running(&self) -> bool {
        tokio::time::Instant::now() < self.ctx.deadline
    }

    async fn pace(&mut self) {
        let mean = self.ctx.concurrency as f64 / self.ctx.rate.max(0.1);
        let d = self.rng.gen_range(0.0..2.0 * mean);
        tokio::time::sleep(Duration::from_secs_f64(d)).await;
    }

    /// Puts integer `v` at `key`, recorded as operation `f` (`write`, `add`) on that key;
    /// returns the write's revision when it was acknowledged.
    async fn put_int(&mut self, f: &'static str, key: String, v: i64) -> Option<i64> {
        let k = key.clone();
        let op = Op {
            f,
            key: Some(key),
            value: json!(v),
            ..Op::default()
        };
        let t = self.ctx.op_timeout;
        self.perform(op, true, t, move |ch| async move {
            let r = KvClient::new(ch)
                .put(PutRequest {
                    key: k.into_bytes(),
                    value: v.to_string().into_bytes(),
                    ..Default::default()
                })
                .await?
                .into_inner();
            let rev = rev_of(r.header.as_ref());
            Ok(Done::Ok(None, rev, rev.into_iter().collect()))
        })
        .await
        .1
        .first()
        .copied()
    }

    /// Records the invocation, runs `f` with a timeout, records the completion.
    /// Returns the completion type and, on success, the extra data.
    async fn perform<F, Fut>(
        &mut self,
        mut op: Op,
        write_like: bool,
        timeout: Duration,
        f: F,
    ) -> (EventType, Vec<i64>)
    where
        F: FnOnce(Channel) -> Fut,
        Fut: Future<Output = Result<Done, OpErr>>,
    {
        let rec = self.ctx.rec.clone();
        op.node = Some(self.ctx.cluster.nodes[self.node()].name.clone());
        rec.record(self.process, EventType::Invoke, &op);
        let ch = match self.channel().await {
            Ok(c) => c,
            Err(e) => {
                op.error = Some(e);
                rec.record(self.process, EventType::Fail, &op);
                tokio::time::sleep(Duration::from_millis(100)).await;
                return (EventType::Fail, vec![]);
            }
        };
        let res = match tokio::time::timeout(timeout, f(ch)).await {
            Ok(r) => r,
            Err(_) => Err(OpErr {
                msg: "timeout".into(),
                definite: false,
            }),
        };
        match res {
            Ok(Done::Ok(value, revision, extra)) => {
                if let Some(v) = value {
                    op.value = v;
                }
                op.revision = revision;
                if write_like {
                    if let Some(r) = revision {
                        self.ctx.max_write_rev.fetch_max(r, Ordering::SeqCst);
                    }
                }
                rec.record(self.process, EventType::Ok, &op);
                (EventType::Ok, extra)
            }
            Ok(Done::Fail(msg)) => {
                op.error = Some(msg);
                rec.record(self.process, EventType::Fail, &op);
                (EventType::Fail, vec![])
            }
            Err(e) => {
                self.chan = None;
                op.error = Some(e.msg);
                if e.definite || !write_like {
                    rec.record(self.process, EventType::Fail, &op);
                    (EventType::Fail, vec![])
                } else {
                    rec.record(self.process, EventType::Info, &op);
                    self.process += self.ctx.concurrency as u64;
                    (EventType::Info, vec![])
                }
            }
        }
    }
}

impl Worker {
    /// A Redis connection to the current node, with the run's quorums set.
    async fn redis(&mut self) -> Result<resp::Conn, String> {
        let node = self.node();
        if let Some((n, conn)) = self.redis.take() {
            if n == node {
                return Ok(conn);
            }
        }
        let t = self.ctx.op_timeout.min(Duration::from_secs(1));
        let mut conn = resp::Conn::connect(&self.ctx.cluster.nodes[node].redis_addr, t).await?;
        if let Some((r, w)) = self.ctx.ap_quorum {
            let (r, w) = (r.to_string(), w.to_string());
            let args: [&[u8]; 5] = [b"CONCORD.QUORUM", b"R", r.as_bytes(), b"W", w.as_bytes()];
            match tokio::time::timeout(t, conn.cmd(&args)).await {
                Ok(Ok(Reply::Array(_))) => {}
                other => return Err(format!("CONCORD.QUORUM answered {other:?}")),
            }
        }
        Ok(conn)
    }

    /// Sends `args` on the connection to the current node, outside the history (a
    /// session's bookkeeping).
    async fn redis_aside(&mut self, args: &[&[u8]]) -> Result<Reply, String> {
        let node = self.node();
        let mut conn = self.redis().await?;
        match tokio::time::timeout(self.ctx.op_timeout, conn.cmd(args)).await {
            Ok(Ok(reply)) => {
                self.redis = Some((node, conn));
                Ok(reply)
            }
            Ok(Err(e)) => Err(e.msg),
            Err(_) => Err("timeout".into()),
        }
    }

    /// Records `op`, sends `args` over RESP and records what `judge` makes of the reply
    /// (`Ok(value)`: it happened; `Err`: Redis's error text). A write is indeterminate
    /// (`info`, and the process takes a new id) when the command may have reached the
    /// server without an answer, or the answer is `TRYAGAIN` (the write may or may not have
    /// been stored); it failed when it never left, or the server refused it.
    async fn redis_op(
        &mut self,
        mut op: Op,
        write: bool,
        args: Vec<Vec<u8>>,
        judge: impl FnOnce(Reply) -> Result<Option<Value>, String>,
    ) -> EventType {
        let rec = self.ctx.rec.clone();
        let node = self.node();
        op.node = Some(self.ctx.cluster.nodes[node].name.clone());
        rec.record(self.process, EventType::Invoke, &op);
        let mut conn = match self.redis().await {
            Ok(c) => c,
            Err(e) => {
                op.error = Some(e);
                rec.record(self.process, EventType::Fail, &op);
                tokio::time::sleep(Duration::from_millis(100)).await;
                return EventType::Fail;
            }
        };
        let refs: Vec<&[u8]> = args.iter().map(Vec::as_slice).collect();
        let reply = tokio::time::timeout(self.ctx.op_timeout, conn.cmd(&refs)).await;
        let outcome = match reply {
            Ok(Ok(Reply::Error(e))) if e.starts_with("TRYAGAIN") => Err((true, e)),
            Ok(Ok(reply)) => {
                self.redis = Some((node, conn));
                judge(reply).map_err(|e| (false, e))
            }
            Ok(Err(e)) => Err((e.sent, e.msg)),
            Err(_) => Err((true, "timeout".into())),
        };
        match outcome {
            Ok(value) => {
                if let Some(v) = value {
                    op.value = v;
                }
                rec.record(self.process, EventType::Ok, &op);
                EventType::Ok
            }
            Err((maybe, e)) => {
                op.error = Some(e);
                if maybe && write {
                    rec.record(self.process, EventType::Info, &op);
                    self.process += self.ctx.concurrency as u64;
                    EventType::Info
                } else {
                    rec.record(self.process, EventType::Fail, &op);
                    EventType::Fail
                }
            }
        }
    }
}

/// Runs one AP set process: `SET ap/<n> <n>` of unique keys until the deadline.
pub async fn ap_set_worker(mut w: Worker) {
    while w.running() {
        let n = w.ctx.counter.fetch_add(1, Ordering::SeqCst);
        let op = Op {
            f: "add",
            key: Some(format!("ap/{n}")),
            value: json!(n),
            ..Op::default()
        };
        let args = vec![
            b"SET".to_vec(),
            format!("ap/{n}").into_bytes(),
            n.to_string().into_bytes(),
        ];
        w.redis_op(op, true, args, |r| match r {
            Reply::Simple(s) if s == "OK" => Ok(None),
            other => Err(format!("SET answered {other:?}")),
        })
        .await;
        w.pace().await;
    }
}

/// The AP counter key.
const AP_COUNTER: &str = "ap/counter";

/// Runs one AP register process until the deadline, over the Redis protocol: reads are
/// `CONCORD.CASGET`, writes `SET k v GET`, compare-and-sets `SET k n IFEQ e`, all decided
/// by Paxos among the key's owners (five keys). With `--stale-reads` (the negative
/// control) reads are plain `GET`s and writes plain `SET`s, which are not linearizable.
pub async fn ap_register_worker(mut w: Worker) {
    let stale = w.ctx.stale_reads;
    while w.running() {
        let key = format!("ap/r{}", w.rng.gen_range(0..5));
        let choice = w.rng.gen_range(0..4);
        w.pin = (stale && choice < 2).then(|| w.rng.gen_range(0..w.ctx.cluster.len()));
        let int = |r: Option<Vec<u8>>| r.map_or(Value::Null, |v| parse_int(&v));
        if choice < 2 {
            let op = Op {
                f: "read",
                key: Some(key.clone()),
                ..Op::default()
            };
            let cmd: &[u8] = if stale { b"GET" } else { b"CONCORD.CASGET" };
            let args = vec![cmd.to_vec(), key.into_bytes()];
            w.redis_op(op, false, args, |r| match r {
                Reply::Bulk(v) => Ok(Some(int(v))),
                other => Err(format!("read answered {other:?}")),
            })
            .await;
        } else if choice == 2 {
            let v = w.rng.gen_range(0..5i64);
            let op = Op {
                f: "write",
                key: Some(key.clone()),
                value: json!(v),
                ..Op::default()
            };
            let mut args = vec![
                b"SET".to_vec(),
                key.into_bytes(),
                v.to_string().into_bytes(),
            ];
            if !stale {
                args.push(b"GET".to_vec());
            }
            w.redis_op(op, true, args, |r| match r {
                Reply::Simple(_) | Reply::Bulk(_) => Ok(None),
                other => Err(format!("SET answered {other:?}")),
            })
            .await;
        } else {
            let (e, n) = (w.rng.gen_range(0..5i64), w.rng.gen_range(0..5i64));
            let op = Op {
                f: "cas",
                key: Some(key.clone()),
                value: json!([e, n]),
                ..Op::default()
            };
            let args = vec![
                b"SET".to_vec(),
                key.into_bytes(),
                n.to_string().into_bytes(),
                b"IFEQ".to_vec(),
                e.to_string().into_bytes(),
            ];
            w.redis_op(op, true, args, |r| match r {
                Reply::Simple(_) => Ok(None),
                Reply::Bulk(None) => Err("compare failed".into()),
                other => Err(format!("SET IFEQ answered {other:?}")),
            })
            .await;
        }
        w.pace().await;
    }
}

/// Runs one AP session process until the deadline. Worker `p` writes key `ap/s<p>` alone
/// (values 1, 2, 3, ...) and reads its own key or another worker's; every request goes to
/// a random member, with the session's token: `CONCORD.SESSION JOIN token` before it,
/// `CONCORD.SESSION` after it for the new token. When the token after an operation cannot
/// be had, the worker starts a new session (its id grows by the concurrency), since the old
/// one lost track of what it saw. With `--stale-reads` (the negative control) no token
/// travels.
pub async fn ap_session_worker(mut w: Worker) {
    let me = w.process;
    let stale = w.ctx.stale_reads;
    let workers = w.ctx.concurrency.max(1) as u64;
    let mut session = me;
    let mut token: Option<Vec<u8>> = None;
    let mut next = 1i64;
    while w.running() {
        w.pin = Some(w.rng.gen_range(0..w.ctx.cluster.len()));
        if let (false, Some(t)) = (stale, &token) {
            let join: [&[u8]; 3] = [b"CONCORD.SESSION", b"JOIN", t];
            if !matches!(w.redis_aside(&join).await, Ok(Reply::Simple(_))) {
                w.pace().await;
                continue;
            }
        }
        let write = w.rng.gen_range(0..3) == 0;
        let owner = if write || w.rng.gen_bool(0.5) {
            me
        } else {
            w.rng.gen_range(0..workers)
        };
        let key = format!("ap/s{owner}");
        let done = if write {
            let n = next;
            next += 1;
            let op = Op {
                f: "write",
                key: Some(key.clone()),
                value: json!({ "session": session, "value": n }),
                ..Op::default()
            };
            let args = vec![
                b"SET".to_vec(),
                key.into_bytes(),
                n.to_string().into_bytes(),
            ];
            w.redis_op(op, true, args, |r| match r {
                Reply::Simple(_) => Ok(None),
                other => Err(format!("SET answered {other:?}")),
            })
            .await
        } else {
            let op = Op {
                f: "read",
                key: Some(key.clone()),
                value: json!({ "session": session }),
                ..Op::default()
            };
            let args = vec![b"GET".to_vec(), key.into_bytes()];
            w.redis_op(op, false, args, |r| match r {
                Reply::Bulk(v) => Ok(Some(json!({
                    "session": session,
                    "value": v.map_or(Value::Null, |v| parse_int(&v)),
                }))),
                other => Err(format!("GET answered {other:?}")),
            })
            .await
        };
        if !stale && done == EventType::Ok {
            match w.redis_aside(&[b"CONCORD.SESSION"]).await {
                Ok(Reply::Bulk(Some(t))) => token = Some(t),
                _ => {
                    session += workers;
                    token = None;
                }
            }
        }
        w.pace().await;
    }
}

/// The AP OR-set key.
const AP_ORSET: &str = "ap/orset";

/// Runs one AP OR-set process until the deadline: `SADD` of a unique member to one set
/// key, or (one operation in four) `SREM` of a member this process added and saw
/// acknowledged. The set checker then finds acknowledged adds lost and acknowledged
/// removes undone.
pub async fn ap_orset_worker(mut w: Worker) {
    let mut added = Vec::new();
    while w.running() {
        let remove = !added.is_empty() && w.rng.gen_range(0..4) == 0;
        let (f, cmd, n) = if remove {
            let i = w.rng.gen_range(0..added.len());
            ("remove", "SREM", added.swap_remove(i))
        } else {
            ("add", "SADD", w.ctx.counter.fetch_add(1, Ordering::SeqCst))
        };
        let op = Op {
            f,
            key: Some(AP_ORSET.into()),
            value: json!(n),
            ..Op::default()
        };
        let args = vec![
            cmd.as_bytes().to_vec(),
            AP_ORSET.as_bytes().to_vec(),
            n.to_string().into_bytes(),
        ];
        let done = w
            .redis_op(op, true, args, |r| match r {
                Reply::Integer(_) => Ok(None),
                other => Err(format!("{cmd} answered {other:?}")),
            })
            .await;
        if !remove && done == EventType::Ok {
            added.push(n);
        }
        w.pace().await;
    }
}

/// Runs one AP counter process: `INCR` of one key until the deadline.
pub async fn ap_counter_worker(mut w: Worker) {
    while w.running() {
        let op = Op {
            f: "add",
            key: Some(AP_COUNTER.into()),
            value: json!(1),
            ..Op::default()
        };
        let args = vec![b"INCR".to_vec(), AP_COUNTER.as_bytes().to_vec()];
        w.redis_op(op, true, args, |r| match r {
            Reply::Integer(_) => Ok(None),
            other => Err(format!("INCR answered {other:?}")),
        })
        .await;
        w.pace().await;
    }
}

/// The AP workloads' final read through member `w`'s node: for the set, every key that was
/// attempted, by `MGET` in chunks; for the counter, the counter; for the OR-set, its
/// members.
async fn ap_final_read(w: &mut Worker, workload: Workload) -> EventType {
    let op = Op {
        f: "read",
        ..Op::default()
    };
    if workload == Workload::ApOrSet {
        let args = vec![b"SMEMBERS".to_vec(), AP_ORSET.as_bytes().to_vec()];
        return w
            .redis_op(op, false, args, |r| match r {
                Reply::Array(items) => {
                    let mut members = Vec::with_capacity(items.len());
                    for item in items {
                        match item {
                            Reply::Bulk(Some(v)) => members.push(parse_int(&v)),
                            other => return Err(format!("SMEMBERS listed {other:?}")),
                        }
                    }
                    members.sort_by_key(|v| v.as_i64().unwrap_or(i64::MAX));
                    Ok(Some(Value::Array(members)))
                }
                other => Err(format!("SMEMBERS answered {other:?}")),
            })
            .await;
    }
    if workload == Workload::ApCounter {
        let args = vec![b"GET".to_vec(), AP_COUNTER.as_bytes().to_vec()];
        return w
            .redis_op(op, false, args, |r| match r {
                Reply::Bulk(Some(v)) => Ok(Some(parse_int(&v))),
                Reply::Bulk(None) => Ok(Some(json!(0))),
                other => Err(format!("GET answered {other:?}")),
            })
            .await;
    }
    let attempted = w.ctx.counter.load(Ordering::SeqCst);
    let mut present: Vec<Value> = Vec::new();
    // One read recorded for all the chunks (the checker takes the last ok read as the
    // final one), completed with their union.
    let rec = w.ctx.rec.clone();
    let mut op = op;
    op.node = Some(w.ctx.cluster.nodes[w.node()].name.clone());
    rec.record(w.process, EventType::Invoke, &op);
    let mut failure = None;
    for chunk in (0..attempted).collect::<Vec<_>>().chunks(200) {
        let mut args = vec![b"MGET".to_vec()];
        args.extend(chunk.iter().map(|n| format!("ap/{n}").into_bytes()));
        let mut conn = match w.redis().await {
            Ok(c) => c,
            Err(e) => {
                failure = Some(e);
                break;
            }
        };
        let refs: Vec<&[u8]> = args.iter().map(Vec::as_slice).collect();
        match tokio::time::timeout(Duration::from_secs(10), conn.cmd(&refs)).await {
            Ok(Ok(Reply::Array(items))) => {
                w.redis = Some((w.node(), conn));
                present.extend(items.into_iter().filter_map(|i| match i {
                    Reply::Bulk(Some(v)) => Some(parse_int(&v)),
                    _ => None,
                }));
            }
            other => {
                failure = Some(format!("MGET answered {other:?}"));
                break;
            }
        }
    }
    match failure {
        None => {
            present.sort_by_key(|v| v.as_i64().unwrap_or(i64::MAX));
            op.value = Value::Array(present);
            rec.record(w.process, EventType::Ok, &op);
            EventType::Ok
        }
        Some(e) => {
            op.error = Some(e);
            rec.record(w.process, EventType::Fail, &op);
            EventType::Fail
        }
    }
}

fn parse_int(b: &[u8]) -> Value {
    let s = String::from_utf8_lossy(b);
    match s.parse::<i64>() {
        Ok(n) => json!(n),
        Err(_) => json!(s),
    }
}

fn put(key: &str, value: String) -> RequestOp {
    RequestOp {
        request: Some(Request::RequestPut(PutRequest {
            key: key.as_bytes().to_vec(),
            value: value.into_bytes(),
            ..Default::default()
        })),
    }
}

fn compare(key: &str, result: CompareResult, target: CompareTarget, u: TargetUnion) -> Compare {
    Compare {
        result: result as i32,
        target: target as i32,
        key: key.as_bytes().to_vec(),
        range_end: vec![],
        target_union: Some(u),
    }
}

fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut e = prefix.as_bytes().to_vec();
    if let Some(last) = e.last_mut() {
        *last += 1;
    }
    e
}

fn rev_of(h: Option<&concord_proto::etcdserverpb::ResponseHeader>) -> Option<i64> {
    h.map(|h| h.revision)
}

fn definite(s: tonic::Status) -> OpErr {
    let mut e = OpErr::from(s);
    e.definite = true;
    e
}

/// Runs one register process until the deadline.
pub async fn register_worker(mut w: Worker) {
    let stale = w.ctx.stale_reads;
    let t = w.ctx.op_timeout;
    while w.running() {
        let key = format!("r{}", w.rng.gen_range(0..5));
        let choice = w.rng.gen_range(0..4);
        let k = key.clone();
        // The negative control sends each read to a member chosen at random, so that reads
        // keep reaching the minority side of a partition (a process there otherwise moves
        // away at its first write, which times out) and the stale answers are observed.
        w.pin = (stale && choice < 2).then(|| w.rng.gen_range(0..w.ctx.cluster.len()));
        if choice < 2 {
            let op = Op {
                f: "read",
                key: Some(key),
                value: Value::Null,
                ..Op::default()
            };
            w.perform(op, false, t, move |ch| async move {
                let r = KvClient::new(ch)
                    .range(RangeRequest {
                        key: k.into_bytes(),
                        serializable: stale,
                        ..Default::default()
                    })
                    .await?
                    .into_inner();
                let v = r
                    .kvs
                    .first()
                    .map(|kv| parse_int(&kv.value))
                    .unwrap_or(Value::Null);
                ok(Some(v), rev_of(r.header.as_ref()))
            })
            .await;
        } else if choice == 2 {
            let v: i64 = w.rng.gen_range(0..10);
            w.put_int("write", key, v).await;
        } else {
            let expected: i64 = w.rng.gen_range(0..10);
            let new: i64 = w.rng.gen_range(0..10);
            let op = Op {
                f: "cas",
                key: Some(key),
                value: json!([expected, new]),
                ..Op::default()
            };
            w.perform(op, true, t, move |ch| async move {
                let r = KvClient::new(ch)
                    .txn(TxnRequest {
                        compare: vec![compare(
                            &k,
                            CompareResult::Equal,
                            CompareTarget::Value,
                            TargetUnion::Value(expected.to_string().into_bytes()),
                        )],
                        success: vec![put(&k, new.to_string())],
                        failure: vec![],
                    })
                    .await?
                    .into_inner();
                if r.succeeded {
                    ok(None, rev_of(r.header.as_ref()))
                } else {
                    Ok(Done::Fail("compare failed".into()))
                }
            })
            .await;
        }
        w.pace().await;
    }
}

/// Runs one reads process until the deadline: writes of unique integers and reads at the
/// run's level, each to a member picked at random (reads at a relaxed level are meant to be
/// served by any member). The process keeps a session token: the highest revision it saw.
pub async fn reads_worker(mut w: Worker) {
    let t = w.ctx.op_timeout;
    let level = w.ctx.read_level;
    let mut token = 0i64;
    while w.running() {
        let key = format!("c{}", w.rng.gen_range(0..3));
        w.pin = Some(w.rng.gen_range(0..w.ctx.cluster.len()));
        if w.rng.gen_bool(0.4) {
            let v = w.ctx.counter.fetch_add(1, Ordering::SeqCst);
            if let Some(rev) = w.put_int("write", key, v).await {
                token = token.max(rev);
            }
        } else {
            let claimed = match level {
                ReadConsistency::Session(_) => ReadConsistency::Session(token),
                other => other,
            };
            let sent = if w.ctx.stale_reads {
                ReadConsistency::Eventual
            } else {
                claimed
            };
            let op = Op {
                f: "read",
                key: Some(key.clone()),
                value: json!({"level": sent.to_string(), "check": claimed.to_string()}),
                ..Op::default()
            };
            let (kind, seen) = w
                .perform(op, false, t, move |ch| async move {
                    let mut req = tonic::Request::new(RangeRequest {
                        key: key.into_bytes(),
                        ..Default::default()
                    });
                    sent.set_on(&mut req);
                    let r = KvClient::new(ch).range(req).await?.into_inner();
                    let (v, m) = r.kvs.first().map_or((Value::Null, 0), |kv| {
                        (parse_int(&kv.value), kv.mod_revision)
                    });
                    let rev = rev_of(r.header.as_ref());
                    Ok(Done::Ok(
                        Some(json!([v, m])),
                        rev,
                        rev.into_iter().collect(),
                    ))
                })
                .await;
            if kind == EventType::Ok {
                token = token.max(seen.first().copied().unwrap_or(0));
            }
        }
        w.pace().await;
    }
}

const BANK_PREFIX: &str = "bank/";
/// Number of bank accounts.
pub const ACCOUNTS: usize = 5;
/// Initial balance of each account.
pub const INITIAL_BALANCE: i64 = 100;

async fn bank_read(
    ch: Channel,
) -> Result<(Map<String, Value>, Vec<(i64, i64)>, Option<i64>), OpErr> {
    let r = KvClient::new(ch)
        .range(RangeRequest {
            key: BANK_PREFIX.as_bytes().to_vec(),
            range_end: prefix_end(BANK_PREFIX),
            ..Default::default()
        })
        .await?
        .into_inner();
    let mut m = Map::new();
    let mut raw = vec![(0i64, 0i64); ACCOUNTS];
    for kv in &r.kvs {
        let k = String::from_utf8_lossy(&kv.key);
        let name = k.trim_start_matches(BANK_PREFIX).to_string();
        let v = parse_int(&kv.value);
        if let Some(i) = name.strip_prefix('a').and_then(|s| s.parse::<usize>().ok()) {
            if i < ACCOUNTS {
                raw[i] = (v.as_i64().unwrap_or(i64::MIN), kv.mod_revision);
            }
        }
        m.insert(name, v);
    }
    Ok((m, raw, rev_of(r.header.as_ref())))
}

/// Writes the initial balances (retrying on every node) and records the `setup` event.
pub async fn bank_setup(ctx: &Ctx) -> Result<(), String> {
    let mut accounts = Map::new();
    let mut ops = Vec::new();
    for i in 0..ACCOUNTS {
        accounts.insert(format!("a{i}"), json!(INITIAL_BALANCE));
        ops.push(put(
            &format!("{BANK_PREFIX}a{i}"),
            INITIAL_BALANCE.to_string(),
        ));
    }
    let txn = TxnRequest {
        compare: vec![],
        success: ops,
        failure: vec![],
    };
    let rev = retry_any_node(ctx, |ch| {
        let txn = txn.clone();
        async move {
            KvClient::new(ch)
                .txn(txn)
                .await
                .map(|r| r.into_inner().header)
        }
    })
    .await?;
    ctx.rec.record(
        0,
        EventType::Ok,
        &Op {
            f: "setup",
            value: json!({ "accounts": accounts }),
            revision: rev_of(rev.as_ref()),
            ..Op::default()
        },
    );
    Ok(())
}

/// Tries `f` on each node in turn for up to 30 s (setup steps, not recorded).
async fn retry_any_node<T, F, Fut>(ctx: &Ctx, f: F) -> Result<T, String>
where
    F: Fn(Channel) -> Fut,
    Fut: Future<Output = Result<T, tonic::Status>>,
{
    let start = tokio::time::Instant::now();
    let mut last = String::new();
    let mut i = 0usize;
    while start.elapsed() < Duration::from_secs(30) {
        let url = &ctx.cluster.nodes[i % ctx.cluster.len()].client_url;
        i += 1;
        match connect(url, Duration::from_secs(1)).await {
            Ok(ch) => match tokio::time::timeout(ctx.op_timeout, f(ch)).await {
                Ok(Ok(v)) => return Ok(v),
                Ok(Err(e)) => last = format!("{url}: {e}"),
                Err(_) => last = format!("{url}: timeout"),
            },
            Err(e) => last = e,
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Err(format!("setup failed: {last}"))
}

/// Runs one bank process until the deadline.
pub async fn bank_worker(mut w: Worker) {
    let t = w.ctx.op_timeout;
    while w.running() {
        if w.rng.gen_bool(0.5) {
            let op = Op {
                f: "read",
                ..Op::default()
            };
            w.perform(op, false, t, |ch| async move {
                let (m, _, rev) = bank_read(ch).await?;
                ok(Some(json!({ "accounts": m })), rev)
            })
            .await;
        } else {
            let from = w.rng.gen_range(0..ACCOUNTS);
            let to = (from + w.rng.gen_range(1..ACCOUNTS)) % ACCOUNTS;
            let amount: i64 = w.rng.gen_range(1..=5);
            let op = Op {
                f: "transfer",
                value: json!({"from": format!("a{from}"), "to": format!("a{to}"), "amount": amount}),
                ..Op::default()
            };
            w.perform(op, true, t, move |ch| async move {
                let (_, raw, _) = bank_read(ch.clone()).await.map_err(|mut e| {
                    e.definite = true;
                    e
                })?;
                let (bf, mf) = raw[from];
                let (bt, mt) = raw[to];
                if mf == 0 || mt == 0 || bf == i64::MIN || bt == i64::MIN {
                    return Ok(Done::Fail("account missing or not an integer".into()));
                }
                if bf < amount {
                    return Ok(Done::Fail("insufficient funds".into()));
                }
                let kf = format!("{BANK_PREFIX}a{from}");
                let kt = format!("{BANK_PREFIX}a{to}");
                let r = KvClient::new(ch)
                    .txn(TxnRequest {
                        compare: vec![
                            compare(
                                &kf,
                                CompareResult::Equal,
                                CompareTarget::Mod,
                                TargetUnion::ModRevision(mf),
                            ),
                            compare(
                                &kt,
                                CompareResult::Equal,
                                CompareTarget::Mod,
                                TargetUnion::ModRevision(mt),
                            ),
                        ],
                        success: vec![
                            put(&kf, (bf - amount).to_string()),
                            put(&kt, (bt + amount).to_string()),
                        ],
                        failure: vec![],
                    })
                    .await?
                    .into_inner();
                if r.succeeded {
                    ok(None, rev_of(r.header.as_ref()))
                } else {
                    Ok(Done::Fail("compare failed".into()))
                }
            })
            .await;
        }
        w.pace().await;
    }
}

/// Runs one set process until the deadline.
pub async fn set_worker(mut w: Worker) {
    while w.running() {
        let n = w.ctx.counter.fetch_add(1, Ordering::SeqCst);
        w.put_int("add", format!("set/{n}"), n).await;
        w.pace().await;
    }
}

/// Final reads after healing (set: all elements; bank: balances), retried on every node.
pub async fn final_read(ctx: Arc<Ctx>, workload: Workload) -> bool {
    let mut w = Worker::new(ctx.clone(), 0);
    // A process id no client process uses.
    w.process = 900_000;
    let start = tokio::time::Instant::now();
    let t = ctx.op_timeout.max(Duration::from_secs(3));
    while start.elapsed() < Duration::from_secs(30) {
        let kind = match workload {
            Workload::Set => {
                let op = Op {
                    f: "read",
                    ..Op::default()
                };
                w.perform(op, false, t, |ch| async move {
                    let r = KvClient::new(ch)
                        .range(RangeRequest {
                            key: b"set/".to_vec(),
                            range_end: prefix_end("set/"),
                            ..Default::default()
                        })
                        .await?
                        .into_inner();
                    // Each element once per version of its key: every add puts a key of
                    // its own once, so a put applied twice (version 2) is a duplicate.
                    let mut v: Vec<Value> = r
                        .kvs
                        .iter()
                        .flat_map(|kv| {
                            std::iter::repeat_n(parse_int(&kv.value), kv.version.max(1) as usize)
                        })
                        .collect();
                    v.sort_by_key(|x| x.as_i64().unwrap_or(i64::MAX));
                    ok(Some(Value::Array(v)), rev_of(r.header.as_ref()))
                })
                .await
                .0
            }
            Workload::Bank => {
                let op = Op {
                    f: "read",
                    ..Op::default()
                };
                w.perform(op, false, t, |ch| async move {
                    let (m, _, rev) = bank_read(ch).await?;
                    ok(Some(json!({ "accounts": m })), rev)
                })
                .await
                .0
            }
            Workload::ApSet | Workload::ApCounter | Workload::ApOrSet => {
                ap_final_read(&mut w, workload).await
            }
            _ => return true,
        };
        if kind == EventType::Ok {
            return true;
        }
        w.process += 1;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    false
}

const LOCK_NAME: &[u8] = b"chaos-lock";
const GUARD_TOKEN: &str = "guard/token";
const GUARD_DATA: &str = "guard/data";

fn pad(token: i64) -> String {
    format!("{token:020}")
}

/// Writes the initial fencing token (0), so value comparisons have a key to compare.
pub async fn lock_setup(ctx: &Ctx) -> Result<(), String> {
    retry_any_node(ctx, |ch| async move {
        KvClient::new(ch)
            .put(PutRequest {
                key: GUARD_TOKEN.as_bytes().to_vec(),
                value: pad(0).into_bytes(),
                ..Default::default()
            })
            .await
    })
    .await
    .map(|_| ())
}

async fn revoke(ch: Option<Channel>, lease: i64) {
    if let Some(ch) = ch {
        let _ = tokio::time::timeout(
            Duration::from_secs(1),
            LeaseClient::new(ch).lease_revoke(LeaseRevokeRequest { id: lease }),
        )
        .await;
    }
}

/// Runs one lock process until the deadline.
pub async fn lock_worker(mut w: Worker) {
    let t = w.ctx.op_timeout;
    while w.running() {
        let stash: Arc<Mutex<Option<i64>>> = Arc::new(Mutex::new(None));
        let st = stash.clone();
        let op = Op {
            f: "acquire",
            ..Op::default()
        };
        let (kind, extra) = w
            .perform(op, true, t * 3, move |ch| async move {
                let lease = LeaseClient::new(ch.clone())
                    .lease_grant(LeaseGrantRequest { ttl: 5, id: 0 })
                    .await
                    .map_err(definite)?
                    .into_inner()
                    .id;
                if let Ok(mut g) = st.lock() {
                    *g = Some(lease);
                }
                let r = LockClient::new(ch)
                    .lock(LockRequest {
                        name: LOCK_NAME.to_vec(),
                        lease,
                    })
                    .await?
                    .into_inner();
                let token = r.header.map(|h| h.revision).unwrap_or(0);
                KEYS.with_key(lease, r.key);
                Ok(Done::Ok(
                    Some(json!({ "token": token })),
                    Some(token),
                    vec![token, lease],
                ))
            })
            .await;
        let lease = stash.lock().ok().and_then(|g| *g);
        if kind != EventType::Ok {
            if kind == EventType::Info {
                if let Some(l) = lease {
                    let ch = w.channel().await.ok();
                    revoke(ch, l).await;
                }
            }
            w.pace().await;
            continue;
        }
        let (token, lease) = (extra[0], extra[1]);
        let key = KEYS.take(lease).unwrap_or_default();
        let mut lost = false;
        for seq in 0..2 {
            let op = Op {
                f: "write",
                value: json!({"token": token, "seq": seq}),
                ..Op::default()
            };
            let (k, _) = w
                .perform(op, true, t, move |ch| async move {
                    let data = json!({"token": token, "seq": seq}).to_string();
                    let r = KvClient::new(ch)
                        .txn(TxnRequest {
                            compare: vec![compare(
                                GUARD_TOKEN,
                                CompareResult::Greater,
                                CompareTarget::Value,
                                TargetUnion::Value(pad(token).into_bytes()),
                            )],
                            success: vec![],
                            failure: vec![put(GUARD_TOKEN, pad(token)), put(GUARD_DATA, data)],
                        })
                        .await?
                        .into_inner();
                    if r.succeeded {
                        Ok(Done::Fail("fenced: a newer token was written".into()))
                    } else {
                        ok(None, rev_of(r.header.as_ref()))
                    }
                })
                .await;
            if k == EventType::Info {
                lost = true;
                break;
            }
        }
        if lost {
            let ch = w.channel().await.ok();
            revoke(ch, lease).await;
            w.pace().await;
            continue;
        }
        let op = Op {
            f: "release",
            value: json!({ "token": token }),
            ..Op::default()
        };
        let (k, _) = w
            .perform(op, true, t, move |ch| async move {
                let r = LockClient::new(ch)
                    .unlock(UnlockRequest { key })
                    .await?
                    .into_inner();
                ok(None, rev_of(r.header.as_ref()))
            })
            .await;
        if k != EventType::Ok {
            let ch = w.channel().await.ok();
            revoke(ch, lease).await;
        }
        w.pace().await;
    }
}

/// Lock keys by lease id, handed from the acquire closure to the release.
struct LockKeys(Mutex<Vec<(i64, Vec<u8>)>>);

impl LockKeys {
    fn with_key(&self, lease: i64, key: Vec<u8>) {
        if let Ok(mut g) = self.0.lock() {
            g.push((lease, key));
        }
    }
    fn take(&self, lease: i64) -> Option<Vec<u8>> {
        let mut g = self.0.lock().ok()?;
        let i = g.iter().position(|(l, _)| *l == lease)?;
        Some(g.swap_remove(i).1)
    }
}

static KEYS: LockKeys = LockKeys(Mutex::new(Vec::new()));

/// Runs one watch-workload writer until the deadline.
pub async fn watch_writer(mut w: Worker) {
    while w.running() {
        let n = w.ctx.counter.fetch_add(1, Ordering::SeqCst);
        let key = format!("w/{}", w.rng.gen_range(0..5));
        w.put_int("write", key, n).await;
        w.pace().await;
    }
}

/// Current store revision (for the watchers' starting point).
pub async fn current_revision(ctx: &Ctx) -> Result<i64, String> {
    let h = retry_any_node(ctx, |ch| async move {
        KvClient::new(ch)
            .range(RangeRequest {
                key: b"w/".to_vec(),
                range_end: prefix_end("w/"),
                count_only: true,
                ..Default::default()
            })
            .await
            .map(|r| r.into_inner().header)
    })
    .await?;
    Ok(h.map(|h| h.revision).unwrap_or(0))
}

fn record_pair(rec: &Recorder, process: u64, op: Op) {
    let inv = Op {
        value: Value::Null,
        ..op.clone()
    };
    rec.record(process, EventType::Invoke, &inv);
    rec.record(process, EventType::Ok, &op);
}

/// One watcher: follows prefix `w/` from `from_rev`, moving to another node when its stream
/// breaks or stalls, until draining and caught up (or 20 s after draining began).
pub async fn watcher(ctx: Arc<Ctx>, w: usize, from_rev: i64) {
    let process = 1_000_000 + w as u64;
    let n = ctx.cluster.len();
    let mut node = w % n;
    let mut last = from_rev - 1;
    let mut drain_started: Option<tokio::time::Instant> = None;
    let done = |last: i64, drain_started: &mut Option<tokio::time::Instant>| -> bool {
        if !ctx.draining.load(Ordering::SeqCst) {
            return false;
        }
        let s = *drain_started.get_or_insert_with(tokio::time::Instant::now);
        last >= ctx.max_write_rev.load(Ordering::SeqCst) || s.elapsed() > Duration::from_secs(20)
    };
    'outer: while !done(last, &mut drain_started) {
        let url = ctx.cluster.nodes[node].client_url.clone();
        let name = ctx.cluster.nodes[node].name.clone();
        let switch = |node: &mut usize| *node = (*node + 1) % n;
        let ch = match connect(&url, Duration::from_secs(1)).await {
            Ok(c) => c,
            Err(_) => {
                switch(&mut node);
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        let (tx, rx) = tokio::sync::mpsc::channel(2);
        let create = WatchRequest {
            request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
                key: b"w/".to_vec(),
                range_end: prefix_end("w/"),
                start_revision: last + 1,
                ..Default::default()
            })),
        };
        if tx.send(create).await.is_err() {
            continue;
        }
        let mut req = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
        req.metadata_mut().insert(
            "hasleader",
            tonic::metadata::MetadataValue::from_static("true"),
        );
        let mut stream =
            match tokio::time::timeout(Duration::from_secs(2), WatchClient::new(ch).watch(req))
                .await
            {
                Ok(Ok(s)) => s.into_inner(),
                _ => {
                    switch(&mut node);
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            };
        let mut idle_since = tokio::time::Instant::now();
        loop {
            if done(last, &mut drain_started) {
                break 'outer;
            }
            match tokio::time::timeout(Duration::from_millis(500), stream.message()).await {
                Ok(Ok(Some(resp))) => {
                    if resp.canceled {
                        switch(&mut node);
                        continue 'outer;
                    }
                    if resp.events.is_empty() {
                        continue;
                    }
                    idle_since = tokio::time::Instant::now();
                    let mut evs = Vec::new();
                    for e in &resp.events {
                        if let Some(kv) = &e.kv {
                            evs.push(json!({
                                "key": String::from_utf8_lossy(&kv.key),
                                "value": parse_int(&kv.value),
                                "revision": kv.mod_revision,
                            }));
                            last = last.max(kv.mod_revision);
                        }
                    }
                    record_pair(
                        &ctx.rec,
                        process,
                        Op {
                            f: "watch",
                            value: json!({"watcher": w, "events": evs}),
                            node: Some(name.clone()),
                            ..Op::default()
                        },
                    );
                }
                Ok(Ok(None)) | Ok(Err(_)) => {
                    switch(&mut node);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue 'outer;
                }
                Err(_) => {
                    let behind = ctx.max_write_rev.load(Ordering::SeqCst) > last;
                    if behind && idle_since.elapsed() > Duration::from_secs(3) {
                        switch(&mut node);
                        continue 'outer;
                    }
                }
            }
        }
    }
    record_pair(
        &ctx.rec,
        process,
        Op {
            f: "watch-end",
            value: json!({"watcher": w, "from_revision": from_rev, "to_revision": last}),
            ..Op::default()
        },
    );
}
