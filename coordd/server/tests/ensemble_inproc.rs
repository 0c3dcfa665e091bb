//! Three coordd servers in one process as an ensemble over coordd-raft's in-memory
//! network (issue 5, first integration step): real client sockets, our client, writes
//! from clients of any member, zxids equal on every member, watches across members,
//! sessions of followers' clients kept alive through the leader (and only by their
//! clients' own life, not by a member catching up on the log). The multi-process
//! ensemble over TCP is the next step (tests/ in the root package).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use coordd::config::{Config, FileConfig, Flags};
use coordd::server::{EnsembleMember, Server};
use coordd_client::{Acl, Client, ClientConfig, CreateMode, EventType, SessionState};
use coordd_raft::{
    MemLogStore, MemNetwork, MemTransport, Member, PeerRequest, PeerResponse, Role, Transport,
    TransportError,
};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

const WAIT: Duration = Duration::from_secs(20);

/// Logs of the three members (each core's lines carry `member{id=N}`), the clients and
/// the test, shown by the test harness for a failing test only. `RUST_LOG` overrides
/// the default (openraft's own logs are off by default: they are many and rarely tell).
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,openraft=off"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}

/// Waits (at most `WAIT`) until the client is connected again or its session is over
/// (expired or closed: terminal, so waiting on would only time out), and says which.
async fn connected_or_over(state: &mut watch::Receiver<SessionState>) -> SessionState {
    *tokio::time::timeout(
        WAIT,
        state.wait_for(|s| *s == SessionState::Connected || s.is_terminal()),
    )
    .await
    .expect("connected or over in time")
    .expect("the client's state is kept while the client lives")
}

/// What the test does with a forwarded batch it holds (see [`HoldingTransport`]).
enum Verdict {
    /// Send it on to the leader now.
    Deliver,
    /// Lost on the way: the forward fails as a call whose reply never came (its outcome
    /// unknown to the member), and the leader never sees it.
    Lose,
    /// The connect is refused, as a dead leader's address refuses it: nothing was sent,
    /// and the member knows it (`TransportError::Unreachable`).
    Refuse,
}

/// A forwarded batch held on its way to the leader, with whom it was for.
struct Held {
    target: u64,
    request: PeerRequest,
    verdict: oneshot::Sender<Verdict>,
}

/// A member's switch for holding its forwarded batches (`AppMsg::Forward`) on their way
/// to the leader: while armed, each is handed to the test, which decides its fate
/// ([`Verdict`]) or keeps it to deliver itself later (a message still in flight when its
/// sender dies). Raft's own messages and session touches always pass.
#[derive(Clone, Default)]
struct ForwardHold {
    tx: Arc<Mutex<Option<mpsc::UnboundedSender<Held>>>>,
}

impl ForwardHold {
    /// Holds the forwards from now on; they come out of the returned receiver.
    fn arm(&self) -> mpsc::UnboundedReceiver<Held> {
        let (tx, rx) = mpsc::unbounded_channel();
        *self.tx.lock().unwrap() = Some(tx);
        rx
    }

    fn disarm(&self) {
        *self.tx.lock().unwrap() = None;
    }

    fn armed(&self) -> Option<mpsc::UnboundedSender<Held>> {
        self.tx.lock().unwrap().clone()
    }
}

/// A member's transport over the in-memory network, with its [`ForwardHold`].
struct HoldingTransport {
    net: MemTransport,
    hold: ForwardHold,
}

impl Transport for HoldingTransport {
    async fn call(
        &self,
        target: u64,
        addr: &str,
        request: PeerRequest,
        timeout: Duration,
    ) -> Result<PeerResponse, TransportError> {
        let forward = request.app_body().is_some_and(|b| {
            matches!(
                coordd::server::replicated::AppMsg::decode(b.clone()),
                Ok(coordd::server::replicated::AppMsg::Forward(_))
            )
        });
        if let Some(tx) = self.hold.armed().filter(|_| forward) {
            let (verdict, decided) = oneshot::channel();
            let _ = tx.send(Held {
                target,
                request: request.clone(),
                verdict,
            });
            match tokio::time::timeout(timeout, decided).await {
                Ok(Ok(Verdict::Deliver)) => {}
                Ok(Ok(Verdict::Refuse)) => {
                    return Err(TransportError::Unreachable(format!(
                        "test: {addr} refused the connect"
                    )))
                }
                _ => return Err(TransportError::Timeout),
            }
        }
        self.net.call(target, addr, request, timeout).await
    }
}

/// The next forward `rx` holds, at most `WAIT` from now.
async fn next_held(rx: &mut mpsc::UnboundedReceiver<Held>) -> Held {
    tokio::time::timeout(WAIT, rx.recv())
        .await
        .expect("a forward held in time")
        .expect("the hold is armed")
}

struct Ensemble {
    _net: MemNetwork,
    servers: Vec<(Server, Member)>,
    _dirs: Vec<tempfile::TempDir>,
    /// Each member's Raft log (kept across a restart of the member).
    logs: Vec<MemLogStore>,
    holds: Vec<ForwardHold>,
    configs: Vec<(Config, coordd_raft::Config)>,
    peers: BTreeMap<u64, String>,
}

/// Starts member `id` on `log` over `net`, its forwards through `hold`, and makes it
/// reachable.
async fn start_member(
    net: &MemNetwork,
    id: u64,
    peers: &BTreeMap<u64, String>,
    config: &Config,
    raft: coordd_raft::Config,
    log: &MemLogStore,
    hold: &ForwardHold,
) -> (Server, Member) {
    let (server, member) = Server::start_member(
        config.clone(),
        EnsembleMember {
            id,
            members: peers.clone(),
            raft,
            log: log.clone(),
            transport: HoldingTransport {
                net: net.transport(id),
                hold: hold.clone(),
            },
            join: false,
        },
    )
    .await
    .unwrap();
    net.register(&member);
    (server, member)
}

impl Ensemble {
    async fn start() -> Ensemble {
        Ensemble::start_with(|_| {}).await
    }

    async fn start_with(adjust: impl Fn(&mut Flags)) -> Ensemble {
        Ensemble::start_with_raft(adjust, |_| coordd_raft::Config::default()).await
    }

    /// `raft(id)`: member `id`'s Raft configuration.
    async fn start_with_raft(
        adjust: impl Fn(&mut Flags),
        raft: impl Fn(u64) -> coordd_raft::Config,
    ) -> Ensemble {
        let net = MemNetwork::new();
        let peers: BTreeMap<u64, String> = (1..=3).map(|id| (id, format!("member-{id}"))).collect();
        let mut servers = Vec::new();
        let mut dirs = Vec::new();
        let mut logs = Vec::new();
        let mut holds = Vec::new();
        let mut configs = Vec::new();
        for id in 1..=3u64 {
            let dir = tempfile::tempdir().unwrap();
            let flags = Flags {
                client_addr: Some("127.0.0.1:0".parse().unwrap()),
                data_dir: Some(dir.path().to_path_buf()),
                tick_time_ms: Some(100),
                ..Flags::default()
            };
            let mut flags = flags;
            adjust(&mut flags);
            let config = Config::resolve(flags, FileConfig::default()).unwrap();
            let log = MemLogStore::new();
            let hold = ForwardHold::default();
            let started = start_member(&net, id, &peers, &config, raft(id), &log, &hold).await;
            servers.push(started);
            dirs.push(dir);
            logs.push(log);
            holds.push(hold);
            configs.push((config, raft(id)));
        }
        Ensemble {
            _net: net,
            servers,
            _dirs: dirs,
            logs,
            holds,
            configs,
            peers,
        }
    }

    /// Stops member `i` (its server and its Raft member: its clients' connections close,
    /// its proposer and what it was forwarding die with it) and starts it again with the
    /// same Raft log, as a process restarted on its data directory. Returns the new
    /// run's [`ForwardHold`].
    async fn restart(&mut self, i: usize) -> ForwardHold {
        let id = i as u64 + 1;
        let (server, member) = self.servers.remove(i);
        server.shutdown_token().cancel();
        let _ = server.wait().await;
        let _ = member.shutdown().await;
        self._net.unregister(id);
        let (config, raft) = self.configs[i].clone();
        let hold = ForwardHold::default();
        let started = start_member(
            &self._net,
            id,
            &self.peers,
            &config,
            raft,
            &self.logs[i],
            &hold,
        )
        .await;
        self.servers.insert(i, started);
        self.holds[i] = hold.clone();
        hold
    }

    fn addr(&self, i: usize) -> String {
        self.servers[i].0.local_addr.to_string()
    }

    /// Index of the leader once all three agree on it.
    async fn leader(&self) -> usize {
        let deadline = Instant::now() + WAIT;
        loop {
            let leaders: Vec<_> = self.servers.iter().map(|(_, m)| m.leader()).collect();
            if let Some(l) = leaders[0] {
                if leaders.iter().all(|x| *x == Some(l)) {
                    let i = (l - 1) as usize;
                    if self.servers[i].1.role() == Role::Leader {
                        return i;
                    }
                }
            }
            assert!(
                Instant::now() < deadline,
                "no leader agreed on: {leaders:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn stop(self) {
        for (server, member) in self.servers {
            server.shutdown_token().cancel();
            let _ = server.wait().await;
            let _ = member.shutdown().await;
        }
    }
}

async fn client(addr: &str, session_timeout_ms: u32) -> Client {
    let mut cfg = ClientConfig::new([addr]);
    cfg.session_timeout_ms = session_timeout_ms;
    Client::connect(cfg).await.unwrap().0
}

/// Polls `cond` until it holds, at most `WAIT`.
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_from_every_member_apply_everywhere_with_the_same_zxids() {
    let e = Ensemble::start().await;
    let leader = e.leader().await;
    let clients = [
        client(&e.addr(0), 4000).await,
        client(&e.addr(1), 4000).await,
        client(&e.addr(2), 4000).await,
    ];
    let acl = Acl::open_unsafe();
    for (i, c) in clients.iter().enumerate() {
        let path = format!("/from-{i}");
        c.create(
            &path,
            format!("v{i}").as_bytes(),
            &acl,
            CreateMode::Persistent,
        )
        .await
        .unwrap_or_else(|err| panic!("create through member {i} (leader {leader}): {err}"));
        // Read-your-writes on the member that answered.
        let (data, _) = c.get_data(&path, false).await.unwrap();
        assert_eq!(data, format!("v{i}").as_bytes());
    }
    // Every member ends with the same nodes and the same zxids for them.
    for i in 0..3 {
        let path = format!("/from-{i}");
        let reference = clients[i]
            .exists(&path, false)
            .await
            .unwrap()
            .expect("the writer's member has the node")
            .czxid;
        eventually("the same czxid on every member", || {
            let path = path.clone();
            let clients = &clients;
            async move {
                let mut czxids = Vec::new();
                for c in clients {
                    czxids.push(c.exists(&path, false).await.unwrap().map(|s| s.czxid));
                }
                czxids.iter().all(|z| *z == Some(reference))
            }
        })
        .await;
    }
    // A versioned setData from a follower's client: one wins, the stale one fails.
    let follower = (leader + 1) % 3;
    let stat = clients[follower]
        .set_data("/from-0", b"w1", Some(0))
        .await
        .unwrap();
    assert_eq!(stat.version, 1);
    assert!(clients[leader]
        .set_data("/from-0", b"w2", Some(0))
        .await
        .is_err());
    // sync on a follower, then read there: it sees the leader's client's write.
    let other = (leader + 2) % 3;
    for i in 0..20 {
        let path = format!("/synced-{i}");
        clients[leader]
            .create(&path, b"s", &acl, CreateMode::Persistent)
            .await
            .unwrap();
        clients[other].sync(&path).await.unwrap();
        assert!(
            clients[other].exists(&path, false).await.unwrap().is_some(),
            "{path} not visible on member {other} after sync"
        );
    }
    for c in clients {
        c.close().await.unwrap();
    }
    e.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watches_fire_across_members_and_followers_sessions_stay_alive() {
    let e = Ensemble::start().await;
    let leader = e.leader().await;
    let follower = (leader + 1) % 3;
    let other = (leader + 2) % 3;
    let acl = Acl::open_unsafe();

    let watcher = {
        let mut cfg = ClientConfig::new([e.addr(other)]);
        cfg.session_timeout_ms = 4000;
        Client::connect(cfg).await.unwrap()
    };
    let (watcher, mut events) = watcher;
    assert!(watcher.exists("/eph", true).await.unwrap().is_none());

    // A 400 ms session (4 ticks of 100 ms) on a follower: its pings reach only the
    // follower, which must pass them on, or the leader expires the session.
    let short = client(&e.addr(follower), 400).await;
    short
        .create("/eph", b"x", &acl, CreateMode::Ephemeral)
        .await
        .unwrap();
    // Session state changes come as events of type None; the watch's comes after.
    let ev = tokio::time::timeout(WAIT, async {
        loop {
            match events.recv().await {
                Some(ev) if ev.event_type == EventType::None => continue,
                other => return other,
            }
        }
    })
    .await
    .expect("watch event in time")
    .expect("event stream open");
    assert_eq!(ev.event_type, EventType::NodeCreated);

    let alive_until = Instant::now() + Duration::from_millis(2000);
    while Instant::now() < alive_until {
        assert!(
            watcher.exists("/eph", false).await.unwrap().is_some(),
            "the follower's client session expired although its client pings"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Closing the session removes the ephemeral on every member.
    short.close().await.unwrap();
    eventually("ephemeral gone after close", || {
        let w = &watcher;
        async move { w.exists("/eph", false).await.unwrap().is_none() }
    })
    .await;
    watcher.close().await.unwrap();
    e.stop().await;
}

/// A forward refused before it was sent (the leader's address refused the connect, as a
/// dead leader's does until the next one is elected) is not in doubt: the member sends
/// it again, and its client gets the answer, not ConnectionLoss and a reconnect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forward_refused_before_it_was_sent_goes_again_and_is_answered() {
    init_logging();
    let e = Ensemble::start().await;
    let leader = e.leader().await;
    let follower = (leader + 1) % 3;
    let c = client(&e.addr(follower), 6000).await;
    let session = c.session_id();
    let mut held = e.holds[follower].arm();
    let writer = tokio::spawn(async move {
        let created = c
            .create(
                "/refused-then-sent",
                b"v",
                &Acl::open_unsafe(),
                CreateMode::Persistent,
            )
            .await;
        (c, created)
    });
    for _ in 0..3 {
        let refused = next_held(&mut held).await;
        assert_eq!(refused.target, leader as u64 + 1, "forwarded to the leader");
        let _ = refused.verdict.send(Verdict::Refuse);
    }
    e.holds[follower].disarm();
    // A try already on its way when the hold was disarmed goes through.
    tokio::spawn(async move {
        while let Some(h) = held.recv().await {
            let _ = h.verdict.send(Verdict::Deliver);
        }
    });
    let (c, created) = tokio::time::timeout(WAIT, writer)
        .await
        .expect("the write is answered")
        .unwrap();
    assert_eq!(created.expect("the write succeeded"), "/refused-then-sent");
    assert_eq!(c.session_id(), session, "same session, never disconnected");
    let other = client(&e.addr(leader), 6000).await;
    let (data, stat) = other.get_data("/refused-then-sent", false).await.unwrap();
    assert_eq!((data.as_slice(), stat.version), (&b"v"[..], 0));
    c.close().await.unwrap();
    other.close().await.unwrap();
    e.stop().await;
}

/// A member cut off from the others closes its clients within its election timeout, so
/// they move to the majority; once healed it serves them again and their session lives.
/// Between losing sight of the quorum and the close it answers nothing: a read sent then
/// gets no reply from the stale member, only the close.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_cut_off_from_the_quorum_closes_its_clients() {
    init_logging();
    let e = Ensemble::start().await;
    let leader = e.leader().await;
    let follower = (leader + 1) % 3;
    // 6000 ms asked, 2000 granted (at most 20 ticks of 100 ms).
    let c = client(&e.addr(follower), 6000).await;
    let acl = Acl::open_unsafe();
    c.create("/before", b"", &acl, CreateMode::Persistent)
        .await
        .unwrap();
    let session = c.session_id();

    let mut state = c.state_watch();
    let cut_at = Instant::now();
    tracing::info!(
        member = follower + 1,
        leader = leader + 1,
        "test: isolating"
    );
    e._net.isolate(follower as u64 + 1);
    // The member holds its clients for 100 ms before it closes them: catch it holding.
    let addr = e.addr(follower);
    let holding = tokio::time::timeout(WAIT, async {
        loop {
            if *state.borrow() != SessionState::Connected {
                return false;
            }
            if mntr_value(&addr, "zk_quorum_hold").await == 1 {
                return true;
            }
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the cut-off member holds or closes its clients");
    if holding {
        let read = tokio::time::timeout(WAIT, c.get_data("/before", false))
            .await
            .expect("the read ends");
        assert!(
            read.is_err(),
            "a read sent while the member held its clients was answered: {read:?}"
        );
    } else {
        println!("the client was closed before the test saw the member holding");
    }
    tokio::time::timeout(WAIT, state.wait_for(|s| *s != SessionState::Connected))
        .await
        .expect("the cut-off member closed its client")
        .unwrap();
    let closed_after = cut_at.elapsed();
    println!("client closed {closed_after:?} after the member was cut off");
    assert!(
        mntr_value(&addr, "zk_quorum_holds").await >= 1,
        "the hold is counted"
    );

    tracing::info!("test: healing");
    e._net.heal();
    assert_eq!(
        connected_or_over(&mut state).await,
        SessionState::Connected,
        "reconnected after the heal"
    );
    assert_eq!(
        c.session_id(),
        session,
        "the session survived the partition"
    );
    c.create("/after", b"", &acl, CreateMode::Persistent)
        .await
        .unwrap();
    c.close().await.unwrap();
    e.stop().await;
}

/// A write forwarded to the leader just as its member is cut off: the forward (or its
/// reply) is lost in the partition and would be answered by nothing but its timeout
/// (`FORWARD_TIMEOUT_MS`, 3 s). The member gives the batch up when it stops serving (its
/// clients are closed then, nobody waits for it), so once healed it takes its returning
/// client at once. Before, the member (which proposes one batch at a time) let the lost
/// forward hold back the barrier that resumes the session until after the leader had
/// expired it (2 s): the client saw Expired (CI flake of the test above, where a create's
/// forward reply was still in flight when the cut began).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_lost_in_a_partition_does_not_hold_back_the_member_after_the_heal() {
    init_logging();
    let e = Ensemble::start().await;
    let leader = e.leader().await;
    let follower = (leader + 1) % 3;
    let c = client(&e.addr(follower), 2000).await;
    assert_eq!(c.session_timeout_ms(), 2000, "20 ticks of 100 ms at most");
    let acl = Acl::open_unsafe();
    c.create("/before", b"", &acl, CreateMode::Persistent)
        .await
        .unwrap();
    let session = c.session_id();

    let mut state = c.state_watch();
    tracing::info!(
        member = follower + 1,
        leader = leader + 1,
        "test: isolating"
    );
    e._net.isolate(follower as u64 + 1);
    // The member still serves for its quorum timeout (300 ms): it takes the write and
    // forwards it, and the forward is dropped. Once it stops serving it closes the client.
    let lost = c.create("/lost", b"", &acl, CreateMode::Persistent).await;
    assert!(
        matches!(lost, Err(coordd_client::Error::ConnectionLoss)),
        "the write's outcome is unknown to the client: {lost:?}"
    );
    tracing::info!("test: healing");
    e._net.heal();
    assert_eq!(
        connected_or_over(&mut state).await,
        SessionState::Connected,
        "the session resumed on the healed member before its timeout"
    );
    assert_eq!(c.session_id(), session);
    c.create("/after", b"", &acl, CreateMode::Persistent)
        .await
        .unwrap();
    c.close().await.unwrap();
    e.stop().await;
}

/// A client that has seen a zxid this member has not applied yet is held until the
/// member catches up, then accepted (not refused), so it never goes back in time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_behind_the_client_accepts_it_once_caught_up() {
    use bytes::{Buf, BytesMut};
    use coordd_proto::{frame::write_frame, ConnectRequest, ConnectResponse, Record};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let e = Ensemble::start().await;
    let leader = e.leader().await;
    let slow = (leader + 1) % 3;
    // Everything to and from `slow` arrives 40 ms late, so it applies that much behind
    // (more would outlast the leader's AppendEntries deadline, one heartbeat interval).
    e._net.set_delay(slow as u64 + 1, Duration::from_millis(40));
    let c = client(&e.addr(leader), 4000).await;
    c.create("/seen", b"", &Acl::open_unsafe(), CreateMode::Persistent)
        .await
        .unwrap();
    let zxid = c.exists("/seen", false).await.unwrap().unwrap().czxid;

    let started = Instant::now();
    let mut s = tokio::net::TcpStream::connect(e.addr(slow)).await.unwrap();
    let mut out = BytesMut::new();
    write_frame(&mut out, |o| {
        ConnectRequest {
            protocol_version: 0,
            last_zxid_seen: zxid,
            timeout_ms: 4000,
            session_id: 0,
            passwd: vec![0; 16],
            read_only: false,
        }
        .encode(o)
    });
    s.write_all(&out).await.unwrap();
    let mut len = [0u8; 4];
    tokio::time::timeout(WAIT, s.read_exact(&mut len))
        .await
        .expect("an answer in time")
        .expect("accepted, not closed");
    let mut body = vec![0u8; (&len[..]).get_u32() as usize];
    s.read_exact(&mut body).await.unwrap();
    let resp = ConnectResponse::from_bytes(&body).unwrap();
    assert!(resp.timeout_ms > 0, "the session was refused");
    println!("accepted after {:?}", started.elapsed());
    // It caught up before accepting: a client of that member sees the node at once.
    let other = client(&e.addr(slow), 4000).await;
    assert!(other.exists("/seen", false).await.unwrap().is_some());
    e._net.set_delay(slow as u64 + 1, Duration::ZERO);
    drop(s);
    for cl in [c, other] {
        cl.close().await.unwrap();
    }
    e.stop().await;
}

/// With `linearizable_reads`, a read on a member that applies 40 ms behind still sees a
/// write acknowledged (to another member's client) before the read began, without sync.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn linearizable_reads_see_every_acknowledged_write() {
    let e = Ensemble::start_with(|f| f.linearizable_reads = true).await;
    let leader = e.leader().await;
    let slow = (leader + 1) % 3;
    e._net.set_delay(slow as u64 + 1, Duration::from_millis(40));
    let writer = client(&e.addr(leader), 4000).await;
    let reader = client(&e.addr(slow), 4000).await;
    let acl = Acl::open_unsafe();
    for i in 0..10 {
        let path = format!("/lin-{i}");
        writer
            .create(&path, b"", &acl, CreateMode::Persistent)
            .await
            .unwrap();
        assert!(
            reader.exists(&path, false).await.unwrap().is_some(),
            "{path} acknowledged but not read on the lagging member"
        );
    }
    e._net.set_delay(slow as u64 + 1, Duration::ZERO);
    for c in [writer, reader] {
        c.close().await.unwrap();
    }
    e.stop().await;
}

/// A TCP forwarder to `upstream`; aborting the returned task closes its listener and
/// every connection through it at once (a client that vanishes: no closeSession can
/// reach the server).
async fn forwarder(upstream: String) -> (String, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let task = tokio::spawn(async move {
        let mut conns = tokio::task::JoinSet::new();
        while let Ok((mut down, _)) = listener.accept().await {
            let upstream = upstream.clone();
            conns.spawn(async move {
                if let Ok(mut up) = tokio::net::TcpStream::connect(&upstream).await {
                    let _ = tokio::io::copy_bidirectional(&mut down, &mut up).await;
                }
            });
        }
    });
    (addr, task)
}

/// Waits until `path`, the ephemeral of a client that vanished at `vanished`, is gone as
/// `watcher` sees it; fails if it is still there `bound` after the vanish (`renewed_by`:
/// the suspected renewal, for the message).
async fn wait_ephemeral_gone(
    watcher: &Client,
    path: &str,
    vanished: Instant,
    bound: Duration,
    renewed_by: &str,
) {
    while watcher.exists(path, false).await.unwrap().is_some() {
        assert!(
            vanished.elapsed() < bound,
            "the vanished client's ephemeral {path} outlived the bound of {bound:?} after \
             the vanish: {renewed_by}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    println!(
        "ephemeral gone {:?} after its client vanished",
        vanished.elapsed()
    );
}

/// An ensemble led by member 1 or 2 whose member 3 never campaigns on its own (election
/// timeout a minute), and the leader's index. Every member's first start initializes the
/// cluster and campaigns at once, whatever its election timeout, so member 3 can win that
/// first election (a loaded CI run saw it): then the ensemble is started again, at most
/// `ATTEMPTS` times.
async fn ensemble_led_by_member_1_or_2() -> (Ensemble, usize) {
    const ATTEMPTS: usize = 5;
    for _ in 0..ATTEMPTS {
        let e = Ensemble::start_with_raft(
            |_| {},
            |id| {
                let mut c = coordd_raft::Config::default();
                if id == 3 {
                    c.election_timeout_min_ms = 60_000;
                    c.election_timeout_max_ms = 61_000;
                }
                c
            },
        )
        .await;
        let leader = e.leader().await;
        if leader != 2 {
            return (e, leader);
        }
        e.stop().await;
    }
    panic!("member 3 won the first election {ATTEMPTS} times in a row");
}

/// Only a client's own life on a member renews its session at the leader. A member that
/// applies another member's session creation late (here: cut off, then catching up)
/// must not pass that on as a touch, or the leader gives a session whose client is gone
/// a whole timeout from the catch-up instead of from its last packet (the nemesis test
/// saw vanished clients' ephemerals outlive the expiry bound that way).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_catching_up_does_not_renew_sessions_of_vanished_clients() {
    const TIMEOUT_MS: u64 = 1000;
    const CUT: Duration = Duration::from_millis(600);
    // Member 3 does not campaign within the cut, so the heal deposes nobody: a new
    // leadership would rightly give every session a whole timeout again and hide what
    // this test looks at.
    let (e, leader) = ensemble_led_by_member_1_or_2().await;
    let watcher = client(&e.addr(leader), 10_000).await;

    // Member 3 misses the session's creation.
    e._net.isolate(3);
    let (via, forwarder) = forwarder(e.addr(leader)).await;
    let vanishing = client(&via, TIMEOUT_MS as u32).await;
    vanishing
        .create("/v", b"", &Acl::open_unsafe(), CreateMode::Ephemeral)
        .await
        .unwrap();
    // The client vanishes: its connection is cut, then it is dropped while disconnected.
    let mut state = vanishing.state_watch();
    forwarder.abort();
    tokio::time::timeout(WAIT, state.wait_for(|s| *s != SessionState::Connected))
        .await
        .expect("the client saw its connection cut")
        .unwrap();
    let vanished = Instant::now();
    drop(vanishing);

    // The fault lasts CUT; then member 3 catches up and applies the creation.
    tokio::time::sleep_until(vanished + CUT).await;
    e._net.rejoin(3);

    // The leader expires the session TIMEOUT_MS after the client's last packet, checked
    // every tick/10 (10 ms), and the close commits: gone well before TIMEOUT_MS after the
    // catch-up, which is at least CUT later.
    wait_ephemeral_gone(
        &watcher,
        "/v",
        vanished,
        Duration::from_millis(TIMEOUT_MS + 300),
        "a catching-up member renewed the session",
    )
    .await;
    assert_eq!(
        e.leader().await,
        leader,
        "the leader stayed (a new one would restart every session's timeout)"
    );
    watcher.close().await.unwrap();
    e.stop().await;
}

/// Writes one frame (what `fill` encodes) to `s`.
async fn write_raw_frame(s: &mut tokio::net::TcpStream, fill: impl FnOnce(&mut bytes::BytesMut)) {
    use tokio::io::AsyncWriteExt;
    let mut out = bytes::BytesMut::new();
    coordd_proto::frame::write_frame(&mut out, fill);
    s.write_all(&out).await.unwrap();
}

/// Reads one length-prefixed frame; None when the server closed the connection.
async fn read_raw_frame(s: &mut tokio::net::TcpStream) -> Option<Vec<u8>> {
    use tokio::io::AsyncReadExt;
    let mut len = [0u8; 4];
    s.read_exact(&mut len).await.ok()?;
    let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
    s.read_exact(&mut body).await.ok()?;
    Some(body)
}

/// The xid of a reply frame's header (`[xid: i32][zxid: i64][err: i32]`).
fn reply_xid(frame: &[u8]) -> i32 {
    i32::from_be_bytes(frame[0..4].try_into().expect("a reply header"))
}

/// The error code of a reply frame's header.
fn reply_err(frame: &[u8]) -> i32 {
    i32::from_be_bytes(frame[12..16].try_into().expect("a reply header"))
}

/// Sends a connect request (a new session with `session_id` 0, else a resume) on `s`.
async fn send_connect(s: &mut tokio::net::TcpStream, session_id: i64, passwd: &[u8]) {
    use coordd_proto::{ConnectRequest, Record};
    write_raw_frame(s, |o| {
        ConnectRequest {
            protocol_version: 0,
            last_zxid_seen: 0,
            timeout_ms: 1000,
            session_id,
            passwd: passwd.to_vec(),
            read_only: false,
        }
        .encode(o)
    })
    .await;
}

/// A handshake is not a sign of life once its client has gone. A client that asks a
/// member without a quorum to resume its session is held there (at most 600 ms); if the
/// client vanishes meanwhile and the member regains its quorum, the member must not
/// take the session back for a connection that is gone: that would pass a touch on to
/// the leader and give a session whose client is gone a whole timeout again (the nemesis
/// test saw a vanished client's ephemeral outlive the expiry bound when a healed member
/// finished such a handshake after its client had vanished).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handshake_held_for_a_quorum_does_not_renew_a_vanished_clients_session() {
    use coordd_proto::{ConnectResponse, Record};
    const TIMEOUT_MS: u64 = 1000;
    // Member 3 does not campaign while it is cut off, so the heal deposes nobody: a new
    // leadership would rightly give every session a whole timeout again and hide what
    // this test looks at.
    let (e, leader) = ensemble_led_by_member_1_or_2().await;
    let watcher = client(&e.addr(leader), 2_000).await;

    // Member 3 is cut off and stops serving: it closes its clients.
    let canary = client(&e.addr(2), 2_000).await;
    let mut canary_state = canary.state_watch();
    e._net.isolate(3);
    tokio::time::timeout(
        WAIT,
        canary_state.wait_for(|s| *s != SessionState::Connected),
    )
    .await
    .expect("the cut-off member closed its client")
    .unwrap();

    // A session on the leader with an ephemeral.
    let mut owner = tokio::net::TcpStream::connect(e.addr(leader))
        .await
        .unwrap();
    send_connect(&mut owner, 0, &[0; 16]).await;
    let resp = ConnectResponse::from_bytes(&read_raw_frame(&mut owner).await.unwrap()).unwrap();
    assert!(resp.timeout_ms > 0, "session refused");
    assert_eq!(resp.timeout_ms as u64, TIMEOUT_MS);
    create_raw_ephemeral(&mut owner, 1, "/v").await;

    // The client moves to member 3 (which has no quorum: the handshake is held there),
    // then vanishes: both its connections close and it never comes back.
    let mut held = tokio::net::TcpStream::connect(e.addr(2)).await.unwrap();
    send_connect(&mut held, resp.session_id, &resp.passwd).await;
    tokio::time::sleep(Duration::from_millis(30)).await;
    drop(owner);
    drop(held);
    let vanished = Instant::now();

    // Member 3 gets its quorum back while the handshake is still held (600 ms).
    tokio::time::sleep(Duration::from_millis(350)).await;
    e._net.rejoin(3);

    // The leader expires the session TIMEOUT_MS after the client's last packet (the
    // create), checked every tick/10 (10 ms), and the close commits. Renewed by the held
    // handshake, it would live until TIMEOUT_MS after the member got its quorum back,
    // at least 350 ms later.
    wait_ephemeral_gone(
        &watcher,
        "/v",
        vanished,
        Duration::from_millis(TIMEOUT_MS + 200),
        "the member that held its handshake renewed the session",
    )
    .await;
    assert_eq!(
        e.leader().await,
        leader,
        "the leader stayed (a new one would restart every session's timeout)"
    );
    // The canary's session (2 s, the longest 100 ms ticks allow) may have expired while
    // its only member was cut off: nothing to close.
    drop(canary);
    watcher.close().await.unwrap();
    e.stop().await;
}

/// A new session on `addr` over a raw connection (no client library: nothing is sent
/// but what the test writes, and nothing reconnects), asking `timeout_ms`.
async fn raw_session(
    addr: &str,
    timeout_ms: i32,
) -> (tokio::net::TcpStream, coordd_proto::ConnectResponse) {
    use coordd_proto::{ConnectRequest, ConnectResponse, Record};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    write_raw_frame(&mut s, |o| {
        ConnectRequest {
            protocol_version: 0,
            last_zxid_seen: 0,
            timeout_ms,
            session_id: 0,
            passwd: vec![0; 16],
            read_only: false,
        }
        .encode(o)
    })
    .await;
    let frame = tokio::time::timeout(WAIT, read_raw_frame(&mut s))
        .await
        .expect("handshake answered in time")
        .expect("handshake answered, not closed");
    let resp = ConnectResponse::from_bytes(&frame).unwrap();
    assert!(resp.timeout_ms > 0, "session refused");
    (s, resp)
}

/// Sends a create of the persistent node `path` (open ACL) with `xid` on `s`, without
/// waiting for its reply.
async fn send_raw_create(s: &mut tokio::net::TcpStream, xid: i32, path: &str) {
    send_raw_create_with_flags(s, xid, path, 0).await;
}

/// Creates the ephemeral node `path` (open ACL) with `xid` on `s` and checks its reply.
async fn create_raw_ephemeral(s: &mut tokio::net::TcpStream, xid: i32, path: &str) {
    use coordd_proto::{Reader, Record, ReplyHeader};
    send_raw_create_with_flags(s, xid, path, 1).await;
    let reply = read_raw_frame(s).await.expect("create reply");
    let header = ReplyHeader::decode(&mut Reader::new(&reply)).unwrap();
    assert_eq!((header.xid, header.err), (xid, 0), "create refused");
}

/// [`send_raw_create`] with the create's `flags` (1: ephemeral).
async fn send_raw_create_with_flags(
    s: &mut tokio::net::TcpStream,
    xid: i32,
    path: &str,
    flags: i32,
) {
    use coordd_proto::{perms, Acl as RawAcl, CreateRequest, OpCode, Request};
    let create = Request::Create {
        op: OpCode::Create,
        req: CreateRequest {
            path: path.into(),
            data: Vec::new(),
            acl: vec![RawAcl {
                perms: perms::ALL,
                scheme: "world".into(),
                id: "anyone".into(),
            }],
            flags,
        },
        ttl: 0,
    };
    write_raw_frame(s, |o| create.encode_with_header(xid, o)).await;
}

/// The server's `zk_outstanding_requests` (requests in its core, not yet answered), as
/// the four-letter word `mntr` reports it.
async fn outstanding_requests(addr: &str) -> u64 {
    mntr_value(addr, "zk_outstanding_requests").await
}

/// One numeric row of the server's `mntr`.
async fn mntr_value(addr: &str, key: &str) -> u64 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"mntr").await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix('\t'))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {key} in mntr: {out}"))
}

/// A member's local sequence numbers, which tie the entries it proposes to its waiting
/// clients, start again at 1 in every run of its process. A batch the previous run
/// forwarded that commits after a restart (it was on its way, or in the leader's queue,
/// when the process died) carries the same member id and the same numbers as the new
/// run's own requests: the new run must not take it for one of them. Before each run
/// carried an incarnation of its own in its batches, the new run answered its client's
/// create with the result of the previous run's create (`/old`), before its own write
/// was even in the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_member_answers_its_clients_only_from_their_own_entries() {
    // Member 3 never campaigns (election timeout a minute): restarting it deposes nobody.
    let (mut e, leader) = ensemble_led_by_member_1_or_2().await;
    const M: usize = 2;

    // The previous run: a session (the run's first sequence number), then a create (its
    // second), whose forward to the leader is still on its way when the process dies.
    let (mut old, _) = raw_session(&e.addr(M), 2_000).await;
    let mut held = e.holds[M].arm();
    send_raw_create(&mut old, 1, "/old").await;
    let in_flight = next_held(&mut held).await;
    let new_hold = e.restart(M).await;
    drop(old);

    // The new run first replays the log (the previous run's session among it).
    let applied = e.servers[leader].1.applied_index();
    eventually("the restarted member caught up", || {
        let m = &e.servers[M].1;
        async move { m.quorum_ok() && m.applied_index() >= applied }
    })
    .await;

    // The new run: a session, then a create with the same sequence numbers; the create's
    // batch is held on its way to the leader while the previous run's one arrives there.
    let c = client(&e.addr(M), 2_000).await;
    let mut held = new_hold.arm();
    let acl = Acl::open_unsafe();
    let create = c.create("/new", b"", &acl, CreateMode::Persistent);
    tokio::pin!(create);
    let ours = tokio::select! {
        h = next_held(&mut held) => h,
        r = &mut create => panic!("the create was answered before its batch left: {r:?}"),
    };
    new_hold.disarm();
    let leader_member = &e.servers[in_flight.target as usize - 1].1;
    leader_member
        .handle_peer_request(in_flight.request)
        .await
        .into_app()
        .expect("the leader committed the previous run's batch");
    let _ = ours.verdict.send(Verdict::Deliver);
    let path = tokio::time::timeout(WAIT, &mut create)
        .await
        .expect("the create answered in time")
        .expect("the create succeeded");
    assert_eq!(
        path, "/new",
        "the client's create was answered with another entry's result"
    );
    // (Not checked: that `/old` exists. Its session, whose client died with the previous
    // run, may have expired meanwhile on a slow machine, and then its create failed.)
    assert!(c.exists("/new", false).await.unwrap().is_some());
    c.close().await.unwrap();
    e.stop().await;
}

/// ZooKeeper's per-session FIFO order: a write must never be applied without an earlier
/// write of its session. A batch whose forward to the leader is lost (outcome unknown to
/// the member, and here it never reached the leader) disconnects its clients; a later
/// write of the same session, waiting in the member for that batch to be done with, must
/// be dropped with it, not proposed as the member's next batch. Before, it was, and
/// `/b` was created without `/a`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_queued_behind_a_lost_batch_is_dropped_with_it() {
    init_logging();
    let e = Ensemble::start().await;
    let leader = e.leader().await;
    let m = (leader + 1) % 3;
    let addr = e.addr(m);
    let (mut c, _) = raw_session(&addr, 2_000).await;

    // The first create goes to the leader alone in a batch, which is held on its way.
    let mut held = e.holds[m].arm();
    send_raw_create(&mut c, 1, "/a").await;
    let first = next_held(&mut held).await;
    // The second waits in the member: its session has a batch on the way.
    send_raw_create(&mut c, 2, "/b").await;
    eventually("both creates in the member's core", || {
        let addr = addr.clone();
        async move { outstanding_requests(&addr).await >= 2 }
    })
    .await;

    // The first batch's forward is lost: its outcome is unknown to the member.
    e.holds[m].disarm();
    let _ = first.verdict.send(Verdict::Lose);
    let answer = tokio::time::timeout(WAIT, read_raw_frame(&mut c))
        .await
        .expect("the member disconnected the client in time");
    assert!(
        answer.is_none(),
        "a write whose batch was lost was answered (or one behind it)"
    );

    // A new session on the same member: its creation reaches the log through the
    // member's batches after anything the member still proposed for the lost client.
    let d = client(&addr, 2_000).await;
    let a = d.exists("/a", false).await.unwrap().is_some();
    let b = d.exists("/b", false).await.unwrap().is_some();
    assert!(!a, "the lost batch reached the leader after all");
    assert!(
        !b,
        "the session's second write was applied without its first (FIFO order broken)"
    );
    d.close().await.unwrap();
    e.stop().await;
}

/// A write on its way to the leader holds back only the later requests of its own
/// session: another client of the same member writes, and is answered, meanwhile (as it
/// would be on the leader). Before, a member had one batch on its way at a time, so every
/// client of a follower waited for the slowest write before it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_forward_holds_back_only_its_own_session() {
    init_logging();
    let e = Ensemble::start().await;
    let leader = e.leader().await;
    let m = (leader + 1) % 3;
    let addr = e.addr(m);
    let (mut slow, _) = raw_session(&addr, 5_000).await;
    let (mut other, _) = raw_session(&addr, 5_000).await;

    // The slow client's first write is held on its way; its second waits behind it.
    let mut held = e.holds[m].arm();
    send_raw_create(&mut slow, 1, "/slow-1").await;
    let first = next_held(&mut held).await;
    send_raw_create(&mut slow, 2, "/slow-2").await;
    eventually(
        "both of the slow client's creates in the member's core",
        || {
            let addr = addr.clone();
            async move { outstanding_requests(&addr).await >= 2 }
        },
    )
    .await;

    // The other client's write goes out beside it (nothing of the slow session in it)
    // and is answered while the slow one is still held.
    send_raw_create(&mut other, 1, "/other").await;
    let beside = next_held(&mut held).await;
    let batch = held_batch(&beside);
    assert!(
        !format!("{batch:?}").contains("/slow"),
        "a batch beside the held one carries the held session's later write: {batch:?}"
    );
    let _ = beside.verdict.send(Verdict::Deliver);
    let reply = tokio::time::timeout(WAIT, read_raw_frame(&mut other))
        .await
        .expect("the other client answered while the slow write is held")
        .expect("the other client's connection stays open");
    assert_eq!(reply_err(&reply), 0, "the other client's create failed");

    // Released, the slow session's writes apply in the order it sent them.
    let _ = first.verdict.send(Verdict::Deliver);
    let second = next_held(&mut held).await;
    assert!(format!("{:?}", held_batch(&second)).contains("/slow-2"));
    let _ = second.verdict.send(Verdict::Deliver);
    e.holds[m].disarm();
    for xid in [1, 2] {
        let reply = tokio::time::timeout(WAIT, read_raw_frame(&mut slow))
            .await
            .expect("the slow client answered once released")
            .expect("the slow client's connection stays open");
        assert_eq!(reply_xid(&reply), xid, "replies out of request order");
        assert_eq!(
            reply_err(&reply),
            0,
            "the slow client's create {xid} failed"
        );
    }
    let d = client(&addr, 2_000).await;
    let first_stat = d.exists("/slow-1", false).await.unwrap().expect("/slow-1");
    let second_stat = d.exists("/slow-2", false).await.unwrap().expect("/slow-2");
    assert!(
        first_stat.czxid < second_stat.czxid,
        "the session's writes applied out of order"
    );
    d.close().await.unwrap();
    e.stop().await;
}

/// The batch a held forward carries.
fn held_batch(h: &Held) -> coordd::server::replicated::TxnBatch {
    use coordd::server::replicated::{AppMsg, TxnBatch};
    match AppMsg::decode(
        h.request
            .app_body()
            .expect("an application message")
            .clone(),
    ) {
        Ok(AppMsg::Forward(b)) => TxnBatch::decode(&b).expect("a batch"),
        other => panic!("not a forward: {other:?}"),
    }
}

/// A member that stops serving (cut off from the quorum) closes every client; the writes
/// they sent that still wait for its proposer (behind a batch of their session it is
/// forwarding) are dropped then, as a ZooKeeper follower that lost its leader drops its
/// queued requests, not proposed later as writes in doubt of clients told
/// ConnectionLoss. Before, the member proposed them as its next batch once it had given
/// up the one in flight.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_that_stops_serving_drops_the_writes_waiting_for_its_proposer() {
    init_logging();
    let e = Ensemble::start().await;
    let leader = e.leader().await;
    let m = (leader + 1) % 3;
    let addr = e.addr(m);
    let (mut c, _) = raw_session(&addr, 2_000).await;

    // The client's first write is with the proposer, held on its way to the leader; its
    // second waits behind it in the member.
    let mut held = e.holds[m].arm();
    send_raw_create(&mut c, 1, "/in-flight").await;
    let _in_flight = next_held(&mut held).await;
    send_raw_create(&mut c, 2, "/queued").await;
    eventually("both creates in the member's core", || {
        let addr = addr.clone();
        async move { outstanding_requests(&addr).await >= 2 }
    })
    .await;

    // Cut off, the member stops serving: the client is closed, unanswered.
    e._net.isolate(m as u64 + 1);
    let answer = tokio::time::timeout(WAIT, read_raw_frame(&mut c))
        .await
        .expect("the cut-off member closed its client in time");
    assert!(answer.is_none(), "a write was answered by a cut-off member");
    e._net.rejoin(m as u64 + 1);
    eventually("the member has its quorum back", || {
        let member = &e.servers[m].1;
        async move { member.quorum_ok() }
    })
    .await;

    // Every batch the member forwards from now on, up to a new client's session, is
    // looked at: none may carry the queued write.
    let connect = client(&addr, 2_000);
    tokio::pin!(connect);
    let d = loop {
        tokio::select! {
            h = next_held(&mut held) => {
                let batch = held_batch(&h);
                assert!(
                    !format!("{batch:?}").contains("/queued"),
                    "the member proposed a write of a client it closed when it stopped \
                     serving: {batch:?}"
                );
                let _ = h.verdict.send(Verdict::Deliver);
            }
            d = &mut connect => break d,
        }
    };
    e.holds[m].disarm();
    assert!(d.exists("/queued", false).await.unwrap().is_none());
    d.close().await.unwrap();
    e.stop().await;
}

/// A client's closeSession that never reaches the log (its member's forward is lost)
/// leaves the session as if the close was never sent: its client saw ConnectionLoss, and
/// the session lives on everywhere until it expires or its client comes back. Before,
/// the member that took the close kept the session marked closing with no deadline: it
/// refused the client's resume as expired while the other members accepted it, and once
/// that member led, the session (and its ephemerals) never expired, which the nemesis
/// test saw as a closed client's ephemeral outliving every bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_whose_close_was_lost_lives_on_at_the_member_that_took_it() {
    use coordd_proto::{ConnectResponse, Reader, Record, ReplyHeader, Request};
    let e = Ensemble::start().await;
    let leader = e.leader().await;
    let m = (leader + 1) % 3;
    let watcher = client(&e.addr(leader), 2_000).await;

    // A session on `m` with an ephemeral.
    let (mut owner, session) = raw_session(&e.addr(m), 2_000).await;
    create_raw_ephemeral(&mut owner, 1, "/c").await;

    // Its close is lost on the way to the leader: the client sees ConnectionLoss.
    let mut held = e.holds[m].arm();
    write_raw_frame(&mut owner, |o| {
        Request::CloseSession.encode_with_header(2, o)
    })
    .await;
    let close = next_held(&mut held).await;
    e.holds[m].disarm();
    let _ = close.verdict.send(Verdict::Lose);
    let answer = tokio::time::timeout(WAIT, read_raw_frame(&mut owner))
        .await
        .expect("the member disconnected the client in time");
    assert!(
        answer.is_none(),
        "a close that never reached the log was answered"
    );
    drop(owner);

    // The session lives: the client resumes it on the same member.
    let mut back = tokio::net::TcpStream::connect(e.addr(m)).await.unwrap();
    send_connect(&mut back, session.session_id, &session.passwd).await;
    let frame = tokio::time::timeout(WAIT, read_raw_frame(&mut back))
        .await
        .expect("resume answered in time")
        .expect("resume answered, not closed");
    let resumed = ConnectResponse::from_bytes(&frame).unwrap();
    assert!(
        resumed.timeout_ms > 0 && resumed.session_id == session.session_id,
        "the member that took the lost close refused its session as expired: {resumed:?}"
    );
    assert!(
        watcher.exists("/c", false).await.unwrap().is_some(),
        "the session's ephemeral went"
    );

    // A close that reaches the log ends it.
    write_raw_frame(&mut back, |o| {
        Request::CloseSession.encode_with_header(3, o)
    })
    .await;
    let reply = tokio::time::timeout(WAIT, read_raw_frame(&mut back))
        .await
        .expect("close answered in time")
        .expect("close answered, not dropped");
    let header = ReplyHeader::decode(&mut Reader::new(&reply)).unwrap();
    assert_eq!((header.xid, header.err), (3, 0), "close refused");
    assert!(watcher.exists("/c", false).await.unwrap().is_none());
    watcher.close().await.unwrap();
    e.stop().await;
}

/// Writes one session pipelines while its previous batch is on its way all wait for that
/// batch, and then used to go out together: six setData of ~1 MB each (within the
/// default frame and node data limits) became one ~5 MB batch, past coordd-raft's
/// `payload_max_bytes` (4 MiB); the leader refused its entry (TooLarge) and every client
/// with a batch in it lost its connection. Batches are now bounded in bytes
/// (`BATCH_BYTES_MAX`) and the leader's entries too (`ENTRY_BYTES_MAX`, checked before a
/// batch is added): every write succeeds, and so does another session's small one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_large_writes_of_one_session_fit_the_raft_payload_limit() {
    init_logging();
    const WRITES: usize = 6;
    const DATA_BYTES: usize = 1_000_000;
    let e = Ensemble::start().await;
    let leader = e.leader().await;
    let m = (leader + 1) % 3;
    let big = client(&e.addr(m), 4_000).await;
    let small = client(&e.addr(leader), 4_000).await;
    let acl = Acl::open_unsafe();
    for i in 0..WRITES {
        big.create(&format!("/big-{i}"), b"", &acl, CreateMode::Persistent)
            .await
            .unwrap();
    }
    small
        .create("/small", b"", &acl, CreateMode::Persistent)
        .await
        .unwrap();

    // The first setData's batch is held on its way to the leader until the other five
    // wait in the member's core behind it, so they are all there to be batched at once.
    let mut held = e.holds[m].arm();
    let mut writes = Vec::new();
    for i in 0..WRITES {
        let c = big.clone();
        let data = vec![i as u8; DATA_BYTES];
        writes.push(tokio::spawn(async move {
            c.set_data(&format!("/big-{i}"), &data, None).await
        }));
    }
    let first = next_held(&mut held).await;
    let addr = e.addr(m);
    eventually("all six setData in the member's core", || {
        let addr = addr.clone();
        async move { outstanding_requests(&addr).await >= WRITES as u64 }
    })
    .await;
    e.holds[m].disarm();
    let _ = first.verdict.send(Verdict::Deliver);
    let small_write = small.set_data("/small", b"x", None).await;

    for (i, w) in writes.into_iter().enumerate() {
        let stat = tokio::time::timeout(WAIT, w)
            .await
            .expect("the setData answered in time")
            .unwrap()
            .unwrap_or_else(|err| panic!("setData {i} of {DATA_BYTES} bytes failed: {err:?}"));
        assert_eq!(stat.data_length as usize, DATA_BYTES);
    }
    small_write.expect("the other session's small write succeeded");
    for i in 0..WRITES {
        let (data, _) = big.get_data(&format!("/big-{i}"), false).await.unwrap();
        assert!(data.len() == DATA_BYTES && data.iter().all(|b| *b == i as u8));
    }
    big.close().await.unwrap();
    small.close().await.unwrap();
    e.stop().await;
}
