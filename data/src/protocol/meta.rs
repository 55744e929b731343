//! memcached's meta commands (`mg`, `ms`, `md`, `ma`, `mn`, `me`), server
//! side: a line (and for `ms` its data block) to a [`MetaRequest`], and a
//! request's outcome to its response line; the line a follower forwards
//! ([`MetaRequest::encode`]) and the length of a meta response
//! ([`response_len`]) for its lanes.
//!
//! ```text
//! mg <key> <flags>*            ->  VA <len> <flags>*\r\n<data>\r\n | HD <flags>* | EN
//! ms <key> <datalen> <flags>*\r\n<data>\r\n  ->  HD | NS | EX | NF
//! md <key> <flags>*            ->  HD | NF | EX
//! ma <key> <flags>*            ->  HD | VA <len> <flags>*\r\n<number>\r\n | NF | NS | EX
//! mn                           ->  MN
//! me <key>                     ->  ME <key> <k>=<v>* | EN
//! ```
//!
//! A flag is one letter, some with a token after it (`T30`, `Oabc`). The
//! flags that return something (`k`, `O`, `c`, `f`, `s`, `t`, `l`, `h`, and `b`
//! after `k`) come back in the order they were sent. Wording follows
//! memcached 1.6.18 (the reference the differential test runs): a repeated
//! flag is `CLIENT_ERROR duplicate flag` (`invalid or duplicate flag` for
//! md and ma), an unknown one `CLIENT_ERROR invalid flag`. `q` leaves out
//! the uninteresting reply only: `EN` for mg, `HD` for ms, md and ma;
//! never an error. `P` and `L` (proxy hints) are accepted and ignored.
//!
//! Stale-while-revalidate is replicated item state (`crate::state::lease`):
//! `mg` with `N` (create on a miss and win), `R` (win when the item
//! expires soon), `md` with `I` (mark stale, and the next reader wins), and
//! the `W` (won), `Z` (won by another) and `X` (stale) they return.
//!
//! `ms` with `I` and a unique older than the item's stores the value
//! stale (memcached's set-to-invalid); `md` with `x` empties the value and
//! keeps the item; `E` names the unique a write gives its item instead of
//! the one the log would (the entry carries it, so every replica agrees).
//! memcached 1.6.18 has `ms I`; `E` and `x` follow the upstream doc.
//!
//! Access metadata is best effort, as memcached's doc allows: reads are
//! not log entries, so `h`, `l` and `me`'s `la`/`fetch` are what the
//! server answering saw (`server::access`).

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use bytes::{BufMut, Bytes, BytesMut};

use super::put_u64;
use super::request::{ParseError, Request, BAD_DATA_CHUNK, BAD_FORMAT};
use crate::exptime::{AbsTime, NEVER};
use crate::limits::{Limits, KEY_BYTES_MAX};
use crate::state::Outcome;

/// Tokens a meta line may have, command and key included (memcached's
/// `MFLAG_MAX_OPT_LENGTH` less its terminating token).
pub const META_TOKENS_MAX: usize = 19;
/// An opaque token's bytes at most, the `O` included.
pub const OPAQUE_BYTES_MAX: usize = 32;

pub const DUPLICATE_FLAG: &str = "CLIENT_ERROR duplicate flag\r\n";
pub const INVALID_FLAG: &str = "CLIENT_ERROR invalid flag\r\n";
pub const INVALID_OR_DUPLICATE_FLAG: &str = "CLIENT_ERROR invalid or duplicate flag\r\n";
pub const BAD_TOKEN: &str = "CLIENT_ERROR bad token in command line format\r\n";
pub const KEY_NOT_DECODED: &str = "CLIENT_ERROR error decoding key\r\n";
pub const OPAQUE_TOO_LONG: &str = "CLIENT_ERROR opaque token too long\r\n";
pub const FLAGS_TOO_LONG: &str = "CLIENT_ERROR options flags too long\r\n";
pub const MG_FLAGS_TOO_LONG: &str = "CLIENT_ERROR options flags are too long\r\n";
pub const M_TOKEN_LENGTH: &str = "CLIENT_ERROR incorrect length for M token\r\n";
pub const MS_BAD_MODE: &str = "CLIENT_ERROR invalid mode for ms M token\r\n";
pub const MA_BAD_MODE: &str = "CLIENT_ERROR invalid mode for ma M token\r\n";
pub const BAD_INITIAL: &str = "CLIENT_ERROR invalid numeric initial value\r\n";
pub const BAD_DELTA: &str = "CLIENT_ERROR invalid numeric delta value\r\n";

/// Which meta command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetaVerb {
    Get,
    Set,
    Delete,
    Arith,
    Noop,
    Debug,
}

impl MetaVerb {
    fn name(self) -> &'static str {
        match self {
            MetaVerb::Get => "mg",
            MetaVerb::Set => "ms",
            MetaVerb::Delete => "md",
            MetaVerb::Arith => "ma",
            MetaVerb::Noop => "mn",
            MetaVerb::Debug => "me",
        }
    }
}

/// A flag that puts something in the response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Returned {
    /// `k`: the key (base64 and then ` b` for a base64 key).
    Key,
    /// `O<token>`: echoed as sent.
    Opaque(Bytes),
    /// `c`: the CAS unique.
    Cas,
    /// `f`: the client flags.
    Flags,
    /// `s`: the value's size.
    Size,
    /// `t`: whole seconds left to live, -1 for none. An item given N
    /// seconds lives N to N + 1 here (DESIGN §2), and reports N at first,
    /// as memcached does.
    Ttl,
    /// `l`: seconds since the item was last read or written, as far as
    /// the server answering knows: reads are not entries in the log, so
    /// each server knows its own (best effort, DESIGN §5a).
    LastAccess,
    /// `h`: whether the item was read before, on the same terms.
    HitBefore,
}

/// The store mode of `ms M<mode>`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SetMode {
    Set,
    Add,
    Replace,
    Append,
    Prepend,
}

/// One meta request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MetaRequest {
    pub verb: MetaVerb,
    /// The key as stored (decoded from base64 under `b`); empty for `mn`.
    pub key: Bytes,
    /// `b`: the key was sent in base64, and is returned so.
    pub base64: bool,
    /// `q`: leave out the uninteresting reply.
    pub quiet: bool,
    /// `v`: return the value.
    pub value: bool,
    /// `u`: do not bump the item in the LRU (this server has none).
    pub no_bump: bool,
    pub returns: Vec<Returned>,
    /// `T<ttl>`: a new expiry, raw as sent.
    pub ttl: Option<i64>,
    /// `C<cas>`: the unique the item must have.
    pub compare_cas: Option<u64>,
    /// `F<flags>` (ms).
    pub client_flags: u32,
    /// `M<mode>` (ms).
    pub set_mode: SetMode,
    /// `M<mode>` (ma): increment unless `MD`/`M-`.
    pub incr: bool,
    /// `N<ttl>`: create a missing item (mg, and win its recache) or
    /// counter (ma), expiring so (raw).
    pub vivify: Option<i64>,
    /// `R<ttl>` (mg): win the recache if the item has less than this left.
    pub recache: Option<i64>,
    /// `I`: mark the item stale instead of deleting it (md); store it stale
    /// under an older unique (ms with `C`).
    pub invalidate: bool,
    /// `x` (md): empty the value, keep the item.
    pub empty_value: bool,
    /// `E<unique>`: the unique the write gives the item.
    pub new_cas: Option<u64>,
    /// `J<initial>` (ma).
    pub initial: u64,
    /// `D<delta>` (ma), 1 unless given.
    pub delta: u64,
    /// The value (ms).
    pub data: Bytes,
    /// Every flag token as sent but `q`, for the line a follower forwards.
    flag_tokens: Vec<Bytes>,
}

/// Flags memcached's meta parser knows; each command uses some of them and
/// accepts the others without effect, as memcached does.
fn known(flag: u8) -> bool {
    b"bNTRlOPLkstcfvhuqFCMJDIEx".contains(&flag)
}

/// Parses a meta line `verb args` (its `\r\n` at `line_bytes`) and, for
/// `ms`, its data block from `buf`.
pub fn parse_meta(
    buf: &[u8],
    line_bytes: usize,
    verb: &[u8],
    args: &[&[u8]],
    limits: &Limits,
) -> Result<Option<(Request, usize)>, ParseError> {
    let verb = match verb {
        b"mg" => MetaVerb::Get,
        b"ms" => MetaVerb::Set,
        b"md" => MetaVerb::Delete,
        b"ma" => MetaVerb::Arith,
        b"mn" => MetaVerb::Noop,
        _ => MetaVerb::Debug,
    };
    let fail = |reply: &'static str, discard: u64| ParseError::Reply {
        reply: Some(reply),
        consumed: line_bytes,
        discard,
    };
    let mut request = MetaRequest {
        verb,
        key: Bytes::new(),
        base64: false,
        quiet: false,
        value: false,
        no_bump: false,
        returns: Vec::new(),
        ttl: None,
        compare_cas: None,
        client_flags: 0,
        set_mode: SetMode::Set,
        incr: true,
        vivify: None,
        recache: None,
        invalidate: false,
        empty_value: false,
        new_cas: None,
        initial: 0,
        delta: 1,
        data: Bytes::new(),
        flag_tokens: Vec::new(),
    };
    if verb == MetaVerb::Noop {
        return Ok(Some((Request::Meta(Box::new(request)), line_bytes)));
    }
    let [key, rest @ ..] = args else {
        return Err(fail(super::request::ERROR, 0));
    };
    if key.len() > KEY_BYTES_MAX {
        return Err(fail(BAD_FORMAT, 0));
    }
    // ms: the data length first; a data block whose length is known is
    // skipped after an error.
    let (flags, data_bytes) = if verb == MetaVerb::Set {
        let [len, flags @ ..] = rest else {
            return Err(fail(BAD_FORMAT, 0));
        };
        let len = super::request::parse_data_len(len).ok_or_else(|| fail(BAD_FORMAT, 0))?;
        (flags, Some(len))
    } else {
        (rest, None)
    };
    let discard = data_bytes.map_or(0, |n| n as u64 + 2);
    let fail = |reply: &'static str| fail(reply, discard);
    if args.len() + 1 > META_TOKENS_MAX {
        return Err(fail(if verb == MetaVerb::Get {
            MG_FLAGS_TOO_LONG
        } else {
            FLAGS_TOO_LONG
        }));
    }
    // md and ma word every flag error alike (memcached 1.6.18).
    let flag_error = |reply: &'static str| match verb {
        MetaVerb::Delete | MetaVerb::Arith => fail(INVALID_OR_DUPLICATE_FLAG),
        _ => fail(reply),
    };
    let mut seen = [false; 128];
    let mut key = Bytes::copy_from_slice(key);
    let mut mode = None;
    for &token in flags {
        let flag = token[0];
        if flag >= 128 || seen[usize::from(flag)] {
            return Err(flag_error(DUPLICATE_FLAG));
        }
        seen[usize::from(flag)] = true;
        if !known(flag) {
            return Err(flag_error(INVALID_FLAG));
        }
        let arg = &token[1..];
        let number = || super::request::parse_u64(arg);
        let signed = || super::request::parse_i32(arg);
        match flag {
            b'b' => {
                key = match BASE64.decode(&key) {
                    Ok(decoded) if !decoded.is_empty() && decoded.len() <= KEY_BYTES_MAX => {
                        Bytes::from(decoded)
                    }
                    _ => return Err(flag_error(KEY_NOT_DECODED)),
                };
                request.base64 = true;
            }
            b'q' => request.quiet = true,
            b'v' => request.value = true,
            b'u' => request.no_bump = true,
            b'k' => request.returns.push(Returned::Key),
            b'c' => request.returns.push(Returned::Cas),
            b'f' => request.returns.push(Returned::Flags),
            b's' => request.returns.push(Returned::Size),
            b't' => request.returns.push(Returned::Ttl),
            b'l' => request.returns.push(Returned::LastAccess),
            b'h' => request.returns.push(Returned::HitBefore),
            b'O' => {
                if token.len() > OPAQUE_BYTES_MAX {
                    return Err(fail(OPAQUE_TOO_LONG));
                }
                request
                    .returns
                    .push(Returned::Opaque(Bytes::copy_from_slice(token)));
            }
            b'T' => request.ttl = Some(signed().ok_or_else(|| flag_error(BAD_TOKEN))?),
            b'N' => request.vivify = Some(signed().ok_or_else(|| flag_error(BAD_TOKEN))?),
            b'R' => request.recache = Some(signed().ok_or_else(|| flag_error(BAD_TOKEN))?),
            b'I' => request.invalidate = true,
            b'x' => request.empty_value = true,
            b'E' => request.new_cas = Some(number().ok_or_else(|| flag_error(BAD_TOKEN))?),
            b'C' => request.compare_cas = Some(number().ok_or_else(|| flag_error(BAD_TOKEN))?),
            b'F' => {
                let flags = number().and_then(|n| u32::try_from(n).ok());
                request.client_flags = flags.ok_or_else(|| flag_error(BAD_FORMAT))?;
            }
            b'J' => request.initial = number().ok_or_else(|| flag_error(BAD_INITIAL))?,
            b'D' => request.delta = number().ok_or_else(|| flag_error(BAD_DELTA))?,
            b'M' => {
                let [m] = arg else {
                    return Err(flag_error(M_TOKEN_LENGTH));
                };
                // Judged after every flag, as memcached does.
                mode = Some(*m);
            }
            // P, L: proxy hints; the rest known and without effect here.
            _ => {}
        }
        if flag != b'q' {
            request.flag_tokens.push(Bytes::copy_from_slice(token));
        }
    }
    match (verb, mode) {
        (_, None) => {}
        (MetaVerb::Set, Some(mode)) => {
            request.set_mode = match mode {
                b'E' => SetMode::Add,
                b'A' => SetMode::Append,
                b'P' => SetMode::Prepend,
                b'R' => SetMode::Replace,
                b'S' => SetMode::Set,
                _ => return Err(fail(MS_BAD_MODE)),
            }
        }
        (MetaVerb::Arith, Some(mode)) => {
            request.incr = match mode {
                b'I' | b'+' => true,
                b'D' | b'-' => false,
                _ => return Err(fail(MA_BAD_MODE)),
            }
        }
        _ => {}
    }
    request.key = key;
    let Some(data_bytes) = data_bytes else {
        return Ok(Some((Request::Meta(Box::new(request)), line_bytes)));
    };
    if data_bytes > limits.item_bytes_max {
        // memcached drops the key's old value, whatever the mode.
        return Err(ParseError::TooLarge {
            consumed: line_bytes,
            discard,
            mode: crate::command::StoreMode::Set,
            key: request.key,
            noreply: false,
        });
    }
    let total = line_bytes + data_bytes + 2;
    if buf.len() < total {
        return Ok(None);
    }
    if &buf[total - 2..total] != b"\r\n" {
        return Err(ParseError::Reply {
            reply: Some(BAD_DATA_CHUNK),
            consumed: total,
            discard: 0,
        });
    }
    request.data = Bytes::copy_from_slice(&buf[line_bytes..line_bytes + data_bytes]);
    Ok(Some((Request::Meta(Box::new(request)), total)))
}

/// What the response reports of an item.
#[derive(Clone, Copy, Debug)]
pub struct ItemView<'a> {
    pub data: &'a [u8],
    pub flags: u32,
    pub cas: u64,
    pub exptime: AbsTime,
    /// When the item was last read or written, as far as this server
    /// knows (`l`, `me`'s `la`).
    pub accessed_s: u64,
    /// Whether this server served the item (as it now is) before (`h`,
    /// `me`'s `fetch`).
    pub fetched: bool,
    /// What mg returns of the item's lease: `Z`, `X`, `W` in that order.
    pub token_sent: bool,
    pub stale: bool,
    pub won: bool,
}

impl MetaRequest {
    /// The request as a client writes it (`q` last, if sent).
    pub fn encode(&self, out: &mut BytesMut) {
        self.put_line(out, self.quiet);
    }

    /// The line a follower sends the leader for this request: as sent, but
    /// without `q`, so that every forwarded request has a reply to match by
    /// position (the follower leaves out what `q` would).
    pub fn encode_loud(&self, out: &mut BytesMut) {
        self.put_line(out, false);
    }

    fn put_line(&self, out: &mut BytesMut, quiet: bool) {
        out.put_slice(self.verb.name().as_bytes());
        if self.verb != MetaVerb::Noop {
            out.put_u8(b' ');
            if self.base64 {
                out.put_slice(BASE64.encode(&self.key).as_bytes());
            } else {
                out.put_slice(&self.key);
            }
        }
        if self.verb == MetaVerb::Set {
            out.put_u8(b' ');
            put_u64(out, self.data.len() as u64);
        }
        for token in &self.flag_tokens {
            out.put_u8(b' ');
            out.put_slice(token);
        }
        if quiet {
            out.put_slice(b" q");
        }
        out.put_slice(b"\r\n");
        if self.verb == MetaVerb::Set {
            out.put_slice(&self.data);
            out.put_slice(b"\r\n");
        }
    }

    /// A response of `code` (`HD`, `EN`, `NF`, ...), with the opaque and
    /// the key where asked for, and nothing when `q` leaves it out.
    pub fn put_status(&self, out: &mut BytesMut, code: &str) {
        if self.leaves_out(code.as_bytes()) {
            return;
        }
        out.put_slice(code.as_bytes());
        for returned in &self.returns {
            match returned {
                Returned::Key | Returned::Opaque(_) => self.put_returned(out, returned, None, 0),
                _ => {}
            }
        }
        out.put_slice(b"\r\n");
    }

    /// mg's response for `item` (`None`: a miss) as seen at `now_s`.
    pub fn put_item(&self, out: &mut BytesMut, item: Option<ItemView<'_>>, now_s: u64) {
        let Some(item) = item else {
            return self.put_status(out, "EN");
        };
        if self.value {
            out.put_slice(b"VA ");
            put_u64(out, item.data.len() as u64);
        } else {
            out.put_slice(b"HD");
        }
        for returned in &self.returns {
            self.put_returned(out, returned, Some(item), now_s);
        }
        for (set, flag) in [
            (item.token_sent, &b" Z"[..]),
            (item.stale, b" X"),
            (item.won, b" W"),
        ] {
            if set {
                out.put_slice(flag);
            }
        }
        out.put_slice(b"\r\n");
        if self.value {
            out.put_slice(item.data);
            out.put_slice(b"\r\n");
        }
    }

    fn put_returned(
        &self,
        out: &mut BytesMut,
        returned: &Returned,
        item: Option<ItemView<'_>>,
        now_s: u64,
    ) {
        out.put_u8(b' ');
        match (returned, item) {
            (Returned::Key, _) => {
                out.put_u8(b'k');
                if self.base64 {
                    out.put_slice(BASE64.encode(&self.key).as_bytes());
                    out.put_slice(b" b");
                } else {
                    out.put_slice(&self.key);
                }
            }
            (Returned::Opaque(token), _) => out.put_slice(token),
            (Returned::Cas, Some(item)) => {
                out.put_u8(b'c');
                put_u64(out, item.cas);
            }
            (Returned::Flags, Some(item)) => {
                out.put_u8(b'f');
                put_u64(out, u64::from(item.flags));
            }
            (Returned::Size, Some(item)) => {
                out.put_u8(b's');
                put_u64(out, item.data.len() as u64);
            }
            (Returned::Ttl, Some(item)) => {
                out.put_u8(b't');
                put_ttl(out, item.exptime, now_s);
            }
            (Returned::LastAccess, Some(item)) => {
                out.put_u8(b'l');
                put_u64(out, now_s.saturating_sub(item.accessed_s));
            }
            (Returned::HitBefore, Some(item)) => {
                out.put_slice(if item.fetched { b"h1" } else { b"h0" })
            }
            // Only a response with an item gets here with these.
            (_, None) => unreachable!("item flags are written for items only"),
        }
    }

    /// Whether `q` leaves out a response of `code`: `EN` for mg, a success
    /// for ma (`HD` or `VA`), `HD` for the others; never an error.
    pub fn leaves_out(&self, code: &[u8]) -> bool {
        self.quiet
            && match self.verb {
                MetaVerb::Get => code == b"EN",
                MetaVerb::Arith => code == b"HD" || code == b"VA",
                _ => code == b"HD",
            }
    }

    /// The response a write's outcome gets: ms, md, ma, and mg with `T`
    /// (a touch to `exptime`, whose outcome holds the item).
    pub fn put_outcome(&self, out: &mut BytesMut, outcome: &Outcome, exptime: AbsTime, now_s: u64) {
        match outcome {
            Outcome::Hits(hits) => {
                let item = hits.first().map(|hit| ItemView {
                    data: &hit.data,
                    flags: hit.flags,
                    cas: hit.cas,
                    exptime,
                    accessed_s: hit.updated_s,
                    fetched: false,
                    token_sent: false,
                    stale: false,
                    won: false,
                });
                self.put_item(out, item, now_s)
            }
            Outcome::Leased(leased) => {
                let item = leased.as_ref().map(|leased| ItemView {
                    data: &leased.hit.data,
                    flags: leased.hit.flags,
                    cas: leased.hit.cas,
                    exptime: leased.exptime,
                    accessed_s: leased.hit.updated_s,
                    fetched: false,
                    token_sent: leased.token_sent,
                    stale: leased.stale,
                    won: leased.won,
                });
                self.put_item(out, item, now_s)
            }
            Outcome::Stored { cas } => self.put_stored(out, *cas),
            Outcome::Number {
                value,
                cas,
                exptime,
            } => {
                let mut digits = [0u8; super::DECIMAL_BYTES_MAX];
                let number = super::decimal(&mut digits, *value);
                let item = ItemView {
                    data: number,
                    flags: 0,
                    cas: *cas,
                    exptime: *exptime,
                    accessed_s: now_s,
                    fetched: false,
                    token_sent: false,
                    stale: false,
                    won: false,
                };
                // `VA` with `v`, else `HD`: q leaves out either for ma.
                if !self.leaves_out(b"VA") {
                    self.put_item(out, Some(item), now_s);
                }
            }
            Outcome::NonNumeric => out.put_slice(super::reply::errors::NON_NUMERIC.as_bytes()),
            Outcome::Deleted => self.put_status(out, "HD"),
            Outcome::NotFound if self.verb == MetaVerb::Get => self.put_status(out, "EN"),
            Outcome::NotFound | Outcome::NotStored | Outcome::Exists
                if self.verb == MetaVerb::Set =>
            {
                let code = match outcome {
                    Outcome::NotFound => "NF",
                    Outcome::NotStored => "NS",
                    _ => "EX",
                };
                self.put_set_status(out, code, 0)
            }
            Outcome::NotFound => self.put_status(out, "NF"),
            Outcome::NotStored => self.put_status(out, "NS"),
            Outcome::Exists => self.put_status(out, "EX"),
            Outcome::Touched | Outcome::Ok | Outcome::Reclaimed(_) => self.put_status(out, "HD"),
        }
    }

    /// ms's `HD`, with `c` the stored item's unique.
    fn put_stored(&self, out: &mut BytesMut, cas: u64) {
        if !self.leaves_out(b"HD") {
            self.put_set_status(out, "HD", cas);
        }
    }

    /// An ms response: `k`, `O` and `c` (0 when nothing was stored, as
    /// memcached) in request order.
    fn put_set_status(&self, out: &mut BytesMut, code: &str, cas: u64) {
        out.put_slice(code.as_bytes());
        for returned in &self.returns {
            match returned {
                Returned::Key | Returned::Opaque(_) => self.put_returned(out, returned, None, 0),
                Returned::Cas => {
                    out.put_slice(b" c");
                    put_u64(out, cas);
                }
                _ => {}
            }
        }
        out.put_slice(b"\r\n");
    }
}

/// `me`'s line for an item: memcached's fields (`la` and `fetch` as this
/// server saw the item, best effort: [`ItemView::accessed_s`]).
pub fn put_debug(out: &mut BytesMut, key: &[u8], base64: bool, item: ItemView<'_>, now_s: u64) {
    out.put_slice(b"ME ");
    if base64 {
        out.put_slice(BASE64.encode(key).as_bytes());
    } else {
        out.put_slice(key);
    }
    out.put_slice(b" exp=");
    put_ttl(out, item.exptime, now_s);
    out.put_slice(b" la=");
    put_u64(out, now_s.saturating_sub(item.accessed_s));
    out.put_slice(b" cas=");
    put_u64(out, item.cas);
    out.put_slice(if item.fetched {
        b" fetch=yes cls=1 size=".as_slice()
    } else {
        b" fetch=no cls=1 size="
    });
    put_u64(out, (key.len() + item.data.len()) as u64);
    out.put_slice(b"\r\n");
}

/// Whole seconds an item expiring at `exptime` has left at `now_s`, or -1
/// for none (see [`Returned::Ttl`]).
fn put_ttl(out: &mut BytesMut, exptime: AbsTime, now_s: u64) {
    if exptime == NEVER {
        out.put_slice(b"-1");
    } else {
        put_u64(out, exptime.saturating_sub(now_s + 1));
    }
}

/// Why bytes are not a meta response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NotAResponse;

/// The length of the meta response at the front of `buf` once all of it
/// is there: one line, or a `VA <len> ...` line and its data block.
pub fn response_len(buf: &[u8]) -> Result<Option<usize>, NotAResponse> {
    let Some(newline) = memchr::memchr(b'\n', buf) else {
        return if buf.len() > crate::limits::LINE_BYTES_MAX {
            Err(NotAResponse)
        } else {
            Ok(None)
        };
    };
    let line = &buf[..newline + 1];
    let Some(rest) = line.strip_prefix(b"VA ") else {
        return Ok(Some(line.len()));
    };
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    let len: usize = std::str::from_utf8(&rest[..digits])
        .ok()
        .and_then(|n| n.parse().ok())
        .ok_or(NotAResponse)?;
    let total = line.len() + len + 2;
    Ok((buf.len() >= total).then_some(total))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::request::parse_request;

    fn parse(input: &[u8]) -> Result<Option<(Request, usize)>, ParseError> {
        parse_request(input, &Limits::default())
    }

    fn meta(input: &[u8]) -> MetaRequest {
        match parse(input) {
            Ok(Some((Request::Meta(request), used))) => {
                assert_eq!(used, input.len());
                *request
            }
            other => panic!("{other:?}"),
        }
    }

    fn error(input: &[u8]) -> &'static str {
        match parse(input) {
            Err(ParseError::Reply {
                reply: Some(reply), ..
            }) => reply,
            other => panic!("{other:?}"),
        }
    }

    fn item(data: &[u8]) -> ItemView<'_> {
        ItemView {
            data,
            flags: 5,
            cas: 9,
            exptime: NEVER,
            accessed_s: 100,
            fetched: false,
            token_sent: false,
            stale: false,
            won: false,
        }
    }

    #[test]
    fn get_returns_flags_in_request_order() {
        let request = meta(b"mg foo v f t s c k Oxyz q\r\n");
        let mut out = BytesMut::new();
        request.put_item(&mut out, Some(item(b"hi")), 100);
        assert_eq!(&out[..], b"VA 2 f5 t-1 s2 c9 kfoo Oxyz\r\nhi\r\n");
        out.clear();
        request.put_item(&mut out, None, 100);
        assert!(out.is_empty(), "q leaves out EN");
        let plain = meta(b"mg foo\r\n");
        plain.put_item(&mut out, Some(item(b"hi")), 100);
        assert_eq!(&out[..], b"HD\r\n");
    }

    #[test]
    fn base64_keys_decode_and_return_encoded() {
        let request = meta(b"mg Zm9v b v k\r\n");
        assert_eq!(&request.key[..], b"foo");
        let mut out = BytesMut::new();
        request.put_item(&mut out, None, 0);
        assert_eq!(&out[..], b"EN kZm9v b\r\n");
        assert_eq!(error(b"mg foo s v b\r\n"), KEY_NOT_DECODED);
    }

    #[test]
    fn errors_are_memcacheds() {
        assert_eq!(error(b"mg foo zz\r\n"), INVALID_FLAG);
        assert_eq!(error(b"mg foo v v\r\n"), DUPLICATE_FLAG);
        assert_eq!(error(b"md foo v v\r\n"), INVALID_OR_DUPLICATE_FLAG);
        assert_eq!(error(b"ms foo 2 MZ\r\nhi\r\n"), MS_BAD_MODE);
        assert_eq!(error(b"mg\r\n"), super::super::request::ERROR);
        let long = [b"mg foo O".as_slice(), &[b'x'; 40], b"\r\n"].concat();
        assert_eq!(error(&long), OPAQUE_TOO_LONG);
        // A data length that does not parse: the block is not skipped.
        assert_eq!(
            parse(b"ms foo bar\r\nhi\r\n"),
            Err(ParseError::Reply {
                reply: Some(BAD_FORMAT),
                consumed: 12,
                discard: 0
            })
        );
        assert_eq!(error(b"ms foo 1 Ezz\r\nx\r\n"), BAD_TOKEN);
    }

    #[test]
    fn invalidate_empty_and_a_client_unique() {
        let set = meta(b"ms foo 1 I C4 E77\r\nx\r\n");
        assert!(set.invalidate);
        assert_eq!((set.compare_cas, set.new_cas), (Some(4), Some(77)));
        let delete = meta(b"md foo x F3 T9 E5 q\r\n");
        assert!(delete.empty_value && !delete.invalidate);
        assert_eq!((delete.client_flags, delete.ttl), (3, Some(9)));
        let mut line = BytesMut::new();
        delete.encode_loud(&mut line);
        assert_eq!(&line[..], b"md foo x F3 T9 E5\r\n");
    }

    #[test]
    fn set_and_its_forwarded_line() {
        let request = meta(b"ms foo 2 T10 F5 q MA C3 c k O1\r\nhi\r\n");
        assert_eq!(request.set_mode, SetMode::Append);
        assert_eq!(
            (request.ttl, request.client_flags, request.compare_cas),
            (Some(10), 5, Some(3))
        );
        assert!(request.quiet);
        let mut line = BytesMut::new();
        request.encode_loud(&mut line);
        assert_eq!(&line[..], b"ms foo 2 T10 F5 MA C3 c k O1\r\nhi\r\n");
        let mut again = meta(&line);
        again.quiet = true;
        assert_eq!(again, request);
        line.clear();
        request.encode(&mut line);
        assert_eq!(meta(&line), request);
        let mut out = BytesMut::new();
        request.put_outcome(&mut out, &Outcome::Stored { cas: 7 }, NEVER, 0);
        assert!(out.is_empty(), "q leaves out HD");
        request.put_outcome(&mut out, &Outcome::Exists, NEVER, 0);
        assert_eq!(&out[..], b"EX c0 kfoo O1\r\n");
    }

    #[test]
    fn arith_returns_the_number() {
        let request = meta(b"ma cnt N0 J5 v t c\r\n");
        assert_eq!(
            (request.vivify, request.initial, request.delta),
            (Some(0), 5, 1)
        );
        let mut out = BytesMut::new();
        let number = Outcome::Number {
            value: 5,
            cas: 4,
            exptime: NEVER,
        };
        request.put_outcome(&mut out, &number, NEVER, 0);
        assert_eq!(&out[..], b"VA 1 t-1 c4\r\n5\r\n");
    }

    #[test]
    fn response_lengths() {
        assert_eq!(response_len(b"HD c1\r\n"), Ok(Some(7)));
        assert_eq!(response_len(b"VA 2 f1\r\nhi\r\nHD\r\n"), Ok(Some(13)));
        assert_eq!(response_len(b"VA 2 f1\r\nhi"), Ok(None));
        assert_eq!(response_len(b"VA x\r\n"), Err(NotAResponse));
    }
}
