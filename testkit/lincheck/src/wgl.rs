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
pub(crate) struct SearchOp {
    pub step: Step,
    pub call_ns: u64,
    /// `None`: returns at +infinity (outcome unknown).
    pub return_ns: Option<u64>,
}

pub(crate) enum SearchResult {
    Linearizable,
    /// No linearization exists. `prefix`: the longest partial linearization seen (op
    /// indices in order), `state`: the register after it.
    Violation {
        prefix: Vec<u32>,
        state: State,
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
    fn new(ops: &[SearchOp]) -> Self {
        let events = sorted_entries(ops);
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

/// Decides whether `ops`, started from `init`, have a linearization.
pub(crate) fn search(ops: &[SearchOp], init: State, budget: &Budget) -> SearchResult {
    let mut list = Linked::new(ops);
    let mut linearized = Linearized::new(ops.len());
    let mut memo = Memo::new(linearized.words.len());
    // The ops linearized so far, with the state before each.
    let mut calls: Vec<(u32, State)> = Vec::new();
    let mut state = init;
    let mut entry = list.entries[HEAD as usize].next;
    let mut steps: u64 = 0;
    // The longest partial linearization, for the explanation; it is captured when the
    // search first backs off a new maximum depth, so a search that never backtracks
    // copies nothing.
    let mut best: (Vec<u32>, State) = (Vec::new(), init);
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

        let e = match list.entries.get(entry as usize) {
            Some(e) => *e,
            // Cannot happen (the last entry is always a return); treated as one.
            None => Entry {
                prev: NIL,
                next: NIL,
                op: NIL,
                is_call: false,
                matching: NIL,
            },
        };
        if e.is_call {
            if let Some(next_state) = step(state, ops[e.op as usize].step) {
                linearized.flip(e.op);
                if memo.insert(&linearized, next_state) {
                    calls.push((entry, state));
                    if calls.len() > best.0.len() {
                        at_new_max = true;
                    }
                    state = next_state;
                    list.lift(entry);
                    entry = list.entries[HEAD as usize].next;
                    continue;
                }
                linearized.flip(e.op);
            }
            entry = e.next;
        } else {
            // A return: its op had to come before everything after it. Back off.
            let Some((call, before)) = calls.pop() else {
                return SearchResult::Violation {
                    prefix: best.0,
                    state: best.1,
                };
            };
            if at_new_max {
                let mut prefix: Vec<u32> = calls
                    .iter()
                    .map(|(c, _)| list.entries[*c as usize].op)
                    .collect();
                prefix.push(list.entries[call as usize].op);
                best = (prefix, state);
                at_new_max = false;
            }
            let op = list.entries[call as usize].op;
            state = before;
            linearized.flip(op);
            list.unlift(call);
            entry = list.entries[call as usize].next;
        }
    }
}
