//! Failover benchmark (issue 3): write unavailability after kill -9 of the master.
//!
//!     cargo bench --bench failover
//!
//! Each run starts a fresh cluster: one coordd and three `switchyard agent` processes
//! (each with its own PostgreSQL 15, `tests/support/agent.rs`), waits until it is
//! healthy (a leader in state `primary`, two streaming replicas), then starts a writer
//! that follows the master through the router (`Router::write()`, one INSERT of a new
//! id per statement, a 25006 retried once after a refresh as `execute_write` does; on
//! any error it waits for the router's next published topology, at most 50 ms, and
//! goes on with the next id). After at least 1 s of acknowledged writes the master's
//! agent and its PostgreSQL are killed together with SIGKILL (agent first, then the
//! postmaster, its process group and each of its children in one `kill`; the kill is
//! done when /proc shows none of them running).
//!
//! Measured per run:
//! - gap: first write acknowledged by another node after the kill minus the last write
//!   acknowledged by the old master (the write unavailability the application sees);
//! - kill -> published: from the kill to the router publishing a writable master on
//!   another node;
//! - loss: acknowledged ids missing on the new master at the end (every acknowledged
//!   write must be there);
//! - acked by old after kill: writes the old master acknowledged after the kill was
//!   done (must be 0: a check of the kill itself).
//!
//! Per session timeout (the agents' `--session-timeout-ms`, also what they ask coordd
//! for; coordd runs with a 100 ms tick and a 60 s maximum session timeout so it grants
//! it unchanged), the median, min and max gap over the runs and the total loss are
//! printed. Target: median gap <= session timeout + 1 s, zero loss (in synchronous
//! mode; with asynchronous replication the last commits may be lost by design).
//!
//! Progress bars (stderr, when it is a terminal): runs done, and the current run's
//! stage. Written to `bench-results/failover/` (see `common/plot.rs`): per run,
//! `failover_timeline_<mode>_<timeout>ms_run<n>.png`, acknowledged writes per 10 ms
//! from 1 s before the kill to the end of the run, by the old and the new master, with
//! the kill, the router publishing the new master and the first write on it marked, and
//! its counts as `.csv`; `summary.tsv`, the summary table (read by `scripts/bench.sh`).
//!
//! Environment:
//!   FAILOVER_BENCH_RUNS         runs per session timeout (default 5)
//!   FAILOVER_BENCH_TIMEOUTS_MS  session timeouts, comma separated (default 2000,6000)
//!   FAILOVER_BENCH_MODES        replication modes, comma separated: `sync` (agents with
//!                               `synchronous = true`, DESIGN.md 4.6: no acknowledged
//!                               commit may be lost) and/or `async` (default sync,async)
//!   FAILOVER_BENCH_ENFORCE=1    exit 1 when a target is missed
//!   BENCH_RESULTS_DIR           where the plots go (default bench-results/ at the root)
//!   SWITCHYARD_BIN, COORDD_BIN, PG_BINDIR   as in the tests

#[path = "../tests/support/mod.rs"]
mod support;

#[path = "common/plot.rs"]
mod plot;
#[path = "common/progress.rs"]
mod progress;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use coordd_client::{Client, ClientConfig};
use indicatif::ProgressBar;
use progress::Progress;
use support::agent::{switchyard_bin, Agent};
use support::coordd::Coordd;
use support::postgres;
use support::postgres::PgDir;
use switchyard_proxy::namespace::Namespace;
use switchyard_proxy::pg::{self, Conninfo};
use switchyard_proxy::records::{self, LeaderRecord, LeaderState};
use switchyard_proxy::router::Router;
use tokio_postgres::error::SqlState;

const CLUSTER: &str = "main";
const NODES: usize = 3;
/// Bootstrap of a fresh cluster (initdb, two base backups) must finish by then.
const HEALTHY_DEADLINE: Duration = Duration::from_secs(90);
/// After the kill, the writer must be acknowledged again by then (on top of the
/// session timeout), else the run fails.
const RECOVERY_EXTRA: Duration = Duration::from_secs(30);
/// One write (checkout + INSERT) not done by then counts as an error.
const OP_TIMEOUT: Duration = Duration::from_secs(5);
/// Acknowledged writes before the kill: at least this long a steady writer.
const STEADY: Duration = Duration::from_secs(1);
/// The timeline plot's bucket.
const BUCKET_MS: f64 = 10.0;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// One cluster: dropped router first (by the caller), then agents (killed, their
/// PostgreSQL stopped), then coordd.
struct Cluster {
    agents: Vec<Agent>,
    client: Client,
    ns: Namespace,
    coordd: Coordd,
}

impl Cluster {
    async fn start(session_timeout_ms: u32, sync: bool) -> Result<Cluster, String> {
        let coordd =
            Coordd::start_with(&["--tick-time-ms", "100", "--max-session-timeout-ms", "60000"]);
        let agents = (1..=NODES)
            .map(|i| {
                Agent::spawn_with(
                    PgDir::new(),
                    &coordd.connect_string(),
                    CLUSTER,
                    &format!("n{i}"),
                    session_timeout_ms,
                    if sync { "synchronous = true" } else { "" },
                )
            })
            .collect();
        let (client, _events) = Client::connect(ClientConfig::new([coordd.connect_string()]))
            .await
            .map_err(|e| format!("coordd client: {e}"))?;
        Ok(Cluster {
            agents,
            client,
            ns: Namespace::with_default_root(CLUSTER).map_err(|e| e.to_string())?,
            coordd,
        })
    }

    fn dump(&self) -> String {
        let mut s = String::new();
        for a in &self.agents {
            s.push_str(&format!(
                "\n===== agent {} log (tail) =====\n{}\n===== {} postgres log (tail) =====\n{}\n",
                a.node,
                tail(&a.log(), 40),
                a.node,
                tail(&a.pg_log(), 15)
            ));
        }
        s.push_str(&format!(
            "\n===== coordd log (tail) =====\n{}\n",
            tail(&self.coordd.log(), 15)
        ));
        s
    }

    async fn leader(&self) -> Option<LeaderRecord> {
        let (data, _) = self.client.get_data(&self.ns.leader(), false).await.ok()?;
        records::decode(&data).ok()
    }

    /// The master's node name once the cluster is healthy: a leader in state primary
    /// whose PostgreSQL is out of recovery, and both other nodes streaming from it.
    async fn wait_healthy(&self) -> Result<String, String> {
        let start = Instant::now();
        loop {
            let why = match self.check_healthy().await {
                Ok(master) => return Ok(master),
                Err(why) => why,
            };
            if start.elapsed() > HEALTHY_DEADLINE {
                return Err(format!(
                    "cluster not healthy after {HEALTHY_DEADLINE:?}: {why}{}",
                    self.dump()
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn check_healthy(&self) -> Result<String, String> {
        let leader = self.leader().await.ok_or("no leader record")?;
        if leader.state != LeaderState::Primary {
            return Err(format!("leader {} is {:?}", leader.node, leader.state));
        }
        let master = pg::connect(&Conninfo::new("127.0.0.1", leader.port).connect_timeout_s(2))
            .await
            .map_err(|e| format!("master unreachable: {e}"))?;
        if pg::in_recovery(&master).await.map_err(|e| e.to_string())? {
            return Err("master in recovery".into());
        }
        // Each other node: in recovery with its WAL receiver streaming (not just a
        // WAL sender on the master: pg_basebackup's own shows as streaming too).
        for a in self.agents.iter().filter(|a| a.node != leader.node) {
            let c = pg::connect(&Conninfo::new("127.0.0.1", a.pg_port).connect_timeout_s(2))
                .await
                .map_err(|e| format!("{} unreachable: {e}", a.node))?;
            if !pg::in_recovery(&c).await.map_err(|e| e.to_string())? {
                return Err(format!("{} is not in recovery", a.node));
            }
            let streaming = c
                .query_opt(
                    "SELECT 1 FROM pg_stat_wal_receiver WHERE status = 'streaming'",
                    &[],
                )
                .await
                .map_err(|e| e.to_string())?
                .is_some();
            if !streaming {
                return Err(format!("{} does not stream yet", a.node));
            }
        }
        Ok(leader.node)
    }
}

/// Fields after the command name of /proc/PID/stat: state, ppid, pgrp, ...
fn proc_stat(pid: u32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit_once(')')?.1;
    Some(rest.split_whitespace().map(str::to_owned).collect())
}

/// Running (not a zombie) according to /proc.
fn alive(pid: u32) -> bool {
    proc_stat(pid).is_some_and(|f| f.first().map(String::as_str) != Some("Z"))
}

/// SIGKILL of a PostgreSQL server all at once: the postmaster (from postmaster.pid),
/// its process group and each of its children (backends, WAL senders), in one `kill`
/// call; then waits (at most 5 s) until none of them runs. The children are named too
/// so that no backend can answer after the postmaster died.
fn kill9_postgres(data_dir: &std::path::Path) -> Result<(), String> {
    let pid: u32 = std::fs::read_to_string(data_dir.join("postmaster.pid"))
        .ok()
        .and_then(|s| s.lines().next().and_then(|l| l.trim().parse().ok()))
        .ok_or_else(|| format!("no postmaster.pid in {}", data_dir.display()))?;
    let own_pgrp = proc_stat(std::process::id()).and_then(|f| f.get(2).cloned());
    let pgrp = proc_stat(pid).and_then(|f| f.get(2).cloned());
    let mut children: Vec<u32> = std::fs::read_dir("/proc")
        .map_err(|e| e.to_string())?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&p| {
            proc_stat(p).is_some_and(|f| f.get(1).map(String::as_str) == Some(&pid.to_string()))
        })
        .collect();
    children.push(pid);
    let mut args = vec!["-KILL".to_owned(), "--".to_owned()];
    if let Some(g) = pgrp.filter(|g| Some(g) != own_pgrp.as_ref() && g != "0" && g != "1") {
        args.push(format!("-{g}"));
    }
    args.extend(children.iter().map(u32::to_string));
    let _ = std::process::Command::new("kill")
        .args(&args)
        .stderr(std::process::Stdio::null())
        .status();
    let deadline = Instant::now() + Duration::from_secs(5);
    while children.iter().any(|&p| alive(p)) {
        if Instant::now() > deadline {
            return Err(format!(
                "PostgreSQL processes {children:?} still alive 5 s after SIGKILL"
            ));
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    Ok(())
}

struct Ack {
    id: i64,
    at: Instant,
    node: String,
}

/// One INSERT on the master through the router; the node that acknowledged it.
async fn write_one(router: &Router, id: i64) -> Result<String, String> {
    for attempt in 0..2 {
        let c = router.write().await.map_err(|e| e.to_string())?;
        let stmt = c
            .prepare_cached("INSERT INTO failover_writes (id) VALUES ($1)")
            .await
            .map_err(|e| e.to_string())?;
        match c.execute(&stmt, &[&id]).await {
            Ok(_) => return Ok(c.endpoint().node.clone()),
            Err(e) if e.code() == Some(&SqlState::READ_ONLY_SQL_TRANSACTION) && attempt == 0 => {
                drop(c);
                router.refresh().await.map_err(|e| e.to_string())?;
            }
            Err(e) => return Err(e.to_string()),
        }
    }
    Err("25006 twice".into())
}

struct Writer {
    stop: Arc<AtomicBool>,
    acks: Arc<Mutex<Vec<Ack>>>,
    errors: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Writer {
    /// Also on an early return: no writer outlives its run.
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.task.abort();
    }
}

/// A task aborted when dropped.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn start_writer(router: Router) -> Writer {
    let stop = Arc::new(AtomicBool::new(false));
    let acks = Arc::new(Mutex::new(Vec::new()));
    let errors = Arc::new(AtomicU64::new(0));
    let task = {
        let (stop, acks, errors) = (stop.clone(), acks.clone(), errors.clone());
        tokio::spawn(async move {
            let mut published = router.subscribe();
            let mut id = 0i64;
            while !stop.load(Ordering::Relaxed) {
                id += 1;
                match tokio::time::timeout(OP_TIMEOUT, write_one(&router, id)).await {
                    Ok(Ok(node)) => acks.lock().unwrap().push(Ack {
                        id,
                        at: Instant::now(),
                        node,
                    }),
                    _ => {
                        errors.fetch_add(1, Ordering::Relaxed);
                        // Follow the master: wait for the next topology, briefly.
                        match tokio::time::timeout(Duration::from_millis(50), published.changed())
                            .await
                        {
                            Ok(Ok(())) | Err(_) => {}
                            Ok(Err(_)) => tokio::time::sleep(Duration::from_millis(50)).await,
                        }
                    }
                }
            }
        })
    };
    Writer {
        stop,
        acks,
        errors,
        task,
    }
}

struct RunResult {
    old: String,
    new: String,
    gap_ms: f64,
    kill_to_published_ms: Option<f64>,
    kill_to_first_ack_ms: f64,
    acked: usize,
    acked_by_old_after_kill: usize,
    lost: usize,
    errors: u64,
    /// Acknowledged writes per BUCKET_MS around the kill, for the plot.
    timeline: plot::Timeline,
}

/// `t` - `origin` in ms, negative when `t` is earlier.
fn ms_since(t: Instant, origin: Instant) -> f64 {
    if t >= origin {
        t.duration_since(origin).as_secs_f64() * 1000.0
    } else {
        -(origin.duration_since(t).as_secs_f64() * 1000.0)
    }
}

/// Acknowledged writes per BUCKET_MS from STEADY before the kill (or the first write)
/// to the last write, by the old master and by the others, with markers.
fn timeline(
    acks: &[Ack],
    old: &str,
    new: &str,
    killed: Instant,
    published: Option<Instant>,
    first_after: Instant,
) -> plot::Timeline {
    let (mut on_old, mut on_new) = (Vec::new(), Vec::new());
    for a in acks {
        let t = ms_since(a.at, killed);
        if a.node == old {
            on_old.push(t);
        } else {
            on_new.push(t);
        }
    }
    let first = acks.first().map_or(0.0, |a| ms_since(a.at, killed));
    let last = acks.last().map_or(0.0, |a| ms_since(a.at, killed));
    let start = (first.max(-(STEADY.as_secs_f64() * 1000.0)) / BUCKET_MS).floor() * BUCKET_MS;
    let end = (last / BUCKET_MS).floor() * BUCKET_MS + BUCKET_MS;
    let mut markers = vec![plot::Marker {
        label: "kill -9 of the master (agent + PostgreSQL), t = 0".into(),
        at_ms: 0.0,
    }];
    if let Some(p) = published {
        let at = ms_since(p, killed);
        markers.push(plot::Marker {
            label: format!("router publishes the new master, t = {at:.0} ms"),
            at_ms: at,
        });
    }
    let at = ms_since(first_after, killed);
    markers.push(plot::Marker {
        label: format!("first write acknowledged by the new master, t = {at:.0} ms"),
        at_ms: at,
    });
    plot::Timeline {
        start_ms: start,
        bucket_ms: BUCKET_MS,
        series: vec![
            plot::TimelineSeries {
                label: format!("acknowledged by the old master {old}"),
                counts: plot::bucket(&on_old, start, end, BUCKET_MS),
            },
            plot::TimelineSeries {
                label: format!("acknowledged by the new master {new}"),
                counts: plot::bucket(&on_new, start, end, BUCKET_MS),
            },
        ],
        markers,
    }
}

async fn one_run(
    session_timeout_ms: u32,
    sync: bool,
    stage: &ProgressBar,
) -> Result<RunResult, String> {
    stage.set_message("starting coordd and 3 agents");
    let mut cluster = Cluster::start(session_timeout_ms, sync).await?;
    stage.set_message("waiting for a healthy cluster (initdb, 2 base backups)");
    let master = cluster.wait_healthy().await?;
    stage.set_message(format!("master {master}: router, table, steady writes"));

    let router = tokio::time::timeout(
        Duration::from_secs(10),
        Router::builder()
            .coord(&cluster.coordd.connect_string())
            .cluster(CLUSTER)
            .session_timeout_ms(2_000)
            .write_wait_ms(60_000)
            .pg_connect_timeout_ms(1_000)
            .pool_max_size(2)
            .pg_user(postgres::SUPERUSER)
            .pg_dbname("postgres")
            .connect(),
    )
    .await
    .map_err(|_| "router did not connect within 10 s".to_owned())?
    .map_err(|e| format!("router: {e}"))?;
    {
        let c = router.write().await.map_err(|e| e.to_string())?;
        c.batch_execute(
            "CREATE TABLE failover_writes (id bigint PRIMARY KEY, at timestamptz DEFAULT now())",
        )
        .await
        .map_err(|e| format!("create table: {e}"))?;
    }

    let mut writer = start_writer(router.clone());
    // Steady state: at least STEADY of acknowledged writes.
    let steady_deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let first = writer.acks.lock().unwrap().first().map(|a| a.at);
        if first.is_some_and(|t| t.elapsed() >= STEADY) {
            break;
        }
        if Instant::now() > steady_deadline {
            writer.stop.store(true, Ordering::Relaxed);
            return Err(format!(
                "the writer got no steady acknowledgements in 10 s ({} errors)",
                writer.errors.load(Ordering::Relaxed)
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Watch for the router publishing a writable master on another node.
    let mut published_at = {
        let router = router.clone();
        let old = master.clone();
        AbortOnDrop(tokio::spawn(async move {
            let mut rx = router.subscribe();
            loop {
                if router
                    .topology()
                    .writable_endpoint()
                    .is_some_and(|e| e.node != old)
                {
                    return Some(Instant::now());
                }
                if rx.changed().await.is_err() {
                    return None;
                }
            }
        }))
    };

    // Kill -9 of the master: agent, then its PostgreSQL (postmaster, its process
    // group and every child), then wait until none of them runs any more.
    let killed = Instant::now();
    {
        let a = cluster
            .agents
            .iter_mut()
            .find(|a| a.node == master)
            .ok_or_else(|| format!("no agent {master}"))?;
        a.kill9();
        kill9_postgres(&a.dir.data_dir())?;
    }
    let killed_done = Instant::now();

    stage.set_message(format!(
        "killed {master}; waiting for a write on a new master (session timeout {session_timeout_ms} ms)"
    ));
    // Wait for the first acknowledgement by another node.
    let deadline = killed + Duration::from_millis(session_timeout_ms.into()) + RECOVERY_EXTRA;
    let first_after = loop {
        let found = writer
            .acks
            .lock()
            .unwrap()
            .iter()
            .rev()
            .take_while(|a| a.at >= killed)
            .filter(|a| a.node != master)
            .map(|a| a.at)
            .min();
        if let Some(t) = found {
            break t;
        }
        if Instant::now() > deadline {
            writer.stop.store(true, Ordering::Relaxed);
            let _ = tokio::time::timeout(Duration::from_secs(10), &mut writer.task).await;
            return Err(format!(
                "no write acknowledged by another node {:?} after the kill; topology {:?}{}",
                killed.elapsed(),
                router.topology(),
                cluster.dump()
            ));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    stage.set_message("writing on the new master, then the loss check");
    // A little more writing on the new master, then stop.
    tokio::time::sleep(Duration::from_millis(300)).await;
    writer.stop.store(true, Ordering::Relaxed);
    tokio::time::timeout(OP_TIMEOUT + Duration::from_secs(5), &mut writer.task)
        .await
        .map_err(|_| "writer did not stop".to_owned())?
        .map_err(|e| format!("writer task: {e}"))?;
    let published = tokio::time::timeout(Duration::from_secs(1), &mut published_at.0)
        .await
        .ok()
        .and_then(|r| r.ok())
        .flatten();

    let acks = std::mem::take(&mut *writer.acks.lock().unwrap());
    let last_before = acks
        .iter()
        .filter(|a| a.node == master)
        .map(|a| a.at)
        .max()
        .ok_or("no write acknowledged by the old master")?;
    let acked_by_old_after_kill = acks
        .iter()
        .filter(|a| a.node == master && a.at > killed_done)
        .count();
    let new = acks
        .iter()
        .rev()
        .find(|a| a.node != master)
        .map(|a| a.node.clone())
        .unwrap_or_default();

    // Every acknowledged id must be on the new master.
    let present: HashSet<i64> = {
        let c = tokio::time::timeout(Duration::from_secs(10), router.write())
            .await
            .map_err(|_| "no master connection for the loss check".to_owned())?
            .map_err(|e| format!("loss check: {e}"))?;
        if c.endpoint().node == master {
            return Err("the router still routes writes to the killed master".into());
        }
        c.query("SELECT id FROM failover_writes", &[])
            .await
            .map_err(|e| format!("loss check: {e}"))?
            .iter()
            .map(|r| r.get::<_, i64>(0))
            .collect()
    };
    let lost = acks.iter().filter(|a| !present.contains(&a.id)).count();
    if lost > 0 {
        let missing: Vec<i64> = acks
            .iter()
            .filter(|a| !present.contains(&a.id))
            .map(|a| a.id)
            .take(20)
            .collect();
        let old_last: Vec<i64> = acks
            .iter()
            .filter(|a| a.node == master)
            .map(|a| a.id)
            .rev()
            .take(3)
            .collect();
        eprintln!(
            "  lost acknowledged ids (first 20): {missing:?}; the old master's last \
             acknowledged ids: {old_last:?}"
        );
    }
    drop(router);
    drop(cluster);
    let timeline = timeline(&acks, &master, &new, killed, published, first_after);
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    Ok(RunResult {
        old: master,
        new,
        gap_ms: ms(first_after.duration_since(last_before)),
        kill_to_published_ms: published.map(|t| ms(t.saturating_duration_since(killed))),
        kill_to_first_ack_ms: ms(first_after.duration_since(killed)),
        acked: acks.len(),
        acked_by_old_after_kill,
        lost,
        errors: writer.errors.load(Ordering::Relaxed),
        timeline,
    })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn main() {
    if postgres::skip() {
        return;
    }
    let runs: usize = env_or("FAILOVER_BENCH_RUNS", 5).max(1);
    let timeouts: Vec<u32> = std::env::var("FAILOVER_BENCH_TIMEOUTS_MS")
        .unwrap_or_else(|_| "2000,6000".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let modes: Vec<String> = std::env::var("FAILOVER_BENCH_MODES")
        .unwrap_or_else(|_| "sync,async".into())
        .split(',')
        .map(|s| s.trim().to_owned())
        .filter(|s| s == "sync" || s == "async")
        .collect();
    let out_dir = match plot::fresh_dir("failover", "failover_timeline_") {
        Ok(d) => d,
        Err(e) => {
            eprintln!("failover: {e}");
            std::process::exit(1);
        }
    };
    let _ = switchyard_bin(); // build (or find) the agent before any clock starts
    eprintln!("load average before: {}", loadavg());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");

    println!(
        "\n### Failover: write unavailability after kill -9 of the master (agent + PostgreSQL)\n"
    );
    println!("| mode | session timeout ms | run | old -> new master | gap ms | kill -> new master published ms | kill -> first ack ms | acked writes | acked by old after kill | lost | write errors |");
    println!("|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|");
    let mut summary = Vec::new();
    let mut failed = false;
    let mut plots = Vec::new();
    let progress = Progress::new();
    let all = progress.bar((modes.len() * timeouts.len() * runs) as u64, "runs");
    let stage = progress.spinner("this run");
    for (mode, &timeout) in modes
        .iter()
        .flat_map(|m| timeouts.iter().map(move |t| (m.as_str(), t)))
    {
        let mut results = Vec::new();
        for run in 1..=runs {
            all.set_message(format!(
                "{mode}, session timeout {timeout} ms, run {run}/{runs}"
            ));
            progress.log(format!(
                "{mode}, session timeout {timeout} ms, run {run}/{runs} (load average {})",
                loadavg()
            ));
            let result = rt.block_on(one_run(timeout, mode == "sync", &stage));
            all.inc(1);
            match result {
                Ok(r) => {
                    let file =
                        out_dir.join(format!("failover_timeline_{mode}_{timeout}ms_run{run}.png"));
                    let title = format!(
                        "Failover ({mode}, session timeout {timeout} ms, run {run}): {} → {}, \
                         write gap {:.0} ms",
                        r.old, r.new, r.gap_ms
                    );
                    let drawn =
                        plot::failover_timeline(&file, &title, &r.timeline).and_then(|()| {
                            plot::write_file(&file.with_extension("csv"), &r.timeline.csv())
                        });
                    match drawn {
                        Ok(()) => plots.push(file),
                        Err(e) => {
                            progress.log(format!("plot failed: {e}"));
                            failed = true;
                        }
                    }
                    progress.suspend(|| println!(
                        "| {mode} | {timeout} | {run} | {} -> {} | {:.0} | {} | {:.0} | {} | {} | {} | {} |",
                        r.old,
                        r.new,
                        r.gap_ms,
                        r.kill_to_published_ms
                            .map_or("-".into(), |v| format!("{v:.0}")),
                        r.kill_to_first_ack_ms,
                        r.acked,
                        r.acked_by_old_after_kill,
                        r.lost,
                        r.errors
                    ));
                    results.push(r);
                }
                Err(e) => {
                    progress.suspend(|| {
                        println!(
                            "| {mode} | {timeout} | {run} | FAILED | - | - | - | - | - | - | - |"
                        )
                    });
                    progress.log(format!("run failed: {e}"));
                    failed = true;
                }
            }
        }
        summary.push((mode, timeout, results));
    }
    stage.finish_and_clear();
    all.finish_with_message("done");
    rt.shutdown_timeout(Duration::from_secs(5));

    println!("\n| mode | session timeout ms | runs ok | gap median ms | gap min / max ms | kill -> published median ms | lost (total) | target: gap <= timeout + 1000 ms, 0 lost in sync mode |");
    println!("|---|---:|---:|---:|---:|---:|---:|---|");
    let mut missed = failed;
    let mut tsv = String::from(
        "mode\ttimeout_ms\truns_ok\truns\tgap_median_ms\tgap_min_ms\tgap_max_ms\tpublished_median_ms\tlost\n",
    );
    for (mode, timeout, rs) in &summary {
        let gaps: Vec<f64> = rs.iter().map(|r| r.gap_ms).collect();
        let gap = median(gaps.clone());
        let min = gaps.iter().copied().fold(f64::INFINITY, f64::min);
        let max = gaps.iter().copied().fold(0.0, f64::max);
        let published = median(rs.iter().filter_map(|r| r.kill_to_published_ms).collect());
        let lost: usize = rs.iter().map(|r| r.lost).sum();
        // Zero loss is the target in synchronous mode; asynchronous replication may
        // lose the last commits (reported, not a target).
        let met = !rs.is_empty()
            && gap <= f64::from(*timeout) + 1000.0
            && (*mode == "async" || lost == 0);
        missed |= !met;
        println!(
            "| {mode} | {timeout} | {}/{runs} | {gap:.0} | {min:.0} / {max:.0} | {published:.0} | {lost} | {} |",
            rs.len(),
            if met { "met" } else { "MISSED" }
        );
        tsv.push_str(&format!(
            "{mode}\t{timeout}\t{}\t{runs}\t{gap:.0}\t{min:.0}\t{max:.0}\t{published:.0}\t{lost}\n",
            rs.len()
        ));
    }
    println!("\nload average at the end: {}", loadavg());
    if let Err(e) = plot::write_file(&out_dir.join("summary.tsv"), &tsv) {
        eprintln!("{e}");
        missed = true;
    }
    for p in &plots {
        println!("plot: {}", p.display());
    }
    if missed && std::env::var("FAILOVER_BENCH_ENFORCE").as_deref() == Ok("1") {
        std::process::exit(1);
    }
}
