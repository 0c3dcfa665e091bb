//! The demo's process registry: every process it starts, the PostgreSQL data
//! directories, the temporary directory, and the cleanup that removes all of them.
//!
//! Invariants:
//! - Every child is this executable re-executed (`__coordd`, `__agent`), started in its
//!   own process group (a terminal's Ctrl-C reaches the demo alone, which then stops
//!   the rest in order) with PR_SET_PDEATHSIG = SIGTERM (it stops when the demo dies,
//!   even by SIGKILL).
//! - [`Registry::cleanup`] runs once (explicitly, else from `Drop`), is bounded in time
//!   and leaves no process behind: agents SIGTERM (they stop their PostgreSQL), then
//!   SIGKILL of their process groups; every data directory's postmaster stopped in
//!   immediate mode, SIGKILL of it and its children as the fallback; coordd members
//!   SIGTERM then SIGKILL; then a sweep kills any process whose command line names the
//!   temporary directory (and its children), and the directory is removed.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::fs::OpenOptions;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use switchyard_proxy::pg::{children_of, OsUser};

/// How long agents get to stop their PostgreSQL after SIGTERM.
const AGENT_STOP: Duration = Duration::from_secs(5);
/// How long coordd members get after SIGTERM.
const COORDD_STOP: Duration = Duration::from_secs(3);
/// Bound on one `pg_ctl stop -m immediate`.
const PG_STOP: Duration = Duration::from_secs(5);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Coordd,
    Agent,
}

struct Proc {
    name: String,
    kind: Kind,
    args: Vec<OsString>,
    log: PathBuf,
    child: Option<Child>,
}

pub struct Registry {
    /// The temporary directory; None once removed.
    root: Mutex<Option<tempfile::TempDir>>,
    root_path: PathBuf,
    procs: Mutex<Vec<Proc>>,
    /// PostgreSQL data directories (stopped at cleanup whoever started them).
    pg_data: Mutex<Vec<PathBuf>>,
    pg_bindir: PathBuf,
    /// The OS user PostgreSQL runs as (when we are root).
    pg_user: Option<OsUser>,
    cleaned: AtomicBool,
}

impl Registry {
    /// Makes the temporary directory (readable by the PostgreSQL OS user, which must
    /// reach the data directories below it).
    pub fn new(pg_bindir: PathBuf, pg_user: Option<OsUser>) -> std::io::Result<Registry> {
        let root = tempfile::Builder::new()
            .prefix("switchyard-demo-")
            .tempdir()?;
        std::fs::set_permissions(
            root.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )?;
        let root_path = root.path().to_path_buf();
        Ok(Registry {
            root: Mutex::new(Some(root)),
            root_path,
            procs: Mutex::new(Vec::new()),
            pg_data: Mutex::new(Vec::new()),
            pg_bindir,
            pg_user,
            cleaned: AtomicBool::new(false),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root_path
    }

    /// A directory under the root owned by the PostgreSQL OS user (when we are root).
    pub fn pg_dir(&self, name: &str) -> std::io::Result<PathBuf> {
        let dir = self.root_path.join(name);
        std::fs::create_dir_all(&dir)?;
        if let Some(u) = &self.pg_user {
            std::os::unix::fs::chown(&dir, Some(u.uid), Some(u.gid))?;
        }
        self.pg_data.lock().unwrap().push(dir.join("data"));
        Ok(dir)
    }

    /// Starts `current_exe() <args>` as `name`, stderr appended to `log`.
    pub fn spawn(
        &self,
        name: &str,
        kind: Kind,
        args: Vec<OsString>,
        log: PathBuf,
    ) -> std::io::Result<u32> {
        let mut procs = self.procs.lock().unwrap();
        if self.cleaned.load(Ordering::SeqCst) {
            return Err(std::io::Error::other("the demo is stopping"));
        }
        let child = start(&args, &log)?;
        let pid = child.id();
        match procs.iter_mut().find(|p| p.name == name) {
            Some(p) => {
                p.child = Some(child);
                p.args = args;
            }
            None => procs.push(Proc {
                name: name.to_owned(),
                kind,
                args,
                log,
                child: Some(child),
            }),
        }
        Ok(pid)
    }

    /// Starts `name` again with the arguments it was started with.
    pub fn restart(&self, name: &str) -> std::io::Result<u32> {
        let (kind, args, log) = {
            let procs = self.procs.lock().unwrap();
            let p = procs
                .iter()
                .find(|p| p.name == name)
                .ok_or_else(|| std::io::Error::other(format!("no process {name}")))?;
            if p.child.is_some() {
                return Err(std::io::Error::other(format!("{name} still runs")));
            }
            (p.kind, p.args.clone(), p.log.clone())
        };
        self.spawn(name, kind, args, log)
    }

    /// kill -9 of `name`'s process group (it and the commands it runs), reaped.
    pub fn kill9(&self, name: &str) {
        let mut procs = self.procs.lock().unwrap();
        if let Some(p) = procs.iter_mut().find(|p| p.name == name) {
            if let Some(mut c) = p.child.take() {
                killpg(c.id(), libc::SIGKILL);
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }

    /// The log file of `name`.
    pub fn log_of(&self, name: &str) -> Option<PathBuf> {
        let procs = self.procs.lock().unwrap();
        procs.iter().find(|p| p.name == name).map(|p| p.log.clone())
    }

    /// Names of the processes that exited on their own (with their status).
    pub fn exited(&self) -> Vec<(String, String)> {
        let mut procs = self.procs.lock().unwrap();
        let mut out = Vec::new();
        for p in procs.iter_mut() {
            if let Some(c) = &mut p.child {
                if let Ok(Some(st)) = c.try_wait() {
                    out.push((p.name.clone(), st.to_string()));
                    p.child = None;
                }
            }
        }
        out
    }

    /// The last `n` lines of every log, for a failure report.
    pub fn log_tails(&self, n: usize) -> String {
        let procs = self.procs.lock().unwrap();
        let mut s = String::new();
        for p in procs.iter() {
            let text = std::fs::read_to_string(&p.log).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            s.push_str(&format!(
                "----- {} ({}) -----\n{}\n",
                p.name,
                p.log.display(),
                lines[lines.len().saturating_sub(n)..].join("\n")
            ));
        }
        s
    }

    /// Kills -9 a PostgreSQL server: the postmaster stopped first (it forks no one and
    /// its children stay its children), then every child, then the postmaster.
    pub fn kill9_postgres(&self, data_dir: &Path) -> Option<u32> {
        let pid = postmaster_pid(data_dir)?;
        // SAFETY: signals to a pid read from postmaster.pid and to its children.
        unsafe {
            libc::kill(pid, libc::SIGSTOP);
            for c in children_of(pid) {
                libc::kill(c, libc::SIGKILL);
            }
            libc::kill(pid, libc::SIGKILL);
        }
        Some(pid as u32)
    }

    /// Stops everything and removes the temporary directory; see the module doc.
    /// Returns what it did, for the last lines of output.
    pub fn cleanup(&self) -> String {
        if self.cleaned.swap(true, Ordering::SeqCst) {
            return String::new();
        }
        let mut procs = std::mem::take(&mut *self.procs.lock().unwrap());
        let mut report = Vec::new();
        // Agents first: SIGTERM makes an agent stop its PostgreSQL (fast) and close its
        // session; whatever is left of its process group is killed afterwards.
        let agents = stop_kind(&mut procs, Kind::Agent, AGENT_STOP);
        report.push(format!("{agents} agents stopped"));
        let data_dirs = self.pg_data.lock().unwrap().clone();
        let mut pg_stopped = 0;
        for d in &data_dirs {
            if self.stop_postgres(d) {
                pg_stopped += 1;
            }
        }
        if pg_stopped > 0 {
            report.push(format!(
                "{pg_stopped} PostgreSQL servers stopped (immediate)"
            ));
        }
        let members = stop_kind(&mut procs, Kind::Coordd, COORDD_STOP);
        report.push(format!("{members} coordd members stopped"));
        let swept = sweep(&self.root_path);
        if swept > 0 {
            report.push(format!("{swept} leftover processes killed"));
        }
        if let Some(dest) = std::env::var_os("SWITCHYARD_DEMO_KEEP_LOGS") {
            report.push(self.keep_logs(Path::new(&dest)));
        }
        if let Some(root) = self.root.lock().unwrap().take() {
            match root.close() {
                Ok(()) => report.push(format!("removed {}", self.root_path.display())),
                Err(e) => {
                    // A process we did not see may still write there; one more sweep.
                    sweep(&self.root_path);
                    let again = std::fs::remove_dir_all(&self.root_path);
                    report.push(match again {
                        Ok(()) => format!("removed {}", self.root_path.display()),
                        Err(e2) => {
                            format!("could not remove {}: {e}; {e2}", self.root_path.display())
                        }
                    });
                }
            }
        }
        report.join(", ")
    }

    /// Copies every log (the processes' and PostgreSQL's) into `dest` (debugging aid:
    /// env `SWITCHYARD_DEMO_KEEP_LOGS=dir`).
    fn keep_logs(&self, dest: &Path) -> String {
        let mut logs: Vec<PathBuf> = Vec::new();
        for dir in [self.root_path.clone()].into_iter().chain(
            self.pg_data
                .lock()
                .unwrap()
                .iter()
                .filter_map(|d| d.parent().map(Path::to_path_buf)),
        ) {
            if let Ok(rd) = std::fs::read_dir(&dir) {
                logs.extend(
                    rd.flatten()
                        .map(|e| e.path())
                        .filter(|p| p.extension().is_some_and(|x| x == "log")),
                );
            }
        }
        let _ = std::fs::create_dir_all(dest);
        let mut n = 0;
        for p in logs {
            let parent = p
                .parent()
                .and_then(|d| d.file_name())
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            let name = format!(
                "{parent}-{}",
                p.file_name().unwrap_or_default().to_string_lossy()
            );
            if std::fs::copy(&p, dest.join(name)).is_ok() {
                n += 1;
            }
        }
        format!("{n} logs copied to {}", dest.display())
    }

    /// Stops the postmaster running on `data_dir`, if any: `pg_ctl stop -m immediate`
    /// as the PostgreSQL OS user, SIGKILL of it and its children if that fails.
    /// Returns whether one was running.
    fn stop_postgres(&self, data_dir: &Path) -> bool {
        let Some(pid) = postmaster_pid(data_dir) else {
            return false;
        };
        if !alive(pid) {
            return false;
        }
        let mut cmd = Command::new(self.pg_bindir.join("pg_ctl"));
        cmd.arg("stop")
            .arg("-D")
            .arg(data_dir)
            .args(["-m", "immediate", "-w", "-t", "5"])
            .env_remove("PGDATA")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some(u) = &self.pg_user {
            cmd.uid(u.uid).gid(u.gid).env("HOME", "/tmp");
        }
        if let Ok(mut child) = cmd.spawn() {
            let deadline = Instant::now() + PG_STOP;
            loop {
                match child.try_wait() {
                    Ok(Some(_)) => break,
                    Ok(None) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(20))
                    }
                    _ => {
                        let _ = child.kill();
                        let _ = child.wait();
                        break;
                    }
                }
            }
        }
        if alive(pid) {
            self.kill9_postgres(data_dir);
        }
        true
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let report = self.cleanup();
        if !report.is_empty() {
            eprintln!("switchyard-demo: cleanup: {report}");
        }
    }
}

/// Spawns the current executable with `args` in its own process group, dying with us.
fn start(args: &[OsString], log: &Path) -> std::io::Result<Child> {
    let exe = std::env::current_exe()?;
    let log = OpenOptions::new().create(true).append(true).open(log)?;
    let parent = std::process::id() as libc::pid_t;
    let mut cmd = Command::new(exe);
    cmd.args(args)
        .env(
            "RUST_LOG",
            std::env::var("SWITCHYARD_DEMO_LOG").unwrap_or_else(|_| "info".into()),
        )
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log);
    // SAFETY: prctl and getppid are async-signal-safe; nothing else runs between fork
    // and exec.
    unsafe {
        cmd.pre_exec(move || {
            // Linux only; elsewhere a killed demo leaves its children running.
            #[cfg(target_os = "linux")]
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // We died between fork and prctl: do not outlive us.
            if libc::getppid() != parent {
                libc::_exit(1);
            }
            Ok(())
        });
    }
    cmd.spawn()
}

/// SIGTERM to every live process of `kind`, wait up to `grace` for them, then SIGKILL
/// of every one's process group (also of those that exited: their children may not
/// have). Returns how many were running.
fn stop_kind(procs: &mut [Proc], kind: Kind, grace: Duration) -> usize {
    let mut running: Vec<&mut Proc> = procs
        .iter_mut()
        .filter(|p| p.kind == kind && p.child.is_some())
        .collect();
    let n = running.len();
    for p in running.iter_mut() {
        if let Some(c) = &p.child {
            // SAFETY: a signal to our own child's pid (not yet reaped).
            unsafe {
                libc::kill(c.id() as libc::pid_t, libc::SIGTERM);
            }
        }
    }
    let deadline = Instant::now() + grace;
    loop {
        let all_done = running.iter().all(|p| match &p.child {
            Some(c) => exited_unreaped(c.id()),
            None => true,
        });
        if all_done || Instant::now() >= deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    for p in running.iter_mut() {
        if let Some(mut c) = p.child.take() {
            // Not reaped yet, so its pid (the group's id) cannot have been reused.
            killpg(c.id(), libc::SIGKILL);
            let _ = c.wait();
        }
    }
    n
}

/// Whether our child `pid` has exited, without reaping it (waitid with WNOWAIT): its
/// pid stays reserved, so signalling its process group afterwards is safe.
fn exited_unreaped(pid: u32) -> bool {
    // SAFETY: waitid writes into the zeroed siginfo we pass; WNOHANG never blocks.
    unsafe {
        let mut info: libc::siginfo_t = std::mem::zeroed();
        let rc = libc::waitid(
            libc::P_PID,
            pid as libc::id_t,
            &mut info,
            libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
        );
        // rc 0 with si_pid 0: still running. An error: not our child any more.
        rc != 0 || info.si_pid() != 0
    }
}

fn killpg(pgid: u32, sig: libc::c_int) {
    // SAFETY: a signal to a process group we created (its leader is our child).
    unsafe {
        libc::killpg(pgid as libc::pid_t, sig);
    }
}

fn alive(pid: libc::pid_t) -> bool {
    // SAFETY: signal 0 only checks for existence.
    if unsafe { libc::kill(pid, 0) } != 0 {
        return false;
    }
    // A zombie is gone for our purposes.
    proc_state(pid as u32) != Some('Z')
}

/// The state letter of /proc/<pid>/stat.
fn proc_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().next()?.chars().next()
}

pub fn postmaster_pid(data_dir: &Path) -> Option<libc::pid_t> {
    let text = std::fs::read_to_string(data_dir.join("postmaster.pid")).ok()?;
    text.lines()
        .next()?
        .trim()
        .parse::<libc::pid_t>()
        .ok()
        .filter(|p| *p > 0)
}

/// Pids of the live processes whose command line contains `needle`.
pub fn processes_naming(needle: &Path) -> BTreeSet<u32> {
    let needle = needle.as_os_str().as_encoded_bytes();
    let me = std::process::id();
    let mut out = BTreeSet::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        if cmdline.windows(needle.len()).any(|w| w == needle) && alive(pid as libc::pid_t) {
            out.insert(pid);
        }
    }
    out
}

/// Kills (SIGSTOP, children SIGKILL, SIGKILL) every process naming `root` on its
/// command line, a few rounds until none is left. Returns how many it killed.
fn sweep(root: &Path) -> usize {
    let mut killed = 0;
    for _round in 0..20 {
        let pids = processes_naming(root);
        if pids.is_empty() {
            break;
        }
        for pid in pids {
            let pid = pid as libc::pid_t;
            // SAFETY: signals to processes that name our temporary directory.
            unsafe {
                libc::kill(pid, libc::SIGSTOP);
                for c in children_of(pid) {
                    libc::kill(c, libc::SIGKILL);
                }
                libc::kill(pid, libc::SIGKILL);
            }
            killed += 1;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    killed
}
