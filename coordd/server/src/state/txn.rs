//! Encoding of log entries and reply bodies.
//!
//! An entry is `[format version: u8][kind: u8][zxid: i64][time_ms: i64]` then the
//! kind's fields in jute encoding (big-endian integers, length-prefixed buffers and
//! strings). A client write carries its request as `[op code: i32]` followed by the
//! request body exactly as the client sent it (`Request::encode`), so decoding reuses
//! coordd-proto's record decoders.
//!
//! Invariant: decoding never panics and never trusts a length beyond the bytes left;
//! every malformed entry, including trailing bytes, is a [`DecodeError`].

use bytes::BufMut;
use coordd_proto::jute::JuteWrite;
use coordd_proto::{encode_acls, OpCode, Reader, Record};

use super::*;

/// Version of the entry format; bump on any change.
const ENTRY_FORMAT_V1: u8 = 1;

const KIND_CREATE_SESSION: u8 = 1;
const KIND_CLOSE_SESSION: u8 = 2;
const KIND_WRITE: u8 = 3;
const KIND_DELETE_EXPIRED: u8 = 4;

pub(super) fn encode_entry(zxid: Zxid, time_ms: i64, txn: &Txn, out: &mut BytesMut) {
    out.put_u8(ENTRY_FORMAT_V1);
    let kind = match txn {
        Txn::CreateSession { .. } => KIND_CREATE_SESSION,
        Txn::CloseSession { .. } => KIND_CLOSE_SESSION,
        Txn::Write { .. } => KIND_WRITE,
        Txn::DeleteExpired { .. } => KIND_DELETE_EXPIRED,
    };
    out.put_u8(kind);
    out.put_i64(zxid);
    out.put_i64(time_ms);
    match txn {
        Txn::CreateSession {
            session_id,
            passwd,
            timeout_ms,
        } => {
            out.put_i64(*session_id);
            out.put_jute_buffer(passwd);
            out.put_i32(*timeout_ms);
        }
        Txn::CloseSession { session_id } => out.put_i64(*session_id),
        Txn::Write {
            session_id,
            auth,
            request,
        } => {
            out.put_i64(*session_id);
            out.put_i32(auth.len() as i32);
            for id in auth {
                id.encode(out);
            }
            out.put_i32(request.op_code().code());
            request.encode(out);
        }
        Txn::DeleteExpired { paths } => out.put_jute_string_vec(paths),
    }
}

pub(super) fn decode_entry(buf: &[u8]) -> Result<Entry, DecodeError> {
    let (&version, rest) = buf.split_first().ok_or(DecodeError::Truncated {
        offset: 0,
        needed: 1,
    })?;
    if version != ENTRY_FORMAT_V1 {
        return Err(DecodeError::UnknownValue {
            what: "log entry format version",
            value: version as i32,
        });
    }
    let (&kind, rest) = rest.split_first().ok_or(DecodeError::Truncated {
        offset: 1,
        needed: 1,
    })?;
    let mut r = Reader::new(rest);
    let zxid = r.read_i64()?;
    let time_ms = r.read_i64()?;
    let txn = match kind {
        KIND_CREATE_SESSION => Txn::CreateSession {
            session_id: r.read_i64()?,
            passwd: r.read_buffer()?,
            timeout_ms: r.read_i32()?,
        },
        KIND_CLOSE_SESSION => Txn::CloseSession {
            session_id: r.read_i64()?,
        },
        KIND_WRITE => {
            let session_id = r.read_i64()?;
            // An Id is two length prefixes at least.
            let auth = r.read_vec(8, Id::decode)?;
            let op = OpCode::try_from(r.read_i32()?)?;
            let request = Request::decode(op, &mut r)?;
            Txn::Write {
                session_id,
                auth,
                request,
            }
        }
        KIND_DELETE_EXPIRED => Txn::DeleteExpired {
            paths: r.read_string_vec()?,
        },
        other => {
            return Err(DecodeError::UnknownValue {
                what: "log entry kind",
                value: other as i32,
            })
        }
    };
    if !r.is_empty() {
        return Err(DecodeError::BadLength {
            offset: r.position() + 2,
            len: r.remaining().min(i32::MAX as usize) as i32,
        });
    }
    Ok(Entry { zxid, time_ms, txn })
}

/// The reply body ZooKeeper sends for each response (the records of
/// `zookeeper.jute`), written without copying the response.
pub(super) fn encode_response(response: &Response, out: &mut BytesMut) {
    match response {
        Response::Empty => {}
        // ErrorResponse { err: 0 }.
        Response::AddWatch => out.put_i32(0),
        // CreateResponse.
        Response::Create { path } => out.put_jute_string(path),
        // Create2Response.
        Response::Create2 { path, stat } => {
            out.put_jute_string(path);
            stat.encode(out);
        }
        // ExistsResponse / SetDataResponse / SetACLResponse: one stat.
        Response::Stat(stat) => stat.encode(out),
        Response::GetData { data, stat } => {
            out.put_jute_buffer(data);
            stat.encode(out);
        }
        Response::GetChildren { children } => out.put_jute_string_vec(children),
        Response::GetChildren2 { children, stat } => {
            out.put_jute_string_vec(children);
            stat.encode(out);
        }
        Response::GetAcl { acl, stat } => {
            encode_acls(out, acl);
            stat.encode(out);
        }
        Response::AllChildrenNumber(n) => out.put_i32(*n),
        Response::Ephemerals(paths) => out.put_jute_string_vec(paths),
        Response::Sync { path } => out.put_jute_string(path),
        Response::Multi(results) => MultiResult::encode_all(results, out),
        Response::WhoAmI(infos) => {
            out.put_i32(infos.len() as i32);
            for i in infos {
                i.encode(out);
            }
        }
    }
}
