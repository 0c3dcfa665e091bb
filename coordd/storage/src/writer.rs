//! Group commit. One OS thread owns the [`Wal`]; producers queue entries without
//! blocking; the thread takes everything queued (up to `batch_bytes_max`), writes it
//! with one write and one fdatasync, and reports the highest durable zxid. While one
//! fsync is in flight the next batch accumulates, so throughput grows with the number
//! of concurrent writers instead of being capped at one fsync per entry.
//!
//! A lone write need not pay for two thread hand-offs (a futex wake of this thread, a
//! wake of the submitter when it is durable): when the writer thread is parked and
//! only the caller's own entries are queued, [`LogWriter::commit_inline`] writes them
//! on the calling thread. Whether that is worth blocking the caller for one fsync is
//! the caller's policy (coordd's core does it only for serial write loads).
//!
//! Invariant: `Durable::UpTo(z)` is sent only after every entry with zxid <= z that was
//! submitted is durable; `commit_inline` returning `Some(z)` means the same. Entries
//! reach the log in submission order: the inline path runs only while the writer
//! thread is parked with nothing of its own in hand. After `Durable::Failed` (or an
//! inline error) nothing more is written or reported and `submit` fails: the server
//! must stop.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Instant;

use bytes::Bytes;
use tokio::sync::mpsc;
use tracing::{error, info};

use super::{SnapshotFiles, StorageError, Wal, Zxid};

/// Default for [`LogWriterConfig::queue_entries_max`].
pub const DEFAULT_QUEUE_ENTRIES_MAX: usize = 100_000;
/// Default for [`LogWriterConfig::queue_bytes_max`]: 256 MiB.
pub const DEFAULT_QUEUE_BYTES_MAX: u64 = 256 << 20;
/// Default for [`LogWriterConfig::batch_bytes_max`]: 8 MiB, a few ms of disk bandwidth,
/// so one batch does not hold back the acknowledgement of the ones queued after it.
pub const DEFAULT_BATCH_BYTES_MAX: u64 = 8 << 20;

#[derive(Clone, Debug)]
pub struct LogWriterConfig {
    /// Entries (and snapshot requests) queued and not yet taken by the writer thread;
    /// `submit` beyond it fails with `QueueFull`.
    pub queue_entries_max: usize,
    /// Payload bytes queued; `submit` beyond it fails with `QueueFull` (an entry larger
    /// than this is still accepted into an empty queue).
    pub queue_bytes_max: u64,
    /// Payload bytes per write+fsync (at least one entry per batch).
    pub batch_bytes_max: u64,
}

impl Default for LogWriterConfig {
    fn default() -> Self {
        LogWriterConfig {
            queue_entries_max: DEFAULT_QUEUE_ENTRIES_MAX,
            queue_bytes_max: DEFAULT_QUEUE_BYTES_MAX,
            batch_bytes_max: DEFAULT_BATCH_BYTES_MAX,
        }
    }
}

/// What the writer thread reports, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Durable {
    /// Every submitted entry with zxid <= this is durable.
    UpTo(Zxid),
    /// A write, fsync or snapshot failed; the writer has stopped. Never continue after
    /// a failed fsync (the kernel may have dropped the dirty pages): stop the server
    /// and let recovery read what is really on disk.
    Failed(String),
}

enum Item {
    Entry(Zxid, Bytes),
    /// A snapshot at a zxid: its image to write, or None when its file is written
    /// already ([`LogWriter::snapshot_beside`]) and only needs adopting.
    Snapshot(Zxid, Option<Vec<u8>>),
}

#[derive(Default)]
struct Queue {
    items: VecDeque<Item>,
    bytes: u64,
    /// Highest zxid accepted (or the Wal's last zxid at spawn): submissions must rise.
    last_submitted: Zxid,
    closed: bool,
    failed: Option<String>,
    /// The writer thread is parked on the condvar; only then is a wake-up needed, which
    /// keeps a futex syscall off every submit while the thread is busy fsyncing.
    writer_waiting: bool,
}

/// Counters of the writer thread, for `mntr` and metrics.
#[derive(Debug, Default)]
pub struct LogStats {
    /// Appends (one write + one fdatasync each).
    pub batches: AtomicU64,
    pub entries: AtomicU64,
    pub append_us_total: AtomicU64,
    pub append_us_max: AtomicU64,
}

struct Shared {
    stats: LogStats,
    queue: Mutex<Queue>,
    /// The log. The writer thread locks it for each batch; `commit_inline` locks it
    /// (while holding `queue`) only when the writer thread is parked.
    wal: Mutex<Wal>,
    wake: Condvar,
    /// Writes snapshot files without the `wal` lock ([`LogWriter::snapshot_beside`]).
    files: SnapshotFiles,
    cfg: LogWriterConfig,
    entry_bytes_max: u64,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        // A panic while holding this lock cannot leave the queue inconsistent (every
        // critical section is a few field updates), so poisoning is ignored.
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn wal(&self) -> MutexGuard<'_, Wal> {
        // A panic inside an append leaves the Wal poisoned by its own rules (it
        // refuses further appends after a failed write), so the mutex's poisoning
        // adds nothing.
        self.wal.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Appends one batch and counts it.
    fn append(&self, wal: &mut Wal, batch: &[(Zxid, Bytes)]) -> Result<(), StorageError> {
        let refs: Vec<(Zxid, &[u8])> = batch.iter().map(|(z, e)| (*z, &e[..])).collect();
        let started = Instant::now();
        let res = wal.append(&refs);
        let us = started.elapsed().as_micros() as u64;
        let stats = &self.stats;
        stats.batches.fetch_add(1, Ordering::Relaxed);
        stats
            .entries
            .fetch_add(refs.len() as u64, Ordering::Relaxed);
        stats.append_us_total.fetch_add(us, Ordering::Relaxed);
        stats.append_us_max.fetch_max(us, Ordering::Relaxed);
        res
    }
}

struct Inner {
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Inner {
    fn close_and_join(&self) {
        {
            let mut q = self.shared.lock();
            q.closed = true;
        }
        self.shared.wake.notify_all();
        let handle = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(h) = handle {
            if h.join().is_err() {
                error!("log writer thread panicked");
            }
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.close_and_join();
    }
}

/// Handle to the writer thread. Clones share it; the thread stops after `shutdown` or
/// when the last clone is dropped, in both cases after writing everything submitted.
#[derive(Clone)]
pub struct LogWriter {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for LogWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogWriter").finish_non_exhaustive()
    }
}

impl LogWriter {
    /// Starts the writer thread. The `wal` is written by that thread, or by
    /// [`commit_inline`](Self::commit_inline) on the caller's thread while it is parked.
    pub fn spawn(wal: Wal, cfg: LogWriterConfig) -> (LogWriter, mpsc::UnboundedReceiver<Durable>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            stats: LogStats::default(),
            queue: Mutex::new(Queue {
                last_submitted: wal.last_zxid(),
                ..Queue::default()
            }),
            wake: Condvar::new(),
            files: wal.snapshot_files(),
            entry_bytes_max: wal.entry_bytes_max(),
            wal: Mutex::new(wal),
            cfg,
        });
        let thread_shared = shared.clone();
        let handle = std::thread::Builder::new()
            .name("coordd-log-writer".into())
            .spawn(move || run(&thread_shared, &tx))
            .expect("spawning the log writer thread");
        let inner = Arc::new(Inner {
            shared,
            thread: Mutex::new(Some(handle)),
        });
        (LogWriter { inner }, rx)
    }

    /// Queues an entry; never blocks on I/O. Zxids must rise across calls (the caller
    /// submits in log order). Fails if the queue is at a bound, the zxid is out of
    /// order, the entry is too large, or the writer has stopped.
    pub fn submit(&self, zxid: Zxid, entry: Bytes) -> Result<(), StorageError> {
        self.enqueue(zxid, entry, true)
    }

    /// Like [`submit`](Self::submit) but leaves the writer thread parked: the caller
    /// follows up with [`commit_inline`](Self::commit_inline) or [`kick`](Self::kick).
    pub fn submit_deferred(&self, zxid: Zxid, entry: Bytes) -> Result<(), StorageError> {
        self.enqueue(zxid, entry, false)
    }

    /// Wakes the writer thread if it is parked with entries queued.
    pub fn kick(&self) {
        let shared = &self.inner.shared;
        let wake = {
            let q = shared.lock();
            q.writer_waiting && !q.items.is_empty()
        };
        if wake {
            shared.wake.notify_one();
        }
    }

    /// Writes the queued entries (one write, one fdatasync) on the calling thread if
    /// the writer thread is parked, so that nothing it holds can be older, and the
    /// queue holds only entries (a snapshot request stays with the thread). Returns the
    /// highest zxid now durable, or `None` when it left the work to the writer thread
    /// (which it then wakes). Only the thread that submits may call it: it relies on no
    /// entry being submitted while it writes.
    pub fn commit_inline(&self) -> Result<Option<Zxid>, StorageError> {
        let shared = &self.inner.shared;
        let mut q = shared.lock();
        check_open(&q)?;
        let entries_only = q.items.iter().all(|i| matches!(i, Item::Entry(..)));
        if q.items.is_empty() || !q.writer_waiting || !entries_only {
            let wake = q.writer_waiting && !q.items.is_empty();
            drop(q);
            if wake {
                shared.wake.notify_one();
            }
            return Ok(None);
        }
        let batch: Vec<(Zxid, Bytes)> = q
            .items
            .drain(..)
            .filter_map(|i| match i {
                Item::Entry(z, e) => Some((z, e)),
                Item::Snapshot(..) => None, // excluded above
            })
            .collect();
        q.bytes = 0;
        // The queue stays locked while writing: the parked writer thread cannot take
        // anything, and `close` waits, so the log order is the submission order.
        let res = {
            let mut wal = shared.wal();
            shared.append(&mut wal, &batch)
        };
        match res {
            Ok(()) => Ok(batch.last().map(|&(z, _)| z)),
            Err(e) => {
                error!(error = %e, "inline log write failed; the server must stop");
                q.failed = Some(e.to_string());
                q.items.clear();
                Err(e)
            }
        }
    }

    fn enqueue(&self, zxid: Zxid, entry: Bytes, wake_writer: bool) -> Result<(), StorageError> {
        let shared = &self.inner.shared;
        let len = entry.len() as u64;
        if len > shared.entry_bytes_max {
            return Err(StorageError::TooLarge {
                what: "entry",
                len,
                limit: "entry_bytes_max",
                max: shared.entry_bytes_max,
            });
        }
        let mut q = shared.lock();
        check_open(&q)?;
        if zxid <= q.last_submitted {
            return Err(StorageError::InvalidAppend(format!(
                "zxid {zxid} is not above the last submitted {}",
                q.last_submitted
            )));
        }
        if q.items.len() >= shared.cfg.queue_entries_max {
            return Err(StorageError::QueueFull {
                limit: "queue_entries_max",
                max: shared.cfg.queue_entries_max as u64,
            });
        }
        if q.bytes + len > shared.cfg.queue_bytes_max && !q.items.is_empty() {
            return Err(StorageError::QueueFull {
                limit: "queue_bytes_max",
                max: shared.cfg.queue_bytes_max,
            });
        }
        q.items.push_back(Item::Entry(zxid, entry));
        q.bytes += len;
        q.last_submitted = zxid;
        let wake = wake_writer && q.writer_waiting;
        drop(q);
        if wake {
            shared.wake.notify_one();
        }
        Ok(())
    }

    /// Queues a snapshot image taken at `zxid`, to be written after every entry
    /// submitted before it. Its outcome is reported only if it fails.
    pub fn snapshot(&self, zxid: Zxid, image: Vec<u8>) -> Result<(), StorageError> {
        self.queue_snapshot(zxid, Some(image))
    }

    /// Writes a snapshot image taken at `zxid` on the calling thread, beside the log
    /// (the writer thread goes on appending meanwhile; a big image takes a while to
    /// write and fsync), then queues its adoption as the log's newest snapshot behind
    /// the entries submitted before. Every entry up to `zxid` must be durable already:
    /// recovery may use the file as soon as it is written. A failure to write it leaves
    /// the log as it was and is returned, not fatal.
    pub fn snapshot_beside(&self, zxid: Zxid, image: &[u8]) -> Result<(), StorageError> {
        check_open(&self.inner.shared.lock())?;
        self.inner.shared.files.write(zxid, image)?;
        self.queue_snapshot(zxid, None)
    }

    fn queue_snapshot(&self, zxid: Zxid, image: Option<Vec<u8>>) -> Result<(), StorageError> {
        let shared = &self.inner.shared;
        let mut q = shared.lock();
        check_open(&q)?;
        if q.items.len() >= shared.cfg.queue_entries_max {
            return Err(StorageError::QueueFull {
                limit: "queue_entries_max",
                max: shared.cfg.queue_entries_max as u64,
            });
        }
        q.items.push_back(Item::Snapshot(zxid, image));
        // A snapshot above the log (installed) moves the floor for later entries, as
        // in Wal::save_snapshot.
        q.last_submitted = q.last_submitted.max(zxid);
        let wake = q.writer_waiting;
        drop(q);
        if wake {
            shared.wake.notify_one();
        }
        Ok(())
    }

    /// The writer thread's counters.
    pub fn stats(&self) -> &LogStats {
        &self.inner.shared.stats
    }

    /// Writes everything submitted so far, stops the thread and waits for it. Other
    /// clones fail with `WriterStopped` afterwards.
    pub fn shutdown(self) {
        self.inner.close_and_join();
    }
}

fn check_open(q: &Queue) -> Result<(), StorageError> {
    if let Some(why) = &q.failed {
        return Err(StorageError::WriterStopped(why.clone()));
    }
    if q.closed {
        return Err(StorageError::WriterStopped("shut down".into()));
    }
    Ok(())
}

fn run(shared: &Shared, tx: &mpsc::UnboundedSender<Durable>) {
    let mut batch: Vec<(Zxid, Bytes)> = Vec::new();
    loop {
        let mut snapshot = None;
        {
            let mut q = shared.lock();
            while q.items.is_empty() && !q.closed {
                q.writer_waiting = true;
                q = shared.wake.wait(q).unwrap_or_else(|p| p.into_inner());
                q.writer_waiting = false;
            }
            if q.items.is_empty() {
                break; // closed and drained
            }
            let mut bytes = 0u64;
            while let Some(item) = q.items.front() {
                match item {
                    Item::Entry(_, e) => {
                        let len = e.len() as u64;
                        if !batch.is_empty() && bytes + len > shared.cfg.batch_bytes_max {
                            break;
                        }
                        bytes += len;
                        q.bytes -= len;
                        if let Some(Item::Entry(z, e)) = q.items.pop_front() {
                            batch.push((z, e));
                        }
                    }
                    Item::Snapshot(..) => {
                        // Entries before it go first, in their own batch.
                        if batch.is_empty() {
                            if let Some(Item::Snapshot(z, image)) = q.items.pop_front() {
                                snapshot = Some((z, image));
                            }
                        }
                        break;
                    }
                }
            }
        }
        if let Some(&(last, _)) = batch.last() {
            let res = shared.append(&mut shared.wal(), &batch);
            batch.clear();
            match res {
                Ok(()) => {
                    // The receiver may be gone during shutdown; nothing to tell then.
                    let _ = tx.send(Durable::UpTo(last));
                }
                Err(e) => return fail(shared, tx, e),
            }
        }
        if let Some((z, image)) = snapshot {
            let saved = match image {
                Some(image) => shared.wal().save_snapshot(z, &image),
                None => shared.wal().adopt_snapshot(z),
            };
            match saved {
                Ok(()) => {}
                // A rejected request (older than the newest snapshot, too large) wrote
                // nothing and leaves the log intact: not a reason to stop the server.
                Err(e @ (StorageError::InvalidAppend(_) | StorageError::TooLarge { .. })) => {
                    error!(zxid = z, error = %e, "snapshot rejected");
                }
                Err(e) => return fail(shared, tx, e),
            }
        }
    }
    info!(last_zxid = shared.wal().last_zxid(), "log writer stopped");
}

fn fail(shared: &Shared, tx: &mpsc::UnboundedSender<Durable>, e: StorageError) {
    let msg = e.to_string();
    error!(error = %msg, "log writer failed; the server must stop");
    {
        let mut q = shared.lock();
        q.failed = Some(msg.clone());
        // Nothing queued will ever be written; free it.
        q.items.clear();
        q.bytes = 0;
    }
    let _ = tx.send(Durable::Failed(msg));
}
