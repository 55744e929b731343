//! `store up`: a whole local cluster from one command. Starts the LBs (a
//! group of three by default, DESIGN §3c, or one) and N servers as child
//! processes of this binary, data under one directory, one cluster file
//! wired to every process; the first server bootstraps the group and the
//! others join one at a time (DESIGN §3, membership). Prints
//! the addresses and a `client` line to try, and on Ctrl-C (or SIGTERM)
//! stops them all cleanly. Run again with the same directory, it brings the
//! same cluster back with its data.
//!
//! It never restarts a server that dies: killing one is how a user tries a
//! failover, and the cluster carries on without it.

use std::fs::{self, OpenOptions};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::status;

/// Servers `store up` starts at most.
pub const SERVERS_MAX: usize = 9;
/// LBs `store up` starts at most (an LB group's size).
pub const LBS_MAX: usize = lb::group::LBS_MAX;
/// Starts of a server `store up` makes, each on another port if the last
/// one was taken meanwhile.
const SERVER_START_ATTEMPTS: usize = 3;
/// How long a process gets to come up (bind, recover) before `store up` gives up.
pub const START_DEADLINE_MS: u64 = 30_000;
/// How long a server gets to become leader or voter after it started.
pub const JOIN_DEADLINE_MS: u64 = 30_000;
/// How long children get to exit after SIGTERM before SIGKILL.
pub const STOP_DEADLINE_MS: u64 = 10_000;
const POLL_MS: u64 = 50;
/// Lines of a process's log shown when it exits during start-up.
const LOG_TAIL_LINES: usize = 8;

#[derive(Clone, Debug)]
pub struct UpConfig {
    pub servers: usize,
    /// LBs: 1, an LB alone, or a group (`--peers`) of this many.
    pub lbs: usize,
    pub data_dir: PathBuf,
    /// The first LB's TCP discovery port (its UDP control port has the
    /// same number); the others take the next ones, the servers those after.
    pub port: u16,
    pub heartbeat_ms: u64,
    pub election_timeout_ms: u64,
    /// This binary, to start `addlb` and `addsrv` with.
    pub exe: PathBuf,
}

/// One child process and what it is.
struct Process {
    name: String,
    args: Vec<String>,
    log_path: PathBuf,
    child: Child,
    exited: bool,
}

/// The running cluster; its processes are stopped when it is dropped.
pub struct Cluster {
    processes: Vec<Process>,
    /// The first LB.
    pub lb: SocketAddr,
    /// Every LB (`lb-1`, `lb-2`, ... in a group; `lb` alone).
    pub lbs: Vec<SocketAddr>,
    pub servers: Vec<SocketAddr>,
    exe: PathBuf,
}

impl Cluster {
    /// Starts the LB, then the servers one at a time; returns once every
    /// server is in the group (or reports which did not make it).
    pub fn start(config: &UpConfig) -> anyhow::Result<Cluster> {
        Cluster::start_with(config, &[])
    }

    /// Like [`Cluster::start`], with more `store addsrv` flags for every
    /// server (say `--snapshot-log-bytes 64k` to make compaction frequent).
    pub fn start_with(config: &UpConfig, server_args: &[String]) -> anyhow::Result<Cluster> {
        if config.servers == 0 || config.servers > SERVERS_MAX {
            bail!("--servers must be between 1 and {SERVERS_MAX}");
        }
        if config.lbs == 0 || config.lbs > LBS_MAX {
            bail!("--lbs must be between 1 and {LBS_MAX}");
        }
        fs::create_dir_all(&config.data_dir)
            .with_context(|| format!("create {}", config.data_dir.display()))?;
        let lbs = lb_addrs(config)?;
        let mut cluster = Cluster {
            processes: Vec::new(),
            lb: lbs[0],
            lbs: lbs.clone(),
            servers: Vec::new(),
            exe: config.exe.clone(),
        };
        let timing = [
            "--heartbeat-ms".to_string(),
            config.heartbeat_ms.to_string(),
            "--election-timeout-ms".to_string(),
            config.election_timeout_ms.to_string(),
        ];
        let cluster_file = cluster.start_lbs(config, &timing)?;
        // Servers that require a login (-Y, -S) answer `stats` to a
        // connection that proves the cluster secret.
        let secret = lb::cluster_file::load(&cluster_file)
            .with_context(|| format!("read {}", cluster_file.display()))?
            .secret;
        // Servers under -Z answer over TLS only.
        let tls = tls_of(server_args)?;
        let lb_list: Vec<String> = lbs.iter().map(SocketAddr::to_string).collect();
        let lb_list = lb_list.join(",");

        for i in 1..=config.servers {
            let name = format!("server-{i}");
            let mut port = free_port(config.port.wrapping_add((config.lbs - 1 + i) as u16))?;
            let mut attempts = 0;
            let addr = loop {
                attempts += 1;
                let addr = SocketAddr::from(([127, 0, 0, 1], port));
                let mut args = vec!["addsrv".to_string(), "-p".into(), port.to_string()];
                args.extend(["--data-dir".into(), path_arg(&config.data_dir.join(&name))]);
                args.extend(["--lb".into(), lb_list.clone()]);
                args.extend(["--cluster-file".into(), path_arg(&cluster_file)]);
                args.extend(timing.iter().cloned());
                args.extend(memory_args(config.servers, server_args));
                args.extend(server_args.iter().cloned());
                cluster.spawn(config, &name, &args)?;
                // Ours, not another process that took the port between the
                // look and the bind (then ours exits: taken, try another).
                let pid = cluster.pid_of(&name);
                match cluster.wait_started(&name, || serves_as(addr, pid, &secret, tls.clone())) {
                    Ok(()) => break addr,
                    Err(e)
                        if attempts < SERVER_START_ATTEMPTS
                            && format!("{e:#}").contains("in use") =>
                    {
                        cluster.processes.retain(|p| p.name != name);
                        port = free_port(0)?;
                    }
                    Err(e) => {
                        return Err(e.context(format!("{name} did not come up (see {name}.log)")))
                    }
                }
            };
            // One change at a time: the next server starts once this one is
            // the leader (the first) or a voter.
            let joined = wait_until(JOIN_DEADLINE_MS, || {
                Ok(role_of(&lbs, addr).is_some_and(|role| role == "leader" || role == "follower"))
            });
            if joined.is_err() {
                eprintln!(
                    "store up: {name} has not joined the group yet; carrying on (see {name}.log)"
                );
            }
            cluster.servers.push(addr);
        }
        Ok(cluster)
    }

    /// Starts the LBs and returns the cluster file every process uses: an
    /// LB alone makes it in its data directory (`lb/`); for a group it is
    /// made here once, `cluster` in the data directory, and shared.
    fn start_lbs(&mut self, config: &UpConfig, timing: &[String]) -> anyhow::Result<PathBuf> {
        if config.lbs == 1 {
            let lb_dir = config.data_dir.join("lb");
            let mut args = vec!["addlb".to_string(), "-p".into(), config.port.to_string()];
            args.extend(["--data-dir".into(), path_arg(&lb_dir)]);
            args.extend(timing.iter().cloned());
            self.spawn(config, "lb", &args)?;
            let cluster_file = lb_dir.join("cluster");
            let lb = self.lb;
            self.wait_started("lb", || {
                cluster_file.is_file() && TcpStream::connect(lb).is_ok()
            })
            .context("the LB did not come up (see lb.log)")?;
            return Ok(cluster_file);
        }
        // The OS's RNG: the secret keys every datagram's MAC.
        lb::cluster_file::load_or_create(&config.data_dir, || {
            lb::cluster_file::generate(&mut rand::rngs::OsRng)
        })
        .context("the cluster file")?;
        let cluster_file = lb::cluster_file::path_in(&config.data_dir);
        let peers: Vec<String> = self.lbs.iter().map(SocketAddr::to_string).collect();
        for (i, lb) in self.lbs.clone().into_iter().enumerate() {
            let name = format!("lb-{}", i + 1);
            let mut args = vec!["addlb".to_string(), "-p".into(), lb.port().to_string()];
            args.extend(["--data-dir".into(), path_arg(&config.data_dir.join(&name))]);
            args.extend(["--peers".into(), peers.join(",")]);
            args.extend(["--cluster-file".into(), path_arg(&cluster_file)]);
            args.extend(timing.iter().cloned());
            self.spawn(config, &name, &args)?;
        }
        for (i, lb) in self.lbs.clone().into_iter().enumerate() {
            let name = format!("lb-{}", i + 1);
            self.wait_started(&name, || TcpStream::connect(lb).is_ok())
                .with_context(|| format!("{name} did not come up (see {name}.log)"))?;
        }
        Ok(cluster_file)
    }

    fn spawn(&mut self, config: &UpConfig, name: &str, args: &[String]) -> anyhow::Result<()> {
        let log_path = config.data_dir.join(format!("{name}.log"));
        let child =
            spawn_logged(&config.exe, args, &log_path).with_context(|| format!("start {name}"))?;
        self.exe = config.exe.clone();
        self.processes.push(Process {
            name: name.to_string(),
            args: args.to_vec(),
            log_path,
            child,
            exited: false,
        });
        Ok(())
    }

    /// The process id of `name`, unless `store up` saw it exit.
    /// Waits until `ready` holds for the process `name` just started,
    /// failing at once, with the end of its log, if it exits first (a port
    /// or a data directory in use, say) rather than at the deadline.
    fn wait_started(&mut self, name: &str, mut ready: impl FnMut() -> bool) -> anyhow::Result<()> {
        let process = self
            .processes
            .iter_mut()
            .find(|p| p.name == name)
            .with_context(|| format!("{name} was not started"))?;
        wait_until(START_DEADLINE_MS, || {
            if ready() {
                return Ok(true);
            }
            if let Ok(Some(status)) = process.child.try_wait() {
                process.exited = true;
                bail!(
                    "it exited ({status}):\n{}",
                    log_tail(&process.log_path, LOG_TAIL_LINES)
                );
            }
            Ok(false)
        })
    }

    /// The last `lines` lines of every process's log, each under its name:
    /// elections, step-downs and errors show there.
    pub fn log_tails(&self, lines: usize) -> String {
        self.processes
            .iter()
            .map(|p| format!("--- {}\n{}\n", p.name, log_tail(&p.log_path, lines)))
            .collect()
    }

    pub fn pid_of(&self, name: &str) -> Option<u32> {
        let process = self.processes.iter().find(|p| p.name == name)?;
        (!process.exited).then(|| process.child.id())
    }

    /// SIGKILL to `name` (a crash), then waits for it.
    pub fn kill(&mut self, name: &str) {
        if let Some(process) = self.processes.iter_mut().find(|p| p.name == name) {
            let _ = process.child.kill();
            let _ = process.child.wait();
            process.exited = true;
        }
    }

    /// Starts `name` again with its data directory, as after a crash.
    pub fn restart(&mut self, name: &str) -> anyhow::Result<()> {
        let exe = self.exe.clone();
        let process = self
            .processes
            .iter_mut()
            .find(|p| p.name == name)
            .with_context(|| format!("no process {name}"))?;
        if process.child.try_wait().ok().flatten().is_none() && !process.exited {
            bail!("{name} is still running");
        }
        process.child = spawn_logged(&exe, &process.args, &process.log_path)?;
        process.exited = false;
        Ok(())
    }

    /// The name (`server-N`) of the server whose memcached address is `addr`.
    pub fn name_of(&self, addr: SocketAddr) -> Option<String> {
        let index = self.servers.iter().position(|s| *s == addr)?;
        Some(format!("server-{}", index + 1))
    }

    /// Reports processes that exited since the last call.
    pub fn reap(&mut self) -> Vec<String> {
        let mut gone = Vec::new();
        for process in &mut self.processes {
            if process.exited {
                continue;
            }
            if let Ok(Some(status)) = process.child.try_wait() {
                process.exited = true;
                gone.push(format!("{} exited ({status})", process.name));
            }
        }
        gone
    }

    /// SIGTERM to every process, servers first, then waits; SIGKILL for
    /// any still running at the deadline.
    pub fn stop(&mut self) {
        for process in self.processes.iter_mut().rev() {
            if !process.exited {
                terminate(&process.child);
            }
        }
        let deadline = Instant::now() + Duration::from_millis(STOP_DEADLINE_MS);
        for process in self.processes.iter_mut().rev() {
            while !process.exited && Instant::now() < deadline {
                match process.child.try_wait() {
                    Ok(Some(_)) | Err(_) => process.exited = true,
                    Ok(None) => std::thread::sleep(Duration::from_millis(POLL_MS)),
                }
            }
            if !process.exited {
                let _ = process.child.kill();
                let _ = process.child.wait();
                process.exited = true;
            }
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The last `lines` lines of the log at `path` (none if it cannot be read).
fn log_tail(path: &Path, lines: usize) -> String {
    // Lossy: a log with a stray non-UTF-8 byte still shows its tail.
    let log = std::fs::read(path).unwrap_or_default();
    let log = String::from_utf8_lossy(&log);
    let all: Vec<&str> = log.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// `-m` for each server of a local cluster unless the caller gave one: the
/// servers share this machine and each holds every item, so each gets an
/// equal part of the half of memory one server would take by default.
fn memory_args(servers: usize, server_args: &[String]) -> Vec<String> {
    let given = server_args
        .iter()
        .any(|a| a == "-m" || a.starts_with("--memory-limit"));
    match server::memory::default_limit_bytes() {
        Some(half) if !given => {
            let mb = (half / servers.max(1) as u64 / (1024 * 1024))
                .max(server::memory::MEMORY_LIMIT_MB_MIN);
            vec!["-m".into(), mb.to_string()]
        }
        _ => Vec::new(),
    }
}

fn spawn_logged(exe: &Path, args: &[String], log_path: &Path) -> anyhow::Result<Child> {
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_path)
        .with_context(|| format!("open {}", log_path.display()))?;
    Command::new(exe)
        .args(args)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("spawn")
}

/// The role the leading LB reports for the server whose memcached address
/// is `addr`.
pub fn role_of(lbs: &[SocketAddr], addr: SocketAddr) -> Option<String> {
    let lbs: Vec<String> = lbs.iter().map(SocketAddr::to_string).collect();
    let status = status::fetch_group(&lbs, Duration::from_millis(500)).ok()?;
    status.data.row_of(addr)?.1.get("role").cloned()
}

/// The LBs' addresses: `port` and the ones after it. An LB of a group also
/// needs its port + PEER_PORT_OFFSET (UDP): the LBs' ports are fixed
/// rather than moved to free ones, so that a cluster restarted from its
/// directory finds its group as it was.
fn lb_addrs(config: &UpConfig) -> anyhow::Result<Vec<SocketAddr>> {
    (0..config.lbs)
        .map(|i| {
            let port = u16::try_from(usize::from(config.port) + i)
                .ok()
                .filter(|p| config.lbs == 1 || p.checked_add(lb::group::PEER_PORT_OFFSET).is_some())
                .with_context(|| {
                    format!(
                        "--port {} leaves no room for {} LBs",
                        config.port, config.lbs
                    )
                })?;
            Ok(SocketAddr::from(([127, 0, 0, 1], port)))
        })
        .collect()
}

/// Whether the memcached server at `addr` is the process `pid` (its
/// `stats` says so), and not another that took the port first.
fn serves_as(
    addr: SocketAddr,
    pid: Option<u32>,
    secret: &[u8; data::frame::SECRET_BYTES],
    tls: Option<std::sync::Arc<rustls::ClientConfig>>,
) -> bool {
    let timeout = Duration::from_millis(POLL_MS * 10);
    let stats = status::stats_as_peer(addr, timeout, secret, tls);
    pid.is_some_and(|pid| stats.get("pid") == Some(&pid.to_string()))
}

/// With `-Z` among the server flags, the TLS client configuration their
/// lanes use, from their `--ssl-*` flags (`-o ssl_*` is not read here).
fn tls_of(server_args: &[String]) -> anyhow::Result<Option<std::sync::Arc<rustls::ClientConfig>>> {
    if !server_args.iter().any(|a| a == "-Z" || a == "--enable-ssl") {
        return Ok(None);
    }
    let value = |flag: &str| {
        server_args
            .windows(2)
            .find(|pair| pair[0] == flag)
            .map(|pair| PathBuf::from(&pair[1]))
    };
    let settings = server::config::TlsSettings {
        chain_cert: value("--ssl-chain-cert").context("-Z without --ssl-chain-cert")?,
        key: value("--ssl-key"),
        ca_cert: value("--ssl-ca-cert"),
        verify_mode: server::config::VerifyMode::None,
        tls13_only: false,
    };
    let tls = server::tls::Tls::load(settings).context("the servers' certificates")?;
    Ok(Some(tls.client_config()))
}

/// `preferred` if nothing listens there, else any free port.
fn free_port(preferred: u16) -> anyhow::Result<u16> {
    if preferred != 0 && TcpListener::bind(("127.0.0.1", preferred)).is_ok() {
        return Ok(preferred);
    }
    let listener = TcpListener::bind("127.0.0.1:0").context("find a free port")?;
    Ok(listener.local_addr()?.port())
}

/// Polls `ready` until it says so, fails, or `deadline_ms` passes.
fn wait_until(
    deadline_ms: u64,
    mut ready: impl FnMut() -> anyhow::Result<bool>,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_millis(deadline_ms);
    while Instant::now() < deadline {
        if ready()? {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(POLL_MS));
    }
    bail!("not ready after {deadline_ms} ms")
}

fn path_arg(path: &Path) -> String {
    path.display().to_string()
}

/// Asks a child to stop the way a terminal would.
fn terminate(child: &Child) {
    // `kill -TERM` keeps this crate free of unsafe code and of a signal
    // crate; it is in every base system.
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}
