//! The Raft log on disk: a segmented, append-only write-ahead log.
//!
//! A segment is a file `NNNNNNNNNNNNNNNNNNNN.wal` (its sequence number, 20 decimal digits)
//! holding a header and then checksummed frames (layout in `format.rs` and
//! `docs/storage.md`).
//! Each call to [`Wal::append`] writes one *batch* — an optional snapshot record, the
//! entries, and a closing commit record that carries the hard state and the number of
//! records in the batch — with one `write` and one `fdatasync` (group commit).
//!
//! # Guarantees
//!
//! 1. **Acknowledged means durable.** When [`Wal::append`] returns `Ok`, the batch is on
//!    stable storage and a new segment's directory entry too.
//! 2. **Batches are atomic.** Recovery applies a batch only when its commit record is
//!    intact, so entries and hard state of one Ready are all there or none are.
//! 3. **Torn tails are dropped, corruption stops the node.** Only the final batch of the
//!    last segment can be torn, its sectors persisted in any order. A bad record there is
//!    cut off with the rest of its batch, unless a valid commit record after it closes a
//!    later batch or is followed by more data (proof that a later write happened, so the
//!    damaged batch had been acknowledged). Any other bad record — in an earlier segment,
//!    or so proven — makes [`Wal::open`] fail naming file and offset.
//! 4. **Truncation never rewrites.** A conflicting suffix is replaced by appending the new
//!    entries; replay lets a later entry at index `i` discard the entries from `i` on.
//! 5. **Memory is bounded by the live log, not by its bytes.** Each live entry costs a
//!    fixed 32-byte location in memory; entry data is read back from the segment (with its
//!    checksum verified again), except for the most recent entries, kept in a cache of at
//!    most [`WalConfig::cache_bytes`]. The live log itself is bounded by snapshotting and
//!    [`Wal::compact`], which deletes segments the snapshot covers.
//! 6. **Fast syncs.** The last segment is kept zero-filled ahead of the data
//!    ([`WalConfig::preallocate_bytes`]), so an append overwrites existing blocks and its
//!    `fdatasync` carries no metadata; only the last segment may end in zeros.
//! 7. A write that fails poisons the WAL: what reached the disk is unknown (an `fsync` error
//!    may have dropped dirty pages), so only a fresh [`Wal::open`] may continue.

pub(crate) mod format;
mod storage;
#[cfg(test)]
mod tests;

pub use storage::{SnapshotSource, SourceError, WalStorage};

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};

use concord_raft::{Entry, HardState, SnapshotMetadata};

use crate::disk::{Disk, DiskFile};
use crate::errors::{WalOpenError, WalReadError, WalWriteError};
use format::{FrameError, Record, FRAME_HEADER_BYTES, SEGMENT_HEADER_BYTES};

/// WAL settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WalConfig {
    /// A new segment is started when a batch would push the current one past this size
    /// (a single batch larger than this still goes into one segment).
    pub segment_bytes: u64,
    /// Largest record payload accepted, and believed when reading.
    pub max_record_bytes: u32,
    /// Entry data of the most recent entries kept in memory.
    pub cache_bytes: u64,
    /// Zeros kept written ahead of the end of the log (0: none). Overwriting blocks that
    /// already exist lets `fdatasync` skip the file-size and block-allocation metadata,
    /// which halves its latency on ext4; the price is writing every byte twice.
    pub preallocate_bytes: u64,
}

impl Default for WalConfig {
    fn default() -> Self {
        Self {
            segment_bytes: 64 << 20,
            max_record_bytes: (64 << 20) + 1024,
            cache_bytes: 8 << 20,
            preallocate_bytes: 1 << 20,
        }
    }
}

/// What one Ready asks to persist; written with one `fdatasync`.
#[derive(Clone, Copy, Debug, Default)]
pub struct Batch<'a> {
    /// A snapshot received from the leader: replaces the whole log.
    pub snapshot: Option<&'a SnapshotMetadata>,
    /// Entries to append (replacing any stored entries from the first one's index on).
    pub entries: &'a [Entry],
    /// The new hard state, if it changed.
    pub hard_state: Option<HardState>,
    /// Raft's `!must_sync`: only the commit index changed. Such a batch with no snapshot
    /// and no entries is not written at all; its hard state is kept in memory and written
    /// with the next batch (a commit index lost in a crash is learned again). Ignored when
    /// the batch has a snapshot or entries.
    pub lazy: bool,
}

#[derive(Debug)]
struct Segment<F> {
    path: PathBuf,
    file: F,
    // End of the data; the file is zero-filled from here to `alloc`.
    len: u64,
    alloc: u64,
    // Number of live entries whose record is in this segment.
    live: u64,
}

#[derive(Clone, Copy, Debug)]
struct EntryLoc {
    term: u64,
    seq: u64,
    frame_offset: u64,
    payload_len: u32,
}

/// Figures about a [`Wal::open`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Segments read.
    pub segments: u64,
    /// Bytes cut off the last segment as a torn, unacknowledged write.
    pub torn_bytes: u64,
}

/// The write-ahead log. See the module docs for its guarantees.
#[derive(Debug)]
pub struct Wal<D: Disk> {
    disk: D,
    dir: PathBuf,
    config: WalConfig,
    segments: BTreeMap<u64, Segment<D::File>>,
    hard_state: HardState,
    // Invariant: the log's first entry is snapshot.index + 1 and term(snapshot.index) is
    // snapshot.term.
    snapshot: SnapshotMetadata,
    // Segment holding the latest snapshot record (0: none).
    snapshot_seq: u64,
    // Invariant: entries[i] is the entry at index snapshot.index + 1 + i.
    entries: VecDeque<EntryLoc>,
    // Invariant: cache holds the last cache.len() entries, cache_bytes is their data size.
    cache: VecDeque<Entry>,
    cache_bytes: u64,
    poisoned: bool,
    report: RecoveryReport,
}

fn segment_name(seq: u64) -> String {
    format!("{seq:020}.wal")
}

fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".wal")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

// Indexes past this are refused as damage, so index arithmetic cannot overflow.
const MAX_INDEX: u64 = u64::MAX >> 2;

// Replay state. Earlier segments may have been removed, so a run of entries may start
// anywhere; a gap starts a new run (the old one was superseded by entries in the removed
// segments or will be covered by a later snapshot record). At the end the run must start
// right after the latest snapshot.
struct Replay {
    snapshot: SnapshotMetadata,
    snapshot_seq: u64,
    hard_state: HardState,
    // Invariant: entries[i] is the entry at index run_start + i.
    run_start: u64,
    entries: VecDeque<EntryLoc>,
}

impl Replay {
    fn apply(&mut self, rec: &Record, seq: u64, frame_offset: u64) -> Result<(), &'static str> {
        match rec {
            Record::Entry {
                term,
                index,
                data_len,
                ..
            } => {
                let index = *index;
                if index == 0 || index > MAX_INDEX {
                    return Err("entry index out of range");
                }
                if index <= self.snapshot.index {
                    return Ok(());
                }
                let loc = EntryLoc {
                    term: *term,
                    seq,
                    frame_offset,
                    payload_len: (format::ENTRY_PREFIX_BYTES + data_len) as u32,
                };
                let end = self.run_start + self.entries.len() as u64;
                if index < self.run_start || index > end {
                    self.entries.clear();
                    self.run_start = index;
                }
                self.entries.truncate((index - self.run_start) as usize);
                self.entries.push_back(loc);
            }
            Record::Snapshot { meta, replaces_log } => {
                if meta.index > MAX_INDEX {
                    return Err("snapshot index out of range");
                }
                if meta.index < self.snapshot.index {
                    return Err("snapshot record older than an earlier one");
                }
                let end = self.run_start + self.entries.len() as u64;
                if *replaces_log || meta.index >= end {
                    self.entries.clear();
                    self.run_start = meta.index + 1;
                } else if meta.index < self.run_start {
                    // Entries before the run are gone; the end check catches a hole.
                } else {
                    let n = (meta.index + 1 - self.run_start) as usize;
                    if self.entries[n - 1].term != meta.term {
                        return Err("snapshot record term disagrees with the log");
                    }
                    self.entries.drain(..n);
                    self.run_start = meta.index + 1;
                }
                self.snapshot = meta.clone();
                self.snapshot_seq = seq;
            }
            Record::Commit { hard_state, .. } => self.hard_state = *hard_state,
        }
        Ok(())
    }
}

impl<D: Disk> Wal<D> {
    /// Opens (or creates) the WAL in `dir`, recovering its state. See the module docs for
    /// what recovery drops and what it refuses.
    pub fn open(disk: D, dir: impl Into<PathBuf>, config: WalConfig) -> Result<Self, WalOpenError> {
        assert!(config.segment_bytes > SEGMENT_HEADER_BYTES as u64);
        assert!(config.max_record_bytes as usize > format::COMMIT_PAYLOAD_BYTES);
        let dir = dir.into();
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| WalOpenError::Io { path, source }
        };
        disk.create_dir_all(&dir).map_err(io(&dir))?;
        let mut seqs = Vec::new();
        for name in disk.list_dir(&dir).map_err(io(&dir))? {
            if let Some(seq) = parse_segment_name(&name) {
                seqs.push(seq);
            } else if name.ends_with(".wal") {
                return Err(WalOpenError::Corrupt {
                    path: dir.join(&name),
                    offset: 0,
                    reason: "unexpected segment file name".into(),
                });
            }
        }
        seqs.sort_unstable();
        for w in seqs.windows(2) {
            if w[1] != w[0] + 1 {
                return Err(WalOpenError::Corrupt {
                    path: dir.join(segment_name(w[0] + 1)),
                    offset: 0,
                    reason: "segment missing".into(),
                });
            }
        }
        let mut replay = Replay {
            snapshot: SnapshotMetadata::default(),
            snapshot_seq: 0,
            hard_state: HardState::default(),
            run_start: 1,
            entries: VecDeque::new(),
        };
        let mut segments = BTreeMap::new();
        let mut report = RecoveryReport::default();
        for (i, &seq) in seqs.iter().enumerate() {
            let is_last = i + 1 == seqs.len();
            let path = dir.join(segment_name(seq));
            let file = disk.open(&path, false).map_err(io(&path))?;
            let len = file.byte_len().map_err(io(&path))?;
            let len_usize = usize::try_from(len).map_err(|_| WalOpenError::Corrupt {
                path: path.clone(),
                offset: 0,
                reason: "segment too large".into(),
            })?;
            let mut bytes = vec![0u8; len_usize];
            file.read_exact_at(&mut bytes, 0).map_err(io(&path))?;
            report.segments += 1;
            let data_end = match scan_segment(&bytes, seq, config.max_record_bytes, &mut replay) {
                Ok(end) if end < bytes.len() && !is_last => {
                    // Rolling cuts a segment back to its data, so only the last one may
                    // end in preallocated zeros.
                    return Err(WalOpenError::Corrupt {
                        path: path.clone(),
                        offset: end as u64,
                        reason: "zero-filled tail in a segment that is not the last".into(),
                    });
                }
                Ok(end) => end,
                Err(p) => {
                    let corrupt = |offset: usize, reason: &str| WalOpenError::Corrupt {
                        path: path.clone(),
                        offset: offset as u64,
                        reason: reason.into(),
                    };
                    if !is_last || p.always_corrupt || committed_after(&bytes, &p) {
                        return Err(corrupt(p.offset, p.reason));
                    }
                    report.torn_bytes = len - p.good_end as u64;
                    if p.good_end == 0 {
                        // Not even a header made it: the segment was never acknowledged.
                        drop(file);
                        disk.remove_file(&path).map_err(io(&path))?;
                        disk.sync_dir(&dir).map_err(io(&dir))?;
                        continue;
                    }
                    file.set_len(p.good_end as u64).map_err(io(&path))?;
                    file.sync_data().map_err(io(&path))?;
                    p.good_end
                }
            };
            let alloc = file.byte_len().map_err(io(&path))?;
            segments.insert(
                seq,
                Segment {
                    path,
                    file,
                    len: data_end as u64,
                    alloc,
                    live: 0,
                },
            );
        }
        let first_path = || {
            seqs.first()
                .map(|s| dir.join(segment_name(*s)))
                .unwrap_or_else(|| dir.clone())
        };
        if !replay.entries.is_empty() && replay.run_start != replay.snapshot.index + 1 {
            return Err(WalOpenError::Corrupt {
                path: first_path(),
                offset: SEGMENT_HEADER_BYTES as u64,
                reason: "log does not start right after a snapshot".into(),
            });
        }
        let last = replay.snapshot.index + replay.entries.len() as u64;
        if replay.hard_state.commit > last {
            return Err(WalOpenError::Corrupt {
                path: first_path(),
                offset: 0,
                reason: format!(
                    "commit index {} past the last entry {last}",
                    replay.hard_state.commit
                ),
            });
        }
        for e in &replay.entries {
            if let Some(s) = segments.get_mut(&e.seq) {
                s.live += 1;
            }
        }
        Ok(Self {
            disk,
            dir,
            config,
            segments,
            hard_state: replay.hard_state,
            snapshot: replay.snapshot,
            snapshot_seq: replay.snapshot_seq,
            entries: replay.entries,
            cache: VecDeque::new(),
            cache_bytes: 0,
            poisoned: false,
            report,
        })
    }

    /// What recovery found.
    pub fn recovery_report(&self) -> RecoveryReport {
        self.report
    }

    /// The persisted hard state.
    pub fn hard_state(&self) -> HardState {
        self.hard_state
    }

    /// The latest snapshot the log starts after.
    pub fn snapshot_metadata(&self) -> &SnapshotMetadata {
        &self.snapshot
    }

    /// Index of the first entry (`snapshot index + 1`).
    pub fn first_index(&self) -> u64 {
        self.snapshot.index + 1
    }

    /// Index of the last entry (`first_index() - 1` when empty).
    pub fn last_index(&self) -> u64 {
        self.snapshot.index + self.entries.len() as u64
    }

    /// Number of segment files.
    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }

    /// Term of the entry at `index`, for `first_index() - 1 <= index <= last_index()`.
    pub fn term(&self, index: u64) -> Option<u64> {
        if index == self.snapshot.index {
            return Some(self.snapshot.term);
        }
        let i = index.checked_sub(self.snapshot.index + 1)?;
        self.entries.get(usize::try_from(i).ok()?).map(|e| e.term)
    }

    /// The entry at `index`, from the cache or read back (and checked) from its segment.
    pub fn entry(&self, index: u64) -> Result<Option<Entry>, WalReadError> {
        let Some(i) = index.checked_sub(self.snapshot.index + 1) else {
            return Ok(None);
        };
        let Some(loc) = usize::try_from(i).ok().and_then(|i| self.entries.get(i)) else {
            return Ok(None);
        };
        let cache_start = self.last_index() + 1 - self.cache.len() as u64;
        if index >= cache_start {
            return Ok(Some(self.cache[(index - cache_start) as usize].clone()));
        }
        let seg = self.segments.get(&loc.seq);
        let Some(seg) = seg else {
            return Err(WalReadError::Corrupt {
                path: self.dir.join(segment_name(loc.seq)),
                offset: loc.frame_offset,
                reason: "segment of a live entry is gone",
            });
        };
        let mut buf = vec![0u8; FRAME_HEADER_BYTES + loc.payload_len as usize];
        seg.file
            .read_exact_at(&mut buf, loc.frame_offset)
            .map_err(|source| WalReadError::Io {
                path: seg.path.clone(),
                source,
            })?;
        let corrupt = |reason| WalReadError::Corrupt {
            path: seg.path.clone(),
            offset: loc.frame_offset,
            reason,
        };
        match format::read_frame(&buf, 0, u32::MAX).map_err(|e| corrupt(e.reason()))? {
            (
                Record::Entry {
                    term,
                    index: at,
                    kind,
                    data_at,
                    data_len,
                },
                _,
            ) if at == index && term == loc.term => Ok(Some(Entry {
                term,
                index,
                kind,
                data: buf[data_at..data_at + data_len].to_vec(),
            })),
            _ => Err(corrupt("record is not the expected entry")),
        }
    }

    /// Entries in `[lo, hi)` (clamped to the log), stopping once their total size passes
    /// `max_size_bytes` (but at least one).
    pub fn entries(
        &self,
        lo: u64,
        hi: u64,
        max_size_bytes: u64,
    ) -> Result<Vec<Entry>, WalReadError> {
        let lo = lo.max(self.first_index());
        let hi = hi.min(self.last_index() + 1);
        let mut out = Vec::new();
        let mut size = 0u64;
        for index in lo..hi {
            let Some(e) = self.entry(index)? else { break };
            size = size.saturating_add(e.size_bytes());
            if !out.is_empty() && size > max_size_bytes {
                break;
            }
            out.push(e);
        }
        Ok(out)
    }

    fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> WalWriteError {
        let path = path.to_path_buf();
        move |source| WalWriteError::Io { path, source }
    }

    /// Persists one Ready's snapshot, entries and hard state with one `fdatasync`.
    pub fn append(&mut self, batch: Batch<'_>) -> Result<(), WalWriteError> {
        if self.poisoned {
            return Err(WalWriteError::Poisoned);
        }
        // Validate against the log as it will be after the snapshot.
        let (mut base, mut last) = (self.snapshot.index, self.last_index());
        if let Some(s) = batch.snapshot {
            if s.index <= self.snapshot.index {
                return Err(WalWriteError::BadSnapshot {
                    index: s.index,
                    reason: "not newer than the current snapshot",
                });
            }
            base = s.index;
            last = s.index;
        }
        for w in batch.entries.windows(2) {
            if w[1].index != w[0].index + 1 {
                return Err(WalWriteError::NotConsecutive(w[1].index));
            }
        }
        let skip = batch.entries.iter().take_while(|e| e.index <= base).count();
        let entries = &batch.entries[skip..];
        if let Some(first) = entries.first() {
            if first.index > last + 1 {
                return Err(WalWriteError::Gap {
                    last,
                    first: first.index,
                });
            }
        }
        let max = u64::from(self.config.max_record_bytes);
        for e in entries {
            let bytes = (format::ENTRY_PREFIX_BYTES + e.data.len()) as u64;
            if bytes > max {
                return Err(WalWriteError::TooLarge { bytes, max });
            }
        }
        let hs = batch.hard_state.unwrap_or(self.hard_state);
        let new_last = entries.last().map_or(last, |e| e.index);
        if hs.commit > new_last {
            return Err(WalWriteError::CommitPastLog {
                commit: hs.commit,
                last: new_last,
            });
        }
        if batch.snapshot.is_none() && entries.is_empty() {
            if hs == self.hard_state {
                return Ok(());
            }
            if batch.lazy && hs.term == self.hard_state.term && hs.vote == self.hard_state.vote {
                self.hard_state = hs;
                return Ok(());
            }
        }
        let mut buf = Vec::new();
        let mut records = 0u32;
        if let Some(s) = batch.snapshot {
            format::put_snapshot(&mut buf, s, true);
            records += 1;
        }
        let mut frame_offsets = Vec::with_capacity(entries.len());
        for e in entries {
            frame_offsets.push(buf.len() as u64);
            format::put_entry(&mut buf, e.term, e.index, e.kind, &e.data);
            records += 1;
        }
        format::put_commit(&mut buf, &hs, records, 0);
        let (seq, base_offset) = self.write_batch(&buf)?;

        if let Some(s) = batch.snapshot {
            self.drop_entries_from(0);
            self.snapshot = s.clone();
            self.snapshot_seq = seq;
        }
        if let Some(first) = entries.first() {
            let keep = (first.index - self.snapshot.index - 1) as usize;
            self.drop_entries_from(keep);
        }
        for (e, off) in entries.iter().zip(frame_offsets) {
            self.entries.push_back(EntryLoc {
                term: e.term,
                seq,
                frame_offset: base_offset + off,
                payload_len: (format::ENTRY_PREFIX_BYTES + e.data.len()) as u32,
            });
            if let Some(seg) = self.segments.get_mut(&seq) {
                seg.live += 1;
            }
            self.cache_bytes += e.data.len() as u64;
            self.cache.push_back(e.clone());
        }
        while self.cache_bytes > self.config.cache_bytes {
            let Some(e) = self.cache.pop_front() else {
                break;
            };
            self.cache_bytes -= e.data.len() as u64;
        }
        self.hard_state = hs;
        if batch.snapshot.is_some() {
            self.remove_covered_segments()?;
        }
        debug_assert!(self.hard_state.commit <= self.last_index());
        Ok(())
    }

    // Drops in-memory entries from position `keep` on.
    fn drop_entries_from(&mut self, keep: usize) {
        while self.entries.len() > keep {
            let Some(loc) = self.entries.pop_back() else {
                break;
            };
            if let Some(seg) = self.segments.get_mut(&loc.seq) {
                seg.live -= 1;
            }
            // The cache holds the tail, so a popped entry is its last one if it has any.
            if let Some(e) = self.cache.pop_back() {
                self.cache_bytes -= e.data.len() as u64;
            }
        }
    }

    // Writes `buf` at the end of the current segment, or into a new one, and syncs.
    // Returns the segment and the offset `buf` starts at.
    fn write_batch(&mut self, buf: &[u8]) -> Result<(u64, u64), WalWriteError> {
        let result = self.try_write_batch(buf);
        if result.is_err() {
            self.poisoned = true;
        }
        result
    }

    fn try_write_batch(&mut self, buf: &[u8]) -> Result<(u64, u64), WalWriteError> {
        let header = SEGMENT_HEADER_BYTES as u64;
        let prealloc = self.config.preallocate_bytes;
        let current = self.segments.last_key_value().map(|(s, seg)| (*s, seg.len));
        let roll = match current {
            None => true,
            Some((_, len)) => len > header && len + buf.len() as u64 > self.config.segment_bytes,
        };
        if roll {
            if let Some(mut last) = self.segments.last_entry() {
                // Cut the old segment back to its data first: only the last segment may
                // end in zeros, which keeps a zeroed-out tail of an earlier one detectable.
                let seg = last.get_mut();
                if seg.alloc > seg.len {
                    seg.file.set_len(seg.len).map_err(Self::io_err(&seg.path))?;
                    seg.file.sync_data().map_err(Self::io_err(&seg.path))?;
                }
                seg.alloc = seg.len;
            }
            let seq = current.map_or(1, |(s, _)| s + 1);
            let path = self.dir.join(segment_name(seq));
            let data_end = header + buf.len() as u64;
            let mut bytes = Vec::with_capacity((data_end + prealloc) as usize);
            bytes.extend_from_slice(&format::segment_header(seq));
            bytes.extend_from_slice(buf);
            bytes.resize((data_end + prealloc) as usize, 0);
            let file = self.disk.open(&path, true).map_err(Self::io_err(&path))?;
            file.write_all_at(&bytes, 0).map_err(Self::io_err(&path))?;
            file.sync_data().map_err(Self::io_err(&path))?;
            self.disk
                .sync_dir(&self.dir)
                .map_err(Self::io_err(&self.dir))?;
            self.segments.insert(
                seq,
                Segment {
                    path,
                    file,
                    len: data_end,
                    alloc: bytes.len() as u64,
                    live: 0,
                },
            );
            return Ok((seq, header));
        }
        let (seq, len) = current.unwrap_or_default();
        let seg = self.segments.get_mut(&seq).ok_or(WalWriteError::Poisoned)?;
        let end = len + buf.len() as u64;
        let io = Self::io_err(&seg.path);
        // Keep at least half the preallocation ahead of the data, written in the same
        // sync as the batch.
        if prealloc > 0 && end + prealloc / 2 > seg.alloc {
            let target = end + prealloc;
            if seg.alloc <= end {
                let mut bytes = Vec::with_capacity((target - len) as usize);
                bytes.extend_from_slice(buf);
                bytes.resize((target - len) as usize, 0);
                seg.file.write_all_at(&bytes, len).map_err(io)?;
            } else {
                seg.file
                    .write_all_at(buf, len)
                    .map_err(Self::io_err(&seg.path))?;
                let zeros = vec![0u8; (target - seg.alloc) as usize];
                seg.file.write_all_at(&zeros, seg.alloc).map_err(io)?;
            }
            seg.alloc = target;
        } else {
            seg.file.write_all_at(buf, len).map_err(io)?;
        }
        seg.file.sync_data().map_err(Self::io_err(&seg.path))?;
        seg.len = end;
        seg.alloc = seg.alloc.max(end);
        Ok((seq, len))
    }

    /// Records that the state machine holds a snapshot at `meta` (which it has made
    /// durable), drops the entries it covers and deletes the segments no longer needed.
    ///
    /// The caller must have made the state machine durable up to `meta.index` first: the
    /// deleted entries cannot be replayed again.
    pub fn compact(&mut self, meta: SnapshotMetadata) -> Result<(), WalWriteError> {
        if self.poisoned {
            return Err(WalWriteError::Poisoned);
        }
        let bad = |reason| WalWriteError::BadSnapshot {
            index: meta.index,
            reason,
        };
        if meta.index <= self.snapshot.index {
            return Ok(());
        }
        if meta.index > self.last_index() {
            return Err(bad("past the last entry"));
        }
        if self.term(meta.index) != Some(meta.term) {
            return Err(bad("term disagrees with the log"));
        }
        if meta.index > self.hard_state.commit {
            return Err(bad("past the commit index"));
        }
        let mut buf = Vec::new();
        format::put_snapshot(&mut buf, &meta, false);
        format::put_commit(&mut buf, &self.hard_state, 1, 0);
        let (seq, _) = self.write_batch(&buf)?;
        let n = (meta.index - self.snapshot.index) as usize;
        let cache_start = self.entries.len() - self.cache.len();
        for loc in self.entries.drain(..n) {
            if let Some(seg) = self.segments.get_mut(&loc.seq) {
                seg.live -= 1;
            }
        }
        for _ in cache_start..n {
            if let Some(e) = self.cache.pop_front() {
                self.cache_bytes -= e.data.len() as u64;
            }
        }
        self.snapshot = meta;
        self.snapshot_seq = seq;
        self.remove_covered_segments()
    }

    // Removes the oldest segments that hold no live entry and precede the latest snapshot
    // record (so replay of the rest still starts from a snapshot).
    fn remove_covered_segments(&mut self) -> Result<(), WalWriteError> {
        let last = self.segments.last_key_value().map_or(0, |(s, _)| *s);
        let mut removed = false;
        while let Some((&seq, seg)) = self.segments.first_key_value() {
            if seq >= self.snapshot_seq || seq == last || seg.live > 0 {
                break;
            }
            let path = seg.path.clone();
            self.disk.remove_file(&path).map_err(Self::io_err(&path))?;
            self.segments.remove(&seq);
            removed = true;
        }
        if removed {
            self.disk
                .sync_dir(&self.dir)
                .map_err(Self::io_err(&self.dir))?;
        }
        Ok(())
    }
}

// Where and why a segment stopped making sense.
struct Problem {
    offset: usize,
    // End of the last intact batch (0: not even the header).
    good_end: usize,
    reason: &'static str,
    // The bytes are intact but wrong: cannot be a torn write.
    always_corrupt: bool,
}

// Whether data that was acknowledged lies after the problem in the last segment, which
// makes it corruption rather than a torn write. Only the final batch can be torn (each
// append waits for its fsync before the next), and its sectors may reach the disk in any
// order; so the evidence is a valid commit frame after the problem that closes a batch
// starting after the last intact one, or that is followed by more data.
fn committed_after(bytes: &[u8], p: &Problem) -> bool {
    (p.offset + 1..bytes.len()).any(|o| match format::commit_frame_batch_start(bytes, o) {
        None => false,
        Some(start) if start != p.good_end => true,
        Some(_) => {
            let end = o + FRAME_HEADER_BYTES + format::COMMIT_PAYLOAD_BYTES;
            bytes[end..].iter().any(|&b| b != 0)
        }
    })
}

// Replays a segment; returns where its data ends (zeros may follow).
fn scan_segment(
    bytes: &[u8],
    seq: u64,
    max_record: u32,
    replay: &mut Replay,
) -> Result<usize, Problem> {
    format::check_segment_header(bytes, seq).map_err(|reason| Problem {
        offset: 0,
        good_end: 0,
        reason,
        always_corrupt: false,
    })?;
    let mut pos = SEGMENT_HEADER_BYTES;
    let mut good_end = pos;
    let mut pending: Vec<(Record, usize)> = Vec::new();
    while pos < bytes.len() {
        let problem = |offset, reason, always_corrupt| Problem {
            offset,
            good_end,
            reason,
            always_corrupt,
        };
        match format::read_frame(bytes, pos, max_record) {
            Ok((Record::Commit { records, .. }, _)) if records as usize != pending.len() => {
                return Err(problem(pos, "commit record counts other records", true));
            }
            Ok((Record::Commit { batch_bytes, .. }, _))
                if batch_bytes != (pos - good_end) as u64 =>
            {
                return Err(problem(pos, "commit record measures another batch", true));
            }
            Ok((rec @ Record::Commit { .. }, next)) => {
                for (r, at) in pending.drain(..) {
                    replay
                        .apply(&r, seq, at as u64)
                        .map_err(|reason| problem(at, reason, true))?;
                }
                replay
                    .apply(&rec, seq, pos as u64)
                    .map_err(|reason| problem(pos, reason, true))?;
                pos = next;
                good_end = next;
            }
            Ok((rec, next)) => {
                pending.push((rec, pos));
                pos = next;
            }
            Err(_) if pending.is_empty() && bytes[pos..].iter().all(|&b| b == 0) => {
                // Preallocated space: the data ends here.
                return Ok(pos);
            }
            Err(e) => {
                let always = matches!(e, FrameError::Invalid(_));
                return Err(problem(pos, e.reason(), always));
            }
        }
    }
    if let Some((_, at)) = pending.first() {
        return Err(Problem {
            offset: *at,
            good_end,
            reason: "segment ends inside a batch",
            always_corrupt: false,
        });
    }
    Ok(bytes.len())
}
