//! The durable encoding of [`Command`]: the bytes a replicated command has inside a Raft
//! log entry. It lives beside [`Command`] so that a new command and its bytes are one change.
//!
//! The format (version 1) is documented byte by byte in docs/storage.md § 1.8 "Entry payload".
//! In short: a tag byte naming the command, then its fields in order; integers are
//! little-endian and fixed-width, booleans one byte (0 or 1), byte strings a `u32` length
//! then the bytes, lists a `u32` count then the items, optional values a presence byte.
//!
//! # Format versions
//!
//! Format 1 has no prefix: its first byte is the tag (0–14; 11 to 14 were added to it,
//! so older entries decode unchanged). The tag [`VERSIONED`] (0xFF)
//! is reserved: a later format writes `0xFF, version, ...`, so entries written before it
//! still decode exactly as today and a node that meets a version it does not know refuses
//! the entry ([`CommandDecodeError::UnknownVersion`]) instead of misreading it.
//!
//! # Guarantees
//!
//! 1. Decoding never panics: malformed input gives a [`CommandDecodeError`].
//! 2. `decode(encode(c)) == c` for every command (tested), and the encoding is
//!    deterministic, so every replica decodes the same bytes to the same command.
//! 3. The bytes of every command kind are pinned by golden tests: an entry written by an
//!    earlier build decodes to the same command.

use super::types::{
    Command, Compare, CompareResult, CompareTarget, DeleteRangeRequest, PutRequest, RangeRequest,
    RequestOp, SortOrder, SortTarget, TxnRequest,
};

/// The encoding written by [`Command::encode`].
pub const FORMAT_VERSION: u8 = 1;

/// The tag that introduces an explicitly versioned encoding (reserved for later formats).
pub const VERSIONED: u8 = 0xFF;

/// Deepest nesting of transactions accepted when decoding (bounds the recursion).
pub const MAX_TXN_DEPTH: usize = 64;

/// Why bytes could not be decoded into a [`Command`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CommandDecodeError {
    /// The input ends before the structure does.
    #[error("truncated input")]
    Truncated,
    /// A tag has no meaning.
    #[error("invalid tag {0}")]
    InvalidTag(u8),
    /// Bytes remain after the structure.
    #[error("trailing bytes")]
    Trailing,
    /// Nesting deeper than [`MAX_TXN_DEPTH`].
    #[error("transaction nested too deeply")]
    TooDeep,
    /// An explicitly versioned encoding this build does not know.
    #[error("unknown command format version {0}")]
    UnknownVersion(u8),
}

impl Command {
    /// The command's durable bytes (format [`FORMAT_VERSION`]).
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Vec::with_capacity(64);
        self.encode_into(&mut w);
        w
    }

    /// Appends the command's durable bytes to `w`.
    pub fn encode_into(&self, w: &mut Vec<u8>) {
        put_command(w, self);
    }

    /// Decodes bytes made by [`Command::encode`] (by this build or an earlier one).
    pub fn decode(bytes: &[u8]) -> Result<Command, CommandDecodeError> {
        let mut r = Reader(bytes);
        let command = r.command()?;
        if !r.0.is_empty() {
            return Err(CommandDecodeError::Trailing);
        }
        Ok(command)
    }
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
        Command::AlarmActivate { member } => {
            w.push(11);
            w.extend_from_slice(&member.to_le_bytes());
        }
        Command::AlarmDeactivate { member } => {
            w.push(12);
            w.extend_from_slice(&member.to_le_bytes());
        }
        Command::ClusterMeta { key, value } => {
            w.push(10);
            put_bytes(w, key);
            put_opt_bytes(w, value.as_deref());
        }
        Command::ClusterMetaCas { key, expect, value } => {
            w.push(13);
            put_bytes(w, key);
            put_opt_bytes(w, expect.as_deref());
            put_opt_bytes(w, value.as_deref());
        }
        Command::Authorized { auth_revision, cmd } => {
            w.push(14);
            match auth_revision {
                Some(r) => {
                    w.push(1);
                    w.extend_from_slice(&r.to_le_bytes());
                }
                None => w.push(0),
            }
            put_command(w, cmd);
        }
    }
}

/// An optional byte string: 0, or 1 and the bytes.
fn put_opt_bytes(w: &mut Vec<u8>, v: Option<&[u8]>) {
    match v {
        Some(v) => {
            w.push(1);
            put_bytes(w, v);
        }
        None => w.push(0),
    }
}

pub(crate) struct Reader<'a>(pub(crate) &'a [u8]);

impl Reader<'_> {
    fn opt_bytes(&mut self) -> Result<Option<Vec<u8>>, CommandDecodeError> {
        Ok(match self.u8()? {
            0 => None,
            1 => Some(self.bytes()?),
            t => return Err(CommandDecodeError::InvalidTag(t)),
        })
    }

    fn take(&mut self, n: usize) -> Result<&[u8], CommandDecodeError> {
        if self.0.len() < n {
            return Err(CommandDecodeError::Truncated);
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, CommandDecodeError> {
        Ok(self.take(1)?[0])
    }

    fn bool(&mut self) -> Result<bool, CommandDecodeError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            t => Err(CommandDecodeError::InvalidTag(t)),
        }
    }

    fn u32(&mut self) -> Result<u32, CommandDecodeError> {
        let mut a = [0u8; 4];
        a.copy_from_slice(self.take(4)?);
        Ok(u32::from_le_bytes(a))
    }

    fn u64(&mut self) -> Result<u64, CommandDecodeError> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(a))
    }

    fn i64(&mut self) -> Result<i64, CommandDecodeError> {
        Ok(self.u64()? as i64)
    }

    fn bytes(&mut self) -> Result<Vec<u8>, CommandDecodeError> {
        let n = self.u32()? as usize;
        Ok(self.take(n)?.to_vec())
    }

    // A count of items each at least `min_bytes` long, checked against the input so a
    // forged count cannot make us allocate.
    fn count(&mut self, min_bytes: usize) -> Result<usize, CommandDecodeError> {
        let n = self.u32()? as usize;
        if n > self.0.len() / min_bytes {
            return Err(CommandDecodeError::Truncated);
        }
        Ok(n)
    }

    fn range(&mut self) -> Result<RangeRequest, CommandDecodeError> {
        Ok(RangeRequest {
            key: self.bytes()?,
            range_end: self.bytes()?,
            limit: self.i64()?,
            revision: self.i64()?,
            sort_order: match self.u8()? {
                0 => SortOrder::None,
                1 => SortOrder::Ascend,
                2 => SortOrder::Descend,
                t => return Err(CommandDecodeError::InvalidTag(t)),
            },
            sort_target: match self.u8()? {
                0 => SortTarget::Key,
                1 => SortTarget::Version,
                2 => SortTarget::Create,
                3 => SortTarget::Mod,
                4 => SortTarget::Value,
                t => return Err(CommandDecodeError::InvalidTag(t)),
            },
            keys_only: self.bool()?,
            count_only: self.bool()?,
            min_mod_revision: self.i64()?,
            max_mod_revision: self.i64()?,
            min_create_revision: self.i64()?,
            max_create_revision: self.i64()?,
        })
    }

    fn put(&mut self) -> Result<PutRequest, CommandDecodeError> {
        Ok(PutRequest {
            key: self.bytes()?,
            value: self.bytes()?,
            lease: self.i64()?,
            prev_kv: self.bool()?,
            ignore_value: self.bool()?,
            ignore_lease: self.bool()?,
        })
    }

    fn delete(&mut self) -> Result<DeleteRangeRequest, CommandDecodeError> {
        Ok(DeleteRangeRequest {
            key: self.bytes()?,
            range_end: self.bytes()?,
            prev_kv: self.bool()?,
        })
    }

    fn ops(&mut self, depth: usize) -> Result<Vec<RequestOp>, CommandDecodeError> {
        let n = self.count(1)?;
        let mut ops = Vec::with_capacity(n);
        for _ in 0..n {
            ops.push(match self.u8()? {
                0 => RequestOp::Range(self.range()?),
                1 => RequestOp::Put(self.put()?),
                2 => RequestOp::DeleteRange(self.delete()?),
                3 => RequestOp::Txn(self.txn(depth + 1)?),
                t => return Err(CommandDecodeError::InvalidTag(t)),
            });
        }
        Ok(ops)
    }

    fn txn(&mut self, depth: usize) -> Result<TxnRequest, CommandDecodeError> {
        if depth > MAX_TXN_DEPTH {
            return Err(CommandDecodeError::TooDeep);
        }
        let n = self.count(10)?;
        let mut compare = Vec::with_capacity(n);
        for _ in 0..n {
            let result = match self.u8()? {
                0 => CompareResult::Equal,
                1 => CompareResult::Greater,
                2 => CompareResult::Less,
                3 => CompareResult::NotEqual,
                t => return Err(CommandDecodeError::InvalidTag(t)),
            };
            let target = match self.u8()? {
                0 => CompareTarget::Version(self.i64()?),
                1 => CompareTarget::Create(self.i64()?),
                2 => CompareTarget::Mod(self.i64()?),
                3 => CompareTarget::Value(self.bytes()?),
                4 => CompareTarget::Lease(self.i64()?),
                t => return Err(CommandDecodeError::InvalidTag(t)),
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

    fn command(&mut self) -> Result<Command, CommandDecodeError> {
        self.command_in(false)
    }

    /// A command; `wrapped` inside [`Command::Authorized`], which does not nest.
    fn command_in(&mut self, wrapped: bool) -> Result<Command, CommandDecodeError> {
        let mut tag = self.u8()?;
        if tag == VERSIONED {
            match self.u8()? {
                FORMAT_VERSION => tag = self.u8()?,
                v => return Err(CommandDecodeError::UnknownVersion(v)),
            }
        }
        Ok(match tag {
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
                value: self.opt_bytes()?,
            },
            13 => Command::ClusterMetaCas {
                key: self.bytes()?,
                expect: self.opt_bytes()?,
                value: self.opt_bytes()?,
            },
            11 => Command::AlarmActivate {
                member: self.u64()?,
            },
            12 => Command::AlarmDeactivate {
                member: self.u64()?,
            },
            14 if !wrapped => {
                let auth_revision = match self.u8()? {
                    0 => None,
                    1 => Some(self.u64()?),
                    t => return Err(CommandDecodeError::InvalidTag(t)),
                };
                Command::Authorized {
                    auth_revision,
                    cmd: Box::new(self.command_in(true)?),
                }
            }
            t => return Err(CommandDecodeError::InvalidTag(t)),
        })
    }
}

#[cfg(test)]
mod tests;
