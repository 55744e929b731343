//! Taking a keystore file (snapshot) off the write path: the items are
//! frozen under the state lock (a copy of their locations; the segments
//! holding them are shared, not copied), and a helper thread writes the file; the caller polls for the result and then deletes
//! the log the file covers. Used by the commit pipeline (a group of one) and
//! the replication driver alike.

use std::path::PathBuf;
use std::sync::mpsc;
use std::thread;

use crate::state::{self, SharedState};
use crate::storage::{keystore_file, StorageError};

/// A keystore file being written.
pub struct SnapshotJob {
    done: mpsc::Receiver<Result<Taken, StorageError>>,
}

/// What a finished keystore file covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Taken {
    pub index: u64,
    pub term: u64,
}

impl SnapshotJob {
    /// Starts writing `data_dir/keystore` from the state as applied now.
    /// `term_of(index)` gives the term of the applied index. `None` if the
    /// writer thread cannot be started (the log keeps everything meanwhile).
    pub fn start(
        data_dir: PathBuf,
        state: &SharedState,
        term_of: impl FnOnce(u64) -> u64,
    ) -> Option<SnapshotJob> {
        let (index, flush, clock_s, config, items) = {
            let state = state::read(state);
            let items = state.freeze();
            let config = state.config().clone();
            (
                state.applied_index(),
                state.flush_deadline_s(),
                state.clock_s(),
                config,
                items,
            )
        };
        let term = term_of(index);
        let (done_tx, done) = mpsc::channel();
        let spawned = thread::Builder::new()
            .name("keystore".into())
            .spawn(move || {
                // What no reader can see at the state's clock stays out of
                // the file: it never can be seen again (DESIGN §2).
                let visible = data::state::visible_items(&items, flush, clock_s);
                let result =
                    keystore_file::write(&data_dir, index, term, flush, clock_s, &config, visible)
                        .map(|_bytes| Taken { index, term });
                let _ = done_tx.send(result);
            });
        match spawned {
            Ok(_) => Some(SnapshotJob { done }),
            Err(error) => {
                tracing::warn!(%error, "could not start the keystore writer");
                None
            }
        }
    }

    /// The result once the file is written (`wait` blocks until then).
    pub fn poll(&self, wait: bool) -> Option<Result<Taken, StorageError>> {
        if wait {
            self.done.recv().ok()
        } else {
            self.done.try_recv().ok()
        }
    }
}
