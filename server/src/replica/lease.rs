//! Linearizable reads on the leader (DESIGN §4a): heartbeat rounds, the
//! read lease a majority's answers extend, and the reads waiting for them.

use super::*;

impl Replica {
    pub(super) fn check_reads(&mut self, now_ms: u64) {
        while let Some(&(seq, index, read)) = self.reads.front() {
            if !self.round_confirmed(seq) || !self.is_serving() {
                break;
            }
            self.reads.pop_front();
            match read {
                ReadFor::Local(token) => self.actions.push(Action::ReadReady { token, index }),
                ReadFor::Follower { from, id } => {
                    if let Some(addr) = self.addrs.get(&from).copied() {
                        self.send(from, addr, Message::ReadIndexReply { id, index });
                    }
                }
            }
        }
        // Reads that arrived while the round just confirmed was in flight
        // go out in the next one at once.
        if self.read_round_due() {
            self.start_read_round(now_ms);
        }
    }

    /// Leader: starts heartbeat round `seq + 1` now; the next heartbeat is
    /// due a heartbeat interval later.
    pub(super) fn next_round(&mut self, now_ms: u64) {
        self.last_heartbeat_ms = now_ms;
        self.seq += 1;
        if self.round_starts.len() == ROUND_STARTS_MAX {
            self.round_starts.pop_front();
        }
        self.round_starts.push_back((self.seq, now_ms));
    }

    /// Leader: extends the lease from the start of the latest round a
    /// majority of voters answered, and forgets the rounds before it. The
    /// lease lasts as long as the shortest hold in that majority (this
    /// leader's own setting at most), less the clock margin.
    pub(super) fn extend_lease(&mut self) {
        if self.timing.lease_ms == 0 {
            return;
        }
        let membership = self.membership();
        // Each voter's (latest round answered, hold declared); this leader
        // answers every round and holds its own lease.
        let answers: Vec<(u64, u64)> = membership
            .voters
            .iter()
            .map(|id| {
                if *id == self.id {
                    (u64::MAX, self.timing.lease_ms)
                } else {
                    self.progress
                        .get(id)
                        .map_or((0, 0), |p| (p.seq_acked, p.hold_ms))
                }
            })
            .collect();
        let quorum = membership.quorum();
        if quorum == 0 || answers.len() < quorum {
            return;
        }
        let mut answered: Vec<u64> = answers.iter().map(|(seq, _)| *seq).collect();
        answered.sort_unstable_by(|a, b| b.cmp(a));
        let confirmed = answered[quorum - 1];
        while self
            .round_starts
            .get(1)
            .is_some_and(|(seq, _)| *seq <= confirmed)
        {
            self.round_starts.pop_front();
        }
        let Some(&(seq, started_ms)) = self.round_starts.front() else {
            return;
        };
        if seq > confirmed {
            return;
        }
        // The longest hold a majority of the round's answerers all keep.
        let mut holds: Vec<u64> = answers
            .iter()
            .filter(|(answered, _)| *answered >= seq)
            .map(|(_, hold)| *hold)
            .collect();
        holds.sort_unstable_by(|a, b| b.cmp(a));
        let hold_ms = if bug!(self, lease_ignores_holds) {
            self.timing.lease_ms
        } else {
            holds[quorum - 1].min(self.timing.lease_ms)
        };
        let lease_ms = hold_ms * (100 - LEASE_MARGIN_PERCENT) / 100;
        self.lease_until_ms = self.lease_until_ms.max(started_ms + lease_ms);
    }

    /// A majority of voters (this leader included) answered round `seq`.
    pub(super) fn round_confirmed(&self, seq: u64) -> bool {
        let membership = self.membership();
        let confirmed = membership
            .voters
            .iter()
            .filter(|id| {
                **id == self.id || self.progress.get(id).is_some_and(|p| p.seq_acked >= seq)
            })
            .count();
        confirmed >= membership.quorum()
    }

    pub(super) fn majority_heard_within(&self, now_ms: u64, window_ms: u64) -> bool {
        let membership = self.membership();
        let heard = membership
            .voters
            .iter()
            .filter(|id| {
                **id == self.id
                    || self.progress.get(id).is_some_and(|p| {
                        p.last_ack_ms
                            .is_some_and(|t| now_ms.saturating_sub(t) <= window_ms)
                    })
            })
            .count();
        heard >= membership.quorum()
    }
}
