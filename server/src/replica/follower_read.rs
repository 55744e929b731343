//! Linearizable reads on a follower (DESIGN §4a, Raft thesis §6.4): the
//! follower asks the leader for its commit index (`ReadIndex`), the leader
//! answers once a heartbeat round started after the question confirms it
//! still leads (`ReadIndexReply`), and the follower serves the reads that
//! arrived before it asked once it has applied through that index.
//!
//! One question serves every read that arrived before it was sent; reads
//! that arrive while it is in flight go in the next, sent at the end of the
//! driver's turn (at most [`READ_QUESTIONS_IN_FLIGHT_MAX`] in flight), so
//! a burst of reads costs one exchange, not one each.

use super::*;

/// How long a read on a follower waits for an answer (through a lost
/// question, a failover, or no leader at all) before it is refused.
pub const FOLLOWER_READ_WAIT_MS: u64 = 3_000;
/// Questions a follower has in flight at most. A read that arrives while
/// one is in flight needs a question of its own (an answer to an earlier
/// one may predate it); letting a few overlap saves it waiting out the
/// earlier round trip first. The questions per round trip stay bounded
/// however fast reads arrive.
pub const READ_QUESTIONS_IN_FLIGHT_MAX: usize = 4;

/// Who a leader's read waiting for a round is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum ReadFor {
    /// A read of this server's own clients: [`Action::ReadReady`].
    Local(u64),
    /// A follower's `ReadIndex` exchange `id`: answered with the index.
    Follower { from: ServerId, id: u64 },
}

/// A follower's reads waiting for the leader's read index.
pub(super) struct FollowerReads {
    /// Questions in flight, oldest first (ids increasing), each with the
    /// reads that arrived before it was first sent. An answer to one
    /// serves it and every older one: their reads arrived before it too.
    asked: VecDeque<Asked>,
    /// Reads that arrived since the newest question: the next one's.
    next: Vec<(u64, u64)>,
    next_id: u64,
    /// Questions sent (resent ones too) and reads answered, for `stats`.
    questions: u64,
    reads_answered: u64,
}

struct Asked {
    id: u64,
    /// Where it went last (leader and term), and when.
    to: Option<(ServerId, Term)>,
    sent_ms: u64,
    /// (token, arrival), in arrival order.
    reads: Vec<(u64, u64)>,
}

impl FollowerReads {
    /// Question ids start at a point drawn from `seed` (the host's jitter
    /// seed, different at every start), so that an answer to a question
    /// asked before a restart, still in the network, matches no question
    /// asked after it: it could predate the reads waiting now.
    pub(super) fn new(seed: u64) -> FollowerReads {
        // splitmix64's finalizer: spreads a seed with few varying bits.
        let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        FollowerReads {
            asked: VecDeque::new(),
            next: Vec::new(),
            // Room to count up without wrapping.
            next_id: (z ^ (z >> 31)) >> 1,
            questions: 0,
            reads_answered: 0,
        }
    }

    pub(super) fn len(&self) -> usize {
        self.next.len() + self.asked.iter().map(|a| a.reads.len()).sum::<usize>()
    }

    fn take_all(&mut self) -> Vec<(u64, u64)> {
        let mut all: Vec<_> = self.asked.drain(..).flat_map(|a| a.reads).collect();
        all.append(&mut self.next);
        all
    }
}

impl Replica {
    /// Follower: read-index questions sent (resent ones included) and the
    /// reads their answers served, since start.
    pub fn read_index_counts(&self) -> (u64, u64) {
        (
            self.follower_reads.questions,
            self.follower_reads.reads_answered,
        )
    }

    /// Follower: holds a read until the leader's read index comes back.
    pub(super) fn follower_read(&mut self, now_ms: u64, token: u64) -> Result<(), NotLeader> {
        if self.follower_reads.len() >= READS_WAITING_MAX {
            return Err(NotLeader::NotReady);
        }
        // Asked at the end of the turn (`flush`), with every read of it.
        self.follower_reads.next.push((token, now_ms));
        Ok(())
    }

    /// Follower, end of a turn or a tick: asks the leader for its read index
    /// for the reads that arrived since the last question (up to
    /// [`READ_QUESTIONS_IN_FLIGHT_MAX`] in flight), asks the newest question
    /// again of a new leader or after a heartbeat interval unanswered, and
    /// refuses reads that waited too long.
    pub(super) fn ask_read_index(&mut self, now_ms: u64) {
        if self.role == Role::Leader {
            // Became the leader with reads held as a follower: refused,
            // to be asked again (rare: only across this server's election).
            for (token, _) in self.follower_reads.take_all() {
                self.actions.push(Action::ReadFailed { token });
            }
            return;
        }
        self.expire_follower_reads(now_ms);
        let leader = self
            .leader
            .and_then(|id| self.addrs.get(&id).map(|addr| (id, *addr)));
        let resend_ms = self.timing.heartbeat_ms;
        let reads = &mut self.follower_reads;
        if !reads.next.is_empty() && reads.asked.len() < READ_QUESTIONS_IN_FLIGHT_MAX {
            reads.next_id += 1;
            reads.asked.push_back(Asked {
                id: reads.next_id,
                to: None,
                sent_ms: now_ms,
                reads: std::mem::take(&mut reads.next),
            });
        }
        let (Some(newest), Some((leader, addr))) = (reads.asked.back_mut(), leader) else {
            return;
        };
        let to = Some((leader, self.term));
        if newest.to == to && now_ms < newest.sent_ms + resend_ms {
            return;
        }
        // Asked anew of a new leader, or again after a loss: any answer
        // comes from a round that started after every one of these reads
        // arrived, so any answer serves them (and the older questions').
        newest.to = to;
        newest.sent_ms = now_ms;
        let id = newest.id;
        reads.questions += 1;
        self.send(leader, addr, Message::ReadIndex { id });
    }

    fn expire_follower_reads(&mut self, now_ms: u64) {
        let expired = |(_, arrived): &(u64, u64)| now_ms >= arrived + FOLLOWER_READ_WAIT_MS;
        let reads = &mut self.follower_reads;
        let mut refused = Vec::new();
        // Reads are held in arrival order: the oldest go first.
        for asked in reads.asked.iter_mut() {
            let stale = asked.reads.iter().take_while(|r| expired(r)).count();
            refused.extend(asked.reads.drain(..stale));
            if !asked.reads.is_empty() {
                break;
            }
        }
        reads.asked.retain(|a| !a.reads.is_empty());
        if reads.asked.is_empty() {
            let stale = reads.next.iter().take_while(|r| expired(r)).count();
            refused.extend(reads.next.drain(..stale));
        }
        for (token, _) in refused {
            self.actions.push(Action::ReadUnanswered { token });
        }
    }

    /// Follower: the leader's answer to question `id`. Taken only from the
    /// leader it was last asked of, in the term asked, and only while this
    /// server is in that term: it serves that question's reads and the
    /// older questions'.
    pub(super) fn on_read_index_reply(
        &mut self,
        now_ms: u64,
        from: ServerId,
        term: Term,
        id: u64,
        index: LogIndex,
    ) {
        if term != self.term {
            return;
        }
        let reads = &mut self.follower_reads;
        let Some(at) = reads
            .asked
            .iter()
            .position(|a| a.id == id && a.to == Some((from, term)))
        else {
            return;
        };
        let served: Vec<Asked> = reads.asked.drain(..=at).collect();
        let reads_served = served.into_iter().flat_map(|a| a.reads);
        if index == LogIndex(0) {
            // Refused: this server is not a member of the leader's group.
            for (token, _) in reads_served {
                self.actions.push(Action::ReadFailed { token });
            }
            return;
        }
        // The answer is the commit index of this term's leader, whose log
        // ours matches through `verified`: what both bound is committed.
        // Taken at once, a read need not wait for the leader's next
        // heartbeat to carry the commit of a write made just before it
        // (found by the namespace test: reads after writes through another
        // server waited one heartbeat, 100 ms).
        self.follower_commit(index);
        let index = if bug!(self, follower_read_before_apply) {
            LogIndex(0)
        } else {
            index
        };
        let mut answered = 0;
        for (token, _) in reads_served {
            answered += 1;
            self.actions.push(Action::ReadReady { token, index });
        }
        self.follower_reads.reads_answered += answered;
        // Reads that arrived meanwhile go at once.
        self.ask_read_index(now_ms);
    }

    /// Leader: a follower asks for the read index. Answered at once under
    /// the read lease (no other leader can exist yet, and this one's commit
    /// index holds every write committed so far), else after the next round
    /// a majority confirms: like a read of this leader's own.
    pub(super) fn on_read_index(&mut self, now_ms: u64, from: ServerId, term: Term, id: u64) {
        if self.role != Role::Leader || term != self.term || !self.is_serving() {
            // The follower asks again, or its reads time out.
            return;
        }
        if !self.progress.contains_key(&from) {
            // Not a member (not added yet, or removed): it gets no entries,
            // so it could never apply through an index. Refused at once
            // (index 0: a serving leader's commit index is never 0), so
            // that it lets this leader answer its reads instead.
            if let Some(addr) = self.addrs.get(&from).copied() {
                let index = LogIndex(0);
                self.send(from, addr, Message::ReadIndexReply { id, index });
            }
            return;
        }
        if self.lease_answers_followers && self.lease_until_ms() > now_ms {
            if let Some(addr) = self.addrs.get(&from).copied() {
                let index = self.commit;
                self.send(from, addr, Message::ReadIndexReply { id, index });
            }
            return;
        }
        if self.reads.len() >= READS_WAITING_MAX {
            return;
        }
        self.reads
            .push_back((self.seq + 1, self.commit, ReadFor::Follower { from, id }));
        self.check_reads(now_ms);
    }
}
