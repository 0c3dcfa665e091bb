//! The data directory lock: an exclusive `flock` on `dir/LOCK`, held for the life of the
//! `Wal`. Two servers appending to one log would interleave records and destroy it; the
//! kernel drops the lock when the process dies, so a crash never leaves it stale.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use super::StorageError;

pub(crate) const LOCK_FILE: &str = "LOCK";

#[derive(Debug)]
pub(crate) struct DirLock {
    // Closing the descriptor releases the flock.
    _file: File,
}

impl DirLock {
    pub(crate) fn acquire(dir: &Path) -> Result<DirLock, StorageError> {
        let path: PathBuf = dir.join(LOCK_FILE);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| StorageError::io("open", &path, e))?;
        // SAFETY: flock on a valid open descriptor.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            let err = io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
                return Err(StorageError::Locked {
                    dir: dir.to_path_buf(),
                    lock: path,
                });
            }
            return Err(StorageError::io("flock", &path, err));
        }
        Ok(DirLock { _file: file })
    }
}
