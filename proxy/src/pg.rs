//! The agent's control of its PostgreSQL server: binaries, data directory, process, role.
//!
//! - [`PgBinaries::find`]: the server binaries, checked to exist and to be PostgreSQL 13 or
//!   later ("PostgreSQL binaries missing or too old" otherwise).
//! - [`PgServer`]: one data directory. Commands (`initdb`, `pg_ctl`, `pg_basebackup`,
//!   `pg_rewind`, `pg_controldata`) run as an unprivileged OS user when we are root
//!   (PostgreSQL refuses to run as root), each under a timeout after which it is killed.
//! - Status and role queries over a [`tokio_postgres::Client`]: [`in_recovery`],
//!   [`timeline`], [`current_lsn`], [`receive_lsn`], [`replay_lsn`], [`system_identifier`],
//!   [`promote`].
//! - Data-directory identity from `global/pg_control` ([`PgServer::control_data`]), which
//!   works while the server is stopped, so the agent can refuse a data directory that
//!   belongs to another cluster ([`PgServer::check_identity`]) before it touches it.
//!
//! Fencing: [`PgServer::stop`] with [`StopMode::Immediate`] sends the postmaster SIGQUIT
//! through `pg_ctl` and falls back to SIGKILL of the postmaster and every process it forked
//! when `pg_ctl` does not finish within [`PgOptions::fence_timeout`]; it never waits for
//! clients or a checkpoint. (Every PostgreSQL child process calls setsid(): the
//! postmaster's process group holds the postmaster alone.)

use std::ffi::{CString, OsStr, OsString};
use std::fmt;
use std::io::Write as _;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::Duration;

use tokio::process::Command;

/// tokio-postgres itself, for rows, errors and configuration.
pub use tokio_postgres;
/// The client the status queries take (re-exported so users need no tokio-postgres dependency).
pub use tokio_postgres::Client;

/// The oldest PostgreSQL major version the agent supports (reloadable `primary_conninfo`,
/// `pg_rewind -R` and automatic crash recovery in `pg_rewind`).
pub const MIN_MAJOR: u32 = 13;

/// Where Debian's `postgresql-15` installs the server binaries; the last fallback of
/// [`PgBinaries::find`].
pub const DEBIAN_BINDIR: &str = "/usr/lib/postgresql/15/bin";

/// The programs the agent runs.
pub const REQUIRED_PROGRAMS: &[&str] = &[
    "postgres",
    "initdb",
    "pg_ctl",
    "pg_basebackup",
    "pg_rewind",
    "pg_controldata",
];

/// Errors of PostgreSQL control.
#[derive(Debug, thiserror::Error)]
pub enum PgError {
    #[error("PostgreSQL binaries missing or too old: {0}")]
    Binaries(String),
    #[error("OS user {0:?} not found (PostgreSQL cannot run as root)")]
    NoSuchUser(String),
    #[error("{command} did not finish within {timeout:?} (killed)")]
    Timeout { command: String, timeout: Duration },
    #[error("{command} failed ({status}): {stderr}")]
    Failed {
        command: String,
        status: String,
        stderr: String,
    },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("SQL: {0}")]
    Sql(#[from] tokio_postgres::Error),
    #[error("SQL: {what} got no answer within {timeout:?} (server hung or unreachable)")]
    SqlTimeout {
        what: &'static str,
        timeout: Duration,
    },
    #[error("cannot parse {what} from {value:?}")]
    Parse { what: &'static str, value: String },
    #[error(
        "data directory {dir} belongs to another cluster: system identifier {found}, \
         expected {expected}"
    )]
    ForeignCluster {
        dir: PathBuf,
        found: u64,
        expected: u64,
    },
    #[error("data directory {0} is not empty")]
    NotEmpty(PathBuf),
}

pub type Result<T, E = PgError> = std::result::Result<T, E>;

fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> PgError {
    let what = what.into();
    move |source| PgError::Io { what, source }
}

// ---------------------------------------------------------------------------------------
// LSN, version, conninfo: pure parts
// ---------------------------------------------------------------------------------------

/// Parses PostgreSQL's `pg_lsn` text form `X/Y` (two hex numbers of up to 32 bits each).
pub fn parse_lsn(text: &str) -> Result<u64> {
    let bad = || PgError::Parse {
        what: "LSN",
        value: text.to_owned(),
    };
    let (hi, lo) = text.trim().split_once('/').ok_or_else(bad)?;
    let ok = |s: &str| !s.is_empty() && s.len() <= 8 && s.bytes().all(|b| b.is_ascii_hexdigit());
    if !ok(hi) || !ok(lo) {
        return Err(bad());
    }
    let hi = u64::from_str_radix(hi, 16).map_err(|_| bad())?;
    let lo = u64::from_str_radix(lo, 16).map_err(|_| bad())?;
    Ok(hi << 32 | lo)
}

/// Formats an LSN as PostgreSQL does (`16/B374D848`).
pub fn format_lsn(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xFFFF_FFFF)
}

/// A PostgreSQL version as `postgres --version` prints it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct PgVersion {
    pub major: u32,
    pub minor: u32,
}

impl fmt::Display for PgVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

/// Parses `postgres (PostgreSQL) 15.8 (Debian 15.8-0+deb12u1)`, `... 16beta2`, `... 9.6.24`
/// (major 9, minor 6: all pre-10 versions are too old anyway).
pub fn parse_version(text: &str) -> Result<PgVersion> {
    let bad = || PgError::Parse {
        what: "PostgreSQL version",
        value: text.to_owned(),
    };
    let rest = text
        .split_once("(PostgreSQL)")
        .map(|(_, r)| r)
        .ok_or_else(bad)?;
    let word = rest.split_whitespace().next().ok_or_else(bad)?;
    let mut nums = word.split(|c: char| !c.is_ascii_digit());
    let major = nums.next().and_then(|s| s.parse().ok()).ok_or_else(bad)?;
    let minor = nums.next().and_then(|s| s.parse().ok()).unwrap_or(0);
    Ok(PgVersion { major, minor })
}

/// A libpq connection string (`key=value` pairs) for a server on host:port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Conninfo {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub dbname: String,
    pub application_name: Option<String>,
    pub password: Option<String>,
    pub connect_timeout_s: Option<u32>,
}

impl Conninfo {
    /// `user=postgres dbname=postgres`, no application name, no password.
    pub fn new(host: impl Into<String>, port: u16) -> Conninfo {
        Conninfo {
            host: host.into(),
            port,
            user: "postgres".to_owned(),
            dbname: "postgres".to_owned(),
            application_name: None,
            password: None,
            connect_timeout_s: None,
        }
    }

    pub fn user(mut self, user: impl Into<String>) -> Self {
        self.user = user.into();
        self
    }

    pub fn dbname(mut self, dbname: impl Into<String>) -> Self {
        self.dbname = dbname.into();
        self
    }

    pub fn application_name(mut self, name: impl Into<String>) -> Self {
        self.application_name = Some(name.into());
        self
    }

    pub fn password(mut self, password: impl Into<String>) -> Self {
        self.password = Some(password.into());
        self
    }

    pub fn connect_timeout_s(mut self, secs: u32) -> Self {
        self.connect_timeout_s = Some(secs);
        self
    }

    /// tokio-postgres configuration for the same server.
    pub fn to_config(&self) -> tokio_postgres::Config {
        let mut c = tokio_postgres::Config::new();
        c.host(&self.host)
            .port(self.port)
            .user(&self.user)
            .dbname(&self.dbname);
        if let Some(a) = &self.application_name {
            c.application_name(a);
        }
        if let Some(p) = &self.password {
            c.password(p);
        }
        if let Some(t) = self.connect_timeout_s {
            c.connect_timeout(Duration::from_secs(u64::from(t)));
        }
        c
    }
}

/// Quotes a conninfo value as libpq reads it: bare when it is non-empty and has no space,
/// quote or backslash; else in single quotes with `'` and `\` backslash-escaped.
pub fn quote_conninfo_value(v: &str) -> String {
    let plain = !v.is_empty()
        && !v
            .chars()
            .any(|c| c.is_whitespace() || c == '\'' || c == '\\');
    if plain {
        return v.to_owned();
    }
    let mut s = String::with_capacity(v.len() + 2);
    s.push('\'');
    for c in v.chars() {
        if c == '\'' || c == '\\' {
            s.push('\\');
        }
        s.push(c);
    }
    s.push('\'');
    s
}

impl fmt::Display for Conninfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let q = quote_conninfo_value;
        write!(
            f,
            "host={} port={} user={} dbname={}",
            q(&self.host),
            self.port,
            q(&self.user),
            q(&self.dbname)
        )?;
        if let Some(a) = &self.application_name {
            write!(f, " application_name={}", q(a))?;
        }
        if let Some(p) = &self.password {
            write!(f, " password={}", q(p))?;
        }
        if let Some(t) = self.connect_timeout_s {
            write!(f, " connect_timeout={t}")?;
        }
        Ok(())
    }
}

/// Quotes a value for postgresql.conf (single quotes, `'` doubled).
pub fn quote_conf_value(v: &str) -> String {
    format!("'{}'", v.replace('\'', "''"))
}

/// Quotes a word for the shell `pg_ctl` runs postgres through (`-o`).
fn shell_quote(v: &str) -> String {
    format!("'{}'", v.replace('\'', "'\\''"))
}

/// Replaces every `key = ...` line of a conf file's text with one `key = 'value'` line at the
/// end (`None`: removes the key). Other lines are kept as they are.
pub fn set_conf_line(text: &str, key: &str, value: Option<&str>) -> String {
    let mut out = String::with_capacity(text.len() + 64);
    for line in text.lines() {
        let name = line
            .trim_start()
            .split(|c: char| c == '=' || c.is_whitespace())
            .next()
            .unwrap_or("");
        if name.eq_ignore_ascii_case(key) {
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    if let Some(v) = value {
        out.push_str(&format!("{key} = {}\n", quote_conf_value(v)));
    }
    out
}

/// Whether a conf file's text has a `key = ...` line.
pub fn conf_sets(text: &str, key: &str) -> bool {
    text.lines().any(|line| {
        line.trim_start()
            .split(|c: char| c == '=' || c.is_whitespace())
            .next()
            .is_some_and(|name| name.eq_ignore_ascii_case(key))
    })
}

/// A value of `synchronous_standby_names` in quorum form: a commit waits for the flush
/// of any one of the standbys named.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SyncStandbys {
    /// `ANY 1 (*)`: any standby. The placeholder a synchronous-mode server starts with,
    /// so that it never acknowledges a commit without a standby, even in the moment
    /// after a promotion before its master names its standbys.
    Any,
    /// `ANY 1 ("a", "b")`, names as `application_name` (compared case-insensitively by
    /// PostgreSQL). Never empty: an empty list would mean "wait for nobody".
    Named(Vec<String>),
}

impl SyncStandbys {
    /// The setting's text. Names are double-quoted (`"` doubled), so any application
    /// name is one token.
    pub fn to_conf_value(&self) -> String {
        match self {
            SyncStandbys::Any => "ANY 1 (*)".to_owned(),
            SyncStandbys::Named(names) => {
                let quoted: Vec<String> = names
                    .iter()
                    .map(|n| format!("\"{}\"", n.replace('"', "\"\"")))
                    .collect();
                format!("ANY 1 ({})", quoted.join(", "))
            }
        }
    }
}

/// One WAL sender as `pg_stat_replication` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WalSender {
    pub application_name: String,
    /// `startup`, `catchup`, `streaming`, `backup`, `stopping`.
    pub state: String,
    /// `async`, `potential`, `sync`, `quorum`.
    pub sync_state: String,
    /// The standby's flushed position it last reported.
    pub flush_lsn: Option<u64>,
}

/// `pg_stat_replication` of a primary.
pub async fn wal_senders(client: &Client) -> Result<Vec<WalSender>> {
    let rows = query(
        client,
        "SELECT coalesce(application_name, ''), coalesce(state, ''), \
         coalesce(sync_state, ''), flush_lsn::text FROM pg_stat_replication",
    )
    .await?;
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        let flush: Option<String> = row.try_get(3)?;
        out.push(WalSender {
            application_name: row.try_get(0)?,
            state: row.try_get(1)?,
            sync_state: row.try_get(2)?,
            flush_lsn: flush.map(|t| parse_lsn(&t)).transpose()?,
        });
    }
    Ok(out)
}

/// What [`PgServer::rewind_from`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RewindOutcome {
    /// False when pg_rewind found the target had not diverged ("no rewind required"); it
    /// still wrote the recovery configuration then.
    pub rewound: bool,
    /// pg_rewind's messages.
    pub log: String,
}

/// `pg_controldata`'s "Database cluster state" of a server that was shut down cleanly:
/// pg_rewind takes such a target as it is; any other it crash-recovers first.
pub const CLEAN_SHUTDOWN_STATES: [&str; 2] = ["shut down", "shut down in recovery"];

/// The fields of `pg_controldata` output the agent uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ControlData {
    /// "Database system identifier": the cluster's identity, kept by base backups.
    pub system_identifier: u64,
    /// "Database cluster state", e.g. `in production`, `shut down`, `in archive recovery`.
    pub cluster_state: String,
    /// "Latest checkpoint's TimeLineID".
    pub checkpoint_timeline: u32,
    /// "Latest checkpoint location": where the latest checkpoint record starts (after a
    /// clean shutdown, the shutdown checkpoint: the last record the server wrote).
    pub checkpoint_lsn: u64,
}

/// Parses `pg_controldata` output (C locale).
pub fn parse_controldata(text: &str) -> Result<ControlData> {
    let field = |name: &'static str| -> Result<&str> {
        text.lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                (k.trim() == name).then(|| v.trim())
            })
            .ok_or(PgError::Parse {
                what: name,
                value: text.chars().take(200).collect(),
            })
    };
    let num = |name: &'static str| -> Result<u64> {
        let v = field(name)?;
        v.parse().map_err(|_| PgError::Parse {
            what: name,
            value: v.to_owned(),
        })
    };
    let tli = num("Latest checkpoint's TimeLineID")?;
    let checkpoint_lsn = parse_lsn(field("Latest checkpoint location")?)?;
    Ok(ControlData {
        checkpoint_lsn,
        system_identifier: num("Database system identifier")?,
        cluster_state: field("Database cluster state")?.to_owned(),
        checkpoint_timeline: u32::try_from(tli).map_err(|_| PgError::Parse {
            what: "Latest checkpoint's TimeLineID",
            value: tli.to_string(),
        })?,
    })
}

/// Timeline from a WAL segment file name (`000000020000000000000003` -> 2).
pub fn timeline_from_walfile(name: &str) -> Result<u32> {
    let bad = || PgError::Parse {
        what: "WAL file name",
        value: name.to_owned(),
    };
    let name = name.trim();
    if name.len() != 24 || !name.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(bad());
    }
    u32::from_str_radix(&name[..8], 16).map_err(|_| bad())
}

// ---------------------------------------------------------------------------------------
// Binaries and the OS user
// ---------------------------------------------------------------------------------------

/// The checked PostgreSQL server binaries.
#[derive(Clone, Debug)]
pub struct PgBinaries {
    bindir: PathBuf,
    version: PgVersion,
}

impl PgBinaries {
    /// Checks the binaries in `bindir`, or, without one: env `PG_BINDIR`, else
    /// `pg_config --bindir` when that dir holds `postgres` (on Debian pg_config may belong to
    /// another version or only the client package), else [`DEBIAN_BINDIR`].
    /// Fails with [`PgError::Binaries`] naming every missing program, or the version when
    /// `postgres --version` is older than [`MIN_MAJOR`] or cannot be read.
    pub fn find(bindir: Option<&Path>) -> Result<PgBinaries> {
        let dir = match bindir {
            Some(d) => d.to_path_buf(),
            None => default_bindir(),
        };
        let missing: Vec<&str> = REQUIRED_PROGRAMS
            .iter()
            .copied()
            .filter(|p| !is_executable(&dir.join(p)))
            .collect();
        if !missing.is_empty() {
            return Err(PgError::Binaries(format!(
                "{} not found (or not executable) in {}",
                missing.join(", "),
                dir.display()
            )));
        }
        let postgres = dir.join("postgres");
        let mut cmd = std::process::Command::new(&postgres);
        cmd.arg("--version");
        let stdout = output_within(cmd, PROBE_TIMEOUT)
            .map_err(|e| PgError::Binaries(format!("{} --version: {e}", postgres.display())))?;
        let text = String::from_utf8_lossy(&stdout);
        let version = parse_version(&text).map_err(|_| {
            PgError::Binaries(format!(
                "cannot read the version of {} from {:?}",
                postgres.display(),
                text.trim()
            ))
        })?;
        if version.major < MIN_MAJOR {
            return Err(PgError::Binaries(format!(
                "{} is PostgreSQL {version}, need {MIN_MAJOR} or later",
                postgres.display()
            )));
        }
        Ok(PgBinaries {
            bindir: dir,
            version,
        })
    }

    pub fn bindir(&self) -> &Path {
        &self.bindir
    }

    pub fn version(&self) -> PgVersion {
        self.version
    }

    /// Path of one program in the bindir.
    pub fn program(&self, name: &str) -> PathBuf {
        self.bindir.join(name)
    }
}

fn default_bindir() -> PathBuf {
    if let Some(d) = std::env::var_os("PG_BINDIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(d);
    }
    let mut cmd = std::process::Command::new("pg_config");
    cmd.arg("--bindir");
    if let Ok(stdout) = output_within(cmd, PROBE_TIMEOUT) {
        let d = PathBuf::from(OsStr::from_bytes(trim_ascii(&stdout)));
        if is_executable(&d.join("postgres")) {
            return d;
        }
    }
    PathBuf::from(DEBIAN_BINDIR)
}

/// Upper bound for `postgres --version` and `pg_config --bindir`.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs a short probe command (blocking, output of a few lines), killing it after
/// `timeout`; its stdout when it exits 0.
fn output_within(mut cmd: std::process::Command, timeout: Duration) -> std::io::Result<Vec<u8>> {
    use std::io::Read as _;
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let deadline = std::time::Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if std::time::Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no answer within {timeout:?}"),
            ));
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let mut out = Vec::new();
    if let Some(mut pipe) = child.stdout.take() {
        pipe.read_to_end(&mut out)?;
    }
    if !status.success() {
        return Err(std::io::Error::other(format!("exited with {status}")));
    }
    Ok(out)
}

fn trim_ascii(b: &[u8]) -> &[u8] {
    let start = b
        .iter()
        .position(|c| !c.is_ascii_whitespace())
        .unwrap_or(b.len());
    let end = b
        .iter()
        .rposition(|c| !c.is_ascii_whitespace())
        .map_or(start, |i| i + 1);
    &b[start..end]
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// An OS user to run PostgreSQL as.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OsUser {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: PathBuf,
}

impl OsUser {
    /// Looks the user up in the passwd database (getpwnam_r).
    pub fn lookup(name: &str) -> Result<OsUser> {
        let cname = CString::new(name).map_err(|_| PgError::NoSuchUser(name.to_owned()))?;
        let mut buf = vec![0 as libc::c_char; 16 * 1024];
        // SAFETY: getpwnam_r writes into `pwd` and `buf` (of the length passed) and sets
        // `result` to &pwd on success; the strings it points to live in `buf`, read below
        // while `buf` is alive.
        unsafe {
            let mut pwd: libc::passwd = std::mem::zeroed();
            let mut result: *mut libc::passwd = std::ptr::null_mut();
            let rc = libc::getpwnam_r(
                cname.as_ptr(),
                &mut pwd,
                buf.as_mut_ptr(),
                buf.len(),
                &mut result,
            );
            if rc != 0 || result.is_null() {
                return Err(PgError::NoSuchUser(name.to_owned()));
            }
            let home = if pwd.pw_dir.is_null() {
                PathBuf::from("/")
            } else {
                PathBuf::from(OsStr::from_bytes(
                    std::ffi::CStr::from_ptr(pwd.pw_dir).to_bytes(),
                ))
            };
            Ok(OsUser {
                name: name.to_owned(),
                uid: pwd.pw_uid,
                gid: pwd.pw_gid,
                home,
            })
        }
    }
}

fn running_as_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

// ---------------------------------------------------------------------------------------
// The server
// ---------------------------------------------------------------------------------------

/// How to stop the server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopMode {
    /// Disconnects clients, checkpoints, exits cleanly (`pg_ctl stop -m fast`).
    Fast,
    /// The fencing stop: SIGQUIT, every process exits at once, no checkpoint (crash recovery
    /// on the next start). Falls back to SIGKILL when pg_ctl does not finish in time.
    Immediate,
}

/// Options of a [`PgServer`].
#[derive(Clone, Debug)]
pub struct PgOptions {
    /// The OS user PostgreSQL runs as when we are root ("postgres"). Ignored otherwise:
    /// then everything runs as ourselves.
    pub os_user: String,
    /// Upper bound for one short command (pg_ctl start/stop/reload/status, pg_controldata,
    /// initdb). The child is killed when it passes.
    pub command_timeout: Duration,
    /// Upper bound for pg_basebackup and pg_rewind (they copy data).
    pub copy_timeout: Duration,
    /// How long an immediate stop may take before the postmaster gets SIGKILL.
    pub fence_timeout: Duration,
    /// The server log (pg_ctl -l). Default: `<data_dir>.log`, outside the data directory
    /// so base backups and rewinds neither copy nor overwrite it.
    pub log_file: Option<PathBuf>,
}

impl Default for PgOptions {
    fn default() -> Self {
        PgOptions {
            os_user: "postgres".to_owned(),
            command_timeout: Duration::from_secs(60),
            copy_timeout: Duration::from_secs(3600),
            fence_timeout: Duration::from_secs(2),
            log_file: None,
        }
    }
}

/// Options of [`PgServer::initdb`].
#[derive(Clone, Debug)]
pub struct InitdbOptions {
    /// The database superuser ("postgres").
    pub superuser: String,
    /// Auth method for local (unix socket) connections ("peer" is Debian's default; "trust").
    pub auth_local: String,
    /// Auth method for TCP connections ("scram-sha-256"; "trust" for tests).
    pub auth_host: String,
    /// `--data-checksums` (on: pg_rewind then works without `wal_log_hints`).
    pub data_checksums: bool,
    /// `--no-sync` (tests only).
    pub no_sync: bool,
}

impl Default for InitdbOptions {
    fn default() -> Self {
        InitdbOptions {
            superuser: "postgres".to_owned(),
            auth_local: "peer".to_owned(),
            auth_host: "scram-sha-256".to_owned(),
            data_checksums: true,
            no_sync: false,
        }
    }
}

/// One PostgreSQL data directory and the server running on it.
#[derive(Clone, Debug)]
pub struct PgServer {
    bins: PgBinaries,
    data_dir: PathBuf,
    log_file: PathBuf,
    run_as: Option<OsUser>,
    opts: PgOptions,
}

impl PgServer {
    /// Fails with [`PgError::NoSuchUser`] when we are root and `opts.os_user` does not exist.
    pub fn new(bins: PgBinaries, data_dir: impl Into<PathBuf>, opts: PgOptions) -> Result<Self> {
        let data_dir = data_dir.into();
        let run_as = if running_as_root() {
            Some(OsUser::lookup(&opts.os_user)?)
        } else {
            None
        };
        let log_file = opts.log_file.clone().unwrap_or_else(|| {
            let mut s = OsString::from(data_dir.as_os_str());
            s.push(".log");
            PathBuf::from(s)
        });
        Ok(PgServer {
            bins,
            data_dir,
            log_file,
            run_as,
            opts,
        })
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    pub fn log_file(&self) -> &Path {
        &self.log_file
    }

    pub fn binaries(&self) -> &PgBinaries {
        &self.bins
    }

    /// The OS user commands run as (None: ourselves).
    pub fn run_as(&self) -> Option<&OsUser> {
        self.run_as.as_ref()
    }

    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(self.bins.program(program));
        if let Some(u) = &self.run_as {
            cmd.uid(u.uid).gid(u.gid);
            cmd.env("HOME", &u.home).env("USER", &u.name);
        }
        // The agent passes everything explicitly; stray libpq / PG env must not redirect us.
        for v in [
            "PGDATA",
            "PGHOST",
            "PGPORT",
            "PGUSER",
            "PGDATABASE",
            "PGSERVICE",
        ] {
            cmd.env_remove(v);
        }
        cmd.env("LC_ALL", "C");
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        cmd
    }

    /// Runs a command under `timeout` (killed when it passes); its output when it exits.
    async fn run_status(&self, mut cmd: Command, timeout: Duration) -> Result<Output> {
        let command = describe(&cmd);
        let child = cmd.spawn().map_err(io_err(format!("spawn {command}")))?;
        match tokio::time::timeout(timeout, child.wait_with_output()).await {
            // The future owned the child: dropping it killed the child (kill_on_drop).
            Err(_) => Err(PgError::Timeout { command, timeout }),
            Ok(r) => r.map_err(io_err(format!("wait for {command}"))),
        }
    }

    /// Like [`run_status`](Self::run_status), failing unless the command exits 0.
    async fn run(&self, cmd: Command, timeout: Duration) -> Result<Output> {
        let command = describe(&cmd);
        let out = self.run_status(cmd, timeout).await?;
        if out.status.success() {
            Ok(out)
        } else {
            Err(failed(command, &out))
        }
    }

    /// Makes `dir` (and missing parents) and gives it to the OS user, mode 0700.
    fn make_owned_dir(&self, dir: &Path) -> Result<()> {
        use std::os::unix::fs::PermissionsExt;
        std::fs::create_dir_all(dir).map_err(io_err(format!("create {}", dir.display())))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(io_err(format!("chmod {}", dir.display())))?;
        self.chown(dir)
    }

    fn chown(&self, path: &Path) -> Result<()> {
        if let Some(u) = &self.run_as {
            std::os::unix::fs::chown(path, Some(u.uid), Some(u.gid))
                .map_err(io_err(format!("chown {}", path.display())))?;
        }
        Ok(())
    }

    /// Creates the log file if needed and gives it to the OS user.
    fn prepare_log(&self) -> Result<()> {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_file)
            .map_err(io_err(format!("open {}", self.log_file.display())))?;
        self.chown(&self.log_file)
    }

    /// The data directory must be absent or empty before initdb / base backup.
    fn require_empty_data_dir(&self) -> Result<()> {
        if self.data_dir_is_empty()? {
            Ok(())
        } else {
            Err(PgError::NotEmpty(self.data_dir.clone()))
        }
    }

    /// Whether the data directory is absent or holds no entry at all.
    pub fn data_dir_is_empty(&self) -> Result<bool> {
        match std::fs::read_dir(&self.data_dir) {
            Ok(mut it) => Ok(it.next().is_none()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(true),
            Err(e) => Err(io_err(format!("read {}", self.data_dir.display()))(e)),
        }
    }

    /// Whether the data directory holds a cluster (`PG_VERSION` exists).
    pub fn is_initialized(&self) -> bool {
        self.data_dir.join("PG_VERSION").is_file()
    }

    /// Whether a postmaster ever ran on this data directory: it writes
    /// `postmaster.opts` at every start, initdb (bootstrap and single-user backends)
    /// does not, and pg_basebackup does not copy it.
    pub fn ever_started(&self) -> bool {
        self.data_dir.join("postmaster.opts").exists()
    }

    /// Appends `key = 'value'` lines to postgresql.conf (settings every process that reads
    /// the conf must see, including the single-user crash recovery pg_rewind runs, e.g.
    /// `wal_keep_size`, which keeps the WAL pg_rewind reads back to the divergence point).
    pub fn append_conf(&self, settings: &[(&str, &str)]) -> Result<()> {
        let path = self.data_dir.join("postgresql.conf");
        let mut text = String::new();
        for (k, v) in settings {
            text.push_str(&format!("{k} = {}\n", quote_conf_value(v)));
        }
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .and_then(|mut f| f.write_all(text.as_bytes()))
            .map_err(io_err(format!("append to {}", path.display())))
    }

    /// `initdb` into an absent or empty data directory.
    pub async fn initdb(&self, o: &InitdbOptions) -> Result<()> {
        self.require_empty_data_dir()?;
        self.make_owned_dir(&self.data_dir)?;
        let mut cmd = self.command("initdb");
        cmd.arg("-D")
            .arg(&self.data_dir)
            .arg("-U")
            .arg(&o.superuser)
            .arg(format!("--auth-local={}", o.auth_local))
            .arg(format!("--auth-host={}", o.auth_host))
            .args(["-E", "UTF8", "--locale=C"]);
        if o.data_checksums {
            cmd.arg("--data-checksums");
        }
        if o.no_sync {
            cmd.arg("--no-sync");
        }
        self.run(cmd, self.opts.command_timeout).await.map(drop)
    }

    /// Starts the server (`pg_ctl start -w`) on `port`, with `extra` settings given on the
    /// postmaster's command line (they override every conf file, so pass only what the agent
    /// fixes at start: listen_addresses, unix_socket_directories, ...; use conf files for
    /// what must be reloadable). Returns when it accepts connections (a standby: when it
    /// is consistent for read-only connections). On [`PgError::Timeout`] or a failure after
    /// pg_ctl's wait the server may still be starting (long recovery): check
    /// [`is_running`](Self::is_running).
    pub async fn start(&self, port: u16, extra: &[(&str, &str)]) -> Result<()> {
        self.prepare_log()?;
        let mut o = format!("-p {port}");
        for (k, v) in extra {
            o.push_str(" -c ");
            o.push_str(&shell_quote(&format!("{k}={v}")));
        }
        let secs = self.opts.command_timeout.as_secs().max(1);
        let mut cmd = self.command("pg_ctl");
        cmd.arg("start")
            .arg("-D")
            .arg(&self.data_dir)
            .arg("-l")
            .arg(&self.log_file)
            .arg("-o")
            .arg(o)
            .args(["-w", "-t", &secs.to_string()]);
        let out = self
            .run_status(cmd, self.opts.command_timeout + Duration::from_secs(5))
            .await?;
        if out.status.success() {
            return Ok(());
        }
        let mut err = failed("pg_ctl start".to_owned(), &out);
        if let PgError::Failed { stderr, .. } = &mut err {
            let tail = self.log_tail(20);
            if !tail.is_empty() {
                stderr.push_str("\nserver log:\n");
                stderr.push_str(&tail);
            }
        }
        Err(err)
    }

    /// The last `lines` lines of the server log.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log_file).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Stops the server; Ok when it was not running. Immediate: see [`StopMode::Immediate`].
    pub async fn stop(&self, mode: StopMode) -> Result<()> {
        let (m, timeout) = match mode {
            StopMode::Fast => ("fast", self.opts.command_timeout),
            StopMode::Immediate => ("immediate", self.opts.fence_timeout),
        };
        // The postmaster this stop is for. pg_ctl waits for the pid file to go, not for
        // that process: if another agent run starts a new server meanwhile (a quick
        // restart after a crash), pg_ctl waits out its timeout on the new pid file, and a
        // fallback reading the file then would SIGKILL the new server.
        let target = self.postmaster_pid().and_then(process_identity);
        if mode == StopMode::Immediate {
            if let Some((pid, _)) = target.filter(|t| process_stopped(t.0)) {
                // A stopped postmaster (SIGSTOP, a debugger) cannot pass SIGQUIT on: its
                // backends would go on serving, and committing, for all of
                // `fence_timeout`, which a short session's margin may not cover.
                kill_server(pid).await;
                return Ok(());
            }
        }
        let mut cmd = self.command("pg_ctl");
        cmd.arg("stop").arg("-D").arg(&self.data_dir).args([
            "-m",
            m,
            "-w",
            "-t",
            &timeout.as_secs().max(1).to_string(),
        ]);
        let slack = match mode {
            StopMode::Fast => Duration::from_secs(5),
            StopMode::Immediate => Duration::ZERO,
        };
        let res = self.run_status(cmd, timeout + slack).await;
        let target_alive = || target.is_some_and(|t| process_identity(t.0) == Some(t));
        let res = match res {
            Ok(out) if out.status.success() => return Ok(()),
            Ok(out) if !self.postmaster_alive() || !target_alive() => {
                // Not running (pg_ctl: "PID file does not exist" / "Is server running?"),
                // or the postmaster it was for is gone (the pid file names another now).
                let _ = out;
                return Ok(());
            }
            Ok(out) => Err(failed(format!("pg_ctl stop -m {m}"), &out)),
            Err(e) => Err(e),
        };
        if mode == StopMode::Immediate {
            // Fencing must not depend on pg_ctl: SIGKILL the postmaster and every process
            // it forked, so no backend finishes a commit after we return. Each child calls
            // setsid() (its own process group), so killpg of the postmaster's group would
            // reach the postmaster alone: the children are found by parent pid, with the
            // postmaster stopped first so that it forks no one and they stay its children.
            if let Some((pid, _)) = target.filter(|_| target_alive()) {
                kill_server(pid).await;
                return Ok(());
            }
        }
        res
    }

    /// The postmaster pid from `postmaster.pid`, if the file names one.
    pub fn postmaster_pid(&self) -> Option<libc::pid_t> {
        let text = std::fs::read_to_string(self.data_dir.join("postmaster.pid")).ok()?;
        text.lines()
            .next()?
            .trim()
            .parse::<libc::pid_t>()
            .ok()
            .filter(|p| *p > 0)
    }

    /// Whether the pid in `postmaster.pid` is a live process (a cheap check, no fork).
    pub fn postmaster_alive(&self) -> bool {
        match self.postmaster_pid() {
            // SAFETY: kill with signal 0 only checks for existence.
            Some(pid) => unsafe { libc::kill(pid, 0) == 0 },
            None => false,
        }
    }

    /// `pg_ctl status`: true when a postmaster runs on the data directory.
    pub async fn is_running(&self) -> Result<bool> {
        let mut cmd = self.command("pg_ctl");
        cmd.arg("status").arg("-D").arg(&self.data_dir);
        let out = self.run_status(cmd, self.opts.command_timeout).await?;
        match out.status.code() {
            Some(0) => Ok(true),
            // 3: not running; 4: no accessible data directory.
            Some(3) | Some(4) => Ok(false),
            _ => Err(failed("pg_ctl status".to_owned(), &out)),
        }
    }

    /// `pg_ctl reload` (SIGHUP): re-reads the conf files.
    pub async fn reload(&self) -> Result<()> {
        let mut cmd = self.command("pg_ctl");
        cmd.arg("reload").arg("-D").arg(&self.data_dir);
        self.run(cmd, self.opts.command_timeout).await.map(drop)
    }

    /// `pg_basebackup -R -X stream -c fast` from `primary` into an absent or empty data
    /// directory; the result is a standby of `primary` (standby.signal, primary_conninfo).
    pub async fn basebackup_from(&self, primary: &Conninfo) -> Result<()> {
        self.require_empty_data_dir()?;
        self.make_owned_dir(&self.data_dir)?;
        let mut cmd = self.command("pg_basebackup");
        cmd.arg("-D")
            .arg(&self.data_dir)
            .arg("-d")
            .arg(primary.to_string())
            .args(["-R", "-X", "stream", "-c", "fast"]);
        self.run(cmd, self.opts.copy_timeout).await.map(drop)
    }

    /// `pg_rewind -R` from a running `source` server (the new master): makes this stopped data
    /// directory a copy that can follow it, crash-recovering it first if it was not shut
    /// down cleanly. Afterwards the directory has standby.signal and primary_conninfo.
    /// Returns pg_rewind's output (its progress messages: pg_rewind writes them to stderr).
    ///
    /// pg_rewind compares the source's *control file* timeline with the target's, and a
    /// just-promoted server records its new timeline there only at its first checkpoint
    /// after promotion; so when the source's latest checkpoint is on an older timeline than
    /// its WAL, this first runs `CHECKPOINT` on it (else pg_rewind would say "no rewind
    /// required" and the target would then fail to follow).
    ///
    /// pg_rewind crash-recovers an unclean target in single-user mode, which refuses to
    /// run with standby.signal ("standby mode is not supported by single-user servers"):
    /// a former primary killed while it ran as a standby (waiting to be rewound) would
    /// never rewind. standby.signal goes first then; `--write-recovery-conf` writes it
    /// back.
    pub async fn rewind_from(&self, source: &Conninfo) -> Result<RewindOutcome> {
        ensure_checkpointed_timeline(source).await?;
        let signal = self.data_dir.join("standby.signal");
        if signal.exists() {
            let state = self.control_data().await?.cluster_state;
            if !CLEAN_SHUTDOWN_STATES.contains(&state.as_str()) {
                std::fs::remove_file(&signal)
                    .map_err(io_err(format!("remove {}", signal.display())))?;
            }
        }
        let mut cmd = self.command("pg_rewind");
        cmd.arg("--target-pgdata")
            .arg(&self.data_dir)
            .arg("--source-server")
            .arg(source.to_string())
            .arg("--write-recovery-conf");
        let out = self.run(cmd, self.opts.copy_timeout).await?;
        let mut log = String::from_utf8_lossy(&out.stderr).into_owned();
        log.push_str(&String::from_utf8_lossy(&out.stdout));
        Ok(RewindOutcome {
            rewound: !log.contains("no rewind required"),
            log,
        })
    }

    /// Makes the server a standby of `primary`: sets `primary_conninfo` in
    /// postgresql.auto.conf (where pg_basebackup -R and pg_rewind -R put it, and which wins
    /// over postgresql.conf), creates standby.signal, and reloads when running
    /// (`primary_conninfo` is reloadable since PostgreSQL 13). A running primary stays a
    /// primary until restarted: the agent stops it first.
    pub async fn set_primary_conninfo(&self, primary: &Conninfo) -> Result<()> {
        let auto = self.data_dir.join("postgresql.auto.conf");
        let old = match std::fs::read_to_string(&auto) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(io_err(format!("read {}", auto.display()))(e)),
        };
        let new = set_conf_line(&old, "primary_conninfo", Some(&primary.to_string()));
        self.write_owned(&auto, new.as_bytes())?;
        let signal = self.data_dir.join("standby.signal");
        if !signal.exists() {
            self.write_owned(&signal, b"")?;
        }
        if self.postmaster_alive() {
            self.reload().await?;
        }
        Ok(())
    }

    /// Sets (`Some`) or removes (`None`) one setting in postgresql.auto.conf (which wins
    /// over postgresql.conf) and reloads when the server runs. The reload is a signal:
    /// every process picks the value up a moment later, not when this returns.
    pub async fn set_auto_conf(&self, key: &str, value: Option<&str>) -> Result<()> {
        let auto = self.data_dir.join("postgresql.auto.conf");
        let old = match std::fs::read_to_string(&auto) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(io_err(format!("read {}", auto.display()))(e)),
        };
        let new = set_conf_line(&old, key, value);
        if new != old {
            self.write_owned(&auto, new.as_bytes())?;
        }
        if self.postmaster_alive() {
            self.reload().await?;
        }
        Ok(())
    }

    /// Whether postgresql.auto.conf sets `key` (a missing file sets nothing).
    pub fn auto_conf_has(&self, key: &str) -> Result<bool> {
        let auto = self.data_dir.join("postgresql.auto.conf");
        match std::fs::read_to_string(&auto) {
            Ok(t) => Ok(conf_sets(&t, key)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(io_err(format!("read {}", auto.display()))(e)),
        }
    }

    /// Stops streaming: removes `primary_conninfo` and reloads, which ends the WAL
    /// receiver (PostgreSQL 13+); the server stays a standby and keeps what it received.
    /// A standby detached this way no longer acknowledges anything to its old primary.
    pub async fn clear_primary_conninfo(&self) -> Result<()> {
        self.set_auto_conf("primary_conninfo", None).await
    }

    /// `synchronous_standby_names` (see [`SyncStandbys`]); `None` removes it (commits
    /// then wait for no standby).
    pub async fn set_synchronous_standby_names(&self, v: Option<&SyncStandbys>) -> Result<()> {
        let text = v.map(SyncStandbys::to_conf_value);
        self.set_auto_conf("synchronous_standby_names", text.as_deref())
            .await
    }

    /// Writes a file in the data directory atomically (temp file + rename), owned by the OS
    /// user, mode 0600.
    fn write_owned(&self, path: &Path, bytes: &[u8]) -> Result<()> {
        use std::os::unix::fs::OpenOptionsExt;
        let mut tmp = OsString::from(path.as_os_str());
        tmp.push(".switchyard-tmp");
        let tmp = PathBuf::from(tmp);
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io_err(format!("create {}", tmp.display())))?;
        f.write_all(bytes)
            .and_then(|_| f.sync_all())
            .map_err(io_err(format!("write {}", tmp.display())))?;
        self.chown(&tmp)?;
        std::fs::rename(&tmp, path).map_err(io_err(format!("rename to {}", path.display())))
    }

    /// `pg_controldata`: the data directory's identity and state from `global/pg_control`;
    /// works while the server is stopped.
    pub async fn control_data(&self) -> Result<ControlData> {
        let mut cmd = self.command("pg_controldata");
        cmd.arg("-D").arg(&self.data_dir);
        let out = self.run(cmd, self.opts.command_timeout).await?;
        parse_controldata(&String::from_utf8_lossy(&out.stdout))
    }

    /// Refuses a data directory of another cluster ([`PgError::ForeignCluster`]).
    pub async fn check_identity(&self, expected_system_identifier: u64) -> Result<()> {
        let found = self.control_data().await?.system_identifier;
        if found != expected_system_identifier {
            return Err(PgError::ForeignCluster {
                dir: self.data_dir.clone(),
                found,
                expected: expected_system_identifier,
            });
        }
        Ok(())
    }
}

/// The pids whose parent is `parent` (from `/proc/<pid>/stat`; empty where there is
/// no /proc).
pub fn children_of(parent: libc::pid_t) -> Vec<libc::pid_t> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in dir.flatten() {
        let Some(pid) = e
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<libc::pid_t>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        if parent_pid_from_stat(&stat) == Some(parent) {
            out.push(pid);
        }
    }
    out
}

/// Field `n` (1-based, as proc(5) numbers them; 3 or more) of a `/proc/<pid>/stat` line:
/// `pid (comm) state ppid ...`, where comm may hold spaces and parentheses (so the
/// fields are counted after the last `)`).
fn stat_field(stat: &str, n: usize) -> Option<&str> {
    debug_assert!(n >= 3, "fields 1 and 2 are the pid and comm");
    stat[stat.rfind(')')? + 1..].split_whitespace().nth(n - 3)
}

/// The parent pid (field 4) in a `/proc/<pid>/stat` line.
pub fn parent_pid_from_stat(stat: &str) -> Option<libc::pid_t> {
    stat_field(stat, 4)?.parse().ok()
}

/// The start time (field 22, clock ticks since boot) in a `/proc/<pid>/stat` line.
pub fn start_time_from_stat(stat: &str) -> Option<u64> {
    stat_field(stat, 22)?.parse().ok()
}

/// SIGKILL of postmaster `pid` (read from postmaster.pid and checked to be that process)
/// and every process it forked: the postmaster is stopped first so that it forks no one
/// and its children stay its children while they are found by parent pid. Returns once
/// the postmaster is gone, or after [`KILL_WAIT_MS`]: none of them runs code after the
/// signal, but one still in the process table (a loaded machine schedules its exit a
/// little later) would look alive to whoever checks next.
async fn kill_server(pid: libc::pid_t) {
    let target = process_identity(pid);
    // SAFETY: kill with the postmaster's pid and pids whose parent is that pid; no memory
    // involved.
    unsafe {
        libc::kill(pid, libc::SIGSTOP);
        for child in children_of(pid) {
            libc::kill(child, libc::SIGKILL);
        }
        libc::kill(pid, libc::SIGKILL);
    }
    let give_up = tokio::time::Instant::now() + Duration::from_millis(KILL_WAIT_MS);
    while target.is_some() && process_identity(pid) == target {
        if tokio::time::Instant::now() >= give_up {
            tracing::warn!(
                pid,
                "the postmaster is still in the process table {KILL_WAIT_MS} ms after SIGKILL"
            );
            return;
        }
        tokio::time::sleep(Duration::from_millis(KILL_POLL_MS)).await;
    }
}

/// Bound on waiting for a SIGKILLed postmaster to leave the process table.
const KILL_WAIT_MS: u64 = 1_000;
/// Poll interval of that wait.
const KILL_POLL_MS: u64 = 5;

/// Whether `pid` is stopped (state `T`, or `t` under a tracer).
fn process_stopped(pid: libc::pid_t) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .is_some_and(|stat| matches!(stat_field(&stat, 3), Some("T" | "t")))
}

/// A live process as (pid, start time): a pid alone may be reused by another process.
/// None when it is gone or a zombie.
fn process_identity(pid: libc::pid_t) -> Option<(libc::pid_t, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    if matches!(stat_field(&stat, 3)?, "Z" | "X") {
        return None;
    }
    Some((pid, start_time_from_stat(&stat)?))
}

fn describe(cmd: &Command) -> String {
    let std = cmd.as_std();
    let mut s = Path::new(std.get_program())
        .file_name()
        .unwrap_or(std.get_program())
        .to_string_lossy()
        .into_owned();
    for a in std.get_args() {
        s.push(' ');
        let a = a.to_string_lossy();
        if a.contains("password=") {
            // Never put a password in an error message or a log.
            s.push_str("<conninfo with password>");
        } else {
            s.push_str(&a);
        }
    }
    s
}

fn failed(command: String, out: &Output) -> PgError {
    let mut stderr = String::from_utf8_lossy(&out.stderr).trim().to_owned();
    if stderr.is_empty() {
        stderr = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    }
    PgError::Failed {
        command,
        status: out.status.to_string(),
        stderr,
    }
}

// ---------------------------------------------------------------------------------------
// SQL: status and promotion
// ---------------------------------------------------------------------------------------

/// Bound on [`connect`]: the TCP connect, the startup and the login together.
/// tokio-postgres's own `connect_timeout` covers the TCP connect alone, and a hung
/// postmaster (a storage stall, SIGSTOP) still has its connections accepted by the kernel:
/// without this bound the agent would wait for its login forever, its fencing included.
pub const SQL_CONNECT_TIMEOUT_MS: u64 = 5_000;

/// Bound on one status statement (`pg_is_in_recovery()`, positions, `pg_stat_replication`,
/// a setting): each reads memory on the server and answers in milliseconds when it is
/// healthy. A server that does not answer in this time is treated as failed by the caller.
pub const SQL_STATEMENT_TIMEOUT_MS: u64 = 5_000;

/// Bound on a `CHECKPOINT`: it writes every dirty buffer, which on a large, busy server
/// takes far longer than a status statement.
pub const SQL_CHECKPOINT_TIMEOUT_MS: u64 = 60_000;

/// Runs one SQL call under `timeout_ms`. Dropping the future on the deadline leaves the
/// connection in an unknown state: callers drop the client with the error.
pub async fn bounded<T>(
    what: &'static str,
    timeout_ms: u64,
    call: impl std::future::Future<Output = std::result::Result<T, tokio_postgres::Error>>,
) -> Result<T> {
    let timeout = Duration::from_millis(timeout_ms);
    match tokio::time::timeout(timeout, call).await {
        Ok(r) => Ok(r?),
        Err(_) => Err(PgError::SqlTimeout { what, timeout }),
    }
}

/// Connects with tokio-postgres and drives the connection on a spawned task (it ends when
/// the client is dropped or the server goes away). Needs a tokio runtime. Bounded by
/// [`SQL_CONNECT_TIMEOUT_MS`], login included.
pub async fn connect(conninfo: &Conninfo) -> Result<tokio_postgres::Client> {
    let (client, conn) = bounded(
        "connect and login",
        SQL_CONNECT_TIMEOUT_MS,
        conninfo.to_config().connect(tokio_postgres::NoTls),
    )
    .await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

/// One row of one statement without parameters, bounded by [`SQL_STATEMENT_TIMEOUT_MS`].
pub async fn query_one(client: &Client, sql: &'static str) -> Result<tokio_postgres::Row> {
    bounded(sql, SQL_STATEMENT_TIMEOUT_MS, client.query_one(sql, &[])).await
}

/// Every row of one statement without parameters, bounded by [`SQL_STATEMENT_TIMEOUT_MS`].
pub async fn query(client: &Client, sql: &'static str) -> Result<Vec<tokio_postgres::Row>> {
    bounded(sql, SQL_STATEMENT_TIMEOUT_MS, client.query(sql, &[])).await
}

/// `CHECKPOINT`, bounded by [`SQL_CHECKPOINT_TIMEOUT_MS`].
pub async fn checkpoint(client: &Client) -> Result<()> {
    bounded(
        "CHECKPOINT",
        SQL_CHECKPOINT_TIMEOUT_MS,
        client.batch_execute("CHECKPOINT"),
    )
    .await
}

async fn query_text(client: &Client, sql: &'static str) -> Result<Option<String>> {
    let row = query_one(client, sql).await?;
    Ok(row.try_get::<_, Option<String>>(0)?)
}

async fn query_lsn(client: &Client, sql: &'static str) -> Result<Option<u64>> {
    query_text(client, sql)
        .await?
        .map(|t| parse_lsn(&t))
        .transpose()
}

/// `SELECT timeline_id FROM pg_control_checkpoint()`: the timeline of the latest
/// checkpoint (or restartpoint), what pg_rewind and pg_controldata see.
pub async fn checkpoint_timeline(client: &Client) -> Result<u32> {
    let row = query_one(client, "SELECT timeline_id FROM pg_control_checkpoint()").await?;
    let tli: i32 = row.try_get(0)?;
    u32::try_from(tli).map_err(|_| PgError::Parse {
        what: "timeline_id",
        value: tli.to_string(),
    })
}

/// On a primary whose latest checkpoint is on an older timeline than its WAL (just
/// promoted), runs `CHECKPOINT` so the control file has the new timeline. No-op otherwise.
pub async fn ensure_checkpointed_timeline(server: &Conninfo) -> Result<()> {
    let client = connect(server).await?;
    if in_recovery(&client).await? {
        return Ok(());
    }
    if checkpoint_timeline(&client).await? < timeline(&client).await? {
        checkpoint(&client).await?;
    }
    Ok(())
}

/// `pg_is_in_recovery()`: true on a standby.
pub async fn in_recovery(client: &Client) -> Result<bool> {
    let row = query_one(client, "SELECT pg_is_in_recovery()").await?;
    Ok(row.try_get(0)?)
}

/// The server's timeline. A primary: the timeline of its current WAL file
/// (`pg_walfile_name(pg_current_wal_lsn())`, right at once after a promotion, unlike
/// `pg_control_checkpoint()` which lags until the next checkpoint). A standby: the timeline
/// of the WAL it last received when it streams (`pg_stat_wal_receiver.received_tli`), else
/// that of its latest restartpoint (`pg_control_checkpoint()`).
pub async fn timeline(client: &Client) -> Result<u32> {
    if !in_recovery(client).await? {
        let name = query_text(client, "SELECT pg_walfile_name(pg_current_wal_lsn())")
            .await?
            .unwrap_or_default();
        return timeline_from_walfile(&name);
    }
    let rows = query(
        client,
        "SELECT received_tli FROM pg_stat_wal_receiver WHERE received_tli > 0",
    )
    .await?;
    if let Some(row) = rows.first() {
        if let Some(tli) = row.try_get::<_, Option<i32>>(0)? {
            return u32::try_from(tli).map_err(|_| PgError::Parse {
                what: "received_tli",
                value: tli.to_string(),
            });
        }
    }
    // Not streaming (its primary died, or it was detached): the latest restartpoint's
    // timeline can be older than the WAL it holds (a standby that followed a promotion
    // but has not had a restartpoint since), which would make it look behind on the
    // timeline it really has. The WAL segments it holds name their timeline.
    let ckpt = checkpoint_timeline(client).await?;
    let names = query(
        client,
        "SELECT name FROM pg_ls_waldir() WHERE name ~ '^[0-9A-F]{24}$'",
    )
    .await?;
    let mut tli = ckpt;
    for row in names {
        let name: String = row.try_get(0)?;
        if let Ok(t) = timeline_from_walfile(&name) {
            tli = tli.max(t);
        }
    }
    Ok(tli)
}

/// A primary's current write position (`pg_current_wal_lsn()`; fails on a standby).
pub async fn current_lsn(client: &Client) -> Result<u64> {
    query_lsn(client, "SELECT pg_current_wal_lsn()::text")
        .await?
        .ok_or(PgError::Parse {
            what: "pg_current_wal_lsn",
            value: "NULL".to_owned(),
        })
}

/// A standby's last WAL position received and flushed (`pg_last_wal_receive_lsn()`). None on
/// a server that has not streamed since it started. After a promotion it stays at the last
/// position received: read it only when [`in_recovery`].
pub async fn receive_lsn(client: &Client) -> Result<Option<u64>> {
    query_lsn(client, "SELECT pg_last_wal_receive_lsn()::text").await
}

/// A standby's last WAL position replayed (`pg_last_wal_replay_lsn()`). None on a server
/// started as a primary; after a promotion it stays at the last position replayed: read it
/// only when [`in_recovery`].
pub async fn replay_lsn(client: &Client) -> Result<Option<u64>> {
    query_lsn(client, "SELECT pg_last_wal_replay_lsn()::text").await
}

/// The cluster's system identifier (`pg_control_system()`); equal on a primary and all its
/// base backups. The same number [`ControlData::system_identifier`] reads from disk.
pub async fn system_identifier(client: &Client) -> Result<u64> {
    let row = query_one(client, "SELECT system_identifier FROM pg_control_system()").await?;
    let id: i64 = row.try_get(0)?;
    // PostgreSQL keeps it as uint64 and shows it as a (signed) bigint: same bits.
    Ok(id as u64)
}

/// `SELECT pg_promote(wait => true, wait_seconds => N)`: promotes a standby and waits until
/// it accepts writes. Ok(false) when the promotion did not finish within `wait_seconds`.
/// The call itself is bounded by `wait_seconds` plus [`SQL_STATEMENT_TIMEOUT_MS`].
pub async fn promote(client: &Client, wait_seconds: i32) -> Result<bool> {
    let wait_ms = u64::try_from(wait_seconds)
        .unwrap_or(0)
        .saturating_mul(1000);
    let row = bounded(
        "pg_promote",
        wait_ms.saturating_add(SQL_STATEMENT_TIMEOUT_MS),
        client.query_one(
            "SELECT pg_promote(wait => true, wait_seconds => $1)",
            &[&wait_seconds],
        ),
    )
    .await?;
    Ok(row.try_get(0)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsn_parse_and_format() {
        assert_eq!(parse_lsn("0/0").unwrap(), 0);
        assert_eq!(parse_lsn("0/3000148").unwrap(), 0x300_0148);
        assert_eq!(parse_lsn("16/B374D848").unwrap(), 0x16_B374_D848);
        assert_eq!(parse_lsn(" 16/b374d848\n").unwrap(), 0x16_B374_D848);
        assert_eq!(parse_lsn("FFFFFFFF/FFFFFFFF").unwrap(), u64::MAX);
        for bad in [
            "",
            "/",
            "0/",
            "/0",
            "1",
            "1/2/3",
            "G/0",
            "123456789/0",
            "-1/0",
            "+1/0",
        ] {
            assert!(parse_lsn(bad).is_err(), "{bad:?}");
        }
        for lsn in [0, 1, 0x16_B374_D848, u64::MAX, 1 << 32] {
            assert_eq!(parse_lsn(&format_lsn(lsn)).unwrap(), lsn);
        }
        assert_eq!(format_lsn(0x16_B374_D848), "16/B374D848");
    }

    #[test]
    fn version_parse() {
        let v = |s| parse_version(s).unwrap();
        assert_eq!(
            v("postgres (PostgreSQL) 15.8 (Debian 15.8-0+deb12u1)\n"),
            PgVersion {
                major: 15,
                minor: 8
            }
        );
        assert_eq!(v("postgres (PostgreSQL) 16beta2").major, 16);
        assert_eq!(
            v("postgres (PostgreSQL) 13.0"),
            PgVersion {
                major: 13,
                minor: 0
            }
        );
        assert_eq!(
            v("postgres (PostgreSQL) 9.6.24"),
            PgVersion { major: 9, minor: 6 }
        );
        assert!(
            v("postgres (PostgreSQL) 9.6.24")
                < PgVersion {
                    major: 13,
                    minor: 0
                }
        );
        assert!(parse_version("bash: postgres: not found").is_err());
        assert!(parse_version("postgres (PostgreSQL) ").is_err());
        assert_eq!(
            v("postgres (PostgreSQL) 15.8").to_string(),
            "15.8".to_owned()
        );
    }

    #[test]
    fn conninfo_building() {
        let c = Conninfo::new("127.0.0.1", 5433).application_name("node-b");
        assert_eq!(
            c.to_string(),
            "host=127.0.0.1 port=5433 user=postgres dbname=postgres application_name=node-b"
        );
        let c = Conninfo::new("db 1", 5432)
            .user("it's")
            .password(r"a\b")
            .dbname("")
            .connect_timeout_s(3);
        assert_eq!(
            c.to_string(),
            r"host='db 1' port=5432 user='it\'s' dbname='' password='a\\b' connect_timeout=3"
        );
        let cfg = c.to_config();
        assert_eq!(cfg.get_ports(), &[5432]);
        assert_eq!(cfg.get_user(), Some("it's"));
    }

    #[test]
    fn conf_quoting_and_lines() {
        assert_eq!(quote_conf_value("a'b"), "'a''b'");
        let text = "# comment\nprimary_conninfo = 'old'\nfoo = 1\n  PRIMARY_CONNINFO='x'\n";
        let out = set_conf_line(text, "primary_conninfo", Some("host=h user='u'"));
        assert_eq!(
            out,
            "# comment\nfoo = 1\nprimary_conninfo = 'host=h user=''u'''\n"
        );
        assert_eq!(
            set_conf_line(&out, "primary_conninfo", None),
            "# comment\nfoo = 1\n"
        );
        // A key that merely starts like another is kept.
        assert_eq!(
            set_conf_line("primary_conninfo_x = 1\n", "primary_conninfo", None),
            "primary_conninfo_x = 1\n"
        );
        assert_eq!(shell_quote("a'b c"), r"'a'\''b c'");
    }

    #[test]
    fn proc_stat_parent() {
        assert_eq!(
            parent_pid_from_stat("123 (postgres: a) b) S 77 123 123 0 -1"),
            Some(77)
        );
        assert_eq!(parent_pid_from_stat("123 (x) S"), None);
        assert_eq!(parent_pid_from_stat("garbage"), None);
        // Field 22 is the start time; comm with spaces and parentheses does not shift it.
        let stat = "123 (postgres: a) b) S 77 123 123 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 10";
        assert_eq!(start_time_from_stat(stat), Some(987654));
        assert_eq!(start_time_from_stat("123 (x) S 1 2"), None);
        let me = std::process::id() as libc::pid_t;
        let mine = process_identity(me).expect("this process runs");
        assert_eq!(process_identity(me), Some(mine), "stable while it runs");
        let me = std::process::id() as libc::pid_t;
        // SAFETY: getppid has no preconditions.
        let parent = unsafe { libc::getppid() };
        assert!(children_of(parent).contains(&me));
    }

    #[test]
    fn synchronous_standby_names_text() {
        assert_eq!(SyncStandbys::Any.to_conf_value(), "ANY 1 (*)");
        assert_eq!(
            SyncStandbys::Named(vec!["n1".into(), "node-b.x".into()]).to_conf_value(),
            r#"ANY 1 ("n1", "node-b.x")"#
        );
        assert_eq!(
            SyncStandbys::Named(vec![r#"a"b"#.into()]).to_conf_value(),
            r#"ANY 1 ("a""b")"#
        );
        assert!(conf_sets(
            "x = 1\n Synchronous_Standby_Names='ANY 1 (*)'\n",
            "synchronous_standby_names"
        ));
        assert!(!conf_sets(
            "synchronous_standby_names_x = 1\n",
            "synchronous_standby_names"
        ));
    }

    #[test]
    fn controldata_and_walfile() {
        let text = "pg_control version number:            1300\n\
                    Catalog version number:               202209061\n\
                    Database system identifier:           7412345678901234567\n\
                    Database cluster state:               shut down in recovery\n\
                    Latest checkpoint location:           0/3000060\n\
                    Latest checkpoint's TimeLineID:       2\n\
                    Latest checkpoint's PrevTimeLineID:   1\n";
        assert_eq!(
            parse_controldata(text).unwrap(),
            ControlData {
                system_identifier: 7_412_345_678_901_234_567,
                cluster_state: "shut down in recovery".to_owned(),
                checkpoint_timeline: 2,
                checkpoint_lsn: 0x300_0060,
            }
        );
        assert!(parse_controldata("garbage").is_err());
        assert!(parse_controldata("Database system identifier: x\n").is_err());
        assert_eq!(
            timeline_from_walfile("000000020000000000000003").unwrap(),
            2
        );
        assert_eq!(
            timeline_from_walfile("0000001A0000000100000003").unwrap(),
            26
        );
        assert!(timeline_from_walfile("00000002000000000000000").is_err());
        assert!(timeline_from_walfile("").is_err());
    }

    #[test]
    fn missing_binaries_are_named() {
        let dir = std::env::temp_dir().join("switchyard-no-such-bindir");
        let err = PgBinaries::find(Some(&dir)).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.starts_with("PostgreSQL binaries missing or too old"),
            "{msg}"
        );
        assert!(
            msg.contains("pg_rewind") && msg.contains("postgres"),
            "{msg}"
        );
    }

    #[test]
    fn command_descriptions_hide_passwords() {
        let mut cmd = Command::new("/usr/lib/postgresql/15/bin/pg_basebackup");
        cmd.arg("-d")
            .arg(Conninfo::new("h", 1).password("sekrit").to_string());
        let d = describe(&cmd);
        assert_eq!(d, "pg_basebackup -d <conninfo with password>");
    }

    /// A bindir of fake programs; `postgres --version` prints `version_line`.
    struct FakeBindir(PathBuf);

    impl FakeBindir {
        fn new(tag: &str, version_line: &str) -> FakeBindir {
            use std::os::unix::fs::PermissionsExt;
            let dir = std::env::temp_dir()
                .join(format!("switchyard-pg-fake-{tag}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            for p in REQUIRED_PROGRAMS {
                let path = dir.join(p);
                std::fs::write(&path, format!("#!/bin/sh\necho '{version_line}'\n")).unwrap();
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
            }
            FakeBindir(dir)
        }
    }

    impl Drop for FakeBindir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn too_old_or_unreadable_version_is_refused() {
        let old = FakeBindir::new("old", "postgres (PostgreSQL) 12.9");
        let msg = PgBinaries::find(Some(&old.0)).unwrap_err().to_string();
        assert!(
            msg.starts_with("PostgreSQL binaries missing or too old") && msg.contains("12.9"),
            "{msg}"
        );
        let odd = FakeBindir::new("odd", "hello");
        let msg = PgBinaries::find(Some(&odd.0)).unwrap_err().to_string();
        assert!(msg.contains("cannot read the version"), "{msg}");
        let ok = FakeBindir::new("ok", "postgres (PostgreSQL) 15.8 (Debian 15.8-0+deb12u1)");
        let bins = PgBinaries::find(Some(&ok.0)).unwrap();
        assert_eq!(
            bins.version(),
            PgVersion {
                major: 15,
                minor: 8
            }
        );
        assert_eq!(bins.program("pg_ctl"), ok.0.join("pg_ctl"));
    }

    #[test]
    fn unknown_os_user() {
        assert!(matches!(
            OsUser::lookup("switchyard-no-such-user"),
            Err(PgError::NoSuchUser(_))
        ));
        assert_eq!(OsUser::lookup("root").unwrap().uid, 0);
    }
}
