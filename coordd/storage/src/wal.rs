//! The write-ahead log: segment files of batches, snapshots beside them, and the
//! recovery that turns a data directory back into (snapshot, entries after it).

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};

use tracing::{debug, error, info, warn};

use super::file;
use super::io::Io;
use super::lock::DirLock;
use super::record::{encode_record, segment_header, Kind, SEGMENT_HEADER_LEN};
use super::segment::{parse_segment_name, segment_file_name, ScannedRecord, SegmentReader, Stop};
use super::snapshot::{self, parse_snapshot_name, snapshot_file_name};
use super::{EntryPos, Recovered, StorageConfig, StorageError, Zxid};

/// The batch buffer is kept between appends to avoid reallocating; past this capacity
/// (one unusually large batch) it is released instead.
const BATCH_BUFFER_KEEP_BYTES: usize = 16 << 20;

/// What `recover_log` returns: the live entries above the snapshot and their places.
type RecoveredLog = (Vec<(Zxid, Vec<u8>)>, Vec<EntryPos>);

/// The durable log. Owned by one thread (the [`super::LogWriter`] in the server).
pub struct Wal {
    cfg: StorageConfig,
    io: Io,
    _lock: DirLock,
    /// All segments in zxid order; the last one is the active one when `active` is set.
    segments: Vec<SegmentMeta>,
    active: Option<Active>,
    /// Zxid of the last record in the log (entry, jump marker, or the new last zxid of a
    /// truncate marker); 0 for an empty log.
    /// The next batch's base, so batches chain.
    last_log_zxid: Zxid,
    /// max(last_log_zxid, newest snapshot zxid): appends must be above it.
    last_zxid: Zxid,
    /// Zxids of the snapshot files on disk, ascending.
    snapshots: Vec<Zxid>,
    buf: Vec<u8>,
    /// Set by the first failed write or fsync; see the module doc.
    poisoned: Option<String>,
}

impl std::fmt::Debug for Wal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Wal")
            .field("dir", &self.cfg.dir)
            .field("segments", &self.segments.len())
            .field("last_log_zxid", &self.last_log_zxid)
            .field("last_zxid", &self.last_zxid)
            .field("snapshots", &self.snapshots)
            .field("poisoned", &self.poisoned)
            .finish_non_exhaustive()
    }
}

#[derive(Debug)]
struct SegmentMeta {
    path: PathBuf,
    /// Zxid of its last record; None while it has none.
    last_zxid: Option<Zxid>,
}

/// Writes snapshot files for a [`Wal`] without holding it ([`Wal::snapshot_files`]).
#[derive(Debug, Clone)]
pub struct SnapshotFiles {
    io: Io,
    dir: PathBuf,
    bytes_max: u64,
}

impl SnapshotFiles {
    /// Writes the image taken at `zxid` durably (a temporary file, fsynced, renamed, the
    /// directory fsynced), with the checks of [`Wal::save_snapshot`] on its zxid and
    /// size. Recovery may use it from then on, adopted or not: every entry up to `zxid`
    /// must already be durable in the log.
    pub fn write(&self, zxid: Zxid, image: &[u8]) -> Result<(), StorageError> {
        check_snapshot_image(zxid, image, self.bytes_max)?;
        snapshot::write(&self.io, &self.dir, zxid, image)
    }
}

/// A snapshot image's zxid and size, checked before anything is written.
fn check_snapshot_image(zxid: Zxid, image: &[u8], bytes_max: u64) -> Result<(), StorageError> {
    if zxid < 0 {
        return Err(StorageError::InvalidAppend(format!(
            "snapshot zxid {zxid} is negative"
        )));
    }
    if image.len() as u64 > bytes_max {
        return Err(StorageError::TooLarge {
            what: "snapshot image",
            len: image.len() as u64,
            limit: "snapshot_bytes_max",
            max: bytes_max,
        });
    }
    Ok(())
}

#[derive(Debug)]
struct Active {
    file: File,
    path: PathBuf,
    /// The number in its name ([`EntryPos::segment`]).
    number: Zxid,
    /// Where the next batch goes: the end of the last complete batch.
    len: u64,
    /// File size fixed by preallocation (or the real size, if larger).
    allocated: u64,
}

impl Wal {
    /// Locks the data directory, recovers it (see the module doc for what is repaired
    /// and what is refused) and returns the log ready for appends.
    pub fn open(cfg: StorageConfig) -> Result<(Wal, Recovered), StorageError> {
        validate(&cfg)?;
        if !cfg.fsync {
            warn!(
                dir = %cfg.dir.display(),
                "fsync is disabled: acknowledged writes can be lost on power failure or OS crash"
            );
        }
        let io = Io::new(cfg.faults.clone(), cfg.fsync);
        let dir = cfg.dir.clone();
        if !dir.exists() {
            std::fs::create_dir_all(&dir)
                .map_err(|e| StorageError::io("create directory", &dir, e))?;
            if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                io.sync_dir(parent)?;
            }
        }
        let lock = DirLock::acquire(&dir)?;

        let mut segs: Vec<(Zxid, PathBuf)> = Vec::new();
        let mut snaps: Vec<(Zxid, PathBuf)> = Vec::new();
        let mut dirty_dir = false;
        let listing =
            std::fs::read_dir(&dir).map_err(|e| StorageError::io("list directory", &dir, e))?;
        for ent in listing {
            let ent = ent.map_err(|e| StorageError::io("list directory", &dir, e))?;
            let name = ent.file_name();
            let Some(name) = name.to_str() else { continue };
            let path = ent.path();
            if name.ends_with(".tmp") {
                // A segment or snapshot whose creation did not finish; nothing refers
                // to it.
                info!(path = %path.display(), "removing unfinished temporary file");
                io.remove(&path)?;
                dirty_dir = true;
            } else if let Some(z) = parse_segment_name(name) {
                segs.push((z, path));
            } else if let Some(z) = parse_snapshot_name(name) {
                snaps.push((z, path));
            }
        }
        segs.sort();
        snaps.sort();

        // Newest valid snapshot; a damaged one is set aside (renamed, for forensics)
        // and the previous one is tried.
        let mut chosen: Option<(Zxid, Vec<u8>)> = None;
        while let Some((z, path)) = snaps.pop() {
            match snapshot::read(&io, &path, z, cfg.snapshot_bytes_max)? {
                Ok(image) => {
                    chosen = Some((z, image));
                    snaps.push((z, path));
                    break;
                }
                Err(reason) => {
                    let mut aside = path.clone().into_os_string();
                    aside.push(".corrupt");
                    let aside = PathBuf::from(aside);
                    warn!(
                        path = %path.display(), %reason,
                        "snapshot is corrupt; renaming it to {} and falling back to an older one",
                        aside.display()
                    );
                    io.rename(&path, &aside)?;
                    dirty_dir = true;
                }
            }
        }
        let snap_zxid = chosen.as_ref().map_or(0, |(z, _)| *z);

        let mut wal = Wal {
            io,
            _lock: lock,
            segments: Vec::new(),
            active: None,
            last_log_zxid: 0,
            last_zxid: 0,
            snapshots: snaps.iter().map(|(z, _)| *z).collect(),
            buf: Vec::new(),
            poisoned: None,
            cfg,
        };
        let (entries, positions) = wal.recover_log(&segs, snap_zxid)?;
        wal.last_zxid = wal.last_log_zxid.max(snap_zxid);
        if dirty_dir {
            wal.io.sync_dir(&dir)?;
        }
        info!(
            dir = %dir.display(),
            snapshot = snap_zxid,
            entries = entries.len(),
            last_zxid = wal.last_zxid,
            segments = wal.segments.len(),
            "storage recovered"
        );
        Ok((
            wal,
            Recovered {
                snapshot: chosen,
                entries,
                positions,
            },
        ))
    }

    /// Where the live entry with `zxid` lies: (segment file, offset of its record), or `None`
    /// if the log does not hold it. Reads the segments (slow): meant for error messages, e.g.
    /// naming the place of an entry whose payload the caller cannot decode. After a
    /// truncation the same zxid can occur twice; the later record is the live one.
    pub fn locate(&self, zxid: Zxid) -> Result<Option<(PathBuf, u64)>, StorageError> {
        let mut found = None;
        for seg in &self.segments {
            let mut r = SegmentReader::open(&self.io, &seg.path, self.cfg.entry_bytes_max)?;
            for rec in r.scan()?.records {
                if rec.kind == Kind::Entry && rec.header.zxid == zxid {
                    found = Some((seg.path.clone(), rec.offset));
                } else if rec.kind == Kind::Truncate && rec.header.zxid < zxid {
                    found = None;
                }
            }
        }
        Ok(found)
    }

    /// The highest zxid the log or a snapshot holds; appends must be above it.
    pub fn last_zxid(&self) -> Zxid {
        self.last_zxid
    }

    pub(crate) fn entry_bytes_max(&self) -> u64 {
        self.cfg.entry_bytes_max
    }

    /// Appends entries (zxids strictly increasing, each above `last_zxid()`) with one
    /// write and one fdatasync. On Ok they are durable. On an I/O error the `Wal` is
    /// poisoned; on a validation error (order, size) nothing was written and it is not.
    pub fn append(&mut self, entries: &[(Zxid, &[u8])]) -> Result<(), StorageError> {
        self.append_at(entries).map(|_| ())
    }

    /// [`Wal::append`], returning where each entry's record lies, for
    /// [`Wal::read_entries`].
    pub fn append_at(&mut self, entries: &[(Zxid, &[u8])]) -> Result<Vec<EntryPos>, StorageError> {
        self.check_usable()?;
        let Some(&(last, _)) = entries.last() else {
            return Ok(Vec::new());
        };
        let mut prev = self.last_zxid;
        for &(z, p) in entries {
            if z <= prev {
                return Err(StorageError::InvalidAppend(format!(
                    "zxid {z} is not above {prev}"
                )));
            }
            if p.len() as u64 > self.cfg.entry_bytes_max {
                return Err(StorageError::TooLarge {
                    what: "entry",
                    len: p.len() as u64,
                    limit: "entry_bytes_max",
                    max: self.cfg.entry_bytes_max,
                });
            }
            prev = z;
        }
        // A snapshot ahead of the log (installed from elsewhere) is recorded in the
        // log before the entries that follow it; see record::MARKER_MAGIC.
        let marker = self.last_zxid > self.last_log_zxid;
        let count = entries.len() + usize::from(marker);
        let Ok(count) = u32::try_from(count) else {
            return Err(StorageError::InvalidAppend(format!(
                "{count} entries in one batch"
            )));
        };
        let base = self.last_log_zxid;
        let mut remaining = count;
        let mut next = || {
            remaining -= 1;
            remaining
        };
        self.buf.clear();
        if marker {
            encode_record(&mut self.buf, Kind::Jump, self.last_zxid, base, next(), &[]);
        }
        // Offsets within the batch; the batch's place is known once it is written.
        let mut offsets = Vec::with_capacity(entries.len());
        for &(z, p) in entries {
            offsets.push(self.buf.len() as u64);
            encode_record(&mut self.buf, Kind::Entry, z, base, next(), p);
        }
        let first = if marker { self.last_zxid } else { entries[0].0 };
        let (segment, start) = match self.write_batch(first) {
            Ok(at) => at,
            Err(e) => {
                self.poison(&e);
                return Err(e);
            }
        };
        self.last_log_zxid = last;
        self.last_zxid = last;
        if let Some(seg) = self.segments.last_mut() {
            seg.last_zxid = Some(last);
        }
        Ok(offsets
            .into_iter()
            .map(|o| EntryPos {
                segment,
                offset: start + o,
            })
            .collect())
    }

    /// The payloads of live entries, read back from their segments: `wanted` pairs each
    /// entry's zxid with where [`Wal::append_at`] or recovery said it lies, in log order.
    /// A record that is not there (or not that entry) is `Corrupt`, naming the place.
    pub fn read_entries(&self, wanted: &[(Zxid, EntryPos)]) -> Result<Vec<Vec<u8>>, StorageError> {
        let mut out = Vec::with_capacity(wanted.len());
        let mut reader: Option<(Zxid, SegmentReader<'_>)> = None;
        for &(zxid, pos) in wanted {
            if reader.as_ref().is_none_or(|(n, _)| *n != pos.segment) {
                let path = self.cfg.dir.join(segment_file_name(pos.segment));
                let r = SegmentReader::open(&self.io, &path, self.cfg.entry_bytes_max)?;
                reader = Some((pos.segment, r));
            }
            let (_, r) = reader.as_mut().expect("opened above");
            if pos.offset >= r.len {
                return Err(StorageError::corrupt(
                    &r.path,
                    pos.offset,
                    format!("entry {zxid} lies past the end of its segment"),
                ));
            }
            match r.record_at(pos.offset)? {
                Ok(rec) if rec.kind == Kind::Entry && rec.header.zxid == zxid => {
                    out.push(rec.payload)
                }
                Ok(rec) => {
                    return Err(StorageError::corrupt(
                        &r.path,
                        pos.offset,
                        format!(
                            "expected entry {zxid} here, found a {:?} record of zxid {}",
                            rec.kind, rec.header.zxid
                        ),
                    ))
                }
                Err(reason) => {
                    return Err(StorageError::corrupt(
                        &r.path,
                        pos.offset,
                        format!("entry {zxid}: {reason}"),
                    ))
                }
            }
        }
        Ok(out)
    }

    /// Writes a snapshot image taken at `zxid` durably, then removes snapshots beyond
    /// `snapshots_kept` and the log segments wholly covered by the oldest kept one.
    /// `zxid` may be above the log (a snapshot installed from elsewhere); later appends
    /// must then be above it.
    pub fn save_snapshot(&mut self, zxid: Zxid, image: &[u8]) -> Result<(), StorageError> {
        self.check_usable()?;
        check_snapshot_image(zxid, image, self.cfg.snapshot_bytes_max)?;
        self.check_not_older(zxid)?;
        let saved = snapshot::write(&self.io, &self.cfg.dir, zxid, image)
            .and_then(|()| self.register_snapshot(zxid));
        if let Err(e) = saved {
            self.poison(&e);
            return Err(e);
        }
        Ok(())
    }

    /// Refuses a snapshot older than the newest one.
    fn check_not_older(&self, zxid: Zxid) -> Result<(), StorageError> {
        match self.snapshots.last() {
            Some(&newest) if zxid < newest => Err(StorageError::InvalidAppend(format!(
                "snapshot zxid {zxid} is below the newest snapshot {newest}"
            ))),
            _ => Ok(()),
        }
    }

    /// Deletes every entry with a zxid above `zxid`, durably (Raft's truncation of a
    /// conflicting suffix): one truncate marker record, written and fdatasynced like a
    /// batch of its own, which recovery honours. Later appends go above `zxid` (or above
    /// the newest snapshot, if higher). Truncating at or above the last logged zxid writes
    /// nothing. `zxid` must not be below the newest snapshot: what a snapshot covers is no
    /// longer the log's to delete. On an I/O error the `Wal` is poisoned.
    pub fn truncate_after(&mut self, zxid: Zxid) -> Result<(), StorageError> {
        self.check_usable()?;
        let floor = self.snapshots.last().copied().unwrap_or(0);
        if zxid < floor {
            return Err(StorageError::InvalidAppend(format!(
                "truncate to zxid {zxid} is below the newest snapshot {floor}"
            )));
        }
        if zxid >= self.last_log_zxid {
            return Ok(());
        }
        self.buf.clear();
        encode_record(
            &mut self.buf,
            Kind::Truncate,
            zxid,
            self.last_log_zxid,
            0,
            &[],
        );
        if let Err(e) = self.write_batch(zxid) {
            self.poison(&e);
            return Err(e);
        }
        self.last_log_zxid = zxid;
        self.last_zxid = zxid.max(floor);
        if let Some(seg) = self.segments.last_mut() {
            // The zxid the next segment's chain starts from; segment removal compares it
            // with the oldest snapshot.
            seg.last_zxid = Some(zxid);
        }
        Ok(())
    }

    /// Replaces the small file `dir/<name>` atomically and durably (see the `file` module:
    /// tmp, fdatasync, rename, fsync of the directory) before returning. Names are
    /// `[a-z0-9_-]`, at most 64 bytes; contents at most `snapshot_bytes_max`. On an I/O
    /// error the `Wal` is poisoned (the rename may or may not have happened).
    pub fn save_file(&mut self, name: &str, contents: &[u8]) -> Result<(), StorageError> {
        self.check_usable()?;
        file::check_name(name)?;
        if contents.len() as u64 > self.cfg.snapshot_bytes_max {
            return Err(StorageError::TooLarge {
                what: "file",
                len: contents.len() as u64,
                limit: "snapshot_bytes_max",
                max: self.cfg.snapshot_bytes_max,
            });
        }
        if let Err(e) = file::write(&self.io, &self.cfg.dir, name, contents) {
            self.poison(&e);
            return Err(e);
        }
        Ok(())
    }

    /// The contents of `dir/<name>` as last saved by [`save_file`](Self::save_file), or
    /// `None` if it was never saved. A damaged file is [`StorageError::Corrupt`].
    pub fn read_file(&self, name: &str) -> Result<Option<Vec<u8>>, StorageError> {
        file::check_name(name)?;
        file::read(
            &self.io,
            &self.cfg.dir.join(name),
            self.cfg.snapshot_bytes_max,
        )
    }

    /// A handle that writes snapshot files into this log's directory without the `Wal`
    /// (on another thread while it appends); [`Wal::adopt_snapshot`] then makes one
    /// count.
    pub fn snapshot_files(&self) -> SnapshotFiles {
        SnapshotFiles {
            io: self.io.clone(),
            dir: self.cfg.dir.clone(),
            bytes_max: self.cfg.snapshot_bytes_max,
        }
    }

    /// Takes the snapshot file at `zxid` that [`SnapshotFiles::write`] wrote as this
    /// log's newest snapshot: as [`Wal::save_snapshot`] does after writing it (older
    /// snapshots beyond `snapshots_kept` and the log segments the oldest kept one covers
    /// go). One older than the newest snapshot is refused and its file removed.
    pub fn adopt_snapshot(&mut self, zxid: Zxid) -> Result<(), StorageError> {
        self.check_usable()?;
        if let Err(refused) = self.check_not_older(zxid) {
            let stray = self.cfg.dir.join(snapshot_file_name(zxid));
            if let Err(e) = self.io.remove(&stray) {
                warn!(error = %e, "could not remove a refused snapshot file");
            }
            return Err(refused);
        }
        if let Err(e) = self.register_snapshot(zxid) {
            self.poison(&e);
            return Err(e);
        }
        Ok(())
    }

    /// Counts the snapshot file at `zxid` (written) as the newest, and removes what it
    /// makes unneeded.
    fn register_snapshot(&mut self, zxid: Zxid) -> Result<(), StorageError> {
        let dir = self.cfg.dir.clone();
        if self.snapshots.last() != Some(&zxid) {
            self.snapshots.push(zxid);
        }
        self.last_zxid = self.last_zxid.max(zxid);
        debug!(zxid, "snapshot saved");

        let mut removed = false;
        let kept = self.cfg.snapshots_kept.max(1);
        while self.snapshots.len() > kept {
            let z = self.snapshots.remove(0);
            self.io.remove(&dir.join(snapshot_file_name(z)))?;
            removed = true;
        }
        // Every kept snapshot must stay usable as a fallback, so only what the oldest
        // kept one covers can go. The last segment stays: it is (or becomes) the one
        // appended to.
        let oldest = self.snapshots[0];
        while self.segments.len() > 1 && self.segments[0].last_zxid.is_some_and(|l| l <= oldest) {
            let seg = self.segments.remove(0);
            debug!(path = %seg.path.display(), "removing log segment covered by snapshot {oldest}");
            self.io.remove(&seg.path)?;
            removed = true;
        }
        if removed {
            self.io.sync_dir(&dir)?;
        }
        Ok(())
    }

    fn check_usable(&self) -> Result<(), StorageError> {
        match &self.poisoned {
            Some(why) => Err(StorageError::Poisoned(why.clone())),
            None => Ok(()),
        }
    }

    fn poison(&mut self, e: &StorageError) {
        error!(error = %e, "storage write failed; refusing all further writes until restart");
        self.poisoned = Some(e.to_string());
    }

    /// Writes the batch in `buf` with one fdatasync; returns where it starts (segment
    /// number, offset).
    fn write_batch(&mut self, first: Zxid) -> Result<(Zxid, u64), StorageError> {
        let roll = self
            .active
            .as_ref()
            .is_none_or(|a| a.len >= self.cfg.segment_bytes_max);
        if roll {
            self.roll(first)?;
        }
        let Wal {
            io,
            active,
            buf,
            cfg,
            ..
        } = self;
        let a = active.as_mut().expect("rolled above");
        let end = a.len + buf.len() as u64;
        if end > a.allocated && cfg.preallocate_bytes > 0 {
            // A segment larger than the preallocation (big batch or big segment_bytes_max)
            // grows in preallocated steps too.
            let target = end + cfg.preallocate_bytes;
            io.allocate(&a.file, &a.path, target)?;
            a.allocated = target;
        }
        io.write_all_at(&a.file, &a.path, a.len, buf)?;
        io.sync_data(&a.file, &a.path)?;
        let start = a.len;
        a.len = end;
        a.allocated = a.allocated.max(end);
        if buf.capacity() > BATCH_BUFFER_KEEP_BYTES {
            *buf = Vec::new();
        }
        Ok((a.number, start))
    }

    /// Seals the active segment (trimmed to its last record, so reading a sealed
    /// segment back never wades through preallocated zeros) and starts a new one,
    /// created under a temporary name so that a segment file always has a whole
    /// header.
    fn roll(&mut self, first_zxid: Zxid) -> Result<(), StorageError> {
        if let Some(a) = self.active.take() {
            if a.allocated > a.len {
                self.io.set_len(&a.file, &a.path, a.len)?;
                self.io.sync_data(&a.file, &a.path)?;
            }
        }
        // Segment names must rise in creation order (recovery reads them in name order).
        // After a truncation the next first zxid can be at or below an existing segment's
        // name; such a segment is named one above the last one instead.
        let prev = self.segments.last().and_then(|s| {
            let number = s.path.file_name()?.to_str().and_then(parse_segment_name)?;
            Some((number, &s.path))
        });
        let number = match prev {
            // A segment named with the largest number (a crafted or damaged directory)
            // leaves no name above it: refused, never an overflow.
            Some((p, path)) if first_zxid <= p => p.checked_add(1).ok_or_else(|| {
                StorageError::corrupt(
                    path,
                    0,
                    format!(
                        "segment number {p} is the largest possible: no later segment can be \
                         named above it"
                    ),
                )
            })?,
            _ => first_zxid,
        };
        let name = segment_file_name(number);
        let path = self.cfg.dir.join(&name);
        let tmp = self.cfg.dir.join(format!("{name}.tmp"));
        let file = self.io.open(
            &tmp,
            OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true),
        )?;
        self.io.write_all_at(&file, &tmp, 0, &segment_header())?;
        let mut allocated = SEGMENT_HEADER_LEN as u64;
        if self.cfg.preallocate_bytes > allocated {
            self.io.allocate(&file, &tmp, self.cfg.preallocate_bytes)?;
            allocated = self.cfg.preallocate_bytes;
        }
        self.io.sync_data(&file, &tmp)?;
        self.io.rename(&tmp, &path)?;
        self.io.sync_dir(&self.cfg.dir)?;
        debug!(path = %path.display(), "started log segment");
        self.segments.push(SegmentMeta {
            path: path.clone(),
            last_zxid: None,
        });
        self.active = Some(Active {
            file,
            path,
            number,
            len: SEGMENT_HEADER_LEN as u64,
            allocated,
        });
        Ok(())
    }

    /// Scans every segment in order, checks the batch structure and the zxid chain,
    /// repairs a torn tail and refuses anything else. Returns the entries above
    /// `snap_zxid` and leaves the last segment open for appends.
    fn recover_log(
        &mut self,
        segs: &[(Zxid, PathBuf)],
        snap_zxid: Zxid,
    ) -> Result<RecoveredLog, StorageError> {
        let entry_max = self.cfg.entry_bytes_max;
        let mut entries = Vec::new();
        let mut positions = Vec::new();
        let mut last_seen: Option<Zxid> = None;
        for (k, &(number, ref path)) in segs.iter().enumerate() {
            let is_last = k + 1 == segs.len();
            let mut r = SegmentReader::open(&self.io, path, entry_max)?;
            let scan = r.scan()?;
            let mut pending: Vec<ScannedRecord> = Vec::new();
            let mut committed_end = SEGMENT_HEADER_LEN as u64;
            let mut seg_last: Option<Zxid> = None;
            for rec in scan.records {
                check_record(path, &rec, pending.last(), last_seen, snap_zxid)?;
                let complete = rec.header.remaining == 0;
                pending.push(rec);
                if complete {
                    for rec in pending.drain(..) {
                        let z = rec.header.zxid;
                        if rec.kind == Kind::Truncate {
                            // Entries are in zxid order: cut those above the new end.
                            let keep = entries.partition_point(|(e, _)| *e <= z);
                            entries.truncate(keep);
                            positions.truncate(keep);
                        } else if rec.kind == Kind::Jump {
                            if z > snap_zxid {
                                return Err(StorageError::corrupt(
                                    path,
                                    rec.offset,
                                    format!(
                                        "the log continues after a snapshot installed at zxid {z}, \
                                         but the newest valid snapshot is at zxid {snap_zxid}: \
                                         the entries in between are missing"
                                    ),
                                ));
                            }
                        } else if z > snap_zxid {
                            positions.push(EntryPos {
                                segment: number,
                                offset: rec.offset,
                            });
                            entries.push((z, rec.payload));
                        }
                        committed_end = rec.offset
                            + super::record::RECORD_HEADER_LEN as u64
                            + rec.header.len as u64;
                        last_seen = Some(z);
                        seg_last = Some(z);
                    }
                }
            }

            let torn = match scan.stop {
                Stop::Bad { offset, reason } => Some((offset, reason)),
                Stop::Clean if !pending.is_empty() => Some((
                    pending.last().map_or(committed_end, |r| r.end()),
                    "incomplete batch (its last records are missing)".to_string(),
                )),
                Stop::Clean => None,
            };
            if let Some((bad_offset, reason)) = torn {
                // The batch being written when the scan stopped: its base, or for a
                // damaged first record, what its base must have been.
                let base = pending
                    .first()
                    .map_or(last_seen.unwrap_or(0), |r| r.header.base);
                self.refuse_if_valid_after(segs, k, &mut r, bad_offset, base, &reason)?;
                warn!(
                    path = %path.display(),
                    offset = committed_end,
                    bad_offset,
                    %reason,
                    "discarding the torn tail of the log (a batch whose write never completed, \
                     so never acknowledged)"
                );
                for (_, later) in &segs[k + 1..] {
                    warn!(path = %later.display(), "removing log segment after the torn tail");
                    self.io.remove(later)?;
                }
                if committed_end == SEGMENT_HEADER_LEN as u64 {
                    self.io.remove(path)?;
                    self.io.sync_dir(&self.cfg.dir)?;
                    break;
                }
                // Cut the garbage off and re-preallocate zeros, so that bytes of the
                // torn batch can never reappear behind future appends.
                self.io.set_len(&r.file, path, committed_end)?;
                let mut allocated = committed_end;
                if self.cfg.preallocate_bytes > committed_end {
                    self.io
                        .allocate(&r.file, path, self.cfg.preallocate_bytes)?;
                    allocated = self.cfg.preallocate_bytes;
                }
                self.io.sync_data(&r.file, path)?;
                self.io.sync_dir(&self.cfg.dir)?;
                self.segments.push(SegmentMeta {
                    path: path.clone(),
                    last_zxid: seg_last,
                });
                self.active = Some(Active {
                    file: r.file,
                    path: path.clone(),
                    number,
                    len: committed_end,
                    allocated,
                });
                break;
            }

            if seg_last.is_none() {
                if !is_last {
                    return Err(StorageError::corrupt(
                        path,
                        SEGMENT_HEADER_LEN as u64,
                        "empty log segment in the middle of the log",
                    ));
                }
                // Created by a roll whose first batch never got written.
                info!(path = %path.display(), "removing empty last log segment");
                self.io.remove(path)?;
                self.io.sync_dir(&self.cfg.dir)?;
                break;
            }
            self.segments.push(SegmentMeta {
                path: path.clone(),
                last_zxid: seg_last,
            });
            if is_last {
                let mut allocated = r.len;
                if self.cfg.preallocate_bytes > r.len && committed_end < self.cfg.segment_bytes_max
                {
                    self.io
                        .allocate(&r.file, path, self.cfg.preallocate_bytes)?;
                    allocated = self.cfg.preallocate_bytes;
                }
                self.active = Some(Active {
                    file: r.file,
                    path: path.clone(),
                    number,
                    len: committed_end,
                    allocated,
                });
            }
        }
        if last_seen.is_none() && !segs.is_empty() && self.segments.is_empty() {
            debug!("log holds no complete batch");
        }
        self.last_log_zxid = last_seen.unwrap_or(0);
        Ok((entries, positions))
    }

    /// A damaged record may be discarded as a torn tail only if nothing valid was
    /// written after it: no record of a later batch further on in this segment, and no
    /// record at all in a later segment (a segment is started only after the previous
    /// one's last batch was durable).
    fn refuse_if_valid_after(
        &self,
        segs: &[(Zxid, PathBuf)],
        k: usize,
        r: &mut SegmentReader<'_>,
        bad_offset: u64,
        base: Zxid,
        reason: &str,
    ) -> Result<(), StorageError> {
        let path = &segs[k].1;
        let mut from = bad_offset;
        while let Some(rec) = r.next_valid_after(from)? {
            if rec.header.base != base {
                return Err(StorageError::corrupt(
                    path,
                    bad_offset,
                    format!(
                        "{reason}, but a valid record of a later batch (zxid {}) follows at \
                         offset {}: refusing to drop acknowledged writes",
                        rec.header.zxid, rec.offset
                    ),
                ));
            }
            // Same batch as the damaged record: pages of one unsynced write landing
            // out of order. Keep looking past it.
            from = rec.end() - 1;
        }
        for (_, later) in &segs[k + 1..] {
            let mut lr = SegmentReader::open(&self.io, later, self.cfg.entry_bytes_max)?;
            if let Some(rec) = lr.next_valid_after(SEGMENT_HEADER_LEN as u64 - 1)? {
                return Err(StorageError::corrupt(
                    path,
                    bad_offset,
                    format!(
                        "{reason}, but the later segment {} holds a valid record (zxid {}) at \
                         offset {}: refusing to drop acknowledged writes",
                        later.display(),
                        rec.header.zxid,
                        rec.offset
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// Checks that an intact record fits the batch it continues, or, as the first record of
/// a batch, chains to the previous batch.
fn check_record(
    path: &Path,
    rec: &ScannedRecord,
    prev_in_batch: Option<&ScannedRecord>,
    last_seen: Option<Zxid>,
    snap_zxid: Zxid,
) -> Result<(), StorageError> {
    let h = &rec.header;
    let bad = |reason: String| Err(StorageError::corrupt(path, rec.offset, reason));
    if rec.kind != Kind::Entry && !rec.payload.is_empty() {
        return bad(format!("{:?} marker with a payload", rec.kind));
    }
    if rec.kind == Kind::Truncate && (prev_in_batch.is_some() || h.remaining != 0) {
        return bad("truncate marker not alone in its batch".into());
    }
    match prev_in_batch {
        Some(prev) => {
            let p = &prev.header;
            if rec.kind == Kind::Jump {
                return bad("jump marker inside a batch".into());
            }
            // `remaining` is read from disk: u32::MAX + 1 must be a mismatch, not a panic.
            let continues = h.remaining.checked_add(1) == Some(p.remaining);
            if h.base != p.base || !continues || h.zxid <= p.zxid {
                return bad(format!(
                    "record (zxid {}, base {}, remaining {}) does not continue its batch \
                     (previous: zxid {}, base {}, remaining {})",
                    h.zxid, h.base, h.remaining, p.zxid, p.base, p.remaining
                ));
            }
        }
        None => {
            match last_seen {
                Some(l) if h.base != l => {
                    return bad(format!(
                        "gap in the zxid chain: batch written after zxid {} follows zxid {l} \
                         (entries missing or duplicated)",
                        h.base
                    ))
                }
                None if h.base > snap_zxid => {
                    return bad(format!(
                        "the log starts after zxid {} but the newest valid snapshot is at zxid \
                         {snap_zxid}: the entries in between are missing",
                        h.base
                    ))
                }
                _ => {}
            }
            if rec.kind == Kind::Truncate {
                if h.zxid < 0 || h.zxid >= h.base {
                    return bad(format!(
                        "truncate marker to zxid {} is not below the log's last zxid {}",
                        h.zxid, h.base
                    ));
                }
            } else if h.zxid <= h.base {
                return bad(format!(
                    "zxid {} is not above its batch base {}",
                    h.zxid, h.base
                ));
            }
        }
    }
    Ok(())
}

fn validate(cfg: &StorageConfig) -> Result<(), StorageError> {
    if cfg.segment_bytes_max == 0 {
        return Err(StorageError::Config("segment_bytes_max must be > 0".into()));
    }
    if cfg.snapshots_kept == 0 {
        return Err(StorageError::Config("snapshots_kept must be >= 1".into()));
    }
    if cfg.entry_bytes_max > u32::MAX as u64 {
        return Err(StorageError::Config(format!(
            "entry_bytes_max must be <= {} (the record length field is 32 bits)",
            u32::MAX
        )));
    }
    Ok(())
}
