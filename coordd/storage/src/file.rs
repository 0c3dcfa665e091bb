//! Small named files beside the log (`dir/<name>`), each replaced atomically: written whole
//! under `<name>.tmp`, fdatasynced, renamed over the old one, and the directory fsynced. A
//! reader therefore sees the old contents or the new ones, never a mix; the checksum still
//! guards against later damage, which is reported as corruption (there is no older copy to
//! fall back to, and silently reading "no file" could, for a Raft vote, mean voting twice).
//!
//! ```text
//! file = magic "coordfil" | u32 version (1) | u32 crc32 of bytes 16..24 and the contents
//!        | u64 contents length | contents
//! ```

use std::fs::OpenOptions;
use std::io::ErrorKind;
use std::path::Path;

use super::io::Io;
use super::StorageError;

const FILE_MAGIC: &[u8; 8] = b"coordfil";
const FILE_VERSION: u32 = 1;
const FILE_HEADER_LEN: usize = 24;
/// Longest name accepted; names are short identifiers ("vote", "raft-snapshot").
pub(crate) const FILE_NAME_LEN_MAX: usize = 64;

/// Names are lowercase letters, digits, `-` and `_`: never a dot, so they cannot collide
/// with segments (`log.`), snapshots (`snapshot.`), temporary files (`.tmp`) or `LOCK`.
pub(crate) fn check_name(name: &str) -> Result<(), StorageError> {
    let ok = !name.is_empty()
        && name.len() <= FILE_NAME_LEN_MAX
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(StorageError::Config(format!(
            "file name {name:?} must be 1-{FILE_NAME_LEN_MAX} of [a-z0-9_-]"
        )))
    }
}

fn header(contents: &[u8]) -> [u8; FILE_HEADER_LEN] {
    let mut h = [0u8; FILE_HEADER_LEN];
    h[..8].copy_from_slice(FILE_MAGIC);
    h[8..12].copy_from_slice(&FILE_VERSION.to_le_bytes());
    h[16..24].copy_from_slice(&(contents.len() as u64).to_le_bytes());
    let mut c = crc32fast::Hasher::new();
    c.update(&h[16..24]);
    c.update(contents);
    h[12..16].copy_from_slice(&c.finalize().to_le_bytes());
    h
}

/// Replaces `dir/name` durably (tmp, fdatasync, rename, fsync dir).
pub(crate) fn write(io: &Io, dir: &Path, name: &str, contents: &[u8]) -> Result<(), StorageError> {
    let tmp = dir.join(format!("{name}.tmp"));
    let path = dir.join(name);
    let file = io.open(
        &tmp,
        OpenOptions::new().write(true).create(true).truncate(true),
    )?;
    io.write_all_at(&file, &tmp, 0, &header(contents))?;
    io.write_all_at(&file, &tmp, FILE_HEADER_LEN as u64, contents)?;
    io.sync_data(&file, &tmp)?;
    drop(file);
    io.rename(&tmp, &path)?;
    io.sync_dir(dir)
}

/// Reads `path` back: `None` if it does not exist, `Corrupt` (naming the file and offset) if
/// it is not an intact file of this format or is larger than `bytes_max`.
pub(crate) fn read(io: &Io, path: &Path, bytes_max: u64) -> Result<Option<Vec<u8>>, StorageError> {
    if let Err(e) = std::fs::symlink_metadata(path) {
        if e.kind() == ErrorKind::NotFound {
            return Ok(None);
        }
        return Err(StorageError::io("stat", path, e));
    }
    let file = io.open(path, OpenOptions::new().read(true))?;
    let len = file
        .metadata()
        .map_err(|e| StorageError::io("stat", path, e))?
        .len();
    let corrupt = |offset: u64, reason: String| Err(StorageError::corrupt(path, offset, reason));
    if len < FILE_HEADER_LEN as u64 {
        return corrupt(0, format!("{len} bytes is shorter than a file header"));
    }
    let mut h = [0u8; FILE_HEADER_LEN];
    io.read_exact_at(&file, path, 0, &mut h)?;
    if &h[..8] != FILE_MAGIC {
        return corrupt(0, "bad file magic".into());
    }
    let version = u32::from_le_bytes(h[8..12].try_into().expect("4 bytes"));
    if version != FILE_VERSION {
        return corrupt(8, format!("unsupported file format version {version}"));
    }
    let crc = u32::from_le_bytes(h[12..16].try_into().expect("4 bytes"));
    let body_len = u64::from_le_bytes(h[16..24].try_into().expect("8 bytes"));
    if body_len != len - FILE_HEADER_LEN as u64 {
        return corrupt(
            16,
            format!(
                "header says {body_len} bytes of contents, the file holds {}",
                len - FILE_HEADER_LEN as u64
            ),
        );
    }
    if body_len > bytes_max {
        return corrupt(
            16,
            format!("contents of {body_len} bytes exceed the limit of {bytes_max}"),
        );
    }
    let mut body = vec![0u8; body_len as usize];
    io.read_exact_at(&file, path, FILE_HEADER_LEN as u64, &mut body)?;
    let mut c = crc32fast::Hasher::new();
    c.update(&h[16..24]);
    c.update(&body);
    if c.finalize() != crc {
        return corrupt(FILE_HEADER_LEN as u64, "file checksum mismatch".into());
    }
    Ok(Some(body))
}
