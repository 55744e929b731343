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
//! `PORT + PEER_PORT_OFFSET` of the same host. Its member id is its place
//! in the sorted list of every LB's address, from 1 (0 names "the LB" in
//! frames to data servers).

use std::net::{IpAddr, SocketAddr};

use data::cluster_file::ClusterFile;
use data::frame::{GroupId, Peer, ServerId, Term};
use server::config::{ClusterSettings, Elector, ReadMode, StaticGroup};
use server::group_log::GroupLog;
use server::replica::Timing;
use server::write_path::CommitError;

use crate::registry::{self, DurableState, RegistryError};

/// An LB's UDP port for its group's log is its discovery port plus this,
/// so that one list of addresses (`--peers`, the same as everyone's
/// `--lb`) names every port of every LB.
pub const PEER_PORT_OFFSET: u16 = 1000;

/// LBs in one group, at most: a registry change waits for a majority.
pub const LBS_MAX: usize = 7;

/// The key the registry is kept under in the group's state.
pub const REGISTRY_KEY: &[u8] = b"lb/registry";

/// The LB group's members and which one this LB is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peers {
    pub me: ServerId,
    /// Every LB, this one included, in id order.
    pub members: Vec<Peer>,
}

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
            .map(|(at, addr)| {
                let peer_port = addr
                    .port()
                    .checked_add(PEER_PORT_OFFSET)
                    .ok_or(PeersError::PortTooHigh(*addr))?;
                Ok(Peer {
                    id: member_id(at),
                    tcp: *addr,
                    udp: SocketAddr::new(addr.ip(), peer_port),
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Peers {
            me: member_id(me),
            members,
        })
    }

    /// This LB's entry.
    pub fn me(&self) -> &Peer {
        self.members
            .iter()
            .find(|m| m.id == self.me)
            .expect("me is a member")
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

/// The `at`th LB of the sorted list's id: from 1, as 0 is "the LB".
fn member_id(at: usize) -> ServerId {
    ServerId(at as u64 + 1)
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
}
