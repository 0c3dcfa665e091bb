//! The durable Raft log: coordd's WAL (`coordd-storage`) underneath openraft's storage-v2 log.
//!
//! Mapping onto the WAL (one data directory per member, locked by `flock` on `LOCK`):
//! - entry at log index `i` = WAL record with zxid `i + 1` (zxids are positive; openraft's
//!   first entry, the initial membership, has index 0). Its payload is the postcard encoding
//!   of the whole `openraft::Entry` (log id with term and leader, payload);
//! - `truncate(log_id)` (delete `[index, ..)`) = `Wal::truncate_after(index)`: a truncate
//!   marker record, written and fdatasynced before `truncate` returns;
//! - `purge(log_id)` (delete `(.., index]`) = `Wal::save_snapshot(index + 1, postcard(log_id))`:
//!   the WAL's "snapshot" files here hold only the purged log id (durable before `purge`
//!   returns); segments wholly below the older of the two kept purge points are removed;
//! - the vote = the file `vote` (`Wal::save_file`: tmp + fdatasync + rename + dir fsync);
//! - the state machine's newest snapshot (openraft meta + the applier's image) = the file
//!   `raft-snapshot`, written by the state machine adapter through [`SnapshotStore`] and
//!   loaded into the applier at start, before openraft reads its initial state.
//!
//! Every write goes to the WAL inside `spawn_blocking`, so the runtime's threads never wait for
//! an fsync; one mutex orders them (openraft already serializes the log's calls, the mutex
//! adds the snapshot writes of the state machine task). `append` fires openraft's `LogFlushed`
//! callback right after the fdatasync and before it returns, which storage-v2 allows: in 0.9
//! RaftCore awaits that callback before anything else (docs/issue5-openraft-research.md section
//! 0.1), so a writer thread returning earlier would buy no overlap.
//!
//! `save_committed` is not implemented (openraft's default): persisting the commit index on
//! every commit would cost a file replace per commit, and without it a restarted member only
//! re-applies from its snapshot when the leader tells it the commit index again.
//!
//! Memory: of the entries above the last purge point only the newest are kept decoded in
//! memory, at most `log_cache_bytes_max` bytes of them (as encoded; always the newest one):
//! those are what the leader replicates and what is applied next. Every entry's log id and
//! place in its segment stay in memory (~40 bytes each); an older entry (a follower catching
//! up from behind, a restart's re-apply) is read back from its segment. Without the bound the
//! log between two snapshots (up to `snapshot_every_entries` entries of up to 1 MiB each)
//! would all sit in memory.

use std::collections::VecDeque;
use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use bytes::Bytes;
use coordd_storage::{EntryPos, FaultHook, StorageConfig, StorageError as WalError, Wal, Zxid};
use openraft::storage::{LogFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::{AnyError, ErrorSubject, ErrorVerb, OptionalSend};
use serde::{de::DeserializeOwned, Serialize};

use super::sealed::RaftLog;
use super::LogStore;
use crate::types::{Entry, LogId, SnapshotMeta, StorageError, TypeConfig, Vote};

/// Name of the vote file in the data directory.
const VOTE_FILE: &str = "vote";
/// Name of the state machine's snapshot file in the data directory.
const SNAPSHOT_FILE: &str = "raft-snapshot";
/// Purge points kept: the newest and one before it, so a damaged newest one falls back to a
/// purge point the log still reaches (the WAL removes only what the older one covers).
const PURGE_POINTS_KEPT: usize = 2;

/// Default for [`DiskLogConfig::segment_bytes_max`]: 64 MiB.
const DEFAULT_SEGMENT_BYTES_MAX: u64 = coordd_storage::DEFAULT_SEGMENT_BYTES_MAX;
/// Default for [`DiskLogConfig::preallocate_bytes`]: 64 MiB.
const DEFAULT_PREALLOCATE_BYTES: u64 = coordd_storage::DEFAULT_PREALLOCATE_BYTES;
/// Default for [`DiskLogConfig::entry_bytes_max`]: 16 MiB.
const DEFAULT_ENTRY_BYTES_MAX: u64 = coordd_storage::DEFAULT_ENTRY_BYTES_MAX;
/// Default for [`DiskLogConfig::log_cache_bytes_max`]: 1 MiB, about 300 ms of this
/// machine's fastest write stream (20k writes/s of ~150 bytes); a follower further behind
/// reads from disk.
pub const DEFAULT_LOG_CACHE_BYTES_MAX: usize = 1 << 20;
/// Default for [`DiskLogConfig::snapshot_bytes_max`]: 4 GiB.
const DEFAULT_SNAPSHOT_BYTES_MAX: u64 = coordd_storage::DEFAULT_SNAPSHOT_BYTES_MAX;

/// How a [`DiskLogStore`] uses its directory.
#[derive(Clone, Debug)]
pub struct DiskLogConfig {
    /// fdatasync every append, truncate, purge, vote and snapshot (and fsync new files and the
    /// directory). `false` only for tests: a member that forgets its vote or acknowledged
    /// entries after a power failure can break Raft's safety.
    pub fsync: bool,
    /// A segment is rolled before the next append once it has reached this size (default
    /// 64 MiB).
    pub segment_bytes_max: u64,
    /// New segments are preallocated to this size (0 = off), so an fdatasync after an append
    /// need not also journal a new file size (default 64 MiB).
    pub preallocate_bytes: u64,
    /// Largest encoded entry accepted by `append` and believed by recovery (default 16 MiB;
    /// keep `Config::payload_max_bytes` a little below it: the entry adds its log id).
    pub entry_bytes_max: u64,
    /// Largest snapshot file (meta + image) written and read back (default 4 GiB).
    pub snapshot_bytes_max: u64,
    /// Encoded bytes of the newest entries kept decoded in memory (default 1 MiB); older
    /// ones are read back from disk. The newest entry is always kept.
    pub log_cache_bytes_max: usize,
    /// Append (write and fdatasync) on the calling task's thread instead of in the blocking
    /// pool: two thread hand-offs less per append, ~60-80 us less per write at one session
    /// on the 2-core benchmark machine (RaftCore waits for the flush either way in openraft
    /// 0.9), at the price of that runtime worker waiting out the fdatasync. Other I/O
    /// (reads back, truncation, purge, snapshots), and appends of more than
    /// [`INLINE_APPEND_BYTES_MAX`], always go to the blocking pool. Default off; coordd
    /// turns it on with its `inline_commit`.
    pub inline_append: bool,
    /// Fault injection for tests, consulted before every I/O call; `None` in production.
    pub faults: Option<Arc<dyn FaultHook>>,
}

impl Default for DiskLogConfig {
    fn default() -> Self {
        DiskLogConfig {
            fsync: true,
            segment_bytes_max: DEFAULT_SEGMENT_BYTES_MAX,
            preallocate_bytes: DEFAULT_PREALLOCATE_BYTES,
            entry_bytes_max: DEFAULT_ENTRY_BYTES_MAX,
            snapshot_bytes_max: DEFAULT_SNAPSHOT_BYTES_MAX,
            log_cache_bytes_max: DEFAULT_LOG_CACHE_BYTES_MAX,
            inline_append: false,
            faults: None,
        }
    }
}

/// The WAL and what must change together with it.
struct Disk {
    wal: Wal,
    /// Last log id of the snapshot file on disk; a snapshot not newer is not written (a build
    /// that finishes after a newer install must not replace it).
    snapshot_last: Option<Option<LogId>>,
}

/// The in-memory view every reader uses.
#[derive(Default)]
struct View {
    vote: Option<Vote>,
    last_purged: Option<LogId>,
    /// Log id and place on disk of every entry above `last_purged`, consecutive by index.
    ids: VecDeque<(LogId, EntryPos)>,
    /// The newest entries, decoded, with their encoded sizes: a suffix of `ids` holding at
    /// most `cache_bytes_max` bytes, or just the newest entry (empty after a truncation took
    /// every cached one, until the next append).
    cached: VecDeque<(Entry, usize)>,
    cached_bytes: usize,
    cache_bytes_max: usize,
}

impl View {
    fn first_index(&self) -> Option<u64> {
        self.ids.front().map(|(id, _)| id.index)
    }

    fn last_log_id(&self) -> Option<LogId> {
        self.ids.back().map(|(id, _)| *id)
    }

    /// Appends the entry after the last one; drops the oldest decoded ones past the bound.
    fn push(&mut self, entry: Entry, pos: EntryPos, encoded_len: usize) {
        debug_assert!(self
            .last_log_id()
            .is_none_or(|l| l.index + 1 == entry.log_id.index));
        self.ids.push_back((entry.log_id, pos));
        self.cached.push_back((entry, encoded_len));
        self.cached_bytes += encoded_len;
        while self.cached_bytes > self.cache_bytes_max && self.cached.len() > 1 {
            if let Some((_, n)) = self.cached.pop_front() {
                self.cached_bytes -= n;
            }
        }
    }

    /// Drops the entries at `index` and after.
    fn truncate_from(&mut self, index: u64) {
        while self.ids.back().is_some_and(|(id, _)| id.index >= index) {
            self.ids.pop_back();
        }
        while self
            .cached
            .back()
            .is_some_and(|(e, _)| e.log_id.index >= index)
        {
            if let Some((_, n)) = self.cached.pop_back() {
                self.cached_bytes -= n;
            }
        }
    }

    /// Drops the entries up to and including `index`.
    fn purge_upto(&mut self, index: u64) {
        while self.ids.front().is_some_and(|(id, _)| id.index <= index) {
            self.ids.pop_front();
        }
        while self
            .cached
            .front()
            .is_some_and(|(e, _)| e.log_id.index <= index)
        {
            if let Some((_, n)) = self.cached.pop_front() {
                self.cached_bytes -= n;
            }
        }
    }

    /// The entries of `range` held in memory, and the ids and places of those before them
    /// that are only on disk.
    fn lookup(&self, range: impl RangeBounds<u64>) -> (Vec<(LogId, EntryPos)>, Vec<Entry>) {
        let (Some(first), Some(last)) = (self.first_index(), self.last_log_id()) else {
            return (Vec::new(), Vec::new());
        };
        let lo = match range.start_bound() {
            Bound::Included(&i) => i,
            Bound::Excluded(&i) => i.saturating_add(1),
            Bound::Unbounded => first,
        }
        .max(first);
        let hi = match range.end_bound() {
            Bound::Included(&i) => i,
            Bound::Excluded(&i) => match i.checked_sub(1) {
                Some(i) => i,
                None => return (Vec::new(), Vec::new()),
            },
            Bound::Unbounded => last.index,
        }
        .min(last.index);
        if lo > hi {
            return (Vec::new(), Vec::new());
        }
        let cached_first = self
            .cached
            .front()
            .map_or(u64::MAX, |(e, _)| e.log_id.index);
        let on_disk: Vec<(LogId, EntryPos)> = (lo..hi.saturating_add(1).min(cached_first))
            .map(|i| self.ids[(i - first) as usize])
            .collect();
        let in_memory: Vec<Entry> = if hi < cached_first {
            Vec::new()
        } else {
            let from = (lo.max(cached_first) - cached_first) as usize;
            let to = (hi - cached_first) as usize;
            self.cached
                .range(from..=to)
                .map(|(e, _)| e.clone())
                .collect()
        };
        (on_disk, in_memory)
    }
}

struct Shared {
    dir: PathBuf,
    disk: Mutex<Disk>,
    view: Mutex<View>,
    /// The snapshot file read at open, for the state machine adapter to load (taken once).
    recovered_snapshot: Mutex<Option<(SnapshotMeta, Bytes)>>,
    /// Entries read back from disk (older than the cached ones).
    entries_read_back: Arc<AtomicU64>,
    /// `DiskLogConfig::inline_append`.
    inline_append: bool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // For the view and the recovered snapshot: only plain assignments and map operations that
    // do not panic happen under these locks. (The disk's lock is not taken this way: see
    // `with_disk`.)
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A Raft log on disk, durable across crashes and power loss (with `fsync` on). Clones share
/// the same log (openraft's log readers are clones).
#[derive(Clone)]
pub struct DiskLogStore {
    shared: Arc<Shared>,
}

impl Debug for DiskLogStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let v = lock(&self.shared.view);
        f.debug_struct("DiskLogStore")
            .field("dir", &self.shared.dir)
            .field("entries", &v.ids.len())
            .field("cached", &v.cached.len())
            .field("last_purged", &v.last_purged)
            .finish()
    }
}

/// Runs `f` on the WAL under its lock, on the calling thread. A poisoned lock (a write that
/// panicked half-way left the WAL in an unknown state) refuses, like a failed fsync:
/// nothing more is written until a restart recovers from the disk.
fn on_disk<R>(
    shared: &Shared,
    f: impl FnOnce(&mut Disk) -> Result<R, WalError>,
) -> Result<R, WalError> {
    match shared.disk.lock() {
        Ok(mut d) => f(&mut d),
        Err(_) => Err(WalError::Poisoned("an earlier log write panicked".into())),
    }
}

/// Largest append (encoded entries) that [`DiskLogConfig::inline_append`] writes on the
/// calling thread: a coordination write is far smaller; a large one would hold a runtime
/// worker (and the tasks queued on it) for its whole write and fsync.
pub const INLINE_APPEND_BYTES_MAX: usize = 64 << 10;

fn zxid_of(index: u64) -> Result<Zxid, WalError> {
    index
        .checked_add(1)
        .and_then(|z| Zxid::try_from(z).ok())
        .ok_or_else(|| WalError::InvalidAppend(format!("log index {index} is out of range")))
}

fn encode<T: Serialize>(what: &str, v: &T) -> Result<Vec<u8>, WalError> {
    postcard::to_stdvec(v).map_err(|e| WalError::InvalidAppend(format!("encoding {what}: {e}")))
}

fn decode<T: DeserializeOwned>(
    path: &Path,
    offset: u64,
    what: &str,
    b: &[u8],
) -> Result<T, WalError> {
    postcard::from_bytes(b).map_err(|e| WalError::Corrupt {
        path: path.to_path_buf(),
        offset,
        reason: format!("{what} does not decode: {e}"),
    })
}

/// Encodes a snapshot file: u32 LE meta length | postcard(meta) | image.
fn encode_snapshot(meta: &SnapshotMeta, image: &[u8]) -> Result<Vec<u8>, WalError> {
    let m = encode("snapshot meta", meta)?;
    let mut out = Vec::with_capacity(4 + m.len() + image.len());
    out.extend_from_slice(&(m.len() as u32).to_le_bytes());
    out.extend_from_slice(&m);
    out.extend_from_slice(image);
    Ok(out)
}

/// The image is a slice of the file's bytes, not a copy (it can be the size of the tree).
fn decode_snapshot(path: &Path, b: Vec<u8>) -> Result<(SnapshotMeta, Bytes), WalError> {
    let corrupt = |reason: &str| WalError::Corrupt {
        path: path.to_path_buf(),
        offset: 0,
        reason: reason.to_string(),
    };
    let len: [u8; 4] = b
        .get(..4)
        .and_then(|s| s.try_into().ok())
        .ok_or_else(|| corrupt("snapshot file shorter than its meta length"))?;
    let len = u32::from_le_bytes(len) as usize;
    let meta = b
        .get(4..4 + len)
        .ok_or_else(|| corrupt("snapshot meta extends past the end of the file"))?;
    let meta: SnapshotMeta = decode(path, 4, "snapshot meta", meta)?;
    Ok((meta, Bytes::from(b).slice(4 + len..)))
}

impl DiskLogStore {
    /// Opens (creating if needed) the log in `dir`, holding the directory's lock until the last
    /// clone is dropped. Recovery repairs a torn tail and refuses anything that would lose an
    /// acknowledged write or vote (`StorageError::Corrupt` naming file and offset).
    pub fn open(dir: impl AsRef<Path>, config: DiskLogConfig) -> Result<DiskLogStore, WalError> {
        let dir = dir.as_ref().to_path_buf();
        let (wal, rec) = Wal::open(StorageConfig {
            dir: dir.clone(),
            fsync: config.fsync,
            segment_bytes_max: config.segment_bytes_max,
            preallocate_bytes: config.preallocate_bytes,
            snapshots_kept: PURGE_POINTS_KEPT,
            entry_bytes_max: config.entry_bytes_max,
            snapshot_bytes_max: config.snapshot_bytes_max,
            faults: config.faults,
        })?;
        let mut view = View {
            cache_bytes_max: config.log_cache_bytes_max,
            ..View::default()
        };
        if let Some((z, image)) = &rec.snapshot {
            let path = dir.join(format!("snapshot.{z:016x}"));
            let id: LogId = decode(&path, 32, "purged log id", image)?;
            if zxid_of(id.index)? != *z {
                return Err(WalError::Corrupt {
                    path,
                    offset: 32,
                    reason: format!("purged log id {id} does not match zxid {z}"),
                });
            }
            view.last_purged = Some(id);
        }
        for ((z, payload), pos) in rec.entries.iter().zip(&rec.positions) {
            // A CRC-valid record that does not hold the entry its zxid says: a bug or a
            // directory written by something else, never a torn write. Name where it lies.
            let bad = |reason: String| -> WalError {
                let (path, offset) = match wal.locate(*z) {
                    Ok(Some(at)) => at,
                    _ => (dir.clone(), 0),
                };
                WalError::Corrupt {
                    path,
                    offset,
                    reason: format!("log entry at zxid {z} (index {}): {reason}", z - 1),
                }
            };
            let e: Entry =
                postcard::from_bytes(payload).map_err(|e| bad(format!("does not decode: {e}")))?;
            if zxid_of(e.log_id.index)? != *z {
                return Err(bad(format!("holds log id {}", e.log_id)));
            }
            let after = view.last_log_id().or(view.last_purged);
            if after.is_some_and(|l| l.index + 1 != e.log_id.index) {
                return Err(bad(format!(
                    "does not follow index {:?}",
                    after.map(|l| l.index)
                )));
            }
            view.push(e, *pos, payload.len());
        }
        if let Some(b) = wal.read_file(VOTE_FILE)? {
            view.vote = Some(decode(&dir.join(VOTE_FILE), 24, "vote", &b)?);
        }
        let recovered_snapshot = match wal.read_file(SNAPSHOT_FILE)? {
            Some(b) => Some(decode_snapshot(&dir.join(SNAPSHOT_FILE), b)?),
            None => None,
        };
        let snapshot_last = recovered_snapshot.as_ref().map(|(m, _)| m.last_log_id);
        Ok(DiskLogStore {
            shared: Arc::new(Shared {
                dir,
                disk: Mutex::new(Disk { wal, snapshot_last }),
                view: Mutex::new(view),
                recovered_snapshot: Mutex::new(recovered_snapshot),
                entries_read_back: Arc::default(),
                inline_append: config.inline_append,
            }),
        })
    }

    /// The data directory.
    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    /// Runs `f` on the WAL in the blocking pool (it fsyncs).
    async fn with_disk<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Disk) -> Result<R, WalError> + Send + 'static,
    ) -> Result<R, WalError> {
        let shared = self.shared.clone();
        tokio::task::spawn_blocking(move || on_disk(&shared, f))
            .await
            .unwrap_or_else(|e| Err(WalError::Poisoned(format!("log write task failed: {e}"))))
    }

    /// Appends entries durably (one write, one fdatasync); they are readable once it returns.
    pub(crate) async fn append_entries(&self, mut entries: Vec<Entry>) -> Result<(), WalError> {
        // openraft never appends at or below the purge point, but its conformance suite does
        // (after get_initial_state purged up to the state machine). Such entries are covered
        // by a snapshot, so committed, so (Log Matching) equal to what was there: dropped.
        if let Some(p) = lock(&self.shared.view).last_purged {
            entries.retain(|e| e.log_id.index > p.index);
        }
        if entries.is_empty() {
            return Ok(());
        }
        // The view (and the log's reads by place) rely on consecutive indexes.
        {
            let v = lock(&self.shared.view);
            let mut after = v.last_log_id().or(v.last_purged).map(|l| l.index);
            for e in &entries {
                if after.is_some_and(|a| a + 1 != e.log_id.index) {
                    return Err(WalError::InvalidAppend(format!(
                        "log index {} does not follow {after:?}",
                        e.log_id.index
                    )));
                }
                after = Some(e.log_id.index);
            }
        }
        let mut records = Vec::with_capacity(entries.len());
        for e in &entries {
            records.push((zxid_of(e.log_id.index)?, encode("log entry", e)?));
        }
        let sizes: Vec<usize> = records.iter().map(|(_, p)| p.len()).collect();
        let write = move |d: &mut Disk| {
            let refs: Vec<(Zxid, &[u8])> = records.iter().map(|(z, p)| (*z, &p[..])).collect();
            d.wal.append_at(&refs)
        };
        let inline =
            self.shared.inline_append && sizes.iter().sum::<usize>() <= INLINE_APPEND_BYTES_MAX;
        let positions = if inline {
            on_disk(&self.shared, write)?
        } else {
            self.with_disk(write).await?
        };
        let mut v = lock(&self.shared.view);
        for ((e, pos), len) in entries.into_iter().zip(positions).zip(sizes) {
            v.push(e, pos, len);
        }
        Ok(())
    }

    /// Deletes the entries at `index` and after, durably.
    pub(crate) async fn truncate_from(&self, index: u64) -> Result<(), WalError> {
        // Entries at zxid <= index (log index < index) stay.
        let keep_upto = Zxid::try_from(index)
            .map_err(|_| WalError::InvalidAppend(format!("log index {index} is out of range")))?;
        self.with_disk(move |d| d.wal.truncate_after(keep_upto))
            .await?;
        lock(&self.shared.view).truncate_from(index);
        Ok(())
    }

    /// Deletes the entries up to and including `log_id`, durably (the purged log id is
    /// persisted; whole segments go later).
    pub(crate) async fn purge_upto(&self, log_id: LogId) -> Result<(), WalError> {
        if lock(&self.shared.view)
            .last_purged
            .is_some_and(|p| p.index >= log_id.index)
        {
            return Ok(());
        }
        let z = zxid_of(log_id.index)?;
        let image = encode("purged log id", &log_id)?;
        self.with_disk(move |d| d.wal.save_snapshot(z, &image))
            .await?;
        let mut v = lock(&self.shared.view);
        v.last_purged = Some(log_id);
        v.purge_upto(log_id.index);
        Ok(())
    }

    /// Saves the vote durably.
    pub(crate) async fn save_vote_durably(&self, vote: Vote) -> Result<(), WalError> {
        let b = encode("vote", &vote)?;
        self.with_disk(move |d| d.wal.save_file(VOTE_FILE, &b))
            .await?;
        lock(&self.shared.view).vote = Some(vote);
        Ok(())
    }

    /// The handle the state machine adapter persists its snapshots through.
    pub(crate) fn snapshot_handle(&self) -> SnapshotStore {
        SnapshotStore {
            store: self.clone(),
        }
    }

    /// The entries of `range` (clamped to the log), from memory or read back from disk.
    pub(crate) async fn entries(
        &self,
        range: impl RangeBounds<u64>,
    ) -> Result<Vec<Entry>, WalError> {
        let (on_disk, in_memory) = lock(&self.shared.view).lookup(range);
        if on_disk.is_empty() {
            return Ok(in_memory);
        }
        // Places stay valid while their entries are live; openraft reads no entry it is
        // purging or truncating, and a purge removes only segments wholly below the older of
        // the two kept purge points (see `purge_upto`).
        let shared = self.shared.clone();
        let mut out = self
            .with_disk(move |d| read_back(&shared.dir, &d.wal, &on_disk))
            .await?;
        self.shared
            .entries_read_back
            .fetch_add(out.len() as u64, Ordering::Relaxed);
        out.extend(in_memory);
        Ok(out)
    }

    /// For tests: (vote, last purged, entries) as a reader sees them (read on this thread).
    #[cfg(test)]
    pub(crate) fn contents(&self) -> (Option<Vote>, Option<LogId>, Vec<Entry>) {
        let (on_disk, in_memory) = lock(&self.shared.view).lookup(..);
        let disk = self.shared.disk.lock().unwrap();
        let mut entries = read_back(&self.shared.dir, &disk.wal, &on_disk).unwrap();
        entries.extend(in_memory);
        let v = lock(&self.shared.view);
        (v.vote, v.last_purged, entries)
    }
}

/// Reads entries back from the places the view gave for them and checks that each is the
/// one the view named there.
fn read_back(dir: &Path, wal: &Wal, on_disk: &[(LogId, EntryPos)]) -> Result<Vec<Entry>, WalError> {
    let wanted: Vec<(Zxid, EntryPos)> = on_disk
        .iter()
        .map(|(id, pos)| Ok((zxid_of(id.index)?, *pos)))
        .collect::<Result<_, WalError>>()?;
    let payloads = wal.read_entries(&wanted)?;
    let mut out = Vec::with_capacity(on_disk.len());
    for ((id, pos), payload) in on_disk.iter().zip(payloads) {
        let e: Entry = decode(dir, pos.offset, "log entry", &payload)?;
        if e.log_id != *id {
            return Err(WalError::Corrupt {
                path: dir.to_path_buf(),
                offset: pos.offset,
                reason: format!(
                    "read back log entry {} where {id} was (segment {})",
                    e.log_id, pos.segment
                ),
            });
        }
        out.push(e);
    }
    Ok(out)
}

/// Where the state machine adapter keeps its newest snapshot (meta + image) durably. `pub`
/// only to appear in the sealed trait; it cannot be named outside the crate.
#[derive(Clone)]
pub struct SnapshotStore {
    store: DiskLogStore,
}

impl SnapshotStore {
    /// The snapshot found on disk at open, once (the adapter loads it into the applier).
    pub(crate) fn take_recovered(&self) -> Option<(SnapshotMeta, Bytes)> {
        lock(&self.store.shared.recovered_snapshot).take()
    }

    /// The newest snapshot saved (meta + image), read back from disk: the state machine
    /// keeps only its meta in memory, since the image is a second copy of the whole state.
    pub(crate) async fn load(&self) -> Result<Option<(SnapshotMeta, Bytes)>, WalError> {
        let path = self.store.shared.dir.join(SNAPSHOT_FILE);
        self.store
            .with_disk(move |d| match d.wal.read_file(SNAPSHOT_FILE)? {
                Some(b) => decode_snapshot(&path, b).map(Some),
                None => Ok(None),
            })
            .await
    }

    /// Writes the snapshot durably unless the one on disk is at least as new.
    pub(crate) async fn save(&self, meta: &SnapshotMeta, image: &Bytes) -> Result<(), WalError> {
        let last = meta.last_log_id;
        let file = encode_snapshot(meta, image)?;
        self.store
            .with_disk(move |d| {
                if d.snapshot_last.is_some_and(|cur| cur >= last) {
                    return Ok(());
                }
                d.wal.save_file(SNAPSHOT_FILE, &file)?;
                d.snapshot_last = Some(last);
                Ok(())
            })
            .await
    }
}

fn write_err(subject: ErrorSubject<u64>, e: WalError) -> StorageError {
    StorageError::from_io_error(subject, ErrorVerb::Write, io::Error::other(e.to_string()))
}

fn log_write_err(log_id: Option<LogId>, e: WalError) -> StorageError {
    let subject = match log_id {
        Some(id) => ErrorSubject::Log(id),
        None => ErrorSubject::Logs,
    };
    write_err(subject, e)
}

impl RaftLog for DiskLogStore {
    fn snapshot_store(&self) -> Option<SnapshotStore> {
        Some(self.snapshot_handle())
    }

    fn entries_read_back(&self) -> Arc<AtomicU64> {
        self.shared.entries_read_back.clone()
    }
}
impl LogStore for DiskLogStore {}

impl RaftLogReader<TypeConfig> for DiskLogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        self.entries(range).await.map_err(|e| {
            StorageError::from_io_error(
                ErrorSubject::Logs,
                ErrorVerb::Read,
                io::Error::other(e.to_string()),
            )
        })
    }
}

impl RaftLogStorage<TypeConfig> for DiskLogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let v = lock(&self.shared.view);
        let last = v.last_log_id();
        Ok(LogState {
            last_purged_log_id: v.last_purged,
            // With everything purged, the last log id is the last purged one.
            last_log_id: last.or(v.last_purged),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        self.save_vote_durably(*vote)
            .await
            .map_err(|e| write_err(ErrorSubject::Vote, e))
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        Ok(lock(&self.shared.view).vote)
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
        let entries: Vec<Entry> = entries.into_iter().collect();
        let last = entries.last().map(|e| e.log_id);
        match self.append_entries(entries).await {
            Ok(()) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                callback.log_io_completed(Err(io::Error::other(e.to_string())));
                Err(log_write_err(last, e))
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.truncate_from(log_id.index)
            .await
            .map_err(|e| log_write_err(Some(log_id), e))
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.purge_upto(log_id)
            .await
            .map_err(|e| log_write_err(Some(log_id), e))
    }
}

/// openraft's error for a failed snapshot write, for the state machine adapter.
pub(crate) fn snapshot_read_err(meta: &SnapshotMeta, e: impl std::fmt::Display) -> StorageError {
    StorageError::IO {
        source: openraft::StorageIOError::read_snapshot(
            Some(meta.signature()),
            AnyError::error(e.to_string()),
        ),
    }
}

pub(crate) fn snapshot_write_err(meta: &SnapshotMeta, e: WalError) -> StorageError {
    StorageError::IO {
        source: openraft::StorageIOError::write_snapshot(
            Some(meta.signature()),
            AnyError::error(e.to_string()),
        ),
    }
}

#[cfg(test)]
#[path = "disk_tests.rs"]
mod tests;
