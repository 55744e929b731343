//! The memcached protocols, as pure functions of bytes: the text protocol
//! both directions, its meta commands ([`meta`]), and the binary protocol
//! ([`binary`]).
//!
//! - [`request`]: the server's side: bytes to [`Request`] ([`parse_request`]).
//! - [`reply`]: the server's side: replies to bytes.
//! - [`client`]: the client's side: requests to bytes, bytes to responses.
//!
//! Wording and limits follow `memcached-protocol.md` §1.16: current upstream
//! memcached (1.6.45), with a strict `delete`.

pub mod auth;
pub mod binary;
pub mod client;
pub mod meta;
pub mod reply;
pub mod request;

pub use request::{parse_request, ParseError, Request, StatsGroup, Storage};

use bytes::{BufMut, BytesMut};

/// Longest decimal form of a u64 or i64.
pub(crate) const DECIMAL_BYTES_MAX: usize = 20;

/// Writes `n` in decimal without going through a `String`; both directions
/// of the protocol use it.
pub(crate) fn put_u64(buf: &mut BytesMut, n: u64) {
    let mut digits = [0u8; DECIMAL_BYTES_MAX];
    buf.put_slice(decimal(&mut digits, n));
}

/// `n` in decimal, written at the end of `digits`; the state machine uses it
/// for incr/decr results.
pub(crate) fn decimal(digits: &mut [u8; DECIMAL_BYTES_MAX], mut n: u64) -> &[u8] {
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    &digits[at..]
}
