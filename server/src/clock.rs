//! The server's wall clock, read only at the edges: when a command is
//! accepted (its time goes into the log entry) and when a read looks an item
//! up. The state machine never calls it.

use std::time::{SystemTime, UNIX_EPOCH};

/// Unix time in seconds. A clock before 1970 reads as 0.
pub fn now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
