//! The router end to end (issue 4's acceptance): real coordd, three real
//! `switchyard agent` processes with real PostgreSQL (a master and two replicas), and
//! one router that is never restarted.
//!
//! - reads spread over both replicas (round robin; least outstanding avoids a busy one);
//! - `query()` / `execute()` classify: a SELECT runs on a replica, an INSERT, a
//!   `SELECT ... FOR UPDATE` and a `SELECT nextval(...)` on the master;
//! - read-your-writes: a read with a transaction's causal token sees the write, on a
//!   replica once one has replayed it;
//! - a write sent to a replica through a stale route (a snapshot naming a replica as
//!   the master, published into the route table) fails there with 25006 and is retried
//!   on the master, as are a transaction's begin and a "read" that writes;
//! - a replica killed (kill -9 of its agent and its PostgreSQL): reads keep succeeding
//!   (retried elsewhere), and once its member record is gone it gets none;
//! - the master killed: writes resume on the new master through the same router, with
//!   at most one failed write in between (a suspect master is not hammered);
//! - without PostgreSQL: a master whose connections fail is tried once, then writes
//!   wait for the next leader instead of reconnecting (counting listeners).
//!
//! PostgreSQL tests skip with a printed reason when PostgreSQL is missing. Every wait
//! is on a condition under a deadline; processes are stopped by Drop guards (agents
//! before coordd), also on panic.

mod support;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use coordd_client::{Acl, Client, ClientConfig, CreateMode};
use support::agent::{switchyard_bin, Agent};
use support::coordd::Coordd;
use support::postgres;
use support::router::{
    in_recovery, router_follows_a_master_kill, start_router, start_router_with, wait_three,
    wait_topology, where_ran, DbCluster,
};
use switchyard_proxy::namespace::Namespace;
use switchyard_proxy::records::{
    self, LeaderRecord, LeaderState, Lsn, MemberRecord, MemberState, Role,
};
use switchyard_proxy::router::{CausalToken, Error, PooledClient, Router};
use switchyard_proxy::topology::{Balance, Intent, Topology};
use tokio::time::{timeout, Instant};

const CLUSTER: &str = "main";
const SESSION_TIMEOUT_MS: u32 = 2_000;
/// Bound on every wait for the cluster (failover, record removal, replay).
const DEADLINE: Duration = Duration::from_secs(60);
/// Bound on the bootstrap (initdb, start, two base backups) on a loaded machine; a
/// quiet one takes about ten seconds.
const BOOTSTRAP_DEADLINE: Duration = Duration::from_secs(180);

/// The PostgreSQL tests share a 2-core machine with everything else: one cluster of
/// three at a time.
static SERIAL: Mutex<()> = Mutex::new(());

struct Cluster {
    // Agents first: dropped (killed, their PostgreSQL stopped) before coordd.
    agents: Vec<Agent>,
    coordd: Coordd,
    zk: Client,
    ns: Namespace,
}

impl Cluster {
    async fn start() -> Cluster {
        let _ = switchyard_bin(); // build before the clock starts
        let coordd = Coordd::start();
        let agents = (1..=3)
            .map(|i| {
                Agent::spawn(
                    &coordd.connect_string(),
                    CLUSTER,
                    &format!("n{i}"),
                    SESSION_TIMEOUT_MS,
                )
            })
            .collect();
        let (zk, _events) = Client::connect(ClientConfig::new([coordd.connect_string()]))
            .await
            .expect("test client");
        Cluster {
            agents,
            coordd,
            zk,
            ns: Namespace::with_default_root(CLUSTER).unwrap(),
        }
    }

    fn agent_mut(&mut self, node: &str) -> &mut Agent {
        self.agents.iter_mut().find(|a| a.node == node).unwrap()
    }

    async fn member_names(&self) -> Vec<String> {
        let mut v = self
            .zk
            .get_children(&self.ns.members(), false)
            .await
            .unwrap_or_default();
        v.sort();
        v
    }
}

impl DbCluster for Cluster {
    /// kill -9 of a node's agent and its PostgreSQL.
    fn kill(&mut self, node: &str) {
        let a = self.agent_mut(node);
        a.kill9();
        a.kill9_postgres();
    }

    fn dump(&self) -> String {
        let mut s = String::new();
        for a in &self.agents {
            let log = a.log();
            let lines: Vec<&str> = log.lines().collect();
            s.push_str(&format!(
                "\n===== agent {} log (tail) =====\n{}\n",
                a.node,
                lines[lines.len().saturating_sub(40)..].join("\n")
            ));
        }
        s
    }
}

async fn server_port(c: &PooledClient) -> u16 {
    let row = c
        .query_one("SELECT inet_server_port()", &[])
        .await
        .expect("port");
    u16::try_from(row.get::<_, i32>(0)).unwrap()
}

fn port_of(router: &Router, node: &str) -> u16 {
    let t = router.topology();
    t.leader()
        .map(|l| &l.endpoint)
        .into_iter()
        .chain(t.replicas().iter().map(|r| &r.endpoint))
        .find(|e| e.node == node)
        .unwrap_or_else(|| panic!("{node} not in {t:?}"))
        .port
}

/// Publishes a snapshot in which `replica` is the master (same epoch), as a router
/// whose view is stale would hold it; true if it is the routed master right after.
fn publish_stale(router: &Router, replica: &str, other: &str) -> bool {
    let t = router.topology();
    let epoch = t.epoch().expect("epoch");
    let ep = |node: &str| {
        t.leader()
            .map(|l| &l.endpoint)
            .into_iter()
            .chain(t.replicas().iter().map(|r| &r.endpoint))
            .find(|e| e.node == node)
            .unwrap()
            .clone()
    };
    let (r, o) = (ep(replica), ep(other));
    let stale = Topology::build(
        Some((
            LeaderRecord {
                node: r.node.clone(),
                host: r.host.clone(),
                port: r.port,
                state: LeaderState::Primary,
                since_ms: 0,
            },
            epoch,
        )),
        [MemberRecord {
            node: o.node.clone(),
            host: o.host.clone(),
            port: o.port,
            role: Role::Replica,
            state: MemberState::Running,
            timeline: Some(1),
            receive_lsn: Some(Lsn(0)),
            replay_lsn: Some(Lsn(0)),
            lag_bytes: Some(0),
            updated_ms: 0,
        }],
        u64::MAX,
    );
    router.route_table().publish(stale);
    router
        .route_now(Intent::Write)
        .is_ok_and(|r| r.endpoint().node == replica)
}

/// Reads spread; classification; read-your-writes; stale routes retried on the
/// master; a killed replica stops getting reads once its record is gone.
#[test]
fn router_under_agents_routes_reads_writes_and_survives_a_replica_loss() {
    if postgres::skip() {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut c = Cluster::start().await;
        let coord = c.coordd.connect_string();
        let router =
            start_router_with(&coord, SESSION_TIMEOUT_MS, Balance::RoundRobin, 20_000).await;
        let (master, replicas) = wait_three(&router, BOOTSTRAP_DEADLINE, &|| c.dump()).await;
        let replicas: Vec<String> = replicas.into_keys().collect();
        let master_port = port_of(&router, &master);
        let replica_ports: Vec<u16> = replicas.iter().map(|r| port_of(&router, r)).collect();
        eprintln!("master {master}, replicas {replicas:?}");

        // (a) Reads spread over both replicas, round robin.
        let mut seen = BTreeMap::new();
        for _ in 0..6 {
            let r = router.read().await.expect("read connection");
            assert!(in_recovery(&r).await.unwrap(), "{}", r.endpoint().node);
            assert_eq!(server_port(&r).await, r.endpoint().port);
            *seen.entry(r.endpoint().node.clone()).or_insert(0) += 1;
        }
        assert_eq!(
            seen,
            BTreeMap::from([(replicas[0].clone(), 3), (replicas[1].clone(), 3)]),
            "round robin over both replicas"
        );

        // Least outstanding: while one replica holds a connection, the other gets
        // every read.
        let lo = start_router_with(
            &coord,
            SESSION_TIMEOUT_MS,
            Balance::LeastOutstanding,
            20_000,
        )
        .await;
        wait_topology(&lo, "two readable replicas", DEADLINE, |t| {
            t.readable_endpoints(1 << 30).count() == 2
        })
        .await;
        let busy = lo.read().await.expect("read connection");
        for _ in 0..4 {
            let r = lo.read().await.expect("read connection");
            assert_ne!(r.endpoint().node, busy.endpoint().node, "least outstanding");
            assert!(in_recovery(&r).await.unwrap());
        }
        drop(busy);
        drop(lo);

        // (f) Classification: writes (and locking or sequence-bumping reads) on the
        // master, plain reads on a replica.
        router
            .execute("CREATE TABLE t (id int PRIMARY KEY, note text)", &[])
            .await
            .expect("CREATE TABLE on the master");
        router
            .execute("CREATE SEQUENCE s", &[])
            .await
            .expect("CREATE SEQUENCE on the master");
        let (rec, port) = where_ran(
            &router,
            "INSERT INTO t VALUES (1, 'one') RETURNING pg_is_in_recovery(), inet_server_port()",
        )
        .await;
        assert!(!rec);
        assert_eq!(port, master_port, "INSERT on the master");
        let mut read_ports = BTreeMap::new();
        for _ in 0..4 {
            let (rec, port) =
                where_ran(&router, "SELECT pg_is_in_recovery(), inet_server_port()").await;
            assert!(rec, "SELECT on a replica");
            *read_ports.entry(port).or_insert(0) += 1;
        }
        assert_eq!(
            read_ports.keys().copied().collect::<Vec<_>>(),
            {
                let mut p = replica_ports.clone();
                p.sort();
                p
            },
            "classified reads spread over both replicas"
        );
        for sql in [
            "SELECT pg_is_in_recovery(), inet_server_port() FROM t WHERE id = 1 FOR UPDATE",
            "SELECT pg_is_in_recovery(), inet_server_port(), nextval('s')",
            "WITH d AS (DELETE FROM t WHERE id = -1 RETURNING id) \
             SELECT pg_is_in_recovery(), inet_server_port() FROM (SELECT 1) x",
        ] {
            let (rec, port) = where_ran(&router, sql).await;
            assert!(!rec, "{sql}");
            assert_eq!(port, master_port, "{sql}");
        }
        // A "read" the classifier cannot see through: a function that writes. It
        // fails on the replica with 25006 (nothing ran) and is retried on the master.
        router
            .execute(
                "CREATE FUNCTION bump() RETURNS int LANGUAGE sql VOLATILE AS \
                 $$ INSERT INTO t VALUES (1000, 'bumped') RETURNING id $$",
                &[],
            )
            .await
            .expect("CREATE FUNCTION");
        // The function must have replicated for the replica to get as far as 25006.
        let token = router.write().await.unwrap().causal_token().await.unwrap();
        wait_topology(
            &router,
            "both replicas to replay the function",
            DEADLINE,
            |t| {
                t.replicas()
                    .iter()
                    .filter(|r| r.replay_lsn.is_some_and(|l| l >= token.0))
                    .count()
                    == 2
            },
        )
        .await;
        let before = router.retry_counts();
        let rows = router.query("SELECT bump()", &[]).await.expect("bump()");
        assert_eq!(rows[0].get::<_, i32>(0), 1000);
        assert_eq!(
            router.retry_counts().read_on_master,
            before.read_on_master + 1,
            "the replica refused the write with 25006 and the master ran it"
        );

        // (e) Read-your-writes: every read with a transaction's token sees its write.
        let mut on_replica = 0;
        for id in 10..30 {
            let tx = router.transaction().await.expect("transaction");
            assert_eq!(tx.endpoint().node, master);
            tx.execute("INSERT INTO t VALUES ($1, 'ryw')", &[&id])
                .await
                .unwrap();
            let token = tx.commit_with_token().await.expect("commit");
            let r = router.read_after(&token).await.expect("read_after");
            let n: i64 = r
                .query_one("SELECT count(*) FROM t WHERE id = $1", &[&id])
                .await
                .unwrap()
                .get(0);
            assert_eq!(
                n,
                1,
                "read_after on {} missed write {id}",
                r.endpoint().node
            );
            if r.endpoint().node != master {
                on_replica += 1;
            }
        }
        // Once a replica's record shows the token replayed, read_after uses it.
        let token: CausalToken = {
            let tx = router.transaction().await.unwrap();
            tx.execute("INSERT INTO t VALUES (99, 'ryw')", &[])
                .await
                .unwrap();
            tx.commit_with_token().await.unwrap()
        };
        wait_topology(&router, "a replica to replay the token", DEADLINE, |t| {
            t.replicas()
                .iter()
                .any(|r| r.replay_lsn.is_some_and(|l| l >= token.0))
        })
        .await;
        let r = router.read_after(&token).await.unwrap();
        assert!(in_recovery(&r).await.unwrap(), "{}", r.endpoint().node);
        let n: i64 = r
            .query_one("SELECT count(*) FROM t WHERE id = 99", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(n, 1);
        eprintln!("read_after: {on_replica} of 20 served by a replica right after commit");
        drop(r);

        // (d) A stale route: the router's snapshot names a replica as the master.
        // The write fails there (25006, nothing ran); the router re-reads the
        // topology and retries once on the master. An agent's record update can
        // replace the stale snapshot before the write is routed, so try until one
        // write really went through the stale route (the retry count says so).
        let mut retried = 0;
        for attempt in 0..10 {
            let before = router.retry_counts().write_on_master;
            if !publish_stale(&router, &replicas[0], &replicas[1]) {
                continue;
            }
            let (rec, port) = where_ran(
                &router,
                &format!(
                    "INSERT INTO t VALUES ({}, 'stale') RETURNING pg_is_in_recovery(), \
                     inet_server_port()",
                    200 + attempt
                ),
            )
            .await;
            assert!(!rec);
            assert_eq!(port, master_port, "the write ended on the master");
            if router.retry_counts().write_on_master == before + 1 {
                retried += 1;
                break;
            }
        }
        assert_eq!(retried, 1, "no write went through the stale route");
        assert_eq!(
            router.topology().writable_endpoint().unwrap().node,
            master,
            "the refresh replaced the stale snapshot"
        );
        // The same for a transaction: BEGIN READ WRITE fails on the standby.
        let mut retried = 0;
        for _ in 0..10 {
            let before = router.retry_counts().write_on_master;
            if !publish_stale(&router, &replicas[1], &replicas[0]) {
                continue;
            }
            let tx = router.transaction().await.expect("transaction");
            assert_eq!(tx.endpoint().node, master);
            tx.execute("UPDATE t SET note = 'tx' WHERE id = 1", &[])
                .await
                .unwrap();
            tx.commit().await.unwrap();
            if router.retry_counts().write_on_master == before + 1 {
                retried += 1;
                break;
            }
        }
        assert_eq!(retried, 1, "no transaction went through the stale route");

        // (b) A replica killed: reads keep succeeding (a broken replica connection
        // is retried elsewhere) and, once its member record is gone, it gets none.
        let victim = replicas[0].clone();
        let survivor = replicas[1].clone();
        let survivor_port = port_of(&router, &survivor);
        let retries_before = router.retry_counts().read_elsewhere;
        c.kill(&victim);
        let mut listed_throughout = true;
        for _ in 0..10 {
            let (rec, port) =
                where_ran(&router, "SELECT pg_is_in_recovery(), inet_server_port()").await;
            assert!(rec && port == survivor_port, "read on {port}");
            listed_throughout &= router
                .topology()
                .replicas()
                .iter()
                .any(|r| r.endpoint.node == victim);
        }
        if listed_throughout {
            assert!(
                router.retry_counts().read_elsewhere > retries_before,
                "reads routed to the dead replica were not retried elsewhere"
            );
        }
        let start = Instant::now();
        while c.member_names().await.contains(&victim) {
            assert!(
                start.elapsed() < DEADLINE,
                "{victim}'s member record stays{}",
                c.dump()
            );
            let mut rx = router.subscribe();
            let _ = timeout(Duration::from_millis(200), rx.changed()).await;
        }
        let gone = Instant::now();
        wait_topology(&router, "the dead replica to leave", DEADLINE, |t| {
            t.replicas().iter().all(|r| r.endpoint.node != victim)
        })
        .await;
        eprintln!(
            "{victim} left the router's topology {:?} after its member record was gone \
             ({:?} after kill -9)",
            gone.elapsed(),
            start.elapsed()
        );
        for _ in 0..6 {
            let r = router.read().await.expect("read connection");
            assert_eq!(r.endpoint().node, survivor);
        }
        assert!(router.pooled_endpoints().iter().all(|e| e.node != victim));
        let retries_now = router.retry_counts().read_elsewhere;
        for _ in 0..6 {
            let (rec, port) =
                where_ran(&router, "SELECT pg_is_in_recovery(), inet_server_port()").await;
            assert!(rec && port == survivor_port);
        }
        assert_eq!(router.retry_counts().read_elsewhere, retries_now);
        drop(router);
        drop(c);
    });
}

/// The master killed (kill -9 of its agent and its PostgreSQL): the same router's
/// writes resume on the new master; between the two, at most one write fails (a
/// suspect master is not hammered) and the old master's pool is closed.
#[test]
fn router_under_agents_follows_a_master_failover() {
    if postgres::skip() {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut c = Cluster::start().await;
        let router = start_router(&c.coordd.connect_string(), SESSION_TIMEOUT_MS).await;
        let (old, _) = wait_three(&router, BOOTSTRAP_DEADLINE, &|| c.dump()).await;
        router_follows_a_master_kill(&router, &old, &mut c, DEADLINE).await;
        drop(router);
        drop(c);
    });
}

/// A TCP port that accepts connections, counts them and closes them at once: a
/// "PostgreSQL" every connection to which fails.
struct CountingListener {
    port: u16,
    accepted: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl CountingListener {
    async fn start() -> CountingListener {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let accepted = Arc::new(AtomicUsize::new(0));
        let task = tokio::spawn({
            let accepted = accepted.clone();
            async move {
                while let Ok((sock, _)) = l.accept().await {
                    accepted.fetch_add(1, Ordering::SeqCst);
                    drop(sock);
                }
            }
        });
        CountingListener {
            port,
            accepted,
            task,
        }
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for CountingListener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn leader_rec(node: &str, port: u16) -> Vec<u8> {
    records::encode(&LeaderRecord {
        node: node.into(),
        host: "127.0.0.1".into(),
        port,
        state: LeaderState::Primary,
        since_ms: 0,
    })
}

/// A master whose connections fail is tried once; later writes wait (bounded) for the
/// next leader instead of reconnecting; a new leader is tried at once. No PostgreSQL:
/// the records name listeners that count and drop connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_suspect_master_is_not_hammered() {
    const WRITE_WAIT_MS: u64 = 2_000;
    let coordd = Coordd::start();
    let a = CountingListener::start().await;
    let b = CountingListener::start().await;
    let ns = Namespace::with_default_root(CLUSTER).unwrap();
    let (zk, _events) = Client::connect(ClientConfig::new([coordd.connect_string()]))
        .await
        .expect("test client");
    let open = Acl::open_unsafe();
    zk.ensure_path(&ns.members()).await.unwrap();
    // `a` also has a running replica member record: once it is no longer the leader
    // it stays in the topology as a replica, so only the leader change closes its
    // pool.
    zk.create(
        &ns.member("a"),
        &records::encode(&MemberRecord {
            node: "a".into(),
            host: "127.0.0.1".into(),
            port: a.port,
            role: Role::Replica,
            state: MemberState::Running,
            timeline: Some(1),
            receive_lsn: Some(Lsn(0)),
            replay_lsn: Some(Lsn(0)),
            lag_bytes: Some(0),
            updated_ms: 0,
        }),
        &open,
        CreateMode::Ephemeral,
    )
    .await
    .unwrap();
    zk.create(
        &ns.leader(),
        &leader_rec("a", a.port),
        &open,
        CreateMode::Ephemeral,
    )
    .await
    .unwrap();
    let router = Router::builder()
        .coord(&coordd.connect_string())
        .cluster(CLUSTER)
        .write_wait_ms(WRITE_WAIT_MS)
        .master_suspect_ms(30_000)
        .pg_connect_timeout_ms(1_000)
        .connect()
        .await
        .expect("router");
    assert_eq!(
        router.route_now(Intent::Write).unwrap().endpoint().node,
        "a"
    );

    // The first write connects once, fails, and waits out write_wait_ms for a new
    // leader; it reports the connection error.
    let t0 = Instant::now();
    let e = router.write().await.expect_err("a refuses");
    assert!(e.is_connection_failure(), "{e:?}");
    assert!(e.is_retryable());
    assert!(
        t0.elapsed() >= Duration::from_millis(WRITE_WAIT_MS),
        "{:?}",
        t0.elapsed()
    );
    assert_eq!(a.accepted(), 1);

    // Concurrent writes while `a` is suspect: none connects; each waits and fails typed.
    let writes: Vec<_> = (0..8)
        .map(|_| {
            let r = router.clone();
            tokio::spawn(async move { r.write().await })
        })
        .collect();
    for w in writes {
        let e = w.await.unwrap().expect_err("still suspect");
        assert!(
            matches!(e, Error::MasterSuspect { ref node } if node == "a"),
            "{e:?}"
        );
        assert!(e.is_retryable());
    }
    assert_eq!(a.accepted(), 1, "the suspect master was connected to again");

    // A write waiting on the suspect master goes to a new leader as soon as it is
    // published (long before its deadline), and tries it once.
    let (started_tx, started_rx) = tokio::sync::oneshot::channel();
    let waiting = {
        let r = router.clone();
        tokio::spawn(async move {
            let _ = started_tx.send(());
            r.write().await.expect_err("b refuses too")
        })
    };
    started_rx.await.unwrap();
    let changed = Instant::now();
    zk.delete(&ns.leader(), None).await.unwrap();
    zk.create(
        &ns.leader(),
        &leader_rec("b", b.port),
        &open,
        CreateMode::Ephemeral,
    )
    .await
    .unwrap();
    while b.accepted() == 0 {
        assert!(
            changed.elapsed() < Duration::from_millis(WRITE_WAIT_MS / 2),
            "the waiting write did not try the new leader"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    eprintln!("new leader tried {:?} after the change", changed.elapsed());
    let e = waiting.await.unwrap();
    assert!(
        e.is_connection_failure() || matches!(e, Error::MasterSuspect { .. }),
        "{e:?}"
    );
    assert_eq!(a.accepted(), 1);
    assert_eq!(b.accepted(), 1, "b tried once, then suspect");
    // The old master's pool was closed by the leader change, although `a` is still in
    // the topology (now as a replica).
    assert!(router
        .topology()
        .replicas()
        .iter()
        .any(|r| r.endpoint.node == "a"));
    assert!(
        router.pooled_endpoints().iter().all(|e| e.node != "a"),
        "{:?}",
        router.pooled_endpoints()
    );

    drop(router);
    zk.close().await.unwrap();
}
