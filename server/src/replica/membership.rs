//! Membership in the log: peers learned from the LB, learners added and
//! promoted, servers removed, one configuration change at a time.

use super::*;

/// Election timeouts a leader goes on sending to members taken out after
/// their removal is committed, so that they hear it despite losses.
const LEAVING_TIMEOUTS: u64 = 3;

impl Replica {
    pub(super) fn learn_peers(&mut self, peers: &[Peer]) {
        for peer in peers {
            self.addrs.insert(peer.id, peer.udp);
        }
    }

    pub(super) fn on_add_server(&mut self, now_ms: u64, term: Term, peer: Peer) {
        if self.role != Role::Leader || term < self.term {
            return;
        }
        self.addrs.insert(peer.id, peer.udp);
        if self.membership().contains(peer.id) || peer.id == self.id {
            return;
        }
        self.pending_adds.insert(peer.id);
        self.maybe_change_membership(now_ms);
    }

    pub(super) fn on_remove_server(&mut self, now_ms: u64, term: Term, id: ServerId) {
        if self.role != Role::Leader || term < self.term || !self.membership().contains(id) {
            return;
        }
        if !self.config_committed() {
            return; // The LB resends; one change at a time.
        }
        let mut next = self.membership().clone();
        next.voters.remove(&id);
        next.learners.remove(&id);
        if next.voters.is_empty() {
            return;
        }
        self.pending_adds.remove(&id);
        self.append_config(now_ms, next);
    }

    /// A group that elects by vote and changes its members at run time:
    /// `members` is every member it should have, with addresses (the LB
    /// group keeps them in its log). While leading, this server moves its
    /// configuration toward them one change at a time
    /// ([`Self::maybe_change_membership`]); every server learns the
    /// addresses, for the votes it may ask for.
    /// Only the leader keeps a target, and only once its caller knows it
    /// is current (the LB sets it after its read barrier): stepping down
    /// forgets it, so that a new leader does not act on a list an earlier
    /// leader replaced.
    pub fn set_target_members(&mut self, now_ms: u64, members: &[Peer]) {
        assert!(!members.is_empty(), "a group keeps at least one member");
        self.learn_members(members);
        if self.role != Role::Leader {
            return;
        }
        let target: BTreeSet<ServerId> = members.iter().map(|m| m.id).collect();
        if self.target_members.as_ref() != Some(&target) {
            self.target_members = Some(target);
            self.maybe_change_membership(now_ms);
        }
    }

    /// The addresses of a group's members (that elects by vote), for the
    /// votes this server may ask for and the entries it may send.
    pub fn learn_members(&mut self, members: &[Peer]) {
        let others: Vec<Peer> = members
            .iter()
            .filter(|m| m.id != self.id)
            .copied()
            .collect();
        self.learn_peers(&others);
    }

    /// One change at a time (Ongaro §4.1): promote a learner that has
    /// caught up to the commit index, else add a pending server (or a
    /// target member) as a learner, else remove a member the target no
    /// longer has, this leader last: it leads until that change commits,
    /// then steps down ([`Self::advance_commit`]).
    pub(super) fn maybe_change_membership(&mut self, now_ms: u64) {
        if self.role != Role::Leader || !self.config_committed() {
            return;
        }
        let current = self.membership().clone();
        let wanted = |id: &ServerId| self.target_members.as_ref().is_none_or(|t| t.contains(id));
        let caught_up = current.learners.iter().copied().find(|id| {
            wanted(id)
                && self
                    .progress
                    .get(id)
                    .is_some_and(|p| p.matched >= self.commit)
        });
        if let Some(id) = caught_up {
            let mut next = current;
            next.learners.remove(&id);
            next.voters.insert(id);
            self.append_config(now_ms, next);
            return;
        }
        let target_add = self.target_members.as_ref().and_then(|target| {
            target
                .iter()
                .copied()
                .find(|id| !current.contains(*id) && self.addrs.contains_key(id))
        });
        if let Some(id) = self.pending_adds.iter().copied().next().or(target_add) {
            self.pending_adds.remove(&id);
            let mut next = current;
            next.learners.insert(id);
            self.append_config(now_ms, next);
            return;
        }
        let unwanted = current
            .voters
            .iter()
            .chain(current.learners.iter())
            .copied()
            .filter(|id| !wanted(id))
            // This leader last.
            .min_by_key(|id| *id == self.id);
        if let Some(id) = unwanted {
            let mut next = current;
            next.voters.remove(&id);
            next.learners.remove(&id);
            if !next.voters.is_empty() {
                self.append_config(now_ms, next);
            }
        }
    }

    /// Whether the latest configuration in the log is committed, as far
    /// as this server knows.
    pub fn config_committed(&self) -> bool {
        self.configs
            .keys()
            .next_back()
            .is_none_or(|index| *index <= self.commit)
    }

    pub(super) fn append_config(&mut self, now_ms: u64, membership: Membership) {
        let op = Op::Config {
            voters: membership.voters.iter().map(|id| id.0).collect(),
            learners: membership.learners.iter().map(|id| id.0).collect(),
        };
        self.append_local(encode_op(now_ms, op));
        // New members get a progress entry; removed ones lose theirs.
        let next = LogIndex(self.log.last_index().0 + 1);
        for id in membership.voters.iter().chain(membership.learners.iter()) {
            if *id != self.id && !self.progress.contains_key(id) {
                let progress = self.new_progress(LogIndex(1).max(next), now_ms);
                self.progress.insert(*id, progress);
            }
        }
        if self.elects_by_vote {
            // Members taken out keep being sent the log until they have
            // heard their removal committed ([`Self::forget_leaving`]).
            for id in self.progress.keys() {
                if !membership.contains(*id) {
                    self.leaving.insert(*id, u64::MAX);
                }
            }
        } else {
            self.progress.retain(|id, _| membership.contains(*id));
        }
        self.broadcast(now_ms);
    }

    /// On the leader's tick: once the configuration that took members out
    /// is committed, they are sent heartbeats (carrying that commit index)
    /// for [`LEAVING_TIMEOUTS`] election timeouts more, then forgotten.
    pub(super) fn forget_leaving(&mut self, now_ms: u64) {
        if self.leaving.is_empty() || !self.config_committed() {
            return;
        }
        let grace_ms = LEAVING_TIMEOUTS * self.timing.election_timeout_ms;
        let membership = self.membership().clone();
        let progress = &mut self.progress;
        self.leaving.retain(|id, until| {
            if membership.contains(*id) {
                return false;
            }
            if *until == u64::MAX {
                *until = now_ms.saturating_add(grace_ms);
            }
            let keep = now_ms < *until;
            if !keep {
                progress.remove(id);
            }
            keep
        });
    }
}
