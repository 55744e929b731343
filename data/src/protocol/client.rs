//! Client side of the text protocol: requests to bytes, bytes to responses.
//!
//! This module owns the wire form of every classic request a client sends
//! (the `encode_*` functions write into a caller's `BytesMut`) and the parsing
//! of the server's reply from the front of a buffer ([`parse_response`], and
//! [`scan_response`], which checks and measures a reply without copying it).
//! It does no I/O and reads no clock: the `client` crate owns the socket and
//! calls in here; tests call it directly.
//!
//! # Format
//!
//! ```text
//! request                                          reply (Expect)
//! get|gets <key>+                                  VALUE <key> <flags> <bytes> [<cas>]\r\n<data>\r\n ... END  (Retrieval)
//! gat|gats <exptime> <key>+                        as get/gets                                                (Retrieval)
//! set|add|replace|append|prepend <key> <flags> <exptime> <bytes> [noreply]\r\n<data>
//!                                                  STORED | NOT_STORED | EXISTS | NOT_FOUND                   (Line)
//! cas <key> <flags> <exptime> <bytes> <cas> [noreply]\r\n<data>     as above                                (Line)
//! delete <key> [noreply]                           DELETED | NOT_FOUND                                        (Line)
//! incr|decr <key> <delta> [noreply]                <u64> | NOT_FOUND                                          (Line)
//! touch <key> <exptime> [noreply]                  TOUCHED | NOT_FOUND                                        (Line)
//! flush_all [<delay>] [noreply]                    OK                                                         (Line)
//! version                                          VERSION <string>                                           (Line)
//! verbosity <n> [noreply]                          OK                                                         (Line)
//! stats [<group>]                                  STAT <name> <value> ... END | RESET                        (Stats)
//! quit                                             (the server closes the connection)
//! any                                              ERROR | CLIENT_ERROR <msg> | SERVER_ERROR <msg>
//! ```
//!
//! Every line ends in `\r\n`. Encoding checks keys (1..=250 bytes, no spaces
//! or control bytes) before it writes anything, because a key holding `\r\n`
//! would smuggle a second command onto the connection.

use bytes::{BufMut, Bytes, BytesMut};
use thiserror::Error;

use super::{put_u64, Request, StatsGroup, DECIMAL_BYTES_MAX};
use crate::command::StoreMode;
use crate::limits::{DATA_BYTES_FIELD_MAX, GET_LINE_BYTES_MAX, KEY_BYTES_MAX};

/// Longest reply line accepted (a `VALUE` header is at most ~300 bytes and a
/// `STAT` line far less); a longer line means the stream is not a memcached
/// reply, and waiting for its end would buffer without bound.
pub const RESPONSE_LINE_BYTES_MAX: usize = 8 * 1024;

/// Largest value a reply may announce. memcached's `-I` goes up to 1 GiB;
/// we accept up to its protocol maximum so that any server can be read, and
/// check it before waiting for the data so a corrupt header cannot make the
/// caller buffer gigabytes.
pub const VALUE_BYTES_MAX: usize = DATA_BYTES_FIELD_MAX as usize;

/// Largest whole retrieval or stats reply: bounds the memory one `get` of
/// many keys can hold in the caller's buffer.
pub const RESPONSE_BYTES_MAX: usize = 1 << 32;

/// Which reply the next bytes must be, decided by the request that was sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Expect {
    /// `VALUE ... END` (get, gets, gat, gats).
    Retrieval,
    /// `STAT ... END` (stats); also `RESET` / `OK` for `stats reset` and
    /// other stats subcommands that answer with one line.
    Stats,
    /// One line: storage, delete, incr/decr, touch, flush_all, version,
    /// verbosity.
    Line,
}

/// One item of a retrieval reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Value {
    pub key: Bytes,
    pub flags: u32,
    /// The value's bytes, binary-safe (may contain `\r\n`).
    pub data: Bytes,
    /// Present for gets/gats.
    pub cas: Option<u64>,
}

/// One complete server reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Response {
    /// The hits of a retrieval, in reply order (empty when every key missed).
    Values(Vec<Value>),
    /// `STAT <name> <value>` lines in order. A line that is not a `STAT`
    /// line (`ITEM ...` from `stats cachedump`) becomes (first word, rest).
    Stats(Vec<(String, String)>),
    Stored,
    NotStored,
    Exists,
    NotFound,
    Deleted,
    Touched,
    Ok,
    Reset,
    /// incr/decr's new value.
    Number(u64),
    /// The string after `VERSION `.
    Version(String),
    /// `ERROR` (unknown command or, on 1.6.18, a wrong token count).
    Error,
    /// `CLIENT_ERROR <msg>`: the message after the space.
    ClientError(String),
    /// `SERVER_ERROR <msg>`: the message after the space.
    ServerError(String),
}

/// What a reply was, without its contents: what [`scan_response`] returns so
/// a load generator can check replies without allocating.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Status {
    /// A retrieval with this many `VALUE` blocks.
    Values(usize),
    /// A stats reply with this many lines.
    Stats(usize),
    Stored,
    NotStored,
    Exists,
    NotFound,
    Deleted,
    Touched,
    Ok,
    Reset,
    Number(u64),
    Version,
    Error,
    ClientError,
    ServerError,
}

impl Status {
    /// True for `ERROR`, `CLIENT_ERROR` and `SERVER_ERROR`.
    pub fn is_error(self) -> bool {
        matches!(
            self,
            Status::Error | Status::ClientError | Status::ServerError
        )
    }
}

impl Response {
    /// The reply's kind, as [`scan_response`] would report it.
    pub fn status(&self) -> Status {
        match self {
            Response::Values(values) => Status::Values(values.len()),
            Response::Stats(stats) => Status::Stats(stats.len()),
            Response::Stored => Status::Stored,
            Response::NotStored => Status::NotStored,
            Response::Exists => Status::Exists,
            Response::NotFound => Status::NotFound,
            Response::Deleted => Status::Deleted,
            Response::Touched => Status::Touched,
            Response::Ok => Status::Ok,
            Response::Reset => Status::Reset,
            Response::Number(n) => Status::Number(*n),
            Response::Version(_) => Status::Version,
            Response::Error => Status::Error,
            Response::ClientError(_) => Status::ClientError,
            Response::ServerError(_) => Status::ServerError,
        }
    }
}

/// Bytes that are not the reply that was expected. The stream cannot be
/// resynchronised after any of these: the caller must drop the connection.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum ResponseError {
    #[error("reply line longer than {RESPONSE_LINE_BYTES_MAX} bytes")]
    LineTooLong,
    #[error("value of {0} bytes is over the {VALUE_BYTES_MAX}-byte limit")]
    ValueTooLarge(u64),
    #[error("reply over the {RESPONSE_BYTES_MAX}-byte limit")]
    ResponseTooLarge,
    #[error("value data not followed by \\r\\n")]
    BadDataTerminator,
    #[error("malformed VALUE line: {0:?}")]
    BadValueLine(String),
    #[error("unexpected reply line for a {expect:?} request: {line:?}")]
    Unexpected { expect: Expect, line: String },
}

/// A request the encoder refuses to write, because the server would
/// misread it.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum EncodeError {
    #[error("empty key")]
    KeyEmpty,
    #[error("key of {0} bytes is over the {KEY_BYTES_MAX}-byte limit")]
    KeyTooLong(usize),
    #[error("key contains byte 0x{0:02x} (space or control character)")]
    KeyInvalidByte(u8),
    #[error("a retrieval needs at least one key")]
    NoKeys,
    #[error("get line of {0} bytes is over the {GET_LINE_BYTES_MAX}-byte limit")]
    LineTooLong(usize),
    #[error("value of {0} bytes is over the protocol's {DATA_BYTES_FIELD_MAX}-byte limit")]
    ValueTooLarge(usize),
    #[error("argument contains a control character")]
    ArgumentInvalidByte,
}

/// Checks that `key` can be sent as one token: 1..=250 bytes, none of them a
/// space, a control byte or DEL.
pub fn check_key(key: &[u8]) -> Result<(), EncodeError> {
    if key.is_empty() {
        return Err(EncodeError::KeyEmpty);
    }
    if key.len() > KEY_BYTES_MAX {
        return Err(EncodeError::KeyTooLong(key.len()));
    }
    match key.iter().find(|&&b| b <= b' ' || b == 0x7f) {
        Some(&b) => Err(EncodeError::KeyInvalidByte(b)),
        None => Ok(()),
    }
}

fn put_i64(buf: &mut BytesMut, n: i64) {
    if n < 0 {
        buf.put_u8(b'-');
    }
    put_u64(buf, n.unsigned_abs());
}

fn put_noreply_crlf(buf: &mut BytesMut, noreply: bool) {
    if noreply {
        buf.put_slice(b" noreply");
    }
    buf.put_slice(b"\r\n");
}

fn check_keys<K: AsRef<[u8]>>(keys: &[K], prefix_bytes: usize) -> Result<(), EncodeError> {
    if keys.is_empty() {
        return Err(EncodeError::NoKeys);
    }
    let mut line_bytes = prefix_bytes + 2;
    for key in keys {
        check_key(key.as_ref())?;
        line_bytes += 1 + key.as_ref().len();
    }
    if line_bytes > GET_LINE_BYTES_MAX {
        return Err(EncodeError::LineTooLong(line_bytes));
    }
    Ok(())
}

/// `get <key>+` (or `gets` when `with_cas`). Reply: [`Expect::Retrieval`].
pub fn encode_get<K: AsRef<[u8]>>(
    buf: &mut BytesMut,
    keys: &[K],
    with_cas: bool,
) -> Result<(), EncodeError> {
    let verb: &[u8] = if with_cas { b"gets" } else { b"get" };
    check_keys(keys, verb.len())?;
    buf.put_slice(verb);
    for key in keys {
        buf.put_u8(b' ');
        buf.put_slice(key.as_ref());
    }
    buf.put_slice(b"\r\n");
    Ok(())
}

/// `gat <exptime> <key>+` (or `gats` when `with_cas`). Reply:
/// [`Expect::Retrieval`].
pub fn encode_gat<K: AsRef<[u8]>>(
    buf: &mut BytesMut,
    exptime: i64,
    keys: &[K],
    with_cas: bool,
) -> Result<(), EncodeError> {
    let verb: &[u8] = if with_cas { b"gats " } else { b"gat " };
    check_keys(keys, verb.len() + DECIMAL_BYTES_MAX + 1)?;
    buf.put_slice(verb);
    put_i64(buf, exptime);
    for key in keys {
        buf.put_u8(b' ');
        buf.put_slice(key.as_ref());
    }
    buf.put_slice(b"\r\n");
    Ok(())
}

/// A storage command: `<mode> <key> <flags> <exptime> <bytes> [<cas>]
/// [noreply]\r\n<data>\r\n`. `cas_unique` is written only for
/// [`StoreMode::Cas`]. Reply: [`Expect::Line`] unless `noreply`.
#[allow(clippy::too_many_arguments)] // Mirrors the wire line field by field.
pub fn encode_store(
    buf: &mut BytesMut,
    mode: StoreMode,
    key: &[u8],
    flags: u32,
    exptime: i64,
    data: &[u8],
    cas_unique: u64,
    noreply: bool,
) -> Result<(), EncodeError> {
    check_key(key)?;
    if data.len() as u64 > DATA_BYTES_FIELD_MAX as u64 {
        return Err(EncodeError::ValueTooLarge(data.len()));
    }
    buf.reserve(key.len() + data.len() + 64);
    buf.put_slice(mode.verb().as_bytes());
    buf.put_u8(b' ');
    buf.put_slice(key);
    buf.put_u8(b' ');
    put_u64(buf, u64::from(flags));
    buf.put_u8(b' ');
    put_i64(buf, exptime);
    buf.put_u8(b' ');
    put_u64(buf, data.len() as u64);
    if mode == StoreMode::Cas {
        buf.put_u8(b' ');
        put_u64(buf, cas_unique);
    }
    put_noreply_crlf(buf, noreply);
    buf.put_slice(data);
    buf.put_slice(b"\r\n");
    Ok(())
}

/// `delete <key> [noreply]`. Reply: [`Expect::Line`] unless `noreply`.
pub fn encode_delete(buf: &mut BytesMut, key: &[u8], noreply: bool) -> Result<(), EncodeError> {
    check_key(key)?;
    buf.put_slice(b"delete ");
    buf.put_slice(key);
    put_noreply_crlf(buf, noreply);
    Ok(())
}

/// `incr <key> <delta>` (or `decr` when `!incr`). Reply: [`Expect::Line`]
/// unless `noreply`.
pub fn encode_arith(
    buf: &mut BytesMut,
    key: &[u8],
    delta: u64,
    incr: bool,
    noreply: bool,
) -> Result<(), EncodeError> {
    check_key(key)?;
    buf.put_slice(if incr { b"incr " } else { b"decr " });
    buf.put_slice(key);
    buf.put_u8(b' ');
    put_u64(buf, delta);
    put_noreply_crlf(buf, noreply);
    Ok(())
}

/// `touch <key> <exptime> [noreply]`. Reply: [`Expect::Line`] unless
/// `noreply`.
pub fn encode_touch(
    buf: &mut BytesMut,
    key: &[u8],
    exptime: i64,
    noreply: bool,
) -> Result<(), EncodeError> {
    check_key(key)?;
    buf.put_slice(b"touch ");
    buf.put_slice(key);
    buf.put_u8(b' ');
    put_i64(buf, exptime);
    put_noreply_crlf(buf, noreply);
    Ok(())
}

/// `flush_all [<delay>] [noreply]`. Reply: [`Expect::Line`] unless `noreply`.
pub fn encode_flush_all(buf: &mut BytesMut, delay: Option<i64>, noreply: bool) {
    buf.put_slice(b"flush_all");
    if let Some(delay) = delay {
        buf.put_u8(b' ');
        put_i64(buf, delay);
    }
    put_noreply_crlf(buf, noreply);
}

/// `version`. Reply: [`Expect::Line`].
pub fn encode_version(buf: &mut BytesMut) {
    buf.put_slice(b"version\r\n");
}

/// `verbosity <level> [noreply]`. Reply: [`Expect::Line`] unless `noreply`.
pub fn encode_verbosity(buf: &mut BytesMut, level: u32, noreply: bool) {
    buf.put_slice(b"verbosity ");
    put_u64(buf, u64::from(level));
    put_noreply_crlf(buf, noreply);
}

/// `stats [<group>]`; `group` may hold several words (`cachedump 1 1`).
/// Reply: [`Expect::Stats`].
pub fn encode_stats(buf: &mut BytesMut, group: Option<&str>) -> Result<(), EncodeError> {
    match group {
        Some(group) if group.bytes().any(|b| b < b' ' || b == 0x7f) => {
            Err(EncodeError::ArgumentInvalidByte)
        }
        Some(group) if !group.trim().is_empty() => {
            buf.put_slice(b"stats ");
            buf.put_slice(group.trim().as_bytes());
            buf.put_slice(b"\r\n");
            Ok(())
        }
        _ => {
            buf.put_slice(b"stats\r\n");
            Ok(())
        }
    }
}

/// `forwarder [PROOF]`: asks for a challenge, or proves the cluster secret
/// for it, making the connection a follower's forwarding link
/// ([`Request::Forwarder`]). Reply: [`Expect::Line`] (`CHALLENGE <hex>`,
/// `OK`).
pub fn encode_forwarder(buf: &mut BytesMut, proof: Option<&[u8; crate::admin_proof::PROOF_BYTES]>) {
    buf.put_slice(b"forwarder");
    if let Some(proof) = proof {
        buf.put_u8(b' ');
        buf.put_slice(crate::admin_proof::to_hex(proof).as_bytes());
    }
    buf.put_slice(b"\r\n");
}

/// `quit`. No reply: the server closes the connection.
pub fn encode_quit(buf: &mut BytesMut) {
    buf.put_slice(b"quit\r\n");
}

/// Writes a parsed request back in its wire form, through the functions
/// above, so that parsing the bytes gives the same request. Returns false,
/// writing nothing, for `cache_memlimit` and the administrative commands,
/// which clients do not send. The
/// verbosity level is not kept by the parser; any level gives the same
/// request, and 1 is written.
pub fn encode_request(buf: &mut BytesMut, request: &Request) -> Result<bool, EncodeError> {
    match request {
        Request::Get { keys, with_cas } => encode_get(buf, keys, *with_cas)?,
        Request::GetAndTouch {
            exptime,
            keys,
            with_cas,
        } => encode_gat(buf, *exptime, keys, *with_cas)?,
        Request::Store(s) => encode_store(
            buf,
            s.mode,
            &s.key,
            s.flags,
            s.exptime,
            &s.data,
            s.cas_unique,
            s.noreply,
        )?,
        Request::Delete { key, noreply } => encode_delete(buf, key, *noreply)?,
        Request::Arith {
            key,
            delta,
            incr,
            noreply,
        } => encode_arith(buf, key, *delta, *incr, *noreply)?,
        Request::Touch {
            key,
            exptime,
            noreply,
        } => encode_touch(buf, key, *exptime, *noreply)?,
        Request::FlushAll { delay, noreply } => {
            encode_flush_all(buf, (*delay != 0).then_some(*delay), *noreply)
        }
        Request::Version => encode_version(buf),
        Request::Verbosity { noreply } => encode_verbosity(buf, 1, *noreply),
        Request::Stats(group) => {
            let group = match group {
                StatsGroup::General => None,
                StatsGroup::Settings => Some("settings"),
                StatsGroup::Items => Some("items"),
                StatsGroup::Slabs => Some("slabs"),
                StatsGroup::Sizes => Some("sizes"),
                StatsGroup::Conns => Some("conns"),
                StatsGroup::Reset => Some("reset"),
                StatsGroup::CacheDump => Some("cachedump 1 0"),
            };
            encode_stats(buf, group)?
        }
        Request::CacheMemlimit { .. } | Request::Admin(_) => return Ok(false),
        Request::Forwarder { proof } => encode_forwarder(buf, proof.as_ref()),
        Request::Meta(meta) => meta.encode(buf),
        Request::Quit => encode_quit(buf),
    }
    Ok(true)
}

/// Receives the parts of a reply as the parser walks it, so that one walk
/// serves both [`parse_response`] (which copies) and [`scan_response`]
/// (which does not).
trait Sink {
    fn value(&mut self, key: &[u8], flags: u32, data: &[u8], cas: Option<u64>);
    fn stat(&mut self, name: &[u8], value: &[u8]);
}

struct Collect {
    values: Vec<Value>,
    stats: Vec<(String, String)>,
}

impl Sink for Collect {
    fn value(&mut self, key: &[u8], flags: u32, data: &[u8], cas: Option<u64>) {
        self.values.push(Value {
            key: Bytes::copy_from_slice(key),
            flags,
            data: Bytes::copy_from_slice(data),
            cas,
        });
    }

    fn stat(&mut self, name: &[u8], value: &[u8]) {
        self.stats.push((
            String::from_utf8_lossy(name).into_owned(),
            String::from_utf8_lossy(value).into_owned(),
        ));
    }
}

struct Count;

impl Sink for Count {
    fn value(&mut self, _: &[u8], _: u32, _: &[u8], _: Option<u64>) {}
    fn stat(&mut self, _: &[u8], _: &[u8]) {}
}

/// One reply line, classified. Borrowed from the buffer.
enum Line<'a> {
    Stored,
    NotStored,
    Exists,
    NotFound,
    Deleted,
    Touched,
    Ok,
    Reset,
    End,
    Number(u64),
    Version(&'a [u8]),
    Error,
    ClientError(&'a [u8]),
    ServerError(&'a [u8]),
    /// Anything else: `VALUE ...`, `STAT ...`, or garbage.
    Other(&'a [u8]),
}

fn classify(line: &[u8]) -> Line<'_> {
    match line {
        b"STORED" => return Line::Stored,
        b"NOT_STORED" => return Line::NotStored,
        b"EXISTS" => return Line::Exists,
        b"NOT_FOUND" => return Line::NotFound,
        b"DELETED" => return Line::Deleted,
        b"TOUCHED" => return Line::Touched,
        b"OK" => return Line::Ok,
        b"RESET" => return Line::Reset,
        b"END" => return Line::End,
        _ => {}
    }
    if let Some(rest) = word_rest(line, b"VERSION") {
        return Line::Version(rest);
    }
    // memcached also sends `ERROR <msg>` ("ERROR Too many open connections").
    if word_rest(line, b"ERROR").is_some() {
        return Line::Error;
    }
    if let Some(rest) = word_rest(line, b"CLIENT_ERROR") {
        return Line::ClientError(rest);
    }
    if let Some(rest) = word_rest(line, b"SERVER_ERROR") {
        return Line::ServerError(rest);
    }
    // incr/decr: digits only; memcached never pads the reply, but tolerate
    // trailing spaces since it pads the stored value.
    let digits = trim_end_spaces(line);
    if let Some(n) = parse_u64(digits) {
        return Line::Number(n);
    }
    Line::Other(line)
}

/// If `line` is `word` alone or `word` followed by a space, what follows the
/// space (empty when there is none).
fn word_rest<'a>(line: &'a [u8], word: &[u8]) -> Option<&'a [u8]> {
    let rest = line.strip_prefix(word)?;
    if rest.is_empty() {
        Some(rest)
    } else {
        rest.strip_prefix(b" ")
    }
}

fn trim_end_spaces(mut s: &[u8]) -> &[u8] {
    while let [head @ .., b' '] = s {
        s = head;
    }
    s
}

fn parse_u64(s: &[u8]) -> Option<u64> {
    if s.is_empty() || s.len() > DECIMAL_BYTES_MAX {
        return None;
    }
    let mut n: u64 = 0;
    for &b in s {
        if !b.is_ascii_digit() {
            return None;
        }
        n = n.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
    }
    Some(n)
}

/// The next line starting at `at`: its content (without `\r\n` or a bare
/// `\n`) and the offset after it; `None` if it has not fully arrived.
fn next_line(buf: &[u8], at: usize) -> Result<Option<(&[u8], usize)>, ResponseError> {
    let rest = &buf[at..];
    let window = &rest[..rest.len().min(RESPONSE_LINE_BYTES_MAX + 2)];
    match window.iter().position(|&b| b == b'\n') {
        Some(nl) => {
            let line = &rest[..nl];
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if line.len() > RESPONSE_LINE_BYTES_MAX {
                return Err(ResponseError::LineTooLong);
            }
            Ok(Some((line, at + nl + 1)))
        }
        None if rest.len() > RESPONSE_LINE_BYTES_MAX + 1 => Err(ResponseError::LineTooLong),
        None => Ok(None),
    }
}

fn unexpected(expect: Expect, line: &[u8]) -> ResponseError {
    ResponseError::Unexpected {
        expect,
        line: String::from_utf8_lossy(line).into_owned(),
    }
}

fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The single-line replies any request may get, as a [`Status`] and,
/// for [`parse_response`], its [`Response`].
fn single_line(line: &Line<'_>) -> Option<Status> {
    Some(match line {
        Line::Stored => Status::Stored,
        Line::NotStored => Status::NotStored,
        Line::Exists => Status::Exists,
        Line::NotFound => Status::NotFound,
        Line::Deleted => Status::Deleted,
        Line::Touched => Status::Touched,
        Line::Ok => Status::Ok,
        Line::Reset => Status::Reset,
        Line::Number(n) => Status::Number(*n),
        Line::Version(_) => Status::Version,
        Line::Error => Status::Error,
        Line::ClientError(_) => Status::ClientError,
        Line::ServerError(_) => Status::ServerError,
        Line::End | Line::Other(_) => return None,
    })
}

fn line_response(line: &Line<'_>) -> Option<Response> {
    Some(match line {
        Line::Stored => Response::Stored,
        Line::NotStored => Response::NotStored,
        Line::Exists => Response::Exists,
        Line::NotFound => Response::NotFound,
        Line::Deleted => Response::Deleted,
        Line::Touched => Response::Touched,
        Line::Ok => Response::Ok,
        Line::Reset => Response::Reset,
        Line::Number(n) => Response::Number(*n),
        Line::Version(v) => Response::Version(lossy(v)),
        Line::Error => Response::Error,
        Line::ClientError(m) => Response::ClientError(lossy(m)),
        Line::ServerError(m) => Response::ServerError(lossy(m)),
        Line::End | Line::Other(_) => return None,
    })
}

/// Which error line ended a multi-line reply, if `line` is one.
fn error_line(line: &Line<'_>) -> bool {
    matches!(
        line,
        Line::Error | Line::ClientError(_) | Line::ServerError(_)
    )
}

/// Parses `VALUE <key> <flags> <bytes> [<cas>]` into its fields.
fn value_header(line: &[u8]) -> Option<(&[u8], u32, u64, Option<u64>)> {
    let rest = line.strip_prefix(b"VALUE ")?;
    let mut tokens = rest.split(|&b| b == b' ').filter(|t| !t.is_empty());
    let key = tokens.next()?;
    let flags = u32::try_from(parse_u64(tokens.next()?)?).ok()?;
    let bytes = parse_u64(tokens.next()?)?;
    let cas = match tokens.next() {
        Some(token) => Some(parse_u64(token)?),
        None => None,
    };
    if tokens.next().is_some() {
        return None;
    }
    Some((key, flags, bytes, cas))
}

/// Walks one reply from the front of `buf`. Returns the first line's
/// classification when the reply was a single line, or the multi-line
/// status, and the bytes consumed.
fn walk<S: Sink>(
    buf: &[u8],
    expect: Expect,
    sink: &mut S,
) -> Result<Option<(Walked, usize)>, ResponseError> {
    let mut at = 0;
    let mut items = 0usize;
    loop {
        if at > RESPONSE_BYTES_MAX {
            return Err(ResponseError::ResponseTooLarge);
        }
        let Some((raw, next)) = next_line(buf, at)? else {
            return Ok(None);
        };
        let line = classify(raw);
        // A reply that is one line: anything for Expect::Line; an error line
        // (or RESET/OK for stats subcommands) in place of a multi-line reply.
        // memcached drops VALUEs already found when a later key is bad, so an
        // error after VALUE lines ends the reply too.
        let single = match expect {
            Expect::Line => true,
            Expect::Retrieval => error_line(&line),
            Expect::Stats => {
                error_line(&line) || (items == 0 && matches!(line, Line::Reset | Line::Ok))
            }
        };
        if single {
            return match single_line(&line) {
                Some(_) => Ok(Some((
                    Walked::Line {
                        start: at,
                        end: next,
                    },
                    next,
                ))),
                None => Err(unexpected(expect, raw)),
            };
        }
        match (expect, &line) {
            (_, Line::End) => {
                let walked = match expect {
                    Expect::Retrieval => Walked::Values(items),
                    _ => Walked::Stats(items),
                };
                return Ok(Some((walked, next)));
            }
            (Expect::Retrieval, Line::Other(raw)) if raw.starts_with(b"VALUE ") => {
                let (key, flags, bytes, cas) =
                    value_header(raw).ok_or_else(|| ResponseError::BadValueLine(lossy(raw)))?;
                if bytes > VALUE_BYTES_MAX as u64 {
                    return Err(ResponseError::ValueTooLarge(bytes));
                }
                // Checked against VALUE_BYTES_MAX just above, so it fits.
                let bytes = bytes as usize;
                if buf.len() < next + bytes + 2 {
                    return Ok(None);
                }
                let data = &buf[next..next + bytes];
                if &buf[next + bytes..next + bytes + 2] != b"\r\n" {
                    return Err(ResponseError::BadDataTerminator);
                }
                sink.value(key, flags, data, cas);
                items += 1;
                at = next + bytes + 2;
            }
            (Expect::Stats, _) => {
                // `STAT <name> <value>`; other lines (`ITEM <key> [...]`)
                // become (first word, rest) so nothing is lost.
                let body = raw.strip_prefix(b"STAT ").unwrap_or(raw);
                let (name, value) = match body.iter().position(|&b| b == b' ') {
                    Some(space) => (&body[..space], &body[space + 1..]),
                    None => (body, &body[body.len()..]),
                };
                sink.stat(name, value);
                items += 1;
                at = next;
            }
            _ => return Err(unexpected(expect, raw)),
        }
    }
}

enum Walked {
    Values(usize),
    Stats(usize),
    /// A one-line reply at `buf[start..end]`.
    Line {
        start: usize,
        end: usize,
    },
}

fn line_at(buf: &[u8], start: usize, end: usize) -> Line<'_> {
    let raw = &buf[start..end - 1];
    classify(raw.strip_suffix(b"\r").unwrap_or(raw))
}

/// Parses one reply from the front of `buf`, copying values out of it.
///
/// `Ok(None)`: the reply has not fully arrived. `Ok(Some((response, n)))`:
/// a reply that took the first `n` bytes. An error means the bytes are not
/// the reply `expect` allows; the connection cannot be trusted any more.
pub fn parse_response(
    buf: &[u8],
    expect: Expect,
) -> Result<Option<(Response, usize)>, ResponseError> {
    let mut collect = Collect {
        values: Vec::new(),
        stats: Vec::new(),
    };
    let Some((walked, consumed)) = walk(buf, expect, &mut collect)? else {
        return Ok(None);
    };
    let response = match walked {
        Walked::Values(_) => Response::Values(collect.values),
        Walked::Stats(_) => Response::Stats(collect.stats),
        Walked::Line { start, end } => line_response(&line_at(buf, start, end))
            // walk() returns Line only for lines single_line() accepts, and
            // line_response() accepts the same set.
            .expect("walk returned a line that is a one-line reply"),
    };
    Ok(Some((response, consumed)))
}

/// Like [`parse_response`] but copies nothing: reports what the reply was
/// and how many bytes it took. For load generators and for skipping replies.
pub fn scan_response(buf: &[u8], expect: Expect) -> Result<Option<(Status, usize)>, ResponseError> {
    let Some((walked, consumed)) = walk(buf, expect, &mut Count)? else {
        return Ok(None);
    };
    let status = match walked {
        Walked::Values(n) => Status::Values(n),
        Walked::Stats(n) => Status::Stats(n),
        Walked::Line { start, end } => single_line(&line_at(buf, start, end))
            // Same set as walk() checked with single_line().
            .expect("walk returned a line that is a one-line reply"),
    };
    Ok(Some((status, consumed)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn enc(f: impl FnOnce(&mut BytesMut) -> Result<(), EncodeError>) -> Vec<u8> {
        let mut buf = BytesMut::new();
        f(&mut buf).unwrap();
        buf.to_vec()
    }

    #[test]
    fn encodes_retrievals() {
        assert_eq!(enc(|b| encode_get(b, &["a"], false)), b"get a\r\n");
        assert_eq!(
            enc(|b| encode_get(b, &["a", "bb", "c"], true)),
            b"gets a bb c\r\n"
        );
        assert_eq!(
            enc(|b| encode_gat(b, -1, &[b"k1".as_slice(), b"k2"], false)),
            b"gat -1 k1 k2\r\n"
        );
        assert_eq!(enc(|b| encode_gat(b, 300, &["k"], true)), b"gats 300 k\r\n");
    }

    #[test]
    fn encodes_storage() {
        assert_eq!(
            enc(|b| encode_store(b, StoreMode::Set, b"k", 5, 0, b"a\r\nb", 0, false)),
            b"set k 5 0 4\r\na\r\nb\r\n"
        );
        assert_eq!(
            enc(|b| encode_store(b, StoreMode::Add, b"k", 0, 100, b"", 0, true)),
            b"add k 0 100 0 noreply\r\n\r\n"
        );
        assert_eq!(
            enc(|b| encode_store(b, StoreMode::Cas, b"k", u32::MAX, -1, b"v", u64::MAX, false)),
            b"cas k 4294967295 -1 1 18446744073709551615\r\nv\r\n"
        );
        for (mode, verb) in [
            (StoreMode::Replace, "replace"),
            (StoreMode::Append, "append"),
            (StoreMode::Prepend, "prepend"),
        ] {
            let expected = format!("{verb} key 1 2 1\r\nx\r\n");
            assert_eq!(
                enc(|b| encode_store(b, mode, b"key", 1, 2, b"x", 99, false)),
                expected.as_bytes()
            );
        }
    }

    #[test]
    fn encodes_other_commands() {
        assert_eq!(enc(|b| encode_delete(b, b"k", false)), b"delete k\r\n");
        assert_eq!(
            enc(|b| encode_delete(b, b"k", true)),
            b"delete k noreply\r\n"
        );
        assert_eq!(
            enc(|b| encode_arith(b, b"n", 18446744073709551615, true, false)),
            b"incr n 18446744073709551615\r\n"
        );
        assert_eq!(
            enc(|b| encode_arith(b, b"n", 0, false, true)),
            b"decr n 0 noreply\r\n"
        );
        assert_eq!(enc(|b| encode_touch(b, b"k", -5, false)), b"touch k -5\r\n");
        assert_eq!(
            enc(|b| {
                encode_flush_all(b, None, false);
                encode_flush_all(b, Some(10), true);
                encode_version(b);
                encode_verbosity(b, 1, false);
                encode_verbosity(b, 0, true);
                encode_quit(b);
                Ok(())
            }),
            b"flush_all\r\nflush_all 10 noreply\r\nversion\r\nverbosity 1\r\nverbosity 0 noreply\r\nquit\r\n"
        );
        assert_eq!(enc(|b| encode_stats(b, None)), b"stats\r\n");
        assert_eq!(enc(|b| encode_stats(b, Some(""))), b"stats\r\n");
        assert_eq!(
            enc(|b| encode_stats(b, Some("cachedump 1 1"))),
            b"stats cachedump 1 1\r\n"
        );
    }

    #[test]
    fn refuses_keys_that_would_break_the_line() {
        let mut buf = BytesMut::new();
        assert_eq!(
            encode_get::<&str>(&mut buf, &[], false),
            Err(EncodeError::NoKeys)
        );
        assert_eq!(
            encode_delete(&mut buf, b"", false),
            Err(EncodeError::KeyEmpty)
        );
        assert_eq!(
            encode_delete(&mut buf, &[b'a'; 251], false),
            Err(EncodeError::KeyTooLong(251))
        );
        assert!(encode_delete(&mut buf, &[b'a'; 250], false).is_ok());
        buf.clear();
        for bad in [b' ', b'\r', b'\n', b'\t', 0, 0x7f] {
            assert_eq!(
                encode_get(&mut buf, &[b"ok".as_slice(), &[b'a', bad]], false),
                Err(EncodeError::KeyInvalidByte(bad))
            );
        }
        assert_eq!(
            encode_stats(&mut buf, Some("x\r\nflush_all")),
            Err(EncodeError::ArgumentInvalidByte)
        );
        // Nothing was written by any refused call.
        assert!(buf.is_empty());
        // UTF-8 keys are raw bytes above 0x7f: allowed.
        assert!(check_key("clé".as_bytes()).is_ok());
    }

    fn parse_all(bytes: &[u8], expect: Expect) -> Response {
        let (response, used) = parse_response(bytes, expect).unwrap().unwrap();
        assert_eq!(used, bytes.len(), "whole reply consumed");
        let (status, used) = scan_response(bytes, expect).unwrap().unwrap();
        assert_eq!(used, bytes.len());
        assert_eq!(status, response.status());
        response
    }

    #[test]
    fn parses_single_lines() {
        let cases: &[(&[u8], Response)] = &[
            (b"STORED\r\n", Response::Stored),
            (b"NOT_STORED\r\n", Response::NotStored),
            (b"EXISTS\r\n", Response::Exists),
            (b"NOT_FOUND\r\n", Response::NotFound),
            (b"DELETED\r\n", Response::Deleted),
            (b"TOUCHED\r\n", Response::Touched),
            (b"OK\r\n", Response::Ok),
            (b"RESET\r\n", Response::Reset),
            (b"0\r\n", Response::Number(0)),
            (b"18446744073709551615\r\n", Response::Number(u64::MAX)),
            (b"VERSION 1.6.18\r\n", Response::Version("1.6.18".into())),
            (b"ERROR\r\n", Response::Error),
            (b"ERROR Too many open connections\r\n", Response::Error),
            (
                b"CLIENT_ERROR bad data chunk\r\n",
                Response::ClientError("bad data chunk".into()),
            ),
            (
                b"SERVER_ERROR object too large for cache\r\n",
                Response::ServerError("object too large for cache".into()),
            ),
        ];
        for (bytes, expected) in cases {
            assert_eq!(&parse_all(bytes, Expect::Line), expected, "{bytes:?}");
            for cut in 0..bytes.len() {
                assert_eq!(parse_response(&bytes[..cut], Expect::Line), Ok(None));
            }
        }
        // A bare \n ends a line too.
        assert_eq!(parse_all(b"STORED\n", Expect::Line), Response::Stored);
        // Numbers above u64 are not numbers.
        assert!(parse_response(b"18446744073709551616\r\n", Expect::Line).is_err());
        assert!(parse_response(b"END\r\n", Expect::Line).is_err());
        assert!(parse_response(b"BOGUS\r\n", Expect::Line).is_err());
    }

    #[test]
    fn parses_values_binary_safe() {
        let bytes = b"VALUE a 5 4\r\n\r\n\r\n\r\nVALUE b 0 0\r\n\r\nEND\r\nSTORED\r\n";
        let (response, used) = parse_response(bytes, Expect::Retrieval).unwrap().unwrap();
        assert_eq!(used, bytes.len() - b"STORED\r\n".len());
        assert_eq!(
            response,
            Response::Values(vec![
                Value {
                    key: Bytes::from_static(b"a"),
                    flags: 5,
                    data: Bytes::from_static(b"\r\n\r\n"),
                    cas: None
                },
                Value {
                    key: Bytes::from_static(b"b"),
                    flags: 0,
                    data: Bytes::new(),
                    cas: None
                },
            ])
        );
        assert_eq!(
            parse_all(b"VALUE k 1 1 77\r\nx\r\nEND\r\n", Expect::Retrieval),
            Response::Values(vec![Value {
                key: Bytes::from_static(b"k"),
                flags: 1,
                data: Bytes::from_static(b"x"),
                cas: Some(77)
            }])
        );
        assert_eq!(
            parse_all(b"END\r\n", Expect::Retrieval),
            Response::Values(vec![])
        );
        // An error in place of (or after) values is the whole reply.
        assert_eq!(
            parse_all(
                b"VALUE k 1 1\r\nx\r\nCLIENT_ERROR bad command line format\r\n",
                Expect::Retrieval
            ),
            Response::ClientError("bad command line format".into())
        );
        assert_eq!(parse_all(b"ERROR\r\n", Expect::Retrieval), Response::Error);
    }

    #[test]
    fn rejects_broken_values() {
        assert_eq!(
            parse_response(b"VALUE k 0 2\r\nabcEND\r\n", Expect::Retrieval),
            Err(ResponseError::BadDataTerminator)
        );
        assert!(matches!(
            parse_response(b"VALUE k x 2\r\n", Expect::Retrieval),
            Err(ResponseError::BadValueLine(_))
        ));
        assert!(matches!(
            parse_response(b"VALUE k 4294967296 2\r\n", Expect::Retrieval),
            Err(ResponseError::BadValueLine(_))
        ));
        // The size is checked before the data is waited for.
        assert_eq!(
            parse_response(b"VALUE k 0 99999999999\r\n", Expect::Retrieval),
            Err(ResponseError::ValueTooLarge(99999999999))
        );
        assert!(matches!(
            parse_response(b"STORED\r\n", Expect::Retrieval),
            Err(ResponseError::Unexpected { .. })
        ));
        let long = vec![b'x'; RESPONSE_LINE_BYTES_MAX + 10];
        assert_eq!(
            parse_response(&long, Expect::Line),
            Err(ResponseError::LineTooLong)
        );
        // Just under the limit, with no newline yet: still waiting.
        assert_eq!(
            parse_response(&long[..RESPONSE_LINE_BYTES_MAX], Expect::Line),
            Ok(None)
        );
    }

    #[test]
    fn parses_stats() {
        let bytes = b"STAT pid 12\r\nSTAT version 1.6.18\r\nSTAT domain_socket NULL\r\nSTAT empty\r\nEND\r\n";
        assert_eq!(
            parse_all(bytes, Expect::Stats),
            Response::Stats(vec![
                ("pid".into(), "12".into()),
                ("version".into(), "1.6.18".into()),
                ("domain_socket".into(), "NULL".into()),
                ("empty".into(), "".into()),
            ])
        );
        assert_eq!(
            parse_all(b"ITEM c [1 b; 0 s]\r\nEND\r\n", Expect::Stats),
            Response::Stats(vec![("ITEM".into(), "c [1 b; 0 s]".into())])
        );
        assert_eq!(parse_all(b"RESET\r\n", Expect::Stats), Response::Reset);
        assert_eq!(parse_all(b"ERROR\r\n", Expect::Stats), Response::Error);
        assert_eq!(
            parse_all(b"END\r\n", Expect::Stats),
            Response::Stats(vec![])
        );
    }

    /// Writes `response` as a server would.
    fn server_encode(response: &Response, out: &mut Vec<u8>) {
        match response {
            Response::Values(values) => {
                for v in values {
                    out.extend_from_slice(b"VALUE ");
                    out.extend_from_slice(&v.key);
                    out.extend_from_slice(format!(" {} {}", v.flags, v.data.len()).as_bytes());
                    if let Some(cas) = v.cas {
                        out.extend_from_slice(format!(" {cas}").as_bytes());
                    }
                    out.extend_from_slice(b"\r\n");
                    out.extend_from_slice(&v.data);
                    out.extend_from_slice(b"\r\n");
                }
                out.extend_from_slice(b"END\r\n");
            }
            Response::Stats(stats) => {
                for (name, value) in stats {
                    out.extend_from_slice(format!("STAT {name} {value}\r\n").as_bytes());
                }
                out.extend_from_slice(b"END\r\n");
            }
            Response::Stored => out.extend_from_slice(b"STORED\r\n"),
            Response::NotStored => out.extend_from_slice(b"NOT_STORED\r\n"),
            Response::Exists => out.extend_from_slice(b"EXISTS\r\n"),
            Response::NotFound => out.extend_from_slice(b"NOT_FOUND\r\n"),
            Response::Deleted => out.extend_from_slice(b"DELETED\r\n"),
            Response::Touched => out.extend_from_slice(b"TOUCHED\r\n"),
            Response::Ok => out.extend_from_slice(b"OK\r\n"),
            Response::Reset => out.extend_from_slice(b"RESET\r\n"),
            Response::Number(n) => out.extend_from_slice(format!("{n}\r\n").as_bytes()),
            Response::Version(v) => out.extend_from_slice(format!("VERSION {v}\r\n").as_bytes()),
            Response::Error => out.extend_from_slice(b"ERROR\r\n"),
            Response::ClientError(m) => {
                out.extend_from_slice(format!("CLIENT_ERROR {m}\r\n").as_bytes())
            }
            Response::ServerError(m) => {
                out.extend_from_slice(format!("SERVER_ERROR {m}\r\n").as_bytes())
            }
        }
    }

    fn expect_of(response: &Response) -> Expect {
        match response {
            Response::Values(_) => Expect::Retrieval,
            Response::Stats(_) => Expect::Stats,
            _ => Expect::Line,
        }
    }

    fn arb_key() -> impl Strategy<Value = Bytes> {
        proptest::collection::vec(
            any::<u8>().prop_filter("key byte", |&b| b > b' ' && b != 0x7f),
            1..=KEY_BYTES_MAX,
        )
        .prop_map(Bytes::from)
    }

    fn arb_values() -> impl Strategy<Value = Response> {
        (
            any::<bool>(),
            proptest::collection::vec(
                (
                    arb_key(),
                    any::<u32>(),
                    proptest::collection::vec(any::<u8>(), 0..200),
                    any::<u64>(),
                ),
                0..5,
            ),
        )
            .prop_map(|(with_cas, items)| {
                Response::Values(
                    items
                        .into_iter()
                        .map(|(key, flags, data, cas)| Value {
                            key,
                            flags,
                            data: Bytes::from(data),
                            cas: with_cas.then_some(cas),
                        })
                        .collect(),
                )
            })
    }

    fn arb_response() -> impl Strategy<Value = Response> {
        prop_oneof![
            arb_values(),
            proptest::collection::vec(("[a-z_:0-9]{1,20}", "[ -~]{0,30}"), 0..6)
                .prop_map(Response::Stats),
            Just(Response::Stored),
            Just(Response::NotStored),
            Just(Response::Exists),
            Just(Response::NotFound),
            Just(Response::Deleted),
            Just(Response::Touched),
            Just(Response::Ok),
            Just(Response::Reset),
            any::<u64>().prop_map(Response::Number),
            "[!-~][ -~]{0,20}".prop_map(Response::Version),
            Just(Response::Error),
            "[ -~]{0,40}".prop_map(Response::ClientError),
            "[ -~]{0,40}".prop_map(Response::ServerError),
        ]
    }

    proptest! {
        #[test]
        fn server_encoded_replies_parse_back(
            responses in proptest::collection::vec(arb_response(), 1..6),
            cut_seed in any::<usize>(),
        ) {
            let mut stream = Vec::new();
            let mut ends = Vec::new();
            for response in &responses {
                server_encode(response, &mut stream);
                ends.push(stream.len());
            }
            // Read back in order, as a pipelining client does.
            let mut at = 0;
            for (response, end) in responses.iter().zip(&ends) {
                let expect = expect_of(response);
                let (parsed, used) = parse_response(&stream[at..], expect).unwrap().unwrap();
                prop_assert_eq!(&parsed, response);
                prop_assert_eq!(at + used, *end);
                let (status, scanned) = scan_response(&stream[at..], expect).unwrap().unwrap();
                prop_assert_eq!(status, response.status());
                prop_assert_eq!(scanned, used);
                // Any strict prefix of a reply is incomplete, never an error
                // or a shorter reply.
                let cut = cut_seed % used;
                prop_assert_eq!(parse_response(&stream[at..at + cut], expect), Ok(None));
                at += used;
            }
        }

        #[test]
        fn parser_never_panics_and_stays_in_bounds(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            for expect in [Expect::Line, Expect::Retrieval, Expect::Stats] {
                if let Ok(Some((_, used))) = parse_response(&bytes, expect) {
                    prop_assert!(used > 0 && used <= bytes.len());
                    prop_assert_eq!(bytes[used - 1], b'\n');
                }
            }
        }
    }
}
