//! The store server: memcached's text protocol over TCP in front of a durable
//! log and a key-value state machine.
//!
//! Layout, following the data path:
//! - [`listener`]: accepts connections, enforces `-c`, and owns shutdown.
//! - [`connection`]: one client: bytes in, requests, replies out, in order.
//! - [`route`]: which group serves a request's key, and whether this server
//!   serves it or that group's leader does: the one decision every request
//!   passes.
//! - [`forward`]: a follower's pipelined lanes to its leader.
//! - [`write_path`]: the contract of the two write paths, and why two:
//! - [`commit`]: a server alone: the thread that owns the log; group
//!   commit, then apply.
//! - [`group_log`]: a group's log and state opened and replicated: a data
//!   server's group, and the LB group's log inside each LB.
//! - [`driver`]: a group member: runs the [`replica`] host on
//!   its own thread with the UDP socket, the log, the timer and keystore
//!   files as its I/O; [`driver::ClusterHandle`] is how connections reach it.
//! - [`replica`]: the replication core, sans-IO (elections, log shipping,
//!   commit, membership, read leases), and its host
//!   ([`replica::host`]), which the driver and the simulator both run.
//! - [`state`]: the state machine behind its one lock.
//! - [`snapshot`]: keystore files written in the background.
//! - [`memory`]: the memory limit (`-m`), checked before a write is
//!   proposed, and the bound on writes in flight.
//! - [`reclaim`]: frees the memory of expired and flushed items, through
//!   the log so that every replica frees the same.
//! - [`recovery`]: start-up: keystore file, then log replay.
//! - [`storage`]: log segments, keystore file, meta file (blocking file I/O).
//! - [`auth`]: who may use the server: authfile and SASL users, reloaded
//!   on SIGHUP, and the proof a follower's forwarding link gives.
//! - [`tls`]: TLS (`-Z`) for client connections and forwarding lanes.
//! - [`access`]: what this server served, for meta's `h` and `l`.
//! - [`stats`], [`config`], [`clock`]: counters, settings, wall clock.
//!
//! Dependencies point one way, down this list's lower half: `stats`,
//! `state`, `memory`, `clock` and `storage` import no other module;
//! `config` only the replica's timing; nothing imports `listener` or
//! `connection`.
//!
//! The protocol, the state machine and the formats are pure code in the
//! `data` crate.
#![forbid(unsafe_code)]

pub mod access;
pub mod auth;
pub mod clock;
pub mod commit;
pub mod config;
pub mod connection;
pub mod driver;
pub mod forward;
pub mod group_log;
pub mod listener;
pub mod memory;
pub mod reclaim;
pub mod recovery;
pub mod replica;
pub mod route;
pub mod snapshot;
pub mod state;
pub mod stats;
pub mod storage;
pub mod tls;
pub mod write_path;

use std::sync::Arc;

use data::limits::Limits;

use crate::config::Config;
use crate::state::SharedState;
use crate::stats::Stats;
use crate::write_path::WritePath;

/// Where writes and linearizable reads go: one of the two [`WritePath`]s
/// ([`write_path`] says why two), the server's own commit pipeline when it
/// runs alone, or the replication driver.
#[derive(Clone)]
pub enum Backend {
    Single(commit::Committer),
    Cluster(driver::ClusterHandle),
}

impl Backend {
    /// Queues `command` on the write path, holding `memory` until its
    /// outcome is sent; the receiver yields the outcome.
    pub async fn submit(
        &self,
        command: data::command::Command,
        memory: memory::Reservation,
    ) -> Result<
        tokio::sync::oneshot::Receiver<Result<data::state::Outcome, write_path::CommitError>>,
        write_path::CommitError,
    > {
        match self {
            Backend::Single(committer) => committer.submit(command, memory).await,
            Backend::Cluster(cluster) => cluster.submit(command, memory).await,
        }
    }
}

/// What every connection of one server shares.
pub struct Shared {
    pub config: Config,
    pub limits: Limits,
    pub state: SharedState,
    pub stats: Arc<Stats>,
    /// The memory limit and the writes in flight counted against it.
    /// Shared with the replication driver, which sets the group's limit.
    pub memory: Arc<memory::MemoryLimit>,
    /// The bound on the bytes of writes in flight.
    pub write_budget: memory::WriteBudget,
    /// Outgoing connections to the leader (cluster mode).
    pub leader_link: forward::LeaderLink,
    /// Users, and the cluster secret forwarding links prove.
    pub auth: auth::Auth,
    /// `-Z`: certificates for client connections and forwarding lanes.
    pub tls: Option<Arc<tls::Tls>>,
    /// What this server served: meta's `h` and `l` (best effort).
    pub access: access::AccessTable,
}

pub use listener::{run, Listening};
