//! Three LBs as one group (DESIGN §3c), as real processes on 127.0.0.1:
//! they elect one leader among themselves; what the leading LB decides (a
//! server's registration, the data term, the leader it names) is in the
//! group's log, so followers answer `get-servers` from it; after the
//! leading LB is killed another leads from the same registry and never
//! issues a data term again; the killed one restarts on its data directory,
//! follows and catches up. Every process is killed when the test ends.

mod common;

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::cluster::{request, request_within, server_stats};
use common::{parse_stats, poll_until, spawn_logged, ServerProc, StoreServer};
use data::cluster_file::ClusterFile;
use data::frame::ClusterId;

/// An LB election, a data election and a catch-up each take well under this.
const DEADLINE: Duration = Duration::from_secs(20);
const LBS: usize = 3;

struct Lb {
    addr: SocketAddr,
    dir: PathBuf,
    args: Vec<String>,
    proc: Option<ServerProc>,
}

impl Lb {
    fn start(&mut self, logs: &Path) {
        let mut command = Command::new(StoreServer::store_bin());
        command.args(&self.args);
        self.proc = Some(spawn_logged(
            command,
            logs,
            &format!("lb-{}", self.addr.port()),
        ));
    }

    fn kill9(&mut self) {
        if let Some(mut proc) = self.proc.take() {
            proc.kill9();
        }
    }

    fn stats(&self) -> BTreeMap<String, String> {
        let reply = request(self.addr, b"stats\r\n", b"END\r\n").unwrap_or_default();
        parse_stats(&reply).into_iter().collect()
    }

    fn servers(&self) -> Vec<String> {
        let reply = request(self.addr, b"get-servers\r\n", b"end\r\n").unwrap_or_default();
        let text = String::from_utf8_lossy(&reply).into_owned();
        text.lines()
            .take_while(|l| *l != "end")
            .map(str::to_string)
            .collect()
    }

    fn log(&self) -> String {
        self.proc
            .as_ref()
            .map(|p| p.stderr_text())
            .unwrap_or_default()
    }
}

/// A TCP port whose UDP twin and UDP port + 1000 (the LB group's) were
/// free a moment ago.
fn lb_port() -> u16 {
    loop {
        let tcp = TcpListener::bind("127.0.0.1:0").expect("a TCP port");
        let port = tcp.local_addr().expect("bound").port();
        let Some(peer) = port.checked_add(1000) else {
            continue;
        };
        if UdpSocket::bind(("127.0.0.1", port)).is_ok()
            && UdpSocket::bind(("127.0.0.1", peer)).is_ok()
        {
            return port;
        }
    }
}

fn stat<'a>(stats: &'a BTreeMap<String, String>, name: &str) -> &'a str {
    stats.get(name).map_or("", String::as_str)
}

fn stat_u64(stats: &BTreeMap<String, String>, name: &str) -> u64 {
    stat(stats, name).parse().unwrap_or(0)
}

/// The index of the one LB among `up` that says it leads, once the others
/// name it too.
fn await_lb_leader(lbs: &[Lb], up: &[usize]) -> usize {
    let mut leader = None;
    let agreed = poll_until(DEADLINE, || {
        let stats: Vec<_> = up.iter().map(|i| (*i, lbs[*i].stats())).collect();
        let leaders: Vec<usize> = stats
            .iter()
            .filter(|(_, s)| stat(s, "role") == "leader")
            .map(|(i, _)| *i)
            .collect();
        leader = match leaders[..] {
            [one] => Some(one),
            _ => None,
        };
        leader.is_some_and(|one| {
            let addr = lbs[one].addr.to_string();
            stats
                .iter()
                .all(|(_, s)| stat(s, "lb_leader") == addr && stat(s, "lbs") == "3")
        })
    });
    let logs: Vec<String> = up.iter().map(|i| lbs[*i].log()).collect();
    assert!(
        agreed,
        "no LB leader all agree on; logs:\n{}",
        logs.join("\n")
    );
    leader.expect("polled")
}

/// Three LBs of one group, started, with their cluster file; every LB is
/// killed when dropped.
struct Group {
    /// Holds every LB's data directory and the logs.
    _dir: tempfile::TempDir,
    logs: PathBuf,
    cluster_path: PathBuf,
    lbs: Vec<Lb>,
}

impl Group {
    fn start() -> Group {
        let dir = tempfile::tempdir().expect("temp dir");
        let logs = dir.path().join("logs");
        std::fs::create_dir_all(&logs).expect("logs dir");
        let cluster_path = dir.path().join("cluster");
        let cluster = ClusterFile {
            id: ClusterId(0x1b_9e0c),
            secret: [0x5a; 32],
        };
        std::fs::write(&cluster_path, cluster.format()).expect("write the cluster file");
        let ports: Vec<u16> = (0..LBS).map(|_| lb_port()).collect();
        let peers: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        let mut lbs: Vec<Lb> = ports
            .iter()
            .enumerate()
            .map(|(i, port)| {
                let lb_dir = dir.path().join(format!("lb-{}", i + 1));
                let args = [
                    "addlb",
                    "-p",
                    &port.to_string(),
                    "--data-dir",
                    &lb_dir.display().to_string(),
                    "--peers",
                    &peers.join(","),
                    "--cluster-file",
                    &cluster_path.display().to_string(),
                ]
                .map(String::from)
                .to_vec();
                Lb {
                    addr: SocketAddr::from(([127, 0, 0, 1], *port)),
                    dir: lb_dir,
                    args,
                    proc: None,
                }
            })
            .collect();
        for lb in &mut lbs {
            lb.start(&logs);
        }
        Group {
            _dir: dir,
            logs,
            cluster_path,
            lbs,
        }
    }

    /// Every LB, comma-separated, as `--lb` takes them.
    fn lb_list(&self) -> String {
        let addrs: Vec<String> = self.lbs.iter().map(|lb| lb.addr.to_string()).collect();
        addrs.join(",")
    }
}

/// `store addsrv` flags to join the cluster of these LBs.
fn server_args(lbs: &str, cluster_path: &Path) -> Vec<String> {
    [
        "--lb",
        lbs,
        "--cluster-file",
        &cluster_path.display().to_string(),
    ]
    .map(String::from)
    .to_vec()
}

impl Drop for Group {
    fn drop(&mut self) {
        for lb in &mut self.lbs {
            lb.kill9();
        }
    }
}

#[test]
fn three_lbs_elect_one_and_keep_the_registry_through_a_kill() {
    let mut group = Group::start();
    let logs = group.logs.clone();
    let cluster_path = group.cluster_path.clone();
    let lbs = &mut group.lbs;
    let all: Vec<usize> = (0..LBS).collect();
    let first = await_lb_leader(lbs, &all);
    let lb_term = stat_u64(&lbs[first].stats(), "lb_term");
    assert!(lb_term > 0, "an LB group leader leads in a term");

    // A data server that knows only the leading LB registers with it and
    // is named leader.
    let args = server_args(&lbs[first].addr.to_string(), &cluster_path);
    let server = StoreServer::start(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let server_addr = format!("127.0.0.1:{}", server.port);
    let server_id = server_stats(server_addr.parse().expect("an address"))
        .get("repl_id")
        .cloned()
        .expect("the server's id");
    let mut data_term = 0;
    let named = poll_until(DEADLINE, || {
        let stats = lbs[first].stats();
        data_term = stat_u64(&stats, "term");
        stat(&stats, "leader") == server_id
    });
    assert!(named, "no data leader named: {:?}", lbs[first].stats());
    assert!(data_term > 0);

    // Followers answer from the registry the group committed.
    for follower in all.iter().filter(|i| **i != first) {
        let lb = &lbs[*follower];
        let caught_up = poll_until(DEADLINE, || {
            lb.servers() == [server_addr.as_str()] && stat_u64(&lb.stats(), "term") == data_term
        });
        assert!(
            caught_up,
            "follower LB {} never showed the registry: {:?} {:?}",
            lb.addr,
            lb.servers(),
            lb.stats()
        );
        assert_eq!(stat(&lb.stats(), "role"), "follower");
    }

    // The leading LB dies; another leads, from the same registry.
    lbs[first].kill9();
    let up: Vec<usize> = all.iter().copied().filter(|i| *i != first).collect();
    let second = await_lb_leader(lbs, &up);
    let stats = lbs[second].stats();
    assert!(
        stat_u64(&stats, "lb_term") > lb_term,
        "a new LB leader leads in a newer LB term: {stats:?}"
    );
    assert!(
        stat_u64(&stats, "term") >= data_term,
        "a data term is never issued twice: the new LB leader starts from {data_term}: {stats:?}"
    );
    assert_eq!(lbs[second].servers(), [server_addr.as_str()]);

    // The killed LB comes back on its data directory and follows.
    assert!(lbs[first].dir.is_dir());
    lbs[first].start(&logs);
    let leader_addr = lbs[second].addr.to_string();
    let rejoined = poll_until(DEADLINE, || {
        let stats = lbs[first].stats();
        stat(&stats, "role") == "follower"
            && stat(&stats, "lb_leader") == leader_addr
            && lbs[first].servers() == [server_addr.as_str()]
    });
    assert!(
        rejoined,
        "the restarted LB did not follow and catch up: {:?}\n{}",
        lbs[first].stats(),
        lbs[first].log()
    );
    drop(server);
}

/// The data leader the LB at `lb` names, by its memcached address.
fn data_leader(lb: &Lb) -> Option<SocketAddr> {
    let stats = lb.stats();
    let id = stats.get("leader")?;
    stats.get(&format!("server.{id}.tcp"))?.parse().ok()
}

fn set(addr: SocketAddr, key: &str, value: &str) -> bool {
    let bytes = format!("set {key} 0 0 {}\r\n{value}\r\n", value.len());
    request_within(addr, bytes.as_bytes(), b"\r\n", Duration::from_millis(500))
        .is_ok_and(|reply| reply == b"STORED\r\n")
}

#[test]
fn a_write_succeeds_after_the_lb_leader_and_then_the_data_leader_are_killed() {
    const SERVERS: usize = 3;
    let mut group = Group::start();
    let all: Vec<usize> = (0..LBS).collect();
    let first = await_lb_leader(&group.lbs, &all);
    let args = server_args(&group.lb_list(), &group.cluster_path);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    // One at a time, as `store up` does: each joins before the next starts.
    let mut servers = Vec::new();
    for i in 0..SERVERS {
        let server = StoreServer::start(&args);
        let joined = poll_until(DEADLINE, || {
            let role = server_stats(SocketAddr::from(([127, 0, 0, 1], server.port)))
                .get("repl_role")
                .cloned()
                .unwrap_or_default();
            (i == 0 && role == "leader") || role == "follower"
        });
        assert!(
            joined,
            "server {i} did not join: {:?}",
            group.lbs[first].stats()
        );
        servers.push(server);
    }
    let addr_of = |s: &StoreServer| SocketAddr::from(([127, 0, 0, 1], s.port));
    let leader = data_leader(&group.lbs[first]).expect("a data leader");
    assert!(set(leader, "before", "1"), "a write before the kills");
    let leader_id = server_stats(leader)
        .get("repl_id")
        .cloned()
        .expect("the leader's id");

    group.lbs[first].kill9();
    let leader_index = servers
        .iter()
        .position(|s| addr_of(s) == leader)
        .expect("the leader is one of the servers");
    servers[leader_index].kill9();
    let killed = Instant::now();
    let survivors: Vec<SocketAddr> = servers
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != leader_index)
        .map(|(_, s)| addr_of(s))
        .collect();
    let mut acknowledged = Vec::new();
    let mut attempt = 0;
    let written = poll_until(DEADLINE, || {
        attempt += 1;
        let key = format!("after-{attempt}");
        survivors.iter().any(|addr| {
            let stored = set(*addr, &key, "2");
            if stored {
                acknowledged.push(key.clone());
            }
            stored
        })
    });
    let took = killed.elapsed();
    let up: Vec<usize> = all.iter().copied().filter(|i| *i != first).collect();
    let logs: Vec<String> = up.iter().map(|i| group.lbs[*i].log()).collect();
    assert!(
        written,
        "no write succeeded after the LB leader and the data leader were killed; LB logs:\n{}",
        logs.join("\n")
    );
    eprintln!(
        "first write acknowledged {} ms after the data leader was killed",
        took.as_millis()
    );
    // Nothing acknowledged is lost: every key reads back from a survivor.
    for key in std::iter::once("before".to_string()).chain(acknowledged) {
        let found = survivors.iter().any(|addr| {
            request_within(
                *addr,
                format!("get {key}\r\n").as_bytes(),
                b"END\r\n",
                Duration::from_secs(2),
            )
            .is_ok_and(|reply| reply.starts_with(format!("VALUE {key} ").as_bytes()))
        });
        assert!(found, "acknowledged {key} is lost");
    }

    // `store remove-server` finds the LB that acts: the dead one does not
    // answer, a follower points at the leader, the leader removes it.
    let follower = up
        .iter()
        .copied()
        .find(|i| stat(&group.lbs[*i].stats(), "role") == "follower")
        .expect("a follower LB");
    let lb_list = format!("{},{}", group.lbs[first].addr, group.lbs[follower].addr);
    let output = Command::new(StoreServer::store_bin())
        .args([
            "remove-server",
            &leader_id,
            "--lb",
            &lb_list,
            "--cluster-file",
        ])
        .arg(&group.cluster_path)
        .output()
        .expect("run store remove-server");
    assert!(
        output.status.success(),
        "remove-server through a follower LB: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let leading = up
        .iter()
        .copied()
        .find(|i| stat(&group.lbs[*i].stats(), "role") == "leader")
        .expect("a leading LB");
    let removed = poll_until(DEADLINE, || {
        group.lbs[leading].servers().len() == SERVERS - 1
    });
    assert!(
        removed,
        "the killed server is still listed: {:?}",
        group.lbs[leading].servers()
    );
}

#[test]
fn store_up_starts_an_lb_group_and_status_shows_every_lb() {
    let mut cluster = common::cluster::start_with_lbs(LBS, 3, &[]);
    assert_eq!(cluster.lbs.len(), LBS);
    let status = |lb: SocketAddr| {
        let output = Command::new(StoreServer::store_bin())
            .args(["status", "--json", "--lb", &lb.to_string()])
            .output()
            .expect("run store status");
        assert!(output.status.success(), "store status: {output:?}");
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    // One LB's address is enough to see all three, one of them leading.
    let lb_1 = cluster.lbs[0];
    let json = status(lb_1);
    for lb in &cluster.lbs {
        assert!(
            json.contains(&format!("\"{lb}\":{{")),
            "{lb} missing: {json}"
        );
    }
    // "leader" three times: the leading LB among `lbs`, its own fields
    // again as `cluster` (the data group is its view), the data leader.
    let leaders = |json: &str| json.matches("\"role\":\"leader\"").count();
    assert_eq!(leaders(&json), 3, "one LB and one server lead: {json}");
    // The leading LB killed: status still shows the group, that LB as
    // unreachable, and the data group as the new leading LB sees it.
    let leading = (0..LBS)
        .find(|i| {
            let reply = request(cluster.lbs[*i], b"stats\r\n", b"END\r\n").unwrap_or_default();
            String::from_utf8_lossy(&reply).contains("STAT role leader\r\n")
        })
        .expect("a leading LB");
    cluster.kill(&format!("lb-{}", leading + 1));
    let alive = cluster.lbs[(leading + 1) % LBS];
    let mut json = String::new();
    let recovered = poll_until(DEADLINE, || {
        json = status(alive);
        json.contains("\"error\":") && leaders(&json) == 3
    });
    assert!(recovered, "status after the leading LB died: {json}");
}
