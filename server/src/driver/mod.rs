//! The replication driver: runs the [`Replica`] core on its own thread and
//! does its I/O — the UDP socket, the log and meta files, the timer — and
//! applies committed entries to the state.
//!
//! The one type that owns the server's UDP socket and, in cluster mode, its
//! log. Connections talk to it through a [`ClusterHandle`]: proposals and
//! read barriers in, outcomes out. Everything the core decides happens in
//! the order of its actions: a term is on disk before any message of that
//! term leaves, appended entries are fsynced before the core hears they are,
//! and Appends to followers leave before the leader's own fsync, so the two
//! overlap (DESIGN §4).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{Ordering, Ordering::Relaxed};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use data::command::Command;
use data::frame::{
    self, Frame, FrameError, GroupId, Header, LogIndex, Message, OtherVersions, Role, ServerId,
    Term,
};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};

use crate::config::ClusterSettings;
use crate::memory::MemoryLimit;
use crate::replica::snapshot_stream::{Chunk, Receiver, Senders, StreamShape};
use crate::replica::{Action, Advertised, Applied, Durable, LbLink, NotLeader, Replica, Waiters};
use crate::snapshot::KeystoreSchedule;
use crate::state::{self, SharedState};
use crate::stats::Stats;
use crate::storage::{meta, Log, Meta, StorageError};
use crate::write_path::{CommitError, ProposalReply};

mod transfer;
mod view;

pub use view::{ClusterHandle, ClusterView, DriverRequest};

/// Requests waiting for the driver at most; connections wait beyond it.
pub const REQUESTS_QUEUED_MAX: usize = 16 * 1024;
/// Requests taken per loop turn at most, so datagrams are not starved.
const REQUESTS_PER_TURN_MAX: usize = 4096;
/// Datagrams read per loop turn at most.
const DATAGRAMS_PER_TURN_MAX: usize = 1024;
/// Proposals are encoded into blocks of this size (one allocation for many
/// small writes; a block is freed once no entry in it is held).
const PROPOSAL_BLOCK_BYTES: usize = 64 * 1024;
/// The core's timer resolution: retransmits start at 20 ms.
const TICK_MS: u64 = 10;
/// Receive buffer: a little over the largest datagram, so an oversized one
/// is seen as such (and dropped) rather than silently cut.
const RECV_BUFFER_BYTES: usize = frame::DATAGRAM_BYTES_MAX + 64;

/// Socket buffer asked for in each direction of the replication socket:
/// room for several followers' windows ([`crate::replica::WINDOW_BYTES_MAX`]
/// of payload, about 1.7x that in kernel accounting).
const UDP_BUFFER_BYTES: usize = 4 * 1024 * 1024;

// The timer must resolve the shortest retransmit, and the socket buffers
// hold at least two full windows.
const _: () = assert!(TICK_MS < crate::replica::RETRANSMIT_MS_MIN);
const _: () = assert!(UDP_BUFFER_BYTES >= 2 * crate::replica::WINDOW_BYTES_MAX);
const _: () = assert!(RECV_BUFFER_BYTES > frame::DATAGRAM_BYTES_MAX);
// The write budget pushes back on clients before the core refuses
// proposals for its bound on uncommitted entries.
const _: () =
    assert!(crate::memory::WRITES_IN_FLIGHT_MAX as u64 <= crate::replica::UNCOMMITTED_ENTRIES_MAX);

/// Everything the driver needs at start.
pub struct DriverStart {
    pub settings: ClusterSettings,
    pub data_dir: PathBuf,
    /// The address clients reach this server's memcached port at.
    pub tcp_advertise: SocketAddr,
    pub log: Log,
    /// Log records after the keystore's index, in order (not applied yet:
    /// only the leader knows which are committed).
    pub entries: Vec<(Term, Bytes)>,
    pub snapshot_index: LogIndex,
    pub snapshot_term: Term,
    pub state: SharedState,
    /// The server's counters: the driver keeps the log's (`log_syncs`, ...)
    /// as the single-node commit thread does.
    pub stats: Arc<Stats>,
    /// This server's memory limit, which the driver declares to its leader,
    /// and the group's, which it sets while leading.
    pub memory: Arc<MemoryLimit>,
    pub snapshot_log_bytes: u64,
    pub item_bytes_max: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("cannot bind UDP {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot start the replication thread: {0}")]
    Thread(std::io::Error),
}

/// Starts the driver thread. Returns once the UDP socket is bound.
pub fn start(
    start: DriverStart,
) -> Result<(ClusterHandle, thread::JoinHandle<Result<(), StorageError>>), ClusterError> {
    let udp_listen = start.settings.udp_listen;
    let socket = std::net::UdpSocket::bind(udp_listen).map_err(|source| ClusterError::Bind {
        addr: udp_listen,
        source,
    })?;
    socket
        .set_nonblocking(true)
        .map_err(|source| ClusterError::Bind {
            addr: udp_listen,
            source,
        })?;
    // A window of Appends arrives as a burst; the default receive buffer
    // (~208 KB) overflowed under pipelined writes and more than half the
    // datagrams were dropped and resent. The kernel caps the size at
    // net.core.rmem_max/wmem_max; a smaller buffer only costs resends.
    let sock = socket2::SockRef::from(&socket);
    for (what, result) in [
        ("receive", sock.set_recv_buffer_size(UDP_BUFFER_BYTES)),
        ("send", sock.set_send_buffer_size(UDP_BUFFER_BYTES)),
    ] {
        if let Err(error) = result {
            tracing::warn!(%error, what, "cannot size the UDP socket buffer");
        }
    }
    let udp_bound = socket.local_addr().map_err(|source| ClusterError::Bind {
        addr: udp_listen,
        source,
    })?;
    let udp_advertise = start.settings.udp_advertise.unwrap_or(udp_bound);

    let meta = match meta::load(&start.data_dir)? {
        Some(meta) => meta,
        None => {
            // A server's id is chosen once and kept: a restart with the same
            // data directory is the same server (DESIGN §3a).
            let meta = Meta {
                server_id: random_id(),
                current_term: 0,
            };
            meta::store(&start.data_dir, &meta)?;
            meta
        }
    };
    let view = Arc::new(ClusterView::default());
    view.id.store(meta.server_id, Relaxed);
    let (tx, rx) = mpsc::channel(REQUESTS_QUEUED_MAX);
    let handle = ClusterHandle {
        tx,
        view: view.clone(),
        read_mode: start.settings.read_mode,
    };
    let thread = thread::Builder::new()
        .name("replication".into())
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| StorageError::Io {
                    op: "start runtime",
                    path: start.data_dir.clone(),
                    source: e,
                })?;
            runtime.block_on(async move {
                let socket = UdpSocket::from_std(socket).map_err(|e| StorageError::Io {
                    op: "register UDP socket",
                    path: start.data_dir.clone(),
                    source: e,
                })?;
                Driver::new(start, meta, socket, udp_advertise, view)
                    .run(rx)
                    .await
            })
        })
        .map_err(ClusterError::Thread)?;
    Ok((handle, thread))
}

/// How a read barrier's answer reaches its connection.
type ReadReply = oneshot::Sender<Result<(), CommitError>>;

struct Driver {
    core: Replica,
    settings: ClusterSettings,
    data_dir: PathBuf,
    tcp_advertise: SocketAddr,
    udp_advertise: SocketAddr,
    socket: UdpSocket,
    log: Log,
    meta: Meta,
    state: SharedState,
    stats: Arc<Stats>,
    memory: Arc<MemoryLimit>,
    view: Arc<ClusterView>,
    applied: LogIndex,
    /// Proposals waiting for their entry, reads for their round and the
    /// state (the core's contract, kept as every host keeps it).
    waiters: Waiters<ProposalReply, ReadReply>,
    peers_tcp: HashMap<ServerId, SocketAddr>,
    lb_link: LbLink,
    /// Frames of another release, reported once per version.
    other_versions: OtherVersions,
    out: BytesMut,
    /// The block proposals are encoded into.
    proposals_buf: BytesMut,
    item_bytes_max: usize,
    /// When this server writes its keystore files.
    keystores: KeystoreSchedule,
    /// Leader: keystore streams to followers behind the compacted log.
    senders: Senders<std::fs::File>,
    /// Follower: a leader's keystore file arriving.
    receiver: Receiver<std::fs::File>,
}

impl Drop for Driver {
    /// A driver that stops (an fsync failed, say) takes the lease with it
    /// before its socket closes: the LB may read the closed port as a dead
    /// leader and start an election at once, while this process's
    /// connections would otherwise go on reading under the lease.
    fn drop(&mut self) {
        self.view.lease_until_ms.store(0, Ordering::SeqCst);
    }
}

impl Driver {
    fn new(
        start: DriverStart,
        meta: Meta,
        socket: UdpSocket,
        udp_advertise: SocketAddr,
        view: Arc<ClusterView>,
    ) -> Driver {
        let durable = Durable {
            term: Term(meta.current_term),
            snapshot_index: start.snapshot_index,
            snapshot_term: start.snapshot_term,
            entries: start.entries,
            snapshot_membership: membership_of(state::read(&start.state).config()),
        };
        let id = ServerId(meta.server_id);
        let mut core = Replica::new(
            id,
            start.settings.timing,
            durable,
            meta.server_id ^ now_ms(),
            now_ms(),
        );
        core.set_lb_addr(start.settings.lb);
        let applied = LogIndex(state::read(&start.state).applied_index());
        Driver {
            core,
            settings: start.settings,
            data_dir: start.data_dir,
            tcp_advertise: start.tcp_advertise,
            udp_advertise,
            socket,
            log: start.log,
            meta,
            state: start.state,
            stats: start.stats,
            memory: start.memory,
            view,
            applied,
            waiters: Waiters::default(),
            peers_tcp: HashMap::new(),
            lb_link: LbLink::default(),
            other_versions: OtherVersions::default(),
            out: BytesMut::with_capacity(frame::DATAGRAM_BYTES_MAX),
            proposals_buf: BytesMut::new(),
            item_bytes_max: start.item_bytes_max,
            keystores: KeystoreSchedule::new(start.snapshot_log_bytes),
            senders: Senders::new(StreamShape::SERVER),
            receiver: Receiver::default(),
        }
    }

    async fn run(mut self, mut rx: mpsc::Receiver<DriverRequest>) -> Result<(), StorageError> {
        let mut tick = tokio::time::interval(Duration::from_millis(TICK_MS));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut buf = vec![0u8; RECV_BUFFER_BYTES];
        loop {
            let mut ticked = false;
            // `cache_memlimit` may have changed it: the next answer says so.
            self.core.set_memory_limit(self.memory.limit_bytes());
            tokio::select! {
                request = rx.recv() => match request {
                    Some(request) => self.handle_request(request),
                    None => break,
                },
                received = self.socket.recv_from(&mut buf) => {
                    if let Ok((len, _)) = received {
                        self.handle_datagram(&buf[..len]).await;
                    }
                }
                _ = tick.tick() => ticked = true,
            }
            // Take everything else that is ready, so one fsync serves it all.
            for _ in 0..REQUESTS_PER_TURN_MAX {
                match rx.try_recv() {
                    Ok(request) => self.handle_request(request),
                    Err(_) => break,
                }
            }
            for _ in 0..DATAGRAMS_PER_TURN_MAX {
                match self.socket.try_recv_from(&mut buf) {
                    Ok((len, _)) => self.handle_datagram(&buf[..len]).await,
                    Err(_) => break,
                }
            }
            // Time is judged after what already arrived is taken in: after a
            // stall (a slow fsync, a descheduled thread) the acks and
            // heartbeats waiting in the socket count before a leader decides
            // it lost its majority or a follower reports its leader silent.
            if ticked {
                self.on_tick().await;
            }
            self.process_actions().await?;
        }
        self.log.sync()
    }

    fn handle_request(&mut self, request: DriverRequest) {
        match request {
            DriverRequest::Propose { command, reply } => {
                // Proposals are encoded one after another into shared
                // blocks, not one allocation each.
                let len = command.encoded_len();
                if self.proposals_buf.capacity() - self.proposals_buf.len() < len {
                    self.proposals_buf.reserve(len.max(PROPOSAL_BLOCK_BYTES));
                }
                command.encode(&mut self.proposals_buf);
                let payload = self.proposals_buf.split().freeze();
                let proposed = self.waiters.propose(&mut self.core, payload, reply);
                if let Err((refused, reply)) = proposed {
                    let _ = reply.send(Err(refusal(refused)));
                }
            }
            DriverRequest::Read { reply } => {
                if let Err((refused, reply)) = self.waiters.read(&mut self.core, now_ms(), reply) {
                    let _ = reply.send(Err(refusal(refused)));
                }
            }
        }
    }

    /// Retries reads held while the leader was not ready; fails them if it
    /// is no longer the leader.
    fn retry_held_reads(&mut self) {
        for reply in self.waiters.retry_held_reads(&mut self.core, now_ms()) {
            let _ = reply.send(Err(CommitError::NotLeader));
        }
    }

    async fn handle_datagram(&mut self, datagram: &[u8]) {
        let frame = match frame::decode(datagram, &self.settings.cluster.secret) {
            Ok(frame) => frame,
            Err(FrameError::BadMac) => {
                self.view.bad_mac.fetch_add(1, Relaxed);
                return;
            }
            Err(error) => {
                if self.other_versions.first_sight(&error) {
                    tracing::warn!(
                        %error,
                        "a peer runs another release: upgrade the LB and every server of a group together"
                    );
                }
                self.view.frames_dropped.fetch_add(1, Relaxed);
                return;
            }
        };
        let Frame { header, message } = frame;
        // This server hosts the first group only (route::group_of).
        if header.cluster != self.settings.cluster.id
            || header.group != GroupId::FIRST
            || header.to != self.core.id()
        {
            self.view.frames_dropped.fetch_add(1, Relaxed);
            return;
        }
        self.view.frames_received.fetch_add(1, Relaxed);
        let now = now_ms();
        let is_lb_heartbeat = self.lb_link.received(header.from, &message);
        if let (true, Message::Heartbeat { peers, .. }) = (is_lb_heartbeat, &message) {
            for peer in peers {
                self.peers_tcp.insert(peer.id, peer.tcp);
            }
        }
        let message = match Chunk::of(header.from, header.term, message) {
            Ok(chunk) => {
                if let Err(error) = self.on_snapshot_chunk(chunk).await {
                    tracing::warn!(%error, "receiving a keystore file failed");
                    self.receiver.abandon();
                }
                return;
            }
            Err(message) => message,
        };
        if let Message::SnapshotAck {
            snapshot_index,
            offset,
        } = message
        {
            let out = self.senders.acked(
                &mut self.core,
                now,
                header.from,
                header.term,
                snapshot_index,
                offset,
            );
            self.send_all(out).await;
            return;
        }
        self.core.receive(now, header.from, header.term, message);
        self.fence_lease();
        if is_lb_heartbeat {
            let status = self.core.status(now, self.applied);
            let (lb, term) = (self.settings.lb, self.core.term());
            self.send(ServerId::LB, lb, term, status).await;
        }
    }

    async fn on_tick(&mut self) {
        let now = now_ms();
        self.core.tick(now);
        self.fence_lease();
        let out = self.senders.tick(&self.core, now);
        self.send_all(out).await;
        let timing = self.settings.timing;
        let advertised = Advertised {
            tcp: self.tcp_advertise,
            udp: self.udp_advertise,
        };
        let to_lb = self.lb_link.on_tick(
            &self.core,
            now,
            self.applied,
            timing.election_timeout_ms,
            timing.heartbeat_ms,
            advertised,
        );
        let (lb, term) = (self.settings.lb, self.core.term());
        for message in to_lb {
            self.send(ServerId::LB, lb, term, message).await;
        }
    }

    /// Carries out the core's actions in order, fsyncs what was appended and
    /// tells the core, until it has nothing more to say.
    async fn process_actions(&mut self) -> Result<(), StorageError> {
        loop {
            // Reads held until this leader could serve start as soon as it can.
            self.retry_held_reads();
            // Every write and read handed over this turn shares one Append per
            // follower; a follower answers every Append of the turn with one Ack.
            self.core.flush(now_ms());
            let actions = self.core.take_actions();
            if actions.is_empty() {
                break;
            }
            self.fence_lease();
            let mut appended: Option<LogIndex> = None;
            let (mut records, mut bytes) = (0u64, 0u64);
            for action in actions {
                match action {
                    Action::PersistTerm(term) => {
                        self.meta.current_term = term.0;
                        meta::store(&self.data_dir, &self.meta)?;
                    }
                    Action::TruncateAfter(index) => {
                        self.log.truncate_after(index.0)?;
                        self.fail_proposals_after(index);
                    }
                    Action::Append(entries) => {
                        // A leader's entries are its own proposals, encoded
                        // here; a follower checks what it received decodes
                        // before it makes it durable.
                        let check = self.core.role() != Role::Leader;
                        for (index, term, payload) in entries {
                            if check {
                                Command::decode(payload.clone()).map_err(|e| {
                                    StorageError::Corrupt {
                                        what: "replicated entry",
                                        path: self.data_dir.clone(),
                                        offset: index.0,
                                        reason: e.to_string(),
                                    }
                                })?;
                            }
                            let len = payload.len() as u64;
                            self.keystores.wrote(len);
                            self.log.append_encoded(term.0, index.0, &payload)?;
                            appended = Some(index);
                            records += 1;
                            bytes += len;
                        }
                    }
                    Action::Send {
                        to,
                        addr,
                        term,
                        message,
                    } => self.send(to, addr, term, message).await,
                    Action::Commit(index) => self.apply_through(index)?,
                    Action::ReadReady { token, index } => self.waiters.read_ready(token, index),
                    Action::ReadFailed { token } => {
                        if let Some(reply) = self.waiters.read_failed(token) {
                            let _ = reply.send(Err(CommitError::NotLeader));
                        }
                    }
                    Action::ProposalsLost { after } => self.fail_proposals_after(after),
                    Action::SendSnapshot { to, addr } => self.start_transfer(to, addr).await,
                }
            }
            if let Some(index) = appended {
                let sync_started = Instant::now();
                self.log.sync()?;
                self.stats.log_synced(sync_started, records, bytes);
                self.core.persisted(now_ms(), index);
            }
        }
        self.answer_reads();
        self.poll_snapshot()?;
        self.publish();
        Ok(())
    }

    /// Finishes a keystore file that was written (dropping the log it
    /// covers, on disk and in memory), and starts one when enough log was
    /// written since the last.
    fn poll_snapshot(&mut self) -> Result<(), StorageError> {
        if let Some(taken) = self.keystores.finished(&mut self.log, &self.stats, false)? {
            self.core.compact(LogIndex(taken.index), Term(taken.term));
        }
        // Not while a leader's file arrives: it replaces ours.
        if !self.receiver.is_receiving() {
            let core = &self.core;
            // The applied index is committed and still in the in-memory log.
            self.keystores
                .maybe_start(&self.data_dir, &self.state, |index| {
                    core.term_at(LogIndex(index)).map_or(0, |t| t.0)
                });
        }
        Ok(())
    }

    /// Applies committed entries in order and answers their proposers.
    fn apply_through(&mut self, commit: LogIndex) -> Result<(), StorageError> {
        if commit <= self.applied {
            return Ok(());
        }
        let mut state = state::write(&self.state);
        loop {
            let next = self
                .waiters
                .apply_next(&self.core, &mut state, &mut self.applied, commit);
            let entry = next.map_err(|e| StorageError::Corrupt {
                what: "committed entry",
                path: self.data_dir.clone(),
                offset: e.index.0,
                reason: e.source.to_string(),
            })?;
            let Some(entry) = entry else {
                return Ok(());
            };
            match entry.proposal {
                None => {}
                Some(Applied::Ours(reply)) => {
                    let _ = reply.send(Ok(entry.outcome));
                }
                // The entry at our index is another leader's.
                Some(Applied::Replaced(reply)) => {
                    let _ = reply.send(Err(CommitError::Unknown));
                }
            }
        }
    }

    fn fail_proposals_after(&mut self, after: LogIndex) {
        for reply in self.waiters.lost_after(after) {
            let _ = reply.send(Err(CommitError::Unknown));
        }
    }

    fn answer_reads(&mut self) {
        for reply in self.waiters.reads_served(self.applied) {
            let _ = reply.send(Ok(()));
        }
    }

    /// Updates what connections and `stats` see.
    /// Withdraws the published lease at once when the core no longer holds
    /// one (it stepped down, say), before anything else leaves: a promise
    /// to a new term must not go out while connections still read under
    /// this leader's lease.
    fn fence_lease(&self) {
        if self.core.lease_until_ms() == 0 {
            self.view.lease_until_ms.store(0, Ordering::SeqCst);
        }
    }

    fn publish(&self) {
        let view = &self.view;
        // After the state was brought up to the commit index: a read under
        // the lease sees every write answered so far.
        view.lease_until_ms
            .store(self.core.lease_until_ms(), Ordering::Release);
        view.role.store(
            match self.core.role() {
                Role::Leader => 1,
                Role::Learner => 2,
                Role::Follower => 0,
            },
            Relaxed,
        );
        view.term.store(self.core.term().0, Relaxed);
        let leader = self.core.leader();
        view.leader.store(leader.map_or(0, |l| l.0), Relaxed);
        view.commit_index.store(self.core.commit_index().0, Relaxed);
        view.applied_index.store(self.applied.0, Relaxed);
        view.last_index.store(self.core.last_index().0, Relaxed);
        self.memory
            .set_group_limit_bytes(self.core.group_memory_limit_bytes());
        let tcp = leader.and_then(|l| {
            if l == self.core.id() {
                Some(self.tcp_advertise)
            } else {
                self.peers_tcp.get(&l).copied()
            }
        });
        *view
            .leader_tcp
            .lock()
            .expect("view lock is never held across a panic") = tcp;
    }

    async fn send(&mut self, to: ServerId, addr: SocketAddr, term: Term, message: Message) {
        let frame = Frame {
            header: Header {
                cluster: self.settings.cluster.id,
                group: GroupId::FIRST,
                from: self.core.id(),
                to,
                term,
            },
            message,
        };
        self.out.clear();
        if let Err(error) = frame::encode(&frame, &self.settings.cluster.secret, &mut self.out) {
            tracing::warn!(%error, "cannot encode a frame");
            return;
        }
        // UDP is lossy anyway: a full socket buffer is one more lost
        // datagram, which retransmission covers.
        if self.socket.send_to(&self.out, addr).await.is_ok() {
            self.view.frames_sent.fetch_add(1, Relaxed);
        }
    }
}

fn membership_of(config: &data::state::Members) -> crate::replica::Membership {
    crate::replica::Membership {
        voters: config.0.iter().map(|id| ServerId(*id)).collect(),
        learners: config.1.iter().map(|id| ServerId(*id)).collect(),
    }
}

fn refusal(refused: NotLeader) -> CommitError {
    match refused {
        NotLeader::Follower(_) => CommitError::NotLeader,
        NotLeader::NotReady => CommitError::NotReady,
    }
}

/// The core's clock: monotonic, so leases and timers survive wall-clock
/// steps.
fn now_ms() -> u64 {
    crate::clock::mono_ms()
}

/// A random non-zero server id (0 is the LB).
fn random_id() -> u64 {
    loop {
        let id: u64 = rand::random();
        if id != 0 {
            return id;
        }
    }
}
