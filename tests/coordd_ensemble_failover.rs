//! The agent's and the router's failover on a 3-member coordd ensemble (issue 5,
//! acceptance item 3): three real coordd processes on 127.0.0.1-3
//! (tests/support/coordd.rs), three real `switchyard agent` processes in synchronous
//! mode with real PostgreSQL 15, and one router that is never restarted, through which
//! a writer commits rows (tests/support/agent.rs's `Cluster` with `ensemble: true`).
//!
//! - kill -9 of the master (agent and PostgreSQL): a new master with a newer epoch has
//!   every row the router acknowledged; the router's writes resume there without a
//!   restart, its reads go to the remaining replica; the old node, restarted, rewinds
//!   and rejoins as a synchronous standby that gets reads again;
//! - kill -9 of the master, then of the coordd leader, in two rounds: right after the
//!   master's kill (before anyone noticed the vacancy), and once another node holds
//!   `leader` as `promoting` (in the middle of its promotion). Never two PostgreSQL
//!   servers taking writes, no acknowledged row lost, the surviving agents keep their
//!   sessions, and the cluster converges (the coordd member and the old node restart
//!   and rejoin);
//! - kill -9 of the coordd leader alone: the same master with the same epoch, every
//!   agent keeps its session (no failover), writes go on.
//!
//! Skips with a printed reason when PostgreSQL is missing. Every wait is on a condition
//! under a deadline; processes are stopped by Drop guards (agents before the ensemble),
//! also on panic. The tests run one at a time (two shared cores).

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use support::agent::{
    assert_all_acked_on, now_ms, sessions_opened, spawn_primary_monitor, tail, Cluster,
    ClusterOpts, ELECTION_DEADLINE,
};
use support::postgres;
use support::router::{reads_settle_on, start_router, wait_three, wait_topology, where_ran};
use switchyard_proxy::records::LeaderState;
use switchyard_proxy::router::Router;
use tokio::time::{timeout, Instant};

/// The agents' and the router's session timeout. An agent fences its master when no
/// request or ping was acknowledged for `timeout - timeout/3` since it was sent, and
/// pings every timeout/3, so it rides out a coordd outage of at least timeout/3 (1.5 s
/// here). When the coordd leader dies its followers stop serving within 200 ms and a
/// new leader serves after ~0.4-0.5 s; clients come back through the reconnect backoff
/// (50 ms doubling to 1 s: ~0.2-0.8 s more). 4.5 s is about 3x that outage (README:
/// session timeouts on ensembles) and keeps each database failover (the dead master's
/// session expiring) short.
const SESSION_TIMEOUT_MS: u32 = 4_500;
/// Bound on every wait after the bootstrap (failover, rejoin, replay).
const DEADLINE: Duration = Duration::from_secs(60);
/// Bound on the bootstrap (initdb, start, two base backups) on a loaded machine.
const BOOTSTRAP_DEADLINE: Duration = Duration::from_secs(180);

const ALL: [&str; 3] = ["n1", "n2", "n3"];

/// One cluster (three coordd, three agents, three PostgreSQL) at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn others(all: &[&'static str], not: &str) -> Vec<&'static str> {
    all.iter().copied().filter(|n| *n != not).collect()
}

/// A coordd ensemble, three agents in synchronous mode, the master and both standbys
/// named in `sync`, and a router that sees them all. Returns the master's name.
async fn start() -> (Cluster, Router, String) {
    let started = Instant::now();
    let c = Cluster::start_opts(ClusterOpts {
        session_timeout_ms: SESSION_TIMEOUT_MS,
        extra_toml: "synchronous = true".into(),
        ensemble: true,
        ..ClusterOpts::default()
    })
    .await;
    let master = c.wait_healthy(&ALL, None).await;
    c.wait_sync(&master, &others(&ALL, &master)).await;
    let router = start_router(&c.coordd.connect_string(), SESSION_TIMEOUT_MS).await;
    let (routed, _) = wait_three(&router, BOOTSTRAP_DEADLINE, &|| c.dump()).await;
    assert_eq!(routed, master);
    router
        .execute(
            "CREATE TABLE t (id bigserial PRIMARY KEY, at_ms bigint)",
            &[],
        )
        .await
        .unwrap();
    eprintln!(
        "bootstrapped on the coordd ensemble {} in {:?}: master {master}",
        c.coordd.connect_string(),
        started.elapsed()
    );
    (c, router, master)
}

// ---- a writer through the router ----------------------------------------------------

/// One insert the router acknowledged: the row's id, the port of the server that ran
/// it, and when the acknowledgement arrived.
#[derive(Clone, Copy, Debug)]
struct Ack {
    id: i64,
    port: u16,
    at: Instant,
}

/// Inserts rows through `Router::query`, one statement at a time, as an app would;
/// records every acknowledgement and every error (with its time).
struct Writer {
    acks: Arc<Mutex<Vec<Ack>>>,
    errors: Arc<Mutex<Vec<(Instant, String, bool)>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Writer {
    fn spawn(router: &Router) -> Writer {
        let router = router.clone();
        let acks = Arc::new(Mutex::new(Vec::new()));
        let errors = Arc::new(Mutex::new(Vec::new()));
        let task = {
            let (acks, errors) = (acks.clone(), errors.clone());
            tokio::spawn(async move {
                loop {
                    let at_ms = now_ms();
                    match router
                        .query(
                            "INSERT INTO t (at_ms) VALUES ($1) RETURNING id, inet_server_port()",
                            &[&at_ms],
                        )
                        .await
                    {
                        Ok(rows) => acks.lock().unwrap().push(Ack {
                            id: rows[0].get(0),
                            port: u16::try_from(rows[0].get::<_, i32>(1)).unwrap(),
                            at: Instant::now(),
                        }),
                        Err(e) => {
                            errors.lock().unwrap().push((
                                Instant::now(),
                                e.to_string(),
                                e.is_retryable(),
                            ));
                            // Retry pace of an app whose write failed (not a settle
                            // delay): the router itself waits for the next master.
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    }
                }
            })
        };
        Writer { acks, errors, task }
    }

    fn acks(&self) -> Vec<Ack> {
        self.acks.lock().unwrap().clone()
    }

    fn errors_since(&self, since: Instant) -> Vec<(String, bool)> {
        self.errors
            .lock()
            .unwrap()
            .iter()
            .filter(|(t, _, _)| *t >= since)
            .map(|(_, e, r)| (e.clone(), *r))
            .collect()
    }

    /// Waits until a write acknowledged after `since` ran on `port`; returns when.
    async fn wait_ack_on(&self, port: u16, since: Instant, dump: &dyn Fn() -> String) -> Instant {
        let start = Instant::now();
        loop {
            if let Some(a) = self
                .acks
                .lock()
                .unwrap()
                .iter()
                .find(|a| a.at >= since && a.port == port)
            {
                return a.at;
            }
            assert!(
                start.elapsed() < DEADLINE,
                "no write acknowledged on port {port} within {DEADLINE:?}; errors {:?}{}",
                self.errors_since(since),
                dump()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits until `n` more writes than now were acknowledged.
    async fn wait_more(&self, n: usize, dump: &dyn Fn() -> String) {
        let from = self.acks.lock().unwrap().len();
        let start = Instant::now();
        while self.acks.lock().unwrap().len() < from + n {
            assert!(
                start.elapsed() < DEADLINE,
                "the writer committed {} of {n} rows within {DEADLINE:?}; errors {:?}{}",
                self.acks.lock().unwrap().len() - from,
                self.errors_since(start),
                dump()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Stops the writer; returns every acknowledgement.
    async fn stop(self) -> Vec<Ack> {
        self.task.abort();
        let _ = self.task.await;
        let acks = self.acks.lock().unwrap().clone();
        acks
    }
}

/// The longest time without an acknowledged write from the last acknowledgement before
/// `from` on.
fn longest_gap(acks: &[Ack], from: Instant) -> Duration {
    let mut prev = acks
        .iter()
        .rev()
        .find(|a| a.at < from)
        .map_or(from, |a| a.at);
    let mut longest = Duration::ZERO;
    for a in acks.iter().filter(|a| a.at >= from) {
        longest = longest.max(a.at - prev);
        prev = a.at;
    }
    longest
}

/// The ports reads ran on, out of `n` reads through `Router::query`; every one must run
/// on a server in recovery.
async fn read_ports(router: &Router, n: usize) -> BTreeSet<u16> {
    let mut ports = BTreeSet::new();
    for _ in 0..n {
        let (rec, port) = where_ran(router, "SELECT pg_is_in_recovery(), inet_server_port()").await;
        assert!(rec, "a read ran on a server not in recovery (port {port})");
        ports.insert(port);
    }
    ports
}

// ---- the coordd ensemble ------------------------------------------------------------

/// The index of the coordd member that leads, once one leads and the others follow.
fn coordd_leader(c: &Cluster, alive: &[usize]) -> usize {
    tokio::task::block_in_place(|| c.coordd.ensemble().wait_leader(alive, ELECTION_DEADLINE))
}

/// kill -9 of coordd member `i` (0-based).
fn kill_coordd(c: &mut Cluster, i: usize) {
    c.coordd.ensemble_mut().members[i].kill9();
}

/// Restarts coordd member `i` on its port and data directory and waits until it
/// follows the leader.
fn restart_coordd(c: &mut Cluster, i: usize) {
    tokio::task::block_in_place(|| {
        let e = c.coordd.ensemble_mut();
        e.members[i].restart();
        e.wait_leader(&[0, 1, 2], ELECTION_DEADLINE);
    });
}

// ---- tests --------------------------------------------------------------------------

/// kill -9 of the master's agent and PostgreSQL under a writer that goes through the
/// router: a new master (newer epoch) has every acknowledged row; the router's writes
/// resume there (at most one failed write in between: a suspect master is not
/// hammered) and its reads go to the remaining replica; the old node, restarted,
/// rewinds, becomes a synchronous standby again, has every acknowledged row and gets
/// reads again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn master_kill9_on_a_coordd_ensemble_the_router_follows_and_the_old_node_rejoins() {
    if postgres::skip() {
        return;
    }
    let _serial = SERIAL.lock().await;
    let (mut c, router, old) = start().await;
    let live = others(&ALL, &old);
    let old_port = c.agent(&old).pg_port;
    let replica_ports: BTreeSet<u16> = live.iter().map(|n| c.agent(n).pg_port).collect();
    assert_eq!(
        read_ports(&router, 10).await,
        replica_ports,
        "reads not on both replicas"
    );
    let (_, old_epoch) = c.leader().await.unwrap();

    let writer = Writer::spawn(&router);
    writer.wait_more(50, &|| c.dump()).await;
    assert!(writer.acks().iter().all(|a| a.port == old_port));

    let killed = Instant::now();
    c.kill(&old);
    let new = c.wait_healthy(&live, Some(&old)).await;
    let failover = killed.elapsed();
    let new_port = c.agent(&new).pg_port;
    let resumed = writer.wait_ack_on(new_port, killed, &|| c.dump()).await - killed;
    writer.wait_more(20, &|| c.dump()).await;
    let errors = writer.errors_since(killed);
    let (_, new_epoch) = c.leader().await.unwrap();
    assert!(new_epoch > old_epoch, "epoch {old_epoch} -> {new_epoch}");
    let t = router.topology();
    assert_eq!(t.writable_endpoint().map(|e| e.port), Some(new_port));
    assert!(
        router.pooled_endpoints().iter().all(|e| e.node != old),
        "the old master's pool survived the leader change"
    );
    let acks = writer.acks();
    assert!(
        acks.iter()
            .all(|a| a.port == old_port || a.port == new_port),
        "a write ran on a third server"
    );
    assert!(
        acks.iter()
            .filter(|a| a.at >= killed)
            .skip_while(|a| a.port == old_port)
            .all(|a| a.port == new_port),
        "a write ran on the old master after one ran on the new"
    );
    eprintln!(
        "master {old} killed: {new} healthy after {failover:?}, the router's writes resumed \
         there after {resumed:?} (longest gap {:?}); errors in between {errors:?}; {} rows \
         acknowledged so far",
        longest_gap(&acks, killed),
        acks.len()
    );
    assert!(errors.iter().all(|(_, retryable)| *retryable), "{errors:?}");
    assert!(
        errors.len() <= 1,
        "writes hammered the dead master: {errors:?}"
    );
    assert_all_acked_on(new_port, acks.iter().map(|a| a.id), &new).await;

    // Reads: the remaining replica only.
    let survivor = others(&live, &new)[0];
    let survivor_port = c.agent(survivor).pg_port;
    reads_settle_on(&router, survivor_port, DEADLINE).await;

    // The old node comes back: rewinds, follows, synchronous standby again, reads.
    let restarted = Instant::now();
    c.agent_mut(&old).start();
    let master = c.wait_healthy(&ALL, Some(&old)).await;
    assert_eq!(master, new);
    c.wait_sync(&new, &[survivor, old.as_str()]).await;
    let rejoined = restarted.elapsed();
    let log = c.agent(&old).log();
    assert!(log.contains("pg_rewind"), "{}", tail(&log, 40));
    wait_topology(&router, "two readable replicas again", DEADLINE, |t| {
        t.readable_endpoints(1 << 30).count() == 2
    })
    .await;
    writer.wait_more(20, &|| c.dump()).await;
    let acks = writer.stop().await;
    assert_eq!(
        read_ports(&router, 10).await,
        BTreeSet::from([survivor_port, old_port]),
        "reads not on both replicas after the rejoin"
    );
    assert_all_acked_on(new_port, acks.iter().map(|a| a.id), &new).await;
    assert_all_acked_on(old_port, acks.iter().map(|a| a.id), &old).await;
    eprintln!(
        "{old} rejoined in {rejoined:?}; {} rows acknowledged in all, none lost",
        acks.len()
    );
    drop(router);
}

/// When the coordd leader is killed during a database failover.
#[derive(Clone, Copy, Debug)]
enum CoorddKill {
    /// Right after the master's kill, before the vacancy is noticed.
    RightAfter,
    /// Once another node holds `leader` as `promoting`.
    WhilePromoting,
}

/// kill -9 of the master, then of the coordd leader during the failover, twice: right
/// after the master's kill and in the middle of the next master's promotion. Never two
/// PostgreSQL servers take writes (sampled throughout), exactly one master at the end,
/// every acknowledged row on it, the surviving agents keep their sessions, and after
/// the coordd member and the old node are restarted everything rejoins.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coordd_leader_kill9_in_the_middle_of_a_database_failover() {
    if postgres::skip() {
        return;
    }
    let _serial = SERIAL.lock().await;
    let (mut c, router, first) = start().await;
    let stop = Arc::new(AtomicBool::new(false));
    let monitor = spawn_primary_monitor(
        c.agents
            .iter()
            .map(|a| (a.node.clone(), a.pg_port))
            .collect(),
        stop.clone(),
    );
    let writer = Writer::spawn(&router);
    writer.wait_more(50, &|| c.dump()).await;

    let mut master = first;
    for when in [CoorddKill::RightAfter, CoorddKill::WhilePromoting] {
        master = failover_with_a_coordd_leader_kill(&mut c, &router, &writer, &master, when).await;
    }

    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (samples, worst) = monitor.await.unwrap();
    let acks = writer.stop().await;
    for a in &c.agents {
        assert_all_acked_on(a.pg_port, acks.iter().map(|a| a.id), &a.node).await;
    }
    eprintln!(
        "{} rows acknowledged, none lost; {samples} role samples, most primaries at once \
         {worst:?}",
        acks.len()
    );
    assert!(samples > 10, "too few samples ({samples})");
    assert!(
        worst.len() <= 1,
        "two PostgreSQL primaries at once: {worst:?}"
    );
    drop(router);
}

/// One round of [`coordd_leader_kill9_in_the_middle_of_a_database_failover`]; returns
/// the new master.
async fn failover_with_a_coordd_leader_kill(
    c: &mut Cluster,
    router: &Router,
    writer: &Writer,
    old: &str,
    when: CoorddKill,
) -> String {
    let live = others(&ALL, old);
    let (_, old_stat) = c.leader_stat().await.unwrap();
    let sessions_before: BTreeMap<String, usize> = live
        .iter()
        .map(|n| (n.to_string(), sessions_opened(c.agent(n))))
        .collect();
    let owners_before: BTreeMap<String, i64> = c
        .member_owners()
        .await
        .into_iter()
        .filter(|(m, _)| m.node != old)
        .map(|(m, owner)| (m.node, owner))
        .collect();
    assert_eq!(owners_before.len(), 2, "{owners_before:?}");
    let leader_before = coordd_leader(c, &[0, 1, 2]);

    let killed = Instant::now();
    c.kill(old);
    let seen = match when {
        CoorddKill::RightAfter => None,
        CoorddKill::WhilePromoting => {
            // Poll `leader` until another node holds it (every 5 ms: a promotion takes
            // a few hundred ms) and kill the coordd leader at once.
            let (winner, seen) = timeout(DEADLINE, async {
                loop {
                    if let Some((l, stat)) = c.leader_stat().await {
                        if l.node != old {
                            return (l.node, (l.state, stat.czxid));
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            })
            .await
            .unwrap_or_else(|_| panic!("nobody took `leader` after {old}'s kill{}", c.dump()));
            // ... and until its winner has the create's reply (it logs the epoch): a
            // coordd leader that dies before that reply reaches the winner makes it
            // release `leader` by design (it cannot tell its create from a lost one),
            // which is not the scenario here.
            let won = format!("won `leader` epoch={:#x}", seen.1);
            timeout(DEADLINE, async {
                while !c.agent(&winner).log().contains(&won) {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            })
            .await
            .unwrap_or_else(|_| panic!("{winner} never logged \"{won}\"{}", c.dump()));
            Some(seen)
        }
    };
    // The leader may have changed meanwhile only if something else went wrong; kill
    // whoever leads now.
    let target = c.coordd.ensemble().leader_now().unwrap_or(leader_before);
    kill_coordd(c, target);
    let coordd_killed = killed.elapsed();
    let alive: Vec<usize> = (0..3).filter(|i| *i != target).collect();
    let elected = Instant::now();
    let new_coordd_leader = coordd_leader(c, &alive);
    let elected = elected.elapsed();

    let new = c.wait_healthy(&live, Some(old)).await;
    let failover = killed.elapsed();
    let new_port = c.agent(&new).pg_port;
    let resumed = writer.wait_ack_on(new_port, killed, &|| c.dump()).await - killed;
    let (leader, new_stat) = c.leader_stat().await.unwrap();
    assert_eq!(leader.node, new);
    assert_eq!(leader.state, LeaderState::Primary);
    assert_eq!(
        router.topology().writable_endpoint().map(|e| e.port),
        Some(new_port)
    );
    assert!(new_stat.czxid > old_stat.czxid);
    if let Some((state, czxid)) = seen {
        // The `leader` seen at the kill is the one that stayed: its owner finished the
        // promotion across the coordd election.
        assert_eq!(
            czxid,
            new_stat.czxid,
            "`leader` ({state:?} when the coordd leader died) was re-created{}",
            c.dump()
        );
    }
    // The surviving agents kept their sessions through the coordd leader's death.
    let owners_after: BTreeMap<String, i64> = c
        .member_owners()
        .await
        .into_iter()
        .filter(|(m, _)| m.node != old)
        .map(|(m, owner)| (m.node, owner))
        .collect();
    assert_eq!(
        owners_after,
        owners_before,
        "a surviving agent's session was replaced{}",
        c.dump()
    );
    assert_eq!(new_stat.ephemeral_owner, owners_after[&new]);
    for n in &live {
        assert_eq!(
            sessions_opened(c.agent(n)),
            sessions_before[*n],
            "{n} opened a new session: {}",
            tail(&c.agent(n).log(), 30)
        );
    }
    let errors = writer.errors_since(killed);
    let acks = writer.acks();
    let resumes = c
        .agent(&new)
        .log()
        .matches("resuming the promotion")
        .count();
    eprintln!(
        "{when:?}: master {old} killed, coordd leader (member {}) killed {coordd_killed:?} \
         later{}; member {} leads after {elected:?}; {new} healthy after {failover:?} \
         (its promotion resumed {resumes} times), the router's writes resumed there after \
         {resumed:?} (longest gap {:?}); errors {errors:?}",
        target + 1,
        seen.map(|(s, _)| format!(" with `leader` {s:?}"))
            .unwrap_or_default(),
        new_coordd_leader + 1,
        longest_gap(&acks, killed),
    );
    assert!(errors.iter().all(|(_, retryable)| *retryable), "{errors:?}");
    assert_all_acked_on(new_port, acks.iter().map(|a| a.id), &new).await;

    // Converge: the coordd member and the old node come back.
    restart_coordd(c, target);
    c.agent_mut(old).start();
    let master = c.wait_healthy(&ALL, Some(old)).await;
    assert_eq!(master, new);
    c.wait_sync(&new, &others(&ALL, &new)).await;
    writer.wait_more(20, &|| c.dump()).await;
    assert_all_acked_on(
        c.agent(old).pg_port,
        writer.acks().iter().map(|a| a.id),
        old,
    )
    .await;
    new
}

/// kill -9 of the coordd leader alone while the agents run and the router's writer
/// commits: every agent's session moves to a surviving member and survives (the new
/// coordd leader takes over every session), so the master keeps `leader` with the
/// same epoch, no agent opens a new session, no second PostgreSQL ever takes writes,
/// and writes go on; the killed member then rejoins.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coordd_leader_kill9_alone_keeps_the_master_and_every_session() {
    if postgres::skip() {
        return;
    }
    let _serial = SERIAL.lock().await;
    let (mut c, router, master) = start().await;
    let master_port = c.agent(&master).pg_port;
    let (_, leader_stat) = c.leader_stat().await.unwrap();
    let owners_before: BTreeMap<String, i64> = c
        .member_owners()
        .await
        .into_iter()
        .map(|(m, owner)| (m.node, owner))
        .collect();
    assert_eq!(owners_before.len(), 3, "{owners_before:?}");
    assert_eq!(owners_before[&master], leader_stat.ephemeral_owner);
    // Usually 1 each; a bootstrapping agent starts over with a new session when its
    // connection drops (e.g. a member that closed its clients in a load spike).
    let sessions_before: Vec<usize> = c.agents.iter().map(sessions_opened).collect();
    let writer = Writer::spawn(&router);
    writer.wait_more(20, &|| c.dump()).await;
    let stop = Arc::new(AtomicBool::new(false));
    let monitor = spawn_primary_monitor(
        c.agents
            .iter()
            .map(|a| (a.node.clone(), a.pg_port))
            .collect(),
        stop.clone(),
    );

    let target = coordd_leader(&c, &[0, 1, 2]);
    let killed = Instant::now();
    kill_coordd(&mut c, target);
    let alive: Vec<usize> = (0..3).filter(|i| *i != target).collect();
    let new_coordd_leader = coordd_leader(&c, &alive);
    let elected = killed.elapsed();
    let served_ms = u64::try_from(now_ms()).unwrap();

    // Every agent publishes its member record again through a surviving member, in the
    // same session.
    let start = Instant::now();
    let owners_after = loop {
        let members = c.member_owners().await;
        if members
            .iter()
            .filter(|(m, _)| m.updated_ms > served_ms)
            .count()
            == 3
        {
            break members
                .into_iter()
                .map(|(m, owner)| (m.node, owner))
                .collect::<BTreeMap<String, i64>>();
        }
        assert!(
            start.elapsed() < DEADLINE,
            "agents did not publish after the coordd election: {members:?}{}",
            c.dump()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let republished = killed.elapsed();
    writer.wait_more(20, &|| c.dump()).await;
    let now_master = c.wait_healthy(&ALL, None).await;
    let (_, stat) = c.leader_stat().await.unwrap();
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
    for (a, before) in c.agents.iter().zip(&sessions_before) {
        assert_eq!(
            sessions_opened(a),
            *before,
            "{} opened a new session: {}",
            a.node,
            tail(&a.log(), 30)
        );
    }
    let errors = writer.errors_since(killed);

    // The killed member rejoins as a follower; the cluster is unchanged.
    restart_coordd(&mut c, target);
    assert_eq!(c.wait_healthy(&ALL, None).await, master);
    writer.wait_more(20, &|| c.dump()).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (samples, worst) = monitor.await.unwrap();
    let acks = writer.stop().await;
    eprintln!(
        "coordd leader (member {}) killed: member {} leads after {elected:?}; agents \
         published again after {republished:?}; the router's longest write gap {:?}, \
         errors {errors:?}; {} rows; {samples} role samples, most primaries at once {worst:?}",
        target + 1,
        new_coordd_leader + 1,
        longest_gap(&acks, killed),
        acks.len()
    );
    assert!(
        acks.iter().all(|a| a.port == master_port),
        "a write ran elsewhere"
    );
    assert!(errors.iter().all(|(_, retryable)| *retryable), "{errors:?}");
    assert_all_acked_on(master_port, acks.iter().map(|a| a.id), &master).await;
    assert!(samples > 10, "too few samples ({samples})");
    assert_eq!(worst, vec![master.clone()], "primaries at once: {worst:?}");
    drop(router);
}
