//! ZooKeeper's numeric constants: op codes, error codes, event types, session states,
//! create modes, permissions and the reserved xids. Values are ZooKeeper 3.8's
//! (`ZooDefs.OpCode`, `KeeperException.Code`, `Watcher.Event`).

use crate::jute::DecodeError;

macro_rules! int_enum {
    ($(#[$m:meta])* $name:ident : $what:literal { $($(#[$vm:meta])* $v:ident = $n:expr),* $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[repr(i32)]
        pub enum $name { $($(#[$vm])* $v = $n),* }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$v),*];

            pub fn code(self) -> i32 {
                self as i32
            }
        }

        impl TryFrom<i32> for $name {
            type Error = DecodeError;
            fn try_from(value: i32) -> Result<Self, DecodeError> {
                match value {
                    $($n => Ok($name::$v),)*
                    _ => Err(DecodeError::UnknownValue { what: $what, value }),
                }
            }
        }
    };
}

int_enum! {
    /// Request types (`ZooDefs.OpCode`).
    OpCode : "op code" {
        Notification = 0,
        Create = 1,
        Delete = 2,
        Exists = 3,
        GetData = 4,
        SetData = 5,
        GetAcl = 6,
        SetAcl = 7,
        GetChildren = 8,
        Sync = 9,
        Ping = 11,
        GetChildren2 = 12,
        Check = 13,
        Multi = 14,
        Create2 = 15,
        Reconfig = 16,
        CheckWatches = 17,
        RemoveWatches = 18,
        CreateContainer = 19,
        DeleteContainer = 20,
        CreateTtl = 21,
        MultiRead = 22,
        Auth = 100,
        SetWatches = 101,
        Sasl = 102,
        GetEphemerals = 103,
        GetAllChildrenNumber = 104,
        SetWatches2 = 105,
        AddWatch = 106,
        WhoAmI = 107,
        CreateSession = -10,
        CloseSession = -11,
        Error = -1,
    }
}

int_enum! {
    /// Error codes (`KeeperException.Code`).
    ErrorCode : "error code" {
        Ok = 0,
        SystemError = -1,
        RuntimeInconsistency = -2,
        DataInconsistency = -3,
        ConnectionLoss = -4,
        MarshallingError = -5,
        Unimplemented = -6,
        OperationTimeout = -7,
        BadArguments = -8,
        UnknownSession = -12,
        NewConfigNoQuorum = -13,
        ReconfigInProgress = -14,
        ApiError = -100,
        NoNode = -101,
        NoAuth = -102,
        BadVersion = -103,
        NoChildrenForEphemerals = -108,
        NodeExists = -110,
        NotEmpty = -111,
        SessionExpired = -112,
        InvalidCallback = -113,
        InvalidAcl = -114,
        AuthFailed = -115,
        SessionMoved = -118,
        NotReadOnly = -119,
        EphemeralOnLocalSession = -120,
        NoWatcher = -121,
        RequestTimeout = -122,
        ReconfigDisabled = -123,
        SessionClosedRequireSaslAuth = -124,
        QuotaExceeded = -125,
        Throttled = -127,
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?} ({})", self, self.code())
    }
}

impl std::error::Error for ErrorCode {}

int_enum! {
    /// Watch event types (`Watcher.Event.EventType`).
    EventType : "event type" {
        None = -1,
        NodeCreated = 1,
        NodeDeleted = 2,
        NodeDataChanged = 3,
        NodeChildrenChanged = 4,
        DataWatchRemoved = 5,
        ChildWatchRemoved = 6,
        PersistentWatchRemoved = 7,
    }
}

int_enum! {
    /// Session states carried in watch events (`Watcher.Event.KeeperState`).
    KeeperState : "keeper state" {
        Disconnected = 0,
        SyncConnected = 3,
        AuthFailed = 4,
        ConnectedReadOnly = 5,
        SaslAuthenticated = 6,
        Expired = -112,
        Closed = 7,
    }
}

int_enum! {
    /// Create flags (`CreateMode`).
    CreateMode : "create mode" {
        Persistent = 0,
        Ephemeral = 1,
        PersistentSequential = 2,
        EphemeralSequential = 3,
        Container = 4,
        PersistentWithTtl = 5,
        PersistentSequentialWithTtl = 6,
    }
}

impl CreateMode {
    pub fn is_ephemeral(self) -> bool {
        matches!(
            self,
            CreateMode::Ephemeral | CreateMode::EphemeralSequential
        )
    }

    pub fn is_sequential(self) -> bool {
        matches!(
            self,
            CreateMode::PersistentSequential
                | CreateMode::EphemeralSequential
                | CreateMode::PersistentSequentialWithTtl
        )
    }

    pub fn is_container(self) -> bool {
        self == CreateMode::Container
    }

    pub fn is_ttl(self) -> bool {
        matches!(
            self,
            CreateMode::PersistentWithTtl | CreateMode::PersistentSequentialWithTtl
        )
    }
}

int_enum! {
    /// `addWatch` modes (`AddWatchMode`).
    AddWatchMode : "add watch mode" {
        Persistent = 0,
        PersistentRecursive = 1,
    }
}

int_enum! {
    /// `removeWatches` / `checkWatches` types (`Watcher.WatcherType`).
    WatcherType : "watcher type" {
        Children = 1,
        Data = 2,
        Any = 3,
    }
}

/// Permission bits (`ZooDefs.Perms`).
pub mod perms {
    pub const READ: i32 = 1;
    pub const WRITE: i32 = 2;
    pub const CREATE: i32 = 4;
    pub const DELETE: i32 = 8;
    pub const ADMIN: i32 = 16;
    pub const ALL: i32 = READ | WRITE | CREATE | DELETE | ADMIN;
}

/// Reserved xids (`ClientCnxn`).
pub mod xid {
    /// A watch event.
    pub const NOTIFICATION: i32 = -1;
    /// A heartbeat.
    pub const PING: i32 = -2;
    /// An addAuth request.
    pub const AUTH: i32 = -4;
    /// The setWatches a client sends after reconnecting.
    pub const SET_WATCHES: i32 = -8;
}

/// ZooKeeper protocol version in the connect handshake.
pub const PROTOCOL_VERSION: i32 = 0;

/// The `ephemeralOwner` a container node reports (`EphemeralType.CONTAINER_EPHEMERAL_OWNER`).
pub const CONTAINER_EPHEMERAL_OWNER: i64 = i64::MIN;

/// TTL nodes encode their TTL in `ephemeralOwner`: top byte 0xFF, TTL in the low 56 bits
/// (`EphemeralType.TTL`, extended form).
pub const TTL_OWNER_MASK: i64 = 0xFF00_0000_0000_0000_u64 as i64;
pub const TTL_MAX_MS: i64 = 0x00FF_FFFF_FFFF_FFFF;

/// Encodes a TTL the way ZooKeeper stores it in `ephemeralOwner`.
pub fn ttl_to_ephemeral_owner(ttl_ms: i64) -> i64 {
    debug_assert!(ttl_ms > 0 && ttl_ms <= TTL_MAX_MS);
    TTL_OWNER_MASK | ttl_ms
}

/// The TTL of a node whose `ephemeralOwner` encodes one.
pub fn ephemeral_owner_ttl_ms(owner: i64) -> Option<i64> {
    if owner != CONTAINER_EPHEMERAL_OWNER && (owner & TTL_OWNER_MASK) == TTL_OWNER_MASK {
        Some(owner & TTL_MAX_MS)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip() {
        for c in ErrorCode::ALL {
            assert_eq!(ErrorCode::try_from(c.code()).unwrap(), *c);
        }
        for c in OpCode::ALL {
            assert_eq!(OpCode::try_from(c.code()).unwrap(), *c);
        }
        assert!(OpCode::try_from(12345).is_err());
    }

    #[test]
    fn ttl_owner_encoding() {
        let o = ttl_to_ephemeral_owner(5000);
        assert_eq!(ephemeral_owner_ttl_ms(o), Some(5000));
        assert_eq!(ephemeral_owner_ttl_ms(0), None);
        assert_eq!(ephemeral_owner_ttl_ms(CONTAINER_EPHEMERAL_OWNER), None);
        assert_eq!(ephemeral_owner_ttl_ms(0x1234), None);
    }
}
