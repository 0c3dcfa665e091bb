//! The session task: owns the TCP connection, writes requests, reads frames, keeps the
//! session alive and reconnects.
//!
//! There is exactly one task per client. It drives one connection at a time (reader
//! and writer multiplexed in one `select!` loop, so frame order is never lost between
//! two tasks) and, when that connection drops, makes the next one.
//!
//! Invariants:
//! - Frames from the server are processed strictly in arrival order, one at a time.
//!   A watch event is handed to the events queue before any later frame is looked at,
//!   so it reaches the application before the reply of any later request completes.
//! - When the events queue is full, frame processing stops (and the socket is not read)
//!   until the application takes an event: backpressure, never a dropped event. The
//!   read timeout is suspended meanwhile, but at most one ping is outstanding and its
//!   reply is not processed, so the lease does not advance and a consumer stuck for a
//!   session timeout loses the session (which is what fencing wants).
//! - Ordinary requests get positive xids and are answered in send order; a reply with
//!   any other xid than the oldest in flight drops the connection.
//! - Everything is bounded: requests in flight ([`IN_FLIGHT_MAX`]), bytes waiting to be
//!   written ([`WRITE_BUFFER_BYTES_HIGH`] plus one frame), incoming frames (the frame
//!   limit), queued events (the configured queue size plus the few events one frame
//!   can produce), reconnect delays (the backoff bounds).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use coordd_proto::frame::{split_frame, write_frame};
use coordd_proto::{
    xid, AuthPacket, ConnectRequest, ConnectResponse, ErrorCode, EventType, KeeperState, OpCode,
    Reader, Record, ReplyHeader, Request, RequestHeader, SetWatches, WatcherEvent,
};
use rand::rngs::StdRng;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, watch, Notify};
use tokio::time::{sleep, sleep_until, timeout, Instant};
use tracing::{debug, info, warn};

use crate::session::{match_reply, next_xid, Backoff, InFlight, Lease, ServerList, SessionState};
use crate::watches::{WatchReg, WatchRegistry, SET_WATCHES_PATH_BYTES_MAX};
use crate::{ClientConfig, Error, Result, WatchedEvent};

/// Most requests in flight on one connection; beyond it the task stops taking new
/// requests (callers wait in the request queue, bounded by their deadline).
pub const IN_FLIGHT_MAX: usize = 4096;
/// Capacity of the queue between `Client` handles and the session task.
pub const REQUEST_QUEUE_MAX: usize = 1024;
/// The task stops taking requests while more than this many bytes wait to be written.
pub const WRITE_BUFFER_BYTES_HIGH: usize = 256 * 1024;
/// Read buffer growth step.
const READ_CHUNK_BYTES: usize = 16 * 1024;

/// State shared between the handles and the session task.
pub(crate) struct Shared {
    pub state: watch::Sender<SessionState>,
    pub session_id: AtomicI64,
    pub passwd: Mutex<Vec<u8>>,
    pub timeout_ms: AtomicU32,
    pub last_zxid: AtomicI64,
    pub lease: Mutex<Lease>,
    pub watches: Mutex<WatchRegistry>,
    /// Credentials re-sent after every reconnect: the configured ones plus every
    /// successful `add_auth`.
    pub auths: Mutex<Vec<(String, Vec<u8>)>>,
    /// Set once `close()` starts (or every handle is gone); never cleared.
    pub closing: AtomicBool,
    /// Wakes the task to finish at once (close while disconnected, or a close whose
    /// graceful closeSession did not complete).
    pub close_now: Notify,
}

/// Locks a mutex, recovering from poisoning: the data under our mutexes is always
/// consistent between statements, so a panic elsewhere cannot leave it half-updated.
pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    pub fn set_state(&self, s: SessionState) {
        self.state.send_if_modified(|cur| {
            // Terminal states are final.
            if *cur == s || cur.is_terminal() {
                false
            } else {
                *cur = s;
                true
            }
        });
    }

    pub fn state(&self) -> SessionState {
        *self.state.borrow()
    }
}

/// A server's answer to a request.
#[derive(Debug)]
pub(crate) struct Reply {
    pub err: i32,
    /// The record after the reply header.
    pub body: BytesMut,
}

pub(crate) enum CommandKind {
    /// An ordinary request; the task patches its xid into the frame.
    Request { op: OpCode, watch: Option<WatchReg> },
    /// addAuth (xid -4): answered out of order with ordinary requests, in order with
    /// other auth packets.
    Auth { scheme: String, auth: Vec<u8> },
}

pub(crate) struct Command {
    /// Length prefix, request header, record.
    pub frame: BytesMut,
    pub kind: CommandKind,
    pub reply: oneshot::Sender<Result<Reply>>,
}

/// Encodes a request frame with xid 0, to be patched by the task.
pub(crate) fn encode_request(req: &Request) -> BytesMut {
    let mut frame = BytesMut::new();
    write_frame(&mut frame, |o| req.encode_with_header(0, o));
    frame
}

fn patch_xid(frame: &mut BytesMut, xid: i32) {
    // The header's xid follows the 4-byte length prefix.
    if frame.len() >= 8 {
        frame[4..8].copy_from_slice(&xid.to_be_bytes());
    }
}

/// A connection's byte stream: plain TCP, or TLS over it.
pub(crate) trait ClientIo: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> ClientIo for T {}
pub(crate) type ClientStream = Box<dyn ClientIo>;

/// What a TLS connection needs, built once from [`TlsConfig`](crate::TlsConfig).
#[derive(Clone)]
pub(crate) struct Tls {
    pub connector: coordd_tls::TlsConnector,
    /// None: the host of the address connected to.
    pub server_name: Option<coordd_tls::rustls::pki_types::ServerName<'static>>,
}

/// A completed TCP connect (and TLS handshake) plus the session handshake.
pub(crate) struct Handshake {
    pub stream: ClientStream,
    /// Bytes read after the connect response (the server may already send more).
    pub rbuf: BytesMut,
    pub resp: ConnectResponse,
    pub sent_at: Instant,
    pub addr: String,
}

/// Connects to `addr` and runs the handshake. The caller bounds it with a timeout.
pub(crate) async fn connect_once(
    addr: &str,
    req: &ConnectRequest,
    frame_bytes_max: usize,
    tls: Option<&Tls>,
) -> Result<Handshake> {
    let tcp = TcpStream::connect(addr).await?;
    // Requests are small and latency-bound; Nagle would hold pings and replies back.
    tcp.set_nodelay(true)?;
    let mut stream: ClientStream = match tls {
        None => Box::new(tcp),
        Some(tls) => {
            let name = match &tls.server_name {
                Some(n) => n.clone(),
                None => coordd_tls::server_name(coordd_tls::host_of(addr))
                    .map_err(|e| Error::InvalidArgument(format!("tls: {e}")))?,
            };
            let s = tls.connector.connect(name, tcp).await.map_err(|e| {
                Error::Io(std::io::Error::new(
                    e.kind(),
                    format!("TLS handshake with {addr}: {e}"),
                ))
            })?;
            Box::new(s)
        }
    };
    let mut out = BytesMut::new();
    write_frame(&mut out, |o| req.encode(o));
    let sent_at = Instant::now();
    stream.write_all(&out).await?;
    stream.flush().await?;
    let mut rbuf = BytesMut::with_capacity(READ_CHUNK_BYTES);
    loop {
        match split_frame(&mut rbuf, frame_bytes_max) {
            Err(e) => return Err(Error::Protocol(format!("connect response: {e}"))),
            Ok(Some(frame)) => {
                let resp = ConnectResponse::from_bytes(&frame)?;
                return Ok(Handshake {
                    stream,
                    rbuf,
                    resp,
                    sent_at,
                    addr: addr.to_owned(),
                });
            }
            Ok(None) => {}
        }
        if stream.read_buf(&mut rbuf).await? == 0 {
            return Err(Error::Io(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "server closed the connection during the handshake",
            )));
        }
    }
}

/// True when a connect response means the session is gone: ZooKeeper answers an
/// expired or unknown session with timeout 0 (and session id 0) before closing.
pub(crate) fn response_means_expired(resp: &ConnectResponse, session_id: i64) -> bool {
    resp.timeout_ms <= 0 || resp.session_id == 0 || resp.session_id != session_id
}

struct Pending {
    op: OpCode,
    watch: Option<WatchReg>,
    reply: Option<oneshot::Sender<Result<Reply>>>,
}

struct PendingAuth {
    reply: Option<oneshot::Sender<Result<Reply>>>,
    /// Remembered for reconnects once the server accepts it.
    entry: Option<(String, Vec<u8>)>,
}

struct Conn {
    read: ReadHalf<ClientStream>,
    write: WriteHalf<ClientStream>,
    rbuf: BytesMut,
    wbuf: BytesMut,
    /// Bytes were written since the last flush (TLS may hold the last record until a
    /// flush; on TCP a flush is a no-op).
    unflushed: bool,
    in_flight: VecDeque<InFlight<Pending>>,
    auths: VecDeque<PendingAuth>,
    ping_sent_at: Option<Instant>,
    last_send: Instant,
    last_recv: Instant,
    timeout: Duration,
    read_timeout: Duration,
    ping_interval: Duration,
    /// Set once closeSession is queued: no more requests are taken.
    close_deadline: Option<Instant>,
    set_watches_fallback_sent: bool,
    addr: String,
}

enum End {
    Lost(String),
    Closed,
}

enum Terminal {
    Expired,
    Closed,
}

enum Flow {
    Continue,
    Closed,
}

/// Writes some of `wbuf`, or flushes once it is empty.
async fn write_or_flush(w: &mut WriteHalf<ClientStream>, wbuf: &mut BytesMut) -> Step {
    if wbuf.is_empty() {
        Step::Flushed(w.flush().await)
    } else {
        Step::Wrote(w.write_buf(wbuf).await)
    }
}

/// What woke the connection loop.
enum Step {
    Continue,
    Read(std::io::Result<usize>),
    Wrote(std::io::Result<usize>),
    Flushed(std::io::Result<()>),
    Command(Option<Command>),
    CloseNow,
    Timer,
}

pub(crate) struct SessionTask {
    pub shared: Arc<Shared>,
    pub cfg: Arc<ClientConfig>,
    pub cmd_rx: mpsc::Receiver<Command>,
    pub events: mpsc::Sender<WatchedEvent>,
    pub servers: ServerList,
    pub backoff: Backoff,
    pub rng: StdRng,
    pub xid: i32,
    /// Events waiting for room in the events queue.
    pub outbox: VecDeque<WatchedEvent>,
    pub handles_dropped: bool,
    /// TLS to the servers (built from `cfg.tls` once, at connect).
    pub tls: Option<Tls>,
}

fn state_event(state: KeeperState) -> WatchedEvent {
    WatchedEvent {
        event_type: EventType::None,
        state,
        path: String::new(),
    }
}

impl SessionTask {
    pub(crate) async fn run(mut self, first: Handshake) {
        let mut next = Some(first);
        loop {
            let hs = match next.take() {
                Some(hs) => hs,
                None => match self.reconnect().await {
                    Ok(hs) => hs,
                    Err(t) => return self.finish(t).await,
                },
            };
            let mut conn = match self.establish(hs) {
                Ok(c) => c,
                Err(t) => return self.finish(t).await,
            };
            match self.drive(&mut conn).await {
                End::Closed => return self.finish(Terminal::Closed).await,
                End::Lost(reason) => {
                    warn!(server = %conn.addr, session_id = format_args!("{:#x}", self.session_id()), %reason, "connection lost");
                    drop(conn);
                    self.shared.set_state(SessionState::Disconnected);
                    self.emit(state_event(KeeperState::Disconnected));
                    self.flush_outbox_or_close().await;
                    if self.shared.closing.load(Ordering::Acquire) {
                        return self.finish(Terminal::Closed).await;
                    }
                }
            }
        }
    }

    fn session_id(&self) -> i64 {
        self.shared.session_id.load(Ordering::Acquire)
    }

    fn connect_request(&self) -> ConnectRequest {
        ConnectRequest {
            protocol_version: coordd_proto::PROTOCOL_VERSION,
            last_zxid_seen: self.shared.last_zxid.load(Ordering::Acquire),
            timeout_ms: self.cfg.session_timeout_ms as i32,
            session_id: self.session_id(),
            passwd: lock(&self.shared.passwd).clone(),
            read_only: self.cfg.read_only,
        }
    }

    async fn reconnect(&mut self) -> Result<Handshake, Terminal> {
        loop {
            if self.shared.closing.load(Ordering::Acquire) {
                return Err(Terminal::Closed);
            }
            let delay = self.backoff.next_delay(&mut self.rng);
            tokio::select! {
                _ = sleep(delay) => {}
                _ = self.shared.close_now.notified() => return Err(Terminal::Closed),
            }
            self.shared.set_state(SessionState::Connecting);
            let addr = self.servers.next_server().to_owned();
            let req = self.connect_request();
            debug!(server = %addr, last_zxid_seen = req.last_zxid_seen, "reconnecting");
            let attempt_ms = reconnect_attempt_timeout_ms(
                self.cfg.connect_timeout_ms,
                self.shared.timeout_ms.load(Ordering::Acquire),
                self.servers.len(),
            );
            let connect_timeout = Duration::from_millis(attempt_ms);
            let attempt = timeout(
                connect_timeout,
                connect_once(&addr, &req, self.cfg.frame_bytes_max, self.tls.as_ref()),
            );
            tokio::select! {
                r = attempt => match r {
                    Ok(Ok(hs)) => return Ok(hs),
                    Ok(Err(e)) => warn!(server = %addr, error = %e, "reconnect attempt failed"),
                    Err(_) => warn!(server = %addr, timeout_ms = attempt_ms, "reconnect attempt timed out"),
                },
                _ = self.shared.close_now.notified() => return Err(Terminal::Closed),
            }
            self.shared.set_state(SessionState::Disconnected);
        }
    }

    /// Adopts a handshake: checks for expiry, renews the lease, re-sends credentials and
    /// watches, and announces the connection.
    fn establish(&mut self, hs: Handshake) -> Result<Conn, Terminal> {
        let session_id = self.session_id();
        if response_means_expired(&hs.resp, session_id) {
            warn!(server = %hs.addr, session_id = format_args!("{session_id:#x}"), "session expired");
            return Err(Terminal::Expired);
        }
        let timeout = Duration::from_millis(hs.resp.timeout_ms as u64);
        self.shared
            .timeout_ms
            .store(hs.resp.timeout_ms as u32, Ordering::Release);
        lock(&self.shared.lease).on_reply(hs.sent_at, timeout);
        self.backoff.reset();
        info!(
            server = %hs.addr,
            session_id = format_args!("{session_id:#x}"),
            timeout_ms = hs.resp.timeout_ms,
            read_only = hs.resp.read_only,
            "connected"
        );
        let now = Instant::now();
        let (read, write) = tokio::io::split(hs.stream);
        // ZooKeeper's ClientCnxn: read timeout 2/3 of the session timeout, ping when
        // nothing was sent for half of that.
        let read_timeout = timeout * 2 / 3;
        let mut conn = Conn {
            read,
            write,
            rbuf: hs.rbuf,
            wbuf: BytesMut::new(),
            unflushed: false,
            in_flight: VecDeque::new(),
            auths: VecDeque::new(),
            ping_sent_at: None,
            last_send: now,
            last_recv: now,
            timeout,
            read_timeout,
            ping_interval: read_timeout / 2,
            close_deadline: None,
            set_watches_fallback_sent: false,
            addr: hs.addr,
        };
        // Credentials first, so that the watches and every later request run with them.
        for (scheme, auth) in lock(&self.shared.auths).iter() {
            let req = Request::Auth(AuthPacket {
                auth_type: 0,
                scheme: scheme.clone(),
                auth: auth.clone(),
            });
            write_frame(&mut conn.wbuf, |o| req.encode_with_header(xid::AUTH, o));
            conn.auths.push_back(PendingAuth {
                reply: None,
                entry: None,
            });
        }
        let relative_zxid = self.shared.last_zxid.load(Ordering::Acquire);
        let batches =
            lock(&self.shared.watches).set_watches(relative_zxid, SET_WATCHES_PATH_BYTES_MAX);
        for sw in batches {
            debug!(
                relative_zxid,
                data = sw.data_watches.len(),
                exist = sw.exist_watches.len(),
                child = sw.child_watches.len(),
                persistent = sw.persistent_watches.len(),
                persistent_recursive = sw.persistent_recursive_watches.len(),
                "re-arming watches"
            );
            let req = Request::SetWatches(sw);
            write_frame(&mut conn.wbuf, |o| {
                req.encode_with_header(xid::SET_WATCHES, o)
            });
        }
        self.shared.set_state(SessionState::Connected);
        self.emit(state_event(if hs.resp.read_only {
            KeeperState::ConnectedReadOnly
        } else {
            KeeperState::SyncConnected
        }));
        Ok(conn)
    }

    async fn finish(mut self, t: Terminal) {
        let (state, err): (SessionState, fn() -> Error) = match t {
            Terminal::Expired => (SessionState::Expired, || Error::SessionExpired),
            Terminal::Closed => (SessionState::Closed, || Error::Closed),
        };
        lock(&self.shared.lease).end(Instant::now());
        self.shared.set_state(state);
        // Requests still queued: they never reached a server.
        self.cmd_rx.close();
        while let Ok(cmd) = self.cmd_rx.try_recv() {
            let _ = cmd.reply.send(Err(err()));
        }
        match t {
            Terminal::Expired => {
                info!(
                    session_id = format_args!("{:#x}", self.session_id()),
                    "session expired; client finished"
                );
                self.emit(state_event(KeeperState::Expired));
                // The application must learn of the expiry; wait for room unless it is
                // closing the client.
                self.flush_outbox_or_close().await;
            }
            Terminal::Closed => {
                info!(
                    session_id = format_args!("{:#x}", self.session_id()),
                    "session closed"
                );
                self.emit(state_event(KeeperState::Closed));
                // Closing: whoever still reads events gets what fits, then end of stream.
                while let Some(ev) = self.outbox.pop_front() {
                    if self.events.try_send(ev).is_err() {
                        break;
                    }
                }
            }
        }
    }

    /// A reply to what was sent at `sent_at` came back with error code `err`. The server
    /// answers SessionExpired to every packet (pings too) once it has proposed the
    /// session's expiry or close: such a reply is no sign of life, and the lease ends
    /// now. Any other reply (errors such as NoNode included) renews it.
    fn lease_on_reply(&self, err: i32, sent_at: Instant, timeout: Duration) {
        let mut lease = lock(&self.shared.lease);
        if err == ErrorCode::SessionExpired as i32 {
            lease.end(Instant::now());
        } else {
            lease.on_reply(sent_at, timeout);
        }
    }

    /// Queues an event, keeping order with events already waiting.
    fn emit(&mut self, ev: WatchedEvent) {
        if self.outbox.is_empty() {
            match self.events.try_send(ev) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(ev)) => self.outbox.push_back(ev),
                // Nobody listens: events are discarded.
                Err(mpsc::error::TrySendError::Closed(_)) => {}
            }
        } else {
            self.outbox.push_back(ev);
        }
    }

    async fn flush_outbox_or_close(&mut self) {
        while !self.outbox.is_empty() {
            tokio::select! {
                permit = self.events.reserve() => match (permit, self.outbox.pop_front()) {
                    (Ok(p), Some(ev)) => p.send(ev),
                    _ => self.outbox.clear(),
                },
                _ = self.shared.close_now.notified() => {
                    self.shared.closing.store(true, Ordering::Release);
                    return;
                }
            }
        }
    }

    fn take_command(&mut self, c: &mut Conn, cmd: Command) {
        // The caller gave up (timeout) while the request waited for a connection: do not
        // send a request nobody will see the outcome of.
        if cmd.reply.is_closed() {
            return;
        }
        let now = Instant::now();
        let Command {
            mut frame,
            kind,
            reply,
        } = cmd;
        match kind {
            CommandKind::Auth { scheme, auth } => {
                c.wbuf.extend_from_slice(&frame);
                c.auths.push_back(PendingAuth {
                    reply: Some(reply),
                    entry: Some((scheme, auth)),
                });
            }
            CommandKind::Request { op, watch } => {
                self.xid = next_xid(self.xid);
                patch_xid(&mut frame, self.xid);
                c.wbuf.extend_from_slice(&frame);
                c.in_flight.push_back(InFlight {
                    xid: self.xid,
                    sent_at: now,
                    item: Pending {
                        op,
                        watch,
                        reply: Some(reply),
                    },
                });
                if op == OpCode::CloseSession {
                    c.close_deadline =
                        Some(now + Duration::from_millis(self.cfg.request_timeout_ms as u64));
                }
            }
        }
        c.last_send = now;
    }

    /// Every handle is gone: close the session rather than leave it (and its ephemeral
    /// nodes) to expire.
    fn close_for_dropped_handles(&mut self, c: &mut Conn) {
        self.handles_dropped = true;
        self.shared.closing.store(true, Ordering::Release);
        if c.close_deadline.is_some() {
            return;
        }
        info!("every client handle dropped; closing the session");
        let now = Instant::now();
        self.xid = next_xid(self.xid);
        let mut frame = encode_request(&Request::CloseSession);
        patch_xid(&mut frame, self.xid);
        c.wbuf.extend_from_slice(&frame);
        c.in_flight.push_back(InFlight {
            xid: self.xid,
            sent_at: now,
            item: Pending {
                op: OpCode::CloseSession,
                watch: None,
                reply: None,
            },
        });
        c.close_deadline = Some(now + Duration::from_millis(self.cfg.request_timeout_ms as u64));
        c.last_send = now;
    }

    fn send_ping(&mut self, c: &mut Conn) {
        let now = Instant::now();
        write_frame(&mut c.wbuf, |o| {
            Request::Ping.encode_with_header(xid::PING, o)
        });
        c.ping_sent_at = Some(now);
        c.last_send = now;
    }

    /// Fails everything in flight and reports the connection lost.
    fn lose(&mut self, c: &mut Conn, reason: String, err: fn() -> Error) -> End {
        for p in c.in_flight.drain(..) {
            if let Some(tx) = p.item.reply {
                let _ = tx.send(Err(err()));
            }
        }
        for a in c.auths.drain(..) {
            if let Some(tx) = a.reply {
                let _ = tx.send(Err(err()));
            }
        }
        End::Lost(reason)
    }

    async fn drive(&mut self, c: &mut Conn) -> End {
        loop {
            // Frames already read, in order, while the events queue has room.
            while self.outbox.is_empty() {
                match split_frame(&mut c.rbuf, self.cfg.frame_bytes_max) {
                    Err(e) => {
                        return self.lose(c, format!("bad frame: {e}"), || Error::ConnectionLoss)
                    }
                    Ok(None) => break,
                    Ok(Some(frame)) => match self.on_frame(c, frame) {
                        Ok(Flow::Continue) => {}
                        Ok(Flow::Closed) => {
                            self.lose(c, String::new(), || Error::Closed);
                            return End::Closed;
                        }
                        Err(reason) => return self.lose(c, reason, || Error::ConnectionLoss),
                    },
                }
            }
            let stalled = !self.outbox.is_empty();
            let now = Instant::now();
            if stalled {
                // Silence we caused is not the server's silence.
                c.last_recv = now;
            }
            if c.rbuf.capacity() - c.rbuf.len() < READ_CHUNK_BYTES / 4 {
                c.rbuf.reserve(READ_CHUNK_BYTES);
            }
            let read_deadline = c.last_recv + c.read_timeout;
            let mut wake = read_deadline;
            if c.ping_sent_at.is_none() {
                wake = wake.min(c.last_send + c.ping_interval);
            }
            if let Some(d) = c.close_deadline {
                wake = wake.min(d);
            }
            let take_requests = c.close_deadline.is_none()
                && !self.handles_dropped
                && c.in_flight.len() < IN_FLIGHT_MAX
                && c.wbuf.len() < WRITE_BUFFER_BYTES_HIGH;
            let step = tokio::select! {
                biased;
                r = c.read.read_buf(&mut c.rbuf), if !stalled => Step::Read(r),
                permit = self.events.reserve(), if stalled => {
                    match (permit, self.outbox.pop_front()) {
                        (Ok(p), Some(ev)) => p.send(ev),
                        // The application dropped its Events: nothing to deliver to.
                        _ => self.outbox.clear(),
                    }
                    Step::Continue
                }
                step = write_or_flush(&mut c.write, &mut c.wbuf), if !c.wbuf.is_empty() || c.unflushed => step,
                cmd = self.cmd_rx.recv(), if take_requests => Step::Command(cmd),
                _ = self.shared.close_now.notified() => Step::CloseNow,
                _ = sleep_until(wake) => Step::Timer,
            };
            match step {
                Step::Continue => {}
                Step::Read(Ok(0)) => {
                    return self.lose(c, "server closed the connection".into(), || {
                        Error::ConnectionLoss
                    })
                }
                Step::Read(Ok(_)) => c.last_recv = Instant::now(),
                Step::Read(Err(e)) => {
                    return self.lose(c, format!("read: {e}"), || Error::ConnectionLoss)
                }
                Step::Wrote(Ok(_)) => c.unflushed = true,
                Step::Wrote(Err(e)) | Step::Flushed(Err(e)) => {
                    return self.lose(c, format!("write: {e}"), || Error::ConnectionLoss)
                }
                Step::Flushed(Ok(())) => c.unflushed = false,
                Step::Command(Some(cmd)) => self.take_command(c, cmd),
                Step::Command(None) => self.close_for_dropped_handles(c),
                Step::CloseNow => {
                    self.shared.closing.store(true, Ordering::Release);
                    self.lose(c, String::new(), || Error::Closed);
                    return End::Closed;
                }
                Step::Timer => {
                    let now = Instant::now();
                    if c.close_deadline.is_some_and(|d| now >= d) {
                        warn!("closeSession not answered in time; closing locally");
                        self.lose(c, String::new(), || Error::Closed);
                        return End::Closed;
                    }
                    if !stalled && now >= read_deadline {
                        let ms = c.read_timeout.as_millis();
                        return self.lose(
                            c,
                            format!("no frame from the server for {ms} ms"),
                            || Error::ConnectionLoss,
                        );
                    }
                    if c.ping_sent_at.is_none() && now >= c.last_send + c.ping_interval {
                        self.send_ping(c);
                    }
                }
            }
        }
    }

    /// Handles one frame. An `Err` is a reason to drop the connection.
    fn on_frame(&mut self, c: &mut Conn, mut frame: BytesMut) -> Result<Flow, String> {
        let mut r = Reader::new(&frame);
        let hdr = ReplyHeader::decode(&mut r).map_err(|e| format!("reply header: {e}"))?;
        let body_at = r.position();
        match hdr.xid {
            xid::NOTIFICATION => {
                let ev = WatcherEvent::decode(&mut r).map_err(|e| format!("watch event: {e}"))?;
                let (Ok(event_type), Ok(state)) = (
                    EventType::try_from(ev.event_type),
                    KeeperState::try_from(ev.state),
                ) else {
                    // A newer server's event we do not know: skipping it is safer than
                    // dropping a connection that works.
                    warn!(
                        event_type = ev.event_type,
                        state = ev.state,
                        "unknown watch event skipped"
                    );
                    return Ok(Flow::Continue);
                };
                lock(&self.shared.watches).on_event(event_type, &ev.path);
                self.emit(WatchedEvent {
                    event_type,
                    state,
                    path: ev.path,
                });
            }
            xid::PING => {
                if let Some(sent_at) = c.ping_sent_at.take() {
                    self.lease_on_reply(hdr.err, sent_at, c.timeout);
                }
            }
            xid::AUTH => {
                let Some(pending) = c.auths.pop_front() else {
                    return Err("auth reply with no auth in flight".into());
                };
                if hdr.err == 0 {
                    if let Some(entry) = pending.entry {
                        let mut auths = lock(&self.shared.auths);
                        if !auths.contains(&entry) {
                            auths.push(entry);
                        }
                    }
                } else {
                    warn!(err = hdr.err, "authentication failed");
                    if hdr.err == ErrorCode::AuthFailed.code() {
                        self.emit(state_event(KeeperState::AuthFailed));
                    }
                }
                if let Some(tx) = pending.reply {
                    frame.advance(body_at);
                    let _ = tx.send(Ok(Reply {
                        err: hdr.err,
                        body: frame,
                    }));
                }
            }
            xid::SET_WATCHES => {
                if hdr.err == ErrorCode::Unimplemented.code() && !c.set_watches_fallback_sent {
                    // A server without SetWatches2 (before 3.6): re-arm the one-shot
                    // watches with SetWatches; persistent watches cannot be re-armed.
                    c.set_watches_fallback_sent = true;
                    warn!("server lacks SetWatches2; persistent watches are not re-armed");
                    let relative_zxid = self.shared.last_zxid.load(Ordering::Acquire);
                    let batches = lock(&self.shared.watches)
                        .set_watches(relative_zxid, SET_WATCHES_PATH_BYTES_MAX);
                    for sw in batches {
                        let v1 = SetWatches {
                            relative_zxid,
                            data_watches: sw.data_watches,
                            exist_watches: sw.exist_watches,
                            child_watches: sw.child_watches,
                        };
                        if v1.data_watches.is_empty()
                            && v1.exist_watches.is_empty()
                            && v1.child_watches.is_empty()
                        {
                            continue;
                        }
                        write_frame(&mut c.wbuf, |o| {
                            RequestHeader {
                                xid: xid::SET_WATCHES,
                                op: OpCode::SetWatches.code(),
                            }
                            .encode(o);
                            v1.encode(o);
                        });
                        c.last_send = Instant::now();
                    }
                } else if hdr.err != 0 {
                    warn!(err = hdr.err, "setWatches failed");
                }
            }
            xid => {
                let done = match_reply(&mut c.in_flight, xid)?;
                if hdr.zxid > 0 {
                    self.shared.last_zxid.fetch_max(hdr.zxid, Ordering::AcqRel);
                }
                self.lease_on_reply(hdr.err, done.sent_at, c.timeout);
                let Pending { op, watch, reply } = done.item;
                if let Some(w) = &watch {
                    let code = ErrorCode::try_from(hdr.err).unwrap_or(ErrorCode::SystemError);
                    let removed = lock(&self.shared.watches).on_reply(w, code);
                    if let WatchReg::Remove(path, _) = w {
                        for event_type in removed {
                            self.emit(WatchedEvent {
                                event_type,
                                state: KeeperState::SyncConnected,
                                path: path.clone(),
                            });
                        }
                    }
                }
                if let Some(tx) = reply {
                    frame.advance(body_at);
                    let _ = tx.send(Ok(Reply {
                        err: hdr.err,
                        body: frame,
                    }));
                }
                if op == OpCode::CloseSession {
                    return Ok(Flow::Closed);
                }
            }
        }
        Ok(Flow::Continue)
    }
}

/// How long one reconnect attempt may take: `connect_timeout_ms`, but once a session
/// exists at most its timeout divided by the number of servers (ZooKeeper's client
/// does the same), so that a server that accepts TCP but never answers (stopped,
/// overloaded) cannot make the session expire while other servers would take it. At
/// least `RECONNECT_ATTEMPT_MS_MIN`.
fn reconnect_attempt_timeout_ms(
    connect_timeout_ms: u32,
    session_timeout_ms: u32,
    servers: usize,
) -> u64 {
    const RECONNECT_ATTEMPT_MS_MIN: u64 = 100;
    let configured = u64::from(connect_timeout_ms);
    if session_timeout_ms == 0 {
        return configured;
    }
    let share = u64::from(session_timeout_ms) / servers.max(1) as u64;
    configured
        .min(share)
        .max(RECONNECT_ATTEMPT_MS_MIN.min(configured))
}

#[cfg(test)]
mod tests {

    #[test]
    fn reconnect_attempts_fit_the_session_timeout() {
        // Before a session exists: the configured bound.
        assert_eq!(reconnect_attempt_timeout_ms(3000, 0, 3), 3000);
        // A 2 s session over 3 servers: a third of it each.
        assert_eq!(reconnect_attempt_timeout_ms(3000, 2000, 3), 666);
        // Never above the configured bound, never below the floor.
        assert_eq!(reconnect_attempt_timeout_ms(500, 40_000, 1), 500);
        assert_eq!(reconnect_attempt_timeout_ms(3000, 200, 9), 100);
        assert_eq!(reconnect_attempt_timeout_ms(50, 200, 9), 50);
    }

    use super::*;

    #[test]
    fn expiry_detection() {
        let ok = ConnectResponse {
            timeout_ms: 6000,
            session_id: 7,
            ..Default::default()
        };
        assert!(!response_means_expired(&ok, 7));
        assert!(response_means_expired(
            &ConnectResponse {
                timeout_ms: 0,
                ..ok.clone()
            },
            7
        ));
        assert!(response_means_expired(
            &ConnectResponse {
                session_id: 0,
                ..ok.clone()
            },
            7
        ));
        assert!(response_means_expired(&ok, 8));
    }

    #[test]
    fn xid_is_patched_into_the_header() {
        let mut f = encode_request(&Request::Sync(coordd_proto::PathRequest {
            path: "/a".into(),
        }));
        patch_xid(&mut f, 42);
        let mut b = f.clone();
        let body = split_frame(&mut b, 1 << 20).unwrap().unwrap();
        let h = RequestHeader::from_bytes(&body).unwrap();
        assert_eq!(h.xid, 42);
        assert_eq!(h.op, OpCode::Sync.code());
    }
}
