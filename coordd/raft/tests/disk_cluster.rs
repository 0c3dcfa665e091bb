//! Three members on durable logs (`DiskLogStore` in temporary directories) over the in-memory
//! network, under paused time: members are stopped and started again from their directories
//! with a fresh applier (as a restarted server starts with an empty tree), and must come back
//! with their log, vote and snapshot and catch up.
//!
//! The WAL's writes run in tokio's blocking pool, which holds paused time still while they
//! run, so virtual time does not jump ahead during disk I/O.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use coordd_raft::{
    Config, DiskLogConfig, DiskLogStore, Initialized, MemNetwork, Member, MemberId, ProposeError,
    Role,
};
use coordd_storage::{Fault, FaultHook, FaultInjector, IoOp};
use tempfile::TempDir;
use tokio::time::Instant;

const WAIT: Duration = Duration::from_secs(10);

mod common;
use common::TestApplier;

fn addr(id: MemberId) -> String {
    format!("mem-{id}")
}

fn payload(i: u64) -> Bytes {
    Bytes::from(format!("txn-batch-{i}"))
}

fn disk_config() -> DiskLogConfig {
    DiskLogConfig {
        // Real fsyncs would only slow the test down: a process restart (not power loss) is
        // what is simulated here; the crash tests of the store cover lost writes.
        fsync: false,
        segment_bytes_max: 8 << 10,
        preallocate_bytes: 16 << 10,
        ..DiskLogConfig::default()
    }
}

struct Cluster {
    net: MemNetwork,
    config: Config,
    dirs: BTreeMap<MemberId, TempDir>,
    members: BTreeMap<MemberId, Member>,
    apps: BTreeMap<MemberId, TestApplier>,
}

/// Polls `cond` until it holds or `WAIT` passes (virtual time).
async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Opens the store, retrying while the previous incarnation's tasks still hold the directory
/// lock (they finish shortly after shutdown).
async fn open_store(dir: &Path, faults: Option<Arc<FaultInjector>>) -> DiskLogStore {
    let deadline = Instant::now() + WAIT;
    loop {
        let config = DiskLogConfig {
            faults: faults.clone().map(|f| f as Arc<dyn FaultHook>),
            ..disk_config()
        };
        match DiskLogStore::open(dir, config) {
            Ok(s) => return s,
            Err(coordd_storage::StorageError::Locked { .. }) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Err(e) => panic!("reopening {}: {e}", dir.display()),
        }
    }
}

impl Cluster {
    async fn start(config: Config) -> Cluster {
        let mut c = Cluster {
            net: MemNetwork::new(),
            config,
            dirs: BTreeMap::new(),
            members: BTreeMap::new(),
            apps: BTreeMap::new(),
        };
        for id in 1..=3 {
            c.dirs.insert(id, tempfile::tempdir().unwrap());
            c.start_member(id).await;
        }
        c
    }

    /// Starts member `id` from its directory with a fresh applier.
    async fn start_member(&mut self, id: MemberId) -> Initialized {
        self.start_member_with(id, None).await
    }

    /// Starts member `id` with a fault injector on its log's I/O.
    async fn start_member_with(
        &mut self,
        id: MemberId,
        faults: Option<Arc<FaultInjector>>,
    ) -> Initialized {
        let peers: BTreeMap<MemberId, String> = (1..=3).map(|id| (id, addr(id))).collect();
        let log = open_store(self.dirs[&id].path(), faults).await;
        let app = TestApplier::default();
        let m = Member::start(
            self.config.clone(),
            id,
            peers,
            log,
            app.clone(),
            self.net.transport(id),
        )
        .await
        .unwrap();
        self.net.register(&m);
        let init = m.initialize().await.unwrap();
        self.members.insert(id, m);
        self.apps.insert(id, app);
        init
    }

    /// Shuts member `id` down and forgets it (its directory stays).
    async fn stop_member(&mut self, id: MemberId) {
        self.net.unregister(id);
        let m = self.members.remove(&id).unwrap();
        // A member that already stopped on a fatal error may report that instead.
        let stopped = m.shutdown().await;
        assert!(stopped.is_ok() || m.role() == Role::Shutdown, "{stopped:?}");
        drop(m);
        self.apps.remove(&id);
    }

    fn m(&self, id: MemberId) -> &Member {
        &self.members[&id]
    }

    async fn wait_leader(&self) -> MemberId {
        let among: Vec<MemberId> = self.members.keys().copied().collect();
        let mut found = None;
        eventually("one leader agreed on", || {
            let leaders: Vec<Option<MemberId>> =
                among.iter().map(|id| self.m(*id).leader()).collect();
            let Some(l) = leaders[0] else { return false };
            let ok = leaders.iter().all(|x| *x == Some(l))
                && among.contains(&l)
                && self.m(l).role() == Role::Leader
                && self.m(l).quorum_ok();
            if ok {
                found = Some(l);
            }
            ok
        })
        .await;
        found.unwrap()
    }

    async fn propose_n(&self, leader: MemberId, from: u64, n: u64) -> u64 {
        let mut last = 0;
        for i in from..from + n {
            last = self.m(leader).propose(payload(i)).await.unwrap().index;
        }
        last
    }

    /// Every running member applied up to `index` and holds the same payloads, which are
    /// exactly payloads 0..count.
    async fn wait_converged(&self, index: u64, count: u64) {
        for m in self.members.values() {
            m.wait_applied(index, WAIT).await.unwrap();
        }
        let want: Vec<Bytes> = (0..count).map(payload).collect();
        for (id, app) in &self.apps {
            let got: Vec<Bytes> = app.state().payloads.iter().map(|p| p.1.clone()).collect();
            assert_eq!(got, want, "member {id}");
        }
    }

    async fn shutdown(self) {
        for m in self.members.values() {
            m.shutdown().await.unwrap();
        }
    }
}

/// A follower stopped and restarted from its directory keeps its log and vote (initialize is
/// a no-op), catches up on what it missed by log replication, and takes part again.
#[tokio::test(start_paused = true)]
async fn a_restarted_follower_catches_up_from_its_log() {
    let mut c = Cluster::start(Config::default()).await;
    let leader = c.wait_leader().await;
    let last = c.propose_n(leader, 0, 20).await;
    c.wait_converged(last, 20).await;

    let f = (1..=3).find(|id| *id != leader).unwrap();
    let before = c.m(f).status();
    c.stop_member(f).await;
    let last = c.propose_n(leader, 20, 20).await;

    assert_eq!(c.start_member(f).await, Initialized::Already);
    // Straight after the restart, before the leader reaches it: its own log is back.
    let after = c.m(f).status();
    assert!(
        after.last_log_index >= before.last_log_index,
        "{before:?} -> {after:?}"
    );
    assert!(after.term >= before.term);
    c.wait_converged(last, 40).await;
    assert_eq!(
        c.apps[&f].state().installs,
        0,
        "caught up by log, not snapshot"
    );

    // And it counts towards the quorum again: the other follower can go.
    let other = (1..=3).find(|id| *id != leader && *id != f).unwrap();
    c.stop_member(other).await;
    let last = c.propose_n(leader, 40, 5).await;
    c.wait_converged(last, 45).await;
    c.shutdown().await;
}

/// With snapshots and purging on: a follower that snapshotted and purged its own log restarts
/// from its snapshot file (loaded into the fresh applier before openraft starts), and, since
/// the others purged past what it has meanwhile, catches up by installing the leader's snapshot.
#[tokio::test(start_paused = true)]
async fn a_member_restarted_behind_the_purge_point_catches_up_by_snapshot() {
    let config = Config {
        snapshot_logs_since_last: 10,
        max_in_snapshot_log_to_keep: 0,
        purge_batch_size: 1,
        ..Config::default()
    };
    let mut c = Cluster::start(config).await;
    let leader = c.wait_leader().await;
    let last = c.propose_n(leader, 0, 25).await;
    c.wait_converged(last, 25).await;
    let f = (1..=3).find(|id| *id != leader).unwrap();
    eventually("the follower snapshotted and purged its own log", || {
        let s = c.m(f).status();
        s.snapshot_index.is_some() && s.purged_index.is_some()
    })
    .await;
    let before = c.m(f).status();
    c.stop_member(f).await;

    let last = c.propose_n(leader, 25, 40).await;
    eventually("the leader purged past the stopped member's log", || {
        c.m(leader)
            .status()
            .purged_index
            .is_some_and(|p| p > before.last_log_index.unwrap())
    })
    .await;

    assert_eq!(c.start_member(f).await, Initialized::Already);
    {
        // Restored from its own snapshot at start: one install, state up to that snapshot.
        let s = c.apps[&f].state();
        assert_eq!(s.installs, 1);
        assert!(s.last_index >= before.snapshot_index, "{s:?} {before:?}");
    }
    c.wait_converged(last, 65).await;
    assert!(
        c.apps[&f].state().installs >= 2,
        "caught up by installing the leader's snapshot"
    );
    let s = c.m(f).status();
    assert!(
        s.snapshot_index
            .is_some_and(|i| i > before.last_log_index.unwrap()),
        "{s:?}"
    );

    // Restarted once more straight away: it comes back from the installed snapshot.
    c.stop_member(f).await;
    c.start_member(f).await;
    let last = c.propose_n(leader, 65, 3).await;
    c.wait_converged(last, 68).await;
    c.shutdown().await;
}

/// Every member stopped, then all started again from their directories: everything committed
/// before is there, a leader is elected again, and new proposals continue the same log.
#[tokio::test(start_paused = true)]
async fn the_whole_ensemble_restarts_with_every_committed_entry() {
    let config = Config {
        snapshot_logs_since_last: 15,
        max_in_snapshot_log_to_keep: 5,
        purge_batch_size: 1,
        ..Config::default()
    };
    let mut c = Cluster::start(config).await;
    let leader = c.wait_leader().await;
    let last = c.propose_n(leader, 0, 40).await;
    c.wait_converged(last, 40).await;
    let terms: Vec<u64> = c.members.values().map(|m| m.status().term).collect();
    for id in 1..=3 {
        c.stop_member(id).await;
    }
    for id in 1..=3 {
        assert_eq!(c.start_member(id).await, Initialized::Already);
    }
    for (m, t) in c.members.values().zip(terms) {
        assert!(m.status().term >= t, "the vote survived");
    }
    let leader = c.wait_leader().await;
    let more = c.propose_n(leader, 40, 5).await;
    assert!(more > last);
    c.wait_converged(more, 45).await;
    c.shutdown().await;
}

/// A follower whose fdatasync fails stops (never acknowledges an entry that may not be on
/// disk, never goes on after an fsync error); the other two go on; restarted from its
/// directory it recovers what reached the disk and catches up.
#[tokio::test(start_paused = true)]
async fn a_failed_fsync_stops_its_member_which_recovers_on_restart() {
    let mut c = Cluster::start(Config::default()).await;
    let leader = c.wait_leader().await;
    let last = c.propose_n(leader, 0, 5).await;
    c.wait_converged(last, 5).await;

    let f = (1..=3).find(|id| *id != leader).unwrap();
    c.stop_member(f).await;
    let faults = FaultInjector::new();
    c.start_member_with(f, Some(faults.clone())).await;
    c.wait_converged(last, 5).await;
    faults.fail_nth(IoOp::Sync, 1, Fault::Error);

    let last = c.propose_n(leader, 5, 5).await;
    c.m(f)
        .wait_for(WAIT, |s| s.role == Role::Shutdown)
        .await
        .unwrap();
    assert!(matches!(
        c.m(f).propose(payload(99)).await,
        Err(ProposeError::Fatal(_) | ProposeError::Shutdown)
    ));
    // Its applier never saw an entry past what it had durably appended before the failure.
    assert!(c.apps[&f].state().payloads.len() <= 5);

    c.stop_member(f).await;
    c.start_member(f).await;
    let last = c.propose_n(leader, 10, 1).await.max(last);
    c.wait_converged(last, 11).await;
    c.shutdown().await;
}
