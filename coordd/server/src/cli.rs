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
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        // Colour codes only for a person at a terminal, not in log files.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
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

/// One member of an ensemble: the Raft log in the data directory, the peer port from
/// the ensemble list. The peer listener and the Raft member stop after the server.
async fn run_member(config: Config) -> Result<(), String> {
    let log_config = coordd_raft::DiskLogConfig {
        fsync: config.fsync,
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
            tracing::error!("the Raft member stopped on a fatal error (see above); stopping");
            failed.store(true, Ordering::SeqCst);
            token.cancel();
        }
    });
    let result = serve_until_signal(server).await;
    watcher.abort();
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
