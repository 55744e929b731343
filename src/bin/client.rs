//! The `client` command line: one memcached command per run against any
//! memcached-protocol server (store or memcached), and `client bench`, the
//! load generator.
//!
//! This file owns argument parsing, stdin/stdout/stderr and exit codes; the
//! protocol and the socket belong to the `client` library, which this calls.
//! Exit codes: 0 found/stored/deleted/touched/ok, 1 not found/not
//! stored/exists, 2 any error (connection, server error line, bad
//! arguments).

use std::collections::HashSet;
use std::ffi::OsString;
use std::io::{IsTerminal, Read, Write};
use std::net::{SocketAddr, ToSocketAddrs};
use std::os::unix::ffi::OsStrExt;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use clap::{Args, Parser, Subcommand, ValueEnum};
use client::bench::{self, BenchConfig, Protocol};
use client::bench_peers::PeerProtocol;
use client::{Client, Error, Options, StoreMode, StoreResult, Value, TIMEOUT_DEFAULT_MS};

/// Largest value read from stdin for `VALUE` `-`: the largest item a store
/// server can be configured to hold.
const STDIN_VALUE_BYTES_MAX: usize = data::limits::ITEM_BYTES_MAX;

/// Worker threads `client bench` may ask for.
const BENCH_THREADS_MAX: usize = 256;

const EXIT_OK: u8 = 0;
const EXIT_MISS: u8 = 1;
const EXIT_ERROR: u8 = 2;

const MAIN_EXAMPLES: &str = "\
Examples:
  client set greeting hello             # STORED, exit 0
  client get greeting                   # prints hello (no newline), exit 0
  client --server 10.0.0.5:11211 get a b
  client --lb 127.0.0.1:11311 set k v   # to the leader of a cluster, retried across failover
  client gets greeting 2>&1 >/dev/null  # prints: greeting 0 <cas>
  client incr counter 1
  client stats
  client bench --pipeline 16 --duration-s 10

Exit codes: 0 found/stored/deleted/touched/ok, 1 not found/not stored/exists,
2 error (connection refused, ERROR/CLIENT_ERROR/SERVER_ERROR, bad arguments).";

/// Talk to a memcached-protocol server (store or memcached).
#[derive(Parser, Debug, Clone)]
#[command(name = "client", version, after_help = MAIN_EXAMPLES)]
struct Cli {
    /// Server address, HOST:PORT.
    #[arg(long, global = true, default_value = "127.0.0.1:11211")]
    server: String,
    /// A cluster's load balancer, HOST:PORT (its TCP port), or several,
    /// comma-separated, asked in turn until one answers: the command goes
    /// to the leader it names, and commands that are safe to repeat are
    /// retried across a leader change. Overrides --server.
    #[arg(long, global = true, value_name = "HOST:PORT[,HOST:PORT...]", value_parser = parse_lbs)]
    lb: Option<Lbs>,
    /// Timeout for connecting and for each request, milliseconds.
    #[arg(long, global = true, default_value_t = TIMEOUT_DEFAULT_MS)]
    timeout_ms: u64,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug, Clone)]
enum Command {
    /// Store a value (memcached `set`).
    #[command(
        after_help = "Examples:\n  client set k hello\n  client set k hello --flags 7 --exptime 300\n  printf 'a\\r\\nb' | client set k -    # binary-safe, from stdin\n  client set k v --noreply"
    )]
    Set(StoreArgs),
    /// Store only if the key is absent (`add`).
    #[command(after_help = "Examples:\n  client add k v     # exit 1 (NOT_STORED) if k exists")]
    Add(StoreArgs),
    /// Store only if the key exists (`replace`).
    #[command(
        after_help = "Examples:\n  client replace k v # exit 1 (NOT_STORED) if k is missing"
    )]
    Replace(StoreArgs),
    /// Add bytes after an existing value (`append`; flags/exptime are ignored by the server).
    #[command(after_help = "Examples:\n  client append log ' more'")]
    Append(StoreArgs),
    /// Add bytes before an existing value (`prepend`).
    #[command(after_help = "Examples:\n  client prepend log 'first '")]
    Prepend(StoreArgs),
    /// Store only if the item's cas unique is unchanged (`cas`).
    #[command(
        after_help = "Examples:\n  CAS=$(client gets k 2>&1 >/dev/null | cut -d' ' -f3)\n  client cas k new-value \"$CAS\"   # exit 1: EXISTS (changed) or NOT_FOUND"
    )]
    Cas(CasArgs),
    /// Print values. One key: exactly the value bytes, no newline added.
    /// Several keys: each value followed by a newline, misses left out.
    /// Exit 1 if any key is missing.
    #[command(
        after_help = "Examples:\n  client get k > value.bin\n  client get a b c\n  client get -v k     # also prints `KEY FLAGS BYTES` on stderr"
    )]
    Get(GetArgs),
    /// Like get, and prints `KEY FLAGS CAS` for each hit on stderr.
    #[command(
        after_help = "Examples:\n  client gets k                       # value on stdout, `k 0 42` on stderr\n  client gets k 2>&1 >/dev/null      # only the `KEY FLAGS CAS` lines"
    )]
    Gets(GetArgs),
    /// Get and set a new expiry (`gat EXPTIME KEY...`); output as get.
    #[command(
        after_help = "Examples:\n  client gat 300 k\n  client gat -1 k    # get, and expire at once"
    )]
    Gat(GatArgs),
    /// gat with `KEY FLAGS CAS` lines on stderr, as gets.
    #[command(after_help = "Examples:\n  client gats 300 k")]
    Gats(GatArgs),
    /// Delete a key. Exit 1 if it was not there.
    #[command(after_help = "Examples:\n  client delete k")]
    Delete {
        #[arg(value_name = "KEY")]
        key: OsString,
    },
    /// Add DELTA to a decimal value (wraps at 2^64); prints the new value.
    #[command(after_help = "Examples:\n  client set n 10 && client incr n 5    # prints 15")]
    Incr(ArithArgs),
    /// Subtract DELTA (floors at 0); prints the new value.
    #[command(after_help = "Examples:\n  client decr n 3")]
    Decr(ArithArgs),
    /// Set a key's expiry. Exit 1 if the key is missing.
    #[command(
        allow_negative_numbers = true,
        after_help = "Examples:\n  client touch k 300\n  client touch k -1   # expire now"
    )]
    Touch {
        #[arg(value_name = "KEY")]
        key: OsString,
        /// Seconds (<= 30 days), Unix time (larger), 0 never, negative now.
        exptime: i64,
    },
    /// Invalidate every item, now or after DELAY seconds.
    #[command(
        name = "flush-all",
        allow_negative_numbers = true,
        after_help = "Examples:\n  client flush-all\n  client flush-all 60"
    )]
    FlushAll { delay: Option<i64> },
    /// Print the server's version.
    #[command(after_help = "Examples:\n  client version")]
    Version,
    /// Set the server's log verbosity.
    #[command(after_help = "Examples:\n  client verbosity 1")]
    Verbosity { level: u32 },
    /// Print `name value` lines (GROUP: settings, items, slabs, reset, ...).
    #[command(
        after_help = "Examples:\n  client stats\n  client stats settings\n  client stats reset"
    )]
    Stats {
        /// Words after `stats`, e.g. `cachedump 1 1`.
        group: Vec<String>,
    },
    /// Load generator: ops/s and latency percentiles against --server.
    #[command(
        after_help = "Examples:\n  client bench --workload get --preload --pipeline 16 --duration-s 10\n  client bench --get-ratio 0.9 --connections 50 --ops 1000000 --json\n  client bench --workload set --value-size 1000 --warmup-s 2\n  client bench --workload get --keys 1000000 --preload --ops 0    # load only\n  client --server 127.0.0.1:6379 bench --protocol redis-set-wait --workload set\n  client --server 127.0.0.1:2379 bench --protocol etcd-put --workload set"
    )]
    Bench(BenchArgs),
}

#[derive(Args, Debug, Clone)]
#[command(allow_negative_numbers = true)]
struct StoreArgs {
    #[arg(value_name = "KEY")]
    key: OsString,
    /// The value; `-` reads it from stdin (binary-safe).
    #[arg(value_name = "VALUE")]
    value: OsString,
    /// Opaque 32-bit flags stored with the value.
    #[arg(long, default_value_t = 0)]
    flags: u32,
    /// Seconds (<= 30 days), Unix time (larger), 0 never, negative now.
    #[arg(long, default_value_t = 0)]
    exptime: i64,
    /// Ask for no reply; exits 0 once the server has processed it.
    #[arg(long)]
    noreply: bool,
}

#[derive(Args, Debug, Clone)]
#[command(allow_negative_numbers = true)]
struct CasArgs {
    #[arg(value_name = "KEY")]
    key: OsString,
    /// The value; `-` reads it from stdin (binary-safe).
    #[arg(value_name = "VALUE")]
    value: OsString,
    /// The cas unique from `gets`.
    #[arg(value_name = "CAS_UNIQUE")]
    cas_unique: u64,
    #[arg(long, default_value_t = 0)]
    flags: u32,
    #[arg(long, default_value_t = 0)]
    exptime: i64,
    /// Ask for no reply; exits 0 once the server has processed it.
    #[arg(long)]
    noreply: bool,
}

#[derive(Args, Debug, Clone)]
struct GetArgs {
    #[arg(value_name = "KEY", required = true)]
    keys: Vec<OsString>,
    /// get: also print `KEY FLAGS BYTES` per hit on stderr (gets always
    /// prints `KEY FLAGS CAS`).
    #[arg(short, long)]
    verbose: bool,
}

#[derive(Args, Debug, Clone)]
#[command(allow_negative_numbers = true)]
struct GatArgs {
    /// New expiry: seconds (<= 30 days), Unix time, 0 never, negative now.
    exptime: i64,
    #[arg(value_name = "KEY", required = true)]
    keys: Vec<OsString>,
    /// gat: also print `KEY FLAGS BYTES` per hit on stderr (gats always
    /// prints `KEY FLAGS CAS`).
    #[arg(short, long)]
    verbose: bool,
}

#[derive(Args, Debug, Clone)]
struct ArithArgs {
    #[arg(value_name = "KEY")]
    key: OsString,
    delta: u64,
}

#[derive(Copy, Clone, Debug, ValueEnum)]
enum Workload {
    /// Only gets (get ratio 1.0).
    Get,
    /// Only sets (get ratio 0.0).
    Set,
    /// 90% gets, 10% sets.
    Mixed,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
enum BenchProtocol {
    /// memcached's text protocol (store, memcached).
    Memcache,
    /// Redis: each op is `SET key value` then `WAIT <--wait-replicas> 0`
    /// (sets only).
    RedisSetWait,
    /// etcd: each op is `POST /v3/kv/put` on the v3 HTTP/JSON gateway, over
    /// keep-alive HTTP/1.1 (sets only).
    EtcdPut,
}

#[derive(Args, Debug, Clone)]
struct BenchArgs {
    /// Wire protocol of the server under test.
    #[arg(long, value_enum, default_value_t = BenchProtocol::Memcache)]
    protocol: BenchProtocol,
    /// With --protocol redis-set-wait: replicas WAIT waits for.
    #[arg(long, default_value_t = 1)]
    wait_replicas: u32,
    /// Concurrent connections.
    #[arg(long, default_value_t = 50)]
    connections: usize,
    /// Requests in flight per connection.
    #[arg(long, default_value_t = 1)]
    pipeline: usize,
    /// Key space: keys are drawn uniformly from this many.
    #[arg(long, default_value_t = 100_000)]
    keys: u64,
    /// Bytes per key.
    #[arg(long, default_value_t = 32)]
    key_size: usize,
    /// Bytes per value for sets.
    #[arg(long, default_value_t = 100)]
    value_size: usize,
    /// Fraction of gets, 0.0..=1.0 (overrides --workload).
    #[arg(long, conflicts_with = "workload")]
    get_ratio: Option<f64>,
    /// Request mix.
    #[arg(long, value_enum, default_value_t = Workload::Mixed)]
    workload: Workload,
    /// Measured seconds (default 10 unless --ops is given).
    #[arg(long)]
    duration_s: Option<f64>,
    /// Measured ops in total; the run ends at whichever of --ops and
    /// --duration-s comes first. `--preload --ops 0` only loads the keys.
    #[arg(long)]
    ops: Option<u64>,
    /// Seconds of load before measuring.
    #[arg(long, default_value_t = 0.0)]
    warmup_s: f64,
    /// Set every key once (pipelined) before the run, so gets hit.
    #[arg(long)]
    preload: bool,
    /// Sets in flight per connection during --preload.
    #[arg(long, default_value_t = bench::PRELOAD_DEPTH_DEFAULT)]
    preload_depth: usize,
    /// Print the report as one JSON object.
    #[arg(long)]
    json: bool,
    /// Runtime worker threads (1: a single-threaded runtime).
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Seed for key and op choices.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            // A server error line is printed as the server sent it.
            match e.downcast_ref::<Error>() {
                Some(Error::Server(line)) => eprintln!("{line}"),
                _ => eprintln!("client: {e:#}"),
            }
            ExitCode::from(EXIT_ERROR)
        }
    }
}

fn run(mut cli: Cli) -> anyhow::Result<u8> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the runtime")?;
    if let Command::Bench(args) = &cli.command {
        if let Some(lbs) = &cli.lb {
            let timeout = Duration::from_millis(cli.timeout_ms);
            let (lb, servers) = runtime
                .block_on(client::discovery::get_servers_from_any(&lbs.0, timeout))
                .with_context(|| format!("cannot ask any LB of {lbs} for the leader"))?;
            cli.server = servers
                .first()
                .ok_or_else(|| anyhow!("the LB at {lb} knows no server"))?
                .to_string();
        }
        drop(runtime);
        return run_bench(&cli.server, args);
    }
    match cli.lb.clone() {
        Some(lb) => runtime.block_on(run_with_lb(cli, lb)),
        None => runtime.block_on(run_command(cli)),
    }
}

/// The LBs `--lb` names, in order.
#[derive(Debug, Clone)]
struct Lbs(Vec<String>);

impl std::fmt::Display for Lbs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0.join(","))
    }
}

fn parse_lbs(text: &str) -> Result<Lbs, String> {
    client::discovery::lb_list(text)
        .map(Lbs)
        .ok_or_else(|| "name at least one LB, HOST:PORT".to_string())
}

/// Tries before giving up on a cluster (a failover takes about a second).
const LB_ATTEMPTS_MAX: u32 = 8;
/// Wait before the second try; it grows linearly after that.
const LB_RETRY_DELAY_MS: u64 = 250;

/// Runs the command on the leader the LB names; when the leader cannot be
/// reached or is changing, asks again and retries commands that are safe to
/// repeat (reads, set, delete, touch: repeating them leaves the same state).
async fn run_with_lb(cli: Cli, lbs: Lbs) -> anyhow::Result<u8> {
    let timeout = Duration::from_millis(cli.timeout_ms);
    let repeatable = is_repeatable(&cli.command);
    let mut last_error = anyhow!("no attempt made");
    for attempt in 0..LB_ATTEMPTS_MAX {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_millis(
                LB_RETRY_DELAY_MS * u64::from(attempt),
            ))
            .await;
        }
        let servers = match client::discovery::get_servers_from_any(&lbs.0, timeout).await {
            Ok((_, servers)) if !servers.is_empty() => servers,
            Ok((lb, _)) => {
                last_error = anyhow!("the LB at {lb} knows no server yet");
                continue;
            }
            Err(e) => {
                last_error = anyhow::Error::new(e).context(format!("cannot ask any LB of {lbs}"));
                continue;
            }
        };
        let mut on_leader = cli.clone();
        on_leader.server = servers[0].to_string();
        match run_command(on_leader).await {
            Ok(code) => return Ok(code),
            Err(e) if is_transient(&e) && (repeatable || attempt == 0 && never_sent(&e)) => {
                last_error = e
            }
            Err(e) => return Err(e),
        }
    }
    Err(last_error)
}

/// Commands whose repetition cannot change the outcome a client sees.
fn is_repeatable(command: &Command) -> bool {
    let stdin = |a: &StoreArgs| a.value == "-";
    match command {
        Command::Set(a) => !stdin(a),
        Command::Get(_)
        | Command::Gets(_)
        | Command::Gat(_)
        | Command::Gats(_)
        | Command::Delete { .. }
        | Command::Touch { .. }
        | Command::Version
        | Command::Stats { .. } => true,
        _ => false,
    }
}

/// The cluster was changing leader or unreachable: worth asking the LB again.
fn is_transient(e: &anyhow::Error) -> bool {
    match e.downcast_ref::<Error>() {
        Some(Error::Io(_) | Error::Closed | Error::Timeout(_) | Error::Broken) => true,
        Some(Error::Server(line)) => {
            line.starts_with("SERVER_ERROR no leader")
                || line.starts_with("SERVER_ERROR leader not ready")
                || line.starts_with("SERVER_ERROR leader changed")
        }
        // Connecting failed: wrapped by `context`.
        None => e.chain().any(|c| {
            c.downcast_ref::<Error>()
                .is_some_and(|e| matches!(e, Error::Io(_)))
        }),
        _ => false,
    }
}

/// The request never reached a server (connection refused), so even a
/// command that is not repeatable may be sent once more.
fn never_sent(e: &anyhow::Error) -> bool {
    e.to_string().starts_with("cannot connect")
}

fn bytes_of(s: &OsString) -> &[u8] {
    s.as_os_str().as_bytes()
}

/// The value argument, or stdin's bytes for `-`.
fn value_of(arg: &OsString) -> anyhow::Result<Vec<u8>> {
    if arg != "-" {
        return Ok(bytes_of(arg).to_vec());
    }
    let mut value = Vec::new();
    std::io::stdin()
        .lock()
        .take(STDIN_VALUE_BYTES_MAX as u64 + 1)
        .read_to_end(&mut value)
        .context("cannot read the value from stdin")?;
    if value.len() > STDIN_VALUE_BYTES_MAX {
        bail!("value on stdin is over {STDIN_VALUE_BYTES_MAX} bytes");
    }
    Ok(value)
}

async fn run_command(cli: Cli) -> anyhow::Result<u8> {
    let timeout = Some(Duration::from_millis(cli.timeout_ms));
    let mut client = Client::connect_with(cli.server.as_str(), Options { timeout })
        .await
        .with_context(|| format!("cannot connect to {}", cli.server))?;
    let mut out = std::io::stdout().lock();
    let code = match cli.command {
        Command::Set(a) => store(&mut client, StoreMode::Set, &a, 0).await?,
        Command::Add(a) => store(&mut client, StoreMode::Add, &a, 0).await?,
        Command::Replace(a) => store(&mut client, StoreMode::Replace, &a, 0).await?,
        Command::Append(a) => store(&mut client, StoreMode::Append, &a, 0).await?,
        Command::Prepend(a) => store(&mut client, StoreMode::Prepend, &a, 0).await?,
        Command::Cas(a) => {
            let args = StoreArgs {
                key: a.key,
                value: a.value,
                flags: a.flags,
                exptime: a.exptime,
                noreply: a.noreply,
            };
            store(&mut client, StoreMode::Cas, &args, a.cas_unique).await?
        }
        Command::Get(a) => {
            let keys: Vec<&[u8]> = a.keys.iter().map(bytes_of).collect();
            let values = client.get(&keys).await?;
            print_values(&mut out, &keys, &values, Meta::bytes(a.verbose))?
        }
        Command::Gets(a) => {
            let keys: Vec<&[u8]> = a.keys.iter().map(bytes_of).collect();
            let values = client.gets(&keys).await?;
            print_values(&mut out, &keys, &values, Meta::Cas)?
        }
        Command::Gat(a) => {
            let keys: Vec<&[u8]> = a.keys.iter().map(bytes_of).collect();
            let values = client.gat(a.exptime, &keys).await?;
            print_values(&mut out, &keys, &values, Meta::bytes(a.verbose))?
        }
        Command::Gats(a) => {
            let keys: Vec<&[u8]> = a.keys.iter().map(bytes_of).collect();
            let values = client.gats(a.exptime, &keys).await?;
            print_values(&mut out, &keys, &values, Meta::Cas)?
        }
        Command::Delete { key } => word(
            &mut out,
            client.delete(bytes_of(&key)).await?,
            "DELETED",
            "NOT_FOUND",
        )?,
        Command::Incr(a) => number(&mut out, client.incr(bytes_of(&a.key), a.delta).await?)?,
        Command::Decr(a) => number(&mut out, client.decr(bytes_of(&a.key), a.delta).await?)?,
        Command::Touch { key, exptime } => word(
            &mut out,
            client.touch(bytes_of(&key), exptime).await?,
            "TOUCHED",
            "NOT_FOUND",
        )?,
        Command::FlushAll { delay } => {
            client.flush_all(delay).await?;
            word(&mut out, true, "OK", "")?
        }
        Command::Version => {
            let version = client.version().await?;
            writeln!(out, "{version}")?;
            EXIT_OK
        }
        Command::Verbosity { level } => {
            client.verbosity(level).await?;
            word(&mut out, true, "OK", "")?
        }
        Command::Stats { group } => {
            let group = group.join(" ");
            let stats = client
                .stats((!group.is_empty()).then_some(group.as_str()))
                .await?;
            for (name, value) in stats {
                writeln!(out, "{name} {value}")?;
            }
            EXIT_OK
        }
        Command::Bench(_) => unreachable!("bench is dispatched before connecting"),
    };
    out.flush()?;
    Ok(code)
}

async fn store(
    client: &mut Client,
    mode: StoreMode,
    args: &StoreArgs,
    cas_unique: u64,
) -> anyhow::Result<u8> {
    let key = bytes_of(&args.key);
    let value = value_of(&args.value)?;
    if args.noreply {
        client
            .store_noreply(mode, key, &value, args.flags, args.exptime, cas_unique)
            .await?;
        // A round trip after it: the server has processed the noreply
        // request before we exit, and a malformed-line error would show up
        // here instead of being lost.
        client.version().await?;
        return Ok(EXIT_OK);
    }
    let result = client
        .store(mode, key, &value, args.flags, args.exptime, cas_unique)
        .await?;
    let (text, code) = match result {
        StoreResult::Stored => ("STORED", EXIT_OK),
        StoreResult::NotStored => ("NOT_STORED", EXIT_MISS),
        StoreResult::Exists => ("EXISTS", EXIT_MISS),
        StoreResult::NotFound => ("NOT_FOUND", EXIT_MISS),
    };
    println!("{text}");
    Ok(code)
}

/// The line printed on stderr per hit of a retrieval.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Meta {
    None,
    /// `KEY FLAGS BYTES` (get -v, gat -v).
    Bytes,
    /// `KEY FLAGS CAS` (gets, gats).
    Cas,
}

impl Meta {
    fn bytes(verbose: bool) -> Meta {
        if verbose {
            Meta::Bytes
        } else {
            Meta::None
        }
    }
}

/// Writes the values as documented on `get`, the metadata lines on stderr
/// when asked, and returns 1 if any requested key had no value.
fn print_values(
    out: &mut impl Write,
    keys: &[&[u8]],
    values: &[Value],
    meta: Meta,
) -> anyhow::Result<u8> {
    let single = keys.len() == 1;
    let mut err = std::io::stderr().lock();
    for value in values {
        out.write_all(&value.data)?;
        if !single {
            out.write_all(b"\n")?;
        }
        match meta {
            Meta::None => {}
            Meta::Bytes => {
                err.write_all(&value.key)?;
                writeln!(err, " {} {}", value.flags, value.data.len())?;
            }
            Meta::Cas => {
                err.write_all(&value.key)?;
                writeln!(err, " {} {}", value.flags, value.cas.unwrap_or(0))?;
            }
        }
    }
    let found: HashSet<&[u8]> = values.iter().map(|v| v.key.as_ref()).collect();
    Ok(if keys.iter().all(|k| found.contains(k)) {
        EXIT_OK
    } else {
        EXIT_MISS
    })
}

fn word(out: &mut impl Write, hit: bool, yes: &str, no: &str) -> anyhow::Result<u8> {
    writeln!(out, "{}", if hit { yes } else { no })?;
    Ok(if hit { EXIT_OK } else { EXIT_MISS })
}

fn number(out: &mut impl Write, value: Option<u64>) -> anyhow::Result<u8> {
    match value {
        Some(n) => {
            writeln!(out, "{n}")?;
            Ok(EXIT_OK)
        }
        None => {
            writeln!(out, "NOT_FOUND")?;
            Ok(EXIT_MISS)
        }
    }
}

fn seconds(name: &str, value: f64) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(value).map_err(|_| anyhow!("{name} must be a non-negative number"))
}

fn run_bench(server: &str, args: &BenchArgs) -> anyhow::Result<u8> {
    // Resolved once: the bench talks to this one address only.
    let addr: SocketAddr = server
        .to_socket_addrs()
        .with_context(|| format!("cannot resolve {server}"))?
        .next()
        .ok_or_else(|| anyhow!("{server} resolves to no address"))?;
    let get_ratio = args.get_ratio.unwrap_or(match args.workload {
        Workload::Get => 1.0,
        Workload::Set => 0.0,
        Workload::Mixed => 0.9,
    });
    let duration = match (args.duration_s, args.ops) {
        (Some(s), _) => Some(seconds("--duration-s", s)?),
        (None, Some(_)) => None,
        (None, None) => Some(Duration::from_secs(10)),
    };
    if args.threads == 0 || args.threads > BENCH_THREADS_MAX {
        bail!("--threads must be 1..={BENCH_THREADS_MAX}");
    }
    let protocol = match args.protocol {
        BenchProtocol::Memcache => Protocol::Memcache,
        BenchProtocol::RedisSetWait => Protocol::Peer(PeerProtocol::RedisSetWait {
            replicas: args.wait_replicas,
        }),
        BenchProtocol::EtcdPut => Protocol::Peer(PeerProtocol::EtcdPut),
    };
    let config = BenchConfig {
        server: addr,
        protocol,
        connections: args.connections,
        pipeline: args.pipeline,
        keys: args.keys,
        key_size: args.key_size,
        value_size: args.value_size,
        get_ratio,
        duration,
        ops: args.ops,
        warmup: seconds("--warmup-s", args.warmup_s)?,
        preload: args.preload,
        preload_depth: args.preload_depth,
        progress: std::io::stderr().is_terminal(),
        seed: args.seed,
    };
    let runtime = if args.threads == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(args.threads)
            .enable_all()
            .build()
    }
    .context("cannot start the runtime")?;
    let report = runtime.block_on(bench::run(config))?;
    if args.json {
        println!("{}", report.to_json());
    } else {
        println!("{}", report.to_text());
    }
    Ok(if report.errors == 0 && report.connection_errors == 0 {
        EXIT_OK
    } else {
        EXIT_ERROR
    })
}
