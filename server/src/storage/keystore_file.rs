//! The `keystore` file: the state machine at some applied index (DESIGN §5).
//! Owns the file and its atomic replacement; the byte format is
//! `data::keystore`. The commit pipeline calls [`write`] with an item list it
//! cloned off the state's lock, then compacts the log through the applied
//! index; startup calls [`load`] before replaying the log. It must not be
//! written by two threads at once (they would share `keystore.tmp`).

use std::fs::File;
use std::io::{self, BufReader};
use std::path::Path;

use data::keystore::{self, KeystoreError};
use data::state::State;

use super::fsutil;
use super::StorageError;

/// The file's name inside the data directory.
pub const KEYSTORE_FILE: &str = "keystore";

/// Written first, then renamed over [`KEYSTORE_FILE`].
pub const KEYSTORE_TMP_FILE: &str = "keystore.tmp";

/// Buffer for writing and reading the file: large enough that a keystore of
/// small items costs one system call per MiB, not per item.
pub const KEYSTORE_BUFFER_BYTES: usize = 1024 * 1024;

/// Durably replaces `data_dir/keystore` with the state described by the
/// pieces; returns the file's size in bytes. When this returns, the log
/// through `applied_index` may be compacted.
#[allow(clippy::too_many_arguments)]
pub fn write<I>(
    data_dir: &Path,
    applied_index: u64,
    applied_term: u64,
    flush_deadline_s: Option<u64>,
    clock_s: u64,
    config: &data::state::Members,
    items: I,
) -> Result<u64, StorageError>
where
    I: IntoIterator,
    I::Item: keystore::ItemFields,
    I::IntoIter: ExactSizeIterator,
{
    fsutil::replace_file(
        data_dir,
        KEYSTORE_FILE,
        KEYSTORE_TMP_FILE,
        KEYSTORE_BUFFER_BYTES,
        |out| {
            keystore::encode(
                out,
                applied_index,
                applied_term,
                flush_deadline_s,
                clock_s,
                config,
                items,
            )
        },
    )
}

/// Reads `data_dir/keystore`: the state and the term of its applied index,
/// or `None` when there is none yet. Removes a `keystore.tmp` a crash left.
/// A damaged keystore is an error naming the file: the log before it has
/// been deleted, so there is nothing to fall back on.
pub fn load(data_dir: &Path, item_bytes_max: usize) -> Result<Option<(State, u64)>, StorageError> {
    fsutil::remove_leftover(data_dir, KEYSTORE_TMP_FILE)?;
    let path = data_dir.join(KEYSTORE_FILE);
    let file = match File::open(&path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(StorageError::io("open", &path, e)),
    };
    let input = BufReader::with_capacity(KEYSTORE_BUFFER_BYTES, file);
    match keystore::decode(input, item_bytes_max) {
        Ok(loaded) => Ok(Some(loaded)),
        Err(KeystoreError::Io(e)) => Err(StorageError::io("read", &path, e)),
        Err(KeystoreError::Corrupt { offset, reason }) => Err(StorageError::Corrupt {
            what: "keystore",
            path,
            offset,
            reason: reason.to_string(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::test_dir::TestDir;
    use bytes::Bytes;
    use data::limits::ITEM_BYTES_DEFAULT;
    use data::state::Item;

    fn items(count: u64) -> Vec<(Bytes, Item)> {
        (0..count)
            .map(|n| {
                let item = Item {
                    data: Bytes::from(format!("value-{n}-").repeat((n % 7) as usize)),
                    flags: n as u32,
                    exptime: if n % 3 == 0 { 0 } else { 1_700_000_000 + n },
                    cas: n + 1,
                    updated_s: 1_600_000_000 + n,
                    lease: (n % 3) as u8,
                };
                (Bytes::from(format!("key:{n}")), item)
            })
            .collect()
    }

    fn sorted(state: &State) -> Vec<(Bytes, Item)> {
        let mut all: Vec<_> = state
            .items()
            .map(|i| (Bytes::copy_from_slice(i.key()), i.to_item()))
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }

    #[test]
    fn roundtrip_of_thousands_of_items() {
        let dir = TestDir::new();
        assert!(load(dir.path(), ITEM_BYTES_DEFAULT).unwrap().is_none());
        let mut expected = items(5000);
        let len = write(
            dir.path(),
            4242,
            7,
            Some(1_800_000_000),
            0,
            &Default::default(),
            expected.iter().map(|(k, v)| (k, v)),
        )
        .unwrap();
        let path = dir.path().join(KEYSTORE_FILE);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), len);
        assert!(!dir.path().join(KEYSTORE_TMP_FILE).exists());

        let (state, term) = load(dir.path(), ITEM_BYTES_DEFAULT).unwrap().unwrap();
        assert_eq!(term, 7);
        assert_eq!(state.applied_index(), 4242);
        assert_eq!(state.flush_deadline_s(), Some(1_800_000_000));
        expected.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(sorted(&state), expected);

        // Writing again replaces the file whole.
        let fewer = items(3);
        write(
            dir.path(),
            5000,
            8,
            None,
            0,
            &Default::default(),
            fewer.iter().map(|(k, v)| (k, v)),
        )
        .unwrap();
        let (state, term) = load(dir.path(), ITEM_BYTES_DEFAULT).unwrap().unwrap();
        assert_eq!((state.len(), state.applied_index(), term), (3, 5000, 8));
        assert_eq!(state.flush_deadline_s(), None);
    }

    #[test]
    fn corrupt_keystore_is_an_error_naming_the_file() {
        let dir = TestDir::new();
        let all = items(100);
        write(
            dir.path(),
            10,
            1,
            None,
            0,
            &Default::default(),
            all.iter().map(|(k, v)| (k, v)),
        )
        .unwrap();
        let path = dir.path().join(KEYSTORE_FILE);
        let good = std::fs::read(&path).unwrap();

        let mut flipped = good.clone();
        let middle = flipped.len() / 2;
        flipped[middle] ^= 0x04;
        std::fs::write(&path, &flipped).unwrap();
        let message = load(dir.path(), ITEM_BYTES_DEFAULT)
            .unwrap_err()
            .to_string();
        assert!(message.starts_with("corrupt keystore in "), "{message}");
        assert!(message.contains(&path.display().to_string()), "{message}");

        std::fs::write(&path, &good[..good.len() - 1]).unwrap();
        let message = load(dir.path(), ITEM_BYTES_DEFAULT)
            .unwrap_err()
            .to_string();
        assert!(message.contains("file ends early"), "{message}");
    }

    #[test]
    fn leftover_tmp_is_removed_and_the_old_keystore_kept() {
        let dir = TestDir::new();
        let all = items(10);
        write(
            dir.path(),
            10,
            1,
            None,
            0,
            &Default::default(),
            all.iter().map(|(k, v)| (k, v)),
        )
        .unwrap();
        std::fs::write(dir.path().join(KEYSTORE_TMP_FILE), b"partial").unwrap();
        let (state, _) = load(dir.path(), ITEM_BYTES_DEFAULT).unwrap().unwrap();
        assert_eq!(state.len(), 10);
        assert!(!dir.path().join(KEYSTORE_TMP_FILE).exists());
    }
}
