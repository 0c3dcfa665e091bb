//! PostgreSQL control against real PostgreSQL (13+; Debian's 15 in CI): the test harness
//! (`support::postgres`) and the agent's `switchyard_proxy::pg` library. Skips with a printed
//! reason when the PostgreSQL binaries are not installed.

mod support;

use support::postgres::{self, PgOptions, Postgres};

/// The harness itself: primary, streaming replica, replication of a row, kill -9 and restart,
/// promotion of the replica.
#[test]
fn harness_primary_replica_promote() {
    if postgres::skip() {
        return;
    }
    let mut primary = Postgres::init_primary(PgOptions::default());
    assert_eq!(primary.query("SELECT pg_is_in_recovery()"), "f");
    primary.query("CREATE TABLE t (id int primary key); INSERT INTO t VALUES (1)");
    let replica = Postgres::replica_of(&primary);
    assert_eq!(replica.query("SELECT pg_is_in_recovery()"), "t");
    // pg_basebackup's own WAL sender can linger for a moment next to the replica's
    // (seen in CI: "streaming\nstartup"), so wait for the replica's alone.
    postgres::wait_for("one streaming replica", postgres::START_TIMEOUT, || {
        (primary
            .query_opt("SELECT string_agg(state, ',') FROM pg_stat_replication")
            .as_deref()
            == Some("streaming"))
        .then_some(())
    });
    primary.query("INSERT INTO t VALUES (2)");
    postgres::wait_for("row 2 on the replica", postgres::START_TIMEOUT, || {
        (replica.query_opt("SELECT count(*) FROM t").as_deref() == Some("2")).then_some(())
    });

    primary.kill9();
    assert!(!primary.is_ready());
    primary.start();
    assert_eq!(primary.query("SELECT count(*) FROM t"), "2");
    replica.wait_streaming();

    primary.stop();
    replica.promote();
    assert_eq!(replica.query("SELECT pg_is_in_recovery()"), "f");
    replica.query("INSERT INTO t VALUES (3)");
    assert!(replica.log().contains("database system is ready"));
    assert!(primary.data_dir().join("PG_VERSION").is_file());
}

use std::time::{Duration, Instant};

use support::postgres::PgDir;
use switchyard_proxy::pg::{self, Conninfo, InitdbOptions, PgBinaries, PgError, PgServer};

/// One node for the library test: its dir (Drop stops whatever runs there and removes it),
/// the library's server handle, and its port.
struct Node {
    server: PgServer,
    port: u16,
    dir: PgDir,
}

impl Node {
    fn new(bins: &PgBinaries) -> Node {
        let dir = PgDir::new();
        let opts = pg::PgOptions {
            log_file: Some(dir.log_path()),
            command_timeout: Duration::from_secs(30),
            copy_timeout: Duration::from_secs(60),
            ..pg::PgOptions::default()
        };
        let server = PgServer::new(bins.clone(), dir.data_dir(), opts).expect("PgServer");
        Node {
            server,
            port: postgres::free_port(),
            dir,
        }
    }

    fn conninfo(&self, app: &str) -> Conninfo {
        Conninfo::new("127.0.0.1", self.port)
            .application_name(app)
            .connect_timeout_s(5)
    }

    async fn start(&self) {
        let socket_dir = self.dir.path().to_string_lossy().into_owned();
        let res = self
            .server
            .start(
                self.port,
                &[
                    ("listen_addresses", "127.0.0.1"),
                    ("unix_socket_directories", &socket_dir),
                ],
            )
            .await;
        if let Err(e) = res {
            panic!("start {}: {e}", self.server.data_dir().display());
        }
    }

    /// initdb with trust authentication and no sync (a test cluster).
    async fn initdb(&self) {
        self.server
            .initdb(&InitdbOptions {
                auth_local: "trust".into(),
                auth_host: "trust".into(),
                no_sync: true,
                ..InitdbOptions::default()
            })
            .await
            .expect("initdb");
    }

    async fn client(&self) -> pg::Client {
        pg::connect(&self.conninfo("test")).await.expect("connect")
    }
}

/// Polls an async condition under a deadline.
async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn count(c: &pg::Client) -> i64 {
    c.query_one("SELECT count(*) FROM t", &[])
        .await
        .expect("count")
        .get(0)
}

async fn streaming_tli(c: &pg::Client) -> Option<i32> {
    let rows = c
        .query(
            "SELECT received_tli FROM pg_stat_wal_receiver WHERE status = 'streaming'",
            &[],
        )
        .await
        .ok()?;
    rows.first().map(|r| r.get(0))
}

/// The agent's PostgreSQL control end to end: initdb + start a primary (A), base-backup a
/// standby (B) that streams and catches up, promote B, fence A (immediate stop) after it took
/// a write B never saw, rewind A from B and start it as B's standby: the fail-safe restart
/// path of issue 3.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_and_rewind_with_pg_library() {
    if postgres::skip() {
        return;
    }
    let t0 = Instant::now();
    let bins = PgBinaries::find(None).expect("binaries");
    assert!(bins.version().major >= 13);

    // A: initdb, start, schema.
    let a = Node::new(&bins);
    a.initdb().await;
    assert!(a.server.is_initialized());
    // pg_rewind reads A's WAL back to the last common checkpoint, and the crash recovery it
    // runs first would otherwise recycle it.
    a.server
        .append_conf(&[("wal_keep_size", "256MB"), ("fsync", "off")])
        .expect("conf");
    assert!(!a.server.is_running().await.expect("status"));
    // initdb refuses to run over an existing cluster.
    assert!(matches!(
        a.server.initdb(&InitdbOptions::default()).await,
        Err(PgError::NotEmpty(_))
    ));
    a.start().await;
    assert!(a.server.is_running().await.expect("status"));
    let ca = a.client().await;
    assert!(!pg::in_recovery(&ca).await.unwrap());
    assert_eq!(pg::timeline(&ca).await.unwrap(), 1);
    assert_eq!(pg::receive_lsn(&ca).await.unwrap(), None);
    ca.batch_execute(
        "CREATE TABLE t (id int primary key, node text); INSERT INTO t VALUES (1, 'a')",
    )
    .await
    .unwrap();
    let sysid = pg::system_identifier(&ca).await.unwrap();
    let cd = a.server.control_data().await.expect("controldata");
    assert_eq!(cd.system_identifier, sysid);
    a.server.check_identity(sysid).await.expect("own cluster");
    match a.server.check_identity(sysid ^ 1).await {
        Err(PgError::ForeignCluster { found, .. }) => assert_eq!(found, sysid),
        other => panic!("expected ForeignCluster, got {other:?}"),
    }

    // B: base backup from A, start as standby, streams and catches up.
    let b = Node::new(&bins);
    b.server
        .basebackup_from(&a.conninfo("node-b"))
        .await
        .expect("basebackup");
    b.start().await;
    let cb = b.client().await;
    assert!(pg::in_recovery(&cb).await.unwrap());
    assert_eq!(pg::system_identifier(&cb).await.unwrap(), sysid);
    b.server.check_identity(sysid).await.expect("same cluster");
    eventually("B streaming", Duration::from_secs(20), || {
        streaming_tli(&cb)
    })
    .await;
    assert_eq!(pg::timeline(&cb).await.unwrap(), 1);

    let lsn1 = pg::current_lsn(&ca).await.unwrap();
    ca.batch_execute("INSERT INTO t SELECT g, 'a' FROM generate_series(2, 1000) g")
        .await
        .unwrap();
    let lsn2 = pg::current_lsn(&ca).await.unwrap();
    assert!(lsn2 > lsn1, "{lsn2:x} > {lsn1:x}");
    eventually(
        "B replays up to A's LSN",
        Duration::from_secs(20),
        || async {
            let recv = pg::receive_lsn(&cb).await.ok()??;
            let replay = pg::replay_lsn(&cb).await.ok()??;
            (recv >= lsn2 && replay >= lsn2).then_some(())
        },
    )
    .await;
    assert_eq!(count(&cb).await, 1000);

    // Promote B; it leaves recovery on timeline 2.
    assert!(pg::promote(&cb, 30).await.expect("promote"));
    assert!(!pg::in_recovery(&cb).await.unwrap());
    assert_eq!(pg::timeline(&cb).await.unwrap(), 2);
    // Replay position stays where recovery ended (documented PostgreSQL behaviour).
    assert!(pg::replay_lsn(&cb).await.unwrap() >= Some(lsn2));
    assert!(pg::current_lsn(&cb).await.unwrap() >= lsn2);
    cb.batch_execute("INSERT INTO t VALUES (2001, 'b')")
        .await
        .unwrap();

    // A, still a primary, takes a write B never sees (the danger case), then is fenced.
    ca.batch_execute("INSERT INTO t VALUES (3001, 'a-lost')")
        .await
        .unwrap();
    drop(ca);
    let fence = Instant::now();
    a.server
        .stop(pg::StopMode::Immediate)
        .await
        .expect("immediate stop");
    let fence_took = fence.elapsed();
    assert!(
        fence_took < Duration::from_secs(3),
        "fencing took {fence_took:?}"
    );
    assert!(!a.server.is_running().await.unwrap());
    // Stopping a stopped server is fine.
    a.server.stop(pg::StopMode::Fast).await.expect("stop again");
    // Still the same cluster on disk, while stopped.
    a.server
        .check_identity(sysid)
        .await
        .expect("identity while stopped");

    // The agent's fail-safe start runs A as a standby until it is rewound; that standby
    // is killed before the rewind (a crash, a fence): unclean, with standby.signal, which
    // pg_rewind's single-user crash recovery refuses ("standby mode is not supported by
    // single-user servers") unless rewind_from takes the signal away first.
    std::fs::write(a.server.data_dir().join("standby.signal"), b"").unwrap();
    a.start().await;
    assert!(pg::in_recovery(&a.client().await).await.unwrap());
    a.server
        .stop(pg::StopMode::Immediate)
        .await
        .expect("immediate stop of the standby");
    let state = a.server.control_data().await.unwrap().cluster_state;
    assert!(
        !pg::CLEAN_SHUTDOWN_STATES.contains(&state.as_str()),
        "an immediate stop leaves {state:?}"
    );

    // Fail-safe restart: rewind A from B, follow B.
    let rewind = a
        .server
        .rewind_from(&b.conninfo("rewind"))
        .await
        .expect("pg_rewind");
    eprintln!("pg_rewind:\n{}", rewind.log);
    assert!(rewind.rewound, "A diverged, so pg_rewind must rewind it");
    a.server
        .set_primary_conninfo(&b.conninfo("node-a"))
        .await
        .expect("primary_conninfo");
    assert!(a.server.data_dir().join("standby.signal").is_file());
    a.start().await;
    let ca = a.client().await;
    assert!(pg::in_recovery(&ca).await.unwrap());
    // The receiver may first stream the rest of timeline 1 up to the fork, then timeline 2.
    let streams = tokio::time::timeout(
        Duration::from_secs(20),
        eventually("A streams timeline 2", Duration::from_secs(30), || async {
            (streaming_tli(&ca).await? == 2).then_some(())
        }),
    )
    .await;
    assert!(
        streams.is_ok(),
        "A does not stream timeline 2 from B; A's log:\n{}",
        a.server.log_tail(40)
    );
    assert_eq!(pg::timeline(&ca).await.unwrap(), 2);
    cb.batch_execute("INSERT INTO t VALUES (2002, 'b')")
        .await
        .unwrap();
    let lsn_b = pg::current_lsn(&cb).await.unwrap();
    eventually("A replays B's LSN", Duration::from_secs(20), || async {
        (pg::replay_lsn(&ca).await.ok()?? >= lsn_b).then_some(())
    })
    .await;
    let lost: i64 = ca
        .query_one("SELECT count(*) FROM t WHERE node = 'a-lost'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(lost, 0, "the write A took after B's promotion must be gone");
    assert_eq!(count(&ca).await, 1002);
    let app: String = cb
        .query_one(
            "SELECT application_name FROM pg_stat_replication WHERE state = 'streaming'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(app, "node-a");

    // Re-pointing a running standby reloads it (primary_conninfo is reloadable).
    a.server
        .set_primary_conninfo(&b.conninfo("node-a2"))
        .await
        .expect("re-point");
    eventually(
        "A reconnects as node-a2",
        Duration::from_secs(20),
        || async {
            let rows = cb
                .query(
                    "SELECT 1 FROM pg_stat_replication WHERE application_name = 'node-a2' \
                 AND state = 'streaming'",
                    &[],
                )
                .await
                .ok()?;
            (!rows.is_empty()).then_some(())
        },
    )
    .await;

    a.server.stop(pg::StopMode::Fast).await.expect("stop A");
    b.server.stop(pg::StopMode::Fast).await.expect("stop B");
    assert!(!b.server.is_running().await.unwrap());
    eprintln!(
        "failover_and_rewind_with_pg_library took {:?}",
        t0.elapsed()
    );
}

/// Fencing a server whose postmaster is stopped (SIGSTOP, a debugger) while its backends
/// still serve: SIGQUIT through `pg_ctl` would wait out `fence_timeout` with the backends
/// committing all along; the stop sees the stopped postmaster and SIGKILLs it and every
/// backend at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fencing_a_server_whose_postmaster_is_stopped_kills_its_backends_at_once() {
    if postgres::skip() {
        return;
    }
    let bins = PgBinaries::find(None).expect("binaries");
    let a = Node::new(&bins);
    a.initdb().await;
    a.start().await;
    let c = a.client().await;
    c.batch_execute("CREATE TABLE t (id int)").await.unwrap();
    let postmaster = a.server.postmaster_pid().expect("postmaster.pid");
    // SAFETY: kill with the postmaster's pid; no memory involved.
    assert_eq!(unsafe { libc::kill(postmaster, libc::SIGSTOP) }, 0);
    // The danger: with the postmaster stopped, its backend still commits.
    c.batch_execute("INSERT INTO t VALUES (1)")
        .await
        .expect("a backend of a stopped postmaster commits");

    let fence = Instant::now();
    a.server
        .stop(pg::StopMode::Immediate)
        .await
        .expect("immediate stop");
    let took = fence.elapsed();
    let fence_timeout = pg::PgOptions::default().fence_timeout;
    assert!(
        took < fence_timeout,
        "fencing waited {took:?}, as long as pg_ctl's timeout ({fence_timeout:?})"
    );
    assert!(
        c.batch_execute("INSERT INTO t VALUES (2)").await.is_err(),
        "the backend still commits after the fence"
    );
    eventually("the postmaster gone", Duration::from_secs(10), || async {
        (!a.server.postmaster_alive()).then_some(())
    })
    .await;
}
