//! The keystore (snapshot) format: the whole key-value [`State`] at an
//! applied log index, as written to the `keystore` file (DESIGN §5).
//!
//! Pure code: it encodes into any `std::io::Write` and decodes from any
//! `std::io::Read` (a buffered file, a byte slice, a snapshot stream) and
//! never opens a file itself; `server::storage::keystore_file` owns the file
//! and its atomic replacement. Decoding checks every length against
//! [`crate::limits`] before allocating and verifies the trailing CRC, so a
//! damaged file is an error, never a wrong state. The format is
//! hand-written, little endian and pinned by a golden-bytes test:
//!
//! ```text
//! header:  [magic "STOREKS\0"][version u8][reserved 7 zero bytes]
//!          [applied_index u64][applied_term u64][flush_deadline_s u64, 0 = none][item_count u64]
//! members: [voter count u16][voter id u64]* [learner count u16][learner id u64]*
//! clock:   [clock_s u64] (version 3 on; the state's latest applied time)
//! item:    [key_len u8][key][flags u32][exptime u64][cas u64][updated_s u64][lease u8 (version 4 on)][value_len u32][value]
//! trailer: [crc32c u32 of every byte before it]
//! ```

use std::io::{self, Read, Write};

use bytes::Bytes;
use thiserror::Error;

use crate::command::CONFIG_MEMBERS_MAX;
use crate::limits::{ITEM_BYTES_MAX, KEY_BYTES_MAX};
use crate::state::{visible, Item, ItemRef, Members, State};

/// Identifies a keystore file.
pub const KEYSTORE_MAGIC: [u8; 8] = *b"STOREKS\0";

/// Version of this format; bump it on any change.
/// Version 2 added the replica group's membership after the header;
/// version 3 the state's clock after the membership; version 4 each item's
/// lease bits. Version 2 files are still read (as of clock 0: every item
/// they hold is kept), and 2 and 3 as holding no lease.
pub const KEYSTORE_VERSION: u8 = 4;

/// The oldest version this build reads.
const KEYSTORE_VERSION_MIN: u8 = 2;

/// Magic, version, reserved, applied index, applied term, flush deadline,
/// item count.
pub const KEYSTORE_HEADER_BYTES: usize = 48;

/// The CRC after the last item.
pub const KEYSTORE_TRAILER_BYTES: usize = 4;

/// An item's bytes besides its key and value: key length, flags, exptime,
/// cas, updated_s, lease, value length.
const ITEM_FIELDS_BYTES: usize = 1 + 4 + 8 + 8 + 8 + 1 + 4;

/// The first version whose items carry their lease bits.
const KEYSTORE_VERSION_LEASE: u8 = 4;

/// What a keystore file says besides its items.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeystoreHeader {
    /// Log index of the last entry applied to the state.
    pub applied_index: u64,
    /// Term of that entry, so the log's consistency check works across the
    /// snapshot boundary.
    pub applied_term: u64,
    pub flush_deadline_s: Option<u64>,
    pub item_count: u64,
    /// The format version the file was written in.
    pub version: u8,
}

/// How a keystore file is damaged.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum Corruption {
    #[error("file ends early")]
    Truncated,
    #[error("bad keystore magic")]
    BadMagic,
    #[error("unsupported keystore version {0} (this build reads versions {KEYSTORE_VERSION_MIN} to {KEYSTORE_VERSION})")]
    UnsupportedVersion(u8),
    #[error("reserved header bytes are not zero")]
    ReservedNonZero,
    #[error("key length {0} out of range 1..={KEY_BYTES_MAX}")]
    KeyLength(usize),
    #[error("value length {0} over the limit of {ITEM_BYTES_MAX} bytes")]
    ValueLength(usize),
    #[error("crc mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    CrcMismatch { stored: u32, computed: u32 },
    #[error("bytes after the trailer")]
    TrailingBytes,
    #[error("{items} distinct keys for an item count of {count}")]
    DuplicateKeys { items: u64, count: u64 },
    #[error("{0} members in a configuration, over {CONFIG_MEMBERS_MAX}")]
    Members(usize),
}

/// Why a keystore could not be decoded.
#[derive(Debug, Error)]
pub enum KeystoreError {
    /// Reading failed; says nothing about the file's contents.
    #[error("read failed: {0}")]
    Io(#[from] io::Error),
    /// The bytes are not a valid keystore; `offset` is where reading stopped.
    #[error("at offset {offset}: {reason}")]
    Corrupt { offset: u64, reason: Corruption },
}

/// What [`encode`] needs of an item: a state's [`ItemRef`]s, or owned
/// `(key, Item)` pairs.
pub trait ItemFields {
    fn key(&self) -> &[u8];
    fn data(&self) -> &[u8];
    fn flags(&self) -> u32;
    fn exptime(&self) -> u64;
    fn cas(&self) -> u64;
    fn updated_s(&self) -> u64;
    fn lease(&self) -> u8;
}

impl ItemFields for ItemRef<'_> {
    fn key(&self) -> &[u8] {
        ItemRef::key(self)
    }
    fn data(&self) -> &[u8] {
        ItemRef::data(self)
    }
    fn flags(&self) -> u32 {
        ItemRef::flags(self)
    }
    fn exptime(&self) -> u64 {
        ItemRef::exptime(self)
    }
    fn cas(&self) -> u64 {
        ItemRef::cas(self)
    }
    fn updated_s(&self) -> u64 {
        ItemRef::updated_s(self)
    }
    fn lease(&self) -> u8 {
        ItemRef::lease(self)
    }
}

impl ItemFields for (&Bytes, &Item) {
    fn key(&self) -> &[u8] {
        self.0
    }
    fn data(&self) -> &[u8] {
        &self.1.data
    }
    fn flags(&self) -> u32 {
        self.1.flags
    }
    fn exptime(&self) -> u64 {
        self.1.exptime
    }
    fn cas(&self) -> u64 {
        self.1.cas
    }
    fn updated_s(&self) -> u64 {
        self.1.updated_s
    }
    fn lease(&self) -> u8 {
        self.1.lease
    }
}

/// Writes a keystore for `items` to `out`; returns the bytes written.
///
/// Takes the pieces rather than a [`State`] so the caller can clone the item
/// list under its lock and encode off it. `items` must yield exactly as many
/// items as its `len()` says, with distinct keys. Fails with
/// `InvalidInput` if an item breaks the limits the decoder enforces, so an
/// unreadable file is never produced. `out` should be buffered: every item is
/// two writes.
#[allow(clippy::too_many_arguments)]
pub fn encode<W, I>(
    mut out: W,
    applied_index: u64,
    applied_term: u64,
    flush_deadline_s: Option<u64>,
    clock_s: u64,
    config: &Members,
    items: I,
) -> io::Result<u64>
where
    W: Write,
    I: IntoIterator,
    I::Item: ItemFields,
    I::IntoIter: ExactSizeIterator,
{
    let items = items.into_iter();
    let item_count = items.len() as u64;
    let mut out = CrcWriter::new(&mut out);

    let mut header = [0u8; KEYSTORE_HEADER_BYTES];
    header[..8].copy_from_slice(&KEYSTORE_MAGIC);
    header[8] = KEYSTORE_VERSION;
    header[16..24].copy_from_slice(&applied_index.to_le_bytes());
    header[24..32].copy_from_slice(&applied_term.to_le_bytes());
    // A state never holds Some(0): apply treats deadline 0 as "flush now".
    header[32..40].copy_from_slice(&flush_deadline_s.unwrap_or(0).to_le_bytes());
    header[40..48].copy_from_slice(&item_count.to_le_bytes());
    out.write_all(&header)?;
    for ids in [&config.0, &config.1] {
        if ids.len() > CONFIG_MEMBERS_MAX {
            return Err(invalid_input(format!("{} members", ids.len())));
        }
        out.write_all(&(ids.len() as u16).to_le_bytes())?;
        for id in ids {
            out.write_all(&id.to_le_bytes())?;
        }
    }
    out.write_all(&clock_s.to_le_bytes())?;

    // One fixed buffer for every item's key and fields, so the CRC and the
    // writer see two calls per item instead of seven.
    let mut fields = [0u8; ITEM_FIELDS_BYTES + KEY_BYTES_MAX];
    let mut written = 0u64;
    for item in items {
        let (key, data) = (item.key(), item.data());
        if key.is_empty() || key.len() > KEY_BYTES_MAX {
            return Err(invalid_input(format!("key length {}", key.len())));
        }
        if data.len() > ITEM_BYTES_MAX {
            return Err(invalid_input(format!("value length {}", data.len())));
        }
        let key_len = key.len();
        fields[0] = key_len as u8;
        fields[1..1 + key_len].copy_from_slice(key);
        let rest = &mut fields[1 + key_len..ITEM_FIELDS_BYTES + key_len];
        rest[0..4].copy_from_slice(&item.flags().to_le_bytes());
        rest[4..12].copy_from_slice(&item.exptime().to_le_bytes());
        rest[12..20].copy_from_slice(&item.cas().to_le_bytes());
        rest[20..28].copy_from_slice(&item.updated_s().to_le_bytes());
        rest[28] = item.lease();
        // data.len() <= ITEM_BYTES_MAX < u32::MAX, checked above.
        rest[29..33].copy_from_slice(&(data.len() as u32).to_le_bytes());
        out.write_all(&fields[..ITEM_FIELDS_BYTES + key_len])?;
        out.write_all(data)?;
        written += 1;
    }
    if written != item_count {
        return Err(invalid_input(format!(
            "iterator yielded {written} items, announced {item_count}"
        )));
    }
    let crc = out.crc;
    out.write_all(&crc.to_le_bytes())?;
    Ok(out.offset)
}

/// Reads a keystore from `input` and rebuilds the state it holds; returns it
/// with the applied term. Items no reader can see at the file's clock are
/// left out (the writer leaves them out too; an older writer did not). `item_bytes_max` is the server's `-I`, passed on to
/// the state; values up to [`ITEM_BYTES_MAX`] are accepted whatever it is, so
/// a restart with a smaller `-I` does not lose items stored before.
/// `input` should be buffered.
pub fn decode<R: Read>(input: R, item_bytes_max: usize) -> Result<(State, u64), KeystoreError> {
    let mut input = CrcReader::new(input);
    let header = read_header(&mut input)?;
    let config = (read_ids(&mut input)?, read_ids(&mut input)?);
    let clock_s = if header.version >= 3 {
        let mut clock = [0u8; 8];
        input.read_exact_or_corrupt(&mut clock)?;
        u64::from_le_bytes(clock)
    } else {
        0
    };
    let mut error = None;
    let mut skipped = 0u64;
    let mut state = State::restore(
        item_bytes_max,
        header.applied_index,
        header.flush_deadline_s,
        clock_s,
        ItemReader {
            input: &mut input,
            version: header.version,
            remaining: header.item_count,
            error: &mut error,
        }
        .filter(|(_, item)| {
            let keep = visible(
                header.flush_deadline_s,
                clock_s,
                item.exptime,
                item.updated_s,
            );
            skipped += u64::from(!keep);
            keep
        }),
    );
    if let Some(error) = error {
        return Err(error);
    }
    if skipped > 0 {
        state.shrink_to_fit();
    }
    state.set_config(config);
    let computed = input.crc;
    let mut trailer = [0u8; KEYSTORE_TRAILER_BYTES];
    input.read_exact_or_corrupt(&mut trailer)?;
    let stored = u32::from_le_bytes(trailer);
    if stored != computed {
        return Err(input.corrupt(Corruption::CrcMismatch { stored, computed }));
    }
    if !input.at_end()? {
        return Err(input.corrupt(Corruption::TrailingBytes));
    }
    // Checked after the CRC: with a good CRC, duplicates mean the writer was
    // given a bad item list, which a reader must still refuse.
    if state.len() as u64 + skipped != header.item_count {
        return Err(input.corrupt(Corruption::DuplicateKeys {
            items: state.len() as u64 + skipped,
            count: header.item_count,
        }));
    }
    Ok((state, header.applied_term))
}

/// The header at the start of a keystore file's bytes (the items and the
/// trailer are not checked): what a leader needs to stream the file.
pub fn header(bytes: &[u8]) -> Result<KeystoreHeader, KeystoreError> {
    read_header(&mut CrcReader::new(bytes))
}

fn read_header<R: Read>(input: &mut CrcReader<R>) -> Result<KeystoreHeader, KeystoreError> {
    let mut header = [0u8; KEYSTORE_HEADER_BYTES];
    input.read_exact_or_corrupt(&mut header)?;
    if header[..8] != KEYSTORE_MAGIC {
        return Err(corrupt_at(0, Corruption::BadMagic));
    }
    let version = header[8];
    if !(KEYSTORE_VERSION_MIN..=KEYSTORE_VERSION).contains(&version) {
        return Err(corrupt_at(8, Corruption::UnsupportedVersion(version)));
    }
    if header[9..16].iter().any(|b| *b != 0) {
        return Err(corrupt_at(9, Corruption::ReservedNonZero));
    }
    let flush = le_u64(&header[32..40]);
    Ok(KeystoreHeader {
        applied_index: le_u64(&header[16..24]),
        applied_term: le_u64(&header[24..32]),
        flush_deadline_s: (flush != 0).then_some(flush),
        item_count: le_u64(&header[40..48]),
        version,
    })
}

/// One `[count u16][id u64]*` list of the membership.
fn read_ids<R: Read>(input: &mut CrcReader<R>) -> Result<Vec<u64>, KeystoreError> {
    let mut count = [0u8; 2];
    input.read_exact_or_corrupt(&mut count)?;
    let count = usize::from(u16::from_le_bytes(count));
    if count > CONFIG_MEMBERS_MAX {
        return Err(input.corrupt(Corruption::Members(count)));
    }
    let mut ids = Vec::with_capacity(count);
    for _ in 0..count {
        let mut id = [0u8; 8];
        input.read_exact_or_corrupt(&mut id)?;
        ids.push(u64::from_le_bytes(id));
    }
    Ok(ids)
}

fn read_item<R: Read>(
    input: &mut CrcReader<R>,
    version: u8,
) -> Result<(Bytes, Item), KeystoreError> {
    let mut key_len = [0u8; 1];
    input.read_exact_or_corrupt(&mut key_len)?;
    let key_len = usize::from(key_len[0]);
    if key_len == 0 || key_len > KEY_BYTES_MAX {
        return Err(input.corrupt(Corruption::KeyLength(key_len)));
    }
    let mut key = [0u8; KEY_BYTES_MAX];
    input.read_exact_or_corrupt(&mut key[..key_len])?;
    // Flags, exptime, cas, updated_s, then the lease byte from version 4
    // on, then the value's length.
    let mut fields = [0u8; ITEM_FIELDS_BYTES - 1];
    let with_lease = version >= KEYSTORE_VERSION_LEASE;
    let fields = &mut fields[..ITEM_FIELDS_BYTES - 1 - usize::from(!with_lease)];
    input.read_exact_or_corrupt(fields)?;
    let lease = if with_lease { fields[28] } else { 0 };
    let at = fields.len() - 4;
    let value_len = le_u32(&fields[at..at + 4]) as usize;
    if value_len > ITEM_BYTES_MAX {
        return Err(input.corrupt(Corruption::ValueLength(value_len)));
    }
    let mut data = vec![0u8; value_len];
    input.read_exact_or_corrupt(&mut data)?;
    let item = Item {
        data: Bytes::from(data),
        flags: le_u32(&fields[0..4]),
        exptime: le_u64(&fields[4..12]),
        cas: le_u64(&fields[12..20]),
        updated_s: le_u64(&fields[20..28]),
        lease,
    };
    Ok((Bytes::copy_from_slice(&key[..key_len]), item))
}

/// Feeds items to [`State::restore`] straight from the reader, so no second
/// copy of the item list is built; the first error ends the iteration and is
/// left in `error` for [`decode`] to return.
struct ItemReader<'a, R> {
    input: &'a mut CrcReader<R>,
    /// The file's format version, which decides an item's fields.
    version: u8,
    remaining: u64,
    error: &'a mut Option<KeystoreError>,
}

impl<R: Read> Iterator for ItemReader<'_, R> {
    type Item = (Bytes, Item);

    fn size_hint(&self) -> (usize, Option<usize>) {
        // The file's count, not verified yet: a hint for reserving only.
        let remaining = usize::try_from(self.remaining).unwrap_or(usize::MAX);
        (remaining, Some(remaining))
    }

    fn next(&mut self) -> Option<(Bytes, Item)> {
        if self.remaining == 0 || self.error.is_some() {
            return None;
        }
        self.remaining -= 1;
        match read_item(self.input, self.version) {
            Ok(item) => Some(item),
            Err(error) => {
                *self.error = Some(error);
                None
            }
        }
    }
}

/// A writer that keeps the CRC and count of everything written through it.
struct CrcWriter<W> {
    inner: W,
    crc: u32,
    offset: u64,
}

impl<W: Write> CrcWriter<W> {
    fn new(inner: W) -> Self {
        CrcWriter {
            inner,
            crc: 0,
            offset: 0,
        }
    }

    fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.inner.write_all(bytes)?;
        self.crc = crc32c::crc32c_append(self.crc, bytes);
        self.offset += bytes.len() as u64;
        Ok(())
    }
}

/// A reader that keeps the CRC of, and the offset after, everything read.
struct CrcReader<R> {
    inner: R,
    crc: u32,
    offset: u64,
}

impl<R: Read> CrcReader<R> {
    fn new(inner: R) -> Self {
        CrcReader {
            inner,
            crc: 0,
            offset: 0,
        }
    }

    fn read_exact_or_corrupt(&mut self, buf: &mut [u8]) -> Result<(), KeystoreError> {
        match self.inner.read_exact(buf) {
            Ok(()) => {
                self.crc = crc32c::crc32c_append(self.crc, buf);
                self.offset += buf.len() as u64;
                Ok(())
            }
            Err(error) if error.kind() == io::ErrorKind::UnexpectedEof => {
                Err(self.corrupt(Corruption::Truncated))
            }
            Err(error) => Err(KeystoreError::Io(error)),
        }
    }

    fn at_end(&mut self) -> Result<bool, KeystoreError> {
        let mut byte = [0u8; 1];
        loop {
            match self.inner.read(&mut byte) {
                Ok(n) => return Ok(n == 0),
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                Err(error) => return Err(KeystoreError::Io(error)),
            }
        }
    }

    fn corrupt(&self, reason: Corruption) -> KeystoreError {
        corrupt_at(self.offset, reason)
    }
}

fn corrupt_at(offset: u64, reason: Corruption) -> KeystoreError {
    KeystoreError::Corrupt { offset, reason }
}

fn invalid_input(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, message)
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
    use crate::limits::ITEM_BYTES_DEFAULT;
    use proptest::prelude::*;

    fn item(data: &[u8], n: u64) -> Item {
        Item {
            data: Bytes::copy_from_slice(data),
            flags: n as u32,
            exptime: n.wrapping_mul(3),
            cas: n,
            updated_s: n.wrapping_mul(5),
            lease: 0,
        }
    }

    fn encode_vec(index: u64, term: u64, flush: Option<u64>, items: &[(Bytes, Item)]) -> Vec<u8> {
        encode_at(index, term, flush, 0, items)
    }

    fn encode_at(
        index: u64,
        term: u64,
        flush: Option<u64>,
        clock_s: u64,
        items: &[(Bytes, Item)],
    ) -> Vec<u8> {
        let mut out = Vec::new();
        let len = encode(
            &mut out,
            index,
            term,
            flush,
            clock_s,
            &(vec![], vec![]),
            items.iter().map(|(k, v)| (k, v)),
        )
        .expect("valid items");
        assert_eq!(len, out.len() as u64);
        out
    }

    fn sorted(state: &State) -> Vec<(Bytes, Item)> {
        let mut items: Vec<_> = state
            .items()
            .map(|i| (Bytes::copy_from_slice(i.key()), i.to_item()))
            .collect();
        items.sort_by(|a, b| a.0.cmp(&b.0));
        items
    }

    /// Pins the format: a change here makes every existing keystore unreadable.
    #[test]
    fn golden_bytes() {
        let items = vec![(
            Bytes::from_static(b"ab"),
            Item {
                data: Bytes::from_static(b"xyz"),
                flags: 7,
                exptime: 9,
                cas: 5,
                updated_s: 6,
                lease: 2,
            },
        )];
        let bytes = encode_at(0x0102, 3, Some(0x10), 4, &items);
        let body: &[u8] = &[
            b'S', b'T', b'O', b'R', b'E', b'K', b'S', 0, // magic
            4, // version
            0, 0, 0, 0, 0, 0, 0, // reserved
            0x02, 0x01, 0, 0, 0, 0, 0, 0, // applied index
            3, 0, 0, 0, 0, 0, 0, 0, // applied term
            0x10, 0, 0, 0, 0, 0, 0, 0, // flush deadline
            1, 0, 0, 0, 0, 0, 0, 0, // item count
            0, 0, // voters
            0, 0, // learners
            4, 0, 0, 0, 0, 0, 0, 0, // clock
            2, b'a', b'b', // key
            7, 0, 0, 0, // flags
            9, 0, 0, 0, 0, 0, 0, 0, // exptime
            5, 0, 0, 0, 0, 0, 0, 0, // cas
            6, 0, 0, 0, 0, 0, 0, 0, // updated_s
            2, // lease
            3, 0, 0, 0, b'x', b'y', b'z', // value
        ];
        assert_eq!(&bytes[..body.len()], body);
        assert_eq!(&bytes[body.len()..], &crc32c::crc32c(body).to_le_bytes());
        assert_eq!(bytes.len(), body.len() + KEYSTORE_TRAILER_BYTES);

        let (state, term) = decode(&bytes[..], ITEM_BYTES_DEFAULT).unwrap();
        assert_eq!(term, 3);
        assert_eq!(state.applied_index(), 0x0102);
        assert_eq!(state.flush_deadline_s(), Some(0x10));
        assert_eq!(state.clock_s(), 4);
        assert_eq!(sorted(&state), items);
        assert_eq!(state.bytes(), 5);
    }

    /// Version 2 (no clock) and 3 (no leases) files are still read, every
    /// item kept, holding no lease.
    #[test]
    fn versions_2_and_3_are_read() {
        let items = vec![(Bytes::from_static(b"ab"), item(b"xyz", 5))];
        let v4 = encode_vec(7, 1, None, &items);
        // Version 3 is version 4 without each item's lease byte, which
        // follows the key (2 bytes) and four fields (28 bytes).
        let item_at = KEYSTORE_HEADER_BYTES + 4 + 8;
        let lease_at = item_at + 1 + 2 + 28;
        let mut v3 = v4[..lease_at].to_vec();
        v3[8] = 3;
        v3.extend_from_slice(&v4[lease_at + 1..v4.len() - 4]);
        v3.extend_from_slice(&crc32c::crc32c(&v3).to_le_bytes());
        let (state, _) = decode(&v3[..], ITEM_BYTES_DEFAULT).unwrap();
        assert_eq!(sorted(&state), items);
        // Version 2 is version 3 without the clock after the membership.
        let mut v2 = v3[..KEYSTORE_HEADER_BYTES + 4].to_vec();
        v2[8] = 2;
        v2.extend_from_slice(&v3[KEYSTORE_HEADER_BYTES + 4 + 8..v3.len() - 4]);
        v2.extend_from_slice(&crc32c::crc32c(&v2).to_le_bytes());
        let (state, _) = decode(&v2[..], ITEM_BYTES_DEFAULT).unwrap();
        assert_eq!(state.clock_s(), 0);
        assert_eq!(sorted(&state), items);
        v2[8] = 1;
        assert!(decode(&v2[..], ITEM_BYTES_DEFAULT).is_err());
    }

    /// Items no reader can see at the file's clock are not loaded, and
    /// still count towards the item count check.
    #[test]
    fn invisible_items_are_not_loaded() {
        let at = |exptime: u64, updated_s: u64| Item {
            data: Bytes::from_static(b"v"),
            flags: 0,
            exptime,
            cas: 1,
            updated_s,
            lease: 0,
        };
        let items = vec![
            (Bytes::from_static(b"expired"), at(100, 50)),
            (Bytes::from_static(b"flushed"), at(0, 60)),
            (Bytes::from_static(b"live"), at(0, 90)),
            (Bytes::from_static(b"later"), at(300, 95)),
        ];
        let bytes = encode_at(9, 1, Some(80), 200, &items);
        let (state, _) = decode(&bytes[..], ITEM_BYTES_DEFAULT).unwrap();
        let keys: Vec<_> = sorted(&state).into_iter().map(|(k, _)| k).collect();
        assert_eq!(keys, [&b"later"[..], b"live"]);
        assert_eq!(state.clock_s(), 200);
    }

    #[test]
    fn membership_roundtrip() {
        let config = (vec![1, 2, 3], vec![9]);
        let mut out = Vec::new();
        encode(
            &mut out,
            4,
            1,
            None,
            0,
            &config,
            std::iter::empty::<(&Bytes, &Item)>(),
        )
        .unwrap();
        assert_eq!(
            &out[KEYSTORE_HEADER_BYTES..KEYSTORE_HEADER_BYTES + 2],
            &[3, 0]
        );
        let (state, _) = decode(&out[..], ITEM_BYTES_DEFAULT).unwrap();
        assert_eq!(state.config(), &config);
    }

    #[test]
    fn empty_keystore_roundtrip() {
        let bytes = encode_vec(0, 0, None, &[]);
        assert_eq!(
            bytes.len(),
            KEYSTORE_HEADER_BYTES + 4 + 8 + KEYSTORE_TRAILER_BYTES
        );
        let (state, term) = decode(&bytes[..], ITEM_BYTES_DEFAULT).unwrap();
        assert_eq!((state.len(), state.applied_index(), term), (0, 0, 0));
        assert_eq!(state.flush_deadline_s(), None);
    }

    #[test]
    fn every_prefix_and_every_byte_flip_is_detected() {
        let items: Vec<_> = (1..4u64)
            .map(|n| (Bytes::from(format!("key{n}")), item(b"value", n)))
            .collect();
        let bytes = encode_vec(9, 2, None, &items);
        for cut in 0..bytes.len() {
            assert!(
                decode(&bytes[..cut], ITEM_BYTES_DEFAULT).is_err(),
                "cut at {cut}"
            );
        }
        for at in 0..bytes.len() {
            let mut damaged = bytes.clone();
            damaged[at] ^= 0x41;
            let result = decode(&damaged[..], ITEM_BYTES_DEFAULT);
            assert!(
                matches!(result, Err(KeystoreError::Corrupt { .. })),
                "flip at {at}: {result:?}"
            );
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(matches!(
            decode(&longer[..], ITEM_BYTES_DEFAULT),
            Err(KeystoreError::Corrupt {
                reason: Corruption::TrailingBytes,
                ..
            })
        ));
    }

    #[test]
    fn value_length_is_checked_before_allocating() {
        let items = vec![(Bytes::from_static(b"k"), item(b"v", 1))];
        let mut bytes = encode_vec(1, 1, None, &items);
        // The value length: after the key's length and key, four fields
        // (28 bytes) and the lease byte.
        let at = KEYSTORE_HEADER_BYTES + 4 + 8 + 1 + 1 + 28 + 1;
        bytes[at..at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        let result = decode(&bytes[..], ITEM_BYTES_DEFAULT);
        assert!(
            matches!(
                result,
                Err(KeystoreError::Corrupt {
                    reason: Corruption::ValueLength(len),
                    ..
                }) if len == u32::MAX as usize
            ),
            "{result:?}"
        );
    }

    #[test]
    fn duplicate_keys_are_refused() {
        let key = Bytes::from_static(b"k");
        let items = vec![(key.clone(), item(b"1", 1)), (key, item(b"2", 2))];
        let bytes = encode_vec(1, 1, None, &items);
        assert!(matches!(
            decode(&bytes[..], ITEM_BYTES_DEFAULT),
            Err(KeystoreError::Corrupt {
                reason: Corruption::DuplicateKeys { items: 1, count: 2 },
                ..
            })
        ));
    }

    #[test]
    fn encode_refuses_what_decode_would_refuse() {
        let items = [(Bytes::new(), item(b"v", 1))];
        let config = (vec![], vec![]);
        let result = encode(
            Vec::new(),
            1,
            1,
            None,
            0,
            &config,
            items.iter().map(|(k, v)| (k, v)),
        );
        assert_eq!(result.unwrap_err().kind(), io::ErrorKind::InvalidInput);
    }

    proptest! {
        #[test]
        fn roundtrip(
            entries in proptest::collection::hash_map(
                proptest::collection::vec(any::<u8>(), 1..=KEY_BYTES_MAX),
                (proptest::collection::vec(any::<u8>(), 0..300), any::<u64>()),
                0..40,
            ),
            index in any::<u64>(),
            term in any::<u64>(),
            flush in proptest::option::of(1u64..),
        ) {
            let mut items: Vec<_> = entries
                .into_iter()
                .map(|(key, (data, n))| (Bytes::from(key), item(&data, n)))
                .collect();
            items.sort_by(|a, b| a.0.cmp(&b.0));
            let bytes = encode_vec(index, term, flush, &items);
            let (state, decoded_term) = decode(&bytes[..], ITEM_BYTES_DEFAULT).unwrap();
            prop_assert_eq!(decoded_term, term);
            prop_assert_eq!(state.applied_index(), index);
            prop_assert_eq!(state.flush_deadline_s(), flush);
            prop_assert_eq!(sorted(&state), items);
        }
    }
}
