//! Reads: heartbeat rounds and the read lease.

use super::*;

#[test]
fn read_waits_for_a_majority_round() {
    let mut g = Group::new(&[1, 2, 3]);
    g.elect(1, 1);
    g.node(2).up = false;
    g.node(3).up = false;
    g.read(1, 42).unwrap();
    g.settle();
    assert!(g.node(1).reads_ready.is_empty(), "no majority: no read");
    g.node(3).up = true;
    g.tick(100);
    assert_eq!(g.node(1).reads_ready, vec![42]);
}

#[test]
fn a_read_round_is_answered_before_the_followers_fsync() {
    let mut g = Group::new(&[1, 2, 3]);
    g.elect(1, 1);
    g.propose(1, payload(1)).unwrap();
    g.drive(ServerId(1));
    let (term, append) = take_to(&mut g, 2).remove(0);
    let now = g.now_ms;
    let follower = &mut g.node(2).replica;
    follower.receive(now, ServerId(1), term, append);
    follower.flush(now);
    let acked = |actions: &[Action]| {
        actions.iter().find_map(|a| match a {
            Action::Send {
                message: Message::Ack { seq, .. },
                ..
            } => Some(*seq),
            _ => None,
        })
    };
    let actions = follower.take_actions();
    assert_eq!(acked(&actions), None, "a write's Ack waits for the fsync");
    // A read round arrives while the fsync runs: answered at once.
    g.read(1, 9).unwrap();
    g.drive(ServerId(1));
    let (term, round) = take_to(&mut g, 2).remove(0);
    let Message::Append { seq: round_seq, .. } = round else {
        panic!("a read round is an Append: {round:?}");
    };
    let follower = &mut g.node(2).replica;
    follower.receive(now, ServerId(1), term, round);
    follower.flush(now);
    assert_eq!(acked(&follower.take_actions()), Some(round_seq));
}

#[test]
fn an_ack_counts_only_for_rounds_of_its_own_term() {
    // Rounds of term 1 while server 2 is away: the others count far
    // ahead of it. Server 2 then leads term 2; its first rounds must not
    // be confirmed by the old leader's numbers.
    let mut g = Group::new(&[1, 2, 3]);
    g.elect(1, 1);
    g.node(2).up = false;
    for token in 0..10 {
        g.read(1, token).unwrap();
        g.settle();
    }
    g.node(2).up = true;
    g.elect(2, 2);
    g.node(1).up = false;
    g.node(3).up = false;
    g.read(2, 99).unwrap();
    g.settle();
    assert!(
        g.node(2).reads_ready.is_empty(),
        "no follower answered this round"
    );
    g.node(3).up = true;
    g.tick(100);
    assert_eq!(g.node(2).reads_ready, vec![99]);
}

#[test]
fn a_lease_runs_from_the_start_of_a_round_a_majority_answered() {
    let mut g = Group::new(&[1, 2, 3]);
    g.elect(1, 1);
    let started = g.now_ms;
    let lease = Timing::default().lease_ms * (100 - LEASE_MARGIN_PERCENT) / 100;
    assert_eq!(g.node(1).replica.lease_until_ms(), started + lease);
    // Answers keep it going; without them it ends, and reads wait for
    // a round again.
    g.tick(100);
    assert_eq!(g.node(1).replica.lease_until_ms(), started + 100 + lease);
    g.node(2).up = false;
    g.node(3).up = false;
    for _ in 0..3 {
        g.tick(100);
    }
    let now = g.now_ms;
    assert!(g.node(1).replica.lease_until_ms() <= now);
    assert!(
        g.node(2).replica.lease_until_ms() == 0,
        "followers hold none"
    );
}

#[test]
fn a_lease_lasts_the_shortest_hold_of_the_majority_behind_it() {
    // Leader 1 would hold 300 ms; its followers declare 150 and 240.
    let hold = |id| [0, 300, 150, 240][id as usize];
    let mut g = Group::with_heartbeats(&[1, 2, 3], |id| hold(id) / LEASE_HEARTBEATS);
    let margin = |ms: u64| ms * (100 - LEASE_MARGIN_PERCENT) / 100;
    g.elect(1, 1);
    let started = g.now_ms;
    // Both answered: the best majority is the leader and server 3.
    assert_eq!(g.node(1).replica.lease_until_ms(), started + margin(240));
    // Only server 2 answers: its hold is the lease's.
    g.node(3).up = false;
    g.tick(500);
    let started = g.now_ms;
    assert_eq!(g.node(1).replica.lease_until_ms(), started + margin(150));
}

#[test]
fn a_follower_holds_its_promise_while_its_leader_may_hold_a_lease() {
    let mut g = Group::new(&[1, 2, 3]);
    g.elect(1, 1);
    let answered = g.now_ms;
    let lease_ms = Timing::default().lease_ms;
    g.now_ms += 50;
    g.receive(2, ServerId::LB, Term(2), Message::Prepare);
    let actions = g.node(2).replica.take_actions();
    assert_eq!(
        actions[0],
        Action::PersistTerm(Term(2)),
        "the term is taken at once"
    );
    assert!(!promised(&actions), "{actions:?}");
    // A resent Prepare is not refused while the promise is held.
    g.receive(2, ServerId::LB, Term(2), Message::Prepare);
    assert!(g.node(2).replica.take_actions().is_empty());
    let now = answered + lease_ms - 1;
    g.node(2).replica.tick(now);
    assert!(!promised(&g.node(2).replica.take_actions()));
    g.node(2).replica.tick(answered + lease_ms);
    assert!(promised(&g.node(2).replica.take_actions()));
}

#[test]
fn a_restarted_server_holds_promises_for_a_lease() {
    // Its Acks from before the crash are forgotten, so it waits as if it
    // had just sent one.
    let durable = Durable {
        term: Term(1),
        snapshot_index: LogIndex(0),
        snapshot_term: Term(0),
        entries: Vec::new(),
        snapshot_membership: Membership::default(),
    };
    let timing = Timing::default();
    let mut replica = Replica::new(ServerId(2), timing, durable, 2, 5_000);
    replica.set_lb_addr(LB_ADDR.parse().unwrap());
    replica.receive(5_000, ServerId::LB, Term(2), Message::Prepare);
    assert!(!promised(&replica.take_actions()));
    replica.tick(5_000 + timing.lease_ms);
    assert!(promised(&replica.take_actions()));
}
