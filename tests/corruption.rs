//! Log corruption on restart, with real files and a real process.
//!
//! Segment format (DESIGN.md §5): `DIR/log/<first index, 20 digits>.log`, a
//! 24-byte header (`STORELOG`, version byte, 7 zero bytes, first index u64 LE)
//! then records `[length u32 LE][crc32c u32][term u64][index u64][command]`.
//!
//! (a) A byte flipped inside the last record of the last segment is a torn
//!     tail: the server starts, serves every earlier write, the torn record is
//!     gone, and later writes survive another crash (the tail was really cut).
//! (b) A byte flipped inside an early record with valid records after it is
//!     damage, not a torn tail: the server exits non-zero and its stderr names
//!     the segment file and the byte offset of that record.

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::time::Duration;

const SEGMENT_HEADER_BYTES: usize = 24;
const RECORD_HEADER_BYTES: usize = 24;
const EXIT_TIMEOUT: Duration = Duration::from_secs(20);

struct RecordPos {
    offset: usize,
    len: usize,
}

/// Segment files, sorted by name (= first index).
fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir.join("log"))
        .expect("log directory exists")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    v.sort();
    v
}

/// Walks the records of a segment (which must be intact) up to the zeros
/// the log keeps after them.
fn records(path: &Path) -> Vec<RecordPos> {
    let buf = std::fs::read(path).expect("read segment");
    assert!(
        buf.len() >= SEGMENT_HEADER_BYTES,
        "{}: short header",
        path.display()
    );
    assert_eq!(&buf[..8], b"STORELOG", "{}: bad magic", path.display());
    let mut at = SEGMENT_HEADER_BYTES;
    let mut out = Vec::new();
    while at + RECORD_HEADER_BYTES <= buf.len() {
        let len = u32::from_le_bytes(buf[at..at + 4].try_into().expect("4 bytes")) as usize;
        if len == 0 {
            break;
        }
        let total = RECORD_HEADER_BYTES + len;
        assert!(
            at + total <= buf.len(),
            "{}: record at {at} runs past the end",
            path.display()
        );
        out.push(RecordPos {
            offset: at,
            len: total,
        });
        at += total;
    }
    assert!(
        buf[at..].iter().all(|b| *b == 0),
        "{}: bytes other than zeros after the last record",
        path.display()
    );
    out
}

fn flip_byte(path: &Path, at: usize) {
    let mut buf = std::fs::read(path).expect("read segment");
    buf[at] ^= 0x5a;
    std::fs::write(path, &buf).expect("write segment");
}

fn fill(server: &StoreServer, keys: usize, prefix: &str) {
    let mut c = server.connect();
    for i in 0..keys {
        let v = format!("{prefix}-value-{i}");
        c.request(
            format!("set {prefix}{i} 0 0 {}\r\n{v}\r\n", v.len()).as_bytes(),
            b"STORED\r\n",
        );
    }
}

fn check(server: &StoreServer, keys: std::ops::Range<usize>, prefix: &str) {
    let mut c = server.connect();
    for i in keys {
        let v = format!("{prefix}-value-{i}");
        c.request(
            format!("get {prefix}{i}\r\n").as_bytes(),
            format!("VALUE {prefix}{i} 0 {}\r\n{v}\r\nEND\r\n", v.len()).as_bytes(),
        );
    }
}

#[test]
fn torn_last_record_is_truncated_and_earlier_writes_are_served() {
    let test = "torn_last_record_is_truncated_and_earlier_writes_are_served";
    if target() == Target::Memcached {
        return skip(test, "memcached keeps nothing on disk");
    }
    let mut server = StoreServer::start(&[]);
    fill(&server, 50, "k");
    // SIGKILL rather than SIGTERM, so no shutdown-time snapshot replaces the log.
    server.kill9();

    let segs = segments(&server.group_dir());
    let last = segs.last().expect("at least one segment").clone();
    let recs = records(&last);
    let rec = recs.last().expect("the last segment holds a record");
    let bytes = std::fs::read(&last).expect("read");
    let holds_last_set = find(&bytes[rec.offset..rec.offset + rec.len], b"k49").is_some();
    // Flip a byte in the command part of the last record.
    flip_byte(
        &last,
        rec.offset + RECORD_HEADER_BYTES + (rec.len - RECORD_HEADER_BYTES) / 2,
    );

    server
        .try_restart()
        .unwrap_or_else(|e| panic!("server refused a torn tail in {}: {e}", last.display()));
    check(&server, 0..49, "k");
    assert!(
        holds_last_set,
        "the last record of the last segment is not the last set (k49)"
    );
    server.connect().request(b"get k49\r\n", b"END\r\n");

    // The tail is really gone: new writes after it survive another crash and restart.
    fill(&server, 10, "after");
    server.kill9();
    server
        .try_restart()
        .unwrap_or_else(|e| panic!("restart after writing past a truncated tail failed: {e}"));
    check(&server, 0..49, "k");
    check(&server, 0..10, "after");
}

#[test]
fn damaged_early_record_stops_the_server_naming_file_and_offset() {
    let test = "damaged_early_record_stops_the_server_naming_file_and_offset";
    if target() == Target::Memcached {
        return skip(test, "memcached keeps nothing on disk");
    }
    let mut server = StoreServer::start(&[]);
    fill(&server, 50, "k");
    server.kill9();

    let seg = segments(&server.group_dir())
        .into_iter()
        .find(|p| records(p).len() >= 10)
        .expect("a segment with at least 10 records");
    let recs = records(&seg);
    let rec = &recs[3];
    flip_byte(
        &seg,
        rec.offset + RECORD_HEADER_BYTES + (rec.len - RECORD_HEADER_BYTES) / 2,
    );

    let (status, stderr) = server.run_expecting_exit(EXIT_TIMEOUT);
    let status = status.unwrap_or_else(|| {
        panic!("server still running {EXIT_TIMEOUT:?} after start on a log damaged in the middle; stderr:\n{stderr}")
    });
    assert!(
        !status.success(),
        "server exited 0 on a damaged log; stderr:\n{stderr}"
    );
    println!(
        "damaged record at offset {} of {}; server stderr:\n{stderr}",
        rec.offset,
        seg.display()
    );
    let file_name = seg
        .file_name()
        .expect("file name")
        .to_string_lossy()
        .to_string();
    assert!(
        stderr.contains(&file_name),
        "stderr does not name the segment {file_name}:\n{stderr}"
    );
    let offset = rec.offset.to_string();
    let names_offset = stderr.match_indices(&offset).any(|(i, _)| {
        let before = stderr[..i].chars().next_back();
        let after = stderr[i + offset.len()..].chars().next();
        !before.is_some_and(|c| c.is_ascii_digit()) && !after.is_some_and(|c| c.is_ascii_digit())
    });
    assert!(
        names_offset,
        "stderr does not give the damaged record's byte offset {offset}:\n{stderr}"
    );
}
