//! The client protocol as coordd's connection reader sees it (coordd/server/src/server/conn.rs):
//! the input is the byte stream a client sends. The first frame's length is checked, the
//! frame is a ConnectRequest; every later frame is a request header and the body of its op
//! code. What a connection would refuse ends the stream here as it closes the connection
//! there; what it would answer `Unimplemented` is skipped as there.
//!
//! Properties: nothing panics; no frame is longer than the limit; every decoded request
//! (and the ConnectRequest) re-encodes to bytes that decode to the same value; the checks
//! the core runs before acting (path rules, create mode) do not panic on what decoded.

#![no_main]

use bytes::BytesMut;
use coordd_proto::frame::{check_frame_len, split_frame};
use coordd_proto::path::{basename, parent, validate_path};
use coordd_proto::{
    ConnectRequest, CreateMode, DecodeError, MultiOp, OpCode, ReadOp, Reader, Record, Request,
    RequestHeader,
};
use libfuzzer_sys::fuzz_target;

/// Small, so that inputs of libFuzzer's size (4 KiB by default) reach the limit check;
/// the server's default (1 MiB) takes the same path.
const FRAME_BYTES_MAX: usize = 2048;

fuzz_target!(|data: &[u8]| {
    let mut buf = BytesMut::from(data);
    if buf.len() < 4 {
        return;
    }
    // conn.rs: the first four bytes are a four-letter word or the handshake's length.
    let len = i32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
    if check_frame_len(len, FRAME_BYTES_MAX).is_err() {
        return;
    }
    let Ok(Some(frame)) = split_frame(&mut buf, FRAME_BYTES_MAX) else {
        return;
    };
    assert!(frame.len() <= FRAME_BYTES_MAX);
    let Ok(connect) = ConnectRequest::from_bytes(&frame) else {
        return;
    };
    let again = ConnectRequest::from_bytes(&connect.to_bytes()).expect("re-encoded connect");
    assert_eq!(again, connect);

    // conn.rs read_loop.
    loop {
        let frame = match split_frame(&mut buf, FRAME_BYTES_MAX) {
            Ok(Some(f)) => f,
            Ok(None) | Err(_) => return,
        };
        assert!(frame.len() <= FRAME_BYTES_MAX);
        let mut r = Reader::new(&frame);
        let Ok(header) = RequestHeader::decode(&mut r) else {
            return;
        };
        let op = match OpCode::try_from(header.op) {
            Err(_) => continue,
            Ok(op) => op,
        };
        let request = match Request::decode(op, &mut r) {
            Ok(request) => request,
            Err(DecodeError::UnknownValue {
                what: "supported op code",
                ..
            }) => continue,
            Err(_) => return,
        };
        round_trip(header.xid, &request);
        check_like_the_core(&request);
    }
});

fn round_trip(xid: i32, request: &Request) {
    let mut out = BytesMut::new();
    request.encode_with_header(xid, &mut out);
    let mut r = Reader::new(&out);
    let header = RequestHeader::decode(&mut r).expect("re-encoded header");
    assert_eq!(header.xid, xid);
    let op = OpCode::try_from(header.op).expect("re-encoded op code");
    assert_eq!(op, request.op_code());
    let again = Request::decode(op, &mut r).expect("re-encoded request");
    assert_eq!(&again, request);
    assert!(r.is_empty(), "re-encoded request has trailing bytes");
    let _ = request.is_write();
}

fn check_path(path: &str, sequential: bool) {
    if validate_path(path, sequential).is_ok() && path != "/" {
        let _ = parent(path);
        let _ = basename(path);
    }
}

fn check_create(req: &coordd_proto::CreateRequest) {
    let sequential = match CreateMode::try_from(req.flags) {
        Ok(mode) => {
            let _ = (mode.is_ephemeral(), mode.is_container(), mode.is_ttl());
            mode.is_sequential()
        }
        Err(_) => false,
    };
    check_path(&req.path, sequential);
}

fn check_like_the_core(request: &Request) {
    match request {
        Request::Create { req, .. } => check_create(req),
        Request::Delete(r) => check_path(&r.path, false),
        Request::DeleteContainer(r)
        | Request::GetAcl(r)
        | Request::GetAllChildrenNumber(r)
        | Request::GetEphemerals(r)
        | Request::Sync(r) => check_path(&r.path, false),
        Request::Exists(r)
        | Request::GetData(r)
        | Request::GetChildren(r)
        | Request::GetChildren2(r) => check_path(&r.path, false),
        Request::SetData(r) => check_path(&r.path, false),
        Request::SetAcl(r) => check_path(&r.path, false),
        Request::Check(r) => check_path(&r.path, false),
        Request::Multi(ops) => {
            for op in ops {
                match op {
                    MultiOp::Create { req, .. } => check_create(req),
                    other => check_path(other.path(), false),
                }
            }
        }
        Request::MultiRead(ops) => {
            for op in ops {
                let (ReadOp::GetChildren(r) | ReadOp::GetData(r)) = op;
                check_path(&r.path, false);
            }
        }
        Request::SetWatches(w) => {
            for p in w
                .data_watches
                .iter()
                .chain(&w.exist_watches)
                .chain(&w.child_watches)
                .chain(&w.persistent_watches)
                .chain(&w.persistent_recursive_watches)
            {
                check_path(p, false);
            }
        }
        Request::AddWatch(a) => check_path(&a.path, false),
        Request::RemoveWatches(w) | Request::CheckWatches(w) => check_path(&w.path, false),
        Request::Ping | Request::CloseSession | Request::Auth(_) | Request::WhoAmI => {}
        // Parsed by the leader (coordd/server/src/server/reconfig.rs, unit-tested there).
        Request::Reconfig(_) => {}
    }
}
