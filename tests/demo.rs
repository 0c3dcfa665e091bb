//! The demo binary (`switchyard-demo`, issue 6): its unattended run tells the whole
//! story (election, reads on both replicas, failover with the measured write gap, the
//! old master rejoining) and exits 0; SIGINT in the middle of a run leaves no process
//! of that run and no temporary directory. Skips with a printed reason when the
//! PostgreSQL binaries are not installed.

#[path = "support/ports.rs"]
mod ports;
#[path = "support/postgres.rs"]
mod postgres;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// One demo at a time: two at once on a 2-core machine only slow each other down (and
/// a master that misses its heartbeats for a session timeout fences itself).
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Cargo builds the binary for the integration tests of its own package.
const DEMO: &str = env!("CARGO_BIN_EXE_switchyard-demo");
/// Bound on a whole unattended run (the acceptance bound is 2 minutes).
const RUN_DEADLINE: Duration = Duration::from_secs(120);
/// Bound on the demo's exit after SIGINT (agents get 5 s, coordd 3 s, PostgreSQL 5 s).
const STOP_DEADLINE: Duration = Duration::from_secs(30);

/// A demo run whose output lines arrive on a channel (stdout and stderr merged, in
/// arrival order per stream).
struct Run {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Run {
    fn start(args: &[&str]) -> Run {
        let mut child = Command::new(DEMO)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn switchyard-demo");
        let (tx, lines) = mpsc::channel();
        for stream in [
            Box::new(child.stdout.take().expect("stdout")) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().expect("stderr")),
        ] {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines() {
                    let Ok(line) = line else { break };
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
        }
        Run {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Reads lines until one contains `needle` (returned), panicking with everything
    /// seen after `deadline` or when the output ends first.
    fn wait_line(&mut self, needle: &str, deadline: Instant) -> String {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    eprintln!("demo| {line}");
                    self.seen.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(e) => panic!(
                    "no line with {needle:?} from the demo ({e:?}); output:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }

    /// Waits for the exit (killing the demo at `deadline`) and for the rest of its
    /// output.
    fn finish(&mut self, deadline: Instant) -> ExitStatus {
        let status = loop {
            if let Some(st) = self.child.try_wait().expect("try_wait") {
                break st;
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "the demo did not exit in time; output:\n{}",
                    self.seen.join("\n")
                );
            }
            if let Ok(line) = self.lines.recv_timeout(Duration::from_millis(50)) {
                eprintln!("demo| {line}");
                self.seen.push(line);
            }
        };
        // The readers end with the pipes.
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(5)) {
            eprintln!("demo| {line}");
            self.seen.push(line);
        }
        status
    }

    fn output(&self) -> String {
        self.seen.join("\n")
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        // A failed test must not leave the demo running: SIGINT makes it clean up.
        if let Ok(None) = self.child.try_wait() {
            signal(self.child.id(), libc::SIGINT);
            let deadline = Instant::now() + STOP_DEADLINE;
            while Instant::now() < deadline {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn signal(pid: u32, sig: libc::c_int) {
    // SAFETY: a signal to our own child.
    unsafe {
        libc::kill(pid as libc::pid_t, sig);
    }
}

/// The temporary directory the demo names in its first line.
fn temp_dir_of(line: &str) -> PathBuf {
    let rest = line
        .split("temp dir ")
        .nth(1)
        .unwrap_or_else(|| panic!("no temp dir in {line:?}"));
    PathBuf::from(rest.split_whitespace().next().expect("a path"))
}

/// (state, start time) of a live process from /proc/<pid>/stat; None when gone.
fn proc_stat(pid: u32) -> Option<(char, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the comm: state is field 3, starttime field 22 (1-based, man proc).
    let state = fields.first()?.chars().next()?;
    let start = fields.get(19)?.parse().ok()?;
    Some((state, start))
}

/// Every process whose command line names `dir`, and every child of those (the
/// PostgreSQL backends' command lines do not name their data directory).
fn processes_of(dir: &Path) -> BTreeMap<u32, u64> {
    let needle = dir.as_os_str().as_encoded_bytes();
    let mut table = Vec::new();
    for e in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let ppid = stat
            .rfind(')')
            .and_then(|i| stat[i + 1..].split_whitespace().nth(1))
            .and_then(|s| s.parse::<u32>().ok())
            .unwrap_or(0);
        let names = cmdline.windows(needle.len()).any(|w| w == needle);
        table.push((pid, ppid, names));
    }
    let roots: Vec<u32> = table.iter().filter(|t| t.2).map(|t| t.0).collect();
    let mut out = BTreeMap::new();
    for (pid, ppid, names) in &table {
        if *names || roots.contains(ppid) {
            if let Some((state, start)) = proc_stat(*pid) {
                if state != 'Z' {
                    out.insert(*pid, start);
                }
            }
        }
    }
    out
}

/// The processes of `seen` that still run (same pid and start time, not a zombie).
fn survivors(seen: &BTreeMap<u32, u64>) -> Vec<u32> {
    seen.iter()
        .filter(|(pid, start)| {
            matches!(proc_stat(**pid), Some((state, s)) if s == **start && state != 'Z')
        })
        .map(|(pid, _)| *pid)
        .collect()
}

#[test]
fn unattended_run_tells_the_whole_story() {
    if postgres::skip() {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let started = Instant::now();
    let deadline = started + RUN_DEADLINE;
    let mut run = Run::start(&["demo", "--unattended"]);
    let dir = temp_dir_of(&run.wait_line("temp dir ", deadline));
    let status = run.finish(deadline);
    let out = run.output();
    eprintln!(
        "unattended run: {:.1} s, {status}",
        started.elapsed().as_secs_f64()
    );
    assert!(status.success(), "the demo failed ({status}):\n{out}");
    let fact = |prefix: &str| -> String {
        let summary = out.split("SUMMARY").nth(1).unwrap_or_default();
        summary
            .lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no summary line {prefix:?}:\n{out}"))
            .to_owned()
    };
    let election = fact("election: ");
    assert!(
        election.contains("won the election and is master"),
        "{election}"
    );
    // The master the demo killed: usually the election's winner; another if the
    // master changed by itself before (the demo notes it and starts the round over).
    let master = out
        .lines()
        .find_map(|l| l.split("kill -9 of the master ").nth(1))
        .and_then(|rest| rest.split(':').next())
        .unwrap_or_else(|| panic!("no kill line:\n{out}"))
        .to_owned();
    // Both replicas served reads: "reads: routed to both replicas: pgA=N pgB=M; ...".
    let reads = fact("reads: ");
    let counts: Vec<(String, u64)> = reads
        .split("replicas: ")
        .nth(1)
        .and_then(|s| s.split(';').next())
        .expect("read counts")
        .split_whitespace()
        .map(|kv| {
            let (k, v) = kv.split_once('=').expect("node=count");
            (k.to_owned(), v.parse().expect("a count"))
        })
        .collect();
    assert_eq!(counts.len(), 2, "{reads}");
    assert!(
        counts.iter().all(|(n, c)| *n != master && *c > 0),
        "{reads}"
    );
    let failover = fact("failover: ");
    let gap: f64 = failover
        .split("write gap ")
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no write gap in {failover:?}"));
    assert!(gap > 0.0 && gap < 60.0, "{failover}");
    assert!(
        !failover.starts_with(&format!("failover: {master} ")),
        "{failover}"
    );
    let rejoined = fact("rejoined: ");
    assert!(
        rejoined.starts_with(&format!("rejoined: {master} (the old master)")),
        "{rejoined}"
    );
    assert!(out.lines().any(|l| l == "demo: OK"), "{out}");
    assert!(!dir.exists(), "{} is still there", dir.display());
    let left = processes_of(&dir);
    assert!(left.is_empty(), "processes of the run remain: {left:?}");
}

#[test]
fn sigint_mid_run_stops_everything_and_removes_the_temp_dir() {
    if postgres::skip() {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let deadline = Instant::now() + RUN_DEADLINE;
    // With `--tls` (issue 7): the members talk mutual TLS and the agents and the app's
    // router reach coordd on its TLS ports, so "app started" also shows an election by
    // agents over TLS and a router reading the topology over TLS (the unattended run
    // above covers the plain path).
    let mut run = Run::start(&["demo", "--unattended", "--steady-secs", "60", "--tls"]);
    let dir = temp_dir_of(&run.wait_line("temp dir ", deadline));
    run.wait_line("TLS: a test CA in", deadline);
    // Everything runs once the app does: 3 coordd members, 3 agents, 3 PostgreSQL
    // servers with their backends (the app's and the WAL senders).
    run.wait_line("app started", deadline);
    let seen = processes_of(&dir);
    let postmasters = (1..=3)
        .filter(|i| {
            std::fs::read_to_string(dir.join(format!("pg{i}/data/postmaster.pid")))
                .ok()
                .and_then(|s| s.lines().next()?.trim().parse::<u32>().ok())
                .is_some_and(|pid| seen.contains_key(&pid))
        })
        .count();
    assert_eq!(postmasters, 3, "postmasters seen: {seen:?}");
    assert!(seen.len() >= 9, "processes seen: {seen:?}");
    let t = Instant::now();
    signal(run.child.id(), libc::SIGINT);
    let status = run.finish(Instant::now() + STOP_DEADLINE);
    eprintln!(
        "stopped {} processes in {:.1} s after SIGINT ({status})",
        seen.len(),
        t.elapsed().as_secs_f64()
    );
    assert_eq!(status.code(), Some(130), "{}", run.output());
    let left = survivors(&seen);
    assert!(
        left.is_empty(),
        "still running after the demo exited: {left:?}"
    );
    let others = processes_of(&dir);
    assert!(others.is_empty(), "processes naming the run: {others:?}");
    assert!(!dir.exists(), "{} is still there", dir.display());
}
