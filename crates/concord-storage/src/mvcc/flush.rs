//! Background write-back of the store file.
//!
//! Applies commit without `fsync`, and every [`super::MvccConfig::durable_every_commits`]
//! commits one durable commit flushes everything written since the previous one — on the
//! caller's thread, which is the Raft driver's. Under load that is megabytes, and every
//! request waits for it. A [`Flusher`] thread calls `fdatasync` on its own handle of the
//! file when the store pokes it, three quarters of the way to the next durable commit, so
//! that commit finds only the last quarter left to write. (Flushing after every commit
//! instead shortened the stalls as much but cost ~10% of put throughput: the extra flushes
//! compete with the WAL's for the disk.)
//!
//! It changes nothing about what is durable when: the OS may write dirty pages back at any
//! moment anyway, and redb's own durable commits still `fsync` themselves. A failed
//! background flush is not lost either: Linux reports a write-back error to every open
//! descriptor of the file, so redb's next `fsync` fails too.

use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::thread::JoinHandle;

use crate::disk::DiskFile;

/// A thread flushing one file when poked.
pub(crate) struct Flusher {
    tx: Option<SyncSender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Flusher {
    /// Starts the thread with its own handle of the file.
    pub(crate) fn start<F: DiskFile>(file: F) -> std::io::Result<Self> {
        // One pending poke is enough: pokes while a flush is pending coalesce.
        let (tx, rx) = sync_channel(1);
        let thread = std::thread::Builder::new()
            .name("concord-flush".into())
            .spawn(move || run(file, rx))?;
        Ok(Flusher {
            tx: Some(tx),
            thread: Some(thread),
        })
    }

    /// Asks for a flush soon; never blocks.
    pub(crate) fn poke(&self) {
        if let Some(tx) = &self.tx {
            let _ = tx.try_send(());
        }
    }
}

fn run<F: DiskFile>(file: F, rx: Receiver<()>) {
    while rx.recv().is_ok() {
        // A hint only; see the module docs for why an error needs no handling here.
        let _ = file.sync_data();
    }
}

impl Drop for Flusher {
    fn drop(&mut self) {
        // Closing the channel ends the thread after its current flush.
        self.tx = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::disk::{Disk, SimDisk};
    use std::path::Path;
    use std::time::{Duration, Instant};

    #[test]
    fn a_poke_flushes_and_drop_stops_the_thread() {
        let disk = SimDisk::new();
        disk.create_dir_all(Path::new("/d")).unwrap();
        let file = disk.open(Path::new("/d/f"), true).unwrap();
        file.write_all_at(b"data", 0).unwrap();
        let before = disk.sync_count();
        let f = Flusher::start(disk.open(Path::new("/d/f"), false).unwrap()).unwrap();
        f.poke();
        let deadline = Instant::now() + Duration::from_secs(10);
        while disk.sync_count() == before {
            assert!(Instant::now() < deadline, "no flush after a poke");
            std::thread::sleep(Duration::from_millis(1));
        }
        drop(f);
        // The thread is gone: nothing flushes any more.
        let after = disk.sync_count();
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(disk.sync_count(), after);
    }
}
