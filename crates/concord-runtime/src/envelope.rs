//! What a normal Raft log entry carries: an [`Envelope`] header that says who waits for
//! the result, then the state machine's payload, opaque to the runtime.
//!
//! ```text
//! byte 0      version (1)
//! bytes 1-8   incarnation  u64 LE   chosen anew at every process start
//! bytes 9-16  seq          u64 LE   increases per proposal within an incarnation
//! bytes 17-24 origin       u64 LE   the proposing node
//! bytes 25-   payload               the state machine's bytes (e.g. a KV command)
//! ```
//!
//! # Guarantees
//!
//! 1. Decoding never panics; an entry too short for the header, or of another version,
//!    is an [`EnvelopeError`] (the driver applies it as a no-op on every replica alike).
//! 2. Request keys never repeat across restarts of a node (the incarnation differs), so a
//!    result is only ever handed to the client that proposed it, on the node it asked.

use concord_raft::NodeId;

/// The version byte of the header.
pub const ENVELOPE_VERSION: u8 = 1;
/// Bytes of the header before the payload.
pub const HEADER_BYTES: usize = 25;

/// Identifies a proposal so that the node that proposed it can answer its client.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RequestKey {
    /// Chosen anew at every process start, so keys of a previous run never match.
    pub incarnation: u64,
    /// Increases per proposal within an incarnation.
    pub seq: u64,
    /// The proposing node.
    pub origin: NodeId,
}

/// Why entry data has no valid envelope.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EnvelopeError {
    /// Shorter than the header.
    #[error("entry shorter than its header")]
    Truncated,
    /// A version this build does not know.
    #[error("unknown entry version {0}")]
    UnknownVersion(u8),
}

impl RequestKey {
    /// The 24 bytes of the key (incarnation, seq, origin; little-endian).
    pub fn to_bytes(&self) -> [u8; 24] {
        let mut b = [0u8; 24];
        b[..8].copy_from_slice(&self.incarnation.to_le_bytes());
        b[8..16].copy_from_slice(&self.seq.to_le_bytes());
        b[16..].copy_from_slice(&self.origin.get().to_le_bytes());
        b
    }

    /// The key in `b`, if it is exactly 24 bytes.
    pub fn from_bytes(b: &[u8]) -> Option<Self> {
        let b: &[u8; 24] = b.try_into().ok()?;
        let word = |i: usize| {
            let mut a = [0u8; 8];
            a.copy_from_slice(&b[i * 8..i * 8 + 8]);
            u64::from_le_bytes(a)
        };
        Some(Self {
            incarnation: word(0),
            seq: word(1),
            origin: NodeId(word(2)),
        })
    }
}

/// Entry data: the header for `key`, then `payload`.
pub fn encode(key: &RequestKey, payload: &[u8]) -> Vec<u8> {
    let mut w = Vec::with_capacity(HEADER_BYTES + payload.len());
    write_header(key, &mut w);
    w.extend_from_slice(payload);
    w
}

/// Appends the header for `key` to `w` (the payload follows it).
pub fn write_header(key: &RequestKey, w: &mut Vec<u8>) {
    w.push(ENVELOPE_VERSION);
    w.extend_from_slice(&key.to_bytes());
}

/// The key and payload of entry data made by [`encode`].
pub fn decode(bytes: &[u8]) -> Result<(RequestKey, &[u8]), EnvelopeError> {
    let (&v, rest) = bytes.split_first().ok_or(EnvelopeError::Truncated)?;
    if v != ENVELOPE_VERSION {
        return Err(EnvelopeError::UnknownVersion(v));
    }
    let (key, payload) = rest.split_at_checked(24).ok_or(EnvelopeError::Truncated)?;
    let key = RequestKey::from_bytes(key).ok_or(EnvelopeError::Truncated)?;
    Ok((key, payload))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_layout_is_pinned() {
        let key = RequestKey {
            incarnation: 1,
            seq: 2,
            origin: NodeId(3),
        };
        let bytes = encode(&key, b"xy");
        let mut want = vec![1u8];
        for w in [1u64, 2, 3] {
            want.extend_from_slice(&w.to_le_bytes());
        }
        want.extend_from_slice(b"xy");
        assert_eq!(bytes, want);
        assert_eq!(decode(&bytes), Ok((key, &b"xy"[..])));
        for cut in 0..HEADER_BYTES {
            assert!(decode(&bytes[..cut]).is_err(), "prefix {cut}");
        }
        assert_eq!(
            decode(&[2; 30]),
            Err(EnvelopeError::UnknownVersion(2)),
            "another version"
        );
    }
}
