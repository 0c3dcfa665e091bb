//! Real `switchyard agent` processes for end-to-end tests: each in its own process
//! group with its own [`PgDir`]; Drop kills the group (agent and its children) with
//! SIGKILL, then the PgDir stops whatever postmaster runs on its data directory.
#![allow(dead_code)]

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;

use super::postgres::{self, PgDir};

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
        let pg_port = postgres::free_port();
        let conf = dir.path().join("agent.toml");
        std::fs::write(&conf, AGENT_TOML).expect("write agent.toml");
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

    /// kill -9 of the postmaster and its backends (its process group).
    pub fn kill9_postgres(&self) {
        let pid = std::fs::read_to_string(self.dir.data_dir().join("postmaster.pid"))
            .ok()
            .and_then(|s| s.lines().next().and_then(|l| l.trim().parse::<u32>().ok()));
        if let Some(pid) = pid {
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{pid}")])
                .stderr(Stdio::null())
                .status();
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .stderr(Stdio::null())
                .status();
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill9();
    }
}
