//! The openraft type configuration. Private: no openraft type crosses the crate's API.

use bytes::Bytes;

openraft::declare_raft_types!(
    /// Payloads and apply outputs are opaque bytes (the server encodes its batches of txns);
    /// a snapshot is the applier's image held in memory (slice 2 may make it a file).
    pub TypeConfig:
        D = Bytes,
        R = Bytes,
        NodeId = u64,
        Node = openraft::BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Bytes,
        AsyncRuntime = openraft::TokioRuntime,
);

pub(crate) type LogId = openraft::LogId<u64>;
pub(crate) type Vote = openraft::Vote<u64>;
pub(crate) type Entry = openraft::Entry<TypeConfig>;
pub(crate) type StorageError = openraft::StorageError<u64>;
pub(crate) type StoredMembership = openraft::StoredMembership<u64, openraft::BasicNode>;
pub(crate) type SnapshotMeta = openraft::SnapshotMeta<u64, openraft::BasicNode>;
pub(crate) type Snapshot = openraft::Snapshot<TypeConfig>;
pub(crate) type Raft = openraft::Raft<TypeConfig>;
