//! The checker against the brute force on many small random histories.
//!
//! Histories come from the simulator (a real linearizable execution with
//! random overlap, pending ops that did or did not take effect, cas uniques
//! that are stale, current or made up), then, for the cross-check, one or
//! two mutations of replies, uniques, times or pendingness. Every verdict
//! must be definite and equal the brute force's. The fixed-seed test also
//! checks that the mutations produce a fair mix of both verdicts, so the
//! comparison is not vacuous.

mod support;

use check::{check, History, Op, Verdict};
use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use support::*;

/// Cases per proptest; each one is checked by both checkers.
const PROPTEST_CASES: u32 = 5_000;
/// Fixed seeds run by the deterministic cross-check.
const FIXED_SEEDS: u64 = 20_000;

fn small_sim(rng: &mut StdRng) -> Sim {
    Sim {
        clients: rng.gen_range(1..=4),
        ops: rng.gen_range(1..=7),
        keys: rng.gen_range(1..=2),
        pending_percent: rng.gen_range(0..=30),
    }
}

/// Both checkers on `ops`; panics with the history if they disagree or the
/// checker is undecided. Returns the verdict.
fn cross_check(ops: Vec<Op>) -> bool {
    let oracle = brute_force(&ops);
    let history = History::new(ops.clone()).expect("simulated histories are well formed");
    let verdict = check(&history);
    let checker = match &verdict {
        Verdict::Linearizable => true,
        Verdict::NotLinearizable { .. } => false,
        Verdict::Unknown { .. } => panic!("undecided on a tiny history: {ops:#?}"),
    };
    assert_eq!(
        checker, oracle,
        "checker {verdict:?}, brute force {oracle}, history {ops:#?}"
    );
    oracle
}

fn simulated(seed: u64) -> Vec<Op> {
    let mut rng = StdRng::seed_from_u64(seed);
    let sim = small_sim(&mut rng);
    simulate(&mut rng, &sim)
}

fn mutated(seed: u64) -> Vec<Op> {
    let mut rng = StdRng::seed_from_u64(seed);
    let sim = small_sim(&mut rng);
    let mut ops = simulate(&mut rng, &sim);
    for _ in 0..rng.gen_range(1..=3) {
        mutate(&mut rng, &mut ops);
    }
    ops
}

proptest! {
    // Failures print the seed; nothing is persisted from an integration test.
    #![proptest_config(ProptestConfig {
        cases: PROPTEST_CASES,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// A real linearizable execution is accepted by both checkers.
    #[test]
    fn simulated_histories_are_linearizable(seed in any::<u64>()) {
        prop_assert!(cross_check(simulated(seed)));
    }

    /// After mutation, the verdicts agree whatever they are.
    #[test]
    fn mutated_histories_agree_with_brute_force(seed in any::<u64>()) {
        cross_check(mutated(seed));
    }

    /// Longer executions, beyond the brute force, are still accepted.
    #[test]
    fn longer_simulated_histories_are_linearizable(seed in any::<u64>()) {
        let mut rng = StdRng::seed_from_u64(seed);
        let sim = Sim {
            clients: rng.gen_range(1..=6),
            ops: rng.gen_range(8..=80),
            keys: rng.gen_range(1..=3),
            pending_percent: rng.gen_range(0..=15),
        };
        let ops = simulate(&mut rng, &sim);
        let verdict = check(&History::new(ops.clone()).expect("well formed"));
        prop_assert_eq!(verdict, Verdict::Linearizable, "history {:#?}", ops);
    }
}

#[test]
fn fixed_seeds_agree_and_cover_both_verdicts() {
    let mut linearizable = 0u64;
    for seed in 0..FIXED_SEEDS {
        assert!(cross_check(simulated(seed)), "seed {seed}");
        if cross_check(mutated(seed)) {
            linearizable += 1;
        }
    }
    let not = FIXED_SEEDS - linearizable;
    // Both verdicts must be common, or the comparison proves little.
    assert!(
        linearizable * 5 > FIXED_SEEDS && not * 5 > FIXED_SEEDS,
        "{linearizable} linearizable, {not} not, of {FIXED_SEEDS} mutated histories"
    );
    eprintln!("{linearizable} linearizable, {not} not, of {FIXED_SEEDS} mutated histories");
}
