//! Generated histories: linearizable by construction, and one mutation away from not.

mod common;

use std::time::Instant;

use common::*;
use proptest::prelude::*;
use switchyard_lincheck::*;

fn small(unknown_per_mille: u64) -> impl Strategy<Value = GenParams> {
    (1usize..4, 1usize..6, 0usize..60, 1u64..200, 0u64..50).prop_map(
        move |(keys, clients, ops, latency_max_ns, think_max_ns)| GenParams {
            keys,
            clients,
            ops,
            unknown_per_mille,
            latency_max_ns,
            think_max_ns,
        },
    )
}

/// Replaces the result of one successful read (chosen by `pick`) with a value nobody
/// wrote. `None` if the history has no successful read.
fn poison_one_read(h: &History, pick: usize) -> Option<(History, OpId)> {
    let reads: Vec<&OpRecord> = h
        .ops()
        .iter()
        .filter(|r| matches!(r.outcome, Outcome::Ok(Ret::Read { .. })))
        .collect();
    let target = reads.get(pick % reads.len().max(1))?.id;
    let mut out = History::new();
    // Rebuild through the public API: initial states first, then every op.
    for r in h.ops() {
        out.set_initial(r.key.clone(), h.initial(&r.key));
    }
    for r in h.ops() {
        let id = out.invoke(r.client, r.key.clone(), r.op.clone(), r.invoke_ns);
        let outcome = if r.id == target {
            Outcome::Ok(Ret::Read {
                data: b"impossible".to_vec(),
                version: 0,
            })
        } else {
            r.outcome.clone()
        };
        if let Some(t) = r.complete_ns {
            out.complete(id, outcome, t).expect("valid");
        }
    }
    Some((out, target))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn histories_of_a_sequential_model_are_linearizable(seed: u64, p in small(0)) {
        let h = generate(&mut SplitMix::new(seed), &p);
        let r = check(&h, &Limits::default()).unwrap();
        prop_assert!(r.is_linearizable(), "{}\n{:#?}", r, h.ops());
    }

    #[test]
    fn with_unknown_outcomes_too(seed: u64, p in small(150)) {
        let h = generate(&mut SplitMix::new(seed), &p);
        let r = check(&h, &Limits::default()).unwrap();
        prop_assert!(r.is_linearizable(), "{}\n{:#?}", r, h.ops());
    }

    #[test]
    fn a_read_of_an_impossible_value_is_a_violation(seed: u64, pick: usize, p in small(100)) {
        let h = generate(&mut SplitMix::new(seed), &p);
        let Some((bad, target)) = poison_one_read(&h, pick) else {
            return Ok(());
        };
        match check(&bad, &Limits::default()).unwrap() {
            CheckResult::Violation(v) => {
                let key = &bad.get(target).unwrap().key;
                prop_assert_eq!(&v.key, key);
                // The poisoned read can never be linearized, so the search is stuck on
                // it or before it.
                prop_assert!(!v.stuck.is_empty());
            }
            other => prop_assert!(false, "expected a violation, got {}", other),
        }
    }
}

/// The size of a fault test's history: 10k ops on 5 keys from 8 clients, with 2% and
/// then 10% of them timing out. Not timed; each must finish inside the default
/// limits. In a debug build on the 2-core dev machine a linearizable one takes about
/// 0.1-0.2 s; the poisoned one 1-3 s, since a violation has to rule out every order.
#[test]
fn ten_thousand_ops_check_within_the_default_limits() {
    for unknown_per_mille in [20, 100] {
        let p = GenParams {
            keys: 5,
            clients: 8,
            ops: 10_000,
            unknown_per_mille,
            latency_max_ns: 2_000_000,
            think_max_ns: 100_000,
        };
        let h = generate(&mut SplitMix::new(0x5eed), &p);
        let started = Instant::now();
        let r = check(&h, &Limits::default()).unwrap();
        eprintln!(
            "{} ops, {unknown_per_mille}/1000 unknown: {} in {:?}",
            h.len(),
            if r.is_linearizable() {
                "linearizable"
            } else {
                "NOT"
            },
            started.elapsed()
        );
        assert!(r.is_linearizable(), "{r}");

        // And the same history with one read poisoned is caught.
        let (bad, target) = poison_one_read(&h, 4_321).expect("has reads");
        let r = check(&bad, &Limits::default()).unwrap();
        match &r {
            CheckResult::Violation(v) => {
                assert!(v.stuck.iter().any(|o| o.id == target), "{v}");
                eprintln!("{v}");
            }
            other => panic!("expected a violation, got {other}"),
        }
    }
}
