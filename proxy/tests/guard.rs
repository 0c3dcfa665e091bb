//! The fence guard as a process (`switchyard fence-guard`): one guard per data directory.
//! A second guard on the same data directory (an agent restarted at once after a crash,
//! while its old guard still fences) says `ready` only once the first one is gone, and
//! the agent touches PostgreSQL only after `ready`.
//!
//! No PostgreSQL server runs here (there is nothing to fence, so a guard's fence is a
//! no-op), but the guard resolves the PostgreSQL binaries at start: the test skips with a
//! printed reason when they are missing.

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use switchyard_proxy::agent::guard::{guard_lock_path, GUARD_LOCK_WAIT_MS};
use switchyard_proxy::pg::PgBinaries;

/// Bound on every wait for a guard's answer or exit.
const WAIT: Duration = Duration::from_secs(10);

/// The guard resolves the PostgreSQL binaries at start: without them, skip (say why).
fn skip() -> bool {
    match PgBinaries::find(None) {
        Ok(_) => false,
        Err(e) => {
            eprintln!("skipped: PostgreSQL binaries not found ({e})");
            true
        }
    }
}

fn spawn_guard(pg_data: &std::path::Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["fence-guard", "--pg-data"])
        .arg(pg_data)
        .args(["--os-user", "postgres"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn the fence guard")
}

/// What the guard printed on stdout within `within` (empty if nothing).
fn read_within(child: &mut Child, within: Duration) -> String {
    let out = child.stdout.as_mut().expect("stdout piped");
    let mut pfd = libc::pollfd {
        fd: out.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = libc::c_int::try_from(within.as_millis()).unwrap_or(libc::c_int::MAX);
    // SAFETY: one valid pollfd for the duration of the call.
    if unsafe { libc::poll(&mut pfd, 1, ms) } <= 0 {
        return String::new();
    }
    let mut buf = [0u8; 64];
    let n = out.read(&mut buf).unwrap_or(0);
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

fn wait_exit(child: &mut Child) {
    let deadline = Instant::now() + WAIT;
    while child.try_wait().expect("try_wait").is_none() {
        assert!(Instant::now() < deadline, "the guard did not exit");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn a_second_guard_on_a_data_directory_is_ready_only_once_the_first_is_gone() {
    if skip() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let pg_data = dir.path().join("data");
    let mut first = spawn_guard(&pg_data);
    assert_eq!(read_within(&mut first, WAIT), "ready\n");
    assert!(guard_lock_path(&pg_data).exists());

    let mut second = spawn_guard(&pg_data);
    // Not ready while the first holds the lock (observed for a while, well within the
    // second's lock wait).
    let quiet = Duration::from_millis(GUARD_LOCK_WAIT_MS / 10);
    assert_eq!(
        read_within(&mut second, quiet),
        "",
        "ready beside a live guard"
    );

    // The first one's agent is gone: it fences (nothing runs) and exits; the second
    // takes over.
    drop(first.stdin.take());
    wait_exit(&mut first);
    assert_eq!(read_within(&mut second, WAIT), "ready\n");

    // A stand-down ends the second without fencing.
    second
        .stdin
        .as_mut()
        .unwrap()
        .write_all(b"q\n")
        .expect("write q");
    wait_exit(&mut second);
    assert!(second.wait().unwrap().success());
}

#[test]
fn a_guard_whose_agent_is_gone_while_it_waits_for_the_lock_exits() {
    if skip() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let pg_data = dir.path().join("data");
    let mut first = spawn_guard(&pg_data);
    assert_eq!(read_within(&mut first, WAIT), "ready\n");
    let mut second = spawn_guard(&pg_data);
    // Its agent gives up before it was ready: the waiting guard exits at once, cleanly,
    // without waiting out the lock.
    let gone = Instant::now();
    drop(second.stdin.take());
    wait_exit(&mut second);
    assert!(second.wait().unwrap().success());
    assert!(
        gone.elapsed() < Duration::from_millis(GUARD_LOCK_WAIT_MS),
        "{:?}",
        gone.elapsed()
    );
    drop(first.stdin.take());
    wait_exit(&mut first);
}
