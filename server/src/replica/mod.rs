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
//!
//! One file per part, each an `impl Replica` block over the state declared
//! here, and one test file per part under `tests/` sharing a harness (a
//! whole group in memory, `tests/mod.rs`):
//! - `events`: the public entries above and the end of a driver turn;
//! - `election`: terms, promises, taking office and stepping down (§3);
//! - `membership`: peers, learners promoted, servers removed;
//! - `leader`: each follower's progress, windows, Acks and Nacks, commit;
//! - `lease`: read rounds and the read lease (§4a);
//! - `follower_read`: reads on a follower, through the leader's read index;
//! - `follower`: the consistency check, fragments, Acks after the fsync;
//! - `vote`: a group that elects its own leader by vote (the LB group's),
//!   instead of the LB's election;
//! - `log_view`: the in-memory log since the snapshot;
//! - `host`: the host's half, written once for every host (the replication
//!   driver and the simulator are two `host::Io`s under one `host::Host`):
//!   the actions carried out in order, the sync, applying and answering;
//!   with its parts `waiters` (proposals and reads waiting to be answered),
//!   `lb_link` (registration and silence reports to the LB) and
//!   `snapshot_stream` (the keystore file streamed in chunks to a follower
//!   behind the compacted log).

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
/// Entries a leader holds beyond its commit index at most; more proposals
/// are refused as not ready until commits catch up. Hosts bound their own
/// writes in flight well below it (the server: `memory::WriteBudget`, at
/// most one entry per KiB of its 256 MiB); this bounds the core's memory
/// whatever the host does.
pub const UNCOMMITTED_ENTRIES_MAX: u64 = 512 * 1024;
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
    /// A follower promises a new term at once (by vote: grants its vote),
    /// while the leader it acknowledged may still hold a read lease on its
    /// answer.
    pub promise_during_lease: bool,
    /// The leader takes its lease from its own setting, not from the holds
    /// its followers declared (unsafe when theirs are shorter).
    pub lease_ignores_holds: bool,
    /// A follower serves a read as soon as the leader's read index comes
    /// back, without waiting to have applied through it.
    pub follower_read_before_apply: bool,
    /// A group that elects by vote: a vote granted to a candidate whose log
    /// is older than the voter's (breaks Raft §5.4.1).
    pub vote_for_older_log: bool,
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

mod election;
mod events;
mod follower;
mod follower_read;
pub mod host;
mod lb_link;
mod leader;
mod lease;
mod log_view;
mod membership;
pub mod snapshot_stream;
#[cfg(test)]
mod tests;
mod vote;
mod waiters;

pub use lb_link::{Advertised, LbLink};
pub use waiters::{Applied, AppliedEntry, UndecodableEntry, Waiters, READ_APPLY_WAIT_MS_MAX};

pub use follower_read::FOLLOWER_READ_WAIT_MS;

use follower::{Fragment, Reassembly};
use follower_read::{FollowerReads, ReadFor};
use leader::{Answer, Progress};
use log_view::LogView;

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

/// Timing a group cannot run with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TimingError {
    #[error(
        "the heartbeat must be at least 1 ms and the election timeout at least \
         {LEASE_HEARTBEATS} heartbeats (got {heartbeat_ms} ms and {election_timeout_ms} ms)"
    )]
    HeartbeatVsElectionTimeout {
        heartbeat_ms: u64,
        election_timeout_ms: u64,
    },
    #[error("the read lease ({lease_ms} ms) must not outlast the election timeout ({election_timeout_ms} ms)")]
    LeaseOutlastsElection {
        lease_ms: u64,
        election_timeout_ms: u64,
    },
}

impl Timing {
    /// The timing rule, for servers and the LB alike: a heartbeat is due
    /// several times within an election timeout. A follower holds its
    /// promise to the LB for the lease after each Append, so a lease longer
    /// than the election timeout would make every election wait past it.
    pub fn validate(&self) -> Result<(), TimingError> {
        if self.heartbeat_ms == 0
            || self.election_timeout_ms < LEASE_HEARTBEATS.saturating_mul(self.heartbeat_ms)
        {
            return Err(TimingError::HeartbeatVsElectionTimeout {
                heartbeat_ms: self.heartbeat_ms,
                election_timeout_ms: self.election_timeout_ms,
            });
        }
        if self.lease_ms > self.election_timeout_ms {
            return Err(TimingError::LeaseOutlastsElection {
                lease_ms: self.lease_ms,
                election_timeout_ms: self.election_timeout_ms,
            });
        }
        Ok(())
    }

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

const _: () = assert!(RETRANSMIT_MS_MIN <= RETRANSMIT_MS_MAX);
const _: () = assert!(LEASE_MARGIN_PERCENT < 100);
// A window holds at least one entry of the largest size a fragment carries.
const _: () = assert!(WINDOW_BYTES_MAX >= data::frame::FRAGMENT_CHUNK_BYTES_MAX);

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
    /// Follower: no leader answered the read `token`'s question within
    /// [`FOLLOWER_READ_WAIT_MS`] (through resends and any failover): none
    /// can be reached from here, so none would answer it forwarded either.
    ReadUnanswered { token: u64 },
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
    /// it has lost contact with a majority, or it holds
    /// [`UNCOMMITTED_ENTRIES_MAX`] entries past its commit index.
    NotReady,
}

/// The latest configuration in the log.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Membership {
    pub voters: BTreeSet<ServerId>,
    pub learners: BTreeSet<ServerId>,
}

impl Membership {
    /// The configuration a state (a keystore file) holds.
    pub fn of(config: &data::state::Members) -> Membership {
        Membership {
            voters: config.0.iter().map(|id| ServerId(*id)).collect(),
            learners: config.1.iter().map(|id| ServerId(*id)).collect(),
        }
    }

    fn contains(&self, id: ServerId) -> bool {
        self.voters.contains(&id) || self.learners.contains(&id)
    }

    fn quorum(&self) -> usize {
        self.voters.len() / 2 + 1
    }
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
    /// Leader only: reads waiting for a heartbeat round: (seq, index, for).
    reads: VecDeque<(u64, LogIndex, ReadFor)>,
    /// Follower: reads waiting for the leader's read index.
    follower_reads: FollowerReads,
    /// Leader: its read lease also answers followers' questions at once
    /// (off under `--read-mode read-index`, which relies on no clock).
    lease_answers_followers: bool,
    /// Leader only: servers the LB asked to add.
    pending_adds: BTreeSet<ServerId>,
    /// A group that elects by vote and changes its members at run time
    /// (the LB group): the members it should have, which the leader moves
    /// its configuration toward ([`Self::set_target_members`]); `None`
    /// while none was given.
    target_members: Option<BTreeSet<ServerId>>,
    /// A group that elects by vote, on its leader: members a configuration
    /// took out, still sent entries and heartbeats so that they learn
    /// their removal is committed (an LB then stops, DESIGN §3c), until
    /// this time (`u64::MAX` while that configuration is not committed).
    leaving: BTreeMap<ServerId, u64>,
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
    /// the leader's own fsync), so it never takes office in it again; nor,
    /// in a group that elects by vote, votes in it (see `vote`).
    start_term: Term,
    /// This group elects its own leader by vote (`vote`), not the LB.
    elects_by_vote: bool,
    /// By vote: when this server stands if it hears no leader before then.
    election_due_ms: u64,
    /// By vote: the candidate this process voted for, and in which term.
    voted: Option<(Term, ServerId)>,
    /// By vote: standing in the current term.
    candidacy: Option<vote::Candidacy>,
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
        // The command line refuses bad timing with a message; a host that
        // gets here with it has a bug.
        if let Err(error) = timing.validate() {
            panic!("replica started with invalid timing: {error}");
        }
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
            follower_reads: FollowerReads::new(jitter_seed),
            lease_answers_followers: true,
            pending_adds: BTreeSet::new(),
            target_members: None,
            leaving: BTreeMap::new(),
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
            elects_by_vote: false,
            election_due_ms: 0,
            voted: None,
            candidacy: None,
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

    /// Whether this server, leading, answers a follower's read-index
    /// question at once while it holds its read lease (as it serves its own
    /// reads then), rather than after a round. On by default.
    pub fn set_lease_answers_followers(&mut self, on: bool) {
        self.lease_answers_followers = on;
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
        self.assert_invariants();
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
    // ---- helpers ----

    /// What holds between any two events, checked each time the host takes
    /// the actions (after every event it fed): cheap, and always on, since a
    /// core that broke one must stop rather than answer clients.
    fn assert_invariants(&self) {
        let last = self.log.last_index();
        assert!(
            self.commit <= last,
            "commit {:?} beyond the log's last index {last:?}",
            self.commit
        );
        assert!(
            self.log.snapshot_index <= self.commit,
            "snapshot {:?} beyond commit {:?}",
            self.log.snapshot_index,
            self.commit
        );
        assert!(
            self.persisted <= last,
            "persisted {:?} beyond the log's last index {last:?}",
            self.persisted
        );
        if self.role == Role::Leader {
            assert_eq!(self.leader, Some(self.id), "a leader names itself");
        } else {
            assert!(self.progress.is_empty(), "progress kept while not leading");
            assert!(self.reads.is_empty(), "reads held while not leading");
            assert!(self.noop_index.is_none(), "a no-op kept while not leading");
        }
        assert!(
            self.reads.len() <= READS_WAITING_MAX,
            "reads over their bound"
        );
        assert!(
            self.round_starts.len() <= ROUND_STARTS_MAX,
            "rounds over their bound"
        );
    }

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

/// Encodes an operation the core writes itself (no-op, configuration).
fn encode_op(now_ms: u64, op: Op) -> Bytes {
    let command = Command {
        time_s: now_ms / 1000,
        op,
        unique: None,
    };
    let mut out = BytesMut::with_capacity(command.encoded_len());
    command.encode(&mut out);
    out.freeze()
}
