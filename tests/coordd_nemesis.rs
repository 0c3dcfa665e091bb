//! Linearizability of a coordd ensemble under faults (issue 5, acceptance item 1).
//!
//! Three real coordd processes on 127.0.0.1-3 whose peer traffic passes through
//! fault-injecting proxies (`support::nemesis::PeerMesh`; each member listens behind its
//! proxy with `--peer-listen-addr`). While a concurrent workload runs, a nemesis cycles
//! through kill -9 and restart of the leader or a follower, SIGSTOP/SIGCONT of the leader or
//! a follower for longer than the session timeout, and cutting the leader or a follower off
//! from the others (black hole or refused connections), healing after each fault and
//! waiting (with a deadline) for one leader with two followers before the next.
//!
//! The workload: register clients (some pinned to one member, some spread over all) do
//! sync+getData, blind setData, compare-and-set (setData with the version just read) on a
//! few registers (a fresh set every `EPOCH`, so no register's history grows without bound),
//! and creates of unique and of contended nodes; ephemeral owners (through client proxies
//! of their own) create an ephemeral, then close their session or vanish without closing
//! it. Every op goes into one `switchyard_lincheck::History` with invoke / complete times
//! from one clock: ok, definite failures (BadVersion, NoNode, NodeExists) and unknown
//! (connection loss, timeouts, anything in doubt). Every call is bounded by `OP_TIMEOUT`.
//!
//! After the run, with everything healed and a leader elected, it checks:
//! (a) the history, plus a final sync+read of every key on every member, is linearizable;
//! (b) every acknowledged create is present on every member after a sync;
//! (c) the ephemerals of every vanished client are gone: the leader has expired their
//!     sessions within the session timeout plus one tick of the ensemble being healthy, or
//!     of the start of a later leadership (a new Raft term, even when the same member wins
//!     it: a new leader gives every session a whole timeout), and every member agrees;
//! and prints, for every leader kill (and pause or cut-off of the leader), the longest
//! window without a successful write around it.
//!
//! CI runs `NEMESIS_SECS_DEFAULT` seconds of nemesis. A longer run (prints as it goes):
//!
//! ```sh
//! NEMESIS_SECS=300 cargo test --release --test coordd_nemesis -- --nocapture
//! ```
//!
//! `NEMESIS_SEED=<u64>` repeats the random choices of a run (printed at its start); timing
//! still differs. On a failure the members' logs, the history (JSON) and the nemesis log
//! are kept in the directory the failure message names (`NEMESIS_KEEP=1`: also on
//! success).

mod support;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use coordd_client::{Acl, Client, ClientConfig, CreateMode, Error, ErrorCode, SessionState};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use support::nemesis::{CutMode, NemesisEnsemble};
use support::proxy::Proxy;
use switchyard_lincheck::{
    check, elapsed_ns, FailReason, History, Limits, Op, OpId, Outcome, RegisterState, Ret,
};
use tokio::sync::watch;
use tokio::task::JoinSet;

/// Seconds of nemesis in CI (`NEMESIS_SECS` overrides).
const NEMESIS_SECS_DEFAULT: u64 = 25;
const MEMBERS: usize = 3;
/// The members' tick (`--tick-time-ms`): session timeouts 200 ms - 2 s.
const TICK_MS: u64 = 100;
/// Session timeout of every workload client (the members' maximum).
const SESSION_TIMEOUT_MS: u32 = 2_000;
/// How late the leader may hear of a vanished client's last packet through a follower
/// (the follower's next forward, a tick/10 later, then the touch's trip to the leader):
/// milliseconds on an idle machine, but the CI machine runs this beside other tests on 2
/// cores, and a member scheduled out for a while delivers late. A touch that revives a
/// session for a whole timeout again (the bugs this test catches) is seconds late.
const TOUCH_DELIVERY_ALLOWANCE_MS: u64 = 400;
/// The client's own deadline per request (then ConnectionLoss / Timeout).
const REQUEST_TIMEOUT_MS: u32 = 2_000;
/// Outer bound on every call the test makes (a read is sync + getData in one bound).
const OP_TIMEOUT: Duration = Duration::from_secs(5);
/// Bound on creating a session.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const FORM_TIMEOUT: Duration = Duration::from_secs(30);
/// After a fault is healed: one leader, the others following, within this.
const RECOVERY_TIMEOUT: Duration = Duration::from_secs(30);

/// Registers live for one epoch; then the workload moves to a fresh set, which bounds
/// the length of each register's history (and the checker's work) in long runs.
const EPOCH: Duration = Duration::from_secs(10);
const REGISTERS_PER_EPOCH: usize = 5;
/// Clients doing reads, writes, CAS and creates; the first `MEMBERS` are pinned to one
/// member each, the others may use any member.
const REGISTER_CLIENTS: usize = 6;
/// Clients that each own one ephemeral at a time and then close or vanish.
const EPHEMERAL_OWNERS: usize = 2;
/// Pacing: a register client pauses up to this long between ops.
const OP_PAUSE_MS_MAX: u64 = 5;
/// Pacing after a failed connect.
const RECONNECT_PAUSE: Duration = Duration::from_millis(100);
/// How long an ephemeral owner holds its node before closing or vanishing.
const EPHEMERAL_HOLD_MS: Range<u64> = 200..2_000;

/// How long a killed member stays down.
const KILL_DOWN_MS: Range<u64> = 300..2_000;
/// How long a member stays stopped: longer than the session timeout.
const PAUSE_MS: Range<u64> = 2_500..3_500;
/// How long a member stays cut off.
const PARTITION_MS: Range<u64> = 1_000..4_000;
/// Quiet time between the recovery from one fault and the next fault.
const QUIET_MS: Range<u64> = 300..1_500;
/// State changes shown for a session that expired.
const SESSION_CHANGES_SHOWN: usize = 8;
/// Poll interval of the end-of-run waits.
const POLL: Duration = Duration::from_millis(20);
/// Poll rounds of the expiry check shown when it fails.
const ROUNDS_SHOWN: usize = 12;

// ---- recording ----------------------------------------------------------------------

/// The history and its clock, shared by every task.
struct Recorder {
    start: Instant,
    history: Mutex<History>,
}

impl Recorder {
    fn now_ns(&self) -> u64 {
        elapsed_ns(self.start)
    }

    fn invoke(&self, client: u64, key: &str, op: Op) -> OpId {
        let mut h = self.history.lock().unwrap();
        // The time is taken before the request is sent (the caller sends after this).
        let t = self.now_ns();
        h.invoke(client, key, op, t)
    }

    fn complete(&self, id: OpId, outcome: Outcome) {
        let t = self.now_ns();
        self.history
            .lock()
            .unwrap()
            .complete(id, outcome, t)
            .expect("a well-formed history");
    }
}

/// What an error says about whether the op took effect.
fn failure(e: &Error) -> Outcome {
    match e {
        Error::Server(ErrorCode::BadVersion) => Outcome::Fail(FailReason::BadVersion),
        Error::Server(ErrorCode::NoNode) => Outcome::Fail(FailReason::NoNode),
        Error::Server(ErrorCode::NodeExists) => Outcome::Fail(FailReason::NodeExists),
        // Connection loss, timeouts, expiry, anything else: maybe applied.
        _ => Outcome::Unknown,
    }
}

fn secs(ns: u64) -> String {
    format!("{:.3} s", ns as f64 / 1e9)
}

fn register_key(epoch: usize, k: usize) -> String {
    format!("/r/{epoch}-{k}")
}

// ---- the workload -------------------------------------------------------------------

async fn connect(servers: &[String]) -> Result<Client, String> {
    let cfg = ClientConfig::new(servers.iter().cloned())
        .with_session_timeout_ms(SESSION_TIMEOUT_MS)
        .with_request_timeout_ms(REQUEST_TIMEOUT_MS);
    match tokio::time::timeout(CONNECT_TIMEOUT, Client::connect(cfg)).await {
        Ok(Ok((c, _events))) => Ok(c),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("connect timed out".into()),
    }
}

#[derive(Default)]
struct ClientReport {
    /// Talks to one member only.
    pinned: bool,
    /// Creates acknowledged (path).
    created: Vec<String>,
    sessions: usize,
    expired: usize,
    /// Per expired session: its id and its client's state changes (time, state).
    expiries: Vec<(i64, Vec<(u64, SessionState)>)>,
}

/// Records a client's session state changes until it ends (expired or closed).
fn follow_states(c: &Client, rec: &Arc<Recorder>) -> Arc<Mutex<Vec<(u64, SessionState)>>> {
    let changes = Arc::new(Mutex::new(vec![(rec.now_ns(), c.state())]));
    let mut states = c.state_watch();
    let (rec, out) = (rec.clone(), changes.clone());
    tokio::spawn(async move {
        while states.changed().await.is_ok() {
            let s = *states.borrow_and_update();
            out.lock().unwrap().push((rec.now_ns(), s));
            if s.is_terminal() {
                return;
            }
        }
    });
    changes
}

/// sync + getData of `key`, recorded as one read.
async fn read(rec: &Recorder, client_id: u64, c: &Client, key: &str) -> Option<(Vec<u8>, i32)> {
    let id = rec.invoke(client_id, key, Op::Read);
    let res = tokio::time::timeout(OP_TIMEOUT, async {
        c.sync(key).await?;
        c.get_data(key, false).await
    })
    .await;
    match res {
        Ok(Ok((data, stat))) => {
            rec.complete(
                id,
                Outcome::Ok(Ret::Read {
                    data: data.clone(),
                    version: stat.version,
                }),
            );
            Some((data, stat.version))
        }
        Ok(Err(e)) => {
            rec.complete(id, failure(&e));
            None
        }
        Err(_) => {
            rec.complete(id, Outcome::Unknown);
            None
        }
    }
}

/// setData, recorded as a blind write (`expected` None) or a CAS.
async fn set(
    rec: &Recorder,
    client_id: u64,
    c: &Client,
    key: &str,
    value: Vec<u8>,
    expected: Option<i32>,
) {
    let op = match expected {
        None => Op::Write {
            value: value.clone(),
        },
        Some(v) => Op::Cas {
            expected_version: v,
            value: value.clone(),
        },
    };
    let id = rec.invoke(client_id, key, op);
    let outcome = match tokio::time::timeout(OP_TIMEOUT, c.set_data(key, &value, expected)).await {
        Ok(Ok(stat)) => Outcome::Ok(Ret::Written {
            version: stat.version,
        }),
        Ok(Err(e)) => failure(&e),
        Err(_) => Outcome::Unknown,
    };
    rec.complete(id, outcome);
}

/// A persistent create, recorded; true if acknowledged.
async fn create(rec: &Recorder, client_id: u64, c: &Client, path: &str, value: Vec<u8>) -> bool {
    let id = rec.invoke(
        client_id,
        path,
        Op::Create {
            value: value.clone(),
        },
    );
    let res = tokio::time::timeout(
        OP_TIMEOUT,
        c.create(path, &value, &Acl::open_unsafe(), CreateMode::Persistent),
    )
    .await;
    let outcome = match res {
        Ok(Ok(_)) => Outcome::Ok(Ret::Created),
        Ok(Err(e)) => failure(&e),
        Err(_) => Outcome::Unknown,
    };
    let ok = matches!(outcome, Outcome::Ok(_));
    rec.complete(id, outcome);
    ok
}

/// Shared by the register clients: the epochs prepared and the contended-create counter.
struct Plan {
    epochs: usize,
    contended: std::sync::atomic::AtomicU64,
}

impl Plan {
    fn epoch(&self, rec: &Recorder) -> usize {
        let e = (rec.start.elapsed().as_nanos() / EPOCH.as_nanos()) as usize;
        e.min(self.epochs - 1)
    }
}

async fn register_client(
    client_id: u64,
    servers: Vec<String>,
    rec: Arc<Recorder>,
    plan: Arc<Plan>,
    mut stop: watch::Receiver<bool>,
    seed: u64,
) -> ClientReport {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut report = ClientReport {
        pinned: servers.len() == 1,
        ..Default::default()
    };
    let mut client: Option<Client> = None;
    let mut states: Arc<Mutex<Vec<(u64, SessionState)>>> = Arc::default();
    let mut seq = 0u64;
    while !*stop.borrow() {
        let c = match &client {
            Some(c) if c.state() != SessionState::Expired => c.clone(),
            Some(c) => {
                report.expired += 1;
                let changes = states.lock().unwrap().clone();
                report.expiries.push((c.session_id(), changes));
                client = None;
                continue;
            }
            None => match connect(&servers).await {
                Ok(c) => {
                    report.sessions += 1;
                    states = follow_states(&c, &rec);
                    client = Some(c.clone());
                    c
                }
                Err(_) => {
                    tokio::select! {
                        _ = tokio::time::sleep(RECONNECT_PAUSE) => {}
                        _ = stop.changed() => {}
                    }
                    continue;
                }
            },
        };
        seq += 1;
        let value = format!("c{client_id}.{seq}").into_bytes();
        let key = register_key(plan.epoch(&rec), rng.gen_range(0..REGISTERS_PER_EPOCH));
        match rng.gen_range(0..100) {
            0..=34 => {
                read(&rec, client_id, &c, &key).await;
            }
            35..=54 => set(&rec, client_id, &c, &key, value, None).await,
            55..=84 => {
                if let Some((_, version)) = read(&rec, client_id, &c, &key).await {
                    set(&rec, client_id, &c, &key, value, Some(version)).await;
                }
            }
            85..=92 => {
                let path = format!("/u/{client_id}-{seq}");
                if create(&rec, client_id, &c, &path, value).await {
                    report.created.push(path);
                }
            }
            _ => {
                // Two creates per path, most likely from different clients: one wins.
                let n = plan
                    .contended
                    .fetch_add(1, std::sync::atomic::Ordering::SeqCst)
                    / 2;
                let path = format!("/c/{n}");
                if create(&rec, client_id, &c, &path, value).await {
                    report.created.push(path);
                }
            }
        }
        let pause = Duration::from_millis(rng.gen_range(0..=OP_PAUSE_MS_MAX));
        tokio::time::sleep(pause).await;
    }
    if let Some(c) = client {
        let _ = tokio::time::timeout(OP_TIMEOUT, c.close()).await;
    }
    report
}

#[derive(Default, Debug)]
struct EphemeralReport {
    sessions: usize,
    created: usize,
    create_unknown: usize,
    closed: usize,
    vanished: usize,
    /// Sessions that expired while their client still held them.
    expired: usize,
    /// Each ephemeral's name under /e and the id of the session that created it, so
    /// that a failure names the sessions to look for in the members' logs.
    owners: Vec<(String, i64)>,
}

/// Creates a session through proxies of its own (one per member), an ephemeral, holds it,
/// then closes the session or vanishes: its proxies refuse and cut every connection and
/// the client is dropped while disconnected, so no closeSession is ever sent. At `stop`
/// the current client always vanishes.
async fn ephemeral_owner(
    owner: usize,
    members: Vec<SocketAddr>,
    mut stop: watch::Receiver<bool>,
    seed: u64,
) -> EphemeralReport {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut report = EphemeralReport::default();
    let mut n = 0u64;
    while !*stop.borrow() {
        let mut proxies = Vec::new();
        for a in &members {
            proxies.push(Proxy::start(*a).await);
        }
        let servers: Vec<String> = proxies.iter().map(|p| p.connect_string()).collect();
        let c = match connect(&servers).await {
            Ok(c) => c,
            Err(_) => {
                tokio::select! {
                    _ = tokio::time::sleep(RECONNECT_PAUSE) => {}
                    _ = stop.changed() => {}
                }
                continue;
            }
        };
        report.sessions += 1;
        n += 1;
        let path = format!("/e/{owner}-{n}");
        report.owners.push((format!("{owner}-{n}"), c.session_id()));
        let res = tokio::time::timeout(
            OP_TIMEOUT,
            c.create(&path, b"", &Acl::open_unsafe(), CreateMode::Ephemeral),
        )
        .await;
        match res {
            Ok(Ok(_)) => report.created += 1,
            _ => report.create_unknown += 1,
        }
        let hold = Duration::from_millis(rng.gen_range(EPHEMERAL_HOLD_MS));
        tokio::select! {
            _ = tokio::time::sleep(hold) => {}
            _ = stop.changed() => {}
        }
        if c.state() == SessionState::Expired {
            report.expired += 1;
        }
        if !*stop.borrow() && rng.gen_bool(0.5) {
            let _ = tokio::time::timeout(OP_TIMEOUT, c.close()).await;
            report.closed += 1;
        } else {
            for p in &proxies {
                p.refuse(true);
                p.cut();
            }
            // Disconnected now: dropping the last handle ends the session task without
            // a closeSession, and the proxies' ports close with them.
            let mut state = c.state_watch();
            let _ = tokio::time::timeout(
                OP_TIMEOUT,
                state.wait_for(|s| *s != SessionState::Connected),
            )
            .await;
            drop(c);
            report.vanished += 1;
        }
        drop(proxies);
    }
    report
}

// ---- the nemesis --------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    Kill,
    Pause,
    Partition(CutMode),
}

#[derive(Clone, Debug)]
struct Event {
    at_ns: u64,
    fault: Fault,
    was_leader: bool,
    what: String,
    /// When the ensemble was healthy again after the heal.
    recovered_ns: Option<u64>,
}

struct NemesisLog {
    start: Instant,
    events: Vec<Event>,
    lines: Vec<String>,
}

impl NemesisLog {
    fn note(&mut self, line: String) {
        let line = format!("[{:>9}] {line}", secs(elapsed_ns(self.start)));
        println!("nemesis {line}");
        self.lines.push(line);
    }

    fn fault(&mut self, fault: Fault, was_leader: bool, what: String) {
        self.events.push(Event {
            at_ns: elapsed_ns(self.start),
            fault,
            was_leader,
            what: what.clone(),
            recovered_ns: None,
        });
        self.note(what);
    }
}

/// Runs faults for `duration`, one at a time, each healed and followed by a wait for a
/// healthy ensemble. Blocking (runs on its own thread).
fn run_nemesis(
    e: &mut NemesisEnsemble,
    log: &mut NemesisLog,
    duration: Duration,
    rng: &mut StdRng,
) {
    let kinds = [
        (Fault::Kill, true),
        (Fault::Kill, false),
        (Fault::Pause, true),
        (Fault::Pause, false),
        (Fault::Partition(CutMode::BlackHole), true),
        (Fault::Partition(CutMode::Refuse), false),
        (Fault::Partition(CutMode::Refuse), true),
        (Fault::Partition(CutMode::BlackHole), false),
    ];
    let mut queue: Vec<(Fault, bool)> = Vec::new();
    let mut first_round = true;
    let ms = |rng: &mut StdRng, r: Range<u64>| Duration::from_millis(rng.gen_range(r));
    while log.start.elapsed() < duration {
        std::thread::sleep(ms(rng, QUIET_MS));
        if queue.is_empty() {
            // Every kind once per round, in a random order; the first round starts by
            // killing the leader, so that even a short run measures a failover.
            queue = kinds.to_vec();
            queue.shuffle(rng);
            if first_round {
                let at = queue
                    .iter()
                    .position(|k| *k == (Fault::Kill, true))
                    .expect("listed");
                let last = queue.len() - 1;
                queue.swap(at, last);
                first_round = false;
            }
        }
        let (fault, on_leader) = queue.pop().expect("refilled");
        let leader = e.wait_leader(RECOVERY_TIMEOUT);
        let target = if on_leader {
            leader
        } else {
            *(0..e.len())
                .filter(|i| *i != leader)
                .collect::<Vec<_>>()
                .choose(rng)
                .expect("followers")
        };
        let role = if on_leader { "leader" } else { "follower" };
        let id = target + 1;
        match fault {
            Fault::Kill => {
                let down = ms(rng, KILL_DOWN_MS);
                log.fault(
                    fault,
                    on_leader,
                    format!("kill -9 member {id} ({role}), down {down:?}"),
                );
                e.kill9(target);
                std::thread::sleep(down);
                e.restart(target);
                log.note(format!("member {id} restarted (answers ruok)"));
            }
            Fault::Pause => {
                let paused = ms(rng, PAUSE_MS);
                log.fault(
                    fault,
                    on_leader,
                    format!("SIGSTOP member {id} ({role}) for {paused:?}"),
                );
                e.pause(target);
                std::thread::sleep(paused);
                e.resume(target);
                log.note(format!("SIGCONT member {id}"));
            }
            Fault::Partition(mode) => {
                let cut = ms(rng, PARTITION_MS);
                log.fault(
                    fault,
                    on_leader,
                    format!("cut member {id} ({role}) off from the others ({mode:?}) for {cut:?}"),
                );
                e.mesh.isolate(target, mode);
                std::thread::sleep(cut);
                e.mesh.heal();
                log.note(format!("healed the partition of member {id}"));
            }
        }
        let healed = Instant::now();
        let leader = e.wait_leader(RECOVERY_TIMEOUT);
        if let Some(ev) = log.events.last_mut() {
            ev.recovered_ns = Some(elapsed_ns(log.start));
        }
        log.note(format!(
            "healthy again after {:?}: leader member {}",
            healed.elapsed(),
            leader + 1
        ));
    }
}

// ---- checks -------------------------------------------------------------------------

/// The longest window without a successful write around each fault of the leader: the
/// longest gap between consecutive acknowledged writes (setData, CAS, create) from the
/// last one before the fault to the first one after the ensemble was healthy again.
fn write_gaps(history: &History, events: &[Event]) -> Vec<String> {
    let mut acks: Vec<u64> = history
        .ops()
        .iter()
        .filter(|r| {
            matches!(
                (&r.op, &r.outcome),
                (
                    Op::Write { .. } | Op::Cas { .. },
                    Outcome::Ok(Ret::Written { .. })
                ) | (Op::Create { .. }, Outcome::Ok(Ret::Created))
            )
        })
        .filter_map(|r| r.complete_ns)
        .collect();
    acks.sort_unstable();
    let ms = |ns: u64| format!("{:.0} ms", ns as f64 / 1e6);
    let mut out = Vec::new();
    for ev in events.iter().filter(|e| e.was_leader) {
        let first = acks.partition_point(|t| *t < ev.at_ns);
        let recovered = ev.recovered_ns.unwrap_or(ev.at_ns);
        let last = acks.partition_point(|t| *t <= recovered);
        // From the last ack before the fault (or the fault itself) through the first
        // ack after the recovery (or the last ack there is).
        let mut times = vec![first.checked_sub(1).map_or(ev.at_ns, |i| acks[i])];
        times.extend(&acks[first..(last + 1).min(acks.len())]);
        let widest = times
            .windows(2)
            .map(|w| (w[1] - w[0], w[1]))
            .max_by_key(|(gap, _)| *gap);
        let line = match widest {
            Some((gap, ended)) => format!(
                "{}: longest window without a successful write {} (ended {} after the fault; healthy {} after it)",
                ev.what,
                ms(gap),
                ms(ended.saturating_sub(ev.at_ns)),
                ms(recovered - ev.at_ns),
            ),
            None => format!("{}: no successful write after it", ev.what),
        };
        out.push(line);
    }
    out
}

/// Counts of ops by kind and outcome.
fn summary(history: &History) -> String {
    let mut counts: BTreeMap<(&str, &str), usize> = BTreeMap::new();
    for r in history.ops() {
        let kind = match r.op {
            Op::Read => "read",
            Op::Write { .. } => "write",
            Op::Cas { .. } => "cas",
            Op::Create { .. } => "create",
        };
        let outcome = match (&r.outcome, r.complete_ns) {
            (Outcome::Ok(_), Some(_)) => "ok",
            (Outcome::Fail(FailReason::BadVersion), Some(_)) => "BadVersion",
            (Outcome::Fail(FailReason::NoNode), Some(_)) => "NoNode",
            (Outcome::Fail(FailReason::NodeExists), Some(_)) => "NodeExists",
            (Outcome::Fail(FailReason::Other), Some(_)) => "other failure",
            _ => "unknown",
        };
        *counts.entry((kind, outcome)).or_default() += 1;
    }
    let mut out = format!("{} ops:", history.len());
    for ((kind, outcome), n) in counts {
        let _ = write!(out, " {kind} {outcome} {n};");
    }
    out
}

/// A directory outside the test's temporary ones, for what a failure leaves behind.
fn keep_dir() -> PathBuf {
    std::env::temp_dir().join(format!("coordd-nemesis-{}", std::process::id()))
}

/// Saves the members' logs, the nemesis log and the history; returns the directory.
fn keep_evidence(e: &NemesisEnsemble, log: &NemesisLog, history: &History) -> PathBuf {
    let dir = keep_dir();
    let _ = e.save_logs(&dir);
    let _ = std::fs::write(dir.join("nemesis.log"), log.lines.join("\n") + "\n");
    if let Ok(json) = serde_json::to_string(history) {
        let _ = std::fs::write(dir.join("history.json"), json);
    }
    dir
}

/// One client per member, talking to that member only.
async fn member_clients(e: &NemesisEnsemble) -> Vec<Client> {
    let mut out = Vec::new();
    for i in 0..e.len() {
        let c = connect(&[e.client_addr(i).to_string()])
            .await
            .unwrap_or_else(|err| panic!("connect to member {}: {err}", i + 1));
        out.push(c);
    }
    out
}

/// The children of `path` (as full paths) after a sync.
async fn children(c: &Client, path: &str) -> Result<BTreeSet<String>, String> {
    let res = tokio::time::timeout(OP_TIMEOUT, async {
        c.sync(path).await?;
        c.get_children(path, false).await
    })
    .await;
    match res {
        Ok(Ok(names)) => Ok(names.into_iter().map(|s| format!("{path}/{s}")).collect()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("timed out".into()),
    }
}

/// [`children`], retried until it answers, at most `RECOVERY_TIMEOUT`.
async fn children_eventually(c: &Client, path: &str) -> BTreeSet<String> {
    let deadline = Instant::now() + RECOVERY_TIMEOUT;
    loop {
        match children(c, path).await {
            Ok(set) => return set,
            Err(e) if Instant::now() > deadline => panic!("children of {path}: {e}"),
            Err(_) => tokio::time::sleep(POLL).await,
        }
    }
}

// ---- the test -----------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn linearizable_under_kills_pauses_and_partitions() {
    let nemesis_secs: u64 = std::env::var("NEMESIS_SECS")
        .ok()
        .map(|s| s.parse().expect("NEMESIS_SECS is a number of seconds"))
        .unwrap_or(NEMESIS_SECS_DEFAULT);
    let seed: u64 = std::env::var("NEMESIS_SEED")
        .ok()
        .map(|s| s.parse().expect("NEMESIS_SEED is a u64"))
        .unwrap_or_else(rand::random);
    println!(
        "nemesis: {nemesis_secs} s, seed {seed}, started at {:?} (unix time; member logs use UTC)",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
    );
    let mut rng = StdRng::seed_from_u64(seed);

    let tick = TICK_MS.to_string();
    let e = NemesisEnsemble::start(MEMBERS, &["--tick-time-ms", &tick]).await;
    let e = tokio::task::spawn_blocking(move || {
        e.wait_leader(FORM_TIMEOUT);
        e
    })
    .await
    .expect("the ensemble formed");

    // Registers for every epoch, and the parents of the created nodes.
    let epochs = (nemesis_secs as u128 * 1000 / EPOCH.as_millis()) as usize + 2;
    let mut history = History::new();
    {
        let all: Vec<String> = (0..MEMBERS).map(|i| e.client_addr(i).to_string()).collect();
        let setup = connect(&all).await.expect("setup client");
        let acl = Acl::open_unsafe();
        for p in ["/r", "/u", "/c", "/e"] {
            setup
                .create(p, b"", &acl, CreateMode::Persistent)
                .await
                .unwrap_or_else(|err| panic!("create {p}: {err}"));
        }
        for epoch in 0..epochs {
            for k in 0..REGISTERS_PER_EPOCH {
                let key = register_key(epoch, k);
                setup
                    .create(&key, b"init", &acl, CreateMode::Persistent)
                    .await
                    .unwrap_or_else(|err| panic!("create {key}: {err}"));
                history.set_initial(
                    key,
                    RegisterState::Present {
                        data: b"init".to_vec(),
                        version: 0,
                    },
                );
            }
        }
        setup.close().await.expect("setup client closed");
    }
    let rec = Arc::new(Recorder {
        start: Instant::now(),
        history: Mutex::new(history),
    });
    let plan = Arc::new(Plan {
        epochs,
        contended: Default::default(),
    });

    let (stop_tx, stop_rx) = watch::channel(false);
    let member_addrs: Vec<SocketAddr> = (0..MEMBERS).map(|i| e.client_addr(i)).collect();
    let mut registers = JoinSet::new();
    for id in 0..REGISTER_CLIENTS {
        let servers: Vec<String> = if id < MEMBERS {
            vec![member_addrs[id].to_string()]
        } else {
            member_addrs.iter().map(|a| a.to_string()).collect()
        };
        registers.spawn(register_client(
            id as u64,
            servers,
            rec.clone(),
            plan.clone(),
            stop_rx.clone(),
            rng.gen(),
        ));
    }
    let mut owners = JoinSet::new();
    for owner in 0..EPHEMERAL_OWNERS {
        owners.spawn(ephemeral_owner(
            owner,
            member_addrs.clone(),
            stop_rx.clone(),
            rng.gen(),
        ));
    }

    let mut log = NemesisLog {
        start: rec.start,
        events: Vec::new(),
        lines: Vec::new(),
    };
    let nemesis_rng = StdRng::seed_from_u64(rng.gen());
    let nemesis_rec = rec.clone();
    let nemesis = tokio::task::spawn_blocking(move || {
        let mut e = e;
        let mut rng = nemesis_rng;
        let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            run_nemesis(
                &mut e,
                &mut log,
                Duration::from_secs(nemesis_secs),
                &mut rng,
            )
        }));
        if let Err(panic) = run {
            let history = nemesis_rec.history.lock().unwrap().clone();
            let dir = keep_evidence(&e, &log, &history);
            eprintln!("the nemesis failed; evidence in {}", dir.display());
            std::panic::resume_unwind(panic);
        }
        (e, log)
    });
    let (e, mut log) = nemesis.await.expect("the nemesis ran to its end");

    // Stop the workload; the ephemeral owners vanish with their current sessions.
    stop_tx.send_replace(true);
    let mut created: BTreeSet<String> = BTreeSet::new();
    // (sessions, expired) of clients pinned to one member, and of the others.
    let mut pinned = (0, 0);
    let mut spread = (0, 0);
    let mut spread_expiries = Vec::new();
    while let Some(r) = registers.join_next().await {
        let r = r.expect("register client");
        created.extend(r.created);
        let counts = if r.pinned { &mut pinned } else { &mut spread };
        counts.0 += r.sessions;
        counts.1 += r.expired;
        if !r.pinned {
            spread_expiries.extend(r.expiries);
        }
    }
    let mut eph = EphemeralReport::default();
    while let Some(r) = owners.join_next().await {
        let r = r.expect("ephemeral owner");
        eph.sessions += r.sessions;
        eph.created += r.created;
        eph.create_unknown += r.create_unknown;
        eph.closed += r.closed;
        eph.vanished += r.vanished;
        eph.expired += r.expired;
        eph.owners.extend(r.owners);
    }
    let session_of: HashMap<String, i64> = eph.owners.iter().cloned().collect();
    // Names of leftover ephemerals with their sessions, for the failure messages.
    let with_sessions = |names: &BTreeSet<String>| -> Vec<String> {
        names
            .iter()
            .map(|n| match session_of.get(n) {
                Some(id) => format!("{n} (session 0x{id:x})"),
                None => n.clone(),
            })
            .collect()
    };
    // The same for every name some member still shows.
    let leftovers = |seen: &[Result<BTreeSet<String>, String>]| -> Vec<String> {
        let all: BTreeSet<String> = seen.iter().flatten().flatten().cloned().collect();
        with_sessions(&all)
    };
    log.note("workload stopped".into());

    // Healthy: one leader, the others following.
    let e = tokio::task::spawn_blocking(move || {
        e.wait_leader(RECOVERY_TIMEOUT);
        e
    })
    .await
    .expect("a leader after the run");
    let healthy_at = Instant::now();
    log.note("ensemble healthy".into());
    let checkers = member_clients(&e).await;

    // (c) The ephemerals of vanished (and closed) sessions are gone from every member,
    // within the documented rule (DESIGN.md 6, ARCHITECTURE.md `server/replicated.rs`):
    // only the leader expires sessions, a session timeout after the last packet it heard
    // of from the session (its own clients' packets, the touches the others forward every
    // tick/10), checked every tick/10; and every new leadership, another member or the
    // same member elected again in a later term (a follower cut off campaigns, and once
    // healed its higher term deposes the leader, which often wins again), gives every
    // session a whole timeout from when it takes office. Every vanished client's last
    // packet is older than `healthy_at` (the workload had stopped), so the leadership
    // that holds from then on has expired them all by `healthy_at + expiry_bound` (the
    // timeout, a tick for the forward and the check, `TOUCH_DELIVERY_ALLOWANCE_MS`); a
    // later leadership restarts the clock from when the test sees it (at most one poll
    // round after it began: in the server's favour, never against it).
    // What a poll proves: a sync + read on the leader that still shows a node proves the
    // leader had not yet expired its session when the sync reached it (a close proposed
    // before the sync is applied before the sync's barrier), so a round is judged by the
    // instant it started; the close's commit and the poll's own round trip are not part
    // of the bound. The followers apply the same log: a round started after the leader
    // showed none must show none on every member.
    let expiry_bound = Duration::from_millis(
        u64::from(SESSION_TIMEOUT_MS) + TICK_MS + TOUCH_DELIVERY_ALLOWANCE_MS,
    );
    let leadership_now = |e: &NemesisEnsemble| tokio::task::block_in_place(|| e.leadership());
    let mut clock = healthy_at;
    let mut leadership = leadership_now(&e);
    if let Some((leader, term)) = leadership {
        log.note(format!("leader member {} in term {term}", leader + 1));
    }
    let mut leaderships_seen = usize::from(leadership.is_some());
    // When a round that showed the leader without any of them ended.
    let mut leader_clean: Option<Instant> = None;
    let overall = healthy_at + expiry_bound + RECOVERY_TIMEOUT;
    // The last rounds, for a failure message.
    let mut rounds: Vec<String> = Vec::new();
    let gone_after = loop {
        let started = Instant::now();
        // All members at once.
        let mut polls = JoinSet::new();
        for (i, c) in checkers.iter().enumerate() {
            let c = c.clone();
            polls.spawn(async move { (i, children(&c, "/e").await) });
        }
        let mut seen: Vec<Result<BTreeSet<String>, String>> =
            vec![Err("not polled".into()); checkers.len()];
        while let Some(r) = polls.join_next().await {
            let (i, res) = r.expect("poll task");
            seen[i] = res;
        }
        let now_leadership = leadership_now(&e);
        rounds.push(format!(
            "round started {:?} after healthy, took {:?}: {}; leadership {:?}",
            started - healthy_at,
            started.elapsed(),
            seen.iter()
                .enumerate()
                .map(|(i, s)| match s {
                    Ok(l) => format!("member {} {l:?}", i + 1),
                    Err(err) => format!("member {} error {err}", i + 1),
                })
                .collect::<Vec<_>>()
                .join(", "),
            now_leadership.map(|(l, t)| (l + 1, t)),
        ));
        if rounds.len() > ROUNDS_SHOWN {
            rounds.remove(0);
        }
        if now_leadership.is_none() {
            // No leader seen (an election, or a member that did not answer): no verdict.
        } else if now_leadership != leadership {
            // A new leadership (term): the clock restarts.
            if let Some((leader, term)) = now_leadership {
                log.note(format!(
                    "new leadership while sessions expire: member {} in term {term}",
                    leader + 1
                ));
            }
            clock = Instant::now();
            leaderships_seen += 1;
            leader_clean = None;
            leadership = now_leadership;
        } else if let Some((leader, _)) = leadership {
            // The same leadership before and after the round: it held throughout (a
            // member that loses office can only lead again in a later term).
            let since = started.saturating_duration_since(clock);
            match &seen[leader] {
                Ok(left) if left.is_empty() => {
                    if seen.iter().all(|s| matches!(s, Ok(l) if l.is_empty())) {
                        break clock.elapsed();
                    }
                    let lagging = seen.iter().any(|s| matches!(s, Ok(l) if !l.is_empty()));
                    match leader_clean {
                        None => leader_clean = Some(Instant::now()),
                        Some(at) if started > at && lagging => {
                            let dir = keep_evidence(&e, &log, &rec.history.lock().unwrap());
                            panic!(
                                "the leader (member {}) showed no ephemeral of a vanished \
                                 client, yet a later sync + read shows some: {seen:?} \
                                 ({:?}); evidence in {}; the last poll rounds:\n{}",
                                leader + 1,
                                leftovers(&seen),
                                dir.display(),
                                rounds.join("\n")
                            );
                        }
                        Some(_) => {}
                    }
                }
                Ok(left) if since > expiry_bound => {
                    let dir = keep_evidence(&e, &log, &rec.history.lock().unwrap());
                    panic!(
                        "the leader (member {}) still had ephemerals of vanished clients \
                         {since:?} after the ensemble was healthy or its leadership began \
                         (bound {expiry_bound:?}): {:?}; evidence in {}; the last poll \
                         rounds:\n{}",
                        leader + 1,
                        with_sessions(left),
                        dir.display(),
                        rounds.join("\n")
                    );
                }
                _ => {}
            }
        }
        if Instant::now() > overall {
            let dir = keep_evidence(&e, &log, &rec.history.lock().unwrap());
            panic!(
                "ephemerals of vanished clients not gone from every member {:?} after the \
                 ensemble was healthy (leadership now {leadership:?}): {seen:?} ({:?}); \
                 evidence in {}; the last poll rounds:\n{}",
                healthy_at.elapsed(),
                leftovers(&seen),
                dir.display(),
                rounds.join("\n")
            );
        }
        tokio::time::sleep(POLL).await;
    };

    // (b) Every acknowledged create is on every member.
    for (i, c) in checkers.iter().enumerate() {
        let mut present = children_eventually(c, "/u").await;
        present.extend(children_eventually(c, "/c").await);
        let lost: Vec<&String> = created.difference(&present).collect();
        if !lost.is_empty() {
            let dir = keep_evidence(&e, &log, &rec.history.lock().unwrap());
            panic!(
                "member {} lacks {} acknowledged create(s): {lost:?}; evidence in {}",
                i + 1,
                lost.len(),
                dir.display()
            );
        }
    }

    // (a) A last sync + read of every key on every member joins the history, then the
    // whole history must be linearizable.
    let keys: BTreeSet<String> = rec
        .history
        .lock()
        .unwrap()
        .ops()
        .iter()
        .map(|r| r.key.clone())
        .collect();
    for (i, c) in checkers.iter().enumerate() {
        let client_id = 1000 + i as u64;
        let ids: Vec<(String, OpId)> = keys
            .iter()
            .map(|k| (k.clone(), rec.invoke(client_id, k, Op::Read)))
            .collect();
        tokio::time::timeout(OP_TIMEOUT, c.sync("/"))
            .await
            .expect("final sync in time")
            .expect("final sync");
        let mut reads = JoinSet::new();
        for (key, id) in ids {
            let c = c.clone();
            let rec = rec.clone();
            reads.spawn(async move {
                let outcome = match tokio::time::timeout(OP_TIMEOUT, c.get_data(&key, false)).await
                {
                    Ok(Ok((data, stat))) => Outcome::Ok(Ret::Read {
                        data,
                        version: stat.version,
                    }),
                    Ok(Err(e)) => failure(&e),
                    Err(_) => Outcome::Unknown,
                };
                rec.complete(id, outcome);
            });
        }
        while let Some(r) = reads.join_next().await {
            r.expect("final read");
        }
    }
    for c in checkers {
        let _ = c.close().await;
    }

    let history = rec.history.lock().unwrap().clone();
    let checked = {
        let h = history.clone();
        tokio::task::spawn_blocking(move || {
            let t = Instant::now();
            (check(&h, &Limits::default()), t.elapsed())
        })
        .await
        .expect("checker ran")
    };
    let (result, check_time) = checked;
    let result = result.expect("a well-formed history");

    println!("nemesis summary ({nemesis_secs} s, seed {seed}):");
    for line in &log.lines {
        println!("  {line}");
    }
    println!("  {}", summary(&history));
    println!(
        "  register clients pinned to one member: {} sessions, {} expired; spread over all: \
         {} sessions, {} expired; ephemeral owners: {eph:?}",
        pinned.0, pinned.1, spread.0, spread.1
    );
    for (id, changes) in &spread_expiries {
        let changes: Vec<String> = changes
            .iter()
            .rev()
            .take(SESSION_CHANGES_SHOWN)
            .rev()
            .map(|(t, s)| format!("{} {s:?}", secs(*t)))
            .collect();
        println!(
            "  session {id:#x} of a spread client expired; its last state changes: {}",
            changes.join(", ")
        );
    }
    println!(
        "  {} acknowledged creates present on every member; vanished sessions' ephemerals \
         gone from every member {gone_after:?} after the ensemble was healthy or the last \
         leadership began ({leaderships_seen} leadership(s) seen; bound {expiry_bound:?} on \
         the leader's expiry, judged at the start of a poll round)",
        created.len()
    );
    println!(
        "  peer connections through the mesh: {} identified, {} unidentified",
        e.mesh.identified(),
        e.mesh.unidentified()
    );
    for line in write_gaps(&history, &log.events) {
        println!("  {line}");
    }
    println!("  checker: {result} in {check_time:?}");

    if std::env::var_os("NEMESIS_KEEP").is_some() {
        let dir = keep_evidence(&e, &log, &history);
        println!("  evidence kept in {}", dir.display());
    }
    if !result.is_linearizable() {
        let dir = keep_evidence(&e, &log, &history);
        panic!(
            "the history is not linearizable:\n{result}\nevidence (member logs, history.json, \
             nemesis.log) in {}",
            dir.display()
        );
    }
    assert_eq!(
        e.mesh.unidentified(),
        0,
        "peer connections the mesh could not attribute to a member"
    );
    assert!(
        e.mesh.identified() > 0,
        "no peer connection went through the mesh"
    );
    assert!(
        log.events
            .iter()
            .any(|ev| ev.fault == Fault::Kill && ev.was_leader),
        "the run never killed a leader"
    );
}
