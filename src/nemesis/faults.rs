//! The faults: what each kind does to the cluster, how it is undone, and
//! which target each one picks (the leader, half the time, where a leader
//! matters).
//!
//! It owns the choice of fault and target from the run's seeded random
//! source; it acts only through [`Cluster`] (signals, restarts) and its
//! [`Links`](super::links::Links) (cuts). Kinds are drawn from a shuffled
//! bag of the kinds available ([`FaultKind::available`]), refilled when
//! empty, so every one comes up once in any run of as many consecutive
//! faults as there are kinds.

use std::fmt;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::Rng;

use super::cluster::{Cluster, RunState, LB};
use super::relay::NodeId;

/// Every kind of fault the nemesis injects.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FaultKind {
    /// SIGKILL a server; start it again when the fault ends.
    KillServer,
    /// SIGTERM a server and start it again at once (a clean restart).
    RestartServer,
    /// SIGSTOP a server; SIGCONT when the fault ends.
    PauseServer,
    /// SIGKILL the LB (in a group, the leading one half the time); start
    /// it again when the fault ends.
    KillLb,
    /// SIGSTOP the LB (in a group, the leading one half the time); SIGCONT
    /// when the fault ends.
    PauseLb,
    /// Drop UDP one way: one link, or everything into or out of one node
    /// (relays only: a link taken down is down both ways).
    CutOneWay,
    /// Drop UDP both ways (relays), or take the links down (hosts: TCP
    /// too), between two sides of a random split of the nodes (the LB
    /// counts as a node; the clients keep reaching both sides).
    CutSymmetric,
    /// `store remove-lb` an LB of the group (the leading one half the
    /// time), which stops by itself, then `store add-lb` it back with an
    /// empty data directory, started with `--join` (a new member id);
    /// with `--lb-changes` only.
    ReplaceLb,
}

impl FaultKind {
    pub const ALL: [FaultKind; 8] = [
        FaultKind::KillServer,
        FaultKind::RestartServer,
        FaultKind::PauseServer,
        FaultKind::KillLb,
        FaultKind::PauseLb,
        FaultKind::CutOneWay,
        FaultKind::CutSymmetric,
        FaultKind::ReplaceLb,
    ];

    /// The kinds a run draws from: every one with relays, all but the
    /// one-way cut with hosts (see `links`); the LB group's changes only
    /// when asked for.
    pub fn available(one_way_cuts: bool, lb_changes: bool) -> Vec<FaultKind> {
        FaultKind::ALL
            .into_iter()
            .filter(|k| one_way_cuts || *k != FaultKind::CutOneWay)
            .filter(|k| lb_changes || *k != FaultKind::ReplaceLb)
            .collect()
    }

    pub fn name(self) -> &'static str {
        match self {
            FaultKind::KillServer => "kill-server",
            FaultKind::RestartServer => "restart-server",
            FaultKind::PauseServer => "pause-server",
            FaultKind::KillLb => "kill-lb",
            FaultKind::PauseLb => "pause-lb",
            FaultKind::CutOneWay => "cut-one-way",
            FaultKind::CutSymmetric => "cut-symmetric",
            FaultKind::ReplaceLb => "replace-lb",
        }
    }
}

impl fmt::Display for FaultKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How to undo a fault that is in force.
#[derive(Clone, Debug)]
enum Undo {
    Restart(NodeId),
    Resume(NodeId),
    HealCuts,
    Nothing,
}

/// A fault in force.
#[derive(Clone, Debug)]
pub struct Active {
    pub kind: FaultKind,
    /// What was done, for the log.
    pub what: String,
    undo: Undo,
}

/// Chooses and applies faults.
pub struct Nemesis {
    rng: StdRng,
    /// The kinds drawn from ([`FaultKind::available`]).
    kinds: Vec<FaultKind>,
    bag: Vec<FaultKind>,
}

impl Nemesis {
    pub fn new(rng: StdRng, kinds: Vec<FaultKind>) -> Nemesis {
        assert!(!kinds.is_empty(), "a nemesis needs a kind of fault");
        Nemesis {
            rng,
            kinds,
            bag: Vec::new(),
        }
    }

    pub fn rng(&mut self) -> &mut StdRng {
        &mut self.rng
    }

    /// The next kind from the bag.
    pub fn next_kind(&mut self) -> FaultKind {
        if self.bag.is_empty() {
            self.bag = self.kinds.clone();
            self.bag.shuffle(&mut self.rng);
        }
        self.bag.pop().expect("refilled above")
    }

    /// Applies a fault of `kind` to the cluster.
    pub fn inject(&mut self, kind: FaultKind, cluster: &mut Cluster) -> anyhow::Result<Active> {
        let (what, undo) = match kind {
            FaultKind::KillServer => {
                let (node, role) = self.pick_server(cluster);
                cluster.kill(node);
                (
                    format!("SIGKILL {} ({role})", cluster.name(node)),
                    Undo::Restart(node),
                )
            }
            FaultKind::RestartServer => {
                let (node, role) = self.pick_server(cluster);
                let exit = cluster.terminate(node);
                cluster.restart(node)?;
                let exit = exit.map_or("killed at the deadline".to_string(), |s| s.to_string());
                (
                    format!(
                        "SIGTERM {} ({role}, {exit}) and start it again",
                        cluster.name(node)
                    ),
                    Undo::Nothing,
                )
            }
            FaultKind::PauseServer => {
                let (node, role) = self.pick_server(cluster);
                cluster.pause(node);
                (
                    format!("SIGSTOP {} ({role})", cluster.name(node)),
                    Undo::Resume(node),
                )
            }
            FaultKind::KillLb => {
                let (node, role) = self.pick_lb(cluster);
                cluster.kill(node);
                (
                    format!("SIGKILL {} ({role})", cluster.name(node)),
                    Undo::Restart(node),
                )
            }
            FaultKind::PauseLb => {
                let (node, role) = self.pick_lb(cluster);
                cluster.pause(node);
                (
                    format!("SIGSTOP {} ({role})", cluster.name(node)),
                    Undo::Resume(node),
                )
            }
            FaultKind::ReplaceLb => {
                let (node, role) = self.pick_lb(cluster);
                let what = cluster.replace_lb(node)?;
                (format!("{what} ({role})"), Undo::Nothing)
            }
            FaultKind::CutOneWay => {
                let nodes = cluster.nodes();
                let x = self.pick_node(cluster);
                let links: Vec<(NodeId, NodeId)> = match self.rng.gen_range(0..3) {
                    0 => {
                        // One link, half the time to or from the leader:
                        // links between followers are idle.
                        let others: Vec<NodeId> = (0..nodes).filter(|n| *n != x).collect();
                        let y = match cluster.leader() {
                            Some(leader) if leader != x && self.rng.gen_bool(0.5) => leader,
                            _ => *others
                                .choose(&mut self.rng)
                                .expect("a cluster has two nodes"),
                        };
                        if self.rng.gen_bool(0.5) {
                            vec![(x, y)]
                        } else {
                            vec![(y, x)]
                        }
                    }
                    1 => (0..nodes).filter(|y| *y != x).map(|y| (x, y)).collect(),
                    _ => (0..nodes).filter(|y| *y != x).map(|y| (y, x)).collect(),
                };
                for (from, to) in &links {
                    cluster.net.cut(*from, *to);
                }
                (
                    format!("cut UDP {}", describe_links(cluster, &links)),
                    Undo::HealCuts,
                )
            }
            FaultKind::CutSymmetric => {
                let nodes = cluster.nodes();
                // A random split into two non-empty sides; half the time the
                // leader alone (with or without each LB) on one side.
                let mut side: Vec<bool> = (0..nodes).map(|_| self.rng.gen_bool(0.5)).collect();
                if let (Some(leader), true) = (cluster.leader(), self.rng.gen_bool(0.5)) {
                    side = (0..nodes).map(|n| n == leader).collect();
                    for lb in cluster.lb_nodes() {
                        side[lb] = self.rng.gen_bool(0.5);
                    }
                }
                if side.iter().all(|s| *s) || side.iter().all(|s| !*s) {
                    let n = self.rng.gen_range(0..nodes);
                    side[n] = !side[n];
                }
                let one_way = cluster.net.one_way();
                for a in 0..nodes {
                    for b in 0..nodes {
                        // A link (hosts) is cut once, both ways.
                        if side[a] != side[b] && (one_way || a < b) {
                            cluster.net.cut(a, b);
                        }
                    }
                }
                let names = |s: bool| -> String {
                    (0..nodes)
                        .filter(|n| side[*n] == s)
                        .map(|n| cluster.name(n).to_string())
                        .collect::<Vec<_>>()
                        .join(",")
                };
                let what = if one_way { "UDP" } else { "links" };
                (
                    format!(
                        "partition {what} {{{}}} | {{{}}}",
                        names(true),
                        names(false)
                    ),
                    Undo::HealCuts,
                )
            }
        };
        Ok(Active { kind, what, undo })
    }

    /// The leader half the time (when one is known), else any server that
    /// is up and running.
    fn pick_server(&mut self, cluster: &Cluster) -> (NodeId, &'static str) {
        if self.rng.gen_bool(0.5) {
            if let Some(leader) = cluster.leader() {
                return (leader, "leader");
            }
        }
        let running: Vec<NodeId> = (1..=cluster.servers())
            .filter(|n| cluster.state(*n) == RunState::Running)
            .collect();
        match running.choose(&mut self.rng) {
            Some(node) => (*node, "any"),
            None => (self.rng.gen_range(1..=cluster.servers()), "any"),
        }
    }

    /// The leader a third of the time, else any node (the LBs included).
    fn pick_node(&mut self, cluster: &Cluster) -> NodeId {
        if self.rng.gen_bool(1.0 / 3.0) {
            if let Some(leader) = cluster.leader() {
                return leader;
            }
        }
        self.rng.gen_range(0..cluster.nodes())
    }

    /// The LB alone; in a group, the one leading it half the time (when
    /// one says so), else any.
    fn pick_lb(&mut self, cluster: &Cluster) -> (NodeId, &'static str) {
        let lbs = cluster.lb_nodes();
        if lbs.len() == 1 {
            return (LB, "alone");
        }
        if self.rng.gen_bool(0.5) {
            if let Some(leading) = cluster.leading_lb() {
                return (leading, "leading");
            }
        }
        (*lbs.choose(&mut self.rng).expect("an LB"), "any")
    }
}

/// Ends a fault.
pub fn undo(active: &Active, cluster: &mut Cluster) -> anyhow::Result<()> {
    match active.undo {
        Undo::Restart(node) => cluster.restart(node),
        Undo::Resume(node) => {
            cluster.resume(node);
            Ok(())
        }
        Undo::HealCuts => {
            cluster.net.heal();
            Ok(())
        }
        Undo::Nothing => Ok(()),
    }
}

fn describe_links(cluster: &Cluster, links: &[(NodeId, NodeId)]) -> String {
    links
        .iter()
        .map(|(a, b)| format!("{}->{}", cluster.name(*a), cluster.name(*b)))
        .collect::<Vec<_>>()
        .join(" ")
}
