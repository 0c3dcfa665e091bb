//! The `coordd` command: what the binary's `main` does, as a library function so that
//! another binary (the demo, `src/bin/switchyard-demo`) can run a real coordd member
//! as a child process of its own executable.

use crate::config::{Config, Flags};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::server::{replicated, Server};

/// Runs coordd with these flags until SIGTERM / Ctrl-C or a fatal error: logging to
/// stderr (`RUST_LOG`, default info), the runtime, then a standalone server or, with
/// `--ensemble`, one member. Exit code 2: bad configuration.
pub fn main_with_flags(flags: Flags) -> std::process::ExitCode {
    crate::logging::init_stderr();
    let config = match Config::load(flags) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("coordd: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    if !config.fsync {
        tracing::warn!(
            "fsync is OFF (--no-fsync): acknowledged writes can be lost on a crash or power loss"
        );
    }
    // One worker: everything but the log writer on this thread (a current-thread
    // runtime: no work stealing, no cross-thread wake-ups between a connection's
    // tasks and the core). More: a multi-thread runtime with that many workers.
    let mut builder = if config.worker_threads == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(config.worker_threads);
        b
    };
    let runtime = match builder.enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("coordd: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let result = if config.ensemble.is_some() {
            run_member(config).await
        } else {
            match Server::start(config).await {
                Ok(server) => serve_until_signal(server).await,
                Err(e) => Err(e.to_string()),
            }
        };
        match result {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("coordd: {e}");
                std::process::ExitCode::FAILURE
            }
        }
    })
}

/// The subcommand that writes a test CA: `coordd tls-gen-test-ca --out DIR`.
pub const GEN_TEST_CA_COMMAND: &str = "tls-gen-test-ca";

/// `coordd tls-gen-test-ca`: a throw-away CA, a node certificate (client and peer ports;
/// SANs localhost, ::1, 127.0.0.1-10) and a client certificate, as PEM files in `--out`.
#[derive(Debug, clap::Parser)]
#[command(
    name = "coordd tls-gen-test-ca",
    about = "Writes a throw-away test CA with a node and a client certificate (PEM) into a \
             directory: ca.pem, ca-key.pem, node.pem, node-key.pem, client.pem, client-key.pem. \
             For tests and trying TLS out only: the CA key is stored unencrypted beside them."
)]
pub struct GenTestCaFlags {
    /// Directory to write into (created if missing; files in it are replaced).
    #[arg(long)]
    pub out: std::path::PathBuf,
    /// Common name of the CA.
    #[arg(long, default_value = "coordd test CA")]
    pub ca_name: String,
}

/// Runs `coordd tls-gen-test-ca` with `args` (the first is the command's name). Exit code
/// 2: bad arguments; 1: the files could not be written.
pub fn gen_test_ca_main(
    args: impl IntoIterator<Item = std::ffi::OsString>,
) -> std::process::ExitCode {
    use clap::Parser;
    let flags = match GenTestCaFlags::try_parse_from(args) {
        Ok(f) => f,
        Err(e) => {
            let _ = e.print();
            return std::process::ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    match coordd_tls::test_ca::write_test_ca(&flags.out, &flags.ca_name) {
        Ok(files) => {
            println!(
                "wrote a test CA to {}:\n  CA           {}\n  node cert    {}\n  node key     {}\n  client cert  {}\n  client key   {}",
                files.dir.display(),
                files.ca.display(),
                files.node_cert.display(),
                files.node_key.display(),
                files.client_cert.display(),
                files.client_key.display()
            );
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("coordd tls-gen-test-ca: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Serves until SIGTERM or Ctrl-C (then shuts down cleanly) or a fatal error.
async fn serve_until_signal(server: Server) -> Result<(), String> {
    let token = server.shutdown_token();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutting down");
        token.cancel();
    });
    server.wait().await
}

/// A file in the data directory of a member removed by a reconfig; such a member refuses
/// to start again.
pub const REMOVED_MARKER: &str = "REMOVED";

fn write_removed_marker(dir: &std::path::Path) -> std::io::Result<()> {
    use std::io::Write;
    let path = dir.join(REMOVED_MARKER);
    let mut f = std::fs::File::create(&path)?;
    f.write_all(b"removed from the ensemble by a reconfig\n")?;
    f.sync_all()?;
    std::fs::File::open(dir)?.sync_all()
}

/// How long a member removed by a reconfig keeps running before it exits, so that its
/// last replies (the answer to the reconfig that removed it) reach their clients.
pub const REMOVED_EXIT_GRACE_MS: u64 = 500;

/// One member of an ensemble: the Raft log in the data directory, the peer port from
/// the ensemble list. The peer listener and the Raft member stop after the server.
async fn run_member(config: Config) -> Result<(), String> {
    let removed_marker = config.data_dir.join(REMOVED_MARKER);
    if removed_marker.exists() {
        return Err(format!(
            "this member was removed from the ensemble by a reconfig ({} exists): it must not \
             take part again with this data; to add it back, empty the data directory, start it \
             with --join and add it (coordd reconfig --add)",
            removed_marker.display()
        ));
    }
    let data_dir = config.data_dir.clone();
    let log_config = coordd_raft::DiskLogConfig {
        fsync: config.fsync,
        inline_append: config.inline_commit,
        ..coordd_raft::DiskLogConfig::default()
    };
    let log = coordd_raft::DiskLogStore::open(&config.data_dir, log_config)
        .map_err(|e| format!("data directory {}: {e}", config.data_dir.display()))?;
    let (server, member, peers) = Server::start_ensemble(config, log)
        .await
        .map_err(|e| e.to_string())?;
    // A member whose Raft stopped on a fatal error (e.g. a full disk) stops the server,
    // as a failed write-ahead log stops a standalone one: it must not live on refusing
    // every client while answering ruok.
    let member_failed = Arc::new(AtomicBool::new(false));
    let watcher = tokio::spawn({
        let (member, failed, token) = (
            member.clone(),
            member_failed.clone(),
            server.shutdown_token(),
        );
        async move {
            replicated::member_stopped(&member).await;
            // The server's core stops first on a shutdown, and the applier, left without
            // a core to hand committed entries to, stops the Raft member with an error.
            // That is the shutdown, not a fatal error: the token was cancelled before the
            // core stopped.
            if token.is_cancelled() {
                return;
            }
            tracing::error!("the Raft member stopped on a fatal error (see above); stopping");
            failed.store(true, Ordering::SeqCst);
            token.cancel();
        }
    });
    // A member removed by a reconfig stops (exit status 0): it is no longer part of the
    // ensemble and must not take clients. It waits `REMOVED_EXIT_GRACE_MS` first so the
    // reply to a reconfig that removed the leader itself leaves.
    let status = member.status();
    let me = status.id;
    if status.membership_index.is_some()
        && !status.membership.voters.contains(&me)
        && !status.membership.learners.contains(&me)
    {
        tracing::warn!(
            id = me,
            voters = ?status.membership.voters,
            "this member is not in the membership in its log: it serves nothing until a reconfig adds it (or it was removed)"
        );
    }
    let removal = tokio::spawn({
        let (member, removed, token) = (
            member.clone(),
            server.removed_token(),
            server.shutdown_token(),
        );
        async move {
            replicated::member_removed(&member, &removed).await;
            tracing::warn!(
                id = me,
                voters = ?member.status().membership.voters,
                "this member was removed from the ensemble (reconfig): closing its clients and exiting"
            );
            // Remembered, so that a restart (a supervisor) does not bring it back as a
            // member that campaigns for a configuration that is gone.
            if let Err(e) = write_removed_marker(&data_dir) {
                tracing::warn!(error = %e, "could not write the removed marker in the data directory");
            }
            tokio::time::sleep(std::time::Duration::from_millis(REMOVED_EXIT_GRACE_MS)).await;
            token.cancel();
        }
    });
    let result = serve_until_signal(server).await;
    watcher.abort();
    removal.abort();
    let _ = peers.shutdown().await;
    let _ = member.shutdown().await;
    if member_failed.load(Ordering::SeqCst) {
        return Err(
            "the Raft member stopped on a fatal error (its log or state machine failed)".into(),
        );
    }
    result
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

/// `coordd reconfig`: changes the members of a running ensemble through ZooKeeper's
/// reconfig op (what zkCli's `reconfig` sends), or prints the configuration.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "coordd reconfig",
    about = "Change a running coordd ensemble's members (ZooKeeper's reconfig), or print its configuration",
    long_about = "Grow: start each new member first with --join and an --ensemble list of the \
                  current members plus itself, then\n  \
                  coordd reconfig --server 10.0.0.1:2181 --add 4=10.0.0.4:2888,5=10.0.0.5:2888\n\
                  Shrink: coordd reconfig --server 10.0.0.1:2181 --remove 4,5 (removed members \
                  stop; removing the leader makes the others elect a new one).\n\
                  Without --add/--remove/--members: print /zookeeper/config.\n\n\
                  Exit status: 0 done; 1 refused or failed (the error names ZooKeeper's code: \
                  BadArguments, NewConfigNoQuorum, ReconfigInProgress, BadVersion, NoAuth); \
                  3 outcome unknown (connection lost: read the configuration again); 2 bad usage."
)]
pub struct ReconfigArgs {
    /// Client address(es) of ensemble members, comma-separated (any member; followers
    /// forward to the leader).
    #[arg(long, required = true)]
    pub server: String,
    /// Members to add: `id=host:peerport` or ZooKeeper's `server.id=host:port:port:participant;client`,
    /// comma-separated.
    #[arg(long, default_value = "")]
    pub add: String,
    /// Member ids to remove, comma-separated.
    #[arg(long, default_value = "")]
    pub remove: String,
    /// The whole new member list instead of --add/--remove (ZooKeeper's non-incremental form).
    #[arg(long, default_value = "")]
    pub members: String,
    /// Only if the configuration is still at this version (hex, as in `version=`).
    #[arg(long)]
    pub from_config: Option<String>,
    /// Digest credentials `user:password` (needed when coordd has a superuser configured).
    #[arg(long)]
    pub auth: Option<String>,
    /// Give up after this many seconds [default: 60].
    #[arg(long, default_value_t = 60)]
    pub timeout_secs: u64,
}

/// Runs `coordd reconfig` (args without the program name and `reconfig`).
pub fn reconfig_main(args: ReconfigArgs) -> std::process::ExitCode {
    use std::process::ExitCode;
    let from_config = match args
        .from_config
        .as_deref()
        .map(|v| i64::from_str_radix(v.trim_start_matches("0x"), 16))
    {
        None => -1,
        Some(Ok(v)) => v,
        Some(Err(_)) => {
            eprintln!("coordd reconfig: --from-config must be a hex version");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("coordd reconfig: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let servers: Vec<String> = args
        .server
        .split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect();
    let timeout = std::time::Duration::from_secs(args.timeout_secs.max(1));
    runtime.block_on(async move {
        let mut cfg = coordd_client::ClientConfig::new(servers)
            .with_session_timeout_ms(30_000)
            .with_request_timeout_ms(
                u32::try_from(timeout.as_millis()).unwrap_or(u32::MAX),
            );
        if let Some(a) = &args.auth {
            cfg.auth.push(("digest".into(), a.as_bytes().to_vec()));
        }
        let work = async {
            let (client, _events) = coordd_client::Client::connect(cfg).await?;
            let result = if args.add.is_empty() && args.remove.is_empty() && args.members.is_empty()
            {
                client.get_data("/zookeeper/config", false).await
            } else {
                client
                    .reconfig(&args.add, &args.remove, &args.members, from_config)
                    .await
            };
            let _ = client.close().await;
            result
        };
        match tokio::time::timeout(timeout, work).await {
            Err(_) => {
                eprintln!(
                    "coordd reconfig: no answer within {} s; the outcome is unknown (read the configuration again)",
                    timeout.as_secs()
                );
                ExitCode::from(3)
            }
            Ok(Ok((data, _stat))) => {
                println!("{}", String::from_utf8_lossy(&data));
                ExitCode::SUCCESS
            }
            Ok(Err(coordd_client::Error::ConnectionLoss)) => {
                eprintln!("coordd reconfig: connection lost; the outcome is unknown (read the configuration again)");
                ExitCode::from(3)
            }
            Ok(Err(coordd_client::Error::Server(code))) => {
                eprintln!("coordd reconfig: refused: {code:?}");
                ExitCode::FAILURE
            }
            Ok(Err(e)) => {
                eprintln!("coordd reconfig: {e}");
                ExitCode::from(3)
            }
        }
    })
}
