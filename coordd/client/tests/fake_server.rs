//! Protocol tests of the client against a scripted, in-process fake server: a tokio
//! listener on 127.0.0.1 that answers with frames hand-encoded from coordd_proto.
//! Every wait has a deadline; nothing sleeps to let things settle.

use std::future::Future;
use std::time::Duration;

use bytes::{BufMut, BytesMut};
use coordd_client::{
    Acl, AddWatchMode, Client, ClientConfig, CreateMode, Error, ErrorCode, EventType, Events,
    KeeperState, SessionState, WatchedEvent,
};
use coordd_proto::frame::{split_frame, write_frame};
use coordd_proto::records::*;
use coordd_proto::{xid, MultiResult, OpCode, Reader, Record, Request};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{timeout, Instant};

const DEADLINE: Duration = Duration::from_secs(5);
const PASSWD: [u8; 16] = [7; 16];

async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    match timeout(DEADLINE, fut).await {
        Ok(v) => v,
        Err(_) => panic!("timed out waiting for {what}"),
    }
}

struct Fake {
    listener: TcpListener,
    addr: String,
}

impl Fake {
    async fn bind() -> Fake {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        Fake { listener, addr }
    }

    async fn accept(&self) -> Peer {
        let (stream, _) = within("a connection", self.listener.accept())
            .await
            .unwrap();
        Peer {
            stream,
            buf: BytesMut::new(),
        }
    }

    fn config(&self) -> ClientConfig {
        ClientConfig::new([self.addr.clone()])
            .with_reconnect_backoff_ms(1, 20)
            .with_request_timeout_ms(5_000)
            .with_connect_timeout_ms(1_000)
    }
}

struct Peer {
    stream: TcpStream,
    buf: BytesMut,
}

fn frame(body: impl FnOnce(&mut BytesMut)) -> BytesMut {
    let mut b = BytesMut::new();
    write_frame(&mut b, body);
    b
}

fn reply(xid: i32, zxid: i64, err: ErrorCode, body: impl FnOnce(&mut BytesMut)) -> BytesMut {
    frame(|o| {
        ReplyHeader {
            xid,
            zxid,
            err: err.code(),
        }
        .encode(o);
        body(o);
    })
}

fn notification(event_type: EventType, path: &str) -> BytesMut {
    reply(xid::NOTIFICATION, -1, ErrorCode::Ok, |o| {
        WatcherEvent {
            event_type: event_type.code(),
            state: KeeperState::SyncConnected.code(),
            path: path.into(),
        }
        .encode(o)
    })
}

fn stat(version: i32) -> Stat {
    Stat {
        czxid: 5,
        mzxid: 6,
        version,
        ..Default::default()
    }
}

impl Peer {
    async fn read_frame(&mut self) -> BytesMut {
        loop {
            if let Some(f) = split_frame(&mut self.buf, 1 << 20).unwrap() {
                return f;
            }
            let n = within(
                "a frame from the client",
                self.stream.read_buf(&mut self.buf),
            )
            .await
            .unwrap();
            assert!(n > 0, "client closed the connection");
        }
    }

    /// Reads the connect request and answers it.
    async fn handshake(&mut self, session_id: i64, timeout_ms: i32) -> ConnectRequest {
        let req = ConnectRequest::from_bytes(&self.read_frame().await).unwrap();
        self.send(&[frame(|o| {
            ConnectResponse {
                protocol_version: 0,
                timeout_ms,
                session_id,
                passwd: PASSWD.to_vec(),
                read_only: false,
            }
            .encode(o)
        })])
        .await;
        req
    }

    async fn read_request(&mut self) -> (RequestHeader, Request) {
        let f = self.read_frame().await;
        let mut r = Reader::new(&f);
        let h = RequestHeader::decode(&mut r).unwrap();
        let req = Request::decode(OpCode::try_from(h.op).unwrap(), &mut r).unwrap();
        (h, req)
    }

    /// Writes frames in one write, so the client sees them in one read.
    async fn send(&mut self, frames: &[BytesMut]) {
        let mut all = BytesMut::new();
        for f in frames {
            all.put_slice(f);
        }
        within("a write", self.stream.write_all(&all))
            .await
            .unwrap();
    }
}

async fn connect_with(
    fake: &Fake,
    cfg: ClientConfig,
    session_id: i64,
    timeout_ms: i32,
) -> (Client, Events, Peer, ConnectRequest) {
    let (client, (peer, req)) = tokio::join!(Client::connect(cfg), async {
        let mut p = fake.accept().await;
        let req = p.handshake(session_id, timeout_ms).await;
        (p, req)
    });
    let (client, mut events) = client.unwrap();
    assert_eq!(
        within("the connected event", events.recv()).await.unwrap(),
        state_event(KeeperState::SyncConnected)
    );
    (client, events, peer, req)
}

fn state_event(state: KeeperState) -> WatchedEvent {
    WatchedEvent {
        event_type: EventType::None,
        state,
        path: String::new(),
    }
}

async fn next_event(events: &mut Events) -> WatchedEvent {
    within("an event", events.recv())
        .await
        .expect("events ended")
}

/// Answers one request the client sends with `frames_before` then a reply made by `body`.
async fn serve_one(
    peer: &mut Peer,
    expect_op: OpCode,
    zxid: i64,
    err: ErrorCode,
    body: impl FnOnce(&mut BytesMut),
) -> (RequestHeader, Request) {
    let (h, req) = peer.read_request().await;
    assert_eq!(h.op, expect_op.code(), "{req:?}");
    peer.send(&[reply(h.xid, zxid, err, body)]).await;
    (h, req)
}

#[tokio::test]
async fn handshake_requests_and_errors() {
    let fake = Fake::bind().await;
    let t0 = Instant::now();
    let (client, _events, mut peer, req) = connect_with(
        &fake,
        fake.config().with_session_timeout_ms(8_000),
        0x1234,
        6_000,
    )
    .await;
    assert_eq!(req.session_id, 0);
    assert_eq!(req.timeout_ms, 8_000);
    assert_eq!(req.last_zxid_seen, 0);
    assert_eq!(req.passwd, vec![0; 16]);
    assert_eq!(client.session_id(), 0x1234);
    assert_eq!(client.session_password(), PASSWD);
    assert_eq!(client.session_timeout_ms(), 6_000);
    assert_eq!(client.state(), SessionState::Connected);
    let lease = client.lease();
    assert!(lease >= t0 + Duration::from_millis(6_000));
    assert!(lease <= Instant::now() + Duration::from_millis(6_000));

    // getData
    let c = client.clone();
    let call = tokio::spawn(async move { c.get_data("/a", false).await });
    let (h, r) = serve_one(&mut peer, OpCode::GetData, 10, ErrorCode::Ok, |o| {
        GetDataResponse {
            data: b"hello".to_vec(),
            stat: stat(3),
        }
        .encode(o)
    })
    .await;
    assert!(h.xid > 0);
    assert_eq!(
        r,
        Request::GetData(PathWatchRequest {
            path: "/a".into(),
            watch: false
        })
    );
    let (data, st) = within("getData", call).await.unwrap().unwrap();
    assert_eq!((data.as_slice(), st.version), (&b"hello"[..], 3));
    assert_eq!(client.last_zxid_seen(), 10);

    // Three pipelined creates: sent before any reply, answered in order.
    let calls: Vec<_> = (0..3)
        .map(|i| {
            let c = client.clone();
            tokio::spawn(async move {
                c.create(
                    &format!("/n{i}"),
                    b"",
                    &Acl::open_unsafe(),
                    CreateMode::Persistent,
                )
                .await
            })
        })
        .collect();
    let mut reqs = Vec::new();
    for _ in 0..3 {
        reqs.push(peer.read_request().await);
    }
    let xids: Vec<i32> = reqs.iter().map(|(h, _)| h.xid).collect();
    assert!(xids.windows(2).all(|w| w[1] == w[0] + 1), "{xids:?}");
    let mut replies = Vec::new();
    for (i, (h, r)) in reqs.iter().enumerate() {
        let Request::Create { req, .. } = r else {
            panic!("{r:?}")
        };
        let path = req.path.clone();
        let err = if i == 1 {
            ErrorCode::NodeExists
        } else {
            ErrorCode::Ok
        };
        replies.push(reply(h.xid, 11 + i as i64, err, |o| {
            if err == ErrorCode::Ok {
                CreateResponse { path }.encode(o)
            }
        }));
    }
    peer.send(&replies).await;
    let mut results = Vec::new();
    for c in calls {
        results.push(within("create", c).await.unwrap());
    }
    let mut created: Vec<String> = results
        .iter()
        .filter_map(|r| r.as_ref().ok().cloned())
        .collect();
    created.sort();
    assert_eq!(created.len(), 2);
    assert_eq!(
        results
            .iter()
            .filter(|r| matches!(r, Err(Error::Server(ErrorCode::NodeExists))))
            .count(),
        1
    );
    assert_eq!(client.last_zxid_seen(), 13);

    // exists on a missing node: None, and the exist watch is armed.
    let c = client.clone();
    let call = tokio::spawn(async move { c.exists("/missing", true).await });
    serve_one(&mut peer, OpCode::Exists, 14, ErrorCode::NoNode, |_| {}).await;
    assert_eq!(within("exists", call).await.unwrap().unwrap(), None);
    assert!(client.watches().exist.contains("/missing"));

    // A bad path never reaches the server.
    assert!(matches!(
        client.get_data("no-slash", false).await,
        Err(Error::InvalidArgument(_))
    ));
}

#[tokio::test]
async fn watch_event_is_delivered_before_a_later_reply() {
    let fake = Fake::bind().await;
    let (client, mut events, mut peer, _) = connect_with(&fake, fake.config(), 0x99, 6_000).await;

    let c = client.clone();
    let call = tokio::spawn(async move { c.get_data("/w", true).await });
    serve_one(&mut peer, OpCode::GetData, 20, ErrorCode::Ok, |o| {
        GetDataResponse {
            data: b"1".to_vec(),
            stat: stat(1),
        }
        .encode(o)
    })
    .await;
    within("getData", call).await.unwrap().unwrap();
    assert!(client.watches().data.contains("/w"));

    // The server fires the watch and then answers the next read, in one write.
    let c = client.clone();
    let call = tokio::spawn(async move { c.get_data("/w", false).await });
    let (h, _) = peer.read_request().await;
    peer.send(&[
        notification(EventType::NodeDataChanged, "/w"),
        reply(h.xid, 21, ErrorCode::Ok, |o| {
            GetDataResponse {
                data: b"2".to_vec(),
                stat: stat(2),
            }
            .encode(o)
        }),
    ])
    .await;
    let (data, _) = within("getData", call).await.unwrap().unwrap();
    assert_eq!(data, b"2");
    // The event was queued before the reply completed: no waiting needed.
    assert_eq!(
        events.try_recv().expect("event queued before the reply"),
        WatchedEvent {
            event_type: EventType::NodeDataChanged,
            state: KeeperState::SyncConnected,
            path: "/w".into()
        }
    );
    assert!(
        client.watches().data.is_empty(),
        "a one-shot watch is disarmed when it fires"
    );
}

#[tokio::test]
async fn full_event_queue_holds_back_later_replies() {
    let fake = Fake::bind().await;
    let cfg = fake.config().with_events_queue_max(1);
    let (client, mut peer) = tokio::join!(Client::connect(cfg), async {
        let mut p = fake.accept().await;
        p.handshake(0x5, 6_000).await;
        p
    });
    let (client, mut events) = client.unwrap();
    // The SyncConnected event fills the queue (capacity 1) and is not taken yet.
    let c = client.clone();
    let call = tokio::spawn(async move { c.sync("/").await });
    let (h, _) = peer.read_request().await;
    peer.send(&[
        notification(EventType::NodeCreated, "/e1"),
        notification(EventType::NodeCreated, "/e2"),
        reply(h.xid, 30, ErrorCode::Ok, |o| {
            SyncResponse { path: "/".into() }.encode(o)
        }),
    ])
    .await;
    assert_eq!(
        next_event(&mut events).await,
        state_event(KeeperState::SyncConnected)
    );
    assert_eq!(next_event(&mut events).await.path, "/e1");
    // /e2 is in the queue or waiting for room: the reply behind it cannot be done.
    assert!(!call.is_finished());
    assert_eq!(next_event(&mut events).await.path, "/e2");
    within("sync", call).await.unwrap().unwrap();
}

#[tokio::test]
async fn idle_connection_pings_and_the_reply_extends_the_lease() {
    let fake = Fake::bind().await;
    let (client, mut events, mut peer, _) =
        connect_with(&fake, fake.config().with_session_timeout_ms(600), 0x7, 600).await;
    let lease_at_connect = client.lease();
    // Idle for ~timeout/3 (200 ms): a ping.
    let (h, req) = peer.read_request().await;
    assert_eq!((h.xid, req), (xid::PING, Request::Ping));
    let lease_before_reply = client.lease();
    assert_eq!(lease_before_reply, lease_at_connect);
    // Answer the ping, then a notification: once the notification is out, the ping
    // reply before it has been processed.
    peer.send(&[
        reply(xid::PING, 0, ErrorCode::Ok, |_| {}),
        notification(EventType::NodeCreated, "/barrier"),
    ])
    .await;
    assert_eq!(next_event(&mut events).await.path, "/barrier");
    let lease = client.lease();
    assert!(
        lease >= lease_at_connect + Duration::from_millis(150),
        "the ping was sent ~200 ms after connect, so the lease moved by about that"
    );
    assert!(lease <= Instant::now() + Duration::from_millis(600));
    assert_eq!(
        client.last_zxid_seen(),
        0,
        "pings do not move last_zxid_seen"
    );
}

/// A server that has proposed the session's expiry answers every packet, pings too,
/// with SessionExpired: that is no sign of life, so the lease ends rather than moves.
#[tokio::test]
async fn a_session_expired_reply_ends_the_lease_instead_of_renewing_it() {
    let fake = Fake::bind().await;
    let (client, mut events, mut peer, _) =
        connect_with(&fake, fake.config().with_session_timeout_ms(600), 0x9, 600).await;
    let lease_at_connect = client.lease();
    assert!(lease_at_connect > Instant::now());
    let (h, req) = peer.read_request().await;
    assert_eq!((h.xid, req), (xid::PING, Request::Ping));
    peer.send(&[
        reply(xid::PING, 0, ErrorCode::SessionExpired, |_| {}),
        notification(EventType::NodeCreated, "/barrier"),
    ])
    .await;
    assert_eq!(next_event(&mut events).await.path, "/barrier");
    assert!(
        client.lease() <= Instant::now(),
        "a SessionExpired ping reply left the lease at {:?} from now",
        client.lease().saturating_duration_since(Instant::now())
    );
}

/// A reconnect backoff from 0 would never grow (it doubles): refused up front.
#[tokio::test]
async fn a_zero_reconnect_backoff_is_refused() {
    let fake = Fake::bind().await;
    let r = Client::connect(fake.config().with_reconnect_backoff_ms(0, 100)).await;
    assert!(
        matches!(&r, Err(Error::InvalidArgument(m)) if m.contains("reconnect_backoff_min_ms")),
        "{:?}",
        r.err()
    );
}

#[tokio::test]
async fn silent_server_is_dropped_after_the_read_timeout() {
    let fake = Fake::bind().await;
    let (client, mut events, mut peer, _) =
        connect_with(&fake, fake.config().with_session_timeout_ms(600), 0x8, 600).await;
    // Read the ping and never answer: after 2/3 of 600 ms without a frame the client
    // gives up on this connection and reconnects with its session.
    let (h, _) = peer.read_request().await;
    assert_eq!(h.xid, xid::PING);
    assert_eq!(
        next_event(&mut events).await,
        state_event(KeeperState::Disconnected)
    );
    let mut peer2 = fake.accept().await;
    let req = peer2.handshake(0x8, 600).await;
    assert_eq!(req.session_id, 0x8);
    assert_eq!(req.passwd, PASSWD);
    assert_eq!(
        next_event(&mut events).await,
        state_event(KeeperState::SyncConnected)
    );
    assert_eq!(client.state(), SessionState::Connected);
    drop(peer);
}

#[tokio::test]
async fn reconnect_resends_auth_then_set_watches2() {
    let fake = Fake::bind().await;
    let cfg = fake.config().with_auth("digest", b"u:p");
    let (client, mut events, mut peer, _) = connect_with(&fake, cfg, 0x42, 6_000).await;

    // The configured credentials come first on the new connection.
    let (h, req) = peer.read_request().await;
    assert_eq!((h.xid, h.op), (xid::AUTH, OpCode::Auth.code()));
    assert_eq!(
        req,
        Request::Auth(AuthPacket {
            auth_type: 0,
            scheme: "digest".into(),
            auth: b"u:p".to_vec()
        })
    );
    peer.send(&[reply(xid::AUTH, 0, ErrorCode::Ok, |_| {})])
        .await;

    // Credentials added later are re-sent too.
    let c = client.clone();
    let call = tokio::spawn(async move { c.add_auth("digest", b"v:q").await });
    let (h, _) = peer.read_request().await;
    assert_eq!(h.xid, xid::AUTH);
    peer.send(&[reply(xid::AUTH, 0, ErrorCode::Ok, |_| {})])
        .await;
    within("addAuth", call).await.unwrap().unwrap();

    // Arm one watch of each kind.
    let c = client.clone();
    let arm = tokio::spawn(async move {
        c.get_data("/d", true).await.unwrap();
        assert_eq!(c.exists("/e", true).await.unwrap(), None);
        c.get_children("/c", true).await.unwrap();
        c.add_watch("/p", AddWatchMode::Persistent).await.unwrap();
        c.add_watch("/r", AddWatchMode::PersistentRecursive)
            .await
            .unwrap();
        // Fails: no watch armed.
        assert!(c.get_data("/gone", true).await.is_err());
    });
    serve_one(&mut peer, OpCode::GetData, 40, ErrorCode::Ok, |o| {
        GetDataResponse {
            data: vec![],
            stat: stat(0),
        }
        .encode(o)
    })
    .await;
    serve_one(&mut peer, OpCode::Exists, 40, ErrorCode::NoNode, |_| {}).await;
    serve_one(&mut peer, OpCode::GetChildren, 41, ErrorCode::Ok, |o| {
        GetChildrenResponse {
            children: vec!["x".into()],
        }
        .encode(o)
    })
    .await;
    serve_one(&mut peer, OpCode::AddWatch, 41, ErrorCode::Ok, |o| {
        ErrorResponse { err: 0 }.encode(o)
    })
    .await;
    serve_one(&mut peer, OpCode::AddWatch, 42, ErrorCode::Ok, |o| {
        ErrorResponse { err: 0 }.encode(o)
    })
    .await;
    serve_one(&mut peer, OpCode::GetData, 42, ErrorCode::NoNode, |_| {}).await;
    within("arming watches", arm).await.unwrap();
    assert_eq!(client.last_zxid_seen(), 42);

    // The server goes away.
    drop(peer);
    assert_eq!(
        next_event(&mut events).await,
        state_event(KeeperState::Disconnected)
    );
    let mut peer = fake.accept().await;
    let req = peer.handshake(0x42, 6_000).await;
    assert_eq!(
        (req.session_id, req.passwd.as_slice(), req.last_zxid_seen),
        (0x42, &PASSWD[..], 42)
    );
    for auth in [&b"u:p"[..], b"v:q"] {
        let (h, req) = peer.read_request().await;
        assert_eq!(h.xid, xid::AUTH);
        let Request::Auth(a) = req else {
            panic!("{req:?}")
        };
        assert_eq!(a.auth, auth);
        peer.send(&[reply(xid::AUTH, 0, ErrorCode::Ok, |_| {})])
            .await;
    }
    let (h, req) = peer.read_request().await;
    assert_eq!(
        (h.xid, h.op),
        (xid::SET_WATCHES, OpCode::SetWatches2.code())
    );
    assert_eq!(
        req,
        Request::SetWatches(SetWatches2 {
            relative_zxid: 42,
            data_watches: vec!["/d".into()],
            exist_watches: vec!["/e".into()],
            child_watches: vec!["/c".into()],
            persistent_watches: vec!["/p".into()],
            persistent_recursive_watches: vec!["/r".into()],
        })
    );
    peer.send(&[reply(xid::SET_WATCHES, 0, ErrorCode::Ok, |_| {})])
        .await;
    assert_eq!(
        next_event(&mut events).await,
        state_event(KeeperState::SyncConnected)
    );

    // The session works on the new connection.
    let c = client.clone();
    let call = tokio::spawn(async move { c.check("/d", 0).await });
    serve_one(&mut peer, OpCode::Multi, 43, ErrorCode::Ok, |o| {
        MultiResult::encode_all(&[MultiResult::Check], o)
    })
    .await;
    within("check", call).await.unwrap().unwrap();
}

#[tokio::test]
async fn timeout_zero_on_reconnect_expires_the_session() {
    let fake = Fake::bind().await;
    let (client, mut events, peer, _) = connect_with(&fake, fake.config(), 0x77, 6_000).await;
    drop(peer);
    assert_eq!(
        next_event(&mut events).await,
        state_event(KeeperState::Disconnected)
    );
    let mut peer = fake.accept().await;
    let req = peer.handshake(0, 0).await;
    assert_eq!(req.session_id, 0x77);
    assert_eq!(
        next_event(&mut events).await,
        state_event(KeeperState::Expired)
    );
    assert_eq!(within("end of events", events.recv()).await, None);
    assert_eq!(client.state(), SessionState::Expired);
    assert!(client.lease() <= Instant::now());
    assert!(matches!(
        client.get_data("/a", false).await,
        Err(Error::SessionExpired)
    ));
    client.close().await.unwrap();
    assert_eq!(client.state(), SessionState::Expired);
}

#[tokio::test]
async fn dropped_connection_fails_requests_in_flight_and_waiting_ones_time_out() {
    let fake = Fake::bind().await;
    let cfg = fake.config().with_request_timeout_ms(400);
    let (client, mut events, mut peer, _) = connect_with(&fake, cfg, 0x3, 6_000).await;
    let c = client.clone();
    let call = tokio::spawn(async move { c.get_data("/a", false).await });
    let (h, _) = peer.read_request().await;
    assert_eq!(h.op, OpCode::GetData.code());
    drop(peer);
    assert!(matches!(
        within("getData", call).await.unwrap(),
        Err(Error::ConnectionLoss)
    ));
    assert_eq!(
        next_event(&mut events).await,
        state_event(KeeperState::Disconnected)
    );
    // No server answers the reconnect handshake: a request made now waits for a
    // connection until its deadline, then fails with ConnectionLoss.
    let started = Instant::now();
    assert!(matches!(
        client.get_data("/b", false).await,
        Err(Error::ConnectionLoss)
    ));
    assert!(started.elapsed() >= Duration::from_millis(350));
    assert_ne!(client.state(), SessionState::Connected);
}

#[tokio::test]
async fn garbage_from_the_server_drops_the_connection_without_panicking() {
    let fake = Fake::bind().await;
    let (client, mut events, mut peer, _) = connect_with(&fake, fake.config(), 0x4, 6_000).await;
    let c = client.clone();
    let call = tokio::spawn(async move { c.get_data("/a", false).await });
    let (h, _) = peer.read_request().await;
    // A reply for an xid that is not in flight.
    peer.send(&[reply(h.xid + 100, 1, ErrorCode::Ok, |_| {})])
        .await;
    assert!(matches!(
        within("getData", call).await.unwrap(),
        Err(Error::ConnectionLoss)
    ));
    assert_eq!(
        next_event(&mut events).await,
        state_event(KeeperState::Disconnected)
    );
    // Next connection: a length prefix far above the frame limit.
    let mut peer = fake.accept().await;
    peer.handshake(0x4, 6_000).await;
    assert_eq!(
        next_event(&mut events).await,
        state_event(KeeperState::SyncConnected)
    );
    peer.stream
        .write_all(&(i32::MAX).to_be_bytes())
        .await
        .unwrap();
    assert_eq!(
        next_event(&mut events).await,
        state_event(KeeperState::Disconnected)
    );
    // And a reply whose body does not decode fails that call only.
    let mut peer = fake.accept().await;
    peer.handshake(0x4, 6_000).await;
    let c = client.clone();
    let call = tokio::spawn(async move { c.get_data("/a", false).await });
    let (h, _) = peer.read_request().await;
    peer.send(&[reply(h.xid, 2, ErrorCode::Ok, |o| o.put_i32(-7))])
        .await;
    assert!(matches!(
        within("getData", call).await.unwrap(),
        Err(Error::Protocol(_))
    ));
    assert_eq!(client.state(), SessionState::Connected);
}

#[tokio::test]
async fn close_sends_close_session_and_waits_for_the_reply() {
    let fake = Fake::bind().await;
    let (client, mut events, mut peer, _) = connect_with(&fake, fake.config(), 0x6, 6_000).await;
    let c = client.clone();
    let close = tokio::spawn(async move { c.close().await });
    serve_one(&mut peer, OpCode::CloseSession, 50, ErrorCode::Ok, |_| {}).await;
    within("close", close).await.unwrap().unwrap();
    assert_eq!(client.state(), SessionState::Closed);
    assert_eq!(
        next_event(&mut events).await,
        state_event(KeeperState::Closed)
    );
    assert_eq!(within("end of events", events.recv()).await, None);
    assert!(matches!(
        client.get_data("/a", false).await,
        Err(Error::Closed)
    ));
}
