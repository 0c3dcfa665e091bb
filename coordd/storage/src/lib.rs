//! Durable storage for coordd: a write-ahead log of entries keyed by zxid, plus
//! snapshots of the state machine and small atomically replaced files, in one data
//! directory.
//!
//! Two users: the standalone server (entries keyed by zxid, [`LogWriter`] group commit)
//! and coordd-raft's `DiskLogStore` (entries keyed by Raft log index + 1, so that the
//! first index, 0, is zxid 1; a Raft truncate is [`Wal::truncate_after`], a purge is
//! [`Wal::save_snapshot`] of the purged log id, the vote and the state machine's
//! snapshot are [`Wal::save_file`]s).
//!
//! Standalone coordd runs every write as: request -> log entry -> fsync -> apply ->
//! reply. This crate is the "log entry -> fsync" part and the recovery that rebuilds
//! the state after a restart. It knows nothing about the tree, sessions or the wire
//! protocol (entries and snapshot images are opaque bytes), so the server (re-exported
//! there as `coordd::storage`) and the Raft log of coordd-raft share it.
//!
//! # Invariants
//!
//! * **An append that returned Ok survives kill -9 and power loss.** `Wal::append`
//!   returns only after one `write_all` of the whole batch and one `fdatasync`
//!   (`File::sync_data`); a new segment or snapshot file is fsynced and so is its
//!   directory before anything depends on it.
//! * **Recovery returns exactly a prefix of what was appended** (with truncations
//!   applied: the log as it was after some prefix of the calls), and that prefix holds
//!   every acknowledged entry; a truncation that returned Ok is never undone. A batch (one `append`) is all-or-nothing: its records
//!   carry the batch's base zxid and a countdown, and an incomplete batch at the tail is
//!   dropped whole, so a torn multi-page write whose pages reached the disk out of order
//!   cannot resurface as a partial batch.
//! * **Only an unacknowledged tail may be discarded.** A damaged record is treated as a
//!   torn tail (truncated, with a `warn!`) only when nothing written after it is valid:
//!   no valid record of a later batch in the same segment and no valid record in any
//!   later segment. Anything else — a bad record followed by good ones, a gap or overlap
//!   in the zxid chain, a log that does not connect to the snapshot — is a hard
//!   [`StorageError::Corrupt`] naming the file and offset. Acknowledged writes are never
//!   dropped silently.
//! * **After a failed write or fsync the `Wal` is poisoned** and every later call fails:
//!   the page cache may have thrown the dirty pages away (PostgreSQL's "fsyncgate"), so
//!   the only safe continuation is a restart that recovers from what is on disk.
//!   [`LogWriter`] reports that as [`Durable::Failed`] and stops; the server must stop.
//! * **One process per data directory**, enforced by `flock` on `dir/LOCK`.
//! * **Bounded memory**: a record length is checked against `entry_bytes_max` and
//!   against the bytes left in the file before anything is allocated, and the
//!   [`LogWriter`] queue is bounded in entries and bytes; a file's length likewise
//!   against `snapshot_bytes_max`. (Recovery returns the entries above the snapshot in
//!   memory: bounded by how often the user snapshots.)
//! * **Every I/O call passes a fault point** ([`FaultHook`]), so crash tests can cut
//!   the disk's history at any byte.
//!
//! # On-disk layout (all integers little-endian)
//!
//! ```text
//! dir/LOCK                         flock(2) target, empty
//! dir/log.<n, 16 hex>              a log segment; n = the zxid of its first record, or
//!                                  one above the previous segment's n if that is not
//!                                  higher (after a truncation): names rise in order
//! dir/snapshot.<zxid, 16 hex>      a snapshot image
//! dir/<name>                       a file saved by Wal::save_file ([a-z0-9_-], no dot)
//! dir/*.tmp                        partially written files, removed at open
//!
//! segment  = segment header (16 bytes) then records, then zeros (preallocated space)
//!   header = magic "coordlog" | u32 version (1) | u32 crc32 of the previous 12 bytes
//! record   = header (32 bytes) then payload
//!   u32 magic "CDRL" (an entry) or "CDRJ" (a jump marker: written first in the first
//!       batch after a snapshot installed ahead of the log; its zxid is the snapshot's,
//!       it has no payload and is never returned; recovery refuses a log whose jump is
//!       not covered by the snapshot it recovered from) or "CDRT" (a truncate marker,
//!       alone in its batch: its zxid t is below its base, and recovery deletes every
//!       entry above t read before it; the next batch's base is t)
//!   u32 crc32 (crc32fast) of bytes 8..32 of this header and of the payload
//!   u32 payload length (<= entry_bytes_max)
//!   u32 remaining: records after this one in the same batch (0 = batch complete)
//!   i64 zxid
//!   i64 batch base: the zxid of the log's last record (entry, jump marker, or a
//!       truncate marker's t) when the batch was written; equal for every record of one
//!       batch; chains batches together
//!
//! snapshot = magic "coordsnp" | u32 version (1) | u32 crc32 of the next 16 bytes and
//!            the image | i64 zxid | u64 image length | image
//! file     = magic "coordfil" | u32 version (1) | u32 crc32 of the next 8 bytes and
//!            the contents | u64 contents length | contents
//! ```
//!
//! A batch never spans segments; a segment is rolled (and the old one trimmed to its
//! exact length) before a batch when it has reached `segment_bytes_max`.

mod error;
mod file;
mod io;
mod lock;
mod record;
mod segment;
mod snapshot;
mod wal;
mod writer;

#[cfg(test)]
mod tests;

use std::path::PathBuf;
use std::sync::Arc;

pub use error::StorageError;
pub use io::{Fault, FaultHook, FaultInjector, IoOp};
pub use wal::{SnapshotFiles, Wal};
pub use writer::{Durable, LogStats, LogWriter, LogWriterConfig};

/// A zxid: the log index of an entry. Positive and strictly increasing in the log.
pub type Zxid = i64;

/// Default for [`StorageConfig::segment_bytes_max`]: 64 MiB, ZooKeeper's log file size.
pub const DEFAULT_SEGMENT_BYTES_MAX: u64 = 64 << 20;
/// Default for [`StorageConfig::preallocate_bytes`]: 64 MiB, ZooKeeper's `preAllocSize`.
pub const DEFAULT_PREALLOCATE_BYTES: u64 = 64 << 20;
/// Default for [`StorageConfig::snapshots_kept`].
pub const DEFAULT_SNAPSHOTS_KEPT: usize = 3;
/// Default for [`StorageConfig::entry_bytes_max`]: 16 MiB (ZooKeeper's jute.maxbuffer
/// is 1 MiB for a request; an entry adds a small header to it, so this is generous).
pub const DEFAULT_ENTRY_BYTES_MAX: u64 = 16 << 20;
/// Default for [`StorageConfig::snapshot_bytes_max`]: 4 GiB.
pub const DEFAULT_SNAPSHOT_BYTES_MAX: u64 = 4 << 30;

/// Where and how the log and snapshots are stored.
#[derive(Clone, Debug)]
pub struct StorageConfig {
    /// The data directory; created if missing.
    pub dir: PathBuf,
    /// fdatasync every append (and fsync new files and the directory). `false` only via
    /// an explicit operator flag: acknowledged writes can then be lost on power failure,
    /// and `Wal::open` says so with a `warn!`.
    pub fsync: bool,
    /// A segment is rolled before the next batch once it has reached this size.
    pub segment_bytes_max: u64,
    /// New segments are preallocated (fallocate) to this size so that an fdatasync after
    /// an append need not also journal a new file size. 0 = off.
    pub preallocate_bytes: u64,
    /// Snapshots kept after a new one is written (at least 1). Log segments wholly
    /// covered by the oldest kept snapshot are removed.
    pub snapshots_kept: usize,
    /// Largest entry payload accepted by `append` and believed by recovery; a length
    /// field above it is corruption, never an allocation.
    pub entry_bytes_max: u64,
    /// Largest snapshot image accepted by `save_snapshot` and read back by recovery.
    pub snapshot_bytes_max: u64,
    /// Fault injection for tests: consulted before every I/O operation. `None` in
    /// production.
    pub faults: Option<Arc<dyn FaultHook>>,
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            dir: PathBuf::from("./data"),
            fsync: true,
            segment_bytes_max: DEFAULT_SEGMENT_BYTES_MAX,
            preallocate_bytes: DEFAULT_PREALLOCATE_BYTES,
            snapshots_kept: DEFAULT_SNAPSHOTS_KEPT,
            entry_bytes_max: DEFAULT_ENTRY_BYTES_MAX,
            snapshot_bytes_max: DEFAULT_SNAPSHOT_BYTES_MAX,
            faults: None,
        }
    }
}

/// What `Wal::open` found on disk.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Recovered {
    /// The newest snapshot whose checksum verifies: (zxid, image).
    pub snapshot: Option<(Zxid, Vec<u8>)>,
    /// Every logged entry with zxid > the snapshot's zxid (all of them without a
    /// snapshot), in zxid order, with no gaps in the log's chain.
    pub entries: Vec<(Zxid, Vec<u8>)>,
    /// Where each of `entries` lies (same order), for [`Wal::read_entries`].
    pub positions: Vec<EntryPos>,
}

/// Where an entry's record lies in the log: its segment (by the number in the segment's
/// name) and the record's offset there. Valid while the entry is live: a truncation or a
/// purge past it ends that.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntryPos {
    pub segment: Zxid,
    pub offset: u64,
}
