//! Planned switchover (issue 3 item 7): `switchyard switchover` against three real
//! agents, real coordd and real PostgreSQL 15, under a writer that follows the master
//! with libpq-style multi-host `target_session_attrs=read-write`. Skips with a printed
//! reason when PostgreSQL is missing.

mod support;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::agent::{
    assert_all_acked_on, connect, now_ms, switchyard_bin, tail, Cluster, ClusterOpts, CLUSTER,
    DEADLINE,
};
use support::postgres;
use switchyard_proxy::pg::tokio_postgres::config::TargetSessionAttrs;
use switchyard_proxy::pg::tokio_postgres::{self, NoTls};
use switchyard_proxy::records::{self, SwitchoverRequest, SwitchoverStatus};

const SESSION_TIMEOUT_MS: u32 = 2_000;
/// Longest acceptable gap between two acknowledged writes across the switchover. The
/// common case is well under a second; this bound leaves room for a loaded test
/// machine while staying far below a failover (session timeout + election).
const WRITE_GAP_MAX_MS: i64 = 1_500;

fn switchover_cmd(c: &Cluster, args: &[&str]) -> std::process::Output {
    switchover_with(&c.coordd.connect_string(), args)
}

fn switchover_with(coord: &str, args: &[&str]) -> std::process::Output {
    std::process::Command::new(switchyard_bin())
        .args([
            "switchover",
            "--cluster",
            CLUSTER,
            "--coord",
            coord,
            "--timeout-ms",
            "30000",
        ])
        .args(args)
        .output()
        .expect("run switchyard switchover")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn planned_switchover_hands_over_quickly_and_loses_nothing() {
    switchover_under_a_writer(false).await;
}

/// The same in synchronous mode: `to` is a synchronous standby, and the new master
/// names its standbys before it takes a write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn planned_switchover_in_synchronous_mode() {
    switchover_under_a_writer(true).await;
}

async fn switchover_under_a_writer(synchronous: bool) {
    if postgres::skip() {
        return;
    }
    let c = Cluster::start_opts(ClusterOpts {
        session_timeout_ms: SESSION_TIMEOUT_MS,
        extra_toml: format!("synchronous = {synchronous}"),
        ..ClusterOpts::default()
    })
    .await;
    let all = ["n1", "n2", "n3"];
    let old = c.wait_healthy(&all, None).await;
    let to = all.iter().copied().find(|n| *n != old).unwrap();
    if synchronous {
        // Both replicas named in `sync` before the switchover starts.
        let start = Instant::now();
        loop {
            let n = match c.client.get_data(&c.ns.sync(), false).await {
                Ok((data, _)) => records::decode::<records::SyncRecord>(&data)
                    .map(|s| s.standbys.len())
                    .unwrap_or(0),
                Err(_) => 0,
            };
            if n == 2 {
                break;
            }
            assert!(
                start.elapsed() < DEADLINE,
                "`sync` never named both replicas"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    // Refusals are clear and change nothing.
    for (args, want) in [
        (vec!["--to", "n9"], "not a live member"),
        (vec!["--to", old.as_str()], "already the master"),
        (vec!["--from", to, "--to", old.as_str()], "the master is"),
    ] {
        let out = switchover_cmd(&c, &args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?}: {out:?}");
        assert!(err.contains(want), "{args:?}: {err}");
    }

    connect(c.agent(&old).pg_port)
        .await
        .unwrap()
        .batch_execute("CREATE TABLE t (id bigserial primary key)")
        .await
        .unwrap();

    // A writer that always finds the writable node among the three.
    let mut cfg = tokio_postgres::Config::new();
    cfg.user("postgres")
        .dbname("postgres")
        .connect_timeout(Duration::from_secs(1))
        .target_session_attrs(TargetSessionAttrs::ReadWrite);
    for a in &c.agents {
        cfg.host("127.0.0.1").port(a.pg_port);
    }
    let acks: Arc<Mutex<Vec<(i64, i64)>>> = Arc::new(Mutex::new(Vec::new()));
    let writer = {
        let acks = acks.clone();
        tokio::spawn(async move {
            loop {
                if let Ok((w, conn)) = cfg.connect(NoTls).await {
                    tokio::spawn(conn);
                    while let Ok(row) = w
                        .query_one("INSERT INTO t DEFAULT VALUES RETURNING id", &[])
                        .await
                    {
                        acks.lock().unwrap().push((row.get(0), now_ms()));
                    }
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    let start = Instant::now();
    while acks.lock().unwrap().len() < 50 {
        assert!(start.elapsed() < DEADLINE, "the writer never committed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let asked_ms = now_ms();
    // Run off the runtime's threads: the writer keeps running meanwhile.
    let out = {
        let coord = c.coordd.connect_string();
        let (old, to) = (old.clone(), to.to_owned());
        tokio::task::spawn_blocking(move || {
            switchover_with(&coord, &["--from", old.as_str(), "--to", to.as_str()])
        })
        .await
        .unwrap()
    };
    let done_ms = now_ms();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "switchover failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        c.dump()
    );
    assert!(stdout.contains(&format!("{old} -> {to} done")), "{stdout}");

    // Writes resume on the new master.
    let start = Instant::now();
    while !acks.lock().unwrap().iter().any(|(_, at)| *at > done_ms) {
        assert!(
            start.elapsed() < DEADLINE,
            "no write acknowledged after the switchover\n{}",
            c.dump()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    writer.abort();
    let acks: Vec<(i64, i64)> = acks.lock().unwrap().clone();
    let mut gap = 0;
    for w in acks.windows(2) {
        if w[1].1 >= asked_ms {
            gap = gap.max(w[1].1 - w[0].1);
        }
    }
    eprintln!(
        "switchover {old} -> {to}: command took {} ms, longest gap between acknowledged \
         writes {gap} ms, {} writes",
        done_ms - asked_ms,
        acks.len()
    );
    assert!(
        gap <= WRITE_GAP_MAX_MS,
        "writes unavailable for {gap} ms (> {WRITE_GAP_MAX_MS} ms)\n{}",
        c.dump()
    );

    // Nothing acknowledged is lost, and the old master follows the new one.
    let master = c.wait_healthy(&all, Some(&old)).await;
    assert_eq!(master, to);
    assert_all_acked_on(
        c.agent(to).pg_port,
        acks.iter().map(|(id, _)| *id),
        &format!("the new master {to}"),
    )
    .await;
    let (data, _) = c.client.get_data(&c.ns.switchover(), false).await.unwrap();
    let rec: SwitchoverRequest = records::decode(&data).unwrap();
    assert_eq!(rec.status, SwitchoverStatus::Done, "{rec:?}");
    let log = c.agent(&old).log();
    assert!(log.contains("switchover"), "{}", tail(&log, 40));
    for node in [old.as_str(), to] {
        for l in c.agent(node).log().lines() {
            if [
                "switchover",
                "vacant",
                "won",
                "promot",
                "primary",
                "holding",
            ]
            .iter()
            .any(|w| l.contains(w))
            {
                eprintln!("{node}: {l}");
            }
        }
    }
}

/// With `coord_auth` set, the cluster's shared znodes are the agents' (and the
/// switchover command's, given the credentials): another client, an app server say,
/// reads them but cannot rewrite the config, `initialize`, add children or delete a
/// member record (issue 7 item 3).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_cluster_credentials_only_agents_and_the_switchover_command_write() {
    if postgres::skip() {
        return;
    }
    const AUTH: &str = "agents:s3cret";
    let c = Cluster::start_opts(ClusterOpts {
        nodes: 2,
        session_timeout_ms: SESSION_TIMEOUT_MS,
        extra_toml: format!("coord_auth = \"{AUTH}\""),
        ..ClusterOpts::default()
    })
    .await;
    let old = c.wait_healthy(&["n1", "n2"], None).await;
    let to = if old == "n1" { "n2" } else { "n1" };

    let (app, _) = coordd_client::Client::connect(
        coordd_client::ClientConfig::new(c.coordd.servers()).with_auth("digest", b"app:pw"),
    )
    .await
    .unwrap();
    let no_auth = |r: Result<(), coordd_client::Error>, what: &str| {
        let e = r.expect_err(what);
        assert_eq!(
            e.code(),
            Some(coordd_client::ErrorCode::NoAuth),
            "{what}: {e}"
        );
    };
    for path in [c.ns.config(), c.ns.initialize()] {
        let (data, _) = app.get_data(&path, false).await.unwrap();
        no_auth(app.set_data(&path, &data, None).await.map(drop), &path);
    }
    no_auth(
        app.create(
            &format!("{}/junk", c.ns.cluster()),
            b"",
            &coordd_client::Acl::open_unsafe(),
            coordd_client::CreateMode::Persistent,
        )
        .await
        .map(drop),
        "create under the cluster node",
    );
    no_auth(
        app.delete(&c.ns.member(to), None).await,
        "delete a member record",
    );
    app.close().await.unwrap();

    // The switchover command needs the credentials too: refused without, done with.
    let out = switchover_cmd(&c, &["--to", to]);
    assert!(!out.status.success(), "switchover without the credentials");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("NoAuth"), "{err}");
    let out = std::process::Command::new(switchyard_bin())
        .args([
            "switchover",
            "--cluster",
            CLUSTER,
            "--coord",
            &c.coordd.connect_string(),
            "--timeout-ms",
            "30000",
            "--to",
            to,
        ])
        .env("SWITCHYARD_COORD_AUTH", AUTH)
        .output()
        .expect("run switchyard switchover");
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        c.dump()
    );
    assert_eq!(c.wait_healthy(&["n1", "n2"], None).await, to);
}
