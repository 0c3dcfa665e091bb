//! TLS (issue 7, items 1 and 2) with real coordd processes on 127.0.0.x: the TLS client
//! port with our client and with the `zookeeper-client` crate (`tls` feature); a plain-TCP
//! client on the TLS port closed at once; the connection caps counting TLS connections;
//! a 3-member ensemble over mutual TLS; a member and raw clients with another CA's
//! certificate refused on the peer port while the ensemble goes on; the router over TLS
//! (no PostgreSQL needed: it only reads the topology); half or bad TLS configuration
//! refused at start.
//!
//! The certificates come from a fresh test CA per test (`support/tls.rs`, the rcgen
//! helper behind `coordd tls-gen-test-ca`). Every wait has a deadline; every process is
//! killed on drop.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use coordd_client::{Acl, Client, ClientConfig, CreateMode, EventType};
use support::coordd::{coordd_bin, four_letter, wait_until, Coordd, CoorddEnsemble};
use support::tls::{free_addr_on, TestCa};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::timeout;

const WAIT: Duration = Duration::from_secs(10);

/// How fast a plain-TCP client on the TLS port must see its connection closed: well
/// under the handshake timeout the tests configure (3 s), so the close comes from the
/// failed handshake, not from the timeout.
const PLAIN_ON_TLS_CLOSE_MS: u64 = 1_000;
const HANDSHAKE_TIMEOUT_MS: u64 = 3_000;

fn tls_client(addr: SocketAddr, ca: &TestCa) -> ClientConfig {
    ClientConfig::new([addr.to_string()])
        .with_session_timeout_ms(2_000)
        .with_request_timeout_ms(5_000)
        .with_tls(ca.client_tls())
}

/// A standalone coordd with a TLS client port on 127.0.0.1 beside its plain one.
fn standalone_tls(ca: &TestCa, require_client_cert: bool, extra: &[&str]) -> (Coordd, SocketAddr) {
    let secure = free_addr_on(1);
    let mut args: Vec<String> = vec!["--tick-time-ms".into(), "100".into()];
    args.extend(ca.client_port_flags(secure, require_client_cert));
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let c = Coordd::start_with(&args);
    (c, secure)
}

/// Reads until the server closes (EOF or reset) or `limit` passes; returns the bytes
/// received and whether it closed in time.
fn read_until_closed(s: &mut TcpStream, limit: Duration) -> (Vec<u8>, bool) {
    let deadline = Instant::now() + limit;
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return (got, false);
        }
        s.set_read_timeout(Some(left)).unwrap();
        match s.read(&mut buf) {
            Ok(0) => return (got, true),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return (got, false)
            }
            // Reset: closed too.
            Err(_) => return (got, true),
        }
    }
}

/// A ZooKeeper ConnectRequest frame, as a plain client sends first.
fn connect_request_frame() -> Vec<u8> {
    let req = coordd_proto::ConnectRequest {
        protocol_version: 0,
        last_zxid_seen: 0,
        timeout_ms: 2_000,
        session_id: 0,
        passwd: vec![0; 16],
        read_only: false,
    };
    let mut out = bytes::BytesMut::new();
    coordd_proto::frame::write_frame(&mut out, |o| coordd_proto::Record::encode(&req, o));
    out.to_vec()
}

/// Our client over TLS (server checked against the CA, client certificate required):
/// create, get, set, a data watch firing, an ephemeral; the plain port keeps serving.
/// Without a client certificate, or trusting another CA, the connect fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_client_over_tls_on_a_standalone_coordd() {
    let ca = TestCa::new("tls test CA");
    let other = TestCa::new("another CA");
    let (server, secure) = standalone_tls(&ca, true, &[]);

    let (c, mut events) = timeout(WAIT, Client::connect(tls_client(secure, &ca)))
        .await
        .expect("connect in time")
        .expect("TLS connect");
    let open = Acl::open_unsafe();
    c.create("/tls", b"one", &open, CreateMode::Persistent)
        .await
        .unwrap();
    let (data, stat) = c.get_data("/tls", true).await.unwrap();
    assert_eq!((data.as_slice(), stat.version), (&b"one"[..], 0));
    let set = c.set_data("/tls", b"two", Some(0)).await.unwrap();
    assert_eq!(set.version, 1);
    let ev = timeout(WAIT, async {
        loop {
            let ev = events.recv().await.expect("events open");
            if ev.event_type == EventType::NodeDataChanged {
                return ev;
            }
        }
    })
    .await
    .expect("the watch fires over TLS");
    assert_eq!(ev.path, "/tls");
    c.create("/tls/e", b"", &open, CreateMode::Ephemeral)
        .await
        .unwrap();
    // Larger than a TLS record (16 KiB): replies span several records.
    let big = vec![7u8; 200 * 1024];
    c.set_data("/tls", &big, None).await.unwrap();
    assert_eq!(c.get_data("/tls", false).await.unwrap().0, big);

    // The plain port is still there, with the same tree.
    let (plain, _e) = Client::connect(
        ClientConfig::new([server.connect_string()]).with_session_timeout_ms(2_000),
    )
    .await
    .expect("plain connect");
    assert!(plain.exists("/tls/e", false).await.unwrap().is_some());
    plain.close().await.unwrap();
    let conf = four_letter(server.addr, "conf").expect("conf");
    assert!(
        conf.contains(&format!("secureClientPort={}", secure.port())),
        "{conf}"
    );
    c.close().await.unwrap();

    // A four-letter word over TLS.
    let tcp = tokio::net::TcpStream::connect(secure).await.unwrap();
    let connector = coordd_tls::TlsConnector::from(ca.rustls_client(Some(&ca)));
    let mut t = connector
        .connect(coordd_tls::server_name("127.0.0.1").unwrap(), tcp)
        .await
        .expect("TLS handshake");
    t.write_all(b"ruok").await.unwrap();
    t.flush().await.unwrap();
    let mut answer = Vec::new();
    let _ = timeout(WAIT, t.read_to_end(&mut answer))
        .await
        .expect("answered in time");
    assert_eq!(answer, b"imok");

    // No client certificate: the server requires one.
    let no_cert = ClientConfig::new([secure.to_string()])
        .with_request_timeout_ms(1_000)
        .with_tls(coordd_client::TlsConfig::new(&ca.files.ca));
    assert!(timeout(WAIT, Client::connect(no_cert))
        .await
        .expect("fails in time")
        .is_err());
    // Trusting another CA: the server's certificate does not verify.
    let wrong_ca = ClientConfig::new([secure.to_string()])
        .with_request_timeout_ms(1_000)
        .with_tls(other.client_tls());
    assert!(timeout(WAIT, Client::connect(wrong_ca))
        .await
        .expect("fails in time")
        .is_err());
    // A certificate file that does not exist is a configuration error, at once.
    let missing = ClientConfig::new([secure.to_string()])
        .with_tls(coordd_client::TlsConfig::new("/nonexistent/ca.pem"));
    match Client::connect(missing).await {
        Err(coordd_client::Error::InvalidArgument(m)) => {
            assert!(m.contains("/nonexistent/ca.pem"), "{m}")
        }
        Err(e) => panic!("expected InvalidArgument, got {e}"),
        Ok(_) => panic!("expected InvalidArgument, got a client"),
    }
}

/// Item 2: the `zookeeper-client` crate with its `tls` feature against coordd's TLS
/// port (server verified against the test CA, with a client certificate): create, get,
/// set, a data watch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zookeeper_client_crate_over_tls() {
    use zookeeper_client as zk;
    let ca = TestCa::new("tls test CA");
    let (_server, secure) = standalone_tls(&ca, true, &[]);
    let ca_pem = std::fs::read_to_string(&ca.files.ca).unwrap();
    let cert_pem = std::fs::read_to_string(&ca.files.client_cert).unwrap();
    let key_pem = std::fs::read_to_string(&ca.files.client_key).unwrap();
    let tls = zk::TlsOptions::no_ca()
        .with_pem_ca_certs(&ca_pem)
        .unwrap()
        .with_pem_identity(&cert_pem, &key_pem)
        .unwrap();
    let client = timeout(
        WAIT,
        support::zk_connector()
            .session_timeout(Duration::from_millis(2_000))
            .tls(tls)
            .secure_connect(&secure.to_string()),
    )
    .await
    .expect("connect in time")
    .expect("zookeeper-client TLS connect");

    let open = zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all());
    let (stat, _) = client.create("/zk-tls", b"hello", &open).await.unwrap();
    assert_eq!(stat.version, 0);
    let (data, _stat, watcher) = client.get_and_watch_data("/zk-tls").await.unwrap();
    assert_eq!(data, b"hello");
    let set = client.set_data("/zk-tls", b"world", Some(0)).await.unwrap();
    assert_eq!(set.version, 1);
    let ev = timeout(WAIT, watcher.changed())
        .await
        .expect("the watch fires over TLS");
    assert_eq!(ev.event_type, zk::EventType::NodeDataChanged);
    assert_eq!(ev.path, "/zk-tls");
    let (data, stat) = client.get_data("/zk-tls").await.unwrap();
    assert_eq!((data.as_slice(), stat.version), (&b"world"[..], 1));
    let children = client.list_children("/").await.unwrap();
    assert!(children.iter().any(|c| c == "zk-tls"), "{children:?}");
    client.delete("/zk-tls", None).await.unwrap();
}

/// A plain-TCP ZooKeeper client on the TLS port is closed at once (the handshake fails
/// on its first bytes; no hang until a timeout), whatever it sends; a client that sends
/// nothing is closed at `tls_handshake_timeout_ms`; the port keeps serving TLS clients.
#[test]
fn a_plain_tcp_client_on_the_tls_port_is_closed_cleanly() {
    let ca = TestCa::new("tls test CA");
    let timeout_ms = HANDSHAKE_TIMEOUT_MS.to_string();
    let (server, secure) = standalone_tls(&ca, false, &["--tls-handshake-timeout-ms", &timeout_ms]);

    for first_bytes in [connect_request_frame(), b"ruok".to_vec()] {
        let mut s = TcpStream::connect_timeout(&secure, Duration::from_secs(5)).unwrap();
        let start = Instant::now();
        s.write_all(&first_bytes).unwrap();
        let (got, closed) = read_until_closed(&mut s, Duration::from_millis(PLAIN_ON_TLS_CLOSE_MS));
        assert!(
            closed,
            "not closed within {PLAIN_ON_TLS_CLOSE_MS} ms (sent {:?})",
            &first_bytes[..4]
        );
        // At most a TLS alert record (content type 21), never a ZooKeeper answer.
        assert!(
            got.is_empty() || got[0] == 21,
            "unexpected bytes from the TLS port: {got:?}"
        );
        eprintln!(
            "plain client on the TLS port closed after {:?} ({} bytes of alert)",
            start.elapsed(),
            got.len()
        );
    }

    // Silent: closed by the handshake timeout, not before it and not much after.
    let mut s = TcpStream::connect_timeout(&secure, Duration::from_secs(5)).unwrap();
    let start = Instant::now();
    let (_, closed) =
        read_until_closed(&mut s, Duration::from_millis(HANDSHAKE_TIMEOUT_MS + 2_000));
    let took = start.elapsed();
    assert!(closed, "a silent connection was never closed");
    assert!(
        took >= Duration::from_millis(HANDSHAKE_TIMEOUT_MS - 100),
        "closed after {took:?}, before the handshake timeout"
    );

    // The server is fine: a TLS client still gets a session.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (c, _e) = timeout(WAIT, Client::connect(tls_client(secure, &ca)))
            .await
            .expect("in time")
            .expect("TLS connect after the plain clients");
        c.create("/after", b"", &Acl::open_unsafe(), CreateMode::Persistent)
            .await
            .unwrap();
        c.close().await.unwrap();
    });
    assert_eq!(four_letter(server.addr, "ruok").as_deref(), Some("imok"));
}

/// `connections_per_ip_max` counts TLS connections (also those still in their handshake)
/// together with plain ones: one more is closed at accept and logged.
#[test]
fn connection_caps_count_tls_connections() {
    let ca = TestCa::new("tls test CA");
    // A long handshake timeout: the two silent connections must hold their slots for the
    // whole test, however slow the machine.
    let (server, secure) = standalone_tls(
        &ca,
        false,
        &[
            "--connections-per-ip-max",
            "2",
            "--tls-handshake-timeout-ms",
            "60000",
        ],
    );
    // Two connections in their TLS handshake hold both slots of 127.0.0.1.
    let _a = TcpStream::connect_timeout(&secure, Duration::from_secs(5)).unwrap();
    let _b = TcpStream::connect_timeout(&secure, Duration::from_secs(5)).unwrap();
    let deadline = Instant::now() + WAIT;
    loop {
        let mut s = TcpStream::connect_timeout(&secure, Duration::from_secs(5)).unwrap();
        if read_until_closed(&mut s, Duration::from_millis(500)).1 {
            break;
        }
        // CI failed here once (2026-11-27) and could not be reproduced: say what the
        // server saw.
        assert!(
            Instant::now() < deadline,
            "timed out waiting for both TLS connections counted; coordd's log:\n{}",
            server.log()
        );
    }
    // The plain port shares the cap.
    let mut p = TcpStream::connect_timeout(&server.addr, Duration::from_secs(5)).unwrap();
    p.write_all(b"ruok").unwrap();
    let (got, closed) = read_until_closed(&mut p, Duration::from_secs(5));
    assert!(
        closed && got.is_empty(),
        "plain connection over the cap got {got:?}"
    );
    wait_until("the cap's log line", WAIT, || {
        server
            .log()
            .contains("connections_per_ip_max reached for this address")
    });
}

/// The peer addresses of an ensemble's members, from their `--ensemble` flag.
fn peer_addrs(ens: &CoorddEnsemble) -> Vec<SocketAddr> {
    let args = &ens.members[0].extra_args;
    let i = args.iter().position(|a| a == "--ensemble").unwrap();
    args[i + 1]
        .split(',')
        .map(|m| m.split_once('=').unwrap().1.parse().unwrap())
        .collect()
}

/// Writes on one member's TLS port, reads it (after sync) on another's.
async fn write_here_read_there(ca: &TestCa, write_at: SocketAddr, read_at: SocketAddr, path: &str) {
    let (w, _e) = timeout(WAIT, Client::connect(tls_client(write_at, ca)))
        .await
        .expect("connect in time")
        .expect("TLS connect to the writer's member");
    w.create(
        path,
        b"replicated",
        &Acl::open_unsafe(),
        CreateMode::Persistent,
    )
    .await
    .unwrap();
    let (r, _e) = timeout(WAIT, Client::connect(tls_client(read_at, ca)))
        .await
        .expect("connect in time")
        .expect("TLS connect to the reader's member");
    r.sync(path).await.unwrap();
    assert_eq!(r.get_data(path, false).await.unwrap().0, b"replicated");
    w.close().await.unwrap();
    r.close().await.unwrap();
}

/// A raw TLS client on a peer port that trusts the ensemble's CA but presents
/// `identity`'s certificate (None: no certificate): it never gets a byte of the peer
/// protocol; the connection ends (handshake error, alert or close) within `WAIT`.
async fn peer_port_refuses(peer: SocketAddr, ca: &TestCa, identity: Option<&TestCa>) {
    let tcp = tokio::net::TcpStream::connect(peer).await.unwrap();
    let connector = coordd_tls::TlsConnector::from(ca.rustls_client(identity));
    let name = coordd_tls::server_name(&peer.ip().to_string()).unwrap();
    let mut tls = match timeout(WAIT, connector.connect(name, tcp)).await {
        Err(_) => panic!("TLS connect to the peer port hung"),
        Ok(Err(_)) => return, // refused during the handshake
        Ok(Ok(s)) => s,
    };
    // TLS 1.3: the client finishes first; the server's verdict on our certificate
    // arrives as an alert. Send something like a peer hello; nothing may come back.
    let _ = tls.write_all(&[0, 0, 0, 8, 1, 2, 3, 4, 5, 6, 7, 8]).await;
    let _ = tls.flush().await;
    let mut buf = [0u8; 64];
    match timeout(WAIT, tls.read(&mut buf)).await {
        Err(_) => panic!("the peer port neither answered nor closed"),
        Ok(Ok(0)) | Ok(Err(_)) => {}
        Ok(Ok(n)) => panic!("the peer port answered {:?}", &buf[..n]),
    }
}

/// A 3-member ensemble over mutual TLS (peer ports) with TLS client ports: a write on
/// one member is read on another; the peer ports refuse plain TCP, clients without a
/// certificate and clients with another CA's certificate, and the ensemble keeps
/// working afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ensemble_over_mutual_tls() {
    let ca = TestCa::new("ensemble CA");
    let other = TestCa::new("another CA");
    let secure: Vec<SocketAddr> = (1..=3).map(free_addr_on).collect();
    let ens = {
        let (ca, secure) = (&ca, secure.clone());
        CoorddEnsemble::start_with_member_args(3, &[], move |i| {
            let mut v = ca.peer_flags();
            v.extend(ca.client_port_flags(secure[i - 1], true));
            v
        })
    };
    let leader = ens.wait_leader(&[0, 1, 2], WAIT);
    let follower = (leader + 1) % 3;
    write_here_read_there(&ca, secure[leader], secure[follower], "/mtls-1").await;
    write_here_read_there(&ca, secure[follower], secure[(leader + 2) % 3], "/mtls-2").await;

    let peers = peer_addrs(&ens);
    for &peer in &peers {
        peer_port_refuses(peer, &ca, Some(&other)).await;
        peer_port_refuses(peer, &ca, None).await;
        // Plain TCP with bytes that are not TLS: closed at once.
        let mut s = TcpStream::connect_timeout(&peer, Duration::from_secs(5)).unwrap();
        s.write_all(&[0, 0, 0, 8, 1, 2, 3, 4, 5, 6, 7, 8]).unwrap();
        let (got, closed) = read_until_closed(&mut s, WAIT);
        assert!(closed, "plain TCP on a TLS peer port was not closed");
        assert!(got.is_empty() || got[0] == 21, "answered {got:?}");
    }
    for m in &ens.members {
        wait_until("the refusals logged", WAIT, || {
            m.log()
                .contains("peer connection refused: TLS handshake failed")
        });
    }
    // Still one leader, still replicating.
    let leader = ens.wait_leader(&[0, 1, 2], WAIT);
    write_here_read_there(&ca, secure[(leader + 2) % 3], secure[leader], "/mtls-3").await;
}

/// A member whose certificate comes from another CA cannot join: members 1 and 2 (the
/// ensemble's CA) elect a leader and replicate; member 3 (another CA's certificate, and
/// trusting that CA only) is refused on both sides of every peer connection, logs it,
/// and never becomes a follower.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_with_another_cas_certificate_cannot_join() {
    let ca = TestCa::new("ensemble CA");
    let other = TestCa::new("another CA");
    let secure: Vec<SocketAddr> = (1..=3).map(free_addr_on).collect();
    let ens = {
        let (ca, other, secure) = (&ca, &other, secure.clone());
        CoorddEnsemble::start_with_member_args(3, &[], move |i| {
            let certs = if i == 3 { other } else { ca };
            let mut v = certs.peer_flags();
            v.extend(certs.client_port_flags(secure[i - 1], false));
            v
        })
    };
    let leader = ens.wait_leader(&[0, 1], WAIT);
    write_here_read_there(&ca, secure[leader], secure[1 - leader], "/without-3").await;
    // Member 3's calls are refused by 1 and 2, and 1 and 2 do not trust member 3's port.
    wait_until("members 1 and 2 refuse member 3", WAIT, || {
        ens.members[..2].iter().all(|m| {
            m.log()
                .contains("peer connection refused: TLS handshake failed")
        })
    });
    wait_until("member 3 sees its peers refuse it", WAIT, || {
        let log = ens.members[2].log();
        log.contains("TLS with") && log.contains("failed")
    });
    assert_ne!(ens.mode(2).as_deref(), Some("follower"));
    assert_ne!(ens.mode(2).as_deref(), Some("leader"));
    // Member 3 has no quorum, so it serves no client: its TLS port takes the handshake
    // but no session (the connect fails within the request timeout).
    let cfg = ClientConfig::new([secure[2].to_string()])
        .with_session_timeout_ms(2_000)
        .with_request_timeout_ms(1_500)
        .with_tls(other.client_tls());
    assert!(timeout(WAIT, Client::connect(cfg))
        .await
        .expect("fails in time")
        .is_err());
    // The two keep working.
    write_here_read_there(&ca, secure[1 - leader], secure[leader], "/without-3-again").await;
}

/// The router reads the topology from coordd over TLS (`RouterBuilder::coord_tls`): a
/// leader record written by a TLS client becomes the router's write route, and its
/// removal is seen. No PostgreSQL: routing needs only the records. A bad CA file is a
/// configuration error before anything connects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn router_reads_the_topology_over_tls() {
    use switchyard_proxy::namespace::Namespace;
    use switchyard_proxy::records::{self, LeaderRecord, LeaderState};
    use switchyard_proxy::router::{Error, Router};

    let ca = TestCa::new("tls test CA");
    let (_server, secure) = standalone_tls(&ca, true, &[]);
    let ns = Namespace::new("/switchyard", "main").unwrap();
    let (zk, _e) = timeout(WAIT, Client::connect(tls_client(secure, &ca)))
        .await
        .expect("in time")
        .expect("TLS connect");
    zk.ensure_path(&ns.members()).await.unwrap();
    let builder = || {
        Router::builder()
            .coord(&secure.to_string())
            .cluster("main")
            .root("/switchyard")
            .session_timeout_ms(2_000)
    };
    let router = timeout(WAIT, builder().coord_tls(ca.client_tls()).connect())
        .await
        .expect("router connects in time")
        .expect("router connects over TLS");
    assert!(router.topology().writable_endpoint().is_none());

    let rec = LeaderRecord {
        node: "pg-0".into(),
        host: "127.0.0.1".into(),
        port: 5432,
        state: LeaderState::Primary,
        since_ms: 0,
    };
    zk.create(
        &ns.leader(),
        &records::encode(&rec),
        &Acl::open_unsafe(),
        CreateMode::Ephemeral,
    )
    .await
    .unwrap();
    let mut rx = router.subscribe();
    timeout(WAIT, async {
        while !matches!(router.topology().writable_endpoint(), Some(e) if e.node == "pg-0") {
            rx.changed().await.expect("router alive");
        }
    })
    .await
    .expect("the router sees the leader over TLS");
    zk.delete(&ns.leader(), None).await.unwrap();
    timeout(WAIT, async {
        while router.topology().writable_endpoint().is_some() {
            rx.changed().await.expect("router alive");
        }
    })
    .await
    .expect("the router sees the leader go");
    zk.close().await.unwrap();

    match builder()
        .coord_tls(coordd_client::TlsConfig::new("/nonexistent/ca.pem"))
        .connect()
        .await
    {
        Err(Error::Config(m)) => assert!(m.contains("/nonexistent/ca.pem"), "{m}"),
        Err(e) => panic!("expected a configuration error, got {e}"),
        Ok(_) => panic!("expected a configuration error, got a router"),
    }
}

/// Runs `cmd` expecting it to exit by itself within `WAIT`; returns (exit code,
/// stdout, stderr).
fn run_to_exit(mut cmd: Command) -> (Option<i32>, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let (out_path, err_path) = (dir.path().join("stdout"), dir.path().join("stderr"));
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(std::fs::File::create(&err_path).unwrap())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    let deadline = Instant::now() + WAIT;
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{cmd:?} did not exit within {WAIT:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let read = |p: &std::path::Path| std::fs::read_to_string(p).unwrap();
    (status.code(), read(&out_path), read(&err_path))
}

/// Runs coordd with `args` (a fresh data dir) expecting it to exit by itself within
/// `WAIT`; returns (exit code, stderr).
fn run_coordd_expecting_exit(args: &[String]) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(coordd_bin());
    cmd.arg("--data-dir")
        .arg(dir.path().join("data"))
        .arg("--client-addr")
        .arg(free_addr_on(1).to_string())
        .args(args);
    let (code, _, err) = run_to_exit(cmd);
    (code, err)
}

/// Half a TLS configuration is refused with exit code 2 and a message naming what is
/// missing; a certificate file that is missing, not PEM, or whose key does not match is
/// refused at start (exit 1, naming the file) before any port serves; no panic.
#[test]
fn half_or_bad_tls_configuration_is_refused_at_start() {
    let ca = TestCa::new("tls test CA");
    let other = TestCa::new("another CA");
    let p = |p: &std::path::Path| p.display().to_string();
    let f = &ca.files;
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    let secure = free_addr_on(1).to_string();
    for (args, needle) in [
        (
            s(&["--secure-client-addr", &secure]),
            "missing tls_cert_file, tls_key_file",
        ),
        (
            s(&[
                "--tls-cert-file",
                &p(&f.node_cert),
                "--tls-key-file",
                &p(&f.node_key),
            ]),
            "missing secure_client_addr",
        ),
        (
            s(&[
                "--id",
                "1",
                "--ensemble",
                "1=127.0.0.1:1",
                "--peer-tls-cert-file",
                &p(&f.node_cert),
            ]),
            "missing peer_tls_key_file, peer_tls_ca_file",
        ),
    ] {
        let (code, err) = run_coordd_expecting_exit(&args);
        assert_eq!(code, Some(2), "{args:?}: {err}");
        assert!(
            err.contains(needle),
            "{args:?}: {err:?} should contain {needle:?}"
        );
        assert!(!err.contains("panicked"), "{err}");
    }
    let not_pem = ca.files.dir.join("not.pem");
    std::fs::write(&not_pem, "hello\n").unwrap();
    for (cert, key, named) in [
        (p(&f.dir.join("missing.pem")), p(&f.node_key), "missing.pem"),
        (p(&not_pem), p(&f.node_key), "not.pem"),
        (p(&f.node_cert), p(&other.files.node_key), "node-key.pem"),
    ] {
        let args = s(&[
            "--secure-client-addr",
            &secure,
            "--tls-cert-file",
            &cert,
            "--tls-key-file",
            &key,
        ]);
        let (code, err) = run_coordd_expecting_exit(&args);
        assert_eq!(code, Some(1), "{args:?}: {err}");
        assert!(err.contains(named), "{err:?} should name {named}");
        assert!(!err.contains("panicked"), "{err}");
    }
    // The same for a member's peer files.
    let peer = free_addr_on(1);
    let args = s(&[
        "--id",
        "1",
        "--ensemble",
        &format!("1={peer}"),
        "--peer-tls-cert-file",
        &p(&f.node_cert),
        "--peer-tls-key-file",
        &p(&f.node_key),
        "--peer-tls-ca-file",
        &p(&not_pem),
    ]);
    let (code, err) = run_coordd_expecting_exit(&args);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("not.pem"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

/// `coordd tls-gen-test-ca --out DIR` writes the PEM files the other tests use.
#[test]
fn tls_gen_test_ca_writes_a_usable_ca() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("ca");
    let st = Command::new(coordd_bin())
        .args(["tls-gen-test-ca", "--out"])
        .arg(&out)
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(st.success());
    let files = coordd_tls::test_ca::TestCaFiles::in_dir(&out);
    coordd_tls::server_config(&files.node_cert, &files.node_key, Some(&files.ca)).unwrap();
    coordd_tls::client_config(&files.ca, Some((&files.client_cert, &files.client_key))).unwrap();
}

/// Runs `switchyard` with `args`, expecting it to exit by itself within `WAIT`.
fn run_switchyard(args: &[String]) -> (Option<i32>, String, String) {
    let mut cmd = Command::new(support::agent::switchyard_bin());
    cmd.args(args);
    run_to_exit(cmd)
}

/// The operator commands beside the agent, `switchyard status` and `switchyard
/// switchover`, reach coordd's TLS port with the agent's `coord_tls_*` settings as
/// flags: status shows the master a TLS client published; half a TLS setting is a usage
/// error (exit 2) for both commands, before anything connects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switchyard_status_and_switchover_connect_over_tls() {
    use switchyard_proxy::namespace::{Namespace, ROOT_DEFAULT};
    use switchyard_proxy::records::{self, LeaderRecord, LeaderState};

    let ca = TestCa::new("tls test CA");
    let (_coordd, secure) = standalone_tls(&ca, true, &[]);
    let (client, _events) = Client::connect(tls_client(secure, &ca)).await.unwrap();
    let ns = Namespace::new(ROOT_DEFAULT, "tls-cli").unwrap();
    client.ensure_path(ns.cluster()).await.unwrap();
    let leader = LeaderRecord {
        node: "pg1".into(),
        host: "127.0.0.1".into(),
        port: 5432,
        state: LeaderState::Primary,
        since_ms: 0,
    };
    client
        .create(
            &ns.leader(),
            &records::encode(&leader),
            &Acl::open_unsafe(),
            CreateMode::Persistent,
        )
        .await
        .unwrap();

    let f = &ca.files;
    let path = |p: &std::path::Path| p.display().to_string();
    let tls_flags = vec![
        "--coord-tls-ca-file".to_string(),
        path(&f.ca),
        "--coord-tls-cert-file".into(),
        path(&f.client_cert),
        "--coord-tls-key-file".into(),
        path(&f.client_key),
    ];
    let mut status: Vec<String> = ["status", "--cluster", "tls-cli", "--json", "--coord"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    status.push(secure.to_string());
    let (code, out, err) = run_switchyard(&[status.clone(), tls_flags.clone()].concat());
    assert_eq!(code, Some(0), "status over TLS failed: {err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("status --json prints JSON");
    assert_eq!(v["master"]["node"], "pg1", "status: {out}");

    // Half a TLS setting: refused as a usage error by both commands.
    for cmd in [
        status.clone(),
        [
            "switchover",
            "--cluster",
            "tls-cli",
            "--to",
            "pg2",
            "--coord",
        ]
        .iter()
        .map(|s| s.to_string())
        .chain([secure.to_string()])
        .collect(),
    ] {
        let half = vec!["--coord-tls-cert-file".to_string(), path(&f.client_cert)];
        let (code, _, err) = run_switchyard(&[cmd.clone(), half].concat());
        assert_eq!(code, Some(2), "{cmd:?} with half a TLS setting: {err}");
        assert!(err.contains("coord_tls_ca_file"), "{cmd:?}: {err}");
    }
    client.close().await.unwrap();
}
