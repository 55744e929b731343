//! Userspace UDP relays: the network the nemesis can cut without root.
//!
//! Every node (the LB and each server) gets one relay socket on 127.0.0.1.
//! A server registers the relay's address with the LB (`store addsrv
//! --udp-advertise`), and every server is told the LB's relay as `--lb`, so
//! every replication and control datagram a node receives passes through its
//! relay first. A relay forwards each datagram to its node's real UDP port,
//! unless the link from the datagram's sender to that node is cut.
//!
//! Why one relay per node is enough: servers and the LB send straight to the
//! destination's advertised address (the destination's relay), and neither
//! looks at a datagram's source address (`server/src/cluster.rs` ignores
//! `recv_from`'s address; the LB's driver replies only to registered
//! addresses). So only inbound traffic needs relaying, the receiver is known
//! by which relay got the datagram, and the sender by its source port: a
//! server sends only from its bound UDP port; any other source is the LB,
//! which sends from its control port and, to the leader, from a probe socket
//! on an ephemeral port (`lb/src/driver.rs`).
//!
//! A node that is down has its relay closed too ([`Network::close`]), so a
//! sender gets the same ICMP "port unreachable" it would get without the
//! relay (the LB's probe turns that into an immediate election). A paused
//! node's relay stays open, as its socket does.
//!
//! It owns the relay sockets and their threads; it does not know about
//! processes, faults or clients. TCP (client connections and a follower's
//! forwarding to the leader) does not pass through it: a cut is a UDP cut.

use std::collections::{BTreeSet, HashMap};
use std::io::ErrorKind;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Context;

/// A node: 0 is the LB, 1..=N the servers.
pub type NodeId = usize;

/// The LB's node id.
pub const LB: NodeId = 0;
/// Largest datagram relayed whole (the UDP maximum; the frame format's own
/// limit is far below it, so nothing a node sends is ever cut short).
const DATAGRAM_BYTES_MAX: usize = 65_536;
/// How often a relay thread looks at its flags while idle.
const POLL_MS: u64 = 10;
/// How long closing or reopening a relay may take (its thread looks at its
/// gate every [`POLL_MS`]; its port is normally free at once).
const REOPEN_DEADLINE: Duration = Duration::from_secs(5);

/// Counters of what the relays did.
#[derive(Debug, Default)]
pub struct RelayCounters {
    pub forwarded: AtomicU64,
    /// Dropped because the link was cut.
    pub dropped: AtomicU64,
    /// From a source port that is no server's: the LB's probe socket.
    pub lb_probe: AtomicU64,
}

/// The links that are cut, as (from, to) pairs.
type CutLinks = Arc<Mutex<BTreeSet<(NodeId, NodeId)>>>;

/// Per relay: whether it should be closed, and whether it is bound now.
#[derive(Debug, Default)]
struct Gate {
    closed: AtomicBool,
    bound: AtomicBool,
}

/// One relay per node, and the set of cut links they all obey.
pub struct Network {
    relays: Vec<SocketAddr>,
    /// Each node's real UDP port, which its relay forwards to.
    targets: Vec<u16>,
    gates: Vec<Arc<Gate>>,
    cut: CutLinks,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    pub counters: Arc<RelayCounters>,
}

impl Network {
    /// Binds a relay for each of `targets` (node `i` listens on its real UDP
    /// port `targets[i]` on 127.0.0.1) and starts forwarding.
    pub fn start(targets: &[u16]) -> anyhow::Result<Network> {
        let servers: Arc<HashMap<u16, NodeId>> = Arc::new(
            targets
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != LB)
                .map(|(i, p)| (*p, i))
                .collect(),
        );
        let cut: CutLinks = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let counters = Arc::new(RelayCounters::default());
        let mut network = Network {
            relays: Vec::new(),
            targets: targets.to_vec(),
            gates: Vec::new(),
            cut: cut.clone(),
            stop: stop.clone(),
            threads: Vec::new(),
            counters: counters.clone(),
        };
        for (node, port) in targets.iter().enumerate() {
            let socket =
                bind(SocketAddr::from(([127, 0, 0, 1], 0))).context("bind a relay socket")?;
            let listen = socket.local_addr()?;
            let gate = Arc::new(Gate::default());
            gate.bound.store(true, Relaxed);
            network.relays.push(listen);
            network.gates.push(gate.clone());
            let relay = Relay {
                node,
                listen,
                target: SocketAddr::from(([127, 0, 0, 1], *port)),
                servers: servers.clone(),
                lb_port: targets[LB],
                gate,
                cut: cut.clone(),
                stop: stop.clone(),
                counters: counters.clone(),
            };
            let thread = std::thread::Builder::new()
                .name(format!("relay-{node}"))
                .spawn(move || relay.run(socket))
                .context("start a relay thread")?;
            network.threads.push(thread);
        }
        Ok(network)
    }

    /// Node `node`'s real UDP port, where its relay forwards to.
    pub fn target_port(&self, node: NodeId) -> u16 {
        self.targets[node]
    }

    /// The address node `node`'s peers must send to.
    pub fn relay_of(&self, node: NodeId) -> SocketAddr {
        self.relays[node]
    }

    /// Closes node `node`'s relay (its process is down), so datagrams to it
    /// are refused by the kernel as they would be at the node's own port;
    /// returns once its socket is closed, as a killed process's is once
    /// it is reaped: a datagram sent after this is never relayed.
    pub fn close(&self, node: NodeId) {
        let closed = self.set_gate(node, true);
        assert!(
            closed,
            "relay {node} did not close within {REOPEN_DEADLINE:?}"
        );
    }

    /// Opens node `node`'s relay again on the same address (its process is
    /// starting); returns once it is bound, false if it could not be within
    /// the deadline (another process took the port meanwhile).
    pub fn open(&self, node: NodeId) -> bool {
        self.set_gate(node, false)
    }

    /// Asks node `node`'s relay thread to close (or reopen) its socket and
    /// waits until it has; false if it had not at the deadline. The thread
    /// looks at its gate at least every [`POLL_MS`].
    fn set_gate(&self, node: NodeId, closed: bool) -> bool {
        let gate = &self.gates[node];
        gate.closed.store(closed, Relaxed);
        let deadline = Instant::now() + REOPEN_DEADLINE;
        while Instant::now() < deadline {
            if gate.bound.load(Relaxed) != closed {
                return true;
            }
            std::thread::sleep(Duration::from_millis(POLL_MS));
        }
        false
    }

    /// Drops every datagram from `from` to `to` until healed.
    pub fn cut(&self, from: NodeId, to: NodeId) {
        self.links().insert((from, to));
    }

    /// Restores every link.
    pub fn heal(&self) {
        self.links().clear();
    }

    /// The links cut now, as (from, to).
    pub fn cut_links(&self) -> Vec<(NodeId, NodeId)> {
        self.links().iter().copied().collect()
    }

    fn links(&self) -> std::sync::MutexGuard<'_, BTreeSet<(NodeId, NodeId)>> {
        // The relays never panic while holding it (they only read it).
        self.cut
            .lock()
            .expect("cut-links lock is never held across a panic")
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        self.stop.store(true, Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

fn bind(addr: SocketAddr) -> std::io::Result<UdpSocket> {
    let socket = UdpSocket::bind(addr)?;
    socket.set_read_timeout(Some(Duration::from_millis(POLL_MS)))?;
    Ok(socket)
}

/// One node's relay: its address, where it forwards to, and the rules.
struct Relay {
    node: NodeId,
    listen: SocketAddr,
    target: SocketAddr,
    /// Servers' real UDP ports; any other source is the LB.
    servers: Arc<HashMap<u16, NodeId>>,
    /// The LB's control port (its other source is the probe).
    lb_port: u16,
    gate: Arc<Gate>,
    cut: CutLinks,
    stop: Arc<AtomicBool>,
    counters: Arc<RelayCounters>,
}

impl Relay {
    fn run(self, socket: UdpSocket) {
        let mut socket = Some(socket);
        let mut buf = vec![0u8; DATAGRAM_BYTES_MAX];
        while !self.stop.load(Relaxed) {
            if self.gate.closed.load(Relaxed) {
                if socket.take().is_some() {
                    self.gate.bound.store(false, Relaxed);
                }
                std::thread::sleep(Duration::from_millis(POLL_MS));
                continue;
            }
            let Some(open) = socket.as_ref() else {
                match bind(self.listen) {
                    Ok(s) => {
                        socket = Some(s);
                        self.gate.bound.store(true, Relaxed);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(POLL_MS)),
                }
                continue;
            };
            let (len, source) = match open.recv_from(&mut buf) {
                Ok(received) => received,
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    continue
                }
                // ICMP errors from an earlier send to a dead node, and the
                // like: the next datagram is unaffected.
                Err(_) => continue,
            };
            let from = match self.servers.get(&source.port()) {
                Some(&server) => server,
                None => {
                    if source.port() != self.lb_port {
                        self.counters.lb_probe.fetch_add(1, Relaxed);
                    }
                    LB
                }
            };
            let cut = self
                .cut
                .lock()
                .expect("cut-links lock is never held across a panic")
                .contains(&(from, self.node));
            if cut {
                self.counters.dropped.fetch_add(1, Relaxed);
                continue;
            }
            // A node that is paused loses the datagram, as it would on a
            // real network.
            if open.send_to(&buf[..len], self.target).is_ok() {
                self.counters.forwarded.fetch_add(1, Relaxed);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn socket() -> UdpSocket {
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        s.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        s
    }

    fn recv(s: &UdpSocket) -> Option<Vec<u8>> {
        let mut buf = [0u8; 64];
        s.recv_from(&mut buf).ok().map(|(n, _)| buf[..n].to_vec())
    }

    /// A datagram from a node's real port reaches the destination node's
    /// port through its relay, and stops once that link is cut one way.
    #[test]
    fn relays_and_cuts_one_way() {
        let (lb, server) = (socket(), socket());
        let ports = [
            lb.local_addr().unwrap().port(),
            server.local_addr().unwrap().port(),
        ];
        let net = Network::start(&ports).unwrap();

        lb.send_to(b"ping", net.relay_of(1)).unwrap();
        assert_eq!(recv(&server).as_deref(), Some(&b"ping"[..]));

        net.cut(LB, 1);
        lb.send_to(b"lost", net.relay_of(1)).unwrap();
        server.send_to(b"back", net.relay_of(LB)).unwrap();
        assert_eq!(
            recv(&lb).as_deref(),
            Some(&b"back"[..]),
            "the other way works"
        );
        assert_eq!(recv(&server), None, "the cut way drops");
        // The LB's probe socket (any port that is no server's) is the LB too.
        socket().send_to(b"probe", net.relay_of(1)).unwrap();
        assert_eq!(recv(&server), None, "the probe is cut as the LB");
        assert_eq!(net.counters.dropped.load(Relaxed), 2);
        assert_eq!(net.counters.lb_probe.load(Relaxed), 1);

        net.heal();
        lb.send_to(b"again", net.relay_of(1)).unwrap();
        assert_eq!(recv(&server).as_deref(), Some(&b"again"[..]));
    }

    /// A closed relay refuses like a dead port; reopened, it relays again.
    #[test]
    fn a_closed_relay_refuses_and_reopens() {
        let (lb, server) = (socket(), socket());
        let ports = [
            lb.local_addr().unwrap().port(),
            server.local_addr().unwrap().port(),
        ];
        let net = Network::start(&ports).unwrap();
        net.close(1);
        let probe = socket();
        probe.connect(net.relay_of(1)).unwrap();
        let refused = (0..100).any(|_| {
            let _ = probe.send(b"x");
            let mut buf = [0u8; 8];
            matches!(probe.recv(&mut buf), Err(e) if e.kind() == ErrorKind::ConnectionRefused)
        });
        assert!(refused, "a closed relay's port refuses");
        assert!(net.open(1));
        lb.send_to(b"back", net.relay_of(1)).unwrap();
        assert_eq!(recv(&server).as_deref(), Some(&b"back"[..]));
    }
}
