//! `store`: run the pieces of a store cluster.
//!
//! `store addsrv` starts a server; started without `--lb` it serves alone as
//! a group of one, durable on its own disk. `store addlb` starts the load
//! balancer that registers servers and runs elections.

use std::net::IpAddr;
use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use server::config::{
    Config, CONNECTIONS_MAX_DEFAULT, PORT_DEFAULT, SNAPSHOT_LOG_BYTES_DEFAULT, THREADS_DEFAULT,
};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "store",
    version,
    about = "A durable key-value store that speaks memcached's text protocol"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start a server (memcached text protocol on TCP).
    ///
    /// Examples:
    ///   store addsrv                          # 127.0.0.1:11211, data in ./store-data/server-11211
    ///   store addsrv -p 22122 --data-dir /var/lib/store
    ///   store addsrv -p 22122 -c 4096 -I 2m -t 4
    #[command(verbatim_doc_comment)]
    Addsrv(Box<AddsrvArgs>),
    /// Start the load balancer: registers servers, runs elections, answers
    /// `get-servers` and `stats` on its TCP port.
    ///
    /// Examples:
    ///   store addlb                           # tcp and udp 127.0.0.1:11311, data in ./store-data/lb-11311
    ///   store addlb -p 22311 --udp-port 22312 --data-dir /var/lib/store-lb
    ///   store addlb --heartbeat-ms 50 --election-timeout-ms 500
    ///   store addlb -p 11312 --peers 127.0.0.1:11311,127.0.0.1:11312,127.0.0.1:11313 \
    ///     --cluster-file store-data/cluster  # one of a group of three LBs
    #[command(verbatim_doc_comment)]
    Addlb(AddlbArgs),
    /// Start a whole local cluster: a group of three LBs (or one) and N
    /// servers, data under one directory. Ctrl-C stops it; run again with
    /// the same --data-dir to bring it back with its data.
    ///
    /// Examples:
    ///   store up                              # LBs on 11311..11313, 3 servers on 11314..11316
    ///   store up --servers 5 --data-dir /tmp/five --port 22311
    #[command(verbatim_doc_comment)]
    Up(UpArgs),
    /// Show the cluster: each LB of the LB group (role, LB term, log
    /// indexes), then, as the leading LB sees it, the term, the leader, and
    /// each server's role, indexes and lag.
    ///
    /// Examples:
    ///   store status
    ///   store status --lb 127.0.0.1:22311 --json
    #[command(verbatim_doc_comment)]
    Status(StatusArgs),
    /// Ask the LB to take a server out of the group: the leader writes a
    /// configuration entry without it, and the LB forgets it once that is
    /// in the leader's configuration. The id is the one `store status`
    /// shows. The request carries a proof of the cluster secret (read from
    /// the cluster file; the secret itself never leaves this machine).
    /// Exits 0 on OK, 1 if the LB does not know the id, 2 on error.
    ///
    /// Examples:
    ///   store remove-server 12345678901234567
    ///   store remove-server 12345678901234567 --lb 127.0.0.1:22311 \
    ///       --cluster-file /tmp/five/lb/cluster
    #[command(verbatim_doc_comment)]
    RemoveServer(RemoveServerArgs),
    /// Add an LB to the LB group: the group commits it in its list (one
    /// change at a time), then start it with `store addlb --join`. It
    /// catches up as a learner, then votes. Authenticated like
    /// remove-server. Prints `OK <id>`; exits 0 when added, 1 if the group
    /// has it already, 2 on error.
    ///
    /// Examples:
    ///   store add-lb 127.0.0.1:11314 --lb 127.0.0.1:11311 \
    ///       --cluster-file store-data/cluster/cluster
    ///   store addlb -p 11314 --join 127.0.0.1:11311 \
    ///       --cluster-file store-data/cluster/cluster
    #[command(verbatim_doc_comment)]
    AddLb(LbChangeArgs),
    /// Take an LB out of the LB group (one change at a time; the leading
    /// LB too: it hands over once its removal is committed). The LB taken
    /// out stops by itself. Exits 0 when removed, 1 if the group has no
    /// such LB, 2 on error.
    ///
    /// Example:
    ///   store remove-lb 127.0.0.1:11311 --lb 127.0.0.1:11312 \
    ///       --cluster-file store-data/cluster/cluster
    #[command(verbatim_doc_comment)]
    RemoveLb(LbChangeArgs),
}

#[derive(clap::Args)]
struct LbChangeArgs {
    /// The LB's discovery address, HOST:PORT (as --lb lists it).
    addr: std::net::SocketAddr,
    /// An LB of the group's TCP address, or several, comma-separated: the
    /// first that takes the connection is asked (it points at the leading
    /// LB).
    #[arg(long, default_value_t = format!("127.0.0.1:{}", lb::driver::PORT_DEFAULT))]
    lb: String,
    /// The cluster file every LB of the group uses (its secret proves the
    /// request) [default: cluster in the LB's default data directory].
    #[arg(long)]
    cluster_file: Option<PathBuf>,
}

#[derive(clap::Args)]
struct UpArgs {
    /// How many servers.
    #[arg(long, default_value_t = 3)]
    servers: usize,
    /// How many LBs: a group of LBs that elects its own leader, so failover
    /// goes on with one LB dead, or 1 [default: 3, or 1 for a directory an
    /// LB alone made before].
    #[arg(long)]
    lbs: Option<usize>,
    /// Where the LBs' and every server's data go.
    #[arg(long, default_value = "store-data/cluster")]
    data_dir: PathBuf,
    /// The first LB's port (TCP discovery and UDP control); the other LBs
    /// take the next ports, and the servers the ones after when they are
    /// free. An LB of a group also uses UDP port + 1000.
    #[arg(short = 'p', long = "port", default_value_t = lb::driver::PORT_DEFAULT)]
    port: u16,
    #[arg(long, default_value_t = lb::driver::HEARTBEAT_MS_DEFAULT)]
    heartbeat_ms: u64,
    #[arg(long, default_value_t = lb::driver::ELECTION_TIMEOUT_MS_DEFAULT)]
    election_timeout_ms: u64,
}

#[derive(clap::Args)]
struct StatusArgs {
    /// The LB's TCP address, or several, comma-separated: the first that
    /// answers is shown.
    #[arg(long, default_value_t = format!("127.0.0.1:{}", lb::driver::PORT_DEFAULT))]
    lb: String,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
struct RemoveServerArgs {
    /// The server's id, as `store status` shows it.
    id: u64,
    /// The LB's TCP address, or several, comma-separated: the first that
    /// takes the connection is asked.
    #[arg(long, default_value_t = format!("127.0.0.1:{}", lb::driver::PORT_DEFAULT))]
    lb: String,
    /// The cluster file the LB wrote (its secret proves the request)
    /// [default: cluster in the LB's default data directory; under
    /// `store up`, DATA_DIR/lb/cluster].
    #[arg(long)]
    cluster_file: Option<PathBuf>,
}

#[derive(clap::Args)]
struct AddlbArgs {
    /// TCP discovery port (`get-servers`, `stats`, `remove-server`).
    #[arg(short = 'p', long = "port", default_value_t = lb::driver::PORT_DEFAULT)]
    port: u16,
    /// UDP control port [default: the same number as -p].
    #[arg(long)]
    udp_port: Option<u16>,
    /// Address to listen on.
    #[arg(short = 'l', long = "listen", default_value = "127.0.0.1")]
    listen: IpAddr,
    /// Directory for the cluster file and the registry
    /// [default: ./store-data/lb-PORT].
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Interval between heartbeats to every server, in milliseconds.
    #[arg(long, default_value_t = lb::driver::HEARTBEAT_MS_DEFAULT)]
    heartbeat_ms: u64,
    /// Election timeout in milliseconds: how long an election may go
    /// undecided and how long followers may lose the leader.
    #[arg(long, default_value_t = lb::driver::ELECTION_TIMEOUT_MS_DEFAULT)]
    election_timeout_ms: u64,
    /// Every LB of a group of LBs, this one included, as HOST:PORT
    /// (discovery addresses, comma-separated; the same list servers and
    /// clients take as --lb). The LBs keep the registry in a replicated log
    /// on UDP PORT+1000 and elect the one that acts. Without it, the LB is
    /// alone.
    #[arg(long)]
    peers: Option<String>,
    /// Join a running group of LBs instead, after `store add-lb` added
    /// this one: HOST:PORT of some of its LBs (comma-separated) to ask for
    /// the group's list. Give the same on a restart (the LB keeps the last
    /// list it knew, and needs none of them then).
    #[arg(long, conflicts_with = "peers")]
    join: Option<String>,
    /// The cluster file to use, shared by every LB of a group
    /// [default: DATA_DIR/cluster, made on the first start].
    #[arg(long)]
    cluster_file: Option<PathBuf>,
    /// Verbose logging; repeat for more.
    #[arg(short = 'v', action = clap::ArgAction::Count)]
    verbose: u8,
}

#[derive(clap::Args)]
struct AddsrvArgs {
    /// TCP port to listen on.
    #[arg(short = 'p', long = "port", default_value_t = PORT_DEFAULT)]
    port: u16,
    /// Address to listen on.
    #[arg(short = 'l', long = "listen", default_value = "127.0.0.1")]
    listen: IpAddr,
    /// Listen on this Unix socket instead of TCP (as memcached's -s); for
    /// a server alone (a server of a group, --lb, listens on TCP).
    #[arg(
        short = 's',
        long = "unix-socket",
        value_name = "PATH",
        conflicts_with = "lb"
    )]
    unix_socket: Option<PathBuf>,
    /// Permissions of the Unix socket, octal (as memcached's -a).
    #[arg(short = 'a', long = "unix-mask", value_name = "MASK", default_value = "700",
          value_parser = parse_octal_mask, requires = "unix_socket")]
    unix_mask: u32,
    /// Maximum simultaneous connections; more are answered
    /// `ERROR Too many open connections` and closed.
    #[arg(short = 'c', long = "conn-limit", default_value_t = CONNECTIONS_MAX_DEFAULT)]
    connections_max: usize,
    /// Largest value stored, with an optional k/m suffix (as memcached's -I).
    #[arg(short = 'I', long = "max-item-size", default_value = "1m", value_parser = parse_size)]
    item_bytes_max: usize,
    /// Worker threads serving connections.
    #[arg(short = 't', long = "threads", default_value_t = THREADS_DEFAULT)]
    threads: usize,
    /// Memory for items, in megabytes (as memcached's -m): a write that
    /// would take them over it is answered `SERVER_ERROR out of memory
    /// storing object` and stores nothing. 0: no limit
    /// [default: half of the machine's memory].
    #[arg(short = 'm', long = "memory-limit", value_name = "MEGABYTES")]
    memory_limit_mb: Option<u64>,
    /// Let the `shutdown` command stop the server (as memcached's -A);
    /// without it `shutdown` is answered `ERROR: shutdown not enabled`.
    #[arg(short = 'A', long = "enable-shutdown")]
    shutdown_enabled: bool,
    /// Text connections log in first (as memcached's -Y): `user:password`
    /// lines, read again on SIGHUP. A client sends
    /// `set <any> <any> <any> <len>` with `<user> <password>` as the data;
    /// before that every command gets `CLIENT_ERROR unauthenticated`.
    #[arg(short = 'Y', long = "auth-file", value_name = "FILE")]
    auth_file: Option<PathBuf>,
    /// Binary connections authenticate with SASL PLAIN first (as
    /// memcached's -S); needs --sasl-pwdb. Without -Y, text connections
    /// are refused, as memcached refuses them under -S.
    #[arg(short = 'S', long = "enable-sasl", requires = "sasl_pwdb")]
    sasl: bool,
    /// The SASL users: `user:password` lines, read again on SIGHUP (the
    /// format of memcached's MEMCACHED_SASL_PWDB file).
    #[arg(long, value_name = "FILE", requires = "sasl")]
    sasl_pwdb: Option<PathBuf>,
    /// Clients connect with TLS (as memcached's -Z), and so do the
    /// forwarding connections between servers; needs --ssl-chain-cert.
    /// Certificates are read again on SIGHUP and on `refresh_certs`.
    #[arg(short = 'Z', long = "enable-ssl")]
    ssl: bool,
    /// memcached's TLS options, `-o ssl_chain_cert=FILE,ssl_key=FILE,...`
    /// (ssl_chain_cert, ssl_key, ssl_ca_cert, ssl_verify_mode,
    /// ssl_min_version), beside the --ssl-* flags.
    #[arg(short = 'o', value_name = "KEY=VALUE[,...]")]
    options: Vec<String>,
    /// The server's certificate chain, PEM (memcached's ssl_chain_cert).
    #[arg(long, value_name = "FILE")]
    ssl_chain_cert: Option<PathBuf>,
    /// Its private key, PEM [default: in the chain file] (ssl_key).
    #[arg(long, value_name = "FILE")]
    ssl_key: Option<PathBuf>,
    /// Authorities trusted for client certificates, and by a follower for
    /// its leader's certificate [default for the latter: the chain file's
    /// certificates] (ssl_ca_cert).
    #[arg(long, value_name = "FILE")]
    ssl_ca_cert: Option<PathBuf>,
    /// Client certificates: 0 not asked for, 1 checked when sent, 2 (or 3)
    /// required (ssl_verify_mode).
    #[arg(long, value_name = "0-3")]
    ssl_verify_mode: Option<u8>,
    /// Oldest TLS version: 2 for TLS 1.2 (0 and 1 also mean 1.2, the oldest
    /// rustls speaks), 3 for TLS 1.3 (ssl_min_version).
    #[arg(long, value_name = "0-3")]
    ssl_min_version: Option<u8>,
    /// Verbose logging; repeat for more.
    #[arg(short = 'v', action = clap::ArgAction::Count)]
    verbose: u8,
    /// Directory for the log and the keystore file
    /// [default: ./store-data/server-PORT].
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Write a keystore file (snapshot) and delete the log before it once this
    /// many bytes of log were written since the last one (k/m/g suffix).
    #[arg(long, default_value_t = SNAPSHOT_LOG_BYTES_DEFAULT, value_parser = parse_size_u64)]
    snapshot_log_bytes: u64,
    /// Join the replica group whose load balancer listens here (its UDP
    /// control port), or whose LB group does: every LB, comma-separated
    /// (the same list as their --peers). Without it the server serves alone.
    #[arg(long, value_name = "HOST:PORT[,HOST:PORT...]")]
    lb: Option<String>,
    /// The cluster file the LB wrote (cluster id and secret)
    /// [default: cluster in the LB's default data directory].
    #[arg(long, requires = "lb")]
    cluster_file: Option<PathBuf>,
    /// UDP port for replication [default: any free port].
    #[arg(long, default_value_t = 0, requires = "lb")]
    udp_port: u16,
    /// The UDP address to register with the LB (peers send to it), when a
    /// relay or NAT stands between them and this server [default: the bound
    /// address].
    #[arg(long, value_name = "HOST:PORT", requires = "lb")]
    udp_advertise: Option<std::net::SocketAddr>,
    /// Leader heartbeat interval.
    #[arg(long, default_value_t = 100, requires = "lb")]
    heartbeat_ms: u64,
    /// A leader that has not heard a majority for this long steps down.
    #[arg(long, default_value_t = 1000, requires = "lb")]
    election_timeout_ms: u64,
    /// `linearizable` (followers forward reads; the leader answers from its
    /// state while a majority's recent answers give it a lease, and
    /// confirms its leadership with a majority round otherwise),
    /// `read-index` (a majority round for every read, no reliance on clock
    /// rates) or `local` (every server answers from its own state,
    /// possibly stale).
    #[arg(long, default_value = "linearizable", value_parser = ["linearizable", "read-index", "local"], requires = "lb")]
    read_mode: String,
}

/// Parses `1048576`, `1024k`, `1m` or `1g`.
fn parse_size_u64(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let (digits, unit) = match text.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((at, _)) => text.split_at(at),
        None => (text, ""),
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("not a size: {text:?}"))?;
    let scale = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1 << 10,
        "m" | "mb" => 1 << 20,
        "g" | "gb" => 1 << 30,
        _ => return Err(format!("unknown size unit {unit:?} (use k, m or g)")),
    };
    n.checked_mul(scale)
        .ok_or_else(|| format!("size too large: {text:?}"))
}

fn parse_size(text: &str) -> Result<usize, String> {
    parse_size_u64(text)
        .and_then(|n| usize::try_from(n).map_err(|_| format!("size too large: {text:?}")))
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Addsrv(args) => addsrv(*args),
        Command::Addlb(args) => match addlb(args) {
            // Taken out of its group (`store remove-lb`): a code of its
            // own, so a supervisor does not start it again.
            Err(e)
                if e.downcast_ref::<lb::LbError>()
                    .is_some_and(|e| matches!(e, lb::LbError::Removed)) =>
            {
                eprintln!("store addlb: {e:#}");
                std::process::exit(lb::driver::EXIT_REMOVED);
            }
            other => other,
        },
        Command::Up(args) => up(args),
        Command::Status(args) => status(args),
        Command::RemoveServer(args) => {
            let command = lb::discovery::remove_server_command(data::frame::ServerId(args.id));
            admin_exit(
                "remove-server",
                admin(&args.lb, args.cluster_file.as_deref(), &command),
            )
        }
        Command::AddLb(args) => change_lbs(&args, lb::discovery::LbChange::Add(args.addr)),
        Command::RemoveLb(args) => change_lbs(&args, lb::discovery::LbChange::Remove(args.addr)),
    }
}

/// `store add-lb` and `store remove-lb`: the change asked of the LBs.
fn change_lbs(args: &LbChangeArgs, change: lb::discovery::LbChange) -> ! {
    let result = admin(&args.lb, args.cluster_file.as_deref(), &change.command());
    admin_exit(change.verb(), result)
}

fn up(args: UpArgs) -> anyhow::Result<()> {
    check_timing(args.heartbeat_ms, args.election_timeout_ms)?;
    // A directory an LB alone made keeps its one LB: a new LB group would
    // start with an empty registry.
    let alone_before = args.data_dir.join("lb").is_dir() && !args.data_dir.join("lb-1").is_dir();
    let config = store::up::UpConfig {
        servers: args.servers,
        lbs: args
            .lbs
            .unwrap_or(if alone_before { 1 } else { UP_LBS_DEFAULT }),
        data_dir: args.data_dir,
        port: args.port,
        heartbeat_ms: args.heartbeat_ms,
        election_timeout_ms: args.election_timeout_ms,
        exe: std::env::current_exe().context("find this program")?,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("start the runtime")?;
    let shutdown = CancellationToken::new();
    // Handlers first: a Ctrl-C while the cluster starts still stops it cleanly.
    runtime.spawn(stop_on_signal(shutdown.clone()));
    let mut cluster = store::up::Cluster::start(&config)?;
    println!(
        "store cluster up: {} servers, data in {}",
        cluster.servers.len(),
        config.data_dir.display()
    );
    let lb_list: Vec<String> = cluster.lbs.iter().map(|lb| lb.to_string()).collect();
    let lb_list = lb_list.join(",");
    if let [lb] = cluster.lbs[..] {
        println!("  lb       {lb}   (get-servers, stats; store status --lb {lb})");
    } else {
        for (i, lb) in cluster.lbs.iter().enumerate() {
            println!("  lb-{}     {lb}   (get-servers, stats)", i + 1);
        }
    }
    for (i, server) in cluster.servers.iter().enumerate() {
        let role = store::up::role_of(&cluster.lbs, *server).unwrap_or_else(|| "starting".into());
        println!("  server-{} {}   ({role})", i + 1, server);
    }
    println!("Try, from another terminal:");
    println!("  cargo run --release --bin client -- --lb {lb_list} set hello world");
    println!("  cargo run --release --bin client -- --lb {lb_list} get hello");
    println!("  cargo run --release --bin store -- status --lb {lb_list}");
    println!(
        "Logs: {}/*.log. Ctrl-C stops the cluster.",
        config.data_dir.display()
    );
    runtime.block_on(async {
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep(std::time::Duration::from_millis(200)) => {
                    for gone in cluster.reap() {
                        println!("store up: {gone}");
                    }
                }
            }
        }
    });
    println!("stopping the cluster");
    cluster.stop();
    Ok(())
}

/// The LBs a `--lb` names (one, or several comma-separated).
fn lbs(text: &str) -> anyhow::Result<Vec<String>> {
    client::discovery::lb_list(text).ok_or_else(|| anyhow::anyhow!("--lb names no LB"))
}

/// A comma-separated list of LB addresses (IP:PORT), never empty.
fn lb_addrs(text: &str) -> anyhow::Result<Vec<std::net::SocketAddr>> {
    lbs(text)?
        .iter()
        .map(|lb| lb.parse().with_context(|| format!("not an address: {lb}")))
        .collect()
}

fn status(args: StatusArgs) -> anyhow::Result<()> {
    let lbs = lbs(&args.lb)?;
    let status = store::status::fetch_group(&lbs, std::time::Duration::from_secs(5))?;
    if args.json {
        println!("{}", store::status::render_group_json(&status));
    } else {
        print!("{}", store::status::render_group_table(&status));
    }
    Ok(())
}

/// LBs `store up` starts unless told: a group that survives one LB's loss.
const UP_LBS_DEFAULT: usize = 3;

/// How long an admin command (`remove-server`, `add-lb`, `remove-lb`)
/// waits to connect and for each of the LB's replies.
const ADMIN_TIMEOUT_MS: u64 = 5_000;
/// The LB's replies to `challenge` and an admin command are one line each
/// (`CHALLENGE <hex>`, `OK`, `NOT_FOUND`, an error with its reason);
/// anything longer is not an answer.
const ADMIN_REPLY_BYTES_MAX: usize = 512;

/// LBs an admin command asks at most: each of `--lb` and the leaders they
/// point at.
const ADMIN_ASKS_MAX: usize = 16;

/// What an LB answered to an admin command.
enum AdminReply {
    /// A reply that settles it (`OK ...`, `NOT_FOUND`, `EXISTS`).
    Done(String),
    /// It does not lead its LB group; the one at this address does.
    NotLeader(Option<std::net::SocketAddr>),
    /// It refused the proof of the cluster secret.
    Unauthenticated,
}

/// Asks the LBs of `lb` in turn (an LB that does not lead its group points
/// at the one that does, which is asked next) for a challenge, then
/// `command` with the proof of the cluster secret for it, prints the reply
/// that settles it and returns it; an error for anything else or if no LB
/// settles it.
fn admin(
    lb: &str,
    cluster_file: Option<&std::path::Path>,
    command: &str,
) -> anyhow::Result<String> {
    let addrs = lb_addrs(lb)?;
    // The default cluster file is the first LB's (every LB has the same).
    let (path, cluster) = load_cluster_file(cluster_file, addrs[0].port())?;
    let mut to_ask: std::collections::VecDeque<std::net::SocketAddr> = addrs.into();
    let mut failures = Vec::new();
    for _ in 0..ADMIN_ASKS_MAX {
        let Some(addr) = to_ask.pop_front() else {
            break;
        };
        match ask_admin(addr, command, &cluster) {
            Ok(AdminReply::Done(line)) => {
                println!("{line}");
                return Ok(line);
            }
            Ok(AdminReply::NotLeader(leader)) => {
                failures.push(format!("{addr}: does not lead the LB group"));
                if let Some(leader) = leader {
                    to_ask.push_front(leader);
                }
            }
            Ok(AdminReply::Unauthenticated) => bail!(
                "the LB at {addr} refused the proof: is {} the cluster file of the cluster this LB runs?",
                path.display()
            ),
            Err(e) => failures.push(format!("{addr}: {e:#}")),
        }
    }
    bail!("no LB carried out `{command}`: {}", failures.join("; "))
}

/// One LB's answer to `command`, after its challenge.
fn ask_admin(
    addr: std::net::SocketAddr,
    command: &str,
    cluster: &data::cluster_file::ClusterFile,
) -> anyhow::Result<AdminReply> {
    use std::io::Write;
    let timeout = std::time::Duration::from_millis(ADMIN_TIMEOUT_MS);
    let mut stream = std::net::TcpStream::connect_timeout(&addr, timeout).context("connect")?;
    stream.set_read_timeout(Some(timeout))?;
    stream
        .write_all(b"challenge\r\n")
        .context("send to the LB")?;
    let line = read_line(&mut stream)?;
    let Some(challenge) = lb::discovery::parse_challenge(&line) else {
        bail!("the LB gave no challenge (an older LB?): {line:?}");
    };
    let request = lb::discovery::authenticated_line(command, &cluster.secret, &challenge);
    stream
        .write_all(request.as_bytes())
        .context("send to the LB")?;
    let line = read_line(&mut stream)?;
    match line.as_str() {
        "OK" | "NOT_FOUND" | "EXISTS" => Ok(AdminReply::Done(line)),
        other if other.starts_with("OK ") => Ok(AdminReply::Done(line)),
        "NOT_LEADER" => Ok(AdminReply::NotLeader(None)),
        other if other.starts_with("NOT_LEADER ") => Ok(AdminReply::NotLeader(
            other["NOT_LEADER ".len()..].parse().ok(),
        )),
        other if other.starts_with("CLIENT_ERROR unauthenticated") => {
            println!("{line}");
            Ok(AdminReply::Unauthenticated)
        }
        other => match other.strip_prefix("SERVER_ERROR ") {
            Some(why) => bail!("the LB at {addr}: {why}"),
            None => bail!("unexpected reply from the LB: {other:?}"),
        },
    }
}

/// Exit codes of admin commands, part of their interface (scripts tell
/// "nothing to do" from "could not ask"): 0 done, 1 the LB knows no such
/// member (or already has it), 2 an error.
fn admin_exit(what: &str, result: anyhow::Result<String>) -> ! {
    let code = match result {
        Ok(line) if line == "OK" || line.starts_with("OK ") => 0,
        Ok(_) => 1,
        Err(e) => {
            eprintln!("store {what}: {e:#}");
            2
        }
    };
    std::process::exit(code);
}

/// The cluster file at `path`, by default the one in the default data
/// directory of the LB on `lb_port`; and where it was read.
fn load_cluster_file(
    path: Option<&std::path::Path>,
    lb_port: u16,
) -> anyhow::Result<(PathBuf, data::cluster_file::ClusterFile)> {
    let path = path.map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from("store-data")
            .join(format!("lb-{lb_port}"))
            .join("cluster")
    });
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("read the cluster file {} (--cluster-file)", path.display()))?;
    let cluster = data::cluster_file::ClusterFile::parse(&text)
        .with_context(|| format!("parse the cluster file {}", path.display()))?;
    Ok((path, cluster))
}

/// One reply line from the LB, without its line end.
fn read_line(stream: &mut std::net::TcpStream) -> anyhow::Result<String> {
    use std::io::Read;
    let mut reply = Vec::new();
    let mut byte = [0u8; 1];
    // Byte by byte: the LB answers each request before the next is sent,
    // so nothing after the newline is there to lose anyway, and the lines
    // are short.
    while !reply.ends_with(b"\n") {
        if reply.len() >= ADMIN_REPLY_BYTES_MAX {
            bail!("the LB's reply is too long");
        }
        let n = stream.read(&mut byte).context("read the LB's reply")?;
        if n == 0 {
            bail!("the LB closed the connection without a reply");
        }
        reply.push(byte[0]);
    }
    let line = String::from_utf8_lossy(&reply);
    Ok(line.trim_end().to_string())
}

/// The timing flags' one rule, for servers and the LB alike
/// ([`server::replica::Timing::validate`]).
fn check_timing(heartbeat_ms: u64, election_timeout_ms: u64) -> anyhow::Result<()> {
    let timing = server::replica::Timing::new(heartbeat_ms, election_timeout_ms);
    if timing.validate().is_err() {
        let heartbeats = server::replica::LEASE_HEARTBEATS;
        bail!(
            "--heartbeat-ms must be at least 1 and --election-timeout-ms at least {heartbeats} \
             times it (got {heartbeat_ms} and {election_timeout_ms})"
        );
    }
    Ok(())
}

fn addlb(args: AddlbArgs) -> anyhow::Result<()> {
    check_timing(args.heartbeat_ms, args.election_timeout_ms)?;
    init_tracing(args.verbose);
    let config = lb::LbConfig {
        listen: args.listen,
        tcp_port: args.port,
        udp_port: args.udp_port.unwrap_or(args.port),
        data_dir: args
            .data_dir
            .unwrap_or_else(|| PathBuf::from("store-data").join(format!("lb-{}", args.port))),
        heartbeat_ms: args.heartbeat_ms,
        election_timeout_ms: args.election_timeout_ms,
        peers: match &args.peers {
            None => Vec::new(),
            Some(text) => lb_addrs(text).context("--peers")?,
        },
        join: match &args.join {
            None => Vec::new(),
            Some(text) => lb_addrs(text).context("--join")?,
        },
        cluster_file: args.cluster_file,
    };
    // The LB's work is small: a current-thread runtime keeps it on one core.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("start the runtime")?;
    runtime.block_on(async move {
        let shutdown = CancellationToken::new();
        tokio::spawn(stop_on_signal(shutdown.clone()));
        let cluster_file = config.cluster_file_path();
        lb::run(config, shutdown, |tcp, udp| {
            eprintln!(
                "store lb listening on tcp {tcp} udp {udp}, cluster file {}",
                cluster_file.display()
            );
        })
        .await
        .context("load balancer failed")
    })
}

fn addsrv(args: AddsrvArgs) -> anyhow::Result<()> {
    if args.item_bytes_max == 0 || args.item_bytes_max > data::limits::ITEM_BYTES_MAX {
        bail!(
            "-I must be between 1 byte and {} bytes",
            data::limits::ITEM_BYTES_MAX
        );
    }
    if args.threads == 0 || args.connections_max == 0 {
        bail!("-t and -c must be at least 1");
    }
    check_timing(args.heartbeat_ms, args.election_timeout_ms)?;
    init_tracing(args.verbose);
    let memory_limit_bytes = match args.memory_limit_mb {
        Some(mb) => mb
            .checked_mul(1024 * 1024)
            .context("-m is in megabytes and too large")?,
        None => server::memory::default_limit_bytes().unwrap_or_else(|| {
            eprintln!("store: cannot read the machine's memory size; no memory limit (set -m)");
            server::memory::MEMORY_UNLIMITED
        }),
    };
    let tls = tls_settings(&args)?;
    let config = Config {
        unix_socket: args.unix_socket.map(|path| server::config::UnixSocket {
            path,
            mask: args.unix_mask,
        }),
        listen: args.listen,
        port: args.port,
        connections_max: args.connections_max,
        item_bytes_max: args.item_bytes_max,
        threads: args.threads,
        verbose: args.verbose,
        data_dir: args
            .data_dir
            .unwrap_or_else(|| PathBuf::from("store-data").join(format!("server-{}", args.port))),
        snapshot_log_bytes: args.snapshot_log_bytes,
        memory_limit_bytes,
        shutdown_enabled: args.shutdown_enabled,
        tls,
        auth_file: args.auth_file,
        sasl_pwdb: args.sasl_pwdb.filter(|_| args.sasl),
        cluster: match args.lb {
            None => None,
            Some(text) => {
                let lbs = lb_addrs(&text)?;
                let (_, cluster) = load_cluster_file(args.cluster_file.as_deref(), lbs[0].port())?;
                Some(server::config::ClusterSettings {
                    group: data::frame::GroupId::FIRST,
                    elector: server::config::Elector::Lb(lbs),
                    cluster,
                    udp_listen: std::net::SocketAddr::new(args.listen, args.udp_port),
                    udp_advertise: args.udp_advertise,
                    timing: server::replica::Timing::new(
                        args.heartbeat_ms,
                        args.election_timeout_ms,
                    ),
                    read_mode: match args.read_mode.as_str() {
                        "local" => server::config::ReadMode::Local,
                        "read-index" => server::config::ReadMode::ReadIndex,
                        _ => server::config::ReadMode::Linearizable,
                    },
                })
            }
        },
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(config.threads)
        .enable_all()
        .build()
        .context("start the runtime")?;
    runtime.block_on(async move {
        let shutdown = CancellationToken::new();
        tokio::spawn(stop_on_signal(shutdown.clone()));
        let data_dir = config.data_dir.clone();
        let memory = match memory_limit_bytes {
            server::memory::MEMORY_UNLIMITED => "no memory limit".to_string(),
            bytes => format!("memory limit {} MiB", bytes / (1024 * 1024)),
        };
        server::run(config, shutdown, |listening| {
            eprintln!(
                "store server listening on {listening}, data in {}, {memory}",
                data_dir.display()
            );
        })
        .await
        .context("server failed")
    })
}

/// `-a`: permission bits in octal, as memcached reads them.
fn parse_octal_mask(text: &str) -> Result<u32, String> {
    u32::from_str_radix(text, 8)
        .ok()
        .filter(|mask| *mask <= 0o777)
        .ok_or_else(|| format!("{text}: expected octal permissions, 0 to 777"))
}

/// The TLS settings from `-Z`, the `--ssl-*` flags and memcached's
/// `-o ssl_*=...` options (a flag wins over an option).
fn tls_settings(args: &AddsrvArgs) -> anyhow::Result<Option<server::config::TlsSettings>> {
    let mut chain_cert = None;
    let mut key = None;
    let mut ca_cert = None;
    let mut verify_mode = None;
    let mut min_version = None;
    for option in args.options.iter().flat_map(|o| o.split(',')) {
        let (name, value) = option
            .split_once('=')
            .with_context(|| format!("-o {option}: expected KEY=VALUE"))?;
        let number = || -> anyhow::Result<u8> {
            value
                .parse()
                .with_context(|| format!("-o {name}: not a number: {value}"))
        };
        match name {
            "ssl_chain_cert" => chain_cert = Some(PathBuf::from(value)),
            "ssl_key" => key = Some(PathBuf::from(value)),
            "ssl_ca_cert" => ca_cert = Some(PathBuf::from(value)),
            "ssl_verify_mode" => verify_mode = Some(number()?),
            "ssl_min_version" => min_version = Some(number()?),
            _ => bail!("-o {name}: not an option this server takes (ssl_chain_cert, ssl_key, ssl_ca_cert, ssl_verify_mode, ssl_min_version)"),
        }
    }
    if !args.ssl {
        if args.ssl_chain_cert.is_some() || chain_cert.is_some() {
            bail!("the TLS settings need -Z to take effect");
        }
        return Ok(None);
    }
    let chain_cert = args
        .ssl_chain_cert
        .clone()
        .or(chain_cert)
        .context("-Z needs --ssl-chain-cert FILE (or -o ssl_chain_cert=FILE)")?;
    let mode = args.ssl_verify_mode.or(verify_mode).unwrap_or(0);
    let verify_mode = server::config::VerifyMode::from_memcached(mode)
        .with_context(|| format!("ssl_verify_mode {mode}: must be 0, 1, 2 or 3"))?;
    let min_version = args.ssl_min_version.or(min_version).unwrap_or(2);
    if min_version > 3 {
        bail!("ssl_min_version {min_version}: must be 0, 1, 2 or 3");
    }
    Ok(Some(server::config::TlsSettings {
        chain_cert,
        key: args.ssl_key.clone().or(key),
        ca_cert: args.ssl_ca_cert.clone().or(ca_cert),
        verify_mode,
        tls13_only: min_version == 3,
    }))
}

/// Cancels `shutdown` on the first SIGTERM or SIGINT.
async fn stop_on_signal(shutdown: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::warn!("cannot install signal handlers; stop with SIGKILL");
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    tracing::info!("shutting down");
    shutdown.cancel();
}

fn init_tracing(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("STORE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1m"), Ok(1 << 20));
        assert_eq!(parse_size("512k"), Ok(512 << 10));
        assert_eq!(parse_size("100"), Ok(100));
        assert!(parse_size("1x").is_err());
        assert!(parse_size("").is_err());
    }
}
