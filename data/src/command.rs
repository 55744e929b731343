//! The state machine's input: one [`Command`] per log entry, with everything
//! that must be deterministic already resolved (absolute expiry, the time the
//! leader accepted it), and its binary encoding inside a log record.
//!
//! The encoding is hand-written and versioned by the log segment header
//! ([`crate::record::FORMAT_VERSION`]); golden-bytes tests pin it. Decoding
//! checks every length against the limits before allocating.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use thiserror::Error;

use crate::exptime::AbsTime;
use crate::limits::{ITEM_BYTES_MAX, KEY_BYTES_MAX};

/// How a storage command treats an existing item.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StoreMode {
    Set,
    Add,
    Replace,
    Append,
    Prepend,
    Cas,
    /// Meta's `ms ... I` with a unique: a cas, except that a unique older
    /// than the item's stores the value anyway, marked stale, keeping the
    /// item's expiry and its recache win (memcached's "set-to-invalid").
    /// No text command makes it; its text twin is `cas`.
    CasOrStale,
    /// Meta's `ms ... MA N<ttl>` and `MP N<ttl>`: append or prepend, and
    /// on a miss store the value as a new item (memcached's autovivify).
    AppendOrCreate,
    PrependOrCreate,
}

/// How many store modes classic commands make: tags 0 to 5.
const CLASSIC_MODES: usize = 6;

impl StoreMode {
    /// The modes a classic text or binary command makes, in tag order:
    /// the first of [`Self::ALL`], tags 0 to 5 (the others only meta's
    /// `ms` makes).
    pub const CLASSIC: &'static [StoreMode] = Self::ALL.split_at(CLASSIC_MODES).0;

    /// Every mode, in tag order: the classic ones first.
    pub const ALL: [StoreMode; 9] = [
        StoreMode::Set,
        StoreMode::Add,
        StoreMode::Replace,
        StoreMode::Append,
        StoreMode::Prepend,
        StoreMode::Cas,
        StoreMode::CasOrStale,
        StoreMode::AppendOrCreate,
        StoreMode::PrependOrCreate,
    ];

    /// The command name on the wire.
    pub fn verb(self) -> &'static str {
        match self {
            StoreMode::Set => "set",
            StoreMode::Add => "add",
            StoreMode::Replace => "replace",
            StoreMode::Append | StoreMode::AppendOrCreate => "append",
            StoreMode::Prepend | StoreMode::PrependOrCreate => "prepend",
            StoreMode::Cas | StoreMode::CasOrStale => "cas",
        }
    }

    fn tag(self) -> u8 {
        match self {
            StoreMode::Set => 0,
            StoreMode::Add => 1,
            StoreMode::Replace => 2,
            StoreMode::Append => 3,
            StoreMode::Prepend => 4,
            StoreMode::Cas => 5,
            StoreMode::CasOrStale => 6,
            StoreMode::AppendOrCreate => 7,
            StoreMode::PrependOrCreate => 8,
        }
    }

    fn from_tag(tag: u8) -> Option<Self> {
        Some(match tag {
            0 => StoreMode::Set,
            1 => StoreMode::Add,
            2 => StoreMode::Replace,
            3 => StoreMode::Append,
            4 => StoreMode::Prepend,
            5 => StoreMode::Cas,
            6 => StoreMode::CasOrStale,
            7 => StoreMode::AppendOrCreate,
            8 => StoreMode::PrependOrCreate,
            _ => return None,
        })
    }
}

/// One change to the key-value state, as the log stores it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// Written by a new leader to commit an entry of its own term; changes nothing.
    Noop,
    /// set/add/replace/append/prepend/cas. `cas_unique` is only read for `Cas`.
    Store {
        mode: StoreMode,
        key: Bytes,
        flags: u32,
        exptime: AbsTime,
        data: Bytes,
        cas_unique: u64,
    },
    /// delete; with a nonzero `cas_unique` only an item with that unique
    /// (the binary protocol's delete with CAS).
    Delete {
        key: Bytes,
        cas_unique: u64,
    },
    /// incr (`incr == true`, wraps at 2^64) or decr (floors at 0). With a
    /// nonzero `cas_unique` only an item with that unique; with `initial`,
    /// a missing item is created holding it (the binary protocol's
    /// increment and decrement); with `touch`, the counter then expires
    /// so (meta's `ma ... T`).
    Arith {
        key: Bytes,
        delta: u64,
        incr: bool,
        cas_unique: u64,
        initial: Option<Initial>,
        touch: Option<AbsTime>,
    },
    Touch {
        key: Bytes,
        exptime: AbsTime,
    },
    /// gat/gats: read the keys and set a new expiry on each hit.
    GetAndTouch {
        keys: Vec<Bytes>,
        exptime: AbsTime,
    },
    /// Items last written before `deadline_s` become invisible once the
    /// clock reaches `deadline_s`; `deadline_s == 0` flushes now.
    FlushAll {
        deadline_s: u64,
    },
    /// A replica group's membership from this entry on (DESIGN §3: membership
    /// is in the log). Changes no key; the replication core reads it.
    Config {
        voters: Vec<u64>,
        learners: Vec<u64>,
    },
    /// The meta protocol's mg when it may change the item (DESIGN §5a):
    /// with `N` (`vivify`: create a missing item, empty, expiring then),
    /// `R` (the reader wins the recache if the item expires before
    /// `recache_before`), `T` (`touch`: a new expiry), or when the item is
    /// stale with no win given yet. The entry decides the win, so exactly
    /// one reader gets it.
    MetaGet {
        key: Bytes,
        vivify: Option<AbsTime>,
        recache_before: Option<AbsTime>,
        touch: Option<AbsTime>,
    },
    /// md with `I`: marks the item stale (served, flagged, until
    /// rewritten), gives it a new unique, clears its win, and sets
    /// `exptime` when given; with a nonzero `cas_unique`, only an item
    /// with that unique.
    Invalidate {
        key: Bytes,
        cas_unique: u64,
        exptime: Option<AbsTime>,
    },
    /// md with `x`: the item's value emptied, in place (memcached's
    /// tombstone): it then has `flags` (`F`, else 0) and expires at
    /// `exptime` (`T`, else never); with `stale` (md `I` too) it is also
    /// invalidated as [`Op::Invalidate`] does. Its unique stays, unless
    /// stale or the entry names one. With a nonzero `cas_unique`, only an
    /// item with that unique.
    EmptyValue {
        key: Bytes,
        cas_unique: u64,
        flags: u32,
        exptime: AbsTime,
        stale: bool,
    },
    /// Removes those of `keys` that no reader can see at the entry's time
    /// (expired or flushed): the leader's choice of what to reclaim, carried
    /// in the entry so that every replica frees the same items (DESIGN §2).
    Reclaim {
        keys: Vec<Bytes>,
    },
}

impl Op {
    /// Whether the operation may write an item, and so can give it a
    /// unique the client chose ([`Command::unique`]).
    pub fn takes_unique(&self) -> bool {
        matches!(
            self,
            Op::Store { .. }
                | Op::Arith { .. }
                | Op::MetaGet { .. }
                | Op::Invalidate { .. }
                | Op::EmptyValue { .. }
        )
    }

    /// The key a client's operation is routed by: its key, or a multi-key
    /// operation's first; `None` for what concerns no one key (flush_all,
    /// and what the core and the reclaimer write).
    pub fn first_key(&self) -> Option<&Bytes> {
        match self {
            Op::Store { key, .. }
            | Op::Delete { key, .. }
            | Op::MetaGet { key, .. }
            | Op::Invalidate { key, .. }
            | Op::EmptyValue { key, .. }
            | Op::Arith { key, .. }
            | Op::Touch { key, .. } => Some(key),
            Op::GetAndTouch { keys, .. } => keys.first(),
            Op::Noop | Op::FlushAll { .. } | Op::Config { .. } | Op::Reclaim { .. } => None,
        }
    }
}

/// What incr/decr create when the item is missing (binary protocol).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Initial {
    pub value: u64,
    pub exptime: AbsTime,
}

/// A log entry's payload: an [`Op`] and the leader's clock when it accepted it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Command {
    /// Unix seconds on the leader when it accepted the command; expiry checks
    /// during apply use this, never a replica's own clock.
    pub time_s: u64,
    pub op: Op,
    /// The CAS unique this entry gives what it writes, chosen by the client
    /// (meta's `E`); `None`: the entry's log index, as for every classic
    /// command. Only operations that write an item carry one.
    pub unique: Option<u64>,
}

impl Command {
    /// A command that gives what it writes the entry's index as unique.
    pub fn new(time_s: u64, op: Op) -> Command {
        Command {
            time_s,
            op,
            unique: None,
        }
    }
}

/// Why a command payload could not be decoded.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("command payload truncated")]
    Truncated,
    #[error("unknown command tag {0}")]
    UnknownTag(u8),
    #[error("unknown store mode {0}")]
    UnknownMode(u8),
    #[error("key length {0} out of range")]
    KeyLength(usize),
    #[error("value length {0} over the limit")]
    ValueLength(usize),
    #[error("{0} trailing bytes after the command")]
    Trailing(usize),
    /// A boolean field holds neither 0 nor 1: `encode` never writes that, and
    /// accepting it would let two byte strings decode to the same command.
    #[error("flag byte {0} is neither 0 nor 1")]
    BadFlag(u8),
    /// An extended form carrying only defaults (`encode` writes the short
    /// form then, and two encodings of one command would not be canonical),
    /// or a client's unique before an operation that writes no item.
    #[error("extended encoding of a command that has the short one")]
    NotCanonical,
}

const TAG_NOOP: u8 = 0;
const TAG_STORE: u8 = 1;
const TAG_DELETE: u8 = 2;
const TAG_ARITH: u8 = 3;
const TAG_TOUCH: u8 = 4;
const TAG_GAT: u8 = 5;
const TAG_FLUSH: u8 = 6;
const TAG_CONFIG: u8 = 7;
const TAG_RECLAIM: u8 = 8;
/// A delete with a CAS unique; one without keeps [`TAG_DELETE`]'s form.
const TAG_DELETE_CAS: u8 = 9;
/// An incr/decr with a CAS unique or an initial value; one with neither
/// keeps [`TAG_ARITH`]'s form, so logs written before these existed read
/// the same.
const TAG_ARITH_EXT: u8 = 10;
const TAG_META_GET: u8 = 11;
const TAG_INVALIDATE: u8 = 12;
/// [`TAG_ARITH_EXT`]'s fields, then an expiry to set.
const TAG_ARITH_TOUCH: u8 = 13;
/// Comes before an operation's tag: `[unique u64]`, the unique the
/// client chose ([`Command::unique`]). A command without one has no prefix,
/// so logs written before it existed read the same.
const TAG_UNIQUE: u8 = 14;
const TAG_EMPTY_VALUE: u8 = 15;

/// Servers one configuration may name at most.
pub const CONFIG_MEMBERS_MAX: usize = 64;

/// Upper bound on keys in one gat; a gat line is bounded by the get line limit.
pub const GAT_KEYS_MAX: usize = 1 << 20;

/// Keys one reclaim entry names at most: its apply holds the state lock for
/// this many removals, about 100 us (DESIGN §2).
pub const RECLAIM_KEYS_MAX: usize = 1024;

impl Command {
    /// Appends the encoding: `[time_s u64][tag u8][fields]`, little endian;
    /// keys as `[len u8][bytes]`, values as `[len u32][bytes]`.
    pub fn encode(&self, out: &mut BytesMut) {
        out.put_u64_le(self.time_s);
        if let Some(unique) = self.unique {
            out.put_u8(TAG_UNIQUE);
            out.put_u64_le(unique);
        }
        match &self.op {
            Op::Noop => out.put_u8(TAG_NOOP),
            Op::Store {
                mode,
                key,
                flags,
                exptime,
                data,
                cas_unique,
            } => {
                out.put_u8(TAG_STORE);
                out.put_u8(mode.tag());
                put_key(out, key);
                out.put_u32_le(*flags);
                out.put_u64_le(*exptime);
                out.put_u64_le(*cas_unique);
                out.put_u32_le(data.len() as u32);
                out.put_slice(data);
            }
            Op::Delete { key, cas_unique } => {
                out.put_u8(if *cas_unique == 0 {
                    TAG_DELETE
                } else {
                    TAG_DELETE_CAS
                });
                put_key(out, key);
                if *cas_unique != 0 {
                    out.put_u64_le(*cas_unique);
                }
            }
            Op::Arith {
                key,
                delta,
                incr,
                cas_unique,
                initial,
                touch,
            } => {
                let extended = *cas_unique != 0 || initial.is_some() || touch.is_some();
                out.put_u8(match (extended, touch) {
                    (false, _) => TAG_ARITH,
                    (true, None) => TAG_ARITH_EXT,
                    (true, Some(_)) => TAG_ARITH_TOUCH,
                });
                out.put_u8(u8::from(*incr));
                put_key(out, key);
                out.put_u64_le(*delta);
                if extended {
                    out.put_u64_le(*cas_unique);
                    match initial {
                        None => out.put_u8(0),
                        Some(Initial { value, exptime }) => {
                            out.put_u8(1);
                            out.put_u64_le(*value);
                            out.put_u64_le(*exptime);
                        }
                    }
                    if let Some(touch) = touch {
                        out.put_u64_le(*touch);
                    }
                }
            }
            Op::MetaGet {
                key,
                vivify,
                recache_before,
                touch,
            } => {
                out.put_u8(TAG_META_GET);
                put_key(out, key);
                for time in [vivify, recache_before, touch] {
                    put_optional(out, *time);
                }
            }
            Op::Invalidate {
                key,
                cas_unique,
                exptime,
            } => {
                out.put_u8(TAG_INVALIDATE);
                put_key(out, key);
                out.put_u64_le(*cas_unique);
                put_optional(out, *exptime);
            }
            Op::EmptyValue {
                key,
                cas_unique,
                flags,
                exptime,
                stale,
            } => {
                out.put_u8(TAG_EMPTY_VALUE);
                put_key(out, key);
                out.put_u64_le(*cas_unique);
                out.put_u32_le(*flags);
                out.put_u64_le(*exptime);
                out.put_u8(u8::from(*stale));
            }
            Op::Touch { key, exptime } => {
                out.put_u8(TAG_TOUCH);
                put_key(out, key);
                out.put_u64_le(*exptime);
            }
            Op::GetAndTouch { keys, exptime } => {
                out.put_u8(TAG_GAT);
                out.put_u64_le(*exptime);
                put_keys(out, keys);
            }
            Op::Reclaim { keys } => {
                out.put_u8(TAG_RECLAIM);
                put_keys(out, keys);
            }
            Op::FlushAll { deadline_s } => {
                out.put_u8(TAG_FLUSH);
                out.put_u64_le(*deadline_s);
            }
            Op::Config { voters, learners } => {
                out.put_u8(TAG_CONFIG);
                for ids in [voters, learners] {
                    out.put_u16_le(ids.len() as u16);
                    for id in ids {
                        out.put_u64_le(*id);
                    }
                }
            }
        }
    }

    /// Encoded size in bytes, for batching and window accounting.
    pub fn encoded_len(&self) -> usize {
        8 + 1
            + self.unique.map_or(0, |_| 1 + 8)
            + match &self.op {
                Op::Noop => 0,
                Op::Store { key, data, .. } => 1 + 1 + key.len() + 4 + 8 + 8 + 4 + data.len(),
                Op::Delete { key, cas_unique } => {
                    1 + key.len() + if *cas_unique == 0 { 0 } else { 8 }
                }
                Op::Arith {
                    key,
                    cas_unique,
                    initial,
                    touch,
                    ..
                } => {
                    let extension = match (cas_unique, initial, touch) {
                        (0, None, None) => 0,
                        (_, None, _) => 8 + 1,
                        (_, Some(_), _) => 8 + 1 + 16,
                    };
                    1 + 1 + key.len() + 8 + extension + touch.map_or(0, |_| 8)
                }
                Op::Touch { key, .. } => 1 + key.len() + 8,
                Op::MetaGet {
                    key,
                    vivify,
                    recache_before,
                    touch,
                } => {
                    1 + key.len()
                        + [vivify, recache_before, touch]
                            .iter()
                            .map(|t| optional_len(**t))
                            .sum::<usize>()
                }
                Op::Invalidate { key, exptime, .. } => 1 + key.len() + 8 + optional_len(*exptime),
                Op::EmptyValue { key, .. } => 1 + key.len() + 8 + 4 + 8 + 1,
                Op::GetAndTouch { keys, .. } => 8 + keys_len(keys),
                Op::Reclaim { keys } => keys_len(keys),
                Op::FlushAll { .. } => 8,
                Op::Config { voters, learners } => 2 + 8 * voters.len() + 2 + 8 * learners.len(),
            }
    }

    /// Decodes one command that fills `buf` exactly. Values share `buf`'s
    /// allocation (no copy).
    pub fn decode(mut buf: Bytes) -> Result<Command, DecodeError> {
        let time_s = get_u64(&mut buf)?;
        let mut tag = get_u8(&mut buf)?;
        let mut unique = None;
        if tag == TAG_UNIQUE {
            unique = Some(get_u64(&mut buf)?);
            tag = get_u8(&mut buf)?;
        }
        let op = match tag {
            TAG_NOOP => Op::Noop,
            TAG_STORE => {
                let mode_tag = get_u8(&mut buf)?;
                let mode =
                    StoreMode::from_tag(mode_tag).ok_or(DecodeError::UnknownMode(mode_tag))?;
                let key = get_key(&mut buf)?;
                let flags = get_u32(&mut buf)?;
                let exptime = get_u64(&mut buf)?;
                let cas_unique = get_u64(&mut buf)?;
                let len = get_u32(&mut buf)? as usize;
                if len > ITEM_BYTES_MAX {
                    return Err(DecodeError::ValueLength(len));
                }
                let data = get_bytes(&mut buf, len)?;
                Op::Store {
                    mode,
                    key,
                    flags,
                    exptime,
                    data,
                    cas_unique,
                }
            }
            TAG_DELETE => Op::Delete {
                key: get_key(&mut buf)?,
                cas_unique: 0,
            },
            TAG_DELETE_CAS => {
                let key = get_key(&mut buf)?;
                let cas_unique = get_u64(&mut buf)?;
                if cas_unique == 0 {
                    return Err(DecodeError::NotCanonical);
                }
                Op::Delete { key, cas_unique }
            }
            TAG_ARITH | TAG_ARITH_EXT | TAG_ARITH_TOUCH => {
                let incr = get_flag(&mut buf)?;
                let key = get_key(&mut buf)?;
                let delta = get_u64(&mut buf)?;
                let (cas_unique, initial) = if tag == TAG_ARITH {
                    (0, None)
                } else {
                    let cas_unique = get_u64(&mut buf)?;
                    let initial = if get_flag(&mut buf)? {
                        let value = get_u64(&mut buf)?;
                        let exptime = get_u64(&mut buf)?;
                        Some(Initial { value, exptime })
                    } else if cas_unique == 0 && tag == TAG_ARITH_EXT {
                        return Err(DecodeError::NotCanonical);
                    } else {
                        None
                    };
                    (cas_unique, initial)
                };
                let touch = if tag == TAG_ARITH_TOUCH {
                    Some(get_u64(&mut buf)?)
                } else {
                    None
                };
                Op::Arith {
                    key,
                    delta,
                    incr,
                    cas_unique,
                    initial,
                    touch,
                }
            }
            TAG_TOUCH => {
                let key = get_key(&mut buf)?;
                let exptime = get_u64(&mut buf)?;
                Op::Touch { key, exptime }
            }
            TAG_META_GET => Op::MetaGet {
                key: get_key(&mut buf)?,
                vivify: get_optional(&mut buf)?,
                recache_before: get_optional(&mut buf)?,
                touch: get_optional(&mut buf)?,
            },
            TAG_INVALIDATE => Op::Invalidate {
                key: get_key(&mut buf)?,
                cas_unique: get_u64(&mut buf)?,
                exptime: get_optional(&mut buf)?,
            },
            TAG_EMPTY_VALUE => Op::EmptyValue {
                key: get_key(&mut buf)?,
                cas_unique: get_u64(&mut buf)?,
                flags: get_u32(&mut buf)?,
                exptime: get_u64(&mut buf)?,
                stale: get_flag(&mut buf)?,
            },
            TAG_GAT => {
                let exptime = get_u64(&mut buf)?;
                let keys = get_keys(&mut buf, GAT_KEYS_MAX)?;
                Op::GetAndTouch { keys, exptime }
            }
            TAG_FLUSH => Op::FlushAll {
                deadline_s: get_u64(&mut buf)?,
            },
            TAG_CONFIG => {
                let voters = get_ids(&mut buf)?;
                let learners = get_ids(&mut buf)?;
                Op::Config { voters, learners }
            }
            TAG_RECLAIM => Op::Reclaim {
                keys: get_keys(&mut buf, RECLAIM_KEYS_MAX)?,
            },
            other => return Err(DecodeError::UnknownTag(other)),
        };
        if buf.has_remaining() {
            return Err(DecodeError::Trailing(buf.remaining()));
        }
        // Only what writes an item takes a unique (a second prefix is an
        // unknown tag above).
        if unique.is_some() && !op.takes_unique() {
            return Err(DecodeError::NotCanonical);
        }
        Ok(Command { time_s, op, unique })
    }
}

impl Command {
    /// The membership an encoded command sets, if it is a configuration
    /// entry; other payloads are not decoded (the replication core calls this
    /// on every entry it appends).
    pub fn peek_config(payload: &Bytes) -> Option<(Vec<u64>, Vec<u64>)> {
        if payload.get(8) != Some(&TAG_CONFIG) {
            return None;
        }
        match Command::decode(payload.clone()).ok()?.op {
            Op::Config { voters, learners } => Some((voters, learners)),
            _ => None,
        }
    }
}

fn get_ids(buf: &mut Bytes) -> Result<Vec<u64>, DecodeError> {
    let count = buf.try_get_u16_le().map_err(|_| DecodeError::Truncated)? as usize;
    if count > CONFIG_MEMBERS_MAX || count * 8 > buf.remaining() {
        return Err(DecodeError::Truncated);
    }
    (0..count).map(|_| get_u64(buf)).collect()
}

/// `[count u32][key]*`.
fn put_keys(out: &mut BytesMut, keys: &[Bytes]) {
    out.put_u32_le(keys.len() as u32);
    for key in keys {
        put_key(out, key);
    }
}

fn keys_len(keys: &[Bytes]) -> usize {
    4 + keys.iter().map(|k| 1 + k.len()).sum::<usize>()
}

fn get_keys(buf: &mut Bytes, keys_max: usize) -> Result<Vec<Bytes>, DecodeError> {
    let count = get_u32(buf)? as usize;
    // Each key takes at least two bytes, so a count the payload cannot hold
    // is rejected before allocating for it.
    if count > keys_max || count * 2 > buf.remaining() {
        return Err(DecodeError::Truncated);
    }
    let mut keys = Vec::with_capacity(count);
    for _ in 0..count {
        keys.push(get_key(buf)?);
    }
    Ok(keys)
}

fn put_key(out: &mut BytesMut, key: &[u8]) {
    debug_assert!(!key.is_empty() && key.len() <= KEY_BYTES_MAX);
    out.put_u8(key.len() as u8);
    out.put_slice(key);
}

/// `[present u8][value u64 if present]`.
fn put_optional(out: &mut BytesMut, value: Option<u64>) {
    match value {
        None => out.put_u8(0),
        Some(value) => {
            out.put_u8(1);
            out.put_u64_le(value);
        }
    }
}

fn optional_len(value: Option<u64>) -> usize {
    1 + value.map_or(0, |_| 8)
}

fn get_optional(buf: &mut Bytes) -> Result<Option<u64>, DecodeError> {
    Ok(if get_flag(buf)? {
        Some(get_u64(buf)?)
    } else {
        None
    })
}

/// A boolean byte: 0 or 1, nothing else (see [`DecodeError::BadFlag`]).
fn get_flag(buf: &mut Bytes) -> Result<bool, DecodeError> {
    match get_u8(buf)? {
        0 => Ok(false),
        1 => Ok(true),
        other => Err(DecodeError::BadFlag(other)),
    }
}

fn get_u8(buf: &mut Bytes) -> Result<u8, DecodeError> {
    buf.try_get_u8().map_err(|_| DecodeError::Truncated)
}

fn get_u32(buf: &mut Bytes) -> Result<u32, DecodeError> {
    buf.try_get_u32_le().map_err(|_| DecodeError::Truncated)
}

fn get_u64(buf: &mut Bytes) -> Result<u64, DecodeError> {
    buf.try_get_u64_le().map_err(|_| DecodeError::Truncated)
}

fn get_bytes(buf: &mut Bytes, len: usize) -> Result<Bytes, DecodeError> {
    if buf.remaining() < len {
        return Err(DecodeError::Truncated);
    }
    Ok(buf.split_to(len))
}

fn get_key(buf: &mut Bytes) -> Result<Bytes, DecodeError> {
    let len = get_u8(buf)? as usize;
    if len == 0 || len > KEY_BYTES_MAX {
        return Err(DecodeError::KeyLength(len));
    }
    get_bytes(buf, len)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn roundtrip(cmd: &Command) -> Command {
        let mut out = BytesMut::new();
        cmd.encode(&mut out);
        assert_eq!(out.len(), cmd.encoded_len());
        Command::decode(out.freeze()).expect("decodes what it encoded")
    }

    /// `ALL` is in tag order, and `CLASSIC` is what a `cas` or store
    /// verb of the classic protocols names: one mode per verb.
    #[test]
    fn store_modes_are_listed_in_tag_order() {
        for (i, mode) in StoreMode::ALL.iter().enumerate() {
            assert_eq!(usize::from(mode.tag()), i, "{mode:?}");
            assert_eq!(StoreMode::from_tag(mode.tag()), Some(*mode));
        }
        let verbs: std::collections::BTreeSet<&str> =
            StoreMode::CLASSIC.iter().map(|m| m.verb()).collect();
        assert_eq!(verbs.len(), StoreMode::CLASSIC.len());
    }

    /// Pins the on-disk encoding: a change here breaks every existing log.
    #[test]
    fn golden_bytes_store() {
        let cmd = Command {
            time_s: 0x0102,
            op: Op::Store {
                mode: StoreMode::Cas,
                key: Bytes::from_static(b"ab"),
                flags: 7,
                exptime: 9,
                data: Bytes::from_static(b"xyz"),
                cas_unique: 5,
            },
            unique: None,
        };
        let mut out = BytesMut::new();
        cmd.encode(&mut out);
        let expected: &[u8] = &[
            0x02, 0x01, 0, 0, 0, 0, 0, 0, // time_s
            1, 5, // store, cas
            2, b'a', b'b', // key
            7, 0, 0, 0, // flags
            9, 0, 0, 0, 0, 0, 0, 0, // exptime
            5, 0, 0, 0, 0, 0, 0, 0, // cas unique
            3, 0, 0, 0, b'x', b'y', b'z',
        ];
        assert_eq!(&out[..], expected);
        assert_eq!(roundtrip(&cmd), cmd);
    }

    #[test]
    fn golden_bytes_small_ops() {
        let cases: Vec<(Op, Vec<u8>)> = vec![
            (Op::Noop, vec![0]),
            (
                Op::Delete {
                    key: Bytes::from_static(b"k"),
                    cas_unique: 0,
                },
                vec![2, 1, b'k'],
            ),
            (
                Op::Delete {
                    key: Bytes::from_static(b"k"),
                    cas_unique: 4,
                },
                vec![9, 1, b'k', 4, 0, 0, 0, 0, 0, 0, 0],
            ),
            (
                Op::Arith {
                    key: Bytes::from_static(b"k"),
                    delta: 1,
                    incr: true,
                    cas_unique: 0,
                    initial: None,
                    touch: None,
                },
                vec![3, 1, 1, b'k', 1, 0, 0, 0, 0, 0, 0, 0],
            ),
            (
                Op::Arith {
                    key: Bytes::from_static(b"k"),
                    delta: 1,
                    incr: false,
                    cas_unique: 0,
                    initial: Some(Initial {
                        value: 5,
                        exptime: 6,
                    }),
                    touch: None,
                },
                vec![
                    10, 0, 1, b'k', 1, 0, 0, 0, 0, 0, 0, 0, // delta
                    0, 0, 0, 0, 0, 0, 0, 0, // cas unique
                    1, 5, 0, 0, 0, 0, 0, 0, 0, // initial
                    6, 0, 0, 0, 0, 0, 0, 0, // its exptime
                ],
            ),
            (
                Op::Touch {
                    key: Bytes::from_static(b"k"),
                    exptime: 2,
                },
                vec![4, 1, b'k', 2, 0, 0, 0, 0, 0, 0, 0],
            ),
            (
                Op::GetAndTouch {
                    keys: vec![Bytes::from_static(b"k")],
                    exptime: 2,
                },
                vec![5, 2, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 1, b'k'],
            ),
            (
                Op::FlushAll { deadline_s: 3 },
                vec![6, 3, 0, 0, 0, 0, 0, 0, 0],
            ),
            (
                Op::Reclaim {
                    keys: vec![Bytes::from_static(b"k"), Bytes::from_static(b"ab")],
                },
                vec![8, 2, 0, 0, 0, 1, b'k', 2, b'a', b'b'],
            ),
        ];
        for (op, tail) in cases {
            let cmd = Command::new(0, op);
            let mut out = BytesMut::new();
            cmd.encode(&mut out);
            assert_eq!(&out[8..], &tail[..], "{cmd:?}");
            assert_eq!(roundtrip(&cmd), cmd);
        }
    }

    /// The meta protocol's additions: a client's unique (`E`) before the
    /// operation, and `md x`.
    #[test]
    fn golden_bytes_meta() {
        let cmd = Command {
            time_s: 0,
            op: Op::EmptyValue {
                key: Bytes::from_static(b"k"),
                cas_unique: 3,
                flags: 2,
                exptime: 1,
                stale: true,
            },
            unique: Some(9),
        };
        let mut out = BytesMut::new();
        cmd.encode(&mut out);
        let expected: &[u8] = &[
            0, 0, 0, 0, 0, 0, 0, 0, // time_s
            14, 9, 0, 0, 0, 0, 0, 0, 0, // the client's unique
            15, 1, b'k', // empty value, key
            3, 0, 0, 0, 0, 0, 0, 0, // cas unique
            2, 0, 0, 0, // flags
            1, 0, 0, 0, 0, 0, 0, 0, // exptime
            1, // stale
        ];
        assert_eq!(&out[..], expected);
        assert_eq!(roundtrip(&cmd), cmd);
    }

    /// A unique on what writes no item, or twice, is not an encoding
    /// `encode` makes.
    #[test]
    fn unique_only_before_a_write() {
        let with = |tail: &[u8]| {
            let mut out = vec![0; 8];
            out.push(TAG_UNIQUE);
            out.extend_from_slice(&7u64.to_le_bytes());
            out.extend_from_slice(tail);
            Command::decode(Bytes::from(out))
        };
        assert_eq!(with(&[TAG_NOOP]), Err(DecodeError::NotCanonical));
        assert_eq!(with(&[TAG_DELETE, 1, b'k']), Err(DecodeError::NotCanonical));
        let mut twice = vec![TAG_UNIQUE];
        twice.extend_from_slice(&7u64.to_le_bytes());
        twice.extend_from_slice(&[TAG_DELETE, 1, b'k']);
        assert_eq!(with(&twice), Err(DecodeError::UnknownTag(TAG_UNIQUE)));
    }

    #[test]
    fn rejects_trailing_and_truncated() {
        let cmd = Command::new(
            1,
            Op::Delete {
                key: Bytes::from_static(b"key"),
                cas_unique: 0,
            },
        );
        let mut out = BytesMut::new();
        cmd.encode(&mut out);
        let full = out.clone().freeze();
        for cut in 0..full.len() {
            assert!(Command::decode(full.slice(..cut)).is_err(), "cut at {cut}");
        }
        out.put_u8(0);
        assert_eq!(Command::decode(out.freeze()), Err(DecodeError::Trailing(1)));
    }

    /// Found by the `record_read` fuzz target: an incr byte of 3 decoded as
    /// `incr: true` and re-encoded as 1, so the decoding was not canonical.
    #[test]
    fn arith_flag_is_0_or_1() {
        let bytes = |flag: u8| {
            let mut out = vec![0; 8];
            out.extend_from_slice(&[TAG_ARITH, flag, 1, b'k', 1, 0, 0, 0, 0, 0, 0, 0]);
            Bytes::from(out)
        };
        for (flag, incr) in [(0, false), (1, true)] {
            let cmd = Command::decode(bytes(flag)).expect("valid flag");
            assert_eq!(
                cmd.op,
                Op::Arith {
                    key: Bytes::from_static(b"k"),
                    delta: 1,
                    incr,
                    cas_unique: 0,
                    initial: None,
                    touch: None,
                }
            );
        }
        for flag in [2, 3, 0xff] {
            assert_eq!(
                Command::decode(bytes(flag)),
                Err(DecodeError::BadFlag(flag))
            );
        }
    }

    fn key() -> impl Strategy<Value = Bytes> {
        proptest::collection::vec(any::<u8>(), 1..=KEY_BYTES_MAX).prop_map(Bytes::from)
    }

    fn op() -> impl Strategy<Value = Op> {
        let mode = prop_oneof![
            Just(StoreMode::Set),
            Just(StoreMode::Add),
            Just(StoreMode::Replace),
            Just(StoreMode::Append),
            Just(StoreMode::Prepend),
            Just(StoreMode::Cas),
            Just(StoreMode::CasOrStale),
            Just(StoreMode::AppendOrCreate),
            Just(StoreMode::PrependOrCreate)
        ];
        prop_oneof![
            Just(Op::Noop),
            (
                mode,
                key(),
                any::<u32>(),
                any::<u64>(),
                proptest::collection::vec(any::<u8>(), 0..512),
                any::<u64>()
            )
                .prop_map(|(mode, key, flags, exptime, data, cas_unique)| Op::Store {
                    mode,
                    key,
                    flags,
                    exptime,
                    data: Bytes::from(data),
                    cas_unique
                }),
            (key(), prop_oneof![Just(0u64), any::<u64>()])
                .prop_map(|(key, cas_unique)| Op::Delete { key, cas_unique }),
            (
                key(),
                any::<u64>(),
                any::<bool>(),
                prop_oneof![Just(0u64), any::<u64>()],
                proptest::option::of((any::<u64>(), any::<u64>())),
                proptest::option::of(any::<u64>())
            )
                .prop_map(|(key, delta, incr, cas_unique, initial, touch)| Op::Arith {
                    key,
                    delta,
                    incr,
                    cas_unique,
                    initial: initial.map(|(value, exptime)| Initial { value, exptime }),
                    touch,
                }),
            (key(), any::<u64>()).prop_map(|(key, exptime)| Op::Touch { key, exptime }),
            (
                key(),
                proptest::option::of(any::<u64>()),
                proptest::option::of(any::<u64>()),
                proptest::option::of(any::<u64>())
            )
                .prop_map(|(key, vivify, recache_before, touch)| Op::MetaGet {
                    key,
                    vivify,
                    recache_before,
                    touch
                }),
            (key(), any::<u64>(), proptest::option::of(any::<u64>())).prop_map(
                |(key, cas_unique, exptime)| Op::Invalidate {
                    key,
                    cas_unique,
                    exptime
                }
            ),
            (
                key(),
                any::<u64>(),
                any::<u32>(),
                any::<u64>(),
                any::<bool>()
            )
                .prop_map(|(key, cas_unique, flags, exptime, stale)| Op::EmptyValue {
                    key,
                    cas_unique,
                    flags,
                    exptime,
                    stale
                }),
            (proptest::collection::vec(key(), 0..8), any::<u64>())
                .prop_map(|(keys, exptime)| Op::GetAndTouch { keys, exptime }),
            any::<u64>().prop_map(|deadline_s| Op::FlushAll { deadline_s }),
            (
                proptest::collection::vec(any::<u64>(), 0..8),
                proptest::collection::vec(any::<u64>(), 0..8)
            )
                .prop_map(|(voters, learners)| Op::Config { voters, learners }),
            proptest::collection::vec(key(), 0..8).prop_map(|keys| Op::Reclaim { keys }),
        ]
    }

    proptest! {
        #[test]
        fn encode_decode_roundtrip(
            time_s in any::<u64>(),
            op in op(),
            unique in proptest::option::of(any::<u64>()),
        ) {
            let unique = unique.filter(|_| op.takes_unique());
            let cmd = Command { time_s, op, unique };
            prop_assert_eq!(roundtrip(&cmd), cmd);
        }

        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = Command::decode(Bytes::from(bytes));
        }
    }
}
