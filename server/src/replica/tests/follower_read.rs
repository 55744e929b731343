//! Reads on a follower, through the leader's read index.

use super::*;

/// Commits `n` writes through leader 1 and returns the commit index.
fn commit_writes(g: &mut Group, n: u64) -> LogIndex {
    for i in 0..n {
        g.propose(1, payload(i)).unwrap();
    }
    g.settle();
    g.node(1).replica.commit_index()
}

#[test]
fn a_follower_read_waits_for_the_leaders_commit_index_after_a_round() {
    let mut g = Group::new(&[1, 2, 3]);
    g.elect(1, 1);
    let commit = commit_writes(&mut g, 3);
    g.read(2, 7).unwrap();
    g.settle();
    assert_eq!(g.node(2).reads_ready, vec![7]);
    assert_eq!(g.node(2).ready_at, vec![commit]);
}

/// The id of the read-index question on the wire.
fn question_on_wire(g: &Group) -> u64 {
    g.wire
        .iter()
        .find_map(|(_, _, _, m)| match m {
            Message::ReadIndex { id } => Some(*id),
            _ => None,
        })
        .expect("the follower asks")
}

fn replies_on_wire(g: &Group) -> usize {
    g.wire
        .iter()
        .filter(|(_, _, _, m)| matches!(m, Message::ReadIndexReply { .. }))
        .count()
}

#[test]
fn without_its_lease_the_leader_answers_only_after_a_round_a_majority_confirmed() {
    let mut g = Group::new(&[1, 2, 3]);
    g.elect(1, 1);
    commit_writes(&mut g, 1);
    // As under `--read-mode read-index`.
    g.node(1).replica.set_lease_answers_followers(false);
    g.read(2, 5).unwrap();
    g.drive(ServerId(2));
    let question = take_to(&mut g, 1);
    assert!(
        question
            .iter()
            .any(|(_, m)| matches!(m, Message::ReadIndex { .. })),
        "the follower asks the leader: {question:?}"
    );
    deliver(&mut g, 2, 1, question);
    assert_eq!(replies_on_wire(&g), 0, "not before a round is confirmed");
    // No answer from either follower: the round is never confirmed, so
    // the question is never answered, however often it is asked again.
    for _ in 0..5 {
        g.now_ms += 100;
        let now = g.now_ms;
        for id in [1, 2, 3] {
            g.node(id).replica.tick(now);
            g.drive(ServerId(id));
        }
        // The leader's rounds are lost; the follower's questions arrive.
        g.wire.retain(|(from, _, _, _)| *from != ServerId(1));
        let questions = take_to(&mut g, 1)
            .into_iter()
            .filter(|(_, m)| matches!(m, Message::ReadIndex { .. }))
            .collect();
        deliver(&mut g, 2, 1, questions);
        assert_eq!(replies_on_wire(&g), 0);
    }
    assert!(g.node(2).reads_ready.is_empty());
    // With the followers heard again, it is answered.
    for _ in 0..3 {
        g.tick(100);
        g.settle();
    }
    assert_eq!(g.node(2).reads_ready, vec![5]);
}

#[test]
fn under_its_lease_the_leader_answers_at_once() {
    let mut g = Group::new(&[1, 2, 3]);
    g.elect(1, 1);
    let commit = commit_writes(&mut g, 2);
    let now = g.now_ms;
    assert!(g.node(1).replica.lease_until_ms() > now, "a lease is held");
    g.read(2, 8).unwrap();
    g.drive(ServerId(2));
    let question = take_to(&mut g, 1);
    deliver(&mut g, 2, 1, question);
    let answers: Vec<_> = take_to(&mut g, 2)
        .into_iter()
        .filter_map(|(_, m)| match m {
            Message::ReadIndexReply { index, .. } => Some(index),
            _ => None,
        })
        .collect();
    assert_eq!(answers, vec![commit], "answered without a round");
}

#[test]
fn a_deposed_leaders_answer_is_not_taken() {
    let mut g = Group::new(&[1, 2, 3]);
    g.elect(1, 1);
    commit_writes(&mut g, 1);
    g.read(2, 11).unwrap();
    g.drive(ServerId(2));
    let id = question_on_wire(&g);
    g.wire.clear();
    // Server 3 leads term 2 before the answer comes back; the answer of
    // the leader of term 1 no longer serves.
    g.elect(3, 2);
    g.receive(
        2,
        ServerId(1),
        Term(1),
        Message::ReadIndexReply {
            id,
            index: LogIndex(1),
        },
    );
    g.drive(ServerId(2));
    assert!(g.node(2).reads_ready.is_empty());
    // The follower asks the new leader instead.
    g.tick(100);
    g.settle();
    assert_eq!(g.node(2).reads_ready, vec![11]);
    let new_commit = g.node(3).replica.commit_index();
    assert_eq!(g.node(2).ready_at, vec![new_commit]);
}

#[test]
fn one_exchange_serves_every_read_that_arrived_before_it() {
    let mut g = Group::new(&[1, 2, 3]);
    g.elect(1, 1);
    commit_writes(&mut g, 1);
    for token in 1..=100 {
        g.read(2, token).unwrap();
    }
    g.drive(ServerId(2));
    let questions = g
        .wire
        .iter()
        .filter(|(_, _, _, m)| matches!(m, Message::ReadIndex { .. }))
        .count();
    assert_eq!(questions, 1, "one question for a hundred reads");
    g.settle();
    assert_eq!(g.node(2).reads_ready, (1..=100).collect::<Vec<_>>());
}

#[test]
fn a_refusal_fails_the_reads_at_once() {
    let mut g = Group::new(&[1, 2, 3]);
    g.elect(1, 1);
    g.read(2, 4).unwrap();
    g.drive(ServerId(2));
    let id = question_on_wire(&g);
    g.wire.clear();
    // What a leader answers a server that is not in its group.
    let refusal = Message::ReadIndexReply {
        id,
        index: LogIndex(0),
    };
    g.receive(2, ServerId(1), Term(1), refusal);
    g.drive(ServerId(2));
    assert_eq!(g.node(2).reads_failed, vec![4]);
    assert!(g.node(2).reads_ready.is_empty());
}

#[test]
fn a_follower_read_without_a_leader_is_refused_after_its_wait() {
    let mut g = Group::new(&[1, 2, 3]);
    // No leader ever named.
    g.read(2, 3).unwrap();
    g.settle();
    g.tick(FOLLOWER_READ_WAIT_MS - 1);
    g.settle();
    assert!(g.node(2).reads_failed.is_empty());
    g.tick(1);
    g.settle();
    assert_eq!(g.node(2).reads_failed, vec![3]);
    assert!(g.node(2).reads_ready.is_empty());
}

#[test]
fn the_answer_commits_on_the_follower_what_its_log_holds_of_the_leaders() {
    // A read right after a write made through another server: the follower
    // holds the entry but has not heard it committed (that comes with the
    // leader's next heartbeat). The read index is the leader's commit
    // index, and the follower's log matches the leader's: it commits at
    // once, and the read need not wait for that heartbeat.
    let mut g = Group::new(&[1, 2, 3]);
    g.elect(1, 1);
    let commit = commit_writes(&mut g, 1);
    assert!(
        g.node(2).replica.commit_index() < commit,
        "the follower has not heard the commit yet"
    );
    g.read(2, 9).unwrap();
    g.drive(ServerId(2));
    let question = take_to(&mut g, 1);
    deliver(&mut g, 2, 1, question);
    let answer = take_to(&mut g, 2);
    assert!(
        answer
            .iter()
            .all(|(_, m)| matches!(m, Message::ReadIndexReply { .. })),
        "only the answer reaches the follower: {answer:?}"
    );
    deliver(&mut g, 1, 2, answer);
    assert_eq!(g.node(2).replica.commit_index(), commit);
    assert_eq!(g.node(2).committed, commit);
    assert_eq!(g.node(2).reads_ready, vec![9]);
}
