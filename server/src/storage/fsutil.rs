//! The two file system moves every storage file relies on: fsync of a
//! directory (so a create, rename or delete survives a crash) and atomic
//! replacement of a small-or-large whole file (write temp, fsync, rename,
//! fsync directory). Used by the log, keystore and meta modules, and for
//! the small files of the LB lists (`driver::KnownLbs`, the LB's list).

use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::path::Path;

use super::StorageError;

/// Makes the directory's entries (creates, renames, deletes) durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), StorageError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| StorageError::io("fsync directory", dir, e))
}

/// Replaces `dir/name` with what `write` produces, so that after a crash the
/// file is either wholly old or wholly new: writes `dir/tmp_name` through a
/// buffer of `buffer_bytes`, fsyncs it, renames it over `dir/name` and fsyncs
/// `dir`. On failure the temp file is removed (best effort) and the old file
/// is untouched.
pub fn replace_file<T>(
    dir: &Path,
    name: &str,
    tmp_name: &str,
    buffer_bytes: usize,
    write: impl FnOnce(&mut BufWriter<File>) -> io::Result<T>,
) -> Result<T, StorageError> {
    let tmp = dir.join(tmp_name);
    let path = dir.join(name);
    let result = (|| {
        let file = File::create(&tmp).map_err(|e| StorageError::io("create", &tmp, e))?;
        let mut out = BufWriter::with_capacity(buffer_bytes, file);
        let value = write(&mut out).map_err(|e| StorageError::io("write", &tmp, e))?;
        out.flush()
            .map_err(|e| StorageError::io("write", &tmp, e))?;
        let file = out
            .into_inner()
            .map_err(|e| StorageError::io("write", &tmp, e.into_error()))?;
        file.sync_all()
            .map_err(|e| StorageError::io("fsync", &tmp, e))?;
        fs::rename(&tmp, &path).map_err(|e| StorageError::io("rename", &tmp, e))?;
        sync_dir(dir)?;
        Ok(value)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Removes a temp file a crash left behind mid-replacement; its contents are
/// incomplete by definition, and the real file is still the old one.
pub(crate) fn remove_leftover(dir: &Path, tmp_name: &str) -> Result<(), StorageError> {
    let tmp = dir.join(tmp_name);
    match fs::remove_file(&tmp) {
        Ok(()) => {
            tracing::warn!(path = %tmp.display(), "removed a leftover temp file");
            sync_dir(dir)
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(StorageError::io("remove", &tmp, e)),
    }
}

/// Reads a whole file, or `None` if it does not exist.
pub fn read_if_exists(path: &Path) -> Result<Option<Vec<u8>>, StorageError> {
    match fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(StorageError::io("read", path, e)),
    }
}

/// The file in a data directory whose exclusive lock a running server holds.
pub const LOCK_FILE: &str = "lock";

/// Why a data directory could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum DirLockError {
    #[error("data directory {0} is in use by another process (it holds {0}/lock)")]
    InUse(std::path::PathBuf),
    #[error("cannot lock data directory {path}: {source}")]
    Io {
        path: std::path::PathBuf,
        source: io::Error,
    },
}

/// Takes `dir` (creating it) for this process: an exclusive lock on
/// `dir/lock`, held until the returned file is dropped (or the process
/// dies, whatever way). Two servers on one directory would interleave their
/// logs; the second one is refused instead.
pub fn lock_dir(dir: &Path) -> Result<File, DirLockError> {
    let io_error = |source| DirLockError::Io {
        path: dir.to_path_buf(),
        source,
    };
    fs::create_dir_all(dir).map_err(io_error)?;
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join(LOCK_FILE))
        .map_err(io_error)?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(fs::TryLockError::WouldBlock) => Err(DirLockError::InUse(dir.to_path_buf())),
        Err(fs::TryLockError::Error(source)) => Err(io_error(source)),
    }
}
