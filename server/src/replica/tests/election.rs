//! Terms, promises and taking office.

use super::*;

#[test]
fn promise_persists_term_before_answering() {
    let mut g = Group::new(&[1, 2, 3]);
    g.node(1)
        .replica
        .receive(1_000, ServerId::LB, Term(5), Message::Prepare);
    let actions = g.node(1).replica.take_actions();
    assert_eq!(actions[0], Action::PersistTerm(Term(5)));
    assert!(matches!(
        &actions[1],
        Action::Send {
            message: Message::Promise { .. },
            term: Term(5),
            ..
        }
    ));
    // A second Prepare of the same term is refused: one promise per term.
    g.node(1)
        .replica
        .receive(1_000, ServerId::LB, Term(5), Message::Prepare);
    let actions = g.node(1).replica.take_actions();
    assert!(matches!(
        &actions[0],
        Action::Send {
            message: Message::Reject,
            ..
        }
    ));
}

#[test]
fn new_leader_commits_noop_of_its_term_before_serving() {
    let mut g = Group::new(&[1, 2, 3]);
    g.node(2).up = false;
    g.node(3).up = false;
    g.elect(1, 1);
    // Raft §5.4.2: alone it cannot commit its no-op, so it does not serve.
    assert!(!g.node(1).replica.is_serving());
    assert_eq!(g.propose(1, payload(1)).map(|_| ()), Ok(()));
    g.settle();
    assert_eq!(g.node(1).committed, LogIndex(0));
    g.node(2).up = true;
    g.tick(100);
    g.tick(100);
    assert!(g.node(1).replica.is_serving());
    assert_eq!(g.node(1).committed, LogIndex(2), "no-op and the write");
}

#[test]
fn leader_without_majority_steps_down() {
    let mut g = Group::new(&[1, 2, 3]);
    g.elect(1, 1);
    g.propose(1, payload(1)).unwrap();
    g.node(2).up = false;
    g.node(3).up = false;
    for _ in 0..12 {
        g.tick(100);
    }
    assert_eq!(g.node(1).replica.role(), Role::Follower);
    assert!(g.node(1).lost_after.is_some());
    assert_eq!(g.propose(1, payload(2)), Err(NotLeader::Follower(None)));
}

#[test]
fn restarted_leader_does_not_take_office_again_in_its_old_term() {
    // Raft §5.2 (one leader per term) and §5.3 (log matching): the
    // restarted process lost its unsynced tail, so new entries of term
    // 1 could collide with old ones the followers hold.
    let mut g = Group::new(&[1, 2, 3]);
    g.elect(1, 1);
    g.propose(1, payload(1)).unwrap();
    g.settle();
    let node = g.node(1);
    let durable = Durable {
        term: node.term_on_disk,
        snapshot_index: LogIndex(0),
        snapshot_term: Term(0),
        entries: node.disk[..1].to_vec(),
        snapshot_membership: node.replica.snapshot_membership.clone(),
    };
    // The crash took the unsynced tail: only the no-op survived.
    node.disk.truncate(1);
    node.replica = Replica::new(ServerId(1), Timing::default(), durable, 9, 0);
    node.replica.set_lb_addr(LB_ADDR.parse().unwrap());
    g.receive(
        1,
        ServerId::LB,
        Term(1),
        Message::NewLeader {
            leader: ServerId(1),
        },
    );
    assert_ne!(g.node(1).replica.role(), Role::Leader);
    assert!(g.node(1).replica.propose(payload(2)).is_err());
    // A new term brings it back.
    g.elect(1, 2);
    assert_eq!(g.node(1).replica.role(), Role::Leader);
}

#[test]
fn timing_that_would_outlast_an_election_is_invalid() {
    assert_eq!(Timing::new(100, 1000).validate(), Ok(()));
    assert_eq!(Timing::new(100, 300).validate(), Ok(()));
    assert!(matches!(
        Timing::new(500, 1000).validate(),
        Err(TimingError::HeartbeatVsElectionTimeout { .. })
    ));
    assert!(Timing::new(0, 1000).validate().is_err());
    let long_lease = Timing {
        lease_ms: 2000,
        ..Timing::new(100, 1000)
    };
    assert!(matches!(
        long_lease.validate(),
        Err(TimingError::LeaseOutlastsElection { .. })
    ));
    // No lease at all is valid.
    let no_lease = Timing {
        lease_ms: 0,
        ..Timing::new(100, 1000)
    };
    assert_eq!(no_lease.validate(), Ok(()));
}
