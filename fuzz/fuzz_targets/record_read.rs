//! Fuzzes the log's on-disk record format (`data::record`, with the command
//! encoding of `data::command` inside it) three ways, checking properties and
//! not only that nothing panics:
//! - the input as log bytes read at an offset: decode never panics; a record
//!   it returns lies inside the buffer, is no longer than
//!   `RECORD_HEADER_BYTES + RECORD_BYTES_MAX`, and re-encodes to exactly the
//!   bytes it was read from; `Ok(None)` (incomplete) only when the buffer
//!   ends before the header or the length it declares; an over-limit length
//!   only when the length field says so; the segment header likewise
//!   re-encodes to the bytes it was read from;
//! - the input as a command payload framed with a correct length and CRC (so
//!   the command decoder is reached, which random bytes never get past the
//!   CRC to do): decode gives a record that re-encodes to the same bytes, or
//!   a `Command` error, never a torn or corrupt verdict;
//! - the input as a seed for two valid records back to back: they decode in
//!   order to what was encoded; every truncation of a record (a torn write)
//!   is incomplete; a single flipped bit is never a valid record, and outside
//!   the length field it is always a CRC mismatch (CRC32C detects every
//!   single-bit error in what it covers). The length field is covered too
//!   (format version 2), but a flip there also moves where the record ends,
//!   so the CRC is then checked over other bytes: only "not a valid record"
//!   is asserted there. (In version 1 the length was outside the CRC and
//!   this target found, at once, a flipped length whose CRC still matched:
//!   term 0x0000_0000_ffff_ffff then zeros drives the CRC register to zero.)
#![no_main]

use bytes::{Bytes, BytesMut};
use data::command::{Command, Initial, Op, StoreMode, CONFIG_MEMBERS_MAX};
use data::limits::KEY_BYTES_MAX;
use data::record::{
    decode_record, encode_record, record_len, RecordError, RecordHeader, SegmentHeader,
    RECORD_BYTES_MAX, RECORD_HEADER_BYTES, SEGMENT_HEADER_BYTES,
};
use libfuzzer_sys::fuzz_target;

#[allow(dead_code)] // each target uses some of the shared builders
#[path = "../common/seed.rs"]
mod seed;
use seed::Seed;

/// Offsets the raw mode tries past the buffer's start: enough to read a
/// record anywhere in a short input and a little past its end.
const OFFSET_MAX: usize = 64;

/// Bit flips checked per seeded record: each costs a CRC over the record.
const FLIPS_MAX: usize = 4;

fuzz_target!(|input: &[u8]| {
    check_raw(input);
    check_sealed(input);
    check_structured(input);
});

fn check_raw(input: &[u8]) {
    let Some((&offset_byte, rest)) = input.split_first() else {
        return;
    };
    let offset = usize::from(offset_byte) % (OFFSET_MAX + 1);
    let buf = Bytes::copy_from_slice(rest);
    let header = RecordHeader::peek(&buf, offset);
    match decode_record(&buf, offset) {
        Ok(Some((record, len))) => {
            let header = header.expect("a record has a header");
            assert!((RECORD_HEADER_BYTES..=RECORD_HEADER_BYTES + RECORD_BYTES_MAX).contains(&len));
            assert_eq!(len, RECORD_HEADER_BYTES + header.length as usize);
            assert!(offset + len <= buf.len());
            assert_eq!((record.term, record.index), (header.term, header.index));
            check_reencodes(&record, &buf[offset..offset + len]);
        }
        Ok(None) => {
            if let Some(header) = header {
                assert!(offset + RECORD_HEADER_BYTES + header.length as usize > buf.len());
            } else {
                assert!(buf.len() < offset + RECORD_HEADER_BYTES);
            }
        }
        Err(RecordError::LengthOverLimit(length)) => {
            assert!(length > RECORD_BYTES_MAX);
            assert_eq!(Some(length), header.map(|h| h.length as usize));
        }
        Err(RecordError::CrcMismatch { stored, computed }) => {
            let header = header.expect("a record has a header");
            assert_eq!(stored, header.crc);
            assert_ne!(stored, computed);
        }
        Err(RecordError::Command(_)) => {}
    }

    if let Ok(segment) = SegmentHeader::decode(input) {
        assert_eq!(&segment.encode()[..], &input[..SEGMENT_HEADER_BYTES]);
    }
}

/// A decoded record is canonical: encoding it gives back the very bytes it
/// was read from, so no bit of an accepted record was ignored.
fn check_reencodes(record: &data::record::Record, bytes: &[u8]) {
    let mut again = BytesMut::new();
    let len = encode_record(&mut again, record.term, record.index, &record.command)
        .expect("a decoded record is within the limit");
    assert_eq!(len, record_len(&record.command));
    assert_eq!(&again[..], bytes);
}

/// Frames `payload` as a record with a correct length and CRC, as
/// `encode_record` would for a command encoding to these bytes.
fn seal(term: u64, index: u64, payload: &[u8]) -> Bytes {
    let length = (payload.len() as u32).to_le_bytes();
    let mut covered = Vec::with_capacity(16 + payload.len());
    covered.extend_from_slice(&term.to_le_bytes());
    covered.extend_from_slice(&index.to_le_bytes());
    covered.extend_from_slice(payload);
    // The CRC covers the length field, then everything after the CRC.
    let crc = crc32c::crc32c_append(crc32c::crc32c(&length), &covered);
    let mut out = Vec::with_capacity(RECORD_HEADER_BYTES + payload.len());
    out.extend_from_slice(&length);
    out.extend_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(&covered);
    Bytes::from(out)
}

fn check_sealed(input: &[u8]) {
    let mut seed = Seed { bytes: input };
    let (term, index) = (seed.u64(), seed.u64());
    let payload = seed.bytes;
    let buf = seal(term, index, payload);
    match decode_record(&buf, 0) {
        Ok(Some((record, len))) => {
            assert_eq!(len, buf.len());
            check_reencodes(&record, &buf);
        }
        Err(RecordError::Command(error)) => {
            assert_eq!(Command::decode(Bytes::copy_from_slice(payload)), Err(error));
        }
        other => panic!("a well-framed record gave {other:?}"),
    }
}

impl Seed<'_> {
    /// Up to `len_max` bytes, length chosen by the seed.
    fn bytes(&mut self, len_max: usize) -> Bytes {
        let len = usize::from(self.u16()) % (len_max + 1);
        let take = len.min(self.bytes.len());
        let (head, rest) = self.bytes.split_at(take);
        self.bytes = rest;
        Bytes::copy_from_slice(head)
    }

    /// A key as the log holds it: 1..=250 bytes of anything.
    fn key(&mut self) -> Bytes {
        let len = 1 + usize::from(self.u8()) % KEY_BYTES_MAX;
        (0..len).map(|_| self.u8()).collect::<Vec<_>>().into()
    }

    fn ids(&mut self) -> Vec<u64> {
        (0..usize::from(self.u8()) % (CONFIG_MEMBERS_MAX + 1))
            .map(|_| self.u64())
            .collect()
    }

    fn command(&mut self) -> Command {
        let time_s = self.u64();
        let op = match self.u8() % 12 {
            0 => Op::Noop,
            1 => Op::Store {
                mode: StoreMode::ALL[usize::from(self.u8()) % StoreMode::ALL.len()],
                key: self.key(),
                flags: self.u32(),
                exptime: self.u64(),
                cas_unique: self.u64(),
                data: self.bytes(4096),
            },
            2 => Op::Delete {
                key: self.key(),
                cas_unique: self.u64(),
            },
            3 => Op::Arith {
                key: self.key(),
                delta: self.u64(),
                incr: self.u8() & 1 == 1,
                cas_unique: self.u64(),
                initial: (self.u8() & 1 == 1).then(|| Initial {
                    value: self.u64(),
                    exptime: self.u64(),
                }),
                touch: (self.u8() & 1 == 1).then(|| self.u64()),
            },
            4 => Op::Touch {
                key: self.key(),
                exptime: self.u64(),
            },
            5 => Op::GetAndTouch {
                keys: (0..self.u8() % 8).map(|_| self.key()).collect(),
                exptime: self.u64(),
            },
            6 => Op::FlushAll {
                deadline_s: self.u64(),
            },
            7 => Op::Config {
                voters: self.ids(),
                learners: self.ids(),
            },
            8 => Op::MetaGet {
                key: self.key(),
                vivify: (self.u8() & 1 == 1).then(|| self.u64()),
                recache_before: (self.u8() & 1 == 1).then(|| self.u64()),
                touch: (self.u8() & 1 == 1).then(|| self.u64()),
            },
            9 => Op::Invalidate {
                key: self.key(),
                cas_unique: self.u64(),
                exptime: (self.u8() & 1 == 1).then(|| self.u64()),
            },
            10 => Op::EmptyValue {
                key: self.key(),
                cas_unique: self.u64(),
                flags: self.u32(),
                exptime: self.u64(),
                stale: self.u8() & 1 == 1,
            },
            _ => Op::Reclaim {
                keys: (0..self.u8() % 8).map(|_| self.key()).collect(),
            },
        };
        // A client's unique (meta `E`) rides only on what writes an item.
        let unique = (op.takes_unique() && self.u8() & 1 == 1).then(|| self.u64());
        Command { time_s, op, unique }
    }
}

fn check_structured(input: &[u8]) {
    let mut seed = Seed { bytes: input };
    let first = (seed.u64(), seed.u64(), seed.command());
    let second = (seed.u64(), seed.u64(), seed.command());
    let mut out = BytesMut::new();
    let first_len = encode_record(&mut out, first.0, first.1, &first.2).expect("small record");
    let second_len = encode_record(&mut out, second.0, second.1, &second.2).expect("small record");
    assert_eq!(first_len, record_len(&first.2));
    assert_eq!(out.len(), first_len + second_len);
    let buf = out.freeze();

    for (offset, len, (term, index, command)) in
        [(0, first_len, first), (first_len, second_len, second)]
    {
        let (record, decoded_len) = decode_record(&buf, offset)
            .expect("valid record")
            .expect("complete record");
        assert_eq!(decoded_len, len);
        assert_eq!((record.term, record.index), (term, index));
        assert_eq!(record.command, command);
    }
    assert_eq!(decode_record(&buf, buf.len()), Ok(None));

    // A torn write: any prefix of a record, alone or at the end of the log.
    for cut in 0..first_len {
        assert_eq!(decode_record(&buf.slice(..cut), 0), Ok(None), "cut {cut}");
    }
    for cut in first_len..buf.len() {
        assert_eq!(
            decode_record(&buf.slice(..cut), first_len),
            Ok(None),
            "cut {cut}"
        );
    }

    // Damage: one flipped bit in the first record.
    for _ in 0..FLIPS_MAX {
        let bit = usize::from(seed.u16()) % (first_len * 8);
        let mut damaged = buf.to_vec();
        damaged[bit / 8] ^= 1 << (bit % 8);
        let damaged = Bytes::from(damaged);
        let result = decode_record(&damaged, 0);
        if bit < 32 {
            // The length field: the record now ends elsewhere, and the
            // command decoder rejects a command that does not fill it.
            assert!(
                !matches!(result, Ok(Some(_))),
                "flip of length bit {bit} gave {result:?}"
            );
        } else {
            assert!(
                matches!(result, Err(RecordError::CrcMismatch { .. })),
                "flip of bit {bit} gave {result:?}"
            );
        }
        // The record after it is untouched.
        assert_eq!(
            decode_record(&damaged, first_len).map(|r| r.map(|(_, len)| len)),
            Ok(Some(second_len))
        );
    }
}
