//! Unit tests of the election core. Names cite the rule of DESIGN §3/§3a
//! they check; time is a plain number and nothing sleeps.

use super::*;
use data::frame::{ClusterId, GroupId};

const HEARTBEAT_MS: u64 = 100;
const ELECTION_TIMEOUT_MS: u64 = 1000;

fn config() -> CoreConfig {
    CoreConfig {
        heartbeat_ms: HEARTBEAT_MS,
        election_timeout_ms: ELECTION_TIMEOUT_MS,
    }
}

fn id(n: u64) -> ServerId {
    ServerId(n)
}

fn tcp(n: u64) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 20000 + n as u16))
}

fn udp(n: u64) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 30000 + n as u16))
}

fn header(from: u64, term: Term) -> Header {
    Header {
        cluster: ClusterId(1),
        group: GroupId::FIRST,
        from: id(from),
        to: ServerId::LB,
        term,
    }
}

fn ids(list: &[u64]) -> Vec<ServerId> {
    list.iter().copied().map(id).collect()
}

fn register(core: &mut Core, now: u64, n: u64) -> Vec<Action> {
    core.receive(
        now,
        &header(n, Term(0)),
        Message::Register {
            tcp: tcp(n),
            udp: udp(n),
        },
    )
}

fn promise(
    core: &mut Core,
    now: u64,
    n: u64,
    term: Term,
    log: (u64, u64),
    voters: &[u64],
) -> Vec<Action> {
    core.receive(
        now,
        &header(n, term),
        Message::Promise {
            last_term: Term(log.0),
            last_index: LogIndex(log.1),
            voters: ids(voters),
        },
    )
}

/// A Status from server `n`.
struct St {
    term: Term,
    role: Role,
    leader: u64,
    last_index: u64,
    contact_ms: u32,
    voters: Vec<u64>,
    learners: Vec<u64>,
}

fn status(core: &mut Core, now: u64, n: u64, st: St) -> Vec<Action> {
    core.receive(
        now,
        &header(n, st.term),
        Message::Status {
            role: st.role,
            leader: id(st.leader),
            last_term: st.term,
            last_index: LogIndex(st.last_index),
            commit_index: LogIndex(st.last_index),
            applied_index: LogIndex(st.last_index),
            leader_contact_ms: st.contact_ms,
            voters: ids(&st.voters),
            learners: ids(&st.learners),
        },
    )
}

fn follower(term: Term, leader: u64, contact_ms: u32, voters: &[u64]) -> St {
    St {
        term,
        role: Role::Follower,
        leader,
        last_index: 5,
        contact_ms,
        voters: voters.to_vec(),
        learners: vec![],
    }
}

fn leading(term: Term, me: u64, voters: &[u64], learners: &[u64]) -> St {
    St {
        term,
        role: Role::Leader,
        leader: me,
        last_index: 5,
        contact_ms: 0,
        voters: voters.to_vec(),
        learners: learners.to_vec(),
    }
}

fn sends(actions: &[Action]) -> Vec<(ServerId, Term, Message)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Send {
                to, term, message, ..
            } => Some((*to, *term, message.clone())),
            Action::Persist(_) => None,
        })
        .collect()
}

fn persisted(actions: &[Action]) -> Vec<DurableState> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Persist(state) => Some(state.clone()),
            Action::Send { .. } => None,
        })
        .collect()
}

fn prepares(actions: &[Action]) -> Vec<(ServerId, Term)> {
    sends(actions)
        .into_iter()
        .filter(|(_, _, m)| *m == Message::Prepare)
        .map(|(to, term, _)| (to, term))
        .collect()
}

fn new_leaders(actions: &[Action]) -> Vec<(ServerId, Term, ServerId)> {
    sends(actions)
        .into_iter()
        .filter_map(|(to, term, m)| match m {
            Message::NewLeader { leader } => Some((to, term, leader)),
            _ => None,
        })
        .collect()
}

/// Three registered servers, server 1 named leader of term 1 at time 0
/// (promisers 1 and 2, all with config {1, 2, 3}).
fn cluster3() -> Core {
    let mut core = Core::new(config(), DurableState::default(), 0);
    for n in 1..=3 {
        register(&mut core, 0, n);
    }
    assert_eq!(core.term(), Term(1));
    promise(&mut core, 0, 1, Term(1), (0, 9), &[1, 2, 3]);
    let actions = promise(&mut core, 0, 2, Term(1), (0, 5), &[1, 2, 3]);
    assert_eq!(new_leaders(&actions).len(), 3);
    assert_eq!(core.leader(), Some(id(1)));
    core
}

#[test]
fn register_is_durable_before_registered_and_sent_to_the_registered_address() {
    let mut core = Core::new(config(), DurableState::default(), 0);
    let actions = register(&mut core, 0, 7);
    let first_registered = actions
        .iter()
        .position(|a| {
            matches!(
                a,
                Action::Send {
                    message: Message::Registered,
                    ..
                }
            )
        })
        .expect("Registered sent");
    let persist = actions
        .iter()
        .position(|a| matches!(a, Action::Persist(s) if s.members.contains_key(&id(7))))
        .expect("membership persisted");
    assert!(persist < first_registered);
    assert!(matches!(
        &actions[first_registered],
        Action::Send { to, addr, .. } if *to == id(7) && *addr == udp(7)
    ));
    // Registering again with the same addresses needs no write.
    let again = register(&mut core, 10, 7);
    assert!(persisted(&again).is_empty());
    assert!(sends(&again)
        .iter()
        .any(|(_, _, m)| *m == Message::Registered));
}

#[test]
fn register_refused_when_full_or_unsendable() {
    let mut core = Core::new(config(), DurableState::default(), 0);
    for n in 1..=MEMBERS_MAX as u64 {
        register(&mut core, 0, n);
    }
    let actions = register(&mut core, 0, 99);
    assert!(actions.is_empty());
    assert_eq!(core.view(0).servers.len(), MEMBERS_MAX);
    let mut core = Core::new(config(), DurableState::default(), 0);
    let actions = core.receive(
        0,
        &header(5, Term(0)),
        Message::Register {
            tcp: tcp(5),
            udp: "0.0.0.0:7000".parse().expect("literal"),
        },
    );
    assert!(actions.is_empty());
    assert_eq!(core.view(0).counters.registers_refused, 1);
}

#[test]
fn sends_only_to_registered_servers_registered_addresses() {
    let mut core = cluster3();
    let mut all = Vec::new();
    for now in (0..3000).step_by(50) {
        all.extend(core.tick(now));
        all.extend(status(
            &mut core,
            now,
            2,
            follower(Term(1), 1, 5000, &[1, 2, 3]),
        ));
        all.extend(status(
            &mut core,
            now,
            3,
            follower(Term(1), 1, 5000, &[1, 2, 3]),
        ));
    }
    // A stranger's frames get nothing back.
    all.extend(status(&mut core, 10, 42, follower(Term(1), 1, 0, &[])));
    for action in &all {
        if let Action::Send { to, addr, .. } = action {
            assert!((1..=3).contains(&to.0), "{action:?}");
            assert_eq!(*addr, udp(to.0));
        }
    }
}

#[test]
fn heartbeats_every_interval_carry_leader_and_peers() {
    let mut core = cluster3();
    let actions = core.tick(0);
    let beats: Vec<_> = sends(&actions)
        .into_iter()
        .filter(|(_, _, m)| matches!(m, Message::Heartbeat { .. }))
        .collect();
    assert_eq!(beats.len(), 3);
    for (_, term, message) in beats {
        assert_eq!(term, Term(1));
        let Message::Heartbeat { leader, peers } = message else {
            unreachable!()
        };
        assert_eq!(leader, id(1));
        assert_eq!(
            peers,
            (1..=3)
                .map(|n| Peer {
                    id: id(n),
                    tcp: tcp(n),
                    udp: udp(n)
                })
                .collect::<Vec<_>>()
        );
    }
    // Not again before the interval is over, then again.
    assert!(sends(&core.tick(HEARTBEAT_MS - 1)).is_empty());
    assert_eq!(core.next_deadline_ms(), HEARTBEAT_MS);
    assert_eq!(sends(&core.tick(HEARTBEAT_MS)).len(), 3);
}

#[test]
fn first_server_bootstraps_a_group_of_one() {
    let mut core = Core::new(config(), DurableState::default(), 0);
    let actions = register(&mut core, 0, 1);
    assert_eq!(prepares(&actions), vec![(id(1), Term(1))]);
    // A brand-new server has no configuration: it counts as {itself}.
    let actions = promise(&mut core, 1, 1, Term(1), (0, 0), &[]);
    assert_eq!(new_leaders(&actions), vec![(id(1), Term(1), id(1))]);
}

#[test]
fn a_server_that_never_joined_does_not_found_a_second_group() {
    // Server 1 founded a group of one and may have committed writes alone;
    // 2 and 3 registered but never joined it when 1 went away.
    let mut core = Core::new(config(), DurableState::default(), 0);
    register(&mut core, 0, 1);
    promise(&mut core, 1, 1, Term(1), (0, 0), &[]);
    assert_eq!(core.leader(), Some(id(1)));
    register(&mut core, 2, 2);
    register(&mut core, 3, 3);
    let actions = core.unreachable(10, id(1));
    assert!(
        persisted(&actions).iter().all(|d| d.founded),
        "the group's founding is durable"
    );
    promise(&mut core, 11, 2, Term(2), (0, 0), &[]);
    let actions = promise(&mut core, 11, 3, Term(2), (0, 0), &[]);
    assert!(new_leaders(&actions).is_empty(), "would lose 1's writes");
    // The founder, back, is elected.
    let actions = promise(&mut core, 12, 1, Term(2), (1, 4), &[1]);
    assert_eq!(new_leaders(&actions).len(), 3);
    assert_eq!(core.leader(), Some(id(1)));
}

#[test]
fn a_founder_that_founded_nothing_founds_the_group_again() {
    // Server 2 is named to found the group but goes down before it hears
    // so: no server holds a configuration. The others may not found
    // another group; the founder may, once it is back.
    let mut core = Core::new(config(), DurableState::default(), 0);
    register(&mut core, 0, 2);
    promise(&mut core, 1, 2, Term(1), (0, 0), &[]);
    assert_eq!(core.leader(), Some(id(2)));
    assert_eq!(core.durable().founder, id(2));
    register(&mut core, 2, 1);
    register(&mut core, 3, 3);
    core.unreachable(10, id(2));
    promise(&mut core, 11, 1, Term(2), (0, 0), &[]);
    let actions = promise(&mut core, 11, 3, Term(2), (0, 0), &[]);
    assert!(
        new_leaders(&actions).is_empty(),
        "only the founder may found"
    );
    let actions = promise(&mut core, 12, 2, Term(2), (0, 0), &[]);
    assert_eq!(new_leaders(&actions).len(), 3);
    assert_eq!(core.leader(), Some(id(2)));
    assert!(persisted(&actions).iter().all(|d| d.founder == id(2)));
}

#[test]
fn persists_term_before_prepare() {
    let mut core = Core::new(config(), DurableState::default(), 0);
    let actions = register(&mut core, 0, 1);
    let persist_at = actions
        .iter()
        .position(|a| matches!(a, Action::Persist(s) if s.term == Term(1)))
        .expect("term persisted");
    let prepare_at = actions
        .iter()
        .position(|a| {
            matches!(
                a,
                Action::Send {
                    message: Message::Prepare,
                    ..
                }
            )
        })
        .expect("prepare sent");
    assert!(persist_at < prepare_at);
    // The same for every later election, here one after a timeout.
    let actions = core.tick(ELECTION_TIMEOUT_MS);
    let persist_at = actions
        .iter()
        .position(|a| matches!(a, Action::Persist(s) if s.term == Term(2)))
        .expect("term 2 persisted");
    let prepare_at = actions
        .iter()
        .position(|a| matches!(a, Action::Send { message: Message::Prepare, term, .. } if *term == Term(2)))
        .expect("prepare 2 sent");
    assert!(persist_at < prepare_at);
}

#[test]
fn prepare_goes_above_every_term_seen() {
    let mut core = Core::new(config(), DurableState::default(), 0);
    // A server already at term 41 registers: the first election uses 42.
    let actions = core.receive(
        0,
        &header(1, Term(41)),
        Message::Register {
            tcp: tcp(1),
            udp: udp(1),
        },
    );
    assert_eq!(prepares(&actions), vec![(id(1), Term(42))]);
}

#[test]
fn prepare_resent_every_heartbeat_to_servers_that_have_not_answered() {
    let mut core = Core::new(config(), DurableState::default(), 0);
    register(&mut core, 0, 1);
    register(&mut core, 0, 2);
    register(&mut core, 0, 3);
    // Server 1 promises with a config needing two of three.
    promise(&mut core, 10, 1, Term(1), (0, 0), &[1, 2, 3]);
    let actions = core.tick(HEARTBEAT_MS);
    // 2 and 3 registered after the first Prepare went out; they get it now.
    assert_eq!(prepares(&actions), vec![(id(2), Term(1)), (id(3), Term(1))]);
    promise(&mut core, 150, 2, Term(1), (0, 0), &[1, 2, 3]);
    assert_eq!(core.leader(), Some(id(1)));
    // Once decided, no more Prepares.
    assert!(prepares(&core.tick(2 * HEARTBEAT_MS)).is_empty());
}

#[test]
fn does_not_elect_without_majority_of_candidates_config() {
    let mut core = Core::new(config(), DurableState::default(), 0);
    for n in 1..=6 {
        register(&mut core, 0, n);
    }
    let five = [1, 2, 3, 4, 5];
    // Two of five: not a majority of the candidate's configuration.
    promise(&mut core, 1, 1, Term(1), (3, 10), &five);
    let actions = promise(&mut core, 2, 2, Term(1), (3, 8), &five);
    assert!(new_leaders(&actions).is_empty());
    assert_eq!(core.leader(), None);
    // A promiser outside the candidate's configuration does not count
    // towards it, whatever its own (smaller) configuration says.
    let actions = promise(&mut core, 3, 6, Term(1), (2, 50), &[6]);
    assert!(new_leaders(&actions).is_empty());
    // A third member of the candidate's configuration makes a majority.
    let actions = promise(&mut core, 4, 4, Term(1), (1, 1), &five);
    assert_eq!(new_leaders(&actions)[0].2, id(1));
}

#[test]
fn candidates_small_config_decides_even_if_registry_is_larger() {
    // Server 1 is the most up to date and its configuration is {1, 2}: its
    // promise plus 2's is a majority of that, whatever else is registered.
    let mut core = Core::new(config(), DurableState::default(), 0);
    for n in 1..=4 {
        register(&mut core, 0, n);
    }
    promise(&mut core, 1, 1, Term(1), (4, 4), &[1, 2]);
    let actions = promise(&mut core, 2, 2, Term(1), (4, 3), &[1, 2]);
    assert_eq!(new_leaders(&actions)[0].2, id(1));
}

#[test]
fn prefers_most_up_to_date_promiser() {
    let mut core = Core::new(config(), DurableState::default(), 0);
    for n in 1..=5 {
        register(&mut core, 0, n);
    }
    let five = [1, 2, 3, 4, 5];
    promise(&mut core, 1, 1, Term(1), (4, 20), &five); // long log, older term
    promise(&mut core, 2, 2, Term(1), (5, 12), &five); // the most up to date
    let actions = promise(&mut core, 3, 3, Term(1), (5, 10), &five);
    assert_eq!(new_leaders(&actions)[0].2, id(2));
    assert!(new_leaders(&actions)
        .iter()
        .all(|(_, t, l)| *t == Term(1) && *l == id(2)));
}

#[test]
fn waits_when_the_best_promisers_config_has_no_majority_yet() {
    // 2 is the most up to date; its config {2,3,4} has only 2 promised so
    // far, although 1's config {1} would be satisfied: the LB waits.
    let mut core = Core::new(config(), DurableState::default(), 0);
    for n in 1..=4 {
        register(&mut core, 0, n);
    }
    promise(&mut core, 1, 2, Term(1), (5, 12), &[2, 3, 4]);
    let actions = promise(&mut core, 2, 1, Term(1), (1, 1), &[1]);
    assert!(new_leaders(&actions).is_empty());
    let actions = promise(&mut core, 3, 4, Term(1), (5, 11), &[2, 3, 4]);
    assert_eq!(new_leaders(&actions)[0].2, id(2));
}

#[test]
fn one_leader_per_term() {
    let mut core = cluster3();
    // A late promise of the decided term changes nothing.
    let actions = promise(&mut core, 5, 3, Term(1), (9, 99), &[1, 2, 3]);
    assert!(new_leaders(&actions).is_empty());
    assert_eq!(core.leader(), Some(id(1)));
    assert_eq!(core.view(5).counters.stale_promises, 1);
    // Many elections: each names at most one leader and in a new term.
    let mut named: BTreeMap<Term, ServerId> = BTreeMap::new();
    named.insert(Term(1), id(1));
    let mut now = 0;
    for round in 0..20u64 {
        now += 2 * ELECTION_TIMEOUT_MS;
        // The leader steps down: report it after the grace.
        let leader = core.leader().expect("a leader").0;
        let term = core.term();
        let mut actions = status(
            &mut core,
            now,
            leader,
            follower(term, 0, u32::MAX, &[1, 2, 3]),
        );
        actions.extend(core.tick(now));
        let term = prepares(&actions)[0].1;
        assert!(term > *named.keys().last().expect("one named"));
        // Promises from everyone, duplicated.
        for n in [1, 2, 3, 1, 2, 3] {
            let log = (round, (n + round) % 3);
            for (_, t, l) in new_leaders(&promise(&mut core, now, n, term, log, &[1, 2, 3])) {
                assert_eq!(t, term);
                assert_eq!(*named.entry(t).or_insert(l), l, "two leaders in {t}");
            }
        }
    }
    assert_eq!(named.len(), 21);
}

#[test]
fn reject_with_higher_term_starts_over_above_it() {
    let mut core = Core::new(config(), DurableState::default(), 0);
    register(&mut core, 0, 1);
    register(&mut core, 0, 2);
    let actions = core.receive(5, &header(2, Term(7)), Message::Reject);
    assert_eq!(prepares(&actions)[0].1, Term(8));
    assert_eq!(core.term(), Term(8));
    // A Reject at the election's own term (a promise that was lost) does
    // not churn.
    let actions = core.receive(6, &header(1, Term(8)), Message::Reject);
    assert!(actions.is_empty());
    // Any message with a higher term makes the next election go above it.
    status(&mut core, 7, 1, follower(Term(30), 0, u32::MAX, &[]));
    let actions = core.tick(5 + ELECTION_TIMEOUT_MS);
    assert_eq!(prepares(&actions)[0].1, Term(31));
}

#[test]
fn election_timeout_without_decision_starts_a_new_election_above() {
    let mut core = Core::new(config(), DurableState::default(), 0);
    for n in 1..=3 {
        register(&mut core, 0, n);
    }
    promise(&mut core, 1, 1, Term(1), (0, 0), &[1, 2, 3]);
    assert!(prepares(&core.tick(ELECTION_TIMEOUT_MS - 1))
        .iter()
        .all(|(_, t)| *t == Term(1)));
    assert_eq!(
        core.next_deadline_ms(),
        ELECTION_TIMEOUT_MS.min(ELECTION_TIMEOUT_MS - 1 + HEARTBEAT_MS)
    );
    let actions = core.tick(ELECTION_TIMEOUT_MS);
    assert_eq!(
        prepares(&actions),
        vec![(id(1), Term(2)), (id(2), Term(2)), (id(3), Term(2))]
    );
    // Promises of term 1 no longer count.
    promise(&mut core, 1001, 2, Term(1), (0, 0), &[1, 2, 3]);
    assert_eq!(core.leader(), None);
}

#[test]
fn leader_stepping_down_triggers_election() {
    let mut core = cluster3();
    // During the grace a "follower" report from the leader is one sent
    // before it heard NewLeader: ignored.
    status(&mut core, 50, 1, follower(Term(1), 0, u32::MAX, &[1, 2, 3]));
    assert!(prepares(&core.tick(ELECTION_TIMEOUT_MS)).is_empty());
    let now = ELECTION_TIMEOUT_MS + 10;
    status(&mut core, now, 1, leading(Term(1), 1, &[1, 2, 3], &[]));
    assert!(prepares(&core.tick(now)).is_empty());
    let actions = status(
        &mut core,
        now + 1,
        1,
        follower(Term(1), 0, 5000, &[1, 2, 3]),
    );
    assert_eq!(prepares(&actions).len(), 3);
    assert_eq!(core.term(), Term(2));
}

#[test]
fn refused_datagram_to_the_leader_starts_an_election_at_once() {
    let mut core = cluster3();
    // A follower's port refusing says nothing about the leader.
    assert!(core.unreachable(10, id(2)).is_empty());
    assert_eq!(core.term(), Term(1));
    // The leader's process is gone: no need to wait out the timeout, nor
    // the new leader's grace.
    let actions = core.unreachable(20, id(1));
    assert_eq!(persisted(&actions).len(), 1, "the term is durable first");
    assert_eq!(prepares(&actions).len(), 3);
    assert_eq!(core.term(), Term(2));
    assert_eq!(core.leader(), None);
    // More refusals during the election do not restart it.
    assert!(core.unreachable(30, id(1)).is_empty());
    assert_eq!(core.term(), Term(2));
    promise(&mut core, 40, 2, Term(2), (1, 7), &[1, 2, 3]);
    let actions = promise(&mut core, 40, 3, Term(2), (1, 6), &[1, 2, 3]);
    assert_eq!(new_leaders(&actions).len(), 3);
    assert_eq!(core.leader(), Some(id(2)));
}

#[test]
fn majority_of_leaders_voters_losing_contact_triggers_election() {
    let mut core = cluster3();
    let now = 2 * ELECTION_TIMEOUT_MS;
    status(&mut core, now, 1, leading(Term(1), 1, &[1, 2, 3], &[]));
    // One of three: not yet.
    let actions = status(&mut core, now, 2, follower(Term(1), 1, 1500, &[1, 2, 3]));
    assert!(prepares(&actions).is_empty());
    // Exactly the timeout is not above it.
    let actions = status(&mut core, now, 3, follower(Term(1), 1, 1000, &[1, 2, 3]));
    assert!(prepares(&actions).is_empty());
    let actions = status(
        &mut core,
        now + 1,
        3,
        follower(Term(1), 1, 1001, &[1, 2, 3]),
    );
    assert_eq!(prepares(&actions).len(), 3);
}

#[test]
fn stale_contact_reports_do_not_count() {
    let mut core = cluster3();
    let now = 2 * ELECTION_TIMEOUT_MS;
    status(&mut core, now, 2, follower(Term(1), 1, 1500, &[1, 2, 3]));
    // Server 3's report is older than the election timeout.
    status(
        &mut core,
        now - ELECTION_TIMEOUT_MS - 1,
        3,
        follower(Term(1), 1, 1500, &[1, 2, 3]),
    );
    assert!(prepares(&core.tick(now)).is_empty());
}

#[test]
fn lb_losing_contact_alone_does_not_trigger_election() {
    let mut core = cluster3();
    // The leader never answers the LB again, but its followers keep hearing
    // it; ten election timeouts pass.
    let mut now = 0;
    while now < 10 * ELECTION_TIMEOUT_MS {
        now += HEARTBEAT_MS;
        let mut actions = core.tick(now);
        actions.extend(status(
            &mut core,
            now,
            2,
            follower(Term(1), 1, 20, &[1, 2, 3]),
        ));
        actions.extend(status(
            &mut core,
            now,
            3,
            follower(Term(1), 1, 20, &[1, 2, 3]),
        ));
        assert!(prepares(&actions).is_empty(), "at {now}");
    }
    assert_eq!(core.leader(), Some(id(1)));
}

#[test]
fn leader_with_learners_counts_only_voters() {
    // Voters {1,2,3}, learners {4,5}: the two learners losing the leader
    // are not a majority of the voters.
    let mut core = cluster3();
    register(&mut core, 0, 4);
    register(&mut core, 0, 5);
    let now = 2 * ELECTION_TIMEOUT_MS;
    status(&mut core, now, 1, leading(Term(1), 1, &[1, 2, 3], &[4, 5]));
    status(&mut core, now, 2, follower(Term(1), 1, 1500, &[1, 2, 3]));
    status(&mut core, now, 4, follower(Term(1), 1, 5000, &[1, 2, 3]));
    let actions = status(&mut core, now, 5, follower(Term(1), 1, 5000, &[1, 2, 3]));
    assert!(prepares(&actions).is_empty());
}

#[test]
fn add_server_sent_to_leader_until_its_status_shows_it() {
    let mut core = cluster3();
    register(&mut core, 0, 4);
    let now = 100;
    status(&mut core, now, 1, leading(Term(1), 1, &[1], &[]));
    let adds = |actions: &[Action]| -> Vec<(ServerId, ServerId)> {
        sends(actions)
            .into_iter()
            .filter_map(|(to, _, m)| match m {
                Message::AddServer { peer } => Some((to, peer.id)),
                _ => None,
            })
            .collect()
    };
    assert_eq!(
        adds(&core.tick(now)),
        vec![(id(1), id(2)), (id(1), id(3)), (id(1), id(4))]
    );
    status(&mut core, now + 1, 1, leading(Term(1), 1, &[1, 2], &[3]));
    assert_eq!(adds(&core.tick(now + HEARTBEAT_MS)), vec![(id(1), id(4))]);
    status(
        &mut core,
        now + 101,
        1,
        leading(Term(1), 1, &[1, 2, 3], &[4]),
    );
    assert!(adds(&core.tick(now + 2 * HEARTBEAT_MS)).is_empty());
}

#[test]
fn no_membership_changes_to_a_leader_not_yet_leading() {
    let mut core = cluster3();
    status(&mut core, 1, 1, follower(Term(1), 0, u32::MAX, &[1]));
    assert!(sends(&core.tick(1))
        .iter()
        .all(|(_, _, m)| !matches!(m, Message::AddServer { .. })));
}

#[test]
fn remove_server_resent_until_leader_config_drops_it_then_forgotten() {
    let mut core = cluster3();
    status(&mut core, 1, 1, leading(Term(1), 1, &[1, 2, 3], &[]));
    assert_eq!(core.remove_server(id(9)), Err(RemoveError::NotFound(id(9))));
    let actions = core.remove_server(id(3)).expect("registered");
    assert_eq!(
        sends(&actions),
        vec![(id(1), Term(1), Message::RemoveServer { id: id(3) })]
    );
    let removes = |actions: &[Action]| {
        sends(actions)
            .into_iter()
            .filter(|(_, _, m)| matches!(m, Message::RemoveServer { .. }))
            .count()
    };
    assert_eq!(removes(&core.tick(HEARTBEAT_MS)), 1);
    // The view marks it, so get-servers stops handing it out.
    assert!(core.view(0).servers[2].removing);
    let actions = status(&mut core, 150, 1, leading(Term(1), 1, &[1, 2], &[]));
    let saved = persisted(&actions);
    assert_eq!(saved.len(), 1);
    assert!(!saved[0].members.contains_key(&id(3)));
    assert_eq!(core.view(150).servers.len(), 2);
    assert_eq!(removes(&core.tick(2 * HEARTBEAT_MS)), 0);
    assert_eq!(core.remove_server(id(3)), Err(RemoveError::NotFound(id(3))));
}

#[test]
fn removal_needs_a_leader_status_after_the_request() {
    let mut core = cluster3();
    // The leader's latest status lacks 3 (not added yet), but it predates
    // the request, so 3 is not forgotten until a later one.
    status(&mut core, 1, 1, leading(Term(1), 1, &[1, 2], &[]));
    let actions = core.remove_server(id(3)).expect("registered");
    assert!(persisted(&actions).is_empty());
    assert_eq!(core.view(1).servers.len(), 3);
    status(&mut core, 2, 1, leading(Term(1), 1, &[1, 2], &[]));
    assert_eq!(core.view(2).servers.len(), 2);
}

#[test]
fn restart_never_reuses_a_term() {
    let mut core = cluster3();
    // An election in term 2 is under way when the LB dies.
    let now = 2 * ELECTION_TIMEOUT_MS;
    let actions = status(&mut core, now, 1, follower(Term(1), 0, 5000, &[1, 2, 3]));
    let saved = persisted(&actions).pop().expect("term 2 persisted");
    assert_eq!(saved.term, Term(2));
    // The restarted LB resumes from disk and starts over above term 2.
    let mut restarted = Core::new(config(), saved.clone(), 0);
    assert_eq!(restarted.term(), Term(2));
    assert_eq!(restarted.view(0).servers.len(), 3);
    let actions = restarted.tick(0);
    assert!(prepares(&actions).iter().all(|(_, t)| *t == Term(3)));
    assert_eq!(prepares(&actions).len(), 3);
}

#[test]
fn restart_with_a_named_leader_keeps_it_and_elects_above() {
    let core = cluster3();
    let saved = core.durable().clone();
    assert_eq!((saved.term, saved.leader), (Term(1), id(1)));
    let mut restarted = Core::new(config(), saved, 0);
    // No disruption: heartbeats name the remembered leader.
    let actions = restarted.tick(0);
    assert!(prepares(&actions).is_empty());
    assert!(sends(&actions).iter().all(|(_, t, m)| *t == Term(1)
        && matches!(m, Message::Heartbeat { leader, .. } if *leader == id(1))));
    // When it steps down the next term is 2, never 1 again.
    let now = ELECTION_TIMEOUT_MS;
    let actions = status(
        &mut restarted,
        now,
        1,
        follower(Term(1), 0, 5000, &[1, 2, 3]),
    );
    assert_eq!(prepares(&actions)[0].1, Term(2));
}

#[test]
fn frames_from_unregistered_servers_are_ignored() {
    let mut core = cluster3();
    let actions = promise(&mut core, 1, 9, Term(1), (99, 99), &[9]);
    assert!(actions.is_empty());
    let actions = status(&mut core, 1, 9, leading(Term(1), 9, &[9], &[]));
    assert!(actions.is_empty());
    assert_eq!(core.view(1).counters.from_unregistered, 2);
    assert_eq!(core.leader(), Some(id(1)));
}

/// A tiny deterministic PRNG (xorshift) so the simulation below needs no
/// random source and replays exactly.
struct Prng(u64);

impl Prng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
}

/// A server obeying §3a's server-side rules, enough for elections.
struct SimServer {
    term: Term,
    last: (u64, u64),
    leader: ServerId,
}

#[test]
fn one_leader_per_term_under_loss_duplication_reorder_and_lb_restarts() {
    const SEEDS: u64 = 200;
    const STEPS: u64 = 400;
    const INFLIGHT_MAX: usize = 256;
    let mut leaders_total = 0;
    for seed in 1..=SEEDS {
        let mut rng = Prng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let mut disk = DurableState::default();
        let mut core = Core::new(config(), disk.clone(), 0);
        let mut servers: BTreeMap<u64, SimServer> = (1..=5)
            .map(|n| {
                (
                    n,
                    SimServer {
                        term: Term(0),
                        last: (0, rng.next() % 4),
                        leader: ServerId::LB,
                    },
                )
            })
            .collect();
        let mut named: BTreeMap<Term, ServerId> = BTreeMap::new();
        let mut highest_persisted = Term(0);
        let mut inflight: Vec<(u64, Header, Message)> = Vec::new();
        for n in 1..=5 {
            inflight.push((
                n,
                header(n, Term(0)),
                Message::Register {
                    tcp: tcp(n),
                    udp: udp(n),
                },
            ));
        }
        let mut now = 0;
        for _ in 0..STEPS {
            now += rng.next() % 60;
            let mut actions = Vec::new();
            if rng.next() % 1000 < 5 {
                // The LB restarts from what it made durable (about once in
                // ten election timeouts, so elections can still finish).
                core = Core::new(config(), disk.clone(), now);
            }
            actions.extend(core.tick(now));
            // Deliver a few random in-flight frames (reordered), some twice.
            for _ in 0..rng.next() % 8 {
                if inflight.is_empty() {
                    break;
                }
                let at = (rng.next() % inflight.len() as u64) as usize;
                let (_, h, m) = if rng.chance(10) {
                    inflight[at].clone()
                } else {
                    inflight.swap_remove(at)
                };
                actions.extend(core.receive(now, &h, m));
            }
            for action in actions {
                match action {
                    Action::Persist(state) => {
                        assert!(
                            state.term >= highest_persisted,
                            "seed {seed}: term went down"
                        );
                        highest_persisted = state.term;
                        disk = state;
                    }
                    Action::Send {
                        to, term, message, ..
                    } => {
                        // The driver's rule: anything sent in a term is sent
                        // after that term is durable.
                        assert!(
                            term <= disk.term,
                            "seed {seed}: sent {term} before persisting it"
                        );
                        if let Message::NewLeader { leader } = message {
                            assert_eq!(
                                *named.entry(term).or_insert(leader),
                                leader,
                                "seed {seed}: two leaders in {term}"
                            );
                        }
                        if rng.chance(20) {
                            continue; // lost
                        }
                        let server = servers.get_mut(&to.0).expect("only registered servers");
                        let reply = match message {
                            Message::Prepare if term > server.term => {
                                server.term = term;
                                server.leader = ServerId::LB;
                                Some(Message::Promise {
                                    last_term: Term(server.last.0),
                                    last_index: LogIndex(server.last.1),
                                    voters: ids(&[1, 2, 3, 4, 5]),
                                })
                            }
                            Message::Prepare => Some(Message::Reject),
                            Message::NewLeader { leader } if term >= server.term => {
                                server.term = term;
                                server.leader = leader;
                                None
                            }
                            Message::Heartbeat { .. } => {
                                let me = to;
                                let leading = server.leader == me;
                                if leading && rng.chance(5) {
                                    // The leader writes, or steps down.
                                    server.last = (server.term.0, server.last.1 + 1);
                                }
                                Some(Message::Status {
                                    role: if leading && !rng.chance(3) {
                                        Role::Leader
                                    } else {
                                        Role::Follower
                                    },
                                    leader: server.leader,
                                    last_term: Term(server.last.0),
                                    last_index: LogIndex(server.last.1),
                                    commit_index: LogIndex(0),
                                    applied_index: LogIndex(0),
                                    leader_contact_ms: (rng.next() % 2000) as u32,
                                    voters: ids(&[1, 2, 3, 4, 5]),
                                    learners: vec![],
                                })
                            }
                            _ => None,
                        };
                        if let Some(reply) = reply {
                            inflight.push((to.0, header(to.0, server.term), reply));
                        }
                    }
                }
            }
            // Bound the simulated network: a full one drops at random.
            while inflight.len() > INFLIGHT_MAX {
                let at = (rng.next() % inflight.len() as u64) as usize;
                inflight.swap_remove(at);
            }
        }
        assert!(
            !named.is_empty(),
            "seed {seed}: no leader was ever named: {:?} {:?}",
            core.view(now).counters,
            core.view(now).servers.len()
        );
        leaders_total += named.len();
    }
    // Leaders step down and the LB restarts often enough that most runs
    // see several elections, not just the first.
    assert!(leaders_total > 2 * SEEDS as usize, "{leaders_total}");
}

#[test]
fn a_server_not_heard_for_the_election_timeout_is_shown_unreachable() {
    let mut core = cluster3();
    status(&mut core, 100, 1, leading(Term(1), 1, &[1, 2, 3], &[]));
    status(&mut core, 100, 2, follower(Term(1), 1, 0, &[1, 2, 3]));
    let reachable = |core: &Core, now: u64, n: u64| {
        let view = core.view(now);
        let server = view.servers.iter().find(|s| s.id == id(n)).expect("listed");
        server.reachable
    };
    let end = 100 + ELECTION_TIMEOUT_MS;
    assert!(reachable(&core, end, 1));
    // Its last report still says leader; `reachable` says how old it is.
    assert!(!reachable(&core, end + 1, 1));
    let view = core.view(end + 1);
    let leader = view.servers.iter().find(|s| s.id == id(1)).expect("listed");
    assert_eq!(leader.status.as_ref().map(|s| s.role), Some(Role::Leader));
    // Server 3 was registered (heard at 0) and has said nothing since.
    assert!(!reachable(&core, end, 3));
}
