//! The server's clocks. The wall clock is read only at the edges: when a
//! command is accepted (its time goes into the log entry) and when a read
//! looks an item up; the state machine never calls it. Replication runs on
//! the monotonic clock ([`mono_ms`]).

use std::time::{SystemTime, UNIX_EPOCH};

/// Unix time in seconds. A clock before 1970 reads as 0.
pub fn now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Milliseconds of a monotonic clock since this process first asked.
/// Replication's timers and read leases run on it: a wall clock set back
/// or forward (NTP, an operator) must not stretch a lease or fire every
/// timer at once.
pub fn mono_ms() -> u64 {
    static EPOCH: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    EPOCH
        .get_or_init(std::time::Instant::now)
        .elapsed()
        .as_millis() as u64
}
