//! The znode tree and session table, and `apply` / `read` over them.
//!
//! A write runs in two phases, as in ZooKeeper: `prep` checks it against the tree seen
//! through an [`Overlay`] of the changes made by earlier ops of the same multi
//! (ZooKeeper's outstanding `ChangeRecord`s in `PrepRequestProcessor`), in ZooKeeper's
//! order of checks, and turns it into a [`TxnOp`] that cannot fail; then `apply_txn`
//! changes the tree and fires watches (ZooKeeper's `DataTree`). A multi applies only
//! if every op prepared, which makes it all-or-nothing.
//!
//! Stats are kept as ZooKeeper persists them: `cversion` counts child *creations* (the
//! sequential suffix is taken from it) and the cversion clients see is
//! `2 * creations - numChildren`, i.e. creations plus deletions (`DataNode.copyStat`).
//! Containers and TTL nodes keep their special `ephemeralOwner` inside, but clients see
//! 0 there, as `DataNode.getClientEphemeralOwner` reports.
//!
//! Invariants: every node but "/" has its parent in `nodes` and is listed in the
//! parent's `children`; `ephemerals`, `containers` and `ttls` list exactly the nodes of
//! those kinds; `data_size` is the sum of path and data lengths; ACL ids are live in
//! `acls` with one reference per node.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use coordd_proto::{
    path as zpath, perms, AddWatchMode, CheckVersionRequest, CreateMode, CreateRequest,
    DeleteRequest, EventType, KeeperState, MultiOp, OpCode, PathWatchRequest, ReadOp,
    SetAclRequest, SetDataRequest, WatcherType, CONTAINER_EPHEMERAL_OWNER,
};

use super::acl::{self, AclId, AclTable};
use super::watches::{WatchMode, Watches};
use super::*;

/// ZooKeeper's largest TTL (`EphemeralType.TTL.maxValue()`): 40 bits of milliseconds.
/// Smaller than `coordd_proto::TTL_MAX_MS`, which ignores ZooKeeper's reserved bits.
pub const TTL_MAX_MS: i64 = 0xFF_FFFF_FFFF;
/// Top byte of an extended `ephemeralOwner` (`EphemeralType.EXTENDED_MASK`).
const EXTENDED_MASK: i64 = 0xFF00_0000_0000_0000_u64 as i64;
/// Bits that select the extended type; 0 is TTL (`EphemeralType.RESERVED_BITS_MASK`).
const RESERVED_BITS_MASK: i64 = 0x00FF_FF00_0000_0000;

/// The paths ZooKeeper refuses to delete (`DataTree.isSpecialPath`).
const SPECIAL_PATHS: [&str; 4] = ["/", "/zookeeper", "/zookeeper/quota", "/zookeeper/config"];

/// A node's stat as ZooKeeper persists it (`StatPersisted`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct PStat {
    pub czxid: Zxid,
    pub mzxid: Zxid,
    pub pzxid: Zxid,
    pub ctime: i64,
    pub mtime: i64,
    pub version: i32,
    /// Count of child creations.
    pub cversion: i32,
    pub aversion: i32,
    pub ephemeral_owner: i64,
}

/// `DataTree.createStat`.
fn create_stat(zxid: Zxid, time_ms: i64, ephemeral_owner: i64) -> PStat {
    PStat {
        czxid: zxid,
        mzxid: zxid,
        pzxid: zxid,
        ctime: time_ms,
        mtime: time_ms,
        version: 0,
        cversion: 0,
        aversion: 0,
        ephemeral_owner,
    }
}

/// Cloned only when a snapshot still shares it and it changes (see
/// [`StateMachine::snapshot_view`]).
#[derive(Debug, Clone)]
pub(super) struct Node {
    pub data: Box<[u8]>,
    pub acl: AclId,
    pub stat: PStat,
    /// Child names, sorted: getChildren answers in this order (ZooKeeper answers in
    /// HashSet order, which clients do not rely on).
    pub children: BTreeSet<Box<str>>,
}

/// What an `ephemeralOwner` means (`EphemeralType.get`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Owner {
    None,
    Session(SessionId),
    Container,
    Ttl(i64),
}

/// The whole replicated state plus this server's watch registrations.
#[derive(Debug)]
pub struct StateMachine {
    pub(super) config: StateConfig,
    /// Persistent (`imbl`): cloning it for a snapshot is O(1); a node a snapshot still
    /// shares is copied when it changes (`Arc::make_mut`), its map chunk with it.
    pub(super) nodes: imbl::HashMap<Box<str>, Arc<Node>>,
    pub(super) acls: AclTable,
    pub(super) sessions: BTreeMap<SessionId, SessionInfo>,
    pub(super) ephemerals: HashMap<SessionId, BTreeSet<Box<str>>>,
    pub(super) containers: BTreeSet<Box<str>>,
    pub(super) ttls: BTreeSet<Box<str>>,
    pub(super) watches: Watches,
    pub(super) last_zxid: Zxid,
    pub(super) data_size: usize,
}

/// A node as the prep phase sees it (ZooKeeper's `ChangeRecord`).
#[derive(Debug, Clone)]
struct Rec {
    stat: PStat,
    child_count: i32,
    acl: Arc<[Acl]>,
}

/// Changes made by the earlier ops of a multi, not yet applied. `None` is a deletion.
#[derive(Debug, Default)]
struct Overlay {
    /// False for a single op: nothing after it needs to see its changes.
    track: bool,
    changes: HashMap<String, Option<Rec>>,
}

impl Overlay {
    fn put(&mut self, path: &str, rec: Option<Rec>) {
        if self.track {
            self.changes.insert(normalize(path).to_owned(), rec);
        }
    }
}

/// ZooKeeper aliases "" to the root.
fn normalize(path: &str) -> &str {
    if path.is_empty() {
        "/"
    } else {
        path
    }
}

/// (parent, name) of a path that has a '/'; the parent of "/x" is "/".
fn split_parent(path: &str) -> (&str, &str) {
    match path.rfind('/') {
        Some(0) => ("/", &path[1..]),
        Some(i) => (&path[..i], &path[i + 1..]),
        None => {
            debug_assert!(false, "path without '/': {path:?}");
            ("/", path)
        }
    }
}

/// A write op borrowed from a request or a multi.
#[derive(Debug, Clone, Copy)]
enum WriteOp<'a> {
    Create {
        op: OpCode,
        req: &'a CreateRequest,
        ttl: i64,
    },
    Delete(&'a DeleteRequest),
    DeleteContainer(&'a str),
    SetData(&'a SetDataRequest),
    SetAcl(&'a SetAclRequest),
    Check(&'a CheckVersionRequest),
}

impl<'a> From<&'a MultiOp> for WriteOp<'a> {
    fn from(op: &'a MultiOp) -> Self {
        match op {
            MultiOp::Create { op, req, ttl } => WriteOp::Create {
                op: *op,
                req,
                ttl: *ttl,
            },
            MultiOp::Delete(r) => WriteOp::Delete(r),
            MultiOp::SetData(r) => WriteOp::SetData(r),
            MultiOp::Check(r) => WriteOp::Check(r),
        }
    }
}

/// A prepared write: every check passed; applying it cannot fail.
#[derive(Debug)]
enum TxnOp {
    Create {
        /// Answer with the stat (create2, container, TTL) or the path only (create).
        with_stat: bool,
        path: String,
        data: Vec<u8>,
        acl: Vec<Acl>,
        owner: i64,
        parent_cversion: i32,
    },
    Delete {
        path: String,
    },
    SetData {
        path: String,
        data: Vec<u8>,
        version: i32,
    },
    SetAcl {
        path: String,
        acl: Vec<Acl>,
        version: i32,
    },
    Check,
}

/// What an applied [`TxnOp`] answers.
enum Outcome {
    Create {
        with_stat: bool,
        path: String,
        stat: Stat,
    },
    Delete,
    Stat(Stat),
    Check,
}

#[derive(Debug, Clone, Copy)]
enum Which {
    Data,
    Child,
}

/// `PrepRequestProcessor.checkAndIncVersion`.
fn check_version(current: i32, expected: i32) -> Result<i32, ErrorCode> {
    if expected != -1 && expected != current {
        return Err(ErrorCode::BadVersion);
    }
    Ok(current.wrapping_add(1))
}

/// `getParentPathAndValidate`: the parent of a path to delete.
fn parent_for_delete(path: &str) -> Result<&str, ErrorCode> {
    match path.rfind('/') {
        Some(i) if !path.contains('\0') && !SPECIAL_PATHS.contains(&path) => Ok(&path[..i]),
        _ => Err(ErrorCode::BadArguments),
    }
}

fn bad_path(path: &str) -> Result<(), ErrorCode> {
    zpath::validate_path(path, false).map_err(|_| ErrorCode::BadArguments)
}

impl StateMachine {
    /// An empty tree: "/" and "/zookeeper" (with "/zookeeper/quota" and
    /// "/zookeeper/config" as ZooKeeper 3.8 has them), no sessions.
    pub fn new(config: StateConfig) -> Self {
        let mut sm = StateMachine::empty(config);
        let open = Acl::open_unsafe();
        for (path, children) in [
            ("/", &["zookeeper"][..]),
            ("/zookeeper", &["quota", "config"][..]),
            ("/zookeeper/quota", &[][..]),
        ] {
            let acl = sm.acls.intern(&open);
            sm.insert_raw(path, Box::default(), acl, PStat::default(), children);
        }
        // ZOOKEEPER-2014: the config node is read-only; ZooKeeper sets its ACL with
        // version -1 at startup, which leaves aversion at -1.
        let acl = sm.acls.intern(&Acl::read_unsafe());
        let stat = PStat {
            aversion: -1,
            ..PStat::default()
        };
        sm.insert_raw("/zookeeper/config", Box::default(), acl, stat, &[]);
        sm
    }

    pub(super) fn empty(config: StateConfig) -> Self {
        StateMachine {
            config,
            nodes: imbl::HashMap::new(),
            acls: AclTable::default(),
            sessions: BTreeMap::new(),
            ephemerals: HashMap::new(),
            containers: BTreeSet::new(),
            ttls: BTreeSet::new(),
            watches: Watches::default(),
            last_zxid: 0,
            data_size: 0,
        }
    }

    /// Inserts a node without parent bookkeeping or watches (initial tree, restore).
    pub(super) fn insert_raw(
        &mut self,
        path: &str,
        data: Box<[u8]>,
        acl: AclId,
        stat: PStat,
        children: &[&str],
    ) {
        self.data_size += path.len() + data.len();
        self.track_kind(path, stat.ephemeral_owner);
        self.nodes.insert(
            path.into(),
            Arc::new(Node {
                data,
                acl,
                stat,
                children: children.iter().map(|c| Box::from(*c)).collect(),
            }),
        );
    }

    fn track_kind(&mut self, path: &str, owner: i64) {
        match self.owner_kind(owner) {
            Owner::None => {}
            Owner::Session(s) => {
                self.ephemerals.entry(s).or_default().insert(path.into());
            }
            Owner::Container => {
                self.containers.insert(path.into());
            }
            Owner::Ttl(_) => {
                self.ttls.insert(path.into());
            }
        }
    }

    fn untrack_kind(&mut self, path: &str, owner: i64) {
        match self.owner_kind(owner) {
            Owner::None => {}
            Owner::Session(s) => {
                if let Some(set) = self.ephemerals.get_mut(&s) {
                    set.remove(path);
                    if set.is_empty() {
                        self.ephemerals.remove(&s);
                    }
                }
            }
            Owner::Container => {
                self.containers.remove(path);
            }
            Owner::Ttl(_) => {
                self.ttls.remove(path);
            }
        }
    }

    /// `EphemeralType.get`: TTL encodings count only when TTLs are enabled.
    pub(super) fn owner_kind(&self, owner: i64) -> Owner {
        if self.config.ttl_enabled
            && owner & EXTENDED_MASK == EXTENDED_MASK
            && owner & RESERVED_BITS_MASK == 0
        {
            return Owner::Ttl(owner & TTL_MAX_MS);
        }
        match owner {
            CONTAINER_EPHEMERAL_OWNER => Owner::Container,
            0 => Owner::None,
            s => Owner::Session(s),
        }
    }

    /// The stat a client sees (`DataNode.copyStat`).
    pub(super) fn client_stat(&self, n: &Node) -> Stat {
        let num_children = n.children.len() as i32;
        Stat {
            czxid: n.stat.czxid,
            mzxid: n.stat.mzxid,
            ctime: n.stat.ctime,
            mtime: n.stat.mtime,
            version: n.stat.version,
            cversion: n.stat.cversion.wrapping_mul(2).wrapping_sub(num_children),
            aversion: n.stat.aversion,
            ephemeral_owner: match self.owner_kind(n.stat.ephemeral_owner) {
                Owner::Session(s) => s,
                _ => 0,
            },
            data_length: n.data.len() as i32,
            num_children,
            pzxid: n.stat.pzxid,
        }
    }

    fn lookup(&self, path: &str) -> Option<&Node> {
        self.nodes.get(normalize(path)).map(|n| &**n)
    }

    fn superuser(&self) -> Option<&str> {
        self.config.superuser_digest.as_deref()
    }

    fn require(&self, n: &Node, perm: i32, auth: &[Id]) -> Result<(), ErrorCode> {
        acl::require(self.acls.get(n.acl), perm, auth, self.superuser())
    }

    fn check_session(&self, session_id: SessionId) -> Result<(), ErrorCode> {
        if self.sessions.contains_key(&session_id) {
            Ok(())
        } else {
            Err(ErrorCode::SessionExpired)
        }
    }

    /// The zxid of the last applied entry (0 when nothing was applied).
    pub fn last_zxid(&self) -> Zxid {
        self.last_zxid
    }

    /// Applies one log entry. Precondition: `entry.zxid > self.last_zxid()`.
    pub fn apply(&mut self, entry: &Entry) -> Applied {
        debug_assert!(
            entry.zxid > self.last_zxid,
            "entry {} applied after {}",
            entry.zxid,
            self.last_zxid
        );
        let mut notifications = Vec::new();
        let mut closed_sessions = Vec::new();
        let (session_id, result) = match &entry.txn {
            Txn::CreateSession {
                session_id,
                passwd,
                timeout_ms,
            } => {
                self.sessions.insert(
                    *session_id,
                    SessionInfo {
                        session_id: *session_id,
                        passwd: passwd.clone(),
                        timeout_ms: *timeout_ms,
                    },
                );
                (*session_id, Ok(Response::Empty))
            }
            Txn::CloseSession { session_id } => {
                self.close_session(
                    *session_id,
                    entry.zxid,
                    &mut notifications,
                    &mut closed_sessions,
                );
                (*session_id, Ok(Response::Empty))
            }
            Txn::Write {
                session_id,
                auth,
                request,
            } => {
                let r = self.apply_write(
                    entry,
                    *session_id,
                    auth,
                    request,
                    &mut notifications,
                    &mut closed_sessions,
                );
                (*session_id, r)
            }
            Txn::DeleteExpired { paths } => {
                for p in paths {
                    if self.is_expired(p, entry.time_ms) {
                        self.apply_delete(p, entry.zxid, &mut notifications);
                    }
                }
                (0, Ok(Response::Empty))
            }
        };
        self.last_zxid = entry.zxid;
        Applied {
            zxid: entry.zxid,
            session_id,
            result,
            notifications,
            closed_sessions,
        }
    }

    /// Ends a session: its ephemerals go (in path order; ZooKeeper uses HashSet order),
    /// firing watches, then its watches go.
    fn close_session(
        &mut self,
        session_id: SessionId,
        zxid: Zxid,
        out: &mut Vec<Notification>,
        closed: &mut Vec<SessionId>,
    ) {
        let existed = self.sessions.remove(&session_id).is_some();
        let paths = self.ephemerals.remove(&session_id).unwrap_or_default();
        for p in paths {
            if self.nodes.contains_key(&p) {
                self.apply_delete(&p, zxid, out);
            }
        }
        self.watches.remove_session(session_id);
        if existed {
            closed.push(session_id);
        }
    }

    fn apply_write(
        &mut self,
        entry: &Entry,
        session_id: SessionId,
        auth: &[Id],
        request: &Request,
        out: &mut Vec<Notification>,
        closed: &mut Vec<SessionId>,
    ) -> Result<Response, ErrorCode> {
        let op = match request {
            Request::CloseSession => {
                self.close_session(session_id, entry.zxid, out, closed);
                return Ok(Response::Empty);
            }
            Request::Multi(ops) => return Ok(self.apply_multi(entry, session_id, auth, ops, out)),
            Request::Create { op, req, ttl } => WriteOp::Create {
                op: *op,
                req,
                ttl: *ttl,
            },
            Request::Delete(r) => WriteOp::Delete(r),
            Request::DeleteContainer(r) => WriteOp::DeleteContainer(&r.path),
            Request::SetData(r) => WriteOp::SetData(r),
            Request::SetAcl(r) => WriteOp::SetAcl(r),
            Request::Check(r) => WriteOp::Check(r),
            _ => return Err(ErrorCode::Unimplemented),
        };
        let mut ov = Overlay::default();
        let txn = self.prep(&mut ov, entry, session_id, auth, op)?;
        Ok(match self.apply_txn(entry, txn, out) {
            Outcome::Create {
                with_stat: true,
                path,
                stat,
            } => Response::Create2 { path, stat },
            Outcome::Create { path, .. } => Response::Create { path },
            Outcome::Delete | Outcome::Check => Response::Empty,
            Outcome::Stat(stat) => Response::Stat(stat),
        })
    }

    fn apply_multi(
        &mut self,
        entry: &Entry,
        session_id: SessionId,
        auth: &[Id],
        ops: &[MultiOp],
        out: &mut Vec<Notification>,
    ) -> Response {
        let mut ov = Overlay {
            track: true,
            ..Overlay::default()
        };
        let mut txns = Vec::with_capacity(ops.len());
        for (i, op) in ops.iter().enumerate() {
            match self.prep(&mut ov, entry, session_id, auth, op.into()) {
                Ok(t) => txns.push(t),
                Err(e) => {
                    let mut results = vec![MultiResult::Error(ErrorCode::Ok); i];
                    results.push(MultiResult::Error(e));
                    results.resize(
                        ops.len(),
                        MultiResult::Error(ErrorCode::RuntimeInconsistency),
                    );
                    return Response::Multi(results);
                }
            }
        }
        let results = txns
            .into_iter()
            .map(|t| match self.apply_txn(entry, t, out) {
                Outcome::Create {
                    with_stat: true,
                    path,
                    stat,
                } => MultiResult::Create2 { path, stat },
                Outcome::Create { path, .. } => MultiResult::Create { path },
                Outcome::Delete => MultiResult::Delete,
                Outcome::Stat(stat) => MultiResult::SetData { stat },
                Outcome::Check => MultiResult::Check,
            })
            .collect();
        Response::Multi(results)
    }

    /// A node as prep sees it: the overlay first, then the tree.
    fn rec(&self, ov: &Overlay, path: &str) -> Result<Rec, ErrorCode> {
        let key = normalize(path);
        if let Some(c) = ov.changes.get(key) {
            return c.clone().ok_or(ErrorCode::NoNode);
        }
        let n = self.nodes.get(key).ok_or(ErrorCode::NoNode)?;
        Ok(Rec {
            stat: n.stat,
            child_count: n.children.len() as i32,
            acl: self.acls.get(n.acl).clone(),
        })
    }

    /// `PrepRequestProcessor.pRequest2Txn`: every check of one write op, in ZooKeeper's
    /// order, against the tree plus `ov`; records the op's changes in `ov`.
    fn prep(
        &self,
        ov: &mut Overlay,
        entry: &Entry,
        session_id: SessionId,
        auth: &[Id],
        op: WriteOp<'_>,
    ) -> Result<TxnOp, ErrorCode> {
        let su = self.superuser();
        match op {
            WriteOp::Create { op, req, ttl } => {
                self.prep_create(ov, entry, session_id, auth, op, req, ttl)
            }
            WriteOp::Delete(r) => {
                self.check_session(session_id)?;
                let parent_path = parent_for_delete(&r.path)?;
                let mut parent = self.rec(ov, parent_path)?;
                acl::require(&parent.acl, perms::DELETE, auth, su)?;
                let node = self.rec(ov, &r.path)?;
                check_version(node.stat.version, r.version)?;
                if node.child_count > 0 {
                    return Err(ErrorCode::NotEmpty);
                }
                parent.child_count -= 1;
                parent.stat.pzxid = entry.zxid;
                ov.put(parent_path, Some(parent));
                ov.put(&r.path, None);
                Ok(TxnOp::Delete {
                    path: r.path.clone(),
                })
            }
            WriteOp::DeleteContainer(path) => {
                // As ZooKeeper: no session or ACL check, and any node that is not a
                // session's ephemeral may go once it is empty.
                let parent_path = parent_for_delete(path)?;
                let node = self.rec(ov, path)?;
                if node.child_count > 0 {
                    return Err(ErrorCode::NotEmpty);
                }
                if matches!(
                    self.owner_kind(node.stat.ephemeral_owner),
                    Owner::Session(_)
                ) {
                    return Err(ErrorCode::BadVersion);
                }
                let mut parent = self.rec(ov, parent_path)?;
                parent.child_count -= 1;
                parent.stat.pzxid = entry.zxid;
                ov.put(parent_path, Some(parent));
                ov.put(path, None);
                Ok(TxnOp::Delete {
                    path: path.to_owned(),
                })
            }
            WriteOp::SetData(r) => {
                self.check_session(session_id)?;
                bad_path(&r.path)?;
                let mut node = self.rec(ov, &r.path)?;
                acl::require(&node.acl, perms::WRITE, auth, su)?;
                let version = check_version(node.stat.version, r.version)?;
                node.stat.version = version;
                node.stat.mtime = entry.time_ms;
                node.stat.mzxid = entry.zxid;
                ov.put(&r.path, Some(node));
                Ok(TxnOp::SetData {
                    path: r.path.clone(),
                    data: r.data.clone(),
                    version,
                })
            }
            WriteOp::SetAcl(r) => {
                self.check_session(session_id)?;
                bad_path(&r.path)?;
                let new_acl = acl::fixup(&r.acl, auth)?;
                let mut node = self.rec(ov, &r.path)?;
                acl::require(&node.acl, perms::ADMIN, auth, su)?;
                let version = check_version(node.stat.aversion, r.version)?;
                node.stat.aversion = version;
                if ov.track {
                    node.acl = Arc::from(new_acl.as_slice());
                    ov.put(&r.path, Some(node));
                }
                Ok(TxnOp::SetAcl {
                    path: r.path.clone(),
                    acl: new_acl,
                    version,
                })
            }
            WriteOp::Check(r) => {
                self.check_session(session_id)?;
                bad_path(&r.path)?;
                let node = self.rec(ov, &r.path)?;
                acl::require(&node.acl, perms::READ, auth, su)?;
                check_version(node.stat.version, r.version)?;
                Ok(TxnOp::Check)
            }
        }
    }

    /// `PrepRequestProcessor.pRequest2TxnCreate`.
    #[allow(clippy::too_many_arguments)]
    fn prep_create(
        &self,
        ov: &mut Overlay,
        entry: &Entry,
        session_id: SessionId,
        auth: &[Id],
        op: OpCode,
        req: &CreateRequest,
        ttl: i64,
    ) -> Result<TxnOp, ErrorCode> {
        let mode = CreateMode::try_from(req.flags).map_err(|_| ErrorCode::BadArguments)?;
        // Only createTTL carries a TTL; ZooKeeper uses -1 for "none".
        let ttl = if op == OpCode::CreateTtl { ttl } else { -1 };
        if mode.is_ttl() && !self.config.ttl_enabled {
            return Err(ErrorCode::Unimplemented);
        }
        // EphemeralType.validateTTL.
        if mode.is_ttl() {
            if ttl <= 0 || ttl > TTL_MAX_MS {
                return Err(ErrorCode::BadArguments);
            }
        } else if ttl >= 0 || op == OpCode::CreateTtl {
            // createTTL with a non-TTL mode and a negative TTL would make ZooKeeper fail
            // while applying; refuse it here instead.
            return Err(ErrorCode::BadArguments);
        }
        self.check_session(session_id)?;
        // validatePathForCreate.
        let last_slash = match req.path.rfind('/') {
            Some(i) if !req.path.contains('\0') => i,
            _ => return Err(ErrorCode::BadArguments),
        };
        let parent_path = &req.path[..last_slash];
        let acl = acl::fixup(&req.acl, auth)?;
        let mut parent = self.rec(ov, parent_path)?;
        acl::require(&parent.acl, perms::CREATE, auth, self.superuser())?;
        let mut path = req.path.clone();
        if mode.is_sequential() {
            path.push_str(&zpath::sequential_suffix(parent.stat.cversion));
        }
        bad_path(&path)?;
        if self.rec(ov, &path).is_ok() {
            return Err(ErrorCode::NodeExists);
        }
        if matches!(
            self.owner_kind(parent.stat.ephemeral_owner),
            Owner::Session(_)
        ) {
            return Err(ErrorCode::NoChildrenForEphemerals);
        }
        let parent_cversion = parent.stat.cversion.wrapping_add(1);
        // What DataTree stores: the txn type decides, not the flags (a plain create
        // with the container flag makes a persistent node, as in ZooKeeper).
        let owner = match op {
            OpCode::CreateContainer => CONTAINER_EPHEMERAL_OWNER,
            OpCode::CreateTtl => EXTENDED_MASK | ttl,
            _ if mode.is_ephemeral() => session_id,
            _ => 0,
        };
        if ov.track {
            parent.child_count += 1;
            parent.stat.cversion = parent_cversion;
            parent.stat.pzxid = entry.zxid;
            ov.put(parent_path, Some(parent));
            ov.put(
                &path,
                Some(Rec {
                    stat: create_stat(entry.zxid, entry.time_ms, owner),
                    child_count: 0,
                    acl: Arc::from(acl.as_slice()),
                }),
            );
        }
        Ok(TxnOp::Create {
            with_stat: op != OpCode::Create,
            path,
            data: req.data.clone(),
            acl,
            owner,
            parent_cversion,
        })
    }

    /// `DataTree.processTxn` for one prepared op.
    fn apply_txn(&mut self, entry: &Entry, txn: TxnOp, out: &mut Vec<Notification>) -> Outcome {
        match txn {
            TxnOp::Create {
                with_stat,
                path,
                data,
                acl,
                owner,
                parent_cversion,
            } => {
                let stat = self.apply_create(entry, &path, data, &acl, owner, parent_cversion, out);
                Outcome::Create {
                    with_stat,
                    path,
                    stat,
                }
            }
            TxnOp::Delete { path } => {
                self.apply_delete(&path, entry.zxid, out);
                Outcome::Delete
            }
            TxnOp::SetData {
                path,
                data,
                version,
            } => Outcome::Stat(self.apply_set_data(entry, &path, data, version, out)),
            TxnOp::SetAcl { path, acl, version } => {
                Outcome::Stat(self.apply_set_acl(&path, &acl, version))
            }
            TxnOp::Check => Outcome::Check,
        }
    }

    /// `DataTree.createNode`.
    #[allow(clippy::too_many_arguments)]
    fn apply_create(
        &mut self,
        entry: &Entry,
        path: &str,
        data: Vec<u8>,
        acl: &[Acl],
        owner: i64,
        parent_cversion: i32,
        out: &mut Vec<Notification>,
    ) -> Stat {
        let (parent_path, name) = split_parent(path);
        debug_assert!(!self.nodes.contains_key(path), "prep let {path} exist");
        let Some(parent) = self.nodes.get_mut(parent_path).map(Arc::make_mut) else {
            debug_assert!(false, "prep let {path} in without a parent");
            return Stat::default();
        };
        // Plain `>` as ZooKeeper: once the counter wraps it stops moving.
        if parent_cversion > parent.stat.cversion {
            parent.stat.cversion = parent_cversion;
            parent.stat.pzxid = entry.zxid;
        }
        parent.children.insert(name.into());
        let parent_acl = self.acls.get(parent.acl).clone();
        let acl_id = self.acls.intern(acl);
        let node = Node {
            data: data.into_boxed_slice(),
            acl: acl_id,
            stat: create_stat(entry.zxid, entry.time_ms, owner),
            children: BTreeSet::new(),
        };
        self.data_size += path.len() + node.data.len();
        let stat = self.client_stat(&node);
        self.track_kind(path, owner);
        self.nodes.insert(path.into(), Arc::new(node));
        self.fire(Which::Data, path, EventType::NodeCreated, acl, None, out);
        self.fire(
            Which::Child,
            parent_path,
            EventType::NodeChildrenChanged,
            &parent_acl,
            None,
            out,
        );
        stat
    }

    /// `DataTree.deleteNode`: the parent's pzxid moves, its cversion does not (clients
    /// see it move because they see creations plus deletions).
    fn apply_delete(&mut self, path: &str, zxid: Zxid, out: &mut Vec<Notification>) {
        let (parent_path, name) = split_parent(path);
        let Some(parent) = self.nodes.get_mut(parent_path).map(Arc::make_mut) else {
            debug_assert!(false, "deleting {path} without a parent");
            return;
        };
        parent.children.remove(name);
        if zxid > parent.stat.pzxid {
            parent.stat.pzxid = zxid;
        }
        let parent_acl = self.acls.get(parent.acl).clone();
        let Some(node) = self.nodes.remove(path) else {
            debug_assert!(false, "deleting missing {path}");
            return;
        };
        debug_assert!(node.children.is_empty(), "deleting {path} with children");
        let acl = self.acls.get(node.acl).clone();
        self.acls.release(node.acl);
        self.data_size -= path.len() + node.data.len();
        self.untrack_kind(path, node.stat.ephemeral_owner);
        let processed = self.fire(Which::Data, path, EventType::NodeDeleted, &acl, None, out);
        self.fire(
            Which::Child,
            path,
            EventType::NodeDeleted,
            &acl,
            Some(&processed),
            out,
        );
        self.fire(
            Which::Child,
            parent_path,
            EventType::NodeChildrenChanged,
            &parent_acl,
            None,
            out,
        );
    }

    /// `DataTree.setData`.
    fn apply_set_data(
        &mut self,
        entry: &Entry,
        path: &str,
        data: Vec<u8>,
        version: i32,
        out: &mut Vec<Notification>,
    ) -> Stat {
        let Some(n) = self.nodes.get_mut(path).map(Arc::make_mut) else {
            debug_assert!(false, "setData on missing {path}");
            return Stat::default();
        };
        self.data_size = self.data_size + data.len() - n.data.len();
        n.data = data.into_boxed_slice();
        n.stat.mtime = entry.time_ms;
        n.stat.mzxid = entry.zxid;
        n.stat.version = version;
        let acl = self.acls.get(n.acl).clone();
        let stat = self.client_stat(&self.nodes[path]);
        self.fire(
            Which::Data,
            path,
            EventType::NodeDataChanged,
            &acl,
            None,
            out,
        );
        stat
    }

    /// `DataTree.setACL`: no watch fires.
    fn apply_set_acl(&mut self, path: &str, acl: &[Acl], version: i32) -> Stat {
        let new_id = self.acls.intern(acl);
        let Some(n) = self.nodes.get_mut(path).map(Arc::make_mut) else {
            debug_assert!(false, "setACL on missing {path}");
            self.acls.release(new_id);
            return Stat::default();
        };
        let old_id = std::mem::replace(&mut n.acl, new_id);
        n.stat.aversion = version;
        self.acls.release(old_id);
        self.client_stat(&self.nodes[path])
    }

    /// `WatchManager.triggerWatch` plus the READ check ZooKeeper makes before it sends
    /// an event (`NIOServerCnxn.process`). Returns every session that matched,
    /// suppressed or filtered ones included, as ZooKeeper does.
    fn fire(
        &mut self,
        which: Which,
        path: &str,
        event: EventType,
        acl: &[Acl],
        suppress: Option<&BTreeSet<SessionId>>,
        out: &mut Vec<Notification>,
    ) -> BTreeSet<SessionId> {
        let sessions = match which {
            Which::Data => self.watches.data.trigger(path, event),
            Which::Child => self.watches.child.trigger(path, event),
        };
        for &s in &sessions {
            if suppress.is_some_and(|sup| sup.contains(&s)) {
                continue;
            }
            let auth = self.watches.auth_of(s);
            if !acl::check(acl, perms::READ, auth, self.superuser()) {
                continue;
            }
            out.push(Notification {
                session_id: s,
                event: WatcherEvent {
                    event_type: event.code(),
                    state: KeeperState::SyncConnected.code(),
                    path: path.to_owned(),
                },
            });
        }
        sessions
    }

    /// Whether a `DeleteExpired` may remove `path` at `now_ms` (`ContainerManager`).
    fn is_expired(&self, path: &str, now_ms: i64) -> bool {
        let Some(n) = self.nodes.get(path) else {
            return false;
        };
        if !n.children.is_empty() {
            return false;
        }
        match self.owner_kind(n.stat.ephemeral_owner) {
            Owner::Container => n.stat.cversion > 0,
            Owner::Ttl(ttl) => ttl != 0 && now_ms.saturating_sub(n.stat.mtime) > ttl,
            _ => false,
        }
    }

    /// Serves a read-only request (`!request.is_write()`, not Ping/Auth/SetWatches) for
    /// `session_id` whose connection authenticated as `auth`, registering any watch it
    /// asks for. Exists on a missing node answers NoNode and still registers the watch.
    ///
    /// An unknown session gets SessionExpired (ZooKeeper checks the session of reads
    /// too). `auth` is also remembered as the session's identities for filtering its
    /// watch events by READ permission, as ZooKeeper does per connection.
    pub fn read(
        &mut self,
        session_id: SessionId,
        auth: &[Id],
        request: &Request,
    ) -> Result<Response, ErrorCode> {
        self.check_session(session_id)?;
        self.watches.set_auth(session_id, auth);
        match request {
            Request::Exists(r) => {
                if r.path.contains('\0') {
                    return Err(ErrorCode::BadArguments);
                }
                // No permission is checked: ZooKeeper 3.8's exists only stats the node
                // (FinalRequestProcessor), so anyone may learn that a node exists.
                if r.watch {
                    self.watches
                        .data
                        .add(&r.path, session_id, WatchMode::Standard);
                }
                match self.lookup(&r.path) {
                    Some(n) => Ok(Response::Stat(self.client_stat(n))),
                    None => Err(ErrorCode::NoNode),
                }
            }
            Request::GetData(r) => self
                .get_data(session_id, auth, r)
                .map(|(data, stat)| Response::GetData { data, stat }),
            Request::GetChildren(r) => self
                .get_children(session_id, auth, r)
                .map(|(children, _)| Response::GetChildren { children }),
            Request::GetChildren2(r) => self
                .get_children(session_id, auth, r)
                .map(|(children, stat)| Response::GetChildren2 { children, stat }),
            Request::GetAllChildrenNumber(r) => {
                let n = self.lookup(&r.path).ok_or(ErrorCode::NoNode)?;
                self.require(n, perms::READ, auth)?;
                Ok(Response::AllChildrenNumber(
                    self.count_descendants(&r.path) as i32
                ))
            }
            Request::GetEphemerals(r) => Ok(Response::Ephemerals(
                self.session_ephemerals(session_id, &r.path),
            )),
            Request::GetAcl(r) => {
                let n = self.lookup(&r.path).ok_or(ErrorCode::NoNode)?;
                self.require(n, perms::READ | perms::ADMIN, auth)?;
                let list = self.acls.get(n.acl);
                let acl = if acl::check(list, perms::ADMIN, auth, self.superuser()) {
                    list.to_vec()
                } else {
                    acl::redact(list)
                };
                Ok(Response::GetAcl {
                    acl,
                    stat: self.client_stat(n),
                })
            }
            Request::MultiRead(ops) => {
                let mut results = Vec::with_capacity(ops.len());
                for op in ops {
                    results.push(match op {
                        ReadOp::GetChildren(r) => match self.get_children(session_id, auth, r) {
                            Ok((children, _)) => MultiResult::GetChildren { children },
                            Err(e) => MultiResult::Error(e),
                        },
                        ReadOp::GetData(r) => match self.get_data(session_id, auth, r) {
                            Ok((data, stat)) => MultiResult::GetData { data, stat },
                            Err(e) => MultiResult::Error(e),
                        },
                    });
                }
                Ok(Response::Multi(results))
            }
            Request::Sync(r) => Ok(Response::Sync {
                path: r.path.clone(),
            }),
            Request::RemoveWatches(r) => {
                let kind = WatcherType::try_from(r.watcher_type)
                    .map_err(|_| ErrorCode::MarshallingError)?;
                let w = &mut self.watches;
                let removed = match kind {
                    WatcherType::Children => w.child.remove(&r.path, session_id),
                    WatcherType::Data => w.data.remove(&r.path, session_id),
                    WatcherType::Any => {
                        let c = w.child.remove(&r.path, session_id);
                        let d = w.data.remove(&r.path, session_id);
                        c || d
                    }
                };
                if removed {
                    Ok(Response::Empty)
                } else {
                    Err(ErrorCode::NoWatcher)
                }
            }
            Request::CheckWatches(r) => {
                let kind = WatcherType::try_from(r.watcher_type)
                    .map_err(|_| ErrorCode::MarshallingError)?;
                let w = &self.watches;
                let found = match kind {
                    WatcherType::Children => w.child.contains(&r.path, session_id),
                    WatcherType::Data => w.data.contains(&r.path, session_id),
                    WatcherType::Any => {
                        w.child.contains(&r.path, session_id)
                            || w.data.contains(&r.path, session_id)
                    }
                };
                if found {
                    Ok(Response::Empty)
                } else {
                    Err(ErrorCode::NoWatcher)
                }
            }
            Request::AddWatch(r) => {
                let mode = match AddWatchMode::try_from(r.mode) {
                    Ok(AddWatchMode::Persistent) => WatchMode::Persistent,
                    Ok(AddWatchMode::PersistentRecursive) => WatchMode::PersistentRecursive,
                    Err(_) => return Err(ErrorCode::MarshallingError),
                };
                self.watches.data.add(&r.path, session_id, mode);
                self.watches.child.add(&r.path, session_id, mode);
                Ok(Response::AddWatch)
            }
            Request::WhoAmI => Ok(Response::WhoAmI(acl::client_infos(auth))),
            _ => Err(ErrorCode::Unimplemented),
        }
    }

    /// `FinalRequestProcessor.handleGetDataRequest`.
    fn get_data(
        &mut self,
        session_id: SessionId,
        auth: &[Id],
        r: &PathWatchRequest,
    ) -> Result<(Vec<u8>, Stat), ErrorCode> {
        let n = self.lookup(&r.path).ok_or(ErrorCode::NoNode)?;
        self.require(n, perms::READ, auth)?;
        let result = (n.data.to_vec(), self.client_stat(n));
        if r.watch {
            self.watches
                .data
                .add(&r.path, session_id, WatchMode::Standard);
        }
        Ok(result)
    }

    /// `FinalRequestProcessor.handleGetChildrenRequest` (and getChildren2).
    fn get_children(
        &mut self,
        session_id: SessionId,
        auth: &[Id],
        r: &PathWatchRequest,
    ) -> Result<(Vec<String>, Stat), ErrorCode> {
        let n = self.lookup(&r.path).ok_or(ErrorCode::NoNode)?;
        self.require(n, perms::READ, auth)?;
        let children = n.children.iter().map(|c| c.to_string()).collect();
        let stat = self.client_stat(n);
        if r.watch {
            self.watches
                .child
                .add(&r.path, session_id, WatchMode::Standard);
        }
        Ok((children, stat))
    }

    /// `DataTree.getAllChildrenNumber`: descendants, the node itself excluded.
    fn count_descendants(&self, path: &str) -> usize {
        if path.is_empty() {
            // ZooKeeper counts keys starting with "/": every node, "/" included.
            return self.nodes.len();
        }
        if path == "/" {
            return self.nodes.len() - 1;
        }
        let mut count = 0;
        let mut stack = vec![path.to_owned()];
        while let Some(p) = stack.pop() {
            if let Some(n) = self.nodes.get(p.as_str()) {
                for c in &n.children {
                    count += 1;
                    stack.push(zpath::join(&p, c));
                }
            }
        }
        count
    }

    /// getEphemerals: the session's ephemerals whose path starts with `prefix` as a
    /// string (not as a path, as ZooKeeper), all of them for "", blanks or "/"; sorted.
    fn session_ephemerals(&self, session_id: SessionId, prefix: &str) -> Vec<String> {
        let Some(set) = self.ephemerals.get(&session_id) else {
            return Vec::new();
        };
        let trimmed = prefix.trim();
        let all = trimmed.is_empty() || trimmed == "/";
        set.iter()
            .filter(|p| all || p.starts_with(prefix))
            .map(|p| p.to_string())
            .collect()
    }

    /// Re-registers a reconnecting client's watches (setWatches / setWatches2),
    /// returning the events it missed since `relative_zxid`, as ZooKeeper's
    /// `DataTree.setWatches` does. Unknown sessions get nothing registered.
    pub fn set_watches(
        &mut self,
        session_id: SessionId,
        watches: &coordd_proto::SetWatches2,
    ) -> Vec<Notification> {
        let mut out = Vec::new();
        if self.check_session(session_id).is_err() {
            return out;
        }
        let rel = watches.relative_zxid;
        let event = |t: EventType, path: &str| Notification {
            session_id,
            event: WatcherEvent {
                event_type: t.code(),
                state: KeeperState::SyncConnected.code(),
                path: path.to_owned(),
            },
        };
        for p in &watches.data_watches {
            match self.lookup(p).map(|n| n.stat.mzxid) {
                None => out.push(event(EventType::NodeDeleted, p)),
                Some(mzxid) if mzxid > rel => out.push(event(EventType::NodeDataChanged, p)),
                Some(_) => self.watches.data.add(p, session_id, WatchMode::Standard),
            }
        }
        for p in &watches.exist_watches {
            if self.lookup(p).is_some() {
                out.push(event(EventType::NodeCreated, p));
            } else {
                self.watches.data.add(p, session_id, WatchMode::Standard);
            }
        }
        for p in &watches.child_watches {
            match self.lookup(p).map(|n| n.stat.pzxid) {
                None => out.push(event(EventType::NodeDeleted, p)),
                Some(pzxid) if pzxid > rel => out.push(event(EventType::NodeChildrenChanged, p)),
                Some(_) => self.watches.child.add(p, session_id, WatchMode::Standard),
            }
        }
        for (paths, mode) in [
            (&watches.persistent_watches, WatchMode::Persistent),
            (
                &watches.persistent_recursive_watches,
                WatchMode::PersistentRecursive,
            ),
        ] {
            for p in paths {
                self.watches.child.add(p, session_id, mode);
                self.watches.data.add(p, session_id, mode);
            }
        }
        out
    }

    /// How many watch registrations `session_id` holds (both tables; see
    /// `Watches::session_count`).
    pub fn session_watch_count(&self, session_id: SessionId) -> usize {
        self.watches.session_count(session_id)
    }

    /// How many new watch registrations `read(session_id, auth, request)` would add if
    /// run now: the (table, path) pairs it registers that the session does not hold
    /// yet. It mirrors `read`'s rules (getData / getChildren register only on success;
    /// exists also on a missing node; addWatch in both tables) so that a caller can
    /// refuse the read before it registers anything. Changes nothing.
    pub fn watches_added_by_read<'a>(
        &self,
        session_id: SessionId,
        auth: &[Id],
        request: &'a Request,
    ) -> usize {
        if self.check_session(session_id).is_err() {
            return 0;
        }
        let readable = |path: &str| {
            self.lookup(path)
                .is_some_and(|n| self.require(n, perms::READ, auth).is_ok())
        };
        // (child table?, path) pairs the read would register.
        let mut pairs: Vec<(bool, &str)> = Vec::new();
        let mut path_watch = |child: bool, r: &'a PathWatchRequest| {
            if r.watch && readable(&r.path) {
                pairs.push((child, r.path.as_str()));
            }
        };
        match request {
            // exists registers on a missing node too, and checks no permission.
            Request::Exists(r) if r.watch && !r.path.contains('\0') => {
                pairs.push((false, r.path.as_str()))
            }
            Request::GetData(r) => path_watch(false, r),
            Request::GetChildren(r) | Request::GetChildren2(r) => path_watch(true, r),
            Request::MultiRead(ops) => {
                for op in ops {
                    match op {
                        ReadOp::GetData(r) => path_watch(false, r),
                        ReadOp::GetChildren(r) => path_watch(true, r),
                    }
                }
            }
            Request::AddWatch(r) if AddWatchMode::try_from(r.mode).is_ok() => {
                pairs.push((false, r.path.as_str()));
                pairs.push((true, r.path.as_str()));
            }
            _ => {}
        }
        self.count_new_watches(session_id, pairs)
    }

    /// How many of `pairs` (child table?, path) `session_id` does not hold yet, each
    /// counted once.
    fn count_new_watches<'a>(
        &self,
        session_id: SessionId,
        pairs: impl IntoIterator<Item = (bool, &'a str)>,
    ) -> usize {
        let mut new: HashSet<(bool, &str)> = HashSet::new();
        for (child, path) in pairs {
            let table = if child {
                &self.watches.child
            } else {
                &self.watches.data
            };
            if !table.has(path, session_id) {
                new.insert((child, path));
            }
        }
        new.len()
    }

    /// How many new watch registrations `set_watches(session_id, watches)` would add if
    /// run now (watches that fire at once are not registered). Changes nothing.
    pub fn watches_added_by_set_watches(
        &self,
        session_id: SessionId,
        watches: &coordd_proto::SetWatches2,
    ) -> usize {
        if self.check_session(session_id).is_err() {
            return 0;
        }
        let rel = watches.relative_zxid;
        let mut pairs: Vec<(bool, &str)> = Vec::new();
        for p in &watches.data_watches {
            if self.lookup(p).is_some_and(|n| n.stat.mzxid <= rel) {
                pairs.push((false, p));
            }
        }
        for p in &watches.exist_watches {
            if self.lookup(p).is_none() {
                pairs.push((false, p));
            }
        }
        for p in &watches.child_watches {
            if self.lookup(p).is_some_and(|n| n.stat.pzxid <= rel) {
                pairs.push((true, p));
            }
        }
        for p in watches
            .persistent_watches
            .iter()
            .chain(&watches.persistent_recursive_watches)
        {
            pairs.push((true, p));
            pairs.push((false, p));
        }
        self.count_new_watches(session_id, pairs)
    }

    /// Sets the identities `session_id`'s current connection has (after addAuth, or on
    /// a reconnect before `set_watches`): its watch events are filtered by READ
    /// permission for these identities. `read` records them too.
    pub fn set_session_auth(&mut self, session_id: SessionId, auth: &[Id]) {
        self.watches.set_auth(session_id, auth);
    }

    /// Drops every watch of a session (its connection closed or the session ended).
    pub fn remove_session_watches(&mut self, session_id: SessionId) {
        self.watches.remove_session(session_id);
    }

    pub fn session(&self, session_id: SessionId) -> Option<SessionInfo> {
        self.sessions.get(&session_id).cloned()
    }

    /// All sessions, by id.
    pub fn sessions(&self) -> Vec<SessionInfo> {
        self.sessions.values().cloned().collect()
    }

    /// Paths that a `Txn::DeleteExpired` should remove at `now_ms`: containers that
    /// are empty and have had a child (cversion > 0), and TTL nodes with no children
    /// whose mtime + ttl has passed. At most `max` paths and `bytes_max` bytes of them
    /// (the first path always, however long: one entry must be able to remove it);
    /// containers first, each kind in path order.
    pub fn expired_paths(&self, now_ms: i64, max: usize, bytes_max: usize) -> Vec<String> {
        let mut bytes = 0usize;
        let mut out = Vec::new();
        for p in self
            .containers
            .iter()
            .chain(self.ttls.iter())
            .filter(|p| self.is_expired(p, now_ms))
        {
            bytes = bytes.saturating_add(p.len());
            if out.len() >= max || (!out.is_empty() && bytes > bytes_max) {
                break;
            }
            out.push(p.to_string());
        }
        out
    }

    /// Counts as ZooKeeper's `mntr` reports them; `znode_count` includes ZooKeeper's
    /// "" alias of the root, so a fresh tree counts 5.
    pub fn stats(&self) -> StateStats {
        StateStats {
            znode_count: self.nodes.len() + 1,
            ephemerals_count: self.ephemerals.values().map(BTreeSet::len).sum(),
            watch_count: self.watches.count(),
            watched_paths: self.watches.watched_paths(),
            approximate_data_size: self.data_size,
            session_count: self.sessions.len(),
        }
    }

    /// A point-in-time image of the replicated state (tree, sessions, last zxid; not
    /// watches), for snapshots.
    pub fn snapshot(&self) -> Vec<u8> {
        self.snapshot_view().encode()
    }

    /// The replicated state at this zxid, taken in O(1) in the number of nodes (ACL
    /// lists and sessions are copied), to encode as [`StateMachine::snapshot`] would, on
    /// any thread, while this state moves on.
    pub fn snapshot_view(&self) -> super::snapshot::SnapshotView {
        super::snapshot::SnapshotView::of(self)
    }

    /// Rebuilds from [`StateMachine::snapshot`] output.
    pub fn restore(config: StateConfig, image: &[u8]) -> Result<Self, DecodeError> {
        super::snapshot::read(config, image)
    }

    /// Checks every structural invariant; for tests.
    #[cfg(test)]
    pub(super) fn check_invariants(&self) {
        let mut size = 0;
        let mut eph = 0;
        let mut acl_refs: HashMap<AclId, u32> = HashMap::new();
        for (path, n) in &self.nodes {
            size += path.len() + n.data.len();
            *acl_refs.entry(n.acl).or_default() += 1;
            if &**path != "/" {
                let (pp, name) = split_parent(path);
                let parent = self.nodes.get(pp).expect("parent exists");
                assert!(parent.children.contains(name), "{path} listed in parent");
            }
            for c in &n.children {
                assert!(self.nodes.contains_key(zpath::join(path, c).as_str()));
            }
            match self.owner_kind(n.stat.ephemeral_owner) {
                Owner::Session(s) => {
                    eph += 1;
                    assert!(self.ephemerals[&s].contains(&**path));
                }
                Owner::Container => assert!(self.containers.contains(&**path)),
                Owner::Ttl(_) => assert!(self.ttls.contains(&**path)),
                Owner::None => {}
            }
        }
        assert_eq!(size, self.data_size);
        assert_eq!(eph, self.stats().ephemerals_count);
        for (id, refs) in acl_refs {
            assert_eq!(self.acls.refs(id), refs);
        }
        self.watches.data.check_invariants();
        self.watches.child.check_invariants();
    }
}
