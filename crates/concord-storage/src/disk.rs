//! The file-system seam: [`Disk`] and [`DiskFile`], with [`RealDisk`] (the operating
//! system) and [`SimDisk`] (memory, with power cuts and torn writes) for crash tests.
//!
//! # Guarantees
//!
//! 1. Every byte the WAL, the state machine and the snapshot installer read or write goes
//!    through these traits, so a test can run the same code on [`SimDisk`].
//! 2. [`SimDisk`] models what a power cut may keep: file contents are durable only up to the
//!    last [`DiskFile::sync_data`], and directory entries (create, remove, rename) only up to
//!    the last [`Disk::sync_dir`] of their directory. [`SimDisk::power_cut`] keeps exactly the
//!    durable state, optionally plus a torn prefix (or zeros) of what was written after it.
//! 3. After a power cut every handle opened before it fails, as a dead process's would.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use rand::{Rng, RngCore};

/// A directory tree of files.
pub trait Disk: Clone + Debug + Send + Sync + 'static {
    /// An open file.
    type File: DiskFile;
    /// Creates `dir` and its parents.
    fn create_dir_all(&self, dir: &Path) -> io::Result<()>;
    /// Names of the files directly in `dir`, sorted.
    fn list_dir(&self, dir: &Path) -> io::Result<Vec<String>>;
    /// Opens `path` for reading and writing, creating it (empty) when `create` is set.
    fn open(&self, path: &Path, create: bool) -> io::Result<Self::File>;
    /// Whether `path` exists.
    fn exists(&self, path: &Path) -> io::Result<bool>;
    /// Removes the file at `path`.
    fn remove_file(&self, path: &Path) -> io::Result<()>;
    /// Renames `from` to `to`, replacing `to`.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Makes the directory entries of `dir` durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
}

/// An open file, addressed by offset; every method takes `&self` so readers can share it.
pub trait DiskFile: Debug + Send + Sync + 'static {
    /// Current length in bytes.
    fn byte_len(&self) -> io::Result<u64>;
    /// Fills `buf` from `offset`; an error if the file is shorter.
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    /// Writes all of `data` at `offset`, extending the file with zeros if needed.
    fn write_all_at(&self, data: &[u8], offset: u64) -> io::Result<()>;
    /// Truncates or extends (with zeros) to `len`.
    fn set_len(&self, len: u64) -> io::Result<()>;
    /// Makes the contents durable (`fdatasync`).
    fn sync_data(&self) -> io::Result<()>;
}

/// The operating system's file system.
#[derive(Clone, Copy, Debug, Default)]
pub struct RealDisk;

/// A file of [`RealDisk`].
#[derive(Debug)]
pub struct RealFile(std::fs::File);

impl Disk for RealDisk {
    type File = RealFile;

    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        std::fs::create_dir_all(dir)
    }

    fn list_dir(&self, dir: &Path) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for e in std::fs::read_dir(dir)? {
            let e = e?;
            if e.file_type()?.is_file() {
                names.push(e.file_name().to_string_lossy().into_owned());
            }
        }
        names.sort();
        Ok(names)
    }

    fn open(&self, path: &Path, create: bool) -> io::Result<RealFile> {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(create)
            .truncate(false)
            .open(path)
            .map(RealFile)
    }

    fn exists(&self, path: &Path) -> io::Result<bool> {
        path.try_exists()
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        std::fs::File::open(dir)?.sync_all()
    }
}

impl DiskFile for RealFile {
    fn byte_len(&self) -> io::Result<u64> {
        Ok(self.0.metadata()?.len())
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        FileExt::read_exact_at(&self.0, buf, offset)
    }

    fn write_all_at(&self, data: &[u8], offset: u64) -> io::Result<()> {
        FileExt::write_all_at(&self.0, data, offset)
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.0.set_len(len)
    }

    fn sync_data(&self) -> io::Result<()> {
        self.0.sync_data()
    }
}

#[derive(Clone, Debug, Default)]
struct Inode {
    data: Vec<u8>,
    synced: Vec<u8>,
}

#[derive(Clone, Debug, Default)]
struct SimState {
    inodes: BTreeMap<u64, Inode>,
    next_inode: u64,
    // Invariant: every inode named in `names` or `durable_names` is in `inodes`.
    names: BTreeMap<PathBuf, u64>,
    durable_names: BTreeMap<PathBuf, u64>,
    dirs: BTreeSet<PathBuf>,
    epoch: u64,
    syncs: u64,
    // Syncs numbered from this one on fail without syncing (a crash in the middle).
    fail_syncs_from: Option<u64>,
}

/// What a power cut keeps of the bytes written after a file's last sync.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tear {
    /// Nothing: each file is exactly as of its last sync.
    None,
    /// A random prefix of the unsynced bytes appended at the end of each file.
    Prefix,
    /// A random prefix, with the file extended by zeros past it (blocks allocated, data lost).
    PrefixThenZeros,
    /// Each 512-byte sector written since the sync independently holds the old or the new
    /// bytes (zeros past the old end), and the length is the old or the new one: writes,
    /// in place or appended, reaching the disk out of order.
    Sectors,
}

/// An in-memory [`Disk`] that can lose power. Clones share the same files.
#[derive(Clone, Debug, Default)]
pub struct SimDisk {
    state: Arc<Mutex<SimState>>,
}

/// A file of [`SimDisk`].
#[derive(Debug)]
pub struct SimFile {
    state: Arc<Mutex<SimState>>,
    inode: u64,
    epoch: u64,
}

fn not_found(path: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        format!("no such file: {}", path.display()),
    )
}

impl SimDisk {
    /// An empty disk.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, SimState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Number of `sync_data` and `sync_dir` calls so far (to cut power "after the n-th sync").
    pub fn sync_count(&self) -> u64 {
        self.lock().syncs
    }

    /// An independent copy of the current (not only durable) state, with no open handles.
    pub fn fork(&self) -> SimDisk {
        let mut s = self.lock().clone();
        s.epoch += 1;
        SimDisk {
            state: Arc::new(Mutex::new(s)),
        }
    }

    /// Makes the `n`-th sync from now and every later one fail without syncing, or lifts
    /// the fault with `None`; the power cut that usually follows also lifts it.
    pub fn fail_syncs_after(&self, n: Option<u64>) {
        let mut s = self.lock();
        s.fail_syncs_from = n.map(|n| s.syncs + n);
    }

    fn count_sync(s: &mut SimState) -> io::Result<()> {
        s.syncs += 1;
        if s.fail_syncs_from.is_some_and(|n| s.syncs >= n) {
            return Err(io::Error::other("injected sync failure"));
        }
        Ok(())
    }

    /// Cuts the power: keeps the durable state (plus, per `tear`, part of the rest) and
    /// invalidates every open handle.
    pub fn power_cut(&self, tear: Tear, rng: &mut impl RngCore) {
        let mut s = self.lock();
        s.epoch += 1;
        s.fail_syncs_from = None;
        s.names = s.durable_names.clone();
        let live: BTreeSet<u64> = s.names.values().copied().collect();
        s.inodes.retain(|id, _| live.contains(id));
        for inode in s.inodes.values_mut() {
            let mut kept = inode.synced.clone();
            let extends = inode.data.len() > kept.len() && inode.data.starts_with(&kept);
            if tear == Tear::Sectors && inode.data != inode.synced {
                // Each 512-byte sector that changed since the sync holds the old or the
                // new bytes; the length is the old or the new one.
                let len = if rng.gen_bool(0.5) {
                    inode.data.len()
                } else {
                    inode.synced.len()
                };
                let mut out = vec![0u8; len];
                let mut at = 0;
                while at < len {
                    let end = (at + 512).min(len);
                    let src = if rng.gen_bool(0.5) {
                        &inode.data
                    } else {
                        &inode.synced
                    };
                    for (i, b) in out[at..end].iter_mut().enumerate() {
                        *b = src.get(at + i).copied().unwrap_or(0);
                    }
                    at = end;
                }
                kept = out;
            } else if tear != Tear::None && extends {
                let extra = &inode.data[kept.len()..];
                let n = rng.gen_range(0..=extra.len());
                kept.extend_from_slice(&extra[..n]);
                if tear == Tear::PrefixThenZeros {
                    let zeros = rng.gen_range(0..=extra.len() - n);
                    kept.resize(kept.len() + zeros, 0);
                }
            }
            inode.data = kept.clone();
            inode.synced = kept;
        }
    }

    /// Flips one bit of the file at `path` (for corruption tests), durably.
    pub fn flip_bit(&self, path: &Path, offset: u64, bit: u8) -> io::Result<()> {
        let mut s = self.lock();
        let id = *s.names.get(path).ok_or_else(|| not_found(path))?;
        let inode = s.inodes.get_mut(&id).ok_or_else(|| not_found(path))?;
        let i = usize::try_from(offset).map_err(|_| io::ErrorKind::InvalidInput)?;
        let byte = inode.data.get_mut(i).ok_or(io::ErrorKind::UnexpectedEof)?;
        *byte ^= 1 << (bit % 8);
        if let Some(b) = inode.synced.get_mut(i) {
            *b ^= 1 << (bit % 8);
        }
        Ok(())
    }

    /// Durably cuts the file at `path` to `len` bytes (for truncation tests).
    pub fn truncate(&self, path: &Path, len: u64) -> io::Result<()> {
        let mut s = self.lock();
        let id = *s.names.get(path).ok_or_else(|| not_found(path))?;
        let inode = s.inodes.get_mut(&id).ok_or_else(|| not_found(path))?;
        let len = usize::try_from(len).map_err(|_| io::ErrorKind::InvalidInput)?;
        inode.data.truncate(len);
        inode.synced.truncate(len);
        Ok(())
    }

    /// A copy of the current contents of `path`.
    pub fn read_all(&self, path: &Path) -> io::Result<Vec<u8>> {
        let s = self.lock();
        let id = s.names.get(path).ok_or_else(|| not_found(path))?;
        Ok(s.inodes.get(id).map(|i| i.data.clone()).unwrap_or_default())
    }
}

impl Disk for SimDisk {
    type File = SimFile;

    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        // Directories themselves are durable at once: only file entries are modelled.
        let mut s = self.lock();
        for a in dir.ancestors() {
            s.dirs.insert(a.to_path_buf());
        }
        Ok(())
    }

    fn list_dir(&self, dir: &Path) -> io::Result<Vec<String>> {
        let s = self.lock();
        if !s.dirs.contains(dir) {
            return Err(not_found(dir));
        }
        Ok(s.names
            .keys()
            .filter(|p| p.parent() == Some(dir))
            .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .collect())
    }

    fn open(&self, path: &Path, create: bool) -> io::Result<SimFile> {
        let mut s = self.lock();
        let id = match s.names.get(path) {
            Some(id) => *id,
            None if create => {
                let parent = path.parent().map(Path::to_path_buf).unwrap_or_default();
                if !s.dirs.contains(&parent) {
                    return Err(not_found(&parent));
                }
                let id = s.next_inode;
                s.next_inode += 1;
                s.inodes.insert(id, Inode::default());
                s.names.insert(path.to_path_buf(), id);
                id
            }
            None => return Err(not_found(path)),
        };
        Ok(SimFile {
            state: self.state.clone(),
            inode: id,
            epoch: s.epoch,
        })
    }

    fn exists(&self, path: &Path) -> io::Result<bool> {
        let s = self.lock();
        Ok(s.names.contains_key(path) || s.dirs.contains(path))
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        let mut s = self.lock();
        s.names.remove(path).ok_or_else(|| not_found(path))?;
        gc(&mut s);
        Ok(())
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut s = self.lock();
        let id = s.names.remove(from).ok_or_else(|| not_found(from))?;
        s.names.insert(to.to_path_buf(), id);
        gc(&mut s);
        Ok(())
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let mut s = self.lock();
        SimDisk::count_sync(&mut s)?;
        s.durable_names.retain(|p, _| p.parent() != Some(dir));
        let current: Vec<(PathBuf, u64)> = s
            .names
            .iter()
            .filter(|(p, _)| p.parent() == Some(dir))
            .map(|(p, id)| (p.clone(), *id))
            .collect();
        s.durable_names.extend(current);
        gc(&mut s);
        Ok(())
    }
}

// Drops inodes no longer named (open handles to them then fail, which the code under test
// never relies on).
fn gc(s: &mut SimState) {
    let live: BTreeSet<u64> = s
        .names
        .values()
        .chain(s.durable_names.values())
        .copied()
        .collect();
    s.inodes.retain(|id, _| live.contains(id));
}

impl SimFile {
    fn with<T>(&self, f: impl FnOnce(&mut Inode) -> io::Result<T>) -> io::Result<T> {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if s.epoch != self.epoch {
            return Err(io::Error::other("handle from before a power cut"));
        }
        let inode = s
            .inodes
            .get_mut(&self.inode)
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "file was removed"))?;
        f(inode)
    }
}

impl DiskFile for SimFile {
    fn byte_len(&self) -> io::Result<u64> {
        self.with(|i| Ok(i.data.len() as u64))
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.with(|i| {
            let start = usize::try_from(offset).map_err(|_| io::ErrorKind::UnexpectedEof)?;
            let end = start
                .checked_add(buf.len())
                .ok_or(io::ErrorKind::UnexpectedEof)?;
            let src = i.data.get(start..end).ok_or(io::ErrorKind::UnexpectedEof)?;
            buf.copy_from_slice(src);
            Ok(())
        })
    }

    fn write_all_at(&self, data: &[u8], offset: u64) -> io::Result<()> {
        self.with(|i| {
            let start = usize::try_from(offset).map_err(|_| io::ErrorKind::InvalidInput)?;
            let end = start + data.len();
            if i.data.len() < end {
                i.data.resize(end, 0);
            }
            i.data[start..end].copy_from_slice(data);
            Ok(())
        })
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.with(|i| {
            let len = usize::try_from(len).map_err(|_| io::ErrorKind::InvalidInput)?;
            i.data.resize(len, 0);
            Ok(())
        })
    }

    fn sync_data(&self) -> io::Result<()> {
        {
            let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
            SimDisk::count_sync(&mut s)?;
        }
        self.with(|i| {
            i.synced = i.data.clone();
            Ok(())
        })
    }
}

/// Adapts a [`DiskFile`] to redb's storage backend, so the state machine runs on any
/// [`Disk`] (and on [`SimDisk`] in tests).
#[derive(Debug)]
pub struct RedbBackend<F: DiskFile>(pub F);

impl<F: DiskFile> redb::StorageBackend for RedbBackend<F> {
    fn len(&self) -> io::Result<u64> {
        self.0.byte_len()
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> io::Result<()> {
        self.0.read_exact_at(out, offset)
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.0.set_len(len)
    }

    fn sync_data(&self) -> io::Result<()> {
        self.0.sync_data()
    }

    fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.0.write_all_at(data, offset)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::SmallRng;
    use rand::SeedableRng;

    #[test]
    fn power_cut_keeps_only_synced_data_and_entries() {
        let d = SimDisk::new();
        let dir = Path::new("/w");
        d.create_dir_all(dir).unwrap();
        let f = d.open(&dir.join("a"), true).unwrap();
        f.write_all_at(b"hello", 0).unwrap();
        f.sync_data().unwrap();
        d.sync_dir(dir).unwrap();
        f.write_all_at(b" world", 5).unwrap();
        let g = d.open(&dir.join("b"), true).unwrap();
        g.write_all_at(b"x", 0).unwrap();
        g.sync_data().unwrap();
        d.power_cut(Tear::None, &mut SmallRng::seed_from_u64(1));
        assert!(f.byte_len().is_err());
        assert_eq!(d.read_all(&dir.join("a")).unwrap(), b"hello");
        assert!(!d.exists(&dir.join("b")).unwrap());
        assert_eq!(d.list_dir(dir).unwrap(), vec!["a".to_string()]);
    }

    #[test]
    fn torn_tail_is_a_prefix_of_what_was_written() {
        for seed in 0..50 {
            let d = SimDisk::new();
            let dir = Path::new("/w");
            d.create_dir_all(dir).unwrap();
            let f = d.open(&dir.join("a"), true).unwrap();
            d.sync_dir(dir).unwrap();
            f.write_all_at(b"abc", 0).unwrap();
            f.sync_data().unwrap();
            f.write_all_at(b"defgh", 3).unwrap();
            d.power_cut(Tear::Prefix, &mut SmallRng::seed_from_u64(seed));
            let got = d.read_all(&dir.join("a")).unwrap();
            assert!(got.len() >= 3);
            assert!(b"abcdefgh".starts_with(&got));
        }
    }
}
