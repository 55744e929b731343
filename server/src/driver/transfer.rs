//! The I/O half of the keystore stream ([`crate::replica::snapshot_stream`]
//! is the protocol): the leader opens its latest keystore file for a
//! follower behind its compacted log; the follower receives into a side
//! file and installs it once whole.

use super::*;
use crate::replica::snapshot_stream::{whole_file_ack, Chunk, FileAt, Outgoing, Received};

/// The file a follower receives a leader's keystore into.
pub(super) const INCOMING_FILE: &str = "keystore.incoming";

impl Driver {
    /// Leader: starts streaming the current keystore file to `to`, unless a
    /// stream of it is already under way.
    pub(super) async fn start_transfer(&mut self, to: ServerId, addr: SocketAddr) {
        let (snapshot_index, _) = self.core.snapshot_position();
        let now = now_ms();
        if let Some(out) = self
            .senders
            .under_way(&self.core, now, to, addr, snapshot_index)
        {
            return self.send_all(out).await;
        }
        let path = self
            .data_dir
            .join(crate::storage::keystore_file::KEYSTORE_FILE);
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
                return;
            }
        };
        let at = match data::keystore::header(&head) {
            Ok(header) => FileAt {
                index: LogIndex(header.applied_index),
                term: Term(header.applied_term),
                total,
            },
            Err(error) => {
                tracing::warn!(%error, "the keystore file to send is damaged");
                return;
            }
        };
        let out = self.senders.start(&self.core, now, to, addr, at, file);
        self.send_all(out).await;
    }

    /// Sends what the stream's protocol asked for, in the current term.
    pub(super) async fn send_all(&mut self, out: Vec<Outgoing>) {
        let term = self.core.term();
        for Outgoing { to, addr, message } in out {
            self.send(to, addr, term, message).await;
        }
    }

    /// Follower: one chunk of the leader's keystore file.
    pub(super) async fn on_snapshot_chunk(&mut self, chunk: Chunk) -> Result<(), StorageError> {
        let path = self.data_dir.join(INCOMING_FILE);
        let received = self
            .receiver
            .chunk(&mut self.core, now_ms(), self.applied, chunk, || {
                std::fs::File::create(&path)
            })
            .map_err(|e| StorageError::Io {
                op: "write",
                path,
                source: e,
            })?;
        let ack = match received {
            Received::Nothing => None,
            Received::Ack(ack) => Some(ack),
            Received::Whole { from, file, sink } => {
                let installed = self.install_incoming(file, sink)?;
                whole_file_ack(&self.core, from, file, installed)
            }
        };
        self.send_all(ack.into_iter().collect()).await;
        Ok(())
    }

    /// Follower: the whole keystore file arrived. Checks it, makes it the
    /// server's keystore durably, replaces the state and empties the log.
    /// False if it does not check (it is dropped; the leader starts over).
    fn install_incoming(&mut self, at: FileAt, file: std::fs::File) -> Result<bool, StorageError> {
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
                return Ok(false);
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
        // The keystore now covers the log through its index. If the log
        // holds that very entry it matches the leader's through it, and what
        // follows (maybe acknowledged already) stays; otherwise the log
        // restarts after the keystore.
        if self.core.keeps_log_after_snapshot(at.index, at.term) {
            self.log.compact_through(at.index.0)?;
        } else {
            self.log.truncate_after(0)?;
        }
        let membership = membership_of(state.config());
        *state::write(&self.state) = state;
        self.applied = at.index;
        tracing::info!(index = at.index.0, "installed the leader's keystore file");
        self.core.install_snapshot(at.index, at.term, membership);
        Ok(true)
    }
}
