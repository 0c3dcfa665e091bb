//! Real PostgreSQL (Debian's `postgresql` package, 13 or later) for end-to-end tests.
//!
//! [`Postgres::init_primary`] makes a temp dir owned by the `postgres` OS user, runs initdb
//! (trust auth, `wal_level=replica`, `hot_standby=on`, `wal_log_hints=on` so pg_rewind works,
//! a replication entry in pg_hba.conf) and starts the postmaster on `127.0.0.1:<free port>`
//! with its unix socket in the temp dir. [`Postgres::replica_of`] takes a base backup (`-R`)
//! of a primary and starts it as a streaming standby. Readiness and streaming are polled
//! under deadlines.
//!
//! Binaries: env `PG_BINDIR`, else `pg_config --bindir` when it holds `postgres`, else
//! [`DEFAULT_BINDIR`]. [`available`] says why they cannot be used; tests skip with that
//! reason printed.
//!
//! PostgreSQL refuses to run as root: when the test runs as root every PostgreSQL process
//! runs as the `postgres` user and the dirs are chowned to it. As another user, processes
//! run as that user.
//!
//! Queries go through `psql` ([`Postgres::query`]): synchronous, no extra dependency.
//!
//! Drop stops the postmaster (immediate mode, then SIGKILL of its process group) and removes
//! the dir, also on panic.
#![allow(dead_code)]

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Where Debian's `postgresql-15` puts the server binaries.
pub const DEFAULT_BINDIR: &str = "/usr/lib/postgresql/15/bin";
/// The OS user PostgreSQL runs as when the tests run as root.
pub const PG_OS_USER: &str = "postgres";
/// The database superuser initdb creates (same name as the OS user, like Debian's).
pub const SUPERUSER: &str = "postgres";
/// Upper bound for start-up, base backup, streaming, promotion.
pub const START_TIMEOUT: Duration = Duration::from_secs(60);
/// Upper bound for one client command (psql, pg_ctl stop, ...).
pub const CMD_TIMEOUT: Duration = Duration::from_secs(60);

const TOOLS: &[&str] = &[
    "postgres",
    "initdb",
    "pg_ctl",
    "pg_basebackup",
    "pg_rewind",
    "pg_controldata",
    "psql",
    "pg_isready",
];

/// The server binaries dir, see the module doc.
pub fn bindir() -> PathBuf {
    if let Some(dir) = std::env::var_os("PG_BINDIR") {
        return PathBuf::from(dir);
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        if out.status.success() {
            let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
            if dir.join("postgres").is_file() {
                return dir;
            }
        }
    }
    PathBuf::from(DEFAULT_BINDIR)
}

/// Path of one PostgreSQL program in [`bindir`].
pub fn bin(name: &str) -> PathBuf {
    bindir().join(name)
}

/// `Err(reason)` when the tests cannot run PostgreSQL here.
pub fn available() -> Result<(), String> {
    let dir = bindir();
    let missing: Vec<&str> = TOOLS
        .iter()
        .copied()
        .filter(|t| !dir.join(t).is_file())
        .collect();
    if !missing.is_empty() {
        return Err(format!(
            "PostgreSQL binaries not found in {} (missing: {}); apt-get install postgresql \
             or set PG_BINDIR",
            dir.display(),
            missing.join(", ")
        ));
    }
    if is_root() && os_user(PG_OS_USER).is_none() {
        return Err(format!(
            "running as root but there is no `{PG_OS_USER}` OS user to run PostgreSQL as"
        ));
    }
    Ok(())
}

/// Prints why PostgreSQL tests are skipped and returns true when they must be.
pub fn skip() -> bool {
    match available() {
        Ok(()) => false,
        Err(why) => {
            eprintln!("SKIP: {why}");
            true
        }
    }
}

fn is_root() -> bool {
    // `id -u` avoids a libc dependency in the test crate.
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// (uid, gid) of an OS user, from /etc/passwd.
pub fn os_user(name: &str) -> Option<(u32, u32)> {
    let passwd = fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|line| {
        let f: Vec<&str> = line.split(':').collect();
        if f.len() >= 4 && f[0] == name {
            Some((f[2].parse().ok()?, f[3].parse().ok()?))
        } else {
            None
        }
    })
}

/// (uid, gid) every PostgreSQL process runs as; None: as ourselves.
fn run_as() -> Option<(u32, u32)> {
    if is_root() {
        os_user(PG_OS_USER)
    } else {
        None
    }
}

/// A command for a PostgreSQL program, as the PostgreSQL OS user when we are root.
pub fn pg_command(program: &str) -> Command {
    let mut cmd = Command::new(bin(program));
    if let Some((uid, gid)) = run_as() {
        cmd.uid(uid).gid(gid);
        // pg tools read $HOME (e.g. ~/.pgpass); do not point them at /root.
        cmd.env("HOME", "/tmp");
    }
    cmd.env_remove("PGDATA")
        .env_remove("PGHOST")
        .env_remove("PGPORT");
    cmd
}

/// Runs a command to completion under a deadline (killed when it passes).
pub fn run(mut cmd: Command, timeout: Duration) -> io::Result<Output> {
    let what = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    // Read the pipes on threads so a chatty child cannot block on a full pipe.
    let mut out = child.stdout.take().expect("piped stdout");
    let mut err = child.stderr.take().expect("piped stderr");
    let t_out = std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = io::Read::read_to_end(&mut out, &mut b);
        b
    });
    let t_err = std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = io::Read::read_to_end(&mut err, &mut b);
        b
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("{what} did not finish within {timeout:?}"),
            ));
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    Ok(Output {
        status,
        stdout: t_out.join().unwrap_or_default(),
        stderr: t_err.join().unwrap_or_default(),
    })
}

/// Like [`run`], panicking with the output when the command fails.
pub fn run_ok(cmd: Command, timeout: Duration) -> Output {
    let what = format!("{cmd:?}");
    let out = run(cmd, timeout).unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

pub use super::ports::free_port;

/// Polls `cond` until it returns Some, panicking with `what` after `timeout`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut cond: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(5);
    loop {
        if let Some(v) = cond() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(100));
    }
}

/// A temp dir owned by the PostgreSQL OS user, holding `data/` (the data directory, not
/// created here), the unix socket and `postgres.log`. Drop stops whatever postmaster runs
/// on `data/` (whoever started it) and removes the dir.
pub struct PgDir {
    dir: tempfile::TempDir,
}

impl PgDir {
    pub fn new() -> PgDir {
        let dir = tempfile::Builder::new()
            .prefix("switchyard-pg-")
            .tempdir()
            .expect("temp dir");
        chown_to_pg(dir.path());
        PgDir { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("postgres.log")
    }

    /// Stops any postmaster on `data/` at once (`pg_ctl stop -m immediate`, falling back to
    /// SIGKILL of the pid in postmaster.pid).
    pub fn stop_any(&self) {
        let data = self.data_dir();
        if !data.join("postmaster.pid").exists() {
            return;
        }
        let mut cmd = pg_command("pg_ctl");
        cmd.arg("stop")
            .arg("-D")
            .arg(&data)
            .args(["-m", "immediate", "-w", "-t", "10"]);
        let stopped = run(cmd, Duration::from_secs(15))
            .map(|o| o.status.success())
            .unwrap_or(false);
        if !stopped {
            if let Some(pid) = fs::read_to_string(data.join("postmaster.pid"))
                .ok()
                .and_then(|s| s.lines().next().and_then(|l| l.trim().parse::<u32>().ok()))
            {
                let _ = Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .status();
            }
        }
    }
}

impl Default for PgDir {
    fn default() -> Self {
        PgDir::new()
    }
}

impl Drop for PgDir {
    fn drop(&mut self) {
        self.stop_any();
    }
}

/// chown to the PostgreSQL OS user when we are root (no-op otherwise).
pub fn chown_to_pg(path: &Path) {
    if let Some((uid, gid)) = run_as() {
        std::os::unix::fs::chown(path, Some(uid), Some(gid))
            .unwrap_or_else(|e| panic!("chown {}: {e}", path.display()));
    }
}

/// Options of [`Postgres::init_primary`].
#[derive(Clone, Debug, Default)]
pub struct PgOptions {
    /// Extra `postgresql.conf` lines.
    pub extra_conf: Vec<String>,
    /// `initdb --data-checksums`.
    pub data_checksums: bool,
}

/// One PostgreSQL server in its own [`PgDir`].
pub struct Postgres {
    child: Option<Child>,
    port: u16,
    // Last field: dropped after `Drop::drop` ran, which kills the postmaster.
    dir: PgDir,
}

impl Postgres {
    /// initdb + start a primary; waits until it accepts connections.
    pub fn init_primary(opts: PgOptions) -> Postgres {
        let dir = PgDir::new();
        let data = dir.data_dir();
        let mut cmd = pg_command("initdb");
        cmd.arg("-D")
            .arg(&data)
            .args(["-U", SUPERUSER, "--auth=trust", "--no-sync", "-E", "UTF8"])
            .arg("--locale=C");
        if opts.data_checksums {
            cmd.arg("--data-checksums");
        }
        run_ok(cmd, CMD_TIMEOUT);
        let mut conf = OpenOptions::new()
            .append(true)
            .open(data.join("postgresql.conf"))
            .expect("open postgresql.conf");
        let mut lines = vec![
            "# switchyard tests".to_owned(),
            "listen_addresses = '127.0.0.1'".to_owned(),
            "wal_level = replica".to_owned(),
            "max_wal_senders = 10".to_owned(),
            "max_replication_slots = 10".to_owned(),
            "hot_standby = on".to_owned(),
            "wal_log_hints = on".to_owned(),
            "wal_keep_size = '128MB'".to_owned(),
            "fsync = off".to_owned(),
            "synchronous_commit = on".to_owned(),
            "shared_buffers = '16MB'".to_owned(),
            "max_connections = 30".to_owned(),
            "logging_collector = off".to_owned(),
        ];
        lines.extend(opts.extra_conf.iter().cloned());
        writeln!(conf, "{}", lines.join("\n")).expect("write postgresql.conf");
        let mut hba = OpenOptions::new()
            .append(true)
            .open(data.join("pg_hba.conf"))
            .expect("open pg_hba.conf");
        writeln!(
            hba,
            "host all all 127.0.0.1/32 trust\nhost replication all 127.0.0.1/32 trust"
        )
        .expect("write pg_hba.conf");
        let mut pg = Postgres {
            child: None,
            port: free_port(),
            dir,
        };
        pg.start();
        pg
    }

    /// Base backup (`pg_basebackup -R -X stream -c fast`) of `primary`, started as a standby;
    /// waits until it streams.
    pub fn replica_of(primary: &Postgres) -> Postgres {
        let dir = PgDir::new();
        let port = free_port();
        let mut cmd = pg_command("pg_basebackup");
        cmd.arg("-D")
            .arg(dir.data_dir())
            .arg("-d")
            .arg(format!(
                "host=127.0.0.1 port={} user={SUPERUSER} application_name=replica{port}",
                primary.port
            ))
            .args(["-R", "-X", "stream", "-c", "fast", "--no-sync"]);
        run_ok(cmd, START_TIMEOUT);
        let mut pg = Postgres {
            child: None,
            port,
            dir,
        };
        pg.start();
        pg.wait_streaming();
        pg
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.data_dir()
    }

    pub fn dir(&self) -> &PgDir {
        &self.dir
    }

    /// libpq conninfo of this server (TCP on 127.0.0.1, superuser).
    pub fn conninfo(&self) -> String {
        format!(
            "host=127.0.0.1 port={} user={SUPERUSER} dbname=postgres",
            self.port
        )
    }

    /// The server log so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.log_path()).unwrap_or_default()
    }

    /// Starts the postmaster (as a child of the test, in its own process group) and waits
    /// until it accepts connections. Panics with the log when it exits or the deadline passes.
    pub fn start(&mut self) {
        assert!(
            self.child.is_none(),
            "postgres already started by this handle"
        );
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.log_path())
            .expect("open log");
        chown_to_pg(&self.dir.log_path());
        let mut cmd = pg_command("postgres");
        cmd.arg("-D")
            .arg(self.data_dir())
            .arg("-p")
            .arg(self.port.to_string())
            .arg("-c")
            .arg(format!(
                "unix_socket_directories={}",
                self.dir.path().display()
            ))
            .arg("-c")
            .arg("listen_addresses=127.0.0.1")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log)
            .process_group(0);
        let child = cmd.spawn().expect("spawn postgres");
        self.child = Some(child);
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.child = None;
                panic!(
                    "postgres exited during start-up ({status}); log:\n{}",
                    self.log()
                );
            }
            if self.is_ready() {
                return;
            }
            if Instant::now() >= deadline {
                panic!(
                    "postgres not ready after {START_TIMEOUT:?}; log:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `pg_isready`: accepting connections.
    pub fn is_ready(&self) -> bool {
        let mut cmd = Command::new(bin("pg_isready"));
        cmd.args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-t", "2"]);
        cmd.args(["-U", SUPERUSER, "-d", "postgres"]);
        run(cmd, Duration::from_secs(5))
            .map(|o| o.status.success())
            .unwrap_or(false)
    }

    /// Clean stop (`pg_ctl stop -m fast`).
    pub fn stop(&mut self) {
        let mut cmd = pg_command("pg_ctl");
        cmd.arg("stop")
            .arg("-D")
            .arg(self.data_dir())
            .args(["-m", "fast", "-w", "-t", "30"]);
        run_ok(cmd, CMD_TIMEOUT);
        if let Some(mut c) = self.child.take() {
            let _ = c.wait();
        }
    }

    /// SIGKILL of the whole postmaster process group (postmaster and every backend at once,
    /// like a machine crash as far as PostgreSQL's processes go).
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{}", c.id())])
                .status();
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// `pg_ctl promote -w`; then waits until the server leaves recovery.
    pub fn promote(&self) {
        let mut cmd = pg_command("pg_ctl");
        cmd.arg("promote")
            .arg("-D")
            .arg(self.data_dir())
            .args(["-w", "-t", "60"]);
        run_ok(cmd, START_TIMEOUT);
        wait_for("promotion to finish", START_TIMEOUT, || {
            (self.query_opt("SELECT pg_is_in_recovery()").as_deref() == Some("f")).then_some(())
        });
    }

    /// Runs SQL through psql (`-At`: unaligned, tuples only, `|` between columns, one row a
    /// line) and returns the output trimmed. Panics on error.
    pub fn query(&self, sql: &str) -> String {
        let out = run_ok(self.psql(sql), CMD_TIMEOUT);
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// Like [`query`](Self::query) but None when psql fails (server down, SQL error).
    pub fn query_opt(&self, sql: &str) -> Option<String> {
        let out = run(self.psql(sql), CMD_TIMEOUT).ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    fn psql(&self, sql: &str) -> Command {
        let mut cmd = Command::new(bin("psql"));
        cmd.arg("-X")
            .arg("-At")
            .args(["-v", "ON_ERROR_STOP=1"])
            .arg("-d")
            .arg(self.conninfo())
            .arg("-c")
            .arg(sql);
        cmd
    }

    /// Waits until this standby's WAL receiver streams.
    pub fn wait_streaming(&self) {
        wait_for("the standby to stream", START_TIMEOUT, || {
            (self
                .query_opt("SELECT status FROM pg_stat_wal_receiver")
                .as_deref()
                == Some("streaming"))
            .then_some(())
        });
    }

    /// Opens the log for appending notes (e.g. test markers).
    pub fn log_file(&self) -> File {
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.log_path())
            .expect("open log")
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        // Immediate stop of whatever runs on the data dir (also one pg_ctl started), then
        // SIGKILL of our own child's group in case that failed; `dir` then removes the files.
        self.dir.stop_any();
        self.kill9();
    }
}
