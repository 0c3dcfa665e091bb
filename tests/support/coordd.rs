//! A real coordd process for tests: started on a free 127.0.0.1 port with its own data
//! directory, killed and removed on drop.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// How long a coordd may take to answer `ruok` after it was started.
pub const START_TIMEOUT_MS: u64 = 20_000;

/// The coordd binary: `COORDD_BIN`, else the workspace's release or debug build (built
/// once with cargo when neither exists).
pub fn coordd_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Ok(p) = std::env::var("COORDD_BIN") {
            return PathBuf::from(p);
        }
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let target = std::env::var("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|_| root.join("target"));
        for profile in ["release", "debug"] {
            let p = target.join(profile).join("coordd");
            if p.exists() {
                return p;
            }
        }
        let status = Command::new(env!("CARGO"))
            .args(["build", "-p", "coordd", "--bin", "coordd"])
            .current_dir(root)
            .status()
            .expect("run cargo build -p coordd");
        assert!(status.success(), "cargo build -p coordd failed");
        target.join("debug").join("coordd")
    })
    .clone()
}

pub use super::ports::free_port;

/// Sends a four-letter word and returns the answer, or None if the server is not there.
pub fn four_letter(addr: SocketAddr, word: &str) -> Option<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(word.as_bytes()).ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

/// Polls `cond` until it holds or `timeout` passes; panics with `what` on timeout.
pub fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

pub struct Coordd {
    pub addr: SocketAddr,
    pub dir: tempfile::TempDir,
    pub extra_args: Vec<String>,
    child: Option<Child>,
}

impl Coordd {
    /// Starts a standalone coordd with a 100 ms tick (session timeouts 200 ms - 2 s), so
    /// that expiry tests are quick.
    pub fn start() -> Coordd {
        Coordd::start_with(&["--tick-time-ms", "100"])
    }

    pub fn start_with(args: &[&str]) -> Coordd {
        Coordd::start_in(tempfile::tempdir().expect("temp dir"), args)
    }

    /// Starts with `dir` as the working directory; the data directory is `dir/data`
    /// (a test may mount something there first).
    pub fn start_in(dir: tempfile::TempDir, args: &[&str]) -> Coordd {
        let mut c = Coordd {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            dir,
            extra_args: args.iter().map(|s| s.to_string()).collect(),
            child: None,
        };
        c.spawn(true);
        c
    }

    /// Starts on a chosen client address (e.g. on 127.0.0.2); panics if it cannot.
    pub fn start_at(dir: tempfile::TempDir, addr: SocketAddr, args: &[String]) -> Coordd {
        let mut c = Coordd {
            addr,
            dir,
            extra_args: args.to_vec(),
            child: None,
        };
        c.spawn(false);
        c
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn connect_string(&self) -> String {
        self.addr.to_string()
    }

    fn spawn(&mut self, new_port: bool) {
        for _attempt in 0..5 {
            if new_port {
                self.addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
            }
            let log = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.dir.path().join("coordd.log"))
                .expect("open log");
            let mut cmd = Command::new(coordd_bin());
            super::die_with_starter(&mut cmd);
            let child = cmd
                .arg("--client-addr")
                .arg(self.addr.to_string())
                .arg("--data-dir")
                .arg(self.data_dir())
                .args(&self.extra_args)
                .env(
                    "RUST_LOG",
                    std::env::var("COORDD_LOG").unwrap_or_else(|_| "info".into()),
                )
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("spawn coordd");
            self.child = Some(child);
            let deadline = Instant::now() + Duration::from_millis(START_TIMEOUT_MS);
            loop {
                if four_letter(self.addr, "ruok").as_deref() == Some("imok") {
                    return;
                }
                if let Some(status) = self
                    .child
                    .as_mut()
                    .and_then(|c| c.try_wait().ok().flatten())
                {
                    // Most likely the port was taken between free_port and bind.
                    eprintln!("coordd exited early ({status}); log:\n{}", self.log());
                    self.child = None;
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "coordd did not answer ruok; log:\n{}",
                    self.log()
                );
                std::thread::sleep(Duration::from_millis(10));
            }
            if !new_port {
                panic!("coordd failed to restart on {}", self.addr);
            }
        }
        panic!("coordd failed to start");
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("coordd.log")).unwrap_or_default()
    }

    /// The exit status if the process has ended on its own.
    pub fn try_wait(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// kill -9, as a crash.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait for a clean exit; returns the exit status.
    pub fn terminate(&mut self) -> Option<std::process::ExitStatus> {
        let mut c = self.child.take()?;
        unsafe_kill(c.id(), 15);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(st)) = c.try_wait() {
                return Some(st);
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                return c.wait().ok();
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Starts again on the same port and data directory.
    pub fn restart(&mut self) {
        self.kill9();
        self.spawn(false);
    }
}

/// A coordd ensemble of real processes, member `i` (1-based) with its client and peer
/// ports on 127.0.0.`i`, a 100 ms tick unless told; killed and removed on drop.
pub struct CoorddEnsemble {
    pub members: Vec<Coordd>,
    /// Member `i`'s (0-based) peer address, as in the `--ensemble` lists.
    pub peers: Vec<SocketAddr>,
    tick_ms: u32,
    extra: Vec<String>,
}

impl CoorddEnsemble {
    pub fn start(n: usize) -> CoorddEnsemble {
        CoorddEnsemble::start_with(n, &[])
    }

    /// `tick_ms`: coordd's tickTime (sessions of 2-20 ticks).
    pub fn start_with_tick(n: usize, tick_ms: u32) -> CoorddEnsemble {
        CoorddEnsemble::spawn(n, tick_ms, &[])
    }

    /// `tick_ms` and `extra` flags for every member.
    pub fn start_with_tick_and(n: usize, tick_ms: u32, extra: &[&str]) -> CoorddEnsemble {
        CoorddEnsemble::spawn(n, tick_ms, extra)
    }

    /// Like [`CoorddEnsemble::start`], with `extra` flags for every member (e.g.
    /// `--max-session-timeout-ms`; the 100 ms tick caps session timeouts at 2 s).
    pub fn start_with(n: usize, extra: &[&str]) -> CoorddEnsemble {
        CoorddEnsemble::spawn(n, 100, extra)
    }

    fn spawn(n: usize, tick_ms: u32, extra: &[&str]) -> CoorddEnsemble {
        let dirs = (0..n)
            .map(|_| tempfile::tempdir().expect("temp dir"))
            .collect();
        CoorddEnsemble::start_in_dirs(dirs, tick_ms, extra)
    }

    /// One member per directory of `dirs` (its data directory `dir/data`: a test may
    /// mount something there first), with `tick_ms` and `extra` flags for every member.
    pub fn start_in_dirs(
        dirs: Vec<tempfile::TempDir>,
        tick_ms: u32,
        extra: &[&str],
    ) -> CoorddEnsemble {
        CoorddEnsemble::start_in_dirs_with(dirs, tick_ms, extra, |_| Vec::new())
    }

    /// [`CoorddEnsemble::start_with`] plus flags of each member's own: `member_args(i)`
    /// for member `i` (1-based, on 127.0.0.`i`), e.g. its TLS client port or certificate.
    pub fn start_with_member_args(
        n: usize,
        extra: &[&str],
        member_args: impl Fn(usize) -> Vec<String>,
    ) -> CoorddEnsemble {
        let dirs = (0..n)
            .map(|_| tempfile::tempdir().expect("temp dir"))
            .collect();
        CoorddEnsemble::start_in_dirs_with(dirs, 100, extra, member_args)
    }

    fn start_in_dirs_with(
        dirs: Vec<tempfile::TempDir>,
        tick_ms: u32,
        extra: &[&str],
        member_args: impl Fn(usize) -> Vec<String>,
    ) -> CoorddEnsemble {
        let n = dirs.len();
        let ip = |i: usize| std::net::Ipv4Addr::new(127, 0, 0, i as u8);
        let free_on = |i: usize| super::ports::free_addr(ip(i));
        let clients: Vec<SocketAddr> = (1..=n).map(free_on).collect();
        let peers: Vec<SocketAddr> = (1..=n).map(free_on).collect();
        let list = peers
            .iter()
            .enumerate()
            .map(|(i, a)| format!("{}={a}", i + 1))
            .collect::<Vec<_>>()
            .join(",");
        // Spawn all before waiting for any: a member answers ruok before it has a
        // quorum, but the others must exist for the ensemble to form.
        let members = dirs
            .into_iter()
            .enumerate()
            .map(|(i0, dir)| {
                let i = i0 + 1;
                let mut args = vec![
                    "--tick-time-ms".to_string(),
                    tick_ms.to_string(),
                    "--id".to_string(),
                    i.to_string(),
                    "--ensemble".to_string(),
                    list.clone(),
                ];
                args.extend(extra.iter().map(|s| s.to_string()));
                args.extend(member_args(i));
                Coordd::start_at(dir, clients[i - 1], &args)
            })
            .collect();
        CoorddEnsemble {
            members,
            peers,
            tick_ms,
            extra: extra.iter().map(|s| s.to_string()).collect(),
        }
    }

    /// Members started elsewhere (their peer addresses unknown here: no
    /// [`CoorddEnsemble::start_joining`]).
    pub fn from_members(members: Vec<Coordd>) -> CoorddEnsemble {
        CoorddEnsemble {
            members,
            peers: Vec::new(),
            tick_ms: 100,
            extra: Vec::new(),
        }
    }

    /// Starts one more member (id = members + 1, on 127.0.0.<id>) with `--join` and an
    /// `--ensemble` list of every member started so far plus itself, as a new member of a
    /// running ensemble is started before a reconfig adds it; the same tick and extra
    /// flags as the others. Returns its index; its peer address is `peers[index]`.
    pub fn start_joining(&mut self) -> usize {
        let i = self.members.len() + 1;
        let ip = std::net::Ipv4Addr::new(127, 0, 0, i as u8);
        let free = || super::ports::free_addr(ip);
        let (client, peer) = (free(), free());
        self.peers.push(peer);
        let list = self
            .peers
            .iter()
            .enumerate()
            .map(|(i, a)| format!("{}={a}", i + 1))
            .collect::<Vec<_>>()
            .join(",");
        let mut args = vec![
            "--tick-time-ms".to_string(),
            self.tick_ms.to_string(),
            "--id".to_string(),
            i.to_string(),
            "--ensemble".to_string(),
            list,
            "--join".to_string(),
        ];
        args.extend(self.extra.iter().cloned());
        let dir = tempfile::tempdir().expect("temp dir");
        self.members.push(Coordd::start_at(dir, client, &args));
        i - 1
    }

    /// Every member's client address.
    pub fn servers(&self) -> Vec<String> {
        self.members.iter().map(|m| m.connect_string()).collect()
    }

    /// Every member's client address, comma separated.
    pub fn connect_string(&self) -> String {
        self.servers().join(",")
    }

    /// The `Mode:` line of `srvr` of member `i` (0-based), if it answers.
    pub fn mode(&self, i: usize) -> Option<String> {
        let out = four_letter(self.members[i].addr, "srvr")?;
        out.lines()
            .find_map(|l| l.strip_prefix("Mode: "))
            .map(str::to_string)
    }

    /// The index of the member that reports itself leader now, if one does.
    pub fn leader_now(&self) -> Option<usize> {
        (0..self.members.len()).find(|&i| self.mode(i).as_deref() == Some("leader"))
    }

    /// The last `n` lines of every member's `coordd.log`.
    pub fn log_tails(&self, n: usize) -> String {
        let mut s = String::new();
        for (i, m) in self.members.iter().enumerate() {
            let log = m.log();
            let lines: Vec<&str> = log.lines().collect();
            s.push_str(&format!(
                "\n===== coordd member {} ({}) log (tail) =====\n{}\n",
                i + 1,
                m.addr,
                lines[lines.len().saturating_sub(n)..].join("\n")
            ));
        }
        s
    }

    /// The index of the member that reports itself leader, once exactly one among
    /// `alive` does and the others report follower.
    pub fn wait_leader(&self, alive: &[usize], timeout: Duration) -> usize {
        let mut leader = None;
        wait_until("one leader, the rest followers", timeout, || {
            let modes: Vec<Option<String>> = alive.iter().map(|&i| self.mode(i)).collect();
            let leaders: Vec<usize> = alive
                .iter()
                .zip(&modes)
                .filter(|(_, m)| m.as_deref() == Some("leader"))
                .map(|(&i, _)| i)
                .collect();
            let followers = modes
                .iter()
                .filter(|m| m.as_deref() == Some("follower"))
                .count();
            if leaders.len() == 1 && followers == alive.len() - 1 {
                leader = Some(leaders[0]);
                true
            } else {
                false
            }
        });
        leader.expect("set when the wait succeeded")
    }
}

/// A failing test shows what the members said: their logs die with their temp dirs.
impl Drop for CoorddEnsemble {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.log_tails(LOG_TAIL_LINES_ON_FAILURE));
        }
    }
}

/// How many lines of each member's log a failing test prints (openraft's per-retry
/// replication lines are throttled, so they no longer fill it).
const LOG_TAIL_LINES_ON_FAILURE: usize = 150;

fn unsafe_kill(pid: u32, signal: i32) {
    let _ = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status();
}

impl Drop for Coordd {
    fn drop(&mut self) {
        self.kill9();
    }
}
