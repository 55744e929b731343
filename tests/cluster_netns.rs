//! The cluster across hosts (issue 19, Deliver 7): the LB and each server
//! in a Linux network namespace of its own with its own address, a veth
//! link between every two hosts and one to the test's own namespace, which
//! it talks from (`store::netns`). A partition is links taken down, so it cuts TCP (forwarding, a
//! client's connections) as well as UDP (replication, the LB's heartbeats),
//! which the relays of the other cluster tests cannot.
//!
//! Needs root and iproute2; without them the tests print SKIP (and fail
//! under CI, which runs as root with iproute2 installed).
//!
//! What is asserted is what a client relies on: a write is acknowledged
//! only if it survives, a read never returns a value older than one a
//! client was already told is written, an answer comes within a bounded
//! time, and a host cut off and brought back serves the group's data.

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::cluster::request_within;
use common::poll_until;
use store::netns::Net;

const LB: &str = "lb";
const SERVERS: [&str; 3] = ["s1", "s2", "s3"];
/// Every host has its own ports: these never collide with anything else.
const LB_PORT: u16 = 7000;
const SERVER_PORT: u16 = 11211;
const HEARTBEAT_MS: &str = "100";
const ELECTION_TIMEOUT_MS: &str = "1000";
/// A process up, a server joined, a leader named, a host caught up.
const CLUSTER_DEADLINE: Duration = Duration::from_secs(30);
/// A read on a server cut off from the leader is refused within this: it
/// waits that long for a read index (through resends and any failover),
/// plus a second's slack for ticks and a loaded machine.
const READ_REFUSAL_DEADLINE: Duration =
    Duration::from_millis(server::replica::FOLLOWER_READ_WAIT_MS + 1_000);
/// A write through a server cut off from the leader is refused within
/// this: forwarded, it waits for a leader to connect to, or for the reply
/// of one it is connected to.
const WRITE_REFUSAL_DEADLINE: Duration = Duration::from_millis(
    max(
        server::forward::FORWARD_FAILOVER_WAIT_MS,
        server::forward::FORWARD_TIMEOUT_MS,
    ) + 1_000,
);
/// How long the test waits for any reply: past the deadline, so that a late
/// answer is seen (and reported as late) rather than cut off.
const REPLY_WAIT: Duration = Duration::from_secs(20);

const fn max(a: u64, b: u64) -> u64 {
    if a > b {
        a
    } else {
        b
    }
}

/// The LB and three servers, each in its namespace; every process is
/// killed before the namespaces go (fields drop after `drop`).
struct Hosts {
    processes: Vec<(String, Child, PathBuf)>,
    net: Net,
    dir: tempfile::TempDir,
}

impl Drop for Hosts {
    fn drop(&mut self) {
        for (_, child, _) in &mut self.processes {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Hosts {
    /// Starts the LB, then the servers one at a time (each joins before the
    /// next starts, as `store up` does). None: namespaces are unavailable
    /// here and the test was skipped.
    fn start(test: &str, tag: u8) -> Option<Hosts> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            common::skip(test, "network namespaces need root");
            return None;
        }
        let mut hosts = vec![LB];
        hosts.extend(SERVERS);
        let net = match Net::create(tag, &hosts) {
            Ok(net) => net,
            Err(why) => {
                common::skip(test, &format!("no network namespaces: {why}"));
                return None;
            }
        };
        let mut cluster = Hosts {
            processes: Vec::new(),
            net,
            dir: tempfile::tempdir().expect("temp dir"),
        };
        let lb_dir = cluster.dir.path().join(LB);
        let lb_addr = cluster.net.addr(LB).to_string();
        let port = LB_PORT.to_string();
        cluster.spawn(
            LB,
            &[
                "addlb",
                "-l",
                &lb_addr,
                "-p",
                &port,
                "--data-dir",
                lb_dir.to_str().expect("utf-8 temp dir"),
                "--heartbeat-ms",
                HEARTBEAT_MS,
                "--election-timeout-ms",
                ELECTION_TIMEOUT_MS,
            ],
        );
        let cluster_file = lb_dir.join("cluster");
        let lb = cluster.lb();
        let up = poll_until(CLUSTER_DEADLINE, || {
            cluster_file.is_file() && std::net::TcpStream::connect(lb).is_ok()
        });
        assert!(up, "the LB did not come up\n{}", cluster.log_tails());

        for server in SERVERS {
            let listen = cluster.net.addr(server).to_string();
            let data_dir = cluster.dir.path().join(server);
            let lb_udp = SocketAddr::new(cluster.net.addr(LB).into(), LB_PORT).to_string();
            cluster.spawn(
                server,
                &[
                    "addsrv",
                    "-l",
                    &listen,
                    "-p",
                    &SERVER_PORT.to_string(),
                    "-m",
                    "64",
                    "--data-dir",
                    data_dir.to_str().expect("utf-8 temp dir"),
                    "--lb",
                    &lb_udp,
                    "--cluster-file",
                    cluster_file.to_str().expect("utf-8 temp dir"),
                    "--heartbeat-ms",
                    HEARTBEAT_MS,
                    "--election-timeout-ms",
                    ELECTION_TIMEOUT_MS,
                ],
            );
            let addr = cluster.server(server);
            let joined = poll_until(CLUSTER_DEADLINE, || {
                let role = store::up::role_of(&[lb], addr);
                matches!(role.as_deref(), Some("leader") | Some("follower"))
            });
            assert!(joined, "{server} did not join\n{}", cluster.log_tails());
        }
        Some(cluster)
    }

    fn spawn(&mut self, host: &str, args: &[&str]) {
        let log_path = self.dir.path().join(format!("{host}.log"));
        let log = std::fs::File::create(&log_path).expect("log file");
        let child = self
            .net
            .command(host, &PathBuf::from(env!("CARGO_BIN_EXE_store")))
            .args(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("start {host}: {e}"));
        self.processes.push((host.to_string(), child, log_path));
    }

    /// SIGKILL to the process on `host`.
    fn kill(&mut self, host: &str) {
        for (name, child, _) in &mut self.processes {
            if name == host {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }

    fn log_tails(&self) -> String {
        let mut tails = String::new();
        for (host, _, path) in &self.processes {
            let log = std::fs::read_to_string(path).unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            let tail = lines[lines.len().saturating_sub(30)..].join("\n");
            tails.push_str(&format!("--- {host}\n{tail}\n"));
        }
        tails
    }

    fn lb(&self) -> SocketAddr {
        SocketAddr::new(self.net.addr(LB).into(), LB_PORT)
    }

    fn server(&self, host: &str) -> SocketAddr {
        SocketAddr::new(self.net.addr(host).into(), SERVER_PORT)
    }

    /// The server the LB names leader, once it names one that is not in
    /// `not` (a leader cut off stays named until the LB elects another).
    fn leader_other_than(&self, not: &[&str]) -> &'static str {
        let lb = self.lb();
        let mut leader = None;
        let named = poll_until(CLUSTER_DEADLINE, || {
            let tcp = store::status::fetch(&lb.to_string(), Duration::from_secs(1))
                .ok()
                .and_then(|status| status.leader_tcp());
            leader = SERVERS
                .into_iter()
                .find(|s| Some(self.server(s)) == tcp && !not.contains(s));
            leader.is_some()
        });
        assert!(named, "no leader named\n{}", self.log_tails());
        leader.expect("polled")
    }

    /// One request from the client host to `host`; its reply, or why none.
    fn ask(&self, host: &str, bytes: &[u8], terminator: &[u8]) -> Result<String, String> {
        let addr = self.server(host);
        request_within(addr, bytes, terminator, REPLY_WAIT)
            .map(|reply| String::from_utf8_lossy(&reply).into_owned())
    }

    fn set(&self, host: &str, key: &str, value: &str) -> Result<String, String> {
        let bytes = format!("set {key} 0 0 {}\r\n{value}\r\n", value.len());
        self.ask(host, bytes.as_bytes(), b"\r\n")
    }

    fn get(&self, host: &str, key: &str) -> Result<String, String> {
        self.ask(host, format!("get {key}\r\n").as_bytes(), b"END\r\n")
    }

    fn stored(&self, host: &str, key: &str, value: &str) {
        let reply = self.set(host, key, value);
        assert_eq!(
            reply.as_deref(),
            Ok("STORED\r\n"),
            "set {key} through {host}\n{}",
            self.log_tails()
        );
    }

    /// Polls until `host` answers `get key` with `value`; every answer
    /// before it must be a refusal, never another value (an older one would
    /// be a stale read).
    fn serves(&self, host: &str, key: &str, value: &str) {
        let want = hit(key, value);
        let mut last = Ok(String::new());
        let served = poll_until(CLUSTER_DEADLINE, || {
            last = self.get(host, key);
            if let Ok(reply) = &last {
                assert!(
                    *reply == want || reply.starts_with("SERVER_ERROR"),
                    "{host} answered get {key} with {reply:?} where only {want:?} or a \
                     refusal may come\n{}",
                    self.log_tails()
                );
            }
            last.as_deref() == Ok(want.as_str())
        });
        assert!(
            served,
            "{host} never served {key}={value}; last {last:?}\n{}",
            self.log_tails()
        );
    }
}

fn hit(key: &str, value: &str) -> String {
    format!("VALUE {key} 0 {}\r\n{value}\r\nEND\r\n", value.len())
}

/// Asserts `reply` is a refusal (an error line), given within `deadline`
/// of `asked`.
fn assert_refused(
    what: &str,
    reply: &Result<String, String>,
    (asked, deadline): (Instant, Duration),
    hosts: &Hosts,
) {
    let took = asked.elapsed();
    eprintln!("{what}: {reply:?} after {took:?}");
    match reply {
        Ok(line) if line.starts_with("SERVER_ERROR") => {}
        other => panic!(
            "{what}: expected a SERVER_ERROR refusal, got {other:?}\n{}",
            hosts.log_tails()
        ),
    }
    assert!(took <= deadline, "{what}: refused only after {took:?}");
}

/// The leader cut off from the LB and the other servers (its clients still
/// reach it): it acknowledges no write, serves no read once the others have
/// a new leader, and after the links come back it is a follower serving the
/// new leader's data; nothing acknowledged is lost.
#[test]
fn a_leader_cut_off_is_replaced_and_acknowledges_nothing_it_cannot_keep() {
    let test = "a_leader_cut_off_is_replaced_and_acknowledges_nothing_it_cannot_keep";
    let Some(hosts) = Hosts::start(test, 1) else {
        return;
    };
    let old = hosts.leader_other_than(&[]);
    for i in 0..20 {
        hosts.stored(old, &format!("before-{i}"), &format!("v{i}"));
    }
    hosts.stored(old, "k", "v1");

    let others: Vec<&str> = SERVERS.into_iter().filter(|s| *s != old).collect();
    let mut cut_off_from = vec![LB];
    cut_off_from.extend(&others);
    for other in &cut_off_from {
        hosts.net.cut(old, other);
    }

    // It cannot reach a majority: the write is not acknowledged.
    let asked = Instant::now();
    let reply = hosts.set(old, "k", "v2");
    let within = (asked, WRITE_REFUSAL_DEADLINE);
    assert_refused("a write to the cut-off leader", &reply, within, &hosts);

    let new = hosts.leader_other_than(&[old]);
    hosts.stored(new, "k", "v3");
    for i in 0..20 {
        hosts.stored(new, &format!("during-{i}"), &format!("w{i}"));
    }
    // The cut-off leader's lease ran out before the new one was elected:
    // it must not answer v1 now that v3 is acknowledged.
    let asked = Instant::now();
    let reply = hosts.get(old, "k");
    let within = (asked, READ_REFUSAL_DEADLINE);
    assert_refused("a read on the cut-off leader", &reply, within, &hosts);
    let follower = others.iter().find(|s| **s != new).expect("a follower");
    hosts.serves(follower, "k", "v3");

    for other in &cut_off_from {
        hosts.net.heal(old, other);
    }
    hosts.serves(old, "k", "v3");
    for server in SERVERS {
        for i in 0..20 {
            hosts.serves(server, &format!("before-{i}"), &format!("v{i}"));
            hosts.serves(server, &format!("during-{i}"), &format!("w{i}"));
        }
    }
}

/// A follower cut off from the leader alone (it still reaches the LB, the
/// other follower and its clients): its TCP forwarding and its read-index
/// questions both fail, so it refuses reads and writes within a bounded
/// time and never answers with the value it holds once a newer one is
/// acknowledged; brought back, it catches up and serves both.
#[test]
fn a_follower_cut_off_from_the_leader_refuses_then_catches_up() {
    let test = "a_follower_cut_off_from_the_leader_refuses_then_catches_up";
    let Some(hosts) = Hosts::start(test, 2) else {
        return;
    };
    let leader = hosts.leader_other_than(&[]);
    hosts.stored(leader, "k", "old");
    let follower = SERVERS
        .into_iter()
        .find(|s| *s != leader)
        .expect("a follower");
    hosts.serves(follower, "k", "old");

    hosts.net.cut(follower, leader);
    hosts.stored(leader, "k", "new");

    let asked = Instant::now();
    let reply = hosts.get(follower, "k");
    let within = (asked, READ_REFUSAL_DEADLINE);
    assert_refused("a read on the cut-off follower", &reply, within, &hosts);
    let asked = Instant::now();
    let reply = hosts.set(follower, "j", "through-follower");
    let within = (asked, WRITE_REFUSAL_DEADLINE);
    assert_refused(
        "a write through the cut-off follower",
        &reply,
        within,
        &hosts,
    );
    // The leader still has a majority: the group goes on.
    assert_eq!(hosts.leader_other_than(&[]), leader);
    hosts.stored(leader, "j", "through-leader");

    hosts.net.heal(follower, leader);
    hosts.serves(follower, "k", "new");
    hosts.serves(follower, "j", "through-leader");
    hosts.stored(follower, "after", "heal");
    hosts.serves(leader, "after", "heal");
}

/// The LB cut off from every server (its clients and the test still reach
/// it): the group needs it only to elect, so for several election timeouts
/// the leader keeps committing writes through itself and its followers and
/// every server serves the newest value; the LB back, a leader killed is
/// replaced and nothing acknowledged is lost.
#[test]
fn the_group_keeps_serving_while_the_lb_is_cut_off() {
    let test = "the_group_keeps_serving_while_the_lb_is_cut_off";
    let Some(mut hosts) = Hosts::start(test, 3) else {
        return;
    };
    let leader = hosts.leader_other_than(&[]);
    for server in SERVERS {
        hosts.net.cut(LB, server);
    }
    let timeout = Duration::from_millis(ELECTION_TIMEOUT_MS.parse().expect("a number"));
    let cut_at = Instant::now();
    let mut written = 0;
    while cut_at.elapsed() < 3 * timeout {
        let through = SERVERS[written % SERVERS.len()];
        let read_on = SERVERS[(written + 1) % SERVERS.len()];
        let (key, value) = (format!("w{written}"), format!("v{written}"));
        hosts.stored(through, &key, &value);
        assert_eq!(
            hosts.get(read_on, &key),
            Ok(hit(&key, &value)),
            "{key} read on {read_on} with the LB cut off"
        );
        written += 1;
    }
    eprintln!(
        "{written} writes committed in {:?} without the LB",
        cut_at.elapsed()
    );
    assert_eq!(hosts.leader_other_than(&[]), leader, "no election happened");

    hosts.net.heal_all();
    hosts.kill(leader);
    let new = hosts.leader_other_than(&[leader]);
    hosts.stored(new, "after", "failover");
    for server in SERVERS.into_iter().filter(|s| *s != leader) {
        for i in 0..written {
            hosts.serves(server, &format!("w{i}"), &format!("v{i}"));
        }
    }
}
