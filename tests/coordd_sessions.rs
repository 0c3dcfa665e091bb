//! Sessions, reconnects, expiry, bad input and four-letter words, at the byte level
//! where the test must control what goes on the wire.

mod support;

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use coordd_proto::{
    Acl, CreateMode, CreateRequest, ErrorCode, OpCode, PathWatchRequest, Record, Request,
    SetWatches2, StatResponse, WatcherEvent,
};
use support::coordd::{four_letter, Coordd};
use support::raw::{read_frame, RawConn};

fn create(path: &str, mode: CreateMode) -> Request {
    Request::Create {
        op: OpCode::Create,
        req: CreateRequest {
            path: path.into(),
            data: b"x".to_vec(),
            acl: Acl::open_unsafe(),
            flags: mode.code(),
        },
        ttl: 0,
    }
}

fn exists(path: &str, watch: bool) -> Request {
    Request::Exists(PathWatchRequest {
        path: path.into(),
        watch,
    })
}

fn event_of(f: &support::raw::Frame) -> WatcherEvent {
    assert_eq!(f.header.xid, coordd_proto::xid::NOTIFICATION);
    WatcherEvent::from_bytes(&f.body).unwrap()
}

#[test]
fn silent_session_expires_and_its_ephemeral_goes_within_a_tick() {
    let server = Coordd::start(); // tick 100 ms
    let mut owner = RawConn::new_session(server.addr, 600);
    assert_eq!(owner.timeout_ms, 600);
    let (r, _) = owner.call(&create("/leader", CreateMode::Ephemeral));
    assert_eq!(r.header.err, 0);

    let mut watcher = RawConn::new_session(server.addr, 2000);
    let (r, _) = watcher.call(&exists("/leader", true));
    assert_eq!(r.header.err, 0);
    let silent_since = Instant::now();
    // The owner now sends nothing. The watcher keeps its own session alive with pings
    // while it waits for the deletion event.
    let event = loop {
        assert!(silent_since.elapsed() < Duration::from_secs(5), "no expiry");
        watcher.send(&Request::Ping);
        let f = watcher.recv().expect("frame");
        if f.header.xid == coordd_proto::xid::NOTIFICATION {
            break event_of(&f);
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let waited = silent_since.elapsed();
    assert_eq!(event.path, "/leader");
    assert_eq!(
        event.event_type,
        coordd_proto::EventType::NodeDeleted.code()
    );
    assert!(
        waited >= Duration::from_millis(600),
        "expired early: {waited:?}"
    );
    // Within one tick (100 ms) of the timeout, plus scheduling slack on a loaded box.
    assert!(
        waited < Duration::from_millis(600 + 100 + 400),
        "expired late: {waited:?}"
    );

    // The expired session's connection is closed, and coming back gets timeout 0.
    let (_, resp) = RawConn::connect(server.addr, 600, owner.session_id, &owner.passwd, 0);
    assert_eq!(resp.timeout_ms, 0);
}

#[test]
fn reconnect_keeps_session_ephemerals_and_watches() {
    let server = Coordd::start();
    let mut c = RawConn::new_session(server.addr, 2000);
    let (r, _) = c.call(&create("/eph", CreateMode::Ephemeral));
    assert_eq!(r.header.err, 0);
    let (r, _) = c.call(&create("/data", CreateMode::Persistent));
    let last_zxid = r.header.zxid;
    let (sid, pw) = (c.session_id, c.passwd.clone());
    drop(c); // connection lost, session lives

    let (mut c, resp) = RawConn::resume(server.addr, sid, &pw, last_zxid);
    assert_eq!(resp.session_id, sid);
    assert!(resp.timeout_ms > 0);
    // Re-register a data watch as clients do after a reconnect.
    let (r, _) = c.call(&Request::SetWatches(SetWatches2 {
        relative_zxid: last_zxid,
        data_watches: vec!["/data".into()],
        ..Default::default()
    }));
    assert_eq!(r.header.err, 0);
    let (r, _) = c.call(&exists("/eph", false));
    assert_eq!(r.header.err, 0, "ephemeral survived the reconnect");
    let st = StatResponse::from_bytes(&r.body).unwrap().stat;
    assert_eq!(st.ephemeral_owner, sid);

    let mut other = RawConn::new_session(server.addr, 2000);
    let (r, _) = other.call(&Request::SetData(coordd_proto::SetDataRequest {
        path: "/data".into(),
        data: b"new".to_vec(),
        version: -1,
    }));
    assert_eq!(r.header.err, 0);
    let f = c.recv().expect("event");
    let e = event_of(&f);
    assert_eq!(e.path, "/data");
    assert_eq!(
        e.event_type,
        coordd_proto::EventType::NodeDataChanged.code()
    );

    // Wrong password: the session is not handed over.
    let (_, resp) = RawConn::connect(server.addr, 2000, sid, &[7; 16], 0);
    assert_eq!(resp.timeout_ms, 0);
}

#[test]
fn set_watches_reports_changes_missed_while_disconnected() {
    let server = Coordd::start();
    let mut c = RawConn::new_session(server.addr, 2000);
    let (r, _) = c.call(&create("/gone", CreateMode::Persistent));
    let seen = r.header.zxid;
    let mut other = RawConn::new_session(server.addr, 2000);
    let (r, _) = other.call(&Request::Delete(coordd_proto::DeleteRequest {
        path: "/gone".into(),
        version: -1,
    }));
    assert_eq!(r.header.err, 0);
    let (r, events) = c.call(&Request::SetWatches(SetWatches2 {
        relative_zxid: seen,
        data_watches: vec!["/gone".into()],
        ..Default::default()
    }));
    assert_eq!(r.header.err, 0);
    assert_eq!(
        events.len(),
        1,
        "the missed deletion is reported before the reply"
    );
    let e = event_of(&events[0]);
    assert_eq!(e.event_type, coordd_proto::EventType::NodeDeleted.code());
}

#[test]
fn a_client_ahead_of_the_server_is_refused() {
    let server = Coordd::start();
    let (mut s, _) = {
        let mut s = RawConn::tcp(server.addr);
        let req = coordd_proto::ConnectRequest {
            last_zxid_seen: 1 << 40,
            timeout_ms: 2000,
            passwd: vec![0; 16],
            ..Default::default()
        };
        let mut out = bytes::BytesMut::new();
        coordd_proto::frame::write_frame(&mut out, |o| req.encode(o));
        s.write_all(&out).unwrap();
        (s, ())
    };
    assert!(
        read_frame(&mut s).is_none(),
        "connection closed without a session"
    );
}

#[test]
fn oversized_and_malformed_frames_close_the_connection_and_nothing_else() {
    let server = Coordd::start_with(&["--tick-time-ms", "100", "--frame-bytes-max", "4096"]);
    let mut good = RawConn::new_session(server.addr, 2000);
    let (r, _) = good.call(&create("/kept", CreateMode::Persistent));
    assert_eq!(r.header.err, 0);

    // A frame over the limit.
    let mut bad = RawConn::new_session(server.addr, 2000);
    bad.stream.write_all(&(100_000i32).to_be_bytes()).unwrap();
    assert!(read_frame(&mut bad.stream).is_none());

    // Garbage records for every op code.
    for op in -12i32..110 {
        let mut bad = RawConn::new_session(server.addr, 2000);
        let mut frame = Vec::new();
        frame.extend_from_slice(&(8i32 + 7).to_be_bytes());
        frame.extend_from_slice(&5i32.to_be_bytes());
        frame.extend_from_slice(&op.to_be_bytes());
        frame.extend_from_slice(&[0xff, 0xff, 0xff, 0x7f, 1, 2, 3]);
        let _ = bad.stream.write_all(&frame);
        // Either an error reply or a close; never a hang or a crash.
        let _ = read_frame(&mut bad.stream);
    }
    // A negative length in the handshake.
    let mut s = RawConn::tcp(server.addr);
    s.write_all(&(-5i32).to_be_bytes()).unwrap();
    let mut buf = [0u8; 1];
    assert_eq!(s.read(&mut buf).unwrap_or(0), 0);

    let (r, _) = good.call(&exists("/kept", false));
    assert_eq!(
        r.header.err, 0,
        "the server and other sessions are unaffected"
    );
    assert_eq!(four_letter(server.addr, "ruok").as_deref(), Some("imok"));
}

#[test]
fn unsupported_ops_get_an_error_reply() {
    let server = Coordd::start();
    let mut c = RawConn::new_session(server.addr, 2000);
    let mut frame = bytes::BytesMut::new();
    coordd_proto::frame::write_frame(&mut frame, |o| {
        coordd_proto::RequestHeader { xid: 9, op: 999 }.encode(o);
    });
    c.stream.write_all(&frame).unwrap();
    let f = c.recv().unwrap();
    assert_eq!(f.header.xid, 9);
    assert_eq!(f.header.err, ErrorCode::Unimplemented.code());
}

#[test]
fn four_letter_words() {
    let server = Coordd::start();
    assert_eq!(four_letter(server.addr, "ruok").unwrap(), "imok");
    let srvr = four_letter(server.addr, "srvr").unwrap();
    assert!(srvr.starts_with("Zookeeper version: 3.8"), "{srvr}");
    assert!(srvr.contains("Mode: standalone"));
    assert!(srvr.contains("Node count:"));
    let mntr = four_letter(server.addr, "mntr").unwrap();
    assert!(mntr.contains("zk_server_state\tstandalone"), "{mntr}");
    assert!(mntr.contains("zk_znode_count\t"));
    let conf = four_letter(server.addr, "conf").unwrap();
    assert!(
        conf.contains(&format!("clientPort={}", server.addr.port())),
        "{conf}"
    );
    let _c = RawConn::new_session(server.addr, 2000);
    let stat = four_letter(server.addr, "stat").unwrap();
    assert!(
        stat.contains("Clients:") && stat.contains("127.0.0.1"),
        "{stat}"
    );
}

#[test]
fn sigterm_shuts_down_cleanly() {
    let mut server = Coordd::start();
    let status = server.terminate().expect("was running");
    assert!(status.success(), "exit status {status}");
}

#[test]
fn session_timeout_is_negotiated_between_2_and_20_ticks() {
    let server = Coordd::start(); // tick 100 ms
    assert_eq!(RawConn::new_session(server.addr, 50).timeout_ms, 200);
    assert_eq!(
        RawConn::new_session(server.addr, 1_000_000).timeout_ms,
        2000
    );
    assert_eq!(RawConn::new_session(server.addr, 750).timeout_ms, 750);
}

#[test]
fn replies_to_an_old_connection_never_reach_the_new_one() {
    let server = Coordd::start();
    let mut old = RawConn::new_session(server.addr, 2000);
    let (sid, pw) = (old.session_id, old.passwd.clone());
    // Many writes in flight on the old connection, then the session moves.
    for i in 0..900 {
        old.send(&Request::Create {
            op: OpCode::Create,
            req: CreateRequest {
                path: format!("/n{i}"),
                data: vec![1; 4000],
                acl: Acl::open_unsafe(),
                flags: 0,
            },
            ttl: 0,
        });
    }
    let (mut new, resp) = RawConn::resume(server.addr, sid, &pw, 0);
    assert_eq!(resp.session_id, sid);
    let (reply, events) = new.call(&exists("/", false));
    assert!(
        events.is_empty(),
        "stale frames on the new connection: {events:?}"
    );
    assert_eq!(reply.header.err, 0);
}

#[test]
fn read_only_flag_is_accepted() {
    let server = Coordd::start();
    let mut s = RawConn::tcp(server.addr);
    let req = coordd_proto::ConnectRequest {
        timeout_ms: 2000,
        passwd: vec![0; 16],
        read_only: true,
        ..Default::default()
    };
    let mut out = bytes::BytesMut::new();
    coordd_proto::frame::write_frame(&mut out, |o| req.encode(o));
    s.write_all(&out).unwrap();
    let resp = coordd_proto::ConnectResponse::from_bytes(&read_frame(&mut s).unwrap()).unwrap();
    assert!(resp.timeout_ms > 0 && resp.session_id != 0);
    assert!(!resp.read_only, "a standalone server is read-write");
}

#[test]
fn writes_survive_kill_9_across_snapshots_and_log_compaction() {
    let mut server =
        Coordd::start_with(&["--tick-time-ms", "100", "--snapshot-every-entries", "25"]);
    let mut c = RawConn::new_session(server.addr, 2000);
    for i in 0..200 {
        let (r, _) = c.call(&create(&format!("/s{i}"), CreateMode::Persistent));
        assert_eq!(r.header.err, 0);
    }
    let (r, _) = c.call(&Request::SetData(coordd_proto::SetDataRequest {
        path: "/s199".into(),
        data: b"last".to_vec(),
        version: -1,
    }));
    assert_eq!(r.header.err, 0);
    let last_zxid = r.header.zxid;
    let snapshots = std::fs::read_dir(server.data_dir())
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .map(|e| e.file_name().to_string_lossy().starts_with("snapshot."))
                .unwrap_or(false)
        })
        .count();
    assert!(snapshots >= 1, "snapshots were written");
    drop(c);
    server.restart();
    let mut c = RawConn::new_session(server.addr, 2000);
    for i in [0, 57, 198] {
        let (r, _) = c.call(&exists(&format!("/s{i}"), false));
        assert_eq!(r.header.err, 0, "/s{i} survived");
    }
    let (r, _) = c.call(&Request::GetData(PathWatchRequest {
        path: "/s199".into(),
        watch: false,
    }));
    assert_eq!(r.header.err, 0);
    let d = coordd_proto::GetDataResponse::from_bytes(&r.body).unwrap();
    assert_eq!(d.data, b"last");
    assert!(
        r.header.zxid > last_zxid,
        "zxids keep growing after recovery"
    );
}
