//! A blocking, byte-level ZooKeeper protocol client for tests that must control exactly
//! what goes on the wire: stop heartbeating, send garbage, pipeline requests.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use bytes::BytesMut;
use coordd_proto::frame::write_frame;
use coordd_proto::{ConnectRequest, ConnectResponse, Reader, Record, ReplyHeader, Request};

pub struct RawConn {
    pub stream: TcpStream,
    pub session_id: i64,
    pub passwd: Vec<u8>,
    pub timeout_ms: i32,
    next_xid: i32,
}

/// One frame from the server: its reply header and the body after it.
#[derive(Debug)]
pub struct Frame {
    pub header: ReplyHeader,
    pub body: Vec<u8>,
}

impl RawConn {
    pub fn tcp(addr: SocketAddr) -> TcpStream {
        let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.set_nodelay(true).unwrap();
        s
    }

    /// A TCP connection to `addr` from the local address `from` (e.g. 127.0.0.2, to
    /// show a per-IP limit is per IP), with the same settings as [`RawConn::tcp`].
    pub fn tcp_from(from: std::net::IpAddr, addr: SocketAddr) -> std::io::Result<TcpStream> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let s = rt.block_on(async {
            let sock = match from {
                std::net::IpAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
                std::net::IpAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
            };
            sock.bind(SocketAddr::new(from, 0))?;
            let s = tokio::time::timeout(Duration::from_secs(5), sock.connect(addr))
                .await
                .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
            s.into_std()
        })?;
        s.set_nonblocking(false)?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        s.set_nodelay(true)?;
        Ok(s)
    }

    /// A new session over an already connected stream.
    pub fn new_session_over(s: TcpStream, timeout_ms: i32) -> RawConn {
        Self::try_new_session_over(s, timeout_ms).expect("connect response")
    }

    /// A new session over an already connected stream; None if the server closed it.
    pub fn try_new_session_over(mut s: TcpStream, timeout_ms: i32) -> Option<RawConn> {
        let resp = Self::handshake(&mut s, timeout_ms, 0, &[0; 16], 0)?;
        assert!(resp.timeout_ms > 0, "session refused");
        Some(RawConn {
            stream: s,
            session_id: resp.session_id,
            passwd: resp.passwd,
            timeout_ms: resp.timeout_ms,
            next_xid: 1,
        })
    }

    /// Sends the connect request on `s` and reads the answer; None if the server closed.
    pub fn handshake(
        s: &mut TcpStream,
        timeout_ms: i32,
        session_id: i64,
        passwd: &[u8],
        last_zxid: i64,
    ) -> Option<ConnectResponse> {
        let req = ConnectRequest {
            protocol_version: 0,
            last_zxid_seen: last_zxid,
            timeout_ms,
            session_id,
            passwd: passwd.to_vec(),
            read_only: false,
        };
        let mut out = BytesMut::new();
        write_frame(&mut out, |o| req.encode(o));
        s.write_all(&out).ok()?;
        let body = read_frame(s)?;
        Some(ConnectResponse::from_bytes(&body).expect("decode connect response"))
    }

    /// Handshake for a new session (`session_id` 0) or a resumed one. A server that
    /// closes the connection without a response (an ensemble member that does not serve
    /// clients at the moment: no quorum in sight) is tried again, as ZooKeeper clients
    /// do, for up to 10 s.
    pub fn connect(
        addr: SocketAddr,
        timeout_ms: i32,
        session_id: i64,
        passwd: &[u8],
        last_zxid: i64,
    ) -> (TcpStream, ConnectResponse) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(r) = Self::try_connect(addr, timeout_ms, session_id, passwd, last_zxid) {
                return r;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{addr} closed every connection without a connect response"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// One handshake; None when the server closes the connection without a response.
    pub fn try_connect(
        addr: SocketAddr,
        timeout_ms: i32,
        session_id: i64,
        passwd: &[u8],
        last_zxid: i64,
    ) -> Option<(TcpStream, ConnectResponse)> {
        let mut s = Self::tcp(addr);
        let resp = Self::handshake(&mut s, timeout_ms, session_id, passwd, last_zxid)?;
        Some((s, resp))
    }

    /// A new session, or None when the server closes the connection instead (an
    /// ensemble member that does not serve clients yet) or refuses the session.
    pub fn try_new_session(addr: SocketAddr, timeout_ms: i32) -> Option<RawConn> {
        let (stream, resp) = Self::try_connect(addr, timeout_ms, 0, &[0; 16], 0)?;
        (resp.timeout_ms > 0).then(|| RawConn {
            stream,
            session_id: resp.session_id,
            passwd: resp.passwd,
            timeout_ms: resp.timeout_ms,
            next_xid: 1,
        })
    }

    /// Closes the session (and waits for the server to close the connection).
    pub fn close_session(mut self) {
        if self.try_send(&Request::CloseSession).is_ok() {
            while self.recv().is_some() {}
        }
    }

    pub fn new_session(addr: SocketAddr, timeout_ms: i32) -> RawConn {
        let (stream, resp) = Self::connect(addr, timeout_ms, 0, &[0; 16], 0);
        assert!(resp.timeout_ms > 0, "session refused");
        RawConn {
            stream,
            session_id: resp.session_id,
            passwd: resp.passwd,
            timeout_ms: resp.timeout_ms,
            next_xid: 1,
        }
    }

    /// Resumes an existing session; the response says whether it was accepted.
    pub fn resume(
        addr: SocketAddr,
        session_id: i64,
        passwd: &[u8],
        last_zxid: i64,
    ) -> (RawConn, ConnectResponse) {
        let (stream, resp) = Self::connect(addr, 2000, session_id, passwd, last_zxid);
        let conn = RawConn {
            stream,
            session_id: resp.session_id,
            passwd: resp.passwd.clone(),
            timeout_ms: resp.timeout_ms,
            next_xid: 1000,
        };
        (conn, resp)
    }

    pub fn send(&mut self, req: &Request) -> i32 {
        self.try_send(req).expect("send request")
    }

    /// Sends a request; an error when the server has closed the connection.
    pub fn try_send(&mut self, req: &Request) -> std::io::Result<i32> {
        let xid = match req {
            Request::Ping => coordd_proto::xid::PING,
            _ => {
                self.next_xid += 1;
                self.next_xid
            }
        };
        let mut out = BytesMut::new();
        write_frame(&mut out, |o| req.encode_with_header(xid, o));
        self.stream.write_all(&out)?;
        Ok(xid)
    }

    pub fn recv(&mut self) -> Option<Frame> {
        let body = read_frame(&mut self.stream)?;
        let mut r = Reader::new(&body);
        let header = ReplyHeader::decode(&mut r).expect("reply header");
        Some(Frame {
            header,
            body: r.rest().to_vec(),
        })
    }

    /// Like [`RawConn::call`]; None when the connection closes first (ZooKeeper's
    /// ConnectionLoss: the request may or may not have been applied).
    pub fn try_call(&mut self, req: &Request) -> Option<(Frame, Vec<Frame>)> {
        let xid = self.try_send(req).ok()?;
        let mut events = Vec::new();
        loop {
            let f = self.recv()?;
            if f.header.xid == xid {
                return Some((f, events));
            }
            events.push(f);
        }
    }

    /// Sends a request and returns its reply, collecting watch events that come first.
    pub fn call(&mut self, req: &Request) -> (Frame, Vec<Frame>) {
        let xid = self.send(req);
        let mut events = Vec::new();
        loop {
            let f = self.recv().expect("reply");
            if f.header.xid == xid {
                return (f, events);
            }
            events.push(f);
        }
    }
}

/// Reads one length-prefixed frame; None on EOF or error.
pub fn read_frame(s: &mut TcpStream) -> Option<Vec<u8>> {
    let mut len = [0u8; 4];
    s.read_exact(&mut len).ok()?;
    let n = i32::from_be_bytes(len);
    if n < 0 {
        return None;
    }
    let mut body = vec![0u8; n as usize];
    s.read_exact(&mut body).ok()?;
    Some(body)
}
