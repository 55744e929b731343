//! The client library's one error type. Owns the mapping from what went
//! wrong (socket, bytes, server error line, clock) to a variant; it does no
//! I/O. Every public async method of [`crate::Client`] and
//! [`crate::Connection`] returns it.

use std::time::Duration;

use data::protocol::client::{EncodeError, ResponseError};
use thiserror::Error;

/// Why a request did not produce its typed result.
#[derive(Debug, Error)]
pub enum Error {
    /// The socket failed (connection refused, reset, ...).
    #[error("i/o error: {0}")]
    Io(std::io::Error),
    /// The server's bytes are not the reply the request allows; the
    /// connection is out of step and is not used again.
    #[error("protocol error: {0}")]
    Protocol(ResponseError),
    /// A well-formed reply that the request cannot get (say `DELETED` to a
    /// `set`). The stream is still in step.
    #[error("unexpected reply: {0}")]
    UnexpectedReply(String),
    /// The server answered `ERROR`, `CLIENT_ERROR <msg>` or
    /// `SERVER_ERROR <msg>`: the whole line, as sent. The connection stays
    /// usable, as memcached keeps it open.
    #[error("{0}")]
    Server(String),
    /// No reply within the per-request timeout. A reply may still arrive, so
    /// the connection is not used again.
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    /// The request was refused before sending (bad key, value too large).
    #[error("invalid request: {0}")]
    Invalid(EncodeError),
    /// The server closed the connection.
    #[error("connection closed by the server")]
    Closed,
    /// An earlier I/O, protocol or timeout error left the connection in an
    /// unknown state; make a new one.
    #[error("connection unusable after an earlier error")]
    Broken,
    /// `recv` was called with no request waiting for a reply.
    #[error("no request is waiting for a reply")]
    NothingPending,
    /// More requests queued than [`crate::connection::PENDING_REQUESTS_MAX`].
    #[error("too many requests in flight")]
    TooManyPending,
}

impl Error {
    /// True if the connection that returned this error must be dropped.
    pub fn is_fatal(&self) -> bool {
        matches!(
            self,
            Error::Io(_) | Error::Protocol(_) | Error::Timeout(_) | Error::Closed | Error::Broken
        )
    }
}

// The inner errors are part of the message, not `source()`s, so that a
// report printing the source chain does not repeat them.
impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Error::Io(e)
    }
}

impl From<ResponseError> for Error {
    fn from(e: ResponseError) -> Self {
        Error::Protocol(e)
    }
}

impl From<EncodeError> for Error {
    fn from(e: EncodeError) -> Self {
        Error::Invalid(e)
    }
}

/// Shorthand used across the crate.
pub type Result<T> = std::result::Result<T, Error>;
