//! [`Client`]: one typed async method per memcached command, over one
//! [`Connection`], with a per-request timeout; and [`Pipeline`], which sends
//! many requests in one write and reads their replies in order.
//!
//! This layer turns replies into typed results and server error lines into
//! [`Error::Server`]; it never touches bytes on the wire (that is
//! `data::protocol::client`) nor the socket (that is [`Connection`]). The
//! `client` CLI and the tests call it.
//!
//! The client talks to the one address it was given. LB discovery
//! (`get-servers` to the LB, then connect to a listed server) will be a
//! constructor beside [`Client::connect`] that ends in the same
//! [`Client::from_connection`], so nothing below it changes.

use std::time::Duration;

use bytes::BytesMut;
use data::command::StoreMode;
use data::protocol::client::{
    encode_arith, encode_delete, encode_flush_all, encode_gat, encode_get, encode_stats,
    encode_store, encode_touch, encode_verbosity, encode_version, EncodeError, Expect, Response,
    Value,
};
use tokio::net::ToSocketAddrs;

use crate::connection::Connection;
use crate::error::{Error, Result};

/// Timeout for connect and for each request unless the caller sets another:
/// long enough for a replicated write's fsyncs, short enough that a dead
/// server is noticed.
pub const TIMEOUT_DEFAULT_MS: u64 = 5_000;

/// The outcome of a storage command.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StoreResult {
    Stored,
    /// add on an existing key, replace/append/prepend on a missing one.
    NotStored,
    /// cas: the item changed since the cas unique was read.
    Exists,
    /// cas: the item does not exist.
    NotFound,
}

/// Options for [`Client::connect_with`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Options {
    /// Bound on connecting and on each request's round trip; `None` waits
    /// forever.
    pub timeout: Option<Duration>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            timeout: Some(Duration::from_millis(TIMEOUT_DEFAULT_MS)),
        }
    }
}

/// A memcached text-protocol client on one connection. Methods take
/// `&mut self`: one request at a time, or many at once with [`Pipeline`].
#[derive(Debug)]
pub struct Client {
    conn: Connection,
    timeout: Option<Duration>,
}

impl Client {
    /// Connects with [`Options::default`].
    pub async fn connect(addr: impl ToSocketAddrs) -> Result<Client> {
        Client::connect_with(addr, Options::default()).await
    }

    /// Connects to `addr` (TCP_NODELAY), bounded by `options.timeout`.
    pub async fn connect_with(addr: impl ToSocketAddrs, options: Options) -> Result<Client> {
        let conn = match options.timeout {
            Some(limit) => tokio::time::timeout(limit, Connection::connect(addr))
                .await
                .map_err(|_| Error::Timeout(limit))??,
            None => Connection::connect(addr).await?,
        };
        Ok(Client::from_connection(conn, options))
    }

    /// Wraps an open connection.
    pub fn from_connection(conn: Connection, options: Options) -> Client {
        Client {
            conn,
            timeout: options.timeout,
        }
    }

    /// Changes the per-request timeout.
    pub fn set_timeout(&mut self, timeout: Option<Duration>) {
        self.timeout = timeout;
    }

    /// The underlying connection, for callers that pipeline by hand.
    pub fn connection(&mut self) -> &mut Connection {
        &mut self.conn
    }

    /// Sends one request and reads its reply, within the timeout. Server
    /// error lines become [`Error::Server`].
    async fn call(
        &mut self,
        expect: Expect,
        encode: impl FnOnce(&mut BytesMut) -> std::result::Result<(), EncodeError>,
    ) -> Result<Response> {
        self.conn.queue(Some(expect), encode)?;
        let response = match self.timeout {
            Some(limit) => match tokio::time::timeout(limit, self.conn.recv()).await {
                Ok(result) => result?,
                Err(_) => {
                    // The reply may still come and would be read as the
                    // answer to the next request.
                    self.conn.poison();
                    return Err(Error::Timeout(limit));
                }
            },
            None => self.conn.recv().await?,
        };
        server_error(response)
    }

    /// Sends a `noreply` request; returns once it is written.
    async fn send(
        &mut self,
        encode: impl FnOnce(&mut BytesMut) -> std::result::Result<(), EncodeError>,
    ) -> Result<()> {
        self.conn.queue(None, encode)?;
        match self.timeout {
            Some(limit) => tokio::time::timeout(limit, self.conn.flush())
                .await
                .unwrap_or_else(|_| {
                    self.conn.poison();
                    Err(Error::Timeout(limit))
                }),
            None => self.conn.flush().await,
        }
    }

    async fn retrieve<K: AsRef<[u8]>>(
        &mut self,
        keys: &[K],
        exptime: Option<i64>,
        with_cas: bool,
    ) -> Result<Vec<Value>> {
        let response = self
            .call(Expect::Retrieval, |buf| match exptime {
                Some(exptime) => encode_gat(buf, exptime, keys, with_cas),
                None => encode_get(buf, keys, with_cas),
            })
            .await?;
        match response {
            Response::Values(values) => Ok(values),
            other => Err(unexpected(other)),
        }
    }

    /// `get`: the hits, in key order (misses are left out; a repeated key
    /// appears again).
    pub async fn get<K: AsRef<[u8]>>(&mut self, keys: &[K]) -> Result<Vec<Value>> {
        self.retrieve(keys, None, false).await
    }

    /// `get` of one key.
    pub async fn get_one(&mut self, key: impl AsRef<[u8]>) -> Result<Option<Value>> {
        Ok(self.get(&[key]).await?.into_iter().next())
    }

    /// `gets`: like [`Client::get`], each value with its cas unique.
    pub async fn gets<K: AsRef<[u8]>>(&mut self, keys: &[K]) -> Result<Vec<Value>> {
        self.retrieve(keys, None, true).await
    }

    /// `gat`: get, and set the expiry of each hit to `exptime`.
    pub async fn gat<K: AsRef<[u8]>>(&mut self, exptime: i64, keys: &[K]) -> Result<Vec<Value>> {
        self.retrieve(keys, Some(exptime), false).await
    }

    /// `gats`: gat with cas uniques.
    pub async fn gats<K: AsRef<[u8]>>(&mut self, exptime: i64, keys: &[K]) -> Result<Vec<Value>> {
        self.retrieve(keys, Some(exptime), true).await
    }

    /// Any storage command; `cas_unique` is used only by [`StoreMode::Cas`].
    pub async fn store(
        &mut self,
        mode: StoreMode,
        key: impl AsRef<[u8]>,
        value: impl AsRef<[u8]>,
        flags: u32,
        exptime: i64,
        cas_unique: u64,
    ) -> Result<StoreResult> {
        let (key, value) = (key.as_ref(), value.as_ref());
        let response = self
            .call(Expect::Line, |buf| {
                encode_store(buf, mode, key, flags, exptime, value, cas_unique, false)
            })
            .await?;
        match response {
            Response::Stored => Ok(StoreResult::Stored),
            Response::NotStored => Ok(StoreResult::NotStored),
            Response::Exists => Ok(StoreResult::Exists),
            Response::NotFound => Ok(StoreResult::NotFound),
            other => Err(unexpected(other)),
        }
    }

    /// A storage command with `noreply`: returns once written. The server
    /// sends nothing back, errors included.
    pub async fn store_noreply(
        &mut self,
        mode: StoreMode,
        key: impl AsRef<[u8]>,
        value: impl AsRef<[u8]>,
        flags: u32,
        exptime: i64,
        cas_unique: u64,
    ) -> Result<()> {
        let (key, value) = (key.as_ref(), value.as_ref());
        self.send(|buf| encode_store(buf, mode, key, flags, exptime, value, cas_unique, true))
            .await
    }

    /// `set`: store unconditionally.
    pub async fn set(
        &mut self,
        key: impl AsRef<[u8]>,
        value: impl AsRef<[u8]>,
        flags: u32,
        exptime: i64,
    ) -> Result<StoreResult> {
        self.store(StoreMode::Set, key, value, flags, exptime, 0)
            .await
    }

    /// `add`: store only if the key is absent.
    pub async fn add(
        &mut self,
        key: impl AsRef<[u8]>,
        value: impl AsRef<[u8]>,
        flags: u32,
        exptime: i64,
    ) -> Result<StoreResult> {
        self.store(StoreMode::Add, key, value, flags, exptime, 0)
            .await
    }

    /// `replace`: store only if the key is present.
    pub async fn replace(
        &mut self,
        key: impl AsRef<[u8]>,
        value: impl AsRef<[u8]>,
        flags: u32,
        exptime: i64,
    ) -> Result<StoreResult> {
        self.store(StoreMode::Replace, key, value, flags, exptime, 0)
            .await
    }

    /// `append`: add bytes after an existing value (its flags and expiry
    /// are kept, so none are taken).
    pub async fn append(
        &mut self,
        key: impl AsRef<[u8]>,
        value: impl AsRef<[u8]>,
    ) -> Result<StoreResult> {
        self.store(StoreMode::Append, key, value, 0, 0, 0).await
    }

    /// `prepend`: add bytes before an existing value.
    pub async fn prepend(
        &mut self,
        key: impl AsRef<[u8]>,
        value: impl AsRef<[u8]>,
    ) -> Result<StoreResult> {
        self.store(StoreMode::Prepend, key, value, 0, 0, 0).await
    }

    /// `cas`: store only if the item's cas unique is still `cas_unique`.
    pub async fn cas(
        &mut self,
        key: impl AsRef<[u8]>,
        value: impl AsRef<[u8]>,
        flags: u32,
        exptime: i64,
        cas_unique: u64,
    ) -> Result<StoreResult> {
        self.store(StoreMode::Cas, key, value, flags, exptime, cas_unique)
            .await
    }

    /// `delete`: true if deleted, false if the key was not there.
    pub async fn delete(&mut self, key: impl AsRef<[u8]>) -> Result<bool> {
        let key = key.as_ref();
        match self
            .call(Expect::Line, |buf| encode_delete(buf, key, false))
            .await?
        {
            Response::Deleted => Ok(true),
            Response::NotFound => Ok(false),
            other => Err(unexpected(other)),
        }
    }

    async fn arith(&mut self, key: &[u8], delta: u64, incr: bool) -> Result<Option<u64>> {
        match self
            .call(Expect::Line, |buf| {
                encode_arith(buf, key, delta, incr, false)
            })
            .await?
        {
            Response::Number(n) => Ok(Some(n)),
            Response::NotFound => Ok(None),
            other => Err(unexpected(other)),
        }
    }

    /// `incr`: the new value (wraps at 2^64), or `None` if the key is
    /// missing.
    pub async fn incr(&mut self, key: impl AsRef<[u8]>, delta: u64) -> Result<Option<u64>> {
        self.arith(key.as_ref(), delta, true).await
    }

    /// `decr`: the new value (floors at 0), or `None` if the key is missing.
    pub async fn decr(&mut self, key: impl AsRef<[u8]>, delta: u64) -> Result<Option<u64>> {
        self.arith(key.as_ref(), delta, false).await
    }

    /// `touch`: true if the key exists and got the new expiry.
    pub async fn touch(&mut self, key: impl AsRef<[u8]>, exptime: i64) -> Result<bool> {
        let key = key.as_ref();
        match self
            .call(Expect::Line, |buf| encode_touch(buf, key, exptime, false))
            .await?
        {
            Response::Touched => Ok(true),
            Response::NotFound => Ok(false),
            other => Err(unexpected(other)),
        }
    }

    /// `flush_all [delay]`.
    pub async fn flush_all(&mut self, delay: Option<i64>) -> Result<()> {
        let response = self
            .call(Expect::Line, |buf| {
                encode_flush_all(buf, delay, false);
                Ok(())
            })
            .await?;
        expect_ok(response)
    }

    /// `version`: the server's version string.
    pub async fn version(&mut self) -> Result<String> {
        let response = self
            .call(Expect::Line, |buf| {
                encode_version(buf);
                Ok(())
            })
            .await?;
        match response {
            Response::Version(version) => Ok(version),
            other => Err(unexpected(other)),
        }
    }

    /// `verbosity <level>`.
    pub async fn verbosity(&mut self, level: u32) -> Result<()> {
        let response = self
            .call(Expect::Line, |buf| {
                encode_verbosity(buf, level, false);
                Ok(())
            })
            .await?;
        expect_ok(response)
    }

    /// `stats [group]`: `(name, value)` pairs in server order. A group that
    /// answers with one line (`reset` → `RESET`, `detail on` → `OK`) gives
    /// an empty list.
    pub async fn stats(&mut self, group: Option<&str>) -> Result<Vec<(String, String)>> {
        match self
            .call(Expect::Stats, |buf| encode_stats(buf, group))
            .await?
        {
            Response::Stats(stats) => Ok(stats),
            Response::Reset | Response::Ok => Ok(Vec::new()),
            other => Err(unexpected(other)),
        }
    }

    /// `quit`: asks the server to close the connection.
    pub async fn quit(self) -> Result<()> {
        self.conn.quit().await
    }

    /// Starts a batch of requests sent in one write.
    pub fn pipeline(&mut self) -> Pipeline<'_> {
        Pipeline {
            client: self,
            buf: BytesMut::new(),
            expects: Vec::new(),
            error: None,
        }
    }
}

/// Requests collected into one buffer and sent together by
/// [`Pipeline::execute`], which returns one [`Response`] per request that
/// has a reply, in order. Server error lines stay [`Response`]s here (one
/// request's error does not spoil the others). Dropping a pipeline without
/// executing it sends nothing.
#[derive(Debug)]
pub struct Pipeline<'a> {
    client: &'a mut Client,
    buf: BytesMut,
    expects: Vec<Expect>,
    /// The first request the encoder refused; reported by execute.
    error: Option<EncodeError>,
}

impl Pipeline<'_> {
    fn push(
        &mut self,
        expect: Option<Expect>,
        encode: impl FnOnce(&mut BytesMut) -> std::result::Result<(), EncodeError>,
    ) -> &mut Self {
        if self.error.is_none() {
            match encode(&mut self.buf) {
                Ok(()) => self.expects.extend(expect),
                Err(e) => self.error = Some(e),
            }
        }
        self
    }

    /// Queues `get` (or `gets` when `with_cas`).
    pub fn get<K: AsRef<[u8]>>(&mut self, keys: &[K], with_cas: bool) -> &mut Self {
        self.push(Some(Expect::Retrieval), |buf| {
            encode_get(buf, keys, with_cas)
        })
    }

    /// Queues `gat` (or `gats` when `with_cas`).
    pub fn gat<K: AsRef<[u8]>>(&mut self, exptime: i64, keys: &[K], with_cas: bool) -> &mut Self {
        self.push(Some(Expect::Retrieval), |buf| {
            encode_gat(buf, exptime, keys, with_cas)
        })
    }

    /// Queues a storage command; `noreply` ones get no [`Response`].
    #[allow(clippy::too_many_arguments)] // Mirrors the wire line field by field.
    pub fn store(
        &mut self,
        mode: StoreMode,
        key: &[u8],
        value: &[u8],
        flags: u32,
        exptime: i64,
        cas_unique: u64,
        noreply: bool,
    ) -> &mut Self {
        let expect = (!noreply).then_some(Expect::Line);
        self.push(expect, |buf| {
            encode_store(buf, mode, key, flags, exptime, value, cas_unique, noreply)
        })
    }

    /// Queues `set`.
    pub fn set(&mut self, key: &[u8], value: &[u8], flags: u32, exptime: i64) -> &mut Self {
        self.store(StoreMode::Set, key, value, flags, exptime, 0, false)
    }

    /// Queues `delete`.
    pub fn delete(&mut self, key: &[u8]) -> &mut Self {
        self.push(Some(Expect::Line), |buf| encode_delete(buf, key, false))
    }

    /// Queues `incr` (or `decr` when `!incr`).
    pub fn arith(&mut self, key: &[u8], delta: u64, incr: bool) -> &mut Self {
        self.push(Some(Expect::Line), |buf| {
            encode_arith(buf, key, delta, incr, false)
        })
    }

    /// Queues `touch`.
    pub fn touch(&mut self, key: &[u8], exptime: i64) -> &mut Self {
        self.push(Some(Expect::Line), |buf| {
            encode_touch(buf, key, exptime, false)
        })
    }

    /// Queues `version`.
    pub fn version(&mut self) -> &mut Self {
        self.push(Some(Expect::Line), |buf| {
            encode_version(buf);
            Ok(())
        })
    }

    /// Requests queued so far that will get a reply.
    pub fn len(&self) -> usize {
        self.expects.len()
    }

    /// True if no request with a reply is queued.
    pub fn is_empty(&self) -> bool {
        self.expects.is_empty()
    }

    /// Sends every request in one write and reads all replies, within one
    /// per-request timeout for the whole batch.
    pub async fn execute(self) -> Result<Vec<Response>> {
        if let Some(e) = self.error {
            return Err(Error::Invalid(e));
        }
        let Pipeline {
            client,
            buf,
            expects,
            ..
        } = self;
        let conn = &mut client.conn;
        conn.queue_encoded(&buf, &expects)?;
        let round_trip = async {
            conn.flush().await?;
            let mut responses = Vec::with_capacity(expects.len());
            for _ in 0..expects.len() {
                responses.push(conn.recv().await?);
            }
            Ok(responses)
        };
        match client.timeout {
            Some(limit) => match tokio::time::timeout(limit, round_trip).await {
                Ok(result) => result,
                Err(_) => {
                    client.conn.poison();
                    Err(Error::Timeout(limit))
                }
            },
            None => round_trip.await,
        }
    }
}

/// The server's error line as it was sent, for [`Error::Server`].
fn server_error(response: Response) -> Result<Response> {
    match response {
        Response::Error => Err(Error::Server("ERROR".to_string())),
        Response::ClientError(msg) => Err(Error::Server(format!("CLIENT_ERROR {msg}"))),
        Response::ServerError(msg) => Err(Error::Server(format!("SERVER_ERROR {msg}"))),
        other => Ok(other),
    }
}

fn unexpected(response: Response) -> Error {
    Error::UnexpectedReply(format!("{response:?}"))
}

fn expect_ok(response: Response) -> Result<()> {
    match response {
        Response::Ok => Ok(()),
        other => Err(unexpected(other)),
    }
}
