//! Where a request is served: the one function every request that touches
//! the state passes ([`route`]). It maps the request's key to the replica
//! group that owns it ([`group_of`]) and decides whether this server serves
//! it from its own state, after a read barrier, by proposing it, or whether
//! that group's leader must (the connection then forwards it).
//!
//! A server hosts one group today, so every key maps to [`FIRST_GROUP`];
//! sharding changes [`group_of`] and what a server knows of each group, not
//! the connection. Pure: the caller passes what it knows of the group.

pub use data::frame::GroupId;
use data::frame::Role;

use crate::config::ReadMode;

/// The group every key belongs to while a server hosts one.
pub const FIRST_GROUP: GroupId = GroupId::FIRST;

/// The group that owns `key`; `None` for a request that concerns no one
/// key (flush_all), which goes to the first group while there is one.
pub fn group_of(_key: Option<&[u8]>) -> GroupId {
    FIRST_GROUP
}

/// What a request does to the state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Reads it (get, gets, a multi-get piece).
    Read,
    /// Changes it through the log (every write, gat and touch included).
    Write,
}

/// What this server knows of a group when a request arrives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Membership {
    /// A single server: the group of one has no other member and no LB.
    Alone,
    /// A member of a replicated group.
    Replica {
        role: Role,
        read_mode: ReadMode,
        /// This server leads and holds a read lease now.
        holds_lease: bool,
    },
}

/// Where a request is served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// From this server's state, now.
    Here,
    /// From this server's state once a read barrier confirms it is up to
    /// date: on the leader, a round that confirms it still leads; on a
    /// follower, the leader's read index, applied here (ReadIndex).
    HereAfterBarrier,
    /// Proposed to the group's log by this server, its leader (or a group
    /// of one).
    Propose,
    /// By the leader of this group: the request is forwarded there.
    Leader(GroupId),
}

/// Routes a request on `key` (a multi-key request's first key: with one
/// group they all map to it; `None` for no key).
pub fn route(key: Option<&[u8]>, access: Access, membership: Membership) -> Route {
    let group = group_of(key);
    let Membership::Replica {
        role,
        read_mode,
        holds_lease,
    } = membership
    else {
        return match access {
            Access::Read => Route::Here,
            Access::Write => Route::Propose,
        };
    };
    match (access, role) {
        (Access::Write, Role::Leader) => Route::Propose,
        (Access::Write, _) => Route::Leader(group),
        // Fast and possibly stale, on every server (DESIGN §4a).
        (Access::Read, _) if read_mode == ReadMode::Local => Route::Here,
        (Access::Read, Role::Leader) if read_mode == ReadMode::Linearizable && holds_lease => {
            Route::Here
        }
        // The leader without its lease, and every other member: the
        // follower asks the leader for its read index and serves the read
        // once it has applied through it (DESIGN §4a).
        (Access::Read, _) => Route::HereAfterBarrier,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn replica(role: Role, read_mode: ReadMode, holds_lease: bool) -> Membership {
        Membership::Replica {
            role,
            read_mode,
            holds_lease,
        }
    }

    #[test]
    fn a_single_server_serves_everything_itself() {
        assert_eq!(
            route(Some(b"k"), Access::Read, Membership::Alone),
            Route::Here
        );
        assert_eq!(
            route(Some(b"k"), Access::Write, Membership::Alone),
            Route::Propose
        );
    }

    #[test]
    fn writes_are_proposed_by_the_leader_and_forwarded_by_the_others() {
        for mode in [ReadMode::Linearizable, ReadMode::ReadIndex, ReadMode::Local] {
            let leader = replica(Role::Leader, mode, false);
            assert_eq!(route(Some(b"k"), Access::Write, leader), Route::Propose);
            for role in [Role::Follower, Role::Learner] {
                assert_eq!(
                    route(Some(b"k"), Access::Write, replica(role, mode, false)),
                    Route::Leader(FIRST_GROUP)
                );
            }
        }
    }

    #[test]
    fn linearizable_reads_are_served_here_after_a_barrier_unless_under_the_lease() {
        let lin = ReadMode::Linearizable;
        assert_eq!(
            route(Some(b"k"), Access::Read, replica(Role::Leader, lin, true)),
            Route::Here
        );
        assert_eq!(
            route(Some(b"k"), Access::Read, replica(Role::Leader, lin, false)),
            Route::HereAfterBarrier
        );
        // read-index mode takes the round even under a lease.
        assert_eq!(
            route(
                Some(b"k"),
                Access::Read,
                replica(Role::Leader, ReadMode::ReadIndex, true)
            ),
            Route::HereAfterBarrier
        );
        // A follower serves them too, after the leader's read index.
        for mode in [lin, ReadMode::ReadIndex] {
            for role in [Role::Follower, Role::Learner] {
                assert_eq!(
                    route(Some(b"k"), Access::Read, replica(role, mode, true)),
                    Route::HereAfterBarrier
                );
            }
        }
    }

    #[test]
    fn a_request_without_a_key_goes_to_the_first_group() {
        let follower = replica(Role::Follower, ReadMode::Linearizable, false);
        assert_eq!(
            route(None, Access::Write, follower),
            Route::Leader(FIRST_GROUP)
        );
    }

    #[test]
    fn local_reads_are_served_by_every_server() {
        for role in [Role::Leader, Role::Follower, Role::Learner] {
            assert_eq!(
                route(
                    Some(b"k"),
                    Access::Read,
                    replica(role, ReadMode::Local, false)
                ),
                Route::Here
            );
        }
    }
}
