//! The `coordd` binary (the work is in [`coordd::cli`]).

use clap::Parser;

fn main() -> std::process::ExitCode {
    // `coordd tls-gen-test-ca --out DIR`: a throw-away CA and certificates for trying TLS.
    let mut args = std::env::args_os();
    if args
        .nth(1)
        .is_some_and(|a| a == coordd::cli::GEN_TEST_CA_COMMAND)
    {
        return coordd::cli::gen_test_ca_main(std::env::args_os().skip(1));
    }
    coordd::cli::main_with_flags(coordd::config::Flags::parse())
}
