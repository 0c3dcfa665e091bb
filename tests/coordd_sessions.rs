//! Sessions, reconnects, expiry, bad input and four-letter words, at the byte level
//! where the test must control what goes on the wire. Every case runs against one
//! standalone coordd (`name::standalone`) and a 3-member ensemble with its connections
//! spread over the members (`name::ensemble`; `tests/support/target.rs`).

mod support;

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use coordd_proto::{
    Acl, CreateMode, CreateRequest, ErrorCode, OpCode, PathRequest, PathWatchRequest, Record,
    Request, SetWatches2, StatResponse, WatcherEvent,
};
use support::coordd::four_letter;
use support::raw::{read_frame, RawConn};
use support::target::{Target, Topology};

const TICK: &[&str] = &["--tick-time-ms", "100"];

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

/// What a ZooKeeper user does before relying on another session's writes: `sync`, on
/// an ensemble, whose members serve from their own copy (maybe behind the leader);
/// nothing standalone, where every answered write is already visible.
fn catch_up(t: &Target, c: &mut RawConn, path: &str) {
    if t.is_ensemble() {
        let (r, _) = c.call(&Request::Sync(PathRequest { path: path.into() }));
        assert_eq!(r.header.err, 0, "sync {path}");
    }
}

fn event_of(f: &support::raw::Frame) -> WatcherEvent {
    assert_eq!(f.header.xid, coordd_proto::xid::NOTIFICATION);
    WatcherEvent::from_bytes(&f.body).unwrap()
}

fn silent_session_expires_and_its_ephemeral_goes_within_a_tick(topo: Topology) {
    let t = topo.start("silent_session_expires", TICK); // tick 100 ms
    let leader = t.p("/leader");
    let mut owner = RawConn::new_session(t.addr(0), 600);
    assert_eq!(owner.timeout_ms, 600);
    // The owner's last sign of life is this create: its session is touched when the create
    // arrives, so not before this instant (taken after the watcher is set up, the expiry
    // could come less than a timeout later, and did once in CI).
    let silent_since = Instant::now();
    let (r, _) = owner.call(&create(&leader, CreateMode::Ephemeral));
    assert_eq!(r.header.err, 0);

    let mut watcher = RawConn::new_session(t.addr(1), 2000);
    catch_up(&t, &mut watcher, &leader);
    let (r, _) = watcher.call(&exists(&leader, true));
    assert_eq!(r.header.err, 0);
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
    assert_eq!(event.path, leader);
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

    // The expired session's connection is closed, and coming back gets timeout 0 (on
    // the member it was on, and on the others).
    for i in 0..t.members().len() {
        let (_, resp) = RawConn::connect(t.addr(i), 600, owner.session_id, &owner.passwd, 0);
        assert_eq!(resp.timeout_ms, 0, "reconnect to {}", t.addr(i));
    }
}

/// Ensemble: the session comes back on another member.
fn reconnect_keeps_session_ephemerals_and_watches(topo: Topology) {
    let t = topo.start("reconnect_keeps_session", TICK);
    let (eph, data) = (t.p("/eph"), t.p("/data"));
    let mut c = RawConn::new_session(t.addr(0), 2000);
    let (r, _) = c.call(&create(&eph, CreateMode::Ephemeral));
    assert_eq!(r.header.err, 0);
    let (r, _) = c.call(&create(&data, CreateMode::Persistent));
    let last_zxid = r.header.zxid;
    let (sid, pw) = (c.session_id, c.passwd.clone());
    drop(c); // connection lost, session lives

    let (mut c, resp) = RawConn::resume(t.addr(1), sid, &pw, last_zxid);
    assert_eq!(resp.session_id, sid);
    assert!(resp.timeout_ms > 0);
    // Re-register a data watch as clients do after a reconnect.
    let (r, _) = c.call(&Request::SetWatches(SetWatches2 {
        relative_zxid: last_zxid,
        data_watches: vec![data.clone()],
        ..Default::default()
    }));
    assert_eq!(r.header.err, 0);
    let (r, _) = c.call(&exists(&eph, false));
    assert_eq!(r.header.err, 0, "ephemeral survived the reconnect");
    let st = StatResponse::from_bytes(&r.body).unwrap().stat;
    assert_eq!(st.ephemeral_owner, sid);

    let mut other = RawConn::new_session(t.addr(2), 2000);
    let (r, _) = other.call(&Request::SetData(coordd_proto::SetDataRequest {
        path: data.clone(),
        data: b"new".to_vec(),
        version: -1,
    }));
    assert_eq!(r.header.err, 0);
    let f = c.recv().expect("event");
    let e = event_of(&f);
    assert_eq!(e.path, data);
    assert_eq!(
        e.event_type,
        coordd_proto::EventType::NodeDataChanged.code()
    );

    // Wrong password: the session is not handed over (by any member).
    for i in 0..t.members().len() {
        let (_, resp) = RawConn::connect(t.addr(i), 2000, sid, &[7; 16], 0);
        assert_eq!(resp.timeout_ms, 0, "{}", t.addr(i));
    }
}

/// A client whose connection goes before it got any reply (so it has seen no zxid)
/// resumes its brand-new session on another member at once: that member may not have
/// applied the session's creation yet, and must not call it expired (it validates the
/// session behind a barrier through the log, as a ZooKeeper follower asks its leader).
fn a_new_session_resumes_on_another_server_at_once(topo: Topology) {
    let t = topo.start("a_new_session_resumes_at_once", TICK);
    for round in 0..20 {
        let c = RawConn::new_session(t.addr(round), 2000);
        let (sid, pw) = (c.session_id, c.passwd.clone());
        drop(c);
        let (mut c, resp) = RawConn::resume(t.addr(round + 1), sid, &pw, 0);
        assert!(
            resp.timeout_ms > 0,
            "round {round}: the new session was refused"
        );
        assert_eq!(resp.session_id, sid);
        let (r, _) = c.call(&exists("/", false));
        assert_eq!(r.header.err, 0);
    }
}

fn set_watches_reports_changes_missed_while_disconnected(topo: Topology) {
    let t = topo.start("set_watches_reports_changes_missed", TICK);
    let gone = t.p("/gone");
    let mut c = RawConn::new_session(t.addr(0), 2000);
    let (r, _) = c.call(&create(&gone, CreateMode::Persistent));
    let seen = r.header.zxid;
    let mut other = RawConn::new_session(t.addr(1), 2000);
    let (r, _) = other.call(&Request::Delete(coordd_proto::DeleteRequest {
        path: gone.clone(),
        version: -1,
    }));
    assert_eq!(r.header.err, 0);
    // (A new connection of c's session would make its member catch up to the zxid it
    // saw; the deletion by another session is newer, so on an ensemble c syncs.)
    catch_up(&t, &mut c, &gone);
    let (r, events) = c.call(&Request::SetWatches(SetWatches2 {
        relative_zxid: seen,
        data_watches: vec![gone.clone()],
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

fn a_client_ahead_of_the_server_is_refused(topo: Topology) {
    let t = topo.start("a_client_ahead_of_the_server", TICK);
    let (mut s, _) = {
        let mut s = RawConn::tcp(t.addr(0));
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

fn oversized_and_malformed_frames_close_the_connection_and_nothing_else(topo: Topology) {
    let t = topo.start(
        "oversized_and_malformed_frames",
        &["--tick-time-ms", "100", "--frame-bytes-max", "4096"],
    );
    let kept = t.p("/kept");
    let mut good = RawConn::new_session(t.next_addr(), 2000);
    let (r, _) = good.call(&create(&kept, CreateMode::Persistent));
    assert_eq!(r.header.err, 0);

    // A frame over the limit.
    let mut bad = RawConn::new_session(t.next_addr(), 2000);
    bad.stream.write_all(&(100_000i32).to_be_bytes()).unwrap();
    assert!(read_frame(&mut bad.stream).is_none());

    // Garbage records for every op code.
    for op in -12i32..110 {
        let mut bad = RawConn::new_session(t.next_addr(), 2000);
        let mut frame = Vec::new();
        frame.extend_from_slice(&(8i32 + 7).to_be_bytes());
        frame.extend_from_slice(&5i32.to_be_bytes());
        frame.extend_from_slice(&op.to_be_bytes());
        frame.extend_from_slice(&[0xff, 0xff, 0xff, 0x7f, 1, 2, 3]);
        let _ = bad.stream.write_all(&frame);
        // Either an error reply or a close; never a hang or a crash.
        let _ = read_frame(&mut bad.stream);
        // The good session heartbeats as a real client would: on a loaded machine this
        // loop (a session created per op, a Raft commit each on an ensemble) can outlast
        // its 2 s timeout, and its expiry is not what this test is about.
        if good.try_call(&Request::Ping).is_none() {
            panic!(
                "the good session's connection was closed; logs:{}",
                t.logs()
            );
        }
    }
    // A negative length in the handshake.
    let mut s = RawConn::tcp(t.next_addr());
    s.write_all(&(-5i32).to_be_bytes()).unwrap();
    let mut buf = [0u8; 1];
    assert_eq!(s.read(&mut buf).unwrap_or(0), 0);

    let Some((r, _)) = good.try_call(&exists(&kept, false)) else {
        panic!(
            "the good session's connection was closed; logs:{}",
            t.logs()
        );
    };
    assert_eq!(
        r.header.err, 0,
        "the server and other sessions are unaffected"
    );
    for m in t.members() {
        assert_eq!(four_letter(m.addr, "ruok").as_deref(), Some("imok"));
    }
}

fn unsupported_ops_get_an_error_reply(topo: Topology) {
    let t = topo.start("unsupported_ops", TICK);
    let mut c = RawConn::new_session(t.addr(0), 2000);
    let mut frame = bytes::BytesMut::new();
    coordd_proto::frame::write_frame(&mut frame, |o| {
        coordd_proto::RequestHeader { xid: 9, op: 999 }.encode(o);
    });
    c.stream.write_all(&frame).unwrap();
    let f = c.recv().unwrap();
    assert_eq!(f.header.xid, 9);
    assert_eq!(f.header.err, ErrorCode::Unimplemented.code());
}

fn four_letter_words(topo: Topology) {
    let t = topo.start("four_letter_words", TICK);
    // Standalone: "standalone"; an ensemble: one leader, the others followers.
    let modes = t.modes();
    if t.is_ensemble() {
        let leaders = modes.iter().filter(|m| *m == "leader").count();
        let followers = modes.iter().filter(|m| *m == "follower").count();
        assert_eq!((leaders, followers), (1, modes.len() - 1), "{modes:?}");
    } else {
        assert_eq!(modes, ["standalone"]);
    }
    for (server, mode) in t.members().into_iter().zip(&modes) {
        assert_eq!(four_letter(server.addr, "ruok").unwrap(), "imok");
        let srvr = four_letter(server.addr, "srvr").unwrap();
        assert!(srvr.starts_with("Zookeeper version: 3.8"), "{srvr}");
        assert!(srvr.contains(&format!("Mode: {mode}")), "{srvr}");
        assert!(srvr.contains("Node count:"));
        let mntr = four_letter(server.addr, "mntr").unwrap();
        assert!(mntr.contains(&format!("zk_server_state\t{mode}")), "{mntr}");
        assert!(mntr.contains("zk_znode_count\t"));
        let conf = four_letter(server.addr, "conf").unwrap();
        assert!(
            conf.contains(&format!("clientPort={}", server.addr.port())),
            "{conf}"
        );
    }
    let _c = RawConn::new_session(t.addr(0), 2000);
    let stat = four_letter(t.addr(0), "stat").unwrap();
    assert!(
        stat.contains("Clients:") && stat.contains("127.0.0.1"),
        "{stat}"
    );
}

/// Ensemble: SIGTERM to every member, one after the other.
fn sigterm_shuts_down_cleanly(topo: Topology) {
    let mut t = topo.start_own(TICK);
    for status in t.terminate_all() {
        let status = status.expect("was running");
        assert!(status.success(), "exit status {status}{}", t.logs());
    }
}

fn session_timeout_is_negotiated_between_2_and_20_ticks(topo: Topology) {
    let t = topo.start("session_timeout_is_negotiated", TICK); // tick 100 ms
    assert_eq!(RawConn::new_session(t.next_addr(), 50).timeout_ms, 200);
    assert_eq!(
        RawConn::new_session(t.next_addr(), 1_000_000).timeout_ms,
        2000
    );
    assert_eq!(RawConn::new_session(t.next_addr(), 750).timeout_ms, 750);
}

/// Ensemble: the session moves to another member.
fn replies_to_an_old_connection_never_reach_the_new_one(topo: Topology) {
    let t = topo.start("replies_to_an_old_connection", TICK);
    let mut old = RawConn::new_session(t.addr(0), 2000);
    let (sid, pw) = (old.session_id, old.passwd.clone());
    // Many writes in flight on the old connection, then the session moves.
    for i in 0..900 {
        old.send(&Request::Create {
            op: OpCode::Create,
            req: CreateRequest {
                path: t.p(&format!("/n{i}")),
                data: vec![1; 4000],
                acl: Acl::open_unsafe(),
                flags: 0,
            },
            ttl: 0,
        });
    }
    let (mut new, resp) = RawConn::resume(t.addr(1), sid, &pw, 0);
    assert_eq!(resp.session_id, sid);
    let (reply, events) = new.call(&exists("/", false));
    assert!(
        events.is_empty(),
        "stale frames on the new connection: {events:?}"
    );
    assert_eq!(reply.header.err, 0);
}

fn read_only_flag_is_accepted(topo: Topology) {
    let t = topo.start("read_only_flag", TICK);
    let mut s = RawConn::tcp(t.addr(0));
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
    assert!(
        !resp.read_only,
        "a standalone server, or a member with a quorum, is read-write"
    );
}

/// Ensemble: every member snapshots and compacts its Raft log; kill -9 of all three,
/// then all restart.
fn writes_survive_kill_9_across_snapshots_and_log_compaction(topo: Topology) {
    let mut t = topo.start_own(&["--tick-time-ms", "100", "--snapshot-every-entries", "25"]);
    let mut c = RawConn::new_session(t.addr(0), 2000);
    // A member closes its clients when it loses sight of the quorum for a moment (on a
    // loaded machine): like a ZooKeeper client, reconnect and retry; a create whose
    // first attempt was applied then finds its node.
    let mut call = |req: &Request| {
        let mut retried = false;
        loop {
            match c.try_call(req) {
                Some((r, _)) => return (r, retried),
                None if t.is_ensemble() => c = RawConn::new_session(t.addr(0), 2000),
                None => panic!("the server closed the connection"),
            }
            retried = true;
        }
    };
    for i in 0..200 {
        let (r, retried) = call(&create(&format!("/s{i}"), CreateMode::Persistent));
        assert!(
            r.header.err == 0 || (retried && r.header.err == ErrorCode::NodeExists.code()),
            "create /s{i}: {}",
            r.header.err
        );
    }
    let (r, _) = call(&Request::SetData(coordd_proto::SetDataRequest {
        path: "/s199".into(),
        data: b"last".to_vec(),
        version: -1,
    }));
    assert_eq!(r.header.err, 0);
    let last_zxid = r.header.zxid;
    // The log segments a snapshot covers go, `snapshot.<zxid>` marking where the
    // remaining log starts (an ensemble member's Raft log: its purge point, once a
    // Raft snapshot covers it). A follower may apply a little later: wait for it.
    for server in t.members() {
        support::coordd::wait_until(
            &format!("a snapshot in {}", server.data_dir().display()),
            std::time::Duration::from_secs(10),
            || {
                std::fs::read_dir(server.data_dir())
                    .unwrap()
                    .filter(|e| {
                        e.as_ref()
                            .map(|e| e.file_name().to_string_lossy().starts_with("snapshot."))
                            .unwrap_or(false)
                    })
                    .count()
                    >= 1
            },
        );
    }
    t.kill9_and_restart_all();
    let mut c = RawConn::new_session(t.addr(1), 2000);
    catch_up(&t, &mut c, "/");
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

both_topologies!(sync silent_session_expires_and_its_ephemeral_goes_within_a_tick);
both_topologies!(sync reconnect_keeps_session_ephemerals_and_watches);
both_topologies!(sync a_new_session_resumes_on_another_server_at_once);
both_topologies!(sync set_watches_reports_changes_missed_while_disconnected);
both_topologies!(sync a_client_ahead_of_the_server_is_refused);
both_topologies!(sync oversized_and_malformed_frames_close_the_connection_and_nothing_else);
both_topologies!(sync unsupported_ops_get_an_error_reply);
both_topologies!(sync four_letter_words);
both_topologies!(sync sigterm_shuts_down_cleanly);
both_topologies!(sync session_timeout_is_negotiated_between_2_and_20_ticks);
both_topologies!(sync replies_to_an_old_connection_never_reach_the_new_one);
both_topologies!(sync read_only_flag_is_accepted);
both_topologies!(sync writes_survive_kill_9_across_snapshots_and_log_compaction);
