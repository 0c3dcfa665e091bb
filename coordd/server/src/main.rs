//! The `coordd` binary (the work is in [`coordd::cli`]): `coordd [flags]` runs a server;
//! `coordd reconfig ...` changes a running ensemble's members.

use clap::Parser;

fn main() -> std::process::ExitCode {
    let mut args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if args.get(1).is_some_and(|a| a == "reconfig") {
        args.remove(1);
        return coordd::cli::reconfig_main(coordd::cli::ReconfigArgs::parse_from(args));
    }
    // `coordd tls-gen-test-ca --out DIR`: a throw-away CA and certificates for trying TLS.
    if args
        .get(1)
        .is_some_and(|a| a == coordd::cli::GEN_TEST_CA_COMMAND)
    {
        return coordd::cli::gen_test_ca_main(args.into_iter().skip(1));
    }
    coordd::cli::main_with_flags(coordd::config::Flags::parse_from(args))
}
