//! History checkers for Concord's Jepsen-style chaos harness.
//!
//! The chaos runner drives a cluster with concurrent clients while it injects faults, and
//! records what every client invoked and what came back as a JSONL history (see
//! [`history`] for the format). This crate reads such a history and decides whether it is
//! consistent with the guarantee the workload tests. Each checker returns a [`Verdict`]:
//! `valid` is `true`, `false`, or `"unknown"` (the checker ran out of budget, or the history
//! lacks what it needs); an invalid verdict lists [`Anomaly`]s and a counterexample window.
//!
//! # Layout
//!
//! | module | workload | checks |
//! |---|---|---|
//! | [`history`] | all | the event format, reader with line numbers, writer, invoke/completion pairing |
//! | [`register`] | `register` | linearizability of per-key registers (read, write, cas) |
//! | [`bank`] | `bank` | every snapshot read sums to the total, no negative balance |
//! | [`set`] | `set` | every acknowledged add is in the final read; nothing unexpected is |
//! | [`session`] | `ap-session` | read-your-writes and monotonic reads per session |
//! | [`lock`] | `lock` | fencing tokens are unique and accepted writes never go back in token |
//! | [`watch`] | `watch` | watch streams are ordered, duplicate-free and complete over their claimed range |
//! | [`synth`] | tests, benchmarks | a simulated linearizable register that writes histories |
//!
//! # Semantics shared by all checkers (Jepsen's)
//!
//! * `ok`: the operation happened, between its invocation and its completion.
//! * `fail`: the operation certainly did not happen; checkers drop it.
//! * `info`, or an invocation with no completion at the end of the history: the operation may
//!   have happened at any time after its invocation, or never.
//! * Real-time order is the order of lines in the file.
//!
//! # Guarantees and limits
//!
//! * A `false` verdict is always backed by a concrete anomaly; no checker reports invalid
//!   because it ran out of time. The register checker says `true` only after its search found
//!   a linearization of every key, and `"unknown"` when its time or state budget ran out.
//! * Checkers check what the history shows. A history in which every operation is `info`
//!   is trivially valid; the runner must make sure enough operations complete.
//! * The register checker drops failed `cas` operations although a failed compare does
//!   reveal that the register differed from the expected value at some point (as Knossos
//!   does); this can only make it accept more, never reject a linearizable history.
//!
//! # Example
//!
//! ```
//! use concord_check::{check, CheckOptions, Validity, Workload};
//! use concord_check::history::parse_history;
//!
//! let text = r#"
//! {"index":0,"time_ns":1,"process":1,"type":"invoke","f":"write","key":"r","value":1}
//! {"index":1,"time_ns":2,"process":1,"type":"ok","f":"write","key":"r","value":1}
//! {"index":2,"time_ns":3,"process":2,"type":"invoke","f":"read","key":"r","value":null}
//! {"index":3,"time_ns":4,"process":2,"type":"ok","f":"read","key":"r","value":null}
//! "#;
//! let events = parse_history(text.as_bytes()).unwrap();
//! let verdict = check(Workload::Register, &events, &CheckOptions::default()).unwrap();
//! assert_eq!(verdict.valid, Validity::Invalid); // a stale read after a completed write
//! ```

use std::collections::BTreeMap;
use std::path::Path;
use std::str::FromStr;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

pub mod bank;
pub mod counter;
pub mod history;
pub mod lock;
pub mod reads;
pub mod register;
pub mod session;
pub mod set;
pub mod synth;
pub mod watch;

pub use history::{Event, EventType};

/// Errors that stop a checker from giving a verdict (exit code 2 in the CLI).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CheckError {
    /// The history file could not be opened.
    #[error("cannot open history {path}: {source}")]
    Open {
        /// The path given.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A line could not be read.
    #[error("cannot read history line {line}: {source}")]
    Read {
        /// 1-based line number.
        line: usize,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A line is not a valid event.
    #[error("malformed event on line {line}: {source}")]
    Parse {
        /// 1-based line number.
        line: usize,
        /// What serde found wrong.
        source: serde_json::Error,
    },
    /// The events parse but break the history contract.
    #[error("malformed history at event index {index}: {message}")]
    Malformed {
        /// The `index` of the offending event.
        index: u64,
        /// What is wrong.
        message: String,
    },
    /// The workload name is not one of the known ones.
    #[error("unknown workload {0:?} (`concord-check --help` lists the workloads)")]
    UnknownWorkload(String),
}

/// The outcome of a check: Jepsen's `true | false | :unknown`.
///
/// Serialized as JSON `true`, `false` or `"unknown"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(into = "ValidityRepr", try_from = "ValidityRepr")]
pub enum Validity {
    /// The history satisfies the property.
    Valid,
    /// The history violates it; see the anomalies.
    Invalid,
    /// The checker could not decide (budget exhausted or missing data).
    Unknown,
}

impl Validity {
    /// Combines verdicts of independent parts: any invalid part makes the whole invalid,
    /// else any unknown part makes it unknown.
    pub fn and(self, other: Validity) -> Validity {
        match (self, other) {
            (Validity::Invalid, _) | (_, Validity::Invalid) => Validity::Invalid,
            (Validity::Unknown, _) | (_, Validity::Unknown) => Validity::Unknown,
            _ => Validity::Valid,
        }
    }
}

#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum ValidityRepr {
    Bool(bool),
    Word(String),
}

impl From<Validity> for ValidityRepr {
    fn from(v: Validity) -> Self {
        match v {
            Validity::Valid => ValidityRepr::Bool(true),
            Validity::Invalid => ValidityRepr::Bool(false),
            Validity::Unknown => ValidityRepr::Word("unknown".to_string()),
        }
    }
}

impl TryFrom<ValidityRepr> for Validity {
    type Error = String;
    fn try_from(r: ValidityRepr) -> Result<Self, String> {
        match r {
            ValidityRepr::Bool(true) => Ok(Validity::Valid),
            ValidityRepr::Bool(false) => Ok(Validity::Invalid),
            ValidityRepr::Word(w) if w == "unknown" => Ok(Validity::Unknown),
            ValidityRepr::Word(w) => Err(format!("invalid validity {w:?}")),
        }
    }
}

/// One violation found in a history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Anomaly {
    /// Short machine-readable kind, e.g. `nonlinearizable`, `wrong-total`, `lost`.
    pub kind: String,
    /// The key involved, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Human-readable explanation.
    pub message: String,
    /// `index` of the events involved.
    pub events: Vec<u64>,
}

impl Anomaly {
    /// Builds an anomaly.
    pub fn new(kind: &str, key: Option<&str>, message: String, events: Vec<u64>) -> Self {
        Anomaly {
            kind: kind.to_string(),
            key: key.map(str::to_string),
            message,
            events,
        }
    }
}

/// A checker's result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Verdict {
    /// `true`, `false` or `"unknown"`.
    pub valid: Validity,
    /// Which checker produced this verdict.
    pub checker: String,
    /// How many operations (invocations) of the workload the history holds.
    pub ops: usize,
    /// Every violation found (empty unless invalid).
    pub anomalies: Vec<Anomaly>,
    /// A window of events around the first violation.
    pub counterexample: Option<Vec<Event>>,
    /// Wall time the check took.
    pub elapsed_ms: f64,
    /// Checker-specific counters (e.g. `recovered` adds, explored search states).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub stats: BTreeMap<String, u64>,
    /// Why the verdict is unknown, or other remarks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

impl Verdict {
    /// A verdict with no anomalies yet.
    pub fn new(checker: &str, ops: usize) -> Self {
        Verdict {
            valid: Validity::Valid,
            checker: checker.to_string(),
            ops,
            anomalies: Vec::new(),
            counterexample: None,
            elapsed_ms: 0.0,
            stats: BTreeMap::new(),
            note: None,
        }
    }

    /// Records an anomaly and marks the verdict invalid.
    pub fn push(&mut self, anomaly: Anomaly) {
        self.valid = Validity::Invalid;
        self.anomalies.push(anomaly);
    }

    /// Sets the counterexample to the events whose `index` is within `radius` positions of the
    /// first event of the first anomaly, unless one is already set.
    pub fn window_around_first(&mut self, events: &[Event], radius: usize) {
        if self.counterexample.is_some() {
            return;
        }
        let Some(first) = self.anomalies.first().and_then(|a| a.events.first()) else {
            return;
        };
        if let Some(pos) = events.iter().position(|e| e.index == *first) {
            let lo = pos.saturating_sub(radius);
            let hi = (pos + radius + 1).min(events.len());
            self.counterexample = Some(events[lo..hi].to_vec());
        }
    }
}

/// The workloads the checkers know (also the runner's `--workload` values).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Workload {
    /// Per-key read/write/cas registers: linearizability.
    Register,
    /// Transfers between accounts: snapshot reads conserve the total.
    Bank,
    /// Adds then a final read: no acknowledged add lost.
    Set,
    /// Fenced lock: tokens unique and monotonic in acceptance order.
    Lock,
    /// Watch streams: ordered, no duplicates, complete.
    Watch,
    /// Reads at a consistency level (strong, bounded, session): each meets its claim.
    Reads,
    /// AP buckets over RESP: unique-key `SET`s, then a final read: no acknowledged write
    /// lost (the set checker).
    #[serde(rename = "ap-set")]
    ApSet,
    /// AP buckets over RESP: `INCR`s of one counter, then a final read: every
    /// acknowledged increment counted, nothing more.
    #[serde(rename = "ap-counter")]
    ApCounter,
    /// AP buckets over RESP: `SADD` of unique members to one set and `SREM` of some of
    /// them, then a final `SMEMBERS`: no acknowledged add lost unless removed, no
    /// acknowledged remove undone (the set checker).
    #[serde(rename = "ap-orset")]
    #[value(name = "ap-orset")]
    ApOrSet,
    /// AP buckets over RESP: per-key registers read, written and compared-and-set
    /// through Paxos: linearizability (the register checker).
    #[serde(rename = "ap-register")]
    ApRegister,
    /// AP buckets over RESP: sessions that write their own key and read every session's,
    /// each request at a random member with the session's token: read-your-writes and
    /// monotonic reads per session (the session checker).
    #[serde(rename = "ap-session")]
    ApSession,
}

impl Workload {
    /// Every workload.
    pub const ALL: [Workload; 11] = [
        Workload::Register,
        Workload::Bank,
        Workload::Set,
        Workload::Lock,
        Workload::Watch,
        Workload::Reads,
        Workload::ApSet,
        Workload::ApCounter,
        Workload::ApOrSet,
        Workload::ApRegister,
        Workload::ApSession,
    ];

    /// Lower-case name, as in history files and on command lines.
    pub fn name(self) -> &'static str {
        match self {
            Workload::Register => "register",
            Workload::Bank => "bank",
            Workload::Set => "set",
            Workload::Lock => "lock",
            Workload::Watch => "watch",
            Workload::Reads => "reads",
            Workload::ApSet => "ap-set",
            Workload::ApCounter => "ap-counter",
            Workload::ApOrSet => "ap-orset",
            Workload::ApRegister => "ap-register",
            Workload::ApSession => "ap-session",
        }
    }
}

impl FromStr for Workload {
    type Err = CheckError;
    fn from_str(s: &str) -> Result<Self, CheckError> {
        Workload::ALL
            .into_iter()
            .find(|w| w.name() == s)
            .ok_or_else(|| CheckError::UnknownWorkload(s.to_string()))
    }
}

impl std::fmt::Display for Workload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Budgets for the checkers (only the register search uses them).
#[derive(Debug, Clone)]
pub struct CheckOptions {
    /// Wall-clock budget for the whole linearizability search (all keys).
    pub budget: Duration,
    /// Maximum number of distinct (linearized set, state) configurations cached per key.
    pub max_states: usize,
    /// Memory bound for that cache per key, in bytes: each configuration costs about
    /// `ops_of_the_key / 8 + 64` bytes, and the effective state limit is the smaller of the two.
    pub max_cache_bytes: usize,
}

impl Default for CheckOptions {
    fn default() -> Self {
        CheckOptions {
            budget: Duration::from_secs(60),
            max_states: 5_000_000,
            max_cache_bytes: 1 << 30,
        }
    }
}

/// Runs the checker for `workload` over `events` and fills in `elapsed_ms`.
pub fn check(
    workload: Workload,
    events: &[Event],
    options: &CheckOptions,
) -> Result<Verdict, CheckError> {
    let start = Instant::now();
    let mut verdict = match workload {
        Workload::Register | Workload::ApRegister => register::check(events, options)?,
        Workload::Bank => bank::check(events)?,
        Workload::Set => set::check(events)?,
        Workload::Lock => lock::check(events)?,
        Workload::Watch => watch::check(events)?,
        Workload::Reads => reads::check(events)?,
        Workload::ApSet | Workload::ApOrSet => set::check(events)?,
        Workload::ApCounter => counter::check(events)?,
        Workload::ApSession => session::check(events)?,
    };
    verdict.elapsed_ms = start.elapsed().as_secs_f64() * 1000.0;
    Ok(verdict)
}

/// Reads a JSONL history and checks it with default options.
pub fn check_file(workload: Workload, path: &Path) -> Result<Verdict, CheckError> {
    check_file_with(workload, path, &CheckOptions::default())
}

/// Reads a JSONL history and checks it with the given options.
pub fn check_file_with(
    workload: Workload,
    path: &Path,
    options: &CheckOptions,
) -> Result<Verdict, CheckError> {
    let events = history::read_history(path)?;
    check(workload, &events, options)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validity_serializes_like_jepsen() {
        assert_eq!(serde_json::to_string(&Validity::Valid).unwrap(), "true");
        assert_eq!(serde_json::to_string(&Validity::Invalid).unwrap(), "false");
        assert_eq!(
            serde_json::to_string(&Validity::Unknown).unwrap(),
            "\"unknown\""
        );
        let back: Validity = serde_json::from_str("\"unknown\"").unwrap();
        assert_eq!(back, Validity::Unknown);
        assert!(serde_json::from_str::<Validity>("\"maybe\"").is_err());
    }

    #[test]
    fn validity_combines() {
        use Validity::*;
        assert_eq!(Valid.and(Unknown), Unknown);
        assert_eq!(Unknown.and(Invalid), Invalid);
        assert_eq!(Valid.and(Valid), Valid);
    }

    #[test]
    fn workload_names_round_trip() {
        for w in [
            Workload::Register,
            Workload::Bank,
            Workload::Set,
            Workload::Lock,
            Workload::Watch,
        ] {
            assert_eq!(w.to_string().parse::<Workload>().unwrap(), w);
        }
        assert!("queue".parse::<Workload>().is_err());
    }
}
