//! Real `switchyard agent` processes for end-to-end tests: each in its own process
//! group with its own [`PgDir`]; Drop kills the group (agent and its children) with
//! SIGKILL, then the PgDir stops whatever postmaster runs on its data directory.
#![allow(dead_code)]

use std::collections::BTreeSet;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use coordd_client::{Acl, Client, ClientConfig, CreateMode};
use coordd_proto::perms;
use coordd_proto::records::Stat;
use switchyard_proxy::namespace::Namespace;
use switchyard_proxy::pg::{self, Conninfo};
use switchyard_proxy::records::{self, LeaderRecord, LeaderState, MemberRecord, Role, SyncRecord};

use super::coordd::{Coordd, CoorddEnsemble};
use super::postgres::{self, PgDir};
use super::proxy::Proxy;

/// The `switchyard` binary: `SWITCHYARD_BIN`, else built once per test process with
/// cargo in the test's own profile (a no-op when up to date; an existing binary could
/// be stale, so it is never just picked up).
pub fn switchyard_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Ok(p) = std::env::var("SWITCHYARD_BIN") {
            return PathBuf::from(p);
        }
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let target = std::env::var("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|_| root.join("target"));
        // The test binary lives in <target>/<profile>/deps/.
        let release = std::env::current_exe()
            .ok()
            .and_then(|p| {
                let profile = p.parent()?.parent()?.file_name()?.to_owned();
                Some(profile == "release")
            })
            .unwrap_or(false);
        let mut cmd = Command::new(env!("CARGO"));
        cmd.args(["build", "-p", "switchyard-proxy", "--bin", "switchyard"]);
        if release {
            cmd.arg("--release");
        }
        let status = cmd
            .current_dir(root)
            .status()
            .expect("run cargo build -p switchyard-proxy");
        assert!(
            status.success(),
            "cargo build of the switchyard binary failed"
        );
        target
            .join(if release { "release" } else { "debug" })
            .join("switchyard")
    })
    .clone()
}

/// Test settings for every agent: trust auth, no fsync, small server.
pub const AGENT_TOML: &str = r#"
initdb_auth_host = "trust"
initdb_auth_local = "trust"
initdb_no_sync = true
[conf]
fsync = "off"
shared_buffers = "16MB"
max_connections = "30"
"#;

pub struct Agent {
    pub node: String,
    pub pg_port: u16,
    args: Vec<String>,
    child: Option<Child>,
    // Last field: dropped after `Drop::drop` killed the agent, stops the postmaster.
    pub dir: PgDir,
}

impl Agent {
    /// Starts `switchyard agent` for `node` with an empty data directory.
    pub fn spawn(coord: &str, cluster: &str, node: &str, session_timeout_ms: u32) -> Agent {
        Agent::spawn_in(PgDir::new(), coord, cluster, node, session_timeout_ms)
    }

    /// Starts `switchyard agent` on `dir`'s data directory as it is (empty or not).
    pub fn spawn_in(
        dir: PgDir,
        coord: &str,
        cluster: &str,
        node: &str,
        session_timeout_ms: u32,
    ) -> Agent {
        Agent::spawn_with(dir, coord, cluster, node, session_timeout_ms, "")
    }

    /// Like [`Agent::spawn_in`], with `extra` TOML keys (top-level ones, e.g.
    /// `synchronous = true`) put before [`AGENT_TOML`].
    pub fn spawn_with(
        dir: PgDir,
        coord: &str,
        cluster: &str,
        node: &str,
        session_timeout_ms: u32,
        extra: &str,
    ) -> Agent {
        let pg_port = postgres::free_port();
        let conf = dir.path().join("agent.toml");
        std::fs::write(&conf, format!("{extra}\n{AGENT_TOML}")).expect("write agent.toml");
        let args = vec![
            "agent".to_owned(),
            "--cluster".to_owned(),
            cluster.to_owned(),
            "--node".to_owned(),
            node.to_owned(),
            "--coord".to_owned(),
            coord.to_owned(),
            "--pg-data".to_owned(),
            dir.data_dir().to_string_lossy().into_owned(),
            "--pg-port".to_owned(),
            pg_port.to_string(),
            "--pg-bindir".to_owned(),
            postgres::bindir().to_string_lossy().into_owned(),
            "--host".to_owned(),
            "127.0.0.1".to_owned(),
            "--config".to_owned(),
            conf.to_string_lossy().into_owned(),
            "--session-timeout-ms".to_owned(),
            session_timeout_ms.to_string(),
        ];
        let mut a = Agent {
            node: node.to_owned(),
            pg_port,
            args,
            child: None,
            dir,
        };
        a.start();
        a
    }

    /// (Re)starts the agent process on the same data directory and port.
    pub fn start(&mut self) {
        assert!(self.child.is_none(), "agent {} already runs", self.node);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("open agent log");
        let child = Command::new(switchyard_bin())
            .args(&self.args)
            .env(
                "RUST_LOG",
                std::env::var("SWITCHYARD_LOG").unwrap_or_else(|_| "info".into()),
            )
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn switchyard agent");
        self.child = Some(child);
    }

    /// The agent's exit status once it has exited (None while it runs).
    pub fn try_wait(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("agent.log")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    pub fn pg_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("data.log")).unwrap_or_default()
    }

    /// kill -9 of the agent's process group (the agent and any pg_ctl / pg_basebackup
    /// child; not the postmaster, which pg_ctl started in its own session).
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{}", c.id())])
                .stderr(Stdio::null())
                .status();
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM to the agent (not its group: the agent stops its children itself).
    pub fn terminate(&self) {
        if let Some(c) = &self.child {
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
        }
    }

    /// The postmaster's pid from postmaster.pid.
    pub fn postmaster_pid(&self) -> Option<u32> {
        std::fs::read_to_string(self.dir.data_dir().join("postmaster.pid"))
            .ok()
            .and_then(|s| s.lines().next().and_then(|l| l.trim().parse::<u32>().ok()))
    }

    /// Sends `sig` (`STOP`, `CONT`, ...) to the agent's process group.
    pub fn signal_agent(&self, sig: &str) {
        if let Some(c) = &self.child {
            let _ = Command::new("kill")
                .args([&format!("-{sig}"), "--", &format!("-{}", c.id())])
                .stderr(Stdio::null())
                .status();
        }
    }

    /// Sends `sig` (`STOP`, `CONT`, `KILL`) to the postmaster and every process it
    /// forked. Each PostgreSQL child calls setsid() (its own process group and session),
    /// so the postmaster's group holds the postmaster alone: the children are found by
    /// parent pid. STOP/KILL: the postmaster first (it forks no one while stopped, and
    /// its children keep it as their parent), then the children; CONT: the other way
    /// round. Returns the postmaster's pid.
    pub fn signal_postgres(&self, sig: &str) -> Option<u32> {
        let pid = self.postmaster_pid()?;
        let send = |p: u32| {
            Command::new("kill")
                .args([&format!("-{sig}"), &p.to_string()])
                .stderr(Stdio::null())
                .status()
                .map(|s| s.success())
                .unwrap_or(false)
        };
        if sig == "CONT" {
            for child in children_of(pid) {
                send(child);
            }
            return send(pid).then_some(pid);
        }
        if sig == "KILL" {
            // Keep the children parented (and the postmaster from forking) while we
            // find them.
            Command::new("kill")
                .args(["-STOP", &pid.to_string()])
                .stderr(Stdio::null())
                .status()
                .ok()?;
            for child in children_of(pid) {
                send(child);
            }
            return send(pid).then_some(pid);
        }
        let ok = send(pid);
        for child in children_of(pid) {
            send(child);
        }
        ok.then_some(pid)
    }

    /// Sends `sig` (`STOP`, `CONT`) to this node's PostgreSQL processes whose command
    /// line holds `name` (`walsender`, `walreceiver`); returns whether one was found.
    /// The master's WAL senders stopped: what it writes from then on is on it alone.
    pub fn signal_postgres_processes(&self, name: &str, sig: &str) -> bool {
        let Some(pid) = self.postmaster_pid() else {
            return false;
        };
        let mut found = false;
        for child in children_of(pid) {
            let cmdline = std::fs::read(format!("/proc/{child}/cmdline")).unwrap_or_default();
            if cmdline.windows(name.len()).any(|w| w == name.as_bytes()) {
                found |= Command::new("kill")
                    .args([&format!("-{sig}"), &child.to_string()])
                    .stderr(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success());
            }
        }
        found
    }

    /// kill -9 of the postmaster and every process it forked.
    pub fn kill9_postgres(&self) {
        self.signal_postgres("KILL");
    }

    /// The pids of this agent's running fence guards (`... fence-guard ...` naming its
    /// data directory; the guard runs in a process group of its own).
    pub fn guard_pids(&self) -> Vec<u32> {
        let data = self.dir.data_dir();
        let needle = data.as_os_str().as_encoded_bytes();
        let mut out = Vec::new();
        for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
                continue;
            };
            let has = |n: &[u8]| cmdline.windows(n.len()).any(|w| w == n);
            if has(b"fence-guard") && has(needle) && runs(pid) {
                out.push(pid);
            }
        }
        out
    }

    /// Sends `sig` (`STOP`, `CONT`) to this agent's fence guards: with
    /// [`Agent::signal_agent`] and [`Agent::signal_postgres`], a whole machine paused.
    pub fn signal_guard(&self, sig: &str) {
        for pid in self.guard_pids() {
            let _ = Command::new("kill")
                .args([&format!("-{sig}"), &pid.to_string()])
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// Whether `pid` runs (exists and is not a zombie waiting for its parent).
pub fn runs(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next().map(str::to_owned))
        })
        .is_some_and(|state| state != "Z" && state != "X")
}

/// The pids whose parent is `parent` (from /proc/<pid>/stat).
pub fn children_of(parent: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // pid (comm) state ppid ...; comm may hold spaces and parentheses.
        let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
            continue;
        };
        let ppid = rest
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse::<u32>().ok());
        if ppid == Some(parent) {
            out.push(pid);
        }
    }
    out
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill9();
        // A paused server would keep its pending SIGQUIT/SIGKILL until resumed.
        self.signal_postgres("CONT");
    }
}

/// The cluster name the agent tests use.
pub const CLUSTER: &str = "main";
/// Upper bound of every wait for the cluster to reach a state.
pub const DEADLINE: Duration = Duration::from_secs(40);

/// Wall-clock milliseconds (compared with znode ctimes, which coordd stamps from the
/// same machine's clock).
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

pub fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// A tokio-postgres connection to 127.0.0.1:`port` (None when it cannot connect).
pub async fn connect(port: u16) -> Option<pg::Client> {
    pg::connect(&Conninfo::new("127.0.0.1", port).connect_timeout_s(2))
        .await
        .ok()
}

/// Options of [`Cluster::start_opts`].
#[derive(Clone, Debug)]
pub struct ClusterOpts {
    pub nodes: usize,
    /// Agent i reaches coordd through its own TCP proxy (`proxies[i]`), to cut it off
    /// (standalone coordd only).
    pub via_proxies: bool,
    pub session_timeout_ms: u32,
    /// Extra top-level agent.toml keys, e.g. `synchronous = true`.
    pub extra_toml: String,
    /// Run on a 3-member coordd ensemble ([`CoorddEnsemble`]) instead of one standalone
    /// coordd; the agents and the test client get every member.
    pub ensemble: bool,
    /// Before any agent starts, `initialize` is created naming this node and no system
    /// identifier: what coordd holds when the winner's create committed but its reply,
    /// or its session, was lost before initdb ran.
    pub initialize_won_by: Option<&'static str>,
}

impl Default for ClusterOpts {
    fn default() -> Self {
        ClusterOpts {
            nodes: 3,
            via_proxies: false,
            session_timeout_ms: 2_000,
            extra_toml: String::new(),
            ensemble: false,
            initialize_won_by: None,
        }
    }
}

/// The coordination service under a [`Cluster`].
pub enum Coord {
    Standalone(Coordd),
    Ensemble(CoorddEnsemble),
}

/// Members of the ensemble [`Cluster`] runs on with `ensemble: true`.
pub const ENSEMBLE_MEMBERS: usize = 3;
/// Bound on an ensemble's (re-)election of a leader.
pub const ELECTION_DEADLINE: Duration = Duration::from_secs(30);

impl Coord {
    fn start(opts: &ClusterOpts) -> Coord {
        if !opts.ensemble {
            return Coord::Standalone(Coordd::start_with(&["--tick-time-ms", "100"]));
        }
        assert!(!opts.via_proxies, "proxies front a standalone coordd only");
        // The 100 ms tick would cap session timeouts at 2 s (20 ticks); an ensemble's
        // clients need more (README: session timeouts on ensembles).
        let max = (opts.session_timeout_ms.max(10_000)).to_string();
        let e = tokio::task::block_in_place(|| {
            let e = CoorddEnsemble::start_with(
                ENSEMBLE_MEMBERS,
                &["--max-session-timeout-ms", max.as_str()],
            );
            let all: Vec<usize> = (0..ENSEMBLE_MEMBERS).collect();
            e.wait_leader(&all, ELECTION_DEADLINE);
            e
        });
        Coord::Ensemble(e)
    }

    /// Every server, as `ClientConfig::new` takes them.
    pub fn servers(&self) -> Vec<String> {
        match self {
            Coord::Standalone(c) => vec![c.connect_string()],
            Coord::Ensemble(e) => e.servers(),
        }
    }

    /// `host:port,...` as `--coord` and the router take it.
    pub fn connect_string(&self) -> String {
        self.servers().join(",")
    }

    /// The standalone coordd; panics on an ensemble.
    pub fn standalone(&self) -> &Coordd {
        match self {
            Coord::Standalone(c) => c,
            Coord::Ensemble(_) => panic!("the cluster runs on a coordd ensemble"),
        }
    }

    /// The ensemble; panics on a standalone coordd.
    pub fn ensemble(&self) -> &CoorddEnsemble {
        match self {
            Coord::Ensemble(e) => e,
            Coord::Standalone(_) => panic!("the cluster runs on a standalone coordd"),
        }
    }

    pub fn ensemble_mut(&mut self) -> &mut CoorddEnsemble {
        match self {
            Coord::Ensemble(e) => e,
            Coord::Standalone(_) => panic!("the cluster runs on a standalone coordd"),
        }
    }

    /// The last `n` lines of every coordd's log.
    pub fn log_tails(&self, n: usize) -> String {
        match self {
            Coord::Standalone(c) => format!("\ncoordd log tail:\n{}", tail(&c.log(), n)),
            Coord::Ensemble(e) => e.log_tails(n),
        }
    }
}

/// One coordd (or a coordd ensemble) and `n` agents `n1..`, each with its own
/// PostgreSQL.
pub struct Cluster {
    // Agents first: dropped (killed, their PostgreSQL stopped) before coordd.
    pub agents: Vec<Agent>,
    pub proxies: Vec<Proxy>,
    pub coordd: Coord,
    pub client: Client,
    pub ns: Namespace,
    pub opts: ClusterOpts,
}

impl Cluster {
    pub async fn start_opts(opts: ClusterOpts) -> Cluster {
        let _ = switchyard_bin(); // build before the clock starts
        let coordd = Coord::start(&opts);
        let mut proxies = Vec::new();
        if opts.via_proxies {
            for _ in 0..opts.nodes {
                proxies.push(Proxy::start(coordd.standalone().addr).await);
            }
        }
        let (client, _events) = Client::connect(ClientConfig::new(coordd.servers()))
            .await
            .expect("test client");
        let ns = Namespace::with_default_root(CLUSTER).expect("namespace");
        if let Some(node) = opts.initialize_won_by {
            let cluster = ns.cluster();
            client
                .ensure_path(&cluster[..cluster.rfind('/').unwrap()])
                .await
                .expect("cluster parent");
            let acl = [Acl::new(
                perms::READ | perms::WRITE | perms::CREATE,
                "world",
                "anyone",
            )];
            client
                .create(cluster, &[], &acl, CreateMode::Persistent)
                .await
                .expect("cluster node");
            let rec = records::InitializeRecord {
                node: node.into(),
                system_identifier: None,
            };
            client
                .create(
                    &ns.initialize(),
                    &records::encode(&rec),
                    &acl,
                    CreateMode::Persistent,
                )
                .await
                .expect("initialize");
        }
        let agents = (1..=opts.nodes)
            .map(|i| {
                let coord = match proxies.get(i - 1) {
                    Some(p) => p.connect_string(),
                    None => coordd.connect_string(),
                };
                Agent::spawn_with(
                    PgDir::new(),
                    &coord,
                    CLUSTER,
                    &format!("n{i}"),
                    opts.session_timeout_ms,
                    &opts.extra_toml,
                )
            })
            .collect();
        Cluster {
            agents,
            proxies,
            coordd,
            client,
            ns,
            opts,
        }
    }

    pub fn dump(&self) -> String {
        let mut s = String::new();
        for a in &self.agents {
            s.push_str(&format!(
                "\n===== agent {} log =====\n{}\n===== {} postgres log (tail) =====\n{}\n",
                a.node,
                a.log(),
                a.node,
                tail(&a.pg_log(), 30)
            ));
        }
        s.push_str(&self.coordd.log_tails(20));
        s
    }

    /// The `leader` record and its czxid (the epoch).
    pub async fn leader(&self) -> Option<(LeaderRecord, i64)> {
        self.leader_stat().await.map(|(l, stat)| (l, stat.czxid))
    }

    /// The `leader` record and its stat (czxid = epoch, ephemeralOwner = session).
    pub async fn leader_stat(&self) -> Option<(LeaderRecord, Stat)> {
        let (data, stat) = self.client.get_data(&self.ns.leader(), false).await.ok()?;
        Some((records::decode(&data).ok()?, stat))
    }

    pub async fn members(&self) -> Vec<MemberRecord> {
        self.member_owners()
            .await
            .into_iter()
            .map(|(m, _)| m)
            .collect()
    }

    /// Every decodable member record with its znode's ephemeral owner (session id).
    pub async fn member_owners(&self) -> Vec<(MemberRecord, i64)> {
        let mut out = Vec::new();
        let Ok(children) = self.client.get_children(&self.ns.members(), false).await else {
            return out;
        };
        for c in children {
            if let Ok((data, stat)) = self.client.get_data(&self.ns.member(&c), false).await {
                if let Ok(m) = records::decode::<MemberRecord>(&data) {
                    out.push((m, stat.ephemeral_owner));
                }
            }
        }
        out
    }

    /// Waits until `sync` names exactly `standbys` (written by `master`) and the
    /// master's WAL senders to them are all in the quorum.
    pub async fn wait_sync(&self, master: &str, standbys: &[&str]) {
        wait_sync(
            &self.client,
            &self.ns,
            master,
            self.agent(master).pg_port,
            standbys,
            DEADLINE,
            &|| self.dump(),
        )
        .await
    }

    pub fn agent(&self, node: &str) -> &Agent {
        self.agents
            .iter()
            .find(|a| a.node == node)
            .expect("no such agent")
    }

    pub fn agent_mut(&mut self, node: &str) -> &mut Agent {
        self.agents
            .iter_mut()
            .find(|a| a.node == node)
            .expect("no such agent")
    }

    /// kill -9 of a node's agent and its PostgreSQL.
    pub fn kill(&mut self, node: &str) {
        let a = self.agent_mut(node);
        a.kill9();
        a.kill9_postgres();
    }

    /// Waits until `live` agents form one cluster: a leader in state primary
    /// (optionally not `not`) whose PostgreSQL is not in recovery and streams to every
    /// other live node, which is in recovery; a member record for each. Returns the
    /// master's node name.
    pub async fn wait_healthy(&self, live: &[&str], not: Option<&str>) -> String {
        let start = Instant::now();
        loop {
            let last = match self.check_healthy(live, not).await {
                Ok(master) => return master,
                Err(why) => why,
            };
            if start.elapsed() > DEADLINE {
                panic!(
                    "cluster not healthy after {DEADLINE:?}: {last}\n{}",
                    self.dump()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn check_healthy(&self, live: &[&str], not: Option<&str>) -> Result<String, String> {
        let leader = self.leader().await.map(|(l, _)| l);
        let members = self.members().await;
        check_health(
            leader,
            &members,
            &|node| self.agent(node).pg_port,
            live,
            not,
        )
        .await
    }
}

/// A leader in state primary (not `not`) whose PostgreSQL is not in recovery and
/// streams to every other live node, which is in recovery; a member record with the
/// right role for each live node, every one on the master's timeline. Returns the
/// master's node name, else what is not so yet. Shared by the coordd `Cluster` and
/// the ZooKeeper-ensemble tests.
pub async fn check_health(
    leader: Option<LeaderRecord>,
    members: &[MemberRecord],
    pg_port: &dyn Fn(&str) -> u16,
    live: &[&str],
    not: Option<&str>,
) -> Result<String, String> {
    let leader = leader.ok_or("no leader record")?;
    if leader.state != LeaderState::Primary {
        return Err(format!(
            "leader {} in state {:?}",
            leader.node, leader.state
        ));
    }
    if Some(leader.node.as_str()) == not {
        return Err(format!("leader is still {}", leader.node));
    }
    let master = connect(leader.port).await.ok_or("master unreachable")?;
    if pg::in_recovery(&master).await.map_err(|e| e.to_string())? {
        return Err("master in recovery".into());
    }
    let streaming: i64 = master
        .query_one(
            "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'",
            &[],
        )
        .await
        .map_err(|e| e.to_string())?
        .get(0);
    if streaming != live.len() as i64 - 1 {
        return Err(format!("{streaming} streaming replicas"));
    }
    for node in live.iter().filter(|n| **n != leader.node) {
        let c = connect(pg_port(node))
            .await
            .ok_or(format!("{node} unreachable"))?;
        if !pg::in_recovery(&c).await.map_err(|e| e.to_string())? {
            return Err(format!("{node} is not in recovery"));
        }
    }
    let master_tli = members
        .iter()
        .find(|m| m.node == leader.node)
        .and_then(|m| m.timeline);
    for node in live {
        let m = members
            .iter()
            .find(|m| m.node == *node)
            .ok_or(format!("no member record for {node}"))?;
        let want = if *node == leader.node {
            Role::Primary
        } else {
            Role::Replica
        };
        // A replica on another timeline than the master's is not following it
        // (it may be streaming the old timeline's WAL up to a fork it is past).
        if m.role != want || m.timeline.is_none() || m.timeline != master_tli {
            return Err(format!("member {node}: {m:?}"));
        }
    }
    Ok(leader.node)
}

/// Waits up to `deadline` until `sync` names exactly `standbys` (written by `master`)
/// and the master's (on `master_port`) WAL senders to them are all in the quorum;
/// panics with `dump()` otherwise. Shared by the coordd `Cluster` and the
/// ZooKeeper-ensemble tests.
pub async fn wait_sync(
    client: &Client,
    ns: &Namespace,
    master: &str,
    master_port: u16,
    standbys: &[&str],
    deadline: Duration,
    dump: &dyn Fn() -> String,
) {
    let want: BTreeSet<String> = standbys.iter().map(|s| s.to_string()).collect();
    let start = Instant::now();
    loop {
        let last = match check_sync(client, ns, master, master_port, &want).await {
            Ok(()) => return,
            Err(why) => why,
        };
        if start.elapsed() > deadline {
            panic!(
                "synchronous standbys not {want:?} after {deadline:?}: {last}\n{}",
                dump()
            );
        }
        // Poll interval of a condition wait (records change every publish interval).
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn check_sync(
    client: &Client,
    ns: &Namespace,
    master: &str,
    master_port: u16,
    want: &BTreeSet<String>,
) -> Result<(), String> {
    let (data, _) = client
        .get_data(&ns.sync(), false)
        .await
        .map_err(|e| format!("no `sync` record: {e}"))?;
    let rec: SyncRecord = records::decode(&data).map_err(|e| format!("`sync`: {e}"))?;
    let have: BTreeSet<String> = rec.standbys.iter().cloned().collect();
    if rec.leader.as_deref() != Some(master) || have != *want {
        return Err(format!("`sync` is {rec:?}"));
    }
    let m = connect(master_port).await.ok_or("master unreachable")?;
    let rows = m
        .query(
            "SELECT application_name, sync_state FROM pg_stat_replication",
            &[],
        )
        .await
        .map_err(|e| e.to_string())?;
    let quorum: BTreeSet<String> = rows
        .iter()
        .filter(|r| r.get::<_, String>(1) == "quorum")
        .map(|r| r.get::<_, String>(0))
        .collect();
    if quorum != *want {
        return Err(format!("quorum standbys {quorum:?}"));
    }
    Ok(())
}

/// How long a standby may take to show every acknowledged row.
const ACKED_ON_STANDBY_WAIT: Duration = Duration::from_secs(30);

/// Every id in `acked` is in table `t` (column `id`) on the PostgreSQL at `port`. On a
/// standby this is waited for (at most `ACKED_ON_STANDBY_WAIT`): with quorum commit
/// (`ANY 1 (...)`) an acknowledged write is durable on some standby, not yet replayed
/// on each, so a standby may show the newest rows a moment after the write returned.
/// On the master the check is immediate.
pub async fn assert_all_acked_on(port: u16, acked: impl IntoIterator<Item = i64>, what: &str) {
    let acked: Vec<i64> = acked.into_iter().collect();
    let deadline = Instant::now() + ACKED_ON_STANDBY_WAIT;
    let c = connect(port).await.expect("connect");
    loop {
        let ids: BTreeSet<i64> = c
            .query("SELECT id FROM t", &[])
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        let lost: Vec<i64> = acked
            .iter()
            .copied()
            .filter(|id| !ids.contains(id))
            .collect();
        let standby = c
            .query_one("SELECT pg_is_in_recovery()", &[])
            .await
            .map(|r| r.get::<_, bool>(0))
            .unwrap_or(false);
        if lost.is_empty() || !standby || Instant::now() >= deadline {
            assert!(
                lost.is_empty(),
                "{} of {} acknowledged rows missing on {what}: {lost:?}",
                lost.len(),
                acked.len()
            );
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// How many sessions an agent opened so far (one log line per session).
pub fn sessions_opened(a: &Agent) -> usize {
    a.log().matches("connected to coordd").count()
}

/// Samples every node's PostgreSQL (`pg_is_in_recovery()`) until told to stop;
/// returns the number of samples and the worst one: the most nodes that took writes
/// at once, with their names.
pub fn spawn_primary_monitor(
    ports: Vec<(String, u16)>,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<(usize, Vec<String>)> {
    tokio::spawn(async move {
        let mut clients: Vec<Option<pg::Client>> = ports.iter().map(|_| None).collect();
        let mut samples = 0;
        let mut worst: Vec<String> = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            let mut primaries = Vec::new();
            for (i, (node, port)) in ports.iter().enumerate() {
                if !matches!(&clients[i], Some(c) if !c.is_closed()) {
                    clients[i] = connect(*port).await;
                }
                if let Some(c) = &clients[i] {
                    if let Ok(false) = pg::in_recovery(c).await {
                        primaries.push(node.clone());
                    }
                }
            }
            samples += 1;
            if primaries.len() > worst.len() {
                worst = primaries;
            }
            // Sampling pace.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        (samples, worst)
    })
}
