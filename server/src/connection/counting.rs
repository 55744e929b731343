//! The `stats` counters a request moves: counted where the request was
//! received, from its outcome here or from the leader's reply to it.

use super::*;

/// What a request's reply says, for the counters: from its outcome on this
/// server, or from the leader's reply to a forwarded request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Counted {
    Stored,
    Exists,
    NotFound,
    Deleted,
    Touched,
    Number,
    /// A retrieval's hits.
    Hits(u64),
    OutOfMemory,
    Other,
}

impl From<&Outcome> for Counted {
    fn from(outcome: &Outcome) -> Counted {
        match outcome {
            Outcome::Stored { .. } => Counted::Stored,
            Outcome::Exists => Counted::Exists,
            Outcome::NotFound => Counted::NotFound,
            Outcome::Deleted => Counted::Deleted,
            Outcome::Touched => Counted::Touched,
            Outcome::Number { .. } => Counted::Number,
            Outcome::Hits(hits) => Counted::Hits(hits.len() as u64),
            Outcome::Leased(leased) => Counted::Hits(u64::from(leased.is_some())),
            Outcome::NotStored | Outcome::NonNumeric | Outcome::Ok | Outcome::Reclaimed(_) => {
                Counted::Other
            }
        }
    }
}

impl Counted {
    /// `None` for an error line other than out-of-memory: the request got
    /// no outcome (no leader, leadership lost, a non-numeric counter), and
    /// an outcome that was not reached is not counted, as on the leader.
    fn from_reply(reply: &[u8], expect: Expect) -> Option<Counted> {
        if reply == errors::OUT_OF_MEMORY.as_bytes() {
            return Some(Counted::OutOfMemory);
        }
        let (status, _) = scan_response(reply, expect).ok()??;
        Some(match status {
            _ if status.is_error() => return None,
            Status::Stored => Counted::Stored,
            Status::Exists => Counted::Exists,
            Status::NotFound => Counted::NotFound,
            Status::Deleted => Counted::Deleted,
            Status::Touched => Counted::Touched,
            Status::Number(_) => Counted::Number,
            Status::Values(hits) => Counted::Hits(hits as u64),
            _ => Counted::Other,
        })
    }
}

impl Counted {
    /// What a meta response says of a forwarded request of `kind`, from
    /// its two-letter `code` (`reply` for an error line); `None` where no
    /// outcome was reached.
    pub(super) fn from_meta_code(kind: WriteKind, code: &[u8], reply: &[u8]) -> Option<Counted> {
        let read = matches!(kind, WriteKind::Get | WriteKind::Touch);
        Some(match code {
            b"HD" | b"VA" if read => Counted::Hits(1),
            b"HD" | b"VA" => match kind {
                WriteKind::Store(_) => Counted::Stored,
                WriteKind::Delete => Counted::Deleted,
                WriteKind::Incr | WriteKind::Decr => Counted::Number,
                _ => Counted::Other,
            },
            b"EN" => Counted::Hits(0),
            b"NF" => Counted::NotFound,
            b"EX" => Counted::Exists,
            b"NS" => Counted::Other,
            _ if reply == errors::OUT_OF_MEMORY.as_bytes() => Counted::OutOfMemory,
            _ => return None,
        })
    }

    /// What a binary response's `status` says of a forwarded request of
    /// `kind`; `None` where no outcome was reached.
    pub(super) fn from_binary_status(kind: WriteKind, status: u16) -> Option<Counted> {
        use data::protocol::binary::Status as S;
        let read = matches!(kind, WriteKind::Get | WriteKind::GetAndTouch(_));
        Some(match status {
            s if s == S::NoError as u16 => match kind {
                _ if read => Counted::Hits(1),
                WriteKind::Store(_) => Counted::Stored,
                WriteKind::Delete => Counted::Deleted,
                WriteKind::Incr | WriteKind::Decr => Counted::Number,
                WriteKind::Touch => Counted::Touched,
                _ => Counted::Other,
            },
            s if s == S::KeyNotFound as u16 && read => Counted::Hits(0),
            s if s == S::KeyNotFound as u16 => Counted::NotFound,
            s if s == S::KeyExists as u16 => Counted::Exists,
            s if s == S::OutOfMemory as u16 => Counted::OutOfMemory,
            s if s == S::NotStored as u16 => Counted::Other,
            _ => return None,
        })
    }
}

impl Connection {
    /// Whether this server counts the outcome of a request it serves:
    /// always, unless a follower forwarded it and reads the reply (then the
    /// follower counts it); a noreply request's outcome the follower never
    /// sees, so that is counted here.
    pub(super) fn counts_here(&self, noreply: bool) -> bool {
        !self.forwarded_link || noreply
    }

    pub(super) fn count(&self, kind: WriteKind, counted: Counted) {
        let c = &self.shared.stats.counters;
        let counter = match (kind, counted) {
            (WriteKind::Store(_), Counted::Stored)
            | (WriteKind::Incr | WriteKind::Decr, Counted::Number) => {
                Stats::bump(&c.total_items);
                match kind {
                    WriteKind::Store(StoreMode::Cas) => &c.cas_hits,
                    WriteKind::Incr => &c.incr_hits,
                    WriteKind::Decr => &c.decr_hits,
                    _ => return,
                }
            }
            (WriteKind::Store(StoreMode::Cas), Counted::Exists) => &c.cas_badval,
            (WriteKind::Store(StoreMode::Cas), Counted::NotFound) => &c.cas_misses,
            (WriteKind::Delete, Counted::Deleted) => &c.delete_hits,
            (WriteKind::Delete, _) => &c.delete_misses,
            (WriteKind::Incr, Counted::NotFound) => &c.incr_misses,
            (WriteKind::Decr, Counted::NotFound) => &c.decr_misses,
            // A binary touch is a gat of one key underneath.
            (WriteKind::Touch, Counted::Touched | Counted::Hits(1)) => &c.touch_hits,
            (WriteKind::Touch, _) => &c.touch_misses,
            (WriteKind::GetAndTouch(keys), Counted::Hits(hits)) => {
                // gat counts as memcached does: in the touch counters, per key.
                Stats::add(&c.cmd_touch, keys);
                Stats::add(&c.touch_hits, hits);
                Stats::add(&c.touch_misses, keys.saturating_sub(hits));
                return;
            }
            (WriteKind::Get, Counted::Hits(hits)) => {
                Stats::bump(&c.cmd_get);
                Stats::add(&c.get_hits, hits);
                Stats::add(&c.get_misses, 1 - hits.min(1));
                return;
            }
            (_, Counted::OutOfMemory) => &c.store_no_memory,
            _ => return,
        };
        Stats::bump(counter);
    }

    /// Counts a request this follower forwarded, from the leader's `reply`
    /// to it (the leader left the counting to this server).
    pub(super) fn count_forwarded(&self, kind: WriteKind, reply: &[u8]) {
        let expect = match kind {
            WriteKind::GetAndTouch(_) => Expect::Retrieval,
            _ => Expect::Line,
        };
        if let Some(counted) = Counted::from_reply(reply, expect) {
            self.count(kind, counted);
        }
    }

    /// Counts a forwarded get of `keys` keys from the leader's `reply`.
    pub(super) fn count_forwarded_get(&self, keys: usize, reply: &[u8]) {
        let Some(Counted::Hits(hits)) = Counted::from_reply(reply, Expect::Retrieval) else {
            return; // An error line: nothing was looked up.
        };
        let c = &self.shared.stats.counters;
        let keys = keys as u64;
        Stats::add(&c.cmd_get, keys);
        Stats::add(&c.get_hits, hits);
        Stats::add(&c.get_misses, keys.saturating_sub(hits));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A follower counts a forwarded request from the leader's reply; an
    /// error line means no outcome was reached and counts nothing (a
    /// forwarded delete that found no leader is not a delete miss).
    #[test]
    fn forwarded_replies_count_only_reached_outcomes() {
        let line = |reply: &str| Counted::from_reply(reply.as_bytes(), Expect::Line);
        assert_eq!(line("DELETED\r\n"), Some(Counted::Deleted));
        assert_eq!(line("NOT_FOUND\r\n"), Some(Counted::NotFound));
        assert_eq!(line("42\r\n"), Some(Counted::Number));
        assert_eq!(line(errors::OUT_OF_MEMORY), Some(Counted::OutOfMemory));
        assert_eq!(line(errors::NO_LEADER), None);
        assert_eq!(line(errors::OUTCOME_UNKNOWN), None);
        assert_eq!(line(errors::NON_NUMERIC), None);
        let values = b"VALUE a 0 1\r\nx\r\nVALUE b 0 1\r\ny\r\nEND\r\n";
        assert_eq!(
            Counted::from_reply(values, Expect::Retrieval),
            Some(Counted::Hits(2))
        );
    }
}
