//! One lane: a long-lived connection to the leader carrying the requests of
//! the client connections pinned to it, pipelined and answered in order;
//! and what it does when that connection fails or the leader changes.
//!
//! One task owns the lane: it takes requests from its queue, writes them
//! in batches, reads replies and hands each to its request's waiter, all
//! without blocking on either direction (a leader writing a large reply
//! while this side writes a large batch must not wait on each other).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use data::frame::SECRET_BYTES;
use data::protocol::binary::response_len;
use data::protocol::client::{encode_forwarder, scan_response, Expect, Status};
use data::protocol::reply::errors;
use tokio::io::{
    AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, Interest, ReadHalf, WriteHalf,
};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit};
use tokio::time::{Duration, Instant};

use super::{
    Framing, LinkError, Relayed, CONNECT_TIMEOUT_MS, FORWARD_FAILOVER_WAIT_MS,
    FORWARD_REPLY_BYTES_MAX, FORWARD_RETRY_MS, FORWARD_TIMEOUT_MS, LANE_IN_FLIGHT_MAX,
    LANE_WAITING_MAX,
};
use crate::auth::answer_challenge;
use crate::driver::ClusterView;
use crate::tls::Tls;
use tokio_rustls::client::TlsStream;

/// After a batch that ends with a `noreply` request: its reply says that
/// everything before it was executed.
const BARRIER: &[u8] = b"version\r\n";
/// Room made in the input buffer before each read.
const READ_BYTES_MIN: usize = 16 * 1024;
/// A handshake reply (`CHALLENGE <64 hex digits>`, `OK`, an error line) is
/// at most about this long.
const HANDSHAKE_LINE_BYTES_MAX: usize = 512;

/// One request to forward, and where its reply goes.
pub(super) struct Job {
    pub(super) raw: Bytes,
    pub(super) framing: Framing,
    pub(super) noreply: bool,
    pub(super) read_only: bool,
    /// It gets `no leader available` if it is still waiting for a leader
    /// then.
    pub(super) deadline: Instant,
    pub(super) reply: oneshot::Sender<Relayed>,
    /// Its share of the bytes in flight, given back when it is answered.
    pub(super) _bytes: OwnedSemaphorePermit,
}

impl Job {
    pub(super) fn answer(self, relayed: Relayed) {
        // The client may have left meanwhile; nothing waits then.
        let _ = self.reply.send(relayed);
    }
}

/// What was written on a connection, awaiting its reply.
enum Sent {
    /// [`BARRIER`].
    Barrier,
    Job(Job),
}

impl Sent {
    fn expects_reply(&self) -> bool {
        !matches!(self, Sent::Job(job) if job.noreply)
    }
}

struct InFlight {
    sent: Sent,
    /// Where its bytes end in everything written on the connection.
    end: u64,
}

/// A link's connection: plain TCP, driven by readiness, or TLS (`-Z`),
/// whose halves are driven as futures.
enum LinkIo {
    Plain(TcpStream),
    Tls {
        reader: ReadHalf<TlsStream<TcpStream>>,
        writer: WriteHalf<TlsStream<TcpStream>>,
        /// Bytes written into TLS and not yet flushed to the socket.
        unflushed: bool,
    },
}

/// Writes some of `out` into the TLS stream (counting it in `written`),
/// then flushes it to the socket.
async fn send(
    writer: &mut WriteHalf<TlsStream<TcpStream>>,
    out: &mut BytesMut,
    written: &mut u64,
    unflushed: &mut bool,
) -> std::io::Result<()> {
    if !out.is_empty() {
        let n = writer.write(out).await?;
        let _ = out.split_to(n);
        *written += n as u64;
        *unflushed = true;
    }
    writer.flush().await?;
    *unflushed = false;
    Ok(())
}

/// One TCP connection to a leader.
struct Link {
    io: LinkIo,
    leader: SocketAddr,
    /// Bytes not yet written.
    out: BytesMut,
    /// Bytes ever queued on, and written to, this connection.
    queued: u64,
    written: u64,
    in_flight: VecDeque<InFlight>,
    input: BytesMut,
    /// Since when the oldest reply has been awaited without any arriving.
    waiting_since: Instant,
}

impl Link {
    /// A connection that proved the cluster secret ([`prove`]).
    fn new(stream: LaneStream, leader: SocketAddr) -> Link {
        let io = match stream {
            LaneStream::Plain(stream) => LinkIo::Plain(stream),
            LaneStream::Tls(stream) => {
                let (reader, writer) = tokio::io::split(*stream);
                LinkIo::Tls {
                    reader,
                    writer,
                    unflushed: false,
                }
            }
        };
        Link {
            io,
            leader,
            out: BytesMut::new(),
            queued: 0,
            written: 0,
            in_flight: VecDeque::new(),
            input: BytesMut::new(),
            waiting_since: Instant::now(),
        }
    }

    fn push(&mut self, sent: Sent, bytes: &[u8]) {
        if self.in_flight.is_empty() {
            self.waiting_since = Instant::now();
        }
        self.out.extend_from_slice(bytes);
        self.queued += bytes.len() as u64;
        self.in_flight.push_back(InFlight {
            sent,
            end: self.queued,
        });
    }

    fn push_job(&mut self, job: Job) {
        let raw = job.raw.clone();
        self.push(Sent::Job(job), &raw);
    }

    /// Ends a batch: a barrier after trailing `noreply` requests.
    fn end_batch(&mut self) {
        if self
            .in_flight
            .back()
            .is_some_and(|i| !i.sent.expects_reply())
        {
            self.push(Sent::Barrier, BARRIER);
        }
    }

    fn idle(&self) -> bool {
        self.in_flight.is_empty()
    }

    /// Waits until the connection can make progress and makes it: writes
    /// what it can, reads what arrived and hands out the replies.
    async fn step(&mut self) -> Result<(), LinkError> {
        let leader = self.leader;
        let deadline = self.waiting_since + Duration::from_millis(FORWARD_TIMEOUT_MS);
        let idle = self.idle();
        let io = |e| LinkError::Io(leader, e);
        let read = match &mut self.io {
            LinkIo::Plain(stream) => {
                let interest = if self.out.is_empty() {
                    Interest::READABLE
                } else {
                    Interest::READABLE | Interest::WRITABLE
                };
                let ready = tokio::select! {
                    ready = stream.ready(interest) => ready.map_err(io)?,
                    () = tokio::time::sleep_until(deadline), if !idle => {
                        return Err(LinkError::Timeout(leader));
                    }
                };
                if ready.is_writable() && !self.out.is_empty() {
                    match stream.try_write(&self.out) {
                        Ok(n) => {
                            let _ = self.out.split_to(n);
                            self.written += n as u64;
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                        Err(e) => return Err(io(e)),
                    }
                }
                if ready.is_readable() {
                    self.input.reserve(READ_BYTES_MIN);
                    match stream.try_read_buf(&mut self.input) {
                        Ok(0) => return Err(LinkError::Closed(leader)),
                        Ok(_) => true,
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => false,
                        Err(e) => return Err(io(e)),
                    }
                } else {
                    false
                }
            }
            LinkIo::Tls {
                reader,
                writer,
                unflushed,
            } => {
                // Both directions at once, each future cancel-safe: what a
                // write took is accounted before its flush is awaited, and a
                // flush cut short is finished on the next step.
                self.input.reserve(READ_BYTES_MIN);
                let sending = !self.out.is_empty() || *unflushed;
                let (out, written) = (&mut self.out, &mut self.written);
                tokio::select! {
                    read = reader.read_buf(&mut self.input) => match read.map_err(io)? {
                        0 => return Err(LinkError::Closed(leader)),
                        _ => true,
                    },
                    sent = send(writer, out, written, unflushed), if sending => {
                        sent.map_err(io)?;
                        false
                    }
                    () = tokio::time::sleep_until(deadline), if !idle => {
                        return Err(LinkError::Timeout(leader));
                    }
                }
            }
        };
        if read {
            self.take_replies()?;
        }
        Ok(())
    }

    /// Hands out every complete reply in the input, in order: the first
    /// request that expects one gets it, and the `noreply` requests before
    /// it are done.
    fn take_replies(&mut self) -> Result<(), LinkError> {
        let bad = LinkError::BadReply(self.leader);
        loop {
            let Some(at) = self.in_flight.iter().position(|i| i.sent.expects_reply()) else {
                // Nothing was asked that these bytes could answer.
                return if self.input.is_empty() {
                    Ok(())
                } else {
                    Err(bad)
                };
            };
            let framing = match &self.in_flight[at].sent {
                Sent::Job(job) => job.framing,
                Sent::Barrier => Framing::Text(Expect::Line),
            };
            // Whether the reply is a text `OK`, and its length once whole.
            let scanned = match framing {
                Framing::Text(expect) => scan_response(&self.input, expect)
                    .map(|reply| reply.map(|(status, len)| (status == Status::Ok, len)))
                    .map_err(|_| ()),
                Framing::Meta => data::protocol::meta::response_len(&self.input)
                    .map(|reply| reply.map(|len| (false, len)))
                    .map_err(|_| ()),
                Framing::Binary => response_len(&self.input)
                    .map(|reply| reply.map(|len| (false, len)))
                    .map_err(|_| ()),
            };
            let Some((_, len)) = scanned.map_err(|()| LinkError::BadReply(self.leader))? else {
                if self.input.len() > FORWARD_REPLY_BYTES_MAX {
                    return Err(bad);
                }
                return Ok(());
            };
            let reply = self.input.split_to(len).freeze();
            self.waiting_since = Instant::now();
            for done in self.in_flight.drain(..at) {
                if let Sent::Job(job) = done.sent {
                    job.answer(Relayed::Reply(Bytes::new()));
                }
            }
            let answered = self.in_flight.pop_front().expect("found above");
            if let Sent::Job(job) = answered.sent {
                job.answer(Relayed::Reply(reply));
            }
        }
    }
}

/// A lane's connection once open: plain TCP, or TLS over it (`-Z`).
enum LaneStream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

/// Connects to the leader, with TLS under `-Z`, and proves the cluster
/// secret.
async fn open(
    leader: SocketAddr,
    secret: &[u8; SECRET_BYTES],
    tls: Option<&Tls>,
) -> Result<LaneStream, LinkError> {
    let io = |e| LinkError::Io(leader, e);
    let stream = TcpStream::connect(leader).await.map_err(io)?;
    let _ = stream.set_nodelay(true);
    Ok(match tls {
        None => {
            let mut stream = stream;
            prove(&mut stream, leader, secret).await?;
            LaneStream::Plain(stream)
        }
        Some(tls) => {
            let mut stream = tls.connect(stream, leader).await.map_err(io)?;
            prove(&mut stream, leader, secret).await?;
            LaneStream::Tls(Box::new(stream))
        }
    })
}

/// Makes a new connection to the leader a forwarding link: asks for a
/// challenge and answers it with the proof of the cluster secret (DESIGN
/// §5a). Nothing else is on the connection yet, so each reply is one line.
async fn prove<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    leader: SocketAddr,
    secret: &[u8; SECRET_BYTES],
) -> Result<(), LinkError> {
    let mut out = BytesMut::new();
    encode_forwarder(&mut out, None);
    stream
        .write_all(&out)
        .await
        .map_err(|e| LinkError::Io(leader, e))?;
    let line = read_line(stream, leader).await?;
    let answer =
        answer_challenge(secret, &line).ok_or_else(|| LinkError::Refused(leader, line.clone()))?;
    stream
        .write_all(&answer)
        .await
        .map_err(|e| LinkError::Io(leader, e))?;
    let line = read_line(stream, leader).await?;
    if line == "OK" {
        Ok(())
    } else {
        Err(LinkError::Refused(leader, line))
    }
}

/// One reply line of the handshake, without its `\r\n`.
async fn read_line<S: AsyncRead + Unpin>(
    stream: &mut S,
    leader: SocketAddr,
) -> Result<String, LinkError> {
    let mut line = Vec::new();
    while !line.ends_with(b"\r\n") {
        if line.len() > HANDSHAKE_LINE_BYTES_MAX {
            return Err(LinkError::BadReply(leader));
        }
        let mut byte = [0u8; 64];
        let n = stream
            .read(&mut byte)
            .await
            .map_err(|e| LinkError::Io(leader, e))?;
        if n == 0 {
            return Err(LinkError::Closed(leader));
        }
        line.extend_from_slice(&byte[..n]);
    }
    line.truncate(line.len() - 2);
    String::from_utf8(line).map_err(|_| LinkError::BadReply(leader))
}

/// A lane's task and what it holds.
pub(super) struct Lane {
    view: Arc<ClusterView>,
    queue: mpsc::Receiver<Job>,
    /// Taken from the queue, not yet written: in order, requests to send
    /// again after a failover first.
    waiting: VecDeque<Job>,
    link: Option<Link>,
    /// The cluster secret, proved on each new connection.
    secret: [u8; SECRET_BYTES],
    /// `-Z`: lanes speak TLS too.
    tls: Option<Arc<Tls>>,
}

/// What woke a lane up.
enum Event {
    Job(Option<Job>),
    Link(Result<(), LinkError>),
}

impl Lane {
    pub(super) fn new(
        view: Arc<ClusterView>,
        queue: mpsc::Receiver<Job>,
        secret: [u8; SECRET_BYTES],
        tls: Option<Arc<Tls>>,
    ) -> Lane {
        Lane {
            view,
            queue,
            waiting: VecDeque::new(),
            link: None,
            secret,
            tls,
        }
    }

    /// Serves the lane until the server drops its sending side.
    pub(super) async fn run(mut self) {
        loop {
            while self.waiting.len() < LANE_WAITING_MAX {
                match self.queue.try_recv() {
                    Ok(job) => self.waiting.push_back(job),
                    Err(_) => break,
                }
            }
            if self.link.is_none() && !self.waiting.is_empty() {
                self.connect().await;
                continue;
            }
            if let Some(link) = &mut self.link {
                if Some(link.leader) == self.view.leader_tcp() {
                    let mut batch = false;
                    while link.in_flight.len() < LANE_IN_FLIGHT_MAX {
                        let Some(job) = self.waiting.pop_front() else {
                            break;
                        };
                        link.push_job(job);
                        batch = true;
                    }
                    if batch {
                        link.end_batch();
                    }
                } else if link.idle() {
                    // Everything sent to the former leader is answered:
                    // on to the next, after it, so that every client's
                    // requests keep their order.
                    self.link = None;
                    continue;
                }
            }
            let room = self.waiting.len() < LANE_WAITING_MAX;
            let event = match &mut self.link {
                Some(link) => tokio::select! {
                    result = link.step() => Event::Link(result),
                    job = self.queue.recv(), if room => Event::Job(job),
                },
                None => Event::Job(self.queue.recv().await),
            };
            match event {
                Event::Job(Some(job)) => self.waiting.push_back(job),
                // The server is gone; so are the clients.
                Event::Job(None) => return,
                Event::Link(Ok(())) => {}
                Event::Link(Err(error)) => self.fail(error),
            }
        }
    }

    /// Connects to the leader the view names, waiting for one (and failing
    /// the requests whose wait ran out) as long as requests wait.
    async fn connect(&mut self) {
        loop {
            let now = Instant::now();
            for job in std::mem::take(&mut self.waiting) {
                if job.deadline <= now {
                    job.answer(Relayed::Failed(errors::NO_LEADER));
                } else {
                    self.waiting.push_back(job);
                }
            }
            if self.waiting.is_empty() {
                return;
            }
            if let Some(leader) = self.view.leader_tcp() {
                let timeout = Duration::from_millis(CONNECT_TIMEOUT_MS);
                let opened = open(leader, &self.secret, self.tls.as_deref());
                match tokio::time::timeout(timeout, opened).await {
                    Ok(Ok(stream)) => {
                        self.link = Some(Link::new(stream, leader));
                        return;
                    }
                    Ok(Err(error @ LinkError::Refused(..))) => {
                        tracing::warn!(%error, "cannot forward to the leader");
                    }
                    Ok(Err(error)) => tracing::debug!(%error, "cannot connect to the leader"),
                    Err(_) => tracing::debug!(%leader, "connecting to the leader timed out"),
                }
            }
            tokio::time::sleep(Duration::from_millis(FORWARD_RETRY_MS)).await;
        }
    }

    /// The connection failed: a request that cannot have reached the leader
    /// (not all of it was written), and a read, wait for the next leader
    /// ahead of the rest; a write that may have reached it gets `outcome
    /// unknown`, as it may or may not have been executed.
    fn fail(&mut self, error: LinkError) {
        let Some(link) = self.link.take() else {
            return;
        };
        tracing::debug!(%error, in_flight = link.in_flight.len(), "forwarding link failed");
        let deadline = Instant::now() + Duration::from_millis(FORWARD_FAILOVER_WAIT_MS);
        let mut again = VecDeque::new();
        for InFlight { sent, end } in link.in_flight {
            let Sent::Job(mut job) = sent else {
                continue;
            };
            if end > link.written || job.read_only {
                job.deadline = job.deadline.max(deadline);
                again.push_back(job);
            } else {
                job.answer(Relayed::Failed(errors::OUTCOME_UNKNOWN));
            }
        }
        again.append(&mut self.waiting);
        self.waiting = again;
    }
}
