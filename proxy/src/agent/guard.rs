//! The fence guard: a small process beside each agent that stops the agent's PostgreSQL
//! (immediate mode) when the agent can no longer do it: at once when the agent process is
//! gone, however it went (kill -9, a crash, the OOM killer), and at the agent's own fencing
//! deadline (`lease - margin`) when the agent stops renewing it while it is master (the
//! process paused, its runtime stuck).
//!
//! Why: the agent fences its own PostgreSQL when its lease runs out (the watchdog,
//! DESIGN.md 4), but only while it runs and its runtime turns. An agent that dies or hangs
//! leaves a primary running; its session expires, another node is promoted, and the old
//! primary still takes writes from whatever reaches it directly. Patroni leaves this to a
//! kernel watchdog; here a second process holds the deadline.
//!
//! How: the agent starts `switchyard fence-guard` (its own executable again) with a pipe
//! on its stdin and keeps the write end for its whole life (close-on-exec, so no other
//! child inherits it). Over it, lines:
//! - `F <ns>`: fence at this CLOCK_MONOTONIC time unless a later line moves it (the
//!   master's watchdog sends its `lease - margin` every `FENCE_CHECK`);
//! - `C`: no deadline (not master, or the session is over and handled);
//! - `q`: stand down: exit without fencing (an agent ending by itself, which has stopped
//!   or fenced its PostgreSQL as it should; it waits, bounded, for the guard to exit, so
//!   nothing of the agent outlives it).
//!
//! End of file (the kernel closes the pipe when the agent process ends in any way) fences
//! at once. The guard runs in its own process group, so a signal to the agent's group (a
//! terminal's Ctrl-C, SIGSTOP of the group) does not reach it; a SIGTERM to the guard
//! itself ends it without fencing (a supervisor stopping everything: the agent stops its
//! PostgreSQL itself).
//!
//! One guard per data directory: a guard holds an exclusive `flock` on
//! `<pg_data>.switchyard-guard.lock` for its life and says `ready` on its stdout once it
//! has it; the agent touches PostgreSQL only after that. An agent restarted at once after
//! a crash (a supervisor's restart) therefore waits until the old guard has fenced and
//! exited. Before, the new agent started its standby while the old guard's immediate
//! stop still waited for the pid file, which then named the new server: the old guard
//! killed it, and left it unclean.
//!
//! Invariants: once the agent process is gone without standing the guard down, or a
//! deadline it sent passes without a newer one or `C`, PostgreSQL is stopped within an
//! immediate stop's time (`pg_ctl`, bounded by `PgOptions::fence_timeout`, then SIGKILL),
//! as long as the guard runs; the agent logs an error if the guard exits before it. A
//! pause of the whole machine (or of the guard too) is not covered: that needs a kernel
//! or hardware watchdog.

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use tracing::{error, info, warn};

use crate::pg::{self, PgBinaries, PgServer, StopMode};

/// The hidden subcommand of the `switchyard` binary that runs the guard.
pub const FENCE_GUARD_COMMAND: &str = "fence-guard";

/// How long an agent that ends by itself waits for its guard to exit.
pub const STAND_DOWN_WAIT_MS: u64 = 2_000;

/// Longest line the guard accepts; a longer one is dropped (with a warning).
pub const GUARD_LINE_BYTES_MAX: usize = 64;

/// How long a new guard waits for the data directory's guard lock: an earlier guard
/// holds it while it fences (an immediate stop: `PgOptions::fence_timeout`, 2 s, then
/// SIGKILL), then exits.
pub const GUARD_LOCK_WAIT_MS: u64 = 10_000;

/// How long the agent waits for its guard's `ready`: the lock wait and the guard's start.
pub const GUARD_READY_TIMEOUT_MS: u64 = GUARD_LOCK_WAIT_MS + 5_000;

/// What the guard prints on stdout once it holds the lock.
const GUARD_READY_LINE: &[u8] = b"ready\n";

/// The guard lock of data directory `pg_data`: beside it, like the rewind marker.
pub fn guard_lock_path(pg_data: &std::path::Path) -> PathBuf {
    let mut p = pg_data.as_os_str().to_owned();
    p.push(".switchyard-guard.lock");
    PathBuf::from(p)
}

/// What the guard needs to stop one PostgreSQL: its command line after
/// [`FENCE_GUARD_COMMAND`].
#[derive(Clone, Debug, clap::Parser)]
#[command(name = "switchyard fence-guard")]
pub struct GuardTarget {
    #[arg(long)]
    pub pg_data: PathBuf,
    #[arg(long)]
    pub pg_bindir: Option<PathBuf>,
    #[arg(long)]
    pub os_user: String,
}

/// For the `main` of an executable that runs agents (`switchyard`, `switchyard-demo`):
/// runs the guard and returns its exit code when this process was started as one
/// (`<exe> fence-guard ...`), else `None`.
pub fn main_if_guard() -> Option<ExitCode> {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if args.get(1).and_then(|a| a.to_str()) != Some(FENCE_GUARD_COMMAND) {
        return None;
    }
    // The command's name stands in for the executable's: clap skips it.
    let target = <GuardTarget as clap::Parser>::parse_from(args.into_iter().skip(1));
    super::log_to_stderr(false);
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("switchyard fence-guard: tokio runtime: {e}");
            return Some(ExitCode::FAILURE);
        }
    };
    Some(match run_guard(&target, &rt) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("switchyard fence-guard: {e}");
            ExitCode::FAILURE
        }
    })
}

impl GuardTarget {
    fn args(&self) -> Vec<String> {
        let mut a = vec![
            FENCE_GUARD_COMMAND.to_owned(),
            "--pg-data".to_owned(),
            self.pg_data.display().to_string(),
            "--os-user".to_owned(),
            self.os_user.clone(),
        ];
        if let Some(b) = &self.pg_bindir {
            a.push("--pg-bindir".to_owned());
            a.push(b.display().to_string());
        }
        a
    }
}

/// CLOCK_MONOTONIC in nanoseconds: the clock both processes share (std's `Instant` is it,
/// but does not expose its value).
fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec we pass; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec as u64)
}

/// `at` on [`monotonic_ns`]'s scale.
fn instant_ns(at: Instant) -> u64 {
    let now = Instant::now();
    let ns = monotonic_ns();
    match at.checked_duration_since(now) {
        Some(ahead) => ns.saturating_add(ahead.as_nanos() as u64),
        None => ns.saturating_sub(now.duration_since(at).as_nanos() as u64),
    }
}

/// One line from the agent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Directive {
    /// Fence at this [`monotonic_ns`] time unless moved.
    FenceAt(u64),
    /// No deadline.
    Clear,
    /// Exit without fencing.
    StandDown,
}

impl Directive {
    fn line(self) -> String {
        match self {
            Directive::FenceAt(ns) => format!("F {ns}\n"),
            Directive::Clear => "C\n".to_owned(),
            Directive::StandDown => "q\n".to_owned(),
        }
    }

    /// Parses one line (without its newline); `None` for anything else.
    pub fn parse(line: &[u8]) -> Option<Directive> {
        match line {
            b"C" => Some(Directive::Clear),
            b"q" => Some(Directive::StandDown),
            [b'F', b' ', ns @ ..] => std::str::from_utf8(ns)
                .ok()?
                .parse()
                .ok()
                .map(Directive::FenceAt),
            _ => None,
        }
    }
}

/// Splits what arrives on the pipe into directives, bounding a line's length.
#[derive(Debug, Default)]
pub struct LineReader {
    partial: Vec<u8>,
    /// Skipping the rest of a line that passed [`GUARD_LINE_BYTES_MAX`].
    skipping: bool,
}

impl LineReader {
    /// The directives completed by `bytes`, in order; malformed or over-long lines are
    /// counted in the second value and dropped.
    pub fn push(&mut self, bytes: &[u8]) -> (Vec<Directive>, usize) {
        let mut out = Vec::new();
        let mut bad = 0;
        for &b in bytes {
            if b == b'\n' {
                if !self.skipping {
                    match Directive::parse(&self.partial) {
                        Some(d) => out.push(d),
                        None => bad += 1,
                    }
                }
                self.partial.clear();
                self.skipping = false;
            } else if !self.skipping {
                self.partial.push(b);
                if self.partial.len() > GUARD_LINE_BYTES_MAX {
                    self.partial.clear();
                    self.skipping = true;
                    bad += 1;
                }
            }
        }
        (out, bad)
    }
}

/// The agent's side of the pipe, shared by the watchdog (deadlines) and
/// [`FenceGuard::stand_down`]. Writes never block for long: the guard reads every line at
/// once, and a line is a few bytes against the pipe's 64 KiB.
#[derive(Clone)]
pub struct GuardLink {
    pipe: Arc<Mutex<Option<ChildStdin>>>,
    /// A failed write is logged once.
    broken: Arc<AtomicBool>,
}

impl GuardLink {
    fn send(&self, d: Directive) {
        let mut pipe = self.pipe.lock().unwrap_or_else(|e| e.into_inner());
        let Some(p) = pipe.as_mut() else { return };
        // A line is far below PIPE_BUF: written whole or not at all.
        match p.write(d.line().as_bytes()) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if !self.broken.swap(true, Ordering::SeqCst) {
                    warn!("the fence guard is not reading (paused?): a deadline was dropped");
                }
            }
            Err(e) => {
                if !self.broken.swap(true, Ordering::SeqCst) {
                    error!(error = %e, "writing to the fence guard failed: it no longer holds the fencing deadline");
                }
            }
        }
    }

    /// The master's fencing deadline (`lease - margin`).
    pub fn fence_at(&self, at: Instant) {
        self.send(Directive::FenceAt(instant_ns(at)));
    }

    /// No deadline any more (not master, or fenced and handled by the agent).
    pub fn clear(&self) {
        self.send(Directive::Clear);
    }
}

/// The agent's end of a running guard: the agent's death, or dropping this without
/// [`FenceGuard::stand_down`], fences.
pub struct FenceGuard {
    link: GuardLink,
    pid: u32,
    /// Set before standing down, so that the reaper does not report the exit as an error.
    standing_down: Arc<AtomicBool>,
    /// Receives once the reaper has waited the guard's exit.
    exited: mpsc::Receiver<()>,
}

impl FenceGuard {
    /// Starts the guard from the running executable (`switchyard`, `switchyard-demo`).
    pub fn spawn(target: &GuardTarget) -> std::io::Result<FenceGuard> {
        use std::os::unix::process::CommandExt;
        let mut child: Child = Command::new(std::env::current_exe()?)
            .args(target.args())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .process_group(0)
            .spawn()?;
        let pid = child.id();
        let (Some(pipe), Some(out)) = (child.stdin.take(), child.stdout.take()) else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(std::io::Error::other(
                "the fence guard has no stdin or stdout pipe",
            ));
        };
        // Nothing may touch PostgreSQL before the guard holds the data directory's lock
        // (an earlier guard may still be fencing).
        if let Err(e) = wait_ready(out, Duration::from_millis(GUARD_READY_TIMEOUT_MS)) {
            let _ = child.kill();
            let _ = child.wait();
            return Err(std::io::Error::other(format!(
                "the fence guard is not ready ({e}); is another agent's guard holding {}?",
                guard_lock_path(&target.pg_data).display()
            )));
        }
        // Never block the agent's runtime on a guard that does not read (paused): a
        // deadline that does not fit is dropped, and the guard keeps the one it has.
        // SAFETY: fcntl on the pipe's valid descriptor.
        unsafe {
            let fd = pipe.as_raw_fd();
            let flags = libc::fcntl(fd, libc::F_GETFL);
            if flags < 0 || libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) < 0 {
                let e = std::io::Error::last_os_error();
                let _ = child.kill();
                let _ = child.wait();
                return Err(e);
            }
        }
        let standing_down = Arc::new(AtomicBool::new(false));
        let (exited_tx, exited) = mpsc::channel();
        // Reaps the guard and says so if it ends while the agent runs: from then on a
        // dead or stuck agent would leave its PostgreSQL running.
        let told = standing_down.clone();
        std::thread::Builder::new()
            .name("fence-guard-reaper".into())
            .spawn(move || {
                match child.wait() {
                    Ok(_) if told.load(Ordering::SeqCst) => {}
                    Ok(status) => error!(
                        pid,
                        %status,
                        "the fence guard exited: if this agent dies or hangs now, its PostgreSQL keeps running"
                    ),
                    Err(e) => error!(pid, error = %e, "waiting for the fence guard failed"),
                }
                let _ = exited_tx.send(());
            })?;
        info!(
            pid,
            "fence guard started: PostgreSQL stops if this agent dies, or hangs as master"
        );
        Ok(FenceGuard {
            link: GuardLink {
                pipe: Arc::new(Mutex::new(Some(pipe))),
                broken: Arc::default(),
            },
            pid,
            standing_down,
            exited,
        })
    }

    /// The handle the master's watchdog sends its deadlines through.
    pub fn link(&self) -> GuardLink {
        self.link.clone()
    }

    /// For an agent that ends by itself: tells the guard to exit without fencing and waits
    /// for it, at most [`STAND_DOWN_WAIT_MS`].
    pub fn stand_down(self) {
        self.standing_down.store(true, Ordering::SeqCst);
        self.link.send(Directive::StandDown);
        // Closing our end as well: the guard exits on either.
        drop(
            self.link
                .pipe
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take(),
        );
        if self
            .exited
            .recv_timeout(Duration::from_millis(STAND_DOWN_WAIT_MS))
            .is_err()
        {
            warn!(
                pid = self.pid,
                "the fence guard did not exit within {STAND_DOWN_WAIT_MS} ms"
            );
        }
    }
}

/// Reads the guard's stdout until [`GUARD_READY_LINE`], at most `timeout`.
fn wait_ready(mut out: std::process::ChildStdout, timeout: Duration) -> std::io::Result<()> {
    let deadline = Instant::now() + timeout;
    let mut got = Vec::new();
    let mut buf = [0u8; 16];
    while !got.ends_with(GUARD_READY_LINE) {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || got.len() > GUARD_READY_LINE.len() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no `ready` within {timeout:?}"),
            ));
        }
        let timeout_ms = libc::c_int::try_from(left.as_millis().max(1)).unwrap_or(libc::c_int::MAX);
        if !poll_readable(out.as_raw_fd(), timeout_ms)? {
            continue;
        }
        match out.read(&mut buf) {
            Ok(0) => {
                return Err(std::io::Error::other(
                    "the guard exited before it was ready",
                ))
            }
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Takes the exclusive lock on `path` (created if absent), waiting at most
/// [`GUARD_LOCK_WAIT_MS`] while another guard holds it. Returns the open file (the lock
/// lives as long as it), or None when the agent's pipe ended meanwhile (the agent is gone
/// before it touched PostgreSQL: nothing to fence).
fn take_guard_lock(
    path: &std::path::Path,
    agent: libc::c_int,
) -> Result<Option<std::fs::File>, String> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| format!("open {}: {e}", path.display()))?;
    let deadline = Instant::now() + Duration::from_millis(GUARD_LOCK_WAIT_MS);
    let mut waited = false;
    loop {
        // SAFETY: flock on the file's valid descriptor.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            if waited {
                info!(lock = %path.display(), "the earlier guard is gone: guarding");
            }
            return Ok(Some(file));
        }
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EWOULDBLOCK) {
            return Err(format!("lock {}: {e}", path.display()));
        }
        if !waited {
            info!(lock = %path.display(), "another fence guard holds this data directory (an earlier agent's, fencing?): waiting for it");
            waited = true;
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "{} stayed locked for {GUARD_LOCK_WAIT_MS} ms: another guard (another agent on this data directory?) holds it",
                path.display()
            ));
        }
        // Meanwhile, an agent that is gone ends the wait (its pipe reads end of file; it
        // sends nothing else before `ready`).
        if poll_readable(agent, GUARD_LOCK_POLL_MS).unwrap_or(false) {
            let mut byte = [0u8; 1];
            // SAFETY: read into a valid one-byte buffer.
            let n = unsafe { libc::read(agent, byte.as_mut_ptr().cast(), 1) };
            if n == 0 {
                return Ok(None);
            }
        }
    }
}

/// Whether `fd` has something to read (or its end) within `timeout_ms` (-1: no limit).
/// False on a timeout or a signal: callers decide again and wait anew.
fn poll_readable(fd: libc::c_int, timeout_ms: libc::c_int) -> std::io::Result<bool> {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd for the duration of the call.
    match unsafe { libc::poll(&mut pfd, 1, timeout_ms) } {
        n if n > 0 => Ok(true),
        0 => Ok(false),
        _ => {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                Ok(false)
            } else {
                Err(e)
            }
        }
    }
}

/// Poll interval while a guard waits for the lock.
const GUARD_LOCK_POLL_MS: libc::c_int = 50;

/// What the guard does next, from its deadline and the time: pure, for tests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GuardStep {
    /// Wait for the pipe, at most this long (`None`: no deadline).
    Wait(Option<Duration>),
    /// The deadline has passed: fence now.
    Fence,
}

/// The next step with deadline `fence_at` at `now` (both [`monotonic_ns`]).
pub fn guard_step(fence_at: Option<u64>, now: u64) -> GuardStep {
    match fence_at {
        None => GuardStep::Wait(None),
        Some(at) if now >= at => GuardStep::Fence,
        Some(at) => GuardStep::Wait(Some(Duration::from_nanos(at - now))),
    }
}

/// Stops PostgreSQL in immediate mode if it runs.
fn fence(server: &PgServer, rt: &tokio::runtime::Runtime, why: &str) -> Result<(), String> {
    if !server.postmaster_alive() {
        return Ok(());
    }
    warn!(
        pg_data = %server.data_dir().display(),
        "{why}: fencing its PostgreSQL (immediate stop)"
    );
    rt.block_on(server.stop(StopMode::Immediate))
        .map_err(|e| format!("immediate stop: {e}"))
}

/// The guard's body (`switchyard fence-guard`): follows the agent's lines on stdin (see the
/// module doc) and fences at a deadline that passes or at end of file (then exits); exits
/// at once on a stand-down.
pub fn run_guard(target: &GuardTarget, rt: &tokio::runtime::Runtime) -> Result<(), String> {
    // Resolved once, before anything waits: a fence then runs no `pg_config`, and a guard
    // that cannot fence says so at once (the agent logs its exit).
    let bins = PgBinaries::find(target.pg_bindir.as_deref())
        .map_err(|e| format!("PostgreSQL binaries: {e}"))?;
    let opts = pg::PgOptions {
        os_user: target.os_user.clone(),
        ..pg::PgOptions::default()
    };
    let server = PgServer::new(bins, &target.pg_data, opts).map_err(|e| e.to_string())?;
    let mut stdin = std::io::stdin().lock();
    let fd = stdin.as_raw_fd();
    let Some(_lock) = take_guard_lock(&guard_lock_path(&target.pg_data), fd)? else {
        return Ok(());
    };
    {
        let mut out = std::io::stdout().lock();
        out.write_all(GUARD_READY_LINE)
            .and_then(|()| out.flush())
            .map_err(|e| format!("telling the agent it is ready: {e}"))?;
    }
    let mut lines = LineReader::default();
    let mut fence_at: Option<u64> = None;
    let mut buf = [0u8; 512];
    loop {
        let wait = match guard_step(fence_at, monotonic_ns()) {
            GuardStep::Fence => {
                fence_at = None;
                if let Err(e) = fence(&server, rt, "the agent let its lease run out") {
                    error!("fencing failed: {e}");
                }
                continue;
            }
            GuardStep::Wait(w) => w,
        };
        // Whole milliseconds, rounded up, so that a wake-up is never early.
        let timeout_ms: libc::c_int = match wait {
            None => -1,
            Some(w) => w
                .as_nanos()
                .div_ceil(1_000_000)
                .try_into()
                .unwrap_or(libc::c_int::MAX),
        };
        match poll_readable(fd, timeout_ms) {
            Ok(true) => {}
            Ok(false) => continue, // the deadline (or a signal): decided at the top
            Err(e) => {
                warn!(error = %e, "fence guard: poll failed; fencing");
                return fence(&server, rt, "the guard lost its agent");
            }
        }
        match stdin.read(&mut buf) {
            Ok(0) => return fence(&server, rt, "the agent is gone"),
            Ok(n) => {
                let (directives, bad) = lines.push(&buf[..n]);
                if bad > 0 {
                    warn!(bad, "fence guard: ignored malformed lines from the agent");
                }
                for d in directives {
                    match d {
                        Directive::FenceAt(at) => fence_at = Some(at),
                        Directive::Clear => fence_at = None,
                        Directive::StandDown => return Ok(()),
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                warn!(error = %e, "fence guard: reading the agent's pipe failed; fencing");
                return fence(&server, rt, "the guard lost its agent");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_become_directives_and_bad_ones_are_dropped() {
        let mut r = LineReader::default();
        let (d, bad) = r.push(b"F 123\nC\nq\n");
        assert_eq!(
            d,
            vec![
                Directive::FenceAt(123),
                Directive::Clear,
                Directive::StandDown
            ]
        );
        assert_eq!(bad, 0);
        // Split across reads.
        assert_eq!(r.push(b"F 4"), (vec![], 0));
        assert_eq!(r.push(b"56\n"), (vec![Directive::FenceAt(456)], 0));
        // Malformed, and a line past the bound (dropped whole, the next one read).
        let long = [b'F'; GUARD_LINE_BYTES_MAX + 10];
        let (d, bad) = r.push(b"F x\nX\n\n");
        assert_eq!((d, bad), (vec![], 3));
        let (d, bad) = r.push(&[&long[..], b"\nC\n"].concat());
        assert_eq!((d, bad), (vec![Directive::Clear], 1));
        assert_eq!(Directive::parse(b"F -1"), None);
        assert_eq!(Directive::parse(b"F 18446744073709551616"), None);
    }

    #[test]
    fn directives_round_trip_through_their_lines() {
        for d in [
            Directive::FenceAt(0),
            Directive::FenceAt(u64::MAX),
            Directive::Clear,
            Directive::StandDown,
        ] {
            let line = d.line();
            assert_eq!(
                Directive::parse(line.trim_end().as_bytes()),
                Some(d),
                "{line:?}"
            );
        }
    }

    #[test]
    fn the_guard_fences_only_once_a_deadline_has_passed() {
        assert_eq!(guard_step(None, 5), GuardStep::Wait(None));
        assert_eq!(
            guard_step(Some(1_000_000_100), 100),
            GuardStep::Wait(Some(Duration::from_secs(1)))
        );
        assert_eq!(guard_step(Some(100), 100), GuardStep::Fence);
        assert_eq!(guard_step(Some(100), 101), GuardStep::Fence);
    }

    #[test]
    fn an_instant_maps_onto_the_monotonic_clock() {
        let now = monotonic_ns();
        let later = instant_ns(Instant::now() + Duration::from_secs(2));
        let d = later.saturating_sub(now);
        assert!((1_900_000_000..2_500_000_000).contains(&d), "{d} ns ahead");
    }
}
