//! A whole group in memory: messages are delivered by hand, fsyncs
//! complete when the test says so. Test names cite the rule they check.

mod election;
mod follower_read;
mod lb_link;
mod lease;
mod membership;
mod replication;
mod snapshot;
mod snapshot_stream;
mod vote;
mod waiters;

use std::collections::BTreeMap;

use super::*;

const LB_ADDR: &str = "127.0.0.1:9000";

fn addr(id: u64) -> SocketAddr {
    format!("127.0.0.1:{}", 9000 + id).parse().unwrap()
}

/// Servers `ids` as the LB lists them (and as a static peer list).
fn peers(ids: &[u64]) -> Vec<Peer> {
    ids.iter()
        .map(|i| Peer {
            id: ServerId(*i),
            tcp: addr(*i),
            udp: addr(*i),
        })
        .collect()
}

fn payload(n: u64) -> Bytes {
    payload_of(n, 8)
}

/// A Store entry whose value is `bytes` long.
fn payload_of(n: u64, bytes: usize) -> Bytes {
    encode_op(
        0,
        Op::Store {
            mode: data::command::StoreMode::Set,
            key: Bytes::from(format!("k{n}")),
            flags: 0,
            exptime: 0,
            data: Bytes::from(vec![b'v'; bytes]),
            cas_unique: 0,
        },
    )
}

/// What a server with an empty log and `membership` recovers.
fn fresh_durable(membership: Membership) -> Durable {
    Durable {
        term: Term(0),
        snapshot_index: LogIndex(0),
        snapshot_term: Term(0),
        entries: Vec::new(),
        snapshot_membership: membership,
    }
}

/// One replica plus what its driver would have done.
struct Node {
    replica: Replica,
    disk: Vec<(Term, Bytes)>,
    term_on_disk: Term,
    committed: LogIndex,
    reads_ready: Vec<u64>,
    /// The index each ready read waits to have applied, in the same order.
    ready_at: Vec<LogIndex>,
    reads_failed: Vec<u64>,
    lost_after: Option<LogIndex>,
    snapshot_asked: bool,
    up: bool,
}

struct Group {
    nodes: BTreeMap<ServerId, Node>,
    /// (from, to, term, message) in flight.
    wire: VecDeque<(ServerId, ServerId, Term, Message)>,
    to_lb: Vec<(ServerId, Term, Message)>,
    now_ms: u64,
    /// Nodes cut off from every other: running, but what they send and
    /// what is sent to them is lost.
    cut: BTreeSet<ServerId>,
}

impl Group {
    /// `ids` all voters of a configuration already in their snapshot.
    fn new(ids: &[u64]) -> Group {
        Group::with_heartbeats(ids, |_| Timing::default().heartbeat_ms)
    }

    /// As [`Group::new`], each server with its own heartbeat setting.
    fn with_heartbeats(ids: &[u64], heartbeat_ms: impl Fn(u64) -> u64) -> Group {
        let membership = Membership {
            voters: ids.iter().map(|i| ServerId(*i)).collect(),
            learners: BTreeSet::new(),
        };
        let peers = peers(ids);
        let mut nodes = BTreeMap::new();
        for id in ids {
            let durable = Durable {
                term: Term(0),
                snapshot_index: LogIndex(0),
                snapshot_term: Term(0),
                entries: Vec::new(),
                snapshot_membership: membership.clone(),
            };
            let timing = Timing::new(heartbeat_ms(*id), Timing::default().election_timeout_ms);
            let mut replica = Replica::new(ServerId(*id), timing, durable, *id, 0);
            replica.set_lb_addr(LB_ADDR.parse().unwrap());
            replica.receive(
                0,
                ServerId::LB,
                Term(0),
                Message::Heartbeat {
                    leader: ServerId::LB,
                    peers: peers.clone(),
                },
            );
            nodes.insert(
                ServerId(*id),
                Node {
                    replica,
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
        }
        Group {
            nodes,
            wire: VecDeque::new(),
            to_lb: Vec::new(),
            now_ms: 1_000,
            cut: BTreeSet::new(),
        }
    }

    fn node(&mut self, id: u64) -> &mut Node {
        self.nodes.get_mut(&ServerId(id)).unwrap()
    }

    fn propose(&mut self, id: u64, payload: Bytes) -> Result<LogIndex, NotLeader> {
        self.node(id).replica.propose(payload)
    }

    fn read(&mut self, id: u64, token: u64) -> Result<(), NotLeader> {
        let now = self.now_ms;
        self.node(id).replica.read(now, token)
    }

    fn receive(&mut self, id: u64, from: ServerId, term: Term, message: Message) {
        let now = self.now_ms;
        self.node(id).replica.receive(now, from, term, message)
    }

    /// Carries out a node's actions like the driver: disk first, sends
    /// queued, then reports the fsync.
    fn drive(&mut self, id: ServerId) {
        loop {
            let now = self.now_ms;
            let node = self.nodes.get_mut(&id).unwrap();
            node.replica.flush(now);
            let actions = node.replica.take_actions();
            if actions.is_empty() {
                return;
            }
            let mut appended = None;
            for action in actions {
                match action {
                    Action::PersistTerm(t) => node.term_on_disk = t,
                    Action::TruncateAfter(i) => node.disk.truncate(i.0 as usize),
                    Action::Append(entries) => {
                        for (index, term, payload) in entries {
                            assert_eq!(
                                index.0 as usize,
                                node.disk.len() + 1,
                                "appends are contiguous"
                            );
                            node.disk.push((term, payload));
                            appended = Some(index);
                        }
                    }
                    Action::Send {
                        to, term, message, ..
                    } => {
                        // Rule: nothing is sent in a term not yet durable.
                        assert!(
                            term <= node.term_on_disk,
                            "sent in term {term:?} before persisting it"
                        );
                        if to == ServerId::LB {
                            self.to_lb.push((id, term, message));
                        } else {
                            self.wire.push_back((id, to, term, message));
                        }
                    }
                    Action::Commit(i) => {
                        assert!(i >= node.committed, "commit index never goes down");
                        assert!(
                            i.0 as usize <= node.disk.len() || node.replica.role() != Role::Leader
                        );
                        node.committed = i;
                    }
                    Action::ReadReady { token, index } => {
                        node.reads_ready.push(token);
                        node.ready_at.push(index);
                    }
                    Action::ReadFailed { token } | Action::ReadUnanswered { token } => {
                        node.reads_failed.push(token)
                    }
                    Action::ProposalsLost { after } => node.lost_after = Some(after),
                    Action::SendSnapshot { .. } => node.snapshot_asked = true,
                }
            }
            if let Some(index) = appended {
                let now = self.now_ms;
                node.replica.persisted(now, index);
            }
        }
    }

    fn drive_all(&mut self) {
        let ids: Vec<ServerId> = self.nodes.keys().copied().collect();
        for id in ids {
            self.drive(id);
        }
    }

    /// Delivers messages until the wire is quiet (bounded).
    fn settle(&mut self) {
        self.drive_all();
        for _ in 0..10_000 {
            let Some((from, to, term, message)) = self.wire.pop_front() else {
                return;
            };
            let now = self.now_ms;
            let (Some(f), Some(t)) = (self.nodes.get(&from), self.nodes.get(&to)) else {
                continue;
            };
            if !f.up || !t.up || self.cut.contains(&from) || self.cut.contains(&to) {
                continue;
            }
            self.nodes
                .get_mut(&to)
                .unwrap()
                .replica
                .receive(now, from, term, message);
            self.drive(to);
        }
        panic!("messages never settled");
    }

    fn elect(&mut self, leader: u64, term: u64) {
        let ids: Vec<ServerId> = self.nodes.keys().copied().collect();
        for id in &ids {
            if self.nodes[id].up {
                let now = self.now_ms;
                self.nodes.get_mut(id).unwrap().replica.receive(
                    now,
                    ServerId::LB,
                    Term(term),
                    Message::Prepare,
                );
            }
        }
        self.drive_all();
        for id in &ids {
            if self.nodes[id].up {
                let now = self.now_ms;
                let msg = Message::NewLeader {
                    leader: ServerId(leader),
                };
                self.nodes
                    .get_mut(id)
                    .unwrap()
                    .replica
                    .receive(now, ServerId::LB, Term(term), msg);
            }
        }
        self.settle();
    }

    fn tick(&mut self, ms: u64) {
        self.now_ms += ms;
        let now = self.now_ms;
        for node in self.nodes.values_mut().filter(|n| n.up) {
            node.replica.tick(now);
        }
        self.settle();
    }
}

/// The Appends and Acks on the wire from `from` to `to`.
fn on_wire(g: &Group, from: u64, to: u64) -> Vec<&Message> {
    g.wire
        .iter()
        .filter(|(f, t, _, _)| *f == ServerId(from) && *t == ServerId(to))
        .map(|(_, _, _, m)| m)
        .collect()
}

/// Takes every message on the wire to `to`, and drops the rest.
fn take_to(g: &mut Group, to: u64) -> Vec<(Term, Message)> {
    g.wire
        .drain(..)
        .filter(|(_, t, _, _)| *t == ServerId(to))
        .map(|(_, _, term, message)| (term, message))
        .collect()
}

/// Whether `id` sent the LB a Promise among `actions`.
fn promised(actions: &[Action]) -> bool {
    actions.iter().any(|a| {
        matches!(
            a,
            Action::Send {
                message: Message::Promise { .. },
                ..
            }
        )
    })
}

/// Hands `messages` from `from` to node `to` one at a time, each
/// followed by a driver turn.
fn deliver(g: &mut Group, from: u64, to: u64, messages: Vec<(Term, Message)>) {
    for (term, message) in messages {
        g.receive(to, ServerId(from), term, message);
        g.drive(ServerId(to));
    }
}

/// Appends from `from` to `to` on the wire.
fn appends_on_wire(g: &Group, from: u64, to: u64) -> usize {
    on_wire(g, from, to)
        .iter()
        .filter(|m| matches!(m, Message::Append { .. }))
        .count()
}

/// Node 3 was down while leader 1 committed five entries and compacted
/// its log through them: it is behind the log. Returns the compaction
/// point.
fn node_3_behind_the_compacted_log() -> (Group, LogIndex, Term) {
    let mut g = Group::new(&[1, 2, 3]);
    g.elect(1, 1);
    g.node(3).up = false;
    for n in 0..5 {
        g.propose(1, payload(n)).unwrap();
    }
    g.settle();
    let commit = g.node(1).committed;
    let term = g.node(1).replica.term_at(commit).unwrap();
    g.node(1).replica.compact(commit, term);
    (g, commit, term)
}
