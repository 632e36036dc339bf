//! Encodings owned by the runtime: Raft messages on the wire, and client commands inside
//! Raft log entries.
//!
//! * Raft messages travel as a `postcard` encoding of `Vec<Message>` (a compact,
//!   varint-based serde format): [`encode_batch`] / [`decode_batch`].
//! * A proposal's entry data is an [`Envelope`]: a version byte, the proposer's request
//!   key (incarnation, sequence, origin node) and the [`Command`] in a hand-written binary
//!   form (`concord-storage`'s commands carry no serde derive, and the log format must not
//!   change under us when a dependency changes its own).
//! * A snapshot's data is the concatenation of the `SnapshotStream` chunks, which are
//!   self-delimiting (each header holds its payload length): [`split_chunks`].
//!
//! # Guarantees
//!
//! 1. Decoding never panics: malformed input gives a [`CodecError`].
//! 2. `decode(encode(x)) == x` for every message batch and every command (tested).
//! 3. The entry encoding is deterministic, so every replica decodes the same bytes to the
//!    same command, including undecodable ones (which every replica applies as a no-op).

use concord_raft::Message;
use concord_storage::mvcc::types::{
    Command, Compare, CompareResult, CompareTarget, DeleteRangeRequest, PutRequest, RangeRequest,
    RequestOp, SortOrder, SortTarget, TxnRequest,
};

/// Why bytes could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CodecError {
    /// The input ends before the structure does.
    #[error("truncated input")]
    Truncated,
    /// A tag has no meaning.
    #[error("invalid tag {0}")]
    InvalidTag(u8),
    /// Bytes remain after the structure.
    #[error("trailing bytes")]
    Trailing,
    /// The wire encoding of a message batch is invalid.
    #[error("invalid message batch: {0}")]
    Batch(String),
    /// Nesting deeper than [`MAX_TXN_DEPTH`].
    #[error("transaction nested too deeply")]
    TooDeep,
}

/// Deepest nesting of transactions accepted when decoding (bounds the recursion).
pub const MAX_TXN_DEPTH: usize = 64;

const ENVELOPE_VERSION: u8 = 1;

/// Encodes a batch of Raft messages for the wire.
pub fn encode_batch(msgs: &[Message]) -> Vec<u8> {
    // Serializing plain data into a Vec cannot fail.
    postcard::to_allocvec(msgs).unwrap_or_default()
}

/// Decodes a batch made by [`encode_batch`].
pub fn decode_batch(bytes: &[u8]) -> Result<Vec<Message>, CodecError> {
    postcard::from_bytes(bytes).map_err(|e| CodecError::Batch(e.to_string()))
}

/// Encodes one Raft message (the gRPC transport sends messages one per `bytes` field).
pub fn encode_message(msg: &Message) -> Vec<u8> {
    // Serializing plain data into a Vec cannot fail.
    postcard::to_allocvec(msg).unwrap_or_default()
}

/// Decodes a message made by [`encode_message`].
pub fn decode_message(bytes: &[u8]) -> Result<Message, CodecError> {
    postcard::from_bytes(bytes).map_err(|e| CodecError::Batch(e.to_string()))
}

/// Identifies a proposal so that the node that proposed it can answer its client.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RequestKey {
    /// Chosen anew at every process start, so keys of a previous run never match.
    pub incarnation: u64,
    /// Increases per proposal within an incarnation.
    pub seq: u64,
    /// The proposing node.
    pub origin: u64,
}

/// What a normal log entry carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Envelope {
    /// Who waits for the result.
    pub key: RequestKey,
    /// What to apply.
    pub command: Command,
}

impl Envelope {
    /// Encodes into entry data.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Vec::with_capacity(64);
        w.push(ENVELOPE_VERSION);
        put_u64(&mut w, self.key.incarnation);
        put_u64(&mut w, self.key.seq);
        put_u64(&mut w, self.key.origin);
        put_command(&mut w, &self.command);
        w
    }

    /// Decodes entry data made by [`Envelope::encode`].
    pub fn decode(bytes: &[u8]) -> Result<Self, CodecError> {
        let mut r = Reader(bytes);
        let v = r.u8()?;
        if v != ENVELOPE_VERSION {
            return Err(CodecError::InvalidTag(v));
        }
        let key = RequestKey {
            incarnation: r.u64()?,
            seq: r.u64()?,
            origin: r.u64()?,
        };
        let command = r.command()?;
        if !r.0.is_empty() {
            return Err(CodecError::Trailing);
        }
        Ok(Self { key, command })
    }
}

/// Splits snapshot data (concatenated `SnapshotStream` chunks) back into chunks.
pub fn split_chunks(mut data: &[u8]) -> Result<Vec<&[u8]>, CodecError> {
    const HEADER: usize = 24;
    let mut out = Vec::new();
    while !data.is_empty() {
        if data.len() < HEADER {
            return Err(CodecError::Truncated);
        }
        let mut len = [0u8; 4];
        len.copy_from_slice(&data[16..20]);
        let total = HEADER
            .checked_add(u32::from_le_bytes(len) as usize)
            .ok_or(CodecError::Truncated)?;
        if data.len() < total {
            return Err(CodecError::Truncated);
        }
        let (chunk, rest) = data.split_at(total);
        out.push(chunk);
        data = rest;
    }
    Ok(out)
}

fn put_u64(w: &mut Vec<u8>, v: u64) {
    w.extend_from_slice(&v.to_le_bytes());
}

fn put_i64(w: &mut Vec<u8>, v: i64) {
    w.extend_from_slice(&v.to_le_bytes());
}

fn put_bool(w: &mut Vec<u8>, v: bool) {
    w.push(u8::from(v));
}

fn put_bytes(w: &mut Vec<u8>, b: &[u8]) {
    w.extend_from_slice(&(b.len() as u32).to_le_bytes());
    w.extend_from_slice(b);
}

fn put_range(w: &mut Vec<u8>, r: &RangeRequest) {
    put_bytes(w, &r.key);
    put_bytes(w, &r.range_end);
    put_i64(w, r.limit);
    put_i64(w, r.revision);
    w.push(match r.sort_order {
        SortOrder::None => 0,
        SortOrder::Ascend => 1,
        SortOrder::Descend => 2,
    });
    w.push(match r.sort_target {
        SortTarget::Key => 0,
        SortTarget::Version => 1,
        SortTarget::Create => 2,
        SortTarget::Mod => 3,
        SortTarget::Value => 4,
    });
    put_bool(w, r.keys_only);
    put_bool(w, r.count_only);
    put_i64(w, r.min_mod_revision);
    put_i64(w, r.max_mod_revision);
    put_i64(w, r.min_create_revision);
    put_i64(w, r.max_create_revision);
}

fn put_put(w: &mut Vec<u8>, p: &PutRequest) {
    put_bytes(w, &p.key);
    put_bytes(w, &p.value);
    put_i64(w, p.lease);
    put_bool(w, p.prev_kv);
    put_bool(w, p.ignore_value);
    put_bool(w, p.ignore_lease);
}

fn put_delete(w: &mut Vec<u8>, d: &DeleteRangeRequest) {
    put_bytes(w, &d.key);
    put_bytes(w, &d.range_end);
    put_bool(w, d.prev_kv);
}

fn put_ops(w: &mut Vec<u8>, ops: &[RequestOp]) {
    w.extend_from_slice(&(ops.len() as u32).to_le_bytes());
    for op in ops {
        match op {
            RequestOp::Range(r) => {
                w.push(0);
                put_range(w, r);
            }
            RequestOp::Put(p) => {
                w.push(1);
                put_put(w, p);
            }
            RequestOp::DeleteRange(d) => {
                w.push(2);
                put_delete(w, d);
            }
            RequestOp::Txn(t) => {
                w.push(3);
                put_txn(w, t);
            }
        }
    }
}

fn put_txn(w: &mut Vec<u8>, t: &TxnRequest) {
    w.extend_from_slice(&(t.compare.len() as u32).to_le_bytes());
    for c in &t.compare {
        w.push(match c.result {
            CompareResult::Equal => 0,
            CompareResult::Greater => 1,
            CompareResult::Less => 2,
            CompareResult::NotEqual => 3,
        });
        match &c.target {
            CompareTarget::Version(v) => {
                w.push(0);
                put_i64(w, *v);
            }
            CompareTarget::Create(v) => {
                w.push(1);
                put_i64(w, *v);
            }
            CompareTarget::Mod(v) => {
                w.push(2);
                put_i64(w, *v);
            }
            CompareTarget::Value(v) => {
                w.push(3);
                put_bytes(w, v);
            }
            CompareTarget::Lease(v) => {
                w.push(4);
                put_i64(w, *v);
            }
        }
        put_bytes(w, &c.key);
        put_bytes(w, &c.range_end);
    }
    put_ops(w, &t.success);
    put_ops(w, &t.failure);
}

fn put_command(w: &mut Vec<u8>, c: &Command) {
    match c {
        Command::Noop => w.push(0),
        Command::Put(p) => {
            w.push(1);
            put_put(w, p);
        }
        Command::DeleteRange(d) => {
            w.push(2);
            put_delete(w, d);
        }
        Command::Txn(t) => {
            w.push(3);
            put_txn(w, t);
        }
        Command::Compact { revision } => {
            w.push(4);
            put_i64(w, *revision);
        }
        Command::LeaseGrant { id, ttl } => {
            w.push(5);
            put_i64(w, *id);
            put_i64(w, *ttl);
        }
        Command::LeaseRevoke { id } => {
            w.push(6);
            put_i64(w, *id);
        }
        Command::LeaseCheckpoint { id, remaining_ttl } => {
            w.push(7);
            put_i64(w, *id);
            put_i64(w, *remaining_ttl);
        }
        Command::AlarmNoSpace => w.push(8),
        Command::AlarmDisarm => w.push(9),
        Command::ClusterMeta { key, value } => {
            w.push(10);
            put_bytes(w, key);
            match value {
                Some(v) => {
                    w.push(1);
                    put_bytes(w, v);
                }
                None => w.push(0),
            }
        }
    }
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], CodecError> {
        if self.0.len() < n {
            return Err(CodecError::Truncated);
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, CodecError> {
        Ok(self.take(1)?[0])
    }

    fn bool(&mut self) -> Result<bool, CodecError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            t => Err(CodecError::InvalidTag(t)),
        }
    }

    fn u32(&mut self) -> Result<u32, CodecError> {
        let mut a = [0u8; 4];
        a.copy_from_slice(self.take(4)?);
        Ok(u32::from_le_bytes(a))
    }

    fn u64(&mut self) -> Result<u64, CodecError> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(a))
    }

    fn i64(&mut self) -> Result<i64, CodecError> {
        Ok(self.u64()? as i64)
    }

    fn bytes(&mut self) -> Result<Vec<u8>, CodecError> {
        let n = self.u32()? as usize;
        Ok(self.take(n)?.to_vec())
    }

    // A count of items each at least `min_bytes` long, checked against the input so a
    // forged count cannot make us allocate.
    fn count(&mut self, min_bytes: usize) -> Result<usize, CodecError> {
        let n = self.u32()? as usize;
        if n > self.0.len() / min_bytes {
            return Err(CodecError::Truncated);
        }
        Ok(n)
    }

    fn range(&mut self) -> Result<RangeRequest, CodecError> {
        Ok(RangeRequest {
            key: self.bytes()?,
            range_end: self.bytes()?,
            limit: self.i64()?,
            revision: self.i64()?,
            sort_order: match self.u8()? {
                0 => SortOrder::None,
                1 => SortOrder::Ascend,
                2 => SortOrder::Descend,
                t => return Err(CodecError::InvalidTag(t)),
            },
            sort_target: match self.u8()? {
                0 => SortTarget::Key,
                1 => SortTarget::Version,
                2 => SortTarget::Create,
                3 => SortTarget::Mod,
                4 => SortTarget::Value,
                t => return Err(CodecError::InvalidTag(t)),
            },
            keys_only: self.bool()?,
            count_only: self.bool()?,
            min_mod_revision: self.i64()?,
            max_mod_revision: self.i64()?,
            min_create_revision: self.i64()?,
            max_create_revision: self.i64()?,
        })
    }

    fn put(&mut self) -> Result<PutRequest, CodecError> {
        Ok(PutRequest {
            key: self.bytes()?,
            value: self.bytes()?,
            lease: self.i64()?,
            prev_kv: self.bool()?,
            ignore_value: self.bool()?,
            ignore_lease: self.bool()?,
        })
    }

    fn delete(&mut self) -> Result<DeleteRangeRequest, CodecError> {
        Ok(DeleteRangeRequest {
            key: self.bytes()?,
            range_end: self.bytes()?,
            prev_kv: self.bool()?,
        })
    }

    fn ops(&mut self, depth: usize) -> Result<Vec<RequestOp>, CodecError> {
        let n = self.count(1)?;
        let mut ops = Vec::with_capacity(n);
        for _ in 0..n {
            ops.push(match self.u8()? {
                0 => RequestOp::Range(self.range()?),
                1 => RequestOp::Put(self.put()?),
                2 => RequestOp::DeleteRange(self.delete()?),
                3 => RequestOp::Txn(self.txn(depth + 1)?),
                t => return Err(CodecError::InvalidTag(t)),
            });
        }
        Ok(ops)
    }

    fn txn(&mut self, depth: usize) -> Result<TxnRequest, CodecError> {
        if depth > MAX_TXN_DEPTH {
            return Err(CodecError::TooDeep);
        }
        let n = self.count(10)?;
        let mut compare = Vec::with_capacity(n);
        for _ in 0..n {
            let result = match self.u8()? {
                0 => CompareResult::Equal,
                1 => CompareResult::Greater,
                2 => CompareResult::Less,
                3 => CompareResult::NotEqual,
                t => return Err(CodecError::InvalidTag(t)),
            };
            let target = match self.u8()? {
                0 => CompareTarget::Version(self.i64()?),
                1 => CompareTarget::Create(self.i64()?),
                2 => CompareTarget::Mod(self.i64()?),
                3 => CompareTarget::Value(self.bytes()?),
                4 => CompareTarget::Lease(self.i64()?),
                t => return Err(CodecError::InvalidTag(t)),
            };
            compare.push(Compare {
                result,
                target,
                key: self.bytes()?,
                range_end: self.bytes()?,
            });
        }
        Ok(TxnRequest {
            compare,
            success: self.ops(depth)?,
            failure: self.ops(depth)?,
        })
    }

    fn command(&mut self) -> Result<Command, CodecError> {
        Ok(match self.u8()? {
            0 => Command::Noop,
            1 => Command::Put(self.put()?),
            2 => Command::DeleteRange(self.delete()?),
            3 => Command::Txn(self.txn(0)?),
            4 => Command::Compact {
                revision: self.i64()?,
            },
            5 => Command::LeaseGrant {
                id: self.i64()?,
                ttl: self.i64()?,
            },
            6 => Command::LeaseRevoke { id: self.i64()? },
            7 => Command::LeaseCheckpoint {
                id: self.i64()?,
                remaining_ttl: self.i64()?,
            },
            8 => Command::AlarmNoSpace,
            9 => Command::AlarmDisarm,
            10 => Command::ClusterMeta {
                key: self.bytes()?,
                value: match self.u8()? {
                    0 => None,
                    1 => Some(self.bytes()?),
                    t => return Err(CodecError::InvalidTag(t)),
                },
            },
            t => return Err(CodecError::InvalidTag(t)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use concord_raft::{Entry, MessageType, Snapshot, SnapshotMetadata};

    fn sample_txn() -> TxnRequest {
        TxnRequest {
            compare: vec![
                Compare {
                    result: CompareResult::Greater,
                    target: CompareTarget::Value(b"v".to_vec()),
                    key: b"a".to_vec(),
                    range_end: b"b".to_vec(),
                },
                Compare {
                    result: CompareResult::NotEqual,
                    target: CompareTarget::Lease(-3),
                    key: b"k".to_vec(),
                    range_end: Vec::new(),
                },
            ],
            success: vec![
                RequestOp::Put(PutRequest {
                    key: b"k".to_vec(),
                    value: vec![0, 255, 7],
                    lease: 9,
                    prev_kv: true,
                    ignore_value: false,
                    ignore_lease: true,
                }),
                RequestOp::Range(RangeRequest {
                    key: b"a".to_vec(),
                    range_end: vec![0],
                    limit: 5,
                    revision: 2,
                    sort_order: SortOrder::Descend,
                    sort_target: SortTarget::Mod,
                    keys_only: true,
                    count_only: false,
                    min_mod_revision: 1,
                    max_mod_revision: 2,
                    min_create_revision: 3,
                    max_create_revision: 4,
                }),
            ],
            failure: vec![
                RequestOp::DeleteRange(DeleteRangeRequest {
                    key: b"x".to_vec(),
                    range_end: b"y".to_vec(),
                    prev_kv: true,
                }),
                RequestOp::Txn(TxnRequest::default()),
            ],
        }
    }

    #[test]
    fn every_command_round_trips() {
        let cmds = vec![
            Command::Noop,
            Command::Put(PutRequest {
                key: b"k".to_vec(),
                value: b"v".to_vec(),
                ..PutRequest::default()
            }),
            Command::DeleteRange(DeleteRangeRequest {
                key: b"k".to_vec(),
                range_end: b"z".to_vec(),
                prev_kv: false,
            }),
            Command::Txn(sample_txn()),
            Command::Compact { revision: 42 },
            Command::LeaseGrant { id: 7, ttl: 60 },
            Command::LeaseRevoke { id: 7 },
            Command::LeaseCheckpoint {
                id: 7,
                remaining_ttl: 12,
            },
            Command::AlarmNoSpace,
            Command::AlarmDisarm,
            Command::ClusterMeta {
                key: b"member/1".to_vec(),
                value: Some(b"{}".to_vec()),
            },
            Command::ClusterMeta {
                key: b"member/1".to_vec(),
                value: None,
            },
        ];
        for (i, command) in cmds.into_iter().enumerate() {
            let env = Envelope {
                key: RequestKey {
                    incarnation: 99,
                    seq: i as u64,
                    origin: 3,
                },
                command,
            };
            let bytes = env.encode();
            assert_eq!(Envelope::decode(&bytes), Ok(env.clone()));
            // Every strict prefix is refused, never misread or panicking.
            for cut in 0..bytes.len() {
                assert!(Envelope::decode(&bytes[..cut]).is_err(), "prefix {cut}");
            }
            let mut longer = bytes.clone();
            longer.push(0);
            assert_eq!(Envelope::decode(&longer), Err(CodecError::Trailing));
        }
    }

    #[test]
    fn garbage_never_panics() {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for len in 0..300usize {
            let mut bytes = Vec::with_capacity(len);
            for _ in 0..len {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                bytes.push(x as u8);
            }
            if let Some(b) = bytes.first_mut() {
                *b = ENVELOPE_VERSION;
            }
            let _ = Envelope::decode(&bytes);
            let _ = decode_batch(&bytes);
            let _ = split_chunks(&bytes);
        }
    }

    #[test]
    fn message_batches_round_trip() {
        let msgs = vec![
            Message {
                msg_type: MessageType::Append,
                to: 2,
                from: 1,
                term: 5,
                log_term: 4,
                index: 10,
                entries: vec![Entry {
                    term: 5,
                    index: 11,
                    data: vec![1, 2, 3],
                    ..Entry::default()
                }],
                commit: 9,
                ..Message::default()
            },
            Message {
                msg_type: MessageType::Snapshot,
                to: 3,
                from: 1,
                snapshot: Some(Snapshot {
                    metadata: SnapshotMetadata {
                        index: 7,
                        term: 2,
                        ..SnapshotMetadata::default()
                    },
                    data: vec![9; 100],
                }),
                context: b"ctx".to_vec(),
                ..Message::default()
            },
        ];
        for m in &msgs {
            assert_eq!(decode_message(&encode_message(m)).as_ref(), Ok(m));
        }
        assert_eq!(decode_batch(&encode_batch(&msgs)), Ok(msgs));
    }
}
