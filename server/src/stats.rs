//! Counters reported by `stats`, with memcached's names so that memcached
//! dashboards and the Prometheus memcached exporter read them unchanged.
//!
//! One source of truth: every counter is an atomic here, bumped by the
//! connection and commit code, and the `stats` reply reads them. Relaxed
//! ordering suffices: each counter is independent and only ever summed.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// The version `version` reports: the memcached protocol level this server
/// follows (DESIGN §5a), as three numbers, since clients parse it
/// (async-memcached wants 1.6.40 or later, Dalli's and libmemcached's test
/// harnesses match `\d+\.\d+\.\d+`).
pub const VERSION: &str = "1.6.45";

/// This server's own version, in `stats` as `store_version` (as Valkey
/// reports a `redis_version` beside its own).
pub const STORE_VERSION: &str = env!("CARGO_PKG_VERSION");

macro_rules! counters {
    ($($name:ident),* $(,)?) => {
        /// Resettable counters (`stats reset` zeroes them).
        #[derive(Default, Debug)]
        pub struct Counters { $(pub $name: AtomicU64,)* }

        impl Counters {
            fn reset(&self) { $(self.$name.store(0, Relaxed);)* }
            fn report(&self, out: &mut Vec<(String, String)>) {
                $(out.push((stringify!($name).to_string(), self.$name.load(Relaxed).to_string()));)*
            }
        }
    };
}

counters!(
    cmd_get,
    cmd_set,
    cmd_flush,
    cmd_touch,
    get_hits,
    get_misses,
    get_expired,
    get_flushed,
    delete_misses,
    delete_hits,
    incr_misses,
    incr_hits,
    decr_misses,
    decr_hits,
    cas_misses,
    cas_hits,
    cas_badval,
    touch_hits,
    touch_misses,
    store_too_large,
    store_no_memory,
    bytes_read,
    bytes_written,
    total_items,
    total_connections,
    rejected_connections,
    auth_cmds,
    auth_errors,
    forwarder_refused,
    log_syncs,
    log_sync_us,
    log_records,
    log_bytes,
    snapshots,
);

/// Every counter and gauge of one server.
#[derive(Debug)]
pub struct Stats {
    pub counters: Counters,
    pub curr_connections: AtomicU64,
    started: Instant,
}

/// Figures `stats` reads from the state machine at the time of the request.
#[derive(Debug, Default, Clone, Copy)]
pub struct StateFigures {
    pub curr_items: u64,
    pub bytes: u64,
    pub applied_index: u64,
    /// Items freed after they expired or were flushed (DESIGN §2).
    pub reclaimed: u64,
    /// What the items count against the memory limit.
    pub memory_bytes: u64,
}

/// The settings `stats` reports in its general group.
#[derive(Debug, Clone, Copy)]
pub struct GeneralSettings {
    pub connections_max: usize,
    pub threads: usize,
    /// The memory limit now (`cache_memlimit` changes it).
    pub limit_bytes: u64,
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            counters: Counters::default(),
            curr_connections: AtomicU64::new(0),
            started: Instant::now(),
        }
    }
}

impl Stats {
    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Relaxed);
    }

    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Relaxed);
    }

    /// Counts one log fsync that made `records` records of `bytes` durable
    /// and took since `started`.
    pub fn log_synced(&self, started: Instant, records: u64, bytes: u64) {
        let c = &self.counters;
        Stats::add(&c.log_sync_us, started.elapsed().as_micros() as u64);
        Stats::bump(&c.log_syncs);
        Stats::add(&c.log_records, records);
        Stats::add(&c.log_bytes, bytes);
    }

    /// `stats reset`: zeroes the counters, not the gauges.
    pub fn reset(&self) {
        self.counters.reset();
    }

    /// `stats`: memcached's general group.
    pub fn general(&self, settings: GeneralSettings, state: StateFigures) -> Vec<(String, String)> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let mut out: Vec<(String, String)> = vec![
            ("pid".into(), std::process::id().to_string()),
            (
                "uptime".into(),
                self.started.elapsed().as_secs().to_string(),
            ),
            ("time".into(), now.to_string()),
            ("version".into(), VERSION.into()),
            ("store_version".into(), STORE_VERSION.into()),
            ("libevent".into(), "tokio".into()),
            ("pointer_size".into(), (usize::BITS).to_string()),
            (
                "max_connections".into(),
                settings.connections_max.to_string(),
            ),
            (
                "curr_connections".into(),
                self.curr_connections.load(Relaxed).to_string(),
            ),
            (
                "connection_structures".into(),
                self.curr_connections.load(Relaxed).to_string(),
            ),
        ];
        self.counters.report(&mut out);
        out.extend([
            ("threads".into(), settings.threads.to_string()),
            ("accepting_conns".into(), "1".into()),
            ("conn_yields".into(), "0".into()),
            ("evictions".into(), "0".into()),
            ("reclaimed".into(), state.reclaimed.to_string()),
            ("limit_maxbytes".into(), settings.limit_bytes.to_string()),
            ("curr_items".into(), state.curr_items.to_string()),
            ("bytes".into(), state.bytes.to_string()),
            ("item_memory_bytes".into(), state.memory_bytes.to_string()),
            ("applied_index".into(), state.applied_index.to_string()),
        ]);
        out
    }
}
