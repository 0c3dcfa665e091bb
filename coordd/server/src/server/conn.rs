//! One client connection: the handshake, then a reader that turns frames into core
//! messages and a writer that drains the connection's outbound queue.
//!
//! Invariants:
//! - a frame's length is checked against `frame_bytes_max` before its body is read;
//! - malformed bytes close the connection, they never panic or reach the core;
//! - at most `outstanding_requests_max` requests of one connection wait in the core;
//!   past that the reader stops reading (TCP backpressure) instead of queueing more,
//!   and logs it once per connection;
//! - the requests of one connection in the core hold at most `outstanding_bytes_max`
//!   bytes of frames, or are a single request (the same backpressure, its own log line);
//! - while the core holds the handshake the connection is read, so a client that leaves
//!   is reported to the core at once and its handshake never renews its session later.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use coordd_proto::frame::{check_frame_len, split_frame};
use coordd_proto::{ConnectRequest, ErrorCode, OpCode, Reader, Record, Request, RequestHeader};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio_util::sync::CancellationToken;

use super::core::{ConnHandle, ConnStats, CoreMsg, Metrics, Outbound};
use super::fourlw;
use crate::config::Config;

/// How long a new connection may take to send its handshake (or to take a four-letter
/// word's answer).
pub const HANDSHAKE_TIMEOUT_MS: u64 = 10_000;
/// Most bytes the writer gathers into one write.
const WRITE_BATCH_BYTES_MAX: usize = 256 * 1024;

pub struct ConnCtx {
    pub config: Config,
    pub metrics: Arc<Metrics>,
    pub core: mpsc::Sender<CoreMsg>,
    pub started: Instant,
}

/// Serves one accepted plain-TCP connection to its end.
pub async fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    conn_id: u64,
    ctx: Arc<ConnCtx>,
    shutdown: CancellationToken,
) {
    let _ = stream.set_nodelay(true);
    let (rd, wr) = stream.into_split();
    serve_split(rd, wr, peer, conn_id, ctx, shutdown).await;
}

/// Serves one connection given as its two halves: a TCP stream's, or a TLS stream's
/// (`tokio::io::split`); everything past the transport is the same code.
pub async fn serve_split<R, W>(
    mut rd: R,
    mut wr: W,
    peer: SocketAddr,
    conn_id: u64,
    ctx: Arc<ConnCtx>,
    shutdown: CancellationToken,
) where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let mut buf = BytesMut::with_capacity(4096);

    // The first four bytes are a frame length, or a four-letter word.
    let first = tokio::time::timeout(Duration::from_millis(HANDSHAKE_TIMEOUT_MS), async {
        while buf.len() < 4 {
            if rd.read_buf(&mut buf).await? == 0 {
                return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof));
            }
        }
        Ok(())
    })
    .await;
    if !matches!(first, Ok(Ok(()))) {
        return;
    }
    let word = [buf[0], buf[1], buf[2], buf[3]];
    if let Some(cmd) = fourlw::Command::parse(&word) {
        let text = fourlw::answer(cmd, &ctx).await;
        // Bounded like the handshake: a client that asks (`cons` can be long) and never
        // reads would otherwise hold its connection slot for ever.
        let _ = tokio::time::timeout(Duration::from_millis(HANDSHAKE_TIMEOUT_MS), async {
            wr.write_all(text.as_bytes()).await?;
            wr.shutdown().await
        })
        .await;
        return;
    }

    // The handshake frame.
    let len = i32::from_be_bytes(word);
    if let Err(e) = check_frame_len(len, ctx.config.frame_bytes_max) {
        tracing::info!(%peer, error = %e, "closing connection: bad handshake frame");
        return;
    }
    let handshake = tokio::time::timeout(Duration::from_millis(HANDSHAKE_TIMEOUT_MS), async {
        loop {
            if let Some(frame) = split_frame(&mut buf, ctx.config.frame_bytes_max).ok()? {
                return Some(frame);
            }
            match rd.read_buf(&mut buf).await {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    })
    .await;
    let Ok(Some(frame)) = handshake else {
        return;
    };
    let req = match ConnectRequest::from_bytes(&frame) {
        Ok(r) => r,
        Err(e) => {
            tracing::info!(%peer, error = %e, "closing connection: malformed connect request");
            return;
        }
    };

    let (out_tx, out_rx) = mpsc::unbounded_channel();
    let kill = shutdown.child_token();
    let handle = ConnHandle {
        conn_id,
        peer,
        out: out_tx,
        queued_bytes: Arc::new(AtomicUsize::new(0)),
        permits: Arc::new(Semaphore::new(ctx.config.outstanding_requests_max)),
        kill: kill.clone(),
        stats: Arc::new(ConnStats::default()),
    };
    let writer = tokio::spawn(write_loop(
        wr,
        out_rx,
        handle.queued_bytes.clone(),
        kill.clone(),
    ));

    let (est_tx, est_rx) = oneshot::channel();
    if ctx
        .core
        .send(CoreMsg::Connect {
            conn: handle.clone(),
            req,
            established: est_tx,
        })
        .await
        .is_err()
    {
        kill.cancel();
        let _ = writer.await;
        return;
    }
    // The core may hold the handshake a while (no quorum on this member, a member
    // behind the client, a resumed session's barrier): meanwhile the socket is read, so
    // that a client that leaves is reported at once. Answered later, a handshake of a
    // client long gone would count as its sign of life and renew its session at the
    // leader (the nemesis test saw a vanished client's ephemeral outlive its session
    // timeout so). Bytes sent right behind the connect request (Java clients send
    // setWatches and auth before the answer) stay in `buf` for the read loop.
    let mut est_rx = est_rx;
    let mut client_gone = false;
    let session_id = tokio::select! {
        biased;
        r = &mut est_rx => r.ok().flatten(),
        _ = kill.cancelled() => None,
        () = until_closed(&mut rd, &mut buf, ctx.config.frame_bytes_max) => {
            client_gone = true;
            // From now on the core cannot hand this connection a session; one it did
            // just before is named in `Disconnected`, so the core lets go of it.
            est_rx.close();
            est_rx.try_recv().ok().flatten()
        }
    };
    match session_id {
        Some(session_id) if !client_gone => {
            read_loop(&mut rd, &mut buf, &handle, session_id, &ctx).await;
            let _ = ctx
                .core
                .send(CoreMsg::Disconnected {
                    conn_id,
                    session_id: Some(session_id),
                })
                .await;
            // The writer ends when the core closes us or the peer is gone.
            kill.cancel();
        }
        session_id => {
            let _ = ctx
                .core
                .send(CoreMsg::Disconnected {
                    conn_id,
                    session_id,
                })
                .await;
            if client_gone {
                kill.cancel();
            }
        }
    }
    let _ = writer.await;
}

/// Reads what the client sends while its handshake waits in the core, into `buf` (up to
/// one frame's worth past what is there; then it stops reading and waits: TCP
/// backpressure), and returns once the client has closed the connection or it failed.
async fn until_closed<R: AsyncRead + Unpin>(
    rd: &mut R,
    buf: &mut BytesMut,
    frame_bytes_max: usize,
) {
    loop {
        if buf.len() > frame_bytes_max.saturating_add(4) {
            std::future::pending::<()>().await;
        }
        match rd.read_buf(buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

async fn read_loop<R: AsyncRead + Unpin>(
    rd: &mut R,
    buf: &mut BytesMut,
    handle: &ConnHandle,
    session_id: i64,
    ctx: &ConnCtx,
) {
    let peer = handle.peer;
    let mut at_limit_logged = false;
    let mut at_bytes_limit_logged = false;
    let requests_max = ctx.config.outstanding_requests_max;
    let bytes_max = ctx.config.outstanding_bytes_max;
    // Frame sizes of this connection's requests in the core, oldest first, and their
    // sum. The core answers a session's requests in order and gives a permit back with
    // each reply, so the requests it has answered are the oldest ones here.
    let mut in_core: VecDeque<usize> = VecDeque::new();
    let mut in_core_bytes = 0usize;
    loop {
        // Everything already buffered first.
        loop {
            let frame = match split_frame(buf, ctx.config.frame_bytes_max) {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => {
                    ctx.metrics.limit_hits.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(%peer, error = %e, "closing connection: frame over the limit (frame_bytes_max)");
                    return;
                }
            };
            let received = Instant::now();
            ctx.metrics.packets_received.fetch_add(1, Ordering::Relaxed);
            handle.stats.received.fetch_add(1, Ordering::Relaxed);
            let mut r = Reader::new(&frame);
            let header = match RequestHeader::decode(&mut r) {
                Ok(h) => h,
                Err(e) => {
                    tracing::info!(%peer, error = %e, "closing connection: malformed request header");
                    return;
                }
            };
            let msg = match OpCode::try_from(header.op) {
                // Reconfig is decoded like any request; the core refuses it standalone.
                Ok(op) => match Request::decode(op, &mut r) {
                    Ok(request) => CoreMsg::Request {
                        conn_id: handle.conn_id,
                        session_id,
                        xid: header.xid,
                        request,
                        received,
                    },
                    Err(coordd_proto::DecodeError::UnknownValue {
                        what: "supported op code",
                        ..
                    }) => refuse(handle, session_id, header.xid, ErrorCode::Unimplemented),
                    Err(e) => {
                        tracing::info!(%peer, op = ?op, error = %e, "closing connection: malformed request");
                        return;
                    }
                },
                Err(_) => refuse(handle, session_id, header.xid, ErrorCode::Unimplemented),
            };
            // The byte bound: wait for replies while this request would take the
            // connection's requests in the core past `outstanding_bytes_max` (a
            // request alone always goes, so no frame waits forever).
            let len = frame.len();
            loop {
                let outstanding = requests_max.saturating_sub(handle.permits.available_permits());
                while in_core.len() > outstanding {
                    in_core_bytes -= in_core.pop_front().unwrap_or(0);
                }
                if in_core.is_empty() || in_core_bytes + len <= bytes_max {
                    break;
                }
                ctx.metrics.limit_hits.fetch_add(1, Ordering::Relaxed);
                if !at_bytes_limit_logged {
                    at_bytes_limit_logged = true;
                    tracing::warn!(
                        %peer,
                        session_id = %format_args!("0x{session_id:x}"),
                        outstanding_bytes = in_core_bytes,
                        request_bytes = len,
                        limit = bytes_max,
                        "outstanding byte limit hit (outstanding_bytes_max): not reading \
                         from this connection until replies go out (logged once per connection)"
                    );
                }
                // Until one more reply gives its permit back.
                // Exact: permits are at most `outstanding_requests_max`, which
                // `Config::resolve` keeps within OUTSTANDING_REQUESTS_MAX_CEILING, far
                // below u32::MAX (a count truncated here used to make this loop spin).
                let wanted = u32::try_from(handle.permits.available_permits())
                    .map_or(u32::MAX, |available| available.saturating_add(1));
                let more = tokio::select! {
                    p = handle.permits.acquire_many(wanted) => p,
                    _ = handle.kill.cancelled() => return,
                };
                match more {
                    Ok(p) => drop(p),
                    Err(_) => return,
                }
            }
            // One permit per request in the core; waiting here is the backpressure.
            if handle.permits.available_permits() == 0 {
                ctx.metrics.limit_hits.fetch_add(1, Ordering::Relaxed);
                if !at_limit_logged {
                    at_limit_logged = true;
                    tracing::warn!(
                        %peer,
                        session_id = %format_args!("0x{session_id:x}"),
                        limit = ctx.config.outstanding_requests_max,
                        "outstanding request limit hit (outstanding_requests_max): not reading \
                         from this connection until replies go out (logged once per connection)"
                    );
                }
            }
            let permit = tokio::select! {
                p = handle.permits.acquire() => p,
                _ = handle.kill.cancelled() => return,
            };
            match permit {
                Ok(p) => p.forget(),
                Err(_) => return,
            }
            in_core.push_back(len);
            in_core_bytes += len;
            if ctx.core.send(msg).await.is_err() {
                return;
            }
        }
        let n = tokio::select! {
            n = rd.read_buf(buf) => n,
            _ = handle.kill.cancelled() => return,
        };
        match n {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

fn refuse(handle: &ConnHandle, session_id: i64, xid: i32, err: ErrorCode) -> CoreMsg {
    CoreMsg::Refuse {
        conn_id: handle.conn_id,
        session_id,
        xid,
        err,
    }
}

async fn write_loop<W: AsyncWrite + Unpin>(
    mut wr: W,
    mut rx: mpsc::UnboundedReceiver<Outbound>,
    queued_bytes: Arc<AtomicUsize>,
    kill: CancellationToken,
) {
    let mut batch = BytesMut::with_capacity(16 * 1024);
    loop {
        let first = tokio::select! {
            m = rx.recv() => m,
            _ = kill.cancelled() => return,
        };
        let mut close = false;
        match first {
            None => return,
            Some(Outbound::Close) => close = true,
            Some(Outbound::Frame(f)) => batch.extend_from_slice(&f),
        }
        // Gather what else is queued into one write.
        while !close && batch.len() < WRITE_BATCH_BYTES_MAX {
            match rx.try_recv() {
                Ok(Outbound::Frame(f)) => batch.extend_from_slice(&f),
                Ok(Outbound::Close) => close = true,
                Err(_) => break,
            }
        }
        let n = batch.len();
        if n > 0 {
            // The flush is a no-op on TCP; TLS may hold the last record until it.
            let res = tokio::select! {
                r = async { wr.write_all(&batch).await?; wr.flush().await } => r,
                _ = kill.cancelled() => return,
            };
            if res.is_err() {
                kill.cancel();
                return;
            }
            queued_bytes.fetch_sub(n, Ordering::Relaxed);
            // Back to the buffer's start: the next batch reuses the same page rather
            // than walking through the whole capacity (RSS per connection).
            batch.clear();
        }
        if close {
            let _ = wr.shutdown().await;
            kill.cancel();
            return;
        }
    }
}
