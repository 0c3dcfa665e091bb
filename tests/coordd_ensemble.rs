//! A coordd ensemble of three real processes on 127.0.0.1-3 (issue 5): it forms by
//! itself from the same `--ensemble` list, clients of every member write, kill -9 of
//! the leader leaves a new leader serving writes with no acknowledged write lost and no
//! session of a surviving member's client expired, and the whole ensemble restarts with
//! every acknowledged write.

mod support;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use coordd_client::{Acl, Client, ClientConfig, CreateMode, Error};
use support::coordd::{four_letter, CoorddEnsemble};
use support::nemesis::signal;
use tokio::time::Instant;

const FORM_TIMEOUT: Duration = Duration::from_secs(30);
const WAIT: Duration = Duration::from_secs(30);

async fn client(servers: &str, session_timeout_ms: u32) -> Client {
    let mut cfg = ClientConfig::new(servers.split(','));
    cfg.session_timeout_ms = session_timeout_ms;
    tokio::time::timeout(WAIT, Client::connect(cfg))
        .await
        .expect("connected in time")
        .expect("connected")
        .0
}

/// Polls `cond` until it holds, at most `WAIT`.
async fn eventually<F, Fut>(what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + WAIT;
    while !cond().await {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Creates `/w/<n>` for n = 0, 1, ... until `stop`; returns the acknowledged ids with
/// their acknowledgement time, and the ids whose outcome is unknown (connection lost).
async fn write_until(c: Arc<Client>, stop: Arc<Mutex<bool>>) -> (Vec<(u64, Instant)>, Vec<u64>) {
    let acl = Acl::open_unsafe();
    let mut acked = Vec::new();
    let mut unknown = Vec::new();
    let mut n = 0u64;
    while !*stop.lock().unwrap() {
        let path = format!("/w/{n:08}");
        match c.create(&path, b"x", &acl, CreateMode::Persistent).await {
            Ok(_) => acked.push((n, Instant::now())),
            Err(Error::Server(code)) => panic!("create {path}: {code:?}"),
            Err(_) => {
                unknown.push(n);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        n += 1;
    }
    (acked, unknown)
}

async fn children(c: &Client, path: &str) -> BTreeSet<u64> {
    c.sync(path).await.unwrap();
    c.get_children(path, false)
        .await
        .unwrap()
        .iter()
        .map(|s| s.parse().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forms_by_itself_and_every_member_takes_writes() {
    let e = CoorddEnsemble::start(3);
    let leader = e.wait_leader(&[0, 1, 2], FORM_TIMEOUT);
    // mntr reports the role and the Raft view as ZooKeeper's does its state (a new
    // leader reports its quorum once the first round of acknowledgements is in).
    let expected = [
        "zk_server_state\tleader",
        "zk_raft_quorum_ok\t1",
        "zk_raft_voters\t3",
    ];
    let mut mntr = String::new();
    let deadline = Instant::now() + WAIT;
    while !expected.iter().all(|l| mntr.contains(l)) {
        assert!(Instant::now() < deadline, "mntr of the leader:\n{mntr}");
        tokio::time::sleep(Duration::from_millis(20)).await;
        mntr = four_letter(e.members[leader].addr, "mntr").unwrap_or_default();
    }
    let mut clients = Vec::new();
    for m in &e.members {
        clients.push(client(&m.connect_string(), 4000).await);
    }
    let acl = Acl::open_unsafe();
    for (i, c) in clients.iter().enumerate() {
        c.create(&format!("/m{i}"), b"v", &acl, CreateMode::Persistent)
            .await
            .unwrap_or_else(|err| panic!("create through member {i} (leader {leader}): {err}"));
    }
    for i in 0..3 {
        let path = format!("/m{i}");
        let czxid = clients[i]
            .exists(&path, false)
            .await
            .unwrap()
            .unwrap()
            .czxid;
        eventually("the same czxid on every member", || {
            let clients = &clients;
            let path = path.clone();
            async move {
                for c in clients {
                    if c.exists(&path, false).await.unwrap().map(|s| s.czxid) != Some(czxid) {
                        return false;
                    }
                }
                true
            }
        })
        .await;
    }
    for c in clients {
        c.close().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_kill9_loses_no_acknowledged_write_and_no_surviving_session() {
    let mut e = CoorddEnsemble::start(3);
    let leader = e.wait_leader(&[0, 1, 2], FORM_TIMEOUT);
    let survivors: Vec<usize> = (0..3).filter(|i| *i != leader).collect();
    let acl = Acl::open_unsafe();

    // A writer on one survivor, an ephemeral-owning session on the other.
    let writer = Arc::new(client(&e.members[survivors[0]].connect_string(), 4000).await);
    writer
        .create("/w", b"", &acl, CreateMode::Persistent)
        .await
        .unwrap();
    let owner = client(&e.members[survivors[1]].connect_string(), 4000).await;
    owner
        .create("/alive", b"", &acl, CreateMode::Ephemeral)
        .await
        .unwrap();
    let owner_session = owner.session_id();

    let stop = Arc::new(Mutex::new(false));
    let writes = tokio::spawn(write_until(writer.clone(), stop.clone()));
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let killed_at = Instant::now();
    e.members[leader].kill9();
    // Write on for longer than the owner's session timeout.
    tokio::time::sleep(Duration::from_millis(5000)).await;
    *stop.lock().unwrap() = true;
    let (acked, unknown) = writes.await.unwrap();

    let before: Vec<_> = acked.iter().filter(|(_, t)| *t < killed_at).collect();
    let after: Vec<_> = acked.iter().filter(|(_, t)| *t >= killed_at).collect();
    assert!(!before.is_empty(), "no write acknowledged before the kill");
    assert!(
        !after.is_empty(),
        "no write acknowledged after the leader's kill"
    );
    // The longest time without an acknowledged write, from the last one before the
    // kill on (a reply already on its way when the leader died may land just after).
    let mut longest = Duration::ZERO;
    let mut resumed_at = after[0].1;
    let mut prev = before.last().unwrap().1;
    for (_, t) in &after {
        if *t - prev > longest {
            longest = *t - prev;
            resumed_at = *t;
        }
        prev = *t;
    }
    println!(
        "leader kill -9: longest window without an acknowledged write {longest:?}, ending {:?} after the kill; {} acked before, {} after, {} unknown",
        resumed_at - killed_at,
        before.len(),
        after.len(),
        unknown.len()
    );

    // The survivors learned of the death from the refused peer port, not from the
    // election timer (coordd_raft::Member::peer_link_lost).
    assert!(
        survivors.iter().any(|i| e.members[*i]
            .log()
            .contains("campaigning once the voters' lease ends")),
        "no survivor noticed that the leader's process was gone:\n{}",
        e.log_tails(30)
    );

    // mntr on the new leader: it saw two leaders take office (the first and itself),
    // won once, and timed the commits of the writes since.
    let new_leader = e.wait_leader(&survivors, FORM_TIMEOUT);
    let mntr = four_letter(e.members[new_leader].addr, "mntr").unwrap_or_default();
    let row = |key: &str| -> u64 {
        mntr.lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix('\t')?.parse().ok())
            .unwrap_or_else(|| panic!("no {key} in mntr:\n{mntr}"))
    };
    assert!(row("zk_raft_leader_changes") >= 2, "{mntr}");
    assert!(row("zk_raft_leaderships") >= 1, "{mntr}");
    assert!(row("zk_raft_commit_count") > 0, "{mntr}");
    assert!(row("zk_raft_commit_latency_max_us") >= row("zk_raft_commit_latency_avg_us"));
    // Present and a count (nothing in this short run is older than the log's cache).
    let _ = row("zk_raft_log_entries_read_back");

    let present = children(&writer, "/w").await;
    let lost: Vec<u64> = acked
        .iter()
        .map(|(n, _)| *n)
        .filter(|n| !present.contains(n))
        .collect();
    assert!(lost.is_empty(), "acknowledged writes lost: {lost:?}");

    assert_eq!(owner.session_id(), owner_session);
    assert!(
        writer.exists("/alive", false).await.unwrap().is_some(),
        "the surviving member's client lost its session (its ephemeral is gone)"
    );

    // The killed member comes back and catches up.
    e.members[leader].restart();
    e.wait_leader(&[0, 1, 2], FORM_TIMEOUT);
    let back = client(&e.members[leader].connect_string(), 4000).await;
    let on_back = children(&back, "/w").await;
    assert_eq!(on_back, present, "the restarted member differs");
    for c in [back, owner] {
        c.close().await.unwrap();
    }
    Arc::try_unwrap(writer).unwrap().close().await.unwrap();
}

/// Member `i`'s `zk_last_zxid` (mntr), if it answers.
fn last_zxid(e: &CoorddEnsemble, i: usize) -> Option<u64> {
    four_letter(e.members[i].addr, "mntr")?
        .lines()
        .find_map(|l| l.strip_prefix("zk_last_zxid\t"))
        .and_then(|v| v.parse().ok())
}

/// A follower that fell far behind on large entries (stopped while the leader took 30
/// writes of 900 KB) catches up once it runs again. Before the transport bounded an
/// AppendEntries by bytes (`append_entries_bytes_max`), the leader sent it ~15 MB at a
/// time, which never completed within openraft's deadline for one AppendEntries (the
/// heartbeat interval): the follower never caught up and campaigned again and again
/// (a CI run lost the quorum so when another member's disk was full).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_far_behind_on_large_entries_catches_up() {
    let e = CoorddEnsemble::start(3);
    let leader = e.wait_leader(&[0, 1, 2], FORM_TIMEOUT);
    let lagging = (leader + 1) % 3;
    let c = client(&e.members[leader].connect_string(), 10_000).await;
    let acl = Acl::open_unsafe();
    let pid = e.members[lagging].pid().expect("the member runs");
    signal(pid, "STOP");
    let value = vec![7u8; 900 * 1024];
    for i in 0..30 {
        tokio::time::timeout(
            WAIT,
            c.create(&format!("/big{i}"), &value, &acl, CreateMode::Persistent),
        )
        .await
        .expect("a write of the two running members in time")
        .expect("written");
    }
    let target = last_zxid(&e, leader).expect("the leader answers mntr");
    signal(pid, "CONT");
    eventually("the stopped follower catches up", || async {
        last_zxid(&e, lagging).is_some_and(|z| z >= target)
    })
    .await;
    c.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_whole_ensemble_restarts_with_every_acknowledged_write() {
    let mut e = CoorddEnsemble::start(3);
    e.wait_leader(&[0, 1, 2], FORM_TIMEOUT);
    let acl = Acl::open_unsafe();
    let c = client(&e.connect_string(), 4000).await;
    c.create("/w", b"", &acl, CreateMode::Persistent)
        .await
        .unwrap();
    for n in 0..50u64 {
        c.create(&format!("/w/{n:08}"), b"x", &acl, CreateMode::Persistent)
            .await
            .unwrap();
    }
    drop(c);
    for m in &mut e.members {
        m.kill9();
    }
    for m in &mut e.members {
        m.restart();
    }
    e.wait_leader(&[0, 1, 2], FORM_TIMEOUT);
    for m in &e.members {
        let c = client(&m.connect_string(), 4000).await;
        assert_eq!(children(&c, "/w").await, (0..50).collect::<BTreeSet<u64>>());
        c.close().await.unwrap();
    }
}
