//! The demo's story: start everything, wait for the election, run the app's load
//! through the router, kill the master's node, measure the write gap, restart the node
//! and wait for it to rejoin as a replica; show it live (a table redrawn every second)
//! or, with `--unattended`, as plain lines and a summary.
//!
//! Every wait has a deadline; a missed one ends the demo with a message naming the
//! step, the tails of the logs, and exit status 1. Ctrl-C / SIGTERM / SIGHUP end it
//! with status 130 after the cleanup.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt::Write as _;
use std::io::{IsTerminal, Write as _};
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use coordd_client::{Client, ClientConfig};
use switchyard_proxy::agent::status::{self, ClusterStatus};
use switchyard_proxy::namespace::Namespace;
use switchyard_proxy::pg::{self, Conninfo, OsUser, PgBinaries};
use switchyard_proxy::records::{LeaderState, MemberState, Role};
use switchyard_proxy::router::Router;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::procs::{Kind, Registry};

/// Options of `switchyard-demo demo`.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "demo")]
pub struct DemoArgs {
    /// Run the story unattended: plain lines, a summary, exit 0 when every step
    /// happened in time (1 when one did not).
    #[arg(long)]
    pub unattended: bool,
    /// Seconds of steady load before the master is killed [default: 5 unattended,
    /// 15 live].
    #[arg(long)]
    pub steady_secs: Option<u64>,
    /// How many times the master's node is killed (each round: steady load, kill,
    /// failover, rejoin) [default: 1 unattended, until Ctrl-C live].
    #[arg(long)]
    pub failovers: Option<u32>,
    /// Seconds of load after the old master rejoined, before the summary (unattended).
    #[arg(long, default_value_t = 3)]
    pub tail_secs: u64,
    /// The agents' coordd session timeout: a dead master's `leader` znode goes after
    /// this, which is most of the write gap. Shorter is a shorter gap, but a master
    /// that misses its heartbeats for two thirds of it fences itself: 4.5 s survives a
    /// coordd leader election on a loaded machine (README, "Agents and routers").
    #[arg(long, default_value_t = 4_500)]
    pub session_timeout_ms: u32,
    /// Statements per second of each of the app's tasks (one writer, two readers).
    #[arg(long, default_value_t = 100)]
    pub rate: u32,
    /// PostgreSQL server binaries [default: env PG_BINDIR, else `pg_config --bindir`,
    /// else /usr/lib/postgresql/15/bin].
    #[arg(long)]
    pub pg_bindir: Option<PathBuf>,
    /// TLS everywhere coordd is involved: a test CA (written under the run's temporary
    /// directory), mutual TLS between the coordd members, and the agents, the router and
    /// the demo's own client on coordd's TLS client ports with client certificates.
    #[arg(long)]
    pub tls: bool,
}

const CLUSTER: &str = "demo";
const NODES: usize = 3;
/// Bound on the ensemble forming.
const ENSEMBLE_DEADLINE: Duration = Duration::from_secs(30);
/// Bound on initdb, the election and the base backups.
const BOOTSTRAP_DEADLINE: Duration = Duration::from_secs(90);
/// Bound on the app's start (router connected, table replayed on the replicas).
const APP_DEADLINE: Duration = Duration::from_secs(30);
/// Bound on reads reaching both replicas, past the steady period.
const READS_DEADLINE: Duration = Duration::from_secs(20);
/// Bound on the first write on a new master, past the session timeout.
const FAILOVER_DEADLINE: Duration = Duration::from_secs(60);
/// Bound on the old master serving reads again as a replica.
const REJOIN_DEADLINE: Duration = Duration::from_secs(90);
const POLL: Duration = Duration::from_millis(100);

/// Agent settings for the demo: trust authentication on 127.0.0.0/8 only, a small
/// server, fsync off (everything is thrown away; a process crash loses nothing
/// without fsync, only an OS crash would).
const AGENT_TOML: &str = r#"
initdb_auth_host = "trust"
initdb_auth_local = "trust"
initdb_no_sync = true
hba = ["host all all 127.0.0.0/8 trust", "host replication all 127.0.0.0/8 trust"]
[conf]
fsync = "off"
shared_buffers = "16MB"
max_connections = "40"
"#;

pub fn main(args: DemoArgs) -> ExitCode {
    let (bins, pg_user) = match find_postgres(args.pg_bindir.as_deref()) {
        Ok(x) => x,
        Err(msg) => {
            eprintln!("switchyard-demo: {msg}");
            return ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("switchyard-demo: tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut signals = match rt.block_on(async { Signals::install() }) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("switchyard-demo: signal handlers: {e}");
            return ExitCode::FAILURE;
        }
    };
    let reg = match Registry::new(bins.bindir().to_path_buf(), pg_user) {
        Ok(r) => Arc::new(r),
        Err(e) => {
            eprintln!("switchyard-demo: temporary directory: {e}");
            return ExitCode::FAILURE;
        }
    };
    let live = !args.unattended && std::io::stdout().is_terminal();
    let out = Arc::new(Output::new(live));
    out.line(&format!(
        "switchyard-demo: temp dir {} (removed at exit); PostgreSQL {} from {}",
        reg.root().display(),
        bins.version(),
        bins.bindir().display()
    ));
    let outcome = rt.block_on(async {
        tokio::select! {
            r = run(reg.clone(), args.clone(), bins.bindir().to_path_buf(), out.clone()) => match r {
                Ok(()) => Outcome::Done,
                Err(e) => Outcome::Failed(e),
            },
            sig = signals.recv() => Outcome::Interrupted(sig),
        }
    });
    out.stop_live();
    let code = match outcome {
        Outcome::Done => {
            out.print_summary();
            println!("demo: OK");
            ExitCode::SUCCESS
        }
        Outcome::Failed(e) => {
            out.print_summary();
            eprintln!("switchyard-demo: FAILED: {e}");
            eprintln!("last log lines:\n{}", reg.log_tails(15));
            ExitCode::FAILURE
        }
        Outcome::Interrupted(sig) => {
            out.print_summary();
            println!("switchyard-demo: {sig}: stopping everything");
            ExitCode::from(130)
        }
    };
    // Load tasks, the router and the ticker stop with the runtime; then the processes.
    rt.shutdown_timeout(Duration::from_secs(2));
    let report = reg.cleanup();
    println!("switchyard-demo: cleanup: {report}");
    let _ = std::io::stdout().flush();
    code
}

enum Outcome {
    Done,
    Failed(String),
    Interrupted(&'static str),
}

/// SIGINT, SIGTERM and SIGHUP, caught from the moment this returns (before anything
/// is created) for the rest of the process: a second Ctrl-C does not cut the cleanup
/// short.
struct Signals {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    /// Needs the runtime's context.
    fn install() -> std::io::Result<Signals> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Signals {
            int: signal(SignalKind::interrupt())?,
            term: signal(SignalKind::terminate())?,
            hup: signal(SignalKind::hangup())?,
        })
    }

    async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.int.recv() => "interrupted (SIGINT)",
            _ = self.term.recv() => "terminated (SIGTERM)",
            _ = self.hup.recv() => "hung up (SIGHUP)",
        }
    }
}

/// The PostgreSQL binaries and, when we are root, the OS user to run them as; or a
/// message saying how to get them.
fn find_postgres(bindir: Option<&Path>) -> Result<(PgBinaries, Option<OsUser>), String> {
    let dir = bindir.map(Path::to_path_buf).unwrap_or_else(default_bindir);
    let bins = PgBinaries::find(Some(&dir)).map_err(|e| {
        format!(
            "PostgreSQL server binaries (13 or later) are needed and were not found: {e}.\n\
             Install them, e.g. `apt-get install postgresql` (Debian/Ubuntu) or \
             `dnf install postgresql-server` (Fedora/RHEL), or point PG_BINDIR (or \
             --pg-bindir) at the directory holding postgres, initdb, pg_ctl, \
             pg_basebackup and pg_rewind."
        )
    })?;
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let user = if root {
        Some(OsUser::lookup("postgres").map_err(|_| {
            "running as root, but PostgreSQL refuses to run as root and there is no \
             `postgres` OS user to run it as (create one, e.g. `useradd --system postgres`, \
             or run the demo as an ordinary user)"
                .to_owned()
        })?)
    } else {
        None
    };
    Ok((bins, user))
}

/// env PG_BINDIR, else `pg_config --bindir` when it holds `postgres`, else Debian's
/// PostgreSQL 15 directory.
fn default_bindir() -> PathBuf {
    if let Some(d) = std::env::var_os("PG_BINDIR") {
        return PathBuf::from(d);
    }
    if let Ok(out) = std::process::Command::new("pg_config")
        .arg("--bindir")
        .output()
    {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if out.status.success() && dir.join("postgres").is_file() {
            return dir;
        }
    }
    PathBuf::from("/usr/lib/postgresql/15/bin")
}

// ---- output ------------------------------------------------------------------------

/// Where everything is printed. Live: a screen redrawn by the ticker (events go into
/// it); otherwise: events and one line per second as they come.
struct Output {
    start: Instant,
    state: Mutex<OutputState>,
}

struct OutputState {
    events: Vec<String>,
    /// The summary's lines: the facts the story established so far.
    facts: Vec<String>,
    live_on: bool,
}

impl Output {
    fn new(live: bool) -> Output {
        Output {
            start: Instant::now(),
            state: Mutex::new(OutputState {
                events: Vec::new(),
                facts: Vec::new(),
                live_on: live,
            }),
        }
    }

    fn secs(&self) -> f64 {
        self.start.elapsed().as_secs_f64()
    }

    /// A plain line (before the live screen starts, or when not live).
    fn line(&self, s: &str) {
        let st = self.state.lock().unwrap();
        if !st.live_on {
            println!("{s}");
        } else {
            drop(st);
            self.event(s);
        }
    }

    /// Something that happened, stamped with the time since the start.
    fn event(&self, s: &str) {
        let text = format!("[{:>6.1}s] {s}", self.secs());
        let mut st = self.state.lock().unwrap();
        if !st.live_on {
            println!("{text}");
        }
        st.events.push(text);
    }

    /// Redraws the live screen with `body`, or prints `row` when not live.
    fn tick(&self, body: &str, row: &str) {
        let st = self.state.lock().unwrap();
        if st.live_on {
            let mut s = String::from("\x1b[H\x1b[2J");
            s.push_str(body);
            s.push_str("\nevents:\n");
            for e in st.events.iter().rev().take(14).rev() {
                s.push_str("  ");
                s.push_str(e);
                s.push('\n');
            }
            print!("{s}");
        } else {
            println!("[{:>6.1}s] {row}", self.secs());
        }
        let _ = std::io::stdout().flush();
    }

    /// A line of the summary (also shown as an event).
    fn fact(&self, s: String) {
        self.event(&s);
        self.state.lock().unwrap().facts.push(s);
    }

    fn print_summary(&self) {
        let st = self.state.lock().unwrap();
        println!("SUMMARY");
        if st.facts.is_empty() {
            println!("(nothing established yet)");
        }
        for f in &st.facts {
            println!("{f}");
        }
    }

    /// Ends the live screen: later output is plain lines; the events so far are
    /// printed once more so they stay on the terminal.
    fn stop_live(&self) {
        let mut st = self.state.lock().unwrap();
        if st.live_on {
            st.live_on = false;
            println!();
            println!("events:");
            for e in &st.events {
                println!("  {e}");
            }
        }
    }
}

// ---- the app's load ----------------------------------------------------------------

/// What the app's tasks did: totals and the current one-second window, per node.
#[derive(Default)]
struct Counts {
    reads: BTreeMap<String, u64>,
    writes: BTreeMap<String, u64>,
    errors: u64,
}

#[derive(Default)]
struct Stats {
    total: Counts,
    window: Counts,
    last_error: Option<String>,
}

struct Load {
    stats: Mutex<Stats>,
    /// The last acknowledged write: when and on which node.
    last_write: watch::Sender<Option<(Instant, String)>>,
}

impl Load {
    fn new() -> Load {
        Load {
            stats: Mutex::new(Stats::default()),
            last_write: watch::channel(None).0,
        }
    }

    fn read_ok(&self, node: &str) {
        let mut s = self.stats.lock().unwrap();
        *s.total.reads.entry(node.to_owned()).or_default() += 1;
        *s.window.reads.entry(node.to_owned()).or_default() += 1;
    }

    fn write_ok(&self, node: &str) {
        {
            let mut s = self.stats.lock().unwrap();
            *s.total.writes.entry(node.to_owned()).or_default() += 1;
            *s.window.writes.entry(node.to_owned()).or_default() += 1;
        }
        self.last_write
            .send_replace(Some((Instant::now(), node.to_owned())));
    }

    fn error(&self, e: impl std::fmt::Display) {
        let mut s = self.stats.lock().unwrap();
        s.total.errors += 1;
        s.window.errors += 1;
        s.last_error = Some(e.to_string());
    }

    fn reads_of(&self, node: &str) -> u64 {
        let s = self.stats.lock().unwrap();
        s.total.reads.get(node).copied().unwrap_or(0)
    }

    fn writes_of(&self, node: &str) -> u64 {
        let s = self.stats.lock().unwrap();
        s.total.writes.get(node).copied().unwrap_or(0)
    }

    /// The window's counts, starting a new window.
    fn take_window(&self) -> Counts {
        std::mem::take(&mut self.stats.lock().unwrap().window)
    }
}

/// One writer: an INSERT on the master (through `Router::write`) every 1/rate s.
async fn writer(router: Arc<Router>, load: Arc<Load>, rate: u32) {
    let mut tick = interval(rate);
    loop {
        tick.tick().await;
        match router.write().await {
            Ok(conn) => {
                let node = conn.endpoint().node.clone();
                match conn
                    .execute("INSERT INTO demo_events (node) VALUES ($1)", &[&node])
                    .await
                {
                    Ok(_) => load.write_ok(&node),
                    Err(e) => load.error(format!("write on {node}: {e}")),
                }
            }
            Err(e) => load.error(format!("write: {e}")),
        }
    }
}

/// One reader: a query on a replica (through `Router::read`) every 1/rate s.
async fn reader(router: Arc<Router>, load: Arc<Load>, rate: u32) {
    let mut tick = interval(rate);
    loop {
        tick.tick().await;
        match router.read().await {
            Ok(conn) => {
                let node = conn.endpoint().node.clone();
                match conn.query_one("SELECT max(id) FROM demo_events", &[]).await {
                    Ok(_) => load.read_ok(&node),
                    Err(e) => load.error(format!("read on {node}: {e}")),
                }
            }
            Err(e) => load.error(format!("read: {e}")),
        }
    }
}

fn interval(rate: u32) -> tokio::time::Interval {
    let mut i = tokio::time::interval(Duration::from_micros(1_000_000 / u64::from(rate.max(1))));
    i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    i
}

// ---- the cluster -------------------------------------------------------------------

struct Node {
    name: String,
    host: String,
    port: u16,
    dir: PathBuf,
}

impl Node {
    fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }
}

/// What the ticker and the story share.
struct World {
    reg: Arc<Registry>,
    out: Arc<Output>,
    nodes: Vec<Node>,
    coordd_clients: Vec<SocketAddr>,
    ns: Namespace,
    load: Arc<Load>,
    /// Set once the app runs.
    router: Mutex<Option<Arc<Router>>>,
}

/// Free ports: one on each of `ips`, all held until every one is picked (so no two
/// are the same), then released (the usual small race with other programs remains).
fn free_ports(ips: &[Ipv4Addr]) -> Result<Vec<SocketAddr>, String> {
    let held = ips
        .iter()
        .map(|ip| TcpListener::bind((*ip, 0)).map_err(|e| format!("no free port on {ip}: {e}")))
        .collect::<Result<Vec<_>, _>>()?;
    held.iter()
        .map(|l| l.local_addr().map_err(|e| e.to_string()))
        .collect()
}

fn os(s: impl Into<OsString>) -> OsString {
    s.into()
}

/// A four-letter word's answer, None if the member does not answer within 1 s.
async fn four_letter(addr: SocketAddr, word: &str) -> Option<String> {
    tokio::time::timeout(Duration::from_secs(1), async {
        let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
        s.write_all(word.as_bytes()).await.ok()?;
        let mut out = String::new();
        s.read_to_string(&mut out).await.ok()?;
        Some(out)
    })
    .await
    .ok()
    .flatten()
}

async fn coordd_mode(addr: SocketAddr) -> Option<String> {
    let out = four_letter(addr, "srvr").await?;
    out.lines()
        .find_map(|l| l.strip_prefix("Mode: "))
        .map(str::to_owned)
}

/// Polls `f` every [`POLL`] until it gives Some, or fails naming `what` after `limit`.
async fn wait_for<T, F, Fut>(what: &str, limit: Duration, mut f: F) -> Result<T, String>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(v) = f().await {
            return Ok(v);
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(format!("{what}: not within {} s", limit.as_secs()));
        }
        tokio::time::sleep(POLL).await;
    }
}

async fn read_status(client: &Client, ns: &Namespace) -> Option<ClusterStatus> {
    tokio::time::timeout(Duration::from_secs(2), status::read_with(client, ns))
        .await
        .ok()?
        .ok()
}

fn lag_text(lag: Option<u64>) -> String {
    match lag {
        None => "?".to_owned(),
        Some(b) if b < 10 * 1024 => format!("{b} B"),
        Some(b) if b < 10 * 1024 * 1024 => format!("{} KiB", b / 1024),
        Some(b) => format!("{} MiB", b / (1024 * 1024)),
    }
}

fn counts_text(m: &BTreeMap<String, u64>) -> String {
    if m.is_empty() {
        return "-".to_owned();
    }
    m.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn role_word(r: Role) -> &'static str {
    match r {
        Role::Primary => "primary",
        Role::Replica => "replica",
        Role::Unknown => "?",
    }
}

fn state_word(s: MemberState) -> String {
    serde_json::to_value(s)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_else(|| format!("{s:?}"))
}

/// Every second: the cluster from coordd, the router's view, the app's counts.
async fn ticker(world: Arc<World>, client: Client) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let st = read_status(&client, &world.ns).await;
        let lags = match &st {
            Some(st) => replication(st).await,
            None => None,
        };
        let mut modes = Vec::new();
        for a in &world.coordd_clients {
            modes.push(coordd_mode(*a).await);
        }
        let window = world.load.take_window();
        let router = world.router.lock().unwrap().clone();
        let (body, row) = render(
            &world,
            st.as_ref(),
            lags.as_ref(),
            &modes,
            &window,
            router.as_deref(),
        );
        world.out.tick(&body, &row);
    }
}

/// Per standby (by application_name, which the agents set to the node name): replay
/// lag in bytes and, when PostgreSQL measured it, in milliseconds, from the master's
/// `pg_stat_replication` (None when there is no primary or it does not answer in 1 s).
async fn replication(st: &ClusterStatus) -> Option<Lags> {
    let (l, _) = st.leader.as_ref()?;
    if l.state != LeaderState::Primary {
        return None;
    }
    let info = Conninfo::new(l.host.clone(), l.port)
        .application_name("switchyard-demo-monitor")
        .connect_timeout_s(1);
    tokio::time::timeout(Duration::from_secs(1), async {
        let c = pg::connect(&info).await.ok()?;
        let rows = c
            .query(
                "SELECT application_name, \
                 pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn)::float8, \
                 (extract(epoch FROM replay_lag) * 1000)::float8 \
                 FROM pg_stat_replication",
                &[],
            )
            .await
            .ok()?;
        let mut out = Lags::new();
        for r in rows {
            let name: String = r.get(0);
            let bytes: Option<f64> = r.get(1);
            let ms: Option<f64> = r.get(2);
            if let Some(b) = bytes {
                out.insert(name, (b.max(0.0) as u64, ms));
            }
        }
        Some(out)
    })
    .await
    .ok()
    .flatten()
}

/// The master in state primary (waits for one, bounded).
async fn current_master(client: &Client, ns: &Namespace) -> Result<String, String> {
    wait_for("a master in state primary", FAILOVER_DEADLINE, || async {
        let (l, _) = read_status(client, ns).await?.leader?;
        (l.state == LeaderState::Primary).then_some(l.node)
    })
    .await
}

/// Node -> (replay lag bytes, replay lag ms).
type Lags = BTreeMap<String, (u64, Option<f64>)>;

fn render(
    world: &World,
    st: Option<&ClusterStatus>,
    lags: Option<&Lags>,
    modes: &[Option<String>],
    window: &Counts,
    router: Option<&Router>,
) -> (String, String) {
    let mut body = String::new();
    let _ = writeln!(
        body,
        "Switchyard demo, {:.0} s  |  cluster {CLUSTER:?}  |  Ctrl-C stops everything and removes {}",
        world.out.secs(),
        world.reg.root().display()
    );
    let members: Vec<String> = world
        .coordd_clients
        .iter()
        .zip(modes)
        .map(|(a, m)| format!("{a} {}", m.as_deref().unwrap_or("down")))
        .collect();
    let _ = writeln!(body, "coordd ensemble: {}\n", members.join("  |  "));
    let _ = writeln!(
        body,
        "{:<5} {:<21} {:<8} {:<12} {:>8} {:>16} {:>9} {:>8}",
        "node", "postgres", "role", "state", "timeline", "replay lag", "writes/s", "reads/s"
    );
    let master = st.and_then(|s| s.leader.as_ref()).map(|(l, e)| (l, *e));
    let mut row = String::new();
    match master {
        Some((l, e)) => {
            let state = if l.state == LeaderState::Primary {
                String::new()
            } else {
                format!(" ({:?})", l.state).to_lowercase()
            };
            let _ = write!(row, "master {}{state} epoch {e}", l.node);
        }
        None => row.push_str("master none"),
    }
    let mut replicas = Vec::new();
    let mut others = Vec::new();
    for n in &world.nodes {
        let rec = st.and_then(|s| s.members.iter().find(|m| m.node == n.name));
        let is_master = master.is_some_and(|(l, _)| l.node == n.name);
        let (role, state, tl, lag) = match rec {
            Some(m) => {
                let lag = if m.role != Role::Replica || is_master {
                    "-".to_owned()
                } else if let Some((b, ms)) = lags.and_then(|l| l.get(&n.name)) {
                    match ms {
                        Some(ms) => format!("{} / {ms:.1} ms", lag_text(Some(*b))),
                        None => lag_text(Some(*b)),
                    }
                } else {
                    // Not streaming from the master now: the published records' view.
                    format!("~{}", lag_text(st.and_then(|s| s.lag_bytes(m))))
                };
                let role = if is_master {
                    "master"
                } else {
                    role_word(m.role)
                };
                if m.role == Role::Replica && m.state == MemberState::Running && !is_master {
                    replicas.push(format!("{} lag {lag}", n.name));
                } else if !is_master {
                    others.push(format!("{} {}", n.name, state_word(m.state)));
                }
                (
                    role.to_owned(),
                    state_word(m.state),
                    m.timeline.map(|t| t.to_string()).unwrap_or("-".into()),
                    lag,
                )
            }
            None => {
                others.push(format!("{} down", n.name));
                ("-".into(), "down".into(), "-".into(), "-".into())
            }
        };
        let _ = writeln!(
            body,
            "{:<5} {:<21} {:<8} {:<12} {:>8} {:>16} {:>9} {:>8}",
            n.name,
            format!("{}:{}", n.host, n.port),
            role,
            state,
            tl,
            lag,
            window.writes.get(&n.name).copied().unwrap_or(0),
            window.reads.get(&n.name).copied().unwrap_or(0),
        );
    }
    let _ = write!(
        row,
        " | replicas {}",
        if replicas.is_empty() {
            "none".to_owned()
        } else {
            replicas.join(", ")
        }
    );
    if !others.is_empty() {
        let _ = write!(row, " | {}", others.join(", "));
    }
    if let Some(r) = router {
        let t = r.topology();
        let w = t
            .writable_endpoint()
            .map(|e| e.node.clone())
            .unwrap_or_else(|| "(waiting for a master)".into());
        let reads: Vec<String> = t
            .replicas()
            .iter()
            .map(|r| r.endpoint.node.clone())
            .collect();
        let stats = world.load.stats.lock().unwrap();
        let _ = writeln!(
            body,
            "\nrouter: writes -> {w}  |  reads -> {} (round robin)  |  errors/s {}",
            if reads.is_empty() {
                "master (no replica)".to_owned()
            } else {
                reads.join(", ")
            },
            window.errors
        );
        let _ = writeln!(
            body,
            "app totals: writes {}  |  reads {}  |  errors {}{}",
            counts_text(&stats.total.writes),
            counts_text(&stats.total.reads),
            stats.total.errors,
            stats
                .last_error
                .as_ref()
                .map(|e| format!(" (last: {})", truncate(e, 70)))
                .unwrap_or_default()
        );
        let _ = write!(
            row,
            " | writes/s {} | reads/s {} | errors/s {}",
            counts_text(&window.writes),
            counts_text(&window.reads),
            window.errors
        );
    }
    (body, row)
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_owned()
    } else {
        s.chars().take(n).collect::<String>() + "..."
    }
}

// ---- the story ---------------------------------------------------------------------

/// Starts everything and tells the story; returns the summary.
async fn run(
    reg: Arc<Registry>,
    args: DemoArgs,
    bindir: PathBuf,
    out: Arc<Output>,
) -> Result<(), String> {
    let steady =
        Duration::from_secs(
            args.steady_secs
                .unwrap_or(if args.unattended { 5 } else { 15 }),
        );
    let ip = |i: usize| Ipv4Addr::new(127, 0, 0, i as u8 + 1);

    // 1. The coordd ensemble: member i on 127.0.0.i.
    let t0 = Instant::now();
    // Client ports, peer ports, PostgreSQL ports and TLS client ports, each 127.0.0.i
    // four times.
    let ips: Vec<Ipv4Addr> = (0..4 * NODES).map(|i| ip(i % NODES)).collect();
    let ports = free_ports(&ips)?;
    let clients: Vec<SocketAddr> = ports[..NODES].to_vec();
    let peers: Vec<SocketAddr> = ports[NODES..2 * NODES].to_vec();
    let pg_ports: Vec<u16> = ports[2 * NODES..3 * NODES]
        .iter()
        .map(|a| a.port())
        .collect();
    let secure: Vec<SocketAddr> = ports[3 * NODES..].to_vec();
    let tls = if args.tls {
        let files = coordd_tls::test_ca::write_test_ca(&reg.root().join("tls"), "demo CA")
            .map_err(|e| format!("test CA: {e}"))?;
        out.event(&format!(
            "TLS: a test CA in {}; members talk mutual TLS, clients use the TLS ports",
            files.dir.display()
        ));
        Some(files)
    } else {
        None
    };
    let ensemble = peers
        .iter()
        .enumerate()
        .map(|(i, a)| format!("{}={a}", i + 1))
        .collect::<Vec<_>>()
        .join(",");
    for (i, client) in clients.iter().enumerate() {
        let dir = reg.root().join(format!("coordd-{}", i + 1));
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let args = vec![
            os("__coordd"),
            os("--id"),
            os((i + 1).to_string()),
            os("--ensemble"),
            os(ensemble.clone()),
            os("--client-addr"),
            os(client.to_string()),
            os("--data-dir"),
            os(dir.join("data")),
            // Sessions of 0.4-20 s: the agents' timeout is short for a quick failover.
            os("--tick-time-ms"),
            os("200"),
            os("--max-session-timeout-ms"),
            os("20000"),
            os("--worker-threads"),
            os("1"),
        ];
        let mut args = args;
        if let Some(f) = &tls {
            args.extend([
                os("--peer-tls-cert-file"),
                os(&f.node_cert),
                os("--peer-tls-key-file"),
                os(&f.node_key),
                os("--peer-tls-ca-file"),
                os(&f.ca),
                os("--secure-client-addr"),
                os(secure[i].to_string()),
                os("--tls-cert-file"),
                os(&f.node_cert),
                os("--tls-key-file"),
                os(&f.node_key),
                os("--tls-ca-file"),
                os(&f.ca),
            ]);
        }
        let log = reg.root().join(format!("coordd-{}.log", i + 1));
        reg.spawn(&format!("coordd-{}", i + 1), Kind::Coordd, args, log)
            .map_err(|e| format!("start coordd member {}: {e}", i + 1))?;
    }
    let leader = wait_for(
        "the coordd ensemble electing a leader",
        ENSEMBLE_DEADLINE,
        || {
            let clients = clients.clone();
            async move {
                let mut modes = Vec::new();
                for a in &clients {
                    modes.push(coordd_mode(*a).await?);
                }
                let leaders: Vec<usize> =
                    (0..modes.len()).filter(|&i| modes[i] == "leader").collect();
                let followers = modes.iter().filter(|m| *m == "follower").count();
                (leaders.len() == 1 && followers == modes.len() - 1).then(|| leaders[0])
            }
        },
    )
    .await?;
    out.event(&format!(
        "coordd ensemble of {NODES} formed in {:.1} s; member {} ({}) leads",
        t0.elapsed().as_secs_f64(),
        leader + 1,
        clients[leader]
    ));
    // With TLS, everyone reaches coordd on its TLS ports.
    let coord_addrs = if tls.is_some() { &secure } else { &clients };
    let coord = coord_addrs
        .iter()
        .map(|a| a.to_string())
        .collect::<Vec<_>>()
        .join(",");
    let client_tls = tls.as_ref().map(|f| {
        coordd_client::TlsConfig::new(&f.ca).with_client_cert(&f.client_cert, &f.client_key)
    });
    // agent.toml's TLS keys go before its `[conf]` table.
    let agent_toml = match &tls {
        None => AGENT_TOML.to_string(),
        Some(f) => format!(
            "coord_tls_ca_file = {:?}\ncoord_tls_cert_file = {:?}\ncoord_tls_key_file = {:?}\n{AGENT_TOML}",
            f.ca.display().to_string(),
            f.client_cert.display().to_string(),
            f.client_key.display().to_string()
        ),
    };

    // 2. Three PostgreSQL nodes, each with its agent, on 127.0.0.i.
    let ns = Namespace::new(switchyard_proxy::namespace::ROOT_DEFAULT, CLUSTER)
        .map_err(|e| e.to_string())?;
    let mut nodes = Vec::new();
    for (i, &port) in pg_ports.iter().enumerate() {
        let name = format!("pg{}", i + 1);
        let dir = reg.pg_dir(&name).map_err(|e| format!("{name} dir: {e}"))?;
        let conf = dir.join("agent.toml");
        std::fs::write(&conf, &agent_toml).map_err(|e| format!("{}: {e}", conf.display()))?;
        let args = vec![
            os("__agent"),
            os("--cluster"),
            os(CLUSTER),
            os("--node"),
            os(name.clone()),
            os("--coord"),
            os(coord.clone()),
            os("--pg-data"),
            os(dir.join("data")),
            os("--pg-port"),
            os(port.to_string()),
            os("--pg-bindir"),
            os(bindir.clone()),
            os("--host"),
            os(ip(i).to_string()),
            os("--config"),
            os(conf),
            os("--session-timeout-ms"),
            os(args.session_timeout_ms.to_string()),
        ];
        let log = reg.root().join(format!("agent-{name}.log"));
        reg.spawn(&name, Kind::Agent, args, log)
            .map_err(|e| format!("start the agent of {name}: {e}"))?;
        nodes.push(Node {
            name,
            host: ip(i).to_string(),
            port,
            dir,
        });
    }
    out.event(&format!(
        "started {NODES} agents ({}) on empty data directories; they race for `initialize`",
        nodes
            .iter()
            .map(|n| n.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    ));
    let mut demo_client =
        ClientConfig::new(coord_addrs.iter().map(|a| a.to_string())).with_session_timeout_ms(6_000);
    if let Some(t) = &client_tls {
        demo_client = demo_client.with_tls(t.clone());
    }
    let (client, mut events) = Client::connect(demo_client)
        .await
        .map_err(|e| format!("connect to coordd: {e}"))?;
    tokio::spawn(async move { while events.recv().await.is_some() {} });

    let world = Arc::new(World {
        reg: reg.clone(),
        out: out.clone(),
        nodes,
        coordd_clients: clients.clone(),
        ns: ns.clone(),
        load: Arc::new(Load::new()),
        router: Mutex::new(None),
    });
    let mut tasks = JoinSet::new();
    tasks.spawn(ticker(world.clone(), client.clone()));

    let t_agents = Instant::now();
    let (master, epoch) = wait_for("the election of a master", BOOTSTRAP_DEADLINE, || {
        let client = client.clone();
        let ns = ns.clone();
        let reg = reg.clone();
        async move {
            if let Some((name, st)) = reg.exited().into_iter().next() {
                return Some(Err(format!("the agent of {name} exited ({st})")));
            }
            let st = read_status(&client, &ns).await?;
            let (l, e) = st.leader?;
            (l.state == LeaderState::Primary).then_some(Ok((l.node, e)))
        }
    })
    .await??;
    let election = format!(
        "election: {master} won the election and is master (epoch {epoch}), {:.1} s after the agents started",
        t_agents.elapsed().as_secs_f64()
    );
    out.fact(election);
    let replica_names: Vec<String> = world
        .nodes
        .iter()
        .filter(|n| n.name != master)
        .map(|n| n.name.clone())
        .collect();
    wait_for(
        "the replicas' base backups and streaming",
        BOOTSTRAP_DEADLINE,
        || {
            let client = client.clone();
            let ns = ns.clone();
            let names = replica_names.clone();
            async move {
                let st = read_status(&client, &ns).await?;
                names
                    .iter()
                    .all(|n| {
                        st.members.iter().any(|m| {
                            &m.node == n
                                && m.role == Role::Replica
                                && m.state == MemberState::Running
                        })
                    })
                    .then_some(())
            }
        },
    )
    .await?;
    out.event(&format!(
        "{} took base backups of {master} and stream from it",
        replica_names.join(" and ")
    ));

    // 3. The app: a router, a table, one writer and two readers.
    let mut builder = Router::builder();
    if let Some(t) = &client_tls {
        builder = builder.coord_tls(t.clone());
    }
    let router = Arc::new(
        builder
            .coord(&coord)
            .cluster(CLUSTER)
            .write_wait_ms(10_000)
            .pool_max_size(4)
            .application_name("switchyard-demo")
            .connect()
            .await
            .map_err(|e| format!("router: {e}"))?,
    );
    let tx = router
        .transaction()
        .await
        .map_err(|e| format!("app: {e}"))?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS demo_events (id bigserial PRIMARY KEY, node text NOT NULL, \
         at timestamptz NOT NULL DEFAULT now())",
    )
    .await
    .map_err(|e| format!("app: create table: {e}"))?;
    let token = tx
        .commit_with_token()
        .await
        .map_err(|e| format!("app: commit: {e}"))?;
    wait_for(
        "the replicas replaying the app's table",
        APP_DEADLINE,
        || {
            let router = router.clone();
            let names = replica_names.clone();
            async move {
                let t = router.topology();
                names
                    .iter()
                    .all(|n| {
                        t.replicas().iter().any(|r| {
                            &r.endpoint.node == n && r.replay_lsn.is_some_and(|l| l >= token.0)
                        })
                    })
                    .then_some(())
            }
        },
    )
    .await?;
    *world.router.lock().unwrap() = Some(router.clone());
    let load = world.load.clone();
    tasks.spawn(writer(router.clone(), load.clone(), args.rate));
    tasks.spawn(reader(router.clone(), load.clone(), args.rate));
    tasks.spawn(reader(router.clone(), load.clone(), args.rate));
    out.event(&format!(
        "app started: the router sends writes to {master}, reads to {}",
        replica_names.join(" and ")
    ));

    // 4-6, once per round: steady load until reads reached both replicas, a kill of
    //    the master's node, the failover, the node's return as a replica.
    let rounds = args
        .failovers
        .unwrap_or(if args.unattended { 1 } else { u32::MAX });
    let mut master = master;
    let mut replica_names: Vec<String>;
    let mut round = 1;
    let mut unplanned = 0;
    while round <= rounds {
        // The master now: it may have changed by itself (a session lost under load).
        let now = current_master(&client, &ns).await?;
        if now != master {
            out.event(&format!(
                "note: {now} became master without our doing (was {master}): a master \
                 that lost its coordd session for {} ms (a loaded machine?) fences itself",
                args.session_timeout_ms
            ));
            master = now;
        }
        replica_names = world
            .nodes
            .iter()
            .filter(|n| n.name != master)
            .map(|n| n.name.clone())
            .collect();
        if round > 1 {
            out.event(&format!(
                "round {round}: {master} is master, {} replicas",
                replica_names.join(" and ")
            ));
        }
        // 4. Steady load, until reads reached both replicas.
        let reads_at_start: BTreeMap<String, u64> = replica_names
            .iter()
            .map(|n| (n.clone(), load.reads_of(n)))
            .collect();
        let writes_at_start = load.writes_of(&master);
        tokio::time::sleep(steady).await;
        wait_for("reads routed to both replicas", READS_DEADLINE, || {
            let ok = replica_names
                .iter()
                .all(|n| load.reads_of(n) > reads_at_start[n]);
            std::future::ready(ok.then_some(()))
        })
        .await?;
        let writes_now = load.writes_of(&master);
        let reads_line = format!(
            "reads: routed to both replicas: {}; writes to the master: {master}={}",
            replica_names
                .iter()
                .map(|n| format!("{n}={}", load.reads_of(n) - reads_at_start[n]))
                .collect::<Vec<_>>()
                .join(" "),
            writes_now - writes_at_start
        );
        out.fact(reads_line);

        // 5. Kill the master's node: its agent and its PostgreSQL, kill -9, as if the
        //    machine died. The `leader` znode goes when the session expires.
        let now = current_master(&client, &ns).await?;
        if now != master {
            // Not the story we tell: start the round again (a few times at most).
            unplanned += 1;
            if unplanned > 3 {
                return Err(format!(
                    "the master changed by itself {unplanned} times; the machine may be \
                     too loaded for a {} ms session timeout (--session-timeout-ms)",
                    args.session_timeout_ms
                ));
            }
            continue;
        }
        let mnode = world
            .nodes
            .iter()
            .find(|n| n.name == master)
            .ok_or("the master is no demo node")?;
        let before = load.last_write.borrow().clone();
        reg.kill9(&master);
        let pid = reg.kill9_postgres(&mnode.data_dir());
        let t_kill = Instant::now();
        out.event(&format!(
            "kill -9 of the master {master}: its agent and its PostgreSQL (postmaster {}) and children",
            pid.map(|p| p.to_string()).unwrap_or_else(|| "?".into())
        ));
        let mut acks = load.last_write.subscribe();
        let (t_ack, new_master) = wait_for(
            "the first acknowledged write on a new master",
            Duration::from_millis(u64::from(args.session_timeout_ms)) + FAILOVER_DEADLINE,
            || {
                let v = match acks.borrow_and_update().clone() {
                    Some((t, node)) if t > t_kill && node != master => Some((t, node)),
                    _ => None,
                };
                std::future::ready(v)
            },
        )
        .await?;
        let gap = t_ack - t_kill;
        let paused = before
            .as_ref()
            .map(|(t, _)| format!("; the app's writes paused {:.2} s (last acknowledged write before the kill to the first after)", (t_ack - *t).as_secs_f64()))
            .unwrap_or_default();
        let new_epoch = read_status(&client, &ns)
            .await
            .and_then(|s| s.leader)
            .map(|(_, e)| e.to_string())
            .unwrap_or_else(|| "?".into());
        let failover = format!(
            "failover: {new_master} is the new master (epoch {new_epoch}); write gap {:.2} s from the kill to the first write acknowledged by {new_master} (session timeout {} ms){paused}",
            gap.as_secs_f64(),
            args.session_timeout_ms
        );
        out.fact(failover);

        // 6. The old master's node comes back: its agent starts PostgreSQL as a standby
        //    only, rewinds it (it was a primary) and follows the new master.
        let reads_before = load.reads_of(&master);
        let t_restart = Instant::now();
        reg.restart(&master)
            .map_err(|e| format!("restart the agent of {master}: {e}"))?;
        out.event(&format!(
            "restarted the agent of {master} on its data directory as the crash left it"
        ));
        let timeline = wait_for(
            &format!("{master} rejoining as a replica and serving reads"),
            REJOIN_DEADLINE,
            || {
                let client = client.clone();
                let ns = ns.clone();
                let load = load.clone();
                let (master, new_master) = (master.clone(), new_master.clone());
                async move {
                    let st = read_status(&client, &ns).await?;
                    let leader_tl = st
                        .members
                        .iter()
                        .find(|m| m.node == new_master && m.role == Role::Primary)?
                        .timeline?;
                    let me = st.members.iter().find(|m| m.node == master)?;
                    let joined = me.role == Role::Replica
                        && me.state == MemberState::Running
                        && me.timeline == Some(leader_tl);
                    (joined && load.reads_of(&master) > reads_before).then_some(leader_tl)
                }
            },
        )
        .await?;
        let rewound = reg
            .log_of(&master)
            .and_then(|p| std::fs::read_to_string(p).ok())
            .is_some_and(|log| log.contains("pg_rewind from the new master"));
        let rejoined = format!(
            "rejoined: {master} (the old master) follows {new_master} as a replica on timeline {timeline}{}, {:.1} s after its agent restarted; reads routed to it again: {}",
            if rewound { ", after pg_rewind" } else { "" },
            t_restart.elapsed().as_secs_f64(),
            load.reads_of(&master) - reads_before
        );
        out.fact(rejoined);
        master = new_master;
        round += 1;
    }

    // 7. The end: unattended, a few more seconds and the summary; live, run on.
    if args.unattended {
        tokio::time::sleep(Duration::from_secs(args.tail_secs)).await;
    } else {
        out.event("the story is over; the app keeps running. Ctrl-C stops everything");
        std::future::pending::<()>().await;
    }
    let totals = {
        let s = load.stats.lock().unwrap();
        format!(
            "totals: writes {} | reads {} | errors {}",
            counts_text(&s.total.writes),
            counts_text(&s.total.reads),
            s.total.errors
        )
    };
    out.fact(totals);
    drop(tasks);
    let _ = client.close().await;
    Ok(())
}
