//! The LB's durable state ([`DurableState`]: highest term, the leader named
//! in it, and membership) and the one file that holds it, `registry` in the
//! LB's data directory (DESIGN §3, §5).
//!
//! The byte format ([`encode`], [`decode`]) is pure; [`RegistryFile`] is the
//! only code that reads or writes the file, and it replaces it atomically
//! (temp file, fsync, rename, fsync directory) so a crash leaves either the
//! old or the new state, never a mix. It decides nothing: the election core
//! (`core.rs`) says what to persist and the driver calls [`RegistryFile::save`]
//! on a blocking thread before it sends anything that depends on it.
//!
//! # Format
//!
//! All integers little endian; pinned by a golden-bytes test.
//!
//! ```text
//! offset  size  field
//! 0       8     magic b"STORELB\0"
//! 8       1     version = 3 (REGISTRY_VERSION); versions 1 and 2 are read too
//! 9       1     flags: bit 0 = founded (a leader was ever named); other
//!               bits 0 (version 1: the whole byte 0, founded read as
//!               "leader named")
//! 10      2     reserved, 0
//! 12      8     term: the highest term the LB has used
//! 20      8     leader named in that term (0 = none)
//! 28      8     founder: the server named to found the group (0 = none
//!               or unknown; absent before version 3)
//! 36      2     member count N (at most MEMBERS_MAX)
//! 38      ...   N members, ids strictly increasing: [id u64][tcp address][udp address]
//! end-4   4     crc32c over every byte before it
//! ```
//!
//! An address is `[family u8: 4 or 6][ip: 4 or 16 bytes][port u16]`, as in
//! `data::frame`.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use data::frame::{ServerId, Term, PAYLOAD_BYTES_MAX};
use data::wire;
use thiserror::Error;

/// The registry's file name in the LB's data directory.
pub const REGISTRY_FILE: &str = "registry";

/// Written first, then renamed over [`REGISTRY_FILE`].
const REGISTRY_TMP_FILE: &str = "registry.tmp";

/// Identifies a registry file.
pub const REGISTRY_MAGIC: [u8; 8] = *b"STORELB\0";

/// Version of the format above. Bump it on any change.
pub const REGISTRY_VERSION: u8 = 3;
/// The first version, without flags; still read.
const REGISTRY_VERSION_1: u8 = 1;
/// The second, without the founder; still read.
const REGISTRY_VERSION_2: u8 = 2;
/// Flag bit: a leader was named at least once.
const FLAG_FOUNDED: u8 = 1;

/// Most servers the LB registers. Every Heartbeat lists every member, and it
/// must fit in one datagram even when every address is IPv6 (checked below);
/// a replica group needs far fewer than this anyway.
pub const MEMBERS_MAX: usize = 16;

const ADDR_BYTES_MAX: usize = 1 + 16 + 2;
const MEMBER_BYTES_MAX: usize = 8 + 2 * ADDR_BYTES_MAX;
const HEADER_BYTES: usize = 8 + 1 + 3 + 8 + 8 + 8 + 2;
const CRC_BYTES: usize = 4;

/// The largest valid registry file; anything longer is refused unread.
pub const REGISTRY_BYTES_MAX: usize = HEADER_BYTES + MEMBERS_MAX * MEMBER_BYTES_MAX + CRC_BYTES;

// A Heartbeat is [leader u64][count u16][peer]* and a peer is as large as a
// member here: all of them must fit in one datagram.
const _: () = assert!(8 + 2 + MEMBERS_MAX * MEMBER_BYTES_MAX <= PAYLOAD_BYTES_MAX);

/// A registered server's addresses, as it gave them in its Register.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Member {
    /// Its memcached port, handed to clients by `get-servers`.
    pub tcp: SocketAddr,
    /// Its replication/control port, the only address the LB sends to.
    pub udp: SocketAddr,
}

/// Everything the LB must not forget across a restart.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DurableState {
    /// The highest term the LB has started an election in. The next election
    /// uses a higher one, so a term is never reused.
    pub term: Term,
    /// The leader named in `term`, or [`ServerId::LB`] (0) for none.
    pub leader: ServerId,
    /// A leader was named at least once: a group exists, and a server that
    /// never joined it may not found another (its founder may have
    /// committed writes before anyone else joined).
    pub founded: bool,
    /// The server named to found the group, which alone may found it
    /// again while no server holds a configuration ([`ServerId::LB`]: none,
    /// or a registry from before it was recorded).
    pub founder: ServerId,
    /// Registered servers by id; never holds id 0 or more than
    /// [`MEMBERS_MAX`].
    pub members: BTreeMap<ServerId, Member>,
}

/// Why the registry could not be read or written.
#[derive(Debug, Error)]
pub enum RegistryError {
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("registry file of {0} bytes is over the {REGISTRY_BYTES_MAX}-byte limit")]
    TooLong(usize),
    #[error("registry file is cut short")]
    Truncated,
    #[error("not a registry file (bad magic)")]
    BadMagic,
    #[error("unsupported registry version {0} (this build reads version {REGISTRY_VERSION})")]
    UnsupportedVersion(u8),
    #[error("reserved registry bytes are not zero")]
    ReservedNonZero,
    #[error("registry crc mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    BadCrc { stored: u32, computed: u32 },
    #[error("registry has {0} members, over the limit of {MEMBERS_MAX}")]
    TooManyMembers(usize),
    #[error("registry member ids are not strictly increasing and nonzero at id {0}")]
    BadMemberId(u64),
    #[error("unknown address family {0} in the registry")]
    BadAddressFamily(u8),
    #[error("registry has {0} bytes after its last member")]
    TrailingBytes(usize),
    #[error("address {0} has an IPv6 flow info or scope id, which the registry does not keep")]
    UnsupportedAddress(SocketAddr),
}

impl RegistryError {
    fn io(op: &'static str, path: &Path, source: io::Error) -> RegistryError {
        RegistryError::Io {
            op,
            path: path.to_path_buf(),
            source,
        }
    }
}

/// The bytes of the registry file for `state`.
pub fn encode(state: &DurableState) -> Result<Vec<u8>, RegistryError> {
    if state.members.len() > MEMBERS_MAX {
        return Err(RegistryError::TooManyMembers(state.members.len()));
    }
    let mut out = Vec::with_capacity(REGISTRY_BYTES_MAX);
    out.extend_from_slice(&REGISTRY_MAGIC);
    out.push(REGISTRY_VERSION);
    out.push(if state.founded { FLAG_FOUNDED } else { 0 });
    out.extend_from_slice(&[0; 2]);
    out.extend_from_slice(&state.term.0.to_le_bytes());
    out.extend_from_slice(&state.leader.0.to_le_bytes());
    out.extend_from_slice(&state.founder.0.to_le_bytes());
    // Bounded by MEMBERS_MAX just above.
    out.extend_from_slice(&(state.members.len() as u16).to_le_bytes());
    for (id, member) in &state.members {
        if *id == ServerId::LB {
            return Err(RegistryError::BadMemberId(id.0));
        }
        out.extend_from_slice(&id.0.to_le_bytes());
        for addr in [&member.tcp, &member.udp] {
            if !wire::addr_encodable(addr) {
                return Err(RegistryError::UnsupportedAddress(*addr));
            }
            wire::put_addr(&mut out, addr);
        }
    }
    let crc = crc32c::crc32c(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    debug_assert!(out.len() <= REGISTRY_BYTES_MAX);
    Ok(out)
}

/// Reads a registry file's bytes; any damage is an error, never a panic.
pub fn decode(bytes: &[u8]) -> Result<DurableState, RegistryError> {
    if bytes.len() > REGISTRY_BYTES_MAX {
        return Err(RegistryError::TooLong(bytes.len()));
    }
    // Versions before 3 are 8 bytes shorter (no founder).
    if bytes.len() < HEADER_BYTES - 8 + CRC_BYTES {
        return Err(RegistryError::Truncated);
    }
    let (body, crc) = bytes.split_at(bytes.len() - CRC_BYTES);
    // The magic first, so a file that is not ours says so rather than
    // reporting a checksum mismatch.
    if body[0..8] != REGISTRY_MAGIC {
        return Err(RegistryError::BadMagic);
    }
    let stored = u32::from_le_bytes(crc.try_into().expect("split at CRC_BYTES"));
    let computed = crc32c::crc32c(body);
    if stored != computed {
        return Err(RegistryError::BadCrc { stored, computed });
    }
    let mut r = wire::Reader::new(&body[8..], BodyErrors);
    let version = r.u8()?;
    if ![REGISTRY_VERSION, REGISTRY_VERSION_2, REGISTRY_VERSION_1].contains(&version) {
        return Err(RegistryError::UnsupportedVersion(version));
    }
    let flags = r.u8()?;
    let known_flags = if version == REGISTRY_VERSION_1 {
        0
    } else {
        FLAG_FOUNDED
    };
    if flags & !known_flags != 0 || r.bytes(2)? != [0, 0] {
        return Err(RegistryError::ReservedNonZero);
    }
    let term = Term(r.u64()?);
    let leader = ServerId(r.u64()?);
    let founder = if version == REGISTRY_VERSION {
        ServerId(r.u64()?)
    } else {
        ServerId::LB
    };
    // Version 1 did not record it; a named leader proves it.
    let founded =
        flags & FLAG_FOUNDED != 0 || (version == REGISTRY_VERSION_1 && leader != ServerId::LB);
    let count = usize::from(r.u16()?);
    if count > MEMBERS_MAX {
        return Err(RegistryError::TooManyMembers(count));
    }
    let mut members = BTreeMap::new();
    let mut previous = ServerId::LB;
    for _ in 0..count {
        let id = ServerId(r.u64()?);
        // Strictly increasing ids keep the encoding canonical and rule out
        // id 0 (the LB itself) and duplicates.
        if id <= previous {
            return Err(RegistryError::BadMemberId(id.0));
        }
        previous = id;
        let tcp = r.addr()?;
        let udp = r.addr()?;
        members.insert(id, Member { tcp, udp });
    }
    if r.remaining() != 0 {
        return Err(RegistryError::TrailingBytes(r.remaining()));
    }
    Ok(DurableState {
        term,
        leader,
        founded,
        founder,
        members,
    })
}

/// The registry's errors for the shared reader.
struct BodyErrors;

impl wire::ReadErrors for BodyErrors {
    type Error = RegistryError;
    fn truncated(&self) -> RegistryError {
        RegistryError::Truncated
    }
    fn bad_address_family(&self, family: u8) -> RegistryError {
        RegistryError::BadAddressFamily(family)
    }
}

/// Owns `registry` in one data directory: the only reader and writer.
#[derive(Clone, Debug)]
pub struct RegistryFile {
    dir: PathBuf,
}

impl RegistryFile {
    /// The registry of the LB whose data directory is `dir` (which must
    /// exist before [`RegistryFile::save`]).
    pub fn new(dir: impl Into<PathBuf>) -> RegistryFile {
        RegistryFile { dir: dir.into() }
    }

    pub fn path(&self) -> PathBuf {
        self.dir.join(REGISTRY_FILE)
    }

    /// The saved state, or the empty state (term 0, no members) if nothing
    /// was ever saved. A temp file left by a crash mid-save is removed: the
    /// real file is still the old, complete one.
    pub fn load(&self) -> Result<DurableState, RegistryError> {
        let tmp = self.dir.join(REGISTRY_TMP_FILE);
        match fs::remove_file(&tmp) {
            Ok(()) => {
                tracing::warn!(path = %tmp.display(), "removed a leftover registry temp file");
                sync_dir(&self.dir)?;
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(RegistryError::io("remove", &tmp, e)),
        }
        let path = self.path();
        let bytes = match read_bounded(&path)? {
            Some(bytes) => bytes,
            None => return Ok(DurableState::default()),
        };
        decode(&bytes)
    }

    /// Replaces the file with `state`: after a crash it holds either the old
    /// or the new state. Returns only once the new state is durable.
    pub fn save(&self, state: &DurableState) -> Result<(), RegistryError> {
        let bytes = encode(state)?;
        // Pairs with load: what is written must read back as the same state.
        assert_eq!(
            decode(&bytes).as_ref().ok(),
            Some(state),
            "registry encoding does not round-trip"
        );
        let tmp = self.dir.join(REGISTRY_TMP_FILE);
        let path = self.path();
        let result = (|| {
            let mut file = File::create(&tmp).map_err(|e| RegistryError::io("create", &tmp, e))?;
            file.write_all(&bytes)
                .map_err(|e| RegistryError::io("write", &tmp, e))?;
            file.sync_all()
                .map_err(|e| RegistryError::io("fsync", &tmp, e))?;
            fs::rename(&tmp, &path).map_err(|e| RegistryError::io("rename", &tmp, e))?;
            sync_dir(&self.dir)
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result
    }
}

/// Makes the directory's entries (creates, renames) durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), RegistryError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| RegistryError::io("fsync directory", dir, e))
}

/// Reads the whole file if it exists, refusing one over the size limit
/// before reading it into memory.
fn read_bounded(path: &Path) -> Result<Option<Vec<u8>>, RegistryError> {
    let len = match fs::metadata(path) {
        Ok(meta) => meta.len(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(RegistryError::io("stat", path, e)),
    };
    if len > REGISTRY_BYTES_MAX as u64 {
        return Err(RegistryError::TooLong(
            usize::try_from(len).unwrap_or(usize::MAX),
        ));
    }
    fs::read(path)
        .map(Some)
        .map_err(|e| RegistryError::io("read", path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> DurableState {
        let mut members = BTreeMap::new();
        members.insert(
            ServerId(7),
            Member {
                tcp: "127.0.0.1:11211".parse().expect("literal"),
                udp: "127.0.0.1:11212".parse().expect("literal"),
            },
        );
        members.insert(
            ServerId(9),
            Member {
                tcp: "[::1]:7000".parse().expect("literal"),
                udp: "[::1]:7001".parse().expect("literal"),
            },
        );
        DurableState {
            term: Term(5),
            leader: ServerId(9),
            founded: true,
            founder: ServerId(7),
            members,
        }
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Pins the on-disk format: a change here makes old LBs' files unreadable.
    #[test]
    fn golden_bytes() {
        let bytes = encode(&sample()).expect("fits");
        let expected = [
            "53544f52454c4200",                       // magic "STORELB\0"
            "03",                                     // version
            "01",                                     // flags: founded
            "0000",                                   // reserved
            "0500000000000000",                       // term 5
            "0900000000000000",                       // leader 9
            "0700000000000000",                       // founder 7
            "0200",                                   // two members
            "0700000000000000",                       // id 7
            "047f000001cb2b",                         // tcp 127.0.0.1:11211
            "047f000001cc2b",                         // udp 127.0.0.1:11212
            "0900000000000000",                       // id 9
            "0600000000000000000000000000000001581b", // tcp [::1]:7000
            "0600000000000000000000000000000001591b", // udp [::1]:7001
        ]
        .concat();
        let (body, crc) = bytes.split_at(bytes.len() - CRC_BYTES);
        assert_eq!(hex(body), expected);
        assert_eq!(crc, crc32c::crc32c(body).to_le_bytes());
        assert_eq!(decode(&bytes).expect("valid"), sample());
    }

    /// `sample()` as a file of an older `version` with these `flags`: no
    /// founder field.
    fn older(version: u8, flags: u8) -> Vec<u8> {
        let mut bytes = encode(&sample()).expect("fits");
        bytes.drain(28..36);
        bytes[8] = version;
        bytes[9] = flags;
        let body_len = bytes.len() - CRC_BYTES;
        let crc = crc32c::crc32c(&bytes[..body_len]);
        bytes[body_len..].copy_from_slice(&crc.to_le_bytes());
        bytes
    }

    #[test]
    fn version_2_files_are_read_with_no_founder() {
        let unknown = DurableState {
            founder: ServerId::LB,
            ..sample()
        };
        assert_eq!(decode(&older(2, FLAG_FOUNDED)).expect("valid"), unknown);
    }

    #[test]
    fn version_1_files_are_read_with_founded_from_the_leader() {
        let mut bytes = older(1, 0);
        let body_len = bytes.len() - CRC_BYTES;
        let unknown = DurableState {
            founder: ServerId::LB,
            ..sample()
        };
        assert_eq!(decode(&bytes).expect("valid"), unknown);
        // A version 1 file with flags set is damaged.
        bytes[9] = 1;
        let crc = crc32c::crc32c(&bytes[..body_len]);
        bytes[body_len..].copy_from_slice(&crc.to_le_bytes());
        assert!(matches!(
            decode(&bytes),
            Err(RegistryError::ReservedNonZero)
        ));
    }

    #[test]
    fn empty_state_round_trips() {
        let state = DurableState::default();
        assert_eq!(
            decode(&encode(&state).expect("fits")).expect("valid"),
            state
        );
    }

    #[test]
    fn every_flipped_bit_and_truncation_is_rejected() {
        let bytes = encode(&sample()).expect("fits");
        for bit in 0..bytes.len() * 8 {
            let mut flipped = bytes.clone();
            flipped[bit / 8] ^= 1 << (bit % 8);
            assert!(decode(&flipped).is_err(), "bit {bit}");
        }
        for len in 0..bytes.len() {
            assert!(decode(&bytes[..len]).is_err(), "len {len}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(decode(&longer).is_err());
    }

    #[test]
    fn too_many_members_is_refused() {
        let mut state = DurableState::default();
        for id in 1..=MEMBERS_MAX as u64 + 1 {
            state.members.insert(
                ServerId(id),
                Member {
                    tcp: "127.0.0.1:1".parse().expect("literal"),
                    udp: "127.0.0.1:2".parse().expect("literal"),
                },
            );
        }
        assert!(matches!(
            encode(&state),
            Err(RegistryError::TooManyMembers(17))
        ));
        state.members.pop_last();
        let bytes = encode(&state).expect("MEMBERS_MAX fits");
        assert_eq!(decode(&bytes).expect("valid"), state);
    }

    #[test]
    fn save_then_load_and_leftover_temp_is_removed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = RegistryFile::new(dir.path());
        assert_eq!(
            file.load().expect("missing is empty"),
            DurableState::default()
        );
        file.save(&sample()).expect("save");
        fs::write(dir.path().join(REGISTRY_TMP_FILE), b"half a save").expect("write");
        assert_eq!(file.load().expect("load"), sample());
        assert!(!dir.path().join(REGISTRY_TMP_FILE).exists());
        let mut next = sample();
        next.term = Term(6);
        next.leader = ServerId::LB;
        file.save(&next).expect("save");
        assert_eq!(file.load().expect("load"), next);
    }

    #[test]
    fn damaged_file_is_an_error_not_an_empty_state() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = RegistryFile::new(dir.path());
        file.save(&sample()).expect("save");
        let mut bytes = fs::read(file.path()).expect("read");
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        fs::write(file.path(), &bytes).expect("write");
        assert!(matches!(file.load(), Err(RegistryError::BadCrc { .. })));
    }
}
