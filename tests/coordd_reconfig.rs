//! Membership change (issue 5, item 8) on real coordd processes: a 3-member ensemble
//! grows to 5 and shrinks back to 3 (removing the leader) through `coordd reconfig`
//! while a client keeps writing (no acknowledged write lost, the write gap bounded);
//! new members serve earlier data; members restarted after the change use the
//! membership in their log, not their command line; bad reconfig requests get
//! ZooKeeper's error codes and change nothing.

mod support;

use std::collections::BTreeSet;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use coordd_client::{Acl, Client, ClientConfig, CreateMode, Error};
use coordd_proto::ErrorCode;
use support::coordd::{coordd_bin, four_letter, Coordd, CoorddEnsemble};
use tokio::time::Instant;

const FORM_TIMEOUT: Duration = Duration::from_secs(30);
const WAIT: Duration = Duration::from_secs(30);
/// Members allow long sessions (the 100 ms tick of the test ensembles caps them at 2 s):
/// a loaded machine stalls members long enough to expire 2 s sessions.
const EXTRA: &[&str] = &["--max-session-timeout-ms", "30000"];
/// The longest a client may go without an acknowledged write while members are added
/// and removed (a removed leader costs an election plus the client's reconnect).
const WRITE_GAP_MAX: Duration = Duration::from_secs(5);

async fn client(servers: &str, session_timeout_ms: u32) -> Client {
    let mut cfg = ClientConfig::new(servers.split(','));
    cfg.session_timeout_ms = session_timeout_ms;
    cfg.request_timeout_ms = 40_000;
    tokio::time::timeout(WAIT, Client::connect(cfg))
        .await
        .expect("connected in time")
        .expect("connected")
        .0
}

/// Runs `coordd reconfig` with `args`; returns (exit code, stdout, stderr).
async fn reconfig_cli(args: Vec<String>) -> (i32, String, String) {
    tokio::task::spawn_blocking(move || {
        let out = Command::new(coordd_bin())
            .arg("reconfig")
            .args(&args)
            .output()
            .expect("run coordd reconfig");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    })
    .await
    .expect("reconfig cli")
}

/// The `server.<id>` ids of a `/zookeeper/config` text.
fn config_ids(text: &str) -> BTreeSet<u64> {
    text.lines()
        .filter_map(|l| l.strip_prefix("server."))
        .filter_map(|l| l.split_once('=').and_then(|(id, _)| id.parse().ok()))
        .collect()
}

/// /zookeeper/config as the member `addr` serves it.
async fn config_on(addr: &str) -> BTreeSet<u64> {
    let c = client(addr, 10_000).await;
    let (data, _) = c.get_data("/zookeeper/config", false).await.unwrap();
    let _ = c.close().await;
    config_ids(&String::from_utf8_lossy(&data))
}

async fn eventually<F, Fut>(what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + WAIT;
    while !cond().await {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Creates `/w/<n>` until `stop`; returns the acknowledged ids and the longest time
/// between two acknowledgements.
async fn write_until(
    c: Arc<Client>,
    stop: Arc<AtomicBool>,
    count: Arc<AtomicU64>,
) -> (Vec<u64>, Duration) {
    let acl = Acl::open_unsafe();
    let mut acked = Vec::new();
    let mut last = Instant::now();
    let mut gap = Duration::ZERO;
    let mut n = 0u64;
    while !stop.load(Ordering::SeqCst) {
        let path = format!("/w/{n:08}");
        match c.create(&path, b"x", &acl, CreateMode::Persistent).await {
            Ok(_) => {
                acked.push(n);
                count.fetch_add(1, Ordering::SeqCst);
                gap = gap.max(last.elapsed());
                last = Instant::now();
            }
            // A retried create whose first attempt did commit.
            Err(Error::Server(ErrorCode::NodeExists)) => {}
            Err(Error::Server(code)) => panic!("create {path}: {code:?}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
        }
        n += 1;
    }
    (acked, gap.max(last.elapsed()))
}

async fn children(c: &Client, path: &str) -> BTreeSet<u64> {
    c.sync(path).await.unwrap();
    c.get_children(path, false)
        .await
        .unwrap()
        .iter()
        .map(|s| s.parse().unwrap())
        .collect()
}

/// Creates `path`, retrying while the outcome is unknown (a loaded machine stalls
/// members long enough for them to close their clients); an earlier attempt that
/// committed shows as NodeExists.
async fn create_retry(c: &Client, path: &str, data: &[u8]) {
    let deadline = Instant::now() + WAIT;
    loop {
        match c
            .create(path, data, &Acl::open_unsafe(), CreateMode::Persistent)
            .await
        {
            Ok(_) | Err(Error::Server(ErrorCode::NodeExists)) => return,
            Err(Error::Server(code)) => panic!("create {path}: {code:?}"),
            Err(e) => {
                assert!(Instant::now() < deadline, "create {path}: {e}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

/// Runs `coordd reconfig` until it succeeds, or its outcome was unknown (exit 3:
/// connection lost) and `/zookeeper/config` on `check` then shows `want`. Returns the
/// configuration's member ids.
async fn reconfig_cli_until(args: Vec<String>, check: &str, want: &BTreeSet<u64>) -> BTreeSet<u64> {
    let deadline = Instant::now() + WAIT;
    loop {
        let (code, out, err) = reconfig_cli(args.clone()).await;
        match code {
            0 => return config_ids(&out),
            3 => {
                let now = config_on(check).await;
                if &now == want {
                    return now;
                }
                println!("reconfig outcome unknown ({err}); configuration now {now:?}; again");
            }
            _ => panic!("coordd reconfig {args:?} failed ({code}): {err}"),
        }
        assert!(
            Instant::now() < deadline,
            "reconfig {args:?} never went through"
        );
    }
}

fn peer_spec(e: &CoorddEnsemble, i: usize) -> String {
    format!("{}={}", i + 1, e.peers[i])
}

/// Waits until member `i` exited on its own; returns its log.
async fn wait_exit(m: &mut Coordd) -> std::process::ExitStatus {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(st) = m.try_wait() {
            return st;
        }
        assert!(
            Instant::now() < deadline,
            "removed member did not exit; log:\n{}",
            m.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grow_3_to_5_and_shrink_back_removing_the_leader_under_a_writer() {
    let mut e = CoorddEnsemble::start_with(3, EXTRA);
    e.wait_leader(&[0, 1, 2], FORM_TIMEOUT);
    let original = e.connect_string();
    let seed = client(&original, 10_000).await;
    create_retry(&seed, "/w", b"").await;
    create_retry(&seed, "/seed", b"").await;
    for i in 0..50 {
        create_retry(&seed, &format!("/seed/{i}"), b"s").await;
    }
    assert_eq!(config_on(&e.servers()[0]).await, BTreeSet::from([1, 2, 3]));

    let writer = Arc::new(client(&original, 10_000).await);
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let writing = tokio::spawn(write_until(writer.clone(), stop.clone(), count.clone()));

    // Grow: start 4 and 5 with --join (they serve nothing yet), then add them through a
    // follower (forwarded to the leader).
    let four = e.start_joining();
    let five = e.start_joining();
    let leader = e.wait_leader(&[0, 1, 2], WAIT);
    let via = e.servers()[(leader + 1) % 3].clone();
    let started = Instant::now();
    let five_ids = BTreeSet::from([1, 2, 3, 4, 5]);
    let ids = reconfig_cli_until(
        vec![
            "--server".into(),
            via.clone(),
            "--add".into(),
            format!("{},{}", peer_spec(&e, four), peer_spec(&e, five)),
        ],
        &via,
        &five_ids,
    )
    .await;
    assert_eq!(ids, five_ids);
    println!("grow 3 -> 5 took {:?}", started.elapsed());
    e.wait_leader(&[0, 1, 2, 3, 4], WAIT);
    // The new members serve reads of what was written before they existed, and the
    // new configuration.
    for i in [four, five] {
        let addr = e.servers()[i].clone();
        let c = client(&addr, 10_000).await;
        assert_eq!(children(&c, "/seed").await.len(), 50, "member {}", i + 1);
        let _ = c.close().await;
        assert_eq!(config_on(&addr).await, BTreeSet::from([1, 2, 3, 4, 5]));
    }

    // Shrink: remove the leader and one other member.
    let leader = e.wait_leader(&[0, 1, 2, 3, 4], WAIT);
    let other = if leader == four { five } else { four };
    let keep: Vec<usize> = (0..5).filter(|i| *i != leader && *i != other).collect();
    let kept: BTreeSet<u64> = keep.iter().map(|i| *i as u64 + 1).collect();
    let ids = reconfig_cli_until(
        vec![
            "--server".into(),
            e.servers()[keep[0]].clone(),
            "--remove".into(),
            format!("{},{}", leader + 1, other + 1),
        ],
        &e.servers()[keep[0]],
        &kept,
    )
    .await;
    assert_eq!(ids, kept);
    // Both removed members stop by themselves, cleanly, saying why.
    for i in [leader, other] {
        let st = wait_exit(&mut e.members[i]).await;
        assert!(st.success(), "member {} exited with {st}", i + 1);
        assert!(
            e.members[i].log().contains("removed from the ensemble"),
            "member {} log:\n{}",
            i + 1,
            e.members[i].log()
        );
    }
    // A removed member does not come back with its old data.
    let m = &e.members[other];
    let out = Command::new(coordd_bin())
        .arg("--client-addr")
        .arg(m.addr.to_string())
        .arg("--data-dir")
        .arg(m.data_dir())
        .args(&m.extra_args)
        .output()
        .expect("run coordd");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a removed member started again");
    assert!(stderr.contains("was removed from the ensemble"), "{stderr}");
    let new_leader = e.wait_leader(&keep, WAIT);
    assert!(keep.contains(&new_leader));
    for &i in &keep {
        let addr = e.servers()[i].clone();
        eventually("the kept members show the new configuration", || {
            let addr = addr.clone();
            let kept = kept.clone();
            async move { config_on(&addr).await == kept }
        })
        .await;
    }

    // The writer went on; nothing it was told about is missing.
    let now = count.load(Ordering::SeqCst);
    eventually("more writes acknowledged after the shrink", || {
        let more = count.load(Ordering::SeqCst) >= now + 10;
        async move { more }
    })
    .await;
    stop.store(true, Ordering::SeqCst);
    let (acked, gap) = writing.await.unwrap();
    println!(
        "writer: {} writes acknowledged, longest gap {gap:?}",
        acked.len()
    );
    assert!(acked.len() > 20, "the writer made no progress");
    assert!(
        gap < WRITE_GAP_MAX,
        "write gap {gap:?}\n{}",
        e.log_tails(40)
    );
    let survivors = keep
        .iter()
        .map(|i| e.servers()[*i].clone())
        .collect::<Vec<_>>()
        .join(",");
    let check = client(&survivors, 10_000).await;
    let present = children(&check, "/w").await;
    let missing: Vec<&u64> = acked.iter().filter(|n| !present.contains(n)).collect();
    assert!(missing.is_empty(), "acknowledged writes lost: {missing:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_restarted_after_a_grow_use_the_membership_in_their_log() {
    let mut e = CoorddEnsemble::start_with(3, EXTRA);
    e.wait_leader(&[0, 1, 2], FORM_TIMEOUT);
    let four = e.start_joining();
    let five = e.start_joining();
    let first = e.servers()[0].clone();
    let five_ids = BTreeSet::from([1, 2, 3, 4, 5]);
    let ids = reconfig_cli_until(
        vec![
            "--server".into(),
            e.connect_string(),
            "--add".into(),
            format!("{},{}", peer_spec(&e, four), peer_spec(&e, five)),
        ],
        &first,
        &five_ids,
    )
    .await;
    assert_eq!(ids, five_ids);
    let admin = client(&e.connect_string(), 20_000).await;
    create_retry(&admin, "/before", b"1").await;
    let _ = admin.close().await;

    // Member 1 restarts with its original command line (`--ensemble` of 1-3), member 4
    // with its join-time one (1-4): both must use the five members in their logs.
    e.members[0].kill9();
    e.members[four].kill9();
    e.members[0].restart();
    e.members[four].restart();
    e.wait_leader(&[0, 1, 2, 3, 4], WAIT);
    // Then 2 and 3 go: 1, 4 and 5 are a quorum only of the five.
    e.members[1].kill9();
    e.members[2].kill9();
    let rest = [0, four, five]
        .iter()
        .map(|i| e.servers()[*i].clone())
        .collect::<Vec<_>>()
        .join(",");
    e.wait_leader(&[0, four, five], WAIT);
    let c = client(&rest, 10_000).await;
    create_retry(&c, "/after", b"2").await;
    c.sync("/").await.unwrap();
    assert_eq!(c.get_data("/before", false).await.unwrap().0, b"1");
    assert_eq!(
        config_on(&e.servers()[0]).await,
        BTreeSet::from([1, 2, 3, 4, 5])
    );
}

/// The error code of a reconfig that must be refused (retried while the connection is
/// lost: a refused request changes nothing, so it may be sent again).
async fn refused(c: &Client, joining: &str, leaving: &str, members: &str, from: i64) -> ErrorCode {
    let deadline = Instant::now() + WAIT;
    loop {
        match c.reconfig(joining, leaving, members, from).await {
            Err(Error::Server(code)) => return code,
            Err(e) if Instant::now() < deadline => {
                println!("reconfig({joining:?}, {leaving:?}): {e}; again");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            other => {
                panic!("reconfig({joining:?}, {leaving:?}, {members:?}, {from}) gave {other:?}")
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_reconfig_requests_get_zookeeper_error_codes_and_change_nothing() {
    let e = CoorddEnsemble::start_with(3, EXTRA);
    let leader = e.wait_leader(&[0, 1, 2], FORM_TIMEOUT);
    // 6 s sessions: their clients give up on a connection silent for 4 s, less than the
    // 10 s a never-catching-up member takes: pings are answered during a reconfig.
    let c = client(&e.servers()[leader], 6_000).await;
    let f = client(&e.servers()[(leader + 1) % 3], 6_000).await;
    create_retry(&c, "/kept", b"k").await;
    let (data, stat) = c.get_data("/zookeeper/config", false).await.unwrap();
    let before = String::from_utf8_lossy(&data).into_owned();
    assert_eq!(config_ids(&before), BTreeSet::from([1, 2, 3]));
    assert_eq!(stat.data_length as usize, before.len());
    let version = before
        .lines()
        .find_map(|l| l.strip_prefix("version="))
        .map(|v| i64::from_str_radix(v, 16).unwrap())
        .expect("a version line");

    let p2 = e.peers[1].to_string();
    for (j, l, m, from, want) in [
        // An existing member, an unknown one, malformed specs, no member left.
        (format!("2={p2}"), "", "", -1, ErrorCode::BadArguments),
        (String::new(), "7", "", -1, ErrorCode::BadArguments),
        ("4=nohostport".into(), "", "", -1, ErrorCode::BadArguments),
        (
            "4=h:1:2:observer".into(),
            "",
            "",
            -1,
            ErrorCode::BadArguments,
        ),
        ("4=h:1,4=h:2".into(), "", "", -1, ErrorCode::BadArguments),
        (String::new(), "1,2,3", "", -1, ErrorCode::BadArguments),
        (String::new(), "x", "", -1, ErrorCode::BadArguments),
        (String::new(), "", "", -1, ErrorCode::BadArguments),
        // Both forms at once; a new-member list that moves a member.
        ("4=h:1".into(), "", "1=h:1", -1, ErrorCode::BadArguments),
        (
            String::new(),
            "",
            "1=elsewhere:1",
            -1,
            ErrorCode::BadArguments,
        ),
        // Based on another configuration version.
        (String::new(), "3", "", version + 1, ErrorCode::BadVersion),
    ] {
        for (who, client) in [("leader", &c), ("follower", &f)] {
            assert_eq!(
                refused(client, &j, l, m, from).await,
                want,
                "{who}: {j:?} {l:?} {m:?}"
            );
        }
    }

    // A new member that does not exist never catches up: NewConfigNoQuorum after the
    // catch-up deadline; meanwhile another change is ReconfigInProgress.
    let nobody = std::net::TcpListener::bind("127.0.0.9:0")
        .unwrap()
        .local_addr()
        .unwrap(); // closed at once: connections to it are refused
    let slow = {
        let c = c.clone();
        tokio::spawn(async move { refused(&c, &format!("4={nobody}"), "", "", -1).await })
    };
    let leader_log = || e.members[leader].log();
    eventually("the leader added the learner", || {
        let seen = leader_log().contains("learners added");
        async move { seen }
    })
    .await;
    assert_eq!(
        refused(&f, "5=h:1", "", "", -1).await,
        ErrorCode::ReconfigInProgress
    );
    let slow = slow.await.unwrap();
    assert_eq!(slow, ErrorCode::NewConfigNoQuorum, "{}", e.log_tails(60));

    // Nothing changed: same configuration (the learner was removed again), same data,
    // and a good change still goes through.
    let (data, _) = f.get_data("/zookeeper/config", false).await.unwrap();
    assert_eq!(
        config_ids(&String::from_utf8_lossy(&data)),
        BTreeSet::from([1, 2, 3])
    );
    f.sync("/").await.unwrap();
    assert_eq!(f.get_data("/kept", false).await.unwrap().0, b"k");
    let (data, _) = f.reconfig("", "3", "", -1).await.expect("remove 3");
    assert_eq!(
        config_ids(&String::from_utf8_lossy(&data)),
        BTreeSet::from([1, 2])
    );

    // Standalone coordd has no ensemble to change.
    let solo = Coordd::start();
    let s = client(&solo.connect_string(), 10_000).await;
    assert_eq!(
        refused(&s, "2=h:1", "", "", -1).await,
        ErrorCode::ReconfigDisabled
    );
    assert!(four_letter(solo.addr, "ruok").is_some());
}

/// Apache ZooKeeper's own zkCli: `reconfig -add` in ZooKeeper's server syntax, `config`,
/// `reconfig -remove`. Needs Debian's `zookeeper` package (skips with the reason without).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zkcli_reconfig_adds_and_removes_a_member() {
    if let Err(why) = support::zookeeper::ZooKeeper::available() {
        println!("skipped: {why}");
        return;
    }
    let mut e = CoorddEnsemble::start_with(3, EXTRA);
    e.wait_leader(&[0, 1, 2], FORM_TIMEOUT);
    let four = e.start_joining();
    let peer = e.peers[four];
    let add = format!(
        "reconfig -add server.4={}:{}:{}:participant;{}",
        peer.ip(),
        peer.port(),
        peer.port(),
        e.members[four].addr
    );
    let server = e.servers()[0].clone();
    let out = tokio::task::spawn_blocking(move || {
        support::zookeeper::zk_cli(&server, &[add.as_str(), "config"])
    })
    .await
    .unwrap()
    .expect("zkCli");
    assert!(
        out.raw
            .contains(&format!("server.4={peer}:{}:participant", peer.port())),
        "zkCli output:\n{}\n{}",
        out.raw,
        e.log_tails(20)
    );
    assert_eq!(
        config_on(&e.servers()[3]).await,
        BTreeSet::from([1, 2, 3, 4])
    );
    let server = e.servers()[1].clone();
    let out = tokio::task::spawn_blocking(move || {
        support::zookeeper::zk_cli(&server, &["reconfig -remove 4", "config"])
    })
    .await
    .unwrap()
    .expect("zkCli");
    assert!(!out.raw.contains("server.4="), "zkCli output:\n{}", out.raw);
    assert_eq!(config_on(&e.servers()[0]).await, BTreeSet::from([1, 2, 3]));
    assert!(wait_exit(&mut e.members[four]).await.success());
}

/// `coordd reconfig --help`, a usage error, and `coordd --help` naming the way in.
#[test]
fn cli_help_and_usage() {
    let run = |args: &[&str]| {
        let out = Command::new(coordd_bin())
            .args(args)
            .output()
            .expect("run coordd");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let (code, text) = run(&["reconfig", "--help"]);
    assert_eq!(code, Some(0), "{text}");
    for word in [
        "--server",
        "--add",
        "--remove",
        "--members",
        "--from-config",
        "--join",
    ] {
        assert!(text.contains(word), "reconfig --help lacks {word}:\n{text}");
    }
    let (code, text) = run(&["reconfig", "--add", "4=h:1"]);
    assert_eq!(code, Some(2), "{text}");
    assert!(text.contains("--server"), "{text}");
    let (code, text) = run(&["--help"]);
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains("--join") && text.contains("coordd reconfig"),
        "{text}"
    );
}

/// With a superuser configured only the superuser may change the membership (NoAuth
/// otherwise, nothing changed); `coordd reconfig --auth` passes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_superuser_reconfigs_when_one_is_configured() {
    let digest = coordd_proto::auth::digest_id("super:secret");
    let e = CoorddEnsemble::start_with(
        3,
        &[
            "--max-session-timeout-ms",
            "30000",
            "--superuser-digest",
            &digest,
        ],
    );
    e.wait_leader(&[0, 1, 2], FORM_TIMEOUT);
    let anyone = client(&e.connect_string(), 10_000).await;
    assert_eq!(refused(&anyone, "", "3", "", -1).await, ErrorCode::NoAuth);
    assert_eq!(config_on(&e.servers()[0]).await, BTreeSet::from([1, 2, 3]));
    let want = BTreeSet::from([1, 2]);
    let server = e.servers()[0].clone();
    let ids = reconfig_cli_until(
        vec![
            "--server".into(),
            server.clone(),
            "--remove".into(),
            "3".into(),
            "--auth".into(),
            "super:secret".into(),
        ],
        &server,
        &want,
    )
    .await;
    assert_eq!(ids, want);
}
