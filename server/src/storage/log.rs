//! The log: the segment files in `<data_dir>/log/`, each named by the index
//! of its first record (`00000000000000000001.log`). [`Log`] is the only code
//! that opens, writes, truncates or deletes them.
//!
//! Writes are group commits: [`Log::append`] only encodes into one shared
//! buffer; [`Log::sync`] writes the buffer with one system call and makes it
//! durable with one `fdatasync`. [`Log::open`] recovers: it reads every
//! segment whole and decodes records without copying, truncates a torn tail
//! (the last record of the last segment, incomplete or failing its CRC, with
//! no valid record after it) and refuses anything else that is damaged, with
//! an error naming the file and the byte offset.
//!
//! Records are written into zeros: after each sync the current segment is
//! kept zero-filled (written and fsynced zeros, not a hole) at least
//! [`ZERO_AHEAD_LOW_BYTES`] past its last record. An `fdatasync` that must
//! also commit a new file size or newly allocated blocks costs a journal
//! commit; one that only flushes overwritten blocks does not, and measured
//! here that is 95 against 130 µs per sync (DESIGN §5). So a segment's file
//! may be longer than its records: a record header of zeros ends it, and
//! recovery takes a damaged record followed by nothing but zeros for the
//! end of the data, not for damage. Finished segments are trimmed to their
//! records when the next one starts.
//!
//! Blocking std I/O: the storage thread calls it, never an async task. It
//! knows nothing of snapshots or commit: the caller decides what to replay
//! ([`Log::open`] returns every record), when to compact and what to drop.

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use bytes::{Bytes, BytesMut};
use data::command::Command;
use data::record::{
    decode_record, encode_record, encode_record_bytes, Record, RecordError, RecordHeader,
    RecordTooLarge, SegmentHeader, COMMAND_BYTES_MIN, RECORD_BYTES_MAX, RECORD_HEADER_BYTES,
    SEGMENT_HEADER_BYTES,
};

use super::fsutil::sync_dir;
use super::StorageError;

/// The log's directory inside the data directory.
pub const LOG_DIR: &str = "log";

/// A segment file's name: the first index in this many decimal digits
/// (enough for u64::MAX), so names sort like indexes.
const SEGMENT_NAME_DIGITS: usize = 20;
const SEGMENT_SUFFIX: &str = ".log";

/// Default size at which a new segment is started: big enough that rotation
/// (and its extra fsync) is rare, small enough that compaction frees space
/// in useful steps.
pub const SEGMENT_BYTES_DEFAULT: u64 = 64 * 1024 * 1024;

/// After a sync, the current segment is zero-filled at least this far past
/// its last record; below it, it is topped up to [`ZERO_AHEAD_BYTES`]. A
/// batch larger than that (a few big values) extends the file instead,
/// which is correct and only slower.
pub const ZERO_AHEAD_LOW_BYTES: u64 = 256 * 1024;

/// How far past the last record one top-up zero-fills: about 6,000 small
/// records, so the top-up (a 1 MiB write and its fsync, about 0.6 ms here)
/// runs a few times a second at full write load.
pub const ZERO_AHEAD_BYTES: u64 = 1024 * 1024;

/// The zeros a top-up writes, a block at a time.
static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];

/// Initial capacity of the write buffer; a batch of small records fits.
const WRITE_BUFFER_BYTES_INITIAL: usize = 256 * 1024;

/// After a write, a buffer that grew past this (a batch of large values) is
/// released instead of kept, so one burst does not pin memory for good.
const WRITE_BUFFER_BYTES_RETAIN_MAX: usize = 8 * 1024 * 1024;

/// The smallest record; bounds how many records fit between two offsets.
const RECORD_BYTES_MIN: usize = RECORD_HEADER_BYTES + COMMAND_BYTES_MIN;

/// One segment file.
#[derive(Debug)]
struct Segment {
    first_index: u64,
    path: PathBuf,
    /// Header and records, written or still in the write buffer. The file
    /// may be longer: zeros follow (see the module comment).
    len_bytes: u64,
}

/// The segment files of one data directory; see the module comment.
///
/// Invariants: `segments` is sorted by first index and contiguous (each
/// starts right after the previous one ends); every segment holds at least
/// one record; the last is the only one written to, through `file`, and
/// `buffer` holds its bytes not yet written. The log is empty exactly when
/// there are no segments, and then the next append may take any index.
pub struct Log {
    dir: PathBuf,
    segment_bytes_max: u64,
    segments: Vec<Segment>,
    /// The last segment, opened for writing; `None` iff the log is empty.
    file: Option<File>,
    /// Bytes of the last segment on file (header and records): where the
    /// next write goes. `len_bytes` of that segment less the buffer.
    written: u64,
    /// Length of the last segment's file: `written` plus the zeros after it.
    file_len: u64,
    /// A zero-fill top-up failed in the current segment; it is not retried
    /// there (the disk is likely full, and records may still fit).
    zero_ahead_failed: bool,
    buffer: BytesMut,
    /// A segment file was created since the last sync; its directory entry
    /// must be made durable too.
    dir_sync_pending: bool,
    last_index: u64,
    last_term: u64,
    /// Set when a write, fsync or truncation failed; see [`StorageError::Poisoned`].
    poisoned: bool,
}

impl std::fmt::Debug for Log {
    // By hand: the write buffer's bytes are no one's business in a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Log")
            .field("dir", &self.dir)
            .field("segments", &self.segments.len())
            .field("first_index", &self.first_index())
            .field("last_index", &self.last_index)
            .field("last_term", &self.last_term)
            .field("buffered_bytes", &self.buffer.len())
            .field("poisoned", &self.poisoned)
            .finish()
    }
}

impl Log {
    /// Opens (creating if needed) `data_dir/log`, recovers it and returns it
    /// with every record it holds, in index order. The caller skips those at
    /// or below its keystore's applied index.
    ///
    /// Starts a new segment once the current one holds `segment_bytes_max`
    /// bytes or more.
    ///
    /// Each segment is read whole and the records' keys and values are
    /// slices of that buffer (no copy), so a value applied to the state keeps
    /// its segment's buffer alive until overwritten. That memory is bounded
    /// by the log kept since the last keystore, which the caller bounds.
    pub fn open(
        data_dir: &Path,
        segment_bytes_max: u64,
    ) -> Result<(Log, Vec<Record>), StorageError> {
        let dir = data_dir.join(LOG_DIR);
        if !dir.is_dir() {
            fs::create_dir_all(&dir).map_err(|e| StorageError::io("create directory", &dir, e))?;
            sync_dir(data_dir)?;
        }
        let listing = list_segments(&dir)?;
        let mut segments: Vec<Segment> = Vec::with_capacity(listing.len());
        let mut records = Vec::new();
        let mut file_len = 0;
        let count = listing.len();
        for (position, (first_index, path)) in listing.into_iter().enumerate() {
            let is_last = position + 1 == count;
            let expected_first = segments.last().map(|_| next_index(&records, &segments));
            let recovered =
                recover_segment(&path, first_index, expected_first, is_last, &mut records)?;
            match recovered {
                Some(extent) => {
                    file_len = extent.file_len;
                    segments.push(Segment {
                        first_index,
                        path,
                        len_bytes: extent.data_len,
                    })
                }
                None => {
                    // Only a last segment can come back empty: it held no
                    // durable record, so it goes, and the log ends where the
                    // previous segment does.
                    tracing::warn!(path = %path.display(), "removing a log segment with no complete record");
                    fs::remove_file(&path).map_err(|e| StorageError::io("remove", &path, e))?;
                    sync_dir(&dir)?;
                }
            }
        }
        let (file, written) = match segments.last() {
            Some(segment) => (Some(open_for_write(&segment.path)?), segment.len_bytes),
            None => (None, 0),
        };
        let (last_index, last_term) = match records.last() {
            Some(record) => (record.index, record.term),
            None => (0, 0),
        };
        let log = Log {
            dir,
            segment_bytes_max,
            segments,
            file,
            written,
            file_len: file_len.max(written),
            zero_ahead_failed: false,
            buffer: BytesMut::with_capacity(WRITE_BUFFER_BYTES_INITIAL),
            dir_sync_pending: false,
            last_index,
            last_term,
            poisoned: false,
        };
        Ok((log, records))
    }

    /// Index of the last record, or 0 when the log is empty.
    pub fn last_index(&self) -> u64 {
        self.last_index
    }

    /// Term of the last record, or 0 when the log is empty.
    pub fn last_term(&self) -> u64 {
        self.last_term
    }

    /// Index of the oldest record still held.
    pub fn first_index(&self) -> Option<u64> {
        self.segments.first().map(|s| s.first_index)
    }

    pub fn is_empty(&self) -> bool {
        self.segments.is_empty()
    }

    /// Bytes of every segment, including appended records not yet synced;
    /// the caller writes a keystore and compacts when this grows too large.
    pub fn total_bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.len_bytes).sum()
    }

    /// Segment files, the current one included.
    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }

    /// The log's directory, `<data_dir>/log`.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Buffers one record; nothing is durable until [`Log::sync`]. `index`
    /// must be `last_index() + 1`, or anything from 1 when the log is empty
    /// (after a snapshot install, say).
    ///
    /// Does no I/O unless the current segment is full: then the old segment
    /// is written and fsynced, and the new file is created.
    pub fn append(&mut self, term: u64, index: u64, command: &Command) -> Result<(), StorageError> {
        self.append_with(index, command.encoded_len(), |buffer| {
            encode_record(buffer, term, index, command)
        })?;
        self.last_term = term;
        Ok(())
    }

    /// As [`Log::append`], for a command already encoded (a replicated
    /// entry's payload, written as it is).
    pub fn append_encoded(
        &mut self,
        term: u64,
        index: u64,
        command: &[u8],
    ) -> Result<(), StorageError> {
        self.append_with(index, command.len(), |buffer| {
            encode_record_bytes(buffer, term, index, command)
        })?;
        self.last_term = term;
        Ok(())
    }

    /// The checks and bookkeeping of an append; `encode` writes the record
    /// of `length` command bytes into the buffer.
    fn append_with(
        &mut self,
        index: u64,
        length: usize,
        encode: impl FnOnce(&mut BytesMut) -> Result<usize, RecordTooLarge>,
    ) -> Result<(), StorageError> {
        self.check_poisoned()?;
        let follows = if self.segments.is_empty() {
            index >= 1
        } else {
            self.last_index.checked_add(1) == Some(index)
        };
        if !follows {
            return Err(StorageError::OutOfOrder {
                index,
                last_index: self.last_index,
            });
        }
        // Checked before a rotation so a refused record leaves no empty segment.
        if length > RECORD_BYTES_MAX {
            return Err(StorageError::RecordTooLarge {
                index,
                source: RecordTooLarge { length },
            });
        }
        let full = match self.segments.last() {
            Some(segment) => segment.len_bytes >= self.segment_bytes_max,
            None => true,
        };
        if full {
            self.start_segment(index)?;
        }
        let written = encode(&mut self.buffer)
            .map_err(|source| StorageError::RecordTooLarge { index, source })?;
        let segment = self
            .segments
            .last_mut()
            .expect("start_segment ran if there was no segment");
        segment.len_bytes += written as u64;
        self.last_index = index;
        Ok(())
    }

    /// Makes every appended record durable: one write of the buffer, one
    /// `fdatasync`, and a directory fsync if a segment was created since the
    /// last sync. Does nothing when nothing was appended. Then tops up the
    /// zeros after the records when they run short (see the module comment).
    pub fn sync(&mut self) -> Result<(), StorageError> {
        self.check_poisoned()?;
        if !self.buffer.is_empty() {
            self.write_buffer()?;
            self.sync_current()?;
        }
        if self.dir_sync_pending {
            sync_dir(&self.dir).inspect_err(|_| self.poisoned = true)?;
            self.dir_sync_pending = false;
        }
        self.zero_ahead();
        Ok(())
    }

    /// Zero-fills the current segment's file up to [`ZERO_AHEAD_BYTES`]
    /// past its records (never past the segment size) once fewer than
    /// [`ZERO_AHEAD_LOW_BYTES`] remain, and fsyncs the zeros, so the next
    /// syncs only overwrite blocks. A failure costs speed, not data: it is
    /// logged and the segment goes on growing by appends.
    fn zero_ahead(&mut self) {
        if self.zero_ahead_failed || self.file_len >= self.segment_bytes_max {
            return;
        }
        if self.file_len - self.written >= ZERO_AHEAD_LOW_BYTES {
            return;
        }
        let (Some(file), Some(segment)) = (self.file.as_ref(), self.segments.last()) else {
            return;
        };
        let end = (self.written + ZERO_AHEAD_BYTES).min(self.segment_bytes_max);
        let filled = (|| {
            let mut at = self.file_len;
            while at < end {
                let n = (end - at).min(ZEROS.len() as u64) as usize;
                file.write_all_at(&ZEROS[..n], at)?;
                at += n as u64;
            }
            file.sync_data()
        })();
        match filled {
            Ok(()) => self.file_len = end,
            Err(e) => {
                // Zeros past the records are what recovery expects there, so
                // a partly written fill is harmless.
                tracing::warn!(path = %segment.path.display(), error = %e,
                    "cannot zero-fill ahead of the log; writes go on, with slower fsyncs");
                self.zero_ahead_failed = true;
            }
        }
    }

    /// Deletes every segment all of whose records are at or below `index`
    /// (the keystore covers them), oldest first, never the current segment.
    /// Returns how many were deleted.
    pub fn compact_through(&mut self, index: u64) -> Result<usize, StorageError> {
        let mut deleted = 0;
        let mut result = Ok(());
        // Oldest first: a crash part way leaves a log that still starts at a
        // segment boundary and is contiguous.
        while deleted + 1 < self.segments.len() {
            let last_of_oldest = self.segments[deleted + 1].first_index - 1;
            if last_of_oldest > index {
                break;
            }
            let path = &self.segments[deleted].path;
            if let Err(e) = fs::remove_file(path) {
                result = Err(StorageError::io("remove", path, e));
                break;
            }
            deleted += 1;
        }
        self.segments.drain(..deleted);
        result?;
        if deleted > 0 {
            sync_dir(&self.dir)?;
        }
        Ok(deleted)
    }

    /// Drops every record after `index`, durably: deletes the segments that
    /// start after it and truncates the one holding it. Replication uses it
    /// to remove a suffix that diverges from the leader's log. When `index`
    /// is below the first record the log becomes empty. Records appended but
    /// not synced are written first, so the result does not depend on when
    /// the caller last synced.
    pub fn truncate_after(&mut self, index: u64) -> Result<(), StorageError> {
        self.check_poisoned()?;
        if self.segments.is_empty() || index >= self.last_index {
            return Ok(());
        }
        // A failure part way leaves the files and this struct disagreeing;
        // only a restart's recovery can say what is on disk.
        self.truncate_after_inner(index)
            .inspect_err(|_| self.poisoned = true)
    }

    fn truncate_after_inner(&mut self, index: u64) -> Result<(), StorageError> {
        self.write_buffer()?;
        // Newest first: a crash part way leaves a contiguous log that still
        // holds the suffix, which the leader will cut again; the other order
        // could leave a gap, which recovery refuses.
        let mut removed = false;
        while let Some(segment) = self.segments.last() {
            if segment.first_index <= index {
                break;
            }
            self.file = None;
            fs::remove_file(&segment.path)
                .map_err(|e| StorageError::io("remove", &segment.path, e))?;
            self.segments.pop();
            removed = true;
        }
        if removed {
            sync_dir(&self.dir)?;
        }
        let Some(segment) = self.segments.last_mut() else {
            self.last_index = 0;
            self.last_term = 0;
            return Ok(());
        };
        let (end, term) = find_record_end(&segment.path, segment.first_index, index)?;
        let file = open_for_write(&segment.path)?;
        // The zeros go too: the next sync fills them in again.
        file.set_len(end)
            .map_err(|e| StorageError::io("truncate", &segment.path, e))?;
        file.sync_all()
            .map_err(|e| StorageError::io("fsync", &segment.path, e))?;
        segment.len_bytes = end;
        self.file = Some(file);
        self.written = end;
        self.file_len = end;
        self.last_index = index;
        self.last_term = term;
        // The kept segment may be one created since the last sync.
        if self.dir_sync_pending {
            sync_dir(&self.dir)?;
            self.dir_sync_pending = false;
        }
        Ok(())
    }

    fn check_poisoned(&self) -> Result<(), StorageError> {
        if self.poisoned {
            Err(StorageError::Poisoned)
        } else {
            Ok(())
        }
    }

    /// Finishes the current segment durably and starts `first_index`'s: the
    /// old segment is written, trimmed of its zeros and fsynced first, so
    /// that recovery never sees a later segment after an incomplete one.
    fn start_segment(&mut self, first_index: u64) -> Result<(), StorageError> {
        if self.file.is_some() {
            self.write_buffer()?;
            self.trim_current()?;
            self.sync_current()?;
        }
        let path = self.dir.join(segment_name(first_index));
        // create_new: an existing file of that name would be a bug, and
        // writing into it would corrupt it.
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| StorageError::io("create", &path, e))?;
        // The header goes out with the segment's first records, in the same
        // write; recovery treats a last segment without a record as torn.
        self.buffer
            .extend_from_slice(&SegmentHeader { first_index }.encode());
        self.segments.push(Segment {
            first_index,
            path,
            len_bytes: SEGMENT_HEADER_BYTES as u64,
        });
        self.file = Some(file);
        self.written = 0;
        self.file_len = 0;
        self.zero_ahead_failed = false;
        self.dir_sync_pending = true;
        Ok(())
    }

    /// Cuts the zeros after the current segment's records, which is about to
    /// be finished, so a finished segment's file is exactly its records.
    /// The caller fsyncs.
    fn trim_current(&mut self) -> Result<(), StorageError> {
        let (Some(file), Some(segment)) = (self.file.as_ref(), self.segments.last()) else {
            return Ok(());
        };
        if self.file_len > self.written {
            if let Err(e) = file.set_len(self.written) {
                self.poisoned = true;
                return Err(StorageError::io("truncate", &segment.path, e));
            }
            self.file_len = self.written;
        }
        Ok(())
    }

    /// Writes the buffer to the current segment (no fsync) and empties it.
    fn write_buffer(&mut self) -> Result<(), StorageError> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let (Some(file), Some(segment)) = (self.file.as_ref(), self.segments.last()) else {
            unreachable!("buffered bytes without a current segment");
        };
        if let Err(e) = file.write_all_at(&self.buffer, self.written) {
            self.poisoned = true;
            return Err(StorageError::io("write", &segment.path, e));
        }
        self.written += self.buffer.len() as u64;
        self.file_len = self.file_len.max(self.written);
        if self.buffer.capacity() > WRITE_BUFFER_BYTES_RETAIN_MAX {
            self.buffer = BytesMut::with_capacity(WRITE_BUFFER_BYTES_INITIAL);
        } else {
            self.buffer.clear();
        }
        Ok(())
    }

    fn sync_current(&mut self) -> Result<(), StorageError> {
        let (Some(file), Some(segment)) = (self.file.as_ref(), self.segments.last()) else {
            return Ok(());
        };
        // fdatasync: the size change it covers is all the metadata a reader
        // needs; the directory entry is synced separately on creation.
        if let Err(e) = file.sync_data() {
            self.poisoned = true;
            return Err(StorageError::io("fsync", &segment.path, e));
        }
        Ok(())
    }
}

fn segment_name(first_index: u64) -> String {
    format!(
        "{first_index:0width$}{SEGMENT_SUFFIX}",
        width = SEGMENT_NAME_DIGITS
    )
}

fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(SEGMENT_SUFFIX)?;
    if digits.len() != SEGMENT_NAME_DIGITS || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The segment files in `dir`, sorted by first index. Other files are left
/// alone with a warning: they are not ours to delete.
fn list_segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>, StorageError> {
    let entries = fs::read_dir(dir).map_err(|e| StorageError::io("list", dir, e))?;
    let mut segments = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| StorageError::io("list", dir, e))?;
        let path = entry.path();
        match entry.file_name().to_str().and_then(parse_segment_name) {
            Some(first_index) => segments.push((first_index, path)),
            None => {
                tracing::warn!(path = %path.display(), "ignoring a file that is not a log segment")
            }
        }
    }
    segments.sort_unstable_by_key(|(first_index, _)| *first_index);
    Ok(segments)
}

/// Opens a segment for writing at explicit offsets (not `O_APPEND`: the
/// records go into the zeros that follow them, not after the zeros).
fn open_for_write(path: &Path) -> Result<File, StorageError> {
    OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(|e| StorageError::io("open", path, e))
}

/// The index the next segment must start at, given what was recovered.
fn next_index(records: &[Record], segments: &[Segment]) -> u64 {
    match records.last() {
        Some(record) => record.index + 1,
        // Segments without records: only possible for a non-last segment
        // written by a buggy build; the next one starts where it would have.
        None => segments.last().map_or(1, |s| s.first_index),
    }
}

fn corrupt(what: &'static str, path: &Path, offset: usize, reason: impl ToString) -> StorageError {
    StorageError::Corrupt {
        what,
        path: path.to_path_buf(),
        offset: offset as u64,
        reason: reason.to_string(),
    }
}

/// What recovery found in one segment file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct SegmentExtent {
    /// Header and records.
    data_len: u64,
    /// The file, zeros after the records included.
    file_len: u64,
}

/// Reads one segment, appends its records to `records`, and returns its
/// extent after recovery, or `None` if it is the last segment and holds no
/// complete record (the caller deletes it). Truncates a torn tail of the last
/// segment in place; zeros after the records are the segment's normal end.
fn recover_segment(
    path: &Path,
    name_index: u64,
    expected_first: Option<u64>,
    is_last: bool,
    records: &mut Vec<Record>,
) -> Result<Option<SegmentExtent>, StorageError> {
    let mut bytes = fs::read(path).map_err(|e| StorageError::io("read", path, e))?;
    let file_len = bytes.len() as u64;
    // The records keep slices of this buffer alive: drop the zeros after
    // them first, or each restart would pin up to a segment of zeros.
    bytes.truncate(data_extent(&bytes));
    bytes.shrink_to_fit();
    let buf = Bytes::from(bytes);
    let header = match SegmentHeader::decode(&buf) {
        Ok(header) => header,
        // A crash right after creating the last segment leaves it short or,
        // on some file systems, zero-filled: nothing in it was ever synced.
        Err(_) if is_last && (buf.len() < SEGMENT_HEADER_BYTES || buf.iter().all(|b| *b == 0)) => {
            return Ok(None);
        }
        Err(e) => return Err(corrupt("segment header", path, 0, e)),
    };
    if header.first_index != name_index {
        return Err(corrupt(
            "segment header",
            path,
            0,
            format!(
                "first index {} but the file name says {name_index}",
                header.first_index
            ),
        ));
    }
    if let Some(expected) = expected_first {
        if header.first_index != expected {
            return Err(corrupt(
                "segment header",
                path,
                0,
                format!(
                    "segment starts at index {}, the previous one ends at {}",
                    header.first_index,
                    expected - 1
                ),
            ));
        }
    }

    let mut offset = SEGMENT_HEADER_BYTES;
    let mut next = header.first_index;
    let found_before = records.len();
    let damage = loop {
        match decode_record(&buf, offset) {
            Ok(Some((record, len))) => {
                // A record with a good CRC and the wrong index was written
                // that way; it is not a torn write.
                if record.index != next {
                    return Err(corrupt(
                        "log record",
                        path,
                        offset,
                        format!("index {}, expected {next}", record.index),
                    ));
                }
                records.push(record);
                offset += len;
                next += 1;
            }
            Ok(None) if offset == buf.len() => break None,
            Ok(None) => {
                break Some(format!(
                    "incomplete record: the file ends {} bytes into it",
                    buf.len() - offset
                ))
            }
            // The CRC matched, so these are the bytes that were written, and
            // this build cannot read them: never truncate those.
            Err(e @ RecordError::Command(_)) => return Err(corrupt("log record", path, offset, e)),
            Err(e) => break Some(e.to_string()),
        }
    };

    // Zeros from the damage to the end are the file's zero-filled tail, not
    // damage: no record is all zeros (its CRC and index are not).
    let damage = damage.filter(|_| buf[offset..].iter().any(|b| *b != 0));
    let mut file_len = file_len;
    if let Some(reason) = damage {
        if !is_last {
            return Err(corrupt("log record", path, offset, reason));
        }
        if let Some((at, index)) = find_valid_record(&buf, offset, next) {
            return Err(corrupt(
                "log record",
                path,
                offset,
                format!("{reason}; a valid record (index {index}) follows at offset {at}"),
            ));
        }
        tracing::warn!(
            path = %path.display(),
            offset,
            dropped_bytes = buf.len() - offset,
            reason = %reason,
            "truncating a torn log tail"
        );
        let file = OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(|e| StorageError::io("open", path, e))?;
        file.set_len(offset as u64)
            .map_err(|e| StorageError::io("truncate", path, e))?;
        file.sync_all()
            .map_err(|e| StorageError::io("fsync", path, e))?;
        file_len = offset as u64;
    }
    if is_last && records.len() == found_before {
        return Ok(None);
    }
    Ok(Some(SegmentExtent {
        data_len: offset as u64,
        file_len,
    }))
}

/// How much of a segment file's bytes recovery must keep: everything up to
/// its last non-zero byte, and at least as far as the record lengths,
/// followed from the start without checking anything else, reach (a record
/// may end in zero bytes). The rest is zeros.
fn data_extent(buf: &[u8]) -> usize {
    let nonzero_end = buf.iter().rposition(|b| *b != 0).map_or(0, |at| at + 1);
    let mut at = SEGMENT_HEADER_BYTES;
    while let Some(header) = RecordHeader::peek(buf, at) {
        let length = header.length as usize;
        if length == 0 || length > RECORD_BYTES_MAX {
            break;
        }
        let end = at + RECORD_HEADER_BYTES + length;
        if end > buf.len() {
            break;
        }
        at = end;
    }
    nonzero_end.max(at.min(buf.len()))
}

/// Looks past damage at `from` for a valid record with a plausible index:
/// `next` or above, but no more than the records that fit in between. The
/// index test is a cheap filter that almost never passes on garbage, so the
/// CRC is computed rarely and the scan is linear in the bytes after `from`,
/// which are at most one segment's.
fn find_valid_record(buf: &Bytes, from: usize, next: u64) -> Option<(usize, u64)> {
    let last_start = buf.len().checked_sub(RECORD_HEADER_BYTES)?;
    for at in from + 1..=last_start {
        let Some(header) = RecordHeader::peek(buf, at) else {
            break;
        };
        let fit = ((at - from) / RECORD_BYTES_MIN) as u64 + 1;
        if header.index < next || header.index - next > fit {
            continue;
        }
        if let Ok(Some((record, _))) = decode_record(buf, at) {
            return Some((at, record.index));
        }
    }
    None
}

/// Byte offset just past record `index` in the segment at `path`, and its
/// term. The log wrote the file and recovered it, so damage here is new.
fn find_record_end(path: &Path, first_index: u64, index: u64) -> Result<(u64, u64), StorageError> {
    let buf = Bytes::from(fs::read(path).map_err(|e| StorageError::io("read", path, e))?);
    let mut offset = SEGMENT_HEADER_BYTES;
    let mut expected = first_index;
    loop {
        let (record, len) = match decode_record(&buf, offset) {
            Ok(Some(found)) => found,
            Ok(None) => {
                return Err(corrupt(
                    "log record",
                    path,
                    offset,
                    format!("index {index} not found"),
                ))
            }
            Err(e) => return Err(corrupt("log record", path, offset, e)),
        };
        if record.index != expected {
            return Err(corrupt(
                "log record",
                path,
                offset,
                format!("index {}, expected {expected}", record.index),
            ));
        }
        offset += len;
        if record.index == index {
            return Ok((offset as u64, record.term));
        }
        expected += 1;
    }
}

#[cfg(test)]
mod tests;
