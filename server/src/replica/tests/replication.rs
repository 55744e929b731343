//! Log shipping: commit, the consistency check, fragments, batching, Acks
//! and Nacks, retransmits.

use super::*;

#[test]
fn commit_needs_majority_durable() {
    let mut g = Group::new(&[1, 2, 3]);
    g.elect(1, 1);
    let index = g.propose(1, payload(7)).unwrap();
    g.settle();
    assert!(g.node(1).committed >= index);
    for id in [2, 3] {
        assert_eq!(
            g.node(id).disk.len(),
            index.0 as usize,
            "follower {id} has the entry"
        );
    }
    g.tick(100);
    assert!(g.node(2).committed >= index, "followers learn the commit");
}

#[test]
fn append_of_lower_term_is_refused() {
    let mut g = Group::new(&[1, 2, 3]);
    g.elect(1, 1);
    g.elect(2, 2);
    // The old leader's late Append in term 1 changes nothing on node 3.
    let before = g.node(3).disk.len();
    let stale = Message::Append {
        seq: 99,
        prev_index: LogIndex(before as u64),
        prev_term: Term(2),
        commit: LogIndex(0),
        entries: vec![Entry {
            term: Term(1),
            payload: payload(1),
        }],
    };
    g.receive(3, ServerId(1), Term(1), stale);
    g.drive_all();
    assert_eq!(g.node(3).disk.len(), before);
    assert!(g
        .wire
        .iter()
        .any(|(_, to, _, m)| *to == ServerId(1) && *m == Message::Reject));
}

#[test]
fn divergent_suffix_is_truncated_to_the_leaders_log() {
    // Raft §5.3: the follower's uncommitted entries of an old term go.
    let mut g = Group::new(&[1, 2, 3]);
    g.elect(1, 1);
    g.node(2).up = false;
    g.node(3).up = false;
    g.propose(1, payload(100)).unwrap();
    g.propose(1, payload(101)).unwrap();
    g.settle();
    let old_len = g.node(1).disk.len();
    // Node 1 is cut off; 2 and 3 elect 2, which writes in term 2.
    g.node(1).up = false;
    g.node(2).up = true;
    g.node(3).up = true;
    g.elect(2, 2);
    g.propose(2, payload(200)).unwrap();
    g.settle();
    g.node(1).up = true;
    g.elect(2, 3);
    g.tick(100);
    g.tick(100);
    let leader_disk = g.node(2).disk.clone();
    assert_eq!(g.node(1).disk, leader_disk, "logs match after repair");
    assert!(g.node(1).disk.len() <= old_len + 2);
    assert!(g.node(1).disk.iter().all(|(_, p)| *p != payload(101)));
}

#[test]
fn large_entries_travel_in_fragments() {
    let mut g = Group::new(&[1, 2, 3]);
    g.elect(1, 1);
    let big = encode_op(
        0,
        Op::Store {
            mode: data::command::StoreMode::Set,
            key: Bytes::from_static(b"big"),
            flags: 0,
            exptime: 0,
            data: Bytes::from((0..1_048_576u32).map(|i| i as u8).collect::<Vec<_>>()),
            cas_unique: 0,
        },
    );
    let index = g.propose(1, big.clone()).unwrap();
    g.settle();
    assert!(g.node(1).committed >= index);
    assert_eq!(g.node(2).disk[index.0 as usize - 1].1, big);
}

#[test]
fn writes_of_one_turn_leave_in_one_append_per_follower() {
    let mut g = Group::new(&[1, 2, 3]);
    g.elect(1, 1);
    for n in 1..=5 {
        g.propose(1, payload(n)).unwrap();
    }
    assert!(g.wire.is_empty(), "nothing leaves before the turn ends");
    g.drive(ServerId(1));
    for follower in [2, 3] {
        let sent = on_wire(&g, 1, follower);
        assert_eq!(sent.len(), 1, "{sent:?}");
        assert!(matches!(sent[0], Message::Append { entries, .. } if entries.len() == 5));
    }
    g.settle();
    let last = g.node(1).replica.last_index();
    assert_eq!(g.node(1).committed, last);
}

#[test]
fn a_follower_answers_the_appends_of_one_turn_with_one_ack() {
    let mut g = Group::new(&[1, 2, 3]);
    g.elect(1, 1);
    for n in 1..=2 {
        g.propose(1, payload(n)).unwrap();
        g.drive(ServerId(1));
    }
    let last = g.node(1).replica.last_index();
    let appends = take_to(&mut g, 2);
    assert_eq!(appends.len(), 2);
    for (term, message) in appends {
        g.receive(2, ServerId(1), term, message);
    }
    g.drive(ServerId(2));
    let acks = on_wire(&g, 2, 1);
    assert_eq!(acks.len(), 1, "{acks:?}");
    assert!(matches!(acks[0], Message::Ack { match_index, .. } if *match_index == last));
}

#[test]
fn the_leader_learns_the_smallest_memory_limit_from_the_answers() {
    let mut g = Group::new(&[1, 2, 3]);
    g.elect(1, 1);
    assert_eq!(g.node(1).replica.group_memory_limit_bytes(), 0);
    g.node(2).replica.set_memory_limit(300);
    g.node(3).replica.set_memory_limit(200);
    g.propose(1, payload(1)).unwrap();
    g.settle();
    assert_eq!(g.node(1).replica.group_memory_limit_bytes(), 200);
    // No limit is no constraint; a follower's is not the group's.
    g.node(3).replica.set_memory_limit(0);
    g.propose(1, payload(2)).unwrap();
    g.settle();
    assert_eq!(g.node(1).replica.group_memory_limit_bytes(), 300);
    assert_eq!(g.node(2).replica.group_memory_limit_bytes(), 0);
}

#[test]
fn nacks_from_one_window_arriving_out_of_order_draw_one_resend() {
    let mut g = Group::new(&[1, 2, 3]);
    g.elect(1, 1);
    // Node 3 misses a dozen entries that take several datagrams.
    g.node(3).up = false;
    for n in 0..12 {
        g.propose(1, payload_of(n, 400)).unwrap();
    }
    g.settle();
    g.node(3).up = true;
    g.propose(1, payload_of(12, 400)).unwrap();
    g.drive(ServerId(1));
    // Its Nack brings the missing entries as one window of Appends.
    let append = take_to(&mut g, 3);
    deliver(&mut g, 1, 3, append);
    let nack = take_to(&mut g, 1);
    deliver(&mut g, 3, 1, nack);
    let window = appends_on_wire(&g, 1, 3);
    assert!(window >= 3, "the resend takes several datagrams: {window}");
    // They arrive last first: every one but the first overtakes a gap.
    let mut resent = take_to(&mut g, 3);
    resent.reverse();
    deliver(&mut g, 1, 3, resent);
    let answers = take_to(&mut g, 1);
    let nacks = answers
        .iter()
        .filter(|(_, m)| matches!(m, Message::Nack { .. }))
        .count();
    assert_eq!(nacks, window - 1, "{answers:?}");
    deliver(&mut g, 3, 1, answers);
    // One resend answers all those Nacks, at the most; a window for
    // each would multiply with every round trip.
    let again = appends_on_wire(&g, 1, 3);
    assert!(
        again <= window,
        "{again} Appends for one window of {window}"
    );
    // Nothing is left behind: the retransmit timer repairs what the
    // reordering cost, and node 3 catches up.
    g.tick(RETRANSMIT_MS_MIN * 4);
    g.tick(100);
    let last = g.node(1).replica.last_index();
    assert_eq!(g.node(3).disk.len() as u64, last.0, "node 3 caught up");
}

#[test]
fn lost_messages_are_retransmitted() {
    let mut g = Group::new(&[1, 2, 3]);
    g.elect(1, 1);
    let index = g.propose(1, payload(5)).unwrap();
    g.drive_all();
    g.wire.clear(); // every datagram lost
    g.tick(RETRANSMIT_MS_MIN + 1);
    g.tick(100);
    assert!(g.node(1).committed >= index);
}

#[test]
fn a_leader_refuses_proposals_past_its_bound_on_uncommitted_entries() {
    let mut g = Group::new(&[1, 2, 3]);
    g.elect(1, 1);
    // Followers away: nothing more commits.
    g.node(2).up = false;
    g.node(3).up = false;
    let leader = &mut g.node(1).replica;
    let commit = leader.commit_index();
    let entry = payload(1);
    for _ in 0..UNCOMMITTED_ENTRIES_MAX {
        leader.propose(entry.clone()).expect("within the bound");
    }
    assert_eq!(leader.last_index().0 - commit.0, UNCOMMITTED_ENTRIES_MAX);
    assert_eq!(leader.propose(entry), Err(NotLeader::NotReady));
}
