//! The wire encoding of Raft messages between peers.
//!
//! A message travels as a `postcard` encoding (a compact, varint-based serde format) of
//! concord-raft's `Message`: [`encode_message`] / [`decode_message`], and a batch as one of
//! `Vec<Message>`: [`encode_batch`] / [`decode_batch`].
//!
//! # Guarantees
//!
//! 1. Decoding never panics: malformed input gives a [`CodecError`].
//! 2. `decode(encode(x)) == x` for every message and batch (tested).

use concord_raft::Message;

/// Why bytes could not be decoded into messages.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CodecError {
    /// The bytes are not a valid encoding.
    #[error("invalid message encoding: {0}")]
    Invalid(String),
}

/// Encodes a batch of Raft messages for the wire.
pub fn encode_batch(msgs: &[Message]) -> Vec<u8> {
    // Serializing plain data into a Vec cannot fail.
    postcard::to_allocvec(msgs).unwrap_or_default()
}

/// Decodes a batch made by [`encode_batch`].
pub fn decode_batch(bytes: &[u8]) -> Result<Vec<Message>, CodecError> {
    postcard::from_bytes(bytes).map_err(|e| CodecError::Invalid(e.to_string()))
}

/// Encodes one Raft message (the gRPC transport sends messages one per `bytes` field).
pub fn encode_message(msg: &Message) -> Vec<u8> {
    // Serializing plain data into a Vec cannot fail.
    postcard::to_allocvec(msg).unwrap_or_default()
}

/// Decodes a message made by [`encode_message`].
pub fn decode_message(bytes: &[u8]) -> Result<Message, CodecError> {
    postcard::from_bytes(bytes).map_err(|e| CodecError::Invalid(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use concord_raft::{Entry, MessageType, NodeId, Snapshot, SnapshotMetadata};

    /// Byte fields encode as byte strings (concord-raft's types, guarantee 3): in postcard
    /// the same bytes as the sequence of `u8` they were encoded as before, so messages
    /// and WAL records from either side of the change decode alike.
    #[test]
    fn byte_fields_encode_as_they_did_as_sequences() {
        let data: Vec<u8> = (0..=255).chain(0..44).collect();
        let entry = Entry {
            term: 3,
            index: 1 << 40,
            data: data.clone(),
            ..Entry::default()
        };
        // A sequence of `u8`, as `Vec<u8>` serializes without `serde_bytes`.
        let as_sequence = (3u64, 1u64 << 40, entry.kind, data);
        let bytes = postcard::to_allocvec(&entry).unwrap();
        assert_eq!(bytes, postcard::to_allocvec(&as_sequence).unwrap());
        assert_eq!(postcard::from_bytes::<Entry>(&bytes).unwrap(), entry);
    }

    #[test]
    fn message_batches_round_trip() {
        let msgs = vec![
            Message {
                msg_type: MessageType::Append,
                to: NodeId(2),
                from: NodeId(1),
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
                to: NodeId(3),
                from: NodeId(1),
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

    #[test]
    fn garbage_never_panics() {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for len in 0..300usize {
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            let _ = decode_batch(&bytes);
            let _ = decode_message(&bytes);
        }
    }
}
