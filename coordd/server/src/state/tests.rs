//! Unit and model-based tests of the state machine. Expected values come from
//! ZooKeeper 3.8's source (DataTree, PrepRequestProcessor, FinalRequestProcessor,
//! WatchManager) as cited next to each test.

use std::collections::BTreeMap;

use coordd_proto::path as zpath;
use coordd_proto::*;
use proptest::prelude::*;

use super::*;

const S1: SessionId = 0x100;
const S2: SessionId = 0x200;

fn id(scheme: &str, i: &str) -> Id {
    Id {
        scheme: scheme.into(),
        id: i.into(),
    }
}

fn ip() -> Vec<Id> {
    vec![id("ip", "127.0.0.1")]
}

fn create_req(op: OpCode, path: &str, data: &[u8], acl: Vec<Acl>, flags: i32, ttl: i64) -> Request {
    Request::Create {
        op,
        req: CreateRequest {
            path: path.into(),
            data: data.to_vec(),
            acl,
            flags,
        },
        ttl,
    }
}

fn pw(path: &str, watch: bool) -> PathWatchRequest {
    PathWatchRequest {
        path: path.into(),
        watch,
    }
}

fn mop_create(path: &str, flags: i32) -> MultiOp {
    MultiOp::Create {
        op: OpCode::Create,
        req: CreateRequest {
            path: path.into(),
            data: vec![],
            acl: Acl::open_unsafe(),
            flags,
        },
        ttl: 0,
    }
}

fn mop_delete(path: &str, version: i32) -> MultiOp {
    MultiOp::Delete(DeleteRequest {
        path: path.into(),
        version,
    })
}

fn mop_set(path: &str, data: &[u8], version: i32) -> MultiOp {
    MultiOp::SetData(SetDataRequest {
        path: path.into(),
        data: data.to_vec(),
        version,
    })
}

fn mop_check(path: &str, version: i32) -> MultiOp {
    MultiOp::Check(CheckVersionRequest {
        path: path.into(),
        version,
    })
}

fn ev(session_id: SessionId, t: EventType, path: &str) -> Notification {
    Notification {
        session_id,
        event: WatcherEvent {
            event_type: t.code(),
            state: KeeperState::SyncConnected.code(),
            path: path.into(),
        },
    }
}

/// Drives a state machine with increasing zxids and times (time = 1000 * zxid).
struct H {
    sm: StateMachine,
    zxid: Zxid,
}

impl H {
    fn new() -> H {
        H::with(StateConfig::default())
    }

    fn with(config: StateConfig) -> H {
        let mut h = H {
            sm: StateMachine::new(config),
            zxid: 0,
        };
        h.txn(Txn::CreateSession {
            session_id: S1,
            passwd: vec![1; 16],
            timeout_ms: 30_000,
        });
        h.txn(Txn::CreateSession {
            session_id: S2,
            passwd: vec![2; 16],
            timeout_ms: 30_000,
        });
        h
    }

    fn time(&self) -> i64 {
        self.zxid * 1000
    }

    fn txn(&mut self, txn: Txn) -> Applied {
        self.zxid += 1;
        let e = Entry {
            zxid: self.zxid,
            time_ms: self.zxid * 1000,
            txn,
        };
        let a = self.sm.apply(&e);
        self.sm.check_invariants();
        a
    }

    fn write_as(&mut self, session_id: SessionId, auth: Vec<Id>, request: Request) -> Applied {
        self.txn(Txn::Write {
            session_id,
            auth,
            request,
        })
    }

    fn w(&mut self, request: Request) -> Result<Response, ErrorCode> {
        self.write_as(S1, ip(), request).result
    }

    fn create(&mut self, path: &str, data: &[u8], flags: i32) -> Result<Response, ErrorCode> {
        self.create_as(S1, ip(), path, data, flags)
    }

    fn create_as(
        &mut self,
        s: SessionId,
        auth: Vec<Id>,
        path: &str,
        data: &[u8],
        flags: i32,
    ) -> Result<Response, ErrorCode> {
        self.write_as(
            s,
            auth,
            create_req(OpCode::Create, path, data, Acl::open_unsafe(), flags, 0),
        )
        .result
    }

    fn created(&mut self, path: &str, flags: i32) -> String {
        match self.create(path, b"", flags) {
            Ok(Response::Create { path }) => path,
            other => panic!("create {path}: {other:?}"),
        }
    }

    fn delete(&mut self, path: &str, version: i32) -> Result<Response, ErrorCode> {
        self.w(Request::Delete(DeleteRequest {
            path: path.into(),
            version,
        }))
    }

    fn set(&mut self, path: &str, data: &[u8], version: i32) -> Result<Response, ErrorCode> {
        self.w(Request::SetData(SetDataRequest {
            path: path.into(),
            data: data.to_vec(),
            version,
        }))
    }

    fn r(&mut self, s: SessionId, request: Request) -> Result<Response, ErrorCode> {
        let r = self.sm.read(s, &ip(), &request);
        self.sm.check_invariants();
        r
    }

    fn stat(&mut self, path: &str) -> Stat {
        match self.r(S1, Request::Exists(pw(path, false))) {
            Ok(Response::Stat(s)) => s,
            other => panic!("exists {path}: {other:?}"),
        }
    }

    fn data(&mut self, path: &str) -> Vec<u8> {
        match self.r(S1, Request::GetData(pw(path, false))) {
            Ok(Response::GetData { data, .. }) => data,
            other => panic!("getData {path}: {other:?}"),
        }
    }

    fn children(&mut self, path: &str) -> Vec<String> {
        match self.r(S1, Request::GetChildren(pw(path, false))) {
            Ok(Response::GetChildren { children }) => children,
            other => panic!("getChildren {path}: {other:?}"),
        }
    }
}

// ---------------------------------------------------------------- tree and stats

#[test]
fn initial_tree_is_zookeepers() {
    let mut h = H::new();
    assert_eq!(h.children("/"), vec!["zookeeper"]);
    assert_eq!(h.children("/zookeeper"), vec!["config", "quota"]);
    // Persisted cversion 0 with children: clients see 0*2 - numChildren.
    let root = h.stat("/");
    assert_eq!((root.cversion, root.num_children, root.czxid), (-1, 1, 0));
    assert_eq!(h.stat("/zookeeper").cversion, -2);
    // DataTree.addConfigNode sets the config ACL with version -1.
    assert_eq!(h.stat("/zookeeper/config").aversion, -1);
    match h.r(
        S1,
        Request::GetAcl(PathRequest {
            path: "/zookeeper/config".into(),
        }),
    ) {
        Ok(Response::GetAcl { acl, .. }) => assert_eq!(acl, Acl::read_unsafe()),
        other => panic!("{other:?}"),
    }
    // "" is ZooKeeper's alias of the root.
    assert_eq!(h.children(""), vec!["zookeeper"]);
    assert_eq!(h.sm.stats().znode_count, 5);
    assert_eq!(h.sm.stats().session_count, 2);
}

#[test]
fn create_get_set_delete_stats() {
    let mut h = H::new();
    assert_eq!(
        h.create("/a", b"hello", 0),
        Ok(Response::Create { path: "/a".into() })
    );
    let z = h.zxid;
    let s = h.stat("/a");
    assert_eq!(
        (s.czxid, s.mzxid, s.pzxid, s.ctime, s.mtime),
        (z, z, z, z * 1000, z * 1000)
    );
    assert_eq!(
        (
            s.version,
            s.cversion,
            s.aversion,
            s.ephemeral_owner,
            s.data_length,
            s.num_children
        ),
        (0, 0, 0, 0, 5, 0)
    );
    let root = h.stat("/");
    assert_eq!((root.pzxid, root.cversion, root.num_children), (z, 0, 2));
    assert_eq!(h.data("/a"), b"hello");

    // setData bumps version, mzxid, mtime; not czxid, ctime, pzxid.
    let Ok(Response::Stat(s2)) = h.set("/a", b"bye", 0) else {
        panic!()
    };
    let z2 = h.zxid;
    assert_eq!(
        (s2.version, s2.mzxid, s2.mtime, s2.czxid, s2.pzxid),
        (1, z2, z2 * 1000, z, z)
    );
    assert_eq!(s2.data_length, 3);
    assert_eq!(h.set("/a", b"x", 0), Err(ErrorCode::BadVersion));
    assert!(h.set("/a", b"x", -1).is_ok());
    let z3 = h.zxid;
    assert_eq!(h.stat("/a").version, 2);

    // Children: parent cversion counts creations and deletions, pzxid the last one.
    h.created("/a/b", 0);
    h.created("/a/c", 0);
    assert_eq!(h.stat("/a").cversion, 2);
    assert_eq!(h.delete("/a", -1), Err(ErrorCode::NotEmpty));
    assert_eq!(h.delete("/a/b", 5), Err(ErrorCode::BadVersion));
    assert_eq!(h.delete("/a/b", 0), Ok(Response::Empty));
    let a = h.stat("/a");
    assert_eq!((a.cversion, a.num_children, a.pzxid), (3, 1, h.zxid));
    assert_eq!(a.mzxid, z3, "child changes leave mzxid alone");
    assert_eq!(h.delete("/a/b", -1), Err(ErrorCode::NoNode));
    assert_eq!(
        h.r(
            S1,
            Request::GetAllChildrenNumber(PathRequest { path: "/".into() })
        ),
        Ok(Response::AllChildrenNumber(5))
    );
    assert_eq!(
        h.r(
            S1,
            Request::GetAllChildrenNumber(PathRequest { path: "/a".into() })
        ),
        Ok(Response::AllChildrenNumber(1))
    );
    match h.r(S1, Request::GetChildren2(pw("/a", false))) {
        Ok(Response::GetChildren2 { children, stat }) => {
            assert_eq!(children, vec!["c"]);
            assert_eq!(stat, h.stat("/a"));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(h.sm.stats().approximate_data_size, {
        // "/" "/zookeeper" "/zookeeper/quota" "/zookeeper/config" "/a"(1 byte) "/a/c"
        1 + 10 + 16 + 17 + 2 + 1 + 4
    });
}

#[test]
fn create2_container_ttl_answer_with_stat() {
    let mut h = H::with(StateConfig {
        ttl_enabled: true,
        superuser_digest: None,
    });
    let r = h.w(create_req(
        OpCode::Create2,
        "/c2",
        b"d",
        Acl::open_unsafe(),
        0,
        0,
    ));
    let Ok(Response::Create2 { path, stat }) = r else {
        panic!("{r:?}")
    };
    assert_eq!(path, "/c2");
    assert_eq!(stat.czxid, h.zxid);
    assert_eq!(stat, h.stat("/c2"));
    let r = h.w(create_req(
        OpCode::CreateContainer,
        "/ct",
        b"",
        Acl::open_unsafe(),
        4,
        0,
    ));
    let Ok(Response::Create2 { stat, .. }) = r else {
        panic!("{r:?}")
    };
    // DataNode.getClientEphemeralOwner: containers and TTL nodes show 0.
    assert_eq!(stat.ephemeral_owner, 0);
    let r = h.w(create_req(
        OpCode::CreateTtl,
        "/t",
        b"",
        Acl::open_unsafe(),
        5,
        100,
    ));
    let Ok(Response::Create2 { stat, .. }) = r else {
        panic!("{r:?}")
    };
    assert_eq!(stat.ephemeral_owner, 0);
    assert_eq!(h.sm.containers.len(), 1);
    assert_eq!(h.sm.ttls.len(), 1);
}

#[test]
fn sequential_suffix_is_the_count_of_creations() {
    let mut h = H::new();
    // The root's persisted cversion starts at 0 although it has /zookeeper.
    assert_eq!(h.created("/s-", 2), "/s-0000000000");
    h.created("/q", 0);
    assert_eq!(h.created("/q/n", 2), "/q/n0000000000");
    assert_eq!(h.created("/q/n", 2), "/q/n0000000001");
    h.delete("/q/n0000000001", -1).unwrap();
    // Deletions do not move the counter the suffix comes from.
    assert_eq!(h.created("/q/n", 2), "/q/n0000000002");
    assert_eq!(h.stat("/q").cversion, 4);
    // "/q/" is fine for a sequential create: the suffix makes the name.
    assert_eq!(h.created("/q/", 2), "/q/0000000003");
    assert_eq!(h.create("/q/", b"", 0), Err(ErrorCode::BadArguments));
    // Ephemeral sequential.
    assert_eq!(h.created("/q/e", 3), "/q/e0000000004");
    assert_eq!(h.stat("/q/e0000000004").ephemeral_owner, S1);
}

#[test]
fn create_errors_in_zookeepers_order() {
    let mut h = H::new();
    h.created("/a", 0);
    assert_eq!(h.create("/a", b"", 0), Err(ErrorCode::NodeExists));
    assert_eq!(h.create("/x/y", b"", 0), Err(ErrorCode::NoNode));
    assert_eq!(h.create("a", b"", 0), Err(ErrorCode::BadArguments));
    assert_eq!(h.create("", b"", 0), Err(ErrorCode::BadArguments));
    assert_eq!(h.create("/a\0b", b"", 0), Err(ErrorCode::BadArguments));
    assert_eq!(h.create("/a/.", b"", 0), Err(ErrorCode::BadArguments));
    assert_eq!(h.create("/b", b"", 42), Err(ErrorCode::BadArguments));
    // The parent is looked up before the full path check: "/a//b" has parent "/a/".
    assert_eq!(h.create("/a//b", b"", 0), Err(ErrorCode::NoNode));
    assert_eq!(h.create("/", b"", 0), Err(ErrorCode::NodeExists));
    // fixupACL runs before the parent lookup.
    let bad_acl = create_req(OpCode::Create, "/nope/x", b"", vec![], 0, 0);
    assert_eq!(h.w(bad_acl), Err(ErrorCode::InvalidAcl));
    // The parent's CREATE permission is checked before existence of the node.
    h.w(create_req(
        OpCode::Create,
        "/ro",
        b"",
        Acl::read_unsafe(),
        0,
        0,
    ))
    .unwrap();
    h.w(create_req(
        OpCode::Create,
        "/ro2",
        b"",
        Acl::read_unsafe(),
        0,
        0,
    ))
    .unwrap();
    assert_eq!(h.create("/ro/x", b"", 0), Err(ErrorCode::NoAuth));
    // Ephemeral parents: the node-exists check comes first.
    h.created("/e", 1);
    assert_eq!(
        h.create("/e/x", b"", 0),
        Err(ErrorCode::NoChildrenForEphemerals)
    );
    // Unknown sessions: SessionExpired after the TTL checks, before the path.
    let r = h.create_as(0x999, vec![], "bad", b"", 0);
    assert_eq!(r, Err(ErrorCode::SessionExpired));
    let r = h.create_as(0x999, vec![], "/t", b"", 5);
    assert_eq!(r, Err(ErrorCode::Unimplemented));
    // /zookeeper is open; /zookeeper/config is read-only.
    assert!(h.create("/zookeeper/mine", b"", 0).is_ok());
    assert_eq!(
        h.create("/zookeeper/config/x", b"", 0),
        Err(ErrorCode::NoAuth)
    );
    // A failed write changes nothing but last_zxid.
    let before = h.sm.snapshot();
    assert_eq!(h.create("/a", b"", 0), Err(ErrorCode::NodeExists));
    assert_eq!(h.sm.last_zxid(), h.zxid);
    assert_eq!(&before[13..], &h.sm.snapshot()[13..]);
}

#[test]
fn delete_set_check_errors() {
    let mut h = H::new();
    for p in ["/", "/zookeeper", "/zookeeper/quota", "/zookeeper/config"] {
        assert_eq!(h.delete(p, -1), Err(ErrorCode::BadArguments), "{p}");
    }
    assert_eq!(h.delete("nope", -1), Err(ErrorCode::BadArguments));
    assert_eq!(h.delete("/nope", -1), Err(ErrorCode::NoNode));
    assert_eq!(h.delete("/nope/x", -1), Err(ErrorCode::NoNode));
    assert_eq!(h.set("/nope", b"", -1), Err(ErrorCode::NoNode));
    assert_eq!(h.set("/bad/", b"", -1), Err(ErrorCode::BadArguments));
    assert_eq!(h.set("/zookeeper/config", b"", -1), Err(ErrorCode::NoAuth));
    h.created("/a", 0);
    let check = |p: &str, v| {
        Request::Check(CheckVersionRequest {
            path: p.into(),
            version: v,
        })
    };
    assert_eq!(h.w(check("/a", 0)), Ok(Response::Empty));
    assert_eq!(h.w(check("/a", 1)), Err(ErrorCode::BadVersion));
    assert_eq!(h.w(check("/b", -1)), Err(ErrorCode::NoNode));
    let a = h.write_as(
        0x999,
        vec![],
        Request::Delete(DeleteRequest {
            path: "/a".into(),
            version: -1,
        }),
    );
    assert_eq!(a.result, Err(ErrorCode::SessionExpired));
    assert_eq!(a.session_id, 0x999);
    // Reads are session-checked too.
    assert_eq!(
        h.r(0x999, Request::Exists(pw("/a", false))),
        Err(ErrorCode::SessionExpired)
    );
}

#[test]
fn delete_container_request_follows_zookeeper() {
    let mut h = H::new();
    h.created("/p", 0);
    h.created("/p/c", 0);
    h.created("/e", 1);
    let dc = |p: &str| Request::DeleteContainer(PathRequest { path: p.into() });
    assert_eq!(h.w(dc("/p")), Err(ErrorCode::NotEmpty));
    // A session's ephemeral answers BadVersion (PrepRequestProcessor deleteContainer).
    assert_eq!(h.w(dc("/e")), Err(ErrorCode::BadVersion));
    assert_eq!(h.w(dc("/zookeeper")), Err(ErrorCode::BadArguments));
    assert_eq!(h.w(dc("/p/c")), Ok(Response::Empty));
}

// ---------------------------------------------------------------- sessions, ephemerals

#[test]
fn close_session_deletes_ephemerals_and_fires() {
    let mut h = H::new();
    h.created("/app", 0);
    h.created("/app/a", 1);
    h.created("/app/b", 3);
    h.create_as(S2, ip(), "/app/other", b"", 1).unwrap();
    h.r(S2, Request::GetChildren(pw("/app", true))).unwrap();
    h.r(S2, Request::Exists(pw("/app/a", true))).unwrap();
    match h.r(S1, Request::GetEphemerals(PathRequest { path: "/".into() })) {
        Ok(Response::Ephemerals(e)) => assert_eq!(e, vec!["/app/a", "/app/b0000000001"]),
        other => panic!("{other:?}"),
    }
    // String prefix, not path prefix (FinalRequestProcessor getEphemerals).
    match h.r(
        S1,
        Request::GetEphemerals(PathRequest {
            path: "/app/b".into(),
        }),
    ) {
        Ok(Response::Ephemerals(e)) => assert_eq!(e, vec!["/app/b0000000001"]),
        other => panic!("{other:?}"),
    }
    let a = h.txn(Txn::CloseSession { session_id: S1 });
    assert_eq!(a.closed_sessions, vec![S1]);
    assert_eq!(a.result, Ok(Response::Empty));
    // Path order; the child watch is one-shot, so only the first delete notifies it.
    assert_eq!(
        a.notifications,
        vec![
            ev(S2, EventType::NodeDeleted, "/app/a"),
            ev(S2, EventType::NodeChildrenChanged, "/app"),
        ]
    );
    assert_eq!(
        h.r(S1, Request::GetChildren(pw("/app", false))),
        Err(ErrorCode::SessionExpired)
    );
    assert_eq!(
        h.r(S2, Request::GetChildren(pw("/app", false))),
        Ok(Response::GetChildren {
            children: vec!["other".into()]
        })
    );
}

#[test]
fn sessions_table() {
    let mut h = H::new();
    assert_eq!(h.sm.sessions().len(), 2);
    assert_eq!(h.sm.session(S1).unwrap().timeout_ms, 30_000);
    let a = h.write_as(S2, vec![], Request::CloseSession);
    assert_eq!(a.closed_sessions, vec![S2]);
    assert!(h.sm.session(S2).is_none());
    let a = h.txn(Txn::CloseSession { session_id: S2 });
    assert!(a.closed_sessions.is_empty());
}

// ---------------------------------------------------------------- containers and TTL

#[test]
fn containers_expire_once_used_and_empty() {
    let mut h = H::new();
    h.w(create_req(
        OpCode::CreateContainer,
        "/c",
        b"",
        Acl::open_unsafe(),
        4,
        0,
    ))
    .unwrap();
    assert!(
        h.sm.expired_paths(i64::MAX, 10, usize::MAX).is_empty(),
        "never had a child"
    );
    h.created("/c/x", 0);
    assert!(
        h.sm.expired_paths(i64::MAX, 10, usize::MAX).is_empty(),
        "not empty"
    );
    h.delete("/c/x", -1).unwrap();
    assert_eq!(h.sm.expired_paths(0, 10, usize::MAX), vec!["/c"]);
    assert!(h.sm.expired_paths(0, 0, usize::MAX).is_empty());
    // A byte bound below the first path still lets that one path go (one entry must be
    // able to remove it); a second would pass it.
    h.w(create_req(
        OpCode::CreateContainer,
        "/cc",
        b"",
        Acl::open_unsafe(),
        4,
        0,
    ))
    .unwrap();
    h.created("/cc/x", 0);
    h.delete("/cc/x", -1).unwrap();
    assert_eq!(h.sm.expired_paths(0, 10, usize::MAX), vec!["/c", "/cc"]);
    assert_eq!(h.sm.expired_paths(0, 10, 1), vec!["/c"]);
    assert_eq!(h.sm.expired_paths(0, 10, 4), vec!["/c"]);
    assert_eq!(h.sm.expired_paths(0, 10, 5), vec!["/c", "/cc"]);
    h.delete("/cc", -1).unwrap();
    h.r(S2, Request::Exists(pw("/c", true))).unwrap();
    // A child arrives before the cleanup applies: the entry leaves the container.
    h.created("/c/y", 0);
    let a = h.txn(Txn::DeleteExpired {
        paths: vec!["/c".into()],
    });
    assert_eq!(a.session_id, 0);
    assert!(a.notifications.is_empty());
    h.delete("/c/y", -1).unwrap();
    let a = h.txn(Txn::DeleteExpired {
        paths: vec!["/c".into(), "/c".into(), "/nope".into()],
    });
    assert_eq!(a.notifications, vec![ev(S2, EventType::NodeDeleted, "/c")]);
    assert!(h.sm.containers.is_empty());
    // A plain create with the container flag makes a persistent node (CreateTxn).
    h.create("/notc", b"", 4).unwrap();
    assert!(h.sm.containers.is_empty());
}

#[test]
fn ttl_nodes() {
    let mut h = H::new();
    let ttl =
        |p: &str, flags, t| create_req(OpCode::CreateTtl, p, b"", Acl::open_unsafe(), flags, t);
    assert_eq!(h.w(ttl("/t", 5, 100)), Err(ErrorCode::Unimplemented));
    let mut h = H::with(StateConfig {
        ttl_enabled: true,
        superuser_digest: None,
    });
    assert_eq!(h.w(ttl("/t", 5, 0)), Err(ErrorCode::BadArguments));
    assert_eq!(
        h.w(ttl("/t", 5, tree::TTL_MAX_MS + 1)),
        Err(ErrorCode::BadArguments)
    );
    assert_eq!(h.w(ttl("/t", 0, 100)), Err(ErrorCode::BadArguments));
    assert_eq!(h.w(ttl("/t", 0, -5)), Err(ErrorCode::BadArguments));
    assert_eq!(
        h.create("/t", b"", 5),
        Err(ErrorCode::BadArguments),
        "TTL mode without TTL"
    );
    let Ok(Response::Create2 { path, .. }) = h.w(ttl("/s", 6, 2500)) else {
        panic!()
    };
    assert_eq!(path, "/s0000000000");
    h.w(ttl("/t", 5, 10_000)).unwrap();
    let made = h.time();
    let t_expired = |h: &H, now: i64| {
        h.sm.expired_paths(now, 10, usize::MAX)
            .contains(&"/t".to_owned())
    };
    assert!(!t_expired(&h, made + 10_000), "needs elapsed > ttl");
    assert!(t_expired(&h, made + 10_001));
    assert_eq!(
        h.sm.expired_paths(made + 10_001, 10, usize::MAX),
        vec!["/s0000000000", "/t"]
    );
    assert_eq!(h.sm.expired_paths(made + 10_001, 1, usize::MAX).len(), 1);
    // setData moves mtime and so the deadline.
    h.set("/t", b"x", -1).unwrap();
    assert!(!t_expired(&h, made + 10_001));
    h.created("/t/child", 0);
    assert!(!t_expired(&h, i64::MAX));
    h.delete("/t/child", -1).unwrap();
    // DeleteExpired re-checks at the entry's own time: too early does nothing.
    h.txn(Txn::DeleteExpired {
        paths: vec!["/t".into()],
    });
    assert!(h.sm.ttls.contains("/t"));
    h.zxid += 100;
    h.txn(Txn::DeleteExpired {
        paths: vec!["/t".into()],
    });
    assert!(!h.sm.ttls.contains("/t"));
}

// ---------------------------------------------------------------- multi

#[test]
fn multi_success_results_and_events() {
    let mut h = H::new();
    h.created("/m", 0);
    h.r(S2, Request::GetChildren(pw("/m", true))).unwrap();
    h.r(S2, Request::Exists(pw("/m/b", true))).unwrap_err();
    let a = h.write_as(
        S1,
        ip(),
        Request::Multi(vec![
            mop_create("/m/a", 0),
            mop_create("/m/s", 2),
            mop_create("/m/s", 2),
            mop_set("/m/a", b"1", 0),
            mop_set("/m/a", b"2", 1),
            mop_check("/m/a", 2),
            mop_create("/m/b", 0),
            mop_delete("/m/a", 2),
            MultiOp::Create {
                op: OpCode::Create2,
                req: CreateRequest {
                    path: "/m/c".into(),
                    data: vec![],
                    acl: Acl::open_unsafe(),
                    flags: 0,
                },
                ttl: 0,
            },
        ]),
    );
    let z = h.zxid;
    let Ok(Response::Multi(rs)) = a.result else {
        panic!("{a:?}")
    };
    assert_eq!(
        rs[0],
        MultiResult::Create {
            path: "/m/a".into()
        }
    );
    assert_eq!(
        rs[1],
        MultiResult::Create {
            path: "/m/s0000000001".into()
        }
    );
    assert_eq!(
        rs[2],
        MultiResult::Create {
            path: "/m/s0000000002".into()
        }
    );
    let MultiResult::SetData { stat } = &rs[4] else {
        panic!()
    };
    assert_eq!((stat.version, stat.mzxid), (2, z));
    assert_eq!(rs[5], MultiResult::Check);
    assert_eq!(rs[7], MultiResult::Delete);
    let MultiResult::Create2 { stat, .. } = &rs[8] else {
        panic!()
    };
    assert_eq!(stat.czxid, z);
    // One zxid for all; parent cversion counted every create and delete.
    let m = h.stat("/m");
    assert_eq!((m.pzxid, m.cversion, m.num_children), (z, 6, 4));
    assert_eq!(
        a.notifications,
        vec![
            ev(S2, EventType::NodeChildrenChanged, "/m"),
            ev(S2, EventType::NodeCreated, "/m/b"),
        ]
    );
}

#[test]
fn multi_failure_is_all_or_nothing() {
    let mut h = H::new();
    h.created("/m", 0);
    h.r(S2, Request::GetChildren(pw("/m", true))).unwrap();
    let before = h.sm.snapshot();
    let a = h.w(Request::Multi(vec![
        mop_create("/m/a", 0),
        mop_create("/m/s", 2),
        mop_delete("/m/zzz", -1),
        mop_create("/m/b", 0),
    ]));
    assert_eq!(
        a,
        Ok(Response::Multi(vec![
            MultiResult::Error(ErrorCode::Ok),
            MultiResult::Error(ErrorCode::Ok),
            MultiResult::Error(ErrorCode::NoNode),
            MultiResult::Error(ErrorCode::RuntimeInconsistency),
        ]))
    );
    assert_eq!(
        &before[13..],
        &h.sm.snapshot()[13..],
        "only last_zxid moved"
    );
    // The watch was not consumed: a later real change fires it.
    let a = h.create("/m/a", b"", 0);
    assert!(a.is_ok());
    // Ops see earlier ops of the same multi: creating twice fails on the second.
    let r = h.w(Request::Multi(vec![
        mop_create("/m/x", 0),
        mop_create("/m/x", 0),
    ]));
    assert_eq!(
        r,
        Ok(Response::Multi(vec![
            MultiResult::Error(ErrorCode::Ok),
            MultiResult::Error(ErrorCode::NodeExists),
        ]))
    );
    // Deleting a node a previous op gave a child fails NotEmpty.
    let r = h.w(Request::Multi(vec![
        mop_create("/m/a/k", 0),
        mop_delete("/m/a", -1),
    ]));
    let Ok(Response::Multi(rs)) = r else { panic!() };
    assert_eq!(rs[1], MultiResult::Error(ErrorCode::NotEmpty));
    // Empty multi succeeds.
    assert_eq!(h.w(Request::Multi(vec![])), Ok(Response::Multi(vec![])));
    // Unknown session: per-op, like any other prep failure.
    let a = h.write_as(0x999, vec![], Request::Multi(vec![mop_check("/m", -1)]));
    assert_eq!(
        a.result,
        Ok(Response::Multi(vec![MultiResult::Error(
            ErrorCode::SessionExpired
        )]))
    );
}

#[test]
fn multi_read_per_op_results() {
    let mut h = H::new();
    h.create("/r", b"v", 0).unwrap();
    h.created("/r/k", 0);
    let r = h.r(
        S1,
        Request::MultiRead(vec![
            ReadOp::GetData(pw("/r", false)),
            ReadOp::GetChildren(pw("/r", false)),
            ReadOp::GetData(pw("/nope", false)),
        ]),
    );
    let Ok(Response::Multi(rs)) = r else {
        panic!("{r:?}")
    };
    let MultiResult::GetData { data, stat } = &rs[0] else {
        panic!()
    };
    assert_eq!((data.as_slice(), stat.num_children), (&b"v"[..], 1));
    assert_eq!(
        rs[1],
        MultiResult::GetChildren {
            children: vec!["k".into()]
        }
    );
    assert_eq!(rs[2], MultiResult::Error(ErrorCode::NoNode));
}

// ---------------------------------------------------------------- watches

#[test]
fn one_shot_data_exist_child_watches() {
    let mut h = H::new();
    h.create("/w", b"", 0).unwrap();
    h.r(S2, Request::GetData(pw("/w", true))).unwrap();
    let a = h.txn(Txn::Write {
        session_id: S1,
        auth: ip(),
        request: Request::SetData(SetDataRequest {
            path: "/w".into(),
            data: vec![1],
            version: -1,
        }),
    });
    assert_eq!(
        a.notifications,
        vec![ev(S2, EventType::NodeDataChanged, "/w")]
    );
    let a = h.txn(Txn::Write {
        session_id: S1,
        auth: ip(),
        request: Request::SetData(SetDataRequest {
            path: "/w".into(),
            data: vec![2],
            version: -1,
        }),
    });
    assert!(a.notifications.is_empty(), "one-shot");

    // exists on a missing node: NoNode, and the watch is set.
    assert_eq!(
        h.r(S2, Request::Exists(pw("/w/x", true))),
        Err(ErrorCode::NoNode)
    );
    h.r(S2, Request::GetChildren(pw("/w", true))).unwrap();
    let a = h.write_as(
        S1,
        ip(),
        create_req(OpCode::Create, "/w/x", b"", Acl::open_unsafe(), 0, 0),
    );
    assert_eq!(
        a.notifications,
        vec![
            ev(S2, EventType::NodeCreated, "/w/x"),
            ev(S2, EventType::NodeChildrenChanged, "/w"),
        ]
    );
    // Delete: data watch and child watch on the node give one NodeDeleted per
    // session; the parent's child watchers get NodeChildrenChanged.
    h.r(S2, Request::GetData(pw("/w/x", true))).unwrap();
    h.r(S2, Request::GetChildren(pw("/w/x", true))).unwrap();
    h.r(S1, Request::GetChildren(pw("/w/x", true))).unwrap();
    h.r(S1, Request::GetChildren(pw("/w", true))).unwrap();
    let a = h.delete("/w/x", -1).unwrap();
    assert_eq!(a, Response::Empty);
    let a_n = {
        h.created("/w/y", 0);
        h.r(S2, Request::GetData(pw("/w/y", true))).unwrap();
        h.r(S2, Request::GetChildren(pw("/w/y", true))).unwrap();
        h.r(S1, Request::GetChildren(pw("/w/y", true))).unwrap();
        h.r(S1, Request::GetChildren(pw("/w", true))).unwrap();
        h.write_as(
            S1,
            ip(),
            Request::Delete(DeleteRequest {
                path: "/w/y".into(),
                version: -1,
            }),
        )
        .notifications
    };
    assert_eq!(
        a_n,
        vec![
            ev(S2, EventType::NodeDeleted, "/w/y"),
            ev(S1, EventType::NodeDeleted, "/w/y"),
            ev(S1, EventType::NodeChildrenChanged, "/w"),
        ]
    );
    assert_eq!(h.sm.stats().watch_count, 0);
}

#[test]
fn persistent_and_recursive_watches() {
    let mut h = H::new();
    h.created("/p", 0);
    let add = |p: &str, mode: AddWatchMode| {
        Request::AddWatch(AddWatchRequest {
            path: p.into(),
            mode: mode.code(),
        })
    };
    assert_eq!(
        h.r(S2, add("/p", AddWatchMode::Persistent)),
        Ok(Response::AddWatch)
    );
    assert_eq!(
        h.r(S1, add("/", AddWatchMode::PersistentRecursive)),
        Ok(Response::AddWatch)
    );
    let a = h.write_as(
        S1,
        ip(),
        create_req(OpCode::Create, "/p/a", b"", Acl::open_unsafe(), 0, 0),
    );
    // Recursive: NodeCreated for the descendant, never NodeChildrenChanged.
    assert_eq!(
        a.notifications,
        vec![
            ev(S1, EventType::NodeCreated, "/p/a"),
            ev(S2, EventType::NodeChildrenChanged, "/p"),
        ]
    );
    let a = h.write_as(
        S1,
        ip(),
        Request::SetData(SetDataRequest {
            path: "/p".into(),
            data: vec![],
            version: -1,
        }),
    );
    assert_eq!(
        a.notifications,
        vec![
            ev(S1, EventType::NodeDataChanged, "/p"),
            ev(S2, EventType::NodeDataChanged, "/p")
        ]
    );
    // Still there (persistent).
    let a = h.write_as(
        S1,
        ip(),
        Request::Delete(DeleteRequest {
            path: "/p/a".into(),
            version: -1,
        }),
    );
    assert_eq!(
        a.notifications,
        vec![
            ev(S1, EventType::NodeDeleted, "/p/a"),
            ev(S2, EventType::NodeChildrenChanged, "/p"),
        ]
    );
    // removeWatches / checkWatches.
    let wt = |p: &str, t: WatcherType| WatchTypeRequest {
        path: p.into(),
        watcher_type: t.code(),
    };
    assert_eq!(
        h.r(S2, Request::CheckWatches(wt("/p", WatcherType::Data))),
        Ok(Response::Empty)
    );
    assert_eq!(
        h.r(S2, Request::RemoveWatches(wt("/p", WatcherType::Data))),
        Ok(Response::Empty)
    );
    assert_eq!(
        h.r(S2, Request::RemoveWatches(wt("/p", WatcherType::Data))),
        Err(ErrorCode::NoWatcher)
    );
    assert_eq!(
        h.r(S2, Request::CheckWatches(wt("/p", WatcherType::Children))),
        Ok(Response::Empty)
    );
    assert_eq!(
        h.r(S2, Request::RemoveWatches(wt("/p", WatcherType::Any))),
        Ok(Response::Empty)
    );
    assert_eq!(
        h.r(S2, Request::CheckWatches(wt("/p", WatcherType::Any))),
        Err(ErrorCode::NoWatcher)
    );
    assert_eq!(
        h.r(S2, Request::RemoveWatches(wt("/p", WatcherType::Any))),
        Err(ErrorCode::NoWatcher)
    );
    assert_eq!(
        h.r(
            S2,
            Request::RemoveWatches(WatchTypeRequest {
                path: "/p".into(),
                watcher_type: 9
            })
        ),
        Err(ErrorCode::MarshallingError)
    );
    assert!(h.r(S2, add("/p", AddWatchMode::Persistent)).is_ok());
    assert_eq!(
        h.r(
            S2,
            Request::AddWatch(AddWatchRequest {
                path: "/p".into(),
                mode: 7
            })
        ),
        Err(ErrorCode::MarshallingError)
    );
    // WatchManager 3.8 keeps one mode per (session, path): a one-shot watch set later
    // replaces the persistent one.
    h.r(S2, Request::GetData(pw("/p", true))).unwrap();
    let a = h.write_as(
        S1,
        ip(),
        Request::SetData(SetDataRequest {
            path: "/p".into(),
            data: vec![],
            version: -1,
        }),
    );
    assert!(a
        .notifications
        .contains(&ev(S2, EventType::NodeDataChanged, "/p")));
    let a = h.write_as(
        S1,
        ip(),
        Request::SetData(SetDataRequest {
            path: "/p".into(),
            data: vec![],
            version: -1,
        }),
    );
    assert!(!a.notifications.iter().any(|n| n.session_id == S2));
    // Recursive watch on the deleted node's ancestor and on the node: one event each.
    h.remove_all_watches();
    h.r(S2, add("/p", AddWatchMode::PersistentRecursive))
        .unwrap();
    h.r(S2, Request::GetData(pw("/p", true)))
        .unwrap_or_else(|e| panic!("{e}"));
    h.r(S2, add("/p", AddWatchMode::PersistentRecursive))
        .unwrap();
    h.created("/p/q", 0);
    h.r(S2, Request::GetData(pw("/p/q", true))).unwrap();
    h.r(S2, Request::GetChildren(pw("/p/q", true))).unwrap();
    let a = h.write_as(
        S1,
        ip(),
        Request::Delete(DeleteRequest {
            path: "/p/q".into(),
            version: -1,
        }),
    );
    assert_eq!(
        a.notifications,
        vec![ev(S2, EventType::NodeDeleted, "/p/q")]
    );
}

impl H {
    fn remove_all_watches(&mut self) {
        self.sm.remove_session_watches(S1);
        self.sm.remove_session_watches(S2);
        assert_eq!(self.sm.stats().watch_count, 0);
    }
}

#[test]
fn events_are_filtered_by_read_permission() {
    let mut h = H::new();
    let alice = vec![id("ip", "127.0.0.1"), id("digest", "alice:h")];
    h.write_as(
        S1,
        alice.clone(),
        create_req(
            OpCode::Create,
            "/secret",
            b"",
            vec![Acl::new(perms::ALL, "digest", "alice:h")],
            0,
            0,
        ),
    )
    .result
    .unwrap();
    // S2 (no digest) may not read it, so may not watch it via getData, but can set an
    // exist-style watch through exists on a missing child or addWatch.
    assert_eq!(
        h.r(S2, Request::GetData(pw("/secret", true))),
        Err(ErrorCode::NoAuth)
    );
    // exists checks no permission and arms the watch; its events are filtered below.
    assert!(matches!(
        h.r(S2, Request::Exists(pw("/secret", true))),
        Ok(Response::Stat(_))
    ));
    h.r(
        S2,
        Request::AddWatch(AddWatchRequest {
            path: "/secret".into(),
            mode: 0,
        }),
    )
    .unwrap();
    let a = h.write_as(
        S1,
        alice.clone(),
        Request::SetData(SetDataRequest {
            path: "/secret".into(),
            data: vec![],
            version: -1,
        }),
    );
    assert!(a.notifications.is_empty(), "{:?}", a.notifications);
    // Once S2's connection authenticates, events flow.
    h.sm.set_session_auth(S2, &alice);
    let a = h.write_as(
        S1,
        alice,
        Request::SetData(SetDataRequest {
            path: "/secret".into(),
            data: vec![],
            version: -1,
        }),
    );
    assert_eq!(
        a.notifications,
        vec![ev(S2, EventType::NodeDataChanged, "/secret")]
    );
}

#[test]
fn set_watches_with_relative_zxid() {
    let mut h = H::new();
    h.created("/d", 0);
    h.created("/c", 0);
    let seen = h.zxid;
    h.set("/d", b"x", -1).unwrap();
    h.created("/c/k", 0);
    h.created("/now", 0);
    h.created("/quiet", 0);
    let w = SetWatches2 {
        relative_zxid: seen,
        data_watches: vec!["/d".into(), "/gone".into(), "/quiet".into()],
        exist_watches: vec!["/now".into(), "/later".into()],
        child_watches: vec!["/c".into(), "/gone2".into(), "/quiet".into()],
        persistent_watches: vec!["/pp".into()],
        persistent_recursive_watches: vec!["/rr".into()],
    };
    let n = h.sm.set_watches(S2, &w);
    assert_eq!(
        n,
        vec![
            ev(S2, EventType::NodeDataChanged, "/d"),
            ev(S2, EventType::NodeDeleted, "/gone"),
            // Created after `seen`: its mzxid and pzxid are newer.
            ev(S2, EventType::NodeDataChanged, "/quiet"),
            ev(S2, EventType::NodeCreated, "/now"),
            ev(S2, EventType::NodeChildrenChanged, "/c"),
            ev(S2, EventType::NodeDeleted, "/gone2"),
            ev(S2, EventType::NodeChildrenChanged, "/quiet"),
        ]
    );
    assert!(h.sm.watches.data.mode("/later", S2).is_some());
    assert!(h.sm.watches.data.mode("/pp", S2).is_some());
    assert!(h.sm.watches.child.mode("/rr", S2).is_some());
    assert!(h.sm.set_watches(0x999, &w).is_empty());
}

#[test]
fn set_watches_registers_unchanged_nodes() {
    let mut h = H::new();
    h.created("/q", 0);
    let seen = h.zxid;
    let w = SetWatches2 {
        relative_zxid: seen,
        data_watches: vec!["/q".into()],
        child_watches: vec!["/q".into()],
        ..Default::default()
    };
    assert!(h.sm.set_watches(S2, &w).is_empty());
    let a = h.write_as(
        S1,
        ip(),
        create_req(OpCode::Create, "/q/z", b"", Acl::open_unsafe(), 0, 0),
    );
    assert_eq!(
        a.notifications,
        vec![ev(S2, EventType::NodeChildrenChanged, "/q")]
    );
}

/// The core refuses a read or setWatches that would take a session past
/// `watches_per_session_max` before running it, so the predictions must match what
/// `read` and `set_watches` then register, exactly.
#[test]
fn watch_additions_are_predicted_exactly() {
    let mut h = H::new();
    h.created("/a", 0);
    h.created("/a/b", 0);
    let secret = vec![Acl {
        perms: perms::ALL,
        scheme: "digest".into(),
        id: "someone:x".into(),
    }];
    h.w(create_req(OpCode::Create, "/secret", b"", secret, 0, 0))
        .unwrap();
    let add = |p: &str, mode: AddWatchMode| {
        Request::AddWatch(AddWatchRequest {
            path: p.into(),
            mode: mode.code(),
        })
    };
    let reads = vec![
        (Request::GetData(pw("/a", false)), 0),
        (Request::GetData(pw("/a", true)), 1),
        (Request::GetData(pw("/a", true)), 0),
        (Request::Exists(pw("/a", true)), 0),
        (Request::Exists(pw("/missing", true)), 1),
        (Request::Exists(pw("/bad\0", true)), 0),
        (Request::GetData(pw("/missing2", true)), 0),
        (Request::GetData(pw("/secret", true)), 0),
        (Request::Exists(pw("/secret", true)), 1),
        (Request::GetChildren(pw("/a", true)), 1),
        (Request::GetChildren2(pw("/a", true)), 0),
        (
            Request::MultiRead(vec![
                ReadOp::GetData(pw("/a/b", true)),
                ReadOp::GetData(pw("/a/b", true)),
                ReadOp::GetChildren(pw("/a/b", true)),
                ReadOp::GetChildren(pw("/nope", true)),
            ]),
            2,
        ),
        (add("/a", AddWatchMode::Persistent), 0),
        (add("/p", AddWatchMode::PersistentRecursive), 2),
        (
            Request::AddWatch(AddWatchRequest {
                path: "/q".into(),
                mode: 99,
            }),
            0,
        ),
        (Request::GetData(pw("/p", true)), 0),
    ];
    for (req, expected) in reads {
        let before = h.sm.session_watch_count(S2);
        let predicted = h.sm.watches_added_by_read(S2, &ip(), &req);
        let _ = h.r(S2, req.clone());
        let added = h.sm.session_watch_count(S2) - before;
        assert_eq!((predicted, added), (expected, expected), "{req:?}");
    }
    assert_eq!(h.sm.session_watch_count(S2), 8);
    assert_eq!(h.sm.session_watch_count(S1), 0);
    assert_eq!(
        h.sm.watches_added_by_read(0x999, &ip(), &Request::Exists(pw("/z", true))),
        0
    );

    // setWatches: watches that fire at once are not registered, nor counted.
    let seen = h.zxid;
    h.set("/a", b"changed", -1).unwrap();
    let w = SetWatches2 {
        relative_zxid: seen,
        data_watches: vec!["/a".into(), "/a/b".into(), "/gone".into(), "/x".into()],
        exist_watches: vec!["/later".into(), "/a".into()],
        child_watches: vec!["/a".into(), "/a/b".into()],
        persistent_watches: vec!["/pp".into()],
        persistent_recursive_watches: vec!["/rr".into(), "/a".into()],
    };
    for s in [S1, S2] {
        let before = h.sm.session_watch_count(s);
        let predicted = h.sm.watches_added_by_set_watches(s, &w);
        h.sm.set_watches(s, &w);
        h.sm.check_invariants();
        let added = h.sm.session_watch_count(s) - before;
        assert_eq!(predicted, added, "session {s:x}");
    }
    assert_eq!(h.sm.watches_added_by_set_watches(0x999, &w), 0);
}

// ---------------------------------------------------------------- ACLs

#[test]
fn acl_schemes_and_superuser() {
    let super_id = auth::digest_id("super:test");
    let mut h = H::with(StateConfig {
        ttl_enabled: false,
        superuser_digest: Some(super_id.clone()),
    });
    let bob_id = auth::digest_id("bob:pw");
    let bob = vec![id("ip", "10.1.1.1"), id("digest", &bob_id)];
    // "auth" expands to bob's digest identity only.
    let r = h.write_as(
        S1,
        bob.clone(),
        create_req(OpCode::Create, "/b", b"", Acl::creator_all(), 0, 0),
    );
    assert!(r.result.is_ok());
    match h.sm.read(
        S1,
        &bob,
        &Request::GetAcl(PathRequest { path: "/b".into() }),
    ) {
        Ok(Response::GetAcl { acl, stat }) => {
            assert_eq!(acl, vec![Acl::new(perms::ALL, "digest", &bob_id)]);
            assert_eq!(stat.aversion, 0);
        }
        other => panic!("{other:?}"),
    }
    let r = h.write_as(
        S1,
        ip(),
        create_req(OpCode::Create, "/x", b"", Acl::creator_all(), 0, 0),
    );
    assert_eq!(r.result, Err(ErrorCode::InvalidAcl));
    // Others: NoAuth everywhere it is checked.
    let anon = ip();
    assert_eq!(
        h.sm.read(S2, &anon, &Request::GetData(pw("/b", false))),
        Err(ErrorCode::NoAuth)
    );
    assert_eq!(
        h.sm.read(S2, &anon, &Request::GetChildren(pw("/b", false))),
        Err(ErrorCode::NoAuth)
    );
    assert_eq!(
        h.sm.read(
            S2,
            &anon,
            &Request::GetAcl(PathRequest { path: "/b".into() })
        ),
        Err(ErrorCode::NoAuth)
    );
    assert_eq!(
        h.sm.read(
            S2,
            &anon,
            &Request::GetAllChildrenNumber(PathRequest { path: "/b".into() })
        ),
        Err(ErrorCode::NoAuth)
    );
    assert_eq!(
        h.create_as(S2, anon.clone(), "/b/c", b"", 0),
        Err(ErrorCode::NoAuth)
    );
    // Superuser by configured digest, and by ZooKeeper's ("super", "") identity.
    let sup = vec![id("digest", &super_id)];
    assert!(h
        .sm
        .read(S2, &sup, &Request::GetData(pw("/b", false)))
        .is_ok());
    assert!(h
        .sm
        .read(S2, &[id("super", "")], &Request::GetData(pw("/b", false)))
        .is_ok());
    assert!(h.create_as(S2, sup.clone(), "/b/c", b"", 0).is_ok());

    // ip scheme with a prefix; READ only: getACL shows redacted digests.
    let acl = vec![
        Acl::new(perms::READ, "ip", "10.0.0.0/8"),
        Acl::new(perms::ALL, "digest", &bob_id),
    ];
    h.write_as(
        S1,
        bob.clone(),
        create_req(OpCode::Create, "/i", b"", acl, 0, 0),
    )
    .result
    .unwrap();
    let net = vec![id("ip", "10.200.0.1")];
    assert!(h
        .sm
        .read(S2, &net, &Request::GetData(pw("/i", false)))
        .is_ok());
    match h.sm.read(
        S2,
        &net,
        &Request::GetAcl(PathRequest { path: "/i".into() }),
    ) {
        Ok(Response::GetAcl { acl, .. }) => assert_eq!(acl[1].id, "bob:x"),
        other => panic!("{other:?}"),
    }
    let setacl = |acl: Vec<Acl>, version| {
        Request::SetAcl(SetAclRequest {
            path: "/i".into(),
            acl,
            version,
        })
    };
    assert_eq!(
        h.write_as(S2, net.clone(), setacl(Acl::open_unsafe(), -1))
            .result,
        Err(ErrorCode::NoAuth)
    );
    assert_eq!(
        h.write_as(S1, bob.clone(), setacl(vec![], -1)).result,
        Err(ErrorCode::InvalidAcl)
    );
    assert_eq!(
        h.write_as(S1, bob.clone(), setacl(Acl::open_unsafe(), 3))
            .result,
        Err(ErrorCode::BadVersion)
    );
    let r = h
        .write_as(S1, bob.clone(), setacl(Acl::open_unsafe(), 0))
        .result;
    let Ok(Response::Stat(s)) = r else {
        panic!("{r:?}")
    };
    assert_eq!((s.aversion, s.version), (1, 0));
    // Identical ACL lists are shared.
    let lists = h.sm.acls.len();
    h.created("/shared1", 0);
    h.created("/shared2", 0);
    assert_eq!(h.sm.acls.len(), lists);
    // exists checks no permission: ZooKeeper 3.8.0's FinalRequestProcessor only
    // calls statNode (checked in the bytecode of Debian's zookeeper-3.8.0.jar).
    assert!(matches!(
        h.sm.read(S2, &anon, &Request::Exists(pw("/b", false))),
        Ok(Response::Stat(_))
    ));
    // setData needs WRITE, delete needs DELETE on the parent.
    h.write_as(
        S1,
        bob.clone(),
        create_req(
            OpCode::Create,
            "/rw",
            b"",
            vec![Acl::new(perms::READ | perms::DELETE, "world", "anyone")],
            0,
            0,
        ),
    )
    .result
    .unwrap();
    assert_eq!(h.set("/rw", b"", -1), Err(ErrorCode::NoAuth));
    h.created("/rw2", 0);
    assert!(
        h.delete("/rw", -1).is_ok(),
        "DELETE is checked on the parent"
    );
}

#[test]
fn whoami_sync_and_unimplemented() {
    let mut h = H::new();
    let auth = vec![id("ip", "127.0.0.1"), id("digest", "bob:hash")];
    match h.sm.read(S1, &auth, &Request::WhoAmI) {
        Ok(Response::WhoAmI(infos)) => {
            assert_eq!(
                infos[0],
                ClientInfo {
                    auth_scheme: "ip".into(),
                    user: "127.0.0.1".into()
                }
            );
            assert_eq!(
                infos[1],
                ClientInfo {
                    auth_scheme: "digest".into(),
                    user: "bob".into()
                }
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        h.r(S1, Request::Sync(PathRequest { path: "/x".into() })),
        Ok(Response::Sync { path: "/x".into() })
    );
    assert_eq!(h.r(S1, Request::Ping), Err(ErrorCode::Unimplemented));
    assert_eq!(
        h.w(Request::GetData(pw("/", false))),
        Err(ErrorCode::Unimplemented)
    );
}

// ---------------------------------------------------------------- encodings

fn sample_entries() -> Vec<Entry> {
    let txns = vec![
        Txn::CreateSession {
            session_id: 7,
            passwd: vec![9; 16],
            timeout_ms: 4000,
        },
        Txn::CloseSession { session_id: 7 },
        Txn::DeleteExpired {
            paths: vec!["/a".into(), "/b".into()],
        },
        Txn::Write {
            session_id: 7,
            auth: vec![id("ip", "1.2.3.4"), id("digest", "u:h")],
            request: create_req(OpCode::CreateTtl, "/t", b"x", Acl::open_unsafe(), 5, 99),
        },
        Txn::Write {
            session_id: 7,
            auth: vec![],
            request: Request::Multi(vec![
                mop_create("/a", 0),
                mop_delete("/a", 3),
                mop_set("/b", b"q", 1),
                mop_check("/c", 2),
            ]),
        },
        Txn::Write {
            session_id: 7,
            auth: vec![],
            request: Request::CloseSession,
        },
        Txn::Write {
            session_id: 7,
            auth: vec![],
            request: Request::SetAcl(SetAclRequest {
                path: "/x".into(),
                acl: Acl::read_unsafe(),
                version: 4,
            }),
        },
        Txn::Write {
            session_id: 7,
            auth: vec![],
            request: Request::DeleteContainer(PathRequest { path: "/c".into() }),
        },
    ];
    txns.into_iter()
        .enumerate()
        .map(|(i, txn)| Entry {
            zxid: i as i64 + 1,
            time_ms: 1_700_000_000_000,
            txn,
        })
        .collect()
}

#[test]
fn entries_round_trip() {
    for e in sample_entries() {
        let mut b = BytesMut::new();
        e.encode(&mut b);
        assert_eq!(Entry::decode(&b), Ok(e.clone()));
        // Every truncation fails cleanly; so does a trailing byte.
        for n in 0..b.len() {
            assert!(Entry::decode(&b[..n]).is_err(), "{e:?} cut at {n}");
        }
        let mut longer = b.to_vec();
        longer.push(0);
        assert!(Entry::decode(&longer).is_err());
    }
    assert!(Entry::decode(&[2, 1]).is_err());
}

#[test]
fn response_bodies_are_zookeepers_records() {
    let enc = |r: Response| {
        let mut b = BytesMut::new();
        r.encode(&mut b);
        b.to_vec()
    };
    assert!(enc(Response::Empty).is_empty());
    assert_eq!(enc(Response::AddWatch), vec![0, 0, 0, 0]);
    assert_eq!(
        enc(Response::Create { path: "/a".into() }),
        CreateResponse { path: "/a".into() }.to_bytes().to_vec()
    );
    let stat = Stat {
        czxid: 1,
        mzxid: 2,
        num_children: 3,
        ..Default::default()
    };
    assert_eq!(
        enc(Response::Create2 {
            path: "/a".into(),
            stat: stat.clone()
        }),
        Create2Response {
            path: "/a".into(),
            stat: stat.clone()
        }
        .to_bytes()
        .to_vec()
    );
    assert_eq!(enc(Response::Stat(stat.clone())).len(), STAT_BYTES);
    assert_eq!(
        enc(Response::GetData {
            data: b"xy".to_vec(),
            stat: stat.clone()
        }),
        GetDataResponse {
            data: b"xy".to_vec(),
            stat: stat.clone()
        }
        .to_bytes()
        .to_vec()
    );
    assert_eq!(
        enc(Response::GetChildren2 {
            children: vec!["a".into()],
            stat: stat.clone()
        }),
        GetChildren2Response {
            children: vec!["a".into()],
            stat: stat.clone()
        }
        .to_bytes()
        .to_vec()
    );
    assert_eq!(
        enc(Response::GetAcl {
            acl: Acl::open_unsafe(),
            stat: stat.clone()
        }),
        GetAclResponse {
            acl: Acl::open_unsafe(),
            stat
        }
        .to_bytes()
        .to_vec()
    );
    assert_eq!(enc(Response::AllChildrenNumber(7)), vec![0, 0, 0, 7]);
    assert_eq!(
        enc(Response::Ephemerals(vec!["/e".into()])),
        GetEphemeralsResponse {
            ephemerals: vec!["/e".into()]
        }
        .to_bytes()
        .to_vec()
    );
    assert_eq!(
        enc(Response::Sync { path: "/s".into() }),
        SyncResponse { path: "/s".into() }.to_bytes().to_vec()
    );
    let infos = vec![ClientInfo {
        auth_scheme: "ip".into(),
        user: "1".into(),
    }];
    assert_eq!(
        enc(Response::WhoAmI(infos.clone())),
        WhoAmIResponse { client_info: infos }.to_bytes().to_vec()
    );
    let rs = vec![
        MultiResult::Error(ErrorCode::Ok),
        MultiResult::Error(ErrorCode::NoNode),
    ];
    let body = enc(Response::Multi(rs.clone()));
    assert_eq!(
        MultiResult::decode_all(&mut Reader::new(&body)).unwrap(),
        rs
    );
}

// ---------------------------------------------------------------- snapshots

fn busy_state() -> H {
    let mut h = H::with(StateConfig {
        ttl_enabled: true,
        superuser_digest: None,
    });
    h.create("/a", b"data", 0).unwrap();
    h.created("/a/s", 2);
    h.created("/a/e", 1);
    h.create_as(S2, ip(), "/a/e2", b"", 3).unwrap();
    h.w(create_req(
        OpCode::CreateContainer,
        "/c",
        b"",
        Acl::open_unsafe(),
        4,
        0,
    ))
    .unwrap();
    h.w(create_req(
        OpCode::CreateTtl,
        "/t",
        b"",
        Acl::open_unsafe(),
        5,
        500,
    ))
    .unwrap();
    h.w(create_req(
        OpCode::Create,
        "/r",
        b"",
        Acl::read_unsafe(),
        0,
        0,
    ))
    .unwrap();
    h.delete("/a/s0000000000", -1).unwrap();
    h.set("/a", b"more", -1).unwrap();
    h
}

#[test]
fn snapshot_restore_is_identical() {
    let h = busy_state();
    let image = h.sm.snapshot();
    let mut back = StateMachine::restore(h.sm.config.clone(), &image).unwrap();
    back.check_invariants();
    assert_eq!(back.snapshot(), image);
    assert_eq!(back.last_zxid(), h.sm.last_zxid());
    assert_eq!(back.sessions(), h.sm.sessions());
    let mut s = h.sm.stats();
    s.watch_count = 0;
    s.watched_paths = 0;
    assert_eq!(back.stats(), s);
    assert_eq!(back.containers, h.sm.containers);
    assert_eq!(back.ttls, h.sm.ttls);
    assert_eq!(back.ephemerals, h.sm.ephemerals);
    // Reads agree.
    for p in ["/", "/a", "/a/e", "/c", "/t", "/r", "/zookeeper/config"] {
        let q = Request::GetData(pw(p, false));
        let mut h2 = busy_state();
        assert_eq!(back.read(S1, &ip(), &q), h2.sm.read(S1, &ip(), &q), "{p}");
    }
    // The next sequential name continues from the restored counter.
    let mut hb = H {
        sm: back,
        zxid: h.zxid,
    };
    assert_eq!(hb.created("/a/s", 2), "/a/s0000000003");
}

/// Every kind of change: data, children, ACL, deletion, a session's close (its
/// ephemerals), new nodes and sessions.
fn change_everything(h: &mut H) {
    h.set("/a", b"changed after the view", -1).unwrap();
    h.create("/a/new", b"x", 0).unwrap();
    h.delete("/r", -1).unwrap();
    h.w(Request::SetAcl(coordd_proto::SetAclRequest {
        path: "/c".into(),
        acl: Acl::read_unsafe(),
        version: -1,
    }))
    .unwrap();
    h.txn(Txn::CloseSession { session_id: S2 });
    h.txn(Txn::CreateSession {
        session_id: 77,
        passwd: vec![7; 16],
        timeout_ms: 30_000,
    });
}

/// A snapshot view encodes the state as it was when taken, whatever the state does
/// after (the node map is shared with it until a node changes).
#[test]
fn a_snapshot_view_keeps_its_point_in_time() {
    let mut h = busy_state();
    let image_then = h.sm.snapshot();
    let view = h.sm.snapshot_view();
    assert_eq!(view.zxid(), h.sm.last_zxid());
    // On nodes the view shares.
    change_everything(&mut h);
    assert_ne!(h.sm.snapshot(), image_then, "the state moved on");
    assert_eq!(view.encode(), image_then);
    // And the state, changed under a live view, is what it would be without one.
    let mut fresh = busy_state();
    change_everything(&mut fresh);
    assert_eq!(h.sm.snapshot(), fresh.sm.snapshot());
    drop(view);
}

#[test]
fn corrupt_snapshots_are_errors() {
    let image = busy_state().sm.snapshot();
    for n in 0..image.len() {
        assert!(
            StateMachine::restore(StateConfig::default(), &image[..n]).is_err(),
            "cut at {n}"
        );
    }
    let mut bad = image.clone();
    bad[4] = 9;
    assert!(StateMachine::restore(StateConfig::default(), &bad).is_err());
    // Flip every byte once: never a panic, and what restores is consistent.
    for i in 0..image.len() {
        let mut b = image.clone();
        b[i] ^= 0xA5;
        if let Ok(sm) = StateMachine::restore(StateConfig::default(), &b) {
            sm.check_invariants();
        }
    }
}

proptest! {
    #[test]
    fn decoders_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        let _ = Entry::decode(&bytes);
        let _ = StateMachine::restore(StateConfig::default(), &bytes);
        let mut with_magic = b"CDSN\x01".to_vec();
        with_magic.extend_from_slice(&bytes);
        let _ = StateMachine::restore(StateConfig::default(), &with_magic);
        let mut entry = vec![1u8, 3];
        entry.extend_from_slice(&bytes);
        let _ = Entry::decode(&entry);
    }
}

// ---------------------------------------------------------------- model-based test

/// A model node: data and version, ephemeral owner.
#[derive(Debug, Clone, PartialEq, Eq)]
struct MNode {
    data: Vec<u8>,
    version: i32,
    owner: SessionId,
}

#[derive(Debug, Clone)]
enum MOp {
    Create {
        parent: usize,
        name: u8,
        data: Vec<u8>,
        flags: i32,
    },
    Delete {
        node: usize,
        version: Option<i32>,
    },
    Set {
        node: usize,
        data: Vec<u8>,
        version: Option<i32>,
    },
    Multi(Vec<(u8, usize, u8)>),
    Close,
}

fn mop_strategy() -> impl Strategy<Value = MOp> {
    prop_oneof![
        4 => (any::<usize>(), 0u8..4, proptest::collection::vec(any::<u8>(), 0..4), prop_oneof![Just(0), Just(1), Just(2), Just(3)])
            .prop_map(|(parent, name, data, flags)| MOp::Create { parent, name, data, flags }),
        2 => (any::<usize>(), proptest::option::of(0i32..3)).prop_map(|(node, version)| MOp::Delete { node, version }),
        2 => (any::<usize>(), proptest::collection::vec(any::<u8>(), 0..4), proptest::option::of(0i32..3))
            .prop_map(|(node, data, version)| MOp::Set { node, data, version }),
        1 => proptest::collection::vec((0u8..3, any::<usize>(), 0u8..4), 1..4).prop_map(MOp::Multi),
        1 => Just(MOp::Close),
    ]
}

/// Applies `op` to the model; None when the model predicts a failure.
fn model_apply(
    m: &mut BTreeMap<String, MNode>,
    counters: &mut BTreeMap<String, i32>,
    op: &MultiOp,
    session: SessionId,
) -> Result<(), ErrorCode> {
    match op {
        MultiOp::Create { req, .. } => {
            let parent = zpath::parent(&req.path).to_owned();
            let Some(p) = m.get(&parent) else {
                return Err(ErrorCode::NoNode);
            };
            let mut path = req.path.clone();
            let counter = counters.entry(parent.clone()).or_insert(0);
            if req.flags & 2 != 0 {
                path.push_str(&zpath::sequential_suffix(*counter));
            }
            if m.contains_key(&path) {
                return Err(ErrorCode::NodeExists);
            }
            if p.owner != 0 {
                return Err(ErrorCode::NoChildrenForEphemerals);
            }
            *counter += 1;
            let owner = if req.flags & 1 != 0 { session } else { 0 };
            m.insert(
                path,
                MNode {
                    data: req.data.clone(),
                    version: 0,
                    owner,
                },
            );
            Ok(())
        }
        MultiOp::Delete(r) => {
            let n = m.get(&r.path).ok_or(ErrorCode::NoNode)?;
            if r.version != -1 && r.version != n.version {
                return Err(ErrorCode::BadVersion);
            }
            let prefix = format!("{}/", r.path);
            if m.keys().any(|k| k.starts_with(&prefix)) {
                return Err(ErrorCode::NotEmpty);
            }
            m.remove(&r.path);
            // A node created again at this path starts counting its children afresh.
            counters.remove(&r.path);
            Ok(())
        }
        MultiOp::SetData(r) => {
            let n = m.get_mut(&r.path).ok_or(ErrorCode::NoNode)?;
            if r.version != -1 && r.version != n.version {
                return Err(ErrorCode::BadVersion);
            }
            n.version += 1;
            n.data = r.data.clone();
            Ok(())
        }
        MultiOp::Check(_) => unreachable!(),
    }
}

fn pick(m: &BTreeMap<String, MNode>, i: usize) -> String {
    let keys: Vec<&String> = m
        .keys()
        .filter(|k| !k.starts_with("/zookeeper") && *k != "/")
        .collect();
    if keys.is_empty() {
        "/m".to_owned()
    } else {
        keys[i % keys.len()].clone()
    }
}

fn pick_parent(m: &BTreeMap<String, MNode>, i: usize) -> String {
    let keys: Vec<&String> = m.keys().filter(|k| !k.starts_with("/zookeeper")).collect();
    keys[i % keys.len()].clone()
}

fn tree_of(sm: &StateMachine) -> BTreeMap<String, MNode> {
    sm.nodes
        .iter()
        .filter(|(k, _)| !k.starts_with("/zookeeper"))
        .map(|(k, n)| {
            (
                k.to_string(),
                MNode {
                    data: n.data.to_vec(),
                    version: n.stat.version,
                    owner: n.stat.ephemeral_owner,
                },
            )
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]
    #[test]
    fn model_matches_and_snapshots_restore(ops in proptest::collection::vec(mop_strategy(), 1..40)) {
        let mut h = H::new();
        let mut model: BTreeMap<String, MNode> = BTreeMap::new();
        model.insert("/".into(), MNode { data: vec![], version: 0, owner: 0 });
        let mut counters: BTreeMap<String, i32> = BTreeMap::new();
        for op in ops {
            let (request, expect) = match op {
                MOp::Create { parent, name, data, flags } => {
                    let p = pick_parent(&model, parent);
                    let path = zpath::join(&p, &format!("n{name}"));
                    let mop = MultiOp::Create { op: OpCode::Create, req: CreateRequest { path, data, acl: Acl::open_unsafe(), flags }, ttl: 0 };
                    let mut m2 = model.clone();
                    let mut c2 = counters.clone();
                    let r = model_apply(&mut m2, &mut c2, &mop, S1);
                    let MultiOp::Create { op, req, ttl } = mop else { unreachable!() };
                    (Request::Create { op, req, ttl }, r.map(|_| (m2, c2)))
                }
                MOp::Delete { node, version } => {
                    let req = DeleteRequest { path: pick(&model, node), version: version.unwrap_or(-1) };
                    let mut m2 = model.clone();
                    let mut c2 = counters.clone();
                    let r = model_apply(&mut m2, &mut c2, &MultiOp::Delete(req.clone()), S1);
                    (Request::Delete(req), r.map(|_| (m2, c2)))
                }
                MOp::Set { node, data, version } => {
                    let req = SetDataRequest { path: pick(&model, node), data, version: version.unwrap_or(-1) };
                    let mut m2 = model.clone();
                    let mut c2 = counters.clone();
                    let r = model_apply(&mut m2, &mut c2, &MultiOp::SetData(req.clone()), S1);
                    (Request::SetData(req), r.map(|_| (m2, c2)))
                }
                MOp::Multi(parts) => {
                    let mut m2 = model.clone();
                    let mut c2 = counters.clone();
                    let mut ops = Vec::new();
                    let mut result = Ok(());
                    for (kind, i, name) in parts {
                        let op = match kind {
                            0 => mop_create(&zpath::join(&pick_parent(&m2, i), &format!("n{name}")), (name % 3) as i32),
                            1 => mop_delete(&pick(&m2, i), -1),
                            _ => mop_set(&pick(&m2, i), &[name], -1),
                        };
                        if result.is_ok() {
                            result = model_apply(&mut m2, &mut c2, &op, S1);
                        }
                        ops.push(op);
                    }
                    (Request::Multi(ops), result.map(|_| (m2, c2)))
                }
                MOp::Close => {
                    h.txn(Txn::CloseSession { session_id: S1 });
                    model.retain(|_, n| n.owner != S1);
                    h.txn(Txn::CreateSession { session_id: S1, passwd: vec![], timeout_ms: 1000 });
                    prop_assert_eq!(tree_of(&h.sm), model.clone());
                    continue;
                }
            };
            let is_multi = matches!(request, Request::Multi(_));
            let got = h.w(request);
            match expect {
                Ok((m2, c2)) => {
                    prop_assert!(got.is_ok(), "expected success, got {:?}", got);
                    if let Ok(Response::Multi(rs)) = &got {
                        prop_assert!(rs.iter().all(|r| !matches!(r, MultiResult::Error(_))), "{:?}", rs);
                    }
                    model = m2;
                    counters = c2;
                }
                Err(e) => {
                    if is_multi {
                        let Ok(Response::Multi(rs)) = &got else { panic!("{got:?}") };
                        prop_assert!(rs.contains(&MultiResult::Error(e)), "{:?} vs {:?}", rs, e);
                    } else {
                        prop_assert_eq!(got, Err(e));
                    }
                }
            }
            prop_assert_eq!(tree_of(&h.sm), model.clone());
            let image = h.sm.snapshot();
            let back = StateMachine::restore(StateConfig::default(), &image).unwrap();
            back.check_invariants();
            prop_assert_eq!(back.snapshot(), image);
            prop_assert_eq!(tree_of(&back), model.clone());
        }
    }
}
