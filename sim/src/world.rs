//! The simulated world: one event queue on virtual time, the network, the
//! LB and its driver, the fault scheduler, and the run's end (liveness,
//! linearizability). Servers and clients live in `server` and `client`.
//!
//! Every event is processed to completion, then the invariants are checked
//! (`checker`). Randomness comes only from the run's [`Rng`]; ties in time
//! are broken by the order events were scheduled.

use std::cmp::Ordering;
use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use std::hash::Hasher;
use std::net::SocketAddr;

use data::frame::{ClusterId, GroupId, Header, LogIndex, Message, ServerId, Term};
use lb::core::{Action as LbAction, Core, CoreConfig};
use lb::registry::DurableState;

use crate::checker::Checker;
use crate::client::{Client, Reply, Request};
use crate::node::Server;
use crate::rng::Rng;
use crate::{Options, Report, Violation};

/// Virtual time at the start: far from 0, so `now / 1000` is a plausible
/// Unix second and nothing underflows.
pub(crate) const START_MS: u64 = 1_000_000;
/// How often each server's driver ticks its core (as `server::driver`).
pub(crate) const SERVER_TICK_MS: u64 = 10;
/// How often the LB's driver ticks its core.
const LB_TICK_MS: u64 = 10;
/// LB and replica timing (DESIGN §3: 100 ms heartbeats, 1 s timeout).
pub(crate) const HEARTBEAT_MS: u64 = 100;
pub(crate) const ELECTION_TIMEOUT_MS: u64 = 1_000;
/// The linearizability search's steps per key at most: a key with many
/// writes of unknown outcome can take exponential time; past this the
/// verdict is "unknown" (counted, not a failure).
const CHECK_STEPS_MAX: u64 = 100_000;
/// Events one run may process at most; more means something spins.
const STEPS_MAX: u64 = 1_000_000;

/// Something sent over the simulated network.
#[derive(Clone, Debug)]
pub(crate) enum Packet {
    /// A control or replication frame (`data::frame::Message`).
    Frame {
        term: Term,
        message: Message,
    },
    /// With a group of LBs: a data server's frame to "the LB", for one
    /// LB's driver, and an LB's frame to a data server, from "the LB".
    ToLb {
        term: Term,
        message: Message,
    },
    FromLb {
        term: Term,
        message: Message,
    },
}

#[derive(Debug)]
pub(crate) enum Event {
    Deliver {
        from: u64,
        to: u64,
        packet: Packet,
    },
    ServerTick {
        id: u64,
        incarnation: u32,
    },
    LbTick {
        incarnation: u32,
    },
    Fsync {
        id: u64,
        incarnation: u32,
        index: LogIndex,
        write_id: u64,
    },
    Request {
        server: u64,
        client: usize,
        req: u64,
        request: Request,
    },
    Reply {
        client: usize,
        req: u64,
        reply: Reply,
    },
    ClientWake {
        client: usize,
    },
    ClientTimeout {
        client: usize,
        req: u64,
    },
    /// An event for a paused server, held until it resumes: lost if the
    /// process dies meanwhile (its socket buffers and connections with it).
    Held {
        incarnation: u32,
        event: Box<Event>,
    },
    Fault,
    RestartServer {
        id: u64,
    },
    RestartLb,
    /// An LB's registry write (`lb_group`) was committed, or not.
    LbPersisted {
        id: u64,
        incarnation: u32,
        write: u64,
        committed: bool,
    },
    EndFaults,
}

struct Scheduled {
    at: u64,
    seq: u64,
    event: Event,
}

impl PartialEq for Scheduled {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Scheduled {
    /// Reversed: the heap pops the earliest, then the first scheduled.
    fn cmp(&self, other: &Self) -> Ordering {
        (other.at, other.seq).cmp(&(self.at, self.seq))
    }
}

/// Network behaviour, changed by faults.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Net {
    pub loss_ppm: u64,
    pub dup_ppm: u64,
    /// Chance that a packet gets an extra delay, which reorders it.
    pub reorder_ppm: u64,
    pub delay_min_ms: u64,
    pub delay_max_ms: u64,
}

impl Net {
    const CALM: Net = Net {
        loss_ppm: 0,
        dup_ppm: 0,
        reorder_ppm: 0,
        delay_min_ms: 1,
        delay_max_ms: 3,
    };
}

/// The LB process: its core while up, and what it persisted.
pub(crate) struct Lb {
    pub core: Option<Core>,
    pub durable: DurableState,
    pub incarnation: u32,
    pub clock_offset_ms: i64,
}

pub(crate) struct World {
    pub opts: Options,
    pub rng: Rng,
    /// Global virtual time in ms (the "real" time clients' history uses).
    pub now: u64,
    seq: u64,
    queue: BinaryHeap<Scheduled>,
    pub servers: Vec<Server>,
    pub lb: Lb,
    pub clients: Vec<Client>,
    pub net: Net,
    /// Directed links that drop everything: (from, to), 0 is the LB.
    pub blocked: BTreeSet<(u64, u64)>,
    /// Servers the operator removed whose removal the LB has not finished
    /// (forgotten them): out of the group.
    pub removed: BTreeSet<u64>,
    /// Removed servers the operator stopped once the LB forgot them, and
    /// when it starts them again to rejoin (not sooner: a frame the LB sent
    /// before it forgot them may still be on its way).
    pub rejoin_at: BTreeMap<u64, u64>,
    /// LB nodes out of the LB group for good (with `opts.lb_changes`):
    /// spares not added yet, and LBs removed (a removed LB stops itself).
    pub lb_retired: BTreeSet<u64>,
    pub faults_on: bool,
    pub end_ms: u64,
    pub clients_stop_ms: u64,
    pub checker: Checker,
    /// The LB group's replicas' invariants (with `opts.lbs`).
    pub lb_checker: Checker,
    /// Each LB's driver (with `opts.lbs`), and every data term's issuer.
    pub lb_members: BTreeMap<u64, crate::lb_group::LbMember>,
    pub issued_terms: crate::lb_group::IssuedTerms,
    pub history: Vec<check::Op>,
    pub violation: Option<Violation>,
    pub steps: u64,
    trace_hasher: Option<DefaultHasher>,
    pub crashes: u64,
    pub writes_acked: usize,
    /// Reads a follower served.
    pub follower_reads: u64,
    /// Per seed: chance weights of each fault kind and the mean gap.
    fault_weights: [u64; 10],
    fault_gap_max_ms: u64,
    /// Per seed: keystore snapshot every this many applied entries.
    pub compact_every: Option<u64>,
    pub fsync_max_ms: u64,
    pub keys: u64,
}

pub(crate) fn udp_addr(id: u64) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 10_000 + id as u16))
}

pub(crate) fn tcp_addr(id: u64) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 20_000 + id as u16))
}

impl World {
    pub fn new(opts: Options) -> World {
        assert!(
            opts.servers == 3 || opts.servers == 5,
            "3 or 5 servers, not {}",
            opts.servers
        );
        assert!(
            !(opts.by_vote && opts.bootstrap),
            "a group that elects by vote starts configured"
        );
        assert!(
            opts.lbs == 0 || ((opts.lbs == 3 || opts.lbs == 5) && !opts.by_vote),
            "0, 3 or 5 LBs, and not by vote"
        );
        let mut rng = Rng::new(opts.seed);
        let n = opts.servers as u64;
        let lbs = n + 1..=n + opts.lbs as u64;
        let mut servers: Vec<Server> = (1..=n)
            .map(|id| Server::new(id, (1..=n).collect(), opts.bootstrap, &opts))
            .collect();
        servers.extend(
            lbs.clone()
                .map(|id| Server::new(id, lbs.clone().collect(), false, &opts)),
        );
        // Spares for add-lb: an empty state whose configuration is the
        // founders' (the same state every founder starts from, which the
        // checker compares), none of them this one: a learner that never
        // stands until its leader adds it, as `store addlb --join` starts.
        let spares = n + opts.lbs as u64 + 1..=n + (opts.lbs + lb_spares(&opts)) as u64;
        servers.extend(
            spares
                .clone()
                .map(|id| Server::new(id, lbs.clone().collect(), false, &opts)),
        );
        let clients_n = rng.range(2, 4) as usize;
        let clients = (0..clients_n).map(|c| Client::new(c, n)).collect();
        let fault_weights = [
            rng.range(0, 2), // pause a server
            rng.range(1, 4), // crash a server
            rng.range(0, 3), // symmetric partition
            rng.range(0, 2), // one-way cuts
            rng.range(1, 3), // heal
            rng.range(0, 2), // LB crash
            rng.range(0, 2), // clock jump
            rng.range(0, 2), // network change
            // Remove a server (`remove-server`), from the seed rather than
            // the run's stream, so a seed where it is 0 (a third, or all
            // without the option) replays as it did before this fault.
            if opts.remove_server {
                crate::node::seeded(opts.seed, 0x5E4A) % 3
            } else {
                0
            },
            // add-lb or remove-lb, from the seed too (off: as before).
            if opts.lb_changes {
                1 + crate::node::seeded(opts.seed, 0x1B5C) % 2
            } else {
                0
            },
        ];
        let mut fault_weights = fault_weights;
        if opts.by_vote {
            // No LB: its crash becomes the leader cut off (as often as the
            // LB's three faults together), and no removals.
            fault_weights[5] = fault_weights[5].max(1);
            fault_weights[8] = 0;
        }
        let compact_every = match rng.below(3) {
            0 => None,
            1 => Some(20),
            _ => Some(60),
        };
        let net = Net {
            loss_ppm: rng.range(0, 50_000),
            dup_ppm: rng.range(0, 20_000),
            reorder_ppm: rng.range(0, 50_000),
            delay_min_ms: 1,
            delay_max_ms: rng.range(2, 8),
        };
        let fault_gap_max_ms = rng.range(300, 2_000);
        let fsync_max_ms = rng.range(1, 15);
        let keys = rng.range(2, 5);
        let end_ms = START_MS + opts.faults_ms + opts.settle_ms;
        let mut world = World {
            checker: Checker::new(opts.servers),
            lb_checker: Checker::new(opts.lbs + lb_spares(&opts)),
            lb_members: BTreeMap::new(),
            issued_terms: BTreeMap::new(),
            trace_hasher: opts.trace_hash.then(DefaultHasher::new),
            opts,
            rng,
            now: START_MS,
            seq: 0,
            queue: BinaryHeap::new(),
            servers,
            lb: Lb {
                core: None,
                durable: DurableState::default(),
                incarnation: 0,
                clock_offset_ms: 0,
            },
            clients,
            net,
            blocked: BTreeSet::new(),
            removed: BTreeSet::new(),
            rejoin_at: BTreeMap::new(),
            lb_retired: spares.collect(),
            faults_on: true,
            end_ms,
            clients_stop_ms: end_ms - 2_500,
            history: Vec::new(),
            violation: None,
            steps: 0,
            crashes: 0,
            follower_reads: 0,
            writes_acked: 0,
            fault_weights,
            fault_gap_max_ms,
            compact_every,
            fsync_max_ms,
            keys,
        };
        let setup = format!(
            "seed {} servers {} clients {} keys {} compact {:?} fsync<={}ms net {:?} faults {:?} gap<={}ms",
            world.opts.seed,
            world.opts.servers,
            world.clients.len(),
            world.keys,
            world.compact_every,
            world.fsync_max_ms,
            world.net,
            world.fault_weights,
            world.fault_gap_max_ms
        );
        world.trace(|| setup);
        if !world.opts.by_vote && world.opts.lbs == 0 {
            world.start_lb();
        }
        for id in 1..=world.nodes() {
            if !world.lb_retired.contains(&id) {
                world.boot_server(id);
            }
        }
        for c in 0..world.clients.len() {
            let at = START_MS + world.rng.range(0, 1_500);
            world.schedule(at, Event::ClientWake { client: c });
        }
        let first_fault = START_MS + world.rng.range(500, 2_000);
        world.schedule(first_fault, Event::Fault);
        world.schedule(START_MS + world.opts.faults_ms, Event::EndFaults);
        world
    }

    pub fn run(mut self) -> Report {
        while let Some(next) = self.queue.pop() {
            if next.at > self.end_ms {
                break;
            }
            self.now = next.at;
            self.steps += 1;
            if self.steps > STEPS_MAX {
                self.fail("step budget", format!("more than {STEPS_MAX} steps"));
                break;
            }
            self.handle(next.event);
            if self.violation.is_none() {
                self.check_step();
            }
            if self.violation.is_some() {
                break;
            }
        }
        if self.violation.is_none() {
            self.now = self.end_ms;
            self.finish();
        }
        self.report()
    }

    fn report(&mut self) -> Report {
        if let Some(v) = &self.violation {
            let line = format!("VIOLATION {}: {}", v.invariant, v.detail);
            self.trace(|| line);
        }
        let ops_completed = self.history.iter().filter(|o| !o.is_pending()).count();
        Report {
            seed: self.opts.seed,
            violation: self.violation.clone(),
            steps: self.steps,
            ops: self.history.len(),
            ops_completed,
            writes_acked: self.writes_acked,
            entries_committed: self.checker.committed_len(),
            leaders: self.checker.leaders_len(),
            crashes: self.crashes,
            follower_reads: self.follower_reads,
            check_unknown: self.checker.check_unknown,
            trace_hash: self.trace_hasher.as_ref().map_or(0, |h| h.finish()),
        }
    }

    pub fn schedule(&mut self, at: u64, event: Event) {
        self.seq += 1;
        self.queue.push(Scheduled {
            at,
            seq: self.seq,
            event,
        });
    }

    /// Records a line of the trace: printed with `--trace`, hashed for the
    /// determinism test, not even formatted otherwise.
    pub fn trace(&mut self, line: impl FnOnce() -> String) {
        if !self.opts.trace && self.trace_hasher.is_none() {
            return;
        }
        let line = format!("{:>8} #{:<7} {}", self.now - START_MS, self.steps, line());
        if self.opts.trace {
            println!("{line}");
        }
        if let Some(h) = self.trace_hasher.as_mut() {
            h.write(line.as_bytes());
            h.write_u8(b'\n');
        }
    }

    /// Records the first violation; the run stops after this step.
    pub fn fail(&mut self, invariant: &'static str, detail: String) {
        if self.violation.is_none() {
            self.violation = Some(Violation {
                invariant,
                detail,
                time_ms: self.now - START_MS,
                step: self.steps,
            });
        }
    }

    /// The server an event is for, if any.
    fn target(event: &Event) -> Option<u64> {
        match event {
            Event::Deliver { to, .. } if *to != 0 => Some(*to),
            Event::ServerTick { id, .. }
            | Event::Fsync { id, .. }
            | Event::LbPersisted { id, .. } => Some(*id),
            Event::Request { server, .. } => Some(*server),
            Event::Held { event, .. } => Self::target(event),
            _ => None,
        }
    }

    fn handle(&mut self, event: Event) {
        // A paused process (SIGSTOP, a long GC) handles nothing until it
        // resumes; then what queued up is handled in a shuffled order, as
        // tokio's `select!` picks among ready branches at random.
        if let Some(id) = Self::target(&event) {
            let s = &self.servers[id as usize - 1];
            if let Event::Held { incarnation, .. } = &event {
                if *incarnation != s.incarnation {
                    return;
                }
            }
            let paused_until = s.paused_until;
            if paused_until > self.now {
                let event = match event {
                    Event::Held { .. } => event,
                    other => Event::Held {
                        incarnation: s.incarnation,
                        event: Box::new(other),
                    },
                };
                let at = paused_until + self.rng.range(0, 5);
                self.schedule(at, event);
                return;
            }
        }
        match event {
            Event::Held { event, .. } => self.handle(*event),
            Event::Deliver { from, to, packet } => match packet {
                Packet::ToLb { term, message } => self.lb_member_deliver(to, from, term, message),
                packet if to == 0 => self.lb_deliver(from, packet),
                packet => self.server_deliver(to, from, packet),
            },
            Event::ServerTick { id, incarnation } => {
                self.server_tick(id, incarnation);
                if self.is_lb_member(id) && self.servers[id as usize - 1].incarnation == incarnation
                {
                    self.lb_member_tick(id);
                }
            }
            Event::LbPersisted {
                id,
                incarnation,
                write,
                committed,
            } => self.lb_persisted(id, incarnation, write, committed),
            Event::LbTick { incarnation } => self.lb_tick(incarnation),
            Event::Fsync {
                id,
                incarnation,
                index,
                write_id,
            } => self.server_fsync(id, incarnation, index, write_id),
            Event::Request {
                server,
                client,
                req,
                request,
            } => self.server_request(server, client, req, request),
            Event::Reply { client, req, reply } => self.client_reply(client, req, reply),
            Event::ClientWake { client } => self.client_wake(client),
            Event::ClientTimeout { client, req } => self.client_timeout(client, req),
            Event::Fault => self.fault(),
            Event::RestartServer { id } => {
                if !self.servers[id as usize - 1].up && !self.waits_to_rejoin(id) {
                    self.boot_server(id);
                }
            }
            Event::RestartLb => {
                if self.lb.core.is_none() {
                    self.start_lb();
                }
            }
            Event::EndFaults => self.end_faults(),
        }
    }

    // ---- the nodes ----

    /// Data servers and LBs of the LB group: ids 1 to this.
    pub(crate) fn nodes(&self) -> u64 {
        (self.opts.servers + self.opts.lbs + lb_spares(&self.opts)) as u64
    }

    /// The LB group's members (none with one LB process).
    pub(crate) fn lb_member_ids(&self) -> std::ops::RangeInclusive<u64> {
        self.opts.servers as u64 + 1..=self.nodes()
    }

    pub(crate) fn is_lb_member(&self, id: u64) -> bool {
        id > self.opts.servers as u64
    }

    /// The checker of node `id`'s group, and that group's nodes.
    pub(crate) fn checker_of(&mut self, id: u64) -> (&mut Checker, &[Server]) {
        let n = self.opts.servers;
        if self.is_lb_member(id) {
            (&mut self.lb_checker, &self.servers[n..])
        } else {
            (&mut self.checker, &self.servers[..n])
        }
    }

    // ---- the network ----

    /// Sends a packet from node `from` to node `to` (0 is the LB; with a
    /// group of LBs, each of them).
    pub fn send(&mut self, from: u64, to: u64, packet: Packet) {
        if to == 0 && self.opts.lbs > 0 {
            let Packet::Frame { term, message } = packet else {
                unreachable!("only a data server's frames go to the LB");
            };
            for lb in self.lb_member_ids() {
                let message = message.clone();
                self.send(from, lb, Packet::ToLb { term, message });
            }
            return;
        }
        if self.blocked.contains(&(from, to)) {
            self.trace(|| format!("cut  {from}->{to} {}", short(&packet)));
            return;
        }
        if self.rng.chance(self.net.loss_ppm) {
            self.trace(|| format!("lost {from}->{to} {}", short(&packet)));
            return;
        }
        let copies = if self.rng.chance(self.net.dup_ppm) {
            2
        } else {
            1
        };
        for _ in 0..copies {
            let mut delay = self.rng.range(self.net.delay_min_ms, self.net.delay_max_ms);
            if self.rng.chance(self.net.reorder_ppm) {
                delay += self.rng.range(1, 200);
            }
            let packet = packet.clone();
            self.schedule(self.now + delay, Event::Deliver { from, to, packet });
        }
    }

    /// A delay on a client's link to a server (clients are not partitioned;
    /// their packets are lost with the network's loss rate).
    pub fn client_link(&mut self) -> Option<u64> {
        if self.rng.chance(self.net.loss_ppm) {
            return None;
        }
        Some(self.rng.range(self.net.delay_min_ms, self.net.delay_max_ms))
    }

    // ---- the LB and its driver (lb::driver's duties) ----

    fn lb_now(&self) -> u64 {
        self.now.saturating_add_signed(self.lb.clock_offset_ms)
    }

    pub(crate) fn lb_config() -> CoreConfig {
        CoreConfig {
            heartbeat_ms: HEARTBEAT_MS,
            election_timeout_ms: ELECTION_TIMEOUT_MS,
        }
    }

    fn start_lb(&mut self) {
        let now = self.lb_now();
        self.lb.core = Some(Core::new(Self::lb_config(), self.lb.durable.clone(), now));
        self.lb.incarnation += 1;
        let incarnation = self.lb.incarnation;
        self.trace(|| format!("lb   start (incarnation {incarnation})"));
        self.schedule(self.now + 1, Event::LbTick { incarnation });
    }

    fn crash_lb(&mut self) {
        if self.lb.core.take().is_none() {
            return;
        }
        self.lb.incarnation += 1;
        self.trace(|| "lb   CRASH".to_string());
        let at = self.now + self.rng.range(100, 3_000);
        self.schedule(at, Event::RestartLb);
    }

    /// The LB is told the leader's port refused a datagram while the leader
    /// lives (a firewall's REJECT rule between them), so it starts an
    /// election at once, while the leader may still hold a read lease.
    fn leader_refused(&mut self) {
        if self.opts.lbs > 0 {
            let Some(id) = self.acting_lb() else {
                return;
            };
            let now = self.server_now(id);
            let Some(core) = self.acting_core() else {
                return;
            };
            let Some(leader) = core.leader() else {
                return;
            };
            let actions = core.unreachable(now, leader);
            self.trace(|| format!("FAULT lb{id} told n{} refused a datagram", leader.0));
            self.lb_member_actions(id, actions.into());
            return;
        }
        let now = self.lb_now();
        let Some(leader) = self.lb.core.as_ref().and_then(|core| core.leader()) else {
            return;
        };
        self.trace(|| format!("FAULT lb told n{} refused a datagram", leader.0));
        let actions = self
            .lb
            .core
            .as_mut()
            .map(|core| core.unreachable(now, leader))
            .unwrap_or_default();
        self.lb_actions(actions);
    }

    /// The leader loses every link to the LB and the other servers (its
    /// clients still reach it), and the LB hears of it at once: the fastest
    /// way a new leader can be named while the old one, unaware, may still
    /// hold a read lease. Every lease bug shows here first.
    fn leader_cut_off(&mut self) {
        let Some(leader) = self.leader_now() else {
            return;
        };
        for other in 0..=self.nodes() {
            if other != leader.0 {
                self.blocked.insert((leader.0, other));
                self.blocked.insert((other, leader.0));
            }
        }
        self.trace(|| format!("FAULT n{} cut off from the LB and its peers", leader.0));
        self.leader_refused();
    }

    /// The LB acting for the group loses its links to the other LBs, and
    /// only those: the data servers still hear it while the other LBs
    /// elect another. Every bug of acting on an uncommitted registry shows
    /// here first.
    fn acting_lb_cut_from_lbs(&mut self) {
        let Some(id) = self.acting_lb() else {
            return;
        };
        for other in self.lb_member_ids() {
            if other != id {
                self.blocked.insert((id, other));
                self.blocked.insert((other, id));
            }
        }
        self.trace(|| format!("FAULT lb{id} cut off from the other LBs"));
    }

    /// By vote: the link between the leader and one follower goes, both
    /// ways. The follower stands while the others still hear the leader
    /// and may still vouch for its lease: every vote-during-lease bug shows
    /// here first.
    fn leader_cut_from_one(&mut self) {
        let Some(leader) = self.leader_now() else {
            return;
        };
        let n = self.opts.servers as u64;
        let follower = (leader.0 + self.rng.range(1, n - 1) - 1) % n + 1;
        self.blocked.insert((leader.0, follower));
        self.blocked.insert((follower, leader.0));
        self.trace(|| format!("FAULT n{} cut from n{follower}", leader.0));
    }

    /// The leader the LB names; by vote, the serving leader of the highest
    /// term.
    fn leader_now(&self) -> Option<ServerId> {
        if self.opts.lbs > 0 {
            let id = self.acting_lb()?;
            return self.lb_members.get(&id)?.core.as_ref()?.leader();
        }
        if !self.opts.by_vote {
            return self.lb.core.as_ref().and_then(|core| core.leader());
        }
        self.servers
            .iter()
            .filter_map(|s| s.core().filter(|c| c.is_serving()))
            .max_by_key(|c| c.term())
            .map(|c| c.id())
    }

    fn lb_tick(&mut self, incarnation: u32) {
        if incarnation != self.lb.incarnation {
            return;
        }
        let now = self.lb_now();
        let Some(core) = self.lb.core.as_mut() else {
            return;
        };
        let actions = core.tick(now);
        self.lb_actions(actions);
        self.rejoin_removed();
        self.schedule(self.now + LB_TICK_MS, Event::LbTick { incarnation });
    }

    fn lb_deliver(&mut self, from: u64, packet: Packet) {
        let Packet::Frame { term, message } = packet else {
            unreachable!("the LB alone gets plain frames");
        };
        if self.lb.core.is_none() {
            return;
        }
        let now = self.lb_now();
        self.trace(|| format!("recv {from}->lb t{term} {message:?}"));
        let header = to_lb_header(from, term);
        let actions = self
            .lb
            .core
            .as_mut()
            .map(|core| core.receive(now, &header, message))
            .unwrap_or_default();
        self.lb_actions(actions);
    }

    /// The LB driver's one rule: a Persist is durable before any later Send.
    fn lb_actions(&mut self, actions: Vec<LbAction>) {
        for action in actions {
            match action {
                LbAction::Persist(state) => {
                    if state.term < self.lb.durable.term {
                        self.fail(
                            "term never goes down",
                            format!(
                                "LB persisted term {} after {}",
                                state.term, self.lb.durable.term
                            ),
                        );
                    }
                    self.trace(|| {
                        format!("lb   persist term {} leader {}", state.term, state.leader)
                    });
                    self.lb.durable = state;
                }
                LbAction::Send {
                    to, term, message, ..
                } => {
                    if term > self.lb.durable.term {
                        self.fail(
                            "persist before send",
                            format!(
                                "LB sent in term {term} with {} on disk",
                                self.lb.durable.term
                            ),
                        );
                    }
                    self.send(0, to.0, Packet::Frame { term, message });
                }
            }
        }
    }

    /// The operator stops a removed server once the LB forgot it (its
    /// removal done) and starts it again a little later, so it registers
    /// anew and the leader adds it back.
    pub(crate) fn rejoin_removed(&mut self) {
        let members = if self.opts.lbs > 0 {
            match self.acting_registry() {
                Some(registry) => &registry.members,
                None => return,
            }
        } else {
            &self.lb.durable.members
        };
        let done: Vec<u64> = self
            .removed
            .iter()
            .filter(|id| !members.contains_key(&ServerId(**id)))
            .copied()
            .collect();
        for id in done {
            self.removed.remove(&id);
            if self.servers[id as usize - 1].up {
                self.crash_server(id);
            }
            let at = self.now + self.rng.range(200, 2_000);
            self.trace(|| format!("n{id}  removed; stopped, to rejoin at {at}"));
            self.rejoin_at.insert(id, at);
            self.schedule(at, Event::RestartServer { id });
        }
    }

    /// A removed server stopped to rejoin later is not started sooner.
    fn waits_to_rejoin(&self, id: u64) -> bool {
        self.rejoin_at.get(&id).is_some_and(|at| self.now < *at) || self.lb_retired.contains(&id)
    }

    // ---- faults ----

    fn fault(&mut self) {
        if !self.faults_on {
            return;
        }
        // With a group of LBs, its members are nodes like the servers:
        // paused, crashed, cut and their clocks jumped alike.
        let n = self.nodes();
        match self.rng.weighted(&self.fault_weights) {
            0 => {
                let id = self.rng.range(1, n);
                let pause_ms = self.rng.range(200, 3_000);
                let until = self.now + pause_ms;
                let s = &mut self.servers[id as usize - 1];
                if s.up {
                    s.paused_until = until;
                    self.trace(|| format!("FAULT pause n{id} for {pause_ms} ms"));
                }
            }
            1 => {
                let id = self.rng.range(1, n);
                if self.servers[id as usize - 1].up {
                    self.crash_server(id);
                    self.crashes += 1;
                    let at = self.now + self.rng.range(50, 3_000);
                    self.schedule(at, Event::RestartServer { id });
                }
            }
            2 => {
                // Split the LB and the servers into two sides.
                self.blocked.clear();
                let mut side = Vec::new();
                for _ in 0..=n {
                    side.push(self.rng.below(2) == 0);
                }
                for a in 0..=n {
                    for b in 0..=n {
                        if side[a as usize] != side[b as usize] {
                            self.blocked.insert((a, b));
                        }
                    }
                }
                let blocked = self.blocked.clone();
                self.trace(|| format!("FAULT partition {side:?} ({} links cut)", blocked.len()));
            }
            3 => {
                // Node 0 is the LB alone; a group's LBs are nodes.
                let first = if self.opts.lbs > 0 { 1 } else { 0 };
                for _ in 0..self.rng.range(1, 3) {
                    let a = self.rng.range(first, n);
                    let b = self.rng.range(first, n);
                    if a != b {
                        self.blocked.insert((a, b));
                        self.trace(|| format!("FAULT one-way cut {a}->{b}"));
                    }
                }
            }
            4 => {
                self.blocked.clear();
                self.trace(|| "FAULT heal".to_string());
            }
            5 if self.opts.by_vote => {
                if self.rng.below(2) == 0 {
                    self.leader_cut_off();
                } else {
                    self.leader_cut_from_one();
                }
            }
            5 if self.opts.lbs > 0 => match self.rng.below(4) {
                0 => {
                    if let Some(id) = self.acting_lb() {
                        self.crash_server(id);
                        self.crashes += 1;
                        let at = self.now + self.rng.range(100, 3_000);
                        self.schedule(at, Event::RestartServer { id });
                    }
                }
                1 => self.leader_refused(),
                2 => self.leader_cut_off(),
                _ => self.acting_lb_cut_from_lbs(),
            },
            5 => match self.rng.below(3) {
                0 => {
                    self.crash_lb();
                    self.crashes += 1;
                }
                1 => self.leader_refused(),
                _ => self.leader_cut_off(),
            },
            6 => {
                let first = if self.opts.lbs > 0 { 1 } else { 0 };
                let node = self.rng.range(first, n);
                let jump = self.rng.range(0, 4_000) as i64 - 1_000;
                if node == 0 {
                    self.lb.clock_offset_ms += jump;
                } else {
                    self.servers[node as usize - 1].clock_offset_ms += jump;
                }
                self.trace(|| format!("FAULT clock jump on {node}: {jump:+} ms"));
            }
            8 => self.remove_server(),
            9 => self.lb_group_change(),
            _ => {
                self.net = Net {
                    loss_ppm: self.rng.range(0, 200_000),
                    dup_ppm: self.rng.range(0, 100_000),
                    reorder_ppm: self.rng.range(0, 200_000),
                    delay_min_ms: 1,
                    delay_max_ms: self.rng.range(2, 30),
                };
                let net = self.net;
                self.trace(|| format!("FAULT network {net:?}"));
            }
        }
        let at = self.now + self.rng.range(50, self.fault_gap_max_ms);
        self.schedule(at, Event::Fault);
    }

    /// The operator asks the LB to remove a server (`remove-server`); in
    /// half the cases also stops it, and starts it again later with its
    /// disk. Once the LB forgot it, the operator starts it again (or it
    /// starts then), and it registers anew and the leader adds it back.
    fn remove_server(&mut self) {
        let id = self.rng.range(1, self.opts.servers as u64);
        let stop = self.rng.below(2) == 0;
        if self.opts.lbs > 0 {
            if !self.lb_group_remove(ServerId(id)) {
                return;
            }
            self.trace(|| format!("FAULT remove-server n{id}"));
        } else {
            let Some(core) = self.lb.core.as_mut() else {
                return;
            };
            let Ok(actions) = core.remove_server(ServerId(id)) else {
                return;
            };
            self.trace(|| format!("FAULT remove-server n{id}"));
            self.lb_actions(actions);
        }
        if stop && self.servers[id as usize - 1].up {
            self.crash_server(id);
            self.crashes += 1;
            let at = self.now + self.rng.range(500, 3_000);
            self.schedule(at, Event::RestartServer { id });
        }
        self.removed.insert(id);
    }

    /// The faults stop: links heal, everything restarts, the network calms.
    fn end_faults(&mut self) {
        self.faults_on = false;
        self.blocked.clear();
        self.net = Net::CALM;
        self.trace(|| "END OF FAULTS: heal, restart all, calm network".to_string());
        if self.lb.core.is_none() && !self.opts.by_vote && self.opts.lbs == 0 {
            self.start_lb();
        }
        for id in 1..=self.nodes() {
            if !self.servers[id as usize - 1].up && !self.waits_to_rejoin(id) {
                self.boot_server(id);
            }
        }
    }

    // ---- the end of a run ----

    fn finish(&mut self) {
        // Pending ops: their outcome is unknown.
        for c in 0..self.clients.len() {
            if let Some(op) = self.clients[c].inflight.take() {
                if op.is_write() {
                    self.history.push(check::Op::pending(
                        check::ClientId(c as u32),
                        op.key,
                        op.call,
                        op.invoked_ns,
                    ));
                }
            }
        }
        self.check_liveness();
        if self.violation.is_some() {
            return;
        }
        let history = match check::History::new(std::mem::take(&mut self.history)) {
            Ok(h) => h,
            Err(e) => {
                self.fail("well-formed history", e.to_string());
                return;
            }
        };
        let limits = check::Limits {
            search_steps_max: CHECK_STEPS_MAX,
            ..check::Limits::DEFAULT
        };
        match check::check_with(&history, &limits).verdict {
            check::Verdict::Linearizable => {}
            check::Verdict::Unknown { .. } => self.checker.check_unknown = true,
            check::Verdict::NotLinearizable { witness, .. } => {
                self.fail("linearizable", witness.explanation);
            }
        }
        self.history = history.ops().to_vec();
    }

    /// After the quiet period: one leader serves and every server has
    /// applied everything it committed, but for a server the operator
    /// removed that has not rejoined, once the configuration no longer has
    /// it.
    fn check_liveness(&mut self) {
        if self.opts.lbs > 0 {
            self.check_lb_liveness();
            if self.violation.is_some() {
                return;
            }
        }
        let data = &self.servers[..self.opts.servers];
        let serving: Vec<u64> = data
            .iter()
            .filter(|s| s.core().is_some_and(|c| c.is_serving()))
            .map(|s| s.id)
            .collect();
        let [leader] = serving[..] else {
            self.fail(
                "liveness",
                format!(
                    "after {} ms without faults, serving leaders: {serving:?}",
                    self.opts.settle_ms
                ),
            );
            return;
        };
        let Some(core) = self.servers[leader as usize - 1].core() else {
            return;
        };
        let commit = core.commit_index();
        let members = core.membership();
        let out = |id: u64| {
            let id = ServerId(id);
            !members.voters.contains(&id) && !members.learners.contains(&id)
        };
        let lagging: Vec<(u64, u64)> = self.servers[..self.opts.servers]
            .iter()
            // Removed and not yet back: still being removed, or stopped
            // by the operator until a rejoin that may fall after the run's
            // end (a removal that completes late in the quiet period).
            .filter(|s| {
                let away = self.removed.contains(&s.id) || self.waits_to_rejoin(s.id);
                !(away && out(s.id))
            })
            .filter(|s| s.applied() != commit)
            .map(|s| (s.id, s.applied().0))
            .collect();
        if !lagging.is_empty() {
            self.fail(
                "liveness",
                format!("leader {leader} committed {commit}; (server, applied) behind or ahead: {lagging:?}"),
            );
        }
    }

    fn check_step(&mut self) {
        let n = self.opts.servers;
        let mut result = self.checker.after_step(&self.servers[..n], self.now);
        if result.is_ok() && self.opts.lbs > 0 {
            result = self.lb_checker.after_step(&self.servers[n..], self.now);
        }
        if let Err((invariant, detail)) = result {
            self.fail(invariant, detail);
        }
    }
}

/// Spare LB nodes the run has: only to add with `opts.lb_changes`.
fn lb_spares(opts: &Options) -> usize {
    if opts.lb_changes && opts.lbs > 0 {
        crate::LB_SPARES
    } else {
        0
    }
}

/// The header of a frame from data server `from` to the LB.
pub(crate) fn to_lb_header(from: u64, term: Term) -> Header {
    Header {
        cluster: ClusterId(1),
        group: GroupId::FIRST,
        from: ServerId(from),
        to: ServerId::LB,
        term,
    }
}

/// A packet's one-line summary for the trace.
pub(crate) fn short(packet: &Packet) -> String {
    match packet {
        Packet::Frame { term, message }
        | Packet::ToLb { term, message }
        | Packet::FromLb { term, message } => match message {
            Message::Append {
                seq,
                prev_index,
                prev_term,
                commit,
                entries,
            } => format!(
                "t{term} Append seq {seq} prev {prev_index}/{prev_term} commit {commit} entries {:?}",
                entries.iter().map(|e| e.term.0).collect::<Vec<_>>()
            ),
            Message::Heartbeat { leader, .. } => format!("t{term} Heartbeat leader {leader}"),
            Message::SnapshotChunk {
                snapshot_index,
                offset,
                bytes,
                ..
            } => format!(
                "t{term} SnapshotChunk {snapshot_index} {offset}+{}",
                bytes.len()
            ),
            other => format!("t{term} {other:?}"),
        },
    }
}
