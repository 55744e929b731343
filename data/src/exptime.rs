//! memcached's expiry-time rules, as a pure function of the raw value and the
//! current time the caller passes in.
//!
//! The server resolves a client's exptime to an absolute Unix time when it
//! accepts a command, so that every replica applying the log entry computes
//! the same expiry.
//!
//! A relative time of N seconds means *at least* N seconds: the item lives
//! until the wall clock reaches the second after `now + N`, so between N and
//! N + 1 seconds. memcached's clock ticks once a second and its spec warns
//! that "a TTL of 1 will sometimes immediately expire": its lifetime is
//! (N - 1, N]. That window is the time between two commands, microseconds on
//! memcached, but a command that reaches a leader through a follower and
//! waits for a majority's fsync takes milliseconds, and `set k 0 1` followed
//! by `touch k` would answer `NOT_FOUND` often enough to notice. No client
//! can rely on the early end, which memcached itself does not promise.

use crate::limits::EXPTIME_RELATIVE_MAX_S;

/// Absolute expiry in Unix seconds; `NEVER` means the item does not expire.
pub type AbsTime = u64;

/// The item never expires.
pub const NEVER: AbsTime = 0;

/// An expiry already in the past for any clock: memcached maps negative
/// exptimes to a time in 1970.
pub const EXPIRED: AbsTime = 1;

/// Resolves a client exptime against `now_s` (Unix seconds):
/// `0` never expires, `1..=30 days` is relative (at least that many seconds
/// from now, see the module note), larger is absolute, and a negative value
/// is expired at once.
pub fn resolve(raw: i64, now_s: u64) -> AbsTime {
    if raw == 0 {
        NEVER
    } else if raw < 0 {
        EXPIRED
    } else if raw <= EXPTIME_RELATIVE_MAX_S {
        // The `+ 1` covers the part of the current second already gone.
        now_s.saturating_add(raw as u64 + 1)
    } else {
        raw as u64
    }
}

/// True when an item with expiry `exptime` is no longer visible at `now_s`.
pub fn is_expired(exptime: AbsTime, now_s: u64) -> bool {
    exptime != NEVER && exptime <= now_s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_never_expires() {
        assert_eq!(resolve(0, 1_000_000_000), NEVER);
        assert!(!is_expired(NEVER, u64::MAX));
    }

    #[test]
    fn relative_up_to_thirty_days() {
        let now = 1_700_000_000;
        assert_eq!(resolve(1, now), now + 2);
        assert_eq!(resolve(EXPTIME_RELATIVE_MAX_S, now), now + 2_592_001);
    }

    #[test]
    fn a_relative_time_lasts_at_least_its_seconds() {
        // Accepted late in second `now`, read early in second `now + n`:
        // fewer than n seconds have passed, so the item is still there.
        let now = 1_700_000_000;
        for n in [1, 2, 60] {
            let exptime = resolve(n, now);
            assert!(!is_expired(exptime, now + n as u64), "ttl {n}");
            assert!(is_expired(exptime, now + n as u64 + 1), "ttl {n}");
        }
    }

    #[test]
    fn above_thirty_days_is_absolute() {
        let now = 1_700_000_000;
        assert_eq!(resolve(EXPTIME_RELATIVE_MAX_S + 1, now), 2_592_001);
        assert!(is_expired(resolve(EXPTIME_RELATIVE_MAX_S + 1, now), now));
    }

    #[test]
    fn negative_is_expired_at_once() {
        assert!(is_expired(resolve(-1, 5), 5));
    }
}
