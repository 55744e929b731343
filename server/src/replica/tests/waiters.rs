//! The host's waiters: who is answered, when, and with what.

use super::*;

#[test]
fn a_proposal_is_answered_once_and_as_ours_while_its_entry_holds_its_term() {
    let mut g = Group::new(&[1, 2, 3]);
    g.elect(1, 1);
    let mut waiters: Waiters<&str, &str> = Waiters::default();
    let index = waiters
        .propose(&mut g.node(1).replica, payload(1), "first")
        .expect("the leader takes it");
    g.settle();
    let leader = &g.node(1).replica;
    assert_eq!(waiters.applied(leader, index), Some(Applied::Ours("first")));
    assert_eq!(waiters.applied(leader, index), None, "answered once");

    // A follower refuses and gives the waiter back.
    let refused = waiters.propose(&mut g.node(2).replica, payload(2), "second");
    assert!(matches!(refused, Err((NotLeader::Follower(_), "second"))));

    // Proposals after a lost point are returned as unknown.
    let later = waiters
        .propose(&mut g.node(1).replica, payload(3), "third")
        .expect("the leader takes it");
    assert_eq!(waiters.lost_after(LogIndex(later.0 - 1)), vec!["third"]);
    assert!(waiters.lost_after(LogIndex(0)).is_empty());
}

#[test]
fn a_proposal_whose_index_another_leader_filled_is_replaced() {
    let mut g = Group::new(&[1, 2, 3]);
    g.elect(1, 1);
    let mut waiters: Waiters<&str, &str> = Waiters::default();
    // Proposed in term 1; the core is then in term 2 with another entry
    // at that index (a truncation the driver would report).
    let index = waiters
        .propose(&mut g.node(1).replica, payload(1), "mine")
        .expect("the leader takes it");
    g.node(1).up = false;
    g.elect(2, 2);
    g.node(2).replica.propose(payload(9)).expect("leads term 2");
    g.settle();
    let new_leader = &g.node(2).replica;
    assert_ne!(new_leader.term_at(index), Some(Term(1)));
    assert_eq!(
        waiters.applied(new_leader, index),
        Some(Applied::Replaced("mine"))
    );
}

#[test]
fn a_read_is_served_once_its_round_is_confirmed_and_the_state_caught_up() {
    let mut g = Group::new(&[1, 2, 3]);
    g.elect(1, 1);
    let mut waiters: Waiters<&str, &str> = Waiters::default();
    let now = g.now_ms;
    waiters
        .read(&mut g.node(2).replica, now, "on a follower")
        .expect("a follower asks the leader's read index");
    waiters
        .read(&mut g.node(1).replica, now, "read")
        .expect("the leader starts a round");
    // Round confirmed at index 5 (tokens count every read asked for: the
    // follower's took 1).
    waiters.read_ready(2, LogIndex(5), LogIndex(3), 1_000);
    let none = (vec![], vec![]);
    assert_eq!(waiters.reads_served(LogIndex(4), 1_002), none);
    assert_eq!(
        waiters.reads_served(LogIndex(5), 1_007),
        (vec!["read"], vec![])
    );
    assert_eq!(
        waiters.reads_served(LogIndex(9), 1_009),
        none,
        "served once"
    );
    // It waited 7 ms for the state to apply through 5.
    assert_eq!(waiters.apply_waits(), (1, 7));
    // A read whose state never catches up is given up, once.
    waiters
        .read(&mut g.node(1).replica, now, "stuck")
        .expect("the leader starts a round");
    waiters.read_ready(3, LogIndex(50), LogIndex(9), 2_000);
    let waited = 2_000 + READ_APPLY_WAIT_MS_MAX;
    assert_eq!(waiters.reads_served(LogIndex(9), waited - 1), none);
    assert_eq!(
        waiters.reads_served(LogIndex(9), waited),
        (vec![], vec!["stuck"])
    );
    assert_eq!(waiters.reads_served(LogIndex(9), waited + 1), none);
    // A failed round gives the waiter back once.
    waiters
        .read(&mut g.node(1).replica, now, "failed")
        .expect("the leader starts a round");
    assert_eq!(waiters.read_failed(4), Some("failed"));
    assert_eq!(waiters.read_failed(4), None);
    // Held reads of a server that stopped leading are returned.
    assert!(waiters
        .retry_held_reads(&mut g.node(2).replica, now)
        .is_empty());
}

#[test]
fn committed_entries_apply_in_order_once_and_answer_their_proposal() {
    let mut g = Group::new(&[1, 2, 3]);
    g.elect(1, 1);
    let mut waiters: Waiters<&str, &str> = Waiters::default();
    let index = waiters
        .propose(&mut g.node(1).replica, payload(1), "mine")
        .expect("the leader takes it");
    g.settle();
    let commit = g.node(1).committed;
    assert!(commit >= index);
    let mut state = data::state::State::new(data::limits::ITEM_BYTES_MAX);
    let mut applied = LogIndex(0);
    let leader = &g.node(1).replica;
    let mut seen = Vec::new();
    while let Some(entry) = waiters
        .apply_next(leader, &mut state, &mut applied, commit)
        .expect("entries decode")
    {
        assert_eq!(entry.index, applied);
        assert_eq!(Some(&entry.payload), leader.entry(entry.index));
        seen.push((entry.index, entry.proposal));
    }
    assert_eq!(applied, commit, "everything committed, nothing more");
    assert_eq!(state.applied_index(), commit.0);
    let ours: Vec<_> = seen.iter().filter(|(_, p)| p.is_some()).collect();
    assert_eq!(ours, vec![&(index, Some(Applied::Ours("mine")))]);
    assert!(waiters
        .apply_next(leader, &mut state, &mut applied, commit)
        .unwrap()
        .is_none());
}
