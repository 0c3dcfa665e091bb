//! Arbitrary input never panics: every call returns a verdict or an error.

mod common;

use common::*;
use proptest::prelude::*;
use switchyard_lincheck::*;

fn any_outcome() -> impl Strategy<Value = Outcome> {
    prop_oneof![
        Just(Outcome::Unknown),
        prop_oneof![
            Just(FailReason::BadVersion),
            Just(FailReason::NoNode),
            Just(FailReason::NodeExists),
            Just(FailReason::Other),
        ]
        .prop_map(Outcome::Fail),
        (prop::collection::vec(any::<u8>(), 0..3), any::<i32>())
            .prop_map(|(data, version)| Outcome::Ok(Ret::Read { data, version })),
        any::<i32>().prop_map(|version| Outcome::Ok(Ret::Written { version })),
        Just(Outcome::Ok(Ret::Created)),
    ]
}

fn any_op() -> impl Strategy<Value = Op> {
    let value = || prop::collection::vec(any::<u8>(), 0..3);
    prop_oneof![
        Just(Op::Read),
        value().prop_map(|value| Op::Write { value }),
        (any::<i32>(), value()).prop_map(|(expected_version, value)| Op::Cas {
            expected_version,
            value
        }),
        value().prop_map(|value| Op::Create { value }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1_000, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_histories_never_panic(
        initial in prop::option::of((prop::collection::vec(any::<u8>(), 0..3), any::<i32>())),
        calls in prop::collection::vec(
            (0u8..3, any::<u64>(), any_op(), any::<u64>(), any::<u64>(), any_outcome(), any::<u8>()),
            0..40,
        ),
        steps_max in prop_oneof![Just(1u64), Just(50), Just(SEARCH_STEPS_MAX)],
    ) {
        let mut h = History::new();
        if let Some((data, version)) = initial {
            h.set_initial("/k0", RegisterState::Present { data, version });
        }
        for (key, client, op, invoke_ns, complete_ns, outcome, how) in calls {
            let key = format!("/k{key}");
            // Invalid completions (wrong kind, before the invocation, twice, unknown
            // ids) must come back as errors.
            match how % 4 {
                0 => {
                    h.invoke(client, key, op, invoke_ns);
                }
                1 => {
                    let _ = h.record(client, key, op, invoke_ns, outcome, complete_ns);
                }
                2 => {
                    let id = h.invoke(client, key, op, invoke_ns);
                    let _ = h.complete(id, outcome.clone(), complete_ns);
                    let _ = h.complete(id, outcome, complete_ns);
                }
                _ => {
                    let _ = h.complete(OpId(usize::from(how)), outcome, complete_ns);
                }
            }
        }
        let limits = Limits { search_steps_max: steps_max, ..Limits::default() };
        let result = check(&h, &limits).unwrap();
        // Display never panics either.
        let _ = result.to_string();
    }
}

#[test]
fn many_keys_and_an_empty_key_name() {
    let mut h = History::new();
    for k in 0..500 {
        h.record(
            1,
            format!("/k{k}"),
            create("x"),
            k,
            Outcome::Ok(Ret::Created),
            k + 1,
        )
        .unwrap();
    }
    h.record(1, "", Op::Read, 0, Outcome::Fail(FailReason::NoNode), 0)
        .unwrap();
    assert!(check(&h, &Limits::default()).unwrap().is_linearizable());
}

#[test]
fn elapsed_ns_is_monotonic() {
    let start = std::time::Instant::now();
    let a = elapsed_ns(start);
    let b = elapsed_ns(start);
    assert!(a <= b);
}
