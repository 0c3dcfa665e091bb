//! Differential test: `check` against a brute-force reference on random tiny
//! histories, linearizable or not. The reference shares no code with the crate: its
//! own register semantics and an exhaustive search over every order and every subset
//! of the unknown ops, so it checks the model, the search and the search's reductions
//! (forced ops, skipped no-op unknowns, interchangeable unknowns, canonical data).

mod common;

use common::*;
use proptest::prelude::*;
use switchyard_lincheck::*;

type Reg = Option<(Vec<u8>, i32)>;

/// The register after `r` in state `s`, `None` if `r` cannot have had its outcome.
/// For an unknown op: its effect had it run here (it may also never run).
fn apply(s: &Reg, r: &OpRecord) -> Option<Reg> {
    let unknown = r.outcome == Outcome::Unknown || r.complete_ns.is_none();
    let set = |expected: i32, value: &Vec<u8>| -> Option<Reg> {
        let next = match s {
            Some((_, v)) if expected == -1 || *v == expected => {
                Some((value.clone(), v.wrapping_add(1)))
            }
            _ => None,
        };
        if unknown {
            return Some(next.or_else(|| s.clone()));
        }
        match (&r.outcome, next) {
            (Outcome::Ok(Ret::Written { version }), Some(n)) if n.1 == *version => Some(Some(n)),
            (Outcome::Fail(FailReason::NoNode), _) if s.is_none() => Some(s.clone()),
            (Outcome::Fail(FailReason::BadVersion), None) if s.is_some() => Some(s.clone()),
            _ => None,
        }
    };
    match (&r.op, &r.outcome) {
        (_, Outcome::Fail(FailReason::Other)) => Some(s.clone()),
        (Op::Read, _) if unknown => Some(s.clone()),
        (Op::Read, Outcome::Ok(Ret::Read { data, version })) => {
            (s.as_ref() == Some(&(data.clone(), *version))).then(|| s.clone())
        }
        (Op::Read, Outcome::Fail(FailReason::NoNode)) => s.is_none().then(|| s.clone()),
        (Op::Read, _) => None,
        (Op::Write { value }, _) => set(-1, value),
        (
            Op::Cas {
                expected_version,
                value,
            },
            _,
        ) => set(*expected_version, value),
        (Op::Create { value }, _) => {
            let created = Some((value.clone(), 0));
            match (&r.outcome, s) {
                (_, None) if unknown => Some(created),
                (_, Some(_)) if unknown => Some(s.clone()),
                (Outcome::Ok(Ret::Created), None) => Some(created),
                (Outcome::Fail(FailReason::NodeExists), Some(_)) => Some(s.clone()),
                (Outcome::Fail(FailReason::NoNode), _) => Some(s.clone()),
                _ => None,
            }
        }
    }
}

/// Exhaustive: is there an order of all completed ops and some of the unknown ones,
/// respecting real time (an op that completed before another was invoked comes first)?
fn reference(h: &History) -> bool {
    let ops = h.ops();
    let init = match h.initial(R) {
        RegisterState::Absent => None,
        RegisterState::Present { data, version } => Some((data, version)),
    };
    fn unknown(r: &OpRecord) -> bool {
        r.outcome == Outcome::Unknown || r.complete_ns.is_none()
    }
    fn go(ops: &[OpRecord], placed: u32, s: &Reg) -> bool {
        let all_known_placed = ops
            .iter()
            .enumerate()
            .all(|(i, r)| placed & (1 << i) != 0 || unknown(r));
        if all_known_placed {
            return true;
        }
        for (i, r) in ops.iter().enumerate() {
            if placed & (1 << i) != 0 {
                continue;
            }
            // Every op that completed before `r` was invoked must already be placed.
            let blocked = ops.iter().enumerate().any(|(j, o)| {
                placed & (1 << j) == 0
                    && !unknown(o)
                    && o.complete_ns.is_some_and(|t| t < r.invoke_ns)
            });
            if blocked {
                continue;
            }
            if let Some(next) = apply(s, r) {
                if go(ops, placed | (1 << i), &next) {
                    return true;
                }
            }
        }
        false
    }
    go(ops, 0, &init)
}

const R: &str = "/r";

fn value() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![Just(b("a")), Just(b("b")), Just(b("c"))]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        Just(Op::Read),
        value().prop_map(|value| Op::Write { value }),
        (-1i32..3, value()).prop_map(|(expected_version, value)| Op::Cas {
            expected_version,
            value
        }),
        value().prop_map(|value| Op::Create { value }),
    ]
}

/// An outcome of the right kind for the op (anything else is refused as input).
fn outcome_for(op: &Op, pick: u8, data: Vec<u8>, version: i32) -> Outcome {
    let reason = match pick % 4 {
        0 => FailReason::BadVersion,
        1 => FailReason::NoNode,
        2 => FailReason::NodeExists,
        _ => FailReason::Other,
    };
    match pick % 7 {
        0 | 1 => Outcome::Unknown,
        2 => Outcome::Fail(reason),
        _ => Outcome::Ok(match op {
            Op::Read => Ret::Read { data, version },
            Op::Write { .. } | Op::Cas { .. } => Ret::Written { version },
            Op::Create { .. } => Ret::Created,
        }),
    }
}

prop_compose! {
    fn tiny_history()(
        initial in prop_oneof![
            Just(RegisterState::Absent),
            (value(), 0i32..2).prop_map(|(data, version)| RegisterState::Present { data, version }),
        ],
        ops in prop::collection::vec(
            (op(), 0u64..12, 0u64..8, any::<u8>(), value(), 0i32..4, any::<bool>()),
            0..7,
        ),
    ) -> History {
        let mut h = History::new();
        h.set_initial(R, initial);
        for (i, (op, start, len, pick, data, version, completes)) in ops.into_iter().enumerate() {
            let outcome = outcome_for(&op, pick, data, version);
            let id = h.invoke(i as u64, R, op, start);
            // Unknown ops: completed (a timeout) or never.
            if outcome != Outcome::Unknown || completes {
                h.complete(id, outcome, start + len).expect("valid by construction");
            }
        }
        h
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 3_000, ..ProptestConfig::default() })]

    #[test]
    fn check_agrees_with_brute_force(h in tiny_history()) {
        let expected = reference(&h);
        let got = check(&h, &Limits::default()).unwrap();
        prop_assert!(
            !matches!(got, CheckResult::Inconclusive { .. }),
            "inconclusive on a tiny history"
        );
        prop_assert_eq!(got.is_linearizable(), expected, "{}\n{:#?}", got, h.ops());
    }
}

/// The generator makes both verdicts often enough for the comparison to mean
/// something.
#[test]
fn tiny_histories_have_both_verdicts() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let (mut yes, mut no) = (0, 0);
    for _ in 0..2_000 {
        let h = tiny_history().new_tree(&mut runner).unwrap().current();
        if reference(&h) {
            yes += 1;
        } else {
            no += 1;
        }
    }
    assert!(yes > 200 && no > 200, "linearizable {yes}, not {no}");
}
