//! Fuzzes the server's request parser (`data::protocol::request`) two ways,
//! checking properties of what it returns and not only that it does not
//! panic.
//!
//! The input as raw bytes from a client:
//! - every byte count it reports (`consumed`) is within the input, and the
//!   outcome depends on exactly those bytes: parsing only them gives the same
//!   outcome, and so does parsing them with more bytes appended;
//! - a proper prefix of those bytes is incomplete (`Ok(None)`), or, for a
//!   line with no `\n` yet that is over `LINE_BYTES_MAX` and not a get, a
//!   close (memcached's rule, which the parser mirrors);
//! - accepted keys are 1..=`KEY_BYTES_MAX` bytes with no space and no `\n`
//!   (memcached, and so this parser, allows other control bytes in keys);
//!   numeric fields respect their ranges; a value is exactly the declared
//!   block, is followed by `\r\n` and is within the item limit; a value over
//!   the limit is `TooLarge` and nothing else;
//! - an accepted request the client encoder (`protocol::client`) can write
//!   re-encodes to bytes that parse back to the same request; the encoder
//!   refuses only keys holding a control byte or DEL;
//! - errors carry one of the parser's reply lines and are only silent under
//!   `noreply`; `Close` and `Binary` happen only for their documented inputs.
//!
//! The input as a seed for a request the client encoder can write: it
//! encodes, parses back to the same request with every byte consumed, every
//! proper prefix is incomplete, and a following request is left untouched.
#![no_main]

use bytes::BytesMut;
use data::command::StoreMode;
use data::limits::{
    Limits, GET_LEADING_SPACES_MAX, GET_LINE_BYTES_MAX, KEY_BYTES_MAX, LINE_BYTES_MAX,
};
use data::protocol::client::{self, check_key, EncodeError};
use data::protocol::meta::{self, MetaVerb};
use data::protocol::request::{
    admin_replies, parse_request, ParseError, Request, StatsGroup, Storage, BAD_DATA_CHUNK,
    BAD_DELTA, BAD_EXPTIME, BAD_FORMAT, DELETE_USAGE, ERROR, LINE_TOKENS_MAX,
};
use libfuzzer_sys::fuzz_target;

#[allow(dead_code)] // each target uses some of the shared builders
#[path = "../common/seed.rs"]
mod seed;
use seed::Seed;

/// Small, so that values over the limit are cheap to reach.
const LIMITS: Limits = Limits { item_bytes_max: 64 };

/// Proper prefixes checked per outcome: each costs a parse, and checking all
/// of them would make every run quadratic in the input.
const PREFIX_SAMPLES_MAX: usize = 8;

fuzz_target!(|input: &[u8]| {
    check_raw(input);
    check_encoded(input);
});

/// The bytes `outcome` says it consumed, if it says.
fn consumed(outcome: &Result<Option<(Request, usize)>, ParseError>) -> Option<usize> {
    match outcome {
        Ok(Some((_, consumed)))
        | Err(ParseError::Reply { consumed, .. })
        | Err(ParseError::TooLarge { consumed, .. }) => Some(*consumed),
        Ok(None) | Err(ParseError::Close) | Err(ParseError::Binary) => None,
    }
}

fn first_line(input: &[u8]) -> Option<&[u8]> {
    let newline = input.iter().position(|&b| b == b'\n')?;
    let line = &input[..newline];
    Some(line.strip_suffix(b"\r").unwrap_or(line))
}

fn tokens(line: &[u8]) -> Vec<&[u8]> {
    line.split(|&b| b == b' ')
        .filter(|t| !t.is_empty())
        .collect()
}

/// A line followed by a data block: the storage commands and meta's `ms`.
fn is_storage_verb(verb: &[u8]) -> bool {
    matches!(
        verb,
        b"set" | b"add" | b"replace" | b"append" | b"prepend" | b"cas" | b"ms"
    )
}

/// memcached lets a get line grow past the line limit: up to
/// `GET_LEADING_SPACES_MAX` spaces, then `get ` or `gets `.
fn is_get_line(input: &[u8]) -> bool {
    let spaces = input.iter().take_while(|&&b| b == b' ').count();
    spaces <= GET_LEADING_SPACES_MAX
        && (input[spaces..].starts_with(b"get ") || input[spaces..].starts_with(b"gets "))
}

fn check_key_token(key: &[u8]) {
    assert!(!key.is_empty() && key.len() <= KEY_BYTES_MAX, "key {key:?}");
    assert!(!key.contains(&b' ') && !key.contains(&b'\n'), "key {key:?}");
}

fn check_i32(n: i64) {
    assert!(i32::try_from(n).is_ok(), "{n} is not a 32-bit field");
}

/// A prefix that is not the whole of what was consumed must wait for more,
/// unless it is a non-get line already over the line limit.
fn check_prefix_incomplete(prefix: &[u8]) {
    let outcome = parse_request(prefix, &LIMITS);
    match outcome {
        Ok(None) => {}
        Err(ParseError::Close) if !prefix.contains(&b'\n') && prefix.len() > LINE_BYTES_MAX => {}
        other => panic!("prefix of {} bytes gave {other:?}", prefix.len()),
    }
}

/// Prefix lengths worth checking: just short of the end, just short of the
/// line's end, and a spread in between.
fn prefix_lengths(whole: usize, line_bytes: usize) -> Vec<usize> {
    let mut lens = vec![0, whole - 1, line_bytes - 1, line_bytes.min(whole - 1)];
    lens.extend((1..PREFIX_SAMPLES_MAX - 3).map(|i| whole * i / PREFIX_SAMPLES_MAX));
    lens.sort_unstable();
    lens.dedup();
    lens
}

fn check_raw(input: &[u8]) {
    let outcome = parse_request(input, &LIMITS);
    let line = first_line(input);

    if let Some(consumed) = consumed(&outcome) {
        assert!(consumed > 0 && consumed <= input.len(), "{outcome:?}");
        // The outcome is a function of the consumed bytes alone.
        assert_eq!(parse_request(&input[..consumed], &LIMITS), outcome);
        let mut longer = input.to_vec();
        longer.extend_from_slice(b"get more\r\n");
        assert_eq!(parse_request(&longer, &LIMITS), outcome);
        let line_bytes = input.iter().position(|&b| b == b'\n').expect("a line") + 1;
        assert!(consumed >= line_bytes);
        for len in prefix_lengths(consumed, line_bytes) {
            check_prefix_incomplete(&input[..len]);
        }
    }

    match outcome {
        Ok(Some((request, consumed))) => {
            check_request(input, consumed, &request);
            check_reencodes(&request);
        }
        Ok(None) => match line {
            None => assert!(
                input.len() <= LINE_BYTES_MAX
                    || (is_get_line(input) && input.len() <= GET_LINE_BYTES_MAX)
            ),
            // Only a storage line waits for more once its line is complete.
            Some(line) => {
                let verb = tokens(line).first().copied();
                assert!(verb.is_some_and(is_storage_verb), "{line:?} waits for more");
            }
        },
        Err(ParseError::Reply {
            reply,
            consumed,
            discard,
        }) => {
            if let Some(reply) = reply {
                assert!(
                    [
                        ERROR,
                        BAD_FORMAT,
                        BAD_DATA_CHUNK,
                        BAD_EXPTIME,
                        BAD_DELTA,
                        DELETE_USAGE,
                        // The administrative commands' own errors.
                        admin_replies::BAD_COMMAND_LINE,
                        admin_replies::DETAIL_USAGE,
                        admin_replies::CRAWLER_SLEEP_MAX,
                        // The meta commands'.
                        meta::DUPLICATE_FLAG,
                        meta::INVALID_FLAG,
                        meta::INVALID_OR_DUPLICATE_FLAG,
                        meta::BAD_TOKEN,
                        meta::KEY_NOT_DECODED,
                        meta::OPAQUE_TOO_LONG,
                        meta::FLAGS_TOO_LONG,
                        meta::MG_FLAGS_TOO_LONG,
                        meta::M_TOKEN_LENGTH,
                        meta::MS_BAD_MODE,
                        meta::MA_BAD_MODE,
                        meta::BAD_INITIAL,
                        meta::BAD_DELTA,
                    ]
                    .contains(&reply),
                    "unexpected reply {reply:?}"
                );
            }
            let line = line.expect("a reply needs a complete line");
            let tokens = tokens(line);
            if reply.is_none() {
                assert_eq!(
                    tokens.last(),
                    Some(&&b"noreply"[..]),
                    "silent without noreply"
                );
            }
            if discard > 0 || reply == Some(BAD_DATA_CHUNK) {
                assert!(is_storage_verb(tokens[0]), "{line:?} discards a block");
            }
            if reply == Some(BAD_DATA_CHUNK) {
                assert_eq!(discard, 0);
                assert_ne!(&input[consumed - 2..consumed], b"\r\n");
            }
        }
        Err(ParseError::TooLarge {
            consumed,
            discard,
            mode,
            key,
            noreply: _,
        }) => {
            let line = line.expect("a complete line");
            let tokens = tokens(line);
            // An ms with `b` names its key in base64: decoded, any bytes.
            if tokens[0] == b"ms" && tokens.iter().skip(3).any(|t| *t == b"b") {
                assert!(!key.is_empty() && key.len() <= KEY_BYTES_MAX, "key {key:?}");
            } else {
                check_key_token(&key);
            }
            // A set's, or an ms (which drops the old value in any mode).
            assert!(tokens[0] == mode.verb().as_bytes() || tokens[0] == b"ms");
            assert!(discard >= 2 && discard - 2 > LIMITS.item_bytes_max as u64);
            assert_eq!(input[consumed - 1], b'\n');
        }
        Err(ParseError::Close) => match line {
            None => assert!(input.len() > LINE_BYTES_MAX),
            Some(line) => {
                let tokens = tokens(line);
                assert!(tokens.last().is_some_and(|t| t.starts_with(b"HTTP/")));
            }
        },
        Err(ParseError::Binary) => {
            assert_eq!(input[0], 0x80);
        }
    }
}

/// What a parsed request must satisfy given the bytes it came from.
fn check_request(input: &[u8], consumed: usize, request: &Request) {
    let line_bytes = input.iter().position(|&b| b == b'\n').expect("a line") + 1;
    match request {
        Request::Store(s) => {
            check_key_token(&s.key);
            check_i32(s.exptime);
            assert!(s.data.len() <= LIMITS.item_bytes_max);
            assert_eq!(consumed, line_bytes + s.data.len() + 2);
            assert_eq!(&input[line_bytes..consumed - 2], &s.data[..]);
            assert_eq!(&input[consumed - 2..consumed], b"\r\n");
            if s.mode != StoreMode::Cas {
                assert_eq!(s.cas_unique, 0);
            }
        }
        Request::Meta(m) if m.verb == MetaVerb::Set => {
            assert!(!m.key.is_empty() && m.key.len() <= KEY_BYTES_MAX);
            assert!(m.data.len() <= LIMITS.item_bytes_max);
            assert_eq!(consumed, line_bytes + m.data.len() + 2);
            assert_eq!(&input[line_bytes..consumed - 2], &m.data[..]);
        }
        other => {
            // Everything else is one line.
            assert_eq!(consumed, line_bytes);
            if let Request::Meta(m) = other {
                assert!(m.verb == MetaVerb::Noop || !m.key.is_empty());
                assert!(m.key.len() <= KEY_BYTES_MAX);
            }
            match other {
                Request::Get { keys, .. } | Request::GetAndTouch { keys, .. } => {
                    assert!(!keys.is_empty() && keys.len() <= LINE_TOKENS_MAX);
                    keys.iter().for_each(|k| check_key_token(k));
                    if let Request::GetAndTouch { exptime, .. } = other {
                        check_i32(*exptime);
                    }
                }
                Request::Delete { key, .. } | Request::Arith { key, .. } => {
                    check_key_token(key);
                }
                Request::Touch { key, exptime, .. } => {
                    check_key_token(key);
                    check_i32(*exptime);
                }
                Request::FlushAll { delay, .. } => check_i32(*delay),
                _ => {}
            }
        }
    }
}

/// Writes `request` with the client encoder; `Ok(None)` for the requests it
/// has no function for (`cache_memlimit`).
fn encode(request: &Request) -> Result<Option<BytesMut>, EncodeError> {
    let mut out = BytesMut::new();
    Ok(client::encode_request(&mut out, request)?.then_some(out))
}

/// The keys the encoder must check for `request`.
fn request_keys(request: &Request) -> Vec<&[u8]> {
    match request {
        Request::Get { keys, .. } | Request::GetAndTouch { keys, .. } => {
            keys.iter().map(|k| &k[..]).collect()
        }
        Request::Store(Storage { key, .. })
        | Request::Delete { key, .. }
        | Request::Arith { key, .. }
        | Request::Touch { key, .. } => vec![&key[..]],
        _ => vec![],
    }
}

/// A request the server accepted is re-encoded by the client and must come
/// back the same; the encoder may refuse only keys the server tolerates but
/// the client does not send (control bytes, DEL).
fn check_reencodes(request: &Request) {
    match encode(request) {
        Ok(Some(bytes)) => {
            assert_eq!(
                parse_request(&bytes, &LIMITS),
                Ok(Some((request.clone(), bytes.len()))),
                "re-encoded as {bytes:?}"
            );
        }
        Ok(None) => {}
        Err(EncodeError::KeyInvalidByte(b)) => {
            assert!(b < b' ' || b == 0x7f, "refused byte {b:#04x}");
            assert!(request_keys(request).iter().any(|k| check_key(k).is_err()));
        }
        Err(other) => panic!("encoder refused a parsed request: {other} ({request:?})"),
    }
}

impl Seed<'_> {
    fn i32(&mut self) -> i64 {
        i64::from(self.u32() as i32)
    }

    /// A key the client may send: 1..=250 printable non-space bytes.
    fn key(&mut self) -> Vec<u8> {
        let len = 1 + usize::from(self.u8()) % KEY_BYTES_MAX;
        (0..len).map(|_| b'!' + self.u8() % (0x7f - b'!')).collect()
    }

    fn keys(&mut self) -> Vec<Vec<u8>> {
        (0..1 + self.u8() % 16).map(|_| self.key()).collect()
    }

    fn data(&mut self) -> Vec<u8> {
        let len = usize::from(self.u8()) % (LIMITS.item_bytes_max + 1);
        let take = len.min(self.bytes.len());
        let (head, rest) = self.bytes.split_at(take);
        self.bytes = rest;
        head.to_vec()
    }

    fn request(&mut self) -> Request {
        match self.u8() % 12 {
            0 => Request::Get {
                keys: self.keys().into_iter().map(Into::into).collect(),
                with_cas: self.bool(),
            },
            1 => Request::GetAndTouch {
                exptime: self.i32(),
                keys: self.keys().into_iter().map(Into::into).collect(),
                with_cas: self.bool(),
            },
            2 => {
                let mode = StoreMode::CLASSIC[usize::from(self.u8()) % StoreMode::CLASSIC.len()];
                let key = self.key().into();
                let flags = self.u32();
                let exptime = self.i32();
                let cas_unique = if mode == StoreMode::Cas {
                    self.u64()
                } else {
                    0
                };
                let noreply = self.bool();
                Request::Store(Storage {
                    mode,
                    key,
                    flags,
                    exptime,
                    data: self.data().into(),
                    cas_unique,
                    noreply,
                })
            }
            3 => Request::Delete {
                key: self.key().into(),
                noreply: self.bool(),
            },
            4 => Request::Arith {
                key: self.key().into(),
                delta: self.u64(),
                incr: self.bool(),
                noreply: self.bool(),
            },
            5 => Request::Touch {
                key: self.key().into(),
                exptime: self.i32(),
                noreply: self.bool(),
            },
            6 => Request::FlushAll {
                delay: self.i32(),
                noreply: self.bool(),
            },
            7 => Request::Version,
            8 => Request::Verbosity {
                noreply: self.bool(),
            },
            9 => Request::Stats(
                [
                    StatsGroup::General,
                    StatsGroup::Settings,
                    StatsGroup::Items,
                    StatsGroup::Slabs,
                    StatsGroup::Sizes,
                    StatsGroup::Conns,
                    StatsGroup::Reset,
                    StatsGroup::CacheDump,
                ][usize::from(self.u8() % 8)]
                .clone(),
            ),
            10 => Request::Quit,
            _ => Request::Get {
                keys: vec![self.key().into()],
                with_cas: false,
            },
        }
    }
}

fn check_encoded(input: &[u8]) {
    let mut seed = Seed { bytes: input };
    let request = seed.request();
    let bytes = encode(&request)
        .expect("seeded keys are valid")
        .expect("seeded requests are encodable");
    assert_eq!(
        parse_request(&bytes, &LIMITS),
        Ok(Some((request.clone(), bytes.len())))
    );
    let line_bytes = bytes.iter().position(|&b| b == b'\n').expect("a line") + 1;
    for len in prefix_lengths(bytes.len(), line_bytes) {
        check_prefix_incomplete(&bytes[..len]);
    }
    // Pipelined: the next request starts right where this one ended.
    let next = seed.request();
    let next_bytes = encode(&next).expect("valid").expect("encodable");
    let mut both = bytes.clone();
    both.extend_from_slice(&next_bytes);
    assert_eq!(
        parse_request(&both, &LIMITS),
        Ok(Some((request, bytes.len())))
    );
    assert_eq!(
        parse_request(&both[bytes.len()..], &LIMITS),
        Ok(Some((next, next_bytes.len())))
    );

    // A value over the item limit is refused from its line alone, and the
    // connection is told to discard exactly the data block and its `\r\n`.
    let key = seed.key();
    let data = vec![b'v'; LIMITS.item_bytes_max + 1 + usize::from(seed.u8())];
    let noreply = seed.bool();
    let mut big = BytesMut::new();
    client::encode_store(&mut big, StoreMode::Set, &key, 0, 0, &data, 0, noreply)
        .expect("valid key, value within the protocol's limit");
    let line_bytes = big.iter().position(|&b| b == b'\n').expect("a line") + 1;
    assert_eq!(
        parse_request(&big[..line_bytes], &LIMITS),
        Err(ParseError::TooLarge {
            consumed: line_bytes,
            discard: data.len() as u64 + 2,
            mode: StoreMode::Set,
            key: key.into(),
            noreply,
        })
    );
}
