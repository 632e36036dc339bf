//! The data-directory lock: one server per data directory.
//!
//! Two processes on one directory would each append to the WAL and commit to the store as
//! if alone, and the second would corrupt what the first acknowledged. So a server holds an
//! exclusive OS lock (`flock`) on `<data-dir>/LOCK` for as long as it runs, and writes its
//! pid into the file so that a refused process can name the holder.
//!
//! # Guarantees
//!
//! 1. While a [`DataDirLock`] is alive, [`DataDirLock::acquire`] on the same directory fails,
//!    from this process or any other, with [`LockError::Held`] naming the directory and
//!    the holder's pid (when it could be read). The holder is not disturbed: the refused
//!    side only opens the file and reads it.
//! 2. The OS releases the lock when the holder exits, however it exits (`kill -9`
//!    included), so a crash never leaves a stale lock behind; a leftover `LOCK` file alone
//!    holds nothing.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read as _, Seek as _, SeekFrom, Write as _};
use std::path::{Path, PathBuf};

/// Name of the lock file inside the data directory.
pub const LOCK_FILE: &str = "LOCK";

/// Why the data directory could not be locked.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LockError {
    /// Another process (or another server in this one) holds the lock.
    #[error("data directory {} is in use by another concord server ({holder}); stop it first or choose another --data-dir", dir.display())]
    Held {
        /// The data directory.
        dir: PathBuf,
        /// Who holds it, e.g. `pid 1234`, or `pid unknown`.
        holder: String,
    },
    /// The lock file could not be opened, locked or written.
    #[error("cannot lock data directory {}: {source}", dir.display())]
    Io {
        /// The data directory.
        dir: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

/// An exclusive lock on a data directory, released when dropped.
#[derive(Debug)]
pub struct DataDirLock {
    // Holding the open file holds the lock.
    _file: File,
}

impl DataDirLock {
    /// Locks `dir` (which must exist) for this process.
    pub fn acquire(dir: &Path) -> Result<Self, LockError> {
        let io = |source| LockError::Io {
            dir: dir.to_path_buf(),
            source,
        };
        let path = dir.join(LOCK_FILE);
        // Not truncated on open: a refused opener must not erase the holder's pid.
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut text = String::new();
                let holder = match file.read_to_string(&mut text) {
                    Ok(_) if !text.trim().is_empty() => format!("pid {}", text.trim()),
                    _ => "pid unknown".to_string(),
                };
                return Err(LockError::Held {
                    dir: dir.to_path_buf(),
                    holder,
                });
            }
            Err(TryLockError::Error(e)) => return Err(io(e)),
        }
        file.set_len(0).map_err(io)?;
        file.seek(SeekFrom::Start(0)).map_err(io)?;
        writeln!(file, "{}", std::process::id()).map_err(io)?;
        Ok(Self { _file: file })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_is_refused_until_the_first_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let first = DataDirLock::acquire(dir.path()).unwrap();
        let err = DataDirLock::acquire(dir.path()).unwrap_err();
        let text = err.to_string();
        assert!(
            matches!(err, LockError::Held { .. }),
            "unexpected error: {text}"
        );
        assert!(text.contains(&dir.path().display().to_string()), "{text}");
        assert!(
            text.contains(&format!("pid {}", std::process::id())),
            "{text}"
        );
        drop(first);
        let again = DataDirLock::acquire(dir.path()).unwrap();
        drop(again);
    }

    #[test]
    fn a_missing_directory_is_an_io_error() {
        let dir = tempfile::tempdir().unwrap();
        let err = DataDirLock::acquire(&dir.path().join("nope")).unwrap_err();
        assert!(matches!(err, LockError::Io { .. }), "{err}");
    }
}
