//! How the nemesis cuts the network between nodes, one of two ways:
//!
//! - `Relays` (the default, no privileges needed): every node's UDP goes
//!   through a userspace relay (see `relay`), which drops what crosses a
//!   cut, one way at a time. TCP (forwarding, clients) is never cut.
//! - `Hosts` (`--netns`, root): every node is a host of its own in a
//!   network namespace (see `crate::netns`), and a cut takes the link
//!   between two hosts down, both ways, for TCP and UDP alike. The
//!   nemesis and its clients stay in this process's namespace, joined to
//!   every host by a link it never cuts, so clients keep reaching a node
//!   cut off from the others (a deposed leader among them).

use super::relay::{Network, NodeId, RelayCounters};
use crate::netns::Net;

pub enum Links {
    Relays(Network),
    /// The hosts, and each node's host name by node id.
    Hosts {
        net: Net,
        names: Vec<String>,
    },
}

impl Links {
    /// Whether a cut is one way (`Relays`) or both (`Hosts`).
    pub fn one_way(&self) -> bool {
        matches!(self, Links::Relays(_))
    }

    /// Cuts what `from` sends to `to` (`Relays`), or the link between them
    /// (`Hosts`: both ways).
    pub fn cut(&self, from: NodeId, to: NodeId) {
        match self {
            Links::Relays(network) => network.cut(from, to),
            Links::Hosts { net, names } => net.cut(&names[from], &names[to]),
        }
    }

    /// Undoes every cut.
    pub fn heal(&self) {
        match self {
            Links::Relays(network) => network.heal(),
            Links::Hosts { net, .. } => net.heal_all(),
        }
    }

    /// A node went down: its relay closes as its socket did (`Relays`).
    pub fn close(&self, node: NodeId) {
        if let Links::Relays(network) = self {
            network.close(node);
        }
    }

    /// A node starts again: its relay reopens; false if it cannot.
    pub fn open(&self, node: NodeId) -> bool {
        match self {
            Links::Relays(network) => network.open(node),
            Links::Hosts { .. } => true,
        }
    }

    /// Where node `node`'s traffic goes through, for the log.
    pub fn describe(&self, node: NodeId) -> String {
        match self {
            Links::Relays(network) => format!("udp relay {}", network.relay_of(node)),
            Links::Hosts { net, names } => format!("host {}", net.addr(&names[node])),
        }
    }

    /// The relays' counters (`Relays`).
    pub fn counters(&self) -> Option<&RelayCounters> {
        match self {
            Links::Relays(network) => Some(&network.counters),
            Links::Hosts { .. } => None,
        }
    }
}
