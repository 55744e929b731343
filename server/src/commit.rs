//! The commit pipeline of a server alone (one of the two
//! [`WritePath`]s): the one thread that owns the log, turns proposals
//! into durable log entries, applies them to the state in index order and
//! answers each proposer.
//!
//! Group commit: the thread takes every proposal that is waiting, appends them
//! all, and one fsync makes them all durable; proposals that arrive during
//! that fsync form the next batch. A proposer hears its outcome only after its
//! record is on disk (DESIGN §2: what STORED means). In single-node mode the
//! majority is the server itself; replication adds the followers' acks.
//!
//! It also decides when to write a keystore file: once enough log was written
//! since the last one, it clones the items under the state lock (values are
//! shared, not copied) and a helper thread writes the file, after which the
//! log before it is deleted.

use std::path::PathBuf;
use std::sync::Arc;
use std::thread;
use std::time::Instant;

use data::command::Command;
use tokio::sync::mpsc;

use crate::snapshot::KeystoreSchedule;
use crate::state::{self, SharedState};
use crate::stats::Stats;
use crate::storage::{Log, StorageError};
use crate::write_path::{CommitError, ProposalReply, WritePath};

/// Proposals waiting for the commit thread at most; proposers wait (async)
/// for room beyond it, which pushes back on clients.
pub const PROPOSALS_QUEUED_MAX: usize = 16 * 1024;

/// Proposals appended before one fsync at most, so one batch cannot hold the
/// state lock or the disk for too long.
pub const BATCH_PROPOSALS_MAX: usize = 4096;

/// Bytes appended before one fsync at most (a few max-size values).
pub const BATCH_BYTES_MAX: usize = 8 * 1024 * 1024;

/// Term of every entry while the server runs as a group of one; elections
/// (replication) will raise it.
pub const SINGLE_NODE_TERM: u64 = 1;

/// One write waiting to be committed.
pub struct Proposal {
    pub command: Command,
    pub reply: ProposalReply,
}

/// Handle to submit proposals to the commit thread.
#[derive(Clone)]
pub struct Committer {
    tx: mpsc::Sender<Proposal>,
}

impl WritePath for Committer {
    type Request = Proposal;

    fn queue(&self) -> &mpsc::Sender<Proposal> {
        &self.tx
    }

    fn proposal(command: Command, reply: ProposalReply) -> Proposal {
        Proposal { command, reply }
    }
}

/// Settings of the commit thread.
#[derive(Clone, Debug)]
pub struct CommitConfig {
    pub data_dir: PathBuf,
    pub snapshot_log_bytes: u64,
}

/// Starts the commit thread over an opened log. It runs until every
/// [`Committer`] is dropped, then syncs and returns.
pub fn start(
    log: Log,
    state: SharedState,
    stats: Arc<Stats>,
    config: CommitConfig,
) -> (Committer, thread::JoinHandle<Result<(), StorageError>>) {
    let (tx, rx) = mpsc::channel(PROPOSALS_QUEUED_MAX);
    let handle = thread::Builder::new()
        .name("commit".into())
        .spawn(move || CommitLoop::new(log, state, stats, config).run(rx))
        // Spawning fails only when the OS is out of threads at start-up.
        .expect("spawn the commit thread");
    (Committer { tx }, handle)
}

struct CommitLoop {
    log: Log,
    state: SharedState,
    stats: Arc<Stats>,
    config: CommitConfig,
    last_index: u64,
    keystores: KeystoreSchedule,
    encoded_bytes: usize,
}

impl CommitLoop {
    fn new(log: Log, state: SharedState, stats: Arc<Stats>, config: CommitConfig) -> CommitLoop {
        // After a keystore file the log may hold nothing newer than it.
        let last_index = log.last_index().max(state::read(&state).applied_index());
        CommitLoop {
            log,
            state,
            stats,
            keystores: KeystoreSchedule::new(config.snapshot_log_bytes),
            config,
            last_index,
            encoded_bytes: 0,
        }
    }

    fn run(mut self, mut rx: mpsc::Receiver<Proposal>) -> Result<(), StorageError> {
        let mut batch: Vec<Proposal> = Vec::with_capacity(BATCH_PROPOSALS_MAX);
        while let Some(first) = rx.blocking_recv() {
            self.encoded_bytes = first.command.encoded_len();
            batch.push(first);
            while batch.len() < BATCH_PROPOSALS_MAX && self.encoded_bytes < BATCH_BYTES_MAX {
                match rx.try_recv() {
                    Ok(proposal) => {
                        self.encoded_bytes += proposal.command.encoded_len();
                        batch.push(proposal);
                    }
                    Err(_) => break,
                }
            }
            if let Err(error) = self.commit_batch(&mut batch) {
                // A failed fsync leaves the page cache's state unknown: stop
                // rather than acknowledge anything later (as PostgreSQL does).
                tracing::error!(%error, "log write failed; refusing further writes");
                for proposal in batch.drain(..) {
                    proposal.reply.send(Err(CommitError::Storage));
                }
                rx.close();
                while let Ok(proposal) = rx.try_recv() {
                    proposal.reply.send(Err(CommitError::Storage));
                }
                return Err(error);
            }
            self.poll_snapshot(false)?;
        }
        self.poll_snapshot(true)?;
        self.log.sync()
    }

    fn commit_batch(&mut self, batch: &mut Vec<Proposal>) -> Result<(), StorageError> {
        let first_index = self.last_index + 1;
        for (offset, proposal) in batch.iter().enumerate() {
            self.log.append(
                SINGLE_NODE_TERM,
                first_index + offset as u64,
                &proposal.command,
            )?;
        }
        let sync_started = Instant::now();
        self.log.sync()?;
        self.stats
            .log_synced(sync_started, batch.len() as u64, self.encoded_bytes as u64);
        self.last_index += batch.len() as u64;
        self.keystores.wrote(self.encoded_bytes as u64);

        let mut outcomes = Vec::with_capacity(batch.len());
        {
            let mut state = state::write(&self.state);
            for (offset, proposal) in batch.iter().enumerate() {
                outcomes.push(state.apply(first_index + offset as u64, &proposal.command));
            }
        }
        for (proposal, outcome) in batch.drain(..).zip(outcomes) {
            // The proposer may have gone (connection closed); the write stands.
            proposal.reply.send(Ok(outcome));
        }
        Ok(())
    }

    /// Finishes a keystore write that completed (deleting the log it covers),
    /// and starts one when enough log was written. `wait` blocks for one in
    /// progress (at shutdown).
    fn poll_snapshot(&mut self, wait: bool) -> Result<(), StorageError> {
        self.keystores.finished(&mut self.log, &self.stats, wait)?;
        if !wait {
            self.keystores
                .maybe_start(&self.config.data_dir, &self.state, |_| SINGLE_NODE_TERM);
        }
        Ok(())
    }
}
