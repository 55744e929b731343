//! The memory limit (`-m`, `cache_memlimit`): what the items may count
//! (`State::memory_bytes`) before the leader refuses writes that would add
//! to it with `SERVER_ERROR out of memory storing object`.
//!
//! The check is made where a write is proposed, never where it is applied:
//! apply on any replica must not fail, or replicas would differ. Writes
//! already proposed but not yet applied are counted too, through a
//! [`Reservation`] each holds until its outcome arrives; so many
//! connections writing at once cannot together overshoot the limit.
//! Nothing here allocates or reads the clock; the caller passes the state's
//! figures in.
//!
//! In a group the limit is the group's: every replica applies every write,
//! so the leader refuses writes over the smallest limit any member declared
//! (its own `-m` and the followers', which each Ack carries). A follower
//! with a smaller `-m` than its leader is therefore never asked to hold
//! more than its own limit by writes made after it answered.
//!
//! It also owns the bound on writes in flight ([`WriteBudget`]): the bytes of
//! the commands proposed and not yet answered, whatever they add to the
//! items (an overwrite adds nothing but is a log entry all the same). A
//! connection that would exceed it waits, which pushes back on its client
//! through TCP instead of growing the leader's backlog.

use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::{AcqRel, Acquire, Relaxed};
use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// 0: no limit.
pub const MEMORY_UNLIMITED: u64 = 0;

/// The smallest limit `cache_memlimit` takes and `store up` gives a server,
/// in megabytes, as memcached's smallest.
pub const MEMORY_LIMIT_MB_MIN: u64 = 8;

/// A `cache_memlimit` over this many megabytes was meant as bytes: refused,
/// as by memcached.
pub const MEMORY_LIMIT_MB_MAX: u64 = 1_000_000_000;

/// The limit and the bytes reserved by writes in flight.
#[derive(Debug)]
pub struct MemoryLimit {
    /// This server's own (`-m`, `cache_memlimit`).
    limit_bytes: AtomicU64,
    /// Leader: the smallest limit the group's other members declared
    /// ([`MEMORY_UNLIMITED`] for none, and on a follower).
    group_limit_bytes: AtomicU64,
    in_flight_bytes: Arc<AtomicU64>,
}

/// The write would take the items over the limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutOfMemory;

/// Bytes counted for one write until it is applied (or abandoned): held by
/// the write path with the proposal, dropped as its outcome is sent.
#[derive(Debug)]
pub struct Reservation {
    bytes: u64,
    in_flight_bytes: Option<Arc<AtomicU64>>,
}

impl Reservation {
    /// A write that adds nothing: no bytes reserved.
    pub fn none() -> Reservation {
        Reservation {
            bytes: 0,
            in_flight_bytes: None,
        }
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if let Some(in_flight) = self.in_flight_bytes.take() {
            let before = in_flight.fetch_sub(self.bytes, AcqRel);
            debug_assert!(before >= self.bytes, "reservations balance");
        }
    }
}

impl MemoryLimit {
    pub fn new(limit_bytes: u64) -> MemoryLimit {
        MemoryLimit {
            limit_bytes: AtomicU64::new(limit_bytes),
            group_limit_bytes: AtomicU64::new(MEMORY_UNLIMITED),
            in_flight_bytes: Arc::new(AtomicU64::new(0)),
        }
    }

    /// The limit in bytes, [`MEMORY_UNLIMITED`] for none.
    pub fn limit_bytes(&self) -> u64 {
        self.limit_bytes.load(Relaxed)
    }

    /// `cache_memlimit`: a new limit from now on. Items held over it stay;
    /// writes that add to them are refused until enough are deleted.
    pub fn set_limit_bytes(&self, limit_bytes: u64) {
        self.limit_bytes.store(limit_bytes, Relaxed);
    }

    /// Leader: the smallest limit the other members declared (written by
    /// the replication driver).
    pub fn set_group_limit_bytes(&self, limit_bytes: u64) {
        self.group_limit_bytes.store(limit_bytes, Relaxed);
    }

    /// The limit writes are checked against: the smaller of this server's
    /// own and the group's, [`MEMORY_UNLIMITED`] when neither is set.
    pub fn effective_limit_bytes(&self) -> u64 {
        smaller_limit(self.limit_bytes(), self.group_limit_bytes.load(Relaxed))
    }

    /// Whether writes are checked against any limit now (this server's or
    /// the group's): while not, the caller need not work out what a write
    /// adds.
    pub fn is_limited(&self) -> bool {
        self.effective_limit_bytes() != MEMORY_UNLIMITED
    }

    /// Reserves `growth_bytes` for a write about to be proposed, if the
    /// items (`held_bytes`), the writes in flight and it stay within the
    /// limit. A write that adds nothing always passes.
    pub fn reserve(&self, held_bytes: u64, growth_bytes: u64) -> Result<Reservation, OutOfMemory> {
        let limit = self.effective_limit_bytes();
        if growth_bytes == 0 || limit == MEMORY_UNLIMITED {
            return Ok(Reservation::none());
        }
        let mut in_flight = self.in_flight_bytes.load(Acquire);
        loop {
            let total = held_bytes
                .saturating_add(in_flight)
                .saturating_add(growth_bytes);
            if total > limit {
                return Err(OutOfMemory);
            }
            match self.in_flight_bytes.compare_exchange_weak(
                in_flight,
                in_flight + growth_bytes,
                AcqRel,
                Acquire,
            ) {
                Ok(_) => {
                    return Ok(Reservation {
                        bytes: growth_bytes,
                        in_flight_bytes: Some(self.in_flight_bytes.clone()),
                    })
                }
                Err(now) => in_flight = now,
            }
        }
    }
}

/// The tighter of two limits, either of which may be [`MEMORY_UNLIMITED`].
fn smaller_limit(a: u64, b: u64) -> u64 {
    match (a, b) {
        (MEMORY_UNLIMITED, other) | (other, MEMORY_UNLIMITED) => other,
        (a, b) => a.min(b),
    }
}

/// Bytes of commands proposed and not yet answered, on one server at most
/// (the leader's backlog of uncommitted entries comes from them).
pub const WRITES_IN_FLIGHT_BYTES_MAX: usize = 256 * 1024 * 1024;

/// The budget counts in units of this many bytes (a semaphore's permits).
const BUDGET_UNIT_BYTES: usize = 1024;

/// Commands in flight on one server at most: each takes at least one unit
/// of the budget, so this also bounds the leader's uncommitted entries.
pub const WRITES_IN_FLIGHT_MAX: usize = WRITES_IN_FLIGHT_BYTES_MAX / BUDGET_UNIT_BYTES;

/// The bound on writes in flight: [`WRITES_IN_FLIGHT_BYTES_MAX`].
#[derive(Debug)]
pub struct WriteBudget {
    permits: Arc<Semaphore>,
    units_max: usize,
}

impl Default for WriteBudget {
    fn default() -> Self {
        WriteBudget::new(WRITES_IN_FLIGHT_BYTES_MAX)
    }
}

impl WriteBudget {
    pub fn new(bytes_max: usize) -> WriteBudget {
        let units_max = (bytes_max / BUDGET_UNIT_BYTES).max(1);
        WriteBudget {
            permits: Arc::new(Semaphore::new(units_max)),
            units_max,
        }
    }

    /// Units for a command of `bytes`; one larger than the whole budget
    /// takes all of it (it waits until nothing else is in flight).
    fn units(&self, bytes: usize) -> u32 {
        let units = bytes.div_ceil(BUDGET_UNIT_BYTES).clamp(1, self.units_max);
        u32::try_from(units).unwrap_or(u32::MAX)
    }

    /// Room for a command of `bytes` now, if there is any.
    pub fn try_take(&self, bytes: usize) -> Option<OwnedSemaphorePermit> {
        self.permits
            .clone()
            .try_acquire_many_owned(self.units(bytes))
            .ok()
    }

    /// Room for a command of `bytes`, once writes in flight have made it.
    /// The caller must hold no room of its own while it waits, or it could
    /// wait for itself.
    pub async fn take(&self, bytes: usize) -> OwnedSemaphorePermit {
        self.permits
            .clone()
            .acquire_many_owned(self.units(bytes))
            .await
            // The semaphore is never closed.
            .expect("the write budget is never closed")
    }
}

/// Half of the machine's physical memory (`MemTotal` in /proc/meminfo), the
/// default limit: enough that a store never refuses writes early, small
/// enough that it refuses them before the kernel kills it. `None` where
/// /proc/meminfo cannot be read.
pub fn default_limit_bytes() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kib: u64 = meminfo
        .lines()
        .find_map(|line| line.strip_prefix("MemTotal:"))?
        .trim()
        .strip_suffix("kB")?
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024 / 2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_in_flight_count_until_their_reservation_drops() {
        let limit = MemoryLimit::new(100);
        let first = limit.reserve(50, 30).expect("80 of 100");
        assert_eq!(limit.reserve(50, 30).err(), Some(OutOfMemory));
        // Adding nothing passes even at the limit.
        let none = limit.reserve(100, 0).expect("nothing added");
        drop(none);
        drop(first);
        let again = limit.reserve(50, 50).expect("the first was applied");
        drop(again);
        assert_eq!(limit.reserve(60, 50).err(), Some(OutOfMemory));
    }

    #[test]
    fn zero_means_no_limit_and_the_limit_can_change() {
        let limit = MemoryLimit::new(MEMORY_UNLIMITED);
        let _big = limit.reserve(u64::MAX / 2, u64::MAX / 2).expect("no limit");
        limit.set_limit_bytes(10);
        assert_eq!(limit.reserve(0, 11).err(), Some(OutOfMemory));
        assert!(limit.reserve(0, 10).is_ok());
    }

    #[test]
    fn the_group_limit_binds_when_it_is_the_smaller() {
        let limit = MemoryLimit::new(100);
        limit.set_group_limit_bytes(50);
        assert_eq!(limit.effective_limit_bytes(), 50);
        assert_eq!(limit.limit_bytes(), 100, "stats report the own limit");
        assert_eq!(limit.reserve(40, 11).err(), Some(OutOfMemory));
        limit.set_group_limit_bytes(MEMORY_UNLIMITED);
        assert!(limit.reserve(40, 11).is_ok());
        // A leader without a limit of its own takes the group's.
        let unlimited = MemoryLimit::new(MEMORY_UNLIMITED);
        assert!(!unlimited.is_limited());
        unlimited.set_group_limit_bytes(10);
        assert!(unlimited.is_limited());
        assert_eq!(unlimited.reserve(0, 11).err(), Some(OutOfMemory));
        unlimited.set_group_limit_bytes(1000);
        assert_eq!(unlimited.effective_limit_bytes(), 1000);
    }

    #[test]
    fn the_write_budget_counts_bytes_until_the_permit_drops() {
        let budget = WriteBudget::new(4 * BUDGET_UNIT_BYTES);
        let first = budget.try_take(3 * BUDGET_UNIT_BYTES).expect("3 of 4");
        assert!(budget.try_take(2 * BUDGET_UNIT_BYTES).is_none());
        let small = budget.try_take(1).expect("one unit left");
        drop(first);
        drop(small);
        // Larger than the whole budget: takes all of it.
        let all = budget.try_take(100 * BUDGET_UNIT_BYTES).expect("all");
        assert!(budget.try_take(1).is_none());
        drop(all);
    }

    #[test]
    fn the_default_is_half_of_physical_memory() {
        let half = default_limit_bytes().expect("Linux has /proc/meminfo");
        assert!(half > 0);
    }
}
