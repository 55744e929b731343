//! Hosts on a network, on one machine: each host a Linux network namespace
//! with an address of its own (on its loopback), every two hosts joined by
//! a veth pair of their own with a /32 route at each end, and this process's
//! own namespace joined to each of them the same way, as the host
//! [`HERE`] that tests and the nemesis talk from. Taking one pair's link
//! down cuts exactly those two hosts apart for everything that crosses it:
//! UDP replication, TCP forwarding, the LB's heartbeats, clients (new
//! connections are refused as unreachable, established ones go silent).
//! [`Net::heal`] brings a link and its routes back.
//!
//! Made with iproute2 (`ip netns`, `ip -n`), which needs root. Names carry
//! this process's id and the caller's tag, addresses the id and the tag too
//! (10.X.TAG.N, X from the id), so that several sets of hosts can exist at
//! once; dropping a [`Net`] deletes its namespaces, and with them every link
//! and route it made, this namespace's ends included.

use std::net::Ipv4Addr;
use std::process::{Command, Stdio};
use std::sync::Mutex;

/// The host this process is: its own network namespace.
pub const HERE: &str = "here";

/// Why the hosts could not be made (not root, no iproute2, no namespaces
/// in this kernel): callers skip with this.
#[derive(Debug)]
pub struct Unavailable(pub String);

impl std::fmt::Display for Unavailable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

pub struct Net {
    /// This process's id, in every name.
    pid: u32,
    tag: u8,
    /// [`HERE`] first, then the namespaces' hosts.
    hosts: Vec<String>,
    /// Pairs of host indices whose link is down, lower index first.
    cut: Mutex<Vec<(usize, usize)>>,
}

impl Net {
    /// Hosts named `hosts`, each joined to every other and to [`HERE`].
    /// `tag` tells apart the sets of hosts of one process.
    pub fn create(tag: u8, hosts: &[&str]) -> Result<Net, Unavailable> {
        assert!(hosts.len() < 200, "one /24 of addresses");
        assert!(!hosts.contains(&HERE), "{HERE} is this process's host");
        let mut net = Net {
            pid: std::process::id(),
            tag,
            hosts: vec![HERE.to_string()],
            cut: Mutex::new(Vec::new()),
        };
        for host in hosts {
            let ns = format!("st{}t{tag}-{host}", net.pid);
            ip(&["netns", "add", &ns]).map_err(Unavailable)?;
            net.hosts.push(host.to_string());
            let addr = format!("{}/32", net.addr(host));
            ip(&["-n", &ns, "link", "set", "lo", "up"]).map_err(Unavailable)?;
            ip(&["-n", &ns, "addr", "add", &addr, "dev", "lo"]).map_err(Unavailable)?;
        }
        for a in 0..net.hosts.len() {
            for b in a + 1..net.hosts.len() {
                let mut add = net.in_host(a);
                add.extend(["link", "add"].map(String::from));
                add.push(net.link_name(a, b));
                add.extend(["type", "veth", "peer", "name"].map(String::from));
                add.push(net.link_name(b, a));
                add.extend(["netns".to_string(), net.ns(b)]);
                ip(&add.iter().map(String::as_str).collect::<Vec<_>>()).map_err(Unavailable)?;
                if a == 0 {
                    // This namespace's address, on each of its links (the
                    // same address on several links is allowed): nothing
                    // of it is left once the links go.
                    let addr = format!("{}/32", net.addr(HERE));
                    let dev = net.link_name(a, b);
                    ip(&["addr", "add", &addr, "dev", &dev]).map_err(Unavailable)?;
                }
                net.link_up(a, b);
            }
        }
        Ok(net)
    }

    /// The address of `host`.
    pub fn addr(&self, host: &str) -> Ipv4Addr {
        let n = self.index(host);
        let x = 64 + (self.pid % 128) as u8;
        Ipv4Addr::new(10, x, self.tag, n as u8 + 1)
    }

    /// Takes the link between `a` and `b` down (both ends lose it).
    pub fn cut(&self, a: &str, b: &str) {
        let (a, b) = ordered(self.index(a), self.index(b));
        let mut command = self.in_host(a);
        command.extend(["link", "set"].map(String::from));
        command.push(self.link_name(a, b));
        command.push("down".into());
        ip(&command.iter().map(String::as_str).collect::<Vec<_>>())
            .unwrap_or_else(|e| panic!("cut {} from {}: {e}", self.hosts[a], self.hosts[b]));
        let mut cut = self.cut.lock().expect("no panic while held");
        if !cut.contains(&(a, b)) {
            cut.push((a, b));
        }
    }

    /// Brings the link between `a` and `b` back, with its routes.
    pub fn heal(&self, a: &str, b: &str) {
        let (a, b) = ordered(self.index(a), self.index(b));
        self.link_up(a, b);
        self.cut
            .lock()
            .expect("no panic while held")
            .retain(|pair| *pair != (a, b));
    }

    /// Brings back every link that is down.
    pub fn heal_all(&self) {
        let cut = std::mem::take(&mut *self.cut.lock().expect("no panic while held"));
        for (a, b) in cut {
            self.link_up(a, b);
        }
    }

    /// The links that are down, as pairs of host names.
    pub fn cut_links(&self) -> Vec<(String, String)> {
        let cut = self.cut.lock().expect("no panic while held");
        cut.iter()
            .map(|(a, b)| (self.hosts[*a].clone(), self.hosts[*b].clone()))
            .collect()
    }

    /// `program` run on `host`: `ip netns exec` execs it, so the child's
    /// pid is the program's own.
    pub fn command(&self, host: &str, program: &std::path::Path) -> Command {
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", &self.ns(self.index(host))])
            .arg(program);
        command
    }

    fn index(&self, host: &str) -> usize {
        self.hosts
            .iter()
            .position(|h| h == host)
            .unwrap_or_else(|| panic!("no host {host}"))
    }

    fn ns(&self, index: usize) -> String {
        assert!(index > 0, "{HERE} is no namespace of ours");
        format!("st{}t{}-{}", self.pid, self.tag, self.hosts[index])
    }

    /// `ip`'s arguments to act inside host `index`.
    fn in_host(&self, index: usize) -> Vec<String> {
        if index == 0 {
            Vec::new()
        } else {
            vec!["-n".into(), self.ns(index)]
        }
    }

    /// Host `from`'s end of its link to host `to`: unique within `from`
    /// (this namespace is shared, so its ends carry the id and the tag;
    /// interface names are at most 15 bytes).
    fn link_name(&self, from: usize, to: usize) -> String {
        if from == 0 {
            format!("st{}t{}h{to}", self.pid % 100_000, self.tag)
        } else {
            format!("to{to}")
        }
    }

    fn link_up(&self, a: usize, b: usize) {
        for (from, to) in [(a, b), (b, a)] {
            let dev = self.link_name(from, to);
            let dst = format!("{}/32", self.addr(&self.hosts[to]));
            let src = self.addr(&self.hosts[from]).to_string();
            let mut up = self.in_host(from);
            up.extend(["link", "set", &dev, "up"].map(String::from));
            // `replace`: the end taken down lost its route, the other end
            // kept its own.
            let mut route = self.in_host(from);
            route.extend(["route", "replace", &dst, "dev", &dev, "src", &src].map(String::from));
            for args in [up, route] {
                ip(&args.iter().map(String::as_str).collect::<Vec<_>>()).unwrap_or_else(|e| {
                    panic!("link {} to {}: {e}", self.hosts[from], self.hosts[to])
                });
            }
        }
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        // Deleting a namespace deletes its ends of the links, and with them
        // the other ends, this namespace's included.
        for index in 1..self.hosts.len() {
            let _ = ip(&["netns", "del", &self.ns(index)]);
        }
    }
}

fn ordered(a: usize, b: usize) -> (usize, usize) {
    assert_ne!(a, b, "a host has no link to itself");
    (a.min(b), a.max(b))
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
