//! Hand-written histories whose verdict is known.

mod common;

use common::*;
use switchyard_lincheck::*;

const R: &str = "/r";

/// A history on key `/r` that starts as ("0", version 0).
fn reg() -> History {
    let mut h = History::new();
    h.set_initial(R, present("0", 0));
    h
}

fn rec(h: &mut History, client: u64, op: Op, start: u64, end: u64, outcome: Outcome) -> OpId {
    h.record(client, R, op, start, outcome, end)
        .expect("valid op")
}

fn verdict(h: &History) -> CheckResult {
    check(h, &Limits::default()).expect("valid history")
}

#[track_caller]
fn assert_ok(h: &History) {
    let r = verdict(h);
    assert!(r.is_linearizable(), "expected linearizable, got: {r}");
}

#[track_caller]
fn assert_violation(h: &History) -> Violation {
    match verdict(h) {
        CheckResult::Violation(v) => v,
        other => panic!("expected a violation, got: {other}"),
    }
}

#[test]
fn empty_history_is_linearizable() {
    assert_ok(&History::new());
}

#[test]
fn sequential_history_is_linearizable() {
    let mut h = reg();
    rec(&mut h, 1, write("a"), 0, 10, written(1));
    rec(&mut h, 2, Op::Read, 20, 30, saw("a", 1));
    rec(&mut h, 1, cas(1, "b"), 40, 50, written(2));
    rec(
        &mut h,
        2,
        cas(1, "c"),
        60,
        70,
        Outcome::Fail(FailReason::BadVersion),
    );
    rec(&mut h, 3, Op::Read, 80, 90, saw("b", 2));
    h.record(1, "/n", Op::Read, 0, Outcome::Fail(FailReason::NoNode), 5)
        .unwrap();
    h.record(1, "/n", create("x"), 10, Outcome::Ok(Ret::Created), 20)
        .unwrap();
    h.record(
        2,
        "/n",
        create("y"),
        30,
        Outcome::Fail(FailReason::NodeExists),
        40,
    )
    .unwrap();
    h.record(2, "/n", Op::Read, 50, saw("x", 0), 60).unwrap();
    assert_ok(&h);
}

#[test]
fn overlapping_writes_linearize_in_either_order() {
    for (a_version, b_version, last) in [(1, 2, "b"), (2, 1, "a")] {
        let mut h = reg();
        rec(&mut h, 1, write("a"), 0, 100, written(a_version));
        rec(&mut h, 2, write("b"), 10, 90, written(b_version));
        // Reads during the overlap may see either write or neither.
        rec(&mut h, 3, Op::Read, 20, 30, saw("0", 0));
        rec(&mut h, 4, Op::Read, 40, 95, saw(last, 2));
        rec(&mut h, 3, Op::Read, 200, 210, saw(last, 2));
        assert_ok(&h);
    }
}

#[test]
fn ops_touching_at_one_instant_are_concurrent() {
    let mut h = reg();
    rec(&mut h, 1, write("a"), 0, 50, written(1));
    // Invoked at the very nanosecond the write completed: may still be ordered first.
    rec(&mut h, 2, Op::Read, 50, 60, saw("0", 0));
    assert_ok(&h);
}

#[test]
fn stale_read_after_a_completed_write_is_a_violation() {
    let mut h = reg();
    let w = rec(&mut h, 1, write("a"), 0, 10, written(1));
    let r = rec(&mut h, 2, Op::Read, 20, 30, saw("0", 0));
    let v = assert_violation(&h);
    assert_eq!(v.key, R);
    // The explanation: after the write the register is ("a", 1) and the read cannot
    // come next.
    assert_eq!(v.linearized_len, 1);
    assert_eq!(v.context.iter().map(|o| o.id).collect::<Vec<_>>(), [w]);
    assert_eq!(v.state, present("a", 1));
    assert_eq!(v.stuck.iter().map(|o| o.id).collect::<Vec<_>>(), [r]);
    let text = v.to_string();
    assert!(text.contains("read -> ok \"0\" v0"), "{text}");
}

#[test]
fn cas_that_succeeded_with_a_wrong_version_is_a_violation() {
    let mut h = reg();
    rec(&mut h, 1, cas(5, "a"), 0, 10, written(1));
    assert_violation(&h);

    let mut h = reg();
    rec(&mut h, 1, write("a"), 0, 10, written(1));
    // The version is 1 by now, so expected 0 must get BadVersion.
    rec(&mut h, 2, cas(0, "b"), 20, 30, written(2));
    assert_violation(&h);
}

#[test]
fn bad_version_while_the_version_matched_is_a_violation() {
    let mut h = reg();
    rec(
        &mut h,
        1,
        cas(0, "a"),
        0,
        10,
        Outcome::Fail(FailReason::BadVersion),
    );
    assert_violation(&h);
    // And with version -1 a correct server never says BadVersion.
    let mut h = reg();
    rec(
        &mut h,
        1,
        cas(-1, "a"),
        0,
        10,
        Outcome::Fail(FailReason::BadVersion),
    );
    assert_violation(&h);
}

#[test]
fn cas_with_version_minus_one_matches_any_version() {
    let mut h = reg();
    rec(&mut h, 1, write("a"), 0, 10, written(1));
    rec(&mut h, 1, cas(-1, "b"), 20, 30, written(2));
    rec(&mut h, 1, Op::Read, 40, 50, saw("b", 2));
    assert_ok(&h);
}

#[test]
fn lost_acknowledged_write_is_a_violation() {
    let mut h = reg();
    rec(&mut h, 1, write("a"), 0, 10, written(1));
    rec(&mut h, 1, write("b"), 20, 30, written(2));
    rec(&mut h, 2, Op::Read, 40, 50, saw("a", 1));
    assert_violation(&h);
}

#[test]
fn unknown_write_that_appears_later_is_linearizable() {
    let mut h = reg();
    let w = h.invoke(1, R, write("a"), 0);
    h.complete(w, Outcome::Unknown, 1_000).unwrap();
    rec(&mut h, 2, Op::Read, 100, 110, saw("0", 0));
    rec(&mut h, 2, Op::Read, 2_000, 2_010, saw("0", 0));
    // Long after the client gave up on it, the write shows.
    rec(&mut h, 2, Op::Read, 5_000, 5_010, saw("a", 1));
    rec(&mut h, 3, write("b"), 6_000, 6_010, written(2));
    assert_ok(&h);
}

#[test]
fn unknown_write_that_never_appears_is_linearizable() {
    for complete in [true, false] {
        let mut h = reg();
        let w = h.invoke(1, R, write("a"), 0);
        if complete {
            h.complete(w, Outcome::Unknown, 1_000).unwrap();
        }
        rec(&mut h, 2, Op::Read, 100, 110, saw("0", 0));
        rec(&mut h, 3, cas(0, "b"), 200, 210, written(1));
        rec(&mut h, 2, Op::Read, 5_000, 5_010, saw("b", 1));
        assert_ok(&h);
    }
}

#[test]
fn unknown_write_cannot_take_effect_before_its_invocation() {
    let mut h = reg();
    rec(&mut h, 2, Op::Read, 0, 10, saw("a", 1));
    let w = h.invoke(1, R, write("a"), 100);
    h.complete(w, Outcome::Unknown, 1_000).unwrap();
    assert_violation(&h);
}

#[test]
fn unknown_write_takes_effect_at_most_once() {
    let mut h = reg();
    h.invoke(1, R, write("a"), 0);
    rec(&mut h, 2, Op::Read, 100, 110, saw("a", 1));
    rec(&mut h, 2, write("b"), 200, 210, written(2));
    // "a" again, at version 3: the lost write cannot apply a second time.
    rec(&mut h, 2, Op::Read, 300, 310, saw("a", 3));
    assert_violation(&h);
}

#[test]
fn unknown_cas_applies_only_if_its_version_matched() {
    let mut h = reg();
    h.invoke(1, R, cas(0, "a"), 0);
    rec(&mut h, 2, write("b"), 10, 20, written(1));
    // CAS first: ("a", 1), then the write makes ("b", 2). Write first: the CAS fails.
    // Either way ("a", 2) is impossible.
    rec(&mut h, 2, Op::Read, 100, 110, saw("a", 2));
    assert_violation(&h);

    let mut h = reg();
    h.invoke(1, R, cas(0, "a"), 0);
    rec(&mut h, 2, Op::Read, 5, 8, saw("a", 1));
    rec(&mut h, 2, write("b"), 10, 20, written(2));
    assert_ok(&h);
}

#[test]
fn read_of_a_value_nobody_wrote_is_a_violation() {
    let mut h = reg();
    rec(&mut h, 1, write("a"), 0, 10, written(1));
    h.invoke(3, R, write("maybe"), 5); // unknown: could explain "maybe", not "zzz"
    rec(&mut h, 2, Op::Read, 20, 30, saw("zzz", 1));
    let v = assert_violation(&h);
    assert!(v.stuck.iter().any(|o| o.op == Op::Read));

    // A known value with a version it never had is just as impossible.
    let mut h = reg();
    rec(&mut h, 1, write("a"), 0, 10, written(1));
    rec(&mut h, 2, Op::Read, 20, 30, saw("a", 7));
    assert_violation(&h);
}

#[test]
fn version_going_backwards_is_a_violation() {
    let mut h = reg();
    rec(&mut h, 1, write("a"), 0, 10, written(1));
    rec(&mut h, 1, write("b"), 20, 30, written(2));
    rec(&mut h, 2, Op::Read, 40, 50, saw("b", 2));
    rec(&mut h, 2, Op::Read, 60, 70, saw("b", 1));
    assert_violation(&h);

    // A write acknowledged with a version that did not advance.
    let mut h = reg();
    rec(&mut h, 1, write("a"), 0, 10, written(1));
    rec(&mut h, 1, write("b"), 20, 30, written(2));
    rec(&mut h, 1, write("c"), 40, 50, written(2));
    assert_violation(&h);
}

#[test]
fn two_successful_cas_on_one_expected_version_is_a_violation() {
    let mut h = reg();
    rec(&mut h, 1, cas(0, "a"), 0, 100, written(1));
    rec(&mut h, 2, cas(0, "b"), 10, 110, written(1));
    assert_violation(&h);
    // Even when one of them reports the next version.
    let mut h = reg();
    rec(&mut h, 1, cas(0, "a"), 0, 100, written(1));
    rec(&mut h, 2, cas(0, "b"), 10, 110, written(2));
    assert_violation(&h);
}

#[test]
fn two_successful_creates_are_a_violation() {
    let mut h = History::new();
    h.record(1, R, create("a"), 0, Outcome::Ok(Ret::Created), 100)
        .unwrap();
    h.record(2, R, create("b"), 10, Outcome::Ok(Ret::Created), 110)
        .unwrap();
    assert_violation(&h);
}

#[test]
fn no_node_while_present_is_a_violation() {
    let mut h = reg();
    rec(
        &mut h,
        1,
        Op::Read,
        0,
        10,
        Outcome::Fail(FailReason::NoNode),
    );
    assert_violation(&h);
}

#[test]
fn answers_zookeeper_never_gives_are_violations() {
    // getData never answers BadVersion or NodeExists, setData never NodeExists, and
    // create never BadVersion, whatever the register holds.
    for (op, reason) in [
        (Op::Read, FailReason::BadVersion),
        (Op::Read, FailReason::NodeExists),
        (write("a"), FailReason::BadVersion),
        (cas(0, "a"), FailReason::NodeExists),
        (create("a"), FailReason::BadVersion),
    ] {
        for initial in [RegisterState::Absent, present("0", 0)] {
            let mut h = History::new();
            h.set_initial(R, initial);
            rec(&mut h, 1, op.clone(), 0, 10, Outcome::Fail(reason));
            assert_violation(&h);
        }
    }
}

#[test]
fn failures_that_observe_nothing_are_ignored() {
    let mut h = reg();
    rec(
        &mut h,
        1,
        write("a"),
        0,
        10,
        Outcome::Fail(FailReason::Other),
    );
    // A missing parent says nothing about /r.
    rec(
        &mut h,
        1,
        create("x"),
        20,
        30,
        Outcome::Fail(FailReason::NoNode),
    );
    rec(&mut h, 2, Op::Read, 40, 50, saw("0", 0));
    assert_ok(&h);
}

#[test]
fn keys_are_checked_independently_and_the_bad_key_is_named() {
    let mut h = History::new();
    for key in ["/a", "/b", "/c"] {
        h.set_initial(key, present("0", 0));
        h.record(1, key, write("x"), 0, written(1), 10).unwrap();
    }
    // Reads of /a and /c see their own writes; /b's read is stale.
    h.record(2, "/a", Op::Read, 20, saw("x", 1), 30).unwrap();
    h.record(2, "/b", Op::Read, 20, saw("0", 0), 30).unwrap();
    h.record(2, "/c", Op::Read, 20, saw("x", 1), 30).unwrap();
    match verdict(&h) {
        CheckResult::Violation(v) => assert_eq!(v.key, "/b"),
        other => panic!("expected a violation on /b, got {other}"),
    }
}

/// `n` writes of distinct values, all concurrent and unknown, then reads of a value
/// none wrote. Plain WGL rules out every subset and order of the writes (exponential);
/// since no read returns their data, they are interchangeable and the search decides
/// at once.
fn many_unknown_writes_then_an_impossible_read(n: u64) -> History {
    let mut h = reg();
    for i in 0..n {
        h.invoke(i, R, write(&format!("w{i}")), i);
    }
    rec(&mut h, 99, Op::Read, 1_000, 1_010, saw("nobody", 3));
    rec(&mut h, 99, Op::Read, 1_020, 1_030, saw("nobody", 4));
    h
}

#[test]
fn interchangeable_unknown_writes_do_not_explode() {
    let h = many_unknown_writes_then_an_impossible_read(200);
    let limits = Limits {
        search_steps_max: 100_000,
        ..Limits::default()
    };
    assert!(matches!(
        check(&h, &limits).unwrap(),
        CheckResult::Violation(_)
    ));
}

/// A long sequential history: the search takes at least one step per op.
fn long_history(key: &str, ops: i32) -> History {
    let mut h = History::new();
    h.set_initial(key, present("0", 0));
    for i in 0..ops {
        let t = 100 * i as u64;
        let value = format!("v{i}");
        h.record(1, key, write(&value), t, written(i + 1), t + 10)
            .unwrap();
        h.record(1, key, Op::Read, t + 20, saw(&value, i + 1), t + 30)
            .unwrap();
    }
    h
}

#[test]
fn limits_give_inconclusive_not_a_verdict() {
    let h = long_history(R, 5_000);
    assert!(check(&h, &Limits::default()).unwrap().is_linearizable());
    let inconclusive = |limit| CheckResult::Inconclusive {
        key: R.into(),
        limit,
    };
    let few_steps = Limits {
        search_steps_max: 1_000,
        ..Limits::default()
    };
    assert_eq!(
        check(&h, &few_steps).unwrap(),
        inconclusive(LimitHit::SearchSteps)
    );
    let no_memory = Limits {
        memo_bytes_max: 0,
        ..Limits::default()
    };
    assert_eq!(
        check(&h, &no_memory).unwrap(),
        inconclusive(LimitHit::MemoBytes)
    );
    let no_time = Limits {
        search_time_max_ms: 0,
        ..Limits::default()
    };
    assert_eq!(
        check(&h, &no_time).unwrap(),
        inconclusive(LimitHit::SearchTime)
    );
}

#[test]
fn a_violation_elsewhere_beats_an_inconclusive_key() {
    let mut h = long_history("/a", 1_000);
    h.set_initial("/z", present("0", 0));
    h.record(1, "/z", write("a"), 0, written(1), 10).unwrap();
    h.record(1, "/z", Op::Read, 20, saw("0", 0), 30).unwrap();
    let limits = Limits {
        search_steps_max: 100,
        ..Limits::default()
    };
    match check(&h, &limits).unwrap() {
        CheckResult::Violation(v) => assert_eq!(v.key, "/z"),
        other => panic!("expected the violation on /z, got {other}"),
    }
}

#[test]
fn malformed_histories_are_errors_not_panics() {
    let mut h = reg();
    assert_eq!(
        h.complete(OpId(7), written(1), 10),
        Err(HistoryError::UnknownOp(OpId(7)))
    );
    let w = h.invoke(1, R, write("a"), 100);
    assert_eq!(
        h.complete(w, written(1), 99),
        Err(HistoryError::CompletedBeforeInvoked {
            op: w,
            invoke_ns: 100,
            complete_ns: 99
        })
    );
    assert_eq!(
        h.complete(w, saw("a", 1), 200),
        Err(HistoryError::ResultMismatch(w))
    );
    h.complete(w, written(1), 200).unwrap();
    assert_eq!(
        h.complete(w, written(1), 300),
        Err(HistoryError::AlreadyCompleted(w))
    );
    // `record` leaves nothing behind when it refuses.
    let before = h.len();
    assert!(h
        .record(1, R, Op::Read, 10, Outcome::Ok(Ret::Created), 20)
        .is_err());
    assert_eq!(h.len(), before);
    assert!(check(&h, &Limits::default()).unwrap().is_linearizable());
}

#[test]
fn extreme_values_do_not_panic() {
    let mut h = History::new();
    h.set_initial(R, present("", i32::MAX));
    // ZooKeeper's int version wraps.
    rec(&mut h, 1, write(""), 0, u64::MAX, written(i32::MIN));
    rec(
        &mut h,
        1,
        cas(i32::MIN, "x"),
        u64::MAX,
        u64::MAX,
        written(i32::MIN + 1),
    );
    h.record(2, "", Op::Read, u64::MAX, saw("\u{0}\u{ff}", -5), u64::MAX)
        .unwrap();
    let r = check(&h, &Limits::default()).unwrap();
    // The read of "" is a violation (nothing is there); the wrapped versions are fine.
    match r {
        CheckResult::Violation(v) => {
            assert_eq!(v.key, "");
            assert!(v.to_string().contains("0x00c3bf"), "{v}");
        }
        other => panic!("expected a violation on the empty key, got {other}"),
    }
}

#[cfg(feature = "serde")]
#[test]
fn histories_and_results_round_trip_through_json() {
    let mut h = reg();
    rec(&mut h, 1, write("a"), 0, 10, written(1));
    rec(&mut h, 2, Op::Read, 20, 30, saw("0", 0));
    h.invoke(3, R, cas(1, "b"), 40);
    let json = serde_json::to_string(&h).unwrap();
    let back: History = serde_json::from_str(&json).unwrap();
    assert_eq!(back, h);
    let result = check(&back, &Limits::default()).unwrap();
    let json = serde_json::to_string(&result).unwrap();
    assert_eq!(serde_json::from_str::<CheckResult>(&json).unwrap(), result);
}

#[cfg(feature = "serde")]
#[test]
fn a_deserialized_malformed_history_is_an_error() {
    let mut h = reg();
    rec(&mut h, 1, write("a"), 50, 60, written(1));
    let json = serde_json::to_string(&h)
        .unwrap()
        .replace("\"complete_ns\":60", "\"complete_ns\":10");
    let bad: History = serde_json::from_str(&json).unwrap();
    assert!(matches!(
        check(&bad, &Limits::default()),
        Err(HistoryError::CompletedBeforeInvoked { .. })
    ));
}

#[cfg(feature = "serde")]
#[test]
fn a_deserialized_outcome_without_completion_counts_as_unknown() {
    // A write that looks acknowledged (with a version that fits nothing) but has no
    // completion time: never completed counts as unknown, so it may have been applied
    // with the next version, as the later read says.
    let mut h = reg();
    h.invoke(1, R, write("a"), 0);
    rec(&mut h, 2, Op::Read, 10, 20, saw("a", 1));
    let json = serde_json::to_string(&h).unwrap().replacen(
        "\"outcome\":\"Unknown\"",
        "\"outcome\":{\"Ok\":{\"Written\":{\"version\":9}}}",
        1,
    );
    let h: History = serde_json::from_str(&json).unwrap();
    assert!(matches!(h.ops()[0].outcome, Outcome::Ok(_)), "{json}");
    assert!(check(&h, &Limits::default()).unwrap().is_linearizable());
}
