//! Three members in one process over the in-memory network, through the public API only.
//!
//! Time is paused (`start_paused`): tokio advances the clock whenever every task is idle, so
//! timers (heartbeats, elections, deadlines) fire deterministically and fast. Nothing sleeps
//! to "let things settle": every wait is a condition with a deadline.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use coordd_raft::{
    AppCallError, Config, Initialized, MemLogStore, MemNetwork, MemTransport, Member, MemberId,
    PeerRequest, PeerResponse, ProposeError, ReadIndexError, Role, StartError, Transport,
    TransportError,
};
use tokio::time::Instant;

mod common;
use common::TestApplier;

const WAIT: Duration = Duration::from_secs(10);

struct Cluster {
    net: MemNetwork,
    members: BTreeMap<MemberId, Member>,
    apps: BTreeMap<MemberId, TestApplier>,
    config: Config,
}

fn addr(id: MemberId) -> String {
    format!("mem-{id}")
}

/// A transport written outside the crate, as slice 3's TCP one will be: every request and
/// response crosses a serde encoding (JSON: strict about what it accepts) before delivery.
struct JsonTransport(MemTransport);

fn through_json<T: serde::Serialize + serde::de::DeserializeOwned>(
    value: &T,
) -> Result<T, TransportError> {
    let wire = serde_json::to_vec(value).map_err(|e| TransportError::Io(e.to_string()))?;
    serde_json::from_slice(&wire).map_err(|e| TransportError::Io(e.to_string()))
}

impl Transport for JsonTransport {
    async fn call(
        &self,
        target: MemberId,
        addr: &str,
        request: PeerRequest,
        timeout: Duration,
    ) -> Result<PeerResponse, TransportError> {
        let request = through_json(&request)?;
        let response = self.0.call(target, addr, request, timeout).await?;
        through_json(&response)
    }
}

impl Cluster {
    async fn start(config: Config) -> Cluster {
        Self::start_with(config, false).await
    }

    /// `json`: members talk through [`JsonTransport`].
    async fn start_with(config: Config, json: bool) -> Cluster {
        let net = MemNetwork::new();
        let peers: BTreeMap<MemberId, String> = (1..=3).map(|id| (id, addr(id))).collect();
        let mut members = BTreeMap::new();
        let mut apps = BTreeMap::new();
        for id in 1..=3 {
            let app = TestApplier::default();
            let (log, transport) = (MemLogStore::new(), net.transport(id));
            let started = if json {
                let t = JsonTransport(transport);
                Member::start(config.clone(), id, peers.clone(), log, app.clone(), t).await
            } else {
                Member::start(
                    config.clone(),
                    id,
                    peers.clone(),
                    log,
                    app.clone(),
                    transport,
                )
                .await
            };
            let m = started.unwrap();
            net.register(&m);
            members.insert(id, m);
            apps.insert(id, app);
        }
        Cluster {
            net,
            members,
            apps,
            config,
        }
    }

    fn m(&self, id: MemberId) -> &Member {
        &self.members[&id]
    }

    /// Waits until every member in `among` names the same leader, itself in `among`, which
    /// sees itself as leader with a fresh quorum; returns it.
    async fn wait_leader(&self, among: &[MemberId]) -> MemberId {
        let mut found = None;
        eventually("one leader agreed on", || {
            let leaders: Vec<Option<MemberId>> =
                among.iter().map(|id| self.m(*id).leader()).collect();
            let Some(l) = leaders[0] else { return false };
            let agreed = leaders.iter().all(|x| *x == Some(l)) && among.contains(&l);
            let ok = agreed && self.m(l).role() == Role::Leader && self.m(l).quorum_ok();
            if ok {
                found = Some(l);
            }
            ok
        })
        .await;
        found.unwrap()
    }

    async fn wait_converged(&self, ids: &[MemberId], index: u64) {
        for id in ids {
            self.m(*id).wait_applied(index, WAIT).await.unwrap();
        }
        let reference = self.apps[&ids[0]].payloads();
        for id in ids {
            assert_eq!(
                self.apps[id].payloads(),
                reference,
                "member {id} differs from {}",
                ids[0]
            );
        }
    }

    async fn shutdown(self) {
        for m in self.members.values() {
            m.shutdown().await.unwrap();
        }
    }
}

/// Polls `cond` until it holds or `WAIT` passes (virtual time under `start_paused`).
async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn payload(i: u64) -> Bytes {
    Bytes::from(format!("txn-batch-{i}"))
}

#[tokio::test(start_paused = true)]
async fn forms_one_leader_and_initialize_is_idempotent() {
    let c = Cluster::start(Config::default()).await;
    // Every member initialized on start; a second call is a no-op, not a rewrite.
    for m in c.members.values() {
        assert_eq!(m.initialize().await.unwrap(), Initialized::Already);
    }
    let leader = c.wait_leader(&[1, 2, 3]).await;
    let leaders = c
        .members
        .values()
        .filter(|m| m.role() == Role::Leader)
        .count();
    assert_eq!(leaders, 1);
    for (id, m) in &c.members {
        let s = m.status();
        assert_eq!(s.membership.voters, vec![1, 2, 3]);
        assert_eq!(s.leader, Some(leader));
        assert_eq!(s.leader_addr.as_deref(), Some(addr(leader).as_str()));
        if *id != leader {
            assert_eq!(s.role, Role::Follower);
        }
    }
    // Still one leader after more heartbeat rounds (no election churn on a healthy network).
    let term = c.m(leader).status().term;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(c.m(leader).role(), Role::Leader);
    assert_eq!(c.m(leader).status().term, term);
    assert!(c.members.values().all(|m| m.quorum_ok()));
    c.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn proposals_apply_in_the_same_order_on_every_member() {
    let c = Cluster::start(Config::default()).await;
    let leader = c.wait_leader(&[1, 2, 3]).await;
    let l = c.m(leader);

    let mut last = 0;
    for i in 0..20 {
        let committed = l.propose(payload(i)).await.unwrap();
        assert!(committed.index > last, "indexes rise");
        assert_eq!(
            committed.output,
            Bytes::from(format!("applied {}", committed.index))
        );
        last = committed.index;
    }
    // Concurrent proposals: all commit, in some order, the same on every member.
    let handles: Vec<_> = (20..40)
        .map(|i| {
            let l = l.clone();
            tokio::spawn(async move { l.propose(payload(i)).await })
        })
        .collect();
    for h in handles {
        last = last.max(h.await.unwrap().unwrap().index);
    }

    c.wait_converged(&[1, 2, 3], last).await;
    let applied = c.apps[&leader].payloads();
    assert_eq!(applied.len(), 40);
    let first: Vec<Bytes> = applied[..20].iter().map(|(_, p)| p.clone()).collect();
    assert_eq!(first, (0..20).map(payload).collect::<Vec<_>>());
    for app in c.apps.values() {
        let s = app.state();
        // Index 0 is the initial membership; each leader appended a blank to commit its term.
        assert_eq!(s.memberships, 1);
        assert!(s.blanks >= 1);
    }

    // ReadIndex on the leader covers everything committed before it was asked.
    let read = l.read_index().await.unwrap();
    assert!(read >= last);
    c.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn follower_refuses_with_the_leader() {
    let c = Cluster::start(Config::default()).await;
    let leader = c.wait_leader(&[1, 2, 3]).await;
    let follower = (1..=3).find(|id| *id != leader).unwrap();
    let f = c.m(follower);

    match f.propose(payload(1)).await {
        Err(ProposeError::NotLeader {
            leader: Some(l),
            leader_addr: Some(a),
        }) => {
            assert_eq!(l, leader);
            assert_eq!(a, addr(leader));
        }
        other => panic!("expected NotLeader, got {other:?}"),
    }
    match f.read_index().await {
        Err(ReadIndexError::NotLeader {
            leader: Some(l), ..
        }) => assert_eq!(l, leader),
        other => panic!("expected NotLeader, got {other:?}"),
    }
    // Nothing was appended by the refused proposal.
    let committed = c.m(leader).propose(payload(2)).await.unwrap();
    c.wait_converged(&[1, 2, 3], committed.index).await;
    assert_eq!(
        c.apps[&follower].payloads(),
        vec![(committed.index, payload(2))]
    );

    let too_big = Bytes::from(vec![0u8; c.config.payload_max_bytes + 1]);
    assert!(matches!(
        c.m(leader).propose(too_big).await,
        Err(ProposeError::TooLarge { .. })
    ));
    c.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn isolated_leader_times_out_and_the_majority_moves_on() {
    let c = Cluster::start(Config::default()).await;
    let old = c.wait_leader(&[1, 2, 3]).await;
    let rest: Vec<MemberId> = (1..=3).filter(|id| *id != old).collect();
    let before = c.m(old).propose(payload(0)).await.unwrap();
    c.wait_converged(&[1, 2, 3], before.index).await;

    c.net.isolate(old);
    let cut_at = Instant::now();

    // The isolated leader appends but can never commit: the propose times out, on time.
    let pending = {
        let m = c.m(old).clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let res = m.propose(payload(1)).await;
            (res, started.elapsed())
        })
    };

    // It does not step down (openraft 0.9 has no CheckQuorum), but it knows within
    // quorum_timeout_ms (plus a metrics refresh) that it lost the quorum, which is what the
    // server acts on.
    eventually("isolated leader sees it lost the quorum", || {
        !c.m(old).quorum_ok()
    })
    .await;
    let lost_after = cut_at.elapsed();
    let bound = c.config.quorum_timeout_ms + c.config.heartbeat_interval_ms * 2;
    assert!(
        lost_after <= Duration::from_millis(bound),
        "quorum_ok still true {lost_after:?} after the cut"
    );
    assert_eq!(
        c.m(old).role(),
        Role::Leader,
        "openraft 0.9: an isolated leader stays leader"
    );
    assert!(matches!(
        c.m(old).read_index().await,
        Err(ReadIndexError::NoQuorum | ReadIndexError::Timeout { .. })
    ));

    // The other two elect a new leader that commits, while the old one's propose still hangs.
    let new = c.wait_leader(&rest).await;
    assert_ne!(new, old);
    let elected_after = cut_at.elapsed();
    // The safety margin quorum_timeout_ms is about: the cut-off leader stopped serving before
    // anyone else could commit.
    assert!(
        lost_after < elected_after,
        "{lost_after:?} vs {elected_after:?}"
    );
    let after = c.m(new).propose(payload(2)).await.unwrap();
    println!(
        "leader cut off: quorum_ok false after {lost_after:?}, new leader after {elected_after:?}, its first write committed after {:?} (virtual time)",
        cut_at.elapsed()
    );
    assert!(c.m(old).role() == Role::Leader && !c.m(old).quorum_ok());

    let (res, took) = pending.await.unwrap();
    assert_eq!(
        res,
        Err(ProposeError::Timeout {
            after_ms: c.config.propose_timeout_ms
        })
    );
    assert!(
        took <= Duration::from_millis(c.config.propose_timeout_ms + 10),
        "took {took:?}"
    );
    c.wait_converged(&rest, after.index).await;

    // Heal: the old leader hears the higher term, follows, and converges; its uncommitted
    // entry is truncated, never applied anywhere.
    c.net.heal();
    eventually("old leader follows the new one", || {
        c.m(old).role() == Role::Follower && c.m(old).leader() == Some(new) && c.m(old).quorum_ok()
    })
    .await;
    let last = c.m(new).propose(payload(3)).await.unwrap();
    c.wait_converged(&[1, 2, 3], last.index).await;
    let payloads: Vec<Bytes> = c.apps[&old]
        .payloads()
        .into_iter()
        .map(|(_, p)| p)
        .collect();
    assert_eq!(payloads, vec![payload(0), payload(2), payload(3)]);
    c.shutdown().await;
}

/// Failover time without the propose deadline in the way: measured from the cut to the first
/// write the new leader commits (virtual time, so it shows the timer arithmetic of the config,
/// not CPU or fsync cost).
#[tokio::test(start_paused = true)]
async fn failover_time_after_leader_cut() {
    let c = Cluster::start(Config::default()).await;
    let old = c.wait_leader(&[1, 2, 3]).await;
    let rest: Vec<MemberId> = (1..=3).filter(|id| *id != old).collect();
    // Let a heartbeat land so the cut happens at a typical point of the heartbeat cycle.
    c.m(old).propose(payload(0)).await.unwrap();

    c.net.isolate(old);
    let cut_at = Instant::now();
    eventually("followers notice the lost leader", || {
        rest.iter().all(|id| !c.m(*id).quorum_ok())
    })
    .await;
    let noticed = cut_at.elapsed();
    let new = c.wait_leader(&rest).await;
    let committed = loop {
        match c.m(new).propose(payload(1)).await {
            Ok(x) => break x,
            Err(ProposeError::NotLeader { .. }) => {
                tokio::time::sleep(Duration::from_millis(1)).await
            }
            Err(e) => panic!("{e}"),
        }
    };
    let took = cut_at.elapsed();
    println!("failover: followers' quorum_ok false after {noticed:?}; write committed on new leader after {took:?} (index {})", committed.index);
    // Bound from the config (lease + max election timeout + one tick + slack), see config.rs.
    assert!(took < Duration::from_millis(600), "failover took {took:?}");
    c.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn partitioned_member_catches_up_by_snapshot() {
    partitioned_member_catches_up_by_snapshot_over(false).await;
}

/// The same through a serde encoding: real AppendEntries, votes and snapshots survive it.
#[tokio::test(start_paused = true)]
async fn partitioned_member_catches_up_by_snapshot_over_json() {
    partitioned_member_catches_up_by_snapshot_over(true).await;
}

async fn partitioned_member_catches_up_by_snapshot_over(json: bool) {
    let config = Config {
        snapshot_logs_since_last: 10,
        max_in_snapshot_log_to_keep: 0,
        purge_batch_size: 1,
        ..Config::default()
    };
    let c = Cluster::start_with(config, json).await;
    let leader = c.wait_leader(&[1, 2, 3]).await;
    let lagging = (1..=3).find(|id| *id != leader).unwrap();
    let first = c.m(leader).propose(payload(0)).await.unwrap();
    c.wait_converged(&[1, 2, 3], first.index).await;

    c.net.isolate(lagging);
    let lag_log = c.m(lagging).status().last_log_index.unwrap();
    let mut last = first.index;
    for i in 1..=60 {
        last = c.m(leader).propose(payload(i)).await.unwrap().index;
    }
    // The leader snapshotted and purged past what the lagging member has.
    eventually("leader purged past the lagging member's log", || {
        c.m(leader)
            .status()
            .purged_index
            .is_some_and(|p| p > lag_log)
    })
    .await;
    assert_eq!(c.apps[&lagging].state().installs, 0);

    c.net.heal();
    c.wait_converged(&[1, 2, 3], last).await;
    assert!(
        c.apps[&lagging].state().installs >= 1,
        "caught up by installing a snapshot"
    );
    let s = c.m(lagging).status();
    assert!(s.snapshot_index.is_some_and(|i| i > lag_log), "{s:?}");
    assert_eq!(c.apps[&lagging].payloads().len(), 61);

    // And keeps up by log replication afterwards.
    let more = c.m(leader).propose(payload(61)).await.unwrap();
    c.wait_converged(&[1, 2, 3], more.index).await;
    c.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn delayed_member_still_commits_and_shutdown_is_final() {
    let c = Cluster::start(Config::default()).await;
    let leader = c.wait_leader(&[1, 2, 3]).await;
    let slow = (1..=3).find(|id| *id != leader).unwrap();
    // Slower than the AppendEntries timeout (one heartbeat interval): the slow member falls
    // behind, the other follower keeps the quorum.
    c.net.set_delay(slow, Duration::from_millis(30));
    let mut last = 0;
    for i in 0..5 {
        last = c.m(leader).propose(payload(i)).await.unwrap().index;
    }
    c.net.set_delay(slow, Duration::ZERO);
    c.wait_converged(&[1, 2, 3], last).await;

    let m = c.m(slow).clone();
    m.shutdown().await.unwrap();
    m.shutdown().await.unwrap();
    assert_eq!(m.role(), Role::Shutdown);
    assert!(!m.quorum_ok());
    assert_eq!(m.propose(payload(9)).await, Err(ProposeError::Shutdown));
    c.net.unregister(slow);
    // Two of three still commit.
    c.m(leader).propose(payload(10)).await.unwrap();
    for (id, m) in &c.members {
        if *id != slow {
            m.shutdown().await.unwrap();
        }
    }
}

#[tokio::test(start_paused = true)]
async fn one_cut_link_keeps_the_quorum() {
    let c = Cluster::start(Config::default()).await;
    let leader = c.wait_leader(&[1, 2, 3]).await;
    let cut_off = (1..=3).find(|id| *id != leader).unwrap();
    c.net.cut(leader, cut_off);
    let mut last = 0;
    for i in 0..5 {
        last = c.m(leader).propose(payload(i)).await.unwrap().index;
    }
    assert!(c.net.dropped_messages() > 0);
    assert!(c.m(leader).quorum_ok());
    c.net.heal();
    // The cut-off member may have campaigned meanwhile (0.9 has no pre-vote); whoever leads
    // after the heal, everyone converges on the same entries.
    let leader = c.wait_leader(&[1, 2, 3]).await;
    let after = c.m(leader).propose(payload(5)).await.unwrap();
    assert!(after.index > last);
    c.wait_converged(&[1, 2, 3], after.index).await;
    assert_eq!(c.apps[&cut_off].payloads().len(), 6);
    c.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_failing_applier_stops_only_its_member() {
    let c = Cluster::start(Config::default()).await;
    let leader = c.wait_leader(&[1, 2, 3]).await;
    let broken = (1..=3).find(|id| *id != leader).unwrap();
    c.apps[&broken].state().fail_on = Some(payload(1));

    let first = c.m(leader).propose(payload(0)).await.unwrap();
    c.wait_converged(&[1, 2, 3], first.index).await;
    let second = c.m(leader).propose(payload(1)).await.unwrap();

    // The broken member stops instead of diverging; the other two go on.
    c.m(broken)
        .wait_for(WAIT, |s| s.role == Role::Shutdown)
        .await
        .unwrap();
    assert!(!c.m(broken).quorum_ok());
    assert!(matches!(
        c.m(broken).propose(payload(2)).await,
        Err(ProposeError::Fatal(_) | ProposeError::Shutdown)
    ));
    let rest: Vec<MemberId> = (1..=3).filter(|id| *id != broken).collect();
    let third = c.m(leader).propose(payload(2)).await.unwrap();
    c.wait_converged(&rest, third.index).await;
    assert_eq!(c.apps[&broken].state().last_index, Some(second.index - 1));
    println!("broken member status: {:?}", c.m(broken).status());
    for id in rest {
        c.m(id).shutdown().await.unwrap();
    }
    // Shutting down a member that already stopped is fine too.
    let _ = c.m(broken).shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn bad_start_arguments_are_errors() {
    let net = MemNetwork::new();
    let peers: BTreeMap<MemberId, String> = (1..=3).map(|id| (id, addr(id))).collect();
    let start = |config: Config, id: MemberId, peers: BTreeMap<MemberId, String>| {
        Member::start(
            config,
            id,
            peers,
            MemLogStore::new(),
            TestApplier::default(),
            net.transport(id),
        )
    };
    assert!(matches!(
        start(Config::default(), 4, peers.clone()).await,
        Err(StartError::Membership(_))
    ));
    assert!(matches!(
        start(Config::default(), 1, BTreeMap::new()).await,
        Err(StartError::Membership(_))
    ));
    let bad = Config {
        election_timeout_min_ms: 10,
        ..Config::default()
    };
    assert!(matches!(
        start(bad, 1, peers).await,
        Err(StartError::Config(_))
    ));
}

/// An ensemble of one (how a standalone server would run on this crate): it elects itself and
/// commits without any peer.
#[tokio::test(start_paused = true)]
async fn single_member_ensemble_commits() {
    let net = MemNetwork::new();
    let app = TestApplier::default();
    let peers = BTreeMap::from([(1, addr(1))]);
    let m = Member::start(
        Config::default(),
        1,
        peers,
        MemLogStore::new(),
        app.clone(),
        net.transport(1),
    )
    .await
    .unwrap();
    m.wait_for(WAIT, |s| s.role == Role::Leader && s.quorum_ok)
        .await
        .unwrap();
    let c = m.propose(payload(1)).await.unwrap();
    assert_eq!(app.payloads(), vec![(c.index, payload(1))]);
    assert!(m.read_index().await.unwrap() >= c.index);
    m.shutdown().await.unwrap();
}

/// The same failover in real time on a multi-threaded runtime, as a smoke test of the default
/// timers on this (shared, loaded) machine. Prints what it measured; asserts only generous
/// bounds so that machine load cannot make it flaky.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_time_failover_smoke() {
    let c = Cluster::start(Config::default()).await;
    let old = c.wait_leader(&[1, 2, 3]).await;
    let term = c.m(old).status().term;
    let mut n = 0;
    for _ in 0..20 {
        c.m(old).propose(payload(n)).await.unwrap();
        n += 1;
    }
    let churn = c
        .members
        .values()
        .map(|m| m.status().term)
        .max()
        .unwrap_or(term)
        - term;

    let rest: Vec<MemberId> = (1..=3).filter(|id| *id != old).collect();
    c.net.isolate(old);
    let cut_at = Instant::now();
    let new = c.wait_leader(&rest).await;
    let committed = loop {
        match c.m(new).propose(payload(n)).await {
            Ok(x) => break x,
            Err(ProposeError::NotLeader { .. }) => {
                tokio::time::sleep(Duration::from_millis(1)).await
            }
            Err(e) => panic!("{e}"),
        }
    };
    let took = cut_at.elapsed();
    println!(
        "real time: {churn} extra terms during {n} proposals; after the cut a write committed \
         on the new leader in {took:?}"
    );
    assert!(took < Duration::from_secs(5), "failover took {took:?}");
    c.net.heal();
    c.wait_converged(&[1, 2, 3], committed.index).await;
    c.shutdown().await;
}

/// A transport that refuses large AppendEntries (a frame limit) makes openraft send fewer
/// entries per RPC; a member that fell behind still catches up.
#[tokio::test(start_paused = true)]
async fn too_large_appends_are_resent_smaller() {
    let c = Cluster::start(Config::default()).await;
    let leader = c.wait_leader(&[1, 2, 3]).await;
    let lagging = (1..=3).find(|id| *id != leader).unwrap();
    c.net.isolate(lagging);
    let mut last = 0;
    for i in 0..30 {
        last = c.m(leader).propose(payload(i)).await.unwrap().index;
    }
    c.net.set_max_entries(Some(4));
    c.net.rejoin(lagging);
    c.wait_converged(&[1, 2, 3], last).await;
    assert!(c.net.refused_too_large() > 0);
    assert_eq!(
        c.apps[&lagging].state().installs,
        0,
        "caught up by log, not by snapshot"
    );
    assert_eq!(c.apps[&lagging].payloads().len(), 30);
    c.shutdown().await;
}

/// Application messages ride the member's transport: a follower forwards a payload to the
/// leader, whose handler proposes it and answers with the committed index (what coordd
/// does with writes from clients of followers). Without a handler, or to an isolated
/// member, the call fails with a typed error within its timeout.
#[tokio::test(start_paused = true)]
async fn application_messages_reach_the_target_members_handler() {
    let c = Cluster::start(Config::default()).await;
    let leader = c.wait_leader(&[1, 2, 3]).await;
    let follower = (1..=3).find(|id| *id != leader).unwrap();

    let err = c
        .m(follower)
        .call_app(leader, payload(1), WAIT)
        .await
        .unwrap_err();
    assert!(matches!(err, AppCallError::Refused(_)), "{err:?}");

    let l = c.m(leader).clone();
    c.m(leader).set_app_handler(Arc::new(move |body: Bytes| {
        let l = l.clone();
        Box::pin(async move {
            let committed = l.propose(body).await.map_err(|e| e.to_string())?;
            Ok(Bytes::from(committed.index.to_be_bytes().to_vec()))
        })
    }));
    let answer = c
        .m(follower)
        .call_app(leader, payload(7), WAIT)
        .await
        .unwrap();
    let index = u64::from_be_bytes(answer.as_ref().try_into().unwrap());
    c.wait_converged(&[1, 2, 3], index).await;
    assert!(c.apps[&follower].payloads().contains(&(index, payload(7))));

    assert!(matches!(
        c.m(follower).call_app(42, payload(8), WAIT).await,
        Err(AppCallError::UnknownMember(42))
    ));
    c.net.isolate(leader);
    let started = Instant::now();
    let err = c
        .m(follower)
        .call_app(leader, payload(9), Duration::from_millis(300))
        .await
        .unwrap_err();
    assert!(matches!(err, AppCallError::Transport(_)), "{err:?}");
    assert!(started.elapsed() <= Duration::from_millis(400));
    c.net.heal();
    c.shutdown().await;
}

/// Membership change (issue 5, item 8): two members started with `start_joining` are
/// added (learners, catch-up, joint consensus) and take part; bad changes are refused
/// without effect; a member that never comes up is not added; removing the leader and
/// another member leaves three that elect a leader among themselves and commit.
#[tokio::test(start_paused = true)]
async fn membership_grows_to_five_and_shrinks_removing_the_leader() {
    use coordd_raft::{MembershipChange, ReconfigError};
    let mut c = Cluster::start(Config::default()).await;
    let leader = c.wait_leader(&[1, 2, 3]).await;
    for i in 0..20 {
        c.m(leader).propose(payload(i)).await.unwrap();
    }
    let seed: BTreeMap<MemberId, String> = (1..=5).map(|id| (id, addr(id))).collect();
    for id in [4, 5] {
        let app = TestApplier::default();
        let m = Member::start_joining(
            c.config.clone(),
            id,
            seed.clone(),
            MemLogStore::new(),
            app.clone(),
            c.net.transport(id),
        )
        .await
        .unwrap();
        c.net.register(&m);
        assert_eq!(m.leader(), None);
        assert!(!m.quorum_ok(), "a joining member serves nothing");
        c.members.insert(id, m);
        c.apps.insert(id, app);
    }
    let grow = MembershipChange {
        add: [(4, addr(4)), (5, addr(5))].into(),
        remove: Default::default(),
    };
    let follower = [1, 2, 3].into_iter().find(|i| *i != leader).unwrap();
    assert!(matches!(
        c.m(follower).change_membership(grow.clone()).await,
        Err(ReconfigError::NotLeader { .. })
    ));
    let status = c.m(leader).change_membership(grow.clone()).await.unwrap();
    assert_eq!(status.membership.voters, vec![1, 2, 3, 4, 5]);
    assert!(!status.membership.joint);
    assert_eq!(status.membership.addrs[&5], addr(5));
    let committed = c.m(leader).propose(payload(100)).await.unwrap();
    c.wait_converged(&[1, 2, 3, 4, 5], committed.index).await;
    assert_eq!(c.apps[&5].payloads().len(), 21);
    // Refused without effect: 4 again, an unknown member, everyone removed.
    for bad in [
        grow.clone(),
        MembershipChange {
            add: Default::default(),
            remove: [9].into(),
        },
        MembershipChange {
            add: Default::default(),
            remove: [1, 2, 3, 4, 5].into(),
        },
    ] {
        assert!(matches!(
            c.m(leader).change_membership(bad).await,
            Err(ReconfigError::BadArguments(_))
        ));
    }
    // A member that is not running never catches up: not added, learner removed again.
    let ghost = MembershipChange {
        add: [(6, addr(6))].into(),
        remove: Default::default(),
    };
    assert!(matches!(
        c.m(leader).change_membership(ghost).await,
        Err(ReconfigError::NotCaughtUp(_))
    ));
    let s = c
        .m(leader)
        .wait_for(WAIT, |s| s.membership.learners.is_empty())
        .await
        .unwrap();
    assert_eq!(s.membership.voters, vec![1, 2, 3, 4, 5]);

    // Shrink: the leader and one more leave.
    let other = if leader == 5 { 4 } else { 5 };
    let shrink = MembershipChange {
        add: Default::default(),
        remove: [leader, other].into(),
    };
    let status = c.m(leader).change_membership(shrink).await.unwrap();
    let rest: Vec<MemberId> = (1..=5).filter(|i| *i != leader && *i != other).collect();
    assert_eq!(status.membership.voters, rest);
    let old = c.m(leader).clone();
    eventually("the removed leader steps down", || {
        old.role() != Role::Leader
    })
    .await;
    let new_leader = c.wait_leader(&rest).await;
    assert!(rest.contains(&new_leader));
    let committed = c.m(new_leader).propose(payload(200)).await.unwrap();
    c.wait_converged(&rest, committed.index).await;
    c.shutdown().await;
}
