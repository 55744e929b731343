//! Server side of the text protocol: one request parsed from the front of a
//! buffer.
//!
//! # Format
//!
//! ```text
//! get|gets <key>+\r\n
//! gat|gats <exptime> <key>+\r\n
//! set|add|replace|append|prepend <key> <flags> <exptime> <bytes> [noreply]\r\n<data>\r\n
//! cas <key> <flags> <exptime> <bytes> <cas unique> [noreply]\r\n<data>\r\n
//! delete <key> [0] [noreply]\r\n
//! incr|decr <key> <delta> [noreply]\r\n
//! touch <key> <exptime> [noreply]\r\n
//! flush_all [delay] [noreply]\r\n
//! version | verbosity <n> [noreply] | stats [group] | quit\r\n
//! stats cachedump <class> <limit> | stats detail on|off|dump\r\n
//! lru_crawler metadump|enable|disable|sleep|tocrawl|crawl [arg]\r\n
//! slabs reassign <src> <dst> | slabs automove <0|1|2>\r\n
//! shutdown [graceful] | cache_memlimit <mb> [noreply]\r\n
//! ```
//!
//! [`parse_request`] never allocates for a payload before the limits allow it:
//! an oversized value is reported as [`ParseError::TooLarge`] with the number
//! of bytes the connection must discard, so the caller can stream them away.

use bytes::Bytes;

use crate::command::StoreMode;
use crate::limits::{
    Limits, DATA_BYTES_FIELD_MAX, GET_LEADING_SPACES_MAX, GET_LINE_BYTES_MAX, KEY_BYTES_MAX,
    LINE_BYTES_MAX,
};

/// A storage command as the client sent it (exptime still raw).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Storage {
    pub mode: StoreMode,
    pub key: Bytes,
    pub flags: u32,
    /// Raw exptime as sent: relative, absolute or negative.
    pub exptime: i64,
    pub data: Bytes,
    /// Only meaningful for `cas`.
    pub cas_unique: u64,
    pub noreply: bool,
}

/// The argument of `stats`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StatsGroup {
    General,
    Settings,
    Items,
    Slabs,
    Sizes,
    Conns,
    Reset,
    /// `stats cachedump <slab> <limit>`.
    CacheDump,
}

/// Administrative commands: what memcached-tool, libmemcached's tools and
/// client test suites send besides the data commands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Admin {
    /// `lru_crawler metadump <all|hash|classes>`: a `key=... exp=...` line
    /// per item, then `END`.
    MetaDump,
    /// `shutdown [graceful]`; `mode_ok` is false for any other mode.
    Shutdown { mode_ok: bool },
    /// `refresh_certs`: read the TLS certificates again (words after it
    /// are ignored, as memcached ignores them).
    RefreshCerts,
    /// A command this server accepts and has nothing to do for (it has no
    /// slab classes to move, no LRU to tune, no per-prefix stats to keep),
    /// answered with memcached's own reply.
    Noted(&'static str),
}

/// Replies of the administrative commands, as memcached words them.
pub mod admin_replies {
    pub const OK: &str = "OK\r\n";
    pub const END: &str = "END\r\n";
    pub const DETAIL_USAGE: &str = "CLIENT_ERROR usage: stats detail on|off|dump\r\n";
    pub const BAD_COMMAND_LINE: &str = "CLIENT_ERROR bad command line\r\n";
    pub const SHUTDOWN_DISABLED: &str = "ERROR: shutdown not enabled\r\n";
    pub const SHUTDOWN_BAD_MODE: &str = "CLIENT_ERROR invalid shutdown mode\r\n";
    pub const TLS_NOT_ENABLED: &str = "Error TLS not enabled\r\n";
    pub const CRAWLER_SLEEP_MAX: &str = "CLIENT_ERROR sleep must be one second or less\r\n";
    pub const SLABS_SAME: &str = "SAME src and dst class are identical\r\n";
    pub const SLABS_NOSPARE: &str = "NOSPARE source class has no spare pages\r\n";
}

fn admin(reply: &'static str) -> Request {
    Request::Admin(Admin::Noted(reply))
}

/// `lru_crawler sleep` takes microseconds up to one second, as memcached.
const CRAWLER_SLEEP_US_MAX: u32 = 1_000_000;

/// One parsed client request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    /// get (`with_cas == false`) or gets.
    Get {
        keys: Vec<Bytes>,
        with_cas: bool,
    },
    /// gat or gats.
    GetAndTouch {
        exptime: i64,
        keys: Vec<Bytes>,
        with_cas: bool,
    },
    Store(Storage),
    Delete {
        key: Bytes,
        noreply: bool,
    },
    /// incr (`incr == true`) or decr.
    Arith {
        key: Bytes,
        delta: u64,
        incr: bool,
        noreply: bool,
    },
    Touch {
        key: Bytes,
        exptime: i64,
        noreply: bool,
    },
    /// `delay` is raw as sent; 0 when absent.
    FlushAll {
        delay: i64,
        noreply: bool,
    },
    Version,
    Verbosity {
        noreply: bool,
    },
    Stats(StatsGroup),
    /// An administrative command memcached's tools send.
    Admin(Admin),
    /// `forwarder [PROOF]`: sent by a follower on each connection it
    /// forwards client requests over (DESIGN §2, §5a). Without a proof it
    /// asks for a challenge (`CHALLENGE <hex>`); with the proof of the
    /// cluster secret for that challenge (64 hex digits,
    /// [`crate::admin_proof`]) the connection becomes a forwarding link:
    /// its requests skip client authentication, and the leader leaves
    /// counting them to the follower. Answered `OK`.
    Forwarder {
        proof: Option<[u8; crate::admin_proof::PROOF_BYTES]>,
    },
    /// A meta command (`mg`, `ms`, `md`, `ma`, `mn`, `me`).
    Meta(Box<super::meta::MetaRequest>),
    /// `cache_memlimit <mb> [noreply]`: sets the memory limit (`-m`).
    CacheMemlimit {
        megabytes: u32,
        noreply: bool,
    },
    Quit,
}

/// What the connection must do with input that is not a valid request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ParseError {
    /// Write `reply` (a full line including `\r\n`; `None` under noreply),
    /// drop `consumed` bytes (all present in the buffer), then discard
    /// `discard` more bytes as they arrive (a rejected storage line's data
    /// block), and carry on.
    Reply {
        reply: Option<&'static str>,
        consumed: usize,
        discard: u64,
    },
    /// A storage command whose value is over the item limit: drop the
    /// `consumed` bytes of the line, then discard `discard` more bytes as they
    /// arrive, reply `SERVER_ERROR object too large for cache` unless
    /// `noreply`, and for `set` delete `key` (as memcached does, so a stale
    /// value does not outlive a failed overwrite).
    TooLarge {
        consumed: usize,
        discard: u64,
        mode: StoreMode,
        key: Bytes,
        noreply: bool,
    },
    /// Close the connection without a reply (line too long, HTTP request).
    Close,
    /// A binary-protocol request (first byte 0x80): parse it with
    /// [`super::binary::parse_binary`].
    Binary,
}

pub const ERROR: &str = "ERROR\r\n";
pub const BAD_FORMAT: &str = "CLIENT_ERROR bad command line format\r\n";
pub const BAD_DATA_CHUNK: &str = "CLIENT_ERROR bad data chunk\r\n";
pub const BAD_EXPTIME: &str = "CLIENT_ERROR invalid exptime argument\r\n";
pub const BAD_DELTA: &str = "CLIENT_ERROR invalid numeric delta argument\r\n";
pub const DELETE_USAGE: &str =
    "CLIENT_ERROR bad command line format.  Usage: delete <key> [noreply]\r\n";

/// Keys a single parsed line may carry at most (get/gets/gat/gats); a line
/// within [`GET_LINE_BYTES_MAX`] can hold about this many one-byte keys.
pub const LINE_TOKENS_MAX: usize = GET_LINE_BYTES_MAX / 2;

/// The words of the line that ends with the `\n` at `newline` (a `\r`
/// before it dropped, split on runs of spaces, as memcached splits them),
/// and the bytes the line takes.
pub(crate) fn line_words(buf: &[u8], newline: usize) -> (Vec<&[u8]>, usize) {
    let mut line = &buf[..newline];
    if let [rest @ .., b'\r'] = line {
        line = rest;
    }
    let words = line
        .split(|&b| b == b' ')
        .filter(|w| !w.is_empty())
        .collect();
    (words, newline + 1)
}

/// Parses one request from the front of `buf`. `Ok(None)` means more bytes
/// are needed; `Ok(Some((request, consumed)))` a request and how many bytes it
/// took, data block included.
pub fn parse_request(buf: &[u8], limits: &Limits) -> Result<Option<(Request, usize)>, ParseError> {
    let Some(&first) = buf.first() else {
        return Ok(None);
    };
    if first == BINARY_REQUEST_MAGIC {
        return Err(ParseError::Binary);
    }
    let Some(newline) = memchr::memchr(b'\n', buf) else {
        return if buf.len() <= LINE_BYTES_MAX
            || (is_get_line(buf) && buf.len() <= GET_LINE_BYTES_MAX)
        {
            Ok(None)
        } else {
            Err(ParseError::Close)
        };
    };
    let (tokens, line_bytes) = line_words(buf, newline);
    let reply = |reply: &'static str| ParseError::Reply {
        reply: Some(reply),
        consumed: line_bytes,
        discard: 0,
    };
    let Some(&verb) = tokens.first() else {
        return Err(reply(BAD_FORMAT));
    };
    if buf[0] == b' ' {
        // memcached 1.6.45 reads the command name from the first byte on.
        return Err(reply(ERROR));
    }
    let args = &tokens[1..];
    let request = match verb {
        b"get" | b"gets" => Request::Get {
            keys: keys(args, line_bytes)?,
            with_cas: verb == b"gets",
        },
        b"gat" | b"gats" => {
            let [exptime, rest @ ..] = args else {
                return Err(reply(BAD_FORMAT));
            };
            let exptime = parse_i32(exptime).ok_or_else(|| reply(BAD_EXPTIME))?;
            Request::GetAndTouch {
                exptime,
                keys: keys(rest, line_bytes)?,
                with_cas: verb == b"gats",
            }
        }
        b"set" => return parse_storage(buf, line_bytes, StoreMode::Set, args, limits),
        b"add" => return parse_storage(buf, line_bytes, StoreMode::Add, args, limits),
        b"replace" => return parse_storage(buf, line_bytes, StoreMode::Replace, args, limits),
        b"append" => return parse_storage(buf, line_bytes, StoreMode::Append, args, limits),
        b"prepend" => return parse_storage(buf, line_bytes, StoreMode::Prepend, args, limits),
        b"cas" => return parse_storage(buf, line_bytes, StoreMode::Cas, args, limits),
        b"delete" => parse_delete(args, line_bytes)?,
        b"mg" | b"ms" | b"md" | b"ma" | b"mn" | b"me" => {
            return super::meta::parse_meta(buf, line_bytes, verb, args, limits)
        }
        b"incr" | b"decr" => {
            let noreply = ends_with_noreply(args, 2);
            let quiet = |r: &'static str| quiet_reply(r, noreply, line_bytes);
            let [key, delta, ..] = args else {
                return Err(reply(BAD_FORMAT));
            };
            let key = checked_key(key).ok_or_else(|| quiet(BAD_FORMAT))?;
            let delta = crate::c_number::safe_strtoull(delta).ok_or_else(|| quiet(BAD_DELTA))?;
            Request::Arith {
                key,
                delta,
                incr: verb == b"incr",
                noreply,
            }
        }
        b"touch" => {
            let noreply = ends_with_noreply(args, 2);
            let quiet = |r: &'static str| quiet_reply(r, noreply, line_bytes);
            let [key, exptime, ..] = args else {
                return Err(reply(BAD_FORMAT));
            };
            let key = checked_key(key).ok_or_else(|| quiet(BAD_FORMAT))?;
            let exptime = parse_i32(exptime).ok_or_else(|| quiet(BAD_EXPTIME))?;
            Request::Touch {
                key,
                exptime,
                noreply,
            }
        }
        b"flush_all" => {
            let noreply = ends_with_noreply(args, 0);
            let delay = match args.first() {
                Some(&t) if t != NOREPLY => {
                    parse_i32(t).ok_or_else(|| quiet_reply(BAD_EXPTIME, noreply, line_bytes))?
                }
                _ => 0,
            };
            Request::FlushAll { delay, noreply }
        }
        b"version" => Request::Version,
        b"verbosity" => {
            let noreply = ends_with_noreply(args, 0);
            match args {
                [] => return Err(reply(BAD_FORMAT)),
                [level, ..] if args.len() <= 2 => {
                    // `verbosity noreply` has no level; memcapable expects silence.
                    if !(noreply && args.len() == 1) && parse_u32(level).is_none() {
                        return Err(quiet_reply(BAD_FORMAT, noreply, line_bytes));
                    }
                    Request::Verbosity { noreply }
                }
                _ => return Err(reply(ERROR)),
            }
        }
        b"stats" => Request::Stats(match args {
            [] => StatsGroup::General,
            [b"settings"] => StatsGroup::Settings,
            [b"items"] => StatsGroup::Items,
            [b"slabs"] => StatsGroup::Slabs,
            [b"sizes"] => StatsGroup::Sizes,
            [b"conns"] => StatsGroup::Conns,
            [b"reset"] => StatsGroup::Reset,
            [b"cachedump", class, limit, ..] => {
                if parse_u32(class).is_none() || parse_u32(limit).is_none() {
                    return Err(reply(BAD_FORMAT));
                }
                StatsGroup::CacheDump
            }
            [b"cachedump", ..] => return Err(reply(admin_replies::BAD_COMMAND_LINE)),
            [b"detail", b"on" | b"off"] => return Ok(Some((admin(admin_replies::OK), line_bytes))),
            [b"detail", b"dump"] => return Ok(Some((admin(admin_replies::END), line_bytes))),
            [b"detail", ..] => return Err(reply(admin_replies::DETAIL_USAGE)),
            _ => return Err(reply(ERROR)),
        }),
        b"refresh_certs" => Request::Admin(Admin::RefreshCerts),
        b"shutdown" => Request::Admin(Admin::Shutdown {
            mode_ok: matches!(args, [] | [b"graceful"]),
        }),
        b"lru_crawler" => match args {
            [b"metadump", _, ..] => Request::Admin(Admin::MetaDump),
            [b"enable" | b"disable"] | [b"crawl", _] => admin(admin_replies::OK),
            [b"sleep", us] => match parse_u32(us) {
                Some(us) if us <= CRAWLER_SLEEP_US_MAX => admin(admin_replies::OK),
                Some(_) => return Err(reply(admin_replies::CRAWLER_SLEEP_MAX)),
                None => return Err(reply(BAD_FORMAT)),
            },
            [b"tocrawl", n] => match parse_u32(n) {
                Some(_) => admin(admin_replies::OK),
                None => return Err(reply(BAD_FORMAT)),
            },
            _ => return Err(reply(ERROR)),
        },
        b"slabs" => match args {
            [b"reassign", src, dst] if src == dst => admin(admin_replies::SLABS_SAME),
            // One class and no pages to move: memcached's answer for that.
            [b"reassign", _, _] => admin(admin_replies::SLABS_NOSPARE),
            [b"automove", b"0" | b"1" | b"2"] => admin(admin_replies::OK),
            _ => return Err(reply(ERROR)),
        },
        b"cache_memlimit" => {
            let noreply = ends_with_noreply(args, 1);
            match args.first() {
                Some(mb) => match parse_u32(mb) {
                    Some(megabytes) => Request::CacheMemlimit { megabytes, noreply },
                    None => return Err(quiet_reply(BAD_FORMAT, noreply, line_bytes)),
                },
                None => return Err(reply(BAD_FORMAT)),
            }
        }
        b"quit" => Request::Quit,
        b"forwarder" => match args {
            [] => Request::Forwarder { proof: None },
            [proof] => match std::str::from_utf8(proof)
                .ok()
                .and_then(crate::admin_proof::from_hex)
            {
                Some(proof) => Request::Forwarder { proof: Some(proof) },
                None => return Err(reply(BAD_FORMAT)),
            },
            _ => return Err(reply(ERROR)),
        },
        _ => {
            // A web client that found the port: memcached hangs up on it.
            if tokens.last().is_some_and(|t| t.starts_with(b"HTTP/")) {
                return Err(ParseError::Close);
            }
            return Err(reply(ERROR));
        }
    };
    Ok(Some((request, line_bytes)))
}

/// First byte of every binary-protocol request.
const BINARY_REQUEST_MAGIC: u8 = super::binary::REQUEST_MAGIC;

const NOREPLY: &[u8] = b"noreply";

/// memcached lets get/gets lines run past [`LINE_BYTES_MAX`] (after up to
/// [`GET_LEADING_SPACES_MAX`] spaces).
fn is_get_line(buf: &[u8]) -> bool {
    let spaces = buf
        .iter()
        .take(GET_LEADING_SPACES_MAX + 1)
        .take_while(|&&b| b == b' ')
        .count();
    if spaces > GET_LEADING_SPACES_MAX {
        return false;
    }
    let rest = &buf[spaces..];
    rest.starts_with(b"get ") || rest.starts_with(b"gets ")
}

/// `noreply` counts only as the last token, after at least `required` tokens.
fn ends_with_noreply(args: &[&[u8]], required: usize) -> bool {
    args.len() > required && args.last() == Some(&NOREPLY)
}

fn quiet_reply(reply: &'static str, noreply: bool, consumed: usize) -> ParseError {
    ParseError::Reply {
        reply: (!noreply).then_some(reply),
        consumed,
        discard: 0,
    }
}

fn checked_key(token: &[u8]) -> Option<Bytes> {
    (token.len() <= KEY_BYTES_MAX).then(|| Bytes::copy_from_slice(token))
}

/// Retrieval keys: at least one, each within [`KEY_BYTES_MAX`]; one bad key
/// makes the whole reply a single error, as in memcached.
fn keys(tokens: &[&[u8]], line_bytes: usize) -> Result<Vec<Bytes>, ParseError> {
    let bad = ParseError::Reply {
        reply: Some(BAD_FORMAT),
        consumed: line_bytes,
        discard: 0,
    };
    if tokens.is_empty() || tokens.len() > LINE_TOKENS_MAX {
        return Err(bad);
    }
    tokens
        .iter()
        .map(|t| checked_key(t))
        .collect::<Option<Vec<_>>>()
        .ok_or(bad)
}

/// `delete <key> [0] [noreply]`; anything else is an error (strict, as
/// memcached 1.6.18 and memcapable want).
fn parse_delete(args: &[&[u8]], line_bytes: usize) -> Result<Request, ParseError> {
    let reply = |reply: &'static str, noreply: bool| quiet_reply(reply, noreply, line_bytes);
    let noreply = ends_with_noreply(args, 1);
    let (key, valid) = match args {
        [] => return Err(reply(BAD_FORMAT, false)),
        [key] => (key, true),
        [key, hold] => (key, *hold == b"0" || noreply),
        [key, hold, _] => (key, *hold == b"0" && noreply),
        _ => return Err(reply(ERROR, false)),
    };
    if !valid {
        return Err(reply(DELETE_USAGE, noreply));
    }
    let key = checked_key(key).ok_or_else(|| reply(BAD_FORMAT, noreply))?;
    Ok(Request::Delete { key, noreply })
}

/// A storage line and its data block.
fn parse_storage(
    buf: &[u8],
    line_bytes: usize,
    mode: StoreMode,
    args: &[&[u8]],
    limits: &Limits,
) -> Result<Option<(Request, usize)>, ParseError> {
    let required = if mode == StoreMode::Cas { 5 } else { 4 };
    let noreply = ends_with_noreply(args, required);
    // The data block is swallowed after a bad line when its length is
    // readable (memcached 1.6.45); a bad length leaves it to be parsed as
    // commands.
    let data_bytes = args
        .get(3)
        .and_then(|t| parse_i64(t))
        .filter(|n| (0..=DATA_BYTES_FIELD_MAX).contains(n));
    let bad = |reply: &'static str| ParseError::Reply {
        reply: (!noreply).then_some(reply),
        consumed: line_bytes,
        discard: data_bytes.map_or(0, |n| n as u64 + 2),
    };
    if args.len() < required {
        return Err(bad(BAD_FORMAT));
    }
    let key = checked_key(args[0]).ok_or_else(|| bad(BAD_FORMAT))?;
    let flags = parse_u32(args[1]).ok_or_else(|| bad(BAD_FORMAT))?;
    let exptime = parse_i32(args[2]).ok_or_else(|| bad(BAD_FORMAT))?;
    let cas_unique = if mode == StoreMode::Cas {
        parse_u64(args[4]).ok_or_else(|| bad(BAD_FORMAT))?
    } else {
        0
    };
    let Some(data_bytes) = data_bytes else {
        return Err(bad(BAD_FORMAT));
    };
    let data_bytes = data_bytes as usize;
    if data_bytes > limits.item_bytes_max {
        return Err(ParseError::TooLarge {
            consumed: line_bytes,
            discard: data_bytes as u64 + 2,
            mode,
            key,
            noreply,
        });
    }
    let total = line_bytes + data_bytes + 2;
    if buf.len() < total {
        return Ok(None);
    }
    if &buf[total - 2..total] != b"\r\n" {
        return Err(ParseError::Reply {
            reply: (!noreply).then_some(BAD_DATA_CHUNK),
            consumed: total,
            discard: 0,
        });
    }
    let data = Bytes::copy_from_slice(&buf[line_bytes..line_bytes + data_bytes]);
    let storage = Storage {
        mode,
        key,
        flags,
        exptime,
        data,
        cas_unique,
        noreply,
    };
    Ok(Some((Request::Store(storage), total)))
}

/// Unsigned decimal as C's strtoul accepts it in a token: an optional `+`,
/// then digits only.
pub(crate) fn parse_u64(token: &[u8]) -> Option<u64> {
    let digits = token.strip_prefix(b"+").unwrap_or(token);
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

fn parse_u32(token: &[u8]) -> Option<u32> {
    parse_u64(token).and_then(|n| u32::try_from(n).ok())
}

fn parse_i64(token: &[u8]) -> Option<i64> {
    match token.strip_prefix(b"-") {
        Some(digits) => parse_u64(digits)
            .filter(|_| !digits.starts_with(b"+"))
            .and_then(|n| i64::try_from(n).ok().map(|n| -n)),
        None => parse_u64(token).and_then(|n| i64::try_from(n).ok()),
    }
}

/// A data block's declared length, as a storage line may give it.
pub(crate) fn parse_data_len(token: &[u8]) -> Option<usize> {
    parse_i64(token)
        .filter(|n| (0..=DATA_BYTES_FIELD_MAX).contains(n))
        .map(|n| n as usize)
}

/// exptime-like fields are 32-bit in memcached.
pub(crate) fn parse_i32(token: &[u8]) -> Option<i64> {
    parse_i64(token).filter(|n| i32::try_from(*n).is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(input: &[u8]) -> Result<Option<(Request, usize)>, ParseError> {
        parse_request(input, &Limits::default())
    }

    fn request(input: &[u8]) -> Request {
        match parse(input) {
            Ok(Some((request, consumed))) => {
                assert_eq!(consumed, input.len(), "consumed all of {input:?}");
                request
            }
            other => panic!("{input:?} gave {other:?}"),
        }
    }

    fn error_line(input: &[u8]) -> Option<&'static str> {
        match parse(input) {
            Err(ParseError::Reply { reply, .. }) => reply,
            other => panic!("{input:?} gave {other:?}"),
        }
    }

    fn key(k: &str) -> Bytes {
        Bytes::copy_from_slice(k.as_bytes())
    }

    #[test]
    fn get_with_bare_newline_and_runs_of_spaces() {
        assert_eq!(
            request(b"get a\n"),
            Request::Get {
                keys: vec![key("a")],
                with_cas: false
            }
        );
        assert_eq!(
            request(b"gets  a   b \r\n"),
            Request::Get {
                keys: vec![key("a"), key("b")],
                with_cas: true
            }
        );
    }

    #[test]
    fn tabs_and_control_bytes_are_part_of_keys() {
        assert_eq!(
            request(b"get k\ty\r\n"),
            Request::Get {
                keys: vec![key("k\ty")],
                with_cas: false
            }
        );
    }

    #[test]
    fn incomplete_until_newline_and_data_block() {
        assert_eq!(parse(b"get a"), Ok(None));
        assert_eq!(parse(b"set a 0 0 5\r\nhel"), Ok(None));
        assert_eq!(parse(b"set a 0 0 5\r\nhello\r"), Ok(None));
    }

    #[test]
    fn storage_line_and_binary_safe_data() {
        let req = request(b"set b 3 0 4\r\n\r\n\r\n\r\n");
        let Request::Store(s) = req else { panic!() };
        assert_eq!(
            (s.mode, s.flags, &s.data[..], s.noreply),
            (StoreMode::Set, 3, &b"\r\n\r\n"[..], false)
        );
        let Request::Store(s) = request(b"cas k 0 0 1 77 noreply\r\nx\r\n") else {
            panic!()
        };
        assert_eq!(
            (s.mode, s.cas_unique, s.noreply),
            (StoreMode::Cas, 77, true)
        );
    }

    #[test]
    fn extra_token_after_storage_line_is_ignored() {
        let Request::Store(s) = request(b"set a 0 0 1 noreply extra\r\nx\r\n") else {
            panic!()
        };
        assert!(!s.noreply);
    }

    #[test]
    fn case_sensitive_and_unknown() {
        assert_eq!(error_line(b"GET a\r\n"), Some(ERROR));
        assert_eq!(error_line(b"bogus\r\n"), Some(ERROR));
        assert_eq!(error_line(b" get a\r\n"), Some(ERROR));
        assert_eq!(error_line(b"\r\n"), Some(BAD_FORMAT));
        assert_eq!(error_line(b" \n"), Some(BAD_FORMAT));
    }

    #[test]
    fn http_and_binary_close() {
        assert_eq!(parse(b"GET / HTTP/1.0\r\n"), Err(ParseError::Close));
        assert!(matches!(parse(b"\x80\x00"), Err(ParseError::Binary)));
    }

    #[test]
    fn long_lines() {
        let long = vec![b'x'; LINE_BYTES_MAX + 1];
        assert_eq!(parse(&long), Err(ParseError::Close));
        let mut get = b"get ".to_vec();
        get.extend(std::iter::repeat_n(b' ', 3000));
        assert_eq!(parse(&get), Ok(None));
        get.extend_from_slice(b"a\r\n");
        assert_eq!(
            request(&get),
            Request::Get {
                keys: vec![key("a")],
                with_cas: false
            }
        );
    }

    #[test]
    fn key_length_limit() {
        let ok = format!("get {}\r\n", "a".repeat(250));
        assert!(matches!(request(ok.as_bytes()), Request::Get { .. }));
        let bad = format!("get a {}\r\n", "a".repeat(251));
        assert_eq!(error_line(bad.as_bytes()), Some(BAD_FORMAT));
        // 1.6.45 swallows the data block after a storage line with a long key.
        let bad = format!("set {} 0 0 1\r\nx\r\n", "a".repeat(251));
        assert_eq!(
            parse(bad.as_bytes()),
            Err(ParseError::Reply {
                reply: Some(BAD_FORMAT),
                consumed: bad.len() - 3,
                discard: 3
            })
        );
    }

    #[test]
    fn bad_lengths_do_not_swallow() {
        for line in [
            &b"set a 0 0 -1\r\n"[..],
            b"set a 0 0 4294967295\r\n",
            b"set a 0 0\r\n",
            b"set a 0 0 abc\r\n",
        ] {
            assert_eq!(
                parse(line),
                Err(ParseError::Reply {
                    reply: Some(BAD_FORMAT),
                    consumed: line.len(),
                    discard: 0
                }),
                "{line:?}"
            );
        }
        // cas without its unique: 1.6.45 swallows the data.
        assert_eq!(
            parse(b"cas k 0 0 6\r\n"),
            Err(ParseError::Reply {
                reply: Some(BAD_FORMAT),
                consumed: 13,
                discard: 8
            })
        );
    }

    #[test]
    fn bad_numbers() {
        assert_eq!(error_line(b"set a -1 0 1\r\nx\r\n"), Some(BAD_FORMAT));
        assert_eq!(
            error_line(b"set a 4294967296 0 1\r\nx\r\n"),
            Some(BAD_FORMAT)
        );
        assert_eq!(error_line(b"incr a -1\r\n"), Some(BAD_DELTA));
        assert_eq!(
            error_line(b"incr a 18446744073709551616\r\n"),
            Some(BAD_DELTA)
        );
        assert_eq!(error_line(b"touch a x\r\n"), Some(BAD_EXPTIME));
        assert_eq!(error_line(b"gat x a\r\n"), Some(BAD_EXPTIME));
        assert_eq!(error_line(b"flush_all x\r\n"), Some(BAD_EXPTIME));
        assert_eq!(error_line(b"verbosity x\r\n"), Some(BAD_FORMAT));
    }

    #[test]
    fn too_large_is_discarded() {
        let line = b"set big 0 0 2000000\r\n";
        assert_eq!(
            parse(line),
            Err(ParseError::TooLarge {
                consumed: line.len(),
                discard: 2_000_002,
                mode: StoreMode::Set,
                key: key("big"),
                noreply: false
            })
        );
    }

    #[test]
    fn bad_data_chunk_consumes_exactly_the_block() {
        let input = b"set bd 0 0 3\r\nab\r\nget bd\r\n";
        assert_eq!(
            parse(input),
            Err(ParseError::Reply {
                reply: Some(BAD_DATA_CHUNK),
                consumed: 14 + 5,
                discard: 0
            })
        );
        assert_eq!(error_line(b"set a 0 0 1 noreply\r\nxyz\r\n"), None);
    }

    #[test]
    fn strict_delete() {
        assert_eq!(
            request(b"delete k\r\n"),
            Request::Delete {
                key: key("k"),
                noreply: false
            }
        );
        assert_eq!(
            request(b"delete k 0\r\n"),
            Request::Delete {
                key: key("k"),
                noreply: false
            }
        );
        assert_eq!(
            request(b"delete k noreply\r\n"),
            Request::Delete {
                key: key("k"),
                noreply: true
            }
        );
        assert_eq!(
            request(b"delete k 0 noreply\r\n"),
            Request::Delete {
                key: key("k"),
                noreply: true
            }
        );
        assert_eq!(error_line(b"delete k 10\r\n"), Some(DELETE_USAGE));
        assert_eq!(error_line(b"delete k 10 noreply\r\n"), None);
        assert_eq!(error_line(b"delete a b c d e\r\n"), Some(ERROR));
        assert_eq!(error_line(b"delete\r\n"), Some(BAD_FORMAT));
    }

    #[test]
    fn small_commands() {
        assert_eq!(
            request(b"incr n 5 noreply\r\n"),
            Request::Arith {
                key: key("n"),
                delta: 5,
                incr: true,
                noreply: true
            }
        );
        assert_eq!(
            request(b"incr a 1 2\r\n"),
            Request::Arith {
                key: key("a"),
                delta: 1,
                incr: true,
                noreply: false
            }
        );
        assert_eq!(
            request(b"touch k -1\r\n"),
            Request::Touch {
                key: key("k"),
                exptime: -1,
                noreply: false
            }
        );
        assert_eq!(
            request(b"flush_all\r\n"),
            Request::FlushAll {
                delay: 0,
                noreply: false
            }
        );
        assert_eq!(
            request(b"flush_all 0 0\r\n"),
            Request::FlushAll {
                delay: 0,
                noreply: false
            }
        );
        assert_eq!(
            request(b"flush_all noreply\r\n"),
            Request::FlushAll {
                delay: 0,
                noreply: true
            }
        );
        assert_eq!(
            request(b"flush_all -1\r\n"),
            Request::FlushAll {
                delay: -1,
                noreply: false
            }
        );
        assert_eq!(request(b"version foo\r\n"), Request::Version);
        assert_eq!(
            request(b"verbosity noreply\r\n"),
            Request::Verbosity { noreply: true }
        );
        assert_eq!(
            request(b"verbosity 1\r\n"),
            Request::Verbosity { noreply: false }
        );
        assert_eq!(error_line(b"verbosity\r\n"), Some(BAD_FORMAT));
        assert_eq!(error_line(b"verbosity foo bar my\r\n"), Some(ERROR));
        assert_eq!(request(b"stats\r\n"), Request::Stats(StatsGroup::General));
        assert_eq!(
            request(b"stats cachedump 1 1\r\n"),
            Request::Stats(StatsGroup::CacheDump)
        );
        assert_eq!(error_line(b"stats noreply\r\n"), Some(ERROR));
        assert_eq!(
            request(b"cache_memlimit 50\r\n"),
            Request::CacheMemlimit {
                megabytes: 50,
                noreply: false
            }
        );
        assert_eq!(request(b"quit\r\n"), Request::Quit);
        assert_eq!(
            request(b"forwarder\r\n"),
            Request::Forwarder { proof: None }
        );
        let hex = "0f".repeat(32);
        assert_eq!(
            request(format!("forwarder {hex}\r\n").as_bytes()),
            Request::Forwarder {
                proof: Some([0x0f; 32])
            }
        );
        assert_eq!(error_line(b"forwarder x\r\n"), Some(BAD_FORMAT));
        assert_eq!(error_line(b"forwarder a b\r\n"), Some(ERROR));
        assert_eq!(
            request(b"gats 10 a b\r\n"),
            Request::GetAndTouch {
                exptime: 10,
                keys: vec![key("a"), key("b")],
                with_cas: true
            }
        );
        assert_eq!(error_line(b"get\r\n"), Some(BAD_FORMAT));
        assert_eq!(error_line(b"gat 10\r\n"), Some(BAD_FORMAT));
    }
}
