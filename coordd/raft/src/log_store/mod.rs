//! Raft log stores. The store is a module of its own because slice 2 replaces the in-memory one
//! with coordd's WAL; [`Member::start`](crate::Member::start) takes any [`LogStore`].

mod mem;

pub use mem::MemLogStore;

pub(crate) mod sealed {
    /// The openraft side of a [`LogStore`](super::LogStore); sealed so that no openraft type
    /// is part of this crate's API.
    pub trait RaftLog:
        openraft::storage::RaftLogStorage<crate::types::TypeConfig> + Send + Sync + 'static
    {
    }
}

/// A Raft log (entries, vote, committed and purged positions) this crate knows how to drive.
/// Implemented by [`MemLogStore`]; slice 2 adds the on-disk one.
pub trait LogStore: sealed::RaftLog {}
