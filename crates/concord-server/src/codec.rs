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
use concord_storage::mvcc::codec::CommandDecodeError;
use concord_storage::mvcc::types::Command;

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
    /// The command inside the entry is malformed.
    #[error("invalid command: {0}")]
    Command(#[from] CommandDecodeError),
}

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
        w.extend_from_slice(&self.key.incarnation.to_le_bytes());
        w.extend_from_slice(&self.key.seq.to_le_bytes());
        w.extend_from_slice(&self.key.origin.to_le_bytes());
        self.command.encode_into(&mut w);
        w
    }

    /// Decodes entry data made by [`Envelope::encode`].
    pub fn decode(bytes: &[u8]) -> Result<Self, CodecError> {
        let (&v, rest) = bytes.split_first().ok_or(CodecError::Truncated)?;
        if v != ENVELOPE_VERSION {
            return Err(CodecError::InvalidTag(v));
        }
        let (key, payload) = rest.split_at_checked(24).ok_or(CodecError::Truncated)?;
        let word = |i: usize| {
            let mut a = [0u8; 8];
            a.copy_from_slice(&key[i * 8..i * 8 + 8]);
            u64::from_le_bytes(a)
        };
        let key = RequestKey {
            incarnation: word(0),
            seq: word(1),
            origin: word(2),
        };
        let command = Command::decode(payload)?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use concord_raft::{Entry, MessageType, Snapshot, SnapshotMetadata};
    use concord_storage::mvcc::types::PutRequest;

    #[test]
    fn envelopes_round_trip_and_refuse_prefixes() {
        let cmds = [
            Command::Noop,
            Command::Put(PutRequest {
                key: b"k".to_vec(),
                value: b"v".to_vec(),
                ..PutRequest::default()
            }),
            Command::LeaseRevoke { id: 7 },
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
            assert!(Envelope::decode(&longer).is_err());
        }
    }

    #[test]
    fn an_envelope_is_its_header_then_the_command_bytes() {
        let command = Command::Compact { revision: 5 };
        let env = Envelope {
            key: RequestKey {
                incarnation: 1,
                seq: 2,
                origin: 3,
            },
            command: command.clone(),
        };
        let mut want = vec![ENVELOPE_VERSION];
        for w in [1u64, 2, 3] {
            want.extend_from_slice(&w.to_le_bytes());
        }
        want.extend_from_slice(&command.encode());
        assert_eq!(env.encode(), want);
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
