//! Reading log segments back: a sequential scan that stops at the first record that is
//! not intact, and the helpers recovery uses to decide whether that stop is a torn tail
//! or corruption.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};

use super::io::Io;
use super::record::{
    check_segment_header, crc_ok, parse_header, Kind, RecordHeader, RECORD_HEADER_LEN,
    SEGMENT_HEADER_LEN,
};
use super::{StorageError, Zxid};

/// Read granularity of scans: large enough that a scan is a few big reads, small
/// enough that scanning never holds much more than one entry in memory.
const SCAN_CHUNK: usize = 1 << 20;

pub(crate) const SEGMENT_PREFIX: &str = "log.";

pub(crate) fn segment_file_name(first_zxid: Zxid) -> String {
    format!("{SEGMENT_PREFIX}{first_zxid:016x}")
}

/// One intact record.
#[derive(Debug)]
pub(crate) struct ScannedRecord {
    pub offset: u64,
    pub header: RecordHeader,
    pub kind: Kind,
    pub payload: Vec<u8>,
}

impl ScannedRecord {
    pub fn end(&self) -> u64 {
        self.offset + RECORD_HEADER_LEN as u64 + self.payload.len() as u64
    }
}

/// Why a scan stopped.
#[derive(Debug)]
pub(crate) enum Stop {
    /// End of file, or nothing but zeros (preallocated space) after the last record.
    Clean,
    /// The bytes at `offset` are not an intact record and are not all zeros.
    Bad { offset: u64, reason: String },
}

#[derive(Debug)]
pub(crate) struct SegmentScan {
    pub records: Vec<ScannedRecord>,
    pub stop: Stop,
}

/// An open segment file being read.
pub(crate) struct SegmentReader<'a> {
    io: &'a Io,
    pub path: PathBuf,
    pub file: File,
    pub len: u64,
    entry_bytes_max: u64,
    buf: Vec<u8>,
    buf_start: u64,
}

impl<'a> SegmentReader<'a> {
    /// Opens a segment and checks its header. A bad header is corruption, never a torn
    /// write: segments are created under a temporary name and renamed into place only
    /// after their header is durable.
    pub fn open(io: &'a Io, path: &Path, entry_bytes_max: u64) -> Result<Self, StorageError> {
        let file = io.open(path, OpenOptions::new().read(true).write(true))?;
        let len = file
            .metadata()
            .map_err(|e| StorageError::io("stat", path, e))?
            .len();
        let mut r = SegmentReader {
            io,
            path: path.to_path_buf(),
            file,
            len,
            entry_bytes_max,
            buf: Vec::new(),
            buf_start: 0,
        };
        if len < SEGMENT_HEADER_LEN as u64 {
            return Err(StorageError::corrupt(
                path,
                0,
                "segment shorter than its header",
            ));
        }
        let mut h = [0u8; SEGMENT_HEADER_LEN];
        r.read(0, &mut h)?;
        check_segment_header(&h).map_err(|reason| StorageError::corrupt(path, 0, reason))?;
        Ok(r)
    }

    /// Copies `out.len()` bytes at `offset` (which the caller has bounds-checked).
    fn read(&mut self, offset: u64, out: &mut [u8]) -> Result<(), StorageError> {
        if out.len() >= SCAN_CHUNK {
            return self.io.read_exact_at(&self.file, &self.path, offset, out);
        }
        let buf_end = self.buf_start + self.buf.len() as u64;
        if offset < self.buf_start || offset + out.len() as u64 > buf_end {
            let n = (self.len - offset).min(SCAN_CHUNK as u64) as usize;
            self.buf.resize(n, 0);
            self.buf_start = offset;
            self.io
                .read_exact_at(&self.file, &self.path, offset, &mut self.buf)?;
        }
        let at = (offset - self.buf_start) as usize;
        out.copy_from_slice(&self.buf[at..at + out.len()]);
        Ok(())
    }

    /// Reads the intact record at `offset`, or says why there is none. Allocates the
    /// payload only after the length passed both bounds (entry_bytes_max and the bytes
    /// left in the file), so a corrupt length cannot cause a huge allocation.
    pub fn record_at(
        &mut self,
        offset: u64,
    ) -> Result<Result<ScannedRecord, String>, StorageError> {
        if self.len - offset < RECORD_HEADER_LEN as u64 {
            return Ok(Err("partial record header at end of file".into()));
        }
        let mut hb = [0u8; RECORD_HEADER_LEN];
        self.read(offset, &mut hb)?;
        let (header, kind) = match parse_header(&hb) {
            Ok(h) => h,
            Err(reason) => return Ok(Err(reason.into())),
        };
        let len = header.len as u64;
        if len > self.entry_bytes_max {
            return Ok(Err(format!(
                "record length {len} exceeds entry_bytes_max {}",
                self.entry_bytes_max
            )));
        }
        if self.len - offset - (RECORD_HEADER_LEN as u64) < len {
            return Ok(Err(format!(
                "record of {len} bytes extends past end of file (partial record)"
            )));
        }
        let mut payload = vec![0u8; len as usize];
        self.read(offset + RECORD_HEADER_LEN as u64, &mut payload)?;
        if !crc_ok(&header, &hb, &payload) {
            return Ok(Err("record checksum mismatch".into()));
        }
        Ok(Ok(ScannedRecord {
            offset,
            header,
            kind,
            payload,
        }))
    }

    /// Whether every byte from `offset` to the end of the file is zero.
    pub fn zeros_from(&mut self, mut offset: u64) -> Result<bool, StorageError> {
        let mut chunk = vec![0u8; SCAN_CHUNK];
        while offset < self.len {
            let n = (self.len - offset).min(SCAN_CHUNK as u64) as usize;
            self.io
                .read_exact_at(&self.file, &self.path, offset, &mut chunk[..n])?;
            if chunk[..n].iter().any(|&b| b != 0) {
                return Ok(false);
            }
            offset += n as u64;
        }
        Ok(true)
    }

    /// Reads records from the first one on, stopping at the first that is not intact.
    pub fn scan(&mut self) -> Result<SegmentScan, StorageError> {
        let mut records = Vec::new();
        let mut offset = SEGMENT_HEADER_LEN as u64;
        loop {
            if offset == self.len {
                return Ok(SegmentScan {
                    records,
                    stop: Stop::Clean,
                });
            }
            match self.record_at(offset)? {
                Ok(rec) => {
                    offset = rec.end();
                    records.push(rec);
                }
                Err(reason) => {
                    let stop = if self.zeros_from(offset)? {
                        Stop::Clean
                    } else {
                        Stop::Bad { offset, reason }
                    };
                    return Ok(SegmentScan { records, stop });
                }
            }
        }
    }

    /// Finds the first intact record that starts after `from`, by looking for the
    /// record magic at every byte offset (records are not aligned) and verifying each
    /// candidate's length bounds and checksum. Used only after a damaged record, to
    /// learn whether anything valid was written after it.
    pub fn next_valid_after(&mut self, from: u64) -> Result<Option<ScannedRecord>, StorageError> {
        let magics = Kind::all_magics();
        let mut chunk = vec![0u8; SCAN_CHUNK + 3];
        let mut start = from + 1;
        while start + RECORD_HEADER_LEN as u64 <= self.len {
            // Overlap chunks by 3 bytes so a magic split across two chunks is seen.
            let n = (self.len - start).min(chunk.len() as u64) as usize;
            self.io
                .read_exact_at(&self.file, &self.path, start, &mut chunk[..n])?;
            for i in 0..n.saturating_sub(3) {
                let w = [chunk[i], chunk[i + 1], chunk[i + 2], chunk[i + 3]];
                if magics.contains(&w) {
                    if let Ok(rec) = self.record_at(start + i as u64)? {
                        return Ok(Some(rec));
                    }
                }
            }
            if n < chunk.len() {
                break;
            }
            start += (n - 3) as u64;
        }
        Ok(None)
    }
}

/// Parses `log.<16 hex digits>`.
pub(crate) fn parse_segment_name(name: &str) -> Option<Zxid> {
    let hex = name.strip_prefix(SEGMENT_PREFIX)?;
    if hex.len() != 16 {
        return None;
    }
    u64::from_str_radix(hex, 16)
        .ok()
        .and_then(|v| Zxid::try_from(v).ok())
}
