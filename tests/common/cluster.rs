//! A `store up` cluster for a test (data in a temp dir, ports free, every
//! process stopped when it is dropped) and the small requests the cluster
//! tests make: raw memcached requests, a server's `stats`, the LB's view.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use store::status::{self, ClusterStatus};
use store::up::{Cluster, UpConfig};

use super::{parse_stats, StoreServer};

pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
pub const ELECTION_TIMEOUT_MS: u64 = 1000;

pub struct TestCluster {
    pub cluster: Cluster,
    pub dir: tempfile::TempDir,
}

impl std::ops::Deref for TestCluster {
    type Target = Cluster;
    fn deref(&self) -> &Cluster {
        &self.cluster
    }
}

impl std::ops::DerefMut for TestCluster {
    fn deref_mut(&mut self) -> &mut Cluster {
        &mut self.cluster
    }
}

/// `servers` servers with the default timings (100 ms heartbeats, 1 s
/// election timeout), each also given `server_args`, and one LB (these
/// tests ask it for every server's status).
pub fn start_with(servers: usize, server_args: &[&str]) -> TestCluster {
    start_with_lbs(1, servers, server_args)
}

/// [`start_with`] with `lbs` LBs (a group of LBs when more than one).
pub fn start_with_lbs(lbs: usize, servers: usize, server_args: &[&str]) -> TestCluster {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = UpConfig {
        servers,
        lbs,
        data_dir: dir.path().to_path_buf(),
        // The LBs take the first ports, the servers those after them.
        port: super::free_ports((lbs + servers) as u16),
        heartbeat_ms: 100,
        election_timeout_ms: ELECTION_TIMEOUT_MS,
        exe: env!("CARGO_BIN_EXE_store").into(),
    };
    let args: Vec<String> = server_args.iter().map(|a| a.to_string()).collect();
    let cluster = Cluster::start_with(&config, &args).expect("cluster starts");
    TestCluster { cluster, dir }
}

pub fn start(servers: usize) -> TestCluster {
    start_with(servers, &[])
}

/// The LB's `stats` (empty if it cannot be reached).
pub fn lb_status(lb: SocketAddr) -> ClusterStatus {
    status::fetch(&lb.to_string(), REQUEST_TIMEOUT).unwrap_or_default()
}

/// The LBs and the data group, as `store status` shows them through any
/// of `lbs` (`None` if none answers).
pub fn group_status(lbs: &[SocketAddr]) -> Option<status::GroupStatus> {
    let lbs: Vec<String> = lbs.iter().map(SocketAddr::to_string).collect();
    status::fetch_group(&lbs, REQUEST_TIMEOUT).ok()
}

/// The data group as the LB leading the LB group sees it, through any of
/// `lbs` (empty if none answers).
pub fn group_view(lbs: &[SocketAddr]) -> ClusterStatus {
    group_status(lbs)
        .map(|group| group.data)
        .unwrap_or_default()
}

/// The memcached address of the server the LB names leader.
pub fn leader(lb: SocketAddr) -> Option<SocketAddr> {
    lb_status(lb).leader_tcp()
}

/// The leader once the LB names one, and a follower (polled for 10 s).
pub fn leader_and_follower(cluster: &TestCluster) -> (SocketAddr, SocketAddr) {
    let mut leader = None;
    let named = super::poll_until(Duration::from_secs(10), || {
        leader = self::leader(cluster.lb);
        leader.is_some()
    });
    assert!(named, "no leader named\n{}", cluster.log_tails(20));
    let leader = leader.expect("polled");
    let follower = *cluster
        .servers
        .iter()
        .find(|s| **s != leader)
        .expect("a follower");
    (leader, follower)
}

/// The leader and both followers of a 3-server cluster.
pub fn leader_and_followers(cluster: &TestCluster) -> (SocketAddr, SocketAddr, SocketAddr) {
    let (leader, follower) = leader_and_follower(cluster);
    let other = *cluster
        .servers
        .iter()
        .find(|s| ![leader, follower].contains(s))
        .expect("a second follower");
    (leader, follower, other)
}

/// One request, one reply: read until `terminator`, an error line, or the
/// deadline.
pub fn request(addr: SocketAddr, bytes: &[u8], terminator: &[u8]) -> Result<Vec<u8>, String> {
    request_within(addr, bytes, terminator, REQUEST_TIMEOUT)
}

/// [`request`] with `timeout` for connecting and for each read.
pub fn request_within(
    addr: SocketAddr,
    bytes: &[u8],
    terminator: &[u8],
    timeout: Duration,
) -> Result<Vec<u8>, String> {
    let mut stream = TcpStream::connect_timeout(&addr, timeout).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    stream.write_all(bytes).map_err(|e| e.to_string())?;
    let is_error = |r: &[u8]| {
        (r.starts_with(b"SERVER_ERROR") || r.starts_with(b"CLIENT_ERROR")) && r.ends_with(b"\r\n")
    };
    let mut reply = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    while !reply.ends_with(terminator) && !is_error(&reply) {
        let n = stream.read(&mut chunk).map_err(|e| e.to_string())?;
        if n == 0 {
            return Err(format!(
                "closed after {:?}",
                String::from_utf8_lossy(&reply)
            ));
        }
        reply.extend_from_slice(&chunk[..n]);
    }
    Ok(reply)
}

/// A server's `stats` (empty if it cannot be reached).
pub fn server_stats(addr: SocketAddr) -> BTreeMap<String, String> {
    let reply = request(addr, b"stats\r\n", b"END\r\n").unwrap_or_default();
    parse_stats(&reply).into_iter().collect()
}

/// A single server and a follower of a 3-server cluster, each started
/// with `args`: what the client tests point a client at.
pub fn server_and_follower(args: &[&str]) -> (StoreServer, TestCluster, [SocketAddr; 2]) {
    let server = StoreServer::start(args);
    let alone: SocketAddr = ([127, 0, 0, 1], server.port).into();
    let cluster = start_with(3, args);
    let (_, follower) = leader_and_follower(&cluster);
    (server, cluster, [alone, follower])
}
