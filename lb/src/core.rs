//! The LB's election and membership logic as a state machine (DESIGN §3,
//! §3a): registration, heartbeats, status bookkeeping, when to start an
//! election, Prepare/Promise/Reject, naming at most one leader per term,
//! and AddServer/RemoveServer to the leader.
//!
//! Sans-IO: no sockets, no clock, no randomness. Time comes in as `now_ms`
//! (any monotonic origin), frames come in already authenticated and
//! addressed to the LB, and everything the core wants done comes out as a
//! list of [`Action`]s, in order. The driver (`driver.rs`) is the only
//! caller: it must complete every [`Action::Persist`] before it performs any
//! [`Action::Send`] after it in the same list, which is what makes "persist
//! T before Prepare(T)" and "record the member before Registered" hold.
//!
//! The core sends only to a registered server's registered UDP address.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;

use data::frame::{Header, LogIndex, Message, Peer, Role, ServerId, Term};

use crate::registry::{DurableState, Member, MEMBERS_MAX};

/// Timing of the control protocol, in milliseconds of the caller's clock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CoreConfig {
    /// How often every registered server gets a Heartbeat, and how often
    /// unanswered Prepares and pending AddServer/RemoveServer are resent.
    pub heartbeat_ms: u64,
    /// How long an election may go undecided, how long followers may go
    /// without hearing the leader, and the grace a new leader gets.
    pub election_timeout_ms: u64,
}

/// What the core wants the driver to do, in list order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Make this state durable; complete it before any later `Send`.
    Persist(DurableState),
    /// Send one frame from the LB to server `to` at `addr` (always `to`'s
    /// registered UDP address) in `term`.
    Send {
        to: ServerId,
        addr: SocketAddr,
        term: Term,
        message: Message,
    },
}

/// Why a `remove-server` request was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RemoveError {
    #[error("server {0} is not registered")]
    NotFound(ServerId),
    /// This LB does not lead its group; the one at this discovery address
    /// does, if known.
    #[error("this LB does not lead the LB group")]
    NotLeader(Option<SocketAddr>),
}

/// Inputs the core dropped, for `stats`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CoreCounters {
    /// Registers refused: registry full, or an address no one can send to.
    pub registers_refused: u64,
    /// Frames from servers that are not registered (other than Register).
    pub from_unregistered: u64,
    /// Promises for an election that is over or another term.
    pub stale_promises: u64,
    /// Frames of a kind the LB never receives (replication traffic).
    pub unexpected: u64,
    /// Elections started, and leaders named.
    pub elections_started: u64,
    /// Elections started because the leader's port refused a datagram.
    pub leader_unreachable: u64,
    pub leaders_named: u64,
}

/// The latest Status a server sent, as the LB keeps it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerStatus {
    /// When it arrived, on the caller's clock.
    pub received_ms: u64,
    /// Arrival order among all Statuses, to tell "after a request" apart.
    pub seq: u64,
    /// The server's current term (the frame header's).
    pub term: Term,
    pub role: Role,
    pub leader: ServerId,
    pub last_term: Term,
    pub last_index: LogIndex,
    pub commit_index: LogIndex,
    pub applied_index: LogIndex,
    pub leader_contact_ms: u32,
    pub voters: Vec<ServerId>,
    pub learners: Vec<ServerId>,
}

/// What the LB knows of one registered server beyond its addresses.
#[derive(Clone, Debug, Default)]
struct ServerState {
    status: Option<ServerStatus>,
    last_heard_ms: Option<u64>,
    /// Set by `remove-server`: the Status sequence number at the request, so
    /// only a leader Status that arrives later can confirm the removal.
    removal_requested_seq: Option<u64>,
}

/// A promise, with the promiser's log position and configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Promise {
    last_term: Term,
    last_index: LogIndex,
    voters: BTreeSet<ServerId>,
}

/// An election in progress in `term`.
#[derive(Clone, Debug)]
struct Election {
    term: Term,
    started_ms: u64,
    promises: BTreeMap<ServerId, Promise>,
}

/// One registered server as `get-servers` and `stats` show it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerView {
    pub id: ServerId,
    pub tcp: SocketAddr,
    pub udp: SocketAddr,
    /// `remove-server` was asked for and the leader's configuration still
    /// has it.
    pub removing: bool,
    pub last_heard_ms_ago: Option<u64>,
    /// The LB heard from it within the election timeout. Its `status` is
    /// its last report either way: a killed leader's still says leader.
    pub reachable: bool,
    pub status: Option<ServerStatus>,
}

/// A snapshot of the core for the discovery port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterView {
    pub term: Term,
    pub leader: Option<ServerId>,
    /// The term of the election in progress, if any.
    pub election_term: Option<Term>,
    /// In id order.
    pub servers: Vec<ServerView>,
    pub counters: CoreCounters,
}

/// The election and membership state machine.
#[derive(Debug)]
pub struct Core {
    config: CoreConfig,
    /// Mirrors what was last handed out in `Action::Persist`.
    durable: DurableState,
    /// Exactly the keys of `durable.members`.
    servers: BTreeMap<ServerId, ServerState>,
    election: Option<Election>,
    /// The highest term in any frame received; the next election goes above
    /// it and above `durable.term`.
    seen_term: Term,
    /// The highest term a leader was named in, by this process or (read
    /// back from disk) an earlier one. Naming again requires a higher term.
    last_named_term: Term,
    /// When the current leader was named, or when the core started with a
    /// remembered leader: the start of the leader's grace period.
    leader_since_ms: u64,
    next_heartbeat_ms: u64,
    status_seq: u64,
    counters: CoreCounters,
}

impl Core {
    /// A core resuming from `durable` (the empty state on a first start).
    /// A leader remembered from disk keeps leading; heartbeats start at once.
    pub fn new(config: CoreConfig, durable: DurableState, now_ms: u64) -> Core {
        assert!(config.heartbeat_ms > 0, "heartbeat_ms must be positive");
        assert!(
            config.election_timeout_ms > config.heartbeat_ms,
            "the election timeout must exceed the heartbeat interval"
        );
        assert!(durable.members.len() <= MEMBERS_MAX);
        assert!(!durable.members.contains_key(&ServerId::LB));
        let mut durable = durable;
        // Whether or not a leader was named in `durable.term` before the
        // restart (an election may have been cut short), none is named in it
        // now: the next election goes above it.
        let last_named_term = durable.term;
        if !durable.members.contains_key(&durable.leader) {
            durable.leader = ServerId::LB;
        }
        let servers = durable
            .members
            .keys()
            .map(|id| (*id, ServerState::default()))
            .collect();
        Core {
            config,
            seen_term: durable.term,
            durable,
            servers,
            election: None,
            last_named_term,
            leader_since_ms: now_ms,
            next_heartbeat_ms: now_ms,
            status_seq: 0,
            counters: CoreCounters::default(),
        }
    }

    /// The LB's current term: that of the latest election it started.
    pub fn term(&self) -> Term {
        self.durable.term
    }

    /// The leader named in the current term, if any.
    pub fn leader(&self) -> Option<ServerId> {
        (self.durable.leader != ServerId::LB).then_some(self.durable.leader)
    }

    pub fn durable(&self) -> &DurableState {
        &self.durable
    }

    /// When the core next needs a `tick`, on the caller's clock.
    pub fn next_deadline_ms(&self) -> u64 {
        let election = self
            .election
            .as_ref()
            .map(|e| e.started_ms + self.config.election_timeout_ms);
        election.map_or(self.next_heartbeat_ms, |at| at.min(self.next_heartbeat_ms))
    }

    /// Time passes: heartbeats, resends, election triggers and timeouts.
    pub fn tick(&mut self, now_ms: u64) -> Vec<Action> {
        let mut actions = Vec::new();
        // Elections first, so heartbeats of this tick carry the new term.
        self.evaluate(now_ms, &mut actions);
        if now_ms >= self.next_heartbeat_ms {
            self.next_heartbeat_ms = now_ms + self.config.heartbeat_ms;
            self.heartbeat(&mut actions);
            self.resend_prepares(now_ms, &mut actions);
            self.drive_membership(&mut actions);
        }
        actions
    }

    /// One authenticated frame addressed to the LB.
    pub fn receive(&mut self, now_ms: u64, header: &Header, message: Message) -> Vec<Action> {
        let mut actions = Vec::new();
        let from = header.from;
        if from == ServerId::LB {
            // Only servers send to the LB; a frame "from the LB" is a bug or
            // a replay of our own traffic.
            self.counters.unexpected += 1;
            return actions;
        }
        self.seen_term = self.seen_term.max(header.term);
        if let Message::Register { tcp, udp } = message {
            self.on_register(now_ms, from, tcp, udp, &mut actions);
            self.evaluate(now_ms, &mut actions);
            return actions;
        }
        let Some(state) = self.servers.get_mut(&from) else {
            self.counters.from_unregistered += 1;
            return actions;
        };
        state.last_heard_ms = Some(now_ms);
        match message {
            Message::Status {
                role,
                leader,
                last_term,
                last_index,
                commit_index,
                applied_index,
                leader_contact_ms,
                voters,
                learners,
            } => {
                self.status_seq += 1;
                state.status = Some(ServerStatus {
                    received_ms: now_ms,
                    seq: self.status_seq,
                    term: header.term,
                    role,
                    leader,
                    last_term,
                    last_index,
                    commit_index,
                    applied_index,
                    leader_contact_ms,
                    voters,
                    learners,
                });
                self.confirm_removals(from, &mut actions);
                // A report of lost contact may complete a majority now; waiting
                // for the next tick would add up to a heartbeat to failover.
                self.evaluate(now_ms, &mut actions);
            }
            Message::Promise {
                last_term,
                last_index,
                voters,
            } => self.on_promise(
                now_ms,
                from,
                header.term,
                Promise {
                    last_term,
                    last_index,
                    voters: voters.into_iter().collect(),
                },
                &mut actions,
            ),
            Message::Reject => self.on_reject(now_ms, header.term, &mut actions),
            _ => self.counters.unexpected += 1,
        }
        self.evaluate(now_ms, &mut actions);
        actions
    }

    /// The kernel refused a datagram to `id`'s registered UDP port: no
    /// process listens there, so `id` has crashed or is restarting. If it is
    /// the leader, an election starts now instead of after the election
    /// timeout (the timeout still covers a host or link that fails
    /// silently). Safe whatever the cause: an election never unseats a
    /// leader except by naming a newer one, which fences the old.
    pub fn unreachable(&mut self, now_ms: u64, id: ServerId) -> Vec<Action> {
        let mut actions = Vec::new();
        if self.leader() == Some(id) && self.election.is_none() {
            self.counters.leader_unreachable += 1;
            self.start_election(now_ms, &mut actions);
        }
        actions
    }

    /// `remove-server <id>`: ask the leader to take `id` out of its
    /// configuration (resent every heartbeat); the LB forgets `id` once a
    /// later Status of the leader no longer lists it.
    pub fn remove_server(&mut self, id: ServerId) -> Result<Vec<Action>, RemoveError> {
        let seq = self.status_seq;
        let state = self.servers.get_mut(&id).ok_or(RemoveError::NotFound(id))?;
        state.removal_requested_seq.get_or_insert(seq);
        let mut actions = Vec::new();
        if let Some(leader) = self.leading_leader() {
            self.send(&mut actions, leader, Message::RemoveServer { id });
        }
        Ok(actions)
    }

    /// A snapshot for `get-servers` and `stats`.
    pub fn view(&self, now_ms: u64) -> ClusterView {
        let servers = self
            .durable
            .members
            .iter()
            .map(|(id, member)| {
                let state = &self.servers[id];
                let heard_ms_ago = state.last_heard_ms.map(|at| now_ms.saturating_sub(at));
                ServerView {
                    id: *id,
                    tcp: member.tcp,
                    udp: member.udp,
                    removing: state.removal_requested_seq.is_some(),
                    last_heard_ms_ago: heard_ms_ago,
                    reachable: heard_ms_ago
                        .is_some_and(|ago| ago <= self.config.election_timeout_ms),
                    status: state.status.clone(),
                }
            })
            .collect();
        ClusterView {
            term: self.durable.term,
            leader: self.leader(),
            election_term: self.election.as_ref().map(|e| e.term),
            servers,
            counters: self.counters,
        }
    }

    /// What an LB that does not run the core (a follower of the LB group)
    /// knows: the registry as committed, with no server's status.
    pub fn registry_view(durable: &DurableState) -> ClusterView {
        ClusterView {
            term: durable.term,
            leader: durable
                .members
                .contains_key(&durable.leader)
                .then_some(durable.leader),
            election_term: None,
            servers: durable
                .members
                .iter()
                .map(|(id, member)| ServerView {
                    id: *id,
                    tcp: member.tcp,
                    udp: member.udp,
                    removing: false,
                    last_heard_ms_ago: None,
                    reachable: false,
                    status: None,
                })
                .collect(),
            counters: CoreCounters::default(),
        }
    }

    fn on_register(
        &mut self,
        now_ms: u64,
        from: ServerId,
        tcp: SocketAddr,
        udp: SocketAddr,
        actions: &mut Vec<Action>,
    ) {
        if !sendable(&tcp) || !sendable(&udp) {
            self.counters.registers_refused += 1;
            return;
        }
        let member = Member { tcp, udp };
        match self.durable.members.get(&from) {
            Some(known) if *known == member => {}
            Some(_) => {
                // A restarted server may come back on other ports; the new
                // addresses are recorded before it hears Registered.
                self.durable.members.insert(from, member);
                actions.push(Action::Persist(self.durable.clone()));
            }
            None => {
                if self.durable.members.len() >= MEMBERS_MAX {
                    self.counters.registers_refused += 1;
                    return;
                }
                self.durable.members.insert(from, member);
                self.servers.insert(from, ServerState::default());
                actions.push(Action::Persist(self.durable.clone()));
            }
        }
        if let Some(state) = self.servers.get_mut(&from) {
            state.last_heard_ms = Some(now_ms);
        }
        // Only to the address just recorded: never to where the datagram
        // came from.
        self.send(actions, from, Message::Registered);
    }

    fn on_promise(
        &mut self,
        now_ms: u64,
        from: ServerId,
        term: Term,
        promise: Promise,
        actions: &mut Vec<Action>,
    ) {
        let Some(election) = self.election.as_mut() else {
            self.counters.stale_promises += 1;
            return;
        };
        if term != election.term {
            self.counters.stale_promises += 1;
            return;
        }
        election.promises.insert(from, promise);
        self.try_decide(now_ms, actions);
    }

    /// A Reject carries a term at or above the Prepare's. Above it: the
    /// server has a term this election cannot beat, so start over above it.
    /// Equal: the server already promised this very term and the promise was
    /// lost or is on its way; restarting would only churn, and the election
    /// timeout covers the case where it never arrives.
    fn on_reject(&mut self, now_ms: u64, term: Term, actions: &mut Vec<Action>) {
        if let Some(election) = &self.election {
            if term > election.term {
                self.start_election(now_ms, actions);
            }
        }
    }

    /// Names the most up-to-date promiser once the promisers include a
    /// majority of that server's own voters (DESIGN §3 step 3).
    fn try_decide(&mut self, now_ms: u64, actions: &mut Vec<Action>) {
        let Some(election) = &self.election else {
            return;
        };
        // Largest (last term, last index); among equals the smallest id, so
        // the outcome does not depend on arrival order.
        let Some((candidate, promise)) = election.promises.iter().max_by(|(a, pa), (b, pb)| {
            (pa.last_term, pa.last_index, std::cmp::Reverse(**a)).cmp(&(
                pb.last_term,
                pb.last_index,
                std::cmp::Reverse(**b),
            ))
        }) else {
            return;
        };
        let (mut candidate, mut promise) = (*candidate, promise);
        let founding = promise.voters.is_empty();
        if founding && self.durable.founded {
            // No promiser holds a configuration, yet a group was founded.
            // Another server founding one would start a second group beside
            // the real one, whose founder may have committed writes before
            // anyone joined (found by the simulator: seeds 97 and 1239 of
            // the bootstrap runs). The founder itself may found it again:
            // with no configuration on its disk it committed nothing (its
            // configuration is its log's first entry, durable before any
            // after it), which happens when it went down before its
            // NewLeader arrived (found by the simulator with a group of
            // LBs, bootstrap seed 18: stuck for good without this).
            let founder = self.durable.founder;
            match election.promises.get(&founder) {
                Some(again) if again.voters.is_empty() => (candidate, promise) = (founder, again),
                _ => return,
            }
        }
        let voters: BTreeSet<ServerId> = if founding {
            BTreeSet::from([candidate])
        } else {
            promise.voters.clone()
        };
        let promised = voters
            .iter()
            .filter(|v| election.promises.contains_key(v))
            .count();
        if 2 * promised <= voters.len() {
            return;
        }
        let term = election.term;
        if founding {
            self.durable.founder = candidate;
        }
        self.name_leader(now_ms, term, candidate, actions);
    }

    fn name_leader(
        &mut self,
        now_ms: u64,
        term: Term,
        leader: ServerId,
        actions: &mut Vec<Action>,
    ) {
        // One leader per term, ever: every election has a term above every
        // term a leader was named in, and naming ends the election.
        assert!(term > self.last_named_term, "a second leader for {term}");
        assert_eq!(term, self.durable.term, "elections run in the LB's term");
        assert!(self.durable.members.contains_key(&leader));
        self.last_named_term = term;
        self.election = None;
        self.durable.leader = leader;
        self.durable.founded = true;
        self.leader_since_ms = now_ms;
        self.counters.leaders_named += 1;
        // Persisted so a restarted LB keeps heartbeating the same leader
        // instead of disrupting a working group with a fresh election.
        actions.push(Action::Persist(self.durable.clone()));
        self.broadcast(actions, |_| Message::NewLeader { leader });
    }

    /// Starts an election above every term seen: persist T, then Prepare(T)
    /// to every registered server.
    fn start_election(&mut self, now_ms: u64, actions: &mut Vec<Action>) {
        let highest = self
            .durable
            .term
            .max(self.seen_term)
            .max(self.last_named_term);
        let term = Term(
            highest
                .0
                .checked_add(1)
                .expect("terms are counted one per election and cannot reach u64::MAX"),
        );
        self.durable.term = term;
        self.durable.leader = ServerId::LB;
        self.election = Some(Election {
            term,
            started_ms: now_ms,
            promises: BTreeMap::new(),
        });
        self.counters.elections_started += 1;
        actions.push(Action::Persist(self.durable.clone()));
        self.broadcast(actions, |_| Message::Prepare);
    }

    /// Starts an election when one is due (DESIGN §3a "Elections").
    fn evaluate(&mut self, now_ms: u64, actions: &mut Vec<Action>) {
        if let Some(election) = &self.election {
            if now_ms >= election.started_ms + self.config.election_timeout_ms {
                self.start_election(now_ms, actions);
            }
            return;
        }
        if self.durable.members.is_empty() {
            return;
        }
        if self.election_due(now_ms) {
            self.start_election(now_ms, actions);
        }
    }

    fn election_due(&self, now_ms: u64) -> bool {
        let Some(leader) = self.leader() else {
            return true;
        };
        let timeout_ms = self.config.election_timeout_ms;
        // A new (or remembered) leader gets one election timeout to learn it
        // leads and to reach its followers before reports count against it.
        let grace_end_ms = self.leader_since_ms + timeout_ms;
        if now_ms < grace_end_ms {
            return false;
        }
        let leader_status = self.servers[&leader].status.as_ref();
        // The leader says it is not leading (it stepped down, or a higher
        // term fenced it). Only a report from after the grace counts: one
        // sent before NewLeader reached it says "follower" and means nothing.
        if let Some(status) = leader_status {
            if status.received_ms >= grace_end_ms
                && status.term >= self.durable.term
                && (status.role != Role::Leader || status.term > self.durable.term)
            {
                return true;
            }
        }
        // A majority of the leader's voters have not heard it for the
        // election timeout. The LB's own contact with the leader plays no
        // part: if only the LB is cut off, followers still hear the leader.
        let voters: BTreeSet<ServerId> = match leader_status {
            Some(status) if !status.voters.is_empty() => status.voters.iter().copied().collect(),
            Some(_) => BTreeSet::from([leader]),
            // No report from the leader yet (the LB just restarted): judge
            // against every registered server, which only makes a majority
            // harder to reach, never easier.
            None => self.durable.members.keys().copied().collect(),
        };
        let fresh_since_ms = now_ms.saturating_sub(timeout_ms).max(grace_end_ms);
        let lost = voters
            .iter()
            .filter_map(|v| self.servers.get(v)?.status.as_ref())
            .filter(|s| {
                s.received_ms >= fresh_since_ms && u64::from(s.leader_contact_ms) > timeout_ms
            })
            .count();
        2 * lost > voters.len()
    }

    fn heartbeat(&mut self, actions: &mut Vec<Action>) {
        let peers: Vec<Peer> = self
            .durable
            .members
            .iter()
            .map(|(id, m)| Peer {
                id: *id,
                tcp: m.tcp,
                udp: m.udp,
            })
            .collect();
        let leader = self.durable.leader;
        self.broadcast(actions, |_| Message::Heartbeat {
            leader,
            peers: peers.clone(),
        });
    }

    /// Prepare again to every server that has not promised, including any
    /// that registered after the election started.
    fn resend_prepares(&mut self, now_ms: u64, actions: &mut Vec<Action>) {
        let Some(election) = &self.election else {
            return;
        };
        if election.started_ms >= now_ms {
            return;
        }
        let waiting: Vec<ServerId> = self
            .durable
            .members
            .keys()
            .filter(|id| !election.promises.contains_key(id))
            .copied()
            .collect();
        for id in waiting {
            self.send(actions, id, Message::Prepare);
        }
    }

    /// The leader, if its latest Status shows it leading in the current
    /// term: only then is its configuration worth acting on.
    fn leading_leader(&self) -> Option<ServerId> {
        let leader = self.leader()?;
        let status = self.servers[&leader].status.as_ref()?;
        (status.role == Role::Leader && status.term == self.durable.term).then_some(leader)
    }

    /// AddServer for every registered server missing from the leader's
    /// configuration, RemoveServer for every one asked to go that is still
    /// in it; both resent every heartbeat until the leader's Status shows
    /// the change.
    fn drive_membership(&mut self, actions: &mut Vec<Action>) {
        let Some(leader) = self.leading_leader() else {
            return;
        };
        let status = self.servers[&leader]
            .status
            .as_ref()
            .expect("leading_leader has a status");
        let config: BTreeSet<ServerId> = status
            .voters
            .iter()
            .chain(&status.learners)
            .copied()
            .chain([leader])
            .collect();
        let mut messages = Vec::new();
        for (id, member) in &self.durable.members {
            let removing = self.servers[id].removal_requested_seq.is_some();
            if removing && config.contains(id) {
                messages.push(Message::RemoveServer { id: *id });
            } else if !removing && !config.contains(id) {
                messages.push(Message::AddServer {
                    peer: Peer {
                        id: *id,
                        tcp: member.tcp,
                        udp: member.udp,
                    },
                });
            }
        }
        for message in messages {
            self.send(actions, leader, message);
        }
    }

    /// After a Status from the leader: forget every server whose removal was
    /// asked for before this Status and which its configuration lacks.
    fn confirm_removals(&mut self, from: ServerId, actions: &mut Vec<Action>) {
        if self.leading_leader() != Some(from) {
            return;
        }
        let status = self.servers[&from].status.as_ref().expect("just recorded");
        let gone: Vec<ServerId> = self
            .servers
            .iter()
            .filter(|(id, state)| {
                state
                    .removal_requested_seq
                    .is_some_and(|seq| seq < status.seq)
                    && !status.voters.contains(id)
                    && !status.learners.contains(id)
            })
            .map(|(id, _)| *id)
            .collect();
        if gone.is_empty() {
            return;
        }
        for id in &gone {
            self.durable.members.remove(id);
            self.servers.remove(id);
            if let Some(election) = self.election.as_mut() {
                election.promises.remove(id);
            }
            if self.durable.leader == *id {
                // The leader removed itself; no leader means an election.
                self.durable.leader = ServerId::LB;
            }
        }
        actions.push(Action::Persist(self.durable.clone()));
    }

    fn broadcast(&self, actions: &mut Vec<Action>, message: impl Fn(ServerId) -> Message) {
        for id in self.durable.members.keys() {
            self.send(actions, *id, message(*id));
        }
    }

    /// The one place a `Send` is made: to `to`'s registered UDP address, in
    /// the LB's current term.
    fn send(&self, actions: &mut Vec<Action>, to: ServerId, message: Message) {
        let member = self.durable.members[&to];
        actions.push(Action::Send {
            to,
            addr: member.udp,
            term: self.durable.term,
            message,
        });
    }
}

/// An address a datagram or a client can be sent to.
fn sendable(addr: &SocketAddr) -> bool {
    addr.port() != 0 && !addr.ip().is_unspecified() && !addr.ip().is_multicast()
}

#[cfg(test)]
mod tests;
