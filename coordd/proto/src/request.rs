//! Client requests as one typed enum, decoded from a request header's op code and the
//! record that follows it.

use bytes::BytesMut;

use crate::consts::OpCode;
use crate::jute::{DecodeError, Reader, Record};
use crate::records::*;

/// One operation inside a `multi` (write) transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MultiOp {
    /// `op` is Create, Create2, CreateContainer or CreateTtl; `ttl` is 0 unless CreateTtl.
    Create {
        op: OpCode,
        req: CreateRequest,
        ttl: i64,
    },
    Delete(DeleteRequest),
    SetData(SetDataRequest),
    Check(CheckVersionRequest),
}

impl MultiOp {
    pub fn op_code(&self) -> OpCode {
        match self {
            MultiOp::Create { op, .. } => *op,
            MultiOp::Delete(_) => OpCode::Delete,
            MultiOp::SetData(_) => OpCode::SetData,
            MultiOp::Check(_) => OpCode::Check,
        }
    }

    pub fn path(&self) -> &str {
        match self {
            MultiOp::Create { req, .. } => &req.path,
            MultiOp::Delete(r) => &r.path,
            MultiOp::SetData(r) => &r.path,
            MultiOp::Check(r) => &r.path,
        }
    }

    fn encode(&self, out: &mut BytesMut) {
        match self {
            MultiOp::Create { op, req, ttl } => {
                if *op == OpCode::CreateTtl {
                    CreateTtlRequest {
                        path: req.path.clone(),
                        data: req.data.clone(),
                        acl: req.acl.clone(),
                        flags: req.flags,
                        ttl: *ttl,
                    }
                    .encode(out)
                } else {
                    req.encode(out)
                }
            }
            MultiOp::Delete(r) => r.encode(out),
            MultiOp::SetData(r) => r.encode(out),
            MultiOp::Check(r) => r.encode(out),
        }
    }
}

/// One read inside a `multiRead`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadOp {
    GetChildren(PathWatchRequest),
    GetData(PathWatchRequest),
}

/// A decoded client request (everything after the request header).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    Ping,
    CloseSession,
    /// Create, Create2, CreateContainer and CreateTtl; `ttl` is 0 unless CreateTtl.
    Create {
        op: OpCode,
        req: CreateRequest,
        ttl: i64,
    },
    Delete(DeleteRequest),
    DeleteContainer(PathRequest),
    Exists(PathWatchRequest),
    GetData(PathWatchRequest),
    SetData(SetDataRequest),
    GetAcl(PathRequest),
    SetAcl(SetAclRequest),
    GetChildren(PathWatchRequest),
    GetChildren2(PathWatchRequest),
    GetAllChildrenNumber(PathRequest),
    GetEphemerals(PathRequest),
    Check(CheckVersionRequest),
    Sync(PathRequest),
    Multi(Vec<MultiOp>),
    MultiRead(Vec<ReadOp>),
    Auth(AuthPacket),
    SetWatches(SetWatches2),
    AddWatch(AddWatchRequest),
    RemoveWatches(WatchTypeRequest),
    CheckWatches(WatchTypeRequest),
    WhoAmI,
    /// Dynamic reconfiguration (op 16): change the ensemble's members.
    Reconfig(ReconfigRequest),
}

/// Longest multi we accept, in ops; a frame limit bounds it too, this bounds the work.
pub const MULTI_OPS_MAX: usize = 10_000;

fn decode_create(op: OpCode, r: &mut Reader<'_>) -> Result<(CreateRequest, i64), DecodeError> {
    if op == OpCode::CreateTtl {
        let t = CreateTtlRequest::decode(r)?;
        Ok((
            CreateRequest {
                path: t.path,
                data: t.data,
                acl: t.acl,
                flags: t.flags,
            },
            t.ttl,
        ))
    } else {
        Ok((CreateRequest::decode(r)?, 0))
    }
}

impl Request {
    /// Decodes the body of a request of type `op`. `Unimplemented` op codes (reconfig,
    /// SASL, ...) come back as `UnknownValue` for the caller to answer.
    pub fn decode(op: OpCode, r: &mut Reader<'_>) -> Result<Request, DecodeError> {
        use OpCode as O;
        Ok(match op {
            O::Ping => Request::Ping,
            O::CloseSession => Request::CloseSession,
            O::Create | O::Create2 | O::CreateContainer | O::CreateTtl => {
                let (req, ttl) = decode_create(op, r)?;
                Request::Create { op, req, ttl }
            }
            O::Delete => Request::Delete(DeleteRequest::decode(r)?),
            O::DeleteContainer => Request::DeleteContainer(PathRequest::decode(r)?),
            O::Exists => Request::Exists(PathWatchRequest::decode(r)?),
            O::GetData => Request::GetData(PathWatchRequest::decode(r)?),
            O::SetData => Request::SetData(SetDataRequest::decode(r)?),
            O::GetAcl => Request::GetAcl(PathRequest::decode(r)?),
            O::SetAcl => Request::SetAcl(SetAclRequest::decode(r)?),
            O::GetChildren => Request::GetChildren(PathWatchRequest::decode(r)?),
            O::GetChildren2 => Request::GetChildren2(PathWatchRequest::decode(r)?),
            O::GetAllChildrenNumber => Request::GetAllChildrenNumber(PathRequest::decode(r)?),
            O::GetEphemerals => Request::GetEphemerals(PathRequest::decode(r)?),
            O::Check => Request::Check(CheckVersionRequest::decode(r)?),
            O::Sync => Request::Sync(PathRequest::decode(r)?),
            O::Multi => Request::Multi(decode_multi(r)?),
            O::MultiRead => Request::MultiRead(decode_multi_read(r)?),
            O::Auth => Request::Auth(AuthPacket::decode(r)?),
            O::SetWatches => {
                let w = SetWatches::decode(r)?;
                Request::SetWatches(SetWatches2 {
                    relative_zxid: w.relative_zxid,
                    data_watches: w.data_watches,
                    exist_watches: w.exist_watches,
                    child_watches: w.child_watches,
                    persistent_watches: Vec::new(),
                    persistent_recursive_watches: Vec::new(),
                })
            }
            O::SetWatches2 => Request::SetWatches(SetWatches2::decode(r)?),
            O::AddWatch => Request::AddWatch(AddWatchRequest::decode(r)?),
            O::RemoveWatches => Request::RemoveWatches(WatchTypeRequest::decode(r)?),
            O::CheckWatches => Request::CheckWatches(WatchTypeRequest::decode(r)?),
            O::WhoAmI => Request::WhoAmI,
            O::Reconfig => Request::Reconfig(ReconfigRequest::decode(r)?),
            O::Notification | O::Sasl | O::CreateSession | O::Error => {
                return Err(DecodeError::UnknownValue {
                    what: "supported op code",
                    value: op.code(),
                })
            }
        })
    }

    /// The op code this request is sent with.
    pub fn op_code(&self) -> OpCode {
        use Request as R;
        match self {
            R::Ping => OpCode::Ping,
            R::CloseSession => OpCode::CloseSession,
            R::Create { op, .. } => *op,
            R::Delete(_) => OpCode::Delete,
            R::DeleteContainer(_) => OpCode::DeleteContainer,
            R::Exists(_) => OpCode::Exists,
            R::GetData(_) => OpCode::GetData,
            R::SetData(_) => OpCode::SetData,
            R::GetAcl(_) => OpCode::GetAcl,
            R::SetAcl(_) => OpCode::SetAcl,
            R::GetChildren(_) => OpCode::GetChildren,
            R::GetChildren2(_) => OpCode::GetChildren2,
            R::GetAllChildrenNumber(_) => OpCode::GetAllChildrenNumber,
            R::GetEphemerals(_) => OpCode::GetEphemerals,
            R::Check(_) => OpCode::Check,
            R::Sync(_) => OpCode::Sync,
            R::Multi(_) => OpCode::Multi,
            R::MultiRead(_) => OpCode::MultiRead,
            R::Auth(_) => OpCode::Auth,
            R::SetWatches(_) => OpCode::SetWatches2,
            R::AddWatch(_) => OpCode::AddWatch,
            R::RemoveWatches(_) => OpCode::RemoveWatches,
            R::CheckWatches(_) => OpCode::CheckWatches,
            R::WhoAmI => OpCode::WhoAmI,
            R::Reconfig(_) => OpCode::Reconfig,
        }
    }

    /// True for requests that change the tree or the session table and so go through
    /// the log.
    pub fn is_write(&self) -> bool {
        use Request as R;
        matches!(
            self,
            R::CloseSession
                | R::Create { .. }
                | R::Delete(_)
                | R::DeleteContainer(_)
                | R::SetData(_)
                | R::SetAcl(_)
                | R::Check(_)
                | R::Multi(_)
        )
    }

    /// Encodes the body (without the request header).
    pub fn encode(&self, out: &mut BytesMut) {
        use Request as R;
        match self {
            R::Ping | R::CloseSession | R::WhoAmI => {}
            R::Create { op, req, ttl } => MultiOp::Create {
                op: *op,
                req: req.clone(),
                ttl: *ttl,
            }
            .encode(out),
            R::Delete(r) => r.encode(out),
            R::DeleteContainer(r)
            | R::GetAcl(r)
            | R::GetAllChildrenNumber(r)
            | R::GetEphemerals(r)
            | R::Sync(r) => r.encode(out),
            R::Exists(r) | R::GetData(r) | R::GetChildren(r) | R::GetChildren2(r) => r.encode(out),
            R::SetData(r) => r.encode(out),
            R::SetAcl(r) => r.encode(out),
            R::Check(r) => r.encode(out),
            R::Reconfig(r) => r.encode(out),
            R::Multi(ops) => {
                for op in ops {
                    MultiHeader {
                        op: op.op_code().code(),
                        done: false,
                        err: -1,
                    }
                    .encode(out);
                    op.encode(out);
                }
                MultiHeader::END.encode(out);
            }
            R::MultiRead(ops) => {
                for op in ops {
                    let (code, r) = match op {
                        ReadOp::GetChildren(r) => (OpCode::GetChildren, r),
                        ReadOp::GetData(r) => (OpCode::GetData, r),
                    };
                    MultiHeader {
                        op: code.code(),
                        done: false,
                        err: -1,
                    }
                    .encode(out);
                    r.encode(out);
                }
                MultiHeader::END.encode(out);
            }
            R::Auth(a) => a.encode(out),
            R::SetWatches(w) => w.encode(out),
            R::AddWatch(a) => a.encode(out),
            R::RemoveWatches(w) | R::CheckWatches(w) => w.encode(out),
        }
    }

    /// A whole frame body: request header then the request.
    pub fn encode_with_header(&self, xid: i32, out: &mut BytesMut) {
        RequestHeader {
            xid,
            op: self.op_code().code(),
        }
        .encode(out);
        self.encode(out);
    }
}

fn decode_multi_headers<T>(
    r: &mut Reader<'_>,
    mut op: impl FnMut(OpCode, &mut Reader<'_>) -> Result<T, DecodeError>,
) -> Result<Vec<T>, DecodeError> {
    let mut ops = Vec::new();
    loop {
        let h = MultiHeader::decode(r)?;
        if h.done {
            return Ok(ops);
        }
        if ops.len() >= MULTI_OPS_MAX {
            return Err(DecodeError::BadLength {
                offset: r.position(),
                len: ops.len() as i32,
            });
        }
        let code = OpCode::try_from(h.op)?;
        ops.push(op(code, r)?);
    }
}

fn decode_multi(r: &mut Reader<'_>) -> Result<Vec<MultiOp>, DecodeError> {
    decode_multi_headers(r, |code, r| {
        Ok(match code {
            OpCode::Create | OpCode::Create2 | OpCode::CreateContainer | OpCode::CreateTtl => {
                let (req, ttl) = decode_create(code, r)?;
                MultiOp::Create { op: code, req, ttl }
            }
            OpCode::Delete => MultiOp::Delete(DeleteRequest::decode(r)?),
            OpCode::SetData => MultiOp::SetData(SetDataRequest::decode(r)?),
            OpCode::Check => MultiOp::Check(CheckVersionRequest::decode(r)?),
            other => {
                return Err(DecodeError::UnknownValue {
                    what: "multi op code",
                    value: other.code(),
                })
            }
        })
    })
}

fn decode_multi_read(r: &mut Reader<'_>) -> Result<Vec<ReadOp>, DecodeError> {
    decode_multi_headers(r, |code, r| {
        Ok(match code {
            OpCode::GetChildren => ReadOp::GetChildren(PathWatchRequest::decode(r)?),
            OpCode::GetData => ReadOp::GetData(PathWatchRequest::decode(r)?),
            other => {
                return Err(DecodeError::UnknownValue {
                    what: "multiRead op code",
                    value: other.code(),
                })
            }
        })
    })
}

/// One op's result inside a multi response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MultiResult {
    Create { path: String },
    Create2 { path: String, stat: Stat },
    Delete,
    SetData { stat: Stat },
    Check,
    GetChildren { children: Vec<String> },
    GetData { data: Vec<u8>, stat: Stat },
    Error(crate::ErrorCode),
}

impl MultiResult {
    /// Encodes a whole multi / multiRead response body.
    pub fn encode_all(results: &[MultiResult], out: &mut BytesMut) {
        for res in results {
            let (op, err) = match res {
                MultiResult::Create { .. } => (OpCode::Create, 0),
                MultiResult::Create2 { .. } => (OpCode::Create2, 0),
                MultiResult::Delete => (OpCode::Delete, 0),
                MultiResult::SetData { .. } => (OpCode::SetData, 0),
                MultiResult::Check => (OpCode::Check, 0),
                MultiResult::GetChildren { .. } => (OpCode::GetChildren, 0),
                MultiResult::GetData { .. } => (OpCode::GetData, 0),
                MultiResult::Error(e) => (OpCode::Error, e.code()),
            };
            MultiHeader {
                op: op.code(),
                done: false,
                err,
            }
            .encode(out);
            match res {
                MultiResult::Create { path } => CreateResponse { path: path.clone() }.encode(out),
                MultiResult::Create2 { path, stat } => Create2Response {
                    path: path.clone(),
                    stat: stat.clone(),
                }
                .encode(out),
                MultiResult::Delete | MultiResult::Check => {}
                MultiResult::SetData { stat } => stat.encode(out),
                MultiResult::GetChildren { children } => GetChildrenResponse {
                    children: children.clone(),
                }
                .encode(out),
                MultiResult::GetData { data, stat } => GetDataResponse {
                    data: data.clone(),
                    stat: stat.clone(),
                }
                .encode(out),
                MultiResult::Error(e) => ErrorResponse { err: e.code() }.encode(out),
            }
        }
        MultiHeader::END.encode(out);
    }

    /// Decodes a multi / multiRead response body.
    pub fn decode_all(r: &mut Reader<'_>) -> Result<Vec<MultiResult>, DecodeError> {
        decode_multi_headers(r, |code, r| {
            Ok(match code {
                OpCode::Create | OpCode::CreateContainer | OpCode::CreateTtl => {
                    MultiResult::Create {
                        path: CreateResponse::decode(r)?.path,
                    }
                }
                OpCode::Create2 => {
                    let c = Create2Response::decode(r)?;
                    MultiResult::Create2 {
                        path: c.path,
                        stat: c.stat,
                    }
                }
                OpCode::Delete => MultiResult::Delete,
                OpCode::SetData => MultiResult::SetData {
                    stat: Stat::decode(r)?,
                },
                OpCode::Check => MultiResult::Check,
                OpCode::GetChildren => MultiResult::GetChildren {
                    children: GetChildrenResponse::decode(r)?.children,
                },
                OpCode::GetData => {
                    let d = GetDataResponse::decode(r)?;
                    MultiResult::GetData {
                        data: d.data,
                        stat: d.stat,
                    }
                }
                OpCode::Error => {
                    let e = ErrorResponse::decode(r)?.err;
                    MultiResult::Error(crate::ErrorCode::try_from(e)?)
                }
                other => {
                    return Err(DecodeError::UnknownValue {
                        what: "multi result op code",
                        value: other.code(),
                    })
                }
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorCode;

    fn round_trip(req: Request) {
        let mut b = BytesMut::new();
        req.encode(&mut b);
        let got = Request::decode(req.op_code(), &mut Reader::new(&b)).unwrap();
        assert_eq!(got, req);
    }

    #[test]
    fn requests_round_trip() {
        round_trip(Request::Multi(vec![
            MultiOp::Create {
                op: OpCode::Create,
                req: CreateRequest {
                    path: "/a".into(),
                    data: vec![1],
                    acl: crate::Acl::open_unsafe(),
                    flags: 0,
                },
                ttl: 0,
            },
            MultiOp::Create {
                op: OpCode::CreateTtl,
                req: CreateRequest {
                    path: "/t".into(),
                    data: vec![],
                    acl: crate::Acl::open_unsafe(),
                    flags: 5,
                },
                ttl: 1000,
            },
            MultiOp::Delete(DeleteRequest {
                path: "/b".into(),
                version: -1,
            }),
            MultiOp::Check(CheckVersionRequest {
                path: "/c".into(),
                version: 3,
            }),
        ]));
        round_trip(Request::MultiRead(vec![ReadOp::GetData(
            PathWatchRequest {
                path: "/x".into(),
                watch: false,
            },
        )]));
        round_trip(Request::SetData(SetDataRequest {
            path: "/x".into(),
            data: vec![9; 10],
            version: 4,
        }));
        round_trip(Request::WhoAmI);
    }

    #[test]
    fn multi_results_round_trip() {
        let rs = vec![
            MultiResult::Error(ErrorCode::Ok),
            MultiResult::Error(ErrorCode::NoNode),
            MultiResult::Error(ErrorCode::RuntimeInconsistency),
        ];
        let mut b = BytesMut::new();
        MultiResult::encode_all(&rs, &mut b);
        assert_eq!(MultiResult::decode_all(&mut Reader::new(&b)).unwrap(), rs);
    }

    /// The seed corpus of the `client_protocol` fuzz target (fuzz/corpus/client_protocol):
    /// byte streams as a client sends them, a ConnectRequest frame then request frames, made
    /// by the real encoders and covering every op code the server decodes (plus SetWatches
    /// v1, reconfig and an unknown op code, which it answers without decoding). Checked here
    /// to decode as the server's connection reader does; written when `FUZZ_SEEDS_DIR` is set
    /// (`FUZZ_SEEDS_DIR=$PWD/fuzz/corpus cargo test fuzz_seeds`).
    #[test]
    fn fuzz_seeds() {
        use crate::frame::{split_frame, write_frame};
        use crate::{perms, xid, Acl, ConnectRequest, RequestHeader};

        let connect = |session_id: i64, read_only: bool| ConnectRequest {
            protocol_version: 0,
            last_zxid_seen: if session_id == 0 { 0 } else { 0x1_0000_0042 },
            timeout_ms: 6000,
            session_id,
            passwd: if session_id == 0 {
                vec![0; 16]
            } else {
                vec![7; 16]
            },
            read_only,
        };
        let stream =
            |c: ConnectRequest, reqs: Vec<(i32, Request)>, raw: Vec<(i32, i32, BytesMut)>| {
                let mut out = BytesMut::new();
                write_frame(&mut out, |o| c.encode(o));
                for (xid, r) in reqs {
                    write_frame(&mut out, |o| r.encode_with_header(xid, o));
                }
                for (xid, op, body) in raw {
                    write_frame(&mut out, |o| {
                        RequestHeader { xid, op }.encode(o);
                        o.extend_from_slice(&body);
                    });
                }
                out.to_vec()
            };
        let pw = |p: &str, watch| PathWatchRequest {
            path: p.into(),
            watch,
        };
        let path = |p: &str| PathRequest { path: p.into() };
        let create = |op, p: &str, flags, ttl| Request::Create {
            op,
            req: CreateRequest {
                path: p.into(),
                data: b"data".to_vec(),
                acl: Acl::open_unsafe(),
                flags,
            },
            ttl,
        };
        let digest_acl = vec![
            Acl::new(perms::ALL, "digest", "app:D/InIHSb7yEEbrWz8b9l71RjZJU="),
            Acl::new(perms::READ, "world", "anyone"),
        ];
        let old_set_watches = SetWatches {
            relative_zxid: 0x42,
            data_watches: vec!["/a".into()],
            exist_watches: vec!["/b".into()],
            child_watches: vec!["/".into()],
        }
        .to_bytes();

        let seeds: Vec<(&str, Vec<u8>)> = vec![
            ("connect-new", stream(connect(0, false), vec![], vec![])),
            (
                "connect-resume-read-only",
                stream(connect(0x0100_0000_0000_0001, true), vec![], vec![]),
            ),
            (
                "session-basic",
                stream(
                    connect(0, false),
                    vec![
                        (1, create(OpCode::Create, "/a", 0, 0)),
                        (2, Request::GetData(pw("/a", true))),
                        (
                            3,
                            Request::SetData(SetDataRequest {
                                path: "/a".into(),
                                data: vec![1, 2, 3],
                                version: 0,
                            }),
                        ),
                        (xid::PING, Request::Ping),
                        (
                            4,
                            Request::Delete(DeleteRequest {
                                path: "/a".into(),
                                version: -1,
                            }),
                        ),
                        (5, Request::CloseSession),
                    ],
                    vec![],
                ),
            ),
            (
                "creates",
                stream(
                    connect(0, false),
                    vec![
                        (1, create(OpCode::Create2, "/seq-", 3, 0)),
                        (2, create(OpCode::CreateContainer, "/c", 4, 0)),
                        (3, create(OpCode::CreateTtl, "/t", 5, 60_000)),
                        (
                            4,
                            Request::Create {
                                op: OpCode::Create,
                                req: CreateRequest {
                                    path: "/acl".into(),
                                    data: vec![],
                                    acl: digest_acl.clone(),
                                    flags: 1,
                                },
                                ttl: 0,
                            },
                        ),
                    ],
                    vec![],
                ),
            ),
            (
                "reads",
                stream(
                    connect(0, false),
                    vec![
                        (1, Request::Exists(pw("/a", true))),
                        (2, Request::GetChildren(pw("/", false))),
                        (3, Request::GetChildren2(pw("/a", true))),
                        (4, Request::GetAcl(path("/a"))),
                        (5, Request::GetAllChildrenNumber(path("/"))),
                        (6, Request::GetEphemerals(path("/"))),
                        (7, Request::Sync(path("/a"))),
                        (8, Request::WhoAmI),
                    ],
                    vec![],
                ),
            ),
            (
                "acl-auth",
                stream(
                    connect(0, false),
                    vec![
                        (
                            xid::AUTH,
                            Request::Auth(AuthPacket {
                                auth_type: 0,
                                scheme: "digest".into(),
                                auth: b"app:secret".to_vec(),
                            }),
                        ),
                        (
                            1,
                            Request::SetAcl(SetAclRequest {
                                path: "/a".into(),
                                acl: digest_acl,
                                version: 0,
                            }),
                        ),
                        (
                            2,
                            Request::Check(CheckVersionRequest {
                                path: "/a".into(),
                                version: 1,
                            }),
                        ),
                        (3, Request::DeleteContainer(path("/c"))),
                    ],
                    vec![],
                ),
            ),
            (
                "multi",
                stream(
                    connect(0, false),
                    vec![
                        (
                            1,
                            Request::Multi(vec![
                                MultiOp::Check(CheckVersionRequest {
                                    path: "/a".into(),
                                    version: 0,
                                }),
                                MultiOp::Create {
                                    op: OpCode::Create2,
                                    req: CreateRequest {
                                        path: "/a/b".into(),
                                        data: vec![9],
                                        acl: Acl::open_unsafe(),
                                        flags: 2,
                                    },
                                    ttl: 0,
                                },
                                MultiOp::Create {
                                    op: OpCode::CreateTtl,
                                    req: CreateRequest {
                                        path: "/a/t".into(),
                                        data: vec![],
                                        acl: Acl::open_unsafe(),
                                        flags: 6,
                                    },
                                    ttl: 1000,
                                },
                                MultiOp::SetData(SetDataRequest {
                                    path: "/a".into(),
                                    data: vec![],
                                    version: -1,
                                }),
                                MultiOp::Delete(DeleteRequest {
                                    path: "/a/x".into(),
                                    version: -1,
                                }),
                            ]),
                        ),
                        (
                            2,
                            Request::MultiRead(vec![
                                ReadOp::GetData(pw("/a", false)),
                                ReadOp::GetChildren(pw("/a", false)),
                            ]),
                        ),
                    ],
                    vec![],
                ),
            ),
            (
                "watches",
                stream(
                    connect(0x0100_0000_0000_0002, false),
                    vec![
                        (
                            xid::SET_WATCHES,
                            Request::SetWatches(SetWatches2 {
                                relative_zxid: 0x1_0000_0042,
                                data_watches: vec!["/a".into()],
                                exist_watches: vec!["/gone".into()],
                                child_watches: vec!["/".into()],
                                persistent_watches: vec!["/p".into()],
                                persistent_recursive_watches: vec!["/clusters".into()],
                            }),
                        ),
                        (
                            1,
                            Request::AddWatch(AddWatchRequest {
                                path: "/clusters".into(),
                                mode: 1,
                            }),
                        ),
                        (
                            2,
                            Request::CheckWatches(WatchTypeRequest {
                                path: "/a".into(),
                                watcher_type: 2,
                            }),
                        ),
                        (
                            3,
                            Request::RemoveWatches(WatchTypeRequest {
                                path: "/a".into(),
                                watcher_type: 1,
                            }),
                        ),
                    ],
                    vec![],
                ),
            ),
            (
                "set-watches-v1-reconfig-unknown-op",
                stream(
                    connect(0, false),
                    vec![],
                    vec![
                        (xid::SET_WATCHES, OpCode::SetWatches.code(), old_set_watches),
                        (1, OpCode::Reconfig.code(), BytesMut::new()),
                        (2, 999, BytesMut::from(&b"????"[..])),
                        (3, OpCode::Sasl.code(), BytesMut::new()),
                        (4, OpCode::Ping.code(), BytesMut::new()),
                    ],
                ),
            ),
        ];

        for (name, bytes) in &seeds {
            // As coordd/server/src/server/conn.rs reads a connection.
            let mut buf = BytesMut::from(&bytes[..]);
            let first = split_frame(&mut buf, 1 << 20).unwrap().unwrap();
            ConnectRequest::from_bytes(&first).unwrap();
            while let Some(frame) = split_frame(&mut buf, 1 << 20).unwrap() {
                let mut r = Reader::new(&frame);
                let h = RequestHeader::decode(&mut r).unwrap();
                match OpCode::try_from(h.op) {
                    Ok(OpCode::Reconfig) | Err(_) => {}
                    Ok(op) => match Request::decode(op, &mut r) {
                        Ok(_) => {}
                        Err(DecodeError::UnknownValue {
                            what: "supported op code",
                            ..
                        }) => {}
                        Err(e) => panic!("{name}: {op:?}: {e}"),
                    },
                }
            }
            assert!(buf.is_empty(), "{name}");
        }
        if let Some(dir) = std::env::var_os("FUZZ_SEEDS_DIR") {
            let dir = std::path::Path::new(&dir).join("client_protocol");
            std::fs::create_dir_all(&dir).unwrap();
            for (name, bytes) in &seeds {
                std::fs::write(dir.join(name), bytes).unwrap();
            }
        }
    }
}
