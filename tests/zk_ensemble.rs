//! The agent and the router against a real 3-member Apache ZooKeeper 3.8 ensemble
//! (Debian's `zookeeper` package, tests/support/zookeeper.rs) instead of coordd: they
//! speak only the ZooKeeper protocol, so they must work unchanged there (issues 3 and
//! 4). Real `switchyard agent` processes, real PostgreSQL 15.
//!
//! - the ensemble itself: one leader, a client session survives the kill -9 of the
//!   ZooKeeper leader (the harness's own check, no PostgreSQL);
//! - issue 3's kill scenario in synchronous mode: three agents bootstrap, a writer
//!   commits straight to the master, kill -9 of the master's agent and PostgreSQL: a
//!   new master is elected and has every acknowledged row, takes writes; the old node,
//!   restarted, rewinds and rejoins as a (synchronous) replica;
//! - the router on the same kind of ensemble: reads on the replicas, writes on the
//!   master, and after the master's kill writes resume through the same router;
//! - kill -9 of the ZooKeeper leader member under running agents and a writer: the
//!   sessions move to the surviving members, the master keeps `leader` (same epoch,
//!   same sessions), no second PostgreSQL ever takes writes, writes keep working.
//!
//! Skips with a printed reason when ZooKeeper (or java) or PostgreSQL is missing. Every
//! wait is on a condition under a deadline; processes are stopped by Drop guards
//! (agents before the ensemble), also on panic. The tests run one at a time (two
//! shared cores: one cluster of three PostgreSQL servers and three JVMs at once).

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use coordd_client::{Acl, Client, ClientConfig, CreateMode, SessionState};
use support::agent::{
    assert_all_acked_on, check_health, connect, now_ms, sessions_opened, spawn_primary_monitor,
    switchyard_bin, tail, wait_sync, Agent,
};
use support::postgres::{self, PgDir};
use support::router::{
    reads_settle_on, router_follows_a_master_kill, start_router, wait_three, wait_topology,
    where_ran, DbCluster,
};
use support::zookeeper::{ZkMode, ZooKeeper, ZooKeeperEnsemble};
use switchyard_proxy::namespace::Namespace;
use switchyard_proxy::records::{self, LeaderRecord, MemberRecord};
use tokio::time::{timeout, Instant};

const CLUSTER: &str = "main";
/// The agents' (and the router's) session timeout in the failover tests: the time a
/// dead master's session takes to expire, so most of the failover time.
const SESSION_TIMEOUT_MS: u32 = 4_000;
/// The session timeout while the ZooKeeper leader is killed. An agent fences (stops a
/// master's PostgreSQL and starts a new session) when no request or ping was
/// acknowledged for `timeout - margin` (margin: timeout/3 by default) since it was sent,
/// and pings go out every timeout/3, so it tolerates an outage of between timeout/3
/// and 2*timeout/3 from the moment the ensemble stops answering. A ZooKeeper election
/// here (tickTime 200 ms) takes 0.5-0.9 s, then the client's reconnect backoff (up to
/// 1 s) may add most of a second: 6 s leaves at least 2 s.
const ZK_LEADER_KILL_SESSION_TIMEOUT_MS: u32 = 6_000;
/// Bound on every wait for the cluster after the bootstrap (failover, rejoin, replay).
const DEADLINE: Duration = Duration::from_secs(60);
/// Bound on the bootstrap (initdb, start, two base backups) on a loaded machine; a
/// quiet one takes about ten seconds.
const BOOTSTRAP_DEADLINE: Duration = Duration::from_secs(180);
/// Bound on the ensemble electing a leader after a member was killed.
const ZK_ELECTION_DEADLINE: Duration = Duration::from_secs(30);

const ALL: [&str; 3] = ["n1", "n2", "n3"];

/// One cluster of three PostgreSQL servers and three JVMs at a time (an async lock:
/// held across awaits, released when a test panics).
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    SERIAL.lock().await
}

/// Skips (printing why) unless both ZooKeeper and PostgreSQL are installed.
fn skip(test: &str) -> bool {
    ZooKeeper::skip_if_unavailable(test) || postgres::skip()
}

/// Starts a 3-member ensemble off the runtime threads (its start polls with blocking
/// sleeps under its own deadline).
async fn start_ensemble() -> ZooKeeperEnsemble {
    let started = Instant::now();
    let zk = tokio::task::spawn_blocking(|| ZooKeeperEnsemble::start(3))
        .await
        .expect("ensemble start task")
        .unwrap_or_else(|e| panic!("starting a 3-member ZooKeeper ensemble: {e}"));
    eprintln!(
        "ZooKeeper ensemble {} up in {:?}, modes {:?}",
        zk.connect_string(),
        started.elapsed(),
        zk.modes()
    );
    zk
}

/// Waits for the ensemble to have one leader followed by every running member.
fn wait_zk_leader(zk: &mut ZooKeeperEnsemble) -> u32 {
    tokio::task::block_in_place(|| zk.wait_leader(ZK_ELECTION_DEADLINE))
        .unwrap_or_else(|e| panic!("{e}"))
}

/// A test client on the ensemble, with every member in its server list.
async fn zk_client(zk: &ZooKeeperEnsemble, session_timeout_ms: u32) -> Client {
    let cfg = ClientConfig::new(zk.members().iter().map(|m| m.addr()))
        .with_session_timeout_ms(session_timeout_ms);
    let (client, _events) = timeout(DEADLINE, Client::connect(cfg))
        .await
        .expect("test client connects in time")
        .expect("test client connects");
    client
}

/// Three agents `n1..n3` on a ZooKeeper ensemble, each with its own PostgreSQL.
struct ZkCluster {
    // Agents first: dropped (killed, their PostgreSQL stopped) before the ensemble.
    agents: Vec<Agent>,
    client: Client,
    ns: Namespace,
    zk: ZooKeeperEnsemble,
}

impl ZkCluster {
    /// Starts an ensemble and three agents with `extra_toml` (e.g. `synchronous = true`)
    /// and the session timeout `session_timeout_ms`.
    async fn start(extra_toml: &str, session_timeout_ms: u32) -> ZkCluster {
        let _ = switchyard_bin(); // build before the clock starts
        let zk = start_ensemble().await;
        let agents = ALL
            .iter()
            .map(|node| {
                Agent::spawn_with(
                    PgDir::new(),
                    &zk.connect_string(),
                    CLUSTER,
                    node,
                    session_timeout_ms,
                    extra_toml,
                )
            })
            .collect();
        let client = zk_client(&zk, 10_000).await;
        ZkCluster {
            agents,
            client,
            ns: Namespace::with_default_root(CLUSTER).expect("namespace"),
            zk,
        }
    }

    fn agent(&self, node: &str) -> &Agent {
        self.agents.iter().find(|a| a.node == node).unwrap()
    }

    fn agent_mut(&mut self, node: &str) -> &mut Agent {
        self.agents.iter_mut().find(|a| a.node == node).unwrap()
    }

    /// The `leader` record and its stat (czxid = epoch, ephemeralOwner = session).
    async fn leader(&self) -> Option<(LeaderRecord, coordd_proto::records::Stat)> {
        let (data, stat) = self.client.get_data(&self.ns.leader(), false).await.ok()?;
        Some((records::decode(&data).ok()?, stat))
    }

    /// Every decodable member record with its znode's ephemeral owner (session id).
    async fn members(&self) -> Vec<(MemberRecord, i64)> {
        let mut out = Vec::new();
        let Ok(children) = self.client.get_children(&self.ns.members(), false).await else {
            return out;
        };
        for c in children {
            if let Ok((data, stat)) = self.client.get_data(&self.ns.member(&c), false).await {
                if let Ok(m) = records::decode::<MemberRecord>(&data) {
                    out.push((m, stat.ephemeral_owner));
                }
            }
        }
        out
    }

    /// Waits until `live` form one cluster (see [`Self::check_healthy`]); returns the
    /// master's node name.
    async fn wait_healthy(&self, live: &[&str], not: Option<&str>, deadline: Duration) -> String {
        let start = Instant::now();
        loop {
            let last = match self.check_healthy(live, not).await {
                Ok(master) => return master,
                Err(why) => why,
            };
            if start.elapsed() > deadline {
                panic!(
                    "cluster not healthy after {deadline:?}: {last}\n{}",
                    self.dump()
                );
            }
            // Poll interval of a condition wait (records change every publish interval).
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `support::agent::check_health` on this ensemble's records.
    async fn check_healthy(&self, live: &[&str], not: Option<&str>) -> Result<String, String> {
        let leader = self.leader().await.map(|(l, _)| l);
        let members: Vec<MemberRecord> = self.members().await.into_iter().map(|(m, _)| m).collect();
        check_health(
            leader,
            &members,
            &|node| self.agent(node).pg_port,
            live,
            not,
        )
        .await
    }

    /// Waits until `sync` names exactly `standbys` (written by `master`) and the
    /// master's WAL senders to them are all in the quorum.
    async fn wait_sync(&self, master: &str, standbys: &[&str]) {
        wait_sync(
            &self.client,
            &self.ns,
            master,
            self.agent(master).pg_port,
            standbys,
            DEADLINE,
            &|| self.dump(),
        )
        .await
    }
}

impl DbCluster for ZkCluster {
    /// kill -9 of a node's agent and its PostgreSQL.
    fn kill(&mut self, node: &str) {
        let a = self.agent_mut(node);
        a.kill9();
        a.kill9_postgres();
    }

    fn dump(&self) -> String {
        let mut s = String::new();
        for a in &self.agents {
            s.push_str(&format!(
                "\n===== agent {} log (tail) =====\n{}\n===== {} postgres log (tail) =====\n{}\n",
                a.node,
                tail(&a.log(), 60),
                a.node,
                tail(&a.pg_log(), 20)
            ));
        }
        s.push_str(&self.zk.output_tails(15));
        s
    }
}

fn others(all: &[&'static str], not: &str) -> Vec<&'static str> {
    all.iter().copied().filter(|n| *n != not).collect()
}

// ---- writer -------------------------------------------------------------------------

/// One acknowledged insert: the row's id.
#[derive(Clone, Copy, Debug)]
struct Ack {
    id: i64,
}

/// Inserts rows straight into the PostgreSQL on `port`, one statement at a time,
/// reconnecting after errors; records every acknowledgement and counts failures.
fn spawn_writer(
    port: u16,
    acks: Arc<Mutex<Vec<Ack>>>,
    failures: Arc<AtomicUsize>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            if let Some(w) = connect(port).await {
                loop {
                    let sent_ms = now_ms();
                    match w
                        .query_one(
                            "INSERT INTO t (sent_ms) VALUES ($1) RETURNING id",
                            &[&sent_ms],
                        )
                        .await
                    {
                        Ok(row) => acks.lock().unwrap().push(Ack { id: row.get(0) }),
                        Err(_) => {
                            failures.fetch_add(1, Ordering::Relaxed);
                            break;
                        }
                    }
                }
            } else {
                failures.fetch_add(1, Ordering::Relaxed);
            }
            // Reconnect pace of a writer whose server is gone (not a settle delay).
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
}

/// Waits until the writer has `n` more acknowledgements than `from`.
async fn wait_acks(acks: &Arc<Mutex<Vec<Ack>>>, from: usize, n: usize, c: &ZkCluster) {
    let start = Instant::now();
    while acks.lock().unwrap().len() < from + n {
        assert!(
            start.elapsed() < DEADLINE,
            "the writer committed {} of {n} rows within {DEADLINE:?}{}",
            acks.lock().unwrap().len() - from,
            c.dump()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

// ---- tests --------------------------------------------------------------------------

/// The harness itself: three members, exactly one leader; a client session (with an
/// ephemeral node) survives the kill -9 of the ZooKeeper leader, a new leader is
/// elected among the two others, and the killed member rejoins as a follower.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ensemble_elects_one_leader_and_a_session_survives_its_kill() {
    if ZooKeeper::skip_if_unavailable("ensemble_elects_one_leader_and_a_session_survives_its_kill")
    {
        return;
    }
    let _serial = serial().await;
    let mut zk = start_ensemble().await;
    let modes = zk.modes();
    assert_eq!(
        modes.iter().filter(|(_, m)| *m == ZkMode::Leader).count(),
        1,
        "{modes:?}"
    );
    assert_eq!(
        modes.iter().filter(|(_, m)| *m == ZkMode::Follower).count(),
        2,
        "{modes:?}"
    );
    assert_eq!(zk.connect_string().split(',').count(), 3);

    let client = zk_client(&zk, SESSION_TIMEOUT_MS).await;
    let sid = client.session_id();
    client
        .create("/eph", b"x", &Acl::open_unsafe(), CreateMode::Ephemeral)
        .await
        .expect("create ephemeral");

    let leader = zk.leader().expect("one leader");
    let killed = Instant::now();
    zk.kill9(leader);
    let new_leader = wait_zk_leader(&mut zk);
    let elected = killed.elapsed();
    assert_ne!(new_leader, leader);
    // The same session works through a surviving member: its ephemeral is still there
    // and a write goes through.
    let stat = timeout(DEADLINE, async {
        loop {
            match client.set_data("/eph", b"y", None).await {
                Ok(stat) => return stat,
                Err(e) => {
                    assert!(
                        !client.state().is_terminal(),
                        "session ended after the ZooKeeper leader's kill: {e}"
                    );
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    })
    .await
    .expect("a write through a surviving member in time");
    let served = killed.elapsed();
    assert_eq!(client.session_id(), sid);
    assert_eq!(client.state(), SessionState::Connected);
    assert_eq!(stat.ephemeral_owner, sid);
    eprintln!(
        "ZooKeeper leader {leader} killed: member {new_leader} leads after {elected:?}; \
         the session wrote again after {served:?}"
    );

    let restarted = Instant::now();
    let leader_now = tokio::task::block_in_place(|| zk.restart(leader)).expect("restart");
    assert_eq!(
        leader_now, new_leader,
        "a rejoining member does not take over"
    );
    assert_eq!(zk.member(leader).mode(), ZkMode::Follower);
    eprintln!(
        "member {leader} rejoined as a follower in {:?}",
        restarted.elapsed()
    );
    drop(client);
}

/// Issue 3's kill scenario against a 3-member ZooKeeper ensemble, in synchronous mode:
/// kill -9 of the master's agent and PostgreSQL while a writer commits straight to it;
/// a new master (a newer epoch) has every acknowledged row and takes writes; the old
/// node, restarted, rewinds and rejoins as a replica and a synchronous standby.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zk_ensemble_sync_mode_kill9_of_the_master() {
    if skip("zk_ensemble_sync_mode_kill9_of_the_master") {
        return;
    }
    let _serial = serial().await;
    let started = Instant::now();
    let mut c = ZkCluster::start("synchronous = true", SESSION_TIMEOUT_MS).await;
    let old = c.wait_healthy(&ALL, None, BOOTSTRAP_DEADLINE).await;
    c.wait_sync(&old, &others(&ALL, &old)).await;
    eprintln!("bootstrapped on ZooKeeper in {:?}", started.elapsed());
    // The records are where DESIGN.md puts them; `initialize` names the master.
    let (init, _) = c.client.get_data(&c.ns.initialize(), false).await.unwrap();
    assert!(!init.is_empty());
    let (_, old_stat) = c.leader().await.unwrap();
    assert_ne!(old_stat.ephemeral_owner, 0, "`leader` is ephemeral");

    let old_port = c.agent(&old).pg_port;
    connect(old_port)
        .await
        .unwrap()
        .batch_execute("CREATE TABLE t (id bigserial primary key, sent_ms bigint)")
        .await
        .unwrap();
    let acks = Arc::new(Mutex::new(Vec::new()));
    let failures = Arc::new(AtomicUsize::new(0));
    let writer = spawn_writer(old_port, acks.clone(), failures.clone());
    wait_acks(&acks, 0, 50, &c).await;

    let killed = Instant::now();
    c.kill(&old);
    let live = others(&ALL, &old);
    let new = c.wait_healthy(&live, Some(&old), DEADLINE).await;
    let failover = killed.elapsed();
    writer.abort();
    let _ = writer.await;
    let acks: Vec<Ack> = acks.lock().unwrap().clone();
    let (_, new_stat) = c.leader().await.unwrap();
    assert!(
        new_stat.czxid > old_stat.czxid,
        "epoch did not grow: {} -> {}",
        old_stat.czxid,
        new_stat.czxid
    );
    eprintln!(
        "failover {old} -> {new} on ZooKeeper after {failover:?}; {} acknowledged rows",
        acks.len()
    );
    assert_all_acked_on(c.agent(&new).pg_port, acks.iter().map(|a| a.id), &new).await;

    // The new master takes writes (its remaining replica acknowledges them).
    connect(c.agent(&new).pg_port)
        .await
        .unwrap()
        .batch_execute("INSERT INTO t (sent_ms) VALUES (0)")
        .await
        .unwrap();

    // The old node comes back: rewinds, follows, and is a synchronous standby again.
    let restarted = Instant::now();
    c.agent_mut(&old).start();
    let master = c.wait_healthy(&ALL, Some(&old), DEADLINE).await;
    assert_eq!(master, new);
    let mut standbys = others(&live, &new);
    standbys.push(&old);
    c.wait_sync(&new, &standbys).await;
    eprintln!("{old} rejoined in {:?}", restarted.elapsed());
    let log = c.agent(&old).log();
    assert!(log.contains("pg_rewind"), "{}", tail(&log, 40));
    assert_all_acked_on(c.agent(&old).pg_port, acks.iter().map(|a| a.id), &old).await;
}

/// The router against the ensemble: persistent recursive watch (ZooKeeper 3.8 has
/// addWatch), reads on both replicas, writes on the master; the master killed (kill -9
/// of its agent and PostgreSQL): writes resume on the new master through the same
/// router, at most one write failing in between.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn router_on_zk_ensemble_reads_replicas_and_follows_a_master_failover() {
    if skip("router_on_zk_ensemble_reads_replicas_and_follows_a_master_failover") {
        return;
    }
    let _serial = serial().await;
    let mut c = ZkCluster::start("", SESSION_TIMEOUT_MS).await;
    let router = start_router(&c.zk.connect_string(), SESSION_TIMEOUT_MS).await;
    assert!(
        !router.uses_one_shot_watches(),
        "ZooKeeper 3.8 implements addWatch"
    );
    let (old, replicas) = wait_three(&router, BOOTSTRAP_DEADLINE, &|| c.dump()).await;

    // Reads: round robin over both replicas, never the master.
    let mut read_ports = BTreeSet::new();
    for _ in 0..10 {
        let (rec, port) =
            where_ran(&router, "SELECT pg_is_in_recovery(), inet_server_port()").await;
        assert!(rec, "a read ran on a server not in recovery (port {port})");
        read_ports.insert(port);
    }
    let want: BTreeSet<u16> = replicas.values().copied().collect();
    assert_eq!(read_ports, want, "reads did not spread over both replicas");
    // Writes: the master, then its kill.
    let new = router_follows_a_master_kill(&router, &old, &mut c, DEADLINE).await;
    // Reads now go to the remaining replica only.
    let survivor = replicas
        .iter()
        .find(|(node, _)| **node != new)
        .map(|(_, port)| *port)
        .unwrap();
    reads_settle_on(&router, survivor, DEADLINE).await;
    drop(router);
}

/// kill -9 of the ZooKeeper leader member while three agents run and a writer commits
/// to the master: the agents' (and the router's) sessions move to the surviving
/// members and survive (ZooKeeper's new leader takes over every session), so the
/// master keeps `leader` with the same epoch, no agent opens a new session, no second
/// PostgreSQL ever takes writes, and writes keep working, straight and via the router.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zk_leader_kill_keeps_one_master() {
    if skip("zk_leader_kill_keeps_one_master") {
        return;
    }
    let _serial = serial().await;
    let mut c = ZkCluster::start("", ZK_LEADER_KILL_SESSION_TIMEOUT_MS).await;
    let master = c.wait_healthy(&ALL, None, BOOTSTRAP_DEADLINE).await;
    let router = start_router(&c.zk.connect_string(), ZK_LEADER_KILL_SESSION_TIMEOUT_MS).await;
    wait_topology(&router, "the router to see the master", DEADLINE, |t| {
        t.writable_endpoint().is_some_and(|e| e.node == master)
    })
    .await;
    let (_, leader_stat) = c.leader().await.unwrap();
    let owners_before: BTreeMap<String, i64> = c
        .members()
        .await
        .into_iter()
        .map(|(m, owner)| (m.node, owner))
        .collect();
    assert_eq!(owners_before.len(), 3, "{owners_before:?}");
    assert_eq!(owners_before[&master], leader_stat.ephemeral_owner);
    for a in &c.agents {
        assert_eq!(sessions_opened(a), 1, "{}: {}", a.node, tail(&a.log(), 20));
    }

    let master_port = c.agent(&master).pg_port;
    connect(master_port)
        .await
        .unwrap()
        .batch_execute("CREATE TABLE t (id bigserial primary key, sent_ms bigint)")
        .await
        .unwrap();
    let acks = Arc::new(Mutex::new(Vec::new()));
    let failures = Arc::new(AtomicUsize::new(0));
    let writer = spawn_writer(master_port, acks.clone(), failures.clone());
    wait_acks(&acks, 0, 20, &c).await;
    let stop = Arc::new(AtomicBool::new(false));
    let monitor = spawn_primary_monitor(
        c.agents
            .iter()
            .map(|a| (a.node.clone(), a.pg_port))
            .collect(),
        stop.clone(),
    );

    let zk_leader = c.zk.leader().expect("one ZooKeeper leader");
    let killed = Instant::now();
    c.zk.kill9(zk_leader);
    let new_zk_leader = wait_zk_leader(&mut c.zk);
    let elected = killed.elapsed();
    let served_ms = u64::try_from(now_ms()).unwrap();
    assert_ne!(new_zk_leader, zk_leader);

    // Every agent publishes its member record again through a surviving member (so its
    // session is connected after the election) and the master's agent still holds
    // `leader`: same znode (epoch), same session.
    let start = Instant::now();
    let owners_after = loop {
        let members = c.members().await;
        let fresh = members
            .iter()
            .filter(|(m, _)| m.updated_ms > served_ms)
            .count();
        if fresh == 3 {
            break members
                .into_iter()
                .map(|(m, owner)| (m.node, owner))
                .collect::<BTreeMap<String, i64>>();
        }
        assert!(
            start.elapsed() < DEADLINE,
            "agents did not publish after the ZooKeeper election: {members:?}{}",
            c.dump()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let republished = killed.elapsed();
    let now_master = c.wait_healthy(&ALL, None, DEADLINE).await;
    let (_, stat) = c.leader().await.unwrap();
    assert_eq!(now_master, master, "the master changed{}", c.dump());
    assert_eq!(
        stat.czxid,
        leader_stat.czxid,
        "`leader` was re-created (new epoch){}",
        c.dump()
    );
    assert_eq!(
        owners_after,
        owners_before,
        "an agent's session was replaced{}",
        c.dump()
    );
    for a in &c.agents {
        assert_eq!(
            sessions_opened(a),
            1,
            "{} opened a new session: {}",
            a.node,
            tail(&a.log(), 30)
        );
    }

    // Writes work: the straight writer goes on, and through the router.
    let before = acks.lock().unwrap().len();
    wait_acks(&acks, before, 20, &c).await;
    let (rec, port) = where_ran(
        &router,
        "INSERT INTO t (sent_ms) VALUES (1) RETURNING pg_is_in_recovery(), inet_server_port()",
    )
    .await;
    assert!(!rec);
    assert_eq!(port, master_port);
    stop.store(true, Ordering::Relaxed);
    let (samples, worst) = monitor.await.unwrap();
    writer.abort();
    let _ = writer.await;
    eprintln!(
        "ZooKeeper leader {zk_leader} killed: member {new_zk_leader} leads after {elected:?}; \
         agents published again after {republished:?}; writer failures {}; {samples} role \
         samples, most primaries at once {worst:?}",
        failures.load(Ordering::Relaxed)
    );
    assert!(samples > 10, "too few samples ({samples})");
    assert!(worst.len() <= 1, "two masters at once: {worst:?}");
    assert_eq!(worst, vec![master.clone()]);
    drop(router);
}
