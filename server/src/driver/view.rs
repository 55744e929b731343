//! What the rest of the server sees of the driver: the published
//! replication state ([`ClusterView`]) and the handle connections send
//! proposals and read barriers through ([`ClusterHandle`]).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use data::command::Command;
use data::frame::{Peer, Role};
use tokio::sync::mpsc;

use super::read_gate::{BatchReply, Joined, ReadGate};
use crate::config::ReadMode;
use crate::write_path::{CommitError, ProposalReply, WritePath};

/// What connections and `stats` see of the replication state; written by
/// the driver only.
#[derive(Debug, Default)]
pub struct ClusterView {
    pub id: AtomicU64,
    pub role: AtomicU64,
    pub term: AtomicU64,
    pub leader: AtomicU64,
    pub commit_index: AtomicU64,
    pub applied_index: AtomicU64,
    pub last_index: AtomicU64,
    pub frames_sent: AtomicU64,
    pub frames_received: AtomicU64,
    pub frames_dropped: AtomicU64,
    pub bad_mac: AtomicU64,
    /// Leader: reads may be answered without a round until then
    /// ([`crate::clock::mono_ms`]); 0 when not.
    pub lease_until_ms: AtomicU64,
    /// The leader's memcached address, when known.
    pub leader_tcp: Mutex<Option<SocketAddr>>,
    /// Keys of gets this server served from its own state.
    pub reads_local: AtomicU64,
    /// Requests this server forwarded to the leader.
    pub requests_forwarded: AtomicU64,
    /// Follower: read-index questions sent, and the reads (one per
    /// connection's batch of gets) their answers served.
    pub read_index_questions: AtomicU64,
    pub read_index_reads: AtomicU64,
    /// Reads that waited for the state to apply through their read index,
    /// and the milliseconds they waited in all.
    pub reads_waited_for_apply: AtomicU64,
    pub read_apply_wait_ms: AtomicU64,
    /// A group that elects by vote (the LB group): its latest
    /// configuration, as the LB shows it and changes it one step at a time.
    pub config: Mutex<Configuration>,
}

/// A configuration as the driver last published it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Configuration {
    pub voters: Vec<u64>,
    pub learners: Vec<u64>,
    /// Whether it is committed, as far as this member knows.
    pub committed: bool,
}

impl Configuration {
    /// `core`'s latest configuration (the simulator reads it so too).
    pub fn of(core: &crate::replica::Replica) -> Configuration {
        let membership = core.membership();
        Configuration {
            voters: membership.voters.iter().map(|id| id.0).collect(),
            learners: membership.learners.iter().map(|id| id.0).collect(),
            committed: core.config_committed(),
        }
    }
}

impl ClusterView {
    pub fn role(&self) -> Role {
        match self.role.load(Relaxed) {
            1 => Role::Leader,
            2 => Role::Learner,
            _ => Role::Follower,
        }
    }

    /// Whether this server, the leader, holds a read lease now.
    pub fn holds_lease(&self) -> bool {
        self.lease_until_ms.load(Ordering::Acquire) > crate::clock::mono_ms()
    }

    pub fn config(&self) -> Configuration {
        self.config
            .lock()
            .expect("view lock is never held across a panic")
            .clone()
    }

    pub fn leader_tcp(&self) -> Option<SocketAddr> {
        *self
            .leader_tcp
            .lock()
            .expect("view lock is never held across a panic")
    }

    /// `repl_` lines for `stats`.
    pub fn report(&self, read_mode: ReadMode) -> Vec<(String, String)> {
        let role = match self.role() {
            Role::Leader => "leader",
            Role::Learner => "learner",
            Role::Follower => "follower",
        };
        let commit = self.commit_index.load(Relaxed);
        let applied = self.applied_index.load(Relaxed);
        vec![
            ("repl_id".into(), self.id.load(Relaxed).to_string()),
            ("repl_role".into(), role.into()),
            ("repl_term".into(), self.term.load(Relaxed).to_string()),
            (
                "repl_leader".into(),
                format!("{:016x}", self.leader.load(Relaxed)),
            ),
            ("repl_commit_index".into(), commit.to_string()),
            ("repl_applied_index".into(), applied.to_string()),
            (
                "repl_last_index".into(),
                self.last_index.load(Relaxed).to_string(),
            ),
            (
                "repl_lag".into(),
                commit.saturating_sub(applied).to_string(),
            ),
            (
                "repl_frames_sent".into(),
                self.frames_sent.load(Relaxed).to_string(),
            ),
            (
                "repl_frames_received".into(),
                self.frames_received.load(Relaxed).to_string(),
            ),
            (
                "repl_frames_dropped".into(),
                self.frames_dropped.load(Relaxed).to_string(),
            ),
            (
                "repl_bad_mac".into(),
                self.bad_mac.load(Relaxed).to_string(),
            ),
            ("repl_read_mode".into(), read_mode.name().into()),
            (
                "repl_reads_local".into(),
                self.reads_local.load(Relaxed).to_string(),
            ),
            (
                "repl_requests_forwarded".into(),
                self.requests_forwarded.load(Relaxed).to_string(),
            ),
            (
                "repl_read_index_questions".into(),
                self.read_index_questions.load(Relaxed).to_string(),
            ),
            (
                "repl_read_index_reads".into(),
                self.read_index_reads.load(Relaxed).to_string(),
            ),
            (
                "repl_reads_waited_for_apply".into(),
                self.reads_waited_for_apply.load(Relaxed).to_string(),
            ),
            (
                "repl_read_apply_wait_ms".into(),
                self.read_apply_wait_ms.load(Relaxed).to_string(),
            ),
            (
                // Milliseconds of read lease left (leader): 0 means reads
                // take a majority round now.
                "repl_lease_ms_left".into(),
                self.lease_until_ms
                    .load(Relaxed)
                    .saturating_sub(crate::clock::mono_ms())
                    .to_string(),
            ),
        ]
    }
}

/// A request from a connection to the driver.
pub enum DriverRequest {
    Propose {
        command: Command,
        reply: ProposalReply,
    },
    /// A batch of linearizable read barriers ([`ReadGate`]): answered once
    /// the state may be read.
    Read { reply: BatchReply },
    /// A group that elects by vote: its members' addresses, and whether
    /// they are the members it should have, for its leader to move the
    /// configuration toward
    /// ([`crate::replica::Replica::set_target_members`]).
    Members { members: Vec<Peer>, target: bool },
}

impl WritePath for ClusterHandle {
    type Request = DriverRequest;

    fn queue(&self) -> &mpsc::Sender<DriverRequest> {
        &self.tx
    }

    fn proposal(command: Command, reply: ProposalReply) -> DriverRequest {
        DriverRequest::Propose { command, reply }
    }
}

/// The connections' handle on the driver.
#[derive(Clone)]
pub struct ClusterHandle {
    pub(super) tx: mpsc::Sender<DriverRequest>,
    pub view: Arc<ClusterView>,
    pub read_mode: ReadMode,
    /// The read barriers waiting for the driver to take them.
    pub(super) reads: Arc<ReadGate>,
}

impl ClusterHandle {
    /// Waits until a linearizable read may be served from the local state.
    pub async fn read_barrier(&self) -> Result<(), CommitError> {
        let Joined { batch, send } = self.reads.join();
        if let Some(reply) = send {
            // A driver gone drops the request, and with it the batch is
            // refused.
            let _ = self.tx.send(DriverRequest::Read { reply }).await;
        }
        batch.wait().await
    }

    /// A group that elects by vote: its members' addresses, and with
    /// `target`, the members it should have (its leader moves the
    /// configuration toward them, one change at a time; a leader forgets
    /// them when it steps down).
    pub async fn set_members(&self, members: Vec<Peer>, target: bool) -> Result<(), CommitError> {
        self.tx
            .send(DriverRequest::Members { members, target })
            .await
            .map_err(|_| CommitError::Storage)
    }
}
