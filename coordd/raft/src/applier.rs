//! What the server implements: the replicated state machine as seen from the log.

use std::future::Future;

use bytes::Bytes;
use thiserror::Error;

/// One committed log entry, handed to [`Applier::apply`] in log order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogEntry {
    /// The entry's position in the log. Dense and rising: every entry is handed over, including
    /// those without a payload, so the applier can track the log's applied index exactly (a
    /// [`Member::read_index`](crate::Member::read_index) can be the index of a leader's blank
    /// entry).
    pub index: u64,
    /// The term of the leader that appended it.
    pub term: u64,
    pub data: EntryData,
}

/// What a log entry carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EntryData {
    /// A payload given to [`Member::propose`](crate::Member::propose), byte for byte.
    Payload(Bytes),
    /// Appended by every new leader to commit its term; no effect on the state machine.
    Blank,
    /// A membership configuration (the initial one, or a change).
    Membership(Membership),
}

/// A membership configuration as recorded in the log.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Membership {
    /// Voting members, ascending. During a joint change, the members of both configurations.
    pub voters: Vec<u64>,
    /// Non-voting members, ascending.
    pub learners: Vec<u64>,
    /// Every member's (voters' and learners') peer address, as the membership records it.
    pub addrs: std::collections::BTreeMap<u64, String>,
    /// A joint configuration: a change between two voter sets is under way.
    pub joint: bool,
}

/// A failure of the applier. It is fatal to the member: a state machine that failed to apply a
/// committed entry can no longer be trusted to match the others, so the member stops and its
/// calls return [`ProposeError::Fatal`](crate::ProposeError::Fatal) and the like.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[error("applier: {0}")]
pub struct ApplierError(pub String);

/// The replicated state machine, implemented by the server.
///
/// Calls come from one task, one at a time, in log order; `apply` never sees an entry twice
/// unless `install_image` reset the state in between. The methods are async so that an
/// implementation can hand the work to the task that owns the state (the server's core) and
/// await its answer; apply gets whole batches so that costs one hand-off per batch, not per
/// entry.
pub trait Applier: Send + 'static {
    /// Applies committed entries, consecutive and in log order. Returns one output per entry, in
    /// the same order (an empty `Bytes` for nothing); the output of a proposed entry is returned
    /// to its proposer in [`Committed::output`](crate::Committed::output). Returning a different
    /// number of outputs is an error.
    fn apply(
        &mut self,
        entries: Vec<LogEntry>,
    ) -> impl Future<Output = Result<Vec<Bytes>, ApplierError>> + Send;

    /// A point-in-time image of the state: exactly the effect of every entry applied so far,
    /// nothing later. It is taken between two `apply` calls (openraft then builds and publishes
    /// the snapshot in another task while apply goes on), so it must not borrow the live state;
    /// make it cheap (a clone of a persistent structure, or an encoding of one) because apply
    /// waits for it.
    fn snapshot_image(&mut self) -> impl Future<Output = Result<Bytes, ApplierError>> + Send;

    /// Replaces the whole state with `image`, an image some member's `snapshot_image` made after
    /// applying the entries up to and including `last_index`. The next `apply` starts at
    /// `last_index + 1`. An image that does not decode is an error (and fatal, as above).
    fn install_image(
        &mut self,
        last_index: u64,
        image: Bytes,
    ) -> impl Future<Output = Result<(), ApplierError>> + Send;
}
