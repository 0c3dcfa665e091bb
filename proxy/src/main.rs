//! `switchyard`: the agent beside each PostgreSQL server, and the status command.
//!
//! ```text
//! switchyard agent --cluster main --node pg1 --coord zk1:2181,zk2:2181 \
//!     --pg-data /var/lib/postgresql/data --pg-port 5432 --host 10.0.0.1 [--config agent.toml]
//! switchyard status --cluster main --coord zk1:2181 [--json] [--coord-tls-ca-file ca.pem]
//! switchyard switchover --cluster main --coord zk1:2181 [--from pg1] --to pg2
//! ```

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use switchyard_proxy::agent::config::{coord_tls, parse_coord, CoordTlsArgs};
use switchyard_proxy::agent::{self, AgentFlags, Settings};
use switchyard_proxy::namespace::{Namespace, ROOT_DEFAULT};

#[derive(Parser)]
#[command(
    name = "switchyard",
    version,
    about = "Switchyard: PostgreSQL master election through coordd"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Manage one PostgreSQL server: bootstrap, election, promotion, fencing.
    Agent(AgentFlags),
    /// Print the cluster: master, replicas, lag, epoch.
    Status {
        #[arg(long)]
        cluster: String,
        #[arg(long)]
        coord: String,
        #[arg(long, default_value = ROOT_DEFAULT)]
        root: String,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        tls: CoordTlsArgs,
    },
    /// Hand the master role over to a replica (planned, nothing lost) and wait for it.
    Switchover {
        #[arg(long)]
        cluster: String,
        #[arg(long)]
        coord: String,
        #[arg(long, default_value = ROOT_DEFAULT)]
        root: String,
        /// The current master (refused if another node is master).
        #[arg(long)]
        from: Option<String>,
        /// The replica to promote.
        #[arg(long)]
        to: String,
        /// How long to wait for the outcome.
        #[arg(long, default_value_t = agent::switchover::SWITCHOVER_WAIT_MS_DEFAULT)]
        timeout_ms: u64,
        /// The cluster's shared digest credentials (`user:password`, agent.toml's
        /// `coord_auth`), when the agents use them. From the environment rather than
        /// the command line, so that they do not show in `ps`.
        #[arg(long, env = "SWITCHYARD_COORD_AUTH", hide_env_values = true)]
        coord_auth: Option<String>,
        #[command(flatten)]
        tls: CoordTlsArgs,
    },
}

/// What a command connects to: its namespace, coordd's servers and TLS settings.
struct Target {
    ns: Namespace,
    coord: Vec<String>,
    tls: Option<coordd_client::TlsConfig>,
}

/// The target of a command, or a usage error printed for `cmd`.
fn target(
    cmd: &str,
    root: &str,
    cluster: &str,
    coord: &str,
    tls: &CoordTlsArgs,
) -> Result<Target, ExitCode> {
    let usage = |e: String| {
        eprintln!("switchyard {cmd}: {e}");
        ExitCode::from(2)
    };
    let ns = Namespace::new(root, cluster).map_err(|e| usage(e.to_string()))?;
    let coord = parse_coord(coord).map_err(|e| usage(e.to_string()))?;
    let tls = coord_tls(tls).map_err(usage)?;
    Ok(Target { ns, coord, tls })
}

fn main() -> ExitCode {
    // The agent's fence guard is this executable again (`switchyard fence-guard ...`).
    if let Some(code) = agent::guard::main_if_guard() {
        return code;
    }
    let cli = Cli::parse();
    agent::log_to_stderr(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("switchyard: tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match cli.cmd {
        Cmd::Agent(flags) => {
            let settings = match Settings::resolve(flags) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("switchyard agent: {e}");
                    return ExitCode::from(2);
                }
            };
            match rt.block_on(agent::run_agent(settings)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("switchyard agent: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Cmd::Status {
            cluster,
            coord,
            root,
            json,
            tls,
        } => {
            let t = match target("status", &root, &cluster, &coord, &tls) {
                Ok(t) => t,
                Err(code) => return code,
            };
            match rt.block_on(agent::status::read_status(t.coord, t.tls, &t.ns)) {
                Ok(st) => {
                    if json {
                        println!("{}", st.to_json());
                    } else {
                        print!("{}", st.to_table());
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("switchyard status: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Cmd::Switchover {
            cluster,
            coord,
            root,
            from,
            to,
            timeout_ms,
            coord_auth,
            tls,
        } => {
            if let Some(Err(e)) = coord_auth
                .as_deref()
                .map(agent::config::validate_coord_auth)
            {
                eprintln!("switchyard switchover: {e}");
                return ExitCode::from(2);
            }
            let t = match target("switchover", &root, &cluster, &coord, &tls) {
                Ok(t) => t,
                Err(code) => return code,
            };
            let wait = std::time::Duration::from_millis(timeout_ms);
            match rt.block_on(agent::switchover::switchover(
                t.coord,
                t.tls,
                coord_auth.as_deref(),
                &t.ns,
                from.as_deref(),
                &to,
                wait,
            )) {
                Ok(done) => {
                    println!(
                        "switchover {} -> {} done in {} ms (epoch {})",
                        done.from,
                        done.to,
                        done.elapsed.as_millis(),
                        done.epoch
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("switchyard switchover: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
