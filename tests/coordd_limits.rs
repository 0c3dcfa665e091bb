//! coordd's bounded resources (issue 7, item 4), each against a real coordd process at
//! the byte level: connections in total and per IP, outstanding requests (count and
//! bytes) per connection, watches per session, node data size and slow readers. Each test hits its
//! limit, checks what the client sees, that the server logged the limit by name with
//! its value, and that the server keeps serving everyone else.

mod support;

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use coordd_proto::{
    frame::write_frame, xid, Acl, AddWatchMode, AddWatchRequest, CreateRequest, ErrorCode, MultiOp,
    MultiResult, OpCode, PathWatchRequest, Reader, Record, Request, SetDataRequest, SetWatches2,
    StatResponse, WatcherEvent,
};
use support::coordd::{four_letter, wait_until, Coordd};
use support::raw::{read_frame, RawConn};

const WAIT: Duration = Duration::from_secs(10);

fn create(path: &str, data: Vec<u8>) -> Request {
    Request::Create {
        op: OpCode::Create,
        req: CreateRequest {
            path: path.into(),
            data,
            acl: Acl::open_unsafe(),
            flags: 0,
        },
        ttl: 0,
    }
}

fn set_data(path: &str, data: Vec<u8>) -> Request {
    Request::SetData(SetDataRequest {
        path: path.into(),
        data,
        version: -1,
    })
}

fn get_data(path: &str, watch: bool) -> Request {
    Request::GetData(PathWatchRequest {
        path: path.into(),
        watch,
    })
}

fn exists(path: &str, watch: bool) -> Request {
    Request::Exists(PathWatchRequest {
        path: path.into(),
        watch,
    })
}

/// The reply's error code; panics on an unexpected close.
fn err_of(c: &mut RawConn, req: &Request) -> i32 {
    c.call(req).0.header.err
}

/// The first line of the server's log that contains every one of `needles`, once one
/// does (the log is written by another process: wait for it).
fn wait_log_line(server: &Coordd, needles: &[&str]) -> String {
    let mut found = String::new();
    wait_until(
        &format!("a log line with {needles:?}"),
        WAIT,
        || match server
            .log()
            .lines()
            .find(|l| needles.iter().all(|n| l.contains(n)))
        {
            Some(l) => {
                found = l.to_string();
                true
            }
            None => false,
        },
    );
    found
}

/// A numeric `mntr` value, None if the server did not answer.
fn try_mntr(addr: SocketAddr, key: &str) -> Option<i64> {
    let out = four_letter(addr, "mntr")?;
    out.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix('\t'))?
        .trim()
        .parse()
        .ok()
}

/// A numeric `mntr` value.
fn mntr(addr: SocketAddr, key: &str) -> i64 {
    try_mntr(addr, key).unwrap_or_else(|| panic!("no {key} in mntr"))
}

/// A new session from `from`, once the server takes one (the slot of a closed
/// connection is released by the server a moment after the client sees the close; an
/// ensemble member serves clients once it hears from a quorum).
fn session_once_accepted(from: IpAddr, addr: SocketAddr) -> RawConn {
    let mut conn = None;
    wait_until("a connection slot to free up", WAIT, || {
        conn = RawConn::tcp_from(from, addr)
            .ok()
            .and_then(|s| RawConn::try_new_session_over(s, 2000));
        conn.is_some()
    });
    conn.expect("set when the wait succeeded")
}

/// A `VmXxx:` value of /proc/<pid>/status, in KiB.
fn proc_status_kib(pid: u32, key: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {key} in /proc/{pid}/status"))
}

/// True when the server closed `s` (EOF or reset) rather than answering.
fn closed_by_server(s: &mut std::net::TcpStream) -> bool {
    let mut buf = [0u8; 1];
    matches!(s.read(&mut buf), Ok(0) | Err(_))
}

#[test]
fn connections_max_refuses_the_next_connection_and_keeps_the_others() {
    let server = Coordd::start_with(&["--tick-time-ms", "100", "--connections-max", "2"]);
    let mut a = RawConn::new_session(server.addr, 2000);
    let mut b = RawConn::new_session(server.addr, 2000);
    let mut third = RawConn::tcp(server.addr);
    assert!(
        closed_by_server(&mut third),
        "the third connection is closed"
    );
    let line = wait_log_line(&server, &["connections_max reached", "limit=2"]);
    assert!(line.contains("127.0.0.1"), "the peer is named: {line}");
    // The two held connections are served as before.
    assert_eq!(err_of(&mut a, &create("/a", b"1".to_vec())), 0);
    assert_eq!(err_of(&mut b, &exists("/a", false)), 0);
    // A slot frees up when one goes.
    drop(b);
    let mut c = session_once_accepted(IpAddr::V4(Ipv4Addr::LOCALHOST), server.addr);
    assert_eq!(err_of(&mut c, &exists("/a", false)), 0);
}

#[test]
fn connections_per_ip_max_is_per_address() {
    let server = Coordd::start_with(&["--tick-time-ms", "100", "--connections-per-ip-max", "2"]);
    let one = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1));
    let two = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
    let mut held: Vec<RawConn> = (0..2)
        .map(|_| RawConn::new_session_over(RawConn::tcp_from(one, server.addr).unwrap(), 2000))
        .collect();
    let mut refused = RawConn::tcp_from(one, server.addr).unwrap();
    assert!(
        closed_by_server(&mut refused),
        "a third connection from 127.0.0.1 is closed"
    );
    let line = wait_log_line(&server, &["connections_per_ip_max reached", "limit=2"]);
    assert!(
        line.contains("peer=127.0.0.1:"),
        "the peer is named: {line}"
    );

    // Another address has slots of its own.
    let mut others: Vec<RawConn> = (0..2)
        .map(|_| RawConn::new_session_over(RawConn::tcp_from(two, server.addr).unwrap(), 2000))
        .collect();
    let mut refused2 = RawConn::tcp_from(two, server.addr).unwrap();
    assert!(
        closed_by_server(&mut refused2),
        "a third connection from 127.0.0.2 is closed too"
    );
    wait_log_line(
        &server,
        &["connections_per_ip_max reached", "peer=127.0.0.2:"],
    );
    for c in held.iter_mut().chain(others.iter_mut()) {
        assert_eq!(err_of(c, &exists("/", false)), 0, "held connections work");
    }
    // A slot of 127.0.0.1 frees up when one of its connections goes.
    held.pop();
    let mut again = session_once_accepted(one, server.addr);
    assert_eq!(err_of(&mut again, &exists("/", false)), 0);
}

#[test]
fn outstanding_requests_max_stops_reading_and_loses_nothing() {
    const LIMIT: i64 = 4;
    const WRITES: usize = 300;
    let server = Coordd::start_with(&[
        "--tick-time-ms",
        "100",
        "--outstanding-requests-max",
        &LIMIT.to_string(),
    ]);
    let mut c = RawConn::new_session(server.addr, 2000);
    assert_eq!(err_of(&mut c, &create("/o", Vec::new())), 0);

    // Pipeline WRITES fsynced writes without reading a reply. The server takes at most
    // LIMIT of them into its core at a time; the rest wait in the socket.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = sample_outstanding(server.addr, stop.clone());
    let mut xids = Vec::with_capacity(WRITES);
    for i in 0..WRITES {
        xids.push(c.send(&set_data("/o", format!("{i}").into_bytes())));
    }
    let line = wait_log_line(&server, &["outstanding_requests_max", "limit=4"]);
    assert!(
        line.contains(&format!("session_id=0x{:x}", c.session_id)),
        "the session is named: {line}"
    );
    // Another client is served meanwhile.
    let mut other = RawConn::new_session(server.addr, 2000);
    assert_eq!(err_of(&mut other, &exists("/o", false)), 0);

    // Every write is answered, in order, and applied.
    for (i, want) in xids.iter().enumerate() {
        let f = c.recv().expect("reply");
        assert_eq!(f.header.xid, *want, "reply {i} in order");
        assert_eq!(f.header.err, 0);
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (max, samples) = sampler.join().unwrap();
    println!("outstanding requests: max {max} over {samples} mntr samples");
    // mntr's gauge counts every connection's requests and the limit is per connection:
    // the other client's one request may be in the core at a sample too.
    assert!(
        max <= LIMIT + 1,
        "{max} requests outstanding, over the limit of {LIMIT} (+1 of the other client)"
    );
    let (f, _) = c.call(&exists("/o", false));
    let stat = StatResponse::from_bytes(&f.body).unwrap().stat;
    assert_eq!(stat.version as usize, WRITES);
}

/// Spawns a thread that samples `mntr`'s zk_outstanding_requests until `stop`; it
/// returns the largest value seen and the number of samples.
fn sample_outstanding(
    addr: SocketAddr,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<(i64, usize)> {
    std::thread::spawn(move || {
        let mut max = 0;
        let mut samples = 0;
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            if let Some(n) = try_mntr(addr, "zk_outstanding_requests") {
                max = max.max(n);
                samples += 1;
            }
        }
        (max, samples)
    })
}

#[test]
fn outstanding_bytes_max_bounds_the_bytes_of_pipelined_requests() {
    const BYTES_MAX: usize = 200_000;
    const DATA: usize = 45_000; // four requests fit, a fifth would not
    const WRITES: usize = 60;
    let server = Coordd::start_with(&[
        "--tick-time-ms",
        "100",
        "--outstanding-bytes-max",
        &BYTES_MAX.to_string(),
    ]);
    let mut c = RawConn::new_session(server.addr, 2000);
    assert_eq!(err_of(&mut c, &create("/b", Vec::new())), 0);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = sample_outstanding(server.addr, stop.clone());
    // 60 x 45 KB of fsynced writes, pipelined, no reply read until all are sent.
    let xids: Vec<i32> = (0..WRITES)
        .map(|i| c.send(&set_data("/b", vec![i as u8; DATA])))
        .collect();
    let line = wait_log_line(&server, &["outstanding_bytes_max", "limit=200000"]);
    assert!(
        line.contains(&format!("session_id=0x{:x}", c.session_id)),
        "the session is named: {line}"
    );
    for (i, want) in xids.iter().enumerate() {
        let f = c.recv().expect("reply");
        assert_eq!((f.header.xid, f.header.err), (*want, 0), "reply {i}");
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (max, samples) = sampler.join().unwrap();
    println!("outstanding requests of 45 KB: max {max} over {samples} mntr samples");
    assert!(
        max as usize <= BYTES_MAX / DATA,
        "{max} requests of {DATA} bytes outstanding, over {BYTES_MAX} bytes"
    );
    // A request larger than the bound alone still goes through.
    assert_eq!(err_of(&mut c, &set_data("/b", vec![9; 300_000])), 0);
    let (f, _) = c.call(&exists("/b", false));
    let stat = StatResponse::from_bytes(&f.body).unwrap().stat;
    assert_eq!(stat.version as usize, WRITES + 1);
}

#[test]
fn watches_per_session_max_refuses_the_read_that_would_pass_it() {
    let server = Coordd::start_with(&["--tick-time-ms", "100", "--watches-per-session-max", "5"]);
    let mut a = RawConn::new_session(server.addr, 2000);
    for i in 0..8 {
        assert_eq!(err_of(&mut a, &create(&format!("/w{i}"), b"x".to_vec())), 0);
    }
    for i in 0..5 {
        assert_eq!(err_of(&mut a, &get_data(&format!("/w{i}"), true)), 0);
    }
    let quota = ErrorCode::QuotaExceeded.code();
    // A sixth registration of any kind is refused, whole; nothing is registered.
    assert_eq!(err_of(&mut a, &get_data("/w5", true)), quota);
    assert_eq!(err_of(&mut a, &exists("/missing", true)), quota);
    let add_watch = Request::AddWatch(AddWatchRequest {
        path: "/w6".into(),
        mode: AddWatchMode::PersistentRecursive.code(),
    });
    assert_eq!(err_of(&mut a, &add_watch), quota);
    let line = wait_log_line(&server, &["watches_per_session_max", "limit=5"]);
    assert!(
        line.contains(&format!("session_id=0x{:x}", a.session_id)) && line.contains("held=5"),
        "the session and its count are named: {line}"
    );
    // Reads that register nothing new are served: without a watch, or on a path the
    // session already watches.
    assert_eq!(err_of(&mut a, &get_data("/w5", false)), 0);
    assert_eq!(err_of(&mut a, &exists("/w0", true)), 0);
    // The limit is per session.
    let mut b = RawConn::new_session(server.addr, 2000);
    assert_eq!(err_of(&mut b, &get_data("/w5", true)), 0);
    assert_eq!(err_of(&mut b, &add_watch), 0);

    // The refused watch does not exist: a change of /w5 notifies b, never a.
    // A fired one-shot watch frees its place.
    let (_, events) = b.call(&set_data("/w5", b"y".to_vec()));
    assert_eq!(events.len(), 1, "b's event comes before its reply");
    let ev = WatcherEvent::from_bytes(&events[0].body).unwrap();
    assert_eq!(
        (events[0].header.xid, ev.path.as_str()),
        (xid::NOTIFICATION, "/w5")
    );
    assert_eq!(err_of(&mut b, &set_data("/w0", b"y".to_vec())), 0);
    let (reply, events) = a.call(&get_data("/w6", true));
    let paths: Vec<String> = events
        .iter()
        .map(|f| WatcherEvent::from_bytes(&f.body).unwrap().path)
        .collect();
    assert_eq!(paths, ["/w0"], "a hears of /w0 and nothing of /w5");
    assert_eq!(reply.header.err, 0, "the fired /w0 watch made room for /w6");
    let last_zxid = reply.header.zxid;

    // A reconnect whose setWatches would pass the limit: the connection is closed (an
    // error reply would be ignored by clients, who would then trust watches they do
    // not have), the session and its watches stay.
    let set_watches = |c: &mut RawConn, w: &SetWatches2| {
        let mut out = BytesMut::new();
        write_frame(&mut out, |o| {
            Request::SetWatches(w.clone()).encode_with_header(xid::SET_WATCHES, o)
        });
        c.stream.write_all(&out).unwrap();
    };
    let held: Vec<String> = ["/w1", "/w2", "/w3", "/w4", "/w6"]
        .map(String::from)
        .to_vec();
    let too_many = SetWatches2 {
        relative_zxid: last_zxid,
        data_watches: held.clone(),
        persistent_watches: vec!["/w7".into()],
        ..Default::default()
    };
    let (mut a2, resp) = RawConn::resume(server.addr, a.session_id, &a.passwd, last_zxid);
    assert_eq!(resp.session_id, a.session_id);
    set_watches(&mut a2, &too_many);
    assert!(
        read_frame(&mut a2.stream).is_none(),
        "a setWatches past the limit closes the connection"
    );
    wait_log_line(
        &server,
        &["watches_per_session_max", "SetWatches2", "adding=2"],
    );
    // The same watches alone fit (they are held already): served on the next reconnect.
    let fits = SetWatches2 {
        relative_zxid: last_zxid,
        data_watches: held,
        ..Default::default()
    };
    let (mut a3, resp) = RawConn::resume(server.addr, a.session_id, &a.passwd, last_zxid);
    assert_eq!(resp.session_id, a.session_id, "the session survived");
    set_watches(&mut a3, &fits);
    let f = a3.recv().expect("setWatches reply");
    assert_eq!((f.header.xid, f.header.err), (xid::SET_WATCHES, 0));
    assert_eq!(err_of(&mut b, &set_data("/w6", b"z".to_vec())), 0);
    let f = a3.recv().expect("the /w6 watch still fires");
    assert_eq!(WatcherEvent::from_bytes(&f.body).unwrap().path, "/w6");
    assert!(mntr(server.addr, "zk_limit_hits") >= 4);
}

#[test]
fn node_data_bytes_max_refuses_the_write_and_keeps_the_connection() {
    let server = Coordd::start_with(&[
        "--tick-time-ms",
        "100",
        "--node-data-bytes-max",
        "1000",
        "--frame-bytes-max",
        "8192",
    ]);
    let mut c = RawConn::new_session(server.addr, 2000);
    let quota = ErrorCode::QuotaExceeded.code();
    assert_eq!(
        err_of(&mut c, &create("/d", vec![1; 1000])),
        0,
        "at the limit"
    );
    assert_eq!(err_of(&mut c, &create("/e", vec![1; 1001])), quota);
    let line = wait_log_line(
        &server,
        &["node_data_bytes_max", "bytes=1001", "limit=1000"],
    );
    assert!(
        line.contains(&format!("session_id=0x{:x}", c.session_id)),
        "the session is named: {line}"
    );
    assert_eq!(
        err_of(&mut c, &exists("/e", false)),
        ErrorCode::NoNode.code()
    );
    assert_eq!(err_of(&mut c, &set_data("/d", vec![2; 5000])), quota);
    let (f, _) = c.call(&get_data("/d", false));
    assert_eq!(f.header.err, 0);
    assert!(
        f.body.windows(1000).any(|w| w.iter().all(|&b| b == 1)),
        "the data is unchanged"
    );

    // A multi carrying a big setData fails whole, in ZooKeeper's shape of a failed
    // multi: the ops before 0, the refused one QuotaExceeded, the rest
    // RuntimeInconsistency.
    let ops = vec![
        MultiOp::Create {
            op: OpCode::Create,
            req: CreateRequest {
                path: "/m1".into(),
                data: b"small".to_vec(),
                acl: Acl::open_unsafe(),
                flags: 0,
            },
            ttl: 0,
        },
        MultiOp::SetData(SetDataRequest {
            path: "/d".into(),
            data: vec![3; 2000],
            version: -1,
        }),
        MultiOp::Delete(coordd_proto::DeleteRequest {
            path: "/d".into(),
            version: -1,
        }),
    ];
    let (f, _) = c.call(&Request::Multi(ops));
    assert_eq!(f.header.err, 0);
    let results = MultiResult::decode_all(&mut Reader::new(&f.body)).unwrap();
    assert_eq!(
        results,
        vec![
            MultiResult::Error(ErrorCode::Ok),
            MultiResult::Error(ErrorCode::QuotaExceeded),
            MultiResult::Error(ErrorCode::RuntimeInconsistency),
        ]
    );
    assert_eq!(
        err_of(&mut c, &exists("/m1", false)),
        ErrorCode::NoNode.code(),
        "nothing of the multi applied"
    );
    assert_eq!(err_of(&mut c, &exists("/d", false)), 0);

    // A frame over frame_bytes_max closes the connection, as ZooKeeper does past
    // jute.maxbuffer; everyone else is served.
    let mut big = RawConn::new_session(server.addr, 2000);
    let _ = big.try_send(&create("/huge", vec![0; 10_000]));
    assert!(read_frame(&mut big.stream).is_none());
    wait_log_line(&server, &["frame_bytes_max"]);
    assert_eq!(err_of(&mut c, &create("/f", vec![4; 999])), 0);
}

#[test]
fn a_slow_reader_is_cut_off_at_outbound_bytes_max_and_memory_stays_bounded() {
    const NODE_BYTES: usize = 100_000;
    const REQUESTS: usize = 5_000; // 500 MB of replies if nothing stopped them
    let server = Coordd::start_with(&["--tick-time-ms", "100", "--outbound-bytes-max", "1048576"]);
    let pid = server.pid().expect("running");
    let mut writer = RawConn::new_session(server.addr, 2000);
    assert_eq!(err_of(&mut writer, &create("/big", vec![7; NODE_BYTES])), 0);
    let rss_before = proc_status_kib(pid, "VmRSS");

    // Ask for getData of /big over and over and never read.
    let mut slow = RawConn::new_session(server.addr, 2000);
    let get = get_data("/big", false);
    let started = Instant::now();
    let mut sent = 0;
    for _ in 0..REQUESTS {
        if slow.try_send(&get).is_err() {
            break; // the server closed us while we were still sending
        }
        sent += 1;
    }
    let line = wait_log_line(&server, &["outbound_bytes_max", "limit=1048576"]);
    assert!(
        line.contains(&format!("session_id=0x{:x}", slow.session_id)),
        "the session is named: {line}"
    );
    // Its connection is gone: draining it ends in EOF, not in every reply.
    let mut replies = 0;
    while slow.recv().is_some() {
        replies += 1;
    }
    println!(
        "slow reader: {sent} requests sent, {replies} replies before EOF, cut off after {:?}",
        started.elapsed()
    );
    assert!(replies < sent, "got all {replies} replies");

    // Memory: the peak over the whole run and the present size stay near where they
    // were (1 MiB of queue plus buffers), far below the 500 MB asked for.
    let peak = proc_status_kib(pid, "VmHWM");
    let rss_after = proc_status_kib(pid, "VmRSS");
    println!("coordd RSS: {rss_before} KiB before, {rss_after} KiB after, peak {peak} KiB");
    assert!(
        peak < rss_before + 64 * 1024,
        "peak RSS {peak} KiB vs {rss_before} KiB before"
    );
    assert!(rss_after < rss_before + 32 * 1024);

    // Everyone else is served.
    let (f, _) = writer.call(&get_data("/big", false));
    assert_eq!(f.header.err, 0);
    assert_eq!(four_letter(server.addr, "ruok").as_deref(), Some("imok"));
}

/// Both clients the project relies on get the limits as ordinary errors and keep their
/// sessions: the independent `zookeeper-client` crate and ours (the router's).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_see_quota_exceeded_and_keep_their_session() {
    use zookeeper_client as zk;
    let server = Coordd::start_with(&[
        "--tick-time-ms",
        "100",
        "--watches-per-session-max",
        "2",
        "--node-data-bytes-max",
        "100",
    ]);
    let open = zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all());
    let zkc = tokio::time::timeout(
        WAIT,
        support::zk_connector()
            .session_timeout(Duration::from_millis(2000))
            .connect(&server.connect_string()),
    )
    .await
    .expect("connect in time")
    .expect("connect");
    assert_eq!(
        zkc.create("/z", &[0; 101], &open).await.unwrap_err(),
        zk::Error::QuotaExceeded
    );
    zkc.create("/z", &[0; 100], &open).await.unwrap();
    assert_eq!(
        zkc.set_data("/z", &[0; 101], None).await.unwrap_err(),
        zk::Error::QuotaExceeded
    );
    for p in ["/z1", "/z2", "/z3"] {
        zkc.create(p, b"", &open).await.unwrap();
    }
    // Held: this crate removes a watch from the server when its watcher is dropped.
    let _w1 = zkc.get_and_watch_data("/z1").await.unwrap();
    let _w2 = zkc.get_and_watch_data("/z2").await.unwrap();
    assert_eq!(
        zkc.get_and_watch_data("/z3").await.unwrap_err(),
        zk::Error::QuotaExceeded
    );
    assert_eq!(zkc.get_data("/z3").await.unwrap().0, b"");

    let cfg = coordd_client::ClientConfig::new([server.addr.to_string()])
        .with_session_timeout_ms(2_000)
        .with_request_timeout_ms(5_000);
    let (ours, _events) = tokio::time::timeout(WAIT, coordd_client::Client::connect(cfg))
        .await
        .expect("connect in time")
        .expect("connect");
    let quota = coordd_client::Error::Server(ErrorCode::QuotaExceeded);
    let acl = Acl::open_unsafe();
    let persistent = coordd_proto::CreateMode::Persistent;
    assert_eq!(
        ours.create("/o", &[0; 101], &acl, persistent)
            .await
            .unwrap_err()
            .to_string(),
        quota.to_string()
    );
    ours.get_data("/z1", true).await.unwrap();
    ours.exists("/nothing", true).await.unwrap();
    assert_eq!(
        ours.get_data("/z2", true).await.unwrap_err().to_string(),
        quota.to_string()
    );
    assert_eq!(
        ours.add_watch("/z", AddWatchMode::Persistent)
            .await
            .unwrap_err()
            .to_string(),
        quota.to_string()
    );
    // Both sessions are alive and served.
    ours.create("/o", &[0; 100], &acl, persistent)
        .await
        .unwrap();
    assert!(zkc.check_stat("/o").await.unwrap().is_some());
}

/// In an ensemble, watches live on the member a session is connected to, so the
/// watch limit is per member; the data limit is checked on the member the client is
/// connected to, before anything reaches the Raft log.
#[test]
fn limits_hold_on_every_ensemble_member() {
    let ensemble = support::coordd::CoorddEnsemble::start_with(
        3,
        &[
            "--watches-per-session-max",
            "2",
            "--node-data-bytes-max",
            "100",
        ],
    );
    let leader = ensemble.wait_leader(&[0, 1, 2], WAIT);
    let follower = (leader + 1) % 3;
    let other = (leader + 2) % 3;
    let quota = ErrorCode::QuotaExceeded.code();
    let lo = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let mut c = session_once_accepted(lo, ensemble.members[follower].addr);
    for p in ["/e1", "/e2", "/e3"] {
        assert_eq!(err_of(&mut c, &create(p, b"x".to_vec())), 0);
    }
    assert_eq!(err_of(&mut c, &create("/big", vec![0; 101])), quota);
    wait_log_line(
        &ensemble.members[follower],
        &["node_data_bytes_max", "bytes=101"],
    );
    assert_eq!(err_of(&mut c, &get_data("/e1", true)), 0);
    assert_eq!(err_of(&mut c, &get_data("/e2", true)), 0);
    let (f, _) = c.call(&get_data("/e3", true));
    assert_eq!(f.header.err, quota);
    let last_zxid = f.header.zxid;
    wait_log_line(
        &ensemble.members[follower],
        &["watches_per_session_max", "limit=2"],
    );

    // The session moves to another member (once that one serves clients) and re-arms
    // its two watches there.
    drop(session_once_accepted(lo, ensemble.members[other].addr));
    let (mut moved, resp) = RawConn::resume(
        ensemble.members[other].addr,
        c.session_id,
        &c.passwd,
        last_zxid,
    );
    assert_eq!(resp.session_id, c.session_id);
    let w = SetWatches2 {
        relative_zxid: last_zxid,
        data_watches: vec!["/e1".into(), "/e2".into()],
        ..Default::default()
    };
    let mut out = BytesMut::new();
    write_frame(&mut out, |o| {
        Request::SetWatches(w).encode_with_header(xid::SET_WATCHES, o)
    });
    moved.stream.write_all(&out).unwrap();
    let f = moved.recv().expect("setWatches reply");
    assert_eq!((f.header.xid, f.header.err), (xid::SET_WATCHES, 0));
    assert_eq!(err_of(&mut moved, &get_data("/e3", true)), quota);
    wait_log_line(
        &ensemble.members[other],
        &["watches_per_session_max", "limit=2"],
    );
    // Nothing of the refused create reached any member's tree.
    // A member that misses the leader's heartbeats for its quorum timeout (a scheduling
    // stall on a loaded machine) closes its clients: that is ConnectionLoss, and the
    // sync and read are retried on a new session, as a ZooKeeper client would.
    for (i, m) in ensemble.members.iter().enumerate() {
        let mut exists_err = None;
        wait_until("a sync and a read answered", WAIT, || {
            let mut r = session_once_accepted(lo, m.addr);
            let sync = Request::Sync(coordd_proto::PathRequest { path: "/".into() });
            let answered = r.try_call(&sync).and_then(|(f, _)| {
                assert_eq!(f.header.err, 0, "sync on member {}", i + 1);
                r.try_call(&exists("/big", false))
            });
            match answered {
                Some((f, _)) => exists_err = Some(f.header.err),
                None => eprintln!("member {}: connection loss on sync or read; again", i + 1),
            }
            exists_err.is_some()
        });
        assert_eq!(
            exists_err,
            Some(ErrorCode::NoNode.code()),
            "member {}",
            i + 1
        );
    }
    // The watches armed on the new member fire there.
    let mut w2 = session_once_accepted(lo, ensemble.members[leader].addr);
    assert_eq!(err_of(&mut w2, &set_data("/e2", b"y".to_vec())), 0);
    let f = moved
        .recv()
        .expect("the /e2 watch fires on the member it moved to");
    assert_eq!(WatcherEvent::from_bytes(&f.body).unwrap().path, "/e2");
}
