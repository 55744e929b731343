//! A fixed group that elects its own leader by vote (DESIGN §3b), with no
//! LB: three whole servers (listener, replication driver, disks, UDP on
//! loopback) in this process, as the LB group's members will run. A
//! leader is elected; writes through any member commit; the leader stops
//! and another is elected, holding every acknowledged write; the stopped
//! member starts again on its data directory, follows, and catches up.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use data::cluster_file::ClusterFile;
use data::frame::{ClusterId, GroupId, Peer, ServerId};
use server::config::{
    ClusterSettings, Config, Elector, ReadMode, StaticGroup, SNAPSHOT_LOG_BYTES_DEFAULT,
};
use server::replica::Timing;
use tokio_util::sync::CancellationToken;

/// An election, a restart and a catch-up each take well under this.
const DEADLINE: Duration = Duration::from_secs(20);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
const POLL: Duration = Duration::from_millis(20);
const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// One member: a server on its own runtime thread, stopped when dropped.
struct Member {
    peer: Peer,
    data_dir: PathBuf,
    shutdown: CancellationToken,
    thread: Option<JoinHandle<Result<(), String>>>,
}

impl Member {
    fn start(id: ServerId, members: &[Peer], cluster: &ClusterFile, data_dir: &Path) -> Member {
        let peer = *members.iter().find(|m| m.id == id).expect("a member");
        let config = Config {
            listen: LOCALHOST,
            port: peer.tcp.port(),
            connections_max: 64,
            item_bytes_max: 1024 * 1024,
            threads: 1,
            verbose: 0,
            data_dir: data_dir.to_path_buf(),
            snapshot_log_bytes: SNAPSHOT_LOG_BYTES_DEFAULT,
            memory_limit_bytes: 0,
            shutdown_enabled: false,
            auth_file: None,
            sasl_pwdb: None,
            tls: None,
            unix_socket: None,
            cluster: Some(ClusterSettings {
                group: GroupId::FIRST,
                elector: Elector::Vote(StaticGroup {
                    id,
                    members: members.to_vec(),
                    joining: false,
                }),
                cluster: cluster.clone(),
                udp_listen: peer.udp,
                udp_advertise: None,
                timing: Timing::default(),
                read_mode: ReadMode::Linearizable,
            }),
        };
        let shutdown = CancellationToken::new();
        let token = shutdown.clone();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            runtime
                .block_on(server::run(config, token, |_| {}))
                .map_err(|e| e.to_string())
        });
        Member {
            peer,
            data_dir: data_dir.to_path_buf(),
            shutdown,
            thread: Some(thread),
        }
    }

    /// Stops the server (its sockets close) and returns how it ended.
    fn stop(&mut self) -> Option<Result<(), String>> {
        self.shutdown.cancel();
        let thread = self.thread.take()?;
        Some(thread.join().unwrap_or_else(|_| Err("panicked".into())))
    }

    fn role(&self) -> Option<String> {
        let reply = request(self.peer.tcp, b"stats\r\n", b"END\r\n").ok()?;
        reply
            .lines()
            .find_map(|line| line.strip_prefix("STAT repl_role ").map(str::to_string))
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

/// One request, its reply read until `terminator` or an error line.
fn request(addr: SocketAddr, bytes: &[u8], terminator: &[u8]) -> Result<String, String> {
    let mut stream =
        TcpStream::connect_timeout(&addr, REQUEST_TIMEOUT).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(REQUEST_TIMEOUT))
        .map_err(|e| e.to_string())?;
    stream.write_all(bytes).map_err(|e| e.to_string())?;
    let mut reply = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let error_line = reply.starts_with(b"SERVER_ERROR") && reply.ends_with(b"\r\n");
        if reply.ends_with(terminator) || error_line {
            break;
        }
        let n = stream.read(&mut chunk).map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("closed".into());
        }
        reply.extend_from_slice(&chunk[..n]);
    }
    Ok(String::from_utf8_lossy(&reply).into_owned())
}

fn set(addr: SocketAddr, key: &str, value: &str) -> Result<String, String> {
    let bytes = format!("set {key} 0 0 {}\r\n{value}\r\n", value.len());
    request(addr, bytes.as_bytes(), b"\r\n")
}

fn get(addr: SocketAddr, key: &str) -> Result<String, String> {
    request(addr, format!("get {key}\r\n").as_bytes(), b"END\r\n")
}

fn hit(key: &str, value: &str) -> String {
    format!("VALUE {key} 0 {}\r\n{value}\r\nEND\r\n", value.len())
}

fn poll_until(mut ready: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + DEADLINE;
    while Instant::now() < end {
        if ready() {
            return true;
        }
        std::thread::sleep(POLL);
    }
    false
}

/// The one member that says it leads, once exactly one does.
fn await_leader(members: &[&Member]) -> usize {
    let mut leader = None;
    let elected = poll_until(|| {
        let leaders: Vec<usize> = (0..members.len())
            .filter(|i| members[*i].role().as_deref() == Some("leader"))
            .collect();
        leader = match leaders[..] {
            [one] => Some(one),
            _ => None,
        };
        leader.is_some()
    });
    assert!(elected, "no single leader elected by vote");
    leader.expect("polled")
}

/// A cluster file and three members, ids 1 to 3, on free ports.
fn group_of_three() -> (ClusterFile, Vec<Peer>) {
    let cluster = ClusterFile {
        id: ClusterId(0x0057_471c),
        secret: [7; 32],
    };
    let peers = (1..=3)
        .map(|i| {
            let (tcp, udp) = free_addrs();
            Peer {
                id: ServerId(i),
                tcp,
                udp,
            }
        })
        .collect();
    (cluster, peers)
}

fn free_addrs() -> (SocketAddr, SocketAddr) {
    let tcp = TcpListener::bind((LOCALHOST, 0)).expect("a TCP port");
    let udp = UdpSocket::bind((LOCALHOST, 0)).expect("a UDP port");
    (
        tcp.local_addr().expect("bound"),
        udp.local_addr().expect("bound"),
    )
}

#[test]
fn a_fixed_group_elects_its_leader_and_fails_over_without_an_lb() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (cluster, peers) = group_of_three();
    let mut members: Vec<Member> = peers
        .iter()
        .map(|p| Member::start(p.id, &peers, &cluster, &dir.path().join(p.id.to_string())))
        .collect();

    let leader = await_leader(&members.iter().collect::<Vec<_>>());
    let follower = (leader + 1) % 3;
    for i in 0..10 {
        let through = if i % 2 == 0 { leader } else { follower };
        let addr = members[through].peer.tcp;
        assert_eq!(
            set(addr, &format!("k{i}"), &format!("v{i}")).as_deref(),
            Ok("STORED\r\n"),
            "k{i} through member {through}"
        );
    }

    let stopped_at = Instant::now();
    let ended = members[leader].stop();
    assert_eq!(ended, Some(Ok(())), "the leader stops cleanly");
    let survivors: Vec<&Member> = (0..3)
        .filter(|i| *i != leader)
        .map(|i| &members[i])
        .collect();
    let new = await_leader(&survivors);
    eprintln!(
        "leader {} stopped; {} elected by vote within {:?}",
        members[leader].peer.id,
        survivors[new].peer.id,
        stopped_at.elapsed()
    );
    for member in &survivors {
        for i in 0..10 {
            let (key, value) = (format!("k{i}"), format!("v{i}"));
            assert_eq!(
                get(member.peer.tcp, &key),
                Ok(hit(&key, &value)),
                "{key} on member {}",
                member.peer.id
            );
        }
    }
    assert_eq!(
        set(survivors[new].peer.tcp, "after", "failover").as_deref(),
        Ok("STORED\r\n")
    );

    // Back on its data directory, the old leader follows and catches up.
    let old = members[leader].peer;
    let data_dir = members[leader].data_dir.clone();
    members[leader] = Member::start(old.id, &peers, &cluster, &data_dir);
    let back = &members[leader];
    let caught_up = poll_until(|| {
        back.role().as_deref() == Some("follower")
            && get(old.tcp, "after") == Ok(hit("after", "failover"))
    });
    assert!(caught_up, "member {} did not rejoin", old.id);
}

#[test]
fn a_data_directory_serves_only_the_member_it_was_made_for() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (cluster, peers) = group_of_three();
    let data_dir = dir.path().join("one");
    let mut first = Member::start(ServerId(1), &peers, &cluster, &data_dir);
    assert!(poll_until(|| first.role().is_some()), "member 1 came up");
    assert_eq!(first.stop(), Some(Ok(())));
    let mut wrong = Member::start(ServerId(2), &peers, &cluster, &data_dir);
    let ended = wrong.stop();
    assert!(
        matches!(&ended, Some(Err(e)) if e.contains("holds member 1 of its group, not 2")),
        "{ended:?}"
    );
}
