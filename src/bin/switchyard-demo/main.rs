//! `switchyard-demo`: the whole of Switchyard on one machine, in one command.
//!
//! ```sh
//! cargo run --release -- demo                 # live table; Ctrl-C stops and cleans up
//! cargo run --release -- demo --unattended    # the same story, plain lines and a summary
//! ```
//!
//! Under a temporary directory and on 127.0.0.x ports it starts a 3-member coordd
//! ensemble, three PostgreSQL servers each with its agent, and an app that reads and
//! writes through the router; it shows the election, where reads and writes go and the
//! replicas' lag, then kills the master's node (agent and PostgreSQL, kill -9), measures
//! the write gap until the new master acknowledges a write, restarts the killed node's
//! agent and waits until the old master serves reads again as a replica.
//!
//! Every member and agent is a real separate process: this same executable re-executed
//! as `switchyard-demo __coordd <coordd flags>` (coordd's own `main`,
//! `coordd::cli::main_with_flags`) or `switchyard-demo __agent <agent flags>` (the
//! agent of `switchyard agent`). Those two subcommands are internal and hidden.
//!
//! Invariant: everything the demo starts is in its process registry ([`procs`]) and is
//! gone when it exits, whether the story finished, failed, panicked or was interrupted
//! (Ctrl-C, SIGTERM, SIGHUP): agents get SIGTERM then SIGKILL of their process group,
//! every PostgreSQL is stopped in immediate mode (SIGKILL as the fallback), coordd
//! members get SIGTERM then SIGKILL, a last sweep kills any process whose command line
//! names the temporary directory, and the directory is removed. Children die with the
//! demo even if it is killed with SIGKILL (PR_SET_PDEATHSIG); only the temporary
//! directory is then left behind.

mod procs;
mod story;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "switchyard-demo",
    version,
    about = "Switchyard on one machine: a coordd ensemble, three PostgreSQL servers with their agents, an app on the router, and a failover"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Option<Cmd>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the demo (the default).
    Demo(story::DemoArgs),
}

/// `__agent`: the agent's flags exactly as `switchyard agent` takes them.
#[derive(Parser)]
#[command(name = "switchyard-demo __agent")]
struct AgentCli {
    #[command(flatten)]
    flags: switchyard_proxy::agent::AgentFlags,
}

fn main() -> ExitCode {
    // An agent's fence guard is the executable that runs the agent, so this one too.
    if let Some(code) = switchyard_proxy::agent::guard::main_if_guard() {
        return code;
    }
    let mut args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    match args.get(1).and_then(|a| a.to_str()) {
        Some("__coordd") => {
            args.remove(1);
            args[0] = "coordd".into();
            coordd::cli::main_with_flags(coordd::config::Flags::parse_from(args))
        }
        Some("__agent") => {
            args.remove(1);
            run_agent(AgentCli::parse_from(args).flags)
        }
        _ => {
            let cli = Cli::parse_from(args);
            let demo_args = match cli.cmd {
                Some(Cmd::Demo(a)) => a,
                None => story::DemoArgs::parse_from(["demo"]),
            };
            story::main(demo_args)
        }
    }
}

/// What `switchyard agent` does (proxy/src/main.rs), in this process.
fn run_agent(flags: switchyard_proxy::agent::AgentFlags) -> ExitCode {
    switchyard_proxy::agent::log_to_stderr(false);
    let settings = match switchyard_proxy::agent::Settings::resolve(flags) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("switchyard agent: {e}");
            return ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("switchyard agent: tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(switchyard_proxy::agent::run_agent(settings)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("switchyard agent: {e}");
            ExitCode::FAILURE
        }
    }
}
