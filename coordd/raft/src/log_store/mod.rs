//! Raft log stores: [`MemLogStore`] (tests) and [`DiskLogStore`] (coordd's WAL);
//! [`Member::start`](crate::Member::start) takes any [`LogStore`].

mod disk;
mod mem;

pub(crate) use disk::{snapshot_read_err, snapshot_write_err, SnapshotStore};
pub use disk::{DiskLogConfig, DiskLogStore};
pub use mem::MemLogStore;

pub(crate) mod sealed {
    /// The openraft side of a [`LogStore`](super::LogStore); sealed so that no openraft type
    /// is part of this crate's API.
    /// `Clone`: clones share one log, so that a member restarting its RaftCore in-process
    /// hands the new one the same log.
    pub trait RaftLog:
        openraft::storage::RaftLogStorage<crate::types::TypeConfig> + Clone + Send + Sync + 'static
    {
        /// Where the state machine's snapshots are persisted, for a durable log; `None` keeps
        /// them in memory only (a restarted member then has no snapshot, which is only
        /// correct if its log is not durable either).
        fn snapshot_store(&self) -> Option<super::SnapshotStore> {
            None
        }

        /// Counts the entries read back from disk because they were no longer held decoded
        /// in memory (always 0 for a log that holds everything in memory).
        fn entries_read_back(&self) -> std::sync::Arc<std::sync::atomic::AtomicU64> {
            std::sync::Arc::default()
        }
    }
}

/// A Raft log (entries, vote, purged position; the state machine's snapshots for a durable
/// one) this crate knows how to drive. Implemented by [`MemLogStore`] and [`DiskLogStore`].
pub trait LogStore: sealed::RaftLog {}
