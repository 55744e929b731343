//! The simulator's CI budget: a fixed range of seeds with faults must hold
//! every invariant, a seed must replay byte for byte, and each deliberate
//! bug must be caught within its seed budget (DESIGN §7a).

use sim::{replay_command, run, Bugs, Options};

/// Runs `seeds` and returns the first failing seed with its options.
fn first_failure(
    seeds: std::ops::Range<u64>,
    configure: impl Fn(&mut Options),
) -> Option<(Options, sim::Violation)> {
    for seed in seeds {
        let mut options = Options::new(seed, 3);
        configure(&mut options);
        if let Some(violation) = run(&options).violation {
            return Some((options, violation));
        }
    }
    None
}

fn assert_clean(seeds: std::ops::Range<u64>, configure: impl Fn(&mut Options)) {
    if let Some((options, v)) = first_failure(seeds, configure) {
        panic!(
            "seed {}: {} at {} ms: {}\nreplay: {}",
            options.seed,
            v.invariant,
            v.time_ms,
            v.detail,
            replay_command(&options)
        );
    }
}

#[test]
fn three_servers_with_faults_hold_every_invariant() {
    assert_clean(0..300, |_| {});
}

#[test]
fn five_servers_with_faults_hold_every_invariant() {
    assert_clean(0..100, |o| o.servers = 5);
}

#[test]
fn bootstrapped_group_with_faults_holds_every_invariant() {
    assert_clean(0..100, |o| o.bootstrap = true);
}

/// A group that elects its own leader by vote (the LB group's election,
/// DESIGN §3b), no LB at all.
#[test]
fn group_by_vote_with_faults_holds_every_invariant() {
    assert_clean(0..300, |o| o.by_vote = true);
    assert_clean(0..100, |o| {
        o.by_vote = true;
        o.servers = 5;
    });
}

/// The LBs as one group (DESIGN §3c): each LB a replica of the group's
/// log, the one leading it acting on the registry the log holds.
#[test]
fn lb_group_with_faults_holds_every_invariant() {
    assert_clean(0..300, |o| o.lbs = 3);
    assert_clean(0..100, |o| o.lbs = 5);
    // Bootstrap seed 18 left the cluster without a leader for good before
    // the founder could found again (`lb::core`).
    assert_clean(0..100, |o| {
        o.lbs = 3;
        o.bootstrap = true;
    });
}

/// LBs added (from spares) and removed, the acting one too, among the
/// faults, one change at a time (DESIGN §3c).
#[test]
fn lb_group_changing_its_lbs_holds_every_invariant() {
    let changes = |lbs: usize| {
        move |o: &mut Options| {
            o.lbs = lbs;
            o.lb_changes = true;
        }
    };
    assert_clean(0..200, changes(3));
    assert_clean(0..100, changes(5));
}

/// Seeds that once found real bugs, kept as regressions: a snapshot
/// install that threw away log entries the follower had acknowledged (lost
/// committed entries, and a Nack storm), found by 10,000-seed runs, and a
/// Nack storm from a reordered window (seed 303,090).
#[test]
fn seeds_that_found_real_bugs_stay_clean() {
    // Run as they were found, before remove-server faults changed their
    // schedules.
    let as_found = |o: &mut Options| o.remove_server = false;
    for seed in [2877, 4391, 5622, 8772, 303_090] {
        assert_clean(seed..seed + 1, as_found);
    }
    // A window reordered on its way drew a Nack per datagram and a window
    // per Nack (fixed), and the first fix for it ignored a forward Nack
    // from a follower whose snapshot covered more than the leader resent.
    let mut options = Options::new(401_809, 5);
    as_found(&mut options);
    let report = run(&options);
    assert!(report.violation.is_none(), "{:?}", report.violation);
    assert_clean(100_373..100_374, |o| {
        as_found(o);
        o.bootstrap = true;
    });
    // An LB leader that took itself out and lost its majority before the
    // entry reached the last LB stopped, and the last LB never had a
    // majority again (an LB now stops once it knows its removal committed).
    assert_clean(945..946, |o| {
        o.lbs = 3;
        o.lb_changes = true;
    });
}

#[test]
fn same_seed_same_trace() {
    let hash = |seed| {
        let mut options = Options::new(seed, 3);
        options.trace_hash = true;
        let report = run(&options);
        assert!(report.violation.is_none(), "{:?}", report.violation);
        assert!(report.steps > 1_000 && report.writes_acked > 10);
        report.trace_hash
    };
    for seed in [3, 11] {
        assert_eq!(hash(seed), hash(seed), "seed {seed} replays byte for byte");
    }
    assert_ne!(hash(3), hash(11));
}

/// Asserts that turning on bug `name` makes a run fail within `budget`
/// seeds, and returns the first failing seed.
fn caught_within(name: &str, budget: u64) -> u64 {
    caught_within_where(name, budget, |_| {})
}

/// [`caught_within`], each run also configured by `configure`.
fn caught_within_where(name: &str, budget: u64, configure: impl Fn(&mut Options)) -> u64 {
    let bugs = Bugs::named(name).expect("a known bug");
    let configure = |o: &mut Options| {
        o.bugs = bugs;
        configure(o);
    };
    match first_failure(0..budget, configure) {
        Some((options, v)) => {
            println!(
                "{name}: caught at seed {} by {}: {}",
                options.seed, v.invariant, v.detail
            );
            options.seed
        }
        None => panic!("bug {name} not caught within {budget} seeds"),
    }
}

#[test]
fn bug_commit_on_minority_is_caught() {
    caught_within("commit-on-minority", 50);
}

#[test]
fn bug_skip_noop_is_caught() {
    caught_within("skip-noop", 100);
}

#[test]
fn bug_accept_stale_append_is_caught() {
    caught_within("accept-stale-append", 500);
}

#[test]
fn bug_ack_before_fsync_is_caught() {
    caught_within("ack-before-fsync", 50);
}

#[test]
fn bug_read_without_read_index_is_caught() {
    caught_within("read-without-read-index", 300);
}

#[test]
fn bug_promise_during_lease_is_caught() {
    caught_within("promise-during-lease", 300);
}

/// Rarer than the others: caught first at seed 287 while only the leader
/// served reads, at seed 19 since followers' read-index questions are
/// answered under the lease too.
#[test]
fn bug_lease_ignores_holds_is_caught() {
    caught_within("lease-ignores-holds", 600);
}

/// The keystore stream (the server's code, run by the simulator with small
/// chunks): a follower that installs the file under the wrong term no
/// longer matches its leader's log after it. Caught first at seed 0.
#[test]
fn bug_snapshot_frame_term_is_caught() {
    caught_within("snapshot-frame-term", 100);
}

/// Reads on followers (half the clients' reads go to any server): a
/// follower that serves a read as soon as the leader's read index comes
/// back, before it has applied through it, returns a stale value. Caught
/// first at seed 0.
#[test]
fn bug_follower_read_before_apply_is_caught() {
    caught_within("follower-read-before-apply", 100);
}

/// By vote: a vote granted to a candidate whose log is older than the
/// voter's lets it win without a committed entry (Raft §5.4.1). Caught
/// first at seed 1, by leader completeness.
#[test]
fn bug_vote_for_older_log_is_caught() {
    caught_within_where("vote-for-older-log", 100, |o| o.by_vote = true);
}

/// By vote: a vote is a promise to a new term; granted while the leader
/// may hold a read lease on this voter's last Ack, a new leader serves
/// beside it. Rarer: caught first at seed 255, by lease safety (the fault
/// that cuts the leader from one follower, which then stands, makes it
/// show; without that fault, not before seed 7,894).
#[test]
fn bug_promise_during_lease_is_caught_by_vote() {
    caught_within_where("promise-during-lease", 2_000, |o| o.by_vote = true);
}

/// An LB acting on a registry it proposed but that is not committed: an
/// LB cut off from the other LBs (still heard by the servers) issues a data
/// term the LB that leads after it issues too. Caught first at seed 23 with
/// three LBs, and with five, by "data term issued once".
#[test]
fn bug_lb_acts_before_commit_is_caught() {
    caught_within_where("lb-acts-before-commit", 200, |o| o.lbs = 3);
    caught_within_where("lb-acts-before-commit", 200, |o| o.lbs = 5);
}

/// The LB group elects by vote: a vote granted to an LB with an older log
/// elects a leader without a committed registry (seed 28 with three LBs,
/// seed 2 with five, by leader completeness in the LB group).
#[test]
fn bug_lb_vote_for_older_log_is_caught() {
    caught_within_where("vote-for-older-log", 200, |o| o.lbs = 3);
    caught_within_where("vote-for-older-log", 200, |o| o.lbs = 5);
}
