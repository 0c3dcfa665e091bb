//! End-to-end routing benchmark (issue 4, benchmark (b)): the same query loops against
//! one PostgreSQL 15 primary through four paths, in one run:
//!
//!   direct     tokio-postgres connections straight to the server (the baseline)
//!   router     switchyard's `Router` (real coordd, leader and member records written
//!              in the DESIGN.md format as `tests/router_topology.rs` does), one pooled
//!              connection checked out per select / per transaction
//!   haproxy    HAProxy (Debian's package) in TCP mode on 127.0.0.1
//!   pgbouncer  PgBouncer (Debian's package) in transaction mode on 127.0.0.1, run as
//!              the `postgres` user (it refuses root)
//!
//!     cargo bench --bench routing_e2e
//!
//! Workloads, as pgbench's built-in scripts with the simple query protocol (pgbench's
//! default `-M simple`; the same protocol on every path, and one PgBouncer's
//! transaction mode supports without prepared-statement tricks):
//!   select     `SELECT abalance FROM pgbench_accounts WHERE aid = <random>`
//!   tpcb       BEGIN; UPDATE accounts; SELECT abalance; UPDATE tellers; UPDATE
//!              branches; INSERT INTO history; END  (pgbench's "TPC-B (sort of)")
//! at 1 and 8 clients, each client one query (or transaction) in flight. Tables as
//! `pgbench -i` makes them at scale ROUTING_BENCH_SCALE (100 000 accounts each).
//! PostgreSQL runs with fsync off by default (synchronous_commit on): the server is the
//! same on every path, and a commit that waits for this machine's disk (1-4 ms, with
//! +-30% noise from other processes' I/O) would hide a per-hop cost of a few
//! microseconds; `ROUTING_BENCH_FSYNC=on` measures with fsync.
//!
//! Rounds are interleaved: each round runs every (workload, clients) cell through every
//! path back to back, the path order rotated by one each round, so drift of the machine
//! hits all paths alike. Printed per cell and path: the medians over rounds of p50 and
//! p99 latency and throughput, and the median over rounds of each path's ratio to the
//! direct path of the same round. Then the same again *paired*: each client does one op
//! through each path per cycle, in a random order drawn anew each cycle, so that every
//! path's queries meet the machine at the same moments and no path always follows the
//! same other one; its table has latency only (the paths share the time) and its ratios
//! have the least noise (a path a round apart can meet another machine). Every round
//! opens new connections on every path (a new router too) and warms them up: at one
//! client a path's figures rest on one PostgreSQL backend, and which backend a path got
//! would otherwise stay with it for the whole run (measured: a second set of direct
//! connections at 1.04x of the first, paired, with connections kept for the run; 1.00x
//! with connections drawn anew per round). Target, judged on the paired table: router
//! p50 <= 1.03x direct and below every proxy path. A path whose binary is missing is
//! skipped with a message.
//!
//! Progress bars (stderr, when it is a terminal): all phases, and one bar per path with
//! its last phase's p50 / p99. Written to `bench-results/routing_e2e/` (see
//! `common/plot.rs`): per cell, `latency_cdf_<workload>_<n>c.png`, the latency CDF of
//! every path over all rounds (each query one sample), and its points as `.csv`;
//! `ratios.tsv` and `ratios_paired.tsv`, the tables' figures (read by `scripts/bench.sh`).
//!
//! Environment:
//!   ROUTING_BENCH_ROUNDS    interleaved rounds (default 40)
//!   ROUTING_BENCH_SECS      seconds per measured phase (default 0.2: many short rounds
//!                           pair the paths more tightly in time than few long ones;
//!                           measured, the harness noise (direct-again) fell from
//!                           about +-10% at 7 x 2 s to about +-4% at 40 x 0.2 s)
//!   ROUTING_BENCH_CLIENTS   client counts, comma separated (default 1,8)
//!   ROUTING_BENCH_PATHS     paths, comma separated (default direct,router,haproxy,pgbouncer;
//!                           `direct-again`, a second direct path, checks the harness:
//!                           its ratio to direct is the run's noise; `router-held`, one
//!                           connection per client checked out of a router once and
//!                           kept: the router's connections without the per-query
//!                           checkout, which tells the two costs apart)
//!   ROUTING_BENCH_RECONNECT 1 (default): new connections on every path each round; 0:
//!                           the same connections for the whole run
//!   ROUTING_BENCH_SCALE     pgbench scale factor (default 8: 8 branches, 800 000 accounts)
//!   ROUTING_BENCH_FSYNC     `off` (default) or `on`
//!   ROUTING_BENCH_ROUTER_POOL  the router's pool_max_size, filled before the first
//!                           phase (default: the largest client count)
//!   ROUTING_BENCH_WORKLOADS workloads, comma separated (default select,tpcb)
//!   ROUTING_BENCH_PAIRED    1 (default): after each cell's phases, a paired phase as
//!                           long as all of them, in which every client alternates
//!                           between the paths op by op; its table (latency only) is the
//!                           one the targets are judged on. 0: phases only
//!   ROUTING_BENCH_ENFORCE=1 exit 1 when the router misses a target
//!   BENCH_RESULTS_DIR       where the plots go (default bench-results/ at the root)
//!   HAPROXY_BIN, PGBOUNCER_BIN  binaries (default: PATH, then /usr/sbin)
//!   COORDD_BIN, PG_BINDIR   as in the tests

#[path = "../tests/support/mod.rs"]
mod support;

#[path = "common/plot.rs"]
mod plot;
#[path = "common/progress.rs"]
mod progress;

use std::fs;
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use coordd_client::{Acl, Client, ClientConfig, CreateMode};
use hdrhistogram::Histogram;
use progress::Progress;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use support::coordd::Coordd;
use support::postgres::{self, PgOptions, Postgres};
use switchyard_proxy::namespace::Namespace;
use switchyard_proxy::records::{
    self, LeaderRecord, LeaderState, Lsn, MemberRecord, MemberState, Role,
};
use switchyard_proxy::router::Router;
use tokio_postgres::NoTls;

const CLUSTER: &str = "bench";
/// A query (or transaction) not done by then counts as an error.
const OP_TIMEOUT: Duration = Duration::from_secs(5);
const WARMUP: Duration = Duration::from_millis(500);
/// Warm-up of every path's new connections at the start of a round (per workload).
const ROUND_WARMUP: Duration = Duration::from_millis(30);
const ACCOUNTS_PER_SCALE: i64 = 100_000;
const TELLERS_PER_SCALE: i64 = 10;
/// Router target: p50 at most this times direct's.
const ROUTER_TARGET: f64 = 1.03;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

fn env_list(name: &str, default: &str) -> Vec<String> {
    std::env::var(name)
        .unwrap_or_else(|_| default.to_owned())
        .split(',')
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect()
}

fn loadavg() -> String {
    fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

// ---------------------------------------------------------------------------
// Processes
// ---------------------------------------------------------------------------

/// A child process killed (SIGKILL) and reaped on drop, with its scratch dir.
struct Proc {
    name: &'static str,
    child: Child,
    // Removed after the process is killed (fields drop after `drop`).
    _dir: tempfile::TempDir,
    log: PathBuf,
}

impl Proc {
    fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until `port` accepts TCP connections; fails if the process exits first.
    fn wait_listening(&mut self, port: u16, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(st)) = self.child.try_wait() {
                return Err(format!(
                    "{} exited during start-up ({st}); log:\n{}",
                    self.name,
                    self.log()
                ));
            }
            let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "{} not listening on {port} after {timeout:?}; log:\n{}",
                    self.name,
                    self.log()
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `env` if set, else `name` on PATH, else /usr/sbin/`name`.
fn find_binary(env: &str, name: &str) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(env) {
        let p = PathBuf::from(p);
        return p.is_file().then_some(p);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

fn scratch(prefix: &str) -> Result<tempfile::TempDir, String> {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .map_err(|e| format!("temp dir: {e}"))
}

fn start_haproxy(bin: &Path, pg_port: u16) -> Result<(Proc, u16), String> {
    let dir = scratch("bench-haproxy-")?;
    let port = postgres::free_port();
    let cfg = dir.path().join("haproxy.cfg");
    fs::write(
        &cfg,
        format!(
            "global\n    maxconn 1000\n\ndefaults\n    mode tcp\n    timeout connect 5s\n    \
             timeout client 1h\n    timeout server 1h\n\nlisten postgres\n    \
             bind 127.0.0.1:{port}\n    server pg 127.0.0.1:{pg_port}\n"
        ),
    )
    .map_err(|e| e.to_string())?;
    let log = dir.path().join("haproxy.log");
    let out = fs::File::create(&log).map_err(|e| e.to_string())?;
    let child = Command::new(bin)
        .arg("-db") // foreground, no daemon
        .arg("-f")
        .arg(&cfg)
        .stdin(Stdio::null())
        .stdout(out.try_clone().map_err(|e| e.to_string())?)
        .stderr(out)
        .spawn()
        .map_err(|e| format!("spawn {}: {e}", bin.display()))?;
    let mut p = Proc {
        name: "haproxy",
        child,
        _dir: dir,
        log,
    };
    p.wait_listening(port, Duration::from_secs(10))?;
    Ok((p, port))
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

fn start_pgbouncer(bin: &Path, pg_port: u16, pool_size: usize) -> Result<(Proc, u16), String> {
    let dir = scratch("bench-pgbouncer-")?;
    let port = postgres::free_port();
    // PgBouncer refuses to run as root: run it as PostgreSQL's OS user, in a dir it owns.
    let owner = if is_root() {
        Some(postgres::os_user(postgres::PG_OS_USER).ok_or_else(|| {
            format!(
                "running as root and no `{}` user to run pgbouncer as",
                postgres::PG_OS_USER
            )
        })?)
    } else {
        None
    };
    let d = dir.path().display();
    let ini = dir.path().join("pgbouncer.ini");
    fs::write(
        &ini,
        format!(
            "[databases]\npostgres = host=127.0.0.1 port={pg_port} dbname=postgres user={user}\n\n\
             [pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n\
             auth_type = any\npool_mode = transaction\nmax_client_conn = 200\n\
             default_pool_size = {pool_size}\nmin_pool_size = 0\nreserve_pool_size = 0\n\
             logfile = {d}/pgbouncer.log\npidfile = {d}/pgbouncer.pid\n\
             ignore_startup_parameters = extra_float_digits\n\
             log_connections = 0\nlog_disconnections = 0\n",
            user = postgres::SUPERUSER
        ),
    )
    .map_err(|e| e.to_string())?;
    let log = dir.path().join("pgbouncer.out");
    let out = fs::File::create(&log).map_err(|e| e.to_string())?;
    if let Some((uid, gid)) = owner {
        for p in [dir.path(), ini.as_path(), log.as_path()] {
            std::os::unix::fs::chown(p, Some(uid), Some(gid))
                .map_err(|e| format!("chown {}: {e}", p.display()))?;
        }
    }
    let mut cmd = Command::new(bin);
    cmd.arg(&ini)
        .stdin(Stdio::null())
        .stdout(out.try_clone().map_err(|e| e.to_string())?)
        .stderr(out);
    if let Some((uid, gid)) = owner {
        cmd.uid(uid).gid(gid).env("HOME", "/tmp");
    }
    let child = cmd
        .spawn()
        .map_err(|e| format!("spawn {}: {e}", bin.display()))?;
    let mut p = Proc {
        name: "pgbouncer",
        child,
        _dir: dir,
        log,
    };
    p.wait_listening(port, Duration::from_secs(10))?;
    Ok((p, port))
}

// ---------------------------------------------------------------------------
// Paths and sessions
// ---------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PathKind {
    Direct,
    /// A second set of direct connections: the harness check (its ratio to direct
    /// is the run's noise floor; opt in with ROUTING_BENCH_PATHS).
    DirectAgain,
    Router,
    /// One connection per client checked out of a router once and kept (opt in): the
    /// router's connections without the per-query checkout.
    RouterHeld,
    HaProxy,
    PgBouncer,
}

impl PathKind {
    fn name(self) -> &'static str {
        match self {
            PathKind::Direct => "direct",
            PathKind::DirectAgain => "direct-again",
            PathKind::Router => "router",
            PathKind::RouterHeld => "router-held",
            PathKind::HaProxy => "haproxy",
            PathKind::PgBouncer => "pgbouncer",
        }
    }

    fn parse(s: &str) -> Option<PathKind> {
        [
            PathKind::Direct,
            PathKind::DirectAgain,
            PathKind::Router,
            PathKind::RouterHeld,
            PathKind::HaProxy,
            PathKind::PgBouncer,
        ]
        .into_iter()
        .find(|p| p.name() == s)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Workload {
    Select,
    Tpcb,
}

impl Workload {
    fn name(self) -> &'static str {
        match self {
            Workload::Select => "select (1 row by PK)",
            Workload::Tpcb => "tpcb (read-write tx)",
        }
    }

    /// The short name of ROUTING_BENCH_WORKLOADS and of the output files.
    fn key(self) -> &'static str {
        match self {
            Workload::Select => "select",
            Workload::Tpcb => "tpcb",
        }
    }
}

/// Where a client's queries go: its own connection (direct, haproxy, pgbouncer), the
/// router (a pooled connection checked out per select / per transaction), or a router
/// connection held for the round.
#[derive(Clone)]
enum Conn {
    Own(Arc<tokio_postgres::Client>),
    Router(Router),
    /// A router connection checked out once (`router-held`).
    Held(Arc<switchyard_proxy::router::PooledClient>),
}

/// A client connection like the router's pools make (same settings, so the paths
/// differ only in what sits between the client and PostgreSQL).
async fn connect(port: u16) -> Result<tokio_postgres::Client, String> {
    let mut c = tokio_postgres::Config::new();
    c.host("127.0.0.1")
        .port(port)
        .user(postgres::SUPERUSER)
        .dbname("postgres")
        .application_name("switchyard-bench")
        .connect_timeout(Duration::from_secs(3))
        .keepalives(true)
        .keepalives_idle(Duration::from_secs(10));
    let (client, conn) = tokio::time::timeout(Duration::from_secs(10), c.connect(NoTls))
        .await
        .map_err(|_| format!("connect to 127.0.0.1:{port}: timed out"))?
        .map_err(|e| format!("connect to 127.0.0.1:{port}: {e}"))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

struct Scale {
    accounts: i64,
    tellers: i64,
    branches: i64,
}

async fn select_one(c: &tokio_postgres::Client, aid: i64) -> Result<(), tokio_postgres::Error> {
    let rows = c
        .simple_query(&format!(
            "SELECT abalance FROM pgbench_accounts WHERE aid = {aid}"
        ))
        .await?;
    std::hint::black_box(rows);
    Ok(())
}

/// pgbench's "TPC-B (sort of)" script, one statement per round trip.
async fn tpcb(
    c: &tokio_postgres::Client,
    aid: i64,
    tid: i64,
    bid: i64,
    delta: i64,
) -> Result<(), tokio_postgres::Error> {
    c.simple_query("BEGIN").await?;
    let body = async {
        c.simple_query(&format!(
            "UPDATE pgbench_accounts SET abalance = abalance + {delta} WHERE aid = {aid}"
        ))
        .await?;
        c.simple_query(&format!(
            "SELECT abalance FROM pgbench_accounts WHERE aid = {aid}"
        ))
        .await?;
        c.simple_query(&format!(
            "UPDATE pgbench_tellers SET tbalance = tbalance + {delta} WHERE tid = {tid}"
        ))
        .await?;
        c.simple_query(&format!(
            "UPDATE pgbench_branches SET bbalance = bbalance + {delta} WHERE bid = {bid}"
        ))
        .await?;
        c.simple_query(&format!(
            "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) \
             VALUES ({tid}, {bid}, {aid}, {delta}, CURRENT_TIMESTAMP)"
        ))
        .await?;
        c.simple_query("END").await?;
        Ok::<_, tokio_postgres::Error>(())
    };
    match body.await {
        Ok(()) => Ok(()),
        Err(e) => {
            let _ = c.simple_query("ROLLBACK").await;
            Err(e)
        }
    }
}

async fn one_op(conn: &Conn, w: Workload, scale: &Scale) -> Result<(), String> {
    let (aid, tid, bid, delta) = {
        let mut rng = rand::thread_rng();
        (
            rng.gen_range(1..=scale.accounts),
            rng.gen_range(1..=scale.tellers),
            rng.gen_range(1..=scale.branches),
            rng.gen_range(-5000..=5000),
        )
    };
    match (conn, w) {
        (Conn::Own(c), Workload::Select) => select_one(c, aid).await.map_err(|e| pg_error(&e)),
        (Conn::Own(c), Workload::Tpcb) => tpcb(c, aid, tid, bid, delta)
            .await
            .map_err(|e| pg_error(&e)),
        (Conn::Held(c), Workload::Select) => select_one(c, aid).await.map_err(|e| pg_error(&e)),
        (Conn::Held(c), Workload::Tpcb) => tpcb(c, aid, tid, bid, delta)
            .await
            .map_err(|e| pg_error(&e)),
        (Conn::Router(r), Workload::Select) => {
            let c = r.read().await.map_err(|e| e.to_string())?;
            select_one(&c, aid).await.map_err(|e| pg_error(&e))
        }
        (Conn::Router(r), Workload::Tpcb) => {
            let c = r.write().await.map_err(|e| e.to_string())?;
            tpcb(&c, aid, tid, bid, delta)
                .await
                .map_err(|e| pg_error(&e))
        }
    }
}

// ---------------------------------------------------------------------------
// Measurement
// ---------------------------------------------------------------------------

struct Measured {
    ops: u64,
    errors: u64,
    first_error: Option<String>,
    elapsed: Duration,
    hist: Histogram<u64>,
}

impl Measured {
    fn new() -> Measured {
        Measured {
            ops: 0,
            errors: 0,
            first_error: None,
            elapsed: Duration::ZERO,
            hist: new_hist(),
        }
    }

    /// One op's outcome (`None`: it timed out) and how long it took.
    fn record(&mut self, outcome: Option<Result<(), String>>, took: Duration) {
        match outcome {
            Some(Ok(())) => {
                self.ops += 1;
                self.hist
                    .saturating_record((took.as_nanos() as u64).max(100));
            }
            Some(Err(e)) => {
                self.errors += 1;
                self.first_error.get_or_insert(e);
            }
            None => {
                self.errors += 1;
                self.first_error
                    .get_or_insert(format!("no answer within {OP_TIMEOUT:?}"));
            }
        }
    }

    fn merge(&mut self, other: Measured) {
        let _ = self.hist.add(&other.hist);
        self.ops += other.ops;
        self.errors += other.errors;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
    }

    fn p50_us(&self) -> f64 {
        self.hist.value_at_quantile(0.50) as f64 / 1000.0
    }
    fn p99_us(&self) -> f64 {
        self.hist.value_at_quantile(0.99) as f64 / 1000.0
    }
    fn per_sec(&self) -> f64 {
        self.ops as f64 / self.elapsed.as_secs_f64()
    }
}

fn new_hist() -> Histogram<u64> {
    // 100 ns .. 60 s in ns, 3 significant digits.
    Histogram::new_with_bounds(100, 60_000_000_000, 3).expect("histogram bounds")
}

/// Runs `w` on `conns` (one task each, one op in flight) for `dur`.
async fn run_phase(conns: &[Conn], w: Workload, scale: &Arc<Scale>, dur: Duration) -> Measured {
    let start = Instant::now();
    let deadline = start + dur;
    let mut tasks = tokio::task::JoinSet::new();
    for conn in conns {
        let conn = conn.clone();
        let scale = Arc::clone(scale);
        tasks.spawn(async move {
            let mut m = Measured::new();
            while Instant::now() < deadline {
                let t = Instant::now();
                let r = tokio::time::timeout(OP_TIMEOUT, one_op(&conn, w, &scale)).await;
                m.record(r.ok(), t.elapsed());
            }
            m
        });
    }
    let mut m = Measured::new();
    while let Some(r) = tasks.join_next().await {
        match r {
            Ok(task) => m.merge(task),
            Err(e) => {
                m.errors += 1;
                m.first_error.get_or_insert(format!("client task: {e}"));
            }
        }
    }
    m.elapsed = start.elapsed();
    m
}

/// Runs `w` for `dur` on client slots `0..n` of every path at once, paired op by op:
/// client `i` does one op through each path per cycle, in an order drawn anew each
/// cycle (from `seed` and `i`), so that every path's ops meet the machine in the same
/// state at the same moments and drift (other VMs, frequency, writeback) cannot favour
/// a path. One `Measured` per path, in `conns`' order: latency only, since the paths
/// share the time.
async fn run_paired(
    conns: &[(PathKind, Vec<Conn>)],
    n: usize,
    seed: usize,
    w: Workload,
    scale: &Arc<Scale>,
    dur: Duration,
) -> Vec<Measured> {
    let start = Instant::now();
    let deadline = start + dur;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..n {
        let slot: Vec<Conn> = conns.iter().map(|(_, cs)| cs[i].clone()).collect();
        let scale = Arc::clone(scale);
        tasks.spawn(async move {
            let mut ms: Vec<Measured> = slot.iter().map(|_| Measured::new()).collect();
            // A new random order of the paths for every cycle: in a fixed cycle each
            // path would always follow the same other path and inherit what that one
            // leaves in the caches and the scheduler.
            let mut rng = StdRng::seed_from_u64(((seed as u64) << 16) ^ i as u64);
            let mut order: Vec<usize> = (0..slot.len()).collect();
            'cycles: while Instant::now() < deadline {
                order.shuffle(&mut rng);
                for &k in &order {
                    if Instant::now() >= deadline {
                        break 'cycles;
                    }
                    let t = Instant::now();
                    let r = tokio::time::timeout(OP_TIMEOUT, one_op(&slot[k], w, &scale)).await;
                    ms[k].record(r.ok(), t.elapsed());
                }
            }
            ms
        });
    }
    let mut all: Vec<Measured> = conns.iter().map(|_| Measured::new()).collect();
    while let Some(r) = tasks.join_next().await {
        match r {
            Ok(task) => {
                for (m, t) in all.iter_mut().zip(task) {
                    m.merge(t);
                }
            }
            Err(e) => {
                all[0].errors += 1;
                all[0]
                    .first_error
                    .get_or_insert(format!("client task: {e}"));
            }
        }
    }
    let elapsed = start.elapsed();
    for m in &mut all {
        m.elapsed = elapsed;
    }
    all
}

/// The CDF of a latency histogram (ns): (latency us, fraction of samples <= it), one
/// point per recorded bucket.
fn hist_cdf(h: &Histogram<u64>) -> Vec<(f64, f64)> {
    let total = h.len().max(1) as f64;
    let mut seen = 0u64;
    h.iter_recorded()
        .map(|v| {
            seen += v.count_since_last_iteration();
            (v.value_iterated_to() as f64 / 1000.0, seen as f64 / total)
        })
        .collect()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// Prints one table, per cell and path: the medians over rounds of p50, p99 and (with
/// `throughput`) ops per second, and the medians over rounds of each round's ratio to
/// direct. Returns the table as TSV (`ratios.tsv`'s columns) and the router targets the
/// table misses.
fn report_table(
    paths: &[PathKind],
    cells: &[(Workload, usize)],
    results: &[Vec<Vec<Measured>>],
    rounds: usize,
    throughput: bool,
) -> (String, Vec<String>) {
    let direct = paths
        .iter()
        .position(|p| *p == PathKind::Direct)
        .expect("direct is always measured");
    println!("| workload | clients | path | p50 us | p99 us | per s | p50 / direct | p99 / direct | per s / direct | errors |");
    println!("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|");
    let mut missed = Vec::new();
    let mut tsv = String::from(
        "workload\tclients\tpath\tp50_us\tp99_us\tper_s\tp50_ratio\tp99_ratio\terrors\n",
    );
    for (ci, &(w, n)) in cells.iter().enumerate() {
        let ratio = |pi: usize, f: &dyn Fn(&Measured) -> f64| {
            median(
                (0..rounds)
                    .map(|r| f(&results[ci][pi][r]) / f(&results[ci][direct][r]))
                    .collect(),
            )
        };
        let mut p50_ratio = vec![0.0; paths.len()];
        for (pi, path) in paths.iter().enumerate() {
            let name = path.name();
            let rs = &results[ci][pi];
            let errors: u64 = rs.iter().map(|m| m.errors).sum();
            p50_ratio[pi] = ratio(pi, &|m| m.p50_us());
            let p50 = median(rs.iter().map(Measured::p50_us).collect());
            let p99 = median(rs.iter().map(Measured::p99_us).collect());
            let p99_ratio = ratio(pi, &|m| m.p99_us());
            let (per_s, per_s_ratio) = if throughput {
                (
                    format!("{:.0}", median(rs.iter().map(Measured::per_sec).collect())),
                    format!("{:.3}x", ratio(pi, &|m| m.per_sec())),
                )
            } else {
                ("-".to_owned(), "-".to_owned())
            };
            println!(
                "| {} | {n} | {name} | {p50:.1} | {p99:.1} | {per_s} | {:.3}x | {p99_ratio:.3}x | {per_s_ratio} | {errors} |",
                w.name(),
                p50_ratio[pi],
            );
            tsv.push_str(&format!(
                "{}\t{n}\t{name}\t{p50:.1}\t{p99:.1}\t{per_s}\t{:.4}\t{p99_ratio:.4}\t{errors}\n",
                w.key(),
                p50_ratio[pi],
            ));
            if let Some(e) = rs.iter().find_map(|m| m.first_error.as_ref()) {
                eprintln!("{} {n} clients {name}: first error: {e}", w.name());
            }
        }
        if let Some(ri) = paths.iter().position(|p| *p == PathKind::Router) {
            let r = p50_ratio[ri];
            let within_target = r <= ROUTER_TARGET; // false for NaN too
            if !within_target {
                missed.push(format!(
                    "{} x{n}: router p50 {r:.3}x direct (target <= {ROUTER_TARGET}x)",
                    w.name()
                ));
            }
            for (pi, p) in paths.iter().enumerate() {
                let below = r < p50_ratio[pi];
                if matches!(p, PathKind::HaProxy | PathKind::PgBouncer) && !below {
                    missed.push(format!(
                        "{} x{n}: router p50 {r:.3}x not below {} {:.3}x",
                        w.name(),
                        p.name(),
                        p50_ratio[pi]
                    ));
                }
            }
        }
    }
    (tsv, missed)
}

// ---------------------------------------------------------------------------
// Set-up
// ---------------------------------------------------------------------------

/// pgbench's tables (`pgbench -i` layout, fillfactor 100) at `scale`.
async fn load_tables(c: &tokio_postgres::Client, scale: &Scale) -> Result<(), String> {
    let sql = format!(
        "DROP TABLE IF EXISTS pgbench_accounts, pgbench_branches, pgbench_tellers, pgbench_history;
         CREATE TABLE pgbench_branches (bid int NOT NULL PRIMARY KEY, bbalance int, filler char(88));
         CREATE TABLE pgbench_tellers (tid int NOT NULL PRIMARY KEY, bid int, tbalance int, filler char(84));
         CREATE TABLE pgbench_accounts (aid int NOT NULL, bid int, abalance int, filler char(84));
         CREATE TABLE pgbench_history (tid int, bid int, aid int, delta int, mtime timestamp, filler char(22));
         INSERT INTO pgbench_branches SELECT b, 0, '' FROM generate_series(1, {b}) b;
         INSERT INTO pgbench_tellers SELECT t, (t - 1) / {tpb} + 1, 0, '' FROM generate_series(1, {t}) t;
         INSERT INTO pgbench_accounts SELECT a, (a - 1) / {apb} + 1, 0, '' FROM generate_series(1, {a}) a;
         ALTER TABLE pgbench_accounts ADD PRIMARY KEY (aid);",
        b = scale.branches,
        t = scale.tellers,
        a = scale.accounts,
        tpb = TELLERS_PER_SCALE,
        apb = ACCOUNTS_PER_SCALE,
    );
    for sql in [sql.as_str(), "VACUUM ANALYZE"] {
        tokio::time::timeout(Duration::from_secs(300), c.batch_execute(sql))
            .await
            .map_err(|_| "loading the tables took over 300 s".to_owned())?
            .map_err(|e| format!("loading the tables: {}", pg_error(&e)))?;
    }
    Ok(())
}

/// A PostgreSQL error with the server's message (tokio-postgres' Display says only
/// "db error").
fn pg_error(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{}: {}", db.code().code(), db.message()),
        None => e.to_string(),
    }
}

/// Writes the leader and member records of `pg` (a plain primary) into coordd, as an
/// agent would publish them, and keeps the session that owns them.
async fn publish_records(coord: &str, pg_port: u16) -> Result<Client, String> {
    let ns = Namespace::new("/switchyard", CLUSTER).map_err(|e| e.to_string())?;
    let (zk, _events) =
        Client::connect(ClientConfig::new([coord.to_owned()]).with_session_timeout_ms(2_000))
            .await
            .map_err(|e| format!("coordd client: {e}"))?;
    let open = Acl::open_unsafe();
    zk.ensure_path(&ns.members())
        .await
        .map_err(|e| e.to_string())?;
    let member = MemberRecord {
        node: "pg-0".into(),
        host: "127.0.0.1".into(),
        port: pg_port,
        role: Role::Primary,
        state: MemberState::Running,
        timeline: Some(1),
        receive_lsn: Some(Lsn(0)),
        replay_lsn: Some(Lsn(0)),
        lag_bytes: Some(0),
        updated_ms: 0,
    };
    zk.create(
        &ns.member("pg-0"),
        &records::encode(&member),
        &open,
        CreateMode::Ephemeral,
    )
    .await
    .map_err(|e| format!("create member: {e}"))?;
    let leader = LeaderRecord {
        node: "pg-0".into(),
        host: "127.0.0.1".into(),
        port: pg_port,
        state: LeaderState::Primary,
        since_ms: 0,
    };
    zk.create(
        &ns.leader(),
        &records::encode(&leader),
        &open,
        CreateMode::Ephemeral,
    )
    .await
    .map_err(|e| format!("create leader: {e}"))?;
    Ok(zk)
}

async fn start_router(coord: &str, pool: usize) -> Result<Router, String> {
    let router = tokio::time::timeout(
        Duration::from_secs(10),
        Router::builder()
            .coord(coord)
            .cluster(CLUSTER)
            .root("/switchyard")
            .session_timeout_ms(2_000)
            .pool_max_size(pool)
            .pg_user(postgres::SUPERUSER)
            .pg_dbname("postgres")
            .connect(),
    )
    .await
    .map_err(|_| "router did not connect within 10 s".to_owned())?
    .map_err(|e| format!("router: {e}"))?;
    // Fill the pool: hold `pool` connections at once, so no phase pays a connect.
    let mut held = Vec::new();
    for _ in 0..pool {
        held.push(
            tokio::time::timeout(Duration::from_secs(10), router.write())
                .await
                .map_err(|_| "router checkout timed out".to_owned())?
                .map_err(|e| format!("router checkout: {e}"))?,
        );
    }
    drop(held);
    Ok(router)
}

/// Where each path connects.
struct Endpoints {
    pg: u16,
    haproxy: Option<u16>,
    pgbouncer: Option<u16>,
    /// coordd's connect string, when the router path runs.
    coord: Option<String>,
    router_pool: usize,
}

/// Fresh client connections for every path: `max_clients` connections of its own per
/// client path, a new router (its pool filled) for the router path.
async fn open_paths(
    paths: &[PathKind],
    at: &Endpoints,
    max_clients: usize,
) -> Result<Vec<(PathKind, Vec<Conn>)>, String> {
    let mut conns = Vec::new();
    for &p in paths {
        let port = match p {
            PathKind::Direct | PathKind::DirectAgain => Some(at.pg),
            PathKind::HaProxy => at.haproxy,
            PathKind::PgBouncer => at.pgbouncer,
            PathKind::Router | PathKind::RouterHeld => None,
        };
        if p == PathKind::RouterHeld {
            // The router may go: a checked-out connection outlives its closed pool.
            let coord = at.coord.as_deref().ok_or("no coordd for the router path")?;
            let router = start_router(coord, max_clients).await?;
            let mut v = Vec::new();
            for _ in 0..max_clients {
                let c = router
                    .write()
                    .await
                    .map_err(|e| format!("router checkout: {e}"))?;
                v.push(Conn::Held(Arc::new(c)));
            }
            conns.push((p, v));
            continue;
        }
        let cs = match port {
            Some(port) => {
                let mut v = Vec::new();
                for _ in 0..max_clients {
                    v.push(Conn::Own(Arc::new(connect(port).await?)));
                }
                v
            }
            None => {
                let coord = at.coord.as_deref().ok_or("no coordd for the router path")?;
                let router = start_router(coord, at.router_pool).await?;
                vec![Conn::Router(router); max_clients]
            }
        };
        conns.push((p, cs));
    }
    Ok(conns)
}

/// A short run of every path and workload on all of its connections: a new backend's
/// first queries fill its catalog caches and would otherwise land in a measured phase.
async fn warm_up(
    conns: &[(PathKind, Vec<Conn>)],
    workloads: &[Workload],
    scale: &Arc<Scale>,
    dur: Duration,
) {
    for &w in workloads {
        for (_, cs) in conns {
            let _ = run_phase(cs, w, scale, dur).await;
        }
    }
}

// ---------------------------------------------------------------------------
// Main
// ---------------------------------------------------------------------------

fn main() {
    if postgres::skip() {
        return;
    }
    if let Err(e) = run() {
        eprintln!("routing_e2e: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), String> {
    let rounds: usize = env_or("ROUTING_BENCH_ROUNDS", 40).max(1);
    let secs: f64 = env_or("ROUTING_BENCH_SECS", 0.2);
    let paired = env_or("ROUTING_BENCH_PAIRED", 1) != 0;
    let reconnect = env_or("ROUTING_BENCH_RECONNECT", 1) != 0;
    let phase = Duration::from_secs_f64(secs.max(0.1));
    let clients: Vec<usize> = env_list("ROUTING_BENCH_CLIENTS", "1,8")
        .iter()
        .filter_map(|s| s.parse().ok())
        .filter(|&n| n > 0)
        .collect();
    let max_clients = clients.iter().copied().max().ok_or("no client counts")?;
    let scale_factor: i64 = env_or("ROUTING_BENCH_SCALE", 8).max(1);
    let fsync = std::env::var("ROUTING_BENCH_FSYNC").unwrap_or_else(|_| "off".into());
    if fsync != "on" && fsync != "off" {
        return Err(format!("ROUTING_BENCH_FSYNC={fsync:?}: on or off"));
    }
    let scale = Arc::new(Scale {
        accounts: ACCOUNTS_PER_SCALE * scale_factor,
        tellers: TELLERS_PER_SCALE * scale_factor,
        branches: scale_factor,
    });
    let mut paths = Vec::new();
    for p in env_list("ROUTING_BENCH_PATHS", "direct,router,haproxy,pgbouncer") {
        paths.push(PathKind::parse(&p).ok_or_else(|| format!("unknown path {p:?}"))?);
    }
    if !paths.contains(&PathKind::Direct) {
        paths.insert(0, PathKind::Direct); // the baseline of every ratio
    }
    let mut workloads = Vec::new();
    for w in env_list("ROUTING_BENCH_WORKLOADS", "select,tpcb") {
        workloads.push(
            [Workload::Select, Workload::Tpcb]
                .into_iter()
                .find(|k| k.key() == w)
                .ok_or_else(|| format!("unknown workload {w:?} (select, tpcb)"))?,
        );
    }
    let out_dir = plot::fresh_dir("routing_e2e", "latency_cdf_")?;
    let progress = Progress::new();
    eprintln!("load average before set-up: {}", loadavg());

    // PostgreSQL (fsync as asked); room for every path's connections.
    let pg = Postgres::init_primary(PgOptions {
        extra_conf: vec![
            format!("fsync = {fsync}"),
            "max_connections = 100".into(),
            "shared_buffers = '128MB'".into(),
        ],
        data_checksums: false,
    });
    let pg_port = pg.port();
    eprintln!("postgres on 127.0.0.1:{pg_port} (fsync={fsync})");

    // The proxies, skipped with a message when their binary is missing.
    let mut procs: Vec<Proc> = Vec::new();
    let mut haproxy_port = None;
    let mut pgbouncer_port = None;
    if paths.contains(&PathKind::HaProxy) {
        match find_binary("HAPROXY_BIN", "haproxy") {
            Some(bin) => {
                let (p, port) = start_haproxy(&bin, pg_port)?;
                eprintln!("haproxy ({}) on 127.0.0.1:{port}", bin.display());
                procs.push(p);
                haproxy_port = Some(port);
            }
            None => {
                println!(
                    "SKIP haproxy: no haproxy binary (apt-get install haproxy, or set HAPROXY_BIN)"
                );
                paths.retain(|p| *p != PathKind::HaProxy);
            }
        }
    }
    if paths.contains(&PathKind::PgBouncer) {
        match find_binary("PGBOUNCER_BIN", "pgbouncer") {
            Some(bin) => {
                let (p, port) = start_pgbouncer(&bin, pg_port, max_clients)?;
                eprintln!("pgbouncer ({}) on 127.0.0.1:{port}", bin.display());
                procs.push(p);
                pgbouncer_port = Some(port);
            }
            None => {
                println!("SKIP pgbouncer: no pgbouncer binary (apt-get install pgbouncer, or set PGBOUNCER_BIN)");
                paths.retain(|p| *p != PathKind::PgBouncer);
            }
        }
    }
    let coordd = (paths.contains(&PathKind::Router) || paths.contains(&PathKind::RouterHeld))
        .then(Coordd::start);

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let result = rt.block_on(async {
        let admin = connect(pg_port).await?;
        eprintln!("loading pgbench tables, scale {scale_factor} ...");
        let t = Instant::now();
        load_tables(&admin, &scale).await?;
        eprintln!("loaded in {:.1} s", t.elapsed().as_secs_f64());

        let coord = coordd.as_ref().map(|c| c.connect_string());
        // The leader and member records the router reads, owned by this session.
        let _records = match &coord {
            Some(coord) => Some(publish_records(coord, pg_port).await?),
            None => None,
        };
        let endpoints = Endpoints {
            pg: pg_port,
            haproxy: haproxy_port,
            pgbouncer: pgbouncer_port,
            coord,
            router_pool: env_or("ROUTING_BENCH_ROUTER_POOL", max_clients).max(1),
        };
        let mut conns = open_paths(&paths, &endpoints, max_clients).await?;

        let cells: Vec<(Workload, usize)> = workloads
            .iter()
            .flat_map(|&w| clients.iter().map(move |&c| (w, c)))
            .collect();
        progress.log(format!(
            "paths {:?}, {} cells, {rounds} rounds of {secs} s phases: ~{:.0} s",
            paths.iter().map(|p| p.name()).collect::<Vec<_>>(),
            cells.len(),
            (cells.len() * paths.len() * rounds) as f64 * secs * if paired { 2.0 } else { 1.0 }
        ));
        // One bar for all phases, one per path (its last phase's latency).
        let phases_per_cell = conns.len() + usize::from(paired);
        let all = progress.bar(
            (rounds * cells.len() * phases_per_cell) as u64,
            "all phases",
        );
        let path_bars: Vec<_> = conns
            .iter()
            .map(|(p, _)| progress.bar((rounds * cells.len()) as u64, p.name()))
            .collect();
        // Warm-up: every path and workload once (caches, pools, plan caches).
        all.set_message("warm-up");
        warm_up(&conns, &workloads, &scale, WARMUP).await;
        // results[cell][path][round]
        let mut results: Vec<Vec<Vec<Measured>>> = cells
            .iter()
            .map(|_| conns.iter().map(|_| Vec::new()).collect())
            .collect();
        let mut paired_results = results
            .iter()
            .map(|_| results[0].iter().map(|_| Vec::new()).collect())
            .collect::<Vec<Vec<Vec<Measured>>>>();
        // As long as one round's phases of the cell, so each path gets as many ops.
        let paired_phase = phase * conns.len() as u32;
        for round in 0..rounds {
            progress.log(format!(
                "round {}/{rounds} (load average {})",
                round + 1,
                loadavg()
            ));
            if reconnect && round > 0 {
                // New connections (new backends, new sockets, a new router and pool)
                // each round: at one client a path's figures rest on one backend, and
                // which backend process a path got would otherwise stay with it for
                // the whole run; per round it is drawn anew and the medians even it out.
                all.set_message(format!("round {}/{rounds}: reconnecting", round + 1));
                drop(std::mem::take(&mut conns));
                conns = open_paths(&paths, &endpoints, max_clients).await?;
                warm_up(&conns, &workloads, &scale, ROUND_WARMUP).await;
            }
            for (ci, &(w, n)) in cells.iter().enumerate() {
                for k in 0..conns.len() {
                    let pi = (k + round) % conns.len();
                    let (p, cs) = &conns[pi];
                    all.set_message(format!(
                        "round {}/{rounds}: {} x{n} via {}",
                        round + 1,
                        w.key(),
                        p.name()
                    ));
                    let m = run_phase(&cs[..n], w, &scale, phase).await;
                    path_bars[pi].set_message(format!(
                        "{} x{n}: p50 {:.1} µs, p99 {:.1} µs",
                        w.key(),
                        m.p50_us(),
                        m.p99_us()
                    ));
                    path_bars[pi].inc(1);
                    all.inc(1);
                    results[ci][pi].push(m);
                }
                if paired {
                    all.set_message(format!(
                        "round {}/{rounds}: {} x{n}, every path paired op by op",
                        round + 1,
                        w.key()
                    ));
                    let ms = run_paired(&conns, n, round, w, &scale, paired_phase).await;
                    for (pi, m) in ms.into_iter().enumerate() {
                        paired_results[ci][pi].push(m);
                    }
                    all.inc(1);
                }
            }
        }
        all.finish_with_message("done");
        for b in &path_bars {
            b.finish();
        }
        // What the router adds on the client: a checkout and return of a pooled
        // connection (no query), on one task, after the rounds.
        let mut checkout_us = None;
        if let Some(Conn::Router(r)) = conns
            .iter()
            .find(|(p, _)| *p == PathKind::Router)
            .and_then(|(_, cs)| cs.first())
        {
            const N: u32 = 20_000;
            let t = Instant::now();
            for _ in 0..N {
                let c = r.read().await.map_err(|e| format!("checkout: {e}"))?;
                drop(std::hint::black_box(c));
            }
            checkout_us = Some(t.elapsed().as_secs_f64() * 1e6 / f64::from(N));
        }
        drop(conns);
        Ok::<_, String>((cells, results, paired_results, checkout_us))
    });
    rt.shutdown_timeout(Duration::from_secs(5));
    let (cells, results, paired_results, checkout_us) = result?;

    // Report: the phases (latency and throughput per path), then the paired rounds
    // (latency only). The targets are judged on the paired rounds when they ran: they
    // compare each path's latency with direct's at the same moments, where the phases
    // compare moments up to a round apart (their direct-again noise was +-4%).
    println!(
        "\n### Routing end to end: medians of {rounds} interleaved rounds of {secs} s per path \
         (PostgreSQL 15, fsync={fsync}, scale {scale_factor}, simple query protocol)\n"
    );
    let (tsv, missed_phases) = report_table(&paths, &cells, &results, rounds, true);
    plot::write_file(&out_dir.join("ratios.tsv"), &tsv)?;
    let mut missed = missed_phases;
    if paired {
        println!(
            "\n### Paired: the same cells, every client alternating between the paths op by op \
             ({rounds} rounds of {:.1} s; latency only, the paths share the time)\n",
            secs * paths.len() as f64
        );
        let (tsv, missed_paired) = report_table(&paths, &cells, &paired_results, rounds, false);
        plot::write_file(&out_dir.join("ratios_paired.tsv"), &tsv)?;
        missed = missed_paired;
    }
    if let Some(us) = checkout_us {
        println!(
            "\nrouter checkout + return of a pooled connection (`read()`, no query), one task: \
             {us:.2} us mean over 20000"
        );
    }
    println!("\nload average at the end: {}", loadavg());

    // Plots: per cell, every path's latency CDF over all rounds pooled.
    let names: Vec<&str> = paths.iter().map(|p| p.name()).collect();
    for (ci, &(w, n)) in cells.iter().enumerate() {
        let lines: Vec<plot::CdfLine> = names
            .iter()
            .enumerate()
            .map(|(pi, name)| {
                let mut h = new_hist();
                for m in &results[ci][pi] {
                    let _ = h.add(&m.hist);
                }
                let us = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
                plot::CdfLine {
                    name: (*name).to_owned(),
                    label: format!(
                        "{name}: p50 {:.0} µs, p99 {:.0} µs ({} queries)",
                        us(0.5),
                        us(0.99),
                        h.len()
                    ),
                    points: hist_cdf(&h),
                }
            })
            .collect();
        let what = match w {
            Workload::Select => "one-row SELECT",
            Workload::Tpcb => "TPC-B-like read-write transaction",
        };
        let title = format!(
            "{what}, {n} client{}: latency CDF per path ({rounds} rounds x {secs} s, fsync {fsync})",
            if n == 1 { "" } else { "s" }
        );
        let file = out_dir.join(format!("latency_cdf_{}_{n}c.png", w.key()));
        plot::latency_cdf(&file, &title, &lines)?;
        plot::write_file(&file.with_extension("csv"), &plot::cdf_csv(&lines))?;
        println!("plot: {}", file.display());
    }

    if paths.contains(&PathKind::Router) {
        let judged_on = if paired { "paired rounds" } else { "phases" };
        if missed.is_empty() {
            println!("router targets ({judged_on}): met (p50 <= {ROUTER_TARGET}x direct and below every proxy path, every cell)");
        } else {
            println!("router targets ({judged_on}) missed:");
            for m in &missed {
                println!("- {m}");
            }
        }
    }
    drop(procs);
    drop(coordd);
    drop(pg);
    if !missed.is_empty() && std::env::var("ROUTING_BENCH_ENFORCE").as_deref() == Ok("1") {
        std::process::exit(1);
    }
    Ok(())
}
