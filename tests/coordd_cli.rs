//! The coordd command line: help, configuration files, clear errors on bad input. The
//! data-directory lock is checked on a standalone server and on every member of an
//! ensemble (`tests/support/target.rs`); the rest is about the command line and the
//! process, the same whatever the topology.

mod support;

use std::process::Command;

use support::coordd::{coordd_bin, four_letter, free_port, wait_until};
use support::target::Topology;

/// Kills the process when the test ends, also when it panics.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

// Standalone only: the command line's parsing, no server runs.
#[test]
fn help_lists_the_options() {
    let out = Command::new(coordd_bin()).arg("--help").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--client-addr",
        "--data-dir",
        "--config",
        "--tick-time-ms",
        "--no-fsync",
    ] {
        assert!(text.contains(flag), "--help lacks {flag}:\n{text}");
    }
}

// Standalone only: the configuration is refused before any server runs.
#[test]
fn malformed_config_is_a_clear_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("unknown key", "no_such_option = 1\n", "no_such_option"),
        ("bad type", "tick_time_ms = \"fast\"\n", "tick_time_ms"),
        (
            "bad address",
            "client_addr = \"not an address\"\n",
            "client_addr",
        ),
        ("zero limit", "frame_bytes_max = 0\n", "frame_bytes_max"),
        (
            "timeouts out of order",
            "min_session_timeout_ms = 9000\nmax_session_timeout_ms = 100\n",
            "min_session_timeout_ms",
        ),
        ("not toml", "[[[\n", "config file"),
        (
            "metrics on the client port",
            "client_addr = \"127.0.0.1:7001\"\nmetrics_addr = \"127.0.0.1:7001\"\n",
            "metrics_addr",
        ),
    ];
    for (what, text, expect) in cases {
        let path = dir.path().join("coordd.toml");
        std::fs::write(&path, text).unwrap();
        let out = Command::new(coordd_bin())
            .arg("--config")
            .arg(&path)
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{what}: {stderr}");
        assert!(stderr.contains(expect), "{what}: {stderr}");
        assert!(!stderr.contains("panicked"), "{what}: {stderr}");
    }
    let out = Command::new(coordd_bin())
        .arg("--config")
        .arg(dir.path().join("missing.toml"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing.toml"));
}

// Standalone only: how a file and flags merge does not depend on the topology.
#[test]
fn config_file_is_used_and_flags_win() {
    let dir = tempfile::tempdir().unwrap();
    let file_port = free_port();
    let flag_port = free_port();
    let path = dir.path().join("coordd.toml");
    std::fs::write(
        &path,
        format!("client_addr = \"127.0.0.1:{file_port}\"\ntick_time_ms = 300\n"),
    )
    .unwrap();
    let _child = KillOnDrop(
        Command::new(coordd_bin())
            .arg("--config")
            .arg(&path)
            .arg("--client-addr")
            .arg(format!("127.0.0.1:{flag_port}"))
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let addr = format!("127.0.0.1:{flag_port}").parse().unwrap();
    wait_until(
        "coordd on the flag's port",
        std::time::Duration::from_secs(20),
        || four_letter(addr, "ruok").as_deref() == Some("imok"),
    );
    let conf = four_letter(addr, "conf").unwrap();
    assert!(conf.contains("tickTime=300"), "{conf}");
    assert!(conf.contains(&format!("clientPort={flag_port}")), "{conf}");
}

/// Ensemble: a second process with a member's flags (`--id`, `--ensemble`) and data
/// directory, for every member.
fn a_second_server_on_the_same_data_dir_is_refused(topo: Topology) {
    let t = topo.start_own(&["--tick-time-ms", "100"]);
    for first in t.members() {
        let out = Command::new(coordd_bin())
            .arg("--client-addr")
            .arg(format!("127.0.0.1:{}", free_port()))
            .arg("--data-dir")
            .arg(first.data_dir())
            .args(&first.extra_args)
            .output()
            .unwrap();
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.to_lowercase().contains("lock"), "{stderr}");
    }
}

both_topologies!(sync a_second_server_on_the_same_data_dir_is_refused);

/// Names of the process's threads, from /proc.
fn thread_names(pid: u32) -> Vec<String> {
    let mut names = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let comm = task.unwrap().path().join("comm");
        if let Ok(name) = std::fs::read_to_string(comm) {
            names.push(name.trim().to_string());
        }
    }
    names
}

// Standalone only: a member's Raft log writes on tokio's blocking pool, whose threads
// carry the workers' name, so counting threads by name cannot check a member.
#[test]
fn worker_threads_sets_the_serving_threads() {
    for (workers, tokio_workers_expected) in [(1usize, 0usize), (3, 3)] {
        let server =
            support::coordd::Coordd::start_with(&["--worker-threads", &workers.to_string()]);
        let addr = server.connect_string().parse().unwrap();
        assert_eq!(four_letter(addr, "ruok").as_deref(), Some("imok"));
        let names = thread_names(server.pid().expect("coordd running"));
        let tokio_workers = names.iter().filter(|n| n.starts_with("tokio-r")).count();
        // One worker is a current-thread runtime on the main thread: no tokio worker
        // threads at all; N > 1 is a multi-thread runtime with exactly N.
        assert_eq!(
            tokio_workers, tokio_workers_expected,
            "--worker-threads {workers}: {names:?}"
        );
    }
}

/// An HTTP request to `addr`; the whole answer (the server closes after it).
fn http(addr: std::net::SocketAddr, request: &[u8]) -> String {
    use std::io::{Read, Write};
    let mut s =
        std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(2)).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    s.write_all(request).unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

// Standalone only: the endpoint serves the same rows in either topology (mntr's).
#[test]
fn prometheus_metrics_are_served_over_http() {
    let metrics_addr = std::net::SocketAddr::from(([127, 0, 0, 1], free_port()));
    let server =
        support::coordd::Coordd::start_with(&["--metrics-addr", &metrics_addr.to_string()]);
    let client_addr = server.connect_string().parse().unwrap();
    assert_eq!(four_letter(client_addr, "ruok").as_deref(), Some("imok"));

    let answer = http(metrics_addr, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    let (head, body) = answer.split_once("\r\n\r\n").expect("a head and a body");
    assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
    assert!(head.contains("text/plain; version=0.0.4"), "{head}");
    for line in [
        "zk_server_state{state=\"standalone\"} 1",
        "# TYPE zk_znode_count gauge",
        "# TYPE zk_packets_received counter",
    ] {
        assert!(body.lines().any(|l| l == line), "no {line:?} in:\n{body}");
    }
    // The same numbers as mntr: the root and /zookeeper at least.
    let znodes: u64 = body
        .lines()
        .find_map(|l| l.strip_prefix("zk_znode_count "))
        .expect("zk_znode_count")
        .parse()
        .expect("a number");
    assert!(znodes >= 2, "{znodes}");

    let other = http(metrics_addr, b"GET / HTTP/1.1\r\n\r\n");
    assert!(other.starts_with("HTTP/1.1 404"), "{other}");
    let post = http(metrics_addr, b"POST /metrics HTTP/1.1\r\n\r\n");
    assert!(post.starts_with("HTTP/1.1 405"), "{post}");
    let mut huge = b"GET /metrics HTTP/1.1\r\nX: ".to_vec();
    huge.extend(std::iter::repeat_n(b'a', 20_000));
    huge.extend_from_slice(b"\r\n\r\n");
    let refused = http(metrics_addr, &huge);
    assert!(refused.starts_with("HTTP/1.1 431"), "{refused}");
    // The client port still serves, and `conf` names the port as ZooKeeper does.
    let conf = four_letter(client_addr, "conf").expect("conf answers");
    let port_line = format!("metricsProvider.httpPort={}", metrics_addr.port());
    assert!(conf.lines().any(|l| l == port_line), "{conf}");
}
