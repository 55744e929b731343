//! The write path's contract: a proposal goes in, its outcome comes out
//! once the write is durable (on this server's disk alone, or on a
//! majority of its group's) and applied.
//!
//! Two implementations of one [`WritePath`], behind [`crate::Backend`]:
//! - [`crate::commit`], a server alone: one thread appends a batch, one
//!   fsync, applies it;
//! - [`crate::driver`], a member of a group: the replica core replicates,
//!   commits on a majority, then applies.
//!
//! Why two, with the figures measured: DESIGN §7 ("Why two write paths").
//! What the two share is written once: the queue ([`WritePath::submit`]),
//! keystore files ([`crate::snapshot::KeystoreSchedule`]) and the log
//! ([`crate::storage::Log`]).

use std::future::Future;

use data::command::Command;
use data::state::Outcome;
use tokio::sync::{mpsc, oneshot};

use crate::memory::Reservation;

/// Why a proposal got no outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommitError {
    /// The log could not be written; the server is stopping.
    Storage,
    /// Another server leads: forward the request there.
    NotLeader,
    /// This server leads but cannot serve yet (its first entry of the term is
    /// not committed) or has just lost a majority: try again shortly.
    NotReady,
    /// Leadership changed before the write committed: it may or may not
    /// have happened.
    Unknown,
    /// A follower's read: no leader answered its read-index question in
    /// time (none can be reached from here). Refused, not forwarded.
    NoLeaderReached,
}

/// How a proposal's outcome reaches its proposer; it holds the write's
/// share of the memory limit until then. The outcome follows the apply, so
/// the bytes move from the writes in flight to the items at once: counted
/// in both until the proposer read its outcome, a pipeline of writes near
/// the limit was refused at one write and then let through at a later one.
pub struct ProposalReply {
    reply: oneshot::Sender<Result<Outcome, CommitError>>,
    _memory: Reservation,
}

impl ProposalReply {
    /// Answers the proposer (who may have left: then no one hears it), and
    /// gives back the write's reservation.
    pub fn send(self, outcome: Result<Outcome, CommitError>) {
        let _ = self.reply.send(outcome);
    }
}

/// A write path: a bounded queue of proposals, each answered once.
pub trait WritePath: Sync {
    /// What the queue carries.
    type Request: Send;

    /// The queue into the path's thread; proposers wait (async) for room.
    fn queue(&self) -> &mpsc::Sender<Self::Request>;

    /// The request that proposes `command`, answered through `reply`.
    fn proposal(command: Command, reply: ProposalReply) -> Self::Request;

    /// Queues `command`, holding `memory` until its outcome is sent; the
    /// receiver yields the outcome. Lets a connection queue many pipelined
    /// writes before waiting for the first. A path that stopped (its log
    /// failed) answers [`CommitError::Storage`].
    fn submit(
        &self,
        command: Command,
        memory: Reservation,
    ) -> impl Future<Output = Result<oneshot::Receiver<Result<Outcome, CommitError>>, CommitError>> + Send
    {
        async move {
            let (reply, rx) = oneshot::channel();
            let reply = ProposalReply {
                reply,
                _memory: memory,
            };
            self.queue()
                .send(Self::proposal(command, reply))
                .await
                .map_err(|_| CommitError::Storage)?;
            Ok(rx)
        }
    }
}
