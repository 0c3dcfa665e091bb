//! Snapshot files: `snapshot.<zxid, 16 hex>`, written whole under a `.tmp` name,
//! fsynced, renamed into place and the directory fsynced, so a snapshot file either
//! does not exist or is complete (its checksum still guards against later damage).

use std::fs::OpenOptions;
use std::path::Path;

use super::io::Io;
use super::{StorageError, Zxid};

pub(crate) const SNAPSHOT_PREFIX: &str = "snapshot.";
const SNAPSHOT_MAGIC: &[u8; 8] = b"coordsnp";
const SNAPSHOT_VERSION: u32 = 1;
pub(crate) const SNAPSHOT_HEADER_LEN: usize = 32;

pub(crate) fn snapshot_file_name(zxid: Zxid) -> String {
    format!("{SNAPSHOT_PREFIX}{zxid:016x}")
}

/// Parses `snapshot.<16 hex digits>`.
pub(crate) fn parse_snapshot_name(name: &str) -> Option<Zxid> {
    let hex = name.strip_prefix(SNAPSHOT_PREFIX)?;
    if hex.len() != 16 {
        return None;
    }
    u64::from_str_radix(hex, 16)
        .ok()
        .and_then(|v| Zxid::try_from(v).ok())
}

fn header(zxid: Zxid, image: &[u8]) -> [u8; SNAPSHOT_HEADER_LEN] {
    let mut h = [0u8; SNAPSHOT_HEADER_LEN];
    h[..8].copy_from_slice(SNAPSHOT_MAGIC);
    h[8..12].copy_from_slice(&SNAPSHOT_VERSION.to_le_bytes());
    h[16..24].copy_from_slice(&zxid.to_le_bytes());
    h[24..32].copy_from_slice(&(image.len() as u64).to_le_bytes());
    let mut c = crc32fast::Hasher::new();
    c.update(&h[16..]);
    c.update(image);
    h[12..16].copy_from_slice(&c.finalize().to_le_bytes());
    h
}

/// Writes `dir/snapshot.<zxid>` durably (tmp, fdatasync, rename, fsync dir).
pub(crate) fn write(io: &Io, dir: &Path, zxid: Zxid, image: &[u8]) -> Result<(), StorageError> {
    let name = snapshot_file_name(zxid);
    let tmp = dir.join(format!("{name}.tmp"));
    let path = dir.join(&name);
    let file = io.open(
        &tmp,
        OpenOptions::new().write(true).create(true).truncate(true),
    )?;
    // Two writes rather than one, so a multi-GiB image is not copied just to prepend
    // 32 bytes.
    io.write_all_at(&file, &tmp, 0, &header(zxid, image))?;
    io.write_all_at(&file, &tmp, SNAPSHOT_HEADER_LEN as u64, image)?;
    io.sync_data(&file, &tmp)?;
    drop(file);
    io.rename(&tmp, &path)?;
    io.sync_dir(dir)
}

/// Reads and verifies a snapshot file. The outer error is an I/O failure (fatal); the
/// inner one says why the file is not a valid snapshot (the caller falls back to an
/// older one).
pub(crate) fn read(
    io: &Io,
    path: &Path,
    expect_zxid: Zxid,
    snapshot_bytes_max: u64,
) -> Result<Result<Vec<u8>, String>, StorageError> {
    let file = io.open(path, OpenOptions::new().read(true))?;
    let len = file
        .metadata()
        .map_err(|e| StorageError::io("stat", path, e))?
        .len();
    if len < SNAPSHOT_HEADER_LEN as u64 {
        return Ok(Err(format!(
            "{len} bytes is shorter than a snapshot header"
        )));
    }
    let mut h = [0u8; SNAPSHOT_HEADER_LEN];
    io.read_exact_at(&file, path, 0, &mut h)?;
    if &h[..8] != SNAPSHOT_MAGIC {
        return Ok(Err("bad snapshot magic".into()));
    }
    let version = u32::from_le_bytes(h[8..12].try_into().unwrap());
    if version != SNAPSHOT_VERSION {
        return Ok(Err(format!("unsupported snapshot version {version}")));
    }
    let crc = u32::from_le_bytes(h[12..16].try_into().unwrap());
    let zxid = i64::from_le_bytes(h[16..24].try_into().unwrap());
    let image_len = u64::from_le_bytes(h[24..32].try_into().unwrap());
    if zxid != expect_zxid {
        return Ok(Err(format!(
            "header zxid {zxid:#x} does not match the file name"
        )));
    }
    if image_len != len - SNAPSHOT_HEADER_LEN as u64 {
        return Ok(Err(format!(
            "header says {image_len} image bytes, file holds {}",
            len - SNAPSHOT_HEADER_LEN as u64
        )));
    }
    if image_len > snapshot_bytes_max {
        return Ok(Err(format!(
            "image of {image_len} bytes exceeds snapshot_bytes_max {snapshot_bytes_max}"
        )));
    }
    let mut image = vec![0u8; image_len as usize];
    io.read_exact_at(&file, path, SNAPSHOT_HEADER_LEN as u64, &mut image)?;
    let mut c = crc32fast::Hasher::new();
    c.update(&h[16..]);
    c.update(&image);
    if c.finalize() != crc {
        return Ok(Err("snapshot checksum mismatch".into()));
    }
    Ok(Ok(image))
}
