//! The deterministic state machine: the znode tree, the session table and the watch
//! registrations, with ZooKeeper's exact semantics. No I/O, no clock, no randomness:
//! time, session ids and passwords arrive inside log entries, so every replica that
//! applies the same entries gets the same tree and the same results, errors included.
//!
//! Invariant: `apply` is a pure function of (state, entry); `read` changes nothing but
//! watch registrations.

use bytes::BytesMut;
use coordd_proto::{Acl, DecodeError, ErrorCode, Id, MultiResult, Request, Stat, WatcherEvent};

pub type SessionId = i64;
pub type Zxid = i64;

/// Settings that change semantics, fixed for the life of the data directory.
#[derive(Debug, Clone, Default)]
pub struct StateConfig {
    /// Accept TTL node creates (ZooKeeper's `extendedTypesEnabled`); when false they
    /// fail with Unimplemented, as ZooKeeper does.
    pub ttl_enabled: bool,
    /// `user:base64(sha1(user:password))` of a superuser who passes every ACL check
    /// (ZooKeeper's `zookeeper.DigestAuthenticationProvider.superDigest`).
    pub superuser_digest: Option<String>,
}

/// What one log entry asks the state machine to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Txn {
    /// A new session; id and password are chosen at the edge (the leader).
    CreateSession {
        session_id: SessionId,
        passwd: Vec<u8>,
        timeout_ms: i32,
    },
    /// The client closed its session or the leader expired it: its ephemerals go.
    CloseSession { session_id: SessionId },
    /// A client write (`request.is_write()`), with the identities its connection has
    /// authenticated as, for ACL checks at apply time.
    Write {
        session_id: SessionId,
        auth: Vec<Id>,
        request: Request,
    },
    /// Server-issued cleanup of empty containers and expired TTL nodes; each path is
    /// deleted only if it still qualifies when the entry applies.
    DeleteExpired { paths: Vec<String> },
}

/// One log entry: its zxid (the log index), the leader's wall-clock time in ms (ctime /
/// mtime of what it creates or changes) and the transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub zxid: Zxid,
    pub time_ms: i64,
    pub txn: Txn,
}

impl Entry {
    pub fn encode(&self, out: &mut BytesMut) {
        txn::encode_entry(self.zxid, self.time_ms, &self.txn, out)
    }

    /// The entry `Entry { zxid, time_ms, txn }` encodes to, without owning `txn`.
    pub fn encode_txn(zxid: Zxid, time_ms: i64, txn: &Txn, out: &mut BytesMut) {
        txn::encode_entry(zxid, time_ms, txn, out)
    }

    pub fn decode(buf: &[u8]) -> Result<Entry, DecodeError> {
        txn::decode_entry(buf)
    }
}

/// A reply body (what follows the reply header) for a request that succeeded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response {
    /// delete, check, setWatches, removeWatches, checkWatches, auth, close.
    Empty,
    /// addWatch: ZooKeeper answers with an `ErrorResponse { err: 0 }` body (four zero
    /// bytes), and its Java client fails to decode an empty body.
    AddWatch,
    Create {
        path: String,
    },
    Create2 {
        path: String,
        stat: Stat,
    },
    /// exists, setData, setACL.
    Stat(Stat),
    GetData {
        data: Vec<u8>,
        stat: Stat,
    },
    GetChildren {
        children: Vec<String>,
    },
    GetChildren2 {
        children: Vec<String>,
        stat: Stat,
    },
    GetAcl {
        acl: Vec<Acl>,
        stat: Stat,
    },
    AllChildrenNumber(i32),
    Ephemerals(Vec<String>),
    Sync {
        path: String,
    },
    /// multi and multiRead: one result per op. A failed multi is still `Ok` here, with
    /// the failing op's error inside, because ZooKeeper answers it with err 0 in the
    /// reply header.
    Multi(Vec<MultiResult>),
    WhoAmI(Vec<coordd_proto::ClientInfo>),
}

impl Response {
    pub fn encode(&self, out: &mut BytesMut) {
        txn::encode_response(self, out)
    }
}

/// A watch event addressed to one session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notification {
    pub session_id: SessionId,
    pub event: WatcherEvent,
}

/// What applying one entry did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    pub zxid: Zxid,
    /// The session the reply goes to (0 for server-issued entries).
    pub session_id: SessionId,
    pub result: Result<Response, ErrorCode>,
    /// Watch events, in the order ZooKeeper delivers them; each must reach its session
    /// before any later reply to that session.
    pub notifications: Vec<Notification>,
    /// Sessions that ended with this entry.
    pub closed_sessions: Vec<SessionId>,
}

/// A live session as the state machine knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionInfo {
    pub session_id: SessionId,
    pub passwd: Vec<u8>,
    pub timeout_ms: i32,
}

/// Counts for four-letter words and metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StateStats {
    pub znode_count: usize,
    pub ephemerals_count: usize,
    pub watch_count: usize,
    pub watched_paths: usize,
    pub approximate_data_size: usize,
    pub session_count: usize,
}

pub mod acl;
mod snapshot;
pub mod tree;
pub mod txn;
pub mod watches;

#[cfg(test)]
mod tests;

pub use snapshot::SnapshotView;
pub use tree::StateMachine;
