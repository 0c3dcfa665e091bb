//! The agent in synchronous mode (issue 3 item 6, DESIGN.md 4.6): real coordd, three
//! real `switchyard agent` processes with `synchronous = true`, real PostgreSQL 15.
//! Skips with a printed reason when PostgreSQL is missing.
//!
//! What is checked is what a client can observe: every commit a writer saw
//! acknowledged is on the master elected after a failure, and a master that was paused
//! (SIGSTOP) while another was promoted takes no write once it runs again.

mod support;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::agent::{
    assert_all_acked_on, connect, now_ms, switchyard_bin, tail, Cluster, ClusterOpts, CLUSTER,
    DEADLINE,
};
use support::postgres;
use switchyard_proxy::{pg, records};

const SESSION_TIMEOUT_MS: u32 = 2_000;

async fn start_sync(n: usize) -> Cluster {
    Cluster::start_opts(ClusterOpts {
        nodes: n,
        session_timeout_ms: SESSION_TIMEOUT_MS,
        extra_toml: "synchronous = true".into(),
        ..ClusterOpts::default()
    })
    .await
}

/// One acknowledged insert: the row's id, when the statement was sent and when its
/// acknowledgement arrived (wall-clock ms).
#[derive(Clone, Copy, Debug)]
struct Ack {
    id: i64,
    sent_ms: i64,
    acked_ms: i64,
}

/// A writer that inserts rows straight into the PostgreSQL on `port`, one statement at
/// a time, reconnecting after errors, and records every acknowledgement.
fn spawn_writer(port: u16, acks: Arc<Mutex<Vec<Ack>>>) -> tokio::task::JoinHandle<()> {
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
                        Ok(row) => acks.lock().unwrap().push(Ack {
                            id: row.get(0),
                            sent_ms,
                            acked_ms: now_ms(),
                        }),
                        Err(_) => break,
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
}

/// Creates table `t` on the master at `port`, starts a writer on it and waits for its
/// first `n` acknowledgements.
async fn start_writing(port: u16, n: usize) -> (Arc<Mutex<Vec<Ack>>>, tokio::task::JoinHandle<()>) {
    connect(port)
        .await
        .unwrap()
        .batch_execute("CREATE TABLE t (id bigserial primary key, sent_ms bigint)")
        .await
        .unwrap();
    let acks = Arc::new(Mutex::new(Vec::new()));
    let writer = spawn_writer(port, acks.clone());
    wait_acks(&acks, n).await;
    (acks, writer)
}

async fn wait_acks(acks: &Arc<Mutex<Vec<Ack>>>, n: usize) {
    let start = Instant::now();
    while acks.lock().unwrap().len() < n {
        assert!(
            start.elapsed() < DEADLINE,
            "the writer never committed {n} rows"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn others(all: &[&'static str], not: &str) -> Vec<&'static str> {
    all.iter().copied().filter(|n| *n != not).collect()
}

const ALL: [&str; 3] = ["n1", "n2", "n3"];

/// kill -9 of the master's agent and PostgreSQL together while a writer commits
/// continuously: the new master has every row the writer saw acknowledged; the old
/// node, restarted, rewinds and rejoins as a replica and a synchronous standby.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_mode_kill9_of_the_master_loses_no_acknowledged_commit() {
    if postgres::skip() {
        return;
    }
    let mut c = start_sync(3).await;
    let old = c.wait_healthy(&ALL, None).await;
    c.wait_sync(&old, &others(&ALL, &old)).await;

    // `switchyard status` shows the mode and the synchronous standbys; an unknown
    // cluster is a clear error.
    let status = |args: &[&str]| {
        std::process::Command::new(switchyard_bin())
            .args(["status", "--coord", &c.coordd.connect_string()])
            .args(args)
            .output()
            .expect("run switchyard status")
    };
    let out = status(&["--cluster", CLUSTER, "--json"]);
    assert!(out.status.success(), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status json");
    assert_eq!(v["synchronous"], true, "{v}");
    let mut standbys: Vec<String> = serde_json::from_value(v["sync_standbys"].clone()).unwrap();
    standbys.sort();
    assert_eq!(standbys, others(&ALL, &old), "{v}");
    let out = status(&["--cluster", CLUSTER]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains("mode    synchronous, standbys: "), "{table}");
    let out = status(&["--cluster", "nosuch"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no cluster \"nosuch\""),
        "{out:?}"
    );
    let old_port = c.agent(&old).pg_port;
    let (acks, writer) = start_writing(old_port, 50).await;

    let killed = Instant::now();
    {
        let a = c.agent_mut(&old);
        a.kill9();
        a.kill9_postgres();
    }
    let live = others(&ALL, &old);
    let new = c.wait_healthy(&live, Some(&old)).await;
    writer.abort();
    let acks: Vec<Ack> = acks.lock().unwrap().clone();
    eprintln!(
        "failover {old} -> {new} after {:?}; {} acknowledged rows",
        killed.elapsed(),
        acks.len()
    );
    assert_all_acked_on(c.agent(&new).pg_port, acks.iter().map(|a| a.id), &new).await;

    // The new master takes writes: its remaining replica is its synchronous standby.
    let other = others(&live, &new);
    connect(c.agent(&new).pg_port)
        .await
        .unwrap()
        .batch_execute("INSERT INTO t (sent_ms) VALUES (0)")
        .await
        .unwrap();

    // The old node comes back: rewinds, follows, and becomes synchronous again.
    c.agent_mut(&old).start();
    let master = c.wait_healthy(&ALL, Some(&old)).await;
    assert_eq!(master, new);
    let mut standbys = other.clone();
    standbys.push(&old);
    c.wait_sync(&new, &standbys).await;
    let log = c.agent(&old).log();
    assert!(log.contains("pg_rewind"), "{}", tail(&log, 40));
    assert_all_acked_on(c.agent(&old).pg_port, acks.iter().map(|a| a.id), &old).await;
}

/// The master crashes, agent and PostgreSQL (kill -9 of both), while it holds WAL its
/// standbys never received (its WAL senders were stopped, so those commits wait,
/// unacknowledged), and its agent is restarted at once, within its session: it runs
/// PostgreSQL as a standby until the old session expires and publishes its position.
/// The old master is then ahead of both synchronous standbys, which therefore may not
/// win; and it was not in `sync` itself, so before, nobody could win, for good. Now
/// `sync`'s leader (the last master) races too: a master is elected, every acknowledged
/// commit is on it, and the cluster is whole again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_mode_master_crash_and_quick_agent_restart_still_elects_a_master() {
    if postgres::skip() {
        return;
    }
    let mut c = start_sync(3).await;
    let old = c.wait_healthy(&ALL, None).await;
    let standbys = others(&ALL, &old);
    c.wait_sync(&old, &standbys).await;
    let old_port = c.agent(&old).pg_port;
    let (acks, writer) = start_writing(old_port, 20).await;

    // The master's WAL senders stop: what it writes from now on stays on it (its
    // commits wait for a standby).
    assert!(
        c.agent(&old).signal_postgres_processes("walsender", "STOP"),
        "{old} has WAL senders"
    );
    let lsn_of = |port: u16, sql: &'static str| async move {
        let c = connect(port).await?;
        let row = c.query_one(sql, &[]).await.ok()?;
        pg::parse_lsn(&row.get::<_, Option<String>>(0)?).ok()
    };
    let mut received = Vec::new();
    for n in &standbys {
        let port = c.agent(n).pg_port;
        received.push(
            lsn_of(port, "SELECT pg_last_wal_receive_lsn()::text")
                .await
                .expect("standby position"),
        );
    }
    let ahead_deadline = Instant::now() + DEADLINE;
    loop {
        let written = lsn_of(old_port, "SELECT pg_current_wal_flush_lsn()::text").await;
        if written.is_some_and(|w| received.iter().all(|r| w > *r)) {
            break;
        }
        assert!(
            Instant::now() < ahead_deadline,
            "the master's WAL never passed its standbys'"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // The crash, and the agent back at once.
    let crashed = Instant::now();
    {
        let a = c.agent_mut(&old);
        a.kill9();
        a.kill9_postgres();
        a.start();
    }
    let master = c.wait_healthy(&ALL, None).await;
    writer.abort();
    let acks: Vec<Ack> = acks.lock().unwrap().clone();
    eprintln!(
        "{old} crashed and its agent restarted: {master} master, all healthy after {:?}; \
         {} rows acknowledged",
        crashed.elapsed(),
        acks.len()
    );
    assert_all_acked_on(c.agent(&master).pg_port, acks.iter().map(|a| a.id), &master).await;
    connect(c.agent(&master).pg_port)
        .await
        .unwrap()
        .batch_execute("INSERT INTO t (sent_ms) VALUES (0)")
        .await
        .unwrap();
}

/// SIGSTOP of the master's agent and its whole PostgreSQL for twice the session
/// timeout: another node is promoted meanwhile. PostgreSQL is then resumed alone (its
/// agent still paused, the longest window a resumed old master can run unsupervised):
/// no commit sent to it after the pause is acknowledged, because its standbys detached
/// when its `leader` vanished and commits wait for one of them. Then the agent resumes,
/// fences, rewinds and follows the new master.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_mode_paused_master_takes_no_write_after_the_promotion() {
    if postgres::skip() {
        return;
    }
    let c = start_sync(3).await;
    let old = c.wait_healthy(&ALL, None).await;
    c.wait_sync(&old, &others(&ALL, &old)).await;
    let old_port = c.agent(&old).pg_port;
    let (acks, writer) = start_writing(old_port, 50).await;

    // Freeze: PostgreSQL's process group (postmaster, backends, WAL senders, ...) and
    // the agent's.
    let agent = c.agent(&old);
    agent
        .signal_postgres("STOP")
        .expect("SIGSTOP the old master's PostgreSQL");
    agent.signal_agent("STOP");
    // The whole machine: the agent's fence guard (its own process group) too, which
    // would otherwise stop the paused PostgreSQL at the agent's fencing deadline.
    agent.signal_guard("STOP");
    let frozen_ms = now_ms();
    let frozen = Instant::now();

    let live = others(&ALL, &old);
    let new = c.wait_healthy(&live, Some(&old)).await;
    let (_, stat) = c.client.get_data(&c.ns.leader(), false).await.unwrap();
    let elected_ms = stat.ctime;
    let pause = Duration::from_millis(2 * u64::from(SESSION_TIMEOUT_MS));
    if let Some(left) = pause.checked_sub(frozen.elapsed()) {
        // The scenario's pause length, not a settling delay.
        tokio::time::sleep(left).await;
    }

    // PostgreSQL runs again, its agent does not (yet).
    agent.signal_postgres("CONT");
    let old_c = connect(old_port)
        .await
        .expect("connect to the resumed old master");
    // The writer's statement reaches its commit and waits for a synchronous standby.
    let start = Instant::now();
    loop {
        let waiting: i64 = old_c
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'SyncRep'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if waiting > 0 {
            break;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "no commit waits for a synchronous standby on the resumed {old}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Nobody acknowledges it: no standby streams from the old master any more.
    let start = Instant::now();
    loop {
        let senders: i64 = old_c
            .query_one(
                "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if senders == 0 {
            break;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "standbys still stream from the resumed {old}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The old master's data: no row sent after the freeze is visible (committed).
    let visible: i64 = old_c
        .query_one("SELECT count(*) FROM t WHERE sent_ms >= $1", &[&frozen_ms])
        .await
        .unwrap()
        .get(0);
    if visible != 0 {
        let rows = connect(old_port)
            .await
            .unwrap()
            .query(
                "SELECT id, sent_ms FROM t WHERE sent_ms >= $1 ORDER BY id LIMIT 5",
                &[&frozen_ms],
            )
            .await
            .unwrap();
        let first: Vec<(i64, i64)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
        panic!(
            "the resumed {old} committed {visible} rows sent after the freeze at \
             {frozen_ms} ms (first: {first:?}; new leader at {elected_ms} ms)\n{}",
            c.dump()
        );
    }
    drop(old_c);

    // The agent resumes: its lease is long gone; it fences, rewinds and follows.
    agent.signal_guard("CONT");
    agent.signal_agent("CONT");
    let master = c.wait_healthy(&ALL, Some(&old)).await;
    assert_eq!(master, new);
    writer.abort();
    let acks: Vec<Ack> = acks.lock().unwrap().clone();
    let late: Vec<&Ack> = acks.iter().filter(|a| a.sent_ms >= frozen_ms).collect();
    assert!(
        late.is_empty(),
        "the old master {old} acknowledged statements sent after the freeze at {frozen_ms} \
         ms (new leader at {elected_ms} ms): {late:?}"
    );
    // A statement sent before the freeze may be acknowledged after it: its standby's
    // reply was already in the paused master's socket. Such a row was on a synchronous
    // standby before the freeze, so it is on the new master too.
    let after_election = acks.iter().filter(|a| a.acked_ms >= elected_ms).count();
    eprintln!(
        "{old} paused at {frozen_ms} ms, {new} took `leader` at {elected_ms} ms; \
         {} rows acknowledged, {after_election} of them (sent before the pause) \
         acknowledged after the election",
        acks.len()
    );
    assert_all_acked_on(c.agent(&new).pg_port, acks.iter().map(|a| a.id), &new).await;
    let log = c.agent(&old).log();
    assert!(
        log.contains("fenc") || log.contains("lease"),
        "{}",
        tail(&log, 40)
    );
    assert!(log.contains("pg_rewind"), "{}", tail(&log, 40));
}

/// `config.synchronous` turned on while the cluster runs: the master names its
/// streaming standbys and publishes them, and writes keep working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn synchronous_mode_turned_on_at_run_time() {
    if postgres::skip() {
        return;
    }
    let c = Cluster::start_opts(ClusterOpts {
        session_timeout_ms: SESSION_TIMEOUT_MS,
        ..ClusterOpts::default()
    })
    .await;
    let master = c.wait_healthy(&ALL, None).await;
    let (data, _) = c.client.get_data(&c.ns.config(), false).await.unwrap();
    let mut cfg: records::ClusterConfig = records::decode(&data).unwrap();
    assert!(!cfg.synchronous);
    cfg.synchronous = true;
    c.client
        .set_data(&c.ns.config(), &records::encode(&cfg), None)
        .await
        .unwrap();
    c.wait_sync(&master, &others(&ALL, &master)).await;
    connect(c.agent(&master).pg_port)
        .await
        .unwrap()
        .batch_execute("CREATE TABLE t (id int); INSERT INTO t VALUES (1)")
        .await
        .unwrap();
}
