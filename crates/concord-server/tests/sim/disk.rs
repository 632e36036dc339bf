//! The simulated disk of one node, optionally lying about fsync of the WAL: the negative
//! control for "a write acknowledged before it is durable" (a disk or a build that skips
//! the fsync the persistence order depends on).

use std::io;
use std::path::Path;

use concord_storage::disk::{Disk, DiskFile, SimDisk, SimFile};

#[derive(Clone, Debug)]
pub struct NodeDisk {
    pub sim: SimDisk,
    /// `sync_data` of WAL files does nothing (and says it succeeded).
    pub lie_about_wal_fsync: bool,
}

#[derive(Debug)]
pub struct NodeFile {
    file: SimFile,
    lies: bool,
}

impl Disk for NodeDisk {
    type File = NodeFile;

    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        self.sim.create_dir_all(dir)
    }

    fn list_dir(&self, dir: &Path) -> io::Result<Vec<String>> {
        self.sim.list_dir(dir)
    }

    fn open(&self, path: &Path, create: bool) -> io::Result<NodeFile> {
        let in_wal = path.components().any(|c| c.as_os_str() == "wal");
        Ok(NodeFile {
            file: self.sim.open(path, create)?,
            lies: self.lie_about_wal_fsync && in_wal,
        })
    }

    fn exists(&self, path: &Path) -> io::Result<bool> {
        self.sim.exists(path)
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        self.sim.remove_file(path)
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.sim.rename(from, to)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        self.sim.sync_dir(dir)
    }
}

impl DiskFile for NodeFile {
    fn byte_len(&self) -> io::Result<u64> {
        self.file.byte_len()
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }

    fn write_all_at(&self, data: &[u8], offset: u64) -> io::Result<()> {
        self.file.write_all_at(data, offset)
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.file.set_len(len)
    }

    fn sync_data(&self) -> io::Result<()> {
        if self.lies {
            return Ok(());
        }
        self.file.sync_data()
    }
}
