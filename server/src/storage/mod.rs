//! On-disk state of one server (DESIGN §5): the log segments, the keystore
//! file and the meta file, each owned by exactly one type or module here.
//!
//! Layout of a data directory and who owns what:
//! - `lock`: the process's lock on the directory ([`lock_dir`]).
//! - `groups/<id>/`: one replica group's files ([`layout`]), which are:
//! - `log/<first index, 20 digits>.log`: [`log::Log`], the segment files.
//! - `keystore` (and a transient `keystore.tmp`): [`keystore_file`].
//! - `meta` (and a transient `meta.tmp`): [`meta`], server id and current term.
//!
//! Everything here is blocking std I/O; the caller runs it on a dedicated
//! thread, never on an async worker. The byte formats live in `data::record`
//! and `data::keystore` (pure code); this module only moves those bytes to and
//! from files, orders writes, fsyncs and renames, and turns damage into
//! [`StorageError`]s that name the file and offset.

mod fsutil;
pub mod keystore_file;
pub mod layout;
pub mod log;
pub mod meta;

use std::io;
use std::path::PathBuf;

use thiserror::Error;

pub use self::fsutil::{lock_dir, read_if_exists, replace_file, DirLockError, LOCK_FILE};
pub use self::log::{Log, LOG_DIR, SEGMENT_BYTES_DEFAULT};
pub use self::meta::Meta;
pub use data::record::Record;

/// Why a storage operation failed.
#[derive(Debug, Error)]
pub enum StorageError {
    /// A system call failed; `op` names it ("open", "fsync", ...).
    #[error("{op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A file's bytes are damaged in a way recovery must not paper over; the
    /// server stops with this message. `what` is e.g. "log record".
    #[error("corrupt {what} in {} at offset {offset}: {reason}", path.display())]
    Corrupt {
        what: &'static str,
        path: PathBuf,
        offset: u64,
        reason: String,
    },
    /// The caller asked to append an index that does not follow the log.
    #[error("cannot append index {index}: the log ends at index {last_index}")]
    OutOfOrder { index: u64, last_index: u64 },
    #[error("cannot append index {index}: {source}")]
    RecordTooLarge {
        index: u64,
        #[source]
        source: data::record::RecordTooLarge,
    },
    /// An earlier write or fsync of the log failed. After a failed fsync the
    /// kernel may have dropped the dirty pages, so retrying could report
    /// durability that does not exist; the only safe way on is a restart,
    /// whose recovery reads what really is on disk.
    #[error("the log failed an earlier write or fsync; restart to recover")]
    Poisoned,
}

impl StorageError {
    /// An I/O error attributed to `op` on `path`.
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        StorageError::Io {
            op,
            path: path.into(),
            source,
        }
    }
}

/// A unique, self-deleting directory for tests; no dependency needed.
#[cfg(test)]
pub(crate) mod test_dir {
    use std::path::{Path, PathBuf};
    use std::sync::atomic::{AtomicU64, Ordering};

    static NEXT: AtomicU64 = AtomicU64::new(0);

    pub(crate) struct TestDir(PathBuf);

    impl TestDir {
        pub(crate) fn new() -> TestDir {
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let path =
                std::env::temp_dir().join(format!("store-storage-test-{}-{n}", std::process::id()));
            let _ = std::fs::remove_dir_all(&path);
            std::fs::create_dir_all(&path).expect("create test dir");
            TestDir(path)
        }

        pub(crate) fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for TestDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}
