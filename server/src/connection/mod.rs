//! One client connection: reads bytes, parses requests, answers reads from
//! the state, sends writes through the commit pipeline, and writes replies in
//! request order.
//!
//! The only code that touches a client socket. Replies are gathered in one
//! output buffer and written with one syscall per batch of pipelined requests.
//! Writes are queued to the commit thread as they are parsed and awaited in
//! order, so a pipeline of sets shares one fsync; a read waits for the writes
//! queued before it on the same connection, so it sees them.
//!
//! Where a request is served is not decided here: every request that
//! touches the state passes [`route`], and a request for the leader goes
//! through [`crate::forward`]. This module keeps bytes, pipelining and reply
//! order; `retrieval` cuts multi-key reads into bounded pieces, `counting`
//! moves the `stats` counters, `admin` answers `stats` and `metadump`.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::{Buf, Bytes, BytesMut};
use data::admin_proof::{self, CHALLENGE_BYTES, PROOF_BYTES};
use data::command::{Command, Op, StoreMode};
use data::exptime;
use data::frame::Role;
use data::protocol::auth::{replies as auth_replies, text_gate, Gate, Login, CHALLENGE_PREFIX};
use data::protocol::binary;
use data::protocol::client::{encode_gat, encode_get, scan_response, EncodeError, Expect, Status};
use data::protocol::meta::MetaRequest;
use data::protocol::reply::{encode_value, errors, Reply};
use data::protocol::request::{
    admin_replies, parse_request, Admin, ParseError, Request, StatsGroup, Storage,
};
use data::state::{item_cost_bytes, ItemRef, Lookup, Outcome};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{oneshot, OwnedSemaphorePermit};
use tokio_util::sync::CancellationToken;

use crate::clock;
use crate::config::ReadMode;
use crate::forward::{Framing, Relayed};
use crate::memory::{Reservation, MEMORY_LIMIT_MB_MAX, MEMORY_LIMIT_MB_MIN};
use crate::route::{route, Access, Membership, Route};
use crate::state;
use crate::stats::{GeneralSettings, StateFigures, Stats, VERSION};
use crate::tls::ClientStream;
use crate::write_path::CommitError;
use crate::{Backend, Shared};

mod admin;
mod binary_requests;
mod counting;
mod meta_requests;
mod retrieval;

use counting::Counted;
use retrieval::{pieces, strip_end, Piece, Reading};

/// Initial size of a connection's input and output buffers.
const BUFFER_BYTES_INITIAL: usize = 16 * 1024;

/// Replies buffered before they are written even if more requests wait, so a
/// long pipeline of gets cannot grow the output without bound.
const OUTPUT_BYTES_FLUSH: usize = 1024 * 1024;

/// Requests awaiting a reply (writes, forwarded requests) queued on one
/// connection before it stops parsing and renders them, bounding a
/// connection's share of the commit queue and of the forwarding lanes.
const PENDING_WRITES_MAX: usize = 1024;

/// How a committed write's outcome becomes a reply.
enum Render {
    /// The usual reply for the outcome, or nothing under noreply.
    Outcome { noreply: bool },
    /// gat/gats: VALUE blocks, then END after the last piece.
    Values { with_cas: bool, end: bool },
    /// A fixed reply whatever the outcome (the delete behind a too-large set).
    Fixed(Option<Bytes>),
    /// A binary-protocol response packet.
    Binary(binary::Render),
    /// A meta response; `exptime` is the one a touch (`mg ... T`) set.
    Meta {
        request: Box<MetaRequest>,
        exptime: exptime::AbsTime,
    },
}

impl Render {
    /// Writes the error a request gets when it reached no outcome (`line`
    /// is one of [`errors`]), in its request's protocol.
    fn put_error(&self, out: &mut BytesMut, line: &'static str) {
        match self {
            Render::Binary(render) => {
                let (status, text) = binary::Status::of_error_line(line);
                binary::put_error_text(out, render.echo, status, text);
            }
            _ => Reply::Error(line).encode(out),
        }
    }
}

/// A request awaiting its reply, in the connection's order: a write on
/// this server's write path, or a request forwarded to the leader. The
/// queue holds one kind at a time (a connection switching between them
/// first finishes what it queued), so that a request never overtakes the
/// one before it.
enum Pending {
    Local(PendingWrite),
    Forwarded(PendingForward),
}

/// A request forwarded to the leader ([`crate::forward`]).
struct PendingForward {
    reply: oneshot::Receiver<Relayed>,
    then: Then,
}

/// What the connection does with a forwarded request's reply.
enum Then {
    /// A write: the reply (or an error line) is rendered as `render`
    /// says, and counted from the reply.
    Write {
        kind: WriteKind,
        render: Render,
        noreply: bool,
    },
    /// A piece of the get numbered `get`, of `keys` keys: counted from the
    /// reply; a piece before the last loses its `END`, and after one that
    /// ended in an error line the get's other pieces are dropped.
    GetPiece { keys: usize, last: bool, get: u64 },
}

struct PendingWrite {
    outcome: oneshot::Receiver<Result<Outcome, CommitError>>,
    render: Render,
    kind: WriteKind,
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
    /// A binary get of one key forwarded to the leader (counted from its
    /// reply).
    Get,
    Other,
}

/// Where a read is served ([`Connection::read_at`]).
enum ReadAt {
    Here,
    Leader,
    /// No server can serve it now: this error line.
    Refused(&'static str),
}

/// What became of the front of an unauthenticated text connection's input
/// ([`Connection::text_gate`]).
enum Gated {
    /// A request that is let through (`forwarder`): parse it.
    Parse,
    /// A line (and its block) was answered: on to the next.
    Answered,
    /// `process_input` returns this.
    Return(Next),
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
    stream: ClientStream,
    shared: Arc<Shared>,
    backend: Backend,
    input: BytesMut,
    output: BytesMut,
    /// Bytes of a rejected data block still to be thrown away as they arrive.
    discard_bytes: u64,
    pending: VecDeque<Pending>,
    /// The forwarding lane this connection uses, once it forwarded.
    lane: Option<usize>,
    /// Gets so far, numbering their forwarded pieces, and the one whose
    /// forwarded pieces are dropped (one ended in an error line).
    gets: u64,
    failed_get: Option<u64>,
    /// Reads from the socket so far, and that count when the last read
    /// barrier (ReadIndex round) that succeeded was asked for: every request
    /// already in the input buffer then arrived before the round started,
    /// so the round serves them all, and a pipeline of gets costs one round
    /// instead of one each.
    socket_reads: u64,
    barrier_at_socket_read: Option<u64>,
    /// Keys of the gat and forwarded get pieces queued since the last
    /// [`Self::finish_pending`]: their values wait in the outcomes and
    /// replies until rendered.
    pending_hit_keys: usize,
    /// A write to the client failed: the connection is done.
    broken: bool,
    /// A follower's forwarding link (it sent `forwarder`): the follower
    /// counts these requests in its own `stats`, so this server does not,
    /// except what only it can see (below, [`Self::counts_here`]).
    forwarded_link: bool,
    /// The server's shutdown token, for `shutdown` under `-A`.
    server_shutdown: CancellationToken,
    /// Whether the first request was a binary one (`None` before it): a
    /// binary client's connection then takes binary requests only, and a
    /// packet that is not one closes it, as in memcached. One that began
    /// with text (a client's, a follower's forwarding lane) takes both.
    began_binary: Option<bool>,
    /// Whether requests are served: from the start without `-Y` or `-S`,
    /// else once the client logged in (text), authenticated (SASL) or
    /// proved the cluster secret (a forwarding link).
    authenticated: bool,
    /// The challenge handed out for `forwarder`, forgotten at its first
    /// use.
    challenge: Option<[u8; CHALLENGE_BYTES]>,
    /// A SASL PLAIN Auth came without its message: a Step has it.
    sasl_begun: bool,
}

impl Connection {
    pub fn new(stream: ClientStream, shared: Arc<Shared>, backend: Backend) -> Connection {
        let authenticated = !shared.auth.required();
        Connection {
            stream,
            shared,
            backend,
            input: BytesMut::with_capacity(BUFFER_BYTES_INITIAL),
            output: BytesMut::with_capacity(BUFFER_BYTES_INITIAL),
            discard_bytes: 0,
            pending: VecDeque::new(),
            lane: None,
            gets: 0,
            failed_get: None,
            socket_reads: 0,
            barrier_at_socket_read: None,
            pending_hit_keys: 0,
            broken: false,
            forwarded_link: false,
            server_shutdown: CancellationToken::new(),
            began_binary: None,
            authenticated,
            challenge: None,
            sasl_begun: false,
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
            let Some(&first) = self.input.first() else {
                return Next::Continue;
            };
            let binary = first == binary::REQUEST_MAGIC;
            if *self.began_binary.get_or_insert(binary) && !binary {
                return Next::Close;
            }
            if !self.authenticated && !binary {
                match self.text_gate().await {
                    Gated::Parse => {}
                    Gated::Answered => continue,
                    Gated::Return(next) => return next,
                }
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
                    let reply =
                        (!noreply).then(|| Bytes::from_static(errors::TOO_LARGE.as_bytes()));
                    self.too_large(key, mode == StoreMode::Set, reply).await;
                }
                Err(ParseError::Close) => return Next::Close,
                Err(ParseError::Binary) => match self.binary_request(&limits).await {
                    None => return Next::Continue,
                    Some(Next::Close) => return Next::Close,
                    Some(_) => {}
                },
            }
        }
    }

    async fn handle(&mut self, request: Request, raw: Bytes) -> Next {
        // A clone, so counters can be bumped while `self` is borrowed mutably.
        let shared = self.shared.clone();
        let counters = &shared.stats.counters;
        match request {
            Request::Get { keys, with_cas } => {
                let pieces = pieces(&keys, self.keys_per_piece(), &raw, |line, piece| {
                    encode_get(line, piece, with_cas)
                });
                self.gets += 1;
                for piece in pieces {
                    if !self.get_piece(piece, with_cas).await {
                        // An error line ended the reply.
                        break;
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
                    Op::Delete { key, cas_unique: 0 },
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
                    Op::Arith {
                        key,
                        delta,
                        incr,
                        cas_unique: 0,
                        initial: None,
                        touch: None,
                    },
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
                // server's, and the group's is the smallest (memory.rs).
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
            Request::Admin(Admin::MetaDump) => match self.read_at(None).await {
                ReadAt::Refused(line) => Reply::Error(line).encode(&mut self.output),
                // A server that is not a member yet lists its own state.
                ReadAt::Here | ReadAt::Leader => self.metadump().await,
            },
            Request::Admin(Admin::RefreshCerts) => {
                self.finish_pending().await;
                match shared.tls.as_ref().map(|tls| tls.refresh()) {
                    None => Reply::Error(admin_replies::TLS_NOT_ENABLED).encode(&mut self.output),
                    Some(Ok(())) => Reply::Ok.encode(&mut self.output),
                    Some(Err(error)) => {
                        let line = format!("Error {error}\r\n");
                        self.output.extend_from_slice(line.as_bytes());
                    }
                }
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
            Request::Meta(request) => self.handle_meta(*request).await,
            Request::Forwarder { proof } => self.forwarder(proof).await,
            Request::Quit => return Next::Close,
        }
        Next::Continue
    }

    /// Before a text connection authenticated: what [`text_gate`] makes of
    /// the front of the input.
    async fn text_gate(&mut self) -> Gated {
        let text_enabled = self.shared.auth.text_enabled();
        let (consumed, discard, login) = match text_gate(&self.input) {
            Gate::Forwarder => return Gated::Parse,
            Gate::Incomplete => return Gated::Return(Next::Continue),
            Gate::Close => return Gated::Return(Next::Close),
            // SASL only (`-S`): the binary protocol only, as memcached.
            _ if !text_enabled => return Gated::Return(Next::Close),
            Gate::Refused { consumed } => (consumed, 0, None),
            Gate::Attempt {
                consumed,
                discard,
                login,
            } => (consumed, discard, Some(login)),
        };
        self.input.advance(consumed);
        self.discard_bytes = discard;
        let counters = &self.shared.stats.counters;
        let reply = match login {
            None => auth_replies::UNAUTHENTICATED,
            Some(Login::Credentials { user, password }) => {
                Stats::bump(&counters.auth_cmds);
                if self.shared.auth.check_text(&user, &password) {
                    self.authenticated = true;
                    auth_replies::STORED
                } else {
                    Stats::bump(&counters.auth_errors);
                    auth_replies::FAILURE
                }
            }
            Some(Login::TooLong) => {
                Stats::bump(&counters.auth_cmds);
                Stats::bump(&counters.auth_errors);
                auth_replies::FAILURE
            }
            Some(Login::BadFormat) => auth_replies::BAD_FORMAT,
            Some(Login::BadTermination) => auth_replies::BAD_TERMINATION,
        };
        self.reply_in_order(Reply::Error(reply)).await;
        Gated::Answered
    }

    /// `forwarder [PROOF]`: hands out a challenge, or checks the proof of
    /// the cluster secret for it; a proved connection is a follower's
    /// forwarding link from then on (DESIGN §5a "Authentication").
    async fn forwarder(&mut self, proof: Option<[u8; PROOF_BYTES]>) {
        self.finish_pending().await;
        let auth = &self.shared.auth;
        if !auth.in_cluster() {
            self.output
                .extend_from_slice(auth_replies::NOT_IN_CLUSTER.as_bytes());
            return;
        }
        match proof {
            None => {
                let challenge: [u8; CHALLENGE_BYTES] = rand::random();
                self.challenge = Some(challenge);
                self.output.extend_from_slice(CHALLENGE_PREFIX.as_bytes());
                self.output
                    .extend_from_slice(admin_proof::to_hex(&challenge).as_bytes());
                self.output.extend_from_slice(b"\r\n");
            }
            Some(proof) => {
                let proved = self
                    .challenge
                    .take()
                    .is_some_and(|challenge| auth.check_forwarder(&challenge, &proof));
                if proved {
                    self.forwarded_link = true;
                    self.authenticated = true;
                    Reply::Ok.encode(&mut self.output);
                } else {
                    Stats::bump(&self.shared.stats.counters.forwarder_refused);
                    self.output
                        .extend_from_slice(auth_replies::BAD_PROOF.as_bytes());
                }
            }
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
        let key = op.first_key().map(|k| k.as_ref());
        if let Route::Leader(_) = route(key, Access::Write, self.membership()) {
            let framing = match render {
                Render::Values { .. } => Framing::Text(Expect::Retrieval),
                Render::Binary(_) => Framing::Binary,
                Render::Meta { .. } => Framing::Meta,
                _ => Framing::Text(Expect::Line),
            };
            let then = Then::Write {
                kind,
                render,
                noreply,
            };
            self.forward(raw, framing, noreply, false, then).await;
            return;
        }
        self.after_forwarded().await;
        // Checked here, where the write is proposed (a follower forwarded
        // it above): apply never fails for memory on any replica.
        // Only a store can add to the items; the state lock is not taken
        // for anything else, nor without a limit.
        let reserved = match &op {
            Op::Store { .. } if self.shared.memory.is_limited() => {
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
                self.fail_in_order(&render, errors::OUT_OF_MEMORY).await;
            }
            return;
        };
        // Meta's `E`: the client names the unique the write gives.
        let unique = match &render {
            Render::Meta { request, .. } => request.new_cas,
            _ => None,
        };
        let command = Command {
            time_s: clock::now_s(),
            op,
            unique,
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
        match self.backend.submit(command, reservation).await {
            Ok(outcome) => self.pending.push_back(Pending::Local(PendingWrite {
                outcome,
                render,
                kind,
                _room: room,
                counted: self.counts_here(noreply),
            })),
            Err(error) => self.fail_in_order(&render, commit_error_line(error)).await,
        }
    }

    /// A store over the item limit (its value is being discarded): `reply`
    /// in order, and for a set the key deleted first, as memcached does, so
    /// that a failed overwrite cannot leave a stale value behind.
    async fn too_large(&mut self, key: Bytes, delete: bool, reply: Option<Bytes>) {
        Stats::bump(&self.shared.stats.counters.store_too_large);
        if delete {
            let mut raw = BytesMut::with_capacity(key.len() + 20);
            raw.extend_from_slice(b"delete ");
            raw.extend_from_slice(&key);
            raw.extend_from_slice(b" noreply\r\n");
            let op = Op::Delete { key, cas_unique: 0 };
            let render = Render::Fixed(reply);
            self.queue_write(op, render, WriteKind::Other, raw.freeze(), true)
                .await;
        } else if let Some(reply) = reply {
            self.finish_pending().await;
            self.output.extend_from_slice(&reply);
        }
    }

    /// This server's role in its group (`None` alone).
    fn membership_role(&self) -> Option<Role> {
        match self.membership() {
            Membership::Alone => None,
            Membership::Replica { role, .. } => Some(role),
        }
    }

    /// What this server knows of its group now, for [`route`].
    fn membership(&self) -> Membership {
        match &self.backend {
            Backend::Single(_) => Membership::Alone,
            Backend::Cluster(cluster) => {
                let role = cluster.view.role();
                Membership::Replica {
                    role,
                    read_mode: cluster.read_mode,
                    // The clock is read only where the lease can matter.
                    holds_lease: role == Role::Leader
                        && cluster.read_mode == ReadMode::Linearizable
                        && cluster.view.holds_lease(),
                }
            }
        }
    }

    /// Serves one piece of a get from the local state, at once or after a
    /// read barrier ([`route`]), or forwards it to the leader; false when
    /// an error line ended the reply here.
    async fn get_piece(&mut self, piece: Piece<'_>, with_cas: bool) -> bool {
        let Piece { keys, raw, last } = piece;
        match self.read_at(keys.first()).await {
            ReadAt::Leader => {
                self.forward_get_piece(keys.len(), raw, last).await;
                return true;
            }
            ReadAt::Refused(line) => {
                Reply::Error(line).encode(&mut self.output);
                return false;
            }
            ReadAt::Here => {}
        }
        self.serve_get(keys, with_cas);
        if let Backend::Cluster(cluster) = &self.backend {
            Stats::add(&cluster.view.reads_local, keys.len() as u64);
        }
        if last {
            Reply::End.encode(&mut self.output);
        }
        true
    }

    /// Where a read of `key` is served ([`route`]): here, after the writes
    /// this connection sent before it (so it sees them) and after a read
    /// barrier where one is needed; or by the leader; or nowhere now.
    async fn read_at(&mut self, key: Option<&Bytes>) -> ReadAt {
        let routed = route(key.map(|k| k.as_ref()), Access::Read, self.membership());
        if let Route::Leader(_) = routed {
            return ReadAt::Leader;
        }
        self.finish_pending().await;
        if routed == Route::HereAfterBarrier {
            if let Err(error) = self.read_barrier().await {
                // A leader that cannot confirm it leads, and a follower that
                // no leader answered in time (a forward would wait for one
                // as long again), refuse the read.
                if self.membership_role() == Some(Role::Leader)
                    || error == CommitError::NoLeaderReached
                {
                    return ReadAt::Refused(commit_error_line(error));
                }
                // A follower refused a read index (not a member of the
                // group yet), or one that became leader meanwhile, lets the
                // leader answer: forwarded.
                return ReadAt::Leader;
            }
        }
        ReadAt::Here
    }

    /// Forwards one piece of a get (of `keys` keys) to the leader.
    async fn forward_get_piece(&mut self, keys: usize, raw: Bytes, last: bool) {
        let then = Then::GetPiece {
            keys,
            last,
            get: self.gets,
        };
        self.forward(raw, Framing::Text(Expect::Retrieval), false, true, then)
            .await;
        // The values wait in the replies: at most about one piece's worth
        // before they go out.
        self.pending_hit_keys += keys;
        if self.pending_hit_keys >= self.keys_per_piece() {
            self.finish_pending().await;
            self.flush_output().await;
        }
    }

    /// Waits until this server may serve a linearizable read from its
    /// state: the leader after a round that confirms it still leads, a
    /// follower once it has applied through the leader's read index
    /// (ReadIndex); or fails (no leader, or not the leader any more).
    async fn read_barrier(&mut self) -> Result<(), CommitError> {
        let Backend::Cluster(cluster) = &self.backend else {
            return Ok(());
        };
        if self.barrier_at_socket_read == Some(self.socket_reads) {
            // This request was in the buffer before the last round started.
            return Ok(());
        }
        let asked_at = self.socket_reads;
        cluster.read_barrier().await?;
        self.barrier_at_socket_read = Some(asked_at);
        Ok(())
    }

    /// Queues a request for the leader ([`LeaderLink::submit`]) behind the
    /// requests before it; its reply (or the error line when no leader
    /// answered) is handled by [`Self::finish_pending`] as `then` says.
    ///
    /// [`LeaderLink::submit`]: crate::forward::LeaderLink::submit
    async fn forward(
        &mut self,
        raw: Bytes,
        framing: Framing,
        noreply: bool,
        read_only: bool,
        then: Then,
    ) {
        let Backend::Cluster(cluster) = &self.backend else {
            unreachable!("a server alone serves every request itself");
        };
        let view = cluster.view.clone();
        Stats::bump(&view.requests_forwarded);
        if matches!(self.pending.back(), Some(Pending::Local(_))) {
            // Not before the writes this server took on as leader.
            self.finish_pending().await;
        }
        let link = &self.shared.leader_link;
        let second_hop = self.forwarded_link;
        let lane = *self.lane.get_or_insert_with(|| link.pick_lane(second_hop));
        let reply = link
            .submit(lane, &view, raw, framing, noreply, read_only)
            .await;
        self.pending
            .push_back(Pending::Forwarded(PendingForward { reply, then }));
    }

    /// Before a request is served here: the forwarded requests before it
    /// are done (this server became the leader meanwhile).
    async fn after_forwarded(&mut self) {
        if matches!(self.pending.back(), Some(Pending::Forwarded(_))) {
            self.finish_pending().await;
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
        // A flush sends what TLS holds back; nothing for plain TCP.
        if self.stream.write_all(&self.output).await.is_err() || self.stream.flush().await.is_err()
        {
            self.broken = true;
        }
        self.output.clear();
    }

    /// Appends a reply that needs no commit, after the writes queued before it.
    async fn reply_in_order(&mut self, reply: Reply) {
        self.finish_pending().await;
        reply.encode(&mut self.output);
    }

    /// Appends the error a request that reached no outcome gets (`line`,
    /// in the protocol `render` is for), after the requests before it.
    async fn fail_in_order(&mut self, render: &Render, line: &'static str) {
        self.finish_pending().await;
        render.put_error(&mut self.output, line);
    }

    /// Waits for every queued request, in order, and renders its reply.
    async fn finish_pending(&mut self) {
        self.pending_hit_keys = 0;
        while let Some(pending) = self.pending.pop_front() {
            match pending {
                Pending::Local(write) => self.finish_write(write).await,
                Pending::Forwarded(forwarded) => self.finish_forwarded(forwarded).await,
            }
            // A piece of a large get or gat: out before the next is rendered.
            if self.output.len() >= OUTPUT_BYTES_FLUSH {
                self.flush_output().await;
            }
        }
    }

    /// Renders a write's reply from its outcome on this server.
    async fn finish_write(&mut self, write: PendingWrite) {
        let outcome = write.outcome.await.unwrap_or(Err(CommitError::Storage));
        let outcome = match outcome {
            Ok(outcome) => outcome,
            Err(error) => {
                write
                    .render
                    .put_error(&mut self.output, commit_error_line(error));
                return;
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
            Render::Fixed(Some(reply)) => self.output.extend_from_slice(&reply),
            Render::Binary(render) => render.put_outcome(&mut self.output, &outcome),
            Render::Meta { request, exptime } => {
                request.put_outcome(&mut self.output, &outcome, exptime, clock::now_s())
            }
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
            }
        }
    }

    /// Appends a forwarded request's reply, or its error line, as its
    /// [`Then`] says.
    async fn finish_forwarded(&mut self, forwarded: PendingForward) {
        // A lane that ended without answering: the request may have been
        // executed.
        let relayed = forwarded
            .reply
            .await
            .unwrap_or(Relayed::Failed(errors::OUTCOME_UNKNOWN));
        match forwarded.then {
            Then::Write {
                kind,
                render,
                noreply,
            } => {
                match &render {
                    Render::Binary(render) => return self.relay_binary(kind, render, relayed),
                    Render::Meta { request, .. } => return self.relay_meta(kind, request, relayed),
                    _ => {}
                }
                match relayed {
                    Relayed::Reply(reply) => {
                        if !noreply {
                            self.count_forwarded(kind, &reply);
                        }
                        self.output.extend_from_slice(&reply);
                    }
                    Relayed::Failed(line) if !noreply => {
                        Reply::Error(line).encode(&mut self.output)
                    }
                    Relayed::Failed(_) => {}
                }
                match render {
                    // The delete behind a too-large set is forwarded
                    // silently; the client still gets its error line.
                    Render::Fixed(Some(reply)) => self.output.extend_from_slice(&reply),
                    // A gat piece before the last: the next one's values follow.
                    Render::Values { end: false, .. } => {
                        strip_end(&mut self.output);
                    }
                    _ => {}
                }
            }
            Then::GetPiece { keys, last, get } => {
                if self.failed_get == Some(get) {
                    return;
                }
                match relayed {
                    Relayed::Reply(reply) => {
                        self.count_forwarded_get(keys, &reply);
                        self.output.extend_from_slice(&reply);
                    }
                    Relayed::Failed(line) => Reply::Error(line).encode(&mut self.output),
                }
                if !last && !strip_end(&mut self.output) {
                    // An error line ended the reply.
                    self.failed_get = Some(get);
                }
            }
        }
    }
}

/// The error line a client gets when its write could not be committed.
fn commit_error_line(error: CommitError) -> &'static str {
    match error {
        CommitError::Storage => errors::STORAGE_FAILED,
        CommitError::NotLeader | CommitError::NoLeaderReached => errors::NO_LEADER,
        CommitError::NotReady => errors::NOT_READY,
        CommitError::Unknown => errors::OUTCOME_UNKNOWN,
    }
}
