//! The LB group (DESIGN §3c): several LB processes keep one registry in a
//! replicated log and elect their own leader by vote, with the data
//! servers' replica core ([`server::group_log`]). Only the LB that leads
//! the group runs the election core, made from the registry as the log
//! holds it once this LB's first entry of its term is committed; every
//! state the core persists is committed in the log before any frame after
//! it is sent. A deposed LB leader's writes do not commit, so it can
//! neither reuse a data term nor name a second leader for one.
//!
//! Each LB is known by its discovery address (`HOST:PORT`, the one servers
//! and clients list in `--lb`); it replicates over UDP on
//! `PORT + PEER_PORT_OFFSET` of the same host. The LBs that found the group
//! (`--peers`) have as member ids their places in the sorted list of their
//! addresses, from 1 (0 names "the LB" in frames to data servers); an LB
//! added later (`add-lb`) gets the next id never used.
//!
//! Which LBs the group should have is itself in the log ([`MEMBERS_KEY`]):
//! `add-lb` and `remove-lb` commit a new list, every LB learns the
//! addresses from it, and the leading LB's replica moves the group's
//! configuration toward it one change at a time (an added LB is a learner
//! until it has caught up, then votes).

use std::net::{IpAddr, SocketAddr};

use data::cluster_file::ClusterFile;
use data::frame::{GroupId, Peer, ServerId, Term};
use server::config::{ClusterSettings, Elector, ReadMode, StaticGroup};
use server::driver::Configuration;
use server::group_log::GroupLog;
use server::replica::Timing;
use server::write_path::CommitError;

use crate::discovery::{LbChange, LbChangeError};
use crate::registry::{self, DurableState, RegistryError};

/// An LB's UDP port for its group's log is its discovery port plus this,
/// so that one list of addresses (`--peers`, the same as everyone's
/// `--lb`) names every port of every LB.
pub const PEER_PORT_OFFSET: u16 = 1000;

/// LBs in one group, at most: a registry change waits for a majority,
/// and servers are told the list in one datagram.
pub const LBS_MAX: usize = data::frame::LBS_MAX;

/// The key the registry is kept under in the group's state.
pub const REGISTRY_KEY: &[u8] = b"lb/registry";

/// The key the LBs the group should have are kept under (absent until the
/// first `add-lb` or `remove-lb`: the founders, then).
pub const MEMBERS_KEY: &[u8] = b"lb/members";

/// The LB group's members and which one this LB is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peers {
    pub me: ServerId,
    /// Every LB, in id order (this one too, unless it was removed).
    pub members: Vec<Peer>,
    /// The id the next LB added gets: ids are never used twice, so that
    /// a removed LB still running is never taken for a new one.
    pub next_id: u64,
    /// Which list this is: the founders' is 0, each change adds 1, so a
    /// server told the list by a deposed LB can tell it is older
    /// ([`data::frame::Message::Lbs`]).
    pub epoch: u64,
    /// Whether this LB joins a running group (`--join`) rather than
    /// founding it.
    pub joining: bool,
}

/// Why an `add-lb` or `remove-lb` cannot be done.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ChangeError {
    #[error("{0} is already an LB of the group")]
    Exists(SocketAddr),
    #[error("{0} is no LB of the group")]
    NotFound(SocketAddr),
    #[error("the LB group has {LBS_MAX} LBs, the most it takes")]
    Full,
    #[error("an LB group keeps at least one LB")]
    Last,
    #[error("{0}'s peer port (port + {PEER_PORT_OFFSET}) does not exist")]
    PortTooHigh(SocketAddr),
}

/// Why [`MEMBERS_KEY`]'s value could not be read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MembersError {
    #[error("the LB list in the LB group's log is malformed")]
    Malformed,
    #[error("the LB list in the LB group's log is version {0}; this release reads version 1")]
    Version(String),
}

/// The version line of [`Peers::encode`]'s format.
const MEMBERS_VERSION: &str = "lbs v1";

/// Why `--peers` does not describe a group this LB is in.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PeersError {
    #[error("--peers lists {0} LBs; a group has 1 to {LBS_MAX}")]
    Count(usize),
    #[error("--peers lists {0} twice")]
    Duplicate(SocketAddr),
    #[error("--peers lists {0}, whose peer port (port + {PEER_PORT_OFFSET}) does not exist")]
    PortTooHigh(SocketAddr),
    #[error(
        "none of --peers is this LB ({listen}:{port}): list its own address, or listen on it with -l"
    )]
    NotListed { listen: IpAddr, port: u16 },
    #[error(
        "more than one of --peers could be this LB (port {0}): listen on its own address with -l"
    )]
    Ambiguous(u16),
}

impl Peers {
    /// The group `peers` describe, for the LB listening on `listen:port`.
    /// With `listen` unspecified (0.0.0.0), the entry with its port is this
    /// LB, which must then be the only one with that port.
    pub fn new(peers: &[SocketAddr], listen: IpAddr, port: u16) -> Result<Peers, PeersError> {
        if peers.is_empty() || peers.len() > LBS_MAX {
            return Err(PeersError::Count(peers.len()));
        }
        let mut sorted = peers.to_vec();
        sorted.sort();
        if let Some(pair) = sorted.windows(2).find(|pair| pair[0] == pair[1]) {
            return Err(PeersError::Duplicate(pair[0]));
        }
        let mine: Vec<usize> = sorted
            .iter()
            .enumerate()
            .filter(|(_, addr)| {
                addr.port() == port && (listen.is_unspecified() || addr.ip() == listen)
            })
            .map(|(at, _)| at)
            .collect();
        let me = match mine[..] {
            [at] => at,
            [] => return Err(PeersError::NotListed { listen, port }),
            _ => return Err(PeersError::Ambiguous(port)),
        };
        let members = sorted
            .iter()
            .enumerate()
            .map(|(at, addr)| peer(member_id(at), *addr).ok_or(PeersError::PortTooHigh(*addr)))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Peers {
            me: member_id(me),
            next_id: member_id(sorted.len()).0,
            epoch: 0,
            members,
            joining: false,
        })
    }

    /// This LB joining a running group whose list ([`Self::encode`]) is
    /// `list`, read from one of its LBs: this LB is the entry listening on
    /// `listen:port` (as in [`Self::new`]), added there before it starts.
    pub fn join(list: &[u8], listen: IpAddr, port: u16) -> Result<Peers, JoinError> {
        let (members, next_id, epoch) = decode_members(list)?;
        let mine: Vec<&Peer> = members
            .iter()
            .filter(|m| m.tcp.port() == port && (listen.is_unspecified() || m.tcp.ip() == listen))
            .collect();
        let me = match mine[..] {
            [me] => me.id,
            [] => return Err(JoinError::NotAdded { listen, port }),
            _ => return Err(JoinError::Peers(PeersError::Ambiguous(port))),
        };
        Ok(Peers {
            me,
            members,
            next_id,
            epoch,
            joining: true,
        })
    }

    /// This LB's entry.
    pub fn me(&self) -> &Peer {
        self.members
            .iter()
            .find(|m| m.id == self.me)
            .expect("me is a member")
    }

    /// Whether the group took this LB out: it is not in a list made after
    /// it was added (ids are handed out in order, never twice).
    pub fn removed(&self) -> bool {
        self.next_id > self.me.0 && !self.members.iter().any(|m| m.id == self.me)
    }

    /// The same LB in the group as `list` ([`Self::encode`]) has it.
    pub fn with_list(&self, list: &[u8]) -> Result<Peers, MembersError> {
        let (members, next_id, epoch) = decode_members(list)?;
        Ok(Peers {
            me: self.me,
            members,
            next_id,
            epoch,
            joining: self.joining,
        })
    }

    /// The group with an LB at `addr` added, and its id.
    pub fn adding(&self, addr: SocketAddr) -> Result<(Peers, ServerId), ChangeError> {
        if self.members.iter().any(|m| m.tcp == addr) {
            return Err(ChangeError::Exists(addr));
        }
        if self.members.len() >= LBS_MAX {
            return Err(ChangeError::Full);
        }
        let id = ServerId(self.next_id);
        let added = peer(id, addr).ok_or(ChangeError::PortTooHigh(addr))?;
        let mut next = self.clone();
        next.members.push(added);
        next.next_id += 1;
        next.epoch += 1;
        Ok((next, id))
    }

    /// The group without the LB at `addr`, and its id.
    pub fn removing(&self, addr: SocketAddr) -> Result<(Peers, ServerId), ChangeError> {
        let id = self
            .members
            .iter()
            .find(|m| m.tcp == addr)
            .ok_or(ChangeError::NotFound(addr))?
            .id;
        if self.members.len() == 1 {
            return Err(ChangeError::Last);
        }
        let mut next = self.clone();
        next.members.retain(|m| m.id != id);
        next.epoch += 1;
        Ok((next, id))
    }

    /// `change` planned against the group's configuration `config` (as
    /// this LB, leading, knows it): the new list and the LB it adds or
    /// takes out. One change at a time: while the configuration is not yet
    /// this list (an added LB catching up, a removal under way, a change
    /// not committed), only the removal of an LB not yet voting, which
    /// undoes an add, is taken.
    pub fn plan(
        &self,
        change: LbChange,
        config: &Configuration,
    ) -> Result<(Peers, ServerId), LbChangeError> {
        let (next, id) = match change {
            LbChange::Add(addr) => self.adding(addr)?,
            LbChange::Remove(addr) => self.removing(addr)?,
        };
        let listed: Vec<u64> = self.members.iter().map(|m| m.id.0).collect();
        let settled = config.committed && config.learners.is_empty() && config.voters == listed;
        let undoes_an_add = matches!(change, LbChange::Remove(_)) && !config.voters.contains(&id.0);
        if !settled && !undoes_an_add {
            return Err(LbChangeError::Busy);
        }
        Ok((next, id))
    }

    /// The list as the group's log keeps it: a version line, the next id,
    /// the epoch, then one `ID HOST:PORT` line per LB.
    pub fn encode(&self) -> Vec<u8> {
        let mut text = format!(
            "{MEMBERS_VERSION}\nnext {}\nepoch {}\n",
            self.next_id, self.epoch
        );
        for member in &self.members {
            text.push_str(&format!("{} {}\n", member.id.0, member.tcp));
        }
        text.into_bytes()
    }

    /// The settings of this LB's replica in the group: where its UDP socket
    /// binds (the listen address, at its peer port) and how it times out.
    pub fn settings(
        &self,
        cluster: ClusterFile,
        listen: IpAddr,
        timing: Timing,
    ) -> ClusterSettings {
        ClusterSettings {
            group: GroupId::LB,
            elector: Elector::Vote(StaticGroup {
                id: self.me,
                members: self.members.clone(),
                joining: self.joining,
            }),
            cluster,
            udp_listen: SocketAddr::new(listen, self.me().udp.port()),
            udp_advertise: Some(self.me().udp),
            timing,
            // The registry is read on the leader only, after a barrier.
            read_mode: ReadMode::Linearizable,
        }
    }
}

/// The registry a group's state holds under [`REGISTRY_KEY`] (`value`):
/// empty until a first one is committed.
pub fn registry_of(value: Option<&[u8]>) -> Result<DurableState, RegistryError> {
    value.map_or_else(|| Ok(DurableState::default()), registry::decode)
}

/// Whether `config`, committed, has `me` neither as a voter nor as a
/// learner: an LB the list took out may stop (until then the others may
/// still need its vote).
pub fn removal_committed(config: &Configuration, me: ServerId) -> bool {
    config.committed && !config.voters.contains(&me.0) && !config.learners.contains(&me.0)
}

/// The `at`th LB of the sorted list's id: from 1, as 0 is "the LB".
fn member_id(at: usize) -> ServerId {
    ServerId(at as u64 + 1)
}

/// The LB `id` at discovery address `addr`, with its peer port; `None` if
/// that port would pass 65535.
fn peer(id: ServerId, addr: SocketAddr) -> Option<Peer> {
    let peer_port = addr.port().checked_add(PEER_PORT_OFFSET)?;
    Some(Peer {
        id,
        tcp: addr,
        udp: SocketAddr::new(addr.ip(), peer_port),
    })
}

/// [`Peers::encode`]'s members (in id order), next id and epoch.
fn decode_members(list: &[u8]) -> Result<(Vec<Peer>, u64, u64), MembersError> {
    let text = std::str::from_utf8(list).map_err(|_| MembersError::Malformed)?;
    let mut lines = text.lines();
    match lines.next() {
        Some(MEMBERS_VERSION) => {}
        Some(other) if other.starts_with("lbs ") => {
            return Err(MembersError::Version(other[4..].to_string()))
        }
        _ => return Err(MembersError::Malformed),
    }
    let mut number = |name: &str| -> Result<u64, MembersError> {
        lines
            .next()
            .and_then(|line| line.strip_prefix(name)?.strip_prefix(' '))
            .and_then(|n| n.parse().ok())
            .ok_or(MembersError::Malformed)
    };
    let next_id = number("next")?;
    let epoch = number("epoch")?;
    let mut members = Vec::new();
    for line in lines {
        let (id, addr) = line.split_once(' ').ok_or(MembersError::Malformed)?;
        let id = ServerId(id.parse().map_err(|_| MembersError::Malformed)?);
        let addr: SocketAddr = addr.parse().map_err(|_| MembersError::Malformed)?;
        if id == ServerId::LB || id.0 >= next_id || members.len() == LBS_MAX {
            return Err(MembersError::Malformed);
        }
        members.push(peer(id, addr).ok_or(MembersError::Malformed)?);
    }
    members.sort_by_key(|m| m.id);
    let unique = members
        .windows(2)
        .all(|w| w[0].id != w[1].id && w[0].tcp != w[1].tcp);
    if members.is_empty() || !unique {
        return Err(MembersError::Malformed);
    }
    Ok((members, next_id, epoch))
}

/// Why a joining LB cannot take its place in the group.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum JoinError {
    #[error("the LB group's list: {0}")]
    Members(#[from] MembersError),
    #[error(
        "this LB ({listen}:{port}) is not in the LB group: add it first with `store add-lb HOST:PORT`"
    )]
    NotAdded { listen: IpAddr, port: u16 },
    #[error("{0}")]
    Peers(PeersError),
}

/// Why the registry could not be read from or written to the group's log.
#[derive(Debug, thiserror::Error)]
pub enum GroupError {
    /// This LB no longer leads, or leadership changed before the write was
    /// committed: it stops acting for the group.
    #[error("no longer leads the LB group")]
    Deposed,
    /// Its log failed: the LB stops.
    #[error("the LB group's log failed")]
    Storage,
    #[error("the registry in the LB group's log: {0}")]
    Registry(#[from] RegistryError),
    #[error(transparent)]
    Members(#[from] MembersError),
}

impl From<CommitError> for GroupError {
    fn from(e: CommitError) -> GroupError {
        match e {
            CommitError::Storage => GroupError::Storage,
            CommitError::NotLeader
            | CommitError::NotReady
            | CommitError::Unknown
            | CommitError::NoLeaderReached => GroupError::Deposed,
        }
    }
}

/// This LB's replica of the group's log.
pub struct LbLog {
    log: GroupLog,
}

impl LbLog {
    pub fn new(log: GroupLog) -> LbLog {
        LbLog { log }
    }

    /// The LB term this LB leads the group in, if it does.
    pub fn leading(&self) -> Option<Term> {
        self.log.leading()
    }

    /// Becomes able to act for the group in `term`: once every entry
    /// committed before is applied here, the registry they leave.
    pub async fn take_over(&self, term: Term) -> Result<DurableState, GroupError> {
        self.log.read_barrier().await?;
        if self.leading() != Some(term) {
            return Err(GroupError::Deposed);
        }
        self.registry()
    }

    /// The registry as this LB's replica has applied it (empty before the
    /// first is committed).
    pub fn registry(&self) -> Result<DurableState, GroupError> {
        Ok(registry_of(self.log.get(REGISTRY_KEY).as_deref())?)
    }

    /// Commits `state` as the registry; `Ok` once a majority of LBs hold it.
    pub async fn persist(&self, state: &DurableState) -> Result<(), GroupError> {
        let bytes = registry::encode(state)?;
        self.log.set(REGISTRY_KEY, bytes).await?;
        Ok(())
    }

    /// The LB group's list ([`Peers::encode`]) as this LB's replica has
    /// applied it; `None` before the first change of the founders.
    pub fn members_list(&self) -> Option<Vec<u8>> {
        self.log.get(MEMBERS_KEY)
    }

    /// Commits `peers` as the group's list; `Ok` once a majority holds it.
    pub async fn commit_members(&self, peers: &Peers) -> Result<(), GroupError> {
        self.log.set(MEMBERS_KEY, peers.encode()).await?;
        Ok(())
    }

    /// Hands the group's members to this LB's replica: their addresses,
    /// and with `target` (while leading, after the read barrier) the
    /// configuration to move toward.
    pub async fn set_members(&self, peers: &Peers, target: bool) -> Result<(), GroupError> {
        self.log.set_members(peers.members.clone(), target).await?;
        Ok(())
    }

    /// The replication state, for `stats`.
    pub fn view(&self) -> &server::driver::ClusterView {
        self.log.view()
    }

    /// Stops replicating, after the log's last fsync.
    pub async fn close(self) -> Result<(), server::listener::ServerError> {
        self.log.close().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn ids_follow_the_sorted_list_and_peer_ports_the_offset() {
        let list = [
            addr("127.0.0.1:11313"),
            addr("127.0.0.1:11311"),
            addr("127.0.0.1:11312"),
        ];
        let local = "127.0.0.1".parse().unwrap();
        let peers = Peers::new(&list, local, 11312).unwrap();
        assert_eq!(peers.me, ServerId(2));
        let ids: Vec<(u64, u16, u16)> = peers
            .members
            .iter()
            .map(|m| (m.id.0, m.tcp.port(), m.udp.port()))
            .collect();
        assert_eq!(
            ids,
            [(1, 11311, 12311), (2, 11312, 12312), (3, 11313, 12313)]
        );
        // Every LB given the list in another order agrees.
        let mut reversed = list;
        reversed.reverse();
        assert_eq!(Peers::new(&reversed, local, 11312).unwrap(), peers);
    }

    #[test]
    fn hosts_with_one_port_are_told_apart_by_address() {
        let list = [addr("10.0.0.1:11311"), addr("10.0.0.2:11311")];
        let peers = Peers::new(&list, "10.0.0.2".parse().unwrap(), 11311).unwrap();
        assert_eq!(peers.me, ServerId(2));
        assert_eq!(
            Peers::new(&list, "0.0.0.0".parse().unwrap(), 11311),
            Err(PeersError::Ambiguous(11311))
        );
        assert_eq!(
            Peers::new(&list, "10.0.0.3".parse().unwrap(), 11311),
            Err(PeersError::NotListed {
                listen: "10.0.0.3".parse().unwrap(),
                port: 11311
            })
        );
    }

    #[test]
    fn bad_lists_are_refused() {
        let local: IpAddr = "127.0.0.1".parse().unwrap();
        assert_eq!(Peers::new(&[], local, 1), Err(PeersError::Count(0)));
        let eight: Vec<SocketAddr> = (1..=8).map(|p| SocketAddr::new(local, p)).collect();
        assert_eq!(Peers::new(&eight, local, 1), Err(PeersError::Count(8)));
        let twice = [addr("127.0.0.1:5"), addr("127.0.0.1:5")];
        assert_eq!(
            Peers::new(&twice, local, 5),
            Err(PeersError::Duplicate(addr("127.0.0.1:5")))
        );
        let high = [addr("127.0.0.1:65000")];
        assert_eq!(
            Peers::new(&high, local, 65000),
            Err(PeersError::PortTooHigh(addr("127.0.0.1:65000")))
        );
    }

    #[test]
    fn lbs_added_get_ids_never_used_and_the_list_round_trips() {
        let local: IpAddr = "127.0.0.1".parse().unwrap();
        let founders = [addr("127.0.0.1:11311"), addr("127.0.0.1:11312")];
        let peers = Peers::new(&founders, local, 11311).unwrap();
        assert_eq!(peers.next_id, 3);
        let (added, id) = peers.adding(addr("127.0.0.1:11313")).unwrap();
        assert_eq!(id, ServerId(3));
        assert_eq!(
            added.adding(addr("127.0.0.1:11313")),
            Err(ChangeError::Exists(addr("127.0.0.1:11313")))
        );
        let (fewer, gone) = added.removing(addr("127.0.0.1:11312")).unwrap();
        assert_eq!(gone, ServerId(2));
        // The id of a removed LB is not handed out again.
        let (again, id) = fewer.adding(addr("127.0.0.1:11312")).unwrap();
        assert_eq!(id, ServerId(4));
        // Every LB reads the list the same, whoever it is.
        let list = again.encode();
        assert_eq!(
            String::from_utf8(list.clone()).unwrap(),
            "lbs v1\nnext 5\nepoch 3\n1 127.0.0.1:11311\n3 127.0.0.1:11313\n4 127.0.0.1:11312\n"
        );
        assert_eq!(peers.with_list(&list).unwrap(), again);
        let joined = Peers::join(&list, local, 11312).unwrap();
        assert_eq!((joined.me, joined.joining), (ServerId(4), true));
        assert_eq!(joined.me().udp, addr("127.0.0.1:12312"));
        assert_eq!(
            Peers::join(&list, local, 11399),
            Err(JoinError::NotAdded {
                listen: local,
                port: 11399
            })
        );
    }

    #[test]
    fn an_lb_knows_it_was_removed_only_from_a_list_made_after_it_was_added() {
        let local: IpAddr = "127.0.0.1".parse().unwrap();
        let founders = [addr("127.0.0.1:1"), addr("127.0.0.1:2")];
        let peers = Peers::new(&founders, local, 1).unwrap();
        let (added, _) = peers.adding(addr("127.0.0.1:3")).unwrap();
        let joiner = Peers::join(&added.encode(), local, 3).unwrap();
        assert!(!joiner.removed());
        // An older list, applied on the way, lacks it but is no removal.
        let older = joiner.with_list(&peers.encode()).unwrap();
        assert!(!older.removed());
        let (without, _) = added.removing(addr("127.0.0.1:3")).unwrap();
        assert!(joiner.with_list(&without.encode()).unwrap().removed());
        // Nor is the last one removed.
        let (one, _) = peers.removing(addr("127.0.0.1:2")).unwrap();
        assert_eq!(one.removing(addr("127.0.0.1:1")), Err(ChangeError::Last));
    }

    #[test]
    fn one_change_at_a_time_but_an_add_can_be_undone() {
        let local: IpAddr = "127.0.0.1".parse().unwrap();
        let peers = Peers::new(&[addr("127.0.0.1:1"), addr("127.0.0.1:2")], local, 1).unwrap();
        let config = |voters: &[u64], learners: &[u64], committed| Configuration {
            voters: voters.to_vec(),
            learners: learners.to_vec(),
            committed,
        };
        let settled = config(&[1, 2], &[], true);
        let (added, id) = peers
            .plan(LbChange::Add(addr("127.0.0.1:3")), &settled)
            .unwrap();
        assert_eq!(id, ServerId(3));
        // LB 3 is listed but still a learner: nothing else is taken ...
        let catching_up = config(&[1, 2], &[3], true);
        for change in [
            LbChange::Add(addr("127.0.0.1:4")),
            LbChange::Remove(addr("127.0.0.1:1")),
        ] {
            assert_eq!(
                added.plan(change, &catching_up).map(|p| p.1),
                Err(LbChangeError::Busy)
            );
        }
        // ... but its own removal, which undoes the add.
        let undone = added.plan(LbChange::Remove(addr("127.0.0.1:3")), &catching_up);
        assert_eq!(undone.map(|p| p.1), Ok(ServerId(3)));
        // A configuration not yet committed is a change under way too.
        assert_eq!(
            peers
                .plan(
                    LbChange::Remove(addr("127.0.0.1:2")),
                    &config(&[1, 2], &[], false)
                )
                .map(|p| p.1),
            Err(LbChangeError::Busy)
        );
        assert_eq!(
            peers
                .plan(LbChange::Add(addr("127.0.0.1:1")), &settled)
                .map(|p| p.1),
            Err(LbChangeError::Change(ChangeError::Exists(addr(
                "127.0.0.1:1"
            ))))
        );
    }

    #[test]
    fn a_malformed_or_newer_list_is_refused() {
        let local: IpAddr = "127.0.0.1".parse().unwrap();
        let peers = Peers::new(&[addr("127.0.0.1:1")], local, 1).unwrap();
        for (list, error) in [
            (
                &b"lbs v2\nnext 2\n1 127.0.0.1:1\n"[..],
                MembersError::Version("v2".into()),
            ),
            (b"lbs v1\nnext 2\nepoch 0\n", MembersError::Malformed),
            (b"lbs v1\nnext 2\n1 127.0.0.1:1\n", MembersError::Malformed),
            (
                b"lbs v1\nnext 2\nepoch 1\n2 127.0.0.1:1\n",
                MembersError::Malformed,
            ),
            (
                b"lbs v1\nnext 3\nepoch 1\n1 127.0.0.1:1\n1 127.0.0.1:2\n",
                MembersError::Malformed,
            ),
            (
                b"lbs v1\nnext 3\nepoch 1\n0 127.0.0.1:1\n",
                MembersError::Malformed,
            ),
            (
                b"lbs v1\nnext 3\nepoch 1\n1 somewhere:1\n",
                MembersError::Malformed,
            ),
            (b"", MembersError::Malformed),
        ] {
            assert_eq!(peers.with_list(list), Err(error), "{list:?}");
        }
    }
}
