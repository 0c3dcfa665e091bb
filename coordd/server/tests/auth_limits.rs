//! addAuth's bounds (`AUTH_IDS_PER_SESSION_MAX`, `AUTH_CREDENTIAL_BYTES_MAX`) against a
//! standalone server in this process, at the byte level: what the client gets back and
//! whether the server closes the connection must be seen exactly, which our client's
//! reconnects would hide.

use std::time::Duration;

use bytes::BytesMut;
use coordd::config::{Config, FileConfig, Flags};
use coordd::server::core::{AUTH_CREDENTIAL_BYTES_MAX, AUTH_IDS_PER_SESSION_MAX};
use coordd::server::Server;
use coordd_proto::frame::write_frame;
use coordd_proto::{
    xid, AuthPacket, ConnectRequest, ConnectResponse, ErrorCode, Reader, Record, ReplyHeader,
    Request, WhoAmIResponse,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Deadline of every wait on the server.
const WAIT: Duration = Duration::from_secs(10);
/// Largest frame the tests read back (replies here are small).
const REPLY_BYTES_MAX: usize = 1 << 20;

async fn start() -> (Server, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let flags = Flags {
        client_addr: Some("127.0.0.1:0".parse().unwrap()),
        data_dir: Some(dir.path().to_path_buf()),
        no_fsync: true,
        ..Flags::default()
    };
    let config = Config::resolve(flags, FileConfig::default()).unwrap();
    (Server::start(config).await.unwrap(), dir)
}

/// One session on one connection, spoken to frame by frame.
struct Raw {
    s: TcpStream,
    next_xid: i32,
}

impl Raw {
    async fn session(server: &Server) -> Raw {
        let s = tokio::time::timeout(WAIT, TcpStream::connect(server.local_addr))
            .await
            .expect("connected in time")
            .unwrap();
        let mut raw = Raw { s, next_xid: 1 };
        let req = ConnectRequest {
            protocol_version: 0,
            last_zxid_seen: 0,
            timeout_ms: 10_000,
            session_id: 0,
            passwd: vec![0; 16],
            read_only: false,
        };
        let mut out = BytesMut::new();
        write_frame(&mut out, |o| req.encode(o));
        raw.s.write_all(&out).await.unwrap();
        let body = raw.frame().await.expect("a connect response");
        let resp = ConnectResponse::from_bytes(&body).unwrap();
        assert!(resp.timeout_ms > 0, "session refused");
        raw
    }

    /// The next frame's body; None once the server closed the connection.
    async fn frame(&mut self) -> Option<Vec<u8>> {
        tokio::time::timeout(WAIT, async {
            let mut len = [0u8; 4];
            self.s.read_exact(&mut len).await.ok()?;
            let n = usize::try_from(i32::from_be_bytes(len)).ok()?;
            assert!(n <= REPLY_BYTES_MAX, "reply of {n} bytes");
            let mut body = vec![0u8; n];
            self.s.read_exact(&mut body).await.ok()?;
            Some(body)
        })
        .await
        .expect("a frame or the close in time")
    }

    /// Sends `req` with `xid`; returns its reply's header and body.
    async fn call(&mut self, xid: i32, req: &Request) -> (ReplyHeader, Vec<u8>) {
        let mut out = BytesMut::new();
        write_frame(&mut out, |o| req.encode_with_header(xid, o));
        self.s.write_all(&out).await.unwrap();
        loop {
            let body = self.frame().await.expect("a reply before the close");
            let mut r = Reader::new(&body);
            let h = ReplyHeader::decode(&mut r).unwrap();
            if h.xid == xid {
                return (h, r.rest().to_vec());
            }
        }
    }

    /// addAuth's error code.
    async fn add_auth(&mut self, scheme: &str, auth: &[u8]) -> i32 {
        let req = Request::Auth(AuthPacket {
            auth_type: 0,
            scheme: scheme.into(),
            auth: auth.to_vec(),
        });
        self.call(xid::AUTH, &req).await.0.err
    }

    /// The session's identities, as (scheme, id).
    async fn who_am_i(&mut self) -> Vec<(String, String)> {
        self.next_xid += 1;
        let (h, body) = self.call(self.next_xid, &Request::WhoAmI).await;
        assert_eq!(h.err, 0);
        WhoAmIResponse::from_bytes(&body)
            .unwrap()
            .client_info
            .into_iter()
            .map(|c| (c.auth_scheme, c.user))
            .collect()
    }

    /// Waits (at most `WAIT` per frame) until the server closes the connection (EOF),
    /// reading past any frame still on its way.
    async fn expect_closed_by_server(&mut self) {
        while self.frame().await.is_some() {}
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_add_auth_past_the_identity_cap_fails_and_closes_the_connection() {
    let (server, _dir) = start().await;
    let mut c = Raw::session(&server).await;
    // The ip identity is one of the session's; addAuth fills the rest.
    for i in 1..AUTH_IDS_PER_SESSION_MAX {
        let err = c.add_auth("digest", format!("user{i}:pw").as_bytes()).await;
        assert_eq!(err, 0, "addAuth {i} of {AUTH_IDS_PER_SESSION_MAX}");
    }
    assert_eq!(c.who_am_i().await.len(), AUTH_IDS_PER_SESSION_MAX);
    // At the cap, an identity the session already holds adds nothing and passes.
    assert_eq!(c.add_auth("digest", b"user1:pw").await, 0);
    assert_eq!(c.add_auth("ip", b"").await, 0);
    // One more distinct identity: ZooKeeper's failed-auth answer, then the close.
    assert_eq!(
        c.add_auth("digest", b"one-too-many:pw").await,
        ErrorCode::AuthFailed.code()
    );
    c.expect_closed_by_server().await;

    // Everyone else is served as before.
    let mut other = Raw::session(&server).await;
    assert_eq!(other.add_auth("digest", b"alice:secret").await, 0);
    let ids = other.who_am_i().await;
    assert_eq!(ids.len(), 2, "{ids:?}");
    assert!(ids.contains(&("digest".into(), "alice".into())), "{ids:?}");

    server.shutdown_token().cancel();
    server.wait().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_credential_over_the_byte_cap_is_refused_and_closes_the_connection() {
    let (server, _dir) = start().await;
    // Normal digest auth works.
    let mut c = Raw::session(&server).await;
    assert_eq!(c.add_auth("digest", b"alice:secret").await, 0);
    let ids = c.who_am_i().await;
    // whoAmI names a digest identity by its user.
    assert!(ids.contains(&("digest".into(), "alice".into())), "{ids:?}");
    // A credential of exactly the cap passes.
    let mut at_cap = vec![b'u'; AUTH_CREDENTIAL_BYTES_MAX - 3];
    at_cap.extend_from_slice(b":pw");
    assert_eq!(c.add_auth("digest", &at_cap).await, 0);
    assert_eq!(c.who_am_i().await.len(), ids.len() + 1);

    // One byte more: refused, nothing added, the connection closed.
    let mut over = vec![b'v'; AUTH_CREDENTIAL_BYTES_MAX - 2];
    over.extend_from_slice(b":pw");
    assert_eq!(
        c.add_auth("digest", &over).await,
        ErrorCode::AuthFailed.code()
    );
    c.expect_closed_by_server().await;

    // A ~1 MiB credential on a fresh connection: the same.
    let mut big = Raw::session(&server).await;
    let mut huge = vec![b'w'; 1_000_000];
    huge.extend_from_slice(b":pw");
    assert_eq!(
        big.add_auth("digest", &huge).await,
        ErrorCode::AuthFailed.code()
    );
    big.expect_closed_by_server().await;

    server.shutdown_token().cancel();
    server.wait().await.unwrap();
}
