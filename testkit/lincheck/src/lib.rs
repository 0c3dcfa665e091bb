//! # switchyard-lincheck: is a recorded history linearizable?
//!
//! Fault tests run a concurrent workload against coordd (reads, writes and
//! compare-and-set through ZooKeeper `setData` with versions, on a few znodes), record
//! every operation's invocation and outcome with times, and ask [`check`] whether some
//! single order of the operations explains every result and respects real time (an op
//! that completed before another was invoked comes first). Zero violations is the
//! acceptance bar of issue 5.
//!
//! ## The model
//!
//! One register per key (a znode path), checked independently of the others
//! (linearizability is compositional, so a history is linearizable iff each key's
//! sub-history is). A register is absent or holds data (`Vec<u8>`) and ZooKeeper's
//! `Stat.version` (`i32`). Every key starts absent unless
//! [`History::set_initial`] says otherwise.
//!
//! | op | ok | definite failure |
//! |---|---|---|
//! | [`Op::Read`] (getData) | [`Ret::Read`]: data and version seen | `NoNode`: it was absent |
//! | [`Op::Write`] (setData, version -1) | [`Ret::Written`]: new version = old + 1 | `NoNode` |
//! | [`Op::Cas`] (setData, version v) | [`Ret::Written`]: version was v (or v = -1), new = v + 1 | `BadVersion`: present with another version; `NoNode` |
//! | [`Op::Create`] | [`Ret::Created`]: it was absent; now version 0 | `NodeExists`: it was present |
//!
//! A failure is "definitely not applied", and its reason is an observation the server
//! is held to: a `BadVersion` while the version matched is a violation.
//! [`FailReason::Other`] (e.g. NoAuth) observes nothing and is ignored, as is
//! `NoNode` on a create (a missing parent). A reason ZooKeeper never gives for the op
//! (BadVersion to getData or a -1 setData, NodeExists to anything but create) is a
//! violation. Versions wrap like Java's `int`.
//!
//! ## Unknown outcomes
//!
//! An op that timed out, lost its connection, or never completed
//! ([`Outcome::Unknown`], or no [`History::complete`] call) may have taken effect at
//! any time after its invocation, or never. As in Porcupine it is given a return at
//! +infinity: a write, CAS or create may be linearized anywhere after its invocation,
//! and "never" is the same as last. Linearized at a point where it would fail (a CAS
//! whose version no longer matches), it changes nothing. An unknown read observes
//! nothing and is dropped. Plain WGL pays dearly for unknown writes (each is
//! concurrent with everything after it); see the reductions below.
//!
//! ## The search
//!
//! Wing and Gong's depth-first search for a linearization with Lowe's memoization
//! (Porcupine's algorithm): a configuration (set of ops linearized, register state)
//! explored once is never explored again. On top of it, for this model (each is a
//! proven no-loss pruning, cross-checked against a brute-force reference in
//! `tests/reference.rs` and against plain WGL in `wgl.rs`'s unit test):
//!
//! - ops of unknown outcome are tried only after every completed candidate failed at
//!   a node, and never where they would change nothing (that is the same as "last");
//! - a completed op that is accepted and changes nothing (a read, a BadVersion) is
//!   forced: it is the only child tried;
//! - data no read returned is one canonical value, and unknown ops with identical
//!   effects are interchangeable: only the first of them is tried.
//!
//! So timeouts are cheap: 10,000 ops on 5 keys from 8 clients with 10% (even 30%)
//! of them unknown check in about 0.1-0.2 s, in a debug build too. What costs is
//! concurrency on one key: all 10,000 ops on one key from 8 always-busy clients with
//! 10% unknown take ~150 million steps (~2 s release); from 32 clients the memo
//! outgrows [`MEMO_BYTES_MAX`]. The search is still exponential in the worst case,
//! so it is bounded by [`Limits`]; a search that hits a limit answers
//! [`CheckResult::Inconclusive`], never a false verdict. A key is checked to the end
//! (linearizable or not) before the next; a violation on any key is returned at once,
//! even if an earlier key was inconclusive.
//!
//! A [`Violation`] explains itself (its `Display` is meant for a test failure
//! message): the deepest point the search reached, the register there, and the
//! completed ops none of which can come next. Dump the whole history with the `serde`
//! feature to look further.
//!
//! ## Recording ZooKeeper results
//!
//! | client sees | record |
//! |---|---|
//! | a reply | `Ok(..)` with the data / `Stat.version` it carries |
//! | BadVersion, NoNode, NodeExists | `Fail(reason)` |
//! | an error that means the request was refused before it was applied (NoAuth, BadArguments, ...) | `Fail(Other)` |
//! | ConnectionLoss, OperationTimeout, SessionExpired, SessionMoved, a client-side timeout, the test ending first, anything you are not sure of | `Unknown` (or never call `complete`) |
//!
//! Recording a maybe-applied op as `Fail` can only produce false violations; recording
//! it as `Unknown` costs search time, never a wrong verdict.
//!
//! Not modeled: delete, multi, ephemeral and sequential nodes, watches. A workload
//! that uses them on a checked key needs a model extension first.
//!
//! ## Times
//!
//! `u64` nanoseconds of one monotonic clock with any origin, e.g.
//! [`elapsed_ns`]`(start)` of a test-wide `Instant`. Only order matters.
//! An op invoked at the very nanosecond another completed is concurrent with it.
//! Record the invocation time before sending and the completion time after the reply
//! is seen, or real time is misrepresented and the check means nothing.
//!
//! ## Example
//!
//! ```
//! use switchyard_lincheck::*;
//!
//! let mut h = History::new();
//! h.set_initial("/r", RegisterState::Present { data: b"a".to_vec(), version: 0 });
//! let w = h.invoke(1, "/r", Op::Cas { expected_version: 0, value: b"b".to_vec() }, 10);
//! let r = h.invoke(2, "/r", Op::Read, 15);
//! h.complete(r, Outcome::Ok(Ret::Read { data: b"b".to_vec(), version: 1 }), 20).unwrap();
//! h.complete(w, Outcome::Ok(Ret::Written { version: 1 }), 30).unwrap();
//! // A read after the CAS completed may not see the old value.
//! h.record(3, "/r", Op::Read, 40, Outcome::Ok(Ret::Read { data: b"a".to_vec(), version: 0 }), 50).unwrap();
//! let result = check(&h, &Limits::default()).unwrap();
//! assert!(matches!(result, CheckResult::Violation(_)), "{result}");
//! ```

mod history;
mod model;
mod wgl;

use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, Instant};

#[cfg(feature = "serde")]
use serde::{Deserialize, Serialize};

pub use history::{
    FailReason, History, HistoryError, Op, OpId, OpRecord, Outcome, RegisterState, Ret,
};

/// Nanoseconds since `start`: the clock for [`History`] times (saturates after 584
/// years rather than wrapping as an `as` cast would).
pub fn elapsed_ns(start: Instant) -> u64 {
    u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// Default of [`Limits::search_steps_max`]. A 2,000-op key from 8 clients takes a
/// few thousand steps, even with 10% timeouts; 10,000 ops on one key with 10%
/// timeouts about 150 million. A step is ~10 ns in a release build, ~100 ns in a
/// debug one. Unlike the time limit, this bound gives the same answer on any
/// machine.
pub const SEARCH_STEPS_MAX: u64 = 500_000_000;
/// Default of [`Limits::memo_bytes_max`]: well inside a 24 GiB test machine shared
/// with the system under test. A memo entry holds a bitset of all the key's ops, so
/// a hot key with many ops and many concurrent clients is what fills it (10,000 ops
/// on one key from 32 always-busy clients does).
pub const MEMO_BYTES_MAX: u64 = 1 << 30;
/// Default of [`Limits::search_time_max_ms`]: a fault test should fail, not hang.
pub const SEARCH_TIME_MAX_MS: u64 = 120_000;

/// Bounds on the search. Hitting one gives [`CheckResult::Inconclusive`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Search steps (entries visited) per key.
    pub search_steps_max: u64,
    /// Estimated memo size per key (configurations explored x their size).
    pub memo_bytes_max: u64,
    /// Wall-clock time for the whole check, all keys together.
    pub search_time_max_ms: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            search_steps_max: SEARCH_STEPS_MAX,
            memo_bytes_max: MEMO_BYTES_MAX,
            search_time_max_ms: SEARCH_TIME_MAX_MS,
        }
    }
}

/// Which limit ended a search.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(Serialize, Deserialize))]
pub enum LimitHit {
    SearchSteps,
    MemoBytes,
    SearchTime,
}

/// How many ops before the stuck point a [`Violation`] shows.
pub const VIOLATION_CONTEXT_OPS: usize = 8;

/// Why one key's sub-history has no linearization.
///
/// The explanation is the deepest point the search reached (the most completed ops
/// explained): `linearized_len` of the key's ops can be put in an order that explains
/// them, leaving the register in `state`; from there every op in `stuck` (the
/// completed ops not yet linearized that were invoked before the earliest completion
/// among them, so one of them must come next) either contradicts `state` or leads to a
/// dead end, even after any of the `pending_unknown` ops of unknown outcome invoked by
/// then. The bug is usually between `context` and `stuck`.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(Serialize, Deserialize))]
pub struct Violation {
    pub key: String,
    /// How many of the key's ops the longest partial linearization holds.
    pub linearized_len: usize,
    /// Its last (up to [`VIOLATION_CONTEXT_OPS`]) ops, in linearization order.
    pub context: Vec<OpRecord>,
    /// The register after the partial linearization.
    pub state: RegisterState,
    /// The completed candidates for the next op, none of which fits, in invocation
    /// order.
    pub stuck: Vec<OpRecord>,
    /// Ops of unknown outcome that could have taken effect here; none helped.
    pub pending_unknown: usize,
}

/// The verdict.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(Serialize, Deserialize))]
pub enum CheckResult {
    Linearizable,
    Violation(Violation),
    /// A limit stopped the search on `key` before it could decide; no violation was
    /// found on the keys that were decided.
    Inconclusive {
        key: String,
        limit: LimitHit,
    },
}

impl CheckResult {
    pub fn is_linearizable(&self) -> bool {
        matches!(self, CheckResult::Linearizable)
    }
}

/// Checks `history` key by key (in key order). `Err` only for a malformed history
/// (see [`HistoryError`]), never for what the server did.
pub fn check(history: &History, limits: &Limits) -> Result<CheckResult, HistoryError> {
    history.validate()?;
    let started = Instant::now();
    let deadline = started.checked_add(Duration::from_millis(limits.search_time_max_ms));

    let mut by_key: BTreeMap<&str, Vec<&OpRecord>> = BTreeMap::new();
    for r in history.ops() {
        by_key.entry(r.key.as_str()).or_default().push(r);
    }

    let mut inconclusive = None;
    for (key, records) in by_key {
        let budget = wgl::Budget {
            steps_max: limits.search_steps_max,
            memo_bytes_max: limits.memo_bytes_max,
            deadline,
        };
        match check_key(history, key, &records, &budget)? {
            KeyResult::Linearizable => {}
            KeyResult::Violation(v) => return Ok(CheckResult::Violation(v)),
            KeyResult::Inconclusive(limit) => {
                if limit == LimitHit::SearchTime {
                    // The clock is shared: no later key has time left either.
                    return Ok(CheckResult::Inconclusive {
                        key: key.to_string(),
                        limit,
                    });
                }
                inconclusive.get_or_insert((key.to_string(), limit));
            }
        }
    }
    Ok(match inconclusive {
        Some((key, limit)) => CheckResult::Inconclusive { key, limit },
        None => CheckResult::Linearizable,
    })
}

enum KeyResult {
    Linearizable,
    Violation(Violation),
    Inconclusive(LimitHit),
}

fn check_key(
    history: &History,
    key: &str,
    records: &[&OpRecord],
    budget: &wgl::Budget,
) -> Result<KeyResult, HistoryError> {
    let too_many = || HistoryError::TooManyOps {
        key: key.to_string(),
    };
    // Two list entries per op and one sentinel must fit in u32 indices.
    if records.len() >= (u32::MAX / 2 - 1) as usize {
        return Err(too_many());
    }
    let mut interner = model::Interner::default();
    let init = interner.state(&history.initial(key)).ok_or_else(too_many)?;
    let mut ops = Vec::with_capacity(records.len());
    let mut origin = Vec::with_capacity(records.len());
    for r in records {
        match model::reduce(r, &mut interner).ok_or_else(too_many)? {
            model::Reduced::Nothing => {}
            model::Reduced::Step { step, returns } => {
                ops.push(wgl::SearchOp {
                    step,
                    call_ns: r.invoke_ns,
                    return_ns: if returns { r.complete_ns } else { None },
                });
                origin.push(*r);
            }
        }
    }

    // The search runs on canonical data (see `model::Canon`); it accepts exactly the
    // same sequences, and the explanation replays the real data.
    let canon = model::Canon::new(
        ops.iter().map(|o| o.step),
        interner.fresh().ok_or_else(too_many)?,
    );
    let canonical: Vec<wgl::SearchOp> = ops
        .iter()
        .map(|o| wgl::SearchOp {
            step: canon.step(o.step),
            ..*o
        })
        .collect();

    Ok(match wgl::search(&canonical, canon.state(init), budget) {
        wgl::SearchResult::Linearizable => KeyResult::Linearizable,
        wgl::SearchResult::Inconclusive(limit) => KeyResult::Inconclusive(limit),
        wgl::SearchResult::Violation { mut prefix } => {
            // Unknown ops at the end were the search's last guesses there, not part of
            // the explanation.
            while prefix
                .last()
                .is_some_and(|&i| ops.get(i as usize).is_some_and(|o| o.return_ns.is_none()))
            {
                prefix.pop();
            }
            let mut state = init;
            for &i in &prefix {
                if let Some(next) = ops.get(i as usize).and_then(|o| model::step(state, o.step)) {
                    state = next;
                }
            }
            let record = |i: u32| origin.get(i as usize).map(|r| (*r).clone());
            let mut in_prefix = vec![false; ops.len()];
            for &i in &prefix {
                if let Some(slot) = in_prefix.get_mut(i as usize) {
                    *slot = true;
                }
            }
            // The candidates: not linearized, invoked before the first return of an op
            // not linearized (that op itself included). Unknown ones are only counted:
            // there are usually many, and none helped.
            let mut stuck = Vec::new();
            let mut pending_unknown = 0;
            for (i, is_call) in wgl::sorted_entries(&ops) {
                if in_prefix.get(i as usize).copied().unwrap_or(true) {
                    continue;
                }
                if !is_call {
                    break;
                }
                if ops.get(i as usize).is_some_and(|o| o.return_ns.is_none()) {
                    pending_unknown += 1;
                } else {
                    stuck.extend(record(i));
                }
            }
            let skip = prefix.len().saturating_sub(VIOLATION_CONTEXT_OPS);
            KeyResult::Violation(Violation {
                key: key.to_string(),
                linearized_len: prefix.len(),
                context: prefix[skip..].iter().filter_map(|&i| record(i)).collect(),
                state: interner.register(state),
                stuck,
                pending_unknown,
            })
        }
    })
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "not linearizable on key {}: {} op(s) linearize, the last {} being:",
            self.key,
            self.linearized_len,
            self.context.len()
        )?;
        for r in &self.context {
            writeln!(f, "  {r}")?;
        }
        writeln!(
            f,
            "leaving the register {}; none of these fits next (nor after any of {} \
             op(s) of unknown outcome pending):",
            self.state, self.pending_unknown
        )?;
        for r in &self.stuck {
            writeln!(f, "  {r}")?;
        }
        Ok(())
    }
}

impl fmt::Display for CheckResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CheckResult::Linearizable => write!(f, "linearizable"),
            CheckResult::Violation(v) => write!(f, "{v}"),
            CheckResult::Inconclusive { key, limit } => {
                write!(f, "inconclusive: the search on key {key} hit {limit:?}")
            }
        }
    }
}
