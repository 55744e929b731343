//! The log as the core sees it (entries since the last snapshot, in
//! memory), and what the leader knows of the bytes in flight.

use super::*;

/// The log as the core sees it: entries since the last snapshot, kept in
/// memory so the leader can send them and check terms.
#[derive(Debug)]
pub(super) struct LogView {
    /// Index and term of the last entry covered by the snapshot (0 if none).
    pub(super) snapshot_index: LogIndex,
    pub(super) snapshot_term: Term,
    pub(super) entries: VecDeque<(Term, Bytes)>,
    /// Payload bytes from the first entry ever through each entry, in step
    /// with `entries`; `base_bytes` is the count through the snapshot. Lets
    /// a leader know the bytes in flight to a follower without summing its
    /// window on every send.
    pub(super) end_bytes: VecDeque<u64>,
    pub(super) base_bytes: u64,
}

impl LogView {
    pub(super) fn new(snapshot_index: LogIndex, snapshot_term: Term) -> LogView {
        LogView {
            snapshot_index,
            snapshot_term,
            entries: VecDeque::new(),
            end_bytes: VecDeque::new(),
            base_bytes: 0,
        }
    }

    pub(super) fn push(&mut self, term: Term, payload: Bytes) {
        let end = self.end_bytes.back().copied().unwrap_or(self.base_bytes) + payload.len() as u64;
        self.entries.push_back((term, payload));
        self.end_bytes.push_back(end);
    }

    /// Drops the entries through `index`, which becomes the snapshot's.
    pub(super) fn compact_through(&mut self, index: LogIndex, term: Term) {
        let drop = (index.0 - self.snapshot_index.0) as usize;
        if drop > 0 {
            self.base_bytes = self.end_bytes[drop - 1];
        }
        self.entries.drain(..drop);
        self.end_bytes.drain(..drop);
        self.snapshot_index = index;
        self.snapshot_term = term;
    }

    /// Payload bytes of the entries after `after` through `through` that the
    /// view holds.
    pub(super) fn bytes_between(&self, after: LogIndex, through: LogIndex) -> u64 {
        let end_at = |index: LogIndex| -> u64 {
            match index.0.checked_sub(self.snapshot_index.0 + 1) {
                None => self.base_bytes,
                Some(offset) => self
                    .end_bytes
                    .get(offset as usize)
                    .or(self.end_bytes.back())
                    .copied()
                    .unwrap_or(self.base_bytes),
            }
        };
        end_at(through).saturating_sub(end_at(after))
    }

    pub(super) fn last_index(&self) -> LogIndex {
        LogIndex(self.snapshot_index.0 + self.entries.len() as u64)
    }

    pub(super) fn last_term(&self) -> Term {
        self.entries.back().map_or(self.snapshot_term, |(t, _)| *t)
    }

    /// Term of the entry at `index`, if the view still holds it.
    pub(super) fn term_at(&self, index: LogIndex) -> Option<Term> {
        if index == self.snapshot_index {
            return Some(self.snapshot_term);
        }
        let offset = index.0.checked_sub(self.snapshot_index.0 + 1)?;
        self.entries.get(offset as usize).map(|(t, _)| *t)
    }

    pub(super) fn entry(&self, index: LogIndex) -> Option<&(Term, Bytes)> {
        let offset = index.0.checked_sub(self.snapshot_index.0 + 1)?;
        self.entries.get(offset as usize)
    }

    pub(super) fn truncate_after(&mut self, index: LogIndex) {
        let keep = index.0.saturating_sub(self.snapshot_index.0) as usize;
        self.entries.truncate(keep);
        self.end_bytes.truncate(keep);
    }
}
