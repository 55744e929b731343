//! Multi-key retrievals: cut into pieces of a bounded size, served from
//! the local state, or forwarded a piece at a time.

use super::*;
use crate::access::Accessed;

/// Values one piece of a multi-get or gat may hold, at most, in bytes: a
/// get of more keys than this allows at the item size limit (`-I`) is
/// served a piece at a time, each piece's values written to the client
/// before the next piece is read, so a connection never holds more than
/// about this much of them (plus [`OUTPUT_BYTES_FLUSH`]). 64 keys at the
/// default 1 MiB: most multi-gets are one piece.
pub(super) const GET_PIECE_BYTES_MAX: usize = 64 * 1024 * 1024;

/// One piece of a multi-key retrieval (see [`GET_PIECE_BYTES_MAX`]).
pub(super) struct Piece<'k> {
    pub(super) keys: &'k [Bytes],
    /// The request for just these keys: the client's own when there is
    /// one piece (a follower forwards it).
    pub(super) raw: Bytes,
    pub(super) last: bool,
}

/// Cuts `keys` into pieces of `per_piece`; `line` writes the request for
/// one piece's keys.
pub(super) fn pieces<'k>(
    keys: &'k [Bytes],
    per_piece: usize,
    raw: &Bytes,
    line: impl Fn(&mut BytesMut, &[Bytes]) -> Result<(), EncodeError>,
) -> Vec<Piece<'k>> {
    let count = keys.len().div_ceil(per_piece);
    let mut pieces = Vec::with_capacity(count);
    for (i, keys) in keys.chunks(per_piece).enumerate() {
        let raw = if count == 1 {
            raw.clone()
        } else {
            let mut buf = BytesMut::new();
            // The keys were parsed from a request, so they encode; were one
            // not to, the reply would end before it.
            if line(&mut buf, keys).is_err() {
                break;
            }
            buf.freeze()
        };
        pieces.push(Piece {
            keys,
            raw,
            last: i + 1 == count,
        });
    }
    pieces
}

/// Removes the `END` line that closes a forwarded retrieval reply, so that
/// the next piece's values follow; false if the reply did not end with one
/// (an error line ended it).
pub(super) fn strip_end(output: &mut BytesMut) -> bool {
    const END: &[u8] = b"END\r\n";
    if output.ends_with(END) {
        output.truncate(output.len() - END.len());
        true
    } else {
        false
    }
}

impl Connection {
    /// Keys of a multi-get or gat served as one piece (see
    /// [`GET_PIECE_BYTES_MAX`]).
    pub(super) fn keys_per_piece(&self) -> usize {
        (GET_PIECE_BYTES_MAX / self.shared.limits.item_bytes_max.max(1)).max(1)
    }

    /// Appends the VALUE blocks of the visible items among `keys`, counting
    /// hits and misses; the caller checked that the state may be read.
    pub(super) fn serve_get(&mut self, keys: &[Bytes], with_cas: bool) {
        self.look_up(keys, Reading::Read, |out, key, item, _| {
            if let Some(item) = item {
                let cas = with_cas.then_some(item.cas());
                encode_value(out, key, item.flags(), item.data(), cas);
            }
        });
    }

    /// Looks up each of `keys` in the local state, counting hits and
    /// misses, and lets `emit` write its reply (`None`: a miss); the caller
    /// checked that the state may be read.
    pub(super) fn look_up(
        &mut self,
        keys: &[Bytes],
        reading: Reading,
        mut emit: impl FnMut(&mut BytesMut, &Bytes, Option<ItemRef<'_>>, Accessed),
    ) {
        let shared = self.shared.clone();
        let counters = &shared.stats.counters;
        let now_s = clock::now_s();
        // A forwarded get is counted by the follower, from the reply; why a
        // key missed only this server can tell (get_expired, get_flushed).
        let counted = self.counts_here(false);
        let bump = |counter: &std::sync::atomic::AtomicU64| {
            if counted {
                Stats::bump(counter);
            }
        };
        let state = state::read(&shared.state);
        for key in keys {
            bump(&counters.cmd_get);
            let lookup = state.lookup(key, now_s);
            match lookup {
                Lookup::Hit(item) => {
                    bump(&counters.get_hits);
                    let access = match reading {
                        Reading::Read => shared.access.read(key, item.cas(), now_s),
                        Reading::Peek => shared.access.peek(key, item.cas()),
                    };
                    emit(&mut self.output, key, Some(item), access);
                    continue;
                }
                Lookup::Miss => bump(&counters.get_misses),
                Lookup::Expired => {
                    bump(&counters.get_misses);
                    Stats::bump(&counters.get_expired);
                }
                Lookup::Flushed => {
                    bump(&counters.get_misses);
                    Stats::bump(&counters.get_flushed);
                }
            }
            emit(&mut self.output, key, None, Accessed::NONE);
        }
    }
}

/// Whether a look-up counts as a read of the items it finds, for meta's
/// `h` and `l` ([`crate::access`]): `me` and `mg ... u` only look.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Reading {
    Read,
    Peek,
}
