//! The "null" ZooKeeper server of `benches/coord.rs` (`COORD_BENCH_CANDIDATE=null`): it
//! speaks just enough of the client protocol for the bench's load (handshake, create,
//! setData, getData, exists, ping, close) and does nothing else: no tree, no log, no
//! fsync. Every request is answered at once with a canned reply, from the connection's
//! own task (no channel, no other thread), one write per batch of requests read.
//!
//! Why: on the 2-core benchmark machine the load generator and the server share the
//! cores, and every request costs a receive and a send on both sides. What this server
//! reaches is the most any server can reach with this load on this machine, so its
//! ratio against ZooKeeper bounds what coordd's ratio can be (RESULTS.md, "The ceiling
//! of this machine").
//!
//! It runs in a child process of the bench executable (the bench re-executes itself
//! with `NULL_SERVE_ENV` set), so that its CPU is measured like any other server's.

use bytes::BytesMut;
use coordd_proto::frame::{split_frame, write_frame};
use coordd_proto::{
    ConnectRequest, ConnectResponse, Create2Response, CreateResponse, ErrorCode, GetDataResponse,
    OpCode, Reader, Record, ReplyHeader, RequestHeader, Stat, StatResponse,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Set to an address: the bench executable serves as the null server there.
pub const NULL_SERVE_ENV: &str = "COORD_BENCH_NULL_SERVE";

const FRAME_BYTES_MAX: usize = 1 << 20;
/// Bytes the canned getData reply carries (the bench's value size).
const VALUE_LEN: usize = 64;

/// Serves until killed. Exits the process if the address cannot be bound.
pub fn serve(addr: &str) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_io()
        .build()
        .expect("tokio runtime");
    rt.block_on(async {
        let listener = match TcpListener::bind(addr).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("null server: cannot bind {addr}: {e}");
                std::process::exit(1);
            }
        };
        let mut session_id = 0x1000_i64;
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            session_id += 1;
            tokio::spawn(connection(stream, session_id));
        }
    });
}

async fn connection(mut stream: TcpStream, session_id: i64) {
    let _ = stream.set_nodelay(true);
    let mut buf = BytesMut::with_capacity(4096);
    let mut out = BytesMut::with_capacity(4096);
    let mut zxid = 0i64;
    let mut connected = false;
    loop {
        loop {
            let frame = match split_frame(&mut buf, FRAME_BYTES_MAX) {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(_) => return,
            };
            if !connected {
                let Ok(req) = ConnectRequest::from_bytes(&frame) else {
                    return;
                };
                connected = true;
                let resp = ConnectResponse {
                    protocol_version: 0,
                    timeout_ms: req.timeout_ms,
                    session_id,
                    passwd: vec![0; 16],
                    read_only: false,
                };
                write_frame(&mut out, |o| resp.encode(o));
                continue;
            }
            let mut r = Reader::new(&frame);
            let Ok(header) = RequestHeader::decode(&mut r) else {
                return;
            };
            zxid += 1;
            let op = OpCode::try_from(header.op).ok();
            let close = op == Some(OpCode::CloseSession);
            // Every request the load sends starts with its path (a ping has none).
            let path = r.read_string().unwrap_or_default();
            write_frame(&mut out, |o| {
                let answered = matches!(
                    op,
                    Some(
                        OpCode::Create
                            | OpCode::Create2
                            | OpCode::CreateContainer
                            | OpCode::CreateTtl
                            | OpCode::Delete
                            | OpCode::Exists
                            | OpCode::GetData
                            | OpCode::SetData
                            | OpCode::Ping
                            | OpCode::CloseSession
                    )
                );
                let err = if answered {
                    ErrorCode::Ok
                } else {
                    ErrorCode::Unimplemented
                };
                ReplyHeader {
                    xid: header.xid,
                    zxid,
                    err: err.code(),
                }
                .encode(o);
                let stat = Stat {
                    czxid: zxid,
                    mzxid: zxid,
                    version: 1,
                    data_length: VALUE_LEN as i32,
                    pzxid: zxid,
                    ..Stat::default()
                };
                match op {
                    Some(OpCode::Create) => CreateResponse { path }.encode(o),
                    Some(OpCode::Create2 | OpCode::CreateContainer | OpCode::CreateTtl) => {
                        Create2Response { path, stat }.encode(o)
                    }
                    Some(OpCode::Exists | OpCode::SetData) => StatResponse { stat }.encode(o),
                    Some(OpCode::GetData) => GetDataResponse {
                        data: vec![b'x'; VALUE_LEN],
                        stat,
                    }
                    .encode(o),
                    _ => {}
                }
            });
            if close {
                let _ = stream.write_all(&out).await;
                return;
            }
        }
        if !out.is_empty() {
            if stream.write_all(&out).await.is_err() {
                return;
            }
            out.clear();
        }
        match stream.read_buf(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}
