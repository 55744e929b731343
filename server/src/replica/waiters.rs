//! The host's half of the core's contract for its clients: proposals
//! waiting for their entry to be applied, and reads waiting for their round
//! and then for the state to catch up. Every host of the core keeps exactly
//! this (the replication driver answers through oneshot channels, the
//! simulator through simulated clients), so it is written once, here, and
//! the simulator runs the code production runs.
//!
//! Generic over the waiter each host answers: this decides when a waiter is
//! answered and with what, the host how.

use std::collections::BTreeMap;

use bytes::Bytes;
use data::command::Command;
use data::frame::{LogIndex, Role, Term};
use data::state::{Outcome, State};

use super::{NotLeader, Replica, READS_WAITING_MAX};

/// How long a read whose read index is ahead of the state waits for the
/// state to apply through it before it is given up (a follower cut off
/// from its leader's entries but not from its answers would wait for the
/// partition to heal): the host then lets the leader answer it, or fails it.
pub const READ_APPLY_WAIT_MS_MAX: u64 = 3_000;

/// What became of a proposal whose index was applied.
#[derive(Debug, PartialEq, Eq)]
pub enum Applied<P> {
    /// The entry applied is the one proposed: its outcome is the answer.
    Ours(P),
    /// Another leader's entry took the index: the outcome is unknown.
    Replaced(P),
}

/// One committed entry applied to the host's state
/// ([`Waiters::apply_next`]).
#[derive(Debug)]
pub struct AppliedEntry<P> {
    pub index: LogIndex,
    pub payload: Bytes,
    pub outcome: Outcome,
    /// The proposal made at this index on this host, if any.
    pub proposal: Option<Applied<P>>,
}

/// A committed entry that does not decode: the log is damaged.
#[derive(Debug, thiserror::Error)]
#[error("committed entry {index} does not decode: {source}")]
pub struct UndecodableEntry {
    pub index: LogIndex,
    pub source: data::command::DecodeError,
}

/// Proposals and reads waiting on one host.
#[derive(Debug)]
pub struct Waiters<P, R> {
    /// Index → (term proposed in, waiter).
    proposals: BTreeMap<u64, (Term, P)>,
    /// Reads waiting for their heartbeat round: token → waiter.
    reads: BTreeMap<u64, R>,
    /// Reads whose round is confirmed, waiting for the state to reach the
    /// index: (index, when it became ready if the state was behind it).
    reads_ready: Vec<(LogIndex, Option<u64>, R)>,
    /// Reads that found the state behind their index, and the
    /// milliseconds they waited for it in all (`stats`).
    reads_waited_for_apply: u64,
    read_apply_wait_ms: u64,
    /// Reads that arrived before this leader could serve (its no-op not yet
    /// committed), held rather than failed: that lasts one round trip after
    /// an election.
    reads_not_ready: Vec<R>,
    next_token: u64,
}

impl<P, R> Default for Waiters<P, R> {
    fn default() -> Self {
        Waiters {
            proposals: BTreeMap::new(),
            reads: BTreeMap::new(),
            reads_ready: Vec::new(),
            reads_waited_for_apply: 0,
            read_apply_wait_ms: 0,
            reads_not_ready: Vec::new(),
            next_token: 0,
        }
    }
}

impl<P, R> Waiters<P, R> {
    /// Proposes `payload` for `waiter`; a refusal gives the waiter back.
    pub fn propose(
        &mut self,
        core: &mut Replica,
        payload: Bytes,
        waiter: P,
    ) -> Result<LogIndex, (NotLeader, P)> {
        match core.propose(payload) {
            Ok(index) => {
                self.proposals.insert(index.0, (core.term(), waiter));
                Ok(index)
            }
            Err(refused) => Err((refused, waiter)),
        }
    }

    /// Starts a read round for `waiter`, or holds it while this leader
    /// cannot serve yet (up to [`READS_WAITING_MAX`]); a refusal gives the
    /// waiter back.
    pub fn read(
        &mut self,
        core: &mut Replica,
        now_ms: u64,
        waiter: R,
    ) -> Result<(), (NotLeader, R)> {
        self.next_token += 1;
        let token = self.next_token;
        match core.read(now_ms, token) {
            Ok(()) => {
                self.reads.insert(token, waiter);
                Ok(())
            }
            Err(NotLeader::NotReady)
                if core.role() == Role::Leader
                    && self.reads_not_ready.len() < READS_WAITING_MAX =>
            {
                self.reads_not_ready.push(waiter);
                Ok(())
            }
            Err(refused) => Err((refused, waiter)),
        }
    }

    /// Reads held while the leader was not ready start once it serves; if
    /// it no longer leads they are returned, to be told so.
    pub fn retry_held_reads(&mut self, core: &mut Replica, now_ms: u64) -> Vec<R> {
        if self.reads_not_ready.is_empty() {
            return Vec::new();
        }
        if core.role() != Role::Leader {
            return std::mem::take(&mut self.reads_not_ready);
        }
        let mut refused = Vec::new();
        if core.is_serving() {
            for waiter in std::mem::take(&mut self.reads_not_ready) {
                if let Err((_, waiter)) = self.read(core, now_ms, waiter) {
                    refused.push(waiter);
                }
            }
        }
        refused
    }

    /// [`super::Action::ReadReady`]: the read may be served once the state
    /// has applied `index` (it has applied `applied` at `now_ms`).
    pub fn read_ready(&mut self, token: u64, index: LogIndex, applied: LogIndex, now_ms: u64) {
        if let Some(waiter) = self.reads.remove(&token) {
            let behind = (index > applied).then_some(now_ms);
            self.reads_ready.push((index, behind, waiter));
        }
    }

    /// Reads that had to wait for the state to apply through their index,
    /// and the milliseconds they waited in all.
    pub fn apply_waits(&self) -> (u64, u64) {
        (self.reads_waited_for_apply, self.read_apply_wait_ms)
    }

    /// [`super::Action::ReadFailed`]: the read's waiter, to be told this
    /// server no longer leads.
    pub fn read_failed(&mut self, token: u64) -> Option<R> {
        self.reads.remove(&token)
    }

    /// The entry at `index` was applied: the waiter of a proposal made
    /// there, and whether the entry is the one it proposed (the core's term
    /// at the index is still the proposal's).
    pub fn applied(&mut self, core: &Replica, index: LogIndex) -> Option<Applied<P>> {
        let (term, waiter) = self.proposals.remove(&index.0)?;
        Some(if core.term_at(index) == Some(term) {
            Applied::Ours(waiter)
        } else {
            Applied::Replaced(waiter)
        })
    }

    /// Applies the entry after `applied` to `state` if `commit` covers it
    /// and the core still holds it (a snapshot installed meanwhile may have
    /// taken it), advancing `applied`; with the proposal made there. Hosts
    /// call it until it returns `None`: entries apply in order, once.
    pub fn apply_next(
        &mut self,
        core: &Replica,
        state: &mut State,
        applied: &mut LogIndex,
        commit: LogIndex,
    ) -> Result<Option<AppliedEntry<P>>, UndecodableEntry> {
        if *applied >= commit {
            return Ok(None);
        }
        let index = LogIndex(applied.0 + 1);
        let Some(payload) = core.entry(index).cloned() else {
            return Ok(None);
        };
        let command = Command::decode(payload.clone())
            .map_err(|source| UndecodableEntry { index, source })?;
        let outcome = state.apply(index.0, &command);
        *applied = index;
        Ok(Some(AppliedEntry {
            index,
            payload,
            outcome,
            proposal: self.applied(core, index),
        }))
    }

    /// [`super::Action::ProposalsLost`] and truncations: the waiters of
    /// proposals after `after`, whose outcome is unknown.
    pub fn lost_after(&mut self, after: LogIndex) -> Vec<P> {
        let lost = self.proposals.split_off(&(after.0 + 1));
        lost.into_values().map(|(_, waiter)| waiter).collect()
    }

    /// Reads that may be served now (`now_ms`) that the state applied
    /// `applied`, and reads given up after waiting
    /// [`READ_APPLY_WAIT_MS_MAX`] for it.
    pub fn reads_served(&mut self, applied: LogIndex, now_ms: u64) -> (Vec<R>, Vec<R>) {
        let (mut served, mut given_up) = (Vec::new(), Vec::new());
        if self.reads_ready.is_empty() {
            return (served, given_up);
        }
        for (index, behind, waiter) in std::mem::take(&mut self.reads_ready) {
            let waited_ms = behind.map(|since_ms| now_ms.saturating_sub(since_ms));
            if index <= applied {
                if let Some(waited_ms) = waited_ms {
                    self.reads_waited_for_apply += 1;
                    self.read_apply_wait_ms += waited_ms;
                }
                served.push(waiter);
            } else if waited_ms.is_some_and(|ms| ms >= READ_APPLY_WAIT_MS_MAX) {
                given_up.push(waiter);
            } else {
                self.reads_ready.push((index, behind, waiter));
            }
        }
        (served, given_up)
    }
}
