//! The history recorder: one JSON object per line, in the order events happened.
//!
//! Every event gets a dense `index` and a `time_ns` measured from the start of the run on a
//! monotonic clock. The recorder also keeps the events in memory for the summary.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde_json::{json, Map, Value};

/// Outcome type of an event (Jepsen semantics).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// An operation starts.
    Invoke,
    /// The operation took effect.
    Ok,
    /// The operation certainly did not take effect.
    Fail,
    /// Unknown whether the operation took effect (timeout, connection lost).
    Info,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Invoke => "invoke",
            Kind::Ok => "ok",
            Kind::Fail => "fail",
            Kind::Info => "info",
        }
    }
}

/// A compact copy of an event, for statistics.
#[derive(Clone, Debug)]
pub struct Brief {
    /// Nanoseconds since the start of the run.
    pub time_ns: u64,
    /// The event's process.
    pub process: i64,
    /// Its type.
    pub kind: Kind,
    /// Its function (`read`, `write`, ...).
    pub f: String,
}

struct Inner {
    out: BufWriter<File>,
    next: u64,
    briefs: Vec<Brief>,
    error: Option<String>,
}

/// Shared, cloneable history recorder.
#[derive(Clone)]
pub struct Recorder {
    start: Instant,
    inner: Arc<Mutex<Inner>>,
}

/// Fields of one event other than index, time, process and type.
#[derive(Clone, Debug, Default)]
pub struct Op {
    /// Function name.
    pub f: &'static str,
    /// Key, if any.
    pub key: Option<String>,
    /// Value (any JSON).
    pub value: Value,
    /// Node the client talked to.
    pub node: Option<String>,
    /// Store revision reported on success, if any.
    pub revision: Option<i64>,
    /// Error text on fail/info.
    pub error: Option<String>,
}

impl Recorder {
    /// Creates `path` and starts the clock.
    pub fn create(path: &Path, start: Instant) -> std::io::Result<Self> {
        let out = BufWriter::new(File::create(path)?);
        Ok(Recorder {
            start,
            inner: Arc::new(Mutex::new(Inner {
                out,
                next: 0,
                briefs: Vec::new(),
                error: None,
            })),
        })
    }

    /// Nanoseconds since the start of the run.
    pub fn now_ns(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// Appends one event.
    pub fn record(&self, process: i64, kind: Kind, op: &Op) {
        let mut guard = match self.inner.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        let time_ns = self.now_ns();
        let mut m = Map::new();
        m.insert("index".into(), json!(guard.next));
        m.insert("time_ns".into(), json!(time_ns));
        m.insert("process".into(), json!(process));
        m.insert("type".into(), json!(kind.as_str()));
        m.insert("f".into(), json!(op.f));
        if let Some(k) = &op.key {
            m.insert("key".into(), json!(k));
        }
        m.insert("value".into(), op.value.clone());
        if let Some(n) = &op.node {
            m.insert("node".into(), json!(n));
        }
        if let Some(r) = op.revision {
            m.insert("revision".into(), json!(r));
        }
        if let Some(e) = &op.error {
            m.insert("error".into(), json!(e));
        }
        guard.next += 1;
        let line = Value::Object(m).to_string();
        if let Err(e) = writeln!(guard.out, "{line}") {
            guard.error.get_or_insert_with(|| e.to_string());
        }
        guard.briefs.push(Brief {
            time_ns,
            process,
            kind,
            f: op.f.to_string(),
        });
    }

    /// Flushes the file and returns the events recorded so far (or the first write error).
    pub fn finish(&self) -> Result<Vec<Brief>, String> {
        let mut guard = match self.inner.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Err(e) = guard.out.flush() {
            return Err(format!("writing history: {e}"));
        }
        if let Some(e) = &guard.error {
            return Err(format!("writing history: {e}"));
        }
        Ok(guard.briefs.clone())
    }
}

/// Appends JSON lines to a file (used for nemesis.jsonl).
pub struct JsonLines {
    out: Mutex<BufWriter<File>>,
}

impl JsonLines {
    /// Creates the file.
    pub fn create(path: &Path) -> std::io::Result<Self> {
        Ok(JsonLines {
            out: Mutex::new(BufWriter::new(File::create(path)?)),
        })
    }

    /// Writes one line and flushes.
    pub fn write(&self, v: &Value) -> std::io::Result<()> {
        let mut g = match self.out.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        writeln!(g, "{v}")?;
        g.flush()
    }
}
