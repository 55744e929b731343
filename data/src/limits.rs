//! Every limit of the text protocol as a named constant, unit last.
//!
//! The parser checks these before it buffers a payload; the server passes the
//! configurable ones (item size) through [`Limits`].

/// Longest key memcached accepts (keys are 1..=250 bytes).
pub const KEY_BYTES_MAX: usize = 250;

/// A command line longer than this with no `\n` closes the connection, unless
/// it is a `get`/`gets` line, which may be as long as its keys need.
pub const LINE_BYTES_MAX: usize = 2048;

/// A multi-get line is unbounded in memcached; we bound it to keep a single
/// connection from holding unbounded memory: 64 MiB fits ~250k max-size keys.
pub const GET_LINE_BYTES_MAX: usize = 64 * 1024 * 1024;

/// Leading spaces memcached skips when deciding whether a long line is a get.
pub const GET_LEADING_SPACES_MAX: usize = 100;

/// Default item size limit (`-I 1m`): the largest value stored.
pub const ITEM_BYTES_DEFAULT: usize = 1024 * 1024;

/// Largest item size limit `-I` may set; memcached allows up to 1 GiB, we cap
/// at 128 MiB since every value is also a log record and a replication payload.
pub const ITEM_BYTES_MAX: usize = 128 * 1024 * 1024;

/// Largest `<bytes>` accepted on a storage line (INT_MAX - 2, as memcached).
pub const DATA_BYTES_FIELD_MAX: i64 = 2_147_483_645;

/// Relative expiry times go up to 30 days; larger values are Unix times.
pub const EXPTIME_RELATIVE_MAX_S: i64 = 60 * 60 * 24 * 30;

/// Limits the parser enforces that a server can configure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest value stored (`-I`).
    pub item_bytes_max: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            item_bytes_max: ITEM_BYTES_DEFAULT,
        }
    }
}
