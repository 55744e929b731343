//! The file I/O of the keystore stream ([`crate::replica::snapshot_stream`]
//! is the protocol, [`crate::replica::host`] runs it): the leader opens its
//! latest keystore file for a follower behind its compacted log; the
//! follower receives into a side file and installs it once whole.

use super::*;

/// The file a follower receives a leader's keystore into.
pub(super) const INCOMING_FILE: &str = "keystore.incoming";

/// Leader: the current keystore file and where it stands, to stream.
pub(super) fn open_keystore(data_dir: &std::path::Path) -> Option<(FileAt, std::fs::File)> {
    let path = data_dir.join(crate::storage::keystore_file::KEYSTORE_FILE);
    let opened = std::fs::File::open(&path).and_then(|file| {
        let total = file.metadata()?.len();
        let mut head = [0u8; data::keystore::KEYSTORE_HEADER_BYTES];
        file.read_exact_at(&mut head, 0)?;
        Ok((file, total, head))
    });
    let (file, total, head) = match opened {
        Ok(opened) => opened,
        Err(error) => {
            tracing::warn!(%error, "cannot read the keystore file to send");
            return None;
        }
    };
    match data::keystore::header(&head) {
        Ok(header) => Some((
            FileAt {
                index: LogIndex(header.applied_index),
                term: Term(header.applied_term),
                total,
            },
            file,
        )),
        Err(error) => {
            tracing::warn!(%error, "the keystore file to send is damaged");
            None
        }
    }
}

impl DriverIo {
    /// Follower: the whole keystore file arrived. Checks it, makes it the
    /// server's keystore durably and makes the log follow it. `None` if it
    /// does not check (it is dropped; the leader starts over).
    pub(super) fn install_incoming(
        &mut self,
        at: FileAt,
        file: std::fs::File,
        keep_log_after: bool,
    ) -> Result<Option<data::state::State>, StorageError> {
        let incoming_path = self.data_dir.join(INCOMING_FILE);
        file.sync_all().map_err(|e| StorageError::Io {
            op: "fsync",
            path: incoming_path.clone(),
            source: e,
        })?;
        drop(file);
        // A keystore file of our own being written would race the rename.
        self.keystores.replaced();
        let file = std::fs::File::open(&incoming_path).map_err(|e| StorageError::Io {
            op: "open",
            path: incoming_path.clone(),
            source: e,
        })?;
        let state = match data::keystore::decode(std::io::BufReader::new(file), self.item_bytes_max)
        {
            Ok((state, _)) => state,
            Err(error) => {
                tracing::warn!(%error, "received keystore file does not decode");
                let _ = std::fs::remove_file(&incoming_path);
                return Ok(None);
            }
        };
        let keystore_path = self
            .data_dir
            .join(crate::storage::keystore_file::KEYSTORE_FILE);
        std::fs::rename(&incoming_path, &keystore_path).map_err(|e| StorageError::Io {
            op: "rename",
            path: keystore_path.clone(),
            source: e,
        })?;
        std::fs::File::open(&self.data_dir)
            .and_then(|dir| dir.sync_all())
            .map_err(|e| StorageError::Io {
                op: "fsync",
                path: self.data_dir.clone(),
                source: e,
            })?;
        if keep_log_after {
            self.log.compact_through(at.index.0)?;
        } else {
            self.log.truncate_after(0)?;
        }
        tracing::info!(index = at.index.0, "installed the leader's keystore file");
        Ok(Some(state))
    }
}
