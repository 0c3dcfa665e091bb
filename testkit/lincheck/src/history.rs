//! What a workload records: operations on keyed registers, their outcomes and times.

use std::collections::BTreeMap;
use std::fmt;

#[cfg(feature = "serde")]
use serde::{Deserialize, Serialize};

/// Index of an operation in its [`History`], in invocation-recording order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "serde", derive(Serialize, Deserialize))]
pub struct OpId(pub usize);

impl fmt::Display for OpId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// An operation on one register (one znode), as the client sent it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(Serialize, Deserialize))]
pub enum Op {
    /// getData: answers the data and `Stat.version`, or NoNode.
    Read,
    /// setData with version -1: replaces the data whatever the version; the new version
    /// is the old one + 1.
    Write { value: Vec<u8> },
    /// setData with a version: replaces the data only if `Stat.version ==
    /// expected_version` (-1 matches any version, as in ZooKeeper), else BadVersion.
    Cas {
        expected_version: i32,
        value: Vec<u8>,
    },
    /// create (persistent): succeeds only if the node is absent; the new node has
    /// version 0. NoNode (a missing parent) says nothing about this register.
    Create { value: Vec<u8> },
}

/// What a successful operation returned.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(Serialize, Deserialize))]
pub enum Ret {
    /// The answer to [`Op::Read`].
    Read { data: Vec<u8>, version: i32 },
    /// The answer to [`Op::Write`] and [`Op::Cas`]: `Stat.version` after the write.
    Written { version: i32 },
    /// The answer to [`Op::Create`].
    Created,
}

/// Why an operation definitely did not take effect. The reason is an observation the
/// checker holds the server to (BadVersion says the version differed at that moment).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(Serialize, Deserialize))]
pub enum FailReason {
    /// The node existed and its version was not the expected one.
    BadVersion,
    /// The node did not exist (for `Create`: its parent did not, which says nothing
    /// about this register).
    NoNode,
    /// The node existed.
    NodeExists,
    /// Refused for a reason that says nothing about the register (e.g. NoAuth, a
    /// request rejected before it was ordered). The op imposes no constraint.
    Other,
}

/// How an operation ended.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(Serialize, Deserialize))]
pub enum Outcome {
    /// It took effect (a read: it observed) and returned this.
    Ok(Ret),
    /// It definitely did not take effect.
    Fail(FailReason),
    /// Timeout, connection loss, session expiry, never answered: it may have taken
    /// effect at any time after its invocation, or never.
    Unknown,
}

/// One recorded operation.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(Serialize, Deserialize))]
pub struct OpRecord {
    pub id: OpId,
    /// Who issued it; only shown in explanations (the checker orders ops by time alone,
    /// so one client may have several ops in flight, as ZooKeeper pipelines them).
    pub client: u64,
    /// The register: a znode path.
    pub key: String,
    pub op: Op,
    pub invoke_ns: u64,
    /// `None` while in flight (checked as [`Outcome::Unknown`]).
    pub complete_ns: Option<u64>,
    pub outcome: Outcome,
}

/// A register's contents: absent, or data with ZooKeeper's `Stat.version`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(Serialize, Deserialize))]
pub enum RegisterState {
    #[default]
    Absent,
    Present {
        data: Vec<u8>,
        version: i32,
    },
}

/// Input the checker refuses: a history no real run can produce. Never a verdict about
/// the server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HistoryError {
    /// No op has this id.
    UnknownOp(OpId),
    /// The op was already completed.
    AlreadyCompleted(OpId),
    /// The completion time is before the invocation time.
    CompletedBeforeInvoked {
        op: OpId,
        invoke_ns: u64,
        complete_ns: u64,
    },
    /// An `Ok` result of the wrong kind for the op (e.g. `Written` for a `Read`).
    ResultMismatch(OpId),
    /// `ops[i].id != OpId(i)` (only a deserialized history can have this).
    IdOutOfPlace(OpId),
    /// More ops on one key than the checker indexes (u32).
    TooManyOps { key: String },
}

impl fmt::Display for HistoryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HistoryError::UnknownOp(id) => write!(f, "no operation {id}"),
            HistoryError::AlreadyCompleted(id) => write!(f, "operation {id} already completed"),
            HistoryError::CompletedBeforeInvoked {
                op,
                invoke_ns,
                complete_ns,
            } => write!(
                f,
                "operation {op} completed at {complete_ns} ns, before its invocation at {invoke_ns} ns"
            ),
            HistoryError::ResultMismatch(id) => {
                write!(f, "operation {id}: result of the wrong kind for the op")
            }
            HistoryError::IdOutOfPlace(id) => write!(f, "operation {id} is out of place"),
            HistoryError::TooManyOps { key } => write!(f, "too many operations on key {key}"),
        }
    }
}

impl std::error::Error for HistoryError {}

/// A recorded concurrent history.
///
/// Times are nanoseconds of one monotonic clock with any origin (e.g.
/// `Instant::duration_since(start)` of the test); only their order matters. An op
/// invoked at the very time another completed counts as concurrent with it.
///
/// Recording from many tasks: share it behind a `Mutex`, or record per task and
/// append with [`History::invoke`] / [`History::complete`] afterwards.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(Serialize, Deserialize))]
pub struct History {
    ops: Vec<OpRecord>,
    /// Registers that exist before the first op; every other key starts absent.
    initial: BTreeMap<String, RegisterState>,
}

impl History {
    pub fn new() -> Self {
        Self::default()
    }

    /// The register's contents before the history starts (default: absent).
    pub fn set_initial(&mut self, key: impl Into<String>, state: RegisterState) {
        self.initial.insert(key.into(), state);
    }

    /// Records an invocation; the op is [`Outcome::Unknown`] until completed.
    pub fn invoke(&mut self, client: u64, key: impl Into<String>, op: Op, invoke_ns: u64) -> OpId {
        let id = OpId(self.ops.len());
        self.ops.push(OpRecord {
            id,
            client,
            key: key.into(),
            op,
            invoke_ns,
            complete_ns: None,
            outcome: Outcome::Unknown,
        });
        id
    }

    /// Records how an op ended. Completing with [`Outcome::Unknown`] is allowed (a
    /// timeout); its time is kept for display only.
    pub fn complete(
        &mut self,
        id: OpId,
        outcome: Outcome,
        complete_ns: u64,
    ) -> Result<(), HistoryError> {
        let record = self.ops.get_mut(id.0).ok_or(HistoryError::UnknownOp(id))?;
        if record.complete_ns.is_some() {
            return Err(HistoryError::AlreadyCompleted(id));
        }
        if complete_ns < record.invoke_ns {
            return Err(HistoryError::CompletedBeforeInvoked {
                op: id,
                invoke_ns: record.invoke_ns,
                complete_ns,
            });
        }
        if !result_fits(&record.op, &outcome) {
            return Err(HistoryError::ResultMismatch(id));
        }
        record.complete_ns = Some(complete_ns);
        record.outcome = outcome;
        Ok(())
    }

    /// Invoke and complete in one call (a task that recorded its own op).
    pub fn record(
        &mut self,
        client: u64,
        key: impl Into<String>,
        op: Op,
        invoke_ns: u64,
        outcome: Outcome,
        complete_ns: u64,
    ) -> Result<OpId, HistoryError> {
        let id = self.invoke(client, key, op, invoke_ns);
        match self.complete(id, outcome, complete_ns) {
            Ok(()) => Ok(id),
            Err(e) => {
                // Leave no half-recorded op behind.
                self.ops.pop();
                Err(e)
            }
        }
    }

    pub fn ops(&self) -> &[OpRecord] {
        &self.ops
    }

    pub fn get(&self, id: OpId) -> Option<&OpRecord> {
        self.ops.get(id.0)
    }

    pub fn initial(&self, key: &str) -> RegisterState {
        self.initial.get(key).cloned().unwrap_or_default()
    }

    pub fn len(&self) -> usize {
        self.ops.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// Everything [`History::complete`] checks, again: a deserialized history skipped
    /// the builder.
    pub(crate) fn validate(&self) -> Result<(), HistoryError> {
        for (i, r) in self.ops.iter().enumerate() {
            if r.id != OpId(i) {
                return Err(HistoryError::IdOutOfPlace(r.id));
            }
            if let Some(t) = r.complete_ns {
                if t < r.invoke_ns {
                    return Err(HistoryError::CompletedBeforeInvoked {
                        op: r.id,
                        invoke_ns: r.invoke_ns,
                        complete_ns: t,
                    });
                }
            }
            if !result_fits(&r.op, &r.outcome) {
                return Err(HistoryError::ResultMismatch(r.id));
            }
        }
        Ok(())
    }
}

fn result_fits(op: &Op, outcome: &Outcome) -> bool {
    match outcome {
        Outcome::Ok(ret) => matches!(
            (op, ret),
            (Op::Read, Ret::Read { .. })
                | (Op::Write { .. } | Op::Cas { .. }, Ret::Written { .. })
                | (Op::Create { .. }, Ret::Created)
        ),
        Outcome::Fail(_) | Outcome::Unknown => true,
    }
}

/// Bytes as text when they are printable ASCII, else hex: explanations stay readable
/// for the usual small test values.
pub(crate) struct ShowBytes<'a>(pub &'a [u8]);

impl fmt::Display for ShowBytes<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self
            .0
            .iter()
            .all(|b| (0x20..0x7f).contains(b) && *b != b'"')
        {
            // Every byte is ASCII, so this is valid UTF-8.
            write!(f, "\"{}\"", String::from_utf8_lossy(self.0))
        } else {
            write!(f, "0x")?;
            for b in self.0 {
                write!(f, "{b:02x}")?;
            }
            Ok(())
        }
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Op::Read => write!(f, "read"),
            Op::Write { value } => write!(f, "write({})", ShowBytes(value)),
            Op::Cas {
                expected_version,
                value,
            } => write!(f, "cas(v{expected_version} -> {})", ShowBytes(value)),
            Op::Create { value } => write!(f, "create({})", ShowBytes(value)),
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Ok(Ret::Read { data, version }) => {
                write!(f, "ok {} v{version}", ShowBytes(data))
            }
            Outcome::Ok(Ret::Written { version }) => write!(f, "ok v{version}"),
            Outcome::Ok(Ret::Created) => write!(f, "ok created"),
            Outcome::Fail(reason) => write!(f, "fail {reason:?}"),
            Outcome::Unknown => write!(f, "unknown"),
        }
    }
}

impl fmt::Display for RegisterState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RegisterState::Absent => write!(f, "absent"),
            RegisterState::Present { data, version } => {
                write!(f, "{} v{version}", ShowBytes(data))
            }
        }
    }
}

impl fmt::Display for OpRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} client {} {} -> {} [{} ns, ",
            self.id, self.client, self.op, self.outcome, self.invoke_ns
        )?;
        match (&self.outcome, self.complete_ns) {
            // An unknown op may take effect at any later time.
            (Outcome::Unknown, _) | (_, None) => write!(f, "inf)"),
            (_, Some(t)) => write!(f, "{t} ns]"),
        }
    }
}
