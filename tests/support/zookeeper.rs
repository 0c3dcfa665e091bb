//! Real Apache ZooKeeper 3.8 (Debian's `zookeeper` package) for tests and benches.
//!
//! [`ZooKeeper::start`] runs a standalone server on `127.0.0.1:<free port>` with its own
//! `zoo.cfg` in a fresh temp dir. It runs `java` directly (the class path and JVM flags of
//! the package's `zkServer.sh`/`zkEnv.sh`), not the daemonizing script, so [`ZooKeeper::pid`]
//! is the JVM itself and [`ZooKeeper::rss_kib`] / [`ZooKeeper::hwm_kib`] measure the server.
//! Readiness is `ruok` -> `imok` polled under a deadline. Drop kills the JVM and removes the
//! dir.
//!
//! [`ZooKeeperEnsemble::start`] runs a quorum of N members (3 for failover tests) on
//! 127.0.0.1, each its own JVM, data dir with `myid` and zoo.cfg (`server.N=127.0.0.1:
//! <peer>:<election>`, distinct client ports), tickTime 200 ms by default
//! ([`EnsembleOptions`]) so sessions can be short. Ready when exactly one member answers
//! `srvr` with `Mode: leader` and every other one `Mode: follower`; clients use
//! [`ZooKeeperEnsemble::connect_string`]. A member can be killed (kill -9) and restarted
//! on its data dir; Drop kills every JVM and removes the dir.
//!
//! [`zk_cli`] runs the package's zkCli (`org.apache.zookeeper.ZooKeeperMain`) in batch mode:
//! the commands go to its stdin, one JVM for the whole script.
//!
//! Use from tests: `mod support;` (tests/support/mod.rs). From benches:
//! `#[path = "../tests/support/mod.rs"] mod support;`.
#![allow(dead_code)]

use std::fs;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// The package's jar; its manifest Class-Path brings netty, jute, slf4j, jetty, ...
pub const ZOOKEEPER_JAR: &str = "/usr/share/java/zookeeper.jar";
/// The package's config dir (log4j.properties); first on the class path as in zkEnv.sh.
pub const ZOOKEEPER_CONF_DIR: &str = "/etc/zookeeper/conf";
/// The package's scripts (only checked for presence; we run java directly).
pub const ZOOKEEPER_BIN_DIR: &str = "/usr/share/zookeeper/bin";
/// `JAVA` in the package's zkEnv.sh.
pub const JAVA: &str = "/usr/bin/java";

const SERVER_MAIN: &str = "org.apache.zookeeper.server.quorum.QuorumPeerMain";
const CLI_MAIN: &str = "org.apache.zookeeper.ZooKeeperMain";

/// How long a JVM may take to answer `imok` (JVM start + ZooKeeper start; ~1-2 s here).
pub const START_TIMEOUT: Duration = Duration::from_secs(60);
/// Upper bound for one zkCli batch run.
pub const CLI_TIMEOUT: Duration = Duration::from_secs(60);

/// `CLASSPATH` as the package's zkEnv.sh sets it.
pub fn classpath() -> String {
    format!("{ZOOKEEPER_CONF_DIR}:{ZOOKEEPER_JAR}")
}

/// Options of a standalone server. Defaults: tickTime 2000, fsync on (forceSync=yes,
/// ZooKeeper's default), admin server off, all four-letter words allowed.
#[derive(Clone, Debug)]
pub struct ZkOptions {
    pub tick_time_ms: u32,
    pub force_sync: bool,
    /// Extra `key=value` lines for zoo.cfg.
    pub extra_cfg: Vec<String>,
    /// Extra JVM flags (e.g. `-Xmx512m`); none by default, like the Debian package.
    pub jvm_flags: Vec<String>,
}

/// The system property that lets ZooKeeper accept TTL nodes (`CreateMode`s
/// PersistentWithTTL / PersistentSequentialWithTTL); without it a TTL create fails with
/// `Unimplemented`. ZooKeeper reads it with `Boolean.getBoolean`, so it is a JVM flag.
pub const EXTENDED_TYPES_FLAG: &str = "-Dzookeeper.extendedTypesEnabled=true";

impl ZkOptions {
    /// Sets `zookeeper.extendedTypesEnabled=true` (TTL nodes), see [`EXTENDED_TYPES_FLAG`].
    pub fn with_extended_types(mut self) -> Self {
        if !self.jvm_flags.iter().any(|f| f == EXTENDED_TYPES_FLAG) {
            self.jvm_flags.push(EXTENDED_TYPES_FLAG.to_owned());
        }
        self
    }
}

impl Default for ZkOptions {
    fn default() -> Self {
        ZkOptions {
            tick_time_ms: 2000,
            force_sync: true,
            extra_cfg: Vec::new(),
            jvm_flags: Vec::new(),
        }
    }
}

/// A running standalone ZooKeeper server. Killed, and its dir removed, on drop.
pub struct ZooKeeper {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl ZooKeeper {
    /// `Ok(())` when the Debian package and java are installed, else the reason to skip.
    pub fn available() -> Result<(), String> {
        for p in [ZOOKEEPER_JAR, ZOOKEEPER_CONF_DIR, ZOOKEEPER_BIN_DIR, JAVA] {
            if !Path::new(p).exists() {
                return Err(format!(
                    "Apache ZooKeeper not installed ({p} missing; `apt-get install zookeeper`, or run scripts/test.sh)"
                ));
            }
        }
        Ok(())
    }

    /// Prints why the caller skips and returns true when ZooKeeper is not installed.
    /// Use as `if ZooKeeper::skip_if_unavailable("my_test") { return; }`.
    pub fn skip_if_unavailable(what: &str) -> bool {
        match Self::available() {
            Ok(()) => false,
            Err(reason) => {
                eprintln!("SKIP {what}: {reason}");
                true
            }
        }
    }

    /// Starts a standalone server with default options and waits until it answers `imok`.
    pub fn start() -> io::Result<ZooKeeper> {
        Self::start_with(ZkOptions::default())
    }

    pub fn start_with(opts: ZkOptions) -> io::Result<ZooKeeper> {
        Self::available().map_err(io::Error::other)?;
        // The port is free when we look; another process may take it before the JVM binds
        // it. Then the JVM exits and we try again on another port.
        let mut last_err = None;
        for _ in 0..3 {
            match Self::try_start(&opts) {
                Ok(zk) => return Ok(zk),
                Err(e) => last_err = Some(e),
            }
        }
        Err(last_err.expect("tried at least once"))
    }

    fn try_start(opts: &ZkOptions) -> io::Result<ZooKeeper> {
        let dir = tempfile::Builder::new()
            .prefix("zookeeper-test-")
            .tempdir()?;
        let port = free_port();
        let data_dir = dir.path().join("data");
        fs::create_dir(&data_dir)?;
        let cfg_path = dir.path().join("zoo.cfg");
        let mut cfg = format!(
            "tickTime={}\n\
             dataDir={}\n\
             clientPort={port}\n\
             clientPortAddress=127.0.0.1\n\
             maxClientCnxns=0\n\
             forceSync={}\n\
             admin.enableServer=false\n\
             4lw.commands.whitelist=*\n",
            opts.tick_time_ms,
            data_dir.display(),
            if opts.force_sync { "yes" } else { "no" },
        );
        for line in &opts.extra_cfg {
            cfg.push_str(line);
            cfg.push('\n');
        }
        fs::write(&cfg_path, cfg)?;

        let child = spawn_server(dir.path(), &cfg_path, &opts.jvm_flags)?;
        let mut zk = ZooKeeper { child, port, dir };
        zk.wait_ready(START_TIMEOUT)?;
        Ok(zk)
    }

    fn wait_ready(&mut self, timeout: Duration) -> io::Result<()> {
        let addr = self.socket_addr();
        let child = &mut self.child;
        let log_path = self.dir.path().join("zookeeper.out");
        let deadline = Instant::now() + timeout;
        let mut exited = || match child.try_wait() {
            Ok(Some(status)) => Some(format!(
                "ZooKeeper exited with {status} before it served; output:\n{}",
                fs::read_to_string(&log_path).unwrap_or_default()
            )),
            _ => None,
        };
        wait_for_imok(addr, timeout, &mut exited)?;
        // `imok` only says the port is open: ZooKeeper answers it before its server
        // is running, and closes client sessions opened then (the first request gets
        // ConnectionLoss). `srvr` answers "not currently serving requests" until then.
        loop {
            if let Some(reason) = exited() {
                return Err(io::Error::other(reason));
            }
            let answer =
                four_letter_word(addr, "srvr", Duration::from_millis(500)).unwrap_or_default();
            if answer.contains("Mode: ") {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "ZooKeeper on {addr} not serving within {timeout:?} (srvr: {answer:?})"
                    ),
                ));
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// `127.0.0.1:PORT`, the connect string for clients.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn socket_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The JVM's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// What the JVM printed (stdout and stderr).
    pub fn output(&self) -> String {
        fs::read_to_string(self.dir.path().join("zookeeper.out")).unwrap_or_default()
    }

    /// Resident set size now (VmRSS), KiB.
    pub fn rss_kib(&self) -> Option<u64> {
        proc_status_kib(self.pid(), "VmRSS")
    }

    /// Peak resident set size (VmHWM), KiB.
    pub fn hwm_kib(&self) -> Option<u64> {
        proc_status_kib(self.pid(), "VmHWM")
    }

    /// Sends a four-letter word (`ruok`, `srvr`, `mntr`, ...) and returns the answer.
    pub fn four_letter(&self, word: &str) -> io::Result<String> {
        four_letter_word(self.socket_addr(), word, Duration::from_secs(5))
    }

    /// Runs zkCli in batch mode against this server.
    pub fn cli(&self, commands: &[&str]) -> io::Result<ZkCliOutput> {
        zk_cli(&self.addr(), commands)
    }
}

impl Drop for ZooKeeper {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // TempDir removes the directory when it drops, right after this.
    }
}

/// Starts one server JVM on `cfg_path`, output to `<dir>/zookeeper.out` (appended, so a
/// restarted member keeps its earlier output), logs in `dir`: the command line of the
/// package's `zkServer.sh start-foreground`, minus the script: same class path, same JVM
/// flags, our config.
fn spawn_server(dir: &Path, cfg_path: &Path, jvm_flags: &[String]) -> io::Result<Child> {
    let log = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("zookeeper.out"))?;
    let mut cmd = Command::new(JAVA);
    super::die_with_starter(&mut cmd);
    cmd.arg(format!("-Dzookeeper.log.dir={}", dir.display()))
        .arg("-Dzookeeper.log.file=zookeeper.log")
        .arg("-Dzookeeper.root.logger=INFO,CONSOLE")
        .arg("-XX:+HeapDumpOnOutOfMemoryError")
        .arg("-XX:OnOutOfMemoryError=kill -9 %p")
        .args(jvm_flags)
        .arg("-cp")
        .arg(classpath())
        .arg(SERVER_MAIN)
        .arg(cfg_path)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::from(log.try_clone()?))
        .stderr(Stdio::from(log))
        .spawn()
}

pub use super::ports::free_port;

/// A `kB` field of /proc/PID/status (`VmRSS`, `VmHWM`, ...), in KiB.
pub fn proc_status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|line| {
        let rest = line.strip_prefix(field)?.strip_prefix(':')?;
        rest.trim().trim_end_matches("kB").trim().parse().ok()
    })
}

/// Sends a four-letter word on the client port and reads the answer until the server
/// closes the connection.
pub fn four_letter_word(addr: SocketAddr, word: &str, timeout: Duration) -> io::Result<String> {
    let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    stream.write_all(word.as_bytes())?;
    // Half-close like `nc -q`: servers answer and close.
    let _ = stream.shutdown(Shutdown::Write);
    let mut answer = String::new();
    stream.read_to_string(&mut answer)?;
    Ok(answer)
}

/// Polls `ruok` until the answer is `imok` or the deadline passes. `exited` is asked
/// between tries; returning `Some(reason)` (the process died) stops the wait with it.
pub fn wait_for_imok(
    addr: SocketAddr,
    timeout: Duration,
    mut exited: impl FnMut() -> Option<String>,
) -> io::Result<()> {
    let deadline = Instant::now() + timeout;
    let mut last: String;
    loop {
        if let Some(reason) = exited() {
            return Err(io::Error::other(reason));
        }
        match four_letter_word(addr, "ruok", Duration::from_millis(500)) {
            Ok(answer) if answer.trim() == "imok" => return Ok(()),
            Ok(answer) => last = format!("answered {answer:?}"),
            Err(e) => last = e.to_string(),
        }
        if Instant::now() >= deadline {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("{addr} did not answer imok within {timeout:?} (last: {last})"),
            ));
        }
        // Poll interval of a condition wait, not a settle delay.
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// What one zkCli batch run printed.
#[derive(Clone, Debug)]
pub struct ZkCliOutput {
    pub status: ExitStatus,
    /// stdout and stderr interleaved as printed (both go to one file, so results on
    /// stdout and `Created /x` / error lines on stderr keep their order).
    pub raw: String,
}

impl ZkCliOutput {
    /// The lines that answer the commands: drops the JVM and zkCli chatter (SLF4J,
    /// `Connecting to`, `Welcome to ZooKeeper!`, `JLine support is disabled`, the
    /// session-state `WATCHER::`/`WatchedEvent state:... type:None` blocks) and blank lines.
    /// Node watch events (type other than None) are kept.
    pub fn lines(&self) -> Vec<String> {
        self.raw
            .lines()
            .map(|l| l.trim_end())
            .filter(|l| !is_cli_noise(l))
            .map(str::to_owned)
            .collect()
    }
}

fn is_cli_noise(line: &str) -> bool {
    line.is_empty()
        || line.starts_with("SLF4J:")
        || line.starts_with("Connecting to ")
        || line == "Welcome to ZooKeeper!"
        || line == "JLine support is disabled"
        || line == "JLine support is enabled"
        || line == "WATCHER::"
        || (line.starts_with("WatchedEvent state:") && line.contains(" type:None "))
}

/// Runs zkCli (`org.apache.zookeeper.ZooKeeperMain -server SERVER`) with `commands` on its
/// stdin, then `quit`: one JVM (~0.6 s here) for the whole script. Without jline (Debian
/// does not ship it for ZooKeeper) zkCli reads stdin line by line, runs each command in
/// order, waits for its reply, and keeps going after a failed command. Killed after
/// [`CLI_TIMEOUT`] (the Java client retries a dead server forever).
pub fn zk_cli(server: &str, commands: &[&str]) -> io::Result<ZkCliOutput> {
    ZooKeeper::available().map_err(io::Error::other)?;
    let out = tempfile::NamedTempFile::new()?;
    // One open file (one offset) behind both stdout and stderr keeps the order of lines.
    let sink = out.reopen()?;
    let mut child = Command::new(JAVA)
        // Client JVM: C1 only starts faster; nothing here runs long enough for C2.
        .arg("-XX:TieredStopAtLevel=1")
        .arg("-Dzookeeper.log.dir=/tmp")
        .arg("-cp")
        .arg(classpath())
        .arg(CLI_MAIN)
        .arg("-server")
        .arg(server)
        .stdin(Stdio::piped())
        .stdout(Stdio::from(sink.try_clone()?))
        .stderr(Stdio::from(sink))
        .spawn()?;
    {
        let mut stdin = child.stdin.take().expect("piped stdin");
        let mut script = String::new();
        for c in commands {
            script.push_str(c);
            script.push('\n');
        }
        script.push_str("quit\n");
        // A JVM that died early closes the pipe; its output says why.
        let _ = stdin.write_all(script.as_bytes());
    }
    let deadline = Instant::now() + CLI_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "zkCli against {server} did not finish within {CLI_TIMEOUT:?}; output so far:\n{}",
                    fs::read_to_string(out.path()).unwrap_or_default()
                ),
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let raw = fs::read_to_string(out.path())?;
    Ok(ZkCliOutput { status, raw })
}

// ---- ensemble -----------------------------------------------------------------------

/// Options of a [`ZooKeeperEnsemble`]. Defaults suit failover tests: tickTime 200 ms
/// (sessions from 400 ms, expiry checked every tick), initLimit 50 and syncLimit 10
/// ticks (10 s to join, a silent leader noticed after 2 s; a killed one at once, its
/// sockets close), no fsync (kill -9 of a JVM keeps the page cache, so fsync protects
/// nothing here and slows every write on a shared disk), a small serial-GC heap.
#[derive(Clone, Debug)]
pub struct EnsembleOptions {
    pub tick_time_ms: u32,
    pub init_limit: u32,
    pub sync_limit: u32,
    pub min_session_timeout_ms: u32,
    pub max_session_timeout_ms: u32,
    pub force_sync: bool,
    /// Extra `key=value` lines for every member's zoo.cfg.
    pub extra_cfg: Vec<String>,
    pub jvm_flags: Vec<String>,
}

impl Default for EnsembleOptions {
    fn default() -> Self {
        EnsembleOptions {
            tick_time_ms: 200,
            init_limit: 50,
            sync_limit: 10,
            min_session_timeout_ms: 400,
            max_session_timeout_ms: 60_000,
            force_sync: false,
            extra_cfg: Vec::new(),
            jvm_flags: vec![
                "-Xmx256m".to_owned(),
                // Two shared cores: one GC thread, C1 only (these JVMs live seconds).
                "-XX:+UseSerialGC".to_owned(),
                "-XX:TieredStopAtLevel=1".to_owned(),
            ],
        }
    }
}

/// What `srvr` says a member is doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ZkMode {
    Leader,
    Follower,
    /// Up but not serving (looking for a leader, or syncing with one).
    NotServing,
    /// No answer (not running, or not listening yet).
    Down,
}

/// One member of a [`ZooKeeperEnsemble`]: `<ensemble dir>/m<id>/` holds its zoo.cfg,
/// `data/myid`, its output (`zookeeper.out`) and logs.
pub struct EnsembleMember {
    pub id: u32,
    pub client_port: u16,
    pub peer_port: u16,
    pub election_port: u16,
    dir: PathBuf,
    jvm_flags: Vec<String>,
    child: Option<Child>,
}

impl EnsembleMember {
    fn cfg_path(&self) -> PathBuf {
        self.dir.join("zoo.cfg")
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// `127.0.0.1:<client port>`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.client_port)
    }

    pub fn socket_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.client_port))
    }

    /// The JVM's pid while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the JVM runs (started and not exited).
    pub fn is_running(&mut self) -> bool {
        match &mut self.child {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// What the JVM printed (stdout and stderr, over every start).
    pub fn output(&self) -> String {
        fs::read_to_string(self.dir.join("zookeeper.out")).unwrap_or_default()
    }

    /// Sends a four-letter word to this member.
    pub fn four_letter(&self, word: &str) -> io::Result<String> {
        four_letter_word(self.socket_addr(), word, Duration::from_secs(2))
    }

    /// The member's mode per `srvr` (one try, 1 s timeout).
    pub fn mode(&self) -> ZkMode {
        if self.child.is_none() {
            return ZkMode::Down;
        }
        match four_letter_word(self.socket_addr(), "srvr", Duration::from_secs(1)) {
            Ok(answer) => parse_mode(&answer),
            Err(_) => ZkMode::Down,
        }
    }

    fn spawn(&mut self) -> io::Result<()> {
        assert!(self.child.is_none(), "member {} already runs", self.id);
        self.child = Some(spawn_server(&self.dir, &self.cfg_path(), &self.jvm_flags)?);
        Ok(())
    }

    /// SIGKILL of the JVM, reaped. No-op when it does not run.
    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Why the JVM is gone, when it exited by itself.
    fn exited(&mut self) -> Option<String> {
        let c = self.child.as_mut()?;
        match c.try_wait() {
            Ok(Some(status)) => Some(format!(
                "ZooKeeper member {} exited with {status}; output tail:\n{}",
                self.id,
                tail_lines(&self.output(), 40)
            )),
            _ => None,
        }
    }
}

/// `Mode: leader` / `Mode: follower` (or standalone, read as a leader) from a `srvr`
/// answer; a member that is up but not serving answers "This ZooKeeper instance is not
/// currently serving requests".
pub fn parse_mode(srvr: &str) -> ZkMode {
    match srvr
        .lines()
        .find_map(|l| l.strip_prefix("Mode: "))
        .map(str::trim)
    {
        Some("leader") | Some("standalone") => ZkMode::Leader,
        Some("follower") | Some("observer") => ZkMode::Follower,
        Some(_) => ZkMode::NotServing,
        None if srvr.is_empty() => ZkMode::Down,
        None => ZkMode::NotServing,
    }
}

fn tail_lines(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// A running Apache ZooKeeper ensemble of `n` members (ids `1..=n`) on 127.0.0.1, each
/// its own JVM with its own zoo.cfg (`server.N=127.0.0.1:<peer>:<election>` for every
/// member), data dir and `myid`, and distinct client, quorum and election ports. Built for
/// failover tests: members can be killed (kill -9) and restarted. Drop kills every JVM
/// and removes the dir, also on panic.
pub struct ZooKeeperEnsemble {
    members: Vec<EnsembleMember>,
    opts: EnsembleOptions,
    // Last: removed after every JVM is dead.
    dir: tempfile::TempDir,
}

/// Ports that were free a moment ago, distinct from each other.
fn free_ports(n: usize) -> Vec<u16> {
    (0..n).map(|_| free_port()).collect()
}

impl ZooKeeperEnsemble {
    /// Starts `n` members with [`EnsembleOptions::default`] and waits until exactly one is
    /// the leader and every other one follows it.
    pub fn start(n: usize) -> io::Result<ZooKeeperEnsemble> {
        Self::start_with(n, EnsembleOptions::default())
    }

    pub fn start_with(n: usize, opts: EnsembleOptions) -> io::Result<ZooKeeperEnsemble> {
        assert!(n >= 1, "an ensemble needs a member");
        ZooKeeper::available().map_err(io::Error::other)?;
        // A port picked free may be taken before a JVM binds it; that JVM then exits
        // (or never serves) and we start over on other ports.
        let mut last_err = None;
        for _ in 0..3 {
            match Self::try_start(n, &opts) {
                Ok(e) => return Ok(e),
                Err(e) => last_err = Some(e),
            }
        }
        Err(last_err.expect("tried at least once"))
    }

    fn try_start(n: usize, opts: &EnsembleOptions) -> io::Result<ZooKeeperEnsemble> {
        let dir = tempfile::Builder::new()
            .prefix("zookeeper-ensemble-")
            .tempdir()?;
        let ports = free_ports(3 * n);
        let mut members: Vec<EnsembleMember> = (0..n)
            .map(|i| EnsembleMember {
                id: i as u32 + 1,
                client_port: ports[3 * i],
                peer_port: ports[3 * i + 1],
                election_port: ports[3 * i + 2],
                dir: dir.path().join(format!("m{}", i + 1)),
                jvm_flags: opts.jvm_flags.clone(),
                child: None,
            })
            .collect();
        let servers: String = members
            .iter()
            .map(|m| {
                format!(
                    "server.{}=127.0.0.1:{}:{}\n",
                    m.id, m.peer_port, m.election_port
                )
            })
            .collect();
        for m in &members {
            fs::create_dir_all(m.data_dir())?;
            fs::write(m.data_dir().join("myid"), format!("{}\n", m.id))?;
            let mut cfg = format!(
                "tickTime={}\n\
                 initLimit={}\n\
                 syncLimit={}\n\
                 dataDir={}\n\
                 clientPort={}\n\
                 clientPortAddress=127.0.0.1\n\
                 maxClientCnxns=0\n\
                 minSessionTimeout={}\n\
                 maxSessionTimeout={}\n\
                 forceSync={}\n\
                 admin.enableServer=false\n\
                 4lw.commands.whitelist=*\n\
                 reconfigEnabled=false\n\
                 standaloneEnabled=false\n",
                opts.tick_time_ms,
                opts.init_limit,
                opts.sync_limit,
                m.data_dir().display(),
                m.client_port,
                opts.min_session_timeout_ms,
                opts.max_session_timeout_ms,
                if opts.force_sync { "yes" } else { "no" },
            );
            cfg.push_str(&servers);
            for line in &opts.extra_cfg {
                cfg.push_str(line);
                cfg.push('\n');
            }
            fs::write(m.cfg_path(), cfg)?;
        }
        for m in &mut members {
            m.spawn()?;
        }
        let mut e = ZooKeeperEnsemble {
            members,
            opts: opts.clone(),
            dir,
        };
        e.wait_leader(START_TIMEOUT)?;
        Ok(e)
    }

    /// `127.0.0.1:p1,127.0.0.1:p2,...`: every member, killed ones included (clients
    /// skip a dead server).
    pub fn connect_string(&self) -> String {
        self.members
            .iter()
            .map(EnsembleMember::addr)
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn len(&self) -> usize {
        self.members.len()
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    pub fn options(&self) -> &EnsembleOptions {
        &self.opts
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn members(&self) -> &[EnsembleMember] {
        &self.members
    }

    /// Member `id` (1-based, its `myid`).
    pub fn member(&self, id: u32) -> &EnsembleMember {
        self.members
            .iter()
            .find(|m| m.id == id)
            .unwrap_or_else(|| panic!("no ensemble member {id}"))
    }

    fn member_mut(&mut self, id: u32) -> &mut EnsembleMember {
        self.members
            .iter_mut()
            .find(|m| m.id == id)
            .unwrap_or_else(|| panic!("no ensemble member {id}"))
    }

    /// Every member's mode now, by id (one `srvr` each).
    pub fn modes(&self) -> Vec<(u32, ZkMode)> {
        self.members.iter().map(|m| (m.id, m.mode())).collect()
    }

    /// The id of the member that says it leads, if exactly one does now.
    pub fn leader(&self) -> Option<u32> {
        let leaders: Vec<u32> = self
            .modes()
            .into_iter()
            .filter(|(_, mode)| *mode == ZkMode::Leader)
            .map(|(id, _)| id)
            .collect();
        (leaders.len() == 1).then(|| leaders[0])
    }

    /// Waits (polling `srvr` under `timeout`) until exactly one running member reports
    /// `Mode: leader` and every other running member `Mode: follower`; returns the
    /// leader's id. Fails at once when a member's JVM exits by itself.
    pub fn wait_leader(&mut self, timeout: Duration) -> io::Result<u32> {
        let deadline = Instant::now() + timeout;
        loop {
            for m in &mut self.members {
                if let Some(reason) = m.exited() {
                    return Err(io::Error::other(reason));
                }
            }
            let modes: Vec<(u32, ZkMode)> = self
                .members
                .iter()
                .filter(|m| m.child.is_some())
                .map(|m| (m.id, m.mode()))
                .collect();
            let leaders: Vec<u32> = modes
                .iter()
                .filter(|(_, mode)| *mode == ZkMode::Leader)
                .map(|(id, _)| *id)
                .collect();
            let followers = modes
                .iter()
                .filter(|(_, mode)| *mode == ZkMode::Follower)
                .count();
            if leaders.len() == 1 && followers + 1 == modes.len() {
                return Ok(leaders[0]);
            }
            if Instant::now() >= deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "ensemble has no single leader with every running member following \
                         within {timeout:?}: {modes:?}\n{}",
                        self.output_tails(20)
                    ),
                ));
            }
            // Poll interval of a condition wait, not a settle delay.
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// kill -9 of member `id`'s JVM (its data dir stays, for [`Self::restart`]).
    pub fn kill9(&mut self, id: u32) {
        self.member_mut(id).kill9();
    }

    /// Starts member `id` again on its data dir and waits until it serves (and the
    /// ensemble has one leader followed by every running member).
    pub fn restart(&mut self, id: u32) -> io::Result<u32> {
        self.member_mut(id).spawn()?;
        self.wait_leader(START_TIMEOUT)
    }

    /// The last `n` output lines of every member, for failure messages.
    pub fn output_tails(&self, n: usize) -> String {
        self.members
            .iter()
            .map(|m| {
                format!(
                    "===== ZooKeeper member {} (client port {}) =====\n{}\n",
                    m.id,
                    m.client_port,
                    tail_lines(&m.output(), n)
                )
            })
            .collect()
    }
}

impl Drop for ZooKeeperEnsemble {
    fn drop(&mut self) {
        for m in &mut self.members {
            m.kill9();
        }
        // TempDir removes the directory when it drops, right after this.
    }
}
