//! Authentication on the wire (DESIGN §5a "Authentication"): memcached's
//! text login (`-Y`, its authfile) and SASL PLAIN's message (`-S`), and the
//! `user:password` files both read. Pure: the server owns the files, the users and the
//! connection's state.
//!
//! The text login is memcached's: before a connection authenticates, every
//! line is `CLIENT_ERROR unauthenticated` except a `set` of at least five
//! words whose fifth is a length; its data block holds `<user> <password>`
//! (split on spaces as memcached 1.6.18 splits it, extra words ignored).
//! The key, flags and exptime are not looked at, and nothing is stored.

use bytes::Bytes;

use super::request::line_words;
use crate::limits::LINE_BYTES_MAX;

/// A login's data block longer than this cannot hold a user and password
/// of a credentials file (which is at most [`CREDENTIALS_BYTES_MAX`]): it
/// is discarded as it arrives rather than buffered, and fails.
pub const LOGIN_BYTES_MAX: usize = CREDENTIALS_BYTES_MAX;
/// A credentials file (authfile, SASL password file) is at most this large.
pub const CREDENTIALS_BYTES_MAX: usize = 1024 * 1024;
/// memcached's SASL mechanism names are at most this long.
pub const SASL_MECH_BYTES_MAX: usize = 32;
/// The one SASL mechanism served: the password in the clear, as memcached's
/// `MEMCACHED_SASL_PWDB` setups use it (TLS is what protects it on the
/// wire).
pub const SASL_MECHANISMS: &str = "PLAIN";

/// The reply to `forwarder` without a proof: this, then the challenge in
/// hex ([`crate::admin_proof`]).
pub const CHALLENGE_PREFIX: &str = "CHALLENGE ";

pub mod replies {
    pub const UNAUTHENTICATED: &str = "CLIENT_ERROR unauthenticated\r\n";
    pub const FAILURE: &str = "CLIENT_ERROR authentication failure\r\n";
    pub const BAD_FORMAT: &str = "CLIENT_ERROR bad authentication token format\r\n";
    pub const BAD_TERMINATION: &str = "CLIENT_ERROR bad command line termination\r\n";
    pub const STORED: &str = "STORED\r\n";
    /// `forwarder` on a server that is not in a cluster (it has no secret).
    pub const NOT_IN_CLUSTER: &str = "CLIENT_ERROR this server is not in a cluster\r\n";
    /// `forwarder` with a proof that is not the cluster secret's for the
    /// challenge this connection was handed, or without a challenge.
    pub const BAD_PROOF: &str = "CLIENT_ERROR the proof does not match the cluster secret\r\n";
}

/// What an unauthenticated text connection does with the front of its
/// input ([`text_gate`]).
#[derive(Debug, PartialEq, Eq)]
pub enum Gate {
    /// More bytes are needed.
    Incomplete,
    /// A line longer than any request: close, as the request parser does.
    Close,
    /// A `forwarder` line (a server proving the cluster secret): parse it
    /// as a request.
    Forwarder,
    /// Not a login: `CLIENT_ERROR unauthenticated`; drop `consumed` bytes.
    Refused { consumed: usize },
    /// A login attempt: drop `consumed` bytes and discard `discard` more as
    /// they arrive, then answer as `login` says.
    Attempt {
        consumed: usize,
        discard: u64,
        login: Login,
    },
}

/// What a login's data block held.
#[derive(Debug, PartialEq, Eq)]
pub enum Login {
    /// A user and password to check.
    Credentials { user: Bytes, password: Bytes },
    /// Not two words: `CLIENT_ERROR bad authentication token format`.
    BadFormat,
    /// Not ended by `\r\n`: `CLIENT_ERROR bad command line termination`.
    BadTermination,
    /// Longer than [`LOGIN_BYTES_MAX`]: no user has such a password.
    TooLong,
}

/// Decides what an unauthenticated connection does with `buf` (text; the
/// caller sends binary packets elsewhere).
pub fn text_gate(buf: &[u8]) -> Gate {
    let Some(newline) = memchr::memchr(b'\n', buf) else {
        return if buf.len() > LINE_BYTES_MAX {
            Gate::Close
        } else {
            Gate::Incomplete
        };
    };
    let (words, line_bytes) = line_words(buf, newline);
    if words.first() == Some(&&b"forwarder"[..]) {
        return Gate::Forwarder;
    }
    let size = match words.as_slice() {
        [b"set", _, _, _, size, ..] => parse_length(size),
        _ => None,
    };
    let Some(size) = size else {
        return Gate::Refused {
            consumed: line_bytes,
        };
    };
    let block = size + 2;
    if size > LOGIN_BYTES_MAX {
        return Gate::Attempt {
            consumed: line_bytes,
            discard: block as u64,
            login: Login::TooLong,
        };
    }
    if buf.len() < line_bytes + block {
        return Gate::Incomplete;
    }
    let data = &buf[line_bytes..line_bytes + block];
    let login = if !data.ends_with(b"\r\n") {
        Login::BadTermination
    } else {
        let mut words = data[..size].split(|&b| b == b' ').filter(|w| !w.is_empty());
        match (words.next(), words.next()) {
            (Some(user), Some(password)) => Login::Credentials {
                user: Bytes::copy_from_slice(user),
                password: Bytes::copy_from_slice(password),
            },
            _ => Login::BadFormat,
        }
    };
    Gate::Attempt {
        consumed: line_bytes + block,
        discard: 0,
        login,
    }
}

/// A data length as memcached's login reads it: decimal digits that fit
/// 32 bits.
fn parse_length(word: &[u8]) -> Option<usize> {
    if word.is_empty() || !word.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(word)
        .ok()?
        .parse::<u32>()
        .ok()
        .map(|n| n as usize)
}

/// SASL PLAIN's message (RFC 4616): `authzid NUL authcid NUL password`.
/// The authorization id must be empty or the user's own (no acting for
/// another user); `None` for anything else.
pub fn sasl_plain(message: &[u8]) -> Option<(&[u8], &[u8])> {
    let mut parts = message.split(|&b| b == 0);
    let (authzid, user, password) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || user.is_empty() {
        return None;
    }
    if !authzid.is_empty() && authzid != user {
        return None;
    }
    Some((user, password))
}

/// A `user:password` file (memcached's authfile and SASL password file).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Credentials {
    users: Vec<(Vec<u8>, Vec<u8>)>,
}

/// Why a credentials file was refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum CredentialsError {
    /// memcached's words for it.
    #[error("line {line} is not 'user:password'")]
    Malformed { line: usize },
    #[error("larger than {CREDENTIALS_BYTES_MAX} bytes")]
    TooLarge,
}

impl Credentials {
    /// Parses a file's text: one `user:password` per line, split at the
    /// first `:` (a password may hold more); every line needs one, as in
    /// memcached, so a blank line or a comment is an error rather than a
    /// silently ignored entry.
    pub fn parse(text: &[u8]) -> Result<Credentials, CredentialsError> {
        if text.len() > CREDENTIALS_BYTES_MAX {
            return Err(CredentialsError::TooLarge);
        }
        let text = text.strip_suffix(b"\n").unwrap_or(text);
        let mut users = Vec::new();
        if text.is_empty() {
            return Ok(Credentials { users });
        }
        for (n, line) in text.split(|&b| b == b'\n').enumerate() {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            let colon =
                memchr::memchr(b':', line).ok_or(CredentialsError::Malformed { line: n + 1 })?;
            users.push((line[..colon].to_vec(), line[colon + 1..].to_vec()));
        }
        Ok(Credentials { users })
    }

    /// Whether `user` with `password` is in the file. Every entry is looked
    /// at, and bytes are compared without stopping at the first that
    /// differs, so the time taken says little about how close a guess was.
    pub fn check(&self, user: &[u8], password: &[u8]) -> bool {
        let mut found = false;
        for (u, p) in &self.users {
            found |= same_bytes(u, user) & same_bytes(p, password);
        }
        found
    }

    pub fn len(&self) -> usize {
        self.users.len()
    }

    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }
}

/// Equality that reads every byte of equal-length inputs.
fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attempt(buf: &[u8]) -> Login {
        match text_gate(buf) {
            Gate::Attempt {
                consumed,
                discard: 0,
                login,
            } => {
                assert_eq!(consumed, buf.len());
                login
            }
            other => panic!("{other:?}"),
        }
    }

    fn creds(user: &str, password: &str) -> Login {
        Login::Credentials {
            user: Bytes::copy_from_slice(user.as_bytes()),
            password: Bytes::copy_from_slice(password.as_bytes()),
        }
    }

    #[test]
    fn a_login_is_any_set_with_a_length() {
        assert_eq!(
            attempt(b"set a 0 0 13\r\nalice secret1\r\n"),
            creds("alice", "secret1")
        );
        // Key, flags and exptime are not looked at; noreply neither.
        assert_eq!(
            attempt(b"set x y z 13 noreply\r\nalice secret1\r\n"),
            creds("alice", "secret1")
        );
        // Split on spaces as 1.6.18 does: runs of them, leading and
        // trailing ones, and words after the second do not matter.
        assert_eq!(
            attempt(b"set a 0 0 16\r\n alice  secret1 \r\n"),
            creds("alice", "secret1")
        );
        assert_eq!(
            attempt(b"set a 0 0 12\r\nbob pw:x y z\r\n"),
            creds("bob", "pw:x")
        );
        assert_eq!(attempt(b"set a 0 0 5\r\nalice\r\n"), Login::BadFormat);
        assert_eq!(attempt(b"set a 0 0 3\r\nabcde"), Login::BadTermination);
    }

    #[test]
    fn anything_else_is_refused_line_by_line() {
        for line in [
            &b"get k\r\n"[..],
            b"version\r\n",
            b"quit\r\n",
            b"add a 0 0 13\r\n",
            b"set a 0 0\r\n",
            b"set a 0 0 -1\r\n",
            b"set a 0 0 x\r\n",
            b"\r\n",
            b"mn\n",
        ] {
            assert_eq!(
                text_gate(line),
                Gate::Refused {
                    consumed: line.len()
                },
                "{:?}",
                String::from_utf8_lossy(line)
            );
        }
        assert_eq!(text_gate(b"forwarder\r\n"), Gate::Forwarder);
        assert_eq!(text_gate(b"forwarder 00\r\n"), Gate::Forwarder);
    }

    #[test]
    fn a_login_waits_for_its_block_and_is_bounded() {
        assert_eq!(text_gate(b"set a 0 0 13\r\nalice"), Gate::Incomplete);
        assert_eq!(text_gate(b"set a 0 0"), Gate::Incomplete);
        assert_eq!(text_gate(&vec![b'x'; LINE_BYTES_MAX + 1]), Gate::Close);
        let huge = format!("set a 0 0 {}\r\n", LOGIN_BYTES_MAX + 1);
        assert_eq!(
            text_gate(huge.as_bytes()),
            Gate::Attempt {
                consumed: huge.len(),
                discard: LOGIN_BYTES_MAX as u64 + 3,
                login: Login::TooLong,
            }
        );
    }

    #[test]
    fn sasl_plain_takes_the_users_own_authorization_only() {
        assert_eq!(
            sasl_plain(b"\0alice\0secret1"),
            Some((&b"alice"[..], &b"secret1"[..]))
        );
        assert_eq!(
            sasl_plain(b"alice\0alice\0pw"),
            Some((&b"alice"[..], &b"pw"[..]))
        );
        assert_eq!(sasl_plain(b"\0alice\0"), Some((&b"alice"[..], &b""[..])));
        assert_eq!(sasl_plain(b"bob\0alice\0pw"), None);
        assert_eq!(sasl_plain(b"\0\0pw"), None);
        assert_eq!(sasl_plain(b"\0alice\0pw\0"), None);
        assert_eq!(sasl_plain(b"alice"), None);
        assert_eq!(sasl_plain(b""), None);
    }

    #[test]
    fn credentials_files_read_as_memcached_reads_them() {
        let c =
            Credentials::parse(b"alice:secret1\nbob:pw:with:colons\n:empty\nnopw:\r\n").unwrap();
        assert_eq!(c.len(), 4);
        assert!(c.check(b"alice", b"secret1"));
        assert!(c.check(b"bob", b"pw:with:colons"));
        assert!(c.check(b"", b"empty"));
        assert!(c.check(b"nopw", b""));
        assert!(!c.check(b"alice", b"secret"));
        assert!(!c.check(b"alice", b"secret12"));
        assert!(!c.check(b"ALICE", b"secret1"));
        assert!(!c.check(b"bob", b"pw"));
        assert_eq!(Credentials::parse(b"").unwrap().len(), 0);
        assert_eq!(Credentials::parse(b"a:b").unwrap().len(), 1);
        assert_eq!(
            Credentials::parse(b"a:b\n\n"),
            Err(CredentialsError::Malformed { line: 2 })
        );
        assert_eq!(
            Credentials::parse(b"a:b\n# users\n"),
            Err(CredentialsError::Malformed { line: 2 })
        );
        assert_eq!(
            Credentials::parse(&vec![b':'; CREDENTIALS_BYTES_MAX + 1]),
            Err(CredentialsError::TooLarge)
        );
    }
}
