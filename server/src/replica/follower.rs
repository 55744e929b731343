//! The follower side of replication: accepting a leader, the consistency
//! check, fragments reassembled, Acks after the fsync, commit.

use super::*;

/// A fragmented entry being reassembled on a follower.
#[derive(Debug)]
pub(super) struct Reassembly {
    pub(super) leader: ServerId,
    pub(super) term: Term,
    pub(super) prev_index: LogIndex,
    pub(super) prev_term: Term,
    pub(super) entry_term: Term,
    pub(super) total_len: usize,
    pub(super) buffer: Vec<u8>,
    pub(super) received: usize,
}

/// One AppendFragment's fields.
pub(super) struct Fragment {
    pub(super) seq: u64,
    pub(super) prev_index: LogIndex,
    pub(super) prev_term: Term,
    pub(super) commit: LogIndex,
    pub(super) entry_term: Term,
    pub(super) total_len: usize,
    pub(super) offset: usize,
    pub(super) bytes: Bytes,
}

impl Replica {
    /// Accepts the sender as leader of `term` if the term allows; false if
    /// the message must be refused.
    pub(super) fn accept_leader(&mut self, now_ms: u64, from: ServerId, term: Term) -> bool {
        let stale_accepted = bug!(self, accept_stale_append) && self.role != Role::Leader;
        if term < self.term && !stale_accepted {
            if let Some(addr) = self.addrs.get(&from).copied() {
                self.send(from, addr, Message::Reject);
            }
            return false;
        }
        if term > self.term {
            self.adopt_term(term, Some(from));
        }
        if self.role == Role::Leader {
            // Two leaders in one term cannot happen: the LB names one per
            // term, and a term is issued once. If it did, both could commit
            // different entries at one index; stop rather than serve.
            panic!(
                "two leaders in term {:?}: {:?} and {from:?}",
                self.term, self.id
            );
        }
        self.leader = Some(from);
        self.last_leader_contact_ms = Some(now_ms);
        if self.elects_by_vote {
            // A leader of this term: no candidacy, and no election while
            // it is heard.
            self.candidacy = None;
            self.reset_election_timer(now_ms);
        }
        // Whatever we answer to this Append may extend the leader's lease.
        self.promise_not_before_ms = self
            .promise_not_before_ms
            .max(now_ms + self.timing.lease_ms);
        true
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn on_append(
        &mut self,
        now_ms: u64,
        from: ServerId,
        term: Term,
        seq: u64,
        prev_index: LogIndex,
        prev_term: Term,
        commit: LogIndex,
        entries: Vec<Entry>,
    ) {
        if !self.accept_leader(now_ms, from, term) {
            return;
        }
        self.seq = self.seq.max(seq);
        match self.log.term_at(prev_index) {
            Some(t) if t == prev_term => {}
            _ if prev_index < self.log.snapshot_index => {
                // Already covered by our snapshot: the leader is behind us in
                // what it believes; tell it where we are.
                let hint = self.log.last_index();
                self.nack(from, seq, hint);
                return;
            }
            _ => {
                // Missing or conflicting: point the leader before it.
                let hint = LogIndex(prev_index.0.saturating_sub(1).min(self.log.last_index().0));
                self.nack(from, seq, hint);
                return;
            }
        }
        let mut new_entries = Vec::new();
        let mut index = prev_index;
        for entry in entries {
            index = LogIndex(index.0 + 1);
            match self.log.term_at(index) {
                Some(t) if t == entry.term => continue,
                Some(_) => {
                    // Divergent suffix: drop it, in the view and on disk.
                    self.truncate_after(LogIndex(index.0 - 1));
                }
                None => {}
            }
            let pushed = self.push_entry(entry.term, entry.payload.clone());
            assert_eq!(pushed, index, "entries are appended in order");
            new_entries.push((index, entry.term, entry.payload));
        }
        self.verified = self.verified.max(index);
        if !new_entries.is_empty() {
            self.actions.push(Action::Append(new_entries));
        }
        self.role = self.idle_role();
        // Answered at the end of the turn (`flush`): one Ack for every
        // Append of the turn.
        self.ack_owed = Some((from, self.seq));
        self.follower_commit(commit);
    }

    pub(super) fn on_fragment(
        &mut self,
        now_ms: u64,
        from: ServerId,
        term: Term,
        fragment: Fragment,
    ) {
        if !self.accept_leader(now_ms, from, term) {
            return;
        }
        if fragment.total_len > REASSEMBLY_BYTES_MAX
            || fragment.offset + fragment.bytes.len() > fragment.total_len
        {
            return;
        }
        let same = self.reassembly.as_ref().is_some_and(|r| {
            r.leader == from
                && r.term == term
                && r.prev_index == fragment.prev_index
                && r.prev_term == fragment.prev_term
                && r.entry_term == fragment.entry_term
                && r.total_len == fragment.total_len
        });
        if !same {
            // One entry at a time: a new one replaces an unfinished one.
            self.reassembly = Some(Reassembly {
                leader: from,
                term,
                prev_index: fragment.prev_index,
                prev_term: fragment.prev_term,
                entry_term: fragment.entry_term,
                total_len: fragment.total_len,
                buffer: vec![0; fragment.total_len],
                received: 0,
            });
        }
        let Some(r) = self.reassembly.as_mut() else {
            return;
        };
        // Fragments of one entry are resent whole, in order: count only the
        // one at the frontier so duplicates cannot complete a torn entry.
        if fragment.offset != r.received {
            return;
        }
        r.buffer[fragment.offset..fragment.offset + fragment.bytes.len()]
            .copy_from_slice(&fragment.bytes);
        r.received += fragment.bytes.len();
        if r.received < r.total_len {
            return;
        }
        let Some(r) = self.reassembly.take() else {
            return;
        };
        let entry = Entry {
            term: r.entry_term,
            payload: Bytes::from(r.buffer),
        };
        self.on_append(
            now_ms,
            from,
            term,
            fragment.seq,
            r.prev_index,
            r.prev_term,
            fragment.commit,
            vec![entry],
        );
    }

    pub(super) fn truncate_after(&mut self, index: LogIndex) {
        assert!(index >= self.commit, "never truncate committed entries");
        self.log.truncate_after(index);
        self.configs.retain(|i, _| *i <= index);
        self.persisted = self.persisted.min(index);
        self.actions.push(Action::TruncateAfter(index));
    }

    /// Acknowledges what is both durable here and verified against the leader.
    pub(super) fn ack(&mut self, leader: ServerId, seq: u64) {
        let Some(addr) = self.addrs.get(&leader).copied() else {
            return;
        };
        let match_index = if bug!(self, ack_before_fsync) {
            self.verified.min(self.log.last_index())
        } else {
            self.persisted.min(self.verified)
        };
        self.ack_owed = None;
        self.seq_answered = self.seq_answered.max(seq);
        let hold_ms = self.hold_ms();
        self.send(
            leader,
            addr,
            Message::Ack {
                seq,
                match_index,
                hold_ms,
                memory_limit_bytes: self.memory_limit_bytes,
            },
        );
    }

    /// The hold this follower keeps after each Append (see `accept_leader`),
    /// declared in every answer so the leader's lease never outlasts it.
    pub(super) fn hold_ms(&self) -> u32 {
        u32::try_from(self.timing.lease_ms).unwrap_or(u32::MAX)
    }

    pub(super) fn nack(&mut self, leader: ServerId, seq: u64, hint: LogIndex) {
        let Some(addr) = self.addrs.get(&leader).copied() else {
            return;
        };
        self.send(
            leader,
            addr,
            Message::Nack {
                seq,
                hint_index: hint,
                hold_ms: self.hold_ms(),
                memory_limit_bytes: self.memory_limit_bytes,
            },
        );
    }

    pub(super) fn follower_commit(&mut self, leader_commit: LogIndex) {
        // Only entries known to match the leader's log may be applied.
        let commit = leader_commit.min(self.verified).min(self.log.last_index());
        if commit > self.commit {
            self.commit = commit;
            self.actions.push(Action::Commit(commit));
        }
    }
}
