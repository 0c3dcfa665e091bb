//! coordd-client against a real Apache ZooKeeper 3.8 (Debian's `zookeeper` package,
//! started per test by tests/support/zookeeper.rs on a free 127.0.0.1 port; skipped with
//! a printed reason when the package or java is missing; scripts/test.sh installs both).
//!
//! The operations test starts its server with `zookeeper.extendedTypesEnabled=true` for
//! the TTL case. A small TCP proxy between client and server lets the reconnect test cut
//! connections, to check reconnects (SetWatches2 as the real server parses it) and
//! expiry (the real server's timeout-0 connect response).
//!
//! Each case runs against one ZooKeeper (`name::standalone`) and against a 3-member
//! ZooKeeper ensemble with the case's two clients on different members
//! (`name::ensemble`; three JVMs, so with `COORDD_ENSEMBLE_SLOW=1` only). A client that
//! reads what the other one wrote syncs first there, as ZooKeeper's followers may lag.

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use coordd_client::{
    Acl, AddWatchMode, Client, ClientConfig, CreateMode, Error, ErrorCode, EventType, Events,
    KeeperState, MultiOp, MultiResult, ReadOp, SessionState, WatchedEvent, WatcherType,
};
use coordd_proto::records::*;
use coordd_proto::OpCode;
use support::target::Topology;
use support::zookeeper::{EnsembleOptions, ZkOptions, ZooKeeper, ZooKeeperEnsemble};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio::time::timeout;

/// Upper bound for one expected event (generous: CI shares two cores with other jobs).
const DEADLINE: Duration = Duration::from_secs(20);
/// Upper bound for the server to expire a 4 s session whose client went away: the
/// timeout, rounded up to ZooKeeper's expiry tick (tickTime 2 s), plus slack for load.
const EXPIRY_DEADLINE: Duration = Duration::from_secs(30);

/// A ZooKeeper server, or an ensemble of three.
enum Zk {
    Standalone(ZooKeeper),
    Ensemble(ZooKeeperEnsemble),
}

impl Zk {
    /// The address for client `i`: the server, or member `i % 3`.
    fn addr(&self, i: usize) -> String {
        match self {
            Zk::Standalone(z) => z.addr(),
            Zk::Ensemble(e) => e.members()[i % e.len()].addr(),
        }
    }

    /// On an ensemble `c` syncs, so that it reads what another session wrote (a
    /// follower serves reads from its own copy); standalone reads see it already.
    async fn catch_up(&self, c: &Client, path: &str) {
        if matches!(self, Zk::Ensemble(_)) {
            c.sync(path).await.unwrap();
        }
    }
}

/// Starts a real ZooKeeper (or, `Topology::Ensemble`, an ensemble of three) for `test`,
/// or prints why not and returns `None` when it is not installed. A server that is
/// installed but fails to start fails the test.
async fn start_zookeeper(test: &str, topo: Topology, opts: ZkOptions) -> Option<Zk> {
    if ZooKeeper::skip_if_unavailable(test) {
        return None;
    }
    // Start polls with blocking sleeps (under its own deadline): off the runtime thread.
    let server = tokio::task::spawn_blocking(move || match topo {
        Topology::Standalone => ZooKeeper::start_with(opts).map(Zk::Standalone),
        Topology::Ensemble => {
            let mut e = EnsembleOptions::default();
            e.jvm_flags.extend(opts.jvm_flags);
            ZooKeeperEnsemble::start_with(3, e).map(Zk::Ensemble)
        }
    })
    .await
    .expect("ZooKeeper start task")
    .unwrap_or_else(|e| panic!("{test}: starting ZooKeeper: {e}"));
    Some(server)
}

async fn next_event(events: &mut Events) -> WatchedEvent {
    timeout(DEADLINE, events.recv())
        .await
        .expect("timed out waiting for an event")
        .expect("events ended")
}

/// Waits for the first event matching `f`, skipping others (e.g. state changes), for
/// at most [`DEADLINE`].
async fn event_where(events: &mut Events, f: impl Fn(&WatchedEvent) -> bool) -> WatchedEvent {
    event_within(events, DEADLINE, f).await
}

/// Waits for the first event matching `f`, skipping others, for at most `limit`.
async fn event_within(
    events: &mut Events,
    limit: Duration,
    f: impl Fn(&WatchedEvent) -> bool,
) -> WatchedEvent {
    let matching = async {
        loop {
            let ev = events.recv().await.expect("events ended");
            if f(&ev) {
                return ev;
            }
        }
    };
    timeout(limit, matching)
        .await
        .unwrap_or_else(|_| panic!("no matching event within {limit:?}"))
}

struct Proxy {
    addr: String,
    /// While set, new connections are closed at once.
    blocked: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl Proxy {
    async fn start(upstream: String) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let blocked = Arc::new(AtomicBool::new(false));
        let conns: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let (b, c) = (blocked.clone(), conns.clone());
        tokio::spawn(async move {
            while let Ok((mut down, _)) = listener.accept().await {
                if b.load(Ordering::SeqCst) {
                    continue;
                }
                let upstream = upstream.clone();
                c.lock().unwrap().push(tokio::spawn(async move {
                    if let Ok(mut up) = TcpStream::connect(&upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut down, &mut up).await;
                    }
                }));
            }
        });
        Proxy {
            addr,
            blocked,
            conns,
        }
    }

    fn cut(&self) {
        for h in self.conns.lock().unwrap().drain(..) {
            h.abort();
        }
    }
}

async fn operations_against_real_zookeeper(topo: Topology) {
    let Some(server) = start_zookeeper(
        "operations_against_real_zookeeper",
        topo,
        ZkOptions::default().with_extended_types(),
    )
    .await
    else {
        return;
    };
    let cfg = |i: usize| ClientConfig::new([server.addr(i)]).with_session_timeout_ms(6_000);
    let (zk, mut events) = Client::connect(cfg(0)).await.unwrap();
    assert_eq!(
        next_event(&mut events).await.state,
        KeeperState::SyncConnected
    );
    assert!(zk.session_timeout_ms() >= 4_000);
    let (other, _other_events) = Client::connect(cfg(1)).await.unwrap();
    let base = "/coordd-client-ops".to_owned();
    let open = Acl::open_unsafe();

    zk.ensure_path(&format!("{base}/a/b")).await.unwrap();
    zk.ensure_path(&format!("{base}/a/b")).await.unwrap();
    assert_eq!(zk.get_all_children_number(&base).await.unwrap(), 2);

    // Sequential ephemerals, ephemeralOwner, getEphemerals.
    let seq = zk
        .create(
            &format!("{base}/a/s-"),
            b"x",
            &open,
            CreateMode::EphemeralSequential,
        )
        .await
        .unwrap();
    assert_eq!(seq, format!("{base}/a/s-0000000001"), "b was child 0");
    let (data, st) = zk.get_data(&seq, false).await.unwrap();
    assert_eq!(
        (data.as_slice(), st.ephemeral_owner),
        (&b"x"[..], zk.session_id())
    );
    assert_eq!(zk.get_ephemerals(&base).await.unwrap(), vec![seq.clone()]);
    assert!(matches!(
        zk.create(&seq, b"", &open, CreateMode::Persistent).await,
        Err(Error::Server(ErrorCode::NodeExists))
    ));
    let before = zk.last_zxid_seen();
    assert!(before > 0);

    // A data watch fires before the reply of the set that triggered it.
    let d = format!("{base}/a");
    zk.get_data(&d, true).await.unwrap();
    let st = other.set_data(&d, b"v1", Some(0)).await.unwrap();
    assert_eq!(st.version, 1);
    let ev = event_where(&mut events, |e| e.event_type != EventType::None).await;
    assert_eq!(
        (ev.event_type, ev.path.as_str()),
        (EventType::NodeDataChanged, d.as_str())
    );
    zk.get_data(&d, true).await.unwrap();
    zk.set_data(&d, b"v2", None).await.unwrap();
    assert_eq!(
        events
            .try_recv()
            .expect("own change's event before its reply")
            .event_type,
        EventType::NodeDataChanged
    );
    assert!(matches!(
        zk.set_data(&d, b"v3", Some(0)).await,
        Err(Error::Server(ErrorCode::BadVersion))
    ));

    // exists on a missing node arms a watch that fires on creation.
    let m = format!("{base}/missing");
    assert_eq!(zk.exists(&m, true).await.unwrap(), None);
    assert!(zk.watches().exist.contains(&m));
    other
        .create(&m, b"", &open, CreateMode::Persistent)
        .await
        .unwrap();
    let ev = event_where(&mut events, |e| e.event_type != EventType::None).await;
    assert_eq!(
        (ev.event_type, ev.path.as_str()),
        (EventType::NodeCreated, m.as_str())
    );
    assert!(zk.watches().is_empty());

    // Children.
    let (children, st) = zk.get_children2(&d, true).await.unwrap();
    assert_eq!(children.len(), 2);
    assert_eq!(st.num_children, 2);
    zk.delete(&seq, None).await.unwrap();
    let ev = event_where(&mut events, |e| e.event_type != EventType::None).await;
    assert_eq!(ev.event_type, EventType::NodeChildrenChanged);

    // multi: success, then a failure reporting the failing op.
    let t = format!("{base}/t");
    let results = zk
        .multi(vec![
            MultiOp::Create {
                op: OpCode::Create,
                req: CreateRequest {
                    path: t.clone(),
                    data: b"1".to_vec(),
                    acl: open.clone(),
                    flags: 0,
                },
                ttl: 0,
            },
            MultiOp::Check(CheckVersionRequest {
                path: t.clone(),
                version: 0,
            }),
            MultiOp::SetData(SetDataRequest {
                path: t.clone(),
                data: b"2".to_vec(),
                version: 0,
            }),
        ])
        .await
        .unwrap();
    assert!(matches!(results[0], MultiResult::Create { ref path } if *path == t));
    assert!(matches!(results[2], MultiResult::SetData { ref stat } if stat.version == 1));
    match zk
        .multi(vec![
            MultiOp::Check(CheckVersionRequest {
                path: t.clone(),
                version: 1,
            }),
            MultiOp::Delete(DeleteRequest {
                path: format!("{base}/nope"),
                version: -1,
            }),
            MultiOp::Delete(DeleteRequest {
                path: t.clone(),
                version: -1,
            }),
        ])
        .await
    {
        Err(Error::MultiFailed {
            index,
            code,
            results,
        }) => {
            assert_eq!((index, code), (1, ErrorCode::NoNode));
            assert_eq!(results.len(), 3);
        }
        other => panic!("{other:?}"),
    }
    let reads = zk
        .multi_read(vec![
            ReadOp::GetData(PathWatchRequest {
                path: t.clone(),
                watch: false,
            }),
            ReadOp::GetChildren(PathWatchRequest {
                path: format!("{base}/nope"),
                watch: false,
            }),
        ])
        .await
        .unwrap();
    assert!(matches!(reads[0], MultiResult::GetData { ref data, .. } if data == b"2"));
    assert_eq!(reads[1], MultiResult::Error(ErrorCode::NoNode));

    // TTL and container nodes, top-level check.
    let (p, st) = zk
        .create_ttl(
            &format!("{base}/ttl"),
            b"",
            &open,
            CreateMode::PersistentWithTtl,
            60_000,
        )
        .await
        .unwrap();
    assert_eq!(p, format!("{base}/ttl"));
    // ZooKeeper keeps the TTL / container marker internal: clients see
    // ephemeralOwner 0 for both (DataNode.copyStat -> getClientEphemeralOwner).
    assert_eq!(st.ephemeral_owner, 0);
    let (_, st) = zk
        .create_container(&format!("{base}/box"), b"", &open)
        .await
        .unwrap();
    assert_eq!(st.ephemeral_owner, 0);
    zk.check(&t, 1).await.unwrap();
    assert!(matches!(
        zk.check(&t, 7).await,
        Err(Error::Server(ErrorCode::BadVersion))
    ));
    assert!(matches!(
        zk.check(&format!("{base}/nope"), 0).await,
        Err(Error::Server(ErrorCode::NoNode))
    ));

    // ACLs and auth.
    zk.add_auth("digest", b"alice:secret").await.unwrap();
    let who = zk.who_am_i().await.unwrap();
    assert!(who
        .iter()
        .any(|c| c.auth_scheme == "digest" && c.user == "alice"));
    let private = format!("{base}/private");
    zk.create(&private, b"p", &Acl::creator_all(), CreateMode::Persistent)
        .await
        .unwrap();
    let (acl, _) = zk.get_acl(&private).await.unwrap();
    assert_eq!(acl[0].scheme, "digest");
    server.catch_up(&other, &private).await;
    assert!(matches!(
        other.get_data(&private, false).await,
        Err(Error::Server(ErrorCode::NoAuth))
    ));
    let st = zk.set_acl(&private, &open, Some(0)).await.unwrap();
    assert_eq!(st.aversion, 1);
    server.catch_up(&other, &private).await;
    other.get_data(&private, false).await.unwrap();

    // Persistent recursive watch, then removal.
    zk.add_watch(&base, AddWatchMode::PersistentRecursive)
        .await
        .unwrap();
    zk.check_watches(&base, WatcherType::Any).await.unwrap();
    other.set_data(&t, b"3", None).await.unwrap();
    other.set_data(&t, b"4", None).await.unwrap();
    for _ in 0..2 {
        let ev = event_where(&mut events, |e| e.event_type != EventType::None).await;
        assert_eq!(
            (ev.event_type, ev.path.as_str()),
            (EventType::NodeDataChanged, t.as_str())
        );
    }
    zk.remove_watches(&base, WatcherType::Any).await.unwrap();
    assert_eq!(
        next_event(&mut events).await.event_type,
        EventType::PersistentWatchRemoved
    );
    assert!(matches!(
        zk.check_watches(&base, WatcherType::Any).await,
        Err(Error::Server(ErrorCode::NoWatcher))
    ));
    zk.sync(&base).await.unwrap();

    // close deletes the session's ephemerals.
    let eph = zk
        .create(&format!("{base}/eph"), b"", &open, CreateMode::Ephemeral)
        .await
        .unwrap();
    let lease = zk.lease();
    assert!(lease > tokio::time::Instant::now());
    zk.close().await.unwrap();
    assert_eq!(zk.state(), SessionState::Closed);
    assert_eq!(
        event_where(&mut events, |e| e.event_type == EventType::None)
            .await
            .state,
        KeeperState::Closed
    );
    server.catch_up(&other, &eph).await;
    assert_eq!(other.exists(&eph, false).await.unwrap(), None);
    other.close().await.unwrap();
}

async fn reconnect_and_expiry_against_real_zookeeper(topo: Topology) {
    let Some(server) = start_zookeeper(
        "reconnect_and_expiry_against_real_zookeeper",
        topo,
        ZkOptions::default(),
    )
    .await
    else {
        return;
    };
    let proxy = Proxy::start(server.addr(0)).await;
    let cfg = ClientConfig::new([proxy.addr.clone()])
        .with_session_timeout_ms(4_000)
        .with_reconnect_backoff_ms(10, 200);
    let (zk, mut events) = Client::connect(cfg).await.unwrap();
    let (other, mut other_events) = Client::connect(ClientConfig::new([server.addr(1)]))
        .await
        .unwrap();
    let base = "/coordd-client-reconnect".to_owned();
    let open = Acl::open_unsafe();
    zk.ensure_path(&base).await.unwrap();
    let leader = format!("{base}/leader");
    zk.create(&leader, b"me", &open, CreateMode::Ephemeral)
        .await
        .unwrap();
    zk.get_data(&leader, true).await.unwrap();
    zk.add_watch(&base, AddWatchMode::PersistentRecursive)
        .await
        .unwrap();
    let cz = format!("{base}/c");
    assert_eq!(zk.exists(&cz, true).await.unwrap(), None);

    // Cut the connection: the client reconnects with its session and re-arms watches.
    proxy.cut();
    event_where(&mut events, |e| e.state == KeeperState::Disconnected).await;
    event_where(&mut events, |e| e.state == KeeperState::SyncConnected).await;
    other
        .create(&cz, b"", &open, CreateMode::Persistent)
        .await
        .unwrap();
    // Both the exist watch and the recursive watch fire (ZooKeeper delivers one event
    // per watch type to the client).
    let ev = event_where(&mut events, |e| e.event_type != EventType::None).await;
    assert_eq!(
        (ev.event_type, ev.path.as_str()),
        (EventType::NodeCreated, cz.as_str())
    );
    assert_eq!(zk.get_data(&leader, false).await.unwrap().0, b"me");

    // Keep it away for longer than the session timeout: the server expires it and
    // answers the next connect with timeout 0. The ephemeral disappears when the server
    // expires the session; `other` watches for that.
    server.catch_up(&other, &leader).await;
    assert!(other.exists(&leader, true).await.unwrap().is_some());
    proxy.blocked.store(true, Ordering::SeqCst);
    proxy.cut();
    event_where(&mut events, |e| e.state == KeeperState::Disconnected).await;
    // Fails the test if the server has not expired the session by then.
    event_within(&mut other_events, EXPIRY_DEADLINE, |e| {
        e.event_type == EventType::NodeDeleted && e.path == leader
    })
    .await;
    assert!(
        zk.lease() < tokio::time::Instant::now(),
        "lease still running after the server expired the session"
    );
    proxy.blocked.store(false, Ordering::SeqCst);
    event_where(&mut events, |e| e.state == KeeperState::Expired).await;
    assert_eq!(zk.state(), SessionState::Expired);
    assert!(matches!(
        zk.get_data(&base, false).await,
        Err(Error::SessionExpired)
    ));
    other.close().await.unwrap();
}

both_topologies!(async operations_against_real_zookeeper slow);
both_topologies!(async reconnect_and_expiry_against_real_zookeeper slow);
