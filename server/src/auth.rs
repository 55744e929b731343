//! Who may use the server (DESIGN §5a "Authentication"): the users of the
//! text authfile (`-Y`) and of the SASL password file (`-S --sasl-pwdb`),
//! read at start and again on SIGHUP, and the proof of the cluster secret a
//! follower's forwarding link gives instead of a user's password.
//!
//! The wire formats are [`data::protocol::auth`]'s; the connection keeps
//! whether it authenticated. A reload that fails keeps the users loaded
//! before it (a typo in the file does not lock every client out).

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use bytes::BytesMut;
use data::admin_proof::{self, CHALLENGE_BYTES, PROOF_BYTES};
use data::frame::SECRET_BYTES;
use data::protocol::auth::{
    Credentials, CredentialsError, CHALLENGE_PREFIX, CREDENTIALS_BYTES_MAX,
};
use data::protocol::client::encode_forwarder;

/// The words a forwarding link's proof covers ([`admin_proof`]): a proof
/// made for an LB command cannot be taken for this, nor the reverse.
pub const FORWARDER_PROOF_WORDS: &str = "forwarder";

/// Why a credentials file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum AuthFileError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// memcached's words for a malformed authfile, with the line.
    #[error("{path} has a malformed entry ({source}). Should be 'user:password'")]
    Malformed {
        path: PathBuf,
        source: CredentialsError,
    },
}

/// One credentials file and the users last read from it.
#[derive(Debug)]
struct UserFile {
    path: PathBuf,
    users: RwLock<Arc<Credentials>>,
}

impl UserFile {
    fn open(path: &Path) -> Result<UserFile, AuthFileError> {
        Ok(UserFile {
            path: path.to_path_buf(),
            users: RwLock::new(Arc::new(read_credentials(path)?)),
        })
    }

    fn check(&self, user: &[u8], password: &[u8]) -> bool {
        let users = self.users.read().expect("users lock poisoned").clone();
        users.check(user, password)
    }

    fn reload(&self) -> Result<usize, AuthFileError> {
        let users = read_credentials(&self.path)?;
        let count = users.len();
        *self.users.write().expect("users lock poisoned") = Arc::new(users);
        Ok(count)
    }
}

/// Reads and parses a `user:password` file, bounded in size.
pub fn read_credentials(path: &Path) -> Result<Credentials, AuthFileError> {
    use std::io::Read;
    let read = |source| AuthFileError::Read {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(read)?;
    let mut text = Vec::new();
    // One byte over the bound is enough to refuse the file.
    file.take(CREDENTIALS_BYTES_MAX as u64 + 1)
        .read_to_end(&mut text)
        .map_err(read)?;
    Credentials::parse(&text).map_err(|source| AuthFileError::Malformed {
        path: path.to_path_buf(),
        source,
    })
}

/// The server's authentication settings and users.
#[derive(Debug, Default)]
pub struct Auth {
    /// `-Y`: text connections log in first.
    text: Option<UserFile>,
    /// `-S`: binary connections authenticate with SASL PLAIN first; text
    /// ones are refused unless `-Y` lets them log in.
    sasl: Option<UserFile>,
    /// The cluster secret a forwarding link proves (`None` alone).
    secret: Option<[u8; SECRET_BYTES]>,
}

impl Auth {
    /// Reads the files the settings name.
    pub fn load(
        auth_file: Option<&Path>,
        sasl_pwdb: Option<&Path>,
        secret: Option<[u8; SECRET_BYTES]>,
    ) -> Result<Auth, AuthFileError> {
        Ok(Auth {
            text: auth_file.map(UserFile::open).transpose()?,
            sasl: sasl_pwdb.map(UserFile::open).transpose()?,
            secret,
        })
    }

    /// Whether a connection must authenticate before anything else.
    pub fn required(&self) -> bool {
        self.text.is_some() || self.sasl.is_some()
    }

    pub fn text_enabled(&self) -> bool {
        self.text.is_some()
    }

    pub fn sasl_enabled(&self) -> bool {
        self.sasl.is_some()
    }

    /// A text login (`-Y`).
    pub fn check_text(&self, user: &[u8], password: &[u8]) -> bool {
        self.text.as_ref().is_some_and(|f| f.check(user, password))
    }

    /// A SASL PLAIN user (`-S`).
    pub fn check_sasl(&self, user: &[u8], password: &[u8]) -> bool {
        self.sasl.as_ref().is_some_and(|f| f.check(user, password))
    }

    /// Whether `proof` proves the cluster secret under `challenge`; false
    /// for a server without a cluster.
    pub fn check_forwarder(
        &self,
        challenge: &[u8; CHALLENGE_BYTES],
        proof: &[u8; PROOF_BYTES],
    ) -> bool {
        self.secret.as_ref().is_some_and(|secret| {
            admin_proof::verify(secret, challenge, FORWARDER_PROOF_WORDS, proof)
        })
    }

    pub fn in_cluster(&self) -> bool {
        self.secret.is_some()
    }

    /// Reads the files again (SIGHUP), each on its own: a file that fails
    /// keeps its users. Returns what became of each, for the log.
    pub fn reload(&self) -> Vec<(&Path, Result<usize, AuthFileError>)> {
        [&self.text, &self.sasl]
            .into_iter()
            .flatten()
            .map(|file| (file.path.as_path(), file.reload()))
            .collect()
    }
}

/// The proof a forwarding link sends for `challenge`.
pub fn forwarder_proof(
    secret: &[u8; SECRET_BYTES],
    challenge: &[u8; CHALLENGE_BYTES],
) -> [u8; PROOF_BYTES] {
    admin_proof::proof(secret, challenge, FORWARDER_PROOF_WORDS)
}

/// What a forwarding link sends after `reply`, the leader's answer to
/// `forwarder` (its line without the line end): `forwarder <proof>` for
/// the challenge it holds, or `None` when it holds none.
pub fn answer_challenge(secret: &[u8; SECRET_BYTES], reply: &str) -> Option<BytesMut> {
    let challenge = reply
        .strip_prefix(CHALLENGE_PREFIX)
        .and_then(admin_proof::from_hex::<CHALLENGE_BYTES>)?;
    let mut answer = BytesMut::new();
    encode_forwarder(&mut answer, Some(&forwarder_proof(secret, &challenge)));
    Some(answer)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file_with(text: &str) -> tempfile::NamedTempFile {
        use std::io::Write;
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(text.as_bytes()).unwrap();
        file
    }

    #[test]
    fn a_reload_takes_the_new_users_and_a_bad_file_keeps_the_old() {
        let file = file_with("alice:one\n");
        let auth = Auth::load(Some(file.path()), None, None).unwrap();
        assert!(auth.required() && auth.text_enabled() && !auth.sasl_enabled());
        assert!(auth.check_text(b"alice", b"one"));
        assert!(!auth.check_sasl(b"alice", b"one"));
        std::fs::write(file.path(), "alice:two\nbob:three\n").unwrap();
        let reloaded = auth.reload();
        assert_eq!(reloaded.len(), 1);
        assert_eq!(*reloaded[0].1.as_ref().unwrap(), 2);
        assert!(!auth.check_text(b"alice", b"one"));
        assert!(auth.check_text(b"alice", b"two") && auth.check_text(b"bob", b"three"));
        std::fs::write(file.path(), "alice:two\nno colon\n").unwrap();
        assert!(auth.reload()[0].1.is_err());
        assert!(auth.check_text(b"alice", b"two"), "kept what was loaded");
    }

    #[test]
    fn a_file_that_does_not_read_is_refused_at_start() {
        let bad = file_with("alice\n");
        let error = Auth::load(Some(bad.path()), None, None).unwrap_err();
        assert!(error.to_string().contains("Should be 'user:password'"));
        assert!(Auth::load(None, Some(Path::new("/nonexistent/pwdb")), None).is_err());
        assert!(!Auth::load(None, None, None).unwrap().required());
    }

    #[test]
    fn a_forwarder_proves_this_clusters_secret_for_this_challenge() {
        let auth = Auth::load(None, None, Some([7; SECRET_BYTES])).unwrap();
        let challenge = [1; CHALLENGE_BYTES];
        let proof = forwarder_proof(&[7; SECRET_BYTES], &challenge);
        assert!(auth.check_forwarder(&challenge, &proof));
        assert!(!auth.check_forwarder(&[2; CHALLENGE_BYTES], &proof));
        assert!(!auth.check_forwarder(&challenge, &forwarder_proof(&[8; SECRET_BYTES], &challenge)));
        let alone = Auth::load(None, None, None).unwrap();
        assert!(!alone.check_forwarder(&challenge, &proof));
        let reply = format!("CHALLENGE {}", admin_proof::to_hex(&challenge));
        let answer = answer_challenge(&[7; SECRET_BYTES], &reply).unwrap();
        let line = format!("forwarder {}\r\n", admin_proof::to_hex(&proof));
        assert_eq!(&answer[..], line.as_bytes());
        assert!(answer_challenge(&[7; SECRET_BYTES], "OK").is_none());
        assert!(answer_challenge(&[7; SECRET_BYTES], "CHALLENGE 00").is_none());
    }
}
