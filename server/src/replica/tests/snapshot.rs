//! Followers behind the compacted log: snapshots and what follows them.

use super::*;

#[test]
fn follower_behind_the_compacted_log_is_sent_a_snapshot() {
    let (mut g, commit, term) = node_3_behind_the_compacted_log();
    assert_eq!(g.node(1).replica.snapshot_position(), (commit, term));
    g.node(3).up = true;
    g.tick(100);
    assert!(
        g.node(1).snapshot_asked,
        "the leader asks the driver to stream its keystore"
    );
    // The driver installed it on node 3: the leader carries on from there.
    let membership = g.node(1).replica.membership().clone();
    g.node(3).disk = g.node(1).disk[..commit.0 as usize].to_vec();
    g.node(3).replica.install_snapshot(commit, term, membership);
    g.settle();
    g.propose(1, payload(99)).unwrap();
    g.settle();
    g.tick(100);
    let leader_disk = g.node(1).disk.clone();
    assert_eq!(g.node(3).disk, leader_disk);
}

#[test]
fn installing_a_snapshot_keeps_the_acknowledged_entries_after_it() {
    // Raft §7: a follower whose log holds the snapshot's last entry keeps
    // what follows; those entries may already count toward a commit.
    let mut g = Group::new(&[1, 2, 3]);
    g.elect(1, 1);
    for n in 0..6 {
        g.propose(1, payload(n)).unwrap();
    }
    g.settle();
    let last = g.node(2).replica.last_index();
    let through = LogIndex(last.0 - 2);
    let term = g.node(2).replica.term_at(through).unwrap();
    let membership = g.node(2).replica.membership().clone();
    assert!(g.node(2).replica.keeps_log_after_snapshot(through, term));
    g.node(2)
        .replica
        .install_snapshot(through, term, membership.clone());
    assert_eq!(g.node(2).replica.last_index(), last);
    assert_eq!(g.node(2).replica.snapshot_position(), (through, term));
    // A snapshot of another history (a term the log does not hold at
    // that index) replaces the whole log.
    let other = Term(term.0 + 5);
    assert!(!g.node(3).replica.keeps_log_after_snapshot(through, other));
    g.node(3)
        .replica
        .install_snapshot(through, other, membership);
    assert_eq!(g.node(3).replica.last_index(), through);
}

#[test]
fn snapshot_delivery_resumes_replication_when_the_followers_ack_is_lost() {
    let (mut g, commit, term) = node_3_behind_the_compacted_log();
    g.node(3).up = true;
    g.tick(100);
    // Node 3 installs the keystore file, but its Ack never arrives.
    let membership = g.node(1).replica.membership().clone();
    g.node(3).disk = g.node(1).disk[..commit.0 as usize].to_vec();
    g.node(3).replica.install_snapshot(commit, term, membership);
    g.drive_all();
    g.wire.clear();
    // The leader sends nothing to a follower behind its log, so only the
    // stream's last acknowledgement tells it to carry on.
    for _ in 0..5 {
        g.tick(100);
    }
    assert!(
        g.node(3).disk.len() == commit.0 as usize,
        "nothing new reached node 3"
    );
    let now = g.now_ms;
    g.node(1)
        .replica
        .snapshot_delivered(now, ServerId(3), commit);
    g.settle();
    g.propose(1, payload(99)).unwrap();
    g.settle();
    g.tick(100);
    let leader_disk = g.node(1).disk.clone();
    assert_eq!(g.node(3).disk, leader_disk);
}
