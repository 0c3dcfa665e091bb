//! Byte layout of segment headers and log records (see the module doc for the table).

use super::Zxid;

/// "CDRL" in little-endian byte order; lets recovery tell a record from zeroed
/// preallocated space and find record boundaries again after a damaged record.
pub(crate) const RECORD_MAGIC: u32 = u32::from_le_bytes(*b"CDRL");
/// "CDRJ": a jump marker. Written as the first record of the first batch after a
/// snapshot that is ahead of the log (a snapshot installed from elsewhere): its zxid is
/// that snapshot's, and it says "entries up to here exist only in a snapshot", so
/// recovery refuses a log that would need an older snapshot to fill the jump. It carries
/// no entry and is never returned.
pub(crate) const MARKER_MAGIC: u32 = u32::from_le_bytes(*b"CDRJ");
/// "CDRT": a truncate marker, alone in its batch. Its zxid `t` is the new last zxid of the
/// log: every entry with a zxid above `t` written before it is deleted (Raft's
/// truncation of a conflicting suffix). Its base chains to the record before it as usual;
/// the next batch's base is `t`. It carries no payload and is never returned.
pub(crate) const TRUNCATE_MAGIC: u32 = u32::from_le_bytes(*b"CDRT");
pub(crate) const RECORD_HEADER_LEN: usize = 32;

pub(crate) const SEGMENT_MAGIC: &[u8; 8] = b"coordlog";
pub(crate) const SEGMENT_VERSION: u32 = 1;
pub(crate) const SEGMENT_HEADER_LEN: usize = 16;

/// What a record is, from its magic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Entry,
    /// See [`MARKER_MAGIC`].
    Jump,
    /// See [`TRUNCATE_MAGIC`].
    Truncate,
}

impl Kind {
    fn magic(self) -> u32 {
        match self {
            Kind::Entry => RECORD_MAGIC,
            Kind::Jump => MARKER_MAGIC,
            Kind::Truncate => TRUNCATE_MAGIC,
        }
    }

    fn of_magic(magic: u32) -> Option<Kind> {
        [Kind::Entry, Kind::Jump, Kind::Truncate]
            .into_iter()
            .find(|k| k.magic() == magic)
    }

    /// Every magic a record can start with (scans for record boundaries use them).
    pub(crate) fn all_magics() -> [[u8; 4]; 3] {
        [
            RECORD_MAGIC.to_le_bytes(),
            MARKER_MAGIC.to_le_bytes(),
            TRUNCATE_MAGIC.to_le_bytes(),
        ]
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct RecordHeader {
    pub crc: u32,
    pub len: u32,
    pub remaining: u32,
    pub zxid: Zxid,
    pub base: Zxid,
}

/// Appends one record (header + payload) to `buf`.
pub(crate) fn encode_record(
    buf: &mut Vec<u8>,
    kind: Kind,
    zxid: Zxid,
    base: Zxid,
    remaining: u32,
    payload: &[u8],
) {
    let start = buf.len();
    buf.extend_from_slice(&kind.magic().to_le_bytes());
    buf.extend_from_slice(&[0; 4]); // crc, filled below
    buf.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    buf.extend_from_slice(&remaining.to_le_bytes());
    buf.extend_from_slice(&zxid.to_le_bytes());
    buf.extend_from_slice(&base.to_le_bytes());
    buf.extend_from_slice(payload);
    let crc = crc32fast::hash(&buf[start + 8..]);
    buf[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// Parses a record header into (header, kind); `Err` names what is wrong.
/// Does not check the CRC (the payload is needed for that): see [`crc_ok`].
pub(crate) fn parse_header(
    b: &[u8; RECORD_HEADER_LEN],
) -> Result<(RecordHeader, Kind), &'static str> {
    let u32_at = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().unwrap());
    let i64_at = |i: usize| i64::from_le_bytes(b[i..i + 8].try_into().unwrap());
    let Some(kind) = Kind::of_magic(u32_at(0)) else {
        return Err(if b.iter().all(|&x| x == 0) {
            "zeroed space where a record header was expected"
        } else {
            "bad record magic"
        });
    };
    let header = RecordHeader {
        crc: u32_at(4),
        len: u32_at(8),
        remaining: u32_at(12),
        zxid: i64_at(16),
        base: i64_at(24),
    };
    Ok((header, kind))
}

pub(crate) fn crc_ok(h: &RecordHeader, header: &[u8; RECORD_HEADER_LEN], payload: &[u8]) -> bool {
    let mut c = crc32fast::Hasher::new();
    c.update(&header[8..]);
    c.update(payload);
    c.finalize() == h.crc
}

pub(crate) fn segment_header() -> [u8; SEGMENT_HEADER_LEN] {
    let mut h = [0u8; SEGMENT_HEADER_LEN];
    h[..8].copy_from_slice(SEGMENT_MAGIC);
    h[8..12].copy_from_slice(&SEGMENT_VERSION.to_le_bytes());
    let crc = crc32fast::hash(&h[..12]);
    h[12..].copy_from_slice(&crc.to_le_bytes());
    h
}

pub(crate) fn check_segment_header(h: &[u8; SEGMENT_HEADER_LEN]) -> Result<(), String> {
    if &h[..8] != SEGMENT_MAGIC {
        return Err("not a coordd log segment (bad magic)".into());
    }
    if crc32fast::hash(&h[..12]) != u32::from_le_bytes(h[12..].try_into().unwrap()) {
        return Err("segment header checksum mismatch".into());
    }
    let v = u32::from_le_bytes(h[8..12].try_into().unwrap());
    if v != SEGMENT_VERSION {
        return Err(format!("unsupported segment format version {v}"));
    }
    Ok(())
}
