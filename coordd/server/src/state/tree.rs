//! The znode tree and session table, and `apply` / `read` over them.

use super::*;

/// The whole replicated state plus this server's watch registrations.
#[derive(Debug)]
pub struct StateMachine {
    _config: StateConfig,
}

impl StateMachine {
    /// An empty tree: "/" and "/zookeeper" (with "/zookeeper/quota" and
    /// "/zookeeper/config" as ZooKeeper 3.8 has them), no sessions.
    pub fn new(config: StateConfig) -> Self {
        StateMachine { _config: config }
    }

    /// The zxid of the last applied entry (0 when nothing was applied).
    pub fn last_zxid(&self) -> Zxid {
        todo!()
    }

    /// Applies one log entry. Precondition: `entry.zxid > self.last_zxid()`.
    pub fn apply(&mut self, _entry: &Entry) -> Applied {
        todo!()
    }

    /// Serves a read-only request (`!request.is_write()`, not Ping/Auth/SetWatches) for
    /// `session_id` whose connection authenticated as `auth`, registering any watch it
    /// asks for. Exists on a missing node answers NoNode and still registers the watch.
    pub fn read(
        &mut self,
        _session_id: SessionId,
        _auth: &[Id],
        _request: &Request,
    ) -> Result<Response, ErrorCode> {
        todo!()
    }

    /// Re-registers a reconnecting client's watches (setWatches / setWatches2),
    /// returning the events it missed since `relative_zxid`, as ZooKeeper's
    /// `DataTree.setWatches` does.
    pub fn set_watches(
        &mut self,
        _session_id: SessionId,
        _watches: &coordd_proto::SetWatches2,
    ) -> Vec<Notification> {
        todo!()
    }

    /// Drops every watch of a session (its connection closed or the session ended).
    pub fn remove_session_watches(&mut self, _session_id: SessionId) {
        todo!()
    }

    pub fn session(&self, _session_id: SessionId) -> Option<SessionInfo> {
        todo!()
    }

    pub fn sessions(&self) -> Vec<SessionInfo> {
        todo!()
    }

    /// Paths that a `Txn::DeleteExpired` should remove at `now_ms`: containers that
    /// are empty and have had a child (cversion > 0), and TTL nodes with no children
    /// whose mtime + ttl has passed. At most `max` paths.
    pub fn expired_paths(&self, _now_ms: i64, _max: usize) -> Vec<String> {
        todo!()
    }

    pub fn stats(&self) -> StateStats {
        todo!()
    }

    /// A point-in-time image of the replicated state (tree, sessions, last zxid; not
    /// watches), for snapshots.
    pub fn snapshot(&self) -> Vec<u8> {
        todo!()
    }

    /// Rebuilds from [`StateMachine::snapshot`] output.
    pub fn restore(_config: StateConfig, _image: &[u8]) -> Result<Self, DecodeError> {
        todo!()
    }
}
