//! The agent end to end (issue 3): real coordd, three real `switchyard agent`
//! processes, real PostgreSQL. Skips with a printed reason when PostgreSQL is missing.

mod support;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::agent::{
    connect, now_ms, runs, switchyard_bin, tail, Agent, Cluster, ClusterOpts, CLUSTER, DEADLINE,
};
use support::postgres;
use switchyard_proxy::pg;
use switchyard_proxy::records::{self, LeaderState};

const SESSION_TIMEOUT_MS: u32 = 2_000;

async fn start(n: usize) -> Cluster {
    Cluster::start_opts(ClusterOpts {
        nodes: n,
        session_timeout_ms: SESSION_TIMEOUT_MS,
        ..ClusterOpts::default()
    })
    .await
}

/// Every agent talks to coordd through its own TCP proxy (to freeze its network).
async fn start_via_proxies(n: usize) -> Cluster {
    Cluster::start_opts(ClusterOpts {
        nodes: n,
        via_proxies: true,
        session_timeout_ms: SESSION_TIMEOUT_MS,
        ..ClusterOpts::default()
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_agents_bootstrap_one_master_two_replicas() {
    if postgres::skip() {
        return;
    }
    let c = start(3).await;
    let master = c.wait_healthy(&["n1", "n2", "n3"], None).await;

    // `initialize` names the master and carries the system identifier.
    let (data, _) = c.client.get_data(&c.ns.initialize(), false).await.unwrap();
    let init: records::InitializeRecord = records::decode(&data).unwrap();
    assert_eq!(init.node, master);
    assert!(init.system_identifier.is_some());

    // The leader znode: world may read, only its creator may write.
    let (acl, _) = c.client.get_acl(&c.ns.leader()).await.unwrap();
    assert!(acl
        .iter()
        .any(|a| a.scheme == "world" && a.perms == coordd_proto::perms::READ));
    let (data, _) = c.client.get_data(&c.ns.leader(), false).await.unwrap();
    let e = c
        .client
        .set_data(&c.ns.leader(), &data, None)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(coordd_client::ErrorCode::NoAuth), "{e}");
    let e = c.client.delete(&c.ns.leader(), None).await.unwrap_err();
    assert_eq!(e.code(), Some(coordd_client::ErrorCode::NoAuth), "{e}");
    // Nor can another authenticated client (an app server, a rogue agent) rewrite the
    // leader or a member record (a router sends reads where member records say).
    let (intruder, _) = coordd_client::Client::connect(
        coordd_client::ClientConfig::new(c.coordd.servers())
            .with_auth("digest", b"intruder:secret"),
    )
    .await
    .unwrap();
    let e = intruder
        .set_data(&c.ns.leader(), &data, None)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(coordd_client::ErrorCode::NoAuth), "{e}");
    let e = intruder.delete(&c.ns.leader(), None).await.unwrap_err();
    assert_eq!(e.code(), Some(coordd_client::ErrorCode::NoAuth), "{e}");
    let member = c.ns.member(&master);
    let (acl, _) = c.client.get_acl(&member).await.unwrap();
    assert!(
        acl.iter()
            .all(|a| a.scheme != "world" || a.perms == coordd_proto::perms::READ),
        "{acl:?}"
    );
    let (mdata, _) = intruder.get_data(&member, false).await.unwrap();
    let e = intruder.set_data(&member, &mdata, None).await.unwrap_err();
    assert_eq!(e.code(), Some(coordd_client::ErrorCode::NoAuth), "{e}");
    intruder.close().await.unwrap();

    // `switchyard status --json` agrees.
    let out = std::process::Command::new(switchyard_bin())
        .args([
            "status",
            "--cluster",
            CLUSTER,
            "--coord",
            &c.coordd.connect_string(),
            "--json",
        ])
        .output()
        .expect("run switchyard status");
    assert!(out.status.success(), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status json");
    assert_eq!(v["master"]["node"], master.as_str());
    assert_eq!(v["master"]["state"], "primary");
    assert_eq!(v["replicas"].as_array().map(Vec::len), Some(2), "{v}");
    assert_eq!(v["members"].as_array().map(Vec::len), Some(3), "{v}");
}

/// Waits until the postmaster `pid` has exited, failing if that takes a session timeout
/// from `since` (by then another node may be elected). Returns how long it took.
async fn stopped_within_the_session(c: &Cluster, pid: u32, since: Instant, what: &str) -> Duration {
    let session = Duration::from_millis(u64::from(SESSION_TIMEOUT_MS));
    while runs(pid) {
        assert!(
            since.elapsed() < session,
            "the master's postmaster {pid} still runs {:?} after {what}\n{}",
            since.elapsed(),
            c.dump()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    since.elapsed()
}

/// kill -9 of the master's agent alone, its PostgreSQL untouched: the agent's fence guard
/// stops that PostgreSQL before the agent's session can expire, so the old master takes no
/// write once another node can be elected; the replica is then promoted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_of_the_master_agent_alone_stops_its_postgres_before_its_session_expires() {
    if postgres::skip() {
        return;
    }
    let mut c = start(2).await;
    let old = c.wait_healthy(&["n1", "n2"], None).await;
    let pid = c
        .agent(&old)
        .postmaster_pid()
        .expect("the master's postmaster.pid");
    assert!(runs(pid));
    let killed = Instant::now();
    c.agent_mut(&old).kill9();
    let fenced = stopped_within_the_session(&c, pid, killed, "its agent died").await;
    assert!(
        c.agent(&old).log().contains("fencing its PostgreSQL"),
        "{}",
        tail(&c.agent(&old).log(), 40)
    );
    // Its work done, the guard is gone too.
    while !c.agent(&old).guard_pids().is_empty() {
        assert!(
            killed.elapsed() < DEADLINE,
            "fence guards still run: {:?}",
            c.agent(&old).guard_pids()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let other = if old == "n1" { "n2" } else { "n1" };
    let new = c.wait_healthy(&[other], Some(&old)).await;
    assert_eq!(new, other);
    eprintln!(
        "agent of {old} killed: its PostgreSQL stopped after {fenced:?}, {new} master after {:?}",
        killed.elapsed()
    );
}

/// kill -9 of the master's agent, restarted at once (a supervisor's restart): its old
/// fence guard fences the old primary, and the new agent touches PostgreSQL only once
/// that guard is gone (the data directory's guard lock). The cluster is whole again (the
/// node a replica, or the master again if it won the next election). Before, the new agent started its standby while the old guard's immediate
/// stop still waited for the pid file; the old guard then SIGKILLed the new standby, and
/// pg_rewind refused the unclean data directory: the node never came back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_of_the_master_agent_and_an_immediate_restart_rejoins_as_replica() {
    if postgres::skip() {
        return;
    }
    let mut c = start(3).await;
    let old = c.wait_healthy(&["n1", "n2", "n3"], None).await;
    let killed = Instant::now();
    c.agent_mut(&old).kill9();
    c.agent_mut(&old).start();
    // Any master: the old node, back as a standby with all the WAL, may well win again.
    let master = c.wait_healthy(&["n1", "n2", "n3"], None).await;
    eprintln!(
        "agent of {old} killed and restarted at once: {master} master, all three healthy after {:?}",
        killed.elapsed()
    );
    let log = c.agent(&old).log();
    assert!(
        !log.contains("pg_rewind --target-pgdata"),
        "a pg_rewind failed:\n{}",
        tail(&log, 60)
    );
    assert!(
        !log.contains("PostgreSQL is not running: starting it as a standby"),
        "the restarted node's server died under it:\n{}",
        tail(&log, 60)
    );
}

/// The master's agent paused (SIGSTOP of its process group: its runtime and lease watchdog
/// stop turning), PostgreSQL running: the fence guard stops PostgreSQL at the agent's own
/// fencing deadline, before the session can expire; the replica is promoted; the agent,
/// resumed, follows it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_master_agent_is_fenced_by_its_guard_before_its_session_expires() {
    if postgres::skip() {
        return;
    }
    let c = start(2).await;
    let old = c.wait_healthy(&["n1", "n2"], None).await;
    let pid = c
        .agent(&old)
        .postmaster_pid()
        .expect("the master's postmaster.pid");
    assert!(
        !c.agent(&old).guard_pids().is_empty(),
        "no fence guard runs"
    );
    let paused = Instant::now();
    c.agent(&old).signal_agent("STOP");
    let fenced = stopped_within_the_session(&c, pid, paused, "its agent was paused").await;
    let other = if old == "n1" { "n2" } else { "n1" };
    let new = c.wait_healthy(&[other], Some(&old)).await;
    assert_eq!(new, other);
    c.agent(&old).signal_agent("CONT");
    let master = c.wait_healthy(&["n1", "n2"], Some(&old)).await;
    assert_eq!(master, other);
    assert!(
        c.agent(&old)
            .log()
            .contains("the agent let its lease run out"),
        "{}",
        tail(&c.agent(&old).log(), 40)
    );
    eprintln!(
        "agent of {old} paused: its PostgreSQL stopped after {fenced:?}; {old} follows {new} after {:?}",
        paused.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_of_the_master_elects_a_new_one_and_the_old_one_rejoins_as_replica() {
    if postgres::skip() {
        return;
    }
    let mut c = start(3).await;
    let old = c.wait_healthy(&["n1", "n2", "n3"], None).await;
    let (_, old_epoch) = c.leader().await.unwrap();
    {
        let m = connect(c.agent(&old).pg_port).await.unwrap();
        m.batch_execute("CREATE TABLE t (id int primary key); INSERT INTO t VALUES (1)")
            .await
            .unwrap();
    }
    let killed = Instant::now();
    let a = c.agents.iter_mut().find(|a| a.node == old).unwrap();
    a.kill9();
    a.kill9_postgres();

    let live: Vec<&str> = ["n1", "n2", "n3"]
        .into_iter()
        .filter(|n| *n != old)
        .collect();
    let new = c.wait_healthy(&live, Some(&old)).await;
    let (_, new_epoch) = c.leader().await.unwrap();
    assert!(
        new_epoch > old_epoch,
        "epoch {new_epoch:#x} <= {old_epoch:#x}"
    );
    let m = connect(c.agent(&new).pg_port).await.unwrap();
    m.batch_execute("INSERT INTO t VALUES (2)").await.unwrap();
    let n: i64 = m
        .query_one("SELECT count(*) FROM t", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 2);
    eprintln!(
        "failover {old} -> {new}: healthy {:?} after kill -9",
        killed.elapsed()
    );

    // The old master's agent comes back: it must not start as a primary; it rewinds
    // from the new master and follows it.
    c.agents.iter_mut().find(|a| a.node == old).unwrap().start();
    let master = c.wait_healthy(&["n1", "n2", "n3"], Some(&old)).await;
    assert_eq!(master, new);
    let back = connect(c.agent(&old).pg_port).await.unwrap();
    let start = Instant::now();
    loop {
        let n: i64 = back
            .query_one("SELECT count(*) FROM t", &[])
            .await
            .unwrap()
            .get(0);
        if n == 2 {
            break;
        }
        assert!(start.elapsed() < DEADLINE, "row 2 never reached {old}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        c.agent(&old).log().contains("pg_rewind"),
        "{}",
        c.agent(&old).log()
    );
}

/// The master's agent is cut off from coordd (its connection frozen, PostgreSQL left
/// running): it fences (immediate stop) before coordd can expire its session, so a
/// writer connected straight to the old master commits nothing after the new leader
/// znode was created; after the thaw the old node rewinds and follows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn master_cut_off_from_coordd_fences_before_a_new_master_is_elected() {
    if postgres::skip() {
        return;
    }
    let c = start_via_proxies(3).await;
    let old = c.wait_healthy(&["n1", "n2", "n3"], None).await;
    let old_port = c.agent(&old).pg_port;
    connect(old_port)
        .await
        .unwrap()
        .batch_execute("CREATE TABLE t (id serial primary key, at_ms bigint)")
        .await
        .unwrap();

    // A writer straight to the old master's port; remembers its last acknowledged commit.
    let last_ok = Arc::new(Mutex::new(0i64));
    let writer = {
        let last_ok = last_ok.clone();
        tokio::spawn(async move {
            loop {
                if let Some(w) = connect(old_port).await {
                    while w
                        .execute("INSERT INTO t (at_ms) VALUES ($1)", &[&now_ms()])
                        .await
                        .is_ok()
                    {
                        *last_ok.lock().unwrap() = now_ms();
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let start = Instant::now();
    while *last_ok.lock().unwrap() == 0 {
        assert!(start.elapsed() < DEADLINE, "the writer never committed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let i = c.agents.iter().position(|a| a.node == old).unwrap();
    c.proxies[i].freeze();
    let live: Vec<&str> = ["n1", "n2", "n3"]
        .into_iter()
        .filter(|n| *n != old)
        .collect();
    let new = c.wait_healthy(&live, Some(&old)).await;
    let (_, stat) = c.client.get_data(&c.ns.leader(), false).await.unwrap();
    writer.abort();
    let last = *last_ok.lock().unwrap();
    assert!(
        last < stat.ctime,
        "the old master {old} acknowledged a commit at {last} ms, after {new} took \
         `leader` at {} ms",
        stat.ctime
    );
    assert!(
        c.agent(&old).log().contains("fencing") || c.agent(&old).log().contains("lease"),
        "{}",
        c.agent(&old).log()
    );

    // Back on the network: the old node's session is gone; it rewinds and follows.
    c.proxies[i].thaw();
    let master = c.wait_healthy(&["n1", "n2", "n3"], Some(&old)).await;
    assert_eq!(master, new);
    for l in c.agent(&old).log().lines() {
        if ["lease", "fenc", "rewind", "session", "leader"]
            .iter()
            .any(|w| l.contains(w))
        {
            eprintln!("{old}: {l}");
        }
    }
    eprintln!(
        "last commit on {old} at {last} ms, {new} took `leader` at {} ms",
        stat.ctime
    );
}

/// Only the master's PostgreSQL dies (kill -9 of the postmaster group); its agent lives
/// on: it gives up `leader` at once (no session timeout to wait for), another node is
/// promoted, and the old node rewinds and follows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn master_postgres_killed_agent_alive_hands_over_and_rejoins() {
    if postgres::skip() {
        return;
    }
    let c = start(3).await;
    let old = c.wait_healthy(&["n1", "n2", "n3"], None).await;
    let killed = Instant::now();
    c.agent(&old).kill9_postgres();
    // The old node may rejoin at once (its agent lives), so wait for all three.
    let new = c.wait_healthy(&["n1", "n2", "n3"], Some(&old)).await;
    eprintln!(
        "{old}'s PostgreSQL killed: {new} master, {old} a replica again after {:?}",
        killed.elapsed()
    );
    assert!(
        c.agent(&old).log().contains("pg_rewind"),
        "{}",
        c.agent(&old).log()
    );
    connect(c.agent(&new).pg_port)
        .await
        .unwrap()
        .batch_execute("CREATE TABLE t2 (id int)")
        .await
        .unwrap();
}

/// The master's PostgreSQL hangs (every one of its processes stopped, as in a storage
/// stall) while its agent runs and keeps its session: the agent's status checks get no
/// answer, so after `primary_unresponsive_ms` it fences the server (immediate stop,
/// then SIGKILL, which a stopped process cannot ignore) and releases `leader`. A replica
/// is promoted, and the old node comes back as a replica. Before, the agent waited on
/// the hung server forever and held `leader`: writes stayed down for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_master_postgres_is_fenced_and_a_replica_takes_over() {
    if postgres::skip() {
        return;
    }
    let c = Cluster::start_opts(ClusterOpts {
        nodes: 3,
        session_timeout_ms: SESSION_TIMEOUT_MS,
        extra_toml: "primary_unresponsive_ms = 1000".into(),
        ..ClusterOpts::default()
    })
    .await;
    let old = c.wait_healthy(&["n1", "n2", "n3"], None).await;
    let hung_at = Instant::now();
    let postmaster = c
        .agent(&old)
        .signal_postgres("STOP")
        .expect("the master's postmaster runs");
    // A new master: the old one's postmaster must be gone by the time `leader` is free.
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Some((l, _)) = c.leader().await {
            if l.node != old {
                assert!(
                    !runs(postmaster),
                    "{} holds `leader` while the hung primary {old} still runs\n{}",
                    l.node,
                    c.dump()
                );
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "nobody replaced the hung master {old} within {DEADLINE:?}\n{}",
            c.dump()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let replaced_in = hung_at.elapsed();
    let new = c.wait_healthy(&["n1", "n2", "n3"], Some(&old)).await;
    eprintln!(
        "{old}'s PostgreSQL hung: `leader` free in {replaced_in:?}, {new} master and {old} a \
         replica again after {:?}",
        hung_at.elapsed()
    );
    let log = c.agent(&old).log();
    assert!(
        log.contains("has not answered a status check"),
        "{}",
        tail(&log, 60)
    );
    connect(c.agent(&new).pg_port)
        .await
        .unwrap()
        .batch_execute("CREATE TABLE after_hang (id int)")
        .await
        .unwrap();
}

/// A data directory initdb'd outside the cluster (another system identifier): the
/// agent refuses it with a clear error and exits without touching it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_refuses_a_data_directory_of_another_cluster() {
    if postgres::skip() {
        return;
    }
    let mut c = start(1).await;
    c.wait_healthy(&["n1"], None).await;

    let dir = postgres::PgDir::new();
    let mut cmd = postgres::pg_command("initdb");
    cmd.arg("-D")
        .arg(dir.data_dir())
        .args(["-U", "postgres", "--auth=trust", "--no-sync"]);
    postgres::run_ok(cmd, postgres::CMD_TIMEOUT);
    let before = std::fs::read(dir.data_dir().join("global/pg_control")).unwrap();
    c.agents.push(Agent::spawn_in(
        dir,
        &c.coordd.connect_string(),
        CLUSTER,
        "foreign",
        SESSION_TIMEOUT_MS,
    ));
    let start = Instant::now();
    let status = loop {
        if let Some(st) = c.agents[1].try_wait() {
            break st;
        }
        assert!(start.elapsed() < DEADLINE, "the agent did not exit");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let log = c.agents[1].log();
    assert!(!status.success(), "{status:?}\n{log}");
    assert!(log.contains("another cluster"), "{log}");
    let after = std::fs::read(c.agents[1].dir.data_dir().join("global/pg_control")).unwrap();
    assert_eq!(before, after, "pg_control changed");
    assert!(!c.agents[1].dir.data_dir().join("postmaster.pid").exists());
    assert!(!c.agents[1].dir.data_dir().join("standby.signal").exists());
    // The cluster is untouched.
    c.wait_healthy(&["n1"], None).await;
}

/// SIGTERM to the master's agent: it stops its PostgreSQL (fast), closes its session
/// (deleting `leader` at once) and exits 0; another node takes over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_of_the_master_agent_hands_over() {
    if postgres::skip() {
        return;
    }
    let mut c = start(3).await;
    let old = c.wait_healthy(&["n1", "n2", "n3"], None).await;
    let stopped = Instant::now();
    let i = c.agents.iter().position(|a| a.node == old).unwrap();
    c.agents[i].terminate();
    let status = loop {
        if let Some(st) = c.agents[i].try_wait() {
            break st;
        }
        assert!(
            stopped.elapsed() < DEADLINE,
            "the agent did not exit:\n{}",
            c.agents[i].log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(status.success(), "{status:?}\n{}", c.agents[i].log());
    assert!(connect(c.agents[i].pg_port).await.is_none());
    let live: Vec<&str> = ["n1", "n2", "n3"]
        .into_iter()
        .filter(|n| *n != old)
        .collect();
    let new = c.wait_healthy(&live, Some(&old)).await;
    eprintln!(
        "SIGTERM to {old}: {new} master after {:?}",
        stopped.elapsed()
    );
}

/// A replica that received WAL the elected master never got (its agent paused until its
/// session expired, so it could not compete) cannot follow the new timeline:
/// PostgreSQL refuses a timeline that forked off before its recovery point. Its agent
/// sees replay stuck on the older timeline, rewinds from the new master and follows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_diverged_replica_rewinds_and_follows() {
    if postgres::skip() {
        return;
    }
    let mut c = start(3).await;
    let all = ["n1", "n2", "n3"];
    let old = c.wait_healthy(&all, None).await;
    let replicas: Vec<&str> = all.into_iter().filter(|n| *n != old).collect();
    let (behind, ahead) = (replicas[0], replicas[1]);
    let m = connect(c.agent(&old).pg_port).await.unwrap();
    m.batch_execute("CREATE TABLE t (id int)").await.unwrap();

    // The master stops sending to `behind` (its WAL sender paused) and commits rows
    // that only `ahead` receives.
    let sender: i32 = m
        .query_one(
            "SELECT pid FROM pg_stat_replication WHERE application_name = $1",
            &[&behind],
        )
        .await
        .unwrap()
        .get(0);
    let ok = std::process::Command::new("kill")
        .args(["-STOP", &sender.to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
    m.batch_execute("INSERT INTO t SELECT generate_series(1, 1000)")
        .await
        .unwrap();
    let lsn = pg::current_lsn(&m).await.unwrap();
    let a = connect(c.agent(ahead).pg_port).await.unwrap();
    let start = Instant::now();
    while pg::receive_lsn(&a).await.unwrap().is_none_or(|r| r < lsn) {
        assert!(
            start.elapsed() < DEADLINE,
            "{ahead} never received the rows"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop((m, a));

    // `ahead` cannot compete (agent paused); the master dies; `behind` is elected.
    c.agent(ahead).signal_agent("STOP");
    {
        let a = c.agent_mut(&old);
        a.kill9();
        a.kill9_postgres();
    }
    let start = Instant::now();
    loop {
        if let Some((l, _)) = c.leader().await {
            if l.node == behind && l.state == LeaderState::Primary {
                break;
            }
        }
        assert!(
            start.elapsed() < DEADLINE,
            "{behind} was not elected\n{}",
            c.dump()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // `ahead` comes back: its PostgreSQL still runs as a standby past the fork point.
    c.agent(ahead).signal_agent("CONT");
    let master = c.wait_healthy(&[behind, ahead], Some(&old)).await;
    assert_eq!(master, behind, "{}", c.dump());
    // Healthy above can be a moment in which `ahead` streams the old timeline's WAL
    // up to the fork (it retries every few seconds): wait until it streams the new
    // timeline.
    let tli = pg::timeline(&connect(c.agent(behind).pg_port).await.unwrap())
        .await
        .unwrap();
    let start = Instant::now();
    loop {
        let follows = match connect(c.agent(ahead).pg_port).await {
            Some(a) => a
                .query(
                    "SELECT 1 FROM pg_stat_wal_receiver \
                     WHERE status = 'streaming' AND received_tli = $1",
                    &[&(tli as i32)],
                )
                .await
                .map(|rows| !rows.is_empty())
                .unwrap_or(false),
            None => false,
        };
        if follows {
            break;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "{ahead} never streamed timeline {tli}\n{}",
            c.dump()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let log = c.agent(ahead).log();
    assert!(
        log.contains("diverged"),
        "{}",
        support::agent::tail(&log, 40)
    );
    assert!(
        log.contains("pg_rewind"),
        "{}",
        support::agent::tail(&log, 40)
    );
}

/// `zk_global_sessions` from coordd's `mntr`.
fn live_sessions(c: &Cluster) -> Option<u64> {
    let mntr = support::coordd::four_letter(c.coordd.standalone().addr, "mntr")?;
    mntr.lines()
        .find_map(|l| l.strip_prefix("zk_global_sessions\t"))
        .and_then(|v| v.trim().parse().ok())
}

/// The bootstrap winner loses its session while initdb runs (its network to coordd
/// cut until the session expired). Its data directory is the cluster's only copy and
/// was never started, so with a new session it resumes the bootstrap instead of
/// waiting as a standby for a master that would never come (in synchronous mode such
/// a standby is no candidate).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bootstrap_winner_that_loses_its_session_during_initdb_resumes() {
    if postgres::skip() {
        return;
    }
    let c = Cluster::start_opts(ClusterOpts {
        nodes: 3,
        via_proxies: true,
        session_timeout_ms: SESSION_TIMEOUT_MS,
        extra_toml: "synchronous = true\n".into(),
        ..ClusterOpts::default()
    })
    .await;
    // Who won `initialize`? Cut it off the moment it did (initdb takes far longer).
    let start = Instant::now();
    let winner = loop {
        if let Ok((data, _)) = c.client.get_data(&c.ns.initialize(), false).await {
            let init: records::InitializeRecord = records::decode(&data).unwrap();
            break init.node;
        }
        assert!(start.elapsed() < DEADLINE, "nobody won `initialize`");
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let i: usize = winner.trim_start_matches('n').parse().unwrap();
    let proxy = &c.proxies[i - 1];
    proxy.refuse(true);
    proxy.cut();
    // Wait until coordd expired the winner's session: once the two others are
    // connected, the live sessions are theirs and the test client's alone.
    let others: Vec<String> = (1..=3)
        .map(|k| format!("n{k}"))
        .filter(|n| *n != winner)
        .collect();
    let start = Instant::now();
    while !(others
        .iter()
        .all(|n| c.agent(n).log().contains("connected to coordd"))
        && live_sessions(&c) == Some(others.len() as u64 + 1))
    {
        assert!(
            start.elapsed() < DEADLINE,
            "the winner's session never expired\n{}",
            c.dump()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        !c.agent(&winner)
            .dir
            .data_dir()
            .join("postmaster.opts")
            .exists(),
        "PostgreSQL started before the cut: the test missed the window"
    );
    proxy.refuse(false);

    let master = c.wait_healthy(&["n1", "n2", "n3"], None).await;
    assert_eq!(master, winner, "the bootstrap winner's data is the cluster");
    let log = c.agent(&winner).log();
    assert!(log.contains("resuming the bootstrap"), "{}", tail(&log, 40));
}

/// The window before initdb: `initialize` names the node (its create committed) but
/// the reply or the session was lost before initdb ran. No identity was recorded, so
/// no `leader` was taken and nobody copied anything: the winner bootstraps from the
/// start instead of stopping for an operator.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bootstrap_winner_whose_initdb_never_ran_bootstraps_from_the_start() {
    if postgres::skip() {
        return;
    }
    let c = Cluster::start_opts(ClusterOpts {
        nodes: 2,
        initialize_won_by: Some("n2"),
        ..ClusterOpts::default()
    })
    .await;
    let master = c.wait_healthy(&["n1", "n2"], None).await;
    assert_eq!(master, "n2", "the node `initialize` names bootstraps");
    let log = c.agent("n2").log();
    assert!(log.contains("resuming the bootstrap"), "{}", tail(&log, 40));
    assert!(
        !c.agent("n1").log().contains("running initdb"),
        "only the winner runs initdb"
    );
}
