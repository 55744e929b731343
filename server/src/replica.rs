//! The replication core of one server (DESIGN §3, §4): terms and promises,
//! the leader's log shipping with windows and retransmits, the follower's
//! consistency check, commit, membership in the log and ReadIndex.
//!
//! A state machine with no I/O, no clock and no randomness: the driver feeds
//! it events ([`Replica::tick`], [`Replica::receive`], [`Replica::propose`],
//! [`Replica::persisted`], [`Replica::read`]) with the current time and a
//! jitter seed, and carries out the [`Action`]s it returns, in order. The one
//! ordering rule lives here: an action that must be durable
//! ([`Action::PersistTerm`], [`Action::Append`]) comes before any send that
//! depends on it, and a follower acknowledges only what the driver reported
//! [`Replica::persisted`]. This is what lets the same code run in the server
//! and under a simulator.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::net::SocketAddr;

use bytes::{Bytes, BytesMut};
use data::command::{Command, Op};
use data::frame::{
    Entry, LogIndex, Message, Peer, Role, ServerId, Term, APPEND_ENTRIES_BYTES_MAX,
    ENTRY_OVERHEAD_BYTES, ENTRY_PAYLOAD_BYTES_MAX, FRAGMENT_CHUNK_BYTES_MAX,
};

/// Entries in flight to one follower at most (sent, not acknowledged).
pub const WINDOW_ENTRIES_MAX: u64 = 4096;
/// Entry bytes in flight to one follower at most: within what the
/// follower's socket buffer holds (cluster.rs), or a burst overflows it.
pub const WINDOW_BYTES_MAX: usize = 1024 * 1024;
/// First retransmit delay; doubles (with jitter) while nothing is acked.
pub const RETRANSMIT_MS_MIN: u64 = 20;
/// Largest retransmit delay.
pub const RETRANSMIT_MS_MAX: u64 = 640;
/// Reads waiting for a heartbeat round at most; more are refused.
pub const READS_WAITING_MAX: usize = 64 * 1024;
/// How often the leader repeats its request to stream a snapshot to a
/// follower that is still behind its compacted log.
pub const SNAPSHOT_ASK_MS: u64 = 1_000;
/// One entry's reassembly buffer at most (an entry is at most one log record).
pub const REASSEMBLY_BYTES_MAX: usize = data::record::RECORD_BYTES_MAX;

// ---- deliberate bugs (feature `deliberate-bugs`, for the simulator only) ----
//
// The simulator (sim/, DESIGN §7a) proves it can find each of these. Without
// the feature the struct does not exist and `bug!` is the constant `false`,
// so the production code path is unchanged.

/// Known-wrong behaviours the simulator must catch; all off by default.
#[cfg(feature = "deliberate-bugs")]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Bugs {
    /// The leader commits with fewer than a majority of voters.
    pub commit_on_minority: bool,
    /// A new leader writes no no-op and serves at once (breaks Raft §5.4.2).
    pub skip_noop: bool,
    /// A follower accepts an Append of a term lower than its own.
    pub accept_stale_append: bool,
    /// A follower acknowledges entries before they are fsynced.
    pub ack_before_fsync: bool,
    /// A follower promises a new term at once, while the leader it
    /// acknowledged may still hold a read lease on its answer.
    pub promise_during_lease: bool,
    /// The leader takes its lease from its own setting, not from the holds
    /// its followers declared (unsafe when theirs are shorter).
    pub lease_ignores_holds: bool,
}

#[cfg(feature = "deliberate-bugs")]
macro_rules! bug {
    ($replica:expr, $name:ident) => {
        $replica.bugs.$name
    };
}
#[cfg(not(feature = "deliberate-bugs"))]
macro_rules! bug {
    ($replica:expr, $name:ident) => {
        false
    };
}

/// Timing settings (DESIGN §3: 100 ms heartbeats, 1 s election timeout;
/// §4a: 300 ms read leases). Times are milliseconds of a monotonic clock.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    pub heartbeat_ms: u64,
    pub election_timeout_ms: u64,
    /// How long a follower's Ack vouches for its leader: the follower
    /// promises no new term for this long after it, and the leader serves
    /// reads without a round for a little less ([`LEASE_MARGIN_PERCENT`])
    /// after the start of a round a majority answered. 0: no leases.
    pub lease_ms: u64,
}

impl Timing {
    /// The lease is [`LEASE_HEARTBEATS`] heartbeats long. Every server of a
    /// group must run with the same timing: a follower holds its promise
    /// for its own lease length, which must cover the leader's.
    pub fn new(heartbeat_ms: u64, election_timeout_ms: u64) -> Timing {
        Timing {
            heartbeat_ms,
            election_timeout_ms,
            lease_ms: LEASE_HEARTBEATS * heartbeat_ms,
        }
    }
}

impl Default for Timing {
    fn default() -> Self {
        Timing::new(100, 1000)
    }
}

/// A lease is three heartbeats long: it outlives two lost ones, and adds
/// at most that much to a failover (followers hold their promises).
pub const LEASE_HEARTBEATS: u64 = 3;
/// The leader's lease is this much shorter than the followers' hold, so
/// clocks whose rates differ by up to this much (real ones differ by well
/// under 0.1%) cannot overlap an old leader's lease with a new leader.
pub const LEASE_MARGIN_PERCENT: u64 = 10;
/// Round start times kept for lease bookkeeping at most.
const ROUND_STARTS_MAX: usize = 1024;

/// What the driver must do, in the order given.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Durably record the current term (meta file) before anything after it.
    PersistTerm(Term),
    /// Drop every log entry after this index (a divergent suffix).
    TruncateAfter(LogIndex),
    /// Append these entries (index, term, payload) to the log; report them
    /// with [`Replica::persisted`] once fsynced.
    Append(Vec<(LogIndex, Term, Bytes)>),
    /// Send a frame to a registered peer's registered address.
    Send {
        to: ServerId,
        addr: SocketAddr,
        term: Term,
        message: Message,
    },
    /// Entries up to this index are committed: apply them.
    Commit(LogIndex),
    /// The read `token` may be served once the state has applied `index`.
    ReadReady { token: u64, index: LogIndex },
    /// The read `token` cannot be served here (not the leader any more).
    ReadFailed { token: u64 },
    /// The follower is behind this leader's compacted log: stream it the
    /// keystore file (DESIGN §4, snapshots).
    SendSnapshot { to: ServerId, addr: SocketAddr },
    /// Proposals at indexes above this one will not commit as proposed here:
    /// the leader lost its term or the entries were overwritten. Their
    /// outcome is unknown to the client.
    ProposalsLost { after: LogIndex },
}

/// Why a proposal or a read was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NotLeader {
    /// Another server leads (if known).
    Follower(Option<ServerId>),
    /// This server leads but cannot serve yet: its no-op is not committed,
    /// or it has lost contact with a majority.
    NotReady,
}

/// The latest configuration in the log.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Membership {
    pub voters: BTreeSet<ServerId>,
    pub learners: BTreeSet<ServerId>,
}

impl Membership {
    fn contains(&self, id: ServerId) -> bool {
        self.voters.contains(&id) || self.learners.contains(&id)
    }

    fn quorum(&self) -> usize {
        self.voters.len() / 2 + 1
    }
}

/// The log as the core sees it: entries since the last snapshot, kept in
/// memory so the leader can send them and check terms.
#[derive(Debug)]
struct LogView {
    /// Index and term of the last entry covered by the snapshot (0 if none).
    snapshot_index: LogIndex,
    snapshot_term: Term,
    entries: VecDeque<(Term, Bytes)>,
    /// Payload bytes from the first entry ever through each entry, in step
    /// with `entries`; `base_bytes` is the count through the snapshot. Lets
    /// a leader know the bytes in flight to a follower without summing its
    /// window on every send.
    end_bytes: VecDeque<u64>,
    base_bytes: u64,
}

impl LogView {
    fn new(snapshot_index: LogIndex, snapshot_term: Term) -> LogView {
        LogView {
            snapshot_index,
            snapshot_term,
            entries: VecDeque::new(),
            end_bytes: VecDeque::new(),
            base_bytes: 0,
        }
    }

    fn push(&mut self, term: Term, payload: Bytes) {
        let end = self.end_bytes.back().copied().unwrap_or(self.base_bytes) + payload.len() as u64;
        self.entries.push_back((term, payload));
        self.end_bytes.push_back(end);
    }

    /// Drops the entries through `index`, which becomes the snapshot's.
    fn compact_through(&mut self, index: LogIndex, term: Term) {
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
    fn bytes_between(&self, after: LogIndex, through: LogIndex) -> u64 {
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

    fn last_index(&self) -> LogIndex {
        LogIndex(self.snapshot_index.0 + self.entries.len() as u64)
    }

    fn last_term(&self) -> Term {
        self.entries.back().map_or(self.snapshot_term, |(t, _)| *t)
    }

    /// Term of the entry at `index`, if the view still holds it.
    fn term_at(&self, index: LogIndex) -> Option<Term> {
        if index == self.snapshot_index {
            return Some(self.snapshot_term);
        }
        let offset = index.0.checked_sub(self.snapshot_index.0 + 1)?;
        self.entries.get(offset as usize).map(|(t, _)| *t)
    }

    fn entry(&self, index: LogIndex) -> Option<&(Term, Bytes)> {
        let offset = index.0.checked_sub(self.snapshot_index.0 + 1)?;
        self.entries.get(offset as usize)
    }

    fn truncate_after(&mut self, index: LogIndex) {
        let keep = index.0.saturating_sub(self.snapshot_index.0) as usize;
        self.entries.truncate(keep);
        self.end_bytes.truncate(keep);
    }
}

/// What every Ack and Nack declares besides its position in the log.
#[derive(Clone, Copy, Debug)]
struct Answer {
    /// The heartbeat round answered.
    seq: u64,
    /// How long the follower holds its promise after an Append.
    hold_ms: u32,
    /// The follower's memory limit (0: none).
    memory_limit_bytes: u64,
}

impl Answer {
    fn new(seq: u64, hold_ms: u32, memory_limit_bytes: u64) -> Answer {
        Answer {
            seq,
            hold_ms,
            memory_limit_bytes,
        }
    }
}

/// The leader's view of one follower.
#[derive(Clone, Debug)]
struct Progress {
    /// Next index to send.
    next: LogIndex,
    /// Highest index known durable on the follower and matching ours.
    matched: LogIndex,
    /// Highest heartbeat sequence the follower has answered.
    seq_acked: u64,
    /// How long the follower holds its promise after an Append, as its
    /// latest answer declared (0 until it answers).
    hold_ms: u64,
    /// The follower's memory limit as its latest answer declared (0: none,
    /// or not heard yet).
    memory_limit_bytes: u64,
    last_ack_ms: Option<u64>,
    retransmit_at_ms: u64,
    backoff_ms: u64,
    /// Where the latest resend (a Nack's or the retransmit timer's) started,
    /// and when, since the follower last advanced `matched`. See
    /// [`Replica::on_nack`] for what it holds back.
    resent: Option<(LogIndex, u64)>,
    /// When this follower was last told to expect a snapshot.
    snapshot_asked_ms: Option<u64>,
}

impl Progress {
    /// The follower answered round `seq`, declaring its settings. The hold
    /// is the same in every answer until it restarts, the memory limit
    /// changes with `cache_memlimit`; the latest of each is kept.
    fn answered(&mut self, answer: Answer) {
        self.seq_acked = self.seq_acked.max(answer.seq);
        self.hold_ms = u64::from(answer.hold_ms);
        self.memory_limit_bytes = answer.memory_limit_bytes;
    }

    /// The follower answered at `now_ms` and holds our log through
    /// `matched`: sends resume just after it, with the retransmit backoff
    /// reset if that is news.
    fn heard(&mut self, now_ms: u64, matched: LogIndex) {
        self.last_ack_ms = Some(now_ms);
        if matched > self.matched {
            self.matched = matched;
            self.backoff_ms = RETRANSMIT_MS_MIN;
            self.retransmit_at_ms = now_ms + RETRANSMIT_MS_MIN;
            self.resent = None;
        }
        if self.next <= self.matched {
            self.next = LogIndex(self.matched.0 + 1);
        }
    }
}

/// A fragmented entry being reassembled on a follower.
#[derive(Debug)]
struct Reassembly {
    leader: ServerId,
    term: Term,
    prev_index: LogIndex,
    prev_term: Term,
    entry_term: Term,
    total_len: usize,
    buffer: Vec<u8>,
    received: usize,
}

/// State every server keeps durably, as the driver recovered it.
#[derive(Debug, Clone)]
pub struct Durable {
    pub term: Term,
    pub snapshot_index: LogIndex,
    pub snapshot_term: Term,
    /// Log entries after the snapshot, in order.
    pub entries: Vec<(Term, Bytes)>,
    /// Membership as of the snapshot (the keystore's); entries may change it.
    pub snapshot_membership: Membership,
}

pub struct Replica {
    id: ServerId,
    timing: Timing,
    term: Term,
    role: Role,
    leader: Option<ServerId>,
    log: LogView,
    /// Highest index fsynced locally.
    persisted: LogIndex,
    /// Highest index known to match the current leader's log.
    verified: LogIndex,
    commit: LogIndex,
    /// Configuration entries in the log view (index → membership), so a
    /// truncation can restore the configuration before it.
    configs: BTreeMap<LogIndex, Membership>,
    snapshot_membership: Membership,
    /// Registered peers' UDP addresses (from the LB).
    addrs: HashMap<ServerId, SocketAddr>,
    /// Leader only. Ordered so that the order of sends (and of jitter
    /// draws) depends only on the inputs: the simulator replays by seed.
    progress: BTreeMap<ServerId, Progress>,
    /// Leader only: index of the no-op written on taking office.
    noop_index: Option<LogIndex>,
    /// Leader only: next heartbeat sequence number.
    seq: u64,
    /// Leader only: reads waiting for a heartbeat round: (seq, index, token).
    reads: VecDeque<(u64, LogIndex, u64)>,
    /// Leader only: servers the LB asked to add.
    pending_adds: BTreeSet<ServerId>,
    last_leader_contact_ms: Option<u64>,
    last_heartbeat_ms: u64,
    reassembly: Option<Reassembly>,
    /// Follower: an Ack owed to the leader (with the sequence number to
    /// answer), sent at [`Replica::flush`] or after the next fsync.
    ack_owed: Option<(ServerId, u64)>,
    /// Follower: highest sequence number answered, so that a new read round
    /// is answered at once rather than after an fsync.
    seq_answered: u64,
    actions: Vec<Action>,
    /// Deterministic jitter source, seeded by the driver.
    jitter: u64,
    /// Leader: when each recent round (heartbeat sequence number) started,
    /// oldest first; a majority's answer to one extends the lease from then.
    round_starts: VecDeque<(u64, u64)>,
    /// Leader: reads may be served without a round until then.
    lease_until_ms: u64,
    /// This server's memory limit (0: none), declared in every Ack and Nack.
    memory_limit_bytes: u64,
    /// Follower: no promise to a new term before then: the leader it last
    /// acknowledged may hold a lease until then. At start it covers Acks
    /// sent before a crash.
    promise_not_before_ms: u64,
    /// A promise held back until `promise_not_before_ms`, for this term.
    promise_held: Option<Term>,
    /// The term on disk when this process started. It may have led in it
    /// before a crash and sent entries it then lost (Appends leave before
    /// the leader's own fsync), so it never takes office in it again.
    start_term: Term,
    #[cfg(feature = "deliberate-bugs")]
    bugs: Bugs,
}

impl Replica {
    pub fn new(
        id: ServerId,
        timing: Timing,
        durable: Durable,
        jitter_seed: u64,
        now_ms: u64,
    ) -> Replica {
        let mut replica = Replica {
            id,
            timing,
            term: durable.term,
            role: Role::Follower,
            leader: None,
            log: LogView::new(durable.snapshot_index, durable.snapshot_term),
            persisted: durable.snapshot_index,
            verified: LogIndex(0),
            commit: durable.snapshot_index,
            configs: BTreeMap::new(),
            snapshot_membership: durable.snapshot_membership,
            addrs: HashMap::new(),
            progress: BTreeMap::new(),
            noop_index: None,
            seq: 0,
            reads: VecDeque::new(),
            pending_adds: BTreeSet::new(),
            last_leader_contact_ms: None,
            last_heartbeat_ms: 0,
            reassembly: None,
            ack_owed: None,
            seq_answered: 0,
            actions: Vec::new(),
            jitter: jitter_seed | 1,
            round_starts: VecDeque::new(),
            lease_until_ms: 0,
            memory_limit_bytes: 0,
            promise_not_before_ms: now_ms + timing.lease_ms,
            promise_held: None,
            start_term: durable.term,
            #[cfg(feature = "deliberate-bugs")]
            bugs: Bugs::default(),
        };
        for (term, payload) in durable.entries {
            replica.push_entry(term, payload);
        }
        replica.persisted = replica.log.last_index();
        replica.role = replica.idle_role();
        replica
    }

    /// This server's memory limit (`-m`, `cache_memlimit`; 0: none), which
    /// it declares to its leader in every answer.
    pub fn set_memory_limit(&mut self, limit_bytes: u64) {
        self.memory_limit_bytes = limit_bytes;
    }

    /// Leader: the smallest memory limit its group's other members declared
    /// (0: none, or none declared yet). Every replica applies every write,
    /// so the leader refuses writes over the smallest of these and its own:
    /// the limit is the group's, and no replica holds more than its `-m`.
    pub fn group_memory_limit_bytes(&self) -> u64 {
        if self.role != Role::Leader {
            return 0;
        }
        let membership = self.membership();
        membership
            .voters
            .iter()
            .chain(&membership.learners)
            .filter_map(|id| self.progress.get(id))
            .map(|p| p.memory_limit_bytes)
            .filter(|limit| *limit != 0)
            .min()
            .unwrap_or(0)
    }

    /// Switches deliberate bugs on (simulator only).
    #[cfg(feature = "deliberate-bugs")]
    pub fn set_bugs(&mut self, bugs: Bugs) {
        self.bugs = bugs;
    }

    // ---- queries ----

    pub fn id(&self) -> ServerId {
        self.id
    }
    pub fn term(&self) -> Term {
        self.term
    }
    pub fn role(&self) -> Role {
        self.role
    }
    pub fn leader(&self) -> Option<ServerId> {
        self.leader
    }
    pub fn commit_index(&self) -> LogIndex {
        self.commit
    }
    pub fn last_index(&self) -> LogIndex {
        self.log.last_index()
    }
    pub fn last_term(&self) -> Term {
        self.log.last_term()
    }

    /// The latest configuration in the log (committed or not).
    pub fn membership(&self) -> &Membership {
        self.configs
            .values()
            .next_back()
            .unwrap_or(&self.snapshot_membership)
    }

    /// The term of a log entry still in memory.
    pub fn term_at(&self, index: LogIndex) -> Option<Term> {
        self.log.term_at(index)
    }

    /// The payload of a log entry still in memory, for applying it.
    pub fn entry(&self, index: LogIndex) -> Option<&Bytes> {
        self.log.entry(index).map(|(_, payload)| payload)
    }

    /// The leader can take writes and reads: its no-op is committed.
    pub fn is_serving(&self) -> bool {
        if bug!(self, skip_noop) {
            return self.role == Role::Leader;
        }
        self.role == Role::Leader && self.noop_index.is_some_and(|noop| self.commit >= noop)
    }

    /// Leader: reads may be answered from the local state, without a round,
    /// until this time (0: not now). A majority answered a round that
    /// started at most `lease_ms` minus the margin ago, and each of them
    /// promises no new leader until `lease_ms` after its answer.
    pub fn lease_until_ms(&self) -> u64 {
        if self.timing.lease_ms == 0 || !self.is_serving() {
            return 0;
        }
        self.lease_until_ms
    }

    /// Milliseconds since this server last heard its leader (for the LB).
    pub fn leader_contact_ms(&self, now_ms: u64) -> u32 {
        if self.role == Role::Leader {
            return 0;
        }
        self.last_leader_contact_ms.map_or(u32::MAX, |t| {
            now_ms.saturating_sub(t).min(u32::MAX as u64 - 1) as u32
        })
    }

    /// Status for the LB's heartbeat.
    pub fn status(&self, now_ms: u64, applied: LogIndex) -> Message {
        let membership = self.membership();
        Message::Status {
            role: self.role,
            leader: self.leader.unwrap_or(ServerId::LB),
            last_term: self.log.last_term(),
            last_index: self.log.last_index(),
            commit_index: self.commit,
            applied_index: applied,
            leader_contact_ms: self.leader_contact_ms(now_ms),
            voters: membership.voters.iter().copied().collect(),
            learners: membership.learners.iter().copied().collect(),
        }
    }

    /// Takes the actions produced so far.
    pub fn take_actions(&mut self) -> Vec<Action> {
        std::mem::take(&mut self.actions)
    }

    /// The log through `index` (of `term`) is now in a keystore file: drop
    /// it from memory. Followers behind it will get the keystore file.
    pub fn compact(&mut self, index: LogIndex, term: Term) {
        if index <= self.log.snapshot_index
            || index > self.commit
            || self.log.term_at(index) != Some(term)
        {
            return;
        }
        let membership = self
            .configs
            .range(..=index)
            .next_back()
            .map(|(_, m)| m.clone())
            .unwrap_or_else(|| self.snapshot_membership.clone());
        self.log.compact_through(index, term);
        self.configs.retain(|i, _| *i > index);
        self.snapshot_membership = membership;
    }

    /// A snapshot stream from `from` in `term` may be accepted (the same
    /// fencing as an Append).
    pub fn accept_snapshot_chunk(&mut self, now_ms: u64, from: ServerId, term: Term) -> bool {
        self.accept_leader(now_ms, from, term)
    }

    /// The driver installed the leader's keystore file at `index`: the log
    /// before it is gone, the state is the snapshot's. Tells the leader.
    pub fn install_snapshot(&mut self, index: LogIndex, term: Term, membership: Membership) {
        if self.keeps_log_after_snapshot(index, term) {
            // Raft §7: the log already holds the snapshot's last entry, so it
            // matches the leader's through it; what follows may have been
            // acknowledged and must stay (the driver compacted the disk log
            // the same way).
            self.log.compact_through(index, term);
            self.configs.retain(|i, _| *i > index);
            self.persisted = self.persisted.max(index);
            self.verified = self.verified.max(index);
        } else {
            self.log = LogView::new(index, term);
            self.configs.clear();
            self.persisted = index;
            self.verified = index;
        }
        self.snapshot_membership = membership;
        self.commit = self.commit.max(index);
        self.role = self.idle_role();
        if let Some(leader) = self.leader {
            self.ack(leader, self.seq);
        }
    }

    /// Whether installing a snapshot through `index` of `term` keeps the log
    /// entries after it: the log holds that very entry. The driver asks
    /// before it changes the disk log, and `install_snapshot` agrees.
    pub fn keeps_log_after_snapshot(&self, index: LogIndex, term: Term) -> bool {
        index > self.log.snapshot_index && self.log.term_at(index) == Some(term)
    }

    /// Leader: `peer` holds our keystore file through `index` (it
    /// acknowledged the whole stream): replicate from just after it.
    pub fn snapshot_delivered(&mut self, now_ms: u64, peer: ServerId, index: LogIndex) {
        if self.role != Role::Leader {
            return;
        }
        let Some(progress) = self.progress.get_mut(&peer) else {
            return;
        };
        progress.snapshot_asked_ms = None;
        progress.heard(now_ms, index);
        self.advance_commit();
        self.maybe_change_membership(now_ms);
        self.send_window(peer, now_ms);
    }

    /// Index and term the in-memory log starts after.
    pub fn snapshot_position(&self) -> (LogIndex, Term) {
        (self.log.snapshot_index, self.log.snapshot_term)
    }

    // ---- events ----

    /// Time passes: the leader sends heartbeats and retransmits, and steps
    /// down when a majority has been silent for the election timeout.
    pub fn tick(&mut self, now_ms: u64) {
        if self.role != Role::Leader {
            self.release_promise(now_ms);
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
            Message::Reject if term > self.term => self.adopt_term(term, None),
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
        Ok(self.append_local(payload))
    }

    /// A linearizable read on the leader (ReadIndex): answered with
    /// [`Action::ReadReady`] once a majority confirmed the leadership after
    /// the read arrived.
    pub fn read(&mut self, now_ms: u64, token: u64) -> Result<(), NotLeader> {
        if self.role != Role::Leader {
            return Err(NotLeader::Follower(self.leader));
        }
        if !self.is_serving() || self.reads.len() >= READS_WAITING_MAX {
            return Err(NotLeader::NotReady);
        }
        // The read waits for the next round, one that starts after it
        // arrived. Rounds are not sent here: one round serves every read
        // that arrives before it goes out (`flush`, or the moment the
        // round in flight is confirmed), so a burst of reads costs one round
        // trip to the followers, not one each.
        self.reads.push_back((self.seq + 1, self.commit, token));
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
    fn flush_ack(&mut self) {
        let Some((leader, seq)) = self.ack_owed else {
            return;
        };
        let fsync_pending = self.persisted < self.log.last_index();
        if seq > self.seq_answered || !fsync_pending || bug!(self, ack_before_fsync) {
            self.ack(leader, seq);
        }
    }

    fn read_round_due(&self) -> bool {
        self.role == Role::Leader
            && self.reads.back().is_some_and(|(seq, _, _)| *seq > self.seq)
            && self.round_confirmed(self.seq)
    }

    /// A heartbeat round: every follower answers with the round's sequence
    /// number, and a majority of answers confirms this leader still leads.
    fn start_read_round(&mut self, now_ms: u64) {
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

    // ---- elections (DESIGN §3) ----

    fn on_prepare(&mut self, now_ms: u64, from: ServerId, term: Term) {
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
    fn release_promise(&mut self, now_ms: u64) {
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

    fn promise(&mut self, lb: SocketAddr) {
        let voters = self.membership().voters.iter().copied().collect();
        let promise = Message::Promise {
            last_term: self.log.last_term(),
            last_index: self.log.last_index(),
            voters,
        };
        self.send(ServerId::LB, lb, promise);
    }

    fn on_new_leader(&mut self, now_ms: u64, term: Term, leader: ServerId) {
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
    fn take_office(&mut self, now_ms: u64) {
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

    fn step_down(&mut self, leader: Option<ServerId>) {
        if self.role == Role::Leader {
            // Entries after the commit point may still commit under the next
            // leader, or not: their clients get "outcome unknown".
            self.actions
                .push(Action::ProposalsLost { after: self.commit });
            for (_, _, token) in self.reads.drain(..) {
                self.actions.push(Action::ReadFailed { token });
            }
        }
        self.progress.clear();
        self.noop_index = None;
        self.leader = leader;
        self.role = self.idle_role();
    }

    fn adopt_term(&mut self, term: Term, leader: Option<ServerId>) {
        debug_assert!(term > self.term);
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
        self.actions.push(Action::PersistTerm(term));
    }

    /// Follower when this server votes in its latest configuration; a
    /// learner otherwise (added but not yet a voter, or not added yet), so
    /// that the LB and `store up` can tell when it has joined.
    fn idle_role(&self) -> Role {
        if self.membership().voters.contains(&self.id) {
            Role::Follower
        } else {
            Role::Learner
        }
    }

    // ---- membership ----

    fn learn_peers(&mut self, peers: &[Peer]) {
        for peer in peers {
            self.addrs.insert(peer.id, peer.udp);
        }
    }

    fn on_add_server(&mut self, now_ms: u64, term: Term, peer: Peer) {
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

    fn on_remove_server(&mut self, now_ms: u64, term: Term, id: ServerId) {
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
    fn maybe_change_membership(&mut self, now_ms: u64) {
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

    fn config_committed(&self) -> bool {
        self.configs
            .keys()
            .next_back()
            .is_none_or(|index| *index <= self.commit)
    }

    fn append_config(&mut self, now_ms: u64, membership: Membership) {
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

    // ---- leader side of replication (DESIGN §4) ----

    fn new_progress(&self, next: LogIndex, now_ms: u64) -> Progress {
        Progress {
            next,
            matched: LogIndex(0),
            seq_acked: 0,
            hold_ms: 0,
            memory_limit_bytes: 0,
            last_ack_ms: Some(now_ms),
            retransmit_at_ms: now_ms + RETRANSMIT_MS_MIN,
            backoff_ms: RETRANSMIT_MS_MIN,
            resent: None,
            snapshot_asked_ms: None,
        }
    }

    fn append_local(&mut self, payload: Bytes) -> LogIndex {
        let term = self.term;
        let index = self.push_entry(term, payload.clone());
        self.actions
            .push(Action::Append(vec![(index, term, payload)]));
        index
    }

    /// Adds an entry to the view, tracking configuration entries.
    fn push_entry(&mut self, term: Term, payload: Bytes) -> LogIndex {
        let index = LogIndex(self.log.last_index().0 + 1);
        if let Some((voters, learners)) = Command::peek_config(&payload) {
            self.configs.insert(
                index,
                Membership {
                    voters: voters.into_iter().map(ServerId).collect(),
                    learners: learners.into_iter().map(ServerId).collect(),
                },
            );
        }
        self.log.push(term, payload);
        index
    }

    fn broadcast(&mut self, now_ms: u64) {
        let peers: Vec<ServerId> = self.progress.keys().copied().collect();
        for peer in peers {
            self.send_window(peer, now_ms);
        }
        // A group of one commits on its own fsync alone.
        self.advance_commit();
    }

    /// Sends what the window allows to `peer`, and with `heartbeat` an empty
    /// Append if the window sent nothing, so the round reaches every peer.
    fn send_window_or_heartbeat(&mut self, peer: ServerId, now_ms: u64, heartbeat: bool) {
        let sent = self.send_window(peer, now_ms);
        if heartbeat && !sent {
            self.send_append(peer, now_ms, false);
        }
    }

    /// Sends what the window allows to `peer`; true if anything was sent.
    fn send_window(&mut self, peer: ServerId, now_ms: u64) -> bool {
        let mut sent = false;
        loop {
            let Some(progress) = self.progress.get(&peer) else {
                return sent;
            };
            let in_flight = progress.next.0.saturating_sub(progress.matched.0 + 1);
            if progress.next > self.log.last_index() || in_flight >= WINDOW_ENTRIES_MAX {
                return sent;
            }
            let in_flight_bytes = self
                .log
                .bytes_between(progress.matched, LogIndex(progress.next.0 - 1));
            if in_flight_bytes >= WINDOW_BYTES_MAX as u64 {
                return sent;
            }
            if !self.send_append(peer, now_ms, true) {
                return sent;
            }
            sent = true;
        }
    }

    /// Sends one Append (or the fragments of one large entry) starting at
    /// the peer's next index; `with_entries == false` sends a heartbeat.
    fn send_append(&mut self, peer: ServerId, now_ms: u64, with_entries: bool) -> bool {
        let Some(addr) = self.addrs.get(&peer).copied() else {
            return false;
        };
        let Some(progress) = self.progress.get(&peer) else {
            return false;
        };
        let next = progress.next;
        let prev_index = LogIndex(next.0 - 1);
        let Some(prev_term) = self.log.term_at(prev_index) else {
            // The follower is behind our compacted log: it needs the keystore
            // file, which the driver streams (asked again now and then, in
            // case the driver lost track of it).
            let due = progress
                .snapshot_asked_ms
                .is_none_or(|t| now_ms >= t + SNAPSHOT_ASK_MS);
            if due {
                if let Some(progress) = self.progress.get_mut(&peer) {
                    progress.snapshot_asked_ms = Some(now_ms);
                }
                self.actions.push(Action::SendSnapshot { to: peer, addr });
            }
            return false;
        };
        let seq = self.seq;
        let commit = self.commit;
        let mut entries = Vec::new();
        let mut bytes = 0;
        if with_entries {
            let mut index = next;
            while let Some((term, payload)) = self.log.entry(index) {
                if payload.len() > ENTRY_PAYLOAD_BYTES_MAX {
                    if entries.is_empty() {
                        self.send_fragments(
                            peer,
                            addr,
                            seq,
                            prev_index,
                            prev_term,
                            *term,
                            payload.clone(),
                        );
                        self.sent_through(peer, next, now_ms);
                        return true;
                    }
                    break;
                }
                let size = ENTRY_OVERHEAD_BYTES + payload.len();
                if bytes + size > APPEND_ENTRIES_BYTES_MAX {
                    break;
                }
                bytes += size;
                entries.push(Entry {
                    term: *term,
                    payload: payload.clone(),
                });
                index = LogIndex(index.0 + 1);
            }
            if entries.is_empty() {
                return false;
            }
        }
        let count = entries.len() as u64;
        let message = Message::Append {
            seq,
            prev_index,
            prev_term,
            commit,
            entries,
        };
        self.send(peer, addr, message);
        if count > 0 {
            self.sent_through(peer, LogIndex(next.0 + count - 1), now_ms);
        }
        true
    }

    #[allow(clippy::too_many_arguments)]
    fn send_fragments(
        &mut self,
        peer: ServerId,
        addr: SocketAddr,
        seq: u64,
        prev_index: LogIndex,
        prev_term: Term,
        entry_term: Term,
        payload: Bytes,
    ) {
        let total_len = payload.len() as u32;
        for (n, chunk) in payload.chunks(FRAGMENT_CHUNK_BYTES_MAX).enumerate() {
            let message = Message::AppendFragment {
                seq,
                prev_index,
                prev_term,
                commit: self.commit,
                entry_term,
                total_len,
                offset: (n * FRAGMENT_CHUNK_BYTES_MAX) as u32,
                bytes: payload.slice_ref(chunk),
            };
            self.send(peer, addr, message);
        }
    }

    fn sent_through(&mut self, peer: ServerId, last: LogIndex, now_ms: u64) {
        let jitter = self.next_jitter();
        if let Some(progress) = self.progress.get_mut(&peer) {
            progress.next = LogIndex(last.0 + 1);
            // Jitter keeps followers' retransmits from lining up.
            progress.retransmit_at_ms =
                now_ms + progress.backoff_ms + jitter % (progress.backoff_ms / 2 + 1);
        }
    }

    /// The progress of follower `from`, whose Ack or Nack of `term` counts
    /// only if it answers this leader's own term; a newer term is adopted
    /// instead.
    fn answerer(&mut self, from: ServerId, term: Term) -> Option<&mut Progress> {
        if term > self.term {
            self.adopt_term(term, None);
            return None;
        }
        if self.role != Role::Leader || term < self.term {
            return None;
        }
        self.progress.get_mut(&from)
    }

    /// `answer`: the round the follower answered and what it declared.
    fn on_ack(
        &mut self,
        now_ms: u64,
        from: ServerId,
        term: Term,
        answer: Answer,
        matched: LogIndex,
    ) {
        let Some(progress) = self.answerer(from, term) else {
            return;
        };
        progress.answered(answer);
        progress.heard(now_ms, matched);
        self.extend_lease();
        self.advance_commit();
        self.check_reads(now_ms);
        self.maybe_change_membership(now_ms);
        self.send_window(from, now_ms);
    }

    fn on_nack(&mut self, now_ms: u64, from: ServerId, term: Term, answer: Answer, hint: LogIndex) {
        let Some(progress) = self.answerer(from, term) else {
            return;
        };
        progress.last_ack_ms = Some(now_ms);
        progress.answered(answer);
        // Go back to just after the follower's hint, never below what it has.
        let next = LogIndex((hint.0 + 1).max(progress.matched.0 + 1));
        // A window that reaches a follower out of order draws a Nack from
        // every datagram past the gap, all asking for about the same place;
        // answering each with a window made every Nack breed a window of
        // Nacks (simulator seed 303090: a million datagrams in 40 ms). `next`
        // runs ahead as soon as a window is sent, so it cannot tell a resend
        // in flight from news. So: a Nack for a place below the latest resend
        // (walking back a conflict, or a follower that lost entries) is
        // answered at once, each lowering the mark; any other waits until
        // that resend had a retransmit interval to arrive. Such a Nack may
        // be news all the same (a follower whose snapshot covers more than
        // the resend assumed points forward), so it is never dropped for
        // longer than that.
        let news = progress
            .resent
            .is_none_or(|(from, at_ms)| next < from || now_ms >= at_ms + RETRANSMIT_MS_MIN);
        let moved_back = next < progress.next && news;
        if moved_back {
            progress.next = next;
            progress.resent = Some((next, now_ms));
        }
        self.extend_lease();
        self.check_reads(now_ms);
        if moved_back {
            self.send_window(from, now_ms);
        }
    }

    /// Commit: the largest index a majority of voters holds durably, if it is
    /// of the current term (Raft §5.4.2).
    fn advance_commit(&mut self) {
        if self.role != Role::Leader {
            return;
        }
        let membership = self.membership();
        if membership.voters.is_empty() {
            return;
        }
        let mut matched: Vec<LogIndex> = membership
            .voters
            .iter()
            .map(|id| {
                if *id == self.id {
                    self.persisted
                } else {
                    self.progress.get(id).map_or(LogIndex(0), |p| p.matched)
                }
            })
            .collect();
        matched.sort_unstable_by(|a, b| b.cmp(a));
        let quorum = if bug!(self, commit_on_minority) {
            (membership.quorum() - 1).max(1)
        } else {
            membership.quorum()
        };
        let candidate = matched[quorum - 1];
        if candidate > self.commit && self.log.term_at(candidate) == Some(self.term) {
            self.commit = candidate;
            self.actions.push(Action::Commit(candidate));
        }
    }

    fn check_reads(&mut self, now_ms: u64) {
        while let Some(&(seq, index, token)) = self.reads.front() {
            if !self.round_confirmed(seq) || !self.is_serving() {
                break;
            }
            self.reads.pop_front();
            self.actions.push(Action::ReadReady { token, index });
        }
        // Reads that arrived while the round just confirmed was in flight
        // go out in the next one at once.
        if self.read_round_due() {
            self.start_read_round(now_ms);
        }
    }

    /// Leader: starts heartbeat round `seq + 1` now; the next heartbeat is
    /// due a heartbeat interval later.
    fn next_round(&mut self, now_ms: u64) {
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
    fn extend_lease(&mut self) {
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
    fn round_confirmed(&self, seq: u64) -> bool {
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

    fn majority_heard_within(&self, now_ms: u64, window_ms: u64) -> bool {
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

    // ---- follower side ----

    /// Accepts the sender as leader of `term` if the term allows; false if
    /// the message must be refused.
    fn accept_leader(&mut self, now_ms: u64, from: ServerId, term: Term) -> bool {
        let stale_accepted = bug!(self, accept_stale_append) && self.role != Role::Leader;
        if term < self.term && !stale_accepted {
            if let Some(addr) = self.addrs.get(&from).copied() {
                self.send(from, addr, Message::Reject);
            }
            return false;
        }
        if term > self.term {
            self.adopt_term(term, Some(from));
        }
        if self.role == Role::Leader {
            // Two leaders in one term cannot happen (the LB names one).
            debug_assert!(false, "append from {from:?} in our own term");
            return false;
        }
        self.leader = Some(from);
        self.last_leader_contact_ms = Some(now_ms);
        // Whatever we answer to this Append may extend the leader's lease.
        self.promise_not_before_ms = self
            .promise_not_before_ms
            .max(now_ms + self.timing.lease_ms);
        true
    }

    #[allow(clippy::too_many_arguments)]
    fn on_append(
        &mut self,
        now_ms: u64,
        from: ServerId,
        term: Term,
        seq: u64,
        prev_index: LogIndex,
        prev_term: Term,
        commit: LogIndex,
        entries: Vec<Entry>,
    ) {
        if !self.accept_leader(now_ms, from, term) {
            return;
        }
        self.seq = self.seq.max(seq);
        match self.log.term_at(prev_index) {
            Some(t) if t == prev_term => {}
            _ if prev_index < self.log.snapshot_index => {
                // Already covered by our snapshot: the leader is behind us in
                // what it believes; tell it where we are.
                let hint = self.log.last_index();
                self.nack(from, seq, hint);
                return;
            }
            _ => {
                // Missing or conflicting: point the leader before it.
                let hint = LogIndex(prev_index.0.saturating_sub(1).min(self.log.last_index().0));
                self.nack(from, seq, hint);
                return;
            }
        }
        let mut new_entries = Vec::new();
        let mut index = prev_index;
        for entry in entries {
            index = LogIndex(index.0 + 1);
            match self.log.term_at(index) {
                Some(t) if t == entry.term => continue,
                Some(_) => {
                    // Divergent suffix: drop it, in the view and on disk.
                    self.truncate_after(LogIndex(index.0 - 1));
                }
                None => {}
            }
            let pushed = self.push_entry(entry.term, entry.payload.clone());
            debug_assert_eq!(pushed, index);
            new_entries.push((index, entry.term, entry.payload));
        }
        self.verified = self.verified.max(index);
        if !new_entries.is_empty() {
            self.actions.push(Action::Append(new_entries));
        }
        self.role = self.idle_role();
        // Answered at the end of the turn (`flush`): one Ack for every
        // Append of the turn.
        self.ack_owed = Some((from, self.seq));
        self.follower_commit(commit);
    }

    fn on_fragment(&mut self, now_ms: u64, from: ServerId, term: Term, fragment: Fragment) {
        if !self.accept_leader(now_ms, from, term) {
            return;
        }
        if fragment.total_len > REASSEMBLY_BYTES_MAX
            || fragment.offset + fragment.bytes.len() > fragment.total_len
        {
            return;
        }
        let same = self.reassembly.as_ref().is_some_and(|r| {
            r.leader == from
                && r.term == term
                && r.prev_index == fragment.prev_index
                && r.prev_term == fragment.prev_term
                && r.entry_term == fragment.entry_term
                && r.total_len == fragment.total_len
        });
        if !same {
            // One entry at a time: a new one replaces an unfinished one.
            self.reassembly = Some(Reassembly {
                leader: from,
                term,
                prev_index: fragment.prev_index,
                prev_term: fragment.prev_term,
                entry_term: fragment.entry_term,
                total_len: fragment.total_len,
                buffer: vec![0; fragment.total_len],
                received: 0,
            });
        }
        let Some(r) = self.reassembly.as_mut() else {
            return;
        };
        // Fragments of one entry are resent whole, in order: count only the
        // one at the frontier so duplicates cannot complete a torn entry.
        if fragment.offset != r.received {
            return;
        }
        r.buffer[fragment.offset..fragment.offset + fragment.bytes.len()]
            .copy_from_slice(&fragment.bytes);
        r.received += fragment.bytes.len();
        if r.received < r.total_len {
            return;
        }
        let Some(r) = self.reassembly.take() else {
            return;
        };
        let entry = Entry {
            term: r.entry_term,
            payload: Bytes::from(r.buffer),
        };
        self.on_append(
            now_ms,
            from,
            term,
            fragment.seq,
            r.prev_index,
            r.prev_term,
            fragment.commit,
            vec![entry],
        );
    }

    fn truncate_after(&mut self, index: LogIndex) {
        debug_assert!(index >= self.commit, "never truncate committed entries");
        self.log.truncate_after(index);
        self.configs.retain(|i, _| *i <= index);
        self.persisted = self.persisted.min(index);
        self.actions.push(Action::TruncateAfter(index));
    }

    /// Acknowledges what is both durable here and verified against the leader.
    fn ack(&mut self, leader: ServerId, seq: u64) {
        let Some(addr) = self.addrs.get(&leader).copied() else {
            return;
        };
        let match_index = if bug!(self, ack_before_fsync) {
            self.verified.min(self.log.last_index())
        } else {
            self.persisted.min(self.verified)
        };
        self.ack_owed = None;
        self.seq_answered = self.seq_answered.max(seq);
        let hold_ms = self.hold_ms();
        self.send(
            leader,
            addr,
            Message::Ack {
                seq,
                match_index,
                hold_ms,
                memory_limit_bytes: self.memory_limit_bytes,
            },
        );
    }

    /// The hold this follower keeps after each Append (see `accept_leader`),
    /// declared in every answer so the leader's lease never outlasts it.
    fn hold_ms(&self) -> u32 {
        u32::try_from(self.timing.lease_ms).unwrap_or(u32::MAX)
    }

    fn nack(&mut self, leader: ServerId, seq: u64, hint: LogIndex) {
        let Some(addr) = self.addrs.get(&leader).copied() else {
            return;
        };
        self.send(
            leader,
            addr,
            Message::Nack {
                seq,
                hint_index: hint,
                hold_ms: self.hold_ms(),
                memory_limit_bytes: self.memory_limit_bytes,
            },
        );
    }

    fn follower_commit(&mut self, leader_commit: LogIndex) {
        // Only entries known to match the leader's log may be applied.
        let commit = leader_commit.min(self.verified).min(self.log.last_index());
        if commit > self.commit {
            self.commit = commit;
            self.actions.push(Action::Commit(commit));
        }
    }

    // ---- helpers ----

    fn lb_addr(&self) -> Option<SocketAddr> {
        self.addrs.get(&ServerId::LB).copied()
    }

    /// Where the LB is; the driver knows it from the command line.
    pub fn set_lb_addr(&mut self, addr: SocketAddr) {
        self.addrs.insert(ServerId::LB, addr);
    }

    /// A peer's registered UDP address, from the LB's heartbeats.
    pub fn peer_addr(&self, id: ServerId) -> Option<SocketAddr> {
        self.addrs.get(&id).copied()
    }

    fn send(&mut self, to: ServerId, addr: SocketAddr, message: Message) {
        self.actions.push(Action::Send {
            to,
            addr,
            term: self.term,
            message,
        });
    }

    fn next_jitter(&mut self) -> u64 {
        // xorshift64: cheap, deterministic from the driver's seed.
        let mut x = self.jitter;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.jitter = x;
        x
    }
}

/// One AppendFragment's fields.
struct Fragment {
    seq: u64,
    prev_index: LogIndex,
    prev_term: Term,
    commit: LogIndex,
    entry_term: Term,
    total_len: usize,
    offset: usize,
    bytes: Bytes,
}

/// Encodes an operation the core writes itself (no-op, configuration).
fn encode_op(now_ms: u64, op: Op) -> Bytes {
    let command = Command {
        time_s: now_ms / 1000,
        op,
    };
    let mut out = BytesMut::with_capacity(command.encoded_len());
    command.encode(&mut out);
    out.freeze()
}

#[cfg(test)]
mod tests {
    //! A whole group in memory: messages are delivered by hand, fsyncs
    //! complete when the test says so. Test names cite the rule they check.

    use std::collections::BTreeMap;

    use super::*;

    const LB_ADDR: &str = "127.0.0.1:9000";

    fn addr(id: u64) -> SocketAddr {
        format!("127.0.0.1:{}", 9000 + id).parse().unwrap()
    }

    fn payload(n: u64) -> Bytes {
        payload_of(n, 8)
    }

    /// A Store entry whose value is `bytes` long.
    fn payload_of(n: u64, bytes: usize) -> Bytes {
        encode_op(
            0,
            Op::Store {
                mode: data::command::StoreMode::Set,
                key: Bytes::from(format!("k{n}")),
                flags: 0,
                exptime: 0,
                data: Bytes::from(vec![b'v'; bytes]),
                cas_unique: 0,
            },
        )
    }

    /// One replica plus what its driver would have done.
    struct Node {
        replica: Replica,
        disk: Vec<(Term, Bytes)>,
        term_on_disk: Term,
        committed: LogIndex,
        reads_ready: Vec<u64>,
        lost_after: Option<LogIndex>,
        snapshot_asked: bool,
        up: bool,
    }

    struct Group {
        nodes: BTreeMap<ServerId, Node>,
        /// (from, to, term, message) in flight.
        wire: VecDeque<(ServerId, ServerId, Term, Message)>,
        to_lb: Vec<(ServerId, Term, Message)>,
        now_ms: u64,
    }

    impl Group {
        /// `ids` all voters of a configuration already in their snapshot.
        fn new(ids: &[u64]) -> Group {
            Group::with_heartbeats(ids, |_| Timing::default().heartbeat_ms)
        }

        /// As [`Group::new`], each server with its own heartbeat setting.
        fn with_heartbeats(ids: &[u64], heartbeat_ms: impl Fn(u64) -> u64) -> Group {
            let membership = Membership {
                voters: ids.iter().map(|i| ServerId(*i)).collect(),
                learners: BTreeSet::new(),
            };
            let peers: Vec<Peer> = ids
                .iter()
                .map(|i| Peer {
                    id: ServerId(*i),
                    tcp: addr(*i),
                    udp: addr(*i),
                })
                .collect();
            let mut nodes = BTreeMap::new();
            for id in ids {
                let durable = Durable {
                    term: Term(0),
                    snapshot_index: LogIndex(0),
                    snapshot_term: Term(0),
                    entries: Vec::new(),
                    snapshot_membership: membership.clone(),
                };
                let timing = Timing::new(heartbeat_ms(*id), Timing::default().election_timeout_ms);
                let mut replica = Replica::new(ServerId(*id), timing, durable, *id, 0);
                replica.set_lb_addr(LB_ADDR.parse().unwrap());
                replica.receive(
                    0,
                    ServerId::LB,
                    Term(0),
                    Message::Heartbeat {
                        leader: ServerId::LB,
                        peers: peers.clone(),
                    },
                );
                nodes.insert(
                    ServerId(*id),
                    Node {
                        replica,
                        disk: Vec::new(),
                        term_on_disk: Term(0),
                        committed: LogIndex(0),
                        reads_ready: Vec::new(),
                        lost_after: None,
                        snapshot_asked: false,
                        up: true,
                    },
                );
            }
            Group {
                nodes,
                wire: VecDeque::new(),
                to_lb: Vec::new(),
                now_ms: 1_000,
            }
        }

        fn node(&mut self, id: u64) -> &mut Node {
            self.nodes.get_mut(&ServerId(id)).unwrap()
        }

        fn propose(&mut self, id: u64, payload: Bytes) -> Result<LogIndex, NotLeader> {
            self.node(id).replica.propose(payload)
        }

        fn read(&mut self, id: u64, token: u64) -> Result<(), NotLeader> {
            let now = self.now_ms;
            self.node(id).replica.read(now, token)
        }

        fn receive(&mut self, id: u64, from: ServerId, term: Term, message: Message) {
            let now = self.now_ms;
            self.node(id).replica.receive(now, from, term, message)
        }

        /// Carries out a node's actions like the driver: disk first, sends
        /// queued, then reports the fsync.
        fn drive(&mut self, id: ServerId) {
            loop {
                let now = self.now_ms;
                let node = self.nodes.get_mut(&id).unwrap();
                node.replica.flush(now);
                let actions = node.replica.take_actions();
                if actions.is_empty() {
                    return;
                }
                let mut appended = None;
                for action in actions {
                    match action {
                        Action::PersistTerm(t) => node.term_on_disk = t,
                        Action::TruncateAfter(i) => node.disk.truncate(i.0 as usize),
                        Action::Append(entries) => {
                            for (index, term, payload) in entries {
                                assert_eq!(
                                    index.0 as usize,
                                    node.disk.len() + 1,
                                    "appends are contiguous"
                                );
                                node.disk.push((term, payload));
                                appended = Some(index);
                            }
                        }
                        Action::Send {
                            to, term, message, ..
                        } => {
                            // Rule: nothing is sent in a term not yet durable.
                            assert!(
                                term <= node.term_on_disk,
                                "sent in term {term:?} before persisting it"
                            );
                            if to == ServerId::LB {
                                self.to_lb.push((id, term, message));
                            } else {
                                self.wire.push_back((id, to, term, message));
                            }
                        }
                        Action::Commit(i) => {
                            assert!(i >= node.committed, "commit index never goes down");
                            assert!(
                                i.0 as usize <= node.disk.len()
                                    || node.replica.role() != Role::Leader
                            );
                            node.committed = i;
                        }
                        Action::ReadReady { token, .. } => node.reads_ready.push(token),
                        Action::ReadFailed { .. } => {}
                        Action::ProposalsLost { after } => node.lost_after = Some(after),
                        Action::SendSnapshot { .. } => node.snapshot_asked = true,
                    }
                }
                if let Some(index) = appended {
                    let now = self.now_ms;
                    node.replica.persisted(now, index);
                }
            }
        }

        fn drive_all(&mut self) {
            let ids: Vec<ServerId> = self.nodes.keys().copied().collect();
            for id in ids {
                self.drive(id);
            }
        }

        /// Delivers messages until the wire is quiet (bounded).
        fn settle(&mut self) {
            self.drive_all();
            for _ in 0..10_000 {
                let Some((from, to, term, message)) = self.wire.pop_front() else {
                    return;
                };
                let now = self.now_ms;
                let (Some(f), Some(t)) = (self.nodes.get(&from), self.nodes.get(&to)) else {
                    continue;
                };
                if !f.up || !t.up {
                    continue;
                }
                self.nodes
                    .get_mut(&to)
                    .unwrap()
                    .replica
                    .receive(now, from, term, message);
                self.drive(to);
            }
            panic!("messages never settled");
        }

        fn elect(&mut self, leader: u64, term: u64) {
            let ids: Vec<ServerId> = self.nodes.keys().copied().collect();
            for id in &ids {
                if self.nodes[id].up {
                    let now = self.now_ms;
                    self.nodes.get_mut(id).unwrap().replica.receive(
                        now,
                        ServerId::LB,
                        Term(term),
                        Message::Prepare,
                    );
                }
            }
            self.drive_all();
            for id in &ids {
                if self.nodes[id].up {
                    let now = self.now_ms;
                    let msg = Message::NewLeader {
                        leader: ServerId(leader),
                    };
                    self.nodes.get_mut(id).unwrap().replica.receive(
                        now,
                        ServerId::LB,
                        Term(term),
                        msg,
                    );
                }
            }
            self.settle();
        }

        fn tick(&mut self, ms: u64) {
            self.now_ms += ms;
            let now = self.now_ms;
            for node in self.nodes.values_mut().filter(|n| n.up) {
                node.replica.tick(now);
            }
            self.settle();
        }
    }

    #[test]
    fn promise_persists_term_before_answering() {
        let mut g = Group::new(&[1, 2, 3]);
        g.node(1)
            .replica
            .receive(1_000, ServerId::LB, Term(5), Message::Prepare);
        let actions = g.node(1).replica.take_actions();
        assert_eq!(actions[0], Action::PersistTerm(Term(5)));
        assert!(matches!(
            &actions[1],
            Action::Send {
                message: Message::Promise { .. },
                term: Term(5),
                ..
            }
        ));
        // A second Prepare of the same term is refused: one promise per term.
        g.node(1)
            .replica
            .receive(1_000, ServerId::LB, Term(5), Message::Prepare);
        let actions = g.node(1).replica.take_actions();
        assert!(matches!(
            &actions[0],
            Action::Send {
                message: Message::Reject,
                ..
            }
        ));
    }

    #[test]
    fn new_leader_commits_noop_of_its_term_before_serving() {
        let mut g = Group::new(&[1, 2, 3]);
        g.node(2).up = false;
        g.node(3).up = false;
        g.elect(1, 1);
        // Raft §5.4.2: alone it cannot commit its no-op, so it does not serve.
        assert!(!g.node(1).replica.is_serving());
        assert_eq!(g.propose(1, payload(1)).map(|_| ()), Ok(()));
        g.settle();
        assert_eq!(g.node(1).committed, LogIndex(0));
        g.node(2).up = true;
        g.tick(100);
        g.tick(100);
        assert!(g.node(1).replica.is_serving());
        assert_eq!(g.node(1).committed, LogIndex(2), "no-op and the write");
    }

    #[test]
    fn commit_needs_majority_durable() {
        let mut g = Group::new(&[1, 2, 3]);
        g.elect(1, 1);
        let index = g.propose(1, payload(7)).unwrap();
        g.settle();
        assert!(g.node(1).committed >= index);
        for id in [2, 3] {
            assert_eq!(
                g.node(id).disk.len(),
                index.0 as usize,
                "follower {id} has the entry"
            );
        }
        g.tick(100);
        assert!(g.node(2).committed >= index, "followers learn the commit");
    }

    #[test]
    fn append_of_lower_term_is_refused() {
        let mut g = Group::new(&[1, 2, 3]);
        g.elect(1, 1);
        g.elect(2, 2);
        // The old leader's late Append in term 1 changes nothing on node 3.
        let before = g.node(3).disk.len();
        let stale = Message::Append {
            seq: 99,
            prev_index: LogIndex(before as u64),
            prev_term: Term(2),
            commit: LogIndex(0),
            entries: vec![Entry {
                term: Term(1),
                payload: payload(1),
            }],
        };
        g.receive(3, ServerId(1), Term(1), stale);
        g.drive_all();
        assert_eq!(g.node(3).disk.len(), before);
        assert!(g
            .wire
            .iter()
            .any(|(_, to, _, m)| *to == ServerId(1) && *m == Message::Reject));
    }

    #[test]
    fn divergent_suffix_is_truncated_to_the_leaders_log() {
        // Raft §5.3: the follower's uncommitted entries of an old term go.
        let mut g = Group::new(&[1, 2, 3]);
        g.elect(1, 1);
        g.node(2).up = false;
        g.node(3).up = false;
        g.propose(1, payload(100)).unwrap();
        g.propose(1, payload(101)).unwrap();
        g.settle();
        let old_len = g.node(1).disk.len();
        // Node 1 is cut off; 2 and 3 elect 2, which writes in term 2.
        g.node(1).up = false;
        g.node(2).up = true;
        g.node(3).up = true;
        g.elect(2, 2);
        g.propose(2, payload(200)).unwrap();
        g.settle();
        g.node(1).up = true;
        g.elect(2, 3);
        g.tick(100);
        g.tick(100);
        let leader_disk = g.node(2).disk.clone();
        assert_eq!(g.node(1).disk, leader_disk, "logs match after repair");
        assert!(g.node(1).disk.len() <= old_len + 2);
        assert!(g.node(1).disk.iter().all(|(_, p)| *p != payload(101)));
    }

    #[test]
    fn read_waits_for_a_majority_round() {
        let mut g = Group::new(&[1, 2, 3]);
        g.elect(1, 1);
        g.node(2).up = false;
        g.node(3).up = false;
        g.read(1, 42).unwrap();
        g.settle();
        assert!(g.node(1).reads_ready.is_empty(), "no majority: no read");
        g.node(3).up = true;
        g.tick(100);
        assert_eq!(g.node(1).reads_ready, vec![42]);
    }

    #[test]
    fn leader_without_majority_steps_down() {
        let mut g = Group::new(&[1, 2, 3]);
        g.elect(1, 1);
        g.propose(1, payload(1)).unwrap();
        g.node(2).up = false;
        g.node(3).up = false;
        for _ in 0..12 {
            g.tick(100);
        }
        assert_eq!(g.node(1).replica.role(), Role::Follower);
        assert!(g.node(1).lost_after.is_some());
        assert_eq!(g.propose(1, payload(2)), Err(NotLeader::Follower(None)));
    }

    #[test]
    fn large_entries_travel_in_fragments() {
        let mut g = Group::new(&[1, 2, 3]);
        g.elect(1, 1);
        let big = encode_op(
            0,
            Op::Store {
                mode: data::command::StoreMode::Set,
                key: Bytes::from_static(b"big"),
                flags: 0,
                exptime: 0,
                data: Bytes::from((0..1_048_576u32).map(|i| i as u8).collect::<Vec<_>>()),
                cas_unique: 0,
            },
        );
        let index = g.propose(1, big.clone()).unwrap();
        g.settle();
        assert!(g.node(1).committed >= index);
        assert_eq!(g.node(2).disk[index.0 as usize - 1].1, big);
    }

    /// The Appends and Acks on the wire from `from` to `to`.
    fn on_wire(g: &Group, from: u64, to: u64) -> Vec<&Message> {
        g.wire
            .iter()
            .filter(|(f, t, _, _)| *f == ServerId(from) && *t == ServerId(to))
            .map(|(_, _, _, m)| m)
            .collect()
    }

    /// Takes every message on the wire to `to`, and drops the rest.
    fn take_to(g: &mut Group, to: u64) -> Vec<(Term, Message)> {
        g.wire
            .drain(..)
            .filter(|(_, t, _, _)| *t == ServerId(to))
            .map(|(_, _, term, message)| (term, message))
            .collect()
    }

    #[test]
    fn writes_of_one_turn_leave_in_one_append_per_follower() {
        let mut g = Group::new(&[1, 2, 3]);
        g.elect(1, 1);
        for n in 1..=5 {
            g.propose(1, payload(n)).unwrap();
        }
        assert!(g.wire.is_empty(), "nothing leaves before the turn ends");
        g.drive(ServerId(1));
        for follower in [2, 3] {
            let sent = on_wire(&g, 1, follower);
            assert_eq!(sent.len(), 1, "{sent:?}");
            assert!(matches!(sent[0], Message::Append { entries, .. } if entries.len() == 5));
        }
        g.settle();
        let last = g.node(1).replica.last_index();
        assert_eq!(g.node(1).committed, last);
    }

    #[test]
    fn a_follower_answers_the_appends_of_one_turn_with_one_ack() {
        let mut g = Group::new(&[1, 2, 3]);
        g.elect(1, 1);
        for n in 1..=2 {
            g.propose(1, payload(n)).unwrap();
            g.drive(ServerId(1));
        }
        let last = g.node(1).replica.last_index();
        let appends = take_to(&mut g, 2);
        assert_eq!(appends.len(), 2);
        for (term, message) in appends {
            g.receive(2, ServerId(1), term, message);
        }
        g.drive(ServerId(2));
        let acks = on_wire(&g, 2, 1);
        assert_eq!(acks.len(), 1, "{acks:?}");
        assert!(matches!(acks[0], Message::Ack { match_index, .. } if *match_index == last));
    }

    #[test]
    fn a_read_round_is_answered_before_the_followers_fsync() {
        let mut g = Group::new(&[1, 2, 3]);
        g.elect(1, 1);
        g.propose(1, payload(1)).unwrap();
        g.drive(ServerId(1));
        let (term, append) = take_to(&mut g, 2).remove(0);
        let now = g.now_ms;
        let follower = &mut g.node(2).replica;
        follower.receive(now, ServerId(1), term, append);
        follower.flush(now);
        let acked = |actions: &[Action]| {
            actions.iter().find_map(|a| match a {
                Action::Send {
                    message: Message::Ack { seq, .. },
                    ..
                } => Some(*seq),
                _ => None,
            })
        };
        let actions = follower.take_actions();
        assert_eq!(acked(&actions), None, "a write's Ack waits for the fsync");
        // A read round arrives while the fsync runs: answered at once.
        g.read(1, 9).unwrap();
        g.drive(ServerId(1));
        let (term, round) = take_to(&mut g, 2).remove(0);
        let Message::Append { seq: round_seq, .. } = round else {
            panic!("a read round is an Append: {round:?}");
        };
        let follower = &mut g.node(2).replica;
        follower.receive(now, ServerId(1), term, round);
        follower.flush(now);
        assert_eq!(acked(&follower.take_actions()), Some(round_seq));
    }

    #[test]
    fn the_leader_learns_the_smallest_memory_limit_from_the_answers() {
        let mut g = Group::new(&[1, 2, 3]);
        g.elect(1, 1);
        assert_eq!(g.node(1).replica.group_memory_limit_bytes(), 0);
        g.node(2).replica.set_memory_limit(300);
        g.node(3).replica.set_memory_limit(200);
        g.propose(1, payload(1)).unwrap();
        g.settle();
        assert_eq!(g.node(1).replica.group_memory_limit_bytes(), 200);
        // No limit is no constraint; a follower's is not the group's.
        g.node(3).replica.set_memory_limit(0);
        g.propose(1, payload(2)).unwrap();
        g.settle();
        assert_eq!(g.node(1).replica.group_memory_limit_bytes(), 300);
        assert_eq!(g.node(2).replica.group_memory_limit_bytes(), 0);
    }

    #[test]
    fn an_ack_counts_only_for_rounds_of_its_own_term() {
        // Rounds of term 1 while server 2 is away: the others count far
        // ahead of it. Server 2 then leads term 2; its first rounds must not
        // be confirmed by the old leader's numbers.
        let mut g = Group::new(&[1, 2, 3]);
        g.elect(1, 1);
        g.node(2).up = false;
        for token in 0..10 {
            g.read(1, token).unwrap();
            g.settle();
        }
        g.node(2).up = true;
        g.elect(2, 2);
        g.node(1).up = false;
        g.node(3).up = false;
        g.read(2, 99).unwrap();
        g.settle();
        assert!(
            g.node(2).reads_ready.is_empty(),
            "no follower answered this round"
        );
        g.node(3).up = true;
        g.tick(100);
        assert_eq!(g.node(2).reads_ready, vec![99]);
    }

    /// Whether `id` sent the LB a Promise among `actions`.
    fn promised(actions: &[Action]) -> bool {
        actions.iter().any(|a| {
            matches!(
                a,
                Action::Send {
                    message: Message::Promise { .. },
                    ..
                }
            )
        })
    }

    #[test]
    fn a_lease_runs_from_the_start_of_a_round_a_majority_answered() {
        let mut g = Group::new(&[1, 2, 3]);
        g.elect(1, 1);
        let started = g.now_ms;
        let lease = Timing::default().lease_ms * (100 - LEASE_MARGIN_PERCENT) / 100;
        assert_eq!(g.node(1).replica.lease_until_ms(), started + lease);
        // Answers keep it going; without them it ends, and reads wait for
        // a round again.
        g.tick(100);
        assert_eq!(g.node(1).replica.lease_until_ms(), started + 100 + lease);
        g.node(2).up = false;
        g.node(3).up = false;
        for _ in 0..3 {
            g.tick(100);
        }
        let now = g.now_ms;
        assert!(g.node(1).replica.lease_until_ms() <= now);
        assert!(
            g.node(2).replica.lease_until_ms() == 0,
            "followers hold none"
        );
    }

    #[test]
    fn a_lease_lasts_the_shortest_hold_of_the_majority_behind_it() {
        // Leader 1 would hold 300 ms; its followers declare 150 and 240.
        let hold = |id| [0, 300, 150, 240][id as usize];
        let mut g = Group::with_heartbeats(&[1, 2, 3], |id| hold(id) / LEASE_HEARTBEATS);
        let margin = |ms: u64| ms * (100 - LEASE_MARGIN_PERCENT) / 100;
        g.elect(1, 1);
        let started = g.now_ms;
        // Both answered: the best majority is the leader and server 3.
        assert_eq!(g.node(1).replica.lease_until_ms(), started + margin(240));
        // Only server 2 answers: its hold is the lease's.
        g.node(3).up = false;
        g.tick(500);
        let started = g.now_ms;
        assert_eq!(g.node(1).replica.lease_until_ms(), started + margin(150));
    }

    #[test]
    fn a_follower_holds_its_promise_while_its_leader_may_hold_a_lease() {
        let mut g = Group::new(&[1, 2, 3]);
        g.elect(1, 1);
        let answered = g.now_ms;
        let lease_ms = Timing::default().lease_ms;
        g.now_ms += 50;
        g.receive(2, ServerId::LB, Term(2), Message::Prepare);
        let actions = g.node(2).replica.take_actions();
        assert_eq!(
            actions[0],
            Action::PersistTerm(Term(2)),
            "the term is taken at once"
        );
        assert!(!promised(&actions), "{actions:?}");
        // A resent Prepare is not refused while the promise is held.
        g.receive(2, ServerId::LB, Term(2), Message::Prepare);
        assert!(g.node(2).replica.take_actions().is_empty());
        let now = answered + lease_ms - 1;
        g.node(2).replica.tick(now);
        assert!(!promised(&g.node(2).replica.take_actions()));
        g.node(2).replica.tick(answered + lease_ms);
        assert!(promised(&g.node(2).replica.take_actions()));
    }

    #[test]
    fn a_restarted_server_holds_promises_for_a_lease() {
        // Its Acks from before the crash are forgotten, so it waits as if it
        // had just sent one.
        let durable = Durable {
            term: Term(1),
            snapshot_index: LogIndex(0),
            snapshot_term: Term(0),
            entries: Vec::new(),
            snapshot_membership: Membership::default(),
        };
        let timing = Timing::default();
        let mut replica = Replica::new(ServerId(2), timing, durable, 2, 5_000);
        replica.set_lb_addr(LB_ADDR.parse().unwrap());
        replica.receive(5_000, ServerId::LB, Term(2), Message::Prepare);
        assert!(!promised(&replica.take_actions()));
        replica.tick(5_000 + timing.lease_ms);
        assert!(promised(&replica.take_actions()));
    }

    /// Hands `messages` from `from` to node `to` one at a time, each
    /// followed by a driver turn.
    fn deliver(g: &mut Group, from: u64, to: u64, messages: Vec<(Term, Message)>) {
        for (term, message) in messages {
            g.receive(to, ServerId(from), term, message);
            g.drive(ServerId(to));
        }
    }

    /// Appends from `from` to `to` on the wire.
    fn appends_on_wire(g: &Group, from: u64, to: u64) -> usize {
        on_wire(g, from, to)
            .iter()
            .filter(|m| matches!(m, Message::Append { .. }))
            .count()
    }

    #[test]
    fn nacks_from_one_window_arriving_out_of_order_draw_one_resend() {
        let mut g = Group::new(&[1, 2, 3]);
        g.elect(1, 1);
        // Node 3 misses a dozen entries that take several datagrams.
        g.node(3).up = false;
        for n in 0..12 {
            g.propose(1, payload_of(n, 400)).unwrap();
        }
        g.settle();
        g.node(3).up = true;
        g.propose(1, payload_of(12, 400)).unwrap();
        g.drive(ServerId(1));
        // Its Nack brings the missing entries as one window of Appends.
        let append = take_to(&mut g, 3);
        deliver(&mut g, 1, 3, append);
        let nack = take_to(&mut g, 1);
        deliver(&mut g, 3, 1, nack);
        let window = appends_on_wire(&g, 1, 3);
        assert!(window >= 3, "the resend takes several datagrams: {window}");
        // They arrive last first: every one but the first overtakes a gap.
        let mut resent = take_to(&mut g, 3);
        resent.reverse();
        deliver(&mut g, 1, 3, resent);
        let answers = take_to(&mut g, 1);
        let nacks = answers
            .iter()
            .filter(|(_, m)| matches!(m, Message::Nack { .. }))
            .count();
        assert_eq!(nacks, window - 1, "{answers:?}");
        deliver(&mut g, 3, 1, answers);
        // One resend answers all those Nacks, at the most; a window for
        // each would multiply with every round trip.
        let again = appends_on_wire(&g, 1, 3);
        assert!(
            again <= window,
            "{again} Appends for one window of {window}"
        );
        // Nothing is left behind: the retransmit timer repairs what the
        // reordering cost, and node 3 catches up.
        g.tick(RETRANSMIT_MS_MIN * 4);
        g.tick(100);
        let last = g.node(1).replica.last_index();
        assert_eq!(g.node(3).disk.len() as u64, last.0, "node 3 caught up");
    }

    #[test]
    fn lost_messages_are_retransmitted() {
        let mut g = Group::new(&[1, 2, 3]);
        g.elect(1, 1);
        let index = g.propose(1, payload(5)).unwrap();
        g.drive_all();
        g.wire.clear(); // every datagram lost
        g.tick(RETRANSMIT_MS_MIN + 1);
        g.tick(100);
        assert!(g.node(1).committed >= index);
    }

    /// Node 3 was down while leader 1 committed five entries and compacted
    /// its log through them: it is behind the log. Returns the compaction
    /// point.
    fn node_3_behind_the_compacted_log() -> (Group, LogIndex, Term) {
        let mut g = Group::new(&[1, 2, 3]);
        g.elect(1, 1);
        g.node(3).up = false;
        for n in 0..5 {
            g.propose(1, payload(n)).unwrap();
        }
        g.settle();
        let commit = g.node(1).committed;
        let term = g.node(1).replica.term_at(commit).unwrap();
        g.node(1).replica.compact(commit, term);
        (g, commit, term)
    }

    #[test]
    fn follower_behind_the_compacted_log_is_sent_a_snapshot() {
        let (mut g, commit, term) = node_3_behind_the_compacted_log();
        assert_eq!(g.node(1).replica.snapshot_position(), (commit, term));
        g.node(3).up = true;
        g.tick(100);
        assert!(
            g.node(1).snapshot_asked,
            "the leader asks the driver to stream its keystore"
        );
        // The driver installed it on node 3: the leader carries on from there.
        let membership = g.node(1).replica.membership().clone();
        g.node(3).disk = g.node(1).disk[..commit.0 as usize].to_vec();
        g.node(3).replica.install_snapshot(commit, term, membership);
        g.settle();
        g.propose(1, payload(99)).unwrap();
        g.settle();
        g.tick(100);
        let leader_disk = g.node(1).disk.clone();
        assert_eq!(g.node(3).disk, leader_disk);
    }

    #[test]
    fn installing_a_snapshot_keeps_the_acknowledged_entries_after_it() {
        // Raft §7: a follower whose log holds the snapshot's last entry keeps
        // what follows; those entries may already count toward a commit.
        let mut g = Group::new(&[1, 2, 3]);
        g.elect(1, 1);
        for n in 0..6 {
            g.propose(1, payload(n)).unwrap();
        }
        g.settle();
        let last = g.node(2).replica.last_index();
        let through = LogIndex(last.0 - 2);
        let term = g.node(2).replica.term_at(through).unwrap();
        let membership = g.node(2).replica.membership().clone();
        assert!(g.node(2).replica.keeps_log_after_snapshot(through, term));
        g.node(2)
            .replica
            .install_snapshot(through, term, membership.clone());
        assert_eq!(g.node(2).replica.last_index(), last);
        assert_eq!(g.node(2).replica.snapshot_position(), (through, term));
        // A snapshot of another history (a term the log does not hold at
        // that index) replaces the whole log.
        let other = Term(term.0 + 5);
        assert!(!g.node(3).replica.keeps_log_after_snapshot(through, other));
        g.node(3)
            .replica
            .install_snapshot(through, other, membership);
        assert_eq!(g.node(3).replica.last_index(), through);
    }

    #[test]
    fn snapshot_delivery_resumes_replication_when_the_followers_ack_is_lost() {
        let (mut g, commit, term) = node_3_behind_the_compacted_log();
        g.node(3).up = true;
        g.tick(100);
        // Node 3 installs the keystore file, but its Ack never arrives.
        let membership = g.node(1).replica.membership().clone();
        g.node(3).disk = g.node(1).disk[..commit.0 as usize].to_vec();
        g.node(3).replica.install_snapshot(commit, term, membership);
        g.drive_all();
        g.wire.clear();
        // The leader sends nothing to a follower behind its log, so only the
        // stream's last acknowledgement tells it to carry on.
        for _ in 0..5 {
            g.tick(100);
        }
        assert!(
            g.node(3).disk.len() == commit.0 as usize,
            "nothing new reached node 3"
        );
        let now = g.now_ms;
        g.node(1)
            .replica
            .snapshot_delivered(now, ServerId(3), commit);
        g.settle();
        g.propose(1, payload(99)).unwrap();
        g.settle();
        g.tick(100);
        let leader_disk = g.node(1).disk.clone();
        assert_eq!(g.node(3).disk, leader_disk);
    }

    #[test]
    fn restarted_leader_does_not_take_office_again_in_its_old_term() {
        // Raft §5.2 (one leader per term) and §5.3 (log matching): the
        // restarted process lost its unsynced tail, so new entries of term
        // 1 could collide with old ones the followers hold.
        let mut g = Group::new(&[1, 2, 3]);
        g.elect(1, 1);
        g.propose(1, payload(1)).unwrap();
        g.settle();
        let node = g.node(1);
        let durable = Durable {
            term: node.term_on_disk,
            snapshot_index: LogIndex(0),
            snapshot_term: Term(0),
            entries: node.disk[..1].to_vec(),
            snapshot_membership: node.replica.snapshot_membership.clone(),
        };
        // The crash took the unsynced tail: only the no-op survived.
        node.disk.truncate(1);
        node.replica = Replica::new(ServerId(1), Timing::default(), durable, 9, 0);
        node.replica.set_lb_addr(LB_ADDR.parse().unwrap());
        g.receive(
            1,
            ServerId::LB,
            Term(1),
            Message::NewLeader {
                leader: ServerId(1),
            },
        );
        assert_ne!(g.node(1).replica.role(), Role::Leader);
        assert!(g.node(1).replica.propose(payload(2)).is_err());
        // A new term brings it back.
        g.elect(1, 2);
        assert_eq!(g.node(1).replica.role(), Role::Leader);
    }

    #[test]
    fn new_server_joins_as_learner_then_voter() {
        // Ongaro §4.1: one change at a time, learners do not count.
        let mut g = Group::new(&[1]);
        g.elect(1, 1);
        assert!(g.node(1).replica.is_serving());
        // Server 2 appears (registered with the LB, empty log).
        let durable = Durable {
            term: Term(0),
            snapshot_index: LogIndex(0),
            snapshot_term: Term(0),
            entries: Vec::new(),
            snapshot_membership: Membership::default(),
        };
        let mut two = Replica::new(ServerId(2), Timing::default(), durable, 2, 0);
        let peers = vec![
            Peer {
                id: ServerId(1),
                tcp: addr(1),
                udp: addr(1),
            },
            Peer {
                id: ServerId(2),
                tcp: addr(2),
                udp: addr(2),
            },
        ];
        two.receive(
            0,
            ServerId::LB,
            Term(0),
            Message::Heartbeat {
                leader: ServerId(1),
                peers: peers.clone(),
            },
        );
        g.nodes.insert(
            ServerId(2),
            Node {
                replica: two,
                disk: Vec::new(),
                term_on_disk: Term(0),
                committed: LogIndex(0),
                reads_ready: Vec::new(),
                lost_after: None,
                snapshot_asked: false,
                up: true,
            },
        );
        let now = g.now_ms;
        g.node(1).replica.receive(
            now,
            ServerId::LB,
            Term(0),
            Message::Heartbeat {
                leader: ServerId(1),
                peers,
            },
        );
        g.node(1).replica.receive(
            now,
            ServerId::LB,
            Term(1),
            Message::AddServer {
                peer: Peer {
                    id: ServerId(2),
                    tcp: addr(2),
                    udp: addr(2),
                },
            },
        );
        g.settle();
        for _ in 0..5 {
            g.tick(100);
        }
        let m = g.node(1).replica.membership().clone();
        assert!(
            m.voters.contains(&ServerId(2)),
            "caught-up learner promoted: {m:?}"
        );
        let leader_disk = g.node(1).disk.clone();
        assert_eq!(g.node(2).disk, leader_disk);
        assert_eq!(g.node(2).replica.membership(), &m);
    }
}
