//! [`TcpTransport`]: the calling side.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, BufWriter};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::wire::{self, Channel, FrameReader, HandshakeError, Hello, Message, WireError};
use super::{PeerStream, PeerTls, TcpConfig};
use crate::network::{PeerRequest, PeerResponse, RequestBody, Transport, TransportError};
use crate::{ConfigError, MemberId};

/// Why a connection to a peer could not be opened.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum ConnectError {
    /// The TCP connect failed (refused, no route, ...).
    #[error("connect to {addr} failed: {reason}")]
    Connect { addr: String, reason: String },
    /// The peer refused the handshake, or answered it with a mismatch.
    #[error("handshake with {addr} refused: {error}")]
    Rejected { addr: String, error: HandshakeError },
    /// The connection broke or sent garbage during the handshake.
    #[error("handshake with {addr} failed: {reason}")]
    Handshake { addr: String, reason: String },
    #[error("connect to {addr} timed out")]
    Timeout { addr: String },
    /// The TLS handshake failed (the peer's certificate is not from the ensemble's CA or
    /// does not name its address, or the peer refused ours, or it does not speak TLS).
    #[error("TLS with {addr} failed: {reason}")]
    Tls { addr: String, reason: String },
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Only map updates and Option swaps happen under these locks.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The calling side of the TCP transport for one member: give it to
/// [`Member::start`](crate::Member::start). Clones share the connections.
///
/// Per peer: one multiplexed connection for AppendEntries and votes (opened on the first call,
/// reopened after a failure, with a bounded backoff between failed connects), plus a
/// connection per snapshot transfer.
#[derive(Clone)]
pub struct TcpTransport {
    inner: Arc<Inner>,
}

struct Inner {
    id: MemberId,
    config: TcpConfig,
    tls: Option<PeerTls>,
    peers: Mutex<HashMap<MemberId, Arc<Peer>>>,
}

/// The state of the RPC connection to one peer.
struct Peer {
    addr: String,
    conn: Mutex<Option<Arc<Conn>>>,
    /// Held while connecting, so concurrent callers wait for one connect instead of racing.
    connecting: Arc<tokio::sync::Mutex<Reconnect>>,
}

#[derive(Default)]
struct Reconnect {
    failures: u32,
    retry_at: Option<Instant>,
    last_error: String,
}

type Waiter = oneshot::Sender<Result<PeerResponse, TransportError>>;

/// Calls waiting for their response; `None` once the connection is closed (no new waiters).
struct Pending(Mutex<Option<HashMap<u64, Waiter>>>);

impl Pending {
    /// Fails every waiter and refuses new ones.
    fn close(&self, reason: &str) {
        let waiters = lock(&self.0).take();
        for (_, w) in waiters.into_iter().flatten() {
            let _ = w.send(Err(TransportError::Io(reason.to_string())));
        }
    }

    fn is_open(&self) -> bool {
        lock(&self.0).is_some()
    }
}

/// Removes a call's waiter when the call ends, however it ends (a call dropped at its deadline
/// must not leave its entry behind).
struct WaiterGuard<'a> {
    pending: &'a Pending,
    id: u64,
}

impl Drop for WaiterGuard<'_> {
    fn drop(&mut self) {
        if let Some(map) = lock(&self.pending.0).as_mut() {
            map.remove(&self.id);
        }
    }
}

/// One open RPC connection: a writer task fed by a queue (callers never write the socket
/// themselves, so a call cancelled at its deadline cannot leave half a frame behind) and a
/// reader task that hands each response to its waiter.
struct Conn {
    out: mpsc::Sender<Bytes>,
    pending: Arc<Pending>,
    next_id: AtomicU64,
    tasks: [JoinHandle<()>; 2],
}

impl Drop for Conn {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Writes queued frames, several per flush when they queue up. Ends when the queue closes or a
/// write fails; either way it closes `pending`.
pub(super) async fn write_frames<W: AsyncWrite + Unpin>(
    w: W,
    mut rx: mpsc::Receiver<Bytes>,
    on_close: impl FnOnce(String),
) {
    let mut w = BufWriter::with_capacity(64 << 10, w);
    let res: std::io::Result<()> = async {
        while let Some(frame) = rx.recv().await {
            w.write_all(&frame).await?;
            while let Ok(frame) = rx.try_recv() {
                w.write_all(&frame).await?;
            }
            w.flush().await?;
        }
        Ok(())
    }
    .await;
    on_close(match res {
        Ok(()) => "connection closed".to_string(),
        Err(e) => format!("write failed: {e}"),
    });
}

async fn read_responses<R: AsyncRead + Unpin>(
    mut r: R,
    mut reader: FrameReader,
    frame_bytes_max: usize,
    pending: Arc<Pending>,
    target: MemberId,
) {
    let reason = loop {
        let body = match reader.next(&mut r, frame_bytes_max).await {
            Ok(Some(b)) => b,
            Ok(None) => break "closed by the peer".to_string(),
            Err(e) => break e.to_string(),
        };
        match wire::decode::<Message>(&body) {
            Ok(Message::Response { id, response }) => {
                // None: the call already gave up (deadline); the response is simply late.
                let waiter = lock(&pending.0).as_mut().and_then(|m| m.remove(&id));
                if let Some(w) = waiter {
                    let _ = w.send(Ok(response));
                }
            }
            Ok(other) => break format!("unexpected {} from the peer", other.name()),
            Err(e) => break e.to_string(),
        }
    };
    tracing::debug!(target_member = target, %reason, "peer connection closed");
    pending.close(&reason);
}

impl TcpTransport {
    /// The transport of member `id`.
    pub fn new(id: MemberId, config: TcpConfig) -> Result<Self, ConfigError> {
        Self::with_tls(id, config, None)
    }

    /// The transport of member `id`, over mutual TLS when `tls` is given (every member's
    /// listener must then require it too).
    pub fn with_tls(
        id: MemberId,
        config: TcpConfig,
        tls: Option<PeerTls>,
    ) -> Result<Self, ConfigError> {
        config.validate()?;
        Ok(Self {
            inner: Arc::new(Inner {
                id,
                config,
                tls,
                peers: Mutex::new(HashMap::new()),
            }),
        })
    }

    pub fn config(&self) -> &TcpConfig {
        &self.inner.config
    }

    /// Opens a connection to member `target` at `addr` and does the handshake, outside the
    /// pool and its backoff, then closes it: tells whether that peer is up and who it is.
    pub async fn check_peer(
        &self,
        target: MemberId,
        addr: &str,
        timeout: Duration,
    ) -> Result<(), ConnectError> {
        match tokio::time::timeout(timeout, self.open(target, addr, Channel::Rpc)).await {
            Err(_) => Err(ConnectError::Timeout {
                addr: addr.to_string(),
            }),
            Ok(r) => r.map(drop),
        }
    }

    /// Closes every pooled connection (calls in flight fail with `Io`); later calls reconnect.
    pub fn close_all(&self) {
        let peers: Vec<Arc<Peer>> = lock(&self.inner.peers).drain().map(|(_, p)| p).collect();
        for p in peers {
            if let Some(c) = lock(&p.conn).take() {
                c.pending.close("closed by this member");
            }
        }
    }

    /// Connects and handshakes on a fresh connection.
    async fn open(
        &self,
        target: MemberId,
        addr: &str,
        channel: Channel,
    ) -> Result<(PeerStream, FrameReader), ConnectError> {
        let handshake_err = |reason: String| ConnectError::Handshake {
            addr: addr.to_string(),
            reason,
        };
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|e| ConnectError::Connect {
                addr: addr.to_string(),
                reason: e.to_string(),
            })?;
        // Heartbeats are small frames whose latency is the point.
        tcp.set_nodelay(true)
            .map_err(|e| handshake_err(e.to_string()))?;
        let mut stream: PeerStream = match &self.inner.tls {
            None => Box::new(tcp),
            Some(tls) => {
                let tls_err = |reason: String| ConnectError::Tls {
                    addr: addr.to_string(),
                    reason,
                };
                let name = coordd_tls::server_name(coordd_tls::host_of(addr))
                    .map_err(|e| tls_err(e.to_string()))?;
                Box::new(
                    tls.connector
                        .connect(name, tcp)
                        .await
                        .map_err(|e| tls_err(e.to_string()))?,
                )
            }
        };
        let hello = Hello::new(
            &self.inner.config.cluster_name,
            self.inner.id,
            target,
            channel,
        );
        let frame = wire::encode_frame(&hello, wire::HANDSHAKE_FRAME_BYTES_MAX)
            .map_err(|e| handshake_err(e.to_string()))?;
        stream
            .write_all(&frame)
            .await
            .map_err(|e| handshake_err(e.to_string()))?;
        stream
            .flush()
            .await
            .map_err(|e| handshake_err(e.to_string()))?;
        let mut reader = FrameReader::new();
        let reply = match reader
            .next(&mut stream, wire::HANDSHAKE_FRAME_BYTES_MAX)
            .await
        {
            Ok(Some(b)) => b,
            // With TLS, a listener that refuses our certificate closes right after the
            // handshake (TLS 1.3 finishes on the client first): it shows up here.
            Ok(None) if self.inner.tls.is_some() => {
                return Err(ConnectError::Tls {
                    addr: addr.to_string(),
                    reason: "closed before replying (our certificate refused?)".into(),
                })
            }
            Ok(None) => return Err(handshake_err("closed before replying".into())),
            Err(e) if self.inner.tls.is_some() => {
                return Err(ConnectError::Tls {
                    addr: addr.to_string(),
                    reason: e.to_string(),
                })
            }
            Err(e) => return Err(handshake_err(e.to_string())),
        };
        wire::check_reply(&reply, target).map_err(|error| ConnectError::Rejected {
            addr: addr.to_string(),
            error,
        })?;
        Ok((stream, reader))
    }

    fn peer(&self, target: MemberId, addr: &str) -> Arc<Peer> {
        let mut peers = lock(&self.inner.peers);
        match peers.get(&target) {
            Some(p) if p.addr == addr => p.clone(),
            // New, or its address changed (membership): a fresh pool entry; the old
            // connection closes when its last call is done with it.
            _ => {
                let p = Arc::new(Peer {
                    addr: addr.to_string(),
                    conn: Mutex::new(None),
                    connecting: Arc::new(tokio::sync::Mutex::new(Reconnect::default())),
                });
                peers.insert(target, p.clone());
                p
            }
        }
    }

    fn live(peer: &Peer) -> Option<Arc<Conn>> {
        let mut g = lock(&peer.conn);
        match &*g {
            Some(c) if c.pending.is_open() => Some(c.clone()),
            Some(_) => {
                *g = None;
                None
            }
            None => None,
        }
    }

    /// The open RPC connection to `target`, opening one if needed (or failing fast while a
    /// reconnect backoff runs).
    ///
    /// The connect runs in a task of its own, bounded by `connect_timeout_ms` only: a caller
    /// may give up at its own deadline (an AppendEntries has one heartbeat interval), but the
    /// connect goes on and the next call finds the connection open. Otherwise a link whose
    /// connect plus handshake takes longer than a heartbeat interval could never connect.
    async fn connection(
        &self,
        target: MemberId,
        peer: &Arc<Peer>,
        deadline: Instant,
    ) -> Result<Arc<Conn>, TransportError> {
        if let Some(c) = Self::live(peer) {
            return Ok(c);
        }
        // Waits for a connect already under way (its task holds the lock).
        let st = tokio::time::timeout_at(deadline, peer.connecting.clone().lock_owned())
            .await
            .map_err(|_| TransportError::Timeout)?;
        if let Some(c) = Self::live(peer) {
            return Ok(c);
        }
        let now = Instant::now();
        if let Some(at) = st.retry_at.filter(|at| now < *at) {
            return Err(TransportError::Unreachable(format!(
                "member {target} at {}: {} (next attempt in {:?})",
                peer.addr,
                st.last_error,
                at - now
            )));
        }
        let (tx, rx) = oneshot::channel();
        let (this, peer) = (self.clone(), peer.clone());
        tokio::spawn(async move {
            let res = this.connect(target, &peer, st).await;
            let _ = tx.send(res);
        });
        match tokio::time::timeout_at(deadline, rx).await {
            Err(_) => Err(TransportError::Timeout),
            Ok(Err(_)) => Err(TransportError::Io("connect task ended".into())),
            Ok(Ok(res)) => res,
        }
    }

    /// One connect attempt to `peer`, holding its connect lock (`st`); installs the connection
    /// or starts the backoff.
    async fn connect(
        &self,
        target: MemberId,
        peer: &Peer,
        mut st: tokio::sync::OwnedMutexGuard<Reconnect>,
    ) -> Result<Arc<Conn>, TransportError> {
        let cfg = &self.inner.config;
        let res = tokio::time::timeout(
            cfg.connect_timeout(),
            self.open(target, &peer.addr, Channel::Rpc),
        )
        .await;
        let err = match res {
            Ok(Ok((stream, reader))) => {
                if st.failures > 0 {
                    tracing::info!(id = self.inner.id, target_member = target, addr = %peer.addr, "peer reachable again");
                }
                *st = Reconnect::default();
                let conn = self.spawn_conn(target, stream, reader);
                *lock(&peer.conn) = Some(conn.clone());
                return Ok(conn);
            }
            Ok(Err(e)) => e,
            Err(_) => ConnectError::Timeout {
                addr: peer.addr.clone(),
            },
        };
        // Exponential backoff, bounded: min * 2^failures, at most max.
        let backoff = Duration::from_millis(
            cfg.reconnect_backoff_min_ms
                .saturating_mul(1u64 << st.failures.min(20))
                .min(cfg.reconnect_backoff_max_ms),
        );
        st.failures = st.failures.saturating_add(1);
        st.retry_at = Some(Instant::now() + backoff);
        st.last_error = err.to_string();
        match &err {
            // Someone is listening but is not the peer we want: say so loudly, every time
            // (the backoff bounds how often).
            ConnectError::Rejected { .. } | ConnectError::Tls { .. } => {
                tracing::warn!(id = self.inner.id, target_member = target, error = %err, "peer handshake refused")
            }
            _ if st.failures == 1 => {
                tracing::info!(id = self.inner.id, target_member = target, error = %err, "peer unreachable")
            }
            _ => {
                tracing::debug!(id = self.inner.id, target_member = target, error = %err, "peer still unreachable")
            }
        }
        Err(TransportError::Unreachable(err.to_string()))
    }

    fn spawn_conn(&self, target: MemberId, stream: PeerStream, reader: FrameReader) -> Arc<Conn> {
        let (r, w) = tokio::io::split(stream);
        let pending = Arc::new(Pending(Mutex::new(Some(HashMap::new()))));
        let (tx, rx) = mpsc::channel(self.inner.config.send_queue_frames_max);
        let p = pending.clone();
        let writer = tokio::spawn(write_frames(w, rx, move |reason| p.close(&reason)));
        let reader = tokio::spawn(read_responses(
            r,
            reader,
            self.inner.config.frame_bytes_max,
            pending.clone(),
            target,
        ));
        Arc::new(Conn {
            out: tx,
            pending,
            next_id: AtomicU64::new(1),
            tasks: [writer, reader],
        })
    }

    async fn call_rpc(
        &self,
        target: MemberId,
        addr: &str,
        request: PeerRequest,
        deadline: Instant,
    ) -> Result<PeerResponse, TransportError> {
        let entries = request.entry_count() as u64;
        let payload_bytes = request.entry_payload_bytes();
        let budget = self.inner.config.append_entries_bytes_max;
        if entries > 1 && payload_bytes > budget {
            // Before connecting or encoding: what fits the budget, proportionally (at least
            // one entry).
            return Err(TransportError::TooLarge {
                max_entries: (entries.saturating_mul(budget as u64) / payload_bytes as u64)
                    .clamp(1, entries - 1),
            });
        }
        let peer = self.peer(target, addr);
        let conn = self.connection(target, &peer, deadline).await?;
        let id = conn.next_id.fetch_add(1, Ordering::Relaxed);
        let frame = wire::encode_frame(
            &Message::Request { id, request },
            self.inner.config.frame_bytes_max,
        )
        .map_err(|e| match e {
            // Tell openraft how many entries would fit (proportionally, with a margin for
            // uneven entries); it resends with at most that many.
            WireError::TooLong { len, max_bytes } if entries > 0 => TransportError::TooLarge {
                max_entries: (entries.saturating_mul(max_bytes as u64) / len.max(1) * 9 / 10)
                    .max(1),
            },
            e => TransportError::Io(e.to_string()),
        })?;
        let (tx, rx) = oneshot::channel();
        match lock(&conn.pending.0).as_mut() {
            Some(m) => {
                m.insert(id, tx);
            }
            None => return Err(TransportError::Io("connection closed".into())),
        }
        let _guard = WaiterGuard {
            pending: &conn.pending,
            id,
        };
        match tokio::time::timeout_at(deadline, conn.out.send(frame)).await {
            Err(_) => return Err(TransportError::Timeout),
            Ok(Err(_)) => return Err(TransportError::Io("connection closed".into())),
            Ok(Ok(())) => {}
        }
        match tokio::time::timeout_at(deadline, rx).await {
            Err(_) => Err(TransportError::Timeout),
            Ok(Err(_)) => Err(TransportError::Io("connection closed".into())),
            Ok(Ok(r)) => r,
        }
    }

    /// Streams one snapshot on a connection of its own: begin, chunks, end, then the response.
    async fn call_snapshot(
        &self,
        target: MemberId,
        addr: &str,
        body: RequestBody,
        deadline: Instant,
    ) -> Result<PeerResponse, TransportError> {
        let RequestBody::Snapshot { vote, meta, image } = body else {
            return Err(TransportError::Io("not a snapshot".into()));
        };
        let cfg = &self.inner.config;
        let until = deadline.min(Instant::now() + cfg.connect_timeout());
        let (stream, mut reader) = match tokio::time::timeout_at(
            until,
            self.open(target, addr, Channel::Snapshot),
        )
        .await
        {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                if matches!(e, ConnectError::Rejected { .. } | ConnectError::Tls { .. }) {
                    tracing::warn!(id = self.inner.id, target_member = target, error = %e, "peer handshake refused");
                }
                return Err(TransportError::Unreachable(e.to_string()));
            }
            Err(_) if until == deadline => return Err(TransportError::Timeout),
            Err(_) => {
                return Err(TransportError::Unreachable(format!(
                    "connect to {addr} timed out"
                )))
            }
        };
        let (mut r, w) = tokio::io::split(stream);
        let max = cfg.frame_bytes_max;
        let io = |e: WireError| TransportError::Io(e.to_string());
        let id = 1;
        let total = image.len();
        let transfer = async {
            let mut w = BufWriter::with_capacity(256 << 10, w);
            let begin = Message::SnapshotBegin {
                id,
                vote,
                meta,
                total_bytes: total as u64,
            };
            w.write_all(&wire::encode_frame(&begin, max).map_err(io)?)
                .await
                .map_err(|e| TransportError::Io(e.to_string()))?;
            let mut offset = 0;
            while offset < total {
                let end = (offset + cfg.snapshot_chunk_bytes).min(total);
                let chunk = Message::SnapshotChunk {
                    id,
                    data: image.slice(offset..end),
                };
                w.write_all(&wire::encode_frame(&chunk, max).map_err(io)?)
                    .await
                    .map_err(|e| TransportError::Io(e.to_string()))?;
                offset = end;
            }
            w.write_all(&wire::encode_frame(&Message::SnapshotEnd { id }, max).map_err(io)?)
                .await
                .map_err(|e| TransportError::Io(e.to_string()))?;
            w.flush()
                .await
                .map_err(|e| TransportError::Io(e.to_string()))?;
            let body =
                reader.next(&mut r, max).await.map_err(io)?.ok_or_else(|| {
                    TransportError::Io("closed before answering the snapshot".into())
                })?;
            match wire::decode::<Message>(&body).map_err(io)? {
                Message::Response { id: got, response } if got == id => Ok(response),
                other => Err(TransportError::Io(format!(
                    "unexpected {} in answer to a snapshot",
                    other.name()
                ))),
            }
        };
        // Dropping the connection (deadline, or openraft cancelling the transfer) tells the
        // listener to discard what it received.
        tokio::time::timeout_at(deadline, transfer)
            .await
            .map_err(|_| TransportError::Timeout)?
    }
}

impl Transport for TcpTransport {
    async fn call(
        &self,
        target: MemberId,
        addr: &str,
        request: PeerRequest,
        timeout: Duration,
    ) -> Result<PeerResponse, TransportError> {
        let deadline = Instant::now() + timeout;
        match request.0 {
            body @ RequestBody::Snapshot { .. } => {
                self.call_snapshot(target, addr, body, deadline).await
            }
            body => {
                self.call_rpc(target, addr, PeerRequest(body), deadline)
                    .await
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use openraft::raft::{AppendEntriesRequest, VoteRequest, VoteResponse};
    use openraft::{CommittedLeaderId, EntryPayload, LogId};
    use tokio::net::TcpListener;

    use super::*;
    use crate::network::tcp::wire::{HelloReply, PROTOCOL_VERSION};
    use crate::network::ResponseBody;
    use crate::types::{Entry, Vote};

    const LONG: Duration = Duration::from_secs(10);

    fn vote_request(term: u64) -> PeerRequest {
        PeerRequest(RequestBody::Vote(VoteRequest::new(
            Vote::new(term, 1),
            None,
        )))
    }

    fn term_of(r: &PeerResponse) -> u64 {
        match &r.0 {
            ResponseBody::Vote(v) => v.vote.leader_id().term,
            _ => panic!("not a vote response: {r:?}"),
        }
    }

    /// A fake member 2: accepts one connection, reads `n` vote requests, answers them in the
    /// reverse order of arrival (echoing each request's vote), then holds the connection open
    /// until the caller closes it.
    async fn reversing_peer(listener: TcpListener, n: usize) {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut reader = FrameReader::new();
        let hello = reader.next(&mut s, 4096).await.unwrap().unwrap();
        wire::check_hello(&hello, "coordd", 2).unwrap();
        let accepted = HelloReply::Accepted {
            protocol_version: PROTOCOL_VERSION,
            member_id: 2,
        };
        s.write_all(&wire::encode_frame(&accepted, 4096).unwrap())
            .await
            .unwrap();
        let mut got = Vec::new();
        for _ in 0..n {
            let body = reader.next(&mut s, 1 << 20).await.unwrap().unwrap();
            match wire::decode::<Message>(&body).unwrap() {
                Message::Request { id, request } => got.push((id, request)),
                other => panic!("unexpected {}", other.name()),
            }
        }
        for (id, request) in got.into_iter().rev() {
            let RequestBody::Vote(v) = request.0 else {
                panic!("not a vote")
            };
            let response = PeerResponse(ResponseBody::Vote(VoteResponse {
                vote: v.vote,
                vote_granted: true,
                last_log_id: None,
            }));
            let f = wire::encode_frame(&Message::Response { id, response }, 1 << 20).unwrap();
            s.write_all(&f).await.unwrap();
        }
        let _ = reader.next(&mut s, 1 << 20).await;
    }

    #[tokio::test]
    async fn concurrent_calls_share_one_connection_and_match_responses_out_of_order() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap().to_string();
        // It accepts one connection only: a second one would never be answered.
        let peer = tokio::spawn(reversing_peer(l, 3));
        let t = TcpTransport::new(1, TcpConfig::default()).unwrap();
        let call = |term| {
            let (t, addr) = (t.clone(), addr.clone());
            async move { t.call(2, &addr, vote_request(term), LONG).await }
        };
        let (a, b, c) = tokio::join!(call(1), call(2), call(3));
        assert_eq!(term_of(&a.unwrap()), 1);
        assert_eq!(term_of(&b.unwrap()), 2);
        assert_eq!(term_of(&c.unwrap()), 3);
        t.close_all();
        peer.await.unwrap();
    }

    #[tokio::test]
    async fn refused_connect_is_unreachable_at_once_then_backs_off_then_reconnects() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap().to_string();
        drop(l);
        let config = TcpConfig {
            reconnect_backoff_min_ms: 100,
            reconnect_backoff_max_ms: 200,
            ..TcpConfig::default()
        };
        let t = TcpTransport::new(1, config).unwrap();
        let started = Instant::now();
        let e = t.call(2, &addr, vote_request(1), LONG).await.unwrap_err();
        assert!(matches!(e, TransportError::Unreachable(_)), "{e}");
        // Within the backoff: no connect at all, the same answer.
        let e = t.call(2, &addr, vote_request(1), LONG).await.unwrap_err();
        assert!(
            matches!(&e, TransportError::Unreachable(m) if m.contains("next attempt")),
            "{e}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{:?}",
            started.elapsed()
        );

        // The peer comes up: a call after the backoff connects.
        let l = TcpListener::bind(&addr).await.unwrap();
        let peer = tokio::spawn(reversing_peer(l, 1));
        let deadline = Instant::now() + LONG;
        let r = loop {
            match t.call(2, &addr, vote_request(5), LONG).await {
                Ok(r) => break r,
                Err(TransportError::Unreachable(_)) if Instant::now() < deadline => {
                    // The backoff (at most 200 ms) is still running.
                    tokio::time::sleep(Duration::from_millis(20)).await
                }
                Err(e) => panic!("{e}"),
            }
        };
        assert_eq!(term_of(&r), 5);
        t.close_all();
        peer.await.unwrap();
    }

    #[tokio::test]
    async fn an_unanswered_call_times_out_and_leaves_nothing_behind() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap().to_string();
        // Reads one request and never answers it.
        let peer = tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut reader = FrameReader::new();
            reader.next(&mut s, 4096).await.unwrap().unwrap();
            let accepted = HelloReply::Accepted {
                protocol_version: PROTOCOL_VERSION,
                member_id: 2,
            };
            s.write_all(&wire::encode_frame(&accepted, 4096).unwrap())
                .await
                .unwrap();
            while let Ok(Some(_)) = reader.next(&mut s, 1 << 20).await {}
        });
        let t = TcpTransport::new(1, TcpConfig::default()).unwrap();
        let started = Instant::now();
        let e = t
            .call(2, &addr, vote_request(1), Duration::from_millis(100))
            .await
            .unwrap_err();
        assert_eq!(e, TransportError::Timeout);
        assert!(started.elapsed() < Duration::from_secs(2));
        let peer_state = lock(&t.inner.peers).get(&2).cloned().unwrap();
        let conn = TcpTransport::live(&peer_state).expect("the connection stays open");
        assert_eq!(lock(&conn.pending.0).as_ref().map(|m| m.len()), Some(0));
        drop(conn);
        t.close_all();
        peer.await.unwrap();
    }

    #[tokio::test]
    async fn an_append_over_the_frame_limit_asks_for_fewer_entries() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let peer = tokio::spawn(reversing_peer(l, 0));
        let config = TcpConfig {
            frame_bytes_max: 8 << 10,
            snapshot_chunk_bytes: 4 << 10,
            ..TcpConfig::default()
        };
        let t = TcpTransport::new(1, config).unwrap();
        let entries: Vec<Entry> = (1..=20)
            .map(|i| Entry {
                log_id: LogId::new(CommittedLeaderId::new(1, 1), i),
                payload: EntryPayload::Normal(Bytes::from(vec![7u8; 1024])),
            })
            .collect();
        let request = PeerRequest(RequestBody::AppendEntries(AppendEntriesRequest {
            vote: Vote::new_committed(1, 1),
            prev_log_id: None,
            entries,
            leader_commit: None,
        }));
        match t.call(2, &addr, request, LONG).await {
            Err(TransportError::TooLarge { max_entries }) => {
                assert!((1..=7).contains(&max_entries), "{max_entries}")
            }
            other => panic!("expected TooLarge, got {other:?}"),
        }
        t.close_all();
        peer.await.unwrap();
    }

    /// An AppendEntries whose entries' payloads exceed `append_entries_bytes_max` asks for
    /// fewer entries before anything is sent; a single entry goes whatever its size.
    #[tokio::test]
    async fn an_append_over_the_byte_budget_asks_for_fewer_entries_and_one_always_goes() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap().to_string();
        // Takes the handshake, then hangs up.
        let peer = tokio::spawn(reversing_peer(l, 0));
        let config = TcpConfig {
            append_entries_bytes_max: 10 << 10,
            ..TcpConfig::default()
        };
        let t = TcpTransport::new(1, config).unwrap();
        let append = |n: u64, each: usize| {
            PeerRequest(RequestBody::AppendEntries(AppendEntriesRequest {
                vote: Vote::new_committed(1, 1),
                prev_log_id: None,
                entries: (1..=n)
                    .map(|i| Entry {
                        log_id: LogId::new(CommittedLeaderId::new(1, 1), i),
                        payload: EntryPayload::Normal(Bytes::from(vec![7u8; each])),
                    })
                    .collect(),
                leader_commit: None,
            }))
        };
        // 8 x 4 KiB against 10 KiB: two fit.
        match t.call(2, &addr, append(8, 4 << 10), LONG).await {
            Err(TransportError::TooLarge { max_entries }) => assert_eq!(max_entries, 2),
            other => panic!("expected TooLarge, got {other:?}"),
        }
        // Two of 20 KiB: one at a time.
        match t.call(2, &addr, append(2, 20 << 10), LONG).await {
            Err(TransportError::TooLarge { max_entries }) => assert_eq!(max_entries, 1),
            other => panic!("expected TooLarge, got {other:?}"),
        }
        // One of 20 KiB is not refused: it goes to the peer (which hangs up on it).
        let e = t
            .call(2, &addr, append(1, 20 << 10), Duration::from_millis(200))
            .await
            .unwrap_err();
        assert!(
            !matches!(e, TransportError::TooLarge { .. }),
            "a single entry goes whatever its size: {e}"
        );
        t.close_all();
        peer.await.unwrap();
    }

    /// A snapshot transfer that stalls (the receiver stops reading, so the sender's socket
    /// buffers fill) does not hold up calls to the same peer: they go on another connection.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stalled_snapshot_does_not_delay_calls_to_the_same_peer() {
        use crate::types::{SnapshotMeta, StoredMembership};

        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap().to_string();
        // Member 2: answers votes on RPC connections; on a snapshot connection it reads the
        // handshake and then nothing.
        let peer = tokio::spawn(async move {
            let mut held = Vec::new();
            loop {
                let Ok((mut s, _)) = l.accept().await else {
                    return;
                };
                let mut reader = FrameReader::new();
                let Ok(Some(hello)) = reader.next(&mut s, 4096).await else {
                    continue;
                };
                let hello = wire::check_hello(&hello, "coordd", 2).unwrap();
                let accepted = HelloReply::Accepted {
                    protocol_version: PROTOCOL_VERSION,
                    member_id: 2,
                };
                s.write_all(&wire::encode_frame(&accepted, 4096).unwrap())
                    .await
                    .unwrap();
                if hello.channel == Channel::Snapshot {
                    held.push(s);
                    continue;
                }
                tokio::spawn(async move {
                    while let Ok(Some(body)) = reader.next(&mut s, 1 << 20).await {
                        let Ok(Message::Request { id, request }) = wire::decode(&body) else {
                            return;
                        };
                        let RequestBody::Vote(v) = request.0 else {
                            return;
                        };
                        let response = PeerResponse(ResponseBody::Vote(VoteResponse {
                            vote: v.vote,
                            vote_granted: false,
                            last_log_id: None,
                        }));
                        let f = wire::encode_frame(&Message::Response { id, response }, 1 << 20)
                            .unwrap();
                        if s.write_all(&f).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        let t = TcpTransport::new(1, TcpConfig::default()).unwrap();
        // Far more than loopback socket buffers hold.
        let image = Bytes::from(vec![0u8; 64 << 20]);
        let snapshot = PeerRequest(RequestBody::Snapshot {
            vote: Vote::new_committed(1, 1),
            meta: SnapshotMeta {
                last_log_id: Some(LogId::new(CommittedLeaderId::new(1, 1), 10)),
                last_membership: StoredMembership::default(),
                snapshot_id: "s-1".into(),
            },
            image,
        });
        let transfer = {
            let (t, addr) = (t.clone(), addr.clone());
            tokio::spawn(async move { t.call(2, &addr, snapshot, Duration::from_secs(3)).await })
        };
        // While it is stuck, votes still get through (behind it they would wait forever; the
        // deadline is loose for a loaded machine, the slowest is printed).
        let mut slowest = Duration::ZERO;
        for term in 1..=20 {
            let started = Instant::now();
            let r = t
                .call(2, &addr, vote_request(term), Duration::from_millis(500))
                .await;
            assert_eq!(term_of(&r.unwrap()), term);
            slowest = slowest.max(started.elapsed());
        }
        assert!(
            !transfer.is_finished(),
            "the snapshot should still be stuck"
        );
        assert_eq!(
            transfer.await.unwrap().unwrap_err(),
            TransportError::Timeout
        );
        println!("slowest of 20 calls during a stalled snapshot transfer: {slowest:?}");
        t.close_all();
        peer.abort();
    }

    /// A connect plus handshake slower than the calls' deadlines still completes: the connect
    /// is not cancelled with the call that started it, and later calls use the connection.
    #[tokio::test]
    async fn a_connect_slower_than_the_call_deadline_still_completes() {
        use std::sync::atomic::AtomicUsize;

        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let accepts = Arc::new(AtomicUsize::new(0));
        let counted = accepts.clone();
        let peer = tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = l.accept().await else {
                    return;
                };
                counted.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut reader = FrameReader::new();
                    reader.next(&mut s, 4096).await.unwrap().unwrap();
                    // Three times the calls' deadline.
                    tokio::time::sleep(Duration::from_millis(150)).await;
                    let accepted = HelloReply::Accepted {
                        protocol_version: PROTOCOL_VERSION,
                        member_id: 2,
                    };
                    s.write_all(&wire::encode_frame(&accepted, 4096).unwrap())
                        .await
                        .unwrap();
                    while let Ok(Some(body)) = reader.next(&mut s, 1 << 20).await {
                        let Ok(Message::Request { id, request }) = wire::decode(&body) else {
                            return;
                        };
                        let RequestBody::Vote(v) = request.0 else {
                            return;
                        };
                        let response = PeerResponse(ResponseBody::Vote(VoteResponse {
                            vote: v.vote,
                            vote_granted: false,
                            last_log_id: None,
                        }));
                        let f = wire::encode_frame(&Message::Response { id, response }, 1 << 20)
                            .unwrap();
                        s.write_all(&f).await.unwrap();
                    }
                });
            }
        });
        let t = TcpTransport::new(1, TcpConfig::default()).unwrap();
        let deadline = Instant::now() + LONG;
        let mut timeouts = 0;
        loop {
            match t
                .call(2, &addr, vote_request(1), Duration::from_millis(50))
                .await
            {
                Ok(r) => {
                    assert_eq!(term_of(&r), 1);
                    break;
                }
                Err(TransportError::Timeout) if Instant::now() < deadline => timeouts += 1,
                Err(e) => panic!("{e}"),
            }
        }
        assert!(
            timeouts >= 1,
            "the first call cannot have waited out the handshake"
        );
        assert_eq!(
            accepts.load(Ordering::SeqCst),
            1,
            "one connect, not one per call"
        );
        t.close_all();
        peer.abort();
    }
}
