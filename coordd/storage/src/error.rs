use std::io;
use std::path::PathBuf;

/// Everything that can go wrong in storage. `Io`, `Corrupt` and `Poisoned` mean the
/// server must stop; the others reject one call and leave the log usable.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("storage I/O error: {op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "data directory {} is in use by another process (flock on {} is held)",
        dir.display(),
        lock.display()
    )]
    Locked { dir: PathBuf, lock: PathBuf },
    #[error("corrupt storage: {} at offset {offset}: {reason}", path.display())]
    Corrupt {
        path: PathBuf,
        offset: u64,
        reason: String,
    },
    #[error("invalid append: {0}")]
    InvalidAppend(String),
    #[error("{what} of {len} bytes exceeds {limit} = {max}")]
    TooLarge {
        what: &'static str,
        len: u64,
        limit: &'static str,
        max: u64,
    },
    #[error("invalid storage config: {0}")]
    Config(String),
    /// A write or fsync failed earlier; the on-disk state is unknown until a restart
    /// recovers it, so nothing more is written.
    #[error("storage failed earlier and refuses further writes: {0}")]
    Poisoned(String),
    #[error("log writer queue is full ({limit} = {max})")]
    QueueFull { limit: &'static str, max: u64 },
    #[error("log writer has stopped: {0}")]
    WriterStopped(String),
}

impl StorageError {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        StorageError::Io {
            op,
            path: path.into(),
            source,
        }
    }

    pub(crate) fn corrupt(
        path: impl Into<PathBuf>,
        offset: u64,
        reason: impl Into<String>,
    ) -> Self {
        StorageError::Corrupt {
            path: path.into(),
            offset,
            reason: reason.into(),
        }
    }
}
