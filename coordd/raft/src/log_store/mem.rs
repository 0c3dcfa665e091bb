//! The in-memory Raft log, for tests and slice 1. Not durable: a vote or an entry "persisted"
//! here is gone with the process, so it must never back a real ensemble (a restarted member
//! would vote twice in a term).

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::ops::RangeBounds;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use openraft::storage::{LogFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::{OptionalSend, RaftLogId};

use super::sealed::RaftLog;
use super::LogStore;
use crate::types::{Entry, LogId, StorageError, TypeConfig, Vote};

/// An in-memory Raft log. Clones share the same log (openraft's log readers are clones).
#[derive(Clone, Default)]
pub struct MemLogStore {
    inner: Arc<Mutex<Inner>>,
}

#[derive(Default)]
struct Inner {
    vote: Option<Vote>,
    committed: Option<LogId>,
    last_purged: Option<LogId>,
    /// Entries by index, consecutive (openraft never leaves holes: append extends the tail,
    /// truncate cuts it, purge cuts the head).
    log: BTreeMap<u64, Entry>,
}

impl MemLogStore {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Nothing panics while holding the lock (no user code runs under it); if something did,
        // the map is still consistent, so poisoning is not a reason to fail.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Debug for MemLogStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let g = self.lock();
        f.debug_struct("MemLogStore")
            .field("entries", &g.log.len())
            .field("last_purged", &g.last_purged)
            .finish()
    }
}

impl RaftLog for MemLogStore {}
impl LogStore for MemLogStore {}

impl RaftLogReader<TypeConfig> for MemLogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        Ok(self
            .lock()
            .log
            .range(range)
            .map(|(_, e)| e.clone())
            .collect())
    }
}

impl RaftLogStorage<TypeConfig> for MemLogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let g = self.lock();
        let last = g.log.values().next_back().map(|e| *e.get_log_id());
        Ok(LogState {
            last_purged_log_id: g.last_purged,
            // With everything purged, the last log id is the last purged one.
            last_log_id: last.or(g.last_purged),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        self.lock().vote = Some(*vote);
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        Ok(self.lock().vote)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        self.lock().committed = committed;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(self.lock().committed)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        {
            let mut g = self.lock();
            for e in entries {
                g.log.insert(e.get_log_id().index, e);
            }
        }
        // In memory, "flushed" is now.
        callback.log_io_completed(Ok(()));
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let mut g = self.lock();
        g.log.split_off(&log_id.index);
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let mut g = self.lock();
        if g.last_purged.is_some_and(|p| p.index >= log_id.index) {
            return Ok(());
        }
        g.last_purged = Some(log_id);
        g.log = match log_id.index.checked_add(1) {
            Some(first_kept) => g.log.split_off(&first_kept),
            None => BTreeMap::new(),
        };
        Ok(())
    }
}
