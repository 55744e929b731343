//! The log's on-disk format: the segment header and the record that frames
//! one [`Command`] with its term and index (DESIGN §5).
//!
//! Pure code: it encodes into a `BytesMut` and decodes from `Bytes`, and never
//! touches a file; `server::storage::log` owns the segment files and calls
//! this module for every byte it writes or reads. The format is hand-written,
//! little endian and pinned by golden-bytes tests below:
//!
//! ```text
//! segment header: [magic "STORELOG"][version u8][reserved 7 zero bytes][first_index u64]
//! record:         [length u32][crc32c u32][term u64][index u64][command: length bytes]
//! ```
//!
//! The CRC covers the length, term, index and command bytes (everything but
//! itself); the length is also checked against [`RECORD_BYTES_MAX`] before
//! anything is sliced, so a corrupt length can neither allocate nor read past
//! the buffer. (Version 1 left the length out of the CRC: a damaged length
//! could then meet a CRC that still matched the bytes it pointed at, and be
//! reported as a bad command instead of a bad record; the fuzzer showed one.)

use bytes::{BufMut, Bytes, BytesMut};
use thiserror::Error;

use crate::command::{Command, DecodeError};
use crate::limits::ITEM_BYTES_MAX;

/// Identifies a log segment file.
pub const SEGMENT_MAGIC: [u8; 8] = *b"STORELOG";

/// Version of the segment header, the record framing and the command encoding
/// ([`Command::encode`]) inside it. Bump it on any change to any of them.
pub const FORMAT_VERSION: u8 = 2;

/// Magic, version, 7 reserved bytes, first index.
pub const SEGMENT_HEADER_BYTES: usize = 24;

/// Length, CRC, term, index.
pub const RECORD_HEADER_BYTES: usize = 24;

/// Largest command payload in one record: twice the largest value allowed
/// (`-I` caps at [`ITEM_BYTES_MAX`]), so every command the server accepts
/// fits with room for key and fields, and a corrupt length field is rejected
/// before it can make a reader slice or wait for gigabytes.
pub const RECORD_BYTES_MAX: usize = 2 * ITEM_BYTES_MAX;

/// The shortest command encoding (time and tag of a no-op); recovery uses
/// it to bound how many records can fit between two offsets.
pub const COMMAND_BYTES_MIN: usize = 9;

/// The CRC covers the length field (bytes 0..4) and everything after the
/// CRC field (from byte 8).
const RECORD_LENGTH_BYTES: usize = 4;
const RECORD_CRC_END_BYTES: usize = 8;

/// The CRC of a record whose bytes (length field included, CRC field
/// ignored) are `record`.
fn record_crc(record: &[u8]) -> u32 {
    let crc = crc32c::crc32c(&record[..RECORD_LENGTH_BYTES]);
    crc32c::crc32c_append(crc, &record[RECORD_CRC_END_BYTES..])
}

/// The header at the start of every segment file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentHeader {
    /// Index of the segment's first record; the file is named after it.
    pub first_index: u64,
}

/// Why a segment header was rejected.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum SegmentHeaderError {
    #[error("segment header truncated: {0} of {SEGMENT_HEADER_BYTES} bytes")]
    Truncated(usize),
    #[error("bad segment magic")]
    BadMagic,
    #[error("unsupported log format version {0} (this build reads version {FORMAT_VERSION})")]
    UnsupportedVersion(u8),
    #[error("reserved header bytes are not zero")]
    ReservedNonZero,
}

impl SegmentHeader {
    pub fn encode(&self) -> [u8; SEGMENT_HEADER_BYTES] {
        let mut out = [0u8; SEGMENT_HEADER_BYTES];
        out[..8].copy_from_slice(&SEGMENT_MAGIC);
        out[8] = FORMAT_VERSION;
        // out[9..16] stay zero: reserved for a later version.
        out[16..24].copy_from_slice(&self.first_index.to_le_bytes());
        out
    }

    /// Decodes the header at the start of `buf` (which may hold more).
    pub fn decode(buf: &[u8]) -> Result<SegmentHeader, SegmentHeaderError> {
        if buf.len() < SEGMENT_HEADER_BYTES {
            return Err(SegmentHeaderError::Truncated(buf.len()));
        }
        if buf[..8] != SEGMENT_MAGIC {
            return Err(SegmentHeaderError::BadMagic);
        }
        if buf[8] != FORMAT_VERSION {
            return Err(SegmentHeaderError::UnsupportedVersion(buf[8]));
        }
        // The header has no CRC of its own; strict reserved bytes catch some
        // damage, and the log checks first_index against the file name and
        // the records' indexes.
        if buf[9..16].iter().any(|b| *b != 0) {
            return Err(SegmentHeaderError::ReservedNonZero);
        }
        Ok(SegmentHeader {
            first_index: le_u64(&buf[16..24]),
        })
    }
}

/// One log entry as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub term: u64,
    pub index: u64,
    pub command: Command,
}

/// The fixed fields of a record, read without checking the CRC.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordHeader {
    /// Command bytes after the header.
    pub length: u32,
    pub crc: u32,
    pub term: u64,
    pub index: u64,
}

impl RecordHeader {
    /// Reads the header at `offset`, or `None` when fewer than
    /// [`RECORD_HEADER_BYTES`] remain. Nothing is validated: recovery uses it
    /// as a cheap filter before [`decode_record`].
    pub fn peek(buf: &[u8], offset: usize) -> Option<RecordHeader> {
        let header = buf.get(offset..offset.checked_add(RECORD_HEADER_BYTES)?)?;
        Some(RecordHeader {
            length: le_u32(&header[0..4]),
            crc: le_u32(&header[4..8]),
            term: le_u64(&header[8..16]),
            index: le_u64(&header[16..24]),
        })
    }
}

/// Why a record could not be encoded.
#[derive(Debug, Error, PartialEq, Eq)]
#[error("command of {length} bytes over the record limit of {RECORD_BYTES_MAX} bytes")]
pub struct RecordTooLarge {
    pub length: usize,
}

/// Why the bytes at an offset are not a valid record. The first two mean the
/// bytes are not what was written (torn or damaged); `Command` means they
/// are exactly what was written (the CRC matched) but this build cannot read
/// them, which is never a torn write.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum RecordError {
    #[error("record length {0} over the limit of {RECORD_BYTES_MAX} bytes")]
    LengthOverLimit(usize),
    #[error("crc mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    CrcMismatch { stored: u32, computed: u32 },
    #[error("command does not decode: {0}")]
    Command(#[from] DecodeError),
}

/// Bytes [`encode_record`] appends for `command`.
pub fn record_len(command: &Command) -> usize {
    RECORD_HEADER_BYTES + command.encoded_len()
}

/// Appends one record to `out`, encoding the command in place (no
/// intermediate buffer) and backfilling length and CRC. Returns the bytes
/// appended. On error `out` is unchanged.
pub fn encode_record(
    out: &mut BytesMut,
    term: u64,
    index: u64,
    command: &Command,
) -> Result<usize, RecordTooLarge> {
    encode_record_with(out, term, index, command.encoded_len(), |out| {
        command.encode(out)
    })
}

/// Appends one record holding `command`, a command already encoded (a
/// replicated entry's payload), as [`encode_record`] does for a
/// [`Command`]; the bytes are not decoded again. On error `out` is
/// unchanged.
pub fn encode_record_bytes(
    out: &mut BytesMut,
    term: u64,
    index: u64,
    command: &[u8],
) -> Result<usize, RecordTooLarge> {
    encode_record_with(out, term, index, command.len(), |out| {
        out.put_slice(command)
    })
}

/// The record framing around `length` command bytes that `write` appends.
fn encode_record_with(
    out: &mut BytesMut,
    term: u64,
    index: u64,
    length: usize,
    write: impl FnOnce(&mut BytesMut),
) -> Result<usize, RecordTooLarge> {
    if length > RECORD_BYTES_MAX {
        return Err(RecordTooLarge { length });
    }
    out.reserve(RECORD_HEADER_BYTES + length);
    let start = out.len();
    out.put_u64_le(0); // length and CRC, backfilled below
    out.put_u64_le(term);
    out.put_u64_le(index);
    write(out);
    let record = &mut out[start..];
    assert_eq!(
        record.len(),
        RECORD_HEADER_BYTES + length,
        "Command::encoded_len disagrees with Command::encode"
    );
    // length <= RECORD_BYTES_MAX < u32::MAX, checked above.
    record[0..4].copy_from_slice(&(length as u32).to_le_bytes());
    let crc = record_crc(record);
    record[4..8].copy_from_slice(&crc.to_le_bytes());
    Ok(record.len())
}

/// Decodes the record at `offset` in `buf`.
///
/// - `Ok(Some((record, len)))`: a valid record of `len` bytes; its command
///   shares `buf`'s allocation.
/// - `Ok(None)`: `buf` ends before the record does (incomplete).
/// - `Err(_)`: the bytes are not a valid record.
pub fn decode_record(buf: &Bytes, offset: usize) -> Result<Option<(Record, usize)>, RecordError> {
    let Some(header) = RecordHeader::peek(buf, offset) else {
        return Ok(None);
    };
    let length = header.length as usize;
    if length > RECORD_BYTES_MAX {
        return Err(RecordError::LengthOverLimit(length));
    }
    let end = offset + RECORD_HEADER_BYTES + length;
    if end > buf.len() {
        return Ok(None);
    }
    let computed = record_crc(&buf[offset..end]);
    if computed != header.crc {
        return Err(RecordError::CrcMismatch {
            stored: header.crc,
            computed,
        });
    }
    let command = Command::decode(buf.slice(offset + RECORD_HEADER_BYTES..end))?;
    let record = Record {
        term: header.term,
        index: header.index,
        command,
    };
    Ok(Some((record, end - offset)))
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
    use crate::command::{Op, StoreMode};
    use proptest::prelude::*;

    fn set(key: &'static [u8], data: &'static [u8]) -> Command {
        Command {
            time_s: 0x0102,
            op: Op::Store {
                mode: StoreMode::Set,
                key: Bytes::from_static(key),
                flags: 7,
                exptime: 9,
                data: Bytes::from_static(data),
                cas_unique: 0,
            },
            unique: None,
        }
    }

    fn encode(term: u64, index: u64, command: &Command) -> Bytes {
        let mut out = BytesMut::new();
        let len = encode_record(&mut out, term, index, command).expect("small record");
        assert_eq!(len, out.len());
        assert_eq!(len, record_len(command));
        out.freeze()
    }

    /// Pins the segment header: a change here makes every existing log unreadable.
    #[test]
    fn golden_bytes_segment_header() {
        let header = SegmentHeader {
            first_index: 0x0102_0304,
        };
        let expected: [u8; SEGMENT_HEADER_BYTES] = [
            b'S', b'T', b'O', b'R', b'E', b'L', b'O', b'G', // magic
            2,    // version
            0, 0, 0, 0, 0, 0, 0, // reserved
            0x04, 0x03, 0x02, 0x01, 0, 0, 0, 0, // first index
        ];
        assert_eq!(header.encode(), expected);
        assert_eq!(SegmentHeader::decode(&expected), Ok(header));
    }

    #[test]
    fn segment_header_errors() {
        let good = SegmentHeader { first_index: 1 }.encode();
        assert_eq!(
            SegmentHeader::decode(&good[..23]),
            Err(SegmentHeaderError::Truncated(23))
        );
        let mut bad = good;
        bad[0] = b'X';
        assert_eq!(
            SegmentHeader::decode(&bad),
            Err(SegmentHeaderError::BadMagic)
        );
        // Version 1 (CRC without the length) and a future version alike.
        for version in [1, 3] {
            let mut bad = good;
            bad[8] = version;
            assert_eq!(
                SegmentHeader::decode(&bad),
                Err(SegmentHeaderError::UnsupportedVersion(version))
            );
        }
        let mut bad = good;
        bad[12] = 1;
        assert_eq!(
            SegmentHeader::decode(&bad),
            Err(SegmentHeaderError::ReservedNonZero)
        );
    }

    /// Pins a record's framing: a change here makes every existing log unreadable.
    #[test]
    fn golden_bytes_record() {
        let command = Command {
            time_s: 3,
            op: Op::Delete {
                key: Bytes::from_static(b"k"),
                cas_unique: 0,
            },
            unique: None,
        };
        let bytes = encode(0x0a, 0x0102, &command);
        let body: &[u8] = &[
            0x0a, 0, 0, 0, 0, 0, 0, 0, // term
            0x02, 0x01, 0, 0, 0, 0, 0, 0, // index
            3, 0, 0, 0, 0, 0, 0, 0, // command: time_s
            2, 1, b'k', // command: delete, key
        ];
        let length = [11, 0, 0, 0];
        let crc = crc32c::crc32c_append(crc32c::crc32c(&length), body);
        let mut expected = length.to_vec();
        expected.extend_from_slice(&crc.to_le_bytes());
        expected.extend_from_slice(body);
        assert_eq!(&bytes[..], &expected[..]);
        // The CRC value itself is pinned too (checked against an independent
        // bitwise CRC32C), so a change of checksum algorithm cannot slip
        // through as "still self-consistent".
        assert_eq!(
            &bytes[4..8],
            &0x7a6b_6e80u32.to_le_bytes(),
            "crc {crc:#010x}"
        );

        let (record, len) = decode_record(&bytes, 0).unwrap().unwrap();
        assert_eq!(len, bytes.len());
        assert_eq!(
            record,
            Record {
                term: 0x0a,
                index: 0x0102,
                command
            }
        );
    }

    #[test]
    fn decodes_at_offset_and_shares_the_buffer() {
        let mut out = BytesMut::new();
        encode_record(&mut out, 1, 1, &set(b"a", b"first")).unwrap();
        let second_at = out.len();
        encode_record(&mut out, 2, 2, &set(b"b", b"second")).unwrap();
        let buf = out.freeze();
        let (first, len) = decode_record(&buf, 0).unwrap().unwrap();
        assert_eq!(len, second_at);
        assert_eq!(first.index, 1);
        let (second, len) = decode_record(&buf, second_at).unwrap().unwrap();
        assert_eq!(second_at + len, buf.len());
        assert_eq!((second.term, second.index), (2, 2));
        let Op::Store { data, .. } = &second.command.op else {
            panic!("store expected");
        };
        let inside = buf.as_ptr_range();
        assert!(inside.contains(&data.as_ptr()), "value was copied");
        assert_eq!(decode_record(&buf, buf.len()), Ok(None));
    }

    #[test]
    fn shortest_command_is_command_bytes_min() {
        let noop = Command {
            time_s: 0,
            op: Op::Noop,
            unique: None,
        };
        assert_eq!(noop.encoded_len(), COMMAND_BYTES_MIN);
    }

    #[test]
    fn every_prefix_is_incomplete() {
        let bytes = encode(1, 1, &set(b"key", b"value"));
        for cut in 0..bytes.len() {
            assert_eq!(
                decode_record(&bytes.slice(..cut), 0),
                Ok(None),
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn length_over_limit_is_rejected_before_reading() {
        let mut bytes = BytesMut::from(&encode(1, 1, &set(b"key", b"value"))[..]);
        bytes[0..4].copy_from_slice(&(RECORD_BYTES_MAX as u32 + 1).to_le_bytes());
        assert_eq!(
            decode_record(&bytes.freeze(), 0),
            Err(RecordError::LengthOverLimit(RECORD_BYTES_MAX + 1))
        );
    }

    #[test]
    fn undecodable_command_with_good_crc_is_a_command_error() {
        // A tag this build does not know, framed with a correct CRC.
        let mut body = Vec::new();
        body.extend_from_slice(&1u64.to_le_bytes());
        body.extend_from_slice(&1u64.to_le_bytes());
        body.extend_from_slice(&0u64.to_le_bytes());
        body.push(0xee);
        let mut bytes = Vec::new();
        let length = 9u32.to_le_bytes();
        bytes.extend_from_slice(&length);
        let crc = crc32c::crc32c_append(crc32c::crc32c(&length), &body);
        bytes.extend_from_slice(&crc.to_le_bytes());
        bytes.extend_from_slice(&body);
        assert_eq!(
            decode_record(&Bytes::from(bytes), 0),
            Err(RecordError::Command(DecodeError::UnknownTag(0xee)))
        );
    }

    /// CRC32C detects every single-bit error in what it covers; a flip in the
    /// length makes the record either incomplete, over the limit, or cover
    /// different bytes than the CRC was computed on.
    #[test]
    fn every_single_bit_flip_is_detected() {
        let bytes = encode(7, 42, &set(b"some-key", b"some value bytes"));
        for bit in 0..bytes.len() * 8 {
            let mut damaged = bytes.to_vec();
            damaged[bit / 8] ^= 1 << (bit % 8);
            let result = decode_record(&Bytes::from(damaged), 0);
            assert!(
                !matches!(result, Ok(Some(_))),
                "flip of bit {bit} went undetected: {result:?}"
            );
        }
    }

    fn command() -> impl Strategy<Value = Command> {
        let key = proptest::collection::vec(any::<u8>(), 1..=250).prop_map(Bytes::from);
        let data = proptest::collection::vec(any::<u8>(), 0..256).prop_map(Bytes::from);
        (
            any::<u64>(),
            key,
            data,
            any::<u32>(),
            any::<u64>(),
            any::<bool>(),
        )
            .prop_map(|(time_s, key, data, flags, number, store)| Command {
                time_s,
                op: if store {
                    Op::Store {
                        mode: StoreMode::Set,
                        key,
                        flags,
                        exptime: number,
                        data,
                        cas_unique: number,
                    }
                } else {
                    Op::Arith {
                        key,
                        delta: number,
                        incr: flags % 2 == 0,
                        cas_unique: 0,
                        initial: None,
                        touch: None,
                    }
                },
                unique: None,
            })
    }

    proptest! {
        #[test]
        fn roundtrip(records in proptest::collection::vec((any::<u64>(), any::<u64>(), command()), 1..8)) {
            let mut out = BytesMut::new();
            for (term, index, command) in &records {
                encode_record(&mut out, *term, *index, command).unwrap();
            }
            let buf = out.freeze();
            let mut offset = 0;
            for (term, index, command) in records {
                let (record, len) = decode_record(&buf, offset).unwrap().unwrap();
                prop_assert_eq!(record, Record { term, index, command });
                offset += len;
            }
            prop_assert_eq!(offset, buf.len());
        }

        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..128), offset in 0usize..160) {
            let _ = decode_record(&Bytes::from(bytes), offset);
        }
    }
}
