//! DiskLogStore against a model: restarts, and a crash at any byte of the workload's writes
//! ("acts like a map even after crashes"): after reopening, the log, the purge point, the vote
//! and the state machine's snapshot equal the model's after every acknowledged operation, or
//! after the one that failed, never anything else.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use coordd_storage::FaultInjector;
use openraft::{CommittedLeaderId, EntryPayload, StoredMembership};
use proptest::prelude::*;

use super::*;

fn cfg() -> DiskLogConfig {
    DiskLogConfig {
        fsync: false,
        segment_bytes_max: 600,
        preallocate_bytes: 1024,
        // A few entries: most reads go to disk.
        log_cache_bytes_max: 64,
        // The appends of these tests run inline (coordd's setting), the conformance
        // suite's and the cluster tests' in the blocking pool (the default).
        inline_append: true,
        ..DiskLogConfig::default()
    }
}

fn log_id(term: u64, index: u64) -> LogId {
    LogId::new(CommittedLeaderId::new(term, 1), index)
}

fn entry(term: u64, index: u64, len: usize) -> Entry {
    let payload = if len == 0 {
        EntryPayload::Blank
    } else {
        EntryPayload::Normal(Bytes::from(vec![(index as u8) ^ (term as u8); len]))
    };
    Entry {
        log_id: log_id(term, index),
        payload,
    }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// What a reopened store holds, comparable with the model.
#[derive(Clone, Debug, PartialEq, Default)]
struct State {
    vote: Option<Vote>,
    purged: Option<LogId>,
    /// (log id, payload) of every entry: `Entry` has no `PartialEq`.
    log: BTreeMap<u64, (LogId, Option<Bytes>)>,
    snapshot: Option<(Option<LogId>, String, Bytes)>,
}

fn view(e: &Entry) -> (LogId, Option<Bytes>) {
    let p = match &e.payload {
        EntryPayload::Normal(b) => Some(b.clone()),
        _ => None,
    };
    (e.log_id, p)
}

fn state_of(store: &DiskLogStore) -> State {
    let (vote, purged, entries) = store.contents();
    State {
        vote,
        purged,
        log: entries.iter().map(|e| (e.log_id.index, view(e))).collect(),
        snapshot: store
            .snapshot_handle()
            .take_recovered()
            .map(|(m, img)| (m.last_log_id, m.snapshot_id, img)),
    }
}

#[derive(Clone, Debug)]
enum Op {
    /// Entries with these payload lengths (0 = blank), in a term this much above the last.
    Append(Vec<usize>, u8),
    /// Truncate this many entries off the end (never below the purge point).
    Truncate(u8),
    /// Purge this far past the first entry (possibly past the last: a snapshot install).
    Purge(u8),
    Vote(u8, bool),
    /// A state machine snapshot at this many entries back from the last log index.
    Snapshot(u8, u8),
}

fn ops() -> impl Strategy<Value = Vec<Op>> {
    let op = prop_oneof![
        6 => (prop::collection::vec(0usize..120, 1..5), 0u8..2).prop_map(|(l, t)| Op::Append(l, t)),
        2 => (0u8..5).prop_map(Op::Truncate),
        2 => (0u8..8).prop_map(Op::Purge),
        2 => (0u8..4, any::<bool>()).prop_map(|(t, c)| Op::Vote(t, c)),
        1 => (0u8..4, 0u8..200).prop_map(|(b, n)| Op::Snapshot(b, n)),
    ];
    prop::collection::vec(op, 1..25)
}

impl State {
    fn last_index(&self) -> Option<u64> {
        self.log
            .keys()
            .next_back()
            .copied()
            .or(self.purged.map(|p| p.index))
    }

    fn term(&self) -> u64 {
        self.log
            .values()
            .next_back()
            .map(|v| v.0.leader_id.term)
            .or(self.purged.map(|p| p.leader_id.term))
            .unwrap_or(1)
    }
}

/// Runs `ops` on `store` until the first error; returns the model after the acknowledged ops
/// and after the failed one.
async fn run(store: &mut DiskLogStore, ops: &[Op]) -> (State, State) {
    let mut m = State::default();
    for op in ops {
        let mut next = m.clone();
        let res = match op {
            Op::Append(lens, up) => {
                let term = m.term() + *up as u64;
                let first = m.last_index().map_or(0, |l| l + 1);
                let entries: Vec<Entry> = lens
                    .iter()
                    .enumerate()
                    .map(|(i, &len)| entry(term, first + i as u64, len))
                    .collect();
                for e in &entries {
                    next.log.insert(e.log_id.index, view(e));
                }
                store.append_entries(entries).await
            }
            Op::Truncate(k) => {
                let Some(last) = m.last_index() else { continue };
                let floor = m.purged.map_or(0, |p| p.index + 1);
                let since = (last + 1).saturating_sub(*k as u64).max(floor);
                next.log.split_off(&since);
                store.truncate_from(since).await
            }
            Op::Purge(k) => {
                let first = m.purged.map_or(0, |p| p.index + 1);
                let upto = first + *k as u64;
                let id = match m.log.get(&upto) {
                    Some(v) => v.0,
                    None if m.last_index().is_some_and(|l| upto <= l) => continue,
                    None => log_id(m.term(), upto),
                };
                next.purged = Some(id);
                next.log = next.log.split_off(&(upto + 1));
                store.purge_upto(id).await
            }
            Op::Vote(t, committed) => {
                let mut v = Vote::new(m.term() + *t as u64, 1 + *t as u64 % 3);
                if *committed {
                    v.commit();
                }
                next.vote = Some(v);
                store.save_vote_durably(v).await
            }
            Op::Snapshot(back, n) => {
                let Some(last) = m.last_index() else { continue };
                let at = last.saturating_sub(*back as u64);
                let Some(id) = m
                    .log
                    .get(&at)
                    .map(|v| v.0)
                    .or(m.purged.filter(|p| p.index == at))
                else {
                    continue;
                };
                let meta = SnapshotMeta {
                    last_log_id: Some(id),
                    last_membership: StoredMembership::default(),
                    snapshot_id: format!("snap-{at}-{n}"),
                };
                let image = Bytes::from(vec![*n; *n as usize]);
                if next.snapshot.as_ref().is_none_or(|s| s.0 < Some(id)) {
                    next.snapshot = Some((Some(id), meta.snapshot_id.clone(), image.clone()));
                }
                store.snapshot_handle().save(&meta, &image).await
            }
        };
        if res.is_err() {
            return (m, next);
        }
        m = next;
    }
    (m.clone(), m)
}

#[test]
fn restart_recovers_log_vote_purge_point_and_snapshot() {
    let d = tempfile::tempdir().unwrap();
    let rt = rt();
    rt.block_on(async {
        let mut s = DiskLogStore::open(d.path(), cfg()).unwrap();
        let ops = vec![
            Op::Vote(0, false),
            Op::Append(vec![10, 0, 30], 0),
            Op::Append(vec![50; 20], 1),
            Op::Truncate(3),
            Op::Vote(2, true),
            Op::Append(vec![7, 7], 2),
            Op::Snapshot(4, 9),
            Op::Purge(5),
            Op::Append(vec![1], 0),
        ];
        let (acked, all) = run(&mut s, &ops).await;
        assert_eq!(acked, all);
        // The store itself (minus the snapshot, which is only returned from disk).
        let mut live = state_of(&s);
        live.snapshot = acked.snapshot.clone();
        assert_eq!(live, acked);
        // Locked while open.
        assert!(matches!(
            DiskLogStore::open(d.path(), cfg()),
            Err(WalError::Locked { .. })
        ));
        drop(s);
        let s = DiskLogStore::open(d.path(), cfg()).unwrap();
        assert_eq!(state_of(&s), acked);
        // The snapshot is handed out once.
        assert_eq!(s.snapshot_handle().take_recovered(), None);
    });
}

#[test]
fn an_older_snapshot_does_not_replace_a_newer_one() {
    let d = tempfile::tempdir().unwrap();
    rt().block_on(async {
        let s = DiskLogStore::open(d.path(), cfg()).unwrap();
        let meta = |i: u64, id: &str| SnapshotMeta {
            last_log_id: Some(log_id(1, i)),
            last_membership: StoredMembership::default(),
            snapshot_id: id.into(),
        };
        let h = s.snapshot_handle();
        h.save(&meta(10, "new"), &Bytes::from_static(b"n"))
            .await
            .unwrap();
        h.save(&meta(5, "stale build"), &Bytes::from_static(b"o"))
            .await
            .unwrap();
        drop((h, s));
        let s = DiskLogStore::open(d.path(), cfg()).unwrap();
        let (m, img) = s.snapshot_handle().take_recovered().unwrap();
        assert_eq!((m.snapshot_id.as_str(), &img[..]), ("new", &b"n"[..]));
    });
}

#[test]
fn a_damaged_vote_file_is_an_error_not_a_missing_vote() {
    let d = tempfile::tempdir().unwrap();
    rt().block_on(async {
        let s = DiskLogStore::open(d.path(), cfg()).unwrap();
        s.save_vote_durably(Vote::new(3, 1)).await.unwrap();
    });
    let path = d.path().join(VOTE_FILE);
    let mut b = std::fs::read(&path).unwrap();
    let n = b.len();
    b[n - 1] ^= 0xff;
    std::fs::write(&path, &b).unwrap();
    match DiskLogStore::open(d.path(), cfg()) {
        Err(e @ WalError::Corrupt { .. }) => assert!(e.to_string().contains("vote"), "{e}"),
        other => panic!("expected Corrupt, got {other:?}"),
    }
}

#[test]
fn bad_entry_bytes_are_corruption_not_a_panic() {
    let d = tempfile::tempdir().unwrap();
    {
        // A CRC-valid WAL record whose payload is not an encoded entry.
        let (mut wal, _) = Wal::open(StorageConfig {
            dir: d.path().to_path_buf(),
            fsync: false,
            ..StorageConfig::default()
        })
        .unwrap();
        wal.append(&[(1, &[0xff, 0xff, 0xff][..])]).unwrap();
    }
    match DiskLogStore::open(d.path(), cfg()) {
        Err(e @ WalError::Corrupt { .. }) => {
            let msg = e.to_string();
            // The segment file and the record's offset (just after the 16-byte header).
            assert!(msg.contains("log.0000000000000001 at offset 16"), "{msg}");
            assert!(msg.contains("index 0"), "{msg}");
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn crash_at_any_byte_matches_the_model(ops in ops(), at in any::<prop::sample::Index>()) {
        let rt = rt();
        let with = |f: &Arc<FaultInjector>| DiskLogConfig { faults: Some(f.clone()), ..cfg() };
        // Dry run: how many bytes the workload writes.
        let dry = tempfile::tempdir().unwrap();
        let f = FaultInjector::new();
        let mut s = DiskLogStore::open(dry.path(), with(&f)).unwrap();
        rt.block_on(run(&mut s, &ops));
        drop(s);
        let crash_at = at.index(f.bytes_written() as usize + 1) as u64;

        let d = tempfile::tempdir().unwrap();
        let f = FaultInjector::new();
        f.crash_after_bytes(crash_at);
        let mut s = DiskLogStore::open(d.path(), with(&f)).unwrap();
        let (acked, failed) = rt.block_on(run(&mut s, &ops));
        drop(s);

        let s = DiskLogStore::open(d.path(), cfg()).unwrap();
        let got = state_of(&s);
        prop_assert!(got == acked || got == failed,
            "recovered {:?}\nacknowledged {:?}\nfailed op's {:?}", got, acked, failed);
    }
}

/// Every entry kind, a joint membership with learners included, survives the disk encoding.
#[test]
fn every_entry_kind_survives_a_reopen() {
    use std::collections::BTreeSet;

    use openraft::{BasicNode, Membership};

    let d = tempfile::tempdir().unwrap();
    let nodes: BTreeMap<u64, BasicNode> = (1..=5)
        .map(|i| (i, BasicNode::new(format!("h{i}:2888"))))
        .collect();
    let joint = Membership::new(
        vec![BTreeSet::from([1, 2, 3]), BTreeSet::from([3, 4, 5])],
        nodes,
    );
    let entries = vec![
        Entry {
            log_id: log_id(0, 0),
            payload: EntryPayload::Membership(joint),
        },
        entry(1, 1, 0),
        entry(1, 2, 3),
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(u64::MAX, u64::MAX), 3),
            payload: EntryPayload::Normal(Bytes::new()),
        },
    ];
    rt().block_on(async {
        let s = DiskLogStore::open(d.path(), cfg()).unwrap();
        s.append_entries(entries.clone()).await.unwrap();
    });
    let s = DiskLogStore::open(d.path(), cfg()).unwrap();
    let (_, _, got) = s.contents();
    assert_eq!(format!("{got:?}"), format!("{entries:?}"));
}

/// Only the newest entries stay decoded (within `log_cache_bytes_max`, the newest always);
/// any range, across the cached and the evicted ones, reads back whole and in order, the
/// evicted part from disk (counted); truncation and purge keep both parts consistent.
#[test]
fn older_entries_are_read_back_from_disk() {
    use openraft::storage::RaftLogReader;

    let d = tempfile::tempdir().unwrap();
    rt().block_on(async {
        let config = DiskLogConfig {
            log_cache_bytes_max: 300,
            ..cfg()
        };
        let mut s = DiskLogStore::open(d.path(), config.clone()).unwrap();
        let entries: Vec<Entry> = (1..=40).map(|i| entry(1, i, 40)).collect();
        for e in &entries {
            s.append_entries(vec![entry(1, e.log_id.index, 40)])
                .await
                .unwrap();
        }
        let read_back = s.entries_read_back();
        let show = |v: &[Entry]| format!("{v:?}");
        let cached = {
            let v = lock(&s.shared.view);
            assert!(v.cached_bytes <= 300, "{}", v.cached_bytes);
            assert!(v.cached.len() < entries.len());
            v.cached.len()
        };
        // The newest are served from memory.
        let tail = s.try_get_log_entries(38..=40).await.unwrap();
        assert_eq!(show(&tail), show(&entries[37..]));
        assert_eq!(read_back.load(Ordering::Relaxed), 0);
        // A range across both parts, and the whole log.
        let mid = s.try_get_log_entries(5..35).await.unwrap();
        assert_eq!(show(&mid), show(&entries[4..34]));
        let all = s.try_get_log_entries(..).await.unwrap();
        assert_eq!(show(&all), show(&entries));
        let evicted = (entries.len() - cached) as u64;
        assert_eq!(
            read_back.load(Ordering::Relaxed),
            (34 - 4).min(evicted - 4) + evicted
        );
        // Empty and out-of-log ranges.
        assert!(s.try_get_log_entries(41..50).await.unwrap().is_empty());
        assert!(s.try_get_log_entries(7..7).await.unwrap().is_empty());

        // Truncate into the cached part, purge into the evicted part.
        s.truncate_from(39).await.unwrap();
        s.purge_upto(log_id(1, 10)).await.unwrap();
        let all = s.try_get_log_entries(..).await.unwrap();
        assert_eq!(show(&all), show(&entries[10..38]));
        // Appending after a truncation continues the view.
        s.append_entries(vec![entry(2, 39, 5)]).await.unwrap();
        let last = s.try_get_log_entries(37..).await.unwrap();
        assert_eq!(
            show(&last),
            show(&[entry(1, 37, 40), entry(1, 38, 40), entry(2, 39, 5)])
        );
        // A gap is refused, and nothing is written.
        assert!(s.append_entries(vec![entry(2, 41, 5)]).await.is_err());
        drop(s);

        // Reopened: the same log, the newest cached again.
        let mut s = DiskLogStore::open(d.path(), config).unwrap();
        let all = s.try_get_log_entries(..).await.unwrap();
        let mut want: Vec<Entry> = (11..=38).map(|i| entry(1, i, 40)).collect();
        want.push(entry(2, 39, 5));
        assert_eq!(show(&all), show(&want));
    });
}
