//! [`Connection`]: the one owner of a TCP socket to a memcached-protocol
//! server, with its read and write buffers and the queue of replies owed.
//!
//! It moves bytes and nothing else: requests are encoded by
//! `data::protocol::client` into its write buffer ([`Connection::queue`]),
//! replies are parsed by the same module from its read buffer. It knows no
//! command semantics and no timeouts; [`crate::Client`] adds those, and
//! `client bench` drives it directly for pipelining without allocation.
//!
//! Replies come back strictly in request order, so the connection keeps one
//! [`Expect`] per queued request and pairs them up as replies arrive. After an
//! I/O or protocol error the stream position is unknown and the connection
//! refuses further use.

use std::collections::VecDeque;
use std::net::SocketAddr;

use bytes::{Buf, BytesMut};
use data::protocol::client::{
    parse_response, scan_response, EncodeError, Expect, Response, Status,
};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpStream, ToSocketAddrs};

use crate::error::{Error, Result};

/// Bytes asked of the kernel per read; large enough that a pipelined burst
/// of small replies arrives in one syscall.
pub const READ_CHUNK_BYTES: usize = 64 * 1024;

/// Requests that may await a reply at once. Bounds the expect queue; a load
/// generator's pipeline depth is far below it.
pub const PENDING_REQUESTS_MAX: usize = 1 << 16;

/// While a flush is blocked on a full socket, replies are read into the read
/// buffer so the server is never stuck writing to us while we write to it.
/// Past this many buffered bytes we stop reading and only write.
pub const FLUSH_READ_AHEAD_BYTES_MAX: usize = 64 * 1024 * 1024;

/// One TCP connection speaking the memcached text protocol.
#[derive(Debug)]
pub struct Connection {
    stream: TcpStream,
    read_buf: BytesMut,
    write_buf: BytesMut,
    /// One entry per queued request that will get a reply, oldest first.
    pending: VecDeque<Expect>,
    broken: bool,
}

impl Connection {
    /// Connects with TCP_NODELAY set: requests are small and latency-bound,
    /// and pipelined bursts are already written in one call.
    pub async fn connect(addr: impl ToSocketAddrs) -> Result<Connection> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(Connection {
            stream,
            read_buf: BytesMut::with_capacity(READ_CHUNK_BYTES),
            write_buf: BytesMut::with_capacity(READ_CHUNK_BYTES),
            pending: VecDeque::new(),
            broken: false,
        })
    }

    /// The server's address.
    pub fn peer_addr(&self) -> Result<SocketAddr> {
        Ok(self.stream.peer_addr()?)
    }

    /// Requests queued or sent whose reply has not been read yet.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// True once an I/O, protocol or timeout error made the connection
    /// unusable.
    pub fn is_broken(&self) -> bool {
        self.broken
    }

    /// Marks the connection unusable; [`crate::Client`] calls it when a
    /// request times out with its reply possibly still on the way.
    pub fn poison(&mut self) {
        self.broken = true;
    }

    /// Encodes one request into the write buffer (nothing is sent until
    /// [`Connection::flush`]). `expect` is the reply it gets, or `None` for
    /// `noreply` and `quit`. A request the encoder refuses leaves the
    /// buffers untouched.
    pub fn queue(
        &mut self,
        expect: Option<Expect>,
        encode: impl FnOnce(&mut BytesMut) -> std::result::Result<(), EncodeError>,
    ) -> Result<()> {
        if self.broken {
            return Err(Error::Broken);
        }
        if expect.is_some() && self.pending.len() >= PENDING_REQUESTS_MAX {
            return Err(Error::TooManyPending);
        }
        encode(&mut self.write_buf)?;
        if let Some(expect) = expect {
            self.pending.push_back(expect);
        }
        Ok(())
    }

    /// Appends already-encoded requests (a [`crate::Pipeline`]) and their
    /// expected replies.
    pub(crate) fn queue_encoded(&mut self, bytes: &[u8], expects: &[Expect]) -> Result<()> {
        if self.broken {
            return Err(Error::Broken);
        }
        if self.pending.len() + expects.len() > PENDING_REQUESTS_MAX {
            return Err(Error::TooManyPending);
        }
        self.write_buf.extend_from_slice(bytes);
        self.pending.extend(expects.iter().copied());
        Ok(())
    }

    /// Sends everything queued. While the socket is full it keeps reading
    /// replies into the read buffer, so a deep pipeline cannot deadlock with
    /// a server that is blocked writing replies we are not reading.
    pub async fn flush(&mut self) -> Result<()> {
        if self.broken {
            return Err(Error::Broken);
        }
        let result = self.flush_inner().await;
        self.check(result)
    }

    async fn flush_inner(&mut self) -> Result<()> {
        // An emptied buffer is reclaimed by the next reserve, so the next
        // requests reuse the same memory.
        write_reading_ahead(&self.stream, &mut self.write_buf, &mut self.read_buf).await
    }

    /// Flushes if needed, then reads the next reply, copying values out.
    pub async fn recv(&mut self) -> Result<Response> {
        let expect = self.front()?;
        self.flush().await?;
        loop {
            let parsed = parse_response(&self.read_buf, expect);
            match self.check(parsed.map_err(Error::from))? {
                Some((response, used)) => {
                    self.read_buf.advance(used);
                    self.pending.pop_front();
                    return Ok(response);
                }
                None => self.read_more().await?,
            }
        }
    }

    /// Flushes if needed, then reads the next reply's [`Status`] without
    /// copying it: what a load generator needs.
    pub async fn recv_status(&mut self) -> Result<Status> {
        self.front()?;
        self.flush().await?;
        loop {
            if let Some(status) = self.try_recv_status()? {
                return Ok(status);
            }
            self.read_more().await?;
        }
    }

    /// The next reply's [`Status`] if it is already buffered; never does
    /// I/O. `None` also when no reply is owed, so a caller can drain every
    /// reply one read brought in with `while let`.
    pub fn try_recv_status(&mut self) -> Result<Option<Status>> {
        if self.pending.is_empty() && !self.broken {
            return Ok(None);
        }
        let expect = self.front()?;
        let scanned = scan_response(&self.read_buf, expect);
        match self.check(scanned.map_err(Error::from))? {
            Some((status, used)) => {
                self.read_buf.advance(used);
                self.pending.pop_front();
                Ok(Some(status))
            }
            None => Ok(None),
        }
    }

    /// Sends `quit` (the server closes its side) and shuts down ours.
    pub async fn quit(mut self) -> Result<()> {
        self.queue(None, |buf| {
            data::protocol::client::encode_quit(buf);
            Ok(())
        })?;
        self.flush().await?;
        self.stream.shutdown().await?;
        Ok(())
    }

    fn front(&self) -> Result<Expect> {
        if self.broken {
            return Err(Error::Broken);
        }
        self.pending.front().copied().ok_or(Error::NothingPending)
    }

    async fn read_more(&mut self) -> Result<()> {
        // reserve() moves unread bytes to the front when the buffer has room,
        // so a steady stream of replies reuses one allocation.
        self.read_buf.reserve(READ_CHUNK_BYTES);
        let read = tokio::io::AsyncReadExt::read_buf(&mut self.stream, &mut self.read_buf).await;
        let read = self.check(read.map_err(Error::from))?;
        if read == 0 {
            self.broken = true;
            return Err(Error::Closed);
        }
        Ok(())
    }

    /// Poisons the connection on any error that leaves the stream position
    /// unknown.
    fn check<T>(&mut self, result: Result<T>) -> Result<T> {
        if let Err(e) = &result {
            if e.is_fatal() {
                self.broken = true;
            }
        }
        result
    }
}

/// Writes all of `write_buf` to `stream`. While the socket is full it keeps
/// reading what arrives into `read_buf` (up to [`FLUSH_READ_AHEAD_BYTES_MAX`]),
/// so a deep pipeline cannot deadlock with a server that is blocked writing
/// replies we are not reading. Every connection of this crate (memcached,
/// and the Redis and etcd load modes) flushes through it.
pub(crate) async fn write_reading_ahead(
    stream: &TcpStream,
    write_buf: &mut BytesMut,
    read_buf: &mut BytesMut,
) -> Result<()> {
    while !write_buf.is_empty() {
        // The common case: the kernel takes it all at once.
        match stream.try_write(write_buf) {
            Ok(n) => {
                write_buf.advance(n);
                continue;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e.into()),
        }
        let read_ahead = read_buf.len() < FLUSH_READ_AHEAD_BYTES_MAX;
        tokio::select! {
            ready = stream.writable() => ready?,
            ready = stream.readable(), if read_ahead => {
                ready?;
                read_buf.reserve(READ_CHUNK_BYTES);
                match stream.try_read_buf(read_buf) {
                    Ok(0) => return Err(Error::Closed),
                    Ok(_) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
    }
    Ok(())
}
