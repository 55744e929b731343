//! The keystore file streamed in chunks (DESIGN §4), both ends, for every
//! host: a leader sends its latest keystore file to a follower behind its
//! compacted log a window of chunks at a time, resending what is not
//! acknowledged; the follower appends chunks in order to a side file and
//! hands the file to its host once whole. What the bytes are stored in is
//! the host's ([`StreamSource`], [`StreamSink`]): a file for the server, a
//! buffer for the simulator, which so runs this code unchanged.
//!
//! The follower acknowledges an offset: the bytes it holds in order. It
//! acknowledges the whole file only once its host installed it durably, so a
//! leader that hears the whole file acknowledged resumes replication after
//! the file's index ([`Replica::snapshot_delivered`]). An acknowledgement of
//! offset 0 after progress means the follower lost what it had (it
//! restarted, or the whole file did not check): the stream starts over.

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;

use bytes::Bytes;
use data::frame::{LogIndex, Message, Role, ServerId, Term, SNAPSHOT_CHUNK_BYTES_MAX};

use super::Replica;

/// Snapshot chunks in flight to one follower at most.
pub const SNAPSHOT_WINDOW_CHUNKS: u64 = 64;
/// Resend unacknowledged snapshot chunks after this long.
pub const SNAPSHOT_RESEND_MS: u64 = 200;
/// A snapshot stream gives up after this long without progress.
pub const SNAPSHOT_STALL_MS: u64 = 10_000;
/// Largest keystore file accepted from a leader.
pub const SNAPSHOT_BYTES_MAX: u64 = 64 * 1024 * 1024 * 1024;

/// Where a stream's bytes come from: the keystore file as it was when the
/// stream started (a newer file renamed over it leaves this one readable).
pub trait StreamSource {
    /// Fills `buf` with the bytes at `offset`.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
}

impl StreamSource for std::fs::File {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        std::os::unix::fs::FileExt::read_exact_at(self, buf, offset)
    }
}

impl StreamSource for Bytes {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let start = usize::try_from(offset).map_err(|_| io::ErrorKind::UnexpectedEof)?;
        let bytes = self
            .get(start..start.saturating_add(buf.len()))
            .ok_or(io::ErrorKind::UnexpectedEof)?;
        buf.copy_from_slice(bytes);
        Ok(())
    }
}

/// Where a follower puts the chunks it receives, in order.
pub trait StreamSink {
    fn append(&mut self, bytes: &[u8]) -> io::Result<()>;
}

impl StreamSink for std::fs::File {
    fn append(&mut self, bytes: &[u8]) -> io::Result<()> {
        io::Write::write_all(self, bytes)
    }
}

impl StreamSink for Vec<u8> {
    fn append(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.extend_from_slice(bytes);
        Ok(())
    }
}

/// How a stream is cut: the server sends the largest chunks a frame holds;
/// the simulator small ones, so its small keystores take many chunks and
/// windows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StreamShape {
    pub chunk_bytes: u64,
    pub window_chunks: u64,
}

impl StreamShape {
    pub const SERVER: StreamShape = StreamShape {
        chunk_bytes: SNAPSHOT_CHUNK_BYTES_MAX as u64,
        window_chunks: SNAPSHOT_WINDOW_CHUNKS,
    };
}

/// A message for the host to send in the replica's current term.
#[derive(Debug)]
pub struct Outgoing {
    pub to: ServerId,
    pub addr: SocketAddr,
    pub message: Message,
}

/// What a stream sends: the keystore file at `index` (of `term`), `total`
/// bytes long.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileAt {
    pub index: LogIndex,
    pub term: Term,
    pub total: u64,
}

struct Stream<S> {
    /// The term this server led in when the stream started: a stream ends
    /// with that leadership (a follower sending chunks in a later term
    /// would look like a second leader).
    leader_term: Term,
    addr: SocketAddr,
    file: FileAt,
    source: S,
    acked: u64,
    last_progress_ms: u64,
    last_send_ms: u64,
}

/// The leader's end: one stream per follower behind the compacted log.
pub struct Senders<S> {
    shape: StreamShape,
    streams: BTreeMap<ServerId, Stream<S>>,
}

impl<S: StreamSource> Senders<S> {
    pub fn new(shape: StreamShape) -> Senders<S> {
        assert!(shape.chunk_bytes > 0 && shape.chunk_bytes <= SNAPSHOT_CHUNK_BYTES_MAX as u64);
        assert!(shape.window_chunks > 0);
        Senders {
            shape,
            streams: BTreeMap::new(),
        }
    }

    /// The core asked to stream the keystore to `to`. `Some` when a stream
    /// of a file at `snapshot_index` or later is already under way: what to
    /// send now (the window again if the follower came back on another
    /// address, having lost what it had). `None`: the host should open its
    /// latest file and [`Senders::start`] it.
    pub fn under_way(
        &mut self,
        core: &Replica,
        now_ms: u64,
        to: ServerId,
        addr: SocketAddr,
        snapshot_index: LogIndex,
    ) -> Option<Vec<Outgoing>> {
        self.end_stale(core);
        let stream = self.streams.get_mut(&to)?;
        if stream.file.index < snapshot_index {
            return None;
        }
        if stream.addr == addr {
            return Some(Vec::new());
        }
        stream.addr = addr;
        stream.acked = 0;
        stream.last_progress_ms = now_ms;
        Some(self.window(now_ms, to))
    }

    /// Starts streaming `file`, read from `source`, to `to`, replacing any
    /// stream of an older file; returns the first window.
    pub fn start(
        &mut self,
        core: &Replica,
        now_ms: u64,
        to: ServerId,
        addr: SocketAddr,
        file: FileAt,
        source: S,
    ) -> Vec<Outgoing> {
        tracing::info!(
            follower = to.0,
            index = file.index.0,
            bytes = file.total,
            "streaming the keystore file"
        );
        self.streams.insert(
            to,
            Stream {
                leader_term: core.term(),
                addr,
                file,
                source,
                acked: 0,
                last_progress_ms: now_ms,
                last_send_ms: 0,
            },
        );
        self.window(now_ms, to)
    }

    /// The window of chunks after what `to` acknowledged, read now (one
    /// window in memory at a time). A source that cannot be read drops the
    /// stream; the core asks again.
    fn window(&mut self, now_ms: u64, to: ServerId) -> Vec<Outgoing> {
        let Some(stream) = self.streams.get_mut(&to) else {
            return Vec::new();
        };
        stream.last_send_ms = now_ms;
        let FileAt { index, term, total } = stream.file;
        let (start, chunk) = (stream.acked, self.shape.chunk_bytes);
        let end = (start + self.shape.window_chunks * chunk).min(total);
        let mut window = vec![0u8; (end - start) as usize];
        if let Err(error) = stream.source.read_at(&mut window, start) {
            tracing::warn!(%error, follower = to.0, "cannot read the keystore file to send; stream dropped");
            self.streams.remove(&to);
            return Vec::new();
        }
        let window = Bytes::from(window);
        let mut out = Vec::new();
        let mut offset = start;
        // An empty file still sends one (empty) chunk, so it is acknowledged.
        loop {
            let len = chunk.min(total - offset);
            let at = (offset - start) as usize;
            out.push(Outgoing {
                to,
                addr: stream.addr,
                message: Message::SnapshotChunk {
                    snapshot_index: index,
                    snapshot_term: term,
                    total_len: total,
                    offset,
                    bytes: window.slice(at..at + len as usize),
                },
            });
            offset += len;
            if offset >= end {
                break;
            }
        }
        out
    }

    /// A follower acknowledged, in `term`, `offset` bytes of the file at
    /// `index`: the next window, or, for the whole file, the core told
    /// that `from` holds it (and the stream ends).
    pub fn acked(
        &mut self,
        core: &mut Replica,
        now_ms: u64,
        from: ServerId,
        term: Term,
        index: LogIndex,
        offset: u64,
    ) -> Vec<Outgoing> {
        self.end_stale(core);
        let Some(stream) = self.streams.get_mut(&from) else {
            return Vec::new();
        };
        if stream.file.index != index || term != stream.leader_term {
            return Vec::new();
        }
        if offset == 0 && stream.acked > 0 {
            // The follower lost what it had received: start over rather
            // than wait for the stream to stall.
            stream.acked = 0;
        } else if offset <= stream.acked {
            return Vec::new();
        }
        stream.acked = offset.min(stream.file.total);
        stream.last_progress_ms = now_ms;
        if stream.acked == stream.file.total {
            tracing::info!(
                follower = from.0,
                index = index.0,
                "keystore file delivered"
            );
            self.streams.remove(&from);
            // Replication resumes after the file even if the follower's own
            // Ack is lost (the leader sends nothing else to a follower
            // behind its log, so nothing else would bring another Ack).
            core.snapshot_delivered(now_ms, from, index);
            return Vec::new();
        }
        self.window(now_ms, from)
    }

    /// Resends the windows of streams quiet for [`SNAPSHOT_RESEND_MS`];
    /// drops streams without progress for [`SNAPSHOT_STALL_MS`].
    pub fn tick(&mut self, core: &Replica, now_ms: u64) -> Vec<Outgoing> {
        self.end_stale(core);
        self.streams
            .retain(|_, s| now_ms.saturating_sub(s.last_progress_ms) < SNAPSHOT_STALL_MS);
        let due: Vec<ServerId> = self
            .streams
            .iter()
            .filter(|(_, s)| now_ms >= s.last_send_ms + SNAPSHOT_RESEND_MS)
            .map(|(id, _)| *id)
            .collect();
        due.into_iter()
            .flat_map(|id| self.window(now_ms, id))
            .collect()
    }

    /// Ends the streams of a leadership this server no longer holds.
    fn end_stale(&mut self, core: &Replica) {
        let leading = (core.role() == Role::Leader).then(|| core.term());
        self.streams.retain(|_, s| Some(s.leader_term) == leading);
    }

    pub fn len(&self) -> usize {
        self.streams.len()
    }

    pub fn is_empty(&self) -> bool {
        self.streams.is_empty()
    }
}

/// One chunk as it arrived, with the frame's sender and term.
#[derive(Clone, Debug)]
pub struct Chunk {
    pub from: ServerId,
    pub term: Term,
    pub snapshot_index: LogIndex,
    pub snapshot_term: Term,
    pub total: u64,
    pub offset: u64,
    pub bytes: Bytes,
}

impl Chunk {
    /// The chunk `message` carries, sent by `from` in `term`; any other
    /// message comes back.
    pub fn of(from: ServerId, term: Term, message: Message) -> Result<Chunk, Message> {
        match message {
            Message::SnapshotChunk {
                snapshot_index,
                snapshot_term,
                total_len,
                offset,
                bytes,
            } => Ok(Chunk {
                from,
                term,
                snapshot_index,
                snapshot_term,
                total: total_len,
                offset,
                bytes,
            }),
            other => Err(other),
        }
    }
}

/// What the follower's end asks of its host after a chunk.
pub enum Received<W> {
    /// Nothing to do (a stale leader, or a file too large).
    Nothing,
    /// Send this acknowledgement.
    Ack(Outgoing),
    /// The file is whole: check it, install it durably, then send
    /// [`whole_file_ack`].
    Whole {
        from: ServerId,
        file: FileAt,
        sink: W,
    },
}

struct Arriving<W> {
    file: FileAt,
    received: u64,
    sink: W,
}

/// The follower's end: at most one file arriving.
pub struct Receiver<W> {
    arriving: Option<Arriving<W>>,
    /// Deliberate bug: the file is installed under the term of the frame
    /// that carried it rather than the term of its last entry.
    #[cfg(feature = "deliberate-bugs")]
    pub bug_frame_term_as_snapshot_term: bool,
}

impl<W> Default for Receiver<W> {
    fn default() -> Self {
        Receiver {
            arriving: None,
            #[cfg(feature = "deliberate-bugs")]
            bug_frame_term_as_snapshot_term: false,
        }
    }
}

impl<W: StreamSink> Receiver<W> {
    /// A file is arriving (the host holds off its own keystore writes).
    pub fn is_receiving(&self) -> bool {
        self.arriving.is_some()
    }

    /// Forgets the file arriving (the host failed to store it).
    pub fn abandon(&mut self) {
        self.arriving = None;
    }

    /// One chunk from the leader. `applied` is the host's applied index: a
    /// file at or below it, or below the core's snapshot, is acknowledged
    /// whole at once. `create` makes the sink for a new file; an error
    /// storing the chunk is the host's to report (and then
    /// [`Receiver::abandon`]).
    pub fn chunk(
        &mut self,
        core: &mut Replica,
        now_ms: u64,
        applied: LogIndex,
        chunk: Chunk,
        create: impl FnOnce() -> io::Result<W>,
    ) -> io::Result<Received<W>> {
        let Chunk {
            from,
            term,
            snapshot_index: index,
            snapshot_term,
            total,
            offset,
            bytes,
        } = chunk;
        if !core.accept_snapshot_chunk(now_ms, from, term) || total > SNAPSHOT_BYTES_MAX {
            return Ok(Received::Nothing);
        }
        if index <= applied.max(core.snapshot_position().0) {
            // Already have it: tell the leader so it stops.
            return Ok(ack(core, from, index, total).map_or(Received::Nothing, Received::Ack));
        }
        #[cfg(feature = "deliberate-bugs")]
        let snapshot_term = if self.bug_frame_term_as_snapshot_term {
            term
        } else {
            snapshot_term
        };
        let file = FileAt {
            index,
            term: snapshot_term,
            total,
        };
        if self
            .arriving
            .as_ref()
            .is_none_or(|a| a.file.index != index || a.file.total != total)
        {
            self.arriving = Some(Arriving {
                file,
                received: 0,
                sink: create()?,
            });
        }
        let Some(arriving) = self.arriving.as_mut() else {
            return Ok(Received::Nothing);
        };
        if offset == arriving.received && arriving.received + bytes.len() as u64 <= total {
            arriving.sink.append(&bytes)?;
            arriving.received += bytes.len() as u64;
        }
        if arriving.received < total {
            let received = arriving.received;
            return Ok(ack(core, from, index, received).map_or(Received::Nothing, Received::Ack));
        }
        let Some(Arriving { file, sink, .. }) = self.arriving.take() else {
            return Ok(Received::Nothing);
        };
        Ok(Received::Whole { from, file, sink })
    }
}

/// The acknowledgement of a whole file ([`Received::Whole`]): of all of it
/// once the host `installed` it, of nothing when it did not check, which
/// makes the leader start over.
pub fn whole_file_ack(
    core: &Replica,
    from: ServerId,
    file: FileAt,
    installed: bool,
) -> Option<Outgoing> {
    let offset = if installed { file.total } else { 0 };
    ack(core, from, file.index, offset)
}

fn ack(core: &Replica, leader: ServerId, index: LogIndex, offset: u64) -> Option<Outgoing> {
    let addr = core.peer_addr(leader)?;
    Some(Outgoing {
        to: leader,
        addr,
        message: Message::SnapshotAck {
            snapshot_index: index,
            offset,
        },
    })
}
