//! Hosts on a network for a test: each host is a Linux network namespace
//! with one address of its own (on its loopback), and every pair of hosts
//! is joined by a veth pair of its own, routed by a /32 route at each end.
//! Taking one pair's link down cuts exactly those two hosts apart, for
//! everything that crosses it: UDP replication, TCP forwarding, the LB's
//! heartbeats, a client's connections (established ones go silent, new ones
//! are refused as unreachable). `heal` brings the link and its routes back.
//!
//! Made with iproute2 (`ip netns`, `ip -n`), which needs root. The
//! namespace names carry the test process's id and a tag, so that tests
//! running at once never share one; `Drop` deletes them.
//!
//! The test itself talks from the host named [`CLIENT`]: `Net::client`
//! runs a closure on a thread that entered that host's namespace, so the
//! sockets it opens live there.

use std::fs::File;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::process::{Command, Stdio};

/// The host the test's own requests come from.
pub const CLIENT: &str = "client";

/// Hosts' addresses are 10.77.0.N, N from 1 up, in the order given.
const ADDRESS_PREFIX: [u8; 3] = [10, 77, 0];

pub struct Net {
    prefix: String,
    hosts: Vec<String>,
}

/// Why namespaces could not be made (not root, no iproute2, a kernel
/// without them): the test skips with this.
#[derive(Debug)]
pub struct Unavailable(pub String);

impl Net {
    /// Hosts named `hosts` (the first must be [`CLIENT`]), each joined to
    /// every other. `tag` tells apart the namespaces of tests in one process.
    pub fn create(tag: &str, hosts: &[&str]) -> Result<Net, Unavailable> {
        assert_eq!(hosts.first(), Some(&CLIENT), "the client host comes first");
        assert!(hosts.len() < 250, "one /24 of addresses");
        let mut net = Net {
            prefix: format!("st{}{tag}", std::process::id()),
            hosts: Vec::new(),
        };
        for host in hosts {
            let ns = format!("{}-{host}", net.prefix);
            ip(&["netns", "add", &ns]).map_err(Unavailable)?;
            net.hosts.push(host.to_string());
            let addr = format!("{}/32", net.addr(host));
            ip(&["-n", &ns, "link", "set", "lo", "up"]).map_err(Unavailable)?;
            ip(&["-n", &ns, "addr", "add", &addr, "dev", "lo"]).map_err(Unavailable)?;
        }
        for (i, a) in hosts.iter().enumerate() {
            for b in &hosts[i + 1..] {
                let (ns_a, ns_b) = (net.ns(a), net.ns(b));
                ip(&[
                    "-n",
                    &ns_a,
                    "link",
                    "add",
                    &link_name(b),
                    "type",
                    "veth",
                    "peer",
                    "name",
                    &link_name(a),
                    "netns",
                    &ns_b,
                ])
                .map_err(Unavailable)?;
                net.heal(a, b);
            }
        }
        Ok(net)
    }

    /// The namespace of `host`.
    pub fn ns(&self, host: &str) -> String {
        assert!(self.hosts.iter().any(|h| h == host), "no host {host}");
        format!("{}-{host}", self.prefix)
    }

    pub fn addr(&self, host: &str) -> Ipv4Addr {
        let n = self
            .hosts
            .iter()
            .position(|h| h == host)
            .unwrap_or_else(|| panic!("no host {host}"));
        let [a, b, c] = ADDRESS_PREFIX;
        Ipv4Addr::new(a, b, c, n as u8 + 1)
    }

    /// Takes the link between `a` and `b` down (both ends lose it).
    pub fn cut(&self, a: &str, b: &str) {
        ip(&["-n", &self.ns(a), "link", "set", &link_name(b), "down"])
            .unwrap_or_else(|e| panic!("cut {a} from {b}: {e}"));
    }

    /// Brings the link between `a` and `b` up, with a route each way.
    pub fn heal(&self, a: &str, b: &str) {
        for (from, to) in [(a, b), (b, a)] {
            let ns = self.ns(from);
            let dev = link_name(to);
            let dst = format!("{}/32", self.addr(to));
            let src = self.addr(from).to_string();
            ip(&["-n", &ns, "link", "set", &dev, "up"])
                .and_then(|()| {
                    // `replace`: the end taken down lost its route, the
                    // other end kept its own.
                    ip(&[
                        "-n", &ns, "route", "replace", &dst, "dev", &dev, "src", &src,
                    ])
                })
                .unwrap_or_else(|e| panic!("link {from} to {to}: {e}"));
        }
    }

    /// Cuts `host` from every host in `others`.
    pub fn isolate(&self, host: &str, others: &[&str]) {
        for other in others {
            self.cut(host, other);
        }
    }

    /// A command run in `host`'s namespace (`ip netns exec` execs it, so
    /// the child's pid is the command's own).
    pub fn command(&self, host: &str, program: &std::path::Path) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.ns(host)]).arg(program);
        command
    }

    /// Runs `f` on a thread inside the client host's namespace: the sockets
    /// it opens are the client's.
    pub fn client<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let path = format!("/run/netns/{}", self.ns(CLIENT));
        std::thread::scope(|scope| {
            scope
                .spawn(move || {
                    let ns = File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
                    // SAFETY: setns on a valid descriptor changes only this
                    // thread's network namespace.
                    let entered = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
                    assert_eq!(entered, 0, "setns: {}", std::io::Error::last_os_error());
                    f()
                })
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        // Deleting a namespace deletes its ends of the links, and with them
        // the other ends.
        for host in &self.hosts {
            let _ = ip(&["netns", "del", &format!("{}-{host}", self.prefix)]);
        }
    }
}

/// The name of the link to `peer` inside a host (unique within the host).
fn link_name(peer: &str) -> String {
    format!("to-{peer}")
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("ip {}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}
