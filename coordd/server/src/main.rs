//! The `coordd` binary (the work is in [`coordd::cli`]).

use clap::Parser;

fn main() -> std::process::ExitCode {
    coordd::cli::main_with_flags(coordd::config::Flags::parse())
}
