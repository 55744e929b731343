//! The replication driver: runs the replica [`Host`] (the core and what is
//! kept around it, the code the simulator runs too) on its own thread, as
//! its [`Io`]: the UDP socket, the log and meta files, the keystore files,
//! the timer, and what connections and `stats` see.
//!
//! The one type that owns the server's UDP socket and, in cluster mode, its
//! log. Connections talk to it through a [`ClusterHandle`]: proposals and
//! read barriers in, outcomes out. The host carries out what the core
//! decides in the order of its actions (DESIGN §4); this loop takes in
//! everything ready, so one fsync serves a whole turn.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{Ordering, Ordering::Relaxed};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use data::cluster_file::ClusterFile;
use data::command::Command;
use data::frame::{
    self, Frame, FrameError, GroupId, Header, LogIndex, Message, OtherVersions, Role, ServerId,
    Term,
};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

use crate::config::{ClusterSettings, Elector, ReadMode};
use crate::memory::MemoryLimit;
use crate::replica::host::{Host, HostTypes, Io, Synced, Written};
use crate::replica::snapshot_stream::{FileAt, StreamShape};
use crate::replica::{Advertised, Durable, Membership, NotLeader, Replica, UndecodableEntry};
use crate::snapshot::KeystoreSchedule;
use crate::state::{self, SharedState};
use crate::stats::Stats;
use crate::storage::{meta, Log, Meta, StorageError};
use crate::write_path::{CommitError, ProposalReply};

mod known_lbs;
mod read_gate;
mod transfer;
mod view;

pub use known_lbs::KnownLbs;
use read_gate::{BatchReply, ReadGate};

pub use view::{ClusterHandle, ClusterView, Configuration, DriverRequest};

/// Requests waiting for the driver at most; connections wait beyond it.
pub const REQUESTS_QUEUED_MAX: usize = 16 * 1024;
/// Requests taken per loop turn at most, so datagrams are not starved.
const REQUESTS_PER_TURN_MAX: usize = 4096;
/// Datagrams read per loop turn at most.
const DATAGRAMS_PER_TURN_MAX: usize = 1024;
/// Proposals are encoded into blocks of this size (one allocation for many
/// small writes; a block is freed once no entry in it is held).
const PROPOSAL_BLOCK_BYTES: usize = 64 * 1024;
/// How long a datagram waits for room in a full socket buffer at most
/// before it is dropped (retransmission covers it).
const SEND_WAIT_MS_MAX: u64 = 100;
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
    #[error("the data directory holds member {found} of its group, not {expected}")]
    OtherMember { found: ServerId, expected: ServerId },
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

    let static_id = match &start.settings.elector {
        Elector::Lb(_) => None,
        Elector::Vote(group) => Some(group.id),
    };
    let meta = match meta::load(&start.data_dir)? {
        Some(meta) => meta,
        None => {
            // A server's id is chosen once and kept: a restart with the same
            // data directory is the same server (DESIGN §3a). A member of a
            // fixed group has the id the group gives it.
            let meta = Meta {
                server_id: static_id.map_or_else(random_id, |id| id.0),
                current_term: 0,
            };
            meta::store(&start.data_dir, &meta)?;
            meta
        }
    };
    if let Some(expected) = static_id.filter(|id| id.0 != meta.server_id) {
        return Err(ClusterError::OtherMember {
            found: ServerId(meta.server_id),
            expected,
        });
    }
    let view = Arc::new(ClusterView::default());
    view.id.store(meta.server_id, Relaxed);
    let (tx, rx) = mpsc::channel(REQUESTS_QUEUED_MAX);
    let reads = Arc::new(ReadGate::default());
    let handle = ClusterHandle {
        tx,
        view: view.clone(),
        read_mode: start.settings.read_mode,
        reads: reads.clone(),
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
                Driver::new(start, meta, socket, udp_advertise, view, reads)
                    .run(rx)
                    .await
            })
        })
        .map_err(ClusterError::Thread)?;
    Ok((handle, thread))
}

/// The server's kinds of waiter, keystore file and state under the
/// replica [`Host`].
struct ServerTypes;

impl HostTypes for ServerTypes {
    type State = SharedState;
    type Proposal = ProposalReply;
    type Read = BatchReply;
    type Source = std::fs::File;
    type Sink = std::fs::File;
}

struct Driver {
    /// The replica and everything kept around it (the code the simulator
    /// runs too).
    host: Host<ServerTypes>,
    /// Its I/O: the socket, the files, what the rest of the server sees.
    io: DriverIo,
    settings: ClusterSettings,
    advertised: Advertised,
    /// Frames of another release, reported once per version.
    other_versions: OtherVersions,
    /// The block proposals are encoded into.
    proposals_buf: BytesMut,
    /// Where connections' read barriers wait to be taken as one.
    reads: Arc<ReadGate>,
}

/// The driver's side of the [`Io`] contract.
struct DriverIo {
    id: ServerId,
    group: GroupId,
    /// Every LB's UDP address (none in a group that elects itself).
    lbs: Option<KnownLbs>,
    cluster: ClusterFile,
    data_dir: PathBuf,
    tcp_advertise: SocketAddr,
    socket: UdpSocket,
    log: Log,
    meta: Meta,
    stats: Arc<Stats>,
    memory: Arc<MemoryLimit>,
    view: Arc<ClusterView>,
    peers_tcp: HashMap<ServerId, SocketAddr>,
    out: BytesMut,
    item_bytes_max: usize,
    /// When this server writes its keystore files.
    keystores: KeystoreSchedule,
    /// Appended since the last fsync, for `stats`.
    unsynced_records: u64,
    unsynced_bytes: u64,
}

impl Drop for Driver {
    /// A driver that stops (an fsync failed, say) takes the lease with it
    /// before its socket closes: the LB may read the closed port as a dead
    /// leader and start an election at once, while this process's
    /// connections would otherwise go on reading under the lease.
    fn drop(&mut self) {
        self.io.view.lease_until_ms.store(0, Ordering::SeqCst);
    }
}

impl DriverIo {
    /// Takes the LB group's list the acting LB announced (DESIGN §3c), and
    /// keeps it for a restart when the LBs changed.
    fn learn_lbs(&mut self, epoch: u64, lbs: &[SocketAddr]) {
        let Some(known) = self.lbs.as_mut() else {
            return;
        };
        if !known.learn(epoch, lbs) {
            return;
        }
        tracing::info!(epoch, lbs = ?known.addrs, "the LB group changed: sending to its LBs");
        if let Err(error) = known.store(&self.data_dir) {
            // Only a restart with an old --lb list misses it.
            tracing::warn!(%error, "cannot keep the LB group's list");
        }
    }
}

impl Driver {
    fn new(
        start: DriverStart,
        meta: Meta,
        socket: UdpSocket,
        udp_advertise: SocketAddr,
        view: Arc<ClusterView>,
        reads: Arc<ReadGate>,
    ) -> Driver {
        let mut snapshot_membership = Membership::of(state::read(&start.state).config());
        if let Elector::Vote(group) = &start.settings.elector {
            let empty =
                snapshot_membership.voters.is_empty() && snapshot_membership.learners.is_empty();
            if empty && !group.joining {
                // A group founded with these members starts with every one
                // a voter; a member joining a running group waits for the
                // configuration in its leader's log.
                snapshot_membership.voters = group.members.iter().map(|m| m.id).collect();
            }
        }
        let durable = Durable {
            term: Term(meta.current_term),
            snapshot_index: start.snapshot_index,
            snapshot_term: start.snapshot_term,
            entries: start.entries,
            snapshot_membership,
        };
        let id = ServerId(meta.server_id);
        let mut core = Replica::new(
            id,
            start.settings.timing,
            durable,
            jitter_seed(meta.server_id),
            now_ms(),
        );
        core.set_lease_answers_followers(start.settings.read_mode == ReadMode::Linearizable);
        let mut peers_tcp = HashMap::new();
        let lbs = match &start.settings.elector {
            Elector::Lb(lbs) => Some(KnownLbs::new(lbs, KnownLbs::load(&start.data_dir))),
            Elector::Vote(_) => None,
        };
        let lb = match &start.settings.elector {
            // The core addresses "the LB" as one; the sends go to each.
            Elector::Lb(lbs) => Some(lbs[0]),
            Elector::Vote(group) => {
                core.elect_by_vote(now_ms(), &group.members);
                peers_tcp.extend(group.members.iter().map(|m| (m.id, m.tcp)));
                None
            }
        };
        let applied = LogIndex(state::read(&start.state).applied_index());
        let host = Host::new(core, lb, start.state, applied, StreamShape::SERVER);
        let io = DriverIo {
            id,
            group: start.settings.group,
            lbs,
            cluster: start.settings.cluster.clone(),
            data_dir: start.data_dir,
            tcp_advertise: start.tcp_advertise,
            socket,
            log: start.log,
            meta,
            stats: start.stats,
            memory: start.memory,
            view,
            peers_tcp,
            out: BytesMut::with_capacity(frame::DATAGRAM_BYTES_MAX),
            item_bytes_max: start.item_bytes_max,
            keystores: KeystoreSchedule::new(start.snapshot_log_bytes),
            unsynced_records: 0,
            unsynced_bytes: 0,
        };
        Driver {
            host,
            io,
            advertised: Advertised {
                tcp: start.tcp_advertise,
                udp: udp_advertise,
            },
            settings: start.settings,
            other_versions: OtherVersions::default(),
            proposals_buf: BytesMut::new(),
            reads,
        }
    }

    async fn run(mut self, mut rx: mpsc::Receiver<DriverRequest>) -> Result<(), StorageError> {
        let mut tick = tokio::time::interval(Duration::from_millis(TICK_MS));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut buf = vec![0u8; RECV_BUFFER_BYTES];
        loop {
            let mut ticked = false;
            // `cache_memlimit` may have changed it: the next answer says so.
            let limit = self.io.memory.limit_bytes();
            self.host.core_mut().set_memory_limit(limit);
            tokio::select! {
                request = rx.recv() => match request {
                    Some(request) => self.handle_request(request),
                    None => break,
                },
                received = self.io.socket.recv_from(&mut buf) => {
                    if let Ok((len, _)) = received {
                        self.handle_datagram(&buf[..len]);
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
                match self.io.socket.try_recv_from(&mut buf) {
                    Ok((len, _)) => self.handle_datagram(&buf[..len]),
                    Err(_) => break,
                }
            }
            // Time is judged after what already arrived is taken in: after a
            // stall (a slow fsync, a descheduled thread) the acks and
            // heartbeats waiting in the socket count before a leader decides
            // it lost its majority or a follower reports its leader silent.
            if ticked {
                let timing = self.settings.timing;
                self.host.tick(
                    &mut self.io,
                    self.advertised,
                    timing.election_timeout_ms,
                    timing.heartbeat_ms,
                );
            }
            self.host.process(&mut self.io)?;
            // Read counters, from the core (questions) and the host's
            // waiters (apply waits), published together.
            let view = &self.io.view;
            let (questions, answered) = self.host.core().read_index_counts();
            view.read_index_questions.store(questions, Relaxed);
            view.read_index_reads.store(answered, Relaxed);
            let (waited, wait_ms) = self.host.read_apply_waits();
            view.reads_waited_for_apply.store(waited, Relaxed);
            view.read_apply_wait_ms.store(wait_ms, Relaxed);
        }
        self.io.log.sync()
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
                if let Err((refused, reply)) = self.host.propose(payload, reply) {
                    reply.send(Err(refusal(refused)));
                }
            }
            DriverRequest::Read { reply } => {
                // Reads after this take the next batch.
                self.reads.close(&reply);
                if let Err((refused, reply)) = self.host.read(now_ms(), reply) {
                    reply.send(Err(refusal(refused)));
                }
            }
            DriverRequest::Members { members, target } => {
                if members.is_empty() || !matches!(self.settings.elector, Elector::Vote(_)) {
                    tracing::warn!("ignored a member list for a group that cannot take one");
                    return;
                }
                for member in &members {
                    self.io.peers_tcp.insert(member.id, member.tcp);
                }
                let core = self.host.core_mut();
                if target {
                    core.set_target_members(now_ms(), &members);
                } else {
                    core.learn_members(&members);
                }
            }
        }
    }

    fn handle_datagram(&mut self, datagram: &[u8]) {
        let view = &self.io.view;
        let frame = match frame::decode(datagram, &self.io.cluster.secret) {
            Ok(frame) => frame,
            Err(FrameError::BadMac) => {
                view.bad_mac.fetch_add(1, Relaxed);
                return;
            }
            Err(error) => {
                if self.other_versions.first_sight(&error) {
                    tracing::warn!(
                        %error,
                        "a peer runs another release: upgrade the LB and every server of a group together"
                    );
                }
                view.frames_dropped.fetch_add(1, Relaxed);
                return;
            }
        };
        let Frame { header, message } = frame;
        // This driver runs one group (route::group_of).
        // A group that elects by vote has no LB to hear from.
        let lb_less = matches!(self.settings.elector, Elector::Vote(_));
        if header.cluster != self.io.cluster.id
            || header.group != self.io.group
            || header.to != self.io.id
            || (lb_less && header.from == ServerId::LB)
        {
            view.frames_dropped.fetch_add(1, Relaxed);
            return;
        }
        view.frames_received.fetch_add(1, Relaxed);
        // The LB's heartbeat says where each peer takes memcached clients.
        if let (ServerId::LB, Message::Heartbeat { peers, .. }) = (header.from, &message) {
            for peer in peers {
                self.io.peers_tcp.insert(peer.id, peer.tcp);
            }
        }
        // The LB group's list is the driver's: the core addresses one LB.
        if let (ServerId::LB, Message::Lbs { epoch, lbs }) = (header.from, &message) {
            self.io.learn_lbs(*epoch, lbs);
            return;
        }
        self.host
            .receive(&mut self.io, header.from, header.term, message);
    }
}

impl Io<ServerTypes> for DriverIo {
    type Error = StorageError;

    fn now_ms(&self) -> u64 {
        now_ms()
    }

    fn persist_term(&mut self, term: Term) -> Result<(), StorageError> {
        self.meta.current_term = term.0;
        meta::store(&self.data_dir, &self.meta)
    }

    fn truncate_after(&mut self, index: LogIndex) -> Result<(), StorageError> {
        self.log.truncate_after(index.0)
    }

    fn append(
        &mut self,
        index: LogIndex,
        term: Term,
        payload: &Bytes,
        received: bool,
    ) -> Result<(), StorageError> {
        // A leader's entries are its own proposals, encoded here; a
        // follower checks what it received decodes before it makes it
        // durable.
        if received {
            Command::decode(payload.clone()).map_err(|e| StorageError::Corrupt {
                what: "replicated entry",
                path: self.data_dir.clone(),
                offset: index.0,
                reason: e.to_string(),
            })?;
        }
        let len = payload.len() as u64;
        self.keystores.wrote(len);
        self.log.append_encoded(term.0, index.0, payload)?;
        self.unsynced_records += 1;
        self.unsynced_bytes += len;
        Ok(())
    }

    fn sync(&mut self, _through: LogIndex) -> Result<Synced, StorageError> {
        let sync_started = Instant::now();
        self.log.sync()?;
        self.stats
            .log_synced(sync_started, self.unsynced_records, self.unsynced_bytes);
        self.unsynced_records = 0;
        self.unsynced_bytes = 0;
        Ok(Synced::Now)
    }

    fn send(
        &mut self,
        to: ServerId,
        addr: SocketAddr,
        term: Term,
        message: Message,
    ) -> Result<(), StorageError> {
        let frame = Frame {
            header: Header {
                cluster: self.cluster.id,
                group: self.group,
                from: self.id,
                to,
                term,
            },
            message,
        };
        self.out.clear();
        if let Err(error) = frame::encode(&frame, &self.cluster.secret, &mut self.out) {
            tracing::warn!(%error, "cannot encode a frame");
            return Ok(());
        }
        // UDP is lossy anyway: a datagram the socket buffer cannot take
        // within a moment is one more lost, which retransmission covers.
        // What the core sends to "the LB" goes to every LB of the LB group:
        // only the one that leads acts on it, and which one that is changes
        // without the data group hearing of it (DESIGN §3c).
        let lbs = std::slice::from_ref(&addr);
        let to_addrs = if to == ServerId::LB {
            self.lbs.as_ref().map_or(&[][..], |lbs| &lbs.addrs[..])
        } else {
            lbs
        };
        for to_addr in to_addrs {
            if send_datagram(&self.socket, &self.out, *to_addr) {
                self.view.frames_sent.fetch_add(1, Relaxed);
            }
        }
        Ok(())
    }

    fn undecodable(&mut self, error: UndecodableEntry) -> StorageError {
        StorageError::Corrupt {
            what: "committed entry",
            path: self.data_dir.clone(),
            offset: error.index.0,
            reason: error.source.to_string(),
        }
    }

    fn answer_proposal(
        &mut self,
        reply: ProposalReply,
        answer: Result<Written, CommitError>,
    ) -> Result<(), StorageError> {
        reply.send(answer.map(|written| written.outcome));
        Ok(())
    }

    fn answer_read(
        &mut self,
        reply: BatchReply,
        answer: Result<(), CommitError>,
        _state: &mut SharedState,
    ) {
        reply.send(answer);
    }

    fn open_keystore(&mut self) -> Option<(FileAt, std::fs::File)> {
        transfer::open_keystore(&self.data_dir)
    }

    fn create_incoming(&mut self) -> std::io::Result<std::fs::File> {
        std::fs::File::create(self.data_dir.join(transfer::INCOMING_FILE))
    }

    fn install(
        &mut self,
        at: FileAt,
        file: std::fs::File,
        keep_log_after: bool,
    ) -> Result<Option<data::state::State>, StorageError> {
        self.install_incoming(at, file, keep_log_after)
    }

    fn stream_failed(&mut self, error: &dyn std::fmt::Display) {
        tracing::warn!(%error, "receiving a keystore file failed");
    }

    /// Withdraws the published lease at once when the core no longer holds
    /// one (it stepped down, say), before anything else leaves: a promise
    /// to a new term must not go out while connections still read under
    /// this leader's lease.
    fn core_changed(&mut self, core: &Replica) {
        if core.lease_until_ms() == 0 {
            self.view.lease_until_ms.store(0, Ordering::SeqCst);
        }
    }

    fn end_of_turn(
        &mut self,
        core: &mut Replica,
        state: &mut SharedState,
        applied: LogIndex,
        receiving: bool,
    ) -> Result<(), StorageError> {
        self.poll_snapshot(core, state, receiving)?;
        self.publish(core, applied);
        Ok(())
    }
}

impl DriverIo {
    /// Finishes a keystore file that was written (dropping the log it
    /// covers, on disk and in memory), and starts one when enough log was
    /// written since the last.
    fn poll_snapshot(
        &mut self,
        core: &mut Replica,
        state: &SharedState,
        receiving: bool,
    ) -> Result<(), StorageError> {
        if let Some(taken) = self.keystores.finished(&mut self.log, &self.stats, false)? {
            core.compact(LogIndex(taken.index), Term(taken.term));
        }
        // Not while a leader's file arrives: it replaces ours.
        if !receiving {
            // The applied index is committed and still in the in-memory log.
            self.keystores.maybe_start(&self.data_dir, state, |index| {
                core.term_at(LogIndex(index)).map_or(0, |t| t.0)
            });
        }
        Ok(())
    }

    /// Updates what connections and `stats` see.
    fn publish(&self, core: &Replica, applied: LogIndex) {
        let view = &self.view;
        // After the state was brought up to the commit index: a read under
        // the lease sees every write answered so far.
        view.lease_until_ms
            .store(core.lease_until_ms(), Ordering::Release);
        view.role.store(
            match core.role() {
                Role::Leader => 1,
                Role::Learner => 2,
                Role::Follower => 0,
            },
            Relaxed,
        );
        view.term.store(core.term().0, Relaxed);
        let leader = core.leader();
        view.leader.store(leader.map_or(0, |l| l.0), Relaxed);
        view.commit_index.store(core.commit_index().0, Relaxed);
        view.applied_index.store(applied.0, Relaxed);
        view.last_index.store(core.last_index().0, Relaxed);
        self.memory
            .set_group_limit_bytes(core.group_memory_limit_bytes());
        let tcp = leader.and_then(|l| {
            if l == self.id {
                Some(self.tcp_advertise)
            } else {
                self.peers_tcp.get(&l).copied()
            }
        });
        *view
            .leader_tcp
            .lock()
            .expect("view lock is never held across a panic") = tcp;
        if core.elects_by_vote() {
            *view
                .config
                .lock()
                .expect("view lock is never held across a panic") = Configuration::of(core);
        }
    }
}

/// Sends one datagram; false if it could not leave. The socket is
/// non-blocking: when its buffer is full this waits for room a bounded
/// time (what an awaited send would do, on this thread of its own) rather
/// than drop at once. The send is the plain system call: tokio's
/// `try_send_to` would refuse without trying while its reactor, which runs
/// only between turns, has not seen the socket writable again.
fn send_datagram(socket: &UdpSocket, datagram: &[u8], addr: SocketAddr) -> bool {
    let sock = socket2::SockRef::from(socket);
    let addr = socket2::SockAddr::from(addr);
    match sock.send_to(datagram, &addr) {
        Ok(_) => return true,
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
        Err(_) => return false,
    }
    let wait = rustix::time::Timespec {
        tv_sec: 0,
        tv_nsec: (SEND_WAIT_MS_MAX * 1_000_000) as _,
    };
    let mut fds = [rustix::event::PollFd::new(
        socket,
        rustix::event::PollFlags::OUT,
    )];
    if !matches!(rustix::event::poll(&mut fds, Some(&wait)), Ok(1..)) {
        return false;
    }
    sock.send_to(datagram, &addr).is_ok()
}

fn refusal(refused: NotLeader) -> CommitError {
    match refused {
        NotLeader::Follower(_) => CommitError::NotLeader,
        NotLeader::NotReady => CommitError::NotReady,
    }
}

/// The core's clock: monotonic, so leases and timers survive wall-clock
/// steps.
/// A seed for the core's jitter and read question ids that differs at every
/// start of the process, even within one millisecond: the standard
/// library's hasher keys are drawn from the OS at random.
fn jitter_seed(server_id: u64) -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(server_id);
    hasher.write_u64(now_ms());
    hasher.finish()
}

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
