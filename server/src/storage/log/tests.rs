//! The log's tests: recovery, torn tails, segments, truncation, compaction.

use super::*;
use crate::storage::test_dir::TestDir;
use data::command::{Op, StoreMode};

/// Small enough that a few dozen records span several segments.
const SMALL_SEGMENT_BYTES: u64 = 512;

fn command(n: u64) -> Command {
    Command {
        time_s: 1_700_000_000 + n,
        op: Op::Store {
            mode: StoreMode::Set,
            key: Bytes::from(format!("key-{n}")),
            flags: 0,
            exptime: 0,
            data: Bytes::from(format!("value-{n}")),
            cas_unique: 0,
        },
        unique: None,
    }
}

fn term_of(index: u64) -> u64 {
    1 + index / 10
}

fn record(index: u64) -> Record {
    Record {
        term: term_of(index),
        index,
        command: command(index),
    }
}

fn append_range(log: &mut Log, indexes: std::ops::RangeInclusive<u64>) {
    for index in indexes {
        log.append(term_of(index), index, &command(index)).unwrap();
    }
}

fn expected(indexes: std::ops::RangeInclusive<u64>) -> Vec<Record> {
    indexes.map(record).collect()
}

fn segment_files(data_dir: &Path) -> Vec<u64> {
    let mut firsts: Vec<u64> = list_segments(&data_dir.join(LOG_DIR))
        .unwrap()
        .into_iter()
        .map(|(first, _)| first)
        .collect();
    firsts.sort_unstable();
    firsts
}

fn only_segment(data_dir: &Path) -> PathBuf {
    let listing = list_segments(&data_dir.join(LOG_DIR)).unwrap();
    assert_eq!(listing.len(), 1);
    listing[0].1.clone()
}

/// Writes records `indexes` to a new log, durably, and closes it.
fn write_log(data_dir: &Path, segment_bytes: u64, indexes: std::ops::RangeInclusive<u64>) {
    let (mut log, _) = Log::open(data_dir, segment_bytes).unwrap();
    append_range(&mut log, indexes);
    log.sync().unwrap();
}

/// What opening the log fails with, which it must.
fn open_error(data_dir: &Path, segment_bytes: u64) -> String {
    Log::open(data_dir, segment_bytes).unwrap_err().to_string()
}

/// Writes records 1..=count to a single-segment log and returns the
/// segment's path and the byte offset of every record, and of the end of
/// the last one (zeros follow it in the file).
fn write_one_segment(data_dir: &Path, count: u64) -> (PathBuf, Vec<usize>) {
    let (mut log, records) = Log::open(data_dir, SEGMENT_BYTES_DEFAULT).unwrap();
    assert!(records.is_empty());
    append_range(&mut log, 1..=count);
    log.sync().unwrap();
    let path = only_segment(data_dir);
    let mut offsets = vec![SEGMENT_HEADER_BYTES];
    for index in 1..=count {
        let len = data::record::record_len(&command(index));
        offsets.push(offsets.last().unwrap() + len);
    }
    (path, offsets)
}

/// A replicated entry's payload is written as it is: the same record
/// as appending the command it encodes, read back as that command.
#[test]
fn an_encoded_command_appends_the_same_record() {
    let (plain, encoded) = (TestDir::new(), TestDir::new());
    let (mut a, _) = Log::open(plain.path(), SMALL_SEGMENT_BYTES).unwrap();
    let (mut b, _) = Log::open(encoded.path(), SMALL_SEGMENT_BYTES).unwrap();
    for index in 1..=40 {
        a.append(term_of(index), index, &command(index)).unwrap();
        let mut payload = BytesMut::new();
        command(index).encode(&mut payload);
        b.append_encoded(term_of(index), index, &payload).unwrap();
    }
    a.sync().unwrap();
    b.sync().unwrap();
    assert_eq!((b.last_index(), b.last_term()), (40, term_of(40)));
    assert_eq!(segment_files(plain.path()), segment_files(encoded.path()));
    drop((a, b));
    let (_, records) = Log::open(encoded.path(), SMALL_SEGMENT_BYTES).unwrap();
    assert_eq!(records, expected(1..=40));
    let too_large = vec![0u8; RECORD_BYTES_MAX + 1];
    let (mut b, _) = Log::open(encoded.path(), SMALL_SEGMENT_BYTES).unwrap();
    assert!(matches!(
        b.append_encoded(1, 41, &too_large),
        Err(StorageError::RecordTooLarge { index: 41, .. })
    ));
}

#[test]
fn append_sync_reopen_returns_the_same_records() {
    let dir = TestDir::new();
    let (mut log, records) = Log::open(dir.path(), SEGMENT_BYTES_DEFAULT).unwrap();
    assert!(records.is_empty() && log.is_empty());
    assert_eq!((log.last_index(), log.last_term()), (0, 0));
    append_range(&mut log, 1..=100);
    log.sync().unwrap();
    append_range(&mut log, 101..=150);
    log.sync().unwrap();
    assert_eq!((log.last_index(), log.last_term()), (150, term_of(150)));
    let total = log.total_bytes();
    // The records, then zeros for the next ones (see the module comment).
    let file_len = fs::metadata(only_segment(dir.path())).unwrap().len();
    assert!(
        (total + ZERO_AHEAD_LOW_BYTES..=total + ZERO_AHEAD_BYTES).contains(&file_len),
        "{total} bytes of records in a file of {file_len}"
    );
    let bytes = fs::read(only_segment(dir.path())).unwrap();
    assert!(bytes[total as usize..].iter().all(|b| *b == 0));
    drop(log);

    let (mut log, records) = Log::open(dir.path(), SEGMENT_BYTES_DEFAULT).unwrap();
    assert_eq!(records, expected(1..=150));
    assert_eq!((log.last_index(), log.last_term()), (150, term_of(150)));
    assert_eq!(log.first_index(), Some(1));
    assert_eq!(log.total_bytes(), total);
    // Appending continues after a reopen, into the zeros: the reopen
    // did not take them for a torn tail and cut them.
    append_range(&mut log, 151..=160);
    log.sync().unwrap();
    assert_eq!(
        fs::metadata(only_segment(dir.path())).unwrap().len(),
        file_len
    );
    drop(log);
    let (_, records) = Log::open(dir.path(), SEGMENT_BYTES_DEFAULT).unwrap();
    assert_eq!(records, expected(1..=160));
}

#[test]
fn unsynced_appends_are_not_on_disk() {
    let dir = TestDir::new();
    let (mut log, _) = Log::open(dir.path(), SEGMENT_BYTES_DEFAULT).unwrap();
    append_range(&mut log, 1..=3);
    log.sync().unwrap();
    append_range(&mut log, 4..=5);
    // A crash now: the records only ever reached the buffer.
    drop(log);
    let (_, records) = Log::open(dir.path(), SEGMENT_BYTES_DEFAULT).unwrap();
    assert_eq!(records, expected(1..=3));
}

#[test]
fn appends_must_be_contiguous() {
    let dir = TestDir::new();
    let (mut log, _) = Log::open(dir.path(), SEGMENT_BYTES_DEFAULT).unwrap();
    assert!(matches!(
        log.append(1, 0, &command(0)),
        Err(StorageError::OutOfOrder { index: 0, .. })
    ));
    // An empty log starts wherever the caller says (after a snapshot).
    log.append(1, 41, &command(41)).unwrap();
    for bad in [41, 43, 1] {
        assert!(matches!(
            log.append(1, bad, &command(bad)),
            Err(StorageError::OutOfOrder { last_index: 41, .. })
        ));
    }
    log.append(1, 42, &command(42)).unwrap();
    log.sync().unwrap();
    assert_eq!(segment_files(dir.path()), vec![41]);
}

#[test]
fn rotation_spans_several_segments() {
    let dir = TestDir::new();
    let (mut log, _) = Log::open(dir.path(), SMALL_SEGMENT_BYTES).unwrap();
    for index in 1..=100 {
        log.append(term_of(index), index, &command(index)).unwrap();
        if index % 7 == 0 {
            log.sync().unwrap();
        }
    }
    log.sync().unwrap();
    let firsts = segment_files(dir.path());
    assert!(firsts.len() >= 5, "{firsts:?}");
    assert_eq!(firsts[0], 1);
    assert_eq!(log.segment_count(), firsts.len());
    let log_dir = dir.path().join(LOG_DIR);
    assert!(log_dir.join("00000000000000000001.log").is_file());
    for first in &firsts {
        let len = fs::metadata(log_dir.join(segment_name(*first)))
            .unwrap()
            .len();
        // A segment passes the limit by at most its last record.
        assert!(
            len < SMALL_SEGMENT_BYTES + 100,
            "segment {first}: {len} bytes"
        );
    }
    drop(log);
    let (log, records) = Log::open(dir.path(), SMALL_SEGMENT_BYTES).unwrap();
    assert_eq!(records, expected(1..=100));
    assert_eq!(log.segment_count(), firsts.len());
    // Finished segments were cut to their records: no zeros after them.
    for first in &firsts[..firsts.len() - 1] {
        let bytes = fs::read(log_dir.join(segment_name(*first))).unwrap();
        assert_eq!(data_extent(&bytes), bytes.len(), "segment {first}");
        assert_ne!(bytes.last(), Some(&0), "segment {first}");
    }
}

#[test]
fn zeros_after_the_records_of_a_finished_segment_are_its_end() {
    // A crash while a segment was finished, before its cut reached the
    // disk, leaves its zeros; the next segment shows nothing was lost.
    let dir = TestDir::new();
    write_log(dir.path(), SMALL_SEGMENT_BYTES, 1..=40);
    let firsts = segment_files(dir.path());
    assert!(firsts.len() >= 3);
    let first_path = dir.path().join(LOG_DIR).join(segment_name(firsts[0]));
    let mut bytes = fs::read(&first_path).unwrap();
    bytes.extend_from_slice(&[0; 3000]);
    fs::write(&first_path, &bytes).unwrap();
    let (_, records) = Log::open(dir.path(), SMALL_SEGMENT_BYTES).unwrap();
    assert_eq!(records, expected(1..=40));

    // But the zeros must not hide records: with the second segment gone,
    // the third no longer follows on.
    fs::remove_file(dir.path().join(LOG_DIR).join(segment_name(firsts[1]))).unwrap();
    let message = open_error(dir.path(), SMALL_SEGMENT_BYTES);
    assert!(message.contains("the previous one ends at"), "{message}");
}

#[test]
fn a_last_record_ending_in_zero_bytes_is_kept() {
    // Its zeros look like the zero-filled tail after it; recovery must
    // keep the whole record all the same.
    let dir = TestDir::new();
    let (mut log, _) = Log::open(dir.path(), SEGMENT_BYTES_DEFAULT).unwrap();
    append_range(&mut log, 1..=3);
    let mut zeros = command(4);
    if let Op::Store { data, .. } = &mut zeros.op {
        *data = Bytes::from(vec![0u8; 5000]);
    }
    log.append(term_of(4), 4, &zeros).unwrap();
    log.sync().unwrap();
    drop(log);
    let (_, records) = Log::open(dir.path(), SEGMENT_BYTES_DEFAULT).unwrap();
    assert_eq!(records.len(), 4);
    assert_eq!(records[3].command, zeros);
}

#[test]
fn compaction_deletes_only_old_segments() {
    let dir = TestDir::new();
    let (mut log, _) = Log::open(dir.path(), SMALL_SEGMENT_BYTES).unwrap();
    append_range(&mut log, 1..=100);
    log.sync().unwrap();
    let firsts = segment_files(dir.path());
    assert!(firsts.len() >= 4);

    // An index inside the second segment frees only the first.
    assert_eq!(log.compact_through(firsts[1]).unwrap(), 1);
    assert_eq!(segment_files(dir.path()), firsts[1..]);
    // The last index of the second segment frees the second too.
    assert_eq!(log.compact_through(firsts[2] - 1).unwrap(), 1);
    assert_eq!(segment_files(dir.path()), firsts[2..]);
    assert_eq!(log.compact_through(firsts[2] - 1).unwrap(), 0);
    // Everything covered: all but the current segment go.
    log.compact_through(100).unwrap();
    let current = *firsts.last().unwrap();
    assert_eq!(segment_files(dir.path()), vec![current]);
    assert_eq!(log.first_index(), Some(current));
    assert_eq!(log.last_index(), 100);

    append_range(&mut log, 101..=110);
    log.sync().unwrap();
    drop(log);
    let (log, records) = Log::open(dir.path(), SMALL_SEGMENT_BYTES).unwrap();
    assert_eq!(records, expected(current..=110));
    assert_eq!(log.first_index(), Some(current));
}

#[test]
fn torn_tail_cut_at_every_offset_is_truncated() {
    let count = 5;
    let dir = TestDir::new();
    let (path, offsets) = write_one_segment(dir.path(), count);
    let full = fs::read(&path).unwrap();
    let (last_start, end) = (offsets[count as usize - 1], offsets[count as usize]);
    for cut in last_start..end {
        fs::write(&path, &full[..cut]).unwrap();
        let (log, records) = Log::open(dir.path(), SEGMENT_BYTES_DEFAULT).unwrap();
        assert_eq!(records, expected(1..=count - 1), "cut at {cut}");
        assert_eq!(log.last_index(), count - 1);
        assert_eq!(
            fs::metadata(&path).unwrap().len(),
            last_start as u64,
            "cut at {cut}"
        );
    }
}

#[test]
fn torn_tail_with_any_byte_flipped_in_the_last_record_is_truncated() {
    let count = 5;
    let dir = TestDir::new();
    let (path, offsets) = write_one_segment(dir.path(), count);
    let full = fs::read(&path).unwrap();
    let (last_start, end) = (offsets[count as usize - 1], offsets[count as usize]);
    // The zeros that followed the record stay in the file for each try.
    for at in last_start..end {
        let mut damaged = full.clone();
        damaged[at] ^= 0x20;
        fs::write(&path, &damaged).unwrap();
        let (log, records) = Log::open(dir.path(), SEGMENT_BYTES_DEFAULT).unwrap();
        assert_eq!(records, expected(1..=count - 1), "flip at {at}");
        assert_eq!(log.last_index(), count - 1);
        assert_eq!(fs::metadata(&path).unwrap().len(), last_start as u64);
    }
    // A byte in the zeros after the records: a torn write of a record
    // that was never synced; every record stays.
    for at in [end, end + 100, full.len() - 1] {
        let mut damaged = full.clone();
        damaged[at] = 0x5a;
        fs::write(&path, &damaged).unwrap();
        let (_, records) = Log::open(dir.path(), SEGMENT_BYTES_DEFAULT).unwrap();
        assert_eq!(records, expected(1..=count), "byte at {at}");
        assert_eq!(fs::metadata(&path).unwrap().len(), end as u64);
    }
    // Zeros where the last record was (its write never reached the
    // disk): the end of the records, and the zeros are kept for reuse.
    let mut zeroed = full[..end].to_vec();
    zeroed[last_start..].fill(0);
    zeroed.extend_from_slice(&[0; 4096]);
    fs::write(&path, &zeroed).unwrap();
    let (_, records) = Log::open(dir.path(), SEGMENT_BYTES_DEFAULT).unwrap();
    assert_eq!(records, expected(1..=count - 1));
    assert_eq!(fs::metadata(&path).unwrap().len(), zeroed.len() as u64);
}

#[test]
fn damage_before_valid_records_fails_naming_file_and_offset() {
    let count = 5;
    let dir = TestDir::new();
    let (path, offsets) = write_one_segment(dir.path(), count);
    let full = fs::read(&path).unwrap();
    let (start, end) = (offsets[2], offsets[3]);
    for at in start..end {
        let mut damaged = full.clone();
        damaged[at] ^= 0x20;
        fs::write(&path, &damaged).unwrap();
        let error = Log::open(dir.path(), SEGMENT_BYTES_DEFAULT).unwrap_err();
        let message = error.to_string();
        let wanted = format!(
            "corrupt log record in {} at offset {start}: ",
            path.display()
        );
        assert!(message.starts_with(&wanted), "flip at {at}: {message}");
        // Nothing was truncated.
        assert_eq!(fs::read(&path).unwrap(), damaged);
    }
}

#[test]
fn damage_in_an_earlier_segment_fails_even_at_its_end() {
    let dir = TestDir::new();
    write_log(dir.path(), SMALL_SEGMENT_BYTES, 1..=40);
    let firsts = segment_files(dir.path());
    let first_path = dir.path().join(LOG_DIR).join(segment_name(firsts[0]));
    let mut bytes = fs::read(&first_path).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    fs::write(&first_path, &bytes).unwrap();
    let message = open_error(dir.path(), SMALL_SEGMENT_BYTES);
    assert!(
        message.contains(&first_path.display().to_string()),
        "{message}"
    );
    assert!(message.contains("crc mismatch"), "{message}");

    // Cut short instead: an earlier segment is never torn.
    fs::write(&first_path, &bytes[..last]).unwrap();
    let message = open_error(dir.path(), SMALL_SEGMENT_BYTES);
    assert!(message.contains("incomplete record"), "{message}");
}

#[test]
fn a_missing_segment_is_a_gap() {
    let dir = TestDir::new();
    write_log(dir.path(), SMALL_SEGMENT_BYTES, 1..=60);
    let firsts = segment_files(dir.path());
    let middle = dir.path().join(LOG_DIR).join(segment_name(firsts[1]));
    fs::remove_file(&middle).unwrap();
    let message = open_error(dir.path(), SMALL_SEGMENT_BYTES);
    assert!(message.contains("corrupt segment header"), "{message}");
    assert!(
        message.contains(&format!("ends at {}", firsts[1] - 1)),
        "{message}"
    );
}

#[test]
fn a_last_segment_without_a_complete_record_is_removed() {
    let dir = TestDir::new();
    write_log(dir.path(), SMALL_SEGMENT_BYTES, 1..=30);
    let firsts = segment_files(dir.path());
    let current = *firsts.last().unwrap();
    let path = dir.path().join(LOG_DIR).join(segment_name(current));
    let full = fs::read(&path).unwrap();
    let first_record_end = SEGMENT_HEADER_BYTES + data::record::record_len(&command(current));
    for cut in [0, 10, SEGMENT_HEADER_BYTES, first_record_end - 1] {
        fs::write(&path, &full[..cut]).unwrap();
        let (mut log, records) = Log::open(dir.path(), SMALL_SEGMENT_BYTES).unwrap();
        assert_eq!(records, expected(1..=current - 1), "cut at {cut}");
        assert!(!path.exists(), "cut at {cut}");
        // The next append recreates the segment with the same name.
        log.append(term_of(current), current, &command(current))
            .unwrap();
        log.sync().unwrap();
        assert!(path.exists());
        fs::write(&path, &full).unwrap();
    }
    // A zero-filled last segment was never synced either.
    fs::write(&path, vec![0u8; 300]).unwrap();
    let (_, records) = Log::open(dir.path(), SMALL_SEGMENT_BYTES).unwrap();
    assert_eq!(records, expected(1..=current - 1));
    assert!(!path.exists());
}

#[test]
fn a_bad_header_in_the_last_segment_is_an_error() {
    let dir = TestDir::new();
    let (path, _) = write_one_segment(dir.path(), 3);
    let mut bytes = fs::read(&path).unwrap();
    bytes[8] = 99;
    fs::write(&path, &bytes).unwrap();
    let message = open_error(dir.path(), SEGMENT_BYTES_DEFAULT);
    assert!(
        message.contains("unsupported log format version 99"),
        "{message}"
    );
    assert!(message.contains("at offset 0"), "{message}");
}

#[test]
fn truncate_after_drops_the_suffix_durably() {
    let dir = TestDir::new();
    let (mut log, _) = Log::open(dir.path(), SMALL_SEGMENT_BYTES).unwrap();
    append_range(&mut log, 1..=80);
    log.sync().unwrap();
    let firsts = segment_files(dir.path());
    assert!(firsts.len() >= 4);

    // Inside a segment, with unsynced records in the buffer.
    append_range(&mut log, 81..=85);
    let inside = firsts[2] + 1;
    log.truncate_after(inside).unwrap();
    assert_eq!(
        (log.last_index(), log.last_term()),
        (inside, term_of(inside))
    );
    assert_eq!(segment_files(dir.path()), firsts[..3]);
    // No-ops: at or after the end.
    log.truncate_after(inside).unwrap();
    log.truncate_after(1000).unwrap();
    append_range(&mut log, inside + 1..=inside + 3);
    log.sync().unwrap();
    drop(log);
    let (mut log, records) = Log::open(dir.path(), SMALL_SEGMENT_BYTES).unwrap();
    assert_eq!(records, expected(1..=inside + 3));

    // Exactly at a segment boundary: the later segment goes whole.
    let boundary = firsts[1] - 1;
    log.truncate_after(boundary).unwrap();
    assert_eq!(segment_files(dir.path()), vec![firsts[0]]);
    assert_eq!(log.last_index(), boundary);
    drop(log);
    let (mut log, records) = Log::open(dir.path(), SMALL_SEGMENT_BYTES).unwrap();
    assert_eq!(records, expected(1..=boundary));

    // A new term's records after the cut.
    log.append(99, boundary + 1, &command(boundary + 1))
        .unwrap();
    log.sync().unwrap();
    assert_eq!(log.last_term(), 99);
    drop(log);
    let (mut log, records) = Log::open(dir.path(), SMALL_SEGMENT_BYTES).unwrap();
    assert_eq!(records.len() as u64, boundary + 1);
    assert_eq!(records.last().unwrap().term, 99);

    // Below the first record: the log becomes empty and starts anew.
    log.truncate_after(0).unwrap();
    assert!(log.is_empty());
    assert_eq!((log.last_index(), log.last_term()), (0, 0));
    assert!(segment_files(dir.path()).is_empty());
    log.append(5, 500, &command(500)).unwrap();
    log.sync().unwrap();
    drop(log);
    let (log, records) = Log::open(dir.path(), SMALL_SEGMENT_BYTES).unwrap();
    assert_eq!(records.len(), 1);
    assert_eq!((log.first_index(), log.last_index()), (Some(500), 500));
}

#[test]
fn unknown_files_are_left_alone() {
    let dir = TestDir::new();
    write_log(dir.path(), SEGMENT_BYTES_DEFAULT, 1..=3);
    let stray = dir.path().join(LOG_DIR).join("notes.txt");
    fs::write(&stray, b"hello").unwrap();
    let (_, records) = Log::open(dir.path(), SEGMENT_BYTES_DEFAULT).unwrap();
    assert_eq!(records, expected(1..=3));
    assert!(stray.exists());
}

#[test]
fn segment_names_sort_like_indexes() {
    assert_eq!(segment_name(1), "00000000000000000001.log");
    assert_eq!(segment_name(u64::MAX), "18446744073709551615.log");
    assert_eq!(parse_segment_name("00000000000000000042.log"), Some(42));
    assert_eq!(parse_segment_name("42.log"), None);
    assert_eq!(parse_segment_name("0000000000000000004x.log"), None);
    assert_eq!(parse_segment_name("00000000000000000042.tmp"), None);
}

/// Run with `cargo test --release -p server recovery_of_a_million -- --ignored --nocapture`.
#[test]
#[ignore = "timing test: run in release mode by hand"]
fn recovery_of_a_million_small_records() {
    let count = 1_000_000u64;
    let dir = TestDir::new();
    let (mut log, _) = Log::open(dir.path(), SEGMENT_BYTES_DEFAULT).unwrap();
    let started = std::time::Instant::now();
    for index in 1..=count {
        log.append(1, index, &command(index)).unwrap();
        if index % 1000 == 0 {
            log.sync().unwrap();
        }
    }
    log.sync().unwrap();
    let appended = started.elapsed();
    let bytes = log.total_bytes();
    drop(log);
    let started = std::time::Instant::now();
    let (log, records) = Log::open(dir.path(), SEGMENT_BYTES_DEFAULT).unwrap();
    let recovered = started.elapsed();
    assert_eq!(records.len() as u64, count);
    assert_eq!(log.last_index(), count);
    println!(
        "{count} records, {bytes} bytes in {} segments: append+sync(1000) {appended:?}, recovery {recovered:?}",
        log.segment_count()
    );
}

/// The scan past damage in a last segment is linear: a segment's worth
/// of garbage costs one pass, not a CRC per offset.
#[test]
#[ignore = "timing test: run in release mode by hand"]
fn scan_past_damage_is_linear() {
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let garbage: Vec<u8> = (0..SEGMENT_BYTES_DEFAULT)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect();
    let buf = Bytes::from(garbage);
    let started = std::time::Instant::now();
    assert_eq!(find_valid_record(&buf, 0, 1_000), None);
    println!("scanned {} bytes in {:?}", buf.len(), started.elapsed());
}
