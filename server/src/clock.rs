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
/// timer at once. It is `CLOCK_BOOTTIME`, which also counts the time the
/// host spends suspended: `CLOCK_MONOTONIC` (std's `Instant`) stops then,
/// and a leader that woke from a suspend would take a lease long expired
/// in real time for a running one.
pub fn mono_ms() -> u64 {
    static EPOCH: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    let now = boot_ms();
    now.saturating_sub(*EPOCH.get_or_init(|| now))
}

/// `CLOCK_BOOTTIME` in milliseconds.
fn boot_ms() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Boottime);
    (t.tv_sec as u64) * 1000 + (t.tv_nsec as u64) / 1_000_000
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reading of `mono_ms` bracketed by two of `Instant`.
    fn bracketed() -> (std::time::Instant, u64, std::time::Instant) {
        let before = std::time::Instant::now();
        let ms = mono_ms();
        (before, ms, std::time::Instant::now())
    }

    #[test]
    fn the_replication_clock_keeps_pace_with_instant_and_never_goes_back() {
        let (b1, first, a1) = bracketed();
        let mut last = first;
        while b1.elapsed() < std::time::Duration::from_millis(50) {
            let now = mono_ms();
            assert!(now >= last, "went back from {last} to {now}");
            last = now;
        }
        let (b2, end, a2) = bracketed();
        // While the host is awake both clocks run at the same rate: what
        // mono_ms saw pass lies between what Instant saw at the least and
        // at the most (whole milliseconds, hence the 1 ms either way).
        let passed = end - first;
        let least = b2.duration_since(a1).as_millis() as u64;
        let most = a2.duration_since(b1).as_millis() as u64;
        assert!(
            passed + 1 >= least && passed <= most + 1,
            "{passed} ms against {least}..={most} ms"
        );
    }
}
