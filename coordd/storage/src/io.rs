//! Every filesystem operation of the storage module goes through [`Io`], which consults
//! an optional [`FaultHook`] first (fail points in the style of sled's). Tests use
//! [`FaultInjector`] to fail a write, make it short, fail an fsync, or simulate a crash
//! (power off after N more bytes); production passes no hook and pays one branch.

use std::collections::HashMap;
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::Path;
use std::sync::{Arc, Mutex};

use super::StorageError;

/// The kinds of I/O a fault can be injected into.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum IoOp {
    Open,
    Read,
    Write,
    /// fdatasync of a file.
    Sync,
    /// fsync of the data directory (makes creates, renames and removes durable).
    SyncDir,
    Rename,
    Remove,
    /// `set_len`: trimming a torn tail or a rolled segment.
    Truncate,
    /// fallocate of a new segment.
    Allocate,
}

/// What an injected fault does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// The operation fails without doing anything.
    Error,
    /// For writes: this many bytes of the buffer reach the file, then the write fails
    /// (a short write, or power lost mid-write). Other operations treat it as `Error`.
    Partial(usize),
}

/// Consulted before each I/O operation; `len` is the byte count of a write or read.
pub trait FaultHook: Send + Sync + fmt::Debug {
    fn before(&self, op: IoOp, path: &Path, len: usize) -> Option<Fault>;
}

/// A ready-made [`FaultHook`] for tests.
#[derive(Debug, Default)]
pub struct FaultInjector {
    state: Mutex<InjectorState>,
}

#[derive(Debug, Default)]
struct InjectorState {
    /// Bytes that may still be written before the simulated power-off.
    crash_budget: Option<u64>,
    crashed: bool,
    written: u64,
    counts: HashMap<IoOp, u64>,
    /// (op, fire when counts[op] reaches this, fault)
    armed: Vec<(IoOp, u64, Fault)>,
}

impl FaultInjector {
    pub fn new() -> Arc<FaultInjector> {
        Arc::new(FaultInjector::default())
    }

    /// Simulates power loss after `n` more bytes have been written (counted over all
    /// files): the write that crosses the budget writes only its first bytes, and every
    /// operation after that fails, so the disk holds exactly a byte prefix of the writes.
    pub fn crash_after_bytes(&self, n: u64) {
        self.state.lock().unwrap().crash_budget = Some(n);
    }

    /// Makes the `nth` (1-based, counted from now) operation of kind `op` fail with
    /// `fault`.
    pub fn fail_nth(&self, op: IoOp, nth: u64, fault: Fault) {
        let mut s = self.state.lock().unwrap();
        let at = s.counts.get(&op).copied().unwrap_or(0) + nth.max(1);
        s.armed.push((op, at, fault));
    }

    /// Whether the simulated power-off has happened.
    pub fn crashed(&self) -> bool {
        self.state.lock().unwrap().crashed
    }

    /// Bytes written through the hook so far.
    pub fn bytes_written(&self) -> u64 {
        self.state.lock().unwrap().written
    }

    /// How many operations of kind `op` have been attempted.
    pub fn count(&self, op: IoOp) -> u64 {
        self.state
            .lock()
            .unwrap()
            .counts
            .get(&op)
            .copied()
            .unwrap_or(0)
    }
}

impl FaultHook for FaultInjector {
    fn before(&self, op: IoOp, _path: &Path, len: usize) -> Option<Fault> {
        let mut s = self.state.lock().unwrap();
        if s.crashed {
            return Some(Fault::Error);
        }
        let n = {
            let c = s.counts.entry(op).or_insert(0);
            *c += 1;
            *c
        };
        if let Some(i) = s.armed.iter().position(|&(o, at, _)| o == op && at == n) {
            let (_, _, fault) = s.armed.remove(i);
            if let Fault::Partial(k) = fault {
                s.written += k.min(len) as u64;
            }
            return Some(fault);
        }
        if op == IoOp::Write {
            if let Some(budget) = s.crash_budget {
                if len as u64 >= budget && len > 0 {
                    // The write that reaches the budget is the last thing to hit the disk
                    // (even when it fits exactly: the crash happens before it returns).
                    s.crashed = true;
                    s.written += budget;
                    s.crash_budget = Some(0);
                    return Some(Fault::Partial(budget as usize));
                }
                s.crash_budget = Some(budget - len as u64);
            }
            s.written += len as u64;
        }
        None
    }
}

fn injected(op: IoOp) -> io::Error {
    io::Error::other(format!("injected fault: {op:?}"))
}

/// The storage module's gateway to the filesystem.
#[derive(Clone, Debug)]
pub(crate) struct Io {
    hook: Option<Arc<dyn FaultHook>>,
    /// When false, sync calls are skipped (the operator asked for it explicitly).
    fsync: bool,
}

impl Io {
    pub(crate) fn new(hook: Option<Arc<dyn FaultHook>>, fsync: bool) -> Io {
        Io { hook, fsync }
    }

    fn check(&self, op: IoOp, path: &Path, len: usize) -> Result<Option<usize>, io::Error> {
        match self.hook.as_ref().and_then(|h| h.before(op, path, len)) {
            None => Ok(None),
            Some(Fault::Partial(k)) if op == IoOp::Write => Ok(Some(k.min(len))),
            Some(_) => Err(injected(op)),
        }
    }

    pub(crate) fn open(&self, path: &Path, opts: &OpenOptions) -> Result<File, StorageError> {
        self.check(IoOp::Open, path, 0)
            .and_then(|_| opts.open(path))
            .map_err(|e| StorageError::io("open", path, e))
    }

    /// Reads exactly `buf.len()` bytes at `offset`.
    pub(crate) fn read_exact_at(
        &self,
        file: &File,
        path: &Path,
        offset: u64,
        buf: &mut [u8],
    ) -> Result<(), StorageError> {
        self.check(IoOp::Read, path, buf.len())
            .and_then(|_| file.read_exact_at(buf, offset))
            .map_err(|e| StorageError::io("read", path, e))
    }

    /// Writes all of `buf` at `offset` (pwrite, so no shared file position).
    pub(crate) fn write_all_at(
        &self,
        file: &File,
        path: &Path,
        offset: u64,
        buf: &[u8],
    ) -> Result<(), StorageError> {
        let res = match self.check(IoOp::Write, path, buf.len()) {
            Ok(None) => file.write_all_at(buf, offset),
            Ok(Some(k)) => file
                .write_all_at(&buf[..k], offset)
                .and_then(|_| Err(injected(IoOp::Write))),
            Err(e) => Err(e),
        };
        res.map_err(|e| StorageError::io("write", path, e))
    }

    /// fdatasync: the data and the metadata needed to read it back (the file size).
    pub(crate) fn sync_data(&self, file: &File, path: &Path) -> Result<(), StorageError> {
        // The hook sees the sync even with fsync off, so fault tests can run fast.
        self.check(IoOp::Sync, path, 0)
            .and_then(|_| if self.fsync { file.sync_data() } else { Ok(()) })
            .map_err(|e| StorageError::io("fdatasync", path, e))
    }

    /// fsync of a directory, so that creates, renames and removes in it are durable.
    pub(crate) fn sync_dir(&self, dir: &Path) -> Result<(), StorageError> {
        self.check(IoOp::SyncDir, dir, 0)
            .and_then(|_| {
                if self.fsync {
                    File::open(dir)?.sync_all()
                } else {
                    Ok(())
                }
            })
            .map_err(|e| StorageError::io("fsync directory", dir, e))
    }

    pub(crate) fn rename(&self, from: &Path, to: &Path) -> Result<(), StorageError> {
        self.check(IoOp::Rename, from, 0)
            .and_then(|_| std::fs::rename(from, to))
            .map_err(|e| StorageError::io("rename", from, e))
    }

    pub(crate) fn remove(&self, path: &Path) -> Result<(), StorageError> {
        self.check(IoOp::Remove, path, 0)
            .and_then(|_| std::fs::remove_file(path))
            .map_err(|e| StorageError::io("remove", path, e))
    }

    pub(crate) fn set_len(&self, file: &File, path: &Path, len: u64) -> Result<(), StorageError> {
        self.check(IoOp::Truncate, path, 0)
            .and_then(|_| file.set_len(len))
            .map_err(|e| StorageError::io("truncate", path, e))
    }

    /// Extends the file to at least `len` bytes with allocated, zero-reading blocks.
    /// Falls back to a sparse `set_len` where fallocate is unsupported: the file size
    /// is then still fixed ahead of the appends, which is the part fdatasync cares
    /// about.
    pub(crate) fn allocate(&self, file: &File, path: &Path, len: u64) -> Result<(), StorageError> {
        self.check(IoOp::Allocate, path, 0)
            .and_then(|_| {
                let len_i = libc::off_t::try_from(len)
                    .map_err(|_| io::Error::other("preallocation size overflows off_t"))?;
                // SAFETY: fallocate on a valid open descriptor with in-range arguments.
                let rc = unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, len_i) };
                if rc == 0 {
                    return Ok(());
                }
                let err = io::Error::last_os_error();
                match err.raw_os_error() {
                    Some(libc::EOPNOTSUPP) | Some(libc::ENOSYS) => {
                        if file.metadata()?.len() < len {
                            file.set_len(len)?;
                        }
                        Ok(())
                    }
                    _ => Err(err),
                }
            })
            .map_err(|e| StorageError::io("fallocate", path, e))
    }
}
