//! The router library against a real coordd and real PostgreSQL (a primary and two
//! streaming replicas, `support::postgres`).
//!
//! The leader and member records are written into coordd by the test itself, through
//! `coordd-client`, in the exact DESIGN.md section 3 format (`records::encode`): the
//! agent binary is being built concurrently, and real agents replace these
//! hand-written records in a later session (issue 4's acceptance runs under agents).
//!
//! Skips with a printed reason when PostgreSQL is not installed. Every wait has a
//! deadline and waits on the router's publish notifications, never on a sleep; every
//! process is stopped by a Drop guard, also on panic.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use coordd_client::{Acl, Client, ClientConfig, CreateMode};
use support::coordd::Coordd;
use support::postgres::{self, PgOptions, Postgres};
use switchyard_proxy::namespace::Namespace;
use switchyard_proxy::records::{
    self, LeaderRecord, LeaderState, Lsn, MemberRecord, MemberState, Role,
};
use switchyard_proxy::router::{Error, Router, WatchMode};
use switchyard_proxy::topology::{Intent, RouteError, Topology};
use tokio::time::{timeout, Instant};

const WAIT: Duration = Duration::from_secs(10);
const WRITE_WAIT_MS: u64 = 2_000;

fn leader(node: &str, port: u16) -> LeaderRecord {
    LeaderRecord {
        node: node.into(),
        host: "127.0.0.1".into(),
        port,
        state: LeaderState::Primary,
        since_ms: 0,
    }
}

fn member(node: &str, port: u16, role: Role) -> MemberRecord {
    MemberRecord {
        node: node.into(),
        host: "127.0.0.1".into(),
        port,
        role,
        state: MemberState::Running,
        timeline: Some(1),
        receive_lsn: Some(Lsn(0)),
        replay_lsn: Some(Lsn(0)),
        lag_bytes: Some(0),
        updated_ms: 0,
    }
}

/// Waits (under [`WAIT`]) until the router's topology satisfies `cond`, woken by its
/// publish notifications.
/// A test client on `coord` that wrote the cluster's records: a member record per
/// `(node, port, role)` and a leader record naming the first one. The records are
/// ephemerals of the returned client's session (its event stream returned with it).
async fn write_records(
    coord: &str,
    members: &[(&str, u16, Role)],
) -> (Client, coordd_client::Events, Namespace) {
    let ns = Namespace::new("/switchyard", "main").unwrap();
    let (zk, events) =
        Client::connect(ClientConfig::new([coord.to_string()]).with_session_timeout_ms(2_000))
            .await
            .expect("test client");
    let open = Acl::open_unsafe();
    zk.ensure_path(&ns.members()).await.unwrap();
    for &(node, port, role) in members {
        let rec = records::encode(&member(node, port, role));
        zk.create(&ns.member(node), &rec, &open, CreateMode::Ephemeral)
            .await
            .unwrap();
    }
    let (node, port, _) = members[0];
    zk.create(
        &ns.leader(),
        &records::encode(&leader(node, port)),
        &open,
        CreateMode::Ephemeral,
    )
    .await
    .unwrap();
    (zk, events, ns)
}

async fn wait_topology(router: &Router, what: &str, cond: impl Fn(&Topology) -> bool) {
    let mut rx = router.subscribe();
    let r = timeout(WAIT, async {
        loop {
            if cond(&router.topology()) {
                return;
            }
            rx.changed().await.expect("router alive");
        }
    })
    .await;
    assert!(
        r.is_ok(),
        "timed out waiting for {what}: {:?}",
        router.topology()
    );
}

/// The port of the server a pooled connection talks to.
async fn server_port(c: &switchyard_proxy::router::PooledClient) -> u16 {
    let row = c
        .query_one("SELECT current_setting('port')::int", &[])
        .await
        .expect("port");
    u16::try_from(row.get::<_, i32>(0)).unwrap()
}

async fn in_recovery(c: &switchyard_proxy::router::PooledClient) -> bool {
    c.query_one("SELECT pg_is_in_recovery()", &[])
        .await
        .expect("pg_is_in_recovery")
        .get(0)
}

async fn start_router(coord: &str, mode: WatchMode) -> Router {
    timeout(
        WAIT,
        Router::builder()
            .coord(coord)
            .cluster("main")
            .root("/switchyard")
            .session_timeout_ms(2_000)
            .write_wait_ms(WRITE_WAIT_MS)
            .pool_max_size(4)
            .pg_connect_timeout_ms(3_000)
            .watch_mode(mode)
            .pg_user(postgres::SUPERUSER)
            .pg_dbname("postgres")
            .connect(),
    )
    .await
    .expect("router connects in time")
    .expect("router connects")
}

/// Writes to the primary; reads round robin over both replicas; a deleted member
/// record stops reads to it (recursive and one-shot watches alike); a deleted leader
/// makes writes wait, then fail typed; a new leader on a promoted replica takes the
/// writes without a new router; a write through a stale route is retried on the
/// master (SQLSTATE 25006).
#[test]
fn router_follows_the_topology() {
    if postgres::skip() {
        return;
    }
    let coordd = Coordd::start();
    let primary = Postgres::init_primary(PgOptions::default());
    primary.query("CREATE TABLE t (id int primary key, note text)");
    let replica1 = Postgres::replica_of(&primary);
    let replica2 = Postgres::replica_of(&primary);
    let ports = [primary.port(), replica1.port(), replica2.port()];

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (zk, _events, ns) = write_records(
            &coordd.connect_string(),
            &[
                ("pg-0", ports[0], Role::Primary),
                ("pg-1", ports[1], Role::Replica),
                ("pg-2", ports[2], Role::Replica),
            ],
        )
        .await;
        let open = Acl::open_unsafe();

        let router = start_router(&coordd.connect_string(), WatchMode::Auto).await;
        let one_shot = start_router(&coordd.connect_string(), WatchMode::OneShot).await;
        assert!(!router.uses_one_shot_watches(), "coordd has addWatch");
        assert!(one_shot.uses_one_shot_watches());
        assert!(router.snapshot_age() < WAIT);

        // Writes go to the primary.
        let n = router
            .execute_write("INSERT INTO t VALUES (1, 'first')", &[])
            .await
            .expect("write");
        assert_eq!(n, 1);
        let w = router.write().await.expect("write connection");
        assert_eq!(w.endpoint().node, "pg-0");
        assert_eq!(server_port(&w).await, ports[0]);
        assert!(!in_recovery(&w).await);
        drop(w);

        // Reads spread over both replicas, round robin, on both routers.
        for r in [&router, &one_shot] {
            let mut seen = BTreeMap::new();
            for _ in 0..6 {
                let c = r.read().await.expect("read connection");
                assert!(in_recovery(&c).await);
                *seen.entry(server_port(&c).await).or_insert(0) += 1;
            }
            assert_eq!(
                seen,
                BTreeMap::from([(ports[1], 3), (ports[2], 3)]),
                "round robin over both replicas"
            );
        }

        // A replica's member record deleted: no more reads to it, its pool closed.
        zk.delete(&ns.member("pg-2"), None).await.unwrap();
        for r in [&router, &one_shot] {
            wait_topology(r, "pg-2 to leave", |t| {
                t.replicas().iter().all(|x| x.endpoint.node != "pg-2")
            })
            .await;
            for _ in 0..4 {
                let c = r.read().await.expect("read connection");
                assert_eq!(c.endpoint().node, "pg-1");
                assert_eq!(server_port(&c).await, ports[1]);
            }
            assert!(r.pooled_endpoints().iter().all(|e| e.node != "pg-2"));
        }

        // The leader record deleted: writes wait write_wait_ms, then fail typed.
        zk.delete(&ns.leader(), None).await.unwrap();
        for r in [&router, &one_shot] {
            wait_topology(r, "the leader to go", |t| t.leader().is_none()).await;
        }
        let t0 = Instant::now();
        let err = router.write().await.expect_err("no primary");
        let waited = t0.elapsed();
        assert!(
            matches!(
                err,
                Error::Route(RouteError::NoPrimary { leader_state: None })
            ),
            "{err:?}"
        );
        assert!(err.is_retryable());
        assert!(
            waited >= Duration::from_millis(WRITE_WAIT_MS)
                && waited < Duration::from_millis(WRITE_WAIT_MS) + Duration::from_secs(2),
            "waited {waited:?}"
        );
        assert!(
            router.route_now(Intent::Write).is_err(),
            "no master without a leader"
        );

        // Failover by hand: promote replica 1, then publish it as the leader while a
        // write is waiting; the same router sends it there.
        tokio::task::block_in_place(|| replica1.promote());
        let waiting = {
            let router = router.clone();
            tokio::spawn(async move {
                router
                    .execute_write("INSERT INTO t VALUES (2, 'after failover')", &[])
                    .await
            })
        };
        zk.delete(&ns.member("pg-0"), None).await.unwrap();
        zk.set_data(
            &ns.member("pg-1"),
            &records::encode(&member("pg-1", ports[1], Role::Primary)),
            None,
        )
        .await
        .unwrap();
        zk.create(
            &ns.leader(),
            &records::encode(&leader("pg-1", ports[1])),
            &open,
            CreateMode::Ephemeral,
        )
        .await
        .unwrap();
        let n = timeout(WAIT, waiting)
            .await
            .expect("the waiting write finishes")
            .unwrap()
            .expect("the waiting write succeeds on the new master");
        assert_eq!(n, 1);
        for r in [&router, &one_shot] {
            wait_topology(r, "pg-1 as master", |t| {
                t.writable_endpoint().is_some_and(|e| e.node == "pg-1")
            })
            .await;
            let w = r.write().await.expect("write connection");
            assert_eq!(server_port(&w).await, ports[1]);
            assert!(!in_recovery(&w).await);
        }
        assert_eq!(
            replica1.query("SELECT note FROM t WHERE id = 2"),
            "after failover"
        );
        // Nothing readable (pg-2's record is gone): reads fall back to the master.
        let c = router.read().await.expect("read falls back");
        assert_eq!(c.endpoint().node, "pg-1");
        drop(c);

        // A stale route: the router's snapshot says pg-2 (a replica, read-only) is the
        // master at the current epoch. The write fails there with 25006, the router
        // re-reads the topology and retries once on pg-1.
        let epoch = router.topology().epoch().expect("epoch");
        let stale = Topology::build(
            Some((leader("pg-2", ports[2]), epoch)),
            [member("pg-1", ports[1], Role::Replica)],
            u64::MAX,
        );
        assert!(router.route_table().publish(stale));
        assert_eq!(router.write().await.unwrap().endpoint().node, "pg-2");
        let n = router
            .execute_write("INSERT INTO t VALUES (3, 'retried')", &[])
            .await
            .expect("retried on the master");
        assert_eq!(n, 1);
        assert_eq!(replica1.query("SELECT note FROM t WHERE id = 3"), "retried");
        assert_eq!(
            router.topology().writable_endpoint().unwrap().node,
            "pg-1",
            "the refresh replaced the stale snapshot"
        );
        assert!(router.snapshot_age() < WAIT);

        drop(one_shot);
        drop(router);
        zk.close().await.unwrap();
    });
    drop(rt);
    drop((replica2, replica1, primary, coordd));
}

/// Changes made while the router is disconnected from coordd are seen once it is back
/// (a full re-read after the reconnect), on both watch modes. Topology only: the
/// records name ports nobody listens on, no PostgreSQL needed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn router_rereads_after_a_reconnect() {
    let coordd = Coordd::start();
    let proxy = support::proxy::Proxy::start(coordd.addr).await;
    let ns = Namespace::new("/switchyard", "main").unwrap();
    let (zk, _events) = Client::connect(
        ClientConfig::new([coordd.connect_string()]).with_session_timeout_ms(2_000),
    )
    .await
    .expect("test client");
    let open = Acl::open_unsafe();
    zk.ensure_path(&ns.members()).await.unwrap();
    for (node, role) in [
        ("n0", Role::Primary),
        ("n1", Role::Replica),
        ("n2", Role::Replica),
    ] {
        let rec = records::encode(&member(node, 1, role));
        zk.create(&ns.member(node), &rec, &open, CreateMode::Ephemeral)
            .await
            .unwrap();
    }
    zk.create(
        &ns.leader(),
        &records::encode(&leader("n0", 1)),
        &open,
        CreateMode::Ephemeral,
    )
    .await
    .unwrap();
    let routers = [
        start_router(&proxy.connect_string(), WatchMode::Auto).await,
        start_router(&proxy.connect_string(), WatchMode::OneShot).await,
    ];
    for r in &routers {
        assert_eq!(r.topology().replicas().len(), 2);
        assert_eq!(r.route_now(Intent::Write).unwrap().endpoint().node, "n0");
    }

    // Away from coordd: the change happens while the routers cannot hear of it.
    proxy.refuse(true);
    proxy.cut();
    zk.delete(&ns.member("n2"), None).await.unwrap();
    zk.delete(&ns.leader(), None).await.unwrap();
    zk.create(
        &ns.leader(),
        &records::encode(&leader("n1", 1)),
        &open,
        CreateMode::Ephemeral,
    )
    .await
    .unwrap();
    for r in &routers {
        assert_eq!(r.topology().replicas().len(), 2, "not seen while away");
    }
    proxy.refuse(false);
    for r in &routers {
        wait_topology(r, "the change made while disconnected", |t| {
            t.writable_endpoint().is_some_and(|e| e.node == "n1")
                && t.replicas().iter().all(|x| x.endpoint.node != "n2")
        })
        .await;
        assert_eq!(r.route_now(Intent::Write).unwrap().endpoint().node, "n1");
        assert!(r.snapshot_age() < WAIT);
    }
    drop(routers);
    zk.close().await.unwrap();
}

/// The router keeps the connection given back last at hand, outside deadpool's idle
/// list; a checkout that found the pool full and waits in deadpool must still get the
/// next connection given back (not wait until `pool_wait_timeout_ms`), whichever of the
/// two comes first. With one connection in the pool, every round hands it from one
/// holder to a waiter.
#[test]
fn a_checkout_waiting_on_a_full_pool_gets_the_connection_given_back() {
    if postgres::skip() {
        return;
    }
    const ROUNDS: usize = 50;
    let coordd = Coordd::start();
    let primary = Postgres::init_primary(PgOptions::default());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (zk, _events, _ns) = write_records(
            &coordd.connect_string(),
            &[("pg-0", primary.port(), Role::Primary)],
        )
        .await;
        // A wait timeout far beyond the test's bound: a waiter left waiting shows as a
        // timeout here, not as a pool error.
        let router = timeout(
            WAIT,
            Router::builder()
                .coord(&coordd.connect_string())
                .cluster("main")
                .root("/switchyard")
                .session_timeout_ms(2_000)
                .pool_max_size(1)
                .pool_wait_timeout_ms(60_000)
                .pg_user(postgres::SUPERUSER)
                .pg_dbname("postgres")
                .connect(),
        )
        .await
        .expect("router connects in time")
        .expect("router connects");

        let mut held = router.write().await.expect("the pool's one connection");
        for round in 0..ROUNDS {
            let waiter = tokio::spawn({
                let router = router.clone();
                async move { router.write().await }
            });
            // Let the waiter reach deadpool's wait in some rounds and not in others.
            for _ in 0..round % 4 {
                tokio::task::yield_now().await;
            }
            drop(held);
            held = timeout(WAIT, waiter)
                .await
                .unwrap_or_else(|_| panic!("round {round}: the waiter never got the connection"))
                .expect("waiter task")
                .expect("a connection");
            let one: i32 = held.query_one("SELECT 1", &[]).await.unwrap().get(0);
            assert_eq!(one, 1);
        }
        drop(held);
        drop(router);
        drop(zk);
    });
}

/// DESIGN.md 5: on a leader change, connections to the old master are closed at once,
/// checked-out ones included. A query in flight on the old master (here a long
/// `pg_sleep`, standing for one sent to a machine that went silent, which TCP would
/// take minutes to give up on) fails as soon as the router sees the new leader, and the
/// next write goes to the new one.
#[test]
fn a_query_in_flight_on_the_old_master_ends_when_the_leader_changes() {
    if postgres::skip() {
        return;
    }
    const SLEEP_S: u64 = 60;
    let coordd = Coordd::start();
    let primary = Postgres::init_primary(PgOptions::default());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (zk, _events, ns) = write_records(
            &coordd.connect_string(),
            &[("pg-0", primary.port(), Role::Primary)],
        )
        .await;
        let router = start_router(&coordd.connect_string(), WatchMode::Auto).await;
        let held = router.write().await.expect("a connection to pg-0");
        assert_eq!(held.endpoint().node, "pg-0");
        let in_flight = tokio::spawn(async move {
            let r = held
                .batch_execute(&format!("SELECT pg_sleep({SLEEP_S})"))
                .await;
            (r, Instant::now())
        });
        // The query is on the server before the leader changes.
        let sleeping = || {
            primary
                .query("SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'SELECT pg_sleep%'")
                == "1"
        };
        postgres::wait_for("the pg_sleep to run", WAIT, || sleeping().then_some(()));

        // A new leader (another node name: another endpoint; the same server, which
        // keeps the test to one PostgreSQL).
        zk.delete(&ns.leader(), None).await.unwrap();
        zk.create(
            &ns.leader(),
            &records::encode(&leader("pg-1", primary.port())),
            &Acl::open_unsafe(),
            CreateMode::Ephemeral,
        )
        .await
        .unwrap();
        wait_topology(&router, "pg-1 to lead", |t| {
            t.leader().is_some_and(|l| l.endpoint.node == "pg-1")
        })
        .await;
        let seen_at = Instant::now();
        let (r, ended_at) = timeout(WAIT, in_flight)
            .await
            .expect("the query on the old master still runs after the leader change")
            .expect("query task");
        let err = r.expect_err("the old master's connection was ended");
        assert!(err.is_closed(), "{err:?}");
        assert!(
            ended_at.saturating_duration_since(seen_at) < Duration::from_secs(5),
            "ended {:?} after the router saw the new leader",
            ended_at.saturating_duration_since(seen_at)
        );
        let w = router.write().await.expect("a connection to pg-1");
        assert_eq!(w.endpoint().node, "pg-1");
        drop(w);
        drop(router);
        drop(zk);
    });
}
