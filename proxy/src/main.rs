//! `switchyard`: the agent beside each PostgreSQL server, and the status command.
//!
//! ```text
//! switchyard agent --cluster main --node pg1 --coord zk1:2181,zk2:2181 \
//!     --pg-data /var/lib/postgresql/data --pg-port 5432 --host 10.0.0.1 [--config agent.toml]
//! switchyard status --cluster main --coord zk1:2181 [--json]
//! ```

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use switchyard_proxy::agent::{self, config::parse_coord, AgentFlags, Settings};
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
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
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
        } => {
            let (ns, coord) = match (Namespace::new(&root, &cluster), parse_coord(&coord)) {
                (Ok(ns), Ok(c)) => (ns, c),
                (Err(e), _) => {
                    eprintln!("switchyard status: {e}");
                    return ExitCode::from(2);
                }
                (_, Err(e)) => {
                    eprintln!("switchyard status: {e}");
                    return ExitCode::from(2);
                }
            };
            match rt.block_on(agent::status::read_status(coord, &ns)) {
                Ok(st) => {
                    if json {
                        println!("{}", st.to_json());
                    } else {
                        print!("{}", st.to_table());
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("switchyard status: coordd: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
