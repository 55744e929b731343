//! One client connection: reads bytes, parses requests, answers reads from
//! the state, sends writes through the commit pipeline, and writes replies in
//! request order.
//!
//! The only code that touches a client socket. Replies are gathered in one
//! output buffer and written with one syscall per batch of pipelined requests.
//! Writes are queued to the commit thread as they are parsed and awaited in
//! order, so a pipeline of sets shares one fsync; a read waits for the writes
//! queued before it on the same connection, so it sees them.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use data::command::{Command, Op, StoreMode};
use data::exptime;
use data::frame::Role;
use data::protocol::client::{encode_gat, encode_get, scan_response, EncodeError, Expect, Status};
use data::protocol::reply::{encode_value, errors, Reply};
use data::protocol::request::{
    admin_replies, parse_request, Admin, ParseError, Request, StatsGroup, Storage,
};
use data::state::{item_cost_bytes, ItemRef, Lookup, Outcome};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{oneshot, OwnedSemaphorePermit};
use tokio_util::sync::CancellationToken;

use crate::clock;
use crate::commit::CommitError;
use crate::config::ReadMode;
use crate::memory::{Reservation, MEMORY_LIMIT_MB_MAX, MEMORY_LIMIT_MB_MIN, MEMORY_UNLIMITED};
use crate::state;
use crate::stats::{GeneralSettings, StateFigures, Stats, VERSION};
use crate::{Backend, Shared};

/// Initial size of a connection's input and output buffers.
const BUFFER_BYTES_INITIAL: usize = 16 * 1024;

/// Replies buffered before they are written even if more requests wait, so a
/// long pipeline of gets cannot grow the output without bound.
const OUTPUT_BYTES_FLUSH: usize = 1024 * 1024;

/// Writes queued on one connection before it stops parsing and waits for the
/// oldest, bounding a connection's share of the commit queue.
const PENDING_WRITES_MAX: usize = 1024;

/// Values one piece of a multi-get or gat may hold, at most, in bytes: a
/// get of more keys than this allows at the item size limit (`-I`) is
/// served a piece at a time, each piece's values written to the client
/// before the next piece is read, so a connection never holds more than
/// about this much of them (plus [`OUTPUT_BYTES_FLUSH`]). 64 keys at the
/// default 1 MiB: most multi-gets are one piece.
const GET_PIECE_BYTES_MAX: usize = 64 * 1024 * 1024;

/// How long a follower waits for a reachable leader before it answers
/// `SERVER_ERROR no leader available`: a failover takes about a second.
const FORWARD_FAILOVER_WAIT_MS: u64 = 3_000;
/// How often it looks for the next leader meanwhile.
const FORWARD_RETRY_MS: u64 = 20;

/// Table buckets one step of `lru_crawler metadump` walks under the state
/// lock (about 100 KiB of lines at a time for small items).
const METADUMP_BUCKETS_PER_STEP: usize = 1024;

/// Appends one `lru_crawler metadump` line for `item`.
fn metadump_line(out: &mut BytesMut, item: &ItemRef<'_>) {
    use std::fmt::Write as _;
    out.extend_from_slice(b"key=");
    for &b in item.key() {
        // memcached's uriencode: unreserved characters as they are.
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.extend_from_slice(&[b]);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    let exp = match item.exptime() {
        exptime::NEVER => -1,
        at => i64::try_from(at).unwrap_or(i64::MAX),
    };
    let size = item_cost_bytes(item.key().len(), item.data().len());
    // memcached ends these lines with a bare newline (and END with \r\n).
    let _ = writeln!(
        out,
        " exp={exp} la={} cas={} fetch=no cls=1 size={size}",
        item.updated_s(),
        item.cas()
    );
}

/// One piece of a multi-key retrieval (see [`GET_PIECE_BYTES_MAX`]).
struct Piece<'k> {
    keys: &'k [Bytes],
    /// The request for just these keys: the client's own when there is
    /// one piece (a follower forwards it).
    raw: Bytes,
    last: bool,
}

/// Cuts `keys` into pieces of `per_piece`; `line` writes the request for
/// one piece's keys.
fn pieces<'k>(
    keys: &'k [Bytes],
    per_piece: usize,
    raw: &Bytes,
    line: impl Fn(&mut BytesMut, &[Bytes]) -> Result<(), EncodeError>,
) -> Vec<Piece<'k>> {
    let count = keys.len().div_ceil(per_piece);
    let mut pieces = Vec::with_capacity(count);
    for (i, keys) in keys.chunks(per_piece).enumerate() {
        let raw = if count == 1 {
            raw.clone()
        } else {
            let mut buf = BytesMut::new();
            // The keys were parsed from a request, so they encode; were one
            // not to, the reply would end before it.
            if line(&mut buf, keys).is_err() {
                break;
            }
            buf.freeze()
        };
        pieces.push(Piece {
            keys,
            raw,
            last: i + 1 == count,
        });
    }
    pieces
}

/// Removes the `END` line that closes a forwarded retrieval reply, so that
/// the next piece's values follow; false if the reply did not end with one
/// (an error line ended it).
fn strip_end(output: &mut BytesMut) -> bool {
    const END: &[u8] = b"END\r\n";
    if output.ends_with(END) {
        output.truncate(output.len() - END.len());
        true
    } else {
        false
    }
}

/// What became of a request a follower tried to forward.
#[derive(Debug, PartialEq, Eq)]
enum Forwarded {
    /// Answered (the leader's reply or an error line is in the output).
    Done,
    /// This server is the leader now: serve the request here.
    BecameLeader,
}

/// How a committed write's outcome becomes a reply.
enum Render {
    /// The usual reply for the outcome, or nothing under noreply.
    Outcome { noreply: bool },
    /// gat/gats: VALUE blocks, then END after the last piece.
    Values { with_cas: bool, end: bool },
    /// A fixed reply whatever the outcome (the delete behind a too-large set).
    Fixed(Option<&'static str>),
}

struct PendingWrite {
    outcome: oneshot::Receiver<Result<Outcome, CommitError>>,
    render: Render,
    kind: WriteKind,
    /// What the write counts against the memory limit until its outcome
    /// (which follows its apply) has arrived.
    _memory: Reservation,
    /// Its share of the bound on writes in flight, held as long.
    _room: OwnedSemaphorePermit,
    /// Whether its outcome is counted in this server's `stats`.
    counted: bool,
}

/// What the write was, for counting outcomes in stats.
#[derive(Clone, Copy)]
enum WriteKind {
    Store(StoreMode),
    Delete,
    Incr,
    Decr,
    Touch,
    /// gat/gats over this many keys.
    GetAndTouch(u64),
    Other,
}

/// What the connection does after a batch of requests.
#[derive(PartialEq, Eq)]
enum Next {
    Continue,
    /// Write what is buffered, then go on with the input already received
    /// (the output or the queue of writes reached its bound).
    Drain,
    /// Write what is buffered and close.
    Close,
}

pub struct Connection {
    stream: TcpStream,
    shared: Arc<Shared>,
    backend: Backend,
    input: BytesMut,
    output: BytesMut,
    /// Bytes of a rejected data block still to be thrown away as they arrive.
    discard_bytes: u64,
    pending: VecDeque<PendingWrite>,
    /// Reads from the socket so far, and that count when the last read
    /// barrier (ReadIndex round) that succeeded was asked for: every request
    /// already in the input buffer then arrived before the round started,
    /// so the round serves them all, and a pipeline of gets costs one round
    /// instead of one each.
    socket_reads: u64,
    barrier_at_socket_read: Option<u64>,
    /// Keys of the gat pieces queued since the last [`Self::finish_pending`]:
    /// their values wait in the outcomes until rendered.
    pending_hit_keys: usize,
    /// A write to the client failed: the connection is done.
    broken: bool,
    /// A follower's forwarding link (it sent `forwarder`): the follower
    /// counts these requests in its own `stats`, so this server does not,
    /// except what only it can see (below, [`Self::counts_here`]).
    forwarded_link: bool,
    /// The server's shutdown token, for `shutdown` under `-A`.
    server_shutdown: CancellationToken,
}

impl Connection {
    pub fn new(stream: TcpStream, shared: Arc<Shared>, backend: Backend) -> Connection {
        Connection {
            stream,
            shared,
            backend,
            input: BytesMut::with_capacity(BUFFER_BYTES_INITIAL),
            output: BytesMut::with_capacity(BUFFER_BYTES_INITIAL),
            discard_bytes: 0,
            pending: VecDeque::new(),
            socket_reads: 0,
            barrier_at_socket_read: None,
            pending_hit_keys: 0,
            broken: false,
            forwarded_link: false,
            server_shutdown: CancellationToken::new(),
        }
    }

    /// Serves the connection until the client leaves, sends `quit`, or the
    /// server shuts down (then requests already received are still answered).
    pub async fn run(mut self, shutdown: CancellationToken) {
        self.server_shutdown = shutdown.clone();
        loop {
            let next = self.process_input().await;
            self.finish_pending().await;
            self.flush_output().await;
            if self.broken {
                return;
            }
            match next {
                Next::Close => {
                    let _ = self.stream.shutdown().await;
                    return;
                }
                Next::Drain => continue,
                Next::Continue => {}
            }
            let read = tokio::select! {
                read = self.stream.read_buf(&mut self.input) => read,
                () = shutdown.cancelled() => return,
            };
            match read {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    self.socket_reads += 1;
                    Stats::add(&self.shared.stats.counters.bytes_read, n as u64);
                }
            }
        }
    }

    /// Handles every complete request in the input buffer.
    async fn process_input(&mut self) -> Next {
        let limits = self.shared.limits;
        loop {
            if self.broken {
                return Next::Close;
            }
            if self.discard_bytes > 0 {
                let n = self.discard_bytes.min(self.input.len() as u64);
                self.input.advance(n as usize);
                self.discard_bytes -= n;
                if self.discard_bytes > 0 {
                    return Next::Continue;
                }
            }
            if self.output.len() >= OUTPUT_BYTES_FLUSH || self.pending.len() >= PENDING_WRITES_MAX {
                return Next::Drain;
            }
            match parse_request(&self.input, &limits) {
                Ok(None) => return Next::Continue,
                Ok(Some((request, consumed))) => {
                    // Kept whole: a follower forwards it to the leader as is.
                    let raw = self.input.split_to(consumed).freeze();
                    if self.handle(request, raw).await == Next::Close {
                        return Next::Close;
                    }
                }
                Err(ParseError::Reply {
                    reply,
                    consumed,
                    discard,
                }) => {
                    self.input.advance(consumed);
                    self.discard_bytes = discard;
                    if let Some(reply) = reply {
                        self.reply_in_order(Reply::Error(reply)).await;
                    }
                }
                Err(ParseError::TooLarge {
                    consumed,
                    discard,
                    mode,
                    key,
                    noreply,
                }) => {
                    self.input.advance(consumed);
                    self.discard_bytes = discard;
                    Stats::bump(&self.shared.stats.counters.store_too_large);
                    let reply = (!noreply).then_some(errors::TOO_LARGE);
                    if mode == StoreMode::Set {
                        // memcached drops the old value so a failed overwrite
                        // cannot leave stale data behind.
                        let mut raw = BytesMut::with_capacity(key.len() + 20);
                        raw.extend_from_slice(b"delete ");
                        raw.extend_from_slice(&key);
                        raw.extend_from_slice(b" noreply\r\n");
                        let op = Op::Delete { key };
                        let render = Render::Fixed(reply);
                        self.queue_write(op, render, WriteKind::Other, raw.freeze(), true)
                            .await;
                    } else if let Some(reply) = reply {
                        self.reply_in_order(Reply::Error(reply)).await;
                    }
                }
                Err(ParseError::Close) => return Next::Close,
                Err(ParseError::Binary { reply }) => {
                    self.reply_in_order(Reply::Error(reply)).await;
                    return Next::Close;
                }
            }
        }
    }

    async fn handle(&mut self, request: Request, raw: Bytes) -> Next {
        // A clone, so counters can be bumped while `self` is borrowed mutably.
        let shared = self.shared.clone();
        let counters = &shared.stats.counters;
        match request {
            Request::Get { keys, with_cas } => {
                self.finish_pending().await;
                let pieces = pieces(&keys, self.keys_per_piece(), &raw, |line, piece| {
                    encode_get(line, piece, with_cas)
                });
                for Piece { keys, raw, last } in pieces {
                    let before = self.output.len();
                    if self.read_allowed(&raw).await {
                        self.serve_get(keys, with_cas);
                        if last {
                            Reply::End.encode(&mut self.output);
                        }
                    } else {
                        // Forwarded (the leader's reply) or an error line.
                        self.count_forwarded_get(keys.len(), &self.output[before..]);
                        if !last && !strip_end(&mut self.output) {
                            // An error line ended the reply.
                            break;
                        }
                    }
                    if self.output.len() >= OUTPUT_BYTES_FLUSH {
                        self.flush_output().await;
                    }
                }
            }
            Request::GetAndTouch {
                exptime,
                keys,
                with_cas,
            } => {
                let resolved = exptime::resolve(exptime, clock::now_s());
                let per_piece = self.keys_per_piece();
                let pieces = pieces(&keys, per_piece, &raw, |line, piece| {
                    encode_gat(line, exptime, piece, with_cas)
                });
                for Piece { keys, raw, last } in pieces {
                    let kind = WriteKind::GetAndTouch(keys.len() as u64);
                    let op = Op::GetAndTouch {
                        keys: keys.to_vec(),
                        exptime: resolved,
                    };
                    let render = Render::Values {
                        with_cas,
                        end: last,
                    };
                    self.queue_write(op, render, kind, raw, false).await;
                    // The values of queued gats wait in their outcomes: at
                    // most about one piece's worth before they go out.
                    self.pending_hit_keys += keys.len();
                    if self.pending_hit_keys >= per_piece {
                        self.finish_pending().await;
                        self.flush_output().await;
                    }
                }
            }
            Request::Store(storage) => {
                if !self.forwarded_link {
                    Stats::bump(&counters.cmd_set);
                }
                let Storage {
                    mode,
                    key,
                    flags,
                    exptime,
                    data,
                    cas_unique,
                    noreply,
                } = storage;
                let exptime = exptime::resolve(exptime, clock::now_s());
                let op = Op::Store {
                    mode,
                    key,
                    flags,
                    exptime,
                    data,
                    cas_unique,
                };
                let kind = WriteKind::Store(mode);
                self.queue_write(op, Render::Outcome { noreply }, kind, raw, noreply)
                    .await;
            }
            Request::Delete { key, noreply } => {
                self.queue_write(
                    Op::Delete { key },
                    Render::Outcome { noreply },
                    WriteKind::Delete,
                    raw,
                    noreply,
                )
                .await;
            }
            Request::Arith {
                key,
                delta,
                incr,
                noreply,
            } => {
                let kind = if incr {
                    WriteKind::Incr
                } else {
                    WriteKind::Decr
                };
                self.queue_write(
                    Op::Arith { key, delta, incr },
                    Render::Outcome { noreply },
                    kind,
                    raw,
                    noreply,
                )
                .await;
            }
            Request::Touch {
                key,
                exptime,
                noreply,
            } => {
                if !self.forwarded_link {
                    Stats::bump(&counters.cmd_touch);
                }
                let exptime = exptime::resolve(exptime, clock::now_s());
                self.queue_write(
                    Op::Touch { key, exptime },
                    Render::Outcome { noreply },
                    WriteKind::Touch,
                    raw,
                    noreply,
                )
                .await;
            }
            Request::FlushAll { delay, noreply } => {
                if !self.forwarded_link {
                    Stats::bump(&counters.cmd_flush);
                }
                // A negative or zero delay flushes now; otherwise the delay
                // follows the exptime rules (relative or absolute).
                let deadline_s = if delay <= 0 {
                    0
                } else {
                    exptime::resolve(delay, clock::now_s())
                };
                self.queue_write(
                    Op::FlushAll { deadline_s },
                    Render::Outcome { noreply },
                    WriteKind::Other,
                    raw,
                    noreply,
                )
                .await;
            }
            Request::Version => {
                self.reply_in_order(Reply::Version(VERSION.to_string()))
                    .await;
            }
            Request::Verbosity { noreply } => {
                if !noreply {
                    self.reply_in_order(Reply::Ok).await;
                }
            }
            Request::CacheMemlimit { megabytes, noreply } => {
                // memcached's bounds and replies; the limit is this
                // server's, enforced while it leads.
                let megabytes = u64::from(megabytes);
                let reply = if megabytes < MEMORY_LIMIT_MB_MIN {
                    Reply::Error(errors::MEMLIMIT_TOO_SMALL)
                } else if megabytes > MEMORY_LIMIT_MB_MAX {
                    Reply::Error(errors::MEMLIMIT_NOT_BYTES)
                } else {
                    shared.memory.set_limit_bytes(megabytes * 1024 * 1024);
                    Reply::Ok
                };
                if !noreply {
                    self.reply_in_order(reply).await;
                }
            }
            Request::Stats(group) => {
                let reply = self.stats_reply(group);
                self.reply_in_order(reply).await;
            }
            Request::Admin(Admin::Noted(reply)) => {
                self.reply_in_order(Reply::Error(reply)).await;
            }
            Request::Admin(Admin::MetaDump) => {
                self.finish_pending().await;
                self.metadump().await;
            }
            Request::Admin(Admin::Shutdown { mode_ok }) => {
                let reply = if !shared.config.shutdown_enabled {
                    admin_replies::SHUTDOWN_DISABLED
                } else if !mode_ok {
                    admin_replies::SHUTDOWN_BAD_MODE
                } else {
                    // memcached closes the connection without a reply; the
                    // one shutdown path finishes what others sent.
                    tracing::info!("shutdown requested by a client");
                    self.server_shutdown.cancel();
                    return Next::Close;
                };
                self.reply_in_order(Reply::Error(reply)).await;
            }
            Request::Forwarder => {
                self.forwarded_link = true;
                self.reply_in_order(Reply::Ok).await;
            }
            Request::Quit => return Next::Close,
        }
        Next::Continue
    }

    fn stats_reply(&self, group: StatsGroup) -> Reply {
        let stats = &self.shared.stats;
        match group {
            StatsGroup::General => {
                let figures = {
                    let state = state::read(&self.shared.state);
                    StateFigures {
                        curr_items: state.len() as u64,
                        bytes: state.bytes(),
                        applied_index: state.applied_index(),
                        reclaimed: state.reclaimed(),
                        memory_bytes: state.memory_bytes(),
                    }
                };
                let config = &self.shared.config;
                let settings = GeneralSettings {
                    connections_max: config.connections_max,
                    threads: config.threads,
                    limit_bytes: self.shared.memory.limit_bytes(),
                };
                let mut lines = stats.general(settings, figures);
                if let Backend::Cluster(cluster) = &self.backend {
                    lines.extend(cluster.view.report(cluster.read_mode));
                    // The limit this server checks writes against: on the
                    // leader the smallest in its group (see memory.rs).
                    lines.push((
                        "repl_group_limit_maxbytes".into(),
                        self.shared.memory.effective_limit_bytes().to_string(),
                    ));
                }
                Reply::Stats(lines)
            }
            StatsGroup::Settings => Reply::Stats(
                self.shared
                    .config
                    .stats_settings(self.shared.memory.limit_bytes()),
            ),
            StatsGroup::Reset => {
                stats.reset();
                Reply::Reset
            }
            // memcached's slab and connection internals have no equivalent
            // here: answer with an empty group, which every client accepts.
            StatsGroup::Items
            | StatsGroup::Slabs
            | StatsGroup::Sizes
            | StatsGroup::Conns
            | StatsGroup::CacheDump => Reply::Stats(Vec::new()),
        }
    }

    /// Queues a write with the commit pipeline; its reply is rendered in
    /// order by [`Self::finish_pending`]. A follower forwards it to the leader
    /// instead (after the writes queued before it).
    async fn queue_write(
        &mut self,
        op: Op,
        render: Render,
        kind: WriteKind,
        raw: Bytes,
        noreply: bool,
    ) {
        if let Backend::Cluster(cluster) = &self.backend {
            if cluster.view.role() != Role::Leader {
                let expect = match render {
                    Render::Values { .. } => Expect::Retrieval,
                    _ => Expect::Line,
                };
                self.finish_pending().await;
                let before = self.output.len();
                if self.forward(&raw, expect, noreply, false).await == Forwarded::Done {
                    if !noreply {
                        self.count_forwarded(kind, &self.output[before..]);
                    }
                    // The delete behind a too-large set is forwarded
                    // silently; the client still gets its error line.
                    match render {
                        Render::Fixed(Some(line)) => Reply::Error(line).encode(&mut self.output),
                        // A gat piece before the last: the next one's values follow.
                        Render::Values { end: false, .. } => {
                            strip_end(&mut self.output);
                        }
                        _ => {}
                    }
                    return;
                }
                // This server became the leader meanwhile: commit it here.
            }
        }
        // Checked here, where the write is proposed (a follower forwarded
        // it above): apply never fails for memory on any replica.
        // Only a store can add to the items; the state lock is not taken
        // for anything else, nor without a limit.
        let reserved = match &op {
            Op::Store { .. } if self.shared.memory.limit_bytes() != MEMORY_UNLIMITED => {
                let state = state::read(&self.shared.state);
                self.shared
                    .memory
                    .reserve(state.memory_bytes(), state.growth_bytes(&op))
            }
            _ => Ok(Reservation::none()),
        };
        let Ok(reservation) = reserved else {
            if self.counts_here(noreply) {
                Stats::bump(&self.shared.stats.counters.store_no_memory);
            }
            if !noreply {
                self.reply_in_order(Reply::Error(errors::OUT_OF_MEMORY))
                    .await;
            }
            return;
        };
        let command = Command {
            time_s: clock::now_s(),
            op,
        };
        let bytes = command.encoded_len();
        let room = match self.shared.write_budget.try_take(bytes) {
            Some(room) => room,
            None => {
                // Give back this connection's own room first (its queued
                // writes' replies), so that it never waits for itself.
                self.finish_pending().await;
                self.shared.write_budget.take(bytes).await
            }
        };
        match self.backend.submit(command).await {
            Ok(outcome) => self.pending.push_back(PendingWrite {
                outcome,
                render,
                kind,
                _memory: reservation,
                _room: room,
                counted: self.counts_here(noreply),
            }),
            Err(error) => {
                self.reply_in_order(Reply::Error(commit_error_line(error)))
                    .await
            }
        }
    }

    /// Whether a read may be served from the local state now. In cluster
    /// mode with linearizable reads, the leader answers at once under its
    /// lease, and otherwise first confirms it still leads (ReadIndex); a
    /// follower forwards the read and returns false.
    async fn read_allowed(&mut self, raw: &Bytes) -> bool {
        let Backend::Cluster(cluster) = &self.backend else {
            return true;
        };
        if cluster.read_mode == ReadMode::Local {
            return true;
        }
        if cluster.view.role() != Role::Leader
            && self.forward(raw, Expect::Retrieval, false, true).await == Forwarded::Done
        {
            return false;
        }
        let Backend::Cluster(cluster) = &self.backend else {
            return true;
        };
        if cluster.read_mode == ReadMode::Linearizable && cluster.view.holds_lease() {
            return true;
        }
        if self.barrier_at_socket_read == Some(self.socket_reads) {
            // This request was in the buffer before the last round started.
            return true;
        }
        let asked_at = self.socket_reads;
        match cluster.read_barrier().await {
            Ok(()) => {
                self.barrier_at_socket_read = Some(asked_at);
                true
            }
            Err(error) => {
                Reply::Error(commit_error_line(error)).encode(&mut self.output);
                false
            }
        }
    }

    /// Relays one request to the leader and appends its reply. During a
    /// failover it waits (bounded) for the next leader rather than failing
    /// at once, so plain memcached clients ride through it: a request that
    /// never reached a leader is sent again, and a read is repeated even if
    /// it did. Returns [`Forwarded::BecameLeader`] when this server was named
    /// leader meanwhile; the caller then serves the request itself.
    async fn forward(
        &mut self,
        raw: &[u8],
        expect: Expect,
        noreply: bool,
        read_only: bool,
    ) -> Forwarded {
        let Backend::Cluster(cluster) = &self.backend else {
            return Forwarded::Done;
        };
        let view = cluster.view.clone();
        let deadline =
            tokio::time::Instant::now() + Duration::from_millis(FORWARD_FAILOVER_WAIT_MS);
        let mut failed_leader = None;
        let error = loop {
            if view.role() == Role::Leader {
                return Forwarded::BecameLeader;
            }
            let leader = view.leader_tcp().filter(|l| Some(*l) != failed_leader);
            if let Some(leader) = leader {
                match self
                    .shared
                    .leader_link
                    .forward(leader, raw, expect, noreply)
                    .await
                {
                    Ok(reply) => {
                        self.output.extend_from_slice(&reply);
                        return Forwarded::Done;
                    }
                    Err(error) if read_only || error.never_sent() => {
                        tracing::debug!(%error, "forwarding failed; waiting for a leader");
                        failed_leader = Some(leader);
                    }
                    // It may have been executed before the leader failed.
                    Err(_) => break errors::OUTCOME_UNKNOWN,
                }
            }
            if tokio::time::Instant::now() >= deadline {
                break errors::NO_LEADER;
            }
            tokio::time::sleep(Duration::from_millis(FORWARD_RETRY_MS)).await;
        };
        if !noreply {
            Reply::Error(error).encode(&mut self.output);
        }
        Forwarded::Done
    }

    /// `lru_crawler metadump`: a line per visible item of this server's
    /// state, as memcached's (`key=<uri-encoded> exp=<-1 or unix time>
    /// la=<last write> cas=<unique> fetch=no cls=1 size=<record bytes>`),
    /// then `END`. The table is walked a bounded step at a time, the lines
    /// written out between steps, so a large state streams; like memcached's
    /// crawler it is not a snapshot (a write between steps may or may not
    /// show). Served by any server from its own applied state.
    async fn metadump(&mut self) {
        let mut cursor = 0;
        loop {
            {
                let state = state::read(&self.shared.state);
                let output = &mut self.output;
                cursor = state.scan(cursor, METADUMP_BUCKETS_PER_STEP, |item| {
                    if state.is_visible(&item) {
                        metadump_line(output, &item);
                    }
                    true
                });
            }
            if cursor == 0 {
                break;
            }
            if self.output.len() >= OUTPUT_BYTES_FLUSH {
                self.flush_output().await;
                if self.broken {
                    return;
                }
            }
        }
        Reply::End.encode(&mut self.output);
    }

    /// Keys of a multi-get or gat served as one piece (see
    /// [`GET_PIECE_BYTES_MAX`]).
    fn keys_per_piece(&self) -> usize {
        (GET_PIECE_BYTES_MAX / self.shared.limits.item_bytes_max.max(1)).max(1)
    }

    /// Appends the VALUE blocks of the visible items among `keys`, counting
    /// hits and misses; the caller checked that the state may be read.
    fn serve_get(&mut self, keys: &[Bytes], with_cas: bool) {
        let shared = self.shared.clone();
        let counters = &shared.stats.counters;
        let now_s = clock::now_s();
        // A forwarded get is counted by the follower, from the reply; why a
        // key missed only this server can tell (get_expired, get_flushed).
        let counted = self.counts_here(false);
        let bump = |counter: &std::sync::atomic::AtomicU64| {
            if counted {
                Stats::bump(counter);
            }
        };
        let state = state::read(&shared.state);
        for key in keys {
            bump(&counters.cmd_get);
            match state.lookup(key, now_s) {
                Lookup::Hit(item) => {
                    bump(&counters.get_hits);
                    let cas = with_cas.then_some(item.cas());
                    encode_value(&mut self.output, key, item.flags(), item.data(), cas);
                }
                Lookup::Miss => bump(&counters.get_misses),
                Lookup::Expired => {
                    bump(&counters.get_misses);
                    Stats::bump(&counters.get_expired);
                }
                Lookup::Flushed => {
                    bump(&counters.get_misses);
                    Stats::bump(&counters.get_flushed);
                }
            }
        }
    }

    /// Writes the buffered replies to the client. A failed write marks the
    /// connection broken (its output is dropped; `run` then ends it).
    async fn flush_output(&mut self) {
        if self.output.is_empty() || self.broken {
            self.output.clear();
            return;
        }
        Stats::add(
            &self.shared.stats.counters.bytes_written,
            self.output.len() as u64,
        );
        if self.stream.write_all(&self.output).await.is_err() {
            self.broken = true;
        }
        self.output.clear();
    }

    /// Appends a reply that needs no commit, after the writes queued before it.
    async fn reply_in_order(&mut self, reply: Reply) {
        self.finish_pending().await;
        reply.encode(&mut self.output);
    }

    /// Waits for every queued write, in order, and renders its reply.
    async fn finish_pending(&mut self) {
        self.pending_hit_keys = 0;
        while let Some(write) = self.pending.pop_front() {
            let outcome = write.outcome.await.unwrap_or(Err(CommitError::Storage));
            let outcome = match outcome {
                Ok(outcome) => outcome,
                Err(error) => {
                    Reply::Error(commit_error_line(error)).encode(&mut self.output);
                    continue;
                }
            };
            if write.counted {
                self.count(write.kind, Counted::from(&outcome));
            }
            match write.render {
                Render::Outcome { noreply: true } | Render::Fixed(None) => {}
                Render::Outcome { noreply: false } => {
                    Reply::from_outcome(&outcome).encode(&mut self.output);
                }
                Render::Fixed(Some(reply)) => Reply::Error(reply).encode(&mut self.output),
                Render::Values { with_cas, end } => {
                    if let Outcome::Hits(hits) = &outcome {
                        for hit in hits {
                            let cas = with_cas.then_some(hit.cas);
                            encode_value(&mut self.output, &hit.key, hit.flags, &hit.data, cas);
                        }
                    }
                    if end {
                        Reply::End.encode(&mut self.output);
                    }
                    // A piece of a large gat: out before the next is rendered.
                    if self.output.len() >= OUTPUT_BYTES_FLUSH {
                        self.flush_output().await;
                    }
                }
            }
        }
    }

    /// Whether this server counts the outcome of a request it serves:
    /// always, unless a follower forwarded it and reads the reply (then the
    /// follower counts it); a noreply request's outcome the follower never
    /// sees, so that is counted here.
    fn counts_here(&self, noreply: bool) -> bool {
        !self.forwarded_link || noreply
    }

    fn count(&self, kind: WriteKind, counted: Counted) {
        let c = &self.shared.stats.counters;
        let counter = match (kind, counted) {
            (WriteKind::Store(_), Counted::Stored)
            | (WriteKind::Incr | WriteKind::Decr, Counted::Number) => {
                Stats::bump(&c.total_items);
                match kind {
                    WriteKind::Store(StoreMode::Cas) => &c.cas_hits,
                    WriteKind::Incr => &c.incr_hits,
                    WriteKind::Decr => &c.decr_hits,
                    _ => return,
                }
            }
            (WriteKind::Store(StoreMode::Cas), Counted::Exists) => &c.cas_badval,
            (WriteKind::Store(StoreMode::Cas), Counted::NotFound) => &c.cas_misses,
            (WriteKind::Delete, Counted::Deleted) => &c.delete_hits,
            (WriteKind::Delete, _) => &c.delete_misses,
            (WriteKind::Incr, Counted::NotFound) => &c.incr_misses,
            (WriteKind::Decr, Counted::NotFound) => &c.decr_misses,
            (WriteKind::Touch, Counted::Touched) => &c.touch_hits,
            (WriteKind::Touch, _) => &c.touch_misses,
            (WriteKind::GetAndTouch(keys), Counted::Hits(hits)) => {
                // gat counts as memcached does: in the touch counters, per key.
                Stats::add(&c.cmd_touch, keys);
                Stats::add(&c.touch_hits, hits);
                Stats::add(&c.touch_misses, keys.saturating_sub(hits));
                return;
            }
            (_, Counted::OutOfMemory) => &c.store_no_memory,
            _ => return,
        };
        Stats::bump(counter);
    }

    /// Counts a request this follower forwarded, from the leader's `reply`
    /// to it (the leader left the counting to this server).
    fn count_forwarded(&self, kind: WriteKind, reply: &[u8]) {
        let expect = match kind {
            WriteKind::GetAndTouch(_) => Expect::Retrieval,
            _ => Expect::Line,
        };
        if let Some(counted) = Counted::from_reply(reply, expect) {
            self.count(kind, counted);
        }
    }

    /// Counts a forwarded get of `keys` keys from the leader's `reply`.
    fn count_forwarded_get(&self, keys: usize, reply: &[u8]) {
        let Some(Counted::Hits(hits)) = Counted::from_reply(reply, Expect::Retrieval) else {
            return; // An error line: nothing was looked up.
        };
        let c = &self.shared.stats.counters;
        let keys = keys as u64;
        Stats::add(&c.cmd_get, keys);
        Stats::add(&c.get_hits, hits);
        Stats::add(&c.get_misses, keys.saturating_sub(hits));
    }
}

/// What a request's reply says, for the counters: from its outcome on this
/// server, or from the leader's reply to a forwarded request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Counted {
    Stored,
    Exists,
    NotFound,
    Deleted,
    Touched,
    Number,
    /// A retrieval's hits.
    Hits(u64),
    OutOfMemory,
    Other,
}

impl From<&Outcome> for Counted {
    fn from(outcome: &Outcome) -> Counted {
        match outcome {
            Outcome::Stored => Counted::Stored,
            Outcome::Exists => Counted::Exists,
            Outcome::NotFound => Counted::NotFound,
            Outcome::Deleted => Counted::Deleted,
            Outcome::Touched => Counted::Touched,
            Outcome::Number(_) => Counted::Number,
            Outcome::Hits(hits) => Counted::Hits(hits.len() as u64),
            Outcome::NotStored | Outcome::NonNumeric | Outcome::Ok | Outcome::Reclaimed(_) => {
                Counted::Other
            }
        }
    }
}

impl Counted {
    /// `None` for an error line other than out-of-memory: the request got
    /// no outcome (no leader, leadership lost, a non-numeric counter), and
    /// an outcome that was not reached is not counted, as on the leader.
    fn from_reply(reply: &[u8], expect: Expect) -> Option<Counted> {
        if reply == errors::OUT_OF_MEMORY.as_bytes() {
            return Some(Counted::OutOfMemory);
        }
        let (status, _) = scan_response(reply, expect).ok()??;
        Some(match status {
            _ if status.is_error() => return None,
            Status::Stored => Counted::Stored,
            Status::Exists => Counted::Exists,
            Status::NotFound => Counted::NotFound,
            Status::Deleted => Counted::Deleted,
            Status::Touched => Counted::Touched,
            Status::Number(_) => Counted::Number,
            Status::Values(hits) => Counted::Hits(hits as u64),
            _ => Counted::Other,
        })
    }
}

/// The error line a client gets when its write could not be committed.
fn commit_error_line(error: CommitError) -> &'static str {
    match error {
        CommitError::Storage => errors::STORAGE_FAILED,
        CommitError::NotLeader => errors::NO_LEADER,
        CommitError::NotReady => errors::NOT_READY,
        CommitError::Unknown => errors::OUTCOME_UNKNOWN,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A follower counts a forwarded request from the leader's reply; an
    /// error line means no outcome was reached and counts nothing (a
    /// forwarded delete that found no leader is not a delete miss).
    #[test]
    fn forwarded_replies_count_only_reached_outcomes() {
        let line = |reply: &str| Counted::from_reply(reply.as_bytes(), Expect::Line);
        assert_eq!(line("DELETED\r\n"), Some(Counted::Deleted));
        assert_eq!(line("NOT_FOUND\r\n"), Some(Counted::NotFound));
        assert_eq!(line("42\r\n"), Some(Counted::Number));
        assert_eq!(line(errors::OUT_OF_MEMORY), Some(Counted::OutOfMemory));
        assert_eq!(line(errors::NO_LEADER), None);
        assert_eq!(line(errors::OUTCOME_UNKNOWN), None);
        assert_eq!(line(errors::NON_NUMERIC), None);
        let values = b"VALUE a 0 1\r\nx\r\nVALUE b 0 1\r\ny\r\nEND\r\n";
        assert_eq!(
            Counted::from_reply(values, Expect::Retrieval),
            Some(Counted::Hits(2))
        );
    }
}
