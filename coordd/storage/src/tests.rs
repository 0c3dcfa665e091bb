//! Storage tests: recovery rules, fault injection, the crash-prefix property and the
//! group-commit writer. `bench_log_writer` (ignored) is the micro-benchmark.

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use proptest::prelude::*;

use super::record::SEGMENT_HEADER_LEN;
use super::*;

fn cfg(dir: &Path) -> StorageConfig {
    StorageConfig {
        dir: dir.to_path_buf(),
        // Durability against real power loss is not what these tests observe (the
        // fault hook still sees every sync); skipping the syscalls keeps them fast.
        fsync: false,
        segment_bytes_max: 1 << 20,
        preallocate_bytes: 64 << 10,
        ..StorageConfig::default()
    }
}

fn payload(z: Zxid, len: usize) -> Vec<u8> {
    (0..len).map(|i| (z as usize * 31 + i) as u8).collect()
}

/// Appends one batch per element of `batches` (entry counts), zxids from `from`.
fn append_batches(wal: &mut Wal, from: Zxid, batches: &[usize], len: usize) -> Zxid {
    let mut z = from;
    for &n in batches {
        let owned: Vec<(Zxid, Vec<u8>)> = (0..n)
            .map(|_| {
                z += 1;
                (z, payload(z, len))
            })
            .collect();
        let refs: Vec<(Zxid, &[u8])> = owned.iter().map(|(z, p)| (*z, &p[..])).collect();
        wal.append(&refs).unwrap();
    }
    z
}

fn expect_entries(rec: &Recovered, zxids: std::ops::RangeInclusive<Zxid>, len: usize) {
    let want: Vec<(Zxid, Vec<u8>)> = zxids.map(|z| (z, payload(z, len))).collect();
    let got: Vec<Zxid> = rec.entries.iter().map(|e| e.0).collect();
    assert_eq!(got, want.iter().map(|e| e.0).collect::<Vec<_>>());
    assert_eq!(rec.entries, want);
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_str().unwrap().starts_with("log."))
        .collect();
    v.sort();
    v
}

fn snapshots(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let n = p.file_name().unwrap().to_str().unwrap().to_string();
            n.starts_with("snapshot.") && n.len() == "snapshot.".len() + 16
        })
        .collect();
    v.sort();
    v
}

/// Offset of the record with this zxid in a segment (by searching for its header).
fn record_offset(path: &Path, zxid: Zxid) -> u64 {
    let data = std::fs::read(path).unwrap();
    let mut off = SEGMENT_HEADER_LEN;
    loop {
        let len = u32::from_le_bytes(data[off + 8..off + 12].try_into().unwrap()) as usize;
        let z = i64::from_le_bytes(data[off + 16..off + 24].try_into().unwrap());
        if z == zxid {
            return off as u64;
        }
        off += 32 + len;
    }
}

fn poke(path: &Path, offset: u64, bytes: &[u8]) {
    let f = OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(bytes, offset).unwrap();
}

fn flip(path: &Path, offset: u64) {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut b = [0u8];
    f.read_exact_at(&mut b, offset).unwrap();
    f.write_all_at(&[b[0] ^ 0x40], offset).unwrap();
}

fn corrupt_msg(r: Result<(Wal, Recovered), StorageError>) -> String {
    match r {
        Err(e @ StorageError::Corrupt { .. }) => e.to_string(),
        Err(e) => panic!("expected Corrupt, got {e}"),
        Ok(_) => panic!("expected Corrupt, recovery succeeded"),
    }
}

#[test]
fn fresh_dir_append_and_recover() {
    let d = tempfile::tempdir().unwrap();
    let (mut wal, rec) = Wal::open(cfg(d.path())).unwrap();
    assert_eq!(rec, Recovered::default());
    assert_eq!(wal.last_zxid(), 0);
    let last = append_batches(&mut wal, 0, &[1, 3, 1, 10], 100);
    assert_eq!(wal.last_zxid(), last);
    wal.append(&[]).unwrap();
    drop(wal);
    let (mut wal, rec) = Wal::open(cfg(d.path())).unwrap();
    assert_eq!(rec.snapshot, None);
    expect_entries(&rec, 1..=15, 100);
    assert_eq!(wal.last_zxid(), 15);
    // Appending continues where recovery left off.
    append_batches(&mut wal, 15, &[2], 7);
    drop(wal);
    let (_, rec) = Wal::open(cfg(d.path())).unwrap();
    assert_eq!(rec.entries.len(), 17);
    assert_eq!(rec.entries[16], (17, payload(17, 7)));
}

#[test]
fn non_contiguous_zxids_are_fine() {
    let d = tempfile::tempdir().unwrap();
    let (mut wal, _) = Wal::open(cfg(d.path())).unwrap();
    wal.append(&[(5, b"a"), (9, b"b")]).unwrap();
    wal.append(&[(1 << 40, b"c")]).unwrap();
    drop(wal);
    let (wal, rec) = Wal::open(cfg(d.path())).unwrap();
    let z: Vec<Zxid> = rec.entries.iter().map(|e| e.0).collect();
    assert_eq!(z, vec![5, 9, 1 << 40]);
    assert_eq!(wal.last_zxid(), 1 << 40);
}

#[test]
fn invalid_appends_are_rejected_without_poisoning() {
    let d = tempfile::tempdir().unwrap();
    let c = StorageConfig {
        entry_bytes_max: 10,
        ..cfg(d.path())
    };
    let (mut wal, _) = Wal::open(c.clone()).unwrap();
    wal.append(&[(1, b"x")]).unwrap();
    assert!(matches!(
        wal.append(&[(1, b"x")]),
        Err(StorageError::InvalidAppend(_))
    ));
    assert!(matches!(
        wal.append(&[(3, b"x"), (2, b"y")]),
        Err(StorageError::InvalidAppend(_))
    ));
    assert!(matches!(
        wal.append(&[(2, &[0u8; 11][..])]),
        Err(StorageError::TooLarge { .. })
    ));
    wal.append(&[(2, b"ok")]).unwrap();
    drop(wal);
    let (_, rec) = Wal::open(c).unwrap();
    assert_eq!(rec.entries, vec![(1, b"x".to_vec()), (2, b"ok".to_vec())]);
}

#[test]
fn second_open_of_a_dir_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let (_wal, _) = Wal::open(cfg(d.path())).unwrap();
    let err = Wal::open(cfg(d.path())).unwrap_err();
    assert!(matches!(err, StorageError::Locked { .. }), "{err}");
    assert!(err.to_string().contains("in use by another process"));
}

#[test]
fn lock_is_released_on_drop() {
    let d = tempfile::tempdir().unwrap();
    drop(Wal::open(cfg(d.path())).unwrap());
    Wal::open(cfg(d.path())).unwrap();
}

#[test]
fn config_limits_are_checked() {
    let d = tempfile::tempdir().unwrap();
    let bad = StorageConfig {
        snapshots_kept: 0,
        ..cfg(d.path())
    };
    assert!(matches!(Wal::open(bad), Err(StorageError::Config(_))));
    let c = StorageConfig::default();
    assert_eq!(c.dir, PathBuf::from("./data"));
    assert!(c.fsync);
    assert_eq!(c.segment_bytes_max, 64 << 20);
    assert_eq!(c.preallocate_bytes, 64 << 20);
    assert_eq!(c.snapshots_kept, 3);
    assert_eq!(c.entry_bytes_max, 16 << 20);
}

#[test]
fn segments_roll_and_sealed_ones_are_trimmed() {
    let d = tempfile::tempdir().unwrap();
    let c = StorageConfig {
        segment_bytes_max: 4096,
        preallocate_bytes: 16 << 10,
        ..cfg(d.path())
    };
    let (mut wal, _) = Wal::open(c.clone()).unwrap();
    append_batches(&mut wal, 0, &[5; 40], 100);
    drop(wal);
    let segs = segments(d.path());
    assert!(segs.len() > 5, "{segs:?}");
    for s in &segs[..segs.len() - 1] {
        let len = std::fs::metadata(s).unwrap().len();
        assert!(
            len < 16 << 10,
            "sealed segment {s:?} keeps its preallocation"
        );
    }
    assert_eq!(
        std::fs::metadata(segs.last().unwrap()).unwrap().len(),
        16 << 10
    );
    let (_, rec) = Wal::open(c).unwrap();
    expect_entries(&rec, 1..=200, 100);
}

#[test]
fn torn_partial_record_at_tail_is_truncated() {
    let d = tempfile::tempdir().unwrap();
    let (mut wal, _) = Wal::open(cfg(d.path())).unwrap();
    append_batches(&mut wal, 0, &[1, 1, 1], 50);
    drop(wal);
    let seg = &segments(d.path())[0];
    // Zero the second half of the last record, as if the write stopped midway.
    let off = record_offset(seg, 3);
    poke(seg, off + 40, &[0u8; 42]);
    let (mut wal, rec) = Wal::open(cfg(d.path())).unwrap();
    expect_entries(&rec, 1..=2, 50);
    assert_eq!(wal.last_zxid(), 2);
    // The garbage is gone: new appends recover cleanly.
    append_batches(&mut wal, 2, &[1, 2], 10);
    drop(wal);
    let (_, rec) = Wal::open(cfg(d.path())).unwrap();
    assert_eq!(rec.entries.len(), 5);
    assert_eq!(rec.entries[4], (5, payload(5, 10)));
}

#[test]
fn bad_crc_on_last_record_is_truncated() {
    let d = tempfile::tempdir().unwrap();
    let (mut wal, _) = Wal::open(cfg(d.path())).unwrap();
    append_batches(&mut wal, 0, &[2, 2], 50);
    drop(wal);
    let seg = &segments(d.path())[0];
    flip(seg, record_offset(seg, 4) + 32 + 10);
    let (_, rec) = Wal::open(cfg(d.path())).unwrap();
    // The whole last batch goes: a batch is all-or-nothing.
    expect_entries(&rec, 1..=2, 50);
}

#[test]
fn torn_batch_with_pages_out_of_order_is_dropped_whole() {
    let d = tempfile::tempdir().unwrap();
    let (mut wal, _) = Wal::open(cfg(d.path())).unwrap();
    append_batches(&mut wal, 0, &[3, 40], 200);
    drop(wal);
    let seg = &segments(d.path())[0];
    // A page in the middle of the last (unsynced) batch never reached the disk, but
    // later pages of the same write did.
    let off = record_offset(seg, 10);
    poke(seg, off, &[0u8; 4096]);
    let (_, rec) = Wal::open(cfg(d.path())).unwrap();
    expect_entries(&rec, 1..=3, 200);
}

#[test]
fn bad_record_followed_by_valid_batches_is_corruption() {
    let d = tempfile::tempdir().unwrap();
    let (mut wal, _) = Wal::open(cfg(d.path())).unwrap();
    append_batches(&mut wal, 0, &[1, 1, 1, 1], 50);
    drop(wal);
    let seg = &segments(d.path())[0];
    let off = record_offset(seg, 2);
    flip(seg, off + 32 + 3);
    let msg = corrupt_msg(Wal::open(cfg(d.path())));
    assert!(msg.contains(seg.to_str().unwrap()), "{msg}");
    assert!(msg.contains(&format!("offset {off}")), "{msg}");
    assert!(msg.contains("checksum"), "{msg}");
    // Nothing was repaired: the same error again.
    corrupt_msg(Wal::open(cfg(d.path())));
}

#[test]
fn zeroed_middle_record_is_corruption() {
    let d = tempfile::tempdir().unwrap();
    let (mut wal, _) = Wal::open(cfg(d.path())).unwrap();
    append_batches(&mut wal, 0, &[1, 1, 1], 50);
    drop(wal);
    let seg = &segments(d.path())[0];
    poke(seg, record_offset(seg, 2), &[0u8; 82]);
    let msg = corrupt_msg(Wal::open(cfg(d.path())));
    assert!(msg.contains("later batch"), "{msg}");
}

#[test]
fn huge_length_field_is_not_allocated() {
    let d = tempfile::tempdir().unwrap();
    let (mut wal, _) = Wal::open(cfg(d.path())).unwrap();
    append_batches(&mut wal, 0, &[1, 1, 1], 50);
    drop(wal);
    let seg = &segments(d.path())[0];
    // Middle record: hard error naming the bound, no 4 GiB allocation.
    let off = record_offset(seg, 2);
    poke(seg, off + 8, &u32::MAX.to_le_bytes());
    let msg = corrupt_msg(Wal::open(cfg(d.path())));
    assert!(msg.contains("entry_bytes_max"), "{msg}");
    // Same on the last record: a torn tail.
    poke(seg, off + 8, &50u32.to_le_bytes());
    let off3 = record_offset(seg, 3);
    poke(seg, off3 + 8, &(15u32 << 20).to_le_bytes()); // under the max, past EOF
    let (_, rec) = Wal::open(cfg(d.path())).unwrap();
    expect_entries(&rec, 1..=2, 50);
}

#[test]
fn valid_record_in_a_later_segment_after_damage_is_corruption() {
    let d = tempfile::tempdir().unwrap();
    let c = StorageConfig {
        segment_bytes_max: 1024,
        ..cfg(d.path())
    };
    let (mut wal, _) = Wal::open(c.clone()).unwrap();
    append_batches(&mut wal, 0, &[3; 10], 100);
    drop(wal);
    let segs = segments(d.path());
    assert!(segs.len() >= 3);
    // Damage the last record of the first segment (a sealed one).
    let data = std::fs::read(&segs[0]).unwrap();
    flip(&segs[0], data.len() as u64 - 5);
    let msg = corrupt_msg(Wal::open(c));
    assert!(msg.contains("later segment"), "{msg}");
}

#[test]
fn missing_segment_is_a_gap() {
    let d = tempfile::tempdir().unwrap();
    let c = StorageConfig {
        segment_bytes_max: 1024,
        ..cfg(d.path())
    };
    let (mut wal, _) = Wal::open(c.clone()).unwrap();
    append_batches(&mut wal, 0, &[3; 10], 100);
    drop(wal);
    let segs = segments(d.path());
    std::fs::remove_file(&segs[1]).unwrap();
    let msg = corrupt_msg(Wal::open(c.clone()));
    assert!(msg.contains("gap in the zxid chain"), "{msg}");
    std::fs::remove_file(&segs[0]).unwrap();
    let msg = corrupt_msg(Wal::open(c));
    assert!(msg.contains("the log starts after"), "{msg}");
}

#[test]
fn bad_segment_header_is_corruption() {
    let d = tempfile::tempdir().unwrap();
    let (mut wal, _) = Wal::open(cfg(d.path())).unwrap();
    append_batches(&mut wal, 0, &[1], 5);
    drop(wal);
    poke(&segments(d.path())[0], 2, b"X");
    let msg = corrupt_msg(Wal::open(cfg(d.path())));
    assert!(msg.contains("offset 0"), "{msg}");
}

/// `remaining` (records left in the batch) is read from disk: a crafted batch whose
/// records claim u32::MAX is corruption, not an arithmetic overflow (a debug build
/// panicked checking that the second record continues the first).
#[test]
fn a_crafted_remaining_count_is_corruption_not_an_overflow() {
    use super::record::{encode_record, segment_header, Kind};
    let d = tempfile::tempdir().unwrap();
    let mut bytes = segment_header().to_vec();
    encode_record(&mut bytes, Kind::Entry, 1, 0, u32::MAX, b"first");
    encode_record(&mut bytes, Kind::Entry, 2, 0, u32::MAX, b"second");
    let seg = d.path().join(super::segment::segment_file_name(1));
    std::fs::write(&seg, &bytes).unwrap();
    let msg = corrupt_msg(Wal::open(cfg(d.path())));
    assert!(msg.contains("does not continue its batch"), "{msg}");
    assert!(msg.contains(&format!("remaining {}", u32::MAX)), "{msg}");
}

/// Segment names come from the directory: one named with the largest number leaves no
/// name above it for the next segment, which is refused with an error, not an overflow
/// (a debug build panicked in `roll`).
#[test]
fn a_segment_named_with_the_largest_number_is_refused_not_overflowed() {
    let d = tempfile::tempdir().unwrap();
    // Small segments: the next append starts a new one.
    let c = StorageConfig {
        segment_bytes_max: 64,
        ..cfg(d.path())
    };
    let (mut wal, _) = Wal::open(c.clone()).unwrap();
    append_batches(&mut wal, 0, &[1], 100);
    drop(wal);
    let seg = &segments(d.path())[0];
    let renamed = d.path().join(super::segment::segment_file_name(Zxid::MAX));
    std::fs::rename(seg, &renamed).unwrap();
    let (mut wal, rec) = Wal::open(c).unwrap();
    expect_entries(&rec, 1..=1, 100);
    let err = wal.append(&[(2, &payload(2, 100)[..])]).unwrap_err();
    assert!(matches!(err, StorageError::Corrupt { .. }), "{err}");
    let msg = err.to_string();
    assert!(msg.contains("largest possible"), "{msg}");
    assert!(msg.contains(renamed.to_str().unwrap()), "{msg}");
}

#[test]
fn snapshots_recover_prune_and_compact() {
    let d = tempfile::tempdir().unwrap();
    let c = StorageConfig {
        segment_bytes_max: 2048,
        snapshots_kept: 2,
        ..cfg(d.path())
    };
    let (mut wal, _) = Wal::open(c.clone()).unwrap();
    let mut z = 0;
    for round in 0..5 {
        z = append_batches(&mut wal, z, &[4; 10], 64);
        wal.save_snapshot(z, format!("image@{z}").as_bytes())
            .unwrap();
        let _ = round;
    }
    z = append_batches(&mut wal, z, &[2], 64);
    drop(wal);
    let snaps = snapshots(d.path());
    assert_eq!(snaps.len(), 2, "{snaps:?}");
    // Segments covered by the oldest kept snapshot (zxid 160) are gone.
    let (_, rec) = Wal::open(c.clone()).unwrap();
    assert_eq!(rec.snapshot, Some((200, b"image@200".to_vec())));
    expect_entries(&rec, 201..=z, 64);
    // The oldest kept snapshot is still a usable fallback: the log reaches back to it.
    std::fs::remove_file(&snaps[1]).unwrap();
    let (_, rec) = Wal::open(c).unwrap();
    assert_eq!(rec.snapshot, Some((160, b"image@160".to_vec())));
    expect_entries(&rec, 161..=z, 64);
}

#[test]
fn corrupt_newest_snapshot_falls_back_to_previous() {
    let d = tempfile::tempdir().unwrap();
    let (mut wal, _) = Wal::open(cfg(d.path())).unwrap();
    append_batches(&mut wal, 0, &[5], 10);
    wal.save_snapshot(5, b"five").unwrap();
    append_batches(&mut wal, 5, &[5], 10);
    wal.save_snapshot(10, b"ten").unwrap();
    append_batches(&mut wal, 10, &[2], 10);
    drop(wal);
    let snaps = snapshots(d.path());
    flip(&snaps[1], 33);
    let (_, rec) = Wal::open(cfg(d.path())).unwrap();
    assert_eq!(rec.snapshot, Some((5, b"five".to_vec())));
    expect_entries(&rec, 6..=12, 10);
    // The bad one was set aside, not deleted.
    assert!(d.path().join("snapshot.000000000000000a.corrupt").exists());
}

#[test]
fn truncated_snapshot_is_rejected() {
    let d = tempfile::tempdir().unwrap();
    let (mut wal, _) = Wal::open(cfg(d.path())).unwrap();
    append_batches(&mut wal, 0, &[3], 10);
    wal.save_snapshot(3, &[7u8; 1000]).unwrap();
    drop(wal);
    let s = &snapshots(d.path())[0];
    OpenOptions::new()
        .write(true)
        .open(s)
        .unwrap()
        .set_len(500)
        .unwrap();
    let (_, rec) = Wal::open(cfg(d.path())).unwrap();
    assert_eq!(rec.snapshot, None);
    expect_entries(&rec, 1..=3, 10);
}

#[test]
fn installed_snapshot_ahead_of_the_log() {
    let d = tempfile::tempdir().unwrap();
    let (mut wal, _) = Wal::open(cfg(d.path())).unwrap();
    append_batches(&mut wal, 0, &[3], 10);
    wal.save_snapshot(2, b"two").unwrap();
    wal.save_snapshot(100, b"hundred").unwrap();
    assert_eq!(wal.last_zxid(), 100);
    assert!(matches!(
        wal.append(&[(50, b"x")]),
        Err(StorageError::InvalidAppend(_))
    ));
    append_batches(&mut wal, 100, &[2], 10);
    drop(wal);
    let (_, rec) = Wal::open(cfg(d.path())).unwrap();
    assert_eq!(rec.snapshot, Some((100, b"hundred".to_vec())));
    expect_entries(&rec, 101..=102, 10);
    // Without the installed snapshot, entries 4..=100 exist nowhere: refuse.
    let snaps = snapshots(d.path());
    flip(&snaps[1], 35);
    let msg = corrupt_msg(Wal::open(cfg(d.path())));
    assert!(msg.contains("installed at zxid 100"), "{msg}");
}

#[test]
fn snapshot_older_than_newest_is_rejected() {
    let d = tempfile::tempdir().unwrap();
    let (mut wal, _) = Wal::open(cfg(d.path())).unwrap();
    append_batches(&mut wal, 0, &[3], 10);
    wal.save_snapshot(3, b"x").unwrap();
    assert!(matches!(
        wal.save_snapshot(2, b"y"),
        Err(StorageError::InvalidAppend(_))
    ));
    wal.save_snapshot(3, b"again").unwrap();
    append_batches(&mut wal, 3, &[1], 10);
}

#[test]
fn leftover_tmp_files_are_removed() {
    let d = tempfile::tempdir().unwrap();
    drop(Wal::open(cfg(d.path())).unwrap());
    std::fs::write(d.path().join("snapshot.0000000000000009.tmp"), b"partial").unwrap();
    std::fs::write(d.path().join("log.0000000000000001.tmp"), b"partial").unwrap();
    let (_, rec) = Wal::open(cfg(d.path())).unwrap();
    assert_eq!(rec, Recovered::default());
    assert!(!d.path().join("snapshot.0000000000000009.tmp").exists());
    assert!(!d.path().join("log.0000000000000001.tmp").exists());
}

fn with_faults(dir: &Path, f: &Arc<FaultInjector>) -> StorageConfig {
    StorageConfig {
        faults: Some(f.clone()),
        ..cfg(dir)
    }
}

#[test]
fn failed_fsync_poisons_the_wal() {
    let d = tempfile::tempdir().unwrap();
    let f = FaultInjector::new();
    let (mut wal, _) = Wal::open(with_faults(d.path(), &f)).unwrap();
    append_batches(&mut wal, 0, &[2], 10);
    f.fail_nth(IoOp::Sync, 1, Fault::Error);
    let err = wal.append(&[(3, b"x")]).unwrap_err();
    assert!(err.to_string().contains("fdatasync"), "{err}");
    // Never again, not even after the fault is gone (fsyncgate).
    assert!(matches!(
        wal.append(&[(4, b"y")]),
        Err(StorageError::Poisoned(_))
    ));
    assert!(matches!(
        wal.save_snapshot(2, b"s"),
        Err(StorageError::Poisoned(_))
    ));
    drop(wal);
    let (_, rec) = Wal::open(cfg(d.path())).unwrap();
    // The unacknowledged entry may or may not be there; the acknowledged ones are.
    assert!(rec.entries.len() == 2 || rec.entries.len() == 3);
    assert_eq!(rec.entries[..2], [(1, payload(1, 10)), (2, payload(2, 10))]);
}

#[test]
fn short_write_poisons_and_recovers_to_prefix() {
    let d = tempfile::tempdir().unwrap();
    let f = FaultInjector::new();
    let (mut wal, _) = Wal::open(with_faults(d.path(), &f)).unwrap();
    append_batches(&mut wal, 0, &[2], 10);
    f.fail_nth(IoOp::Write, 1, Fault::Partial(37));
    assert!(wal.append(&[(3, b"x"), (4, b"y")]).is_err());
    assert!(matches!(
        wal.append(&[(5, b"y")]),
        Err(StorageError::Poisoned(_))
    ));
    drop(wal);
    let (_, rec) = Wal::open(cfg(d.path())).unwrap();
    expect_entries(&rec, 1..=2, 10);
}

#[test]
fn failed_write_of_segment_header_poisons() {
    let d = tempfile::tempdir().unwrap();
    let f = FaultInjector::new();
    let (mut wal, _) = Wal::open(with_faults(d.path(), &f)).unwrap();
    f.fail_nth(IoOp::Write, 1, Fault::Error);
    assert!(wal.append(&[(1, b"x")]).is_err());
    drop(wal);
    let (mut wal, rec) = Wal::open(cfg(d.path())).unwrap();
    assert!(rec.entries.is_empty());
    wal.append(&[(1, b"x")]).unwrap();
}

#[test]
fn failed_snapshot_write_poisons() {
    let d = tempfile::tempdir().unwrap();
    let f = FaultInjector::new();
    let (mut wal, _) = Wal::open(with_faults(d.path(), &f)).unwrap();
    append_batches(&mut wal, 0, &[2], 10);
    f.fail_nth(IoOp::Rename, 1, Fault::Error);
    assert!(wal.save_snapshot(2, b"img").is_err());
    assert!(matches!(
        wal.append(&[(3, b"x")]),
        Err(StorageError::Poisoned(_))
    ));
    drop(wal);
    let (_, rec) = Wal::open(cfg(d.path())).unwrap();
    assert_eq!(rec.snapshot, None);
    expect_entries(&rec, 1..=2, 10);
}

#[test]
fn read_fault_during_recovery_is_an_error() {
    let d = tempfile::tempdir().unwrap();
    let (mut wal, _) = Wal::open(cfg(d.path())).unwrap();
    append_batches(&mut wal, 0, &[2], 10);
    drop(wal);
    let f = FaultInjector::new();
    f.fail_nth(IoOp::Read, 2, Fault::Error);
    let err = Wal::open(with_faults(d.path(), &f)).unwrap_err();
    assert!(matches!(err, StorageError::Io { .. }), "{err}");
}

/// One step of a crash-test workload.
#[derive(Clone, Debug)]
enum Step {
    /// A batch: the payload length of each entry.
    Append(Vec<usize>),
    /// A snapshot at the last acknowledged zxid.
    Snapshot,
    /// A snapshot installed from elsewhere, this far above the last zxid; appends
    /// continue above it.
    Install(u8),
}

fn steps() -> impl Strategy<Value = Vec<Step>> {
    let step = prop_oneof![
        6 => prop::collection::vec(0usize..300, 1..6).prop_map(Step::Append),
        1 => Just(Step::Snapshot),
        1 => (1u8..5).prop_map(Step::Install),
    ];
    prop::collection::vec(step, 1..25)
}

fn image(z: Zxid) -> Vec<u8> {
    z.to_le_bytes().repeat(1 + (z as usize % 20))
}

/// Runs `steps` until the first error. Returns (every zxid attempted with its
/// payload length, last acknowledged zxid, snapshot zxids attempted).
fn run_steps(wal: &mut Wal, steps: &[Step]) -> (Vec<(Zxid, usize)>, Zxid, Vec<Zxid>) {
    let mut attempted = Vec::new();
    let mut acked = 0;
    let mut snaps = Vec::new();
    let mut z = 0;
    for step in steps {
        match step {
            Step::Append(lens) => {
                let owned: Vec<(Zxid, Vec<u8>)> = lens
                    .iter()
                    .map(|&len| {
                        z += 1;
                        attempted.push((z, len));
                        (z, payload(z, len))
                    })
                    .collect();
                let refs: Vec<(Zxid, &[u8])> = owned.iter().map(|(z, p)| (*z, &p[..])).collect();
                if wal.append(&refs).is_err() {
                    break;
                }
                acked = z;
            }
            Step::Snapshot => {
                snaps.push(acked);
                if wal.save_snapshot(acked, &image(acked)).is_err() {
                    break;
                }
            }
            Step::Install(k) => {
                // Entries attempted but not acknowledged would be replaced by the
                // installed state; a failed append ended the run before this anyway.
                z += *k as Zxid;
                snaps.push(z);
                if wal.save_snapshot(z, &image(z)).is_err() {
                    break;
                }
                acked = z;
            }
        }
    }
    (attempted, acked, snaps)
}

/// Every recovered entry reads back from the place recovery gives for it.
fn assert_positions_read_back(wal: &Wal, rec: &Recovered) {
    assert_eq!(rec.positions.len(), rec.entries.len());
    let wanted: Vec<(Zxid, EntryPos)> = rec
        .entries
        .iter()
        .zip(&rec.positions)
        .map(|((z, _), p)| (*z, *p))
        .collect();
    let payloads = wal.read_entries(&wanted).unwrap();
    let want: Vec<&Vec<u8>> = rec.entries.iter().map(|(_, p)| p).collect();
    assert_eq!(payloads.iter().collect::<Vec<_>>(), want);
}

/// The crash property: what recovery returns is the snapshot's state plus exactly the
/// next run of attempted entries, reaching at least the last acknowledged one.
fn check_prefix(rec: &Recovered, attempted: &[(Zxid, usize)], acked: Zxid, snaps: &[Zxid]) {
    let s = match &rec.snapshot {
        Some((s, img)) => {
            assert!(snaps.contains(s), "snapshot {s} was never taken");
            assert_eq!(img, &image(*s));
            *s
        }
        None => 0,
    };
    let after: Vec<(Zxid, Vec<u8>)> = attempted
        .iter()
        .filter(|(z, _)| *z > s)
        .map(|&(z, len)| (z, payload(z, len)))
        .collect();
    assert!(
        rec.entries.len() <= after.len(),
        "more entries than appended"
    );
    assert_eq!(rec.entries[..], after[..rec.entries.len()], "not a prefix");
    let recovered_upto = rec.entries.last().map_or(s, |e| e.0);
    assert!(
        recovered_upto >= acked,
        "acknowledged zxid {acked} lost (recovered up to {recovered_upto})"
    );
}

fn crash_cfg(dir: &Path, prealloc: bool) -> StorageConfig {
    StorageConfig {
        segment_bytes_max: 700,
        preallocate_bytes: if prealloc { 2048 } else { 0 },
        snapshots_kept: 2,
        ..cfg(dir)
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Power off after any number of bytes (a byte prefix of everything written reaches
    /// the disk): recovery succeeds and returns a prefix that holds every acknowledged
    /// entry; and the recovered log takes new appends that survive the next restart.
    #[test]
    fn crash_at_any_byte_recovers_a_prefix(
        steps in steps(),
        prealloc in any::<bool>(),
        at in any::<prop::sample::Index>(),
    ) {
        // Dry run to learn how many bytes the workload writes.
        let dry = tempfile::tempdir().unwrap();
        let f = FaultInjector::new();
        let (mut wal, _) = Wal::open(StorageConfig { faults: Some(f.clone()), ..crash_cfg(dry.path(), prealloc) }).unwrap();
        run_steps(&mut wal, &steps);
        drop(wal);
        let total = f.bytes_written();
        let crash_at = at.index(total as usize + 1) as u64;

        let d = tempfile::tempdir().unwrap();
        let f = FaultInjector::new();
        f.crash_after_bytes(crash_at);
        let (mut wal, _) = Wal::open(StorageConfig { faults: Some(f.clone()), ..crash_cfg(d.path(), prealloc) }).unwrap();
        let (attempted, acked, snaps) = run_steps(&mut wal, &steps);
        drop(wal);

        let (mut wal, rec) = Wal::open(crash_cfg(d.path(), prealloc)).unwrap();
        check_prefix(&rec, &attempted, acked, &snaps);
        assert_positions_read_back(&wal, &rec);

        // Life goes on after recovery.
        let next = wal.last_zxid() + 1;
        wal.append(&[(next, b"after"), (next + 1, b"restart")]).unwrap();
        drop(wal);
        let (_, rec2) = Wal::open(crash_cfg(d.path(), prealloc)).unwrap();
        prop_assert_eq!(rec2.snapshot, rec.snapshot);
        let mut want = rec.entries.clone();
        want.push((next, b"after".to_vec()));
        want.push((next + 1, b"restart".to_vec()));
        prop_assert_eq!(rec2.entries, want);
    }

    /// Power off while the last batch was written but not synced, with the disk keeping
    /// an arbitrary subset of its 512-byte sectors (out-of-order page writeback).
    /// Recovery returns the acknowledged entries, plus the last batch only if whole.
    #[test]
    fn unsynced_batch_with_lost_sectors_is_all_or_nothing(
        steps in steps(),
        last in prop::collection::vec(0usize..400, 1..12),
        lost in prop::collection::vec(any::<bool>(), 1..40),
    ) {
        let d = tempfile::tempdir().unwrap();
        let f = FaultInjector::new();
        let c = StorageConfig { faults: Some(f.clone()), ..crash_cfg(d.path(), true) };
        let (mut wal, _) = Wal::open(c).unwrap();
        let steps: Vec<Step> = steps.into_iter().filter(|s| !matches!(s, Step::Snapshot)).collect();
        let (mut attempted, acked, snaps) = run_steps(&mut wal, &steps);
        prop_assert!(acked >= attempted.last().map_or(0, |a| a.0));
        // The last batch: written, then its fdatasync fails and the machine dies.
        let before: Vec<(PathBuf, Vec<u8>)> =
            segments(d.path()).into_iter().map(|p| { let b = std::fs::read(&p).unwrap(); (p, b) }).collect();
        let owned: Vec<(Zxid, Vec<u8>)> =
            last.iter().enumerate().map(|(i, &len)| (acked + 1 + i as Zxid, payload(acked + 1 + i as Zxid, len))).collect();
        attempted.extend(owned.iter().map(|(z, p)| (*z, p.len())));
        let refs: Vec<(Zxid, &[u8])> = owned.iter().map(|(z, p)| (*z, &p[..])).collect();
        // (When the batch needs a new segment, the roll's own sync fails instead and
        // nothing of the batch is written: also fine.)
        f.fail_nth(IoOp::Sync, 1, Fault::Error);
        prop_assert!(wal.append(&refs).is_err());
        drop(wal);
        // Find what the failed append changed and lose some of its sectors.
        let seg = segments(d.path()).pop().unwrap();
        let now = std::fs::read(&seg).unwrap();
        let old = before.iter().find(|(p, _)| *p == seg).map(|(_, b)| b.clone()).unwrap_or_default();
        let start = now.iter().zip(old.iter()).position(|(a, b)| a != b).unwrap_or(old.len().min(now.len())).max(SEGMENT_HEADER_LEN);
        let end = now.iter().rposition(|&b| b != 0).map_or(start, |e| e + 1).max(start);
        let file = OpenOptions::new().write(true).open(&seg).unwrap();
        let first_sector = start / 512;
        for (i, &gone) in lost.iter().enumerate() {
            let s = ((first_sector + i) * 512).max(start);
            let e = ((first_sector + i + 1) * 512).min(end);
            if gone && s < e {
                file.write_all_at(&vec![0u8; e - s], s as u64).unwrap();
            }
        }
        drop(file);
        let (wal, rec) = Wal::open(crash_cfg(d.path(), true)).unwrap();
        check_prefix(&rec, &attempted, acked, &snaps);
        assert_positions_read_back(&wal, &rec);
        let of_last = rec.entries.iter().filter(|e| e.0 > acked).count();
        prop_assert!(of_last == 0 || of_last == last.len(),
            "partial batch recovered: {} of {}", of_last, last.len());
    }
}

// ---- LogWriter ----

fn writer_rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
}

#[test]
fn log_writer_group_commits_and_reports_in_order() {
    let d = tempfile::tempdir().unwrap();
    let (wal, _) = Wal::open(cfg(d.path())).unwrap();
    let (w, mut rx) = LogWriter::spawn(wal, LogWriterConfig::default());
    for z in 1..=1000 {
        w.submit(z, Bytes::from(payload(z, 20))).unwrap();
    }
    let mut last = 0;
    writer_rt().block_on(async {
        while last < 1000 {
            match rx.recv().await.unwrap() {
                Durable::UpTo(z) => {
                    assert!(z > last);
                    last = z;
                }
                Durable::Failed(e) => panic!("{e}"),
            }
        }
    });
    assert!(matches!(
        w.submit(5, Bytes::from_static(b"x")),
        Err(StorageError::InvalidAppend(_))
    ));
    w.snapshot(1000, b"snap".to_vec()).unwrap();
    w.submit(1001, Bytes::from_static(b"after")).unwrap();
    let w2 = w.clone();
    w.shutdown();
    assert!(matches!(
        w2.submit(1002, Bytes::from_static(b"x")),
        Err(StorageError::WriterStopped(_))
    ));
    drop(w2);
    let (_, rec) = Wal::open(cfg(d.path())).unwrap();
    assert_eq!(rec.snapshot, Some((1000, b"snap".to_vec())));
    assert_eq!(rec.entries, vec![(1001, b"after".to_vec())]);
}

/// A snapshot written beside the log (by the caller, not the writer thread) counts once
/// adopted, also when entries above its zxid were appended meanwhile; an older one is
/// refused and its file removed.
#[test]
fn log_writer_adopts_a_snapshot_written_beside_it() {
    let d = tempfile::tempdir().unwrap();
    let (wal, _) = Wal::open(cfg(d.path())).unwrap();
    let (w, mut rx) = LogWriter::spawn(wal, LogWriterConfig::default());
    let wait_durable = |rx: &mut tokio::sync::mpsc::UnboundedReceiver<Durable>, upto: Zxid| {
        writer_rt().block_on(async {
            let mut last = 0;
            while last < upto {
                match rx.recv().await.unwrap() {
                    Durable::UpTo(z) => last = z,
                    Durable::Failed(e) => panic!("{e}"),
                }
            }
        })
    };
    for z in 1..=10 {
        w.submit(z, Bytes::from(payload(z, 5))).unwrap();
    }
    wait_durable(&mut rx, 10);
    // Entries above the snapshot go in while it is written.
    for z in 11..=15 {
        w.submit(z, Bytes::from(payload(z, 5))).unwrap();
    }
    w.snapshot_beside(10, b"image at 10").unwrap();
    for z in 16..=20 {
        w.submit(z, Bytes::from(payload(z, 5))).unwrap();
    }
    wait_durable(&mut rx, 20);
    // An older one than the newest is refused, and leaves no file.
    w.snapshot_beside(5, b"image at 5").unwrap();
    w.shutdown();
    let names: Vec<String> = std::fs::read_dir(d.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names.iter().filter(|n| n.starts_with("snapshot")).count(),
        1,
        "{names:?}"
    );
    let (_, rec) = Wal::open(cfg(d.path())).unwrap();
    assert_eq!(rec.snapshot, Some((10, b"image at 10".to_vec())));
    let got: Vec<Zxid> = rec.entries.iter().map(|e| e.0).collect();
    assert_eq!(got, (11..=20).collect::<Vec<_>>());
}

/// Blocks every write until released, to hold the writer thread mid-batch.
#[derive(Debug, Default)]
struct Gate {
    open: std::sync::Mutex<bool>,
    cv: std::sync::Condvar,
}

impl Gate {
    fn release(&self) {
        *self.open.lock().unwrap() = true;
        self.cv.notify_all();
    }
}

impl FaultHook for Gate {
    fn before(&self, op: IoOp, _: &Path, _: usize) -> Option<Fault> {
        if op == IoOp::Write {
            let mut g = self.open.lock().unwrap();
            while !*g {
                g = self.cv.wait(g).unwrap();
            }
        }
        None
    }
}

#[test]
fn log_writer_queue_is_bounded() {
    let d = tempfile::tempdir().unwrap();
    let gate = Arc::new(Gate::default());
    let c = StorageConfig {
        faults: Some(gate.clone()),
        ..cfg(d.path())
    };
    let (wal, _) = Wal::open(c).unwrap();
    let wc = LogWriterConfig {
        queue_entries_max: 10,
        queue_bytes_max: 1000,
        ..LogWriterConfig::default()
    };
    let (w, mut rx) = LogWriter::spawn(wal, wc);
    // The first entry is taken by the writer, which then blocks in write.
    w.submit(1, Bytes::from_static(b"first")).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(100));
    for z in 2..=11 {
        w.submit(z, Bytes::from_static(b"x")).unwrap();
    }
    let err = w.submit(12, Bytes::from_static(b"x")).unwrap_err();
    assert!(
        matches!(
            err,
            StorageError::QueueFull {
                limit: "queue_entries_max",
                ..
            }
        ),
        "{err}"
    );
    gate.release();
    writer_rt().block_on(async {
        let mut last = 0;
        while last < 11 {
            if let Durable::UpTo(z) = rx.recv().await.unwrap() {
                last = z;
            }
        }
    });
    w.shutdown();
}

#[test]
fn log_writer_queue_bytes_are_bounded() {
    let d = tempfile::tempdir().unwrap();
    let gate = Arc::new(Gate::default());
    let c = StorageConfig {
        faults: Some(gate.clone()),
        ..cfg(d.path())
    };
    let (wal, _) = Wal::open(c).unwrap();
    let wc = LogWriterConfig {
        queue_bytes_max: 100,
        ..LogWriterConfig::default()
    };
    let (w, mut rx) = LogWriter::spawn(wal, wc);
    w.submit(1, Bytes::from_static(b"first")).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(100));
    w.submit(2, Bytes::from(vec![0u8; 60])).unwrap();
    let err = w.submit(3, Bytes::from(vec![0u8; 50])).unwrap_err();
    assert!(
        matches!(
            err,
            StorageError::QueueFull {
                limit: "queue_bytes_max",
                ..
            }
        ),
        "{err}"
    );
    // A refused submit does not consume the zxid.
    w.submit(3, Bytes::from(vec![0u8; 40])).unwrap();
    gate.release();
    writer_rt().block_on(async {
        let mut last = 0;
        while last < 3 {
            if let Durable::UpTo(z) = rx.recv().await.unwrap() {
                last = z;
            }
        }
    });
    // An entry above the byte bound still fits an empty queue (else it never could).
    w.submit(4, Bytes::from(vec![0u8; 500])).unwrap();
    w.shutdown();
    let (_, rec) = Wal::open(cfg(d.path())).unwrap();
    assert_eq!(rec.entries.len(), 4);
}

#[test]
fn log_writer_failure_is_reported_and_stops() {
    let d = tempfile::tempdir().unwrap();
    let f = FaultInjector::new();
    let (wal, _) = Wal::open(with_faults(d.path(), &f)).unwrap();
    let (w, mut rx) = LogWriter::spawn(wal, LogWriterConfig::default());
    w.submit(1, Bytes::from_static(b"a")).unwrap();
    let first = writer_rt().block_on(rx.recv()).unwrap();
    assert_eq!(first, Durable::UpTo(1));
    f.fail_nth(IoOp::Sync, 1, Fault::Error);
    w.submit(2, Bytes::from_static(b"b")).unwrap();
    match writer_rt().block_on(rx.recv()).unwrap() {
        Durable::Failed(msg) => assert!(msg.contains("fdatasync"), "{msg}"),
        other => panic!("expected Failed, got {other:?}"),
    }
    assert!(
        writer_rt().block_on(rx.recv()).is_none(),
        "nothing after Failed"
    );
    assert!(matches!(
        w.submit(3, Bytes::from_static(b"c")),
        Err(StorageError::WriterStopped(_))
    ));
    w.shutdown();
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Any mix of queued, deferred and inline commits (and a snapshot) writes every
    /// entry once, in zxid order; an inline commit's answer and every `UpTo` cover
    /// only what was submitted.
    #[test]
    fn log_writer_inline_and_threaded_commits_keep_log_order(
        steps in proptest::collection::vec(0u8..5, 1..60)
    ) {
        let d = tempfile::tempdir().unwrap();
        let (wal, _) = Wal::open(cfg(d.path())).unwrap();
        let (w, mut rx) = LogWriter::spawn(wal, LogWriterConfig::default());
        let mut z: Zxid = 0;
        let mut snapshot_at = None;
        for step in steps {
            match step {
                0 => { z += 1; w.submit(z, Bytes::from(payload(z, 7))).unwrap(); }
                1 | 2 => { z += 1; w.submit_deferred(z, Bytes::from(payload(z, 7))).unwrap(); }
                3 => {
                    if let Some(upto) = w.commit_inline().unwrap() {
                        prop_assert_eq!(upto, z, "inline commits everything queued");
                    }
                }
                _ => {
                    if z > 0 && snapshot_at.is_none() {
                        w.snapshot(z, b"image".to_vec()).unwrap();
                        snapshot_at = Some(z);
                    }
                    w.kick();
                }
            }
            while let Ok(d) = rx.try_recv() {
                match d {
                    Durable::UpTo(u) => prop_assert!(u <= z),
                    Durable::Failed(e) => panic!("{e}"),
                }
            }
        }
        w.shutdown();
        let (_, rec) = Wal::open(cfg(d.path())).unwrap();
        let got: Vec<Zxid> = rec.entries.iter().map(|e| e.0).collect();
        let from = snapshot_at.map_or(1, |s| s + 1);
        let want: Vec<Zxid> = (from..=z).collect();
        prop_assert_eq!(&got, &want);
        for (zz, data) in &rec.entries {
            prop_assert_eq!(data, &payload(*zz, 7));
        }
    }
}

#[test]
fn log_writer_commits_inline_while_its_thread_is_parked() {
    let d = tempfile::tempdir().unwrap();
    let (wal, _) = Wal::open(cfg(d.path())).unwrap();
    let (w, mut rx) = LogWriter::spawn(wal, LogWriterConfig::default());
    // The thread parks as soon as it finds the queue empty; until then the inline
    // path declines and hands the entry over.
    let mut inline = 0;
    for z in 1..=200 {
        w.submit_deferred(z, Bytes::from(payload(z, 5))).unwrap();
        match w.commit_inline().unwrap() {
            Some(upto) => {
                assert_eq!(upto, z);
                inline += 1;
            }
            None => match writer_rt().block_on(rx.recv()).unwrap() {
                Durable::UpTo(upto) => assert_eq!(upto, z),
                Durable::Failed(e) => panic!("{e}"),
            },
        }
    }
    assert!(inline > 0, "the parked thread never let the caller write");
    let stats = w.stats();
    assert_eq!(
        stats.entries.load(std::sync::atomic::Ordering::Relaxed),
        200
    );
    w.shutdown();
    let (_, rec) = Wal::open(cfg(d.path())).unwrap();
    expect_entries(&rec, 1..=200, 5);
}

#[test]
fn log_writer_inline_failure_stops_the_writer() {
    let d = tempfile::tempdir().unwrap();
    let f = FaultInjector::new();
    let (wal, _) = Wal::open(with_faults(d.path(), &f)).unwrap();
    let (w, _rx) = LogWriter::spawn(wal, LogWriterConfig::default());
    // Until the thread is parked the entry goes to it instead; submit until one is
    // committed inline (bounded), so that the thread is parked for the next.
    let mut z = 0;
    loop {
        z += 1;
        assert!(z < 10_000, "never committed inline");
        w.submit_deferred(z, Bytes::from_static(b"x")).unwrap();
        if w.commit_inline().unwrap().is_some() {
            break;
        }
        std::thread::yield_now();
    }
    f.fail_nth(IoOp::Sync, 1, Fault::Error);
    z += 1;
    w.submit_deferred(z, Bytes::from_static(b"x")).unwrap();
    let err = w.commit_inline().expect_err("the injected fdatasync fault");
    assert!(err.to_string().contains("fdatasync"), "{err}");
    assert!(matches!(
        w.submit(z + 1, Bytes::from_static(b"y")),
        Err(StorageError::WriterStopped(_))
    ));
    assert!(matches!(
        w.commit_inline(),
        Err(StorageError::WriterStopped(_))
    ));
    w.shutdown();
}

#[test]
fn log_writer_drop_flushes() {
    let d = tempfile::tempdir().unwrap();
    let (wal, _) = Wal::open(cfg(d.path())).unwrap();
    let (w, _rx) = LogWriter::spawn(wal, LogWriterConfig::default());
    for z in 1..=50 {
        w.submit(z, Bytes::from(payload(z, 3))).unwrap();
    }
    drop(w);
    let (_, rec) = Wal::open(cfg(d.path())).unwrap();
    expect_entries(&rec, 1..=50, 3);
}

/// Micro-benchmark: entries/s through LogWriter with real fdatasync, for 1 and 64
/// submitters that each wait for their entry to be durable before sending the next
/// (like clients waiting for a reply). Run with:
/// `cargo test --release -p coordd-storage --lib tests::bench_log_writer -- --ignored --nocapture`
/// (STORAGE_BENCH_DIR picks the disk; default: the system temp dir).
#[test]
#[ignore]
fn bench_log_writer() {
    use std::sync::{Condvar, Mutex};
    use std::time::{Duration, Instant};

    let base = std::env::var_os("STORAGE_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let entry_len = 200;
    for &submitters in &[1usize, 4, 16, 64] {
        let d = tempfile::tempdir_in(&base).unwrap();
        let c = StorageConfig {
            dir: d.path().to_path_buf(),
            ..StorageConfig::default()
        };
        let (wal, _) = Wal::open(c).unwrap();
        let (w, mut rx) = LogWriter::spawn(wal, LogWriterConfig::default());
        // zxid assignment and submit happen under one lock, as in the server.
        let next = Arc::new(Mutex::new(0i64));
        let durable = Arc::new((Mutex::new(0i64), Condvar::new()));
        let d2 = durable.clone();
        let pump = std::thread::spawn(move || {
            while let Some(Durable::UpTo(z)) = rx.blocking_recv() {
                *d2.0.lock().unwrap() = z;
                d2.1.notify_all();
            }
        });
        let run_for = Duration::from_secs(3);
        let start = Instant::now();
        let threads: Vec<_> = (0..submitters)
            .map(|_| {
                let w = w.clone();
                let next = next.clone();
                let durable = durable.clone();
                std::thread::spawn(move || {
                    let body = Bytes::from(vec![7u8; entry_len]);
                    let mut n = 0u64;
                    while start.elapsed() < run_for {
                        let z = {
                            let mut g = next.lock().unwrap();
                            *g += 1;
                            w.submit(*g, body.clone()).unwrap();
                            *g
                        };
                        let mut g = durable.0.lock().unwrap();
                        while *g < z {
                            g = durable.1.wait(g).unwrap();
                        }
                        n += 1;
                    }
                    n
                })
            })
            .collect();
        let total: u64 = threads.into_iter().map(|t| t.join().unwrap()).sum();
        let secs = start.elapsed().as_secs_f64();
        w.shutdown();
        pump.join().unwrap();
        println!(
            "log writer: {submitters:>2} submitters, {entry_len}-byte entries: {:>8.0} entries/s ({total} in {secs:.2}s)",
            total as f64 / secs
        );
        let t = Instant::now();
        let (_, rec) = Wal::open(StorageConfig {
            dir: d.path().to_path_buf(),
            ..StorageConfig::default()
        })
        .unwrap();
        println!(
            "  recovery: {} entries in {:.0} ms",
            rec.entries.len(),
            t.elapsed().as_secs_f64() * 1000.0
        );
    }
}

// ---- Truncation (Raft's suffix delete) and small durable files ----

fn entries_of(rec: &Recovered) -> Vec<Zxid> {
    rec.entries.iter().map(|e| e.0).collect()
}

#[test]
fn truncate_deletes_a_suffix_and_appends_continue_after_it() {
    let d = tempfile::tempdir().unwrap();
    let (mut wal, _) = Wal::open(cfg(d.path())).unwrap();
    append_batches(&mut wal, 0, &[3, 4, 3], 10);
    wal.truncate_after(4).unwrap();
    assert_eq!(wal.last_zxid(), 4);
    // At or above the end: nothing to delete, nothing written.
    let size = std::fs::metadata(&segments(d.path())[0]).unwrap().len();
    wal.truncate_after(4).unwrap();
    wal.truncate_after(9).unwrap();
    assert_eq!(
        std::fs::metadata(&segments(d.path())[0]).unwrap().len(),
        size
    );
    // New entries at the truncated zxids, with other payloads.
    wal.append(&[(5, b"new5"), (6, b"new6")]).unwrap();
    drop(wal);
    let (mut wal, rec) = Wal::open(cfg(d.path())).unwrap();
    assert_eq!(entries_of(&rec), vec![1, 2, 3, 4, 5, 6]);
    assert_eq!(rec.entries[3], (4, payload(4, 10)));
    assert_eq!(rec.entries[4], (5, b"new5".to_vec()));
    assert_eq!(wal.last_zxid(), 6);
    // Truncating everything, then starting again from zxid 1.
    wal.truncate_after(0).unwrap();
    wal.append(&[(1, b"again")]).unwrap();
    drop(wal);
    let (_, rec) = Wal::open(cfg(d.path())).unwrap();
    assert_eq!(rec.entries, vec![(1, b"again".to_vec())]);
}

#[test]
fn truncate_across_segments_keeps_segment_names_rising() {
    let d = tempfile::tempdir().unwrap();
    let c = StorageConfig {
        segment_bytes_max: 300,
        preallocate_bytes: 0,
        ..cfg(d.path())
    };
    let (mut wal, _) = Wal::open(c.clone()).unwrap();
    append_batches(&mut wal, 0, &[2; 12], 40);
    let before = segments(d.path());
    assert_eq!(wal.locate(6).unwrap().unwrap().0, before[1]);
    assert!(before.len() >= 4, "{before:?}");
    // Back into the first segment: the segments after it now hold only deleted entries,
    // and new segments must not reuse their names.
    wal.truncate_after(1).unwrap();
    let mut z = 1;
    for _ in 0..10 {
        z += 1;
        wal.append(&[(z, format!("v2-{z}").as_bytes())]).unwrap();
    }
    drop(wal);
    let after = segments(d.path());
    assert!(after.len() > before.len(), "{after:?}");
    let (_, rec) = Wal::open(c).unwrap();
    assert_eq!(entries_of(&rec), (1..=z).collect::<Vec<_>>());
    assert_eq!(rec.entries[0], (1, payload(1, 40)));
    assert_eq!(rec.entries[5], (6, b"v2-6".to_vec()));
}

#[test]
fn truncate_below_the_newest_snapshot_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let (mut wal, _) = Wal::open(cfg(d.path())).unwrap();
    append_batches(&mut wal, 0, &[5], 10);
    wal.save_snapshot(3, b"s3").unwrap();
    assert!(matches!(
        wal.truncate_after(2),
        Err(StorageError::InvalidAppend(_))
    ));
    // Not poisoned; truncating to exactly the snapshot is fine.
    wal.truncate_after(3).unwrap();
    wal.append(&[(4, b"x")]).unwrap();
    drop(wal);
    let (_, rec) = Wal::open(cfg(d.path())).unwrap();
    assert_eq!(rec.snapshot, Some((3, b"s3".to_vec())));
    assert_eq!(rec.entries, vec![(4, b"x".to_vec())]);
}

#[test]
fn segments_before_a_truncation_are_removed_only_when_covered() {
    // A segment may go once a snapshot covers the zxid the next segment's chain starts
    // from (its last record), even if a later truncate marker deleted some of its entries.
    let d = tempfile::tempdir().unwrap();
    let c = StorageConfig {
        segment_bytes_max: 200,
        preallocate_bytes: 0,
        snapshots_kept: 1,
        ..cfg(d.path())
    };
    let (mut wal, _) = Wal::open(c.clone()).unwrap();
    append_batches(&mut wal, 0, &[2; 8], 40);
    wal.truncate_after(3).unwrap();
    append_batches(&mut wal, 3, &[2; 8], 40);
    for s in [5, 12, 19] {
        wal.save_snapshot(s, format!("s{s}").as_bytes()).unwrap();
        drop(wal);
        let (w, rec) = Wal::open(c.clone()).unwrap();
        wal = w;
        assert_eq!(rec.snapshot, Some((s, format!("s{s}").into_bytes())));
        assert_eq!(entries_of(&rec), (s + 1..=19).collect::<Vec<_>>());
    }
}

#[test]
fn torn_truncate_marker_is_not_a_truncation() {
    let d = tempfile::tempdir().unwrap();
    let f = FaultInjector::new();
    let (mut wal, _) = Wal::open(with_faults(d.path(), &f)).unwrap();
    append_batches(&mut wal, 0, &[4], 10);
    f.fail_nth(IoOp::Write, 1, Fault::Partial(20));
    assert!(wal.truncate_after(2).is_err());
    assert!(matches!(
        wal.truncate_after(2),
        Err(StorageError::Poisoned(_))
    ));
    drop(wal);
    let (_, rec) = Wal::open(cfg(d.path())).unwrap();
    expect_entries(&rec, 1..=4, 10);
}

#[test]
fn damaged_truncate_marker_followed_by_entries_is_corruption() {
    let d = tempfile::tempdir().unwrap();
    let (mut wal, _) = Wal::open(cfg(d.path())).unwrap();
    append_batches(&mut wal, 0, &[4], 10);
    wal.truncate_after(2).unwrap();
    wal.append(&[(3, b"x")]).unwrap();
    drop(wal);
    let seg = &segments(d.path())[0];
    // The marker is the record after entry 4.
    let at = record_offset(seg, 4) + 32 + 10;
    flip(seg, at + 20);
    let msg = corrupt_msg(Wal::open(cfg(d.path())));
    assert!(msg.contains(&format!("offset {at}")), "{msg}");
}

#[test]
fn files_are_saved_atomically_and_read_back() {
    let d = tempfile::tempdir().unwrap();
    let (mut wal, _) = Wal::open(cfg(d.path())).unwrap();
    assert_eq!(wal.read_file("vote").unwrap(), None);
    wal.save_file("vote", b"term 1").unwrap();
    wal.save_file("vote", b"term 2, longer").unwrap();
    wal.save_file("raft-snapshot", &[]).unwrap();
    for bad in ["", "Vote", "a.b", "x.tmp", "LOCK", &"x".repeat(65)] {
        assert!(
            matches!(wal.save_file(bad, b"x"), Err(StorageError::Config(_))),
            "{bad}"
        );
    }
    drop(wal);
    let (wal, _) = Wal::open(cfg(d.path())).unwrap();
    assert_eq!(
        wal.read_file("vote").unwrap(),
        Some(b"term 2, longer".to_vec())
    );
    assert_eq!(wal.read_file("raft-snapshot").unwrap(), Some(Vec::new()));
    drop(wal);
    // Damage is corruption naming the file, never "no file".
    flip(&d.path().join("vote"), 30);
    let (wal, _) = Wal::open(cfg(d.path())).unwrap();
    match wal.read_file("vote") {
        Err(e @ StorageError::Corrupt { .. }) => {
            let msg = e.to_string();
            assert!(msg.contains("vote") && msg.contains("offset 24"), "{msg}");
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
    drop(wal);
    std::fs::write(d.path().join("vote"), b"short").unwrap();
    let (wal, _) = Wal::open(cfg(d.path())).unwrap();
    assert!(matches!(
        wal.read_file("vote"),
        Err(StorageError::Corrupt { .. })
    ));
    // A huge length field is refused before anything is allocated.
    let mut h = std::fs::read(d.path().join("raft-snapshot")).unwrap();
    h[16..24].copy_from_slice(&u64::MAX.to_le_bytes());
    std::fs::write(d.path().join("raft-snapshot"), &h).unwrap();
    assert!(matches!(
        wal.read_file("raft-snapshot"),
        Err(StorageError::Corrupt { .. })
    ));
}

#[test]
fn failed_file_save_poisons_and_keeps_the_old_contents() {
    for op in [IoOp::Write, IoOp::Sync, IoOp::Rename, IoOp::SyncDir] {
        let d = tempfile::tempdir().unwrap();
        let f = FaultInjector::new();
        let (mut wal, _) = Wal::open(with_faults(d.path(), &f)).unwrap();
        wal.save_file("vote", b"old").unwrap();
        f.fail_nth(op, 1, Fault::Error);
        assert!(wal.save_file("vote", b"new").is_err(), "{op:?}");
        assert!(matches!(
            wal.save_file("vote", b"new"),
            Err(StorageError::Poisoned(_))
        ));
        drop(wal);
        let (wal, _) = Wal::open(cfg(d.path())).unwrap();
        let got = wal.read_file("vote").unwrap().unwrap();
        // A failed directory fsync comes after the rename: either is acceptable then.
        if op == IoOp::SyncDir {
            assert!(got == b"old" || got == b"new");
        } else {
            assert_eq!(got, b"old", "{op:?}");
        }
    }
}

/// One step of the model-checked workload (truncation and files included).
#[derive(Clone, Debug)]
enum ModelStep {
    Append(Vec<usize>),
    /// Truncate this many zxids back from the last (clamped to the newest snapshot).
    Truncate(u8),
    /// A snapshot at the last zxid.
    Snapshot,
    /// A snapshot this far above the last zxid (installed / purged past the log).
    Install(u8),
    /// Replace the file "f" with this many bytes.
    File(u8),
}

fn model_steps() -> impl Strategy<Value = Vec<ModelStep>> {
    let step = prop_oneof![
        6 => prop::collection::vec(0usize..200, 1..5).prop_map(ModelStep::Append),
        2 => (0u8..6).prop_map(ModelStep::Truncate),
        1 => Just(ModelStep::Snapshot),
        1 => (1u8..4).prop_map(ModelStep::Install),
        1 => (0u8..100).prop_map(ModelStep::File),
    ];
    prop::collection::vec(step, 1..30)
}

/// What recovery should return after some steps: the newest snapshot, the entries above
/// it, and the file's contents.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
struct ModelState {
    snapshot: Option<(Zxid, Vec<u8>)>,
    entries: std::collections::BTreeMap<Zxid, Vec<u8>>,
    file: Option<Vec<u8>>,
}

impl ModelState {
    fn last(&self) -> Zxid {
        let s = self.snapshot.as_ref().map_or(0, |s| s.0);
        self.entries.keys().next_back().copied().unwrap_or(0).max(s)
    }

    fn snap_zxid(&self) -> Zxid {
        self.snapshot.as_ref().map_or(0, |s| s.0)
    }
}

/// Runs the steps until the first error, keeping the model. Returns the model after every
/// acknowledged step, and after the failed one (its effect may or may not be durable).
fn run_model(wal: &mut Wal, steps: &[ModelStep]) -> (ModelState, ModelState) {
    let mut m = ModelState::default();
    // Payloads differ between generations of one zxid (after truncations).
    let mut generation = 0u8;
    for step in steps {
        let mut next = m.clone();
        let res = match step {
            ModelStep::Append(lens) => {
                generation = generation.wrapping_add(1);
                let mut z = m.last();
                let owned: Vec<(Zxid, Vec<u8>)> = lens
                    .iter()
                    .map(|&len| {
                        z += 1;
                        let mut p = payload(z, len);
                        p.push(generation);
                        (z, p)
                    })
                    .collect();
                next.entries.extend(owned.iter().cloned());
                let refs: Vec<(Zxid, &[u8])> = owned.iter().map(|(z, p)| (*z, &p[..])).collect();
                wal.append(&refs)
            }
            ModelStep::Truncate(k) => {
                let t = (m.last() - *k as Zxid).max(m.snap_zxid());
                next.entries.split_off(&(t + 1));
                wal.truncate_after(t)
            }
            ModelStep::Snapshot | ModelStep::Install(_) => {
                let k = match step {
                    ModelStep::Install(k) => *k as Zxid,
                    _ => 0,
                };
                let s = m.last() + k;
                next.snapshot = Some((s, image(s)));
                next.entries = next.entries.split_off(&(s + 1));
                wal.save_snapshot(s, &image(s))
            }
            ModelStep::File(n) => {
                let contents = vec![*n; *n as usize];
                next.file = Some(contents.clone());
                wal.save_file("f", &contents)
            }
        };
        if res.is_err() {
            return (m, next);
        }
        m = next;
    }
    (m.clone(), m)
}

fn recovered_state(wal: &Wal, rec: &Recovered) -> ModelState {
    ModelState {
        snapshot: rec.snapshot.clone(),
        entries: rec.entries.iter().cloned().collect(),
        file: wal.read_file("f").unwrap(),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// "Acts like a map even after crashes": power off after any number of bytes, with
    /// appends, truncations, snapshots (also ahead of the log) and file replacements in
    /// the workload; recovery returns exactly the model's state after every acknowledged
    /// step, or after the one that failed (never anything else), and takes new appends.
    #[test]
    fn crash_at_any_byte_matches_the_model(
        steps in model_steps(),
        prealloc in any::<bool>(),
        at in any::<prop::sample::Index>(),
    ) {
        let dry = tempfile::tempdir().unwrap();
        let f = FaultInjector::new();
        let (mut wal, _) = Wal::open(StorageConfig { faults: Some(f.clone()), ..crash_cfg(dry.path(), prealloc) }).unwrap();
        run_model(&mut wal, &steps);
        drop(wal);
        let crash_at = at.index(f.bytes_written() as usize + 1) as u64;

        let d = tempfile::tempdir().unwrap();
        let f = FaultInjector::new();
        f.crash_after_bytes(crash_at);
        let (mut wal, _) = Wal::open(StorageConfig { faults: Some(f.clone()), ..crash_cfg(d.path(), prealloc) }).unwrap();
        let (acked, failed) = run_model(&mut wal, &steps);
        drop(wal);

        let (mut wal, rec) = Wal::open(crash_cfg(d.path(), prealloc)).unwrap();
        let got = recovered_state(&wal, &rec);
        prop_assert!(got == acked || got == failed,
            "recovered {:?}\nacknowledged {:?}\nfailed step's {:?}", got, acked, failed);

        let next = got.last() + 1;
        wal.append(&[(next, b"after")]).unwrap();
        drop(wal);
        let (wal, rec2) = Wal::open(crash_cfg(d.path(), prealloc)).unwrap();
        let mut want = got.clone();
        want.entries.insert(next, b"after".to_vec());
        prop_assert_eq!(recovered_state(&wal, &rec2), want);
    }
}

/// Entries read back from where `append_at` put them: across segment rolls, after a
/// reopen (recovery gives the same places), after a truncation (the survivors stay where
/// they were); a place that holds another record is `Corrupt`, never a wrong payload.
#[test]
fn entries_read_back_from_their_places() {
    let d = tempfile::tempdir().unwrap();
    let mut wanted: Vec<(Zxid, EntryPos)> = Vec::new();
    {
        let (mut wal, _) = Wal::open(crash_cfg(d.path(), true)).unwrap();
        for z in 1..=40 {
            let p = payload(z, 30 + z as usize);
            let at = wal.append_at(&[(z, &p[..])]).unwrap();
            assert_eq!(at.len(), 1);
            wanted.push((z, at[0]));
        }
        // Several entries in one batch.
        let batch: Vec<(Zxid, Vec<u8>)> = (41..=45).map(|z| (z, payload(z, 9))).collect();
        let refs: Vec<(Zxid, &[u8])> = batch.iter().map(|(z, p)| (*z, &p[..])).collect();
        let at = wal.append_at(&refs).unwrap();
        wanted.extend((41..=45).zip(at));
        assert!(
            segments(d.path()).len() > 2,
            "the test wants rolled segments"
        );
        let got = wal.read_entries(&wanted).unwrap();
        for ((z, _), p) in wanted.iter().zip(&got) {
            let len = if *z > 40 { 9 } else { 30 + *z as usize };
            assert_eq!(p, &payload(*z, len), "zxid {z}");
        }
    }
    let (mut wal, rec) = Wal::open(crash_cfg(d.path(), true)).unwrap();
    assert_eq!(
        rec.positions,
        wanted.iter().map(|(_, p)| *p).collect::<Vec<_>>()
    );
    assert_positions_read_back(&wal, &rec);

    wal.truncate_after(30).unwrap();
    let survivors = &wanted[..30];
    assert_eq!(wal.read_entries(survivors).unwrap().len(), 30);
    let p = payload(31, 5);
    let at = wal.append_at(&[(31, &p[..])]).unwrap();
    assert_eq!(wal.read_entries(&[(31, at[0])]).unwrap(), vec![p]);

    // The wrong zxid for a place, or a place inside a record: Corrupt.
    let (z, pos) = wanted[3];
    let wrong = wal.read_entries(&[(z + 1, pos)]).unwrap_err();
    assert!(matches!(wrong, StorageError::Corrupt { .. }), "{wrong}");
    let inside = EntryPos {
        offset: pos.offset + 1,
        ..pos
    };
    let wrong = wal.read_entries(&[(z, inside)]).unwrap_err();
    assert!(matches!(wrong, StorageError::Corrupt { .. }), "{wrong}");
    let past_end = EntryPos {
        offset: u64::MAX / 2,
        ..pos
    };
    let wrong = wal.read_entries(&[(z, past_end)]).unwrap_err();
    assert!(matches!(wrong, StorageError::Corrupt { .. }), "{wrong}");
}
