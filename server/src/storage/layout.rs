//! Where each replica group's files live in a data directory: under
//! `groups/<id>/` (its `log/`, `keystore`, `meta`), so that one process can
//! host several groups; the directory lock stays at the top.
//!
//! A data directory written before groups existed holds the first group's
//! files at its top. [`open_group`] moves them into `groups/0/` on start:
//! into `groups/0.migrating/` one rename at a time, then that directory is
//! renamed to `groups/0/` (each step fsynced). A crash at any point leaves
//! either the old layout, or a `0.migrating` directory the next start
//! finishes from, never a group split between two places that both look
//! whole.

use std::path::{Path, PathBuf};

use data::frame::GroupId;

use super::fsutil::sync_dir;
use super::keystore_file::{KEYSTORE_FILE, KEYSTORE_TMP_FILE};
use super::log::LOG_DIR;
use super::meta::{META_FILE, META_TMP_FILE};
use super::StorageError;

/// The directory of every group's files.
pub const GROUPS_DIR: &str = "groups";

/// What a group's directory holds; before groups, the data directory's top
/// held them. (`keystore.incoming`, a follower's keystore file arriving, is
/// left behind: the leader streams it again.)
const GROUP_ENTRIES: [&str; 5] = [
    LOG_DIR,
    KEYSTORE_FILE,
    KEYSTORE_TMP_FILE,
    META_FILE,
    META_TMP_FILE,
];

/// `group`'s directory in `data_dir`.
pub fn group_dir(data_dir: &Path, group: GroupId) -> PathBuf {
    data_dir.join(GROUPS_DIR).join(group.0.to_string())
}

/// Makes `group`'s directory ready to open, moving the first group's files
/// from the layout before groups when they are there, and returns it.
pub fn open_group(data_dir: &Path, group: GroupId) -> Result<PathBuf, StorageError> {
    let dir = group_dir(data_dir, group);
    let groups = data_dir.join(GROUPS_DIR);
    let legacy: Vec<&str> = GROUP_ENTRIES
        .into_iter()
        .filter(|name| data_dir.join(name).exists())
        .collect();
    let migrating = groups.join(format!("{}.migrating", group.0));
    if group == GroupId::FIRST && (!legacy.is_empty() || migrating.exists()) {
        if dir.exists() {
            return Err(StorageError::Corrupt {
                what: "data directory layout",
                path: data_dir.to_path_buf(),
                offset: 0,
                reason: format!(
                    "both {} and group files at the top ({}); move one away",
                    dir.display(),
                    legacy.join(", ")
                ),
            });
        }
        create_dir(&migrating)?;
        sync_dir(data_dir)?;
        sync_dir(&groups)?;
        for name in &legacy {
            let (from, to) = (data_dir.join(name), migrating.join(name));
            std::fs::rename(&from, &to).map_err(|e| StorageError::io("rename", &from, e))?;
        }
        sync_dir(&migrating)?;
        sync_dir(data_dir)?;
        std::fs::rename(&migrating, &dir).map_err(|e| StorageError::io("rename", &migrating, e))?;
        sync_dir(&groups)?;
        tracing::info!(
            dir = %dir.display(),
            "moved the data directory's files into the first group's directory"
        );
    }
    create_dir(&dir)?;
    Ok(dir)
}

fn create_dir(dir: &Path) -> Result<(), StorageError> {
    std::fs::create_dir_all(dir).map_err(|e| StorageError::io("create directory", dir, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::test_dir::TestDir;

    fn write(path: &Path, bytes: &[u8]) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, bytes).unwrap();
    }

    #[test]
    fn a_fresh_directory_gets_the_first_groups_directory() {
        let root = TestDir::new();
        let dir = open_group(root.path(), GroupId::FIRST).unwrap();
        assert_eq!(dir, root.path().join("groups").join("0"));
        assert!(dir.is_dir());
    }

    #[test]
    fn the_layout_before_groups_moves_into_the_first_group() {
        let root = TestDir::new();
        write(
            &root.path().join("log").join("00000000000000000001.log"),
            b"log",
        );
        write(&root.path().join("keystore"), b"keystore");
        write(&root.path().join("meta"), b"meta");
        write(&root.path().join("lock"), b"");
        let dir = open_group(root.path(), GroupId::FIRST).unwrap();
        assert_eq!(
            std::fs::read(dir.join("log").join("00000000000000000001.log")).unwrap(),
            b"log"
        );
        assert_eq!(std::fs::read(dir.join("keystore")).unwrap(), b"keystore");
        assert_eq!(std::fs::read(dir.join("meta")).unwrap(), b"meta");
        assert!(!root.path().join("log").exists());
        assert!(!root.path().join("keystore").exists());
        assert!(root.path().join("lock").exists(), "the lock stays on top");
        // Opening again changes nothing.
        assert_eq!(open_group(root.path(), GroupId::FIRST).unwrap(), dir);
        assert_eq!(std::fs::read(dir.join("meta")).unwrap(), b"meta");
    }

    #[test]
    fn a_migration_cut_short_is_finished() {
        let root = TestDir::new();
        // The crash came after the log moved, before the keystore did.
        write(
            &root
                .path()
                .join("groups")
                .join("0.migrating")
                .join("log")
                .join("1.log"),
            b"log",
        );
        write(&root.path().join("keystore"), b"keystore");
        let dir = open_group(root.path(), GroupId::FIRST).unwrap();
        assert_eq!(
            std::fs::read(dir.join("log").join("1.log")).unwrap(),
            b"log"
        );
        assert_eq!(std::fs::read(dir.join("keystore")).unwrap(), b"keystore");
        assert!(!root.path().join("groups").join("0.migrating").exists());
    }

    #[test]
    fn files_in_both_places_are_refused() {
        let root = TestDir::new();
        write(&root.path().join("groups").join("0").join("meta"), b"new");
        write(&root.path().join("meta"), b"old");
        let error = open_group(root.path(), GroupId::FIRST).unwrap_err();
        assert!(error.to_string().contains("move one away"), "{error}");
    }
}
