//! The history recorder: one [`concord_check::history::Event`] per line (JSON Lines), in the
//! order events happened, the one history format the checkers read.
//!
//! Every event gets a dense `index` and a `time_ns` measured from the start of the run on a
//! monotonic clock. The recorder also keeps the events in memory for the summary.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use concord_check::history::{Event, EventType};
use serde_json::Value;

/// A compact copy of an event, for statistics.
#[derive(Clone, Debug)]
pub struct Brief {
    /// Nanoseconds since the start of the run.
    pub time_ns: u64,
    /// The event's process.
    pub process: u64,
    /// Its type.
    pub kind: EventType,
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
    pub fn record(&self, process: u64, kind: EventType, op: &Op) {
        let mut guard = match self.inner.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        let time_ns = self.now_ns();
        let event = Event {
            index: guard.next,
            time_ns,
            process,
            kind,
            f: op.f.to_string(),
            key: op.key.clone(),
            value: op.value.clone(),
            node: op.node.clone(),
            error: op.error.clone(),
            revision: op.revision,
        };
        guard.next += 1;
        let written = serde_json::to_string(&event)
            .map_err(|e| e.to_string())
            .and_then(|line| writeln!(guard.out, "{line}").map_err(|e| e.to_string()));
        if let Err(e) = written {
            guard.error.get_or_insert(e);
        }
        guard.briefs.push(Brief {
            time_ns,
            process,
            kind,
            f: event.f,
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
