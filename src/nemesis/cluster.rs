//! The processes under test: one LB, or a group of LBs (on hosts only),
//! and N servers (`store addlb`, `store addsrv`), on 127.0.0.1 each behind
//! its relay (see `relay`) or each on a host of its own (see `links`),
//! with the signals the nemesis sends them:
//! SIGKILL, SIGTERM, SIGSTOP, SIGCONT, and starting a process again on its
//! data directory and ports.
//!
//! It owns the child processes and their logs (`<name>.log` in the data
//! directory, appended across restarts) and kills every one of them when
//! dropped, so a failing test or an interrupted run never leaks a process.
//! It does not decide which fault comes next; `faults` does.
//!
//! Children run in their own process group, so a Ctrl-C at the terminal
//! reaches only the nemesis, which then stops them itself.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use super::links::Links;
pub use super::relay::LB;
use super::relay::{Network, NodeId};
use crate::netns::Net;
/// How long a process gets to come up before the cluster gives up.
const START_DEADLINE: Duration = Duration::from_secs(30);
/// How long a new server gets to join the group at start.
const JOIN_DEADLINE: Duration = Duration::from_secs(30);
/// How long a SIGTERMed process gets before SIGKILL.
const TERM_DEADLINE: Duration = Duration::from_secs(10);
/// Deadline for one `stats` request to a server or the LB.
const STATS_TIMEOUT: Duration = Duration::from_millis(500);
const POLL: Duration = Duration::from_millis(20);
/// Ports on a node's own host (`--netns`): nothing else listens there.
const HOST_LB_PORT: u16 = 7000;
const HOST_SERVER_PORT: u16 = 11211;
const HOST_SERVER_UDP_PORT: u16 = 7001;
/// Tells the nemesis's hosts from those of tests in the same process.
const HOSTS_TAG: u8 = 200;

/// What the cluster is started with.
#[derive(Clone, Debug)]
pub struct ClusterConfig {
    /// The `store` binary.
    pub exe: PathBuf,
    pub data_dir: PathBuf,
    pub servers: usize,
    pub heartbeat_ms: u64,
    pub election_timeout_ms: u64,
    /// Worker threads per server (`-t`): the machine is small.
    pub server_threads: usize,
    /// Every node on a host of its own, cut by links (see `links`).
    pub netns: bool,
    /// LBs: 1, or a group of LBs (DESIGN §3c; hosts only: the group's
    /// own port is the discovery port + 1000, which no relay stands in).
    pub lbs: usize,
}

/// A process that exited without the nemesis stopping it: a finding,
/// unless it is an LB that a `remove-lb` whose answer was lost took out
/// (then it stopped as it should, and was added back).
#[derive(Clone, Debug)]
pub struct Exit {
    pub what: String,
    pub finding: bool,
}

/// Whether a process is running, stopped by SIGSTOP, or gone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunState {
    Running,
    Paused,
    Down,
}

/// One process: what it is, how to start it again, and its child.
struct Node {
    name: String,
    args: Vec<String>,
    log_path: PathBuf,
    child: Option<Child>,
    paused: bool,
    /// Its memcached (servers) or discovery (LB) TCP address.
    tcp: SocketAddr,
    /// An LB taken out of its group and not added back: never started
    /// again.
    retired: bool,
}

/// The LBs and servers, and the relays in front of them. Node 0 is the
/// (first) LB, node i (1..=N) is `server-i`, and with a group of LBs nodes
/// N+1.. are the others (`lb-2`, ...).
pub struct Cluster {
    exe: PathBuf,
    nodes: Vec<Node>,
    servers: usize,
    pub net: Links,
    /// Processes that exited without the nemesis asking them to, with how.
    pub unexpected_exits: Vec<String>,
    /// The LB group's cluster file (none with one LB), which `store
    /// add-lb` and `remove-lb` prove.
    cluster_file: Option<PathBuf>,
}

impl Cluster {
    /// Starts the LB, then the servers one at a time (each joins before the
    /// next starts), every one behind its relay.
    pub fn start(config: &ClusterConfig) -> anyhow::Result<Cluster> {
        if config.servers == 0 {
            bail!("a cluster needs at least one server");
        }
        if config.lbs == 0 || (config.lbs > 1 && !config.netns) {
            bail!("one LB, or a group of LBs on hosts of their own (--netns)");
        }
        std::fs::create_dir_all(&config.data_dir)
            .with_context(|| format!("create {}", config.data_dir.display()))?;
        let names: Vec<String> = (0..config.servers + config.lbs)
            .map(|node| node_name(node, config))
            .collect();
        let net = if config.netns {
            let hosts: Vec<&str> = names.iter().map(String::as_str).collect();
            let net = Net::create(HOSTS_TAG, &hosts).map_err(|e| {
                anyhow::anyhow!("--netns needs network namespaces (root, iproute2): {e}")
            })?;
            Links::Hosts { net, names }
        } else {
            // Node i's real UDP port is udp[i]; its relay forwards there.
            let udp: Vec<u16> = (0..=config.servers)
                .map(|_| free_udp_port())
                .collect::<anyhow::Result<_>>()?;
            Links::Relays(Network::start(&udp)?)
        };
        let mut cluster = Cluster {
            exe: config.exe.clone(),
            nodes: Vec::new(),
            servers: config.servers,
            net,
            unexpected_exits: Vec::new(),
            cluster_file: None,
        };
        let timing = [
            "--heartbeat-ms".to_string(),
            config.heartbeat_ms.to_string(),
            "--election-timeout-ms".to_string(),
            config.election_timeout_ms.to_string(),
        ];

        // Each LB's discovery address (its UDP control port has the same
        // number) and what every LB and server is given.
        let lb_nodes: Vec<NodeId> = std::iter::once(LB)
            .chain(config.servers + 1..config.servers + config.lbs)
            .collect();
        let mut lb_addrs = Vec::new();
        let mut lb_args = Vec::new();
        for node in &lb_nodes {
            let mut args = vec!["addlb".to_string(), "-v".into()];
            let (tcp, udp) = match &cluster.net {
                Links::Relays(network) => {
                    let tcp = SocketAddr::from(([127, 0, 0, 1], free_port()?));
                    args.extend(["-p".into(), tcp.port().to_string()]);
                    args.extend(["--udp-port".into(), network.target_port(LB).to_string()]);
                    (tcp, network.relay_of(LB))
                }
                Links::Hosts { net, names } => {
                    let addr: std::net::IpAddr = net.addr(&names[*node]).into();
                    args.extend(["-l".into(), addr.to_string()]);
                    args.extend(["-p".into(), HOST_LB_PORT.to_string()]);
                    let lb = SocketAddr::new(addr, HOST_LB_PORT);
                    (lb, lb)
                }
            };
            let name = node_name(*node, config);
            args.extend(["--data-dir".into(), path_arg(&config.data_dir.join(&name))]);
            args.extend(timing.iter().cloned());
            lb_addrs.push((tcp, udp));
            lb_args.push(args);
        }
        let cluster_file = if config.lbs == 1 {
            config.data_dir.join(node_name(LB, config)).join("cluster")
        } else {
            // One cluster file for the group, made here (as `store up`).
            lb::cluster_file::load_or_create(&config.data_dir, || {
                lb::cluster_file::generate(&mut rand::rngs::OsRng)
            })
            .context("the cluster file")?;
            let peers: Vec<String> = lb_addrs.iter().map(|(tcp, _)| tcp.to_string()).collect();
            let file = lb::cluster_file::path_in(&config.data_dir);
            for args in &mut lb_args {
                args.extend(["--peers".into(), peers.join(",")]);
                args.extend(["--cluster-file".into(), path_arg(&file)]);
            }
            file
        };
        cluster.cluster_file = (config.lbs > 1).then(|| cluster_file.clone());
        let lb_list: Vec<String> = lb_addrs.iter().map(|(_, udp)| udp.to_string()).collect();
        let lb_list = lb_list.join(",");

        // Nodes in id order; processes started LBs first, then one server
        // at a time.
        let mut server_args = Vec::new();
        for i in 1..=config.servers {
            let name = node_name(i, config);
            let mut args = vec!["addsrv".to_string(), "-v".into()];
            let tcp = match &cluster.net {
                Links::Relays(network) => {
                    let tcp = SocketAddr::from(([127, 0, 0, 1], free_port()?));
                    args.extend(["--udp-port".into(), network.target_port(i).to_string()]);
                    args.extend(["--udp-advertise".into(), network.relay_of(i).to_string()]);
                    tcp
                }
                Links::Hosts { net, .. } => {
                    let addr: std::net::IpAddr = net.addr(&name).into();
                    args.extend(["-l".into(), addr.to_string()]);
                    args.extend(["--udp-port".into(), HOST_SERVER_UDP_PORT.to_string()]);
                    SocketAddr::new(addr, HOST_SERVER_PORT)
                }
            };
            args.extend(["-p".into(), tcp.port().to_string()]);
            args.extend(["-t".into(), config.server_threads.to_string()]);
            args.extend(["--data-dir".into(), path_arg(&config.data_dir.join(&name))]);
            args.extend(["--lb".into(), lb_list.clone()]);
            args.extend(["--cluster-file".into(), path_arg(&cluster_file)]);
            args.extend(timing.iter().cloned());
            server_args.push((name, args, tcp));
        }
        let mut lb_args = lb_args.into_iter();
        let first_args = lb_args.next().expect("an LB");
        cluster.push(config, &node_name(LB, config), first_args, lb_addrs[0].0);
        for (name, args, tcp) in &server_args {
            cluster.push(config, name, args.clone(), *tcp);
        }
        for ((node, args), (tcp, _)) in lb_nodes[1..].iter().zip(lb_args).zip(&lb_addrs[1..]) {
            cluster.push(config, &node_name(*node, config), args, *tcp);
        }
        for node in &lb_nodes {
            cluster.spawn(*node)?;
        }
        let first_lb = lb_addrs[0].0;
        wait_until(START_DEADLINE, || {
            cluster_file.is_file() && TcpStream::connect(first_lb).is_ok()
        })
        .context("the LB did not come up (see its log)")?;
        for (node, (tcp, _)) in lb_nodes.iter().zip(&lb_addrs) {
            let name = node_name(*node, config);
            wait_until(START_DEADLINE, || TcpStream::connect(tcp).is_ok())
                .with_context(|| format!("{name} did not come up (see {name}.log)"))?;
        }
        for (i, (name, _, tcp)) in server_args.iter().enumerate() {
            cluster.spawn(i + 1)?;
            wait_until(START_DEADLINE, || TcpStream::connect(tcp).is_ok())
                .with_context(|| format!("{name} did not come up (see {name}.log)"))?;
            wait_until(JOIN_DEADLINE, || {
                let role = stats(*tcp).get("repl_role").cloned();
                role.is_some_and(|r| r == "leader" || r == "follower")
            })
            .with_context(|| format!("{name} did not join the group (see {name}.log)"))?;
        }
        Ok(cluster)
    }

    /// A node, not started yet.
    fn push(&mut self, config: &ClusterConfig, name: &str, args: Vec<String>, tcp: SocketAddr) {
        let log_path = config.data_dir.join(format!("{name}.log"));
        self.nodes.push(Node {
            name: name.to_string(),
            args,
            log_path,
            child: None,
            paused: false,
            tcp,
            retired: false,
        });
    }

    /// Starts node `node`'s process.
    fn spawn(&mut self, node: NodeId) -> anyhow::Result<()> {
        let command = self.command(node);
        let n = &mut self.nodes[node];
        n.child = Some(spawn_logged(command, &n.args, &n.log_path)?);
        Ok(())
    }

    /// The `store` binary, run where node `node` runs.
    fn command(&self, node: NodeId) -> Command {
        match &self.net {
            Links::Relays(_) => Command::new(&self.exe),
            Links::Hosts { net, names } => net.command(&names[node], &self.exe),
        }
    }

    /// Server count (servers are nodes 1..=servers).
    pub fn servers(&self) -> usize {
        self.servers
    }

    /// Node count: the servers and the LBs.
    pub fn nodes(&self) -> usize {
        self.nodes.len()
    }

    /// The LBs' nodes: 0, then those after the servers.
    pub fn lb_nodes(&self) -> Vec<NodeId> {
        std::iter::once(LB)
            .chain(self.servers + 1..self.nodes.len())
            .collect()
    }

    /// The LB that says it leads its group (or the LB alone), if any.
    pub fn leading_lb(&self) -> Option<NodeId> {
        self.lb_nodes().into_iter().find(|node| {
            self.state(*node) == RunState::Running
                && stats(self.nodes[*node].tcp).get("role").map(String::as_str) == Some("leader")
        })
    }

    pub fn name(&self, node: NodeId) -> &str {
        &self.nodes[node].name
    }

    pub fn tcp(&self, node: NodeId) -> SocketAddr {
        self.nodes[node].tcp
    }

    /// The servers' memcached addresses, server 1 first.
    pub fn server_addrs(&self) -> Vec<SocketAddr> {
        self.nodes[1..=self.servers].iter().map(|n| n.tcp).collect()
    }

    pub fn log_path(&self, node: NodeId) -> &Path {
        &self.nodes[node].log_path
    }

    pub fn state(&self, node: NodeId) -> RunState {
        let n = &self.nodes[node];
        match (&n.child, n.paused) {
            (None, _) => RunState::Down,
            (Some(_), true) => RunState::Paused,
            (Some(_), false) => RunState::Running,
        }
    }

    /// SIGKILL, then reaps it; its relay closes as its socket did.
    pub fn kill(&mut self, node: NodeId) {
        let n = &mut self.nodes[node];
        if let Some(mut child) = n.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        n.paused = false;
        self.net.close(node);
    }

    /// SIGTERM (after SIGCONT if paused), waits for a clean exit; SIGKILL at
    /// the deadline. Returns how it exited, if it did by itself.
    pub fn terminate(&mut self, node: NodeId) -> Option<ExitStatus> {
        self.resume(node);
        let mut child = self.nodes[node].child.take()?;
        signal(child.id(), "TERM");
        let deadline = Instant::now() + TERM_DEADLINE;
        let mut exit = None;
        while Instant::now() < deadline && exit.is_none() {
            exit = child.try_wait().ok().flatten();
            if exit.is_none() {
                std::thread::sleep(POLL);
            }
        }
        if exit.is_none() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.net.close(node);
        exit
    }

    /// SIGSTOP: the process stays, frozen, with its sockets open.
    pub fn pause(&mut self, node: NodeId) {
        let n = &mut self.nodes[node];
        if let (Some(child), false) = (&n.child, n.paused) {
            signal(child.id(), "STOP");
            n.paused = true;
        }
    }

    /// SIGCONT.
    pub fn resume(&mut self, node: NodeId) {
        let n = &mut self.nodes[node];
        if let (Some(child), true) = (&n.child, n.paused) {
            signal(child.id(), "CONT");
            n.paused = false;
        }
    }

    /// Starts a node that is down again, on its data directory and ports.
    pub fn restart(&mut self, node: NodeId) -> anyhow::Result<()> {
        if self.nodes[node].child.is_some() || self.nodes[node].retired {
            return Ok(());
        }
        if !self.net.open(node) {
            bail!("cannot reopen {}'s relay", self.nodes[node].name);
        }
        let command = self.command(node);
        let n = &mut self.nodes[node];
        n.child = Some(spawn_logged(command, &n.args, &n.log_path)?);
        n.paused = false;
        Ok(())
    }

    /// Notices processes that exited although the nemesis did not stop
    /// them (a crash is a finding), records them and starts them again.
    pub fn reap_unexpected(&mut self) -> anyhow::Result<Vec<Exit>> {
        let mut found = Vec::new();
        for node in 0..self.nodes.len() {
            let n = &mut self.nodes[node];
            let exited = match n.child.as_mut().map(|c| c.try_wait()) {
                Some(Ok(Some(status))) => Some(status),
                _ => None,
            };
            if let Some(status) = exited {
                n.child = None;
                n.paused = false;
                let taken_out = status.code() == Some(lb::driver::EXIT_REMOVED);
                if let (true, Some(cluster_file)) = (taken_out, self.cluster_file.clone()) {
                    // A remove-lb whose answer was lost took effect: the LB
                    // stopped as it should; it is added back.
                    self.net.close(node);
                    let added = self.add_back(node, &cluster_file)?;
                    found.push(Exit {
                        what: format!(
                            "{} stopped, taken out by an earlier remove-lb whose answer was lost: {added}",
                            self.nodes[node].name
                        ),
                        finding: false,
                    });
                    continue;
                }
                let n = &mut self.nodes[node];
                found.push(Exit {
                    what: format!(
                        "{} exited unexpectedly ({status}); see {}",
                        n.name,
                        n.log_path.display()
                    ),
                    finding: true,
                });
                self.restart(node)?;
            }
        }
        self.unexpected_exits.extend(
            found
                .iter()
                .filter(|exit| exit.finding)
                .map(|exit| exit.what.clone()),
        );
        Ok(found)
    }

    /// Undoes every process fault: resumes the paused, starts the down.
    pub fn heal_processes(&mut self) -> anyhow::Result<()> {
        for node in 0..self.nodes.len() {
            self.resume(node);
            self.restart(node)?;
        }
        Ok(())
    }

    /// `store remove-lb` LB `node` through the others, waits for it to stop
    /// by itself (it does once it knows its removal committed), then
    /// `store add-lb` it back with an empty data directory and starts it
    /// with `--join` (the group gives it a new id; it catches up, then
    /// votes). What happened, for the log; an LB the group would not take
    /// back stays out for the rest of the run.
    pub fn replace_lb(&mut self, node: NodeId) -> anyhow::Result<String> {
        let name = self.nodes[node].name.clone();
        let Some(cluster_file) = self.cluster_file.clone() else {
            return Ok(format!("nothing: {name} is alone"));
        };
        if self.state(node) != RunState::Running {
            return Ok(format!("nothing: {name} is not running"));
        }
        let addr = self.nodes[node].tcp.to_string();
        let others = self.other_lbs(node);
        let (removed, said) = self.admin(&["remove-lb", &addr, "--lb", &others], &cluster_file)?;
        if !removed {
            // It may still have been done (its answer lost): the LB then
            // stops by itself later, and `reap_unexpected` adds it back.
            return Ok(format!("remove-lb {name} not done: {said}"));
        }
        let stopped = wait_until(LB_STOP_DEADLINE, || {
            let child = self.nodes[node].child.as_mut();
            child.is_some_and(|c| c.try_wait().ok().flatten().is_some())
        })
        .is_ok();
        let how = if stopped {
            "it stopped by itself"
        } else {
            "killed: it did not stop by itself"
        };
        // Taken here, so that its exit is not counted as unexpected.
        self.kill(node);
        let added = self.add_back(node, &cluster_file)?;
        Ok(format!("remove-lb {name} ({how}), {added}"))
    }

    /// The discovery addresses of every LB but `node` still in the run,
    /// comma-separated (`--lb`, `--join`).
    fn other_lbs(&self, node: NodeId) -> String {
        let others: Vec<String> = self
            .lb_nodes()
            .into_iter()
            .filter(|n| *n != node && !self.nodes[*n].retired)
            .map(|n| self.nodes[n].tcp.to_string())
            .collect();
        others.join(",")
    }

    /// An LB the group took out (and that stopped): its data directory
    /// emptied, `store add-lb` it back (retried while the removal is under
    /// way) and started with `--join`. An LB the group would not take back
    /// stays out for the rest of the run.
    fn add_back(&mut self, node: NodeId, cluster_file: &Path) -> anyhow::Result<String> {
        let addr = self.nodes[node].tcp.to_string();
        let others = self.other_lbs(node);
        let n = &mut self.nodes[node];
        let data_dir = arg_after(&n.args, "--data-dir").context("an LB's --data-dir")?;
        std::fs::remove_dir_all(&data_dir)
            .with_context(|| format!("empty {}'s data directory", n.name))?;
        set_arg(&mut n.args, &["--peers", "--join"], "--join", &others);
        let mut said = String::new();
        for _ in 0..ADD_LB_TRIES {
            let (added, reply) = self.admin(&["add-lb", &addr, "--lb", &others], cluster_file)?;
            if added {
                self.restart(node)?;
                return Ok(format!("add-lb {reply}, started with --join"));
            }
            said = reply;
            std::thread::sleep(ADD_LB_RETRY);
        }
        self.nodes[node].retired = true;
        Ok(format!("add-lb refused ({said}): it stays out"))
    }

    /// Runs `store` with `args` and the cluster file; whether it exited 0,
    /// and what it printed.
    fn admin(&self, args: &[&str], cluster_file: &Path) -> anyhow::Result<(bool, String)> {
        let output = Command::new(&self.exe)
            .args(args)
            .arg("--cluster-file")
            .arg(cluster_file)
            .output()
            .with_context(|| format!("run store {}", args[0]))?;
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        Ok((output.status.success(), said.trim().replace('\n', " ")))
    }

    /// The server that says it leads with the highest term, asking every
    /// running server (not the LB, which may be down or cut off).
    pub fn leader(&self) -> Option<NodeId> {
        let mut best: Option<(u64, NodeId)> = None;
        for node in 1..=self.servers {
            if self.state(node) != RunState::Running {
                continue;
            }
            let s = stats(self.nodes[node].tcp);
            if s.get("repl_role").map(String::as_str) != Some("leader") {
                continue;
            }
            let term = s.get("repl_term").and_then(|t| t.parse().ok()).unwrap_or(0);
            if best.is_none_or(|(t, _)| term > t) {
                best = Some((term, node));
            }
        }
        best.map(|(_, node)| node)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for node in 0..self.nodes.len() {
            self.kill(node);
        }
    }
}

/// How long a removed LB has to stop by itself: its removal commits and the
/// leader's heartbeats tell it within a few election timeouts.
const LB_STOP_DEADLINE: Duration = Duration::from_secs(15);
/// `add-lb` is refused while the removal before it is under way (the
/// configuration still changing): tries, and the pause between them.
const ADD_LB_TRIES: usize = 20;
const ADD_LB_RETRY: Duration = Duration::from_millis(500);

/// The value after `flag` in `args`.
fn arg_after(args: &[String], flag: &str) -> Option<String> {
    let at = args.iter().position(|a| a == flag)?;
    args.get(at + 1).cloned()
}

/// Replaces every one of `flags` and its value in `args` with `to` and
/// `value`.
fn set_arg(args: &mut Vec<String>, flags: &[&str], to: &str, value: &str) {
    while let Some(at) = args.iter().position(|a| flags.contains(&a.as_str())) {
        args.drain(at..(at + 2).min(args.len()));
    }
    args.extend([to.to_string(), value.to_string()]);
}

/// A server's (or the LB's) `stats` as a map; empty if it cannot be reached.
pub fn stats(addr: SocketAddr) -> BTreeMap<String, String> {
    crate::status::stats_of(addr, STATS_TIMEOUT)
}

fn spawn_logged(mut command: Command, args: &[String], log_path: &Path) -> anyhow::Result<Child> {
    let mut log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_path)
        .with_context(|| format!("open {}", log_path.display()))?;
    // A marker per start, so a log with several lives reads in order.
    let _ = writeln!(log, "---- nemesis: start {}", args.join(" "));
    command
        .args(args)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0)
        .spawn()
        .with_context(|| format!("start {:?}", command.get_program()))
}

/// `kill -SIG pid`: keeps this crate free of unsafe code (see `up`).
fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .args([format!("-{sig}"), pid.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// A TCP port that was free a moment ago.
pub fn free_port() -> anyhow::Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("find a free port")?;
    Ok(listener.local_addr()?.port())
}

/// A UDP port that was free a moment ago.
pub fn free_udp_port() -> anyhow::Result<u16> {
    let socket = UdpSocket::bind("127.0.0.1:0").context("find a free UDP port")?;
    Ok(socket.local_addr()?.port())
}

fn wait_until(deadline: Duration, mut ready: impl FnMut() -> bool) -> anyhow::Result<()> {
    let end = Instant::now() + deadline;
    while Instant::now() < end {
        if ready() {
            return Ok(());
        }
        std::thread::sleep(POLL);
    }
    bail!("not ready after {deadline:?}")
}

/// Node `node`'s name (and its host's): `lb` alone, or `lb-1`.. in a
/// group; `server-i`.
fn node_name(node: NodeId, config: &ClusterConfig) -> String {
    match node {
        LB if config.lbs == 1 => "lb".to_string(),
        LB => "lb-1".to_string(),
        n if n <= config.servers => format!("server-{n}"),
        n => format!("lb-{}", n - config.servers + 1),
    }
}

fn path_arg(path: &Path) -> String {
    path.display().to_string()
}
