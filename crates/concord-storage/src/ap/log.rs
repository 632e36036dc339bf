//! The AP store's change logs (`ap.log` and `ap.log.1` beside `ap.redb`): what makes a
//! group commit durable. Each batch's row changes are appended as one record and made
//! durable with one `fdatasync` of a preallocated file, instead of a durable redb commit
//! (which copies, checksums, writes and syncs every B-tree page the batch touched). The
//! batches gather in the store's overlay until a checkpoint commits them durably; the
//! writer then goes on with the other log, and the checkpointed one starts over once its
//! commit is done (see the store's `write_loop`).
//!
//! # Format
//!
//! A header — magic `CCAPLOG1`, the store's identity (u64: the `replica_id` of the
//! `ap.redb` it belongs to), the epoch (u64), a CRC32C of the three (u32) — then records:
//! payload length (u32), CRC32C of the identity, the epoch and the payload (u32), the
//! payload. A payload is a run of row changes: the table (u8), the row's length (u32) and
//! bytes, then 1 and the value's length (u32) and bytes for an insert, or 0 for a removal.
//! All integers little-endian.
//!
//! # Invariants
//!
//! 1. **Replay stops at the first record that does not check.** A torn last record, the
//!    preallocated zeros and the records of an earlier epoch all fail their CRC (which
//!    covers the epoch), so replay reads exactly the records appended since the last
//!    start-over.
//! 2. **A log replays only into its own store.** A log left beside a new `ap.redb` (the
//!    old file lost or deleted) names another identity: nothing of it is replayed, and
//!    its records cannot check under the new one.
//! 3. **The log starts over only after a durable redb commit** that holds everything it
//!    recorded ([`ApLog::restart`] is called by the checkpoint after that commit): a crash
//!    at any point leaves redb's last durable state plus a log whose replay brings it to
//!    the last acknowledged batch. Rows are replayed as final values, in order, so
//!    replaying a record twice is harmless.
//! 4. **Appends overwrite blocks that exist**, so `fdatasync` carries no file-size
//!    metadata: the file is extended with written zeros ahead of the data, in the same
//!    sync as the record that needs the room.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;

const MAGIC: &[u8; 8] = b"CCAPLOG1";
const HEADER: u64 = 28;
/// Bytes of written zeros kept ahead of the data.
const PREALLOCATE: u64 = 4 << 20;

/// The tables a change applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Which {
    Keys = 0,
    Hints = 1,
    Paxos = 2,
    Meta = 3,
}

impl Which {
    fn from_byte(b: u8) -> Option<Which> {
        match b {
            0 => Some(Which::Keys),
            1 => Some(Which::Hints),
            2 => Some(Which::Paxos),
            3 => Some(Which::Meta),
            _ => None,
        }
    }
}

/// One row change read back from the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Change {
    pub(super) table: Which,
    pub(super) row: Vec<u8>,
    /// `None`: the row was removed.
    pub(super) value: Option<Vec<u8>>,
}

/// A batch's changes, encoded as the payload of one record.
#[derive(Debug, Default)]
pub(super) struct Changes(Vec<u8>);

impl Changes {
    pub(super) fn put(&mut self, table: Which, row: &[u8], value: &[u8]) {
        self.row(table, row);
        self.0.push(1);
        self.bytes(value);
    }

    pub(super) fn remove(&mut self, table: Which, row: &[u8]) {
        self.row(table, row);
        self.0.push(0);
    }

    fn row(&mut self, table: Which, row: &[u8]) {
        self.0.push(table as u8);
        self.bytes(row);
    }

    fn bytes(&mut self, b: &[u8]) {
        // Rows and values are bounded far below 4 GiB by the protocol limits.
        self.0.extend_from_slice(&(b.len() as u32).to_le_bytes());
        self.0.extend_from_slice(b);
    }
}

/// Splits a payload back into its changes (`None`: it does not parse, which a checked
/// CRC rules out unless the writer was wrong).
fn parse(mut p: &[u8]) -> Option<Vec<Change>> {
    fn take<'a>(p: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
        let (head, rest) = p.split_at_checked(n)?;
        *p = rest;
        Some(head)
    }
    fn bytes(p: &mut &[u8]) -> Option<Vec<u8>> {
        let n = u32::from_le_bytes(take(p, 4)?.try_into().ok()?) as usize;
        Some(take(p, n)?.to_vec())
    }
    let mut out = Vec::new();
    while !p.is_empty() {
        let table = Which::from_byte(take(&mut p, 1)?[0])?;
        let row = bytes(&mut p)?;
        let value = match take(&mut p, 1)?[0] {
            0 => None,
            1 => Some(bytes(&mut p)?),
            _ => return None,
        };
        out.push(Change { table, row, value });
    }
    Some(out)
}

fn header(store: u64, epoch: u64) -> [u8; HEADER as usize] {
    let mut h = [0u8; HEADER as usize];
    h[..8].copy_from_slice(MAGIC);
    h[8..16].copy_from_slice(&store.to_le_bytes());
    h[16..24].copy_from_slice(&epoch.to_le_bytes());
    let crc = crc32c::crc32c(&h[..24]);
    h[24..].copy_from_slice(&crc.to_le_bytes());
    h
}

fn record_crc(store: u64, epoch: u64, payload: &[u8]) -> u32 {
    let mut stamp = [0u8; 16];
    stamp[..8].copy_from_slice(&store.to_le_bytes());
    stamp[8..].copy_from_slice(&epoch.to_le_bytes());
    crc32c::crc32c_append(crc32c::crc32c(&stamp), payload)
}

/// The open log.
#[derive(Debug)]
pub(super) struct ApLog {
    file: File,
    /// The identity of the store the log belongs to.
    store: u64,
    epoch: u64,
    /// Where the next record goes.
    end: u64,
    /// How far the file holds written bytes.
    allocated: u64,
    /// Since a failed append, sync or start-over: the tail is unknown, so appends are
    /// refused until a start-over succeeds.
    failed: bool,
}

/// What opening found.
#[derive(Debug, Default)]
pub(super) struct Recovered {
    /// The changes of every record that checked, in order.
    pub(super) changes: Vec<Change>,
    /// Why replay stopped before the end of the written data, when a record failed in a
    /// way a torn write does not explain (logged by the caller).
    pub(super) damage: Option<String>,
}

impl ApLog {
    /// Opens the log of store `store` at `path` (creating it when absent) and reads back
    /// what it holds for that store.
    /// The log must be [`ApLog::restart`]ed once the changes are durable elsewhere.
    pub(super) fn open(path: &Path, store: u64) -> std::io::Result<(ApLog, Recovered)> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        let len = file.metadata()?.len();
        if len == 0 {
            // A new file: its directory entry must be durable before any record is
            // acknowledged from it.
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                File::open(dir)?.sync_all()?;
            }
        }
        let mut data = vec![0u8; usize::try_from(len).unwrap_or(usize::MAX)];
        file.read_exact_at(&mut data, 0)?;
        let mut recovered = Recovered::default();
        let word =
            |h: &[u8], at: usize| u64::from_le_bytes(h[at..at + 8].try_into().unwrap_or_default());
        let mut ours = true;
        let epoch = match data.get(..HEADER as usize) {
            Some(h)
                if &h[..8] == MAGIC
                    && crc32c::crc32c(&h[..24])
                        == u32::from_le_bytes([h[24], h[25], h[26], h[27]]) =>
            {
                // Another store's log: nothing of it is ours to replay.
                ours = word(h, 8) == store;
                word(h, 16)
            }
            // A new file, or one whose header never reached the disk whole (a start-over
            // interrupted: what it held was durable in redb already).
            None if len == 0 => 0,
            _ => {
                recovered.damage = Some("the log's header is damaged; nothing replayed".into());
                // The next epoch must not be one the records left in the file were
                // written under: start far above any counted one.
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(u64::MAX / 2, |d| d.as_nanos() as u64)
            }
        };
        let mut at = HEADER as usize;
        if ours && epoch > 0 && recovered.damage.is_none() {
            while let Some(head) = data.get(at..at + 8) {
                let n = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
                let crc = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
                let Some(payload) = data.get(at + 8..at + 8 + n).filter(|_| n > 0) else {
                    break;
                };
                if record_crc(store, epoch, payload) != crc {
                    break;
                }
                match parse(payload) {
                    Some(changes) => recovered.changes.extend(changes),
                    None => {
                        recovered.damage = Some(format!(
                            "record at offset {at} does not parse; replay stops there"
                        ));
                        break;
                    }
                }
                at += 8 + n;
            }
        }
        let log = ApLog {
            file,
            store,
            epoch,
            end: at as u64,
            allocated: len,
            // Nothing may be appended before the start-over that follows replay.
            failed: true,
        };
        Ok((log, recovered))
    }

    /// Appends one record holding `changes`; with `sync`, returns once it is durable.
    /// After an error the log's tail is unknown: appends are refused until a successful
    /// [`ApLog::restart`].
    pub(super) fn append(&mut self, changes: &Changes, sync: bool) -> std::io::Result<()> {
        if self.failed {
            return Err(std::io::Error::other(
                "the log failed earlier and has not started over since",
            ));
        }
        let appended = self.write_record(&changes.0, sync);
        self.failed = appended.is_err();
        appended
    }

    fn write_record(&mut self, payload: &[u8], sync: bool) -> std::io::Result<()> {
        if payload.is_empty() {
            return if sync { self.file.sync_data() } else { Ok(()) };
        }
        let n = u32::try_from(payload.len()).map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "batch too large for one log record",
            )
        })?;
        let mut rec = Vec::with_capacity(payload.len() + 8);
        rec.extend_from_slice(&n.to_le_bytes());
        rec.extend_from_slice(&record_crc(self.store, self.epoch, payload).to_le_bytes());
        rec.extend_from_slice(payload);
        let end = self.end + rec.len() as u64;
        if end > self.allocated {
            // Written zeros ahead of the data, synced with this record.
            let target = end + PREALLOCATE;
            rec.resize((target - self.end) as usize, 0);
            self.allocated = target;
        }
        self.file.write_all_at(&rec, self.end)?;
        self.end = end;
        if sync {
            self.file.sync_data()?;
        }
        Ok(())
    }

    /// Makes every appended record durable.
    pub(super) fn sync(&mut self) -> std::io::Result<()> {
        let synced = self.file.sync_data();
        self.failed |= synced.is_err();
        synced
    }

    /// The epoch its records are written under.
    pub(super) fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Whether appends are refused until a start-over (an append, sync or start-over
    /// failed, or the log was opened and not started over since).
    pub(super) fn failed(&self) -> bool {
        self.failed
    }

    /// Starts the log over under a new epoch above its own and above `above` (what it held
    /// must be durable elsewhere): the records already in the file no longer check.
    pub(super) fn restart(&mut self, above: u64) -> std::io::Result<()> {
        let epoch = self.epoch.max(above) + 1;
        let mut h = header(self.store, epoch).to_vec();
        if self.allocated < HEADER + PREALLOCATE {
            h.resize((HEADER + PREALLOCATE) as usize, 0);
        }
        // Whatever happens below, records appended from now on use the new epoch, so
        // none of the old epoch's can be mistaken for them.
        self.epoch = epoch;
        self.failed = true;
        self.file.write_all_at(&h, 0)?;
        self.allocated = self.allocated.max(h.len() as u64);
        self.file.sync_data()?;
        self.end = HEADER;
        self.failed = false;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn changes(n: u8) -> Changes {
        let mut c = Changes::default();
        c.put(Which::Keys, &[n], &[n; 3]);
        c.remove(Which::Hints, &[n, n]);
        c
    }

    fn expected(n: u8) -> Vec<Change> {
        vec![
            Change {
                table: Which::Keys,
                row: vec![n],
                value: Some(vec![n; 3]),
            },
            Change {
                table: Which::Hints,
                row: vec![n, n],
                value: None,
            },
        ]
    }

    #[test]
    fn records_come_back_in_order_until_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ap.log");
        let (mut log, rec) = ApLog::open(&path, 7).unwrap();
        assert!(rec.changes.is_empty() && rec.damage.is_none());
        log.restart(0).unwrap();
        for n in 1..=3 {
            log.append(&changes(n), n == 3).unwrap();
        }
        drop(log);
        let (mut log, rec) = ApLog::open(&path, 7).unwrap();
        let want: Vec<Change> = (1..=3).flat_map(expected).collect();
        assert_eq!(rec.changes, want);
        assert!(rec.damage.is_none());
        // After a restart the old records (still in the file) no longer check.
        log.restart(0).unwrap();
        log.append(&changes(9), true).unwrap();
        drop(log);
        let (_, rec) = ApLog::open(&path, 7).unwrap();
        assert_eq!(rec.changes, expected(9));
    }

    #[test]
    fn a_torn_or_damaged_record_ends_the_replay() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ap.log");
        let (mut log, _) = ApLog::open(&path, 7).unwrap();
        log.restart(0).unwrap();
        log.append(&changes(1), true).unwrap();
        let second = log.end;
        log.append(&changes(2), true).unwrap();
        drop(log);
        // Flip one byte of the second record's payload: only the first comes back.
        let f = OpenOptions::new().write(true).open(&path).unwrap();
        f.write_all_at(&[0xFF], second + 9).unwrap();
        drop(f);
        let (log, rec) = ApLog::open(&path, 7).unwrap();
        assert_eq!(rec.changes, expected(1));
        assert_eq!(
            log.end, second,
            "the next record overwrites the damaged one"
        );
        // A damaged header: nothing is replayed, and it is said.
        let f = OpenOptions::new().write(true).open(&path).unwrap();
        f.write_all_at(&[0xFF], 9).unwrap();
        drop(f);
        let (_, rec) = ApLog::open(&path, 7).unwrap();
        assert!(rec.changes.is_empty());
        assert!(rec.damage.unwrap().contains("header"));
    }

    #[test]
    fn the_file_grows_by_written_zeros_and_keeps_its_size_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ap.log");
        let (mut log, _) = ApLog::open(&path, 7).unwrap();
        log.restart(0).unwrap();
        let size = || std::fs::metadata(&path).unwrap().len();
        assert_eq!(size(), HEADER + PREALLOCATE);
        let mut big = Changes::default();
        big.put(
            Which::Paxos,
            b"row",
            &vec![7u8; (PREALLOCATE + 10) as usize],
        );
        log.append(&big, true).unwrap();
        let grown = size();
        assert!(grown >= log.end + PREALLOCATE);
        log.restart(0).unwrap();
        assert_eq!(size(), grown);
        assert_eq!(log.end, HEADER);
        drop(log);
        let (_, rec) = ApLog::open(&path, 7).unwrap();
        assert!(rec.changes.is_empty());
    }

    #[test]
    fn a_log_replays_only_into_its_own_store() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ap.log");
        let (mut log, _) = ApLog::open(&path, 7).unwrap();
        log.restart(0).unwrap();
        log.append(&changes(1), true).unwrap();
        drop(log);
        // The store's file was replaced (identity 8): the log is not its own.
        let (mut log, rec) = ApLog::open(&path, 8).unwrap();
        assert!(rec.changes.is_empty() && rec.damage.is_none());
        log.restart(0).unwrap();
        log.append(&changes(2), true).unwrap();
        drop(log);
        let (_, rec) = ApLog::open(&path, 8).unwrap();
        assert_eq!(rec.changes, expected(2));
        let (_, rec) = ApLog::open(&path, 7).unwrap();
        assert!(rec.changes.is_empty());
    }
}
