//! The `switchyard` command line as an operator meets it: help, and what a bad flag or a
//! malformed agent.toml gets (a clear message naming the problem and exit code 2, never a
//! panic, and nothing started).
//!
//! Being an integration test of this package, it also makes `cargo test` build the
//! `switchyard` binary itself, in the test profile, with the dependencies the tests
//! already compiled: scripts/test.sh hands that binary to the end-to-end tests.

use std::process::{Command, Output};

fn switchyard(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(args)
        .output()
        .expect("run the switchyard binary")
}

fn stderr_of(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A usage error: exit code 2, `expected` in the message, no panic.
fn assert_usage_error(out: &Output, expected: &str) {
    let stderr = stderr_of(out);
    assert_eq!(out.status.code(), Some(2), "exit code; stderr: {stderr}");
    assert!(
        stderr.contains(expected),
        "stderr should name {expected:?}: {stderr}"
    );
    assert!(!stderr.contains("panicked"), "a panic: {stderr}");
}

/// `switchyard agent` for cluster `cluster` with agent.toml `config`.
fn agent_args<'a>(cluster: &'a str, config: &'a str) -> Vec<&'a str> {
    vec![
        "agent",
        "--cluster",
        cluster,
        "--node",
        "pg1",
        "--coord",
        "127.0.0.1:1",
        "--pg-data",
        "/nonexistent/switchyard-cli-test",
        "--pg-port",
        "5432",
        "--config",
        config,
    ]
}

#[test]
fn help_lists_the_commands() {
    let out = switchyard(&["--help"]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    for cmd in ["agent", "status", "switchover"] {
        assert!(stdout.contains(cmd), "--help should list {cmd}: {stdout}");
    }
}

#[test]
fn unknown_flag_is_a_usage_error() {
    let out = switchyard(&["agent", "--no-such-flag"]);
    assert_usage_error(&out, "--no-such-flag");
}

#[test]
fn malformed_agent_toml_is_reported_with_its_path() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("agent.toml");
    std::fs::write(
        &path,
        "root = \"/switchyard\"\nsession_timeout_ms = [not toml\n",
    )
    .expect("write agent.toml");
    let path = path.to_str().expect("utf-8 temp path");
    let out = switchyard(&agent_args("main", path));
    assert_usage_error(&out, path);
}

#[test]
fn missing_agent_toml_is_reported_with_its_path() {
    let out = switchyard(&agent_args("main", "/nonexistent/switchyard-agent.toml"));
    assert_usage_error(&out, "/nonexistent/switchyard-agent.toml");
}

#[test]
fn bad_cluster_name_is_refused_before_anything_starts() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("agent.toml");
    std::fs::write(&path, "").expect("write agent.toml");
    let path = path.to_str().expect("utf-8 temp path");
    let out = switchyard(&agent_args("no/slashes", path));
    assert_usage_error(&out, "no/slashes");
}
