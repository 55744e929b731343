//! Terms, promises and taking office (DESIGN §3): the LB runs the election,
//! the core promises, persists its term first, and takes office or steps
//! down.

use super::*;

impl Replica {
    pub(super) fn on_prepare(&mut self, now_ms: u64, from: ServerId, term: Term) {
        if from != ServerId::LB {
            return;
        }
        let Some(lb) = self.lb_addr() else { return };
        if term <= self.term {
            if self.promise_held != Some(term) {
                self.send(ServerId::LB, lb, Message::Reject);
            }
            return;
        }
        // Durably record T before promising: from now on every message of a
        // lower term is refused, which fences the old leader.
        self.adopt_term(term, None);
        // The leader we last answered may hold a read lease on that answer
        // until `promise_not_before_ms`: no new leader may be named on our
        // promise before then (a leader that steps down here gives up its
        // own lease first).
        if now_ms < self.promise_not_before_ms && !bug!(self, promise_during_lease) {
            self.promise_held = Some(term);
            return;
        }
        self.promise(lb);
    }

    /// Sends a promise held back by a lease once the lease is over.
    pub(super) fn release_promise(&mut self, now_ms: u64) {
        if now_ms < self.promise_not_before_ms {
            return;
        }
        let Some(term) = self.promise_held.take() else {
            return;
        };
        if term == self.term && self.leader.is_none() {
            if let Some(lb) = self.lb_addr() {
                self.promise(lb);
            }
        }
    }

    pub(super) fn promise(&mut self, lb: SocketAddr) {
        let voters = self.membership().voters.iter().copied().collect();
        let promise = Message::Promise {
            last_term: self.log.last_term(),
            last_index: self.log.last_index(),
            voters,
        };
        self.send(ServerId::LB, lb, promise);
    }

    pub(super) fn on_new_leader(&mut self, now_ms: u64, term: Term, leader: ServerId) {
        if term < self.term {
            return;
        }
        if leader == self.id && term == self.start_term {
            // Found by the simulator (sim/): a leader that restarted could
            // take office again in its old term and write new entries at
            // indexes whose first versions (same index, same term) its
            // followers already hold and may have committed. Refusing
            // makes the LB elect in a new term (DESIGN §3).
            return;
        }
        if term > self.term {
            self.adopt_term(term, Some(leader));
        }
        self.leader = Some(leader);
        if leader == self.id && self.role != Role::Leader {
            self.take_office(now_ms);
        } else if leader != self.id {
            self.role = self.idle_role();
        }
    }

    /// Raft §5.4.2: a new leader commits an entry of its own term (a no-op)
    /// before it serves, so that entries of older terms commit with it.
    pub(super) fn take_office(&mut self, now_ms: u64) {
        tracing::info!(term = self.term.0, "taking office");
        self.role = Role::Leader;
        self.leader = Some(self.id);
        self.reads.clear();
        self.progress.clear();
        self.round_starts.clear();
        self.lease_until_ms = 0;
        let next = LogIndex(self.log.last_index().0 + 1);
        let members: Vec<ServerId> = {
            let m = self.membership();
            m.voters.iter().chain(m.learners.iter()).copied().collect()
        };
        for peer in members {
            if peer != self.id {
                self.progress.insert(peer, self.new_progress(next, now_ms));
            }
        }
        if !bug!(self, skip_noop) {
            let noop = encode_op(now_ms, Op::Noop);
            let noop_index = self.append_local(noop);
            self.noop_index = Some(noop_index);
        }
        // A brand-new group: the first leader's configuration is itself.
        if self.membership().voters.is_empty() {
            self.append_config(
                now_ms,
                Membership {
                    voters: [self.id].into(),
                    learners: BTreeSet::new(),
                },
            );
        }
        self.next_round(now_ms);
        self.broadcast(now_ms);
    }

    pub(super) fn step_down(&mut self, leader: Option<ServerId>) {
        if self.role == Role::Leader {
            // Entries after the commit point may still commit under the next
            // leader, or not: their clients get "outcome unknown".
            self.actions
                .push(Action::ProposalsLost { after: self.commit });
            for (_, _, read) in self.reads.drain(..) {
                // A follower's question goes unanswered: it asks the next
                // leader.
                if let ReadFor::Local(token) = read {
                    self.actions.push(Action::ReadFailed { token });
                }
            }
        }
        self.progress.clear();
        self.noop_index = None;
        self.target_members = None;
        self.leaving.clear();
        self.leader = leader;
        self.role = self.idle_role();
    }

    pub(super) fn adopt_term(&mut self, term: Term, leader: Option<ServerId>) {
        assert!(term > self.term, "terms only go up");
        self.step_down(leader);
        self.term = term;
        self.verified = LogIndex(0);
        self.last_leader_contact_ms = None;
        // Heartbeat sequence numbers count within a term. One carried over
        // from the old leader would let an Ack answer a round of the new
        // leader that it never saw, and confirm a read too early.
        self.seq = 0;
        self.seq_answered = 0;
        self.ack_owed = None;
        self.promise_held = None;
        self.candidacy = None;
        self.actions.push(Action::PersistTerm(term));
    }

    /// Follower when this server votes in its latest configuration; a
    /// learner otherwise (added but not yet a voter, or not added yet), so
    /// that the LB and `store up` can tell when it has joined.
    pub(super) fn idle_role(&self) -> Role {
        if self.membership().voters.contains(&self.id) {
            Role::Follower
        } else {
            Role::Learner
        }
    }
}
