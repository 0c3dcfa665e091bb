//! Shared by the test files: shorthands and a generator of histories that are
//! linearizable by construction.
#![allow(dead_code)] // each test file uses a different part

use std::collections::HashMap;

use switchyard_lincheck::*;

pub fn b(s: &str) -> Vec<u8> {
    s.as_bytes().to_vec()
}

pub fn write(s: &str) -> Op {
    Op::Write { value: b(s) }
}

pub fn cas(expected_version: i32, s: &str) -> Op {
    Op::Cas {
        expected_version,
        value: b(s),
    }
}

pub fn create(s: &str) -> Op {
    Op::Create { value: b(s) }
}

pub fn saw(s: &str, version: i32) -> Outcome {
    Outcome::Ok(Ret::Read {
        data: b(s),
        version,
    })
}

pub fn written(version: i32) -> Outcome {
    Outcome::Ok(Ret::Written { version })
}

pub fn present(s: &str, version: i32) -> RegisterState {
    RegisterState::Present {
        data: b(s),
        version,
    }
}

/// A deterministic PRNG (splitmix64): proptest hands it a seed, so a failing case
/// shrinks to a seed and replays exactly.
pub struct SplitMix(u64);

impl SplitMix {
    pub fn new(seed: u64) -> Self {
        SplitMix(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0; slight modulo bias is irrelevant here).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    pub fn chance_per_mille(&mut self, p: u64) -> bool {
        self.below(1000) < p
    }
}

#[derive(Clone, Debug)]
pub struct GenParams {
    pub keys: usize,
    pub clients: usize,
    pub ops: usize,
    /// Chance that an op times out: outcome Unknown, applied or not at random.
    pub unknown_per_mille: u64,
    /// Each op's latency is split at a random linearization point in 0..latency_max_ns.
    pub latency_max_ns: u64,
    /// Pause between a client's ops.
    pub think_max_ns: u64,
}

/// Runs a sequential model of the registers with random real-time overlaps: every op
/// gets an invocation, a linearization point and a completion (in that order); the
/// ops are applied to the model in linearization-point order, and each result is what
/// the model answered. Such a history is linearizable by construction.
pub fn generate(rng: &mut SplitMix, p: &GenParams) -> History {
    struct Slot {
        client: u64,
        key: usize,
        invoke_ns: u64,
        lin_ns: u64,
        complete_ns: u64,
        unknown: bool,
    }
    let keys: Vec<String> = (0..p.keys.max(1)).map(|k| format!("/reg/{k}")).collect();
    let mut free_at = vec![0u64; p.clients.max(1)];
    let mut slots = Vec::with_capacity(p.ops);
    for _ in 0..p.ops {
        let client = rng.below(free_at.len() as u64) as usize;
        let invoke_ns = free_at[client] + rng.below(p.think_max_ns + 1);
        let latency = rng.below(p.latency_max_ns + 1);
        let lin_ns = invoke_ns + rng.below(latency + 1);
        let complete_ns = invoke_ns + latency;
        // A client waits for its reply or its timeout before the next op.
        free_at[client] = complete_ns + 1;
        slots.push(Slot {
            client: client as u64,
            key: rng.below(keys.len() as u64) as usize,
            invoke_ns,
            lin_ns,
            complete_ns,
            unknown: rng.chance_per_mille(p.unknown_per_mille),
        });
    }
    slots.sort_by_key(|s| s.lin_ns);

    let mut h = History::new();
    // Some registers exist before the run, some are created during it.
    let mut model: HashMap<usize, Option<(Vec<u8>, i32)>> = HashMap::new();
    for (k, key) in keys.iter().enumerate() {
        if k % 2 == 0 {
            let v = (b("init"), rng.below(3) as i32);
            h.set_initial(key.clone(), present("init", v.1));
            model.insert(k, Some(v));
        } else {
            model.insert(k, None);
        }
    }

    for (i, s) in slots.iter().enumerate() {
        let state = model.get(&s.key).cloned().flatten();
        let value = format!("c{}-{i}", s.client).into_bytes();
        // An unknown op may or may not have been applied.
        let applied = !s.unknown || rng.below(2) == 0;
        let (op, outcome, next) = match (rng.below(4), &state) {
            (0, Some((data, version))) => (
                Op::Read,
                Outcome::Ok(Ret::Read {
                    data: data.clone(),
                    version: *version,
                }),
                state.clone(),
            ),
            (0, None) => (Op::Read, Outcome::Fail(FailReason::NoNode), None),
            (1, Some((_, version))) => {
                let v = version.wrapping_add(1);
                (
                    Op::Write {
                        value: value.clone(),
                    },
                    written(v),
                    Some((value, v)),
                )
            }
            (2, Some((_, version))) => {
                // Right version half the time, else a wrong one (never -1, which
                // matches any version).
                let expected = if rng.below(2) == 0 {
                    *version
                } else {
                    let wrong = version.wrapping_sub(1 + rng.below(2) as i32);
                    if wrong == -1 {
                        version.wrapping_add(1)
                    } else {
                        wrong
                    }
                };
                let op = Op::Cas {
                    expected_version: expected,
                    value: value.clone(),
                };
                if expected == *version {
                    let v = version.wrapping_add(1);
                    (op, written(v), Some((value, v)))
                } else {
                    (op, Outcome::Fail(FailReason::BadVersion), state.clone())
                }
            }
            (1 | 2, None) => (Op::Write { value }, Outcome::Fail(FailReason::NoNode), None),
            (_, Some(_)) => (
                Op::Create { value },
                Outcome::Fail(FailReason::NodeExists),
                state.clone(),
            ),
            (_, None) => (
                Op::Create {
                    value: value.clone(),
                },
                Outcome::Ok(Ret::Created),
                Some((value, 0)),
            ),
        };
        if applied {
            model.insert(s.key, next);
        }
        let id = h.invoke(s.client, keys[s.key].clone(), op, s.invoke_ns);
        if s.unknown {
            // Half time out with a recorded time, half are never completed.
            if rng.below(2) == 0 {
                h.complete(id, Outcome::Unknown, s.complete_ns)
                    .expect("valid");
            }
        } else {
            h.complete(id, outcome, s.complete_ns).expect("valid");
        }
    }
    h
}
