//! The host of one replica, written once: everything a host does around the
//! core between the bytes that arrive and the bytes that leave. The
//! replication driver (`crate::driver`) and the simulator (`sim/`) are two
//! [`Io`]s under this one [`Host`], so the simulator runs the code
//! production runs, and the contract between the core and its host is a
//! type rather than a loop each host writes (raft-rs puts the same rule in
//! its `Ready`).
//!
//! The contract, carried out by [`Host::process`]:
//! - the core's actions are carried out in the order given: a term is on
//!   disk ([`Io::persist_term`] returns) before any later send, and sends
//!   before an fsync leave before it starts (Appends to followers overlap
//!   the leader's own fsync);
//! - appended entries are made durable with one [`Io::sync`] per turn, and
//!   only then does the core hear [`Replica::persisted`] (at once for a
//!   host that fsyncs in place, later through [`Host::persisted`] for one
//!   whose fsync completes as a separate event);
//! - committed entries are applied to the state in order, each proposal is
//!   answered with its entry's outcome or as unknown ([`Waiters`]), and a
//!   read is answered once the state has applied its read index;
//! - the keystore stream (both ends), registration and silence reports to
//!   the LB, and the answer to each LB heartbeat; what the host sends of
//!   its own leaves after the turn's actions, so every message, the core's
//!   or the host's, leaves in a term already on disk.
//!
//! The [`Io`] does the I/O and nothing it could get wrong: where the log,
//! `meta` and the keystore live, how a datagram leaves, how a waiter hears
//! its answer, when the keystore file is written.

use std::fmt::Display;
use std::net::SocketAddr;
use std::ops::DerefMut;
use std::sync::RwLockWriteGuard;

use bytes::Bytes;
use data::frame::{LogIndex, Message, Role, ServerId, Term};
use data::state::{Outcome, State};

use super::snapshot_stream::{
    whole_file_ack, Chunk, FileAt, Outgoing, Received, Receiver, Senders, StreamShape, StreamSink,
    StreamSource,
};
use super::{Action, Advertised, Applied, LbLink, NotLeader, Replica, UndecodableEntry, Waiters};
use crate::state::SharedState;
use crate::write_path::CommitError;

/// Where a host keeps the state committed entries apply to.
pub trait StateCell {
    type Guard<'a>: DerefMut<Target = State>
    where
        Self: 'a;
    /// The state, for applying entries (held across a batch of them).
    fn lock(&mut self) -> Self::Guard<'_>;
}

/// The simulator's: the state itself.
impl StateCell for State {
    type Guard<'a> = &'a mut State;
    fn lock(&mut self) -> &mut State {
        self
    }
}

/// The server's: shared with the connections, which read it.
impl StateCell for SharedState {
    type Guard<'a> = RwLockWriteGuard<'a, State>;
    fn lock(&mut self) -> RwLockWriteGuard<'_, State> {
        crate::state::write(self)
    }
}

/// The types one host works with.
pub trait HostTypes {
    type State: StateCell;
    /// A client's write waiting for its entry to be applied.
    type Proposal;
    /// A client's read waiting for its read index.
    type Read;
    /// The leader's keystore file, open for streaming.
    type Source: StreamSource;
    /// A leader's keystore file arriving on a follower.
    type Sink: StreamSink;
}

/// What an [`Io::sync`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Synced {
    /// Everything appended is durable now.
    Now,
    /// The fsync completes later; the host then calls [`Host::persisted`].
    Later,
}

/// A proposal's entry, applied: what its waiter is answered with.
#[derive(Debug)]
pub struct Written {
    pub index: LogIndex,
    pub term: Term,
    pub payload: Bytes,
    pub outcome: Outcome,
}

/// The I/O of one host. Each method does what it says and returns; an
/// error stops the turn (the driver stops on a failed fsync; the simulator
/// on a broken invariant).
pub trait Io<T: HostTypes> {
    type Error: Display;

    /// The core's clock: monotonic milliseconds.
    fn now_ms(&self) -> u64;
    /// Makes `term` durable before returning.
    fn persist_term(&mut self, term: Term) -> Result<(), Self::Error>;
    /// Drops the log's entries after `index`.
    fn truncate_after(&mut self, index: LogIndex) -> Result<(), Self::Error>;
    /// Writes one entry after the log's last (not yet durable). `received`:
    /// it came from a leader, not from this server's own proposal (a host
    /// may check it decodes before keeping it).
    fn append(
        &mut self,
        index: LogIndex,
        term: Term,
        payload: &Bytes,
        received: bool,
    ) -> Result<(), Self::Error>;
    /// Makes the log durable through `through`, its last entry.
    fn sync(&mut self, through: LogIndex) -> Result<Synced, Self::Error>;
    /// Sends one message (lossy: a datagram that cannot leave is lost).
    fn send(
        &mut self,
        to: ServerId,
        addr: SocketAddr,
        term: Term,
        message: Message,
    ) -> Result<(), Self::Error>;
    /// The core committed through `through`, before it is applied.
    fn committed(&mut self, core: &Replica, through: LogIndex) -> Result<(), Self::Error> {
        let _ = (core, through);
        Ok(())
    }
    /// The state has applied `index` (an entry, or a keystore installed).
    fn applied(&mut self, index: LogIndex, state: &State) -> Result<(), Self::Error> {
        let _ = (index, state);
        Ok(())
    }
    /// A committed entry does not decode: the log is damaged.
    fn undecodable(&mut self, error: UndecodableEntry) -> Self::Error;
    fn answer_proposal(
        &mut self,
        proposal: T::Proposal,
        answer: Result<Written, CommitError>,
    ) -> Result<(), Self::Error>;
    /// Answers a read: `Ok` once the state may be read for it.
    fn answer_read(&mut self, read: T::Read, answer: Result<(), CommitError>, state: &mut T::State);
    /// Leader: the latest keystore file, to stream to a follower behind
    /// the compacted log (`None`: there is none to send).
    fn open_keystore(&mut self) -> Option<(FileAt, T::Source)>;
    /// Follower: where a leader's keystore file is received.
    fn create_incoming(&mut self) -> std::io::Result<T::Sink>;
    /// Follower: the whole file arrived. Makes it this server's keystore
    /// durably and the log follow it (keep the entries after `at` when
    /// `keep_log_after`, else none), and returns its state; `None` if it
    /// does not check (it is dropped).
    fn install(
        &mut self,
        at: FileAt,
        sink: T::Sink,
        keep_log_after: bool,
    ) -> Result<Option<State>, Self::Error>;
    /// Receiving a keystore file failed; the stream starts over.
    fn stream_failed(&mut self, error: &dyn Display);
    /// The core took an event in (a lease it no longer holds is withdrawn
    /// at once, before anything else leaves).
    fn core_changed(&mut self, core: &Replica) {
        let _ = core;
    }
    /// The end of a turn: the core has nothing more to say. When to write
    /// a keystore file (not while `receiving` one), what to publish.
    fn end_of_turn(
        &mut self,
        core: &mut Replica,
        state: &mut T::State,
        applied: LogIndex,
        receiving: bool,
    ) -> Result<(), Self::Error>;
}

/// One replica and what its host keeps around it.
pub struct Host<T: HostTypes> {
    core: Replica,
    state: T::State,
    /// The last entry applied to `state`.
    applied: LogIndex,
    waiters: Waiters<T::Proposal, T::Read>,
    lb_link: LbLink,
    /// The LB's address; `None` in a group that elects by vote, which has
    /// no LB to register with or answer.
    lb: Option<SocketAddr>,
    /// Leader: keystore streams to followers behind the compacted log.
    senders: Senders<T::Source>,
    /// Follower: a leader's keystore file arriving.
    receiver: Receiver<T::Sink>,
    /// What the host itself sends (its answers to the LB, registration,
    /// the keystore stream), held until the turn's actions made every term
    /// durable: an event may have moved the core to a term it has not
    /// persisted yet. At most what one turn's events produce.
    outbox: Vec<(ServerId, SocketAddr, Term, Message)>,
}

impl<T: HostTypes> Host<T> {
    /// `state` has applied `applied` (the keystore's index, at start).
    pub fn new(
        mut core: Replica,
        lb: Option<SocketAddr>,
        state: T::State,
        applied: LogIndex,
        shape: StreamShape,
    ) -> Host<T> {
        if let Some(lb) = lb {
            core.set_lb_addr(lb);
        }
        Host {
            core,
            state,
            applied,
            waiters: Waiters::default(),
            lb_link: LbLink::default(),
            lb,
            senders: Senders::new(shape),
            receiver: Receiver::default(),
            outbox: Vec::new(),
        }
    }

    pub fn core(&self) -> &Replica {
        &self.core
    }

    /// For settings the host changes at run time (the memory limit).
    pub fn core_mut(&mut self) -> &mut Replica {
        &mut self.core
    }

    pub fn state(&mut self) -> &mut T::State {
        &mut self.state
    }

    /// Reads that waited for the state to apply through their read index,
    /// and the milliseconds they waited in all (`stats`).
    pub fn read_apply_waits(&self) -> (u64, u64) {
        self.waiters.apply_waits()
    }

    pub fn applied(&self) -> LogIndex {
        self.applied
    }

    /// The simulator's deliberate bugs in the stream's receiving end.
    pub fn receiver_mut(&mut self) -> &mut Receiver<T::Sink> {
        &mut self.receiver
    }

    /// Proposes `payload` for `proposal`; a refusal gives it back.
    pub fn propose(
        &mut self,
        payload: Bytes,
        proposal: T::Proposal,
    ) -> Result<LogIndex, (NotLeader, T::Proposal)> {
        self.waiters.propose(&mut self.core, payload, proposal)
    }

    /// Starts a read round for `read` (or holds it while this leader cannot
    /// serve yet); a refusal gives it back.
    pub fn read(&mut self, now_ms: u64, read: T::Read) -> Result<(), (NotLeader, T::Read)> {
        self.waiters.read(&mut self.core, now_ms, read)
    }

    /// Appended entries through `index` are durable (for a host whose
    /// [`Io::sync`] completes later). Then [`Host::process`].
    pub fn persisted(&mut self, now_ms: u64, index: LogIndex) {
        self.core.persisted(now_ms, index);
    }

    /// A message from `from` in `term`. Then [`Host::process`], which
    /// carries out what it caused and sends what it is answered with.
    pub fn receive<I: Io<T>>(&mut self, io: &mut I, from: ServerId, term: Term, message: Message) {
        let now = io.now_ms();
        let is_lb_heartbeat = self.lb.is_some() && self.lb_link.received(from, &message);
        let message = match Chunk::of(from, term, message) {
            Ok(chunk) => return self.on_snapshot_chunk(io, now, chunk),
            Err(message) => message,
        };
        if let Message::SnapshotAck {
            snapshot_index,
            offset,
        } = message
        {
            let out = self
                .senders
                .acked(&mut self.core, now, from, term, snapshot_index, offset);
            return self.queue(out);
        }
        self.core.receive(now, from, term, message);
        io.core_changed(&self.core);
        if is_lb_heartbeat {
            let status = self.core.status(now, self.applied);
            let term = self.core.term();
            if let Some(lb) = self.lb {
                self.outbox.push((ServerId::LB, lb, term, status));
            }
        }
    }

    /// The timer. Then [`Host::process`].
    pub fn tick<I: Io<T>>(
        &mut self,
        io: &mut I,
        advertised: Advertised,
        election_timeout_ms: u64,
        register_every_ms: u64,
    ) {
        let now = io.now_ms();
        self.core.tick(now);
        io.core_changed(&self.core);
        // Stalled keystore streams resend first.
        let out = self.senders.tick(&self.core, now);
        self.queue(out);
        let Some(lb) = self.lb else {
            return;
        };
        let to_lb = self.lb_link.on_tick(
            &self.core,
            now,
            self.applied,
            election_timeout_ms,
            register_every_ms,
            advertised,
        );
        let term = self.core.term();
        for message in to_lb {
            self.outbox.push((ServerId::LB, lb, term, message));
        }
    }

    /// Carries out the core's actions in order, syncs what was appended and
    /// tells the core, until it has nothing more to say; then answers the
    /// reads the state now serves and ends the turn.
    pub fn process<I: Io<T>>(&mut self, io: &mut I) -> Result<(), I::Error> {
        loop {
            let now = io.now_ms();
            // Reads held until this leader could serve start as soon as it can.
            for read in self.waiters.retry_held_reads(&mut self.core, now) {
                io.answer_read(read, Err(CommitError::NotLeader), &mut self.state);
            }
            // Every write and read handed over this turn shares one Append
            // per follower; a follower answers every Append of the turn with
            // one Ack.
            self.core.flush(now);
            let actions = self.core.take_actions();
            if actions.is_empty() {
                self.send_outbox(io)?;
                break;
            }
            io.core_changed(&self.core);
            let mut appended: Option<LogIndex> = None;
            for action in actions {
                self.act(io, action, &mut appended)?;
            }
            // Every term is durable now; the host's own messages leave
            // before the fsync, as Appends do.
            self.send_outbox(io)?;
            if let Some(index) = appended {
                if io.sync(index)? == Synced::Now {
                    self.core.persisted(io.now_ms(), index);
                }
            }
        }
        let now = io.now_ms();
        let (served, given_up) = self.waiters.reads_served(self.applied, now);
        for read in served {
            io.answer_read(read, Ok(()), &mut self.state);
        }
        for read in given_up {
            io.answer_read(read, Err(CommitError::NotLeader), &mut self.state);
        }
        let receiving = self.receiver.is_receiving();
        io.end_of_turn(&mut self.core, &mut self.state, self.applied, receiving)
    }

    fn act<I: Io<T>>(
        &mut self,
        io: &mut I,
        action: Action,
        appended: &mut Option<LogIndex>,
    ) -> Result<(), I::Error> {
        match action {
            Action::PersistTerm(term) => io.persist_term(term)?,
            Action::TruncateAfter(index) => {
                io.truncate_after(index)?;
                self.fail_proposals_after(io, index)?;
            }
            Action::Append(entries) => {
                let received = self.core.role() != Role::Leader;
                for (index, term, payload) in entries {
                    io.append(index, term, &payload, received)?;
                    *appended = Some(index);
                }
            }
            Action::Send {
                to,
                addr,
                term,
                message,
            } => io.send(to, addr, term, message)?,
            Action::Commit(index) => {
                io.committed(&self.core, index)?;
                self.apply_through(io, index)?;
            }
            Action::ReadReady { token, index } => {
                let now = io.now_ms();
                self.waiters.read_ready(token, index, self.applied, now)
            }
            Action::ReadFailed { token } => {
                if let Some(read) = self.waiters.read_failed(token) {
                    io.answer_read(read, Err(CommitError::NotLeader), &mut self.state);
                }
            }
            Action::ReadUnanswered { token } => {
                if let Some(read) = self.waiters.read_failed(token) {
                    io.answer_read(read, Err(CommitError::NoLeaderReached), &mut self.state);
                }
            }
            Action::ProposalsLost { after } => self.fail_proposals_after(io, after)?,
            Action::SendSnapshot { to, addr } => self.start_stream(io, to, addr),
        }
        Ok(())
    }

    /// Applies committed entries in order and answers their proposers.
    fn apply_through<I: Io<T>>(&mut self, io: &mut I, commit: LogIndex) -> Result<(), I::Error> {
        if commit <= self.applied {
            return Ok(());
        }
        let mut state = self.state.lock();
        loop {
            let next = self
                .waiters
                .apply_next(&self.core, &mut state, &mut self.applied, commit);
            let entry = match next {
                Ok(Some(entry)) => entry,
                Ok(None) => return Ok(()),
                Err(error) => return Err(io.undecodable(error)),
            };
            io.applied(entry.index, &state)?;
            match entry.proposal {
                None => {}
                Some(Applied::Ours(proposal)) => {
                    let term = self
                        .core
                        .term_at(entry.index)
                        .expect("an entry just applied is in the core's log");
                    let written = Written {
                        index: entry.index,
                        term,
                        payload: entry.payload,
                        outcome: entry.outcome,
                    };
                    io.answer_proposal(proposal, Ok(written))?;
                }
                // The entry at our index is another leader's.
                Some(Applied::Replaced(proposal)) => {
                    io.answer_proposal(proposal, Err(CommitError::Unknown))?;
                }
            }
        }
    }

    fn fail_proposals_after<I: Io<T>>(
        &mut self,
        io: &mut I,
        after: LogIndex,
    ) -> Result<(), I::Error> {
        for proposal in self.waiters.lost_after(after) {
            io.answer_proposal(proposal, Err(CommitError::Unknown))?;
        }
        Ok(())
    }

    /// Leader: streams the latest keystore file to `to`, unless a stream of
    /// it is under way.
    fn start_stream<I: Io<T>>(&mut self, io: &mut I, to: ServerId, addr: SocketAddr) {
        let now = io.now_ms();
        let (snapshot_index, _) = self.core.snapshot_position();
        let out = match self
            .senders
            .under_way(&self.core, now, to, addr, snapshot_index)
        {
            Some(out) => out,
            None => match io.open_keystore() {
                Some((at, source)) => self.senders.start(&self.core, now, to, addr, at, source),
                None => Vec::new(),
            },
        };
        self.queue(out);
    }

    /// Follower: one chunk of the leader's keystore file; the
    /// acknowledgement is queued.
    fn on_snapshot_chunk<I: Io<T>>(&mut self, io: &mut I, now: u64, chunk: Chunk) {
        let received = self
            .receiver
            .chunk(&mut self.core, now, self.applied, chunk, || {
                io.create_incoming()
            });
        let ack = match received {
            Ok(Received::Nothing) => None,
            Ok(Received::Ack(ack)) => Some(ack),
            Ok(Received::Whole { from, file, sink }) => match self.install(io, file, sink) {
                Ok(installed) => whole_file_ack(&self.core, from, file, installed),
                Err(error) => return self.stream_failed(io, &error),
            },
            Err(error) => return self.stream_failed(io, &error),
        };
        self.queue(ack.into_iter().collect());
    }

    fn stream_failed<I: Io<T>>(&mut self, io: &mut I, error: &dyn Display) {
        io.stream_failed(error);
        self.receiver.abandon();
    }

    /// Follower: the whole keystore file arrived; installs it. False if it
    /// does not check (the leader starts over).
    fn install<I: Io<T>>(
        &mut self,
        io: &mut I,
        at: FileAt,
        sink: T::Sink,
    ) -> Result<bool, I::Error> {
        // The keystore covers the log through its index. If the log holds
        // that very entry it matches the leader's through it, and what
        // follows (maybe acknowledged already) stays (Raft §7); otherwise
        // the log restarts after the keystore.
        let keep = self.core.keeps_log_after_snapshot(at.index, at.term);
        let Some(state) = io.install(at, sink, keep)? else {
            return Ok(false);
        };
        let membership = super::Membership::of(state.config());
        let mut installed = self.state.lock();
        *installed = state;
        self.applied = at.index;
        self.core.install_snapshot(at.index, at.term, membership);
        io.applied(at.index, &installed)?;
        Ok(true)
    }

    /// Holds what the keystore stream asked for, in the current term, for
    /// the end of the turn's actions.
    fn queue(&mut self, out: Vec<Outgoing>) {
        let term = self.core.term();
        for Outgoing { to, addr, message } in out {
            self.outbox.push((to, addr, term, message));
        }
    }

    fn send_outbox<I: Io<T>>(&mut self, io: &mut I) -> Result<(), I::Error> {
        for (to, addr, term, message) in std::mem::take(&mut self.outbox) {
            io.send(to, addr, term, message)?;
        }
        Ok(())
    }
}
