//! The sequential specification: one ZooKeeper-style versioned register.
//!
//! Data is interned per key (one `u32` per distinct byte string), so a state is a small
//! `Copy` value that hashes fast for the memo.

use std::collections::{HashMap, HashSet};

use crate::history::{FailReason, Op, OpRecord, Outcome, RegisterState, Ret};

/// The register as the search sees it. An absent register is always `{false, 0, 0}`
/// so that equal states compare equal.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct State {
    pub present: bool,
    pub data: u32,
    pub version: i32,
}

pub(crate) const ABSENT: State = State {
    present: false,
    data: 0,
    version: 0,
};

/// One op with its outcome, reduced to what constrains the register. `expected == -1`
/// matches any version, as in ZooKeeper's setData.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Step {
    /// A read that saw this data and version.
    ReadOk {
        data: u32,
        version: i32,
    },
    /// getData or setData answered NoNode: the register was absent.
    SawAbsent,
    /// create answered NodeExists: the register was present.
    SawPresent,
    /// setData acknowledged with the version it produced.
    SetOk {
        expected: i32,
        data: u32,
        new_version: i32,
    },
    /// setData whose outcome is unknown: applied here if it would succeed here.
    SetUnknown {
        expected: i32,
        data: u32,
    },
    /// setData refused with BadVersion: present with another version.
    BadVersion {
        expected: i32,
    },
    CreateOk {
        data: u32,
    },
    CreateUnknown {
        data: u32,
    },
    /// An answer a correct server never gives to this op (BadVersion to a read,
    /// NodeExists to setData, ...): no state explains it.
    Impossible,
}

/// The sequential specification. `None`: the op cannot have had this outcome in this
/// state. Versions wrap as Java's `int` does (no overflow panic).
pub(crate) fn step(s: State, op: Step) -> Option<State> {
    let matches = |expected: i32| expected == -1 || s.version == expected;
    match op {
        Step::ReadOk { data, version } => {
            (s.present && s.data == data && s.version == version).then_some(s)
        }
        Step::SawAbsent => (!s.present).then_some(s),
        Step::SawPresent => s.present.then_some(s),
        Step::SetOk {
            expected,
            data,
            new_version,
        } => {
            let next = s.version.wrapping_add(1);
            (s.present && matches(expected) && new_version == next).then_some(State {
                present: true,
                data,
                version: next,
            })
        }
        Step::SetUnknown { expected, data } => {
            if s.present && matches(expected) {
                Some(State {
                    present: true,
                    data,
                    version: s.version.wrapping_add(1),
                })
            } else {
                // It failed (NoNode / BadVersion): no effect.
                Some(s)
            }
        }
        // -1 never gets BadVersion from a correct server: `matches` is then true.
        Step::BadVersion { expected } => (s.present && !matches(expected)).then_some(s),
        Step::Impossible => None,
        Step::CreateOk { data } => (!s.present).then_some(State {
            present: true,
            data,
            version: 0,
        }),
        Step::CreateUnknown { data } => Some(if s.present {
            s
        } else {
            State {
                present: true,
                data,
                version: 0,
            }
        }),
    }
}

/// Data no successful read returned is never compared with anything, so the search
/// gives it all one id: states that differ only in such data are then equal, and so
/// are unknown writes of it (which the search treats as interchangeable).
pub(crate) struct Canon {
    read: HashSet<u32>,
    unread: u32,
}

impl Canon {
    pub fn new(steps: impl Iterator<Item = Step>, unread: u32) -> Self {
        let read = steps
            .filter_map(|s| match s {
                Step::ReadOk { data, .. } => Some(data),
                _ => None,
            })
            .collect();
        Canon { read, unread }
    }

    fn data(&self, data: u32) -> u32 {
        if self.read.contains(&data) {
            data
        } else {
            self.unread
        }
    }

    pub fn state(&self, s: State) -> State {
        if s.present {
            State {
                data: self.data(s.data),
                ..s
            }
        } else {
            s
        }
    }

    pub fn step(&self, step: Step) -> Step {
        match step {
            Step::SetOk {
                expected,
                data,
                new_version,
            } => Step::SetOk {
                expected,
                data: self.data(data),
                new_version,
            },
            Step::SetUnknown { expected, data } => Step::SetUnknown {
                expected,
                data: self.data(data),
            },
            Step::CreateOk { data } => Step::CreateOk {
                data: self.data(data),
            },
            Step::CreateUnknown { data } => Step::CreateUnknown {
                data: self.data(data),
            },
            Step::ReadOk { .. }
            | Step::SawAbsent
            | Step::SawPresent
            | Step::BadVersion { .. }
            | Step::Impossible => step,
        }
    }
}

/// Per-key data interning.
#[derive(Default)]
pub(crate) struct Interner {
    ids: HashMap<Vec<u8>, u32>,
    values: Vec<Vec<u8>>,
}

impl Interner {
    /// `None` past `u32::MAX` distinct values (the caller reports the key too big).
    pub fn intern(&mut self, data: &[u8]) -> Option<u32> {
        if let Some(id) = self.ids.get(data) {
            return Some(*id);
        }
        let id = u32::try_from(self.values.len()).ok()?;
        self.ids.insert(data.to_vec(), id);
        self.values.push(data.to_vec());
        Some(id)
    }

    pub fn state(&mut self, r: &RegisterState) -> Option<State> {
        Some(match r {
            RegisterState::Absent => ABSENT,
            RegisterState::Present { data, version } => State {
                present: true,
                data: self.intern(data)?,
                version: *version,
            },
        })
    }

    /// An id no interned value has (`None` if all are taken).
    pub fn fresh(&self) -> Option<u32> {
        u32::try_from(self.values.len()).ok()
    }

    pub fn register(&self, s: State) -> RegisterState {
        if !s.present {
            return RegisterState::Absent;
        }
        RegisterState::Present {
            data: self
                .values
                .get(s.data as usize)
                .cloned()
                .unwrap_or_default(),
            version: s.version,
        }
    }
}

/// What an op means for the search.
pub(crate) enum Reduced {
    /// Constrains the register; `returns` is false when it may take effect at any time
    /// after its invocation (its return is at +infinity).
    Step { step: Step, returns: bool },
    /// Constrains nothing: dropped before the search (an unknown read, a failure that
    /// observed nothing).
    Nothing,
}

/// Reduces a validated record. `None`: interning overflowed.
///
/// Only `SetUnknown` and `CreateUnknown` come out with `returns: false`, and both are
/// total: the search relies on that to append every op of unknown outcome at the end.
pub(crate) fn reduce(r: &OpRecord, interner: &mut Interner) -> Option<Reduced> {
    // Never completed counts as unknown whatever the outcome field says (only a
    // deserialized history can have an outcome without a completion time).
    let outcome = match r.complete_ns {
        Some(_) => &r.outcome,
        None => &Outcome::Unknown,
    };
    let done = |step| Reduced::Step {
        step,
        returns: true,
    };
    Some(match (&r.op, outcome) {
        (_, Outcome::Fail(FailReason::Other)) => Reduced::Nothing,
        // A parent missing says nothing about this register.
        (Op::Create { .. }, Outcome::Fail(FailReason::NoNode)) => Reduced::Nothing,
        (_, Outcome::Fail(FailReason::NoNode)) => done(Step::SawAbsent),
        (Op::Create { .. }, Outcome::Fail(FailReason::NodeExists)) => done(Step::SawPresent),
        (
            Op::Cas {
                expected_version, ..
            },
            Outcome::Fail(FailReason::BadVersion),
        ) => done(Step::BadVersion {
            expected: *expected_version,
        }),
        // Answers ZooKeeper never gives to these ops (BadVersion only answers a
        // setData with a version, NodeExists only a create): the history is a
        // violation whatever else happened.
        (_, Outcome::Fail(FailReason::BadVersion | FailReason::NodeExists)) => {
            done(Step::Impossible)
        }
        (Op::Read, Outcome::Unknown) => Reduced::Nothing,
        (Op::Read, Outcome::Ok(Ret::Read { data, version })) => done(Step::ReadOk {
            data: interner.intern(data)?,
            version: *version,
        }),
        (Op::Write { value }, outcome) | (Op::Cas { value, .. }, outcome) => {
            let expected = match &r.op {
                Op::Cas {
                    expected_version, ..
                } => *expected_version,
                _ => -1,
            };
            let data = interner.intern(value)?;
            match outcome {
                Outcome::Ok(Ret::Written { version }) => done(Step::SetOk {
                    expected,
                    data,
                    new_version: *version,
                }),
                // Unknown, or (only if validation was skipped) a mismatched result.
                _ => Reduced::Step {
                    step: Step::SetUnknown { expected, data },
                    returns: false,
                },
            }
        }
        (Op::Create { value }, outcome) => {
            let data = interner.intern(value)?;
            match outcome {
                Outcome::Ok(Ret::Created) => done(Step::CreateOk { data }),
                _ => Reduced::Step {
                    step: Step::CreateUnknown { data },
                    returns: false,
                },
            }
        }
        // A read with a result of another kind: validation refuses it first.
        (Op::Read, Outcome::Ok(_)) => Reduced::Nothing,
    })
}
