//! The LB's driver end to end over real sockets on 127.0.0.1: three fake
//! servers speak the control protocol (DESIGN §3a) over UDP with frames
//! built by `data::frame::encode` and the secret from the LB's own cluster
//! file, and a client asks the discovery port. Every wait polls with a
//! deadline; every LB started is cancelled and awaited (or cancelled on
//! drop if the test fails).

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use bytes::BytesMut;
use data::frame::{
    self, ClusterId, Frame, GroupId, Header, LogIndex, Message, Peer, Role, ServerId, Term,
};
use lb::cluster_file::{self, ClusterFile};
use lb::discovery;
use lb::{LbConfig, LbError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::task::JoinHandle;
use tokio::time::{timeout, Instant};
use tokio_util::sync::CancellationToken;

/// Upper bound on any single wait in this test; generous for loaded CI
/// machines, never reached when things work.
const WAIT_MS: u64 = 10_000;

struct RunningLb {
    shutdown: CancellationToken,
    handle: Option<JoinHandle<Result<(), LbError>>>,
    tcp: SocketAddr,
    udp: SocketAddr,
}

impl RunningLb {
    /// Starts an LB; ports 0 pick free ones.
    async fn start(
        dir: &Path,
        (tcp_port, udp_port): (u16, u16),
        heartbeat_ms: u64,
        election_timeout_ms: u64,
    ) -> RunningLb {
        let config = LbConfig {
            listen: "127.0.0.1".parse().expect("literal"),
            tcp_port,
            udp_port,
            data_dir: dir.to_path_buf(),
            heartbeat_ms,
            election_timeout_ms,
            peers: Vec::new(),
            join: Vec::new(),
            cluster_file: None,
        };
        let shutdown = CancellationToken::new();
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let handle = tokio::spawn(lb::run(config, shutdown.clone(), move |tcp, udp| {
            let _ = ready_tx.send((tcp, udp));
        }));
        let (tcp, udp) = timeout(Duration::from_millis(WAIT_MS), ready_rx)
            .await
            .expect("LB ready in time")
            .expect("LB started");
        RunningLb {
            shutdown,
            handle: Some(handle),
            tcp,
            udp,
        }
    }

    async fn stop(mut self) {
        self.shutdown.cancel();
        let handle = self.handle.take().expect("running");
        timeout(Duration::from_millis(WAIT_MS), handle)
            .await
            .expect("LB stops in time")
            .expect("LB task did not panic")
            .expect("LB exits cleanly");
    }
}

impl Drop for RunningLb {
    fn drop(&mut self) {
        // A failed assertion must not leave the LB running.
        self.shutdown.cancel();
    }
}

struct FakeServer {
    id: ServerId,
    tcp: SocketAddr,
    socket: UdpSocket,
    cluster: ClusterFile,
    lb: SocketAddr,
}

impl FakeServer {
    async fn new(id: u64, cluster: &ClusterFile, lb: SocketAddr) -> FakeServer {
        let socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind udp");
        FakeServer {
            id: ServerId(id),
            // Never connected to: only handed out by get-servers.
            tcp: SocketAddr::from(([127, 0, 0, 1], 40000 + id as u16)),
            socket,
            cluster: cluster.clone(),
            lb,
        }
    }

    fn udp(&self) -> SocketAddr {
        self.socket.local_addr().expect("bound")
    }

    async fn send(&self, term: Term, message: Message) {
        let (cluster, group) = (self.cluster.id, GroupId::FIRST);
        self.send_keyed((cluster, group), &self.cluster.secret, term, message)
            .await;
    }

    async fn send_keyed(
        &self,
        (cluster, group): (ClusterId, GroupId),
        secret: &[u8; 32],
        term: Term,
        message: Message,
    ) {
        let frame = Frame {
            header: Header {
                cluster,
                group,
                from: self.id,
                to: ServerId::LB,
                term,
            },
            message,
        };
        let mut out = BytesMut::new();
        frame::encode(&frame, secret, &mut out).expect("encodes");
        self.socket.send_to(&out, self.lb).await.expect("send");
    }

    /// The next frame from the LB that `want` accepts, skipping others.
    async fn recv_until(&self, what: &str, mut want: impl FnMut(&Frame) -> bool) -> Frame {
        let deadline = Instant::now() + Duration::from_millis(WAIT_MS);
        let mut buf = [0u8; 2048];
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            let (len, from) = timeout(remaining, self.socket.recv_from(&mut buf))
                .await
                .unwrap_or_else(|_| panic!("server {} waited too long for {what}", self.id))
                .expect("recv");
            // Frames to the leader leave from the LB's probe socket, on the
            // same address but another port.
            assert_eq!(
                from.ip(),
                self.lb.ip(),
                "only the LB sends to a fake server"
            );
            let frame = frame::decode(&buf[..len], &self.cluster.secret).expect("authentic frame");
            assert_eq!(frame.header.cluster, self.cluster.id);
            assert_eq!(frame.header.from, ServerId::LB);
            assert_eq!(frame.header.to, self.id);
            if want(&frame) {
                return frame;
            }
        }
    }

    async fn register(&self) {
        self.send(
            Term(0),
            Message::Register {
                tcp: self.tcp,
                udp: self.udp(),
            },
        )
        .await;
        self.recv_until("Registered", |f| f.message == Message::Registered)
            .await;
    }

    fn status(&self, role: Role, leader: ServerId, voters: &[ServerId]) -> Message {
        Message::Status {
            role,
            leader,
            last_term: Term(0),
            last_index: LogIndex(0),
            commit_index: LogIndex(0),
            applied_index: LogIndex(0),
            leader_contact_ms: u32::MAX,
            voters: voters.to_vec(),
            learners: vec![],
        }
    }
}

/// Sends one discovery request and reads the reply through `terminator`.
async fn discovery(addr: SocketAddr, request: &str, terminator: &str) -> String {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    exchange(&mut stream, request, terminator).await
}

/// Asks for a challenge on `stream`.
async fn challenge(stream: &mut TcpStream) -> [u8; 32] {
    let line = exchange(stream, "challenge\r\n", "\r\n").await;
    discovery::parse_challenge(&line).unwrap_or_else(|| panic!("no challenge: {line:?}"))
}

/// Sends `request` on `stream` and reads up to `terminator`.
async fn exchange(stream: &mut TcpStream, request: &str, terminator: &str) -> String {
    stream.write_all(request.as_bytes()).await.expect("write");
    let deadline = Instant::now() + Duration::from_millis(WAIT_MS);
    let mut reply = Vec::new();
    let mut chunk = [0u8; 4096];
    while !String::from_utf8_lossy(&reply).ends_with(terminator) {
        let remaining = deadline.saturating_duration_since(Instant::now());
        let n = timeout(remaining, stream.read(&mut chunk))
            .await
            .unwrap_or_else(|_| panic!("no complete reply to {request:?}: {reply:?}"))
            .expect("read");
        assert!(n > 0, "closed mid-reply to {request:?}");
        reply.extend_from_slice(&chunk[..n]);
    }
    String::from_utf8(reply).expect("ascii reply")
}

fn stat(stats: &str, name: &str) -> Option<String> {
    stats
        .lines()
        .find_map(|l| l.strip_prefix(&format!("STAT {name} ")))
        .map(str::to_string)
}

fn stat_u64(stats: &str, name: &str) -> u64 {
    stat(stats, name)
        .unwrap_or_else(|| panic!("no {name} in {stats}"))
        .parse()
        .expect("number")
}

/// Polls `stats` until `done` holds.
async fn poll_stats(addr: SocketAddr, what: &str, done: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_millis(WAIT_MS);
    loop {
        let stats = discovery(addr, "stats\r\n", "END\r\n").await;
        if done(&stats) {
            return stats;
        }
        assert!(
            Instant::now() < deadline,
            "stats never showed {what}: {stats}"
        );
        tokio::task::yield_now().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn elects_the_most_up_to_date_server_and_survives_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    // A long election timeout: the first election must not time out while
    // the fake servers are still answering.
    let lb = RunningLb::start(dir.path(), (0, 0), 50, 30_000).await;
    let cluster = cluster_file::load(&cluster_file::path_in(dir.path())).expect("cluster file");

    let a = FakeServer::new(11, &cluster, lb.udp).await;
    let b = FakeServer::new(22, &cluster, lb.udp).await;
    let c = FakeServer::new(33, &cluster, lb.udp).await;
    let servers = [&a, &b, &c];
    let voters: Vec<ServerId> = servers.iter().map(|s| s.id).collect();
    for server in servers {
        server.register().await;
    }

    // Heartbeats list all three at their registered addresses; nobody leads.
    let expected_peers: Vec<Peer> = servers
        .iter()
        .map(|s| Peer {
            id: s.id,
            tcp: s.tcp,
            udp: s.udp(),
        })
        .collect();
    for server in servers {
        let beat = server
            .recv_until("a heartbeat with all peers", |f| {
                matches!(&f.message, Message::Heartbeat { peers, .. } if *peers == expected_peers)
            })
            .await;
        let Message::Heartbeat { leader, .. } = beat.message else {
            unreachable!()
        };
        assert_eq!(leader, ServerId::LB, "no leader yet");
        server
            .send(
                Term(0),
                server.status(Role::Follower, ServerId::LB, &voters),
            )
            .await;
    }

    // Everyone is asked to promise; the first election is term 1.
    let mut term = Term(0);
    for server in servers {
        let prepare = server
            .recv_until("Prepare", |f| f.message == Message::Prepare)
            .await;
        term = prepare.header.term;
    }
    assert_eq!(term, Term(1));
    // C has the longest log but of an older term; B is the most up to
    // date. C then B promise: B plus C are a majority of B's voters.
    let promise = |last_term, last_index| Message::Promise {
        last_term: Term(last_term),
        last_index: LogIndex(last_index),
        voters: voters.clone(),
    };
    c.send(term, promise(4, 20)).await;
    b.send(term, promise(5, 12)).await;
    for server in servers {
        let named = server
            .recv_until("NewLeader", |f| {
                matches!(f.message, Message::NewLeader { .. })
            })
            .await;
        assert_eq!(named.header.term, term);
        assert_eq!(named.message, Message::NewLeader { leader: b.id });
    }
    // A's late promise changes nothing; heartbeats now name B.
    a.send(term, promise(5, 30)).await;
    a.recv_until(
        "a heartbeat naming B",
        |f| matches!(f.message, Message::Heartbeat { leader, .. } if leader == b.id),
    )
    .await;

    // Discovery: the leader's memcached address first.
    let servers_reply = discovery(lb.tcp, "get-servers\r\n", "end\r\n").await;
    assert_eq!(
        servers_reply,
        format!("{}\r\n{}\r\n{}\r\nend\r\n", b.tcp, a.tcp, c.tcp)
    );
    let stats = discovery(lb.tcp, "stats\r\n", "END\r\n").await;
    assert_eq!(stat_u64(&stats, "term"), 1);
    assert_eq!(stat_u64(&stats, "leader"), b.id.0);
    assert_eq!(stat_u64(&stats, "servers"), 3);
    assert_eq!(stat(&stats, "server.22.tcp"), Some(b.tcp.to_string()));
    assert_eq!(stat(&stats, "server.22.udp"), Some(b.udp().to_string()));
    // Removing a server takes a proof of the cluster secret: without one,
    // with a forged one or one used already, it is refused and counted,
    // and the server stays.
    let unauthenticated = "CLIENT_ERROR unauthenticated: ";
    let refused = discovery(lb.tcp, &format!("remove-server {}\r\n", b.id.0), "\r\n").await;
    assert!(refused.starts_with(unauthenticated), "{refused:?}");
    let mut admin = TcpStream::connect(lb.tcp).await.expect("connect");
    let mut wrong_secret = cluster.secret;
    wrong_secret[5] ^= 1;
    let remove_b = discovery::remove_server_command(b.id);
    let forged =
        discovery::authenticated_line(&remove_b, &wrong_secret, &challenge(&mut admin).await);
    let refused = exchange(&mut admin, &forged, "\r\n").await;
    assert!(refused.starts_with(unauthenticated), "{refused:?}");
    let unknown = discovery::remove_server_command(ServerId(424242));
    let line =
        discovery::authenticated_line(&unknown, &cluster.secret, &challenge(&mut admin).await);
    assert_eq!(exchange(&mut admin, &line, "\r\n").await, "NOT_FOUND\r\n");
    let replayed = exchange(&mut admin, &line, "\r\n").await;
    assert!(replayed.starts_with(unauthenticated), "{replayed:?}");
    let stats = discovery(lb.tcp, "stats\r\n", "END\r\n").await;
    assert_eq!(stat_u64(&stats, "admin_refused"), 3);
    assert_eq!(stat_u64(&stats, "admin_accepted"), 1);
    assert_eq!(stat_u64(&stats, "servers"), 3);
    assert_eq!(stat_u64(&stats, &format!("server.{}.removing", b.id.0)), 0);
    assert_eq!(discovery(lb.tcp, "bogus\r\n", "\r\n").await, "ERROR\r\n");
    assert_eq!(
        discovery(lb.tcp, "remove-server x\r\n", "\r\n").await,
        "ERROR\r\n"
    );

    // A frame with a wrong MAC, one of another cluster and one of another
    // replica group, from a stranger: dropped, counted, never answered.
    let stranger = FakeServer::new(99, &cluster, lb.udp).await;
    let mut wrong_secret = cluster.secret;
    wrong_secret[0] ^= 1;
    let register = Message::Register {
        tcp: stranger.tcp,
        udp: stranger.udp(),
    };
    stranger
        .send_keyed(
            (cluster.id, GroupId::FIRST),
            &wrong_secret,
            Term(0),
            register.clone(),
        )
        .await;
    stranger
        .send_keyed(
            (ClusterId(cluster.id.0 ^ 1), GroupId::FIRST),
            &cluster.secret,
            Term(0),
            register.clone(),
        )
        .await;
    let not_for_lb = stat_u64(&stats, "frames_not_for_lb");
    stranger
        .send_keyed((cluster.id, GroupId(1)), &cluster.secret, Term(0), register)
        .await;
    let stats = poll_stats(lb.tcp, "the three dropped frames", |s| {
        stat_u64(s, "frames_bad_mac") >= 1
            && stat_u64(s, "frames_other_cluster") >= 1
            && stat_u64(s, "frames_not_for_lb") > not_for_lb
    })
    .await;
    assert_eq!(stat_u64(&stats, "servers"), 3);
    assert!(stat(&stats, "server.99.tcp").is_none());
    // The LB handles datagrams in order and the stats reply came after both,
    // so any reply would already be in the stranger's socket buffer.
    let mut buf = [0u8; 2048];
    assert!(
        stranger.socket.try_recv_from(&mut buf).is_err(),
        "a dropped frame was answered"
    );

    let ports = (lb.tcp.port(), lb.udp.port());
    lb.stop().await;

    // Restart on the same data directory and ports (as a restarted LB
    // would), with short timeouts this time.
    let lb = RunningLb::start(dir.path(), ports, 20, 200).await;
    assert_eq!(lb.udp, a.lb);
    let stats = discovery(lb.tcp, "stats\r\n", "END\r\n").await;
    assert!(stat_u64(&stats, "term") >= term.0);
    assert_eq!(
        stat_u64(&stats, "leader"),
        b.id.0,
        "the leader is remembered"
    );
    assert_eq!(stat_u64(&stats, "servers"), 3);
    for server in servers {
        assert_eq!(
            stat(&stats, &format!("server.{}.tcp", server.id)),
            Some(server.tcp.to_string())
        );
        assert_eq!(
            stat(&stats, &format!("server.{}.udp", server.id)),
            Some(server.udp().to_string())
        );
    }
    // B reports it no longer leads; after its grace the LB elects above.
    let mut next = Term(0);
    let deadline = Instant::now() + Duration::from_millis(WAIT_MS);
    while next <= term {
        assert!(Instant::now() < deadline, "no new election after restart");
        let f = b
            .recv_until("a heartbeat or Prepare", |f| {
                matches!(f.message, Message::Heartbeat { .. } | Message::Prepare)
            })
            .await;
        match f.message {
            Message::Heartbeat { .. } => {
                b.send(term, b.status(Role::Follower, ServerId::LB, &voters))
                    .await
            }
            _ => next = f.header.term,
        }
    }
    assert!(next > term, "restart reused term {term}");
    lb.stop().await;
}
