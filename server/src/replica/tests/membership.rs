//! Servers joining as learners and becoming voters.

use super::*;

#[test]
fn new_server_joins_as_learner_then_voter() {
    // Ongaro §4.1: one change at a time, learners do not count.
    let mut g = Group::new(&[1]);
    g.elect(1, 1);
    assert!(g.node(1).replica.is_serving());
    // Server 2 appears (registered with the LB, empty log).
    let durable = fresh_durable(Membership::default());
    let mut two = Replica::new(ServerId(2), Timing::default(), durable, 2, 0);
    let peers = vec![
        Peer {
            id: ServerId(1),
            tcp: addr(1),
            udp: addr(1),
        },
        Peer {
            id: ServerId(2),
            tcp: addr(2),
            udp: addr(2),
        },
    ];
    two.receive(
        0,
        ServerId::LB,
        Term(0),
        Message::Heartbeat {
            leader: ServerId(1),
            peers: peers.clone(),
        },
    );
    g.nodes.insert(
        ServerId(2),
        Node {
            replica: two,
            disk: Vec::new(),
            term_on_disk: Term(0),
            committed: LogIndex(0),
            reads_ready: Vec::new(),
            ready_at: Vec::new(),
            reads_failed: Vec::new(),
            lost_after: None,
            snapshot_asked: false,
            up: true,
        },
    );
    let now = g.now_ms;
    g.node(1).replica.receive(
        now,
        ServerId::LB,
        Term(0),
        Message::Heartbeat {
            leader: ServerId(1),
            peers,
        },
    );
    g.node(1).replica.receive(
        now,
        ServerId::LB,
        Term(1),
        Message::AddServer {
            peer: Peer {
                id: ServerId(2),
                tcp: addr(2),
                udp: addr(2),
            },
        },
    );
    g.settle();
    for _ in 0..5 {
        g.tick(100);
    }
    let m = g.node(1).replica.membership().clone();
    assert!(
        m.voters.contains(&ServerId(2)),
        "caught-up learner promoted: {m:?}"
    );
    let leader_disk = g.node(1).disk.clone();
    assert_eq!(g.node(2).disk, leader_disk);
    assert_eq!(g.node(2).replica.membership(), &m);
}
