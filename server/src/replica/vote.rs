//! A group that elects its own leader by vote (DESIGN §3b), as the LB group
//! does: no outside elector, Raft's election (§5.2, §5.4.1) with the thesis's
//! guard against disruptive servers (§4.2.3). Off unless the host calls
//! [`Replica::elect_by_vote`]; a data group's election is the LB's (§3).
//!
//! - A voter that hears no leader for a randomized election timeout (between
//!   one and two timeouts, drawn afresh each time) first asks every other
//!   voter of its latest configuration whether it would vote for it (a
//!   pre-vote, thesis §9.6: its term unchanged, nobody's state changed);
//!   with a majority saying yes it stands: it takes the next term
//!   (persisted before anything is sent in it), votes for itself and asks
//!   again, for real. A server cut off from a majority thus never raises
//!   its term, and coming back it does not depose a healthy leader.
//! - A voter grants one vote per term, only to a candidate whose log is at
//!   least as up to date as its own (last term, then last index), and only
//!   when it is not vouching for a leader: not within its lease hold of an
//!   Ack (the leader's read lease rests on it), nor within an election
//!   timeout of hearing a leader, nor while it leads with a majority. Such
//!   a request is ignored whole, its term too, so a server cut off and
//!   back cannot depose a healthy leader by its inflated term.
//! - The vote is not a field on disk: a server never votes in the term it
//!   found on disk at start (it may have voted in it before a crash), and
//!   every other term it votes in was persisted (`PersistTerm`) before the
//!   vote was sent. So no server votes twice in a term.
//! - A candidate with votes from a majority of its configuration's voters
//!   takes office (its no-op, as a leader named by the LB does); one that
//!   hears a leader of its term or a higher term follows it.

use super::*;

/// A candidacy in the current term: the voters that granted their vote.
#[derive(Debug, Default)]
pub(super) struct Candidacy {
    /// Asking whether they would vote (for the next term), not voting.
    pre: bool,
    votes: BTreeSet<ServerId>,
}

impl Replica {
    /// Makes this group elect its own leader by vote among `members` (all
    /// of them, this server included, with their addresses; the
    /// configuration itself is the log's, or the snapshot's for a new
    /// group). Called once by the host, at start.
    pub fn elect_by_vote(&mut self, now_ms: u64, members: &[Peer]) {
        self.elects_by_vote = true;
        self.learn_members(members);
        self.reset_election_timer(now_ms);
    }

    /// Whether this group elects its own leader ([`Self::elect_by_vote`]).
    pub fn elects_by_vote(&self) -> bool {
        self.elects_by_vote
    }

    /// The next time this server stands if it hears no leader meanwhile:
    /// between one and two election timeouts from now, drawn each time, so
    /// that candidates rarely stand together and split the votes.
    pub(super) fn reset_election_timer(&mut self, now_ms: u64) {
        let timeout = self.timing.election_timeout_ms;
        let spread = self.next_jitter() % timeout.max(1);
        self.election_due_ms = now_ms + timeout + spread;
    }

    /// Tick, not leading: stands once the election timer has run out.
    pub(super) fn maybe_stand(&mut self, now_ms: u64) {
        if !self.elects_by_vote || now_ms < self.election_due_ms {
            return;
        }
        if !self.membership().voters.contains(&self.id) {
            // A learner (or a removed server) never stands.
            self.reset_election_timer(now_ms);
            return;
        }
        if now_ms < self.promise_not_before_ms {
            // A leader may still hold a lease on our last Ack: voting for
            // ourselves now would be a promise to a new term within it.
            return;
        }
        self.pre_vote(now_ms);
    }

    /// Asks whether the voters would vote for this server in the next term.
    fn pre_vote(&mut self, now_ms: u64) {
        self.canvass(now_ms, true);
    }

    /// A majority would vote for it: stands in the next term.
    fn stand(&mut self, now_ms: u64) {
        let term = Term(self.term.0 + 1);
        tracing::info!(term = term.0, "no leader heard; standing for election");
        self.adopt_term(term, None);
        self.voted = Some((term, self.id));
        self.canvass(now_ms, false);
    }

    /// A candidacy (`pre`: a pre-vote) with this server's own vote, asked
    /// of every other voter; a group of one goes on at once.
    fn canvass(&mut self, now_ms: u64, pre: bool) {
        self.candidacy = Some(Candidacy {
            pre,
            votes: [self.id].into(),
        });
        self.reset_election_timer(now_ms);
        self.ask_votes(pre);
        self.count_votes(now_ms);
    }

    fn ask_votes(&mut self, pre: bool) {
        let request = Message::RequestVote {
            last_term: self.log.last_term(),
            last_index: self.log.last_index(),
            pre,
        };
        let me = self.id;
        let voters: Vec<ServerId> = self.membership().voters.iter().copied().collect();
        for voter in voters.into_iter().filter(|v| *v != me) {
            if let Some(addr) = self.addrs.get(&voter).copied() {
                self.send(voter, addr, request.clone());
            }
        }
    }

    pub(super) fn on_request_vote(
        &mut self,
        now_ms: u64,
        from: ServerId,
        term: Term,
        (last_term, last_index): (Term, LogIndex),
        pre: bool,
    ) {
        if !self.elects_by_vote {
            return;
        }
        let Some(addr) = self.addrs.get(&from).copied() else {
            return;
        };
        // A vote may be in this server's term; a pre-vote asks about the
        // term after the candidate's, which then is a new one here too.
        if term < self.term {
            // The header carries our term: the candidate catches up.
            let granted = false;
            self.send(from, addr, Message::Vote { granted, pre });
            return;
        }
        if self.vouches_for_a_leader(now_ms) {
            return;
        }
        let ours = (self.log.last_term(), self.log.last_index());
        let up_to_date = (last_term, last_index) >= ours || bug!(self, vote_for_older_log);
        if pre {
            // Would vote: changes nothing here.
            let granted = up_to_date;
            self.send(from, addr, Message::Vote { granted, pre });
            return;
        }
        if term > self.term {
            self.adopt_term(term, None);
        }
        let free = match self.voted {
            Some((t, candidate)) if t == term => candidate == from,
            _ => true,
        };
        let granted = up_to_date && free && term != self.start_term;
        if granted {
            self.voted = Some((term, from));
            // A vote granted is a reason to wait for that candidate.
            self.reset_election_timer(now_ms);
        }
        self.send(from, addr, Message::Vote { granted, pre });
    }

    /// Whether this server vouches for a leader now, and so ignores any
    /// request to vote (Raft thesis §4.2.3, and our read leases).
    fn vouches_for_a_leader(&self, now_ms: u64) -> bool {
        if self.role == Role::Leader {
            return self.majority_heard_within(now_ms, self.timing.election_timeout_ms);
        }
        if bug!(self, promise_during_lease) {
            // A vote is a promise to a new term: granted within the lease.
            return false;
        }
        let heard_recently = self.leader.is_some()
            && self
                .last_leader_contact_ms
                .is_some_and(|t| now_ms < t + self.timing.election_timeout_ms);
        heard_recently || now_ms < self.promise_not_before_ms
    }

    pub(super) fn on_vote(
        &mut self,
        now_ms: u64,
        from: ServerId,
        term: Term,
        granted: bool,
        pre: bool,
    ) {
        if !self.elects_by_vote {
            return;
        }
        if term > self.term {
            // Refused by a voter further on: catch up with it.
            self.adopt_term(term, None);
            return;
        }
        // A vote is in the candidate's term; a pre-vote in the voter's,
        // which is no later than the candidate's.
        if !granted || (!pre && term < self.term) {
            return;
        }
        if let Some(candidacy) = self.candidacy.as_mut().filter(|c| c.pre == pre) {
            candidacy.votes.insert(from);
            self.count_votes(now_ms);
        }
    }

    /// Stands once a majority would vote, takes office once a majority
    /// voted.
    fn count_votes(&mut self, now_ms: u64) {
        let Some(candidacy) = &self.candidacy else {
            return;
        };
        let membership = self.membership();
        let votes = candidacy
            .votes
            .iter()
            .filter(|v| membership.voters.contains(v))
            .count();
        if votes < membership.quorum() {
            return;
        }
        if candidacy.pre {
            self.stand(now_ms);
        } else {
            self.candidacy = None;
            self.take_office(now_ms);
        }
    }
}
