//! Byte layout of WAL segments: the segment header and the checksummed frames that hold
//! records (see `docs/storage.md` for the same layout in prose).
//!
//! # Guarantees
//!
//! 1. A frame's CRC32C covers its length field and its payload, so a damaged length is
//!    caught like a damaged payload.
//! 2. Decoding never panics and never allocates more than the frame's bytes: every length
//!    is checked against the buffer and against the configured maximum first.

use concord_raft::{ConfState, EntryKind, HardState, NodeId, SnapshotMetadata};

/// Magic bytes at the start of every segment.
pub(crate) const SEGMENT_MAGIC: &[u8; 8] = b"CONCWAL1";
/// Format version written in segment headers.
pub(crate) const SEGMENT_VERSION: u32 = 1;
/// Size of the segment header.
pub(crate) const SEGMENT_HEADER_BYTES: usize = 32;
/// Size of a frame's length and checksum fields.
pub(crate) const FRAME_HEADER_BYTES: usize = 8;

pub(crate) const TYPE_ENTRY: u8 = 1;
pub(crate) const TYPE_COMMIT: u8 = 2;
pub(crate) const TYPE_SNAPSHOT: u8 = 3;

/// Payload size of a commit record: type, term, vote, commit, record count, batch bytes.
pub(crate) const COMMIT_PAYLOAD_BYTES: usize = 1 + 8 + 8 + 8 + 4 + 8;
/// Payload bytes of an entry record before its data.
pub(crate) const ENTRY_PREFIX_BYTES: usize = 1 + 8 + 8 + 1;

/// The header of segment number `seq`.
pub(crate) fn segment_header(seq: u64) -> [u8; SEGMENT_HEADER_BYTES] {
    let mut h = [0u8; SEGMENT_HEADER_BYTES];
    h[..8].copy_from_slice(SEGMENT_MAGIC);
    h[8..12].copy_from_slice(&SEGMENT_VERSION.to_le_bytes());
    h[16..24].copy_from_slice(&seq.to_le_bytes());
    let crc = crc32c::crc32c(&h[..24]);
    h[24..28].copy_from_slice(&crc.to_le_bytes());
    h
}

/// Checks a segment header; returns why it is bad.
pub(crate) fn check_segment_header(bytes: &[u8], seq: u64) -> Result<(), &'static str> {
    if bytes.len() < SEGMENT_HEADER_BYTES {
        return Err("segment header truncated");
    }
    if crc32c::crc32c(&bytes[..24]) != u32_at(bytes, 24) {
        return Err("segment header checksum mismatch");
    }
    if bytes[12..16] != [0; 4] || bytes[28..32] != [0; 4] {
        return Err("segment header reserved bytes not zero");
    }
    if &bytes[..8] != SEGMENT_MAGIC {
        return Err("bad segment magic");
    }
    if u32_at(bytes, 8) != SEGMENT_VERSION {
        return Err("unknown segment version");
    }
    if u64_at(bytes, 16) != seq {
        return Err("segment header names another segment");
    }
    Ok(())
}

pub(crate) fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

pub(crate) fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// Appends one frame whose payload `write` produces.
pub(crate) fn put_frame(buf: &mut Vec<u8>, write: impl FnOnce(&mut Vec<u8>)) {
    let start = buf.len();
    buf.extend_from_slice(&[0u8; FRAME_HEADER_BYTES]);
    write(buf);
    let len = (buf.len() - start - FRAME_HEADER_BYTES) as u32;
    buf[start..start + 4].copy_from_slice(&len.to_le_bytes());
    let crc = frame_crc(&buf[start..start + 4], &buf[start + FRAME_HEADER_BYTES..]);
    buf[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

fn frame_crc(len: &[u8], payload: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(len), payload)
}

pub(crate) fn put_entry(buf: &mut Vec<u8>, term: u64, index: u64, kind: EntryKind, data: &[u8]) {
    put_frame(buf, |b| {
        b.push(TYPE_ENTRY);
        b.extend_from_slice(&term.to_le_bytes());
        b.extend_from_slice(&index.to_le_bytes());
        b.push(match kind {
            EntryKind::Normal => 0,
            EntryKind::ConfChange => 1,
        });
        b.extend_from_slice(data);
    });
}

/// Appends a commit record closing the batch that started at `batch_start` in `buf`.
pub(crate) fn put_commit(buf: &mut Vec<u8>, hs: &HardState, records: u32, batch_start: usize) {
    let batch_bytes = (buf.len() - batch_start) as u64;
    put_frame(buf, |b| {
        b.push(TYPE_COMMIT);
        b.extend_from_slice(&hs.term.to_le_bytes());
        // No vote is written as 0, an id no node has.
        b.extend_from_slice(&hs.vote.map_or(0, NodeId::get).to_le_bytes());
        b.extend_from_slice(&hs.commit.to_le_bytes());
        b.extend_from_slice(&records.to_le_bytes());
        b.extend_from_slice(&batch_bytes.to_le_bytes());
    });
}

pub(crate) fn put_snapshot(buf: &mut Vec<u8>, meta: &SnapshotMetadata, replaces_log: bool) {
    put_frame(buf, |b| {
        b.push(TYPE_SNAPSHOT);
        b.extend_from_slice(&meta.index.to_le_bytes());
        b.extend_from_slice(&meta.term.to_le_bytes());
        b.push(u8::from(replaces_log));
        encode_conf_state(b, &meta.conf_state);
    });
}

/// Appends the binary form of `cs`: four id lists (u32 count, u64 ids) and a flag byte.
pub(crate) fn encode_conf_state(b: &mut Vec<u8>, cs: &ConfState) {
    for list in [
        &cs.voters,
        &cs.voters_outgoing,
        &cs.learners,
        &cs.learners_next,
    ] {
        b.extend_from_slice(&(list.len() as u32).to_le_bytes());
        for id in list {
            b.extend_from_slice(&id.get().to_le_bytes());
        }
    }
    b.push(u8::from(cs.auto_leave));
}

/// Decodes [`encode_conf_state`]'s output, returning it and the bytes used.
pub(crate) fn decode_conf_state(mut b: &[u8]) -> Option<(ConfState, usize)> {
    let total = b.len();
    let mut lists: [Vec<NodeId>; 4] = Default::default();
    for list in &mut lists {
        if b.len() < 4 {
            return None;
        }
        let n = u32_at(b, 0) as usize;
        b = &b[4..];
        if n > b.len() / 8 {
            return None;
        }
        for i in 0..n {
            // 0 names no node: a list holding it is corrupt.
            let id = NodeId(u64_at(b, i * 8));
            if id.is_zero() {
                return None;
            }
            list.push(id);
        }
        b = &b[n * 8..];
    }
    let auto_leave = match b.first()? {
        0 => false,
        1 => true,
        _ => return None,
    };
    let [voters, voters_outgoing, learners, learners_next] = lists;
    let cs = ConfState {
        voters,
        voters_outgoing,
        learners,
        learners_next,
        auto_leave,
    };
    Some((cs, total - b.len() + 1))
}

/// A decoded record; entry data is given as a range of the scanned buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Record {
    Entry {
        term: u64,
        index: u64,
        kind: EntryKind,
        /// Offset of the data in the buffer.
        data_at: usize,
        data_len: usize,
    },
    Commit {
        hard_state: HardState,
        records: u32,
        /// Bytes of the batch before this commit frame.
        batch_bytes: u64,
    },
    Snapshot {
        meta: SnapshotMetadata,
        replaces_log: bool,
    },
}

/// Why a frame could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FrameError {
    /// The buffer ends inside the frame.
    Incomplete,
    /// The checksum does not match.
    Checksum,
    /// The length field is larger than any record may be (garbage or a torn header).
    BadLength,
    /// The checksum matches but the content is invalid: never a torn write.
    Invalid(&'static str),
}

impl FrameError {
    pub(crate) fn reason(self) -> &'static str {
        match self {
            FrameError::Incomplete => "record truncated",
            FrameError::Checksum => "record checksum mismatch",
            FrameError::BadLength => "record length exceeds the maximum",
            FrameError::Invalid(r) => r,
        }
    }
}

/// Reads the frame at `at`; returns it and the offset just past it.
pub(crate) fn read_frame(
    buf: &[u8],
    at: usize,
    max_payload: u32,
) -> Result<(Record, usize), FrameError> {
    if buf.len() < at + FRAME_HEADER_BYTES {
        return Err(FrameError::Incomplete);
    }
    let len = u32_at(buf, at);
    if len > max_payload {
        return Err(FrameError::BadLength);
    }
    let start = at + FRAME_HEADER_BYTES;
    let end = start + len as usize;
    if buf.len() < end {
        return Err(FrameError::Incomplete);
    }
    let payload = &buf[start..end];
    if frame_crc(&buf[at..at + 4], payload) != u32_at(buf, at + 4) {
        return Err(FrameError::Checksum);
    }
    let rec = decode_payload(payload, start)?;
    Ok((rec, end))
}

fn decode_payload(p: &[u8], base: usize) -> Result<Record, FrameError> {
    match p.first() {
        Some(&TYPE_ENTRY) => {
            if p.len() < ENTRY_PREFIX_BYTES {
                return Err(FrameError::Invalid("entry record too short"));
            }
            let kind = match p[17] {
                0 => EntryKind::Normal,
                1 => EntryKind::ConfChange,
                _ => return Err(FrameError::Invalid("unknown entry kind")),
            };
            Ok(Record::Entry {
                term: u64_at(p, 1),
                index: u64_at(p, 9),
                kind,
                data_at: base + ENTRY_PREFIX_BYTES,
                data_len: p.len() - ENTRY_PREFIX_BYTES,
            })
        }
        Some(&TYPE_COMMIT) => {
            if p.len() != COMMIT_PAYLOAD_BYTES {
                return Err(FrameError::Invalid("commit record has the wrong size"));
            }
            Ok(Record::Commit {
                hard_state: HardState {
                    term: u64_at(p, 1),
                    vote: Some(NodeId(u64_at(p, 9))).filter(|id| !id.is_zero()),
                    commit: u64_at(p, 17),
                },
                records: u32_at(p, 25),
                batch_bytes: u64_at(p, 29),
            })
        }
        Some(&TYPE_SNAPSHOT) => {
            if p.len() < 18 {
                return Err(FrameError::Invalid("snapshot record too short"));
            }
            let replaces_log = match p[17] {
                0 => false,
                1 => true,
                _ => return Err(FrameError::Invalid("bad snapshot flag")),
            };
            let (conf_state, used) = decode_conf_state(&p[18..])
                .ok_or(FrameError::Invalid("bad configuration in snapshot record"))?;
            if 18 + used != p.len() {
                return Err(FrameError::Invalid("trailing bytes in snapshot record"));
            }
            Ok(Record::Snapshot {
                meta: SnapshotMetadata {
                    index: u64_at(p, 1),
                    term: u64_at(p, 9),
                    conf_state,
                },
                replaces_log,
            })
        }
        _ => Err(FrameError::Invalid("unknown record type")),
    }
}

/// If a valid commit frame starts at `at`, the offset its batch starts at (used to tell a
/// torn tail from corruption).
pub(crate) fn commit_frame_batch_start(buf: &[u8], at: usize) -> Option<usize> {
    let end = at + FRAME_HEADER_BYTES + COMMIT_PAYLOAD_BYTES;
    if buf.len() < end || u32_at(buf, at) as usize != COMMIT_PAYLOAD_BYTES {
        return None;
    }
    let payload = &buf[at + FRAME_HEADER_BYTES..end];
    if payload[0] != TYPE_COMMIT || frame_crc(&buf[at..at + 4], payload) != u32_at(buf, at + 4) {
        return None;
    }
    let batch_bytes = usize::try_from(u64_at(payload, 29)).ok()?;
    // A start before the segment's first frame still counts as "some batch": return 0.
    Some(at.saturating_sub(batch_bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn no_vote_is_written_as_zero_and_a_zero_member_is_corrupt() {
        let mut buf = Vec::new();
        let hs = HardState {
            term: 3,
            vote: None,
            commit: 2,
        };
        put_commit(&mut buf, &hs, 0, 0);
        match read_frame(&buf, 0, 1 << 20).unwrap().0 {
            Record::Commit { hard_state, .. } => assert_eq!(hard_state, hs),
            other => panic!("not a commit: {other:?}"),
        }
        // One voter list holding id 0, then three empty lists and the flag byte.
        let mut cs = 1u32.to_le_bytes().to_vec();
        cs.extend_from_slice(&0u64.to_le_bytes());
        cs.extend_from_slice(&[0; 12]);
        cs.push(0);
        assert_eq!(decode_conf_state(&cs), None);
        cs[4] = 5;
        let (decoded, used) = decode_conf_state(&cs).unwrap();
        assert_eq!((decoded.voters, used), (vec![NodeId(5)], cs.len()));
    }

    proptest! {
        #[test]
        fn records_roundtrip(term in any::<u64>(), index in any::<u64>(),
                             data in proptest::collection::vec(any::<u8>(), 0..64),
                             voters in proptest::collection::vec(1..u64::MAX, 0..4)) {
            let voters: Vec<NodeId> = voters.into_iter().map(NodeId).collect();
            let mut buf = Vec::new();
            put_entry(&mut buf, term, index, EntryKind::ConfChange, &data);
            let hs = HardState { term, vote: Some(NodeId(index)).filter(|v| !v.is_zero()), commit: 3 };
            put_commit(&mut buf, &hs, 1, 0);
            let meta = SnapshotMetadata { index, term,
                conf_state: ConfState { voters, auto_leave: true, ..ConfState::default() } };
            put_snapshot(&mut buf, &meta, true);
            let (r, next) = read_frame(&buf, 0, 1 << 20).unwrap();
            match r {
                Record::Entry { term: t, index: i, kind, data_at, data_len } => {
                    prop_assert_eq!((t, i, kind), (term, index, EntryKind::ConfChange));
                    prop_assert_eq!(&buf[data_at..data_at + data_len], &data[..]);
                }
                other => prop_assert!(false, "{:?}", other),
            }
            prop_assert_eq!(commit_frame_batch_start(&buf, next), Some(0));
            let entry_end = next;
            let (r, next) = read_frame(&buf, next, 1 << 20).unwrap();
            prop_assert_eq!(r, Record::Commit { hard_state: hs, records: 1, batch_bytes: entry_end as u64 });
            let (r, end) = read_frame(&buf, next, 1 << 20).unwrap();
            prop_assert_eq!(r, Record::Snapshot { meta, replaces_log: true });
            prop_assert_eq!(end, buf.len());
        }

        #[test]
        fn any_single_bit_flip_is_detected(bit in 0usize..(8 * 45)) {
            let mut buf = Vec::new();
            put_entry(&mut buf, 7, 9, EntryKind::Normal, b"0123456789abcdefghij");
            prop_assume!(bit / 8 < buf.len());
            buf[bit / 8] ^= 1 << (bit % 8);
            prop_assert!(read_frame(&buf, 0, 1 << 20).is_err());
        }
    }

    #[test]
    fn header_roundtrip_and_checks() {
        let h = segment_header(5);
        assert_eq!(check_segment_header(&h, 5), Ok(()));
        assert!(check_segment_header(&h, 6).is_err());
        assert!(check_segment_header(&h[..10], 5).is_err());
        let mut bad = h;
        bad[3] ^= 1;
        assert!(check_segment_header(&bad, 5).is_err());
    }
}
