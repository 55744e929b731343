//! Fuzzes the cluster datagram codec (`data::frame`) three ways, checking
//! properties and not only that nothing panics:
//! - the input as a datagram: decode never panics, and anything it accepts
//!   re-encodes to the very same bytes;
//! - the input as a payload sealed behind a valid MAC (so the payload decoder
//!   is reached, which random bytes never get past the MAC to do): the same;
//! - the input as a seed for a frame of any kind, chunk ranges and IPv6
//!   scope ids included: encode refuses it as too large exactly when the
//!   payload is over `PAYLOAD_BYTES_MAX`, refuses it as undecodable exactly
//!   when a chunk runs past its total or an address has a flow info or scope
//!   id, and otherwise produces `datagram_len()` <= `DATAGRAM_BYTES_MAX`
//!   bytes that decode to the same frame; and that datagram is rejected once
//!   damaged: any changed byte (a length mismatch if it is the payload length
//!   field, a bad MAC anywhere else), any truncation or extension, and
//!   another cluster secret.
#![no_main]

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

use data::frame::{
    decode, encode, seal, ClusterId, Entry, Frame, FrameError, GroupId, Header, LogIndex, Message,
    Peer, Role, ServerId, Term, DATAGRAM_BYTES_MAX, FRAME_OVERHEAD_BYTES, LBS_MAX,
    PAYLOAD_BYTES_MAX,
};
use libfuzzer_sys::fuzz_target;

#[allow(dead_code)] // each target uses some of the shared builders
#[path = "../common/seed.rs"]
mod seed;
use seed::Seed;

const SECRET: [u8; 32] = *b"store frame fuzzing secret 32 B!";
const OTHER_SECRET: [u8; 32] = *b"another cluster's secret, 32 B!!";

/// Where the u16 payload length sits in the header.
const PAYLOAD_LEN_OFFSET: usize = 40;

/// Damaged copies checked per seeded datagram: each costs a BLAKE3 MAC.
const DAMAGES_MAX: usize = 4;

impl Seed<'_> {
    /// Up to `len_max` bytes, length chosen by the seed.
    fn bytes(&mut self, len_max: usize) -> Vec<u8> {
        let len = usize::from(self.u16()) % (len_max + 1);
        let take = len.min(self.bytes.len());
        let (head, rest) = self.bytes.split_at(take);
        self.bytes = rest;
        head.to_vec()
    }

    fn addr(&mut self) -> SocketAddr {
        if self.u8() & 1 == 0 {
            let ip = Ipv4Addr::from(self.u32());
            SocketAddr::V4(SocketAddrV4::new(ip, self.u16()))
        } else {
            let ip = Ipv6Addr::from(u128::from(self.u64()) | (u128::from(self.u64()) << 64));
            let port = self.u16();
            // Rarely a flow info or scope id, which frames cannot carry.
            let (flowinfo, scope_id) = match self.u8() {
                0xff => (self.u32(), 0),
                0xfe => (0, self.u32()),
                _ => (0, 0),
            };
            SocketAddr::V6(SocketAddrV6::new(ip, port, flowinfo, scope_id))
        }
    }

    fn peer(&mut self) -> Peer {
        Peer {
            id: ServerId(self.u64()),
            tcp: self.addr(),
            udp: self.addr(),
        }
    }

    /// A list long enough to sometimes overflow a datagram.
    fn count(&mut self, max: usize) -> usize {
        usize::from(self.u8()) % (max + 1)
    }

    fn message(&mut self) -> Message {
        match self.u8() % 21 {
            0 => Message::Register {
                tcp: self.addr(),
                udp: self.addr(),
            },
            1 => Message::Registered,
            2 => {
                let leader = ServerId(self.u64());
                let peers = (0..self.count(80)).map(|_| self.peer()).collect();
                Message::Heartbeat { leader, peers }
            }
            3 => Message::Status {
                role: [Role::Follower, Role::Leader, Role::Learner][usize::from(self.u8() % 3)],
                leader: ServerId(self.u64()),
                last_term: Term(self.u64()),
                last_index: LogIndex(self.u64()),
                commit_index: LogIndex(self.u64()),
                applied_index: LogIndex(self.u64()),
                leader_contact_ms: self.u32(),
                voters: (0..self.count(80)).map(|_| ServerId(self.u64())).collect(),
                learners: (0..self.count(80)).map(|_| ServerId(self.u64())).collect(),
            },
            4 => Message::Prepare,
            5 => Message::Promise {
                last_term: Term(self.u64()),
                last_index: LogIndex(self.u64()),
                voters: (0..self.count(200)).map(|_| ServerId(self.u64())).collect(),
            },
            6 => Message::Reject,
            7 => Message::NewLeader {
                leader: ServerId(self.u64()),
            },
            8 => Message::AddServer { peer: self.peer() },
            9 => Message::RemoveServer {
                id: ServerId(self.u64()),
            },
            10 => Message::Append {
                seq: self.u64(),
                prev_index: LogIndex(self.u64()),
                prev_term: Term(self.u64()),
                commit: LogIndex(self.u64()),
                entries: (0..self.count(8))
                    .map(|_| Entry {
                        term: Term(self.u64()),
                        payload: self.bytes(PAYLOAD_BYTES_MAX).into(),
                    })
                    .collect(),
            },
            11 => {
                let (seq, prev_index, prev_term, commit, entry_term) =
                    (self.u64(), self.u64(), self.u64(), self.u64(), self.u64());
                let bytes = self.bytes(PAYLOAD_BYTES_MAX);
                // Mostly a chunk inside its entry, sometimes any range.
                let len = bytes.len() as u32;
                let (offset, total_len) = if self.u8() == 0xff {
                    (self.u32(), self.u32())
                } else {
                    let offset = self.u32() % (u32::MAX - len);
                    (offset, (offset + len).saturating_add(self.u16().into()))
                };
                Message::AppendFragment {
                    seq,
                    prev_index: LogIndex(prev_index),
                    prev_term: Term(prev_term),
                    commit: LogIndex(commit),
                    entry_term: Term(entry_term),
                    total_len,
                    offset,
                    bytes: bytes.into(),
                }
            }
            12 => Message::Ack {
                seq: self.u64(),
                match_index: LogIndex(self.u64()),
                hold_ms: self.u32(),
                memory_limit_bytes: self.u64(),
            },
            13 => Message::Nack {
                seq: self.u64(),
                hint_index: LogIndex(self.u64()),
                hold_ms: self.u32(),
                memory_limit_bytes: self.u64(),
            },
            14 => {
                let (snapshot_index, snapshot_term) = (self.u64(), self.u64());
                let bytes = self.bytes(PAYLOAD_BYTES_MAX);
                let len = bytes.len() as u64;
                let (offset, total_len) = if self.u8() == 0xff {
                    (self.u64(), self.u64())
                } else {
                    let offset = self.u64() % (u64::MAX - len);
                    (offset, (offset + len).saturating_add(self.u32().into()))
                };
                Message::SnapshotChunk {
                    snapshot_index: LogIndex(snapshot_index),
                    snapshot_term: Term(snapshot_term),
                    total_len,
                    offset,
                    bytes: bytes.into(),
                }
            }
            15 => Message::SnapshotAck {
                snapshot_index: LogIndex(self.u64()),
                offset: self.u64(),
            },
            16 => Message::ReadIndex { id: self.u64() },
            17 => Message::ReadIndexReply {
                id: self.u64(),
                index: LogIndex(self.u64()),
            },
            18 => Message::RequestVote {
                last_term: Term(self.u64()),
                last_index: LogIndex(self.u64()),
                pre: self.u8() & 1 == 1,
            },
            19 => Message::Vote {
                granted: self.u8() & 1 == 1,
                pre: self.u8() & 1 == 1,
            },
            _ => {
                // Sometimes more than a group has, which encode refuses.
                let epoch = self.u64();
                let lbs = (0..self.count(LBS_MAX + 1)).map(|_| self.addr()).collect();
                Message::Lbs { epoch, lbs }
            }
        }
    }

    fn header(&mut self) -> Header {
        Header {
            cluster: ClusterId(self.u64()),
            group: GroupId(self.u16()),
            from: ServerId(self.u64()),
            to: ServerId(self.u64()),
            term: Term(self.u64()),
        }
    }
}

/// Whatever decode accepts must be exactly what encode produces for it: the
/// encoding is canonical, so nothing in an accepted datagram was ignored.
fn check_accepted(datagram: &[u8]) {
    if let Ok(frame) = decode(datagram, &SECRET) {
        assert!(datagram.len() <= DATAGRAM_BYTES_MAX);
        // The fuzz crate does not depend on `bytes`; the type is inferred.
        let mut again = Default::default();
        encode(&frame, &SECRET, &mut again).expect("a decoded frame re-encodes");
        assert_eq!(&again[..], datagram);
    }
}

fuzz_target!(|input: &[u8]| {
    check_accepted(input);

    let mut seed = Seed { bytes: input };
    let header = seed.header();
    let kind = seed.u8() % 22;
    let payload = &seed.bytes[..seed.bytes.len().min(PAYLOAD_BYTES_MAX)];
    let mut sealed = Default::default();
    seal(&header, kind, payload, &SECRET, &mut sealed).expect("payload within the limit");
    check_accepted(&sealed);

    let mut seed = Seed { bytes: input };
    let frame = Frame {
        header: seed.header(),
        message: seed.message(),
    };
    let mut out = Default::default();
    let payload_len = frame.message.payload_len();
    match encode(&frame, &SECRET, &mut out) {
        Ok(()) => {
            assert!(payload_len <= PAYLOAD_BYTES_MAX && decodable(&frame.message));
            assert!(out.len() <= DATAGRAM_BYTES_MAX);
            assert_eq!(out.len(), frame.datagram_len());
            assert_eq!(decode(&out, &SECRET), Ok(frame));
            check_damage(&out, &mut seed);
        }
        Err(FrameError::PayloadTooLarge {
            payload_len: reported,
        }) => {
            assert!(reported > PAYLOAD_BYTES_MAX);
            assert_eq!(reported, payload_len);
            assert!(out.is_empty());
        }
        Err(FrameError::ChunkOutOfRange { .. })
        | Err(FrameError::UnsupportedAddress(_))
        | Err(FrameError::TooManyLbs(_)) => {
            assert!(payload_len <= PAYLOAD_BYTES_MAX);
            assert!(!decodable(&frame.message), "refused {frame:?}");
            assert!(out.is_empty());
        }
        Err(other) => panic!("encode refused a valid frame: {other}"),
    }
});

/// Whether the decoder could return `message`, stated independently of the
/// encoder's own check: chunks inside their whole, and addresses without
/// the IPv6 flow info and scope id that the wire format does not carry.
fn decodable(message: &Message) -> bool {
    let addr_ok = |addr: &SocketAddr| match addr {
        SocketAddr::V4(_) => true,
        SocketAddr::V6(v6) => v6.flowinfo() == 0 && v6.scope_id() == 0,
    };
    let peer_ok = |peer: &Peer| addr_ok(&peer.tcp) && addr_ok(&peer.udp);
    match message {
        Message::Register { tcp, udp } => addr_ok(tcp) && addr_ok(udp),
        Message::Heartbeat { peers, .. } => peers.iter().all(peer_ok),
        Message::AddServer { peer } => peer_ok(peer),
        Message::Lbs { lbs, .. } => lbs.len() <= LBS_MAX && lbs.iter().all(addr_ok),
        Message::AppendFragment {
            total_len,
            offset,
            bytes,
            ..
        } => u64::from(*offset) + bytes.len() as u64 <= u64::from(*total_len),
        Message::SnapshotChunk {
            total_len,
            offset,
            bytes,
            ..
        } => offset
            .checked_add(bytes.len() as u64)
            .is_some_and(|end| end <= *total_len),
        _ => true,
    }
}

/// A valid datagram stops being accepted once anything about it changes.
fn check_damage(datagram: &[u8], seed: &mut Seed) {
    assert_eq!(decode(datagram, &OTHER_SECRET), Err(FrameError::BadMac));
    for _ in 0..DAMAGES_MAX {
        let at = usize::from(seed.u16()) % datagram.len();
        let flip = seed.u8().max(1);
        let mut damaged = datagram.to_vec();
        damaged[at] ^= flip;
        let result = decode(&damaged, &SECRET);
        if (PAYLOAD_LEN_OFFSET..PAYLOAD_LEN_OFFSET + 2).contains(&at) {
            assert!(
                matches!(result, Err(FrameError::LengthMismatch { .. })),
                "byte {at} ^ {flip:#04x}: {result:?}"
            );
        } else {
            assert_eq!(result, Err(FrameError::BadMac), "byte {at} ^ {flip:#04x}");
        }
    }
    let cut = usize::from(seed.u16()) % datagram.len();
    let result = decode(&datagram[..cut], &SECRET);
    if cut < FRAME_OVERHEAD_BYTES {
        assert_eq!(result, Err(FrameError::TooShort(cut)));
    } else {
        assert!(
            matches!(result, Err(FrameError::LengthMismatch { .. })),
            "cut {cut}: {result:?}"
        );
    }
    let mut longer = datagram.to_vec();
    longer.push(seed.u8());
    let result = decode(&longer, &SECRET);
    if longer.len() > DATAGRAM_BYTES_MAX {
        assert_eq!(result, Err(FrameError::TooLong(longer.len())));
    } else {
        assert!(
            matches!(result, Err(FrameError::LengthMismatch { .. })),
            "{result:?}"
        );
    }
}
