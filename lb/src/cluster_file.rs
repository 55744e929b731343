//! The `cluster` file on disk: the cluster id and the 32-byte secret that
//! key every control and replication datagram (DESIGN §3a, §4).
//!
//! The text format is `data::cluster_file` (pure, shared with the server);
//! this module owns the file: the LB creates it in its data directory on
//! first start ([`load_or_create`]: mode 0600, temp file, fsync, rename,
//! fsync directory) and anyone reads it with [`load`] (a server's
//! `--cluster-file PATH`). It draws no randomness itself: the caller passes
//! the RNG to [`generate`], and the driver passes the OS's.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

pub use data::cluster_file::ClusterFile;
use data::frame::{ClusterId, SECRET_BYTES};
use rand::{CryptoRng, RngCore};
use thiserror::Error;

use crate::registry::{sync_dir, RegistryError};

/// The file's name in the LB's data directory.
pub const CLUSTER_FILE: &str = "cluster";

/// Written first (mode 0600), then renamed over [`CLUSTER_FILE`].
const CLUSTER_TMP_FILE: &str = "cluster.tmp";

/// A valid file is about 100 bytes; anything larger is refused unread.
pub const CLUSTER_FILE_BYTES_MAX: u64 = 4096;

/// Only the owner may read the secret.
const CLUSTER_FILE_MODE: u32 = 0o600;

/// Why the cluster file could not be read, parsed or written.
#[derive(Debug, Error)]
pub enum ClusterFileError {
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path}: {len} bytes is over the {CLUSTER_FILE_BYTES_MAX}-byte limit")]
    TooLong { path: PathBuf, len: u64 },
    #[error("{path}: {source}")]
    Parse {
        path: PathBuf,
        #[source]
        source: data::cluster_file::ClusterFileError,
    },
    #[error(transparent)]
    SyncDir(#[from] RegistryError),
}

impl ClusterFileError {
    fn io(op: &'static str, path: &Path, source: io::Error) -> ClusterFileError {
        ClusterFileError::Io {
            op,
            path: path.to_path_buf(),
            source,
        }
    }
}

/// A fresh cluster: random id (never 0) and secret from `rng`, which must be
/// a cryptographic RNG because the secret keys every MAC.
pub fn generate(rng: &mut (impl RngCore + CryptoRng)) -> ClusterFile {
    let mut secret = [0u8; SECRET_BYTES];
    rng.fill_bytes(&mut secret);
    // Zero reads as "unset"; mapping it to 1 costs nothing measurable of
    // the 2^64 space.
    let id = ClusterId(rng.next_u64().max(1));
    ClusterFile { id, secret }
}

/// Reads a cluster file (what a server's `--cluster-file PATH` points at).
pub fn load(path: &Path) -> Result<ClusterFile, ClusterFileError> {
    let len = fs::metadata(path)
        .map_err(|e| ClusterFileError::io("stat", path, e))?
        .len();
    if len > CLUSTER_FILE_BYTES_MAX {
        return Err(ClusterFileError::TooLong {
            path: path.to_path_buf(),
            len,
        });
    }
    let text = fs::read_to_string(path).map_err(|e| ClusterFileError::io("read", path, e))?;
    ClusterFile::parse(&text).map_err(|source| ClusterFileError::Parse {
        path: path.to_path_buf(),
        source,
    })
}

/// The path of the cluster file in an LB data directory.
pub fn path_in(dir: &Path) -> PathBuf {
    dir.join(CLUSTER_FILE)
}

/// Loads `dir/cluster`, or creates it from `generate()` if there is none.
/// The flag says whether it was created.
pub fn load_or_create(
    dir: &Path,
    generate: impl FnOnce() -> ClusterFile,
) -> Result<(ClusterFile, bool), ClusterFileError> {
    let path = path_in(dir);
    match fs::metadata(&path) {
        Ok(_) => return load(&path).map(|file| (file, false)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(ClusterFileError::io("stat", &path, e)),
    }
    let file = generate();
    create(dir, &file)?;
    // Pairs with create: what is on disk must be what we key frames with.
    let reread = load(&path)?;
    assert_eq!(reread, file, "cluster file does not read back as written");
    Ok((file, true))
}

/// Writes `dir/cluster` with mode 0600: temp file, fsync, rename, fsync
/// directory, so a crash never leaves a half-written secret behind.
pub fn create(dir: &Path, file: &ClusterFile) -> Result<(), ClusterFileError> {
    let tmp = dir.join(CLUSTER_TMP_FILE);
    let path = path_in(dir);
    // A leftover from a crash mid-create holds a secret no one has used.
    match fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(ClusterFileError::io("remove", &tmp, e)),
    }
    let result = (|| {
        let mut out = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(CLUSTER_FILE_MODE)
            .open(&tmp)
            .map_err(|e| ClusterFileError::io("create", &tmp, e))?;
        out.write_all(file.format().as_bytes())
            .map_err(|e| ClusterFileError::io("write", &tmp, e))?;
        out.sync_all()
            .map_err(|e| ClusterFileError::io("fsync", &tmp, e))?;
        fs::rename(&tmp, &path).map_err(|e| ClusterFileError::io("rename", &tmp, e))?;
        sync_dir(dir)?;
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    use rand::rngs::StdRng;
    use rand::SeedableRng;

    #[test]
    fn created_once_with_mode_0600_then_loaded() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut rng = StdRng::seed_from_u64(7);
        let (first, created) = load_or_create(dir.path(), || generate(&mut rng)).expect("create");
        assert!(created);
        assert_ne!(first.id, ClusterId(0));
        let mode = fs::metadata(path_in(dir.path()))
            .expect("stat")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let text = fs::read_to_string(path_in(dir.path())).expect("read");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0], format!("cluster-id {:016x}", first.id.0));
        assert!(lines[1].starts_with("secret ") && lines[1].len() == 7 + 64);
        let (again, created) =
            load_or_create(dir.path(), || unreachable!("the file exists")).expect("load");
        assert!(!created);
        assert_eq!(again, first);
        assert!(!dir.path().join(CLUSTER_TMP_FILE).exists());
    }

    #[test]
    fn different_draws_make_different_clusters() {
        let mut rng = StdRng::seed_from_u64(1);
        let (a, b) = (generate(&mut rng), generate(&mut rng));
        assert_ne!(a.id, b.id);
        assert_ne!(a.secret, b.secret);
    }

    #[test]
    fn oversized_or_malformed_file_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = path_in(dir.path());
        fs::write(&path, vec![b'#'; CLUSTER_FILE_BYTES_MAX as usize + 1]).expect("write");
        assert!(matches!(load(&path), Err(ClusterFileError::TooLong { .. })));
        fs::write(&path, "cluster-id 12\n").expect("write");
        assert!(matches!(load(&path), Err(ClusterFileError::Parse { .. })));
        assert!(matches!(
            load(&dir.path().join("missing")),
            Err(ClusterFileError::Io { .. })
        ));
    }
}
