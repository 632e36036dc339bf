//! The history format shared by the chaos runner (which writes it) and the checkers (which
//! read it): JSON Lines, one [`Event`] per line, in the order the runner observed them.
//!
//! ```text
//! {"index":0,"time_ns":1234,"process":3,"type":"invoke","f":"write","key":"r1","value":5,"node":"n2"}
//! {"index":1,"time_ns":2345,"process":3,"type":"ok","f":"write","key":"r1","value":5,"node":"n2"}
//! ```
//!
//! The position of an event in the file is its real-time order: an operation whose completion
//! comes before another's invocation in the file precedes it. `time_ns` is carried for humans
//! and for the runner's own timing; the checkers order by position, as Knossos does.
//!
//! [`pair_ops`] turns the events into operations (an invocation and its completion), and
//! rejects histories that break the contract: a second invocation by a process before the
//! first completed, a completion with no invocation, or a completion for another `f`.

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::CheckError;

/// What an event says about its operation (Jepsen's `:type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventType {
    /// The client is about to send the operation.
    Invoke,
    /// The operation certainly happened, with the result in `value`.
    Ok,
    /// The operation certainly did not happen.
    Fail,
    /// Indeterminate: the operation may have happened at any time after its invocation, or
    /// never (a timeout, a dropped connection).
    Info,
}

/// One line of a history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Sequence number assigned by the runner (reported back in anomalies).
    pub index: u64,
    /// Monotonic nanoseconds since the run started.
    pub time_ns: u64,
    /// The client (logical process) that performed the operation.
    pub process: u64,
    /// Invocation or completion kind.
    #[serde(rename = "type")]
    pub kind: EventType,
    /// The operation: `read`, `write`, `cas`, `transfer`, `add`, `acquire`, ...
    pub f: String,
    /// The key the operation touched, when it touched one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Argument (on invoke) or result (on ok); its shape depends on the workload.
    #[serde(default)]
    pub value: Value,
    /// The node the client talked to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// Why a `fail` or `info` happened.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The etcd header revision of an `ok` response.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<i64>,
}

impl Event {
    /// An event with no key, node, error or revision (tests and generators fill the rest).
    pub fn new(index: u64, process: u64, kind: EventType, f: &str, value: Value) -> Self {
        Event {
            index,
            time_ns: index,
            process,
            kind,
            f: f.to_string(),
            key: None,
            value,
            node: None,
            error: None,
            revision: None,
        }
    }

    /// Builder: set the key.
    pub fn with_key(mut self, key: &str) -> Self {
        self.key = Some(key.to_string());
        self
    }

    /// Builder: set the revision.
    pub fn with_revision(mut self, revision: i64) -> Self {
        self.revision = Some(revision);
        self
    }
}

/// Parses a JSONL history. Blank lines are skipped; a malformed line is reported with its
/// 1-based line number.
pub fn parse_history<R: BufRead>(reader: R) -> Result<Vec<Event>, CheckError> {
    let mut events = Vec::new();
    for (i, line) in reader.lines().enumerate() {
        let line_no = i + 1;
        let line = line.map_err(|source| CheckError::Read {
            line: line_no,
            source,
        })?;
        if line.trim().is_empty() {
            continue;
        }
        let event: Event = serde_json::from_str(&line).map_err(|source| CheckError::Parse {
            line: line_no,
            source,
        })?;
        events.push(event);
    }
    Ok(events)
}

/// Reads a JSONL history file.
pub fn read_history(path: &Path) -> Result<Vec<Event>, CheckError> {
    let file = File::open(path).map_err(|source| CheckError::Open {
        path: path.display().to_string(),
        source,
    })?;
    parse_history(BufReader::new(file))
}

/// Writes events as JSONL, one per line.
pub fn write_history<W: Write>(writer: W, events: &[Event]) -> std::io::Result<()> {
    let mut w = HistoryWriter::new(writer);
    for e in events {
        w.write(e)?;
    }
    w.flush()
}

/// Streams events as JSONL (for a runner that appends as it goes).
#[derive(Debug)]
pub struct HistoryWriter<W: Write> {
    inner: W,
}

impl<W: Write> HistoryWriter<W> {
    /// Wraps a writer (wrap a file in a `BufWriter` yourself).
    pub fn new(inner: W) -> Self {
        HistoryWriter { inner }
    }

    /// Appends one event and a newline.
    pub fn write(&mut self, event: &Event) -> std::io::Result<()> {
        serde_json::to_writer(&mut self.inner, event)?;
        self.inner.write_all(b"\n")
    }

    /// Flushes the inner writer.
    pub fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }

    /// Returns the inner writer.
    pub fn into_inner(self) -> W {
        self.inner
    }
}

/// How an operation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// Completed `ok`.
    Ok,
    /// Completed `fail`: did not happen.
    Fail,
    /// Completed `info`, or never completed: may or may not have happened.
    Info,
}

/// An invocation paired with its completion.
#[derive(Debug, Clone, Copy)]
pub struct Op<'a> {
    /// The invocation event.
    pub invoke: &'a Event,
    /// Position of the invocation in the history.
    pub invoke_pos: usize,
    /// The completion event and its position; `None` if the history ended first.
    pub completion: Option<(&'a Event, usize)>,
}

impl<'a> Op<'a> {
    /// The operation's `f`.
    pub fn f(&self) -> &'a str {
        &self.invoke.f
    }

    /// The operation's key (`""` if absent).
    pub fn key(&self) -> &'a str {
        self.invoke
            .key
            .as_deref()
            .or_else(|| self.completion.and_then(|(c, _)| c.key.as_deref()))
            .unwrap_or("")
    }

    /// How the operation ended; a missing completion is `Info`.
    pub fn outcome(&self) -> Outcome {
        match self.completion {
            Some((c, _)) => match c.kind {
                EventType::Ok => Outcome::Ok,
                EventType::Fail => Outcome::Fail,
                _ => Outcome::Info,
            },
            None => Outcome::Info,
        }
    }

    /// The completion event, if any.
    pub fn completed(&self) -> Option<&'a Event> {
        self.completion.map(|(c, _)| c)
    }

    /// Position of the completion, `None` for an operation that never completed.
    pub fn completion_pos(&self) -> Option<usize> {
        self.completion.map(|(_, p)| p)
    }
}

/// The final read of a history: its last `ok` read (taken after healing), with its
/// completion event; `None` when no read succeeded.
pub fn final_read<'a>(ops: &[Op<'a>]) -> Result<Option<(Op<'a>, &'a Event)>, CheckError> {
    let Some(read) = ops
        .iter()
        .rev()
        .find(|o| o.f() == "read" && o.outcome() == Outcome::Ok)
    else {
        return Ok(None);
    };
    let completion = read.completed().ok_or_else(|| CheckError::Malformed {
        index: read.invoke.index,
        message: "read has no completion".into(),
    })?;
    Ok(Some((*read, completion)))
}

/// Pairs every invocation with its process's next completion.
///
/// Events with `f == "setup"` that complete without an invocation are configuration records
/// and are skipped. Anything else that breaks the contract is a [`CheckError::Malformed`].
/// Operations are returned in invocation order.
pub fn pair_ops(events: &[Event]) -> Result<Vec<Op<'_>>, CheckError> {
    let mut ops: Vec<Op<'_>> = Vec::new();
    let mut pending: std::collections::HashMap<u64, usize> = std::collections::HashMap::new();
    for (pos, e) in events.iter().enumerate() {
        match e.kind {
            EventType::Invoke => {
                if let Some(&open) = pending.get(&e.process) {
                    return Err(CheckError::Malformed {
                        index: e.index,
                        message: format!(
                            "process {} invoked {} while its invocation at index {} is still open",
                            e.process, e.f, ops[open].invoke.index
                        ),
                    });
                }
                pending.insert(e.process, ops.len());
                ops.push(Op {
                    invoke: e,
                    invoke_pos: pos,
                    completion: None,
                });
            }
            EventType::Ok | EventType::Fail | EventType::Info => {
                let Some(open) = pending.remove(&e.process) else {
                    if e.f == "setup" {
                        continue;
                    }
                    return Err(CheckError::Malformed {
                        index: e.index,
                        message: format!(
                            "process {} completed {} with no open invocation",
                            e.process, e.f
                        ),
                    });
                };
                let op = &mut ops[open];
                if op.invoke.f != e.f {
                    return Err(CheckError::Malformed {
                        index: e.index,
                        message: format!(
                            "process {} completed {} but invoked {} at index {}",
                            e.process, e.f, op.invoke.f, op.invoke.index
                        ),
                    });
                }
                op.completion = Some((e, pos));
            }
        }
    }
    Ok(ops)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn round_trip_and_exact_field_names() {
        let line = r#"{"index":0,"time_ns":1234,"process":3,"type":"invoke","f":"write","key":"r1","value":5,"node":"n2"}"#;
        let events = parse_history(line.as_bytes()).unwrap();
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].kind, EventType::Invoke);
        assert_eq!(events[0].value, json!(5));
        let mut out = Vec::new();
        write_history(&mut out, &events).unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), format!("{line}\n"));
    }

    #[test]
    fn malformed_line_reports_line_number() {
        let text = "{\"index\":0,\"time_ns\":1,\"process\":1,\"type\":\"invoke\",\"f\":\"read\"}\n\n{oops}\n";
        match parse_history(text.as_bytes()) {
            Err(CheckError::Parse { line, .. }) => assert_eq!(line, 3),
            other => panic!("expected a parse error, got {other:?}"),
        }
        let bad_type = "{\"index\":0,\"time_ns\":1,\"process\":1,\"type\":\"done\",\"f\":\"read\"}";
        assert!(matches!(
            parse_history(bad_type.as_bytes()),
            Err(CheckError::Parse { line: 1, .. })
        ));
    }

    #[test]
    fn pairing_rejects_broken_contract() {
        let double = vec![
            Event::new(0, 1, EventType::Invoke, "read", Value::Null),
            Event::new(1, 1, EventType::Invoke, "read", Value::Null),
        ];
        assert!(matches!(
            pair_ops(&double),
            Err(CheckError::Malformed { index: 1, .. })
        ));
        let orphan = vec![Event::new(0, 1, EventType::Ok, "read", Value::Null)];
        assert!(pair_ops(&orphan).is_err());
        let setup = vec![Event::new(0, 1, EventType::Ok, "setup", Value::Null)];
        assert_eq!(pair_ops(&setup).unwrap().len(), 0);
        let pending = vec![Event::new(0, 1, EventType::Invoke, "write", json!(1))];
        let ops = pair_ops(&pending).unwrap();
        assert_eq!(ops[0].outcome(), Outcome::Info);
    }
}
