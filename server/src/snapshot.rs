//! Taking a keystore file (snapshot) off the write path: the items are
//! frozen under the state lock (a copy of their locations; the segments
//! holding them are shared, not copied), and a helper thread writes the
//! file; the caller polls for the result and then deletes the log the file
//! covers. [`KeystoreSchedule`] decides when, for the commit pipeline (a
//! server alone) and the replication driver alike.

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread;

use crate::state::{self, SharedState};
use crate::stats::Stats;
use crate::storage::{keystore_file, Log, StorageError};

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

/// When a write path takes its keystore files, written once for both
/// (the commit pipeline and the replication driver): one file at a time,
/// started once `every_log_bytes` of log were written since the last, and
/// when one is finished the log it covers is deleted.
pub struct KeystoreSchedule {
    job: Option<SnapshotJob>,
    every_log_bytes: u64,
    log_bytes_since: u64,
}

impl KeystoreSchedule {
    pub fn new(every_log_bytes: u64) -> KeystoreSchedule {
        KeystoreSchedule {
            job: None,
            every_log_bytes,
            log_bytes_since: 0,
        }
    }

    /// `bytes` more were written to the log.
    pub fn wrote(&mut self, bytes: u64) {
        self.log_bytes_since += bytes;
    }

    /// The file being written, if one finished (`wait`: blocks until the
    /// one in progress finishes): the log before it is deleted, and what
    /// it covers returned. A file that failed leaves the log as it is; the
    /// next one is tried at the next threshold.
    pub fn finished(
        &mut self,
        log: &mut Log,
        stats: &Stats,
        wait: bool,
    ) -> Result<Option<Taken>, StorageError> {
        let Some(result) = self.job.as_ref().and_then(|job| job.poll(wait)) else {
            return Ok(None);
        };
        self.job = None;
        match result {
            Ok(taken) => {
                Stats::bump(&stats.counters.snapshots);
                log.compact_through(taken.index)?;
                Ok(Some(taken))
            }
            Err(error) => {
                tracing::warn!(%error, "keystore write failed");
                Ok(None)
            }
        }
    }

    /// Starts a file once enough log was written and none is in progress.
    pub fn maybe_start(
        &mut self,
        data_dir: &Path,
        state: &SharedState,
        term_of: impl FnOnce(u64) -> u64,
    ) {
        if self.job.is_some() || self.log_bytes_since < self.every_log_bytes {
            return;
        }
        self.log_bytes_since = 0;
        self.job = SnapshotJob::start(data_dir.to_path_buf(), state, term_of);
    }

    /// Waits for a file in progress and forgets it: another keystore file
    /// (a leader's) is about to replace it. The log now starts afresh.
    pub fn replaced(&mut self) {
        if let Some(job) = self.job.take() {
            let _ = job.poll(true);
        }
        self.log_bytes_since = 0;
    }
}
