//! Hand-made histories whose verdict is known, one anomaly per test: stale
//! reads, concurrent writes seen in both orders, lost updates with cas, incr,
//! racing adds, pending writes, delete/get interplay, and the limits. Each
//! verdict is also checked against the brute force where the history is
//! small enough, so these double as tests of the oracle.

mod support;

use check::{
    check, check_with, Call, History, HistoryError, Limits, Op, Ret, UnknownReason, Verdict,
};
use support::*;

/// Checks `ops` and, when small, that the brute force agrees.
fn verdict(ops: Vec<Op>) -> Verdict {
    let small = ops.len() <= BRUTE_FORCE_OPS_MAX;
    let oracle = small.then(|| brute_force(&ops));
    let verdict = check(&history(ops));
    if let Some(oracle) = oracle {
        assert_eq!(
            verdict.is_linearizable(),
            oracle,
            "brute force disagrees: {verdict:?}"
        );
    }
    verdict
}

fn assert_linearizable(ops: Vec<Op>) {
    let verdict = verdict(ops);
    assert_eq!(verdict, Verdict::Linearizable);
}

/// Asserts the history is not linearizable on `key`; returns the explanation.
fn assert_not_linearizable(ops: Vec<Op>, key: &str) -> String {
    match verdict(ops) {
        Verdict::NotLinearizable { key: k, witness } => {
            assert_eq!(k, key.as_bytes());
            witness.explanation
        }
        other => panic!("expected not linearizable on {key}, got {other:?}"),
    }
}

#[test]
fn empty_history_is_linearizable() {
    assert_linearizable(vec![]);
    assert_linearizable(vec![done(1, "k", Call::Get, 0, 1, Ret::Miss)]);
}

#[test]
fn stale_read_after_a_completed_write_is_caught() {
    let ops = vec![
        done(1, "k", set("a"), 0, 10, Ret::Stored),
        done(1, "k", set("b"), 20, 30, Ret::Stored),
        done(2, "k", Call::Get, 40, 50, hit("a")),
    ];
    let explanation = assert_not_linearizable(ops, "k");
    eprintln!("{explanation}");
    assert!(
        explanation.contains("#2 client 2 \"k\" get -> hit \"a\""),
        "{explanation}"
    );
    assert!(explanation.contains("value \"b\""), "{explanation}");
}

#[test]
fn read_concurrent_with_a_write_may_see_either_value() {
    for seen in ["a", "b"] {
        assert_linearizable(vec![
            done(1, "k", set("a"), 0, 10, Ret::Stored),
            done(1, "k", set("b"), 20, 30, Ret::Stored),
            done(2, "k", Call::Get, 25, 50, hit(seen)),
        ]);
    }
}

#[test]
fn read_of_a_value_never_written_is_caught() {
    assert_not_linearizable(vec![done(1, "k", Call::Get, 0, 1, hit("x"))], "k");
    assert_not_linearizable(
        vec![
            done(1, "k", set("a"), 0, 10, Ret::Stored),
            done(2, "k", Call::Get, 20, 30, Ret::Miss),
        ],
        "k",
    );
}

#[test]
fn concurrent_sets_may_take_effect_in_either_order() {
    let sets = || {
        vec![
            done(1, "k", set("x"), 0, 100, Ret::Stored),
            done(2, "k", set("y"), 0, 100, Ret::Stored),
        ]
    };
    // One reader sees x then y: x took effect first.
    let mut ops = sets();
    ops.push(done(3, "k", Call::Get, 10, 20, hit("x")));
    ops.push(done(3, "k", Call::Get, 30, 40, hit("y")));
    assert_linearizable(ops);
    // Or y then x.
    let mut ops = sets();
    ops.push(done(3, "k", Call::Get, 10, 20, hit("y")));
    ops.push(done(3, "k", Call::Get, 30, 40, hit("x")));
    assert_linearizable(ops);
    // But not x, y, x: neither set can take effect twice.
    let mut ops = sets();
    ops.push(done(3, "k", Call::Get, 10, 20, hit("x")));
    ops.push(done(3, "k", Call::Get, 30, 40, hit("y")));
    ops.push(done(3, "k", Call::Get, 50, 60, hit("x")));
    assert_not_linearizable(ops, "k");
    // Nor two readers who, after both sets, disagree on the final value.
    let mut ops = sets();
    ops.push(done(3, "k", Call::Get, 110, 120, hit("x")));
    ops.push(done(4, "k", Call::Get, 130, 140, hit("y")));
    assert_not_linearizable(ops, "k");
    // Concurrent readers may disagree while the sets are in flight.
    let mut ops = sets();
    ops.push(done(3, "k", Call::Get, 10, 90, hit("x")));
    ops.push(done(4, "k", Call::Get, 10, 90, hit("y")));
    assert_linearizable(ops);
}

#[test]
fn lost_update_with_cas_is_caught() {
    let reads = || {
        vec![
            done(1, "k", set("0"), 0, 10, Ret::Stored),
            done(1, "k", Call::Gets, 20, 30, hit_cas("0", 5)),
            done(2, "k", Call::Gets, 20, 30, hit_cas("0", 5)),
        ]
    };
    // Both clients cas from the same unique: only one may win.
    let mut ops = reads();
    ops.push(done(1, "k", cas("1", 5), 40, 50, Ret::Stored));
    ops.push(done(2, "k", cas("2", 5), 40, 50, Ret::Stored));
    assert_not_linearizable(ops, "k");
    let mut ops = reads();
    ops.push(done(1, "k", cas("1", 5), 40, 50, Ret::Stored));
    ops.push(done(2, "k", cas("2", 5), 40, 50, Ret::Exists));
    ops.push(done(3, "k", Call::Get, 60, 70, hit("1")));
    assert_linearizable(ops);
    // The loser's EXISTS with no write in between is itself an anomaly.
    let mut ops = reads();
    ops.push(done(2, "k", cas("2", 5), 40, 50, Ret::Exists));
    assert_not_linearizable(ops, "k");
}

#[test]
fn cas_after_an_intervening_write_must_fail() {
    let ops = |cas_ret: Ret| {
        vec![
            done(1, "k", set("a"), 0, 10, Ret::Stored),
            done(1, "k", Call::Gets, 20, 30, hit_cas("a", 7)),
            // The same value written again is a new version.
            done(2, "k", set("a"), 40, 50, Ret::Stored),
            done(1, "k", cas("b", 7), 60, 70, cas_ret),
        ]
    };
    assert_not_linearizable(ops(Ret::Stored), "k");
    assert_linearizable(ops(Ret::Exists));
}

#[test]
fn uniques_name_versions_consistently() {
    // One version, two uniques.
    assert_not_linearizable(
        vec![
            done(1, "k", set("a"), 0, 10, Ret::Stored),
            done(1, "k", Call::Gets, 20, 30, hit_cas("a", 5)),
            done(1, "k", Call::Gets, 40, 50, hit_cas("a", 6)),
        ],
        "k",
    );
    // Two versions, one unique.
    assert_not_linearizable(
        vec![
            done(1, "k", set("a"), 0, 10, Ret::Stored),
            done(1, "k", Call::Gets, 20, 30, hit_cas("a", 5)),
            done(1, "k", set("b"), 40, 50, Ret::Stored),
            done(1, "k", Call::Gets, 60, 70, hit_cas("b", 5)),
        ],
        "k",
    );
    // A concurrent rewrite of the same value explains a second unique.
    assert_linearizable(vec![
        done(1, "k", set("a"), 0, 10, Ret::Stored),
        done(1, "k", Call::Gets, 20, 30, hit_cas("a", 5)),
        done(2, "k", set("a"), 20, 45, Ret::Stored),
        done(1, "k", Call::Gets, 40, 50, hit_cas("a", 6)),
    ]);
    // The numbers themselves mean nothing: decreasing uniques are fine.
    assert_linearizable(vec![
        done(1, "k", set("a"), 0, 10, Ret::Stored),
        done(1, "k", Call::Gets, 20, 30, hit_cas("a", 90)),
        done(1, "k", set("b"), 40, 50, Ret::Stored),
        done(1, "k", Call::Gets, 60, 70, hit_cas("b", 3)),
    ]);
}

#[test]
fn uniques_of_different_keys_are_unrelated() {
    // Sharded groups each have their own log: the same number on two keys
    // names two different writes.
    assert_linearizable(vec![
        done(1, "a", set("x"), 0, 10, Ret::Stored),
        done(1, "b", set("y"), 0, 10, Ret::Stored),
        done(1, "a", Call::Gets, 20, 30, hit_cas("x", 4)),
        done(1, "b", Call::Gets, 20, 30, hit_cas("y", 4)),
        done(1, "b", cas("z", 4), 40, 50, Ret::Stored),
    ]);
}

#[test]
fn a_cas_unique_nobody_observed_may_be_anything_once() {
    // cas with a unique no gets returned: it may be the item's.
    assert_linearizable(vec![
        done(1, "k", set("a"), 0, 10, Ret::Stored),
        done(1, "k", cas("b", 999), 20, 30, Ret::Stored),
    ]);
    // But it is used up by the version it matched.
    assert_not_linearizable(
        vec![
            done(1, "k", set("a"), 0, 10, Ret::Stored),
            done(1, "k", cas("b", 999), 20, 30, Ret::Stored),
            done(1, "k", cas("c", 999), 40, 50, Ret::Stored),
        ],
        "k",
    );
    // EXISTS then STORED with the same unique and no write between: no.
    assert_not_linearizable(
        vec![
            done(1, "k", set("a"), 0, 10, Ret::Stored),
            done(1, "k", cas("b", 999), 20, 30, Ret::Exists),
            done(1, "k", cas("c", 999), 40, 50, Ret::Stored),
        ],
        "k",
    );
    // With a write between, the unique may be the new version's.
    assert_linearizable(vec![
        done(1, "k", set("a"), 0, 10, Ret::Stored),
        done(1, "k", cas("b", 999), 20, 30, Ret::Exists),
        done(2, "k", set("a"), 31, 39, Ret::Stored),
        done(1, "k", cas("c", 999), 40, 50, Ret::Stored),
    ]);
    // cas on a missing item.
    assert_linearizable(vec![done(1, "k", cas("b", 1), 0, 1, Ret::NotFound)]);
    assert_not_linearizable(vec![done(1, "k", cas("b", 1), 0, 1, Ret::Exists)], "k");
}

#[test]
fn incr_results_follow_one_order() {
    let start = || vec![done(1, "n", set("10"), 0, 10, Ret::Stored)];
    let mut ops = start();
    ops.push(done(1, "n", Call::Incr(1), 20, 40, Ret::Number(11)));
    ops.push(done(2, "n", Call::Incr(1), 20, 40, Ret::Number(12)));
    ops.push(done(3, "n", Call::Get, 50, 60, hit("12")));
    assert_linearizable(ops);
    // Two concurrent increments cannot both see 10.
    let mut ops = start();
    ops.push(done(1, "n", Call::Incr(1), 20, 40, Ret::Number(11)));
    ops.push(done(2, "n", Call::Incr(1), 20, 40, Ret::Number(11)));
    assert_not_linearizable(ops, "n");
    // decr floors at zero; incr wraps; a shorter number is written over
    // the old one, padded with spaces (memcached's in place).
    let wrapped = format!("1{}", " ".repeat(19));
    assert_linearizable(vec![
        done(1, "n", set("3"), 0, 1, Ret::Stored),
        done(1, "n", Call::Decr(5), 2, 3, Ret::Number(0)),
        done(1, "n", set("18446744073709551615"), 4, 5, Ret::Stored),
        done(1, "n", Call::Incr(2), 6, 7, Ret::Number(1)),
        done(1, "n", Call::Get, 8, 9, hit(&wrapped)),
    ]);
    assert_not_linearizable(
        vec![
            done(1, "n", set("10"), 0, 1, Ret::Stored),
            done(1, "n", Call::Decr(1), 2, 3, Ret::Number(9)),
            done(1, "n", Call::Get, 4, 5, hit("9")),
        ],
        "n",
    );
    assert_linearizable(vec![
        done(1, "n", Call::Incr(1), 0, 1, Ret::NotFound),
        done(1, "n", set("x"), 2, 3, Ret::Stored),
        done(1, "n", Call::Incr(1), 4, 5, Ret::NonNumeric),
    ]);
    assert_not_linearizable(
        vec![
            done(1, "n", set("x"), 0, 1, Ret::Stored),
            done(1, "n", Call::Incr(1), 2, 3, Ret::Number(1)),
        ],
        "n",
    );
    // incr makes a new version: a unique from before it is stale.
    assert_not_linearizable(
        vec![
            done(1, "n", set("1"), 0, 1, Ret::Stored),
            done(1, "n", Call::Gets, 2, 3, hit_cas("1", 4)),
            done(2, "n", Call::Incr(0), 4, 5, Ret::Number(1)),
            done(1, "n", cas("9", 4), 6, 7, Ret::Stored),
        ],
        "n",
    );
}

#[test]
fn racing_adds_have_one_winner() {
    let mut ops = vec![
        done(1, "k", add("x"), 0, 10, Ret::Stored),
        done(2, "k", add("y"), 0, 10, Ret::Stored),
    ];
    assert_not_linearizable(ops.clone(), "k");
    ops[1] = done(2, "k", add("y"), 0, 10, Ret::NotStored);
    ops.push(done(3, "k", Call::Get, 20, 30, hit("x")));
    assert_linearizable(ops.clone());
    ops[2] = done(3, "k", Call::Get, 20, 30, hit("y"));
    assert_not_linearizable(ops, "k");
    // A delete between them lets both win.
    assert_linearizable(vec![
        done(1, "k", add("x"), 0, 10, Ret::Stored),
        done(3, "k", Call::Delete, 0, 10, Ret::Deleted),
        done(2, "k", add("y"), 0, 10, Ret::Stored),
    ]);
}

#[test]
fn pending_writes_may_or_may_not_have_happened() {
    let base = || {
        vec![
            done(1, "k", set("x"), 0, 10, Ret::Stored),
            pending(2, "k", set("y"), 20),
        ]
    };
    // It happened.
    let mut ops = base();
    ops.push(done(3, "k", Call::Get, 100, 110, hit("y")));
    assert_linearizable(ops);
    // It did not (yet).
    let mut ops = base();
    ops.push(done(3, "k", Call::Get, 100, 110, hit("x")));
    assert_linearizable(ops);
    // It happened late, long after its client gave up.
    let mut ops = base();
    ops.push(done(3, "k", Call::Get, 100, 110, hit("x")));
    ops.push(done(3, "k", Call::Get, 1000, 1010, hit("y")));
    assert_linearizable(ops);
    // It cannot happen and then be undone.
    let mut ops = base();
    ops.push(done(3, "k", Call::Get, 100, 110, hit("y")));
    ops.push(done(3, "k", Call::Get, 120, 130, hit("x")));
    assert_not_linearizable(ops, "k");
    // It cannot happen before it was invoked.
    assert_not_linearizable(
        vec![
            done(3, "k", Call::Get, 0, 10, hit("y")),
            pending(2, "k", set("y"), 20),
        ],
        "k",
    );
    // Pending reads constrain nothing.
    assert_linearizable(vec![
        pending(1, "k", Call::Get, 0),
        pending(1, "k", Call::Gets, 0),
        done(1, "k", Call::Get, 5, 6, Ret::Miss),
    ]);
}

#[test]
fn pending_cas_and_incr_take_effect_only_when_they_can() {
    // A pending cas with the current unique may have stored.
    let ops = |get: Ret| {
        vec![
            done(1, "k", set("a"), 0, 10, Ret::Stored),
            done(1, "k", Call::Gets, 20, 30, hit_cas("a", 5)),
            pending(1, "k", cas("b", 5), 40),
            done(2, "k", Call::Get, 100, 110, get),
        ]
    };
    assert_linearizable(ops(hit("b")));
    assert_linearizable(ops(hit("a")));
    // If it stored, its unique is used up: a completed cas on it cannot
    // store too, and without it nothing explains "b".
    let mut both = ops(hit("b"));
    both.push(done(3, "k", cas("c", 5), 120, 130, Ret::Stored));
    assert_not_linearizable(both, "k");
    // A pending cas with a stale unique cannot explain its value.
    assert_not_linearizable(
        vec![
            done(1, "k", set("a"), 0, 10, Ret::Stored),
            done(1, "k", Call::Gets, 20, 30, hit_cas("a", 5)),
            done(1, "k", set("c"), 35, 38, Ret::Stored),
            pending(1, "k", cas("b", 5), 40),
            done(2, "k", Call::Get, 100, 110, hit("b")),
        ],
        "k",
    );
    // Pending increments: either, both or none may have happened.
    for (seen, ok) in [("1", true), ("2", true), ("3", true), ("4", false)] {
        let ops = vec![
            done(1, "n", set("1"), 0, 10, Ret::Stored),
            pending(1, "n", Call::Incr(1), 20),
            pending(2, "n", Call::Incr(1), 20),
            done(3, "n", Call::Get, 100, 110, hit(seen)),
        ];
        assert_eq!(verdict(ops).is_linearizable(), ok, "saw {seen}");
    }
}

#[test]
fn delete_and_get_interplay() {
    let base = || {
        vec![
            done(1, "k", set("a"), 0, 10, Ret::Stored),
            done(1, "k", Call::Delete, 20, 30, Ret::Deleted),
        ]
    };
    let mut ops = base();
    ops.push(done(2, "k", Call::Get, 40, 50, Ret::Miss));
    assert_linearizable(ops);
    let mut ops = base();
    ops.push(done(2, "k", Call::Get, 40, 50, hit("a")));
    assert_not_linearizable(ops, "k");
    // A get concurrent with the delete sees either.
    for seen in [hit("a"), Ret::Miss] {
        let mut ops = base();
        ops.push(done(2, "k", Call::Get, 25, 50, seen));
        assert_linearizable(ops);
    }
    // Deleting twice: the second finds nothing.
    let mut ops = base();
    ops.push(done(2, "k", Call::Delete, 40, 50, Ret::Deleted));
    assert_not_linearizable(ops, "k");
    // NOT_FOUND while the item is certainly present.
    assert_not_linearizable(
        vec![
            done(1, "k", set("a"), 0, 10, Ret::Stored),
            done(2, "k", Call::Delete, 20, 30, Ret::NotFound),
        ],
        "k",
    );
    // A pending delete explains a later miss.
    assert_linearizable(vec![
        done(1, "k", set("a"), 0, 10, Ret::Stored),
        pending(2, "k", Call::Delete, 20),
        done(3, "k", Call::Get, 40, 50, Ret::Miss),
    ]);
    // Delete then re-add: the unique is new.
    assert_not_linearizable(
        vec![
            done(1, "k", set("a"), 0, 10, Ret::Stored),
            done(1, "k", Call::Gets, 11, 12, hit_cas("a", 1)),
            done(1, "k", Call::Delete, 20, 30, Ret::Deleted),
            done(1, "k", add("a"), 31, 32, Ret::Stored),
            done(1, "k", Call::Gets, 40, 50, hit_cas("a", 1)),
        ],
        "k",
    );
}

#[test]
fn keys_are_independent() {
    // Each key alone is fine; the interleaving across keys does not matter.
    assert_linearizable(vec![
        done(1, "a", set("1"), 0, 10, Ret::Stored),
        done(1, "b", set("2"), 20, 30, Ret::Stored),
        done(2, "a", Call::Get, 40, 50, hit("1")),
        done(2, "b", Call::Get, 40, 50, hit("2")),
    ]);
    // The verdict names the key at fault.
    assert_not_linearizable(
        vec![
            done(1, "a", set("1"), 0, 10, Ret::Stored),
            done(1, "b", set("2"), 20, 30, Ret::Stored),
            done(2, "b", Call::Get, 40, 50, Ret::Miss),
        ],
        "b",
    );
}

#[test]
fn equal_times_count_as_concurrent() {
    assert_linearizable(vec![
        done(1, "k", set("a"), 0, 10, Ret::Stored),
        done(2, "k", Call::Get, 10, 20, Ret::Miss),
    ]);
}

#[test]
fn malformed_histories_are_refused() {
    let err = History::new(vec![done(1, "k", Call::Get, 0, 1, Ret::Stored)]);
    assert!(matches!(
        err,
        Err(HistoryError::ReplyDoesNotFit { index: 0, .. })
    ));
    let err = History::new(vec![
        done(1, "k", Call::Get, 0, 1, Ret::Miss),
        done(1, "k", set("a"), 5, 4, Ret::Stored),
    ]);
    assert_eq!(
        err,
        Err(HistoryError::CompletedBeforeInvoked {
            index: 1,
            invoked_ns: 5,
            completed_ns: 4
        })
    );
}

#[test]
fn limits_give_unknown_not_a_wrong_verdict() {
    let ops: Vec<Op> = (0..5)
        .map(|i| done(1, "k", set("a"), i * 10, i * 10 + 1, Ret::Stored))
        .collect();
    let limits = Limits {
        ops_per_key_max: 4,
        ..Limits::DEFAULT
    };
    let report = check_with(&history(ops), &limits);
    assert_eq!(
        report.verdict,
        Verdict::Unknown {
            key: b"k".to_vec(),
            reason: UnknownReason::TooManyOps { ops: 5, ops_max: 4 }
        }
    );

    // Many concurrent writes and a read that none explains: the search must
    // try every order, which takes more than a tiny budget.
    let mut ops: Vec<Op> = (0..12)
        .map(|i| done(i, "k", set(&i.to_string()), 0, 100, Ret::Stored))
        .collect();
    ops.push(done(99, "k", Call::Get, 200, 210, hit("never")));
    let hard = history(ops);
    let limits = Limits {
        search_steps_max: 50,
        ..Limits::DEFAULT
    };
    let report = check_with(&hard, &limits);
    assert_eq!(
        report.verdict,
        Verdict::Unknown {
            key: b"k".to_vec(),
            reason: UnknownReason::StepLimit { steps_max: 50 }
        }
    );
    assert!(check(&hard).is_not_linearizable());

    // A key found not linearizable wins over a key the limits stopped.
    let mut ops: Vec<Op> = (0..12)
        .map(|i| done(i, "a", set(&i.to_string()), 0, 100, Ret::Stored))
        .collect();
    ops.push(done(99, "a", Call::Get, 200, 210, hit("never")));
    ops.push(done(1, "b", Call::Get, 0, 1, hit("never")));
    let report = check_with(&history(ops), &limits);
    assert!(report.verdict.is_not_linearizable(), "{:?}", report.verdict);
}
