//! Bounded work on a realistic history: 1,000 ops over 10 keys from 5
//! clients, with some pending ops, checks in a small fraction of the step
//! budget. Not timed (timing tests are flaky); the step count is the measure.
//! The same history with one stale read injected is caught, also within the
//! budget.

mod support;

use check::{check_with, Call, ClientId, History, Limits, Op, Ret, Verdict};
use rand::rngs::StdRng;
use rand::SeedableRng;
use support::*;

const SIM: Sim = Sim {
    clients: 5,
    ops: 1_000,
    keys: 10,
    pending_percent: 3,
};
/// The share of the per-key step budget a key may use: 1/STEPS_FRACTION.
const STEPS_FRACTION: u64 = 100;

#[test]
fn thousand_ops_check_well_within_the_step_limit() {
    for seed in 0..5 {
        let ops = simulate(&mut StdRng::seed_from_u64(seed), &SIM);
        let history = History::new(ops).expect("simulated histories are well formed");
        let report = check_with(&history, &Limits::DEFAULT);
        assert_eq!(report.verdict, Verdict::Linearizable, "seed {seed}");
        assert_eq!(report.keys, 10);
        assert!(
            report.steps_key_max * STEPS_FRACTION < Limits::DEFAULT.search_steps_max,
            "seed {seed}: {report:?}"
        );
        eprintln!(
            "seed {seed}: {} steps in all, at most {} on one key",
            report.steps_total, report.steps_key_max
        );
    }
}

#[test]
fn an_injected_stale_read_is_found_within_the_step_limit() {
    let mut ops = simulate(&mut StdRng::seed_from_u64(7), &SIM);
    // After everything, read back a key's first value as if nothing since.
    let end_ns = ops
        .iter()
        .map(|op| op.completed_ns().unwrap_or(op.invoked_ns))
        .max()
        .unwrap_or(0)
        + 1_000;
    let key = b"k3".to_vec();
    ops.push(Op::completed(
        ClientId(9),
        key.clone(),
        Call::Set(v("fresh")),
        end_ns,
        end_ns + 1,
        Ret::Stored,
    ));
    ops.push(Op::completed(
        ClientId(9),
        key.clone(),
        Call::Get,
        end_ns + 2,
        end_ns + 3,
        Ret::Hit(v("stale")),
    ));
    let history = History::new(ops).expect("well formed");
    let report = check_with(&history, &Limits::DEFAULT);
    match &report.verdict {
        Verdict::NotLinearizable { key: k, witness } => {
            assert_eq!(k, &key);
            assert_eq!(witness.stuck.len(), 1, "{}", witness.explanation);
        }
        other => panic!("expected not linearizable, got {other:?}"),
    }
    assert!(report.steps_key_max * STEPS_FRACTION < Limits::DEFAULT.search_steps_max);
}
