//! Keystore files streamed in chunks: the leader sends its latest file to a
//! follower behind its compacted log, a window at a time with resends; the
//! follower writes it to a side file and installs it once whole.

use super::*;

/// Snapshot chunks in flight to one follower at most.
pub(super) const SNAPSHOT_WINDOW_CHUNKS: u64 = 64;
/// Resend unacknowledged snapshot chunks after this long.
pub(super) const SNAPSHOT_RESEND_MS: u64 = 200;
/// A snapshot stream gives up after this long without progress.
pub(super) const SNAPSHOT_STALL_MS: u64 = 10_000;
/// Largest keystore file accepted from a leader.
pub const SNAPSHOT_BYTES_MAX: u64 = 64 * 1024 * 1024 * 1024;
/// The file a follower receives a leader's keystore into.
pub(super) const INCOMING_FILE: &str = "keystore.incoming";

/// A keystore file streaming to one follower.
pub(super) struct Transfer {
    pub(super) addr: SocketAddr,
    pub(super) index: u64,
    pub(super) term: u64,
    /// The keystore file as it was when the stream started, read a window
    /// at a time: a newer file renamed over it leaves this one readable.
    pub(super) file: std::fs::File,
    pub(super) total: u64,
    pub(super) acked: u64,
    pub(super) last_progress_ms: u64,
    pub(super) last_send_ms: u64,
}

/// A keystore file arriving from the leader.
pub(super) struct Incoming {
    pub(super) index: u64,
    pub(super) term: u64,
    pub(super) total: u64,
    pub(super) received: u64,
    pub(super) file: std::fs::File,
}

impl Driver {
    /// Leader: starts streaming the current keystore file to `to`, unless a
    /// stream of it is already under way.
    pub(super) async fn start_transfer(&mut self, to: ServerId, addr: SocketAddr) {
        let (snapshot_index, _) = self.core.snapshot_position();
        if let Some(transfer) = self.transfers.get_mut(&to) {
            if transfer.index >= snapshot_index.0 {
                if transfer.addr != addr {
                    // The follower restarted on a new address: whatever it
                    // had received is gone with its old process.
                    transfer.addr = addr;
                    transfer.acked = 0;
                    transfer.last_progress_ms = now_ms();
                    self.send_transfer_window(to).await;
                }
                return;
            }
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
        let (index, term) = match data::keystore::header(&head) {
            Ok(header) => (header.applied_index, header.applied_term),
            Err(error) => {
                tracing::warn!(%error, "the keystore file to send is damaged");
                return;
            }
        };
        tracing::info!(
            follower = to.0,
            index,
            bytes = total,
            "streaming the keystore file"
        );
        let now = now_ms();
        self.transfers.insert(
            to,
            Transfer {
                addr,
                index,
                term,
                file,
                total,
                acked: 0,
                last_progress_ms: now,
                last_send_ms: 0,
            },
        );
        self.send_transfer_window(to).await;
    }

    /// Sends the window of chunks after what `to` acknowledged, read from
    /// the file now (one window, about 80 KiB, in memory at a time).
    pub(super) async fn send_transfer_window(&mut self, to: ServerId) {
        let Some(transfer) = self.transfers.get_mut(&to) else {
            return;
        };
        transfer.last_send_ms = now_ms();
        let (addr, index, term, total, acked) = (
            transfer.addr,
            transfer.index,
            transfer.term,
            transfer.total,
            transfer.acked,
        );
        let chunk = frame::SNAPSHOT_CHUNK_BYTES_MAX as u64;
        let end = (acked + SNAPSHOT_WINDOW_CHUNKS * chunk).min(total);
        let mut window = vec![0u8; (end - acked) as usize];
        if let Err(error) = transfer.file.read_exact_at(&mut window, acked) {
            tracing::warn!(%error, follower = to.0, "cannot read the keystore file to send; stream dropped");
            self.transfers.remove(&to);
            return;
        }
        let window = Bytes::from(window);
        let mut offset = acked;
        loop {
            let len = chunk.min(total - offset);
            let at = (offset - acked) as usize;
            let message = Message::SnapshotChunk {
                snapshot_index: LogIndex(index),
                snapshot_term: Term(term),
                total_len: total,
                offset,
                bytes: window.slice(at..at + len as usize),
            };
            let my_term = self.core.term();
            self.send(to, addr, my_term, message).await;
            offset += len;
            if offset >= end {
                break;
            }
        }
    }

    /// Leader: a follower acknowledged snapshot bytes.
    pub(super) async fn on_snapshot_ack(&mut self, from: ServerId, index: LogIndex, offset: u64) {
        let Some(transfer) = self.transfers.get_mut(&from) else {
            return;
        };
        if transfer.index != index.0 {
            return;
        }
        if offset == 0 && transfer.acked > 0 {
            // The follower lost what it had received (it restarted): start
            // over rather than wait for the stream to stall.
            transfer.acked = 0;
        } else if offset <= transfer.acked {
            return;
        }
        transfer.acked = offset.min(transfer.total);
        transfer.last_progress_ms = now_ms();
        if transfer.acked == transfer.total {
            tracing::info!(
                follower = from.0,
                index = index.0,
                "keystore file delivered"
            );
            self.transfers.remove(&from);
            // The follower acknowledges the whole file only once it holds it
            // durably; replication resumes after it even if the follower's
            // own Ack is lost (the leader sends nothing else to a follower
            // behind its log, so nothing else would bring another Ack).
            self.core.snapshot_delivered(now_ms(), from, index);
            return;
        }
        self.send_transfer_window(from).await;
    }

    /// Leader: resends stalled streams, drops dead ones.
    pub(super) async fn tick_transfers(&mut self, now: u64) {
        self.transfers
            .retain(|_, t| now.saturating_sub(t.last_progress_ms) < SNAPSHOT_STALL_MS);
        let due: Vec<ServerId> = self
            .transfers
            .iter()
            .filter(|(_, t)| now >= t.last_send_ms + SNAPSHOT_RESEND_MS)
            .map(|(id, _)| *id)
            .collect();
        for id in due {
            self.send_transfer_window(id).await;
        }
    }

    /// Follower: one chunk of the leader's keystore file.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn on_snapshot_chunk(
        &mut self,
        from: ServerId,
        term: Term,
        index: LogIndex,
        snapshot_term: Term,
        total: u64,
        offset: u64,
        bytes: Bytes,
    ) -> Result<(), StorageError> {
        if !self.core.accept_snapshot_chunk(now_ms(), from, term) || total > SNAPSHOT_BYTES_MAX {
            return Ok(());
        }
        if index <= LogIndex(self.applied.0.max(self.core.snapshot_position().0 .0)) {
            // Already have it: tell the leader so it stops.
            return self.ack_snapshot(from, index, total).await;
        }
        let path = self.data_dir.join(INCOMING_FILE);
        if self
            .incoming
            .as_ref()
            .is_none_or(|i| i.index != index.0 || i.total != total)
        {
            let file = std::fs::File::create(&path).map_err(|e| StorageError::Io {
                op: "create",
                path: path.clone(),
                source: e,
            })?;
            self.incoming = Some(Incoming {
                index: index.0,
                term: snapshot_term.0,
                total,
                received: 0,
                file,
            });
        }
        let Some(incoming) = self.incoming.as_mut() else {
            return Ok(());
        };
        if offset == incoming.received {
            use std::io::Write as _;
            incoming
                .file
                .write_all(&bytes)
                .map_err(|e| StorageError::Io {
                    op: "write",
                    path: path.clone(),
                    source: e,
                })?;
            incoming.received += bytes.len() as u64;
        }
        let received = incoming.received;
        if received == total {
            self.install_incoming()?;
        }
        self.ack_snapshot(from, index, received).await
    }

    pub(super) async fn ack_snapshot(
        &mut self,
        leader: ServerId,
        index: LogIndex,
        offset: u64,
    ) -> Result<(), StorageError> {
        if let Some(addr) = self.core.peer_addr(leader) {
            let term = self.core.term();
            let message = Message::SnapshotAck {
                snapshot_index: index,
                offset,
            };
            self.send(leader, addr, term, message).await;
        }
        Ok(())
    }

    /// Follower: the whole keystore file arrived. Checks it, makes it the
    /// server's keystore durably, replaces the state and empties the log.
    pub(super) fn install_incoming(&mut self) -> Result<(), StorageError> {
        let Some(incoming) = self.incoming.take() else {
            return Ok(());
        };
        let incoming_path = self.data_dir.join(INCOMING_FILE);
        incoming.file.sync_all().map_err(|e| StorageError::Io {
            op: "fsync",
            path: incoming_path.clone(),
            source: e,
        })?;
        drop(incoming.file);
        // A keystore file of our own being written would race the rename.
        if let Some(job) = self.snapshot.take() {
            let _ = job.poll(true);
        }
        let file = std::fs::File::open(&incoming_path).map_err(|e| StorageError::Io {
            op: "open",
            path: incoming_path.clone(),
            source: e,
        })?;
        let state = match data::keystore::decode(std::io::BufReader::new(file), self.item_bytes_max)
        {
            Ok((state, _)) => state,
            Err(error) => {
                // A damaged stream: drop it; the leader sends it again.
                tracing::warn!(%error, "received keystore file does not decode");
                let _ = std::fs::remove_file(&incoming_path);
                return Ok(());
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
        let (index, term) = (LogIndex(incoming.index), Term(incoming.term));
        if self.core.keeps_log_after_snapshot(index, term) {
            self.log.compact_through(index.0)?;
        } else {
            self.log.truncate_after(0)?;
        }
        let membership = membership_of(state.config());
        *state::write(&self.state) = state;
        self.applied = index;
        self.log_bytes_since_snapshot = 0;
        tracing::info!(
            index = incoming.index,
            "installed the leader's keystore file"
        );
        self.core.install_snapshot(index, term, membership);
        Ok(())
    }
}
