//! A group that elects its own leader by vote (DESIGN §3b).

use super::*;

/// Time between two looks while waiting for an election, in ms.
const STEP_MS: u64 = 50;
/// An election by vote takes one to two timeouts, more after split votes.
const ELECTION_WAIT_MS: u64 = 10_000;

/// `ids`, voters of one configuration, electing by vote (no LB messages).
fn by_vote(ids: &[u64]) -> Group {
    let mut g = Group::new(ids);
    let peers = peers(ids);
    let now = g.now_ms;
    for node in g.nodes.values_mut() {
        node.replica.elect_by_vote(now, &peers);
    }
    g
}

/// The serving leaders among the nodes that are up.
fn serving(g: &Group) -> Vec<u64> {
    g.nodes
        .iter()
        .filter(|(_, n)| n.up && n.replica.is_serving())
        .map(|(id, _)| id.0)
        .collect()
}

/// Ticks until exactly one node that is up serves as leader; returns it.
fn await_leader(g: &mut Group) -> u64 {
    for _ in 0..ELECTION_WAIT_MS / STEP_MS {
        g.tick(STEP_MS);
        if let [leader] = serving(g)[..] {
            return leader;
        }
    }
    panic!("no leader elected by vote within {ELECTION_WAIT_MS} ms");
}

/// Three voters, once they have elected a leader (returned).
fn three_with_a_leader() -> (Group, u64) {
    let mut g = by_vote(&[1, 2, 3]);
    let leader = await_leader(&mut g);
    (g, leader)
}

/// A candidate's request with an empty log (pre-vote or vote).
fn request_from_an_empty_log(pre: bool) -> Message {
    Message::RequestVote {
        last_term: Term(0),
        last_index: LogIndex(0),
        pre,
    }
}

/// Whether `actions` send a Vote (not a pre-vote) with `granted`.
fn sent_vote(actions: &[Action], granted: bool) -> bool {
    actions.iter().any(|a| {
        matches!(
            a,
            Action::Send { message: Message::Vote { granted: g, pre: false }, .. } if *g == granted
        )
    })
}

#[test]
fn a_group_by_vote_elects_one_leader_that_every_member_follows() {
    let (mut g, leader) = three_with_a_leader();
    let term = g.node(leader).replica.term();
    for id in [1, 2, 3] {
        let node = g.node(id);
        assert_eq!(node.replica.leader(), Some(ServerId(leader)), "node {id}");
        assert_eq!(node.replica.term(), term, "node {id}");
        assert!(node.term_on_disk >= term, "node {id}: term not on disk");
    }
    let index = g.propose(leader, payload(1)).unwrap();
    g.settle();
    assert!(
        g.node(leader).committed >= index,
        "the leader did not commit"
    );
    // Followers learn the commit index from the next heartbeat.
    g.tick(Timing::default().heartbeat_ms);
    for id in [1, 2, 3] {
        assert!(g.node(id).committed >= index, "node {id} did not commit");
    }
    // Heard every heartbeat: nobody stands again.
    for _ in 0..100 {
        g.tick(STEP_MS);
    }
    assert_eq!(serving(&g), vec![leader]);
    assert_eq!(g.node(leader).replica.term(), term, "no new election");
}

#[test]
fn a_dead_leader_is_replaced_and_what_it_committed_survives() {
    let mut g = by_vote(&[1, 2, 3]);
    let old = await_leader(&mut g);
    for n in 0..5 {
        g.propose(old, payload(n)).unwrap();
    }
    g.settle();
    let committed = g.node(old).committed;
    let entries: Vec<(Term, Bytes)> = g.node(old).disk[..committed.0 as usize].to_vec();
    let old_term = g.node(old).replica.term();
    g.node(old).up = false;
    let new = await_leader(&mut g);
    assert_ne!(new, old);
    assert!(g.node(new).replica.term() > old_term);
    assert_eq!(
        g.node(new).disk[..committed.0 as usize],
        entries[..],
        "Raft §5.4: the new leader holds every committed entry"
    );
    // The old leader comes back and follows.
    g.node(old).up = true;
    for _ in 0..20 {
        g.tick(STEP_MS);
    }
    assert_eq!(g.node(old).replica.leader(), Some(ServerId(new)));
    assert_eq!(serving(&g), vec![new]);
}

#[test]
fn a_vote_goes_out_after_its_term_is_on_disk_and_once_per_term() {
    let mut g = by_vote(&[1, 2, 3]);
    let now = g.now_ms;
    let request = request_from_an_empty_log(false);
    g.node(1)
        .replica
        .receive(now, ServerId(2), Term(4), request.clone());
    let actions = g.node(1).replica.take_actions();
    assert_eq!(actions[0], Action::PersistTerm(Term(4)));
    assert!(sent_vote(&actions[1..], true), "{actions:?}");
    // Another candidate in the same term gets no vote; the first again does
    // (its request was resent, not a second vote).
    g.node(1)
        .replica
        .receive(now, ServerId(3), Term(4), request.clone());
    assert!(sent_vote(&g.node(1).replica.take_actions(), false));
    g.node(1)
        .replica
        .receive(now, ServerId(2), Term(4), request);
    assert!(sent_vote(&g.node(1).replica.take_actions(), true));
}

#[test]
fn no_vote_in_the_term_found_on_disk_at_start() {
    // It may have voted in term 5 before a crash: no vote there again.
    let durable = Durable {
        term: Term(5),
        snapshot_index: LogIndex(0),
        snapshot_term: Term(0),
        entries: Vec::new(),
        snapshot_membership: Membership {
            voters: [1, 2, 3].map(ServerId).into(),
            learners: BTreeSet::new(),
        },
    };
    let now = 10_000;
    let mut replica = Replica::new(ServerId(1), Timing::default(), durable, 7, now);
    replica.elect_by_vote(now, &peers(&[1, 2, 3]));
    let later = now + Timing::default().lease_ms;
    let request = request_from_an_empty_log(false);
    replica.receive(later, ServerId(2), Term(5), request.clone());
    assert!(sent_vote(&replica.take_actions(), false));
    replica.receive(later, ServerId(2), Term(6), request);
    assert!(sent_vote(&replica.take_actions(), true));
}

#[test]
fn a_candidate_with_an_older_log_gets_no_vote() {
    // Raft §5.4.1: node 3 missed a committed entry; it cannot win.
    let (mut g, leader) = three_with_a_leader();
    let [a, b] = [1, 2, 3]
        .into_iter()
        .filter(|i| *i != leader)
        .collect::<Vec<_>>()[..]
    else {
        unreachable!("three nodes")
    };
    g.node(b).up = false;
    let index = g.propose(leader, payload(9)).unwrap();
    g.settle();
    assert_eq!(
        g.node(leader).committed,
        index,
        "committed by the leader and {a}"
    );
    g.node(leader).up = false;
    g.node(b).up = true;
    // b asks a for its vote: refused, a's log is newer.
    let now = g.now_ms + 10 * Timing::default().election_timeout_ms;
    g.now_ms = now;
    let request = Message::RequestVote {
        last_term: g.node(b).replica.last_term(),
        last_index: g.node(b).replica.last_index(),
        pre: false,
    };
    let term = Term(g.node(a).replica.term().0 + 1);
    g.node(a).replica.receive(now, ServerId(b), term, request);
    let actions = g.node(a).replica.take_actions();
    assert_eq!(actions[0], Action::PersistTerm(term), "it takes the term");
    g.node(a).term_on_disk = term;
    assert!(sent_vote(&actions, false));
    // Whoever wins, the entry stays committed.
    let new = await_leader(&mut g);
    assert_eq!(new, a, "only {a} holds every committed entry");
    g.propose(new, payload(10)).unwrap();
    g.settle();
    let on_a = g.node(a).disk[index.0 as usize - 1].clone();
    assert_eq!(g.node(b).disk[index.0 as usize - 1], on_a);
}

#[test]
fn a_follower_that_hears_its_leader_ignores_a_candidate() {
    // Raft thesis §4.2.3: a server cut off and back with a higher term does
    // not win votes from followers that hear their leader.
    let (mut g, leader) = three_with_a_leader();
    let follower = if leader == 1 { 2 } else { 1 };
    let term = g.node(follower).replica.term();
    let now = g.now_ms;
    let request = Message::RequestVote {
        last_term: Term(99),
        last_index: LogIndex(99),
        pre: false,
    };
    g.node(follower)
        .replica
        .receive(now, ServerId(3), Term(term.0 + 5), request.clone());
    assert!(g.node(follower).replica.take_actions().is_empty());
    assert_eq!(g.node(follower).replica.term(), term, "its term unchanged");
    g.node(leader)
        .replica
        .receive(now, ServerId(3), Term(term.0 + 5), request);
    assert!(g.node(leader).replica.take_actions().is_empty());
    assert!(g.node(leader).replica.is_serving());
}

#[test]
fn a_group_of_one_elects_itself() {
    let mut g = by_vote(&[1]);
    assert_eq!(await_leader(&mut g), 1);
    let index = g.propose(1, payload(1)).unwrap();
    g.settle();
    assert_eq!(g.node(1).committed, index);
}

/// The deliberate bug: a vote for an older log lets a candidate that missed
/// a committed entry win and overwrite it.
#[cfg(feature = "deliberate-bugs")]
#[test]
fn the_bug_vote_for_older_log_loses_a_committed_entry() {
    let (mut g, leader) = three_with_a_leader();
    let others: Vec<u64> = [1, 2, 3].into_iter().filter(|i| *i != leader).collect();
    let (a, b) = (others[0], others[1]);
    for id in [1, 2, 3] {
        g.node(id).replica.set_bugs(Bugs {
            vote_for_older_log: true,
            ..Bugs::default()
        });
    }
    g.node(b).up = false;
    let index = g.propose(leader, payload(9)).unwrap();
    g.settle();
    let committed_entry = g.node(a).disk[index.0 as usize - 1].clone();
    g.node(leader).up = false;
    g.node(b).up = true;
    // b stands first and a votes for it despite its older log.
    let now = g.now_ms + 10 * Timing::default().election_timeout_ms;
    g.now_ms = now;
    g.node(b).replica.tick(now);
    g.settle();
    assert_eq!(serving(&g), vec![b], "b won on a vote for its older log");
    g.propose(b, payload(10)).unwrap();
    g.settle();
    assert_ne!(
        g.node(a).disk[index.0 as usize - 1],
        committed_entry,
        "the committed entry was overwritten"
    );
}

#[test]
fn a_server_cut_off_keeps_its_term_and_does_not_depose_the_leader_when_back() {
    // Raft thesis §9.6: cut off, its pre-votes go unanswered, so it never
    // raises its term; back, the leader's Appends meet no higher term.
    let (mut g, leader) = three_with_a_leader();
    let away = if leader == 3 { 1 } else { 3 };
    let term = g.node(leader).replica.term();
    g.cut.insert(ServerId(away));
    for _ in 0..200 {
        g.tick(STEP_MS);
    }
    assert_eq!(
        g.node(away).replica.term(),
        term,
        "no term raised while cut off"
    );
    assert_eq!(serving(&g), vec![leader]);
    g.cut.clear();
    for _ in 0..20 {
        g.tick(STEP_MS);
    }
    assert_eq!(serving(&g), vec![leader], "the leader kept its office");
    assert_eq!(g.node(leader).replica.term(), term);
    assert_eq!(g.node(away).replica.leader(), Some(ServerId(leader)));
}

#[test]
fn a_pre_vote_changes_nothing_on_the_voter() {
    let mut g = by_vote(&[1, 2, 3]);
    let now = g.now_ms + 10 * Timing::default().election_timeout_ms;
    g.now_ms = now;
    let request = request_from_an_empty_log(true);
    g.node(1)
        .replica
        .receive(now, ServerId(2), Term(0), request);
    let actions = g.node(1).replica.take_actions();
    assert!(
        matches!(
            &actions[..],
            [Action::Send {
                message: Message::Vote {
                    granted: true,
                    pre: true
                },
                term: Term(0),
                ..
            }]
        ),
        "a yes in its own term and nothing else: {actions:?}"
    );
    assert_eq!(g.node(1).replica.term(), Term(0));
    // It may still vote for anyone in term 1.
    let request = request_from_an_empty_log(false);
    g.node(1)
        .replica
        .receive(now, ServerId(3), Term(1), request);
    assert!(sent_vote(&g.node(1).replica.take_actions(), true));
}

/// Four nodes electing by vote, of which 1..3 found the group and 4 joins
/// it: an empty state with no configuration, as `store addlb --join`
/// starts.
fn three_and_a_joiner() -> Group {
    let mut g = by_vote(&[1, 2, 3, 4]);
    let now = g.now_ms;
    let durable = fresh_durable(Membership::default());
    let mut joiner = Replica::new(ServerId(4), Timing::default(), durable, 4, now);
    joiner.elect_by_vote(now, &peers(&[1, 2, 3, 4]));
    g.node(4).replica = joiner;
    let founders = Membership {
        voters: [1, 2, 3].into_iter().map(ServerId).collect(),
        learners: BTreeSet::new(),
    };
    for id in [1, 2, 3] {
        let durable = fresh_durable(founders.clone());
        let mut replica = Replica::new(ServerId(id), Timing::default(), durable, id, now);
        replica.elect_by_vote(now, &peers(&[1, 2, 3]));
        g.node(id).replica = replica;
    }
    g
}

/// Every node up is given `ids` as the members the group should have.
fn target(g: &mut Group, ids: &[u64]) {
    let now = g.now_ms;
    for node in g.nodes.values_mut().filter(|n| n.up) {
        node.replica.set_target_members(now, &peers(ids));
    }
    g.settle();
}

fn voters(g: &mut Group, id: u64) -> Vec<u64> {
    g.node(id)
        .replica
        .membership()
        .voters
        .iter()
        .map(|v| v.0)
        .collect()
}

/// Ticks until `done` holds, or panics after the election wait.
fn tick_until(g: &mut Group, what: &str, mut done: impl FnMut(&mut Group) -> bool) {
    for _ in 0..ELECTION_WAIT_MS / STEP_MS {
        if done(g) {
            return;
        }
        g.tick(STEP_MS);
    }
    panic!("{what}: not within {ELECTION_WAIT_MS} ms");
}

#[test]
fn a_joining_member_never_stands_until_its_leader_adds_it() {
    let mut g = three_and_a_joiner();
    let leader = await_leader(&mut g);
    assert_ne!(leader, 4, "a member with no configuration does not stand");
    assert_eq!(g.node(4).replica.role(), Role::Learner);
    // Until the target names it, the leader does not add it.
    for _ in 0..40 {
        g.tick(STEP_MS);
    }
    assert_eq!(voters(&mut g, leader), vec![1, 2, 3]);
    assert!(g.node(4).replica.membership().voters.is_empty());
}

#[test]
fn ongaro_4_1_a_target_member_is_added_as_a_learner_then_promoted_once_caught_up() {
    let mut g = three_and_a_joiner();
    let leader = await_leader(&mut g);
    for n in 0..5 {
        g.propose(leader, payload(n)).unwrap();
    }
    g.settle();
    target(&mut g, &[1, 2, 3, 4]);
    tick_until(&mut g, "node 4 promoted and the change committed", |g| {
        voters(g, leader) == [1, 2, 3, 4] && g.node(leader).replica.config_committed()
    });
    // The joiner holds the log and follows, now a voter.
    tick_until(&mut g, "node 4 follows as a voter", |g| {
        g.node(4).replica.role() == Role::Follower
    });
    assert_eq!(voters(&mut g, 4), vec![1, 2, 3, 4]);
    let led = g.node(leader).disk[..5].to_vec();
    assert_eq!(g.node(4).disk[..5], led[..]);
}

#[test]
fn ongaro_4_2_2_a_leader_removed_by_the_target_commits_its_removal_then_steps_down() {
    let mut g = three_and_a_joiner();
    let old = await_leader(&mut g);
    target(&mut g, &[1, 2, 3, 4]);
    tick_until(&mut g, "four voters", |g| {
        voters(g, old) == [1, 2, 3, 4] && g.node(old).replica.config_committed()
    });
    let rest: Vec<u64> = [1, 2, 3, 4].into_iter().filter(|id| *id != old).collect();
    target(&mut g, &rest);
    tick_until(&mut g, "a new leader among the rest", |g| {
        serving(g).len() == 1 && serving(g)[0] != old
    });
    let new = serving(&g)[0];
    assert_eq!(voters(&mut g, new), rest);
    assert!(g.node(new).replica.config_committed());
    // The old leader is out: it neither leads nor stands again.
    assert_ne!(g.node(old).replica.role(), Role::Leader);
    let term = g.node(new).replica.term();
    for _ in 0..60 {
        g.tick(STEP_MS);
    }
    assert_eq!(
        serving(&g),
        vec![new],
        "the removed leader disrupted nobody"
    );
    assert_eq!(g.node(new).replica.term(), term);
}

#[test]
fn a_follower_removed_by_the_target_leaves_the_configuration() {
    let (mut g, leader) = three_with_a_leader();
    let gone = [1, 2, 3].into_iter().find(|id| *id != leader).unwrap();
    let rest: Vec<u64> = [1, 2, 3].into_iter().filter(|id| *id != gone).collect();
    target(&mut g, &rest);
    tick_until(&mut g, "the follower removed", |g| {
        voters(g, leader) == rest && g.node(leader).replica.config_committed()
    });
    // The member taken out hears its removal committed (and so may stop):
    // the leader goes on sending to it for a while after the commit.
    tick_until(
        &mut g,
        "the removed member hears its removal committed",
        |g| {
            let replica = &g.node(gone).replica;
            replica.config_committed() && !replica.membership().voters.contains(&ServerId(gone))
        },
    );
    // The two left commit on their own.
    g.node(gone).up = false;
    let index = g.propose(leader, payload(9)).unwrap();
    g.settle();
    assert!(g.node(leader).committed >= index);
}
