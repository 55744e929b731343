//! The memcached binary protocol, as memcached 1.6 speaks it: requests
//! parsed from bytes ([`parse_binary`]), outcomes and replies written as
//! response packets, and the few client-side helpers a follower needs to
//! relay a request to the leader ([`loud`], [`response_len`]).
//!
//! # Packets
//!
//! ```text
//! request:  0x80 opcode keylen:u16 extlen:u8 datatype:u8 vbucket:u16
//!           bodylen:u32 opaque:u32 cas:u64 | extras | key | value
//! response: 0x81 opcode keylen:u16 extlen:u8 datatype:u8 status:u16
//!           bodylen:u32 opaque:u32 cas:u64 | extras | key | value
//! ```
//!
//! All numbers are big endian. A response echoes its request's opcode and
//! opaque. The quiet opcodes (GetQ, SetQ, ...) answer only what memcached
//! answers for them ([`suppressed`]): a get's hit, any other command's
//! error. What memcached does with malformed packets is followed exactly:
//! a first byte other than 0x80 closes the connection without a reply; a
//! key or extras longer than the body, `Unknown command` and close; a key
//! over 250 bytes or a command whose lengths do not fit it, `Invalid
//! arguments` and close; an opcode memcached does not serve, `Unknown
//! command` with its body skipped. One difference: memcached skips the
//! body of an unknown command counted from after its key and extras (so
//! it eats that many bytes of the next request); this skips the body.

use bytes::{BufMut, Bytes, BytesMut};

use crate::command::StoreMode;
use crate::limits::{Limits, KEY_BYTES_MAX};
use crate::state::Outcome;

pub const REQUEST_MAGIC: u8 = 0x80;
pub const RESPONSE_MAGIC: u8 = 0x81;
pub const HEADER_BYTES: usize = 24;

/// The opcodes memcached 1.6 serves (SASL's only with `-S`).
pub mod opcode {
    pub const GET: u8 = 0x00;
    pub const SET: u8 = 0x01;
    pub const ADD: u8 = 0x02;
    pub const REPLACE: u8 = 0x03;
    pub const DELETE: u8 = 0x04;
    pub const INCREMENT: u8 = 0x05;
    pub const DECREMENT: u8 = 0x06;
    pub const QUIT: u8 = 0x07;
    pub const FLUSH: u8 = 0x08;
    pub const GETQ: u8 = 0x09;
    pub const NOOP: u8 = 0x0a;
    pub const VERSION: u8 = 0x0b;
    pub const GETK: u8 = 0x0c;
    pub const GETKQ: u8 = 0x0d;
    pub const APPEND: u8 = 0x0e;
    pub const PREPEND: u8 = 0x0f;
    pub const STAT: u8 = 0x10;
    pub const SETQ: u8 = 0x11;
    pub const ADDQ: u8 = 0x12;
    pub const REPLACEQ: u8 = 0x13;
    pub const DELETEQ: u8 = 0x14;
    pub const INCREMENTQ: u8 = 0x15;
    pub const DECREMENTQ: u8 = 0x16;
    pub const QUITQ: u8 = 0x17;
    pub const FLUSHQ: u8 = 0x18;
    pub const APPENDQ: u8 = 0x19;
    pub const PREPENDQ: u8 = 0x1a;
    pub const TOUCH: u8 = 0x1c;
    pub const GAT: u8 = 0x1d;
    pub const GATQ: u8 = 0x1e;
    pub const GATK: u8 = 0x23;
    pub const GATKQ: u8 = 0x24;
    pub const SASL_LIST_MECHS: u8 = 0x20;
    pub const SASL_AUTH: u8 = 0x21;
    pub const SASL_STEP: u8 = 0x22;
}

/// Response statuses, with the messages memcached puts in an error's body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    NoError = 0x00,
    KeyNotFound = 0x01,
    KeyExists = 0x02,
    TooLarge = 0x03,
    InvalidArguments = 0x04,
    NotStored = 0x05,
    NonNumeric = 0x06,
    /// SASL: not authenticated, or the credentials were refused.
    AuthError = 0x20,
    /// SASL: send the next step (PLAIN begun without its message).
    AuthContinue = 0x21,
    UnknownCommand = 0x81,
    OutOfMemory = 0x82,
    /// The write's outcome is unknown, or the log could not be written.
    InternalError = 0x84,
    /// No leader now (an election is under way): retry.
    TemporaryFailure = 0x86,
}

impl Status {
    /// memcached's body for an error of this status.
    pub fn message(self) -> &'static str {
        match self {
            Status::NoError => "",
            Status::KeyNotFound => "Not found",
            Status::KeyExists => "Data exists for key.",
            Status::TooLarge => "Too large.",
            Status::InvalidArguments => "Invalid arguments",
            Status::NotStored => "Not stored.",
            Status::NonNumeric => "Non-numeric server-side value for incr or decr",
            Status::AuthError => "Auth failure.",
            Status::AuthContinue => "",
            Status::UnknownCommand => "Unknown command",
            Status::OutOfMemory => "Out of memory",
            Status::InternalError => "Internal error",
            Status::TemporaryFailure => "Temporary failure",
        }
    }

    /// The status and body for one of the server's text error lines
    /// ([`crate::protocol::reply::errors`]) on a binary connection: the
    /// line's own words where memcached has no message for the case.
    pub fn of_error_line(line: &'static str) -> (Status, &'static str) {
        use crate::protocol::reply::errors;
        let text = line
            .trim_end_matches("\r\n")
            .trim_start_matches("SERVER_ERROR ");
        match line {
            errors::OUT_OF_MEMORY => (Status::OutOfMemory, Status::OutOfMemory.message()),
            errors::TOO_LARGE => (Status::TooLarge, Status::TooLarge.message()),
            errors::NO_LEADER | errors::NOT_READY => (Status::TemporaryFailure, text),
            _ => (Status::InternalError, text),
        }
    }
}

/// What a response echoes of its request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Echo {
    pub opcode: u8,
    pub opaque: u32,
}

/// An exptime of all ones on an increment or decrement: do not create a
/// missing counter.
pub const ARITH_NO_CREATE: u32 = u32::MAX;

/// One request, quiet opcodes folded into their loud forms.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BinaryCommand {
    /// Get, GetK (`with_key`), and their quiet forms.
    Get {
        key: Bytes,
        with_key: bool,
    },
    /// GAT, GATK (`with_key`), and their quiet forms; `exptime` as sent.
    GetAndTouch {
        key: Bytes,
        exptime: i64,
        with_key: bool,
    },
    Touch {
        key: Bytes,
        exptime: i64,
    },
    /// Set, Add, Replace (a nonzero `cas` makes any of them a CAS, as
    /// memcached does), Append, Prepend (a nonzero `cas` must match).
    Store {
        mode: StoreMode,
        key: Bytes,
        flags: u32,
        exptime: i64,
        data: Bytes,
        cas: u64,
    },
    Delete {
        key: Bytes,
        cas: u64,
    },
    /// Increment or decrement; a missing counter is created holding
    /// `initial` unless `exptime` is [`ARITH_NO_CREATE`].
    Arith {
        key: Bytes,
        incr: bool,
        delta: u64,
        initial: u64,
        exptime: u32,
        cas: u64,
    },
    /// Flush with a delay (0: now).
    Flush {
        delay: i64,
    },
    Noop,
    Version,
    Quit,
    /// Stat, with the group named by the key (empty: the general stats).
    Stat {
        group: Bytes,
    },
    /// SASL List Mechanisms.
    SaslListMechs,
    /// SASL Auth (`step` false) or Step, with the mechanism named by the
    /// key and its message as the value.
    SaslAuth {
        mech: Bytes,
        message: Bytes,
        step: bool,
    },
}

/// One parsed request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BinaryRequest {
    pub echo: Echo,
    /// A quiet opcode: see [`suppressed`].
    pub quiet: bool,
    pub command: BinaryCommand,
}

/// What the connection does with a packet that is not a request it serves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BinaryError {
    /// Close without a reply (not a request packet).
    Close,
    /// Reply `status` with its message, drop `consumed` bytes, discard
    /// `discard` more as they arrive, then close if `close`.
    Reply {
        echo: Echo,
        status: Status,
        consumed: usize,
        discard: u64,
        close: bool,
    },
    /// A store whose value is over the item limit: drop `consumed`, discard
    /// `discard` more, reply `Too large.` (even when quiet), and for a set
    /// delete `key`, as memcached does so that a failed overwrite leaves no
    /// stale value behind.
    TooLarge {
        echo: Echo,
        consumed: usize,
        discard: u64,
        key: Bytes,
        delete: bool,
    },
}

/// The loud form of an opcode and whether it was quiet.
pub fn loud(op: u8) -> (u8, bool) {
    use opcode::*;
    let loud = match op {
        GETQ => GET,
        GETKQ => GETK,
        SETQ => SET,
        ADDQ => ADD,
        REPLACEQ => REPLACE,
        DELETEQ => DELETE,
        INCREMENTQ => INCREMENT,
        DECREMENTQ => DECREMENT,
        QUITQ => QUIT,
        FLUSHQ => FLUSH,
        APPENDQ => APPEND,
        PREPENDQ => PREPEND,
        GATQ => GAT,
        GATKQ => GATK,
        other => return (other, false),
    };
    (loud, true)
}

/// Whether a response of `status` to a request with opcode `op` is left
/// out: for a quiet opcode, a get's miss and any other command's success
/// (memcached sends a quiet get's hit and every error).
pub fn suppressed(op: u8, status: u16) -> bool {
    use opcode::*;
    let (loud, quiet) = loud(op);
    if !quiet {
        return false;
    }
    match loud {
        GET | GETK | GAT | GATK => status == Status::KeyNotFound as u16,
        _ => status == Status::NoError as u16,
    }
}

/// A request packet's header, as [`parse_binary`] and
/// [`refuse_unauthenticated`] read it.
#[derive(Clone, Copy)]
struct Header {
    echo: Echo,
    key_len: usize,
    extras_len: usize,
    body_len: usize,
    cas: u64,
}

impl Header {
    /// The header at the front of `buf`, once all of it has arrived.
    fn read(buf: &[u8]) -> Option<Header> {
        if buf.len() < HEADER_BYTES {
            return None;
        }
        Some(Header {
            echo: Echo {
                opcode: buf[1],
                opaque: be32(&buf[12..]),
            },
            key_len: be16(&buf[2..]) as usize,
            extras_len: buf[4] as usize,
            body_len: be32(&buf[8..]) as usize,
            cas: be64(&buf[16..]),
        })
    }

    /// Whether the key and extras fit in the body.
    fn lengths_add_up(&self) -> bool {
        self.key_len + self.extras_len <= self.body_len
    }

    /// The reply `status` to this packet, which is dropped: what of it is
    /// among the `received` bytes now, the rest as it arrives.
    fn reply(&self, received: usize, status: Status, close: bool) -> BinaryError {
        let consumed = received.min(HEADER_BYTES.saturating_add(self.body_len));
        BinaryError::Reply {
            echo: self.echo,
            status,
            consumed,
            discard: (HEADER_BYTES + self.body_len - consumed) as u64,
            close,
        }
    }
}

fn be16(b: &[u8]) -> u16 {
    u16::from_be_bytes([b[0], b[1]])
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

fn be64(b: &[u8]) -> u64 {
    u64::from_be_bytes(b[..8].try_into().expect("eight bytes"))
}

/// Parses one request from the front of `buf` (whose first byte the caller
/// found to be [`REQUEST_MAGIC`], or any byte: another closes). `Ok(None)`:
/// more bytes are needed. Never holds more than the header, extras and key
/// of a value over the item limit.
pub fn parse_binary(
    buf: &[u8],
    limits: &Limits,
) -> Result<Option<(BinaryRequest, usize)>, BinaryError> {
    use opcode::*;
    if buf.first().is_some_and(|&b| b != REQUEST_MAGIC) {
        return Err(BinaryError::Close);
    }
    let Some(header) = Header::read(buf) else {
        return Ok(None);
    };
    let Header {
        echo,
        key_len,
        extras_len,
        body_len,
        cas,
    } = header;
    let op = echo.opcode;
    let fail = |status, close| Err(header.reply(buf.len(), status, close));
    if !header.lengths_add_up() {
        return fail(Status::UnknownCommand, true);
    }
    if key_len > KEY_BYTES_MAX {
        return fail(Status::InvalidArguments, true);
    }
    let (loud_op, quiet) = loud(op);
    // Whether the lengths fit the command (memcached's checks), and
    // whether it carries a value of its own length.
    let (fits, has_value) = match loud_op {
        VERSION | NOOP | QUIT => (extras_len == 0 && key_len == 0 && body_len == 0, false),
        FLUSH => (
            key_len == 0 && body_len == extras_len && (extras_len == 0 || extras_len == 4),
            false,
        ),
        SET | ADD | REPLACE => (extras_len == 8 && key_len != 0, true),
        APPEND | PREPEND => (extras_len == 0 && key_len != 0, true),
        GET | GETK => (
            extras_len == 0 && key_len != 0 && body_len == key_len,
            false,
        ),
        DELETE => (
            extras_len == 0 && key_len != 0 && body_len == key_len,
            false,
        ),
        INCREMENT | DECREMENT => (
            extras_len == 20 && key_len != 0 && body_len == key_len + 20,
            false,
        ),
        // memcached checks only the extras; a body longer than the key
        // would be read as the next request there.
        STAT => (extras_len == 0 && body_len == key_len, false),
        TOUCH | GAT | GATK => (
            extras_len == 4 && key_len != 0 && body_len == key_len + 4,
            false,
        ),
        SASL_LIST_MECHS => (extras_len == 0 && key_len == 0 && body_len == 0, false),
        SASL_AUTH | SASL_STEP => (extras_len == 0 && key_len != 0, false),
        _ => return fail(Status::UnknownCommand, false),
    };
    if !fits {
        return fail(Status::InvalidArguments, true);
    }
    if matches!(loud_op, SASL_AUTH | SASL_STEP) {
        // memcached's limits, with the message skipped: a mechanism name
        // over its longest, a message larger than an item.
        if key_len > crate::protocol::auth::SASL_MECH_BYTES_MAX {
            return fail(Status::InvalidArguments, false);
        }
        if body_len - key_len > limits.item_bytes_max {
            return fail(Status::OutOfMemory, false);
        }
    }
    let head = HEADER_BYTES + extras_len + key_len;
    if has_value && body_len - extras_len - key_len > limits.item_bytes_max {
        if buf.len() < head {
            return Ok(None);
        }
        return Err(BinaryError::TooLarge {
            echo,
            consumed: head,
            discard: (body_len - extras_len - key_len) as u64,
            key: Bytes::copy_from_slice(&buf[HEADER_BYTES + extras_len..head]),
            delete: loud_op == SET,
        });
    }
    let total = HEADER_BYTES + body_len;
    if buf.len() < total {
        return Ok(None);
    }
    let extras = &buf[HEADER_BYTES..HEADER_BYTES + extras_len];
    let key = Bytes::copy_from_slice(&buf[HEADER_BYTES + extras_len..head]);
    let value = || Bytes::copy_from_slice(&buf[head..total]);
    let command = match loud_op {
        VERSION => BinaryCommand::Version,
        NOOP => BinaryCommand::Noop,
        QUIT => BinaryCommand::Quit,
        FLUSH => BinaryCommand::Flush {
            delay: if extras_len == 4 {
                i64::from(be32(extras))
            } else {
                0
            },
        },
        SET | ADD | REPLACE => BinaryCommand::Store {
            mode: match (loud_op, cas) {
                (_, 1..) => StoreMode::Cas,
                (SET, _) => StoreMode::Set,
                (ADD, _) => StoreMode::Add,
                _ => StoreMode::Replace,
            },
            key,
            flags: be32(extras),
            exptime: i64::from(be32(&extras[4..])),
            data: value(),
            cas,
        },
        APPEND | PREPEND => BinaryCommand::Store {
            mode: if loud_op == APPEND {
                StoreMode::Append
            } else {
                StoreMode::Prepend
            },
            key,
            flags: 0,
            exptime: 0,
            data: value(),
            cas,
        },
        GET | GETK => BinaryCommand::Get {
            key,
            with_key: loud_op == GETK,
        },
        DELETE => BinaryCommand::Delete { key, cas },
        INCREMENT | DECREMENT => BinaryCommand::Arith {
            key,
            incr: loud_op == INCREMENT,
            delta: be64(extras),
            initial: be64(&extras[8..]),
            exptime: be32(&extras[16..]),
            cas,
        },
        STAT => BinaryCommand::Stat { group: key },
        SASL_LIST_MECHS => BinaryCommand::SaslListMechs,
        SASL_AUTH | SASL_STEP => BinaryCommand::SaslAuth {
            mech: key,
            message: Bytes::copy_from_slice(&buf[head..total]),
            step: loud_op == SASL_STEP,
        },
        TOUCH => BinaryCommand::Touch {
            key,
            exptime: i64::from(be32(extras)),
        },
        _ => BinaryCommand::GetAndTouch {
            key,
            exptime: i64::from(be32(extras)),
            with_key: loud_op == GATK,
        },
    };
    let request = BinaryRequest {
        echo,
        quiet,
        command,
    };
    Ok(Some((request, total)))
}

/// Under SASL, on a connection not authenticated yet: the refusal for the
/// request at the front of `buf` (`Auth failure.`, then close, as
/// memcached answers anything but the SASL commands and Version); `None`
/// when it may go on to [`parse_binary`] (an incomplete header included).
pub fn refuse_unauthenticated(buf: &[u8]) -> Option<BinaryError> {
    use opcode::*;
    if buf.first() != Some(&REQUEST_MAGIC) {
        return None;
    }
    let header = Header::read(buf)?;
    let open = matches!(
        header.echo.opcode,
        SASL_LIST_MECHS | SASL_AUTH | SASL_STEP | VERSION
    );
    if open || !header.lengths_add_up() {
        return None;
    }
    Some(header.reply(buf.len(), Status::AuthError, true))
}

/// Writes one response packet.
pub fn put_response(
    out: &mut BytesMut,
    echo: Echo,
    status: u16,
    cas: u64,
    extras: &[u8],
    key: &[u8],
    value: &[u8],
) {
    out.reserve(HEADER_BYTES + extras.len() + key.len() + value.len());
    out.put_u8(RESPONSE_MAGIC);
    out.put_u8(echo.opcode);
    out.put_u16(key.len() as u16);
    out.put_u8(extras.len() as u8);
    out.put_u8(0);
    out.put_u16(status);
    out.put_u32((extras.len() + key.len() + value.len()) as u32);
    out.put_u32(echo.opaque);
    out.put_u64(cas);
    out.put_slice(extras);
    out.put_slice(key);
    out.put_slice(value);
}

/// A success with no body, left out for a quiet opcode.
pub fn put_success(out: &mut BytesMut, echo: Echo, cas: u64) {
    if !suppressed(echo.opcode, Status::NoError as u16) {
        put_response(out, echo, Status::NoError as u16, cas, &[], &[], &[]);
    }
}

/// An error with memcached's message (sent even for a quiet opcode).
pub fn put_error(out: &mut BytesMut, echo: Echo, status: Status) {
    put_error_text(out, echo, status, status.message());
}

/// An error with its own message.
pub fn put_error_text(out: &mut BytesMut, echo: Echo, status: Status, text: &str) {
    put_response(out, echo, status as u16, 0, &[], &[], text.as_bytes());
}

/// A get's (or GAT's, or touch's) hit: flags, the key for GetK and GATK,
/// the value unless it is a touch.
pub fn put_hit(out: &mut BytesMut, echo: Echo, key: &[u8], flags: u32, data: &[u8], cas: u64) {
    let (loud_op, _) = loud(echo.opcode);
    let with_key = matches!(loud_op, opcode::GETK | opcode::GATK);
    let key = if with_key { key } else { &[] };
    let data = if loud_op == opcode::TOUCH { &[] } else { data };
    put_response(
        out,
        echo,
        Status::NoError as u16,
        cas,
        &flags.to_be_bytes(),
        key,
        data,
    );
}

/// A get's miss: nothing for a quiet get, the key (and no message) for
/// GetK and GATK, `Not found` otherwise.
pub fn put_miss(out: &mut BytesMut, echo: Echo, key: &[u8]) {
    let status = Status::KeyNotFound as u16;
    if suppressed(echo.opcode, status) {
        return;
    }
    match loud(echo.opcode).0 {
        opcode::GETK | opcode::GATK => put_response(out, echo, status, 0, &[], key, &[]),
        _ => put_error(out, echo, Status::KeyNotFound),
    }
}

/// One `stat` packet; the empty name and value end the reply.
pub fn put_stat(out: &mut BytesMut, echo: Echo, name: &[u8], value: &[u8]) {
    put_response(out, echo, Status::NoError as u16, 0, &[], name, value);
}

/// How a write's [`Outcome`] becomes a response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Render {
    pub echo: Echo,
    /// The key, for a GetK/GATK reply.
    pub key: Bytes,
}

impl Render {
    /// Writes the response `outcome` gets (nothing where a quiet opcode
    /// leaves it out).
    pub fn put_outcome(&self, out: &mut BytesMut, outcome: &Outcome) {
        use opcode::*;
        let echo = self.echo;
        let (loud_op, _) = loud(echo.opcode);
        match outcome {
            Outcome::Stored { cas } => put_success(out, echo, *cas),
            Outcome::Deleted | Outcome::Ok | Outcome::Touched | Outcome::Reclaimed(_) => {
                put_success(out, echo, 0)
            }
            Outcome::Number { value, cas, .. } => {
                if !suppressed(echo.opcode, Status::NoError as u16) {
                    let value = value.to_be_bytes();
                    put_response(out, echo, Status::NoError as u16, *cas, &[], &[], &value);
                }
            }
            // Meta's gets only; as a get.
            Outcome::Leased(leased) => match leased {
                Some(leased) => {
                    let hit = &leased.hit;
                    put_hit(out, echo, &hit.key, hit.flags, &hit.data, hit.cas)
                }
                None => put_miss(out, echo, &self.key),
            },
            Outcome::Hits(hits) => match hits.first() {
                Some(hit) => put_hit(out, echo, &hit.key, hit.flags, &hit.data, hit.cas),
                None => match loud_op {
                    // A touch's miss is an error, never left out.
                    TOUCH => put_error(out, echo, Status::KeyNotFound),
                    _ => put_miss(out, echo, &self.key),
                },
            },
            Outcome::NotFound => put_error(out, echo, Status::KeyNotFound),
            Outcome::Exists => put_error(out, echo, Status::KeyExists),
            Outcome::NonNumeric => put_error(out, echo, Status::NonNumeric),
            // memcached's words for an add that found the key and a replace
            // that did not.
            Outcome::NotStored => match loud_op {
                ADD => put_error(out, echo, Status::KeyExists),
                REPLACE => put_error(out, echo, Status::KeyNotFound),
                _ => put_error(out, echo, Status::NotStored),
            },
        }
    }
}

/// Client side: one request packet.
pub fn put_request(
    out: &mut BytesMut,
    op: u8,
    opaque: u32,
    cas: u64,
    extras: &[u8],
    key: &[u8],
    value: &[u8],
) {
    out.reserve(HEADER_BYTES + extras.len() + key.len() + value.len());
    out.put_u8(REQUEST_MAGIC);
    out.put_u8(op);
    out.put_u16(key.len() as u16);
    out.put_u8(extras.len() as u8);
    out.put_u8(0);
    out.put_u16(0);
    out.put_u32((extras.len() + key.len() + value.len()) as u32);
    out.put_u32(opaque);
    out.put_u64(cas);
    out.put_slice(extras);
    out.put_slice(key);
    out.put_slice(value);
}

/// A response packet's parts, for clients and tests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    pub opcode: u8,
    pub status: u16,
    pub opaque: u32,
    pub cas: u64,
    pub extras: Bytes,
    pub key: Bytes,
    pub value: Bytes,
}

/// Why bytes are not a response packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NotAResponse;

/// The length of the response packet at the front of `buf`, once all of
/// it is there.
pub fn response_len(buf: &[u8]) -> Result<Option<usize>, NotAResponse> {
    if buf.first().is_some_and(|&b| b != RESPONSE_MAGIC) {
        return Err(NotAResponse);
    }
    if buf.len() < HEADER_BYTES {
        return Ok(None);
    }
    let (key_len, extras_len) = (be16(&buf[2..]) as usize, buf[4] as usize);
    let total = HEADER_BYTES + be32(&buf[8..]) as usize;
    if key_len + extras_len > total - HEADER_BYTES {
        return Err(NotAResponse);
    }
    Ok((buf.len() >= total).then_some(total))
}

/// Parses the response packet at the front of `buf`, and its length.
pub fn parse_response(buf: &[u8]) -> Result<Option<(Response, usize)>, NotAResponse> {
    let Some(total) = response_len(buf)? else {
        return Ok(None);
    };
    let (key_len, extras_len) = (be16(&buf[2..]) as usize, buf[4] as usize);
    let key_at = HEADER_BYTES + extras_len;
    let response = Response {
        opcode: buf[1],
        status: be16(&buf[6..]),
        opaque: be32(&buf[12..]),
        cas: be64(&buf[16..]),
        extras: Bytes::copy_from_slice(&buf[HEADER_BYTES..key_at]),
        key: Bytes::copy_from_slice(&buf[key_at..key_at + key_len]),
        value: Bytes::copy_from_slice(&buf[key_at + key_len..total]),
    };
    Ok(Some((response, total)))
}

/// The status of the response packet at the front of `buf` (which
/// [`response_len`] accepted).
pub fn response_status(buf: &[u8]) -> u16 {
    be16(&buf[6..])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::Hit;
    use proptest::prelude::*;

    fn request(op: u8, cas: u64, extras: &[u8], key: &[u8], value: &[u8]) -> Vec<u8> {
        let mut out = BytesMut::new();
        put_request(&mut out, op, 0xdead_beef, cas, extras, key, value);
        out.to_vec()
    }

    fn parse(bytes: &[u8]) -> Result<Option<(BinaryRequest, usize)>, BinaryError> {
        parse_binary(bytes, &Limits::default())
    }

    fn command(bytes: &[u8]) -> BinaryCommand {
        let (request, used) = parse(bytes).unwrap().unwrap();
        assert_eq!(used, bytes.len());
        request.command
    }

    fn set_extras(flags: u32, exptime: u32) -> Vec<u8> {
        [flags.to_be_bytes(), exptime.to_be_bytes()].concat()
    }

    #[test]
    fn parses_every_command() {
        let key = Bytes::from_static(b"k");
        assert_eq!(
            command(&request(opcode::SETQ, 0, &set_extras(5, 60), b"k", b"v")),
            BinaryCommand::Store {
                mode: StoreMode::Set,
                key: key.clone(),
                flags: 5,
                exptime: 60,
                data: Bytes::from_static(b"v"),
                cas: 0,
            }
        );
        // A unique makes add a CAS, as in memcached.
        let add = command(&request(opcode::ADD, 9, &set_extras(0, 0), b"k", b"v"));
        assert!(matches!(
            add,
            BinaryCommand::Store {
                mode: StoreMode::Cas,
                cas: 9,
                ..
            }
        ));
        let extras = [
            3u64.to_be_bytes().as_slice(),
            &7u64.to_be_bytes(),
            &ARITH_NO_CREATE.to_be_bytes(),
        ]
        .concat();
        assert_eq!(
            command(&request(opcode::DECREMENTQ, 0, &extras, b"k", b"")),
            BinaryCommand::Arith {
                key: key.clone(),
                incr: false,
                delta: 3,
                initial: 7,
                exptime: ARITH_NO_CREATE,
                cas: 0,
            }
        );
        assert_eq!(
            command(&request(opcode::GATKQ, 0, &9u32.to_be_bytes(), b"k", b"")),
            BinaryCommand::GetAndTouch {
                key: key.clone(),
                exptime: 9,
                with_key: true,
            }
        );
        assert_eq!(
            command(&request(opcode::FLUSH, 0, &[], b"", b"")),
            BinaryCommand::Flush { delay: 0 }
        );
        assert_eq!(
            command(&request(opcode::STAT, 0, &[], b"items", b"")),
            BinaryCommand::Stat {
                group: Bytes::from_static(b"items")
            }
        );
        assert_eq!(
            command(&request(opcode::DELETE, 4, &[], b"k", b"")),
            BinaryCommand::Delete { key, cas: 4 }
        );
    }

    #[test]
    fn malformed_packets_get_memcacheds_answers() {
        assert_eq!(parse(b"get x\r\n"), Err(BinaryError::Close));
        let reply = |bytes: &[u8]| match parse(bytes) {
            Err(BinaryError::Reply { status, close, .. }) => (status, close),
            other => panic!("{other:?}"),
        };
        // A get with extras: the lengths do not fit the command.
        let get = request(opcode::GET, 0, &[1, 2, 3, 4], b"k", b"");
        assert_eq!(reply(&get), (Status::InvalidArguments, true));
        let long = vec![b'k'; KEY_BYTES_MAX + 1];
        let get = request(opcode::GET, 0, &[], &long, b"");
        assert_eq!(reply(&get), (Status::InvalidArguments, true));
        // Verbosity is not served by memcached 1.6 either; its body is
        // skipped and the connection goes on.
        let verbosity = request(0x1b, 0, &[0, 0, 0, 1], b"", b"");
        assert_eq!(reply(&verbosity), (Status::UnknownCommand, false));
        let mut bad = request(opcode::GET, 0, &[], b"k", b"");
        bad[4] = 200; // extras longer than the body
        assert_eq!(reply(&bad), (Status::UnknownCommand, true));
    }

    #[test]
    fn sasl_requests_get_memcacheds_checks() {
        assert_eq!(
            command(&request(opcode::SASL_LIST_MECHS, 0, &[], b"", b"")),
            BinaryCommand::SaslListMechs
        );
        assert_eq!(
            command(&request(opcode::SASL_STEP, 0, &[], b"PLAIN", b"\0u\0p")),
            BinaryCommand::SaslAuth {
                mech: Bytes::from_static(b"PLAIN"),
                message: Bytes::from_static(b"\0u\0p"),
                step: true,
            }
        );
        let reply = |bytes: &[u8]| match parse(bytes) {
            Err(BinaryError::Reply { status, close, .. }) => (status, close),
            other => panic!("{other:?}"),
        };
        let with_key = request(opcode::SASL_LIST_MECHS, 0, &[], b"x", b"");
        assert_eq!(reply(&with_key), (Status::InvalidArguments, true));
        let no_mech = request(opcode::SASL_AUTH, 0, &[], b"", b"m");
        assert_eq!(reply(&no_mech), (Status::InvalidArguments, true));
        // A mechanism name over memcached's longest: skipped, not closed.
        let long = request(opcode::SASL_AUTH, 0, &[], &[b'M'; 33], b"m");
        assert_eq!(reply(&long), (Status::InvalidArguments, false));
        let huge = request(opcode::SASL_AUTH, 0, &[], b"PLAIN", &[0; 2 * 1024 * 1024]);
        assert_eq!(reply(&huge), (Status::OutOfMemory, false));
    }

    #[test]
    fn before_sasl_only_the_sasl_commands_and_version_pass() {
        for op in [
            opcode::SASL_LIST_MECHS,
            opcode::SASL_AUTH,
            opcode::SASL_STEP,
            opcode::VERSION,
        ] {
            assert_eq!(refuse_unauthenticated(&request(op, 0, &[], b"", b"")), None);
        }
        let get = request(opcode::GET, 0, &[], b"k", b"");
        assert_eq!(
            refuse_unauthenticated(&get[..HEADER_BYTES - 1]),
            None,
            "incomplete"
        );
        match refuse_unauthenticated(&get[..HEADER_BYTES]) {
            Some(BinaryError::Reply {
                status: Status::AuthError,
                consumed: HEADER_BYTES,
                discard: 1,
                close: true,
                ..
            }) => {}
            other => panic!("{other:?}"),
        }
        // Lengths that do not add up are the parser's to answer.
        let mut bad = get.clone();
        bad[4] = 200;
        assert_eq!(refuse_unauthenticated(&bad), None);
    }

    #[test]
    fn a_value_over_the_limit_is_skipped_not_held() {
        let limits = Limits { item_bytes_max: 4 };
        let mut set = request(opcode::SET, 0, &set_extras(0, 0), b"k", b"12345");
        set.truncate(HEADER_BYTES + 9); // the value has not arrived
        let echo = Echo {
            opcode: opcode::SET,
            opaque: 0xdead_beef,
        };
        assert_eq!(
            parse_binary(&set, &limits),
            Err(BinaryError::TooLarge {
                echo,
                consumed: HEADER_BYTES + 9,
                discard: 5,
                key: Bytes::from_static(b"k"),
                delete: true,
            })
        );
    }

    #[test]
    fn quiet_opcodes_answer_what_memcached_answers() {
        let echo = |opcode| Echo { opcode, opaque: 1 };
        let mut out = BytesMut::new();
        put_success(&mut out, echo(opcode::SETQ), 5);
        put_miss(&mut out, echo(opcode::GETQ), b"k");
        Render {
            echo: echo(opcode::INCREMENTQ),
            key: Bytes::new(),
        }
        .put_outcome(
            &mut out,
            &Outcome::Number {
                value: 1,
                cas: 2,
                exptime: 0,
            },
        );
        assert!(out.is_empty());
        put_hit(&mut out, echo(opcode::GETKQ), b"k", 3, b"v", 7);
        let (hit, _) = parse_response(&out).unwrap().unwrap();
        assert_eq!(
            (
                hit.status,
                hit.cas,
                &hit.extras[..],
                &hit.key[..],
                &hit.value[..]
            ),
            (0, 7, &3u32.to_be_bytes()[..], &b"k"[..], &b"v"[..])
        );
        out.clear();
        Render {
            echo: echo(opcode::ADDQ),
            key: Bytes::new(),
        }
        .put_outcome(&mut out, &Outcome::NotStored);
        let (error, _) = parse_response(&out).unwrap().unwrap();
        assert_eq!(error.status, Status::KeyExists as u16);
        assert_eq!(&error.value[..], b"Data exists for key.");
        out.clear();
        let touch = Render {
            echo: echo(opcode::TOUCH),
            key: Bytes::from_static(b"k"),
        };
        let hit = Hit {
            key: Bytes::from_static(b"k"),
            flags: 1,
            data: Bytes::from_static(b"value"),
            cas: 3,
            updated_s: 0,
        };
        touch.put_outcome(&mut out, &Outcome::Hits(vec![hit]));
        let (touched, _) = parse_response(&out).unwrap().unwrap();
        assert!(touched.value.is_empty() && touched.key.is_empty());
        assert_eq!((touched.cas, touched.extras.len()), (3, 4));
    }

    proptest! {
        /// Any bytes: no panic, a request uses no more than it was given,
        /// and the request re-encoded parses to itself.
        #[test]
        fn parse_is_total_and_bounded(bytes in proptest::collection::vec(any::<u8>(), 0..128)) {
            let mut bytes = bytes;
            if let Some(first) = bytes.first_mut() {
                *first = REQUEST_MAGIC;
            }
            match parse(&bytes) {
                Ok(Some((_, used))) => prop_assert!(used <= bytes.len()),
                Ok(None) | Err(BinaryError::Close) => {}
                Err(BinaryError::Reply { consumed, .. } | BinaryError::TooLarge { consumed, .. }) => {
                    prop_assert!(consumed <= bytes.len());
                }
            }
        }

        #[test]
        fn a_prefix_asks_for_more(value in proptest::collection::vec(any::<u8>(), 0..64), cut in 0usize..200) {
            let set = request(opcode::SET, 0, &set_extras(1, 2), b"key", &value);
            let cut = cut.min(set.len() - 1);
            prop_assert_eq!(parse(&set[..cut]), Ok(None));
        }
    }
}
