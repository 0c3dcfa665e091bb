//! Wing-Gong-Lowe search over one key's ops, memoized on (linearized set, state) as in
//! Lowe's "Testing for linearizability" and Porcupine.
//!
//! The history is a doubly linked list of call and return entries in time order. The
//! search walks it from the front: at a call it tries to linearize that op next (apply
//! it to the model, take both its entries out of the list, start again from the front);
//! at a return it is stuck, because that op had to be linearized before anything that
//! comes later, so it undoes the last op it linearized and tries the next candidate
//! after it. An empty list is a linearization.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::time::Instant;

use crate::model::{step, State, Step};
use crate::LimitHit;

/// One op of the key, ready to search.
#[derive(Clone, Copy, Debug)]
pub(crate) struct SearchOp {
    pub step: Step,
    pub call_ns: u64,
    /// `None`: returns at +infinity (outcome unknown).
    pub return_ns: Option<u64>,
}

pub(crate) enum SearchResult {
    Linearizable,
    /// No linearization exists. `prefix`: the partial linearization seen with the
    /// most returned ops in it (op indices in order; it may end with unknown ops the
    /// search tried before giving up there).
    Violation {
        prefix: Vec<u32>,
    },
    Inconclusive(LimitHit),
}

/// Budget of one key's search.
pub(crate) struct Budget {
    pub steps_max: u64,
    pub memo_bytes_max: u64,
    pub deadline: Option<Instant>,
}

const NIL: u32 = u32::MAX;
const HEAD: u32 = 0;

#[derive(Clone, Copy)]
struct Entry {
    prev: u32,
    next: u32,
    op: u32,
    is_call: bool,
    /// For a call: its return entry.
    matching: u32,
}

/// The sort key of an entry: (returns at infinity, time, calls before returns). Calls
/// before returns at equal times makes ops that touch at one instant concurrent, the
/// lenient reading: the checker must never invent an order the clock did not show.
pub(crate) fn entry_order(time_ns: Option<u64>, is_call: bool) -> (bool, u64, bool) {
    (time_ns.is_none(), time_ns.unwrap_or(u64::MAX), !is_call)
}

/// The entries in time order, as (op, is_call).
pub(crate) fn sorted_entries(ops: &[SearchOp]) -> Vec<(u32, bool)> {
    let mut events: Vec<(u32, bool)> = Vec::with_capacity(ops.len() * 2);
    for (i, _) in ops.iter().enumerate() {
        // The caller keeps ops.len() within u32 (HistoryError::TooManyOps).
        let i = i as u32;
        events.push((i, true));
        events.push((i, false));
    }
    events.sort_by_key(|&(i, is_call)| {
        let op = &ops[i as usize];
        let t = if is_call {
            Some(op.call_ns)
        } else {
            op.return_ns
        };
        (entry_order(t, is_call), i)
    });
    events
}

struct Linked {
    entries: Vec<Entry>,
}

impl Linked {
    /// The list of the ops that return; the others are searched apart (see `search`).
    fn new(ops: &[SearchOp]) -> Self {
        let events: Vec<(u32, bool)> = sorted_entries(ops)
            .into_iter()
            .filter(|&(op, _)| ops[op as usize].return_ns.is_some())
            .collect();
        let mut entries = Vec::with_capacity(events.len() + 1);
        entries.push(Entry {
            prev: NIL,
            next: NIL,
            op: NIL,
            is_call: false,
            matching: NIL,
        });
        let mut return_of = vec![NIL; ops.len()];
        for (pos, &(op, is_call)) in events.iter().enumerate() {
            let idx = pos as u32 + 1;
            if !is_call {
                return_of[op as usize] = idx;
            }
            entries.push(Entry {
                prev: idx - 1,
                next: if pos + 1 < events.len() { idx + 1 } else { NIL },
                op,
                is_call,
                matching: NIL,
            });
        }
        if !events.is_empty() {
            entries[0].next = 1;
        }
        for e in entries.iter_mut().skip(1) {
            if e.is_call {
                e.matching = return_of[e.op as usize];
            }
        }
        Linked { entries }
    }

    fn unlink(&mut self, i: u32) {
        let Entry { prev, next, .. } = self.entries[i as usize];
        self.entries[prev as usize].next = next;
        if next != NIL {
            self.entries[next as usize].prev = prev;
        }
    }

    fn relink(&mut self, i: u32) {
        let Entry { prev, next, .. } = self.entries[i as usize];
        self.entries[prev as usize].next = i;
        if next != NIL {
            self.entries[next as usize].prev = i;
        }
    }

    /// Takes a call and its return out of the list.
    fn lift(&mut self, call: u32) {
        let ret = self.entries[call as usize].matching;
        self.unlink(call);
        self.unlink(ret);
    }

    /// Undoes `lift` (dancing links: valid because lifts are undone last-in first-out).
    fn unlift(&mut self, call: u32) {
        let ret = self.entries[call as usize].matching;
        self.relink(ret);
        self.relink(call);
    }
}

/// A bitset with an incrementally kept Zobrist hash, so the memo never rehashes the
/// whole set.
struct Linearized {
    words: Vec<u64>,
    hash: u64,
}

fn zobrist(i: u32) -> u64 {
    splitmix64(u64::from(i) ^ 0x9e37_79b9_7f4a_7c15)
}

fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl Linearized {
    fn new(n: usize) -> Self {
        Linearized {
            words: vec![0; n.div_ceil(64)],
            hash: 0,
        }
    }

    fn contains(&self, i: u32) -> bool {
        self.words
            .get((i / 64) as usize)
            .is_some_and(|w| w & (1 << (i % 64)) != 0)
    }

    fn flip(&mut self, i: u32) {
        self.words[(i / 64) as usize] ^= 1 << (i % 64);
        self.hash ^= zobrist(i);
    }
}

fn state_hash(s: State) -> u64 {
    splitmix64(
        (u64::from(s.data) << 32) ^ u64::from(s.version as u32) ^ (u64::from(s.present) << 63),
    )
}

/// Keys of the memo are already well-mixed hashes.
#[derive(Default)]
struct IdentityHasher(u64);

impl Hasher for IdentityHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 << 8) ^ u64::from(*b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// A memo bucket: the configurations whose hashes collide.
type Bucket = Vec<(Box<[u64]>, State)>;

/// The (linearized set, state) configurations already explored: reaching one again
/// cannot lead anywhere new.
struct Memo {
    buckets: HashMap<u64, Bucket, BuildHasherDefault<IdentityHasher>>,
    bytes: u64,
    entry_bytes: u64,
}

impl Memo {
    fn new(words: usize) -> Self {
        Memo {
            buckets: HashMap::default(),
            bytes: 0,
            // The bitset, the state, the box and vec slots, and about as much again in
            // hash-map overhead: an estimate, but one that grows with what is stored.
            entry_bytes: (words * 8 + std::mem::size_of::<(Box<[u64]>, State)>() + 32) as u64,
        }
    }

    /// False if already present.
    fn insert(&mut self, set: &Linearized, s: State) -> bool {
        let bucket = self.buckets.entry(set.hash ^ state_hash(s)).or_default();
        if bucket
            .iter()
            .any(|(w, st)| *st == s && w[..] == set.words[..])
        {
            return false;
        }
        bucket.push((set.words.clone().into_boxed_slice(), s));
        self.bytes += self.entry_bytes;
        true
    }
}

/// Where the search stands at one node of the search tree: at an entry of the list,
/// or at an unknown-outcome op (by index into `unknown`) that may come next if invoked
/// before `bound`, the sort key of the node's first return entry.
#[derive(Clone, Copy)]
enum Cursor {
    Main(u32),
    Unknown {
        idx: usize,
        bound: (bool, u64, bool),
    },
    /// Nothing more to try at this node.
    Exhausted,
}

/// One linearized op: where it was found, the op, the state before it, and whether it
/// was forced (a state-preserving op: if the node fails after it, the node fails).
struct Frame {
    at: Cursor,
    op: u32,
    before: State,
    forced: bool,
}

/// Decides whether `ops`, started from `init`, have a linearization.
///
/// The list holds only the ops that returned. Ops of unknown outcome (return at
/// +infinity) are kept apart, in invocation order, and at each node are tried only
/// after every returned candidate failed: the order in which candidates are tried does
/// not change the answer, and a timed-out write that never took effect then costs
/// nothing, where plain WGL would try it first at every node (its call precedes almost
/// everything) and back off. Every unknown step is total (an unknown op linearized
/// where it would fail changes nothing), so once the list is empty the rest can
/// always be appended: the history is linearizable.
///
/// Three reductions keep ops that change nothing, or interchangeable ones, from
/// multiplying the search (each subset of them linearized is otherwise a
/// configuration of its own). Each is sound because it only drops children when a
/// tried child has a completion whenever the node has one, shown by moving or swapping
/// one op in a completion:
/// - An unknown op that would change nothing here is not linearized here: put last
///   instead (its return is at +infinity) it is just as valid.
/// - A candidate that returned, is accepted, and changes nothing (a read, BadVersion,
///   NodeExists, NoNode) is forced: any completion of this node can move it to the
///   front (its call precedes every remaining return, and nothing it does changes
///   what follows), so if the node has a completion, the node after it has one. It is
///   the only child tried; if it fails, or its configuration failed before, the node
///   fails.
/// - Unknown ops with identical steps (the caller maps data no read returned to one
///   id, so most writes that never took effect are identical) are interchangeable once
///   both are invoked: swapping them maps one completion onto the other. Only the
///   first of them not yet linearized is tried.
pub(crate) fn search(ops: &[SearchOp], init: State, budget: &Budget) -> SearchResult {
    let mut list = Linked::new(ops);
    let unknown: Vec<u32> = sorted_entries(ops)
        .into_iter()
        .filter(|&(op, is_call)| is_call && ops[op as usize].return_ns.is_none())
        .map(|(op, _)| op)
        .collect();
    // For each unknown op, the previous one (in invocation order) with the same step.
    let mut same_before: Vec<Option<u32>> = vec![None; ops.len()];
    {
        let mut last: HashMap<Step, u32> = HashMap::new();
        for &op in &unknown {
            same_before[op as usize] = last.insert(ops[op as usize].step, op);
        }
    }
    let mut linearized = Linearized::new(ops.len());
    let mut memo = Memo::new(linearized.words.len());
    let mut frames: Vec<Frame> = Vec::new();
    let mut state = init;
    let mut cursor = Cursor::Main(list.entries[HEAD as usize].next);
    let mut steps: u64 = 0;
    // The longest partial linearization, for the explanation; it is captured when the
    // search first backs off a new maximum depth, so a search that never backtracks
    // copies nothing.
    let mut best: Vec<u32> = Vec::new();
    let mut best_returned = 0usize;
    let mut returned = 0usize;
    let mut at_new_max = false;

    loop {
        if list.entries[HEAD as usize].next == NIL {
            return SearchResult::Linearizable;
        }
        steps += 1;
        if steps > budget.steps_max {
            return SearchResult::Inconclusive(LimitHit::SearchSteps);
        }
        if memo.bytes > budget.memo_bytes_max {
            return SearchResult::Inconclusive(LimitHit::MemoBytes);
        }
        // Reading the clock costs more than a step: look every 4096 steps.
        if steps % 4096 == 0 {
            if let Some(deadline) = budget.deadline {
                if Instant::now() >= deadline {
                    return SearchResult::Inconclusive(LimitHit::SearchTime);
                }
            }
        }

        // The op to try at the cursor, or None: this node is exhausted, back off.
        let candidate = match cursor {
            Cursor::Main(entry) => match list.entries.get(entry as usize) {
                Some(e) if e.is_call => Some(e.op),
                Some(e) => {
                    // The first return: its op had to come before anything after it.
                    // What is left to try here are the unknown ops invoked before it.
                    let ret_ns = ops[e.op as usize].return_ns;
                    cursor = Cursor::Unknown {
                        idx: 0,
                        bound: entry_order(ret_ns, false),
                    };
                    continue;
                }
                // Cannot happen (a non-empty list ends with a return); back off.
                None => None,
            },
            Cursor::Unknown { idx, bound } => match unknown.get(idx) {
                Some(&op) if entry_order(Some(ops[op as usize].call_ns), true) < bound => {
                    // Symmetry: unknown ops with the same step, both invoked already,
                    // are interchangeable; only the first not yet linearized is tried,
                    // so those linearized are always a prefix of their class.
                    let twin_waits =
                        same_before[op as usize].is_some_and(|t| !linearized.contains(t));
                    if linearized.contains(op) || twin_waits {
                        cursor = Cursor::Unknown {
                            idx: idx + 1,
                            bound,
                        };
                        continue;
                    }
                    Some(op)
                }
                _ => None,
            },
            Cursor::Exhausted => None,
        };

        if let Some(op) = candidate {
            if let Some(next_state) = step(state, ops[op as usize].step) {
                let unchanged = next_state == state;
                let returned_op = matches!(cursor, Cursor::Main(_));
                if unchanged && !returned_op {
                    // An unknown op that does nothing here: leave it for the end.
                    cursor = advance(&list, cursor);
                    continue;
                }
                linearized.flip(op);
                if memo.insert(&linearized, next_state) {
                    frames.push(Frame {
                        at: cursor,
                        op,
                        before: state,
                        forced: unchanged,
                    });
                    if returned_op {
                        returned += 1;
                        if returned > best_returned {
                            best_returned = returned;
                            at_new_max = true;
                        }
                    }
                    state = next_state;
                    if let Cursor::Main(entry) = cursor {
                        list.lift(entry);
                    }
                    cursor = Cursor::Main(list.entries[HEAD as usize].next);
                    continue;
                }
                linearized.flip(op);
                if unchanged {
                    // A forced op whose configuration already failed: so does this node.
                    cursor = Cursor::Exhausted;
                    continue;
                }
            }
            cursor = advance(&list, cursor);
            continue;
        }

        // Back off: undo the last op linearized and try the next candidate after it.
        let Some(frame) = frames.pop() else {
            return SearchResult::Violation { prefix: best };
        };
        if at_new_max {
            let mut prefix: Vec<u32> = frames.iter().map(|f| f.op).collect();
            prefix.push(frame.op);
            best = prefix;
            at_new_max = false;
        }
        state = frame.before;
        linearized.flip(frame.op);
        if let Cursor::Main(entry) = frame.at {
            list.unlift(entry);
            returned -= 1;
        }
        cursor = if frame.forced {
            Cursor::Exhausted
        } else {
            advance(&list, frame.at)
        };
    }
}

/// The next candidate after the one at `cursor`, at the same node.
fn advance(list: &Linked, cursor: Cursor) -> Cursor {
    match cursor {
        Cursor::Main(entry) => {
            Cursor::Main(list.entries.get(entry as usize).map_or(NIL, |e| e.next))
        }
        Cursor::Unknown { idx, bound } => Cursor::Unknown {
            idx: idx + 1,
            bound,
        },
        Cursor::Exhausted => Cursor::Exhausted,
    }
}

#[cfg(test)]
mod tests {
    //! The reduced search against plain memoized WGL (no reductions, unknown ops in
    //! the same list with returns at +infinity) on random histories too big for the
    //! brute force of `tests/reference.rs`.

    use std::collections::HashSet;

    use super::*;
    use crate::model::{Canon, ABSENT};

    fn plain(ops: &[SearchOp], init: State) -> bool {
        fn go(ops: &[SearchOp], done: u64, s: State, memo: &mut HashSet<(u64, State)>) -> bool {
            let open = |i: usize| done & (1 << i) == 0;
            if (0..ops.len()).all(|i| !open(i) || ops[i].return_ns.is_none()) {
                return true;
            }
            if !memo.insert((done, s)) {
                return false;
            }
            let bound = (0..ops.len())
                .filter(|&i| open(i))
                .map(|i| entry_order(ops[i].return_ns, false))
                .min();
            for i in (0..ops.len()).filter(|&i| open(i)) {
                if Some(entry_order(Some(ops[i].call_ns), true)) >= bound {
                    continue;
                }
                if let Some(next) = step(s, ops[i].step) {
                    if go(ops, done | (1 << i), next, memo) {
                        return true;
                    }
                }
            }
            false
        }
        go(ops, 0, init, &mut HashSet::new())
    }

    struct Rng(u64);
    impl Rng {
        fn below(&mut self, n: u64) -> u64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            splitmix64(self.0) % n.max(1)
        }
    }

    /// A sequential run with random overlaps, then (sometimes) a few results changed.
    fn history(rng: &mut Rng) -> (Vec<SearchOp>, State) {
        let n = 1 + rng.below(16) as usize;
        let init = if rng.below(3) == 0 {
            ABSENT
        } else {
            State {
                present: true,
                data: 0,
                version: rng.below(2) as i32,
            }
        };
        let mut s = init;
        let mut ops = Vec::new();
        let mut lin = 0u64;
        for _ in 0..n {
            lin += 1 + rng.below(4);
            let call_ns = lin.saturating_sub(rng.below(12));
            let return_ns = (rng.below(5) != 0).then(|| lin + rng.below(12));
            let data = rng.below(3) as u32;
            let expected = rng.below(4) as i32 - 1;
            let step_kind = rng.below(8);
            let unknown = return_ns.is_none();
            let st = match step_kind {
                0 if s.present => Step::ReadOk {
                    data: s.data,
                    version: s.version,
                },
                0 => Step::SawAbsent,
                1 | 2 if unknown => Step::SetUnknown { expected, data },
                1 | 2 => {
                    let ok = s.present && (expected == -1 || expected == s.version);
                    if ok {
                        Step::SetOk {
                            expected,
                            data,
                            new_version: s.version + 1,
                        }
                    } else if s.present {
                        Step::BadVersion { expected }
                    } else {
                        Step::SawAbsent
                    }
                }
                3 if unknown => Step::CreateUnknown { data },
                3 if s.present => Step::SawPresent,
                3 => Step::CreateOk { data },
                // Any step at all: often impossible, sometimes not.
                _ => match rng.below(4) {
                    0 => Step::ReadOk {
                        data,
                        version: rng.below(4) as i32,
                    },
                    1 => Step::SetOk {
                        expected,
                        data,
                        new_version: rng.below(5) as i32,
                    },
                    2 => Step::BadVersion { expected },
                    _ => Step::SetUnknown { expected, data },
                },
            };
            // An unknown op is applied at its point or never; a known one must fit.
            let apply = !unknown || rng.below(2) == 0;
            if apply {
                if let Some(next) = step(s, st) {
                    s = next;
                }
            }
            let st = match (unknown, st) {
                (true, Step::SetUnknown { .. } | Step::CreateUnknown { .. }) => st,
                // Unknown reads and observations are dropped before the search.
                (true, _) => Step::SetUnknown { expected, data },
                (false, Step::SetUnknown { expected, data }) => Step::SetOk {
                    expected,
                    data,
                    new_version: rng.below(5) as i32,
                },
                (false, st) => st,
            };
            ops.push(SearchOp {
                step: st,
                call_ns,
                return_ns,
            });
        }
        (ops, init)
    }

    #[test]
    fn reduced_search_agrees_with_plain_wgl() {
        let budget = Budget {
            steps_max: u64::MAX,
            memo_bytes_max: u64::MAX,
            deadline: None,
        };
        let mut rng = Rng(42);
        let (mut yes, mut no) = (0, 0);
        for case in 0..20_000 {
            let (ops, init) = history(&mut rng);
            let expected = plain(&ops, init);
            let canon = Canon::new(ops.iter().map(|o| o.step), 1_000);
            let canonical: Vec<SearchOp> = ops
                .iter()
                .map(|o| SearchOp {
                    step: canon.step(o.step),
                    ..*o
                })
                .collect();
            let got = match search(&canonical, canon.state(init), &budget) {
                SearchResult::Linearizable => true,
                SearchResult::Violation { .. } => false,
                SearchResult::Inconclusive(limit) => panic!("case {case}: {limit:?}"),
            };
            assert_eq!(got, expected, "case {case}: init {init:?}, ops {ops:#?}");
            if expected {
                yes += 1;
            } else {
                no += 1;
            }
        }
        assert!(yes > 2_000 && no > 2_000, "linearizable {yes}, not {no}");
    }
}
