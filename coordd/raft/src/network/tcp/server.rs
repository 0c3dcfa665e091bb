//! [`PeerServer`]: the listening side.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use thiserror::Error;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::{JoinHandle, JoinSet};

use super::client::write_frames;
use super::wire::{self, Channel, FrameReader, Hello, HelloReply, Message, WireError};
use super::{PeerStream, PeerTls, TcpConfig};
use crate::network::{PeerRequest, PeerResponse, RequestBody, ResponseBody};
use crate::types::{SnapshotMeta, Vote};
use crate::{ConfigError, Member, MemberId, ShutdownError};

/// [`PeerServer::bind`] or [`PeerServer::start`] failed.
#[derive(Debug, Error)]
pub enum ServeError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("peer listener: {0}")]
    Io(#[from] std::io::Error),
}

/// Counters of a [`PeerServer`] since it started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PeerServerStats {
    /// Connections accepted (handshake not yet checked).
    pub connections_accepted: u64,
    /// Connections closed at once because `peer_connections_max` were open.
    pub connections_over_limit: u64,
    /// Connections open now.
    pub connections_open: u64,
    /// Handshakes refused (wrong cluster, version, member, or not a peer at all).
    pub handshakes_refused: u64,
    /// Connections closed for a frame over the limit (handshake or after).
    pub frames_too_long: u64,
    /// Connections closed for a frame that did not decode, or a message out of place.
    pub frames_undecodable: u64,
    /// Requests answered (AppendEntries, votes, snapshots).
    pub requests_served: u64,
    /// Snapshots received whole and handed to the member.
    pub snapshots_received: u64,
    /// TLS handshakes that failed or timed out (with TLS on): a caller without a
    /// certificate of the ensemble's CA, or not speaking TLS.
    pub tls_handshakes_failed: u64,
}

#[derive(Default)]
struct Counters {
    accepted: AtomicU64,
    over_limit: AtomicU64,
    open: AtomicU64,
    refused: AtomicU64,
    too_long: AtomicU64,
    undecodable: AtomicU64,
    served: AtomicU64,
    snapshots: AtomicU64,
    tls_failed: AtomicU64,
}

/// Resolves once the server stops (the signal is set, or its sender is gone). Returns no
/// guard, so it can sit in a `select!` across awaits.
async fn stopped(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

struct Shared {
    member: Member,
    config: TcpConfig,
    tls: Option<PeerTls>,
    counters: Counters,
}

/// Listens on a member's peer address and serves other members' requests: each connection's
/// requests are handed to [`Member::handle_peer_request`] concurrently (up to
/// `requests_in_flight_max`), answered on the same connection as they complete.
pub struct PeerServer {
    shared: Arc<Shared>,
    local_addr: SocketAddr,
    stop: watch::Sender<bool>,
    task: Mutex<Option<JoinHandle<()>>>,
}

/// Ends the connection gauge when a connection task ends, however it ends.
struct OpenGuard<'a>(&'a Counters);

impl Drop for OpenGuard<'_> {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

impl PeerServer {
    /// Binds `addr` (the member's address in the membership) and starts serving `member`.
    pub async fn bind(addr: &str, member: Member, config: TcpConfig) -> Result<Self, ServeError> {
        config.validate()?;
        let listener = TcpListener::bind(addr).await?;
        Self::start(listener, member, config)
    }

    /// Serves `member` on an already bound listener (bind first to learn a port-0 address,
    /// start the member with it, then call this).
    pub fn start(
        listener: TcpListener,
        member: Member,
        config: TcpConfig,
    ) -> Result<Self, ServeError> {
        Self::start_with_tls(listener, member, config, None)
    }

    /// [`start`](Self::start), requiring mutual TLS on every connection when `tls` is given:
    /// a caller without a certificate signed by the ensemble's CA never gets to the peer
    /// protocol.
    pub fn start_with_tls(
        listener: TcpListener,
        member: Member,
        config: TcpConfig,
        tls: Option<PeerTls>,
    ) -> Result<Self, ServeError> {
        config.validate()?;
        let local_addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            member,
            config,
            tls,
            counters: Counters::default(),
        });
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(accept_loop(listener, shared.clone(), stop_rx));
        tracing::info!(id = shared.member.id(), %local_addr, "peer listener started");
        Ok(Self {
            shared,
            local_addr,
            stop,
            task: Mutex::new(Some(task)),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn stats(&self) -> PeerServerStats {
        let c = &self.shared.counters;
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        PeerServerStats {
            connections_accepted: g(&c.accepted),
            connections_over_limit: g(&c.over_limit),
            connections_open: g(&c.open),
            handshakes_refused: g(&c.refused),
            frames_too_long: g(&c.too_long),
            frames_undecodable: g(&c.undecodable),
            requests_served: g(&c.served),
            snapshots_received: g(&c.snapshots),
            tls_handshakes_failed: g(&c.tls_failed),
        }
    }

    /// Closes the listener and every peer connection (requests being handled are dropped
    /// unanswered: their callers time out or see the connection close). Idempotent; bounded by
    /// `shutdown_timeout_ms`.
    pub async fn shutdown(&self) -> Result<(), ShutdownError> {
        let _ = self.stop.send(true);
        let task = self
            .task
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        let Some(mut task) = task else {
            return Ok(());
        };
        let t = self.shared.config.shutdown_timeout();
        match tokio::time::timeout(t, &mut task).await {
            Err(_) => {
                task.abort();
                Err(ShutdownError::Timeout {
                    after_ms: self.shared.config.shutdown_timeout_ms,
                })
            }
            Ok(Err(e)) if e.is_panic() => Err(ShutdownError::Panicked(e.to_string())),
            Ok(_) => {
                tracing::info!(id = self.shared.member.id(), local_addr = %self.local_addr, "peer listener stopped");
                Ok(())
            }
        }
    }
}

impl Drop for PeerServer {
    fn drop(&mut self) {
        // Not shut down: stop anyway (the connection tasks see the signal and end).
        let _ = self.stop.send(true);
        if let Some(t) = self
            .task
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        {
            t.abort();
        }
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let permits = Arc::new(Semaphore::new(shared.config.peer_connections_max));
    let mut conns = JoinSet::new();
    // The connections' copy of the signal (the loop's own is borrowed by its select).
    let conn_stop = stop.clone();
    let mut pause_stop = stop.clone();
    loop {
        tokio::select! {
            _ = stopped(&mut stop) => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    bump(&shared.counters.accepted);
                    match permits.clone().try_acquire_owned() {
                        Ok(permit) => {
                            shared.counters.open.fetch_add(1, Ordering::Relaxed);
                            conns.spawn(serve_conn(shared.clone(), stream, peer, conn_stop.clone(), permit));
                        }
                        Err(_) => {
                            bump(&shared.counters.over_limit);
                            tracing::warn!(id = shared.member.id(), %peer, limit = shared.config.peer_connections_max, "peer connection refused: peer_connections_max reached");
                        }
                    }
                }
                Err(e) => {
                    // E.g. out of file descriptors: do not spin on it.
                    tracing::warn!(id = shared.member.id(), error = %e, "peer accept failed");
                    tokio::select! {
                        _ = stopped(&mut pause_stop) => break,
                        _ = tokio::time::sleep(std::time::Duration::from_millis(50)) => {}
                    }
                }
            }
        }
    }
    drop(listener);
    // The connections saw the same signal; give them the shutdown deadline to finish.
    let drain = async { while conns.join_next().await.is_some() {} };
    let _ = tokio::time::timeout(shared.config.shutdown_timeout(), drain).await;
}

/// Logs why a connection closes, counts it, by the kind of failure.
fn closing(shared: &Shared, peer: SocketAddr, from: Option<MemberId>, e: &WireError) {
    let c = &shared.counters;
    match e {
        WireError::TooLong { .. } => bump(&c.too_long),
        WireError::Decode(_) => bump(&c.undecodable),
        _ => {}
    }
    match e {
        WireError::Io(_) | WireError::Truncated { .. } => {
            tracing::debug!(id = shared.member.id(), %peer, ?from, error = %e, "peer connection closed")
        }
        _ => {
            tracing::warn!(id = shared.member.id(), %peer, ?from, error = %e, "closing peer connection: bad frame")
        }
    }
}

/// TCP keepalive on accepted peer connections. The accepting side never writes
/// unprompted, so when the connecting member's machine dies (or a partition outlives the
/// sender's socket) the connection would stay half-open for ever: one of
/// `peer_connections_max` permits lost each time, and `peer_link_lost` never called.
/// Keepalive finds such a peer dead after idle + interval x retries (16 s).
const PEER_KEEPALIVE_IDLE_MS: u64 = 10_000;
const PEER_KEEPALIVE_INTERVAL_MS: u64 = 2_000;
const PEER_KEEPALIVE_RETRIES: u32 = 3;
/// TCP_USER_TIMEOUT: a response sent and not acknowledged this long closes the
/// connection (Linux would retransmit for ~15 min). Equal to keepalive's detection time,
/// which it also caps on Linux.
const PEER_TCP_USER_TIMEOUT_MS: u64 = 16_000;

/// Sets [`PEER_KEEPALIVE_IDLE_MS`] and the rest on `tcp`.
fn set_peer_keepalive(tcp: &TcpStream) -> std::io::Result<()> {
    let sock = socket2::SockRef::from(tcp);
    sock.set_tcp_keepalive(
        &socket2::TcpKeepalive::new()
            .with_time(Duration::from_millis(PEER_KEEPALIVE_IDLE_MS))
            .with_interval(Duration::from_millis(PEER_KEEPALIVE_INTERVAL_MS))
            .with_retries(PEER_KEEPALIVE_RETRIES),
    )?;
    sock.set_tcp_user_timeout(Some(Duration::from_millis(PEER_TCP_USER_TIMEOUT_MS)))
}

async fn serve_conn(
    shared: Arc<Shared>,
    tcp: TcpStream,
    peer: SocketAddr,
    mut stop: watch::Receiver<bool>,
    _permit: OwnedSemaphorePermit,
) {
    let _open = OpenGuard(&shared.counters);
    let _ = tcp.set_nodelay(true);
    if let Err(e) = set_peer_keepalive(&tcp) {
        tracing::warn!(id = shared.member.id(), %peer, error = %e, "cannot set TCP keepalive on a peer connection; a dead peer's connection may linger");
    }
    let me = shared.member.id();
    let mut stream: PeerStream = match &shared.tls {
        None => Box::new(tcp),
        Some(tls) => {
            let accepted = tokio::select! {
                _ = stopped(&mut stop) => return,
                a = coordd_tls::accept(&tls.acceptor, tcp, shared.config.handshake_timeout_ms) => a,
            };
            match accepted {
                Ok(s) => Box::new(s),
                Err(error) => {
                    bump(&shared.counters.tls_failed);
                    tracing::warn!(id = me, %peer, %error, "peer connection refused: TLS handshake failed");
                    return;
                }
            }
        }
    };
    let mut reader = FrameReader::new();
    let first = tokio::select! {
        _ = stopped(&mut stop) => return,
        r = tokio::time::timeout(
            shared.config.handshake_timeout(),
            reader.next(&mut stream, wire::HANDSHAKE_FRAME_BYTES_MAX),
        ) => r,
    };
    let body = match first {
        Err(_) => {
            tracing::debug!(id = me, %peer, "peer connection closed: no handshake in time");
            return;
        }
        Ok(Ok(Some(b))) => b,
        Ok(Ok(None)) => return,
        Ok(Err(e)) => {
            closing(&shared, peer, None, &e);
            return;
        }
    };
    let hello: Hello = match wire::check_hello(&body, &shared.config.cluster_name, me) {
        Ok(h) => h,
        Err(error) => {
            bump(&shared.counters.refused);
            tracing::warn!(id = me, %peer, %error, "peer handshake refused; closing the connection");
            if let Ok(f) =
                wire::encode_frame(&HelloReply::Refused(error), wire::HANDSHAKE_FRAME_BYTES_MAX)
            {
                let _ = tokio::time::timeout(shared.config.handshake_timeout(), async {
                    stream.write_all(&f).await?;
                    stream.flush().await
                })
                .await;
            }
            return;
        }
    };
    let accepted = HelloReply::Accepted {
        protocol_version: wire::PROTOCOL_VERSION,
        member_id: me,
    };
    let sent = match wire::encode_frame(&accepted, wire::HANDSHAKE_FRAME_BYTES_MAX) {
        Ok(f) => {
            tokio::time::timeout(shared.config.handshake_timeout(), async {
                stream.write_all(&f).await?;
                stream.flush().await
            })
            .await
        }
        Err(_) => return,
    };
    if !matches!(sent, Ok(Ok(()))) {
        return;
    }
    tracing::debug!(id = me, %peer, from = hello.from, channel = ?hello.channel, "peer connection open");
    match hello.channel {
        Channel::Rpc => serve_rpc(&shared, stream, reader, peer, hello.from, stop).await,
        Channel::Snapshot => serve_snapshot(&shared, stream, reader, peer, hello.from, stop).await,
    }
}

/// Requests in, responses out in completion order. Handlers run concurrently; the reader stops
/// reading while `requests_in_flight_max` are being handled.
async fn serve_rpc(
    shared: &Arc<Shared>,
    stream: PeerStream,
    mut reader: FrameReader,
    peer: SocketAddr,
    from: MemberId,
    mut stop: watch::Receiver<bool>,
) {
    let (mut r, w) = tokio::io::split(stream);
    let (out, out_rx) = mpsc::channel::<Bytes>(shared.config.send_queue_frames_max);
    let mut writer = tokio::spawn(write_frames(w, out_rx, |_| {}));
    let in_flight = Arc::new(Semaphore::new(shared.config.requests_in_flight_max));
    // Dropped on return: aborts handlers still running (their caller is gone or we stop).
    let mut handlers = JoinSet::new();
    let max = shared.config.frame_bytes_max;
    loop {
        while handlers.try_join_next().is_some() {}
        let permit = tokio::select! {
            _ = stopped(&mut stop) => break,
            // A failed write: answers can no longer arrive, so stop taking requests.
            _ = &mut writer => break,
            p = in_flight.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
        };
        let next = tokio::select! {
            _ = stopped(&mut stop) => break,
            _ = &mut writer => break,
            n = reader.next(&mut r, max) => n,
        };
        let body = match next {
            Ok(Some(b)) => b,
            Ok(None) => break,
            Err(e) => {
                closing(shared, peer, Some(from), &e);
                break;
            }
        };
        let (id, request) = match wire::decode::<Message>(&body) {
            Ok(Message::Request { id, request }) => (id, request),
            Ok(other) => {
                let e = WireError::Decode(format!("{} on an RPC connection", other.name()));
                closing(shared, peer, Some(from), &e);
                break;
            }
            Err(e) => {
                closing(shared, peer, Some(from), &e);
                break;
            }
        };
        let (shared, out) = (shared.clone(), out.clone());
        handlers.spawn(async move {
            let response = shared.member.handle_peer_request(request).await;
            bump(&shared.counters.served);
            respond(&shared, &out, id, response).await;
            drop(permit);
        });
    }
    drop(handlers);
    drop(out);
    writer.abort();
    if !*stop.borrow() {
        shared.member.peer_link_lost(from);
    }
}

async fn respond(shared: &Shared, out: &mpsc::Sender<Bytes>, id: u64, response: PeerResponse) {
    match wire::encode_frame(
        &Message::Response { id, response },
        shared.config.frame_bytes_max,
    ) {
        // A closed queue: the connection is going away; the caller sees that.
        Ok(f) => {
            let _ = out.send(f).await;
        }
        Err(e) => {
            tracing::error!(id = shared.member.id(), error = %e, "cannot encode a peer response; the caller will time out")
        }
    }
}

/// A snapshot being received.
struct Incoming {
    id: u64,
    vote: Vote,
    meta: SnapshotMeta,
    total_bytes: u64,
    image: BytesMut,
}

/// One or more snapshots, each: begin, chunks in order, end; then the response. A connection
/// that breaks midway discards what it received.
async fn serve_snapshot(
    shared: &Arc<Shared>,
    mut stream: PeerStream,
    mut reader: FrameReader,
    peer: SocketAddr,
    from: MemberId,
    mut stop: watch::Receiver<bool>,
) {
    let max = shared.config.frame_bytes_max;
    let mut incoming: Option<Incoming> = None;
    loop {
        let next = tokio::select! {
            _ = stopped(&mut stop) => return,
            n = reader.next(&mut stream, max) => n,
        };
        let body = match next {
            Ok(Some(b)) => b,
            Ok(None) => {
                if incoming.is_some() {
                    tracing::info!(id = shared.member.id(), %peer, from, "snapshot transfer abandoned by the sender");
                }
                return;
            }
            Err(e) => return closing(shared, peer, Some(from), &e),
        };
        let msg = match wire::decode::<Message>(&body) {
            Ok(m) => m,
            Err(e) => return closing(shared, peer, Some(from), &e),
        };
        let bad = |what: String| closing(shared, peer, Some(from), &WireError::Decode(what));
        match (msg, incoming.take()) {
            (
                Message::SnapshotBegin {
                    id,
                    vote,
                    meta,
                    total_bytes,
                },
                None,
            ) => {
                if total_bytes > shared.config.snapshot_bytes_max {
                    tracing::warn!(
                        id = shared.member.id(),
                        from,
                        total_bytes,
                        limit = shared.config.snapshot_bytes_max,
                        "snapshot refused: over snapshot_bytes_max"
                    );
                    let refused = PeerResponse(ResponseBody::Refused(format!(
                        "snapshot of {total_bytes} bytes exceeds snapshot_bytes_max ({})",
                        shared.config.snapshot_bytes_max
                    )));
                    if let Ok(f) = wire::encode_frame(
                        &Message::Response {
                            id,
                            response: refused,
                        },
                        max,
                    ) {
                        let _ = tokio::time::timeout(shared.config.handshake_timeout(), async {
                            stream.write_all(&f).await?;
                            stream.flush().await
                        })
                        .await;
                    }
                    return;
                }
                // Reserve no more than a frame up front: the bytes must arrive to be held.
                let cap = usize::try_from(total_bytes).unwrap_or(usize::MAX).min(max);
                incoming = Some(Incoming {
                    id,
                    vote,
                    meta,
                    total_bytes,
                    image: BytesMut::with_capacity(cap),
                });
            }
            (Message::SnapshotChunk { id, data }, Some(mut s)) if id == s.id => {
                if s.image.len() as u64 + data.len() as u64 > s.total_bytes {
                    return bad(format!(
                        "snapshot chunks exceed the announced {} bytes",
                        s.total_bytes
                    ));
                }
                s.image.extend_from_slice(&data);
                incoming = Some(s);
            }
            (Message::SnapshotEnd { id }, Some(s)) if id == s.id => {
                if s.image.len() as u64 != s.total_bytes {
                    return bad(format!(
                        "snapshot of {} bytes announced, {} received",
                        s.total_bytes,
                        s.image.len()
                    ));
                }
                bump(&shared.counters.snapshots);
                tracing::info!(
                    id = shared.member.id(),
                    from,
                    bytes = s.total_bytes,
                    "snapshot received; installing"
                );
                let request = PeerRequest(RequestBody::Snapshot {
                    vote: s.vote,
                    meta: s.meta,
                    image: s.image.freeze(),
                });
                let response = tokio::select! {
                    _ = stopped(&mut stop) => return,
                    r = shared.member.handle_peer_request(request) => r,
                };
                bump(&shared.counters.served);
                match wire::encode_frame(&Message::Response { id, response }, max) {
                    Ok(f) => {
                        let sent = async {
                            stream.write_all(&f).await?;
                            stream.flush().await
                        };
                        if sent.await.is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        tracing::error!(id = shared.member.id(), error = %e, "cannot encode a snapshot response");
                        return;
                    }
                }
            }
            (other, _) => {
                return bad(format!(
                    "{} out of place on a snapshot connection",
                    other.name()
                ))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_accepted_peer_connection_gets_keepalive_and_a_user_timeout() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (_client, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
        let (tcp, _) = accepted.unwrap();
        let sock = socket2::SockRef::from(&tcp);
        assert!(!sock.keepalive().unwrap(), "off by default");
        set_peer_keepalive(&tcp).unwrap();
        assert!(sock.keepalive().unwrap());
        assert_eq!(
            sock.tcp_keepalive_time().unwrap(),
            Duration::from_millis(PEER_KEEPALIVE_IDLE_MS)
        );
        assert_eq!(
            sock.tcp_keepalive_interval().unwrap(),
            Duration::from_millis(PEER_KEEPALIVE_INTERVAL_MS)
        );
        assert_eq!(
            sock.tcp_keepalive_retries().unwrap(),
            PEER_KEEPALIVE_RETRIES
        );
        assert_eq!(
            sock.tcp_user_timeout().unwrap(),
            Some(Duration::from_millis(PEER_TCP_USER_TIMEOUT_MS))
        );
    }
}
