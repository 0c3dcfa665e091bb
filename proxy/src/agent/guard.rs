//! The fence guard: a small process beside each agent that stops the agent's PostgreSQL
//! (immediate mode) the moment the agent process is gone, however it went (kill -9, a
//! crash, the OOM killer).
//!
//! Why: the agent fences its own PostgreSQL when its session is in doubt (the lease
//! watchdog, DESIGN.md 4), but only while it runs. An agent that dies leaves a primary
//! running; its session expires, another node is promoted, and the old primary still
//! takes writes from whatever reaches it directly. Patroni leaves this to a hardware or
//! kernel watchdog; here a process that outlives the agent closes the window for a dead
//! agent (a paused one still relies on the lease).
//!
//! How: the agent starts `switchyard fence-guard` with a pipe on its stdin and keeps the
//! write end for its whole life (close-on-exec, so no other child inherits it). The kernel
//! closes it when the agent's process ends in any way, which the guard sees as end of
//! file. An agent that ends by itself (SIGTERM, a fatal error: it has stopped or fenced
//! its PostgreSQL as it should) first writes [`STAND_DOWN`] and waits, bounded, for the
//! guard to exit, so that nothing of the agent outlives it. The guard runs in its own
//! process group, so a signal to the agent's group (a terminal's Ctrl-C, a test's kill
//! of the group) does not take it too; a SIGTERM to the guard itself ends it without
//! fencing (a supervisor stopping everything: the agent stops its PostgreSQL itself).
//!
//! Invariant: once the agent process is gone without standing the guard down, its
//! PostgreSQL is stopped within `pg_ctl stop -m immediate`'s time (bounded by
//! `PgOptions::fence_timeout`, then SIGKILL), as long as the guard runs. The agent logs an
//! error if the guard ever exits before it.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use tracing::{error, info, warn};

use crate::pg::{self, PgBinaries, PgServer, StopMode};

/// The hidden subcommand of the `switchyard` binary that runs the guard.
pub const FENCE_GUARD_COMMAND: &str = "fence-guard";

/// What an agent that ends by itself writes to its guard: exit without fencing.
pub const STAND_DOWN: u8 = b'q';

/// How long an agent that ends by itself waits for its guard to exit.
pub const STAND_DOWN_WAIT_MS: u64 = 2_000;

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
        Ok(_) => ExitCode::SUCCESS,
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

/// The agent's end of a running guard: the agent's death, or dropping this without
/// [`FenceGuard::stand_down`], fences.
pub struct FenceGuard {
    /// The write end of the guard's stdin: held, written only to stand down.
    alive: ChildStdin,
    pid: u32,
    /// Set before standing down, so that the reaper does not report the exit as an error.
    standing_down: Arc<AtomicBool>,
    /// Receives once the reaper has waited the guard's exit.
    exited: mpsc::Receiver<()>,
}

impl FenceGuard {
    /// Starts the guard from the running executable (`switchyard`).
    pub fn spawn(target: &GuardTarget) -> std::io::Result<FenceGuard> {
        let exe = std::env::current_exe()?;
        Self::spawn_from(&exe, target)
    }

    /// Starts the guard from `exe` (a `switchyard` binary).
    pub fn spawn_from(exe: &Path, target: &GuardTarget) -> std::io::Result<FenceGuard> {
        use std::os::unix::process::CommandExt;
        let mut child: Child = Command::new(exe)
            .args(target.args())
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .process_group(0)
            .spawn()?;
        let pid = child.id();
        let Some(alive) = child.stdin.take() else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(std::io::Error::other("the fence guard has no stdin pipe"));
        };
        let standing_down = Arc::new(AtomicBool::new(false));
        let (exited_tx, exited) = mpsc::channel();
        // Reaps the guard and says so if it ends while the agent runs: from then on a
        // dead agent would leave its PostgreSQL running.
        let told = standing_down.clone();
        std::thread::Builder::new()
            .name("fence-guard-reaper".into())
            .spawn(move || {
                match child.wait() {
                    Ok(_) if told.load(Ordering::SeqCst) => {}
                    Ok(status) => error!(
                        pid,
                        %status,
                        "the fence guard exited: if this agent dies now, its PostgreSQL keeps running"
                    ),
                    Err(e) => error!(pid, error = %e, "waiting for the fence guard failed"),
                }
                let _ = exited_tx.send(());
            })?;
        info!(
            pid,
            "fence guard started: PostgreSQL stops if this agent dies"
        );
        Ok(FenceGuard {
            alive,
            pid,
            standing_down,
            exited,
        })
    }

    /// For an agent that ends by itself: tells the guard to exit without fencing and waits
    /// for it, at most [`STAND_DOWN_WAIT_MS`].
    pub fn stand_down(mut self) {
        self.standing_down.store(true, Ordering::SeqCst);
        if let Err(e) = self.alive.write_all(&[STAND_DOWN]) {
            warn!(pid = self.pid, error = %e, "telling the fence guard to stand down");
        }
        let FenceGuard { alive, exited, .. } = self;
        drop(alive);
        if exited
            .recv_timeout(Duration::from_millis(STAND_DOWN_WAIT_MS))
            .is_err()
        {
            warn!("the fence guard did not exit within {STAND_DOWN_WAIT_MS} ms");
        }
    }

    /// The guard's process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }
}

/// The guard's body (`switchyard fence-guard`): waits for end of file on stdin, then stops
/// PostgreSQL in immediate mode (on `rt`) if it runs; returns at once on [`STAND_DOWN`].
/// Returns whether it had to stop PostgreSQL and did.
pub fn run_guard(target: &GuardTarget, rt: &tokio::runtime::Runtime) -> Result<bool, String> {
    // Blocks until the agent's end closes. Nothing is ever written; anything that is is
    // read and ignored.
    let mut stdin = std::io::stdin().lock();
    let mut buf = [0u8; 64];
    loop {
        match stdin.read(&mut buf) {
            Ok(0) => break,
            Ok(n) if buf[..n].contains(&STAND_DOWN) => return Ok(false),
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                warn!(error = %e, "fence guard: reading the agent's pipe failed; fencing");
                break;
            }
        }
    }
    let bins = PgBinaries::find(target.pg_bindir.as_deref())
        .map_err(|e| format!("PostgreSQL binaries: {e}"))?;
    let opts = pg::PgOptions {
        os_user: target.os_user.clone(),
        ..pg::PgOptions::default()
    };
    let server = PgServer::new(bins, &target.pg_data, opts).map_err(|e| e.to_string())?;
    if !server.postmaster_alive() {
        return Ok(false);
    }
    warn!(
        pg_data = %target.pg_data.display(),
        "the agent is gone: fencing its PostgreSQL (immediate stop)"
    );
    rt.block_on(server.stop(StopMode::Immediate))
        .map_err(|e| format!("immediate stop: {e}"))?;
    Ok(true)
}
