//! The load generator behind `client bench`: many connections to one
//! memcached-protocol server, each keeping `pipeline` requests in flight,
//! with latency in an HDR histogram. With [`Protocol::Peer`] the same loop
//! drives Redis (SET + WAIT) or etcd (v3 gateway put) through
//! [`crate::bench_peers`], so durable writes can be compared.
//!
//! It owns the workload (which key, get or set), the timing window (warmup,
//! duration or op count) and the report. It talks only to the one address in
//! [`BenchConfig::server`] and always ends: by duration, by op count, or when
//! no reply has arrived for [`STALL_TIMEOUT_MS`]. The per-op path allocates
//! nothing: requests are encoded into each [`Connection`]'s reused buffer and
//! replies are checked with `scan_response`, never copied. The `client bench`
//! subcommand calls [`run`] inside a runtime it builds; the only output here
//! is the optional once-a-second progress line on stderr.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use data::command::StoreMode;
use data::limits::{ITEM_BYTES_DEFAULT, KEY_BYTES_MAX};
use data::protocol::client::{encode_get, encode_store, Expect, Status};
use hdrhistogram::Histogram;
use thiserror::Error;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::bench_peers::{PeerConnection, PeerProtocol};
use crate::connection::Connection;
use crate::error::Error;

/// More connections than this is a misconfiguration, not a benchmark.
pub const CONNECTIONS_MAX: usize = 10_000;
/// Deepest pipeline per connection.
pub const PIPELINE_DEPTH_MAX: usize = 4_096;
/// Largest value: memcached's default item limit, as the server under test
/// would reject more.
pub const VALUE_BYTES_MAX: usize = ITEM_BYTES_DEFAULT;
/// Longest run.
pub const DURATION_MAX_S: u64 = 24 * 60 * 60;
/// Latencies above this are recorded as this (the histogram's top).
pub const LATENCY_MAX_NS: u64 = 60_000_000_000;
/// A run with no reply at all for this long is stopped and reported.
pub const STALL_TIMEOUT_MS: u64 = 10_000;
/// After the run ends, connections get this long to collect replies in
/// flight before they are cut.
pub const DRAIN_TIMEOUT_MS: u64 = 2_000;
/// Connect timeout per connection.
pub const CONNECT_TIMEOUT_MS: u64 = 5_000;
/// Default pipeline depth of `--preload`.
pub const PRELOAD_DEPTH_DEFAULT: usize = 64;
/// Period of the progress line.
pub const PROGRESS_INTERVAL_MS: u64 = 1_000;

/// The wire protocol the connections speak.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// memcached's text protocol (store, memcached): gets and sets.
    Memcache,
    /// Another system's durable write; sets only.
    Peer(PeerProtocol),
}

impl Protocol {
    /// The name `client bench --protocol` takes and the JSON report shows.
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Memcache => "memcache",
            Protocol::Peer(PeerProtocol::RedisSetWait { .. }) => "redis-set-wait",
            Protocol::Peer(PeerProtocol::EtcdPut) => "etcd-put",
        }
    }
}

/// What to run.
#[derive(Clone, Debug)]
pub struct BenchConfig {
    pub server: SocketAddr,
    pub protocol: Protocol,
    pub connections: usize,
    /// Requests in flight per connection.
    pub pipeline: usize,
    /// Key space: keys are drawn uniformly from `0..keys`.
    pub keys: u64,
    /// Bytes per key: `k` then the zero-padded key number.
    pub key_size: usize,
    pub value_size: usize,
    /// Fraction of requests that are `get` (the rest are `set`).
    pub get_ratio: f64,
    /// Measured run time (after warmup); `None` with `ops` set runs until
    /// the op count is reached.
    pub duration: Option<Duration>,
    /// Measured ops to send, split evenly over connections.
    pub ops: Option<u64>,
    pub warmup: Duration,
    /// `set` every key once before the run.
    pub preload: bool,
    /// Sets in flight per connection during the preload.
    pub preload_depth: usize,
    /// Print a progress line once a second on stderr.
    pub progress: bool,
    /// Seeds the key and op choices; each connection derives its own.
    pub seed: u64,
}

/// Why a run could not produce a report.
#[derive(Debug, Error)]
pub enum BenchError {
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("could not connect to {addr}: {source}")]
    Connect { addr: SocketAddr, source: Error },
    #[error("preload failed: {0}")]
    Preload(String),
    #[error("every connection failed; first error: {0}")]
    AllFailed(String),
}

/// The outcome of a run. Counts and latencies cover only the measured
/// window: ops sent after warmup and answered before the end.
#[derive(Clone, Debug)]
pub struct BenchReport {
    pub config: BenchConfig,
    /// Length of the measured window.
    pub elapsed: Duration,
    pub preload_elapsed: Option<Duration>,
    pub ops: u64,
    pub gets: u64,
    pub sets: u64,
    /// Gets that returned a value.
    pub hits: u64,
    pub misses: u64,
    /// Replies that were error lines or not what the request gets.
    pub errors: u64,
    /// Connections lost during the run.
    pub connection_errors: u64,
    /// True if the run was cut short because no reply arrived.
    pub stalled: bool,
    /// The first error seen, of either kind.
    pub first_error: Option<String>,
    /// Latency per op, nanoseconds.
    pub latency_ns: Histogram<u64>,
}

impl BenchReport {
    pub fn ops_per_s(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 {
            self.ops as f64 / secs
        } else {
            0.0
        }
    }

    /// The latency at `quantile` (0..=1), microseconds.
    pub fn latency_us(&self, quantile: f64) -> f64 {
        self.latency_ns.value_at_quantile(quantile) as f64 / 1_000.0
    }

    /// The report as one JSON object (hand-written: flat numbers only).
    pub fn to_json(&self) -> String {
        let c = &self.config;
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = write!(
            out,
            "{{\"server\":\"{}\",\"protocol\":\"{}\",\"connections\":{},\"pipeline\":{},\"keys\":{},\"key_size\":{},\
             \"value_size\":{},\"get_ratio\":{},\"elapsed_s\":{:.3},\"ops\":{},\"ops_per_s\":{:.1},\
             \"gets\":{},\"sets\":{},\"hits\":{},\"misses\":{},\"errors\":{},\"connection_errors\":{},\
             \"stalled\":{},\"latency_us\":{{\"p50\":{:.1},\"p99\":{:.1},\"p999\":{:.1},\"max\":{:.1},\
             \"mean\":{:.1}}}",
            c.server,
            c.protocol.name(),
            c.connections,
            c.pipeline,
            c.keys,
            c.key_size,
            c.value_size,
            c.get_ratio,
            self.elapsed.as_secs_f64(),
            self.ops,
            self.ops_per_s(),
            self.gets,
            self.sets,
            self.hits,
            self.misses,
            self.errors,
            self.connection_errors,
            self.stalled,
            self.latency_us(0.50),
            self.latency_us(0.99),
            self.latency_us(0.999),
            self.latency_ns.max() as f64 / 1_000.0,
            self.latency_ns.mean() / 1_000.0,
        );
        if let Some(preload) = self.preload_elapsed {
            let _ = write!(out, ",\"preload_s\":{:.3}", preload.as_secs_f64());
        }
        if let Some(e) = &self.first_error {
            let _ = write!(out, ",\"first_error\":\"{}\"", json_escape(e));
        }
        out.push('}');
        out
    }

    /// The report for a human.
    pub fn to_text(&self) -> String {
        let c = &self.config;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "server {} ({})  connections {}  pipeline {}  keys {}  key {} B  value {} B  get ratio {:.2}",
            c.server,
            c.protocol.name(),
            c.connections, c.pipeline, c.keys, c.key_size, c.value_size, c.get_ratio
        );
        if let Some(preload) = self.preload_elapsed {
            let _ = writeln!(
                out,
                "preload: {} keys in {:.2} s",
                c.keys,
                preload.as_secs_f64()
            );
        }
        let _ = writeln!(
            out,
            "{} ops in {:.2} s: {:.0} ops/s  (gets {}, hits {}, misses {}; sets {})",
            self.ops,
            self.elapsed.as_secs_f64(),
            self.ops_per_s(),
            self.gets,
            self.hits,
            self.misses,
            self.sets
        );
        let _ = writeln!(
            out,
            "latency us: p50 {:.1}  p99 {:.1}  p99.9 {:.1}  max {:.1}  mean {:.1}",
            self.latency_us(0.50),
            self.latency_us(0.99),
            self.latency_us(0.999),
            self.latency_ns.max() as f64 / 1_000.0,
            self.latency_ns.mean() / 1_000.0
        );
        let _ = write!(
            out,
            "errors {}  connection errors {}{}",
            self.errors,
            self.connection_errors,
            if self.stalled {
                "  (stalled: stopped)"
            } else {
                ""
            }
        );
        if let Some(e) = &self.first_error {
            let _ = write!(out, "\nfirst error: {e}");
        }
        out
    }
}

fn json_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for ch in s.chars() {
        match ch {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out
}

/// Decimal digits of the largest key number: the part of each key that
/// changes.
fn key_digits(keys: u64) -> usize {
    let mut n = keys.saturating_sub(1);
    let mut digits = 1;
    while n >= 10 {
        n /= 10;
        digits += 1;
    }
    digits
}

impl BenchConfig {
    fn validate(&self) -> Result<(), BenchError> {
        let bad = |msg: String| Err(BenchError::Config(msg));
        if self.connections == 0 || self.connections > CONNECTIONS_MAX {
            return bad(format!("connections must be 1..={CONNECTIONS_MAX}"));
        }
        if self.pipeline == 0 || self.pipeline > PIPELINE_DEPTH_MAX {
            return bad(format!("pipeline must be 1..={PIPELINE_DEPTH_MAX}"));
        }
        if self.preload_depth == 0 || self.preload_depth > PIPELINE_DEPTH_MAX {
            return bad(format!("preload depth must be 1..={PIPELINE_DEPTH_MAX}"));
        }
        if self.keys == 0 {
            return bad("keys must be at least 1".into());
        }
        let min_key = 1 + key_digits(self.keys);
        if self.key_size < min_key || self.key_size > KEY_BYTES_MAX {
            return bad(format!(
                "key size must be {min_key}..={KEY_BYTES_MAX} for {} keys",
                self.keys
            ));
        }
        if self.value_size > VALUE_BYTES_MAX {
            return bad(format!("value size must be at most {VALUE_BYTES_MAX}"));
        }
        if !(0.0..=1.0).contains(&self.get_ratio) {
            return bad("get ratio must be in 0.0..=1.0".into());
        }
        let max = Duration::from_secs(DURATION_MAX_S);
        if self.duration.is_some_and(|d| d > max) || self.warmup > max {
            return bad(format!(
                "duration and warmup must be at most {DURATION_MAX_S} s"
            ));
        }
        if self.duration.is_none() && self.ops.is_none() {
            return bad("give a duration or an op count".into());
        }
        if matches!(self.protocol, Protocol::Peer(_)) && self.get_ratio != 0.0 {
            return bad(format!(
                "protocol {} sends sets only: use get ratio 0 (--workload set)",
                self.protocol.name()
            ));
        }
        Ok(())
    }
}

/// SplitMix64: a tiny, fast, seeded generator; the workload needs speed and
/// reproducibility, not quality.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

/// Builds keys in place: `k` followed by the zero-padded key number.
struct KeyMaker {
    buf: [u8; KEY_BYTES_MAX],
    len: usize,
    digits: usize,
}

impl KeyMaker {
    fn new(key_size: usize, keys: u64) -> KeyMaker {
        let mut buf = [b'0'; KEY_BYTES_MAX];
        buf[0] = b'k';
        KeyMaker {
            buf,
            len: key_size,
            digits: key_digits(keys),
        }
    }

    fn key(&mut self, mut index: u64) -> &[u8] {
        for at in (self.len - self.digits..self.len).rev() {
            self.buf[at] = b'0' + (index % 10) as u8;
            index /= 10;
        }
        &self.buf[..self.len]
    }
}

/// State every task and the supervisor share.
struct Shared {
    /// Set when the run is over: tasks stop sending and stop counting.
    stop: AtomicBool,
    /// Every reply received, for stall detection and progress.
    replies: AtomicU64,
    /// Tasks still running; the last one to end wakes the supervisor.
    running: AtomicUsize,
    done: Notify,
}

impl Shared {
    fn new(tasks: usize) -> Arc<Shared> {
        Arc::new(Shared {
            stop: AtomicBool::new(false),
            replies: AtomicU64::new(0),
            running: AtomicUsize::new(tasks),
            done: Notify::new(),
        })
    }

    fn task_ended(&self) {
        if self.running.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.done.notify_one();
        }
    }
}

/// One load connection, of either protocol. An enum rather than a trait
/// object: two variants, matched per call, and the futures stay `Send`.
enum BenchConn {
    Memcache(Connection),
    Peer(PeerConnection),
}

impl BenchConn {
    async fn connect(addr: SocketAddr, protocol: Protocol) -> Result<BenchConn, Error> {
        Ok(match protocol {
            Protocol::Memcache => BenchConn::Memcache(Connection::connect(addr).await?),
            Protocol::Peer(peer) => BenchConn::Peer(PeerConnection::connect(addr, peer).await?),
        })
    }

    fn queue_get(&mut self, key: &[u8]) -> Result<(), Error> {
        match self {
            BenchConn::Memcache(c) => c.queue(Some(Expect::Retrieval), |buf| {
                encode_get(buf, &[key], false)
            }),
            // Refused by BenchConfig::validate before any connection exists.
            BenchConn::Peer(_) => Err(Error::UnexpectedReply(
                "gets are not spoken to a peer system".into(),
            )),
        }
    }

    fn queue_set(&mut self, key: &[u8], value: &[u8]) -> Result<(), Error> {
        match self {
            BenchConn::Memcache(c) => c.queue(Some(Expect::Line), |buf| {
                encode_store(buf, StoreMode::Set, key, 0, 0, value, 0, false)
            }),
            BenchConn::Peer(c) => c.queue_set(key, value),
        }
    }

    async fn flush(&mut self) -> Result<(), Error> {
        match self {
            BenchConn::Memcache(c) => c.flush().await,
            BenchConn::Peer(c) => c.flush().await,
        }
    }

    fn pending(&self) -> usize {
        match self {
            BenchConn::Memcache(c) => c.pending(),
            BenchConn::Peer(c) => c.pending(),
        }
    }

    async fn recv_status(&mut self) -> Result<Status, Error> {
        match self {
            BenchConn::Memcache(c) => c.recv_status().await,
            BenchConn::Peer(c) => c.recv_status().await,
        }
    }

    fn try_recv_status(&mut self) -> Result<Option<Status>, Error> {
        match self {
            BenchConn::Memcache(c) => c.try_recv_status(),
            BenchConn::Peer(c) => c.try_recv_status(),
        }
    }

    /// A peer's first failed reply in its own words (a memcached error line
    /// is already named by its [`Status`]).
    fn error_text(&self) -> Option<&str> {
        match self {
            BenchConn::Memcache(_) => None,
            BenchConn::Peer(c) => c.error_text(),
        }
    }
}

/// What a connection sends and how it scores the replies.
trait Workload {
    /// Queues the next request; false when this connection has no more to
    /// send.
    fn issue(&mut self, conn: &mut BenchConn, now: Instant) -> Result<bool, Error>;
    /// Scores the reply to the oldest request in flight. `counted` is false
    /// once the run is over.
    fn complete(&mut self, status: Status, now: Instant, counted: bool);
}

/// Keeps up to `depth` requests in flight on `conn` until the workload runs
/// out or the run stops, then collects the replies still owed. One read
/// brings in many replies; they are all scored against one clock reading and
/// replaced by one write.
async fn drive<W: Workload>(
    conn: &mut BenchConn,
    depth: usize,
    workload: &mut W,
    shared: &Shared,
) -> Result<(), Error> {
    let now = Instant::now();
    for _ in 0..depth {
        if !workload.issue(conn, now)? {
            break;
        }
    }
    conn.flush().await?;
    while conn.pending() > 0 {
        let status = conn.recv_status().await?;
        let now = Instant::now();
        let stopped = shared.stop.load(Ordering::Relaxed);
        workload.complete(status, now, !stopped);
        let mut received = 1u64;
        while let Some(status) = conn.try_recv_status()? {
            workload.complete(status, now, !stopped);
            received += 1;
        }
        shared.replies.fetch_add(received, Ordering::Relaxed);
        if !stopped {
            for _ in 0..received {
                if !workload.issue(conn, now)? {
                    break;
                }
            }
            conn.flush().await?;
        }
    }
    Ok(())
}

/// The measured workload: uniform keys, `get_ratio` gets, the rest sets.
struct Mixed {
    rng: Rng,
    keys: KeyMaker,
    key_count: u64,
    /// A draw below this is a get; `None` means every op is a get.
    get_below: Option<u64>,
    value: Vec<u8>,
    /// Send time and kind (true: get) of each request in flight.
    in_flight: VecDeque<(Instant, bool)>,
    /// Ops sent at or after this count; earlier ones are warmup.
    measure_start: Instant,
    /// Measured ops this connection may still send.
    quota: u64,
    stats: TaskStats,
    latency_ns: Histogram<u64>,
}

#[derive(Default)]
struct TaskStats {
    ops: u64,
    gets: u64,
    sets: u64,
    hits: u64,
    misses: u64,
    errors: u64,
    first_error: Option<String>,
    /// When this connection's last measured reply arrived.
    last_reply: Option<Instant>,
}

impl Workload for Mixed {
    fn issue(&mut self, conn: &mut BenchConn, now: Instant) -> Result<bool, Error> {
        let measured = now >= self.measure_start;
        if measured {
            if self.quota == 0 {
                return Ok(false);
            }
            self.quota -= 1;
        }
        let draw = self.rng.next();
        let is_get = self.get_below.is_none_or(|below| draw < below);
        let key = self.keys.key(self.rng.next() % self.key_count);
        if is_get {
            conn.queue_get(key)?;
        } else {
            conn.queue_set(key, &self.value)?;
        }
        self.in_flight.push_back((now, is_get));
        Ok(true)
    }

    fn complete(&mut self, status: Status, now: Instant, counted: bool) {
        // The connection pairs replies with requests in order, so there is
        // always a request in flight for a reply.
        let Some((sent, is_get)) = self.in_flight.pop_front() else {
            return;
        };
        if !counted || sent < self.measure_start {
            return;
        }
        let s = &mut self.stats;
        s.ops += 1;
        s.last_reply = Some(now);
        match (is_get, status) {
            (true, Status::Values(n)) => {
                s.gets += 1;
                if n > 0 {
                    s.hits += 1;
                } else {
                    s.misses += 1;
                }
            }
            (false, Status::Stored) => s.sets += 1,
            (_, other) => {
                s.errors += 1;
                if s.first_error.is_none() {
                    s.first_error = Some(format!("reply {other:?}"));
                }
            }
        }
        let latency_ns = u64::try_from((now - sent).as_nanos()).unwrap_or(u64::MAX);
        self.latency_ns
            .saturating_record(latency_ns.clamp(1, LATENCY_MAX_NS));
    }
}

/// `--preload`: set each key of `next..end` once.
struct Preload {
    keys: KeyMaker,
    next: u64,
    end: u64,
    value: Vec<u8>,
    errors: u64,
    first_error: Option<String>,
}

impl Workload for Preload {
    fn issue(&mut self, conn: &mut BenchConn, _: Instant) -> Result<bool, Error> {
        if self.next >= self.end {
            return Ok(false);
        }
        let key = self.keys.key(self.next);
        conn.queue_set(key, &self.value)?;
        self.next += 1;
        Ok(true)
    }

    fn complete(&mut self, status: Status, _: Instant, _: bool) {
        if status != Status::Stored {
            self.errors += 1;
            if self.first_error.is_none() {
                self.first_error = Some(format!("reply {status:?}"));
            }
        }
    }
}

fn histogram() -> Histogram<u64> {
    // Constant bounds: 1 ns to LATENCY_MAX_NS at 3 significant digits is a
    // valid configuration.
    Histogram::new_with_bounds(1, LATENCY_MAX_NS, 3).expect("valid histogram bounds")
}

/// Watches running tasks: ends the run at `end`, cuts it if no reply
/// arrives for [`STALL_TIMEOUT_MS`], prints progress, and after the end
/// gives tasks [`DRAIN_TIMEOUT_MS`] before aborting them. Returns when every
/// task has ended or been aborted, with the time the run was stopped (if it
/// was stopped rather than finishing) and whether it stalled.
async fn supervise<T>(
    handles: &[JoinHandle<T>],
    shared: &Shared,
    end: Option<Instant>,
    progress: Option<(&str, Instant)>,
) -> (Option<Instant>, bool) {
    let tick = Duration::from_millis(PROGRESS_INTERVAL_MS);
    let stall = Duration::from_millis(STALL_TIMEOUT_MS);
    let drain = Duration::from_millis(DRAIN_TIMEOUT_MS);
    let mut stopped_at = None;
    let mut stalled = false;
    let mut last_replies = 0;
    let mut last_change = Instant::now();
    let mut next_tick = Instant::now() + tick;
    // Replies and time at the last progress line, for its rate.
    let mut tick_replies = 0;
    let mut tick_at = Instant::now();
    let mut printed = false;
    while shared.running.load(Ordering::Acquire) > 0 {
        let mut wake = next_tick;
        if let Some(end) = end.filter(|_| stopped_at.is_none()) {
            wake = wake.min(end);
        }
        if let Some(stopped) = stopped_at {
            wake = wake.min(stopped + drain);
        }
        tokio::select! {
            _ = tokio::time::sleep_until(wake.into()) => {}
            _ = shared.done.notified() => {}
        }
        let now = Instant::now();
        let replies = shared.replies.load(Ordering::Relaxed);
        if replies != last_replies {
            last_change = now;
        }
        if stopped_at.is_none() {
            if end.is_some_and(|end| now >= end) {
                shared.stop.store(true, Ordering::Relaxed);
                stopped_at = Some(now);
            } else if now - last_change >= stall {
                shared.stop.store(true, Ordering::Relaxed);
                stopped_at = Some(now);
                stalled = true;
            }
        }
        if stopped_at.is_some_and(|stopped| now >= stopped + drain) || stalled {
            for handle in handles {
                handle.abort();
            }
            break;
        }
        if now >= next_tick {
            if let Some((label, start)) = progress {
                let rate = (replies - tick_replies) as f64 / (now - tick_at).as_secs_f64();
                let phase = if now < start { " (warmup)" } else { "" };
                eprint!(
                    "\r{label} {:>5.0} s  {:>10.0} ops/s{phase}          ",
                    now.saturating_duration_since(start).as_secs_f64(),
                    rate
                );
                printed = true;
            }
            tick_replies = replies;
            tick_at = now;
            next_tick = now + tick;
        }
        last_replies = replies;
    }
    if printed {
        eprintln!();
    }
    (stopped_at, stalled)
}

/// Sets every key once over `conns`, each connection a contiguous range.
async fn preload(
    conns: Vec<BenchConn>,
    config: &BenchConfig,
) -> Result<(Vec<BenchConn>, Duration), BenchError> {
    let start = Instant::now();
    let shared = Shared::new(conns.len());
    let count = conns.len() as u64;
    let mut handles = Vec::with_capacity(conns.len());
    for (i, mut conn) in conns.into_iter().enumerate() {
        let i = i as u64;
        let mut workload = Preload {
            keys: KeyMaker::new(config.key_size, config.keys),
            next: config.keys * i / count,
            end: config.keys * (i + 1) / count,
            value: vec![b'p'; config.value_size],
            errors: 0,
            first_error: None,
        };
        let shared = Arc::clone(&shared);
        let depth = config.preload_depth;
        handles.push(tokio::spawn(async move {
            let result = drive(&mut conn, depth, &mut workload, &shared).await;
            shared.task_ended();
            match (result, workload.first_error) {
                (Err(e), _) => Err(e.to_string()),
                (Ok(()), Some(e)) => Err(format!(
                    "{} errors, first: {}",
                    workload.errors,
                    conn.error_text().unwrap_or(&e)
                )),
                (Ok(()), None) => Ok(conn),
            }
        }));
    }
    let progress = config.progress.then_some(("preload", start));
    let (_, stalled) = supervise(&handles, &shared, None, progress).await;
    let mut out = Vec::with_capacity(handles.len());
    for handle in handles {
        match handle.await {
            Ok(Ok(conn)) => out.push(conn),
            Ok(Err(e)) => return Err(BenchError::Preload(e)),
            Err(_) if stalled => return Err(BenchError::Preload("no reply: stalled".into())),
            Err(e) => return Err(BenchError::Preload(e.to_string())),
        }
    }
    Ok((out, start.elapsed()))
}

/// Runs the benchmark described by `config` on the current tokio runtime.
pub async fn run(config: BenchConfig) -> Result<BenchReport, BenchError> {
    config.validate()?;
    let connect_timeout = Duration::from_millis(CONNECT_TIMEOUT_MS);
    let mut conns = Vec::with_capacity(config.connections);
    for _ in 0..config.connections {
        let conn = tokio::time::timeout(
            connect_timeout,
            BenchConn::connect(config.server, config.protocol),
        )
        .await
        .unwrap_or(Err(Error::Timeout(connect_timeout)))
        .map_err(|source| BenchError::Connect {
            addr: config.server,
            source,
        })?;
        conns.push(conn);
    }
    let mut preload_elapsed = None;
    if config.preload {
        let (loaded, elapsed) = preload(conns, &config).await?;
        conns = loaded;
        preload_elapsed = Some(elapsed);
    }

    let start = Instant::now();
    let measure_start = start + config.warmup;
    let end = config.duration.map(|d| measure_start + d);
    let get_below = if config.get_ratio >= 1.0 {
        None
    } else {
        // Saturating float-to-int cast: 0.0 gives 0, so every op is a set.
        Some((config.get_ratio * u64::MAX as f64) as u64)
    };
    let shared = Shared::new(conns.len());
    let count = conns.len() as u64;
    let mut handles = Vec::with_capacity(conns.len());
    for (i, mut conn) in conns.into_iter().enumerate() {
        let i = i as u64;
        let quota = match config.ops {
            Some(ops) => ops / count + u64::from(i < ops % count),
            None => u64::MAX,
        };
        let mut workload = Mixed {
            rng: Rng(config.seed ^ i.wrapping_mul(0x2545_f491_4f6c_dd1d)),
            keys: KeyMaker::new(config.key_size, config.keys),
            key_count: config.keys,
            get_below,
            value: vec![b'v'; config.value_size],
            in_flight: VecDeque::with_capacity(config.pipeline),
            measure_start,
            quota,
            stats: TaskStats::default(),
            latency_ns: histogram(),
        };
        let shared = Arc::clone(&shared);
        let depth = config.pipeline;
        handles.push(tokio::spawn(async move {
            let result = drive(&mut conn, depth, &mut workload, &shared).await;
            shared.task_ended();
            let mut stats = workload.stats;
            if let (Some(first), Some(text)) = (&mut stats.first_error, conn.error_text()) {
                *first = text.to_string();
            }
            (stats, workload.latency_ns, result.err())
        }));
    }
    let progress = config.progress.then_some(("bench", measure_start));
    let (stopped_at, stalled) = supervise(&handles, &shared, end, progress).await;

    let mut report = BenchReport {
        config: config.clone(),
        elapsed: Duration::ZERO,
        preload_elapsed,
        ops: 0,
        gets: 0,
        sets: 0,
        hits: 0,
        misses: 0,
        errors: 0,
        connection_errors: 0,
        stalled,
        first_error: None,
        latency_ns: histogram(),
    };
    let mut last_reply = measure_start;
    let mut failed = 0usize;
    for handle in handles {
        let Ok((stats, latency, error)) = handle.await else {
            // Aborted after the drain deadline: its counts are lost with it.
            report.connection_errors += 1;
            failed += 1;
            continue;
        };
        if let Some(e) = error {
            report.connection_errors += 1;
            failed += 1;
            report.first_error.get_or_insert_with(|| e.to_string());
        }
        report.ops += stats.ops;
        report.gets += stats.gets;
        report.sets += stats.sets;
        report.hits += stats.hits;
        report.misses += stats.misses;
        report.errors += stats.errors;
        if let Some(e) = stats.first_error {
            report.first_error.get_or_insert(e);
        }
        if let Some(t) = stats.last_reply {
            last_reply = last_reply.max(t);
        }
        // Same bounds on every histogram, so adding cannot fail.
        report
            .latency_ns
            .add(&latency)
            .expect("histograms share bounds");
    }
    if failed == config.connections {
        return Err(BenchError::AllFailed(
            report.first_error.unwrap_or_else(|| "aborted".into()),
        ));
    }
    // A stopped run's window ends at the stop; one that ran out of ops ends
    // at its last reply.
    let window_end = stopped_at.unwrap_or(last_reply);
    report.elapsed = window_end.saturating_duration_since(measure_start);
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_have_the_requested_size_and_differ() {
        let mut maker = KeyMaker::new(32, 100_000);
        assert_eq!(maker.key(0), b"k0000000000000000000000000000000");
        assert_eq!(maker.key(99_999), b"k0000000000000000000000000099999");
        assert_eq!(maker.key(7), b"k0000000000000000000000000000007");
        let mut small = KeyMaker::new(2, 10);
        assert_eq!(small.key(9), b"k9");
    }

    #[test]
    fn key_digits_cover_the_largest_key() {
        assert_eq!(key_digits(1), 1);
        assert_eq!(key_digits(10), 1);
        assert_eq!(key_digits(11), 2);
        assert_eq!(key_digits(100_000), 5);
        assert_eq!(key_digits(u64::MAX), 20);
    }

    #[test]
    fn config_is_checked() {
        let config = BenchConfig {
            server: "127.0.0.1:1".parse().unwrap(),
            protocol: Protocol::Memcache,
            connections: 1,
            pipeline: 1,
            keys: 100_000,
            key_size: 5,
            value_size: 1,
            get_ratio: 0.5,
            duration: Some(Duration::from_secs(1)),
            ops: None,
            warmup: Duration::ZERO,
            preload: false,
            preload_depth: PRELOAD_DEPTH_DEFAULT,
            progress: false,
            seed: 1,
        };
        // 5 digits need a 6-byte key.
        assert!(config.validate().is_err());
        assert!(BenchConfig {
            key_size: 6,
            ..config.clone()
        }
        .validate()
        .is_ok());
        assert!(BenchConfig {
            get_ratio: 1.5,
            key_size: 6,
            ..config.clone()
        }
        .validate()
        .is_err());
        assert!(BenchConfig {
            pipeline: 0,
            key_size: 6,
            ..config.clone()
        }
        .validate()
        .is_err());
        // Peer protocols send sets only.
        let etcd = BenchConfig {
            protocol: Protocol::Peer(PeerProtocol::EtcdPut),
            key_size: 6,
            ..config
        };
        assert!(etcd.validate().is_err());
        assert!(BenchConfig {
            get_ratio: 0.0,
            ..etcd
        }
        .validate()
        .is_ok());
    }
}
