//! The leader side of replication (DESIGN §4): each follower's progress,
//! windows of Appends and fragments, Acks and Nacks, retransmits, commit.

use super::*;

/// What every Ack and Nack declares besides its position in the log.
#[derive(Clone, Copy, Debug)]
pub(super) struct Answer {
    /// The heartbeat round answered.
    pub(super) seq: u64,
    /// How long the follower holds its promise after an Append.
    pub(super) hold_ms: u32,
    /// The follower's memory limit (0: none).
    pub(super) memory_limit_bytes: u64,
}

impl Answer {
    pub(super) fn new(seq: u64, hold_ms: u32, memory_limit_bytes: u64) -> Answer {
        Answer {
            seq,
            hold_ms,
            memory_limit_bytes,
        }
    }
}

/// The leader's view of one follower.
#[derive(Clone, Debug)]
pub(super) struct Progress {
    /// Next index to send.
    pub(super) next: LogIndex,
    /// Highest index known durable on the follower and matching ours.
    pub(super) matched: LogIndex,
    /// Highest heartbeat sequence the follower has answered.
    pub(super) seq_acked: u64,
    /// How long the follower holds its promise after an Append, as its
    /// latest answer declared (0 until it answers).
    pub(super) hold_ms: u64,
    /// The follower's memory limit as its latest answer declared (0: none,
    /// or not heard yet).
    pub(super) memory_limit_bytes: u64,
    pub(super) last_ack_ms: Option<u64>,
    pub(super) retransmit_at_ms: u64,
    pub(super) backoff_ms: u64,
    /// Where the latest resend (a Nack's or the retransmit timer's) started,
    /// and when, since the follower last advanced `matched`. See
    /// [`Replica::on_nack`] for what it holds back.
    pub(super) resent: Option<(LogIndex, u64)>,
    /// When this follower was last told to expect a snapshot.
    pub(super) snapshot_asked_ms: Option<u64>,
}

impl Progress {
    /// The follower answered round `seq`, declaring its settings. The hold
    /// is the same in every answer until it restarts, the memory limit
    /// changes with `cache_memlimit`; the latest of each is kept.
    pub(super) fn answered(&mut self, answer: Answer) {
        self.seq_acked = self.seq_acked.max(answer.seq);
        self.hold_ms = u64::from(answer.hold_ms);
        self.memory_limit_bytes = answer.memory_limit_bytes;
    }

    /// The follower answered at `now_ms` and holds our log through
    /// `matched`: sends resume just after it, with the retransmit backoff
    /// reset if that is news.
    pub(super) fn heard(&mut self, now_ms: u64, matched: LogIndex) {
        self.last_ack_ms = Some(now_ms);
        if matched > self.matched {
            self.matched = matched;
            self.backoff_ms = RETRANSMIT_MS_MIN;
            self.retransmit_at_ms = now_ms + RETRANSMIT_MS_MIN;
            self.resent = None;
        }
        if self.next <= self.matched {
            self.next = LogIndex(self.matched.0 + 1);
        }
    }
}

impl Replica {
    pub(super) fn new_progress(&self, next: LogIndex, now_ms: u64) -> Progress {
        Progress {
            next,
            matched: LogIndex(0),
            seq_acked: 0,
            hold_ms: 0,
            memory_limit_bytes: 0,
            last_ack_ms: Some(now_ms),
            retransmit_at_ms: now_ms + RETRANSMIT_MS_MIN,
            backoff_ms: RETRANSMIT_MS_MIN,
            resent: None,
            snapshot_asked_ms: None,
        }
    }

    pub(super) fn append_local(&mut self, payload: Bytes) -> LogIndex {
        let term = self.term;
        let index = self.push_entry(term, payload.clone());
        self.actions
            .push(Action::Append(vec![(index, term, payload)]));
        index
    }

    /// Adds an entry to the view, tracking configuration entries.
    pub(super) fn push_entry(&mut self, term: Term, payload: Bytes) -> LogIndex {
        let index = LogIndex(self.log.last_index().0 + 1);
        if let Some((voters, learners)) = Command::peek_config(&payload) {
            self.configs.insert(
                index,
                Membership {
                    voters: voters.into_iter().map(ServerId).collect(),
                    learners: learners.into_iter().map(ServerId).collect(),
                },
            );
        }
        self.log.push(term, payload);
        index
    }

    pub(super) fn broadcast(&mut self, now_ms: u64) {
        let peers: Vec<ServerId> = self.progress.keys().copied().collect();
        for peer in peers {
            self.send_window(peer, now_ms);
        }
        // A group of one commits on its own fsync alone.
        self.advance_commit();
    }

    /// Sends what the window allows to `peer`, and with `heartbeat` an empty
    /// Append if the window sent nothing, so the round reaches every peer.
    pub(super) fn send_window_or_heartbeat(
        &mut self,
        peer: ServerId,
        now_ms: u64,
        heartbeat: bool,
    ) {
        let sent = self.send_window(peer, now_ms);
        if heartbeat && !sent {
            self.send_append(peer, now_ms, false);
        }
    }

    /// Sends what the window allows to `peer`; true if anything was sent.
    pub(super) fn send_window(&mut self, peer: ServerId, now_ms: u64) -> bool {
        let mut sent = false;
        loop {
            let Some(progress) = self.progress.get(&peer) else {
                return sent;
            };
            let in_flight = progress.next.0.saturating_sub(progress.matched.0 + 1);
            if progress.next > self.log.last_index() || in_flight >= WINDOW_ENTRIES_MAX {
                return sent;
            }
            let in_flight_bytes = self
                .log
                .bytes_between(progress.matched, LogIndex(progress.next.0 - 1));
            if in_flight_bytes >= WINDOW_BYTES_MAX as u64 {
                return sent;
            }
            if !self.send_append(peer, now_ms, true) {
                return sent;
            }
            sent = true;
        }
    }

    /// Sends one Append (or the fragments of one large entry) starting at
    /// the peer's next index; `with_entries == false` sends a heartbeat.
    pub(super) fn send_append(&mut self, peer: ServerId, now_ms: u64, with_entries: bool) -> bool {
        let Some(addr) = self.addrs.get(&peer).copied() else {
            return false;
        };
        let Some(progress) = self.progress.get(&peer) else {
            return false;
        };
        let next = progress.next;
        let prev_index = LogIndex(next.0 - 1);
        let Some(prev_term) = self.log.term_at(prev_index) else {
            // The follower is behind our compacted log: it needs the keystore
            // file, which the driver streams (asked again now and then, in
            // case the driver lost track of it).
            let due = progress
                .snapshot_asked_ms
                .is_none_or(|t| now_ms >= t + SNAPSHOT_ASK_MS);
            if due {
                if let Some(progress) = self.progress.get_mut(&peer) {
                    progress.snapshot_asked_ms = Some(now_ms);
                }
                self.actions.push(Action::SendSnapshot { to: peer, addr });
            }
            return false;
        };
        let seq = self.seq;
        let commit = self.commit;
        let mut entries = Vec::new();
        let mut bytes = 0;
        if with_entries {
            let mut index = next;
            while let Some((term, payload)) = self.log.entry(index) {
                if payload.len() > ENTRY_PAYLOAD_BYTES_MAX {
                    if entries.is_empty() {
                        self.send_fragments(
                            peer,
                            addr,
                            seq,
                            prev_index,
                            prev_term,
                            *term,
                            payload.clone(),
                        );
                        self.sent_through(peer, next, now_ms);
                        return true;
                    }
                    break;
                }
                let size = ENTRY_OVERHEAD_BYTES + payload.len();
                if bytes + size > APPEND_ENTRIES_BYTES_MAX {
                    break;
                }
                bytes += size;
                entries.push(Entry {
                    term: *term,
                    payload: payload.clone(),
                });
                index = LogIndex(index.0 + 1);
            }
            if entries.is_empty() {
                return false;
            }
        }
        let count = entries.len() as u64;
        let message = Message::Append {
            seq,
            prev_index,
            prev_term,
            commit,
            entries,
        };
        self.send(peer, addr, message);
        if count > 0 {
            self.sent_through(peer, LogIndex(next.0 + count - 1), now_ms);
        }
        true
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn send_fragments(
        &mut self,
        peer: ServerId,
        addr: SocketAddr,
        seq: u64,
        prev_index: LogIndex,
        prev_term: Term,
        entry_term: Term,
        payload: Bytes,
    ) {
        let total_len = payload.len() as u32;
        for (n, chunk) in payload.chunks(FRAGMENT_CHUNK_BYTES_MAX).enumerate() {
            let message = Message::AppendFragment {
                seq,
                prev_index,
                prev_term,
                commit: self.commit,
                entry_term,
                total_len,
                offset: (n * FRAGMENT_CHUNK_BYTES_MAX) as u32,
                bytes: payload.slice_ref(chunk),
            };
            self.send(peer, addr, message);
        }
    }

    pub(super) fn sent_through(&mut self, peer: ServerId, last: LogIndex, now_ms: u64) {
        let jitter = self.next_jitter();
        if let Some(progress) = self.progress.get_mut(&peer) {
            progress.next = LogIndex(last.0 + 1);
            // Jitter keeps followers' retransmits from lining up.
            progress.retransmit_at_ms =
                now_ms + progress.backoff_ms + jitter % (progress.backoff_ms / 2 + 1);
        }
    }

    /// The progress of follower `from`, whose Ack or Nack of `term` counts
    /// only if it answers this leader's own term; a newer term is adopted
    /// instead.
    pub(super) fn answerer(&mut self, from: ServerId, term: Term) -> Option<&mut Progress> {
        if term > self.term {
            self.adopt_term(term, None);
            return None;
        }
        if self.role != Role::Leader || term < self.term {
            return None;
        }
        self.progress.get_mut(&from)
    }

    /// `answer`: the round the follower answered and what it declared.
    pub(super) fn on_ack(
        &mut self,
        now_ms: u64,
        from: ServerId,
        term: Term,
        answer: Answer,
        matched: LogIndex,
    ) {
        let Some(progress) = self.answerer(from, term) else {
            return;
        };
        progress.answered(answer);
        progress.heard(now_ms, matched);
        self.extend_lease();
        self.advance_commit();
        self.check_reads(now_ms);
        self.maybe_change_membership(now_ms);
        self.send_window(from, now_ms);
    }

    pub(super) fn on_nack(
        &mut self,
        now_ms: u64,
        from: ServerId,
        term: Term,
        answer: Answer,
        hint: LogIndex,
    ) {
        let Some(progress) = self.answerer(from, term) else {
            return;
        };
        progress.last_ack_ms = Some(now_ms);
        progress.answered(answer);
        // Go back to just after the follower's hint, never below what it has.
        let next = LogIndex((hint.0 + 1).max(progress.matched.0 + 1));
        // A window that reaches a follower out of order draws a Nack from
        // every datagram past the gap, all asking for about the same place;
        // answering each with a window made every Nack breed a window of
        // Nacks (simulator seed 303090: a million datagrams in 40 ms). `next`
        // runs ahead as soon as a window is sent, so it cannot tell a resend
        // in flight from news. So: a Nack for a place below the latest resend
        // (walking back a conflict, or a follower that lost entries) is
        // answered at once, each lowering the mark; any other waits until
        // that resend had a retransmit interval to arrive. Such a Nack may
        // be news all the same (a follower whose snapshot covers more than
        // the resend assumed points forward), so it is never dropped for
        // longer than that.
        let news = progress
            .resent
            .is_none_or(|(from, at_ms)| next < from || now_ms >= at_ms + RETRANSMIT_MS_MIN);
        let moved_back = next < progress.next && news;
        if moved_back {
            progress.next = next;
            progress.resent = Some((next, now_ms));
        }
        self.extend_lease();
        self.check_reads(now_ms);
        if moved_back {
            self.send_window(from, now_ms);
        }
    }

    /// Commit: the largest index a majority of voters holds durably, if it is
    /// of the current term (Raft §5.4.2).
    pub(super) fn advance_commit(&mut self) {
        if self.role != Role::Leader {
            return;
        }
        let membership = self.membership();
        if membership.voters.is_empty() {
            return;
        }
        let mut matched: Vec<LogIndex> = membership
            .voters
            .iter()
            .map(|id| {
                if *id == self.id {
                    self.persisted
                } else {
                    self.progress.get(id).map_or(LogIndex(0), |p| p.matched)
                }
            })
            .collect();
        matched.sort_unstable_by(|a, b| b.cmp(a));
        let quorum = if bug!(self, commit_on_minority) {
            (membership.quorum() - 1).max(1)
        } else {
            membership.quorum()
        };
        let candidate = matched[quorum - 1];
        if candidate > self.commit && self.log.term_at(candidate) == Some(self.term) {
            self.commit = candidate;
            self.actions.push(Action::Commit(candidate));
            let removed = !self.membership().voters.contains(&self.id);
            if self.elects_by_vote && removed && self.config_committed() {
                // A configuration without this leader is committed (Ongaro
                // §4.2.2): the remaining voters elect one of their own. (A
                // data group's LB names the next leader itself, §3a.)
                tracing::info!(term = self.term.0, "removed from the group; steps down");
                self.step_down(None);
            }
        }
    }
}
