//! Online defragmentation: the store is rewritten into a compact file while it keeps
//! applying, and only the switch to the new file pauses it.
//!
//! etcd's defragment holds its backend's lock for the whole copy, so every read and write
//! of the member waits (etcd issue #9222). Here:
//!
//! 1. [`MvccStore::begin_defragment`] (brief, `&mut`): takes a consistent image (one
//!    read transaction) and starts recording every command the store applies from then
//!    on.
//! 2. [`Defrag::copy`] (no access to the store): streams the image into a new file
//!    (`<store>.defrag-tmp`) through the verified snapshot installer, and opens it as a
//!    store of its own. Meanwhile the live store applies as usual.
//! 3. [`MvccStore::take_recorded`] (brief) and [`Defrag::catch_up`] (no access): the
//!    copy applies what the live store applied meanwhile; repeated until little is left,
//!    then [`Defrag::sync`] makes the copy durable.
//! 4. [`MvccStore::finish_defragment`] (the pause, `&mut`): the copy applies the last
//!    commands, is made durable, is renamed over the store's file (directory synced),
//!    and the store takes over its database and key index (no rebuild).
//!
//! # Guarantees
//!
//! 1. **Same state.** The copy applies exactly the commands the store applied after the
//!    image, in order (an index gap is an error, never a skipped command), so the switch
//!    changes no key, revision, lease or applied index.
//! 2. **All or nothing.** Until the rename the store's own file is untouched; any error
//!    (a snapshot replacing the store, more than [`crate::mvcc::MAX_RECORDED`] commands
//!    to catch up, I/O) abandons the copy and leaves the store as it was. A crash at any
//!    point leaves the old file or the complete new one (the rename is atomic, preceded
//!    by a durable commit of the copy, followed by a directory sync); a leftover
//!    `defrag-tmp` is deleted by the next defragment.
//! 3. **Bounded pause.** Step 4 applies only what arrived since the last catch-up round
//!    and syncs only the commits since [`Defrag::sync`].

use std::path::{Path, PathBuf};

use crate::disk::Disk;
use crate::errors::{SnapshotError, StoreError};
use crate::mvcc::types::Command;
pub use crate::mvcc::Replaced;
use crate::mvcc::{MvccConfig, MvccStore, Recording};
use crate::snapshot::{SnapshotInstaller, SnapshotStream};

const CHUNK_BYTES: usize = 4 << 20;
const CATCH_UP_BATCH: usize = 1024;

/// An online defragment in progress; see the module.
pub struct Defrag<D: Disk> {
    disk: D,
    tmp_path: PathBuf,
    image: Option<SnapshotStream>,
    copy: Option<MvccStore<D>>,
    config: MvccConfig,
    /// Commands the copy applied after the image.
    pub caught_up: u64,
}

impl<D: Disk> std::fmt::Debug for Defrag<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Defrag")
            .field("tmp_path", &self.tmp_path)
            .field("copied", &self.copy.is_some())
            .field("caught_up", &self.caught_up)
            .finish_non_exhaustive()
    }
}

fn abandoned(why: impl Into<String>) -> SnapshotError {
    SnapshotError::Defrag(why.into())
}

fn tmp_path_for(path: &Path) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(".defrag-tmp");
    PathBuf::from(p)
}

impl<D: Disk> Defrag<D> {
    /// Copies the image into the new file and opens it. Needs no access to the store.
    pub fn copy(&mut self) -> Result<(), SnapshotError> {
        let image = self
            .image
            .take()
            .ok_or_else(|| abandoned("the image was already copied"))?;
        let mut installer = SnapshotInstaller::at(self.disk.clone(), self.tmp_path.clone())?;
        for chunk in image {
            installer.push(&chunk?)?;
        }
        installer.finish()?;
        let config = MvccConfig {
            background_flush: false,
            ..self.config.clone()
        };
        self.copy = Some(MvccStore::open(
            self.disk.clone(),
            self.tmp_path.clone(),
            config,
        )?);
        Ok(())
    }

    /// Applies commands the store applied after the image (from
    /// [`MvccStore::take_recorded`]) to the copy.
    pub fn catch_up(&mut self, cmds: &[(u64, Command)]) -> Result<(), SnapshotError> {
        let copy = self
            .copy
            .as_mut()
            .ok_or_else(|| abandoned("catch-up before the copy"))?;
        for batch in cmds.chunks(CATCH_UP_BATCH) {
            let refs: Vec<(u64, &Command)> = batch.iter().map(|(i, c)| (*i, c)).collect();
            copy.apply_batch(&refs)?;
        }
        self.caught_up += cmds.len() as u64;
        Ok(())
    }

    /// Makes the copy durable, so that the switch has little left to sync.
    pub fn sync(&mut self) -> Result<(), SnapshotError> {
        if let Some(copy) = self.copy.as_mut() {
            copy.sync()?;
        }
        Ok(())
    }

    /// Bytes of the copy's file so far.
    pub fn copy_bytes(&self) -> Result<u64, StoreError> {
        self.copy.as_ref().map_or(Ok(0), |c| c.size_bytes())
    }
}

impl<D: Disk> MvccStore<D> {
    /// Starts an online defragment (step 1 of the module docs).
    pub fn begin_defragment(&mut self) -> Result<Defrag<D>, SnapshotError> {
        if self.recording().is_some() {
            return Err(abandoned("another defragment is running"));
        }
        let tmp_path = tmp_path_for(self.path());
        let io = |source| {
            SnapshotError::Store(StoreError::Io {
                path: tmp_path.clone(),
                source,
            })
        };
        if self.disk().exists(&tmp_path).map_err(io)? {
            self.disk().remove_file(&tmp_path).map_err(io)?;
        }
        let image = SnapshotStream::new(self, CHUNK_BYTES)?;
        *self.recording() = Some(Recording::default());
        Ok(Defrag {
            disk: self.disk().clone(),
            tmp_path,
            image: Some(image),
            copy: None,
            config: self.config().clone(),
            caught_up: 0,
        })
    }

    /// The commands applied since the image or the previous call (step 3). An error
    /// means the defragment cannot finish; call [`MvccStore::abort_defragment`].
    pub fn take_recorded(&mut self) -> Result<Vec<(u64, Command)>, SnapshotError> {
        match self.recording() {
            None => Err(abandoned("no defragment is running")),
            Some(Recording {
                broken: Some(why), ..
            }) => Err(abandoned(why.clone())),
            Some(r) => Ok(std::mem::take(&mut r.cmds)),
        }
    }

    /// Brings the copy up to date and switches to it (step 4, the pause); returns how
    /// many commands the copy replayed in all, and the replaced database, which the
    /// caller drops after releasing whatever lock it holds the store under (closing it
    /// takes time). On error the defragment is abandoned and the store is unchanged.
    pub fn finish_defragment(
        &mut self,
        mut d: Defrag<D>,
    ) -> Result<(u64, Replaced), SnapshotError> {
        let result = (|| {
            let last = self.take_recorded()?;
            d.catch_up(&last)?;
            let mut copy = d
                .copy
                .take()
                .ok_or_else(|| abandoned("the image was not copied"))?;
            if copy.applied_index() != self.applied_index() {
                return Err(abandoned(format!(
                    "the copy is at index {}, the store at {}",
                    copy.applied_index(),
                    self.applied_index()
                )));
            }
            copy.sync()?;
            let path = self.path().to_path_buf();
            let io = |source| {
                SnapshotError::Store(StoreError::Io {
                    path: path.clone(),
                    source,
                })
            };
            self.disk().rename(&d.tmp_path, &path).map_err(io)?;
            if let Some(dir) = path.parent() {
                self.disk().sync_dir(dir).map_err(io)?;
            }
            let old = self.adopt(copy)?;
            Ok((d.caught_up, old))
        })();
        *self.recording() = None;
        if result.is_err() {
            let _ = self.disk().remove_file(&d.tmp_path);
        }
        result
    }

    /// Abandons a defragment: stops recording and deletes the copy.
    pub fn abort_defragment(&mut self, d: Defrag<D>) {
        *self.recording() = None;
        let Defrag {
            disk,
            tmp_path,
            copy,
            ..
        } = d;
        drop(copy);
        let _ = disk.remove_file(&tmp_path);
    }

    /// Rewrites the store into a fresh, compact file (etcd's defragment) in one call,
    /// holding `&mut self` throughout; the online form is the four steps of the module.
    pub fn defragment(&mut self) -> Result<(), SnapshotError> {
        let mut d = self.begin_defragment()?;
        if let Err(e) = d.copy() {
            self.abort_defragment(d);
            return Err(e);
        }
        self.finish_defragment(d).map(drop)
    }
}

#[cfg(test)]
mod tests;
