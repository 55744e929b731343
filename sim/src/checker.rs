//! The invariants, checked as the run goes (after every step, and at the
//! moments the drivers append, commit and apply):
//!
//! - election safety: at most one server ever acts as leader in a term;
//! - log matching: entries with the same index and term hold the same
//!   payload and follow the same previous term (so, by induction, the same
//!   prefix);
//! - leader completeness: an entry committed in term T is in the log of
//!   every leader of a later term, when it takes office and while it leads;
//! - committed entries never change: one global map index → (term,
//!   payload), filled by every server's commits;
//! - monotonic: a server's term never goes down (across restarts: the
//!   durable term is the floor); commit and applied never go down within an
//!   incarnation;
//! - state machine safety: replicas that applied the same index hold the
//!   same state (a hash of every item, the membership and the flush);
//! - acknowledged writes are committed, as acknowledged;
//! - lease safety: while a leader holds a read lease (by its own clock), no
//!   leader of a later term serves (has committed its no-op), so reads
//!   under the lease cannot miss a newer leader's writes.

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};

use bytes::Bytes;
use data::frame::{LogIndex, Role, Term};

use crate::node::Server;

pub(crate) type Broken = (&'static str, String);

fn payload_hash(payload: &Bytes) -> u64 {
    let mut h = DefaultHasher::new();
    payload.hash(&mut h);
    h.finish()
}

pub(crate) struct Checker {
    /// Term → the one server that acted as leader in it.
    leaders: BTreeMap<u64, u64>,
    /// (index, term) → (payload hash, previous entry's term).
    entries: HashMap<(u64, u64), (u64, Option<u64>)>,
    /// Index → (entry term, payload, term in which it was first seen committed).
    committed: BTreeMap<u64, (Term, Bytes, Term)>,
    /// Per server: the highest term seen (the durable floor).
    max_term: Vec<Term>,
    /// Per server: (term, role) at the last check, to see taking office.
    last_role: Vec<(Term, Role)>,
    /// Applied index → state hash, from the first replica to apply it.
    states: HashMap<u64, u64>,
    pub check_unknown: bool,
}

impl Checker {
    pub fn new(servers: usize) -> Checker {
        Checker {
            leaders: BTreeMap::new(),
            entries: HashMap::new(),
            committed: BTreeMap::new(),
            max_term: vec![Term(0); servers],
            last_role: vec![(Term(0), Role::Follower); servers],
            states: HashMap::new(),
            check_unknown: false,
        }
    }

    pub fn committed_len(&self) -> u64 {
        self.committed.len() as u64
    }

    pub fn leaders_len(&self) -> usize {
        self.leaders.len()
    }

    /// After every step: terms, leaders, taking office, leases.
    pub fn after_step(&mut self, servers: &[Server], now: u64) -> Result<(), Broken> {
        self.leases(servers, now)?;
        for (i, s) in servers.iter().enumerate() {
            let id = s.id;
            if s.disk.term < self.max_term[i] {
                return Err((
                    "term never goes down",
                    format!(
                        "n{id} has t{} on disk after t{}",
                        s.disk.term, self.max_term[i]
                    ),
                ));
            }
            let Some(core) = s.core() else {
                continue;
            };
            let term = core.term();
            if term < self.max_term[i] {
                return Err((
                    "term never goes down",
                    format!("n{id} is in t{term} after t{}", self.max_term[i]),
                ));
            }
            self.max_term[i] = self.max_term[i].max(term).max(s.disk.term);
            let role = core.role();
            if role == Role::Leader {
                let leader = *self.leaders.entry(term.0).or_insert(id);
                if leader != id {
                    return Err((
                        "one leader per term",
                        format!("n{leader} and n{id} both led t{term}"),
                    ));
                }
                if self.last_role[i] != (term, Role::Leader) {
                    // Taking office: every entry committed in an earlier
                    // term must be in its log.
                    self.complete(s, term)?;
                }
            }
            self.last_role[i] = (term, role);
        }
        Ok(())
    }

    /// Lease safety, at global time `now`.
    fn leases(&self, servers: &[Server], now: u64) -> Result<(), Broken> {
        for holder in servers {
            let Some(core) = holder.core().filter(|_| holder.up) else {
                continue;
            };
            let until = core.lease_until_ms();
            if until <= holder.mono_now(now) {
                continue;
            }
            let newer = servers.iter().find(|s| {
                s.up && s
                    .core()
                    .is_some_and(|c| c.term() > core.term() && c.is_serving())
            });
            if let Some(newer) = newer {
                return Err((
                    "lease safety",
                    format!(
                        "n{} holds a lease of t{} until {until} (its clock at {}) while n{} serves t{}",
                        holder.id,
                        core.term(),
                        holder.mono_now(now),
                        newer.id,
                        newer.core().map_or(0, |c| c.term().0),
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Leader completeness for server `s` leading in `term`.
    fn complete(&self, s: &Server, term: Term) -> Result<(), Broken> {
        let Some(core) = s.core() else {
            return Ok(());
        };
        let (snapshot_index, _) = core.snapshot_position();
        for (index, (entry_term, payload, commit_term)) in
            self.committed.range(snapshot_index.0 + 1..)
        {
            if *commit_term >= term {
                continue;
            }
            let i = LogIndex(*index);
            let same = core.term_at(i) == Some(*entry_term) && core.entry(i) == Some(payload);
            if !same {
                return Err((
                    "leader completeness",
                    format!(
                        "n{} leads t{term} without entry {index} (t{entry_term}) committed in t{commit_term}; it has {:?} there, last index {}",
                        s.id,
                        core.term_at(i),
                        core.last_index()
                    ),
                ));
            }
        }
        Ok(())
    }

    /// A server's driver appended an entry to its log.
    pub fn appended(
        &mut self,
        id: u64,
        index: LogIndex,
        term: Term,
        prev_term: Option<Term>,
        payload: &Bytes,
    ) -> Result<(), Broken> {
        let mine = (payload_hash(payload), prev_term.map(|t| t.0));
        let known = *self.entries.entry((index.0, term.0)).or_insert(mine);
        if known.0 != mine.0 {
            return Err((
                "log matching",
                format!(
                    "n{id} holds a different payload at {index} in t{term} than another server"
                ),
            ));
        }
        if let (Some(a), Some(b)) = (known.1, mine.1) {
            if a != b {
                return Err((
                    "log matching",
                    format!("n{id} has t{b} before {index}/t{term}, another server t{a}"),
                ));
            }
        }
        Ok(())
    }

    /// A server's core committed entry `index`.
    pub fn committed(
        &mut self,
        id: u64,
        index: LogIndex,
        term: Term,
        payload: &Bytes,
        commit_term: Term,
        servers: &[Server],
    ) -> Result<(), Broken> {
        match self.committed.get(&index.0) {
            Some((t, p, _)) => {
                if *t != term || p != payload {
                    return Err((
                        "committed entries never change",
                        format!(
                            "n{id} committed {index} as t{term}; it was committed as t{t}{}",
                            if p == payload {
                                ""
                            } else {
                                " with another payload"
                            }
                        ),
                    ));
                }
            }
            None => {
                self.committed
                    .insert(index.0, (term, payload.clone(), commit_term));
                // Every leader of a later term must already hold it.
                for s in servers {
                    let Some(core) = s.core() else {
                        continue;
                    };
                    if core.role() != Role::Leader || core.term() <= commit_term {
                        continue;
                    }
                    if core.snapshot_position().0 >= index {
                        continue;
                    }
                    if core.term_at(index) != Some(term) || core.entry(index) != Some(payload) {
                        return Err((
                            "leader completeness",
                            format!(
                                "{index} (t{term}) committed in t{commit_term} by n{id}, but n{} leads t{} without it",
                                s.id,
                                core.term()
                            ),
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    /// A server applied `index` and its state hashes to `hash`.
    pub fn applied(&mut self, id: u64, index: LogIndex, hash: u64) -> Result<(), Broken> {
        let known = *self.states.entry(index.0).or_insert(hash);
        if known != hash {
            return Err((
                "same state at the same applied index",
                format!("n{id}'s state after applying {index} differs from another replica's"),
            ));
        }
        Ok(())
    }

    /// A write was acknowledged as the entry at `index` of `term`.
    pub fn acked(&self, index: LogIndex, term: Term, payload: &Bytes) -> Result<(), Broken> {
        match self.committed.get(&index.0) {
            Some((t, p, _)) if *t == term && p == payload => Ok(()),
            _ => Err((
                "acknowledged writes are committed",
                format!(
                    "write acknowledged at {index} in t{term} is not the committed entry there"
                ),
            )),
        }
    }
}
