//! The core's public events: time passing, a datagram, a proposal, a read,
//! the end of a driver turn, an fsync completed.

use super::*;

impl Replica {
    /// Time passes: the leader sends heartbeats and retransmits, and steps
    /// down when a majority has been silent for the election timeout.
    pub fn tick(&mut self, now_ms: u64) {
        if self.role != Role::Leader {
            self.release_promise(now_ms);
            self.ask_read_index(now_ms);
            self.maybe_stand(now_ms);
            return;
        }
        if !self.majority_heard_within(now_ms, self.timing.election_timeout_ms) {
            // DESIGN §3: a leader cut off from a majority stops serving so
            // that clients look for the new one.
            tracing::warn!(
                term = self.term.0,
                "lost contact with a majority; stepping down"
            );
            self.step_down(None);
            return;
        }
        self.forget_leaving(now_ms);
        let heartbeat_due = now_ms >= self.last_heartbeat_ms + self.timing.heartbeat_ms;
        if heartbeat_due {
            self.next_round(now_ms);
        }
        let peers: Vec<ServerId> = self.progress.keys().copied().collect();
        for peer in peers {
            let Some(progress) = self.progress.get_mut(&peer) else {
                continue;
            };
            if now_ms >= progress.retransmit_at_ms && progress.next.0 > progress.matched.0 + 1 {
                // Nothing acked for a while: resend from what the follower has.
                progress.next = LogIndex(progress.matched.0 + 1);
                progress.resent = Some((progress.next, now_ms));
                progress.backoff_ms = (progress.backoff_ms * 2).min(RETRANSMIT_MS_MAX);
            }
            self.send_window_or_heartbeat(peer, now_ms, heartbeat_due);
        }
    }

    /// A frame from a peer or the LB (its MAC already checked by the driver).
    pub fn receive(&mut self, now_ms: u64, from: ServerId, term: Term, message: Message) {
        match message {
            Message::Heartbeat { leader, peers } => {
                self.learn_peers(&peers);
                // The LB names the leader in every heartbeat (DESIGN §3a), so
                // a lost NewLeader costs one heartbeat, not an election.
                if from == ServerId::LB && leader != ServerId::LB && term >= self.term {
                    let known = self.term == term && self.leader == Some(leader);
                    if !known {
                        self.on_new_leader(now_ms, term, leader);
                    }
                }
            }
            Message::Prepare => self.on_prepare(now_ms, from, term),
            Message::NewLeader { leader } => self.on_new_leader(now_ms, term, leader),
            Message::AddServer { peer } => self.on_add_server(now_ms, term, peer),
            Message::RemoveServer { id } => self.on_remove_server(now_ms, term, id),
            Message::Append {
                seq,
                prev_index,
                prev_term,
                commit,
                entries,
            } => self.on_append(
                now_ms, from, term, seq, prev_index, prev_term, commit, entries,
            ),
            Message::AppendFragment {
                seq,
                prev_index,
                prev_term,
                commit,
                entry_term,
                total_len,
                offset,
                bytes,
            } => {
                let fragment = Fragment {
                    seq,
                    prev_index,
                    prev_term,
                    commit,
                    entry_term,
                    total_len: total_len as usize,
                    offset: offset as usize,
                    bytes,
                };
                self.on_fragment(now_ms, from, term, fragment)
            }
            Message::Ack {
                seq,
                match_index,
                hold_ms,
                memory_limit_bytes: limit,
            } => {
                let answer = Answer::new(seq, hold_ms, limit);
                self.on_ack(now_ms, from, term, answer, match_index)
            }
            Message::Nack {
                seq,
                hint_index,
                hold_ms,
                memory_limit_bytes: limit,
            } => {
                let answer = Answer::new(seq, hold_ms, limit);
                self.on_nack(now_ms, from, term, answer, hint_index)
            }
            Message::ReadIndex { id } => self.on_read_index(now_ms, from, term, id),
            Message::ReadIndexReply { id, index } => {
                self.on_read_index_reply(now_ms, from, term, id, index)
            }
            Message::Reject if term > self.term => self.adopt_term(term, None),
            Message::RequestVote {
                last_term,
                last_index,
                pre,
            } => self.on_request_vote(now_ms, from, term, (last_term, last_index), pre),
            Message::Vote { granted, pre } => self.on_vote(now_ms, from, term, granted, pre),
            // Messages only the LB handles, and snapshots (the driver's).
            _ => {}
        }
    }

    /// A client write on the leader: appended now, sent at the next
    /// [`Replica::flush`] (with every other write of the driver's turn, in
    /// one Append per follower), committed later.
    pub fn propose(&mut self, payload: Bytes) -> Result<LogIndex, NotLeader> {
        if self.role != Role::Leader {
            return Err(NotLeader::Follower(self.leader));
        }
        if self.log.last_index().0 - self.commit.0 >= UNCOMMITTED_ENTRIES_MAX {
            return Err(NotLeader::NotReady);
        }
        Ok(self.append_local(payload))
    }

    /// A linearizable read (ReadIndex): answered with
    /// [`Action::ReadReady`] once a majority confirmed the leadership after
    /// the read arrived: on the leader, by its next round; on a follower,
    /// by the leader's answer to its next question (`follower_read`).
    pub fn read(&mut self, now_ms: u64, token: u64) -> Result<(), NotLeader> {
        if self.role != Role::Leader {
            return self.follower_read(now_ms, token);
        }
        if !self.is_serving() || self.reads.len() >= READS_WAITING_MAX {
            return Err(NotLeader::NotReady);
        }
        // The read waits for the next round, one that starts after it
        // arrived. Rounds are not sent here: one round serves every read
        // that arrives before it goes out (`flush`, or the moment the
        // round in flight is confirmed), so a burst of reads costs one round
        // trip to the followers, not one each.
        self.reads
            .push_back((self.seq + 1, self.commit, ReadFor::Local(token)));
        self.check_reads(now_ms);
        Ok(())
    }

    /// Sends what the driver's turn produced, once: the leader sends its
    /// new entries (one Append per follower for every write of the turn,
    /// not one per write) and starts the round that reads are waiting for
    /// (unless one is in flight: it starts when that one is confirmed),
    /// riding on those Appends; a follower sends the Ack it owes. The driver
    /// calls this after handing over every request and datagram it had.
    pub fn flush(&mut self, now_ms: u64) {
        // A follower asks for the read index its reads of this turn need
        // (a leader refuses any it held as a follower).
        self.ask_read_index(now_ms);
        if self.role != Role::Leader {
            self.flush_ack();
            return;
        }
        let round = self.read_round_due();
        if round {
            self.next_round(now_ms);
        }
        let peers: Vec<ServerId> = self.progress.keys().copied().collect();
        for peer in peers {
            self.send_window_or_heartbeat(peer, now_ms, round);
        }
        // A group of one commits on its own fsync alone.
        self.advance_commit();
    }

    /// Follower: sends the Ack owed for the Appends of this turn, unless it
    /// can wait for the fsync in progress, whose Ack will say more. It
    /// cannot wait when it answers a new read round (the leader's reads
    /// should not wait for our disk) or when nothing awaits an fsync.
    pub(super) fn flush_ack(&mut self) {
        let Some((leader, seq)) = self.ack_owed else {
            return;
        };
        let fsync_pending = self.persisted < self.log.last_index();
        if seq > self.seq_answered || !fsync_pending || bug!(self, ack_before_fsync) {
            self.ack(leader, seq);
        }
    }

    pub(super) fn read_round_due(&self) -> bool {
        self.role == Role::Leader
            && self.reads.back().is_some_and(|(seq, _, _)| *seq > self.seq)
            && self.round_confirmed(self.seq)
    }

    /// A heartbeat round: every follower answers with the round's sequence
    /// number, and a majority of answers confirms this leader still leads.
    pub(super) fn start_read_round(&mut self, now_ms: u64) {
        self.next_round(now_ms);
        let peers: Vec<ServerId> = self.progress.keys().copied().collect();
        for peer in peers {
            self.send_append(peer, now_ms, false);
        }
    }

    /// The driver fsynced the log through `index`.
    pub fn persisted(&mut self, now_ms: u64, index: LogIndex) {
        self.persisted = self.persisted.max(index.min(self.log.last_index()));
        match self.role {
            Role::Leader => {
                self.advance_commit();
                self.check_reads(now_ms);
            }
            _ => {
                if let Some(leader) = self.leader {
                    self.ack(leader, self.seq);
                }
                self.follower_commit(self.commit);
            }
        }
        let _ = now_ms;
    }
}
