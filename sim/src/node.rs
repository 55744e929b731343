//! One simulated server: the real [`Replica`] core and a driver that does
//! what `server::driver` does, on virtual time.
//!
//! The driver carries out the core's actions in order: a term is durable
//! the moment it is persisted (the real driver writes `meta` before going
//! on), appended entries go to the disk's unsynced tail and become durable
//! only when their fsync completes (a separate event, so a crash in between
//! loses them), and only then does the core hear [`Replica::persisted`].
//! Committed entries are applied to a real [`State`]; a proposal is
//! answered when its index is applied and still holds an entry of the
//! proposal's term; a ReadIndex read is answered once the state has applied
//! the read's index: both decided by [`Waiters`], the code the real driver
//! runs. Keystore files are the real codec's bytes, in memory; they are
//! streamed to a follower behind the compacted log by the real stream code
//! (`server::replica::snapshot_stream`), in small chunks.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::rc::Rc;

use bytes::{Bytes, BytesMut};
use data::command::Command;
use data::frame::{LogIndex, Message, Role, ServerId, Term};
use data::limits::ITEM_BYTES_MAX;
use data::state::{Outcome, State};
use server::replica::snapshot_stream::{
    whole_file_ack, Chunk, FileAt, Outgoing, Received, Receiver, Senders, StreamShape,
};
use server::replica::{
    Action, Advertised, Applied, Durable, LbLink, Membership, NotLeader, Replica, Timing, Waiters,
};

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

fn membership_of(state: &State) -> Membership {
    let config = state.config();
    Membership {
        voters: config.0.iter().map(|id| ServerId(*id)).collect(),
        learners: config.1.iter().map(|id| ServerId(*id)).collect(),
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
    pub core: Option<Replica>,
    pub state: State,
    pub applied: LogIndex,
    /// Proposals (client, request id, payload) and reads waiting, kept by
    /// the same code the real driver keeps them with.
    waiters: Waiters<(usize, u64, Bytes), PendingRead>,
    /// Registration and silence reports, as the real driver keeps them.
    lb_link: LbLink,
    /// Keystore streams, both ends, by the real driver's code.
    senders: Senders<Bytes>,
    receiver: Receiver<Vec<u8>>,
    /// Commit index reported by the current incarnation's core.
    pub commit_seen: LogIndex,
}

impl Server {
    pub fn new(id: u64, servers: u64, opts: &Options) -> Server {
        let config = if opts.bootstrap {
            (Vec::new(), Vec::new())
        } else {
            ((1..=servers).collect(), Vec::new())
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
            state: snapshot.state(),
            disk: Disk {
                term: Term(0),
                snapshot: Rc::new(snapshot),
                log: Vec::new(),
                synced: 0,
                next_write_id: 1,
                fsync_free_at: 0,
            },
            core: None,
            applied: LogIndex(0),
            waiters: Waiters::default(),
            lb_link: LbLink::default(),
            senders: Senders::new(stream_shape(opts.seed)),
            receiver: Receiver::default(),
            commit_seen: LogIndex(0),
        }
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
        Outcome::Stored => check::Ret::Stored,
        Outcome::NotStored => check::Ret::NotStored,
        Outcome::Exists => check::Ret::Exists,
        Outcome::NotFound => check::Ret::NotFound,
        Outcome::Deleted => check::Ret::Deleted,
        Outcome::Number(n) => check::Ret::Number(n),
        Outcome::NonNumeric => check::Ret::NonNumeric,
        Outcome::Touched | Outcome::Hits(_) | Outcome::Ok | Outcome::Reclaimed(_) => return None,
    })
}

impl Server {
    /// This server's monotonic clock when true time is `now`.
    pub(crate) fn mono_now(&self, now: u64) -> u64 {
        let skew = now as i64 * self.clock_rate_ppm / 1_000_000;
        now.saturating_add_signed(skew)
    }
}

impl World {
    fn server(&mut self, id: u64) -> &mut Server {
        &mut self.servers[id as usize - 1]
    }

    /// The server's monotonic clock, which its core runs on (as the real
    /// driver's): no jumps, a rate a little off true time.
    fn server_now(&self, id: u64) -> u64 {
        self.servers[id as usize - 1].mono_now(self.now)
    }

    /// The server's wall clock, which jumps: commands' times and expiry.
    fn server_wall(&self, id: u64) -> u64 {
        self.now
            .saturating_add_signed(self.servers[id as usize - 1].clock_offset_ms)
    }

    /// Starts (or restarts) a server from what its disk holds.
    pub(crate) fn boot_server(&mut self, id: u64) {
        self.rejoin_at.remove(&id);
        let jitter = self.rng.next_u64();
        let bugs = self.opts.bugs;
        let shape = stream_shape(self.opts.seed);
        let now = self.server_now(id);
        let s = self.server(id);
        let state = s.disk.snapshot.state();
        let durable = Durable {
            term: s.disk.term,
            snapshot_index: s.disk.snapshot.index,
            snapshot_term: s.disk.snapshot.term,
            entries: s.disk.log.iter().map(|(t, p, _)| (*t, p.clone())).collect(),
            snapshot_membership: membership_of(&state),
        };
        let timing = Timing::new(s.heartbeat_ms, ELECTION_TIMEOUT_MS);
        let mut core = Replica::new(ServerId(id), timing, durable, jitter, now);
        core.set_bugs(bugs.replica);
        core.set_lb_addr(udp_addr(0));
        s.state = state;
        s.applied = s.disk.snapshot.index;
        s.commit_seen = core.commit_index();
        s.core = Some(core);
        s.up = true;
        s.incarnation += 1;
        s.waiters = Waiters::default();
        s.lb_link = LbLink::default();
        s.senders = Senders::new(shape);
        s.receiver = Receiver::default();
        s.receiver.bug_frame_term_as_snapshot_term = bugs.frame_term_as_snapshot_term;
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
        s.core = None;
        let lost = s.disk.log.len() - s.disk.synced;
        s.disk.log.truncate(s.disk.synced);
        s.incarnation += 1;
        self.trace(|| format!("n{id}  CRASH, {lost} unsynced entries lost"));
    }

    pub(crate) fn server_tick(&mut self, id: u64, incarnation: u32) {
        if self.servers[id as usize - 1].incarnation != incarnation
            || !self.servers[id as usize - 1].up
        {
            return;
        }
        let now = self.server_now(id);
        let s = self.server(id);
        let Some(core) = s.core.as_mut() else {
            return;
        };
        core.tick(now);
        // As the real driver: stalled keystore streams resend first.
        let out = s.senders.tick(core, now);
        self.send_stream(id, out);
        let s = self.server(id);
        let Some(core) = s.core.as_mut() else {
            return;
        };
        let advertised = Advertised {
            tcp: tcp_addr(id),
            udp: udp_addr(id),
        };
        let to_lb = s.lb_link.on_tick(
            core,
            now,
            s.applied,
            ELECTION_TIMEOUT_MS,
            HEARTBEAT_MS,
            advertised,
        );
        let term = core.term();
        for message in to_lb {
            self.send(id, 0, Packet::Frame { term, message });
        }
        self.process_actions(id);
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
        let now = self.server_now(id);
        let Packet::Frame { term, message } = packet;
        let message = match Chunk::of(ServerId(from), term, message) {
            Ok(chunk) => {
                self.on_snapshot_chunk(id, now, chunk);
                self.process_actions(id);
                return;
            }
            Err(message) => message,
        };
        match message {
            Message::SnapshotAck {
                snapshot_index,
                offset,
            } => {
                let s = self.server(id);
                let Some(core) = s.core.as_mut() else {
                    return;
                };
                let out = s
                    .senders
                    .acked(core, now, ServerId(from), term, snapshot_index, offset);
                self.send_stream(id, out);
            }
            message => {
                let s = self.server(id);
                let is_lb_heartbeat = s.lb_link.received(ServerId(from), &message);
                let Some(core) = s.core.as_mut() else {
                    return;
                };
                core.receive(now, ServerId(from), term, message);
                if is_lb_heartbeat {
                    // The real driver answers before carrying out the
                    // heartbeat's actions; so does this one.
                    let status = core.status(now, s.applied);
                    let term = core.term();
                    self.send(
                        id,
                        0,
                        Packet::Frame {
                            term,
                            message: status,
                        },
                    );
                }
            }
        }
        self.process_actions(id);
    }

    /// Sends what the keystore stream asked for, in the current term.
    fn send_stream(&mut self, id: u64, out: Vec<Outgoing>) {
        let Some(term) = self.server(id).core.as_ref().map(|c| c.term()) else {
            return;
        };
        for Outgoing { to, message, .. } in out {
            self.send(id, to.0, Packet::Frame { term, message });
        }
    }

    /// Follower: a chunk of the leader's keystore file, received by the
    /// real stream code into memory.
    fn on_snapshot_chunk(&mut self, id: u64, now: u64, chunk: Chunk) {
        let s = self.server(id);
        let Some(core) = s.core.as_mut() else {
            return;
        };
        let received = s
            .receiver
            .chunk(core, now, s.applied, chunk, || Ok(Vec::new()))
            .expect("memory takes every chunk");
        let ack = match received {
            Received::Nothing => None,
            Received::Ack(ack) => Some(ack),
            Received::Whole { from, file, sink } => {
                let installed = self.install_snapshot(id, file, sink);
                let core = self.server(id).core.as_ref();
                core.and_then(|core| whole_file_ack(core, from, file, installed))
            }
        };
        self.send_stream(id, ack.into_iter().collect());
    }

    /// Follower: the whole keystore file arrived; installs it as the real
    /// driver does. False if it does not decode.
    fn install_snapshot(&mut self, id: u64, at: FileAt, file: Vec<u8>) -> bool {
        let state = match data::keystore::decode(&file[..], ITEM_BYTES_MAX) {
            Ok((state, _)) => state,
            Err(error) => {
                self.trace(|| format!("n{id}  received keystore does not decode: {error}"));
                return false;
            }
        };
        let s = self.server(id);
        let Some(core) = s.core.as_mut() else {
            return false;
        };
        // As the real driver: keep the log after the snapshot when the
        // log holds the snapshot's last entry (Raft §7), else drop it.
        if core.keeps_log_after_snapshot(at.index, at.term) {
            let drop = (at.index.0 - s.disk.snapshot.index.0) as usize;
            s.disk.log.drain(..drop.min(s.disk.log.len()));
            s.disk.synced = s.disk.synced.saturating_sub(drop);
        } else {
            s.disk.log.clear();
            s.disk.synced = 0;
        }
        let membership = membership_of(&state);
        s.disk.snapshot = Rc::new(Image {
            index: at.index,
            term: at.term,
            file: Bytes::from(file),
        });
        s.state = state;
        s.applied = at.index;
        core.install_snapshot(at.index, at.term, membership);
        let hash = state_hash(&s.state);
        let index = at.index;
        self.trace(|| format!("n{id}  installed keystore through {index}"));
        if let Err((invariant, detail)) = self.checker.applied(id, index, hash) {
            self.fail(invariant, detail);
        }
        true
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
        if let Some(core) = s.core.as_mut() {
            core.persisted(now, index);
        }
        self.process_actions(id);
    }

    pub(crate) fn server_request(&mut self, id: u64, client: usize, req: u64, request: Request) {
        if !self.servers[id as usize - 1].up {
            return;
        }
        let now = self.server_now(id);
        let read_without_read_index = self.opts.bugs.read_without_read_index;
        match request {
            Request::Write { op, .. } => {
                let command = Command {
                    time_s: self.server_wall(id) / 1000,
                    op,
                };
                let mut payload = BytesMut::with_capacity(command.encoded_len());
                command.encode(&mut payload);
                let payload = payload.freeze();
                let s = self.server(id);
                let Some(core) = s.core.as_mut() else {
                    return;
                };
                match s
                    .waiters
                    .propose(core, payload.clone(), (client, req, payload))
                {
                    Ok(index) => {
                        let term = core.term();
                        self.trace(|| {
                            format!("n{id}  proposed c{client}/{req} at {index} in t{term}")
                        });
                    }
                    Err((refused, _)) => {
                        let hint = match refused {
                            NotLeader::Follower(leader) => leader,
                            NotLeader::NotReady => None,
                        };
                        self.reply(id, client, req, Reply::NotLeader(hint));
                    }
                }
            }
            Request::Read { key, gets } => {
                let read = PendingRead {
                    client,
                    req,
                    key: Bytes::from(key),
                    gets,
                };
                // As the real connection: the leader answers at once under
                // its lease (or always, with the deliberate bug).
                let at_once = self.server(id).core.as_ref().is_some_and(|c| {
                    c.lease_until_ms() > now
                        || (read_without_read_index && c.role() == Role::Leader)
                });
                if at_once {
                    self.answer_read(id, read);
                } else {
                    self.start_read(id, now, read);
                }
            }
        }
        self.process_actions(id);
    }

    fn start_read(&mut self, id: u64, now: u64, read: PendingRead) {
        let s = self.server(id);
        let Some(core) = s.core.as_mut() else {
            return;
        };
        if let Err((refused, read)) = s.waiters.read(core, now, read) {
            let hint = match refused {
                NotLeader::Follower(leader) => leader,
                NotLeader::NotReady => None,
            };
            self.reply(id, read.client, read.req, Reply::NotLeader(hint));
        }
    }

    fn retry_held_reads(&mut self, id: u64) {
        let now = self.server_now(id);
        let s = self.server(id);
        let Some(core) = s.core.as_mut() else {
            return;
        };
        for read in s.waiters.retry_held_reads(core, now) {
            self.reply(id, read.client, read.req, Reply::NotLeader(None));
        }
    }

    fn answer_read(&mut self, id: u64, read: PendingRead) {
        let now_s = self.server_wall(id) / 1000;
        let s = self.server(id);
        let ret = match s.state.get(&read.key, now_s) {
            None => check::Ret::Miss,
            Some(item) if read.gets => check::Ret::HitCas {
                value: item.data().to_vec(),
                unique: item.cas(),
            },
            Some(item) => check::Ret::Hit(item.data().to_vec()),
        };
        let applied = s.applied;
        self.trace(|| {
            format!(
                "n{id}  read c{}/{} at applied {applied}: {ret}",
                read.client, read.req
            )
        });
        self.reply(id, read.client, read.req, Reply::Done(ret));
    }

    /// Sends a reply to a client over its link.
    pub(crate) fn reply(&mut self, id: u64, client: usize, req: u64, reply: Reply) {
        let _ = id;
        if let Some(delay) = self.client_link() {
            self.schedule(self.now + delay, Event::Reply { client, req, reply });
        }
    }

    /// Carries out the core's actions in order until it has nothing more.
    fn process_actions(&mut self, id: u64) {
        loop {
            self.retry_held_reads(id);
            // As the real driver: Appends, read rounds and Acks go out after
            // the event that brought writes, reads or Appends in.
            let now = self.server_now(id);
            if let Some(core) = self.server(id).core.as_mut() {
                core.flush(now);
            }
            let actions = match self.server(id).core.as_mut() {
                Some(core) => core.take_actions(),
                None => return,
            };
            if actions.is_empty() {
                break;
            }
            let mut appended: Option<(LogIndex, u64)> = None;
            for action in actions {
                self.server_action(id, action, &mut appended);
                if self.violation.is_some() {
                    return;
                }
            }
            if let Some((index, write_id)) = appended {
                let delay = self.rng.range(0, self.fsync_max_ms);
                let now = self.now;
                let s = self.server(id);
                let at = s.disk.fsync_free_at.max(now + delay);
                s.disk.fsync_free_at = at;
                let incarnation = s.incarnation;
                self.schedule(
                    at,
                    Event::Fsync {
                        id,
                        incarnation,
                        index,
                        write_id,
                    },
                );
            }
        }
        self.answer_reads(id);
        self.maybe_compact(id);
    }

    fn server_action(&mut self, id: u64, action: Action, appended: &mut Option<(LogIndex, u64)>) {
        match action {
            Action::PersistTerm(term) => {
                let s = self.server(id);
                if term < s.disk.term {
                    let old = s.disk.term;
                    self.fail(
                        "term never goes down",
                        format!("n{id} persisted t{term} over t{old}"),
                    );
                    return;
                }
                s.disk.term = term;
            }
            Action::TruncateAfter(index) => {
                let s = self.server(id);
                if index < s.commit_seen {
                    let commit = s.commit_seen;
                    self.fail(
                        "committed entries never change",
                        format!("n{id} truncates after {index} but committed through {commit}"),
                    );
                    return;
                }
                let keep = index.0.saturating_sub(s.disk.snapshot.index.0) as usize;
                s.disk.log.truncate(keep);
                s.disk.synced = s.disk.synced.min(keep);
                self.trace(|| format!("n{id}  truncate after {index}"));
                self.fail_proposals_after(id, index);
            }
            Action::Append(entries) => {
                for (index, term, payload) in entries {
                    let s = self.server(id);
                    if index != LogIndex(s.disk.last_index().0 + 1) {
                        let last = s.disk.last_index();
                        self.fail(
                            "driver contract",
                            format!("n{id} appends {index} after {last}"),
                        );
                        return;
                    }
                    let prev_term = s.disk.term_at(LogIndex(index.0 - 1));
                    let write_id = s.disk.next_write_id;
                    s.disk.next_write_id += 1;
                    s.disk.log.push((term, payload.clone(), write_id));
                    *appended = Some((index, write_id));
                    if let Err((inv, detail)) =
                        self.checker.appended(id, index, term, prev_term, &payload)
                    {
                        self.fail(inv, detail);
                        return;
                    }
                }
            }
            Action::Send {
                to, term, message, ..
            } => {
                let disk = &self.server(id).disk;
                let on_disk = disk.term;
                if term > on_disk {
                    self.fail(
                        "persist before send",
                        format!("n{id} sent in t{term} with t{on_disk} on disk"),
                    );
                    return;
                }
                // DESIGN §4: a follower acknowledges only what it fsynced.
                let durable = LogIndex(disk.snapshot.index.0 + disk.synced as u64);
                if let Message::Ack { match_index, .. } = &message {
                    if *match_index > durable {
                        let m = *match_index;
                        self.fail(
                            "ack only what is durable",
                            format!("n{id} acks {m} with {durable} fsynced"),
                        );
                        return;
                    }
                }
                self.send(id, to.0, Packet::Frame { term, message });
            }
            Action::Commit(index) => self.commit(id, index),
            Action::ReadReady { token, index } => self.server(id).waiters.read_ready(token, index),
            Action::ReadFailed { token } => {
                if let Some(read) = self.server(id).waiters.read_failed(token) {
                    self.reply(id, read.client, read.req, Reply::NotLeader(None));
                }
            }
            Action::ProposalsLost { after } => self.fail_proposals_after(id, after),
            Action::SendSnapshot { to, addr } => {
                let now = self.server_now(id);
                let s = self.server(id);
                let Some(core) = s.core.as_ref() else {
                    return;
                };
                let (snapshot_index, _) = core.snapshot_position();
                let out = match s.senders.under_way(core, now, to, addr, snapshot_index) {
                    Some(out) => out,
                    None if s.disk.snapshot.index.0 == 0 => Vec::new(),
                    None => {
                        let image = s.disk.snapshot.clone();
                        let at = FileAt {
                            index: image.index,
                            term: image.term,
                            total: image.file.len() as u64,
                        };
                        s.senders.start(core, now, to, addr, at, image.file.clone())
                    }
                };
                self.send_stream(id, out);
            }
        }
    }

    /// The core says entries through `index` are committed: check them
    /// against every commit seen anywhere, then apply them.
    fn commit(&mut self, id: u64, index: LogIndex) {
        let s = &self.servers[id as usize - 1];
        let Some(core) = s.core.as_ref() else {
            return;
        };
        let from = s.commit_seen;
        if index < from {
            self.fail(
                "commit index never goes down",
                format!("n{id} commit {index} after {from}"),
            );
            return;
        }
        let leader_term = (core.role() == Role::Leader).then(|| core.term());
        let mut entries = Vec::new();
        for i in from.0 + 1..=index.0 {
            let i = LogIndex(i);
            if let (Some(term), Some(payload)) = (core.term_at(i), core.entry(i)) {
                entries.push((i, term, payload.clone()));
            }
        }
        let term_now = core.term();
        self.trace(|| format!("n{id}  commit through {index} (t{term_now})"));
        self.servers[id as usize - 1].commit_seen = index;
        for (i, term, payload) in entries {
            let commit_term = leader_term.unwrap_or(term_now);
            if let Err((inv, detail)) =
                self.checker
                    .committed(id, i, term, &payload, commit_term, &self.servers)
            {
                self.fail(inv, detail);
                return;
            }
        }
        self.apply_through(id, index);
    }

    fn apply_through(&mut self, id: u64, commit: LogIndex) {
        loop {
            let s = self.server(id);
            let Some(core) = s.core.as_ref() else {
                return;
            };
            let entry = match s
                .waiters
                .apply_next(core, &mut s.state, &mut s.applied, commit)
            {
                Ok(Some(entry)) => entry,
                Ok(None) => return,
                Err(e) => {
                    self.fail("entries decode", format!("n{id} {e}"));
                    return;
                }
            };
            let (index, payload) = (entry.index, entry.payload);
            let entry_term = core.term_at(index);
            let hash = state_hash(&s.state);
            if let Err((inv, detail)) = self.checker.applied(id, index, hash) {
                self.fail(inv, detail);
                return;
            }
            match entry.proposal {
                None => continue,
                // The entry at our index is another leader's by now.
                Some(Applied::Replaced((client, req, _))) => {
                    self.reply(id, client, req, Reply::Unknown);
                }
                Some(Applied::Ours((client, req, proposed))) => {
                    let term = entry_term.expect("an applied entry has a term");
                    if payload != proposed {
                        self.fail(
                            "driver contract",
                            format!("n{id} entry {index} of t{term} is not what was proposed"),
                        );
                        return;
                    }
                    if let Err((inv, detail)) = self.checker.acked(index, term, &payload) {
                        self.fail(inv, detail);
                        return;
                    }
                    self.writes_acked += 1;
                    let reply = match outcome_ret(entry.outcome) {
                        Some(ret) => Reply::Done(ret),
                        None => Reply::Unknown,
                    };
                    self.reply(id, client, req, reply);
                }
            }
        }
    }

    fn fail_proposals_after(&mut self, id: u64, after: LogIndex) {
        let lost = self.server(id).waiters.lost_after(after);
        for (client, req, _) in lost {
            self.reply(id, client, req, Reply::Unknown);
        }
    }

    fn answer_reads(&mut self, id: u64) {
        let s = self.server(id);
        let applied = s.applied;
        for read in s.waiters.reads_served(applied) {
            self.answer_read(id, read);
        }
    }

    /// Writes a keystore file at the applied index once enough was applied
    /// since the last, and drops the log it covers (as `poll_snapshot`).
    fn maybe_compact(&mut self, id: u64) {
        let Some(every) = self.compact_every else {
            return;
        };
        let s = self.server(id);
        if s.applied.0 < s.disk.snapshot.index.0 + every {
            return;
        }
        let Some(core) = s.core.as_mut() else {
            return;
        };
        let Some(term) = core.term_at(s.applied) else {
            return;
        };
        let image = Image::of(&s.state, term);
        let dropped = (image.index.0 - s.disk.snapshot.index.0) as usize;
        let dropped = dropped.min(s.disk.log.len());
        s.disk.log.drain(..dropped);
        s.disk.synced = s.disk.synced.saturating_sub(dropped);
        let index = image.index;
        s.disk.snapshot = Rc::new(image);
        core.compact(index, term);
        self.trace(|| format!("n{id}  keystore written through {index}, log compacted"));
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
