//! Coordination benchmark: the same load against standalone coordd and standalone Apache
//! ZooKeeper 3.8 (Debian's package), fsync on for both, in one run.
//!
//!     cargo bench --bench coord
//!
//! The load client for both servers is the independent `zookeeper-client` crate: N
//! concurrent sessions (1, 16, 64), each one request in flight, doing create / setData /
//! getData with 64-byte values for a fixed time per phase, then the watch-notification
//! latency (one session sets data, another holds a data watch; time from setData sent to
//! the event received). Printed per server and operation: ops/s, p50/p99 latency, the
//! server's RSS after the load (VmRSS) and its peak (VmHWM), and the ratios
//! candidate/baseline; then the floor of a durable write at one session on this machine
//! (one round trip plus the fdatasync measured before the servers start) beside what 2x
//! the baseline's create at one session asks for. See benches/RESULTS.md.
//!
//! Environment:
//!   COORDD_BIN              coordd binary (default: target/release/coordd; built with
//!                           `cargo build --release -p coordd` when missing)
//!   COORDD_ARGS             extra coordd flags, space separated (never one that turns
//!                           fsync off: the comparison is fsync on for both)
//!   COORD_BENCH_CANDIDATE   `coordd` (default) or `zookeeper`: a second ZooKeeper as the
//!                           candidate, to check the harness itself (ratios ~1.0), or
//!                           `null`: a server that answers every request at once and
//!                           does nothing else (`common/null_zk.rs`), the ceiling of
//!                           this machine and load for any server
//!   COORD_BENCH_BASELINE_BIN  another coordd binary as the baseline instead of ZooKeeper:
//!                           an A/B of two coordd builds in one run (an ensemble of each
//!                           with COORD_BENCH_MEMBERS); its flags in
//!                           COORD_BENCH_BASELINE_ARGS (may be the same binary with
//!                           other flags)
//!   COORD_BENCH_SECS        seconds per measured phase (default 3)
//!   COORD_BENCH_CLIENTS     session counts, comma separated (default 1,16,64)
//!   COORD_BENCH_MEMBERS     1 (default: standalone servers) or 3 or 5: an ensemble of
//!                           each (coordd --ensemble; ZooKeeper with Debian's zoo.cfg
//!                           timing), sessions spread over the members, RSS per member,
//!                           and at the end the write gap after kill -9 of the leader
//!   COORD_BENCH_ENFORCE=1   exit 1 when a target is missed

#[path = "common/null_zk.rs"]
mod null_zk;
#[path = "../tests/support/mod.rs"]
mod support;

use std::fs::{self, File};
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use support::coordd::CoorddEnsemble;
use support::zookeeper::{
    free_port, proc_status_kib, wait_for_imok, EnsembleOptions, ZooKeeper, ZooKeeperEnsemble,
};
use zookeeper_client as zk;

const VALUE_LEN: usize = 64;
/// Znodes loaded before the memory is compared (`COORD_BENCH_MEMORY_NODES`): the timed
/// phases create as many nodes as a server manages in the time, so memory after them
/// is not measured on equal data.
const MEMORY_NODES_DEFAULT: usize = 50_000;

/// Rounds (each server benchmarked once per round) by default and at most
/// (`COORD_BENCH_ROUNDS`). Even, so that each server goes first equally often.
const ROUNDS_DEFAULT: usize = 4;
const ROUNDS_MAX: usize = 16;

/// How long to wait at most for the disk to go quiet between two servers, and the
/// quiet interval that counts as settled (no sector written).
const SETTLE_WAIT_MS_MAX: u64 = 30_000;
const SETTLE_QUIET_MS: u64 = 500;

/// Sectors written so far on every block device (/proc/diskstats, field 10).
fn sectors_written() -> Option<u64> {
    let text = fs::read_to_string("/proc/diskstats").ok()?;
    Some(
        text.lines()
            .filter_map(|l| l.split_whitespace().nth(9)?.parse::<u64>().ok())
            .sum(),
    )
}

/// Lets the disk settle after a server is stopped and its data directory removed,
/// before the next server starts: `sync` (its dirty pages written back, the
/// directory's deletion and the filesystem's discards committed), then waits until no
/// sector has been written for `SETTLE_QUIET_MS`, at most `SETTLE_WAIT_MS_MAX`.
/// Without it the second server of a round measured its fsyncs against the first
/// one's writeback: whichever server ran second lost up to 3x (see RESULTS.md).
fn settle_disk() {
    let started = Instant::now();
    let _ = Command::new("sync").status();
    let deadline = started + Duration::from_millis(SETTLE_WAIT_MS_MAX);
    let mut last = sectors_written();
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(SETTLE_QUIET_MS));
        let now = sectors_written();
        if now.is_none() || now == last {
            break;
        }
        last = now;
    }
    eprintln!("coord bench: disk settled in {:.1?}", started.elapsed());
}

/// The fdatasync probe: appends of about one create's log record, into a file whose blocks
/// are already written (as coordd's preallocated segments are), in the temp directory the
/// servers' data directories are made in.
const FSYNC_PROBE_APPEND_BYTES: usize = 200;
const FSYNC_PROBE_APPENDS: usize = 1000;
const FSYNC_PROBE_FILE_BYTES: usize = 4 << 20;

/// p50 of one small append + fdatasync on this machine's disk, in us: the part of a durable
/// write at one session that no server can skip.
fn fdatasync_p50_us() -> io::Result<u64> {
    use std::io::Write;
    use std::os::unix::fs::FileExt;
    let dir = tempfile::tempdir()?;
    let mut f = File::create(dir.path().join("fsync-probe"))?;
    f.write_all(&vec![0u8; FSYNC_PROBE_FILE_BYTES])?;
    f.sync_all()?;
    let record = [b'x'; FSYNC_PROBE_APPEND_BYTES];
    let mut us = Vec::with_capacity(FSYNC_PROBE_APPENDS);
    for k in 0..FSYNC_PROBE_APPENDS {
        let t = Instant::now();
        f.write_all_at(&record, (k * FSYNC_PROBE_APPEND_BYTES) as u64)?;
        f.sync_data()?;
        us.push(t.elapsed().as_micros() as u64);
    }
    us.sort_unstable();
    Ok(us[us.len() / 2])
}

fn memory_nodes() -> usize {
    std::env::var("COORD_BENCH_MEMORY_NODES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(MEMORY_NODES_DEFAULT)
}

/// Creates exactly `memory_nodes()` znodes under /bench/mem from up to 16 sessions.
async fn load_same_data(sessions: &[Arc<zk::Client>]) -> Result<(), String> {
    let writers = &sessions[..sessions.len().min(16)];
    create_if_missing(&writers[0], "/bench/mem").await?;
    let total = memory_nodes();
    let mut tasks = tokio::task::JoinSet::new();
    for (i, client) in writers.iter().enumerate() {
        create_if_missing(client, &format!("/bench/mem/c{i}")).await?;
        let client = Arc::clone(client);
        let count = total / writers.len() + usize::from(i < total % writers.len());
        tasks.spawn(async move {
            let value = vec![b'm'; VALUE_LEN];
            for j in 0..count {
                let path = format!("/bench/mem/c{i}/n{j}");
                match tokio::time::timeout(OP_TIMEOUT, client.create(&path, &value, &persistent()))
                    .await
                {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => return Err(format!("create {path}: {e}")),
                    Err(_) => return Err(format!("create {path}: no reply within {OP_TIMEOUT:?}")),
                }
            }
            Ok(())
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.map_err(|e| format!("memory load task: {e}"))??;
    }
    Ok(())
}
const WATCH_ROUNDS: usize = 500;
const WARMUP: Duration = Duration::from_secs(1);
/// Creates per session in the warm-up, a count rather than a time: the faster server
/// would otherwise hold more warm-up nodes when the memory with "the same data" is taken.
const WARMUP_CREATES_PER_SESSION: u64 = 100;
/// Bound on the counted warm-up creates (a server this slow fails the run anyway).
const WARMUP_CREATES_WAIT: Duration = Duration::from_secs(30);
/// A request not answered by then counts as an error (a hung server must not hang the run).
const OP_TIMEOUT: Duration = Duration::from_secs(5);

// ---------------------------------------------------------------------------
// Servers
// ---------------------------------------------------------------------------

enum Server {
    ZooKeeper(ZooKeeper),
    Coordd(Coordd),
    /// `COORD_BENCH_MEMBERS` > 1: an ensemble of each.
    ZooKeeperEnsemble(ZooKeeperEnsemble),
    CoorddEnsemble(CoorddEnsemble),
    /// `COORD_BENCH_CANDIDATE=null`: canned replies, no state (`common/null_zk.rs`).
    Null(NullServer),
}

impl Server {
    /// Every member's client address.
    fn addrs(&self) -> Vec<String> {
        match self {
            Server::ZooKeeper(z) => vec![z.addr()],
            Server::Coordd(c) => vec![c.addr()],
            Server::Null(n) => vec![format!("127.0.0.1:{}", n.port)],
            Server::ZooKeeperEnsemble(e) => e.members().iter().map(|m| m.addr()).collect(),
            Server::CoorddEnsemble(e) => e.members.iter().map(|m| m.connect_string()).collect(),
        }
    }

    fn addr(&self) -> String {
        self.addrs().join(",")
    }

    /// Every member's pid.
    fn pids(&self) -> Vec<u32> {
        match self {
            Server::ZooKeeper(z) => vec![z.pid()],
            Server::Coordd(c) => vec![c.child.id()],
            Server::Null(n) => vec![n.child.id()],
            Server::ZooKeeperEnsemble(e) => e.members().iter().filter_map(|m| m.pid()).collect(),
            Server::CoorddEnsemble(e) => e.members.iter().filter_map(|m| m.pid()).collect(),
        }
    }

    /// The leader's client address (ensembles only), once one leads.
    fn leader_and_follower(&mut self) -> Option<(usize, String)> {
        match self {
            Server::ZooKeeperEnsemble(e) => {
                let id = e.wait_leader(Duration::from_secs(60)).ok()?;
                let follower = e.members().iter().find(|m| m.id != id)?.addr();
                let index = e.members().iter().position(|m| m.id == id)?;
                Some((index, follower))
            }
            Server::CoorddEnsemble(e) => {
                let all: Vec<usize> = (0..e.members.len()).collect();
                let leader = e.wait_leader(&all, Duration::from_secs(60));
                let follower = (0..e.members.len()).find(|i| *i != leader)?;
                Some((leader, e.members[follower].connect_string()))
            }
            _ => None,
        }
    }

    fn kill9_member(&mut self, index: usize) {
        match self {
            Server::ZooKeeperEnsemble(e) => {
                let id = e.members()[index].id;
                e.kill9(id);
            }
            Server::CoorddEnsemble(e) => e.members[index].kill9(),
            _ => {}
        }
    }
}

/// Members per server (`COORD_BENCH_MEMBERS`): 1 (standalone) or an ensemble of 3 or 5.
fn members() -> usize {
    std::env::var("COORD_BENCH_MEMBERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|n: &usize| [1, 3, 5].contains(n))
        .unwrap_or(1)
}

/// An ensemble member's kill -9 under a serial writer on a surviving member: the
/// longest time between two acknowledged setData (the last before the kill and the
/// first after), at most `FAILOVER_WAIT`.
async fn failover_gap(server: &mut Server) -> Result<Duration, String> {
    const FAILOVER_WAIT: Duration = Duration::from_secs(60);
    let (leader, follower) = server
        .leader_and_follower()
        .ok_or("no leader in the ensemble")?;
    let client = connect(&follower).await?;
    create_if_missing(&client, "/bench/failover").await?;
    let value = vec![b'f'; VALUE_LEN];
    let started = Instant::now();
    let mut last_ack = None;
    while started.elapsed() < Duration::from_secs(1) {
        if within(client.set_data("/bench/failover", &value, None)).await {
            last_ack = Some(Instant::now());
        }
    }
    let before = last_ack.ok_or("no write acknowledged before the kill")?;
    server.kill9_member(leader);
    let killed = Instant::now();
    while killed.elapsed() < FAILOVER_WAIT {
        if within(client.set_data("/bench/failover", &value, None)).await {
            return Ok(Instant::now() - before);
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    Err(format!(
        "no write acknowledged within {FAILOVER_WAIT:?} of the kill"
    ))
}

/// coordd on 127.0.0.1:<free port>, temp data dir; killed and removed on drop.
struct Coordd {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

/// The extra coordd flags in environment variable `var` (space separated); refused if
/// one touches fsync (the comparison runs fsync on for both).
fn extra_args(var: &str) -> Result<Vec<String>, String> {
    let extra: Vec<String> = std::env::var(var)
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    if extra.iter().any(|a| a.contains("fsync")) {
        return Err(format!(
            "{var} {extra:?} touch fsync; the comparison runs fsync on for both"
        ));
    }
    Ok(extra)
}

/// Starts an ensemble of `n` coordd members of `COORDD_BIN` with the extra flags in
/// environment variable `args_var`, and waits for its leader.
fn start_coordd_ensemble(n: usize, args_var: &str) -> CoorddEnsemble {
    let extra = extra_args(args_var).unwrap_or_else(|e| {
        eprintln!("coord bench: {e}");
        std::process::exit(1);
    });
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    let e = CoorddEnsemble::start_with_tick_and(n, 2000, &extra);
    let all: Vec<usize> = (0..n).collect();
    e.wait_leader(&all, Duration::from_secs(60));
    e
}

impl Coordd {
    fn binary() -> Result<PathBuf, String> {
        if let Some(bin) = std::env::var_os("COORDD_BIN") {
            let bin = PathBuf::from(bin);
            return if bin.is_file() {
                Ok(bin)
            } else {
                Err(format!("COORDD_BIN={} is not a file", bin.display()))
            };
        }
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| root.join("target"));
        let bin = target.join("release").join("coordd");
        if bin.is_file() {
            return Ok(bin);
        }
        eprintln!(
            "coordd: {} missing; running `cargo build --release -p coordd`",
            bin.display()
        );
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "--release", "-p", "coordd"])
            .current_dir(&root)
            .status()
            .map_err(|e| format!("cannot run cargo to build coordd: {e}"))?;
        if !status.success() || !bin.is_file() {
            return Err(format!(
                "coordd did not build ({status}); build it with `cargo build --release -p coordd` or set COORDD_BIN"
            ));
        }
        Ok(bin)
    }

    /// `args_var`: the environment variable with its extra flags.
    fn start(bin: &Path, args_var: &str) -> Result<Coordd, String> {
        let extra = extra_args(args_var)?;
        // ZooKeeper runs with maxClientCnxns=0 (no per-address limit; the default 60 would
        // refuse the 64-session phase from one address). Give coordd the same room when it
        // has such a limit.
        let mut limits = Vec::new();
        let help = Command::new(bin)
            .arg("--help")
            .output()
            .map(|o| o.stdout)
            .unwrap_or_default();
        let flag = "--connections-per-ip-max";
        if String::from_utf8_lossy(&help).contains(flag)
            && !extra.iter().any(|a| a.starts_with(flag))
        {
            limits = vec![flag.to_owned(), "100000".to_owned()];
        }
        let io_err = |e: io::Error| e.to_string();
        let dir = tempfile::Builder::new()
            .prefix("coordd-bench-")
            .tempdir()
            .map_err(io_err)?;
        let port = free_port();
        let data = dir.path().join("data");
        fs::create_dir(&data).map_err(io_err)?;
        let log = File::create(dir.path().join("coordd.out")).map_err(io_err)?;
        let mut cmd = Command::new(bin);
        support::die_with_starter(&mut cmd);
        let child = cmd
            .arg("--client-addr")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--data-dir")
            .arg(&data)
            .args(&limits)
            .args(&extra)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone().map_err(io_err)?))
            .stderr(Stdio::from(log))
            .spawn()
            .map_err(|e| format!("spawn {}: {e}", bin.display()))?;
        let mut c = Coordd { child, port, dir };
        let out_path = c.dir.path().join("coordd.out");
        let child = &mut c.child;
        wait_for_imok(
            SocketAddr::from(([127, 0, 0, 1], port)),
            Duration::from_secs(30),
            || match child.try_wait() {
                Ok(Some(status)) => Some(format!(
                    "coordd exited with {status} before answering imok; output:\n{}",
                    fs::read_to_string(&out_path).unwrap_or_default()
                )),
                _ => None,
            },
        )
        .map_err(|e| format!("coordd ({}) did not start: {e}", bin.display()))?;
        Ok(c)
    }

    fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

/// The null server, in a child process of this executable.
struct NullServer {
    child: Child,
    port: u16,
}

impl NullServer {
    fn start() -> Result<NullServer, String> {
        let io_err = |e: io::Error| e.to_string();
        let port = free_port();
        let exe = std::env::current_exe().map_err(io_err)?;
        let mut cmd = Command::new(exe);
        support::die_with_starter(&mut cmd);
        let child = cmd
            .env(null_zk::NULL_SERVE_ENV, format!("127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .spawn()
            .map_err(|e| format!("spawn the null server: {e}"))?;
        let mut n = NullServer { child, port };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline || matches!(n.child.try_wait(), Ok(Some(_))) {
                return Err(format!("the null server did not listen on port {port}"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(n)
    }
}

impl Drop for NullServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Coordd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------
// Load
// ---------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Create,
    Set,
    Get,
    Watch,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::Create => "create",
            Op::Set => "setData",
            Op::Get => "getData",
            Op::Watch => "watch latency",
        }
    }
}

struct Measured {
    op: Op,
    clients: usize,
    ops: u64,
    elapsed: Duration,
    hist: Histogram<u64>,
    errors: u64,
    /// CPU used during the phase, in % of one core: (server, this load generator).
    cpu_pct: (f64, f64),
}

/// utime + stime of a process, in clock ticks (/proc/PID/stat fields 14 and 15).
fn cpu_ticks(pid: &str) -> u64 {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The command name (field 2) may hold spaces; count fields after its ')'.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let at = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // After ')': field 3 is index 0, so utime (14) is 11 and stime (15) is 12.
    at(11) + at(12)
}

/// Measures CPU of the server and of this process around `phase`.
async fn with_cpu<F: std::future::Future<Output = Measured>>(
    server_pids: &[u32],
    phase: F,
) -> Measured {
    const TICKS_PER_SEC: f64 = 100.0; // USER_HZ on Linux
    let server_ticks = || -> u64 { server_pids.iter().map(|p| cpu_ticks(&p.to_string())).sum() };
    let (s0, c0, t0) = (server_ticks(), cpu_ticks("self"), Instant::now());
    let mut m = phase.await;
    let (s1, c1, secs) = (
        server_ticks(),
        cpu_ticks("self"),
        t0.elapsed().as_secs_f64(),
    );
    let pct = |a: u64, b: u64| (b.saturating_sub(a)) as f64 / TICKS_PER_SEC / secs * 100.0;
    m.cpu_pct = (pct(s0, s1), pct(c0, c1));
    m
}

impl Measured {
    fn ops_per_sec(&self) -> f64 {
        self.ops as f64 / self.elapsed.as_secs_f64()
    }
    fn p50_us(&self) -> u64 {
        self.hist.value_at_quantile(0.50)
    }
    fn p99_us(&self) -> u64 {
        self.hist.value_at_quantile(0.99)
    }
}

struct ServerResult {
    label: String,
    rows: Vec<Measured>,
    rss_idle_kib: Option<u64>,
    /// VmRSS holding exactly `memory_nodes()` znodes of VALUE_LEN bytes (and nothing
    /// else but the warm-up's few nodes): the same data on both servers.
    rss_same_data_kib: Option<u64>,
    rss_kib: Option<u64>,
    hwm_kib: Option<u64>,
    /// Ensembles: the write gap after kill -9 of the leader.
    failover_gap: Option<Duration>,
}

fn new_hist() -> Histogram<u64> {
    // 1 us .. 60 s, 3 significant digits.
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds")
}

fn persistent() -> zk::CreateOptions<'static> {
    zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all())
}

async fn connect(addr: &str) -> Result<zk::Client, String> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        // zookeeper-client builds its rustls configs from the process default, which is
        // ambiguous with ring (ours) and aws-lc-rs (its) both linked.
        coordd_tls::install_process_default_provider();
        match zk::Client::connector()
            .session_timeout(Duration::from_secs(30))
            .connect(addr)
            .await
        {
            Ok(c) => return Ok(c),
            Err(e) if Instant::now() < deadline => {
                eprintln!("connect {addr}: {e}; retrying");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => return Err(format!("cannot open a session on {addr}: {e}")),
        }
    }
}

async fn create_if_missing(client: &zk::Client, path: &str) -> Result<(), String> {
    match tokio::time::timeout(OP_TIMEOUT, client.create(path, b"", &persistent())).await {
        Ok(Ok(_)) | Ok(Err(zk::Error::NodeExists)) => Ok(()),
        Ok(Err(e)) => Err(format!("create {path}: {e}")),
        Err(_) => Err(format!("create {path}: no reply within {OP_TIMEOUT:?}")),
    }
}

async fn within<T>(f: impl std::future::Future<Output = Result<T, zk::Error>>) -> bool {
    matches!(tokio::time::timeout(OP_TIMEOUT, f).await, Ok(Ok(_)))
}

/// Runs `op` on every session for `dur`, one request in flight per session; a session
/// stops early after `per_session_max` requests.
async fn run_phase(
    clients: &[Arc<zk::Client>],
    root: &str,
    op: Op,
    dur: Duration,
    per_session_max: Option<u64>,
) -> Measured {
    let value = Arc::new(vec![b'x'; VALUE_LEN]);
    let start = Instant::now();
    let deadline = start + dur;
    let mut tasks = tokio::task::JoinSet::new();
    for (i, client) in clients.iter().enumerate() {
        let client = Arc::clone(client);
        let value = Arc::clone(&value);
        let base = format!("{root}/c{i}");
        tasks.spawn(async move {
            let mut hist = new_hist();
            let (mut ops, mut errors) = (0u64, 0u64);
            let own = format!("{base}/n0");
            let mut k = 0u64;
            while Instant::now() < deadline && per_session_max.is_none_or(|max| ops + errors < max)
            {
                let t = Instant::now();
                let ok = match op {
                    Op::Create => {
                        k += 1;
                        let path = format!("{base}/n{k}");
                        within(client.create(&path, &value, &persistent())).await
                    }
                    Op::Set => within(client.set_data(&own, &value, None)).await,
                    Op::Get => within(client.get_data(&own)).await,
                    Op::Watch => unreachable!("watch latency has its own loop"),
                };
                let us = t.elapsed().as_micros().max(1) as u64;
                if ok {
                    ops += 1;
                    hist.saturating_record(us);
                } else {
                    errors += 1;
                }
            }
            (hist, ops, errors)
        });
    }
    let mut hist = new_hist();
    let (mut ops, mut errors) = (0, 0);
    while let Some(r) = tasks.join_next().await {
        let (h, o, e) = r.expect("load task panicked");
        hist.add(&h).expect("merge histograms");
        ops += o;
        errors += e;
    }
    Measured {
        op,
        clients: clients.len(),
        ops,
        elapsed: start.elapsed(),
        hist,
        errors,
        cpu_pct: (0.0, 0.0),
    }
}

/// Session `setter` sets data, session `watcher` holds a data watch: latency from the
/// setData request being sent to the watcher's event.
async fn watch_latency(
    setter: &zk::Client,
    watcher: &zk::Client,
    path: &str,
    budget: Duration,
) -> Result<Measured, String> {
    create_if_missing(setter, path).await?;
    let value = vec![b'w'; VALUE_LEN];
    let mut hist = new_hist();
    let (mut ops, mut errors) = (0u64, 0u64);
    let start = Instant::now();
    for _ in 0..WATCH_ROUNDS {
        if start.elapsed() >= budget {
            break;
        }
        // The watch is registered once this reply is in.
        let w = match tokio::time::timeout(OP_TIMEOUT, watcher.get_and_watch_data(path)).await {
            Ok(Ok((_, _, w))) => w,
            _ => {
                errors += 1;
                continue;
            }
        };
        let t0 = Instant::now();
        let set = within(setter.set_data(path, &value, None));
        let event = async {
            let e = tokio::time::timeout(OP_TIMEOUT, w.changed()).await;
            (e, t0.elapsed())
        };
        let (set_ok, (event, latency)) = tokio::join!(set, event);
        let fired = matches!(event, Ok(ref e) if e.event_type == zk::EventType::NodeDataChanged);
        if set_ok && fired {
            ops += 1;
            hist.saturating_record(latency.as_micros().max(1) as u64);
        } else {
            errors += 1;
        }
    }
    Ok(Measured {
        op: Op::Watch,
        clients: 2,
        ops,
        elapsed: start.elapsed(),
        hist,
        errors,
        cpu_pct: (0.0, 0.0),
    })
}

async fn bench_server(
    label: &str,
    server: &Server,
    client_counts: &[usize],
    phase: Duration,
) -> Result<ServerResult, String> {
    let addrs = server.addrs();
    let pids = server.pids();
    // Per member (the mean over an ensemble's members).
    let rss = |key: &str| -> Option<u64> {
        let v: Option<Vec<u64>> = pids.iter().map(|p| proc_status_kib(*p, key)).collect();
        v.map(|v| v.iter().sum::<u64>() / v.len().max(1) as u64)
    };
    let rss_idle_kib = rss("VmRSS");
    let max_clients = client_counts.iter().copied().max().unwrap_or(1);
    eprintln!(
        "[{label}] {} pids {pids:?}: connecting {max_clients} sessions",
        addrs.join(",")
    );
    let mut sessions = Vec::with_capacity(max_clients);
    for i in 0..max_clients {
        // Spread over an ensemble's members, as clients with a shuffled list would be.
        let s = connect(&addrs[i % addrs.len()])
            .await
            .map_err(|e| format!("session {} of {max_clients}: {e}", sessions.len() + 1))?;
        sessions.push(Arc::new(s));
    }
    let admin = &sessions[0];
    create_if_missing(admin, "/bench").await?;

    // Warm-up (not measured): JIT for the JVM, allocator and caches for both. Its
    // creates are counted, not timed, so both trees hold the same nodes afterwards.
    {
        let root = "/bench/warmup";
        create_if_missing(admin, root).await?;
        let some = &sessions[..max_clients.min(16)];
        for i in 0..some.len() {
            create_if_missing(admin, &format!("{root}/c{i}")).await?;
            create_if_missing(admin, &format!("{root}/c{i}/n0")).await?;
        }
        let creates = run_phase(
            some,
            root,
            Op::Create,
            WARMUP_CREATES_WAIT,
            Some(WARMUP_CREATES_PER_SESSION),
        )
        .await;
        if creates.errors > 0 {
            return Err(format!(
                "{} of the warm-up's creates failed or timed out",
                creates.errors
            ));
        }
        for op in [Op::Set, Op::Get] {
            run_phase(some, root, op, WARMUP / 3, None).await;
        }
    }

    // Equal data first, so memory is compared on the same tree.
    load_same_data(&sessions).await?;
    let rss_same_data_kib = rss("VmRSS");
    eprintln!(
        "[{label}] {} znodes of {VALUE_LEN} B loaded: VmRSS {}",
        memory_nodes(),
        mib(rss_same_data_kib)
    );

    let mut rows = Vec::new();
    for &n in client_counts {
        let root = format!("/bench/n{n}");
        create_if_missing(admin, &root).await?;
        for i in 0..n {
            create_if_missing(admin, &format!("{root}/c{i}")).await?;
            create_if_missing(admin, &format!("{root}/c{i}/n0")).await?;
        }
        for op in [Op::Create, Op::Set, Op::Get] {
            let m = with_cpu(&pids, run_phase(&sessions[..n], &root, op, phase, None)).await;
            eprintln!(
                "[{label}] {:>8} x{:<3} {:>9.0} ops/s  p50 {:>6} us  p99 {:>6} us  errors {}  cpu server {:.0}% load {:.0}%",
                op.name(),
                n,
                m.ops_per_sec(),
                m.p50_us(),
                m.p99_us(),
                m.errors,
                m.cpu_pct.0,
                m.cpu_pct.1
            );
            rows.push(m);
        }
    }
    let m = if matches!(server, Server::Null(_)) {
        // The null server keeps no watches: no events to time.
        Measured {
            op: Op::Watch,
            clients: 2,
            ops: 0,
            elapsed: Duration::ZERO,
            hist: new_hist(),
            errors: 0,
            cpu_pct: (0.0, 0.0),
        }
    } else {
        watch_latency(
            &sessions[0],
            &sessions[1.min(max_clients - 1)],
            "/bench/watched",
            phase,
        )
        .await?
    };
    eprintln!(
        "[{label}] watch latency: {} events, p50 {} us, p99 {} us, errors {}",
        m.ops,
        m.p50_us(),
        m.p99_us(),
        m.errors
    );
    rows.push(m);

    let rss_kib = rss("VmRSS");
    let hwm_kib = rss("VmHWM");
    drop(sessions);
    Ok(ServerResult {
        label: label.to_owned(),
        rows,
        rss_idle_kib,
        rss_same_data_kib,
        rss_kib,
        hwm_kib,
        failover_gap: None,
    })
}

// ---------------------------------------------------------------------------
// Report
// ---------------------------------------------------------------------------

fn mib(kib: Option<u64>) -> String {
    kib.map_or("n/a".into(), |k| format!("{:.1} MiB", k as f64 / 1024.0))
}

fn ratio(a: f64, b: f64) -> String {
    if b > 0.0 && a.is_finite() {
        format!("{:.2}x", a / b)
    } else {
        "n/a".into()
    }
}

/// Prints the comparison as Markdown (pastes straight into benches/RESULTS.md) and
/// returns the targets missed.
/// Throughput ratio candidate/baseline of row `i` of a round.
fn round_ratio(round: &(ServerResult, ServerResult), i: usize) -> f64 {
    let (base, cand) = round;
    cand.rows[i].ops_per_sec() / base.rows[i].ops_per_sec().max(f64::MIN_POSITIVE)
}

/// Prints the results of all rounds: per row, the round with the median ratio in full
/// (both servers' figures from that same round), then every round's ratio. Targets are
/// judged on the median ratios. Returns the targets missed.
fn report(
    rounds: &[(ServerResult, ServerResult)],
    phase: Duration,
    fdatasync_us: Option<u64>,
    n_members: usize,
) -> Vec<String> {
    let (base, cand) = &rounds[0];
    let (b, c) = (&base.label, &cand.label);
    let n_rows = base.rows.len();
    // Per row, the index of the round whose ratio is the median (lower median).
    let median_round: Vec<usize> = (0..n_rows)
        .map(|i| {
            let mut idx: Vec<usize> = (0..rounds.len()).collect();
            idx.sort_by(|&x, &y| round_ratio(&rounds[x], i).total_cmp(&round_ratio(&rounds[y], i)));
            idx[(idx.len() - 1) / 2]
        })
        .collect();
    println!();
    println!("## coord bench: {c} (candidate) vs {b} (baseline)");
    println!();
    println!("{phase:?} per phase, value {VALUE_LEN} B, one request in flight per session, fsync on for both.");
    println!(
        "{} round(s), the servers in alternating order; each row shows the round with the median ratio.",
        rounds.len()
    );
    println!();
    println!(
        "| op | sessions | {c} ops/s | {b} ops/s | ops/s {c}/{b} | {c} p50/p99 us | {b} p50/p99 us | p99 {c}/{b} | cpu% server/load {c} | cpu% server/load {b} | errors {c}/{b} |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let cpu = |m: &Measured| {
        if m.op == Op::Watch {
            "-".to_owned()
        } else {
            format!("{:.0}/{:.0}", m.cpu_pct.0, m.cpu_pct.1)
        }
    };
    let mut missed = Vec::new();
    for (i, &r) in median_round.iter().enumerate() {
        let (mb, mc) = (&rounds[r].0.rows[i], &rounds[r].1.rows[i]);
        assert_eq!((mb.op, mb.clients), (mc.op, mc.clients));
        let tput = if mb.op == Op::Watch {
            "-".to_owned()
        } else {
            ratio(mc.ops_per_sec(), mb.ops_per_sec())
        };
        let (cops, bops) = if mb.op == Op::Watch {
            (format!("{} events", mc.ops), format!("{} events", mb.ops))
        } else {
            (
                format!("{:.0}", mc.ops_per_sec()),
                format!("{:.0}", mb.ops_per_sec()),
            )
        };
        println!(
            "| {} | {} | {} | {} | {} | {}/{} | {}/{} | {} | {} | {} | {}/{} |",
            mb.op.name(),
            mb.clients,
            cops,
            bops,
            tput,
            mc.p50_us(),
            mc.p99_us(),
            mb.p50_us(),
            mb.p99_us(),
            ratio(mc.p99_us() as f64, mb.p99_us() as f64),
            cpu(mc),
            cpu(mb),
            mc.errors,
            mb.errors
        );
        let target = match mb.op {
            Op::Create | Op::Set => Some(2.0),
            Op::Get => Some(1.5),
            Op::Watch => None,
        };
        if let Some(t) = target {
            let r = mc.ops_per_sec() / mb.ops_per_sec().max(f64::MIN_POSITIVE);
            if r < t {
                missed.push(format!("{} x{}: {r:.2}x < {t}x", mb.op.name(), mb.clients));
            }
        }
        let errors: u64 = rounds.iter().map(|(_, cr)| cr.rows[i].errors).sum();
        if errors > mc.errors {
            missed.push(format!(
                "{} x{}: {errors} errors on {c} over all rounds",
                mb.op.name(),
                mb.clients
            ));
        } else if mc.errors > 0 {
            missed.push(format!(
                "{} x{}: {} errors on {c}",
                mb.op.name(),
                mb.clients,
                mc.errors
            ));
        }
    }
    if rounds.len() > 1 {
        println!();
        let heads: Vec<String> = (1..=rounds.len()).map(|k| format!("round {k}")).collect();
        println!("| op | sessions | {} | median |", heads.join(" | "));
        println!("|---|---:|{}---:|", "---:|".repeat(rounds.len()));
        for (i, &r) in median_round.iter().enumerate() {
            let row = &base.rows[i];
            if row.op == Op::Watch {
                continue;
            }
            let each: Vec<String> = rounds
                .iter()
                .map(|rd| format!("{:.2}x", round_ratio(rd, i)))
                .collect();
            println!(
                "| {} | {} | {} | {:.2}x |",
                row.op.name(),
                row.clients,
                each.join(" | "),
                round_ratio(&rounds[r], i)
            );
        }
    }
    println!();
    println!("| memory | {c} | {b} | {c}/{b} |");
    println!("|---|---:|---:|---:|");
    let kib_ratio = |x: Option<u64>, y: Option<u64>| match (x, y) {
        (Some(x), Some(y)) => ratio(x as f64, y as f64),
        _ => "n/a".into(),
    };
    println!(
        "| RSS idle (VmRSS after start) | {} | {} | {} |",
        mib(cand.rss_idle_kib),
        mib(base.rss_idle_kib),
        kib_ratio(cand.rss_idle_kib, base.rss_idle_kib)
    );
    println!(
        "| RSS with the same {} znodes of {VALUE_LEN} B (VmRSS) | {} | {} | {} |",
        memory_nodes(),
        mib(cand.rss_same_data_kib),
        mib(base.rss_same_data_kib),
        kib_ratio(cand.rss_same_data_kib, base.rss_same_data_kib)
    );
    println!(
        "| RSS after load (VmRSS; each holds the nodes it had time to create) | {} | {} | {} |",
        mib(cand.rss_kib),
        mib(base.rss_kib),
        kib_ratio(cand.rss_kib, base.rss_kib)
    );
    println!(
        "| peak RSS (VmHWM) | {} | {} | {} |",
        mib(cand.hwm_kib),
        mib(base.hwm_kib),
        kib_ratio(cand.hwm_kib, base.hwm_kib)
    );
    // The leader-kill write gap: one measurement per server and round; the median of
    // each server's, and every round's.
    let gaps = |pick: fn(&(ServerResult, ServerResult)) -> Option<Duration>| -> Vec<f64> {
        rounds
            .iter()
            .filter_map(pick)
            .map(|d| d.as_secs_f64() * 1000.0)
            .collect()
    };
    let (cand_gaps, base_gaps) = (gaps(|r| r.1.failover_gap), gaps(|r| r.0.failover_gap));
    if !cand_gaps.is_empty() && cand_gaps.len() == base_gaps.len() {
        let median = |v: &[f64]| {
            let mut v = v.to_vec();
            v.sort_by(f64::total_cmp);
            let n = v.len();
            if n % 2 == 1 {
                v[n / 2]
            } else {
                (v[n / 2 - 1] + v[n / 2]) / 2.0
            }
        };
        let (cm, bm) = (median(&cand_gaps), median(&base_gaps));
        let r = cm / bm;
        let list = |v: &[f64]| {
            v.iter()
                .map(|x| format!("{x:.0}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        println!();
        println!("| leader kill -9, writer on a follower | {c} | {b} | {c}/{b} |");
        println!("|---|---:|---:|---:|");
        println!("| write gap, median over rounds | {cm:.0} ms | {bm:.0} ms | {r:.2}x |");
        println!(
            "| write gap per round, ms | {} | {} | |",
            list(&cand_gaps),
            list(&base_gaps)
        );
        if r > 0.5 {
            missed.push(format!("leader kill write gap {r:.2}x > 0.5x"));
        }
    }
    match (cand.rss_same_data_kib, base.rss_same_data_kib) {
        (Some(x), Some(y)) if x * 10 > y => {
            missed.push(format!("RSS with the same data: {x} KiB > 1/10 of {y} KiB"))
        }
        (Some(_), Some(_)) => {}
        _ => missed.push("RSS not measured".into()),
    }
    print_write_floor(rounds, &median_round, fdatasync_us, n_members);
    println!();
    println!("cpu%: CPU time during the phase in % of one core (2 cores = 200%), of the server and of the load generator (this process).");
    println!();
    println!("Targets: writes (create, setData) >= 2x, reads (getData) >= 1.5x ops/s; RSS with the same data <= 1/10.");
    if missed.is_empty() {
        println!("All targets met.");
    } else {
        println!("Missed:");
        for m in &missed {
            println!("- {m}");
        }
    }
    missed
}

/// What a durable write at one session cannot go below on this machine, from this run's
/// figures: the candidate's read round trip (getData x1 p50: the client, the loopback and a
/// server that only looks up) plus the fdatasync the write must wait for. An ensemble adds
/// one round trip between members and the follower's fdatasync, which a leader can overlap
/// with its own; openraft 0.9's leader does not (it writes its log before it replicates),
/// so for coordd the two fdatasyncs come one after the other. Set beside what 2x the
/// baseline's create at one session asks for, it tells whether that target is within reach.
fn print_write_floor(
    rounds: &[(ServerResult, ServerResult)],
    median_round: &[usize],
    fdatasync_us: Option<u64>,
    n_members: usize,
) {
    let Some(fsync) = fdatasync_us else { return };
    let row = |op: Op| {
        rounds[0]
            .0
            .rows
            .iter()
            .position(|m| m.op == op && m.clients == 1)
    };
    let (Some(get), Some(create)) = (row(Op::Get), row(Op::Create)) else {
        return;
    };
    let (b, c) = (&rounds[0].0.label, &rounds[0].1.label);
    let rtt = rounds[median_round[get]].1.rows[get].p50_us();
    let base_create = rounds[median_round[create]].0.rows[create].p50_us();
    let needed = base_create / 2;
    let verdict = |floor: u64| {
        if floor <= needed {
            "above the floor, reachable in principle"
        } else {
            "below the floor, out of reach"
        }
    };
    println!();
    println!(
        "Durable-write floor at 1 session, this run (round trip: {c}'s getData x1 p50, {rtt} us; \
         fdatasync: p50 of {FSYNC_PROBE_APPENDS} appends of {FSYNC_PROBE_APPEND_BYTES} B on this disk, {fsync} us). \
         2x {b}'s create at 1 session ({base_create} us p50) needs <= {needed} us."
    );
    if n_members > 1 {
        let any = 2 * rtt + fsync;
        let serial = 2 * rtt + 2 * fsync;
        println!(
            "- any server: 2 round trips (client, members) + 1 fdatasync (the leader's overlapping the follower's) = {any} us: {}.",
            verdict(any)
        );
        println!(
            "- a leader that writes its log before replicating (openraft 0.9): 2 round trips + 2 fdatasyncs = {serial} us: {}.",
            verdict(serial)
        );
    } else {
        let floor = rtt + fsync;
        println!(
            "- any server: 1 round trip + 1 fdatasync = {floor} us: {}.",
            verdict(floor)
        );
    }
}

/// The result, or the reason printed and exit 1 once the server is stopped.
fn finish(result: Result<ServerResult, String>, server: Server) -> ServerResult {
    match result {
        Ok(r) => r,
        Err(e) => {
            let addr = server.addr();
            let log = match &server {
                Server::ZooKeeper(z) => z.output(),
                Server::Coordd(c) => {
                    fs::read_to_string(c.dir.path().join("coordd.out")).unwrap_or_default()
                }
                Server::CoorddEnsemble(e) => e.members.iter().map(|m| m.log()).collect(),
                Server::ZooKeeperEnsemble(_) | Server::Null(_) => String::new(),
            };
            drop(server);
            let tail: Vec<&str> = log.lines().rev().take(20).collect();
            eprintln!("coord bench: server on {addr} failed under the load: {e}");
            eprintln!("last lines of its output:");
            for line in tail.iter().rev() {
                eprintln!("  {line}");
            }
            std::process::exit(1);
        }
    }
}

fn main() {
    if let Ok(addr) = std::env::var(null_zk::NULL_SERVE_ENV) {
        null_zk::serve(&addr);
        return;
    }
    // This thread starts every server and lives for the run: a bench killed midway
    // (Ctrl-C, SIGKILL) takes its servers with it.
    support::servers_die_with_their_starter();
    if std::env::var_os("COORD_BENCH_BASELINE_BIN").is_none() {
        if let Err(reason) = ZooKeeper::available() {
            eprintln!("coord bench needs Apache ZooKeeper for the comparison: {reason}");
            std::process::exit(1);
        }
    }
    let phase = Duration::from_secs_f64(
        std::env::var("COORD_BENCH_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(3.0),
    );
    let client_counts: Vec<usize> = std::env::var("COORD_BENCH_CLIENTS")
        .ok()
        .map(|s| {
            s.split(',')
                .filter_map(|x| x.trim().parse().ok())
                .filter(|&n| n > 0)
                .collect()
        })
        .filter(|v: &Vec<usize>| !v.is_empty())
        .unwrap_or_else(|| vec![1, 16, 64]);
    let candidate = std::env::var("COORD_BENCH_CANDIDATE").unwrap_or_else(|_| "coordd".into());

    // Find (or build) coordd before spending a minute on the baseline.
    let coordd_bin = if candidate == "coordd" {
        match Coordd::binary() {
            Ok(bin) => Some(bin),
            Err(e) => {
                eprintln!("coord bench: {e}");
                std::process::exit(1);
            }
        }
    } else {
        None
    };

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let started = Instant::now();

    // One server on the 2 cores at a time: each is stopped before the other starts.
    // Rounds alternate the order (baseline first, then candidate first, ...) so that a
    // drift of the machine during the run does not favour one of them.
    let rounds_n: usize = std::env::var("COORD_BENCH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .filter(|&n| (1..=ROUNDS_MAX).contains(&n))
        .unwrap_or(ROUNDS_DEFAULT);
    let n_members = members();
    // An ensemble: bench, then the leader's kill -9 under a writer (the server is
    // dropped after it).
    let with_failover = |r: Result<ServerResult, String>, server: &mut Server| {
        let mut r = r?;
        if n_members > 1 {
            let gap = rt.block_on(failover_gap(server))?;
            eprintln!("[{}] leader kill -9: write gap {gap:?}", r.label);
            r.failover_gap = Some(gap);
        }
        Ok(r)
    };
    let baseline_bin = std::env::var_os("COORD_BENCH_BASELINE_BIN").map(PathBuf::from);
    let run_base = || {
        if let Some(bin) = baseline_bin.as_ref().filter(|_| n_members > 1) {
            // The candidate sets COORDD_BIN again before it starts its own.
            std::env::set_var("COORDD_BIN", bin);
            let e = start_coordd_ensemble(n_members, "COORD_BENCH_BASELINE_ARGS");
            let mut server = Server::CoorddEnsemble(e);
            let r = rt.block_on(bench_server("baseline", &server, &client_counts, phase));
            let r = with_failover(r, &mut server);
            return finish(r, server);
        }
        if let Some(bin) = &baseline_bin {
            let server = match Coordd::start(bin, "COORD_BENCH_BASELINE_ARGS") {
                Ok(c) => Server::Coordd(c),
                Err(e) => {
                    eprintln!("coord bench: baseline: {e}");
                    std::process::exit(1);
                }
            };
            let r = rt.block_on(bench_server("baseline", &server, &client_counts, phase));
            return finish(r, server);
        }
        let mut server = if n_members > 1 {
            // Debian's zoo.cfg timing (tickTime 2000, initLimit 10, syncLimit 5), fsync
            // on, the JVM's defaults: ZooKeeper as shipped.
            let opts = EnsembleOptions {
                tick_time_ms: 2000,
                init_limit: 10,
                sync_limit: 5,
                min_session_timeout_ms: 4000,
                max_session_timeout_ms: 40_000,
                force_sync: true,
                extra_cfg: Vec::new(),
                jvm_flags: Vec::new(),
            };
            let mut e = ZooKeeperEnsemble::start_with(n_members, opts).unwrap_or_else(|e| {
                eprintln!("cannot start a ZooKeeper ensemble: {e}");
                std::process::exit(1);
            });
            if let Err(err) = e.wait_leader(Duration::from_secs(60)) {
                eprintln!("the ZooKeeper ensemble elected no leader: {err}");
                std::process::exit(1);
            }
            Server::ZooKeeperEnsemble(e)
        } else {
            Server::ZooKeeper(ZooKeeper::start().unwrap_or_else(|e| {
                eprintln!("cannot start ZooKeeper: {e}");
                std::process::exit(1);
            }))
        };
        let r = rt.block_on(bench_server("zookeeper", &server, &client_counts, phase));
        let r = with_failover(r, &mut server);
        finish(r, server)
    };
    let run_cand = || {
        let (label, mut server) = match candidate.as_str() {
            "coordd" if n_members > 1 => {
                std::env::set_var("COORDD_BIN", coordd_bin.as_deref().expect("resolved above"));
                let e = start_coordd_ensemble(n_members, "COORDD_ARGS");
                ("coordd", Server::CoorddEnsemble(e))
            }
            "coordd" => match Coordd::start(
                coordd_bin.as_deref().expect("resolved above"),
                "COORDD_ARGS",
            ) {
                Ok(c) => ("coordd", Server::Coordd(c)),
                Err(e) => {
                    eprintln!("coord bench: {e}");
                    std::process::exit(1);
                }
            },
            "null" => match NullServer::start() {
                Ok(n) => ("null", Server::Null(n)),
                Err(e) => {
                    eprintln!("coord bench: {e}");
                    std::process::exit(1);
                }
            },
            "zookeeper" => match ZooKeeper::start() {
                Ok(z) => ("zookeeper#2", Server::ZooKeeper(z)),
                Err(e) => {
                    eprintln!("cannot start the second ZooKeeper: {e}");
                    std::process::exit(1);
                }
            },
            other => {
                eprintln!("COORD_BENCH_CANDIDATE must be coordd, zookeeper or null, not {other:?}");
                std::process::exit(2);
            }
        };
        let r = rt.block_on(bench_server(label, &server, &client_counts, phase));
        let r = with_failover(r, &mut server);
        finish(r, server)
    };
    // Before any server runs, on a quiet disk.
    settle_disk();
    let fdatasync_us = match fdatasync_p50_us() {
        Ok(us) => Some(us),
        Err(e) => {
            eprintln!("coord bench: fdatasync probe failed: {e}");
            None
        }
    };
    eprintln!(
        "coord bench: fdatasync of a {FSYNC_PROBE_APPEND_BYTES} B append, p50 {fdatasync_us:?} us"
    );
    let mut rounds = Vec::with_capacity(rounds_n);
    for k in 0..rounds_n {
        eprintln!("coord bench: round {} of {rounds_n}", k + 1);
        settle_disk();
        let round = if k % 2 == 0 {
            let base = run_base();
            settle_disk();
            (base, run_cand())
        } else {
            let cand = run_cand();
            settle_disk();
            (run_base(), cand)
        };
        rounds.push(round);
    }
    let missed = report(&rounds, phase, fdatasync_us, n_members);
    eprintln!("coord bench took {:.1?}", started.elapsed());
    if !missed.is_empty() && std::env::var("COORD_BENCH_ENFORCE").as_deref() == Ok("1") {
        std::process::exit(1);
    }
}
