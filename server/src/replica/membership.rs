//! Membership in the log: peers learned from the LB, learners added and
//! promoted, servers removed, one configuration change at a time.

use super::*;

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

    /// One change at a time (Ongaro §4.1): add a pending server as a learner,
    /// or promote a learner that has caught up to the commit index.
    pub(super) fn maybe_change_membership(&mut self, now_ms: u64) {
        if self.role != Role::Leader || !self.config_committed() {
            return;
        }
        let current = self.membership().clone();
        let caught_up = current.learners.iter().copied().find(|id| {
            self.progress
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
        if let Some(id) = self.pending_adds.iter().copied().next() {
            self.pending_adds.remove(&id);
            let mut next = current;
            next.learners.insert(id);
            self.append_config(now_ms, next);
        }
    }

    pub(super) fn config_committed(&self) -> bool {
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
        self.progress.retain(|id, _| membership.contains(*id));
        self.broadcast(now_ms);
    }
}
