//! The cluster's UDP datagrams: one [`Frame`] (header and [`Message`]) to and
//! from the exact bytes of one datagram (DESIGN §3 elections, §4 replication).
//!
//! Pure code: it encodes into a `BytesMut` and decodes from a byte slice; it
//! never touches a socket, the clock or a random source (anything random,
//! such as a sequence number, is the caller's input). The UDP drivers of the
//! server and the LB call [`encode`] for every datagram they send and
//! [`decode`] for every datagram they receive; deciding whether a valid frame
//! is meant for us (cluster id, `to`, term) is theirs, not this module's.
//!
//! # Format
//!
//! All integers little endian; hand-written and pinned by golden-bytes tests.
//!
//! ```text
//! offset  size  field
//! 0       4     magic b"SRPL"
//! 4       1     version = 4 (FRAME_VERSION)
//! 5       1     kind (message tag, 1..=16 in Message's order)
//! 6       2     replica group id
//! 8       8     cluster id
//! 16      8     from (server id; 0 = the LB)
//! 24      8     to   (server id; 0 = the LB)
//! 32      8     term
//! 40      2     payload length N
//! 42      N     payload (per kind, see Message)
//! 42+N    4     crc32c over bytes [0, 42+N)
//! 46+N    16    MAC: first 16 bytes of blake3::keyed_hash(secret, bytes [0, 46+N))
//! ```
//!
//! An address is `[family u8: 4 or 6][ip: 4 or 16 bytes][port u16]`.
//!
//! # Decoding order
//!
//! Length sanity first (it needs no trust and bounds everything after), then
//! the MAC in constant time, and only for an authentic datagram magic,
//! version, CRC and the payload. So nothing an unkeyed sender
//! writes is ever parsed, and [`FrameError::BadMac`] is one variant the
//! driver can count. Every count and length inside the payload is checked
//! against the bytes remaining before anything is allocated, and no input
//! panics.

use std::fmt;
use std::net::SocketAddr;

use bytes::{BufMut, Bytes, BytesMut};
use thiserror::Error;

use crate::wire::{self, addr_len, put_addr};

/// Identifies a cluster datagram.
pub const FRAME_MAGIC: [u8; 4] = *b"SRPL";

/// Version of the header and every payload encoding. Bump it on any change.
///
/// Version 2: Ack carries the follower's promise hold (`hold_ms`).
/// Version 3: Ack and Nack carry the follower's memory limit.
/// Version 4: the header's two reserved bytes carry the replica group id.
pub const FRAME_VERSION: u8 = 4;

/// Largest datagram sent or accepted: under the common 1,500-byte Ethernet
/// MTU with room for IP and UDP headers (and tunnels), so real networks do
/// not fragment IP packets (DESIGN §4).
pub const DATAGRAM_BYTES_MAX: usize = 1400;

/// Magic through payload length.
pub const HEADER_BYTES: usize = 42;

/// The CRC32C after the payload.
pub const CRC_BYTES: usize = 4;

/// The truncated BLAKE3 keyed hash at the end: 128 bits is ample against
/// forgery for short-lived datagrams and saves 16 bytes of every datagram.
pub const MAC_BYTES: usize = 16;

/// Everything in a datagram but the payload.
pub const FRAME_OVERHEAD_BYTES: usize = HEADER_BYTES + CRC_BYTES + MAC_BYTES;

/// Largest payload of one datagram.
pub const PAYLOAD_BYTES_MAX: usize = DATAGRAM_BYTES_MAX - FRAME_OVERHEAD_BYTES;

// The payload length is a u16 in the header.
const _: () = assert!(PAYLOAD_BYTES_MAX <= u16::MAX as usize);

/// Length of the cluster secret, the BLAKE3 key.
pub const SECRET_BYTES: usize = 32;

/// Append's fields before its entries: seq, prev index, prev term, commit,
/// entry count.
pub const APPEND_FIXED_BYTES: usize = 8 + 8 + 8 + 8 + 2;

/// Bytes an entry costs in an Append besides its payload: term and length.
pub const ENTRY_OVERHEAD_BYTES: usize = 8 + 4;

/// Room for entries in one Append; each costs [`entry_encoded_bytes`].
pub const APPEND_ENTRIES_BYTES_MAX: usize = PAYLOAD_BYTES_MAX - APPEND_FIXED_BYTES;

/// Largest entry payload that travels whole in one Append; a larger entry is
/// sent as [`Message::AppendFragment`]s.
pub const ENTRY_PAYLOAD_BYTES_MAX: usize = APPEND_ENTRIES_BYTES_MAX - ENTRY_OVERHEAD_BYTES;

/// AppendFragment's fields before its bytes: seq, prev index, prev term,
/// commit, entry term, total length, offset.
pub const FRAGMENT_FIXED_BYTES: usize = 8 + 8 + 8 + 8 + 8 + 4 + 4;

/// Entry bytes carried by one AppendFragment that fills a datagram.
pub const FRAGMENT_CHUNK_BYTES_MAX: usize = PAYLOAD_BYTES_MAX - FRAGMENT_FIXED_BYTES;

/// SnapshotChunk's fields before its bytes: snapshot index and term, total
/// length, offset.
pub const SNAPSHOT_CHUNK_FIXED_BYTES: usize = 8 + 8 + 8 + 8;

/// Snapshot bytes carried by one SnapshotChunk that fills a datagram.
pub const SNAPSHOT_CHUNK_BYTES_MAX: usize = PAYLOAD_BYTES_MAX - SNAPSHOT_CHUNK_FIXED_BYTES;

/// Bytes of entries (each [`entry_encoded_bytes`]) that fit in one Append,
/// so the leader can pack entries up to the datagram limit.
pub const fn append_payload_capacity() -> usize {
    APPEND_ENTRIES_BYTES_MAX
}

/// Bytes one entry with a payload of `payload_bytes` takes in an Append.
pub const fn entry_encoded_bytes(payload_bytes: usize) -> usize {
    ENTRY_OVERHEAD_BYTES + payload_bytes
}

/// The smallest encoded address (IPv4) and peer, used to bound counts before
/// allocating.
const ADDR_BYTES_MIN: usize = 1 + 4 + 2;
const PEER_BYTES_MIN: usize = 8 + 2 * ADDR_BYTES_MIN;

const CRC_START_BYTES: usize = 0;
const PAYLOAD_LEN_OFFSET: usize = 40;

/// Message tags (the `kind` byte), in [`Message`]'s order.
mod kind {
    pub const REGISTER: u8 = 1;
    pub const REGISTERED: u8 = 2;
    pub const HEARTBEAT: u8 = 3;
    pub const STATUS: u8 = 4;
    pub const PREPARE: u8 = 5;
    pub const PROMISE: u8 = 6;
    pub const REJECT: u8 = 7;
    pub const NEW_LEADER: u8 = 8;
    pub const ADD_SERVER: u8 = 9;
    pub const REMOVE_SERVER: u8 = 10;
    pub const APPEND: u8 = 11;
    pub const APPEND_FRAGMENT: u8 = 12;
    pub const ACK: u8 = 13;
    pub const NACK: u8 = 14;
    pub const SNAPSHOT_CHUNK: u8 = 15;
    pub const SNAPSHOT_ACK: u8 = 16;
    pub const READ_INDEX: u8 = 17;
    pub const READ_INDEX_REPLY: u8 = 18;
    pub const REQUEST_VOTE: u8 = 19;
    pub const VOTE: u8 = 20;
    pub const LBS: u8 = 21;
}

/// LBs in one LB group at most (DESIGN §3c), and so in an [`Message::Lbs`].
pub const LBS_MAX: usize = 7;

macro_rules! newtype_u64 {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(pub u64);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}", self.0)
            }
        }
    };
}

newtype_u64!(
    /// A server's id, stable across restarts; 0 is the LB (and "no leader").
    ServerId
);
newtype_u64!(
    /// An election term; the LB never reuses one.
    Term
);
newtype_u64!(
    /// A log position; 0 is "before the first entry".
    LogIndex
);
newtype_u64!(
    /// Which cluster a datagram belongs to, so two clusters sharing a secret
    /// by mistake still ignore each other.
    ClusterId
);

impl ServerId {
    /// The LB's id in `from`/`to`, and "none" where a leader is named.
    pub const LB: ServerId = ServerId(0);
}

/// A replica group: every frame names the group it belongs to, so that one
/// process may host several (sharding). A server hosts one today, the first.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GroupId(pub u16);

impl GroupId {
    /// The group every server belongs to while each hosts one.
    pub const FIRST: GroupId = GroupId(0);
    /// The LB group: the LBs' own replicated log (DESIGN §3c), never a data
    /// group, so a datagram of one can never be taken for the other's.
    pub const LB: GroupId = GroupId(u16::MAX);
}

impl fmt::Display for GroupId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "g{}", self.0)
    }
}

/// The fields every datagram carries besides its message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub cluster: ClusterId,
    /// The replica group the message is about.
    pub group: GroupId,
    pub from: ServerId,
    pub to: ServerId,
    pub term: Term,
}

/// Remembers the frame version of another release last seen, so that a
/// peer of another release is reported once, not at every datagram it
/// sends (the LB and the servers both keep one).
#[derive(Debug, Default)]
pub struct OtherVersions {
    last: Option<u8>,
}

impl OtherVersions {
    /// Whether `error` is a frame of another version not reported yet: the
    /// caller then says so once.
    pub fn first_sight(&mut self, error: &FrameError) -> bool {
        let FrameError::UnsupportedVersion(version) = *error else {
            return false;
        };
        let first = self.last != Some(version);
        self.last = Some(version);
        first
    }
}

/// One datagram, decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    pub header: Header,
    pub message: Message,
}

/// A server as the LB announces it.
///
/// Format: `[id u64][tcp address][udp address]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Peer {
    pub id: ServerId,
    pub tcp: SocketAddr,
    pub udp: SocketAddr,
}

/// One log entry in an Append; its index is implied by its position.
///
/// Format: `[term u64][len u32][payload: len bytes]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub term: Term,
    pub payload: Bytes,
}

/// A server's role as it reports it to the LB. Format: one byte, 0 follower,
/// 1 leader, 2 learner; anything else is rejected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Follower,
    Leader,
    Learner,
}

impl Role {
    fn to_u8(self) -> u8 {
        match self {
            Role::Follower => 0,
            Role::Leader => 1,
            Role::Learner => 2,
        }
    }

    fn from_u8(byte: u8) -> Result<Role, FrameError> {
        match byte {
            0 => Ok(Role::Follower),
            1 => Ok(Role::Leader),
            2 => Ok(Role::Learner),
            other => Err(FrameError::UnknownRole(other)),
        }
    }
}

/// What a datagram says. The kind byte is the variant's position, from 1.
/// Payload formats are given per variant; counts are u16.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    /// Server→LB; the server's id is the header's `from`.
    /// `[tcp address][udp address]`
    Register { tcp: SocketAddr, udp: SocketAddr },
    /// LB→server. Empty.
    Registered,
    /// LB→server. `[leader u64 (0 = none)][count u16][peer]*`
    Heartbeat { leader: ServerId, peers: Vec<Peer> },
    /// Server→LB, the reply to a heartbeat, with the voters and learners of
    /// the server's latest configuration (DESIGN §3a).
    /// `[role u8][leader u64][last_term u64][last_index u64][commit_index u64]
    /// [applied_index u64][leader_contact_ms u32 (u32::MAX = never heard)]
    /// [count u16][voter u64]*[count u16][learner u64]*`
    Status {
        role: Role,
        leader: ServerId,
        last_term: Term,
        last_index: LogIndex,
        commit_index: LogIndex,
        applied_index: LogIndex,
        leader_contact_ms: u32,
        voters: Vec<ServerId>,
        learners: Vec<ServerId>,
    },
    /// LB→server, phase 1 of an election; the term is the header's. Empty.
    Prepare,
    /// Server→LB, with the voters of the promiser's latest configuration.
    /// `[last_term u64][last_index u64][count u16][voter u64]*`
    Promise {
        last_term: Term,
        last_index: LogIndex,
        voters: Vec<ServerId>,
    },
    /// The sender has a higher term, given in the header. Empty.
    Reject,
    /// LB→server. `[leader u64]`
    NewLeader { leader: ServerId },
    /// LB→leader. `[peer]`
    AddServer { peer: Peer },
    /// LB→leader. `[id u64]`
    RemoveServer { id: ServerId },
    /// Leader→follower; entries have indexes prev_index+1, ...; no entries
    /// is a heartbeat.
    /// `[seq u64][prev_index u64][prev_term u64][commit u64][count u16][entry]*`
    Append {
        seq: u64,
        prev_index: LogIndex,
        prev_term: Term,
        commit: LogIndex,
        entries: Vec<Entry>,
    },
    /// Leader→follower: bytes [offset, offset + bytes.len()) of the single
    /// entry at prev_index+1, too large for one Append.
    /// `[seq u64][prev_index u64][prev_term u64][commit u64][entry_term u64]
    /// [total_len u32][offset u32][bytes: the rest]`
    AppendFragment {
        seq: u64,
        prev_index: LogIndex,
        prev_term: Term,
        commit: LogIndex,
        entry_term: Term,
        total_len: u32,
        offset: u32,
        bytes: Bytes,
    },
    /// Follower→leader. `[seq u64][match_index u64][hold_ms u32]
    /// [memory_limit_bytes u64]`: the follower promises no new leader for
    /// `hold_ms` after it received the Append it answers (its own lease
    /// setting); the leader's read lease rests on the holds of a majority,
    /// so servers need not share the setting. `memory_limit_bytes` is the
    /// follower's `-m` (0: none): the leader refuses writes over the
    /// smallest limit in its group, so no replica holds more than its own.
    Ack {
        seq: u64,
        match_index: LogIndex,
        hold_ms: u32,
        memory_limit_bytes: u64,
    },
    /// Follower→leader. `[seq u64][hint_index u64][hold_ms u32]
    /// [memory_limit_bytes u64]`, the hold and limit as in Ack.
    Nack {
        seq: u64,
        hint_index: LogIndex,
        hold_ms: u32,
        memory_limit_bytes: u64,
    },
    /// Leader→follower: bytes [offset, offset + bytes.len()) of the snapshot.
    /// `[snapshot_index u64][snapshot_term u64][total_len u64][offset u64][bytes: the rest]`
    SnapshotChunk {
        snapshot_index: LogIndex,
        snapshot_term: Term,
        total_len: u64,
        offset: u64,
        bytes: Bytes,
    },
    /// Follower→leader: the snapshot is durable up to `offset`.
    /// `[snapshot_index u64][offset u64]`
    SnapshotAck {
        snapshot_index: LogIndex,
        offset: u64,
    },
    /// Follower→leader: the leader's commit index, once it has confirmed
    /// that it still leads (DESIGN §4a, reads on followers); `id` names the
    /// exchange. `[id u64]`
    ReadIndex { id: u64 },
    /// Leader→follower, the answer to `ReadIndex` `id`: reads that arrived
    /// before it was asked may be served once `index` is applied; index 0
    /// refuses (the asker is not a member of the leader's group).
    /// `[id u64][index u64]`
    ReadIndexReply { id: u64, index: LogIndex },
    /// Candidate→peer, in a group that elects its own leader (the LB group,
    /// DESIGN §3b): a vote for the header's term, for a candidate whose log
    /// ends here; with `pre`, only whether the peer would vote in the term
    /// after the header's (the candidate's own, unchanged: Raft thesis
    /// §9.6). `[last_term u64][last_index u64][pre u8 (0 or 1)]`
    RequestVote {
        last_term: Term,
        last_index: LogIndex,
        pre: bool,
    },
    /// Peer→candidate, the answer to RequestVote (`pre` as asked) in the
    /// peer's term. `[granted u8 (0 or 1)][pre u8 (0 or 1)]`
    Vote { granted: bool, pre: bool },
    /// LB→server: the LBs of the LB group (their UDP control addresses),
    /// as the group's list numbered `epoch` has them (DESIGN §3c); a
    /// server takes a list no older than the one it has.
    /// `[epoch u64][count u16][addr]*`, at most [`LBS_MAX`] addresses.
    Lbs { epoch: u64, lbs: Vec<SocketAddr> },
}

/// Why a frame could not be encoded or a datagram was rejected.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum FrameError {
    #[error(
        "datagram of {0} bytes is shorter than the {FRAME_OVERHEAD_BYTES}-byte frame overhead"
    )]
    TooShort(usize),
    #[error("datagram of {0} bytes is over the {DATAGRAM_BYTES_MAX}-byte limit")]
    TooLong(usize),
    #[error(
        "payload length field {payload_len} does not match a datagram of {datagram_len} bytes"
    )]
    LengthMismatch {
        payload_len: usize,
        datagram_len: usize,
    },
    /// Not sent by a holder of the cluster secret, or damaged in flight.
    #[error("bad MAC")]
    BadMac,
    #[error("bad frame magic")]
    BadMagic,
    #[error("unsupported frame version {0} (this build speaks version {FRAME_VERSION})")]
    UnsupportedVersion(u8),
    #[error("crc mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    BadCrc { stored: u32, computed: u32 },
    #[error("unknown message kind {0}")]
    UnknownKind(u8),
    #[error("payload of message kind {kind} ends inside a field")]
    PayloadTruncated { kind: u8 },
    #[error("payload of message kind {kind} has {extra} bytes after its last field")]
    TrailingBytes { kind: u8, extra: usize },
    #[error("unknown address family {0}")]
    BadAddressFamily(u8),
    #[error("unknown role {0}")]
    UnknownRole(u8),
    #[error("payload of message kind {kind} has {value} where a flag (0 or 1) belongs")]
    BadFlag { kind: u8, value: u8 },
    #[error("chunk of {len} bytes at offset {offset} runs past the total length {total_len}")]
    ChunkOutOfRange {
        offset: u64,
        len: usize,
        total_len: u64,
    },
    /// An LB list longer than [`LBS_MAX`].
    #[error("{0} LBs listed, over the {LBS_MAX} of a group")]
    TooManyLbs(usize),
    /// Encoding only: the message does not fit in one datagram.
    #[error("payload of {payload_len} bytes over the {PAYLOAD_BYTES_MAX}-byte limit")]
    PayloadTooLarge { payload_len: usize },
    /// Encoding only: the wire format carries no IPv6 flow info or scope id,
    /// so sending one would silently change the address.
    #[error("address {0} has an IPv6 flow info or scope id, which frames do not carry")]
    UnsupportedAddress(SocketAddr),
}

impl Message {
    /// The kind byte.
    pub fn kind(&self) -> u8 {
        match self {
            Message::Register { .. } => kind::REGISTER,
            Message::Registered => kind::REGISTERED,
            Message::Heartbeat { .. } => kind::HEARTBEAT,
            Message::Status { .. } => kind::STATUS,
            Message::Prepare => kind::PREPARE,
            Message::Promise { .. } => kind::PROMISE,
            Message::Reject => kind::REJECT,
            Message::NewLeader { .. } => kind::NEW_LEADER,
            Message::AddServer { .. } => kind::ADD_SERVER,
            Message::RemoveServer { .. } => kind::REMOVE_SERVER,
            Message::Append { .. } => kind::APPEND,
            Message::AppendFragment { .. } => kind::APPEND_FRAGMENT,
            Message::Ack { .. } => kind::ACK,
            Message::Nack { .. } => kind::NACK,
            Message::SnapshotChunk { .. } => kind::SNAPSHOT_CHUNK,
            Message::SnapshotAck { .. } => kind::SNAPSHOT_ACK,
            Message::ReadIndex { .. } => kind::READ_INDEX,
            Message::ReadIndexReply { .. } => kind::READ_INDEX_REPLY,
            Message::RequestVote { .. } => kind::REQUEST_VOTE,
            Message::Vote { .. } => kind::VOTE,
            Message::Lbs { .. } => kind::LBS,
        }
    }

    /// Bytes of the encoded payload; [`encode`] refuses it over
    /// [`PAYLOAD_BYTES_MAX`].
    pub fn payload_len(&self) -> usize {
        match self {
            Message::Register { tcp, udp } => addr_len(tcp) + addr_len(udp),
            Message::Registered | Message::Prepare | Message::Reject => 0,
            Message::Heartbeat { peers, .. } => 8 + 2 + peers.iter().map(peer_len).sum::<usize>(),
            Message::Status {
                voters, learners, ..
            } => 1 + 8 * 5 + 4 + 2 + 8 * voters.len() + 2 + 8 * learners.len(),
            Message::Promise { voters, .. } => 8 + 8 + 2 + 8 * voters.len(),
            Message::NewLeader { .. } | Message::RemoveServer { .. } => 8,
            Message::AddServer { peer } => peer_len(peer),
            Message::Append { entries, .. } => {
                APPEND_FIXED_BYTES
                    + entries
                        .iter()
                        .map(|e| entry_encoded_bytes(e.payload.len()))
                        .sum::<usize>()
            }
            Message::AppendFragment { bytes, .. } => FRAGMENT_FIXED_BYTES + bytes.len(),
            Message::Ack { .. } | Message::Nack { .. } => 28,
            Message::SnapshotAck { .. } | Message::ReadIndexReply { .. } => 16,
            Message::RequestVote { .. } => 17,
            Message::Vote { .. } => 2,
            Message::Lbs { lbs, .. } => 8 + 2 + lbs.iter().map(addr_len).sum::<usize>(),
            Message::ReadIndex { .. } => 8,
            Message::SnapshotChunk { bytes, .. } => SNAPSHOT_CHUNK_FIXED_BYTES + bytes.len(),
        }
    }

    /// Checks what the decoder would reject, so that whatever [`encode`]
    /// produces decodes to the same frame.
    fn validate(&self) -> Result<(), FrameError> {
        match self {
            Message::Register { tcp, udp } => {
                check_addr(tcp)?;
                check_addr(udp)
            }
            Message::Heartbeat { peers, .. } => peers.iter().try_for_each(check_peer),
            Message::AddServer { peer } => check_peer(peer),
            Message::Lbs { lbs, .. } => {
                if lbs.len() > LBS_MAX {
                    return Err(FrameError::TooManyLbs(lbs.len()));
                }
                lbs.iter().try_for_each(check_addr)
            }
            Message::AppendFragment {
                total_len,
                offset,
                bytes,
                ..
            } => check_chunk(u64::from(*offset), bytes.len(), u64::from(*total_len)),
            Message::SnapshotChunk {
                total_len,
                offset,
                bytes,
                ..
            } => check_chunk(*offset, bytes.len(), *total_len),
            _ => Ok(()),
        }
    }

    fn encode_payload(&self, out: &mut BytesMut) {
        match self {
            Message::Register { tcp, udp } => {
                put_addr(out, tcp);
                put_addr(out, udp);
            }
            Message::Registered | Message::Prepare | Message::Reject => {}
            Message::Heartbeat { leader, peers } => {
                out.put_u64_le(leader.0);
                put_count(out, peers.len());
                for peer in peers {
                    put_peer(out, peer);
                }
            }
            Message::Status {
                role,
                leader,
                last_term,
                last_index,
                commit_index,
                applied_index,
                leader_contact_ms,
                voters,
                learners,
            } => {
                out.put_u8(role.to_u8());
                out.put_u64_le(leader.0);
                out.put_u64_le(last_term.0);
                out.put_u64_le(last_index.0);
                out.put_u64_le(commit_index.0);
                out.put_u64_le(applied_index.0);
                out.put_u32_le(*leader_contact_ms);
                put_ids(out, voters);
                put_ids(out, learners);
            }
            Message::Promise {
                last_term,
                last_index,
                voters,
            } => {
                out.put_u64_le(last_term.0);
                out.put_u64_le(last_index.0);
                put_ids(out, voters);
            }
            Message::NewLeader { leader } => out.put_u64_le(leader.0),
            Message::AddServer { peer } => put_peer(out, peer),
            Message::RemoveServer { id } => out.put_u64_le(id.0),
            Message::Append {
                seq,
                prev_index,
                prev_term,
                commit,
                entries,
            } => {
                out.put_u64_le(*seq);
                out.put_u64_le(prev_index.0);
                out.put_u64_le(prev_term.0);
                out.put_u64_le(commit.0);
                put_count(out, entries.len());
                for entry in entries {
                    out.put_u64_le(entry.term.0);
                    // The payload length was checked against
                    // PAYLOAD_BYTES_MAX, far below u32::MAX.
                    out.put_u32_le(entry.payload.len() as u32);
                    out.put_slice(&entry.payload);
                }
            }
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
                out.put_u64_le(*seq);
                out.put_u64_le(prev_index.0);
                out.put_u64_le(prev_term.0);
                out.put_u64_le(commit.0);
                out.put_u64_le(entry_term.0);
                out.put_u32_le(*total_len);
                out.put_u32_le(*offset);
                out.put_slice(bytes);
            }
            Message::Ack {
                seq,
                match_index,
                hold_ms,
                memory_limit_bytes,
            } => {
                out.put_u64_le(*seq);
                out.put_u64_le(match_index.0);
                out.put_u32_le(*hold_ms);
                out.put_u64_le(*memory_limit_bytes);
            }
            Message::Nack {
                seq,
                hint_index,
                hold_ms,
                memory_limit_bytes,
            } => {
                out.put_u64_le(*seq);
                out.put_u64_le(hint_index.0);
                out.put_u32_le(*hold_ms);
                out.put_u64_le(*memory_limit_bytes);
            }
            Message::SnapshotChunk {
                snapshot_index,
                snapshot_term,
                total_len,
                offset,
                bytes,
            } => {
                out.put_u64_le(snapshot_index.0);
                out.put_u64_le(snapshot_term.0);
                out.put_u64_le(*total_len);
                out.put_u64_le(*offset);
                out.put_slice(bytes);
            }
            Message::SnapshotAck {
                snapshot_index,
                offset,
            } => {
                out.put_u64_le(snapshot_index.0);
                out.put_u64_le(*offset);
            }
            Message::ReadIndex { id } => out.put_u64_le(*id),
            Message::ReadIndexReply { id, index } => {
                out.put_u64_le(*id);
                out.put_u64_le(index.0);
            }
            Message::RequestVote {
                last_term,
                last_index,
                pre,
            } => {
                out.put_u64_le(last_term.0);
                out.put_u64_le(last_index.0);
                out.put_u8(u8::from(*pre));
            }
            Message::Vote { granted, pre } => {
                out.put_u8(u8::from(*granted));
                out.put_u8(u8::from(*pre));
            }
            Message::Lbs { epoch, lbs } => {
                out.put_u64_le(*epoch);
                put_count(out, lbs.len());
                for lb in lbs {
                    put_addr(out, lb);
                }
            }
        }
    }

    fn decode_payload(kind: u8, payload: &[u8]) -> Result<Message, FrameError> {
        let mut r = Reader::new(payload, PayloadErrors { kind });
        let message = match kind {
            kind::REGISTER => Message::Register {
                tcp: r.addr()?,
                udp: r.addr()?,
            },
            kind::REGISTERED => Message::Registered,
            kind::HEARTBEAT => {
                let leader = ServerId(r.u64()?);
                let count = r.count(PEER_BYTES_MIN)?;
                let mut peers = Vec::with_capacity(count);
                for _ in 0..count {
                    peers.push(r.peer()?);
                }
                Message::Heartbeat { leader, peers }
            }
            kind::STATUS => Message::Status {
                role: Role::from_u8(r.u8()?)?,
                leader: ServerId(r.u64()?),
                last_term: Term(r.u64()?),
                last_index: LogIndex(r.u64()?),
                commit_index: LogIndex(r.u64()?),
                applied_index: LogIndex(r.u64()?),
                leader_contact_ms: r.u32()?,
                voters: r.ids()?,
                learners: r.ids()?,
            },
            kind::PREPARE => Message::Prepare,
            kind::PROMISE => {
                let last_term = Term(r.u64()?);
                let last_index = LogIndex(r.u64()?);
                let voters = r.ids()?;
                Message::Promise {
                    last_term,
                    last_index,
                    voters,
                }
            }
            kind::REJECT => Message::Reject,
            kind::NEW_LEADER => Message::NewLeader {
                leader: ServerId(r.u64()?),
            },
            kind::ADD_SERVER => Message::AddServer { peer: r.peer()? },
            kind::REMOVE_SERVER => Message::RemoveServer {
                id: ServerId(r.u64()?),
            },
            kind::APPEND => {
                let seq = r.u64()?;
                let prev_index = LogIndex(r.u64()?);
                let prev_term = Term(r.u64()?);
                let commit = LogIndex(r.u64()?);
                let count = r.count(ENTRY_OVERHEAD_BYTES)?;
                let mut entries = Vec::with_capacity(count);
                for _ in 0..count {
                    let term = Term(r.u64()?);
                    let len = r.u32()? as usize;
                    let payload = Bytes::copy_from_slice(r.bytes(len)?);
                    entries.push(Entry { term, payload });
                }
                Message::Append {
                    seq,
                    prev_index,
                    prev_term,
                    commit,
                    entries,
                }
            }
            kind::APPEND_FRAGMENT => {
                let seq = r.u64()?;
                let prev_index = LogIndex(r.u64()?);
                let prev_term = Term(r.u64()?);
                let commit = LogIndex(r.u64()?);
                let entry_term = Term(r.u64()?);
                let total_len = r.u32()?;
                let offset = r.u32()?;
                let rest = r.rest();
                check_chunk(u64::from(offset), rest.len(), u64::from(total_len))?;
                Message::AppendFragment {
                    seq,
                    prev_index,
                    prev_term,
                    commit,
                    entry_term,
                    total_len,
                    offset,
                    bytes: Bytes::copy_from_slice(rest),
                }
            }
            kind::ACK => Message::Ack {
                seq: r.u64()?,
                match_index: LogIndex(r.u64()?),
                hold_ms: r.u32()?,
                memory_limit_bytes: r.u64()?,
            },
            kind::NACK => Message::Nack {
                seq: r.u64()?,
                hint_index: LogIndex(r.u64()?),
                hold_ms: r.u32()?,
                memory_limit_bytes: r.u64()?,
            },
            kind::SNAPSHOT_CHUNK => {
                let snapshot_index = LogIndex(r.u64()?);
                let snapshot_term = Term(r.u64()?);
                let total_len = r.u64()?;
                let offset = r.u64()?;
                let rest = r.rest();
                check_chunk(offset, rest.len(), total_len)?;
                Message::SnapshotChunk {
                    snapshot_index,
                    snapshot_term,
                    total_len,
                    offset,
                    bytes: Bytes::copy_from_slice(rest),
                }
            }
            kind::SNAPSHOT_ACK => Message::SnapshotAck {
                snapshot_index: LogIndex(r.u64()?),
                offset: r.u64()?,
            },
            kind::READ_INDEX => Message::ReadIndex { id: r.u64()? },
            kind::READ_INDEX_REPLY => Message::ReadIndexReply {
                id: r.u64()?,
                index: LogIndex(r.u64()?),
            },
            kind::REQUEST_VOTE => Message::RequestVote {
                last_term: Term(r.u64()?),
                last_index: LogIndex(r.u64()?),
                pre: flag(kind, r.u8()?)?,
            },
            kind::VOTE => Message::Vote {
                granted: flag(kind, r.u8()?)?,
                pre: flag(kind, r.u8()?)?,
            },
            kind::LBS => {
                let epoch = r.u64()?;
                let count = r.count(ADDR_BYTES_MIN)?;
                if count > LBS_MAX {
                    return Err(FrameError::TooManyLbs(count));
                }
                let mut lbs = Vec::with_capacity(count);
                for _ in 0..count {
                    lbs.push(r.addr()?);
                }
                Message::Lbs { epoch, lbs }
            }
            other => return Err(FrameError::UnknownKind(other)),
        };
        r.finish()?;
        Ok(message)
    }
}

impl Frame {
    /// Bytes of the datagram [`encode`] produces.
    pub fn datagram_len(&self) -> usize {
        FRAME_OVERHEAD_BYTES + self.message.payload_len()
    }
}

/// Appends exactly one datagram for `frame` to `out`. Refuses (leaving `out`
/// unchanged) a frame over [`DATAGRAM_BYTES_MAX`] or one the decoder would
/// reject, so whatever is sent decodes to `frame`.
pub fn encode(
    frame: &Frame,
    secret: &[u8; SECRET_BYTES],
    out: &mut BytesMut,
) -> Result<(), FrameError> {
    let payload_len = frame.message.payload_len();
    if payload_len > PAYLOAD_BYTES_MAX {
        return Err(FrameError::PayloadTooLarge { payload_len });
    }
    frame.message.validate()?;
    let start = out.len();
    out.reserve(FRAME_OVERHEAD_BYTES + payload_len);
    put_header(out, &frame.header, frame.message.kind(), payload_len);
    frame.message.encode_payload(out);
    assert_eq!(
        out.len() - start,
        HEADER_BYTES + payload_len,
        "Message::payload_len disagrees with Message::encode_payload"
    );
    put_trailer(out, start, secret);
    Ok(())
}

/// Appends one datagram of message kind `kind` around raw `payload` bytes,
/// with a valid CRC and MAC. [`encode`] is this plus the payload encoding;
/// tests and fuzzers use it to put arbitrary payloads behind a valid MAC, so
/// that the payload decoder is exercised and not only the MAC check.
pub fn seal(
    header: &Header,
    kind: u8,
    payload: &[u8],
    secret: &[u8; SECRET_BYTES],
    out: &mut BytesMut,
) -> Result<(), FrameError> {
    if payload.len() > PAYLOAD_BYTES_MAX {
        return Err(FrameError::PayloadTooLarge {
            payload_len: payload.len(),
        });
    }
    let start = out.len();
    out.reserve(FRAME_OVERHEAD_BYTES + payload.len());
    put_header(out, header, kind, payload.len());
    out.put_slice(payload);
    put_trailer(out, start, secret);
    Ok(())
}

/// Decodes one datagram. Any failure is an error, never a panic;
/// [`FrameError::BadMac`] means the datagram is not authentic (or was
/// damaged) and nothing past the length fields was looked at.
pub fn decode(datagram: &[u8], secret: &[u8; SECRET_BYTES]) -> Result<Frame, FrameError> {
    let datagram_len = datagram.len();
    if datagram_len < FRAME_OVERHEAD_BYTES {
        return Err(FrameError::TooShort(datagram_len));
    }
    if datagram_len > DATAGRAM_BYTES_MAX {
        return Err(FrameError::TooLong(datagram_len));
    }
    let payload_len = usize::from(le_u16(&datagram[PAYLOAD_LEN_OFFSET..HEADER_BYTES]));
    if FRAME_OVERHEAD_BYTES + payload_len != datagram_len {
        return Err(FrameError::LengthMismatch {
            payload_len,
            datagram_len,
        });
    }

    let mac_start = datagram_len - MAC_BYTES;
    let expected = mac(secret, &datagram[..mac_start]);
    if !mac_matches(&expected, &datagram[mac_start..]) {
        return Err(FrameError::BadMac);
    }

    // Authentic from here on: what remains can only fail through a bug or a
    // version mismatch on the sender, or damage the MAC missed (it cannot).
    if datagram[0..4] != FRAME_MAGIC {
        return Err(FrameError::BadMagic);
    }
    if datagram[4] != FRAME_VERSION {
        return Err(FrameError::UnsupportedVersion(datagram[4]));
    }
    let kind = datagram[5];
    let crc_start = HEADER_BYTES + payload_len;
    let stored = le_u32(&datagram[crc_start..mac_start]);
    let computed = crc32c::crc32c(&datagram[CRC_START_BYTES..crc_start]);
    if stored != computed {
        return Err(FrameError::BadCrc { stored, computed });
    }
    let header = Header {
        cluster: ClusterId(le_u64(&datagram[8..16])),
        group: GroupId(u16::from_le_bytes([datagram[6], datagram[7]])),
        from: ServerId(le_u64(&datagram[16..24])),
        to: ServerId(le_u64(&datagram[24..32])),
        term: Term(le_u64(&datagram[32..40])),
    };
    let message = Message::decode_payload(kind, &datagram[HEADER_BYTES..crc_start])?;
    Ok(Frame { header, message })
}

fn put_header(out: &mut BytesMut, header: &Header, kind: u8, payload_len: usize) {
    out.put_slice(&FRAME_MAGIC);
    out.put_u8(FRAME_VERSION);
    out.put_u8(kind);
    out.put_u16_le(header.group.0);
    out.put_u64_le(header.cluster.0);
    out.put_u64_le(header.from.0);
    out.put_u64_le(header.to.0);
    out.put_u64_le(header.term.0);
    // Callers checked payload_len <= PAYLOAD_BYTES_MAX < u16::MAX.
    out.put_u16_le(payload_len as u16);
}

/// Appends CRC and MAC over the datagram that starts at `start` in `out`.
fn put_trailer(out: &mut BytesMut, start: usize, secret: &[u8; SECRET_BYTES]) {
    let crc = crc32c::crc32c(&out[start + CRC_START_BYTES..]);
    out.put_u32_le(crc);
    let tag = mac(secret, &out[start..]);
    out.put_slice(&tag);
    debug_assert!(out.len() - start <= DATAGRAM_BYTES_MAX);
}

fn mac(secret: &[u8; SECRET_BYTES], covered: &[u8]) -> [u8; MAC_BYTES] {
    let hash = blake3::keyed_hash(secret, covered);
    let mut tag = [0u8; MAC_BYTES];
    tag.copy_from_slice(&hash.as_bytes()[..MAC_BYTES]);
    tag
}

/// Compares every byte whatever the first difference, so the time taken
/// does not tell a forger how many leading bytes of a guessed MAC are right.
fn mac_matches(expected: &[u8; MAC_BYTES], received: &[u8]) -> bool {
    if received.len() != MAC_BYTES {
        return false;
    }
    let diff = expected
        .iter()
        .zip(received)
        .fold(0u8, |acc, (a, b)| acc | (a ^ b));
    // black_box keeps the optimiser from turning the fold into an early exit.
    std::hint::black_box(diff) == 0
}

fn peer_len(peer: &Peer) -> usize {
    8 + addr_len(&peer.tcp) + addr_len(&peer.udp)
}

fn check_addr(addr: &SocketAddr) -> Result<(), FrameError> {
    if wire::addr_encodable(addr) {
        Ok(())
    } else {
        Err(FrameError::UnsupportedAddress(*addr))
    }
}

fn check_peer(peer: &Peer) -> Result<(), FrameError> {
    check_addr(&peer.tcp)?;
    check_addr(&peer.udp)
}

/// A chunk must lie inside the whole it is part of, or reassembly would
/// write past the buffer sized by `total_len`.
fn check_chunk(offset: u64, len: usize, total_len: u64) -> Result<(), FrameError> {
    let fits = u64::try_from(len)
        .ok()
        .and_then(|len| offset.checked_add(len))
        .is_some_and(|end| end <= total_len);
    if fits {
        Ok(())
    } else {
        Err(FrameError::ChunkOutOfRange {
            offset,
            len,
            total_len,
        })
    }
}

/// A flag byte: 0 or 1, nothing else.
fn flag(kind: u8, value: u8) -> Result<bool, FrameError> {
    match value {
        0 => Ok(false),
        1 => Ok(true),
        value => Err(FrameError::BadFlag { kind, value }),
    }
}

fn put_peer(out: &mut BytesMut, peer: &Peer) {
    out.put_u64_le(peer.id.0);
    put_addr(out, &peer.tcp);
    put_addr(out, &peer.udp);
}

fn put_count(out: &mut BytesMut, count: usize) {
    // The payload fits in PAYLOAD_BYTES_MAX and every counted item takes at
    // least one byte, so the count is below u16::MAX.
    let count = u16::try_from(count).expect("count bounded by PAYLOAD_BYTES_MAX");
    out.put_u16_le(count);
}

/// A u16-counted list of server ids: `[count u16][id u64]*`.
fn put_ids(out: &mut BytesMut, ids: &[ServerId]) {
    put_count(out, ids.len());
    for id in ids {
        out.put_u64_le(id.0);
    }
}

/// A payload's reader: the shared one, with this format's errors.
type Reader<'a> = wire::Reader<'a, PayloadErrors>;

/// Errors while reading the payload of a message of kind `kind`.
struct PayloadErrors {
    kind: u8,
}

impl wire::ReadErrors for PayloadErrors {
    type Error = FrameError;
    fn truncated(&self) -> FrameError {
        FrameError::PayloadTruncated { kind: self.kind }
    }
    fn bad_address_family(&self, family: u8) -> FrameError {
        FrameError::BadAddressFamily(family)
    }
}

/// The payload reads of its own that this format adds.
impl Reader<'_> {
    /// Reads a u16 count of items of at least `item_bytes_min` bytes each and
    /// checks the payload could hold that many, so a forged or buggy count
    /// cannot make the caller reserve more than the datagram's own size.
    fn count(&mut self, item_bytes_min: usize) -> Result<usize, FrameError> {
        let count = usize::from(self.u16()?);
        if count * item_bytes_min > self.remaining() {
            return Err(wire::ReadErrors::truncated(self.errors()));
        }
        Ok(count)
    }

    /// A u16-counted list of server ids, the count checked before allocating.
    fn ids(&mut self) -> Result<Vec<ServerId>, FrameError> {
        let count = self.count(8)?;
        let mut ids = Vec::with_capacity(count);
        for _ in 0..count {
            ids.push(ServerId(self.u64()?));
        }
        Ok(ids)
    }

    fn peer(&mut self) -> Result<Peer, FrameError> {
        Ok(Peer {
            id: ServerId(self.u64()?),
            tcp: self.addr()?,
            udp: self.addr()?,
        })
    }

    /// A payload is exactly its fields: trailing bytes mean the sender
    /// speaks a format this build does not.
    fn finish(&self) -> Result<(), FrameError> {
        if self.remaining() == 0 {
            Ok(())
        } else {
            Err(FrameError::TrailingBytes {
                kind: self.errors().kind,
                extra: self.remaining(),
            })
        }
    }
}

fn le_u16(bytes: &[u8]) -> u16 {
    let mut raw = [0u8; 2];
    raw.copy_from_slice(bytes);
    u16::from_le_bytes(raw)
}

fn le_u32(bytes: &[u8]) -> u32 {
    let mut raw = [0u8; 4];
    raw.copy_from_slice(bytes);
    u32::from_le_bytes(raw)
}

fn le_u64(bytes: &[u8]) -> u64 {
    let mut raw = [0u8; 8];
    raw.copy_from_slice(bytes);
    u64::from_le_bytes(raw)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::net::{SocketAddrV4, SocketAddrV6};

    const SECRET: [u8; SECRET_BYTES] = *b"store frame golden secret 32 B!!";

    fn header() -> Header {
        Header {
            cluster: ClusterId(0x0102_0304_0506_0708),
            group: GroupId(0x0a0b),
            from: ServerId(2),
            to: ServerId(3),
            term: Term(5),
        }
    }

    fn encoded(frame: &Frame) -> Vec<u8> {
        let mut out = BytesMut::new();
        encode(frame, &SECRET, &mut out).expect("frame fits");
        assert_eq!(out.len(), frame.datagram_len());
        out.to_vec()
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    fn register() -> Frame {
        Frame {
            header: Header {
                to: ServerId::LB,
                ..header()
            },
            message: Message::Register {
                tcp: "127.0.0.1:11211".parse().expect("literal"),
                udp: "[::1]:7000".parse().expect("literal"),
            },
        }
    }

    fn append_two() -> Frame {
        Frame {
            header: header(),
            message: Message::Append {
                seq: 9,
                prev_index: LogIndex(10),
                prev_term: Term(4),
                commit: LogIndex(8),
                entries: vec![
                    Entry {
                        term: Term(4),
                        payload: Bytes::from_static(b"abc"),
                    },
                    Entry {
                        term: Term(5),
                        payload: Bytes::from_static(b""),
                    },
                ],
            },
        }
    }

    fn ack() -> Frame {
        Frame {
            header: Header {
                from: ServerId(3),
                to: ServerId(2),
                ..header()
            },
            message: Message::Ack {
                seq: 9,
                match_index: LogIndex(12),
                hold_ms: 300,
                memory_limit_bytes: 64 << 20,
            },
        }
    }

    /// The common header of the golden frames, field by field, so a reader
    /// can check the bytes against the table in the module docs.
    fn golden_header(kind: &str, from: &str, to: &str, payload_len: &str) -> String {
        [
            "5352504c",         // magic "SRPL"
            "04",               // version
            kind,               // kind
            "0b0a",             // group 0x0a0b
            "0807060504030201", // cluster id
            from,
            to,
            "0500000000000000", // term 5
            payload_len,
        ]
        .concat()
    }

    /// Pins the wire format: a change here breaks mixed-version clusters.
    #[test]
    fn golden_bytes_register() {
        let bytes = encoded(&register());
        let expected_prefix = [
            golden_header("01", "0200000000000000", "0000000000000000", "1a00"),
            "047f000001cb2b".into(), // tcp 127.0.0.1:11211
            "0600000000000000000000000000000001581b".into(), // udp [::1]:7000
        ]
        .concat();
        let (body, trailer) = bytes.split_at(bytes.len() - CRC_BYTES - MAC_BYTES);
        assert_eq!(hex(body), expected_prefix);
        assert_eq!(hex(trailer), "85f85768b390701a5907b3655f1d2afd45c49398");
        assert_eq!(decode(&bytes, &SECRET), Ok(register()));
    }

    #[test]
    fn golden_bytes_append_two_entries() {
        let bytes = encoded(&append_two());
        let expected_prefix = [
            golden_header("0b", "0200000000000000", "0300000000000000", "3d00"),
            "0900000000000000".into(),               // seq
            "0a00000000000000".into(),               // prev index
            "0400000000000000".into(),               // prev term
            "0800000000000000".into(),               // commit
            "0200".into(),                           // two entries
            "040000000000000003000000616263".into(), // term 4, "abc"
            "050000000000000000000000".into(),       // term 5, empty
        ]
        .concat();
        let (body, trailer) = bytes.split_at(bytes.len() - CRC_BYTES - MAC_BYTES);
        assert_eq!(hex(body), expected_prefix);
        assert_eq!(hex(trailer), "7d552f042fb6e94241b2d7d4812f01f6de4a0250");
        assert_eq!(decode(&bytes, &SECRET), Ok(append_two()));
    }

    #[test]
    fn golden_bytes_ack() {
        let bytes = encoded(&ack());
        let expected_prefix = [
            golden_header("0d", "0300000000000000", "0200000000000000", "1c00"),
            "0900000000000000".into(), // seq
            "0c00000000000000".into(), // match index
            "2c010000".into(),         // hold 300 ms
            "0000000400000000".into(), // memory limit 64 MiB
        ]
        .concat();
        let (body, trailer) = bytes.split_at(bytes.len() - CRC_BYTES - MAC_BYTES);
        assert_eq!(hex(body), expected_prefix);
        assert_eq!(hex(trailer), "6d2d2da589459614e97e801c6f4523c34653a952");
        assert_eq!(decode(&bytes, &SECRET), Ok(ack()));
    }

    fn status() -> Frame {
        Frame {
            header: Header {
                from: ServerId(3),
                to: ServerId::LB,
                ..header()
            },
            message: Message::Status {
                role: Role::Leader,
                leader: ServerId(3),
                last_term: Term(5),
                last_index: LogIndex(12),
                commit_index: LogIndex(11),
                applied_index: LogIndex(10),
                leader_contact_ms: 0,
                voters: vec![ServerId(3), ServerId(4)],
                learners: vec![ServerId(7)],
            },
        }
    }

    #[test]
    fn golden_bytes_status() {
        let bytes = encoded(&status());
        let expected_prefix = [
            golden_header("04", "0300000000000000", "0000000000000000", "4900"),
            "01".into(),               // role leader
            "0300000000000000".into(), // leader
            "0500000000000000".into(), // last term
            "0c00000000000000".into(), // last index
            "0b00000000000000".into(), // commit index
            "0a00000000000000".into(), // applied index
            "00000000".into(),         // leader contact ms
            "0200".into(),             // two voters
            "03000000000000000400000000000000".into(),
            "0100".into(), // one learner
            "0700000000000000".into(),
        ]
        .concat();
        let (body, trailer) = bytes.split_at(bytes.len() - CRC_BYTES - MAC_BYTES);
        assert_eq!(hex(body), expected_prefix);
        assert_eq!(hex(trailer), "fcaece25c13ead9778bd88c7c6b31838a7200a5d");
        assert_eq!(decode(&bytes, &SECRET), Ok(status()));
    }

    #[test]
    fn trailer_is_crc32c_then_truncated_keyed_blake3() {
        // Computed independently of put_trailer, from the format table.
        let bytes = encoded(&append_two());
        let crc_start = bytes.len() - CRC_BYTES - MAC_BYTES;
        let mac_start = bytes.len() - MAC_BYTES;
        let crc = crc32c::crc32c(&bytes[..crc_start]);
        assert_eq!(bytes[crc_start..mac_start], crc.to_le_bytes());
        let full = blake3::keyed_hash(&SECRET, &bytes[..mac_start]);
        assert_eq!(bytes[mac_start..], full.as_bytes()[..MAC_BYTES]);
    }

    #[test]
    fn overhead_and_limits() {
        assert_eq!(FRAME_OVERHEAD_BYTES, 62);
        assert_eq!(PAYLOAD_BYTES_MAX, 1338);
        assert_eq!(append_payload_capacity(), 1304);
        assert_eq!(ENTRY_PAYLOAD_BYTES_MAX, 1292);
        assert_eq!(FRAGMENT_CHUNK_BYTES_MAX, 1290);
        assert_eq!(SNAPSHOT_CHUNK_BYTES_MAX, 1306);
    }

    fn append_one(payload_bytes: usize) -> Frame {
        Frame {
            header: header(),
            message: Message::Append {
                seq: 1,
                prev_index: LogIndex(0),
                prev_term: Term(0),
                commit: LogIndex(0),
                entries: vec![Entry {
                    term: Term(1),
                    payload: Bytes::from(vec![0xab; payload_bytes]),
                }],
            },
        }
    }

    fn fragment(chunk_bytes: usize) -> Frame {
        Frame {
            header: header(),
            message: Message::AppendFragment {
                seq: 1,
                prev_index: LogIndex(0),
                prev_term: Term(0),
                commit: LogIndex(0),
                entry_term: Term(1),
                total_len: 1 << 20,
                offset: 4096,
                bytes: Bytes::from(vec![0xcd; chunk_bytes]),
            },
        }
    }

    fn snapshot_chunk(chunk_bytes: usize) -> Frame {
        Frame {
            header: header(),
            message: Message::SnapshotChunk {
                snapshot_index: LogIndex(100),
                snapshot_term: Term(3),
                total_len: 1 << 40,
                offset: 1 << 30,
                bytes: Bytes::from(vec![0xef; chunk_bytes]),
            },
        }
    }

    /// The size helpers are exact: a frame built to them fills a datagram,
    /// one byte more is refused and leaves `out` as it was.
    #[test]
    fn encoder_refuses_to_exceed_datagram_bytes_max() {
        let fullest = [
            append_one(ENTRY_PAYLOAD_BYTES_MAX),
            fragment(FRAGMENT_CHUNK_BYTES_MAX),
            snapshot_chunk(SNAPSHOT_CHUNK_BYTES_MAX),
        ];
        for frame in &fullest {
            let bytes = encoded(frame);
            assert_eq!(bytes.len(), DATAGRAM_BYTES_MAX);
            assert_eq!(decode(&bytes, &SECRET).as_ref(), Ok(frame));
        }
        let too_big = [
            append_one(ENTRY_PAYLOAD_BYTES_MAX + 1),
            fragment(FRAGMENT_CHUNK_BYTES_MAX + 1),
            snapshot_chunk(SNAPSHOT_CHUNK_BYTES_MAX + 1),
        ];
        for frame in &too_big {
            let mut out = BytesMut::from(&b"earlier"[..]);
            assert_eq!(
                encode(frame, &SECRET, &mut out),
                Err(FrameError::PayloadTooLarge {
                    payload_len: PAYLOAD_BYTES_MAX + 1
                })
            );
            assert_eq!(&out[..], b"earlier");
        }
        let mut out = BytesMut::new();
        assert!(matches!(
            seal(
                &header(),
                kind::ACK,
                &[0; PAYLOAD_BYTES_MAX + 1],
                &SECRET,
                &mut out
            ),
            Err(FrameError::PayloadTooLarge { .. })
        ));
        assert!(out.is_empty());
    }

    #[test]
    fn encode_appends_after_existing_bytes() {
        let mut out = BytesMut::from(&b"xy"[..]);
        encode(&ack(), &SECRET, &mut out).expect("fits");
        assert_eq!(&out[..2], b"xy");
        assert_eq!(decode(&out[2..], &SECRET), Ok(ack()));
    }

    #[test]
    fn encoder_refuses_what_the_decoder_would_reject() {
        let out_of_range = Frame {
            header: header(),
            message: Message::AppendFragment {
                seq: 1,
                prev_index: LogIndex(0),
                prev_term: Term(0),
                commit: LogIndex(0),
                entry_term: Term(1),
                total_len: 10,
                offset: 8,
                bytes: Bytes::from_static(b"abc"),
            },
        };
        let mut out = BytesMut::new();
        assert_eq!(
            encode(&out_of_range, &SECRET, &mut out),
            Err(FrameError::ChunkOutOfRange {
                offset: 8,
                len: 3,
                total_len: 10
            })
        );
        let scoped: SocketAddr = "[fe80::1%2]:7000".parse().expect("literal");
        let frame = Frame {
            header: header(),
            message: Message::Register {
                tcp: "127.0.0.1:1".parse().expect("literal"),
                udp: scoped,
            },
        };
        assert_eq!(
            encode(&frame, &SECRET, &mut out),
            Err(FrameError::UnsupportedAddress(scoped))
        );
        assert!(out.is_empty());
    }

    /// The payload-length field is checked before the MAC (it needs no
    /// trust), so flipping one of its bits is a length mismatch; a flip
    /// anywhere else fails the MAC, because the MAC covers every byte.
    fn assert_every_bit_flip_rejected(bytes: &[u8]) {
        for bit in 0..bytes.len() * 8 {
            let mut flipped = bytes.to_vec();
            flipped[bit / 8] ^= 1 << (bit % 8);
            let result = decode(&flipped, &SECRET);
            if (PAYLOAD_LEN_OFFSET..HEADER_BYTES).contains(&(bit / 8)) {
                assert!(
                    matches!(result, Err(FrameError::LengthMismatch { .. })),
                    "bit {bit}: {result:?}"
                );
            } else {
                assert_eq!(result, Err(FrameError::BadMac), "bit {bit}");
            }
        }
    }

    #[test]
    fn every_flipped_bit_is_rejected() {
        for frame in [register(), append_two(), ack()] {
            assert_every_bit_flip_rejected(&encoded(&frame));
        }
    }

    #[test]
    fn wrong_secret_is_bad_mac() {
        let mut other = SECRET;
        other[31] ^= 1;
        for frame in [register(), append_two(), ack()] {
            assert_eq!(decode(&encoded(&frame), &other), Err(FrameError::BadMac));
        }
    }

    #[test]
    fn every_truncation_and_extension_is_rejected() {
        for frame in [
            register(),
            append_two(),
            ack(),
            append_one(ENTRY_PAYLOAD_BYTES_MAX),
        ] {
            let bytes = encoded(&frame);
            for len in 0..bytes.len() {
                let result = decode(&bytes[..len], &SECRET);
                if len < FRAME_OVERHEAD_BYTES {
                    assert_eq!(result, Err(FrameError::TooShort(len)));
                } else {
                    assert!(
                        matches!(result, Err(FrameError::LengthMismatch { .. })),
                        "len {len}: {result:?}"
                    );
                }
            }
            let mut longer = bytes.clone();
            longer.push(0);
            assert!(decode(&longer, &SECRET).is_err());
        }
        assert_eq!(
            decode(&[0; DATAGRAM_BYTES_MAX + 1], &SECRET),
            Err(FrameError::TooLong(DATAGRAM_BYTES_MAX + 1))
        );
    }

    fn sealed_raw(mutate: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
        // Rebuilds CRC and MAC after `mutate` edits header or payload, so the
        // checks after the MAC are reached.
        let mut body = encoded(&ack());
        body.truncate(body.len() - CRC_BYTES - MAC_BYTES);
        mutate(&mut body);
        let mut out = BytesMut::from(&body[..]);
        put_trailer(&mut out, 0, &SECRET);
        out.to_vec()
    }

    #[test]
    fn another_version_is_reported_once_per_version() {
        let mut seen = OtherVersions::default();
        let v3 = FrameError::UnsupportedVersion(3);
        assert!(seen.first_sight(&v3));
        assert!(!seen.first_sight(&v3));
        assert!(!seen.first_sight(&FrameError::BadMagic));
        assert!(seen.first_sight(&FrameError::UnsupportedVersion(5)));
        assert!(seen.first_sight(&v3));
    }

    #[test]
    fn authentic_but_malformed_headers_are_rejected() {
        let bad_magic = sealed_raw(|b| b[0] = b'X');
        assert_eq!(decode(&bad_magic, &SECRET), Err(FrameError::BadMagic));
        // Version 3 is the one before frames carried the group.
        let bad_version = sealed_raw(|b| b[4] = 3);
        assert_eq!(
            decode(&bad_version, &SECRET),
            Err(FrameError::UnsupportedVersion(3))
        );
        let group = sealed_raw(|b| b[7] = 1);
        assert_eq!(
            decode(&group, &SECRET).map(|f| f.header.group),
            Ok(GroupId(0x010b))
        );
        let unknown = sealed_raw(|b| b[5] = 22);
        assert_eq!(decode(&unknown, &SECRET), Err(FrameError::UnknownKind(22)));
        // A Vote's flags are 1 or 0, nothing else.
        for (bytes, decoded) in [
            ([0, 1], Ok((false, true))),
            ([1, 0], Ok((true, false))),
            ([2, 0], Err(2)),
            ([1, 7], Err(7)),
        ] {
            let mut out = BytesMut::new();
            seal(&header(), kind::VOTE, &bytes, &SECRET, &mut out).unwrap();
            let expected = decoded
                .map(|(granted, pre)| Message::Vote { granted, pre })
                .map_err(|value| FrameError::BadFlag {
                    kind: kind::VOTE,
                    value,
                });
            assert_eq!(decode(&out, &SECRET).map(|f| f.message), expected);
        }
        let zero = sealed_raw(|b| b[5] = 0);
        assert_eq!(decode(&zero, &SECRET), Err(FrameError::UnknownKind(0)));

        // A CRC that does not match under a valid MAC: only a buggy sender
        // produces it, and the decoder still refuses it.
        let mut bad_crc = encoded(&ack());
        let crc_start = bad_crc.len() - CRC_BYTES - MAC_BYTES;
        bad_crc[crc_start] ^= 1;
        bad_crc.truncate(bad_crc.len() - MAC_BYTES);
        let tag = mac(&SECRET, &bad_crc);
        bad_crc.extend_from_slice(&tag);
        assert!(matches!(
            decode(&bad_crc, &SECRET),
            Err(FrameError::BadCrc { .. })
        ));
    }

    fn sealed(kind: u8, payload: &[u8]) -> Result<Frame, FrameError> {
        let mut out = BytesMut::new();
        seal(&header(), kind, payload, &SECRET, &mut out).expect("small payload");
        decode(&out, &SECRET)
    }

    #[test]
    fn authentic_but_malformed_payloads_are_rejected() {
        let t = |kind| FrameError::PayloadTruncated { kind };
        assert_eq!(sealed(kind::ACK, &[0; 27]), Err(t(kind::ACK)));
        assert_eq!(
            sealed(kind::ACK, &[0; 29]),
            Err(FrameError::TrailingBytes {
                kind: kind::ACK,
                extra: 1
            })
        );
        assert_eq!(
            sealed(kind::PREPARE, &[0]),
            Err(FrameError::TrailingBytes {
                kind: kind::PREPARE,
                extra: 1
            })
        );
        assert_eq!(
            sealed(kind::REGISTER, &[5, 0, 0, 0, 0, 0, 0]),
            Err(FrameError::BadAddressFamily(5))
        );
        let mut status = vec![3];
        status.extend_from_slice(&[0; 44]);
        assert_eq!(
            sealed(kind::STATUS, &status),
            Err(FrameError::UnknownRole(3))
        );

        // A count larger than the payload could hold is refused before any
        // allocation: 0xffff voters in a payload of 18 bytes.
        let mut promise = vec![0; 16];
        promise.extend_from_slice(&u16::MAX.to_le_bytes());
        assert_eq!(sealed(kind::PROMISE, &promise), Err(t(kind::PROMISE)));
        let mut status = vec![0; 45];
        status.extend_from_slice(&0u16.to_le_bytes());
        status.extend_from_slice(&u16::MAX.to_le_bytes());
        assert_eq!(sealed(kind::STATUS, &status), Err(t(kind::STATUS)));
        // Status without its learner list is cut short.
        let mut status = vec![0; 45];
        status.extend_from_slice(&0u16.to_le_bytes());
        assert_eq!(sealed(kind::STATUS, &status), Err(t(kind::STATUS)));
        let mut heartbeat = vec![0; 8];
        heartbeat.extend_from_slice(&1u16.to_le_bytes());
        heartbeat.extend_from_slice(&[0; PEER_BYTES_MIN - 1]);
        assert_eq!(sealed(kind::HEARTBEAT, &heartbeat), Err(t(kind::HEARTBEAT)));

        // An entry length beyond the payload.
        let mut append = vec![0; 32];
        append.extend_from_slice(&1u16.to_le_bytes());
        append.extend_from_slice(&[0; 8]);
        append.extend_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(sealed(kind::APPEND, &append), Err(t(kind::APPEND)));

        // Chunks past their total length, including offset overflow.
        let mut frag = vec![0; 40];
        frag.extend_from_slice(&10u32.to_le_bytes()); // total_len
        frag.extend_from_slice(&8u32.to_le_bytes()); // offset
        frag.extend_from_slice(b"abc");
        assert_eq!(
            sealed(kind::APPEND_FRAGMENT, &frag),
            Err(FrameError::ChunkOutOfRange {
                offset: 8,
                len: 3,
                total_len: 10
            })
        );
        let mut chunk = vec![0; 16];
        chunk.extend_from_slice(&u64::MAX.to_le_bytes()); // total_len
        chunk.extend_from_slice(&u64::MAX.to_le_bytes()); // offset
        chunk.push(1);
        assert!(matches!(
            sealed(kind::SNAPSHOT_CHUNK, &chunk),
            Err(FrameError::ChunkOutOfRange { .. })
        ));
    }

    fn arb_addr() -> impl Strategy<Value = SocketAddr> {
        prop_oneof![
            (any::<[u8; 4]>(), any::<u16>())
                .prop_map(|(ip, port)| SocketAddr::V4(SocketAddrV4::new(ip.into(), port))),
            (any::<[u8; 16]>(), any::<u16>())
                .prop_map(|(ip, port)| SocketAddr::V6(SocketAddrV6::new(ip.into(), port, 0, 0))),
        ]
    }

    fn arb_peer() -> impl Strategy<Value = Peer> {
        (any::<u64>(), arb_addr(), arb_addr()).prop_map(|(id, tcp, udp)| Peer {
            id: ServerId(id),
            tcp,
            udp,
        })
    }

    fn arb_bytes(len_max: usize) -> impl Strategy<Value = Bytes> {
        proptest::collection::vec(any::<u8>(), 0..=len_max).prop_map(Bytes::from)
    }

    fn arb_role() -> impl Strategy<Value = Role> {
        prop_oneof![
            Just(Role::Follower),
            Just(Role::Leader),
            Just(Role::Learner)
        ]
    }

    /// Every kind, sized so that every generated message fits a datagram.
    fn arb_message() -> impl Strategy<Value = Message> {
        let id = || any::<u64>().prop_map(ServerId);
        let term = || any::<u64>().prop_map(Term);
        let index = || any::<u64>().prop_map(LogIndex);
        prop_oneof![
            (arb_addr(), arb_addr()).prop_map(|(tcp, udp)| Message::Register { tcp, udp }),
            Just(Message::Registered),
            (id(), proptest::collection::vec(arb_peer(), 0..20))
                .prop_map(|(leader, peers)| Message::Heartbeat { leader, peers }),
            (
                (arb_role(), id(), term(), index(), index(), index()),
                any::<u32>(),
                proptest::collection::vec(id(), 0..60),
                proptest::collection::vec(id(), 0..60)
            )
                .prop_map(
                    |(
                        (role, leader, last_term, last_index, commit_index, applied_index),
                        ms,
                        voters,
                        learners,
                    )| {
                        Message::Status {
                            role,
                            leader,
                            last_term,
                            last_index,
                            commit_index,
                            applied_index,
                            leader_contact_ms: ms,
                            voters,
                            learners,
                        }
                    }
                ),
            Just(Message::Prepare),
            (term(), index(), proptest::collection::vec(id(), 0..100)).prop_map(
                |(last_term, last_index, voters)| Message::Promise {
                    last_term,
                    last_index,
                    voters,
                }
            ),
            Just(Message::Reject),
            id().prop_map(|leader| Message::NewLeader { leader }),
            arb_peer().prop_map(|peer| Message::AddServer { peer }),
            id().prop_map(|id| Message::RemoveServer { id }),
            (
                any::<u64>(),
                index(),
                term(),
                index(),
                proptest::collection::vec(
                    (term(), arb_bytes(100)).prop_map(|(term, payload)| Entry { term, payload }),
                    0..10
                )
            )
                .prop_map(|(seq, prev_index, prev_term, commit, entries)| {
                    Message::Append {
                        seq,
                        prev_index,
                        prev_term,
                        commit,
                        entries,
                    }
                }),
            (
                (any::<u64>(), index(), term(), index(), term()),
                arb_bytes(FRAGMENT_CHUNK_BYTES_MAX),
                any::<u32>(),
                any::<u32>()
            )
                .prop_map(
                    |((seq, prev_index, prev_term, commit, entry_term), bytes, a, b)| {
                        // Any offset and total length with the chunk inside.
                        let len = bytes.len() as u32;
                        let offset = a % (u32::MAX - len);
                        let total_len = (offset + len).saturating_add(b % 1024);
                        Message::AppendFragment {
                            seq,
                            prev_index,
                            prev_term,
                            commit,
                            entry_term,
                            total_len,
                            offset,
                            bytes,
                        }
                    }
                ),
            (any::<u64>(), index(), any::<u32>(), any::<u64>()).prop_map(
                |(seq, match_index, hold_ms, memory_limit_bytes)| Message::Ack {
                    seq,
                    match_index,
                    hold_ms,
                    memory_limit_bytes,
                }
            ),
            (any::<u64>(), index(), any::<u32>(), any::<u64>()).prop_map(
                |(seq, hint_index, hold_ms, memory_limit_bytes)| Message::Nack {
                    seq,
                    hint_index,
                    hold_ms,
                    memory_limit_bytes,
                }
            ),
            (
                index(),
                term(),
                arb_bytes(SNAPSHOT_CHUNK_BYTES_MAX),
                any::<u64>(),
                any::<u64>()
            )
                .prop_map(|(snapshot_index, snapshot_term, bytes, a, b)| {
                    let len = bytes.len() as u64;
                    let offset = a % (u64::MAX - len);
                    let total_len = (offset + len).saturating_add(b % 1024);
                    Message::SnapshotChunk {
                        snapshot_index,
                        snapshot_term,
                        total_len,
                        offset,
                        bytes,
                    }
                }),
            (index(), any::<u64>()).prop_map(|(snapshot_index, offset)| Message::SnapshotAck {
                snapshot_index,
                offset
            }),
            any::<u64>().prop_map(|id| Message::ReadIndex { id }),
            (any::<u64>(), index()).prop_map(|(id, index)| Message::ReadIndexReply { id, index }),
            (term(), index(), any::<bool>()).prop_map(|(last_term, last_index, pre)| {
                Message::RequestVote {
                    last_term,
                    last_index,
                    pre,
                }
            }),
            (any::<bool>(), any::<bool>())
                .prop_map(|(granted, pre)| Message::Vote { granted, pre }),
            (
                any::<u64>(),
                proptest::collection::vec(arb_addr(), 0..=LBS_MAX)
            )
                .prop_map(|(epoch, lbs)| Message::Lbs { epoch, lbs }),
        ]
    }

    fn arb_frame() -> impl Strategy<Value = Frame> {
        (any::<[u64; 4]>(), any::<u16>(), arb_message()).prop_map(
            |([cluster, from, to, term], group, message)| Frame {
                header: Header {
                    cluster: ClusterId(cluster),
                    group: GroupId(group),
                    from: ServerId(from),
                    to: ServerId(to),
                    term: Term(term),
                },
                message,
            },
        )
    }

    proptest! {
        #[test]
        fn roundtrip_every_kind(frame in arb_frame()) {
            let mut out = BytesMut::new();
            encode(&frame, &SECRET, &mut out).expect("generated frames fit");
            prop_assert!(out.len() <= DATAGRAM_BYTES_MAX);
            prop_assert_eq!(out.len(), frame.datagram_len());
            prop_assert_eq!(out[5], frame.message.kind());
            prop_assert_eq!(decode(&out, &SECRET), Ok(frame));
        }

        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..1500)) {
            let _ = decode(&bytes, &SECRET);
        }

        /// Arbitrary payloads behind a valid MAC reach the payload decoder;
        /// whatever it accepts re-encodes to the very same bytes, so the
        /// encoding is canonical and nothing is silently dropped.
        #[test]
        fn authentic_payloads_decode_canonically(
            kind in 0u8..=17,
            payload in proptest::collection::vec(any::<u8>(), 0..200),
        ) {
            let mut out = BytesMut::new();
            seal(&header(), kind, &payload, &SECRET, &mut out).expect("small payload");
            if let Ok(frame) = decode(&out, &SECRET) {
                let mut again = BytesMut::new();
                encode(&frame, &SECRET, &mut again).expect("decoded frames re-encode");
                prop_assert_eq!(&again[..], &out[..]);
            }
        }

        #[test]
        fn random_frames_reject_every_bit_flip(frame in arb_frame()) {
            let mut out = BytesMut::new();
            encode(&frame, &SECRET, &mut out).expect("generated frames fit");
            // Bound the work per case: flip a spread of bits, not all 11,200.
            let bits = out.len() * 8;
            for bit in (0..bits).step_by(bits / 97 + 1).chain([bits - 1]) {
                let mut flipped = out.to_vec();
                flipped[bit / 8] ^= 1 << (bit % 8);
                prop_assert!(decode(&flipped, &SECRET).is_err());
            }
        }
    }
}
