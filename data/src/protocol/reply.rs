//! Server side replies, encoded into a `BytesMut` with memcached's exact
//! wording.
//!
//! The get path writes `VALUE` blocks straight from an item into the
//! connection's output buffer ([`encode_value`]); everything else is a
//! [`Reply`]. The connection owns the buffer; nothing here does I/O.

use bytes::{BufMut, BytesMut};

use super::put_u64;
use crate::state::Outcome;

/// A reply line (or block) other than retrieval values.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    Stored,
    NotStored,
    Exists,
    NotFound,
    Deleted,
    Touched,
    Ok,
    Reset,
    End,
    Number(u64),
    Version(String),
    /// `STAT <name> <value>` lines then `END`.
    Stats(Vec<(String, String)>),
    /// A full error line from [`crate::protocol::request`] or [`errors`].
    Error(&'static str),
}

/// Error lines the server itself raises (the parser's are in `request`).
pub mod errors {
    pub const NON_NUMERIC: &str =
        "CLIENT_ERROR cannot increment or decrement non-numeric value\r\n";
    pub const TOO_LARGE: &str = "SERVER_ERROR object too large for cache\r\n";
    /// A write that would take the items over the memory limit (`-m`), as
    /// memcached answers with `-M`.
    pub const OUT_OF_MEMORY: &str = "SERVER_ERROR out of memory storing object\r\n";
    /// `cache_memlimit` below memcached's smallest limit.
    pub const MEMLIMIT_TOO_SMALL: &str =
        "MEMLIMIT_TOO_SMALL cannot set maxbytes to less than 8m\r\n";
    /// `cache_memlimit` with a value that looks like bytes.
    pub const MEMLIMIT_NOT_BYTES: &str =
        "MEMLIMIT_ADJUST_FAILED input value is megabytes not bytes\r\n";
    pub const TOO_MANY_CONNECTIONS: &str = "ERROR Too many open connections\r\n";
    pub const SHUTTING_DOWN: &str = "SERVER_ERROR shutting down\r\n";
    pub const STORAGE_FAILED: &str = "SERVER_ERROR log write failed\r\n";
    /// Cluster mode: no leader can be reached; the client should retry.
    pub const NO_LEADER: &str = "SERVER_ERROR no leader available, retry\r\n";
    /// Cluster mode: the leader was just elected or lost its majority.
    pub const NOT_READY: &str = "SERVER_ERROR leader not ready, retry\r\n";
    /// Cluster mode: leadership changed before the write committed.
    pub const OUTCOME_UNKNOWN: &str = "SERVER_ERROR leader changed, outcome unknown\r\n";
}

impl Reply {
    /// The reply a write's [`Outcome`] gets, for outcomes that are one line.
    /// gat/gats hits are encoded by the caller with [`encode_value`].
    pub fn from_outcome(outcome: &Outcome) -> Reply {
        match outcome {
            Outcome::Stored { .. } => Reply::Stored,
            Outcome::NotStored => Reply::NotStored,
            Outcome::Exists => Reply::Exists,
            Outcome::NotFound => Reply::NotFound,
            Outcome::Deleted => Reply::Deleted,
            Outcome::Touched => Reply::Touched,
            Outcome::Number { value, .. } => Reply::Number(*value),
            Outcome::NonNumeric => Reply::Error(errors::NON_NUMERIC),
            Outcome::Hits(_) | Outcome::Leased(_) => Reply::End,
            // No client sends a reclaim; only the server's reclaimer does.
            Outcome::Ok | Outcome::Reclaimed(_) => Reply::Ok,
        }
    }

    pub fn encode(&self, out: &mut BytesMut) {
        let line: &[u8] = match self {
            Reply::Stored => b"STORED\r\n",
            Reply::NotStored => b"NOT_STORED\r\n",
            Reply::Exists => b"EXISTS\r\n",
            Reply::NotFound => b"NOT_FOUND\r\n",
            Reply::Deleted => b"DELETED\r\n",
            Reply::Touched => b"TOUCHED\r\n",
            Reply::Ok => b"OK\r\n",
            Reply::Reset => b"RESET\r\n",
            Reply::End => b"END\r\n",
            Reply::Number(n) => {
                put_u64(out, *n);
                b"\r\n"
            }
            Reply::Version(version) => {
                out.put_slice(b"VERSION ");
                out.put_slice(version.as_bytes());
                b"\r\n"
            }
            Reply::Stats(stats) => {
                for (name, value) in stats {
                    out.put_slice(b"STAT ");
                    out.put_slice(name.as_bytes());
                    out.put_u8(b' ');
                    out.put_slice(value.as_bytes());
                    out.put_slice(b"\r\n");
                }
                b"END\r\n"
            }
            Reply::Error(line) => line.as_bytes(),
        };
        out.put_slice(line);
    }
}

/// `VALUE <key> <flags> <bytes>[ <cas>]\r\n<data>\r\n`.
pub fn encode_value(out: &mut BytesMut, key: &[u8], flags: u32, data: &[u8], cas: Option<u64>) {
    out.reserve(key.len() + data.len() + 64);
    out.put_slice(b"VALUE ");
    out.put_slice(key);
    out.put_u8(b' ');
    put_u64(out, u64::from(flags));
    out.put_u8(b' ');
    put_u64(out, data.len() as u64);
    if let Some(cas) = cas {
        out.put_u8(b' ');
        put_u64(out, cas);
    }
    out.put_slice(b"\r\n");
    out.put_slice(data);
    out.put_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(reply: Reply) -> Vec<u8> {
        let mut out = BytesMut::new();
        reply.encode(&mut out);
        out.to_vec()
    }

    #[test]
    fn lines_match_memcached() {
        assert_eq!(encoded(Reply::Stored), b"STORED\r\n");
        assert_eq!(encoded(Reply::NotStored), b"NOT_STORED\r\n");
        assert_eq!(
            encoded(Reply::Number(u64::MAX)),
            b"18446744073709551615\r\n"
        );
        assert_eq!(
            encoded(Reply::Version("1.6.0".into())),
            b"VERSION 1.6.0\r\n"
        );
        assert_eq!(
            encoded(Reply::Stats(vec![("pid".into(), "7".into())])),
            b"STAT pid 7\r\nEND\r\n"
        );
    }

    #[test]
    fn value_block() {
        let mut out = BytesMut::new();
        encode_value(&mut out, b"k", 5, b"a\r\nb", Some(9));
        assert_eq!(&out[..], b"VALUE k 5 4 9\r\na\r\nb\r\n");
        out.clear();
        encode_value(&mut out, b"z", 0, b"", None);
        assert_eq!(&out[..], b"VALUE z 0 0\r\n\r\n");
    }
}
