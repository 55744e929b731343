//! One simulated server: the real replica [`Host`] (the core and
//! everything the server's driver keeps around it, the code production
//! runs) over a simulated disk, network and clock, on virtual time.
//!
//! What is simulated here, and only that ([`SimIo`]): a term is durable the
//! moment it is persisted; appended entries go to the disk's unsynced tail
//! and become durable only when their fsync completes, a separate event, so
//! a crash in between loses them; datagrams go through the world's lossy
//! links; keystore files are the real codec's bytes, in memory. Each I/O
//! call is also where the invariants are checked: persist before send,
//! acknowledge only what is durable, committed entries never change, the
//! same state at the same applied index, acknowledged writes committed.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::rc::Rc;

use bytes::{Bytes, BytesMut};
use data::command::Command;
use data::frame::{LogIndex, Message, Peer, Role, ServerId, Term};
use data::limits::ITEM_BYTES_MAX;
use data::state::{Outcome, State};
use server::replica::host::{Host, HostTypes, Io, Synced, Written};
use server::replica::snapshot_stream::{FileAt, StreamShape};
use server::replica::{
    Advertised, Durable, Membership, NotLeader, Replica, Timing, UndecodableEntry,
};
use server::write_path::CommitError;

use crate::client::{Reply, Request};
use crate::world::{
    tcp_addr, udp_addr, Event, Packet, World, ELECTION_TIMEOUT_MS, HEARTBEAT_MS, SERVER_TICK_MS,
};
use crate::Options;

/// A keystore file at `index` (of `term`): the bytes a server writes,
/// made and read by the real keystore codec, and streamed by the real
/// stream code.
#[derive(Clone, Debug)]
pub(crate) struct Image {
    pub index: LogIndex,
    pub term: Term,
    pub file: Bytes,
}

impl Image {
    fn of(state: &State, term: Term) -> Image {
        // As a keystore file: what no reader can see any more stays out.
        let items: Vec<_> = state.items().filter(|i| state.is_visible(i)).collect();
        let mut file = Vec::new();
        data::keystore::encode(
            &mut file,
            state.applied_index(),
            term.0,
            state.flush_deadline_s(),
            state.clock_s(),
            state.config(),
            items,
        )
        .expect("a state the simulator applied encodes");
        Image {
            index: LogIndex(state.applied_index()),
            term,
            file: Bytes::from(file),
        }
    }

    fn state(&self) -> State {
        let (state, _) = data::keystore::decode(&self.file[..], ITEM_BYTES_MAX)
            .expect("a keystore file the simulator wrote decodes");
        state
    }
}

/// What survives a crash, and the unsynced tail that does not.
pub(crate) struct Disk {
    /// `meta`: written before anything that depends on it.
    pub term: Term,
    /// The keystore file.
    pub snapshot: Rc<Image>,
    /// Log entries after the snapshot: (term, payload, write id).
    pub log: Vec<(Term, Bytes, u64)>,
    /// How many of `log`'s entries are fsynced.
    pub synced: usize,
    next_write_id: u64,
    /// When the fsync in progress completes (fsyncs complete in order).
    fsync_free_at: u64,
}

impl Disk {
    fn last_index(&self) -> LogIndex {
        LogIndex(self.snapshot.index.0 + self.log.len() as u64)
    }

    fn term_at(&self, index: LogIndex) -> Option<Term> {
        if index == self.snapshot.index {
            return Some(self.snapshot.term);
        }
        let offset = index.0.checked_sub(self.snapshot.index.0 + 1)?;
        self.log.get(offset as usize).map(|e| e.0)
    }
}

/// A client's read waiting on a server.
#[derive(Clone, Debug)]
pub(crate) struct PendingRead {
    client: usize,
    req: u64,
    key: Bytes,
    gets: bool,
    /// Taken by a follower (served after the leader's read index).
    on_follower: bool,
}

/// The simulator's kinds of waiter, keystore file and state under the
/// replica [`Host`].
pub(crate) struct SimTypes;

impl HostTypes for SimTypes {
    type State = State;
    /// (client, request id, payload proposed).
    type Proposal = (usize, u64, Bytes);
    type Read = PendingRead;
    type Source = Bytes;
    type Sink = Vec<u8>;
}

pub(crate) struct Server {
    pub id: u64,
    pub up: bool,
    pub incarnation: u32,
    /// The wall clock's offset (clock-jump faults): commands' times.
    pub clock_offset_ms: i64,
    /// How fast the monotonic clock runs against true time, in parts per
    /// million (a few hundred either way; leases allow 10%).
    pub clock_rate_ppm: i64,
    /// Its `--heartbeat-ms`, and so its lease and promise hold: in half the
    /// runs the servers disagree, as a misconfigured group would.
    pub heartbeat_ms: u64,
    /// Paused (not crashed) until this global time.
    pub paused_until: u64,
    pub disk: Disk,
    /// The running process: `None` while it is down (and, for a moment,
    /// while the world runs it: [`World::with_host`]).
    host: Option<Host<SimTypes>>,
    /// The last entry applied by the last incarnation.
    applied: LogIndex,
    /// Commit index reported by the current incarnation's core.
    pub commit_seen: LogIndex,
}

impl Server {
    /// A node of a group whose voters are `voters` (its data group's, or
    /// the LB group's), empty at first with `bootstrap`.
    pub fn new(id: u64, voters: Vec<u64>, bootstrap: bool, opts: &Options) -> Server {
        let config = if bootstrap {
            (Vec::new(), Vec::new())
        } else {
            (voters, Vec::new())
        };
        let mut empty = State::restore(ITEM_BYTES_MAX, 0, None, 0, std::iter::empty());
        empty.set_config(config);
        let snapshot = Image::of(&empty, Term(0));
        Server {
            id,
            up: false,
            incarnation: 0,
            clock_offset_ms: 0,
            clock_rate_ppm: clock_rate_ppm(opts.seed, id),
            heartbeat_ms: heartbeat_ms(opts.seed, id),
            paused_until: 0,
            disk: Disk {
                term: Term(0),
                snapshot: Rc::new(snapshot),
                log: Vec::new(),
                synced: 0,
                next_write_id: 1,
                fsync_free_at: 0,
            },
            host: None,
            applied: LogIndex(0),
            commit_seen: LogIndex(0),
        }
    }

    /// The core of the running process.
    pub fn core(&self) -> Option<&Replica> {
        self.host.as_ref().map(|h| h.core())
    }

    /// The last entry its state applied.
    pub fn applied(&self) -> LogIndex {
        self.host.as_ref().map_or(self.applied, |h| h.applied())
    }

    /// The value of `key` in the running process's state.
    pub fn read(&mut self, key: &[u8]) -> Option<Vec<u8>> {
        let host = self.host.as_mut()?;
        let item = host.state().get(key, 0)?;
        Some(item.data().to_vec())
    }
}

/// A hash of everything `apply` decides, to compare replicas at one index:
/// the items a reader can see (an invisible one never can be again, and a
/// replica restored from a keystore file no longer holds it) and the clock.
pub(crate) fn state_hash(state: &State) -> u64 {
    let mut items: Vec<_> = state.items().filter(|i| state.is_visible(i)).collect();
    items.sort_by(|a, b| a.key().cmp(b.key()));
    let mut h = DefaultHasher::new();
    state.applied_index().hash(&mut h);
    state.config().hash(&mut h);
    state.flush_deadline_s().hash(&mut h);
    state.clock_s().hash(&mut h);
    for item in items {
        item.key().hash(&mut h);
        item.data().hash(&mut h);
        item.flags().hash(&mut h);
        item.exptime().hash(&mut h);
        item.cas().hash(&mut h);
    }
    h.finish()
}

fn outcome_ret(outcome: Outcome) -> Option<check::Ret> {
    Some(match outcome {
        Outcome::Stored { .. } => check::Ret::Stored,
        Outcome::NotStored => check::Ret::NotStored,
        Outcome::Exists => check::Ret::Exists,
        Outcome::NotFound => check::Ret::NotFound,
        Outcome::Deleted => check::Ret::Deleted,
        Outcome::Number { value, .. } => check::Ret::Number(value),
        Outcome::NonNumeric => check::Ret::NonNumeric,
        Outcome::Touched
        | Outcome::Hits(_)
        | Outcome::Leased(_)
        | Outcome::Ok
        | Outcome::Reclaimed(_) => return None,
    })
}

impl Server {
    /// This server's monotonic clock when true time is `now`.
    pub(crate) fn mono_now(&self, now: u64) -> u64 {
        let skew = now as i64 * self.clock_rate_ppm / 1_000_000;
        now.saturating_add_signed(skew)
    }
}

/// An invariant broke: [`World::fail`] recorded it and the run stops.
#[derive(Debug)]
pub(crate) struct Violated;

impl std::fmt::Display for Violated {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("an invariant broke")
    }
}

/// One server's disk, network and clock: the world, seen from server `id`.
pub(crate) struct SimIo<'w> {
    world: &'w mut World,
    id: u64,
}

impl SimIo<'_> {
    fn server(&mut self) -> &mut Server {
        self.world.server(self.id)
    }

    fn fail(&mut self, invariant: &'static str, detail: String) -> Violated {
        self.world.fail(invariant, detail);
        Violated
    }

    fn check(&mut self, result: Result<(), crate::checker::Broken>) -> Result<(), Violated> {
        result.map_err(|(invariant, detail)| self.fail(invariant, detail))
    }

    fn reply(&mut self, client: usize, req: u64, reply: Reply) {
        self.world.reply(client, req, reply);
    }
}

impl Io<SimTypes> for SimIo<'_> {
    type Error = Violated;

    fn now_ms(&self) -> u64 {
        self.world.server_now(self.id)
    }

    fn persist_term(&mut self, term: Term) -> Result<(), Violated> {
        let id = self.id;
        let disk = &mut self.server().disk;
        if term < disk.term {
            let old = disk.term;
            return Err(self.fail(
                "term never goes down",
                format!("n{id} persisted t{term} over t{old}"),
            ));
        }
        disk.term = term;
        Ok(())
    }

    fn truncate_after(&mut self, index: LogIndex) -> Result<(), Violated> {
        let id = self.id;
        let s = self.server();
        if index < s.commit_seen {
            let commit = s.commit_seen;
            return Err(self.fail(
                "committed entries never change",
                format!("n{id} truncates after {index} but committed through {commit}"),
            ));
        }
        let keep = index.0.saturating_sub(s.disk.snapshot.index.0) as usize;
        s.disk.log.truncate(keep);
        s.disk.synced = s.disk.synced.min(keep);
        self.world
            .trace(|| format!("n{id}  truncate after {index}"));
        Ok(())
    }

    fn append(
        &mut self,
        index: LogIndex,
        term: Term,
        payload: &Bytes,
        _received: bool,
    ) -> Result<(), Violated> {
        let id = self.id;
        let disk = &mut self.server().disk;
        if index != LogIndex(disk.last_index().0 + 1) {
            let last = disk.last_index();
            return Err(self.fail(
                "driver contract",
                format!("n{id} appends {index} after {last}"),
            ));
        }
        let prev_term = disk.term_at(LogIndex(index.0 - 1));
        let write_id = disk.next_write_id;
        disk.next_write_id += 1;
        disk.log.push((term, payload.clone(), write_id));
        let (checker, _) = self.world.checker_of(id);
        let appended = checker.appended(id, index, term, prev_term, payload);
        self.check(appended)
    }

    /// The fsync completes later, after a random delay and after the one
    /// before it.
    fn sync(&mut self, through: LogIndex) -> Result<Synced, Violated> {
        let delay = self.world.rng.range(0, self.world.fsync_max_ms);
        let now = self.world.now;
        let id = self.id;
        let s = self.server();
        let write_id = s.disk.log.last().map_or(0, |e| e.2);
        let at = s.disk.fsync_free_at.max(now + delay);
        s.disk.fsync_free_at = at;
        let incarnation = s.incarnation;
        self.world.schedule(
            at,
            Event::Fsync {
                id,
                incarnation,
                index: through,
                write_id,
            },
        );
        Ok(Synced::Later)
    }

    fn send(
        &mut self,
        to: ServerId,
        _addr: std::net::SocketAddr,
        term: Term,
        message: Message,
    ) -> Result<(), Violated> {
        let id = self.id;
        let disk = &self.server().disk;
        let on_disk = disk.term;
        if term > on_disk {
            return Err(self.fail(
                "persist before send",
                format!("n{id} sent in t{term} with t{on_disk} on disk"),
            ));
        }
        // DESIGN §4: a follower acknowledges only what it fsynced.
        let durable = LogIndex(disk.snapshot.index.0 + disk.synced as u64);
        if let Message::Ack { match_index, .. } = &message {
            if *match_index > durable {
                let m = *match_index;
                return Err(self.fail(
                    "ack only what is durable",
                    format!("n{id} acks {m} with {durable} fsynced"),
                ));
            }
        }
        self.world.send(id, to.0, Packet::Frame { term, message });
        Ok(())
    }

    /// Checks the entries committed against every commit seen anywhere.
    fn committed(&mut self, core: &Replica, index: LogIndex) -> Result<(), Violated> {
        let id = self.id;
        let from = self.server().commit_seen;
        if index < from {
            return Err(self.fail(
                "commit index never goes down",
                format!("n{id} commit {index} after {from}"),
            ));
        }
        let leader_term = (core.role() == Role::Leader).then(|| core.term());
        let term_now = core.term();
        self.world
            .trace(|| format!("n{id}  commit through {index} (t{term_now})"));
        self.server().commit_seen = index;
        for i in from.0 + 1..=index.0 {
            let i = LogIndex(i);
            let (Some(term), Some(payload)) = (core.term_at(i), core.entry(i)) else {
                continue;
            };
            let commit_term = leader_term.unwrap_or(term_now);
            let (checker, group) = self.world.checker_of(id);
            let committed = checker.committed(id, i, term, payload, commit_term, group);
            self.check(committed)?;
        }
        Ok(())
    }

    fn applied(&mut self, index: LogIndex, state: &State) -> Result<(), Violated> {
        let id = self.id;
        let (checker, _) = self.world.checker_of(id);
        let applied = checker.applied(id, index, state_hash(state));
        self.check(applied)
    }

    fn undecodable(&mut self, error: UndecodableEntry) -> Violated {
        let id = self.id;
        self.fail("entries decode", format!("n{id} {error}"))
    }

    fn answer_proposal(
        &mut self,
        (client, req, proposed): (usize, u64, Bytes),
        answer: Result<Written, CommitError>,
    ) -> Result<(), Violated> {
        if client == crate::lb_group::REGISTRY_WRITER {
            // An LB's registry write (`lb_group`): its driver goes on, or
            // stops acting, once the event is handled.
            let committed = answer.is_ok_and(|w| w.payload == proposed);
            let id = self.id;
            let incarnation = self.server().incarnation;
            let now = self.world.now;
            self.world.schedule(
                now,
                Event::LbPersisted {
                    id,
                    incarnation,
                    write: req,
                    committed,
                },
            );
            return Ok(());
        }
        let written = match answer {
            Ok(written) => written,
            // The entry at our index is another leader's, or the log after
            // it was dropped.
            Err(_) => {
                self.reply(client, req, Reply::Unknown);
                return Ok(());
            }
        };
        let Written {
            index,
            term,
            payload,
            outcome,
        } = written;
        if payload != proposed {
            let id = self.id;
            return Err(self.fail(
                "driver contract",
                format!("n{id} entry {index} of t{term} is not what was proposed"),
            ));
        }
        let acked = self.world.checker.acked(index, term, &payload);
        self.check(acked)?;
        self.world.writes_acked += 1;
        let reply = match outcome_ret(outcome) {
            Some(ret) => Reply::Done(ret),
            None => Reply::Unknown,
        };
        self.reply(client, req, reply);
        Ok(())
    }

    fn answer_read(
        &mut self,
        read: PendingRead,
        answer: Result<(), CommitError>,
        state: &mut State,
    ) {
        match answer {
            Ok(()) => self.world.answer_read(self.id, state, read),
            Err(_) => self.reply(read.client, read.req, Reply::NotLeader(None)),
        }
    }

    fn open_keystore(&mut self) -> Option<(FileAt, Bytes)> {
        let image = self.server().disk.snapshot.clone();
        if image.index.0 == 0 {
            return None;
        }
        let at = FileAt {
            index: image.index,
            term: image.term,
            total: image.file.len() as u64,
        };
        Some((at, image.file.clone()))
    }

    fn create_incoming(&mut self) -> std::io::Result<Vec<u8>> {
        Ok(Vec::new())
    }

    fn install(
        &mut self,
        at: FileAt,
        file: Vec<u8>,
        keep_log_after: bool,
    ) -> Result<Option<State>, Violated> {
        let id = self.id;
        let state = match data::keystore::decode(&file[..], ITEM_BYTES_MAX) {
            Ok((state, _)) => state,
            Err(error) => {
                self.world
                    .trace(|| format!("n{id}  received keystore does not decode: {error}"));
                return Ok(None);
            }
        };
        let disk = &mut self.server().disk;
        if keep_log_after {
            let drop = (at.index.0 - disk.snapshot.index.0) as usize;
            disk.log.drain(..drop.min(disk.log.len()));
            disk.synced = disk.synced.saturating_sub(drop);
        } else {
            disk.log.clear();
            disk.synced = 0;
        }
        disk.snapshot = Rc::new(Image {
            index: at.index,
            term: at.term,
            file: Bytes::from(file),
        });
        let index = at.index;
        self.world
            .trace(|| format!("n{id}  installed keystore through {index}"));
        Ok(Some(state))
    }

    /// Only a broken invariant (already recorded) fails a stream here.
    fn stream_failed(&mut self, _error: &dyn std::fmt::Display) {}

    /// Writes a keystore file at the applied index once enough was applied
    /// since the last, and drops the log it covers (as the driver's
    /// keystore schedule does, at once).
    fn end_of_turn(
        &mut self,
        core: &mut Replica,
        state: &mut State,
        applied: LogIndex,
        _receiving: bool,
    ) -> Result<(), Violated> {
        let Some(every) = self.world.compact_every else {
            return Ok(());
        };
        let id = self.id;
        let disk = &mut self.server().disk;
        if applied.0 < disk.snapshot.index.0 + every {
            return Ok(());
        }
        let Some(term) = core.term_at(applied) else {
            return Ok(());
        };
        let image = Image::of(state, term);
        let dropped = (image.index.0 - disk.snapshot.index.0) as usize;
        let dropped = dropped.min(disk.log.len());
        disk.log.drain(..dropped);
        disk.synced = disk.synced.saturating_sub(dropped);
        let index = image.index;
        disk.snapshot = Rc::new(image);
        core.compact(index, term);
        self.world
            .trace(|| format!("n{id}  keystore written through {index}, log compacted"));
        Ok(())
    }
}

impl World {
    fn server(&mut self, id: u64) -> &mut Server {
        &mut self.servers[id as usize - 1]
    }

    /// The server's monotonic clock, which its core runs on (as the real
    /// driver's): no jumps, a rate a little off true time.
    pub(crate) fn server_now(&self, id: u64) -> u64 {
        self.servers[id as usize - 1].mono_now(self.now)
    }

    /// The server's wall clock, which jumps: commands' times and expiry.
    fn server_wall(&self, id: u64) -> u64 {
        self.now
            .saturating_add_signed(self.servers[id as usize - 1].clock_offset_ms)
    }

    /// Runs `f` on server `id`'s host with the world as its I/O, then lets
    /// it carry out what the core decided; nothing if the server is down.
    /// The host is out of the server meanwhile (the checker's look at every
    /// core skips this one, which is not a later leader of anything it
    /// commits).
    pub(crate) fn with_host(
        &mut self,
        id: u64,
        f: impl FnOnce(&mut Host<SimTypes>, &mut SimIo) -> Result<(), Violated>,
    ) {
        let Some(mut host) = self.server(id).host.take() else {
            return;
        };
        let mut io = SimIo { world: self, id };
        // A violation is recorded in the world; the run stops after this
        // step.
        let _ = f(&mut host, &mut io).and_then(|()| host.process(&mut io));
        self.server(id).host = Some(host);
    }

    /// Starts (or restarts) a server from what its disk holds.
    pub(crate) fn boot_server(&mut self, id: u64) {
        self.rejoin_at.remove(&id);
        let jitter = self.rng.next_u64();
        let bugs = self.opts.bugs;
        let shape = stream_shape(self.opts.seed);
        let now = self.server_now(id);
        // By vote: every member, as a static `--peers` list (an LB of the
        // LB group always; a data server with `--by-vote`).
        let lb_member = self.is_lb_member(id);
        let members: Vec<u64> = if lb_member {
            self.lb_member_ids().collect()
        } else {
            (1..=self.opts.servers as u64).collect()
        };
        let by_vote_members: Option<Vec<Peer>> = (self.opts.by_vote || lb_member).then(|| {
            members
                .iter()
                .map(|peer| Peer {
                    id: ServerId(*peer),
                    tcp: tcp_addr(*peer),
                    udp: udp_addr(*peer),
                })
                .collect()
        });
        // By vote there is no LB to register with. With a group of LBs,
        // what the core sends to the LB goes to each (`World::send`).
        let lb = (!self.opts.by_vote && !lb_member).then(|| udp_addr(0));
        let s = self.server(id);
        let state = s.disk.snapshot.state();
        let durable = Durable {
            term: s.disk.term,
            snapshot_index: s.disk.snapshot.index,
            snapshot_term: s.disk.snapshot.term,
            entries: s.disk.log.iter().map(|(t, p, _)| (*t, p.clone())).collect(),
            snapshot_membership: Membership::of(state.config()),
        };
        let timing = Timing::new(s.heartbeat_ms, ELECTION_TIMEOUT_MS);
        let mut core = Replica::new(ServerId(id), timing, durable, jitter, now);
        core.set_bugs(bugs.replica);
        if let Some(members) = by_vote_members {
            core.elect_by_vote(now, &members);
        }
        s.commit_seen = core.commit_index();
        let applied = s.disk.snapshot.index;
        let mut host = Host::new(core, lb, state, applied, shape);
        host.receiver_mut().bug_frame_term_as_snapshot_term = bugs.frame_term_as_snapshot_term;
        s.host = Some(host);
        s.up = true;
        s.incarnation += 1;
        s.disk.fsync_free_at = 0;
        let incarnation = s.incarnation;
        let (last, synced) = (s.disk.last_index(), s.disk.synced);
        self.trace(|| {
            format!("n{id}  start (incarnation {incarnation}), log through {last}, {synced} synced")
        });
        let at = self.now + self.rng.range(1, SERVER_TICK_MS);
        self.schedule(at, Event::ServerTick { id, incarnation });
    }

    /// Kills a server: everything not fsynced is gone.
    pub(crate) fn crash_server(&mut self, id: u64) {
        let s = self.server(id);
        s.up = false;
        s.paused_until = 0;
        if let Some(host) = s.host.take() {
            s.applied = host.applied();
        }
        let lost = s.disk.log.len() - s.disk.synced;
        s.disk.log.truncate(s.disk.synced);
        s.incarnation += 1;
        self.trace(|| format!("n{id}  CRASH, {lost} unsynced entries lost"));
        if self.is_lb_member(id) {
            self.lb_member_crashed(id);
        }
    }

    pub(crate) fn server_tick(&mut self, id: u64, incarnation: u32) {
        let s = &self.servers[id as usize - 1];
        if s.incarnation != incarnation || !s.up {
            return;
        }
        let advertised = Advertised {
            tcp: tcp_addr(id),
            udp: udp_addr(id),
        };
        self.with_host(id, |host, io| {
            host.tick(io, advertised, ELECTION_TIMEOUT_MS, HEARTBEAT_MS);
            Ok(())
        });
        self.schedule(
            self.now + SERVER_TICK_MS,
            Event::ServerTick { id, incarnation },
        );
    }

    pub(crate) fn server_deliver(&mut self, id: u64, from: u64, packet: Packet) {
        if !self.servers[id as usize - 1].up {
            return;
        }
        let line = crate::world::short(&packet);
        self.trace(|| format!("recv {from}->{id} {line}"));
        let (from, term, message) = match packet {
            Packet::Frame { term, message } => (ServerId(from), term, message),
            // An LB of the group speaks as "the LB", as a real LB does.
            Packet::FromLb { term, message } => (ServerId::LB, term, message),
            Packet::ToLb { .. } => unreachable!("frames to an LB go to its driver"),
        };
        self.with_host(id, |host, io| {
            host.receive(io, from, term, message);
            Ok(())
        });
    }

    pub(crate) fn server_fsync(
        &mut self,
        id: u64,
        incarnation: u32,
        index: LogIndex,
        write_id: u64,
    ) {
        let now = self.server_now(id);
        let s = self.server(id);
        if s.incarnation != incarnation || !s.up {
            return;
        }
        // Only if the entry written then is still there (not truncated and
        // rewritten meanwhile): then everything before it is synced too.
        let Some(offset) = index.0.checked_sub(s.disk.snapshot.index.0 + 1) else {
            return;
        };
        if s.disk.log.get(offset as usize).map(|e| e.2) != Some(write_id) {
            return;
        }
        s.disk.synced = s.disk.synced.max(offset as usize + 1);
        self.with_host(id, |host, _| {
            host.persisted(now, index);
            Ok(())
        });
    }

    pub(crate) fn server_request(&mut self, id: u64, client: usize, req: u64, request: Request) {
        if !self.servers[id as usize - 1].up {
            return;
        }
        let now = self.server_now(id);
        let read_without_read_index = self.opts.bugs.read_without_read_index;
        let time_s = self.server_wall(id) / 1000;
        self.with_host(id, |host, io| {
            match request {
                Request::Write { op, .. } => {
                    let command = Command {
                        time_s,
                        op,
                        unique: None,
                    };
                    let mut payload = BytesMut::with_capacity(command.encoded_len());
                    command.encode(&mut payload);
                    let payload = payload.freeze();
                    match host.propose(payload.clone(), (client, req, payload)) {
                        Ok(index) => {
                            let term = host.core().term();
                            io.world.trace(|| {
                                format!("n{id}  proposed c{client}/{req} at {index} in t{term}")
                            });
                        }
                        Err((refused, _)) => io.reply(client, req, refusal(refused)),
                    }
                }
                Request::Read { key, gets } => {
                    // As the real connection: the leader answers at once
                    // under its lease (or always, with the deliberate bug);
                    // otherwise the leader after a round, a follower after
                    // the leader's read index (`Host::read`).
                    let core = host.core();
                    let leads = core.role() == Role::Leader;
                    let read = PendingRead {
                        client,
                        req,
                        key: Bytes::from(key),
                        gets,
                        on_follower: !leads,
                    };
                    let at_once = leads && (core.lease_until_ms() > now || read_without_read_index);
                    if at_once {
                        io.world.answer_read(id, host.state(), read);
                    } else if let Err((refused, read)) = host.read(now, read) {
                        io.reply(read.client, read.req, refusal(refused));
                    }
                }
            }
            Ok(())
        });
    }

    /// Answers a read from server `id`'s state.
    fn answer_read(&mut self, id: u64, state: &State, read: PendingRead) {
        let now_s = self.server_wall(id) / 1000;
        let ret = match state.get(&read.key, now_s) {
            None => check::Ret::Miss,
            Some(item) if read.gets => check::Ret::HitCas {
                value: item.data().to_vec(),
                unique: item.cas(),
            },
            Some(item) => check::Ret::Hit(item.data().to_vec()),
        };
        let applied = state.applied_index();
        self.follower_reads += u64::from(read.on_follower);
        self.trace(|| {
            format!(
                "n{id}  read c{}/{} at applied {applied}: {ret}",
                read.client, read.req
            )
        });
        self.reply(read.client, read.req, Reply::Done(ret));
    }

    /// Sends a reply to a client over its link.
    pub(crate) fn reply(&mut self, client: usize, req: u64, reply: Reply) {
        if let Some(delay) = self.client_link() {
            self.schedule(self.now + delay, Event::Reply { client, req, reply });
        }
    }
}

/// A refused request's answer, with the leader's id when known.
fn refusal(refused: NotLeader) -> Reply {
    match refused {
        NotLeader::Follower(leader) => Reply::NotLeader(leader),
        NotLeader::NotReady => Reply::NotLeader(None),
    }
}

/// A server's clock rate, from the seed and its id (not drawn from the
/// run's random stream, so adding it changed no other draw): within
/// ±500 ppm.
fn clock_rate_ppm(seed: u64, id: u64) -> i64 {
    (mix(seed, id) >> 33) as i64 % 1001 - 500
}

/// A server's heartbeat setting, from the seed and its id like the clock
/// rate: the default for every server in even runs; in odd runs half, the
/// default or one and a half times it, per server.
fn heartbeat_ms(seed: u64, id: u64) -> u64 {
    if seed.is_multiple_of(2) {
        return HEARTBEAT_MS;
    }
    match (mix(seed, id) >> 40) % 3 {
        0 => HEARTBEAT_MS / 2,
        1 => HEARTBEAT_MS,
        _ => HEARTBEAT_MS * 3 / 2,
    }
}

/// How a run's servers cut keystore streams, from the seed like the clock
/// rate: small chunks (8 to 135 bytes) and windows (1 to 8 chunks), so the
/// simulator's keystores of a few hundred bytes take many chunks and
/// windows, lost, duplicated and reordered on the way.
fn stream_shape(seed: u64) -> StreamShape {
    let bits = mix(seed, 0xC4A7);
    StreamShape {
        chunk_bytes: 8 + (bits >> 20) % 128,
        window_chunks: 1 + (bits >> 40) % 8,
    }
}

/// A value drawn from the seed and `salt`, outside the run's random
/// stream: what a run adds this way leaves every other draw as it was.
pub(crate) fn seeded(seed: u64, salt: u64) -> u64 {
    mix(seed, salt) >> 16
}

fn mix(seed: u64, id: u64) -> u64 {
    (seed ^ id.wrapping_mul(0x9E37_79B9_7F4A_7C15)).wrapping_mul(0xBF58_476D_1CE4_E5B9)
}
