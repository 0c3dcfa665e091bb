//! zkCli compatibility: one script of Apache ZooKeeper's own command-line client, run
//! against real ZooKeeper 3.8 and against coordd, outputs normalized and compared line by
//! line: a standalone coordd, and a 3-member coordd ensemble, where the script runs once
//! against each member in turn (`zkcli_output_matches_zookeeper::{standalone,ensemble}`).
//!
//! Needs Debian's `zookeeper` package (skips with a printed reason without it; CI installs
//! it) and the coordd binary, found by tests/support/coordd.rs: env `COORDD_BIN`, else
//! `$CARGO_TARGET_DIR` or `./target`, `release/coordd` then `debug/coordd`
//! (scripts/test.sh builds the release one and sets `COORDD_BIN`).

mod support;

use std::collections::HashMap;

use support::target::Topology;
use support::zookeeper::{zk_cli, ZkCliOutput, ZooKeeper};

/// Every command here prints something deterministic (or an error) on real ZooKeeper.
const SCRIPT: &[&str] = &[
    "create /app",
    "create /app/a hello",
    "create -e /app/eph ephemeral",
    "create -s /app/seq- one",
    "create -s /app/seq- two",
    "create -e -s /app/eseq- x",
    "get /app/a",
    "get -s /app/a",
    "set /app/a world",
    "get -s /app/a",
    "set -v 1 /app/a again",
    "set -v 7 /app/a bad",
    "get /app/a",
    "ls /app",
    "ls -s /app",
    "ls -R /app",
    "stat /app/a",
    "stat /app/eph",
    "stat /app/missing",
    "get /app/missing",
    "create /app/a dup",
    "create /missing/child x",
    "create -e /app/eph/child x",
    "delete /app",
    "delete -v 0 /app/a",
    "delete /app/a",
    "delete /app/a",
    "ls /app",
    "create /app/acl data",
    "getAcl /app/acl",
    "setAcl /app/acl world:anyone:r",
    "getAcl /app/acl",
    "get /app/acl",
    "set /app/acl nope",
    "getAcl /",
    "ls /",
    "deleteall /app",
    "ls /",
    "get /app",
];

/// Makes outputs of two servers comparable: times, zxids and session ids differ from run
/// to run and server to server. Zxids are renamed by order of first appearance (Z1, Z2,
/// ...), so equalities between them (mZxid == cZxid, pZxid ...) still count.
fn normalize(out: &ZkCliOutput) -> Vec<String> {
    let mut zxids: HashMap<String, String> = HashMap::new();
    out.lines()
        .into_iter()
        .map(|line| {
            if let Some((key, value)) = line.split_once(" = ") {
                match key {
                    "ctime" | "mtime" => return format!("{key} = <time>"),
                    "cZxid" | "mZxid" | "pZxid" => {
                        let n = zxids.len() + 1;
                        let name = zxids
                            .entry(value.to_owned())
                            .or_insert_with(|| format!("Z{n}"));
                        return format!("{key} = {name}");
                    }
                    "ephemeralOwner" if value != "0x0" => return format!("{key} = <session>"),
                    _ => {}
                }
            }
            line
        })
        .collect()
}

// ZooKeeper alone (the oracle's own determinism): no coordd, so no ensemble variant.
#[test]
fn zk_cli_batch_mode_against_real_zookeeper() {
    if ZooKeeper::skip_if_unavailable("zk_cli_batch_mode_against_real_zookeeper") {
        return;
    }
    let zk = ZooKeeper::start().expect("start ZooKeeper");
    let out = zk.cli(SCRIPT).expect("run zkCli");
    // zkCli exits with the status of the last command before `quit` (here `get /app`,
    // NoNode: 1), so the status is data, not success.
    assert_eq!(
        out.status.code(),
        Some(1),
        "zkCli: {}\n{}",
        out.status,
        out.raw
    );
    let lines = normalize(&out);
    for expected in [
        "Created /app/a",
        "Created /app/seq-0000000002",
        "Created /app/seq-0000000003",
        "Created /app/eseq-0000000004",
        "hello",
        "world",
        "again",
        "version No is not valid : /app/a",
        "[a, eph, eseq-0000000004, seq-0000000002, seq-0000000003]",
        "ephemeralOwner = <session>",
        "Node does not exist: /app/missing",
        "Node already exists: /app/a",
        "Node not empty: /app",
        "Insufficient permission : /app/acl",
        "'world,'anyone",
        ": r",
        "[app, zookeeper]",
        "[zookeeper]",
        "Node does not exist: /app",
    ] {
        assert!(
            lines.iter().any(|l| l == expected),
            "zkCli output lacks {expected:?}; normalized output:\n{}",
            lines.join("\n")
        );
    }
    // Deterministic across runs once normalized.
    let again = ZooKeeper::start().expect("start second ZooKeeper");
    let out2 = again.cli(SCRIPT).expect("run zkCli again");
    assert_eq!(
        lines,
        normalize(&out2),
        "normalized zkCli output differs between two ZooKeeper runs"
    );
}

fn zkcli_output_matches_zookeeper(topo: Topology) {
    if ZooKeeper::skip_if_unavailable("zkcli_output_matches_zookeeper") {
        return;
    }
    let zk = ZooKeeper::start().expect("start ZooKeeper");
    let zk_out = zk.cli(SCRIPT).expect("zkCli against ZooKeeper");
    let mut expected = normalize(&zk_out);
    expected.push(format!("exit status {:?}", zk_out.status.code()));
    drop(zk);

    // ZooKeeper's tickTime, so both servers negotiate the same session timeouts. The
    // script leaves the tree as it found it, so it runs again on the next member.
    let t = topo.start_own(&["--tick-time-ms", "2000"]);
    for coordd in t.members() {
        let out = zk_cli(&coordd.connect_string(), SCRIPT).expect("zkCli against coordd");
        let mut got = normalize(&out);
        got.push(format!("exit status {:?}", out.status.code()));

        let mut report = String::new();
        for i in 0..expected.len().max(got.len()) {
            let (e, g) = (expected.get(i), got.get(i));
            if e != g {
                report.push_str(&format!(
                    "line {}:\n  zookeeper: {}\n  coordd:    {}\n",
                    i + 1,
                    e.map_or("<none>", String::as_str),
                    g.map_or("<none>", String::as_str)
                ));
            }
        }
        assert!(
            report.is_empty(),
            "zkCli output differs (coordd {} vs ZooKeeper 3.8):\n{report}\n--- coordd raw output ---\n{}\n--- coordd logs ---\n{}",
            coordd.addr,
            out.raw,
            t.logs()
        );
    }
}

both_topologies!(sync zkcli_output_matches_zookeeper);
